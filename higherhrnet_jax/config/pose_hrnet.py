"""HRNet top-down configs: the official COCO W32-256x192 base and its variants.

Fields follow the official experiment files (`experiments/coco/hrnet/*.yaml` merged over
`lib/config/default.py`); sizes are (height, width) as everywhere in this package, and the
heatmap size is not a field: it is the input size / 4, as the network produces it.
"""

from __future__ import annotations

import ml_collections

from higherhrnet_jax import keypoints
from higherhrnet_jax.config.common import (dataset_block, hrnet_stages, require, stage1,
                                           train_block, with_slim_backbone)

ConfigDict = ml_collections.ConfigDict

CODECS = ('official', 'dark', 'udp')


def base_config() -> ConfigDict:
  """COCO HRNet-W32 at 256x192, as `w32_256x192_adam_lr1e-3.yaml`.

  Global batch: the official runs used 4 GPUs x 32 crops = 128 (W48: 4 x 24 = 96); Adam
  1e-3, x0.1 at epochs 170 and 200, 210 epochs, no weight decay (the official Adam branch
  ignores `TRAIN.WD`).
  """
  c = ConfigDict()
  c.seed = 0
  c.dataset = dataset_block()  # name: 'coco' | 'mpii' (source reader and evaluator)
  c.model = ConfigDict(dict(
      name='pose_hrnet',
      num_joints=keypoints.COCO.num_joints,  # models.build sees only this block
      stem_channels=64,
      stage1=stage1(),
      final_conv_kernel=1,
      dtype='float32',  # compute dtype; parameters stay float32
      bn_momentum=0.1,
      bn_epsilon=1e-5,
      # '' (official random init), an ImageNet HRNet checkpoint for the backbone, or a whole
      # official top-down checkpoint.
      pretrained='',
      pretrained_layers=('*',),
      **hrnet_stages(32),
  ))
  c.data = ConfigDict(dict(
      input_size=(256, 192),  # (height, width) of the person crop; heatmaps are 1/4 of it
      sigma=2.0,  # every official 256x192 experiment uses 2, every 384x288 one 3
      # 'official' (int(x/4 + 0.5) targets, quarter-offset decoding, shifted flip test),
      # 'dark' (sub-pixel targets, Taylor decoding) or 'udp' (unbiased warp and coding).
      codec='official',
      scale_factor=0.35,
      rot_factor=45.0,
      flip=True,
      prob_half_body=0.3,
      num_joints_half_body=8,
      num_workers=4,
      prefetch_buffer_size=2,
      shuffle=True,
      source='auto',  # 'auto' | 'numpy' (annotation file + image folder)
  ))
  c.loss = ConfigDict(dict(use_target_weight=True))
  c.train = train_block(batch_size=128, reference_batch_size=128, end_epoch=210, lr_step=(170, 200))
  c.test = ConfigDict(dict(
      # Person boxes: a detection file in the official format (COCO results list, category
      # 1 kept, scores >= image_thre), or '' for the ground-truth boxes.
      person_boxes='',
      image_thre=0.0,
      flip_test=True,
      in_vis_thre=0.2,  # joints counted in the rescoring
      oks_thre=0.9,  # OKS-NMS threshold (per image)
      batch_size=32,  # crops per device and network call
  ))
  return c


def with_width(c: ConfigDict, width: int) -> ConfigDict:
  """Switches a config to HRNet-W{width}."""
  for name, stage in hrnet_stages(width).items():
    c.model[name] = stage
  return c


def with_slim_stages(c: ConfigDict, width: int) -> ConfigDict:
  """One module and one block per branch, widths (w, 2w, 4w, 8w): the fixtures' tiny model (w = 8)."""
  with_slim_backbone(c.model, width)
  return c


def with_input_size(c: ConfigDict, height: int, width: int) -> ConfigDict:
  """Crop size; sigma follows the official rule (3 for 384x288 and larger, else 2)."""
  c.data.input_size = (height, width)
  c.data.sigma = 3.0 if height >= 384 else 2.0
  return c


def mpii(c: ConfigDict) -> ConfigDict:
  """Switches a COCO config to MPII (16 joints, its splits and PCKh evaluator)."""
  c.dataset.name = 'mpii'
  c.dataset.root = 'data/mpii'
  c.dataset.train_split = 'train'
  c.dataset.test_split = 'valid'
  c.dataset.keypoints = keypoints.MPII.to_config()
  c.model.num_joints = keypoints.MPII.num_joints
  c.data.scale_factor = 0.25
  c.data.rot_factor = 30.0
  c.data.prob_half_body = -1.0  # official MPII experiments: no half-body crops
  return c


def validate(c: ConfigDict) -> None:
  """Top-down-specific cross-field checks (the shared ones are in `common`)."""
  h, w = c.data.input_size
  require(h > 0 and w > 0 and h % 32 == 0 and w % 32 == 0, 'data.input_size',
          f'(height, width) must be positive multiples of 32, got {tuple(c.data.input_size)}')
  require(c.data.sigma > 0, 'data.sigma', 'must be positive')
  require(c.data.codec in CODECS, 'data.codec', f'one of {CODECS}')
  require(c.data.source in ('auto', 'numpy'), 'data.source', "'auto' or 'numpy' (files)")
  require(c.dataset.name in ('coco', 'mpii'), 'dataset.name', "'coco' or 'mpii'")
  require(0.0 <= c.test.oks_thre <= 1.0, 'test.oks_thre', 'must be in [0, 1]')
  require(c.test.batch_size > 0, 'test.batch_size', 'must be positive')
