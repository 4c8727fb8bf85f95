"""Objectives: named loss terms, weights and schedules, masked reduction."""

from __future__ import annotations

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


class Term(Protocol):
  """A loss term: per-example values and their mask.

  ``term(student, teacher, batch, step) -> (values, mask)`` where `values`
  has the batch's leading shape (``[batch]`` or ``[batch, time]``) and `mask`
  is ``None`` or aligned with the leading axes of `values` (1 = counts,
  0 = padding): ``[batch]`` masks whole rows of ``[batch, time]`` values,
  ``[1, time]`` masks time steps.
  """

  def __call__(
      self, student: Outputs, teacher: Outputs | None, batch: Batch, step: jax.Array
  ) -> tuple[jax.Array, jax.Array | None]:
    ...


def evaluate(value: Schedule, step: jax.Array) -> jax.Array:
  """Evaluates a constant or a schedule at `step`, as a float32 scalar."""
  if callable(value):
    return jnp.asarray(value(step), jnp.float32)
  return jnp.asarray(value, jnp.float32)


def _check_schedule(name: str, value: Schedule, *, positive: bool) -> None:
  """Checks a constant now, a schedule at step 0 (both at build time)."""
  first = value(0) if callable(value) else value
  if np.ndim(first) != 0:
    raise ValueError(f'{name} must be a scalar, got shape {np.shape(first)}.')
  if positive:
    _checks.check_positive(name, first)
  else:
    _checks.check_nonnegative(name, first)


class _NoTeacherError(ValueError):
  """A term needs teacher outputs and there are none."""


def _require_teacher(teacher: Outputs | None) -> Outputs:
  if teacher is None:
    raise _NoTeacherError('needs teacher outputs, but there are none')
  if isinstance(teacher, (tuple, list)):
    raise TypeError(
        f'this term takes one teacher but the step passes {len(teacher)} (a '
        'tuple of Outputs); use multi_teacher_distill, per_teacher_terms, or '
        'pick_teacher(term, index) to choose one.'
    )
  return teacher


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
  _check_schedule('temperature', temperature, positive=True)

  def term(student, teacher, batch, step):
    teacher = _require_teacher(teacher)
    args = [student.logits, teacher.logits]
    if label_key is not None:
      args.append(_checks.batch_entry(batch, label_key, 'label_key'))
    kwargs = dict(loss_kwargs)
    if where_key is not None:
      kwargs['where'] = _checks.batch_entry(batch, where_key, 'where_key')
    return loss_fn(*args, temperature=evaluate(temperature, step), **kwargs), None

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
    from kdjax.losses import cross_entropy as loss_fn  # pylint: disable=g-import-not-at-top

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
    teacher = _require_teacher(teacher)
    return loss_fn(
        student.feature(student_feature),
        teacher.feature(teacher_feature),
        **loss_kwargs,
    ), None

  return term


def accuracy(label_key: str = 'label') -> Callable[..., tuple[jax.Array, jax.Array]]:
  """A metric: top-1 accuracy of ``student.logits`` against ``batch[label_key]``."""

  def fn(student, teacher, batch, mask):
    del teacher
    labels = _checks.batch_entry(batch, label_key, 'label_key')
    return metrics_lib.accuracy(student.logits, labels, mask)

  return fn


