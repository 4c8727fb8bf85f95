"""Per-example divergences between student and teacher logits."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from kdjax import _checks
from kdjax.losses._common import compute_dtype
from kdjax.losses._common import jit_after_checks
from kdjax.losses._common import nonnegative_value
from kdjax.losses._common import positive_value
from kdjax.losses._common import unit_interval_value
from kdjax.losses._common import ValueCheck

Array = jax.Array
ArrayLike = Any

# Conventions shared by every loss in this module:
#
# * Argument order is always ``(student_logits, teacher_logits, ...)``.
# * The class axis (`axis`) is reduced; all other axes are kept, nothing is
#   reduced over the batch.
# * Work is done in float32 (float64 inputs stay float64), in log-space.
# * A class takes part when ``where`` is True there and its logit is not -inf;
#   excluded classes are dropped from the softmax normalisation and from the
#   sum, exactly as if they had been sliced away. A row with no class left
#   gives 0 with zero gradients.
# * ``temperature`` divides both logit sets and the divergence is multiplied by
#   ``temperature**2`` (Hinton et al., 2015), so gradient magnitudes do not
#   shrink as 1/T² and different divergences stay comparable.
# * The teacher is a fixed target: its logits pass through `stop_gradient`.


# ----------------------------------------------------------------------------
# Shared helpers.

# `axis` decides the layout, so it is static.
_jit_after_checks = functools.partial(jit_after_checks, static_argnames=('axis',))


def _class_axis(name: str, shape: tuple[int, ...], axis: int) -> int:
  ndim = len(shape)
  if ndim == 0:
    raise ValueError(
        f'{name} must have at least one axis (the class axis), got shape '
        f'{shape}.'
    )
  if not -ndim <= axis < ndim:
    raise ValueError(
        f'axis={axis} is out of range for {name} with shape {shape}.'
    )
  return axis % ndim


def _class_mask(where: ArrayLike | None, name: str, shape, axis: int):
  """Broadcasts `where` to `shape` and moves the class axis last."""
  if where is None:
    return None
  _checks.check_broadcastable('where', where, name, shape)
  mask = jnp.broadcast_to(jnp.asarray(where).astype(bool), shape)
  return jnp.moveaxis(mask, axis, -1)


def _check_temperature(temperature: ArrayLike) -> None:
  if jnp.ndim(temperature) != 0:
    raise ValueError(
        f'temperature must be a scalar, got shape {jnp.shape(temperature)}.'
    )
  _checks.check_positive('temperature', temperature)


def _prepare_pair(
    student_logits, teacher_logits, temperature, where, axis, tempered=True
):
  """Checks arguments; returns the logits [..., classes] and the mask.

  The logits are divided by `temperature` unless `tempered` is False.
  """
  _checks.check_floating('student_logits', student_logits)
  _checks.check_floating('teacher_logits', teacher_logits)
  _checks.check_same_shape(
      'student_logits', student_logits, 'teacher_logits', teacher_logits
  )
  shape = jnp.shape(student_logits)
  axis = _class_axis('student_logits', shape, axis)
  mask = _class_mask(where, 'student_logits', shape, axis)
  _check_temperature(temperature)
  student_logits = jnp.asarray(student_logits)
  teacher_logits = lax.stop_gradient(jnp.asarray(teacher_logits))
  dtype = compute_dtype(student_logits, teacher_logits)
  temperature = jnp.asarray(temperature, dtype)
  student = jnp.moveaxis(student_logits.astype(dtype), axis, -1)
  teacher = jnp.moveaxis(teacher_logits.astype(dtype), axis, -1)
  if tempered:
    student, teacher = student / temperature, teacher / temperature
  return student, teacher, mask


def _scale_by_temperature(divergence: Array, temperature: ArrayLike) -> Array:
  return divergence * jnp.square(jnp.asarray(temperature, divergence.dtype))


def _masked_max_and_log_sum(x: Array, valid: Array | None) -> tuple[Array, Array]:
  """``(m, l)`` with ``log(sum(exp(x)))`` = ``m + l`` over valid entries, keepdims.

  `valid` None means every entry; a -inf entry then adds ``exp(-inf) = 0``
  with a zero derivative by itself, so no select is spent on it (the train
  step's hot path: see ``benchmarks/step_overhead.py``). `m` is the row's
  largest valid entry (0 in a row with none, no gradient) and `l` is -inf
  in a row with no valid entry, with zero gradients there.
  """
  # -inf (not x) on invalid entries: exp(-inf) = 0 has a zero derivative.
  masked = x if valid is None else jnp.where(valid, x, -jnp.inf)
  row_max = jnp.max(masked, axis=-1, keepdims=True)
  row_max = lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  shifted = masked - row_max  # -inf - finite = -inf: invalid entries stay out
  sum_exp = jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True)
  has_mass = sum_exp != 0  # not `> 0`: a NaN sum must stay NaN
  log_sum = jnp.log(jnp.where(has_mass, sum_exp, 1.0))
  return row_max, jnp.where(has_mass, log_sum, -jnp.inf)


def _masked_logsumexp(x: Array, valid: Array | None) -> Array:
  """``log(sum(exp(x)))`` over valid entries of the last axis, keepdims.

  `valid` None means every entry (see :func:`_masked_max_and_log_sum`).
  Gives -inf where a row has no valid entry, with zero gradients there.
  """
  row_max, log_sum = _masked_max_and_log_sum(x, valid)
  return row_max + log_sum


def _masked_log_softmax(
    logits: Array, mask: Array | None
) -> tuple[Array, Array]:
  """Log-softmax over the last axis restricted to the valid classes.

  Args:
    logits: ``[..., classes]``.
    mask: boolean ``[..., classes]`` or None (all classes).

  Returns:
    ``(log_probs, valid)``: `log_probs` is -inf on classes that take no part
    (masked out or with a -inf logit); `valid` marks the others.
  """
  # `!=` rather than `>`: a NaN logit stays valid and shows up in the result.
  valid = logits != -jnp.inf
  if mask is not None:
    valid = valid & mask
  # Without a class mask the -inf logits are the only invalid entries, which
  # the log-sum-exp leaves out by itself.
  row_max, log_sum = _masked_max_and_log_sum(logits, None if mask is None else valid)
  # (x - max) - log_sum, not x - (max + log_sum): at logits of 1e4 the sum
  # max + log_sum would round to float32's spacing there (~1e-3), and the
  # result would no longer be invariant to a shift of the logits.
  return jnp.where(valid, (logits - row_max) - log_sum, -jnp.inf), valid


def _kl(log_p: Array, valid_p: Array, log_q: Array) -> Array:
  """``sum_c p_c (log p_c - log q_c)`` over classes where p > 0.

  Entries outside `valid_p` are replaced before any arithmetic, so that no
  0 * inf reaches the value or the gradient. Where q = 0 (``log_q`` -inf) but
  p > 0 the result is +inf, as the divergence is, even when p underflows to
  0; that term is a constant, so the gradient is the finite part's (no NaN).
  """
  # A -inf `log_p` is no mass even where `valid_p` is True. jnp.where
  # broadcasts without rank promotion: `valid_p` may have fewer axes.
  has_mass = jnp.where(valid_p, log_p != -jnp.inf, False)
  finite = has_mass & (log_q != -jnp.inf)
  log_p = jnp.where(finite, log_p, 0.0)
  log_q = jnp.where(finite, log_q, 0.0)
  terms = jnp.exp(log_p) * (log_p - log_q)  # exp(0) * (0 - 0) = 0 outside `finite`
  # One select and one reduction (the train step's hot path): +inf where p
  # has mass and q none; selected, so the gradient is the finite terms'.
  return jnp.sum(jnp.where(has_mass & ~finite, jnp.inf, terms), axis=-1)


def _log_mixture(
    log_a: Array, valid_a: Array, log_b: Array, valid_b: Array, weight_a
) -> Array:
  """Stable ``log(weight_a * a + (1 - weight_a) * b)``, -inf where both 0."""
  weight_a = jnp.asarray(weight_a, log_a.dtype)
  term_a = jnp.where(valid_a, jnp.log(weight_a) + log_a, -jnp.inf)
  term_b = jnp.where(valid_b, jnp.log1p(-weight_a) + log_b, -jnp.inf)
  # logaddexp(-inf, -inf) has NaN derivatives: feed it zeros there instead.
  empty = (term_a == -jnp.inf) & (term_b == -jnp.inf)
  mixed = jnp.logaddexp(
      jnp.where(empty, 0.0, term_a), jnp.where(empty, 0.0, term_b)
  )
  return jnp.where(empty, -jnp.inf, mixed)


# ----------------------------------------------------------------------------
# Unmasked fast paths with their derivatives written out.
#
# The train step's common case: no class mask, so only -inf logits leave a
# class out. Autodiff through the masked forms above differentiates every
# select that keeps -inf and 0 * inf away from the gradient (about forty
# selects in a KD + CE step); with the derivatives written out, the backward
# pass is one elementwise expression per loss. Values, the rules for -inf
# logits, NaN propagation and the gradients are the masked forms', except
# the student gradient of a +inf KL (the cross entropy's here, the finite
# terms' there; both finite). The tests compare both ways on -inf rows,
# underflow and NaN; see ``benchmarks/step_overhead.py`` for the cost.


def _unmasked_log_softmax(x: Array) -> tuple[Array, Array, Array]:
  """``(log_probs, shifted, row_max)``: -inf entries take no part.

  `shifted` is ``x`` minus the row's largest finite-guarded entry (0 in a row
  whose maximum is not finite) and `row_max` the unguarded maximum (-inf
  exactly in a row of -inf entries, which gives -inf log-probabilities).
  """
  row_max = jnp.max(x, axis=-1, keepdims=True)
  shifted = x - jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  sum_exp = jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True)
  # A row of -inf: shifted = -inf and the sum 0; log(1) keeps it -inf.
  # `== 0`, not `> 0`: a NaN logit makes the sum NaN, which must show.
  log_probs = shifted - jnp.log(jnp.where(sum_exp == 0, 1.0, sum_exp))
  return log_probs, shifted, row_max


def _forward_kl_parts(student, teacher, temperature):
  log_q, shifted_q, _ = _unmasked_log_softmax(student / temperature)
  log_p, shifted_p, teacher_max = _unmasked_log_softmax(teacher / temperature)
  has_mass = log_p != -jnp.inf  # True on NaN: it propagates
  finite = has_mass & (log_q != -jnp.inf)
  p = jnp.exp(log_p)
  # p > 0 where q = 0: +inf, even where p underflows (see _kl).
  terms = jnp.where(
      finite, p * (log_p - log_q), jnp.where(has_mass, jnp.inf, 0.0)
  )
  kl = jnp.sum(terms, axis=-1)
  teacher_has_mass = teacher_max[..., 0] != -jnp.inf
  return kl, (log_q, log_p, p, finite, has_mass, shifted_q, shifted_p, teacher_has_mass)


@jax.custom_jvp
def _unmasked_forward_kl(student: Array, teacher: Array, temperature: Array):
  """``T² KL(softmax(t / T) || softmax(s / T))`` over the last axis, no mask.

  The teacher is a constant (zero derivative), as under ``stop_gradient``.
  """
  kl, _ = _forward_kl_parts(student, teacher, temperature)
  return kl * jnp.square(temperature)


def _is_zero(tangent) -> bool:
  return isinstance(tangent, jax.custom_derivatives.SymbolicZero)


def _unmasked_forward_kl_jvp(primals, tangents):
  student, teacher, temperature = primals
  student_dot, _, temperature_dot = tangents  # the teacher is a constant
  kl, (log_q, log_p, p, finite, has_mass, shifted_q, shifted_p, teacher_has_mass) = (
      _forward_kl_parts(student, teacher, temperature))
  value = kl * jnp.square(temperature)
  tangent = jnp.zeros_like(value)
  if not _is_zero(student_dot):
    # d/ds = (1 / T) d/dv, times T², with dK/dv = q - p (v = s / T): 0 on a
    # row where the teacher has no mass (K = 0 there). Where K = +inf
    # (teacher mass on a class whose student logit is -inf) this is the
    # cross entropy's gradient, finite; the masked forms' autodiff gives the
    # finite terms' instead. The row select is on the tangent: a
    # [rows, classes] select or a per-row rescale in the backward cost
    # about as much as the rest of the loss on the CPU.
    row = jnp.sum((jnp.exp(log_q) - p) * student_dot, axis=-1)
    tangent = tangent + temperature * jnp.where(teacher_has_mass, row, 0.0)
  if not _is_zero(temperature_dot):
    # With K the sum of the finite terms (the +inf of a class with p > 0 = q
    # is a constant): dK/dv_k = P q_k - p_k [k finite], P = sum of p over
    # the finite terms.
    p_finite = jnp.where(finite, p, 0.0)
    mass = jnp.sum(p_finite, axis=-1, keepdims=True)
    grad_v = mass * jnp.exp(log_q) - p_finite
    # u = t / T, dv/dT = -v / T, du/dT = -u / T (the masked form's
    # autodiff differentiates through the teacher's tempering too):
    # dK/du_k = [k finite] p_k (r_k + 1) - p_k (K + P), r = log p - log q.
    ratio = jnp.where(finite, log_p - log_q, 0.0)
    finite_kl = jnp.sum(p_finite * ratio, axis=-1, keepdims=True)
    grad_u = p_finite * (ratio + 1.0) - p * (finite_kl + mass)
    # Both gradients sum to 0 over a row, so the shifted logits give the
    # same products with less cancellation at large logits.
    slope = jnp.sum(jnp.where(has_mass, grad_u * shifted_p, 0.0), axis=-1)
    slope = slope + jnp.sum(
        jnp.where(log_q != -jnp.inf, grad_v * shifted_q, 0.0), axis=-1)
    d_temperature = 2.0 * temperature * kl - temperature * slope
    tangent = tangent + d_temperature * temperature_dot
  return value, tangent


_unmasked_forward_kl.defjvp(_unmasked_forward_kl_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _unmasked_cross_entropy(logits: Array, labels: Array) -> Array:
  """``-log softmax(logits)[label]`` over the last axis, no mask, no smoothing."""
  return _cross_entropy_parts(logits, labels)[0]


def _cross_entropy_parts(logits, labels):
  log_probs, _, row_max = _unmasked_log_softmax(logits)
  is_target, in_range = _label_one_hot(labels, logits.shape)
  # Not masked: a label on a -inf logit gives +inf.
  target = jnp.sum(jnp.where(is_target, log_probs, 0.0), axis=-1)
  loss = jnp.where(row_max[..., 0] == -jnp.inf, 0.0, -target)  # no class left
  # The rows whose label takes part: the others have no derivative.
  label_in = in_range & (target != -jnp.inf)
  return _nan_where_out_of_range(loss, in_range), log_probs, is_target, label_in


def _unmasked_cross_entropy_jvp(primals, tangents):
  logits, labels = primals
  logits_dot, _ = tangents
  loss, log_probs, is_target, label_in = _cross_entropy_parts(logits, labels)
  if _is_zero(logits_dot):
    return loss, jnp.zeros_like(loss)
  # d/dx_k = q_k - [k = label] where the label takes part; 0 on rows with
  # no class left, a label on a -inf logit or out of range, like the masked
  # form's. The row select is on the tangent, not on a [rows, classes]
  # broadcast: the backward then selects once per row (on the CPU a
  # broadcast select there cost more than the rest of the loss).
  grad = jnp.exp(log_probs) - is_target
  return loss, jnp.where(label_in, jnp.sum(grad * logits_dot, axis=-1), 0.0)


_unmasked_cross_entropy.defjvp(_unmasked_cross_entropy_jvp, symbolic_zeros=True)


# ----------------------------------------------------------------------------
# The divergences on normalised log-probabilities, the one place each formula
# is written. ``fn(log_q, valid_q, log_p, valid_p, hyper) -> [...]`` with the
# student's `log_q` and the teacher's `log_p` over the last axis (-inf and
# `valid` False on classes that take no part), without the T² factor. The
# logit losses below, and through the registry of `_divergences.py` the
# token-level and chunked forms, all compute these.


def log_space_forward_kl(log_q, valid_q, log_p, valid_p, hyper=None) -> Array:
  """``KL(p || q)``."""
  del valid_q, hyper
  return _kl(log_p, valid_p, log_q)


def log_space_reverse_kl(log_q, valid_q, log_p, valid_p, hyper=None) -> Array:
  """``KL(q || p)``."""
  del valid_p, hyper
  return _kl(log_q, valid_q, log_p)


def log_space_jsd(log_q, valid_q, log_p, valid_p, beta) -> Array:
  """GKD's ``beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 - beta) q``."""
  beta = jnp.asarray(beta, log_p.dtype)
  log_m = _log_mixture(log_p, valid_p, log_q, valid_q, beta)
  # At beta = 0 (1) the other term is KL(q || q) = 0 (KL(p || p) = 0), so
  # weight 1 on the surviving term gives exactly the forward (reverse) KL.
  teacher_weight = jnp.where(beta == 0, 1.0, beta)
  student_weight = jnp.where(beta == 1, 1.0, 1.0 - beta)
  divergence = teacher_weight * _kl(log_p, valid_p, log_m)
  return divergence + student_weight * _kl(log_q, valid_q, log_m)


