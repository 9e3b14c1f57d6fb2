"""The grain input pipeline: sources -> augmented, sharded, batched NHWC numpy.

One training batch is a pure function of ``(seed, step)`` for a given dataset, host split and
batch size, and one sample a pure function of ``(seed, epoch, record index)``:

  * each epoch has its own permutation of the records, drawn from ``(seed, epoch)``;
  * global batch ``b`` of an epoch is records ``[b * G, (b + 1) * G)`` of that permutation
    (``drop_remainder``), and host ``h`` of ``P`` loads its ``h``-th block of ``G / P`` of
    them, so the shards of an epoch are disjoint, together are the dataset, and the global
    batch (what the model sees) does not depend on how many hosts load it;
  * each sample's augmentation draws come from ``SeedSequence([seed, epoch, record])``.

Because whole batches are the elements of a grain ``MapDataset`` (``range(step).map(...)``),
the output does not depend on the number of worker processes, and resuming only needs the
step: :meth:`TrainIterator.get_state` is a small JSON-able dict, portable across worker
counts, that grain's orbax checkpoint handler can save with the training checkpoint.

An unreadable image (missing, undecodable, wrong size) or a sample whose transform fails
does not stop training: the record is replaced by the next record index (again a pure
function of the step), logged, and counted in :attr:`TrainIterator.num_skipped`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import traceback
from typing import Any, Protocol

import cv2
import grain
from grain._src.python.ipc import shared_memory_array  # no public handle on its unlinking
import numpy as np

from higherhrnet_jax.data import coco, synthetic_batches
from higherhrnet_jax.data import transforms
from higherhrnet_jax.topdown import samples as topdown_samples

_log = logging.getLogger(__name__)

# Per-batch bookkeeping the workers send along; the iterator removes it from the batch.
_SKIPPED_KEY = '_num_skipped'
_IDS_KEY = '_image_ids'
MAX_CONSECUTIVE_FAILURES = 32


class ExampleSource(Protocol):
  """What the pipeline reads: the file source (`coco.KeypointSource`) or the TFDS one."""

  def __len__(self) -> int:
    ...

  def train_example(self, index: int) -> dict[str, Any]:
    """'image' [H, W, 3] uint8 RGB, 'joints' [N, K, 3|4], 'mask' [H, W] bool, 'image_id'."""

  def eval_example(self, index: int) -> dict[str, Any]:
    """'image' [H, W, 3] uint8 RGB, 'image_id'."""


def _split_name(config: Any, split: str) -> tuple[str, bool]:
  """Maps 'train' / 'val' / 'test' to the configured split; other names pass through."""
  d = config.dataset
  if split == 'train':
    return d.train_split, True
  if split in ('val', 'test'):
    return d.test_split, False
  return split, split == d.train_split


def make_source(config: Any, split: str = 'train', *, train: bool | None = None) -> ExampleSource:
  """The example source of a split, from files or from a TFDS build (`config.data.source`).

  Args:
    config: the full ConfigDict.
    split: 'train', 'val', 'test' or a split name such as 'val2017'.
    train: apply the official training filter (images with at least one annotation);
      defaults to whether `split` is the training split.
  """
  name, is_train = _split_name(config, split)
  train = is_train if train is None else train
  kind = config.data.source
  if kind == 'auto':
    kind = 'tfds' if config.data.tfds_data_dir else 'numpy'
  if kind == 'tfds':
    from higherhrnet_jax.data.tfds import reader  # optional dependency

    return reader.TfdsSource.from_config(config, name, train=train)
  if kind != 'numpy':
    raise ValueError("config.data.source: 'auto', 'numpy', 'tfds' or (training only) "
                     f"'synthetic', got {kind!r}")
  return coco.source_from_config(config, train=train, split=name)


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  """Which records form which batch on this host (no randomness beyond `seed`)."""

  num_records: int
  batch_size: int  # per host
  shard_index: int
  shard_count: int
  seed: int
  shuffle: bool = True

  def __post_init__(self):
    if not 0 <= self.shard_index < self.shard_count:
      raise ValueError(f'shard_index {self.shard_index} not in [0, {self.shard_count})')
    if self.steps_per_epoch == 0:
      raise ValueError(f'{self.num_records} records give no full global batch of '
                       f'{self.global_batch_size} (config.train.batch_size too large for this '
                       'dataset)')

  @property
  def global_batch_size(self) -> int:
    return self.batch_size * self.shard_count

  @property
  def steps_per_epoch(self) -> int:
    return self.num_records // self.global_batch_size

  @property
  def records_per_shard(self) -> int:
    return self.steps_per_epoch * self.batch_size

  def shard_records(self, epoch: int) -> np.ndarray:
    """This host's records of `epoch`, in visiting order ([records_per_shard] int64)."""
    return _shard_records(self, epoch)

  def batch_records(self, step: int) -> tuple[int, np.ndarray]:
    """(epoch, record indices [batch_size]) of host step `step`."""
    epoch, b = divmod(step, self.steps_per_epoch)
    records = self.shard_records(epoch)
    return epoch, records[b * self.batch_size:(b + 1) * self.batch_size]


