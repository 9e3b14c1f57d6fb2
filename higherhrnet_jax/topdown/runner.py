"""Evaluating a top-down model on a split: person boxes, crops, joints, results, metrics.

Person boxes come from a detection file in the official format (`test.person_boxes`) or,
when none is given, from the ground truth (the official `USE_GT_BBOX` path: cleaned boxes,
score 1). Each image is decoded once and all its crops go through the network in large
batches; unreadable images are skipped and counted (their boxes give no detections).
Then rescoring, per-image OKS-NMS, the results file and pycocotools, as the official
`COCODataset.evaluate`. In a multi-process job each process predicts its contiguous block of
the images; the joints are gathered in image order, so every process gets the metrics of a
single process and process 0 writes the files.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any

import numpy as np

from higherhrnet_jax import distributed, keypoints, visualize
from higherhrnet_jax.data import coco as coco_data
from higherhrnet_jax.evaluation import coco as coco_eval
from higherhrnet_jax.topdown import evaluation, mpii, records, samples
from higherhrnet_jax.topdown.predictor import TopDownPredictor, crop_boxes

_log = logging.getLogger(__name__)

DRAW_SCORE_THRESHOLD = 0.2


def person_boxes(config: Any, source: coco_data.KeypointSource, aspect_ratio: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """`(image_ids [N], centers [N, 2], scales [N, 2], box scores [N])` of the test crops."""
  t = config.test
  if t.person_boxes:
    det = evaluation.load_person_detections(t.person_boxes, float(t.image_thre), aspect_ratio)
    known = set(source.ids)
    unknown = sorted(set(det.image_id.tolist()) - known)
    if unknown:
      raise ValueError(f'config.test.person_boxes: {t.person_boxes} has boxes on images that are '
                       f'not in {source.annotation_file}: ids {unknown[:5]}')
    return det.image_id, det.center, det.scale, det.score
  people = records.coco_records(source, aspect_ratio)
  ids = np.asarray([r.image_id for r in people], np.int64)
  centers = np.asarray([r.center for r in people], np.float32).reshape(-1, 2)
  scales = np.asarray([r.scale for r in people], np.float32).reshape(-1, 2)
  return ids, centers, scales, np.ones(len(people))


def evaluate(predictor: TopDownPredictor, config: Any, *,
             source: coco_data.KeypointSource | None = None,
             out_dir: str | pathlib.Path | None = None, max_images: int = 0, render: int = 0,
             progress: bool = False) -> dict[str, Any]:
  """Predicts every person box of the test split and scores the results.

  Args:
    predictor: compiled top-down inference.
    config: full config (`dataset.*` locates the split, `test.*` the boxes and thresholds).
    source: the split (default: `dataset.test_split`).
    out_dir: receives `results.json`, `metrics.json` and up to `render` pictures.
    max_images: evaluate only the first N images that have boxes (0: all).
    render: number of pictures to draw.
    progress: show a progress bar.

  Returns:
    The 10 COCO stats, `num_images`, `num_people` (crops), `num_skipped_images`,
    `network_ms` / `crop_ms` per image and `wall_s`.
  """
  if config.dataset.name == 'mpii':
    return evaluate_mpii(predictor, config, out_dir=out_dir, max_images=max_images,
                         progress=progress)
  t_start = time.perf_counter()
  source = source or coco_data.source_from_config(config, train=False)
  spec = keypoints.spec_from_config(config.dataset.keypoints)
  image_ids, centers, scales, scores = person_boxes(config, source, predictor.spec.input_wh[0] /
                                                    predictor.spec.input_wh[1])
  order = list(dict.fromkeys(image_ids.tolist()))  # images in order of first appearance
  if max_images:
    order = order[:max_images]
  index_of = {image_id: i for i, image_id in enumerate(source.ids)}
  by_image: dict[int, list[int]] = {}
  for i, image_id in enumerate(image_ids.tolist()):
    by_image.setdefault(image_id, []).append(i)
  mine = distributed.my_part(order)
  drawn: dict[int, np.ndarray] = {}  # pictures: process 0's first images

  def predict_my_part() -> dict[str, Any]:
    images = mine
    if progress:
      import tqdm
      images = tqdm.tqdm(mine, desc='eval', unit='img')
    skipped: list[str] = []
    done_idx, joints = [], []
    pending_idx, pending_crops = [], []
    t_crop = t_net = 0.0

    def flush():
      nonlocal t_net
      if not pending_idx:
        return
      t0, compiled = time.perf_counter(), predictor.compile_seconds
      idx = np.asarray(pending_idx)
      joints.append(predictor.predict_crops(np.concatenate(pending_crops), centers[idx],
                                            scales[idx]))
      done_idx.extend(pending_idx)
      pending_idx.clear()
      pending_crops.clear()
      t_net += time.perf_counter() - t0 - (predictor.compile_seconds - compiled)

    for image_id in images:
      try:
        image = source.load_image(index_of[image_id])
      except coco_data.CorruptImageError as e:
        skipped.append(str(e))
        _log.warning('skipping unreadable image: %s', e)
        continue
      if len(drawn) < render and distributed.is_chief():
        drawn[image_id] = image
      t0 = time.perf_counter()
      idx = by_image[image_id]
      pending_crops.append(crop_boxes(image, centers[idx], scales[idx], predictor.spec))
      pending_idx.extend(idx)
      t_crop += time.perf_counter() - t0
      if len(pending_idx) >= predictor.batch_size:
        flush()
    flush()
    preds = np.concatenate(joints) if joints else np.zeros((0, spec.num_joints, 3), np.float32)
    return {'idx': np.asarray(done_idx, np.int64), 'preds': preds, 'skipped': skipped,
            'crop_s': t_crop, 'network_s': t_net, 'compile_s': predictor.compile_seconds}

  parts = distributed.gather(predict_my_part)
  idx = np.concatenate([p['idx'] for p in parts])
  preds = np.concatenate([p['preds'] for p in parts])
  skipped = [m for p in parts for m in p['skipped']]
  t_crop, t_net = sum(p['crop_s'] for p in parts), sum(p['network_s'] for p in parts)
  boxes = evaluation.crop_boxes(centers[idx], scales[idx], scores[idx])
  t = config.test
  results = evaluation.topdown_records(preds, boxes, image_ids[idx], float(t.in_vis_thre),
                                       float(t.oks_thre), spec.sigmas)
  # The whole split counts (an image without boxes is all misses), unless it was cut short.
  metrics: dict[str, Any] = coco_eval.evaluate_coco(
      source.annotation_file, results, sigmas=spec.sigmas, image_ids=order if max_images else None)
  n = max(len(order) - len(skipped), 1)
  metrics.update({
      'num_images': len(order) - len(skipped),
      'num_skipped_images': len(skipped),
      'num_people': int(len(preds)),
      'network_ms': 1e3 * t_net / n,
      'crop_ms': 1e3 * t_crop / n,
      'compile_s': max(p['compile_s'] for p in parts),  # one-off, not in network_ms
      'wall_s': time.perf_counter() - t_start,
  })
  if out_dir is not None and distributed.is_chief():
    out = coco_eval.write_run(out_dir, results, metrics)
    for image_id, image in drawn.items():
      mine = [r for r in results if r['image_id'] == image_id]
      poses = np.asarray([r['keypoints'] for r in mine], np.float32).reshape(-1, spec.num_joints, 3)
      visualize.save_rgb(out / f'pred_{image_id}.png', visualize.draw_poses(
          image, poses, spec, scores=np.asarray([r['score'] for r in mine]),
          score_threshold=DRAW_SCORE_THRESHOLD))
  return metrics


def evaluate_mpii(predictor: TopDownPredictor, config: Any, *,
                  out_dir: str | pathlib.Path | None = None, max_images: int = 0,
                  progress: bool = False) -> dict[str, Any]:
  """MPII: one crop per record of `annot/<split>.json` (float64 centre and scale), PCKh.

  As the official MPII evaluation: no rescoring, no NMS, every record scored against
  `gt_<split>.mat` (next to the annotation file); `pred.mat` holds the 1-based joints.
  With `max_images`, only the records of the first N images are predicted; the others
  count as misses.
  """
  t_start = time.perf_counter()
  split = config.dataset.test_split
  ann, image_dir = samples.split_files(config, split)
  people = records.mpii_records(ann, image_dir, int(config.model.num_joints))
  gt_file = ann.parent / f'gt_{split}.mat'
  gt = mpii.load_ground_truth(gt_file)
  by_image: dict[pathlib.Path, list[int]] = {}
  for i, p in enumerate(people):
    by_image.setdefault(p.image_path, []).append(i)
  order = list(by_image)[:max_images] if max_images else list(by_image)
  centers = np.stack([p.center for p in people])  # float64: the official MPII dtype
  scales = np.stack([p.scale for p in people])
  preds = np.full((len(people), int(config.model.num_joints), 3), np.nan, np.float32)
  mine = distributed.my_part(order)

  def predict_my_part() -> dict[str, Any]:
    images = mine
    if progress:
      import tqdm
      images = tqdm.tqdm(mine, desc='eval', unit='img')
    skipped, done = [], []
    for path in images:
      idx = by_image[path]
      try:
        image = records.load_image(people[idx[0]])
      except coco_data.CorruptImageError as e:
        skipped.append(str(e))
        _log.warning('skipping unreadable image: %s', e)
        continue
      crops = crop_boxes(image, centers[idx], scales[idx], predictor.spec)
      done.append((idx, predictor.predict_crops(crops, centers[idx], scales[idx])))
    return {'done': done, 'skipped': skipped}

  parts = distributed.gather(predict_my_part)
  for part in parts:
    for idx, joints in part['done']:
      preds[idx] = joints
  skipped = [m for p in parts for m in p['skipped']]
  result = mpii.pckh(preds, gt)
  metrics: dict[str, Any] = dict(result.values)
  metrics.update({'PCKh': float(result.mean), 'num_images': len(order) - len(skipped),
                  'num_skipped_images': len(skipped), 'num_people': len(people),
                  'wall_s': time.perf_counter() - t_start})
  metrics['summary'] = '\n'.join(mpii.format_table(result.values))
  if out_dir is not None and distributed.is_chief():
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mpii.write_pred_mat(out / 'pred.mat', np.nan_to_num(preds, nan=-1.0))
    (out / 'metrics.json').write_text(json.dumps(
        {k: v for k, v in metrics.items() if k != 'summary'}, indent=2))
  return metrics

