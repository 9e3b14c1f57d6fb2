"""Per-image inference time split: network, aggregation, grouping; grouping vs. munkres.

For each test-scale set (default: single scale [1] and multi-scale [2, 1, 0.5]) the
`Predictor` runs the sample images with flip test, adjust and refine, waiting after each
stage (`profile=True`) so time is attributed to it:

* network: normalisation, flip batch and the forward pass (jitted);
* aggregation: stage fusion, flip averaging, projection, multi-scale aggregation (jitted);
* grouping: everything after that: NMS + top-k, tag matching, adjust, refine and the map
  to image pixels. With `test.grouping_on` = host (the CPU default) all of it runs on the
  host (numba) on the maps; with device (the accelerator default; `--grouping-on device`)
  NMS + top-k and refine's scans run jitted on the device and only matching on the host.
  The JSON's `grouping_on` says which.

The baseline is the NumPy + munkres 1.1.4 rendering of the official parser from
`bench/grouping.py` (NMS, top-k, `match_by_tag`, adjust, refine on the host), run on the
very same aggregated heatmaps and tags. Before timing, the pipeline's grouping and our
one-call host `parse` must agree on every image, and the baseline must give identical poses
and scores on the images it runs on (`--baseline-images`, the first N of each set). A
warm-up pass compiles every program first (its time is reported separately, as the
warm-up time minus the steady-state time); then the pipeline, `parse` and (for
`--baseline-repeats` > 1) the baseline are timed interleaved, image by image, `--repeats`
times. The baseline has nothing to compile, so its check run is its first timed sample.
Per-image medians are averaged over images; the speedup compares the same images.

Weights default to the official fixtures' deterministic recipe (`bench/_weights.py`).
These random weights are a worst case for grouping: almost every NMS peak is above the
detection threshold, so every joint fills all `max_num_people` top-k slots, random tags
match almost nothing, and nearly every candidate founds a person of its own (hundreds per
image). Refine then scans the full base-size maps for every missing joint of every
person. Trained weights give a handful of people and far less grouping work.

`--outputs oracle` measures that case without trained weights: the network still runs and
is timed, but aggregation and grouping receive the ground truth of `--annotations`
rendered as a perfect network's outputs (`bench/oracle.py`): the
annotated people, their labelled joints, missing joints left for refine.

Default run (W32-512): scale [1] on the first two sample images, [2, 1, 0.5] on the
first image, two timed repeats, the baseline once on the first image of each set. On a
busy 2-core CPU this takes about 13 minutes: compiling W32 takes about a minute per shape
bucket and scale set, and the baseline 2-4 minutes per image on these maps, so more images
are opt-in (`--images 4 --baseline-images 4`).

Usage:
  python bench/inference.py                       # W32-512 defaults above
  python bench/inference.py --scales 1 --images 4 --baseline-images 4 --json
  python bench/inference.py --config configs/tiny.py --scales 1 --scales 2,1,0.5
  python bench/inference.py --outputs oracle --images 4 --baseline-images 4 \
      --out bench/results/inference_oracle.json

With `--json` the last printed line is one JSON object: the first scale set's
`network_ms`, `aggregation_ms`, `grouping_ms`, `baseline_grouping_ms`, `speedup`,
`postprocess_pct` (aggregation + grouping as % of network), `e2e_images_per_s` (all images
end to end, stages overlapped as in an evaluation) at top level, and every set
under `runs`. The same object is written to `--out`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'bench'))  # oracle.py, a tool of the benchmarks and tests
os.environ.setdefault('NUMBA_CACHE_DIR', str(REPO / '.numba_cache'))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from higherhrnet_jax import convert  # noqa: E402
from higherhrnet_jax.config import load_config  # noqa: E402
from higherhrnet_jax.data.coco import decode_image  # noqa: E402
from higherhrnet_jax.inference import grouping  # noqa: E402
from higherhrnet_jax.inference import transforms  # noqa: E402
from higherhrnet_jax.inference.predictor import Predictor  # noqa: E402
import oracle  # noqa: E402

DEFAULT_CONFIG = REPO / 'configs' / 'coco' / 'higherhrnet_w32_512.py'
DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'coco_sample'
DEFAULT_OUT = REPO / 'bench' / 'results' / 'inference.json'
DEFAULT_FIXTURES = REPO.parent / 'shared' / 'fixtures' / 'official'
STAGES = ('network', 'aggregation', 'grouping', 'baseline_grouping', 'parse')


def _load(name: str, path: pathlib.Path):
  """Imports a sibling bench script as a module (bench/ is not a package)."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_baseline = _load('bench_grouping', REPO / 'bench' / 'grouping.py')
