"""Grouping parity with the official `HeatmapParser` (fixture grouping.npz) and bad input.

Tolerances: top-k values/locations/tags, matched, grouped (TT/TF/FF) and scores all exact
(the fixture README: float64 matching, float32 refine arithmetic, NumPy pairwise score mean).
The scenes come transposed to our [H, W, K(, T)] layout (`grouping_scenes`, conftest).
"""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from grouping_entry_points import MODES  # tests/inference/grouping_entry_points.py
from higherhrnet_jax.config import base_config
from higherhrnet_jax.inference import grouping, grouping_host, host_nms, numpy_order

S = grouping.GroupingSpec.from_config


@pytest.fixture(scope='module')
def config():
  return base_config()


def test_nms_top_k_exact(grouping_scenes):
  fn = jax.jit(grouping.nms_top_k)
  for d in grouping_scenes:
    val_k, loc_k, tag_k = (np.asarray(a) for a in fn(d['hm'], d['tg']))
    np.testing.assert_array_equal(val_k, d['val_k'][0])
    np.testing.assert_array_equal(loc_k, d['loc_k'][0])
    np.testing.assert_array_equal(tag_k, d['tag_k'][0])


def test_nms_top_k_batch_axis(grouping_scenes):
  same = [d for d in grouping_scenes if d['hm'].shape[:2] == (128, 128)][:2]
  hm = np.stack([d['hm'] for d in same])
  tg = np.stack([d['tg'] for d in same])
  val_k, loc_k, tag_k = jax.jit(grouping.nms_top_k)(hm, tg)
  for b, d in enumerate(same):
    np.testing.assert_array_equal(val_k[b], d['val_k'][0])
    np.testing.assert_array_equal(loc_k[b], d['loc_k'][0])
    np.testing.assert_array_equal(tag_k[b], d['tag_k'][0])


@pytest.mark.parametrize('kernel,h,w', [(3, 9, 13), (5, 16, 7), (7, 12, 12), (5, 3, 4),
                                         (1, 5, 6)])
def test_nms_top_k_host_and_device_vs_reduce_window(kernel, h, w):
  """Both NMS + top-k implementations against XLA's reduce_window max pool and a stable
  sort (maps with many ties and exact zeros; equal values keep the lower index first)."""
  rng = np.random.default_rng(kernel * 100 + h)
  hm = (rng.integers(0, 6, (h, w, 3)) / 5).astype(np.float32)
  pad = kernel // 2
  pooled = jax.lax.reduce_window(hm, -np.inf, jax.lax.max, (kernel, kernel, 1), (1, 1, 1),
                                 ((pad, pad), (pad, pad), (0, 0)))
  kept = hm * (np.asarray(pooled) == hm)
  k = min(10, h * w)
  flat = kept.reshape(h * w, 3).T
  order = np.argsort(-flat, axis=1, kind='stable')[:, :k]
  expected = np.take_along_axis(flat, order, axis=1)

  val_k, ind, finite = host_nms.nms_top_k_host(hm, h, w, pad, 10)
  assert finite
  np.testing.assert_array_equal(val_k, expected)
  np.testing.assert_array_equal(ind, order)

  dev_kept = np.asarray(grouping.nms(hm, kernel=kernel, padding=pad))
  np.testing.assert_array_equal(dev_kept, kept)
  val_k, ind = grouping.top_k_indices(dev_kept, 10)
  np.testing.assert_array_equal(val_k, expected)
  np.testing.assert_array_equal(ind, order)


def test_match_from_stored_top_k(grouping_scenes, config):
  """`match_by_tag` alone, fed with the official top-k arrays."""
  for d in grouping_scenes:
    poses, _ = grouping.parse_top_k(d['val_k'][0], d['loc_k'][0], d['tag_k'][0], d['hm'],
                                    d['tg'], S(config), adjust=False, refine=False)
    np.testing.assert_array_equal(poses, d['matched'])


@pytest.mark.parametrize('mode', sorted(MODES))
def test_parse_parity_all_scenes(grouping_scenes, config, mode):
  adjust, refine = MODES[mode]
  for i, d in enumerate(grouping_scenes):
    poses, scores = grouping.parse(d['hm'], d['tg'], S(config), adjust=adjust, refine=refine)
    assert poses.dtype == np.float32 and scores.dtype == np.float32
    assert poses.shape == d[f'grouped_{mode}'].shape, i
    np.testing.assert_array_equal(poses, d[f'grouped_{mode}'], err_msg=f'scene {i}')
    np.testing.assert_array_equal(scores, d[f'scores_{mode}'], err_msg=f'scene {i}')


