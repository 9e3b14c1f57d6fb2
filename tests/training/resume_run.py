"""Trains a few steps on generated batches and appends `step loss-as-hex` lines to a file.

Used by the kill/resume test: `python resume_run.py WORKDIR LOSSFILE STEPS MODEL`, MODEL
being 'standin' (small stand-in module, fast to compile), 'tiny' (configs/tiny.py) or
'topdown' (configs/coco/hrnet_tiny.py at 64x64 on the COCO sample's people through the grain
pipeline, whose position is part of the checkpoint).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

from higherhrnet_jax import config as config_lib  # noqa: E402
from higherhrnet_jax.training import loop  # noqa: E402

REPO = os.path.join(os.path.dirname(__file__), '..', '..')


def main(workdir, loss_file, steps, model_name):
  common = [f'train.num_steps={steps}', 'train.checkpoint_every_steps=2', 'train.keep_checkpoints=2',
            'train.log_every_steps=1000', 'train.lr=0.01']
  if model_name == 'topdown':
    sample = os.environ['COCO_SAMPLE']
    config = config_lib.load_config(os.path.join(REPO, 'configs', 'coco', 'hrnet_tiny.py'), [
        'data.input_size=(64, 64)', f'dataset.train_annotations={sample}/test_coco.json',
        f'dataset.train_images={sample}', 'data.num_workers=0', 'train.eval_every_epochs=-1',
        *common])
  else:
    config = config_lib.load_config(os.path.join(REPO, 'configs', 'tiny.py'), [
        'data.input_size=64', 'data.source=synthetic', *common])
  model = None
  if model_name == 'standin':
    import tiny_standin
    model = tiny_standin.build(config.model)

  def hook(step, metrics):
    with open(loss_file, 'a') as f:
      f.write(f'{step} {float(metrics["loss"]).hex()}\n')
      f.flush()
      os.fsync(f.fileno())

  loop.train(config, workdir, model=model, step_hooks=[hook])


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
