"""Host kernels of the grouping, compiled with numba: plain arrays in and out.

Tag matching (`match_by_tag` with the munkres 1.1.4 port), adjust, scores and refine, each
reproducing the official NumPy arithmetic: float64 matching against float32 group means,
NumPy's summation orders for float32 means and scores (`numpy_order.py`), float32 refine.
`group` and `parse_host` (with the NMS + top-k of `host_nms.py`) are the entry points;
`grouping.py` validates inputs and holds the public API.

All kernels read the maps in their own layout, det [Hp, Wp, K] and tags [Hp, Wp, K, T],
of which the valid region is [:h, :w] (a batch's maps are padded to a common size): no
crop is copied, no joint-major copy is made. Pixel order, e.g. for refine's first argmax,
is row-major over the valid region, as in the official code on the cropped map.
"""

import numpy as np

from higherhrnet_jax._numba import njit
from higherhrnet_jax.inference import host_nms, munkres, numpy_order

# Status of `group` / `parse_host` (anything else is a munkres status).
OK = 0
NON_FINITE_HEATMAPS = -1
NON_FINITE_TAGS = -2

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
def _adjust_joint(poses, p, j, left, right, up, down):
  """Official `adjust` of one joint: pixel centre plus a quarter pixel towards the higher
  neighbour (given the det values left, right, above and below it, clipped to the map)."""
  poses[p, j, 0] = np.float32(poses[p, j, 0] + _shift(left, right)) + np.float32(0.5)
  poses[p, j, 1] = np.float32(poses[p, j, 1] + _shift(up, down)) + np.float32(0.5)


@njit
def _candidate_neighbours(det, loc_k, h, w):
  """det left, right, above and below every candidate [K, M, 4] (clipped to the valid
  h x w map): what adjust reads. Candidates below the threshold may point anywhere; they
  are clamped into the map (their values are never used)."""
  nj, m = loc_k.shape[:2]
  out = np.empty((nj, m, 4), np.float32)
  for j in range(nj):
    for c in range(m):
      x = min(max(loc_k[j, c, 0], 0), w - 1)
      y = min(max(loc_k[j, c, 1], 0), h - 1)
      out[j, c, 0] = det[y, max(x - 1, 0), j]
      out[j, c, 1] = det[y, min(x + 1, w - 1), j]
      out[j, c, 2] = det[max(y - 1, 0), x, j]
      out[j, c, 3] = det[min(y + 1, h - 1), x, j]
  return out


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
def _pixel_score(det, tag, prev):
  """det - round(|tag - prev|) of one pixel in float32, NumPy's order: squares summed in
  sequence below 8 tags, pairwise from 8."""
  nt = prev.shape[0]
  if nt < 8:
    s = np.float32(0.0)
    for t in range(nt):
      e = np.float32(tag[t] - prev[t])
      s = np.float32(s + np.float32(e * e))
  else:
    e = np.empty(nt, np.float32)
    for t in range(nt):
      e[t] = np.float32(tag[t] - prev[t])
    s = numpy_order.sum_squares(e)
  return np.float32(det - np.float32(np.rint(np.float32(np.sqrt(s)))))


@njit
def _row_scores(drow, trow, j, w, prev, acc):
  """acc[x] = `_pixel_score` along one row of joint j; the flip-test layout (two tags) is
  written out so that the loop vectorises."""
  if prev.shape[0] == 2:
    p0 = prev[0]
    p1 = prev[1]
    for x in range(w):
      e0 = np.float32(trow[x, j, 0] - p0)
      e1 = np.float32(trow[x, j, 1] - p1)
      s = np.float32(np.float32(e0 * e0) + np.float32(e1 * e1))
      acc[x] = np.float32(drow[x, j] - np.float32(np.rint(np.float32(np.sqrt(s)))))
  else:
    for x in range(w):
      acc[x] = _pixel_score(drow[x, j], trow[x, j], prev)


@njit
def _row_bounds(trow, drow, w, probe, tmin, tmax, dmax):
  """Per joint (and tag channel) extremes of one row: tag min / max over trow [Wp * K * T]
  flat, det max over drow [Wp, K]; probe[q] += tag * 0 flags NaN / inf."""
  c = tmin.shape[0]
  tmin[:] = np.inf
  tmax[:] = -np.inf
  dmax[:] = -np.inf
  for x in range(w):
    base = x * c
    for q in range(c):
      v = trow[base + q]
      probe[q] += v * np.float32(0.0)
      tmin[q] = v if v < tmin[q] else tmin[q]
      tmax[q] = v if v > tmax[q] else tmax[q]
    px = drow[x]
    for j in range(dmax.shape[0]):
      v = px[j]
      dmax[j] = v if v > dmax[j] else dmax[j]


