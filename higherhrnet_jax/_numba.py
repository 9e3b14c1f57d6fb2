"""Numba compilation with an on-disk cache that loads only code that can run.

Two ways numba's own `cache=True` can hand a process code that crashes it, and the cure:

1. Stale callees. Numba validates a cached function against the timestamp of its own source
   file only. When a function it calls, defined in another module, changes (a `git pull`,
   an upgrade), the stale cached caller still loads. Our compiled functions therefore cache
   into a directory named after a hash of every module that defines them and of the numba
   version: any change gives a fresh cache, and old entries are simply never read.

2. Callers of `parallel=True` kernels. A parallel kernel calls numba's threading layer
   (`numba_parallel_for`, `get_num_threads`, ...), whose symbols exist only once the layer
   is started. A compiled function records that start-up among its `reload_init` steps,
   and a caller inherits its callees' steps from their code libraries, so that loading the
   caller from the cache starts the layer first. But a library loaded *from the cache*
   comes back without its steps. So a process that loaded the parallel kernel from the
   cache and compiled a new specialisation of a caller (say `parse_host` on read-only
   arrays after another process cached it for writable ones) cached that caller without
   the start-up; the next process that loads only the caller calls a null address. That
   was the segfault in `grouping.parse` after the parity tests, the inference bench and
   the training loop had filled one cache in turn. `_FunctionCache` hands the steps back to
   every loaded library, so callers compiled on top of cached kernels keep them.

The directory lives under `$NUMBA_CACHE_DIR` when set, else under the user cache
(`$XDG_CACHE_HOME` or `~/.cache`)/higherhrnet_jax/numba. Numba's own setting is changed
only while our functions are being decorated, so other libraries keep their caches.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
from typing import Callable

import numba
from numba.core import caching

_PACKAGE = pathlib.Path(__file__).resolve().parent


def compiled_modules(package: pathlib.Path = _PACKAGE) -> list[pathlib.Path]:
  """This module and every module of `package` that compiles with it (the cache key)."""
  return sorted(p for p in package.rglob('*.py')
                if p.name == '_numba.py' and p.parent == package
                or 'higherhrnet_jax._numba import' in p.read_text())


def source_digest(package: pathlib.Path = _PACKAGE) -> str:
  """Hash of the numba version and of every compiled module under `package`."""
  digest = hashlib.sha1(numba.__version__.encode())
  for path in compiled_modules(package):
    digest.update(path.relative_to(package).as_posix().encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()[:16]


@functools.cache
def cache_dir() -> str:
  """The cache directory for this exact set of sources (created on first use by numba)."""
  base = os.environ.get('NUMBA_CACHE_DIR')
  if not base:
    xdg = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    base = os.path.join(xdg, 'higherhrnet_jax', 'numba')
  return os.path.join(base, source_digest())


class _FunctionCache(caching.FunctionCache):
  """numba's on-disk cache whose loaded code libraries keep their start-up steps.

  Callers compiled in this process link the library and inherit `library._reload_init`;
  numba restores the steps on the compile result only (see the module docstring, 2).
  """

  def load_overload(self, sig, target_context):
    result = super().load_overload(sig, target_context)
    if result is not None and result.reload_init:
      result.library._reload_init.update(result.reload_init)  # pylint: disable=protected-access
    return result


def njit(fn: Callable | None = None, **options) -> Callable:
  """`numba.njit(cache=True, **options)` with `_FunctionCache` in `cache_dir()`.

  Use as `@njit` or `@njit(parallel=True)`. An unwritable directory makes numba fall back
  to its default locations, as it would anyway.
  """
  def decorate(f: Callable) -> Callable:
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = cache_dir()  # read when the cache locates its directory
    try:
      dispatcher = numba.njit(**options)(f)
      # What `cache=True` does (`Dispatcher.enable_caching`), with our cache class.
      dispatcher._cache = _FunctionCache(dispatcher.py_func)  # pylint: disable=protected-access
      return dispatcher
    finally:
      numba.config.CACHE_DIR = saved

  return decorate if fn is None else decorate(fn)
