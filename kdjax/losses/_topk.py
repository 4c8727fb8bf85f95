"""Sparse (top-k) forward KL against a teacher's cached top-k log-probs.

A teacher cache (:mod:`kdjax.cache`) keeps, for every token, the teacher's
``k`` largest log-probabilities, their vocabulary indices and the log of the
probability mass left outside them (the *tail bucket*). This module holds
the pure array functions on both sides of the cache: :func:`teacher_topk`
turns logits into that triple, :func:`topk_kl_divergence` compares a
student's logits with it. Write ``S`` for the teacher's top-k set, ``C``
for the rest of the vocabulary, ``P_S = sum_S p``, ``P_C = 1 - P_S`` (the
teacher's) and ``Q_S``, ``Q_C`` (the student's). Then, by the chain rule of
the KL divergence,

``KL(p || q) = KL_tail + P_C KL(p_C / P_C || q_C / Q_C)`` and
``KL_tail = P_S KL_renorm + KL([P_S, P_C] || [Q_S, Q_C])``,

where ``KL_tail`` is the KL over the ``k + 1`` buckets (the top-k tokens
and one tail bucket) and ``KL_renorm`` the KL between both distributions
renormalised over ``S``. Hence ``0 <= P_S KL_renorm <= KL_tail <= KL`` (the
second inequality is the log-sum inequality on the tail), all equal at
``k = V``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from kdjax import _checks
from kdjax.losses._logit import _check_temperature
from kdjax.losses._logit import _masked_logsumexp
from kdjax.losses._sequence import aligned_token_mask

Array = jax.Array
ArrayLike = Any

TOPK_MODES = ('tail', 'renormalize')


def check_k(k: Any, vocab_size: int, vocab_name: str = 'the vocabulary size') -> int:
  """`k` as an int in ``[1, vocab_size]``, or a ValueError naming both."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise TypeError(f'k must be an int, got {k!r}.')
  if not 1 <= k <= vocab_size:
    raise ValueError(
        f'k={k} must be in [1, {vocab_size}]: at most {vocab_name}, the top-k of '
        f'a vocabulary of {vocab_size} tokens.'
    )
  return int(k)


def teacher_topk(
    teacher_logits: ArrayLike,
    k: int,
    *,
    temperature: ArrayLike = 1.0,
    vocab_size: int | None = None,
) -> tuple[Array, Array, Array]:
  """The teacher's top-k log-probabilities, their indices and the tail mass.

  The log-softmax of ``teacher_logits / temperature`` over the (true)
  vocabulary, its `k` largest entries and ``log(1 - sum(top-k probs))``.
  The tail is the logsumexp of the log-probabilities outside the top-k,
  computed directly (no ``log1p(-exp(.))`` cancellation when the top-k hold
  almost all the mass); it is ``-inf`` at ``k = V``.

  Args:
    teacher_logits: ``[..., vocab]`` logits (any leading shape, e.g.
      ``[batch, time]``).
    k: how many entries to keep, ``1 <= k <= vocab_size``.
    temperature: positive scalar dividing the logits.
    vocab_size: the true vocabulary when the logits carry padding (entries
      past it take no part); None: the whole last axis.

  Returns:
    ``(log_probs, indices, tail_log_mass)``: float32 ``[..., k]`` in
    descending order, int32 ``[..., k]`` and float32 ``[...]``.

  Raises:
    ValueError: for a `k` outside ``[1, vocab_size]`` or logits without a
      vocabulary axis, naming the shapes.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> log_probs, indices, tail = losses.teacher_topk(
    ...     jnp.log(jnp.array([0.5, 0.3, 0.2])), 2)
    >>> print(indices, round(float(jnp.exp(tail)), 3))
    [0 1] 0.2
  """
  _checks.check_floating('teacher_logits', teacher_logits)
  shape = tuple(jnp.shape(teacher_logits))
  if not shape:
    raise ValueError('teacher_logits must have a vocabulary axis, got a scalar.')
  vocab = _true_vocab('teacher_logits', shape, vocab_size)
  k = check_k(k, vocab, f'the vocabulary of teacher_logits with shape {shape}')
  _check_temperature(temperature)
  return _teacher_topk(teacher_logits, temperature, k, vocab)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _teacher_topk(teacher_logits, temperature, k: int, vocab: int):
  logits = lax.stop_gradient(jnp.asarray(teacher_logits, jnp.float32)[..., :vocab])
  log_probs = jax.nn.log_softmax(logits / jnp.asarray(temperature, jnp.float32), axis=-1)
  top_log_probs, indices = lax.top_k(log_probs, k)
  in_top = _scatter_mask(indices, vocab)
  tail = _masked_logsumexp(log_probs, ~in_top)[..., 0]
  return top_log_probs, indices.astype(jnp.int32), tail


