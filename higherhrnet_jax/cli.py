"""Library side of the entry points (`eval.py`, `train.py`, console scripts)."""

from __future__ import annotations

import json
import logging
import pathlib
import sys

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import convert

_log = logging.getLogger(__name__)


def load_variables(checkpoint: str | pathlib.Path, config) -> dict:
  """Model variables from an official `.pth`/`.npz` or a training directory (orbax).

  A training directory gives its best checkpoint (by AP) if it has one, else its latest.
  """
  path = pathlib.Path(checkpoint)
  if path.is_dir():
    from higherhrnet_jax.training import checkpoint as ckpt_lib
    return ckpt_lib.restore_variables(path, config)
  if not path.is_file():
    raise FileNotFoundError(f'checkpoint not found: {path}')
  return convert.load_official(path, config.model)


def run_eval(config, checkpoint: str, output: str, *, max_images: int = 0, batch_size: int = 0,
             render: int = 8) -> dict:
  """Evaluates `checkpoint` on the test split of `config`; prints and writes the metrics."""
  from higherhrnet_jax.evaluation import runner
  from higherhrnet_jax.inference.predictor import Predictor

  config_lib.validate(config)
  variables = load_variables(checkpoint, config)
  predictor = Predictor(config, variables)
  metrics = runner.evaluate(predictor, config, out_dir=output, max_images=max_images,
                            batch_size=batch_size or int(config.test.batch_size) * predictor.num_devices,
                            render=render, progress=sys.stderr.isatty())
  print(metrics.get('summary', ''))
  print(runner.format_table(metrics))
  print(f'results and metrics written to {output}')
  return metrics


def split_config_args(argv: list[str]) -> tuple[str, list[str], list[str]]:
  """`--config=F` and `--config.a.b=v` flags -> (path, ['a.b=v', ...], other arguments)."""
  path, overrides, rest = None, [], []
  for a in argv:
    if a.startswith('--config='):
      path = a.split('=', 1)[1]
    elif a.startswith('--config.'):
      overrides.append(a[len('--config.'):])
    else:
      rest.append(a)
  if path is None:
    raise SystemExit('--config=<file> is required')
  return path, overrides, rest


def prepare_synthetic_data(config, workdir: str | pathlib.Path):
  """Writes the configured synthetic dataset if it is not there yet; returns the config.

  With `dataset.synthetic.num_train > 0` the scenes go to `dataset.root`, or to
  `<workdir>/data` when the root is empty (the returned config then points there).
  """
  syn = config.dataset.synthetic
  if syn.num_train <= 0:
    return config
  root = pathlib.Path(config.dataset.root or pathlib.Path(workdir) / 'data')
  if config.dataset.root != str(root):
    config = config_lib.apply_overrides(config.copy_and_resolve_references(),
                                        [f'dataset.root={root}'])
  from higherhrnet_jax.data import synthetic

  for split, n in ((config.dataset.train_split, syn.num_train), (config.dataset.test_split, syn.num_val)):
    ann = root / 'annotations' / f'person_keypoints_{split}.json'
    if n > 0 and not ann.is_file():
      _log.info('writing %d synthetic scenes to %s', n, root / 'images' / split)
      synthetic.write_synthetic_coco(root, n, syn.seed, image_size=syn.image_size, split=split)
  return config


def make_evaluate_fn(config, out_dir: str | pathlib.Path):
  """`evaluate_fn(variables) -> metrics` for the trainer: the full test loop + evaluator.

  One compiled predictor is reused across evaluations (only the weights change).
  """
  from higherhrnet_jax.data import coco as coco_data
  from higherhrnet_jax.evaluation import runner
  from higherhrnet_jax.inference.predictor import Predictor

  source = coco_data.source_from_config(config, train=False)  # fail early if it is missing
  holder: dict = {}

  def evaluate_fn(variables) -> dict:
    holder['last'] = None  # a failed evaluation must not leave an earlier one as the result
    if 'predictor' not in holder:
      holder['predictor'] = Predictor(config, variables)
    else:
      holder['predictor'].set_variables(variables)
    metrics = runner.evaluate(holder['predictor'], config, source=source, out_dir=out_dir,
                              max_images=int(config.train.eval_max_images),
                              render=int(config.train.render_predictions))
    holder['last'] = metrics
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}

  evaluate_fn.last = lambda: holder.get('last')
  return evaluate_fn


def run_train(config, workdir: str | pathlib.Path) -> dict | None:
  """train.py: data preparation, training (resuming), evaluation and the final report."""
  import time

  from higherhrnet_jax.training import loop

  t0 = time.perf_counter()
  workdir = pathlib.Path(workdir)
  config = prepare_synthetic_data(config, workdir)
  config_lib.validate(config)
  evaluate_fn = None
  if config.train.eval_every_epochs >= 0:
    try:
      evaluate_fn = make_evaluate_fn(config, workdir / 'eval')
    except FileNotFoundError as e:
      _log.warning('no evaluation during training: %s', e)
  loop.train(config, workdir, evaluate_fn=evaluate_fn)
  metrics = evaluate_fn.last() if evaluate_fn is not None else None
  if metrics is None:
    if evaluate_fn is not None:
      _log.error('the final evaluation failed (the trained state is saved): see %s',
                 workdir / loop.EVAL_FAILURES)
    return None
  from higherhrnet_jax.evaluation import runner

  metrics = {k: v for k, v in metrics.items() if k != 'summary'}
  metrics['wall_s'] = time.perf_counter() - t0
  import jax

  if jax.process_index() == 0:
    (workdir / 'metrics.json').write_text(json.dumps(metrics, indent=2))
    print(runner.format_table(metrics))
    print(f'metrics: {workdir / "metrics.json"}; pictures: {workdir / "eval"}; '
          f'TensorBoard: tensorboard --logdir {workdir / "tensorboard"}')
  return metrics
