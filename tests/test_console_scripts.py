"""Every `[project.scripts]` entry imports and prints its help (each in its own process:
absl flags are global, so two apps cannot be imported into one)."""

import os
import pathlib
import platform
import subprocess
import sys
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['scripts']
# Flags each program's help must name (so a script pointing at the wrong program fails).
FLAGS = {'higherhrnet-train': ('--config', '--workdir'),
         'higherhrnet-eval': ('--config', '--checkpoint', '--output'),
         'higherhrnet-summary': ('--config', '--input_size')}


def test_every_script_is_covered():
  assert set(SCRIPTS) == set(FLAGS)


@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_script_runs_with_help(name):
  module, func = SCRIPTS[name].split(':')
  # The entry point exactly as the installed wrapper calls it.
  code = f'import sys; from {module} import {func}; sys.argv[0] = {name!r}; sys.exit({func}())'
  run = subprocess.run([sys.executable, '-c', code, '--help'], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
  out = run.stdout + run.stderr
  assert 'Traceback' not in out, out[-3000:]
  # argparse exits 0 after --help; absl apps print the same usage and exit 1 by design.
  assert run.returncode in (0, 1), (run.returncode, out[-3000:])
  for flag in FLAGS[name]:
    assert flag in out, (flag, out[-3000:])


GLIBC = sys.platform == 'linux' and platform.libc_ver()[0] == 'glibc'


@pytest.mark.skipif(not GLIBC, reason='glibc tunables only')
@pytest.mark.parametrize('tunables, want_runs', [
    (None, 2),  # restarted once, with the huge-page tunable
    ('glibc.malloc.check=0', 2),  # the user's tunables kept
    ('glibc.malloc.hugetlb=0', 1),  # the user's choice about huge pages: no restart
])
def test_apps_restart_once_with_huge_page_malloc(tunables, want_runs):
  code = ('import os, sys; print("start", flush=True); from higherhrnet_jax import apps; '
          'apps.reexec_with_huge_page_malloc(); '
          'print("tunables", os.environ.get("GLIBC_TUNABLES")); print("argv", sys.argv[1:])')
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  if tunables:
    env['GLIBC_TUNABLES'] = tunables
  run = subprocess.run([sys.executable, '-c', code, '--x=1', 'y'], capture_output=True,
                       text=True, timeout=120, cwd=REPO, env=env)
  assert run.returncode == 0, run.stderr
  lines = run.stdout.splitlines()
  assert lines.count('start') == want_runs
  want = {None: 'glibc.malloc.hugetlb=1', 'glibc.malloc.check=0':
          'glibc.malloc.check=0:glibc.malloc.hugetlb=1'}.get(tunables, tunables)
  assert lines[-2:] == [f'tunables {want}', "argv ['--x=1', 'y']"]
