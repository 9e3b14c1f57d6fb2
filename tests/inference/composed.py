"""The test loop in one jitted function, the reference the Predictor and the export are held to."""

import jax
import numpy as np

from higherhrnet_jax.inference import outputs


def jit_inference(apply_fn, spec, compiler_options=None):
  """`outputs.make_inference_fn` under `jax.jit` (one program per bucket).

  `compiler_options`: XLA's, e.g. the Predictor's choice of CPU convolution kernels, which
  decides the last bits of the outputs.
  """
  return jax.jit(outputs.make_inference_fn(apply_fn, spec), static_argnames=('base_shape',),
                 compiler_options=compiler_options)


def crop(final_heatmaps, tags, base_hw):
  """Per image `(heatmaps [h, w, K], tags [h, w, K, T])` cut to the valid base size."""
  final_heatmaps, tags, base_hw = np.asarray(final_heatmaps), np.asarray(tags), np.asarray(base_hw)
  return [(final_heatmaps[b, :h, :w], tags[b, :h, :w]) for b, (h, w) in enumerate(base_hw)]
