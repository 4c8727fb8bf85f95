"""Multi-host start-up: a thin pass-through to ``jax.distributed.initialize``."""

from __future__ import annotations

from collections.abc import Sequence
import logging
from typing import Any

import jax

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