_weights = _load('bench_weights', REPO / 'bench' / '_weights.py')


def _scale_set(text: str) -> tuple[float, ...]:
  try:
    scales = tuple(float(v) for v in text.split(',') if v.strip())
  except ValueError as e:
    raise argparse.ArgumentTypeError(f'--scales: expected e.g. 2,1,0.5, got {text!r}') from e
  if not scales or any(s <= 0 for s in scales):
    raise argparse.ArgumentTypeError(f'--scales: positive factors needed, got {text!r}')
  return scales


def _ms(seconds: float) -> float:
  return seconds * 1e3


def _maps(flight, top_k_fn, b: int = 0):
  """Aggregated maps (copied to the host, for the checks) and top-k of image `b` of a
  dispatched batch; `top_k_fn` (the jitted device NMS + top-k) supplies the latter, so that
  `parse_top_k` is checked too."""
  h, w = flight.base_hw[b]
  final = np.asarray(flight.final)[b, :h, :w]
  tags = np.asarray(flight.tags)[b, :h, :w]
  return final, tags, tuple(np.asarray(a) for a in top_k_fn(final, tags))


def _same(a, b) -> bool:
  return np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _timed(fn, *args, **kwargs) -> float:
  t0 = time.perf_counter()
  fn(*args, **kwargs)
  return time.perf_counter() - t0


def _use_oracle_outputs(predictor, inputs, people):
  """Makes the predictor's network stage return ground-truth-rendered outputs.

  The real network still runs (and is waited for) on every call, so the network time is
  the model's; aggregation and grouping then see what a trained network with well
  separated people outputs (`inference.oracle`). Returns `select(i)`, to call before
  dispatching input i.
  """
  size = int(predictor.config.data.input_size)
  spec = predictor.spec
  rendered = []
  for inp, kp in zip(inputs, people):
    bucket = transforms.bucket_batch([inp], int(predictor.config.test.shape_bucket))
    outs = oracle.batch_outputs([oracle.render_outputs(inp, kp, spec, size)], bucket, spec)
    flips = oracle.batch_outputs([oracle.render_outputs(inp, kp, spec, size, flipped=True)],
                                 bucket, spec) if spec.flip_test else None
    rendered.append((outs, flips))
  network = predictor.network
  current = [None]

  def oracle_network(variables, images, input_hw):
    jax.block_until_ready(network(variables, images, input_hw))
    return current[0]

  predictor.network = oracle_network
  return lambda i: current.__setitem__(0, rendered[i])


