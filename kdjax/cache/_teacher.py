"""Teachers made of top-k log-probs: read from a cached batch, or cut from a live teacher."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax._outputs import Outputs
from kdjax.cache import _store
from kdjax.objective._lm import TAIL_LOG_MASS
from kdjax.objective._lm import TOPK_INDICES
from kdjax.objective._lm import TOPK_LOG_PROBS

Apply = Callable[..., Any]


def cached_teacher_apply(variables: Any, batch: Any, *, train: bool, rngs: Any = None):
  """A teacher ``apply`` that reads the teacher's top-k from a cached batch.

  The batch must carry a teacher cache's entries (:func:`join_cache`):
  ``teacher_topk_log_probs`` ``[batch, time, k]``, ``teacher_topk_indices``
  ``[batch, time, k]`` and ``teacher_tail_log_mass`` ``[batch, time]``.
  Give it to :func:`kdjax.step.make_train_step` as the teacher (with
  ``teacher_variables=None``) and :func:`kdjax.objective.cached_token_distill`
  as the term: the step is the same, with no teacher forward.

  Returns:
    ``(Outputs(logits=None, features={'topk_log_probs': float32,
    'topk_indices': int32, 'tail_log_mass': float32}), {})``.
  """
  del variables, train, rngs
  log_probs, indices, tail = _store.cache_batch(batch)
  return Outputs(logits=None, features={
      TOPK_LOG_PROBS: log_probs, TOPK_INDICES: indices, TAIL_LOG_MASS: tail}), {}


def topk_teacher_apply(
    teacher_apply: Apply,
    k: int,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> Apply:
  """A live teacher cut to its top-k: the features :func:`cached_teacher_apply` reads.

  Runs `teacher_apply` and hands over
  :func:`kdjax.losses.teacher_topk` of its logits, so that the sparse loss
  can be computed online (no cache, the same values as a float32 cache of
  the same teacher, k and temperature).

  Args:
    teacher_apply: the teacher's ``apply``, computing logits.
    k: entries kept per token.
    temperature: the temperature of the log-probs handed over.
    vocab_size: the true vocabulary when the logits are padded.

  Returns:
    ``apply(variables, batch, *, train, rngs=None) -> (Outputs, state)`` with
    ``logits=None`` and the three top-k features.
  """

  def apply(variables, batch, *, train, rngs=None):
    outputs, state = teacher_apply(variables, batch, train=train, rngs=rngs)
    log_probs, indices, tail = losses.teacher_topk(
        outputs.logits, k, temperature=temperature, vocab_size=vocab_size)
    return Outputs(logits=None, features={
        TOPK_LOG_PROBS: log_probs, TOPK_INDICES: indices, TAIL_LOG_MASS: tail}), state

  return apply
