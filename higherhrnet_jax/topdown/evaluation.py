"""Top-down COCO evaluation: person detections in, rescored and OKS-NMSed results out.

The official `COCODataset.evaluate` for top-down models does, per detection crop:
rescoring (mean joint score above a threshold times the box score), greedy OKS-NMS per
image with the *padded box* areas, then a results file with `center` / `scale` instead of
`bbox`, scored by pycocotools. This module reproduces those numbers bit for bit; the
COCOeval step is the shared :func:`higherhrnet_jax.evaluation.coco.evaluate_coco`.

Differences from the official code, on purpose:
  * image ids are data (from the detection file or the dataset), never parsed from file
    names;
  * among detections of equal score, OKS-NMS visits the earlier one first. The official
    order among ties comes from NumPy's non-stable `argsort` and changes with the NumPy
    version and the CPU's SIMD sort, so when tied detections overlap, the one kept can
    differ from the official run's (it has the same score). Scores that tie exactly are
    rare outside score-0 boxes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from higherhrnet_jax import keypoints
from higherhrnet_jax.evaluation import coco as coco_eval
from higherhrnet_jax.topdown.records import box_to_center_scale

# Official TEST settings of every COCO top-down experiment file.
IN_VIS_THRE = 0.2
OKS_THRE = 0.9
PERSON_CATEGORY = 1


@dataclasses.dataclass(frozen=True)
class PersonDetections:
  """Person boxes from a detector, one test crop each.

  Attributes:
    image_id: `[N]` int64 image of each box.
    box: `[N, 4]` float64 `(x, y, w, h)` as in the file.
    center: `[N, 2]` float32 crop centre (:func:`box_to_center_scale`).
    scale: `[N, 2]` float32 crop scale in units of 200 px.
    score: `[N]` float64 detector score.
  """

  image_id: np.ndarray
  box: np.ndarray
  center: np.ndarray
  scale: np.ndarray
  score: np.ndarray

  def __len__(self) -> int:
    return len(self.image_id)


def _field(path, i: int, record, name: str):
  if not isinstance(record, dict):
    raise ValueError(f'{path}: record {i} is a {type(record).__name__}, expected an object with '
                     '"bbox", "category_id", "image_id", "score"')
  if name not in record:
    raise ValueError(f'{path}: record {i} has no field "{name}"')
  return record[name]


def _number(path, i: int, name: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f'{path}: record {i} field "{name}" must be a number, got {value!r}')
  return float(value)


def load_person_detections(path: str | os.PathLike, image_thre: float = 0.0,
                           aspect_ratio: float = 0.75,
                           padding: float = 1.25) -> PersonDetections:
  """Reads a detection file (`COCO_val2017_detections_AP_H_56_person.json` format).

  Keeps `category_id == 1` boxes with `score >= image_thre` (the official
  `TEST.IMAGE_THRE`, 0 by default: a score-0 box is kept), in file order.

  Args:
    path: JSON list of `{"bbox": [x, y, w, h], "category_id", "image_id", "score"}`.
    image_thre: minimum detector score.
    aspect_ratio: network input width / height (0.75 for 256x192 and 384x288).
    padding: box enlargement of :func:`box_to_center_scale`.

  Returns:
    The kept boxes with their crop centres and scales.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not JSON, not a list, or a record misses a field or has a bad value (the
      message names the file, the record index and the field).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'person detection file not found: {path}')
  try:
    records = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: not a JSON detection file ({e})') from e
  if not isinstance(records, list):
    raise ValueError(f'{path}: expected a JSON list of detections, got {type(records).__name__}')
  image_ids, boxes, scores = [], [], []
  for i, r in enumerate(records):
    if _field(path, i, r, 'category_id') != PERSON_CATEGORY:
      continue
    bbox = _field(path, i, r, 'bbox')
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
      raise ValueError(f'{path}: record {i} field "bbox" must be [x, y, w, h], got {bbox!r}')
    box = [_number(path, i, 'bbox', v) for v in bbox]
    score = _number(path, i, 'score', _field(path, i, r, 'score'))
    image_id = _field(path, i, r, 'image_id')
    if isinstance(image_id, bool) or not isinstance(image_id, int):
      raise ValueError(f'{path}: record {i} field "image_id" must be an integer, got {image_id!r}')
    if score < image_thre:
      continue
    image_ids.append(image_id)
    boxes.append(box)
    scores.append(score)
  center = np.zeros((len(boxes), 2), np.float32)
  scale = np.zeros((len(boxes), 2), np.float32)
  for i, box in enumerate(boxes):
    center[i], scale[i] = box_to_center_scale(box, aspect_ratio, padding)
  return PersonDetections(image_id=np.asarray(image_ids, np.int64).reshape(-1),
                          box=np.asarray(boxes, np.float64).reshape(-1, 4), center=center,
                          scale=scale, score=np.asarray(scores, np.float64).reshape(-1))


