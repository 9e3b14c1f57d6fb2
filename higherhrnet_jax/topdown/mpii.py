"""MPII single-person benchmark: PCKh and the files of the official evaluation.

The MPII test path differs from the COCO one before and after the network:
  * test records (:func:`higherhrnet_jax.topdown.records.mpii_records`) carry a person
    centre and scale instead of a box, in float64 (the official loader's dtype), and the
    crop and inverse matrices of :mod:`higherhrnet_jax.topdown.decode` follow that dtype;
    flip test and `get_final_preds` are the COCO ones with the MPII flip pairs;
  * there is no rescoring, NMS or COCOeval: the predictions (one per record, in record
    order) are scored by PCKh against `gt_<set>.mat`, in float64.

The PCKh table keeps the official definitions, quirks included, so numbers compare with
published MPII results: "Head" is the head top only, the groups are unweighted means of
the left and right joints' percentages, "Mean" pools all joints except pelvis and thorax
(masked by position), and "Mean@0.1" is really measured at 0.11 of the head size.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from higherhrnet_jax.topdown import records

# Joint names of `gt_<set>.mat` (`dataset_joints`) that the table looks up.
GT_JOINT_NAMES = ('rank', 'rkne', 'rhip', 'lhip', 'lkne', 'lank', 'pelv', 'thor', 'neck',
                  'head', 'rwri', 'relb', 'rsho', 'lsho', 'lelb', 'lwri')

SC_BIAS = 0.6  # PCKh normaliser: 0.6 x the head-box diagonal
PCKH_THRESHOLD = 0.5
VALUE_NAMES = ('Head', 'Shoulder', 'Elbow', 'Wrist', 'Hip', 'Knee', 'Ankle', 'Mean', 'Mean@0.1')
_GROUPS = (('Shoulder', 'sho'), ('Elbow', 'elb'), ('Wrist', 'wri'), ('Hip', 'hip'),
           ('Knee', 'kne'), ('Ankle', 'ank'))
_EXCLUDED = slice(6, 8)  # pelvis and thorax: outside "Mean" (by position, as the official)
_MEAN_AT_01_ROW = 11  # row of the 0.01-step threshold table used for "Mean@0.1" (= 0.11)


@dataclasses.dataclass(frozen=True)
class MpiiGroundTruth:
  """The arrays of `gt_<set>.mat`.

  Attributes:
    joint_names: the 16 names in `dataset_joints` order.
    jnt_missing: `[16, N]` 1 for unlabelled joints.
    pos_gt_src: `[16, 2, N]` 1-based joint positions.
    headboxes_src: `[2, 2, N]` head box corners `(x1, y1)`, `(x2, y2)`, 1-based.
  """

  joint_names: tuple[str, ...]
  jnt_missing: np.ndarray
  pos_gt_src: np.ndarray
  headboxes_src: np.ndarray

  @property
  def num_records(self) -> int:
    return self.jnt_missing.shape[1]


def load_ground_truth(path: str | os.PathLike) -> MpiiGroundTruth:
  """Reads and checks the official PCKh ground truth (`annot/gt_valid.mat`).

  Raises:
    FileNotFoundError: no such file.
    ValueError: unreadable, or a field missing or of the wrong shape (named).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'MPII ground truth not found: {path}')
  try:
    gt = records.load_mpii_gt(path)
  except KeyError as e:
    raise ValueError(f'{path}: no field "{e.args[0]}"') from e
  except Exception as e:  # scipy raises several types for malformed files
    raise ValueError(f'{path}: cannot read the MATLAB file ({e})') from e
  names, missing = gt['dataset_joints'], gt['jnt_missing']
  pos, heads = gt['pos_gt_src'], gt['headboxes_src']
  k = len(names)
  if missing.ndim != 2 or missing.shape[0] != k:
    raise ValueError(f'{path}: field "jnt_missing" has shape {missing.shape}, expected ({k}, N)')
  n = missing.shape[1]
  if pos.shape != (k, 2, n):
    raise ValueError(f'{path}: field "pos_gt_src" has shape {pos.shape}, expected ({k}, 2, {n})')
  if heads.shape != (2, 2, n):
    raise ValueError(f'{path}: field "headboxes_src" has shape {heads.shape}, expected (2, 2, {n})')
  unknown = sorted(set(GT_JOINT_NAMES) - set(names))
  if unknown:
    raise ValueError(f'{path}: field "dataset_joints" lacks the joints {unknown}')
  return MpiiGroundTruth(tuple(names), missing, pos, heads)


@dataclasses.dataclass(frozen=True)
class PCKhResult:
  """PCKh table and the arrays behind it.

  Attributes:
    values: `VALUE_NAMES` -> percentage, in table order.
    details: the intermediate arrays under the official names (`uv_err`, `headsizes`,
      `scaled_uv_err`, `jnt_count`, `PCKh` (all 16 joints), `rng`, `pckAll` `[51, 16]`,
      `jnt_ratio` (0 for pelvis and thorax), `less_than_threshold` (hits at `threshold`),
      ...), plus `counted`, the joints that enter "Mean".
  """

  values: dict[str, float]
  details: dict[str, np.ndarray]

  @property
  def mean(self) -> float:
    return self.values['Mean']


