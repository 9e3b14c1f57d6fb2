"""Grouping from an on-disk numba cache filled by other entry points (a segfault seen once).

Each entry point runs in its own process against one shared cache directory, in the order
that crashed: the predictor (read-only arrays, device top-k) compiles the parallel refine
scan; the parity-style caller then loads that scan from the cache and compiles its own
specialisation of `parse_host`; a demo-style caller loads only that specialisation. Every
process must exit cleanly with the official parser's people (fixture grouping.npz, the same
poses a cold-cache run gives: test_grouping.py).
"""

import os
import pathlib
import subprocess
import sys

import numpy as np

import grouping_entry_points as entry

SCRIPT = pathlib.Path(entry.__file__)


def test_entry_points_sharing_one_cache_give_the_official_people(tmp_path, fixtures_dir):
  env = {**os.environ, 'NUMBA_CACHE_DIR': str(tmp_path / 'cache')}
  expected = np.load(fixtures_dir / 'grouping.npz')
  for mode in ('predictor', 'parity', 'demo'):
    out = tmp_path / f'{mode}.npz'
    run = subprocess.run([sys.executable, str(SCRIPT), mode, str(fixtures_dir), str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (mode, run.returncode, run.stderr[-3000:])
    got = np.load(out)
    assert len(got.files) == 2 * entry.SCENES * len(entry.MODES)
    for key in got.files:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=f'{mode}: {key}')
