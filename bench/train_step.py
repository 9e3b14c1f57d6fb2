"""Training-step throughput: steps/s, samples/s, XLA compile time and peak host memory.

Each (config, batch, size) runs in its own process so peak RSS belongs to that run.

  python bench/train_step.py                       # tiny@128 b2 and W32@256 b2
  python bench/train_step.py --runs tiny:2:128,w32_512:2:512 --steps 5 --json
  python bench/train_step.py --runs quickstart:16:128 --set 'model.deconv.num_channels=(24,)'

Prints a table; with --json, one JSON object per run follows (one per line, the last
line being the last run's), with config, batch, input, steps_per_s, samples_per_s,
compile_s, init_s, peak_rss_mb, overrides, device.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = {
    'tiny': 'configs/tiny.py',
    'w32_512': 'configs/coco/higherhrnet_w32_512.py',
    'w48_640': 'configs/coco/higherhrnet_w48_640.py',
    'quickstart': 'configs/quickstart.py',
}


def child(name: str, batch: int, size: int, steps: int, dtype: str,
          overrides: list[str]) -> dict:
  """Measures one configuration in this process."""
  sys.path.insert(0, str(REPO))
  import jax
  import numpy as np

  from higherhrnet_jax import config as config_lib, models
  from higherhrnet_jax.data import synthetic_batches as batches
  from higherhrnet_jax.training import optim, sharding, state as state_lib, step as step_lib

  config = config_lib.load_config(REPO / CONFIGS[name], [
      f'data.input_size={size}', f'train.batch_size={batch}', f'model.dtype={dtype}', *overrides])
  model = models.build(config.model)
  mesh = sharding.make_mesh()
  tx, schedule = optim.make_optimizer(config, 1000)
  t0 = time.perf_counter()
  state, shardings = state_lib.create_train_state(
      model, tx, jax.random.PRNGKey(0), (1, size, size, 3), mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  fn = step_lib.make_train_step(model, tx, config, mesh, shardings, schedule)
  data = [sharding.global_batch(batches.synthetic_batch(config, batch, np.random.default_rng(i)), mesh)
          for i in range(2)]
  rng = jax.random.PRNGKey(1)
  t0 = time.perf_counter()
  compiled = fn.lower(state, data[0], rng).compile()
  compile_s = time.perf_counter() - t0
  state, m = compiled(state, data[0], rng)  # warm-up
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for i in range(steps):
    state, m = compiled(state, data[i % 2], rng)
  jax.block_until_ready((state, m))
  dt = time.perf_counter() - t0
  peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {
      'config': name, 'batch': batch, 'input': size, 'dtype': dtype, 'steps': steps,
      'steps_per_s': steps / dt, 'samples_per_s': steps * batch / dt, 'step_ms': 1000 * dt / steps,
      'compile_s': compile_s, 'init_s': init_s, 'peak_rss_mb': peak_kb / 1024.0,
      'params': state_lib.param_count(state.params), 'loss': float(m['loss']),
      'overrides': overrides, 'device': f'{jax.devices()[0].platform}:{len(jax.devices())}',
      'cpu_count': os.cpu_count(),
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--runs', default='tiny:2:128,w32_512:2:256',
                 help='comma list of config:batch:input_size (configs: %s)' % ', '.join(CONFIGS))
  p.add_argument('--steps', type=int, default=5, help='timed steps after one warm-up step')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='config override for every run, e.g. model.deconv.num_channels=(24,)')
  p.add_argument('--json', action='store_true', help='also print one JSON object per run')
  p.add_argument('--child', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    name, batch, size = args.child.split(':')
    print(json.dumps(child(name, int(batch), int(size), args.steps, args.dtype, args.set)))
    return
  results = []
  for run in args.runs.split(','):
    proc = subprocess.run([sys.executable, __file__, '--child', run, '--steps', str(args.steps),
                           '--dtype', args.dtype, *(f'--set={o}' for o in args.set)],
                          capture_output=True, text=True)
    if proc.returncode:
      sys.exit(f'run {run} failed:\n{proc.stderr[-3000:]}')
    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  header = f'{"config":<9} {"batch":>5} {"input":>5} {"dtype":>8} {"steps/s":>8} {"img/s":>7} {"ms/step":>8} {"compile s":>9} {"init s":>7} {"peak RSS MB":>11}'
  print(header)
  for r in results:
    print(f'{r["config"]:<9} {r["batch"]:>5} {r["input"]:>5} {r["dtype"]:>8} {r["steps_per_s"]:>8.3f} '
          f'{r["samples_per_s"]:>7.2f} {r["step_ms"]:>8.0f} {r["compile_s"]:>9.1f} {r["init_s"]:>7.1f} '
          f'{r["peak_rss_mb"]:>11.0f}')
  if args.json:
    for r in results:
      print(json.dumps(r))


if __name__ == '__main__':
  main()
