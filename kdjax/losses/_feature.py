"""Per-example feature distillation losses: FitNets, AT, NST, VID."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from kdjax import _checks
from kdjax.losses._common import check_choice
from kdjax.losses._common import compute_dtype
from kdjax.losses._common import jit_after_checks
from kdjax.losses._common import positive_value

Array = jax.Array
ArrayLike = Any

# Conventions shared by the feature losses (here, in `_relational.py` and
# `_crd.py`):
#
# * Argument order is ``(student_features, teacher_features, ...)``; the
#   batch is the leading axis of both and is never reduced: one value per
#   example comes back (for the batch-relational losses, one value per row of
#   the relation matrix, so that the mean over the batch is the paper's loss).
# * Convolutional maps are channels-last (NHWC, the JAX convention):
#   ``[batch, *spatial, channels]``.
# * Work is done in float32 (float64 inputs stay float64); the teacher is a
#   fixed target and passes through `stop_gradient`.
# * ``example_mask`` is an optional boolean ``[batch]`` mask of the real
#   examples: padding examples get the value 0 (with zero gradients) and take
#   part in no batch relation. (``where=`` is kdjax's name for class masks
#   only; the old ``where=`` here still works for one release, with a
#   DeprecationWarning.)
# * Modules whose parameters a method trains (the FitNets regressor, VID's
#   mean and variance) are linen modules that belong to the STUDENT: put them
#   in the student model so that their parameters live in the student's
#   params, are updated by the student's optimizer and are checkpointed with
#   the student.

RESIZE_MODES = (None, 'avg_pool', 'bilinear')


# ----------------------------------------------------------------------------
# Feature helpers (also used by `_relational.py` and `_crd.py`).


def prepare_features(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    min_ndim: int = 2,
    layout: str = '[batch, ...]',
) -> tuple[Array, Array]:
  """Checks dtype, rank and batch size; casts; cuts the teacher's gradient."""
  for name, x in (('student_features', student_features),
                  ('teacher_features', teacher_features)):
    _checks.check_floating(name, x)
    if jnp.ndim(x) < min_ndim:
      raise ValueError(
          f'{name} must have at least {min_ndim} axes {layout}, got shape '
          f'{jnp.shape(x)}.'
      )
  s_shape, t_shape = jnp.shape(student_features), jnp.shape(teacher_features)
  if s_shape[0] != t_shape[0]:
    raise ValueError(
        'student_features and teacher_features must have the same batch size '
        f'(leading axis), got student_features.shape={s_shape} and '
        f'teacher_features.shape={t_shape}.'
    )
  student = jnp.asarray(student_features)
  teacher = lax.stop_gradient(jnp.asarray(teacher_features))
  dtype = compute_dtype(student, teacher)
  return student.astype(dtype), teacher.astype(dtype)


def checked_example_mask(example_mask: ArrayLike | None, batch: int) -> Array | None:
  """`example_mask` checked to be ``[batch]`` and cast to bool (None stays None)."""
  if example_mask is None:
    return None
  if jnp.shape(example_mask) != (batch,):
    raise ValueError(
        f'example_mask must be a [batch] mask of the real examples with shape '
        f'({batch},), got example_mask.shape={jnp.shape(example_mask)}.'
    )
  return jnp.asarray(example_mask).astype(bool)


def mask_values(values: Array, mask: Array | None) -> Array:
  """Zero per-example `values` where `mask` is False."""
  if mask is None:
    return values
  return jnp.where(mask, values, 0.0)


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  """``x / max(||x||, eps)`` (PyTorch's ``F.normalize``), finite gradients at 0."""
  squared = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * lax.rsqrt(jnp.maximum(squared, eps * eps))


def _pool(x: Array, factors: tuple[int, ...]) -> Array:
  """Average pooling of ``[batch, *spatial, channels]`` by integer factors."""
  window = (1, *factors, 1)
  summed = lax.reduce_window(x, 0.0, lax.add, window, window, 'VALID')
  return summed / math.prod(factors)


