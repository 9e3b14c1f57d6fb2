"""End to end from image files to COCO metrics with perfect network outputs.

Ground-truth keypoints of the COCO sample are rendered (`bench/oracle.py`) as the outputs
a perfect network would give at each stage resolution after the test resize (and mirrored
for the flip call), then go through the real aggregation (bucketed batch), grouping, the
map back to image pixels and pycocotools. AP must be >= 0.95: this checks every coordinate convention
on the way (resize, stage strides, flip, projection, adjust, get_final_preds).
"""

import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import oracle
from higherhrnet_jax.config import base_config
from higherhrnet_jax.evaluation import coco as C
from higherhrnet_jax.inference import outputs as O
from higherhrnet_jax.inference import transforms as T

import composed  # tests/inference/composed.py


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

  # One bucket for the four images (two landscape sizes, 768 and 832 wide).
  batch = T.bucket_batch(prepared, multiple=128)
  outputs = oracle.batch_outputs(
      [oracle.render_outputs(t, kp, spec, input_size) for t, kp in zip(prepared, people_all)],
      batch, spec)
  flip_outputs = oracle.batch_outputs(
      [oracle.render_outputs(t, kp, spec, input_size, flipped=True)
       for t, kp in zip(prepared, people_all)], batch, spec) if flip else None
  input_hw = [jnp.asarray(h) for h in batch['input_hw']]
  shapes = [im.shape[1:3] for im in batch['images']]
  aggregate = jax.jit(O.aggregate_outputs, static_argnums=(0, 4, 6))
  final, tags = aggregate(spec, outputs, flip_outputs, input_hw, tuple(shapes),
                          jnp.asarray(batch['base_hw']), batch['base_shape'])

  all_poses, all_scores = [], []
  for t, (hm, tg) in zip(prepared, composed.crop(final, tags, batch['base_hw'])):
    poses, scores = grouping.parse(np.ascontiguousarray(hm), np.ascontiguousarray(tg),
                                   grouping.GroupingSpec.from_config(config))
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
