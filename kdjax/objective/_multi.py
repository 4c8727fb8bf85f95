"""Terms over several teachers: multi-teacher KD, and the peers of deep mutual learning.

With several teachers (or peers) a term receives their outputs as a tuple.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _checks
from kdjax import losses
from kdjax._outputs import Outputs
from kdjax.objective._core import as_teachers
from kdjax.objective._core import check_schedule
from kdjax.objective._core import schedule_value
from kdjax.objective._core import Schedule
from kdjax.objective._core import Term
from kdjax.objective._single import distill


MULTI_TEACHER_MODES = ('mean_probs', 'mean_logits', 'mean_losses')


def _check_teacher_weights(weights: Any) -> np.ndarray | None:
  """Weights of a convex combination of teachers, checked at build time."""
  if weights is None:
    return None
  w = np.asarray(weights, np.float64)
  if w.ndim != 1 or w.size == 0:
    raise ValueError(
        f'weights must be a non-empty 1-D sequence (one per teacher), got shape {w.shape}.'
    )
  if not np.all(w >= 0):
    raise ValueError(f'weights must be >= 0, got {w.tolist()}.')
  if not np.isclose(w.sum(), 1.0, rtol=0.0, atol=1e-6):
    raise ValueError(
        f'weights must sum to 1 (a convex combination of the teachers), got '
        f'{w.tolist()} with sum {w.sum():.6g}; pass weights / sum(weights), and set '
        "the term's overall scale with the Objective's weights."
    )
  return w


def _teacher_weights(weights: np.ndarray | None, count: int) -> jax.Array:
  if weights is None:
    return jnp.full((count,), 1.0 / count, jnp.float32)
  if len(weights) != count:
    raise ValueError(
        f'weights has length {len(weights)} but there are {count} teachers; give '
        'one weight per teacher.'
    )
  return jnp.asarray(weights, jnp.float32)


def _stacked_teacher_logits(teachers: tuple[Outputs, ...]) -> jax.Array:
  """``[teachers, ...]`` float32 logits; all teachers must agree in shape."""
  shapes = [tuple(jnp.shape(t.logits)) for t in teachers]
  if len(set(shapes)) > 1:
    raise ValueError(
        f'all teachers must give logits of one shape, got shapes {shapes} '
        '(in teacher order).'
    )
  return jnp.stack([jnp.asarray(t.logits, jnp.float32) for t in teachers])


def multi_teacher_distill(
    loss_fn: Callable[..., jax.Array],
    *,
    temperature: Schedule = 1.0,
    weights: Any = None,
    mode: str = 'mean_probs',
    label_key: str | None = None,
    where_key: str | None = None,
    **loss_kwargs: Any,
) -> Term:
  r"""A logit-distillation term against several teachers (or DML peers).

  The term receives the teachers' outputs as a tuple (a single
  :class:`~kdjax.Outputs` counts as one teacher) and combines them with
  weights :math:`w_k` (uniform by default) in one of three ways:

  * ``'mean_probs'`` (default): distil towards the mixture of the teachers'
    tempered distributions :math:`\bar p = \sum_k w_k\,
    \mathrm{softmax}(t_k / T)`, i.e. ``loss_fn(student, teacher=m)``. The
    mixture is computed in log space (:func:`mixture_log_probs`) and handed
    to `loss_fn` as the logits :math:`T \log \bar p`, whose tempered softmax
    is :math:`\bar p` itself; so any divergence with the
    :mod:`kdjax.losses` contract (both logit sets divided by ``T``, result
    times ``T²``) measures the student against the mixture.
  * ``'mean_logits'``: distil towards the weighted mean of the teachers'
    logits, :math:`\sum_k w_k t_k`.
  * ``'mean_losses'``: the weighted mean of the per-teacher losses,
    :math:`\sum_k w_k\, \mathrm{loss}(s, t_k)`. With
    :func:`kdjax.losses.kl_divergence` and uniform weights this is the loss
    of deep mutual learning, :math:`\frac{1}{K-1}\sum_{l\ne k}
    \mathrm{KL}(p_l \| p_k)` (:func:`kdjax.step.make_mutual_train_step`).

  The weights form a convex combination: they must be non-negative and sum
  to 1 (checked when the term is built; a wrong length is an error when the
  term first sees the teachers). The overall size of the term is its weight
  in the :class:`Objective`. For a separate weight and metric per teacher use
  :func:`per_teacher_terms` instead.

  Args:
    loss_fn: a divergence from :mod:`kdjax.losses` (or any function with the
      same contract).
    temperature: a constant or a schedule of the step.
    weights: ``[teachers]`` non-negative weights summing to 1, or ``None``
      for the plain mean.
    mode: ``'mean_probs'``, ``'mean_logits'`` or ``'mean_losses'``.
    label_key: if set, ``batch[label_key]`` is passed to `loss_fn` as its
      third positional argument (label-aware losses such as DKD).
    where_key: if set, ``batch[where_key]`` is the class mask (``where=``),
      applied to every teacher's softmax as well.
    **loss_kwargs: further keyword arguments for `loss_fn`.

  Returns:
    A :class:`Term`.

  References:
    You, Xu, Xu and Tao, "Learning from Multiple Teacher Networks", KDD 2017,
    https://doi.org/10.1145/3097983.3098135 (averaged teacher
    distributions); Zhang, Xiang, Hospedales and Lu, "Deep Mutual Learning",
    CVPR 2018, https://arxiv.org/abs/1706.00384.
  """
  if mode not in MULTI_TEACHER_MODES:
    raise ValueError(f'mode must be one of {MULTI_TEACHER_MODES}, got {mode!r}.')
  check_schedule('temperature', temperature, positive=True)
  checked_weights = _check_teacher_weights(weights)

  def term(student, teacher, batch, step):
    teachers = as_teachers(teacher)
    w = _teacher_weights(checked_weights, len(teachers))
    t = schedule_value(temperature, step)
    extra = []
    if label_key is not None:
      extra.append(_checks.batch_entry(batch, label_key, 'label_key'))
    kwargs = dict(loss_kwargs)
    if where_key is not None:
      kwargs['where'] = _checks.batch_entry(batch, where_key, 'where_key')
    if mode == 'mean_losses':
      _stacked_teacher_logits(teachers)  # the shape check
      values = [loss_fn(student.logits, k.logits, *extra, temperature=t, **kwargs)
                for k in teachers]
      return sum(w[i] * v for i, v in enumerate(values)), None
    logits = _stacked_teacher_logits(teachers)
    if mode == 'mean_logits':
      target = jnp.tensordot(w, logits, axes=1)
    else:
      target = t * losses.mixture_log_probs(
          logits, w, temperature=t, where=kwargs.get('where'),
          axis=kwargs.get('axis', -1),
      )
    return loss_fn(student.logits, target, *extra, temperature=t, **kwargs), None

  return term


def pick_teacher(term: Term, index: int) -> Term:
  """A term that hands `term` the outputs of teacher `index` alone.

  For objectives over several teachers (or DML peers), whose terms receive a
  tuple of teacher outputs: ``pick_teacher(feature(loss, 'hidden'), 1)``
  compares the student's features with the second teacher's.

  Args:
    term: any :class:`Term` written for one teacher.
    index: position of the teacher in the tuple.

  Returns:
    A :class:`Term`.
  """

  def picked(student, teacher, batch, step):
    teachers = as_teachers(teacher)
    if not -len(teachers) <= index < len(teachers):
      raise ValueError(
          f'the term uses teacher {index} but there are {len(teachers)} teachers.'
      )
    return term(student, teachers[index], batch, step)

  return picked


def per_teacher_terms(
    loss_fn: Callable[..., jax.Array],
    num_teachers: int,
    *,
    name: str = 'kd',
    temperature: Schedule | tuple[Schedule, ...] = 1.0,
    label_key: str | None = None,
    where_key: str | None = None,
    **loss_kwargs: Any,
) -> dict[str, Term]:
  """One :func:`distill` term per teacher, to give each its own weight and metric.

  ``Objective({**per_teacher_terms(kl, 2), 'ce': supervised()},
  weights={'kd_0': 0.7, 'kd_1': 0.3})`` is the weighted sum of the two
  teachers' divergences, each reported as ``loss/kd_<i>``.

  Args:
    loss_fn: a divergence from :mod:`kdjax.losses`.
    num_teachers: how many teachers the step passes (a term whose teacher is
      missing raises a clear error when first evaluated).
    name: prefix of the term names: ``f'{name}_{i}'``.
    temperature: one constant or schedule for all, or a tuple with one per
      teacher.
    label_key: as in :func:`distill`.
    where_key: as in :func:`distill`.
    **loss_kwargs: as in :func:`distill`.

  Returns:
    ``{f'{name}_{i}': term}`` for ``i`` in ``range(num_teachers)``, in order.
  """
  if int(num_teachers) != num_teachers or num_teachers < 1:
    raise ValueError(f'num_teachers must be a positive integer, got {num_teachers}.')
  if isinstance(temperature, (tuple, list)):
    if len(temperature) != num_teachers:
      raise ValueError(
          f'temperature has length {len(temperature)} but num_teachers is '
          f'{num_teachers}; give one temperature, or one per teacher.'
      )
    temperatures = tuple(temperature)
  else:
    temperatures = (temperature,) * num_teachers
  return {
      f'{name}_{i}': pick_teacher(
          distill(loss_fn, temperature=temperatures[i], label_key=label_key,
                  where_key=where_key, **loss_kwargs),
          i,
      )
      for i in range(num_teachers)
  }
