"""Config pieces both model families share: the HRNet stage layout and the training block."""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from higherhrnet_jax import keypoints

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
  """A config field has a bad value; the message names the field."""


def require(cond: bool, field: str, message: str) -> None:
  if not cond:
    raise ConfigError(f'config.{field}: {message}')


def dataset_block(name: str = 'coco', root: str = 'data/coco', train_split: str = 'train2017',
                  test_split: str = 'val2017',
                  keypoint_spec: keypoints.KeypointSpec = keypoints.COCO, **extra) -> ConfigDict:
  """The `dataset` block of both families: where the split files are and whose keypoints."""
  return ConfigDict(dict(
      name=name,
      root=root,
      train_split=train_split,
      test_split=test_split,
      # Optional explicit paths (override the official layout under `root`).
      train_annotations='',
      train_images='',
      test_annotations='',
      test_images='',
      keypoints=keypoint_spec.to_config(),
      **extra,
  ))


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


def stage1() -> ConfigDict:
  """layer1: 4 Bottlenecks of width 64 (256 output channels), official STAGE1 of every model."""
  return ConfigDict(dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(4,),
                         num_channels=(64,)))


def with_slim_backbone(model: ConfigDict, width: int) -> None:
  """One module and one block per branch, branch widths (w, 2w, 4w, 8w) (the tiny models)."""
  model.stage2 = stage(1, (1, 1), (width, 2 * width))
  model.stage3 = stage(1, (1, 1, 1), (width, 2 * width, 4 * width))
  model.stage4 = stage(1, (1, 1, 1, 1), (width, 2 * width, 4 * width, 8 * width))


def train_block(**overrides) -> ConfigDict:
  """`train.*`: optimizer, schedule, batch, checkpoints, evaluation cadence (shared trainer).

  `batch_size` is always the *global* batch (all hosts and devices). LR rule: `lr` is the
  LR at `reference_batch_size`; with `scale_lr_with_batch` it scales linearly with the
  global batch (lr * batch_size / reference_batch_size). `overrides` set a family's
  official values (e.g. the schedule).
  """
  fields = dict(
      batch_size=96,
      reference_batch_size=96,
      scale_lr_with_batch=False,
      begin_epoch=0,
      end_epoch=300,
      num_steps=0,  # > 0 overrides end_epoch (for short runs)
      optimizer='adam',
      lr=1e-3,
      lr_schedule='step',  # 'step': x lr_factor at each lr_step epoch; 'cosine': to 0 at the end
      lr_factor=0.1,
      lr_step=(200, 260),  # epochs
      warmup_epochs=0.0,
      momentum=0.9,
      nesterov=False,
      wd=1e-4,  # SGD only, as the official trainers (their Adam ignores it)
      grad_clip_norm=0.0,  # 0 disables
      grad_accum_steps=1,
      # > 0: keep an exponential moving average of the weights (decay per update, ramped
      # from 0.1 as (1 + n) / (10 + n)); evaluation, the best checkpoint and export use it.
      ema_decay=0.0,
      shard_params=False,  # FSDP-style sharding of params/optimizer over 'data'
      per_device_batch_norm=False,  # official per-GPU BN statistics
      log_every_steps=100,
      checkpoint_every_steps=1000,
      keep_checkpoints=3,
      eval_every_epochs=0,  # 0: only at the end; -1: never (train.py)
      eval_max_images=0,  # 0: the whole split
      render_predictions=4,
  )
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ConfigError(f'config.train.{unknown[0]}: no such field')
  fields.update(overrides)
  return ConfigDict(fields)


def validate_common(c: ConfigDict) -> None:
  """Checks of the shared blocks: backbone layout, numerics and the training block."""
  m = c.model
  require(m.dtype in ('float32', 'bfloat16', 'float16'), 'model.dtype', f'unknown dtype {m.dtype!r}')
  s1 = m.stage1
  require(s1.block == 'BOTTLENECK' and len(s1.num_blocks) == len(s1.num_channels) == 1,
          'model.stage1', 'layer1 is one branch of BOTTLENECK blocks')
  require(s1.num_blocks[0] >= 1, 'model.stage1.num_blocks', 'needs at least one block')
  prev = 1
  for name in ('stage2', 'stage3', 'stage4'):
    s = m[name]
    require(s.block == 'BASIC', f'model.{name}.block', 'only BASIC blocks occur in HRNet pose models')
    require(s.fuse_method == 'SUM', f'model.{name}.fuse_method', 'only SUM is supported')
    require(len(s.num_blocks) == s.num_branches == len(s.num_channels), f'model.{name}',
            'num_branches, num_blocks and num_channels disagree')
    require(s.num_branches == prev + 1, f'model.{name}.num_branches', f'expected {prev + 1}')
    prev = s.num_branches
  require(m.final_conv_kernel in (1, 3), 'model.final_conv_kernel', 'must be 1 or 3')
  require(c.train.batch_size > 0, 'train.batch_size', 'must be positive')
  require(c.train.grad_accum_steps >= 1, 'train.grad_accum_steps', 'must be >= 1')
  require(c.train.optimizer in ('adam', 'adamw', 'sgd'), 'train.optimizer', 'adam | adamw | sgd')
  require(c.train.lr_schedule in ('step', 'cosine'), 'train.lr_schedule',
          f"'step' or 'cosine', got {c.train.lr_schedule!r}")
  require(0.0 <= c.train.ema_decay < 1.0, 'train.ema_decay',
          f'must be in [0, 1) (0 disables the average), got {c.train.ema_decay}')
