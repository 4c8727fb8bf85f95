"""Experiment configs: `ml_collections` files with checked command-line overrides.

An experiment is run as::

    python -m experiments.hinton --config=experiments/configs/hinton.py:cpu \\
        --config.student.epochs=50 --workdir=runs/hinton

The config file defines ``get_config(arg)`` returning a ``ConfigDict``; the
part after ``:`` is passed as `arg`. Overrides name existing keys only: an
unknown key is an error that lists the keys that exist, and values are
converted to the type of the value they replace.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
from collections.abc import Sequence
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
    argv: Sequence[str] | None = None, *, description: str = ''
) -> tuple[ml_collections.ConfigDict, str]:
  """Parses ``--config=FILE[:ARG]``, ``--config.KEY=VALUE`` and ``--workdir``.

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
  config.lock()
  return config, args.workdir
