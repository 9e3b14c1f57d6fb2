"""Network speed against PyTorch on this machine: forward and a training step.

Ours (`models.build(config.model).apply`, jitted) against the PyTorch twin of
`bench/torch_reference.py` in NCHW and in channels-last, same variables, same threads,
measured interleaved (one call of each in turn per repeat) so that a change in machine
load hits all three alike. Reported: the median time per call after one-off compilation
(compile time apart), the ratio ours / best PyTorch layout, and the process's peak RSS.

  python bench/network.py --json                   # W32-512 forward, W32 at 256 train step
  python bench/network.py --forward-batches 1 --repeats 3 --out bench/results/network.json

The forward is also timed as the Predictors run it on a CPU: the same program compiled with
XLA:CPU's Eigen convolutions instead of its default YNNPACK ones (`predictor_ratio`), and
as an *inference program*, Eigen convolutions with the weights compiled in as constants
(`inference_ratio`).

The training step is a plain one: forward in train mode (batch statistics), the mean of the
squared outputs as loss, backward, Adam, for both frameworks. Needs `torch` (the `bench`
extra); the PyTorch twin is checked against the official outputs first.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'bench'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

import torch_reference  # noqa: E402
from higherhrnet_jax import apps, config as config_lib, models  # noqa: E402
from higherhrnet_jax.inference import compile as compile_lib  # noqa: E402

CONFIG = REPO / 'configs' / 'coco' / 'higherhrnet_w32_512.py'


def _cpu_name() -> str:
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        flags = pathlib.Path('/proc/cpuinfo').read_text()
        simd = 'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'SSE'
        return f'{line.split(":", 1)[1].strip()} ({simd})'
  except OSError:
    pass
  return platform.processor() or 'unknown'


def _timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def _ours_forward(model, variables, x):
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  xj = jnp.asarray(x)
  run = lambda: jax.block_until_ready(apply(variables, xj))
  return run


def _ours_predictor_forward(model, variables, x):
  """The Predictors' network program: weights as arguments, Eigen convolutions on CPU."""
  apply = compile_lib.forward_jit(lambda v, x: model.apply(v, x, train=False), jax.devices())
  xj = jnp.asarray(x)
  return lambda: jax.block_until_ready(apply(variables, xj))


def _ours_inference_forward(model, variables, x):
  """An inference program: the weights compiled in as constants, Eigen convolutions."""
  weights = jax.device_put(variables)
  xj = jnp.asarray(x)
  compiled = {}

  def run():
    if 'fn' not in compiled:
      compiled['fn'] = compile_lib.compile_with_weights(
          lambda v, x: model.apply(v, x, train=False), weights, xj)
    jax.block_until_ready(compiled['fn'](xj))
  return run


def _torch_forward(net, x, channels_last):
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  if channels_last:
    xt = xt.contiguous(memory_format=torch.channels_last)

  def run():
    with torch.no_grad():
      net(xt)
  return run


def _ours_train_step(model, variables, x):
  tx = optax.adam(1e-3)
  params, stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)

  def loss_fn(p, s, x):
    outs, new = model.apply({'params': p, 'batch_stats': s}, x, train=True,
                            mutable=['batch_stats'])
    return sum(jnp.mean(jnp.square(o)) for o in outs), new['batch_stats']

  @jax.jit
  def step(p, s, o, x):
    (loss, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, x)
    updates, o = tx.update(g, o, p)
    return optax.apply_updates(p, updates), s, o, loss

  carry = [params, stats, opt_state]
  xj = jnp.asarray(x)

  def run():
    p, s, o, loss = step(*carry, xj)
    jax.block_until_ready(loss)
    carry[:] = [p, s, o]
  return run


def _torch_train_step(net, x, channels_last):
  net.train()
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  if channels_last:
    xt = xt.contiguous(memory_format=torch.channels_last)

  def run():
    opt.zero_grad(set_to_none=True)
    loss = sum(o.square().mean() for o in net(xt))
    loss.backward()
    opt.step()
  return run


def _race(runs: dict, repeats: int) -> dict:
  """First call of each (compile / warm-up), then `repeats` interleaved rounds."""
  first = {name: _timed(run) for name, run in runs.items()}
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      times[name].append(_timed(run))
  med = {name: statistics.median(t) for name, t in times.items()}
  return {'median_s': med, 'first_call_s': first, 'all_s': times}


