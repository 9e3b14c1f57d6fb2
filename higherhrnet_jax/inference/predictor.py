"""Image in, people out: the official test loop as three compiled stages and a host stage.

1. *network*: normalisation, flip-test batch and the HigherHRNet forward (jitted, batch
   split over all local devices);
2. *aggregation*: stage fusion, flip averaging, projection and multi-scale aggregation
   (jitted, see `outputs.py`);
3. *grouping*: NMS, top-k, tag matching, adjust and refine, then the map back to image
   pixels. Where the dense parts run is `test.grouping_on`: on a CPU backend everything
   runs on the host (numba, on the padded maps in place); on accelerators NMS, top-k and
   refine's scans run jitted on the device and only the matching on the host
   (`grouping_device.py`), so full-resolution maps never leave the device. A batch's
   images are grouped in parallel threads.

Images are padded to shape buckets (`test.shape_bucket`), so a dataset compiles a handful
of programs. Compilation (XLA's for each new bucket, numba's for the host kernels) is done
ahead of the first use and timed on its own (`timings['compile']`), so the per-stage times
are the work's own. JAX dispatch is asynchronous: `Predictor.dispatch` returns at once, so a
caller can group batch n on the host while the device runs batch n + 1
(:func:`Predictor.predict_many` does exactly that).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from higherhrnet_jax import models, subpixel
from higherhrnet_jax.inference import compile as compile_lib
from higherhrnet_jax.inference import grouping
from higherhrnet_jax.inference import grouping_device
from higherhrnet_jax.inference import outputs as outputs_lib
from higherhrnet_jax.inference import transforms
from higherhrnet_jax.training import sharding


def _signature(*args: Any, **kwargs: Any) -> str:
  """Shapes and dtypes of the arrays among the arguments, the other values as they are."""
  return str(jax.tree.map(lambda a: (a.shape, str(a.dtype)) if hasattr(a, 'shape') else a,
                          (args, kwargs)))


@dataclasses.dataclass
class Prediction:
  """People found in one image.

  Attributes:
    poses: [P, K, 3 + T] float32 (x, y, joint score, tags...) in image pixels.
    scores: [P] float32 person scores.
  """

  poses: np.ndarray
  scores: np.ndarray


@dataclasses.dataclass
class _InFlight:
  inputs: list[transforms.TestInput]
  final: jax.Array
  tags: jax.Array
  candidates: tuple[jax.Array, ...] | None  # device grouping's candidates
  base_hw: np.ndarray
  t_dispatch: float


class Predictor:
  """Compiled inference for one model and config.

  Args:
    config: full config (uses `model`, `loss`, `test`, `data.input_size`,
      `data.max_num_people`, `dataset.keypoints`).
    variables: `{'params', 'batch_stats'}` of the model.
    devices: devices to split each batch over (default: all local devices).
  """

  def __init__(self, config, variables, devices: Sequence[jax.Device] | None = None):
    self.config = config
    self.model = models.build(config.model)
    self.spec = outputs_lib.OutputSpec.from_config(config)
    devices = list(devices or jax.local_devices())
    self.mesh = sharding.make_mesh(devices)
    self._batch_sharding = sharding.batch_sharding(self.mesh)
    self._weights_in_program = (bool(config.test.weights_in_program)
                                and self.mesh.devices.flat[0].platform == 'cpu')
    self._programs: dict[str, Any] = {}
    self.set_variables(variables)
    apply_fn = lambda v, x: self.model.apply(v, x, train=False)
    self._network_body = functools.partial(outputs_lib.network_outputs, apply_fn, self.spec)
    # `network(variables, images, input_hw) -> (outputs, flipped outputs)`; replaceable, e.g.
    # by a benchmark that feeds ready-made outputs through the rest of the test loop.
    self.network = compile_lib.forward_jit(self._network_body, devices)
    self._default_network = self.network
    self._aggregate = jax.jit(functools.partial(outputs_lib.aggregate_outputs, self.spec),
                              static_argnames=('input_shapes', 'base_shape'))
    t = config.test
    self.grouping = grouping.GroupingSpec.from_config(config)
    on_cpu = self.mesh.devices.flat[0].platform == 'cpu'
    self.grouping_on = ('host' if on_cpu else 'device') if t.grouping_on == 'auto' else str(
        t.grouping_on)
    self._device_grouping = grouping_device.DeviceGrouping(self.grouping)
    if float(t.detection_threshold) <= 0:
      # Padded maps hold zeros that would then compete with real candidates.
      raise ValueError('test.detection_threshold: must be > 0 for padded batches')
    self.timings = {'network': 0.0, 'aggregation': 0.0, 'grouping': 0.0, 'compile': 0.0,
                    'images': 0}
    self._compiled: set[str] = set()
    self._host_threads = os.cpu_count() or 1
    # data.codec 'dark': DARK's step at every decoded joint instead of the quarter pixel.
    self._dark_blur = int(t.dark_blur_kernel) if config.data.codec == 'dark' else 0
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None

  def set_variables(self, variables) -> None:
    """Swaps in new weights of the same model (no recompilation, unless they are compiled in)."""
    self.variables = jax.device_put(variables, sharding.replicated(self.mesh))
    self._programs.clear()  # programs with the previous weights compiled in

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  def prepare(self, image: np.ndarray) -> transforms.TestInput:
    """Resizes one RGB uint8 image for every test scale (host, OpenCV)."""
    return transforms.prepare_test_input(image, int(self.config.data.input_size),
                                         tuple(self.config.test.scale_factor),
                                         project2image=bool(self.config.test.project2image))

  def dispatch(self, inputs: Sequence[transforms.TestInput], profile: bool = False) -> _InFlight:
    """Starts the device work for a batch of prepared images; returns without waiting.

    With `profile=True` it waits after each stage to attribute time to it (the default
    overlaps the stages and only the total is meaningful).
    """
    inputs = list(inputs)
    n = len(inputs)
    pad = (-n) % self.num_devices
    padded = inputs + [inputs[-1]] * pad  # repeated images keep the bucket; dropped later
    bucket = transforms.bucket_batch(padded, int(self.config.test.shape_bucket))
    put = lambda a: jax.device_put(a, self._batch_sharding)
    images = tuple(put(a) for a in bucket['images'])
    input_hw = tuple(put(a) for a in bucket['input_hw'])
    base_hw = put(bucket['base_hw'])
    if self._weights_in_program and self.network is self._default_network:
      program = self._program_with_weights(images, input_hw)
      t0 = time.perf_counter()
      outs, flips = program(images, input_hw)
    else:
      self._compile('network', self.network, self.variables, images, input_hw)
      t0 = time.perf_counter()
      outs, flips = self.network(self.variables, images, input_hw)
    if profile:
      jax.block_until_ready(outs)
      t1 = time.perf_counter()
      self.timings['network'] += t1 - t0
      t0 = t1
    shapes = tuple(tuple(int(v) for v in a.shape[1:3]) for a in bucket['images'])
    aggregate_args = dict(input_shapes=shapes, base_hw=base_hw, base_shape=bucket['base_shape'])
    if self._compile('aggregation', self._aggregate, outs, flips, input_hw, **aggregate_args):
      t0 = time.perf_counter()
    final, tags = self._aggregate(outs, flips, input_hw, **aggregate_args)
    cands = None
    if self.grouping_on == 'device':
      if profile:
        jax.block_until_ready((final, tags))
        self.timings['aggregation'] += time.perf_counter() - t0
        t0 = time.perf_counter()
      candidates = self._device_grouping.candidates
      if self._compile('candidates', candidates, final, tags, base_hw):
        t0 = time.perf_counter()
      cands = candidates(final, tags, base_hw)
      if profile:
        jax.block_until_ready(cands)
        self.timings['grouping'] += time.perf_counter() - t0
    elif profile:
      jax.block_until_ready((final, tags))
      self.timings['aggregation'] += time.perf_counter() - t0
    return _InFlight(inputs, final, tags, cands, bucket['base_hw'][:n], time.perf_counter())

  def _compile(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
    """Compiles jitted `fn` for these arguments' shapes once, timed apart; True if it did.

    The jitted call that follows reuses the compiled program (jit and `lower().compile()`
    share JAX's caches).
    """
    key = name + _signature(*args, **kwargs)
    if key in self._compiled or not hasattr(fn, 'lower'):  # e.g. a benchmark's stand-in
      return False
    t0 = time.perf_counter()
    fn.lower(*args, **kwargs).compile()
    self.timings['compile'] += time.perf_counter() - t0
    self._compiled.add(key)
    return True

  def _program_with_weights(self, images, input_hw) -> Any:
    """The network with the current weights as constants, compiled once per bucket."""
    key = _signature(images, input_hw)
    program = self._programs.get(key)
    if program is None:
      t0 = time.perf_counter()
      program = compile_lib.compile_with_weights(self._network_body, self.variables, images, input_hw)
      self.timings['compile'] += time.perf_counter() - t0
      self._programs[key] = program
    return program

  def _warm_up_grouping(self, writeable: bool, num_tags: int) -> None:
    key = f'grouping(writeable={writeable})'
    if key not in self._compiled:
      t0 = time.perf_counter()
      grouping.warm_up(self.grouping, num_tags, writeable_maps=writeable)
      self.timings['compile'] += time.perf_counter() - t0
      self._compiled.add(key)

  def collect(self, flight: _InFlight, adjust: bool | None = None,
              refine: bool | None = None) -> list[Prediction]:
    """Groups a dispatched batch and maps people back to image pixels.

    Host grouping reads each image's valid region of the batch's padded maps (no copy);
    device grouping fetches only the candidates and refine's per-person results. Either
    way the images of a batch are grouped in parallel threads (the kernels release the GIL).
    """
    adjust = self.config.test.adjust if adjust is None else adjust
    refine = self.config.test.refine if refine is None else refine
    n = len(flight.inputs)
    if flight.candidates is None:
      final = np.asarray(flight.final)
      tags = np.asarray(flight.tags)
      # Numba compiles one version for writeable maps and one for read-only ones (host
      # views of device buffers).
      self._warm_up_grouping(final.flags.writeable, num_tags=tags.shape[-1])
    else:
      cands = [np.asarray(a) for a in flight.candidates]
      final, tags = _per_image(flight.final), _per_image(flight.tags)
      self._warm_up_device_grouping(final, tags)

    def one(b: int) -> Prediction:
      inp = flight.inputs[b]
      hw = tuple(int(v) for v in flight.base_hw[b])
      if flight.candidates is None:
        poses, scores = grouping.parse(final[b], tags[b], self.grouping, adjust=adjust,
                                       refine=refine, valid_hw=hw)
      else:
        poses, scores = self._device_grouping.finish(tuple(a[b] for a in cands), final[b],
                                                     tags[b], hw, adjust=adjust,
                                                     refine=refine)
      if self._dark_blur:
        poses = subpixel.dark_poses(poses, final[b][:hw[0], :hw[1]], self._dark_blur)
      poses = transforms.get_final_preds(poses, inp.center, inp.scale, inp.base_size)
      return Prediction(poses, scores)

    t0 = time.perf_counter()
    if n > 1 and self._host_threads > 1:
      results = list(self._host_pool().map(one, range(n)))
    else:
      results = [one(b) for b in range(n)]
    self.timings['grouping'] += time.perf_counter() - t0
    self.timings['images'] += n
    return results

  def _warm_up_device_grouping(self, final: list[jax.Array], tags: list[jax.Array]) -> None:
    """Compiles the host matching and the refine scans of the smallest person bucket."""
    key = 'device grouping' + _signature(final[0], tags[0])
    if key in self._compiled:
      return
    t0 = time.perf_counter()
    self._device_grouping.warm_up(final[0], tags[0])
    self.timings['compile'] += time.perf_counter() - t0
    self._compiled.add(key)

  def _host_pool(self) -> concurrent.futures.ThreadPoolExecutor:
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self._host_threads,
                                                         thread_name_prefix='grouping')
    return self._pool

  def __call__(self, image: np.ndarray) -> Prediction:
    """Predicts the people in one RGB uint8 image of any size."""
    return self.collect(self.dispatch([self.prepare(image)]))[0]

  def predict_many(self, images: Iterable[Any], batch_size: int = 1,
                   profile: bool = False) -> Iterator[tuple[Any, Prediction]]:
    """Streams `(key, Prediction)` for `(key, image)` pairs, in input order.

    A batch holds consecutive images of the same input shape (a shape change closes it
    early), so no image is padded and results equal batch-size-1 results exactly. The
    host groups batch n while the device computes batch n + 1.
    """
    pending = None
    keys: list[Any] = []
    batch: list[transforms.TestInput] = []

    def shapes(t: transforms.TestInput):
      return tuple(im.shape for im in t.images)

    def step(keys, batch, pending):
      flight = (keys, self.dispatch(batch, profile=profile))
      done = [] if pending is None else list(zip(pending[0], self.collect(pending[1])))
      return flight, done

    for key, image in images:
      prepared = self.prepare(image)
      if batch and (len(batch) == batch_size or shapes(batch[0]) != shapes(prepared)):
        pending, done = step(keys, batch, pending)
        yield from done
        keys, batch = [], []
      keys.append(key)
      batch.append(prepared)
    if batch:
      pending, done = step(keys, batch, pending)
      yield from done
    if pending is not None:
      yield from zip(pending[0], self.collect(pending[1]))


def _per_image(batch: jax.Array) -> list[jax.Array]:
  """The images of a device batch, each read from the device that holds it (a batch split
  over several devices is not gathered)."""
  out: list[Any] = [None] * batch.shape[0]
  for shard in batch.addressable_shards:
    start = shard.index[0].start or 0
    for i in range(shard.data.shape[0]):
      if start + i < len(out) and out[start + i] is None:
        out[start + i] = shard.data[i]
  return out


_CACHE: dict[str, list] = {}  # config JSON -> [Predictor, leaves of its weights]


def predict(variables, config, image: np.ndarray) -> Prediction:
  """One-call prediction for an RGB uint8 image of any size.

  The compiled predictor of the last config is kept; other weights for it are swapped in
  without recompiling.

  Args:
    variables: model variables (`{'params', 'batch_stats'}`).
    config: full config.
    image: [H, W, 3] (or [H, W]) uint8 RGB.

  Returns:
    :class:`Prediction` with poses in image pixels.
  """
  key = config.to_json()
  cached = _CACHE.get(key)
  if cached is None:
    _CACHE.clear()  # keep one compiled predictor (and one copy of the weights) alive
    cached = _CACHE[key] = [Predictor(config, variables), jax.tree.leaves(variables)]
  predictor, leaves = cached
  # The compiled programs depend on the config only; the weights are compared by the
  # identity of their leaves, which the cache holds alive (an id() of a dropped dict can
  # be reused by a new one). Swapping weights does not recompile.
  new_leaves = jax.tree.leaves(variables)
  if len(new_leaves) != len(leaves) or any(a is not b for a, b in zip(new_leaves, leaves)):
    predictor.set_variables(variables)
    cached[1] = new_leaves
  return predictor(image)
