"""Batch-relational feature losses: SP, PKT, RKD, correlation congruence.

Each compares a relation between the examples of a batch (a similarity,
distance or angle matrix) computed on the student's features with the same
relation on the teacher's. They return one value per row of the relation
matrix, scaled so that the mean over the batch's rows is the paper's (or the
reference code's) loss: :class:`kdjax.objective.Objective`'s masked mean then
gives exactly that loss. ``example_mask`` removes padding examples from every
relation, so a padded batch gives the same loss as the batch without its
padding.

The relation is over the batch the loss sees. Under ``jax.jit`` on a batch
sharded over devices that is the global batch (XLA gathers what it needs).
Inside ``jax.shard_map`` each device sees its shard: the per-device loss,
whose batch mean is the mean of the per-shard losses; ``jax.lax.all_gather``
of the features over the data axis inside ``shard_map`` recovers the global
relation. See the "Feature losses" documentation page.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from kdjax import _checks
from kdjax.losses._common import jit_after_checks
from kdjax.losses._common import positive_value
from kdjax.losses._feature import checked_example_mask
from kdjax.losses._feature import l2_normalize
from kdjax.losses._feature import prepare_features

Array = jax.Array
ArrayLike = Any


def _flat_pair(student_features, teacher_features, example_mask):
  """``[batch, d_s]``, ``[batch, d_t]`` float rows, the mask and its count."""
  student, teacher = prepare_features(student_features, teacher_features)
  batch = student.shape[0]
  student = student.reshape(batch, -1)
  teacher = teacher.reshape(batch, -1)
  mask = checked_example_mask(example_mask, batch)
  if mask is None:
    mask = jnp.ones((batch,), bool)
  count = jnp.maximum(jnp.sum(mask), 1).astype(student.dtype)
  return student, teacher, mask, count


def _pair_mask(mask: Array) -> Array:
  return mask[:, None] & mask[None, :]


def _row_mean(values: Array, mask: Array, count: Array) -> Array:
  """``sum_j values[i, j] / count`` over real `j`; 0 on padding rows."""
  total = jnp.sum(jnp.where(_pair_mask(mask), values, 0.0), axis=1)
  return jnp.where(mask, total / count, 0.0)


def _huber(x: Array) -> Array:
  """PyTorch's ``smooth_l1_loss`` with ``beta=1`` (Huber with delta 1)."""
  abs_x = jnp.abs(x)
  return jnp.where(abs_x < 1.0, 0.5 * jnp.square(x), abs_x - 0.5)


# ----------------------------------------------------------------------------
# Similarity preserving.


@_checks.renamed_argument('where', 'example_mask')
@jit_after_checks()
def similarity_preserving(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    example_mask: ArrayLike | None = None,
) -> Array:
  r"""Similarity-preserving KD: gap between row-normalised batch Gram matrices.

  With the features flattened to :math:`F \in \mathbb{R}^{b \times d}`,
  :math:`G = \mathrm{normalize}_{\text{rows}}(F F^\top)` for student and
  teacher, the loss is :math:`\frac{1}{b^2} \|G_t - G_s\|_F^2`. Row :math:`i`
  gets :math:`\frac1b \sum_j (G_{t,ij} - G_{s,ij})^2`, so the batch mean is
  the loss. Invariant to the scale of either feature set; student and
  teacher widths may differ.

  Args:
    student_features: ``[batch, ...]`` (flattened per example).
    teacher_features: ``[batch, ...]``.
    example_mask: optional ``[batch]`` boolean mask of real examples; padding takes
      part in no relation and its row gives 0.

  Returns:
    ``[batch]`` row values whose mean over real examples is the loss.

  References:
    Tung and Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019,
    https://arxiv.org/abs/1907.09682.
  """
  student, teacher, mask, count = _flat_pair(student_features, teacher_features, example_mask)
  pair = _pair_mask(mask)

  def gram(x):
    return l2_normalize(jnp.where(pair, x @ x.T, 0.0), axis=1)

  return _row_mean(jnp.square(gram(teacher) - gram(student)), mask, count)


# ----------------------------------------------------------------------------
# Probabilistic knowledge transfer.


