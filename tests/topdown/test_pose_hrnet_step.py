"""One tiny top-down training step (`JointsMSELoss`) vs the official one (`tiny_train*.npz`).

float64 (x64 for the test): loss rtol 1e-12, every parameter gradient within 1e-9 of the
tensor's max |value| (README section 10: 5.6e-14 observed), running statistics atol 1e-12.
float32: output atol 5e-4, loss rtol 1e-5, `d loss / d output` within 1e-4 of its max,
and the gradients by the README's loose per-tensor criterion (L2-relative < 1e-2,
max-norm relative < 5e-2), because ReLU inputs within rounding of 0 may flip.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import convert, models
from higherhrnet_jax.topdown import loss as topdown_loss
from higherhrnet_jax.training import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[2]


def _nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


@pytest.fixture(scope='module')
def data(topdown_fixtures_dir):
  return (dict(np.load(topdown_fixtures_dir / 'tiny_train.npz')),
          dict(np.load(topdown_fixtures_dir / 'tiny_train_f64.npz')))


@pytest.fixture(scope='module')
def cfg():
  return config_lib.load_config(REPO / 'configs' / 'coco' / 'hrnet_tiny.py')


def _run(d, cfg, dtype, fixtures):
  batch = {'image': _nhwc(d['input']).astype(dtype), 'target': _nhwc(d['target']).astype(dtype),
           'target_weight': d['target_weight'][..., 0].astype(dtype)}
  variables = convert.load_official(fixtures / 'tiny_state_dict.npz', cfg.model)
  variables = jax.tree.map(lambda x: jnp.asarray(x, dtype), variables)
  model = models.build(cfg.model).clone(dtype=jnp.dtype(dtype))

  def fwd(params, stats, batch):
    output = model.apply({'params': params, 'batch_stats': stats}, batch['image'], train=True,
                         mutable=['batch_stats'])[0]
    grad_output = jax.grad(lambda o: topdown_loss.loss(o, batch)[0])(output)
    return output, grad_output, step_lib.loss_and_grads(model, cfg, params, stats, batch,
                                                        jax.random.PRNGKey(0))

  output, grad_output, (total, terms, stats, grads) = jax.jit(fwd)(
      variables['params'], variables['batch_stats'], batch)
  official = convert.to_official({'params': grads, 'batch_stats': stats}, dtype=np.float64)
  return output, grad_output, total, terms, official


def test_float64_step_matches_official_float64(data, cfg, topdown_fixtures_dir):
  d32, ref = data
  with jax.enable_x64(True):
    output, grad_output, total, terms, official = _run(d32, cfg, np.float64, topdown_fixtures_dir)
    assert output.dtype == jnp.float64
  np.testing.assert_allclose(float(total), ref['loss'], rtol=1e-12)
  assert set(terms) == {'heatmaps_loss'}
  np.testing.assert_allclose(np.asarray(output), _nhwc(ref['output']), atol=1e-10)
  np.testing.assert_allclose(np.asarray(grad_output), _nhwc(ref['grad_output']),
                             atol=1e-12 * np.abs(ref['grad_output']).max())
  grads = [k for k in ref if k.startswith('grad/')]
  assert len(grads) == 149
  for key in grads:
    r = ref[key]
    err = np.max(np.abs(official[key[5:]] - r)) / np.max(np.abs(r))
    assert err < 1e-9, (key, err)
  bn = [k for k in ref if k.startswith('bn_after/')]
  assert len(bn) == 98
  for key in bn:
    np.testing.assert_allclose(official[key[9:]], ref[key], rtol=0, atol=1e-12, err_msg=key)


def test_float32_step_matches_official(data, cfg, topdown_fixtures_dir):
  d32, ref64 = data
  output, grad_output, total, _, official = _run(d32, cfg, np.float32, topdown_fixtures_dir)
  np.testing.assert_allclose(np.asarray(output), _nhwc(d32['output']), atol=5e-4)
  np.testing.assert_allclose(float(total), d32['loss'], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad_output), _nhwc(d32['grad_output']),
                             atol=1e-4 * np.abs(d32['grad_output']).max())
  for key in (k for k in ref64 if k.startswith('grad/')):
    r, g = ref64[key], official[key[5:]]
    assert np.max(np.abs(g - r)) / np.max(np.abs(r)) < 5e-2, key
    assert np.linalg.norm(g - r) / np.linalg.norm(r) < 1e-2, key
  for key in (k for k in ref64 if k.startswith('bn_after/')):
    np.testing.assert_allclose(official[key[9:]], ref64[key], rtol=0, atol=1e-5, err_msg=key)


def test_loss_weights_enter_squared_and_zero_weight_pixels_still_count():
  # README section 6: loss = 0.5 / (K B H W) * sum w^2 (P - G)^2.
  rng = np.random.default_rng(0)
  p, g = rng.standard_normal((2, 4, 3, 5)), rng.standard_normal((2, 4, 3, 5))
  w = np.array([[1.0, 0.0, 2.0, 0.5, 1.0], [0.0, 1.0, 1.0, 3.0, 1.0]])
  expected = 0.5 / p.size * np.sum(w[:, None, None, :] ** 2 * (p - g) ** 2)
  with jax.enable_x64(True):
    got = topdown_loss.joints_mse_loss(jnp.asarray(p), jnp.asarray(g), jnp.asarray(w))
    unweighted = topdown_loss.joints_mse_loss(jnp.asarray(p), jnp.asarray(g), jnp.asarray(w),
                                              use_target_weight=False)
  np.testing.assert_allclose(float(got), expected, rtol=1e-14)
  np.testing.assert_allclose(float(unweighted), 0.5 * np.mean((p - g) ** 2), rtol=1e-14)
