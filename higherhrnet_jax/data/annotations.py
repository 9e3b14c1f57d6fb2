"""Validation of COCO-format keypoint annotation files (COCO keypoints, CrowdPose).

Structural problems (not JSON, missing or mistyped fields, a wrong keypoint count, unknown
image ids, duplicate ids, malformed segmentations) raise :class:`AnnotationError` naming the
file and the record. What the official code tolerates is kept and counted: keypoints
outside their image (the target generators skip them) and polygons of fewer than 3 points,
which pycocotools cannot rasterize as polygons (dropped).
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
from typing import Any

import numpy as np

_log = logging.getLogger(__name__)


class AnnotationError(ValueError):
  """The annotation file is malformed; the message names the file and the record."""


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class CheckedAnnotations:
  """A parsed and validated annotation file.

  Attributes:
    data: the JSON content, normalised in place (`iscrowd` and `num_keypoints` filled in,
      unusable polygons dropped).
    keypoints: [A, K, 3] float64 keypoints of the used annotations (those with keypoints).
    keypoint_row: annotation id -> row of `keypoints`.
    stats: `keypoints_outside_image`, `dropped_polygons`.
  """

  def __init__(self, path: str | pathlib.Path, num_joints: int, *,
               mask_from_segmentation: bool = True, scale_aware_sigma: bool = False):
    self.path = pathlib.Path(path)
    self.num_joints = int(num_joints)
    self.mask_from_segmentation = mask_from_segmentation
    self.scale_aware_sigma = scale_aware_sigma
    self.stats = {'keypoints_outside_image': 0, 'dropped_polygons': 0}
    self.data = self._read_json()
    self._validate(self.data)

  def _read_json(self) -> dict:
    if not self.path.is_file():
      raise FileNotFoundError(f'annotation file not found: {self.path}')
    try:
      with open(self.path, 'rb') as f:
        data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise AnnotationError(f'{self.path}: not valid JSON ({e})') from e
    return data

  def _fail(self, where: str, message: str) -> None:
    raise AnnotationError(f'{self.path}: {where}: {message}')

  def _validate(self, data: Any) -> None:
    if not isinstance(data, dict):
      self._fail('top level', 'expected a JSON object')
    for key in ('images', 'annotations'):
      if not isinstance(data.get(key), list):
        self._fail('top level', f'missing or non-list field {key!r}')
    sizes: dict[int, tuple[int, int, int]] = {}
    for i, img in enumerate(data['images']):
      where = f'images[{i}]'
      if not isinstance(img, dict):
        self._fail(where, 'expected an object')
      where = f'images[{i}] (id={img.get("id")!r})'
      if not _is_int(img.get('id')):
        self._fail(where, "field 'id' must be an integer")
      if not isinstance(img.get('file_name'), str) or not img['file_name']:
        self._fail(where, "field 'file_name' must be a non-empty string")
      for f in ('height', 'width'):
        if not _is_int(img.get(f)) or img[f] <= 0:
          self._fail(where, f'field {f!r} must be a positive integer')
      if img['id'] in sizes:
        first = sizes[img['id']][0]
        self._fail(where, f'duplicate image id {img["id"]} (first at images[{first}])')
      sizes[img['id']] = (i, img['height'], img['width'])
    seen: dict[Any, int] = {}
    k = self.num_joints
    used: list[int] = []
    hw: list[tuple[int, int]] = []
    for i, ann in enumerate(data['annotations']):
      if not isinstance(ann, dict):
        self._fail(f'annotations[{i}]', 'expected an object')
      where = f'annotations[{i}] (id={ann.get("id")!r})'
      if not _is_int(ann.get('id')):
        self._fail(where, "field 'id' must be an integer")
      if ann['id'] in seen:
        first = seen[ann['id']]
        self._fail(where, f'duplicate annotation id {ann["id"]} (first at annotations[{first}])')
      seen[ann['id']] = i
      if not _is_int(ann.get('image_id')) or ann['image_id'] not in sizes:
        self._fail(where, f'image_id {ann.get("image_id")!r} is not in images')
      iscrowd = ann.get('iscrowd', 0)
      if iscrowd not in (0, 1) or isinstance(iscrowd, float):
        self._fail(where, f"field 'iscrowd' must be 0 or 1, got {iscrowd!r}")
      ann.setdefault('iscrowd', 0)
      nk = ann.get('num_keypoints')
      kps = ann.get('keypoints')
      if nk is None and isinstance(kps, list):
        nk = ann['num_keypoints'] = int(sum(1 for v in kps[2::3] if _is_num(v) and v > 0))
      if not _is_int(nk) or nk < 0:
        self._fail(where, f"field 'num_keypoints' must be a non-negative integer, got {nk!r}")
      _, h, w = sizes[ann['image_id']]
      if iscrowd == 0 or nk > 0:
        if not isinstance(kps, list) or len(kps) != 3 * k:
          n = len(kps) if isinstance(kps, list) else type(kps).__name__
          self._fail(where, f"field 'keypoints' must be a list of {3 * k} numbers ({k} joints), "
                            f'got {n}')
        if self.scale_aware_sigma:
          box = ann.get('bbox')
          if not (isinstance(box, list) and len(box) == 4 and all(_is_num(v) for v in box)
                  and max(box[2], box[3]) > 0):
            self._fail(where, "scale-aware sigma needs a 'bbox' [x, y, w, h] with w or h > 0")
        used.append(i)
        hw.append((h, w))
      if self.mask_from_segmentation and (iscrowd or nk == 0):
        ann['segmentation'] = self._check_segmentation(where, ann.get('segmentation'), h, w)
    self._check_keypoints(data['annotations'], used, hw)

  def _check_keypoints(self, anns: list[dict], used: list[int], hw: list[tuple[int, int]]) -> None:
    """Keypoint values of all used annotations at once (numeric, finite); counts outliers."""
    k = self.num_joints
    table = np.array([anns[i]['keypoints'] for i in used]) if used else np.zeros((0, 3 * k))
    if table.dtype.kind not in 'iuf' or not np.isfinite(table).all():
      for i in used:  # slow path, only to name the first bad record
        row = np.array(anns[i]['keypoints'])
        if row.dtype.kind not in 'iuf' or not np.isfinite(row).all():
          self._fail(f'annotations[{i}] (id={anns[i]["id"]!r})',
                     "field 'keypoints' holds a non-finite or non-numeric value")
    kp = table.astype(np.float64).reshape(len(used), k, 3)
    size = np.asarray(hw, np.float64).reshape(len(used), 1, 2)
    out = (kp[..., 0] < 0) | (kp[..., 1] < 0) | (kp[..., 0] >= size[..., 1]) | (
        kp[..., 1] >= size[..., 0])
    self.stats['keypoints_outside_image'] += int(((kp[..., 2] > 0) & out).sum())
    self.keypoints = kp
    self.keypoint_row = {anns[i]['id']: r for r, i in enumerate(used)}

  def _check_segmentation(self, where: str, seg: Any, h: int, w: int) -> Any:
    """Validates a segmentation; drops polygons pycocotools cannot rasterize as polygons."""
    if isinstance(seg, dict):
      if 'counts' not in seg or 'size' not in seg:
        self._fail(where, "RLE segmentation needs 'counts' and 'size'")
      if list(seg['size']) != [h, w]:
        self._fail(where, f'RLE size {seg["size"]} != image size [{h}, {w}]')
      return seg
    if not isinstance(seg, list):
      self._fail(where, f"field 'segmentation' must be polygons or RLE, got {type(seg).__name__}")
    kept = []
    for j, poly in enumerate(seg):
      arr = np.array(poly) if isinstance(poly, list) else None
      if arr is None or arr.ndim != 1 or (arr.size and (
          arr.dtype.kind not in 'iuf' or not np.isfinite(arr).all())):
        self._fail(where, f'segmentation[{j}] is not a list of finite numbers')
      # Fewer than 3 points (or an odd count) is not a polygon; pycocotools would even read a
      # 4-number first entry as a box. A zero-area polygon rasterizes to nothing and is kept.
      if len(poly) < 6 or len(poly) % 2:
        self.stats['dropped_polygons'] += 1
        _log.warning('%s: %s: segmentation[%d] has %d numbers, not a polygon; dropped',
                     self.path, where, j, len(poly))
        continue
      kept.append(poly)
    return kept
