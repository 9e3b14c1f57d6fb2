"""Evaluating a model on a dataset split: predictions, results file, metrics, pictures.

Shared by `eval.py` and the periodic evaluation of the trainer, for both families:
:func:`evaluate` is the HigherHRNet loop (whole images, grouping), the top-down loop
(person boxes, crops) is `topdown/runner.py`; :func:`make_predictor` and :class:`Evaluator`
pick by `model.name`. Unreadable images are skipped and counted (the count is part of the
metrics), never fatal and never silent.
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from higherhrnet_jax import distributed, keypoints, visualize
from higherhrnet_jax.data import coco as coco_data
from higherhrnet_jax.data import pipeline
from higherhrnet_jax.evaluation import coco as coco_eval
from higherhrnet_jax.evaluation import crowdpose as crowdpose_eval
from higherhrnet_jax.inference.predictor import Predictor
from higherhrnet_jax.topdown import mpii
from higherhrnet_jax.topdown import runner as topdown_runner
from higherhrnet_jax.topdown.predictor import TopDownPredictor

_log = logging.getLogger(__name__)

# Pictures show people above this score (every detection still goes to the evaluator).
DRAW_SCORE_THRESHOLD = 0.2


def eval_source(config) -> Any:
  """The test split's images: HigherHRNet reads them from the configured data source
  (annotation files or a TFDS build); the top-down loop reads files, as its person records
  come from the annotation file. Ground truth always comes from the annotation file."""
  if config.model.name == 'pose_hrnet' or config.data.source == 'synthetic':
    return coco_data.source_from_config(config, train=False)
  return pipeline.make_source(config, 'test')


def _annotation_file(config, source) -> pathlib.Path:
  known = getattr(source, 'annotation_file', None)
  return known or coco_data.split_paths(config, config.dataset.test_split)[0]


def _images(source: pipeline.ExampleSource, indices: Sequence[int], skipped: list[str]):
  for index in indices:
    try:
      example = source.eval_example(index)
    except coco_data.CorruptImageError as e:
      skipped.append(str(e))
      _log.warning('skipping unreadable image: %s', e)
      continue
    yield example['image_id'], example['image']


def evaluate(predictor: Predictor, config, *, source: pipeline.ExampleSource | None = None,
             out_dir: str | pathlib.Path | None = None, max_images: int = 0,
             batch_size: int = 1, render: int = 0, progress: bool = False,
             profile: bool = True) -> dict[str, Any]:
  """Predicts every image of the test split and scores the results.

  In a multi-process job each process predicts its contiguous block of the images on its
  own devices; the results are gathered in image order, so every process returns the
  metrics a single process would, and process 0 writes the files.

  Args:
    predictor: compiled inference for the model to evaluate.
    config: full config (`dataset.*` locates the split; `test.*` sets flip/adjust/refine).
    source: the split's images (default: `dataset.test_split` through `data.source`: files
      or a TFDS build; the ground truth is the split's annotation file either way).
    out_dir: if given, receives `results.json` (COCO results records), `metrics.json` and
      up to `render` pictures `pred_<image_id>.png`.
    max_images: evaluate only the first N images (0: all).
    batch_size: images per device batch.
    render: number of pictures to draw.
    progress: show a progress bar.
    profile: attribute time to network / aggregation / grouping (waits between stages).

  Returns:
    metrics: the evaluator's stats (COCO: AP, AP50, ...; CrowdPose: also APeasy, ...),
    `num_images`, `num_skipped_images`, per-image times in ms and `wall_s`.
  """
  t_start = time.perf_counter()
  source = source or eval_source(config)
  spec = keypoints.spec_from_config(config.dataset.keypoints)
  count = len(source) if not max_images else min(max_images, len(source))
  mine = distributed.my_part(range(count))
  drawn: dict[int, np.ndarray] = {}  # pictures (process 0's first images) and their people
  predicted: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def predict_my_part() -> dict[str, Any]:
    skipped: list[str] = []
    stream = _images(source, mine, skipped)
    if render and distributed.is_chief():
      stream = _keep_first(stream, render, drawn)
    results = predictor.predict_many(stream, batch_size=batch_size, profile=profile)
    if progress:
      import tqdm
      results = tqdm.tqdm(results, total=len(mine), desc='eval', unit='img')
    ids, poses, scores = [], [], []
    before = dict(predictor.timings)
    for image_id, pred in results:
      ids.append(image_id)
      poses.append(pred.poses)
      scores.append(pred.scores)
    t = config.test
    # Rescoring and OKS-NMS act within an image, so each process makes its own records.
    records = coco_eval.results_records(
        ids, poses, scores, oks_nms_threshold=0.9 if t.oks_nms else None,
        rescore=bool(t.rescore), sigmas=spec.sigmas)
    predicted.update((i, (p, s)) for i, p, s in zip(ids, poses, scores) if i in drawn)
    return {'ids': ids, 'records': records, 'skipped': skipped,
            'num_people': int(sum(len(s) for s in scores)),
            'seconds': {k: predictor.timings[k] - before[k]
                        for k in ('network', 'aggregation', 'grouping', 'compile')}}

  parts = distributed.gather(predict_my_part)
  ids = [i for p in parts for i in p['ids']]
  records = [r for p in parts for r in p['records']]
  ann_file = _annotation_file(config, source)
  if config.dataset.name == 'crowdpose':
    metrics = crowdpose_eval.evaluate_crowdpose(ann_file, records, sigmas=spec.sigmas)
  else:
    metrics = coco_eval.evaluate_coco(ann_file, records, sigmas=spec.sigmas, image_ids=ids)
  n = max(len(ids), 1)
  seconds = lambda k: sum(p['seconds'][k] for p in parts)
  metrics.update({
      'num_images': len(ids),
      'num_skipped_images': sum(len(p['skipped']) for p in parts),
      'num_people': sum(p['num_people'] for p in parts),
      'network_ms': 1e3 * seconds('network') / n,
      'aggregation_ms': 1e3 * seconds('aggregation') / n,
      'grouping_ms': 1e3 * seconds('grouping') / n,
      # One-off: XLA per new shape bucket, numba's host kernels (or their cache loads).
      'compile_s': max(p['seconds']['compile'] for p in parts),
      'wall_s': time.perf_counter() - t_start,
  })
  if out_dir is not None and distributed.is_chief():
    out = coco_eval.write_run(out_dir, records, metrics)
    for image_id, image in drawn.items():
      if image_id in predicted:
        p, s = predicted[image_id]
        visualize.save_rgb(out / f'pred_{image_id}.png', visualize.draw_poses(
            image, p, spec, scores=s, score_threshold=DRAW_SCORE_THRESHOLD))
  return metrics


def make_predictor(config, variables) -> Predictor | TopDownPredictor:
  """The compiled inference of the config's model family."""
  if config.model.name == 'pose_hrnet':
    return TopDownPredictor(config, variables)
  return Predictor(config, variables)


