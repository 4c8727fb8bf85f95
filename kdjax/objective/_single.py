"""Single-teacher terms: logit distillation, hard labels, features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from kdjax import _checks
from kdjax import losses
from kdjax import metrics as metrics_lib
from kdjax.objective._core import check_schedule
from kdjax.objective._core import require_teacher
from kdjax.objective._core import schedule_value
from kdjax.objective._core import Schedule
from kdjax.objective._core import Term


def distill(
    loss_fn: Callable[..., jax.Array],
    *,
    temperature: Schedule = 1.0,
    label_key: str | None = None,
    where_key: str | None = None,
    **loss_kwargs: Any,
) -> Term:
  """A logit-distillation term: ``loss_fn(student.logits, teacher.logits)``.

  Args:
    loss_fn: a divergence from :mod:`kdjax.losses` (or any function with the
      same contract) returning per-example values.
    temperature: a constant or a schedule of the step; passed to `loss_fn`.
    label_key: if set, ``batch[label_key]`` is passed as the third positional
      argument (for label-aware losses such as :func:`kdjax.losses.decoupled_kd`).
    where_key: if set, ``batch[where_key]`` is the class mask (``where=``).
    **loss_kwargs: further keyword arguments for `loss_fn` (e.g. ``beta``).

  Returns:
    A :class:`Term`.
  """
  check_schedule('temperature', temperature, positive=True)

  def term(student, teacher, batch, step):
    teacher = require_teacher(teacher)
    args = [student.logits, teacher.logits]
    if label_key is not None:
      args.append(_checks.batch_entry(batch, label_key, 'label_key'))
    kwargs = dict(loss_kwargs)
    if where_key is not None:
      kwargs['where'] = _checks.batch_entry(batch, where_key, 'where_key')
    return loss_fn(*args, temperature=schedule_value(temperature, step), **kwargs), None

  return term


def supervised(
    loss_fn: Callable[..., jax.Array] | None = None,
    *,
    label_key: str = 'label',
    **loss_kwargs: Any,
) -> Term:
  """A hard-label term: ``loss_fn(student.logits, batch[label_key])``.

  Args:
    loss_fn: defaults to :func:`kdjax.losses.cross_entropy`.
    label_key: the batch entry holding integer labels ``[batch]`` or
      ``[batch, time]``.
    **loss_kwargs: further keyword arguments for `loss_fn`.

  Returns:
    A :class:`Term`.
  """
  if loss_fn is None:
    loss_fn = losses.cross_entropy

  def term(student, teacher, batch, step):
    del teacher, step
    labels = _checks.batch_entry(batch, label_key, 'label_key')
    return loss_fn(student.logits, labels, **loss_kwargs), None

  return term


def feature(
    loss_fn: Callable[..., jax.Array],
    student_feature: str,
    teacher_feature: str | None = None,
    **loss_kwargs: Any,
) -> Term:
  """A feature term: ``loss_fn(student.features[a], teacher.features[b])``.

  Args:
    loss_fn: per-example feature loss.
    student_feature: name of the student's intermediate.
    teacher_feature: name of the teacher's (defaults to `student_feature`).
    **loss_kwargs: further keyword arguments for `loss_fn`.

  Returns:
    A :class:`Term`.
  """
  teacher_feature = teacher_feature or student_feature

  def term(student, teacher, batch, step):
    del batch, step
    teacher = require_teacher(teacher)
    return loss_fn(
        student.feature(student_feature),
        teacher.feature(teacher_feature),
        **loss_kwargs,
    ), None

  return term


def relational_feature(
    loss_fn: Callable[..., jax.Array],
    student_feature: str,
    teacher_feature: str | None = None,
    *,
    mask_key: str | None = metrics_lib.MASK_KEY,
    **loss_kwargs: Any,
) -> Term:
  """A feature term that hands the batch's padding mask to the loss as ``example_mask=``.

  Batch-relational losses (:func:`kdjax.losses.similarity_preserving`,
  :func:`~kdjax.losses.pkt`, :func:`~kdjax.losses.rkd_distance`,
  :func:`~kdjax.losses.rkd_angle`,
  :func:`~kdjax.losses.correlation_congruence`) relate the examples of a
  batch to each other. With :func:`feature`, padding examples would enter
  the relations of the real ones (the :class:`Objective` only drops their own
  rows from the mean); this term passes ``batch[mask_key] > 0`` (``[batch]``)
  as ``example_mask`` when the batch has it, so a padded batch gives the loss of the
  batch without its padding.

  Args:
    loss_fn: a feature loss taking ``example_mask=``.
    student_feature: name of the student's intermediate.
    teacher_feature: name of the teacher's (defaults to `student_feature`).
    mask_key: the batch entry marking real examples; ``None`` to pass none.
    **loss_kwargs: further keyword arguments for `loss_fn`.

  Returns:
    A :class:`Term`.
  """
  teacher_feature = teacher_feature or student_feature

  def term(student, teacher, batch, step):
    del step
    teacher = require_teacher(teacher)
    kwargs = dict(loss_kwargs)
    if mask_key is not None and mask_key in batch:
      kwargs['example_mask'] = jnp.asarray(batch[mask_key]) > 0
    return loss_fn(
        student.feature(student_feature),
        teacher.feature(teacher_feature),
        **kwargs,
    ), None

  return term
