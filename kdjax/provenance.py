"""Provenance: a config's stable hash, and what a result needs to be checked.

:func:`config_hash` is the SHA-256 of a config's canonical JSON (sorted keys,
no whitespace), so the same values hash alike whatever their order or
container (``ConfigDict``, dict, tuple or list). :func:`record` gathers
what a reader needs to check a result: the git commit and whether the tree
had uncommitted changes, the command line, the config and its hash, library
versions and the machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from typing import Any

import jax

# Distributions whose versions go into every record.
LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy')
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plain(value: Any) -> Any:
  """`value` as JSON-ready builtins (ConfigDicts, tuples and NumPy scalars included)."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, 'item') and not isinstance(value, (str, bytes)):
    return value.item()
  return value


def canonical_json(config: Any) -> str:
  """The config as JSON with sorted keys and no whitespace: equal values, equal text."""
  return json.dumps(_plain(config), sort_keys=True, separators=(',', ':'), allow_nan=True)


def config_hash(config: Any) -> str:
  """SHA-256 (hex) of :func:`canonical_json`; a ``ConfigDict`` or any JSON-like tree.

  Examples:
    >>> config_hash({'b': (1, 2), 'a': 0.5}) == config_hash({'a': 0.5, 'b': [1, 2]})
    True
  """
  return hashlib.sha256(canonical_json(config).encode('utf-8')).hexdigest()


def flatten(config: Any) -> dict[str, Any]:
  """``{'a.b': value}`` for every leaf of the (nested) config; lists are leaves."""
  flat = {}

  def visit(prefix, node):
    if isinstance(node, Mapping) and node:
      for key, value in node.items():
        visit(f'{prefix}.{key}' if prefix else str(key), value)
    else:
      flat[prefix] = node

  visit('', _plain(config))
  return flat


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """The flattened keys that differ between two configs (added, removed or changed)."""
  old, new = flatten(old), flatten(new)
  return sorted(k for k in old.keys() | new.keys()
                if k not in old or k not in new or canonical_json(old[k]) != canonical_json(new[k]))


def _git(*args: str, repo: str) -> str | None:
  try:
    done = subprocess.run(['git', '-C', repo, *args], capture_output=True, text=True,
                          timeout=30, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout if done.returncode == 0 else None


def git_state(repo: str = _REPO) -> dict[str, Any]:
  """``{'commit', 'dirty', 'changed_files'}`` of the checkout holding `repo`.

  ``commit`` is ``None`` outside a git checkout (or without git). ``dirty``
  counts tracked changes and untracked files git does not ignore: either can
  change what runs.
  """
  commit = _git('rev-parse', 'HEAD', repo=repo)
  status = _git('status', '--porcelain', repo=repo)
  if commit is None or status is None:
    return {'commit': None, 'dirty': None, 'changed_files': []}
  files = sorted(line[3:] for line in status.splitlines() if line.strip())
  return {'commit': commit.strip(), 'dirty': bool(files), 'changed_files': files}


def versions() -> dict[str, str | None]:
  """Installed versions of :data:`LIBRARIES` (``None`` if absent) and Python's."""
  out = {}
  for name in LIBRARIES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  out['python'] = platform.python_version()
  return out


def machine() -> dict[str, Any]:
  """The platform, CPU count and model, and the JAX backend and devices."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return {
      'platform': platform.platform(),
      'cpu_count': os.cpu_count(),
      'cpu': cpu,
      'jax_backend': jax.default_backend(),
      'jax_devices': [str(d) for d in jax.devices()],
  }


def record(config: Any, *, command: Sequence[str] | None = None,
           repo: str = _REPO) -> dict[str, Any]:
  """Everything a results file needs so that a reader can check it.

  Args:
    config: the run's config (a ``ConfigDict`` or a JSON-like tree).
    command: the command that ran, as a list of words; ``None`` for this
      process's ``sys.argv`` (which is also always recorded, as ``argv``).
    repo: a directory inside the git checkout whose commit is recorded.

  Returns:
    ``{'git': {commit, dirty, changed_files}, 'command', 'argv', 'config',
    'config_hash', 'versions', 'machine'}``, JSON-serialisable.
  """
  return {
      'git': git_state(repo),
      'command': list(sys.argv if command is None else command),
      'argv': list(sys.argv),
      'config': _plain(config),
      'config_hash': config_hash(config),
      'versions': versions(),
      'machine': machine(),
  }