@_checks.renamed_argument('where', 'example_mask')
@jit_after_checks()
def pkt(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    example_mask: ArrayLike | None = None,
    eps: float = 1e-7,
) -> Array:
  r"""Probabilistic knowledge transfer: KL between cosine-kernel distributions.

  Features are L2-normalised; the cosine kernel
  :math:`K_{ij} = (\cos(f_i, f_j) + 1) / 2` is normalised over each row into
  conditional probabilities :math:`p_{j|i}` (teacher) and :math:`q_{j|i}`
  (student), and the loss is :math:`\frac{1}{b^2}\sum_{i,j} p_{j|i} \log
  \frac{p_{j|i} + \epsilon}{q_{j|i} + \epsilon}`, as the authors' code and
  RepDistiller's ``PKT`` compute it (diagonal included). Row :math:`i` gets
  :math:`\frac1b \mathrm{KL}(p_{\cdot|i} \| q_{\cdot|i})`, so the batch mean
  is that loss; the paper's sum of row divergences is :math:`b^2` times it.

  Args:
    student_features: ``[batch, ...]`` (flattened per example).
    teacher_features: ``[batch, ...]``.
    example_mask: optional ``[batch]`` boolean mask of real examples.
    eps: the smoothing :math:`\epsilon` of the reference code.

  Returns:
    ``[batch]`` row values whose mean over real examples is the loss.

  References:
    Passalis and Tefas, "Learning Deep Representations with Probabilistic
    Knowledge Transfer", ECCV 2018, https://arxiv.org/abs/1803.10837.
  """
  student, teacher, mask, count = _flat_pair(student_features, teacher_features, example_mask)
  pair = _pair_mask(mask)

  def conditional(x):
    squared = jnp.sum(jnp.square(x), axis=1, keepdims=True)
    # sqrt's derivative at 0 is inf (times 0: NaN): take it only where > 0.
    norm = jnp.where(squared > 0, jnp.sqrt(jnp.where(squared > 0, squared, 1.0)), 0.0)
    x = x / (norm + eps)
    kernel = jnp.where(pair, (x @ x.T + 1.0) / 2.0, 0.0)
    total = jnp.sum(kernel, axis=1, keepdims=True)
    return kernel / jnp.where(total > 0, total, 1.0)

  p, q = conditional(teacher), conditional(student)
  kl = p * (jnp.log(p + eps) - jnp.log(q + eps))
  return _row_mean(kl, mask, count)


# ----------------------------------------------------------------------------
# Relational KD.


def _pairwise_distances(x: Array, eps: float = 1e-12) -> Array:
  """RKD's ``pdist``: Euclidean distances, clamped, zero diagonal."""
  squared_norms = jnp.sum(jnp.square(x), axis=1)
  squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * (x @ x.T)
  distances = jnp.sqrt(jnp.maximum(squared, eps))
  return jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, distances)


@_checks.renamed_argument('where', 'example_mask')
@jit_after_checks()
def rkd_distance(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    example_mask: ArrayLike | None = None,
) -> Array:
  r"""Distance-wise relational KD: Huber gap of mean-normalised distances.

  With :math:`\psi_D(f_i, f_j) = \|f_i - f_j\|_2 / \mu` and :math:`\mu` the
  mean distance over the batch's distinct pairs, the loss is the mean over
  all :math:`b^2` pairs of :math:`\ell_\delta(\psi_D^t - \psi_D^s)` with the
  Huber loss :math:`\ell_1` (smooth L1), as RepDistiller's ``RKDLoss`` (the
  diagonal counts as a zero). Row :math:`i` gets :math:`\frac1b \sum_j
  \ell(\cdot)`. The paper weights it by 25 (and the angle term by 50).

  Args:
    student_features: ``[batch, ...]`` (flattened per example).
    teacher_features: ``[batch, ...]``.
    example_mask: optional ``[batch]`` boolean mask of real examples.

  Returns:
    ``[batch]`` row values whose mean over real examples is the loss.

  References:
    Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR 2019,
    https://arxiv.org/abs/1904.05068.
  """
  student, teacher, mask, count = _flat_pair(student_features, teacher_features, example_mask)
  distinct = _pair_mask(mask) & ~jnp.eye(student.shape[0], dtype=bool)
  pairs = jnp.maximum(jnp.sum(distinct), 1).astype(student.dtype)

  def normalised(x):
    d = jnp.where(distinct, _pairwise_distances(x), 0.0)
    return d / jnp.maximum(jnp.sum(d) / pairs, 1e-12)

  return _row_mean(_huber(normalised(student) - normalised(teacher)), mask, count)


def _triplet_cosines(x: Array, mask: Array) -> Array:
  """``cos[a, b, c]`` of the angle at vertex `a` between `b` and `c`."""
  differences = l2_normalize(x[None, :, :] - x[:, None, :], axis=2)
  differences = jnp.where(mask[None, :, None], differences, 0.0)
  return jnp.einsum('abd,acd->abc', differences, differences)


