"""UDP: unbiased data processing (Huang et al., CVPR 2020).

The official pipeline measures sizes in pixel *counts*: the crop maps the box width `bw` to
`W` (README 8.2), and heatmap pixel `i` stands for input pixel `4 i` (8.4 step 3). With
pixel centres on integers, an image of `W` pixels spans `W - 1` units, so both rules are off
by a fraction of a pixel, and flipping makes it worse: the input flip `x -> W - 1 - x` sends
heatmap column `i` to `w - 1/4 - i`, while reversing the heatmap sends it to `w - 1 - i`;
the official one-column shift (8.3) trades that 0.75 px error for a 0.25 px one.

UDP measures in units instead: the box edges `c +- bw / 2` go to input pixels `0` and
`W - 1`, and heatmap `i` stands for input `i (W - 1) / (w - 1)`. Then flipping the input is
exactly reversing the heatmap columns, so :func:`flip_back_udp` needs no shift.

Units: `scale` is the box size divided by `pixel_std`. The official top-down code (and
mmpose 0.x) uses `pixel_std = 200` (`scale * 200` is the padded box in pixels); mmpose 1.x
`bbox_scale` is in pixels, i.e. pass `pixel_std=1`. Coordinates are `(x, y)`, pixel centres
on integers; heatmap batches are `[N, h, w, K]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from higherhrnet_jax.topdown import dark

PIXEL_STD = 200.0


def _rotation(rot_deg: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  a = np.deg2rad(np.asarray(rot_deg, np.float64))
  return np.cos(a), np.sin(a)


def _input_per_heatmap_px(input_size_wh: Sequence[int],
                          heatmap_size_wh: Sequence[int]) -> np.ndarray:
  return (np.asarray(input_size_wh, np.float64) - 1) / (np.asarray(heatmap_size_wh, np.float64) - 1)


def udp_warp_matrix(center: Sequence[float], scale: Sequence[float], rot: float,
                    input_size_wh: Sequence[int], *, pixel_std: float = PIXEL_STD,
                    inv: bool = False) -> np.ndarray:
  """Image -> input-crop affine under UDP, `[2, 3]` float64 (its inverse with `inv=True`).

  `q = D R (p - c) + ((W - 1) / 2, (H - 1) / 2)` with `D = diag((W - 1) / bw, (H - 1) / bh)`,
  `(bw, bh) = scale * pixel_std`. `R = [[cos a, sin a], [-sin a, cos a]]` turns the same way
  as the official `get_affine_transform` (README 8.2); mmpose's `get_udp_warp_matrix(rot)`
  turns the other way (it equals this matrix at `-rot`; training draws are symmetric).
  Unlike the official matrix, both box sides are used, so for a box of aspect `W / H` the
  zoom differs slightly per axis (`(W - 1) / bw` vs `(H - 1) / bh`), as in mmpose.

  Args:
    center: `(cx, cy)` box centre in image pixels.
    scale: `(sw, sh)` box size in units of `pixel_std` pixels.
    rot: rotation in degrees.
    input_size_wh: `(W, H)` of the network input.
    pixel_std: pixels per unit of `scale` (200 official, 1 for boxes in pixels).
    inv: return the input -> image matrix instead.

  Returns:
    `[2, 3]` float64 matrix for `cv2.warpAffine` / `dst = M @ (x, y, 1)`.
  """
  c = np.asarray(center, np.float64)
  box = np.asarray(scale, np.float64) * pixel_std
  size = np.asarray(input_size_wh, np.float64) - 1
  cs, sn = _rotation(rot)
  r = np.array([[cs, sn], [-sn, cs]])
  o = size / 2
  if inv:
    lin = r.T * (box / size)[None, :]  # R^T D^-1
    return np.concatenate([lin, (c - lin @ o)[:, None]], axis=1)
  lin = (size / box)[:, None] * r  # D R
  return np.concatenate([lin, (o - lin @ c)[:, None]], axis=1)


def encode_udp(joints_xy_input_px: np.ndarray, visible: np.ndarray, input_size_wh: Sequence[int],
               heatmap_size_wh: Sequence[int], sigma: float) -> tuple[np.ndarray, np.ndarray]:
  """UDP Gaussian targets (mmpose `UDPHeatmap`): sub-pixel centres in a 6 sigma + 1 window.

  The joint maps to heatmap `mu = x (w - 1) / (W - 1)`; the window is the official one
  (centred on `int(mu + 0.5)`, radius `3 sigma`, README 7.3) but every value is the Gaussian
  at its distance from the sub-pixel `mu`, so the continuous peak is unbiased.

  Args:
    joints_xy_input_px: `[K, 2]` joints in input-crop pixels (after :func:`udp_warp_matrix`).
    visible: `[K]` visibility in {0, 1}; maps of joints with `visible < 0.5` stay 0.
    input_size_wh: `(W, H)` network input.
    heatmap_size_wh: `(w, h)` heatmap.
    sigma: Gaussian standard deviation in heatmap pixels (integer-valued, as officially).

  Returns:
    `target [h, w, K]` float32 and `weight [K]` float32 (`visible`, or 0 when the window
    misses the map).
  """
  w, h = int(heatmap_size_wh[0]), int(heatmap_size_wh[1])
  factor = _input_per_heatmap_px(input_size_wh, heatmap_size_wh)
  mu = np.asarray(joints_xy_input_px, np.float64).reshape(-1, 2) / factor
  weight = np.asarray(visible, np.float32).reshape(-1).copy()
  radius = 3 * sigma
  centre = np.trunc(mu + 0.5)  # Python int(): toward zero, as the official code
  lo = np.trunc(centre - radius)
  hi = np.trunc(centre + radius + 1)
  inside = (lo[:, 0] < w) & (lo[:, 1] < h) & (hi[:, 0] >= 0) & (hi[:, 1] >= 0)
  weight[~inside] = 0
  draw = inside & (weight > 0.5)
  xs = np.arange(w, dtype=np.float64)
  ys = np.arange(h, dtype=np.float64)
  in_x = (xs[None, :] >= lo[:, :1]) & (xs[None, :] < hi[:, :1])  # [K, w]
  in_y = (ys[None, :] >= lo[:, 1:]) & (ys[None, :] < hi[:, 1:])  # [K, h]
  dx2 = (xs[None, None, :] - mu[:, 0, None, None]) ** 2
  dy2 = (ys[None, :, None] - mu[:, 1, None, None]) ** 2
  g = np.exp(-(dx2 + dy2) / (2 * sigma * sigma)).astype(np.float32)  # [K, h, w]
  mask = draw[:, None, None] & in_y[:, :, None] & in_x[:, None, :]
  target = np.where(mask, g, np.float32(0))
  return np.ascontiguousarray(target.transpose(1, 2, 0)), weight


def to_input(coords_heatmap: np.ndarray, input_size_wh: Sequence[int],
             heatmap_size_wh: Sequence[int]) -> np.ndarray:
  """Heatmap -> input-crop pixels: `q = i (W - 1) / (w - 1)` (float64)."""
  factor = _input_per_heatmap_px(input_size_wh, heatmap_size_wh)
  return np.asarray(coords_heatmap, np.float64) * factor


def to_image(coords_heatmap: np.ndarray, center: np.ndarray, scale: np.ndarray,
             input_size_wh: Sequence[int], heatmap_size_wh: Sequence[int], *,
             rot: float | np.ndarray = 0.0, pixel_std: float = PIXEL_STD) -> np.ndarray:
  """Heatmap coordinates back to image pixels: the inverse of the UDP crop and encoding.

  Equals mmpose's `coords / (w - 1) * bbox_scale + center - bbox_scale / 2` at `rot = 0`.
  Runs on the host in float64, as the official `transform_preds` (README 8.4 step 3).

  Args:
    coords_heatmap: `[..., K, 2]` `(x, y)` in heatmap pixels.
    center: `[..., 2]` box centres in image pixels.
    scale: `[..., 2]` box sizes in units of `pixel_std`.
    input_size_wh: `(W, H)` network input.
    heatmap_size_wh: `(w, h)` heatmap.
    rot: crop rotation in degrees, scalar or `[...]` (0 at test time).
    pixel_std: pixels per unit of `scale`.

  Returns:
    `[..., K, 2]` float64 image coordinates.
  """
  q = to_input(coords_heatmap, input_size_wh, heatmap_size_wh)
  size = np.asarray(input_size_wh, np.float64) - 1
  box = np.asarray(scale, np.float64)[..., None, :] * pixel_std
  u = (q - size / 2) * box / size  # D^-1 (q - o)
  cs, sn = _rotation(rot)
  cs, sn = cs[..., None], sn[..., None]
  x = cs * u[..., 0] - sn * u[..., 1]  # R^T u
  y = sn * u[..., 0] + cs * u[..., 1]
  return np.stack([x, y], axis=-1) + np.asarray(center, np.float64)[..., None, :]


def _decode_heatmaps(heatmaps_nhwc: jax.Array, blur_kernel: int) -> tuple[jax.Array, jax.Array]:
  coords, maxvals = dark.heatmap_maximum(heatmaps_nhwc)
  return dark.refine_dark(heatmaps_nhwc, coords, blur_kernel), maxvals


_decode_heatmaps_jit = jax.jit(_decode_heatmaps, static_argnames='blur_kernel')


def decode_udp(heatmaps_nhwc: jax.Array, center: np.ndarray, scale: np.ndarray,
               input_size_wh: Sequence[int], *, blur_kernel: int = 11,
               rot: float | np.ndarray = 0.0,
               pixel_std: float = PIXEL_STD) -> tuple[np.ndarray, np.ndarray]:
  """UDP + DARK decoding: argmax, :func:`dark.refine_dark` on device, :func:`to_image` on host.

  mmpose's `UDPHeatmap` refines with `refine_keypoints_dark_udp` instead (clip to
  [1e-3, 50], +-1 differences for the Hessian, applied at the border too); this uses the
  DARK refinement with its border and singularity guards.

  Args:
    heatmaps_nhwc: `[N, h, w, K]` heatmaps (flip-averaged with :func:`flip_back_udp`).
    center: `[N, 2]` box centres in image pixels.
    scale: `[N, 2]` box sizes in units of `pixel_std`.
    input_size_wh: `(W, H)` network input.
    blur_kernel: DARK blur size (1: no blur).
    rot: crop rotation in degrees.
    pixel_std: pixels per unit of `scale`.

  Returns:
    `coords [N, K, 2]` float64 image pixels and `maxvals [N, K]` float32 (raw maxima).
  """
  x = jnp.asarray(heatmaps_nhwc)
  coords, maxvals = _decode_heatmaps_jit(x, blur_kernel=blur_kernel)
  hw = (x.shape[2], x.shape[1])
  return (to_image(np.asarray(coords), center, scale, input_size_wh, hw, rot=rot,
                   pixel_std=pixel_std), np.asarray(maxvals))


def flip_back_udp(heatmaps_nhwc: jax.Array, flip_index: Sequence[int]) -> jax.Array:
  """Heatmaps of the mirrored crop -> heatmaps of the crop: mirror and swap pairs, no shift.

  Args:
    heatmaps_nhwc: `[N, h, w, K]` outputs for the horizontally flipped input.
    flip_index: `[K]` channel permutation (joint `k` of the mirror is `flip_index[k]`).

  Returns:
    `[N, h, w, K]`, a pure permutation of the input values (bitwise).
  """
  x = jnp.asarray(heatmaps_nhwc)
  return jnp.take(x[:, :, ::-1, :], jnp.asarray(np.asarray(flip_index, np.int32)), axis=3)