# ------------------------------------------------------------------- hand-built top-k cases


def _small_config(max_people=2, ignore_too_much=False):
  c = base_config()
  c.data.max_num_people = max_people
  c.test.ignore_too_much = ignore_too_much
  return c


def _top_k(tags_per_joint, nj=17):
  """Top-k arrays where joint `order[i]` has detections with the given tag0 values."""
  order = base_config().dataset.keypoints.joint_order
  m = max(len(t) for t in tags_per_joint)
  val_k = np.zeros((nj, m), np.float32)
  loc_k = np.zeros((nj, m, 2), np.int64)
  tag_k = np.zeros((nj, m, 2), np.float32)
  for i, tags in enumerate(tags_per_joint):
    j = order[i]
    for c, t in enumerate(tags):
      val_k[j, c] = 0.9 - 0.1 * c
      loc_k[j, c] = (10 * c + i, 20 + c)
      tag_k[j, c] = (t, 0.0)
  return order, val_k, loc_k, tag_k


def _maps(nj=17, h=32, w=48, nt=2):
  return np.zeros((h, w, nj), np.float32), np.zeros((h, w, nj, nt), np.float32)


def test_groups_beyond_max_num_people_get_no_joints():
  # Joint order[0] opens groups keyed 0 and 10; order[1] (tags 20, 30: too far) opens two
  # more; at order[2] only the first two keys are candidates, so tags 20.1 / 30.1 cannot
  # join groups 20 / 30 and open new ones: 6 people with one joint each.
  order, val_k, loc_k, tag_k = _top_k([[0.0, 10.0], [20.0, 30.0], [20.1, 30.1]])
  poses, scores = grouping.parse_top_k(val_k, loc_k, tag_k, *_maps(), S(_small_config()),
                                       adjust=False, refine=False)
  assert poses.shape == (6, 17, 5) and scores.shape == (6,)
  assert ((poses[:, :, 2] > 0).sum(axis=1) == 1).all()
  assert [order.index(int(np.flatnonzero(p[:, 2])[0])) for p in poses] == [0, 0, 1, 1, 2, 2]
  np.testing.assert_array_equal(poses[4, order[2], 3], np.float32(20.1))


def test_groups_within_max_num_people_do_get_joints():
  order, val_k, loc_k, tag_k = _top_k([[0.0, 10.0], [0.2, 10.3]])
  poses, _ = grouping.parse_top_k(val_k, loc_k, tag_k, *_maps(), S(_small_config()),
                                  adjust=False, refine=False)
  assert poses.shape == (2, 17, 5)
  np.testing.assert_array_equal(poses[:, order[1], 3], np.float32([0.2, 10.3]))


def test_ignore_too_much_skips_joints_once_full():
  order, val_k, loc_k, tag_k = _top_k([[0.0, 10.0], [0.2, 10.3]])
  poses, _ = grouping.parse_top_k(val_k, loc_k, tag_k, *_maps(),
                                  S(_small_config(ignore_too_much=True)), adjust=False,
                                  refine=False)
  assert poses.shape == (2, 17, 5)
  assert (poses[:, order[1], 2] == 0).all()


def test_equal_keys_share_a_group_like_the_official_dict():
  # Two detections of the first joint with the same tag0 land in one dict entry: the second
  # overwrites the first.
  order, val_k, loc_k, tag_k = _top_k([[3.0, 3.0]])
  poses, _ = grouping.parse_top_k(val_k, loc_k, tag_k, *_maps(), S(_small_config()),
                                  adjust=False, refine=False)
  assert poses.shape == (1, 17, 5)
  np.testing.assert_array_equal(poses[0, order[0], :3], [10, 21, np.float32(0.8)])


# ---------------------------------------------------------------------------- bad input


def test_no_detection_gives_empty_results(config):
  hm, tg = _maps()
  hm[5, 5, :] = 0.05  # below detection_threshold 0.1
  poses, scores = grouping.parse(hm, tg, S(config))
  assert poses.shape == (0, 17, 5) and poses.dtype == np.float32
  assert scores.shape == (0,) and scores.dtype == np.float32


@pytest.mark.parametrize('where', ['heatmaps', 'tags'])
@pytest.mark.parametrize('value', [np.nan, np.inf])
def test_non_finite_maps_raise(config, where, value):
  hm, tg = _maps()
  (hm if where == 'heatmaps' else tg)[3, 4, 5] = value
  with pytest.raises(ValueError, match=f'{where} contain NaN or infinite'):
    grouping.parse(hm, tg, S(config))


