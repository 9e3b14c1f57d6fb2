"""Building blocks shared by the backbone and the head: convolutions, BatchNorm, the deconv.

Everything here reproduces the official PyTorch layers exactly (padding, BatchNorm
statistics, transposed-convolution geometry), because the official checkpoints are
loaded into these modules and their outputs must agree to float32 rounding.

Naming: submodules are named after the official state-dict path with ``.`` replaced by
``_`` (e.g. ``fuse_layers_1_0_0_0``), so the checkpoint converter derives every key
from the Flax variable tree alone (see ``higherhrnet_jax.convert.official``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from higherhrnet_jax import collectives

Dtype = Any

# Official initialisation (`init_weights` without a pretrained file): every Conv2d and
# ConvTranspose2d weight ~ N(0, 0.001^2), biases 0, BatchNorm gamma 1 / beta 0.
conv_init = nn.initializers.normal(stddev=0.001)


def bn_options(module: nn.Module) -> dict:
  """BatchNorm settings a module passes on (its bn_momentum, bn_epsilon, dtype, axis_name)."""
  return dict(momentum=module.bn_momentum, epsilon=module.bn_epsilon, dtype=module.dtype,
              axis_name=module.axis_name)


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    *,
    dtype: Dtype,
    name: str,
    use_bias: bool = False,
    inference: bool = False,
) -> nn.Conv:
  """A PyTorch-style Conv2d: symmetric padding ``kernel // 2``, no bias by default.

  Explicit padding matters: 'SAME' pads (0, 1) on even inputs for stride 2, which
  shifts the sampling grid relative to the official model. ``inference`` (the caller's
  ``not train``) lets a CPU forward pass use the faster kernel (`convolution_for`).
  """
  pad = kernel // 2
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=conv_init,
      bias_init=nn.initializers.zeros,
      conv_general_dilated=convolution_for(kernel, stride, inference=inference),
      name=name,
  )


def pointwise_conv(lhs: jax.Array, rhs: jax.Array, window_strides, padding, lhs_dilation=None,
                   rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                   precision=None) -> jax.Array:
  """A 1x1, stride-1 convolution (NHWC, HWIO) as a matrix product over the channels.

  The same products over the same channels as the convolution, but XLA:CPU runs matrix
  products on all cores and YNNPACK's convolutions on one: 2x faster here (a 64 -> 256
  channel layer at 128x128: 3.2 against 6.0 ms; forward and gradient 33 against 55 ms).
  Takes `lax.conv_general_dilated`'s arguments, for `nn.Conv(conv_general_dilated=...)`.
  """
  if (rhs.shape[:2] != (1, 1) or tuple(window_strides) != (1, 1) or feature_group_count != 1
      or any(tuple(p) != (0, 0) for p in padding)
      or any(d not in (None, (1, 1)) for d in (lhs_dilation, rhs_dilation))):
    raise ValueError(f'pointwise_conv: not a plain 1x1 convolution (kernel {rhs.shape}, '
                     f'strides {window_strides}, padding {padding})')
  return jax.lax.dot_general(lhs, rhs[0, 0], (((lhs.ndim - 1,), (0,)), ((), ())),
                             precision=precision)


def cpu_inference_conv(lhs: jax.Array, rhs: jax.Array, window_strides, padding,
                       lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                       feature_group_count: int = 1, precision=None) -> jax.Array:
  """A stride-1 NHWC convolution computed one output row taller, the extra row sliced off.

  XLA:CPU hands an NHWC convolution to YNNPACK, whose kernels run on one thread here,
  unless its output is taller than its input; then Eigen's convolution runs it on the
  whole intra-op pool (a 3x3 convolution of 32 channels at 128x128: 1.7 against 2.9 ms;
  the W32-512 forward 540-570 against 600-615 ms on a 2-core AMD EPYC). One more row of
  zero padding at the bottom gives that taller output; the rows kept are the same sums of
  the same products, in Eigen's order. Its own gradient would be 8x slower than the
  plain one (a W32 train step 11.5 against 1.4 s), so the gradient is the plain
  convolution's. Takes `lax.conv_general_dilated`'s arguments.
  """
  if tuple(window_strides) != (1, 1) or any(d not in (None, (1, 1)) for d in (lhs_dilation,
                                                                              rhs_dilation)):
    raise ValueError(f'cpu_inference_conv: not a stride-1 convolution (strides '
                     f'{window_strides}, dilations {lhs_dilation}, {rhs_dilation})')
  plain = functools.partial(jax.lax.conv_general_dilated, window_strides=window_strides,
                            padding=padding, dimension_numbers=dimension_numbers,
                            feature_group_count=feature_group_count, precision=precision)
  (top, bottom), cols = padding  # rows are the first spatial dimension (NHWC)

  @jax.custom_vjp
  def taller(x, k):
    out = plain(x, k, padding=((top, bottom + 1), cols))
    return out[:, :out.shape[1] - 1]

  def taller_fwd(x, k):
    return taller(x, k), (x, k)

  def plain_bwd(res, g):
    return jax.vjp(plain, *res)[1](g)

  taller.defvjp(taller_fwd, plain_bwd)
  return taller(lhs, rhs)


def convolution_for(kernel: int, stride: int = 1, *, inference: bool = False):
  """`nn.Conv`'s convolution function for this kernel, stride and use.

  1x1 stride 1: `pointwise_conv`. Other stride-1 kernels in a forward pass on a CPU:
  `cpu_inference_conv` (the choice is made when tracing, from JAX's default backend).
  Otherwise XLA's own convolution (None).
  """
  if kernel == 1 and stride == 1:
    return pointwise_conv
  if inference and stride == 1 and jax.default_backend() == 'cpu':
    return cpu_inference_conv
  return None


class BatchNorm(nn.Module):
  """BatchNorm2d with PyTorch semantics (NHWC, normalises over N, H, W).

  Flax's ``nn.BatchNorm`` updates the running variance with the biased batch variance;
  PyTorch (and therefore the official training) uses the unbiased one. Train mode
  normalises with the biased batch variance and updates
  ``running = (1 - momentum) * running + momentum * batch_stat`` with the unbiased
  variance, exactly as ``torch.nn.BatchNorm2d``.

  Attributes:
    momentum: PyTorch convention (0.1 = Flax momentum 0.9).
    epsilon: added to the variance.
    dtype: dtype of the output; statistics are computed in at least float32.
    axis_name: if set, batch statistics are averaged over this mapped axis (global
      BatchNorm across devices, in a fixed order: `collectives.ordered_mean`); ``None``
      keeps per-device statistics.
  """

  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    running_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    # Statistics in at least float32 (bfloat16 inputs), float64 when computing in float64.
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if train:
      axes = tuple(range(x.ndim - 1))
      count = int(np.prod([x.shape[a] for a in axes]))
      mean = jnp.mean(xf, axes)
      if self.axis_name is not None:
        mean = collectives.ordered_mean(mean, self.axis_name)
      # Two-pass variance (as PyTorch): E[x^2] - E[x]^2 loses float32 precision.
      var = jnp.mean(jnp.square(xf - mean), axes)
      if self.axis_name is not None:
        var = collectives.ordered_mean(var, self.axis_name)
        count = count * jax.lax.psum(1, self.axis_name)
      if not self.is_initializing():
        m = self.momentum
        unbiased = var * (count / jnp.maximum(count - 1, 1))
        running_mean.value = (1 - m) * running_mean.value + m * jax.lax.stop_gradient(mean)
        running_var.value = (1 - m) * running_var.value + m * jax.lax.stop_gradient(unbiased)
    else:
      mean, var = running_mean.value, running_var.value
    y = (xf - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype)


class ConvTranspose4x4(nn.Module):
  """ConvTranspose2d(kernel 4, stride 2, padding 1, no bias) as a phase decomposition.

  Output pixel ``(2m + a, 2n + b)`` only sees input rows ``m - 1 + a, m + a`` and
  columns ``n - 1 + b, n + b``, each through a fixed 2x2 subset of the 4x4 kernel
  (taps ``k = 3 - a - 2t`` for window offset ``t`` in {0, 1}). So the transposed
  convolution equals one ordinary 2x2 convolution over the input padded by 1, with the
  four phase kernels stacked along the output channels, followed by a depth-to-space
  interleave. Numerically it is the same sum of the same products as the official
  layer; unlike ``nn.ConvTranspose`` its gradient is fast on XLA:CPU.

  Parameter ``transpose_kernel`` has shape ``[4, 4, Cin, Cout]`` and holds the official
  PyTorch weight ``W[Cin, Cout, kh, kw]`` as ``W.transpose(2, 3, 0, 1)`` (no flip).

  Attributes:
    features: output channels.
    dtype: compute dtype.
  """

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, cin = x.shape
    cout = self.features
    kernel = self.param('transpose_kernel', conv_init, (4, 4, cin, cout), jnp.float32)
    taps = np.array([[3, 1], [2, 0]])  # taps[phase, window offset]
    # fused[t, u, ci, a, b, co] = kernel[taps[a, t], taps[b, u], ci, co]
    rows = kernel[taps.T]  # [t, a, 4, Cin, Cout]
    fused = rows[:, :, taps.T]  # [t, a, u, b, Cin, Cout]
    fused = fused.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, cin, 4 * cout)
    xp = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = jax.lax.conv_general_dilated(
        xp,
        fused.astype(self.dtype),
        window_strides=(1, 1),
        padding='VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )  # [B, H + 1, W + 1, 4 * Cout]
    out = out.reshape(b, h + 1, w + 1, 2, 2, cout)
    phases = [[out[:, a:a + h, c:c + w, a, c] for c in range(2)] for a in range(2)]
    y = jnp.stack([jnp.stack(p, axis=3) for p in phases], axis=2)  # [B, H, 2, W, 2, C]
    return y.reshape(b, 2 * h, 2 * w, cout)


def relu(x: jax.Array) -> jax.Array:
  """ReLU written as a select, so that XLA:CPU computes each activation once.

  XLA's fusion treats ``max(x, 0)`` as a free unary op and copies it, and through it the
  BatchNorm and residual add behind it, into every elementwise consumer. In HRNet a block's
  output feeds both a convolution and the next residual add (or fusion sum), so each add
  ended up recomputing the whole chain of earlier blocks from their convolution outputs:
  about 0.5 s of a 1.2 s W32-512 forward on CPU. A select reads two values (the comparison
  and ``x``), which the fusion pass does not duplicate next to a convolution reading it.
  Same values as ``jax.nn.relu`` (NaN passes through) and the same gradient at every
  number (0 at 0, as PyTorch's).
  """
  return jnp.where(x <= 0, jnp.zeros_like(x), x)


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  """Nearest-neighbour upsampling, ``out[r, c] = in[r // factor, c // factor]``."""
  b, h, w, c = x.shape
  y = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return y.reshape(b, h * factor, w * factor, c)


class BasicBlock(nn.Module):
  """HRNet BasicBlock: 3x3 conv-BN-ReLU, 3x3 conv-BN, identity add, ReLU.

  No projection shortcut: it never occurs in HigherHRNet (channels are fixed per branch).
  """

  features: int
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if x.shape[-1] != self.features:
      raise ValueError(f'{self.name}: BasicBlock input has {x.shape[-1]} channels, expected '
                       f'{self.features} (projection shortcuts are not part of HigherHRNet)')
    bn = bn_options(self)
    y = conv(self.features, 3, dtype=self.dtype, name='conv1', inference=not train)(x)
    y = relu(BatchNorm(**bn, name='bn1')(y, train))
    y = conv(self.features, 3, dtype=self.dtype, name='conv2', inference=not train)(y)
    y = BatchNorm(**bn, name='bn2')(y, train)
    return relu(y + x)


class Bottleneck(nn.Module):
  """ResNet Bottleneck of HRNet's layer1: 1x1, 3x3, 1x1 (x4 channels) with BN.

  The shortcut is a 1x1 conv + BN projection when the input channels differ from
  ``4 * planes`` (the first block of layer1), the identity otherwise.
  """

  planes: int
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = bn_options(self)
    out_channels = 4 * self.planes
    y = conv(self.planes, 1, dtype=self.dtype, name='conv1')(x)
    y = relu(BatchNorm(**bn, name='bn1')(y, train))
    y = conv(self.planes, 3, dtype=self.dtype, name='conv2', inference=not train)(y)
    y = relu(BatchNorm(**bn, name='bn2')(y, train))
    y = conv(out_channels, 1, dtype=self.dtype, name='conv3')(y)
    y = BatchNorm(**bn, name='bn3')(y, train)
    if x.shape[-1] != out_channels:
      x = conv(out_channels, 1, dtype=self.dtype, name='downsample_0')(x)
      x = BatchNorm(**bn, name='downsample_1')(x, train)
    return relu(y + x)
