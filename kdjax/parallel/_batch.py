"""Batch sharding: the batch split over the data axes, built from process-local data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from kdjax.parallel import _mesh
from kdjax.parallel._rules import path_str


def batch_spec(mesh: Mesh, data_axes: str | Sequence[str] | None = None) -> P:
  """``PartitionSpec`` splitting the leading (batch) axis over `data_axes`.

  Args:
    mesh: the mesh.
    data_axes: mesh axes the batch is split over; ``None`` means those of
      ``('data', 'fsdp')`` the mesh has (FSDP splits the batch too).

  Returns:
    ``P(data_axes)``, or ``P()`` (replicated) when there are none.
  """
  axes = _mesh.resolve_data_axes(mesh, data_axes)
  return P(axes) if axes else P()


def batch_sharding(mesh: Mesh, data_axes: str | Sequence[str] | None = None) -> NamedSharding:
  """``NamedSharding`` for every batch entry: leading axis over `data_axes`.

  One sharding serves a whole batch dict (a pytree prefix in
  ``jax.jit(in_shardings=...)``): entries of any rank are split along their
  first axis only.

  Args:
    mesh: the mesh.
    data_axes: see :func:`batch_spec`.

  Returns:
    ``NamedSharding(mesh, batch_spec(mesh, data_axes))``.
  """
  return NamedSharding(mesh, batch_spec(mesh, data_axes))


def _local_shards(mesh: Mesh, axes: Sequence[str]) -> int:
  """How many distinct batch shards this process's devices hold."""
  positions = [mesh.axis_names.index(a) for a in axes]
  me = jax.process_index()
  coords = {
      tuple(index[p] for p in positions)
      for index, device in np.ndenumerate(mesh.devices)
      if device.process_index == me
  }
  return len(coords)


def shard_batch(
    batch: Any, mesh: Mesh, data_axes: str | Sequence[str] | None = None
) -> Any:
  """Places a batch on `mesh`, split along its leading axis over `data_axes`.

  `batch` is this process's part of the global batch (on one host, the whole
  batch): a pytree of NumPy or jax arrays with the batch as leading axis.
  Each process passes its own rows, in process order, and the result is one
  global ``jax.Array`` per entry (built with
  ``jax.make_array_from_process_local_data``), which a jitted step consumes
  as the global batch.

  Args:
    batch: process-local batch entries, each ``[local_batch, ...]``.
    mesh: the mesh.
    data_axes: see :func:`batch_spec`.

  Returns:
    The batch as global arrays sharded by :func:`batch_sharding`.

  Raises:
    ValueError: for a scalar entry, or a global batch size not divisible by
      the number of devices along `data_axes` (naming both).
  """
  axes = _mesh.resolve_data_axes(mesh, data_axes)
  sharding = batch_sharding(mesh, axes)
  shards = _mesh.axes_size(mesh, axes)
  local_shards = _local_shards(mesh, axes) if axes else 1
  sizes = {a: mesh.shape[a] for a in axes}

  def place(path, x):
    name = path_str(path) or 'batch'
    shape = np.shape(x)
    if not shape:
      raise ValueError(
          f'batch entry {name!r} is a scalar; every batch entry needs the batch as '
          'its leading axis.'
      )
    local = shape[0]
    global_size = local * shards // local_shards
    if local % local_shards or global_size % shards:
      raise ValueError(
          f'batch entry {name!r} with shape {shape}: global batch size '
          f'{local * shards / local_shards:g} is not divisible by the data axes '
          f'{sizes} ({shards} shards; this process holds {local_shards} of them '
          f'and {local} rows).'
      )
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(
        sharding, np.asarray(x), (global_size,) + tuple(shape[1:])
    )

  return jax.tree_util.tree_map_with_path(place, batch)


def process_rows(
    mesh: Mesh, global_batch: int, data_axes: str | Sequence[str] | None = None
) -> slice:
  """The rows of a global batch that this process feeds to :func:`shard_batch`.

  A data loader in a multi-process run reads (or keeps) only these rows of
  each global batch: the rows whose shards live on this process's devices.
  On one process it is ``slice(0, global_batch)``.

  Args:
    mesh: the mesh.
    global_batch: the global batch size.
    data_axes: see :func:`batch_spec`.

  Returns:
    A ``slice`` of the global batch.

  Raises:
    ValueError: if `global_batch` is not divisible by the data axes, or this
      process's rows are not one contiguous block (a mesh whose device order
      interleaves the processes along the data axes).
  """
  axes = _mesh.resolve_data_axes(mesh, data_axes)
  shards = _mesh.axes_size(mesh, axes)
  if global_batch % shards:
    raise ValueError(
        f'global batch size {global_batch} is not divisible by the data axes '
        f'{ {a: mesh.shape[a] for a in axes} } ({shards} shards).'
    )
  indices = batch_sharding(mesh, axes).addressable_devices_indices_map((global_batch,))
  starts = sorted({(index[0].start or 0, index[0].stop or global_batch)
                   for index in indices.values()})
  for (_, stop), (start, _) in zip(starts, starts[1:]):
    if stop != start:
      raise ValueError(
          f'process {jax.process_index()} holds rows {starts} of the global batch, '
          'not one contiguous block; order the mesh devices by process.'
      )
  return slice(starts[0][0], starts[-1][1])