@_checks.renamed_argument('where', 'example_mask')
@jit_after_checks()
def rkd_angle(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    example_mask: ArrayLike | None = None,
) -> Array:
  r"""Angle-wise relational KD: Huber gap of triplet angle cosines.

  With :math:`\psi_A(f_a, f_b, f_c) = \langle e_{ab}, e_{ac} \rangle` and
  :math:`e_{ab} = (f_b - f_a) / \|f_b - f_a\|_2` (zero when :math:`b = a`),
  the loss is the mean over all :math:`b^3` triplets of
  :math:`\ell_1(\psi_A^t - \psi_A^s)` (smooth L1), as RepDistiller's
  ``RKDLoss``. Row :math:`a` (the vertex) gets :math:`\frac{1}{b^2}
  \sum_{b,c} \ell_1(\cdot)`. Memory is :math:`O(b^2 d + b^3)`: apply it to
  embeddings (the paper uses the penultimate layer), not to large maps. The
  paper weights it by 50.

  Args:
    student_features: ``[batch, ...]`` (flattened per example).
    teacher_features: ``[batch, ...]``.
    example_mask: optional ``[batch]`` boolean mask of real examples.

  Returns:
    ``[batch]`` row values whose mean over real examples is the loss.

  References:
    Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR 2019,
    https://arxiv.org/abs/1904.05068.
  """
  student, teacher, mask, count = _flat_pair(student_features, teacher_features, example_mask)
  # Padding vertices' rows are dropped; padding `b`, `c` give zero cosines
  # on both sides and so contribute nothing.
  gap = _huber(_triplet_cosines(student, mask) - _triplet_cosines(teacher, mask))
  return jnp.where(mask, jnp.sum(gap, axis=(1, 2)) / jnp.square(count), 0.0)


# ----------------------------------------------------------------------------
# Correlation congruence.


@_checks.renamed_argument('where', 'example_mask')
@jit_after_checks(
    positive_value('gamma'),
    lambda arguments: _check_order(arguments['order']),
    static_argnames=('kernel', 'order'),
)
def correlation_congruence(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    example_mask: ArrayLike | None = None,
    kernel: str = 'rbf',
    gamma: ArrayLike = 0.4,
    order: int = 2,
) -> Array:
  r"""Correlation congruence: MSE between the batch correlation matrices.

  Embeddings are L2-normalised, so that :math:`\|f_i - f_j\|^2 = 2 - 2
  f_i^\top f_j`, and the correlation is the Gaussian RBF kernel
  :math:`\exp(-\gamma \|f_i - f_j\|^2)` through its order-:math:`P` Taylor
  expansion (the paper's choice):

  .. math::
    C_{ij} = \sum_{p=0}^{P} e^{-2\gamma} \frac{(2\gamma)^p}{p!}
      (f_i^\top f_j)^p,

  or with ``kernel='inner'`` the plain inner product :math:`f_i^\top f_j`.
  The loss is :math:`\frac{1}{b^2} \|C_t - C_s\|_F^2`; row :math:`i` gets
  :math:`\frac1b \sum_j (C_{t,ij} - C_{s,ij})^2`. (RepDistiller's
  ``Correlation`` class computes a different, simplified quantity; this is
  the paper's.)

  Args:
    student_features: ``[batch, ...]`` embeddings (flattened per example);
      student and teacher widths may differ.
    teacher_features: ``[batch, ...]``.
    example_mask: optional ``[batch]`` boolean mask of real examples.
    kernel: ``'rbf'`` (Taylor-approximated Gaussian) or ``'inner'``.
    gamma: the RBF kernel's :math:`\gamma` (0.4 in the paper).
    order: the Taylor order :math:`P` (2 in the paper).

  Returns:
    ``[batch]`` row values whose mean over real examples is the loss.

  References:
    Peng, Jin, Liu, Li, Wu, Liu, Zhou and Zhang, "Correlation Congruence for
    Knowledge Distillation", ICCV 2019, https://arxiv.org/abs/1904.01802.
  """
  if kernel not in ('rbf', 'inner'):
    raise ValueError(f"kernel must be 'rbf' or 'inner', got {kernel!r}.")
  student, teacher, mask, count = _flat_pair(student_features, teacher_features, example_mask)
  gamma = jnp.asarray(gamma, student.dtype)

  def correlation(x):
    inner = l2_normalize(x) @ l2_normalize(x).T
    if kernel == 'inner':
      return inner
    return sum(
        jnp.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p) * inner ** p
        for p in range(order + 1)
    )

  return _row_mean(jnp.square(correlation(teacher) - correlation(student)), mask, count)


def _check_order(order: Any) -> None:
  if not isinstance(order, int) or order < 0:
    raise ValueError(f'order must be a non-negative int, got {order!r}.')
