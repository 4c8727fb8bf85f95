"""Autoregressive generation with a key/value cache in one ``jax.jit``.

The loop runs inside the compiled function (``lax.while_loop``): the prompt
is prefilled in one call of the decoder, then one token per iteration is
chosen and fed back, until every sequence has ended or ``max_new_tokens``
are out. A different batch of prompts of the same padded shape reuses the
compiled function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import contextlib
import functools
from typing import Any

from flax import linen as nn
from flax import struct
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from kdjax import _checks
from kdjax.generate._decoder import Decoder
from kdjax.generate._decoder import resize_axis
from kdjax.generate._methods import BeamSearch
from kdjax.generate._methods import Greedy
from kdjax.generate._methods import Method
from kdjax.generate._methods import Sampling
from kdjax.generate._methods import warp_logits


@struct.dataclass
class Generation:
  """What :func:`make_generate` returns.

  For greedy decoding and sampling the leading shape is ``[batch]``; for
  beam search it is ``[batch, width]``, hypotheses best first.

  Attributes:
    tokens: int32 ``[..., max_new_tokens]``, the new tokens only (the
      prompt is not repeated); an EOS is kept, everything after it is
      `pad_id`.
    log_probs: float32 ``[..., max_new_tokens]``: each new token's
      log-probability under the model's own distribution (temperature 1,
      no top-k/top-p cut), 0 after the sequence ended. Their sum is the
      sequence's log-probability given the prompt.
    lengths: int32 ``[...]``, the number of new tokens, EOS included.
    scores: beam search only, float32 ``[batch, width]``: the
      length-penalised scores the hypotheses are ranked by; ``None``
      otherwise.
  """

  tokens: jax.Array
  log_probs: jax.Array
  lengths: jax.Array
  scores: jax.Array | None = None


def _argmax(logits: jax.Array) -> jax.Array:
  """``jnp.argmax(logits, axis=-1)`` (the first maximal index) as int32, from
  two plain reductions: XLA's CPU backend runs the single (value, index)
  reduction of ``jnp.argmax`` several times slower on a vocabulary-wide row."""
  peak = jnp.max(logits, axis=-1, keepdims=True)
  vocab = logits.shape[-1]
  index = lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  # A NaN is the maximum for jnp.argmax; here a row with one gives its first NaN.
  hit = (logits == peak) | jnp.isnan(logits)
  return jnp.min(jnp.where(hit, index, vocab), axis=-1)


def _token_log_prob(logits: jax.Array, token: jax.Array) -> jax.Array:
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, token[..., None], axis=-1)[..., 0]


def _prefill(decoder, variables, prompts, prompt_lengths, inputs, cache_length):
  """Runs the prompts once; returns ``(logits of the next token [B, V], cache)``."""
  batch, prompt_len = prompts.shape
  cache = decoder.init_cache(variables, inputs, batch, cache_length)
  positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), prompts.shape)
  logits, cache = decoder.step(variables, prompts, positions, cache)
  last = (prompt_lengths - 1)[:, None, None]
  return jnp.take_along_axis(logits, last, axis=1)[:, 0].astype(jnp.float32), cache


def _sample_loop(decoder, method, max_new_tokens, eos_id, pad_id, variables, prompts,
                 prompt_lengths, rng, inputs):
  """Greedy decoding or sampling: one token per row per iteration."""
  batch, prompt_len = prompts.shape
  logits, cache = _prefill(
      decoder, variables, prompts, prompt_lengths, inputs, prompt_len + max_new_tokens
  )

  def choose(t, logits, tokens, log_probs, lengths, done):
    if isinstance(method, Greedy):
      token = _argmax(logits)
    else:
      token = jax.random.categorical(
          jax.random.fold_in(rng, t), warp_logits(logits, method), axis=-1
      ).astype(jnp.int32)
    log_prob = _token_log_prob(logits, token)
    token = jnp.where(done, pad_id, token)
    tokens = tokens.at[:, t].set(token)
    log_probs = log_probs.at[:, t].set(jnp.where(done, 0.0, log_prob))
    lengths = lengths + (~done).astype(jnp.int32)
    if eos_id is not None:
      done = done | (token == eos_id)
    return token, tokens, log_probs, lengths, done

  def body(carry):
    t, logits, cache, tokens, log_probs, lengths, done = carry
    token, tokens, log_probs, lengths, done = choose(t, logits, tokens, log_probs, lengths, done)
    step_logits, cache = decoder.step(
        variables, token[:, None], (prompt_lengths + t)[:, None], cache
    )
    return t + 1, step_logits[:, 0].astype(jnp.float32), cache, tokens, log_probs, lengths, done

  def cond(carry):
    t, *_, done = carry
    return (t < max_new_tokens - 1) & ~jnp.all(done)

  carry = (
      jnp.int32(0), logits, cache,
      jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
      jnp.zeros((batch, max_new_tokens), jnp.float32),
      jnp.zeros((batch,), jnp.int32),
      jnp.zeros((batch,), bool),
  )
  t, logits, _, tokens, log_probs, lengths, done = lax.while_loop(cond, body, carry)
  # The last token needs no decoder step; rows already done stay as they are.
  _, tokens, log_probs, lengths, _ = choose(t, logits, tokens, log_probs, lengths, done)
  return Generation(tokens=tokens, log_probs=log_probs, lengths=lengths)


def _gather_beams(x: jax.Array, indices: jax.Array) -> jax.Array:
  """``x[b, indices[b, k]]`` for ``x [B, W', ...]`` and ``indices [B, K]``."""
  return jax.vmap(lambda row, idx: row[idx])(x, indices)


def _segments(method: BeamSearch, decoder, lazy: bool, prompt_len: int,
              steps: int) -> list[tuple[int, int]]:
  """``(end, cache length)`` of each segment of beam search's loop.

  The loop's steps ``t = 0 .. steps - 2`` each write position
  ``prompt_lengths + t <= prompt_len + t``, so the steps ``t < end`` need
  ``prompt_len + end`` positions. One segment (the whole cache) unless the
  method asks for more and the decoder can resize its beam cache.
  """
  full = [(steps - 1, prompt_len + steps)]
  if method.cache_segments == 1 or not lazy or decoder.beam_resize is None or steps < 3:
    return full
  count = min(method.cache_segments, steps - 1)
  ends = sorted({-(-(s + 1) * (steps - 1) // count) for s in range(count)})
  return [(end, prompt_len + end) for end in ends]


def _beam_loop(decoder, method: BeamSearch, max_new_tokens, eos_id, pad_id, variables,
               prompts, prompt_lengths, inputs):
  """Beam search over ``[batch, width]`` hypotheses (see :class:`BeamSearch`)."""
  batch, prompt_len = prompts.shape
  width, steps = method.width, max_new_tokens
  logits, cache = _prefill(
      decoder, variables, prompts, prompt_lengths, inputs, prompt_len + max_new_tokens
  )
  vocab = logits.shape[-1]
  cache_length = prompt_len + max_new_tokens
  # The prompt is run once per source. With the decoder's beam step, the
  # beams share its cache entries and each beam's new entries stay in the
  # beam's slot: ``slots[b, w, p]`` names the slot holding beam w's (or its
  # ancestor's) entry at position p, and only these pointers, int32 [batch,
  # width, cache_length], follow the chosen parents. Otherwise the cache is
  # copied per beam and gathered along the parents at every step.
  lazy = decoder.beam_step is not None
  if lazy:
    cache = decoder.beam_cache(cache, width)
    slots = jnp.zeros((batch, width, cache_length), jnp.int32)
  else:
    cache = jax.tree.map(lambda leaf: jnp.repeat(leaf, width, axis=0), cache)
    slots = None
  logits = jnp.repeat(logits, width, axis=0)
  positions = jnp.repeat(prompt_lengths, width)
  num_candidates = min(2 * width, width * vocab)
  per_beam = min(num_candidates, vocab)
  neg_inf = jnp.float32(-jnp.inf)
  bound_divisor = method.penalty(steps)

  def reorder_cache(cache, parents):
    def leaf_fn(leaf):
      rows = leaf.reshape(batch, width, *leaf.shape[1:])
      return _gather_beams(rows, parents).reshape(leaf.shape)
    return jax.tree.map(leaf_fn, cache)

  def choose(t, logits, state):
    (alive_lp, alive_tokens, alive_token_lp, fin_score, fin_tokens, fin_token_lp,
     fin_lengths, done) = state
    # The best `num_candidates` extensions overall are among each beam's own
    # best `per_beam` tokens (a beam adds one constant to all its tokens), so
    # only those get their log-probability (log_softmax's formula, on them
    # alone) and compete, never the [batch, width * vocab] candidate array.
    # Ties keep the order of the flat candidate index parent * vocab + token:
    # parents in order, each parent's tokens by top_k's lowest-id-first.
    beam_logits, beam_token = lax.top_k(logits, per_beam)
    peak = jnp.max(logits, axis=-1, keepdims=True)
    log_norm = jnp.log(jnp.sum(jnp.exp(logits - peak), axis=-1, keepdims=True))
    beam_lp = ((beam_logits - peak) - log_norm).reshape(batch, width * per_beam)
    candidate_lp = alive_lp[:, :, None] + beam_lp.reshape(batch, width, per_beam)
    top_lp, top_index = lax.top_k(candidate_lp.reshape(batch, width * per_beam), num_candidates)
    parent = top_index // per_beam
    token = jnp.take_along_axis(beam_token.reshape(batch, width * per_beam), top_index, axis=1)
    token_lp = jnp.take_along_axis(beam_lp, top_index, axis=1)
    tokens = _gather_beams(alive_tokens, parent).at[:, :, t].set(token)
    token_lps = _gather_beams(alive_token_lp, parent).at[:, :, t].set(token_lp)
    ends = jnp.full(token.shape, False) if eos_id is None else token == eos_id
    ends = ends | (t == steps - 1)
    # Finished: this step's ending candidates join the finished set.
    length = (t + 1).astype(jnp.int32)
    new_score = jnp.where(ends & ~done[:, None], top_lp / method.penalty(length), neg_inf)
    all_score = jnp.concatenate([fin_score, new_score], axis=1)
    fin_score, keep = lax.top_k(all_score, width)
    fin_tokens = _gather_beams(jnp.concatenate([fin_tokens, tokens], axis=1), keep)
    fin_token_lp = _gather_beams(jnp.concatenate([fin_token_lp, token_lps], axis=1), keep)
    fin_lengths = _gather_beams(
        jnp.concatenate([fin_lengths, jnp.full(token.shape, length)], axis=1), keep
    )
    # Alive: the best candidates that did not end.
    alive_lp, keep = lax.top_k(jnp.where(ends, neg_inf, top_lp), width)
    alive_tokens = _gather_beams(tokens, keep)
    alive_token_lp = _gather_beams(token_lps, keep)
    parents = _gather_beams(parent, keep)
    bound = alive_lp[:, 0] / bound_divisor
    finished = fin_score[:, -1] >= bound if method.early_stopping else False
    done = done | finished | (alive_lp[:, 0] == neg_inf)
    state = (alive_lp, alive_tokens, alive_token_lp, fin_score, fin_tokens, fin_token_lp,
             fin_lengths, done)
    return state, parents

  def advance(t, cache, slots, parents, next_tokens):
    """The logits ``[batch * width, vocab]`` after every beam's new token."""
    if lazy:
      here = prompt_lengths + t
      slots = _gather_beams(slots, parents)
      length = slots.shape[-1]  # cache_length, or a segment's
      written = jnp.arange(length, dtype=jnp.int32)[None, None, :] == here[:, None, None]
      slots = jnp.where(written, jnp.arange(width, dtype=jnp.int32)[None, :, None], slots)
      step_logits, cache = decoder.beam_step(variables, next_tokens, here, cache, slots)
      return step_logits.reshape(batch * width, vocab).astype(jnp.float32), cache, slots
    cache = reorder_cache(cache, parents)
    step_logits, cache = decoder.step(
        variables, next_tokens.reshape(batch * width, 1), (positions + t)[:, None], cache)
    return step_logits[:, 0].astype(jnp.float32), cache, slots

  def body(carry):
    t, logits, cache, slots, state = carry
    state, parents = choose(t, logits, state)
    logits, cache, slots = advance(t, cache, slots, parents, state[1][:, :, t])
    return t + 1, logits, cache, slots, state

  def cond(carry):
    t, *_, state = carry
    return (t < steps - 1) & ~jnp.all(state[-1])

  # All beams start as copies of one: only the first is alive, so the first
  # step's candidates are distinct.
  alive_lp = jnp.where(jnp.arange(width) == 0, 0.0, neg_inf)
  state = (
      jnp.broadcast_to(alive_lp, (batch, width)).astype(jnp.float32),
      jnp.full((batch, width, steps), pad_id, jnp.int32),
      jnp.zeros((batch, width, steps), jnp.float32),
      jnp.full((batch, width), neg_inf),
      jnp.full((batch, width, steps), pad_id, jnp.int32),
      jnp.zeros((batch, width, steps), jnp.float32),
      jnp.zeros((batch, width), jnp.int32),
      jnp.zeros((batch,), bool),
  )
  carry = (jnp.int32(0), logits, cache, slots, state)
  for end, length in _segments(method, decoder, lazy, prompt_len, steps):
    # Steps t < end write positions < prompt_len + end = length: the beam
    # cache and its slot pointers are cut (first segment) or zero-padded
    # to that many positions; what lies beyond is never read.
    t, logits, cache, slots, state = carry
    if slots is not None and length != slots.shape[-1]:
      cache = decoder.beam_resize(cache, length)
      slots = resize_axis(slots, length, axis=-1)
    carry = lax.while_loop(
        lambda c, end=end: cond(c) & (c[0] < end), body, (t, logits, cache, slots, state))
  t, logits, _, _, state = carry
  state, _ = choose(t, logits, state)
  _, _, _, fin_score, fin_tokens, fin_token_lp, fin_lengths, _ = state
  return Generation(
      tokens=fin_tokens, log_probs=fin_token_lp, lengths=fin_lengths, scores=fin_score
  )


def _check_id(name: str, value: int | None, vocab_size: int, allow_none: bool) -> None:
  if value is None and allow_none:
    return
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
      or not 0 <= value < vocab_size):
    raise ValueError(
        f'{name} must be a token id in [0, vocab_size={vocab_size}), got {value!r}.'
    )


def _check_prompts(prompts, prompt_lengths, max_new_tokens, max_length,
                   new_text: str | None = None) -> None:
  _checks.check_integer('prompts', prompts)
  shape = tuple(np.shape(prompts))
  if len(shape) != 2 or shape[1] < 1:
    raise ValueError(
        f'prompts must be [batch, prompt_len] with prompt_len >= 1, got shape {shape}.'
    )
  if shape[1] > max_length:
    raise ValueError(
        f'prompts with shape {shape} has prompt_len={shape[1]}, longer than the '
        f"model's max_length={max_length}."
    )
  if shape[1] + max_new_tokens > max_length:
    raise ValueError(
        f'prompts with shape {shape} (prompt_len={shape[1]}) plus '
        f'{new_text or f"max_new_tokens={max_new_tokens}"} needs '
        f'{shape[1] + max_new_tokens} positions, more than the '
        f"model's max_length={max_length}; lower max_new_tokens or crop the prompts."
    )
  _checks.check_integer('prompt_lengths', prompt_lengths)
  if tuple(np.shape(prompt_lengths)) != shape[:1]:
    raise ValueError(
        f'prompt_lengths must have shape {shape[:1]} (one per prompt of prompts with '
        f'shape {shape}), got shape {tuple(np.shape(prompt_lengths))}.'
    )
  if _checks.is_concrete(prompt_lengths):
    lengths = np.asarray(prompt_lengths)
    if lengths.size and (lengths.min() < 1 or lengths.max() > shape[1]):
      raise ValueError(
          f'prompt_lengths must be in [1, prompt_len={shape[1]}], got values in '
          f'[{lengths.min()}, {lengths.max()}].'
      )


def _call_arguments(method, prompts, prompt_lengths, rng, max_new_tokens, max_length,
                    new_text: str | None = None):
  """Checks a generate call's prompts and fills in the default lengths and key.

  Returns:
    ``(prompt_lengths, rng)``: every row's full width by default, and a
    fixed key where the method draws nothing.
  """
  if prompt_lengths is None:
    prompt_lengths = np.full((np.shape(prompts)[0],), np.shape(prompts)[-1], np.int32)
  _check_prompts(prompts, prompt_lengths, max_new_tokens, max_length, new_text)
  if isinstance(method, Sampling) and rng is None:
    raise ValueError('Sampling needs rng, a PRNG key (e.g. jax.random.key(0)).')
  return prompt_lengths, jax.random.key(0) if rng is None else rng


GenerateFn = Callable[..., Generation]


def make_generate(
    decoder: Decoder,
    *,
    max_new_tokens: int,
    method: Method = Greedy(),
    eos_id: int | None = None,
    pad_id: int = 0,
    mesh: Mesh | None = None,
    variables_shardings: Any = None,
    batch_sharding: NamedSharding | None = None,
    logical_axis_rules: Sequence[tuple[str, Any]] | None = None,
) -> GenerateFn:
  """A jitted ``generate(variables, prompts, prompt_lengths=None, *, rng=None, inputs=None)``.

  One compiled function per configuration (decoder, method, sizes): every
  call with prompts of the same padded shape reuses it, whatever the
  prompts and their lengths. Build it once and call it many times.

  Example, beam search with an encoder-decoder (the prompt is the BOS
  token; the source goes in `inputs`)::

    generate = make_generate(
        zoo.seq2seq_decoder(model), max_new_tokens=64,
        method=BeamSearch(width=5, alpha=0.6), eos_id=2, pad_id=0)
    out = generate(variables, jnp.ones((batch, 1), jnp.int32),
                   inputs={'source': source, 'source_mask': source_mask})
    best = out.tokens[:, 0]  # [batch, 64]

  Args:
    decoder: the model, as a :class:`Decoder` (e.g.
      :func:`kdjax.zoo.lm_decoder`).
    max_new_tokens: how many tokens to generate at most, ``>= 1``.
    method: :class:`Greedy`, :class:`Sampling` or :class:`BeamSearch`.
    eos_id: the token that ends a sequence (kept in the output, followed by
      `pad_id`); ``None`` generates exactly `max_new_tokens` per sequence.
    pad_id: the token written after a sequence's end.
    mesh: run on this mesh: the variables laid out by
      `variables_shardings` (e.g. :func:`kdjax.parallel.param_shardings`
      of the teacher's rules, tensor-parallel or FSDP; default replicated),
      the prompts, their lengths and every array of `inputs` by
      `batch_sharding` (default :func:`kdjax.parallel.batch_sharding`,
      the batch over every mesh axis).
    variables_shardings: a pytree of shardings matching the variables.
    batch_sharding: the sharding of the batch axis of the prompts.
    logical_axis_rules: if given (with `mesh`), the decoder is traced
      under ``nn.logical_axis_rules(...)`` and the abstract mesh, so the
      model's ``nn.with_logical_constraint`` calls (on activations and
      cache entries) take effect, as in :func:`kdjax.parallel.jit_train_step`.

  Returns:
    ``generate(variables, prompts, prompt_lengths=None, *, rng=None,
    inputs=None) -> Generation``. `prompts` is int ``[batch, prompt_len]``,
    right-padded; `prompt_lengths` int ``[batch]`` in ``[1, prompt_len]``
    (default: all ``prompt_len``); `rng` a PRNG key, needed by
    :class:`Sampling` (the same key gives the same samples); `inputs` a
    mapping passed to ``decoder.init_cache`` (an encoder-decoder's
    ``'source'`` and ``'source_mask'``), batch on axis 0. The jitted
    function is the returned function's ``jitted`` attribute.

  Raises:
    ValueError: `max_new_tokens <= 0`, a bad id, or (at call) prompts of the
      wrong rank, longer than the decoder's ``max_length`` (with
      `max_new_tokens`), or lengths out of range.
    TypeError: prompts or lengths of a non-integer dtype.
  """
  if not isinstance(decoder, Decoder):
    raise TypeError(f'decoder must be a kdjax.generate.Decoder, got {type(decoder).__name__}.')
  _checks.check_positive_int('max_new_tokens', max_new_tokens)
  if not isinstance(method, (Greedy, Sampling, BeamSearch)):
    raise TypeError(
        f'method must be Greedy(), Sampling(...) or BeamSearch(...), got {method!r}.'
    )
  _check_id('eos_id', eos_id, decoder.vocab_size, allow_none=True)
  _check_id('pad_id', pad_id, decoder.vocab_size, allow_none=False)
  max_new_tokens = int(max_new_tokens)

  def run(variables, prompts, prompt_lengths, rng, inputs):
    prompts = prompts.astype(jnp.int32)
    prompt_lengths = prompt_lengths.astype(jnp.int32)
    with contextlib.ExitStack() as stack:
      if mesh is not None and logical_axis_rules is not None:
        stack.enter_context(jax.sharding.use_abstract_mesh(mesh.abstract_mesh))
        stack.enter_context(nn.logical_axis_rules(list(logical_axis_rules)))
      if isinstance(method, BeamSearch):
        return _beam_loop(decoder, method, max_new_tokens, eos_id, pad_id, variables,
                          prompts, prompt_lengths, inputs)
      return _sample_loop(decoder, method, max_new_tokens, eos_id, pad_id, variables,
                          prompts, prompt_lengths, rng, inputs)

  if mesh is None:
    jitted = jax.jit(run)
  else:
    if batch_sharding is None:
      batch_sharding = NamedSharding(mesh, P(tuple(mesh.axis_names)))
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(
        run,
        in_shardings=(variables_shardings if variables_shardings is not None else replicated,
                      batch_sharding, batch_sharding, replicated, batch_sharding),
    )

  def generate(variables, prompts, prompt_lengths=None, *, rng=None, inputs=None):
    prompt_lengths, rng = _call_arguments(method, prompts, prompt_lengths, rng,
                                          max_new_tokens, decoder.max_length)
    return jitted(variables, prompts, prompt_lengths, rng, dict(inputs or {}))

  generate.jitted = jitted
  return generate


@functools.lru_cache(maxsize=32)
def _cached_generate(decoder, max_new_tokens, method, eos_id, pad_id) -> GenerateFn:
  return make_generate(
      decoder, max_new_tokens=max_new_tokens, method=method, eos_id=eos_id, pad_id=pad_id
  )


def generate(
    decoder: Decoder,
    variables: Any,
    prompts: jax.Array,
    prompt_lengths: jax.Array | None = None,
    *,
    max_new_tokens: int,
    method: Method = Greedy(),
    eos_id: int | None = None,
    pad_id: int = 0,
    rng: jax.Array | None = None,
    inputs: Mapping[str, jax.Array] | None = None,
) -> Generation:
  """Generates from `prompts` on one device: :func:`make_generate`, then a call.

  The compiled function is kept for the last 32 configurations, so calling
  this again with the same `decoder` object and options does not recompile.
  See :func:`make_generate` for the arguments and the result.
  """
  fn = _cached_generate(decoder, max_new_tokens, method, eos_id, pad_id)
  return fn(variables, prompts, prompt_lengths, rng=rng, inputs=inputs)
