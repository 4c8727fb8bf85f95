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


def jit_after_checks(*checks: ValueCheck, static_argnames: Sequence[str] = ()):
  """Decorator: checks the caller's values, then runs `fn` under `jax.jit`.

  Inside jit, hyper-parameters and labels are tracers whose values cannot be
  checked, so `checks` (each taking the bound arguments, defaults applied)
  run first, on the values as given. Shape and dtype checks run in `fn` at
  trace time. The body compiles once per shape and dtype (and value of the
  `static_argnames`) instead of dispatching op by op when called eagerly;
  inside a caller's jit it is inlined.
  """

  def decorator(fn):
    signature = inspect.signature(fn)
    jitted = jax.jit(fn, static_argnames=tuple(static_argnames))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      bound = signature.bind(*args, **kwargs)
      bound.apply_defaults()
      for check in checks:
        check(bound.arguments)
      return jitted(*args, **kwargs)

    return wrapper

  return decorator


def compute_dtype(*arrays: Array) -> jnp.dtype:
  """float32, or float64 when an input is float64: the dtype losses work in."""
  return jnp.result_type(jnp.float32, *(a.dtype for a in arrays))


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
