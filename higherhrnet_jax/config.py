"""Configuration: the base HigherHRNet config, loading with overrides, validation.

Every field of the official experiment files (``experiments/coco/higher_hrnet/*.yaml``
merged over the official defaults) that the code uses has one home here; official fields
with no effect here (``DATA_FORMAT``, ``GAMMA1/2``, ``IMAGES_PER_GPU``, ``MODEL_FILE``,
``LOG_PROGRESS``) are not accepted, so setting one is an error rather than a silent no-op. Experiment files in ``configs/``
start from :func:`base_config` and override a few fields, so they stay short data files.
"""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections

from higherhrnet_jax import keypoints

ConfigDict = ml_collections.ConfigDict


def stage(num_modules: int, num_blocks: Sequence[int], num_channels: Sequence[int]) -> ConfigDict:
  return ConfigDict(
      dict(
          num_modules=num_modules,
          num_branches=len(num_blocks),
          block='BASIC',
          num_blocks=tuple(num_blocks),
          num_channels=tuple(num_channels),
          fuse_method='SUM',
      )
  )


def hrnet_stages(width: int) -> dict[str, ConfigDict]:
  """The HRNet-W{width} stage layout of the paper (stage 2: 1 module, 3: 4, 4: 3)."""
  w = width
  return dict(
      stage2=stage(1, (4, 4), (w, 2 * w)),
      stage3=stage(4, (4, 4, 4), (w, 2 * w, 4 * w)),
      stage4=stage(3, (4, 4, 4, 4), (w, 2 * w, 4 * w, 8 * w)),
  )


def base_config() -> ConfigDict:
  """COCO HigherHRNet-W32 at 512x512, as `w32_512_adam_lr1e-3.yaml`.

  Global batch size: the official recipe used 8 GPUs x 12 images = 96; our
  `train.batch_size` is always the *global* batch. LR rule: `train.lr` is the LR at
  `train.reference_batch_size`; with `train.scale_lr_with_batch` it scales linearly
  with the global batch (lr * batch_size / reference_batch_size).
  """
  c = ConfigDict()
  c.seed = 0

  c.dataset = ConfigDict(
      dict(
          name='coco',  # 'coco' | 'crowdpose' (source reader and evaluator)
          root='data/coco',
          train_split='train2017',
          test_split='val2017',
          # Optional explicit paths (override the official layout under `root`).
          train_annotations='',
          train_images='',
          test_annotations='',
          test_images='',
          keypoints=keypoints.COCO.to_config(),
          # Generated scenes (`data/synthetic.py`): with num_train > 0, train.py writes
          # them (COCO layout) under `root`, or under <workdir>/data if root is '', unless
          # they are already there.
          synthetic=ConfigDict(dict(num_train=0, num_val=0, image_size=128, seed=0)),
      )
  )

  c.model = ConfigDict(
      dict(
          name='higher_hrnet',
          num_joints=17,
          tag_per_joint=True,
          stem_channels=64,  # stem width; STEM_INPLANES, fixed at 64 in the official model
          # layer1: Bottlenecks (official HRNet STAGE1: 4 blocks of width 64 -> 256 channels).
          stage1=ConfigDict(dict(num_modules=1, num_branches=1, block='BOTTLENECK',
                                 num_blocks=(4,), num_channels=(64,))),
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
          output_size=(128, 256),
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
          num_stages=2,
          ae_loss_type='exp',  # 'exp' | 'max'
          with_heatmaps_loss=(True, True),
          heatmaps_loss_factor=(1.0, 1.0),
          push_loss_factor=(0.001, 0.001),
          pull_loss_factor=(0.001, 0.001),
      )
  )

  c.train = ConfigDict(
      dict(
          batch_size=96,  # global, over all hosts and devices
          reference_batch_size=96,
          scale_lr_with_batch=False,
          begin_epoch=0,
          end_epoch=300,
          num_steps=0,  # > 0 overrides end_epoch (for short runs)
          optimizer='adam',
          lr=1e-3,
          lr_factor=0.1,
          lr_step=(200, 260),  # epochs
          warmup_epochs=0.0,
          momentum=0.9,
          nesterov=False,
          wd=1e-4,  # SGD only, as the official trainer (Adam ignores it there)
          grad_clip_norm=0.0,  # 0 disables
          grad_accum_steps=1,
          shard_params=False,  # FSDP-style sharding of params/optimizer over 'data'
          per_device_batch_norm=False,  # official per-GPU BN statistics
          log_every_steps=100,
          checkpoint_every_steps=1000,
          keep_checkpoints=3,
          eval_every_epochs=0,  # 0: only at the end; -1: never (train.py)
          eval_max_images=0,  # 0: the whole split
          render_predictions=4,
      )
  )

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
  c.model.stage2 = stage(1, (1, 1), (width, 2 * width))
  c.model.stage3 = stage(1, (1, 1, 1), (width, 2 * width, 4 * width))
  c.model.stage4 = stage(1, (1, 1, 1, 1), (width, 2 * width, 4 * width, 8 * width))
  c.model.deconv.num_channels = (width,)
  c.model.deconv.num_basic_blocks = 1
  return c


