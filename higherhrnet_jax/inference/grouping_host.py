"""Host kernels of the grouping, compiled with numba: plain arrays in and out.

Tag matching (`match_by_tag` with the munkres 1.1.4 port), adjust, scores, refine and a
host twin of the max-pool NMS + top-k, each reproducing the official NumPy arithmetic:
float64 matching against float32 group means, NumPy's summation orders for float32 means
and scores, float32 refine. `grouping.py` validates inputs and holds the public API.
"""

import numba
import numpy as np

from higherhrnet_jax._numba import njit
from higherhrnet_jax.inference import munkres

# Status of `group` / `parse_host` (anything else is a munkres status).
OK = 0

# Padding cost of the official matcher for detections beyond the number of groups.
_PAD_COST = 1e10


# ------------------------------------------------------------------- NumPy-order float sums


@njit
def _block_sum(a, lo, n):
  """One leaf of NumPy's pairwise summation (n <= 128): eight interleaved partial sums."""
  if n < 8:
    res = a[lo] - a[lo]  # a zero of the array's dtype
    for i in range(n):
      res += a[lo + i]
    return res
  r0 = a[lo]
  r1 = a[lo + 1]
  r2 = a[lo + 2]
  r3 = a[lo + 3]
  r4 = a[lo + 4]
  r5 = a[lo + 5]
  r6 = a[lo + 6]
  r7 = a[lo + 7]
  i = 8
  stop = n - n % 8
  while i < stop:
    r0 += a[lo + i]
    r1 += a[lo + i + 1]
    r2 += a[lo + i + 2]
    r3 += a[lo + i + 3]
    r4 += a[lo + i + 4]
    r5 += a[lo + i + 5]
    r6 += a[lo + i + 6]
    r7 += a[lo + i + 7]
    i += 8
  res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
  while i < n:
    res += a[lo + i]
    i += 1
  return res


@njit
def pairwise_sum(a, lo, n):
  """NumPy's pairwise summation of a[lo:lo+n] in the array's dtype (umath `pairwise_sum`).

  Above 128 terms NumPy splits at half the length (rounded down to a multiple of 8) and
  adds the two halves; the recursion is unrolled on an explicit stack because cached numba
  functions cannot be recursive.
  """
  if n <= 128:
    return _block_sum(a, lo, n)
  node_lo = np.empty(128, np.int64)
  node_n = np.empty(128, np.int64)
  node_done = np.zeros(128, np.bool_)
  vals = np.zeros(128, a.dtype)
  nv = 0
  node_lo[0] = lo
  node_n[0] = n
  top = 1
  while top > 0:
    top -= 1
    l = node_lo[top]
    m = node_n[top]
    if m <= 128:
      vals[nv] = _block_sum(a, l, m)
      nv += 1
    elif node_done[top]:
      vals[nv - 2] = vals[nv - 2] + vals[nv - 1]
      nv -= 1
    else:
      m2 = m // 2
      m2 -= m2 % 8
      node_done[top] = True  # revisit after both halves, which are pushed above it
      top += 1
      node_lo[top], node_n[top], node_done[top] = l + m2, m - m2, False
      top += 1
      node_lo[top], node_n[top], node_done[top] = l, m2, False
      top += 1
  return vals[0]


@njit
def mean_rows_f32(rows, n, out):
  """`np.mean(list_of_n_float32_vectors, axis=0)` into out [T].

  NumPy reduces an [n, T] float32 array over axis 0 row after row for T > 1, but for T == 1
  the reduction runs along the contiguous axis with pairwise summation.
  """
  nt = rows.shape[1]
  if nt == 1:
    col = np.empty(n, np.float32)
    for i in range(n):
      col[i] = rows[i, 0]
    out[0] = np.float32(pairwise_sum(col, 0, n) / np.float32(n))
    return
  for t in range(nt):
    s = np.float32(0.0)
    for i in range(n):
      s = np.float32(s + rows[i, t])
    out[t] = np.float32(s / np.float32(n))


@njit
def _sum_squares(diff):
  """Sum over the last (contiguous) axis as NumPy does: sequential below 8 terms."""
  if diff.shape[0] < 8:
    s = diff[0] - diff[0]
    for t in range(diff.shape[0]):
      s += diff[t] * diff[t]
    return s
  sq = diff * diff
  return pairwise_sum(sq, 0, sq.shape[0])


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
      mean_rows_f32(tag_store[g], tag_count[g], means[g])
    dist = np.empty((na, ngr), np.float64)
    cost = np.full((na, max(na, ngr)), _PAD_COST)
    for a in range(na):
      c = sel[a]
      for g in range(ngr):
        for t in range(nt):
          diff[t] = np.float64(tag_k[idx, c, t]) - np.float64(means[g, t])
        d = np.sqrt(_sum_squares(diff))
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
    out[p] = np.float32(pairwise_sum(col, 0, nj) / np.float32(nj))
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
      acc[i] = _sum_squares(e)
  for i in range(n):
    acc[i] = np.float32(np.rint(np.float32(np.sqrt(acc[i]))))