@functools.lru_cache(maxsize=4)
def _shard_records(plan: ShardPlan, epoch: int) -> np.ndarray:
  if plan.shuffle:
    order = np.random.default_rng(np.random.SeedSequence([plan.seed, epoch])).permutation(
        plan.num_records)
  else:
    order = np.arange(plan.num_records)
  steps, hosts, per_host = plan.steps_per_epoch, plan.shard_count, plan.batch_size
  return order[:steps * hosts * per_host].reshape(steps, hosts, per_host)[:, plan.shard_index].ravel()


def sample_rng(seed: int, epoch: int, record: int) -> np.random.Generator:
  """The generator of one sample's augmentation draws."""
  return np.random.default_rng(np.random.SeedSequence([seed, epoch, record]))


def _init_process() -> None:
  # One sample per core: OpenCV's own threads would only contend with the other workers.
  cv2.setNumThreads(1)
  transforms.reuse_large_buffers()


def _worker_init(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count
  _init_process()


class SampleBuilder(Protocol):
  """One family's training samples: record `r` + its draws -> an example dict.

  HigherHRNet's records are images (:class:`ImageSamples`); the top-down model's are
  person instances (`topdown.samples.PersonSamples`). Both are picklable: they run in the
  grain workers.
  """

  def __len__(self) -> int:
    ...

  def __call__(self, record: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], int]:
    """(example of equal-shaped arrays, real image id); raises `coco.CorruptImageError`."""


class ImageSamples:
  """HigherHRNet samples: a whole augmented image with its multi-resolution targets."""

  def __init__(self, source: ExampleSource, sample_config: transforms.SampleConfig):
    self.source = source
    self.sample_config = sample_config

  def __len__(self) -> int:
    return len(self.source)

  def __call__(self, record: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], int]:
    ex = self.source.train_example(record)
    draws = transforms.sample_draws(rng, ex['image'].shape[:2], self.sample_config)
    out = transforms.make_train_sample(ex['image'], ex['joints'], ex['mask'], draws,
                                       self.sample_config)
    return out, int(ex['image_id'])


class BatchMaker:
  """Builds host batch `step` (a picklable callable, run inside the grain workers)."""

  def __init__(self, samples: SampleBuilder, plan: ShardPlan):
    self.samples = samples
    self.plan = plan

  def sample(self, epoch: int, record: int) -> tuple[dict[str, np.ndarray], int, int]:
    """One augmented example; unusable records are replaced by the next index.

    Returns:
      (example, image id, number of records skipped to get it).
    """
    n = self.plan.num_records
    for attempt in range(MAX_CONSECUTIVE_FAILURES):
      r = (record + attempt) % n
      try:
        out, image_id = self.samples(r, sample_rng(self.plan.seed, epoch, r))
        return out, image_id, attempt
      except coco.CorruptImageError as e:
        _log.warning('skipping record %d (epoch %d): %s', r, epoch, e)
      except Exception as e:  # noqa: BLE001 - a bad sample must not kill a long training run
        _log.error('skipping record %d (epoch %d), transform failed: %s\n%s', r, epoch, e,
                   traceback.format_exc())
    raise RuntimeError(f'{MAX_CONSECUTIVE_FAILURES} consecutive records from index {record} '
                       'could not be read; is the image folder right?')

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    transforms.reuse_large_buffers()  # once per process
    epoch, records = self.plan.batch_records(int(step))
    samples, ids, skipped = [], [], 0
    for r in records:
      out, image_id, n_skipped = self.sample(epoch, int(r))
      samples.append(out)
      ids.append(image_id)
      skipped += n_skipped
    batch = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    batch[_IDS_KEY] = np.asarray(ids, np.int64)
    batch[_SKIPPED_KEY] = np.asarray(skipped, np.int64)
    return batch


