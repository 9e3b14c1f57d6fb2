"""Gradient accumulation: two half-batch steps make the same update as one full-batch step.

The model has no BatchNorm (statistics of half batches differ from those of the whole
batch by design), so the only difference left is float32 summation order.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax.data import synthetic_batches as batches
from higherhrnet_jax.training import optim, sharding, state as state_lib, step as step_lib


class NoNormModel(nn.Module):
  """The HigherHRNet output contract (out0 [H/4, W/4, 2K], out1 [H/2, W/2, K]), no BN."""

  num_joints: int = 17
  axis_name: str | None = None  # the trainer's contract; unused without BatchNorm

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = self.num_joints
    x = nn.relu(nn.Conv(8, (3, 3), (2, 2), padding=1)(x))
    x = nn.relu(nn.Conv(8, (3, 3), (2, 2), padding=1)(x))
    out0 = nn.Conv(2 * k, (1, 1))(x)
    b, h, w, c = x.shape
    up = jax.image.resize(jnp.concatenate([x, out0], -1), (b, 2 * h, 2 * w, c + 2 * k),
                          'nearest')
    return [out0, nn.Conv(k, (3, 3), padding=1)(up)]


def _config(batch_size, accum, optimizer):
  cfg = config_lib.base_config()
  config_lib.with_input_size(cfg, 64)
  with cfg.unlocked():
    cfg.train.batch_size = batch_size
    cfg.train.grad_accum_steps = accum
    cfg.train.optimizer = optimizer
    cfg.train.lr = 1e-2
  return cfg


def _run(cfg, model, batches_, initial):
  mesh = sharding.make_mesh(jax.devices()[:1])
  tx, sched = optim.make_optimizer(cfg, 10)
  state, shardings = state_lib.create_train_state(
      model, tx, jax.random.PRNGKey(0), (1, 64, 64, 3), mesh)
  state = state.replace(params=jax.device_put(initial, shardings.params))  # a copy: donated
  fn = step_lib.make_train_step(model, tx, cfg, mesh, shardings, sched)
  for b in batches_:
    state, _ = fn(state, sharding.global_batch(b, mesh), jax.random.PRNGKey(1))
  return jax.tree.map(np.asarray, state.params)


# Bound on |accumulated - full| relative to the leaf's largest update. Each gradient element
# is a float32 sum over the 8 x (up to) 32 x 32 positions of the batch; the two half sums
# added in another order differ by about sqrt(n) eps32 |terms| (n ~ 8e3 -> ~1e-5 of the
# terms, which cancel to a smaller result): measured up to 1.6e-4 of the step (AMD EPYC,
# AVX2). 2e-3 keeps a 12x margin and stays 50x below a wrong half (~0.1 of the step, below).
ACCUMULATION_REL = 2e-3


# SGD is linear in the gradient (a sum instead of a mean would show); Adam is not.
@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_two_accumulated_half_batches_equal_one_full_batch(optimizer):
  full_cfg = _config(8, 1, optimizer)
  batch = batches.synthetic_batch(full_cfg, 8, np.random.default_rng(0))
  model = NoNormModel()
  initial = jax.tree.map(
      np.asarray, model.init(jax.random.PRNGKey(3), jnp.zeros((1, 64, 64, 3)))['params'])
  halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]

  full = _run(full_cfg, model, [batch], initial)
  accumulated = _run(_config(4, 2, optimizer), model, halves, initial)
  first_half_twice = _run(_config(4, 2, optimizer), model, halves[:1] * 2, initial)
  first_half_only = _run(_config(4, 2, optimizer), model, halves[:1], initial)

  wrong = []
  for a, w, b, p0 in zip(jax.tree.leaves(accumulated), jax.tree.leaves(first_half_twice),
                         jax.tree.leaves(full), jax.tree.leaves(initial)):
    step = np.abs(b - p0).max()
    assert step > 0
    assert np.abs(a - b).max() <= ACCUMULATION_REL * step, (np.abs(a - b).max(), step)
    wrong.append(np.abs(w - b).max() / step)
  # The control: accumulating the wrong data (one half twice) is far outside the bound.
  assert max(wrong) > 10 * ACCUMULATION_REL, wrong
  # MultiSteps holds the update until the second half arrives.
  for a, p0 in zip(jax.tree.leaves(first_half_only), jax.tree.leaves(initial)):
    np.testing.assert_array_equal(a, p0)
