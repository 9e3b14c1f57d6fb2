"""Flip test, stage fusion, projection and multi-scale aggregation vs the official fixtures.

Tolerance (fixture README): `final_heatmaps` and `tags` <= 1e-6 absolute. The fixtures
store the stand-in network outputs for the original and the mirrored input; they are fed
to the aggregation directly (NCHW transposed to NHWC).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import keypoints
from higherhrnet_jax.config import base_config
from higherhrnet_jax.data import normalization
from higherhrnet_jax.inference import outputs as O
from higherhrnet_jax.inference import transforms as T

import composed  # tests/inference/composed.py

TOL = 1e-6


def _nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


def _spec(scale_factors):
  return O.OutputSpec(num_joints=17, flip_index=keypoints.COCO.flip_index,
                      stage_heatmaps=(True, True), stage_tags=(True, False),
                      stage_tag_offset=(17, 0), scale_factors=tuple(scale_factors))


@functools.cache
def _jit_aggregate():
  return jax.jit(O.aggregate_outputs, static_argnums=(0, 4, 6))


def _load_case(d, p):
  factors = tuple(float(s) for s in d[p + 'scale_factors'])
  outs, flips, shapes = [], [], []
  for k in range(len(factors)):
    q = f'{p}s{k}_'
    outs.append([_nhwc(d[q + 'out0']), _nhwc(d[q + 'out1'])])
    flips.append([_nhwc(d[q + 'out0_flipcall']), _nhwc(d[q + 'out1_flipcall'])])
    shapes.append(tuple(int(v) for v in d[q + 'input_hw']))
  bw, bh = (int(v) for v in d[p + 'base_size'])
  return factors, outs, flips, shapes, (bh, bw)


CASES = [('aggregate.npz', 'ss_'), ('aggregate.npz', 'ms_'), ('more/aggregate.npz', 'ss_'),
         pytest.param('more/aggregate.npz', 'ms_', marks=pytest.mark.slow),
         ('more/aggregate.npz', 'ms2_')]


@pytest.mark.parametrize('name,prefix', CASES)
def test_aggregate_parity(fixtures_dir, name, prefix):
  d = np.load(fixtures_dir / name)
  factors, outs, flips, shapes, base = _load_case(d, prefix)
  # The scale-aware resize gives the same sizes as the official loop.
  image = d['image'] if 'image' in d.files else np.zeros((*d['image_hw'], 3), np.uint8)
  t = T.prepare_test_input(image, 512, factors)
  assert [im.shape[:2] for im in t.images] == shapes
  assert t.base_size == tuple(d[prefix + 'base_size'])
  np.testing.assert_array_equal(t.center, d[prefix + 'final_center'])
  np.testing.assert_array_equal(t.scale, d[prefix + 'final_scale'])

  hw = [jnp.array([s], jnp.int32) for s in shapes]
  final, tags = _jit_aggregate()(_spec(factors), outs, flips, hw, tuple(shapes),
                                 jnp.array([base], jnp.int32), base)
  err_h = np.abs(np.asarray(final) - _nhwc(d[prefix + 'final_heatmaps'])).max()
  err_t = np.abs(np.asarray(tags) - np.transpose(d[prefix + 'tags'], (0, 2, 3, 1, 4))).max()
  assert err_h <= TOL and err_t <= TOL, (err_h, err_t)


def test_padded_bucket_equals_unpadded(fixtures_dir):
  """Outputs padded with garbage to a bigger bucket give the official valid region, 0 outside."""
  d = np.load(fixtures_dir / 'more/aggregate.npz')
  factors, outs, flips, shapes, base = _load_case(d, 'ms2_')
  rng = np.random.default_rng(0)
  pad = 64  # input pixels added at the bottom and right of every scale

  def padded(a, stride):
    extra = pad // stride
    big = rng.normal(0, 50, (a.shape[0], a.shape[1] + extra, a.shape[2] + extra, a.shape[3]))
    big = big.astype(np.float32)
    big[:, :a.shape[1], :a.shape[2]] = a
    return big

  outs_p = [[padded(o0, 4), padded(o1, 2)] for o0, o1 in outs]
  flips_p = [[padded(o0, 4), padded(o1, 2)] for o0, o1 in flips]
  shapes_p = tuple((h + pad, w + pad) for h, w in shapes)
  base_p = (base[0] + 64, base[1] + 128)
  hw = [jnp.array([s], jnp.int32) for s in shapes]
  final, tags = _jit_aggregate()(_spec(factors), outs_p, flips_p, hw, shapes_p,
                                 jnp.array([base], jnp.int32), base_p)
  assert final.shape[1:3] == base_p
  [(f_crop, t_crop)] = composed.crop(final, tags, np.array([base]))
  assert np.abs(f_crop - _nhwc(d['ms2_final_heatmaps'])[0]).max() <= TOL
  assert np.abs(t_crop - np.transpose(d['ms2_tags'], (0, 2, 3, 1, 4))[0]).max() <= TOL
  assert not np.asarray(final)[0, base[0]:].any() and not np.asarray(tags)[0, :, base[1]:].any()


def test_resize_known_values():
  resize = jax.jit(O.resize_bilinear, static_argnums=1)
  # torch.nn.functional.interpolate([0, 1], size=4, mode='bilinear', align_corners=False)
  # gives [0, 0.25, 0.75, 1]; to size 1 it samples src = 0.5.
  x = jnp.array([[0.0, 1.0]]).reshape(1, 1, 2, 1)
  np.testing.assert_allclose(np.asarray(resize(x, (1, 4)))[0, 0, :, 0],
                             [0, 0.25, 0.75, 1])
  np.testing.assert_allclose(np.asarray(resize(x, (1, 1)))[0, 0, :, 0], [0.5])
  # Equal sizes copy exactly, and a NaN stays where it is.
  y = np.random.default_rng(1).normal(size=(1, 5, 7, 2)).astype(np.float32)
  y[0, 2, 3, 0] = np.nan
  z = np.asarray(resize(jnp.asarray(y), (5, 7)))
  np.testing.assert_array_equal(z, y)


def test_flip_width_within_valid_region():
  x = jnp.arange(2 * 6, dtype=jnp.float32).reshape(2, 1, 6, 1)
  out = np.asarray(O.flip_width(x, jnp.array([4, 6])))[:, 0, :, 0]
  np.testing.assert_array_equal(out, [[3, 2, 1, 0, 4, 5], [11, 10, 9, 8, 7, 6]])


def test_normalization_table_matches_official(fixtures_dir):
  lut = np.load(fixtures_dir / 'train_sample.npz')['norm_lut']
  np.testing.assert_array_equal(normalization.table(), lut)


def test_spec_from_config():
  c = base_config()
  c.test.scale_factor = (0.5, 2.0, 1.0)
  spec = O.OutputSpec.from_config(c)
  assert spec.scale_factors == (2.0, 1.0, 0.5)
  assert spec.stage_heatmaps == (True, True) and spec.stage_tags == (True, False)
  assert spec.stage_tag_offset == (17, 17)
  assert spec.project2image
  c.test.project2image = False
  assert not O.OutputSpec.from_config(c).project2image


def test_without_projection_is_the_projection_of_the_average(fixtures_dir):
  """project2image=False averages at the network resolution; bilinear resizing is linear,
  so resizing that result to the base size gives the official projected result (<= 1e-6)."""
  import dataclasses
  d = np.load(fixtures_dir / 'more/aggregate.npz')
  factors, outs, flips, shapes, base = _load_case(d, 'ss_')
  spec = dataclasses.replace(_spec(factors), project2image=False)
  t = T.prepare_test_input(d['image'], 512, factors, project2image=False)
  final_wh = t.base_size
  assert final_wh == (shapes[0][1] // 2, shapes[0][0] // 2)
  final_hw = (final_wh[1], final_wh[0])
  final, tags = _jit_aggregate()(spec, outs, flips, [jnp.array([shapes[0]], jnp.int32)],
                                 tuple(shapes), jnp.array([final_hw], jnp.int32), final_hw)
  assert final.shape[1:3] == final_hw and tags.shape[1:3] == final_hw
  up = jax.jit(O.resize_bilinear, static_argnums=1)
  projected = np.asarray(up(final, base))
  assert np.abs(projected - _nhwc(d['ss_final_heatmaps'])).max() <= TOL
  tags_up = np.stack([np.asarray(up(tags[..., i], base)) for i in range(2)], axis=-1)
  # Tags: the same two resizes (stage 0 -> stage 1 -> base) as the official projection.
  assert np.abs(tags_up - np.transpose(d['ss_tags'], (0, 2, 3, 1, 4))).max() <= TOL


def _pointwise_net(variables, x):
  """A stand-in network whose outputs at a pixel see only its own input cell.

  Unlike a CNN it is unaffected by what lies in the padding, so a bucketed batch must
  reproduce the per-image results exactly.
  """
  b, h, w, _ = x.shape
  cell = lambda s: x.reshape(b, h // s, s, w // s, s, 3).mean(axis=(2, 4))
  return [jnp.tanh(cell(4) @ variables['w0']), jnp.tanh(cell(2) @ variables['w1'])]


def test_inference_fn_bucketed_batch_equals_single_images(fixtures_dir):
  d = np.load(fixtures_dir / 'resize.npz')
  rng = np.random.default_rng(0)
  variables = {'w0': jnp.asarray(rng.normal(size=(3, 34)), jnp.float32),
               'w1': jnp.asarray(rng.normal(size=(3, 17)), jnp.float32)}
  spec = _spec((1.0, 0.5))
  fn = composed.jit_inference(_pointwise_net, spec)
  # Small images keep this fast: downscale two fixture images (one landscape, one portrait).
  images = [d['img1'][::4, ::4], np.ascontiguousarray(d['img3'][::4, ::4].transpose(1, 0, 2))]
  inputs = [T.prepare_test_input(im, 128, spec.scale_factors) for im in images]
  batch = T.bucket_batch(inputs, multiple=128)
  final, tags = fn(variables, batch['images'], batch['input_hw'], batch['base_hw'],
                   base_shape=batch['base_shape'])
  assert tags.shape[-1] == 2
  cropped = composed.crop(final, tags, batch['base_hw'])
  for t, (hm, tg) in zip(inputs, cropped):
    single = T.bucket_batch([t], multiple=64)
    assert single['base_shape'] == hm.shape[:2]
    f1, t1 = fn(variables, single['images'], single['input_hw'], single['base_hw'],
                base_shape=single['base_shape'])
    np.testing.assert_allclose(hm, np.asarray(f1)[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(tg, np.asarray(t1)[0], rtol=0, atol=1e-6)
    assert np.abs(hm).max() > 0.1


def test_per_scale_heatmaps_parity(fixtures_dir):
  """The [non-flip, flip] heatmaps of each scale, projected to the base size (<= 1e-6)."""
  d = np.load(fixtures_dir / 'aggregate.npz')
  factors, outs, flips, shapes, base = _load_case(d, 'ms_')
  spec = _spec(factors)
  step = jax.jit(O.multi_stage_outputs, static_argnums=(0, 4, 6))
  for k in range(len(factors)):
    heatmaps, tags = step(spec, outs[k], flips[k], jnp.array([shapes[k]], jnp.int32), shapes[k],
                          jnp.array([base], jnp.int32), base)
    assert len(heatmaps) == 2 and len(tags) == 2
    want = np.transpose(d[f'ms_s{k}_heatmaps'], (0, 2, 3, 1))
    for n in range(2):
      assert np.abs(np.asarray(heatmaps[n])[0] - want[n]).max() <= TOL, (k, n)
