"""Training targets: Gaussian keypoint heatmaps and associative-embedding joint indices.

Both generators reproduce the official `HeatmapGenerator` / `ScaleAwareHeatmapGenerator` /
`JointsGenerator` bit for bit, but write NHWC maps (`[R, R, K]`) directly and run the
per-joint window loop in numba, because this is the hot loop of the input pipeline.
`subpixel_heatmaps` is the 'dark' codec's alternative to the official heatmaps.

Semantics kept for parity (see the official fixtures' `targets.npz`):
  * joint coordinates are truncated toward zero (Python `int()`), so (-1, 0) maps to 0;
  * a joint is used only if `v > 0` and its truncated position lies inside the map;
  * the Gaussian window is `[round(x - 3s - 1), round(x + 3s + 2))` with NumPy's
    round-half-to-even, the kernel has `len(arange(0, 6s + 3))` samples centred at
    `3s + 1` (so a non-integer sigma shifts the peak by half a pixel, as the official);
  * overlapping Gaussians of one joint type combine by maximum; the kernel is evaluated
    in float64 and rounded to float32 once (rounding is monotone, so max-then-round and
    round-then-max agree).
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from higherhrnet_jax._numba import njit

_log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=256)
def gaussian_kernel(sigma: float) -> np.ndarray:
  """The official Gaussian kernel for `sigma`, float64 `[L, L]`, `L = len(arange(6s + 3))`."""
  size = 6 * sigma + 3
  x = np.arange(0, size, 1, float)
  y = x[:, np.newaxis]
  c = 3 * sigma + 1
  g = np.exp(-((x - c) ** 2 + (y - c) ** 2) / (2 * sigma**2))
  g.setflags(write=False)
  return g


def _kernel_f32(sigma: float) -> np.ndarray:
  return np.ascontiguousarray(gaussian_kernel(float(sigma)).astype(np.float32))


@njit(nogil=True)
def _draw(hms, kernels, kidx, ks, jk, jx, jy, ulx, uly, brx, bry):  # pragma: no cover - numba
  res = hms.shape[0]
  for n in range(jk.shape[0]):
    g = kernels[kidx[n]]
    size = ks[kidx[n]]
    k = jk[n]
    # Official clipping of the window to the map, then to the kernel.
    c0 = max(0, -ulx[n])
    a0 = max(0, -uly[n])
    cc = max(0, ulx[n])
    aa = max(0, uly[n])
    dd = min(brx[n], res)
    bb = min(bry[n], res)
    d0 = min(dd - ulx[n], size)
    b0 = min(bb - uly[n], size)
    for r in range(b0 - a0):
      for c in range(d0 - c0):
        v = g[a0 + r, c0 + c]
        if v > hms[aa + r, cc + c, k]:
          hms[aa + r, cc + c, k] = v
  return hms


def _visible_inside(joints: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mask of joints used by the official generators and their truncated integer positions."""
  x = joints[..., 0]
  y = joints[..., 1]
  with np.errstate(invalid='ignore'):
    xt = np.trunc(x)
    yt = np.trunc(y)
    ok = (joints[..., 2] > 0) & (xt >= 0) & (yt >= 0) & (xt < res) & (yt < res)
  xi = np.where(ok, xt, 0).astype(np.int64)
  yi = np.where(ok, yt, 0).astype(np.int64)
  return ok, xi, yi


def _drawn_joints(joints: np.ndarray, res: int, sigma: float | np.ndarray,
                  out: np.ndarray | None):
  """What both heatmap generators start from: the maps to draw into, and the joints the
  official rule draws (visible, truncated position inside the map) as rows `(x, y, v)`,
  their truncated `x` and `y`, their joint type and their sigma."""
  joints = np.asarray(joints, np.float64)
  n, k = joints.shape[0], joints.shape[1]
  hms = np.zeros((res, res, k), np.float32) if out is None else out
  ok, xi, yi = _visible_inside(joints[..., :3], res)
  person, joint = np.nonzero(ok)
  if np.ndim(sigma) > 0:
    sig = np.asarray(sigma, np.float64).reshape(n)[person]
  else:
    sig = np.full(len(person), float(sigma))
  return (hms, joints[person, joint], xi[person, joint], yi[person, joint],
          joint.astype(np.int64), sig)


def heatmaps(joints: np.ndarray, res: int, sigma: float | np.ndarray,
             out: np.ndarray | None = None) -> np.ndarray:
  """Official heatmap targets for one image, NHWC.

  Args:
    joints: `[N, K, 3]` (x, y, v) in output pixels, float64.
    res: output resolution R (square map).
    sigma: a scalar (official `HeatmapGenerator`) or one sigma per person `[N]`
      (official `ScaleAwareHeatmapGenerator`, which reads the sigma of joint 0).
    out: optional zeroed float32 `[R, R, K]` buffer to draw into.

  Returns:
    `[R, R, K]` float32 heatmaps.
  """
  hms, _, xs, ys, joint, sig_n = _drawn_joints(joints, res, sigma, out)
  if len(joint) == 0:
    return hms
  uniq, inv = np.unique(sig_n, return_inverse=True)
  kernels = [_kernel_f32(s) for s in uniq]
  size = max(g.shape[0] for g in kernels)
  stack = np.zeros((len(kernels), size, size), np.float32)
  for i, g in enumerate(kernels):
    stack[i, :g.shape[0], :g.shape[1]] = g
  ks = np.asarray([g.shape[0] for g in kernels], np.int64)
  # Same float64 expression order as the official `x - 3 * sigma - 1`.
  ulx = np.round(xs - 3 * sig_n - 1).astype(np.int64)
  uly = np.round(ys - 3 * sig_n - 1).astype(np.int64)
  brx = np.round(xs + 3 * sig_n + 2).astype(np.int64)
  bry = np.round(ys + 3 * sig_n + 2).astype(np.int64)
  return _draw(hms, stack, inv.astype(np.int64), ks, joint, xs, ys,
               ulx, uly, brx, bry)


