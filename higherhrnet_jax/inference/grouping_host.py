"""Host kernels of the grouping, compiled with numba: plain arrays in and out.

Tag matching (`match_by_tag` with the munkres 1.1.4 port), adjust, scores and refine, each
reproducing the official NumPy arithmetic: float64 matching against float32 group means,
NumPy's summation orders for float32 means and scores (`numpy_order.py`), float32 refine.
`group` and `parse_host` (with the NMS + top-k of `host_nms.py`) are the entry points;
`grouping.py` validates inputs and holds the public API.
"""

import numba
import numpy as np

from higherhrnet_jax._numba import njit
from higherhrnet_jax.inference import host_nms, munkres, numpy_order

# Status of `group` / `parse_host` (anything else is a munkres status).
OK = 0

# Padding cost of the official matcher for detections beyond the number of groups.
_PAD_COST = 1e10


# ---------------------------------------------------------------------------- tag matching


@njit
def _set_group(poses, keys, tag_store, tag_count, ng, key, idx, val, x, y, tag):
  """`joint_dict.setdefault(key, zeros)[idx] = joint; tag_dict[key] = [tag]`; returns ng."""
  g = ng
  for i in range(ng):
    if keys[i] == key:
      g = i
      break
  if g == ng:
    poses[g, :, :] = 0
    keys[g] = key
    ng += 1
  poses[g, idx, 0] = x
  poses[g, idx, 1] = y
  poses[g, idx, 2] = val
  poses[g, idx, 3:] = tag
  tag_store[g, 0, :] = tag
  tag_count[g] = 1
  return ng


@njit
def _match_by_tag(val_k, loc_k, tag_k, joint_order, detection_threshold, tag_threshold,
                  use_detection_val, ignore_too_much, max_num_people):
  """Official `match_by_tag` on one image; returns (poses [P, K, 3+T] float32, status)."""
  nj, m = val_k.shape
  nt = tag_k.shape[2]
  cap = nj * m
  poses = np.zeros((cap, nj, 3 + nt), np.float32)
  keys = np.zeros(cap, np.float32)
  tag_store = np.zeros((cap, 2 * nj + 2, nt), np.float32)
  tag_count = np.zeros(cap, np.int64)
  ng = 0
  sel = np.empty(m, np.int64)
  means = np.empty((max_num_people, nt), np.float32)
  diff = np.empty(nt, np.float64)
  for i in range(nj):
    idx = joint_order[i]
    na = 0
    for c in range(m):
      if np.float64(val_k[idx, c]) > detection_threshold:
        sel[na] = c
        na += 1
    if na == 0:
      continue
    if i == 0 or ng == 0:
      for a in range(na):
        c = sel[a]
        ng = _set_group(poses, keys, tag_store, tag_count, ng, tag_k[idx, c, 0], idx,
                        val_k[idx, c], loc_k[idx, c, 0], loc_k[idx, c, 1], tag_k[idx, c])
      continue
    ngr = min(ng, max_num_people)
    if ignore_too_much and ngr == max_num_people:
      continue
    for g in range(ngr):
      numpy_order.mean_rows_f32(tag_store[g], tag_count[g], means[g])
    dist = np.empty((na, ngr), np.float64)
    cost = np.full((na, max(na, ngr)), _PAD_COST)
    for a in range(na):
      c = sel[a]
      for g in range(ngr):
        for t in range(nt):
          diff[t] = np.float64(tag_k[idx, c, t]) - np.float64(means[g, t])
        d = np.sqrt(numpy_order.sum_squares(diff))
        dist[a, g] = d
        if use_detection_val:
          cost[a, g] = np.rint(d) * 100.0 - np.float64(val_k[idx, c])
        else:
          cost[a, g] = d
    pairs, status = munkres.munkres_pairs(cost, 1_000_000)
    if status != munkres.OK:
      return poses[:0], status
    for p in range(pairs.shape[0]):
      row = pairs[p, 0]
      col = pairs[p, 1]
      c = sel[row]
      if row < na and col < ngr and dist[row, col] < tag_threshold:
        poses[col, idx, 0] = loc_k[idx, c, 0]
        poses[col, idx, 1] = loc_k[idx, c, 1]
        poses[col, idx, 2] = val_k[idx, c]
        poses[col, idx, 3:] = tag_k[idx, c]
        tag_store[col, tag_count[col], :] = tag_k[idx, c]
        tag_count[col] += 1
      else:
        ng = _set_group(poses, keys, tag_store, tag_count, ng, tag_k[idx, c, 0], idx,
                        val_k[idx, c], loc_k[idx, c, 0], loc_k[idx, c, 1], tag_k[idx, c])
  return poses[:ng].copy(), OK


