"""HigherHRNet (bottom-up) configs: the official COCO W32-512 base and its variants.

Every field of the official experiment files (``experiments/coco/higher_hrnet/*.yaml``
merged over the official defaults) that the code uses has one home here; official fields
with no effect here (``DATA_FORMAT``, ``GAMMA1/2``, ``IMAGES_PER_GPU``, ``MODEL_FILE``,
``LOG_PROGRESS``) are not accepted, so setting one is an error rather than a silent no-op.
Experiment files in ``configs/`` start from :func:`base_config` and override a few fields.
Values that follow from others are computed, never stored: the heatmap resolutions
(official ``DATASET.OUTPUT_SIZE``) by :func:`output_sizes` and the number of output stages
(``LOSS.NUM_STAGES``) by :func:`num_stages`.
"""

from __future__ import annotations

import ml_collections

from higherhrnet_jax import keypoints
from higherhrnet_jax.config.common import (dataset_block, hrnet_stages, require, stage1,
                                           train_block, with_slim_backbone)

ConfigDict = ml_collections.ConfigDict


def base_config() -> ConfigDict:
  """COCO HigherHRNet-W32 at 512x512, as `w32_512_adam_lr1e-3.yaml`.

  Global batch size: the official recipe used 8 GPUs x 12 images = 96; our
  `train.batch_size` is always the *global* batch. LR rule: `train.lr` is the LR at
  `train.reference_batch_size`; with `train.scale_lr_with_batch` it scales linearly
  with the global batch (lr * batch_size / reference_batch_size).
  """
  c = ConfigDict()
  c.seed = 0

  # dataset.name: 'coco' | 'crowdpose' (source reader and evaluator). Generated scenes
  # (`data/synthetic.py`): with num_train > 0, train.py writes them (COCO layout) under
  # `root`, or under <workdir>/data if root is '', unless they are already there.
  c.dataset = dataset_block(
      synthetic=ConfigDict(dict(num_train=0, num_val=0, image_size=128, seed=0)))

  c.model = ConfigDict(
      dict(
          name='higher_hrnet',
          num_joints=keypoints.COCO.num_joints,  # models.build sees only this block
          tag_per_joint=True,
          stem_channels=64,  # stem width; STEM_INPLANES, fixed at 64 in the official model
          # layer1: Bottlenecks (official HRNet STAGE1: 4 blocks of width 64 -> 256 channels).
          stage1=stage1(),
          final_conv_kernel=1,
          # LOSS.WITH_AE_LOSS: also decides the output channels of each stage.
          with_ae_loss=(True, False),
          deconv=ConfigDict(
              dict(
                  num_deconvs=1,
                  num_channels=(32,),
                  kernel_size=(4,),
                  num_basic_blocks=4,
                  cat_output=(True,),
              )
          ),
          dtype='float32',  # compute dtype; parameters stay float32
          bn_momentum=0.1,  # PyTorch convention: new = (1 - m) * old + m * batch
          bn_epsilon=1e-5,
          # Initialisation: '' (official random init), an ImageNet HRNet classification
          # checkpoint for the backbone, or a full official HigherHRNet checkpoint.
          pretrained='',
          pretrained_layers=('*',),
          **hrnet_stages(32),
      )
  )

  c.data = ConfigDict(
      dict(
          input_size=512,
          max_num_people=30,
          sigma=2.0,
          scale_aware_sigma=False,
          base_size=256,
          base_sigma=2.0,
          int_sigma=False,
          flip=0.5,
          max_rotation=30.0,
          min_scale=0.75,
          max_scale=1.5,
          scale_type='short',
          max_translate=40,
          with_center=False,
          # 'official' (Gaussians on truncated pixels, quarter-pixel adjust) or 'dark'
          # (sub-pixel Gaussians, DARK's Taylor step at every decoded joint).
          codec='official',
          num_workers=4,
          prefetch_buffer_size=2,
          shuffle=True,
          # 'auto' | 'numpy' | 'tfds' | 'synthetic' (generated batches, smoke runs only).
          source='auto',
          tfds_data_dir='',
      )
  )

  c.loss = ConfigDict(
      dict(
          ae_loss_type='exp',  # 'exp' | 'max'
          with_heatmaps_loss=(True, True),
          heatmaps_loss_factor=(1.0, 1.0),
          push_loss_factor=(0.001, 0.001),
          pull_loss_factor=(0.001, 0.001),
      )
  )

  c.train = train_block()

  c.test = ConfigDict(
      dict(
          flip_test=True,
          adjust=True,
          refine=True,
          scale_factor=(1.0,),
          detection_threshold=0.1,
          tag_threshold=1.0,
          use_detection_val=True,
          ignore_too_much=False,
          with_heatmaps=(True, True),
          with_ae=(True, False),
          project2image=True,
          nms_kernel=5,
          nms_padding=2,
          oks_nms=False,
          rescore=False,
          batch_size=1,
          shape_bucket=64,  # inputs padded to multiples of this to limit recompiles
          # CPU evaluation: compile the weights into the network program as constants (new
          # weights then recompile). CPU programs use Eigen's convolutions either way; with
          # them the constants no longer pay (W32-512 forward 541 against 547 ms).
          weights_in_program=False,
          # Where NMS, top-k and refine's scans run: 'device' keeps the full-resolution maps
          # where the network computed them and sends only candidates and per-person results
          # to the host; 'host' copies the maps and runs everything there with numba (faster
          # when the device is the CPU). 'auto': host on a CPU backend, else device.
          grouping_on='auto',
          # data.codec 'dark': the Gaussian blur before DARK's Taylor step (odd; 1: none).
          # Maps aggregated at image resolution are smooth already; on the quickstart no blur
          # gave AP 0.554, kernels 3 / 5 / 9 0.552 / 0.551 / 0.547.
          dark_blur_kernel=1,
      )
  )
  return c