@dataclasses.dataclass(frozen=True)
class Objective:
  """A weighted sum of named terms, each reduced as masked ``sum / count``.

  ``objective(student, teacher, batch, step=step) -> (loss, metrics)``. Each
  term gives per-example values; they are reduced to their mean over the
  unmasked elements (a token-weighted mean for ``[batch, time]``), multiplied
  by the term's weight at `step` and summed. Metrics hold ``loss/<name>``
  as ``(sum, count)`` pairs, ``loss/total``, ``weight/<name>``, and any extra
  metrics given.

  Attributes:
    terms: name -> :class:`Term`.
    weights: name -> constant or schedule; a missing name has weight 1.
    mask_key: if the batch holds this entry (``[batch]`` or ``[batch, time]``,
      1 = real, 0 = padding), every term and metric is masked by it.
    metrics: name -> ``fn(student, teacher, batch, mask) -> (sum, count)``,
      e.g. ``{'acc/student': accuracy()}``.
  """

  terms: Mapping[str, Term]
  weights: Mapping[str, Schedule] = dataclasses.field(default_factory=dict)
  mask_key: str | None = metrics_lib.MASK_KEY
  metrics: Mapping[str, Callable[..., tuple[jax.Array, jax.Array]]] = (
      dataclasses.field(default_factory=dict)
  )

  def __post_init__(self):
    if not self.terms:
      raise ValueError('an Objective needs at least one term.')
    unknown = sorted(set(self.weights) - set(self.terms))
    if unknown:
      raise KeyError(
          f'weights given for unknown terms {unknown}; the terms are '
          f'{sorted(self.terms)}.'
      )
    for name, weight in self.weights.items():
      _check_schedule(f'weights[{name!r}]', weight, positive=False)

  def weight(self, name: str, step: jax.Array) -> jax.Array:
    return evaluate(self.weights.get(name, 1.0), step)

  def __call__(
      self,
      student: Outputs,
      teacher: Outputs | None,
      batch: Batch,
      *,
      step: jax.Array | int = 0,
  ) -> tuple[jax.Array, dict]:
    step = jnp.asarray(step)
    batch_mask = None
    if self.mask_key is not None and self.mask_key in batch:
      batch_mask = jnp.asarray(batch[self.mask_key], jnp.float32)
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    for name, term in self.terms.items():
      try:
        values, mask = term(student, teacher, batch, step)
      except _NoTeacherError:
        raise ValueError(
            f'term {name!r} needs teacher outputs, but the step has no teacher '
            '(teacher_apply=None).'
        ) from None
      mask = _combine_masks(name, values, mask, batch_mask)
      term_sum, count = metrics_lib.metric(values, mask)
      weight = self.weight(name, step)
      total = total + weight * term_sum / jnp.maximum(count, 1.0)
      metrics[f'loss/{name}'] = (term_sum, count)
      metrics[f'weight/{name}'] = metrics_lib.scalar(weight)
    metrics['loss/total'] = metrics_lib.scalar(total)
    for name, fn in self.metrics.items():
      metrics[name] = fn(student, teacher, batch, batch_mask)
    return total, metrics


def _combine_masks(name, values, mask, batch_mask):
  """Checks shapes and multiplies the term's mask by the batch mask.

  Both masks align with the values' leading axes: ``[batch]`` masks whole
  rows of ``[batch, time]`` values; a per-time mask is given as ``[1, time]``.
  """
  values_shape = jnp.shape(values)
  aligned = []
  for label, m in (('mask', mask), ('batch mask', batch_mask)):
    if m is None:
      aligned.append(None)
      continue
    padded = metrics_lib.leading_mask(m, len(values_shape))
    try:
      ok = np.broadcast_shapes(padded.shape, values_shape) == tuple(values_shape)
    except ValueError:
      ok = False
    if not ok:
      raise ValueError(
          f'term {name!r} {label} with shape {tuple(jnp.shape(m))} does not align with the '
          f'leading axes of term {name!r} values with shape {tuple(values_shape)}.'
      )
    aligned.append(padded)
  mask, batch_mask = aligned
  if mask is None:
    return batch_mask
  if batch_mask is None:
    return mask
  return mask * batch_mask


# ----------------------------------------------------------------------------
# Several teachers: multi-teacher KD, and the peers of deep mutual learning.
# With several teachers (or peers) a term receives their outputs as a tuple.

MULTI_TEACHER_MODES = ('mean_probs', 'mean_logits', 'mean_losses')


def _as_teachers(teacher: Outputs | tuple[Outputs, ...] | None) -> tuple[Outputs, ...]:
  if teacher is None:  # (_require_teacher would also reject the tuples handled here)
    raise _NoTeacherError('needs teacher outputs, but there are none')
  if isinstance(teacher, Outputs):
    return (teacher,)
  teachers = tuple(teacher)
  if not teachers:
    raise ValueError('the tuple of teacher outputs is empty.')
  return teachers


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


