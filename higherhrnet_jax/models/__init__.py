"""The two model families: `build(config.model)` returns the Flax module.

`model.name` picks the family:
  * `'higher_hrnet'` (bottom-up): `apply(variables, images [B, H, W, 3], train=False)`
    -> `[out0 [B, H/4, W/4, C0], out1 [B, H/2, W/2, C1]]` (heatmaps and tags);
  * `'pose_hrnet'` (top-down): `apply(variables, crops [B, H, W, 3], train=False)`
    -> heatmaps `[B, H/4, W/4, K]`.
With `train=True, mutable=['batch_stats']` both return `(outputs, {'batch_stats': ...})`.
Both share the HRNet backbone (`hrnet.py`) and its official random initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from higherhrnet_jax.models.higher_hrnet import DeconvSpec, HigherHead, HigherHRNet
from higherhrnet_jax.models.hrnet import (INPUT_MULTIPLE, FuseLayer, HighResolutionModule, HRNet, StageSpec,
                                          Transition, check_input_shape, init_variables)
from higherhrnet_jax.models.pose_hrnet import PoseHRNet
from higherhrnet_jax.models.layers import BasicBlock, BatchNorm, Bottleneck, ConvTranspose4x4

__all__ = [
    'BasicBlock', 'BatchNorm', 'Bottleneck', 'ConvTranspose4x4', 'DeconvSpec', 'FuseLayer',
    'HRNet', 'HigherHRNet', 'HigherHead', 'HighResolutionModule', 'INPUT_MULTIPLE', 'PoseHRNet', 'StageSpec',
    'Transition', 'build', 'check_input_shape', 'init_variables', 'output_channels',
]

FAMILIES = ('higher_hrnet', 'pose_hrnet')

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def output_channels(model_config: Mapping[str, Any]) -> tuple[int, ...]:
  """Channels of each prediction: K heatmaps, plus K tags (1 if not per joint) with AE loss."""
  k = model_config['num_joints']
  dim_tag = k if model_config['tag_per_joint'] else 1
  return tuple(k + dim_tag if ae else k for ae in model_config['with_ae_loss'])


def _stages(m: Mapping[str, Any]) -> tuple[StageSpec, ...]:
  return tuple(
      StageSpec(int(m[name]['num_modules']), tuple(int(b) for b in m[name]['num_blocks']),
                tuple(int(c) for c in m[name]['num_channels']))
      for name in ('stage2', 'stage3', 'stage4'))


def _common(m: Mapping[str, Any], axis_name: str | None) -> dict[str, Any]:
  """Backbone and numerics settings both families take (validated by `config.validate`)."""
  return dict(
      stages=_stages(m),
      stem_channels=int(m.get('stem_channels', 64)),
      stage1_blocks=int(m['stage1']['num_blocks'][0]) if 'stage1' in m else 4,
      stage1_planes=int(m['stage1']['num_channels'][0]) if 'stage1' in m else 64,
      final_conv_kernel=int(m.get('final_conv_kernel', 1)),
      dtype=_DTYPES[m.get('dtype', 'float32')],
      bn_momentum=float(m.get('bn_momentum', 0.1)),
      bn_epsilon=float(m.get('bn_epsilon', 1e-5)),
      axis_name=axis_name,
  )


def build(model_config: Mapping[str, Any], *, axis_name: str | None = None) -> HigherHRNet | PoseHRNet:
  """Builds the module described by `config.model` (family by `model.name`).

  Args:
    model_config: the `model` block of a validated config (name, stages, num_joints, dtype,
      and for HigherHRNet the deconv head).
    axis_name: optional mapped axis name over which train-mode BatchNorm statistics are
      averaged (global BatchNorm); `None` keeps per-device statistics.

  Returns:
    An unbound `HigherHRNet` or `PoseHRNet`.
  """
  m = model_config
  name = m.get('name', 'higher_hrnet')
  if name not in FAMILIES:
    raise ValueError(f'model.name: unknown model {name!r} (one of {FAMILIES})')
  if m.get('dtype', 'float32') not in _DTYPES:
    raise ValueError(f'model.dtype: unknown dtype {m["dtype"]!r} (one of {sorted(_DTYPES)})')
  if name == 'pose_hrnet':
    return PoseHRNet(num_joints=int(m['num_joints']), **_common(m, axis_name))
  d = m['deconv']
  deconvs = tuple(
      DeconvSpec(int(c), int(d['num_basic_blocks']), bool(cat))
      for c, cat in zip(d['num_channels'], d['cat_output']))
  return HigherHRNet(output_channels=output_channels(m), deconvs=deconvs, **_common(m, axis_name))
