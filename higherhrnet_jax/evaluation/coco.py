"""COCO keypoint results and metrics (pycocotools), as the official evaluation path.

Records carry the same fields and values as the official results writer
(`_write_coco_keypoint_results`), but the image id comes from the dataset rather than from
the file name. By default every detection is kept with its grouping score (the official
bottom-up evaluation does no OKS-NMS and no rescoring despite a comment saying so); both
are available as explicit switches.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import pathlib
from collections.abc import Sequence

import numpy as np

STATS_NAMES = ('AP', 'AP50', 'AP75', 'APm', 'APl', 'AR', 'AR50', 'AR75', 'ARm', 'ARl')


def person_record(image_id: int, pose: np.ndarray, score: float, category_id: int = 1) -> dict:
  """One results record: joint (x, y, joint score) triples, box of all joints, person score.

  Args:
    image_id: the dataset's image id.
    pose: [K, 3 + T] (x, y, score, tags...) in image pixels (float32 from `get_final_preds`).
    score: person score.
    category_id: the person category.

  Returns:
    dict with `image_id`, `category_id`, `keypoints` (3K floats; the third of each triple
    is the joint score, not a visibility flag), `score`, `bbox` ([x, y, w, h] over all K
    joints, missing ones included, as the official writer).
  """
  pose = np.asarray(pose)
  if pose.ndim != 2 or pose.shape[1] < 3:
    raise ValueError(f'pose: expected [K, 3 + T], got shape {pose.shape}')
  kpt = pose[:, :3].astype(np.float64)
  lo, hi = kpt.min(axis=0), kpt.max(axis=0)
  return {
      'image_id': int(image_id),
      'category_id': int(category_id),
      'keypoints': [float(v) for v in kpt.reshape(-1)],
      'score': float(score),
      'bbox': [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])],
  }


def results_records(image_ids: Sequence[int], poses: Sequence[np.ndarray],
                    scores: Sequence[Sequence[float]], category_id: int = 1,
                    oks_nms_threshold: float | None = None, rescore: bool = False,
                    sigmas: Sequence[float] | None = None,
                    joint_threshold: float = 0.2) -> list[dict]:
  """Results records for a dataset split, in dataset order, people in input order.

  Args:
    image_ids: per image, the dataset's image id.
    poses: per image, [P, K, 3 + T] poses in image pixels (P may be 0).
    scores: per image, P person scores.
    category_id: the person category id.
    oks_nms_threshold: if set, greedy OKS-NMS per image drops a person whose OKS with a
      higher-scored kept person exceeds it (off in the official evaluation).
    rescore: if True, a person's score becomes the mean of its joint scores above
      `joint_threshold` (off in the official evaluation).
    sigmas: per-joint OKS sigmas, needed for OKS-NMS.
    joint_threshold: joint-score threshold of the rescoring.

  Returns:
    list of records (see :func:`person_record`).
  """
  if not len(image_ids) == len(poses) == len(scores):
    raise ValueError(f'image_ids/poses/scores: lengths differ ({len(image_ids)}, {len(poses)}, '
                     f'{len(scores)})')
  records = []
  for image_id, image_poses, image_scores in zip(image_ids, poses, scores):
    image_poses = np.asarray(image_poses)
    if image_poses.size == 0:
      continue
    if len(image_poses) != len(image_scores):
      raise ValueError(f'scores: image {image_id} has {len(image_poses)} poses and '
                       f'{len(image_scores)} scores')
    recs = [person_record(image_id, p, s, category_id) for p, s in zip(image_poses, image_scores)]
    if rescore:
      for r, p in zip(recs, image_poses):
        js = np.asarray(p)[:, 2]
        keep = js > joint_threshold
        r['score'] = float(js[keep].mean()) if keep.any() else 0.0
    if oks_nms_threshold is not None:
      if sigmas is None:
        raise ValueError('sigmas: required for OKS-NMS')
      recs = [recs[i] for i in oks_nms(recs, oks_nms_threshold, sigmas)]
    records.extend(recs)
  return records


def _oks(a: dict, others: list[dict], sigmas: np.ndarray) -> np.ndarray:
  """OKS of record `a` (as ground truth, its box area as scale) with each record in `others`."""
  ka = np.asarray(a['keypoints']).reshape(-1, 3)
  area = a['bbox'][2] * a['bbox'][3]
  var = (2 * sigmas) ** 2
  out = np.zeros(len(others))
  for i, b in enumerate(others):
    kb = np.asarray(b['keypoints']).reshape(-1, 3)
    d2 = ((ka[:, :2] - kb[:, :2]) ** 2).sum(axis=1)
    out[i] = np.mean(np.exp(-d2 / var / (area + np.spacing(1)) / 2))
  return out


def oks_nms(records: Sequence[dict], threshold: float, sigmas: Sequence[float]) -> list[int]:
  """Greedy OKS-NMS; returns kept indices in descending score order."""
  sigmas = np.asarray(sigmas, np.float64)
  order = list(np.argsort([-r['score'] for r in records], kind='stable'))
  keep = []
  while order:
    i, rest = order[0], order[1:]
    keep.append(int(i))
    if not rest:
      break
    oks = _oks(records[i], [records[j] for j in rest], sigmas)
    order = [j for j, o in zip(rest, oks) if o <= threshold]
  return keep


def write_results(records: Sequence[dict], path: str | pathlib.Path) -> None:
  """Writes records as the official results file (keys sorted, indent 4)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(list(records), sort_keys=True, indent=4))