def mixture_log_probs(
    teacher_logits: jax.Array,
    weights: jax.Array,
    *,
    temperature: jax.Array | float = 1.0,
    where: jax.Array | None = None,
    axis: int = -1,
) -> jax.Array:
  r"""Log-probabilities of a weighted mixture of teacher distributions.

  Returns :math:`\log \sum_k w_k\, \mathrm{softmax}(t_k / T)`, computed as a
  ``logsumexp`` over teachers of their log-softmaxes (so no probability is
  ever exponentiated and summed in linear space). Classes outside `where`
  (or with a -inf logit in every teacher) get -inf; a row with no class left
  gives 0 everywhere (the losses give 0 there under the same `where`).

  Args:
    teacher_logits: ``[teachers, ..., classes]`` floating logits.
    weights: ``[teachers]`` non-negative mixture weights summing to 1.
    temperature: positive scalar dividing the logits.
    where: optional boolean class mask broadcastable to ``[..., classes]``.
    axis: the class axis of each teacher's logits (``[..., classes]``).

  Returns:
    ``[..., classes]`` float32 log-probabilities.
  """
  logits = jnp.asarray(teacher_logits, jnp.float32) / jnp.asarray(temperature, jnp.float32)
  class_axis = axis % (logits.ndim - 1) + 1
  valid = logits != -jnp.inf
  if where is not None:
    _checks.check_broadcastable('where', where, 'teacher logits', logits.shape[1:])
    mask = jnp.broadcast_to(jnp.asarray(where, bool), logits.shape[1:])
    valid = valid & mask[None]
  logits = jnp.where(valid, logits, -jnp.inf)
  # A teacher row with no valid class would give NaN: use zeros there.
  row_valid = jnp.any(valid, axis=class_axis, keepdims=True)
  logits = jnp.where(row_valid, logits, 0.0)
  log_probs = jax.nn.log_softmax(logits, axis=class_axis)
  w = jnp.asarray(weights, jnp.float32).reshape((-1,) + (1,) * (logits.ndim - 1))
  # b= weights: a zero weight drops a teacher without a log(0).
  return jax.nn.logsumexp(log_probs, axis=0, b=jnp.broadcast_to(w, logits.shape))


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
  _check_schedule('temperature', temperature, positive=True)
  checked_weights = _check_teacher_weights(weights)

  def term(student, teacher, batch, step):
    teachers = _as_teachers(teacher)
    w = _teacher_weights(checked_weights, len(teachers))
    t = evaluate(temperature, step)
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
      target = t * mixture_log_probs(
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
    teachers = _as_teachers(teacher)
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


def _token_mask_from_batch(batch: Batch, mask_key: str | None):
  """``batch[mask_key]`` if the batch has it, else None."""
  if mask_key is None or mask_key not in batch:
    return None
  return batch[mask_key]


def _hyperparameters(step, beta, alpha) -> dict[str, jax.Array | None]:
  return {
      'beta': None if beta is None else evaluate(beta, step),
      'alpha': None if alpha is None else evaluate(alpha, step),
  }


def _check_divergence(divergence: str, beta, alpha) -> None:
  """Checks the name and hyper-parameters at build time."""
  from kdjax.losses import _sequence  # pylint: disable=g-import-not-at-top

  _sequence.divergence_kwargs(
      divergence,
      None if beta is None else (beta(0) if callable(beta) else beta),
      None if alpha is None else (alpha(0) if callable(alpha) else alpha),
  )
  for name, value in (('beta', beta), ('alpha', alpha)):
    if value is not None:
      _check_schedule(name, value, positive=False)


def token_distill(
    divergence: str = 'forward_kl',
    *,
    temperature: Schedule = 1.0,
    vocab_size: int | None = None,
    mask_key: str | None = metrics_lib.MASK_KEY,
    beta: Schedule | None = None,
    alpha: Schedule | None = None,
) -> Term:
  """A token-level distillation term for language models.

  ``losses.token_divergence(student.logits, teacher.logits, ...)`` on
  ``[batch, time, vocab]`` logits: one value per token, masked by
  ``batch[mask_key]`` (``[batch, time]``, 1 = real token) when the batch
  has it, so the objective's ``sum / count`` is the exact token-weighted
  mean (also across devices and hosts). With `vocab_size`, logits past the
  true vocabulary (padding, e.g. 32,064 logits for 32,000 tokens) are
  dropped from both softmaxes.

  Args:
    divergence: ``'forward_kl'``, ``'reverse_kl'``, ``'jsd'``, ``'skew_kl'``,
      ``'skew_reverse_kl'`` or ``'tvd'`` (see
      :func:`kdjax.losses.divergence_fn`).
    temperature: a constant or a schedule of the step.
    vocab_size: the true vocabulary size when the logits carry padding.
    mask_key: the batch entry holding the token mask; ignored when absent.
    beta: the JSD's teacher weight (``'jsd'`` only), constant or schedule.
    alpha: the skew (``'skew_kl'``/``'skew_reverse_kl'`` only).

  Returns:
    A :class:`Term` giving ``[batch, time]`` values and the token mask.
  """
  _check_schedule('temperature', temperature, positive=True)
  _check_divergence(divergence, beta, alpha)

  def term(student, teacher, batch, step):
    from kdjax.losses import token_divergence  # pylint: disable=g-import-not-at-top

    teacher = _require_teacher(teacher)
    mask = _token_mask_from_batch(batch, mask_key)
    values = token_divergence(
        student.logits,
        teacher.logits,
        divergence=divergence,
        temperature=evaluate(temperature, step),
        where=mask,
        vocab_size=vocab_size,
        **_hyperparameters(step, beta, alpha),
    )
    return values, mask

  return term


def chunked_distill(
    divergence: str = 'forward_kl',
    *,
    temperature: Schedule = 1.0,
    student_hidden: str = 'hidden',
    student_unembedding: str = 'unembedding',
    teacher_hidden: str = 'hidden',
    teacher_unembedding: str = 'unembedding',
    vocab_size: int | None = None,
    mask_key: str | None = metrics_lib.MASK_KEY,
    beta: Schedule | None = None,
    alpha: Schedule | None = None,
    token_chunk: int = 128,
    vocab_chunk: int | None = None,
) -> Term:
  """A token-level distillation term that never materialises the logits.

  :func:`kdjax.losses.chunked_divergence` on the models' final hidden states
  and unembedding matrices, read from their :class:`~kdjax.Outputs`
  features (a language model may then return ``logits=None``). Equal to
  :func:`token_distill` on ``hidden @ unembedding`` logits, but computed
  `token_chunk` tokens at a time with a recomputing custom VJP, so the
  ``[batch, time, vocab]`` logits of neither model are ever held.

  Args:
    divergence: ``'forward_kl'``, ``'reverse_kl'``, ``'jsd'``, ``'skew_kl'``,
      ``'skew_reverse_kl'`` or ``'tvd'``.
    temperature: a constant or a schedule of the step.
    student_hidden: the student's feature holding ``[batch, time, dim]``.
    student_unembedding: the student's feature holding ``[dim, vocab]``.
    teacher_hidden: the teacher's feature holding ``[batch, time, dim_t]``.
    teacher_unembedding: the teacher's feature holding ``[dim_t, vocab_t]``.
    vocab_size: the true vocabulary size when the unembeddings are padded.
    mask_key: the batch entry holding the token mask; ignored when absent.
    beta: the JSD's teacher weight (``'jsd'`` only), constant or schedule.
    alpha: the skew (``'skew_kl'``/``'skew_reverse_kl'`` only).
    token_chunk: tokens per chunk.
    vocab_chunk: optional vocabulary block size (see
      :func:`kdjax.losses.chunked_divergence`).

  Returns:
    A :class:`Term` giving ``[batch, time]`` values and the token mask.
  """
  _check_schedule('temperature', temperature, positive=True)
  _check_divergence(divergence, beta, alpha)

  def term(student, teacher, batch, step):
    from kdjax.losses import chunked_divergence  # pylint: disable=g-import-not-at-top

    teacher = _require_teacher(teacher)
    mask = _token_mask_from_batch(batch, mask_key)
    values = chunked_divergence(
        student.feature(student_hidden),
        student.feature(student_unembedding),
        teacher.feature(teacher_hidden),
        teacher.feature(teacher_unembedding),
        divergence=divergence,
        temperature=evaluate(temperature, step),
        where=mask,
        vocab_size=vocab_size,
        token_chunk=token_chunk,
        vocab_chunk=vocab_chunk,
        **_hyperparameters(step, beta, alpha),
    )
    return values, mask

  return term


# ----------------------------------------------------------------------------
# Feature terms that see the padding mask; FitNets' two stages.


def relational_feature(
    loss_fn: Callable[..., jax.Array],
    student_feature: str,
    teacher_feature: str | None = None,
    *,
    mask_key: str | None = metrics_lib.MASK_KEY,
    **loss_kwargs: Any,
) -> Term:
  """A feature term that hands the batch's padding mask to the loss as ``where=``.

  Batch-relational losses (:func:`kdjax.losses.similarity_preserving`,
  :func:`~kdjax.losses.pkt`, :func:`~kdjax.losses.rkd_distance`,
  :func:`~kdjax.losses.rkd_angle`,
  :func:`~kdjax.losses.correlation_congruence`) relate the examples of a
  batch to each other. With :func:`feature`, padding examples would enter
  the relations of the real ones (the :class:`Objective` only drops their own
  rows from the mean); this term passes ``batch[mask_key] > 0`` (``[batch]``)
  as ``where`` when the batch has it, so a padded batch gives the loss of the
  batch without its padding.

  Args:
    loss_fn: a feature loss taking ``where=``.
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
    teacher = _require_teacher(teacher)
    kwargs = dict(loss_kwargs)
    if mask_key is not None and mask_key in batch:
      kwargs['where'] = jnp.asarray(batch[mask_key]) > 0
    return loss_fn(
        student.feature(student_feature),
        teacher.feature(teacher_feature),
        **kwargs,
    ), None

  return term


def fitnets_stage1_objective(
    student_feature: str,
    teacher_feature: str | None = None,
    *,
    resize: str | None = None,
    reduction: str = 'sum',
) -> Objective:
  """Stage 1 of FitNets: the hint loss alone (term ``'hint'``).

  The student's `student_feature` must be the output of a
  :class:`kdjax.losses.HintRegressor` placed after its guided layer (the
  regressor is part of the student's parameters). Only the layers up to the
  guided layer and the regressor receive gradient from this objective; train
  it with an optimizer that leaves the other parameters alone (so weight
  decay does not move them either): :func:`fitnets_stage1_optimizer`.

  Args:
    student_feature: the regressor's output among the student's features.
    teacher_feature: the teacher's hint layer (defaults to `student_feature`).
    resize: passed to :func:`kdjax.losses.hint_loss`.
    reduction: passed to :func:`kdjax.losses.hint_loss` (``'sum'``: the
      paper's ``1/2 ||t - s||²``; ``'mean'``: RepDistiller's MSE).

  Returns:
    An :class:`Objective`.

  References:
    Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015,
    https://arxiv.org/abs/1412.6550.
  """
  from kdjax.losses import hint_loss  # pylint: disable=g-import-not-at-top

  return Objective(terms={
      'hint': feature(
          hint_loss, student_feature, teacher_feature, resize=resize,
          reduction=reduction,
      )
  })


def fitnets_stage1_optimizer(optimizer, trainable: Callable[[str], bool]):
  """Wraps `optimizer` so that only the parameters `trainable` selects move.

  Args:
    optimizer: an optax gradient transformation.
    trainable: ``fn(path) -> bool`` on each parameter's ``/``-joined path
      (e.g. ``'block_0/conv/kernel'``): True for the layers up to the guided
      layer and the :class:`~kdjax.losses.HintRegressor`.

  Returns:
    An optax transformation: `optimizer` on the selected parameters, zero
    updates (no decay, no state) on the others.
  """
  import optax  # pylint: disable=g-import-not-at-top

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: 'train' if trainable(
            '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
        ) else 'freeze',
        params,
    )

  return optax.multi_transform(
      {'train': optimizer, 'freeze': optax.set_to_zero()}, labels
  )


def fitnets_stage2_objective(
    *,
    total_steps: int,
    temperature: Schedule = 4.0,
    lambda_start: float = 4.0,
    lambda_end: float = 1.0,
    label_key: str = 'label',
    metrics: Mapping[str, Callable[..., tuple[jax.Array, jax.Array]]] | None = None,
) -> Objective:
  r"""Stage 2 of FitNets: knowledge distillation with an annealed weight.

  The whole student is trained on :math:`H(y, P_s) + \lambda H(P_t^\tau,
  P_s^\tau)` with :math:`\lambda` decaying linearly from `lambda_start` to
  `lambda_end` over `total_steps` (4 to 1 in the paper). The KD term is
  :func:`kdjax.losses.kl_divergence`, which equals the cross entropy up to
  the teacher's entropy (no gradient) but is multiplied by :math:`\tau^2`;
  its weight is therefore :math:`\lambda / \tau^2`, so that gradients are
  the paper's. Terms ``'kd'`` and ``'ce'``.

  Args:
    total_steps: length of stage 2, over which :math:`\lambda` decays.
    temperature: :math:`\tau`, a constant (the paper tunes it on validation).
    lambda_start: :math:`\lambda` at step 0.
    lambda_end: :math:`\lambda` from `total_steps` on.
    label_key: the batch entry with integer labels.
    metrics: optional extra metrics for the :class:`Objective`.

  Returns:
    An :class:`Objective`.

  References:
    Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015,
    https://arxiv.org/abs/1412.6550.
  """
  from kdjax.losses import kl_divergence  # pylint: disable=g-import-not-at-top

  if callable(temperature):
    raise TypeError('temperature must be a constant for fitnets_stage2_objective.')
  _checks.check_positive('temperature', temperature)
  _checks.check_positive('total_steps', total_steps)

  def kd_weight(step):
    fraction = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
    lam = lambda_start + (lambda_end - lambda_start) * fraction
    return lam / temperature**2

  return Objective(
      terms={
          'kd': distill(kl_divergence, temperature=temperature),
          'ce': supervised(label_key=label_key),
      },
      weights={'kd': kd_weight},
      metrics=dict(metrics or {}),
  )
