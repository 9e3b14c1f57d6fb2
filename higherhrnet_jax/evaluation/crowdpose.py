"""CrowdPose keypoint metrics with the CrowdPose protocol.

The protocol (the `crowdposetools` API of the CrowdPose authors) differs from COCO's:
14 joints with their own OKS sigmas, no area ranges (the ground truth has no `area`; the
OKS scale is `0.53 * bbox_w * bbox_h`), and AP split by the image `crowdIndex` into easy
(< 0.2), medium (< 0.8) and hard. Two maintained evaluators implement it as
`iouType='keypoints_crowd'`: `faster-coco-eval` (a wheel; the default here) and
`xtcocotools` (mmpose's; with NumPy 2 it must be built from source:
`pip install --no-build-isolation --no-binary xtcocotools xtcocotools`); `xthotcoco`
(xtcocotools' API on the independent Rust engine of hotcoco, a wheel) is a third.
Results records are the COCO ones (:func:`higherhrnet_jax.evaluation.coco.results_records`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import pathlib
from collections.abc import Sequence

import numpy as np

from higherhrnet_jax import keypoints

STATS_NAMES = ('AP', 'AP50', 'AP75', 'AR', 'AR50', 'AR75', 'APeasy', 'APmedium', 'APhard')
BACKENDS = ('faster_coco_eval', 'xtcocotools', 'xthotcoco')


def _check_ground_truth(path: pathlib.Path, num_joints: int) -> set[int]:
  if not path.is_file():
    raise FileNotFoundError(f'CrowdPose ground truth not found: {path}')
  data = json.loads(path.read_text())
  for img in data.get('images', []):
    if 'crowdIndex' not in img:
      raise ValueError(f'{path}: image {img.get("id")} has no crowdIndex (not CrowdPose ground truth?)')
  for ann in data.get('annotations', []):
    if len(ann.get('keypoints', ())) != 3 * num_joints:
      raise ValueError(f'{path}: annotation {ann.get("id")} has {len(ann.get("keypoints", ()))} '
                       f'keypoint values, expected {3 * num_joints}')
  return {img['id'] for img in data['images']}


def evaluate_crowdpose(ground_truth: str | pathlib.Path, records: Sequence[dict],
                       sigmas: Sequence[float] = keypoints.CROWDPOSE.sigmas,
                       backend: str = 'faster_coco_eval',
                       verbose: bool = False) -> dict[str, float | str]:
  """CrowdPose AP/AR and AP easy/medium/hard.

  Args:
    ground_truth: path of a CrowdPose-format annotation file (images carry `crowdIndex`);
      the evaluators re-read the file for the crowd split, so it must be a path.
    records: results records with 14-joint keypoints.
    sigmas: per-joint OKS sigmas (default: CrowdPose's).
    backend: one of :data:`BACKENDS`.
    verbose: print the evaluator's summary.

  Returns:
    dict with keys :data:`STATS_NAMES` (the easy/medium/hard values are rounded to 4
    decimals by the protocol) and `summary` (the printed table, when the backend prints).
  """
  path = pathlib.Path(ground_truth)
  known = _check_ground_truth(path, len(sigmas))
  unknown = sorted({r['image_id'] for r in records} - known)
  if unknown:
    raise ValueError(f'records: image ids not in the ground truth: {unknown[:5]}')
  records = copy.deepcopy(list(records))
  sigmas = np.asarray(sigmas, np.float64)
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    if backend == 'faster_coco_eval' or (backend in BACKENDS and not records):
      # The xtcocotools-style evaluators cannot take an empty result set; all zeros here.
      stats = _faster_coco_eval(path, records, sigmas)
    elif backend == 'xtcocotools':
      stats = _xtcocotools(path, records, sigmas)
    elif backend == 'xthotcoco':
      stats = _xthotcoco(path, records, sigmas)
    else:
      raise ValueError(f'backend: {backend!r} is not one of {BACKENDS}')
  out = {name: float(v) for name, v in zip(STATS_NAMES, stats)}
  out['summary'] = buf.getvalue()
  if verbose:
    print(out['summary'])
  return out


def _faster_coco_eval(path: pathlib.Path, records: list[dict], sigmas: np.ndarray) -> np.ndarray:
  try:
    from faster_coco_eval import COCO, COCOeval_faster
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError('CrowdPose evaluation needs faster-coco-eval (pip install faster-coco-eval)') from e
  gt = COCO(str(path))
  if records:
    dt = gt.loadRes(records)
  else:
    dt = COCO({'images': copy.deepcopy(gt.dataset['images']), 'annotations': [],
               'categories': copy.deepcopy(gt.dataset['categories'])})
  ev = COCOeval_faster(gt, dt, 'keypoints_crowd', kpt_oks_sigmas=list(sigmas), use_area=False,
                       print_function=print)
  ev.evaluate()
  ev.accumulate()
  ev.summarize()
  return np.asarray(ev.all_stats[:9])


def _xtcocotools_api(path: pathlib.Path, records: list[dict], sigmas: np.ndarray, coco_cls,
                     eval_cls, prepare=lambda ev: None):
  """(evaluator, stats) of xtcocotools' `COCOeval(..., 'keypoints_crowd')` API (records
  must not be empty: these evaluators re-read them for the crowd split)."""
  gt = coco_cls(str(path))
  ev = eval_cls(gt, gt.loadRes(records), 'keypoints_crowd', sigmas, use_area=False)
  prepare(ev)
  ev.evaluate()
  ev.accumulate()
  ev.summarize()
  return ev, np.asarray(ev.stats[:9], np.float64)


def _xtcocotools(path: pathlib.Path, records: list[dict], sigmas: np.ndarray) -> np.ndarray:
  try:
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval
  except (ImportError, ValueError) as e:  # ValueError: a wheel built against NumPy 1
    raise ImportError('xtcocotools is missing or built against another NumPy; install it with '
                      '`pip install --no-build-isolation --no-binary xtcocotools xtcocotools`') from e
  _, stats = _xtcocotools_api(path, records, sigmas, COCO, COCOeval,
                              prepare=lambda ev: setattr(ev.params, 'useSegm', None))
  return stats


def _xthotcoco(path: pathlib.Path, records: list[dict], sigmas: np.ndarray) -> np.ndarray:
  try:
    from xthotcoco import COCO, COCOeval
  except ImportError as e:
    raise ImportError('the xthotcoco backend needs `pip install xthotcoco`') from e
  ev, stats = _xtcocotools_api(path, records, sigmas, COCO, COCOeval)
  # xthotcoco 0.1 scores an empty crowd class over all images; the protocol reports -1.
  for i, subset in enumerate(ev.split(0.2, 0.8)):
    if not subset:
      stats[6 + i] = -1.0
  return stats