# --------------------------------------------------------------------- adjust, score, refine


@njit
def _shift(tmp_lo, tmp_hi):
  """Quarter-pixel shift towards the larger neighbour (a tie moves down)."""
  return np.float32(0.25) if tmp_hi > tmp_lo else np.float32(-0.25)


@njit
def _adjust(poses, det):
  """Official `adjust`: pixel centre plus a quarter pixel towards the higher neighbour."""
  h, w, _ = det.shape
  for p in range(poses.shape[0]):
    for j in range(poses.shape[1]):
      if poses[p, j, 2] > 0:
        x = int(poses[p, j, 0])
        y = int(poses[p, j, 1])
        dx = _shift(det[y, max(x - 1, 0), j], det[y, min(x + 1, w - 1), j])
        dy = _shift(det[max(y - 1, 0), x, j], det[min(y + 1, h - 1), x, j])
        poses[p, j, 0] = np.float32(poses[p, j, 0] + dx) + np.float32(0.5)
        poses[p, j, 1] = np.float32(poses[p, j, 1] + dy) + np.float32(0.5)


@njit
def person_scores(poses):
  """`person[:, 2].mean()` per person: float32 pairwise sum over all K joints / K."""
  nj = poses.shape[1]
  out = np.empty(poses.shape[0], np.float32)
  col = np.empty(nj, np.float32)
  for p in range(poses.shape[0]):
    for j in range(nj):
      col[j] = poses[p, j, 2]
    out[p] = np.float32(numpy_order.pairwise_sum(col, 0, nj) / np.float32(nj))
  return out


@njit
def _tag_rounded_distance(tslab, prev, acc):
  """acc[i] = round(sqrt(sum_t (tslab[t, i] - prev[t])**2)) in float32, NumPy's order."""
  nt, n = tslab.shape
  if nt < 8:
    acc[:] = 0
    for t in range(nt):
      pt = prev[t]
      for i in range(n):
        e = np.float32(tslab[t, i] - pt)
        acc[i] = np.float32(acc[i] + np.float32(e * e))
  else:
    e = np.empty(nt, np.float32)
    for i in range(n):
      for t in range(nt):
        e[t] = np.float32(tslab[t, i] - prev[t])
      acc[i] = numpy_order.sum_squares(e)
  for i in range(n):
    acc[i] = np.float32(np.rint(np.float32(np.sqrt(acc[i]))))


@njit
def _gather_joint(tags2, j, tslab):
  """tslab [T, N] <- tags2[:, j, :] (a separate function: inlined into `_refine` this loop
  compiles to code about ten times slower)."""
  for i in range(tags2.shape[0]):
    for t in range(tags2.shape[2]):
      tslab[t, i] = tags2[i, j, t]


@njit
def _first_argmax(a):
  """`np.argmax` of a finite 1-d array: the maximum from eight independent lanes (a loop the
  compiler can vectorise), then the first index holding it."""
  n = a.shape[0]
  lanes = np.full(8, -np.inf, a.dtype)
  nb = n - n % 8
  for i in range(0, nb, 8):
    for k in range(8):
      v = a[i + k]
      lanes[k] = v if v > lanes[k] else lanes[k]
  m = lanes.max()
  for i in range(nb, n):
    if a[i] > m:
      m = a[i]
  for i in range(n):
    if a[i] == m:
      return i
  return 0


