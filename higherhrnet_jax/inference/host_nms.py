"""Host twin of the max-pool NMS + top-k, on the maps' own [H, W, K] layout (compiled).

`grouping.parse` gets host arrays; running the official NMS + top-k here avoids a round
trip to the device. `nms_top_k_host` matches `grouping.nms_top_k` exactly (equal values
keep the lower index first, as `jax.lax.top_k`).

Why it is fast: a joint's top-k only changes where a pixel's suppressed value beats the
k-th best so far. Suppression can only lower a positive value (to 0), so once that k-th
value is >= 0 only pixels *above* it can enter, and only those need the window test. One
streaming pass compares each pixel's K values with the K current thresholds; the few that
pass get the exact test. No pooled map, no joint-major copy.
"""

import numpy as np

from higherhrnet_jax._numba import njit


@njit
def is_window_max(det, y, x, j, h, w, padding):
  """pooled == value for the official stride-1 max pool (padding -inf) of the valid h x w
  region: no value in the window is larger."""
  v = det[y, x, j]
  # The four nearest neighbours first: on the slope of a peak one of them is higher.
  if padding > 0 and ((x + 1 < w and det[y, x + 1, j] > v) or (x > 0 and det[y, x - 1, j] > v)
                      or (y + 1 < h and det[y + 1, x, j] > v)
                      or (y > 0 and det[y - 1, x, j] > v)):
    return False
  for yy in range(max(y - padding, 0), min(y + padding + 1, h)):
    for xx in range(max(x - padding, 0), min(x + padding + 1, w)):
      if det[yy, xx, j] > v:
        return False
  return True


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
def nms_top_k_host(det, h, w, padding, k):
  """NMS + per-joint top-k of the valid [:h, :w] region of det [Hp, Wp, K].

  Returns val_k [K, k] float32, flat indices [K, k] int64 (y * w + x within the valid
  region) and whether every valid value is finite (if not, the rest is meaningless).
  The suppressed value is the official `det * (pooled == det)`: non-maxima become +-0.
  """
  nj = det.shape[2]
  n = h * w
  k = min(k, n)
  val_k = np.empty((nj, k), np.float32)
  ind_k = np.empty((nj, k), np.int64)
  # Pixels below `gate` cannot enter joint j's list: its k-th value while that is >= 0;
  # -inf (every pixel tested) while the list fills or holds negative values, where a
  # suppressed 0 would still enter.
  gate = np.full(nj, -np.inf, np.float32)
  nan_probe = np.zeros(nj, np.float32)
  for y in range(h):
    row = det[y]
    up = det[max(y - 1, 0)]
    down = det[min(y + 1, h - 1)]
    for x in range(w):
      px = row[x]
      i = y * w + x
      hit = False
      if padding > 0 and 0 < x < w - 1:
        # Cheap filter, a vector over the joints: above the gate and not below any of
        # the four nearest neighbours (edge rows compare with themselves).
        left = row[x - 1]
        right = row[x + 1]
        above = up[x]
        below = down[x]
        for j in range(nj):
          v = px[j]
          nan_probe[j] += v * np.float32(0.0)  # inf * 0 and NaN stay NaN
          hit |= ((v > gate[j]) & (v >= left[j]) & (v >= right[j]) & (v >= above[j])
                  & (v >= below[j]))
      else:
        for j in range(nj):
          v = px[j]
          nan_probe[j] += v * np.float32(0.0)
          hit |= v > gate[j]
      if not hit and i >= k:
        continue
      for j in range(nj):
        v = px[j]
        if i >= k and not v > gate[j]:
          continue
        c = v * np.float32(1.0 if is_window_max(det, y, x, j, h, w, padding) else 0.0)
        if i < k:
          _insert(val_k[j], ind_k[j], i, c, i)
        elif c > val_k[j, k - 1]:
          _insert(val_k[j], ind_k[j], k - 1, c, i)
        else:
          continue
        if i >= k - 1:
          t = val_k[j, k - 1]
          gate[j] = t if t >= 0 else -np.inf
  finite = True
  for j in range(nj):
    finite &= nan_probe[j] == 0
  return val_k, ind_k, finite


@njit
def gather_top_k(ind, tags, w):
  """loc_k [K, M, 2] (x, y) and tag_k [K, M, T] at flat indices ind [K, M] (y * w + x) of
  tags [Hp, Wp, K, T]."""
  nj, nt = tags.shape[2], tags.shape[3]
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
