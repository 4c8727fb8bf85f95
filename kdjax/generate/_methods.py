"""Decoding methods: what :func:`kdjax.generate.make_generate` does each step."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _checks

_LENGTH_PENALTIES = ('gnmt', 'average', 'none')


@dataclasses.dataclass(frozen=True)
class Greedy:
  """Picks the most probable next token at every step (ties: the lowest id)."""


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Draws each next token from the model's distribution, reshaped.

  The logits are divided by `temperature`, then cut to the `top_k` most
  probable tokens, then to the smallest set of the most probable tokens
  whose probability reaches `top_p` (nucleus sampling, Holtzman et al.,
  "The Curious Case of Neural Text Degeneration", ICLR 2020), in that
  order (the order of Hugging Face ``transformers``' warpers). The most
  probable token is always kept, so ``top_k=1`` or a tiny `top_p` is
  greedy decoding.

  Attributes:
    temperature: ``> 0``; ``1`` is the model's distribution, smaller is
      sharper (as ``temperature -> 0`` sampling becomes greedy).
    top_k: keep the `top_k` largest logits (ties at the k-th value are
      kept too); ``None`` keeps all.
    top_p: in ``(0, 1]``; ``None`` or ``1`` keeps all.
  """

  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None

  def __post_init__(self):
    t = self.temperature
    if not isinstance(t, (int, float, np.floating)) or not math.isfinite(t) or t <= 0:
      raise ValueError(
          f'Sampling.temperature must be a finite number > 0, got {t!r}; '
          'use Greedy() for temperature 0.'
      )
    if self.top_k is not None:
      _checks.check_positive_int('Sampling.top_k', self.top_k)
    if self.top_p is not None and not (
        isinstance(self.top_p, (int, float, np.floating)) and 0.0 < self.top_p <= 1.0
    ):
      raise ValueError(f'Sampling.top_p must be in (0, 1] or None, got {self.top_p!r}.')


@dataclasses.dataclass(frozen=True)
class BeamSearch:
  """Beam search with a length penalty and early stopping.

  Each step extends the `width` live hypotheses ("alive") by every token,
  keeps the ``2 * width`` best extensions by log-probability, moves those
  ending in EOS into a set of `width` finished hypotheses ranked by the
  length-penalised score, and keeps the `width` best of the rest alive
  (the scheme of Wu et al. 2016 as implemented in tensor2tensor and t5x).
  A hypothesis that reaches ``max_new_tokens`` without EOS is finished
  there. The score of a finished hypothesis of ``L`` tokens (its EOS
  counted) and log-probability ``lp`` is ``lp / penalty(L)``:

  * ``'gnmt'``: ``penalty(L) = ((5 + L) / 6) ** alpha`` (Wu et al.,
    "Google's Neural Machine Translation System", arXiv:1609.08144, eq. 14);
    ``alpha = 0`` is the plain log-probability.
  * ``'average'``: ``penalty(L) = L``, the mean log-probability per token.
  * ``'none'``: ``penalty(L) = 1``.

  Attributes:
    width: the beam width, ``>= 1``.
    alpha: the GNMT exponent (``'gnmt'`` only), ``>= 0``.
    length_penalty: ``'gnmt'``, ``'average'`` or ``'none'``.
    early_stopping: stop a source as soon as no live hypothesis can enter
      its finished set any more: every penalty is increasing in ``L`` and
      log-probabilities only fall, so no extension of a live hypothesis can
      score above ``best_alive_lp / penalty(max_new_tokens)``; once the
      worst of the `width` finished scores is at least that bound, nothing
      can change. This never changes the result, only the number of steps.
      ``False`` runs every source to ``max_new_tokens`` (the same output,
      a check on the bound).
    cache_segments: decode in this many segments of growing cache length,
      ``>= 1``. Segment ``s`` runs with the beam cache cut to the positions
      its steps can reach, so attention reads only that part instead of the
      whole cache at every step (with a short prompt, about a third less at
      4 segments, 40 % less at 8). Each segment compiles its own step, so
      the first call takes longer. The output is the same up to the
      rounding of the attention's sums. Used with a decoder that can
      resize its beam cache (the zoo's models; :class:`Decoder`'s
      ``beam_resize``); ignored otherwise.
  """

  width: int
  alpha: float = 0.6
  length_penalty: str = 'gnmt'
  early_stopping: bool = True
  cache_segments: int = 1

  def __post_init__(self):
    _checks.check_positive_int('BeamSearch.width', self.width)
    _checks.check_positive_int('BeamSearch.cache_segments', self.cache_segments)
    if self.length_penalty not in _LENGTH_PENALTIES:
      raise ValueError(
          f'BeamSearch.length_penalty must be one of {_LENGTH_PENALTIES}, '
          f'got {self.length_penalty!r}.'
      )
    if not isinstance(self.alpha, (int, float, np.floating)) or not (
        math.isfinite(self.alpha) and self.alpha >= 0
    ):
      raise ValueError(f'BeamSearch.alpha must be a finite number >= 0, got {self.alpha!r}.')

  def penalty(self, length: jax.Array | int) -> jax.Array:
    """The divisor of a finished hypothesis' log-probability at `length` tokens."""
    length = jnp.asarray(length, jnp.float32)
    if self.length_penalty == 'gnmt':
      return ((5.0 + length) / 6.0) ** self.alpha
    if self.length_penalty == 'average':
      return length
    return jnp.ones_like(length)


Method = Greedy | Sampling | BeamSearch


def warp_logits(logits: jax.Array, method: Sampling) -> jax.Array:
  """The logits `method` samples from: tempered, top-k and top-p cut (-inf).

  Args:
    logits: float ``[batch, vocab]``.
    method: the sampling options.

  Returns:
    float32 ``[batch, vocab]``; removed tokens are ``-inf``.
  """
  logits = logits.astype(jnp.float32) / jnp.float32(method.temperature)
  vocab = logits.shape[-1]
  if method.top_k is not None and method.top_k < vocab:
    kth = jax.lax.top_k(logits, method.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if method.top_p is not None and method.top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    # The smallest prefix whose mass reaches top_p: a token is kept when the
    # mass strictly before it is below top_p (so the first is always kept).
    kept = before < method.top_p
    threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits
