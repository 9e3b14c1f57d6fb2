"""Top-down test path vs the official one (`official_topdown/test_pipeline.npz`).

Tolerances (fixture README sections 8 and 10):
  * centres and scales bitwise: float64 arithmetic rounded once to float32, no ISA-dependent
    step;
  * crop and inverse matrices <= 1e-9: the same float32 points go through the same
    `cv2.getAffineTransform`, bitwise here, with room for another OpenCV build's solver;
    the float32-vs-float64 scale difference they must resolve is 2e-5;
  * warped crops exact with OpenCV 5.0.x (the fixtures' arithmetic); with another release
    at most one grey level on at most 0.5 % of the values: OpenCV 5.1 rounds up to 195 of
    147,456 values differently on a crop upscaled 4x, while moving the matrix by 0.01 px
    already changes 1.7 % or more (2,566+ values, up to 7 levels);
  * flip averages, argmax/offsets, `get_final_preds`: bitwise (float32 add / multiply by
    0.5 / sign, float64 affine rounded to float32: no transcendental function involved).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import keypoints
from higherhrnet_jax.data import coco, transforms
from higherhrnet_jax.inference.transforms import get_affine_transform
from higherhrnet_jax.topdown import decode
from higherhrnet_jax.topdown.records import box_to_center_scale

import numerics

ASPECT = 192 / 256
MAX_OFF_FRACTION = 5e-3  # of the values, each off by one grey level (numerics.FIXTURE_OPENCV)
assert_warp_matches = functools.partial(numerics.assert_warp_matches,
                                        max_off_fraction=MAX_OFF_FRACTION)


def _nhwc(a: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


@pytest.fixture(scope='module')
def pipe(topdown_fixtures_dir):
  return np.load(topdown_fixtures_dir / 'test_pipeline.npz')


@pytest.fixture(scope='module')
def images(coco_sample_dir):
  cache = {}

  def get(image_id):
    image_id = int(image_id)
    if image_id not in cache:
      cache[image_id] = coco.decode_image(coco_sample_dir / f'{image_id:012d}.jpg')
    return cache[image_id]
  return get


def test_flip_index_matches_fixture_pairs(pipe):
  flip = list(range(17))
  for a, b in pipe['flip_pairs']:
    flip[a], flip[b] = int(b), int(a)
  assert tuple(flip) == keypoints.COCO.flip_index


@pytest.mark.parametrize('i', range(10))
def test_crafted_boxes(pipe, images, i):
  p = f'box{i}_'
  center, scale = box_to_center_scale(pipe[p + 'box'], ASPECT)
  np.testing.assert_array_equal(center, pipe[p + 'center'])
  np.testing.assert_array_equal(scale, pipe[p + 'scale'])
  for key, size in (('trans_256x192', (192, 256)), ('trans_384x288', (288, 384))):
    np.testing.assert_allclose(decode.crop_transform(center, scale, size), pipe[p + key],
                               rtol=0, atol=1e-9, err_msg=key)
  for key, size in (('trans_inv_64x48', (48, 64)), ('trans_inv_96x72', (72, 96))):
    np.testing.assert_allclose(decode.crop_transform(center, scale, size, inv=True),
                               pipe[p + key], rtol=0, atol=1e-9, err_msg=key)
  image = images(pipe[p + 'image_id'])
  crop = decode.crop(image, center, scale, (192, 256))
  assert_warp_matches(crop, pipe[p + 'crop_256x192'])
  if i == 3:  # centre x = -1: the padding is skipped
    np.testing.assert_array_equal(scale, np.float32([0.15, 0.2]))
  if i == 5:  # fully outside the image
    assert not crop.any()
  if i == 7:  # 0x0 box: zero forward matrix, every pixel samples image pixel (0, 0)
    assert not decode.crop_transform(center, scale, (192, 256)).any()
    assert (crop == image[0, 0]).all()


def test_detection_crops(pipe, images):
  boxes = pipe['crop_trans']
  n = int(pipe['num_crops'])
  float64_differs = 0
  for i in range(n):
    c, s = pipe['crop_center'][i], pipe['crop_scale'][i]
    trans = decode.crop_transform(c, s, (192, 256))
    np.testing.assert_allclose(trans, boxes[i], rtol=0, atol=1e-9)
    np.testing.assert_allclose(decode.crop_transform(c, s, (288, 384)),
                               pipe['crop_trans_384x288'][i], rtol=0, atol=1e-9)
    # The float64 scale (the training path) moves some of these matrices: the check bites.
    float64_differs += np.abs(get_affine_transform(c, s, 0, (192, 256)) - boxes[i]).max() > 1e-9
    crop = decode.crop(images(pipe['crop_image_id'][i]), c, s, (192, 256))
    assert_warp_matches(crop, pipe['crop_uint8'][i])
  assert float64_differs >= 1
  first = transforms.normalize_flip(pipe['crop_uint8'][0], False).transpose(2, 0, 1)
  np.testing.assert_array_equal(first, pipe['crop_input_first'])


def test_gt_box_centres_and_scales(pipe):
  for box, center, scale in zip(pipe['gt_clean_bbox'], pipe['gt_center'], pipe['gt_scale']):
    c, s = box_to_center_scale(box, ASPECT)
    np.testing.assert_array_equal(c, center)
    np.testing.assert_array_equal(s, scale)


def test_flip_back_semantics():
  x = jnp.arange(2 * 3 * 4 * 3, dtype=jnp.float32).reshape(2, 3, 4, 3)
  out = np.asarray(decode.flip_back(x, (0, 2, 1)))
  mirrored = np.asarray(x)[:, :, ::-1][..., [0, 2, 1]]
  np.testing.assert_array_equal(out[:, :, 1:], mirrored[:, :, :-1])
  np.testing.assert_array_equal(out[:, :, 0], mirrored[:, :, 0])  # column 0 keeps its value
  np.testing.assert_array_equal(np.asarray(decode.flip_back(x, (0, 2, 1), shift=False)), mirrored)
  with pytest.raises(ValueError, match='flip_index'):
    decode.flip_back(x, (0, 1))


def test_standin_flip_average_bitwise(pipe):
  avg = jax.jit(decode.average_flip, static_argnums=(2, 3))(
      _nhwc(pipe['standin_output']), _nhwc(pipe['standin_output_flipped']),
      keypoints.COCO.flip_index, True)
  assert avg.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(avg), _nhwc(pipe['standin_output_averaged']))
  preds, maxvals = decode.get_final_preds(np.asarray(avg), pipe['crop_center'],
                                          pipe['crop_scale'])
  np.testing.assert_array_equal(preds, pipe['standin_preds'])
  np.testing.assert_array_equal(maxvals, pipe['standin_maxvals'])
  np.testing.assert_array_equal(np.concatenate([preds, maxvals], -1), pipe['standin_all_preds'])


def test_tiny_flip_average_and_preds_bitwise(pipe):
  n = len(pipe['tiny_output'])
  avg = decode.average_flip(_nhwc(pipe['tiny_output']), _nhwc(pipe['tiny_output_flipped']),
                            keypoints.COCO.flip_index)
  preds, maxvals = decode.get_final_preds(np.asarray(avg), pipe['crop_center'][:n],
                                          pipe['crop_scale'][:n])
  np.testing.assert_array_equal(preds, pipe['tiny_preds'])
  np.testing.assert_array_equal(maxvals, pipe['tiny_maxvals'])
  np.testing.assert_array_equal(np.concatenate([preds, maxvals], -1), pipe['tiny_all_preds'])
  # Without SHIFT_HEATMAP the result differs: the test sees the shift.
  unshifted = decode.average_flip(_nhwc(pipe['tiny_output']), _nhwc(pipe['tiny_output_flipped']),
                                  keypoints.COCO.flip_index, shift=False)
  p2, _ = decode.get_final_preds(np.asarray(unshifted), pipe['crop_center'][:n],
                                 pipe['crop_scale'][:n])
  assert not np.array_equal(p2, pipe['tiny_preds'])


@pytest.mark.parametrize('t', ['hm_', 'hm96x72_'])
def test_max_and_final_preds_bitwise(pipe, t):
  hm = _nhwc(pipe[t + 'heatmaps'])
  coords, maxvals = decode.get_max_preds(hm)
  np.testing.assert_array_equal(coords, pipe[t + 'max_coords'])
  np.testing.assert_array_equal(maxvals, pipe[t + 'maxvals'])
  assert coords.dtype == maxvals.dtype == np.float32
  preds, maxvals2 = decode.get_final_preds(hm, pipe[t + 'center'], pipe[t + 'scale'])
  assert preds.dtype == np.float32
  np.testing.assert_array_equal(preds, pipe[t + 'preds'])
  np.testing.assert_array_equal(maxvals2, pipe[t + 'maxvals'])
  ident, _ = decode.get_final_preds(hm, pipe[t + 'identity_center'], pipe[t + 'identity_scale'])
  np.testing.assert_array_equal(ident, pipe[t + 'refined_coords'])


@pytest.mark.parametrize('t', ['hm_', 'hm96x72_'])
def test_refined_coords_host_and_device_agree_bitwise(pipe, t):
  hm = _nhwc(pipe[t + 'heatmaps'])
  coords, _ = decode.get_max_preds(hm)
  np.testing.assert_array_equal(decode.refine_coords(hm, coords), pipe[t + 'refined_coords'])
  dev_coords, dev_maxvals = jax.jit(decode.heatmap_maxima)(hm)
  assert dev_coords.dtype == dev_maxvals.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(dev_coords), pipe[t + 'refined_coords'])
  np.testing.assert_array_equal(np.asarray(dev_maxvals), pipe[t + 'maxvals'])
  back = decode.heatmap_to_image(np.asarray(dev_coords), pipe[t + 'center'], pipe[t + 'scale'],
                                 hm.shape[2:0:-1])
  np.testing.assert_array_equal(back, pipe[t + 'preds'])


def test_designed_peaks(pipe):
  """A few cases of `hm_` image 0 spelled out (README 8.5), so a failure says which rule."""
  r = pipe['hm_refined_coords'][0]
  ours = np.asarray(decode.heatmap_maxima(_nhwc(pipe['hm_heatmaps'][:1]))[0])[0]
  np.testing.assert_array_equal(ours, r)
  assert r[2, 0] == 1.0  # column 1: not refined
  assert r[3, 0] == 2.25  # column 2: refined towards the larger right neighbour
  assert r[6, 1] == 1.0  # row 1: not refined in either axis
  assert r[12, 0] == 5.25  # plateau: the first pixel wins, then +0.25
  assert tuple(pipe['hm_max_coords'][2, 0]) == (0.0, 0.0)  # negative map -> (0, 0)


def test_bad_shapes():
  with pytest.raises(ValueError, match='heatmaps'):
    decode.get_final_preds(np.zeros((2, 8, 8), np.float32), np.zeros((2, 2)), np.ones((2, 2)))
  with pytest.raises(ValueError, match='heatmap_to_image'):
    decode.heatmap_to_image(np.zeros((2, 3, 2)), np.zeros((3, 2)), np.ones((2, 2)), (8, 8))
