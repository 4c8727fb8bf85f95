"""Experiment configs: `ml_collections` files with checked command-line overrides.

An experiment is run as::

    python -m experiments.hinton --config=experiments/configs/hinton.py:cpu \\
        --config.student.epochs=50 --workdir=runs/hinton

The config file defines ``get_config(arg)`` returning a ``ConfigDict``; the
part after ``:`` is passed as `arg`. Overrides name existing keys only: an
unknown key is an error that lists the keys that exist, and values are
converted to the type of the value they replace. Each experiment then checks
its whole config against a :class:`Schema` (keys and types from its defaults,
declared bounds, rules over several keys) before it compiles anything, and a
bad config raises one :class:`ConfigError` listing every offending key.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Callable, Iterable, Mapping, Sequence
import dataclasses
import importlib.util
import math
import os
from typing import Any

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads ``path/to/config.py[:arg]`` by calling its ``get_config(arg)``."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--config: no config file {path!r}')
  module_spec = importlib.util.spec_from_file_location('_kdjax_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise AttributeError(f'--config: {path} defines no get_config()')
  config = module.get_config(arg) if arg else module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise TypeError(f'--config: {path}:get_config must return a ConfigDict')
  return config


def _parse_value(text: str, old: Any) -> Any:
  if isinstance(old, bool):
    lowered = text.lower()
    if lowered in ('true', '1', 'yes'):
      return True
    if lowered in ('false', '0', 'no'):
      return False
    raise ValueError(f'expected a boolean, got {text!r}')
  if isinstance(old, str) or old is None:
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
    return value if old is None else text
  value = ast.literal_eval(text)
  if isinstance(old, float) and isinstance(value, int):
    value = float(value)
  if isinstance(old, (tuple, list)):
    value = type(old)(value if isinstance(value, (tuple, list)) else (value,))
  if type(value) is not type(old):
    raise ValueError(f'expected {type(old).__name__}, got {text!r}')
  return value


def override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Sets ``config.<key>`` (dotted) from a command-line string, strictly."""
  parts = key.split('.')
  node = config
  for depth, part in enumerate(parts):
    known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    if part not in known:
      where = '.'.join(parts[:depth]) or 'the config'
      raise KeyError(
          f'unknown config key {key!r}: {where!r} has no {part!r}; known keys: {known}'
      )
    if depth < len(parts) - 1:
      node = node[part]
  old = node[parts[-1]]
  if isinstance(old, ml_collections.ConfigDict):
    raise KeyError(f'config key {key!r} is a group; set one of {sorted(old.keys())}')
  try:
    value = _parse_value(text, old)
  except (ValueError, SyntaxError) as e:
    raise ValueError(f'config key {key!r}: {e}') from None
  with node.unlocked():
    node[parts[-1]] = value