def evaluate_any(predictor: Predictor | TopDownPredictor, config, *, batch_size: int = 0,
                 **kwargs) -> dict[str, Any]:
  """:func:`evaluate` or the top-down loop, by predictor; `batch_size` 0: the config's."""
  if isinstance(predictor, TopDownPredictor):
    if batch_size:
      raise ValueError('batch_size: the top-down loop batches crops by config.test.batch_size '
                       '(--config.test.batch_size=N), not images')
    return topdown_runner.evaluate(predictor, config, **kwargs)
  batch_size = batch_size or int(config.test.batch_size) * predictor.num_devices
  return evaluate(predictor, config, batch_size=batch_size, **kwargs)


class Evaluator:
  """The evaluation of a model under training: one compiled predictor, new weights each run.

  `run(variables)` gives the numeric metrics (what the trainer logs and ranks checkpoints
  by); `last` holds the full metrics of the last run, or None if it failed or none ran.
  """

  def __init__(self, config, out_dir: str | pathlib.Path | None = None):
    self.config = config
    self.out_dir = out_dir
    # Fails early if the split is missing (MPII records are read by the top-down runner).
    self.source = (None if config.dataset.name == 'mpii'
                   else eval_source(config))
    self.last: dict[str, Any] | None = None
    self._predictor: Predictor | TopDownPredictor | None = None

  def run(self, variables) -> dict[str, float]:
    self.last = None  # a failed run must not leave an earlier one as the result
    if self._predictor is None:
      self._predictor = make_predictor(self.config, variables)
    else:
      self._predictor.set_variables(variables)
    t = self.config.train
    self.last = evaluate_any(self._predictor, self.config, source=self.source, out_dir=self.out_dir,
                             max_images=int(t.eval_max_images), render=int(t.render_predictions))
    return {k: v for k, v in self.last.items() if isinstance(v, (int, float))}


def _keep_first(stream, n: int, store: dict):
  for image_id, image in stream:
    if len(store) < n:
      store[image_id] = image
    yield image_id, image


def format_table(metrics: dict[str, Any]) -> str:
  """The metrics as a small two-row table (names, values), plus the per-image times."""
  names = [k for k in (*coco_eval.STATS_NAMES, 'APeasy', 'APmedium', 'APhard', *mpii.VALUE_NAMES)
           if k in metrics]
  head = ' | '.join(f'{k:>8}' for k in names)
  vals = ' | '.join(f'{metrics[k]:8.4f}' for k in names)
  stages = [k[:-3] for k in ('crop_ms', 'network_ms', 'aggregation_ms', 'grouping_ms') if k in metrics]
  times = ('per image: ' + ', '.join(f'{k} {metrics[k + "_ms"]:.1f} ms' for k in stages)
           + f"; {metrics['num_images']} images, {metrics['num_skipped_images']} skipped")
  if 'compile_s' in metrics:
    times += f"; compilation {metrics['compile_s']:.1f} s apart"
  return f'{head}\n{vals}\n{times}'
