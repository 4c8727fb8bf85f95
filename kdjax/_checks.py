"""Argument checks shared across kdjax: clear errors at trace time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
from typing import Any
import warnings

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
  """True when `x` has a value now (not a tracer inside jit/grad/vmap)."""
  return not isinstance(x, jax.core.Tracer)


def check_nonnegative_entries(name: str, values: Any, what: str = '') -> None:
  """Every entry of concrete `values` >= 0; names the first offender's index.

  Tracers (values inside jit) cannot be checked and pass.
  """
  if not is_concrete(values):
    return
  arr = np.asarray(values)
  if np.any(arr < 0):
    index = tuple(int(i) for i in np.argwhere(arr < 0)[0])
    raise ValueError(f'{name} must be >= 0{what}, got {arr[index]} at index {index} of '
                     f'{name} with shape {arr.shape}.')


def _check_dtype_kind(name: str, x: Any, kind: Any, kind_text: str, hint: str) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, kind):
    raise TypeError(
        f'{name} must have {kind_text} dtype, got {dtype} with shape '
        f'{jnp.shape(x)}{hint}.'
    )


def check_floating(name: str, x: Any) -> None:
  _check_dtype_kind(
      name, x, jnp.floating, 'a floating', '; cast it with .astype(jnp.float32)'
  )


def check_integer(name: str, x: Any) -> None:
  _check_dtype_kind(name, x, jnp.integer, 'an integer', '')


def check_same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
  if jnp.shape(a) != jnp.shape(b):
    raise ValueError(
        f'{name_a} and {name_b} must have the same shape, got '
        f'{name_a}.shape={jnp.shape(a)} and {name_b}.shape={jnp.shape(b)}.'
    )


def _broadcasts_to(shape: tuple[int, ...], target_shape: tuple[int, ...]) -> bool:
  """True when `shape` broadcasts to `target_shape` without changing it."""
  try:
    return np.broadcast_shapes(shape, target_shape) == target_shape
  except ValueError:
    return False


def check_broadcastable(name: str, mask: Any, target_name: str, target_shape) -> None:
  """`mask` must broadcast to `target_shape` without changing it (NumPy rule).

  NumPy broadcasting aligns the TRAILING axes: this is the check for class
  masks (``where=`` of the logit losses, optax's convention) and other
  arrays that broadcast like NumPy's. Masks over examples or tokens align
  with the LEADING axes instead: :func:`align_mask`.
  """
  shape = tuple(jnp.shape(mask))
  if not _broadcasts_to(shape, tuple(target_shape)):
    raise ValueError(
        f'{name} with shape {shape} does not broadcast to {target_name} with '
        f'shape {tuple(target_shape)}.'
    )


def align_mask(
    name: str, mask: Any, values_shape: Sequence[int], *, what: str = 'values'
) -> jax.Array:
  """A mask over the leading axes of some values, as float32 aligned with them.

  The one rule for masks over examples or tokens in kdjax (metrics, token
  losses, objectives): a mask covers the LEADING axes of the values, so a
  ``[batch]`` mask on ``[batch, time]`` values masks whole rows and a
  ``[batch, time]`` mask single tokens (a per-time mask is ``[1, time]``).
  Trailing unit axes are added so that NumPy broadcasting then applies:
  ``[batch]`` becomes ``[batch, 1]``. Shapes are static, so the check runs
  at trace time, also under ``jit``. (Class masks broadcast the NumPy way,
  trailing axes first: :func:`check_broadcastable`.)

  Args:
    name: the mask's name in the error message (e.g. ``'token_mask'``).
    mask: ``[d0, ..., dk]`` weights (1 = counts, 0 = padding), bool, int or
      float, with ``k < len(values_shape)``; each ``di`` equal to the
      values' ``i``-th dimension or 1.
    values_shape: the shape of the values the mask applies to.
    what: how the error message names the values.

  Returns:
    The mask as float32 with ``len(values_shape)`` axes (trailing unit axes
    added); broadcast it to `values_shape` where a full mask is needed.

  Raises:
    ValueError: if the aligned mask does not broadcast to `values_shape`;
      the message names `name`, `what` and both shapes.
  """
  shape = tuple(jnp.shape(mask))
  values_shape = tuple(values_shape)
  aligned = shape + (1,) * (len(values_shape) - len(shape))
  if len(shape) > len(values_shape) or not _broadcasts_to(aligned, values_shape):
    raise ValueError(
        f'{name} with shape {shape} does not align with the leading axes of '
        f'{what} with shape {values_shape} (a [batch] mask covers whole rows '
        'of [batch, time] values, a [batch, time] mask single entries).'
    )
  return jnp.asarray(mask, jnp.float32).reshape(aligned)


def _check_known_value(
    name: str, value: Any, holds: Callable[[np.ndarray], np.ndarray], rule: str
) -> None:
  """Raises unless `holds` everywhere, when `value` is known at trace time."""
  if is_concrete(value):
    arr = np.asarray(value)
    if arr.size and not np.all(holds(arr)):
      raise ValueError(f'{name} must be {rule}, got {value}.')


def check_positive_int(name: str, value: Any) -> None:
  """Raises unless `value` is a Python or NumPy int > 0 (a bool is not an int here)."""
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
      or value <= 0):
    raise ValueError(f'{name} must be a positive int, got {value!r}.')


def check_positive(name: str, value: Any) -> None:
  """Raises for a non-positive value when it is known at trace time."""
  _check_known_value(name, value, lambda arr: arr > 0, '> 0')


def check_in_unit_interval(name: str, value: Any) -> None:
  """Raises for a value outside [0, 1] when it is known at trace time."""
  _check_known_value(name, value, lambda arr: (arr >= 0) & (arr <= 1), 'in [0, 1]')


def check_nonnegative(name: str, value: Any) -> None:
  """Raises for a negative value when it is known at trace time."""
  _check_known_value(name, value, lambda arr: arr >= 0, '>= 0')


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


def renamed_argument(old: str, new: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Decorator: keyword `old` still works for one release, as `new`, with a warning.

  The wrapped function's signature (``inspect.signature``, the docs) shows
  only `new`. Passing `old` emits a :class:`DeprecationWarning` pointing at
  the caller's line and passes the value on as `new`; passing both is a
  TypeError. Put it outermost (above ``jit`` wrappers) so the warning comes
  once per call, at the call.
  """

  def decorator(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      if old in kwargs:
        if new in kwargs:
          raise TypeError(
              f'{fn.__name__}() got both {old}= (its deprecated name) and '
              f'{new}=; pass only {new}=.'
          )
        warnings.warn(
            f'{fn.__name__}({old}=...) is deprecated and will be removed in '
            f'the next release; pass {new}=... (in kdjax `where=` is only '
            'ever a class mask).',
            DeprecationWarning,
            stacklevel=2,
        )
        kwargs[new] = kwargs.pop(old)
      return fn(*args, **kwargs)

    return wrapper

  return decorator
