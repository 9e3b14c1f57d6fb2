"""Run in its own process with 8 fake CPU devices; prints one JSON line of comparisons.

Compares one SGD train step on the same global batch of 8 images on 1 device vs 8
devices (replicated and FSDP), and checks the per-device-BatchNorm step against the
average of independent single-image computations.
"""

import json
import os
import sys

assert 'xla_force_host_platform_device_count=8' in os.environ.get('XLA_FLAGS', '')
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import tiny_standin  # noqa: E402
from higherhrnet_jax import config as config_lib  # noqa: E402
from higherhrnet_jax.data import synthetic_batches as batches  # noqa: E402
from higherhrnet_jax.training import optim, sharding, state as state_lib, step as step_lib  # noqa: E402


_INITIAL = None


def make_runner(cfg, devices, batch_shape, shard_params=False):
  """Returns `run(batch) -> (param update, batch stats, loss, param specs)` from a fresh state."""
  model = tiny_standin.build(cfg.model)
  mesh = sharding.make_mesh(devices)
  tx, sched = optim.make_optimizer(cfg, 100)
  state, shardings = state_lib.create_train_state(
      model, tx, jax.random.PRNGKey(0), batch_shape, mesh, shard_params)
  # Every runner starts from one copy of the first runner's values, whatever its layout.
  global _INITIAL
  if _INITIAL is None:
    _INITIAL = jax.tree.map(np.asarray, state)
  initial = _INITIAL
  fn = step_lib.make_train_step(model, tx, cfg, mesh, shardings, sched)

  def run(batch):
    state = jax.device_put(initial, shardings)
    new, metrics = fn(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1))
    specs = [x.sharding.spec for x in jax.tree.leaves(new.params)]
    delta = jax.tree.map(lambda a, b: np.asarray(a) - b, new.params, initial.params)
    return delta, jax.tree.map(np.asarray, new.batch_stats), float(metrics['loss']), specs

  return run


def run(cfg, devices, batch, shard_params=False):
  return make_runner(cfg, devices, batch['image'].shape, shard_params)(batch)


def max_rel(a, b):
  errs = jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-12)), a, b))
  return max(errs)


def main():
  cfg = config_lib.load_config(
      os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'tiny.py'),
      ['data.input_size=64', 'train.batch_size=8',
       'train.optimizer=sgd', 'train.lr=0.1', 'train.momentum=0.0', 'train.wd=0.0'])
  batch = batches.synthetic_batch(cfg, 8, np.random.default_rng(0))
  devs = jax.devices()
  assert len(devs) == 8
  sharding.FSDP_MIN_SIZE = 64  # the stand-in is small: shard all but the tiniest arrays
  d1, s1, l1, _ = run(cfg, devs[:1], batch)
  d8, s8, l8, _ = run(cfg, devs, batch)
  df, sf, lf, specs = run(cfg, devs, batch, shard_params=True)
  out = {
      'loss_1': l1, 'loss_8': l8, 'loss_fsdp': lf,
      'update_rel_8': max_rel(d8, d1), 'stats_rel_8': max_rel(s8, s1),
      'update_rel_fsdp': max_rel(df, d1), 'stats_rel_fsdp': max_rel(sf, s1),
      'fsdp_sharded_leaves': sum('data' in str(s) for s in specs), 'leaves': len(specs),
  }
  with cfg.unlocked():
    cfg.train.per_device_batch_norm = True
  dp, sp, lp, _ = run(cfg, devs, batch)
  dpf, spf, lpf, _ = run(cfg, devs, batch, shard_params=True)
  # Reference: each image alone on one device (its own BN statistics), then averaged.
  single = make_runner(cfg, devs[:1], (1,) + batch['image'].shape[1:])
  singles = [single({k: v[i:i + 1] for k, v in batch.items()}) for i in range(8)]
  mean = lambda trees: jax.tree.map(lambda *xs: np.mean(np.stack(xs), 0), *trees)
  out.update({
      'loss_per_device': lp, 'loss_per_image_mean': float(np.mean([s[2] for s in singles])),
      'update_rel_per_device': max_rel(dp, mean([s[0] for s in singles])),
      'stats_rel_per_device': max_rel(sp, mean([s[1] for s in singles])),
      'loss_per_device_fsdp': lpf, 'update_rel_per_device_fsdp': max_rel(dpf, dp),
      'stats_rel_per_device_fsdp': max_rel(spf, sp),
  })
  print(json.dumps(out))


if __name__ == '__main__':
  main()
