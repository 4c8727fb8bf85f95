"""Contrastive representation distillation with memory banks, as pure functions."""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from kdjax import _checks
from kdjax.losses._common import compute_dtype
from kdjax.losses._common import jit_after_checks
from kdjax.losses._common import positive_value
from kdjax.losses._common import unit_interval_value
from kdjax.losses._feature import checked_example_mask
from kdjax.losses._feature import l2_normalize
from kdjax.losses._feature import mask_values

Array = jax.Array
ArrayLike = Any

_EPS = 1e-7  # the reference code's eps in the NCE posterior


class CRDHead(nn.Module):
  """CRD's embedding head: a linear map to `dim` followed by L2 normalisation.

  CRD trains two heads, one on the student's and one on the teacher's
  penultimate features. BOTH belong to the student's parameters (the
  teacher network itself stays frozen): apply them in the student's step.
  Inputs ``[batch, ...]`` are flattened per example.

  Attributes:
    dim: embedding size (128 in the paper).

  References:
    Tian, Krishnan and Isola, "Contrastive Representation Distillation",
    ICLR 2020, https://arxiv.org/abs/1910.10699.
  """

  dim: int = 128

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.reshape(x.shape[0], -1)
    return l2_normalize(nn.Dense(self.dim)(x))


@flax.struct.dataclass
class CRDMemory:
  """CRD's memory banks: state to carry from step to step, not parameters.

  Attributes:
    student: ``[num_data, dim]`` momentum average of each training example's
      student embedding (RepDistiller's ``memory_v1``).
    teacher: ``[num_data, dim]`` the same for the teacher embeddings
      (``memory_v2``).
    z_student: scalar normaliser of the scores anchored on the student
      embedding; negative until the first call fixes it.
    z_teacher: the same for the teacher-anchored scores.
  """

  student: Array
  teacher: Array
  z_student: Array
  z_teacher: Array

  @property
  def num_data(self) -> int:
    return self.student.shape[0]


def crd_memory_init(key: Array, num_data: int, dim: int) -> CRDMemory:
  """Fresh memory banks, uniform in ``±1/sqrt(dim/3)`` as in the reference code.

  Args:
    key: a PRNG key.
    num_data: the number of training examples :math:`N` (the bank's rows,
      indexed by each example's position in the training set).
    dim: the embedding size.

  Returns:
    A :class:`CRDMemory` with unset normalisers.
  """
  if num_data < 2 or dim < 1:
    raise ValueError(
        f'num_data must be >= 2 and dim >= 1, got num_data={num_data}, dim={dim}.'
    )
  bound = 1.0 / math.sqrt(dim / 3.0)
  student_key, teacher_key = jax.random.split(key)
  bank = lambda k: jax.random.uniform(k, (num_data, dim), jnp.float32, -bound, bound)
  return CRDMemory(
      student=bank(student_key),
      teacher=bank(teacher_key),
      z_student=jnp.asarray(-1.0, jnp.float32),
      z_teacher=jnp.asarray(-1.0, jnp.float32),
  )


def crd_negatives(
    key: Array, indices: ArrayLike, num_data: int, num_negatives: int
) -> Array:
  """Draws `num_negatives` indices per example, uniform over the others.

  Each row is uniform over ``[0, num_data)`` without the example's own index
  (drawn from ``num_data - 1`` values, those at or above the index shifted
  by one), with replacement, as the reference code's uniform sampler.

  Args:
    key: a PRNG key (e.g. ``fold_in(state.rng, state.step)``).
    indices: ``[batch]`` int positions of the batch's examples in the
      training set.
    num_data: :math:`N`.
    num_negatives: :math:`K` (16384 in the paper on CIFAR-100).

  Returns:
    ``[batch, num_negatives]`` int32 indices, none equal to its row's index.
  """
  _checks.check_integer('indices', indices)
  _checks.check_index_range('indices', indices, num_data, 'num_data')
  if jnp.ndim(indices) != 1:
    raise ValueError(f'indices must be [batch], got shape {jnp.shape(indices)}.')
  indices = jnp.asarray(indices, jnp.int32)
  draws = jax.random.randint(
      key, (indices.shape[0], num_negatives), 0, num_data - 1, jnp.int32
  )
  return draws + (draws >= indices[:, None]).astype(jnp.int32)


