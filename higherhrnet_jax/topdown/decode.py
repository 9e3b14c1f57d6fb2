"""Top-down test path around the network: person box -> crop, and heatmaps -> joints.

The arithmetic is the official one (`get_affine_transform`, `flip_back` with
SHIFT_HEATMAP, `get_max_preds`, `get_final_preds`), down to the dtype of each step, so
that matrices, crops, flip averages and final joints are bit-identical:

* box scales (`records.box_to_center_scale`) are float32, and the crop matrix evaluates
  `200 * scale` in float32; MPII records carry float64 centres and scales, which
  therefore stay float64;
* the flip average `(out + flip_back(flipped)) * 0.5` is float32 and runs on the device;
* the argmax and the quarter-pixel offset are float32 and exist twice: on the host in
  NumPy and, jittable, in `jax.numpy` (:func:`heatmap_maxima`); the map back to the image
  is a float64 affine on the host, stored as float32.

Heatmaps are NHWC `[N, h, w, K]` throughout.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from higherhrnet_jax.inference.transforms import get_affine_transform


def crop_transform(center: Sequence[float] | np.ndarray, scale: Sequence[float] | np.ndarray,
                   input_size_wh: Sequence[int], inv: bool = False) -> np.ndarray:
  """The official crop matrix from image pixels to a `(W, H)` input, no rotation.

  `200 * scale` is evaluated in the dtype of `scale` (float32 box scales on the COCO test
  path, float64 for MPII records), as the official code does.

  Args:
    center: `(x, y)` box centre.
    scale: `(s_w, s_h)` in units of 200 px; only `s_w` sets the zoom.
    input_size_wh: `(W, H)` of the destination (network input or heatmap).
    inv: return the map destination -> image instead.

  Returns:
    float64 `[2, 3]`.
  """
  return get_affine_transform(center, np.asarray(scale), 0, input_size_wh, inv=inv,
                              keep_scale_dtype=True)


def crop(image: np.ndarray, center: Sequence[float] | np.ndarray,
         scale: Sequence[float] | np.ndarray, input_size_wh: Sequence[int]) -> np.ndarray:
  """Warps the person box to the network input (bilinear, black outside the image).

  Args:
    image: `[H_img, W_img, 3]` uint8 RGB.
    center, scale: as :func:`crop_transform`.
    input_size_wh: `(W, H)` of the network input.

  Returns:
    `[H, W, 3]` uint8.
  """
  if image.ndim != 3:
    raise ValueError(f'image: expected [H, W, C], got shape {image.shape}')
  w, h = (int(v) for v in input_size_wh)
  trans = crop_transform(center, scale, (w, h))
  out = cv2.warpAffine(image, trans, (w, h), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  return out.reshape(h, w, image.shape[2])


# ------------------------------------------------------------------------------ flip test


def flip_back(heatmaps: jax.Array, flip_index: Sequence[int], shift: bool = True) -> jax.Array:
  """Heatmaps of a mirrored crop, mapped back to the unmirrored crop's frame.

  Mirror the width, give every joint its flip partner's map, then (SHIFT_HEATMAP) move
  everything one column to the right. Input pixel `x` is heatmap `x / 4`; mirrored
  (`W - 1 - x`) and mirrored back on the map it lands at `x / 4 - 3/4`, and the official
  one-column shift over-compensates that by a quarter. Column 0 keeps its own value.

  Args:
    heatmaps: `[N, h, w, K]` outputs of the mirrored crops.
    flip_index: `[K]` static joint permutation of the keypoint spec.
    shift: the official `TEST.SHIFT_HEATMAP`.

  Returns:
    `[N, h, w, K]`, same dtype.
  """
  heatmaps = jnp.asarray(heatmaps)
  idx = np.asarray(flip_index, np.int32)
  if heatmaps.ndim != 4 or idx.shape != (heatmaps.shape[3],):
    raise ValueError(f'flip_back: heatmaps {heatmaps.shape} (expected [N, h, w, K]) and '
                     f'flip_index of length {idx.size} do not fit')
  out = heatmaps[:, :, ::-1, :][..., idx]
  if shift:
    out = jnp.concatenate([out[:, :, :1], out[:, :, :-1]], axis=2)
  return out


def average_flip(out: jax.Array, out_flipped: jax.Array, flip_index: Sequence[int],
                 shift: bool = True) -> jax.Array:
  """`(out + flip_back(out_flipped)) * 0.5`: the flip-test heatmaps handed to decoding."""
  return (out + flip_back(out_flipped, flip_index, shift)) * 0.5


# ---------------------------------------------------------------------------- decoding


def _check_heatmaps(heatmaps) -> tuple[int, int, int, int]:
  if heatmaps.ndim != 4:
    raise ValueError(f'heatmaps: expected [N, h, w, K], got shape {heatmaps.shape}')
  return tuple(int(s) for s in heatmaps.shape)


def get_max_preds(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per crop and joint, the heatmap maximum and its pixel (official `get_max_preds`).

  Ties go to the first pixel in row-major order; a maximum `<= 0` (or NaN) puts the joint
  at (0, 0) but its value is kept as the joint score.

  Args:
    heatmaps: `[N, h, w, K]` float32.

  Returns:
    `(coords [N, K, 2] float32 (x, y) in heatmap pixels, maxvals [N, K, 1] float32)`.
  """
  heatmaps = np.asarray(heatmaps)
  n, h, w, k = _check_heatmaps(heatmaps)
  flat = heatmaps.reshape(n, h * w, k)
  idx = np.argmax(flat, axis=1)
  maxvals = np.take_along_axis(flat, idx[:, None, :], axis=1)[:, 0]
  # Integer division: equal to the official float32 floor(idx / w) for any map under 2^24 px.
  coords = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
  coords = np.where((maxvals > 0)[..., None], coords, np.float32(0))
  return coords, maxvals[..., None].astype(np.float32)


