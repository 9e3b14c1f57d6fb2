"""Test-time resize of an image to the network input, and the map back to image pixels.

The official test loop scales the short side of the image to the input size (rounded up to
a multiple of 64) and pads the long side, symmetrically around the image centre, to the
next multiple of 64 (`get_multi_scale_size` / `resize_align_multi_scale`). Predictions
are mapped back with the inverse similarity (`get_final_preds`). These functions keep the
official arithmetic (integer truncations, float32 point pairs solved by
`cv2.getAffineTransform`, `cv2.warpAffine` with bilinear taps and a zero border) so that
resized images are bit-identical and coordinates match to the last bit.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import cv2
import numpy as np

# OpenCV 5 runs bilinear uint8 warps in float32; OpenCV 4 used 1/32-pixel fixed point,
# which differs from the official fixtures by up to 6 grey levels on 11 % of the values.
OPENCV_MAJOR = int(cv2.__version__.split('.')[0])
_warned_opencv = False


def _check_opencv() -> None:
  global _warned_opencv
  if OPENCV_MAJOR < 5 and not _warned_opencv:
    _warned_opencv = True
    warnings.warn(f'OpenCV {cv2.__version__}: resized images differ slightly from the official '
                  'OpenCV 5 results; install opencv-python-headless>=5 for bit-exact inputs')


# Beyond this many pixels on the long side of a resized input the network would need tens
# of GB; such inputs (extreme panoramas) are refused with a clear message instead.
MAX_INPUT_SIDE = 8192


def as_rgb_image(image: np.ndarray, name: str = 'image') -> np.ndarray:
  """Validates an image and returns it as an [H, W, 3] array.

  Grayscale inputs ([H, W] or [H, W, 1]) are replicated to three channels, which is what
  decoding a grayscale JPEG with `cv2.IMREAD_COLOR` (the official loader) gives.

  Args:
    image: [H, W], [H, W, 1] or [H, W, 3] array (uint8 for the official pipeline).
    name: how to call the array in error messages.

  Returns:
    [H, W, 3] array of the same dtype.
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3:
    raise ValueError(f'{name}: expected an [H, W] or [H, W, C] array, got shape {image.shape}')
  if image.shape[0] == 0 or image.shape[1] == 0:
    raise ValueError(f'{name}: empty image of shape {image.shape}')
  if image.shape[2] == 1:
    image = np.repeat(image, 3, axis=2)
  if image.shape[2] != 3:
    raise ValueError(f'{name}: expected 1 or 3 channels (RGB), got {image.shape[2]}')
  return image


def _image_hw(image_or_hw) -> tuple[int, int]:
  """(h, w) of an image array, or of an explicit (h, w) pair."""
  if isinstance(image_or_hw, np.ndarray) and image_or_hw.ndim >= 2:
    h, w = image_or_hw.shape[:2]
  else:
    h, w = (int(v) for v in image_or_hw)
  if h <= 0 or w <= 0:
    raise ValueError(f'image: empty image of size h={h}, w={w}')
  return int(h), int(w)


