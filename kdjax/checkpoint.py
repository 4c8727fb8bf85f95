"""Checkpoints with orbax: the student's state and data position, the teacher apart.

A student checkpoint holds the :class:`~kdjax.step.TrainState` (parameters,
other collections, optimizer state, step, PRNG key) and a small JSON item
with the data iterator's position and whatever metadata the caller adds. The
teacher is never part of it: it is read from its own checkpoint with
:func:`load_teacher` and passed to the step as an argument.

Orbax writes each checkpoint to a temporary directory
(``<step>.orbax-checkpoint-tmp``) and renames it to ``<step>`` only when every
file is written, so a run killed mid-save keeps its previous checkpoint as the
latest; :func:`make_manager` removes such leftovers when it opens the
directory. A latest checkpoint that cannot be read (files truncated or
deleted afterwards) is set aside with a warning and the one before it is
restored (:func:`restore`). docs/reliability.md says what is tested.
"""

from __future__ import annotations

from collections.abc import Mapping
import os
from typing import Any
import warnings

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from kdjax import parallel
from kdjax import provenance
from kdjax.step import TrainState

_STATE = 'state'
_META = 'meta'
_TEACHER = 'teacher'
# Unreadable checkpoints are moved here, out of the manager's sight.
CORRUPT_DIR = 'corrupt'


class CorruptCheckpointWarning(UserWarning):
  """The latest checkpoint could not be read; an older one was restored."""


def make_manager(
    directory: str | os.PathLike[str],
    *,
    max_to_keep: int | None = 3,
    save_interval_steps: int = 1,
    enable_async: bool = False,
) -> ocp.CheckpointManager:
  """An orbax ``CheckpointManager`` for student checkpoints in `directory`.

  Args:
    directory: where checkpoints go (created if missing; absolute paths are
      safest with orbax).
    max_to_keep: how many recent checkpoints to keep (``None``: all).
    save_interval_steps: :func:`save` without ``force`` only saves on
      multiples of this.
    enable_async: save in a background thread (call ``manager.wait_until_finished()``
      before reading or exiting).

  Returns:
    The manager; close it with ``manager.close()`` when done. Temporary
    directories of saves that never finished (a killed process) are removed
    when it opens `directory`.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_interval_steps=save_interval_steps,
      create=True,
      enable_async_checkpointing=enable_async,
      cleanup_tmp_directories=True,
  )
  manager = ocp.CheckpointManager(
      os.path.abspath(os.fspath(directory)),
      options=options,
      item_names=(_STATE, _META),
  )
  # Orbax removes the leftovers in a background thread and waits for it only
  # in its next save; a process that restores and exits at once would leave
  # that thread behind, so wait here (the method is private: skip it if gone).
  getattr(manager, '_maybe_await_cleanup_tmp_directory', lambda: None)()
  return manager


def save(
    manager: ocp.CheckpointManager,
    state: TrainState,
    *,
    data_state: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    config: Any = None,
    force: bool = False,
) -> bool:
  """Saves the student state at ``state.step``.

  Args:
    manager: from :func:`make_manager`.
    state: the student's :class:`~kdjax.step.TrainState`.
    data_state: the data iterator's position (JSON-serialisable, e.g. a grain
      iterator's ``get_state()``), restored with the state.
    metadata: any other JSON-serialisable values (seeds, notes).
    config: the run's config (``ConfigDict`` or JSON-like tree); its
      flattened items and :func:`kdjax.provenance.config_hash` are stored, so
      that :func:`restore` given a config can refuse another run's checkpoint.
    force: save even if the step is not on the save interval.

  Returns:
    Whether a checkpoint was written.
  """
  if not isinstance(state, TrainState):
    raise TypeError(
        f'save expects the student TrainState, got {type(state).__name__}; '
        'the teacher is saved apart with save_teacher.'
    )
  step = int(jax.device_get(state.step))
  meta = {'data_state': data_state, 'metadata': dict(metadata or {})}
  if config is not None:
    meta['config'] = provenance.flatten(config)
    meta['config_hash'] = provenance.config_hash(config)
  return manager.save(
      step,
      args=ocp.args.Composite(
          **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)}
      ),
      force=force,
  )


def restore(
    manager: ocp.CheckpointManager,
    target: TrainState,
    *,
    step: int | None = None,
    config: Any = None,
) -> tuple[TrainState, Any, dict] | None:
  """Restores the latest (or a given) student checkpoint.

  Without `step`, a latest checkpoint that cannot be read (a file truncated,
  zeroed or deleted: orbax's JSON and OCDBT readers check lengths and
  checksums) is skipped for the next older one, until one restores; then
  each skipped one is moved to ``<directory>/corrupt/<step>`` and a
  :class:`CorruptCheckpointWarning` names it and its error. If none
  restores (a damaged directory, or a `target` of another structure),
  nothing is moved and ``ValueError`` is raised. With several processes
  they agree (:func:`kdjax.parallel.any_process`): a checkpoint that fails
  in any process is skipped by all.

  Args:
    manager: from :func:`make_manager`.
    target: a state with the right structure (e.g. a freshly initialised
      one); its shapes, dtypes and shardings are used, its values ignored.
    step: the step to restore (no fallback); ``None`` for the latest
      readable one.
    config: the current run's config; if given, the checkpoint must have been
      saved with a config of the same hash.

  Returns:
    ``(state, data_state, metadata)``, or ``None`` if there is no checkpoint.

  Raises:
    ConfigMismatchError: `config` was given and the checkpoint was saved
      with another config (the error names the keys that changed) or
      with none.
    ValueError: no checkpoint in the directory could be restored into
      `target` (the error of the latest is chained).
  """
  if step is not None:
    return _restore_step(manager, target, step, config)
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for candidate in steps:
    try:
      restored, error = _restore_step(manager, target, candidate, config), None
    except ConfigMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      restored, error = None, e
    if parallel.any_process(error is not None):
      failures.append((candidate, error))
      continue
    # An older checkpoint of this run restored into the same target, so the
    # newer ones are damaged (not a target of another structure): set them aside.
    for failed, failure in failures:
      moved = _set_aside(manager, failed)
      warnings.warn(
          f'checkpoint {failed} in {manager.directory} could not be read '
          f'({type(failure).__name__ if failure else "in another process"}: '
          f'{str(failure)[:300] if failure else ""}); moved to {moved}; '
          f'restored checkpoint {candidate}', CorruptCheckpointWarning, stacklevel=2)
    return restored
  if failures:
    first = failures[0][1]
    raise ValueError(
        f'none of the checkpoints {steps} in {manager.directory} could be restored into '
        f'this target (nothing was moved); the latest failed with '
        f'{type(first).__name__ if first else "an error in another process"}: '
        f'{str(first)[:300] if first else ""}') from first
  return None


def _restore_step(manager, target, step, config):
  if config is not None:
    _check_config(manager, step, config)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(
      step,
      args=ocp.args.Composite(
          **{_STATE: ocp.args.StandardRestore(abstract), _META: ocp.args.JsonRestore()}
      ),
  )
  meta = restored[_META]
  return restored[_STATE], meta.get('data_state'), meta.get('metadata', {})


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves `step`'s directory to ``corrupt/<step>[.n]`` so a new save can take its place."""
  if jax.process_count() > 1:  # every process names the same destination
    multihost_utils.sync_global_devices(f'kdjax_set_aside_{step}_begin')
  corrupt = os.path.join(os.fspath(manager.directory), CORRUPT_DIR)
  source = os.path.join(os.fspath(manager.directory), str(step))
  destination, n = os.path.join(corrupt, str(step)), 0
  while os.path.exists(destination):
    n += 1
    destination = os.path.join(corrupt, f'{step}.{n}')
  if jax.process_index() == 0:
    os.makedirs(corrupt, exist_ok=True)
    os.rename(source, destination)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'kdjax_set_aside_{step}_end')
  manager.reload()
  return destination


