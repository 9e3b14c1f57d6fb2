"""End to end from image files to COCO metrics with perfect network outputs.

Ground-truth keypoints of the COCO sample are rendered as the outputs a perfect network
would give at each stage resolution after the test resize (and mirrored for the flip
call), then go through the real aggregation (bucketed batch), grouping, the map back to
image pixels and pycocotools. AP must be >= 0.95: this checks every coordinate convention
on the way (resize, stage strides, flip, projection, adjust, get_final_preds).
"""

import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import keypoints
from higherhrnet_jax.config import base_config
from higherhrnet_jax.evaluation import coco as C
from higherhrnet_jax.inference import outputs as O
from higherhrnet_jax.inference import transforms as T

SIGMA = 2.0
TAG_RADIUS = 2.0


def _render_stage(people_xy, visible, shape, stride, flip_width=None):
  """Heatmaps [h, w, K] and tag maps [h, w, K] of a perfect network at one stage.

  A network trained on the official targets (peak at the truncated joint position) puts
  its peak half a pixel before the joint on average, hence the centre `u / stride - 0.5`.
  """
  h, w = shape
  k = people_xy.shape[1]
  heat = np.zeros((h, w, k), np.float32)
  tags = np.zeros((h, w, k), np.float32)
  r = int(np.ceil(6 * SIGMA))  # beyond this the Gaussian is below 1e-7
  perm = np.asarray(keypoints.COCO.flip_index)
  for p, (xy, vis) in enumerate(zip(people_xy, visible)):
    if flip_width is not None:  # the mirrored image: joints swap sides and names
      xy = xy[perm].copy()
      vis = vis[perm]
      xy[:, 0] = flip_width - 1 - xy[:, 0]
    for j in range(k):
      if not vis[j]:
        continue
      cx, cy = xy[j] / stride - 0.5
      x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, w)
      y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, h)
      if x0 >= x1 or y0 >= y1:
        continue
      yy, xx = np.mgrid[y0:y1, x0:x1]
      d2 = (xx - cx) ** 2 + (yy - cy) ** 2
      hw = heat[y0:y1, x0:x1, j]
      heat[y0:y1, x0:x1, j] = np.maximum(hw, np.exp(-d2 / (2 * SIGMA**2)))
      tw = tags[y0:y1, x0:x1, j]
      tags[y0:y1, x0:x1, j] = np.where(d2 <= (TAG_RADIUS + 0.5) ** 2, 2.0 * (p + 1), tw)
  return heat, tags