def with_input_size(c: ConfigDict, input_size: int) -> ConfigDict:
  c.data.input_size = input_size
  c.data.output_size = (input_size // 4, input_size // 2)
  return c


def crowdpose(c: ConfigDict) -> ConfigDict:
  """Switches a COCO config to CrowdPose (14 joints, its splits and evaluator)."""
  c.dataset.name = 'crowdpose'
  c.dataset.root = 'data/crowd_pose'
  c.dataset.train_split = 'trainval'
  c.dataset.test_split = 'test'
  c.dataset.keypoints = keypoints.CROWDPOSE.to_config()
  c.model.num_joints = 14
  return c


# ----------------------------------------------------------------------------- loading


class ConfigError(ValueError):
  """A config field has a bad value; the message names the field."""


def _parse_value(text: str, current: Any) -> Any:
  import ast

  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  return value


def apply_overrides(config: ConfigDict, overrides: Iterable[str]) -> ConfigDict:
  """Applies `a.b=value` strings (also accepts a leading `--config.`)."""
  for item in overrides:
    if '=' not in item:
      raise ConfigError(f'override {item!r} is not of the form key=value')
    key, text = item.split('=', 1)
    key = key.removeprefix('--').removeprefix('config.')
    node = config
    parts = key.split('.')
    for i, part in enumerate(parts):
      if not isinstance(node, ConfigDict) or part not in node:
        raise ConfigError(f'unknown config key {".".join(parts[: i + 1])!r} (in override {item!r})')
      if i < len(parts) - 1:
        node = node[part]
    current = node[parts[-1]]
    with config.unlocked():
      node[parts[-1]] = _parse_value(text, current)
  return config


def load_config(path: str | pathlib.Path, overrides: Iterable[str] = ()) -> ConfigDict:
  """Loads `get_config()` from a config file, applies overrides, validates and locks it.

  Args:
    path: a Python file under `configs/` defining `get_config()`.
    overrides: `key=value` strings, e.g. `('train.batch_size=64',)`.

  Returns:
    The validated, locked config.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'config file not found: {path}')
  spec = importlib.util.spec_from_file_location(f'_hhr_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{path} defines no get_config()')
  config = module.get_config()
  config.lock()
  apply_overrides(config, overrides)
  validate(config)
  return config


def _require(cond: bool, field: str, message: str) -> None:
  if not cond:
    raise ConfigError(f'config.{field}: {message}')


def validate(c: ConfigDict) -> ConfigDict:
  """Checks cross-field consistency once at start-up; errors name the field."""
  m = c.model
  spec = keypoints.spec_from_config(c.dataset.keypoints)
  _require(m.num_joints == spec.num_joints, 'model.num_joints',
           f'{m.num_joints} != dataset.keypoints ({spec.num_joints} joints)')
  _require(m.dtype in ('float32', 'bfloat16', 'float16'), 'model.dtype', f'unknown dtype {m.dtype!r}')
  s1 = m.stage1
  _require(s1.block == 'BOTTLENECK' and len(s1.num_blocks) == len(s1.num_channels) == 1,
           'model.stage1', 'layer1 is one branch of BOTTLENECK blocks')
  _require(s1.num_blocks[0] >= 1, 'model.stage1.num_blocks', 'needs at least one block')
  prev = 1
  for name in ('stage2', 'stage3', 'stage4'):
    s = m[name]
    _require(s.block == 'BASIC', f'model.{name}.block', 'only BASIC blocks occur in HigherHRNet')
    _require(s.fuse_method == 'SUM', f'model.{name}.fuse_method', 'only SUM is supported')
    _require(len(s.num_blocks) == s.num_branches == len(s.num_channels), f'model.{name}',
             'num_branches, num_blocks and num_channels disagree')
    _require(s.num_branches == prev + 1, f'model.{name}.num_branches', f'expected {prev + 1}')
    prev = s.num_branches
  d = m.deconv
  _require(d.num_deconvs == len(d.num_channels) == len(d.kernel_size) == len(d.cat_output),
           'model.deconv', 'num_deconvs, num_channels, kernel_size and cat_output disagree')
  for k in d.kernel_size:
    _require(k == 4, 'model.deconv.kernel_size', 'only kernel 4 (stride 2, padding 1) is supported')
  n_out = d.num_deconvs + 1
  for field in ('with_ae_loss',):
    _require(len(m[field]) == n_out, f'model.{field}', f'needs {n_out} entries')
  for field in ('with_heatmaps_loss', 'heatmaps_loss_factor', 'push_loss_factor', 'pull_loss_factor'):
    _require(len(c.loss[field]) == n_out, f'loss.{field}', f'needs {n_out} entries')
  _require(c.loss.num_stages == n_out, 'loss.num_stages', f'must be {n_out}')
  _require(c.loss.ae_loss_type in ('exp', 'max'), 'loss.ae_loss_type', "must be 'exp' or 'max'")
  _require(c.data.input_size % 32 == 0, 'data.input_size', 'must be a multiple of 32')
  expected = tuple(c.data.input_size // 4 * 2**i for i in range(n_out))
  _require(tuple(c.data.output_size) == expected, 'data.output_size', f'must be {expected}')
  _require(c.data.scale_type in ('short', 'long'), 'data.scale_type', "must be 'short' or 'long'")
  _require(c.train.batch_size > 0, 'train.batch_size', 'must be positive')
  _require(c.train.grad_accum_steps >= 1, 'train.grad_accum_steps', 'must be >= 1')
  _require(c.train.optimizer in ('adam', 'adamw', 'sgd'), 'train.optimizer', 'adam | adamw | sgd')
  _require(len(c.test.scale_factor) >= 1, 'test.scale_factor', 'needs at least one scale')
  _require(len(c.test.scale_factor) == 1 or 1.0 in tuple(c.test.scale_factor), 'test.scale_factor',
           'several scales must include 1 (tags are taken at scale 1, as in the official test loop)')
  _require(c.dataset.name in ('coco', 'crowdpose'), 'dataset.name', "'coco' or 'crowdpose'")
  return c