@njit
def _best_pixel(dslab, tslab, prev, acc):
  """First argmax of det - round(|tag - prev|) over one joint's map (float32).

  A separate function on purpose: inlined into `_refine`'s loops it runs twice as slow.
  """
  if tslab.shape[0] == 2:  # the flip-test layout, in one pass
    t0 = tslab[0]
    t1 = tslab[1]
    p0 = prev[0]
    p1 = prev[1]
    for i in range(dslab.shape[0]):
      e0 = np.float32(t0[i] - p0)
      e1 = np.float32(t1[i] - p1)
      s = np.float32(np.float32(e0 * e0) + np.float32(e1 * e1))
      acc[i] = np.float32(dslab[i] - np.float32(np.rint(np.float32(np.sqrt(s)))))
  else:
    _tag_rounded_distance(tslab, prev, acc)
    for i in range(dslab.shape[0]):
      acc[i] = np.float32(dslab[i] - acc[i])
  return _first_argmax(acc)


@njit
def _refine(poses, det, tags, dslabs, tbuf, parallel_min_work):
  """Official `refine`: fills missing joints (score exactly 0) at the best tag-consistent peak.

  For a missing joint j of a person with mean tag `prev` (float32 mean over its present
  joints, read at their integer peak locations) the official code takes the first argmax,
  in row-major order, of `det[..., j] - round(|tag[..., j, :] - prev|)` (float32) and fills
  the joint there if the det value is positive. Joints are visited in the outer loop so that
  each joint's maps are read from contiguous slabs (dslabs [K, H * W] is `det` joint-major)
  and the per-person scans are branch-free, vectorisable loops. tbuf is a float32 workspace
  of at least K * T * H * W elements for the joint-major tags. With at least
  `parallel_min_work` scanned pixels in all (and >= 0) the scans run on all cores; each scan
  is independent, so the result does not depend on it.
  """
  h, w, nj = det.shape
  nt = tags.shape[3]
  npeople = poses.shape[0]
  n = h * w
  rows = np.empty((nj, nt), np.float32)
  prevs = np.empty((npeople, nt), np.float32)
  need = np.zeros((npeople, nj), np.bool_)
  for p in range(npeople):
    cnt = 0
    for j in range(nj):
      if poses[p, j, 2] > 0:
        x = np.int32(poses[p, j, 0])
        y = np.int32(poses[p, j, 1])
        rows[cnt, :] = tags[y, x, j, :]
        cnt += 1
    if cnt == 0:
      continue  # only reachable with a negative detection threshold
    numpy_order.mean_rows_f32(rows, cnt, prevs[p])
    for j in range(nj):
      need[p, j] = poses[p, j, 2] == 0
  num_scans = 0
  joints_needed = 0
  for j in range(nj):
    cnt = 0
    for p in range(npeople):
      cnt += need[p, j]
    num_scans += cnt
    joints_needed += cnt > 0
  if num_scans == 0:
    return
  parallel = 0 <= parallel_min_work <= num_scans * n and num_scans > 1
  # Joint-major copies of the tag maps: all joints in one cache-blocked pass when most are
  # needed (or scans run in parallel), else only the needed joints (each a strided gather).
  all_at_once = parallel or 2 * joints_needed > nj
  if all_at_once:
    tslabs = tbuf[:nj * nt * n].reshape(nj, nt, n)
    host_nms.blocked_transpose_into(tags.reshape(n, nj * nt), tslabs.reshape(nj * nt, n))
  else:
    tslabs = tbuf[:nt * n].reshape(1, nt, n)
  best = np.full((npeople, nj), -1, np.int64)
  if parallel:
    scan_p = np.empty(num_scans, np.int64)
    scan_j = np.empty(num_scans, np.int64)
    s = 0
    for p in range(npeople):
      for j in range(nj):
        if need[p, j]:
          scan_p[s] = p
          scan_j[s] = j
          s += 1
    found = np.empty(num_scans, np.int64)
    _scan_parallel(dslabs, tslabs, prevs, scan_p, scan_j, found)
    for s in range(num_scans):
      best[scan_p[s], scan_j[s]] = found[s]
  else:
    tags2 = tags.reshape(n, nj, nt)
    acc = np.empty(n, np.float32)
    for j in range(nj):
      if not need[:, j].any():
        continue
      if all_at_once:
        tslab = tslabs[j]
      else:
        tslab = tslabs[0]
        _gather_joint(tags2, j, tslab)
      for p in range(npeople):
        if need[p, j]:
          best[p, j] = _best_pixel(dslabs[j], tslab, prevs[p], acc)
  for p in range(npeople):
    for j in range(nj):
      bi = best[p, j]
      if bi < 0:
        continue
      val = dslabs[j, bi]
      if val > 0:
        by = bi // w
        bx = bi % w
        dx = _shift(det[by, max(bx - 1, 0), j], det[by, min(bx + 1, w - 1), j])
        dy = _shift(det[max(by - 1, 0), bx, j], det[min(by + 1, h - 1), bx, j])
        poses[p, j, 0] = np.float32(bx + 0.5 + dx)
        poses[p, j, 1] = np.float32(by + 0.5 + dy)
        poses[p, j, 2] = val


