"""Calls the grouping kernels the way one entry point does; run as a subprocess.

`python grouping_entry_points.py MODE FIXTURES OUT.npz`, MODE one of
- parity: `grouping.parse` on fixture maps transposed from NCHW (as the parity tests), in the
  three adjust/refine modes;
- predictor: `nms_top_k` on the device, then `parse_top_k` and `parse` on the read-only
  arrays that `np.asarray` of a jax.Array gives (as `Predictor.collect`);
- demo: `parse` on fresh writable C-contiguous maps (as the demo and the evaluation loop).
Each mode writes every pose and score it computed, so a run from a shared on-disk cache can
be compared with a run from an empty one.
"""

import sys

import jax
import numpy as np

from higherhrnet_jax.config import base_config
from higherhrnet_jax.inference import grouping

MODES = {'TT': (True, True), 'TF': (True, False), 'FF': (False, False)}  # adjust, refine
SCENES = 2


def scenes(fixtures: str, count: int):
  z = np.load(f'{fixtures}/grouping.npz')
  for s in range(count):
    p = f's{s:02d}_'
    yield np.transpose(z[p + 'det'][0], (1, 2, 0)), np.transpose(z[p + 'tag'][0], (1, 2, 0, 3))


def main(mode: str, fixtures: str, out: str) -> None:
  spec = grouping.GroupingSpec.from_config(base_config())
  results = {}
  for s, (hm, tg) in enumerate(scenes(fixtures, SCENES)):
    for name, (adjust, refine) in MODES.items():
      if mode == 'parity':
        got = grouping.parse(hm, tg, spec, adjust=adjust, refine=refine)
      elif mode == 'predictor':
        hm_ro, tg_ro = np.asarray(jax.device_put(hm)), np.asarray(jax.device_put(tg))
        top_k = [np.asarray(a) for a in jax.jit(grouping.nms_top_k)(hm_ro, tg_ro)]
        got = grouping.parse_top_k(*top_k, hm_ro, tg_ro, spec, adjust=adjust, refine=refine)
        again = grouping.parse(hm_ro, tg_ro, spec, adjust=adjust, refine=refine)
        np.testing.assert_array_equal(again[0], got[0])
      elif mode == 'demo':
        got = grouping.parse(np.array(hm, order='C'), np.array(tg, order='C'), spec,
                             adjust=adjust, refine=refine)
      else:
        raise SystemExit(f'unknown mode {mode!r}')
      results[f's{s:02d}_grouped_{name}'], results[f's{s:02d}_scores_{name}'] = got
  np.savez(out, **results)


if __name__ == '__main__':
  main(*sys.argv[1:])