def get_multi_scale_size(image_or_hw, input_size: int, current_scale: float,
                         min_scale: float) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
  """Network input size for one test scale (official `get_multi_scale_size`).

  Args:
    image_or_hw: the image ([H, W, ...] array) or its (h, w).
    input_size: `data.input_size` (512 for W32-512).
    current_scale: the test scale factor s.
    min_scale: the smallest test scale factor (the rounding to 64 happens at that level).

  Returns:
    `((w', h'), center, scale)`: input size width first; `center` int64 (2,) (x, y) of the
    image centre; `scale` float64 (2,) `[scale_w, scale_h]` in units of 200 px.
  """
  h, w = _image_hw(image_or_hw)
  if min_scale <= 0 or current_scale <= 0:
    raise ValueError(f'test.scale_factor: scales must be positive, got {current_scale}, {min_scale}')
  center = np.array([int(w / 2.0 + 0.5), int(h / 2.0 + 0.5)])
  min_input_size = int((min_scale * input_size + 63) // 64 * 64)
  if w < h:
    w_resized = int(min_input_size * current_scale / min_scale)
    h_resized = int(int((min_input_size / w * h + 63) // 64 * 64) * current_scale / min_scale)
    scale_w = w / 200.0
    scale_h = h_resized / w_resized * w / 200.0
  else:
    h_resized = int(min_input_size * current_scale / min_scale)
    w_resized = int(int((min_input_size / h * w + 63) // 64 * 64) * current_scale / min_scale)
    scale_h = h / 200.0
    scale_w = w_resized / h_resized * h / 200.0
  return (w_resized, h_resized), center, np.array([scale_w, scale_h])


def get_affine_transform(center: Sequence[float], scale: Sequence[float], rot: float,
                         output_size: Sequence[int], inv: bool = False,
                         keep_scale_dtype: bool = False) -> np.ndarray:
  """The official 2x3 affine from image pixels to an output of size (W, H).

  Three float32 point pairs (centre, a point half a box-width above it, and the point a
  quarter turn further) are solved with `cv2.getAffineTransform`, as the official code
  does; only `scale[0]` and `W` set the zoom, `k = W / (200 * scale[0])`.

  Args:
    center: (x, y) in the source image.
    scale: `[scale_w, scale_h]` in units of 200 px.
    rot: rotation in degrees.
    output_size: (W, H) of the destination.
    inv: return the inverse map (destination -> source) instead.
    keep_scale_dtype: evaluate `200 * scale` in the dtype of a floating `scale` rather
      than float64. The official top-down test path hands in float32 box scales, and the
      float32 product moves some crop matrices by up to 2e-5 px.

  Returns:
    float64 [2, 3] matrix.
  """
  center = np.asarray(center, np.float64)
  scale = np.asarray(scale)
  if not (keep_scale_dtype and np.issubdtype(scale.dtype, np.floating)):
    scale = scale.astype(np.float64)
  if scale.ndim == 0:
    scale = np.array([scale, scale])
  src_w = scale[0] * scale.dtype.type(200)
  dst_w, dst_h = float(output_size[0]), float(output_size[1])
  rad = np.pi * rot / 180.0
  sn, cs = np.sin(rad), np.cos(rad)
  # The point (0, -src_w / 2) rotated by `rot`.
  src_dir = np.array([src_w * 0.5 * sn, -src_w * 0.5 * cs])
  src = np.zeros((3, 2), np.float32)
  dst = np.zeros((3, 2), np.float32)
  src[0] = center
  src[1] = center + src_dir
  dst[0] = [dst_w * 0.5, dst_h * 0.5]
  dst[1] = np.array([dst_w * 0.5, dst_h * 0.5]) + np.array([0.0, -dst_w * 0.5], np.float32)
  for pts in (src, dst):
    d = pts[0] - pts[1]
    pts[2] = pts[1] + np.array([-d[1], d[0]], np.float32)
  if inv:
    return cv2.getAffineTransform(dst, src)
  return cv2.getAffineTransform(src, dst)


def resize_align_multi_scale(image: np.ndarray, input_size: int, current_scale: float,
                             min_scale: float, max_side: int = MAX_INPUT_SIDE
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Resizes an image to the network input of one test scale (official semantics).

  Args:
    image: [H, W, 3] (or grayscale [H, W] / [H, W, 1]) image, RGB uint8 in the pipeline.
    input_size: `data.input_size`.
    current_scale: the test scale factor s.
    min_scale: the smallest test scale factor.
    max_side: refuse resized inputs whose long side exceeds this (extreme panoramas).

  Returns:
    `(resized [h', w', 3], center, scale)`; center/scale as `get_multi_scale_size`.
  """
  image = as_rgb_image(image)
  size, center, scale = get_multi_scale_size(image, input_size, current_scale, min_scale)
  if max(size) > max_side:
    raise ValueError(
        f'image: a {image.shape[1]}x{image.shape[0]} (w x h) image resizes to {size[0]}x{size[1]} '
        f'at test scale {current_scale}, above the limit of {max_side} px per side; crop or tile '
        f'such panoramas (or raise max_side)')
  _check_opencv()
  trans = get_affine_transform(center, scale, 0, size)
  resized = cv2.warpAffine(image, trans, (int(size[0]), int(size[1])), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  if resized.ndim == 2:  # OpenCV drops a trailing singleton channel axis.
    resized = resized[:, :, None]
  return resized, center, scale


def get_final_preds(poses: np.ndarray, center: Sequence[float], scale: Sequence[float],
                    heatmap_size: Sequence[int]) -> np.ndarray:
  """Maps grouped poses from heatmap pixels back to image pixels (official `get_final_preds`).

  Every joint row is mapped, including missing joints at (0, 0) with score 0, exactly as
  the official code (float64 similarity, stored back into float32); scores and tags are
  copied unchanged.

  Args:
    poses: [P, K, 3 + T] float32 (x, y, score, tags...) in pixels of the final heatmaps;
      an empty array (P = 0, or shape (0,)) gives an empty result.
    center: (x, y) returned by the last `resize_align_multi_scale` call.
    scale: `[scale_w, scale_h]` from the same call.
    heatmap_size: (W, H) of the final heatmaps.

  Returns:
    [P, K, 3 + T] float32 in image pixels.
  """
  poses = np.asarray(poses, np.float32)
  if poses.size == 0:
    return poses.copy()
  if poses.ndim != 3 or poses.shape[2] < 2:
    raise ValueError(f'poses: expected [P, K, 3 + T], got shape {poses.shape}')
  trans = get_affine_transform(center, scale, 0, heatmap_size, inv=True)
  out = poses.copy()
  pts = np.ones(poses.shape[:2] + (3,), np.float64)
  pts[..., :2] = poses[..., :2]
  # Same products and sums as `np.dot(trans, [x, y, 1])` per joint.
  out[..., 0] = (pts[..., 0] * trans[0, 0] + pts[..., 1] * trans[0, 1]) + trans[0, 2]
  out[..., 1] = (pts[..., 0] * trans[1, 0] + pts[..., 1] * trans[1, 1]) + trans[1, 2]
  return out


# ----------------------------------------------------------------------------- batching


@dataclasses.dataclass
class TestInput:
  """One image prepared for the test loop.

  Attributes:
    images: per test scale (descending), the resized uint8 RGB input [h_s, w_s, 3].
    base_size: (w, h) of the base size the heatmaps are projected to.
    center: centre returned by the last resize call (goes to `get_final_preds`).
    scale: `[scale_w, scale_h]` of the last resize call.
    image_hw: (h, w) of the original image.
  """

  images: list[np.ndarray]
  base_size: tuple[int, int]
  center: np.ndarray
  scale: np.ndarray
  image_hw: tuple[int, int]


def prepare_test_input(image: np.ndarray, input_size: int, scale_factors: Sequence[float],
                       max_side: int = MAX_INPUT_SIDE, project2image: bool = True,
                       last_stage_stride: int = 2) -> TestInput:
  """Resizes one RGB image for every test scale, as the official test loop does.

  With `project2image` (`test.project2image`, the official default) the final maps have
  the base size (the scale-1 input size); without it they have the size of the largest
  scale's last network stage (input / `last_stage_stride`), and `base_size` says so.
  """
  image = as_rgb_image(image)
  if image.dtype != np.uint8:
    raise ValueError(f'image: expected uint8 RGB, got dtype {image.dtype}')
  scales = sorted((float(s) for s in scale_factors), reverse=True)
  min_scale = min(scales)
  base_size, _, _ = get_multi_scale_size(image, input_size, 1.0, min_scale)
  images, center, scale = [], None, None
  for s in scales:
    resized, center, scale = resize_align_multi_scale(image, input_size, s, min_scale, max_side)
    if resized.shape[0] % 32 or resized.shape[1] % 32:
      raise ValueError(f'test.scale_factor: scale {s} gives a {resized.shape[1]}x{resized.shape[0]} '
                       'input; the network needs multiples of 32')
    images.append(resized)
  if not project2image:
    h0, w0 = images[0].shape[:2]
    base_size = (w0 // last_stage_stride, h0 // last_stage_stride)
  return TestInput(images, (int(base_size[0]), int(base_size[1])), center, scale,
                   (int(image.shape[0]), int(image.shape[1])))


def _round_up(v: int, m: int) -> int:
  return -(-int(v) // m) * m


def bucket_batch(inputs: Sequence[TestInput], multiple: int = 64) -> dict:
  """Pads a batch of prepared images to one bucket (bottom/right, value 0).

  Each side is rounded up to `multiple` and the batch takes the largest. With
  `multiple = 64` and images of equal official size nothing is padded, and the network
  outputs are the official ones; other padding is exact for the aggregation but changes
  the network outputs slightly (see `higherhrnet_jax.inference.outputs`).

  Returns:
    dict with `images` (tuple per scale of uint8 [B, H_s, W_s, 3]), `input_hw` (tuple per
    scale of int32 [B, 2]), `base_hw` (int32 [B, 2]) and `base_shape` (static (Hb, Wb)).
  """
  if not inputs:
    raise ValueError('inputs: empty batch')
  if multiple <= 0 or multiple % 32:
    raise ValueError(f'test.shape_bucket: must be a positive multiple of 32, got {multiple}')
  num_scales = len(inputs[0].images)
  images, input_hw = [], []
  for s in range(num_scales):
    hws = np.array([t.images[s].shape[:2] for t in inputs], np.int32)
    shape = (max(_round_up(h, multiple) for h in hws[:, 0]),
             max(_round_up(w, multiple) for w in hws[:, 1]))
    batch = np.zeros((len(inputs), *shape, 3), np.uint8)
    for b, t in enumerate(inputs):
      h, w = t.images[s].shape[:2]
      batch[b, :h, :w] = t.images[s]
    images.append(batch)
    input_hw.append(hws)
  base_hw = np.array([(t.base_size[1], t.base_size[0]) for t in inputs], np.int32)
  base_shape = (max(_round_up(h, multiple) for h in base_hw[:, 0]),
                max(_round_up(w, multiple) for w in base_hw[:, 1]))
  return dict(images=tuple(images), input_hw=tuple(input_hw), base_hw=base_hw,
              base_shape=base_shape)
