"""Speculative decoding: a small draft model proposes, the target model verifies.

Leviathan, Kalman & Matias, "Fast Inference from Transformers via
Speculative Decoding" (ICML 2023), arXiv:2211.17192; Chen et al.,
"Accelerating Large Language Model Decoding with Speculative Sampling"
(2023), arXiv:2302.01318.
"""

from __future__ import annotations

from typing import Any

from flax import struct
import jax
from jax import lax
import jax.numpy as jnp

from kdjax import _checks
from kdjax.generate._decoder import Decoder
from kdjax.generate._generate import _argmax
from kdjax.generate._generate import _call_arguments
from kdjax.generate._generate import _check_id
from kdjax.generate._generate import _prefill
from kdjax.generate._generate import _token_log_prob
from kdjax.generate._methods import Greedy
from kdjax.generate._methods import Sampling
from kdjax.generate._methods import warp_logits


@struct.dataclass
class SpeculativeGeneration:
  """What :func:`make_speculative_generate` returns.

  Attributes:
    tokens: int32 ``[batch, max_new_tokens]``, as :class:`Generation`.
    log_probs: float32 ``[batch, max_new_tokens]``, each token's
      log-probability under the *target* model (temperature 1).
    lengths: int32 ``[batch]``, EOS included.
    accepted: int32 ``[batch]``, draft tokens the target accepted.
    proposed: int32 ``[batch]``, draft tokens proposed (``draft_tokens``
      per round the row took part in).
    rounds: int32 ``[batch]``, target calls per row (each verifies
      ``draft_tokens`` proposals and yields 1 to ``draft_tokens + 1``
      tokens).
  """

  tokens: jax.Array
  log_probs: jax.Array
  lengths: jax.Array
  accepted: jax.Array
  proposed: jax.Array
  rounds: jax.Array


def _probs(logits: jax.Array, method) -> jax.Array:
  if isinstance(method, Greedy):
    return jax.nn.one_hot(_argmax(logits), logits.shape[-1], dtype=jnp.float32)
  return jax.nn.softmax(warp_logits(logits, method), axis=-1)


