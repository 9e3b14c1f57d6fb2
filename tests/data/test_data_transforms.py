"""Augmentation and the whole training sample vs the official pipeline (`train_sample.npz`).

The fixtures give the official random draws; with them every array must match:
affine matrices and joints after the affine to <= 1e-9, heatmap / joint targets exactly,
and the warped images and masks (uint8 values recovered through the fixture's `norm_lut`)
exactly with OpenCV 5.0, whose float32 warp arithmetic the fixtures were made with (README
of the fixtures). Another OpenCV 5 release rounds a few interpolations differently (5.1:
43 of 786,432 image values by one grey level): there the bound is one grey level on at most
0.1% of the values, while a wrong matrix or the fixed-point warp of OpenCV <= 4.10 changes
about 10% of them by up to 5 levels.
"""

import dataclasses
import functools

import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax.data import coco, normalization, targets, transforms

import numerics

FIXTURES = ['train_sample.npz', 'more/train_sample.npz']

S = transforms.SampleConfig.from_config  # the typed settings the sample functions take


@pytest.fixture(scope='module')
def cfg():
  return config_lib.base_config()  # W32 512: input 512, outputs (128, 256), as the fixtures


@pytest.fixture(scope='module')
def src(coco_sample_dir):
  return coco.coco_source(coco_sample_dir / 'test_coco.json', coco_sample_dir)


def _draws(d, p):
  return transforms.AugmentDraws(
      u_scale=float(d[p + 'draw_u_scale']), u_rot=float(d[p + 'draw_u_rot']),
      dx=int(d[p + 'draw_dx']), dy=int(d[p + 'draw_dy']), flip=bool(d[p + 'flipped']))


MAX_OFF_FRACTION = 1e-3  # of the values, each off by one grey level (numerics.FIXTURE_OPENCV)
assert_warp_matches = functools.partial(numerics.assert_warp_matches,
                                        max_off_fraction=MAX_OFF_FRACTION)


def _uint8_from_normalized(lut, image_chw):
  """Inverts the per-channel normalization table (strictly increasing) to uint8 levels."""
  out = np.empty(image_chw.shape[1:] + (3,), np.int64)
  for c in range(3):
    idx = np.searchsorted(lut[c], image_chw[c])
    assert (lut[c][np.minimum(idx, 255)] == image_chw[c]).all(), 'not a table value'
    out[..., c] = idx
  return out.astype(np.uint8)


def test_normalization_table_matches_official(fixtures_dir):
  lut = np.load(fixtures_dir / 'train_sample.npz')['norm_lut']
  np.testing.assert_array_equal(normalization.table(), lut)


@pytest.mark.parametrize('fixture', FIXTURES)
def test_affine_and_warps_match_official(src, cfg, fixtures_dir, fixture):
  d = np.load(fixtures_dir / fixture)
  for k in range(int(d['num_samples'])):
    p = f'sample{k}_'
    i = int(d[p + 'dataset_index'])
    ex = src.train_example(i)
    draws = _draws(d, p)
    assert draws.flip == (float(d[p + 'draw_u_flip']) < 0.5)
    a = transforms.augment(ex['image'], ex['joints'], ex['mask'], draws, S(cfg))
    par = a['params']
    assert abs(par.aug_scale - float(d[p + 'aug_scale'])) <= 1e-12
    assert abs(par.scale - float(d[p + 'scale'])) <= 1e-12
    assert abs(par.aug_rot - float(d[p + 'aug_rot'])) <= 1e-9
    np.testing.assert_allclose(par.center, d[p + 'center'], rtol=0, atol=1e-12)
    np.testing.assert_allclose(a['mat_input'], d[p + 'mat_input'], rtol=0, atol=1e-9)
    expected_u8 = _uint8_from_normalized(d['norm_lut'], d[p + 'image'])
    assert_warp_matches(a['image'], expected_u8)
    for s, res in enumerate((128, 256)):
      np.testing.assert_allclose(a[f'mat_{s}'], d[p + f'mat_output_{res}'], rtol=0, atol=1e-9)
      np.testing.assert_allclose(a[f'joints_xy_{s}'], d[p + f'joints_xy_{res}'], rtol=0, atol=1e-9)
      assert_warp_matches(a[f'mask_{s}'], d[p + f'mask_{res}'])


