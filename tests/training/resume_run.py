"""Trains a few steps on generated batches and appends `step loss-as-hex` lines to a file.

Used by the kill/resume test: `python resume_run.py WORKDIR LOSSFILE STEPS MODEL`, MODEL
being 'standin' (small stand-in module, fast to compile) or 'tiny' (configs/tiny.py).
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
  config = config_lib.load_config(os.path.join(REPO, 'configs', 'tiny.py'), [
      'data.input_size=64', 'data.output_size=(16,32)', 'data.source=synthetic',
      f'train.num_steps={steps}', 'train.checkpoint_every_steps=2', 'train.keep_checkpoints=2',
      'train.log_every_steps=1000', 'train.lr=0.01',
  ])
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