def run_scale_set(config_path, overrides, scales, variables, images, names, repeats,
                  baseline_images, baseline_repeats, allow_mismatch, people=None):
  """Warm-up + identical-output check + interleaved timing for one scale set.

  With `people` (per image [P, K, 3] ground truth), grouping runs on oracle outputs.
  """
  scale_text = ','.join(f'{s:g}' for s in scales)
  config = load_config(config_path, [*overrides, f'test.scale_factor=({scale_text},)',
                                     'test.flip_test=True', 'test.adjust=True',
                                     'test.refine=True'])
  predictor = Predictor(config, variables)
  t = config.test
  top_k_fn = jax.jit(functools.partial(grouping.nms_top_k, kernel=int(t.nms_kernel),
                                       padding=int(t.nms_padding),
                                       k=int(config.data.max_num_people)))

  def pipeline(i):
    inp = inputs[i]
    select(i)
    before = dict(predictor.timings)
    t0 = time.perf_counter()
    flight = predictor.dispatch([inp], profile=True)
    found = predictor.collect(flight)[0]
    wall = time.perf_counter() - t0
    return flight, found, {k: predictor.timings[k] - before[k] for k in STAGES[:3]}, wall

  prepare_s, inputs = [], []
  for img in images:
    t0 = time.perf_counter()
    inputs.append(predictor.prepare(img))
    prepare_s.append(time.perf_counter() - t0)
  select = (lambda i: None) if people is None else _use_oracle_outputs(predictor, inputs, people)

  # Warm-up: compiles one program per shape bucket (numba kernels load from cache or
  # compile). The baseline (NumPy + munkres, nothing to compile) runs here for the
  # identical-output check, and that run is its first timed sample.
  samples = {k: [[] for _ in inputs] for k in STAGES}
  maps, checks, warmup_s = [], [], 0.0
  thr = float(config.test.detection_threshold)
  spec = grouping.GroupingSpec.from_config(config)
  for i, (name, inp) in enumerate(zip(names, inputs)):
    t0 = time.perf_counter()
    flight, found, _, _ = pipeline(i)
    warmup_s += time.perf_counter() - t0
    final, tags, (val_k, loc_k, tag_k) = _maps(flight, top_k_fn)
    maps.append((final, tags))
    split = grouping.parse_top_k(val_k, loc_k, tag_k, final, tags, spec)
    parsed = grouping.parse(final, tags, spec)
    # The pipeline's people (host or device grouping, in image pixels) against `parse`.
    in_image = transforms.get_final_preds(parsed[0], inp.center, inp.scale, inp.base_size)
    ok = _same(split, parsed) and _same((found.poses, found.scores), (in_image, parsed[1]))
    if i < baseline_images:
      t0 = time.perf_counter()
      base = _baseline.baseline_parse(final, tags, config)
      samples['baseline_grouping'][i].append(time.perf_counter() - t0)
      ok = ok and _same(parsed, base)
    checks.append(dict(image=name, identical=ok, baseline_checked=i < baseline_images,
                       people=int(parsed[0].shape[0]), candidates=int((val_k > thr).sum()),
                       heatmap_std=float(final.std()), base_hw=[int(v) for v in final.shape[:2]],
                       input_hw=[list(im.shape[:2]) for im in inp.images]))
    if not ok and not allow_mismatch:
      raise SystemExit(f'scales [{scale_text}], {name}: pipeline grouping, parse and the munkres '
                       'baseline disagree; not timing (see --allow-mismatch)')

  wall = [[] for _ in inputs]
  for r in range(repeats):
    for i in range(len(inputs)):  # interleaved, so load changes hit every method alike
      _, _, split, total = pipeline(i)
      for k, v in split.items():
        samples[k][i].append(v)
      wall[i].append(total)
      final, tags = maps[i]
      if i < baseline_images and r < baseline_repeats - 1:
        samples['baseline_grouping'][i].append(
            _timed(_baseline.baseline_parse, final, tags, config))
      samples['parse'][i].append(_timed(grouping.parse, final, tags, spec))

  # End to end as an evaluation runs: no waits between stages, image i + 1 dispatched
  # before image i is grouped, all images in turn.
  t0 = time.perf_counter()
  pending = None
  for i in range(len(inputs) + 1):
    flight = None
    if i < len(inputs):
      select(i)
      flight = predictor.dispatch([inputs[i]])
    if pending is not None:
      predictor.collect(pending)
    pending = flight
  e2e_s = time.perf_counter() - t0

  med = {k: [statistics.median(v) if v else None for v in samples[k]] for k in STAGES}
  mean_ms = {k: _ms(statistics.fmean(v for v in med[k] if v is not None)) for k in STAGES}
  nb = min(baseline_images, len(inputs))
  # The speedup compares the same images: those the baseline ran on.
  grouping_b = _ms(statistics.fmean(med['grouping'][:nb]))
  parse_b = _ms(statistics.fmean(med['parse'][:nb]))
  steady_s = sum(statistics.median(w) for w in wall)
  return {
      'scales': list(scales),
      'images': len(inputs),
      'repeats': repeats,
      'grouping_on': predictor.grouping_on,
      'baseline_images': nb,
      'baseline_repeats': baseline_repeats,
      'network_ms': mean_ms['network'],
      'aggregation_ms': mean_ms['aggregation'],
      'grouping_ms': mean_ms['grouping'],
      'baseline_grouping_ms': mean_ms['baseline_grouping'],
      'grouping_ms_baseline_images': grouping_b,
      'parse_ms': mean_ms['parse'],
      'speedup': mean_ms['baseline_grouping'] / grouping_b,
      'speedup_same_work': mean_ms['baseline_grouping'] / parse_b,
      'postprocess_pct': 100 * (mean_ms['aggregation'] + mean_ms['grouping']) / mean_ms['network'],
      'prepare_ms': _ms(statistics.fmean(prepare_s)),
      'warmup_s': warmup_s,
      'compile_s': max(warmup_s - steady_s, 0.0),
      'e2e_images_per_s': len(inputs) / e2e_s,
      'identical_output': all(c['identical'] for c in checks),
      'per_image': [dict(c, **{f'{k}_ms': None if med[k][i] is None else _ms(med[k][i])
                               for k in STAGES}) for i, c in enumerate(checks)],
  }


