"""Language-model terms: token-level and chunked large-vocabulary divergences."""

from __future__ import annotations


import jax
import jax.numpy as jnp

from kdjax import _checks
from kdjax import losses
from kdjax import metrics as metrics_lib
from kdjax.objective._core import Batch
from kdjax.objective._core import check_schedule
from kdjax.objective._core import require_teacher
from kdjax.objective._core import schedule_value
from kdjax.objective._core import Schedule
from kdjax.objective._core import Term


def _own_token_mask(batch: Batch, mask_key: str | None):
  """The term's own token mask ``batch[mask_key]``, or None without a key."""
  if mask_key is None:
    return None
  return _checks.batch_entry(batch, mask_key, 'mask_key')


def _hyperparameters(step, beta, alpha) -> dict[str, jax.Array | None]:
  return {
      'beta': None if beta is None else schedule_value(beta, step),
      'alpha': None if alpha is None else schedule_value(alpha, step),
  }


def _check_divergence(divergence: str, beta, alpha) -> None:
  """Checks the name and hyper-parameters at build time."""
  losses.divergence_kwargs(
      divergence,
      None if beta is None else (beta(0) if callable(beta) else beta),
      None if alpha is None else (alpha(0) if callable(alpha) else alpha),
  )
  for name, value in (('beta', beta), ('alpha', alpha)):
    if value is not None:
      check_schedule(name, value, positive=False)


def _reduction_mask(batch: Batch, own_mask):
  """The mask the objective will most likely average with: the term's own
  times ``batch['mask']`` (the default padding mask), or None."""
  masks = [m for m in (own_mask, batch.get(metrics_lib.MASK_KEY)) if m is not None]
  if not masks:
    return None
  if len(masks) == 1:
    return masks[0]
  own, padding = (jnp.asarray(m, jnp.float32) for m in masks)
  if own.ndim < padding.ndim:
    own = own.reshape(own.shape + (1,) * (padding.ndim - own.ndim))
  elif padding.ndim < own.ndim:
    padding = padding.reshape(padding.shape + (1,) * (own.ndim - padding.ndim))
  return own * padding


def _token_term(per_token, divergence, temperature, beta, alpha, mask_key,
                reduction_hint: bool = False) -> Term:
  """A term of ``per_token(student, teacher, divergence=, temperature=, beta/alpha=)``.

  Checks the divergence and its hyper-parameters at build time, evaluates the
  schedules at the step, and returns the term's own token mask. With
  `reduction_hint`, `per_token` also gets ``reduction_mask=`` (see
  :func:`_reduction_mask`).
  """
  check_schedule('temperature', temperature, positive=True)
  _check_divergence(divergence, beta, alpha)

  def term(student, teacher, batch, step):
    own_mask = _own_token_mask(batch, mask_key)
    hint = {'reduction_mask': _reduction_mask(batch, own_mask)} if reduction_hint else {}
    values = per_token(
        student, require_teacher(teacher), divergence=divergence,
        temperature=schedule_value(temperature, step),
        **_hyperparameters(step, beta, alpha), **hint)
    return values, own_mask

  return term


def token_distill(
    divergence: str = 'forward_kl',
    *,
    temperature: Schedule = 1.0,
    vocab_size: int | None = None,
    mask_key: str | None = None,
    beta: Schedule | None = None,
    alpha: Schedule | None = None,
) -> Term:
  """A token-level distillation term for language models.

  ``losses.token_divergence(student.logits, teacher.logits, ...)`` on
  ``[batch, time, vocab]`` logits: one value per token. The
  :class:`Objective` masks them by the batch's padding mask
  (``batch['mask']``, ``[batch, time]``, 1 = real token), so its ``sum /
  count`` is the exact token-weighted mean (also across devices and hosts).
  With `vocab_size`, logits past the true vocabulary (padding, e.g. 32,064
  logits for 32,000 tokens) are dropped from both softmaxes.

  Args:
    divergence: ``'forward_kl'``, ``'reverse_kl'``, ``'jsd'``, ``'skew_kl'``,
      ``'skew_reverse_kl'`` or ``'tvd'`` (see
      :func:`kdjax.losses.divergence_fn`).
    temperature: a constant or a schedule of the step.
    vocab_size: the true vocabulary size when the logits carry padding.
    mask_key: a token mask of the term's own (e.g. the completion tokens
      only), applied on top of the objective's padding mask; ``None``
      (default): the padding mask alone.
    beta: the JSD's teacher weight (``'jsd'`` only), constant or schedule.
    alpha: the skew (``'skew_kl'``/``'skew_reverse_kl'`` only).

  Returns:
    A :class:`Term` giving ``[batch, time]`` values and ``batch[mask_key]``
    (or ``None``) as their mask.
  """
  return _token_term(
      lambda student, teacher, **kwargs: losses.token_divergence(
          student.logits, teacher.logits, vocab_size=vocab_size, **kwargs),
      divergence, temperature, beta, alpha, mask_key)


def chunked_distill(
    divergence: str = 'forward_kl',
    *,
    temperature: Schedule = 1.0,
    student_hidden: str = 'hidden',
    student_unembedding: str = 'unembedding',
    teacher_hidden: str = 'hidden',
    teacher_unembedding: str = 'unembedding',
    vocab_size: int | None = None,
    mask_key: str | None = None,
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
  ``[batch, time, vocab]`` logits of neither model are ever held. The
  batch's padding mask (``batch['mask']``, times `mask_key`'s) is handed
  to it as the ``reduction_mask``, so the step takes its fused gradient
  path (one pass over the logits); an objective averaging with another mask
  still gets exact gradients, recomputed.

  Args:
    divergence: ``'forward_kl'``, ``'reverse_kl'``, ``'jsd'``, ``'skew_kl'``,
      ``'skew_reverse_kl'`` or ``'tvd'``.
    temperature: a constant or a schedule of the step.
    student_hidden: the student's feature holding ``[batch, time, dim]``.
    student_unembedding: the student's feature holding ``[dim, vocab]``.
    teacher_hidden: the teacher's feature holding ``[batch, time, dim_t]``.
    teacher_unembedding: the teacher's feature holding ``[dim_t, vocab_t]``.
    vocab_size: the true vocabulary size when the unembeddings are padded.
    mask_key: a token mask of the term's own (e.g. the completion tokens
      only), applied on top of the objective's padding mask; ``None``
      (default): the padding mask alone.
    beta: the JSD's teacher weight (``'jsd'`` only), constant or schedule.
    alpha: the skew (``'skew_kl'``/``'skew_reverse_kl'`` only).
    token_chunk: tokens per chunk.
    vocab_chunk: optional vocabulary block size (see
      :func:`kdjax.losses.chunked_divergence`).

  Returns:
    A :class:`Term` giving ``[batch, time]`` values and ``batch[mask_key]``
    (or ``None``) as their mask.
  """
  return _token_term(
      lambda student, teacher, **kwargs: losses.chunked_divergence(
          student.feature(student_hidden), student.feature(student_unembedding),
          teacher.feature(teacher_hidden), teacher.feature(teacher_unembedding),
          vocab_size=vocab_size, token_chunk=token_chunk, vocab_chunk=vocab_chunk,
          **kwargs),
      divergence, temperature, beta, alpha, mask_key, reduction_hint=True)