def with_width(c: ConfigDict, width: int) -> ConfigDict:
  """Switches a config to HRNet-W{width} (stages and deconv channels)."""
  for name, stage in hrnet_stages(width).items():
    c.model[name] = stage
  c.model.deconv.num_channels = (width,)
  return c


def with_slim_stages(c: ConfigDict, width: int) -> ConfigDict:
  """One module and one block per branch, branch widths (w, 2w, 4w, 8w), one deconv block.

  The layout of the fixtures' tiny model (w = 8) and of the quickstart (w = 16).
  """
  with_slim_backbone(c.model, width)
  c.model.deconv.num_channels = (width,)
  c.model.deconv.num_basic_blocks = 1
  return c


def with_input_size(c: ConfigDict, input_size: int) -> ConfigDict:
  c.data.input_size = input_size
  return c


def num_stages(c: ConfigDict) -> int:
  """Output stages: the backbone's 1/4 head plus one per deconv (official LOSS.NUM_STAGES)."""
  return int(c.model.deconv.num_deconvs) + 1


def output_sizes(c: ConfigDict) -> tuple[int, ...]:
  """Heatmap resolution of every stage: input/4, doubled by each deconv (DATASET.OUTPUT_SIZE)."""
  return tuple(int(c.data.input_size) // 4 * 2**s for s in range(num_stages(c)))


def crowdpose(c: ConfigDict) -> ConfigDict:
  """Switches a COCO config to CrowdPose (14 joints, its splits and evaluator)."""
  c.dataset.name = 'crowdpose'
  c.dataset.root = 'data/crowd_pose'
  c.dataset.train_split = 'trainval'
  c.dataset.test_split = 'test'
  c.dataset.keypoints = keypoints.CROWDPOSE.to_config()
  c.model.num_joints = keypoints.CROWDPOSE.num_joints
  return c


def validate(c: ConfigDict) -> None:
  """HigherHRNet-specific cross-field checks (the shared ones are in `common`)."""
  m = c.model
  d = m.deconv
  require(d.num_deconvs == len(d.num_channels) == len(d.kernel_size) == len(d.cat_output),
           'model.deconv', 'num_deconvs, num_channels, kernel_size and cat_output disagree')
  for k in d.kernel_size:
    require(k == 4, 'model.deconv.kernel_size', 'only kernel 4 (stride 2, padding 1) is supported')
  n_out = num_stages(c)
  for field in ('with_ae_loss',):
    require(len(m[field]) == n_out, f'model.{field}', f'needs {n_out} entries')
  for field in ('with_heatmaps_loss', 'heatmaps_loss_factor', 'push_loss_factor', 'pull_loss_factor'):
    require(len(c.loss[field]) == n_out, f'loss.{field}', f'needs {n_out} entries')
  require(c.loss.ae_loss_type in ('exp', 'max'), 'loss.ae_loss_type', "must be 'exp' or 'max'")
  require(c.data.input_size % 32 == 0, 'data.input_size', 'must be a multiple of 32')
  require(c.data.scale_type in ('short', 'long'), 'data.scale_type', "must be 'short' or 'long'")
  require(len(c.test.scale_factor) >= 1, 'test.scale_factor', 'needs at least one scale')
  require(len(c.test.scale_factor) == 1 or 1.0 in tuple(c.test.scale_factor), 'test.scale_factor',
           'several scales must include 1 (tags are taken at scale 1, as in the official test loop)')
  require(c.dataset.name in ('coco', 'crowdpose'), 'dataset.name', "'coco' or 'crowdpose'")
  require(c.test.grouping_on in ('auto', 'host', 'device'), 'test.grouping_on',
          "'auto', 'host' or 'device'")
  require(c.data.codec in ('official', 'dark'), 'data.codec', "'official' or 'dark'")
  require(int(c.test.dark_blur_kernel) >= 1 and int(c.test.dark_blur_kernel) % 2 == 1,
          'test.dark_blur_kernel', 'must be odd and positive')