def _ground_truth(path: pathlib.Path, names) -> list[np.ndarray]:
  """Per image name, the [P, K, 3] keypoints of its people with labelled joints."""
  if not path.is_file():
    raise SystemExit(f'--annotations: {path} not found')
  gt = json.loads(path.read_text())
  ids = {im['file_name']: im['id'] for im in gt['images']}
  missing = [n for n in names if n not in ids]
  if missing:
    raise SystemExit(f'--annotations: {path} has no image record for {missing}')
  out = []
  for n in names:
    kps = [a['keypoints'] for a in gt['annotations']
           if a['image_id'] == ids[n] and a.get('num_keypoints', 0) > 0]
    out.append(np.asarray(kps, np.float64).reshape(len(kps), -1, 3))
  return out


def _f(v, fmt: str, width: int) -> str:
  return f'{"-":>{width}}' if v is None else f'{v:{width}{fmt}}'


def print_table(runs) -> None:
  head = (f'{"scales":>9} {"image":>17} {"people":>6} {"cand":>5} {"network":>9} {"aggreg":>8} '
          f'{"grouping":>9} {"munkres":>10} {"x":>6} {"parse":>8} {"post%":>6}')
  print(head)
  print('-' * len(head))
  for r in runs:
    s = ','.join(f'{v:g}' for v in r['scales'])
    for p in r['per_image']:
      post = 100 * (p['aggregation_ms'] + p['grouping_ms']) / p['network_ms']
      base = p['baseline_grouping_ms']
      x = None if base is None else base / p['grouping_ms']
      print(f'{s:>9} {p["image"]:>17} {p["people"]:6d} {p["candidates"]:5d} '
            f'{p["network_ms"]:9.1f} {p["aggregation_ms"]:8.1f} {p["grouping_ms"]:9.1f} '
            f'{_f(base, ".1f", 10)} {_f(x, ".1f", 6)} {p["parse_ms"]:8.1f} {post:6.1f}')
    print(f'{s:>9} {"mean":>17} {"":>6} {"":>5} {r["network_ms"]:9.1f} '
          f'{r["aggregation_ms"]:8.1f} {r["grouping_ms"]:9.1f} {r["baseline_grouping_ms"]:10.1f} '
          f'{r["speedup"]:6.1f} {r["parse_ms"]:8.1f} {r["postprocess_pct"]:6.1f}')
    print(f'{"":>9} end to end (stages overlapped, no waits): {r["e2e_images_per_s"]:.2f} '
          f'images/s; warm-up pass {r["warmup_s"]:.1f} s (compile about {r["compile_s"]:.1f} s), '
          f'host resize {r["prepare_ms"]:.1f} ms/image; medians of {r["repeats"]} interleaved '
          f'runs (baseline: {r["baseline_repeats"]} on the first {r["baseline_images"]} '
          f'image(s)); identical output: {r["identical_output"]}')
  where = runs[0]['grouping_on']
  print(f'ms per image. aggreg: flip/stage/scale aggregation (jitted). grouping: matching + '
        f'adjust + refine + map to image, NMS + top-k included; grouping_on: {where}. munkres: '
        'NumPy + munkres 1.1.4 baseline incl. its own NMS/top-k, on the same maps; x = munkres '
        '/ grouping (mean row: over the baseline images). parse: our one-call host parse incl. '
        'numba NMS/top-k (the same work as the baseline). post% = (aggreg + grouping) / '
        'network. cand: top-k candidates above the detection threshold.')


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--config', type=pathlib.Path, default=DEFAULT_CONFIG)
  ap.add_argument('--data', type=pathlib.Path, default=DEFAULT_DATA, help='folder of *.jpg')
  ap.add_argument('--fixtures', type=pathlib.Path, default=DEFAULT_FIXTURES)
  ap.add_argument('--weights', type=pathlib.Path, default=None,
                  help='official .pth/.npz state dict (default: fixture recipe weights)')
  ap.add_argument('--scales', type=_scale_set, action='append', default=None,
                  help='comma list of test scales; repeat the flag for several sets '
                       '(default: 1 and 2,1,0.5)')
  ap.add_argument('--images', type=int, default=2,
                  help='images for single-scale sets')
  ap.add_argument('--ms-images', type=int, default=1, help='images for multi-scale sets')
  ap.add_argument('--repeats', type=int, default=2, help='timed runs per image (after warm-up)')
  ap.add_argument('--baseline-images', type=int, default=1,
                  help='images (first N of each set) the munkres baseline runs on')
  ap.add_argument('--baseline-repeats', type=int, default=1,
                  help='baseline runs per image (the check run counts; at most repeats + 1)')
  ap.add_argument('--compile-cache', type=pathlib.Path, default=None,
                  help='JAX persistent compilation cache folder (later runs skip compiling; '
                       'the reported compile time then is a cache load)')
  ap.add_argument('--override', action='append', default=[], metavar='KEY=VALUE',
                  help='config override, e.g. test.detection_threshold=5 (repeatable; the '
                       'scales, flip, adjust and refine are set by this script)')
  ap.add_argument('--outputs', choices=('network', 'oracle'), default='network',
                  help='what aggregation and grouping see: the network outputs, or the '
                       'ground truth of --annotations rendered as a perfect network\'s outputs '
                       '(the network still runs and is timed)')
  ap.add_argument('--annotations', type=pathlib.Path, default=None,
                  help='COCO keypoint JSON for --outputs oracle (default: DATA/test_coco.json)')
  ap.add_argument('--grouping-on', choices=('auto', 'host', 'device'), default='auto',
                  help='test.grouping_on: where NMS, top-k and refine scans run')
  ap.add_argument('--allow-mismatch', action='store_true',
                  help='time even if the baseline output differs (recorded in the JSON)')
  ap.add_argument('--out', type=pathlib.Path, default=DEFAULT_OUT)
  ap.add_argument('--json', action='store_true', help='print one JSON object last')
  args = ap.parse_args()
  scale_sets = args.scales or [(1.0,), (2.0, 1.0, 0.5)]
  if min(args.images, args.ms_images, args.repeats, args.baseline_images,
         args.baseline_repeats) < 1:
    raise SystemExit('--images, --ms-images, --repeats, --baseline-images and '
                     '--baseline-repeats must be >= 1')
  if args.compile_cache is not None:
    jax.config.update('jax_compilation_cache_dir', str(args.compile_cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)

  paths = sorted(args.data.glob('*.jpg'))
  if not paths:
    raise SystemExit(f'--data: no *.jpg images in {args.data}')
  images = [decode_image(p) for p in paths]
  names = [p.name for p in paths]
  people = None
  if args.outputs == 'oracle':
    people = _ground_truth(args.annotations or args.data / 'test_coco.json', names)

  config = load_config(args.config, args.override)
  t0 = time.perf_counter()
  if args.weights is None:
    variables = _weights.fixture_variables(config.model, args.fixtures)
    weights = f'fixture recipe ({_weights.fixture_name(config.model)})'
  else:
    variables = convert.load_official(args.weights, config.model)
    weights = str(args.weights)
  weights_s = time.perf_counter() - t0

  runs = []
  for scales in scale_sets:
    n = args.images if len(scales) == 1 else args.ms_images
    runs.append(run_scale_set(args.config, [*args.override, f'test.grouping_on={args.grouping_on}'],
                              scales, variables, images[:n],
                              names[:n], args.repeats, args.baseline_images, args.baseline_repeats,
                              args.allow_mismatch, None if people is None else people[:n]))

  print_table(runs)
  first = runs[0]
  report = {k: first[k] for k in ('network_ms', 'aggregation_ms', 'grouping_ms',
                                   'baseline_grouping_ms', 'grouping_ms_baseline_images',
                                   'parse_ms', 'speedup',
                                   'speedup_same_work', 'postprocess_pct', 'compile_s',
                                   'e2e_images_per_s',
                                   'identical_output', 'scales', 'images')}
  report.update(
      config=os.path.relpath(args.config, REPO) if args.config.is_absolute() else str(args.config),
      overrides=args.override, weights=weights, outputs=args.outputs, weights_load_s=weights_s,
      flip_test=True, adjust=True, refine=True,
      backend=jax.default_backend(), devices=len(jax.local_devices()), cpu_count=os.cpu_count(),
      load_avg_1m=os.getloadavg()[0], jax=jax.__version__, python=platform.python_version(),
      runs=runs)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=1) + '\n')
  print(f'wrote {args.out}')
  if args.json:
    print(json.dumps(report))


if __name__ == '__main__':
  main()
