"""Metric writers: JSON lines and TensorBoard event files (no TensorFlow needed)."""

from __future__ import annotations

from collections.abc import Mapping
import json
import math
import os
import time
from typing import Any

import jax
from tensorboardX import SummaryWriter

from kdjax import provenance


class MetricWriter:
  """Writes scalar metrics to ``<workdir>/metrics.jsonl`` and TensorBoard.

  Each :meth:`write` appends one JSON object per line,
  ``{"step": 10, "split": "train", "time": ..., "loss/kd": 0.31, ...}``, and
  the same scalars as ``<split>/<name>`` to a TensorBoard event file under
  ``<workdir>/tensorboard`` (written with tensorboardX, which needs no
  TensorFlow). Lines are flushed at once, so a run that dies keeps every
  line it wrote. Use as a context manager or call :meth:`close`.

  Args:
    workdir: the run's directory (created if missing).
    tensorboard: also write TensorBoard event files.
  """

  def __init__(self, workdir: str | os.PathLike[str], *, tensorboard: bool = True):
    self.workdir = os.fspath(workdir)
    os.makedirs(self.workdir, exist_ok=True)
    self._jsonl = open(os.path.join(self.workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    self._tb = None
    if tensorboard:
      self._tb = SummaryWriter(os.path.join(self.workdir, 'tensorboard'))

  def write(self, step: int, metrics: Mapping[str, Any], *, split: str = 'train') -> None:
    """Writes `metrics` (name -> number) for `step` under `split`."""
    values = {name: float(value) for name, value in metrics.items()}
    record = {'step': int(step), 'split': split, 'time': time.time(), **values}
    self._jsonl.write(json.dumps(record, allow_nan=True) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in values.items():
        if math.isfinite(value):
          self._tb.add_scalar(f'{split}/{name}', value, int(step))
      self._tb.flush()

  def close(self) -> None:
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Reads a ``metrics.jsonl`` file back (a workdir or the file itself)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, 'metrics.jsonl')
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def environment() -> dict[str, str]:
  """Versions and machine in one line each, for benchmark reports.

  (The full record that results files carry is :func:`kdjax.provenance.record`.)
  """
  machine = provenance.machine()
  devices = jax.devices()
  return {
      'jax_version': jax.__version__,
      'backend': machine['jax_backend'],
      'devices': f'{len(devices)} x {devices[0].device_kind}',
      'machine': f"{machine['cpu_count']} CPUs ({machine['cpu']})",
  }