def test_misshaped_maps_raise(config):
  hm, tg = _maps()
  with pytest.raises(ValueError, match='joint_order'):
    grouping.parse(hm[..., :5], tg[..., :5, :], S(config))
  with pytest.raises(ValueError, match=r'tags must be \[H, W, K, T\]'):
    grouping.parse(hm, tg[:, :-1], S(config))
  bad = _small_config()
  bad.test.nms_padding = 1
  with pytest.raises(ValueError, match='nms_kernel'):
    grouping.parse(hm, tg, S(bad))


# ------------------------------------------------------------------ NumPy summation order


def test_float32_means_follow_numpy():
  rng = np.random.default_rng(0)
  out = np.empty(3, np.float32)
  for _ in range(300):
    n, t = int(rng.integers(1, 40)), int(rng.integers(1, 4))
    rows = rng.standard_normal((n, t)).astype(np.float32)
    numpy_order.mean_rows_f32(rows, n, out)
    np.testing.assert_array_equal(out[:t], np.mean(list(rows), axis=0))
  for n in (1, 7, 8, 17, 129, 300, 1031):
    a = rng.standard_normal(n).astype(np.float32)
    assert numpy_order.pairwise_sum(a, 0, n) == np.sum(a)
    poses = rng.random((2, n, 3)).astype(np.float32)
    np.testing.assert_array_equal(grouping_host.person_scores(poses),
                                  [p[:, 2].mean() for p in poses])


