"""Sub-pixel keypoint decoding shared by both model families (DARK, Zhang et al., CVPR 2020).

DARK reads a heatmap as a Gaussian: its log is a quadratic, whose maximum one Newton step
from the integer maximum finds exactly, `offset = -H^-1 g`, with the gradient `g` and the
Hessian `H` of the log heatmap from finite differences. Network heatmaps are not Gaussian
enough, so they are first smoothed with OpenCV's Gaussian blur, as in mmpose.

The top-down family applies it to whole heatmap batches on the device
(`topdown.dark.refine_dark`); the bottom-up family to the joints that grouping decoded,
each at its own pixel of one image's maps (:func:`dark_offsets`), which needs only a small
window around each joint.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# OpenCV's tabulated kernels for `cv2.GaussianBlur(..., ksize, 0)` with ksize <= 7; larger
# kernels are sampled from a Gaussian with sigma = 0.3 ((ksize - 1) / 2 - 1) + 0.8.
_CV_SMALL_KERNELS = {
    1: (1.,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}


def blur_kernel_1d(kernel_size: int) -> np.ndarray:
  """The 1-D kernel of `cv2.GaussianBlur(x, (k, k), 0)`, float64, sums to 1."""
  if kernel_size % 2 != 1 or kernel_size < 1:
    raise ValueError(f'blur kernel size must be odd and positive, got {kernel_size}')
  if kernel_size in _CV_SMALL_KERNELS:
    return np.asarray(_CV_SMALL_KERNELS[kernel_size], np.float64)
  s = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
  t = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2
  g = np.exp(-t * t / (2 * s * s))
  return g / g.sum()


def dark_offsets(heatmaps: np.ndarray, x: np.ndarray, y: np.ndarray, joint: np.ndarray,
                 blur_kernel: int = 5) -> np.ndarray:
  """DARK's sub-pixel offsets of the peaks at integer pixels `(x, y)` of maps `joint`.

  The same Newton step as mmpose's `refine_keypoints_dark` (gradient from the +-1
  neighbours, Hessian from the +-2 ones and the four diagonal neighbours of the blurred,
  clipped-at-1e-10 log heatmap). mmpose also rescales each blurred map to its original
  maximum: a constant per map, which the log turns into an added constant that no
  derivative sees, so it is left out. The blur pads the map with zeros, as OpenCV's
  `BORDER_CONSTANT`; only the window around each pixel is blurred.

  An offset is 0 where the +-2 window leaves the map or the Hessian is singular (as in
  mmpose), and is clipped to half a pixel: the integer maximum of a sampled Gaussian is the
  pixel nearest its peak, so a longer step means that the map is not one there.

  Args:
    heatmaps: `[h, w, K]` heatmaps of one image (NumPy, or a JAX array left where it is).
    x, y: `[N]` integer pixel columns and rows.
    joint: `[N]` map index of each pixel.
    blur_kernel: odd Gaussian blur size; 1 disables the blur.

  Returns:
    `[N, 2]` float64 offsets `(dx, dy)` in pixels.
  """
  x = np.asarray(x, np.int64)
  y = np.asarray(y, np.int64)
  joint = np.asarray(joint, np.int64)
  out = np.zeros((len(x), 2))
  if len(x) == 0:
    return out
  h, w = heatmaps.shape[:2]
  taps = blur_kernel_1d(blur_kernel)
  m = len(taps) // 2 + 2  # the blur's reach plus the +-2 finite differences
  span = np.arange(-m, m + 1)
  rows = np.clip(y, 0, h - 1)[:, None] + span  # [N, 2m + 1]
  cols = np.clip(x, 0, w - 1)[:, None] + span
  # Only the windows are read (maps still on a device are read there), without padding
  # the whole map: positions outside it are read clipped, then zeroed.
  window = np.asarray(heatmaps[np.clip(rows, 0, h - 1)[:, :, None],
                               np.clip(cols, 0, w - 1)[:, None, :], joint[:, None, None]],
                      np.float64)  # [N, 2m + 1, 2m + 1]
  window *= ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
  down = sliding_window_view(window, len(taps), axis=1) @ taps  # [N, 5, 2m + 1]
  blurred = sliding_window_view(down, len(taps), axis=2) @ taps  # [N, 5, 5], centre [2, 2]
  f = np.log(np.maximum(blurred, 1e-10))
  gx = 0.5 * (f[:, 2, 3] - f[:, 2, 1])
  gy = 0.5 * (f[:, 3, 2] - f[:, 1, 2])
  hxx = 0.25 * (f[:, 2, 4] - 2 * f[:, 2, 2] + f[:, 2, 0])
  hyy = 0.25 * (f[:, 4, 2] - 2 * f[:, 2, 2] + f[:, 0, 2])
  hxy = 0.25 * (f[:, 3, 3] - f[:, 1, 3] - f[:, 3, 1] + f[:, 1, 1])
  det = hxx * hyy - hxy * hxy
  ok = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2) & (det != 0)
  inv = np.where(ok, 1 / np.where(det != 0, det, 1), 0)
  out[:, 0] = -(hyy * gx - hxy * gy) * inv
  out[:, 1] = -(hxx * gy - hxy * gx) * inv
  return np.clip(out, -0.5, 0.5)


def dark_poses(poses: np.ndarray, heatmaps: np.ndarray, blur_kernel: int = 5) -> np.ndarray:
  """Bottom-up poses with each found joint at its pixel centre plus DARK's offset.

  Grouping puts a joint at `i + 0.5` plus the official quarter-pixel step (`adjust`, and
  refine's own), or at `i` without adjust; the pixel `i` is recovered as the floor and the
  step replaced.

  Args:
    poses: `[P, K, 3+]` rows `(x, y, score, ...)` in heatmap pixels, missing joints with
      score 0 (grouping's output).
    heatmaps: `[h, w, K]` the maps grouping read (the valid region).
    blur_kernel: as in :func:`dark_offsets`.

  Returns:
    A float32 copy of `poses` with new `x, y` for every joint with a positive score.
  """
  out = np.array(poses, np.float32, copy=True)
  person, joint = np.nonzero(out[:, :, 2] > 0)
  ix = np.floor(out[person, joint, 0])
  iy = np.floor(out[person, joint, 1])
  d = dark_offsets(heatmaps, ix, iy, joint, blur_kernel)
  out[person, joint, 0] = (ix + 0.5 + d[:, 0]).astype(np.float32)
  out[person, joint, 1] = (iy + 0.5 + d[:, 1]).astype(np.float32)
  return out
