"""Top-down HRNet speed: network forward (crops/s, per batch size) and training samples/s.

  python bench/topdown.py                 # W32-256x192 and W48-384x288, batch 1 and 32
  python bench/topdown.py --runs w32_256x192:1,w32_256x192:32 --reps 3 --json

Forward: the jitted eval-mode network, compiled as the top-down Predictor compiles it, on
random 8-bit crops (normalisation by table on the
device included, no flip), timed over `--reps` calls after one compiling call, reported as
ms per crop and crops/s; compile time apart. Data: `PersonSamples` (decode, half body /
scale / rotation / flip draws, affine crop, normalisation, targets) on the COCO sample's
people in this process, OpenCV on one thread (one grain worker's work), per crop size.

The table also lists the official PyTorch code's figures, measured separately on the same
CPU kind (channels-last, 2 threads): W32-256x192 163 ms per crop at batch 1, 148 at batch
32; W48-384x288 628 ms at batch 1; training samples 183/s at 256x192, 91/s at 384x288.
They were not measured in this run: compare with care, and name the processor.
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
DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'coco_sample'
CONFIGS = {'w32_256x192': 'configs/coco/hrnet_w32_256x192.py',
           'w32_384x288': 'configs/coco/hrnet_w32_384x288.py',
           'w48_256x192': 'configs/coco/hrnet_w48_256x192.py',
           'w48_384x288': 'configs/coco/hrnet_w48_384x288.py'}
# The official PyTorch code's figures, measured separately on this CPU kind (ms per crop;
# samples/s); not measured here.
OFFICIAL_MS = {('w32_256x192', 1): 163.0, ('w32_256x192', 32): 148.0, ('w48_384x288', 1): 628.0}
OFFICIAL_SAMPLES = {(256, 192): 183.0, (384, 288): 91.0}


def cpu_name() -> str:
  """The processor's name and widest vector extension (XLA:CPU speed depends on both)."""
  name, flags = platform.processor() or platform.machine(), ''
  try:
    for line in open('/proc/cpuinfo'):
      if line.startswith('model name'):
        name = line.split(':', 1)[1].strip()
      elif line.startswith('flags'):
        flags = line
  except OSError:
    pass
  isa = 'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else ''
  return f'{name} with {isa}' if isa else name


def forward(name: str, batch: int, reps: int) -> dict:
  import jax
  import numpy as np

  from higherhrnet_jax import config as config_lib, models
  from higherhrnet_jax.inference import compile as compile_lib
  from higherhrnet_jax.inference.outputs import normalize

  cfg = config_lib.load_config(REPO / CONFIGS[name])
  model = models.build(cfg.model)
  variables = jax.device_put(models.init_variables(model))
  h, w = cfg.data.input_size
  # Compiled as the top-down Predictor compiles it (Eigen convolutions on a CPU).
  fn = compile_lib.forward_jit(lambda v, x: model.apply(v, normalize(x), train=False),
                               jax.devices())
  crops = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(variables, crops))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(variables, crops))
    times.append(time.perf_counter() - t0)
  ms = 1e3 * float(np.median(times)) / batch
  return dict(kind='forward', config=name, batch=batch, ms_per_crop=ms, crops_per_s=1e3 / ms,
              first_call_s=compile_s, reps=reps, official_ms_per_crop=OFFICIAL_MS.get((name, batch)))


def data(data_dir: pathlib.Path, height: int, width: int, n: int) -> dict:
  import cv2

  from higherhrnet_jax.config import pose_hrnet
  from higherhrnet_jax.data import pipeline
  from higherhrnet_jax.topdown import samples

  cv2.setNumThreads(1)
  c = pose_hrnet.base_config()
  pose_hrnet.with_input_size(c, height, width)
  c.dataset.train_annotations = str(data_dir / 'test_coco.json')
  c.dataset.train_images = str(data_dir)
  builder = samples.PersonSamples.from_config(c, 'train2017')
  builder(0, pipeline.sample_rng(0, 0, 0))  # warm-up (numba, caches)
  t0 = time.perf_counter()
  for i in range(n):
    r = i % len(builder)
    builder(r, pipeline.sample_rng(0, 1 + i // len(builder), r))
  dt = time.perf_counter() - t0
  return dict(kind='data', input=f'{height}x{width}', samples_per_s=n / dt, samples=n,
              official_samples_per_s=OFFICIAL_SAMPLES.get((height, width)))


def table(rows: list[dict], cpu: str) -> str:
  out = [f'CPU: {cpu} ({os.cpu_count()} cores)', '',
         '| run | ms/crop | crops/s | first call s | official ms/crop (measured apart) |', '|---|---|---|---|---|']
  for r in rows:
    if r['kind'] == 'forward':
      off = f"{r['official_ms_per_crop']:.0f}" if r['official_ms_per_crop'] else '-'
      out.append(f"| {r['config']} batch {r['batch']} | {r['ms_per_crop']:.1f} | {r['crops_per_s']:.2f} "
                 f"| {r['first_call_s']:.1f} | {off} |")
  out += ['', '| training samples | samples/s (1 process) | official (measured apart) |', '|---|---|---|']
  for r in rows:
    if r['kind'] == 'data':
      off = f"{r['official_samples_per_s']:.0f}" if r['official_samples_per_s'] else '-'
      out.append(f"| {r['input']} | {r['samples_per_s']:.0f} | {off} |")
  return '\n'.join(out)


def main(argv: list[str] | None = None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--runs', default='w32_256x192:1,w32_256x192:32,w48_384x288:1,w48_384x288:32',
                 help='config:batch,... (configs: ' + ', '.join(CONFIGS) + ')')
  p.add_argument('--reps', type=int, default=3)
  p.add_argument('--samples', type=int, default=120, help='training samples per crop size')
  p.add_argument('--data_dir', type=pathlib.Path, default=DEFAULT_DATA)
  p.add_argument('--out', type=pathlib.Path, default=REPO / 'bench' / 'results' / 'topdown.json')
  p.add_argument('--json', action='store_true')
  a = p.parse_args(argv)
  rows = []
  for run in a.runs.split(','):
    name, batch = run.split(':')
    rows.append(forward(name, int(batch), a.reps))
    print(json.dumps(rows[-1]), flush=True)
  for h, w in ((256, 192), (384, 288)):
    rows.append(data(a.data_dir, h, w, a.samples))
    print(json.dumps(rows[-1]), flush=True)
  cpu = cpu_name()
  a.out.parent.mkdir(parents=True, exist_ok=True)
  a.out.write_text(json.dumps(dict(cpu=cpu, cpu_count=os.cpu_count(), rows=rows), indent=2))
  print(table(rows, cpu))
  if a.json:
    print(json.dumps(rows))
  return rows


if __name__ == '__main__':
  main()
