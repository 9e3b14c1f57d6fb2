"""Grouping speed: our `parse` against a plain NumPy + `munkres` matcher, same output.

The baseline below is a straightforward NumPy/Python rendering of the official
`HeatmapParser` (max-pool NMS, top-k, `match_by_tag` with dicts and munkres 1.1.4, adjust,
refine over whole maps), i.e. what users of the official code run. Before timing, both are
run on every scene of the official `grouping.npz` fixture and must give identical poses and
scores; then both are timed in the same process, scene by scene, interleaved.

Usage:
  python bench/grouping.py [--fixtures DIR] [--repeats N] [--large] [--json]

`--large` adds one full-resolution case (maps at the 512 x 832 network-input size that
PROJECT2IMAGE gives): fixture scene 10 tiled 4 x 7 and cropped, ~33 people.

With `--json` the last printed line is one JSON object with `grouping_ms`,
`baseline_grouping_ms` (means over scenes of per-scene medians), `speedup`, the same from
best-of-N times (`*_best_*`) and the time of the device-split path (jitted `nms_top_k` then
`parse_top_k`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault('NUMBA_CACHE_DIR', str(REPO / '.numba_cache'))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from munkres import Munkres, __version__ as munkres_version  # noqa: E402

from higherhrnet_jax.config import base_config  # noqa: E402
from higherhrnet_jax.inference import grouping  # noqa: E402

DEFAULT_FIXTURES = REPO.parent / 'shared' / 'fixtures' / 'official'


# ------------------------------------------------------------------------------ baseline


def _baseline_top_k(det: np.ndarray, tag: np.ndarray, k: int, kernel: int, pad: int):
  """det [K, H, W], tag [K, H, W, T] -> val_k [K, k], loc_k [K, k, 2] (x, y), tag_k."""
  nj, h, w = det.shape
  padded = np.pad(det, ((0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
  pooled = np.full_like(det, -np.inf)
  for dy in range(kernel):
    for dx in range(kernel):
      np.maximum(pooled, padded[:, dy:dy + h, dx:dx + w], out=pooled)
  kept = (det * (pooled == det)).reshape(nj, h * w)
  ind = np.argsort(-kept, axis=1, kind='stable')[:, :k]
  val_k = np.take_along_axis(kept, ind, axis=1)
  tag_k = np.stack([np.take_along_axis(tag[..., t].reshape(nj, h * w), ind, axis=1)
                    for t in range(tag.shape[-1])], axis=-1)
  loc_k = np.stack([ind % w, ind // w], axis=-1)
  return val_k, loc_k, tag_k


def _baseline_match(val_k, loc_k, tag_k, joint_order, det_thr, tag_thr, use_val, ignore_much,
                    max_people):
  nj = val_k.shape[0]
  empty_person = np.zeros((nj, 3 + tag_k.shape[2]))
  people = {}  # key (first tag of the founding detection) -> [K, 3 + T] rows
  tag_lists = {}
  for step, j in enumerate(joint_order):
    rows = np.concatenate([loc_k[j], val_k[j][:, None], tag_k[j]], axis=1)  # float64
    keep = rows[:, 2] > det_thr
    rows, tags = rows[keep], tag_k[j][keep]
    if len(rows) == 0:
      continue
    if step == 0 or not people:
      for t, r in zip(tags, rows):
        people.setdefault(t[0], np.copy(empty_person))[j] = r
        tag_lists[t[0]] = [t]
      continue
    keys = list(people)[:max_people]
    if ignore_much and len(keys) == max_people:
      continue
    means = np.array([np.mean(tag_lists[key], axis=0) for key in keys])
    dist = np.linalg.norm(rows[:, None, 3:] - means[None], ord=2, axis=2)
    cost = np.round(dist) * 100 - rows[:, 2:3] if use_val else np.copy(dist)
    n_rows, n_cols = cost.shape
    if n_rows > n_cols:
      cost = np.concatenate([cost, np.full((n_rows, n_rows - n_cols), 1e10)], axis=1)
    for r, c in Munkres().compute(cost):
      if r < n_rows and c < n_cols and dist[r, c] < tag_thr:
        people[keys[c]][j] = rows[r]
        tag_lists[keys[c]].append(tags[r])
      else:
        people.setdefault(tags[r][0], np.copy(empty_person))[j] = rows[r]
        tag_lists[tags[r][0]] = [tags[r]]
  return np.array([people[key] for key in people]).astype(np.float32)


def _quarter_shift(m: np.ndarray, y: int, x: int) -> tuple[float, float]:
  h, w = m.shape
  sx = 0.25 if m[y, min(x + 1, w - 1)] > m[y, max(x - 1, 0)] else -0.25
  sy = 0.25 if m[min(y + 1, h - 1), x] > m[max(y - 1, 0), x] else -0.25
  return sx, sy


def _baseline_refine(det, tag, person):
  """det [K, H, W], tag [K, H, W, T], person [K, 3 + T] float32 (modified in place)."""
  present = [tag[j, int(person[j, 1]), int(person[j, 0])] for j in range(len(person))
             if person[j, 2] > 0]
  ref = np.mean(present, axis=0)
  for j in range(len(person)):
    m = det[j]
    score = m - np.round(np.sqrt(((tag[j] - ref[None, None]) ** 2).sum(axis=2)))
    y, x = np.unravel_index(np.argmax(score), m.shape)
    val = m[y, x]
    if val > 0 and person[j, 2] == 0:
      sx, sy = _quarter_shift(m, y, x)
      person[j, :3] = (x + 0.5 + sx, y + 0.5 + sy, val)
  return person


def baseline_parse(heatmaps: np.ndarray, tags: np.ndarray, config, adjust: bool = True,
                   refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """The official algorithm in NumPy/Python; heatmaps [H, W, K], tags [H, W, K, T]."""
  t = config.test
  det = np.transpose(heatmaps, (2, 0, 1))
  tag = np.transpose(tags, (2, 0, 1, 3))
  val_k, loc_k, tag_k = _baseline_top_k(det, tag, config.data.max_num_people, t.nms_kernel,
                                        t.nms_padding)
  people = _baseline_match(val_k, loc_k, tag_k, list(config.dataset.keypoints.joint_order),
                           t.detection_threshold, t.tag_threshold, t.use_detection_val,
                           t.ignore_too_much, config.data.max_num_people)
  if adjust:
    for person in people:
      for j, row in enumerate(person):
        if row[2] > 0:
          sx, sy = _quarter_shift(det[j], int(row[1]), int(row[0]))
          row[0] = row[0] + np.float32(sx) + np.float32(0.5)
          row[1] = row[1] + np.float32(sy) + np.float32(0.5)
  scores = np.array([p[:, 2].mean() for p in people], np.float32)
  if refine:
    for person in people:
      _baseline_refine(det, tag, person)
  if len(people) == 0:
    people = np.zeros((0, det.shape[0], 3 + tag.shape[-1]), np.float32)
  return people, scores


# ---------------------------------------------------------------------------------- bench


def _load_scenes(fixtures: pathlib.Path) -> list[tuple[np.ndarray, np.ndarray]]:
  z = np.load(fixtures / 'grouping.npz')
  scenes = []
  for s in range(int(z['num_scenes'])):
    det = np.ascontiguousarray(z[f's{s:02d}_det'][0].transpose(1, 2, 0))
    tag = np.ascontiguousarray(z[f's{s:02d}_tag'][0].transpose(1, 2, 0, 3))
    scenes.append((det, tag))
  return scenes


def _large_scene(scenes) -> tuple[np.ndarray, np.ndarray]:
  det, tag = scenes[10]
  big = np.tile(det, (4, 7, 1))[:512, :832]
  noise = np.random.default_rng(0).uniform(0, 1e-4, big.shape).astype(np.float32)
  big = np.ascontiguousarray(big + noise * (big > 0))  # keep the tiled peaks distinct
  return big, np.ascontiguousarray(np.tile(tag, (4, 7, 1, 1))[:512, :832])


def _time_ms(fn, *args) -> float:
  t0 = time.perf_counter()
  fn(*args)
  return (time.perf_counter() - t0) * 1e3


def _split_parse(fn, det, tag, spec):
  """The device-split path: jitted `nms_top_k`, then `parse_top_k` on the host."""
  val_k, loc_k, tag_k = (np.asarray(a) for a in fn(det, tag))
  return grouping.parse_top_k(val_k, loc_k, tag_k, det, tag, spec)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--fixtures', type=pathlib.Path, default=DEFAULT_FIXTURES)
  ap.add_argument('--repeats', type=int, default=7, help='timed runs per scene and method')
  ap.add_argument('--large', action='store_true', help='add a 512 x 832 case (slow baseline)')
  ap.add_argument('--json', action='store_true', help='print one JSON object last')
  args = ap.parse_args()

  config = base_config()
  spec = grouping.GroupingSpec.from_config(config)
  scenes = _load_scenes(args.fixtures)
  t = config.test
  split_fn = jax.jit(functools.partial(grouping.nms_top_k, kernel=t.nms_kernel,
                                       padding=t.nms_padding, k=config.data.max_num_people))

  # Warm-up (numba cache load or compile, one XLA program per map shape) and the
  # identical-output check.
  for i, (det, tag) in enumerate(scenes):
    ours = grouping.parse(det, tag, spec)
    base = baseline_parse(det, tag, config)
    split = _split_parse(split_fn, det, tag, spec)
    for name, other in (('baseline', base), ('nms_top_k + parse_top_k', split)):
      if not (np.array_equal(ours[0], other[0]) and np.array_equal(ours[1], other[1])):
        raise SystemExit(f'scene {i}: parse and {name} disagree; not timing')

  rows = []
  for i, (det, tag) in enumerate(scenes):
    times = {'ours': [], 'base': [], 'split': []}
    for _ in range(args.repeats):  # interleaved, so load changes hit all methods alike
      times['ours'].append(_time_ms(grouping.parse, det, tag, spec))
      times['base'].append(_time_ms(baseline_parse, det, tag, config))
      times['split'].append(_time_ms(_split_parse, split_fn, det, tag, spec))
    people = grouping.parse(det, tag, spec)[0].shape[0]
    rows.append((i, det.shape[:2], people, {k: (statistics.median(v), min(v))
                                            for k, v in times.items()}))

  print(f'{"scene":>5} {"H x W":>9} {"people":>6} {"parse ms":>9} {"baseline ms":>12} '
        f'{"x":>6} {"jax+host ms":>12}')
  for i, (h, w), p, tm in rows:
    o, b, s = tm['ours'][0], tm['base'][0], tm['split'][0]
    print(f'{i:5d} {f"{h}x{w}":>9} {p:6d} {o:9.2f} {b:12.2f} {b / o:6.1f} {s:12.2f}')

  def mean(key, which):
    return statistics.fmean(r[3][key][which] for r in rows)

  ours_ms, base_ms, split_ms = mean('ours', 0), mean('base', 0), mean('split', 0)
  ours_best, base_best = mean('ours', 1), mean('base', 1)
  print(f'{"mean":>5} {"":>9} {"":>6} {ours_ms:9.2f} {base_ms:12.2f} {base_ms / ours_ms:6.1f} '
        f'{split_ms:12.2f}')
  print(f'best-of-{args.repeats} means: parse {ours_best:.2f} ms, baseline {base_best:.2f} ms, '
        f'{base_best / ours_best:.1f}x')
  print(f'identical output on all {len(scenes)} scenes; per-scene medians of {args.repeats} '
        f'interleaved runs. parse: numba NMS/top-k + matching + adjust + refine; jax+host: '
        f'jitted nms_top_k on {jax.default_backend()} + parse_top_k; baseline: NumPy + '
        f'munkres {munkres_version}.')
  extra = {}
  if args.large:
    det, tag = _large_scene(scenes)
    ours = grouping.parse(det, tag, spec)
    base = baseline_parse(det, tag, config)
    if not (np.array_equal(ours[0], base[0]) and np.array_equal(ours[1], base[1])):
      raise SystemExit('large case: parse and the baseline disagree')
    o = min(_time_ms(grouping.parse, det, tag, spec) for _ in range(3))
    b = _time_ms(baseline_parse, det, tag, config)
    print(f'large 512x832, {ours[0].shape[0]} people (identical output): parse {o:.1f} ms '
          f'(best of 3), baseline {b:.1f} ms (one run), {b / o:.1f}x')
    extra = dict(large_grouping_ms=round(o, 3), large_baseline_grouping_ms=round(b, 3),
                 large_speedup=round(b / o, 2))
  if args.json:
    print(json.dumps(dict(**extra,
        grouping_ms=round(ours_ms, 4), baseline_grouping_ms=round(base_ms, 4),
        speedup=round(base_ms / ours_ms, 2), grouping_best_ms=round(ours_best, 4),
        baseline_grouping_best_ms=round(base_best, 4),
        speedup_best=round(base_best / ours_best, 2), jax_nms_top_k_plus_host_ms=round(
            split_ms, 4), scenes=len(scenes), repeats=args.repeats, identical_output=True)))


if __name__ == '__main__':
  main()