def refine_coords(heatmaps: np.ndarray, coords: np.ndarray) -> np.ndarray:
  """Quarter-pixel step towards the higher neighbour (official POST_PROCESS).

  Only peaks with `1 < x < w - 1` and `1 < y < h - 1` move (both axes, so a peak in
  column 1 or row 1 stays put), each axis by `0.25 * sign(difference of its two
  neighbours)`, in float32.

  Args:
    heatmaps: `[N, h, w, K]`.
    coords: `[N, K, 2]` float32 from :func:`get_max_preds`.

  Returns:
    `[N, K, 2]` float32.
  """
  heatmaps = np.asarray(heatmaps)
  n, h, w, k = _check_heatmaps(heatmaps)
  coords = np.asarray(coords, np.float32)
  p = np.floor(coords + np.float32(0.5)).astype(np.int64)
  px, py = p[..., 0], p[..., 1]
  inside = (1 < px) & (px < w - 1) & (1 < py) & (py < h - 1)
  flat = heatmaps.reshape(n, h * w, k)

  def at(yy, xx):
    i = np.clip(yy * w + xx, 0, h * w - 1)
    return np.take_along_axis(flat, i[:, None, :], axis=1)[:, 0]

  diff = np.stack([at(py, px + 1) - at(py, px - 1), at(py + 1, px) - at(py - 1, px)], axis=-1)
  return np.where(inside[..., None], coords + np.sign(diff) * np.float32(0.25), coords)


def heatmap_maxima(heatmaps: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Jittable twin of :func:`get_max_preds` + :func:`refine_coords` (bit-identical).

  Runs where the heatmaps are, so only `[N, K, 3]` numbers come back to the host.

  Args:
    heatmaps: `[N, h, w, K]` float32.

  Returns:
    `(coords [N, K, 2] float32 refined heatmap coordinates, maxvals [N, K, 1] float32)`.
  """
  n, h, w, k = _check_heatmaps(heatmaps)
  flat = heatmaps.reshape(n, h * w, k)
  idx = jnp.argmax(flat, axis=1)
  maxvals = jnp.take_along_axis(flat, idx[:, None, :], axis=1)[:, 0]
  positive = maxvals > 0
  x = jnp.where(positive, idx % w, 0)
  y = jnp.where(positive, idx // w, 0)
  inside = (1 < x) & (x < w - 1) & (1 < y) & (y < h - 1)

  def at(yy, xx):
    i = jnp.clip(yy * w + xx, 0, h * w - 1)
    return jnp.take_along_axis(flat, i[:, None, :], axis=1)[:, 0]

  coords = jnp.stack([x, y], axis=-1).astype(jnp.float32)
  diff = jnp.stack([at(y, x + 1) - at(y, x - 1), at(y + 1, x) - at(y - 1, x)], axis=-1)
  step = jnp.sign(diff).astype(jnp.float32) * jnp.float32(0.25)
  coords = jnp.where(inside[..., None], coords + step, coords)
  return coords, maxvals[..., None].astype(jnp.float32)


def heatmap_to_image(coords: np.ndarray, center: np.ndarray, scale: np.ndarray,
                     heatmap_size_wh: Sequence[int]) -> np.ndarray:
  """Maps heatmap coordinates of each crop back to image pixels (official `transform_preds`).

  The inverse crop matrix for the heatmap size is applied in float64 and the result
  stored as float32. Heatmap pixel `x` is input pixel `4x` (no half-pixel term).

  Args:
    coords: `[N, K, 2]` heatmap coordinates.
    center: `[N, 2]` crop centres; float32 (COCO boxes) or float64 (MPII records).
    scale: `[N, 2]` crop scales, same convention.
    heatmap_size_wh: `(w, h)` of the heatmaps.

  Returns:
    `[N, K, 2]` float32 image coordinates.
  """
  coords = np.asarray(coords)
  center, scale = np.asarray(center), np.asarray(scale)
  if coords.ndim != 3 or coords.shape[2] != 2 or center.shape != (len(coords), 2) or \
      scale.shape != (len(coords), 2):
    raise ValueError(f'heatmap_to_image: coords {coords.shape} (expected [N, K, 2]), center '
                     f'{center.shape} and scale {scale.shape} (expected [N, 2]) do not fit')
  out = np.zeros(coords.shape, np.float32)
  xy = coords.astype(np.float64)
  for i in range(len(coords)):
    t = crop_transform(center[i], scale[i], heatmap_size_wh, inv=True)
    out[i, :, 0] = (xy[i, :, 0] * t[0, 0] + xy[i, :, 1] * t[0, 1]) + t[0, 2]
    out[i, :, 1] = (xy[i, :, 0] * t[1, 0] + xy[i, :, 1] * t[1, 1]) + t[1, 2]
  return out


def get_final_preds(heatmaps: np.ndarray, center: np.ndarray,
                    scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Joints in image pixels from flip-averaged heatmaps (official `get_final_preds`).

  Args:
    heatmaps: `[N, h, w, K]` float32.
    center: `[N, 2]` crop centres (dtype as returned by the loader: see
      :func:`heatmap_to_image`).
    scale: `[N, 2]` crop scales.

  Returns:
    `(preds [N, K, 2] float32 image (x, y), maxvals [N, K, 1] float32 joint scores)`.
  """
  heatmaps = np.asarray(heatmaps)
  _, h, w, _ = _check_heatmaps(heatmaps)
  coords, maxvals = get_max_preds(heatmaps)
  coords = refine_coords(heatmaps, coords)
  return heatmap_to_image(coords, center, scale, (w, h)), maxvals
