"""Shared test fixtures: paths to the official reference data, absl flags for grain."""

import os
import pathlib


def _numba_cache_dir() -> str:
  # numba's on-disk cache does not notice when a cached function's *callee* changes, so
  # the cache is keyed by the package sources: an edit gives a fresh cache.
  import hashlib
  package = pathlib.Path(__file__).parent.parent / 'higherhrnet_jax'
  digest = hashlib.sha1()
  for path in sorted(package.rglob('*.py')):
    digest.update(path.read_bytes())
  return str(package.parent / '.numba_cache' / digest.hexdigest()[:12])


os.environ.setdefault('NUMBA_CACHE_DIR', _numba_cache_dir())

import pytest
from absl import flags

# grain's multiprocessing workers read absl flags; tests do not go through app.run.
flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get('HIGHERHRNET_SHARED', REPO.parent / 'shared'))
FIXTURES = SHARED / 'fixtures' / 'official'
COCO_SAMPLE = SHARED / 'data' / 'coco_sample'
CROWDPOSE_SAMPLE = SHARED / 'data' / 'crowdpose_sample'


@pytest.fixture(scope='session')
def fixtures_dir() -> pathlib.Path:
  if not FIXTURES.is_dir():
    pytest.skip(f'official fixtures not found (set HIGHERHRNET_SHARED); looked in {FIXTURES}')
  return FIXTURES


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
