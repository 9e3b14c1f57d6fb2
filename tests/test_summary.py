"""Parameter / MAC counts against the official table (fixtures' README section 9, paper)."""

import json
import pathlib

import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import summary

CONFIGS = pathlib.Path(__file__).parent.parent / 'configs'


@pytest.mark.parametrize('config, size, params, macs, macs_official', [
    ('coco/higherhrnet_w32_512.py', 512, 28_645_331, 46_203_404_288, 47_864_348_672),
    ('coco/higherhrnet_w48_640.py', 640, 63_827_139, 149_468_774_400, 154_305_331_200),
    ('coco/higherhrnet_w32_512.py', 256, 28_645_331, 11_550_851_072, 11_966_087_168),
    ('tiny.py', 128, 551_387, 386_162_688, 402_677_760),
])
def test_counts_match_official_table(config, size, params, macs, macs_official):
  cfg = config_lib.load_config(CONFIGS / config)
  result = summary.summarize(cfg.model, size)
  assert (result.params, result.macs, result.macs_official) == (params, macs, macs_official)
  assert sum(row[0] for row in result.blocks.values()) == params


def test_cli_json_last_line(capsys):
  assert summary.main(['--config', str(CONFIGS / 'coco' / 'higherhrnet_w32_640.py'), '--json']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  result = json.loads(lines[-1])
  # Paper: W32-640 28.6M parameters, 74.8 GFLOPs (official convention).
  assert result['params'] == 28_645_331
  assert round(result['macs_official'] / 1e9, 1) == 74.8
  assert result['macs'] < result['macs_official']
  assert any(line.startswith('total') for line in lines)


def test_cli_rejects_unknown_arguments():
  with pytest.raises(SystemExit):
    summary.main(['--config', str(CONFIGS / 'tiny.py'), '--bogus'])


def test_cli_takes_config_overrides_as_the_other_programs(capsys):
  # --config.a.b=value through config_flags, as train.py and eval.py; validated once.
  assert summary.main([f'--config={CONFIGS / "tiny.py"}', '--config.data.input_size=256',
                       '--json']) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result['input_shape'][1:3] == [256, 256]
  with pytest.raises(SystemExit, match='input_size'):
    summary.main([f'--config={CONFIGS / "tiny.py"}', '--config.data.input_size=250'])
  with pytest.raises(SystemExit, match='output_size'):  # derived, not a field any more
    summary.main([f'--config={CONFIGS / "tiny.py"}', '--config.data.output_size=(64, 128)'])
