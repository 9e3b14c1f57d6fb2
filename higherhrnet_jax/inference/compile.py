"""How inference programs are compiled: XLA:CPU's convolutions for a forward pass.

XLA:CPU hands convolutions to YNNPACK by default, whose convolution kernels run on one
thread here; Eigen's use the whole intra-op pool. On the 2-core AMD EPYC (AVX-512) the
W32-512 forward takes 530 ms with Eigen's against 660 ms with YNNPACK's, and a single
3x3 convolution of 32 channels at 128x128 1.7 ms against 2.9 ms. A training step is
slower with it (W32: 1.9 against 1.3 s; Eigen's kernel gradients are slow), so only
inference asks for it. The models' own forward pass already sends its stride-1
convolutions to Eigen (`models.layers.cpu_inference_conv`); this option adds the rest. It
changes which kernel runs, so the last bits of the outputs, not the computation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

# Keep YNNPACK for matrix products (which it runs multi-threaded), not for convolutions.
NO_YNN_CONVOLUTION = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


@functools.cache
def cpu_forward_options() -> dict[str, str] | None:
  """`NO_YNN_CONVOLUTION` if this XLA:CPU knows the option (probed once), else None."""
  x = jax.device_put(np.zeros(1, np.float32), jax.devices('cpu')[0])
  try:
    jax.jit(lambda v: v + 1).lower(x).compile(compiler_options=NO_YNN_CONVOLUTION)
  except jax.errors.JaxRuntimeError:  # an XLA without that option: its default kernels
    return None
  return NO_YNN_CONVOLUTION


def forward_jit(fn: Callable[..., Any], devices: Sequence[jax.Device]) -> Any:
  """`jax.jit(fn)`, with Eigen convolutions when `devices` are CPUs."""
  if devices and devices[0].platform == 'cpu':
    return jax.jit(fn, compiler_options=cpu_forward_options())
  return jax.jit(fn)


def compile_with_weights(fn: Any, weights: Any, *args: Any) -> Any:
  """`fn(weights, *args)` compiled for these arguments with `weights` as constants.

  An XLA:CPU inference program: constant weights are prepared ahead of the first call, and
  the convolutions are Eigen's (`cpu_forward_options`). Returns the compiled `f(*args)`.
  """
  lowered = jax.jit(lambda *a: fn(weights, *a)).lower(*args)
  return lowered.compile(compiler_options=cpu_forward_options())
