"""Transformer-encoder terms: layer maps, TinyBERT, DistilBERT's cosine, MiniLM relations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses

import jax
import numpy as np

from kdjax import _checks
from kdjax import losses
from kdjax._outputs import Outputs
from kdjax.objective._core import Batch
from kdjax.objective._core import check_schedule
from kdjax.objective._core import require_teacher
from kdjax.objective._core import schedule_value
from kdjax.objective._core import Schedule
from kdjax.objective._core import Term


@dataclasses.dataclass(frozen=True)
class LayerMap:
  """Which teacher layer each student layer learns from: ``g(m)``, as data.

  Layers are counted as TinyBERT counts them: ``m = 1 .. student_layers``
  are the student's blocks, ``n = 1 .. teacher_layers`` the teacher's, and
  layer 0 (the embeddings) always maps to layer 0. For the hidden states
  ``hidden_<m>`` learns from ``hidden_<g(m)>``; for block-internal
  features (attention scores, queries, ...) block ``m - 1`` learns from block
  ``g(m) - 1`` (0-based names ``scores_<i>``), which is the authors' code's
  ``i * k + k - 1`` for the attention and ``i * k`` for the hidden states.

  Attributes:
    student_layers: ``M``, the student's number of blocks.
    teacher_layers: ``N``, the teacher's.
    teacher_of: ``(g(1), ..., g(M))``, each in ``[1, N]``.

  References:
    Jiao et al., "TinyBERT", Findings of EMNLP 2020, arXiv:1909.10351
    (Section 3.1, "Problem Formulation"; Section 4.5 compares mappings).
  """

  student_layers: int
  teacher_layers: int
  teacher_of: tuple[int, ...]

  def __post_init__(self):
    _checks.check_positive_int('student_layers', self.student_layers)
    _checks.check_positive_int('teacher_layers', self.teacher_layers)
    counts = (f'(student_layers={self.student_layers}, teacher_layers='
              f'{self.teacher_layers})')
    teacher_of = tuple(self.teacher_of)
    if len(teacher_of) != self.student_layers:
      raise ValueError(
          f'a layer map needs one teacher layer per student layer {counts}: got '
          f'{len(teacher_of)} entries {teacher_of}.')
    bad = [g for g in teacher_of
           if not isinstance(g, (int, np.integer)) or not 1 <= g <= self.teacher_layers]
    if bad:
      raise ValueError(
          f'teacher layers must be ints in [1, teacher_layers={self.teacher_layers}] '
          f'{counts}; {bad} in {teacher_of} are not.')
    object.__setattr__(self, 'teacher_of', tuple(int(g) for g in teacher_of))

  @classmethod
  def uniform(cls, student_layers: int, teacher_layers: int) -> 'LayerMap':
    """TinyBERT's uniform strategy ``g(m) = k m`` with ``k = N / M`` (must divide)."""
    _checks.check_positive_int('student_layers', student_layers)
    if teacher_layers % student_layers:
      raise ValueError(
          f'a uniform map needs teacher_layers={teacher_layers} to be a multiple of '
          f'student_layers={student_layers}; use LayerMap.skip or LayerMap.custom.')
    k = teacher_layers // student_layers
    return cls(student_layers, teacher_layers, tuple(k * m for m in range(1, student_layers + 1)))

  @classmethod
  def last(cls, student_layers: int, teacher_layers: int) -> 'LayerMap':
    """The top (last) ``M`` teacher layers: ``g(m) = N - M + m`` (PKD-Last, TinyBERT's top)."""
    return cls(student_layers, teacher_layers,
               tuple(teacher_layers - student_layers + m for m in range(1, student_layers + 1)))

  @classmethod
  def skip(cls, student_layers: int, teacher_layers: int, *, every: int) -> 'LayerMap':
    """Every `every`-th teacher layer: ``g(m) = every * m`` (PKD-Skip)."""
    _checks.check_positive_int('every', every)
    return cls(student_layers, teacher_layers,
               tuple(every * m for m in range(1, student_layers + 1)))

  @classmethod
  def custom(cls, student_layers: int, teacher_layers: int,
             teacher_of: Sequence[int]) -> 'LayerMap':
    """Any map: ``teacher_of[m - 1] = g(m)``."""
    return cls(student_layers, teacher_layers, tuple(teacher_of))

  def hidden_pairs(self, *, embeddings: bool = False) -> tuple[tuple[int, int], ...]:
    """``((m, g(m)), ...)`` for hidden states, with ``(0, 0)`` first if `embeddings`."""
    pairs = tuple(zip(range(1, self.student_layers + 1), self.teacher_of))
    return ((0, 0),) + pairs if embeddings else pairs

  def block_pairs(self) -> tuple[tuple[int, int], ...]:
    """``((m - 1, g(m) - 1), ...)``: 0-based blocks, for attention and Q/K/V features."""
    return tuple((m - 1, g - 1) for m, g in self.hidden_pairs())