class ConfigMismatchError(ValueError):
  """A checkpoint belongs to another config than the run restoring it."""


def _check_config(manager: ocp.CheckpointManager, step: int, config: Any) -> None:
  """Raises ConfigMismatchError unless `step`'s checkpoint was saved with `config`."""
  meta = manager.restore(step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))[_META]
  where = f'the checkpoint at step {step} in {manager.directory}'
  if 'config_hash' not in meta:
    raise ConfigMismatchError(
        f'{where} records no config, so it cannot be checked against this run\'s; '
        'use a fresh directory (or restore without config=)')
  if meta['config_hash'] == provenance.config_hash(config):
    return
  old, new = meta.get('config', {}), provenance.flatten(config)
  changes = []
  for key in provenance.changed_keys(old, new):
    before = repr(old[key]) if key in old else '(absent)'
    after = repr(new[key]) if key in new else '(absent)'
    changes.append(f'{key}: {before} -> {after}')
  raise ConfigMismatchError(
      f'{where} was saved with another config; changed keys: '
      + ('; '.join(changes) or '(none by value: the hash function changed)')
      + '. Use a fresh directory to train with the new config.')


def save_teacher(
    directory: str | os.PathLike[str], variables: Any, *, overwrite: bool = False
) -> None:
  """Writes a teacher's variables to their own checkpoint at `directory`.

  Args:
    directory: where the teacher goes (not a student's checkpoint directory).
    variables: the teacher's variables.
    overwrite: replace an existing teacher checkpoint; otherwise that is an
      error, so a saved teacher is never lost by accident.
  """
  path = os.path.join(os.path.abspath(os.fspath(directory)), _TEACHER)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(
        f'a teacher checkpoint already exists at {path}; pass overwrite=True to replace it'
    )
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, variables, force=overwrite)


def load_teacher(directory: str | os.PathLike[str], target: Any | None = None) -> Any:
  """Reads a teacher's variables written by :func:`save_teacher`.

  Args:
    directory: the directory given to :func:`save_teacher`.
    target: optional variables (or ``jax.ShapeDtypeStruct`` tree) giving
      structure, dtypes and shardings (e.g. to place a large teacher sharded).

  Returns:
    The variables.
  """
  path = os.path.join(os.path.abspath(os.fspath(directory)), _TEACHER)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no teacher checkpoint at {path}')
  abstract = None
  if target is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path, abstract)