def crop_boxes(center: np.ndarray, scale: np.ndarray, score: np.ndarray) -> np.ndarray:
  """The official `all_boxes` rows `[cx, cy, s_w, s_h, area, score]` (float64).

  `area` is the padded box area `prod(200 * scale)` computed in the dtype of `scale`
  (float32 for COCO boxes): OKS-NMS scales by it.

  Args:
    center: `[N, 2]`; scale: `[N, 2]`; score: `[N]` box scores (1 for ground-truth boxes).

  Returns:
    `[N, 6]` float64.
  """
  scale = np.asarray(scale)
  out = np.zeros((len(scale), 6), np.float64)
  out[:, 0:2] = center
  out[:, 2:4] = scale
  out[:, 4] = np.prod(scale * scale.dtype.type(200), axis=1)
  out[:, 5] = score
  return out


def rescore(joints: np.ndarray, box_score: np.ndarray,
            in_vis_thre: float = IN_VIS_THRE) -> np.ndarray:
  """Person score = mean joint score above `in_vis_thre` x box score.

  The joint scores are compared with the threshold in float32 (a joint score of exactly
  0.2 does not pass), summed in float32 in joint order and divided in float32, as the
  official loop does under NumPy 2 (0 when no joint passes); the product with the box
  score is float64.

  Args:
    joints: `[N, K, 3]` float32 `(x, y, score)`.
    box_score: `[N]` detector scores.
    in_vis_thre: the official `TEST.IN_VIS_THRE`.

  Returns:
    `[N]` float64.
  """
  joints = np.asarray(joints, np.float32)
  s = joints[:, :, 2]
  thre = np.float32(in_vis_thre)
  total = np.zeros(len(s), np.float32)
  count = np.zeros(len(s), np.int64)
  for k in range(s.shape[1]):
    hit = s[:, k] > thre
    total = np.where(hit, total + s[:, k], total)
    count += hit
  with np.errstate(invalid='ignore', divide='ignore'):
    mean = np.where(count > 0, total / count.astype(np.float32), np.float32(0))
  return mean.astype(np.float64) * np.asarray(box_score, np.float64)


def _sigmas(sigmas, k: int) -> np.ndarray:
  sigmas = np.asarray(keypoints.COCO.sigmas if sigmas is None else sigmas, np.float64)
  if sigmas.shape != (k,):
    raise ValueError(f'sigmas: {sigmas.size} values for {k} joints')
  return sigmas


def oks_iou(g: np.ndarray, d: np.ndarray, area_g: float, area_d: np.ndarray,
            sigmas: Sequence[float] | None = None) -> np.ndarray:
  """OKS of one pose against each of `d` (official `oks_iou`, no visibility filter).

  All joints count; the scale is the mean of the two padded box areas (not COCOeval's
  ground-truth area). Differences are float32, the rest float64.

  Args:
    g: `[K, 3]` pose `(x, y, score)`.
    d: `[P, K, 3]` other poses.
    area_g: padded box area of `g`.
    area_d: `[P]` padded box areas of `d`.
    sigmas: per-joint OKS sigmas (default COCO).

  Returns:
    `[P]` float64.
  """
  g = np.asarray(g, np.float32)
  d = np.asarray(d, np.float32).reshape(-1, *g.shape)
  area_d = np.asarray(area_d, np.float64).reshape(-1)
  var = (_sigmas(sigmas, g.shape[0]) * 2) ** 2
  out = np.zeros(len(d))
  for i in range(len(d)):
    dx = d[i, :, 0] - g[:, 0]
    dy = d[i, :, 1] - g[:, 1]
    e = (dx ** 2 + dy ** 2) / var / ((area_g + area_d[i]) / 2 + np.spacing(1)) / 2
    out[i] = np.sum(np.exp(-e)) / e.shape[0]
  return out


def oks_nms(joints: np.ndarray, scores: np.ndarray, areas: np.ndarray,
            threshold: float = OKS_THRE, sigmas: Sequence[float] | None = None) -> list[int]:
  """Greedy OKS-NMS: keep the best, drop the others with OKS > `threshold`, repeat.

  Ties in score are visited in input order (see the module docstring).

  Args:
    joints: `[P, K, 3]` float32 poses of one image.
    scores: `[P]` person scores (after :func:`rescore`).
    areas: `[P]` padded box areas.
    threshold: the official `TEST.OKS_THRE`; an OKS equal to it survives.
    sigmas: per-joint OKS sigmas (default COCO).

  Returns:
    Kept indices, in descending score order.
  """
  joints = np.asarray(joints, np.float32)
  scores = np.asarray(scores, np.float64).reshape(-1)
  areas = np.asarray(areas, np.float64).reshape(-1)
  if not len(joints) == len(scores) == len(areas):
    raise ValueError(f'oks_nms: {len(joints)} poses, {len(scores)} scores, {len(areas)} areas')
  order = np.argsort(-scores, kind='stable')
  keep = []
  while order.size:
    i, rest = order[0], order[1:]
    keep.append(int(i))
    oks = oks_iou(joints[i], joints[rest], areas[i], areas[rest], sigmas)
    order = rest[oks <= threshold]
  return keep


