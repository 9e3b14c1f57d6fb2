"""Backward pass of the model vs the official training step (`tiny_train*.npz`).

The loss is re-implemented here from the fixtures' README (section 6) in a few lines,
only to pull gradients through the model; the project's loss has its own tests.
Tolerances (README section 8): float64 gradients vs `tiny_train_f64.npz` within 1e-9 of
each tensor's max |value|; float32 gradients vs `tiny_train.npz`: L2-relative < 1e-2 and
max-relative < 5e-2 per tensor (ReLU masks may flip on float32 rounding).
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import convert, models

K = 17


def reference_loss(outputs, data):
  """README section 6 total: mean heatmap losses of both stages + stage-0 AE push/pull (exp)."""
  total = 0.0
  for s in range(2):
    pred = outputs[s][..., :K]
    target = jnp.asarray(data[f'heatmaps_{s}'].transpose(0, 2, 3, 1))
    mask = jnp.asarray(data[f'masks_{s}'])[..., None]
    total = total + jnp.mean(jnp.mean((pred - target) ** 2 * mask, axis=(1, 2, 3)))
  tags = outputs[0][..., K:].transpose(0, 3, 1, 2).reshape(outputs[0].shape[0], -1)
  push, pull = [], []
  for b, joints in enumerate(data['joints_0']):
    means, pulls = [], []
    for person in joints:
      index = person[person[:, 1] > 0, 0]
      if len(index):
        t = tags[b][index]
        means.append(t.mean())
        pulls.append(jnp.mean((t - t.mean()) ** 2))
    n = len(means)
    mu = jnp.stack(means)
    pull.append(sum(pulls) / n * 0.001)
    push.append(0.5 * (jnp.exp(-(mu[:, None] - mu[None, :]) ** 2).sum() - n) / (n * (n - 1)) * 0.001)
  return total + jnp.mean(jnp.stack(push)) + jnp.mean(jnp.stack(pull))


def _gradients(fixtures_dir, dtype):
  cfg = config_lib.load_config(pathlib.Path(__file__).parents[2] / 'configs' / 'tiny.py')
  model = models.build(cfg.model).clone(dtype=dtype)
  variables = convert.load_official(fixtures_dir / 'tiny_state_dict.npz', cfg.model)
  variables = jax.tree.map(lambda a: np.asarray(a, dtype), variables)
  data = dict(np.load(fixtures_dir / 'tiny_train.npz'))
  x = data['input'].transpose(0, 2, 3, 1).astype(dtype)

  def loss(params):
    outputs, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                             train=True, mutable=['batch_stats'])
    return reference_loss(outputs, data)

  value, grads = jax.jit(jax.value_and_grad(loss))(variables['params'])
  official = convert.to_official({'params': grads, 'batch_stats': variables['batch_stats']}, dtype)
  return value, official


def test_float64_gradients_match_official(fixtures_dir):
  ref = np.load(fixtures_dir / 'tiny_train_f64.npz')
  with jax.enable_x64(True):
    value, grads = _gradients(fixtures_dir, np.float64)
  np.testing.assert_allclose(float(value), float(ref['total_loss']), rtol=1e-12)
  names = [k for k in ref.files if k.startswith('grad/')]
  assert len(names) == 160
  for name in names:
    r = ref[name]
    assert np.abs(grads[name[len('grad/'):]] - r).max() <= 1e-9 * np.abs(r).max(), name


@pytest.mark.slow
def test_float32_gradients_match_official(fixtures_dir):
  ref = np.load(fixtures_dir / 'tiny_train.npz')
  value, grads = _gradients(fixtures_dir, np.float32)
  np.testing.assert_allclose(float(value), float(ref['total_loss']), rtol=1e-5)
  for name in [k for k in ref.files if k.startswith('grad/')]:
    r, g = ref[name], grads[name[len('grad/'):]]
    assert np.linalg.norm(g - r) < 1e-2 * np.linalg.norm(r), name
    assert np.abs(g - r).max() < 5e-2 * np.abs(r).max(), name
