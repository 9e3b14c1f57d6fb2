"""Reads PyTorch `.pth` state dicts without PyTorch, and without running pickled code.

`torch.save` writes a pickle whose tensors are rebuilt through a few torch globals. A
general unpickler would import and call any global named in the file, so a checkpoint
from an untrusted source could execute arbitrary code. This reader resolves only the
globals a state dict needs (``collections.OrderedDict``, the tensor-rebuild functions,
and the typed-storage classes, which become inert dtype tokens) and refuses every other
global with an error naming it. Two containers are supported:

* the zip container written by PyTorch >= 1.6 (``<archive>/data.pkl`` plus raw
  little-endian storages ``<archive>/data/<key>``);
* the legacy stream written by PyTorch <= 1.5 (magic number, protocol version, system
  info, the pickle, the list of storage keys, then each storage as an int64 element
  count followed by its raw bytes).
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    'FloatStorage': np.float32,
    'DoubleStorage': np.float64,
    'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16,
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


class UnsafeCheckpointError(ValueError):
  """The pickle names a global that a plain state dict never needs."""


class CheckpointFormatError(ValueError):
  """The file is not a readable PyTorch checkpoint."""


class _StorageType:
  """Inert stand-in for ``torch.<X>Storage``: only carries the element dtype."""

  __slots__ = ('name', 'dtype')

  def __init__(self, name: str, dtype: Any):
    self.name = name
    self.dtype = np.dtype(dtype)

  def __reduce__(self):  # never re-pickled
    raise TypeError('storage tokens cannot be pickled')


class _Storage:
  """A typed storage whose bytes may arrive after the pickle (legacy format)."""

  __slots__ = ('dtype', 'numel', 'data', 'root', 'offset')

  def __init__(self, dtype: np.dtype, numel: int, root: '_Storage | None' = None, offset: int = 0):
    self.dtype, self.numel, self.root, self.offset = dtype, numel, root, offset
    self.data: np.ndarray | None = None

  def array(self) -> np.ndarray:
    if self.root is not None:
      base = self.root.array()
      if self.offset < 0 or self.offset + self.numel > base.size:
        raise CheckpointFormatError('storage view lies outside its storage')
      return base[self.offset:self.offset + self.numel]
    if self.data is None:
      raise CheckpointFormatError('a storage referenced by a tensor was never written')
    return self.data


class _LazyTensor:
  """A tensor view over a storage, materialised once all storages are read."""

  __slots__ = ('storage', 'offset', 'size', 'stride')

  def __init__(self, storage, offset, size, stride):
    if not isinstance(storage, _Storage):
      raise CheckpointFormatError(f'tensor rebuilt from a non-storage object {type(storage).__name__}')
    if not (isinstance(offset, int) and all(isinstance(v, int) for v in (*size, *stride))
            and len(size) == len(stride)):
      raise CheckpointFormatError('malformed tensor metadata (offset/size/stride)')
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def __setstate__(self, state):
    raise UnsafeCheckpointError('pickle tried to set the state of a tensor object')

  def materialise(self) -> np.ndarray:
    data = self.storage.array()
    if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
      raise CheckpointFormatError('negative tensor size, stride or offset')
    if 0 in self.size:
      return np.zeros(self.size, data.dtype)
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if last >= data.size:  # as_strided does no bounds checking: never read past the buffer
      raise CheckpointFormatError(f'tensor of size {self.size} reaches element {last} of a '
                                  f'storage with {data.size} elements')
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], shape=self.size, strides=[s * data.itemsize for s in self.stride])
    return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    **{('torch', name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only allow-listed globals and torch storage ids."""

  def __init__(self, file, source: str, load_storage):
    super().__init__(file, encoding='utf-8')
    self._source = source
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
          f'{self._source}: refusing to unpickle global {module}.{name}; a state-dict checkpoint '
          f'only needs tensors (allowed: {", ".join(sorted(".".join(k) for k in _ALLOWED_GLOBALS))})'
      ) from None

  def persistent_load(self, pid: Any) -> Any:
    if not (isinstance(pid, tuple) and pid and pid[0] in ('storage', b'storage')):
      raise UnsafeCheckpointError(f'{self._source}: unsupported persistent id {pid!r:.80}')
    return self._load_storage(pid[1:])


def _plain_unpickle(data: bytes | io.BufferedIOBase, source: str) -> Any:
  """Unpickles metadata records that may not reference any global or storage."""

  def no_storage(_):
    raise UnsafeCheckpointError(f'{source}: unexpected storage reference in a header record')

  f = io.BytesIO(data) if isinstance(data, bytes) else data
  return _RestrictedUnpickler(f, source, no_storage).load()


