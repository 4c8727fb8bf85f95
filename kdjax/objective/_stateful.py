"""Terms that carry state: CRD's memory banks, a mean (EMA) teacher."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from kdjax import _checks
from kdjax import losses
from kdjax import metrics as metrics_lib
from kdjax._outputs import Outputs
from kdjax.objective._core import Batch
from kdjax.objective._core import check_schedule
from kdjax.objective._core import schedule_value
from kdjax.objective._core import Schedule
from kdjax.objective._core import StatefulTerm
from kdjax.objective._core import Teacher


def _gather_rows(x: jax.Array, axis_name: str) -> jax.Array:
  """``[batch, ...]`` rows of every device along `axis_name`, in device order."""
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


class CRDTerm(StatefulTerm):
  """Contrastive representation distillation as a term; see :func:`crd`."""

  combines_across_devices = True

  def __init__(self, num_data, dim, *, num_negatives, temperature, momentum,
               student_embedding, teacher_embedding, index_key, mask_key):
    if int(num_data) != num_data or num_data < 2:
      raise ValueError(f'num_data must be an integer >= 2, got {num_data}.')
    if int(dim) != dim or dim < 1:
      raise ValueError(f'dim must be a positive integer, got {dim}.')
    if int(num_negatives) != num_negatives or num_negatives < 1:
      raise ValueError(f'num_negatives must be a positive integer, got {num_negatives}.')
    check_schedule('temperature', temperature, positive=True)
    _checks.check_in_unit_interval('momentum', momentum)
    self.num_data, self.dim, self.num_negatives = int(num_data), int(dim), int(num_negatives)
    self.temperature, self.momentum = temperature, momentum
    self.student_embedding, self.teacher_embedding = student_embedding, teacher_embedding
    self.index_key, self.mask_key = index_key, mask_key

  def init(self, rng: jax.Array, variables: Mapping[str, Any]) -> losses.CRDMemory:
    del variables
    return losses.crd_memory_init(rng, self.num_data, self.dim)

  def __call__(self, student: Outputs, teacher: Teacher, batch: Batch, step: jax.Array, *,
               state: losses.CRDMemory, rng: jax.Array, axis_name: str | None):
    del teacher  # both embeddings come from the student's heads
    student_embedding = student.feature(self.student_embedding)
    teacher_embedding = student.feature(self.teacher_embedding)
    indices = _checks.batch_entry(batch, self.index_key, 'index_key')
    rows = jnp.shape(indices)[0] if jnp.ndim(indices) else 0
    valid = jnp.ones((rows,), bool)
    if self.mask_key is not None and self.mask_key in batch:
      valid = jnp.asarray(batch[self.mask_key]) > 0
    if axis_name is not None:
      # Every device scores and writes the global batch, so the banks (and
      # the normalisers fixed on the first batch) stay identical on all of
      # them; each keeps the values of its own rows.
      student_embedding, teacher_embedding, indices, valid = (
          _gather_rows(x, axis_name)
          for x in (student_embedding, teacher_embedding, indices, valid))
    negatives = losses.crd_negatives(rng, indices, self.num_data, self.num_negatives)
    values, memory = losses.crd(
        student_embedding, teacher_embedding, state, indices, negatives,
        temperature=schedule_value(self.temperature, step), momentum=self.momentum,
        example_mask=valid,
    )
    if axis_name is not None:
      device = jax.lax.axis_index(axis_name)
      values = jax.lax.dynamic_slice_in_dim(values, device * rows, rows)
    return values, None, memory


def crd(
    num_data: int,
    dim: int,
    *,
    num_negatives: int = 16384,
    temperature: Schedule = 0.07,
    momentum: float = 0.5,
    student_embedding: str = 'crd_student',
    teacher_embedding: str = 'crd_teacher',
    index_key: str = 'index',
    mask_key: str | None = metrics_lib.MASK_KEY,
) -> CRDTerm:
  r"""A CRD term: :func:`kdjax.losses.crd` with its memory banks as term state.

  Both embeddings are features of the *student's* outputs: CRD's two
  :class:`~kdjax.losses.CRDHead`\ s are trained with the student, the
  teacher-side head reading the teacher's features (hand them to the
  student with ``make_train_step(..., student_inputs=...)``). Each step
  draws `num_negatives` negatives per example uniformly from the other
  training examples (:func:`kdjax.losses.crd_negatives`, with the term's
  own key), scores both sides against the banks, and moves the banks'
  rows of the batch's examples towards their embeddings; padding rows
  (``batch[mask_key] == 0``) score 0 and write nothing. The
  :class:`~kdjax.losses.CRDMemory` lives in the ``TrainState``'s objective
  state: checkpointed with the student, never differentiated.

  Under ``pmap`` the term gathers the batch's embeddings and indices over
  the device axis, so every device writes every row and the banks stay
  identical (it declares ``combines_across_devices``).

  Args:
    num_data: :math:`N`, the training examples (rows of each bank), indexed
      by ``batch[index_key]``.
    dim: the embedding size of the heads.
    num_negatives: :math:`K` (16384 in the paper on CIFAR-100).
    temperature: :math:`\tau` (0.07), constant or schedule.
    momentum: :math:`\mu` of the bank update (0.5).
    student_embedding: the student feature holding ``[batch, dim]`` unit-norm
      embeddings of the student's own representation.
    teacher_embedding: the student feature holding the teacher-side head's
      ``[batch, dim]`` embeddings.
    index_key: the batch entry with each example's ``[batch]`` int position
      in the training set.
    mask_key: the batch entry marking real examples (``None``: all real).

  Returns:
    A :class:`~kdjax.objective.StatefulTerm`.

  References:
    Tian, Krishnan and Isola, "Contrastive Representation Distillation",
    ICLR 2020, https://arxiv.org/abs/1910.10699.
  """
  return CRDTerm(num_data, dim, num_negatives=num_negatives, temperature=temperature,
                 momentum=momentum, student_embedding=student_embedding,
                 teacher_embedding=teacher_embedding, index_key=index_key,
                 mask_key=mask_key)


def _ema(decay: jax.Array, average: Any, value: Any) -> Any:
  """``decay * average + (1 - decay) * value`` on floating leaves; others copied."""

  def leaf(a, v):
    if jnp.issubdtype(jnp.result_type(v), jnp.floating):
      return (decay * a + (1.0 - decay) * v).astype(jnp.result_type(a))
    return v

  return jax.tree.map(leaf, average, value)


class EMATeacherTerm(StatefulTerm):
  """Distillation from an EMA of the student; see :func:`ema_teacher_distill`."""

  # The state follows the updated parameters alone, which every device of a
  # pmap holds identically (the gradients are summed first).
  combines_across_devices = True

  def __init__(self, student_apply, loss_fn, *, decay, temperature, loss_kwargs):
    check_schedule('decay', decay, positive=False)
    first = decay(0) if callable(decay) else decay
    _checks.check_in_unit_interval('decay', first)
    check_schedule('temperature', temperature, positive=True)
    self.student_apply, self.loss_fn = student_apply, loss_fn
    self.decay, self.temperature, self.loss_kwargs = decay, temperature, dict(loss_kwargs)

  def init(self, rng: jax.Array, variables: Mapping[str, Any]) -> dict[str, Any]:
    del rng
    # A copy, not the same buffers: the student's are donated to the step.
    return jax.tree.map(lambda x: jnp.array(x, copy=True), dict(variables))

  def __call__(self, student: Outputs, teacher: Teacher, batch: Batch, step: jax.Array, *,
               state: dict[str, Any], rng: jax.Array, axis_name: str | None):
    del teacher, rng, axis_name
    mean_teacher, _ = self.student_apply(state, batch, train=False)
    mean_teacher = jax.lax.stop_gradient(mean_teacher)
    values = self.loss_fn(student.logits, mean_teacher.logits,
                          temperature=schedule_value(self.temperature, step),
                          **self.loss_kwargs)
    return values, None, state

  def after_update(self, state, variables, step):
    # `step` is the step just taken, so the decay schedule is read at it.
    return _ema(schedule_value(self.decay, step), state, dict(variables))


def ema_teacher_distill(
    student_apply: Callable[..., Any],
    loss_fn: Callable[..., jax.Array],
    *,
    decay: Schedule = 0.999,
    temperature: Schedule = 1.0,
    **loss_kwargs: Any,
) -> EMATeacherTerm:
  r"""Self-distillation from a mean teacher: an EMA of the student's own weights.

  The teacher is the student's architecture (`student_apply`) with
  variables :math:`\bar\theta` held in the term's state: initialised to the
  student's, and after every optimizer step moved to :math:`\bar\theta
  \leftarrow d\,\bar\theta + (1 - d)\,\theta` (every floating variable, so
  BatchNorm statistics too; integer ones are copied). The term is
  ``loss_fn(student.logits, teacher.logits, temperature=T)`` with the
  teacher run in eval mode under ``stop_gradient``. Use it with
  ``teacher_apply=None`` in the step.

  Args:
    student_apply: the student's ``apply`` (see :mod:`kdjax.adapters`).
    loss_fn: a divergence from :mod:`kdjax.losses` (e.g.
      :func:`~kdjax.losses.kl_divergence`).
    decay: :math:`d \in [0, 1]`, constant or schedule of the step, e.g.
      Mean Teacher's ramp ``lambda s: jnp.minimum(1 - 1 / (s + 1), 0.999)``.
    temperature: passed to `loss_fn`.
    **loss_kwargs: further keyword arguments for `loss_fn`.

  Returns:
    A :class:`~kdjax.objective.StatefulTerm`.

  References:
    Tarvainen and Valpola, "Mean teachers are better role models:
    Weight-averaged consistency targets improve semi-supervised deep
    learning results", NeurIPS 2017, https://arxiv.org/abs/1703.01780.
  """
  return EMATeacherTerm(student_apply, loss_fn, decay=decay, temperature=temperature,
                        loss_kwargs=loss_kwargs)
