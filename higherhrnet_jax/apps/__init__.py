"""Command-line applications (absl): `train.py`, `eval.py` and the console scripts run these."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags


def run(main: Callable[[list[str]], None], module: str, required: Sequence[str]) -> None:
  """`absl.app.run(main)` for an app whose flags are defined in `module`, not in `__main__`.

  absl's `--help` lists the flags of the program's own file (`sys.argv[0]`); registering the
  app's flags under that name makes `train.py --help` and `higherhrnet-train --help` list them.
  """
  for flag in flags.FLAGS.get_flags_for_module(module):
    flags.FLAGS.register_flag_by_module(sys.argv[0], flag)
  flags.mark_flags_as_required(list(required))
  app.run(main)
