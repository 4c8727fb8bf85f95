"""Per-device code with ``jax.shard_map``: local losses, psum'd ``(sum, count)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
from typing import Any

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from kdjax import metrics as metrics_lib
from kdjax.parallel import _mesh


def _axes(mesh: Mesh, data_axes: str | Sequence[str] | None) -> tuple[str, ...]:
  axes = _mesh.resolve_data_axes(mesh, data_axes)
  if not axes:
    raise ValueError(
        f'per-device code needs data axes to split the batch over; the mesh '
        f'{dict(mesh.shape)} has neither of {_mesh.DATA_AXES}: pass data_axes.'
    )
  return axes


def per_device(
    loss_fn: Callable[..., jax.Array],
    mesh: Mesh,
    *,
    data_axes: str | Sequence[str] | None = None,
) -> Callable[..., jax.Array]:
  """`loss_fn` computed on each device's shard of the batch.

  Every positional argument is split along its leading (batch) axis over
  `data_axes` and `loss_fn` runs once per shard (``jax.shard_map``); the
  per-example results are concatenated back in batch order. For an
  element-wise loss (KL per example) this equals the global computation.
  For a batch-relational loss (similarity-preserving, RKD, PKT, CRD, NST)
  it is the *per-device* definition: each example is related only to the
  examples on its own device, as in a data-parallel PyTorch run whose loss
  sees the local batch. For the global definition, call the loss on the
  global batch inside the jitted step (XLA gathers what it needs), or
  :func:`gather_batch` inside your own ``shard_map``.

  Args:
    loss_fn: ``loss_fn(*arrays, **kwargs) -> [batch, ...]`` per-example values.
    mesh: the mesh.
    data_axes: mesh axes the batch is split over (default: those of
      ``('data', 'fsdp')`` the mesh has).

  Returns:
    ``fn(*arrays, **kwargs) -> [batch, ...]``. Keyword arguments are passed
    to every shard unchanged (options and scalars such as a temperature,
    not batch-shaped arrays).
  """
  axes = _axes(mesh, data_axes)
  spec = P(axes)

  def fn(*arrays: Any, **kwargs: Any) -> jax.Array:
    local = jax.shard_map(
        functools.partial(loss_fn, **kwargs),
        mesh=mesh,
        in_specs=(spec,) * len(arrays),
        out_specs=spec,
    )
    return local(*arrays)

  return fn


def per_device_metric(
    loss_fn: Callable[..., jax.Array],
    mesh: Mesh,
    *,
    data_axes: str | Sequence[str] | None = None,
) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """`loss_fn` per device, reduced to a global ``(sum, count)`` by ``psum``.

  Each device reduces its shard's per-example values to a local ``(sum,
  count)`` pair (masked by `mask`), and the pairs are summed over
  `data_axes`: the result is the exact global masked sum and count (their
  ratio the global token-weighted mean), however unevenly the padding falls
  on the devices. A mean of per-device means would not be.

  Args:
    loss_fn: ``loss_fn(*arrays, **kwargs) -> [batch, ...]`` per-example values.
    mesh: the mesh.
    data_axes: mesh axes the batch is split over.

  Returns:
    ``fn(*arrays, mask=None, **kwargs) -> (sum, count)``, float32 scalars
    replicated on every device; `mask` is ``[batch]`` or ``[batch, time]``
    (1 = counts), split like the arrays.
  """
  axes = _axes(mesh, data_axes)
  spec = P(axes)

  def fn(*arrays: Any, mask: jax.Array | None = None, **kwargs: Any):
    def local(arrays, mask):
      values = loss_fn(*arrays, **kwargs)
      total, count = metrics_lib.metric(values, mask)
      return jax.lax.psum(total, axes), jax.lax.psum(count, axes)

    mask_spec = None if mask is None else spec
    return jax.shard_map(
        local, mesh=mesh, in_specs=((spec,) * len(arrays), mask_spec), out_specs=(P(), P())
    )(arrays, mask)

  return fn


def gather_batch(x: Any, data_axes: str | Sequence[str]) -> Any:
  """Inside ``shard_map``: the global batch from each device's shard.

  ``all_gather`` along the leading axis over `data_axes` (tiled, in batch
  order), for batch-relational losses with the global definition inside
  per-device code.

  Args:
    x: a pytree of local shards ``[local_batch, ...]``.
    data_axes: the mesh axes the batch is split over.

  Returns:
    The pytree of ``[global_batch, ...]`` arrays, on every device.
  """
  axes = (data_axes,) if isinstance(data_axes, str) else tuple(data_axes)
  return jax.tree.map(lambda a: jax.lax.all_gather(a, axes, axis=0, tiled=True), x)
