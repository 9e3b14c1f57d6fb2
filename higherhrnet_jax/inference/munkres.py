"""Hungarian assignment that returns exactly what munkres 1.1.4 `Munkres().compute` returns.

The tag-matching cost matrix of the official grouping is full of exact ties (rounded tag
distances times 100 minus a per-row constant), so many assignments are optimal and the one
chosen depends on the solver's scan order. The official results come from the pure-Python
`munkres` package, version 1.1.4; other solvers (scipy's `linear_sum_assignment`, munkres
3.x) pick different optima and change which people are formed. This module follows the
1.1.4 algorithm step by step in float64, in the same order, so ties resolve identically:

* a matrix with fewer rows than columns gets zero rows appended, one with fewer columns
  gets zero columns (square `n x n` working copy);
* step 1 subtracts each row's minimum; step 2 stars the first zero of each row (row-major)
  whose row and column hold no star yet;
* step 4 searches for an uncovered zero starting at the previous position: rows are
  visited cyclically from the previous row, and within the first row that has one, the
  *last* uncovered zero met while scanning the columns cyclically from the previous column
  is taken;
* step 6 adds the smallest uncovered value (search seeded with `sys.maxsize`) to covered
  rows and subtracts it from uncovered columns; zeros are tested with exact `== 0`;
* pairs are listed row by row, restricted to the original rows and columns.

Everything is compiled with numba; inputs and outputs are plain arrays.
"""

from __future__ import annotations

import numpy as np

from higherhrnet_jax._numba import njit

# munkres 1.1.4 seeds its minimum search with the Python int sys.maxsize (2**63 - 1); every
# comparison with a float64 sees it as 2.0**63.
_MAXSIZE = float(2**63 - 1)

# Status codes of `munkres_pairs`.
OK = 0
UNSOLVABLE = 1  # munkres 1.1.4 raises UnsolvableMatrix (step 6 changes nothing)
NO_PROGRESS = 2  # iteration guard: non-finite costs make the algorithm cycle forever


@njit
def _find_a_zero(c, row_covered, col_covered, i0, j0):
  """Step 4's zero search: first row (cyclic from i0) with an uncovered zero, last such
  zero in that row's cyclic column scan starting at j0."""
  n = c.shape[0]
  row = -1
  col = -1
  i = i0
  done = False
  while not done:
    j = j0
    while True:
      if c[i, j] == 0 and not row_covered[i] and not col_covered[j]:
        row = i
        col = j
        done = True
      j = (j + 1) % n
      if j == j0:
        break
    i = (i + 1) % n
    if i == i0:
      done = True
  return row, col


@njit
def _find_in_row(marked, row, value):
  for j in range(marked.shape[1]):
    if marked[row, j] == value:
      return j
  return -1


@njit
def _find_star_in_col(marked, col):
  for i in range(marked.shape[0]):
    if marked[i, col] == 1:
      return i
  return -1


