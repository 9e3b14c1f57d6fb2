"""Annotation sources for COCO keypoints and CrowdPose, and image decoding.

A source reads one COCO-format annotation file (via pycocotools) and an image folder and
gives, per image, what the official `CocoKeypoints` / `CrowdPoseKeypoints` compute before
augmentation: the joints array (`get_joints`) and the loss mask (`get_mask`), plus the real
image id from the annotation file (never parsed from the file name).

Error policy:
  * the annotation file is validated at construction (`annotations.py`): structural
    problems raise :class:`AnnotationError` naming the file and the record; what the
    official code tolerates is kept and counted in `stats`;
  * per-image problems (missing, undecodable or wrongly sized image) raise
    :class:`CorruptImageError` so the loader can skip, count and log the sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import pathlib
import warnings
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import coco as coco_api
from pycocotools import mask as mask_api

# AnnotationError is re-exported: callers of the sources catch it from here.
from higherhrnet_jax.data.annotations import AnnotationError, CheckedAnnotations

_log = logging.getLogger(__name__)

# The official reader ignores EXIF orientation: annotations refer to the stored pixels.
IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


class CorruptImageError(ValueError):
  """An image that cannot be used (undecodable, empty, wrong size). Loaders skip these."""


class MissingImageError(CorruptImageError, FileNotFoundError):
  """The image file does not exist (a :class:`CorruptImageError`, so one `except` skips both)."""


def decode_image(path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview | np.ndarray,
                 ) -> np.ndarray:
  """Decodes an image to `[H, W, 3]` uint8 RGB exactly as the official reader.

  `cv2.imread(IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION)` then BGR -> RGB: grayscale is
  replicated to 3 channels, alpha is dropped, CMYK JPEGs are converted by libjpeg, 16-bit
  PNGs are scaled to 8 bits, and EXIF rotation is not applied.

  Args:
    path_or_bytes: a file path or the encoded file content.

  Returns:
    `[H, W, 3]` uint8 RGB.

  Raises:
    MissingImageError: the path does not exist.
    CorruptImageError: the content cannot be decoded.
  """
  if isinstance(path_or_bytes, (str, os.PathLike)):
    name = os.fspath(path_or_bytes)
    try:
      with open(name, 'rb') as f:
        data = f.read()
    except FileNotFoundError as e:
      raise MissingImageError(f'image file not found: {name}') from e
    except OSError as e:
      raise CorruptImageError(f'cannot read image file {name}: {e}') from e
  else:
    name = '<bytes>'
    data = path_or_bytes
  buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
  if buf.dtype != np.uint8:
    raise CorruptImageError(f'encoded image {name} must be uint8 bytes, got {buf.dtype}')
  if buf.size == 0:
    raise CorruptImageError(f'image {name} is empty (0 bytes)')
  try:
    img = cv2.imdecode(buf, IMREAD_FLAGS)
  except cv2.error as e:
    raise CorruptImageError(f'cannot decode image {name}: {e}') from e
  if img is None or img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
    raise CorruptImageError(f'cannot decode image {name} ({buf.size} bytes)')
  if img.dtype != np.uint8:  # IMREAD_COLOR already gives 8 bits; keep the contract explicit.
    raise CorruptImageError(f'image {name} decoded to {img.dtype}, expected uint8')
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclasses.dataclass(frozen=True)
class ImageInfo:
  """One image record of the annotation file."""

  image_id: int
  file_name: str
  height: int
  width: int


class KeypointSource:
  """Per-image joints and loss masks from a COCO-format keypoint annotation file.

  Args:
    annotation_file: the JSON file (COCO `person_keypoints_*.json`, CrowdPose
      `crowdpose_*.json`).
    image_dir: folder holding the images named by `file_name`.
    num_joints: K; every used annotation must have `3 * K` keypoint numbers.
    train: training filter of the official code (keep images with at least one
      annotation of any kind); evaluation keeps every image.
    mask_from_segmentation: COCO masks crowd regions and people without keypoints from
      their segmentation; CrowdPose has no segmentation and the official mask is all True.
    scale_aware_sigma, base_size, base_sigma, int_sigma: the official
      `DATASET.SCALE_AWARE_SIGMA` option: joints get a 4th column, the person's sigma
      `max(bbox w, h) / base_size * base_sigma` (with `int_sigma`, `int(round(s + 0.5))`).
  """

  def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
               num_joints: int, *, train: bool = True, mask_from_segmentation: bool = True,
               scale_aware_sigma: bool = False, base_size: float = 256, base_sigma: float = 2.0,
               int_sigma: bool = False):
    self.annotation_file = pathlib.Path(annotation_file)
    self.image_dir = pathlib.Path(image_dir)
    self.num_joints = int(num_joints)
    self.train = train
    self.mask_from_segmentation = mask_from_segmentation
    self.scale_aware_sigma = scale_aware_sigma
    self.base_size = float(base_size)
    self.base_sigma = float(base_sigma)
    self.int_sigma = int_sigma
    checked = CheckedAnnotations(
        self.annotation_file, self.num_joints, mask_from_segmentation=mask_from_segmentation,
        scale_aware_sigma=scale_aware_sigma)
    self.stats = checked.stats
    self._kp_table, self._kp_row = checked.keypoints, checked.keypoint_row
    data = checked.data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
      self.coco = coco_api.COCO()
      self.coco.dataset = data
      self.coco.createIndex()
    ids = list(self.coco.imgs.keys())
    if train:
      ids = [i for i in ids if len(self.coco.getAnnIds(imgIds=i, iscrowd=None)) > 0]
    self.ids: list[int] = ids
    self._build_store()
    if self.stats['keypoints_outside_image']:
      _log.warning('%s: %d labelled keypoints lie outside their image (kept, as the official '
                   'code does; targets skip them)', self.annotation_file,
                   self.stats['keypoints_outside_image'])

  # ------------------------------------------------------------------ access

  def _build_store(self) -> None:
    """Compact per-image arrays, so a source pickles quickly into loader workers.

    Joints of all images live in one `[P, K, C]` array with offsets; only the
    segmentations that enter the mask are kept. The pycocotools index stays in the
    building process (`self.coco`) and is not pickled.
    """
    k = self.num_joints
    infos, offsets, rows, sigmas, segs = [], [0], [], [], []
    for image_id in self.ids:
      img = self.coco.imgs[image_id]
      infos.append(ImageInfo(int(img['id']), img['file_name'], int(img['height']),
                             int(img['width'])))
      anns = self.coco.imgToAnns.get(image_id, [])  # file order, as getAnnIds
      persons = [a for a in anns if a['iscrowd'] == 0 or a['num_keypoints'] > 0]
      rows.extend(self._kp_row[a['id']] for a in persons)
      if self.scale_aware_sigma:
        sigmas.extend(self._sigma(a['bbox']) for a in persons)
      offsets.append(offsets[-1] + len(persons))
      segs.append(tuple(a['segmentation'] for a in anns if self.mask_from_segmentation
                        and (a['iscrowd'] or a['num_keypoints'] == 0)))
    store = np.zeros((len(rows), k, 4 if self.scale_aware_sigma else 3))
    store[:, :, :3] = self._kp_table[np.asarray(rows, np.int64)]
    if self.scale_aware_sigma and rows:
      store[:, :, 3] = np.asarray(sigmas, np.float64)[:, None]
    del self._kp_table, self._kp_row
    self._infos: list[ImageInfo] = infos
    self._offsets = np.asarray(offsets, np.int64)
    self._joints = store
    self._segmentations: list[tuple] = segs

  def _sigma(self, box: Sequence[float]) -> float:
    sigma = max(box[2], box[3]) / self.base_size * self.base_sigma
    if self.int_sigma:
      sigma = int(np.round(sigma + 0.5))
    return sigma

  def __getstate__(self) -> dict:
    state = dict(self.__dict__)
    state['coco'] = None
    return state

  def __len__(self) -> int:
    return len(self.ids)

  def info(self, index: int) -> ImageInfo:
    return self._infos[index]

  def image_path(self, index: int) -> pathlib.Path:
    return self.image_dir / self._infos[index].file_name

  def annotations(self, index: int) -> list[dict]:
    """All annotation records of the image (any category, crowd included), in file order.

    Only in the process that built the source (the pycocotools index is not pickled).
    """
    if self.coco is None:
      raise RuntimeError('annotations() needs the pycocotools index, which is not pickled')
    return self.coco.loadAnns(self.coco.getAnnIds(imgIds=self.ids[index]))

  def joints(self, index: int) -> np.ndarray:
    """Official `get_joints`: `[N, K, 3]` float64 (x, y, v), `[N, K, 4]` with scale-aware sigma.

    People are the annotations with `iscrowd == 0 or num_keypoints > 0`, in file order
    (keypoint-less non-crowd people keep their, normally all-zero, keypoints).
    """
    return self._joints[self._offsets[index]:self._offsets[index + 1]].copy()

  def mask(self, index: int) -> np.ndarray:
    """Official `get_mask`: `[H, W]` bool, False on crowd regions and keypoint-less people."""
    info = self.info(index)
    h, w = info.height, info.width
    covered = np.zeros((h, w), bool)
    if not self.mask_from_segmentation:
      return ~covered
    with warnings.catch_warnings():
      # pycocotools' decode trips a NumPy 2 `__array__(copy=...)` deprecation; harmless.
      warnings.simplefilter('ignore', DeprecationWarning)
      for seg in self._segmentations[index]:
        covered |= self._decode_segmentation(seg, h, w)
    return ~covered

  @staticmethod
  def _decode_segmentation(seg: Any, h: int, w: int) -> np.ndarray:
    """Pixels covered by one (validated) segmentation, `[H, W]` bool."""
    if isinstance(seg, dict):
      rle = dict(seg)
      if isinstance(rle['counts'], str):  # compressed RLE as JSON text
        rle['counts'] = rle['counts'].encode('ascii')
      if not isinstance(rle['counts'], bytes):  # uncompressed (list of run lengths)
        rle = mask_api.frPyObjects(rle, h, w)
      return mask_api.decode(rle).astype(bool)
    covered = np.zeros((h, w), bool)
    for poly in seg:  # one polygon at a time: the official sums them, and m < 0.5 is an OR
      covered |= mask_api.decode(mask_api.frPyObjects([poly], h, w))[:, :, 0].astype(bool)
    return covered

  def load_image(self, index: int) -> np.ndarray:
    """Decodes the image (`[H, W, 3]` uint8 RGB); its size must match the annotation file."""
    path = self.image_path(index)
    img = decode_image(path)
    info = self.info(index)
    if img.shape[:2] != (info.height, info.width):
      raise CorruptImageError(f'{path}: decoded size {img.shape[1]}x{img.shape[0]} (w x h) != '
                              f'{info.width}x{info.height} in {self.annotation_file} '
                              f'(image id {info.image_id})')
    return img

  def train_example(self, index: int) -> dict[str, Any]:
    """Raw training inputs: 'image' uint8 RGB, 'joints', 'mask' bool, 'image_id'."""
    return {'image': self.load_image(index), 'joints': self.joints(index),
            'mask': self.mask(index), 'image_id': self.info(index).image_id}

  def eval_example(self, index: int) -> dict[str, Any]:
    """Evaluation input: the whole decoded image and its id, no augmentation."""
    return {'image': self.load_image(index), 'image_id': self.info(index).image_id}


def coco_source(annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
                num_joints: int = 17, **kwargs: Any) -> KeypointSource:
  """COCO keypoints (masks from crowd / keypoint-less segmentations)."""
  return KeypointSource(annotation_file, image_dir, num_joints, mask_from_segmentation=True,
                        **kwargs)


def crowdpose_source(annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
                     num_joints: int = 14, **kwargs: Any) -> KeypointSource:
  """CrowdPose (no segmentations: the official mask is all True)."""
  return KeypointSource(annotation_file, image_dir, num_joints, mask_from_segmentation=False,
                        **kwargs)


def split_paths(config: Any, split: str) -> tuple[pathlib.Path, pathlib.Path]:
  """Annotation file and image folder of a split, as laid out by the official code.

  COCO: `root/annotations/person_keypoints_{split}.json`, `root/images/{split}/`;
  CrowdPose: `root/json/crowdpose_{split}.json`, `root/images/`. The explicit
  `dataset.{train,test}_{annotations,images}` fields override these.
  """
  d = config.dataset
  root = pathlib.Path(d.root)
  is_train = split == d.train_split
  ann = d.train_annotations if is_train else d.test_annotations
  img = d.train_images if is_train else d.test_images
  if d.name == 'crowdpose':
    default_ann, default_img = root / 'json' / f'crowdpose_{split}.json', root / 'images'
  else:
    default_ann = root / 'annotations' / f'person_keypoints_{split}.json'
    default_img = root / 'images' / split
  return pathlib.Path(ann) if ann else default_ann, pathlib.Path(img) if img else default_img


def source_from_config(config: Any, train: bool = True,
                       split: str | None = None) -> KeypointSource:
  """The source of the configured dataset (`dataset.train_split` or `dataset.test_split`)."""
  d = config.dataset
  split = split or (d.train_split if train else d.test_split)
  ann, img = split_paths(config, split)
  kwargs = dict(train=train)
  if config.model.name == 'higher_hrnet':  # per-person sigmas only exist for its targets
    kwargs.update(scale_aware_sigma=bool(config.data.scale_aware_sigma),
                  base_size=config.data.base_size, base_sigma=config.data.base_sigma,
                  int_sigma=bool(config.data.int_sigma))
  make = crowdpose_source if d.name == 'crowdpose' else coco_source
  return make(ann, img, int(config.model.num_joints), **kwargs)


def image_ids(source: KeypointSource) -> Sequence[int]:
  """Real image ids in dataset order."""
  return list(source.ids)