@njit
def _max_lanes(a, n):
  """max(a[:n]) of finite values from eight independent lanes (a loop that vectorises)."""
  lanes = np.full(8, -np.inf, a.dtype)
  nb = n - n % 8
  for i in range(0, nb, 8):
    for q in range(8):
      v = a[i + q]
      lanes[q] = v if v > lanes[q] else lanes[q]
  m = lanes.max()
  for i in range(nb, n):
    if a[i] > m:
      m = a[i]
  return m


@njit
def _probe_row(flat, n, probe):
  """probe[q] += value * 0 over flat[:n]: stays 0 unless a value is NaN or infinite."""
  nb = n - n % 16
  for i in range(0, nb, 16):
    for q in range(16):
      probe[q] += flat[i + q] * np.float32(0.0)
  for i in range(nb, n):
    probe[0] += flat[i] * np.float32(0.0)


@njit(nogil=True)
def rows_finite(flat, h, n):
  """Whether flat[:h, :n] (maps as [Hp, Wp * C] rows) is all finite: one streaming pass."""
  probe = np.zeros(16, np.float32)
  for y in range(h):
    _probe_row(flat[y], n, probe)
  return (probe == 0).all()


@njit
def tags_finite(tags, h, w):
  hp, wp, nj, nt = tags.shape
  return rows_finite(tags.reshape(hp, wp * nj * nt), h, w * nj * nt)


@njit
def refine_scans(poses):
  """The scans refine needs: (person, joint) of every missing joint (score exactly 0), and
  each person's mean tag `prevs` [P, T] (float32, NumPy's order) over its present joints.

  The official code reads those tags from the maps at the joints' integer peaks, which is
  where the matching took them from: they are the poses' own tag columns.
  """
  npeople, nj = poses.shape[:2]
  nt = poses.shape[2] - 3
  rows = np.empty((nj, nt), np.float32)
  prevs = np.zeros((npeople, nt), np.float32)
  scan_p = np.empty(npeople * nj, np.int64)
  scan_j = np.empty(npeople * nj, np.int64)
  ns = 0
  for p in range(npeople):
    cnt = 0
    for j in range(nj):
      if poses[p, j, 2] > 0:
        rows[cnt, :] = poses[p, j, 3:]
        cnt += 1
    if cnt == 0:
      continue  # only reachable with a negative detection threshold
    numpy_order.mean_rows_f32(rows, cnt, prevs[p])
    for j in range(nj):
      if poses[p, j, 2] == 0:
        scan_p[ns] = p
        scan_j[ns] = j
        ns += 1
  return scan_p[:ns].copy(), scan_j[:ns].copy(), prevs


@njit
def fill_joint(poses, p, j, x, y, val, left, right, up, down):
  """Refine's fill of joint j of person p at its best pixel (x, y), given the det value
  there and at the four neighbours (clipped to the map): only a positive peak is taken."""
  if val > 0:
    poses[p, j, 0] = np.float32(x + 0.5 + _shift(left, right))
    poses[p, j, 1] = np.float32(y + 0.5 + _shift(up, down))
    poses[p, j, 2] = val


@njit
def _refine(poses, det, tags, h, w):
  """Official `refine`: fills missing joints (score exactly 0) at the best tag-consistent peak.

  For a missing joint j of a person with mean tag `prev` (float32 mean over its present
  joints, read at their integer peak locations) the official code takes the first argmax,
  in row-major order, of `det[..., j] - round(|tag[..., j, :] - prev|)` (float32) and fills
  the joint there if the det value is positive. Every (person, joint) scan advances row by
  row in one pass over the maps, so each row is read from memory once, whatever the number
  of scans; the same pass checks that the tags are finite (returned).
  """
  hp, wp, nj, nt = tags.shape
  scan_p, scan_j, prevs = refine_scans(poses)
  ns = scan_p.shape[0]
  if ns == 0:
    return tags_finite(tags, h, w)
  best_val = np.full(ns, -np.inf, np.float32)
  best_idx = np.full(ns, -1, np.int64)
  acc = np.empty(w, np.float32)
  flat = tags.reshape(hp, wp * nj * nt)
  probe = np.zeros(nj * nt, np.float32)
  tmin = np.empty(nj * nt, np.float32)
  tmax = np.empty(nj * nt, np.float32)
  dmax = np.empty(nj, np.float32)
  nearest = np.empty(nt, np.float32)
  for y in range(h):
    drow = det[y]
    trow = tags[y]
    _row_bounds(flat[y], drow, w, probe, tmin, tmax, dmax)
    for s in range(ns):
      j = scan_j[s]
      prev = prevs[scan_p[s]]
      # No pixel of this row scores above det_max - round(|nearest tag in the row's tag
      # box - prev|) (every float32 step is monotone); a row that cannot beat the best so
      # far is skipped: a tie keeps the earlier pixel anyway.
      for t in range(nt):
        nearest[t] = min(max(prev[t], tmin[j * nt + t]), tmax[j * nt + t])
      if _pixel_score(dmax[j], nearest, prev) <= best_val[s]:
        continue
      _row_scores(drow, trow, j, w, prev, acc)
      m = _max_lanes(acc, w)
      if m > best_val[s]:  # a tie with an earlier row keeps the earlier pixel
        best_val[s] = m
        for x in range(w):
          if acc[x] == m:
            best_idx[s] = y * w + x
            break
  if not (probe == 0).all():
    return False
  for s in range(ns):
    bi = best_idx[s]
    if bi < 0:
      continue
    by = bi // w
    bx = bi % w
    j = scan_j[s]
    fill_joint(poses, scan_p[s], j, bx, by, det[by, bx, j], det[by, max(bx - 1, 0), j],
               det[by, min(bx + 1, w - 1), j], det[max(by - 1, 0), bx, j],
               det[min(by + 1, h - 1), bx, j])
  return True


