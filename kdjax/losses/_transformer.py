"""Per-token losses of Transformer-encoder distillation: TinyBERT, DistilBERT, MiniLM."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from kdjax import _checks
from kdjax.losses._common import jit_after_checks
from kdjax.losses._common import positive_int_value
from kdjax.losses._common import positive_value
from kdjax.losses._feature import l2_normalize
from kdjax.losses._feature import prepare_features
from kdjax.losses._logit import _kl
from kdjax.losses._logit import _masked_log_softmax

Array = jax.Array
ArrayLike = Any

# Conventions of this module:
#
# * Arguments are ``(student, teacher, ...)``; the teacher passes through
#   `stop_gradient`; work is float32 (float64 stays float64).
# * Values are PER TOKEN, ``[batch, time]`` (a query position for the
#   attention losses): the Objective's masked ``sum / count`` with the same
#   token mask is then the mean over the batch's real tokens, as the
#   authors' batch means over tokens are. Reduce per example with
#   :func:`kdjax.losses.token_mean` row by row if wanted.
# * ``token_mask`` (``[batch, time]``, 1 = real token) excludes padding
#   everywhere: a padded position gives 0 (with zero gradient) and a padded
#   KEY takes no part in a real query's value, so a padded batch gives the
#   values of the unpadded sequences (mask == slice).


def _token_mask(token_mask: ArrayLike | None, batch: int, time: int) -> Array | None:
  """``token_mask`` checked against ``[batch, time]``, as bool (None stays None)."""
  if token_mask is None:
    return None
  if tuple(jnp.shape(token_mask)) != (batch, time):
    raise ValueError(
        f'token_mask must be [batch, time] = ({batch}, {time}), got token_mask with shape '
        f'{tuple(jnp.shape(token_mask))}.')
  return jnp.asarray(token_mask) > 0


def _masked_tokens(values: Array, mask: Array | None) -> Array:
  return values if mask is None else jnp.where(mask, values, 0.0)


def _check_scores(student_scores: ArrayLike, teacher_scores: ArrayLike) -> tuple[Array, Array]:
  student, teacher = prepare_features(student_scores, teacher_scores, min_ndim=4,
                                      layout='[batch, heads, time, time]')
  if student.ndim != 4 or student.shape != teacher.shape or student.shape[2] != student.shape[3]:
    raise ValueError(
        'student_scores and teacher_scores must both be [batch, heads, time, time] with the '
        f'same shape (as many heads in both models), got student_scores.shape={student.shape} '
        f'and teacher_scores.shape={teacher.shape}.')
  return student, teacher


@jit_after_checks()
def attention_score_mse(
    student_scores: ArrayLike, teacher_scores: ArrayLike, *,
    token_mask: ArrayLike | None = None,
) -> Array:
  r"""TinyBERT's attention loss: the MSE between attention scores before the softmax.

  For each real query ``q`` of example ``b``:

  .. math::
     \ell_{b,q} = \frac{1}{H\,n_b} \sum_{h=1}^{H} \sum_{k\ \mathrm{real}}
       (S^{s}_{b,h,q,k} - S^{t}_{b,h,q,k})^2

  with ``S = Q K^T / sqrt(d)`` and ``n_b`` the real keys of ``b``; so the
  Objective's token-weighted mean is the mean squared error over every
  head and real (query, key) pair. The authors' code instead sets
  entries ``<= -100`` (keys masked by BERT's additive mask) to 0 in both
  matrices and averages over all ``batch * heads * time * time`` entries,
  padded ones included, and keeps padded queries: on an unpadded batch the
  two agree; on a padded one theirs is scaled by the padding fraction and
  counts padded query rows, ours is the same as on the unpadded sequences.

  Args:
    student_scores: ``[batch, heads, time, time]`` pre-softmax scores (the
      ``scores_<i>`` features of :class:`kdjax.zoo.BertEncoder`, before
      the padding mask).
    teacher_scores: the same shape (as many heads as the student).
    token_mask: ``[batch, time]``, 1 on real tokens.

  Returns:
    float32 ``[batch, time]`` per query; 0 on padded queries.

  References:
    Jiao et al., "TinyBERT: Distilling BERT for Natural Language
    Understanding", Findings of EMNLP 2020, arXiv:1909.10351 (Eq. 7).
  """
  student, teacher = _check_scores(student_scores, teacher_scores)
  batch, heads, time, _ = student.shape
  mask = _token_mask(token_mask, batch, time)
  squared = jnp.square(student - teacher)
  if mask is None:
    return jnp.mean(squared, axis=(1, 3))
  keys = mask[:, None, None, :]
  total = jnp.sum(jnp.where(keys, squared, 0.0), axis=(1, 3))
  count = heads * jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1)
  return _masked_tokens(total / count.astype(total.dtype), mask)


def _row_kl(student_logits: Array, teacher_logits: Array, mask: Array | None) -> Array:
  """``KL(softmax(teacher) || softmax(student))`` of each ``[..., query, key]`` row,
  over the real keys, averaged over axis 1 (heads); ``[batch, query]``."""
  if mask is not None:
    keys = mask[:, None, None, :]
    low = jnp.finfo(student_logits.dtype).min
    student_logits = jnp.where(keys, student_logits, low)
    teacher_logits = jnp.where(keys, teacher_logits, low)
  log_student = jax.nn.log_softmax(student_logits, axis=-1)
  log_teacher = jax.nn.log_softmax(teacher_logits, axis=-1)
  pointwise = jnp.exp(log_teacher) * (log_teacher - log_student)
  if mask is not None:
    pointwise = jnp.where(mask[:, None, None, :], pointwise, 0.0)
  return _masked_tokens(jnp.mean(jnp.sum(pointwise, axis=-1), axis=1), mask)


@jit_after_checks()
def attention_kl(
    student_scores: ArrayLike, teacher_scores: ArrayLike, *,
    token_mask: ArrayLike | None = None,
) -> Array:
  r"""MiniLM's self-attention distribution transfer: KL between attention distributions.

  .. math::
     \ell_{b,q} = \frac{1}{H} \sum_{h=1}^{H} \mathrm{KL}\big(
       \mathrm{softmax}(S^{t}_{b,h,q,:}) \,\|\, \mathrm{softmax}(S^{s}_{b,h,q,:})\big)

  with both softmaxes over the real keys only.

  Args:
    student_scores: ``[batch, heads, time, time]`` pre-softmax scores.
    teacher_scores: the same shape (MiniLM needs equal head counts; for
      different ones use :func:`relation_kl` on queries and keys).
    token_mask: ``[batch, time]``, 1 on real tokens.

  Returns:
    float32 ``[batch, time]`` per query; 0 on padded queries.

  References:
    Wang et al., "MiniLM: Deep Self-Attention Distillation for
    Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020,
    arXiv:2002.10957 (Eq. 7).
  """
  student, teacher = _check_scores(student_scores, teacher_scores)
  return _row_kl(student, teacher, _token_mask(token_mask, student.shape[0], student.shape[2]))


def _relation_logits(x: Array, num_heads: int, name: str) -> Array:
  """``[batch, time, width]`` -> scaled dot products ``[batch, heads, time, time]``."""
  batch, time, width = x.shape
  if width % num_heads:
    raise ValueError(
        f'{name} has width {width} (shape {x.shape}), not divisible by '
        f'num_relation_heads={num_heads}.')
  split = x.reshape(batch, time, num_heads, width // num_heads)
  return jnp.einsum('bqrd,bkrd->brqk', split, split) / np.sqrt(width // num_heads).astype(
      x.dtype)


@jit_after_checks(positive_int_value('num_relation_heads'),
                  static_argnames=('num_relation_heads',))
def relation_kl(
    student_vectors: ArrayLike, teacher_vectors: ArrayLike, *, num_relation_heads: int,
    token_mask: ArrayLike | None = None,
) -> Array:
  r"""MiniLM's self-attention relation transfer (values in v1, Q-Q/K-K/V-V in v2).

  Each model's vectors (queries, keys or values of one layer, heads
  concatenated) are split into ``R = num_relation_heads`` relation heads of
  width ``d_r`` (each model its own width), and each head's relation is
  ``softmax(X_r X_r^T / sqrt(d_r))``:

  .. math::
     \ell_{b,q} = \frac{1}{R} \sum_{r=1}^{R} \mathrm{KL}\big(
       R^{t}_{b,r,q,:} \,\|\, R^{s}_{b,r,q,:}\big)

  so the student's and the teacher's widths and attention heads may differ.
  MiniLM (v1)'s value relation is this with ``R`` = the attention heads.

  Args:
    student_vectors: ``[batch, time, width]``, or ``[batch, time, heads,
      head_dim]`` (the ``query_<i>``/``key_<i>``/``value_<i>`` features of
      :class:`kdjax.zoo.BertEncoder`), flattened to ``heads * head_dim``.
    teacher_vectors: the teacher's, same batch and time.
    num_relation_heads: ``R``; must divide both widths.
    token_mask: ``[batch, time]``, 1 on real tokens.

  Returns:
    float32 ``[batch, time]`` per query; 0 on padded queries.

  References:
    Wang et al., "MiniLM", NeurIPS 2020, arXiv:2002.10957 (Eq. 8-9);
    Wang et al., "MiniLMv2: Multi-Head Self-Attention Relation Distillation
    for Compressing Pretrained Transformers", Findings of ACL 2021,
    arXiv:2012.15828 (Eq. 1-4).
  """
  student, teacher = prepare_features(student_vectors, teacher_vectors, min_ndim=3,
                                      layout='[batch, time, width]')
  student = student.reshape(*student.shape[:2], -1)
  teacher = teacher.reshape(*teacher.shape[:2], -1)
  if student.shape[1] != teacher.shape[1]:
    raise ValueError(
        'student_vectors and teacher_vectors must have the same time axis, got '
        f'student_vectors.shape={jnp.shape(student_vectors)} and '
        f'teacher_vectors.shape={jnp.shape(teacher_vectors)}.')
  mask = _token_mask(token_mask, *student.shape[:2])
  return _row_kl(_relation_logits(student, num_relation_heads, 'student_vectors'),
                 _relation_logits(teacher, num_relation_heads, 'teacher_vectors'), mask)


def _check_tokens(student: Array, teacher: Array, what: str) -> None:
  if student.ndim != 3 or teacher.ndim != 3 or student.shape[:2] != teacher.shape[:2]:
    raise ValueError(
        f'student_{what} and teacher_{what} must be [batch, time, width] with the same batch '
        f'and time, got student_{what}.shape={student.shape} and teacher_{what}.shape='
        f'{teacher.shape}.')


def _projection_hint(student_width: int, teacher_width: int, what: str) -> ValueError:
  return ValueError(
      f'student_{what} has width {student_width} and teacher_{what} {teacher_width}: add a '
      f'projection, e.g. pass projection= a [{student_width}, {teacher_width}] kernel that '
      'belongs to the student, or build the student with '
      f'kdjax.zoo.BertConfig(projection_width={teacher_width}) and compare its '
      "'projected_<i>' features.")


@jit_after_checks()
def hidden_mse(
    student_hidden: ArrayLike, teacher_hidden: ArrayLike, *,
    projection: ArrayLike | None = None, token_mask: ArrayLike | None = None,
) -> Array:
  r"""TinyBERT's hidden-state (and embedding-layer) loss: MSE through a projection.

  .. math::
     \ell_{b,i} = \frac{1}{d_t} \lVert H^{s}_{b,i} W - H^{t}_{b,i} \rVert^2

  ``W`` (TinyBERT's ``W_h``, or ``W_e`` on the embedding outputs) is
  learnable and belongs to the STUDENT: pass it here, or let the student
  model project its own states (``kdjax.zoo.BertConfig(projection_width=)``
  exposes ``projected_<i>``) and compare those without a projection.

  Args:
    student_hidden: ``[batch, time, d_s]``.
    teacher_hidden: ``[batch, time, d_t]``.
    projection: ``[d_s, d_t]`` kernel; required when ``d_s != d_t``.
    token_mask: ``[batch, time]``, 1 on real tokens.

  Returns:
    float32 ``[batch, time]``; 0 on padded tokens.

  Raises:
    ValueError: if the widths differ and no projection is given (it says
      how to add one), or the projection's shape is not ``[d_s, d_t]``.

  References:
    Jiao et al., "TinyBERT", Findings of EMNLP 2020, arXiv:1909.10351
    (Eq. 8, 9).
  """
  student, teacher = prepare_features(student_hidden, teacher_hidden, min_ndim=3,
                                      layout='[batch, time, width]')
  _check_tokens(student, teacher, 'hidden')
  if projection is not None:
    _checks.check_floating('projection', projection)
    if tuple(jnp.shape(projection)) != (student.shape[-1], teacher.shape[-1]):
      raise ValueError(
          f'projection must be [d_s, d_t] = [{student.shape[-1]}, {teacher.shape[-1]}], got '
          f'projection with shape {tuple(jnp.shape(projection))}.')
    student = student @ jnp.asarray(projection, student.dtype)
  elif student.shape[-1] != teacher.shape[-1]:
    raise _projection_hint(student.shape[-1], teacher.shape[-1], 'hidden')
  mask = _token_mask(token_mask, *student.shape[:2])
  return _masked_tokens(jnp.mean(jnp.square(student - teacher), axis=-1), mask)


@jit_after_checks()
def cosine_embedding_loss(
    student_hidden: ArrayLike, teacher_hidden: ArrayLike, *,
    token_mask: ArrayLike | None = None,
) -> Array:
  r"""DistilBERT's cosine embedding loss on hidden states: ``1 - cos(h^s, h^t)`` per token.

  With the token mask, the Objective's token-weighted mean is the mean over
  the non-padding tokens, as DistilBERT's script selects them before
  PyTorch's ``CosineEmbeddingLoss`` with target 1.

  Args:
    student_hidden: ``[batch, time, d]`` (e.g. the last hidden states).
    teacher_hidden: ``[batch, time, d]``, the same width.
    token_mask: ``[batch, time]``, 1 on real tokens.

  Returns:
    float32 ``[batch, time]`` in ``[0, 2]``; 0 on padded tokens.

  References:
    Sanh et al., "DistilBERT, a distilled version of BERT: smaller,
    faster, cheaper and lighter", 2019, arXiv:1910.01108 (Section 2).
  """
  student, teacher = prepare_features(student_hidden, teacher_hidden, min_ndim=3,
                                      layout='[batch, time, width]')
  _check_tokens(student, teacher, 'hidden')
  if student.shape[-1] != teacher.shape[-1]:
    raise _projection_hint(student.shape[-1], teacher.shape[-1], 'hidden')
  cosine = jnp.sum(l2_normalize(student) * l2_normalize(teacher), axis=-1)
  return _masked_tokens(1.0 - cosine, _token_mask(token_mask, *student.shape[:2]))


@jit_after_checks(positive_value('temperature'))
def soft_cross_entropy(
    student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: ArrayLike = 1.0,
) -> Array:
  r"""TinyBERT's prediction-layer loss: cross entropy against the teacher's soft targets.

  .. math::
     \ell = -\sum_c \mathrm{softmax}(z^t / T)_c \, \log \mathrm{softmax}(z^s / T)_c

  Not multiplied by ``T²`` (TinyBERT's code uses ``T = 1``); it differs from
  :func:`kdjax.losses.kl_divergence` ``/ T²`` by the teacher's entropy, a
  constant of the student, so the gradients agree.

  Args:
    student_logits: ``[..., classes]`` (``[batch, classes]``, or ``[batch,
      time, vocab]`` for masked-LM predictions).
    teacher_logits: the same shape.
    temperature: positive scalar dividing both logit sets.

  Returns:
    float32 ``student_logits.shape[:-1]``.

  References:
    Jiao et al., "TinyBERT", Findings of EMNLP 2020, arXiv:1909.10351 (Eq. 10).
  """
  for name, x in (('student_logits', student_logits), ('teacher_logits', teacher_logits)):
    _checks.check_floating(name, x)
  _checks.check_same_shape('student_logits', student_logits, 'teacher_logits', teacher_logits)
  dtype = jnp.result_type(jnp.float32, student_logits, teacher_logits)
  temperature = jnp.asarray(temperature, dtype)
  student = jnp.asarray(student_logits, dtype) / temperature
  teacher = lax.stop_gradient(jnp.asarray(teacher_logits, dtype)) / temperature
  # H(p) + KL(p || q): -inf logits (no mass) give no 0 * -inf, a row with no
  # class gives 0, and the value is +inf only where the teacher has mass the
  # student lacks, as the cross entropy is.
  log_q, _ = _masked_log_softmax(student, None)
  log_p, valid_p = _masked_log_softmax(teacher, None)
  log_p_or_0 = jnp.where(valid_p, log_p, 0.0)
  entropy = -jnp.sum(jnp.where(valid_p, jnp.exp(log_p_or_0) * log_p_or_0, 0.0), axis=-1)
  return entropy + _kl(log_p, valid_p, log_q)


@jit_after_checks()
def sentence_embedding_mse(student_embeddings: ArrayLike, teacher_embeddings: ArrayLike) -> Array:
  r"""Multilingual distillation's loss: the MSE of a sentence embedding to the teacher's.

  .. math::
     \ell_b = \frac{1}{d} \lVert \hat M(x_b) - M(s_b) \rVert^2

  per example, where ``M(s_b)`` is the (frozen) teacher's embedding of the
  source sentence and ``\hat M(x_b)`` the student's embedding of the source
  itself or of its translation. Reimers & Gurevych's objective is the sum
  of both terms averaged over the batch: two
  :func:`kdjax.objective.feature` terms of this loss in one
  :class:`~kdjax.objective.Objective` give it (``torch.nn.MSELoss``'s mean
  over the width is the ``1/d``).

  Args:
    student_embeddings: ``[batch, d]``.
    teacher_embeddings: ``[batch, d]``.

  Returns:
    float32 ``[batch]``.

  Raises:
    ValueError: if the shapes differ or are not ``[batch, d]``.

  References:
    Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual
    using Knowledge Distillation", EMNLP 2020, arXiv:2004.09813 (Section 2).
  """
  student, teacher = prepare_features(student_embeddings, teacher_embeddings, min_ndim=2,
                                      layout='[batch, d]')
  if student.ndim != 2 or student.shape != teacher.shape:
    raise ValueError(
        'student_embeddings and teacher_embeddings must both be [batch, d] with the same '
        f'shape, got student_embeddings.shape={student.shape} and '
        f'teacher_embeddings.shape={teacher.shape}.')
  return jnp.mean(jnp.square(student - teacher), axis=-1)
