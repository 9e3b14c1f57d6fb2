"""Input-pipeline speed: training samples per second per worker process at 512x512.

Runs the training transform of the pipeline (decode, ignore mask, official random affine of
image and mask at both output resolutions, flip, normalization, Gaussian heatmaps at 128 and
256, AE joint indices) on the real COCO sample images, one sample after another in this
process with OpenCV limited to one thread (what one grain worker does), and splits the time:

  decode   JPEG -> RGB uint8 (`coco.decode_image`)
  mask     ignore mask from crowd / keypoint-less segmentations (pycocotools)
  warp     affine warp of the image (512) and the mask (128, 256), joints, flip
  normalize  uint8 -> normalized float32 (+ mirror)
  targets  heatmaps (both resolutions) and joint indices

It then times whole batches through `pipeline.BatchMaker` (batch stacking included) and,
with `--workers N`, the multiprocess grain loader.

Usage:
  python bench/data.py [--samples N] [--batch B] [--workers N] [--json]

With `--json` the last printed line is one JSON object including `samples_per_s_per_core`
(from the batch timing: everything one worker does per sample).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault('NUMBA_CACHE_DIR', str(REPO / '.numba_cache'))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from higherhrnet_jax import config as config_lib  # noqa: E402
from higherhrnet_jax.data import pipeline, targets, transforms  # noqa: E402

DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'coco_sample'


def _config(data_dir: pathlib.Path, batch: int):
  c = config_lib.base_config()  # 512 input, outputs 128 and 256, sigma 2, 30 people
  c.dataset.train_annotations = str(data_dir / 'test_coco.json')
  c.dataset.train_images = str(data_dir)
  c.train.batch_size = batch
  return c


def time_stages(source, sc: transforms.SampleConfig, n: int, seed: int = 0) -> dict[str, float]:
  """Mean seconds per sample of each stage, over `n` samples cycling through the images."""
  totals = dict(decode=0.0, mask=0.0, warp=0.0, normalize=0.0, targets=0.0)
  for i in range(n):
    r = i % len(source)
    t0 = time.perf_counter()
    image = source.load_image(r)
    t1 = time.perf_counter()
    mask = source.mask(r)
    joints = source.joints(r)
    t2 = time.perf_counter()
    draws = transforms.sample_draws(pipeline.sample_rng(seed, i // len(source), r),
                                    image.shape[:2], sc)
    a = transforms.augment(image, joints, mask, draws, sc, flip_image=False)
    t3 = time.perf_counter()
    transforms.normalize_flip(a['image'], draws.flip)
    t4 = time.perf_counter()
    for s, res in enumerate(sc.output_size):
      j = a[f'joints_xy_{s}']
      sigma = targets.person_sigmas(j, sc.sigma, sc.scale_aware_sigma)
      targets.heatmaps(j, res, sigma)
      targets.joint_indices(j, res, sc.max_num_people, sc.tag_per_joint)
    t5 = time.perf_counter()
    for name, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
      totals[name] += dt
  return {k: v / n for k, v in totals.items()}


def time_batches(maker: pipeline.BatchMaker, n_batches: int) -> float:
  """Seconds per sample of whole batches (all stages plus stacking)."""
  t0 = time.perf_counter()
  for step in range(n_batches):
    maker(step)
  return (time.perf_counter() - t0) / (n_batches * maker.plan.batch_size)


def time_loader(config, workers: int, n_batches: int) -> float:
  """Samples per second of the grain loader with `workers` processes (start-up excluded)."""
  it = pipeline.make_train_loader(config, worker_count=workers, shard_index=0, shard_count=1)
  try:
    next(it)  # start-up
    t0 = time.perf_counter()
    for _ in range(n_batches):
      next(it)
    return n_batches * it.plan.batch_size / (time.perf_counter() - t0)
  finally:
    it.close()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', type=pathlib.Path, default=DEFAULT_DATA)
  parser.add_argument('--samples', type=int, default=64, help='samples for the stage split')
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--batches', type=int, default=16, help='batches for the batch timing')
  parser.add_argument('--workers', type=int, default=0, help='also time the grain loader')
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  flags.FLAGS.mark_as_parsed()  # grain workers read absl flags

  config = _config(args.data, args.batch)
  source = pipeline.make_source(config, 'train')
  sc = transforms.SampleConfig.from_config(config)
  pipeline._init_process()  # one OpenCV thread, heap reuse: as in a worker
  time_stages(source, sc, 4)  # warm-up (numba compile / cache load)
  stages = time_stages(source, sc, args.samples)
  per_sample_stages = sum(stages.values())
  batch = min(args.batch, len(source))  # the COCO sample has 4 images
  config.train.batch_size = batch
  plan = pipeline.ShardPlan(num_records=len(source), batch_size=batch, shard_index=0,
                            shard_count=1, seed=0)
  maker = pipeline.BatchMaker(source, plan, sc)
  maker(0)
  batch_s = time_batches(maker, args.batches)
  loader = time_loader(config, args.workers, args.batches) if args.workers else None

  result = dict(
      input_size=config.data.input_size, output_size=list(sc.output_size),
      images=len(source), samples=args.samples, batch_size=batch,
      stage_ms={k: round(v * 1e3, 3) for k, v in stages.items()},
      sample_ms=round(per_sample_stages * 1e3, 3),
      batch_sample_ms=round(batch_s * 1e3, 3),
      samples_per_s_per_core=round(1.0 / batch_s, 1),
      loader_workers=args.workers,
      loader_samples_per_s=None if loader is None else round(loader, 1),
      cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
      opencv=cv2.__version__, numpy=np.__version__,
  )
  print(f'{"stage":<12}{"ms/sample":>10}{"share":>8}')
  for k, v in stages.items():
    print(f'{k:<12}{v * 1e3:>10.2f}{v / per_sample_stages:>8.0%}')
  print(f'{"sum":<12}{per_sample_stages * 1e3:>10.2f}')
  print(f'batch path: {batch_s * 1e3:.2f} ms/sample -> {1 / batch_s:.1f} samples/s per core '
        f'(512 input, targets at {sc.output_size})')
  if loader is not None:
    print(f'grain loader, {args.workers} workers: {loader:.1f} samples/s')
  if args.json:
    print(json.dumps(result))


if __name__ == '__main__':
  main()