@njit(nogil=True)
def group(val_k, loc_k, tag_k, det, tags, h, w, joint_order, detection_threshold,
          tag_threshold, use_detection_val, ignore_too_much, max_num_people, adjust, refine):
  """Matching, adjust, scores and refine for one image (see `parse`); checks that the tags
  are finite on the way (the heatmaps are the caller's to check).

  Entry points release the GIL, so images group in parallel threads, and grouping in a
  worker thread overlaps with Python work (e.g. dispatching the next batch).
  """
  poses, scores, status = group_candidates(
      val_k, loc_k, tag_k, _candidate_neighbours(det, loc_k, h, w), joint_order,
      detection_threshold, tag_threshold, use_detection_val, ignore_too_much, max_num_people,
      adjust)
  if status != OK:
    return poses, scores, status
  finite = _refine(poses, det, tags, h, w) if refine else tags_finite(tags, h, w)
  if not finite:
    return poses[:0], scores[:0], NON_FINITE_TAGS
  return poses, scores, OK


@njit(nogil=True)
def parse_host(det, tags, h, w, joint_order, detection_threshold, tag_threshold,
               use_detection_val, ignore_too_much, max_num_people, padding, adjust, refine):
  """NMS, top-k and `group` on the valid [:h, :w] region of host maps (see `parse`)."""
  val_k, ind, finite = host_nms.nms_top_k_host(det, h, w, padding, max_num_people)
  if not finite:
    return np.zeros((0, det.shape[2], 3 + tags.shape[3]), np.float32), np.zeros(
        0, np.float32), NON_FINITE_HEATMAPS
  loc_k, tag_k = host_nms.gather_top_k(ind, tags, w)
  for v in tag_k.ravel():
    if not np.isfinite(v):  # the matching's costs must be finite to terminate
      return np.zeros((0, det.shape[2], 3 + tags.shape[3]), np.float32), np.zeros(
          0, np.float32), NON_FINITE_TAGS
  return group(val_k, loc_k, tag_k, det, tags, h, w, joint_order, detection_threshold,
               tag_threshold, use_detection_val, ignore_too_much, max_num_people, adjust,
               refine)


# ------------------------ matching from candidates; the host half of device grouping


@njit
def _adjust_from_neighbours(poses, loc_k, neighbours):
  """`_adjust` with the det values around each candidate gathered on the device
  (neighbours [K, M, 4]: left, right, up, down, clipped to the map)."""
  for p in range(poses.shape[0]):
    for j in range(poses.shape[1]):
      if poses[p, j, 2] > 0:
        x = int(poses[p, j, 0])
        y = int(poses[p, j, 1])
        for c in range(loc_k.shape[1]):
          if loc_k[j, c, 0] == x and loc_k[j, c, 1] == y:
            nb = neighbours[j, c]
            _adjust_joint(poses, p, j, nb[0], nb[1], nb[2], nb[3])
            break


@njit(nogil=True)
def group_candidates(val_k, loc_k, tag_k, neighbours, joint_order, detection_threshold,
                     tag_threshold, use_detection_val, ignore_too_much, max_num_people,
                     adjust):
  """Matching, adjust and scores from the device's candidates alone: no map is read."""
  poses, status = _match_by_tag(val_k, loc_k, tag_k, joint_order, detection_threshold,
                                tag_threshold, use_detection_val, ignore_too_much,
                                max_num_people)
  if status != OK:
    return poses, np.zeros(0, np.float32), status
  if adjust:
    _adjust_from_neighbours(poses, loc_k, neighbours)
  return poses, person_scores(poses), OK


@njit(nogil=True)
def fill_from_scans(poses, scan_p, scan_j, best_x, best_y, best_det, first):
  """Refine's fills from one device scan of people first, first + 1, ...: best_x, best_y
  [C, K] and best_det [C, K, 5] (det at the pixel, then left, right, up, down); scan_p
  counts from `first`."""
  for s in range(scan_p.shape[0]):
    q = scan_p[s]
    j = scan_j[s]
    d = best_det[q, j]
    fill_joint(poses, first + q, j, best_x[q, j], best_y[q, j], d[0], d[1], d[2], d[3], d[4])
