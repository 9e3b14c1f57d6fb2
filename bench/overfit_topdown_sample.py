"""Real-data proof for the top-down HRNet: trained from scratch, it memorises the COCO sample.

  python bench/overfit_topdown_sample.py              # prints the COCO table
  python bench/overfit_topdown_sample.py --json       # last line: one JSON object
  python bench/overfit_topdown_sample.py --data_dir D --workdir W --steps N

Trains on the 12 labelled people of the four COCO val2017 images of the sample
(`test_coco.json`, ground-truth boxes, the official box cleaning and padding) and evaluates
them with the full top-down test path: crops from the ground-truth boxes, flip test with
the one-pixel shift, quarter-offset decoding, rescoring, OKS-NMS and pycocotools.
Everything runs through the library (records, samples and targets, the grain pipeline,
`JointsMSELoss`, the shared training loop and the top-down evaluation runner); AP near 1
shows that boxes, crops, targets, decoding and the map back to the image agree end to end.

Choices, and why:
  * Crops of 256x192 (heatmaps 64x48): one heatmap pixel is 1/51 of the padded box height,
    a quarter offset 1/205; at 128x96 the quantisation alone costs OKS on faces (nose and
    eyes have the smallest COCO sigmas).
  * A slim HRNet (branch widths (head_width, 2w, 4w, 8w), one block per branch, a 32-wide
    stem, one layer1 Bottleneck): memorising 12 people needs no depth. The highest
    branch feeds the 1x1 head, so its width (`--head_width` 32) bounds the rank of the 17
    heatmaps.
  * Augmentation: small scale jitter (0.1), no rotation, no half body, flips on (the test
    loop averages the mirrored crop's heatmaps, which must be trained too).
  * Adam, LR 2e-3 after a short warm-up, x0.1 for the last 20% of the steps to settle the
    peaks; batch = all 12 people, so one step is one epoch.

Measured (AMD EPYC with AVX-512, 2 cores): the defaults (300 steps) reach AP 1.000 (AP50,
AP75, AR all 1.0: every one of the 12 people at OKS >= 0.95) in 201 s, evaluation included.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'coco_sample'
ANNOTATIONS = 'test_coco.json'


def make_config(data_dir: pathlib.Path, *, steps: int = 300, lr: float = 2e-3, width: int = 16,
                head_width: int = 32, height: int = 256, scale_factor: float = 0.1, seed: int = 0,
                workers: int = 0):
  """The overfit config (training and evaluation share it: the test crops are the boxes)."""
  from higherhrnet_jax.config import pose_hrnet

  ann = data_dir / ANNOTATIONS
  if not ann.is_file():
    raise FileNotFoundError(f'--data_dir: {ann} not found')
  c = pose_hrnet.base_config()
  c.seed = seed
  c.model.stem_channels = 32
  c.model.stage1.num_blocks = (1,)
  c.model.stage1.num_channels = (width,)
  pose_hrnet.with_slim_stages(c, width)
  for name in ('stage2', 'stage3', 'stage4'):
    s = c.model[name]
    s.num_channels = (head_width, *s.num_channels[1:])
  pose_hrnet.with_input_size(c, height, height * 3 // 4)
  d = c.dataset
  d.train_annotations = d.test_annotations = str(ann)
  d.train_images = d.test_images = str(data_dir)
  a = c.data
  a.scale_factor = scale_factor
  a.rot_factor = 0.0
  a.prob_half_body = -1.0
  a.num_workers = workers
  t = c.train
  t.batch_size = t.reference_batch_size = 12
  t.num_steps = steps
  t.lr = lr
  t.warmup_epochs = min(20, steps // 10)
  t.lr_step = (int(steps * 0.8), 10 * steps)
  t.log_every_steps = max(1, min(50, steps // 10))
  t.checkpoint_every_steps = 10 * steps  # only the final save
  t.keep_checkpoints = 1
  t.eval_every_epochs = 0
  t.render_predictions = 4
  c.test.batch_size = 12
  from higherhrnet_jax import config as config_lib

  return config_lib.validate(c)


DEFAULTS = {name: p.default for name, p in inspect.signature(make_config).parameters.items()
            if p.default is not inspect.Parameter.empty}


def run(data_dir: pathlib.Path, workdir: pathlib.Path, **kwargs) -> dict:
  """Trains and evaluates; returns the metrics (COCO stats, `wall_s`, settings)."""
  from absl import flags
  from absl import logging as absl_logging

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  absl_logging.set_verbosity(absl_logging.WARNING)

  from higherhrnet_jax.evaluation import runner
  from higherhrnet_jax.training import loop

  t0 = time.perf_counter()
  config = make_config(data_dir, **kwargs)
  evaluator = runner.Evaluator(config, workdir / 'eval')
  loop.train(config, workdir, evaluate_fn=evaluator.run)
  metrics = {k: v for k, v in (evaluator.last or {}).items() if k != 'summary'}
  if 'AP' not in metrics:
    raise RuntimeError(f'the evaluation produced no AP (metrics: {metrics})')
  metrics['wall_s'] = time.perf_counter() - t0
  metrics.update({k: v for k, v in kwargs.items() if k in ('steps', 'lr', 'width', 'head_width', 'height')})
  (workdir / 'metrics.json').write_text(json.dumps(metrics, indent=2))
  return metrics


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--data_dir', type=pathlib.Path, default=DEFAULT_DATA,
                 help=f'folder with {ANNOTATIONS} and the images')
  p.add_argument('--workdir', type=pathlib.Path, default=None, help='default: a temp dir')
  for name, default in DEFAULTS.items():
    p.add_argument(f'--{name}', type=type(default), default=default)
  p.add_argument('--json', action='store_true', help='print the metrics as JSON last')
  a = p.parse_args(argv)
  logging.getLogger().setLevel(logging.WARNING)
  kwargs = {name: getattr(a, name) for name in DEFAULTS}
  if a.workdir is None:
    with tempfile.TemporaryDirectory(prefix='overfit_topdown_') as tmp:
      metrics = run(a.data_dir, pathlib.Path(tmp), **kwargs)
  else:
    metrics = run(a.data_dir, a.workdir.absolute(), **kwargs)

  from higherhrnet_jax.evaluation import runner

  print(runner.format_table(metrics))
  print(f"{kwargs['steps']} steps at {kwargs['height']}x{kwargs['height'] * 3 // 4}, lr {kwargs['lr']}: "
        f"AP {metrics['AP']:.4f} in {metrics['wall_s']:.0f} s; load {os.getloadavg()[0]:.2f}")
  if a.json:
    print(json.dumps(metrics))
  return metrics


if __name__ == '__main__':
  sys.path.insert(0, str(REPO))
  main()