@pytest.mark.parametrize('fixture', FIXTURES)
def test_make_train_sample_matches_official(src, cfg, fixtures_dir, fixture):
  d = np.load(fixtures_dir / fixture)
  sample_cfg = transforms.SampleConfig.from_config(cfg)
  for k in range(int(d['num_samples'])):
    p = f'sample{k}_'
    ex = src.train_example(int(d[p + 'dataset_index']))
    out = transforms.make_train_sample(ex['image'], ex['joints'], ex['mask'], _draws(d, p),
                                       sample_cfg)
    assert out['image'].shape == (512, 512, 3) and out['image'].dtype == np.float32
    lut = d['norm_lut']
    # Our float32 image must consist of table values too (the normalization is exact).
    assert_warp_matches(_uint8_from_normalized(lut, out['image'].transpose(2, 0, 1)),
                         _uint8_from_normalized(lut, d[p + 'image']))
    for s, res in enumerate((128, 256)):
      assert out[f'heatmaps_{s}'].shape == (res, res, 17)
      assert out[f'heatmaps_{s}'].dtype == np.float32
      np.testing.assert_array_equal(out[f'heatmaps_{s}'].transpose(2, 0, 1),
                                    d[p + f'heatmap_{res}'])
      assert out[f'masks_{s}'].dtype == np.float32
      assert_warp_matches(out[f'masks_{s}'], d[p + f'mask_{res}'])
      assert out[f'joints_{s}'].dtype == np.int32
      np.testing.assert_array_equal(out[f'joints_{s}'], d[p + f'joints_{res}'])


def test_dark_codec_sample_draws_subpixel_targets_at_the_official_joints(src, cfg, fixtures_dir):
  """`data.codec=dark` changes the heatmaps only: sub-pixel Gaussians at the official
  warped joints; image, masks and the joint indices of the tag loss stay official."""
  d = np.load(fixtures_dir / FIXTURES[0])
  dark_cfg = dataclasses.replace(transforms.SampleConfig.from_config(cfg), codec='dark')
  p = 'sample0_'
  ex = src.train_example(int(d[p + 'dataset_index']))
  out = transforms.make_train_sample(ex['image'], ex['joints'], ex['mask'], _draws(d, p),
                                     dark_cfg)
  warped = transforms.augment(ex['image'], ex['joints'], ex['mask'], _draws(d, p), dark_cfg)
  for s, res in enumerate((128, 256)):
    # The official warp of the joints (checked against the fixture above).
    want = targets.subpixel_heatmaps(warped[f'joints_xy_{s}'], res, 2.0)
    np.testing.assert_array_equal(out[f'heatmaps_{s}'], want)
    assert not np.array_equal(want.transpose(2, 0, 1), d[p + f'heatmap_{res}'])
    np.testing.assert_array_equal(out[f'joints_{s}'], d[p + f'joints_{res}'])
    assert_warp_matches(out[f'masks_{s}'], d[p + f'mask_{res}'])


def test_fixture_covers_zero_rotation_and_flip(fixtures_dir):
  d = np.load(fixtures_dir / 'more/train_sample.npz')
  rots = [float(d[f'sample{k}_aug_rot']) for k in range(8)]
  assert 0.0 in rots  # the official skips the rotation branch for exactly 0
  assert any(bool(d[f'sample{k}_flipped']) for k in range(8))


