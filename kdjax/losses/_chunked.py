"""Chunked large-vocabulary divergences: ``hidden @ unembedding`` and the loss chunk by chunk."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
import numpy as np

from kdjax import _checks
from kdjax.losses import _divergences
from kdjax.losses import _sequence

Array = jax.Array
ArrayLike = Any

# How the computation is laid out. Tokens are flattened to [n] and split in
# chunks of `token_chunk` (the last one padded); `lax.map` / `lax.scan` run
# over the chunks, so at most a [token_chunk, vocab] block of logits of each
# model is live at once. Autodiff through the loop would stack every chunk's
# residuals, i.e. the full [n, vocab] logits; a `jax.custom_vjp` instead
# computes each chunk's gradients in the forward pass, from the same block
# (d_hidden per token, d_unembedding summed with the reduction's weights),
# and the backward pass scales them by the cotangent.
#
# With `vocab_chunk` the vocabulary is split too, and a [token_chunk,
# vocab_chunk] block is the largest. The log-normalisers then come from a
# first pass (an online logsumexp); a second pass sums the divergence, whose
# every term is elementwise in the normalised log-probabilities, and also
# the sum over the vocabulary of d(divergence)/d(log q). The backward pass
# uses the log-softmax chain rule  d/ds_u = (g_u - q_u * sum_v g_v) / T
# with g = d(divergence)/d(log q), one more pass.


def _partial_sum(divergence: str, log_q, log_p, valid, hyper) -> Array:
  """``sum_v f(log p_v, log q_v)`` over a block of the vocabulary, ``[C]``.

  `log_q` (student) and `log_p` (teacher) are normalised tempered
  log-probabilities ``[C, Vc]``; `valid` marks the real vocabulary entries.
  The formula is the registry's, that of the :mod:`kdjax.losses` function
  of the same name, without the ``T²`` factor.
  """
  log_space_fn = _divergences.lookup(divergence).log_space_fn
  return log_space_fn(log_q, valid, log_p, valid, hyper)


def _kept(hidden, keep):
  """`hidden` ``[C, D]`` with zeros on the tokens `keep` ``[C]`` drops."""
  return jnp.where(keep[:, None], hidden, jnp.zeros((), hidden.dtype))


def _tempered_logits(hidden, unembedding, temperature):
  logits = jnp.dot(hidden, unembedding, preferred_element_type=jnp.float32)
  return logits / temperature


# ----------------------------------------------------------------------------
# Whole vocabulary per token chunk.

# The gradient's column blocks: each chunk's `hidden.T @ d_logits` is added
# to the [D, V] accumulator, and `d_logits @ unembedding.T` to d_hidden,
# _COLUMNS vocabulary columns at a time in a loop (the rest in one last
# block), so that neither a second [D, V] array nor the whole [C, V]
# d_logits is ever held, only a [C, _COLUMNS] slice of it.
_COLUMNS = 2048


class _Layout(NamedTuple):
  """The static layout of the whole-vocabulary path.

  `vocab` is the true vocabulary and `width` the unembeddings' columns
  (``width > vocab`` only under a mesh: the padding columns are masked).
  With a `mesh`, the tokens are split over `token_axes` and the
  unembeddings' columns over `vocab_axis` (each may be None), and every
  device runs the chunk loop on its own tokens and columns.
  """

  divergence: str
  vocab: int
  width: int
  token_chunk: int
  mesh: Any = None
  token_axes: tuple[str, ...] | None = None
  vocab_axis: str | None = None


def _vocab_sum(layout, x):
  return x if layout.vocab_axis is None else lax.psum(x, layout.vocab_axis)


def _vocab_max(layout, x):
  return x if layout.vocab_axis is None else lax.pmax(x, layout.vocab_axis)


def _token_sum(layout, x):
  return x if layout.token_axes is None else lax.psum(x, layout.token_axes)


def _over_columns(vocab, fn, carry):
  """``fn(start, size, carry)`` over the vocabulary's column blocks, in a loop."""
  columns = min(_COLUMNS, vocab)
  full = vocab // columns
  carry = lax.fori_loop(0, full, lambda j, c: fn(j * columns, columns, c), carry)
  if full * columns < vocab:
    carry = fn(full * columns, vocab - full * columns, carry)
  return carry