def match_spatial(
    student: Array, teacher: Array, resize: str | None
) -> tuple[Array, Array]:
  """Brings ``[batch, *spatial, channels]`` maps to one spatial size.

  ``resize=None``: the sizes must be equal. ``'avg_pool'``: the larger map is
  average-pooled down to the smaller one (each size must divide evenly, as
  PyTorch's ``adaptive_avg_pool2d`` does in RepDistiller's NST and VID).
  ``'bilinear'``: the student's map is resized bilinearly to the teacher's
  size (``jax.image.resize``).
  """
  s_spatial, t_spatial = student.shape[1:-1], teacher.shape[1:-1]
  if len(s_spatial) != len(t_spatial):
    raise ValueError(
        'student_features and teacher_features must have the same number of '
        f'spatial axes, got student_features.shape={student.shape} and '
        f'teacher_features.shape={teacher.shape}.'
    )
  if s_spatial == t_spatial:
    return student, teacher
  if resize is None:
    raise ValueError(
        'student_features and teacher_features have different spatial sizes '
        f'{s_spatial} and {t_spatial} (student_features.shape={student.shape}, '
        f"teacher_features.shape={teacher.shape}); pass resize='avg_pool' or "
        "resize='bilinear', or make the maps match in the model."
    )
  if resize == 'bilinear':
    shape = (student.shape[0], *t_spatial, student.shape[-1])
    return jax.image.resize(student, shape, 'bilinear'), teacher
  smaller = tuple(min(s, t) for s, t in zip(s_spatial, t_spatial))
  out = []
  for name, x, spatial in (('student_features', student, s_spatial),
                           ('teacher_features', teacher, t_spatial)):
    if any(n % m for n, m in zip(spatial, smaller)) or any(
        n < m for n, m in zip(spatial, smaller)
    ):
      raise ValueError(
          f"resize='avg_pool' needs spatial sizes that divide evenly, got "
          f'{name}.shape={x.shape} against the smaller size {smaller}.'
      )
    factors = tuple(n // m for n, m in zip(spatial, smaller))
    out.append(_pool(x, factors) if any(f > 1 for f in factors) else x)
  return out[0], out[1]


def _spatial_maps(name: str, x: ArrayLike) -> None:
  if jnp.ndim(x) < 3:
    raise ValueError(
        f'{name} must be a feature map [batch, *spatial, channels] '
        f'(channels last) with at least one spatial axis, got shape '
        f'{jnp.shape(x)}.'
    )


# ----------------------------------------------------------------------------
# FitNets.


class HintRegressor(nn.Module):
  """FitNets' regressor: maps the student's guided layer to the hint's shape.

  A part of the STUDENT: create it inside the student module (so that its
  parameters are in the student's ``params``, trained in stage 1 of FitNets
  together with the layers up to the guided layer) and expose its output as
  the feature that :func:`hint_loss` compares with the teacher's hint.

  On ``[batch, features]`` vectors it is a dense layer; on channels-last maps
  ``[batch, *spatial, channels]`` a convolution with ``kernel_size`` and
  ``strides`` on every spatial axis and ``SAME`` padding (a 1x1 convolution by
  default; ``strides=2`` halves the spatial size to meet a smaller hint).

  Attributes:
    channels: the hint's (teacher's) number of channels.
    kernel_size: convolution window (1 or 3 in practice).
    strides: convolution stride.
    use_bias: whether the layer has a bias.

  References:
    Romero, Ballas, Kahou, Chassang, Gatta and Bengio, "FitNets: Hints for
    Thin Deep Nets", ICLR 2015, https://arxiv.org/abs/1412.6550.
  """

  channels: int
  kernel_size: int = 1
  strides: int = 1
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim == 2:
      return nn.Dense(self.channels, use_bias=self.use_bias)(x)
    spatial = x.ndim - 2
    return nn.Conv(
        self.channels,
        (self.kernel_size,) * spatial,
        strides=(self.strides,) * spatial,
        padding='SAME',
        use_bias=self.use_bias,
    )(x)


@_checks.renamed_argument('where', 'example_mask')
@jit_after_checks(
    check_choice('resize', RESIZE_MODES),
    check_choice('reduction', ('sum', 'mean')),
    static_argnames=('resize', 'reduction'),
)
def hint_loss(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    example_mask: ArrayLike | None = None,
    resize: str | None = None,
    reduction: str = 'sum',
) -> Array:
  r"""FitNets hint loss: ``1/2 ||teacher - student||²`` per example.

  The student's guided layer, passed through a :class:`HintRegressor` that
  belongs to the student's parameters, must match the teacher's hint layer in
  shape: a different number of channels is an error (add a regressor); a
  different spatial size is an error unless ``resize`` is given.

  Args:
    student_features: ``[batch, ...]`` (e.g. ``[batch, height, width,
      channels]``) the regressor's output.
    teacher_features: ``[batch, ...]`` the teacher's hint, same shape (up to
      the spatial size when resizing).
    example_mask: optional ``[batch]`` boolean mask of the real examples;
      False rows (padding) give 0.
    resize: ``None`` (spatial sizes must match), ``'avg_pool'`` (the larger
      map is average-pooled to the smaller size, integer factors) or
      ``'bilinear'`` (the student's map is resized to the teacher's).
    reduction: ``'sum'`` gives the paper's :math:`\frac12\|t - s\|^2`;
      ``'mean'`` gives the mean squared error over the feature elements
      (RepDistiller's and mdistiller's ``MSELoss``, for which their hint
      weight of 100 was tuned; the mean over the batch then equals theirs).

  Returns:
    ``[batch]`` per-example losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> student = jnp.zeros((2, 4, 4, 8))
    >>> teacher = jnp.ones((2, 4, 4, 8))
    >>> print(losses.hint_loss(student, teacher))
    [64. 64.]

  References:
    Romero, Ballas, Kahou, Chassang, Gatta and Bengio, "FitNets: Hints for
    Thin Deep Nets", ICLR 2015, https://arxiv.org/abs/1412.6550.
  """
  student, teacher = prepare_features(student_features, teacher_features)
  if student.ndim != teacher.ndim:
    raise ValueError(
        'student_features and teacher_features must have the same rank, got '
        f'student_features.shape={student.shape} and '
        f'teacher_features.shape={teacher.shape}.'
    )
  if student.shape[-1] != teacher.shape[-1]:
    raise ValueError(
        f'the student has {student.shape[-1]} channels and the teacher\'s hint '
        f'{teacher.shape[-1]} (student_features.shape={student.shape}, '
        f'teacher_features.shape={teacher.shape}); add a HintRegressor('
        f'channels={teacher.shape[-1]}) to the student after its guided layer.'
    )
  if student.ndim > 2:
    student, teacher = match_spatial(student, teacher, resize)
  mask = checked_example_mask(example_mask, student.shape[0])
  squared = jnp.square(student - teacher).reshape(student.shape[0], -1)
  values = (0.5 * jnp.sum(squared, axis=1) if reduction == 'sum'
            else jnp.mean(squared, axis=1))
  return mask_values(values, mask)


# ----------------------------------------------------------------------------
# Attention transfer.


def attention_map(features: Array, p: float = 2.0) -> Array:
  r"""AT's spatial attention: :math:`\mathrm{mean}_c |A_c|^p`, flattened, L2-normalised.

  Args:
    features: ``[batch, *spatial, channels]``.
    p: the exponent.

  Returns:
    ``[batch, prod(spatial)]`` unit-norm rows.
  """
  features = jnp.asarray(features)
  power = jnp.mean(jnp.abs(features) ** p, axis=-1)
  return l2_normalize(power.reshape(power.shape[0], -1))


@_checks.renamed_argument('where', 'example_mask')
@jit_after_checks(
    check_choice('resize', RESIZE_MODES),
    positive_value('p'),
    static_argnames=('resize',),
)
def attention_transfer(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    p: ArrayLike = 2.0,
    example_mask: ArrayLike | None = None,
    resize: str | None = None,
) -> Array:
  r"""Activation-based attention transfer: mean squared gap of attention maps.

  With :math:`Q = \mathrm{vec}(\mathrm{mean}_c |A_c|^p)` and
  :math:`\hat Q = Q / \|Q\|_2` for each example (:func:`attention_map`),
  returns :math:`\mathrm{mean}_{j} (\hat Q_{s,j} - \hat Q_{t,j})^2` over the
  spatial positions :math:`j`.

  The paper writes the loss as :math:`\frac{\beta}{2} \|\hat Q_s - \hat
  Q_t\|_p` with :math:`p = 2`; the authors' code (``at_loss`` in
  szagoruyko/attention-transfer, and RepDistiller's ``Attention``) uses
  ``(at(s) - at(t)).pow(2).mean()``, the squared distance averaged over
  positions, with :math:`\beta = 1000`. We follow the code, whose weight is
  the one papers and benchmarks report: the mean of these values over the
  batch equals ``at_loss``. Channel counts may differ; spatial sizes must
  match unless ``resize`` is given (applied to the attention maps, before
  normalising). The paper sums the loss over several layer pairs: make one
  term per pair.

  Args:
    student_features: ``[batch, *spatial, channels_s]`` channels-last map.
    teacher_features: ``[batch, *spatial, channels_t]``.
    p: exponent of the attention map (2 in the paper).
    example_mask: optional ``[batch]`` boolean mask of the real examples;
      False rows (padding) give 0.
    resize: ``None``, ``'avg_pool'`` or ``'bilinear'`` (see
      :func:`hint_loss`).

  Returns:
    ``[batch]`` per-example losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> from kdjax import losses
    >>> features = jnp.arange(64.0).reshape(2, 2, 2, 8)
    >>> # Attention maps are scale invariant.
    >>> loss = losses.attention_transfer(3.0 * features, features)
    >>> print(loss.shape, bool(loss.max() < 1e-12))
    (2,) True

  References:
    Zagoruyko and Komodakis, "Paying More Attention to Attention: Improving
    the Performance of Convolutional Neural Networks via Attention
    Transfer", ICLR 2017, https://arxiv.org/abs/1612.03928.
  """
  _spatial_maps('student_features', student_features)
  _spatial_maps('teacher_features', teacher_features)
  student, teacher = prepare_features(student_features, teacher_features)
  mask = checked_example_mask(example_mask, student.shape[0])
  p = jnp.asarray(p, student.dtype)
  student_power = jnp.mean(jnp.abs(student) ** p, axis=-1, keepdims=True)
  teacher_power = jnp.mean(jnp.abs(teacher) ** p, axis=-1, keepdims=True)
  student_power, teacher_power = match_spatial(student_power, teacher_power, resize)
  batch = student.shape[0]
  student_q = l2_normalize(student_power.reshape(batch, -1))
  teacher_q = l2_normalize(teacher_power.reshape(batch, -1))
  values = jnp.mean(jnp.square(student_q - teacher_q), axis=1)
  return mask_values(values, mask)


# ----------------------------------------------------------------------------
# Neuron selectivity transfer.


@_checks.renamed_argument('where', 'example_mask')
@jit_after_checks(
    check_choice('resize', RESIZE_MODES), static_argnames=('resize',)
)
def nst(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    example_mask: ArrayLike | None = None,
    resize: str | None = None,
) -> Array:
  r"""Neuron selectivity transfer: MMD² between channel distributions.

  Each channel of an example's map is one sample: its activations over the
  :math:`P` spatial positions, L2-normalised, :math:`f_i \in \mathbb{R}^P`.
  With the polynomial kernel :math:`k(x, y) = (x^\top y)^2` (:math:`d = 2`,
  :math:`c = 0`), returns per example

  .. math::
    \mathrm{MMD}^2 = \frac{1}{C_t^2}\sum_{i,j} k(t_i, t_j)
      + \frac{1}{C_s^2}\sum_{i,j} k(s_i, s_j)
      - \frac{2}{C_s C_t}\sum_{i,j} k(s_i, t_j),

  as RepDistiller's ``NSTLoss`` (its batch mean equals theirs). NST compares
  each example with itself only, so it is per-example and a sharded batch
  changes nothing. Channel counts may differ; spatial sizes must match
  unless ``resize`` is given (RepDistiller pools the larger map:
  ``'avg_pool'``).

  Args:
    student_features: ``[batch, *spatial, channels_s]`` channels-last map.
    teacher_features: ``[batch, *spatial, channels_t]``.
    example_mask: optional ``[batch]`` boolean mask of the real examples;
      False rows (padding) give 0.
    resize: ``None``, ``'avg_pool'`` or ``'bilinear'`` (see
      :func:`hint_loss`).

  Returns:
    ``[batch]`` per-example squared MMDs.

  References:
    Huang and Wang, "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer", 2017, https://arxiv.org/abs/1707.01219.
  """
  _spatial_maps('student_features', student_features)
  _spatial_maps('teacher_features', teacher_features)
  student, teacher = prepare_features(student_features, teacher_features)
  student, teacher = match_spatial(student, teacher, resize)
  batch = student.shape[0]
  mask = checked_example_mask(example_mask, batch)
  # [batch, positions, channels] -> unit vectors over positions per channel.
  student = l2_normalize(student.reshape(batch, -1, student.shape[-1]), axis=1)
  teacher = l2_normalize(teacher.reshape(batch, -1, teacher.shape[-1]), axis=1)

  def kernel_mean(a, b):
    return jnp.mean(jnp.square(jnp.einsum('bpi,bpj->bij', a, b)), axis=(1, 2))

  values = (kernel_mean(teacher, teacher) + kernel_mean(student, student)
            - 2.0 * kernel_mean(student, teacher))
  return mask_values(values, mask)


# ----------------------------------------------------------------------------
# Variational information distillation.


class VIDRegressor(nn.Module):
  r"""VID's variational distribution :math:`q(t \mid s)`: a mean and a variance.

  A part of the STUDENT (its parameters live in the student's ``params``).
  The mean is a small network on the student's features (three 1x1
  convolutions, i.e. dense layers on the channel axis, with ReLUs between,
  as RepDistiller's ``VIDLoss``); the variance is one learned value per
  teacher channel, :math:`\sigma_c^2 = \mathrm{softplus}(\alpha_c) +
  \epsilon`, initialised to `init_variance`. Its output ``(mean, variance)``
  is what :func:`vid` takes as the student's side: sow it as one feature.

  Attributes:
    channels: the teacher's number of channels.
    hidden_channels: width of the hidden layers (default: `channels`).
    init_variance: initial variance (5.0 in RepDistiller).
    eps: the variance's floor :math:`\epsilon`.

  References:
    Ahn, Hu, Damianou, Lawrence and Dai, "Variational Information
    Distillation for Knowledge Transfer", CVPR 2019,
    https://arxiv.org/abs/1904.05835.
  """

  channels: int
  hidden_channels: int | None = None
  init_variance: float = 5.0
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    hidden = self.hidden_channels or self.channels
    h = nn.relu(nn.Dense(hidden, use_bias=False)(x))
    h = nn.relu(nn.Dense(hidden, use_bias=False)(h))
    mean = nn.Dense(self.channels, use_bias=False)(h)
    # softplus^-1(init_variance - eps)
    init = math.log(math.expm1(self.init_variance - self.eps))
    alpha = self.param('alpha', nn.initializers.constant(init), (self.channels,))
    return mean, nn.softplus(alpha) + self.eps


@_checks.renamed_argument('where', 'example_mask')
@jit_after_checks()
def vid(
    student_prediction: tuple[ArrayLike, ArrayLike],
    teacher_features: ArrayLike,
    *,
    example_mask: ArrayLike | None = None,
) -> Array:
  r"""Variational information distillation: Gaussian negative log-likelihood.

  With the student's prediction :math:`(\mu, \sigma^2)` of the teacher's
  features :math:`t` (from a :class:`VIDRegressor`), returns per example the
  mean over positions and channels of

  .. math::
    \log \sigma_c + \frac{(t - \mu)^2}{2 \sigma_c^2},

  the negative log-likelihood without its constant :math:`\frac12\log 2\pi`
  (as RepDistiller's ``VIDLoss``; its batch mean equals theirs). Minimising
  it maximises a variational lower bound on the mutual information between
  teacher and student features. Spatial sizes must already match (pool in
  the model if needed).

  Args:
    student_prediction: ``(mean, variance)``: `mean` ``[batch, ...,
      channels]`` with the teacher's shape, `variance` positive, broadcastable
      to it (``[channels]`` from :class:`VIDRegressor`).
    teacher_features: ``[batch, ..., channels]``.
    example_mask: optional ``[batch]`` boolean mask of the real examples;
      False rows (padding) give 0.

  Returns:
    ``[batch]`` per-example losses.

  References:
    Ahn, Hu, Damianou, Lawrence and Dai, "Variational Information
    Distillation for Knowledge Transfer", CVPR 2019,
    https://arxiv.org/abs/1904.05835.
  """
  if not (isinstance(student_prediction, (tuple, list)) and len(student_prediction) == 2):
    raise TypeError(
        'student_prediction must be the pair (mean, variance) of a '
        f'VIDRegressor, got {type(student_prediction).__name__}.'
    )
  mean, variance = student_prediction
  _checks.check_floating('variance', variance)
  student, teacher = prepare_features(mean, teacher_features)
  if student.shape != teacher.shape:
    raise ValueError(
        'the predicted mean must have the teacher\'s shape, got '
        f'mean.shape={student.shape} and teacher_features.shape={teacher.shape}.'
    )
  _checks.check_broadcastable('variance', variance, 'mean', student.shape)
  variance = jnp.broadcast_to(jnp.asarray(variance).astype(student.dtype), student.shape)
  mask = checked_example_mask(example_mask, student.shape[0])
  nll = 0.5 * (jnp.square(teacher - student) / variance + jnp.log(variance))
  values = jnp.mean(nll.reshape(student.shape[0], -1), axis=1)
  return mask_values(values, mask)
