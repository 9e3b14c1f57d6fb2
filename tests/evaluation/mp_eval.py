"""One process of a multi-process evaluation on the data samples (see test_multiprocess_eval).

`python mp_eval.py KIND OUT PROCESS_ID NUM_PROCESSES PORT`: KIND is `bottom_up` (tiny
HigherHRNet, official tiny weights, COCO sample), `top_down` (tiny HRNet, official tiny
weights, ground-truth boxes of the COCO sample) or `mpii` (tiny HRNet with 16 joints,
seeded random weights, the fixtures' MPII records). Every process writes the metrics it
returns to `OUT/metrics_<process>.json`; process 0 also writes the run's files to `OUT/run`.
"""

import json
import os
import pathlib
import sys

from absl import flags

flags.FLAGS.mark_as_parsed()

from higherhrnet_jax import config as config_lib, distributed  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get('HIGHERHRNET_SHARED', REPO.parent / 'shared'))
COCO = SHARED / 'data' / 'coco_sample'


def _config_and_variables(kind):
  from higherhrnet_jax import models, weights
  from higherhrnet_jax.config import pose_hrnet

  coco = [f'dataset.test_annotations={COCO / "test_coco.json"}', f'dataset.test_images={COCO}']
  if kind == 'bottom_up':
    config = config_lib.load_config(REPO / 'configs' / 'tiny.py',
                                    coco + ['test.batch_size=1', 'test.refine=False'])
    fixtures = SHARED / 'fixtures' / 'official'
  elif kind == 'top_down':
    config = config_lib.load_config(REPO / 'configs' / 'coco' / 'hrnet_tiny.py',
                                    coco + ['test.batch_size=4'])
    fixtures = SHARED / 'fixtures' / 'official_topdown'
  else:
    config = pose_hrnet.base_config()
    pose_hrnet.mpii(config)
    pose_hrnet.with_slim_stages(config, 8)
    pose_hrnet.with_input_size(config, 64, 64)
    annot = SHARED / 'fixtures' / 'official_topdown' / 'mpii_annot'
    config = config_lib.validate(config_lib.apply_overrides(config, [
        f'dataset.test_annotations={annot / "valid.json"}', f'dataset.test_images={COCO}',
        'test.batch_size=4']))
    model = models.build(config.model)
    return config, models.init_variables(model)
  return config, weights.load(fixtures / 'tiny_state_dict.npz', config.model)


def main(kind, out, process_id, num_processes, port):
  if int(num_processes) > 1:
    distributed.initialize(f'127.0.0.1:{port}', int(num_processes), int(process_id))
  import jax
  from higherhrnet_jax.evaluation import runner
  config, variables = _config_and_variables(kind)
  predictor = runner.make_predictor(config, variables)
  out = pathlib.Path(out)
  metrics = runner.evaluate_any(predictor, config, out_dir=out / 'run', render=2)
  out.mkdir(parents=True, exist_ok=True)
  (out / f'metrics_{jax.process_index()}.json').write_text(json.dumps(
      {k: v for k, v in metrics.items() if k != 'summary'}))


if __name__ == '__main__':
  main(*sys.argv[1:])