def _mask(batch: Batch, mask_key: str | None):
  return None if mask_key is None else _checks.batch_entry(batch, mask_key, 'mask_key')


def _pairs_term(
    loss_fn: Callable[..., jax.Array], pairs: Sequence[tuple[int, int]], student_kind: str,
    teacher_kind: str, mask_key: str | None, **loss_kwargs,
) -> Term:
  """Sums ``loss_fn(student '<kind>_<s>', teacher '<kind>_<t>', token_mask=)`` over pairs."""

  def term(student: Outputs, teacher, batch, step):
    del step
    teacher = require_teacher(teacher)
    mask = _mask(batch, mask_key)
    total = None
    for s, t in pairs:
      values = loss_fn(student.feature(f'{student_kind}_{s}'),
                       teacher.feature(f'{teacher_kind}_{t}'), token_mask=mask, **loss_kwargs)
      total = values if total is None else total + values
    return total, mask

  return term


def tinybert_attention(layer_map: LayerMap, *, mask_key: str | None = 'token_mask') -> Term:
  """TinyBERT's attention term: :func:`kdjax.losses.attention_score_mse` summed over the map.

  Reads ``scores_<i>`` of both models (:func:`kdjax.zoo.bert_apply` with
  ``features=('scores',)``); block ``m - 1`` of the student learns from
  block ``g(m) - 1`` of the teacher.

  Args:
    layer_map: the :class:`LayerMap`.
    mask_key: the batch entry of the ``[batch, time]`` token mask (also
      the term's mask); ``None`` for none.

  Returns:
    A :class:`Term` of ``[batch, time]`` values.

  References:
    Jiao et al., "TinyBERT", arXiv:1909.10351 (Eq. 7).
  """
  return _pairs_term(losses.attention_score_mse, layer_map.block_pairs(), 'scores', 'scores',
                     mask_key)


def tinybert_hidden(
    layer_map: LayerMap, *, student_kind: str = 'projected',
    mask_key: str | None = 'token_mask',
) -> Term:
  """TinyBERT's hidden-state term: :func:`kdjax.losses.hidden_mse` summed over the map.

  The student's ``<student_kind>_<m>`` against the teacher's ``hidden_<g(m)>``.
  ``student_kind='projected'`` reads the states the student projected with
  its own ``W_h`` (``kdjax.zoo.BertConfig(projection_width=teacher width)``);
  ``'hidden'`` needs equal widths (else the error says to add a projection).

  Args:
    layer_map: the :class:`LayerMap`.
    student_kind: ``'projected'`` or ``'hidden'``.
    mask_key: the batch entry of the token mask; ``None`` for none.

  Returns:
    A :class:`Term` of ``[batch, time]`` values.

  References:
    Jiao et al., "TinyBERT", arXiv:1909.10351 (Eq. 8).
  """
  return _pairs_term(losses.hidden_mse, layer_map.hidden_pairs(), student_kind, 'hidden',
                     mask_key)


def tinybert_embedding(
    *, student_kind: str = 'projected', mask_key: str | None = 'token_mask'
) -> Term:
  """TinyBERT's embedding-layer term: :func:`kdjax.losses.hidden_mse` on layer 0.

  The student's ``<student_kind>_0`` against the teacher's ``hidden_0``
  (the embedding outputs). With ``'projected'`` the projection is the
  student's one shared ``W`` (as in the authors' code; the paper names it
  ``W_e``).

  Args:
    student_kind: ``'projected'`` or ``'hidden'``.
    mask_key: the batch entry of the token mask; ``None`` for none.

  Returns:
    A :class:`Term` of ``[batch, time]`` values.

  References:
    Jiao et al., "TinyBERT", arXiv:1909.10351 (Eq. 9).
  """
  return _pairs_term(losses.hidden_mse, ((0, 0),), student_kind, 'hidden', mask_key)


def tinybert_prediction(
    *, temperature: Schedule = 1.0, mask_key: str | None = None
) -> Term:
  """TinyBERT's prediction-layer term: :func:`kdjax.losses.soft_cross_entropy` of the logits.

  Args:
    temperature: constant or schedule (the paper uses 1).
    mask_key: a batch entry masking the values (e.g. MLM positions for
      ``[batch, time, vocab]`` logits); ``None``: the objective's padding
      mask alone.

  Returns:
    A :class:`Term` of ``student.logits.shape[:-1]`` values.

  References:
    Jiao et al., "TinyBERT", arXiv:1909.10351 (Eq. 10).
  """
  check_schedule('temperature', temperature, positive=True)

  def term(student, teacher, batch, step):
    teacher = require_teacher(teacher)
    values = losses.soft_cross_entropy(student.logits, teacher.logits,
                                       temperature=schedule_value(temperature, step))
    return values, _mask(batch, mask_key)

  return term


