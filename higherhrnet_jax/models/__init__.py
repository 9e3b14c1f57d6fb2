"""HigherHRNet models: `build(config.model)` returns the Flax module.

The module is applied as
`model.apply(variables, images [B, H, W, 3], train=False) -> [out0, out1]`; with
`train=True, mutable=['batch_stats']` it returns `(outputs, {'batch_stats': ...})`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from higherhrnet_jax.models.higher_hrnet import (
    INPUT_MULTIPLE,
    DeconvSpec,
    HigherHead,
    HigherHRNet,
    check_input_shape,
    init_variables,
)
from higherhrnet_jax.models.hrnet import FuseLayer, HighResolutionModule, HRNet, StageSpec, Transition
from higherhrnet_jax.models.layers import BasicBlock, BatchNorm, Bottleneck, ConvTranspose4x4

__all__ = [
    'BasicBlock', 'BatchNorm', 'Bottleneck', 'ConvTranspose4x4', 'DeconvSpec', 'FuseLayer',
    'HRNet', 'HigherHRNet', 'HigherHead', 'HighResolutionModule', 'INPUT_MULTIPLE', 'StageSpec',
    'Transition', 'build', 'check_input_shape', 'init_variables', 'output_channels',
]

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def output_channels(model_config: Mapping[str, Any]) -> tuple[int, ...]:
  """Channels of each prediction: K heatmaps, plus K tags (1 if not per joint) with AE loss."""
  k = model_config['num_joints']
  dim_tag = k if model_config['tag_per_joint'] else 1
  return tuple(k + dim_tag if ae else k for ae in model_config['with_ae_loss'])


def build(model_config: Mapping[str, Any], *, axis_name: str | None = None) -> HigherHRNet:
  """Builds the HigherHRNet module described by `config.model`.

  Args:
    model_config: the `model` block of a config (stages, deconv, num_joints, dtype, ...).
    axis_name: optional mapped axis name over which train-mode BatchNorm statistics are
      averaged (global BatchNorm); `None` keeps per-device statistics.

  Returns:
    An unbound `HigherHRNet` module.
  """
  m = model_config
  stages = tuple(
      StageSpec(int(m[name]['num_modules']), tuple(int(b) for b in m[name]['num_blocks']),
                tuple(int(c) for c in m[name]['num_channels']))
      for name in ('stage2', 'stage3', 'stage4'))
  for name, stage in zip(('stage2', 'stage3', 'stage4'), stages):
    if len(stage.num_blocks) != stage.num_branches:
      raise ValueError(f'model.{name}: num_blocks {stage.num_blocks} and num_channels '
                       f'{stage.num_channels} disagree')
    if m[name].get('block', 'BASIC') != 'BASIC':
      raise ValueError(f'model.{name}.block: only BASIC is supported, got {m[name]["block"]!r}')
  d = m['deconv']
  deconvs = tuple(
      DeconvSpec(int(c), int(d['num_basic_blocks']), bool(cat))
      for c, cat in zip(d['num_channels'], d['cat_output']))
  for k in d['kernel_size']:
    if k != 4:
      raise ValueError(f'model.deconv.kernel_size: only 4 is supported, got {k}')
  outs = output_channels(m)
  if len(outs) != len(deconvs) + 1:
    raise ValueError(f'model.with_ae_loss needs {len(deconvs) + 1} entries, got {len(outs)}')
  dtype = m.get('dtype', 'float32')
  if dtype not in _DTYPES:
    raise ValueError(f'model.dtype: unknown dtype {dtype!r} (one of {sorted(_DTYPES)})')
  return HigherHRNet(
      stages=stages,
      output_channels=outs,
      deconvs=deconvs,
      stem_channels=int(m.get('stem_channels', 64)),
      stage1_blocks=int(m['stage1']['num_blocks'][0]) if 'stage1' in m else 4,
      stage1_planes=int(m['stage1']['num_channels'][0]) if 'stage1' in m else 64,
      final_conv_kernel=int(m.get('final_conv_kernel', 1)),
      dtype=_DTYPES[dtype],
      bn_momentum=float(m.get('bn_momentum', 0.1)),
      bn_epsilon=float(m.get('bn_epsilon', 1e-5)),
      axis_name=axis_name,
  )
