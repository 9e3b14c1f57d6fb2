"""Shared test fixtures: paths to the official reference data, absl flags for grain."""

import os
import pathlib


# Compiled grouping/target code caches here (keyed by source hash in higherhrnet_jax._numba).
os.environ.setdefault('NUMBA_CACHE_DIR', str(pathlib.Path(__file__).parent.parent / '.numba_cache'))

import pytest
from absl import flags

# grain's multiprocessing workers read absl flags; tests do not go through app.run.
flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get('HIGHERHRNET_SHARED', REPO.parent / 'shared'))
FIXTURES = SHARED / 'fixtures' / 'official'
TOPDOWN_FIXTURES = SHARED / 'fixtures' / 'official_topdown'
COCO_SAMPLE = SHARED / 'data' / 'coco_sample'
CROWDPOSE_SAMPLE = SHARED / 'data' / 'crowdpose_sample'


@pytest.fixture(scope='session')
def fixtures_dir() -> pathlib.Path:
  if not FIXTURES.is_dir():
    pytest.skip(f'official fixtures not found (set HIGHERHRNET_SHARED); looked in {FIXTURES}')
  return FIXTURES


@pytest.fixture(scope='session')
def topdown_fixtures_dir() -> pathlib.Path:
  if not TOPDOWN_FIXTURES.is_dir():
    pytest.skip('official top-down fixtures not found (set HIGHERHRNET_SHARED); looked in '
                f'{TOPDOWN_FIXTURES}')
  return TOPDOWN_FIXTURES


@pytest.fixture(scope='session')
def coco_sample_dir() -> pathlib.Path:
  if not COCO_SAMPLE.is_dir():
    pytest.skip('COCO sample data not found (set HIGHERHRNET_SHARED)')
  return COCO_SAMPLE


@pytest.fixture(scope='session')
def crowdpose_sample_dir() -> pathlib.Path:
  if not CROWDPOSE_SAMPLE.is_dir():
    pytest.skip('CrowdPose sample data not found (set HIGHERHRNET_SHARED)')
  return CROWDPOSE_SAMPLE


@pytest.fixture(scope='session')
def grouping_scenes(fixtures_dir) -> list[dict]:
  """The official grouping fixture's scenes, maps transposed to our [H, W, K(, T)] layout
  (the file stores them NCHW-style, (1, K, H, W[, T]))."""
  import numpy as np
  z = np.load(fixtures_dir / 'grouping.npz')
  out = []
  for s in range(int(z['num_scenes'])):
    p = f's{s:02d}_'
    d = {k[len(p):]: z[k] for k in z.files if k.startswith(p) and '_gen_' not in k}
    d['hm'] = np.ascontiguousarray(d['det'][0].transpose(1, 2, 0))
    d['tg'] = np.ascontiguousarray(d['tag'][0].transpose(1, 2, 0, 3))
    out.append(d)
  return out
