"""One full tiny-model training step vs the official one (`tiny_train*.npz`).

float64 (x64 enabled for the test): every parameter gradient within 1e-9 of the
tensor's max |value| (README section 8; measured 6e-14), BN running statistics within
1e-12 absolute (measured 1e-14). float32: outputs atol 5e-4, loss terms rtol 1e-5,
gradients by the loose per-tensor criterion of README section 8 (L2-relative < 1e-2,
max-norm relative < 5e-2; measured 1.7e-3 / 9.0e-3), because ReLU inputs within
rounding distance of 0 may flip.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import convert, models
from higherhrnet_jax.training import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[2]


def _nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


@pytest.fixture(scope='module')
def data(fixtures_dir):
  return dict(np.load(fixtures_dir / 'tiny_train.npz')), dict(np.load(fixtures_dir / 'tiny_train_f64.npz'))


def _run(data, cfg, dtype, fixtures_dir):
  d = data
  batch = {'image': _nhwc(d['input']).astype(dtype)}
  for s in (0, 1):
    batch[f'heatmaps_{s}'] = _nhwc(d[f'heatmaps_{s}']).astype(dtype)
    batch[f'masks_{s}'] = d[f'masks_{s}'].astype(dtype)
    batch[f'joints_{s}'] = d[f'joints_{s}']
  variables = convert.load_official(fixtures_dir / 'tiny_state_dict.npz', cfg.model)
  variables = jax.tree.map(lambda x: jnp.asarray(x, dtype), variables)
  model = models.build(cfg.model).clone(dtype=jnp.dtype(dtype))

  def fwd(params, stats, batch):
    outputs = model.apply({'params': params, 'batch_stats': stats}, batch['image'], train=True,
                          mutable=['batch_stats'])[0]
    return outputs, step_lib.loss_and_grads(model, cfg, params, stats, batch, jax.random.PRNGKey(0))

  outputs, (total, terms, stats, grads) = jax.jit(fwd)(variables['params'], variables['batch_stats'], batch)
  official = convert.to_official({'params': grads, 'batch_stats': stats}, dtype=np.float64)
  return outputs, total, terms, official


def test_float64_step_matches_official_float64(data, fixtures_dir):
  _, ref = data
  cfg = config_lib.load_config(REPO / 'configs' / 'tiny.py')
  with jax.enable_x64(True):
    outputs, total, terms, official = _run(data[0], cfg, np.float64, fixtures_dir)
    assert outputs[0].dtype == jnp.float64
  np.testing.assert_allclose(float(total), ref['total_loss'], rtol=1e-12)
  for name, value in terms.items():
    np.testing.assert_allclose(float(value), ref[name.replace('_loss_', '_loss_mean_')], rtol=1e-10)
  for s in (0, 1):
    np.testing.assert_allclose(np.asarray(outputs[s]), _nhwc(ref[f'output_{s}']), atol=1e-10)
  grads = [k for k in ref if k.startswith('grad/')]
  assert len(grads) == 160
  for key in grads:
    r = ref[key]
    err = np.max(np.abs(official[key[5:]] - r)) / np.max(np.abs(r))
    assert err < 1e-9, (key, err)
  bn = [k for k in ref if k.startswith('bn_after/')]
  assert len(bn) == 104
  for key in bn:
    np.testing.assert_allclose(official[key[9:]], ref[key], rtol=0, atol=1e-12, err_msg=key)


def test_float32_step_matches_official(data, fixtures_dir):
  d32, ref64 = data
  cfg = config_lib.load_config(REPO / 'configs' / 'tiny.py')
  outputs, total, terms, official = _run(d32, cfg, np.float32, fixtures_dir)
  for s in (0, 1):
    np.testing.assert_allclose(np.asarray(outputs[s]), _nhwc(d32[f'output_{s}']), atol=5e-4)
  np.testing.assert_allclose(float(total), d32['total_loss'], rtol=1e-5)
  for name, value in terms.items():
    np.testing.assert_allclose(float(value), d32[name.replace('_loss_', '_loss_mean_')], rtol=1e-5)
  for key in (k for k in ref64 if k.startswith('grad/')):
    r = ref64[key]
    g = official[key[5:]]
    assert np.max(np.abs(g - r)) / np.max(np.abs(r)) < 5e-2, key
    assert np.linalg.norm(g - r) / np.linalg.norm(r) < 1e-2, key
  for key in (k for k in ref64 if k.startswith('bn_after/')):
    np.testing.assert_allclose(official[key[9:]], ref64[key], rtol=0, atol=1e-5, err_msg=key)
