"""Comparisons for results whose last bits depend on the processor.

numpy's transcendental functions (exp, log, ...) take SIMD paths chosen at run time and
differ by up to 1 ulp between AVX-512 and AVX2 processors; XLA:CPU may order float32
accumulations differently for another ISA or batch size. Tests bound those differences in
ulps or relative to the quantity's scale, and keep bitwise equality where the computation
is exact by construction.
"""

import cv2
import numpy as np

# The fixtures' warps were made with OpenCV 5.0, whose float32 warp arithmetic they record;
# other OpenCV 5 releases round a few interpolations differently, each by one grey level
# (5.1: up to 0.02% of a whole-image warp, up to 0.13% of an upscaled small crop), while a
# wrong matrix or the fixed-point warp of OpenCV <= 4.10 changes ~10% of the values by up
# to 5 levels.
FIXTURE_OPENCV = cv2.__version__.startswith('5.0.')


def assert_warp_matches(actual: np.ndarray, expected: np.ndarray, max_off_fraction: float = 1e-3
                        ) -> None:
  """Warped uint8 images: exact with the fixtures' OpenCV, else one grey level on a few values."""
  assert actual.shape == expected.shape and actual.dtype == expected.dtype
  if FIXTURE_OPENCV:
    np.testing.assert_array_equal(actual, expected)
    return
  diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
  assert diff.max(initial=0) <= 1, diff.max(initial=0)
  assert np.count_nonzero(diff) <= max_off_fraction * diff.size, np.count_nonzero(diff)


def ulp_distance(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
  """|actual - expected| in units of the last place of `expected` (same dtype required)."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.dtype == expected.dtype and actual.shape == expected.shape, (
      actual.dtype, expected.dtype, actual.shape, expected.shape)
  return np.abs(actual - expected) / np.spacing(np.abs(expected))


def assert_within_ulps(actual: np.ndarray, expected: np.ndarray, max_ulps: float) -> None:
  dist = ulp_distance(actual, expected)
  worst = float(dist.max(initial=0.0))
  assert worst <= max_ulps, (f'{int((dist > max_ulps).sum())} of {dist.size} elements differ '
                             f'by more than {max_ulps} ulp (worst {worst:.3g} ulp)')


def assert_close_to_scale(actual: np.ndarray, expected: np.ndarray, rel: float,
                          scale: float | None = None) -> None:
  """max |actual - expected| <= rel * scale, scale defaulting to max |expected|."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  scale = float(np.abs(expected).max(initial=0.0)) if scale is None else scale
  worst = float(np.abs(actual.astype(np.float64) - expected).max(initial=0.0))
  assert worst <= rel * scale, f'max difference {worst:.3g} > {rel:g} x scale {scale:.3g}'
