"""One process of a multi-process training job with the stand-in model (fast to compile).

`python mp_run.py WORKDIR STEPS PROCESS_ID NUM_PROCESSES PORT CPU_DEVICES [OVERRIDE ...]`
joins the job through `distributed.initialize` (as `train.py` does with its flags) and runs
the real training loop on synthetic batches; NUM_PROCESSES=1 is a plain single-process run.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

from higherhrnet_jax import config as config_lib, distributed  # noqa: E402

REPO = os.path.join(os.path.dirname(__file__), '..', '..')


def main(workdir, steps, process_id, num_processes, port, devices, *overrides):
  if int(num_processes) > 1:
    distributed.initialize(f'127.0.0.1:{port}', int(num_processes), int(process_id),
                           cpu_devices=int(devices))
  else:
    distributed.initialize(cpu_devices=int(devices))
  from higherhrnet_jax.training import loop
  import tiny_standin
  config = config_lib.load_config(os.path.join(REPO, 'configs', 'tiny.py'), [
      'data.input_size=64', 'data.source=synthetic',
      f'train.num_steps={steps}', 'train.batch_size=8', 'train.log_every_steps=1',
      'train.checkpoint_every_steps=3', 'train.eval_every_epochs=-1', 'train.lr=0.01',
      *overrides])
  loop.train(config, workdir, model=tiny_standin.build(config.model))


if __name__ == '__main__':
  main(*sys.argv[1:])
