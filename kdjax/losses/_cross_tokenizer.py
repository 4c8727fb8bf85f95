"""Distillation across tokenizers: ULD, chunk-merged log-probabilities, GOLD's hybrid."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from kdjax import _checks
from kdjax.losses._common import compute_dtype
from kdjax.losses._common import jit_after_checks
from kdjax.losses._common import positive_value
from kdjax.losses._logit import _kl
from kdjax.losses._logit import _masked_log_softmax
from kdjax.losses._sequence import aligned_token_mask

Array = jax.Array
ArrayLike = Any

# Conventions (those of kdjax.losses): ``(student, teacher)`` argument order,
# per-token values with no reduction, float32 (float64 stays float64),
# log-space, `temperature` divides both logit sets and the value is
# multiplied by ``temperature**2``, the teacher under `stop_gradient`,
# masked tokens give 0 with zero gradients even for NaN logits.


def _check_top_k(top_k: int | None) -> None:
  if top_k is not None:
    _checks.check_positive_int('top_k', top_k)


def _top_k_value(arguments) -> None:
  _check_top_k(arguments['top_k'])


def _check_temperature(temperature: ArrayLike) -> None:
  if jnp.ndim(temperature) != 0:
    raise ValueError(f'temperature must be a scalar, got shape {jnp.shape(temperature)}.')
  _checks.check_positive('temperature', temperature)


def _tempered_log_probs(logits: Array, valid: Array | None, temperature, dtype) -> Array:
  """``log_softmax(logits / T)`` over the last axis; rows outside `valid` use zero logits."""
  logits = logits.astype(dtype)
  if valid is not None:
    # Zero logits, not the given ones: finite values and zero gradients on
    # padding even when its logits are NaN.
    logits = jnp.where(valid[..., None], logits, 0.0)
  log_probs, _ = _masked_log_softmax(logits / jnp.asarray(temperature, dtype), None)
  return log_probs


def _mass(log_q: Array) -> Array:
  """``sum(exp(log_q))`` over the last axis; 0 for a row of -inf."""
  return jnp.sum(jnp.exp(log_q), axis=-1)


def sorted_l1(log_q: Array, log_p: Array, top_k: int | None = None) -> Array:
  """``sum_r |sort(q)_r - sort(p)_r|`` of two (sub-)distributions given in log space.

  Both are sorted in descending order along the last axis and the shorter
  is padded with zeros. With `top_k`, only the first ``k`` ranks are
  compared and the ranks beyond add ``|tail(q) - tail(p)|``, where
  ``tail = mass - (mass of the top k)``: a lower bound of the exact value,
  at most ``2 min(tail(q), tail(p))`` below it. Where ``k`` covers a
  whole vocabulary its tail is exactly 0 (nothing is approximated), so
  ``top_k >= max(vocabularies)`` gives the exact value.
  """
  student_vocab, teacher_vocab = log_q.shape[-1], log_p.shape[-1]
  width = max(student_vocab, teacher_vocab)
  if top_k is not None:
    width = min(width, top_k)
  ranks = []
  for log_x, vocab in ((log_q, student_vocab), (log_p, teacher_vocab)):
    x = jnp.exp(log_x)
    k = min(width, vocab)
    top, _ = lax.top_k(x, k)
    tail = None
    if k < vocab:
      tail = jnp.maximum(_mass(log_x) - jnp.sum(top, axis=-1), 0.0)
    if k < width:
      top = jnp.pad(top, [(0, 0)] * (top.ndim - 1) + [(0, width - k)])
    ranks.append((top, tail))
  (top_q, tail_q), (top_p, tail_p) = ranks
  value = jnp.sum(jnp.abs(top_q - top_p), axis=-1)
  if tail_q is None and tail_p is None:
    return value
  zero = jnp.zeros_like(value)
  tail_q = zero if tail_q is None else tail_q
  tail_p = zero if tail_p is None else tail_p
  return value + jnp.abs(tail_q - tail_p)


@jit_after_checks(positive_value('temperature'), _top_k_value, static_argnames=('top_k',))
def uld_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    token_mask: ArrayLike | None = None,
    top_k: int | None = None,
) -> Array:
  """Universal Logit Distillation: per-token Wasserstein-1 between two vocabularies.

  The student's next-token distribution ``q`` (over its vocabulary) and the
  teacher's ``p`` (over another vocabulary, of another size) are compared
  without any correspondence between their tokens: with the transport cost
  1 between any two different tokens, the optimal-transport distance has
  the closed form (Boizard et al., 2024)::

      ULD(q, p) = sum_r | q_(r) - p_(r) |

  where ``q_(r)`` is the ``r``-th largest student probability, ``p_(r)``
  likewise, and the smaller vocabulary is padded with zeros. It is
  invariant to any permutation of either vocabulary and needs the same
  number of positions on both sides (it compares position ``t`` with
  position ``t``; the paper aligns the two sequences at the start of the
  answer and cuts them to the shorter, see
  :func:`kdjax.objective.uld_distill`; for alignment by byte offsets see
  :func:`cross_tokenizer_divergence`).

  For large vocabularies ``top_k`` compares only the ``k`` largest
  probabilities of each side (``lax.top_k`` instead of a full sort); the
  ranks beyond ``k`` contribute ``|tail(q) - tail(p)|``, the difference of
  the remaining masses. This is a lower bound: the exact value is at most
  ``2 min(tail(q), tail(p))`` larger (the triangle inequality on the
  tails). ``top_k`` at least the larger vocabulary is exact.

  Args:
    student_logits: ``[..., student_vocab]`` (e.g. ``[batch, time, vocab]``).
    teacher_logits: ``[..., teacher_vocab]``; all axes but the last equal to
      the student's.
    temperature: positive scalar dividing both logit sets; the value is
      multiplied by ``temperature**2`` (the rule of :mod:`kdjax.losses`;
      the paper uses T = 1).
    token_mask: optional mask aligned with the leading axes (``[batch,
      time]`` or ``[batch]``), 1 for real tokens.
    top_k: optional number of ranks compared (see above); ``None``: all.

  Returns:
    ``[...]`` per-token values (float32), in ``[0, 2 T²]``; 0 where masked.

  Raises:
    ValueError: if the leading axes differ (naming both shapes), for a
      non-scalar or non-positive temperature or a bad `top_k`.

  Examples:
    >>> import jax
    >>> from kdjax import losses
    >>> student = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 10))
    >>> teacher = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 16))
    >>> print(losses.uld_loss(student, teacher).shape)
    (2, 3)

  References:
    Boizard, El Haddad, Hudelot and Colombo, "Towards Cross-Tokenizer
    Distillation: the Universal Logit Distillation Loss for LLMs", TMLR
    2025, https://arxiv.org/abs/2402.12030.
  """
  _checks.check_floating('student_logits', student_logits)
  _checks.check_floating('teacher_logits', teacher_logits)
  student_shape, teacher_shape = jnp.shape(student_logits), jnp.shape(teacher_logits)
  if not student_shape or not teacher_shape or student_shape[:-1] != teacher_shape[:-1]:
    raise ValueError(
        'student_logits and teacher_logits must agree on every axis but the last '
        f'(vocabulary) axis, got student_logits.shape={student_shape} and '
        f'teacher_logits.shape={teacher_shape}.')
  _check_temperature(temperature)
  _check_top_k(top_k)
  student_logits = jnp.asarray(student_logits)
  teacher_logits = lax.stop_gradient(jnp.asarray(teacher_logits))
  dtype = compute_dtype(student_logits, teacher_logits)
  mask = aligned_token_mask(token_mask, 'student_logits', student_shape[:-1])
  log_q = _tempered_log_probs(student_logits, mask, temperature, dtype)
  log_p = _tempered_log_probs(teacher_logits, mask, temperature, dtype)
  values = sorted_l1(log_q, log_p, top_k) * jnp.square(jnp.asarray(temperature, dtype))
  if mask is not None:
    values = jnp.where(mask, values, 0.0)
  return values


# ----------------------------------------------------------------------------
# Chunks: runs of positions cut at the byte boundaries both tokenizers share.


def _check_labels(name: str, labels: Any, shape: tuple[int, ...], shape_name: str) -> None:
  _checks.check_integer(name, labels)
  if tuple(jnp.shape(labels)) != tuple(shape):
    raise ValueError(
        f'{name} must have the shape {shape_name} = {tuple(shape)}, got '
        f'{name}.shape={tuple(jnp.shape(labels))}.')


def _check_chunk_ids(name: str, chunk_ids: Any, shape: tuple[int, ...], shape_name: str) -> None:
  _check_labels(name, chunk_ids, shape, shape_name)


def _chunk_ids_value(*names: str):
  """A value check: each named chunk-id array holds ids in ``[-1, time)``, when known."""

  def check(arguments):
    for name in names:
      chunk_ids = arguments[name]
      if not _checks.is_concrete(chunk_ids) or not jnp.ndim(chunk_ids):
        continue
      arr = np.asarray(chunk_ids)
      time = arr.shape[-1]
      if arr.size and (arr.min() < -1 or arr.max() >= time):
        raise ValueError(
            f'{name} must hold chunk ids in [0, {time}) or -1 (no chunk), got values '
            f'in [{arr.min()}, {arr.max()}].')

  return check


def chunk_end_mask(chunk_ids: ArrayLike) -> Array:
  """True at the last position of each chunk: ``id >= 0`` and the next id differs.

  Args:
    chunk_ids: int ``[batch, time]``: the chunk of each target position, -1
      for none (see :func:`kdjax.data.make_cross_tokenizer_arrays`).

  Returns:
    bool ``[batch, time]``.
  """
  chunk_ids = jnp.asarray(chunk_ids)
  following = jnp.concatenate(
      [chunk_ids[..., 1:], jnp.full(chunk_ids.shape[:-1] + (1,), -1, chunk_ids.dtype)], axis=-1)
  return (chunk_ids >= 0) & (following != chunk_ids)


def _chunk_start_mask(chunk_ids: Array) -> Array:
  preceding = jnp.concatenate(
      [jnp.full(chunk_ids.shape[:-1] + (1,), -1, chunk_ids.dtype), chunk_ids[..., :-1]], axis=-1)
  return (chunk_ids >= 0) & (preceding != chunk_ids)


def _per_chunk(values: Array, chunk_ids: Array, num_chunks: int, reduce) -> Array:
  """``reduce`` (a segment op) of ``[batch, time]`` values by chunk: ``[batch, num_chunks]``.

  Positions outside any chunk go to an extra segment that is dropped.
  """
  segments = jnp.where(chunk_ids >= 0, chunk_ids, num_chunks)
  per_row = jax.vmap(lambda v, s: reduce(v, s, num_segments=num_chunks + 1))
  return per_row(values, segments)[..., :num_chunks]


def _at_chunks(per_chunk: Array, chunk_ids: Array) -> Array:
  """``per_chunk[b, chunk_ids[b, t]]`` (0 where the id is -1): ``[batch, time]``."""
  safe = jnp.clip(chunk_ids, 0, per_chunk.shape[-1] - 1)
  gathered = jnp.take_along_axis(per_chunk, safe, axis=-1)
  return jnp.where(chunk_ids >= 0, gathered, jnp.zeros_like(gathered))


def _merge_chunks(log_probs: Array, labels: Array, chunk_ids: Array) -> Array:
  """The merged log-probabilities at every position (meaningful at chunk ends)."""
  vocab = log_probs.shape[-1]
  safe_labels = jnp.clip(labels, 0, vocab - 1)
  label_log_probs = jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  inner = (chunk_ids >= 0) & ~chunk_end_mask(chunk_ids)
  prefix = _per_chunk(
      jnp.where(inner, label_log_probs, 0.0), chunk_ids, chunk_ids.shape[-1],
      jax.ops.segment_sum)
  return log_probs + _at_chunks(prefix, chunk_ids)[..., None]


@jit_after_checks(positive_value('temperature'), _chunk_ids_value('chunk_ids'))
def chunk_log_probs(
    logits: ArrayLike,
    labels: ArrayLike,
    chunk_ids: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
) -> tuple[Array, Array]:
  """Next-token log-probabilities merged over each chunk, by the chain rule, in log space.

  A chunk is a run of target positions ``i_1 < ... < i_l`` (the same id in
  `chunk_ids`) whose tokens ``y_1 .. y_l`` spell the same bytes as a run
  of the other model's tokens. At the chunk's last position the merged
  vector over the vocabulary is::

      log m(v) = sum_{r < l} log P(y_r | context, y_<r) + log P(v | context, y_<l)

  the log-probability that the text after the chunk's context continues
  with the bytes of ``y_1 .. y_{l-1}`` and then token ``v`` (GOLD's chain,
  "bayesian" merge). Its entry at the chunk's own last token is the
  probability of the whole chunk, and for a one-token chunk it is the
  ordinary next-token distribution. The vector is not normalised: its mass
  is ``P(y_<l)``.

  Args:
    logits: ``[batch, time, vocab]`` next-token logits at the target
      positions.
    labels: int ``[batch, time]``: the target token at each position.
    chunk_ids: int ``[batch, time]``: each position's chunk, -1 for none
      (padding, or bytes covered by only one side). A chunk's positions are
      consecutive.
    temperature: positive scalar dividing the logits (every factor of the
      chain is tempered).

  Returns:
    ``(merged, ends)``: float32 ``[batch, time, vocab]`` merged
    log-probabilities, meaningful where `ends` (bool ``[batch, time]``,
    :func:`chunk_end_mask`) is True; positions outside chunks use zero
    logits, so NaN there does not spread.

  Raises:
    ValueError: for shapes that do not match, naming them.
  """
  _checks.check_floating('logits', logits)
  logits = jnp.asarray(logits)
  if logits.ndim != 3:
    raise ValueError(f'logits must be [batch, time, vocab], got logits.shape={logits.shape}.')
  _check_labels('labels', labels, logits.shape[:-1], '[batch, time] of logits')
  _check_chunk_ids('chunk_ids', chunk_ids, logits.shape[:-1], '[batch, time] of logits')
  _check_temperature(temperature)
  chunk_ids = jnp.asarray(chunk_ids)
  log_probs = _tempered_log_probs(
      logits, chunk_ids >= 0, temperature, compute_dtype(logits))
  return _merge_chunks(log_probs, jnp.asarray(labels), chunk_ids), chunk_end_mask(chunk_ids)


def _check_mapping(vocab_mapping: Any, student_vocab: int) -> Array:
  _checks.check_integer('vocab_mapping', vocab_mapping)
  if tuple(jnp.shape(vocab_mapping)) != (student_vocab,):
    raise ValueError(
        f'vocab_mapping must have one entry per student token, shape ({student_vocab},) '
        f'(the last axis of student_logits), got vocab_mapping.shape='
        f'{tuple(jnp.shape(vocab_mapping))}.')
  return jnp.asarray(vocab_mapping)


def _mapping_value(arguments) -> None:
  """A value check: teacher ids in range and distinct, when the mapping is known."""
  vocab_mapping = arguments['vocab_mapping']
  if vocab_mapping is None or not _checks.is_concrete(vocab_mapping):
    return
  arr = np.asarray(vocab_mapping)
  teacher_vocab = jnp.shape(arguments['teacher_logits'])[-1]
  if arr.size and (arr.min() < -1 or arr.max() >= teacher_vocab):
    raise ValueError(
        f'vocab_mapping must hold teacher ids in [0, {teacher_vocab}) (the last axis of '
        f'teacher_logits) or -1, got values in [{arr.min()}, {arr.max()}].')
  mapped = arr[arr >= 0]
  if np.unique(mapped).size != mapped.size:
    raise ValueError('vocab_mapping maps two student tokens to the same teacher token.')


def _check_cross_shapes(student_logits, teacher_logits, student_labels, teacher_labels,
                        student_chunk, teacher_chunk) -> None:
  for name, x in (('student_logits', student_logits), ('teacher_logits', teacher_logits)):
    _checks.check_floating(name, x)
    if jnp.ndim(x) != 3:
      raise ValueError(f'{name} must be [batch, time, vocab], got {name}.shape={jnp.shape(x)}.')
  student_shape, teacher_shape = jnp.shape(student_logits), jnp.shape(teacher_logits)
  if student_shape[0] != teacher_shape[0]:
    raise ValueError(
        'student_logits and teacher_logits must have the same batch size, got '
        f'student_logits.shape={student_shape} and teacher_logits.shape={teacher_shape}.')
  _check_labels('student_labels', student_labels, student_shape[:2],
                   '[batch, student_time] of student_logits')
  _check_chunk_ids('student_chunk', student_chunk, student_shape[:2],
                   '[batch, student_time] of student_logits')
  _check_labels('teacher_labels', teacher_labels, teacher_shape[:2],
                   '[batch, teacher_time] of teacher_logits')
  _check_chunk_ids('teacher_chunk', teacher_chunk, teacher_shape[:2],
                   '[batch, teacher_time] of teacher_logits')


@jit_after_checks(
    positive_value('temperature'), _top_k_value, _mapping_value,
    _chunk_ids_value('student_chunk', 'teacher_chunk'), static_argnames=('top_k',))
def cross_tokenizer_divergence(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    student_labels: ArrayLike,
    teacher_labels: ArrayLike,
    student_chunk: ArrayLike,
    teacher_chunk: ArrayLike,
    vocab_mapping: ArrayLike | None = None,
    temperature: ArrayLike = 1.0,
    top_k: int | None = None,
    token_mask: ArrayLike | None = None,
) -> Array:
  """Per-chunk divergence between a student and a teacher that tokenize differently.

  Both models read the same text, each in its own tokens. The text is cut
  at the byte offsets where both tokenizations have a boundary; each piece
  (chunk) is one or more student tokens and one or more teacher tokens
  spelling the same bytes (`student_chunk` and `teacher_chunk` give each
  target position its chunk, :func:`kdjax.data.make_cross_tokenizer_arrays`
  computes them). Per chunk, each side's next-token distributions are
  merged over the chunk by the chain rule in log space
  (:func:`chunk_log_probs`): both merged vectors are then conditioned on
  the same text, the chunk's context. They are compared:

  * without `vocab_mapping`: by the sorted L1 of ULD (:func:`uld_loss`,
    with `top_k`) between the merged vectors;
  * with `vocab_mapping` (student id -> teacher id of the same byte string,
    or -1; :func:`kdjax.data.vocab_mapping`), GOLD's hybrid: where the
    chunk is one token on each side (the tokens coincide: same bytes, same
    context) the forward KL between the teacher's and the student's
    distributions restricted to the shared tokens (both renormalised over
    them), plus the sorted L1 between the remaining, unshared,
    probabilities of both sides; other chunks use the sorted L1 of the
    whole merged vectors, since there the same token id stands for
    different strings on the two sides (after different prefixes).

  With identical tokenizers every chunk is one token on each side, the
  mapping is the identity and the hybrid is exactly
  ``token_divergence(..., divergence='forward_kl')``.

  The value of a chunk is written at its last student position; other
  positions give 0. Average over :func:`chunk_end_mask` of `student_chunk`
  (:func:`kdjax.objective.cross_tokenizer_distill` does).

  Args:
    student_logits: ``[batch, student_time, student_vocab]`` next-token
      logits of the student at its target positions.
    teacher_logits: ``[batch, teacher_time, teacher_vocab]`` of the teacher.
    student_labels: int ``[batch, student_time]``: the student's targets.
    teacher_labels: int ``[batch, teacher_time]``: the teacher's targets.
    student_chunk: int ``[batch, student_time]``: chunk id per student
      target (0, 1, ... in order), -1 for none.
    teacher_chunk: int ``[batch, teacher_time]``: the same ids on the
      teacher's targets.
    vocab_mapping: optional int ``[student_vocab]`` for the hybrid.
    temperature: positive scalar dividing both logit sets; the value is
      multiplied by ``temperature**2``.
    top_k: ranks compared by the sorted L1 (see :func:`uld_loss`).
    token_mask: optional ``[batch, student_time]`` (or ``[batch]``) mask of
      the student's real tokens; a chunk counts only if all its student
      positions are real.

  Returns:
    float32 ``[batch, student_time]``: each chunk's value at its last student
    position, 0 elsewhere.

  Raises:
    ValueError: for shapes that do not match (naming them), a mapping of
      the wrong size or with ids outside the teacher's vocabulary, chunk ids
      out of range.

  References:
    Boizard et al., "Towards Cross-Tokenizer Distillation: the Universal
    Logit Distillation Loss for LLMs", https://arxiv.org/abs/2402.12030;
    Patiño et al., "Unlocking On-Policy Distillation for Any Model Family"
    (GOLD, Hugging Face TRL, 2025): byte-offset alignment, chain merging
    and the hybrid of KL on the shared vocabulary and ULD on the rest.
  """
  _check_cross_shapes(student_logits, teacher_logits, student_labels, teacher_labels,
                      student_chunk, teacher_chunk)
  _check_temperature(temperature)
  _check_top_k(top_k)
  student_logits = jnp.asarray(student_logits)
  teacher_logits = lax.stop_gradient(jnp.asarray(teacher_logits))
  student_time, student_vocab = student_logits.shape[1:]
  teacher_vocab = teacher_logits.shape[-1]
  mapping = None
  if vocab_mapping is not None:
    mapping = _check_mapping(vocab_mapping, student_vocab)
  dtype = compute_dtype(student_logits, teacher_logits)
  student_chunk = jnp.asarray(student_chunk)
  teacher_chunk = jnp.asarray(teacher_chunk)
  mask = aligned_token_mask(token_mask, 'student_logits', student_logits.shape[:2])
  if mask is not None:
    # A chunk with a padded student position is dropped whole.
    broken = _per_chunk((~mask).astype(jnp.int32), student_chunk, student_time,
                        jax.ops.segment_max)
    student_chunk = jnp.where(_at_chunks(broken, student_chunk) > 0, -1, student_chunk)

  log_q = _merge_chunks(
      _tempered_log_probs(student_logits, student_chunk >= 0, temperature, dtype),
      jnp.asarray(student_labels), student_chunk)
  log_p = _merge_chunks(
      _tempered_log_probs(teacher_logits, teacher_chunk >= 0, temperature, dtype),
      jnp.asarray(teacher_labels), teacher_chunk)

  # The teacher position that ends each chunk, then the teacher's merged
  # vector brought to the student position that ends the same chunk.
  teacher_ends = chunk_end_mask(teacher_chunk)
  positions = jnp.broadcast_to(jnp.arange(teacher_chunk.shape[-1]), teacher_chunk.shape)
  end_of_chunk = _per_chunk(
      jnp.where(teacher_ends, positions, -1), jnp.where(teacher_ends, teacher_chunk, -1),
      student_time, jax.ops.segment_max)
  student_ends = chunk_end_mask(student_chunk)
  teacher_position = jnp.where(student_ends, _at_chunks(end_of_chunk, student_chunk), -1)
  paired = student_ends & (teacher_position >= 0)
  safe_position = jnp.clip(teacher_position, 0, teacher_logits.shape[1] - 1)
  log_p = jnp.take_along_axis(log_p, safe_position[..., None], axis=1)
  # Rows that pair nothing: zeros, so no -inf or NaN reaches a gradient.
  log_q = jnp.where(paired[..., None], log_q, jnp.log(1.0 / student_vocab))
  log_p = jnp.where(paired[..., None], log_p, jnp.log(1.0 / teacher_vocab))

  values = sorted_l1(log_q, log_p, top_k)
  if mapping is not None:
    single_teacher = jnp.take_along_axis(
        _chunk_start_mask(teacher_chunk) & teacher_ends, safe_position, axis=-1)
    coincide = paired & _chunk_start_mask(student_chunk) & single_teacher
    values = jnp.where(coincide, _hybrid(log_q, log_p, mapping, top_k), values)
  values = values * jnp.square(jnp.asarray(temperature, dtype))
  return jnp.where(paired, values, 0.0)


def _hybrid(log_q: Array, log_p: Array, mapping: Array, top_k: int | None) -> Array:
  """KL over the shared tokens (renormalised) + sorted L1 over the unshared rest."""
  shared = mapping >= 0
  teacher_vocab = log_p.shape[-1]
  teacher_shared = jnp.zeros(teacher_vocab, bool).at[
      jnp.where(shared, mapping, teacher_vocab)].set(True, mode='drop')
  # The teacher's log-probabilities in the student's order (shared ids only).
  log_p_on_student = jnp.take(log_p, jnp.clip(mapping, 0, teacher_vocab - 1), axis=-1)
  shared_rows = jnp.broadcast_to(shared, log_q.shape)
  teacher_shared_rows = jnp.broadcast_to(teacher_shared, log_p.shape)
  log_q_shared, valid_q = _masked_log_softmax(log_q, shared_rows)
  log_p_shared, valid_p = _masked_log_softmax(log_p_on_student, shared_rows)
  del valid_q
  matched = _kl(log_p_shared, valid_p, log_q_shared)
  unmatched = sorted_l1(
      jnp.where(shared_rows, -jnp.inf, log_q), jnp.where(teacher_shared_rows, -jnp.inf, log_p),
      top_k)
  return matched + unmatched