def test_sample_draws_semantics(cfg, fixtures_dir):
  d = np.load(fixtures_dir / 'train_sample.npz')
  hw = tuple(int(v) for v in d['sample0_image_hw'])
  a = transforms.sample_draws(np.random.default_rng(7), hw, S(cfg))
  b = transforms.sample_draws(np.random.default_rng(7), hw, S(cfg))
  assert a == b  # a pure function of the generator state
  for seed in range(200):
    dr = transforms.sample_draws(np.random.default_rng(seed), hw, S(cfg))
    assert 0 <= dr.u_scale < 1 and 0 <= dr.u_rot < 1
    par = transforms.affine_params(dr, hw, S(cfg))
    # Official randint bounds: int() of the float bounds, high exclusive (fixture randint_args).
    lo, hi = int(-40 * par.scale), int(40 * par.scale)
    assert lo <= dr.dx < hi and lo <= dr.dy < hi
  # The fixture's stored randint arguments follow the same rule.
  lo, hi = d['sample0_randint_args']
  assert int(lo) <= int(d['sample0_draw_dx']) < int(hi)


def test_flip_probability_from_config():
  cfg = config_lib.base_config()
  cfg.data.flip = 0.0
  assert not any(transforms.sample_draws(np.random.default_rng(s), (100, 120), S(cfg)).flip
                 for s in range(20))
  cfg.data.flip = 1.0
  assert all(transforms.sample_draws(np.random.default_rng(s), (100, 120), S(cfg)).flip
             for s in range(20))


def test_long_scale_type_and_flip_index():
  cfg = config_lib.base_config()
  cfg.data.scale_type = 'long'
  dr = transforms.AugmentDraws(u_scale=0.0, u_rot=0.5, dx=0, dy=0, flip=False)
  assert transforms.affine_params(dr, (300, 500), S(cfg)).scale == pytest.approx(500 / 200 * 0.75)
  joints = np.zeros((1, 17, 3))
  joints[0, 1] = [10.0, 4.0, 2]  # left eye
  flipped = transforms.flip_joints(joints, cfg.dataset.keypoints.flip_index, 128)
  np.testing.assert_array_equal(flipped[0, 2], [117.0, 4.0, 2])  # becomes the right eye


def test_crowdpose_config_flip_index():
  cfg = config_lib.crowdpose(config_lib.base_config())
  c = transforms.SampleConfig.from_config(cfg)
  assert c.flip_index[:2] == (1, 0) and c.flip_index[12:] == (12, 13)


def test_scale_aware_sigma_divided_by_aug_scale():
  cfg = config_lib.base_config()
  cfg.data.scale_aware_sigma = True
  img = np.zeros((200, 200, 3), np.uint8)
  joints = np.zeros((1, 17, 4))
  joints[0, :, :2] = 100.0
  joints[0, :, 2] = 2
  joints[0, :, 3] = 3.0
  dr = transforms.AugmentDraws(u_scale=1.0, u_rot=0.5, dx=0, dy=0, flip=False)  # aug_scale 1.5
  a = transforms.augment(img, joints, np.ones((200, 200), bool), dr, S(cfg))
  np.testing.assert_allclose(a['joints_xy_0'][0, :, 3], 2.0, rtol=0, atol=1e-12)
  out = transforms.make_train_sample(img, joints, np.ones((200, 200), bool), dr, S(cfg))
  assert out['heatmaps_0'].max() > 0


def test_reuse_large_buffers_is_safe_to_call():
  assert transforms.reuse_large_buffers() in (True, False)
  a = np.zeros((256, 256, 17), np.float32)
  assert a.sum() == 0


def test_sample_is_pure_function_of_generator_seed(src):
  tiny_input = config_lib.with_input_size(config_lib.base_config(), 128)
  cfg = transforms.SampleConfig.from_config(tiny_input)
  ex = src.train_example(1)

  def sample(seed):
    draws = transforms.sample_draws(np.random.default_rng(seed), ex['image'].shape[:2], cfg)
    return transforms.make_train_sample(ex['image'], ex['joints'], ex['mask'], draws, cfg)

  a, b, c = sample(11), sample(11), sample(12)
  assert set(a) == {'image', 'heatmaps_0', 'heatmaps_1', 'masks_0', 'masks_1', 'joints_0',
                    'joints_1'}
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a['image'], c['image'])
