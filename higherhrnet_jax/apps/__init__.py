"""Command-line applications (absl): `train.py`, `eval.py` and the console scripts run these."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Sequence

import jax
from absl import app, flags
from ml_collections import config_flags

from higherhrnet_jax import distributed

# A job of several processes (train.py and eval.py). Left out, JAX's cluster detection
# (TPU slice, SLURM, Open MPI) decides, and a plain run is one process.
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 in a hand-launched multi-process job.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, "This process's index, 0-based.")
_CPU_DEVICES = flags.DEFINE_integer(
    'xla_force_host_platform_device_count', None,
    'CPU devices of this process (as XLA\'s flag of that name; e.g. 2 processes x 2 devices).')
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout_s', distributed.HEARTBEAT_TIMEOUT_S,
    'A process that has not heard from its peers this long exits with an error.')


_CACHE = flags.DEFINE_string(
    'compilation_cache_dir', '',
    "XLA's persistent compilation cache: a repeated or resumed run loads its compiled "
    "programs instead of compiling again. '' (default): <XDG_CACHE_HOME or ~/.cache>/"
    "higherhrnet_jax/xla; 'none': off.")


# glibc's malloc maps every large block (an XLA program's buffers, on every call) with fresh
# 4 KiB pages, so each call faults its working set in page by page. With this tunable it asks
# for transparent huge pages where the kernel grants them on request (the 'madvise' mode, a
# common default). AMD EPYC, 2 cores: page faults 45,000 -> 2,200 per quickstart step, the
# step 206 -> 168 ms; W32 train step 1,393 -> 1,193 ms.
HUGE_PAGE_TUNABLE = 'glibc.malloc.hugetlb=1'


def reexec_with_huge_page_malloc() -> None:
  """Restarts this process, once, with `HUGE_PAGE_TUNABLE` in `GLIBC_TUNABLES`.

  glibc reads its tunables only at start-up, so an application sets them by starting again
  (same process id, same command line). Nothing happens off glibc or when `GLIBC_TUNABLES`
  already says how malloc should use huge pages.
  """
  if sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc':
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables:
    return
  os.environ['GLIBC_TUNABLES'] = f'{tunables}:{HUGE_PAGE_TUNABLE}' if tunables else HUGE_PAGE_TUNABLE
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)


def initialize_runtime() -> None:
  """Before any JAX computation: joins the job described by the flags or the cluster, and
  turns on the persistent compilation cache."""
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         cpu_devices=_CPU_DEVICES.value, heartbeat_timeout_s=_HEARTBEAT.value)
  enable_compilation_cache(_CACHE.value)


def enable_compilation_cache(directory: str = '') -> str | None:
  """Points JAX's persistent compilation cache at `directory` (see the flag); returns it."""
  if directory == 'none':
    return None
  if not directory:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    directory = os.path.join(base, 'higherhrnet_jax', 'xla')
  jax.config.update('jax_compilation_cache_dir', directory)
  # Programs that compile in under a second are not worth a file.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  return directory


def run(main: Callable[[list[str]], None], module: str, required: Sequence[str]) -> None:
  """`absl.app.run(main)` for an app whose flags are defined in `module`, not in `__main__`.

  absl's `--help` lists the flags of the program's own file (`sys.argv[0]`); registering the
  app's flags under that name makes `train.py --help` and `higherhrnet-train --help` list them.
  """
  reexec_with_huge_page_malloc()
  for name in (module, __name__):
    for flag in flags.FLAGS.get_flags_for_module(name):
      flags.FLAGS.register_flag_by_module(sys.argv[0], flag)
  flags.mark_flags_as_required(list(required))
  app.run(main, flags_parser=_parse_app_flags)


def parse_tool_flags(argv: Sequence[str], prog: str,
                     define: Callable[[flags.FlagValues], None]) -> flags.FlagValues:
  """Flags of a tool that is also called as a function (demo, summary), with `--config`.

  The same `config_flags` file flag and `--config.a.b=value` overrides as train.py and
  eval.py, but in a flag set of its own: absl's global flags could not hold a second
  `--config` next to theirs, and a function may be called many times. `define(flag_values)`
  adds the tool's flags. `--help` prints them and exits 0; bad flags exit with the message.
  """
  argv = list(argv)
  fv = flags.FlagValues()
  # `sys_argv`: where config_flags finds the `--config.a.b` overrides to define.
  config_flags.DEFINE_config_file('config', None, 'Config file (defines get_config()).',
                                  flag_values=fv, lock_config=True, sys_argv=[prog, *argv])
  define(fv)
  if '--help' in argv or '-h' in argv:
    defined = sorted({f.name: f for fs in fv.flags_by_module_dict().values() for f in fs}.items())
    print(f'usage: {prog} --config=<file> [--config.a.b=value ...] [flags]\n')
    for name, flag in defined:
      print(f'  --{name}: {flag.help}' + (f' (default: {flag.default!r})' if flag.default else ''))
    raise SystemExit(0)
  try:
    fv([prog, *argv])
  except flags.Error as e:
    raise SystemExit(f'{prog}: {e}') from None
  except (AttributeError, KeyError) as e:
    raise SystemExit(_unknown_field_message(prog, e)) from None
  if fv['config'].value is None:
    raise SystemExit(f'{prog}: --config is required')
  return fv


def _parse_app_flags(argv: list[str]) -> list[str]:
  """absl's parser, with an override of a config field that does not exist reported as such."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.',
          file=sys.stderr)
    raise SystemExit(1) from None
  except (AttributeError, KeyError) as e:
    raise SystemExit(_unknown_field_message(argv[0], e)) from None


def _unknown_field_message(prog: str, error: BaseException) -> str:
  # ml_collections raises AttributeError(KeyError("'name'\nDid you mean ...")) for a field
  # that is not in the config; overrides never add fields.
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
  name, _, hint = text.partition('\n')
  name = name.strip('\'"')
  return f'{prog}: a --config override names {name!r}, which is not a config field' + (
      f' ({hint.strip()})' if hint else '')
