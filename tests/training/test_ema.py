"""Weight averaging (`train.ema_decay`): the ramped decay, the average the step keeps, and
which weights evaluation and export read."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax.data import synthetic_batches as batches
from higherhrnet_jax.training import checkpoint as ckpt_lib
from higherhrnet_jax.training import optim, sharding, state as state_lib, step as step_lib


class _NoNorm(nn.Module):
  """The HigherHRNet output contract with two convolutions and no BatchNorm."""

  num_joints: int = 17
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = self.num_joints
    x = nn.relu(nn.Conv(4, (3, 3), (4, 4), padding=1)(x))
    out0 = nn.Conv(2 * k, (1, 1))(x)
    b, h, w, _ = out0.shape
    return [out0, jax.image.resize(out0[..., :k], (b, 2 * h, 2 * w, k), 'nearest')]


def _config(**train):
  c = config_lib.base_config()
  config_lib.with_input_size(c, 64)
  with c.unlocked():
    c.train.batch_size = 4
    c.train.lr = 1e-2
    c.train.update(train)
  return c


def test_decay_ramps_as_one_plus_n_over_ten_plus_n_up_to_the_configured_value():
  for n, want in ((0, 0.1), (1, 2 / 11), (90, 0.91), (10**6, 0.999)):
    assert float(optim.ema_decay(0.999, jnp.float32(n))) == pytest.approx(want, rel=1e-6)


def test_out_of_range_decay_is_refused_naming_the_field():
  with pytest.raises(config_lib.ConfigError, match='train.ema_decay'):
    config_lib.validate(_config(ema_decay=1.0))


@pytest.mark.parametrize('accum', [1, 2])
def test_step_keeps_the_average_of_the_weights_each_update_produced(accum):
  cfg = _config(ema_decay=0.9, grad_accum_steps=accum)
  mesh = sharding.make_mesh(jax.devices()[:1])
  model = _NoNorm()
  tx, schedule = optim.make_optimizer(cfg, 10)
  state, shardings = state_lib.create_train_state(
      model, tx, jax.random.PRNGKey(0), (1, 64, 64, 3), mesh, ema=True)
  fn = step_lib.make_train_step(model, tx, cfg, mesh, shardings, schedule)
  rng = np.random.default_rng(0)
  trajectory = [jax.tree.map(np.asarray, state.params)]  # the weights after each update
  for i in range(4 * accum):
    batch = batches.synthetic_batch(cfg, 4, rng)
    state, _ = fn(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(i))
    if (i + 1) % accum == 0:
      trajectory.append(jax.tree.map(np.asarray, state.params))
  # The textbook recursion in float64: e_0 = p_0, e_n = d_n e_(n-1) + (1 - d_n) p_n, with
  # d_n = min(0.9, (1 + n) / (10 + n)).
  want = trajectory[0]
  for n, p in enumerate(trajectory[1:], start=1):
    d = min(0.9, (1 + n) / (10 + n))
    want = jax.tree.map(lambda e, q, d=d: d * np.float64(e) + (1 - d) * np.float64(q), want, p)
  got = jax.tree.map(np.asarray, state.ema['params'])
  for g, w, p in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(state.params)):
    # Four float32 multiply-adds of values below |w| + |p|: a few eps32 of that scale.
    scale = np.abs(w).max() + np.abs(np.asarray(p)).max()
    assert np.abs(g - w).max() <= 8 * np.finfo(np.float32).eps * scale
    assert np.abs(np.asarray(p) - w).max() > 1e-4 * scale  # the average lags the weights
  assert state.eval_variables()['params'] is state.ema['params']
  # New weights (as `model.pretrained` sets them) restart the average on buffers of its own:
  # the next step donates the state, which fails if two leaves share one buffer.
  fresh = state.with_variables(jax.tree.map(lambda x: x * 0.5, state.params), state.batch_stats)
  fresh, _ = fn(fresh, sharding.global_batch(batch, mesh), jax.random.PRNGKey(9))
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(fresh.ema))


def test_export_reads_the_average_unless_asked_for_the_current_weights(tmp_path):
  ones = {'w': jnp.ones((2, 3), jnp.float32)}
  state = state_lib.TrainState(
      step=jnp.asarray(5, jnp.int32), params=ones, batch_stats={'mean': jnp.zeros((3,))},
      opt_state=(), rng=jax.random.PRNGKey(0),
      ema={'params': {'w': jnp.full((2, 3), 0.5)}, 'batch_stats': {'mean': jnp.full((3,), 2.0)}})
  ck = ckpt_lib.Checkpointer(tmp_path, every_steps=1)
  ck.save(5, state, {'index': 5})
  ck.close()
  averaged = ckpt_lib.restore_variables(tmp_path)
  np.testing.assert_array_equal(averaged['params']['w'], np.full((2, 3), 0.5))
  np.testing.assert_array_equal(averaged['batch_stats']['mean'], np.full((3,), 2.0))
  current = ckpt_lib.restore_variables(tmp_path, average=False)
  np.testing.assert_array_equal(current['params']['w'], np.ones((2, 3)))
  # Without an average both read the current weights.
  ck = ckpt_lib.Checkpointer(tmp_path / 'plain', every_steps=1)
  ck.save(5, state.replace(ema={}), {'index': 5})
  ck.close()
  np.testing.assert_array_equal(ckpt_lib.restore_variables(tmp_path / 'plain')['params']['w'],
                                np.ones((2, 3)))


def _saved_state(value, ema):
  params = {'w': jnp.full((2, 3), value, jnp.float32)}
  stats = {'mean': jnp.full((3,), -value, jnp.float32)}
  return state_lib.TrainState(
      step=jnp.asarray(3, jnp.int32), params=params, batch_stats=stats,
      opt_state=({'mu': jnp.zeros((2, 3))},), rng=jax.random.PRNGKey(0),
      ema={'params': {'w': jnp.full((2, 3), 9.0)}, 'batch_stats': {'mean': jnp.full((3,), 8.0)}}
      if ema else {})


@pytest.mark.parametrize('saved', ['with', 'without', 'older format'])
@pytest.mark.parametrize('wanted', [True, False])
def test_resume_switches_the_average_on_or_off(tmp_path, saved, wanted):
  state = _saved_state(1.0, ema=saved == 'with')
  ck = ckpt_lib.Checkpointer(tmp_path, every_steps=1)
  if saved == 'older format':  # written before TrainState had the field
    ck.save(3, {f: getattr(state, f) for f in ('step', 'params', 'batch_stats', 'opt_state', 'rng')},
            {'index': 3})
  else:
    ck.save(3, state, {'index': 3})
  ck.wait()
  target = _saved_state(0.0, ema=wanted)
  mesh = sharding.make_mesh()
  abstract = state_lib.abstract_state(target, sharding.state_shardings(target, mesh, False))
  restored, position, step = ck.restore_latest(abstract)
  ck.close()
  assert step == 3 and position == {'index': 3}
  np.testing.assert_array_equal(restored.params['w'], np.full((2, 3), 1.0))
  if not wanted:
    assert restored.ema == {}
  elif saved == 'with':
    np.testing.assert_array_equal(restored.ema['params']['w'], np.full((2, 3), 9.0))
    np.testing.assert_array_equal(restored.ema['batch_stats']['mean'], np.full((3,), 8.0))
  else:  # the average starts from the restored weights
    np.testing.assert_array_equal(restored.ema['params']['w'], np.full((2, 3), 1.0))
    np.testing.assert_array_equal(restored.ema['batch_stats']['mean'], np.full((3,), -1.0))
