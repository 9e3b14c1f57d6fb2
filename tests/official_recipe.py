"""The fixtures' deterministic state-dict recipe (README section 3 of both fixture sets).

W32/W48 weights are not stored; both fixture sets define them by this recipe, and the
stored tiny state dicts check the implementation (`test_recipe_reproduces_*`).
"""

import json
import zlib

import numpy as np


def recipe_state_dict(keys_json) -> dict[str, np.ndarray]:
  """The README's deterministic state dict: per-key crc32-seeded draws, float64 formulas."""
  state = {}
  for key, shape, dtype in json.load(open(keys_json))['state_dict']:
    if key.endswith('num_batches_tracked'):
      state[key] = np.array(0, dtype=np.int64)
      continue
    z = np.random.default_rng(zlib.crc32(key.encode('ascii'))).standard_normal(shape)
    z = z.astype(np.float32).astype(np.float64)
    if len(shape) == 4:
      gain = 0.5 if key.startswith('stage') else 1.0
      value = gain * z / np.sqrt(np.prod(shape[1:]))
    elif key.endswith('running_var'):
      value = np.exp(0.1 * z)
    elif key.endswith(('running_mean', 'bias')):
      value = 0.1 * z
    elif key.endswith('weight'):
      value = 1 + 0.1 * z
    else:
      raise AssertionError(f'unexpected key kind {key}')
    state[key] = value.astype(np.float32)
  return state