@njit(nogil=True)
def _draw_subpixel(hms, jk, mx, my, sig):  # pragma: no cover - numba
  res = hms.shape[0]
  for n in range(jk.shape[0]):
    s = sig[n]
    r = 3.0 * s + 1.0
    x0 = max(0, int(np.floor(mx[n] - r)))
    x1 = min(res, int(np.floor(mx[n] + r)) + 1)
    y0 = max(0, int(np.floor(my[n] - r)))
    y1 = min(res, int(np.floor(my[n] + r)) + 1)
    k = jk[n]
    for yy in range(y0, y1):
      dy2 = (yy - my[n]) ** 2
      for xx in range(x0, x1):
        v = np.float32(np.exp(-((xx - mx[n]) ** 2 + dy2) / (2.0 * s * s)))
        if v > hms[yy, xx, k]:
          hms[yy, xx, k] = v
  return hms


def subpixel_heatmaps(joints: np.ndarray, res: int, sigma: float | np.ndarray,
                      out: np.ndarray | None = None) -> np.ndarray:
  """Heatmap targets that peak where the joint is, not at its truncated pixel (DARK).

  The official target centres each Gaussian on pixel `int(x)`, which the decoder reads back
  as `int(x) + 0.5`: up to half an output pixel of every label is lost, which at the 1/2
  resolution of a 128-pixel input is a whole input pixel, as large as COCO's tolerance for
  the eyes of a 40-pixel person. Here the Gaussian is centred on the continuous position
  (pixel `i` covers `[i, i + 1)`, so its centre is `i + 0.5`), sampled within `3 sigma + 1`
  pixels, and overlapping Gaussians of one joint type combine by maximum. Which joints are
  drawn is the official rule (visible, truncated position inside the map), so the joint
  indices of the associative-embedding loss still point at drawn peaks.

  Args and returns as :func:`heatmaps`.
  """
  hms, used, _, _, joint, sig = _drawn_joints(joints, res, sigma, out)
  if len(joint) == 0:
    return hms
  return _draw_subpixel(hms, joint, used[:, 0] - 0.5, used[:, 1] - 0.5, sig)


def joint_indices(joints: np.ndarray, res: int, max_num_people: int,
                  tag_per_joint: bool = True) -> np.ndarray:
  """Official associative-embedding joint indices for one image.

  Person `i` fills row `i`; its used joints (as in :func:`heatmaps`) go to consecutive
  slots in joint order as `(k*R*R + y*R + x, 1)` (`(y*R + x, 1)` without tag per joint).
  The official generator fails with more than `max_num_people` people; here the people
  that have at least one used joint are kept first (in order) and the rest are dropped
  with a warning, so the heatmaps still show everyone but only the first
  `max_num_people` are grouped by the loss.

  Args:
    joints: `[N, K, 3+]` (x, y, v, ...) in output pixels.
    res: output resolution R.
    max_num_people: M, rows of the result.
    tag_per_joint: whether the index addresses per-joint tag channels.

  Returns:
    `[M, K, 2]` int32.
  """
  joints = np.asarray(joints, np.float64)
  n, k = joints.shape[0], joints.shape[1]
  out = np.zeros((max_num_people, k, 2), np.int32)
  if n == 0:
    return out
  ok, xi, yi = _visible_inside(joints[..., :3], res)
  rows = np.arange(n)
  if n > max_num_people:
    used = ok.any(axis=1)
    rows = np.concatenate([rows[used], rows[~used]])[:max_num_people]
    _log.warning('%d people exceed max_num_people=%d; tags kept for %d of them',
                 n, max_num_people, max_num_people)
    ok, xi, yi = ok[rows], xi[rows], yi[rows]
  index = yi * res + xi
  if tag_per_joint:
    index = index + np.arange(k)[None, :] * (res * res)
  slot = np.cumsum(ok, axis=1) - 1
  p, j = np.nonzero(ok)
  out[p, slot[p, j], 0] = index[p, j]
  out[p, slot[p, j], 1] = 1
  return out


def person_sigmas(joints: np.ndarray, sigma: float, scale_aware: bool) -> float | np.ndarray:
  """The sigma argument of :func:`heatmaps`: the config sigma, or per person column 3."""
  if scale_aware:
    if joints.shape[-1] < 4:
      raise ValueError('scale_aware_sigma needs joints with a 4th (sigma) column')
    return joints[:, 0, 3] if joints.shape[0] else np.zeros((0,))
  return float(sigma)
