"""The contract between :mod:`kdjax.generate` and a model: a :class:`Decoder`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

# ``init_cache(variables, inputs, batch_size, cache_length) -> cache``
InitCache = Callable[[Any, Mapping[str, Any], int, int], Any]
# ``step(variables, tokens, positions, cache) -> (logits, cache)``
DecodeStep = Callable[[Any, jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
# ``beam_cache(cache, width) -> beam cache``
BeamCache = Callable[[Any, int], Any]
# ``beam_step(variables, tokens, positions, beam_cache, slots) -> (logits, beam_cache)``
BeamStep = Callable[[Any, jax.Array, jax.Array, Any, jax.Array], tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class Decoder:
  """How :mod:`kdjax.generate` runs a model one chunk of tokens at a time.

  A decoder is two pure functions and two sizes; the zoo builds them for
  its models (:func:`kdjax.zoo.lm_decoder`, :func:`kdjax.zoo.seq2seq_decoder`)
  and any model with a key/value cache can provide its own.

  Attributes:
    init_cache: ``init_cache(variables, inputs, batch_size, cache_length)
      -> cache``. Allocates the cache for `batch_size` sequences of up to
      `cache_length` target positions and runs whatever is computed once
      per input: an encoder-decoder runs its encoder on
      ``inputs['source']`` (int ``[batch, source_len]``) with
      ``inputs['source_mask']`` (bool, True on real tokens) and stores the
      cross-attention keys and values; a decoder-only model ignores
      `inputs`. **Every leaf of the cache has the batch as axis 0**, so
      that beam search can tile it (``jnp.repeat(leaf, width, axis=0)``)
      and reorder it (``leaf[indices]``).
    step: ``step(variables, tokens, positions, cache) -> (logits, cache)``.
      `tokens` and `positions` are int32 ``[batch, time]``; row ``b``'s
      positions are consecutive (``positions[b, 0] + arange(time)``) and
      may start at a different position in each row. The step writes the
      keys and values of the new tokens into the cache at those positions
      (overwriting what was there), lets a token at position ``p`` attend
      to cache positions ``<= p`` of its own row, and returns float32
      ``logits [batch, time, vocab_size]`` (token ``t``'s prediction of
      the token at ``positions[:, t] + 1``) and the new cache. A cache
      position that was written but lies after every query is never
      attended to, which is what makes right-padded prompts work: their
      padding is overwritten by the generated tokens before anything reads
      it.
    vocab_size: the size of the output distribution.
    max_length: the most target positions the model accepts (its position
      table or ``max_len``); ``cache_length`` must not exceed it.
    beam_cache: optional, with `beam_step`: ``beam_cache(cache, width) ->
      beam_cache`` turns the cache after the prompts' step (batch ``B``)
      into one for `width` beams per row, the prompt stored once per row.
    beam_step: optional: ``beam_step(variables, tokens, positions,
      beam_cache, slots) -> (logits, beam_cache)``, beam search's step
      without reordering the cache. `tokens` int32 ``[B, width]`` (one new
      token per beam), `positions` int32 ``[B]`` (every beam of row ``b``
      is at the same position), `slots` int32 ``[B, width, cache_length]``:
      ``slots[b, w, p]`` is the beam slot whose entry at position ``p``
      holds beam ``w``'s token there (its own or an ancestor's; prompt
      positions are slot 0). The step writes beam ``w``'s new key and
      value into slot ``w`` at ``positions[b]`` and lets beam ``w`` attend
      to slot ``slots[b, w, p]`` at each position ``p <= positions[b]``;
      logits are float32 ``[B, width, vocab_size]``. Since every slot is
      written once per position and each step writes a position no beam
      has yet, no entry a live beam reads is ever overwritten. Without
      these two, beam search tiles the cache over the beams and gathers it
      along the chosen parents at every step.
    beam_resize: optional, with `beam_step`: ``beam_resize(beam_cache,
      length) -> beam_cache`` with every position axis of the beam cache
      cut or zero-padded to `length` positions (what is computed once per
      input, such as cross-attention keys, unchanged). With it,
      ``BeamSearch(cache_segments=S)`` decodes in `S` segments, each over a
      cache no longer than its steps can reach.
  """

  init_cache: InitCache
  step: DecodeStep
  vocab_size: int
  max_length: int
  beam_cache: BeamCache | None = None
  beam_step: BeamStep | None = None
  beam_resize: Callable[[Any, int], Any] | None = None

  def __post_init__(self):
    if (self.beam_cache is None) != (self.beam_step is None):
      raise ValueError(
          'Decoder.beam_cache and Decoder.beam_step must be given together, got '
          f'beam_cache={self.beam_cache!r} and beam_step={self.beam_step!r}.'
      )
    if self.beam_resize is not None and self.beam_step is None:
      raise ValueError('Decoder.beam_resize needs beam_cache and beam_step (a beam cache to '
                       'resize), got beam_step=None.')


def resize_axis(x: jax.Array, length: int, axis: int) -> jax.Array:
  """`x` with `axis` cut to its first `length` entries or zero-padded after its last.

  What a :class:`Decoder`'s ``beam_resize`` does to each position axis of
  its beam cache, and beam search to its slot pointers ``[B, width, length]``.
  """
  axis = axis % x.ndim
  if length <= x.shape[axis]:
    return jax.lax.slice_in_dim(x, 0, length, axis=axis)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad)