class TrainIterator(grain.DatasetIterator):
  """Infinite (or `num_epochs`-long) iterator of host batches with a checkpointable state.

  Attributes:
    plan: the record-to-batch plan.
    step: the number of batches consumed (the next batch is `step`).
    num_skipped: records skipped so far because they could not be read (cumulative over
      restarts: it is part of the state).
    last_image_ids: real image ids of the last batch's samples ([B] int64).
  """

  def __init__(self, maker: BatchMaker, *, worker_count: int = 0, prefetch: int = 2,
               num_epochs: int | None = None):
    super().__init__()
    self.maker = maker
    self.plan = maker.plan
    self.worker_count = int(worker_count)
    self.prefetch = max(1, int(prefetch))
    self.num_epochs = num_epochs
    self.step = 0
    self.num_skipped = 0
    self.last_image_ids = np.zeros((0,), np.int64)
    self._it = None

  @property
  def steps_per_epoch(self) -> int:
    return self.plan.steps_per_epoch

  @property
  def num_records(self) -> int:
    """Records of the whole dataset (all hosts): the size of an epoch."""
    return self.plan.num_records

  num_samples = num_records

  @property
  def epoch(self) -> int:
    return self.step // self.plan.steps_per_epoch

  def _build(self):
    stop = sys.maxsize if self.num_epochs is None else self.num_epochs * self.steps_per_epoch
    ds = grain.MapDataset.range(self.step, max(stop, self.step)).map(self.maker)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if self.worker_count > 0:
      it = it.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=self.worker_count,
                                       per_worker_buffer_size=self.prefetch),
          worker_init_fn=_worker_init)
    return iter(it)

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      self._it = self._build()
    batch = next(self._it)
    if self.worker_count > 0:
      batch = _out_of_shared_memory(batch)
    skipped = int(batch.pop(_SKIPPED_KEY))
    self.last_image_ids = batch.pop(_IDS_KEY)
    if skipped:
      _log.warning('batch %d: %d unreadable record(s) replaced (%d so far)', self.step, skipped,
                   self.num_skipped + skipped)
    self.num_skipped += skipped
    self.step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    p = self.plan
    return {'step': self.step, 'num_skipped': self.num_skipped, 'seed': p.seed,
            'num_records': p.num_records, 'global_batch_size': p.global_batch_size,
            'shard_index': p.shard_index, 'shard_count': p.shard_count}

  def set_state(self, state: dict[str, Any]) -> None:
    p = self.plan
    # Neither the shard index nor the host count is compared: the global batch is a function
    # of the step, so any host of a job with any number of hosts may restore this state.
    for field in ('seed', 'num_records', 'global_batch_size'):
      if state.get(field) != getattr(p, field):
        raise ValueError(f'iterator state: {field} = {state.get(field)!r} but this pipeline has '
                         f'{getattr(p, field)!r}; it was saved for another dataset or setup')
    self.close()
    self.step = int(state['step'])
    self.num_skipped = int(state.get('num_skipped', 0))

  def close(self) -> None:
    if self._it is not None:
      close = getattr(self._it, 'close', None)
      if close is not None:
        close()
      self._it = None
      if self.worker_count > 0:  # only workers hand batches over in shared memory
        _wait_for_shared_memory_release()

  def __str__(self) -> str:
    return (f'TrainIterator(step={self.step}, steps_per_epoch={self.steps_per_epoch}, '
            f'workers={self.worker_count})')


