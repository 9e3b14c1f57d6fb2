"""DARK: distribution-aware coordinate representation (Zhang et al., CVPR 2020).

Two changes to the official top-down recipe, each usable on its own:

* Encoding (:func:`encode_unbiased`): the official target (README 7.3) centres its Gaussian
  on `int(x / stride + 0.5)`, discarding up to half a heatmap pixel (2 input px at stride 4)
  of every label. The unbiased target is centred on the sub-pixel position `x / stride`.
* Decoding (:func:`refine_dark`): the official quarter offset (README 8.4 step 2) moves the
  argmax by +-0.25 px whatever the true offset. DARK instead assumes the heatmap is a
  Gaussian, so its log is a quadratic whose maximum one Newton step from the integer argmax
  finds exactly: `offset = -H^-1 g`, with the gradient `g` and Hessian `H` of the log
  heatmap from finite differences. Network heatmaps are not Gaussian enough, so they are
  first smoothed by a Gaussian blur (kernel 11 for 256x192 inputs, as in mmpose).

Layouts follow the package: targets `[h, w, K]`, heatmap batches `[N, h, w, K]`,
coordinates `(x, y)` in heatmap pixels with pixel centres on integers.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from higherhrnet_jax.subpixel import blur_kernel_1d


def encode_unbiased(joints_xy: np.ndarray, visible: np.ndarray, heatmap_size_wh: Sequence[int],
                    sigma: float, stride: float | Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """Sub-pixel Gaussian targets: each map peaks (continuously) at `joints / stride`.

  Unlike the official 7.3 kernel the Gaussian is not truncated to a 6 sigma + 1 window:
  the whole map is filled, as in DARK's reference code and mmpose `MSRAHeatmap(unbiased=True)`,
  so every pixel's log value lies on one quadratic.

  Args:
    joints_xy: `[K, 2]` joint positions in input-crop pixels.
    visible: `[K]` visibility in {0, 1} (any weight in [0, 1] works); maps of joints with
      `visible < 0.5` stay 0.
    heatmap_size_wh: `(w, h)` of the heatmap.
    sigma: Gaussian standard deviation in heatmap pixels.
    stride: input size / heatmap size, one number or `(sx, sy)` (4 for HRNet).

  Returns:
    `target [h, w, K]` float32 and `weight [K]` float32; the weight is `visible`, or 0
    when the 3 sigma window `[mu - 3 sigma, mu + 3 sigma + 1)` misses the map (mmpose's rule).
  """
  w, h = int(heatmap_size_wh[0]), int(heatmap_size_wh[1])
  mu = np.asarray(joints_xy, np.float64).reshape(-1, 2) / np.asarray(stride, np.float64)
  weight = np.asarray(visible, np.float32).reshape(-1).copy()
  k = mu.shape[0]
  radius = 3 * sigma
  lo, hi = mu - radius, mu + radius + 1
  inside = (lo[:, 0] < w) & (lo[:, 1] < h) & (hi[:, 0] >= 0) & (hi[:, 1] >= 0)
  weight[~inside] = 0
  draw = inside & (weight > 0.5)
  xs = np.arange(w, dtype=np.float64)
  ys = np.arange(h, dtype=np.float64)
  dx2 = (xs[None, None, :] - mu[:, 0, None, None]) ** 2  # [K, 1, w]
  dy2 = (ys[None, :, None] - mu[:, 1, None, None]) ** 2  # [K, h, 1]
  g = np.exp(-(dx2 + dy2) / (2 * sigma * sigma)).astype(np.float32)  # [K, h, w]
  target = np.where(draw[:, None, None], g, np.float32(0))
  return np.ascontiguousarray(target.transpose(1, 2, 0)).reshape(h, w, k), weight


def _conv_axis(x: jax.Array, taps: np.ndarray, axis: int) -> jax.Array:
  # Shifted sums instead of lax.conv: exact float32 on every backend (no TF32 / bf16 passes).
  r = len(taps) // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  xp = jnp.pad(x, pad)
  n = x.shape[axis]
  out = jnp.zeros_like(x)
  for i, t in enumerate(taps):
    out = out + jnp.float32(t) * jax.lax.slice_in_dim(xp, i, i + n, axis=axis)
  return out


def gaussian_blur(heatmaps_nhwc: jax.Array, kernel_size: int = 11) -> jax.Array:
  """mmpose's DARK blur: zero-padded OpenCV Gaussian, rescaled to keep each map's maximum.

  Args:
    heatmaps_nhwc: `[N, h, w, K]` heatmaps.
    kernel_size: odd kernel size; 1 returns the input unchanged.

  Returns:
    `[N, h, w, K]` float32 blurred heatmaps.
  """
  x = jnp.asarray(heatmaps_nhwc, jnp.float32)
  if kernel_size == 1:
    return x
  taps = blur_kernel_1d(kernel_size)
  b = _conv_axis(_conv_axis(x, taps, 1), taps, 2)
  omax = jnp.max(x, axis=(1, 2), keepdims=True)
  bmax = jnp.max(b, axis=(1, 2), keepdims=True)
  # An all-zero map blurs to all zeros; keep it rather than divide by 0.
  ratio = jnp.where(bmax != 0, omax / jnp.where(bmax != 0, bmax, 1), 1)
  return b * ratio


def heatmap_maximum(heatmaps_nhwc: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Integer argmax per map, as the official `get_max_preds` (README 8.4 step 1).

  Args:
    heatmaps_nhwc: `[N, h, w, K]` heatmaps.

  Returns:
    `coords [N, K, 2]` float32 `(x, y)` of the first maximum in row-major order, `(0, 0)`
    where the maximum is <= 0, and `maxvals [N, K]`.
  """
  x = jnp.asarray(heatmaps_nhwc)
  n, h, w, k = x.shape
  flat = x.reshape(n, h * w, k)
  idx = jnp.argmax(flat, axis=1)  # [N, K], first occurrence
  maxvals = jnp.max(flat, axis=1)
  coords = jnp.stack([idx % w, idx // w], axis=-1).astype(jnp.float32)
  coords = jnp.where((maxvals > 0)[..., None], coords, 0.)
  return coords, maxvals


def refine_dark(heatmaps_nhwc: jax.Array, coords: jax.Array, blur_kernel: int = 11) -> jax.Array:
  """DARK decoding: one Newton step on the blurred log heatmap from each integer maximum.

  Follows mmpose `refine_keypoints_dark`: blur (:func:`gaussian_blur`), clip to >= 1e-10,
  log; at `(x, y) = int(coords)` the gradient uses the +-1 neighbours, the Hessian the +-2
  ones (`dxx = (f[x+2] - 2 f[x] + f[x-2]) / 4`, `dxy` from the four diagonal neighbours);
  both are exact for a quadratic, i.e. for a Gaussian heatmap.

  A coordinate is left as given when its ±2 neighbourhood leaves the map (`x <= 1`,
  `x >= w - 2`, likewise y: border maxima) or when the Hessian is singular (det == 0, e.g. a
  flat map); no other condition is imposed, as in mmpose.

  Args:
    heatmaps_nhwc: `[N, h, w, K]` raw heatmaps.
    coords: `[N, K, 2]` `(x, y)` integer maxima in heatmap pixels (:func:`heatmap_maximum`).
    blur_kernel: odd Gaussian blur size (static); 1 disables the blur, which is exact for
      targets that are already Gaussian.

  Returns:
    `[N, K, 2]` float32 refined coordinates in heatmap pixels.
  """
  x = gaussian_blur(heatmaps_nhwc, blur_kernel)
  n, h, w, k = x.shape
  logh = jnp.log(jnp.maximum(x, 1e-10)).reshape(n, h * w, k)
  coords = jnp.asarray(coords, jnp.float32)
  ix = coords[..., 0].astype(jnp.int32)  # truncation toward zero, as numpy astype(int)
  iy = coords[..., 1].astype(jnp.int32)
  ok = (ix > 1) & (ix < w - 2) & (iy > 1) & (iy < h - 2)
  cx = jnp.clip(ix, 2, w - 3)
  cy = jnp.clip(iy, 2, h - 3)

  def at(dx: int, dy: int) -> jax.Array:
    idx = (cy + dy) * w + (cx + dx)  # [N, K]
    return jnp.take_along_axis(logh, idx[:, None, :], axis=1)[:, 0, :]

  f0 = at(0, 0)
  gx = 0.5 * (at(1, 0) - at(-1, 0))
  gy = 0.5 * (at(0, 1) - at(0, -1))
  hxx = 0.25 * (at(2, 0) - 2 * f0 + at(-2, 0))
  hyy = 0.25 * (at(0, 2) - 2 * f0 + at(0, -2))
  hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
  det = hxx * hyy - hxy * hxy
  ok = ok & (det != 0)
  inv_det = 1 / jnp.where(det != 0, det, 1)
  ox = -(hyy * gx - hxy * gy) * inv_det
  oy = -(hxx * gy - hxy * gx) * inv_det
  offset = jnp.stack([ox, oy], axis=-1)
  return jnp.where(ok[..., None], coords + offset, coords)
