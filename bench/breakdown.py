"""Where the forward time goes: HigherHRNet piece by piece, ours against the PyTorch twin.

Each piece (stem, layer1, each stage with its transition, the head) runs on its real input
(the previous piece's output) as its own compiled program on our side, twice: with the
weights as arguments (plain `apply`) and as an inference program (weights compiled in,
Eigen convolutions: `test.weights_in_program`); and as eager modules of `torch_reference`
on the other side; interleaved, one thread count for both. XLA's cost
analysis gives each piece's FLOPs, so the table shows GFLOP/s as well as the ratio.

  PYTHONPATH=<torch> python bench/breakdown.py [--config ...] [--json] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'bench'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import network  # noqa: E402  (bench/network.py: thread settings, processor name)
import torch_reference  # noqa: E402
from higherhrnet_jax import config as config_lib, models  # noqa: E402
from higherhrnet_jax.inference import compile as compile_lib  # noqa: E402


def _our_pieces(model_config):
  """`[(name, fn(variables, x) -> y)]`: pieces whose composition is the whole forward."""
  m = models.build(model_config)
  common = dict(dtype=m.dtype, bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon)

  def sub(v, *path):
    p, s = v['params'], v['batch_stats']
    for key in path:
      p, s = p[key], s.get(key, {})
    return {'params': p, 'batch_stats': s}

  stem = models.HRNet((), m.stem_channels, 0, m.stage1_planes, **common)
  layer1 = [models.Bottleneck(m.stage1_planes, **common) for _ in range(m.stage1_blocks)]
  pieces = [('stem', lambda v, x: stem.apply(sub(v, 'backbone'), x, False)[0]),
            ('layer1', lambda v, x: _chain(
                [(b, sub(v, 'backbone', f'layer1_{i}')) for i, b in enumerate(layer1)], x))]
  channels = (m.stage1_planes * 4,)
  for s, spec in enumerate(m.stages):
    number = s + 2
    trans = models.Transition(channels, spec.num_channels, **common)
    mods = [models.HighResolutionModule(
        spec.num_blocks, spec.num_channels,
        multi_scale_output=not (s == len(m.stages) - 1 and k == spec.num_modules - 1), **common)
        for k in range(spec.num_modules)]

    def stage(v, xs, number=number, trans=trans, mods=mods):
      xs = trans.apply(sub(v, 'backbone', f'transition{number - 1}'),
                       list(xs) if isinstance(xs, (list, tuple)) else [xs], False)
      for k, module in enumerate(mods):
        xs = module.apply(sub(v, 'backbone', f'stage{number}_{k}'), xs, False)
      return xs

    pieces.append((f'stage{number}', stage))
    channels = spec.num_channels
  head = models.HigherHead(m.output_channels, m.deconvs, m.final_conv_kernel, **common)
  pieces.append(('head', lambda v, xs: head.apply(sub(v, 'head'), xs[0], False)))
  return pieces


def _chain(blocks, x):
  for block, v in blocks:
    x = block.apply(v, x, False)
  return x


def _torch_pieces(net):
  return [('stem', net.stem), ('layer1', net.layer1),
          *[(f'stage{s}', lambda ys, s=s: net.stage(s, ys if isinstance(ys, list) else [ys]))
            for s in (2, 3, 4)],
          ('head', lambda ys: net.head(ys[0]))]


def _median_ms(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default=str(network.CONFIG))
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--threads', type=int, default=os.cpu_count())
  p.add_argument('--json', action='store_true')
  p.add_argument('--out', default='')
  a = p.parse_args()
  torch.set_num_threads(a.threads)
  config = config_lib.load_config(a.config)
  model = models.build(config.model)
  variables = models.init_variables(model)
  size = int(config.data.input_size)
  x = np.random.default_rng(0).standard_normal((a.batch, size, size, 3)).astype(np.float32)
  ours = _our_pieces(config.model)
  weights = jax.device_put(variables)
  nets = {cl: torch_reference.build(config.model, variables, cl) for cl in (False, True)}
  rows = []
  xj = jnp.asarray(x)
  xt = {cl: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) for cl in nets}
  xt[True] = xt[True].contiguous(memory_format=torch.channels_last)
  torch_pieces = {cl: _torch_pieces(net) for cl, net in nets.items()}
  with torch.no_grad():
    for i, (name, fn) in enumerate(ours):
      t0 = time.perf_counter()
      compiled = jax.jit(fn).lower(weights, xj).compile()
      compile_s = time.perf_counter() - t0
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      flops = float(cost.get('flops', 0.0))
      inference = compile_lib.compile_with_weights(fn, weights, xj)
      runs = {'ours': lambda: jax.block_until_ready(compiled(weights, xj)),
              'ours_inference': lambda: jax.block_until_ready(inference(xj))}
      for cl in nets:
        piece, inp = torch_pieces[cl][i][1], xt[cl]
        runs[f'torch_{"cl" if cl else "nchw"}'] = lambda piece=piece, inp=inp: piece(inp)
      for run in runs.values():  # warm-up
        run()
      times = {k: [] for k in runs}
      for _ in range(a.repeats):  # interleaved
        for k, run in runs.items():
          times[k].append(_median_ms(run, 1))
      ms = {k: statistics.median(v) for k, v in times.items()}
      best = min(ms['torch_nchw'], ms['torch_cl'])
      rows.append({'piece': name, **{f'{k}_ms': round(v, 2) for k, v in ms.items()},
                   'ratio': round(ms['ours'] / best, 3),
                   'inference_ratio': round(ms['ours_inference'] / best, 3), 'gflop': round(flops / 1e9, 2),
                   'ours_gflops_per_s': round(flops / 1e6 / ms['ours'], 1),
                   'torch_gflops_per_s': round(flops / 1e6 / best, 1),
                   'compile_s': round(compile_s, 2)})
      xj = jax.block_until_ready(compiled(weights, xj))
      xt = {cl: torch_pieces[cl][i][1](xt[cl]) for cl in nets}
  total = {k: round(sum(r[k] for r in rows), 1)
           for k in ('ours_ms', 'ours_inference_ms', 'torch_nchw_ms', 'torch_cl_ms')}
  print(f'{config.model.name} {size}x{size} batch {a.batch}, {a.threads} threads, '
        f'{network._cpu_name()}')
  print(f'{"piece":<8}{"GFLOP":>7}{"ours ms":>9}{"inference":>10}{"torch NCHW":>11}'
        f'{"torch CL":>9}{"ratio":>7}{"ours GF/s":>10}{"torch GF/s":>11}')
  for r in rows:
    print(f'{r["piece"]:<8}{r["gflop"]:>7.2f}{r["ours_ms"]:>9.1f}{r["ours_inference_ms"]:>10.1f}'
          f'{r["torch_nchw_ms"]:>11.1f}{r["torch_cl_ms"]:>9.1f}{r["ratio"]:>7.2f}'
          f'{r["ours_gflops_per_s"]:>10.1f}{r["torch_gflops_per_s"]:>11.1f}')
  print(f'{"sum":<8}{"":>7}{total["ours_ms"]:>9.1f}{total["ours_inference_ms"]:>10.1f}'
        f'{total["torch_nchw_ms"]:>11.1f}{total["torch_cl_ms"]:>9.1f}')
  result = {'config': a.config, 'batch': a.batch, 'input': size, 'threads': a.threads,
            'cpu': network._cpu_name(), 'jax': jax.__version__, 'torch': torch.__version__,
            'pieces': rows, 'total': total}
  if a.out:
    pathlib.Path(a.out).write_text(json.dumps(result, indent=1) + '\n')
  if a.json:
    print(json.dumps(result))


if __name__ == '__main__':
  main()