def result_record(image_id: int, joints: np.ndarray, center: Sequence[float],
                  scale: Sequence[float], score: float,
                  category_id: int = PERSON_CATEGORY) -> dict:
  """One official top-down results record (no `bbox`: pycocotools derives it).

  Args:
    image_id: the dataset's image id.
    joints: `[K, 3]` `(x, y, joint score)` in image pixels.
    center, scale: the crop's `(cx, cy)` and `(s_w, s_h)`.
    score: person score after rescoring.
    category_id: the person category.

  Returns:
    dict with `category_id`, `center`, `image_id`, `keypoints` (3K floats), `scale`, `score`.
  """
  return {
      'category_id': int(category_id),
      'center': [float(v) for v in center],
      'image_id': int(image_id),
      'keypoints': [float(v) for v in np.asarray(joints, np.float64).reshape(-1)],
      'scale': [float(v) for v in scale],
      'score': float(score),
  }


def _check_inputs(preds, boxes, image_ids):
  preds = np.asarray(preds, np.float32)
  boxes = np.asarray(boxes, np.float64)
  image_ids = np.asarray(image_ids).reshape(-1)
  if preds.ndim != 3 or preds.shape[2] != 3:
    raise ValueError(f'preds: expected [N, K, 3] (x, y, score), got shape {preds.shape}')
  if boxes.shape != (len(preds), 6):
    raise ValueError(f'boxes: expected [{len(preds)}, 6] (cx, cy, s_w, s_h, area, score), got '
                     f'shape {boxes.shape}')
  if image_ids.shape != (len(preds),) or (image_ids.size and
                                          not np.issubdtype(image_ids.dtype, np.integer)):
    raise ValueError(f'image_ids: expected {len(preds)} integer ids, got {image_ids.shape} '
                     f'{image_ids.dtype}')
  return preds, boxes, image_ids


def topdown_records(preds: np.ndarray, boxes: np.ndarray, image_ids: Sequence[int],
                    in_vis_thre: float = IN_VIS_THRE, oks_thre: float | None = OKS_THRE,
                    sigmas: Sequence[float] | None = None,
                    category_id: int = PERSON_CATEGORY) -> list[dict]:
  """Results records of a top-down test run: rescoring, OKS-NMS per image, records.

  Images come in order of first appearance; each image's kept detections in descending
  score order (the official file order).

  Args:
    preds: `[N, K, 3]` float32 `(x, y, joint score)` per crop (the official `all_preds`).
    boxes: `[N, 6]` float64 :func:`crop_boxes` rows (the official `all_boxes`).
    image_ids: `[N]` image id of each crop.
    in_vis_thre: joint-score threshold of the rescoring.
    oks_thre: OKS-NMS threshold; None keeps every detection.
    sigmas: per-joint OKS sigmas for the NMS (default COCO).
    category_id: the person category.

  Returns:
    list of :func:`result_record` dicts.
  """
  preds, boxes, image_ids = _check_inputs(preds, boxes, image_ids)
  scores = rescore(preds, boxes[:, 5], in_vis_thre)
  groups: dict[int, list[int]] = {}
  for i, image_id in enumerate(image_ids.tolist()):
    groups.setdefault(image_id, []).append(i)
  records = []
  for image_id, idx in groups.items():
    idx = np.asarray(idx)
    keep = range(len(idx))
    if oks_thre is not None:
      keep = oks_nms(preds[idx], scores[idx], boxes[idx, 4], oks_thre, sigmas)
    for j in idx[list(keep)]:
      records.append(result_record(image_id, preds[j], boxes[j, 0:2], boxes[j, 2:4], scores[j],
                                   category_id))
  return records


def evaluate_topdown(gt_file_or_coco, preds: np.ndarray, boxes: np.ndarray,
                     image_ids: Sequence[int], in_vis_thre: float = IN_VIS_THRE,
                     oks_thre: float | None = OKS_THRE, sigmas: Sequence[float] | None = None,
                     results_file: str | os.PathLike | None = None,
                     verbose: bool = False) -> dict[str, float | int | str]:
  """COCO keypoint AP/AR of a top-down run, as the official `COCODataset.evaluate`.

  Args:
    gt_file_or_coco: annotation file or a `pycocotools.coco.COCO`.
    preds, boxes, image_ids: see :func:`topdown_records`.
    in_vis_thre, oks_thre: rescoring and NMS thresholds (official 0.2, 0.9).
    sigmas: OKS sigmas of the NMS and of COCOeval (default: the COCO ones).
    results_file: also write the results JSON here (official layout).
    verbose: print the pycocotools summary.

  Returns:
    dict with the 10 stats (:data:`higherhrnet_jax.evaluation.coco.STATS_NAMES`),
    `summary`, and `num_records`.
  """
  records = topdown_records(preds, boxes, image_ids, in_vis_thre, oks_thre, sigmas)
  if results_file is not None:
    coco_eval.write_results(records, results_file)
  stats = coco_eval.evaluate_coco(gt_file_or_coco, records, sigmas=sigmas, verbose=verbose)
  stats['num_records'] = len(records)
  return stats