def log_space_skew_kl(log_q, valid_q, log_p, valid_p, alpha) -> Array:
  """``KL(p || alpha p + (1 - alpha) q)``."""
  log_m = _log_mixture(log_p, valid_p, log_q, valid_q, alpha)
  return _kl(log_p, valid_p, log_m)


def log_space_skew_reverse_kl(log_q, valid_q, log_p, valid_p, alpha) -> Array:
  """``KL(q || alpha q + (1 - alpha) p)``."""
  log_m = _log_mixture(log_q, valid_q, log_p, valid_p, alpha)
  return _kl(log_q, valid_q, log_m)


def log_space_tvd(log_q, valid_q, log_p, valid_p, hyper=None) -> Array:
  """``0.5 * sum_c |p_c - q_c|``."""
  del hyper
  p = jnp.where(valid_p, jnp.exp(jnp.where(valid_p, log_p, 0.0)), 0.0)
  q = jnp.where(valid_q, jnp.exp(jnp.where(valid_q, log_q, 0.0)), 0.0)
  return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


def _tempered(
    log_space_fn, student_logits, teacher_logits, temperature, where, axis,
    hyper=None,
) -> Array:
  """``T² log_space_fn`` on the tempered, masked log-softmaxes of both logit sets."""
  student, teacher, mask = _prepare_pair(
      student_logits, teacher_logits, temperature, where, axis
  )
  log_q, valid_q = _masked_log_softmax(student, mask)
  log_p, valid_p = _masked_log_softmax(teacher, mask)
  divergence = log_space_fn(log_q, valid_q, log_p, valid_p, hyper)
  return _scale_by_temperature(divergence, temperature)


