"""The single-process side of `distributed` (the multi-process side runs in real jobs:
tests/training/test_multiprocess.py, tests/evaluation/test_multiprocess_eval.py)."""

import pytest

from higherhrnet_jax import distributed


def test_coordinator_flags_go_together():
  with pytest.raises(ValueError, match='coordinator_address.*go together'):
    distributed.initialize('127.0.0.1:1234', None, 0)


@pytest.mark.parametrize('env, expected', [
    ({}, False),
    ({'SLURM_NTASKS': '1'}, False),
    ({'SLURM_NTASKS': '8'}, True),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, True),
    ({'TPU_WORKER_HOSTNAMES': 'a'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'a,b'}, True),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1'}, True),
])
def test_cluster_detection(env, expected):
  assert distributed.cluster_detected(env) is expected


def test_intra_op_pool_covers_the_job_devices_unless_set(monkeypatch):
  monkeypatch.delenv('NPROC', raising=False)
  distributed._fix_cpu_intra_op_threads(64)
  assert distributed.os.environ['NPROC'] == '64'
  monkeypatch.setenv('NPROC', '3')
  distributed._fix_cpu_intra_op_threads(64)
  assert distributed.os.environ['NPROC'] == '3'


def test_single_process_exchanges_are_identities():
  items = list(range(7))
  assert list(distributed.my_part(items)) == items
  assert distributed.all_gather({'a': [1.5]}) == [{'a': [1.5]}]
  assert distributed.gather(lambda: 3) == [3]


def test_gather_raises_the_parts_own_error():
  def broken():
    raise KeyError('image 785')

  with pytest.raises(KeyError, match='785'):
    distributed.gather(broken)


def test_compilation_cache_directory(monkeypatch, tmp_path):
  import jax

  from higherhrnet_jax import apps

  before = jax.config.jax_compilation_cache_dir
  try:
    assert apps.enable_compilation_cache('none') is None
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert apps.enable_compilation_cache() == str(tmp_path / 'higherhrnet_jax' / 'xla')
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'higherhrnet_jax' / 'xla')
    assert apps.enable_compilation_cache(str(tmp_path / 'x')) == str(tmp_path / 'x')
  finally:
    jax.config.update('jax_compilation_cache_dir', before)
