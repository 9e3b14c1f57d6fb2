"""The compiled top-down test loop vs the official `validate` (`test_pipeline.npz`, README 8.3-8.4).

With the stand-in network (the fixture's own heatmaps fed through the loop) everything
after the network is exact by construction (float32 flip average, float32 argmax and
offsets, float64 affine), so joints and scores must be bitwise equal. With the tiny network
the heatmaps carry float32 kernel noise (README 10: atol 5e-5); joints are then equal
wherever the heatmap maximum and its neighbour comparisons are not within that noise.
"""

import pathlib

import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import convert
from higherhrnet_jax.topdown import predictor as predictor_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
NOISE = 5e-5  # float32 network noise of the tiny model at this size (README section 10)


@pytest.fixture(scope='module')
def ref(topdown_fixtures_dir):
  return dict(np.load(topdown_fixtures_dir / 'test_pipeline.npz'))


@pytest.fixture(scope='module')
def cfg():
  return config_lib.load_config(REPO / 'configs' / 'coco' / 'hrnet_tiny.py',
                                ['data.input_size=(256, 192)', 'test.batch_size=4'])


def _nhwc(a):
  return a.transpose(0, 2, 3, 1)


def test_standin_heatmaps_through_the_loop_are_bitwise_official(ref, cfg, topdown_fixtures_dir):
  n = int(ref['standin_crop_count'])
  outputs = {'plain': _nhwc(ref['standin_output']), 'flipped': _nhwc(ref['standin_output_flipped'])}
  crops = ref['crop_uint8'][:n]

  def standin(variables, x):
    del variables
    # The loop calls the network on the crops, then on the mirrored crops.
    mirrored = bool(np.array_equal(np.asarray(x[:, :, ::-1]), normalized))
    return outputs['flipped' if mirrored else 'plain']

  normalized = np.asarray(predictor_lib.normalize(crops))
  spec = predictor_lib.DecodeSpec.from_config(cfg)
  heatmaps, coords, maxvals = predictor_lib.heatmaps_and_maxima(standin, spec, None, crops)
  np.testing.assert_array_equal(np.asarray(heatmaps), _nhwc(ref['standin_output_averaged']))
  preds = predictor_lib.to_image(spec, np.asarray(coords), ref['crop_center'][:n], ref['crop_scale'][:n])
  np.testing.assert_array_equal(preds, ref['standin_preds'])
  np.testing.assert_array_equal(np.asarray(maxvals), ref['standin_maxvals'][..., 0])


def test_tiny_network_on_the_official_crops(ref, cfg, topdown_fixtures_dir):
  variables = convert.load_official(topdown_fixtures_dir / 'tiny_state_dict.npz', cfg.model)
  pred = predictor_lib.TopDownPredictor(cfg, variables)
  n = len(ref['tiny_preds'])
  crops = ref['crop_uint8'][:n]
  heatmaps, _, _ = pred.network(pred.variables, crops)
  averaged = (ref['tiny_output'] + 0)  # NCHW; the official average is rebuilt below
  official_avg = _nhwc(averaged)
  flipped = _nhwc(ref['tiny_output_flipped'])[:, :, ::-1][..., list(pred.spec.flip_index)]
  flipped = np.concatenate([flipped[:, :, :1], flipped[:, :, :-1]], axis=2)
  official_avg = (official_avg + flipped) * np.float32(0.5)
  np.testing.assert_allclose(np.asarray(heatmaps), official_avg, rtol=0, atol=NOISE)

  joints = pred.predict_crops(crops, ref['crop_center'][:n], ref['crop_scale'][:n])  # 6 crops, batch 4: padded
  assert joints.shape == (n, 17, 3) and joints.dtype == np.float32
  np.testing.assert_allclose(joints[..., 2], ref['tiny_maxvals'][..., 0], rtol=0, atol=NOISE)
  # A joint is decided by its argmax and two neighbour comparisons; where none of them is
  # within the noise, the official joint must come out exactly.
  hm = official_avg.reshape(n, -1, 17)
  top2 = np.sort(hm, axis=1)[:, -2:]
  clear = (top2[:, 1] - top2[:, 0]) > 4 * NOISE
  h, w = hm.shape[1] // 48, 48
  idx = hm.argmax(axis=1)
  x, y = idx % w, idx // w
  grid = official_avg
  for i in range(n):
    for k in range(17):
      xi, yi = x[i, k], y[i, k]
      if 1 < xi < w - 1 and 1 < yi < h - 1:
        dx = grid[i, yi, xi + 1, k] - grid[i, yi, xi - 1, k]
        dy = grid[i, yi + 1, xi, k] - grid[i, yi - 1, xi, k]
        clear[i, k] &= min(abs(dx), abs(dy)) > 4 * NOISE or (dx == 0 and dy == 0)
  assert clear.sum() >= 0.8 * clear.size, clear.sum()
  np.testing.assert_array_equal(joints[..., :2][clear], ref['tiny_preds'][clear])


def test_predict_from_boxes_matches_the_crop_path(ref, cfg, topdown_fixtures_dir, coco_sample_dir):
  import json

  import cv2

  from higherhrnet_jax.data import coco

  variables = convert.load_official(topdown_fixtures_dir / 'tiny_state_dict.npz', cfg.model)
  pred = predictor_lib.TopDownPredictor(cfg, variables)
  first = json.loads((topdown_fixtures_dir / 'detections.json').read_text())[0]
  assert first['category_id'] == 1 and first['image_id'] == int(ref['crop_image_id'][0])
  image = coco.decode_image(coco_sample_dir / f"{first['image_id']:012d}.jpg")
  from_boxes = pred.predict(image, np.asarray([first['bbox']]))
  compiled = pred.compile_seconds  # compiled once, ahead of the first batch, timed apart
  assert compiled > 0
  from_crops = pred.predict_crops(ref['crop_uint8'][:1], ref['crop_center'][:1], ref['crop_scale'][:1])
  assert pred.compile_seconds == compiled
  if cv2.__version__.startswith('5.0.'):  # the fixtures' warp arithmetic: identical crops
    np.testing.assert_array_equal(from_boxes, from_crops)
  else:  # a few crop pixels one grey level off: scores within network noise of that change
    np.testing.assert_allclose(from_boxes[..., 2], from_crops[..., 2], atol=1e-2)
