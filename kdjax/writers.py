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


def _event_writer(logdir: str, purge_step: int | None = None) -> SummaryWriter:
  # tensorboardX names event files by the second they are opened in and
  # opens them with 'wb': the suffix keeps a writer from replacing the file
  # of another opened in the same second (a rewind, a restarted process).
  return SummaryWriter(logdir, purge_step=purge_step,
                       filename_suffix=f'.{os.getpid()}.{time.monotonic_ns()}')


class MetricWriter:
  """Writes scalar metrics to ``<workdir>/metrics.jsonl`` and TensorBoard.

  Each :meth:`write` appends one JSON object per line,
  ``{"step": 10, "split": "train", "time": ..., "loss/kd": 0.31, ...}``, and
  the same scalars as ``<split>/<name>`` to a TensorBoard event file under
  ``<workdir>/tensorboard`` (written with tensorboardX, which needs no
  TensorFlow). Lines are flushed at once, so a run that dies keeps every
  line it wrote. Use as a context manager or call :meth:`close`.

  A run resumed from a checkpoint calls :meth:`rewind` with the
  :meth:`position` recorded in that checkpoint (:func:`kdjax.loop.fit` does
  both), so the lines of steps that are trained again are not doubled.

  Args:
    workdir: the run's directory (created if missing).
    tensorboard: also write TensorBoard event files.
  """

  def __init__(self, workdir: str | os.PathLike[str], *, tensorboard: bool = True):
    self.workdir = os.fspath(workdir)
    os.makedirs(self.workdir, exist_ok=True)
    self._path = os.path.join(self.workdir, 'metrics.jsonl')
    self._jsonl = open(self._path, 'a', encoding='utf-8')
    self._tb = None
    if tensorboard:
      self._tb = _event_writer(os.path.join(self.workdir, 'tensorboard'))

  def position(self) -> int:
    """The size in bytes of ``metrics.jsonl`` written so far (flushed)."""
    self._jsonl.flush()
    return self._jsonl.tell()

  def rewind(self, position: int, *, step: int) -> None:
    """Forgets what was written after a checkpoint, for a resumed run.

    Cuts ``metrics.jsonl`` back to `position` (a :meth:`position` read when
    the checkpoint was written; nothing happens if the file is not longer),
    and tells TensorBoard to drop the events of steps after `step` (its
    ``purge_step``), so that steps trained again are not shown twice.

    Args:
      position: the byte size of ``metrics.jsonl`` to keep.
      step: the checkpoint's step.
    """
    if self.position() > position:
      self._jsonl.close()
      with open(self._path, 'r+b') as f:
        f.truncate(position)
      self._jsonl = open(self._path, 'a', encoding='utf-8')
    if self._tb is not None:
      logdir = self._tb.logdir
      self._tb.close()
      self._tb = _event_writer(logdir, purge_step=int(step) + 1)

  def flush(self) -> None:
    """Flushes both files (:meth:`write` already flushes after each call)."""
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

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
