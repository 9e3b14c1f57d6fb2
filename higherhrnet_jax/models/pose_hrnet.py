"""PoseHRNet: the HRNet paper's top-down pose network (backbone + one 1x1 conv).

The shared HRNet backbone ends in the highest-resolution branch (1/4 of the input); the
head is a single convolution with bias, `final_layer`, to one heatmap per joint, with no
activation, exactly as the official `PoseHighResolutionNet`. The head sits at the top level
(not under a `head` scope) so the converter's naming rule gives the official
`final_layer.weight` / `final_layer.bias` keys.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from higherhrnet_jax.models.hrnet import HRNet, StageSpec, check_input_shape
from higherhrnet_jax.models.layers import Dtype, conv_init, convolution_for


class PoseHRNet(nn.Module):
  """Crops `[B, H, W, 3]` -> heatmaps `[B, H/4, W/4, num_joints]` (float32, or float64 in x64).

  Attributes:
    stages: backbone stages 2..4.
    num_joints: heatmap channels.
    stem_channels, stage1_blocks, stage1_planes: stem and layer1 layout (64, 4, 64).
    final_conv_kernel: 1 (all official models) or 3.
    dtype: compute dtype; parameters stay float32.
    bn_momentum, bn_epsilon: PyTorch-convention BatchNorm settings.
    axis_name: mapped axis for cross-device train-mode BatchNorm statistics.
  """

  stages: tuple[StageSpec, ...]
  num_joints: int
  stem_channels: int = 64
  stage1_blocks: int = 4
  stage1_planes: int = 64
  final_conv_kernel: int = 1
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    check_input_shape(images.shape)
    x = images.astype(self.dtype)
    feats = HRNet(self.stages, self.stem_channels, self.stage1_blocks, self.stage1_planes,
                  dtype=self.dtype, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                  axis_name=self.axis_name, name='backbone')(x, train)
    k = self.final_conv_kernel
    pad = 1 if k == 3 else 0  # official: padding 1 for kernel 3, else 0
    y = nn.Conv(self.num_joints, (k, k), padding=((pad, pad), (pad, pad)), use_bias=True,
                dtype=self.dtype, param_dtype=jnp.float32, kernel_init=conv_init,
                bias_init=nn.initializers.zeros,
                conv_general_dilated=convolution_for(k, inference=not train),
                name='final_layer')(feats[0])
    return y.astype(jnp.promote_types(self.dtype, jnp.float32))
