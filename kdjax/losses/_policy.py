"""MiniLLM's policy-gradient estimator of the sequence-level reverse KL."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kdjax import _checks
from kdjax.losses._common import jit_after_checks
from kdjax.losses._common import positive_value
from kdjax.losses._common import unit_interval_value
from kdjax.losses._logit import log_space_reverse_kl
from kdjax.losses._sequence import aligned_token_mask

Array = jax.Array
ArrayLike = Any


def _reverse_cumsum(x: Array) -> Array:
  """``out[..., t] = sum(x[..., t:])`` along the last axis."""
  return jnp.flip(jnp.cumsum(jnp.flip(x, -1), axis=-1), -1)


def _check_tokens(tokens: ArrayLike, shape: tuple[int, ...]) -> Array:
  _checks.check_integer('tokens', tokens)
  if tuple(jnp.shape(tokens)) != shape:
    raise ValueError(
        f'tokens must have the shape {shape} of the logits without their vocabulary '
        f'axis, got {tuple(jnp.shape(tokens))}.')
  return jnp.asarray(tokens, jnp.int32)


@jit_after_checks(positive_value('temperature'), unit_interval_value('teacher_mix'),
                  static_argnames=('single_step', 'length_normalize'))
def minillm_surrogate(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    tokens: ArrayLike,
    *,
    token_mask: ArrayLike | None = None,
    temperature: ArrayLike = 1.0,
    teacher_mix: ArrayLike = 0.0,
    single_step: bool = True,
    length_normalize: bool = True,
) -> Array:
  r"""Per-token surrogate whose gradient estimates MiniLLM's reverse-KL gradient.

  MiniLLM (Gu et al. 2024) trains the student :math:`q_\theta` to minimise
  the *sequence-level* reverse KL :math:`KL(q_\theta \| p)` to the teacher
  :math:`p` on sequences the student samples itself. Its gradient is a
  policy gradient (their Eq. 2) with the per-token reward
  :math:`r_t = \log p(y_t | y_{<t}) - \log q_\theta(y_t | y_{<t})` and the
  return :math:`R_t = \sum_{t' \ge t} r_{t'}`:

  .. math::
    \nabla KL = -\mathbb{E}_{y \sim q_\theta}\Big[\sum_t R_t\,
      \nabla \log q_\theta(y_t | y_{<t})\Big].

  This function returns, per token of `tokens` (the sampled sequence, as
  next-token targets aligned with the logits), a value whose gradient with
  respect to the student's logits is one sample of that estimate, built
  from the paper's pieces (Sec. 2.2), each an option:

  * ``single_step=True`` (single-step decomposition, their Eq. 4): the
    reward of the token itself is taken in expectation, exactly, as the
    gradient of the per-position reverse KL :math:`KL(q_t \| p_t)` over the
    whole vocabulary, and only the future return :math:`R_{t+1}` multiplies
    the score function: :math:`\nabla KL(q_t \| p_t) - R_{t+1} \nabla \log
    q_t(y_t)`. Same expectation, lower variance. With ``False`` it is plain
    REINFORCE: :math:`-R_t \nabla \log q_t(y_t)`.
  * ``length_normalize=True`` (their Eq. 6): :math:`R_{t+1}` is divided by
    the number of tokens it sums (``R_t`` by those from ``t`` on), so long
    continuations do not dominate. Biased; the paper finds it necessary.
  * ``teacher_mix = alpha > 0`` (teacher-mixed sampling, their Eq. 5): the
    sequences were sampled from :math:`\tilde p = \alpha p + (1 - \alpha)
    q_\theta` (see :func:`kdjax.onpolicy.mixture_decoder`), and every
    token's contribution is weighted by the per-token importance weight
    :math:`w_t = q_\theta(y_t) / \tilde p(y_t)`, the paper's approximation
    of the sequence's ratio. With ``alpha = 0`` the weights are 1.

  The returns, rewards and weights are cut from the gradient
  (``stop_gradient``), as is everything about the teacher; so is the
  sampling itself, which only produced the integer `tokens`. The *value*
  of each token is the importance-weighted per-position reverse KL
  :math:`w_t\, KL(q_t \| p_t)`, a readable training
  signal; the score-function part adds gradient without adding value. With
  ``single_step=False`` the value is the per-token reward estimate
  :math:`-w_t r_t` instead, whose mean is a sample of the sequence KL per
  token.

  Over all sequences, in expectation under :math:`q_\theta` (``alpha = 0``,
  no length normalisation), the sum of these values' gradients over a
  sequence is exactly :math:`\nabla KL(q_\theta \| p)` of the sequence
  distribution; the tests check this by enumerating every sequence of a
  tiny model. The :class:`~kdjax.objective.Objective` averages per token,
  which only rescales it.

  Args:
    student_logits: ``[batch, time, vocab]``; position ``t`` predicts
      ``tokens[:, t]``.
    teacher_logits: ``[batch, time, vocab]``, the teacher teacher-forced on
      the same sequence.
    tokens: int ``[batch, time]``, the sampled tokens (the batch's
      next-token labels).
    token_mask: ``[batch, time]``, 1 on the generated tokens (prompt and
      post-EOS positions 0): rewards are summed over these only.
    temperature: divides both logit sets everywhere (rewards, weights and
      the per-position KL); the values and gradients are multiplied by
      ``T²``. MiniLLM uses 1.
    teacher_mix: :math:`\alpha` in ``[0, 1)``, the teacher's weight in the
      sampling mixture (the paper uses 0.2).
    single_step: use the single-step decomposition.
    length_normalize: normalise the returns by their number of tokens.

  Returns:
    ``[batch, time]`` float32 per-token values, 0 where masked.

  References:
    Gu, Dong, Wei and Huang, "MiniLLM: Knowledge Distillation of Large
    Language Models", ICLR 2024, https://arxiv.org/abs/2306.08543.
  """
  student_logits = jnp.asarray(student_logits)
  teacher_logits = jnp.asarray(teacher_logits)
  if student_logits.ndim != 3 or student_logits.shape != teacher_logits.shape:
    raise ValueError(
        'student_logits and teacher_logits must both be [batch, time, vocab] of one '
        f'shape, got {student_logits.shape} and {teacher_logits.shape}.')
  tokens = _check_tokens(tokens, student_logits.shape[:-1])
  mask = aligned_token_mask(token_mask, 'student_logits', student_logits.shape[:-1])
  if mask is None:
    mask = jnp.ones(student_logits.shape[:-1], bool)
  tokens = jnp.where(mask, tokens, 0)  # padding may hold any id, even -1
  temperature = jnp.asarray(temperature, jnp.float32)
  teacher_mix = jnp.asarray(teacher_mix, jnp.float32)

  zero = jnp.zeros((), jnp.float32)
  log_q = jax.nn.log_softmax(
      jnp.where(mask[..., None], student_logits, zero).astype(jnp.float32) / temperature)
  log_p = jax.lax.stop_gradient(jax.nn.log_softmax(
      jnp.where(mask[..., None], teacher_logits, zero).astype(jnp.float32) / temperature))
  token_log_q = jnp.take_along_axis(log_q, tokens[..., None], axis=-1)[..., 0]
  token_log_p = jnp.take_along_axis(log_p, tokens[..., None], axis=-1)[..., 0]
  fixed_log_q = jax.lax.stop_gradient(token_log_q)

  # w_t = q / (alpha p + (1 - alpha) q), computed in log space.
  log_mix = jnp.logaddexp(jnp.log(teacher_mix) + token_log_p,
                          jnp.log1p(-teacher_mix) + fixed_log_q)
  weight = jnp.where(teacher_mix > 0, jnp.exp(fixed_log_q - log_mix), 1.0)

  reward = jnp.where(mask, token_log_p - fixed_log_q, 0.0)
  returns = _reverse_cumsum(reward)  # R_t
  if single_step:
    returns = returns - reward        # R_{t+1}
  if length_normalize:
    counts = _reverse_cumsum(mask.astype(jnp.float32))
    if single_step:
      counts = counts - mask
    returns = returns / jnp.maximum(counts, 1.0)
  score = -weight * returns * token_log_q  # gradient of the score-function part
  score = score - jax.lax.stop_gradient(score)  # adds gradient, no value
  if single_step:
    valid = jnp.ones_like(log_q, bool)
    value = weight * log_space_reverse_kl(log_q, valid, log_p, valid)
  else:
    value = -weight * reward
  return jnp.where(mask, (value + score) * temperature**2, 0.0)