def _true_vocab(name: str, shape: tuple[int, ...], vocab_size: Any) -> int:
  """The last axis of `shape`, or `vocab_size` in ``[1, shape[-1]]`` (padding beyond)."""
  if vocab_size is None:
    return shape[-1]
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
    raise TypeError(f'vocab_size must be an int, got {vocab_size!r}.')
  if not 1 <= vocab_size <= shape[-1]:
    raise ValueError(
        f'vocab_size={vocab_size} must be in [1, {shape[-1]}], the last axis of '
        f'{name} with shape {shape}.'
    )
  return int(vocab_size)


def _scatter_mask(indices: Array, vocab: int) -> Array:
  """Boolean ``[..., vocab]``: True at each row's `indices` ``[..., k]``."""
  flat = indices.reshape(-1, indices.shape[-1])
  rows = jnp.arange(flat.shape[0])[:, None]
  mask = jnp.zeros((flat.shape[0], vocab), bool).at[rows, flat].set(True)
  return mask.reshape(indices.shape[:-1] + (vocab,))


def _check_topk_inputs(student_logits, log_probs, indices, tail, vocab_size):
  for name, value in (('student_logits', student_logits),
                      ('teacher_log_probs', log_probs)):
    _checks.check_floating(name, value)
  _checks.check_integer('teacher_indices', indices)
  student_shape = tuple(jnp.shape(student_logits))
  if not student_shape:
    raise ValueError('student_logits must have a vocabulary axis, got a scalar.')
  _checks.check_same_shape('teacher_log_probs', log_probs, 'teacher_indices', indices)
  top_shape = tuple(jnp.shape(log_probs))
  if len(top_shape) != len(student_shape) or top_shape[:-1] != student_shape[:-1]:
    raise ValueError(
        'teacher_log_probs [..., k] must agree with student_logits [..., vocab] on '
        f'every axis but the last, got teacher_log_probs.shape={top_shape} and '
        f'student_logits.shape={student_shape}.'
    )
  if tail is not None:
    _checks.check_floating('teacher_tail_log_mass', tail)
    if tuple(jnp.shape(tail)) != student_shape[:-1]:
      raise ValueError(
          'teacher_tail_log_mass must have the shape of student_logits without its '
          f'vocabulary axis, {student_shape[:-1]}, got shape {tuple(jnp.shape(tail))} '
          f'(student_logits.shape={student_shape}).'
      )
  vocab = _true_vocab('student_logits', student_shape, vocab_size)
  check_k(top_shape[-1], vocab, f'the vocabulary of student_logits with shape {student_shape}')
  _checks.check_index_range('teacher_indices', indices, vocab, 'vocab_size')
  return vocab


def topk_kl_divergence(
    student_logits: ArrayLike,
    teacher_log_probs: ArrayLike,
    teacher_indices: ArrayLike,
    teacher_tail_log_mass: ArrayLike | None = None,
    *,
    mode: str = 'tail',
    temperature: ArrayLike = 1.0,
    token_mask: ArrayLike | None = None,
    vocab_size: int | None = None,
) -> Array:
  """Per-token forward KL(teacher || student) over the teacher's top-k tokens.

  The teacher is given sparsely, as its top-k log-probabilities and indices
  (and the log of the mass outside them), e.g. read from a
  :mod:`kdjax.cache`; the student as full logits. Two ways to compare:

  * ``mode='tail'``: the KL over ``k + 1`` buckets, the teacher's top-k
    tokens and one tail bucket holding all other tokens; the student's tail
    is its mass outside the teacher's top-k indices. It is a lower bound of
    the full forward KL: ``KL - KL_tail = P_C KL(p_C / P_C || q_C / Q_C) >=
    0`` (teacher tail mass ``P_C`` times the KL of the two tails
    renormalised), equal at ``k = V`` or when the student's tail is the
    teacher's up to a factor. It is 0 exactly when the student matches the
    teacher on the top-k tokens (and so on the tail's total mass), whatever
    the shape of its tail: the bias is that the tail's shape is not taught.
    The teacher's ``k + 1`` buckets are renormalised (a no-op up to
    rounding for exact caches; it keeps a quantised cache a distribution,
    so the value stays >= 0).
  * ``mode='renormalize'``: MaxText's top-k distillation, both
    distributions renormalised over the teacher's top-k, no tail:
    ``KL_renorm = KL(p_S / P_S || q_S / Q_S)``. Neither a lower nor an
    upper bound: ``KL = P_S KL_renorm + KL([P_S, P_C] || [Q_S, Q_C]) + P_C
    KL(tails)``, so ``P_S KL_renorm <= KL`` but ``KL_renorm`` itself may
    exceed ``KL`` (by up to a factor ``1 / P_S``). It is 0 for any student
    proportional to the teacher on the top-k, whatever mass ``Q_S`` it puts
    there: it does not teach how much mass belongs to the top-k, and a
    student can lose probability to the tail at no cost.

  Both equal the full forward KL (:func:`kl_divergence`) at ``k = V``.

  Temperature: the student's logits are divided by `temperature` and the
  value multiplied by ``temperature**2`` (Hinton), as in
  :func:`token_divergence`; the teacher's log-probabilities must already be
  at that temperature (:func:`teacher_topk` with the same `temperature`, or
  a cache written at it: its spec records it), since a top-k cannot be
  re-tempered without the full logits.

  Args:
    student_logits: ``[..., vocab]`` (e.g. ``[batch, time, vocab]``).
    teacher_log_probs: ``[..., k]`` teacher log-probabilities (any order).
    teacher_indices: integer ``[..., k]``, their vocabulary indices, distinct
      in each row, in ``[0, vocab_size)``.
    teacher_tail_log_mass: ``[...]``, ``log(1 - sum(exp(teacher_log_probs)))``
      (``-inf`` when the top-k hold all the mass); needed for
      ``mode='tail'``, ignored for ``'renormalize'``.
    mode: ``'tail'`` or ``'renormalize'``.
    temperature: positive scalar (a traced value is fine).
    token_mask: optional ``[batch, time]`` (or ``[batch]``) mask of the real
      tokens aligned with the leading axes; masked tokens give 0 with zero
      gradients.
    vocab_size: the student's true vocabulary when its logits carry padding.

  Returns:
    ``[...]`` per-token values (float32), 0 where masked.

  Raises:
    ValueError: for an unknown mode, a missing tail in ``'tail'`` mode,
      shapes that disagree (naming them), ``k`` larger than the vocabulary,
      or (when known) indices outside it.
    TypeError: for non-floating log-probs or logits, or non-integer indices.

  Examples:
    >>> import jax
    >>> from kdjax import losses
    >>> teacher = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 10))
    >>> student = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 10))
    >>> log_probs, indices, tail = losses.teacher_topk(teacher, 10)
    >>> sparse = losses.topk_kl_divergence(student, log_probs, indices, tail)
    >>> full = losses.kl_divergence(student, teacher)
    >>> print(bool(jax.numpy.allclose(sparse, full, atol=1e-5)))
    True

  References:
    Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network",
    2015, https://arxiv.org/abs/1503.02531; top-k logit caches for offline
    LM distillation: MaxText's distillation utilities
    (https://github.com/AI-Hypercomputer/maxtext) and Raman et al., "For
    Distillation, Tokens Are Not All You Need", 2023 (sparse teacher
    targets).
  """
  if mode not in TOPK_MODES:
    raise ValueError(f'mode must be one of {list(TOPK_MODES)}, got {mode!r}.')
  if mode == 'tail' and teacher_tail_log_mass is None:
    raise ValueError(
        "mode='tail' needs teacher_tail_log_mass (the log of the teacher's mass "
        "outside its top-k); pass it, or use mode='renormalize'."
    )
  if mode == 'renormalize':
    teacher_tail_log_mass = None
  vocab = _check_topk_inputs(student_logits, teacher_log_probs, teacher_indices,
                             teacher_tail_log_mass, vocab_size)
  _check_temperature(temperature)
  mask = aligned_token_mask(token_mask, 'student_logits', tuple(jnp.shape(student_logits))[:-1])
  return _topk_kl(student_logits, teacher_log_probs, teacher_indices, teacher_tail_log_mass,
                  mask, temperature, vocab)


@functools.partial(jax.jit, static_argnums=(6,))
def _topk_kl(student_logits, teacher_log_probs, teacher_indices, teacher_tail_log_mass, mask,
             temperature, vocab: int):
  """:func:`topk_kl_divergence` after its checks; no tail: ``'renormalize'``."""
  student = jnp.asarray(student_logits, jnp.float32)[..., :vocab]
  teacher = lax.stop_gradient(jnp.asarray(teacher_log_probs, jnp.float32))
  indices = jnp.asarray(teacher_indices, jnp.int32)
  tail = None
  if teacher_tail_log_mass is not None:
    tail = lax.stop_gradient(jnp.asarray(teacher_tail_log_mass, jnp.float32))
  if mask is not None:
    # Finite stand-ins on masked tokens: zero values and gradients, no NaN.
    student = jnp.where(mask[..., None], student, 0.0)
    teacher = jnp.where(mask[..., None], teacher, 0.0)
    indices = jnp.where(mask[..., None], indices, 0)
    if tail is not None:
      tail = jnp.where(mask, tail, 0.0)
  temperature = jnp.asarray(temperature, jnp.float32)
  student_log_probs = jax.nn.log_softmax(student / temperature, axis=-1)
  student_top = jnp.take_along_axis(student_log_probs, indices, axis=-1)
  if tail is None:
    values = _kl_rows(jax.nn.log_softmax(teacher, axis=-1),
                      jax.nn.log_softmax(student_top, axis=-1))
  else:
    student_tail = _masked_logsumexp(
        student_log_probs, ~_scatter_mask(indices, vocab))
    teacher_buckets = jnp.concatenate([teacher, tail[..., None]], axis=-1)
    student_buckets = jnp.concatenate([student_top, student_tail], axis=-1)
    values = _kl_rows(_log_normalize(teacher_buckets), student_buckets)
  values = values * jnp.square(temperature)
  if mask is not None:
    values = jnp.where(mask, values, 0.0)
  return values


def _log_normalize(log_weights: Array) -> Array:
  """``log_weights - logsumexp(log_weights)`` over the last axis (-inf kept)."""
  valid = log_weights != -jnp.inf
  return jnp.where(valid, log_weights - _masked_logsumexp(log_weights, valid), -jnp.inf)


def _kl_rows(log_p: Array, log_q: Array) -> Array:
  """``sum p (log p - log q)`` over the last axis, 0 where p = 0 (no 0 * inf)."""
  valid = log_p != -jnp.inf
  log_p = jnp.where(valid, log_p, 0.0)
  log_q = jnp.where(valid, log_q, 0.0)
  return jnp.sum(jnp.where(valid, jnp.exp(log_p) * (log_p - log_q), 0.0), axis=-1)
