"""Bottom-up grouping: NMS and top-k on device, associative-embedding tag matching on host.

Reproduces the official `HeatmapParser.parse` (top-k, `match_by_tag`, `adjust`, `refine`)
exactly, so results computed from official checkpoints keep official AP:

* NMS + top-k (`nms_top_k`) is a jittable JAX function: a max pool with implicit -inf
  padding keeps local maxima, then the `max_num_people` best positions of every joint map.
* Everything that loops (tag matching with the Hungarian assignment, adjust, refine) is
  compiled with numba and works on plain arrays. The assignment is a literal port of
  munkres 1.1.4 (see `munkres.py`), because the rounded cost matrices are full of ties and
  any other solver picks different optima, hence different people.

Arithmetic follows the official NumPy code: tag distances of the matching in float64
against float32 group means; group means and refine in float32; scores as NumPy's float32
pairwise mean. Coordinates are heatmap pixels (x = column, y = row).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numba
import numpy as np

from higherhrnet_jax.inference import munkres

# Status codes of the host matcher (anything else is a munkres status).
_OK = 0

# Padding cost of the official matcher for detections beyond the number of groups.
_PAD_COST = 1e10


# ----------------------------------------------------------------------------- device part


def _max_pool_same(x: jax.Array, kernel: int, padding: int) -> jax.Array:
  """Stride-1 `kernel x kernel` max pool over axes 0 and 1 with -inf padding.

  Done as two separable passes of shifted maxima (max is exact, so the result equals the 2-d
  window); XLA's CPU `reduce_window` is about ten times slower on these maps.
  """
  h, w = x.shape[:2]
  pad = [(padding, padding), (padding, padding)] + [(0, 0)] * (x.ndim - 2)
  p = jnp.pad(x, pad, constant_values=-jnp.inf)
  rows = p[0:h]
  for i in range(1, kernel):
    rows = jnp.maximum(rows, p[i:i + h])
  out = rows[:, 0:w]
  for i in range(1, kernel):
    out = jnp.maximum(out, rows[:, i:i + w])
  return out


def nms(heatmaps: jax.Array, *, kernel: int = 5, padding: int = 2) -> jax.Array:
  """Keeps local maxima of [..., H, W, K] heatmaps (official `HeatmapParser.nms`).

  Args:
    heatmaps: [H, W, K] or [B, H, W, K].
    kernel: NMS window (`test.nms_kernel`), stride 1.
    padding: NMS padding (`test.nms_padding`); must keep the map size (2 * padding + 1 ==
      kernel), as the official code multiplies the pooled map with the input.

  Returns:
    heatmaps with every value that is not the maximum of its window set to 0.
  """
  _check_nms(kernel, padding)
  if heatmaps.ndim == 4:
    return jax.vmap(functools.partial(nms, kernel=kernel, padding=padding))(heatmaps)
  pooled = _max_pool_same(heatmaps, kernel, padding)
  # Multiply (not select) as the official code does: negative non-maxima become -0.
  return heatmaps * (pooled == heatmaps).astype(heatmaps.dtype)


def top_k_indices(kept: jax.Array, k: int = 30) -> tuple[jax.Array, jax.Array]:
  """Per-joint top-k of [..., H, W, K] suppressed maps over the flattened H * W positions.

  Returns:
    val_k [..., K, k] (descending) and flat indices ind [..., K, k] (y * W + x); k is capped
    at H * W.
  """
  *lead, h, w, nj = kept.shape
  flat = jnp.swapaxes(kept.reshape(*lead, h * w, nj), -1, -2)
  return jax.lax.top_k(flat, min(k, h * w))


def nms_top_k(heatmaps: jax.Array, tags: jax.Array, *, kernel: int = 5, padding: int = 2,
              k: int = 30) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Max-pool NMS and per-joint top-k (official `HeatmapParser.top_k`), jittable.

  Args:
    heatmaps: [H, W, K] (or [B, H, W, K]) detection maps.
    tags: [H, W, K, T] (or [B, H, W, K, T]) tag maps.
    kernel: NMS window (`test.nms_kernel`), stride 1.
    padding: NMS padding (`test.nms_padding`), 2 * padding + 1 == kernel.
    k: number of candidates per joint (`data.max_num_people`; capped at H * W).

  Returns:
    val_k [..., K, k] (descending per joint; non-maxima count as 0), loc_k [..., K, k, 2]
    int32 (x, y), tag_k [..., K, k, T].
  """
  if heatmaps.ndim == 4:
    fn = functools.partial(nms_top_k, kernel=kernel, padding=padding, k=k)
    return jax.vmap(fn)(heatmaps, tags)
  h, w, nj = heatmaps.shape
  val_k, ind = top_k_indices(nms(heatmaps, kernel=kernel, padding=padding), k)
  tag_k = tags.reshape(h * w, nj, tags.shape[-1])[ind, jnp.arange(nj)[:, None]]
  loc_k = jnp.stack([ind % w, ind // w], axis=-1).astype(jnp.int32)
  return val_k, loc_k, tag_k


# ------------------------------------------------------------------- NumPy-order float sums


@numba.njit(cache=True)
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


@numba.njit(cache=True)
def _pairwise_sum(a, lo, n):
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
  top = 0
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


@numba.njit(cache=True)
def _mean_rows_f32(rows, n, out):
  """`np.mean(list_of_n_float32_vectors, axis=0)` into out [T].

  NumPy reduces an [n, T] float32 array over axis 0 row after row for T > 1, but for T == 1
  the reduction runs along the contiguous axis with pairwise summation.
  """
  nt = rows.shape[1]
  if nt == 1:
    col = np.empty(n, np.float32)
    for i in range(n):
      col[i] = rows[i, 0]
    out[0] = np.float32(_pairwise_sum(col, 0, n) / np.float32(n))
    return
  for t in range(nt):
    s = np.float32(0.0)
    for i in range(n):
      s = np.float32(s + rows[i, t])
    out[t] = np.float32(s / np.float32(n))


@numba.njit(cache=True)
def _sum_squares(diff):
  """Sum over the last (contiguous) axis as NumPy does: sequential below 8 terms."""
  if diff.shape[0] < 8:
    s = diff[0] - diff[0]
    for t in range(diff.shape[0]):
      s += diff[t] * diff[t]
    return s
  sq = diff * diff
  return _pairwise_sum(sq, 0, sq.shape[0])


# ---------------------------------------------------------------------------- tag matching


@numba.njit(cache=True)
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


@numba.njit(cache=True)
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
      _mean_rows_f32(tag_store[g], tag_count[g], means[g])
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
  return poses[:ng].copy(), _OK


# --------------------------------------------------------------------- adjust, score, refine


@numba.njit(cache=True)
def _shift(tmp_lo, tmp_hi):
  """Quarter-pixel shift towards the larger neighbour (a tie moves down)."""
  return np.float32(0.25) if tmp_hi > tmp_lo else np.float32(-0.25)


@numba.njit(cache=True)
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


@numba.njit(cache=True)
def _scores(poses):
  """`person[:, 2].mean()` per person: float32 pairwise sum over all K joints / K."""
  nj = poses.shape[1]
  out = np.empty(poses.shape[0], np.float32)
  col = np.empty(nj, np.float32)
  for p in range(poses.shape[0]):
    for j in range(nj):
      col[j] = poses[p, j, 2]
    out[p] = np.float32(_pairwise_sum(col, 0, nj) / np.float32(nj))
  return out


@numba.njit(cache=True)
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


@numba.njit(cache=True)
def _blocked_transpose(a):
  """[N, C] -> contiguous [C, N], in blocks of rows so reads and writes stay in cache."""
  n, c = a.shape
  out = np.empty((c, n), a.dtype)
  for i0 in range(0, n, 64):
    i1 = min(i0 + 64, n)
    for k in range(c):
      for i in range(i0, i1):
        out[k, i] = a[i, k]
  return out


@numba.njit(cache=True)
def _gather_joint(tags2, j, tslab):
  """tslab [T, N] <- tags2[:, j, :] (a separate function: inlined into `_refine` this loop
  compiles to code about ten times slower)."""
  for i in range(tags2.shape[0]):
    for t in range(tags2.shape[2]):
      tslab[t, i] = tags2[i, j, t]


@numba.njit(cache=True)
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


@numba.njit(cache=True)
def _best_pixel(dslab, tslab, prev, acc):
  """First argmax of det - round(|tag - prev|) over one joint's map (float32).

  A separate function on purpose: inlined into `_refine`'s loops it runs twice as slow.
  """
  _tag_rounded_distance(tslab, prev, acc)
  for i in range(dslab.shape[0]):
    acc[i] = np.float32(dslab[i] - acc[i])
  return _first_argmax(acc)


@numba.njit(cache=True)
def _refine(poses, det, tags, dslabs):
  """Official `refine`: fills missing joints (score exactly 0) at the best tag-consistent peak.

  For a missing joint j of a person with mean tag `prev` (float32 mean over its present
  joints, read at their integer peak locations) the official code takes the first argmax,
  in row-major order, of `det[..., j] - round(|tag[..., j, :] - prev|)` (float32) and fills
  the joint there if the det value is positive. Joints are visited in the outer loop so that
  each joint's maps are read from contiguous slabs (dslabs [K, H * W] is `det` joint-major)
  and the per-person scans are branch-free, vectorisable loops.
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
    _mean_rows_f32(rows, cnt, prevs[p])
    for j in range(nj):
      need[p, j] = poses[p, j, 2] == 0
  if not need.any():
    return
  # Joint-major copies of the tag maps: all joints in one cache-blocked pass when most are
  # needed, else only the needed joints (each a strided gather).
  joints_needed = 0
  for j in range(nj):
    if need[:, j].any():
      joints_needed += 1
  all_at_once = 2 * joints_needed > nj
  if all_at_once:
    tslabs = _blocked_transpose(tags.reshape(n, nj * nt)).reshape(nj, nt, n)
  else:
    tslabs = np.empty((1, nt, n), np.float32)
  tags2 = tags.reshape(n, nj, nt)
  acc = np.empty(n, np.float32)
  for j in range(nj):
    if not need[:, j].any():
      continue
    dslab = dslabs[j]
    if all_at_once:
      tslab = tslabs[j]
    else:
      tslab = tslabs[0]
      _gather_joint(tags2, j, tslab)
    for p in range(npeople):
      if not need[p, j]:
        continue
      bi = _best_pixel(dslab, tslab, prevs[p], acc)
      val = dslab[bi]
      if val > 0:
        by = bi // w
        bx = bi % w
        dx = _shift(det[by, max(bx - 1, 0), j], det[by, min(bx + 1, w - 1), j])
        dy = _shift(det[max(by - 1, 0), bx, j], det[min(by + 1, h - 1), bx, j])
        poses[p, j, 0] = np.float32(bx + 0.5 + dx)
        poses[p, j, 1] = np.float32(by + 0.5 + dy)
        poses[p, j, 2] = val


@numba.njit(cache=True)
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


@numba.njit(cache=True)
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


@numba.njit(cache=True)
def _row_window_max(d, rows, base, x, w, lo, kernel):
  a = max(x - lo, 0)
  b = min(x - lo + kernel, w)
  m = d[base + a]
  for xx in range(a + 1, b):
    v = d[base + xx]
    m = v if v > m else m
  rows[base + x] = m


@numba.njit(cache=True)
def _nms_top_k_host(dslabs, h, w, kernel, padding, k):
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


@numba.njit(cache=True)
def _insert(vals, inds, pos, v, i):
  """Puts (v, i) into the descending list vals[:pos + 1] (dropping vals[pos]), after any
  equal values."""
  while pos > 0 and vals[pos - 1] < v:
    vals[pos] = vals[pos - 1]
    inds[pos] = inds[pos - 1]
    pos -= 1
  vals[pos] = v
  inds[pos] = i


@numba.njit(cache=True)
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


def _all_finite(a: np.ndarray) -> bool:
  return bool(np.isfinite(a).all())


@numba.njit(cache=True)
def _group(val_k, loc_k, tag_k, det, tags, dslabs, joint_order, detection_threshold,
           tag_threshold, use_detection_val, ignore_too_much, max_num_people, adjust, refine):
  """Matching, adjust, scores and refine for one image (see `parse`)."""
  poses, status = _match_by_tag(val_k, loc_k, tag_k, joint_order, detection_threshold,
                                tag_threshold, use_detection_val, ignore_too_much,
                                max_num_people)
  if status != _OK:
    return poses, np.zeros(0, np.float32), status
  if adjust:
    _adjust(poses, det)
  scores = _scores(poses)
  if refine:
    _refine(poses, det, tags, dslabs)
  return poses, scores, _OK


@numba.njit(cache=True)
def _parse_host(det, tags, joint_order, detection_threshold, tag_threshold, use_detection_val,
                ignore_too_much, max_num_people, kernel, padding, adjust, refine):
  """NMS, top-k and `_group` on host arrays (see `parse`)."""
  h, w, nj = det.shape
  dslabs = _blocked_transpose(det.reshape(h * w, nj))
  val_k, ind = _nms_top_k_host(dslabs, h, w, kernel, padding, max_num_people)
  loc_k, tag_k = _gather_top_k(ind, tags)
  return _group(val_k, loc_k, tag_k, det, tags, dslabs, joint_order, detection_threshold,
                tag_threshold, use_detection_val, ignore_too_much, max_num_people, adjust,
                refine)


# ------------------------------------------------------------------------------ public API


def _check_maps(heatmaps: np.ndarray, tags: np.ndarray, num_joints: int) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
  heatmaps = np.ascontiguousarray(heatmaps, np.float32)
  tags = np.ascontiguousarray(tags, np.float32)
  if heatmaps.ndim != 3:
    raise ValueError(f'grouping.parse: heatmaps must be [H, W, K], got shape {heatmaps.shape}')
  if tags.ndim != 4 or tags.shape[:3] != heatmaps.shape:
    raise ValueError(f'grouping.parse: tags must be [H, W, K, T] matching heatmaps '
                     f'{heatmaps.shape}, got shape {tags.shape}')
  if heatmaps.shape[2] != num_joints:
    raise ValueError(f'grouping.parse: heatmaps have {heatmaps.shape[2]} joints but '
                     f'dataset.keypoints.joint_order has {num_joints}')
  if min(heatmaps.shape) == 0 or tags.shape[3] == 0:
    raise ValueError(f'grouping.parse: empty maps (heatmaps {heatmaps.shape}, '
                     f'tags {tags.shape})')
  # NaN would make the NMS, the matching costs and the refine argmax meaningless (and
  # non-finite costs never let the assignment terminate), so they are rejected.
  if not _all_finite(heatmaps):
    raise ValueError('grouping.parse: heatmaps contain NaN or infinite values')
  if not _all_finite(tags):
    raise ValueError('grouping.parse: tags contain NaN or infinite values')
  return heatmaps, tags


def _check_nms(kernel: int, padding: int) -> None:
  if 2 * padding + 1 != kernel:
    raise ValueError(f'test.nms_kernel={kernel} and test.nms_padding={padding} change the map '
                     'size; need nms_kernel == 2 * nms_padding + 1')


def _checked(poses: np.ndarray, scores: np.ndarray, status: int):
  if status != _OK:
    raise ValueError(f'grouping: tag-matching assignment failed (munkres status {status})')
  return poses, scores


def _params(config) -> dict:
  t = config.test
  return dict(
      joint_order=np.asarray(config.dataset.keypoints.joint_order, np.int64),
      detection_threshold=float(t.detection_threshold),
      tag_threshold=float(t.tag_threshold),
      use_detection_val=bool(t.use_detection_val),
      ignore_too_much=bool(t.ignore_too_much),
      max_num_people=int(config.data.max_num_people),
  )


def parse_top_k(val_k: np.ndarray, loc_k: np.ndarray, tag_k: np.ndarray,
                heatmaps: np.ndarray, tags: np.ndarray, config, adjust: bool = True,
                refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Host half of `parse`, for callers that ran `nms_top_k` on device themselves.

  Args:
    val_k: [K, M] float32 top-k values (`nms_top_k` output).
    loc_k: [K, M, 2] integer (x, y) locations.
    tag_k: [K, M, T] float32 tags at those locations.
    heatmaps: [H, W, K] float32 unsuppressed heatmaps (adjust and refine read them).
    tags: [H, W, K, T] float32 tag maps (refine reads them).
    config: full config (see `parse`).
    adjust: official quarter-pixel adjustment.
    refine: official filling of missing joints.

  Returns:
    poses [P, K, 3+T] float32 and scores [P] float32, as `parse`.
  """
  p = _params(config)
  nj = len(p['joint_order'])
  heatmaps, tags = _check_maps(heatmaps, tags, nj)
  h, w, _ = heatmaps.shape
  val_k = np.ascontiguousarray(val_k, np.float32)
  loc_k = np.ascontiguousarray(loc_k, np.int64)
  tag_k = np.ascontiguousarray(tag_k, np.float32)
  if (val_k.ndim != 2 or val_k.shape[0] != nj or loc_k.shape != val_k.shape + (2,)
      or tag_k.shape != val_k.shape + (tags.shape[3],)):
    raise ValueError(f'grouping.parse_top_k: inconsistent top-k shapes val_k {val_k.shape}, '
                     f'loc_k {loc_k.shape}, tag_k {tag_k.shape} for {nj} joints')
  if not (_all_finite(val_k) and _all_finite(tag_k)):
    raise ValueError('grouping.parse_top_k: top-k values or tags contain NaN or inf')
  if refine:
    dslabs = _blocked_transpose(heatmaps.reshape(h * w, nj))
  else:
    dslabs = np.zeros((nj, 0), np.float32)
  poses, scores, status = _group(val_k, loc_k, tag_k, heatmaps, tags, dslabs,
                                 p['joint_order'], p['detection_threshold'],
                                 p['tag_threshold'], p['use_detection_val'],
                                 p['ignore_too_much'], p['max_num_people'], bool(adjust),
                                 bool(refine))
  return _checked(poses, scores, status)


def parse(heatmaps: np.ndarray, tags: np.ndarray, config, adjust: bool = True,
          refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Groups detections into people, as the official `HeatmapParser.parse`.

  Args:
    heatmaps: [H, W, K] float32 (aggregated) heatmaps of one image.
    tags: [H, W, K, T] float32 tag maps (T = 2 with flip test: original, flipped).
    config: full ConfigDict; uses `test.{detection_threshold, tag_threshold,
      use_detection_val, ignore_too_much, nms_kernel, nms_padding}`,
      `data.max_num_people` and `dataset.keypoints.joint_order`.
    adjust: move each joint a quarter pixel towards its higher neighbour.
    refine: fill missing joints of each person at the best tag-consistent peak.

  Returns:
    poses [P, K, 3+T] float32, rows (x, y, score, tags...) in heatmap pixels, missing
    joints all zero, people in creation order; scores [P] float32 (mean joint score after
    adjust, before refine). No detection above threshold gives shapes (0, K, 3+T), (0,).

  Raises:
    ValueError: on mis-shaped maps or NaN / infinite values.
  """
  p = _params(config)
  heatmaps, tags = _check_maps(heatmaps, tags, len(p['joint_order']))
  kernel, padding = int(config.test.nms_kernel), int(config.test.nms_padding)
  _check_nms(kernel, padding)
  poses, scores, status = _parse_host(heatmaps, tags, p['joint_order'],
                                      p['detection_threshold'], p['tag_threshold'],
                                      p['use_detection_val'], p['ignore_too_much'],
                                      p['max_num_people'], kernel, padding, bool(adjust),
                                      bool(refine))
  return _checked(poses, scores, status)
