"""Trains HigherHRNet, then evaluates it; re-running the same command resumes.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart

  python train.py --config=configs/coco/higherhrnet_w32_512.py --workdir=runs/w32_512 \
      [--config.train.batch_size=48 ...]

Smoke run on generated data:

  python train.py --config=configs/tiny.py --workdir=/tmp/tiny \
      --config.data.source=synthetic --config.train.num_steps=50 --config.train.log_every_steps=5

`higherhrnet-train` (installed with the package) is the same program.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from higherhrnet_jax import apps, cli
from higherhrnet_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (defines get_config()).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, TensorBoard, config.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # checkpointing libraries log every save at INFO
  apps.initialize_runtime()  # before any JAX computation
  config = config_lib.validate(_CONFIG.value)
  cli.run_train(config, _WORKDIR.value)


def run() -> None:
  """Console script `higherhrnet-train`."""
  apps.run(main, __name__, required=('config', 'workdir'))
