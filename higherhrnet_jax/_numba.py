"""Numba compilation with an on-disk cache that cannot go stale.

Numba validates a cached function against the timestamp of its own source file only. When a
function it calls, defined in another module, changes (a `git pull`, an upgrade), the stale
cached caller still loads and can crash the interpreter. Our compiled functions therefore
cache into a directory named after a hash of every module that defines them and of the
numba version: any change gives a fresh cache, and old entries are simply never read.

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

_PACKAGE = pathlib.Path(__file__).resolve().parent
# Every module that compiles with `njit` below (and this one): the cache key.
_SOURCES = ('_numba.py', 'data/targets.py', 'data/transforms.py',
            'inference/grouping_host.py', 'inference/munkres.py')


def source_digest(package: pathlib.Path = _PACKAGE) -> str:
  """Hash of the numba version and of every compiled module under `package`."""
  digest = hashlib.sha1(numba.__version__.encode())
  for name in _SOURCES:
    digest.update(name.encode())
    digest.update((package / name).read_bytes())
  return digest.hexdigest()[:16]


@functools.cache
def cache_dir() -> str:
  """The cache directory for this exact set of sources (created on first use by numba)."""
  base = os.environ.get('NUMBA_CACHE_DIR')
  if not base:
    xdg = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    base = os.path.join(xdg, 'higherhrnet_jax', 'numba')
  return os.path.join(base, source_digest())


def njit(fn: Callable | None = None, **options) -> Callable:
  """`numba.njit(cache=True, **options)` with the cache in `cache_dir()`.

  Use as `@njit` or `@njit(parallel=True)`. An unwritable directory makes numba fall back
  to its default locations, as it would anyway.
  """
  def decorate(f: Callable) -> Callable:
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = cache_dir()  # read when the dispatcher sets up its cache
    try:
      return numba.njit(cache=True, **options)(f)
    finally:
      numba.config.CACHE_DIR = saved

  return decorate if fn is None else decorate(fn)
