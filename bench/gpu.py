"""One accelerator measurement in one run: network forward, end-to-end evaluation, training.

  bench/gpu.sh                     # on a GPU machine (installs what its image lacks)
  python bench/gpu.py --quick      # the same entry point on a CPU, small sizes: a check

Writes one JSON (`--out`; also `$OUT/gpu.json` when `$OUT` is set) and prints a table:

* forward: W32-512 `model.apply` (jitted, eval mode) ms per image at batch 1, 8, 32 in
  float32 and bfloat16 (`model.dtype`), against the PyTorch twin of
  `bench/torch_reference.py` (channels-last; bfloat16 under autocast) on the same device,
  interleaved, medians after compilation; the two frameworks' float32 outputs are compared
  first (max |difference| / max |output|, reported).
* evaluation: images/s end to end (network, flip test, aggregation, grouping, final
  coordinates) with the Predictor's default grouping for the backend (on a GPU: NMS, top-k
  and refine's scans on the device, matching on the host), the next batch dispatched while
  the host groups the last, on the COCO sample repeated to `--images` and on as many
  synthetic 512-px scenes. Grouping sees each image's ground truth rendered as a trained
  network's outputs (`bench/oracle.py`; random weights would flood it with hundreds of
  people); the network still runs and is waited for. Also per image: the host CPU time of
  grouping (thread time of `collect`: matching, fills, final coordinates, dispatch) and
  its wall time (which also waits for device work queued behind the next image), and
  whether device and host grouping give identical people on the first images.
* train_step: W32-512 at batch 32 in bfloat16, images/s and compile time
  (`bench/train_step.py` in this process).

`--quick` uses the tiny config, batches 1 and 2, 8 images and a batch-2 train step, so the
whole script runs in a minute or two on a CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
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
import numpy as np  # noqa: E402

from higherhrnet_jax import config as config_lib, models  # noqa: E402
from higherhrnet_jax.data import synthetic  # noqa: E402
from higherhrnet_jax.data.coco import decode_image  # noqa: E402
from higherhrnet_jax.inference.predictor import Predictor  # noqa: E402

W32 = REPO / 'configs' / 'coco' / 'higherhrnet_w32_512.py'
TINY = REPO / 'configs' / 'tiny.py'
SAMPLE = REPO.parent / 'shared' / 'data' / 'coco_sample'


def _load(name: str):
  spec = importlib.util.spec_from_file_location(f'bench_{name}', REPO / 'bench' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _torch():
  try:
    import torch  # noqa: F401
    import torch_reference
  except ImportError:
    return None, None
  return torch, torch_reference


def _call_ms(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return 1e3 * (time.perf_counter() - t0)


def forward(config_path, size: int, batches, repeats: int) -> list[dict]:
  torch, torch_reference = _torch()
  rows = []
  for dtype in ('float32', 'bfloat16'):
    config = config_lib.load_config(config_path, [f'model.dtype={dtype}'])
    model = models.build(config.model)
    variables = models.init_variables(model, 0)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    dev = None
    if torch is not None:
      dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
      net = torch_reference.build(config.model, jax.device_get(variables), True).to(dev)
    for b in batches:
      x = np.random.default_rng(b).standard_normal((b, size, size, 3)).astype(np.float32)
      xj = jax.device_put(x)
      t0 = time.perf_counter()
      compiled = apply.lower(variables, xj).compile()
      compile_s = time.perf_counter() - t0
      ours = lambda: jax.block_until_ready(compiled(variables, xj))
      row = dict(dtype=dtype, batch=b, size=size, ours_compile_s=compile_s)
      runs = {'ours': ours}
      if torch is not None:
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dev).contiguous(
            memory_format=torch.channels_last)

        def theirs(xt=xt, dtype=dtype):
          with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16,
                                               enabled=dtype == 'bfloat16'):
            out = net(xt)
          if dev.type == 'cuda':
            torch.cuda.synchronize()
          return out

        runs['torch'] = theirs
        if dtype == 'float32':
          a = np.asarray(compiled(variables, xj)[0], np.float32)
          t = theirs()[0].float().cpu().numpy().transpose(0, 2, 3, 1)
          row['max_rel_difference'] = float(np.abs(a - t).max() / np.abs(t).max())
      for fn in runs.values():
        fn()  # warm-up (cuDNN autotuning, allocations)
      times = {k: [] for k in runs}
      for _ in range(repeats):
        for k, fn in runs.items():
          times[k].append(_call_ms(fn))
      for k, v in times.items():
        row[f'{k}_ms_per_image'] = statistics.median(v) / b
      if 'torch' in runs:
        row['ratio'] = row['ours_ms_per_image'] / row['torch_ms_per_image']
      rows.append(row)
      print(json.dumps(row), flush=True)
  return rows


def evaluation(config_path, name: str, images, people, *, check: int = 4) -> dict:
  config = config_lib.load_config(config_path, [
      'test.flip_test=True', 'test.adjust=True', 'test.refine=True', 'test.scale_factor=(1.0,)'])
  model = models.build(config.model)
  variables = models.init_variables(model, 0)
  predictor = Predictor(config, variables)
  inputs = [predictor.prepare(im) for im in images]
  # Grouping sees the inputs' ground truth as network outputs; the real network still runs.
  select = _load('inference')._use_oracle_outputs(predictor, inputs, people)  # pylint: disable=protected-access
  # One image per input shape compiles every program, then the timed pass: image i + 1 is
  # dispatched before image i is grouped.
  seen = set()
  for i, inp in enumerate(inputs):
    shape = tuple(im.shape for im in inp.images)
    if shape not in seen:
      seen.add(shape)
      select(i)
      predictor.collect(predictor.dispatch([inp]))
  compile_s = predictor.timings['compile']
  for k in ('network', 'aggregation', 'grouping', 'images'):
    predictor.timings[k] = 0
  found, collect_s, host_cpu_s = [], 0.0, 0.0
  t0 = time.perf_counter()
  pending = None
  for i, inp in enumerate(inputs + [None]):
    flight = None
    if inp is not None:
      select(i)
      flight = predictor.dispatch([inp])
    if pending is not None:
      h0, c0 = time.perf_counter(), time.thread_time()
      found.extend(predictor.collect(pending))  # one image: grouped in this thread
      collect_s += time.perf_counter() - h0
      host_cpu_s += time.thread_time() - c0
    pending = flight
  wall = time.perf_counter() - t0
  # The other grouping path on the same maps (same predictor, so no program compiles
  # again): identical people and scores expected.
  other = 'host' if predictor.grouping_on == 'device' else 'device'
  timed_path, predictor.grouping_on = predictor.grouping_on, other
  identical = True
  for i in range(min(check, len(inputs))):
    select(i)
    a = predictor.collect(predictor.dispatch([inputs[i]]))[0]
    identical &= bool(np.array_equal(a.poses, found[i].poses)
                      and np.array_equal(a.scores, found[i].scores))
  predictor.grouping_on = timed_path
  row = dict(images=name, count=len(inputs), grouping_on=predictor.grouping_on,
             images_per_s=len(inputs) / wall,
             host_cpu_ms_per_image=1e3 * host_cpu_s / len(inputs),
             collect_wall_ms_per_image=1e3 * collect_s / len(inputs),
             people_per_image=statistics.fmean(len(f.scores) for f in found),
             compile_s=compile_s, identical_to_other_path=identical, other_path=other)
  print(json.dumps(row), flush=True)
  return row


def _sample(n: int):
  gt = json.loads((SAMPLE / 'test_coco.json').read_text())
  images, people = [], []
  for im in sorted(gt['images'], key=lambda r: r['file_name']):
    images.append(decode_image(SAMPLE / im['file_name']))
    kps = [a['keypoints'] for a in gt['annotations']
           if a['image_id'] == im['id'] and a.get('num_keypoints', 0) > 0]
    people.append(np.asarray(kps, np.float64).reshape(len(kps), -1, 3))
  reps = -(-n // len(images))
  return (images * reps)[:n], (people * reps)[:n]


def _synthetic(n: int, size: int = 512):
  images, people = [], []
  for i in range(n):
    image, anns = synthetic.render_scene(np.random.default_rng(i), size)
    images.append(np.ascontiguousarray(image[..., ::-1]))  # BGR -> RGB
    kps = [a['keypoints'] for a in anns if a['num_keypoints'] > 0]
    people.append(np.asarray(kps, np.float64).reshape(len(kps), -1, 3))
  return images, people


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='small sizes, for a check on a CPU')
  p.add_argument('--images', type=int, default=None, help='images per evaluation set')
  p.add_argument('--repeats', type=int, default=None)
  p.add_argument('--skip', default='', help='comma list of parts to skip: forward,evaluation,'
                                            'train_step')
  p.add_argument('--out', type=pathlib.Path, default=REPO / 'bench' / 'results' / 'gpu.json')
  a = p.parse_args(argv)
  skip = {s for s in a.skip.split(',') if s}
  t_start = time.perf_counter()
  config_path = TINY if a.quick else W32
  size = 128 if a.quick else 512
  n = a.images or (8 if a.quick else 100)
  repeats = a.repeats or (3 if a.quick else 10)
  torch, _ = _torch()
  result = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
                jax=jax.__version__, torch=None if torch is None else torch.__version__,
                config=config_path.name, quick=a.quick)
  if 'forward' not in skip:
    result['forward'] = forward(config_path, size, (1, 2) if a.quick else (1, 8, 32), repeats)
  if 'evaluation' not in skip:
    result['evaluation'] = [evaluation(config_path, 'coco_sample', *_sample(n)),
                            evaluation(config_path, 'synthetic_512', *_synthetic(n))]
  if 'train_step' not in skip:
    train = _load('train_step')
    name, batch = ('tiny', 2) if a.quick else ('w32_512', 32)
    result['train_step'] = train.child(name, batch, size, 3 if a.quick else 10, 'bfloat16')
    print(json.dumps(result['train_step']), flush=True)
  result['wall_s'] = time.perf_counter() - t_start
  text = json.dumps(result, indent=1) + '\n'
  a.out.parent.mkdir(parents=True, exist_ok=True)
  a.out.write_text(text)
  if os.environ.get('OUT'):
    pathlib.Path(os.environ['OUT'], 'gpu.json').write_text(text)
  print(f'wrote {a.out} ({result["wall_s"]:.0f} s)')
  return result


if __name__ == '__main__':
  main()