def parse_args(
    argv: Sequence[str] | None = None, *, description: str = '', schema: Schema | None = None,
    **context: Any,
) -> tuple[ml_collections.ConfigDict, str]:
  """Parses ``--config=FILE[:ARG]``, ``--config.KEY=VALUE`` and ``--workdir``.

  Args:
    argv: the command line after the program name (None: ``sys.argv[1:]``).
    description: the ``--help`` text.
    schema: when given, the config (after the overrides) is checked against
      it, and a :class:`ConfigError` lists every problem.
    **context: facts the schema's rules need (e.g. ``device_count``).

  Returns:
    ``(config, workdir)``; the config is locked, so a typo in code reading
    it raises too.
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--config', required=True, help='config file, e.g. experiments/configs/hinton.py:cpu')
  parser.add_argument('--workdir', required=True, help='where metrics, checkpoints and results go')
  args, rest = parser.parse_known_args(argv)
  config = load_config(args.config)
  for item in rest:
    if not item.startswith('--config.') or '=' not in item:
      parser.error(f'unrecognised argument {item!r} (overrides look like --config.key=value)')
    key, _, text = item[len('--config.'):].partition('=')
    override(config, key, text)
  if schema is not None:
    schema.validate(config, **context)
  config.lock()
  return config, args.workdir


# ----------------------------------------------------------------------------
# Validation: every offending key at once, before anything compiles.
#
# A schema is derived from an experiment's default config (its keys and the
# types of their values) plus declared bounds per dotted key and rules over
# several keys. `validate` checks a config against it and raises one
# ConfigError listing every problem: the key, its value and what is allowed.


class ConfigError(ValueError):
  """A config that breaks its schema; `problems` lists ``(key, value, allowed)``."""

  def __init__(self, problems: Sequence[tuple[str, Any, str]]):
    self.problems = tuple(problems)
    lines = [f'  {key} = {value!r}: {allowed}' for key, value, allowed in self.problems]
    count = len(self.problems)
    super().__init__(f'invalid config ({count} problem{"s" if count > 1 else ""}):\n'
                     + '\n'.join(lines))


@dataclasses.dataclass(frozen=True)
class Bound:
  """The allowed values of one key: an interval and/or a set of choices.

  With ``each=True`` the bound applies to every element of a tuple value.
  A NaN is never allowed.
  """

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  choices: tuple[Any, ...] | None = None
  each: bool = False

  def allows(self, value: Any) -> bool:
    if self.each:
      if not isinstance(value, (tuple, list)):
        return False
      element = dataclasses.replace(self, each=False)
      return all(element.allows(v) for v in value)
    if self.choices is not None:
      return value in self.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False
    if math.isnan(value):
      return False
    if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
      return False
    return self.high is None or not (value > self.high or (self.high_open and value == self.high))

  def describe(self) -> str:
    if self.choices is not None:
      text = f'one of {list(self.choices)}'
    elif self.low is not None and self.high is not None:
      text = (f'in {"(" if self.low_open else "["}{self.low:g}, '
              f'{self.high:g}{")" if self.high_open else "]"}')
    elif self.low is not None:
      text = f'{">" if self.low_open else ">="} {self.low:g}'
    else:
      text = f'{"<" if self.high_open else "<="} {self.high:g}'
    return f'each element must be {text}' if self.each else f'must be {text}'


def positive(*, each: bool = False) -> Bound:
  """``> 0`` (of every element with ``each=True``)."""
  return Bound(low=0, low_open=True, each=each)


def nonnegative(*, each: bool = False) -> Bound:
  """``>= 0`` (of every element with ``each=True``)."""
  return Bound(low=0, each=each)


def unit_interval(*, each: bool = False, high_open: bool = False) -> Bound:
  """In ``[0, 1]``, or ``[0, 1)`` with ``high_open=True``."""
  return Bound(low=0, high=1, high_open=high_open, each=each)


def one_of(*choices: Any, each: bool = False) -> Bound:
  """One of `choices` (every element one of them with ``each=True``)."""
  return Bound(choices=tuple(choices), each=each)


def bounds_under(prefix: str, bound: Bound, keys: Iterable[str]) -> dict[str, Bound]:
  """The same `bound` for each ``prefix.key``: ``{f'{prefix}.{key}': bound}``."""
  return {f'{prefix}.{key}': bound for key in keys}


def recipe_bounds(prefix: str, sizes: Iterable[str]) -> dict[str, Bound]:
  """Bounds of a model group trained with a warm-up recipe.

  `sizes` (layer counts, widths, heads), ``epochs``, ``batch_size`` and
  ``learning_rate`` > 0; ``warmup_steps`` and ``weight_decay`` >= 0;
  ``dropout`` in ``[0, 1)``, all under `prefix`.
  """
  bounds = bounds_under(prefix, positive(), (*sizes, 'epochs', 'batch_size', 'learning_rate'))
  bounds.update(bounds_under(prefix, nonnegative(), ('warmup_steps', 'weight_decay')))
  bounds[f'{prefix}.dropout'] = unit_interval(high_open=True)
  return bounds


Problem = tuple[str, Any, str]
Rule = Callable[[ml_collections.ConfigDict, Mapping[str, Any]], Iterable[Problem]]


def _leaves(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key in sorted(config.keys()):
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_leaves(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _type_name(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    inner = {_type_name(v) for v in value}
    return f'tuple of {inner.pop()}' if len(inner) == 1 else 'tuple'
  return 'float (or int)' if isinstance(value, float) else type(value).__name__


def _type_matches(value: Any, default: Any) -> bool:
  if default is None:
    return True
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, (tuple, list)):
    if not isinstance(value, (tuple, list)):
      return False
    kinds = {type(v) for v in default}
    if len(kinds) != 1:
      return True  # an empty or mixed default says nothing about the elements
    return all(_type_matches(v, default[0]) for v in value)
  return isinstance(value, type(default))


def value_at(config: ml_collections.ConfigDict, key: str) -> Any:
  """``config.<key>`` for a dotted key."""
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


@dataclasses.dataclass(frozen=True)
class Schema:
  """Keys and types from `defaults`, `bounds` per dotted key, `rules` over several keys."""

  defaults: ml_collections.ConfigDict
  bounds: Mapping[str, Bound] = dataclasses.field(default_factory=dict)
  rules: Sequence[Rule] = ()

  def __post_init__(self):
    known = _leaves(self.defaults)
    unknown = sorted(set(self.bounds) - set(known))
    if unknown:
      raise ValueError(f'Schema: bounds for keys the defaults lack: {unknown}')

  def problems(self, config: ml_collections.ConfigDict, **context: Any) -> list[Problem]:
    """Every problem of `config`: unknown or missing keys, types, bounds, then rules."""
    expected, given = _leaves(self.defaults), _leaves(config)
    found: list[Problem] = []
    for key in sorted(set(given) - set(expected)):
      near = key.rpartition('.')[0]
      try:
        siblings = sorted(value_at(self.defaults, near).keys() if near else self.defaults.keys())
        found.append((key, given[key], f'unknown key; {near or "the config"!r} has {siblings}'))
      except (KeyError, AttributeError):
        found.append((key, given[key], f'unknown key; the config has no group {near!r}'))
    for key in sorted(set(expected) - set(given)):
      found.append((key, None, 'missing key'))
    typed = {}
    for key in sorted(set(expected) & set(given)):
      if _type_matches(given[key], expected[key]):
        typed[key] = given[key]
      else:
        found.append((key, given[key], f'expected {_type_name(expected[key])}'))
    for key, bound in self.bounds.items():
      if key in typed and not bound.allows(typed[key]):
        found.append((key, typed[key], bound.describe()))
    for rule in self.rules:
      try:
        found.extend(rule(config, context))
      except (TypeError, KeyError, AttributeError, ValueError, ZeroDivisionError):
        if not found:
          raise
        # The rule read a value already listed as wrong: nothing to add.
    return found

  def validate(self, config: ml_collections.ConfigDict, **context: Any) -> None:
    """Raises one :class:`ConfigError` listing every problem, or returns.

    Args:
      config: the experiment's config.
      **context: facts the rules need, e.g. ``device_count``.
    """
    found = self.problems(config, **context)
    if found:
      raise ConfigError(found)


# Rules over several keys. Each returns a function of (config, context)
# yielding problems, for `Schema(rules=...)`.


def mesh_fits_devices(mesh_key: str) -> Rule:
  """The mesh (a group of axis sizes) uses at most, and divides, ``context['device_count']``."""

  def rule(config, context):
    mesh = value_at(config, mesh_key)
    size = math.prod(mesh[axis] for axis in mesh.keys())
    devices = context.get('device_count')
    if devices is not None and (size > devices or devices % size):
      yield (mesh_key, dict(mesh.items()),
             f'the mesh has {size} devices; it must divide the {devices} devices available')

  return rule


def batch_divisible(batch_key: str, mesh_key: str, axes: Sequence[str] = ('data', 'fsdp')) -> Rule:
  """The global batch splits evenly over the mesh axes that shard it."""

  def rule(config, context):
    mesh = value_at(config, mesh_key)
    shards = math.prod(mesh[a] for a in axes if a in mesh)
    batch = value_at(config, batch_key)
    if batch % shards:
      yield (batch_key, batch, f'must be divisible by {shards}, the product of the mesh axes '
             f'{[a for a in axes if a in mesh]} of {mesh_key}')

  return rule


def vocab_covers(student_key: str, teacher_key: str, padding_key: str | None = None) -> Rule:
  """The teacher's vocabulary covers the student's true one (its size minus padding)."""

  def rule(config, context):
    student, teacher = value_at(config, student_key), value_at(config, teacher_key)
    padding = value_at(config, padding_key) if padding_key else 0
    if teacher < student - padding:
      yield (teacher_key, teacher, f'must be >= {student - padding}, the student vocabulary '
             f'{student_key}={student} less its padding {padding}')

  return rule


def layer_map_in_range(map_key: str, student_layers_key: str, teacher_layers_key: str) -> Rule:
  """Each ``(student_layer, teacher_layer)`` pair of the map indexes existing layers."""

  def rule(config, context):
    pairs = value_at(config, map_key)
    student, teacher = value_at(config, student_layers_key), value_at(config, teacher_layers_key)
    bad = [p for p in pairs if len(p) != 2 or not (0 <= p[0] < student and 0 <= p[1] < teacher)]
    if bad:
      yield (map_key, tuple(pairs), f'pairs (student, teacher) with student in [0, {student}) '
             f'and teacher in [0, {teacher}); out of range: {bad}')

  return rule


def schedule_nonnegative(keys: Sequence[str], values: Callable[[Any], Iterable[float]],
                         what: str) -> Rule:
  """A schedule built from `keys` (`values(config)` gives its values) never goes negative."""

  def rule(config, context):
    negative = [v for v in values(config) if v < 0]
    if negative:
      for key in keys:
        yield (key, value_at(config, key), f'{what} goes negative (reaches {min(negative):g})')

  return rule


def non_empty(key: str) -> Rule:
  """A tuple key holds at least one element."""

  def rule(config, context):
    if not value_at(config, key):
      yield (key, value_at(config, key), 'must not be empty')

  return rule


def distinct(key: str) -> Rule:
  """A tuple key's elements are distinct."""

  def rule(config, context):
    values = value_at(config, key)
    if len(set(values)) != len(values):
      yield (key, values, 'elements must be distinct')

  return rule


