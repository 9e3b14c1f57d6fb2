"""jax.export of network + aggregation: the reloaded artifact matches the live function.

Tolerance: the artifact runs the same StableHLO as the live jit, so results agree to
float32 rounding (<= 1e-6 absolute); any batch size works (symbolic batch).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import keypoints
from higherhrnet_jax.inference import export as E
from higherhrnet_jax.inference import outputs as O
from higherhrnet_jax.inference import transforms as T

import composed  # tests/inference/composed.py


class StandIn(nn.Module):
  """A small two-stage network with the HigherHRNet output layout (1/4: 2K, 1/2: K)."""

  num_joints: int = 17

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(nn.Conv(8, (3, 3), strides=2, padding=1)(x))
    h = nn.BatchNorm(use_running_average=not train)(h)
    h4 = nn.relu(nn.Conv(8, (3, 3), strides=2, padding=1)(h))
    out0 = nn.Conv(2 * self.num_joints, (1, 1))(h4)
    up = nn.ConvTranspose(8, (4, 4), strides=(2, 2), padding='SAME')(h4)
    out1 = nn.Conv(self.num_joints, (1, 1))(up)
    return [out0, out1]


def _spec(scales):
  return O.OutputSpec(17, keypoints.COCO.flip_index, (True, True), (True, False), (17, 0),
                      scale_factors=tuple(scales))


def _batch(rng, n, scales, input_size=64):
  images = [rng.integers(0, 256, (int(rng.integers(30, 60)), int(rng.integers(60, 90)), 3),
                         dtype=np.uint8) for _ in range(n)]
  inputs = [T.prepare_test_input(im, input_size, scales) for im in images]
  return T.bucket_batch(inputs, multiple=128)


@pytest.mark.parametrize('embed,scales,sizes', [(False, (1.0, 0.5), (3,)), (True, (1.0,), (3, 1))])
def test_export_roundtrip_symbolic_batch(tmp_path, embed, scales, sizes):
  rng = np.random.default_rng(0)
  spec = _spec(scales)
  model = StandIn()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  apply_fn = lambda v, x: model.apply(v, x, train=False)
  batch3 = _batch(rng, 3, spec.scale_factors)
  shapes = [im.shape[1:3] for im in batch3['images']]
  exported = E.export_inference(apply_fn, spec, variables, shapes, batch3['base_shape'],
                                embed_variables=embed)
  path = E.save(exported, tmp_path / 'model.jaxexport')
  loaded = E.load(path)
  bundle = E.load_bundle(E.save_bundle(tmp_path / 'bundle', exported,
                                       None if embed else variables))
  live = composed.jit_inference(apply_fn, spec)
  for n in sizes:
    b = batch3 if n == 3 else {**batch3, 'images': tuple(i[:1] for i in batch3['images']),
                                'input_hw': tuple(h[:1] for h in batch3['input_hw']),
                                'base_hw': batch3['base_hw'][:1]}
    args = (b['images'], b['input_hw'], b['base_hw'])
    got = loaded.call(*args) if embed else loaded.call(variables, *args)
    want = live(variables, *args, base_shape=b['base_shape'])
    for g, w in zip(got + bundle(*args), want + want):
      assert g.shape == w.shape and g.shape[0] == n
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-6)
    assert np.abs(np.asarray(got[0])).max() > 0


def test_export_rejects_bad_shapes():
  spec = _spec((1.0,))
  with pytest.raises(ValueError, match='multiple of 32'):
    E.export_inference(lambda v, x: x, spec, {}, [(100, 128)], (100, 128))
  with pytest.raises(ValueError, match='scales'):
    E.export_inference(lambda v, x: x, spec, {}, [(128, 128), (64, 64)], (128, 128))
  with pytest.raises(FileNotFoundError):
    E.load('does/not/exist.jaxexport')


def test_bundle_checks_variables(tmp_path):
  spec = _spec((1.0,))
  apply_fn = lambda v, x: [jnp.zeros(x.shape[:1] + (x.shape[1] // 4, x.shape[2] // 4, 34)) + v,
                           jnp.zeros(x.shape[:1] + (x.shape[1] // 2, x.shape[2] // 2, 17))]
  exported = E.export_inference(apply_fn, spec, jnp.float32(0), [(64, 64)], (64, 64))
  with pytest.raises(ValueError, match='takes the weights'):
    E.save_bundle(tmp_path, exported)
  embedded = E.export_inference(apply_fn, spec, jnp.float32(0), [(64, 64)], (64, 64),
                                embed_variables=True)
  with pytest.raises(ValueError, match='embedded'):
    E.save_bundle(tmp_path, embedded, jnp.float32(0))


@pytest.mark.slow
def test_export_real_tiny_model(tmp_path):
  """The real tiny HigherHRNet through export (skipped until the model package exists)."""
  models = pytest.importorskip('higherhrnet_jax.models', reason='model package not available')
  if not hasattr(models, 'build'):
    pytest.skip('higherhrnet_jax.models.build not available yet')
  from higherhrnet_jax.config import load_config
  import pathlib
  config = load_config(pathlib.Path(__file__).resolve().parents[2] / 'configs' / 'tiny.py')
  model = models.build(config.model)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  apply_fn = lambda v, x: model.apply(v, x, train=False)
  spec = O.OutputSpec.from_config(config)
  rng = np.random.default_rng(1)
  batch = _batch(rng, 2, spec.scale_factors)
  shapes = [im.shape[1:3] for im in batch['images']]
  exported = E.export_inference(apply_fn, spec, variables, shapes, batch['base_shape'])
  loaded = E.load(E.save(exported, tmp_path / 'tiny.jaxexport'))
  args = (batch['images'], batch['input_hw'], batch['base_hw'])
  got = loaded.call(variables, *args)
  want = composed.jit_inference(apply_fn, spec)(variables, *args, base_shape=batch['base_shape'])
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-5)