def _out_of_shared_memory(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Copies the worker's shared-memory arrays into ordinary ones and releases the segments.

  A batch held until the process exits (the training loop keeps the last one) would
  otherwise leave its segments for the resource tracker to report as leaked; the copy is
  one memory pass over a batch, small next to the step that consumes it.
  """
  return {k: np.array(v) if isinstance(v, shared_memory_array.SharedMemoryArray) else v
          for k, v in batch.items()}


def _wait_for_shared_memory_release() -> None:
  """Waits until grain's background thread has unlinked every released segment."""
  pool = getattr(shared_memory_array.SharedMemoryArray, '_del_thread_pool', None)
  if pool is not None:
    pool.apply(int)  # its one thread runs requests in order: this one comes after all


def make_samples(config: Any, split: str = 'train', source: ExampleSource | None = None
                 ) -> SampleBuilder:
  """The model family's sample builder (`model.name`) over a split or a given source."""
  if config.model.name == 'pose_hrnet':
    return topdown_samples.PersonSamples.from_config(config, _split_name(config, split)[0], source)
  source = make_source(config, split) if source is None else source
  return ImageSamples(source, transforms.SampleConfig.from_config(config))


def host_batch_size(global_batch: int, host_count: int) -> int:
  """Images each host loads per step: the global batch split evenly over the hosts."""
  if global_batch % host_count:
    raise ValueError(f'config.train.batch_size={global_batch} is not divisible by the '
                     f'{host_count} processes')
  return global_batch // host_count


def make_train_data(config: Any, shard_index: int, shard_count: int
                    ) -> tuple[synthetic_batches.SyntheticIterator | TrainIterator, int]:
  """The training data of one host, whatever `data.source` is.

  Returns:
    `(iterator, epoch size)`: the iterator yields this host's share of each global batch in
    the training-batch contract and has grain's `get_state` / `set_state`; the epoch size
    (records of the whole split) sets the steps per epoch.
  """
  if config.data.source == 'synthetic':
    it = synthetic_batches.SyntheticIterator(
        config, host_batch_size(int(config.train.batch_size), shard_count), seed=config.seed,
        process_index=shard_index)
    return it, synthetic_batches.EPOCH_SIZE
  loader = make_train_loader(config, 'train', shard_index=shard_index, shard_count=shard_count)
  return loader, loader.num_records


def make_train_loader(config: Any, split: str = 'train', *, seed: int | None = None,
                      worker_count: int | None = None, shard_index: int | None = None,
                      shard_count: int | None = None, num_epochs: int | None = None,
                      source: ExampleSource | None = None) -> TrainIterator:
  """The training iterator of this host.

  Args:
    config: the full ConfigDict (`dataset`, `data`, `model.tag_per_joint`,
      `train.batch_size` = the global batch).
    split: 'train' or a split name.
    seed: defaults to `config.seed`.
    worker_count: grain worker processes (0: in this process); defaults to
      `config.data.num_workers`. The batches do not depend on it.
    shard_index, shard_count: this host's shard; default `jax.process_index()` /
      `jax.process_count()`.
    num_epochs: stop after this many epochs (None: never).
    source: an already built source (default: :func:`make_source`).

  Returns:
    A :class:`TrainIterator` of dicts with B = train.batch_size // shard_count samples.
    HigherHRNet: 'image' [B, S, S, 3] float32, per stage s 'heatmaps_s' [B, R, R, K]
    float32, 'masks_s' [B, R, R] float32, 'joints_s' [B, M, K, 2] int32. Top-down:
    'image' [B, H, W, 3] float32 person crops, 'target' [B, H/4, W/4, K] float32,
    'target_weight' [B, K] float32.
  """
  if shard_index is None or shard_count is None:
    import jax

    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  samples = make_samples(config, split, source)
  plan = ShardPlan(num_records=len(samples),
                   batch_size=host_batch_size(int(config.train.batch_size), shard_count),
                   shard_index=int(shard_index), shard_count=int(shard_count),
                   seed=int(config.seed if seed is None else seed),
                   shuffle=bool(config.data.shuffle))
  maker = BatchMaker(samples, plan)
  workers = config.data.num_workers if worker_count is None else worker_count
  return TrainIterator(maker, worker_count=workers, prefetch=config.data.prefetch_buffer_size,
                       num_epochs=num_epochs)


class _EvalExample:
  """Decodes one evaluation image; unreadable images become None (logged, filtered out)."""

  def __init__(self, source: ExampleSource):
    self.source = source

  def __call__(self, index: int) -> dict[str, Any] | None:
    try:
      ex = self.source.eval_example(int(index))
    except coco.CorruptImageError as e:
      _log.error('evaluation image %d skipped: %s', index, e)
      return None
    return {'image': ex['image'], 'image_id': int(ex['image_id'])}


def make_eval_dataset(config: Any, split: str = 'val', *,
                      source: ExampleSource | None = None) -> grain.MapDataset:
  """Whole evaluation images with their real ids, in annotation-file order, no augmentation.

  Args:
    config: the full ConfigDict.
    split: 'val' / 'test' (the configured `dataset.test_split`) or a split name.
    source: an already built source (default: :func:`make_source` without the training filter).

  Returns:
    A `grain.MapDataset` of {'image': [H, W, 3] uint8 RGB, 'image_id': int}. An unreadable
    image is logged and gives None at its index, which iteration skips, so the evaluator
    sees it as an image without detections.
  """
  source = make_source(config, split, train=False) if source is None else source
  return grain.MapDataset.range(len(source)).map(_EvalExample(source))
