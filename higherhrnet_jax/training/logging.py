"""Training summaries (process 0 only): TensorBoard events, `train_log.jsonl`, the progress line."""

from __future__ import annotations

import json
import logging as std_logging
import pathlib
import time
from collections.abc import Mapping

from higherhrnet_jax.distributed import is_chief

log = std_logging.getLogger('higherhrnet_jax.train')


class MetricWriter:
  """Scalars to TensorBoard (tensorboardX); a no-op on processes other than 0."""

  def __init__(self, logdir: str | pathlib.Path, enabled: bool | None = None):
    self.enabled = is_chief() if enabled is None else enabled
    self._writer = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # imported lazily: heavy, chief only

      self._writer = SummaryWriter(str(logdir))

  def scalars(self, step: int, values: Mapping[str, float], prefix: str = 'train') -> None:
    if self._writer is None:
      return
    for name, value in values.items():
      self._writer.add_scalar(f'{prefix}/{name}', float(value), step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h:d}:{m:02d}:{s:02d}'


class Progress:
  """Throughput and ETA over the steps since the previous report.

  Args:
    total_steps: last step of the run.
    batch_size: global images per step.
  """

  def __init__(self, total_steps: int, batch_size: int):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self._last_time = None
    self._last_step = None

  def start(self, step: int) -> None:
    self._last_time = time.perf_counter()
    self._last_step = step

  def update(self, step: int) -> dict[str, float]:
    """Returns {'steps_per_s', 'samples_per_s', 'eta_s'} since the last call."""
    now = time.perf_counter()
    if self._last_time is None:
      self.start(step)
      return {}
    dt = max(now - self._last_time, 1e-9)
    rate = (step - self._last_step) / dt
    self._last_time, self._last_step = now, step
    eta = (self.total_steps - step) / rate if rate > 0 else float('inf')
    return {'steps_per_s': rate, 'samples_per_s': rate * self.batch_size, 'eta_s': eta}

  def line(self, step: int, epoch: float, metrics: Mapping[str, float],
           speed: Mapping[str, float]) -> str:
    """`step 1200/366000 (ep 3.3) loss 1.2e-3 [heatmaps_loss_0 ...] lr 1e-3 | 95.1 img/s | ETA`."""
    terms = ' '.join(
        f'{k.replace("_loss", "")} {v:.4g}' for k, v in sorted(metrics.items())
        if k.endswith(tuple('0123456789')))
    parts = [f'step {step}/{self.total_steps} (ep {epoch:.2f})', f'loss {metrics["loss"]:.5g}']
    if terms:  # per-stage terms (HigherHRNet); the top-down loss has one term, the total
      parts.append(f'[{terms}]')
    if 'lr' in metrics:
      parts.append(f'lr {metrics["lr"]:.3g}')
    if speed:
      parts.append(f'| {speed["samples_per_s"]:.1f} img/s {speed["steps_per_s"]:.2f} step/s'
                   f' | ETA {_duration(speed["eta_s"]) if speed["eta_s"] != float("inf") else "?"}')
    return ' '.join(parts)


class TrainLog:
  """`train_log.jsonl`: one JSON object per logged step, for pandas and for run comparisons.

  Written by process 0 and appended across resumes. A job that dies logs steps after its
  last checkpoint that the resumed job logs again, so opening the log at step `start` drops
  the lines after it: every step appears once, as the run that continued computed it.
  """

  def __init__(self, path: str | pathlib.Path, start: int, enabled: bool | None = None):
    self.path = pathlib.Path(path)
    self.enabled = is_chief() if enabled is None else enabled
    if self.enabled and self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line)['step'] <= start]
      self.path.write_text(''.join(line + '\n' for line in kept))

  def write(self, step: int, metrics: Mapping[str, float], speed: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    if 'samples_per_s' in speed:
      record['images_per_s'] = float(speed['samples_per_s'])
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
