"""Reads a `PoseKeypoints` TFDS build as an example source of the grain pipeline."""

from __future__ import annotations

import pathlib
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds

from higherhrnet_jax.data import coco
from higherhrnet_jax.data.tfds import builder as builder_lib  # registers the builder


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


class TfdsSource:
  """Per-image examples of an ArrayRecord TFDS split, with the file source's interface.

  The training filter was applied when the split was built (`SplitFiles.train`), so the
  records are used as they are. Record order is TFDS's (by hashed key), not the annotation
  file's; image ids are the real ones.

  Args:
    data_source: `builder.as_data_source()[split]` or `tfds.data_source(...)`.
    scale_aware_sigma, base_size, base_sigma, int_sigma: as in `coco.KeypointSource`.
  """

  def __init__(self, data_source: Any, *, scale_aware_sigma: bool = False, base_size: float = 256,
               base_sigma: float = 2.0, int_sigma: bool = False):
    self.data_source = data_source
    self.scale_aware_sigma = scale_aware_sigma
    self.base_size = float(base_size)
    self.base_sigma = float(base_sigma)
    self.int_sigma = int_sigma

  @classmethod
  def from_config(cls, config: Any, split: str, train: bool = True) -> TfdsSource:
    """Opens the build of `config.data.tfds_data_dir`.

    The directory is either a TFDS data dir holding `pose_keypoints/{dataset.name}`, or one
    prepared dataset version itself (the folder with `dataset_info.json`, e.g. a custom
    builder config such as a differently laid out manual dir).
    """
    del train  # applied at build time
    data_dir = config.data.tfds_data_dir
    if not data_dir:
      raise ValueError("config.data.tfds_data_dir: needed for config.data.source = 'tfds'")
    name = f'{builder_lib.PoseKeypoints.name}/{config.dataset.name}'
    try:
      if (pathlib.Path(data_dir) / 'dataset_info.json').is_file():
        source = tfds.builder_from_directory(data_dir).as_data_source(split=split)
      else:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - tfds raises several kinds here
      raise FileNotFoundError(f'no TFDS build {name!r} split {split!r} in {data_dir} '
                              f'(build it with higherhrnet_jax.data.tfds.builder.build): {e}'
                              ) from e
    d = config.data
    return cls(source, scale_aware_sigma=bool(d.scale_aware_sigma), base_size=d.base_size,
               base_sigma=d.base_sigma, int_sigma=bool(d.int_sigma))

  def __len__(self) -> int:
    return len(self.data_source)

  def _image(self, rec: dict) -> np.ndarray:
    name = f"{_text(rec['file_name'])} (image id {int(rec['image_id'])})"
    try:
      img = coco.decode_image(rec['image'])
    except coco.CorruptImageError as e:
      raise coco.CorruptImageError(f'{name}: {e}') from e
    if img.shape[:2] != (int(rec['height']), int(rec['width'])):
      raise coco.CorruptImageError(f'{name}: decoded size {img.shape[1]}x{img.shape[0]} != '
                                   f"{int(rec['width'])}x{int(rec['height'])}")
    return img

  def _sigma(self, size: np.ndarray) -> np.ndarray:
    sigma = size / self.base_size * self.base_sigma  # as coco.KeypointSource
    if self.int_sigma:
      sigma = np.round(sigma + 0.5).astype(np.int64).astype(np.float64)
    return sigma

  def train_example(self, index: int) -> dict[str, Any]:
    rec = self.data_source[index]
    image = self._image(rec)
    n = int(rec['num_people'])
    joints = np.frombuffer(rec['joints'], '<f8').reshape(n, -1, 3).astype(np.float64)
    if self.scale_aware_sigma:
      sigma = self._sigma(np.frombuffer(rec['person_size'], '<f8').astype(np.float64))
      joints = np.concatenate([joints, np.broadcast_to(sigma[:, None, None],
                                                       joints.shape[:2] + (1,))], axis=-1)
    mask = cv2.imdecode(np.frombuffer(rec['mask'], np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.shape != image.shape[:2]:
      raise coco.CorruptImageError(
          f"{_text(rec['file_name'])}: stored mask unreadable or mis-sized")
    return {'image': image, 'joints': joints, 'mask': mask > 0,
            'image_id': int(rec['image_id'])}

  def eval_example(self, index: int) -> dict[str, Any]:
    rec = self.data_source[index]
    return {'image': self._image(rec), 'image_id': int(rec['image_id'])}

  def image_ids(self) -> list[int]:
    return [int(self.data_source[i]['image_id']) for i in range(len(self))]
