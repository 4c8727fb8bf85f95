"""Argument checks shared across kdjax: clear errors at trace time."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
  """True when `x` has a value now (not a tracer inside jit/grad/vmap)."""
  return not isinstance(x, jax.core.Tracer)


def check_floating(name: str, x: Any) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f'{name} must have a floating dtype, got {dtype} with shape '
        f'{jnp.shape(x)}; cast it with .astype(jnp.float32).'
    )


def check_same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
  if jnp.shape(a) != jnp.shape(b):
    raise ValueError(
        f'{name_a} and {name_b} must have the same shape, got '
        f'{name_a}.shape={jnp.shape(a)} and {name_b}.shape={jnp.shape(b)}.'
    )


def check_broadcastable(name: str, mask: Any, target_name: str, target_shape) -> None:
  """`mask` must broadcast to `target_shape` without changing it."""
  shape = tuple(jnp.shape(mask))
  try:
    out = np.broadcast_shapes(shape, tuple(target_shape))
  except ValueError:
    out = None
  if out != tuple(target_shape):
    raise ValueError(
        f'{name} with shape {shape} does not broadcast to {target_name} with '
        f'shape {tuple(target_shape)}.'
    )


def check_positive(name: str, value: Any) -> None:
  """Raises for a non-positive value when it is known at trace time."""
  if is_concrete(value):
    arr = np.asarray(value)
    if arr.size and not np.all(arr > 0):
      raise ValueError(f'{name} must be > 0, got {value}.')


def check_in_unit_interval(name: str, value: Any) -> None:
  """Raises for a value outside [0, 1] when it is known at trace time."""
  if is_concrete(value):
    arr = np.asarray(value)
    if arr.size and not np.all((arr >= 0) & (arr <= 1)):
      raise ValueError(f'{name} must be in [0, 1], got {value}.')


def check_nonnegative(name: str, value: Any) -> None:
  """Raises for a negative value when it is known at trace time."""
  if is_concrete(value):
    arr = np.asarray(value)
    if arr.size and not np.all(arr >= 0):
      raise ValueError(f'{name} must be >= 0, got {value}.')


def check_integer(name: str, x: Any) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
        f'{name} must have an integer dtype, got {dtype} with shape '
        f'{jnp.shape(x)}.'
    )


def check_index_range(name: str, x: Any, size: int, size_name: str) -> None:
  """Raises if a concrete integer array has entries outside [0, size)."""
  if not is_concrete(x):
    return
  arr = np.asarray(x)
  bad = (arr < 0) | (arr >= size)
  if np.any(bad):
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f'{name} must be in [0, {size}) ({size_name}={size}), got '
        f'{arr[index]} at index {index} of {name} with shape {arr.shape}.'
    )


def batch_entry(batch: Any, key: str, role: str) -> Any:
  """``batch[key]``, or a KeyError naming the role and listing the batch's keys."""
  try:
    return batch[key]
  except KeyError:
    raise KeyError(
        f'{role} {key!r} is not in the batch; the batch has {sorted(batch)}'
    ) from None


def align_mask(name: str, mask: Any, values_shape, *, what: str = 'values') -> Any:
  """`mask` as float32 with trailing unit axes, aligned with `values_shape`'s leading axes.

  A ``[batch]`` mask of ``[batch, time]`` values becomes ``[batch, 1]``;
  a ``[1, time]`` mask stays. Raises a ValueError naming `name`, `what` and
  both shapes when the aligned mask does not broadcast to `values_shape`
  without changing it (checked on static shapes, at trace time).
  """
  mask = jnp.asarray(mask, jnp.float32)
  values_shape = tuple(values_shape)
  original = tuple(mask.shape)
  mask = mask.reshape(original + (1,) * max(len(values_shape) - mask.ndim, 0))
  try:
    ok = np.broadcast_shapes(mask.shape, values_shape) == values_shape
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(
        f'{name} with shape {original} does not align with the leading axes of '
        f'{what} with shape {values_shape}.'
    )
  return mask
