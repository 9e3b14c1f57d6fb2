"""Host twin of the max-pool NMS + top-k, on joint-major maps (compiled).

`grouping.parse` gets host arrays; running the official NMS + top-k here avoids a round
trip to the device. `nms_top_k_host` matches `grouping.nms_top_k` exactly (equal values
keep the lower index first, as `jax.lax.top_k`).
"""

import numpy as np

from higherhrnet_jax._numba import njit


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
def gather_top_k(ind, tags):
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
