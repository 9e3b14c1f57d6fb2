"""Trains HigherHRNet, then evaluates it (see higherhrnet_jax/apps/train.py for the flags).

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart
"""

from higherhrnet_jax.apps import train

if __name__ == '__main__':
  train.run()
