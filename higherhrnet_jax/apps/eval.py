"""Evaluates a checkpoint on the configured test split.

  python eval.py --config=configs/coco/higherhrnet_w32_512.py \
      --checkpoint=pose_higher_hrnet_w32_512.pth --config.dataset.root=data/coco \
      --output=runs/eval_w32_512

  python eval.py --config=configs/coco/hrnet_w32_256x192.py \
      --checkpoint=pose_hrnet_w32_256x192.pth --config.dataset.root=data/coco \
      --config.test.person_boxes=COCO_val2017_detections_AP_H_56_person.json

`--checkpoint` is an official `.pth` / `.npz` state dict (either family) or an orbax
training directory (its best checkpoint, else its latest). Top-down models take person
boxes from `--config.test.person_boxes` (official detection format), or the ground-truth
boxes when it is empty. Writes results.json, metrics.json and a few pictures to
`--output`, and prints the COCO (or CrowdPose) table with per-stage times.
`higherhrnet-eval` (installed with the package) is the same program.
"""

from absl import app, flags
from ml_collections import config_flags

from higherhrnet_jax import apps, cli
from higherhrnet_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (get_config()).',
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Official .pth/.npz or orbax workdir.')
_OUTPUT = flags.DEFINE_string('output', 'runs/eval', 'Where results and metrics go.')
_MAX_IMAGES = flags.DEFINE_integer('max_images', 0, 'Evaluate the first N images only (0: all).')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'HigherHRNet: images per device batch (0: config.test.batch_size); top-down models batch crops by --config.test.batch_size.')
_RENDER = flags.DEFINE_integer('render', 8, 'Pictures with drawn predictions to write.')
_AVERAGE = flags.DEFINE_bool('average', True, "A run directory's weight average when it kept one "
                             '(train.ema_decay); --noaverage: its current weights.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  apps.initialize_runtime()  # before any JAX computation
  cli.run_eval(config_lib.validate(_CONFIG.value), _CHECKPOINT.value, _OUTPUT.value,
               max_images=_MAX_IMAGES.value, batch_size=_BATCH.value, render=_RENDER.value,
               average=_AVERAGE.value)


def run() -> None:
  """Console script `higherhrnet-eval`."""
  apps.run(main, __name__, required=('config', 'checkpoint'))
