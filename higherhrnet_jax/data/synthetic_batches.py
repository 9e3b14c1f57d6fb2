"""`data.source='synthetic'`: generated training batches with a checkpointable iterator.

For smoke runs, tests and benchmarks that need no files (the generated COCO-format scenes
of the quickstart are `data/synthetic.py`, read like any dataset).

Image `g` of global batch `i` is a pure function of `(seed, i, g)`, so `get_state()` is
just the index and a resumed run, of any number of processes, sees exactly the batches an
uninterrupted run would have seen (the contract of a grain iterator's `get_state()` /
`set_state()`).
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from higherhrnet_jax.config import higher_hrnet
from higherhrnet_jax.data import targets

# The "epoch" of generated data, for the learning-rate schedule.
EPOCH_SIZE = 1024


def synthetic_batch(
    config: ml_collections.ConfigDict, batch_size: int, rng: np.random.Generator, people: int = 2
) -> dict[str, np.ndarray]:
  """One batch in the training-batch contract (image, heatmaps_s, masks_s, joints_s).

  Random people (joints at uniform positions, 80% visible) with the official targets of
  the real pipeline (`data/targets.py`); the image carries a bright blob at every visible
  joint, so a model can learn it and the loss falls within a few steps.
  """
  k = config.model.num_joints
  size = config.data.input_size
  m = config.data.max_num_people
  tag_per_joint = bool(config.model.tag_per_joint)
  base = rng.uniform(0.1, 0.9, (batch_size, people, k, 2))  # fraction of the image
  visible = rng.uniform(size=(batch_size, people, k)) < 0.8

  def joints_at(b: int, res: int) -> np.ndarray:
    return np.concatenate([base[b] * res, visible[b, ..., None]], axis=-1)  # [P, K, 3]

  image = rng.standard_normal((batch_size, size, size, 3)).astype(np.float32) * 0.1
  for b in range(batch_size):
    image[b] += 2.0 * targets.heatmaps(joints_at(b, size), size, 2.0).max(axis=-1)[..., None]
  out = {'image': image}
  for s, r in enumerate(higher_hrnet.output_sizes(config)):
    sigma = float(config.data.sigma)
    out[f'heatmaps_{s}'] = np.stack([targets.heatmaps(joints_at(b, r), r, sigma)
                                     for b in range(batch_size)])
    out[f'masks_{s}'] = np.ones((batch_size, r, r), np.float32)
    out[f'joints_{s}'] = np.stack([targets.joint_indices(joints_at(b, r), r, m, tag_per_joint)
                                   for b in range(batch_size)])
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