def _chunk_pass(layout, hidden, unembedding, teacher_hidden, teacher_unembedding,
                temperature, hyper, weights=None, d_unembedding=None):
  """One chunk's values ``[C]`` and, with `weights`, its gradients.

  With `weights` ``[C]`` (and the ``[D, V]`` accumulator `d_unembedding`)
  also returns ``d values_i / d hidden_i`` per token ``[C, D]`` and
  `d_unembedding` plus ``sum_i weights_i d values_i / d unembedding``,
  updated in place a block of columns at a time (float32), all from the
  same logits. The logits are tempered by scaling the hidden states
  (``[C, D]``) rather than the ``[C, V]`` logits; the log-softmax's chain
  rule, ``d/ds_u = (g_u - q_u sum_v g_v) / T`` with ``g =
  d(divergence)/d(log q)`` (elementwise), is applied a block of columns at a
  time. Under a vocabulary axis the log-normalisers, the sums over the
  vocabulary and ``d_hidden`` are combined over the devices.
  """
  inverse = 1.0 / temperature
  scaled = hidden * inverse
  logits = jnp.dot(scaled, unembedding, preferred_element_type=jnp.float32)
  teacher = jnp.dot(teacher_hidden * inverse.astype(teacher_hidden.dtype),
                    teacher_unembedding, preferred_element_type=jnp.float32)
  columns = logits.shape[-1]
  offset = 0
  if layout.vocab_axis is not None:
    offset = lax.axis_index(layout.vocab_axis) * columns

  def valid_columns(start, size):
    if layout.width == layout.vocab:
      return jnp.ones((1, size), bool)
    return (offset + start + jnp.arange(size) < layout.vocab)[None, :]

  def log_normalizer(x):
    x = jnp.where(valid_columns(0, columns), x, -jnp.inf)
    peak = _vocab_max(layout, jnp.max(x, axis=-1, keepdims=True))
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    total = _vocab_sum(layout, jnp.sum(jnp.exp(x - peak), axis=-1, keepdims=True))
    return peak + jnp.log(total)

  log_norm_q = log_normalizer(logits)
  log_norm_p = log_normalizer(teacher)

  def terms(start, size):
    """Partial sums, ``g`` and ``q`` on columns ``[start, start + size)``."""
    valid = valid_columns(start, size)
    log_q = jnp.where(
        valid, lax.dynamic_slice_in_dim(logits, start, size, axis=1) - log_norm_q,
        -jnp.inf)
    log_p = jnp.where(
        valid, lax.dynamic_slice_in_dim(teacher, start, size, axis=1) - log_norm_p,
        -jnp.inf)
    partial, vjp = jax.vjp(
        lambda lq: _partial_sum(layout.divergence, lq, log_p, valid, hyper), log_q)
    (g,) = vjp(jnp.ones_like(partial))
    return partial, g, jnp.where(valid, jnp.exp(log_q), 0.0)

  def add_sums(start, size, carry):
    values, g_sum = carry
    partial, g, _ = terms(start, size)
    if weights is None:
      return values + partial, g_sum
    return values + partial, g_sum + jnp.sum(g, axis=-1, keepdims=True)

  zeros = jnp.zeros(hidden.shape[:1], jnp.float32)
  values, g_sum = _over_columns(columns, add_sums, (zeros, zeros[:, None]))
  factor = jnp.square(temperature)
  values = _vocab_sum(layout, values) * factor
  if weights is None:
    return values
  g_sum = _vocab_sum(layout, g_sum)
  weighted = scaled * weights[:, None]

  def add_block(start, size, carry):
    d_hidden, d_unembedding = carry
    _, g, q = terms(start, size)
    # d(T^2 f)/d(tempered logits) on these columns.
    d_logits = factor * (g - q * g_sum)
    w = lax.dynamic_slice_in_dim(unembedding, start, size, axis=1)
    d_hidden = d_hidden + jnp.dot(d_logits, w.T,
                                  preferred_element_type=jnp.float32)
    update = lax.dot_general(weighted, d_logits, (((0,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)
    current = lax.dynamic_slice_in_dim(d_unembedding, start, size, axis=1)
    d_unembedding = lax.dynamic_update_slice_in_dim(
        d_unembedding, current + update, start, axis=1)
    return d_hidden, d_unembedding

  d_hidden, d_unembedding = _over_columns(
      columns, add_block, (jnp.zeros(hidden.shape, jnp.float32), d_unembedding))
  return values, _vocab_sum(layout, d_hidden) * inverse, d_unembedding


def _chunked(layout, *arrays):
  """``[n, ...]`` token arrays as ``[chunks, token_chunk, ...]``, zero-padded."""
  tokens = arrays[0].shape[0]
  chunk = min(layout.token_chunk, tokens)
  chunks = -(-tokens // chunk)
  padding = chunks * chunk - tokens
  return tuple(
      jnp.pad(a, ((0, padding),) + ((0, 0),) * (a.ndim - 1)).reshape(
          (chunks, chunk) + a.shape[1:]) for a in arrays)


def _local_values(layout, hidden, unembedding, teacher_hidden,
                  teacher_unembedding, keep, temperature, hyper):
  """Values ``[n]`` of this device's tokens (no gradient)."""
  tokens = hidden.shape[0]
  chunks = _chunked(layout, hidden, teacher_hidden, keep)

  def one_chunk(chunk):
    h, th, k = chunk
    return _chunk_pass(layout, _kept(h, k), unembedding, _kept(th, k),
                       teacher_unembedding, temperature, hyper)

  return lax.map(one_chunk, chunks).reshape(-1)[:tokens]


def _local_forward(layout, hidden, unembedding, teacher_hidden,
                   teacher_unembedding, keep, weights, temperature, hyper):
  """This device's values ``[n]`` and gradients (see :func:`_chunk_pass`)."""
  tokens = hidden.shape[0]
  unembedding32 = unembedding.astype(jnp.float32)

  def one_chunk(d_unembedding, chunk):
    h, th, k, w = chunk
    values, d_h, d_unembedding = _chunk_pass(
        layout, _kept(h, k).astype(jnp.float32), unembedding32, _kept(th, k),
        teacher_unembedding, temperature, hyper, w, d_unembedding)
    return d_unembedding, (values, d_h)

  d_unembedding, (values, d_hidden) = lax.scan(
      one_chunk, jnp.zeros_like(unembedding32),
      _chunked(layout, hidden, teacher_hidden, keep, weights))
  values = values.reshape(-1)[:tokens]
  d_hidden = d_hidden.reshape(-1, hidden.shape[-1])[:tokens]
  return values, d_hidden, _token_sum(layout, d_unembedding)


def _local_recompute(layout, hidden, unembedding, teacher_hidden,
                     teacher_unembedding, keep, cotangent, temperature, hyper,
                     trips, d_unembedding):
  """`d_unembedding` plus the unembedding's gradient for any `cotangent`.

  Recomputes each chunk's logits; runs `trips` chunks (0 or all of them).
  """
  unembedding32 = unembedding.astype(jnp.float32)
  hidden, teacher_hidden, keep, cotangent = _chunked(
      layout, hidden, teacher_hidden, keep, cotangent)

  def recompute(i, accumulator):
    return _chunk_pass(
        layout, _kept(hidden[i], keep[i]).astype(jnp.float32), unembedding32,
        _kept(teacher_hidden[i], keep[i]), teacher_unembedding, temperature,
        hyper, cotangent[i], accumulator)[2]

  if layout.token_axes is None:
    return lax.fori_loop(0, trips, recompute, d_unembedding)
  local = lax.fori_loop(0, trips, recompute, jnp.zeros_like(d_unembedding))
  return d_unembedding + _token_sum(layout, local)


def _sharded(layout, fn, in_kinds, out_kinds):
  """`fn` per device under `layout.mesh` (kinds: tokens, rows, vocab, scalar)."""
  if layout.mesh is None:
    return functools.partial(fn, layout)
  specs = {'tokens': P(layout.token_axes), 'rows': P(layout.token_axes, None),
           'vocab': P(None, layout.vocab_axis), 'scalar': P()}
  return jax.shard_map(
      functools.partial(fn, layout), mesh=layout.mesh,
      in_specs=tuple(specs[k] for k in in_kinds),
      out_specs=tuple(specs[k] for k in out_kinds) if isinstance(
          out_kinds, tuple) else specs[out_kinds],
      check_vma=False)


_INPUT_KINDS = ('rows', 'vocab', 'rows', 'vocab', 'tokens')


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(layout, hidden, unembedding, teacher_hidden, teacher_unembedding,
           keep, weights, temperature, hyper):
  """Values ``[n]`` of ``[n, D]`` hidden states; gradients fused in the forward pass.

  `keep` ``[n]`` is False on masked tokens, whose hidden states are
  replaced by zeros chunk by chunk (no copy); `weights` ``[n]`` are the
  reduction's token weights (0 on masked tokens, whose cotangent is 0).
  """
  del weights
  return _sharded(layout, _local_values, _INPUT_KINDS + ('scalar', 'scalar'),
                  'tokens')(hidden, unembedding, teacher_hidden,
                            teacher_unembedding, keep, temperature, hyper)


def _fused_fwd(layout, hidden, unembedding, teacher_hidden, teacher_unembedding,
               keep, weights, temperature, hyper):
  """Values and, in the same pass over the chunks, their gradients.

  Each chunk's logits are computed once; from the same block come its
  values, ``d values_i / d hidden_i`` per token (exact for any later
  cotangent: a token's value depends on its own hidden state only) and
  ``sum_i weights_i d values_i / d unembedding`` (exact when the cotangent
  is a multiple of the weights, which is what a masked mean gives; the
  backward pass checks it and recomputes otherwise).
  """
  values, d_hidden, d_unembedding = _sharded(
      layout, _local_forward, _INPUT_KINDS + ('tokens', 'scalar', 'scalar'),
      ('tokens', 'rows', 'vocab'))(
          hidden, unembedding, teacher_hidden, teacher_unembedding, keep,
          weights, temperature, hyper)
  residuals = (hidden, unembedding, teacher_hidden, teacher_unembedding, keep,
               weights, temperature, hyper, d_hidden, d_unembedding)
  return values, residuals


def _fused_bwd(layout, residuals, cotangent):
  (hidden, unembedding, teacher_hidden, teacher_unembedding, keep, weights,
   temperature, hyper, d_hidden, d_unembedding) = residuals
  cotangent = cotangent.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  # A masked mean's cotangent is c * weights: then the gradient summed in the
  # forward pass, times c, is exact. Anything else is recomputed, chunk by
  # chunk. A loop of 0 or `chunks` steps, not a `lax.cond`, chooses: the
  # sum scaled in place then is the output, and no second [D, V] is held.
  scale = jnp.sum(cotangent * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  deviation = jnp.max(jnp.abs(cotangent - scale * weights))
  proportional = deviation <= 1e-6 * jnp.maximum(jnp.max(jnp.abs(cotangent)), 1e-30)
  local_tokens = hidden.shape[0]
  if layout.token_axes is not None:
    local_tokens //= math.prod(layout.mesh.shape[a] for a in layout.token_axes)
  chunks = -(-local_tokens // min(layout.token_chunk, local_tokens))
  d_unembedding = _sharded(
      layout, _local_recompute,
      _INPUT_KINDS + ('tokens', 'scalar', 'scalar', 'scalar', 'vocab'), 'vocab')(
          hidden, unembedding, teacher_hidden, teacher_unembedding, keep,
          cotangent, temperature, hyper, jnp.where(proportional, 0, chunks),
          jnp.where(proportional, scale * d_unembedding, 0.0))
  return (
      (cotangent[:, None] * d_hidden).astype(hidden.dtype),
      d_unembedding.astype(unembedding.dtype),
      jnp.zeros_like(teacher_hidden),
      jnp.zeros_like(teacher_unembedding),
      None,
      None,
      jnp.zeros_like(temperature),
      jnp.zeros_like(hyper),
  )


_fused.defvjp(_fused_fwd, _fused_bwd)


# ----------------------------------------------------------------------------
# Vocabulary in chunks too: online logsumexp.
#
# The unembeddings stay `[D, V']` (V' = V rounded up to `vocab_chunk`; the
# padding columns are masked) and each block is a dynamic slice of their
# columns, so that no transposed `[blocks, D, vocab_chunk]` copy of either
# is made; the backward pass adds each block's gradient into the `[D, V']`
# accumulator in place.


def _column_block(x, j, vocab_chunk):
  return lax.dynamic_slice_in_dim(x, j * vocab_chunk, vocab_chunk, axis=1)


def _block_valid(j, vocab, vocab_chunk):
  return (j * vocab_chunk + jnp.arange(vocab_chunk) < vocab)[None, :]


def _log_normalizer(hidden, unembedding, vocab, vocab_chunk, temperature):
  """``logsumexp(hidden @ unembedding / T)`` over vocabulary chunks, ``[C]``."""

  def step(j, carry):
    running_max, running_sum = carry
    logits = jnp.where(
        _block_valid(j, vocab, vocab_chunk),
        _tempered_logits(hidden, _column_block(unembedding, j, vocab_chunk),
                         temperature), -jnp.inf)
    new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
    running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
        jnp.exp(logits - new_max[:, None]), axis=-1
    )
    return new_max, running_sum

  start = (
      jnp.full(hidden.shape[:1], -jnp.inf, jnp.float32),
      jnp.zeros(hidden.shape[:1], jnp.float32),
  )
  blocks = unembedding.shape[1] // vocab_chunk
  running_max, running_sum = lax.fori_loop(0, blocks, step, start)
  return running_max + jnp.log(running_sum)


def _block_log_probs(h, w, th, tw, temperature, log_norm_q, log_norm_p):
  log_q = _tempered_logits(h, w, temperature) - log_norm_q[:, None]
  log_p = _tempered_logits(th, tw, temperature) - log_norm_p[:, None]
  return log_q, log_p


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _by_tokens_and_vocab(static, hidden, unembedding, teacher_hidden,
                         teacher_unembedding, keep, temperature, hyper):
  """Values ``[chunks, C]``; `static` is ``(divergence, vocab, vocab_chunk)``."""
  return _by_tokens_and_vocab_fwd(
      static, hidden, unembedding, teacher_hidden, teacher_unembedding,
      keep, temperature, hyper,
  )[0]


def _by_tokens_and_vocab_fwd(static, hidden, unembedding, teacher_hidden,
                             teacher_unembedding, keep, temperature, hyper):
  divergence, vocab, vocab_chunk = static
  blocks = unembedding.shape[1] // vocab_chunk

  def one_chunk(chunk):
    h, th, k = chunk
    h, th = _kept(h, k), _kept(th, k)
    log_norm_q = _log_normalizer(h, unembedding, vocab, vocab_chunk, temperature)
    log_norm_p = _log_normalizer(th, teacher_unembedding, vocab, vocab_chunk,
                                 temperature)

    def vocab_step(j, carry):
      value, grad_sum = carry
      v = _block_valid(j, vocab, vocab_chunk)
      log_q, log_p = _block_log_probs(
          h, _column_block(unembedding, j, vocab_chunk), th,
          _column_block(teacher_unembedding, j, vocab_chunk), temperature,
          log_norm_q, log_norm_p)
      partial, vjp = jax.vjp(
          lambda lq: _partial_sum(divergence, lq, log_p, v, hyper), log_q
      )
      (g,) = vjp(jnp.ones_like(partial))
      return value + partial, grad_sum + jnp.sum(g, axis=-1)

    zeros = jnp.zeros(h.shape[:1], jnp.float32)
    value, grad_sum = lax.fori_loop(0, blocks, vocab_step, (zeros, zeros))
    return value * jnp.square(temperature), log_norm_q, log_norm_p, grad_sum

  values, log_norm_q, log_norm_p, grad_sum = lax.map(
      one_chunk, (hidden, teacher_hidden, keep)
  )
  residuals = (hidden, unembedding, teacher_hidden, teacher_unembedding, keep,
               temperature, hyper, log_norm_q, log_norm_p, grad_sum)
  return values, residuals


def _by_tokens_and_vocab_bwd(static, residuals, cotangent):
  divergence, vocab, vocab_chunk = static
  (hidden, unembedding, teacher_hidden, teacher_unembedding, keep,
   temperature, hyper, log_norm_q, log_norm_p, grad_sum) = residuals
  unembedding32 = unembedding.astype(jnp.float32)
  scale = jnp.square(temperature)
  blocks = unembedding.shape[1] // vocab_chunk

  def one_chunk(d_unembedding, chunk):
    h, th, k, ct, lnq, lnp, g_sum = chunk
    h32 = _kept(h, k).astype(jnp.float32)
    th = _kept(th, k)
    # d(T² ct f)/d(log q) summed over the vocabulary, per token.
    weight = ct * scale
    total = weight * g_sum

    def vocab_step(j, carry):
      d_h, d_unembedding = carry
      v = _block_valid(j, vocab, vocab_chunk)
      w = _column_block(unembedding32, j, vocab_chunk)
      log_q, log_p = _block_log_probs(
          h32, w, th, _column_block(teacher_unembedding, j, vocab_chunk),
          temperature, lnq, lnp)
      _, vjp = jax.vjp(
          lambda lq: _partial_sum(divergence, lq, log_p, v, hyper), log_q
      )
      (g,) = vjp(weight)
      q = jnp.where(v, jnp.exp(log_q), 0.0)
      d_logits = (g - q * total[:, None]) / temperature
      d_h = d_h + jnp.dot(d_logits, w.T, preferred_element_type=jnp.float32)
      update = lax.dot_general(h32, d_logits, (((0,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)
      d_unembedding = lax.dynamic_update_slice_in_dim(
          d_unembedding,
          _column_block(d_unembedding, j, vocab_chunk) + update,
          j * vocab_chunk, axis=1)
      return d_h, d_unembedding

    d_h, d_unembedding = lax.fori_loop(
        0, blocks, vocab_step, (jnp.zeros_like(h32), d_unembedding))
    return d_unembedding, d_h.astype(hidden.dtype)

  d_unembedding, d_hidden = lax.scan(
      one_chunk,
      jnp.zeros_like(unembedding32),
      (hidden, teacher_hidden, keep, cotangent, log_norm_q, log_norm_p,
       grad_sum),
  )
  return (
      d_hidden,
      d_unembedding.astype(unembedding.dtype),
      jnp.zeros_like(teacher_hidden),
      jnp.zeros_like(teacher_unembedding),
      None,
      jnp.zeros_like(temperature),
      jnp.zeros_like(hyper),
  )


_by_tokens_and_vocab.defvjp(_by_tokens_and_vocab_fwd, _by_tokens_and_vocab_bwd)


def _padded_columns(unembedding: Array, vocab: int, vocab_chunk: int) -> Array:
  """``[D, V]`` -> ``[D, ceil(V / Vc) * Vc]``, zero-padded (no copy if equal)."""
  width = _vocab_blocks_size(vocab, vocab_chunk)
  if unembedding.shape[1] == width:
    return unembedding
  return jnp.pad(unembedding[:, :vocab], ((0, 0), (0, width - vocab)))



# ----------------------------------------------------------------------------
# Public function.


def _check_unembedding(hidden_name, hidden, unembedding_name, unembedding):
  _checks.check_floating(hidden_name, hidden)
  _checks.check_floating(unembedding_name, unembedding)
  hidden_shape = tuple(jnp.shape(hidden))
  unembedding_shape = tuple(jnp.shape(unembedding))
  if len(hidden_shape) < 2:
    raise ValueError(
        f'{hidden_name} must be [batch, time, hidden] or [tokens, hidden], got '
        f'shape {hidden_shape}.'
    )
  if len(unembedding_shape) != 2 or unembedding_shape[0] != hidden_shape[-1]:
    raise ValueError(
        f'{unembedding_name} must be [hidden, vocab] with hidden = the last '
        f'dimension of {hidden_name}, got {hidden_name}.shape={hidden_shape} and '
        f'{unembedding_name}.shape={unembedding_shape}.'
    )


def _check_chunk(name: str, value: Any, allow_none: bool) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{name} must be a positive int, got {value!r}.')


@functools.partial(
    jax.jit,
    static_argnames=('divergence', 'vocab', 'token_chunk', 'vocab_chunk',
                     'mesh', 'token_axes', 'vocab_axis'),
)
def _chunked_body(student_hidden, student_unembedding, teacher_hidden,
                  teacher_unembedding, mask, reduction_mask, temperature, hyper, *,
                  divergence, vocab, token_chunk, vocab_chunk, mesh=None,
                  token_axes=None, vocab_axis=None):
  token_shape = student_hidden.shape[:-1]
  tokens = math.prod(token_shape)
  hidden = student_hidden.reshape(tokens, student_hidden.shape[-1])
  teacher = lax.stop_gradient(
      teacher_hidden.reshape(tokens, teacher_hidden.shape[-1])
  )
  teacher_unembedding = lax.stop_gradient(teacher_unembedding)
  weights = jnp.ones((tokens,), jnp.float32)
  keep = jnp.ones((tokens,), bool)
  if mask is not None:
    # Masked tokens see zero hidden states, a chunk at a time (no copy of
    # the hidden states): finite, and no gradient.
    keep = mask.reshape(tokens)
    weights = keep.astype(jnp.float32)
  if reduction_mask is not None:
    weights = weights * reduction_mask.reshape(tokens).astype(jnp.float32)

  if vocab_chunk is None or vocab_chunk >= vocab:
    # Sharded columns stay as they are; the padding ones are masked.
    unembedding = student_unembedding
    if vocab_axis is None:
      unembedding = unembedding[:, :vocab]
      teacher_unembedding = teacher_unembedding[:, :vocab]
    layout = _Layout(divergence, vocab, unembedding.shape[-1], token_chunk,
                     mesh, token_axes, vocab_axis)
    values = _fused(layout, hidden, unembedding, teacher, teacher_unembedding,
                    keep, weights, temperature, hyper)
  else:
    chunk = min(token_chunk, tokens)
    chunks = -(-tokens // chunk)
    padding = chunks * chunk - tokens
    hidden = jnp.pad(hidden, ((0, padding), (0, 0)))
    teacher = jnp.pad(teacher, ((0, padding), (0, 0)))
    hidden = hidden.reshape(chunks, chunk, hidden.shape[-1])
    teacher = teacher.reshape(chunks, chunk, teacher.shape[-1])
    keep = jnp.pad(keep, (0, padding)).reshape(chunks, chunk)
    values = _by_tokens_and_vocab(
        (divergence, vocab, vocab_chunk), hidden,
        _padded_columns(student_unembedding, vocab, vocab_chunk), teacher,
        _padded_columns(teacher_unembedding, vocab, vocab_chunk), keep,
        temperature, hyper,
    )
  values = values.reshape(-1)[:tokens].reshape(token_shape)
  if mask is not None:
    values = jnp.where(mask, values, 0.0)
  return values


def _check_mesh(mesh, token_axes, vocab_axis, vocab_chunk, hidden_shape,
                student_unembedding_shape, teacher_unembedding_shape):
  """Normalised `(token_axes, vocab_axis)`; errors name the axes and shapes."""
  if mesh is None:
    if token_axes is not None or vocab_axis is not None:
      raise ValueError(
          f'token_axes={token_axes!r} and vocab_axis={vocab_axis!r} need a mesh; '
          'got mesh=None.')
    return None, None
  if isinstance(token_axes, str):
    token_axes = (token_axes,)
  token_axes = None if not token_axes else tuple(token_axes)
  for name in (token_axes or ()) + ((vocab_axis,) if vocab_axis else ()):
    if name not in mesh.shape:
      raise ValueError(
          f'axis {name!r} is not in the mesh, whose axes are {tuple(mesh.shape)}.')
  if vocab_chunk is not None:
    raise ValueError('vocab_chunk cannot be combined with a mesh; shard the '
                     'vocabulary with vocab_axis instead.')
  if token_axes is not None:
    size = math.prod(mesh.shape[a] for a in token_axes)
    if hidden_shape[0] % size:
      raise ValueError(
          f'student_hidden.shape={hidden_shape}: its leading dimension must be a '
          f'multiple of {size}, the devices on token_axes={token_axes}.')
  if vocab_axis is not None:
    size = mesh.shape[vocab_axis]
    if (student_unembedding_shape[1] != teacher_unembedding_shape[1]
        or student_unembedding_shape[1] % size):
      raise ValueError(
          'with vocab_axis, student_unembedding and teacher_unembedding must have '
          f'the same number of columns, a multiple of {size} (the devices on '
          f'{vocab_axis!r}); got {student_unembedding_shape} and '
          f'{teacher_unembedding_shape}.')
  return token_axes, vocab_axis


def _vocab_blocks_size(vocab: int, vocab_chunk: int) -> int:
  return -(-vocab // vocab_chunk) * vocab_chunk


@_checks.renamed_argument('where', 'token_mask')
def chunked_divergence(
    student_hidden: ArrayLike,
    student_unembedding: ArrayLike,
    teacher_hidden: ArrayLike,
    teacher_unembedding: ArrayLike,
    *,
    divergence: str = 'forward_kl',
    temperature: ArrayLike = 1.0,
    token_mask: ArrayLike | None = None,
    vocab_size: int | None = None,
    beta: ArrayLike | None = None,
    alpha: ArrayLike | None = None,
    token_chunk: int = 128,
    vocab_chunk: int | None = None,
    reduction_mask: ArrayLike | None = None,
    mesh: jax.sharding.Mesh | None = None,
    token_axes: str | tuple[str, ...] | None = None,
    vocab_axis: str | None = None,
) -> Array:
  r"""Per-token divergence of ``hidden @ unembedding`` logits, never materialised.

  Equal to ``token_divergence(student_hidden @ student_unembedding,
  teacher_hidden @ teacher_unembedding, ...)`` (see
  :func:`token_divergence`), with the same divergences, temperature, token
  mask and vocabulary padding, but computed `token_chunk` tokens at a time
  (and, with `vocab_chunk`, a block of the vocabulary at a time with an
  online logsumexp). Neither the forward nor the backward pass ever holds
  the ``[batch, time, vocab]`` logits of either model: the largest
  temporaries are ``[token_chunk, vocab]`` (or ``[token_chunk,
  vocab_chunk]``) blocks.

  Without `vocab_chunk` the gradients are *fused* into the forward pass
  (when it is differentiated): each chunk's logits are computed once, and
  its values and their gradients with respect to the hidden states (per
  token) and the unembedding (summed over the tokens of `reduction_mask`)
  come from the same block. Only the two models' ``[token_chunk, vocab]``
  logits blocks are whole: the gradient is applied a block of vocabulary
  columns at a time, and the unembedding's is accumulated in place. The
  backward pass only scales them by the incoming cotangent (in place), so
  a training step costs what the plain loss costs. That sum is exact when the cotangent is a multiple of `reduction_mask`
  (a masked mean's is); the backward pass checks this and otherwise
  recomputes the unembedding's gradient chunk by chunk (exact for any
  cotangent, at the old cost). With `vocab_chunk` the backward pass
  recomputes each block's logits (three passes over the vocabulary in all).

  The logits are computed with float32 accumulation
  (``preferred_element_type=float32``) whatever the input dtype, and the
  divergence in float32. Gradients flow to `student_hidden` and
  `student_unembedding` (returned in their dtypes); the teacher's inputs
  pass through ``stop_gradient``, as does the temperature.

  Args:
    student_hidden: ``[batch, time, student_dim]`` (or ``[tokens,
      student_dim]``) final hidden states of the student.
    student_unembedding: ``[student_dim, student_vocab]`` output projection.
    teacher_hidden: ``[batch, time, teacher_dim]``, the same leading shape.
    teacher_unembedding: ``[teacher_dim, teacher_vocab]``.
    divergence: ``'forward_kl'``, ``'reverse_kl'``, ``'jsd'``, ``'skew_kl'``,
      ``'skew_reverse_kl'`` or ``'tvd'`` (see :func:`divergence_fn`).
    temperature: positive scalar (may be traced) dividing both logit sets;
      the divergence is multiplied by ``temperature**2``.
    token_mask: optional ``[batch, time]`` mask of the real tokens (or
      ``[batch]``), True for real tokens; masked tokens give 0 and no
      gradient. (Was ``where=``, deprecated.)
    vocab_size: the true vocabulary when the unembeddings carry padding
      columns (e.g. 32,000 of 32,064); the columns past it take no part in
      either softmax. None requires equal vocabularies.
    beta: the JSD's teacher weight in the mixture (``'jsd'`` only; default
      0.5): 0 = forward KL(teacher || student), 1 = reverse KL, as in the
      GKD paper, TRL and Liger; EasyDeL's ``beta`` is ``1 - beta``.
    alpha: the skew (``'skew_kl'``/``'skew_reverse_kl'`` only; default 0.1).
    token_chunk: tokens per chunk; the last chunk is padded.
    vocab_chunk: if set and smaller than the vocabulary, the vocabulary is
      processed in blocks of this many entries (the last one padded).
    reduction_mask: optional ``[batch, time]`` (or ``[batch]``) mask the
      values will be averaged with, e.g. the objective's padding mask when
      `token_mask` is not given. It changes no value and no gradient, only
      which cotangents take the fused path; default `token_mask` (or every
      token).
    mesh: optional :class:`jax.sharding.Mesh`. With it the loss runs under
      ``jax.shard_map``: each device takes the tokens of its `token_axes`
      shard and the unembedding columns of its `vocab_axis` shard, the
      log-normalisers and sums over the vocabulary are combined over
      `vocab_axis` (``pmax``/``psum``), and the unembedding's gradient over
      `token_axes`. No device ever holds more than its own columns.
    token_axes: the mesh axes (a name or a tuple) the leading (batch) axis
      of the hidden states is sharded over; None: not sharded.
    vocab_axis: the mesh axis the unembeddings' columns are sharded over;
      None: not sharded. Both unembeddings must then have the same number
      of columns (pad them; `vocab_size` masks the padding), a multiple of
      the axis' devices. Not with `vocab_chunk`.

  Returns:
    ``[batch, time]`` per-token divergences (float32), 0 where masked.

  Raises:
    ValueError: for an unknown divergence, a hidden size that does not
      match the unembedding, mismatching leading shapes, vocabularies that
      differ other than by padding, or a token mask of the wrong shape (the
      messages name the shapes).

  Examples:
    >>> import jax
    >>> from kdjax import losses
    >>> keys = jax.random.split(jax.random.PRNGKey(0), 4)
    >>> student_hidden = jax.random.normal(keys[0], (2, 6, 8))
    >>> student_unembedding = jax.random.normal(keys[1], (8, 50))
    >>> teacher_hidden = jax.random.normal(keys[2], (2, 6, 16))
    >>> teacher_unembedding = jax.random.normal(keys[3], (16, 64))
    >>> values = losses.chunked_divergence(
    ...     student_hidden, student_unembedding, teacher_hidden,
    ...     teacher_unembedding, vocab_size=50, token_chunk=4)
    >>> print(values.shape)
    (2, 6)

  References:
    The recompute-per-chunk scheme is that of fused linear cross-entropy
    kernels, e.g. Wijmans et al., "Cut Your Losses in Large-Vocabulary
    Language Models", ICLR 2025, https://arxiv.org/abs/2411.09009, and Hsu
    et al., "Liger Kernel: Efficient Triton Kernels for LLM Training", 2024,
    https://arxiv.org/abs/2410.10989. The divergences' papers are cited on
    their :mod:`kdjax.losses` functions.
  """
  kwargs = _divergences.divergence_kwargs(divergence, beta, alpha)
  entry = _divergences.lookup(divergence)
  takes = entry.hyperparameter
  hyper = kwargs.get(takes, 0.0 if takes is None else entry.default)
  if takes is not None:
    _checks.check_in_unit_interval(takes, hyper)
  _check_unembedding('student_hidden', student_hidden, 'student_unembedding',
                     student_unembedding)
  _check_unembedding('teacher_hidden', teacher_hidden, 'teacher_unembedding',
                     teacher_unembedding)
  student_shape = tuple(jnp.shape(student_hidden))
  teacher_shape = tuple(jnp.shape(teacher_hidden))
  if student_shape[:-1] != teacher_shape[:-1]:
    raise ValueError(
        'student_hidden and teacher_hidden must have the same leading (token) '
        f'shape, got student_hidden.shape={student_shape} and '
        f'teacher_hidden.shape={teacher_shape}.'
    )
  vocab = _sequence.check_vocab(
      'student_unembedding', tuple(jnp.shape(student_unembedding)),
      'teacher_unembedding', tuple(jnp.shape(teacher_unembedding)), vocab_size,
  )
  mask = _sequence.aligned_token_mask(
      token_mask, 'student_hidden', student_shape[:-1]
  )
  if jnp.ndim(temperature) != 0:
    raise ValueError(
        f'temperature must be a scalar, got shape {jnp.shape(temperature)}.'
    )
  _checks.check_positive('temperature', temperature)
  if jnp.ndim(hyper) != 0:
    raise ValueError(f'{takes} must be a scalar, got shape {jnp.shape(hyper)}.')
  _check_chunk('token_chunk', token_chunk, allow_none=False)
  _check_chunk('vocab_chunk', vocab_chunk, allow_none=True)
  token_axes, vocab_axis = _check_mesh(
      mesh, token_axes, vocab_axis, vocab_chunk, student_shape,
      tuple(jnp.shape(student_unembedding)), tuple(jnp.shape(teacher_unembedding)))
  reduction = _sequence.aligned_token_mask(
      reduction_mask, 'student_hidden', student_shape[:-1])
  return _chunked_body(
      jnp.asarray(student_hidden),
      jnp.asarray(student_unembedding),
      jnp.asarray(teacher_hidden),
      jnp.asarray(teacher_unembedding),
      mask,
      reduction,
      jnp.asarray(temperature, jnp.float32),
      jnp.asarray(hyper, jnp.float32),
      divergence=divergence,
      vocab=vocab,
      token_chunk=int(token_chunk),
      vocab_chunk=None if vocab_chunk is None else int(vocab_chunk),
      mesh=mesh,
      token_axes=token_axes,
      vocab_axis=vocab_axis,
  )
