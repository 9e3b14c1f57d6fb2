"""NumPy's float summation orders, compiled: the official grouping's means and scores.

The official parser averages float32 tag vectors and joint scores with NumPy, whose
pairwise summation (eight interleaved partial sums per block of up to 128 terms, halves
above that) rounds differently from a plain loop; reproducing its order keeps our people,
scores and refine decisions bit-identical to the official ones.
"""

import numpy as np

from higherhrnet_jax._numba import njit


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
def sum_squares(diff):
  """Sum over the last (contiguous) axis as NumPy does: sequential below 8 terms."""
  if diff.shape[0] < 8:
    s = diff[0] - diff[0]
    for t in range(diff.shape[0]):
      s += diff[t] * diff[t]
    return s
  sq = diff * diff
  return pairwise_sum(sq, 0, sq.shape[0])
