"""The mixture of several teachers' tempered distributions, in log space."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax import _checks


def mixture_log_probs(
    teacher_logits: jax.Array,
    weights: jax.Array,
    *,
    temperature: jax.Array | float = 1.0,
    where: jax.Array | None = None,
    axis: int = -1,
) -> jax.Array:
  r"""Log-probabilities of a weighted mixture of teacher distributions.

  Returns :math:`\log \sum_k w_k\, \mathrm{softmax}(t_k / T)`, computed as a
  ``logsumexp`` over teachers of their log-softmaxes (so no probability is
  ever exponentiated and summed in linear space). Classes outside `where`
  (or with a -inf logit in every teacher) get -inf; a row with no class left
  gives 0 everywhere (the losses give 0 there under the same `where`).

  Args:
    teacher_logits: ``[teachers, ..., classes]`` floating logits.
    weights: ``[teachers]`` non-negative mixture weights summing to 1.
    temperature: positive scalar dividing the logits.
    where: optional boolean class mask broadcastable to ``[..., classes]``.
    axis: the class axis of each teacher's logits (``[..., classes]``).

  Returns:
    ``[..., classes]`` float32 log-probabilities.
  """
  logits = jnp.asarray(teacher_logits, jnp.float32) / jnp.asarray(temperature, jnp.float32)
  class_axis = axis % (logits.ndim - 1) + 1
  valid = logits != -jnp.inf
  if where is not None:
    _checks.check_broadcastable('where', where, 'teacher logits', logits.shape[1:])
    mask = jnp.broadcast_to(jnp.asarray(where, bool), logits.shape[1:])
    valid = valid & mask[None]
  logits = jnp.where(valid, logits, -jnp.inf)
  # A teacher row with no valid class would give NaN: use zeros there.
  row_valid = jnp.any(valid, axis=class_axis, keepdims=True)
  logits = jnp.where(row_valid, logits, 0.0)
  log_probs = jax.nn.log_softmax(logits, axis=class_axis)
  w = jnp.asarray(weights, jnp.float32).reshape((-1,) + (1,) * (logits.ndim - 1))
  # b= weights: a zero weight drops a teacher without a log(0).
  return jax.nn.logsumexp(log_probs, axis=0, b=jnp.broadcast_to(w, logits.shape))
