"""The numba cache is keyed by the compiled modules' sources, so it cannot go stale."""

import os
import pathlib
import shutil
import subprocess
import sys

from higherhrnet_jax import _numba
from higherhrnet_jax.inference import grouping_host, munkres


def test_compiled_functions_cache_under_the_keyed_directory():
  base = os.environ['NUMBA_CACHE_DIR']  # set by conftest
  assert _numba.cache_dir() == os.path.join(base, _numba.source_digest())
  for fn in (munkres.munkres_pairs, grouping_host.parse_host):
    assert fn._cache._cache_path.startswith(_numba.cache_dir() + os.sep), fn._cache._cache_path


def test_every_compiling_module_is_in_the_key():
  names = {p.relative_to(_numba._PACKAGE).as_posix() for p in _numba.compiled_modules()}
  assert {'_numba.py', 'data/targets.py', 'inference/grouping_host.py',
          'inference/munkres.py'} <= names, names
  for fn in (munkres.munkres_pairs, grouping_host.parse_host):  # found by what they import
    assert pathlib.Path(fn.py_func.__code__.co_filename).resolve() in _numba.compiled_modules()


def test_digest_changes_when_a_callee_module_changes(tmp_path):
  # The case numba's own check misses: only the callee's file (munkres.py) changes.
  package = tmp_path / 'pkg'
  shutil.copytree(_numba._PACKAGE, package, ignore=shutil.ignore_patterns('__pycache__'))
  before = _numba.source_digest(package)
  assert before == _numba.source_digest()
  with open(package / 'inference' / 'munkres.py', 'a') as f:
    f.write('\n# edited\n')
  assert _numba.source_digest(package) != before


def test_numba_setting_is_restored_after_decoration():
  saved = _numba.numba.config.CACHE_DIR
  _numba.njit(lambda x: x + 1)
  assert _numba.numba.config.CACHE_DIR == saved


_PARALLEL_MODULE = '''
import numba
import numpy as np
from higherhrnet_jax._numba import njit

@njit(parallel=True)
def total(a):
  s = 0.0
  for i in numba.prange(a.shape[0]):
    s += a[i]
  return s

@njit
def twice_total(a):
  return 2.0 * total(a)
'''


def test_caller_compiled_over_a_cached_parallel_kernel_runs_from_the_cache(tmp_path):
  """The mechanism of the grouping segfault, on two small functions.

  Process 1 caches the parallel kernel; process 2 loads it from the cache and compiles and
  caches a caller; process 3 loads only the caller. Unless the caller kept the kernel's
  threading-layer start-up, process 3 calls a null address (exit -11).
  """
  (tmp_path / 'parallel_mod.py').write_text(_PARALLEL_MODULE)
  env = {**os.environ, 'NUMBA_CACHE_DIR': str(tmp_path / 'cache'),
         'PYTHONPATH': os.pathsep.join([str(tmp_path), *sys.path])}
  calls = ('print(parallel_mod.total(np.arange(100.0)))',
           'print(parallel_mod.twice_total(np.arange(100.0)))',
           'print(parallel_mod.twice_total(np.arange(100.0)))')
  for call in calls:
    run = subprocess.run([sys.executable, '-c', f'import numpy as np, parallel_mod; {call}'],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (call, run.returncode, run.stderr[-2000:])
  assert float(run.stdout) == 2 * 4950.0