def make_speculative_generate(
    target: Decoder,
    draft: Decoder,
    *,
    max_new_tokens: int,
    draft_tokens: int = 4,
    method: Greedy | Sampling = Greedy(),
    eos_id: int | None = None,
    pad_id: int = 0,
):
  """Jitted speculative decoding of `target`, with `draft` proposing tokens.

  Each round the draft proposes ``draft_tokens`` tokens one at a time
  (sampled from its distribution ``q``), the target scores them all in one
  call (distributions ``p``), and proposal ``i`` is accepted with
  probability ``min(1, p_i(x_i) / q_i(x_i))``; at the first rejection a
  token is drawn from ``max(0, p_i - q_i)`` renormalised, and if all are
  accepted one more from ``p``. The tokens produced have exactly the
  target's distribution (Leviathan et al. 2023, Theorem 1), whatever the
  draft; a better draft only makes rounds yield more tokens. ``p`` and
  ``q`` are both shaped by `method` (temperature, top-k, top-p), so the
  result is distributed as :func:`make_generate` with that method on the
  target. With :class:`Greedy`, proposals are the draft's argmax and are
  accepted while they equal the target's argmax: the output is the
  target's greedy output, token for token.

  Rows proceed at their own pace: each keeps its own length, and the
  caches are written at per-row positions (a rejected proposal's cache
  entries lie after the row's end and are overwritten before they are
  read, as the :class:`Decoder` contract allows).

  Args:
    target: the model whose distribution is sampled (the teacher).
    draft: the proposing model (the student or any small model with the
      same vocabulary).
    max_new_tokens: tokens to generate at most, ``>= 1``.
    draft_tokens: proposals per round, ``>= 1``.
    method: :class:`Greedy` or :class:`Sampling`.
    eos_id: the end token, or ``None``.
    pad_id: written after the end.

  Returns:
    ``generate(target_variables, draft_variables, prompts,
    prompt_lengths=None, *, rng=None, inputs=None, draft_inputs=None) ->
    SpeculativeGeneration``. Both models need ``prompt_len +
    max_new_tokens + draft_tokens - 1`` positions (the last round may look
    ``draft_tokens`` past the end). `draft_inputs` defaults to `inputs`.
  """
  for name, dec in (('target', target), ('draft', draft)):
    if not isinstance(dec, Decoder):
      raise TypeError(f'{name} must be a kdjax.generate.Decoder, got {type(dec).__name__}.')
  if target.vocab_size != draft.vocab_size:
    raise ValueError(
        f'target and draft must share a vocabulary, got vocab_size={target.vocab_size} '
        f'and {draft.vocab_size}.'
    )
  _checks.check_positive_int('max_new_tokens', max_new_tokens)
  _checks.check_positive_int('draft_tokens', draft_tokens)
  if not isinstance(method, (Greedy, Sampling)):
    raise TypeError(f'method must be Greedy() or Sampling(...), got {method!r}.')
  _check_id('eos_id', eos_id, target.vocab_size, allow_none=True)
  _check_id('pad_id', pad_id, target.vocab_size, allow_none=False)
  steps, gamma = int(max_new_tokens), int(draft_tokens)
  span = gamma + 1

  def run(t_vars, d_vars, prompts, prompt_lengths, rng, inputs, draft_inputs):
    prompts = prompts.astype(jnp.int32)
    lengths0 = prompt_lengths.astype(jnp.int32)
    batch, prompt_len = prompts.shape
    cache_length = prompt_len + steps + gamma - 1
    _, t_cache = _prefill(target, t_vars, prompts, lengths0, inputs, cache_length)
    _, d_cache = _prefill(draft, d_vars, prompts, lengths0, draft_inputs, cache_length)
    pending = jnp.take_along_axis(prompts, (lengths0 - 1)[:, None], axis=1)[:, 0]
    index = jnp.arange(span, dtype=jnp.int32)

    def round_body(carry):
      (r, t_cache, d_cache, length, pending, out, out_lp, made, done, accepted,
       proposed, rounds) = carry
      key_draft, key_accept, key_fix = jax.random.split(jax.random.fold_in(rng, r), 3)

      # The draft feeds the pending token and its own proposals: gamma + 1
      # feeds, so that its cache also holds the last proposal.
      def draft_step(c, i):
        cache, tok = c
        logits, cache = draft.step(d_vars, tok[:, None], (length - 1 + i)[:, None], cache)
        q = _probs(logits[:, 0].astype(jnp.float32), method)
        if isinstance(method, Greedy):
          nxt = _argmax(q)
        else:
          nxt = jax.random.categorical(
              jax.random.fold_in(key_draft, i), jnp.log(q), axis=-1
          ).astype(jnp.int32)
        return (cache, nxt), (q, nxt)

      (d_cache, _), (q, proposals) = lax.scan(
          draft_step, (d_cache, pending), jnp.arange(span, dtype=jnp.int32)
      )
      q = jnp.moveaxis(q, 0, 1)[:, :gamma]  # [B, gamma, V]
      proposals = jnp.moveaxis(proposals, 0, 1)[:, :gamma]  # [B, gamma]

      chunk = jnp.concatenate([pending[:, None], proposals], axis=1)
      t_logits, t_cache = target.step(
          t_vars, chunk, length[:, None] - 1 + index[None, :], t_cache
      )
      t_logits = t_logits.astype(jnp.float32)
      p = _probs(t_logits, method)  # [B, span, V]
      p_x = jnp.take_along_axis(p[:, :gamma], proposals[..., None], axis=-1)[..., 0]
      q_x = jnp.take_along_axis(q, proposals[..., None], axis=-1)[..., 0]
      if isinstance(method, Greedy):
        accept = p_x > 0.5
      else:
        u = jax.random.uniform(key_accept, p_x.shape)
        accept = u * q_x < p_x
      k = jnp.sum(jnp.cumprod(accept.astype(jnp.int32), axis=1), axis=1)  # [B]
      # The token at the first rejection (or after all gamma accepted).
      q_full = jnp.concatenate([q, jnp.zeros_like(q[:, :1])], axis=1)
      p_k = jnp.take_along_axis(p, k[:, None, None], axis=1)[:, 0]
      q_k = jnp.take_along_axis(q_full, k[:, None, None], axis=1)[:, 0]
      residual = jnp.maximum(p_k - q_k, 0.0)
      mass = jnp.sum(residual, axis=-1, keepdims=True)
      residual = jnp.where(mass > 0, residual / jnp.where(mass > 0, mass, 1.0), p_k)
      if isinstance(method, Greedy):
        fix = _argmax(p_k)
      else:
        fix = jax.random.categorical(key_fix, jnp.log(residual), axis=-1).astype(jnp.int32)
      padded = jnp.concatenate([proposals, jnp.zeros_like(proposals[:, :1])], axis=1)
      new = jnp.where(index[None, :] < k[:, None], padded, fix[:, None])
      new_lp = _token_log_prob(t_logits, new)
      count = k + 1
      if eos_id is not None:
        is_eos = (new == eos_id) & (index[None, :] < count[:, None])
        first = jnp.argmax(is_eos, axis=1)
        hit = jnp.any(is_eos, axis=1)
        count = jnp.where(hit, first + 1, count)
      else:
        hit = jnp.zeros_like(done)
      live = ~done
      write = lambda buf, row, at: lax.dynamic_update_slice(buf, row, (at,))
      out = jnp.where(live[:, None], jax.vmap(write)(out, new, made), out)
      out_lp = jnp.where(live[:, None], jax.vmap(write)(out_lp, new_lp, made), out_lp)
      count = jnp.where(live, count, 0)
      made = made + count
      accepted = accepted + jnp.where(live, jnp.minimum(k, count), 0)
      proposed = proposed + jnp.where(live, gamma, 0)
      rounds = rounds + live.astype(jnp.int32)
      done = done | (live & hit) | (made >= steps)
      length = length + count
      pending = jnp.where(live, fix, pending)
      return (r + 1, t_cache, d_cache, length, pending, out, out_lp, made, done, accepted,
              proposed, rounds)

    zeros = jnp.zeros((batch,), jnp.int32)
    carry = (
        jnp.int32(0), t_cache, d_cache, lengths0, pending,
        jnp.full((batch, steps + span), pad_id, jnp.int32),
        jnp.zeros((batch, steps + span), jnp.float32),
        zeros, jnp.zeros((batch,), bool), zeros, zeros, zeros,
    )
    carry = lax.while_loop(lambda c: ~jnp.all(c[8]), round_body, carry)
    out, out_lp, made, accepted, proposed, rounds = (
        carry[5], carry[6], carry[7], carry[9], carry[10], carry[11])
    lengths = jnp.minimum(made, steps)
    valid = jnp.arange(steps)[None, :] < lengths[:, None]
    return SpeculativeGeneration(
        tokens=jnp.where(valid, out[:, :steps], pad_id),
        log_probs=jnp.where(valid, out_lp[:, :steps], 0.0),
        lengths=lengths, accepted=accepted, proposed=proposed, rounds=rounds,
    )

  jitted = jax.jit(run)

  def generate(target_variables: Any, draft_variables: Any, prompts, prompt_lengths=None, *,
               rng=None, inputs=None, draft_inputs=None) -> SpeculativeGeneration:
    prompt_lengths, rng = _call_arguments(
        method, prompts, prompt_lengths, rng, steps + gamma - 1,
        min(target.max_length, draft.max_length),
        new_text=f'max_new_tokens={steps} + draft_tokens={gamma} - 1')
    inputs = dict(inputs or {})
    draft_inputs = inputs if draft_inputs is None else dict(draft_inputs)
    return jitted(target_variables, draft_variables, prompts, prompt_lengths, rng, inputs,
                  draft_inputs)

  generate.jitted = jitted
  return generate
