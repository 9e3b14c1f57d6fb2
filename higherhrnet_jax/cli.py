"""Library side of the entry points (`apps/train.py`, `apps/eval.py`, the demo).

What they share beyond argument parsing: training followed by the final report, and the
evaluation of a checkpoint. Weights come from `weights`, synthetic data from
`data.synthetic.prepare`, evaluation from `evaluation.runner`.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time

from higherhrnet_jax import distributed, weights
from higherhrnet_jax.data import synthetic
from higherhrnet_jax.evaluation import runner
from higherhrnet_jax.training import loop

_log = logging.getLogger(__name__)


def run_eval(config, checkpoint: str, output: str, *, max_images: int = 0, batch_size: int = 0,
             render: int = 8, average: bool = True) -> dict:
  """Evaluates `checkpoint` on the test split of a validated `config`; prints, writes metrics.

  In a multi-process job every process evaluates its share of the images; process 0 prints
  and writes.
  """
  predictor = runner.make_predictor(config, weights.load(checkpoint, config.model, average=average))
  metrics = runner.evaluate_any(predictor, config, out_dir=output, max_images=max_images,
                                batch_size=batch_size, render=render, progress=sys.stderr.isatty())
  if distributed.is_chief():
    print(metrics.get('summary', ''))
    print(runner.format_table(metrics))
    print(f'results and metrics written to {output}')
  return metrics


def run_train(config, workdir: str | pathlib.Path) -> dict | None:
  """train.py on a validated config: data preparation, training (resuming), evaluation and
  the final report."""
  t0 = time.perf_counter()
  workdir = pathlib.Path(workdir)
  config = synthetic.prepare(config, workdir)  # may only point dataset.root at the workdir
  evaluator = None
  if config.train.eval_every_epochs >= 0:
    try:
      evaluator = runner.Evaluator(config, workdir / 'eval')
    except FileNotFoundError as e:
      _log.warning('no evaluation during training: %s', e)
  loop.train(config, workdir, evaluate_fn=evaluator.run if evaluator else None)
  if evaluator is None:
    return None
  if evaluator.last is None:
    _log.error('the final evaluation failed (the trained state is saved): see %s',
               workdir / loop.EVAL_FAILURES)
    return None
  metrics = {k: v for k, v in evaluator.last.items() if k != 'summary'}
  metrics['wall_s'] = time.perf_counter() - t0
  if distributed.is_chief():
    (workdir / 'metrics.json').write_text(json.dumps(metrics, indent=2))
    print(runner.format_table(metrics))
    print(f'metrics: {workdir / "metrics.json"}; pictures: {workdir / "eval"}; '
          f'TensorBoard: tensorboard --logdir {workdir / "tensorboard"}')
  return metrics
