"""The objective's core: schedules, the term protocols, `Objective` and its one reduction."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _checks
from kdjax import metrics as metrics_lib
from kdjax._outputs import Outputs

# A hyper-parameter: a constant, or a function of the (traced) step such as
# an optax schedule. Schedules are evaluated inside the jitted step, so a
# changing value never recompiles.
Schedule = float | Callable[[jax.Array], jax.Array]
Batch = Mapping[str, Any]
# What a term receives as its teacher: one model's outputs, a tuple of them
# (several teachers, or the peers of deep mutual learning), or None (no
# teacher in the step).
Teacher = Outputs | tuple[Outputs, ...] | None
# A metric: ``fn(student, teacher, batch, mask) -> (sum, count)``.
Metric = Callable[[Outputs, Teacher, Batch, jax.Array | None], tuple[jax.Array, jax.Array]]


class Term(Protocol):
  """A loss term: per-example values and their mask.

  ``term(student, teacher, batch, step) -> (values, mask)`` where `values`
  has the batch's leading shape (``[batch]`` or ``[batch, time]``) and `mask`
  is ``None`` or aligned with the leading axes of `values` (1 = counts,
  0 = padding): ``[batch]`` masks whole rows of ``[batch, time]`` values,
  ``[1, time]`` masks time steps. `teacher` is one :class:`~kdjax.Outputs`,
  a tuple of them (several teachers or peers) or ``None`` (see
  :data:`Teacher`); a term written for one teacher raises a clear error on
  a tuple.
  """

  def __call__(
      self, student: Outputs, teacher: Teacher, batch: Batch, step: jax.Array
  ) -> tuple[jax.Array, jax.Array | None]:
    ...


class StatefulTerm(abc.ABC):
  """A loss term that carries state from step to step.

  The state (memory banks, an EMA teacher's weights) is a pytree the
  :class:`Objective` keeps under the term's name in
  :attr:`kdjax.step.TrainState.objective_state`: created by :meth:`init`
  (through :func:`kdjax.step.init_train_state`), checkpointed with the
  student, never differentiated, and threaded through every step.

  * ``init(rng, variables) -> state``: the first state; `variables` are the
    student's (``{'params': ..., <collections>}``).
  * ``term(student, teacher, batch, step, *, state, rng, axis_name) ->
    (values, mask, new_state)``: as a :class:`Term`, plus the state. `rng`
    is a key for the term's own noise (the same on every device), and
    `axis_name` is the ``pmap`` axis when the step runs under ``pmap``
    (``None`` otherwise: under ``jax.jit`` every array is global, sharded
    or not, so nothing needs combining).
  * ``after_update(state, variables, step) -> state``: called once the
    optimizer has updated the student, with its new variables (an EMA
    teacher averages them here). The default returns `state`.

  Under ``pmap`` each device sees only its rows; a term whose state
  depends on the batch must make its new state identical on every device
  (e.g. gather its writes over `axis_name`) and say so by setting
  :attr:`combines_across_devices` to True. Objectives with a term that does
  not are refused by the pmap step, naming the term.
  """

  combines_across_devices: bool = False

  @abc.abstractmethod
  def init(self, rng: jax.Array, variables: Mapping[str, Any]) -> Any:
    """The term's first state."""

  @abc.abstractmethod
  def __call__(
      self,
      student: Outputs,
      teacher: Teacher,
      batch: Batch,
      step: jax.Array,
      *,
      state: Any,
      rng: jax.Array,
      axis_name: str | None,
  ) -> tuple[jax.Array, jax.Array | None, Any]:
    """Per-example values, their mask, and the new state."""

  def after_update(self, state: Any, variables: Mapping[str, Any], step: jax.Array) -> Any:
    """The state once the optimizer has produced the student's new `variables`."""
    del variables, step
    return state


def schedule_value(value: Schedule, step: jax.Array) -> jax.Array:
  """Evaluates a constant or a schedule at `step`, as a float32 scalar."""
  if callable(value):
    return jnp.asarray(value(step), jnp.float32)
  return jnp.asarray(value, jnp.float32)


def check_schedule(name: str, value: Schedule, *, positive: bool) -> None:
  """Checks a constant now, a schedule at step 0 (both at build time)."""
  first = value(0) if callable(value) else value
  if np.ndim(first) != 0:
    raise ValueError(f'{name} must be a scalar, got shape {np.shape(first)}.')
  if positive:
    _checks.check_positive(name, first)
  else:
    _checks.check_nonnegative(name, first)


class NoTeacherError(ValueError):
  """A term needs teacher outputs and there are none."""


def require_teacher(teacher: Teacher) -> Outputs:
  """The one teacher a single-teacher term needs, or a clear error."""
  if teacher is None:
    raise NoTeacherError('needs teacher outputs, but there are none')
  if isinstance(teacher, (tuple, list)):
    raise TypeError(
        f'this term takes one teacher but the step passes {len(teacher)} (a '
        'tuple of Outputs); use multi_teacher_distill, per_teacher_terms, or '
        'pick_teacher(term, index) to choose one.'
    )
  return teacher


def as_teachers(teacher: Teacher) -> tuple[Outputs, ...]:
  """The teachers as a tuple (one :class:`~kdjax.Outputs` counts as one)."""
  if teacher is None:
    raise NoTeacherError('needs teacher outputs, but there are none')
  if isinstance(teacher, Outputs):
    return (teacher,)
  teachers = tuple(teacher)
  if not teachers:
    raise ValueError('the tuple of teacher outputs is empty.')
  return teachers


def accuracy_metric(label_key: str = 'label') -> Metric:
  """A metric for :attr:`Objective.metrics`: top-1 accuracy of ``student.logits``.

  (The array function is :func:`kdjax.metrics.accuracy`.)

  Args:
    label_key: the batch entry holding the integer labels.

  Returns:
    ``fn(student, teacher, batch, mask) -> (sum, count)``.
  """

  def fn(student, teacher, batch, mask):
    del teacher
    labels = _checks.batch_entry(batch, label_key, 'label_key')
    return metrics_lib.accuracy(student.logits, labels, mask)

  return fn


# Folded into a step's key to give the objective's own key, apart from the
# student's dropout keys (which are split from the same key).
_OBJECTIVE_KEY = 0x0B7EC7


def objective_rng(step_key: jax.Array) -> jax.Array:
  """The objective's key at a step, from the step's key ``fold_in(rng, step)``."""
  return jax.random.fold_in(step_key, _OBJECTIVE_KEY)


@dataclasses.dataclass(frozen=True)
class Objective:
  """A weighted sum of named terms, each reduced as masked ``sum / count``.

  ``objective(student, teacher, batch, step=step) -> (loss, metrics)``. Each
  term gives per-example values; they are reduced to their mean over the
  unmasked elements (a token-weighted mean for ``[batch, time]``), multiplied
  by the term's weight at `step` and summed. Metrics hold ``loss/<name>``
  as ``(sum, count)`` pairs, ``loss/total``, ``weight/<name>``, and any extra
  metrics given.

  Terms may carry state (:class:`StatefulTerm`); then the state comes from
  :meth:`init` and every evaluation goes through :meth:`apply`, which takes
  and returns it (the train steps do this for you).

  Attributes:
    terms: name -> :class:`Term` or :class:`StatefulTerm`.
    weights: name -> constant or schedule; a missing name has weight 1.
    mask_key: if the batch holds this entry (``[batch]`` or ``[batch, time]``,
      1 = real, 0 = padding), every term and metric is masked by it.
    metrics: name -> ``fn(student, teacher, batch, mask) -> (sum, count)``,
      e.g. ``{'acc/student': accuracy_metric()}``.
  """

  terms: Mapping[str, Term | StatefulTerm]
  weights: Mapping[str, Schedule] = dataclasses.field(default_factory=dict)
  mask_key: str | None = metrics_lib.MASK_KEY
  metrics: Mapping[str, Metric] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.terms:
      raise ValueError('an Objective needs at least one term.')
    for name, term in self.terms.items():
      if not callable(term):
        raise TypeError(
            f'term {name!r} must be callable (a Term or StatefulTerm), got '
            f'{type(term).__name__}; a term constructor returned nothing?')
    unknown = sorted(set(self.weights) - set(self.terms))
    if unknown:
      raise KeyError(
          f'weights given for unknown terms {unknown}; the terms are '
          f'{sorted(self.terms)}.'
      )
    for name, weight in self.weights.items():
      check_schedule(f'weights[{name!r}]', weight, positive=False)

  @property
  def stateful_terms(self) -> tuple[str, ...]:
    """Names of the terms that carry state, in order."""
    return tuple(n for n, t in self.terms.items() if isinstance(t, StatefulTerm))

  def weight(self, name: str, step: jax.Array) -> jax.Array:
    """The weight of term `name` at `step` (float32 scalar)."""
    return schedule_value(self.weights.get(name, 1.0), step)

  def init(self, rng: jax.Array, variables: Mapping[str, Any]) -> dict[str, Any]:
    """The state of every stateful term, by name (``{}`` when there are none).

    Args:
      rng: a PRNG key; each term gets its own, folded with its position.
      variables: the student's variables.

    Returns:
      ``{name: state}`` for the :class:`StatefulTerm`\\ s.
    """
    return {
        name: self.terms[name].init(jax.random.fold_in(rng, i), variables)
        for i, name in enumerate(self.stateful_terms)
    }

  def after_update(
      self, state: Mapping[str, Any], variables: Mapping[str, Any], step: jax.Array
  ) -> dict[str, Any]:
    """Each stateful term's :meth:`StatefulTerm.after_update`, by name."""
    return {
        name: self.terms[name].after_update(state[name], variables, step)
        for name in self.stateful_terms
    }

  def check_devices(self, axis_name: str | None) -> None:
    """Refuses, under a pmap axis, stateful terms that do not combine across devices."""
    if axis_name is None:
      return
    refused = [n for n in self.stateful_terms
               if not self.terms[n].combines_across_devices]
    if refused:
      raise ValueError(
          f'terms {refused} carry state but do not say how it is combined across '
          f'devices (combines_across_devices=False), so under pmap axis '
          f'{axis_name!r} each device would drift to its own state; use the '
          'jax.jit path (kdjax.parallel.jit_train_step), where arrays are global.'
      )

  def term_losses(
      self,
      student: Outputs,
      teacher: Teacher,
      batch: Batch,
      *,
      step: jax.Array | int = 0,
      state: Mapping[str, Any] | None = None,
      rng: jax.Array | None = None,
      axis_name: str | None = None,
  ) -> tuple[dict[str, tuple[jax.Array, jax.Array]], dict[str, Any]]:
    """Each term's masked ``(sum, count)`` as ``loss/<name>``, and the new state.

    This is the objective's one reduction; :meth:`apply` weighs its pairs.
    With `axis_name` (inside ``pmap`` or ``shard_map``) the pairs are the
    sums over that axis: global sums and counts on every device.

    Args:
      student: the student's outputs.
      teacher: the teacher's outputs (one, a tuple, or ``None``).
      batch: the batch.
      step: the step at which schedules are evaluated.
      state: the stateful terms' state (from :meth:`init`); required when
        there are stateful terms.
      rng: key for the stateful terms' noise; required when there are some.
      axis_name: the device axis to sum over, or ``None``.

    Returns:
      ``({'loss/<name>': (sum, count)}, new_state)``.
    """
    step = jnp.asarray(step)
    local, new_state = self._term_sums(student, teacher, batch, step, state, rng, axis_name)
    losses = {f'loss/{name}': _psum_pair(pair, axis_name) for name, pair in local.items()}
    return losses, new_state

  def apply(
      self,
      student: Outputs,
      teacher: Teacher,
      batch: Batch,
      *,
      step: jax.Array | int = 0,
      state: Mapping[str, Any] | None = None,
      rng: jax.Array | None = None,
      axis_name: str | None = None,
  ) -> tuple[jax.Array, dict, dict[str, Any]]:
    """The loss, the metrics and the new state of the stateful terms.

    With `axis_name` (the ``pmap`` path), each term's sum is divided by its
    count summed over the axis: the loss is this device's share of the
    global masked mean, so the gradients summed over devices are exactly
    the global mean's, however the padding is spread. The metrics are then
    global ``(sum, count)`` pairs on every device, and ``loss/total`` the
    global total.

    Args:
      student, teacher, batch, step, state, rng, axis_name: as in
        :meth:`term_losses`.

    Returns:
      ``(loss, metrics, new_state)``.
    """
    step = jnp.asarray(step)
    local, new_state = self._term_sums(student, teacher, batch, step, state, rng, axis_name)
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    for name, pair in local.items():
      term_sum, count = pair
      global_sum, global_count = _psum_pair(pair, axis_name)
      weight = self.weight(name, step)
      total = total + weight * term_sum / jnp.maximum(global_count, 1.0)
      metrics[f'loss/{name}'] = (global_sum, global_count)
      metrics[f'weight/{name}'] = metrics_lib.scalar(weight)
    metrics['loss/total'] = metrics_lib.scalar(
        total if axis_name is None else jax.lax.psum(total, axis_name)
    )
    batch_mask = self._batch_mask(batch)
    for name, fn in self.metrics.items():
      metrics[name] = _psum_pair(fn(student, teacher, batch, batch_mask), axis_name)
    return total, metrics, new_state

  def __call__(
      self,
      student: Outputs,
      teacher: Teacher,
      batch: Batch,
      *,
      step: jax.Array | int = 0,
  ) -> tuple[jax.Array, dict]:
    """``(loss, metrics)`` of a stateless objective (see :meth:`apply`)."""
    if self.stateful_terms:
      raise TypeError(
          f'terms {list(self.stateful_terms)} carry state: call '
          'objective.apply(student, teacher, batch, step=..., state=..., rng=...) '
          '(the train steps of kdjax.step do), with the state from objective.init.'
      )
    loss, metrics, _ = self.apply(student, teacher, batch, step=step)
    return loss, metrics

  def _batch_mask(self, batch: Batch) -> jax.Array | None:
    if self.mask_key is not None and self.mask_key in batch:
      return jnp.asarray(batch[self.mask_key], jnp.float32)
    return None

  def _term_sums(self, student, teacher, batch, step, state, rng, axis_name):
    """Every term's local masked ``(sum, count)``, and the new state."""
    stateful = self.stateful_terms
    if stateful:
      self.check_devices(axis_name)
      missing = sorted(set(stateful) - set(state or {}))
      if missing:
        raise ValueError(
            f'terms {missing} carry state but the objective state has none for them '
            f'(it holds {sorted(state or {})}); build the TrainState with '
            'init_train_state(..., objective=objective).'
        )
      if rng is None:
        raise ValueError(f'terms {list(stateful)} carry state and need an rng.')
    batch_mask = self._batch_mask(batch)
    sums, new_state = {}, {}
    for i, (name, term) in enumerate(self.terms.items()):
      try:
        if isinstance(term, StatefulTerm):
          values, mask, new_state[name] = term(
              student, teacher, batch, step, state=state[name],
              rng=jax.random.fold_in(rng, i), axis_name=axis_name,
          )
        else:
          values, mask = term(student, teacher, batch, step)
      except NoTeacherError:
        raise ValueError(
            f'term {name!r} needs teacher outputs, but the step has no teacher '
            '(teacher_apply=None).'
        ) from None
      mask = _combine_masks(name, values, mask, batch_mask)
      sums[name] = metrics_lib.metric(values, mask)
    return sums, new_state


def _psum_pair(pair, axis_name):
  if axis_name is None:
    return pair
  return jax.lax.psum(pair[0], axis_name), jax.lax.psum(pair[1], axis_name)


def _combine_masks(name, values, mask, batch_mask):
  """The term's mask times the batch's padding mask, both aligned with `values`.

  Both masks align with the values' leading axes: ``[batch]`` masks whole
  rows of ``[batch, time]`` values; a per-time mask is given as ``[1, time]``.
  """
  values_shape = jnp.shape(values)
  aligned = [
      None if m is None else _checks.align_mask(
          f'term {name!r} {label}', m, values_shape, what=f'term {name!r} values')
      for label, m in (('mask', mask), ('batch mask', batch_mask))
  ]
  mask, batch_mask = aligned
  if mask is None:
    return batch_mask
  if batch_mask is None:
    return mask
  return mask * batch_mask
