"""HigherHRNet: HRNet backbone + the HigherHead (final layers and deconvolution stages)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from higherhrnet_jax.models.hrnet import HRNet, StageSpec, check_input_shape
from higherhrnet_jax.models.layers import (BasicBlock, BatchNorm, ConvTranspose4x4, Dtype, conv_init,
                                           convolution_for, relu)

@dataclasses.dataclass(frozen=True)
class DeconvSpec:
  """One deconvolution stage of the head (official ``MODEL.EXTRA.DECONV``)."""

  num_channels: int
  num_basic_blocks: int
  cat_output: bool


class HigherHead(nn.Module):
  """Heatmap/tag predictions at 1/4 and, after each deconv stage, at twice the resolution.

  ``final_layers_0`` maps the backbone features to ``output_channels[0]``; each deconv
  stage takes ``[features, previous prediction]`` (channel concat, features first, when
  ``cat_output``), upsamples x2 with a 4x4 transposed conv + BN + ReLU, refines with
  BasicBlocks and predicts ``output_channels[i + 1]`` with ``final_layers_{i+1}``.
  Final layers have a bias and no activation.
  """

  output_channels: tuple[int, ...]
  deconvs: tuple[DeconvSpec, ...]
  final_conv_kernel: int = 1
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  axis_name: str | None = None

  def _final(self, index: int, train: bool) -> nn.Conv:
    k = self.final_conv_kernel
    pad = 1 if k == 3 else 0  # official: padding 1 for kernel 3, else 0
    return nn.Conv(self.output_channels[index], (k, k), padding=((pad, pad), (pad, pad)),
                   use_bias=True, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=conv_init, bias_init=nn.initializers.zeros,
                   conv_general_dilated=convolution_for(k, inference=not train),
                   name=f'final_layers_{index}')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    common = dict(dtype=self.dtype, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                  axis_name=self.axis_name)
    y = self._final(0, train)(x)
    outputs = [y]
    for i, spec in enumerate(self.deconvs):
      if spec.cat_output:
        x = jnp.concatenate([x, y], axis=-1)
      self.sow('intermediates', f'deconv_input_{i}', x)
      x = ConvTranspose4x4(spec.num_channels, dtype=self.dtype, name=f'deconv_layers_{i}_0_0')(x)
      x = BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
                    axis_name=self.axis_name, name=f'deconv_layers_{i}_0_1')(x, train)
      x = relu(x)
      for b in range(spec.num_basic_blocks):
        x = BasicBlock(spec.num_channels, **common, name=f'deconv_layers_{i}_{b + 1}_0')(x, train)
      self.sow('intermediates', f'deconv_layers_{i}', x)
      y = self._final(i + 1, train)(x)
      outputs.append(y)
    return outputs


class HigherHRNet(nn.Module):
  """The full bottom-up pose network.

  ``__call__(images [B, H, W, 3], train) -> [out0 [B, H/4, W/4, C0], out1 [B, H/2, W/2, C1], ...]``
  (float32; float64 if computing in float64). For the COCO models ``C0 = 2K`` (K heatmaps, then K tags) and ``C1 = K``.
  ``train=True`` normalises with batch statistics and updates ``batch_stats`` (apply
  with ``mutable=['batch_stats']``).

  Attributes:
    stages: backbone stages 2..4.
    output_channels: channels of each final layer.
    deconvs: deconvolution stages of the head.
    stem_channels: stem width (64).
    stage1_blocks, stage1_planes: layer1 Bottleneck count and width (4, 64).
    final_conv_kernel: 1 or 3.
    dtype: compute dtype, e.g. ``jnp.bfloat16``; parameters stay float32.
    bn_momentum, bn_epsilon: PyTorch-convention BatchNorm settings.
    axis_name: mapped axis over which train-mode BatchNorm statistics are averaged
      (``None``: statistics of the local batch).
  """

  stages: tuple[StageSpec, ...]
  output_channels: tuple[int, ...]
  deconvs: tuple[DeconvSpec, ...]
  stem_channels: int = 64
  stage1_blocks: int = 4
  stage1_planes: int = 64
  final_conv_kernel: int = 1
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> list[jax.Array]:
    check_input_shape(images.shape)
    common = dict(dtype=self.dtype, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                  axis_name=self.axis_name)
    x = images.astype(self.dtype)
    feats = HRNet(self.stages, self.stem_channels, self.stage1_blocks, self.stage1_planes, **common, name='backbone')(x, train)
    outputs = HigherHead(self.output_channels, self.deconvs, self.final_conv_kernel, **common,
                         name='head')(feats[0], train)
    out_dtype = jnp.promote_types(self.dtype, jnp.float32)
    return [o.astype(out_dtype) for o in outputs]