def _baseline():
  path = pathlib.Path(__file__).resolve().parents[2] / 'bench' / 'grouping.py'
  spec = importlib.util.spec_from_file_location('bench_grouping_baseline', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('num_tags', [1, 9])
def test_other_tag_widths_and_no_detection_value(grouping_scenes, num_tags):
  """No fixture covers T = 1 (NumPy then averages with pairwise sums), T >= 8 (pairwise
  squared-distance sums) or use_detection_val=False: cross-check with the plain NumPy +
  munkres 1.1.4 rendering of the official algorithm in bench/grouping.py (exact)."""
  pytest.importorskip('munkres')
  baseline = _baseline()
  c = base_config()
  rng = np.random.default_rng(num_tags)
  for d in grouping_scenes[:3]:
    tg = d['tg'][..., [0] * num_tags]
    tg = np.ascontiguousarray(tg + rng.normal(0, 0.02, tg.shape).astype(np.float32))
    for use_val in (True, False):
      c.test.use_detection_val = use_val
      ours = grouping.parse(d['hm'], tg, S(c))
      ref = baseline.baseline_parse(d['hm'], tg, c)
      np.testing.assert_array_equal(ours[0], ref[0])
      np.testing.assert_array_equal(ours[1], ref[1])


@pytest.mark.parametrize('h,w', [(1, 1), (2, 3), (3, 40), (24, 20)])
def test_parse_small_and_noisy_maps_match_device_split_path(config, h, w):
  """Real network maps are dense and partly negative; tiny maps have fewer than
  max_num_people positions. `parse` (host NMS) and jitted `nms_top_k` + `parse_top_k`
  must agree exactly, and neither may crash."""
  rng = np.random.default_rng(h * 1000 + w)
  hm = rng.normal(0.0, 0.05, (h, w, 17)).astype(np.float32)
  for _ in range(4):  # a few people-like peaks
    hm[rng.integers(h), rng.integers(w), rng.integers(17, size=8)] += rng.uniform(0.2, 1.0)
  tg = rng.normal(0.0, 1.5, (h, w, 17, 2)).astype(np.float32)
  poses, scores = grouping.parse(hm, tg, S(config))
  assert poses.shape[1:] == (17, 5) and scores.shape == poses.shape[:1]
  val_k, loc_k, tag_k = (np.asarray(a) for a in jax.jit(grouping.nms_top_k)(hm, tg))
  split = grouping.parse_top_k(val_k, loc_k, tag_k, hm, tg, S(config))
  np.testing.assert_array_equal(poses, split[0])
  np.testing.assert_array_equal(scores, split[1])


def test_parse_top_k_rejects_bad_candidates(config):
  hm, tg = _maps()
  _, val_k, loc_k, tag_k = _top_k([[0.0, 1.0]])
  order = base_config().dataset.keypoints.joint_order
  below = loc_k.copy()
  below[order[1], 0] = (500, 500)  # a candidate below the threshold is never read
  grouping.parse_top_k(val_k, below, tag_k, hm, tg, S(config))
  loc_k[order[0], 1] = (48, 0)  # x == W for a used candidate
  with pytest.raises(ValueError, match=r'outside the 32x48 maps \(loc_k\)'):
    grouping.parse_top_k(val_k, loc_k, tag_k, hm, tg, S(config))
  with pytest.raises(ValueError, match='inconsistent top-k shapes'):
    grouping.parse_top_k(val_k[:, :1], loc_k, tag_k, hm, tg, S(config))


def test_parse_from_several_threads(grouping_scenes, config):
  """GIL-free kernels on shared read-only inputs: concurrent calls stay exact."""
  from concurrent.futures import ThreadPoolExecutor
  picked = [grouping_scenes[i] for i in (1, 5, 11, 16, 18, 2)]
  with ThreadPoolExecutor(3) as pool:
    results = list(pool.map(lambda d: grouping.parse(d['hm'], d['tg'], S(config)), picked))
  for d, (poses, scores) in zip(picked, results):
    np.testing.assert_array_equal(poses, d['grouped_TT'])
    np.testing.assert_array_equal(scores, d['scores_TT'])


def test_valid_region_of_padded_maps_is_the_crop(grouping_scenes, config):
  """A batch's maps are padded to a common size; with `valid_hw` the padding (here large
  values and NaN, which would win the NMS, refine and the finiteness check) is never read
  and nothing is copied."""
  for i in (3, 10, 15):
    d = grouping_scenes[i]
    h, w, k = d['hm'].shape
    hm = np.full((h + 5, w + 7, k), 9.0, np.float32)
    tg = np.full((h + 5, w + 7, k, 2), np.nan, np.float32)
    hm[:h, :w], tg[:h, :w] = d['hm'], d['tg']
    poses, scores = grouping.parse(hm, tg, S(config), valid_hw=(h, w))
    np.testing.assert_array_equal(poses, d['grouped_TT'], err_msg=f'scene {i}')
    np.testing.assert_array_equal(scores, d['scores_TT'], err_msg=f'scene {i}')
    split = grouping.parse_top_k(d['val_k'][0], d['loc_k'][0], d['tag_k'][0], hm, tg,
                                 S(config), valid_hw=(h, w))
    np.testing.assert_array_equal(split[0], d['grouped_TT'], err_msg=f'scene {i}')
  with pytest.raises(ValueError, match='valid_hw'):
    grouping.parse(hm, tg, S(config), valid_hw=(h + 6, w))


def _tied_scene(rng, h, w, people, background_tag):
  """Trained-network-like maps full of exact ties: Gaussian peaks quantised to 1/8 on a
  zero background, tags constant per person near their joints and `background_tag`
  elsewhere, some joints of every person left out (refine's work)."""
  k = 17
  hm = np.zeros((h, w, k), np.float32)
  tg = np.full((h, w, k, 2), background_tag, np.float32)
  yy, xx = np.mgrid[0:h, 0:w]
  for p in range(people):
    for j in rng.choice(k, size=11, replace=False):
      cy, cx = rng.integers(2, h - 2), rng.integers(2, w - 2)
      g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
      hm[..., j] = np.maximum(hm[..., j], np.round(g * 8) / 8)
      near = (yy - cy) ** 2 + (xx - cx) ** 2 <= 9
      tg[near, j] = 2.0 * (p + 1) + rng.choice([0.0, 0.5, 1.5])
  return hm, tg


@pytest.mark.parametrize('background_tag', [0.0, 3.0])
def test_refine_row_bounds_keep_ties_official(config, background_tag):
  """Refine skips rows whose best possible score cannot beat the best so far. On maps
  where whole rows tie with the best (zero background, equal tags) the official first
  argmax must survive that skipping: exact against the NumPy + munkres rendering of the
  official parser (bench/grouping.py)."""
  pytest.importorskip('munkres')
  baseline = _baseline()
  rng = np.random.default_rng(int(background_tag))
  for people in (1, 3, 5):
    hm, tg = _tied_scene(rng, 24, 40, people, background_tag)
    ours = grouping.parse(hm, tg, S(config))
    ref = baseline.baseline_parse(hm, tg, config)
    assert ours[0].shape[0] > 0
    np.testing.assert_array_equal(ours[0], ref[0], err_msg=f'{people} people')
    np.testing.assert_array_equal(ours[1], ref[1], err_msg=f'{people} people')