def distilbert_cosine(
    *, student_feature: str = 'sequence', teacher_feature: str = 'sequence',
    mask_key: str | None = 'token_mask',
) -> Term:
  """DistilBERT's cosine term: :func:`kdjax.losses.cosine_embedding_loss` on hidden states.

  (DistilBERT's other two terms are :func:`token_distill` with
  ``temperature=2.0`` and ``mask_key`` the MLM positions, and the masked-LM
  cross entropy :func:`supervised` on those positions.)

  Args:
    student_feature: the student's hidden states (default the last).
    teacher_feature: the teacher's.
    mask_key: the batch entry of the token mask; ``None`` for none.

  Returns:
    A :class:`Term` of ``[batch, time]`` values.

  References:
    Sanh et al., "DistilBERT", arXiv:1910.01108.
  """

  def term(student, teacher, batch, step):
    del step
    teacher = require_teacher(teacher)
    mask = _mask(batch, mask_key)
    return losses.cosine_embedding_loss(
        student.feature(student_feature), teacher.feature(teacher_feature),
        token_mask=mask), mask

  return term


def masked_lm(*, label_key: str = 'mlm_labels', mask_key: str = 'mlm_mask') -> Term:
  """The masked-LM cross entropy on the masked positions only.

  ``losses.cross_entropy(student.logits, batch[label_key])`` per token,
  masked by ``batch[mask_key]`` (1 on the positions the MLM masked), so the
  Objective's mean is over those positions (BERT's and DistilBERT's MLM
  loss). Labels at other positions are ignored but must be valid ids (e.g. 0).

  Args:
    label_key: the batch entry of int ``[batch, time]`` original tokens.
    mask_key: the batch entry of the ``[batch, time]`` MLM positions.

  Returns:
    A :class:`Term` of ``[batch, time]`` values.

  References:
    Devlin et al., "BERT", NAACL 2019, arXiv:1810.04805.
  """

  def term(student, teacher, batch, step):
    del teacher, step
    labels = _checks.batch_entry(batch, label_key, 'label_key')
    return losses.cross_entropy(student.logits, labels), _mask(batch, mask_key)

  return term


def minilm_attention(
    *, student_block: int, teacher_block: int, mask_key: str | None = 'token_mask'
) -> Term:
  """MiniLM's attention-distribution term: :func:`kdjax.losses.attention_kl`.

  MiniLM transfers the LAST block's self-attention: pass
  ``student_block=M - 1, teacher_block=N - 1`` (0-based ``scores_<i>``).

  Args:
    student_block: the student's block.
    teacher_block: the teacher's block.
    mask_key: the batch entry of the token mask; ``None`` for none.

  Returns:
    A :class:`Term` of ``[batch, time]`` values.

  References:
    Wang et al., "MiniLM", NeurIPS 2020, arXiv:2002.10957.
  """
  return _pairs_term(losses.attention_kl, ((student_block, teacher_block),), 'scores',
                     'scores', mask_key)


def minilm_relations(
    *, student_block: int, teacher_block: int, num_relation_heads: int,
    relations: Sequence[str] = ('query', 'key', 'value'),
    mask_key: str | None = 'token_mask',
) -> Term:
  """MiniLM / MiniLMv2 self-attention relation terms: :func:`kdjax.losses.relation_kl` summed.

  MiniLMv2: ``relations=('query', 'key', 'value')`` (Q-Q, K-K and V-V
  relations) with any number of relation heads, so the student's attention
  heads need not match the teacher's. MiniLM (v1)'s value relation:
  ``relations=('value',)`` with ``num_relation_heads`` = the attention
  heads (then add :func:`minilm_attention`).

  Args:
    student_block: the student's block (0-based).
    teacher_block: the teacher's block.
    num_relation_heads: relation heads ``R`` (dividing both widths).
    relations: which of ``'query'``, ``'key'``, ``'value'``.
    mask_key: the batch entry of the token mask; ``None`` for none.

  Returns:
    A :class:`Term` of ``[batch, time]`` values.

  References:
    Wang et al., "MiniLM", arXiv:2002.10957; Wang et al., "MiniLMv2",
    arXiv:2012.15828.
  """
  _checks.check_positive_int('num_relation_heads', num_relation_heads)
  unknown = [r for r in relations if r not in ('query', 'key', 'value')]
  if unknown or not relations:
    raise ValueError(f"relations must be among ('query', 'key', 'value'), got {relations!r}.")
  terms = [_pairs_term(losses.relation_kl, ((student_block, teacher_block),), kind, kind,
                       mask_key, num_relation_heads=num_relation_heads)
           for kind in relations]

  def term(student, teacher, batch, step):
    total = sum(relation(student, teacher, batch, step)[0] for relation in terms)
    return total, _mask(batch, mask_key)

  return term
