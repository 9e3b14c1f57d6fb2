"""The numba Munkres port against munkres 1.1.4: stored official calls and tied random matrices.

Tolerance: exact (identical (row, col) pairs in identical order).
"""

import numpy as np
import pytest

from higherhrnet_jax.inference import munkres


def _stored_calls(fixtures_dir):
  z = np.load(fixtures_dir / 'grouping.npz')
  for s in range(int(z['num_scenes'])):
    p = f's{s:02d}_'
    shapes, cost = z[p + 'mk_shape'], z[p + 'mk_cost']
    npairs, pairs = z[p + 'mk_npairs'], z[p + 'mk_pairs']
    o = q = 0
    for (r, c), n in zip(shapes, npairs):
      yield s, cost[o:o + r * c].reshape(r, c), pairs[q:q + n]
      o += r * c
      q += n


def test_every_stored_official_call(fixtures_dir):
  calls = list(_stored_calls(fixtures_dir))
  assert len(calls) == 316  # the fixture README's count
  mismatches = [(s, m.shape) for s, m, expected in calls
                if not np.array_equal(munkres.compute(m), expected)]
  assert not mismatches


def _tied_matrix(rng, r, c):
  kind = rng.integers(3)
  if kind == 0:  # small integers: many exactly tied optima
    return rng.integers(0, 3, (r, c)).astype(np.float64)
  if kind == 1:  # the grouping cost: round(distance) * 100 - per-row value, 1e10 padding
    m = np.round(rng.random((r, c)) * 3) * 100 - rng.choice([0.25, 0.5, 0.75], (r, 1))
    if r > c:
      m = np.concatenate([m, np.full((r, r - c), 1e10)], axis=1)
    return m
  return rng.integers(-2, 2, (r, c)) * 0.5  # negative and fractional entries


def test_random_tied_matrices_match_munkres_1_1_4():
  reference = pytest.importorskip('munkres')
  assert reference.__version__ == '1.1.4'
  rng = np.random.default_rng(0)
  for _ in range(1500):
    m = _tied_matrix(rng, int(rng.integers(1, 9)), int(rng.integers(1, 9)))
    expected = np.array(reference.Munkres().compute(m.tolist()), np.int64).reshape(-1, 2)
    got = munkres.compute(m)
    assert np.array_equal(got, expected), m


def test_rectangular_and_trivial_shapes():
  assert munkres.compute(np.zeros((0, 0))).shape == (0, 2)
  assert np.array_equal(munkres.compute(np.array([[3.0]])), [[0, 0]])
  # More rows than columns: munkres pads zero columns and reports only real columns.
  assert np.array_equal(munkres.compute(np.array([[1.0], [0.0], [2.0]])), [[1, 0]])


@pytest.mark.parametrize('bad', [np.array([[0.0, np.nan], [1.0, 2.0]]),
                                 np.array([[np.inf, 0.0], [1.0, 2.0]]), np.zeros(3)])
def test_bad_matrices_raise(bad):
  with pytest.raises(ValueError, match='munkres.compute'):
    munkres.compute(bad)
