"""Top-down poses without a detector: boxes from HigherHRNet's people, joints by the top-down model."""

import json
import pathlib

import numpy as np
import pytest

import higherhrnet_jax
from higherhrnet_jax import config as config_lib
from higherhrnet_jax import convert
from higherhrnet_jax.data import coco
from higherhrnet_jax.inference.predictor import Prediction
from higherhrnet_jax.topdown import detector_free
from higherhrnet_jax.topdown.predictor import TopDownPredictor

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def sample(coco_sample_dir):
  ann = json.loads((coco_sample_dir / 'test_coco.json').read_text())
  image_id = 196141  # four labelled people
  image = coco.decode_image(coco_sample_dir / f'{image_id:012d}.jpg')
  people = [a for a in ann['annotations'] if a['image_id'] == image_id and max(a['keypoints']) > 0]
  poses = np.asarray([a['keypoints'] for a in people], np.float64).reshape(-1, 17, 3)
  poses[..., 2] = (poses[..., 2] > 0).astype(np.float64)  # joint scores: 1 where labelled
  return image, poses


@pytest.fixture(scope='module')
def topdown(topdown_fixtures_dir):
  cfg = config_lib.load_config(REPO / 'configs' / 'coco' / 'hrnet_tiny.py')
  return cfg, convert.load_official(topdown_fixtures_dir / 'tiny_state_dict.npz', cfg.model)


def test_boxes_enclose_the_confident_joints_with_a_margin(sample):
  _, poses = sample
  scores = np.array([0.9, 0.8, 0.05, 0.7])[:len(poses)]
  boxes, kept = detector_free.boxes_from_people(poses, scores, min_score=0.1)
  assert len(boxes) == (scores >= 0.1).sum() and np.all(kept >= 0.1)
  for box, pose in zip(boxes, poses[scores >= 0.1]):
    xy = pose[pose[:, 2] > 0.1, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    np.testing.assert_allclose(box[:2], lo - 0.1 * (hi - lo))
    np.testing.assert_allclose(box[2:], 1.2 * (hi - lo))
  # A person with fewer than two confident joints gives no box.
  lone = np.zeros((1, 17, 3))
  lone[0, 0] = [10, 10, 1]
  assert len(detector_free.boxes_from_people(lone, np.ones(1))[0]) == 0


class _Finder:
  """A bottom-up stand-in that finds the annotated people."""

  def __init__(self, poses):
    self.poses = poses

  def __call__(self, image):
    return Prediction(self.poses.astype(np.float32), np.linspace(0.9, 0.6, len(self.poses)).astype(np.float32))


def test_two_stage_crops_the_found_people(sample, topdown):
  image, poses = sample
  cfg, variables = topdown
  td = TopDownPredictor(cfg, variables)
  two = detector_free.TwoStagePredictor(td, _Finder(poses), oks_thre=None)
  pred = two(image)
  boxes, box_scores = detector_free.boxes_from_people(poses, _Finder(poses)(image).scores)
  direct = td.predict(image, boxes)
  assert pred.poses.shape == (len(poses), 17, 3) and np.all(np.diff(pred.scores) <= 0)
  # The same joints as the top-down model on those boxes, in score order.
  np.testing.assert_array_equal(np.sort(pred.poses.reshape(len(poses), -1), axis=0),
                                np.sort(direct.reshape(len(poses), -1), axis=0))


def test_public_predict_takes_boxes_or_a_bottom_up_model(sample, topdown, fixtures_dir):
  image, poses = sample
  cfg, variables = topdown
  boxes, _ = detector_free.boxes_from_people(poses, np.ones(len(poses)))
  pred = higherhrnet_jax.predict(variables, cfg, image, boxes=boxes)
  assert pred.poses.shape[1:] == (17, 3) and 1 <= len(pred.poses) <= len(boxes)
  with pytest.raises(ValueError, match='boxes'):
    higherhrnet_jax.predict(variables, cfg, image)
  # With a HigherHRNet finding the people (the tiny bottom-up model of the other fixtures,
  # random-recipe weights: whatever it finds, the output is well formed).
  bu_cfg = config_lib.load_config(REPO / 'configs' / 'tiny.py')
  bu_vars = convert.load_official(fixtures_dir / 'tiny_state_dict.npz', bu_cfg.model)
  pred = higherhrnet_jax.predict(variables, cfg, image[:256, :256], people=(bu_cfg, bu_vars))
  assert pred.poses.ndim == 3 and pred.poses.shape[1:] == (17, 3)
  assert len(pred.scores) == len(pred.poses) and np.all(np.isfinite(pred.poses))
