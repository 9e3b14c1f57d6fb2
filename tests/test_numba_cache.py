"""The numba cache is keyed by the compiled modules' sources, so it cannot go stale."""

import os
import shutil

from higherhrnet_jax import _numba
from higherhrnet_jax.inference import grouping_host, munkres


def test_compiled_functions_cache_under_the_keyed_directory():
  base = os.environ['NUMBA_CACHE_DIR']  # set by conftest
  assert _numba.cache_dir() == os.path.join(base, _numba.source_digest())
  for fn in (munkres.munkres_pairs, grouping_host.parse_host):
    assert fn._cache._cache_path.startswith(_numba.cache_dir() + os.sep), fn._cache._cache_path


def test_digest_changes_when_a_callee_module_changes(tmp_path):
  # The case numba's own check misses: only the callee's file (munkres.py) changes.
  package = tmp_path / 'pkg'
  for name in _numba._SOURCES:
    (package / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_numba._PACKAGE / name, package / name)
  before = _numba.source_digest(package)
  assert before == _numba.source_digest()
  with open(package / 'inference' / 'munkres.py', 'a') as f:
    f.write('\n# edited\n')
  assert _numba.source_digest(package) != before


def test_numba_setting_is_restored_after_decoration():
  saved = _numba.numba.config.CACHE_DIR
  _numba.njit(lambda x: x + 1)
  assert _numba.numba.config.CACHE_DIR == saved