def _perfect_outputs(t, scales, people, visible, input_size, flipped):
  """Per scale [out0 (h/4, w/4, 2K), out1 (h/2, w/2, K)] for one prepared image."""
  per_scale = []
  for s, image in zip(sorted(scales, reverse=True), t.images):
    h_in, w_in = image.shape[:2]
    _, center, scale = T.get_multi_scale_size(t.image_hw, input_size, s, min(scales))
    trans = T.get_affine_transform(center, scale, 0, (w_in, h_in))
    xy = people @ trans[:, :2].T + trans[:, 2]
    width = w_in if flipped else None
    h0, t0 = _render_stage(xy, visible, (h_in // 4, w_in // 4), 4,
                           None if width is None else width)
    h1, _ = _render_stage(xy, visible, (h_in // 2, w_in // 2), 2, width)
    per_scale.append([np.concatenate([h0, t0], axis=-1), h1])
  return per_scale


def _stage_arrays(per_image, batch, s, stage):
  shape = batch['images'][s].shape
  stride = 4 if stage == 0 else 2
  out = np.zeros((len(per_image), shape[1] // stride, shape[2] // stride,
                  per_image[0][s][stage].shape[-1]), np.float32)
  for b, o in enumerate(per_image):
    a = o[s][stage]
    out[b, :a.shape[0], :a.shape[1]] = a
  return jnp.asarray(out)


# The official flip test mirrors the pixel array (x -> w - 1 - x) and mirrors the outputs
# back the same way, while a network trained on truncated targets peaks half a pixel
# before the joint: the flipped call then lands one input pixel to the right of the
# plain one, and their average half a pixel (the flip bias analysed in UDP, Huang et al.,
# CVPR 2020). It is part of the official results, so the test expects it: x bias
# +0.5 input pixel with flip, 0 without; y bias 0.
@pytest.mark.parametrize('scales,flip,bias_x', [
    ((1.0,), True, 0.5),
    ((1.0,), False, 0.0),
    pytest.param((2.0, 1.0, 0.5), True, None, marks=pytest.mark.slow),
])
def test_perfect_outputs_give_high_ap(coco_sample_dir, scales, flip, bias_x):
  grouping = pytest.importorskip(
      'higherhrnet_jax.inference.grouping',
      reason='higherhrnet_jax.inference.grouping (parse) is not available yet')
  if not hasattr(grouping, 'parse'):
    pytest.skip('higherhrnet_jax.inference.grouping.parse is not available yet')
  gt_path = coco_sample_dir / 'test_coco.json'
  gt = json.loads(gt_path.read_text())
  config = base_config()
  config.test.scale_factor = scales
  config.test.flip_test = flip
  spec = O.OutputSpec.from_config(config)
  input_size = config.data.input_size

  prepared, people_all, image_ids = [], [], []
  for img in gt['images']:
    bgr = cv2.imread(str(coco_sample_dir / img['file_name']),
                     cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    t = T.prepare_test_input(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), input_size, scales)
    anns = [a for a in gt['annotations'] if a['image_id'] == img['id'] and a['num_keypoints'] > 0]
    kp = np.array([a['keypoints'] for a in anns], np.float64).reshape(len(anns), 17, 3)
    prepared.append(t)
    people_all.append(kp)
    image_ids.append(img['id'])

  outs = [_perfect_outputs(t, scales, kp[..., :2], kp[..., 2] > 0, input_size, False)
          for t, kp in zip(prepared, people_all)]
  flips = [_perfect_outputs(t, scales, kp[..., :2], kp[..., 2] > 0, input_size, True)
           for t, kp in zip(prepared, people_all)] if flip else None
  # One bucket for the four images (two landscape sizes, 768 and 832 wide).
  batch = T.bucket_batch(prepared, multiple=128)
  n = len(scales)
  outputs = [[_stage_arrays(outs, batch, s, k) for k in (0, 1)] for s in range(n)]
  flip_outputs = ([[_stage_arrays(flips, batch, s, k) for k in (0, 1)] for s in range(n)]
                  if flip else None)
  input_hw = [jnp.asarray(h) for h in batch['input_hw']]
  shapes = [im.shape[1:3] for im in batch['images']]
  aggregate = jax.jit(O.aggregate_outputs, static_argnums=(0, 4, 6))
  final, tags = aggregate(spec, outputs, flip_outputs, input_hw, tuple(shapes),
                          jnp.asarray(batch['base_hw']), batch['base_shape'])

  all_poses, all_scores = [], []
  for t, (hm, tg) in zip(prepared, O.crop_results(final, tags, batch['base_hw'])):
    poses, scores = grouping.parse(np.ascontiguousarray(hm), np.ascontiguousarray(tg), config)
    all_poses.append(T.get_final_preds(poses, t.center, t.scale, t.base_size))
    all_scores.append(scores)
  assert [len(p) for p in all_poses] == [len(kp) for kp in people_all]
  # Coordinates: each ground-truth person against its closest prediction, in pixels of
  # the scale-1 input (image pixels times the resize zoom). Besides the flip bias, only
  # the quarter-pixel quantization of the decoder remains.
  errors = []
  for t, poses, kp in zip(prepared, all_poses, people_all):
    zoom = t.base_size[1] / t.image_hw[0] if t.image_hw[1] >= t.image_hw[0] else (
        t.base_size[0] / t.image_hw[1])
    for person in kp:
      vis = person[:, 2] > 0
      d = [np.abs(p[vis, :2] - person[vis, :2]).mean() for p in poses]
      errors.append((poses[int(np.argmin(d))][vis, :2] - person[vis, :2]) * zoom)
  bias = np.concatenate(errors).mean(axis=0)
  if bias_x is not None:
    assert abs(bias[0] - bias_x) < 0.1 and abs(bias[1]) < 0.1, bias
  records = C.results_records(image_ids, all_poses, all_scores)
  stats = C.evaluate_coco(gt_path, records)
  assert stats['AP'] >= 0.95, stats
