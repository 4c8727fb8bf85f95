"""Helpers shared by the loss modules: jit after value checks, the compute dtype."""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp

from kdjax import _checks

Array = jax.Array
ValueCheck = Callable[[dict[str, Any]], None]


def jit_after_checks(
    *checks: ValueCheck,
    static_argnames: Sequence[str] = (),
    static_if_python: Sequence[str] = (),
):
  """Decorator: checks the caller's values, then runs `fn` under `jax.jit`.

  Inside jit, hyper-parameters and labels are tracers whose values cannot be
  checked, so `checks` (each taking the bound arguments, defaults applied)
  run first, on the values as given. Shape and dtype checks run in `fn` at
  trace time. The body compiles once per shape and dtype (and value of the
  `static_argnames`) instead of dispatching op by op when called eagerly;
  inside a caller's jit it is inlined.

  The arguments named in `static_if_python` are static when the caller gives
  a Python number (so `fn` can skip work a constant makes dead, e.g. label
  smoothing of 0) and traced when it gives an array (a schedule's value).
  """

  def decorator(fn):
    signature = inspect.signature(fn)
    jitted = jax.jit(fn, static_argnames=tuple(static_argnames))
    jitted_constants = (
        jax.jit(fn, static_argnames=(*static_argnames, *static_if_python))
        if static_if_python else None)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      bound = signature.bind(*args, **kwargs)
      bound.apply_defaults()
      for check in checks:
        check(bound.arguments)
      if jitted_constants is not None and all(
          isinstance(bound.arguments[name], (int, float)) for name in static_if_python):
        return jitted_constants(*args, **kwargs)
      return jitted(*args, **kwargs)

    return wrapper

  return decorator


def compute_dtype(*arrays: Array) -> jnp.dtype:
  """float32, or float64 when an input is float64: the dtype losses work in."""
  return jnp.result_type(jnp.float32, *(a.dtype for a in arrays))


def positive_int_value(name: str) -> ValueCheck:
  """A value check: ``arguments[name]`` is a positive int (it is static under jit)."""
  return lambda arguments: _checks.check_positive_int(name, arguments[name])


def positive_value(name: str) -> ValueCheck:
  """A value check: ``arguments[name] > 0`` when known at call time."""
  return lambda arguments: _checks.check_positive(name, arguments[name])


def nonnegative_value(name: str) -> ValueCheck:
  """A value check: ``arguments[name] >= 0`` when known at call time."""
  return lambda arguments: _checks.check_nonnegative(name, arguments[name])


def unit_interval_value(name: str) -> ValueCheck:
  """A value check: ``arguments[name]`` in ``[0, 1]`` when known at call time."""
  return lambda arguments: _checks.check_in_unit_interval(name, arguments[name])


def check_choice(name: str, choices: Sequence[Any]) -> ValueCheck:
  """A value check: ``arguments[name]`` must be one of `choices`."""

  def check(arguments):
    if arguments[name] not in choices:
      raise ValueError(f'{name} must be one of {list(choices)}, got {arguments[name]!r}.')

  return check
