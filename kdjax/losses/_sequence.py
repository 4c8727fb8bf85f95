"""Token-level distillation of language models: token masks, vocabulary padding."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _checks
from kdjax.losses._divergences import divergence_fn
# Re-exported: kdjax.objective checks divergence names through this module.
from kdjax.losses._divergences import divergence_kwargs as divergence_kwargs

Array = jax.Array
ArrayLike = Any


def check_vocab(
    student_name: str,
    student_shape: tuple[int, ...],
    teacher_name: str,
    teacher_shape: tuple[int, ...],
    vocab_size: int | None,
) -> int:
  """The true vocabulary size shared by two ``[..., vocab]`` shapes.

  With `vocab_size` None the last dimensions must be equal. Otherwise both
  must be at least `vocab_size` (the rest is padding).
  """
  student_vocab, teacher_vocab = student_shape[-1], teacher_shape[-1]
  if vocab_size is None:
    if student_vocab != teacher_vocab:
      raise ValueError(
          f'{student_name} and {teacher_name} have different vocabularies: '
          f'{student_name}.shape={tuple(student_shape)} and '
          f'{teacher_name}.shape={tuple(teacher_shape)}. If they differ '
          'only by padding (a vocabulary rounded up to a multiple of 64 or '
          '128), pass vocab_size= the true vocabulary size.'
      )
    return student_vocab
  if isinstance(vocab_size, bool) or not isinstance(
      vocab_size, (int, np.integer)
  ):
    raise TypeError(f'vocab_size must be an int, got {vocab_size!r}.')
  if vocab_size < 1 or vocab_size > min(student_vocab, teacher_vocab):
    raise ValueError(
        f'vocab_size={vocab_size} must be in [1, {min(student_vocab, teacher_vocab)}]: '
        f'the true vocabulary cannot be larger than either model\'s, got '
        f'{student_name}.shape={tuple(student_shape)} and '
        f'{teacher_name}.shape={tuple(teacher_shape)}.'
    )
  return int(vocab_size)


def align_vocab(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    vocab_size: int | None = None,
) -> tuple[Array, Array]:
  """Slices student and teacher logits to the true vocabulary.

  Models often pad their vocabulary to a multiple of 64 or 128 for speed
  (e.g. a 32,000-token tokenizer with 32,064 output logits). The padding
  entries are no tokens: they must take no part in either softmax. Slicing
  both logit sets to ``[..., :vocab_size]`` drops them, so the divergences
  of :mod:`kdjax.losses` then normalise over the true vocabulary only.

  Args:
    student_logits: ``[..., student_vocab]`` logits of the student.
    teacher_logits: ``[..., teacher_vocab]`` logits of the teacher; all axes
      but the last must equal the student's.
    vocab_size: the true vocabulary size, at most ``min(student_vocab,
      teacher_vocab)``; None requires equal vocabularies (nothing sliced).

  Returns:
    ``(student_logits[..., :vocab_size], teacher_logits[..., :vocab_size])``.

  Raises:
    ValueError: if the non-vocabulary axes differ, or the vocabularies
      differ other than by padding beyond `vocab_size`; the message names
      both shapes.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> student = jnp.zeros((2, 5, 100))
    >>> teacher = jnp.zeros((2, 5, 128))
    >>> s, t = losses.align_vocab(student, teacher, vocab_size=100)
    >>> print(s.shape, t.shape)
    (2, 5, 100) (2, 5, 100)
  """
  student_shape = tuple(jnp.shape(student_logits))
  teacher_shape = tuple(jnp.shape(teacher_logits))
  if (
      not student_shape
      or not teacher_shape
      or student_shape[:-1] != teacher_shape[:-1]
  ):
    raise ValueError(
        'student_logits and teacher_logits must agree on every axis but the '
        f'last (vocabulary) axis, got student_logits.shape={student_shape} and '
        f'teacher_logits.shape={teacher_shape}.'
    )
  vocab = check_vocab(
      'student_logits', student_shape, 'teacher_logits', teacher_shape,
      vocab_size,
  )
  return (
      jnp.asarray(student_logits)[..., :vocab],
      jnp.asarray(teacher_logits)[..., :vocab],
  )


def aligned_token_mask(
    token_mask: ArrayLike | None, name: str, token_shape: tuple[int, ...]
) -> Array | None:
  """A boolean token mask with `token_shape`, from one aligned with its leading axes.

  ``[batch]`` masks whole rows of ``[batch, time]`` tokens; ``[batch, time]``
  masks single tokens; anything else is an error naming both shapes
  (:func:`kdjax._checks.align_mask`).
  """
  if token_mask is None:
    return None
  aligned = _checks.align_mask(
      'token_mask', token_mask, token_shape, what=f'the tokens of {name}'
  )
  return jnp.broadcast_to(aligned != 0, token_shape)


@_checks.renamed_argument('where', 'token_mask')
def token_divergence(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    divergence: str = 'forward_kl',
    temperature: ArrayLike = 1.0,
    token_mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    beta: ArrayLike | None = None,
    alpha: ArrayLike | None = None,
) -> Array:
  """Per-token divergence between a student's and a teacher's next-token logits.

  Token-level (word-level) distillation of a language model: at every
  position the student's next-token distribution is pulled towards the
  teacher's with one of the divergences of :mod:`kdjax.losses`. Padding is
  handled twice over:

  * vocabulary padding: with `vocab_size`, logits past the true vocabulary
    are sliced away from both models before the softmax
    (:func:`align_vocab`), so a student with 32,000 logits and a teacher
    with 32,064 compare over the same 32,000 tokens;
  * sequence padding: `token_mask` marks the real tokens. Masked tokens give 0
    (and zero gradients, even if their logits are NaN). The values are *not*
    averaged: reduce them with the same mask as ``sum / count`` (an
    :class:`kdjax.objective.Objective` does, and so does
    :func:`token_mean`) to get the token-weighted mean, exact however the
    padding is spread over the batch or the devices.

  Args:
    student_logits: ``[batch, time, student_vocab]`` (any leading shape).
    teacher_logits: ``[batch, time, teacher_vocab]``.
    divergence: ``'forward_kl'``, ``'reverse_kl'``, ``'jsd'``, ``'skew_kl'``,
      ``'skew_reverse_kl'`` or ``'tvd'`` (see :func:`divergence_fn`).
    temperature: positive scalar dividing both logit sets; the divergence
      is multiplied by ``temperature**2``.
    token_mask: optional ``[batch, time]`` mask of the real tokens (or
      ``[batch]`` for whole sequences), aligned with the leading axes; True
      (or 1) for real tokens. (Was ``where=``, which still works for one
      release with a DeprecationWarning; ``where=`` is a class mask in
      kdjax.)
    vocab_size: the true vocabulary size when the logits carry padding.
    beta: the JSD's teacher weight in the mixture (``'jsd'`` only; default
      0.5): 0 = forward KL(teacher || student), 1 = reverse KL, as in the
      GKD paper, TRL and Liger; EasyDeL's ``beta`` is ``1 - beta``.
    alpha: the skew (``'skew_kl'`` / ``'skew_reverse_kl'`` only; default 0.1).

  Returns:
    ``[batch, time]`` per-token divergences (float32), 0 where masked.

  Raises:
    ValueError: for an unknown divergence, mismatching shapes (naming them)
      or a hyper-parameter the divergence does not take.

  Examples:
    >>> import jax
    >>> from kdjax import losses
    >>> student = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 10))
    >>> teacher = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 16))
    >>> mask = jax.numpy.array([[1, 1, 1], [1, 0, 0]])
    >>> values = losses.token_divergence(
    ...     student, teacher, divergence='jsd', token_mask=mask, vocab_size=10)
    >>> print(values.shape, float(values[1, 2]))
    (2, 3) 0.0

  References:
    Kim and Rush, "Sequence-Level Knowledge Distillation" (word-level KD),
    EMNLP 2016, https://arxiv.org/abs/1606.07947; the divergences' own
    papers are cited on each function.
  """
  fn = divergence_fn(divergence)
  kwargs = divergence_kwargs(divergence, beta, alpha)
  student_logits, teacher_logits = align_vocab(
      student_logits, teacher_logits, vocab_size=vocab_size
  )
  mask = aligned_token_mask(token_mask, 'student_logits', student_logits.shape[:-1])
  # Masked tokens may hold garbage (even NaN) logits: their values and their
  # gradients are selected away, never multiplied by 0, so nothing leaks.
  return _row_fused(fn, student_logits, teacher_logits, temperature, kwargs, mask)


# Each token's value depends on its own row of logits only, so its gradient
# with respect to that row, computed in the forward pass with a unit
# cotangent, times the token's cotangent is the exact gradient for any
# cotangent. Computing it there lets every logits-sized intermediate of the
# divergence (log-softmaxes, probabilities, mixtures) die in the forward
# pass: only the [..., vocab] gradient crosses to the backward pass, instead
# of autodiff's residuals. The teacher's logits get no gradient (the
# divergences cut them with stop_gradient anyway). First-order reverse mode
# only, like any custom_vjp.
#
# Memory: the rows are taken in blocks of at most _ROW_BLOCK, so the
# divergence's temporaries are [block, vocab], not [tokens, vocab]. The
# forward pass writes each block's gradient over the same block of the
# student's logits (a fori_loop whose carry is the logits, updated in place),
# and the backward pass scales it by the cotangent in place the same way: at
# no point does the loss hold a third logits-sized array beside the two
# models' logits (XLA would otherwise materialise the gradient, the scaled
# gradient and the transposed copy the unembedding's gradient reads). In
# place needs a block size that divides the rows; rows with no divisor of at
# least _MIN_BLOCK (a prime count, say) are padded into a new array instead.
_ROW_BLOCK = 128
_MIN_BLOCK = 16


def _block_size(rows: int) -> int | None:
  """Rows per in-place block: the largest divisor of `rows` up to _ROW_BLOCK.

  None when `rows` fit one block (no loop) or have no divisor of at least
  _MIN_BLOCK (padded blocks).
  """
  if rows <= _ROW_BLOCK:
    return None
  for size in range(_ROW_BLOCK, _MIN_BLOCK - 1, -1):
    if rows % size == 0:
      return size
  return None


def _block_values_and_grad(fn, s, t, temperature, hyper, mask):
  """One block's values and d(values)/d(s) with a unit cotangent, 0 where masked."""
  values, vjp = jax.vjp(lambda x: fn(x, t, temperature=temperature, **hyper), s)
  (unit_grad,) = vjp(jnp.ones_like(values))
  if mask is not None:
    unit_grad = jnp.where(mask[..., None], unit_grad, jnp.zeros((), unit_grad.dtype))
    values = jnp.where(mask, values, 0.0)
  return values, unit_grad.astype(s.dtype)


def _unit_grad_in_place(fn, student_logits, teacher_logits, temperature, hyper, mask, size):
  """Values and unit gradients, each block's gradient written over its logits."""
  shape, vocab = student_logits.shape, student_logits.shape[-1]
  blocks = int(np.prod(shape[:-1])) // size
  s = student_logits.reshape(blocks, size, vocab)
  t = teacher_logits.reshape(blocks, size, vocab)
  m = None if mask is None else mask.reshape(blocks, size)
  dtype = jax.eval_shape(
      lambda a, b: fn(a, b, temperature=temperature, **hyper), s[0], t[0]).dtype

  def body(i, carry):
    logits, values = carry
    take = functools.partial(jax.lax.dynamic_index_in_dim, index=i, keepdims=False)
    block_values, grad = _block_values_and_grad(
        fn, take(logits), take(t), temperature, hyper, None if m is None else take(m))
    # Makes the write depend on the block's values (a select that never
    # fires, even for NaN or inf values), so XLA schedules every read of the
    # block before the write that replaces it and updates the carry in place
    # instead of copying it.
    grad = jnp.where((block_values > jnp.inf)[:, None], jnp.zeros((), grad.dtype), grad)
    logits = jax.lax.dynamic_update_index_in_dim(logits, grad, i, 0)
    values = jax.lax.dynamic_update_index_in_dim(values, block_values, i, 0)
    return logits, values

  unit_grad, values = jax.lax.fori_loop(
      0, blocks, body, (s, jnp.zeros((blocks, size), dtype)))
  return values.reshape(shape[:-1]), unit_grad.reshape(shape)


def _unit_grad_padded(fn, student_logits, teacher_logits, temperature, hyper, mask):
  """As _unit_grad_in_place, into a new array, for row counts without a usable divisor."""
  shape, vocab = student_logits.shape, student_logits.shape[-1]
  rows = int(np.prod(shape[:-1]))
  blocks = -(-rows // _ROW_BLOCK)
  padding = blocks * _ROW_BLOCK - rows

  def split(x, *tail):
    x = jnp.pad(x.reshape(rows, *tail), ((0, padding),) + ((0, 0),) * len(tail))
    return x.reshape(blocks, _ROW_BLOCK, *tail)

  masks = jnp.ones((blocks, _ROW_BLOCK), bool) if mask is None else split(mask)
  values, unit_grad = jax.lax.map(
      lambda x: _block_values_and_grad(fn, *x[:2], temperature, hyper, x[2]),
      (split(student_logits, vocab), split(teacher_logits, vocab), masks))
  values = values.reshape(-1)[:rows].reshape(shape[:-1])
  unit_grad = unit_grad.reshape(-1, vocab)[:rows].reshape(shape)
  return values, unit_grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _row_fused(fn, student_logits, teacher_logits, temperature, hyper, mask):
  """``fn``'s per-row values, 0 where `mask` (None: every row counts) is False."""
  values = fn(student_logits, teacher_logits, temperature=temperature, **hyper)
  return values if mask is None else jnp.where(mask, values, 0.0)


def _row_fused_fwd(fn, student_logits, teacher_logits, temperature, hyper, mask):
  rows = int(np.prod(student_logits.shape[:-1]))
  if rows <= _ROW_BLOCK:
    return _block_values_and_grad(fn, student_logits, teacher_logits, temperature, hyper,
                                  mask)
  size = _block_size(rows)
  if size is None:
    return _unit_grad_padded(fn, student_logits, teacher_logits, temperature, hyper, mask)
  return _unit_grad_in_place(fn, student_logits, teacher_logits, temperature, hyper, mask,
                             size)


def _row_fused_bwd(fn, unit_grad, cotangent):
  del fn
  shape = unit_grad.shape
  rows = int(np.prod(shape[:-1]))
  size = _block_size(rows)
  if size is None:
    grad = (cotangent[..., None] * unit_grad).astype(unit_grad.dtype)
    return grad, None, None, None, None
  # Scaled block by block in place (the unit gradient dies here).
  blocks = rows // size
  cotangent = cotangent.reshape(blocks, size)

  def body(i, grad):
    take = functools.partial(jax.lax.dynamic_index_in_dim, index=i, keepdims=False)
    block = (take(cotangent)[:, None] * take(grad)).astype(grad.dtype)
    return jax.lax.dynamic_update_index_in_dim(grad, block, i, 0)

  grad = jax.lax.fori_loop(0, blocks, body, unit_grad.reshape(blocks, size, shape[-1]))
  return grad.reshape(shape), None, None, None, None


_row_fused.defvjp(_row_fused_fwd, _row_fused_bwd)


@_checks.renamed_argument('where', 'token_mask')
def token_mean(values: ArrayLike, token_mask: ArrayLike | None = None) -> Array:
  """The token-weighted mean ``sum(values * mask) / max(sum(mask), 1)``.

  Every real token counts once, however many real tokens each sequence has
  (a mean of per-sequence means would weigh short sequences more).

  Args:
    values: ``[batch, time]`` per-token values.
    token_mask: optional mask of the real tokens aligned with the leading
      axes of `values` (was ``where=``, deprecated).

  Returns:
    A float32 scalar; 0 when no token is real.
  """
  values = jnp.asarray(values, jnp.float32)
  mask = aligned_token_mask(token_mask, 'values', values.shape)
  if mask is None:
    return jnp.mean(values)
  total = jnp.sum(jnp.where(mask, values, 0.0))
  return total / jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
