"""Top-down person records (one per annotated person) and the sample parameters.

A top-down training sample is a crop around one person, so the database is a list of
persons, not images. :func:`coco_records` and :func:`mpii_records` build it exactly as the
official `COCODataset._get_db` / `MPIIDataset._get_db` do (same order, same box cleaning,
same centre/scale arithmetic and dtypes), so that samples built from these records match
the official ones bit for bit. :class:`SampleSpec` holds the sample parameters, read from
the config in one place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from higherhrnet_jax import keypoints
from higherhrnet_jax.data import coco
from higherhrnet_jax.data.annotations import AnnotationError

# Box sizes are expressed in units of 200 px (the official `pixel_std`).
PIXEL_STD = 200

# Joints that make up the upper body for the half-body crop, per keypoint set.
UPPER_BODY_IDS = {
    'coco': tuple(range(11)),  # face, shoulders, elbows, wrists
    'mpii': tuple(range(7, 16)),  # thorax, neck, head top, arms (pelvis counts as lower)
}


@dataclasses.dataclass(frozen=True, eq=False)
class PersonRecord:
  """One person of the top-down database.

  Attributes:
    image_index: index of the image in its source (`KeypointSource`); -1 for MPII.
    image_id: COCO image id (-1 for MPII).
    image_path: the image file.
    image_hw: (height, width) from the annotation file, or None where it has none (MPII).
    center: (2,) box centre (x, y), float32 for COCO, float64 for MPII (the official dtypes,
      which the augmentation arithmetic depends on).
    scale: (2,) box size (w, h) in units of 200 px, padded; same dtype as `center`.
    joints: [K, 3] float64 `(x, y, 0)` in image pixels.
    joints_vis: [K, 3] float64 `(v, v, 0)`, v in {0, 1}: 1 for every labelled joint.
    annotation_id: COCO annotation id (-1 for MPII).
  """

  image_index: int
  image_id: int
  image_path: pathlib.Path
  image_hw: tuple[int, int] | None
  center: np.ndarray
  scale: np.ndarray
  joints: np.ndarray
  joints_vis: np.ndarray
  annotation_id: int = -1

  @property
  def num_visible(self) -> int:
    """Labelled joints (the official half-body test counts these)."""
    return int(np.sum(self.joints_vis[:, 0]))


def box_to_center_scale(box_xywh: Sequence[float], aspect_ratio: float,
                        padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
  """Box to the official centre and padded scale (`_xywh2cs`).

  The box is widened or heightened (never shrunk) to `aspect_ratio` = w / h of the network
  input. A centre with x exactly -1 skips the padding: the official code kept it from a
  "-1 means no box" convention, and its results depend on it.

  Args:
    box_xywh: `[x, y, w, h]` in image pixels.
    aspect_ratio: input width / input height (0.75 for 192x256).
    padding: scale enlargement (1.25 officially).

  Returns:
    `(center, scale)`, float32 (2,) each; scale in units of 200 px.
  """
  x, y, w, h = (float(v) for v in box_xywh[:4])
  center = np.array([x + w * 0.5, y + h * 0.5], np.float32)
  if w > aspect_ratio * h:
    h = w * 1.0 / aspect_ratio
  elif w < aspect_ratio * h:
    w = h * aspect_ratio
  scale = np.array([w * 1.0 / PIXEL_STD, h * 1.0 / PIXEL_STD], np.float32)
  if center[0] != -1:
    scale = scale * np.float32(padding)
  return center, scale


def clean_box(box_xywh: Sequence[float], image_hw: tuple[int, int]) -> list[float] | None:
  """The official ground-truth box cleaning: clipped, one pixel narrower and shorter.

  Returns:
    `[x1, y1, x2 - x1, y2 - y1]`, or None when nothing of the box is left.
  """
  height, width = image_hw
  x, y, w, h = (float(v) for v in box_xywh[:4])
  x1, y1 = max(0.0, x), max(0.0, y)
  x2 = min(width - 1.0, x1 + max(0.0, w - 1))
  y2 = min(height - 1.0, y1 + max(0.0, h - 1))
  if x2 >= x1 and y2 >= y1:
    return [x1, y1, x2 - x1, y2 - y1]
  return None


def coco_records(source: coco.KeypointSource, aspect_ratio: float,
                 padding: float = 1.25) -> list[PersonRecord]:
  """The official COCO top-down training database from a keypoint source.

  Image order of the annotation file, annotations in file order; kept: non-crowd people
  of the first category (person) with a positive area, a non-empty cleaned box and at
  least one non-zero keypoint value.

  Args:
    source: a `coco_source(..., train=False)` (every image; images without people give no
      record either way).
    aspect_ratio: input width / height, for :func:`box_to_center_scale`.
    padding: box padding.

  Returns:
    The records, in the official database order.
  """
  k = source.num_joints
  cat_ids = source.coco.getCatIds()
  person = cat_ids[0] if cat_ids else None
  records = []
  for index in range(len(source)):
    info = source.info(index)
    hw = (info.height, info.width)
    for ann in source.annotations(index):
      if ann.get('iscrowd', 0) or (person is not None and ann.get('category_id') != person):
        continue
      box = ann.get('bbox')
      if not (isinstance(box, list) and len(box) == 4
              and all(isinstance(v, (int, float)) and np.isfinite(v) for v in box)):
        raise AnnotationError(f'{source.annotation_file}: annotation {ann["id"]}: '
                              "a person with keypoints needs a 'bbox' [x, y, w, h]")
      area = ann.get('area', box[2] * box[3])
      cleaned = clean_box(box, hw)
      if not area > 0 or cleaned is None:
        continue
      kps = np.asarray(ann['keypoints'], np.float64).reshape(k, 3)
      if kps.max() == 0:
        continue
      joints = np.zeros((k, 3))
      joints[:, :2] = kps[:, :2]
      vis = np.minimum(kps[:, 2], 1.0)
      joints_vis = np.stack([vis, vis, np.zeros(k)], axis=1)
      center, scale = box_to_center_scale(cleaned, aspect_ratio, padding)
      records.append(PersonRecord(index, info.image_id, source.image_path(index), hw, center,
                                  scale, joints, joints_vis, int(ann['id'])))
  return records


def _mpii_fail(path: pathlib.Path, i: int, message: str) -> None:
  raise AnnotationError(f'{path}: record {i}: {message}')


def mpii_records(annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
                 num_joints: int = 16, padding: float = 1.25) -> list[PersonRecord]:
  """The official MPII database from an MPII json file (`annot/{train,valid,test}.json`).

  The json is 1-based (MATLAB). Unless the centre x is exactly -1, the centre moves down by
  15 px per unit of scale (MPII's `objpos` sits high on the body) and the scale is padded;
  then everything becomes 0-based, so unlabelled joints, stored as (-1, -1), end up at
  (-2, -2). All float64, the official dtype. Records without joints (the test set) get
  all-zero joints, none labelled.

  Raises:
    FileNotFoundError: no such file.
    AnnotationError: a malformed file or record (named).
  """
  path = pathlib.Path(annotation_file)
  try:
    with open(path, 'rb') as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise AnnotationError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(data, list):
    raise AnnotationError(f'{path}: expected a JSON list of person records')
  records = []
  for i, rec in enumerate(data):
    if not isinstance(rec, dict) or not all(f in rec for f in ('image', 'center', 'scale')):
      _mpii_fail(path, i, "needs 'image', 'center' and 'scale'")
    labelled = 'joints' in rec
    try:
      c = np.array(rec['center'], np.float64).reshape(2)
      s = np.array([rec['scale'], rec['scale']], np.float64)
      joints = np.array(rec['joints'] if labelled else np.ones((num_joints, 2)), np.float64)
      vis = np.array(rec['joints_vis'] if labelled else np.zeros(num_joints), np.float64)
    except (KeyError, TypeError, ValueError) as e:
      _mpii_fail(path, i, f'malformed centre, scale, joints or joints_vis ({e!r})')
    if joints.shape != (num_joints, 2) or vis.shape != (num_joints,):
      _mpii_fail(path, i, f'joints must be {num_joints} x 2 and joints_vis {num_joints} values, '
                          f'got {joints.shape} and {vis.shape}')
    if not (np.isfinite(c).all() and np.isfinite(s).all() and np.isfinite(joints).all()):
      _mpii_fail(path, i, 'non-finite centre, scale or joints')
    if c[0] != -1:
      c[1] = c[1] + 15 * s[1]
      s = s * padding
    c = c - 1
    joints_3d = np.zeros((num_joints, 3))
    joints_3d[:, :2] = joints - 1  # the test set's placeholder ones become zeros
    joints_vis = np.zeros((num_joints, 3))
    joints_vis[:, 0] = joints_vis[:, 1] = vis
    records.append(PersonRecord(-1, -1, pathlib.Path(image_dir) / str(rec['image']), None, c, s,
                                joints_3d, joints_vis))
  return records


def load_mpii_gt(path: str | os.PathLike) -> dict[str, Any]:
  """The PCKh ground truth `gt_valid.mat` (MATLAB 5 file, read with scipy.io).

  Returns:
    'dataset_joints' tuple of the joint names, 'jnt_missing' [16, N], 'pos_gt_src'
    [16, 2, N] (1-based), 'headboxes_src' [2, 2, N] (1-based corners), float64.

  Raises:
    KeyError: a field is missing (its name).
  """
  from scipy import io as sio  # only the MPII evaluation needs scipy

  m = sio.loadmat(os.fspath(path))
  cells = np.asarray(m['dataset_joints']).reshape(-1)
  names = tuple(str(np.asarray(n).reshape(-1)[0]) for n in cells)
  return {'dataset_joints': names, 'jnt_missing': np.asarray(m['jnt_missing'], np.float64),
          'pos_gt_src': np.asarray(m['pos_gt_src'], np.float64),
          'headboxes_src': np.asarray(m['headboxes_src'], np.float64)}


def load_image(record: PersonRecord) -> np.ndarray:
  """Decodes the record's image, `[H, W, 3]` uint8 RGB.

  Raises:
    CorruptImageError: missing, undecodable, or not the size the annotation file states
      (the message names the file; loaders skip and count such samples).
  """
  image = coco.decode_image(record.image_path)
  if record.image_hw is not None and image.shape[:2] != tuple(record.image_hw):
    raise coco.CorruptImageError(
        f'{record.image_path}: decoded size {image.shape[1]}x{image.shape[0]} (w x h) != '
        f'{record.image_hw[1]}x{record.image_hw[0]} in the annotation file')
  return image


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  """The parameters of one top-down training sample (official `DATASET` / `MODEL` fields).

  Attributes:
    image_size: (w, h) of the network input.
    heatmap_size: (w, h) of the target heatmaps.
    sigma: Gaussian sigma in heatmap pixels; 3 * sigma must be whole (window 6 sigma + 1).
    flip_index: joint permutation of a horizontal flip (from the keypoint spec).
    upper_body_ids: joints of the upper body for the half-body crop.
    scale_factor: scale draw `clip(1 + f z, 1 - f, 1 + f)`.
    rot_factor: rotation draw `clip(f z, -2 f, 2 f)` degrees.
    rot_prob: probability of rotating (the official 0.6).
    flip: whether flipping is on; flip_prob: its probability (the official 0.5).
    prob_half_body: probability of a half-body crop (negative: never).
    num_joints_half_body: a half-body crop needs more labelled joints than this.
    half_body_padding: scale enlargement of a half-body box (1.5 officially).
    box_padding: scale enlargement of a person box (1.25 officially).
  """

  image_size: tuple[int, int]
  heatmap_size: tuple[int, int]
  sigma: float
  flip_index: tuple[int, ...]
  upper_body_ids: tuple[int, ...]
  scale_factor: float = 0.35
  rot_factor: float = 45.0
  rot_prob: float = 0.6
  flip: bool = True
  flip_prob: float = 0.5
  prob_half_body: float = 0.3
  num_joints_half_body: int = 8
  half_body_padding: float = 1.5
  box_padding: float = 1.25
  codec: str = 'official'  # 'official' | 'dark' (sub-pixel targets) | 'udp' (unbiased warp + targets)

  def __post_init__(self):
    k = len(self.flip_index)
    if sorted(self.flip_index) != list(range(k)):
      raise ValueError(f'SampleSpec.flip_index is not a permutation of {k} joints')
    if any(not 0 <= j < k for j in self.upper_body_ids):
      raise ValueError(f'SampleSpec.upper_body_ids: joint ids must lie in [0, {k})')
    if min(self.image_size) <= 0 or min(self.heatmap_size) <= 0:
      raise ValueError('SampleSpec: image and heatmap sizes must be positive')
    if self.sigma <= 0 or float(3 * self.sigma) != int(3 * self.sigma):
      raise ValueError(f'SampleSpec.sigma: 3 * sigma must be a positive whole number, '
                       f'got sigma = {self.sigma}')

  @property
  def num_joints(self) -> int:
    return len(self.flip_index)

  @property
  def aspect_ratio(self) -> float:
    return self.image_size[0] * 1.0 / self.image_size[1]

  @property
  def flip_pairs(self) -> tuple[tuple[int, int], ...]:
    return tuple((a, b) for a, b in enumerate(self.flip_index) if a < b)

  @classmethod
  def from_config(cls, data_config: Mapping | Any,
                  keypoint_spec: keypoints.KeypointSpec) -> SampleSpec:
    """Reads the `data` config block (`input_size` is (height, width), heatmaps 1/4)."""
    get = data_config.get if hasattr(data_config, 'get') else data_config.__getitem__
    codec = get('codec', 'official')
    if codec not in ('official', 'dark', 'udp'):
      raise ValueError(f"config.data.codec: 'official', 'dark' or 'udp', got {codec!r}")
    h, w = (int(v) for v in get('input_size'))
    heatmap = get('heatmap_size', None)
    heatmap_size = (w // 4, h // 4) if heatmap is None else tuple(int(v) for v in heatmap)
    upper = get('upper_body_ids', None)
    if upper is None:
      if keypoint_spec.name not in UPPER_BODY_IDS:
        raise ValueError(f'config.data.upper_body_ids: needed for keypoint set '
                         f'{keypoint_spec.name!r} (known: {sorted(UPPER_BODY_IDS)})')
      upper = UPPER_BODY_IDS[keypoint_spec.name]
    return cls(
        image_size=(w, h),
        heatmap_size=heatmap_size,
        sigma=float(get('sigma')),
        flip_index=tuple(keypoint_spec.flip_index),
        upper_body_ids=tuple(int(j) for j in upper),
        scale_factor=float(get('scale_factor', 0.35)),
        rot_factor=float(get('rot_factor', 45.0)),
        rot_prob=float(get('rot_prob', 0.6)),
        flip=bool(get('flip', True)),
        flip_prob=float(get('flip_prob', 0.5)),
        prob_half_body=float(get('prob_half_body', 0.3)),
        num_joints_half_body=int(get('num_joints_half_body', 8)),
        half_body_padding=float(get('half_body_padding', 1.5)),
        box_padding=float(get('box_padding', 1.25)),
        codec=codec,
    )
