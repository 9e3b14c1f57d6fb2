"""TFDS builder for COCO keypoints and CrowdPose from a manual download directory.

Each example holds what one training or evaluation sample needs, already reduced by the
annotation source (`higherhrnet_jax.data.coco`), so reading needs neither pycocotools nor
TensorFlow:

  image      the original encoded file bytes (decoded by `coco.decode_image`, exactly as
             the file source does; a corrupt file is skipped at training time the same way)
  image_id   the real id from the annotation file
  height, width, file_name
  joints     [N, K, 3] float64, the official `get_joints`, as raw little-endian bytes
  person_size [N] float64 bytes, max(bbox w, h) per person (for the scale-aware sigma option)
  mask       PNG bytes of the official `get_mask` (255 where the loss counts)

Float arrays are stored as bytes because TFDS serializes float features as float32, which
would round the coordinates (and the parity with the file source). Images are stored as
bytes, not as `tfds.features.Image`, because encoding or decoding an
Image feature from NumPy needs TensorFlow. Files are ArrayRecord, which
`builder.as_data_source()` / `tfds.data_source` read with random access.

Build (manual dir in the official layout):

  builder = PoseKeypoints(config='coco', data_dir=OUT, file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir='path/to/coco'))
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import cv2
import numpy as np
import tensorflow_datasets as tfds

from higherhrnet_jax.data import coco

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SplitFiles:
  """One split of a manual directory (paths relative to it).

  Attributes:
    name: split name (e.g. 'train2017').
    annotations: the annotation JSON.
    images: the image folder.
    train: apply the official training filter (images with at least one annotation).
  """

  name: str
  annotations: str
  images: str
  train: bool


@dataclasses.dataclass(eq=False)
class KeypointsConfig(tfds.core.BuilderConfig):
  """Which dataset ('coco' or 'crowdpose') and which splits to read from the manual dir."""

  dataset: str = 'coco'
  splits: tuple[SplitFiles, ...] = ()


def _coco_splits() -> tuple[SplitFiles, ...]:
  return tuple(SplitFiles(s, f'annotations/person_keypoints_{s}.json', f'images/{s}',
                          s == 'train2017')
               for s in ('train2017', 'val2017'))


def _crowdpose_splits() -> tuple[SplitFiles, ...]:
  return tuple(SplitFiles(s, f'json/crowdpose_{s}.json', 'images', s in ('train', 'trainval'))
               for s in ('train', 'val', 'trainval', 'test'))


NUM_JOINTS = {'coco': 17, 'crowdpose': 14}


class PoseKeypoints(tfds.core.GeneratorBasedBuilder):
  """COCO keypoints / CrowdPose as per-image examples for bottom-up pose estimation."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
      KeypointsConfig(name='coco', description='COCO 2017 person keypoints', dataset='coco',
                      splits=_coco_splits()),
      KeypointsConfig(name='crowdpose', description='CrowdPose', dataset='crowdpose',
                      splits=_crowdpose_splits()),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  COCO: the manual dir holds annotations/person_keypoints_{train2017,val2017}.json and
  images/{train2017,val2017}/. CrowdPose: json/crowdpose_{train,val,trainval,test}.json and
  images/. Splits whose annotation file is absent are not built.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Person keypoints with official joints arrays and loss masks.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(), dtype=np.object_),
            'image_id': tfds.features.Scalar(dtype=np.int64),
            'file_name': tfds.features.Text(),
            'height': tfds.features.Scalar(dtype=np.int32),
            'width': tfds.features.Scalar(dtype=np.int32),
            'num_people': tfds.features.Scalar(dtype=np.int32),
            'joints': tfds.features.Tensor(shape=(), dtype=np.object_),  # [N, K, 3] <f8
            'person_size': tfds.features.Tensor(shape=(), dtype=np.object_),  # [N] <f8
            'mask': tfds.features.Tensor(shape=(), dtype=np.object_),
        }),
        homepage='https://cocodataset.org/#keypoints-2017',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    present = [s for s in self.builder_config.splits if (root / s.annotations).is_file()]
    if not present:
      wanted = ', '.join(s.annotations for s in self.builder_config.splits)
      raise FileNotFoundError(f'no annotation file of {self.builder_config.name!r} under {root} '
                              f'(looked for {wanted})')
    return {s.name: self._generate_examples(root, s) for s in present}

  def _generate_examples(self, root: pathlib.Path, split: SplitFiles):
    make = coco.crowdpose_source if self.builder_config.dataset == 'crowdpose' else coco.coco_source
    # Unit base size and sigma: the 4th joints column is then max(bbox w, h), from which the
    # reader computes the scale-aware sigma for any base_size / base_sigma.
    source = make(root / split.annotations, root / split.images, train=split.train,
                  scale_aware_sigma=True, base_size=1.0, base_sigma=1.0, int_sigma=False)
    missing = 0
    for index in range(len(source)):
      info = source.info(index)
      path = source.image_path(index)
      try:
        data = path.read_bytes()
      except OSError as e:
        missing += 1
        _log.warning('%s: image %s (id %d) not stored: %s', split.name, path, info.image_id, e)
        continue
      joints = source.joints(index)
      ok, mask_png = cv2.imencode('.png', source.mask(index).astype(np.uint8) * 255)
      if not ok:
        raise RuntimeError(f'could not encode the mask of image id {info.image_id}')
      yield info.image_id, {
          'image': data, 'image_id': info.image_id, 'file_name': info.file_name,
          'height': info.height, 'width': info.width,
          'num_people': len(joints),
          'joints': np.ascontiguousarray(joints[:, :, :3], '<f8').tobytes(),
          'person_size': np.ascontiguousarray(joints[:, 0, 3], '<f8').tobytes(),
          'mask': mask_png.tobytes(),
      }
    if missing:
      _log.warning('%s: %d images missing from %s were not stored', split.name, missing,
                   root / split.images)


def build(manual_dir: str | pathlib.Path, data_dir: str | pathlib.Path,
          config: str | KeypointsConfig = 'coco') -> PoseKeypoints:
  """Builds (once) the ArrayRecord files under `data_dir` and returns the builder."""
  builder = PoseKeypoints(config=config, data_dir=str(data_dir), file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder
