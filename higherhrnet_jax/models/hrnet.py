"""The HRNet backbone: stem, Bottleneck layer1, transitions and multi-resolution stages.

Semantics follow the official `PoseHigherResolutionNet` backbone exactly (see the
fixtures' README, section 7): symmetric padding on all 3x3 convolutions, nearest
upsampling in the fuse layers, a new branch is created from the previous stage's
lowest-resolution output, and the last module of the last stage only produces the
highest-resolution branch (its other branches are still computed, as in the official
forward, so their BatchNorm statistics are updated in training).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from higherhrnet_jax.models.layers import (BasicBlock, BatchNorm, Bottleneck, Dtype, bn_options, conv,
                                           relu, upsample_nearest)

# The backbone downsamples by 32 at its lowest-resolution branch; fuse sums need exact halving.
INPUT_MULTIPLE = 32


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One HRNet stage: `num_modules` HighResolutionModules with per-branch blocks/channels."""

  num_modules: int
  num_blocks: tuple[int, ...]
  num_channels: tuple[int, ...]

  @property
  def num_branches(self) -> int:
    return len(self.num_channels)


class FuseLayer(nn.Module):
  """Output branch ``i`` of an HR module: sum over all input branches, then ReLU.

  Input branch ``j > i``: 1x1 conv + BN + nearest upsampling by ``2^(j-i)``.
  Input branch ``j < i``: ``i - j`` stride-2 3x3 conv + BN, ReLU between them (not
  after the last). The summation order (j = 0, 1, ...) is the official one.
  Submodules are named ``{j}_0``/``{j}_1`` and ``{j}_{k}_0``/``{j}_{k}_1`` after the
  official ``fuse_layers.i.j...`` keys.
  """

  index: int
  num_channels: tuple[int, ...]
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], train: bool) -> jax.Array:
    i = self.index
    bn = bn_options(self)
    y = None
    for j, x in enumerate(xs):
      if j > i:
        x = conv(self.num_channels[i], 1, dtype=self.dtype, name=f'{j}_0')(x)
        x = BatchNorm(**bn, name=f'{j}_1')(x, train)
        x = upsample_nearest(x, 2 ** (j - i))
      elif j < i:
        for k in range(i - j):
          last = k == i - j - 1
          features = self.num_channels[i] if last else self.num_channels[j]
          x = conv(features, 3, 2, dtype=self.dtype, name=f'{j}_{k}_0')(x)
          x = BatchNorm(**bn, name=f'{j}_{k}_1')(x, train)
          if not last:
            x = relu(x)
      y = x if y is None else y + x
    return relu(y)


class HighResolutionModule(nn.Module):
  """Parallel branches of BasicBlocks followed by multi-resolution fusion.

  Attributes:
    num_blocks: BasicBlocks per branch.
    num_channels: channels per branch (the inputs must already have them).
    multi_scale_output: False only for the last module of the network, which then
      returns just the highest-resolution branch.
  """

  num_blocks: tuple[int, ...]
  num_channels: tuple[int, ...]
  multi_scale_output: bool = True
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], train: bool) -> list[jax.Array]:
    if len(xs) != len(self.num_channels):
      raise ValueError(f'{self.name}: got {len(xs)} branches, expected {len(self.num_channels)}')
    common = dict(dtype=self.dtype, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                  axis_name=self.axis_name)
    ys = []
    for i, x in enumerate(xs):
      for b in range(self.num_blocks[i]):
        x = BasicBlock(self.num_channels[i], **common, name=f'branches_{i}_{b}')(x, train)
      ys.append(x)
    num_out = len(ys) if self.multi_scale_output else 1
    return [
        FuseLayer(i, self.num_channels, **common, name=f'fuse_layers_{i}')(ys, train)
        for i in range(num_out)
    ]


class Transition(nn.Module):
  """Maps the previous stage's branches to the next stage's branches.

  A kept branch passes unchanged unless its channel count changes (3x3 conv-BN-ReLU,
  submodules ``{i}_0``/``{i}_1``). A new branch is a stride-2 3x3 conv-BN-ReLU applied
  to the previous stage's lowest-resolution output (``{i}_0_0``/``{i}_0_1``).
  """

  in_channels: tuple[int, ...]
  out_channels: tuple[int, ...]
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], train: bool) -> list[jax.Array]:
    bn = bn_options(self)
    n_pre = len(self.in_channels)
    ys = []
    for i, c_out in enumerate(self.out_channels):
      if i < n_pre:
        x = xs[i]
        if self.in_channels[i] != c_out:
          x = conv(c_out, 3, dtype=self.dtype, name=f'{i}_0', inference=not train)(x)
          x = relu(BatchNorm(**bn, name=f'{i}_1')(x, train))
      else:
        x = xs[-1]
        for k in range(i + 1 - n_pre):
          last = k == i - n_pre
          features = c_out if last else self.in_channels[-1]
          x = conv(features, 3, 2, dtype=self.dtype, name=f'{i}_{k}_0')(x)
          x = relu(BatchNorm(**bn, name=f'{i}_{k}_1')(x, train))
      ys.append(x)
    return ys


class HRNet(nn.Module):
  """HRNet backbone as used by HigherHRNet.

  Attributes:
    stages: stage 2, 3, 4, ... specifications.
    stem_channels: channels of the two stride-2 stem convs (64 in all official models).
    stage1_blocks: Bottlenecks in layer1 (4 in all official models).
    stage1_planes: Bottleneck width of layer1 (64; the output has 4x as many channels).
    dtype: compute dtype (parameters are float32).

  Returns from ``__call__``: the last stage's outputs; with the last module producing
  only the highest resolution this is ``[x]`` with ``x`` of shape ``[B, H/4, W/4, C0]``.
  Intermediate features are sown into the ``'intermediates'`` collection
  (``stem``, ``stage2``, ...) when it is mutable.
  """

  stages: tuple[StageSpec, ...]
  stem_channels: int = 64
  stage1_blocks: int = 4
  stage1_planes: int = 64
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    common = dict(dtype=self.dtype, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                  axis_name=self.axis_name)
    bn = bn_options(self)
    x = conv(self.stem_channels, 3, 2, dtype=self.dtype, name='conv1')(x)
    x = relu(BatchNorm(**bn, name='bn1')(x, train))
    x = conv(self.stem_channels, 3, 2, dtype=self.dtype, name='conv2')(x)
    x = relu(BatchNorm(**bn, name='bn2')(x, train))
    self.sow('intermediates', 'stem', x)
    for b in range(self.stage1_blocks):
      x = Bottleneck(self.stage1_planes, **common, name=f'layer1_{b}')(x, train)
    xs, channels = [x], (x.shape[-1],)
    for s, stage in enumerate(self.stages):
      number = s + 2
      xs = Transition(channels, stage.num_channels, **common, name=f'transition{number - 1}')(xs, train)
      for m in range(stage.num_modules):
        last = s == len(self.stages) - 1 and m == stage.num_modules - 1
        xs = HighResolutionModule(stage.num_blocks, stage.num_channels, multi_scale_output=not last,
                                  **common, name=f'stage{number}_{m}')(xs, train)
      channels = stage.num_channels
      self.sow('intermediates', f'stage{number}', tuple(xs))
    return xs


def check_input_shape(shape: Sequence[int]) -> None:
  """Refuses inputs the network cannot take, with a message instead of a shape error deep inside.

  Raises:
    ValueError: rank is not 4 (NHWC), the channel count is not 3, or H/W are not
      positive multiples of 32.
  """
  shape = tuple(shape)
  if len(shape) != 4:
    raise ValueError(f'HRNet expects images [B, H, W, 3] (NHWC, rank 4), got shape {shape}')
  _, h, w, c = shape
  if c != 3:
    raise ValueError(f'HRNet expects 3 input channels (RGB, NHWC layout), got shape {shape}; '
                     'NCHW arrays must be transposed to NHWC first')
  if h <= 0 or w <= 0 or h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
    raise ValueError(f'HRNet input height and width must be positive multiples of '
                     f'{INPUT_MULTIPLE}, got {h}x{w} (shape {shape}); pad or resize the image')


def init_variables(model: nn.Module, seed: int = 0,
                   input_shape: tuple[int, ...] | None = None) -> dict:
  """Official random initialisation without compiling `model.init`, as numpy arrays.

  `model.init` gives the same distribution (its initializers are the official ones),
  but on XLA:CPU compiling its hundreds of random-number kernels takes tens of seconds
  for the tiny model and more for W32. Here the variable shapes come from an abstract
  trace and the values from numpy: conv / transposed-conv kernels ~ N(0, 0.001^2),
  biases and BatchNorm beta 0, gamma 1, running mean 0, running variance 1.

  Args:
    model: a module built by `higherhrnet_jax.models.build`.
    seed: seed of the numpy generator.
    input_shape: `[B, H, W, 3]` to trace the variable shapes with (default: the smallest
      valid input; the networks here are fully convolutional).

  Returns:
    `{'params': ..., 'batch_stats': ...}` (float32 numpy arrays).
  """
  x = jax.ShapeDtypeStruct(tuple(input_shape or (1, INPUT_MULTIPLE, INPUT_MULTIPLE, 3)),
                           jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = path[-1].key
    if name in ('kernel', 'transpose_kernel'):
      return (rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(0.001))
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, np.float32)
    if name in ('bias', 'mean'):
      return np.zeros(leaf.shape, np.float32)
    raise AssertionError(f'no initializer for variable {jax.tree_util.keystr(path)}')

  return jax.tree_util.tree_map_with_path(make, flax.core.unfreeze(shapes))