def _row(kind: str, batch: int, size: int, race: dict) -> dict:
  med = race['median_s']
  best_torch = min(med['torch_nchw'], med['torch_channels_last'])
  times = {f'{k}_ms': 1e3 * v for k, v in med.items()}
  row = {'kind': kind, 'batch': batch, 'input': size, **times,
         'ours_compile_s': race['first_call_s']['ours'] - med['ours'],
         'ratio': med['ours'] / best_torch}
  if 'ours_inference' in med:
    row['inference_ratio'] = med['ours_inference'] / best_torch
  if 'ours_predictor' in med:
    row['predictor_ratio'] = med['ours_predictor'] / best_torch
  return row


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--config', default=str(CONFIG))
  p.add_argument('--forward-batches', default='1,8')
  p.add_argument('--train-size', type=int, default=256)
  p.add_argument('--train-batch', type=int, default=2)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)))
  p.add_argument('--skip-check', action='store_true')
  p.add_argument('--compilation-cache-dir', default='none',
                 help="XLA's persistent cache ('none': off, the default, so compile times are "
                 'cold; a directory: warm on a second run)')
  p.add_argument('--json', action='store_true', help='print one JSON object last')
  p.add_argument('--out', default='')
  a = p.parse_args(argv)
  torch.set_num_threads(a.threads)
  apps.enable_compilation_cache(a.compilation_cache_dir)
  if not a.skip_check:
    errors = torch_reference.check()
    assert all(v < 1e-5 for v in errors.values()), errors
  config = config_lib.load_config(a.config)
  model = models.build(config.model)
  size = int(config.data.input_size)
  rng = np.random.default_rng(0)
  variables = models.init_variables(model)
  rows = []
  for batch in [int(b) for b in a.forward_batches.split(',') if b]:
    x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    nets = {cl: torch_reference.build(config.model, variables, cl) for cl in (False, True)}
    race = _race({'ours': _ours_forward(model, variables, x),
                  'ours_predictor': _ours_predictor_forward(model, variables, x),
                  'ours_inference': _ours_inference_forward(model, variables, x),
                  'torch_nchw': _torch_forward(nets[False], x, False),
                  'torch_channels_last': _torch_forward(nets[True], x, True)}, a.repeats)
    rows.append(_row('forward', batch, size, race))
    print(_format(rows[-1]), flush=True)
  x = rng.standard_normal((a.train_batch, a.train_size, a.train_size, 3)).astype(np.float32)
  race = _race({'ours': _ours_train_step(model, variables, x),
                'torch_nchw': _torch_train_step(torch_reference.build(config.model, variables), x,
                                                False),
                'torch_channels_last': _torch_train_step(
                    torch_reference.build(config.model, variables, True), x, True)}, a.repeats)
  rows.append(_row('train_step', a.train_batch, a.train_size, race))
  print(_format(rows[-1]), flush=True)
  forward = [r for r in rows if r['kind'] == 'forward']
  result = {
      'cpu': _cpu_name(), 'threads': a.threads, 'jax': jax.__version__, 'torch': torch.__version__,
      'config': pathlib.Path(a.config).name, 'repeats': a.repeats, 'rows': rows,
      'forward_ratio': forward[0]['ratio'] if forward else None,
      'inference_forward_ratio': forward[0]['inference_ratio'] if forward else None,
      'predictor_forward_ratio': forward[0]['predictor_ratio'] if forward else None,
      'train_step_ratio': rows[-1]['ratio'],
      'forward_compile_s': forward[0]['ours_compile_s'] if forward else None,
      'train_compile_s': rows[-1]['ours_compile_s'],
      'peak_rss_mb_both_frameworks': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }
  if a.out:
    pathlib.Path(a.out).write_text(json.dumps(result, indent=2))
  if a.json:
    print(json.dumps({k: v for k, v in result.items() if k != 'rows'}))
  return result


def _format(r: dict) -> str:
  inference = (f"ours predictor {r['ours_predictor_ms']:8.1f} ms | "
               f"ours inference program {r['ours_inference_ms']:8.1f} ms | "
               if 'ours_inference_ms' in r else '')
  return (f"{r['kind']:>10} b{r['batch']} {r['input']}px | ours {r['ours_ms']:8.1f} ms | {inference}"
          f"torch NCHW {r['torch_nchw_ms']:8.1f} ms | torch channels-last "
          f"{r['torch_channels_last_ms']:8.1f} ms | ours / best torch {r['ratio']:.2f} | "
          f"ours compile {r['ours_compile_s']:.1f} s")


if __name__ == '__main__':
  main()