@njit
def blocked_transpose_into(a, out):
  """out [C, N] <- a [N, C].T, 16 rows at a time so reads and writes stay in cache.

  Slices keep the loop indices non-negative, which lets the compiler drop index checks.
  """
  n, c = a.shape
  nb = n - n % 16
  for i0 in range(0, nb, 16):
    blk = a[i0:i0 + 16]
    for k in range(c):
      o = out[k, i0:i0 + 16]
      for i in range(16):
        o[i] = blk[i, k]
  for i in range(nb, n):
    for k in range(c):
      out[k, i] = a[i, k]


@njit
def blocked_transpose(a):
  """[N, C] -> new contiguous [C, N]."""
  out = np.empty((a.shape[1], a.shape[0]), a.dtype)
  blocked_transpose_into(a, out)
  return out


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
    mean_rows_f32(rows, cnt, prevs[p])
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
    blocked_transpose_into(tags.reshape(n, nj * nt), tslabs.reshape(nj * nt, n))
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


@njit
def _shifted_max(src, dst, n_out, stride, lo, kernel):
  """dst[i] = max(src[i + (o - lo) * stride] for the in-range window offsets o) along one
  axis of a row-major map: `kernel` shifted maxima over slices (non-negative loop indices
  let the compiler vectorise them)."""
  dst[:n_out] = src[:n_out]
  for o in range(kernel):
    s = (o - lo) * stride
    if s == 0:
      continue
    a = max(0, -s)
    b = min(n_out, n_out - s)
    sv = src[a + s:b + s]
    dv = dst[a:b]
    for i in range(b - a):
      v = sv[i]
      u = dv[i]
      dv[i] = v if v > u else u


@njit
def _row_max(d, rows, h, w, lo, kernel):
  """Max over the row window x - lo .. x - lo + kernel - 1, clipped at the row ends (the
  -inf padding): shifted maxima over the flat map, then the columns whose window leaves
  the row are redone."""
  _shifted_max(d, rows, h * w, 1, lo, kernel)
  left_end = min(lo, w)  # columns before this one reach past the left end
  right = max(w - kernel + lo + 1, left_end)  # columns from here reach past the right end
  for y in range(h):
    for x in range(left_end):
      _row_window_max(d, rows, y * w, x, w, lo, kernel)
    for x in range(right, w):
      _row_window_max(d, rows, y * w, x, w, lo, kernel)


@njit
def _row_window_max(d, rows, base, x, w, lo, kernel):
  a = max(x - lo, 0)
  b = min(x - lo + kernel, w)
  m = d[base + a]
  for xx in range(a + 1, b):
    v = d[base + xx]
    m = v if v > m else m
  rows[base + x] = m


@njit
def nms_top_k_host(dslabs, h, w, kernel, padding, k):
  """Host twin of `nms` + `top_k_indices` on joint-major maps dslabs [K, H * W].

  Returns val_k [K, k] float32 and flat indices [K, k] int64; equal values keep the lower
  index first (as `jax.lax.top_k`).
  """
  nj, n = dslabs.shape
  k = min(k, n)
  val_k = np.empty((nj, k), np.float32)
  ind_k = np.empty((nj, k), np.int64)
  rows = np.empty(n, np.float32)
  pooled = np.empty(n, np.float32)
  kept = np.empty(n, np.float32)
  for j in range(nj):
    d = dslabs[j]
    _row_max(d, rows, h, w, padding, kernel)
    _shifted_max(rows, pooled, n, w, padding, kernel)
    for i in range(n):
      kept[i] = d[i] * np.float32(1.0 if pooled[i] == d[i] else 0.0)
    vals = val_k[j]
    inds = ind_k[j]
    for i in range(k):  # insertion sort of the first k
      _insert(vals, inds, i, kept[i], i)
    threshold = vals[k - 1]
    for i in range(k, n):
      if kept[i] > threshold:
        _insert(vals, inds, k - 1, kept[i], i)
        threshold = vals[k - 1]
  return val_k, ind_k


@njit
def _insert(vals, inds, pos, v, i):
  """Puts (v, i) into the descending list vals[:pos + 1] (dropping vals[pos]), after any
  equal values."""
  while pos > 0 and vals[pos - 1] < v:
    vals[pos] = vals[pos - 1]
    inds[pos] = inds[pos - 1]
    pos -= 1
  vals[pos] = v
  inds[pos] = i


@njit
def _gather_top_k(ind, tags):
  """loc_k [K, M, 2] (x, y) and tag_k [K, M, T] at flat indices ind [K, M] of [H, W, K, T]."""
  h, w, nj, nt = tags.shape
  m = ind.shape[1]
  loc_k = np.empty((nj, m, 2), np.int64)
  tag_k = np.empty((nj, m, nt), np.float32)
  for j in range(nj):
    for c in range(m):
      y = ind[j, c] // w
      x = ind[j, c] % w
      loc_k[j, c, 0] = x
      loc_k[j, c, 1] = y
      tag_k[j, c, :] = tags[y, x, j, :]
  return loc_k, tag_k


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
  blocked_transpose_into(det.reshape(h * w, nj), dslabs)
  val_k, ind = nms_top_k_host(dslabs, h, w, kernel, padding, max_num_people)
  loc_k, tag_k = _gather_top_k(ind, tags)
  return group(val_k, loc_k, tag_k, det, tags, dslabs, tbuf, joint_order,
               detection_threshold, tag_threshold, use_detection_val, ignore_too_much,
               max_num_people, adjust, refine, parallel_min_work)