@njit(parallel=True)
def _scan_parallel(dslabs, tslabs, prevs, scan_p, scan_j, found):
  """`_best_pixel` for every (person, joint) scan, spread over the cores."""
  n = dslabs.shape[1]
  for s in numba.prange(scan_p.shape[0]):
    acc = np.empty(n, np.float32)
    found[s] = _best_pixel(dslabs[scan_j[s]], tslabs[scan_j[s]], prevs[scan_p[s]], acc)


@njit(nogil=True)
def group(val_k, loc_k, tag_k, det, tags, dslabs, tbuf, joint_order, detection_threshold,
          tag_threshold, use_detection_val, ignore_too_much, max_num_people, adjust, refine,
          parallel_min_work):
  """Matching, adjust, scores and refine for one image (see `parse`).

  Entry points release the GIL, so grouping in a worker thread overlaps with Python work
  (e.g. dispatching the next batch) in the main thread.
  """
  poses, status = _match_by_tag(val_k, loc_k, tag_k, joint_order, detection_threshold,
                                tag_threshold, use_detection_val, ignore_too_much,
                                max_num_people)
  if status != OK:
    return poses, np.zeros(0, np.float32), status
  if adjust:
    _adjust(poses, det)
  scores = person_scores(poses)
  if refine:
    _refine(poses, det, tags, dslabs, tbuf, parallel_min_work)
  return poses, scores, OK


@njit(nogil=True)
def parse_host(det, tags, dbuf, tbuf, joint_order, detection_threshold, tag_threshold,
               use_detection_val, ignore_too_much, max_num_people, kernel, padding, adjust,
               refine, parallel_min_work):
  """NMS, top-k and `group` on host arrays (see `parse`); dbuf, tbuf: float32 workspaces of
  at least H * W * K and (with refine) H * W * K * T elements."""
  h, w, nj = det.shape
  dslabs = dbuf[:nj * h * w].reshape(nj, h * w)
  host_nms.blocked_transpose_into(det.reshape(h * w, nj), dslabs)
  val_k, ind = host_nms.nms_top_k_host(dslabs, h, w, kernel, padding, max_num_people)
  loc_k, tag_k = host_nms.gather_top_k(ind, tags)
  return group(val_k, loc_k, tag_k, det, tags, dslabs, tbuf, joint_order,
               detection_threshold, tag_threshold, use_detection_val, ignore_too_much,
               max_num_people, adjust, refine, parallel_min_work)