def pckh(preds: np.ndarray, ground_truth: MpiiGroundTruth | str | os.PathLike,
         threshold: float = PCKH_THRESHOLD) -> PCKhResult:
  """PCKh of one prediction per ground-truth record (official `MPIIDataset.evaluate`).

  A joint counts as correct when its error is at most `threshold` x the record's head
  size (0.6 x the head-box diagonal); NaN predictions are misses, predictions of
  unlabelled joints are ignored.

  Args:
    preds: `[N, 16, 2+]` 0-based image pixels (`all_preds`; a score column is ignored), in
      the order of the ground-truth records.
    ground_truth: :class:`MpiiGroundTruth` or the path of `gt_<set>.mat`.
    threshold: the PCKh threshold of the per-joint and group values.

  Returns:
    :class:`PCKhResult`.
  """
  gt = ground_truth
  if not isinstance(gt, MpiiGroundTruth):
    gt = load_ground_truth(gt)
  preds = np.asarray(preds)
  if not np.issubdtype(preds.dtype, np.floating):
    preds = preds.astype(np.float64)
  k, n = gt.jnt_missing.shape
  if preds.ndim != 3 or preds.shape[:2] != (n, k) or preds.shape[2] < 2:
    raise ValueError(f'preds: expected [{n}, {k}, 2+] (one prediction per ground-truth record), '
                     f'got shape {preds.shape}')
  one_based = preds[:, :, 0:2] + 1.0  # the ground truth is MATLAB's
  pos_pred_src = np.transpose(one_based, [1, 2, 0])
  visible = 1 - gt.jnt_missing
  uv_error = pos_pred_src - gt.pos_gt_src
  uv_err = np.linalg.norm(uv_error, axis=1)
  headsizes = np.linalg.norm(gt.headboxes_src[1] - gt.headboxes_src[0], axis=0) * SC_BIAS
  scale = headsizes * np.ones((k, 1))
  with np.errstate(invalid='ignore', divide='ignore'):
    scaled = uv_err / scale * visible
    jnt_count = np.sum(visible, axis=1)

    def rate(t):
      hits = (scaled <= t) * visible
      return 100. * np.sum(hits, axis=1) / jnt_count, hits

    per_joint, hits = rate(threshold)
    rng = np.arange(0, 0.5 + 0.01, 0.01)
    pck_all = np.stack([rate(t)[0] for t in rng])
    counted = np.ones(k, bool)
    counted[_EXCLUDED] = False
    total = np.sum(np.where(counted, jnt_count, 0.0))
    if total == 0:
      raise ValueError('ground truth: no labelled joint outside pelvis and thorax')
    ratio = np.where(counted, jnt_count / total, 0.0)
    mean = np.sum(np.where(counted, per_joint * ratio, 0.0))
    mean_at = np.sum(np.where(counted, pck_all[_MEAN_AT_01_ROW] * ratio, 0.0))

  j = {name: gt.joint_names.index(name) for name in GT_JOINT_NAMES}
  values = {'Head': float(per_joint[j['head']])}
  for group, part in _GROUPS:
    values[group] = float(0.5 * (per_joint[j['l' + part]] + per_joint[j['r' + part]]))
  values['Mean'] = float(mean)
  values['Mean@0.1'] = float(mean_at)
  details = dict(preds=one_based, pos_pred_src=pos_pred_src, jnt_visible=visible,
                 uv_error=uv_error, uv_err=uv_err, headsizes=headsizes, scale=scale,
                 scaled_uv_err=scaled, jnt_count=jnt_count, PCKh=per_joint, rng=rng,
                 pckAll=pck_all, jnt_ratio=ratio, counted=counted, less_than_threshold=hits)
  return PCKhResult(values, details)


def write_pred_mat(path: str | os.PathLike, preds: np.ndarray) -> None:
  """Writes `pred.mat` as the official evaluation does (1-based `preds`, `[N, 16, 2]`)."""
  import scipy.io

  preds = np.asarray(preds)
  scipy.io.savemat(str(path), {'preds': preds[:, :, 0:2] + 1.0})


def format_table(values: dict[str, float], arch: str = 'pose_hrnet') -> list[str]:
  """The markdown table lines the official `validate` logs (values with 3 decimals)."""
  if len(arch) > 15:
    arch = arch[:8] + '...'
  return ['| Arch ' + ' '.join(f'| {name}' for name in values) + ' |',
          '|---' * (len(values) + 1) + '|',
          '| ' + arch + ' ' + ' '.join(f'| {v:.3f}' for v in values.values()) + ' |']
