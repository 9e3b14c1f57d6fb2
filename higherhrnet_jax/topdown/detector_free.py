"""Top-down poses without a person detector: HigherHRNet finds the people, HRNet refines them.

Most users have no JAX person detector, and the top-down model needs boxes. The bottom-up
model already finds every person in one pass; the box around each person's confident
joints, enlarged for the body parts joints do not mark (head top, feet, hands), stands in
for a detection box, and its person score for the detection score. The top-down model
then predicts each person from its crop, and the people are rescored and OKS-NMS'ed as in
the official top-down evaluation.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from higherhrnet_jax import keypoints
from higherhrnet_jax.inference.predictor import Prediction, Predictor
from higherhrnet_jax.topdown import evaluation
from higherhrnet_jax.topdown.predictor import TopDownPredictor

# Joints mark body centres, not extents: the box grows by this fraction of its size on every
# side (the head top lies about 0.1 of the person height above the eyes).
BOX_MARGIN = 0.1


def boxes_from_people(poses: np.ndarray, scores: np.ndarray, joint_threshold: float = 0.1,
                      min_score: float = 0.0, margin: float = BOX_MARGIN
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Person boxes `[N, 4]` (x, y, w, h) and their scores `[N]` from bottom-up people.

  Args:
    poses: `[P, K, 3+]` (x, y, joint score, ...) in image pixels.
    scores: `[P]` person scores.
    joint_threshold: joints below this score do not shape the box.
    min_score: people below this score give no box.
    margin: growth of the joint extent on each side, as a fraction of its size.

  Returns:
    Boxes of the people with at least two confident joints, and their scores.
  """
  boxes, kept = [], []
  for pose, score in zip(np.asarray(poses, np.float64), np.asarray(scores, np.float64)):
    ok = pose[:, 2] > joint_threshold
    if score < min_score or ok.sum() < 2:
      continue
    lo, hi = pose[ok, :2].min(axis=0), pose[ok, :2].max(axis=0)
    size = np.maximum(hi - lo, 1.0)
    lo, size = lo - margin * size, size * (1 + 2 * margin)
    boxes.append([lo[0], lo[1], size[0], size[1]])
    kept.append(score)
  return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(kept, np.float64)


class TwoStagePredictor:
  """People by HigherHRNet (or given boxes), joints by the top-down model.

  Args:
    topdown: the compiled top-down model.
    people: the compiled HigherHRNet that finds the people (None: boxes must be given).
    in_vis_thre, oks_thre: rescoring and OKS-NMS thresholds (the top-down config's).
  """

  def __init__(self, topdown: TopDownPredictor, people: Predictor | None = None, *,
               in_vis_thre: float = 0.2, oks_thre: float | None = 0.9):
    self.topdown = topdown
    self.people = people
    self.in_vis_thre = in_vis_thre
    self.oks_thre = oks_thre
    self.sigmas = keypoints.spec_from_config(topdown.config.dataset.keypoints).sigmas

  def __call__(self, image: np.ndarray, boxes: np.ndarray | None = None,
               box_scores: np.ndarray | None = None) -> Prediction:
    """Poses `[N, K, 3]` and person scores `[N]` (descending) for one RGB uint8 image."""
    if boxes is None:
      if self.people is None:
        raise ValueError('no person boxes given and no bottom-up model to find people')
      found = self.people(image)
      boxes, box_scores = boxes_from_people(found.poses, found.scores)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    box_scores = np.ones(len(boxes)) if box_scores is None else np.asarray(box_scores, np.float64)
    k = len(self.topdown.spec.flip_index)
    if len(boxes) == 0:
      return Prediction(np.zeros((0, k, 3), np.float32), np.zeros((0,), np.float32))
    joints = self.topdown.predict(image, boxes)
    scores = evaluation.rescore(joints, box_scores, self.in_vis_thre)
    order = np.argsort(-scores, kind='stable')
    if self.oks_thre is not None:
      areas = boxes[:, 2] * boxes[:, 3]
      order = np.asarray(evaluation.oks_nms(joints, scores, areas, self.oks_thre, self.sigmas))
    return Prediction(joints[order], scores[order].astype(np.float32))


def make(config: Any, variables: Any, people: tuple[Any, Any] | None = None) -> TwoStagePredictor:
  """A two-stage predictor from a top-down config and variables.

  Args:
    config, variables: the top-down model.
    people: optional `(config, variables)` of a HigherHRNet that finds the people.
  """
  finder = Predictor(people[0], people[1]) if people is not None else None
  t = config.test
  return TwoStagePredictor(TopDownPredictor(config, variables), finder,
                           in_vis_thre=float(t.in_vis_thre), oks_thre=float(t.oks_thre))


_CACHE: dict[str, list] = {}  # config JSONs -> [TwoStagePredictor, leaves of its weights]


def predict(variables: Any, config: Any, image: np.ndarray, *, boxes: np.ndarray | None = None,
            people: tuple[Any, Any] | None = None) -> Prediction:
  """One-call top-down prediction, people from `boxes` ([N, 4] x, y, w, h) or from `people`.

  The compiled predictor of the last configs is kept; new weights (compared by the identity
  of their leaves) are swapped in without recompiling.
  """
  if boxes is None and people is None:
    raise ValueError('predict: a top-down model needs person boxes (boxes=[[x, y, w, h], ...]) '
                     'or a bottom-up model to find them (people=(config, variables))')
  key = config.to_json() + ('' if people is None else people[0].to_json())
  leaves = jax.tree.leaves(variables) + ([] if people is None else jax.tree.leaves(people[1]))
  cached = _CACHE.get(key)
  if cached is None:
    _CACHE.clear()
    cached = _CACHE[key] = [make(config, variables, people), leaves]
  two_stage, old = cached
  if len(old) != len(leaves) or any(a is not b for a, b in zip(old, leaves)):
    two_stage.topdown.set_variables(variables)
    if people is not None:
      two_stage.people.set_variables(people[1])
    cached[1] = leaves
  return two_stage(image, boxes)
