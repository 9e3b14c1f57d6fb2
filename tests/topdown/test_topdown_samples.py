"""Top-down COCO training samples vs the official `__getitem__` (`train_sample.npz`).

With the official random draws every array must match. Tolerances, each with its reason:
  * record centres / scales, final centres / scales, joints, targets, target weights and
    Gaussian kernels: bitwise (float32 / float64 arithmetic replayed operation by operation;
    the kernel's exp and the joints' dot product are emulated exactly, so no host SIMD or
    BLAS enters);
  * affine matrices: <= 1e-9 (cv2.getAffineTransform's 6x6 solve belongs to the OpenCV
    build; it is bitwise here, 1e-9 leaves room for another build and still catches any
    wrong point);
  * warped uint8 crops: exact with OpenCV 5.0.x (the fixtures' version); other OpenCV 5
    releases round a few interpolations differently, so there at most 0.1% of the values
    may be off by one grey level (a wrong matrix changes far more, by more);
  * normalized inputs: exactly the `norm_lut` value of our uint8 crop (table lookup).
"""

import functools
import dataclasses
import json
import pathlib
import platform
from fractions import Fraction

import cv2
import numpy as np
import pytest

from higherhrnet_jax import keypoints
from higherhrnet_jax.data import coco
from higherhrnet_jax.topdown import records as R
from higherhrnet_jax.topdown import samples as S

import numerics
from numerics import FIXTURE_OPENCV

MAX_OFF_FRACTION = 1e-3  # of the values, each off by one grey level (numerics.FIXTURE_OPENCV)
assert_warp_matches = functools.partial(numerics.assert_warp_matches,
                                        max_off_fraction=MAX_OFF_FRACTION)

COCO_256 = dict(input_size=(256, 192), sigma=2.0)
COCO_384 = dict(input_size=(384, 288), sigma=3.0)


class Replay:
  """A stand-in generator returning the fixture's recorded draws, checking their kinds.

  `np.random.rand` and `random.random` are uniform (`random()`), `np.random.randn` normal.
  """

  def __init__(self, names, values):
    self.items = [(str(n), float(v)) for n, v in zip(names, values)]
    self.used = 0

  def _next(self, kinds):
    assert self.used < len(self.items), 'more draws than the official call made'
    name, value = self.items[self.used]
    assert name in kinds, f'draw {self.used}: official {name}, asked for {kinds}'
    self.used += 1
    return value

  def random(self):
    return self._next(('np.random.rand', 'random.random'))

  def standard_normal(self):
    return self._next(('np.random.randn',))


def fixture_draws(d, prefix: str, num_visible: int, spec: R.SampleSpec) -> S.Draws:
  """The official draws of one fixture sample, through `sample_draws`' call order."""
  rng = Replay(d[prefix + 'draw_names'], d[prefix + 'draw_values'])
  draws = S.sample_draws(rng, num_visible, spec)
  assert rng.used == len(rng.items), 'fewer draws than the official call made'
  if draws.u_hb is not None:
    assert rng.items[0][0] == 'np.random.rand'
  return draws


def assert_normalized(image: np.ndarray, crop_uint8: np.ndarray, lut: np.ndarray) -> None:
  """NHWC float32 input == the normalization table applied to the uint8 crop, bitwise."""
  assert image.dtype == np.float32 and image.shape == crop_uint8.shape
  for c in range(3):
    np.testing.assert_array_equal(image[..., c], lut[c][crop_uint8[..., c]])


def spec_for(data: dict, kp: keypoints.KeypointSpec = keypoints.COCO) -> R.SampleSpec:
  return R.SampleSpec.from_config(data, kp)


@pytest.fixture(scope='module')
def ts(topdown_fixtures_dir):
  return dict(np.load(topdown_fixtures_dir / 'train_sample.npz'))


@pytest.fixture(scope='module')
def tp(topdown_fixtures_dir):
  return dict(np.load(topdown_fixtures_dir / 'test_pipeline.npz'))


@pytest.fixture(scope='module')
def source(coco_sample_dir):
  return coco.coco_source(coco_sample_dir / 'test_coco.json', coco_sample_dir, train=False)


@pytest.fixture(scope='module')
def recs(source):
  return R.coco_records(source, aspect_ratio=0.75)


# ------------------------------------------------------------------ kernel and exact helpers


