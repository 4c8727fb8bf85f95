"""Language-model terms: token-level and chunked large-vocabulary divergences."""

from __future__ import annotations


import jax

from kdjax import _checks
from kdjax import losses
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


def _token_term(per_token, divergence, temperature, beta, alpha, mask_key) -> Term:
  """A term of ``per_token(student, teacher, divergence=, temperature=, beta/alpha=)``.

  Checks the divergence and its hyper-parameters at build time, evaluates the
  schedules at the step, and returns the term's own token mask.
  """
  check_schedule('temperature', temperature, positive=True)
  _check_divergence(divergence, beta, alpha)

  def term(student, teacher, batch, step):
    values = per_token(
        student, require_teacher(teacher), divergence=divergence,
        temperature=schedule_value(temperature, step),
        **_hyperparameters(step, beta, alpha))
    return values, _own_token_mask(batch, mask_key)

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
      divergence, temperature, beta, alpha, mask_key)


# The features a top-k teacher hands over (kdjax.cache.cached_teacher_apply,
# kdjax.cache.topk_teacher_apply): log-probs, indices, tail log-mass.
TOPK_LOG_PROBS = 'topk_log_probs'
TOPK_INDICES = 'topk_indices'
TAIL_LOG_MASS = 'tail_log_mass'


def cached_token_distill(
    mode: str = 'tail',
    *,
    temperature: Schedule = 1.0,
    vocab_size: int | None = None,
    mask_key: str | None = None,
) -> Term:
  """A token-level forward-KL term against a teacher's top-k log-probs.

  :func:`kdjax.losses.topk_kl_divergence` between the student's logits and
  the teacher's ``'topk_log_probs'``, ``'topk_indices'`` and
  ``'tail_log_mass'`` features, as :func:`kdjax.cache.cached_teacher_apply`
  reads them from a batch joined with a teacher cache (or
  :func:`kdjax.cache.topk_teacher_apply` computes them from a live
  teacher), so that :func:`kdjax.step.make_train_step` runs unchanged with
  the cache as its teacher. ``mode='tail'`` is the KL over the top-k plus
  one tail bucket (a lower bound of the full forward KL, equal at k = V);
  ``'renormalize'`` renormalises both sides over the teacher's top-k
  (MaxText); the docstring of :func:`~kdjax.losses.topk_kl_divergence`
  gives the bias of each.

  Args:
    mode: ``'tail'`` or ``'renormalize'``.
    temperature: a constant or a schedule; it divides the student's logits
      and multiplies the value by T². It must be the temperature the
      teacher's log-probs were computed at (``TeacherCache.spec.temperature``):
      a top-k cannot be re-tempered.
    vocab_size: the student's true vocabulary when its logits are padded.
    mask_key: a token mask of the term's own, on top of the objective's
      padding mask; None: the padding mask alone.

  Returns:
    A :class:`Term` giving ``[batch, time]`` values and ``batch[mask_key]``
    (or ``None``) as their mask.
  """
  if mode not in losses.TOPK_MODES:
    raise ValueError(f'mode must be one of {list(losses.TOPK_MODES)}, got {mode!r}.')
  check_schedule('temperature', temperature, positive=True)

  def term(student, teacher, batch, step):
    teacher = require_teacher(teacher)
    tail = teacher.feature(TAIL_LOG_MASS) if mode == 'tail' else None
    values = losses.topk_kl_divergence(
        student.logits, teacher.feature(TOPK_LOG_PROBS), teacher.feature(TOPK_INDICES), tail,
        mode=mode, temperature=schedule_value(temperature, step), vocab_size=vocab_size)
    return values, _own_token_mask(batch, mask_key)

  return term
