"""Language-model terms: token-level, chunked large-vocabulary and cross-tokenizer divergences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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
  own, padding = masks
  # Both cover the leading axes of the values (kdjax's one mask rule).
  shape = max(jnp.shape(own), jnp.shape(padding), key=len)
  return (_checks.align_mask('mask_key', own, shape, what='the tokens')
          * _checks.align_mask('batch mask', padding, shape, what='the tokens'))


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
    beta: the JSD's teacher weight in the mixture (``'jsd'`` only), constant
      or schedule: 0 = forward KL(teacher || student), 1 = reverse KL, as in
      the GKD paper, TRL and Liger; EasyDeL's ``beta`` is ``1 - beta``.
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
    mesh: jax.sharding.Mesh | None = None,
    token_axes: str | tuple[str, ...] | None = None,
    vocab_axis: str | None = None,
) -> Term:
  """A token-level distillation term that never materialises the logits.

  :func:`kdjax.losses.chunked_divergence` on the models' final hidden states
  and unembedding matrices, read from their :class:`~kdjax.Outputs`
  features (a language model may then return ``logits=None``). Equal to
  :func:`token_distill` on ``hidden @ unembedding`` logits, but computed
  `token_chunk` tokens at a time with the gradients computed in the same
  pass (a custom VJP), so the ``[batch, time, vocab]`` logits of neither
  model are ever held. The
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
    beta: the JSD's teacher weight in the mixture (``'jsd'`` only), constant
      or schedule: 0 = forward KL(teacher || student), 1 = reverse KL, as in
      the GKD paper, TRL and Liger; EasyDeL's ``beta`` is ``1 - beta``.
    alpha: the skew (``'skew_kl'``/``'skew_reverse_kl'`` only).
    token_chunk: tokens per chunk.
    vocab_chunk: optional vocabulary block size (see
      :func:`kdjax.losses.chunked_divergence`).
    mesh: optional mesh; with `token_axes` and `vocab_axis` the loss runs
      per device under ``shard_map`` (see
      :func:`kdjax.losses.chunked_divergence`).
    token_axes: the mesh axes the batch is sharded over.
    vocab_axis: the mesh axis the unembeddings' columns are sharded over.

  Returns:
    A :class:`Term` giving ``[batch, time]`` values and ``batch[mask_key]``
    (or ``None``) as their mask.
  """
  return _token_term(
      lambda student, teacher, **kwargs: losses.chunked_divergence(
          student.feature(student_hidden), student.feature(student_unembedding),
          teacher.feature(teacher_hidden), teacher.feature(teacher_unembedding),
          vocab_size=vocab_size, token_chunk=token_chunk, vocab_chunk=vocab_chunk,
          mesh=mesh, token_axes=token_axes, vocab_axis=vocab_axis, **kwargs),
      divergence, temperature, beta, alpha, mask_key, reduction_hint=True)


def _check_uld_arguments(temperature: Schedule, top_k: int | None) -> None:
  check_schedule('temperature', temperature, positive=True)
  if top_k is not None:
    _checks.check_positive_int('top_k', top_k)


def uld_distill(
    *,
    temperature: Schedule = 1.0,
    top_k: int | None = None,
    teacher_mask_key: str | None = None,
    mask_key: str | None = None,
) -> Term:
  """Universal Logit Distillation aligned by position, as in the paper.

  :func:`kdjax.losses.uld_loss` between ``student.logits`` ``[batch,
  student_time, student_vocab]`` and ``teacher.logits`` ``[batch,
  teacher_time, teacher_vocab]``: position ``t`` of the student against
  position ``t`` of the teacher, for ``t`` below the shorter of the two
  lengths (Boizard et al. align both sequences at the start of the answer
  and cut them to the shorter; put the answer at position 0 of both).
  Student positions past the teacher's length are masked. The paper adds
  the student's cross entropy on its labels (weight 1): an
  :func:`supervised` term in the same :class:`Objective`.

  Args:
    temperature: a constant or a schedule of the step.
    top_k: compare only the top ``k`` ranks (see
      :func:`kdjax.losses.uld_loss`).
    teacher_mask_key: optional batch entry ``[batch, teacher_time]`` marking
      the teacher's real positions (1 = real).
    mask_key: a student token mask of the term's own, on top of the
      objective's padding mask.

  Returns:
    A :class:`Term` giving ``[batch, student_time]`` values and their mask.
  """
  _check_uld_arguments(temperature, top_k)

  def term(student, teacher, batch, step):
    teacher = require_teacher(teacher)
    student_logits, teacher_logits = student.logits, teacher.logits
    student_time, teacher_time = student_logits.shape[1], teacher_logits.shape[1]
    time = min(student_time, teacher_time)
    mask = jnp.ones(student_logits.shape[:2], jnp.float32).at[:, time:].set(0.0)
    if teacher_mask_key is not None:
      teacher_mask = jnp.asarray(
          _checks.batch_entry(batch, teacher_mask_key, 'teacher_mask_key'), jnp.float32)
      mask = mask.at[:, :time].multiply(teacher_mask[:, :time])
    own = _own_token_mask(batch, mask_key)
    if own is not None:
      mask = mask * _checks.align_mask('mask_key', own, mask.shape, what='student tokens')
    values = losses.uld_loss(
        student_logits[:, :time], teacher_logits[:, :time],
        temperature=schedule_value(temperature, step), top_k=top_k,
        token_mask=mask[:, :time])
    values = jnp.pad(values, [(0, 0), (0, student_time - time)])
    return values, mask

  return term


def cross_tokenizer_distill(
    *,
    vocab_mapping: np.ndarray | jax.Array | None = None,
    temperature: Schedule = 1.0,
    top_k: int | None = None,
    student_labels_key: str = 'labels',
    teacher_labels_key: str = 'teacher_labels',
    student_chunk_key: str = 'student_chunk',
    teacher_chunk_key: str = 'teacher_chunk',
    mask_key: str | None = None,
) -> Term:
  """Distillation from a teacher with another tokenizer, aligned by byte offsets.

  :func:`kdjax.losses.cross_tokenizer_divergence` between
  ``student.logits`` and ``teacher.logits``, each model having read the
  same text in its own tokens, with the chunk ids and targets of both
  sides read from the batch (as
  :func:`kdjax.data.make_cross_tokenizer_arrays` writes them). One value
  per chunk, at the chunk's last student position; the term's mask is
  those positions, so the objective's mean is over chunks. Without
  `vocab_mapping` each chunk is compared by ULD; with it (from
  :func:`kdjax.data.vocab_mapping`), by GOLD's hybrid: KL over the shared
  tokens where the tokens coincide, ULD elsewhere.

  The teacher's apply reads its own tokens, e.g.
  ``zoo.lm_apply(teacher_lm, inputs='teacher_tokens')``.

  Args:
    vocab_mapping: optional int ``[student_vocab]``: the teacher id of the
      student token with the same bytes, or -1.
    temperature: a constant or a schedule of the step.
    top_k: ranks compared by ULD's sorted L1 (see
      :func:`kdjax.losses.uld_loss`).
    student_labels_key: batch entry with the student's targets ``[batch,
      student_time]``.
    teacher_labels_key: batch entry with the teacher's targets ``[batch,
      teacher_time]``.
    student_chunk_key: batch entry with the chunk id of each student target.
    teacher_chunk_key: batch entry with the chunk id of each teacher target.
    mask_key: a student token mask of the term's own, on top of the
      objective's padding mask.

  Returns:
    A :class:`Term` giving ``[batch, student_time]`` values and their mask.
  """
  _check_uld_arguments(temperature, top_k)
  if vocab_mapping is not None:
    vocab_mapping = np.asarray(vocab_mapping)
    if vocab_mapping.ndim != 1 or not np.issubdtype(vocab_mapping.dtype, np.integer):
      raise ValueError(
          'vocab_mapping must be a 1-D integer array [student_vocab], got '
          f'{vocab_mapping.dtype} with shape {vocab_mapping.shape}.')

  def term(student, teacher, batch, step):
    teacher = require_teacher(teacher)
    student_chunk = _checks.batch_entry(batch, student_chunk_key, 'student_chunk_key')
    values = losses.cross_tokenizer_divergence(
        student.logits, teacher.logits,
        student_labels=_checks.batch_entry(batch, student_labels_key, 'student_labels_key'),
        teacher_labels=_checks.batch_entry(batch, teacher_labels_key, 'teacher_labels_key'),
        student_chunk=student_chunk,
        teacher_chunk=_checks.batch_entry(batch, teacher_chunk_key, 'teacher_chunk_key'),
        vocab_mapping=vocab_mapping, temperature=schedule_value(temperature, step),
        top_k=top_k, token_mask=_own_token_mask(batch, mask_key))
    mask = losses.chunk_end_mask(student_chunk).astype(jnp.float32)
    own = _own_token_mask(batch, mask_key)
    if own is not None:
      mask = mask * _checks.align_mask('mask_key', own, mask.shape, what='student tokens')
    return values, mask

  return term


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