def write_run(out_dir: str | pathlib.Path, records: Sequence[dict], metrics: dict) -> pathlib.Path:
  """Writes an evaluation's `results.json` and `metrics.json` (numbers only); returns the folder."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_results(records, out / 'results.json')
  (out / 'metrics.json').write_text(json.dumps(
      {k: v for k, v in metrics.items() if k != 'summary'}, indent=2))
  return out


def _load_gt(ground_truth):
  from pycocotools.coco import COCO

  if isinstance(ground_truth, COCO):
    return ground_truth
  path = pathlib.Path(ground_truth)
  if not path.is_file():
    raise FileNotFoundError(f'ground truth annotations not found: {path}')
  with contextlib.redirect_stdout(io.StringIO()):
    return COCO(str(path))


def load_results(gt, records: Sequence[dict]):
  """`gt.loadRes` on a copy of the records; an empty list gives an empty result set."""
  from pycocotools.coco import COCO

  if records:
    with contextlib.redirect_stdout(io.StringIO()):
      return gt.loadRes(copy.deepcopy(list(records)))
  res = COCO()
  res.dataset = {'images': list(gt.dataset['images']),
                 'categories': copy.deepcopy(gt.dataset['categories']), 'annotations': []}
  with contextlib.redirect_stdout(io.StringIO()):
    res.createIndex()
  return res


def evaluate_coco(ground_truth, records: Sequence[dict], sigmas: Sequence[float] | None = None,
                  image_ids: Sequence[int] | None = None,
                  verbose: bool = False) -> dict[str, float | str]:
  """COCO keypoint AP/AR with pycocotools, as the official `_do_python_keypoint_eval`.

  Args:
    ground_truth: annotation file path or a `pycocotools.coco.COCO`.
    records: results records (:func:`results_records`).
    sigmas: per-joint OKS sigmas (default: the COCO ones).
    image_ids: restrict the evaluation to these images (default: all of the ground truth).
    verbose: print the pycocotools summary table.

  Returns:
    dict with the 10 stats, keys :data:`STATS_NAMES`, and `summary` (the printed table).
  """
  from pycocotools.cocoeval import COCOeval

  gt = _load_gt(ground_truth)
  known = set(gt.getImgIds())
  unknown = sorted({r['image_id'] for r in records} - known)
  if unknown:
    raise ValueError(f'records: image ids not in the ground truth: {unknown[:5]}')
  dt = load_results(gt, records)
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    ev = COCOeval(gt, dt, 'keypoints')
    ev.params.useSegm = None
    if sigmas is not None:
      ev.params.kpt_oks_sigmas = np.asarray(sigmas, np.float64)
    if image_ids is not None:
      ev.params.imgIds = sorted(int(i) for i in image_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  summary = buf.getvalue()
  if verbose:
    print(summary)
  out = {name: float(ev.stats[i]) for i, name in enumerate(STATS_NAMES)}
  out['summary'] = '\n'.join(l for l in summary.splitlines() if l.lstrip().startswith('Average'))
  return out