def _materialise(obj: Any) -> Any:
  if isinstance(obj, _LazyTensor):
    return obj.materialise()
  if isinstance(obj, dict):
    out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _materialise(v)
    return out
  if isinstance(obj, list):
    return [_materialise(v) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_materialise(v) for v in obj)
  return obj


def _storage_dtype(storage_type: Any, source: str) -> np.dtype:
  if not isinstance(storage_type, _StorageType):
    raise UnsafeCheckpointError(f'{source}: storage of unsupported type {storage_type!r:.80}')
  return storage_type.dtype


def _load_zip(path: pathlib.Path) -> Any:
  source = str(path)
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkls = [n for n in names if n.endswith('data.pkl')]
    if len(pkls) != 1:
      raise CheckpointFormatError(f'{source}: zip archive without a single data.pkl ({len(pkls)} found)')
    prefix = pkls[0][: -len('data.pkl')]
    byteorder = 'little'
    if prefix + 'byteorder' in names:
      byteorder = zf.read(prefix + 'byteorder').decode().strip()
    cache: dict[str, _Storage] = {}

    def load_storage(args):
      storage_type, key, _location, numel = args[:4]
      dtype = _storage_dtype(storage_type, source)
      key = key.decode() if isinstance(key, bytes) else str(key)
      if key not in cache:
        try:
          raw = zf.read(f'{prefix}data/{key}')
        except KeyError:
          raise CheckpointFormatError(f'{source}: storage {key} missing from the archive') from None
        dt = dtype.newbyteorder('<' if byteorder == 'little' else '>')
        arr = np.frombuffer(raw, dtype=dt).astype(dtype)
        storage = _Storage(dtype, arr.size)
        storage.data = arr
        cache[key] = storage
      return cache[key]

    with zf.open(pkls[0]) as f:
      obj = _RestrictedUnpickler(io.BytesIO(f.read()), source, load_storage).load()
  return _materialise(obj)


def _load_legacy(path: pathlib.Path) -> Any:
  source = str(path)
  with open(path, 'rb') as f:
    try:
      magic = _plain_unpickle(f, source)
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
      if isinstance(e, UnsafeCheckpointError):
        raise
      raise CheckpointFormatError(f'{source}: neither a zip nor a legacy PyTorch checkpoint ({e})') from e
    if magic != LEGACY_MAGIC:
      raise CheckpointFormatError(f'{source}: not a PyTorch checkpoint (bad magic number)')
    protocol = _plain_unpickle(f, source)
    if protocol != LEGACY_PROTOCOL:
      raise CheckpointFormatError(f'{source}: unsupported legacy protocol version {protocol!r}')
    sys_info = _plain_unpickle(f, source)
    little = sys_info.get('little_endian', True) if isinstance(sys_info, dict) else True
    roots: dict[str, _Storage] = {}

    def load_storage(args):
      storage_type, root_key, _location, numel, view_metadata = args[:5]
      dtype = _storage_dtype(storage_type, source)
      root_key = str(root_key)
      if root_key not in roots:
        roots[root_key] = _Storage(dtype, int(numel))
      root = roots[root_key]
      if view_metadata is not None:
        _view_key, offset, view_size = view_metadata
        return _Storage(dtype, int(view_size), root=root, offset=int(offset))
      return root

    obj = _RestrictedUnpickler(f, source, load_storage).load()
    keys = _plain_unpickle(f, source)
    if not isinstance(keys, list):
      raise CheckpointFormatError(f'{source}: malformed storage key list')
    for key in keys:
      storage = roots.get(str(key))
      if storage is None:
        raise CheckpointFormatError(f'{source}: storage {key} is not referenced by the pickle')
      header = f.read(8)
      if len(header) != 8:
        raise CheckpointFormatError(f'{source}: truncated file (storage {key})')
      (numel,) = struct.unpack('<q' if little else '>q', header)
      if numel != storage.numel:
        raise CheckpointFormatError(f'{source}: storage {key} has {numel} elements, expected {storage.numel}')
      nbytes = numel * storage.dtype.itemsize
      raw = f.read(nbytes)
      if len(raw) != nbytes:
        raise CheckpointFormatError(f'{source}: truncated file (storage {key})')
      dt = storage.dtype.newbyteorder('<' if little else '>')
      storage.data = np.frombuffer(raw, dtype=dt).astype(storage.dtype)
  return _materialise(obj)


def load_pth(path: str | pathlib.Path) -> Any:
  """Loads a `torch.save`d object made of dicts, lists and tensors (as numpy arrays).

  Args:
    path: a `.pth` / `.pth.tar` file in the zip or the legacy format.

  Returns:
    The unpickled object with every tensor replaced by a numpy array.

  Raises:
    UnsafeCheckpointError: the pickle references a global outside the allow-list.
    CheckpointFormatError: the file is truncated or not a PyTorch checkpoint.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'checkpoint not found: {path}')
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  return _load_legacy(path)
