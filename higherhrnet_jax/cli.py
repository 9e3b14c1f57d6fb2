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


def _config_and_overrides(argv: list[str]) -> tuple[str, list[str], list[str]]:
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


def eval_main() -> None:
  """Console script `higherhrnet-eval` (same flags as eval.py)."""
  import argparse

  path, overrides, rest = _config_and_overrides(sys.argv[1:])
  p = argparse.ArgumentParser(prog='higherhrnet-eval')
  p.add_argument('--checkpoint', required=True)
  p.add_argument('--output', default='runs/eval')
  p.add_argument('--max_images', type=int, default=0)
  p.add_argument('--batch_size', type=int, default=0)
  p.add_argument('--render', type=int, default=8)
  a = p.parse_args(rest)
  config = config_lib.load_config(path, overrides)
  m = run_eval(config, a.checkpoint, a.output, max_images=a.max_images, batch_size=a.batch_size,
               render=a.render)
  print(json.dumps({k: v for k, v in m.items() if k != 'summary'}))