def _label_values(logits_name: str) -> ValueCheck:
  def check(arguments):
    logits_shape = jnp.shape(arguments[logits_name])
    axis = _class_axis(logits_name, logits_shape, arguments['axis'])
    _check_labels(arguments['labels'], logits_name, logits_shape, axis)

  return check



# ----------------------------------------------------------------------------
# Divergences.


@_jit_after_checks(positive_value('temperature'))
def kl_divergence(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> Array:
  r"""Forward KL divergence ``T² KL(p_teacher || p_student)`` (classic KD).

  With :math:`p = \mathrm{softmax}(t / T)` and :math:`q = \mathrm{softmax}(s
  / T)`, returns :math:`T^2 \sum_c p_c (\log p_c - \log q_c)`. Its gradient
  with respect to the student logits is :math:`T (q - p)`. The teacher logits
  pass through ``stop_gradient``: the teacher is a fixed target.

  Args:
    student_logits: ``[..., classes]`` floating logits of the student.
    teacher_logits: ``[..., classes]`` floating logits of the teacher, same
      shape as `student_logits`.
    temperature: positive scalar (Python float or traced) dividing both logit
      sets; the divergence is multiplied by ``temperature**2``.
    where: optional boolean mask broadcastable to ``[..., classes]``; classes
      where it is False take no part (as if sliced away). Classes whose logit
      is -inf in both inputs are likewise left out.
    axis: the class axis.

  Returns:
    ``[...]`` per-example divergences (float32, or float64 for float64
    inputs); 0 for a row with no class left.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> student = jnp.array([[1.0, 2.0, 3.0]])
    >>> teacher = jnp.array([[3.0, 2.0, 1.0]])
    >>> loss = losses.kl_divergence(student, teacher)
    >>> print(loss.shape, f'{loss[0]:.4f}')
    (1,) 1.1504
    >>> loss = losses.kl_divergence(student, teacher, temperature=4.0)
    >>> print(f'{loss[0]:.4f}')
    1.3196

  References:
    Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network",
    2015, https://arxiv.org/abs/1503.02531.
  """
  if where is None:  # the common case, with its derivatives written out
    student, teacher, _ = _prepare_pair(
        student_logits, teacher_logits, temperature, None, axis, tempered=False
    )
    return _unmasked_forward_kl(
        student, teacher, jnp.asarray(temperature, student.dtype)
    )
  return _tempered(
      log_space_forward_kl, student_logits, teacher_logits, temperature, where,
      axis,
  )


@_jit_after_checks(positive_value('temperature'))
def reverse_kl_divergence(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> Array:
  r"""Reverse KL divergence ``T² KL(p_student || p_teacher)`` (mode seeking).

  Returns :math:`T^2 \sum_c q_c (\log q_c - \log p_c)` with :math:`q` the
  student's and :math:`p` the teacher's tempered softmax. The teacher logits
  pass through ``stop_gradient``.

  Args:
    student_logits: ``[..., classes]`` floating logits of the student.
    teacher_logits: ``[..., classes]`` floating logits of the teacher.
    temperature: positive scalar dividing both logit sets; the divergence is
      multiplied by ``temperature**2``.
    where: optional boolean mask broadcastable to ``[..., classes]``
      selecting the classes that take part.
    axis: the class axis.

  Returns:
    ``[...]`` per-example divergences; 0 for a row with no class left.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> student = jnp.array([[1.0, 2.0, 3.0]])
    >>> teacher = jnp.array([[2.0, 2.0, 2.0]])
    >>> loss = losses.reverse_kl_divergence(student, teacher)
    >>> print(f'{loss[0]:.4f}')
    0.2662

  References:
    Gu, Dong, Wei and Huang, "MiniLLM: Knowledge Distillation of Large
    Language Models", ICLR 2024, https://arxiv.org/abs/2306.08543.
  """
  return _tempered(
      log_space_reverse_kl, student_logits, teacher_logits, temperature, where,
      axis,
  )


@_jit_after_checks(positive_value('temperature'), unit_interval_value('beta'))
def generalized_jsd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
    beta: ArrayLike = 0.5,
) -> Array:
  r"""Generalized Jensen-Shannon divergence of GKD, times ``T²``.

  With teacher :math:`p`, student :math:`q` and the mixture
  :math:`m = \beta p + (1 - \beta) q`, for :math:`0 < \beta < 1`:

  .. math::
    \mathrm{JSD}_\beta = \beta\, KL(p \| m) + (1 - \beta)\, KL(q \| m),

  Eq. (1) of Agarwal et al. with their ``P`` the teacher, as in TRL's
  ``GKDTrainer.generalized_jsd_loss``. ``beta=0.5`` is the usual JSD.

  The formula itself vanishes at both ends (:math:`m` becomes one of the two
  distributions and its weight goes to zero), but scaled by :math:`1/\beta`
  it tends to the forward KL as :math:`\beta \to 0`, and scaled by
  :math:`1/(1-\beta)` to the reverse KL as :math:`\beta \to 1`. Following
  the paper, whose experiments use ``beta=0`` for forward KL and ``beta=1``
  for reverse KL, and TRL, the end points are defined as those limits:
  ``beta=0`` gives exactly :func:`kl_divergence` and ``beta=1`` exactly
  :func:`reverse_kl_divergence`. (So the value jumps at the end points; it
  is continuous on the open interval.) The teacher logits pass through
  ``stop_gradient``.

  Args:
    student_logits: ``[..., classes]`` floating logits of the student.
    teacher_logits: ``[..., classes]`` floating logits of the teacher.
    temperature: positive scalar dividing both logit sets; the divergence is
      multiplied by ``temperature**2``.
    where: optional boolean mask broadcastable to ``[..., classes]``
      selecting the classes that take part.
    axis: the class axis.
    beta: mixture weight of the teacher in ``[0, 1]`` (may be traced): 0 =
      forward KL(teacher || student), 1 = reverse KL, as in the GKD paper,
      TRL and Liger; EasyDeL's ``beta`` is ``1 - beta`` (see the table in
      "Distilling language models").

  Returns:
    ``[...]`` per-example divergences; 0 for a row with no class left.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> student = jnp.array([[1.0, 2.0, 3.0]])
    >>> teacher = jnp.array([[3.0, 2.0, 1.0]])
    >>> loss = losses.generalized_jsd(student, teacher, beta=0.5)
    >>> print(f'{loss[0]:.4f}')
    0.2476
    >>> forward_kl = losses.generalized_jsd(student, teacher, beta=0.0)
    >>> print(f'{forward_kl[0]:.4f}')
    1.1504

  References:
    Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist and Bachem, "On-Policy
    Distillation of Language Models: Learning from Self-Generated Mistakes",
    ICLR 2024, https://arxiv.org/abs/2306.13649.
  """
  return _tempered(
      log_space_jsd, student_logits, teacher_logits, temperature, where, axis,
      beta,
  )


@_jit_after_checks(positive_value('temperature'), unit_interval_value('alpha'))
def skew_kl_divergence(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
    alpha: ArrayLike = 0.1,
) -> Array:
  r"""Skew KL ``T² KL(p || alpha p + (1 - alpha) q)`` of DistiLLM.

  Teacher :math:`p`, student :math:`q`, as defined by Ko et al. and in the
  official code's ``skewed_forward_kl`` (mixture ``alpha * teacher +
  (1 - alpha) * student``). ``alpha=0`` is the forward KL, ``alpha=1``
  gives 0. That code returns the cross-entropy :math:`-\sum_c p_c \log
  m_c`, which differs from this value by the teacher's entropy, a constant
  for the student; here the teacher entropy is subtracted so that the
  divergence is 0 when student == teacher. The teacher logits pass through
  ``stop_gradient``.

  Args:
    student_logits: ``[..., classes]`` floating logits of the student.
    teacher_logits: ``[..., classes]`` floating logits of the teacher.
    temperature: positive scalar dividing both logit sets; the divergence is
      multiplied by ``temperature**2``.
    where: optional boolean mask broadcastable to ``[..., classes]``
      selecting the classes that take part.
    axis: the class axis.
    alpha: skew, the teacher's weight in the mixture, in ``[0, 1]``.

  Returns:
    ``[...]`` per-example divergences; 0 for a row with no class left.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> student = jnp.array([[1.0, 2.0, 3.0]])
    >>> teacher = jnp.array([[3.0, 2.0, 1.0]])
    >>> loss = losses.skew_kl_divergence(student, teacher, alpha=0.1)
    >>> print(f'{loss[0]:.4f}')
    0.8299

  References:
    Ko, Kim, Chen and Yun, "DistiLLM: Towards Streamlined Distillation for
    Large Language Models", ICML 2024, https://arxiv.org/abs/2402.03898.
  """
  return _tempered(
      log_space_skew_kl, student_logits, teacher_logits, temperature, where,
      axis, alpha,
  )


@_jit_after_checks(positive_value('temperature'), unit_interval_value('alpha'))
def skew_reverse_kl_divergence(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
    alpha: ArrayLike = 0.1,
) -> Array:
  r"""Skew reverse KL ``T² KL(q || (1 - alpha) p + alpha q)`` of DistiLLM.

  Teacher :math:`p`, student :math:`q`, as defined by Ko et al. and in the
  official code's ``skewed_reverse_kl`` (mixture ``(1 - alpha) * teacher +
  alpha * student``; the student entropy is included, so this is the exact
  divergence). ``alpha=0`` is the reverse KL, ``alpha=1`` gives 0. The
  teacher logits pass through ``stop_gradient``.

  Args:
    student_logits: ``[..., classes]`` floating logits of the student.
    teacher_logits: ``[..., classes]`` floating logits of the teacher.
    temperature: positive scalar dividing both logit sets; the divergence is
      multiplied by ``temperature**2``.
    where: optional boolean mask broadcastable to ``[..., classes]``
      selecting the classes that take part.
    axis: the class axis.
    alpha: skew, the student's weight in the mixture, in ``[0, 1]``.

  Returns:
    ``[...]`` per-example divergences; 0 for a row with no class left.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> student = jnp.array([[1.0, 2.0, 3.0]])
    >>> teacher = jnp.array([[3.0, 2.0, 1.0]])
    >>> loss = losses.skew_reverse_kl_divergence(student, teacher, alpha=0.1)
    >>> print(f'{loss[0]:.4f}')
    0.8299

  References:
    Ko, Kim, Chen and Yun, "DistiLLM: Towards Streamlined Distillation for
    Large Language Models", ICML 2024, https://arxiv.org/abs/2402.03898.
  """
  return _tempered(
      log_space_skew_reverse_kl, student_logits, teacher_logits, temperature,
      where, axis, alpha,
  )


@_jit_after_checks(positive_value('temperature'))
def total_variation_distance(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> Array:
  r"""Total variation distance ``T² * 0.5 * sum_c |p_c - q_c|``.

  Teacher :math:`p`, student :math:`q`. At the default ``temperature=1`` this
  is the plain distance in ``[0, 1]`` (as in DistiLLM's ``tv_distance``). For
  other temperatures it is multiplied by ``T²`` like every divergence here,
  so that swapping divergences in a config keeps the loss scale and
  gradient conventions. The distance is not differentiable where
  :math:`p_c = q_c`. The teacher logits pass through ``stop_gradient``.

  Args:
    student_logits: ``[..., classes]`` floating logits of the student.
    teacher_logits: ``[..., classes]`` floating logits of the teacher.
    temperature: positive scalar dividing both logit sets; the distance is
      multiplied by ``temperature**2``.
    where: optional boolean mask broadcastable to ``[..., classes]``
      selecting the classes that take part.
    axis: the class axis.

  Returns:
    ``[...]`` per-example distances; 0 for a row with no class left.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> student = jnp.array([[0.0, 0.0]])
    >>> teacher = jnp.array([[0.0, -jnp.inf]])
    >>> loss = losses.total_variation_distance(student, teacher)
    >>> print(f'{loss[0]:.4f}')
    0.5000

  References:
    Ko, Kim, Chen and Yun, "DistiLLM: Towards Streamlined Distillation for
    Large Language Models", ICML 2024, https://arxiv.org/abs/2402.03898
    (compared objective, the code's ``tv_distance``); Wen, Li, Du and
    Mou, "f-Divergence Minimization for Sequence-Level Knowledge
    Distillation", ACL 2023, https://arxiv.org/abs/2307.15190.
  """
  return _tempered(
      log_space_tvd, student_logits, teacher_logits, temperature, where, axis,
  )


# ----------------------------------------------------------------------------
# Label-aware losses.


def _check_labels(labels, logits_name, logits_shape, axis) -> Array:
  """Integer dtype, shape = logits shape without the class axis, range."""
  _checks.check_integer('labels', labels)
  expected = tuple(d for i, d in enumerate(logits_shape) if i != axis)
  if tuple(jnp.shape(labels)) != expected:
    raise ValueError(
        f'labels must have the shape of {logits_name} without the class axis '
        f'{axis}, {expected}; got labels.shape={tuple(jnp.shape(labels))} and '
        f'{logits_name}.shape={tuple(logits_shape)}.'
    )
  _checks.check_index_range(
      'labels', labels, logits_shape[axis], 'num_classes'
  )
  return jnp.asarray(labels)


def _label_one_hot(labels: Array, shape) -> tuple[Array, Array]:
  """Boolean one-hot ``[..., classes]`` and whether each label is in range."""
  # int32, not labels.dtype: a uint8 iota would wrap around past 255 classes.
  classes = lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)
  labels = labels.astype(jnp.int32)
  one_hot = classes == labels[..., None]
  return one_hot, (labels >= 0) & (labels < shape[-1])


def _nan_where_out_of_range(values: Array, in_range: Array) -> Array:
  return jnp.where(in_range, values, jnp.nan)


@_jit_after_checks(positive_value('temperature'), _label_values('student_logits'))
def dkd_terms(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> tuple[Array, Array, Array]:
  r"""The parts of decoupled KD: ``(tckd, nckd, teacher_target_prob)``.

  With the tempered softmax of teacher :math:`p` and student :math:`q` and
  the target class :math:`y`:

  * TCKD is the KL between the binary distributions
    :math:`(p_y, 1 - p_y)` and :math:`(q_y, 1 - q_y)`;
  * NCKD is the KL between :math:`\hat p` and :math:`\hat q`, the
    distributions renormalised over the non-target classes.

  Both are multiplied by ``T²``, as in the official mdistiller ``dkd_loss``.
  They satisfy the reformulation of Zhao et al. at any temperature:
  ``kl_divergence == tckd + (1 - teacher_target_prob) * nckd``. The
  non-target classes are masked exactly (the official code subtracts 1000
  from the target logit instead) and :math:`\log(1 - p_y)` is computed as a
  log-sum-exp over the other classes, so it is stable when :math:`p_y \to 1`.
  The teacher logits pass through ``stop_gradient``. A label on a class
  that takes no part (``where`` False) has :math:`p_y = q_y = 0`: TCKD is 0
  and NCKD is the KL over the remaining classes.

  Labels are checked when concrete. Under ``jit`` they are tracers and cannot
  be checked; an out-of-range label then gives NaN for that example (as a
  gather out of bounds would), which a masked reduction can drop.

  Args:
    student_logits: ``[..., classes]`` floating logits of the student.
    teacher_logits: ``[..., classes]`` floating logits of the teacher.
    labels: ``[...]`` integer target classes in ``[0, classes)``.
    temperature: positive scalar dividing both logit sets.
    where: optional boolean mask broadcastable to ``[..., classes]``
      selecting the classes that take part.
    axis: the class axis.

  Returns:
    ``(tckd, nckd, teacher_target_prob)``, each ``[...]``: the two
    divergences times ``T²`` and the teacher's tempered probability of the
    target class :math:`p_y` (no gradient).

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> student = jnp.array([[1.0, 2.0, 3.0]])
    >>> teacher = jnp.array([[3.0, 2.0, 1.0]])
    >>> tckd, nckd, p_y = losses.dkd_terms(student, teacher, jnp.array([0]))
    >>> print(f'{tckd[0]:.4f} {nckd[0]:.4f} {p_y[0]:.4f}')
    0.9957 0.4621 0.6652

  References:
    Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation",
    CVPR 2022, https://arxiv.org/abs/2203.08679.
  """
  student, teacher, mask = _prepare_pair(
      student_logits, teacher_logits, temperature, where, axis
  )
  axis = _class_axis('student_logits', jnp.shape(student_logits), axis)
  labels = _check_labels(
      labels, 'student_logits', jnp.shape(student_logits), axis
  )
  is_target, in_range = _label_one_hot(labels, student.shape)

  def binary_log_probs(logits):
    log_probs, valid = _masked_log_softmax(logits, mask)
    log_target = _masked_logsumexp(log_probs, valid & is_target)
    log_other = _masked_logsumexp(log_probs, valid & ~is_target)
    return jnp.concatenate([log_target, log_other], axis=-1)

  binary_student = binary_log_probs(student)
  binary_teacher = binary_log_probs(teacher)
  tckd = _kl(binary_teacher, binary_teacher != -jnp.inf, binary_student)

  non_target = ~is_target if mask is None else mask & ~is_target
  log_q, _ = _masked_log_softmax(student, non_target)
  log_p, valid_p = _masked_log_softmax(teacher, non_target)
  nckd = _kl(log_p, valid_p, log_q)

  teacher_target_prob = jnp.exp(binary_teacher[..., 0])
  return tuple(
      _nan_where_out_of_range(value, in_range)
      for value in (
          _scale_by_temperature(tckd, temperature),
          _scale_by_temperature(nckd, temperature),
          teacher_target_prob,
      )
  )


@_jit_after_checks(
    positive_value('temperature'),
    nonnegative_value('alpha'),
    nonnegative_value('beta'),
    _label_values('student_logits'),
)
def decoupled_kd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: ArrayLike = 1.0,
    beta: ArrayLike = 8.0,
    temperature: ArrayLike = 4.0,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> Array:
  r"""Decoupled KD loss ``alpha * TCKD + beta * NCKD`` (both times ``T²``).

  See :func:`dkd_terms` for the two parts, the label checks and the
  ``T²`` convention. The defaults are the paper's CIFAR-100 setting
  (``alpha=1, beta=8, T=4``); the official code also warms the loss up over
  the first epochs, which belongs to the objective's weight schedule. The
  teacher logits pass through ``stop_gradient``.

  Args:
    student_logits: ``[..., classes]`` floating logits of the student.
    teacher_logits: ``[..., classes]`` floating logits of the teacher.
    labels: ``[...]`` integer target classes in ``[0, classes)``.
    alpha: weight of TCKD, >= 0.
    beta: weight of NCKD, >= 0.
    temperature: positive scalar dividing both logit sets.
    where: optional boolean mask broadcastable to ``[..., classes]``
      selecting the classes that take part.
    axis: the class axis.

  Returns:
    ``[...]`` per-example losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> student = jnp.array([[1.0, 2.0, 3.0]])
    >>> teacher = jnp.array([[3.0, 2.0, 1.0]])
    >>> loss = losses.decoupled_kd(
    ...     student, teacher, jnp.array([0]), temperature=1.0)
    >>> print(f'{loss[0]:.4f}')
    4.6927

  References:
    Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation",
    CVPR 2022, https://arxiv.org/abs/2203.08679.
  """
  tckd, nckd, _ = dkd_terms(
      student_logits,
      teacher_logits,
      labels,
      temperature=temperature,
      where=where,
      axis=axis,
  )
  return alpha * tckd + beta * nckd


@_jit_after_checks(
    unit_interval_value('label_smoothing'), _label_values('logits'),
    static_if_python=('label_smoothing',),
)
def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    axis: int = -1,
    label_smoothing: ArrayLike = 0.0,
) -> Array:
  r"""Hard-label cross entropy ``-log softmax(logits)[label]``.

  With label smoothing :math:`\epsilon` the target is
  :math:`(1 - \epsilon)\,\mathrm{onehot}(y) + \epsilon / K` where :math:`K`
  counts the classes that take part in the row (``where`` True and logit not
  -inf), as in ``optax.smooth_labels`` over the unmasked classes.

  Labels are checked when concrete: an integer dtype (TypeError), the shape
  of `logits` without the class axis and values in ``[0, classes)``
  (ValueError). Under ``jit`` the labels are tracers and the range cannot be
  checked; an out-of-range label then gives NaN for that example (like an
  out-of-bounds gather in ``optax``), which a masked reduction can drop. A
  label on a class that is masked out or has a -inf logit has probability 0:
  its loss is +inf. A row with no class left gives 0.

  Args:
    logits: ``[..., classes]`` floating logits.
    labels: ``[...]`` integer classes in ``[0, classes)``.
    where: optional boolean mask broadcastable to ``[..., classes]``
      selecting the classes that take part.
    axis: the class axis.
    label_smoothing: :math:`\epsilon` in ``[0, 1]``.

  Returns:
    ``[...]`` per-example losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> logits = jnp.array([[1.0, 2.0, 3.0]])
    >>> loss = losses.cross_entropy(logits, jnp.array([2]))
    >>> print(f'{loss[0]:.4f}')
    0.4076
    >>> loss = losses.cross_entropy(logits, jnp.array([2]), label_smoothing=0.1)
    >>> print(f'{loss[0]:.4f}')
    0.5076

  References:
    Szegedy et al., "Rethinking the Inception Architecture for Computer
    Vision" (label smoothing), CVPR 2016, https://arxiv.org/abs/1512.00567.
  """
  _checks.check_floating('logits', logits)
  shape = jnp.shape(logits)
  axis = _class_axis('logits', shape, axis)
  mask = _class_mask(where, 'logits', shape, axis)
  labels = _check_labels(labels, 'logits', shape, axis)
  logits = jnp.asarray(logits)
  logits = jnp.moveaxis(logits.astype(compute_dtype(logits)), axis, -1)

  smoothed = not (isinstance(label_smoothing, (int, float)) and label_smoothing == 0)
  if mask is None and not smoothed:  # the common case, derivatives written out
    return _unmasked_cross_entropy(logits, labels)
  log_probs, valid = _masked_log_softmax(logits, mask)
  is_target, in_range = _label_one_hot(labels, logits.shape)
  # Not masked by `valid`: a label on an excluded class gives +inf.
  target_nll = -jnp.sum(jnp.where(is_target, log_probs, 0.0), axis=-1)
  num_valid = jnp.sum(valid, axis=-1)
  if not smoothed:
    # A constant 0 (static, see _jit_after_checks): the uniform part has
    # weight 0 and a finite value, so leaving it out changes no bit.
    loss = target_nll
  else:
    safe_log_probs = jnp.where(valid, log_probs, 0.0)
    uniform_nll = -jnp.sum(safe_log_probs, axis=-1) / jnp.maximum(num_valid, 1)
    smoothing = jnp.asarray(label_smoothing, log_probs.dtype)
    loss = (1.0 - smoothing) * target_nll + smoothing * uniform_nll
  loss = jnp.where(num_valid > 0, loss, 0.0)
  return _nan_where_out_of_range(loss, in_range)
