"""The outputs a perfect network would give: ground-truth keypoints rendered as stage outputs.

Feeding these through the real aggregation, grouping and evaluation gives the upper bound of
the test pipeline (an "oracle" analysis): AP near 1 proves the coordinate conventions end
to end, and the post-processing time measured on them is that of a trained network with
well-separated people rather than of random weights (which flood grouping with hundreds of
spurious people).

Conventions: a network trained on the official targets (peak at the truncated joint
position) puts its peak half a pixel before the joint on average, hence peak centres at
`xy / stride - 0.5`. Heatmaps are Gaussians of `sigma` output pixels; each person's tag
is `2 (p + 1)` within `tag_radius` of its joints (ties of the rounded tag distance
are then impossible). Layout: the HigherHRNet heads, stage 0 at stride 4 with
[K heatmaps, K tags], later stages at half the previous stride with K heatmaps.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from higherhrnet_jax.inference import outputs as outputs_lib
from higherhrnet_jax.inference import transforms


def _render_stage(xy: np.ndarray, visible: np.ndarray, shape: tuple[int, int], stride: int,
                  sigma: float, tag_radius: float) -> tuple[np.ndarray, np.ndarray]:
  """Heatmaps and tag maps [h, w, K] of `xy` [P, K, 2] (input pixels) at one stride."""
  h, w = shape
  k = xy.shape[1]
  heat = np.zeros((h, w, k), np.float32)
  tags = np.zeros((h, w, k), np.float32)
  r = int(np.ceil(6 * sigma))  # beyond this the Gaussian is below 1e-7
  for p in range(xy.shape[0]):
    for j in range(k):
      if not visible[p, j]:
        continue
      cx, cy = xy[p, j] / stride - 0.5
      if not (np.isfinite(cx) and np.isfinite(cy)):
        continue
      x0, x1 = max(int(np.floor(cx)) - r, 0), min(int(np.floor(cx)) + r + 1, w)
      y0, y1 = max(int(np.floor(cy)) - r, 0), min(int(np.floor(cy)) + r + 1, h)
      if x0 >= x1 or y0 >= y1:
        continue
      yy, xx = np.mgrid[y0:y1, x0:x1]
      d2 = (xx - cx) ** 2 + (yy - cy) ** 2
      patch = heat[y0:y1, x0:x1, j]
      heat[y0:y1, x0:x1, j] = np.maximum(patch, np.exp(-d2 / (2 * sigma**2)))
      tag_patch = tags[y0:y1, x0:x1, j]
      tags[y0:y1, x0:x1, j] = np.where(d2 <= (tag_radius + 0.5) ** 2, 2.0 * (p + 1),
                                       tag_patch)
  return heat, tags


def render_outputs(test_input: transforms.TestInput, keypoints: np.ndarray,
                   spec: outputs_lib.OutputSpec, input_size: int, flipped: bool = False,
                   sigma: float = 2.0,
                   tag_radius: float = 2.0) -> list[list[np.ndarray]]:
  """Per test scale, per stage, the outputs of a perfect network for one prepared image.

  Args:
    test_input: the image prepared by `transforms.prepare_test_input` (same scales as spec).
    keypoints: [P, K, 3] ground truth (x, y, v) in original image pixels; v > 0 is labelled.
    spec: output spec (joints, flip index, stages, scales).
    input_size: `data.input_size` the image was prepared with.
    flipped: render for the mirrored input of the flip test (joints swap sides and names).
    sigma: Gaussian sigma in output pixels.
    tag_radius: radius (output pixels) around each joint holding the person's tag.

  Returns:
    per scale (descending, as `test_input.images`), per stage, float32 [h_s, w_s, C]
    unpadded maps (stage 0: 2K channels, later stages: K).
  """
  keypoints = np.asarray(keypoints, np.float64).reshape(-1, spec.num_joints, 3)
  if not spec.tag_per_joint:
    raise NotImplementedError('oracle outputs: only per-joint tags (tag_per_joint=True)')
  scales = sorted(spec.scale_factors, reverse=True)
  if len(scales) != len(test_input.images):
    raise ValueError(f'oracle outputs: spec has {len(scales)} scales, the input '
                     f'{len(test_input.images)}')
  visible = keypoints[..., 2] > 0
  perm = np.asarray(spec.flip_index)
  per_scale = []
  for s, image in zip(scales, test_input.images):
    h_in, w_in = image.shape[:2]
    _, center, scale = transforms.get_multi_scale_size(test_input.image_hw, input_size, s,
                                                       min(scales))
    trans = transforms.get_affine_transform(center, scale, 0, (w_in, h_in))
    xy = keypoints[..., :2] @ trans[:, :2].T + trans[:, 2]
    vis = visible
    if flipped:
      xy, vis = xy[:, perm].copy(), visible[:, perm]
      xy[..., 0] = w_in - 1 - xy[..., 0]
    stages, stride = [], 4
    for i in range(len(spec.stage_heatmaps)):
      heat, tags = _render_stage(xy, vis, (h_in // stride, w_in // stride), stride, sigma,
                                 tag_radius)
      stages.append(np.concatenate([heat, tags], axis=-1) if i == 0 else heat)
      stride //= 2
    per_scale.append(stages)
  return per_scale


def batch_outputs(per_image: Sequence[list[list[np.ndarray]]], bucket: dict,
                  spec: outputs_lib.OutputSpec):
  """Pads per-image outputs into a bucket's shapes: the `network_outputs` structure.

  Args:
    per_image: `render_outputs` results for the images of `bucket`, in order.
    bucket: `transforms.bucket_batch` of the same images.
    spec: output spec.

  Returns:
    per scale, per stage, jnp float32 [B, H_s / stride, W_s / stride, C].
  """
  out = []
  for s, images in enumerate(bucket['images']):
    stages, stride = [], 4
    for i in range(len(spec.stage_heatmaps)):
      c = per_image[0][s][i].shape[-1]
      a = np.zeros((len(per_image), images.shape[1] // stride, images.shape[2] // stride, c),
                   np.float32)
      for b, o in enumerate(per_image):
        m = o[s][i]
        a[b, :m.shape[0], :m.shape[1]] = m
      stages.append(jnp.asarray(a))
      stride //= 2
    out.append(stages)
  return out
