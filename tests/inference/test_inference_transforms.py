"""Test-time resize and the map back to image pixels vs the official fixtures.

Tolerances (fixture README): sizes, centres, scales exact; affine matrices <= 1e-9;
resized uint8 images exact (SHA-256 of the bytes); `get_final_preds` exact.
"""

import hashlib

import numpy as np
import pytest

from higherhrnet_jax.inference import transforms as T


def _cases(d):
  names = sorted({k.split('_')[0] for k in d.files if k.startswith(('img', 'rot')) and '_' in k})
  for n in names:
    for mode in ('ss', 'ms'):
      yield n, f'{n}_{mode}_'


@pytest.mark.parametrize('name', ['resize.npz', 'more/resize.npz'])
def test_resize_parity(fixtures_dir, name):
  d = np.load(fixtures_dir / name)
  base = np.load(fixtures_dir / 'resize.npz')
  checked, max_trans = 0, 0.0
  for n, p in _cases(d):
    image = d[n] if n in d.files else base[n]
    factors = d[p + 'scale_factors']
    size, center, scale = T.get_multi_scale_size(image, 512, 1.0, min(factors))
    assert tuple(size) == tuple(d[p + 'base_size'])
    np.testing.assert_array_equal(center, d[p + 'base_center'])
    np.testing.assert_array_equal(scale, d[p + 'base_scale'])
    for k, s in enumerate(factors):
      q = f'{p}s{k}_'
      assert s == d[q + 'scale']
      resized, center, scale = T.resize_align_multi_scale(image, 512, s, min(factors))
      assert resized.shape[:2][::-1] == tuple(d[q + 'size']), q
      np.testing.assert_array_equal(center, d[q + 'center'])
      np.testing.assert_array_equal(scale, d[q + 'scale_wh'])
      trans = T.get_affine_transform(center, scale, 0, tuple(d[q + 'size']))
      max_trans = max(max_trans, float(np.abs(trans - d[q + 'trans']).max()))
      digest = hashlib.sha256(np.ascontiguousarray(resized).tobytes()).hexdigest()
      assert digest == str(d[q + 'sha256']), q
      checked += 1
  assert max_trans <= 1e-9
  assert checked >= 16


@pytest.mark.parametrize('name', ['resize.npz', 'more/resize.npz'])
def test_get_final_preds_parity(fixtures_dir, name):
  d = np.load(fixtures_dir / name)
  cases = sorted({k.split('_')[0] for k in d.files if k.startswith('fp')})
  assert cases
  for fp in cases:
    args = d[fp + '_center'], d[fp + '_scale'], d[fp + '_heatmap_size']
    inv = T.get_affine_transform(*args[:2], 0, args[2], inv=True)
    assert np.abs(inv - d[fp + '_trans_inv']).max() <= 1e-9
    final = T.get_final_preds(d[fp + '_grouped'], *args)
    assert final.dtype == np.float32
    if d[fp + '_final'].size == 0:
      assert final.size == 0
    else:
      np.testing.assert_array_equal(final, d[fp + '_final'])


def test_grayscale_is_replicated():
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 256, (40, 60), dtype=np.uint8)
  rgb = np.repeat(gray[:, :, None], 3, axis=2)
  for g in (gray, gray[:, :, None]):
    a, ca, sa = T.resize_align_multi_scale(g, 128, 1.0, 1.0)
    b, cb, sb = T.resize_align_multi_scale(rgb, 128, 1.0, 1.0)
    assert a.shape == b.shape == (128, 192, 3)
    np.testing.assert_array_equal(a, b)


def test_one_pixel_image():
  image = np.full((1, 1, 3), 200, np.uint8)
  resized, center, scale = T.resize_align_multi_scale(image, 512, 1.0, 1.0)
  assert resized.shape == (512, 512, 3)
  np.testing.assert_array_equal(center, [1, 1])
  np.testing.assert_allclose(scale, [0.005, 0.005])
  # Official centre rounding puts the pixel centre at (1, 1): the top-left quadrant
  # interpolates between it and the zero border (weight 1/4 at the corner).
  assert resized[0, 0].tolist() == [50, 50, 50]
  assert not resized[256:, 256:].any()
  # get_final_preds inverts the forward map used for the resize.
  pose = np.zeros((1, 2, 5), np.float32)
  pose[0, 1, :2] = 100
  back = T.get_final_preds(pose, center, scale, (512, 512))
  fwd = T.get_affine_transform(center, scale, 0, (512, 512))
  pts = np.concatenate([back[0, :, :2], np.ones((2, 1), np.float32)], axis=1) @ fwd.T
  np.testing.assert_allclose(pts, pose[0, :, :2], atol=1e-4)


@pytest.mark.parametrize('shape', [(0, 10, 3), (10, 0, 3), (0, 0), (5, 5, 4), (5,)])
def test_bad_images_raise(shape):
  with pytest.raises(ValueError, match='image'):
    T.resize_align_multi_scale(np.zeros(shape, np.uint8), 512, 1.0, 1.0)


def test_huge_panorama_is_refused_without_allocating():
  # Only the shape is inspected before the check, so a broadcast view suffices.
  pano = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (100, 40000, 3))
  with pytest.raises(ValueError, match='panorama'):
    T.prepare_test_input(pano, 512, (1.0,))
  size, _, _ = T.get_multi_scale_size(pano, 512, 1.0, 1.0)
  assert size[1] == 512 and size[0] > T.MAX_INPUT_SIDE


def test_wide_panorama_within_limit():
  pano = np.zeros((100, 1500, 3), np.uint8)
  t = T.prepare_test_input(pano, 512, (1.0,))
  assert t.images[0].shape == (512, 7680, 3)


def test_final_preds_empty_and_bad_shape():
  empty = T.get_final_preds(np.zeros((0, 17, 5), np.float32), (5, 5), (1, 1), (64, 64))
  assert empty.shape == (0, 17, 5)
  with pytest.raises(ValueError, match='poses'):
    T.get_final_preds(np.zeros((3, 5), np.float32), (5, 5), (1, 1), (64, 64))


def test_bucket_batch_pads_bottom_right(fixtures_dir):
  d = np.load(fixtures_dir / 'resize.npz')
  inputs = [T.prepare_test_input(d[f'img{i}'], 512, (2.0, 1.0, 0.5)) for i in (0, 1)]
  batch = T.bucket_batch(inputs, multiple=128)
  assert batch['base_shape'] == (512, 896)
  np.testing.assert_array_equal(batch['base_hw'], [[512, 896], [512, 768]])
  for s, size in enumerate([(1024, 1792), (512, 896), (256, 512)]):
    assert batch['images'][s].shape == (2, *size, 3)
  h, w = batch['input_hw'][1][1]
  np.testing.assert_array_equal(batch['images'][1][1, :h, :w], inputs[1].images[1])
  assert not batch['images'][1][1, :, w:].any()
  # multiple 64 on one image is the identity (the official sizes are multiples of 64).
  single = T.bucket_batch(inputs[:1], multiple=64)
  assert single['images'][0].shape[1:3] == inputs[0].images[0].shape[:2]
  with pytest.raises(ValueError, match='shape_bucket'):
    T.bucket_batch(inputs, multiple=48)


def test_old_opencv_warns_once(monkeypatch):
  monkeypatch.setattr(T, 'OPENCV_MAJOR', 4)
  monkeypatch.setattr(T, '_warned_opencv', False)
  image = np.zeros((10, 10, 3), np.uint8)
  with pytest.warns(UserWarning, match='OpenCV'):
    T.resize_align_multi_scale(image, 64, 1.0, 1.0)
  assert T._warned_opencv
