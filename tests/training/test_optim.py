"""Optimizer and LR schedule from the config."""

import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax.training import optim


def _cfg(**train):
  c = config_lib.base_config()
  for k, v in train.items():
    c.train[k] = v
  return c


def test_official_step_decay_at_epochs_200_260():
  c = _cfg()
  spe = optim.updates_per_epoch(c, 1000 * 96 + 50)  # partial last batch dropped
  assert spe == 1000
  sched = optim.learning_rate_schedule(c, spe)
  lrs = [float(sched(e * spe + d)) for e, d in ((0, 0), (199, 999), (200, 0), (259, 999), (260, 0))]
  np.testing.assert_allclose(lrs, [1e-3, 1e-3, 1e-4, 1e-4, 1e-5], rtol=1e-6)
  assert optim.total_updates(c, spe) == 300 * 1000


def test_linear_lr_scaling_and_accumulation_define_effective_batch():
  c = _cfg(batch_size=48, grad_accum_steps=4, scale_lr_with_batch=True)
  assert optim.effective_batch_size(c) == 192
  assert optim.base_learning_rate(c) == pytest.approx(2e-3)
  assert optim.updates_per_epoch(c, 1920) == 10
  c.train.scale_lr_with_batch = False
  assert optim.base_learning_rate(c) == pytest.approx(1e-3)


def test_accumulation_keeps_epochs_aligned_with_the_data():
  """5 batches per epoch, 2 per update: 2.5 updates an epoch, not 2 (which would put the
  trainer's epoch 1 at the loader's 4th batch and drift further each epoch)."""
  c = _cfg(batch_size=2, grad_accum_steps=2, end_epoch=3, lr_step=(2,))
  upe = optim.updates_per_epoch(c, 11)
  assert upe == 2.5 and round(upe * 2) == 5  # the loader's 11 // 2 batches
  assert optim.total_updates(c, upe) == 7  # 3 epochs = 15 batches: 7 whole updates
  sched = optim.learning_rate_schedule(c, upe)
  assert float(sched(4)) == pytest.approx(1e-3) and float(sched(5)) == pytest.approx(1e-4)


def test_warmup_ramps_then_keeps_epoch_boundaries():
  c = _cfg(warmup_epochs=1.0)
  sched = optim.learning_rate_schedule(c, 10)
  np.testing.assert_allclose(float(sched(0)), 1e-4, rtol=1e-6)
  assert float(sched(5)) < 1e-3
  np.testing.assert_allclose(float(sched(10)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(sched(1999)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(sched(2000)), 1e-4, rtol=1e-6)


def test_cosine_decays_to_zero_after_the_warmup():
  """Half a cosine over the updates after the warm-up: lr at its start, lr/2 half way,
  0 at the run's last update (textbook formula lr * (1 + cos(pi * t / T)) / 2)."""
  c = _cfg(lr_schedule='cosine', warmup_epochs=1.0, num_steps=110)
  sched = optim.learning_rate_schedule(c, 10)
  np.testing.assert_allclose(float(sched(0)), 1e-4, rtol=1e-6)
  for t in (0, 25, 50, 75, 100):
    want = 1e-3 * (1 + np.cos(np.pi * t / 100)) / 2
    np.testing.assert_allclose(float(sched(10 + t)), want, rtol=1e-5, atol=1e-12)
  lrs = [float(sched(u)) for u in range(10, 111)]
  assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_unknown_schedule_is_refused_naming_the_field():
  c = _cfg(lr_schedule='linear')
  with pytest.raises(config_lib.ConfigError, match='train.lr_schedule'):
    config_lib.validate(c)


def test_adam_matches_textbook_update_and_clip_and_accumulation():
  params = {'w': jnp.array([1.0, -2.0])}
  grads = {'w': jnp.array([3.0, 4.0])}
  c = _cfg(lr=0.1)
  tx, _ = optim.make_optimizer(c, 100)
  upd, _ = tx.update(grads, tx.init(params), params)
  # First Adam step moves every coordinate by lr * g / (|g| + eps) = lr * sign(g).
  np.testing.assert_allclose(upd['w'], [-0.1, -0.1], rtol=2e-5)  # float32 bias correction
  c = _cfg(lr=0.1, optimizer='sgd', momentum=0.0, wd=0.0, grad_clip_norm=1.0)
  tx, _ = optim.make_optimizer(c, 100)
  upd, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(upd['w'], [-0.06, -0.08], rtol=1e-6)  # clipped to norm 1
  c = _cfg(lr=0.1, optimizer='sgd', momentum=0.0, wd=0.0, grad_accum_steps=2)
  tx, _ = optim.make_optimizer(c, 100)
  s = tx.init(params)
  upd, s = tx.update(grads, s, params)
  np.testing.assert_array_equal(upd['w'], [0.0, 0.0])  # first micro-step: no update
  upd, s = tx.update({'w': jnp.array([1.0, 0.0])}, s, params)
  np.testing.assert_allclose(upd['w'], [-0.2, -0.2], rtol=1e-6)  # mean of the two grads
