"""`data.source='synthetic'`: generated training batches with a checkpointable iterator.

For smoke runs, tests and benchmarks that need no files (the generated COCO-format scenes
of the quickstart are `data/synthetic.py`, read like any dataset).

Batch `i` is a pure function of `(seed, i, process_index)`, so `get_state()` is just the
index and a resumed run sees exactly the batches an uninterrupted run would have seen
(the same contract as a grain iterator's `get_state()` / `set_state()`).
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

# The "epoch" of generated data, for the learning-rate schedule.
EPOCH_SIZE = 1024


def _gaussian_maps(xy: np.ndarray, visible: np.ndarray, r: int, sigma: float) -> np.ndarray:
  """Max-combined Gaussians `[R, R, K]` for people `xy [M, K, 2]` (pixels of an R map)."""
  grid = np.arange(r, dtype=np.float32)
  dx = np.square(grid[None, None, :] - xy[..., 0, None])  # [M, K, R]
  dy = np.square(grid[None, None, :] - xy[..., 1, None])
  g = np.exp(-(dy[..., :, None] + dx[..., None, :]) / (2 * sigma**2))  # [M, K, R, R]
  g = g * visible[..., None, None]
  return np.transpose(g.max(axis=0), (1, 2, 0)).astype(np.float32)


def synthetic_batch(
    config: ml_collections.ConfigDict, batch_size: int, rng: np.random.Generator, people: int = 2
) -> dict[str, np.ndarray]:
  """One batch in the training-batch contract (image, heatmaps_s, masks_s, joints_s).

  The image carries a bright blob at every visible joint, so a model can learn it and
  the loss falls within a few steps.
  """
  k = config.model.num_joints
  size = config.data.input_size
  m = config.data.max_num_people
  out = {}
  base = rng.uniform(0.1, 0.9, (batch_size, people, k, 2))  # fraction of the image
  visible = rng.uniform(size=(batch_size, people, k)) < 0.8
  image = rng.standard_normal((batch_size, size, size, 3)).astype(np.float32) * 0.1
  for b in range(batch_size):
    blobs = _gaussian_maps(base[b] * size, visible[b], size, 2.0).max(axis=-1)
    image[b] += 2.0 * blobs[..., None]
  out['image'] = image
  for s, r in enumerate(config.data.output_size):
    xy = base * r
    out[f'heatmaps_{s}'] = np.stack(
        [_gaussian_maps(xy[b], visible[b], r, float(config.data.sigma)) for b in range(batch_size)]
    )
    out[f'masks_{s}'] = np.ones((batch_size, r, r), np.float32)
    joints = np.zeros((batch_size, m, k, 2), np.int32)
    xi = xy.astype(np.int32)
    for b in range(batch_size):
      for p in range(min(people, m)):
        slot = 0
        for j in range(k):
          if visible[b, p, j]:
            joints[b, p, slot] = (j * r * r + xi[b, p, j, 1] * r + xi[b, p, j, 0], 1)
            slot += 1
    out[f'joints_{s}'] = joints
  return out


class SyntheticIterator:
  """Endless deterministic batches; `get_state()`/`set_state()` like a grain iterator.

  Image `g` of global batch `i` is drawn from `(seed, i, g)`, and host `p` holds images
  `[p * batch_size, (p + 1) * batch_size)`: the global batch is the same whatever the
  number of hosts.

  Args:
    config: full config (input/output sizes, joints, max people).
    batch_size: images per batch on this host.
    seed: base seed.
    process_index: this host's index.
  """

  def __init__(self, config: ml_collections.ConfigDict, batch_size: int, seed: int = 0,
               process_index: int = 0):
    self._config = config
    self._batch_size = batch_size
    self._seed = seed
    self._first = process_index * batch_size
    self._index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    images = [synthetic_batch(self._config, 1, np.random.default_rng([self._seed, self._index, g]))
              for g in range(self._first, self._first + self._batch_size)]
    self._index += 1
    return {k: np.concatenate([im[k] for im in images]) for k in images[0]}

  def get_state(self) -> dict[str, Any]:
    return {'index': self._index, 'seed': self._seed}

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get('seed', self._seed) != self._seed:
      raise ValueError(f"SyntheticIterator: checkpoint seed {state['seed']} != {self._seed}")
    self._index = int(state['index'])