def divisible(key: str, by_key: str) -> Rule:
  """``config.<key>`` is a multiple of ``config.<by_key>`` (e.g. width by heads)."""

  def rule(config, context):
    value, by = value_at(config, key), value_at(config, by_key)
    if value % by:
      yield (key, value, f'must be divisible by {by_key}={by}')

  return rule


def sum_below(keys: Sequence[str], limit: float) -> Rule:
  """The values of `keys` add up to less than `limit` (e.g. held-out fractions)."""

  def rule(config, context):
    total = sum(value_at(config, k) for k in keys)
    if total >= limit:
      for key in keys:
        yield (key, value_at(config, key), f'{" + ".join(keys)} = {total:g} must be < {limit:g}')

  return rule


def disjoint(key: str, other_key: str) -> Rule:
  """``config.<key>`` (a value or a sequence) shares no value with the
  sequence ``config.<other_key>``: e.g. the seeds that choose the
  hyper-parameters are never among the reported seeds."""

  def rule(config, context):
    value, other = value_at(config, key), tuple(value_at(config, other_key))
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    shared = sorted(set(values) & set(other))
    if shared:
      yield (key, value, f'must share no value with {other_key} = {other}; shared: {shared}')

  return rule


def distinct_non_empty(*keys: str) -> list[Rule]:
  """:func:`non_empty` and :func:`distinct` for each of `keys`."""
  return [rule(key) for key in keys for rule in (non_empty, distinct)]
