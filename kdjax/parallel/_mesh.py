"""Device meshes from config axes: ``{'data': -1, 'fsdp': 1, 'tensor': 2}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math

import jax
from jax.sharding import AxisType
from jax.sharding import Mesh

# The mesh axes kdjax's layouts name: data parallel, fully sharded data
# parallel (parameters sharded, batch also split over it), tensor parallel.
DATA_AXES = ('data', 'fsdp')


def make_mesh(
    axes: Mapping[str, int] | Sequence[tuple[str, int]],
    *,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """A device mesh with named axes, sized from a config.

  One axis may be ``-1``: it takes the devices the others leave. The axes are
  ``AxisType.Auto`` (jax 0.10 defaults to ``Explicit``), so ``jax.jit`` with
  ``NamedSharding`` and ``nn.with_logical_constraint`` propagate shardings
  the usual way. The sizes must use every device: a mesh over a subset is
  built by passing those `devices`.

  Example: 8 devices, 4-way data parallel and 2-way tensor parallel::

    mesh = make_mesh({'data': -1, 'fsdp': 1, 'tensor': 2})
    # Mesh('data': 4, 'fsdp': 1, 'tensor': 2)

  Args:
    axes: ``{axis_name: size}`` in mesh order (outermost first: put
      ``'data'`` first and ``'tensor'`` last, so tensor-parallel groups are
      neighbouring devices), or a sequence of ``(name, size)`` pairs.
    devices: the devices to lay out; defaults to ``jax.devices()`` (all
      devices of all processes).

  Returns:
    A ``jax.sharding.Mesh`` with ``mesh.shape == {name: size}``.

  Raises:
    ValueError: for two ``-1`` sizes, a size that is neither positive nor
      ``-1``, sizes whose product exceeds or does not divide the device
      count, or sizes that leave devices unused.
  """
  items = list(axes.items()) if isinstance(axes, Mapping) else [tuple(a) for a in axes]
  if not items:
    raise ValueError('make_mesh needs at least one axis, got axes={}.')
  names = [name for name, _ in items]
  if len(set(names)) != len(names):
    raise ValueError(f'mesh axis names must be distinct, got {names}.')
  sizes = [size for _, size in items]
  for name, size in items:
    if not isinstance(size, int) or (size <= 0 and size != -1):
      raise ValueError(
          f'mesh axis {name!r} has size {size!r}; a size must be a positive int or '
          '-1 (the devices the other axes leave).'
      )
  devices = list(jax.devices() if devices is None else devices)
  count = len(devices)
  rest = [name for name, size in items if size == -1]
  if len(rest) > 1:
    raise ValueError(f'at most one mesh axis may be -1, got {rest} in axes={dict(items)}.')
  known = math.prod(size for size in sizes if size != -1)
  where = 'jax.device_count()' if len(devices) == jax.device_count() else 'len(devices)'
  if known > count:
    raise ValueError(
        f'mesh axes {dict(items)} need {known} devices but {where}={count}.'
    )
  if rest:
    if count % known:
      raise ValueError(
          f'mesh axes {dict(items)}: the fixed sizes multiply to {known}, which does '
          f'not divide {where}={count}, so {rest[0]!r}=-1 has no integer size.'
      )
    sizes = [count // known if size == -1 else size for size in sizes]
  elif known != count:
    raise ValueError(
        f'mesh axes {dict(items)} use {known} of the {where}={count} devices; set '
        f'one axis to -1 to use them all, or pass devices=jax.devices()[:{known}].'
    )
  return jax.make_mesh(
      tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names),
      devices=devices,
  )


def resolve_data_axes(mesh: Mesh, data_axes: str | Sequence[str] | None) -> tuple[str, ...]:
  """The mesh axes a batch is split over.

  Args:
    mesh: the mesh.
    data_axes: axis names, or ``None`` for those of :data:`DATA_AXES`
      (``'data'``, ``'fsdp'``) that the mesh has.

  Returns:
    A tuple of mesh axis names (possibly empty when `data_axes` is ``None``
    and the mesh has neither axis: the batch is then replicated).

  Raises:
    ValueError: if `data_axes` names an axis the mesh does not have.
  """
  if data_axes is None:
    return tuple(a for a in DATA_AXES if a in mesh.axis_names)
  if isinstance(data_axes, str):
    data_axes = (data_axes,)
  data_axes = tuple(data_axes)
  missing = [a for a in data_axes if a not in mesh.axis_names]
  if missing:
    raise ValueError(
        f'data_axes {data_axes} name {missing}, which the mesh does not have; the '
        f'mesh axes are {dict(mesh.shape)}.'
    )
  return data_axes


def axes_size(mesh: Mesh, axes: Sequence[str]) -> int:
  """The number of devices along `axes` of `mesh` (1 for no axes)."""
  return math.prod(mesh.shape[a] for a in axes)
