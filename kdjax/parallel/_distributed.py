"""Multi-host start-up (a thin pass-through to ``jax.distributed.initialize``) and agreement."""

from __future__ import annotations

from collections.abc import Sequence
import logging
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

logger = logging.getLogger(__name__)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | Sequence[int] | None = None,
    **kwargs: Any,
) -> None:
  """Connects this process to the others: ``jax.distributed.initialize``.

  Call it once per process, first thing, before any other jax call that
  touches devices. On Cloud TPU pod slices and on SLURM or Open MPI GPU
  clusters every argument can be left out (jax detects the cluster); on a
  cluster jax does not detect, pass the coordinator's ``host:port``, the
  number of processes and this process's id. Afterwards ``jax.devices()``
  lists the devices of all processes, :func:`make_mesh` lays them out, and
  :func:`shard_batch` builds global batches from each process's rows. See
  the *Multi-host* page of the docs for launch commands.

  Args:
    coordinator_address: ``'host:port'`` of process 0's coordinator service.
    num_processes: the number of processes.
    process_id: this process's id in ``[0, num_processes)``.
    local_device_ids: restricts this process to these local devices (e.g.
      one GPU per process).
    **kwargs: passed to ``jax.distributed.initialize`` unchanged (e.g.
      ``initialization_timeout``, ``cluster_detection_method``).
  """
  jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      local_device_ids=local_device_ids,
      **kwargs,
  )
  logger.info(
      'jax.distributed: process %d of %d, %d local of %d global devices (%s)',
      jax.process_index(), jax.process_count(), jax.local_device_count(),
      jax.device_count(), jax.devices()[0].platform,
  )


def any_process(flag: bool) -> bool:
  """Whether `flag` is true in any process; every process gets the same answer.

  One process alone returns `flag` at no cost. With several, each process's
  flag is gathered over the devices (``multihost_utils.process_allgather``,
  one small collective, so every process must call it at the same point):
  it is how processes agree to stop after the same step when only some of
  them got a preemption signal, or to skip a checkpoint that only some could
  read.

  Args:
    flag: this process's value.

  Returns:
    The logical or of `flag` over all processes.
  """
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
  return bool(np.any(flags))