@pytest.mark.parametrize('sigma', [2, 3])
def test_gaussian_kernel_matches_official(ts, sigma):
  g = S.gaussian_kernel(sigma)
  expected = ts[f'gaussian_sigma{sigma}']
  np.testing.assert_array_equal(g, expected)  # bitwise: every target pixel is a copy of these
  assert g.dtype == np.float32 and g[3 * sigma, 3 * sigma] == 1.0
  # The stored kernel is not float32(exp(float64)): plain float64 evaluation cannot stand in.
  size = 6 * sigma + 1
  x = np.arange(size, dtype=np.float32)
  arg = -((x - size // 2) ** 2 + (x[:, None] - size // 2) ** 2) / np.float32(2 * sigma ** 2)
  assert np.count_nonzero(np.exp(arg.astype(np.float64)).astype(np.float32) != expected) > 50


def _numpy_exp_is_x86_simd() -> bool:
  try:
    from numpy._core._multiarray_umath import __cpu_features__ as features
  except ImportError:
    return False
  if platform.machine().lower() not in ('x86_64', 'amd64'):
    return False
  if 'X86_V3' in features:  # NumPy >= 2.4 dispatches on x86-64 levels (V3: AVX2 + FMA)
    return bool(features['X86_V3'])
  return bool(features.get('AVX2') and features.get('FMA3'))


@pytest.mark.skipif(not _numpy_exp_is_x86_simd(),
                    reason="NumPy's float32 exp takes another code path on this host")
def test_simd_expf_matches_numpy_exp_on_this_host():
  # Bitwise: the same algorithm (AVX2 and AVX-512 paths agree); any slip in a constant or
  # in the FMA emulation shows up on some of these arguments.
  rng = np.random.default_rng(0)
  x = np.concatenate([-rng.uniform(0, 9, 1 << 18), rng.uniform(-87, 88, 1 << 16)])
  x = np.concatenate([x.astype(np.float32), -np.arange(0, 163, dtype=np.float32) / 18,
                      -np.arange(0, 73, dtype=np.float32) / 8])
  np.testing.assert_array_equal(S.numpy_simd_expf(x), np.exp(x))


def test_fma_emulations_round_once():
  # Exact reference with fractions; cases built to cancel, where a double rounding would show.
  rng = np.random.default_rng(1)
  a = rng.standard_normal(400) * rng.choice([1e-3, 1.0, 1e3], 400)
  b = rng.uniform(-700, 700, 400)
  c = -(a * b) * (1 + rng.standard_normal(400) * 1e-12)
  got = S._fma64(a, b, c)
  want = [float(Fraction(x) * Fraction(y) + Fraction(z)) for x, y, z in zip(a, b, c)]
  np.testing.assert_array_equal(got, want)
  a32, b32 = a.astype(np.float32), b.astype(np.float32)
  c32 = (-(a32.astype(np.float64) * b32)).astype(np.float32) * np.float32(1 + 1e-6)
  got32 = S._fma32(a32, b32, c32)
  for x, y, z, g in zip(a32, b32, c32, got32):
    exact = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
    below, above = np.nextafter(g, np.float32(-np.inf)), np.nextafter(g, np.float32(np.inf))
    err = abs(Fraction(float(g)) - exact)
    assert err <= abs(Fraction(float(below)) - exact) and err <= abs(Fraction(float(above)) - exact)


# ----------------------------------------------------------------------------- records


def test_coco_records_match_official(recs, ts, tp, source):
  assert len(recs) == int(ts['db_size']) == 12
  np.testing.assert_array_equal([r.annotation_id for r in recs], tp['gt_ann_id'])
  centers, scales = np.stack([r.center for r in recs]), np.stack([r.scale for r in recs])
  assert centers.dtype == scales.dtype == np.float32
  np.testing.assert_array_equal(centers, tp['gt_center'])  # bitwise (README 8.1: exact)
  np.testing.assert_array_equal(scales, tp['gt_scale'])
  for r, box, clean, hw in zip(recs, tp['gt_bbox'], tp['gt_clean_bbox'], tp['gt_image_hw']):
    assert tuple(hw) == r.image_hw
    np.testing.assert_array_equal(R.clean_box(box, tuple(hw)), clean)
    kps = np.asarray(source.coco.anns[r.annotation_id]['keypoints'], np.float64).reshape(17, 3)
    np.testing.assert_array_equal(r.joints[:, :2], kps[:, :2])
    np.testing.assert_array_equal(r.joints_vis[:, 0], np.minimum(kps[:, 2], 1))
    assert not r.joints[:, 2].any() and not r.joints_vis[:, 2].any()
  for k in range(int(ts['num_samples'])):
    p = f'sample{k}_'
    r = recs[int(ts[p + 'db_index'])]
    assert r.image_id == int(ts[p + 'image_id']) and r.image_path.name == str(ts[p + 'file'])
    for name in ('center', 'scale', 'joints', 'joints_vis'):
      got = getattr(r, name)
      assert got.dtype == ts[p + 'db_' + name].dtype, name
      np.testing.assert_array_equal(got, ts[p + 'db_' + name], err_msg=name)


def test_box_to_center_scale_matches_crafted_boxes(tp):
  for i in range(int(tp['num_boxes'])):
    p = f'box{i}_'
    center, scale = R.box_to_center_scale(tp[p + 'box'], 0.75)
    np.testing.assert_array_equal(center, tp[p + 'center'], err_msg=p)  # bitwise (8.1)
    np.testing.assert_array_equal(scale, tp[p + 'scale'], err_msg=p)
  c, s = R.box_to_center_scale([-1.3, 10, 0.6, 40], 0.75)  # centre x == -1: not padded
  assert c[0] == -1 and s[1] == np.float32(0.2)


def test_coco_records_skip_what_the_official_skips(tmp_path):
  kp = [10, 10, 2] + [0, 0, 0] * 16
  anns = [
      dict(id=1, image_id=7, category_id=1, iscrowd=1, area=50.0, bbox=[0, 0, 10, 10],
           keypoints=kp, num_keypoints=1, segmentation={'counts': [100], 'size': [10, 10]}),
      dict(id=2, image_id=7, category_id=1, iscrowd=0, area=50.0, bbox=[0, 0, 5, 5],
           keypoints=[0] * 51, num_keypoints=0, segmentation=[[0, 0, 1, 0, 1, 1]]),
      dict(id=3, image_id=7, category_id=1, iscrowd=0, area=50.0, bbox=[12, 0, 5, 5],
           keypoints=kp, num_keypoints=1),  # box right of the 10 px wide image
      dict(id=4, image_id=7, category_id=1, iscrowd=0, area=0.0, bbox=[0, 0, 5, 5],
           keypoints=kp, num_keypoints=1),  # zero area
      dict(id=5, image_id=7, category_id=1, iscrowd=0, area=20.0, bbox=[-2.5, 1, 8, 4],
           keypoints=kp, num_keypoints=1),
  ]
  data = dict(images=[dict(id=7, file_name='a.jpg', height=10, width=10)], annotations=anns,
              categories=[dict(id=1, name='person')])
  (tmp_path / 'ann.json').write_text(json.dumps(data))
  src = coco.coco_source(tmp_path / 'ann.json', tmp_path, train=False)
  recs = R.coco_records(src, 0.75)
  assert [r.annotation_id for r in recs] == [5]
  # Cleaned box [0, 1, 7, 3]: the official cleaning clips x to 0 but keeps the width
  # (minus one pixel), so the box moves right: centre (3.5, 2.5).
  np.testing.assert_array_equal(recs[0].center, np.float32([3.5, 2.5]))


# ----------------------------------------------------------------------------- samples


@pytest.mark.parametrize('k', range(8))
def test_train_sample_matches_official(recs, ts, k):
  p = f'sample{k}_'
  lut = ts['norm_lut']
  rec = recs[int(ts[p + 'db_index'])]
  image = R.load_image(rec)
  assert image.shape[:2] == tuple(ts[p + 'image_hw'])
  spec = spec_for(COCO_256)
  draws = fixture_draws(ts, p, rec.num_visible, spec)
  crop = S.augment(image, rec, draws, spec)
  assert crop.half_body == bool(ts[p + 'half_body'])
  assert crop.flipped == bool(ts[p + 'flipped'])
  assert crop.rotation == float(ts[p + 'rotation'])
  if crop.half_body:
    c, s = S.half_body_box(rec.joints, rec.joints_vis, draws.z_hb, spec)
    np.testing.assert_array_equal(c, ts[p + 'half_body_center'])
    np.testing.assert_array_equal(s, ts[p + 'half_body_scale'])
  assert crop.center.dtype == np.float32 and crop.scale.dtype == np.float64
  np.testing.assert_array_equal(crop.center, ts[p + 'center'])
  np.testing.assert_array_equal(crop.scale, ts[p + 'scale'])
  np.testing.assert_allclose(crop.trans, ts[p + 'trans'], rtol=0, atol=1e-9)
  assert_warp_matches(crop.image, ts[p + 'input_uint8'])
  np.testing.assert_array_equal(crop.joints, ts[p + 'joints'])
  np.testing.assert_array_equal(crop.joints_vis, ts[p + 'joints_vis'])

  out = S.make_train_sample(image, rec, draws, spec)
  assert_normalized(out['image'], crop.image, lut)
  if FIXTURE_OPENCV:
    np.testing.assert_array_equal(out['image'], ts[p + 'input'].transpose(1, 2, 0))
  assert out['target'].shape == (64, 48, 17) and out['target'].dtype == np.float32
  np.testing.assert_array_equal(out['target'], ts[p + 'target'].transpose(1, 2, 0))
  assert out['target_weight'].shape == (17,) and out['target_weight'].dtype == np.float32
  np.testing.assert_array_equal(out['target_weight'], ts[p + 'target_weight'][:, 0])
  np.testing.assert_array_equal(out['joints'], ts[p + 'joints'])

  spec48 = spec_for(COCO_384)  # the W48 replay: same draws, 384x288 input, sigma 3
  crop48 = S.augment(image, rec, draws, spec48)
  np.testing.assert_allclose(crop48.trans, ts[p + 'w48_trans'], rtol=0, atol=1e-9)
  assert_warp_matches(crop48.image, ts[p + 'w48_input_uint8'])
  np.testing.assert_array_equal(crop48.joints, ts[p + 'w48_joints'])
  out48 = S.make_train_sample(image, rec, draws, spec48)
  np.testing.assert_array_equal(out48['target'], ts[p + 'w48_target'].transpose(1, 2, 0))
  np.testing.assert_array_equal(out48['target_weight'], ts[p + 'w48_target_weight'][:, 0])


def test_tiny_train_edge_case_targets(topdown_fixtures_dir):
  d = np.load(topdown_fixtures_dir / 'tiny_train.npz')
  for i in range(2):
    target, weight = S.generate_target(d['joints'][i], d['joints_vis'][i], (96, 128), (24, 32), 2)
    np.testing.assert_array_equal(target, d['target'][i].transpose(1, 2, 0))  # bitwise
    np.testing.assert_array_equal(weight, d['target_weight'][i, :, 0])
  target, weight = S.generate_target(d['joints'][0], d['joints_vis'][0], (96, 128), (24, 32), 2)
  np.testing.assert_array_equal(target[..., 1], target[..., 0])  # int(-0.5) == 0: truncation
  assert weight[5] == 1 and not target[..., 5].any()  # window ends exactly at column 0
  assert weight[6] == 0 and weight[8] == 0 and weight[10] == 1


def test_sample_draws_follow_official_conditions():
  spec = spec_for(COCO_256)
  no_flip = dataclasses.replace(spec, flip=False)
  seen = set()
  for seed in range(400):
    for num_visible, sp in ((seed % 18, spec), (17, no_flip)):
      draws = S.sample_draws(np.random.default_rng(seed), num_visible, sp)
      assert (draws.u_hb is not None) == (num_visible > 8)
      assert (draws.z_hb is not None) == (draws.u_hb is not None and draws.u_hb < 0.3)
      assert draws.z_s is not None and draws.u_r is not None
      assert (draws.z_r is not None) == (draws.u_r <= 0.6)
      assert (draws.u_f is not None) == sp.flip
      # The values are the generator's stream, in the official order.
      rng = np.random.default_rng(seed)
      stream = [draws.u_hb, draws.z_hb, draws.z_s, draws.u_r, draws.z_r, draws.u_f]
      kinds = ['u', 'z', 'z', 'u', 'z', 'u']
      for v, kind in zip(stream, kinds):
        if v is not None:
          assert v == (rng.random() if kind == 'u' else rng.standard_normal())
      seen.add((draws.z_hb is not None, draws.z_r is not None, draws.u_f is not None))
  assert len(seen) >= 5  # every branch combination was exercised
  a = S.sample_draws(np.random.default_rng(3), 17, spec)
  assert a == S.sample_draws(np.random.default_rng(3), 17, spec)


def test_sample_spec_from_config():
  from higherhrnet_jax.config import pose_hrnet
  cfg = pose_hrnet.base_config()
  spec = R.SampleSpec.from_config(cfg.data, keypoints.COCO)
  assert spec.image_size == (192, 256) and spec.heatmap_size == (48, 64) and spec.sigma == 2
  assert spec.upper_body_ids == tuple(range(11)) and spec.aspect_ratio == 0.75
  assert spec.flip_pairs == tuple(map(tuple, [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12],
                                              [13, 14], [15, 16]]))
  assert (spec.scale_factor, spec.rot_factor, spec.prob_half_body) == (0.35, 45, 0.3)
  big = R.SampleSpec.from_config(pose_hrnet.with_input_size(cfg, 384, 288).data, keypoints.COCO)
  assert big.image_size == (288, 384) and big.heatmap_size == (72, 96) and big.sigma == 3
  with pytest.raises(ValueError, match='codec'):
    R.SampleSpec.from_config({**COCO_256, 'codec': 'bogus'}, keypoints.COCO)
  with pytest.raises(ValueError, match='upper_body_ids'):
    R.SampleSpec.from_config(COCO_256, keypoints.CROWDPOSE)
  with pytest.raises(ValueError, match='sigma'):
    R.SampleSpec.from_config({**COCO_256, 'sigma': 2.1}, keypoints.COCO)


# -------------------------------------------------------------------------- bad inputs


def _record(joints_vis_value: float, center, scale, hw=(100, 120)) -> R.PersonRecord:
  joints = np.zeros((17, 3))
  joints[:, 0], joints[:, 1] = np.linspace(10, 90, 17), np.linspace(20, 80, 17)
  vis = np.zeros((17, 3))
  vis[:, :2] = joints_vis_value
  return R.PersonRecord(0, 1, pathlib.Path('x.jpg'), hw, np.float32(center),
                        np.float32(scale), joints, vis)


def test_no_visible_joints_gives_zero_weights():
  spec = spec_for(COCO_256)
  rec = _record(0.0, [60, 50], [0.5, 0.66])
  image = np.full((100, 120, 3), 90, np.uint8)
  draws = S.sample_draws(np.random.default_rng(0), rec.num_visible, spec)
  assert draws.u_hb is None
  out = S.make_train_sample(image, rec, S.Draws(z_s=0.0, u_r=0.9, u_f=0.1), spec)
  assert not out['target_weight'].any() and not out['target'].any()
  assert out['flipped'] and out['image'].shape == (256, 192, 3)


def test_box_outside_image_gives_empty_crop():
  spec = spec_for(COCO_256)
  rec = _record(1.0, [5000, -3000], [0.3, 0.4])
  image = np.full((100, 120, 3), 200, np.uint8)
  out = S.make_train_sample(image, rec, S.Draws(z_s=0.5, u_r=0.1, z_r=0.3, u_f=0.9), spec)
  crop = S.augment(image, rec, S.Draws(z_s=0.5, u_r=0.1, z_r=0.3, u_f=0.9), spec)
  assert crop.image.shape == (256, 192, 3) and not crop.image.any()  # zero border only
  assert np.isfinite(out['image']).all() and np.isfinite(out['joints']).all()
  assert not out['target_weight'].any()  # every joint lands far outside the crop


def test_bad_images_and_draws_raise(tmp_path):
  spec = spec_for(COCO_256)
  bad = tmp_path / 'broken.jpg'
  bad.write_bytes(b'not an image at all')
  rec = R.PersonRecord(0, 1, bad, (10, 10), np.float32([5, 5]), np.float32([0.1, 0.1]),
                       np.zeros((17, 3)), np.zeros((17, 3)))
  with pytest.raises(coco.CorruptImageError, match='broken.jpg'):
    R.load_image(rec)
  with pytest.raises(coco.CorruptImageError, match='missing.jpg'):
    R.load_image(dataclasses.replace(rec, image_path=tmp_path / 'missing.jpg'))
  ok = tmp_path / 'small.png'
  cv2.imwrite(str(ok), np.zeros((8, 9, 3), np.uint8))
  with pytest.raises(coco.CorruptImageError, match='small.png'):  # size differs from the file
    R.load_image(dataclasses.replace(rec, image_path=ok))
  with pytest.raises(ValueError, match='uint8'):
    S.make_train_sample(np.zeros((10, 10, 3), np.float32), rec, S.Draws(z_s=0, u_r=1), spec)
  with pytest.raises(ValueError, match='z_r'):
    S.make_train_sample(np.zeros((10, 10, 3), np.uint8), rec, S.Draws(z_s=0, u_r=0.1), spec)