def _nce_values(scores: Array, num_data: int) -> Array:
  """``-(log D1 + sum_k log D0_k)`` per row of ``[batch, 1 + K]`` probabilities."""
  noise = scores.shape[1] - 1  # m = K
  noise_mass = noise / num_data  # m * P_n
  positive = scores[:, 0]
  log_d1 = jnp.log(positive / (positive + noise_mass + _EPS))
  log_d0 = jnp.log(noise_mass / (scores[:, 1:] + noise_mass + _EPS))
  return -(log_d1 + jnp.sum(log_d0, axis=1))


def _update_bank(bank, embedding, indices, momentum, mask):
  rows = momentum * bank[indices] + (1.0 - momentum) * embedding
  rows = l2_normalize(rows)
  # Padding rows are written out of range and dropped.
  target = jnp.where(mask, indices, bank.shape[0])
  return bank.at[target].set(rows.astype(bank.dtype), mode='drop')


def _index_values(arguments: dict[str, Any]) -> None:
  num_data = arguments['memory'].num_data
  for name in ('indices', 'negatives'):
    _checks.check_index_range(name, arguments[name], num_data, 'num_data')


@_checks.renamed_argument('where', 'example_mask')
@jit_after_checks(
    positive_value('temperature'),
    unit_interval_value('momentum'),
    _index_values,
)
def crd(
    student_embedding: ArrayLike,
    teacher_embedding: ArrayLike,
    memory: CRDMemory,
    indices: ArrayLike,
    negatives: ArrayLike,
    *,
    temperature: ArrayLike = 0.07,
    momentum: ArrayLike = 0.5,
    example_mask: ArrayLike | None = None,
) -> tuple[Array, CRDMemory]:
  r"""Contrastive representation distillation: the NCE loss and the new banks.

  For example :math:`i` with index :math:`y_i` and negatives :math:`n_{ik}`
  (:math:`K` of them), the student embedding :math:`s_i` is scored against
  the teacher bank, :math:`h^s_{ik} = \exp(\langle M^t_{j}, s_i \rangle /
  \tau) / Z_s` for :math:`j \in \{y_i, n_{i1}, \dots\}`, and the teacher
  embedding against the student bank (:math:`h^t`). With the noise
  distribution :math:`P_n = 1/N` and :math:`m = K`, each side contributes

  .. math::
    -\log \frac{h_{i0}}{h_{i0} + m P_n + \epsilon}
    - \sum_{k=1}^{K} \log \frac{m P_n}{h_{ik} + m P_n + \epsilon},

  the NCE objective of the paper (Eq. 11 with its Eq. 13 posterior) as in the
  reference code's ``ContrastLoss``; the loss is the sum of the two sides.
  :math:`Z = N \cdot \mathrm{mean}(\exp(\cdot/\tau))` is estimated from the
  first batch and then kept fixed, as in the reference code (it is stored in
  the returned memory). After scoring, each example's bank rows are moved
  towards its embeddings, :math:`M_{y_i} \leftarrow
  \mathrm{normalize}(\mu M_{y_i} + (1 - \mu) e_i)`, without gradient.

  Both embeddings come from :class:`CRDHead`\ s that are part of the
  student's parameters, so neither is cut from the gradient here (the
  teacher network itself is, by the train step); the banks are. The memory
  is state, never in the params: the term :func:`kdjax.objective.crd`
  keeps it in the ``TrainState`` and calls this function every step.

  Args:
    student_embedding: ``[batch, dim]`` unit-norm student embeddings.
    teacher_embedding: ``[batch, dim]`` unit-norm teacher embeddings.
    memory: the :class:`CRDMemory`.
    indices: ``[batch]`` int positions of the examples in the training set.
    negatives: ``[batch, K]`` int indices of negatives (e.g. from
      :func:`crd_negatives`, or class-aware ones from the data pipeline).
    temperature: :math:`\tau` (0.07).
    momentum: :math:`\mu` of the bank update (0.5).
    example_mask: optional ``[batch]`` boolean mask of the real examples;
      padding gives 0, neither
      updates the banks nor enters the estimate of :math:`Z`.

  Returns:
    ``(loss, new_memory)``: ``[batch]`` per-example losses (their batch
    mean is the reference code's loss) and the updated :class:`CRDMemory`.

  References:
    Tian, Krishnan and Isola, "Contrastive Representation Distillation",
    ICLR 2020, https://arxiv.org/abs/1910.10699.
  """
  for name, x in (('student_embedding', student_embedding),
                  ('teacher_embedding', teacher_embedding)):
    _checks.check_floating(name, x)
    if jnp.ndim(x) != 2 or jnp.shape(x)[1] != memory.student.shape[1]:
      raise ValueError(
          f'{name} must be [batch, dim] with the memory\'s dim '
          f'{memory.student.shape[1]}, got {name}.shape={jnp.shape(x)}.'
      )
  _checks.check_same_shape(
      'student_embedding', student_embedding, 'teacher_embedding', teacher_embedding
  )
  batch = jnp.shape(student_embedding)[0]
  _checks.check_integer('indices', indices)
  _checks.check_integer('negatives', negatives)
  if jnp.shape(indices) != (batch,) or jnp.ndim(negatives) != 2 or (
      jnp.shape(negatives)[0] != batch
  ):
    raise ValueError(
        f'indices must be [batch] and negatives [batch, K] with batch={batch}, '
        f'got indices.shape={jnp.shape(indices)} and '
        f'negatives.shape={jnp.shape(negatives)}.'
    )
  mask = checked_example_mask(example_mask, batch)
  valid = jnp.ones((batch,), bool) if mask is None else mask
  dtype = compute_dtype(jnp.asarray(student_embedding), jnp.asarray(teacher_embedding))
  student = jnp.asarray(student_embedding).astype(dtype)
  teacher = jnp.asarray(teacher_embedding).astype(dtype)
  num_data = memory.num_data
  candidates = jnp.concatenate([indices[:, None], negatives], axis=1).astype(jnp.int32)
  temperature = jnp.asarray(temperature, dtype)

  def side(bank, embedding, z):
    weights = lax.stop_gradient(bank[candidates].astype(dtype))  # [batch, 1+K, dim]
    scores = jnp.exp(jnp.einsum('bkd,bd->bk', weights, embedding) / temperature)
    count = jnp.maximum(jnp.sum(valid), 1) * scores.shape[1]
    first = jnp.sum(jnp.where(valid[:, None], scores, 0.0)) / count * num_data
    # A batch with no real example estimates nothing: an unset normaliser
    # stays unset, and the (masked) values divide by 1 instead of 0.
    z = z.astype(dtype)
    z = jnp.where(z > 0, z, jnp.where(jnp.any(valid), lax.stop_gradient(first), z))
    return _nce_values(scores / jnp.where(z > 0, z, 1.0), num_data), z

  student_values, z_student = side(memory.teacher, student, memory.z_student)
  teacher_values, z_teacher = side(memory.student, teacher, memory.z_teacher)
  momentum = jnp.asarray(momentum, dtype)
  new_memory = CRDMemory(
      student=_update_bank(memory.student, lax.stop_gradient(student), indices, momentum, valid),
      teacher=_update_bank(memory.teacher, lax.stop_gradient(teacher), indices, momentum, valid),
      z_student=z_student.astype(memory.z_student.dtype),
      z_teacher=z_teacher.astype(memory.z_teacher.dtype),
  )
  return mask_values(student_values + teacher_values, mask), new_memory