@njit
def munkres_pairs(cost, max_iterations=1_000_000):
  """Solves the assignment problem on `cost` as munkres 1.1.4 does.

  Args:
    cost: [R, C] float64 cost matrix (not modified).
    max_iterations: guard on the number of algorithm steps (the pure-Python code has none;
      it only matters for non-finite costs, on which the algorithm never terminates).

  Returns:
    (pairs [P, 2] int64 (row, col) listed row by row, status) with status `OK`,
    `UNSOLVABLE` or `NO_PROGRESS`; pairs is empty unless status is `OK`.
  """
  r, cc = cost.shape
  n = max(r, cc)
  c = np.zeros((n, n), np.float64)
  c[:r, :cc] = cost
  marked = np.zeros((n, n), np.int8)  # 1 = star, 2 = prime
  row_covered = np.zeros(n, np.bool_)
  col_covered = np.zeros(n, np.bool_)
  path = np.zeros((2 * n + 1, 2), np.int64)
  z0_r = 0
  z0_c = 0
  empty = np.zeros((0, 2), np.int64)
  if n == 0:
    return empty, OK

  # Step 1: row minima.
  for i in range(n):
    m = c[i, 0]
    for j in range(1, n):
      if c[i, j] < m:
        m = c[i, j]
    for j in range(n):
      c[i, j] -= m
  # Step 2: initial stars (covers used as scratch, then cleared).
  for i in range(n):
    for j in range(n):
      if c[i, j] == 0 and not col_covered[j] and not row_covered[i]:
        marked[i, j] = 1
        col_covered[j] = True
        row_covered[i] = True
        break
  row_covered[:] = False
  col_covered[:] = False

  step = 3
  iterations = 0
  while step != 7:
    iterations += 1
    if iterations > max_iterations:
      return empty, NO_PROGRESS
    if step == 3:
      count = 0
      for i in range(n):
        for j in range(n):
          if marked[i, j] == 1 and not col_covered[j]:
            col_covered[j] = True
            count += 1
      step = 7 if count >= n else 4
    elif step == 4:
      row = 0
      col = 0
      while True:
        row, col = _find_a_zero(c, row_covered, col_covered, row, col)
        if row < 0:
          step = 6
          break
        marked[row, col] = 2
        star_col = _find_in_row(marked, row, 1)
        if star_col >= 0:
          col = star_col
          row_covered[row] = True
          col_covered[col] = False
        else:
          z0_r = row
          z0_c = col
          step = 5
          break
    elif step == 5:
      count = 0
      path[0, 0] = z0_r
      path[0, 1] = z0_c
      while True:
        row = _find_star_in_col(marked, path[count, 1])
        if row < 0:
          break
        count += 1
        path[count, 0] = row
        path[count, 1] = path[count - 1, 1]
        col = _find_in_row(marked, path[count, 0], 2)
        count += 1
        path[count, 0] = path[count - 1, 0]
        path[count, 1] = col
      for k in range(count + 1):
        if marked[path[k, 0], path[k, 1]] == 1:
          marked[path[k, 0], path[k, 1]] = 0
        else:
          marked[path[k, 0], path[k, 1]] = 1
      row_covered[:] = False
      col_covered[:] = False
      for i in range(n):
        for j in range(n):
          if marked[i, j] == 2:
            marked[i, j] = 0
      step = 3
    else:  # step 6
      minval = _MAXSIZE
      for i in range(n):
        for j in range(n):
          if not row_covered[i] and not col_covered[j] and minval > c[i, j]:
            minval = c[i, j]
      events = 0
      for i in range(n):
        for j in range(n):
          if row_covered[i]:
            c[i, j] += minval
            events += 1
          if not col_covered[j]:
            c[i, j] -= minval
            events += 1
          if row_covered[i] and not col_covered[j]:
            events -= 2
      if events == 0:
        return empty, UNSOLVABLE
      step = 4

  num = 0
  for i in range(r):
    for j in range(cc):
      if marked[i, j] == 1:
        num += 1
  pairs = np.zeros((num, 2), np.int64)
  k = 0
  for i in range(r):
    for j in range(cc):
      if marked[i, j] == 1:
        pairs[k, 0] = i
        pairs[k, 1] = j
        k += 1
  return pairs, OK


def compute(cost: np.ndarray) -> np.ndarray:
  """`Munkres().compute(cost)` of munkres 1.1.4 as an array of (row, col) pairs.

  Args:
    cost: [R, C] finite cost matrix (converted to float64).

  Returns:
    [P, 2] int64 pairs, row by row (P = min(R, C) for finite costs).

  Raises:
    ValueError: on a non-2-d or non-finite matrix, or one munkres 1.1.4 cannot solve.
  """
  cost = np.ascontiguousarray(cost, np.float64)
  if cost.ndim != 2:
    raise ValueError(f'munkres.compute: cost must be 2-d, got shape {cost.shape}')
  if not np.isfinite(cost).all():
    raise ValueError('munkres.compute: cost matrix has non-finite entries')
  pairs, status = munkres_pairs(cost)
  if status != OK:
    raise ValueError(f'munkres.compute: matrix cannot be solved (status {status})')
  return pairs
