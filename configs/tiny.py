"""Tiny HigherHRNet (stages [8,16,32,64], one block per branch) for tests and smoke runs.

This is the tiny architecture of the official-parity fixtures: the W32 experiment with
only the stage/deconv layout shrunk (stem and layer1 unchanged, 551,387 parameters).

  python train.py --config=configs/tiny.py --workdir=runs/tiny
"""

from higherhrnet_jax import config as cfg


def get_config():
  c = cfg.base_config()
  cfg.with_slim_stages(c, 8)
  cfg.with_input_size(c, 128)
  c.train.batch_size = c.train.reference_batch_size = 2
  return c
