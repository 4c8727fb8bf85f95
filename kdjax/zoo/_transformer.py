"""A decoder-only Transformer language model with logical axis names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _checks
from kdjax._outputs import Outputs
from kdjax import adapters
from kdjax.generate._decoder import Decoder
from kdjax.generate._decoder import resize_axis

# Every logical axis name the model puts on a parameter or an activation.
# A partitioning rule list (e.g. ``('embed', 'fsdp'), ('mlp', 'tensor')``)
# maps them to mesh axes; a name with no rule is replicated.
TRANSFORMER_LOGICAL_AXES = (
    'batch',  # activations: the batch
    'length',  # activations: the time axis
    'embed',  # the model width (hidden, d_model)
    'vocab',  # the vocabulary
    'heads',  # attention heads
    'kv',  # the per-head width (head_dim)
    'mlp',  # the MLP's inner width
    'position',  # rows of the learned position table (max_len)
)

_POSITIONS = ('rope', 'learned')
_MLPS = ('gelu', 'swiglu')
_NORMS = ('rms', 'layer')


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """The shape and options of a :class:`DecoderLM`.

  A teacher and a student are two configs of the one model.

  Attributes:
    vocab_size: number of token ids.
    num_layers: number of Transformer blocks.
    hidden: the model width (d_model).
    num_heads: attention heads.
    mlp_dim: the MLP's inner width.
    max_len: the longest sequence the model accepts.
    head_dim: the per-head width; ``None`` means ``hidden // num_heads``.
    positions: ``'rope'`` (rotary embeddings on queries and keys, Su et al.,
      2021) or ``'learned'`` (a ``[max_len, hidden]`` table added to the
      token embeddings).
    tied_embeddings: if True the unembedding is the token embedding
      transposed; otherwise a separate ``[hidden, vocab]`` matrix.
    mlp: ``'gelu'`` (two matrices) or ``'swiglu'`` (three; Shazeer, 2020).
    norm: ``'rms'`` (RMSNorm, a scale) or ``'layer'`` (LayerNorm, a scale
      and a bias).
    dropout_rate: dropout on the embeddings and on each residual branch in
      training.
    dtype: the compute dtype (e.g. ``jnp.bfloat16``); logits are float32.
    param_dtype: the parameters' dtype.
    rope_base: the RoPE wavelength base.
  """

  vocab_size: int
  num_layers: int
  hidden: int
  num_heads: int
  mlp_dim: int
  max_len: int
  head_dim: int | None = None
  positions: str = 'rope'
  tied_embeddings: bool = True
  mlp: str = 'gelu'
  norm: str = 'rms'
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  rope_base: float = 10_000.0

  def __post_init__(self):
    for name in ('vocab_size', 'num_layers', 'hidden', 'num_heads', 'mlp_dim', 'max_len'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f'DecoderConfig.{name} must be a positive int, got {value!r}.')
    if self.head_dim is None and self.hidden % self.num_heads:
      raise ValueError(
          f'DecoderConfig.hidden={self.hidden} is not divisible by '
          f'num_heads={self.num_heads}; pass head_dim explicitly.'
      )
    if self.head_dim is not None and self.head_dim <= 0:
      raise ValueError(f'DecoderConfig.head_dim must be positive, got {self.head_dim}.')
    for name, allowed in (('positions', _POSITIONS), ('mlp', _MLPS), ('norm', _NORMS)):
      if getattr(self, name) not in allowed:
        raise ValueError(
            f'DecoderConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.'
        )
    if self.positions == 'rope' and self.kv_dim % 2:
      raise ValueError(
          f"positions='rope' needs an even head_dim, got head_dim={self.kv_dim}."
      )
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'DecoderConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}.')

  @property
  def kv_dim(self) -> int:
    """The per-head width: `head_dim`, or ``hidden // num_heads``."""
    return self.head_dim if self.head_dim is not None else self.hidden // self.num_heads


def param_count(config: DecoderConfig) -> int:
  """The number of parameters of ``DecoderLM(config)``.

  With ``V = vocab_size``, ``D = hidden``, ``A = num_heads * head_dim``,
  ``F = mlp_dim``, ``L = num_layers`` and ``n = D`` (RMSNorm) or ``2 D``
  (LayerNorm), it is::

      V D                              token embedding
    + max_len D                        if positions == 'learned'
    + L (4 D A + m D F + 2 n)          attention (q, k, v, out), MLP, 2 norms
    + n                                final norm
    + D V                              if not tied_embeddings

  where ``m = 2`` for GELU and ``3`` for SwiGLU. No dense layer has a bias.

  Args:
    config: the model's config.

  Returns:
    The count, an int.
  """
  d, v = config.hidden, config.vocab_size
  attn = config.num_heads * config.kv_dim
  norm = d if config.norm == 'rms' else 2 * d
  mlp_mats = 2 if config.mlp == 'gelu' else 3
  count = v * d + norm
  count += config.num_layers * (4 * d * attn + mlp_mats * d * config.mlp_dim + 2 * norm)
  if config.positions == 'learned':
    count += config.max_len * d
  if not config.tied_embeddings:
    count += d * v
  return int(count)


def _param(module: nn.Module, name: str, init, shape: Sequence[int], axes: Sequence[str]):
  """A parameter carrying its logical axis names."""
  return module.param(
      name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
      module.config.param_dtype,
  )


def _contract(x: jax.Array, kernel: jax.Array, n: int = 1, **kwargs) -> jax.Array:
  """``x``'s last `n` axes contracted with ``kernel``'s first `n`, as one 2-D matmul.

  The same numbers as the einsum (``'btd,dv->btv'``, ``'btd,dhk->bthk'``,
  ``'bthk,hkd->btd'``), but with the batch and time axes merged into one row
  axis and the kernel's axes into matrix axes. Autodiff of the 3-D einsum
  contracts the kernel's gradient over two axes (batch and time), which
  XLA's CPU backend feeds to its matmul library through a transposed copy
  of the activations' gradient; merged rows need no copy (the LM benchmark's
  MLP backward: 233 -> 151 ms).
  """
  lead, inner, outer = x.shape[:-n], x.shape[x.ndim - n:], kernel.shape[n:]
  rows = x.reshape(int(np.prod(lead)), int(np.prod(inner)))
  matrix = kernel.reshape(int(np.prod(inner)), int(np.prod(outer)))
  return jnp.matmul(rows, matrix, **kwargs).reshape(*lead, *outer)


def _norm(config: Any, name: str | None) -> nn.Module:
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ('embed',))
  if config.norm == 'rms':
    return nn.RMSNorm(
        epsilon=1e-6, dtype=config.dtype, param_dtype=config.param_dtype,
        scale_init=scale_init, name=name,
    )
  return nn.LayerNorm(
      epsilon=1e-6, dtype=config.dtype, param_dtype=config.param_dtype, scale_init=scale_init,
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)), name=name,
  )


# Logical axes of every cached key and value ``[batch, heads, cache_length, kv]``:
# under ``nn.logical_axis_rules`` a cache shards like the keys and values it holds.
# Heads come before the length so that the attention matmuls read the cache in
# place (batch dimensions leading); ``[batch, length, heads, kv]`` made XLA copy
# and transpose every layer's whole cache at every decoding step.
CACHE_AXES = ('batch', 'heads', 'length', 'kv')


def _rope_inverse_frequencies(x: jax.Array, base: float) -> np.ndarray:
  half = x.shape[-1] // 2
  return base ** (-np.arange(half, dtype=np.float32) / half)


def _rotate_half(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def _rope(x: jax.Array, base: float) -> jax.Array:
  """Rotary position embedding (rotate-half form) of ``[batch, time, heads, kv]``."""
  inv_freq = _rope_inverse_frequencies(x, base)
  angles = np.arange(x.shape[1], dtype=np.float32)[:, None] * inv_freq[None, :]
  cos = jnp.asarray(np.cos(angles))[None, :, None, :]
  sin = jnp.asarray(np.sin(angles))[None, :, None, :]
  return _rotate_half(x, cos, sin)


def _rope_at(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """:func:`_rope` at explicit int ``positions [batch, time]`` (traced)."""
  inv_freq = _rope_inverse_frequencies(x, base)
  angles = positions.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]
  return _rotate_half(x, jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :])


def _causal_mask(time: int) -> np.ndarray:
  """``[1, 1, time, time]``: query ``q`` sees keys ``s <= q``."""
  return np.tril(np.ones((time, time), dtype=bool))[None, None]


def _key_mask(key_mask: jax.Array) -> jax.Array:
  """Bool ``[batch, keys]`` (True on real keys) as ``[batch, 1, 1, keys]``."""
  return key_mask[:, None, None, :]


def _cache_mask(positions: jax.Array, cache_length: int) -> jax.Array:
  """``[batch, 1, time, cache_length]``: the query at position p sees slots <= p."""
  slots = jnp.arange(cache_length, dtype=positions.dtype)
  return (slots[None, None, :] <= positions[:, :, None])[:, None]


def heads_first(x: jax.Array) -> jax.Array:
  """``[batch, time, heads, kv]`` keys or values in the cache's ``[batch, heads, time, kv]``."""
  return jnp.swapaxes(x, 1, 2)


def _write_cache(cache: jax.Array, update: jax.Array, start: jax.Array) -> jax.Array:
  """Writes ``update [batch, time, heads, kv]`` into ``cache [batch, heads, length, kv]``
  at row ``b``'s slots ``start[b] + arange(time)``."""
  written = jax.vmap(lambda c, u, s: jax.lax.dynamic_update_slice(c, u, (0, s, 0)))(
      cache, heads_first(update).astype(cache.dtype), start)
  return nn.with_logical_constraint(written, CACHE_AXES)


# Logical axes of a beam cache's self-attention keys ``[batch, heads, kv,
# width, cache_length]`` and values ``[batch, heads, width, cache_length,
# kv]`` (see :func:`expand_beam_cache`).
BEAM_KEY_AXES = ('batch', 'heads', 'kv', None, 'length')
BEAM_VALUE_AXES = ('batch', 'heads', None, 'length', 'kv')


def _map_beam_self_attention(fn: Callable[[str, jax.Array], jax.Array], cache: Any) -> Any:
  """``fn(name, leaf)`` on every self-attention ``'key'`` / ``'value'`` leaf of `cache`.

  Each result is given the beam cache's logical axes (:data:`BEAM_KEY_AXES`
  or :data:`BEAM_VALUE_AXES`); every other leaf (cross-attention keys and
  values, the source mask) is returned as it is.
  """
  def apply(path, leaf):
    name = getattr(path[-1], 'key', None)
    if name not in ('key', 'value'):
      return leaf
    return nn.with_logical_constraint(fn(name, leaf),
                                      BEAM_KEY_AXES if name == 'key' else BEAM_VALUE_AXES)
  return jax.tree_util.tree_map_with_path(apply, cache)


def expand_beam_cache(cache: Any, width: int) -> Any:
  """A prefilled cache made ready for :meth:`DecoderLM.beam_decode`.

  Every self-attention ``'key'`` leaf ``[batch, heads, length, kv]``
  becomes ``[batch, heads, kv, width, length]`` and every ``'value'`` leaf
  ``[batch, heads, width, length, kv]``: one slot per beam, the prompt's
  entries in slot 0 only (all beams start from the same prompt, so they
  share it: beam search's ``slots`` point every beam's prompt positions at
  slot 0), the other slots zero. Keys are stored transposed so that both
  attention matmuls of a beam step read the cache with its contracted axis
  where the CPU matmul wants it (measured ~2x faster than keys laid out
  like values). Everything else (cross-attention keys and values, the
  source mask) stays once per source, never tiled over the beams.

  Args:
    cache: a cache of :meth:`DecoderLM.init_cache` or
      ``Seq2SeqTransformer.init_cache`` after prefilling the prompts.
    width: the number of beams, ``>= 1``.

  Returns:
    The beam cache.
  """
  def expand(name, leaf):
    zeros = jnp.zeros(leaf.shape[:2] + (width - 1,) + leaf.shape[2:], leaf.dtype)
    expanded = jnp.concatenate([leaf[:, :, None], zeros], axis=2)
    return jnp.moveaxis(expanded, 4, 2) if name == 'key' else expanded
  return _map_beam_self_attention(expand, cache)


def resize_beam_cache(cache: Any, length: int) -> Any:
  """A beam cache (:func:`expand_beam_cache`'s layouts) with `length` positions.

  Every self-attention key and value is cut to its first `length`
  positions or zero-padded after its last; cross-attention keys and values
  and the source mask are unchanged. Beam search calls it between the
  segments of ``BeamSearch(cache_segments=...)``.

  Args:
    cache: a beam cache.
    length: the new number of positions, ``>= 1``.

  Returns:
    The resized beam cache.
  """
  _checks.check_positive_int('length', length)

  def resize(name, leaf):
    axis = -1 if name == 'key' else -2  # [.., w, t] / [.., w, t, kv]
    return resize_axis(leaf, length, axis)
  return _map_beam_self_attention(resize, cache)


def _write_beam_cache(cache: jax.Array, update: jax.Array, positions: jax.Array,
                      keys: bool) -> jax.Array:
  """Writes ``update [batch, width, heads, kv]`` (beam ``w``'s new key or value)
  into slot ``w`` of a beam cache (:func:`expand_beam_cache`'s layouts) at row
  ``b``'s position ``positions[b]``."""
  if keys:
    update = jnp.transpose(update, (0, 2, 3, 1))[..., None].astype(cache.dtype)
    start = lambda p: (0, 0, 0, p)
  else:
    update = jnp.transpose(update, (0, 2, 1, 3))[:, :, :, None].astype(cache.dtype)
    start = lambda p: (0, 0, p, 0)
  written = jax.vmap(lambda c, u, p: jax.lax.dynamic_update_slice(c, u, start(p)))(
      cache, update, positions)
  return nn.with_logical_constraint(written, BEAM_KEY_AXES if keys else BEAM_VALUE_AXES)


def beam_cache_mask(slots: jax.Array, positions: jax.Array) -> jax.Array:
  """Which beam-cache entries each beam's new token attends to.

  Args:
    slots: int ``[batch, width, length]``: ``slots[b, w, p]`` is the slot of
      the beam cache holding the key and value of beam ``w``'s token at
      position ``p`` (its own or an ancestor's).
    positions: int ``[batch]``, the position of row ``b``'s new tokens.

  Returns:
    bool ``[batch, 1, width, width * length]``: for query beam ``w``, entry
    ``v * length + p`` (slot ``v``, position ``p``) is seen iff
    ``slots[b, w, p] == v`` and ``p <= positions[b]``.
  """
  slots, positions = jnp.asarray(slots, jnp.int32), jnp.asarray(positions, jnp.int32)
  batch, width, length = slots.shape
  owned = slots[:, :, None, :] == jnp.arange(width, dtype=slots.dtype)[None, None, :, None]
  seen = jnp.arange(length, dtype=positions.dtype)[None, :] <= positions[:, None]
  mask = owned & seen[:, None, None, :]
  return mask.reshape(batch, width, width * length)[:, None]


def _empty_cache(config: Any, batch_size: int, cache_length: int) -> dict[str, jax.Array]:
  """Zero ``{'key', 'value'}`` of ``[batch_size, heads, cache_length, kv]``."""
  shape = (batch_size, config.num_heads, cache_length, config.kv_dim)
  return {
      name: nn.with_logical_constraint(jnp.zeros(shape, config.dtype), CACHE_AXES)
      for name in ('key', 'value')
  }


def _cross_attention_cache(config: Any, blocks: Any, encoded: jax.Array, cache_length: int,
                           source_mask: Any) -> dict[str, Any]:
  """An encoder-decoder's decoding cache: per decoder block, empty self-attention
  keys and values of `cache_length` and the cross-attention keys and values of
  `encoded`, computed once per source (``[batch, heads, source, kv]``)."""
  cache = {'source_mask': source_mask}
  for i, block in enumerate(blocks):
    keys, values = block.cross_keys_values(encoded)
    cache[f'layer_{i}'] = {
        **_empty_cache(config, encoded.shape[0], cache_length),
        'cross_key': nn.with_logical_constraint(
            heads_first(keys).astype(config.dtype), CACHE_AXES),
        'cross_value': nn.with_logical_constraint(
            heads_first(values).astype(config.dtype), CACHE_AXES),
    }
  return cache


def _check_cache_length(cache_length: int, max_length: int, max_name: str) -> None:
  if not isinstance(cache_length, (int, np.integer)) or not 0 < cache_length <= max_length:
    raise ValueError(
        f'cache_length must be an int in [1, {max_name}={max_length}], got {cache_length!r}.'
    )


def _check_decode_inputs(
    tokens: jax.Array, positions: jax.Array, vocab_size: int, cache_length: int,
    cache_batch: int,
) -> None:
  """Clear errors for a decode step's `tokens` and `positions` ``[batch, time]``."""
  _checks.check_integer('tokens', tokens)
  _checks.check_integer('positions', positions)
  shape = tuple(jnp.shape(tokens))
  if len(shape) != 2:
    raise ValueError(f'tokens must be [batch, time], got tokens with shape {shape}.')
  _checks.check_same_shape('tokens', tokens, 'positions', positions)
  if shape[0] != cache_batch or shape[1] > cache_length:
    raise ValueError(
        f'tokens with shape {shape} do not fit a cache of batch {cache_batch} and '
        f'cache_length {cache_length} (their batch must equal it, their time at most it).'
    )
  _checks.check_index_range('tokens', tokens, vocab_size, 'vocab_size')
  if _checks.is_concrete(positions):
    arr = np.asarray(positions)
    expected = arr[:, :1] + np.arange(shape[1])
    if np.any(arr != expected) or np.any(arr[:, 0] < 0) or np.any(expected[:, -1] >= cache_length):
      raise ValueError(
          f'positions must be consecutive in each row (positions[b, 0] + arange(time)) '
          f'and within [0, cache_length={cache_length}), got positions with shape '
          f'{arr.shape}: {arr.tolist()}.'
      )


class _Attention(nn.Module):
  """Multi-head attention: self-attention over ``x``, or its pieces for
  cross-attention and cached decoding.

  Queries, keys and values are projected in ``config.dtype``; scores and the
  softmax are float32. RoPE (``config.positions == 'rope'``) applies to
  self-attention only, never to cross-attention.
  """

  config: Any

  def setup(self):
    cfg = self.config
    d, h, k = cfg.hidden, cfg.num_heads, cfg.kv_dim
    in_init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    self.query, self.key, self.value = (
        _param(self, name, in_init, (d, h, k), ('embed', 'heads', 'kv'))
        for name in ('query', 'key', 'value')
    )
    out_init = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    self.out = _param(self, 'out', out_init, (h, k, d), ('heads', 'kv', 'embed'))

  def _heads(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    heads = _contract(x, kernel.astype(self.config.dtype))
    return nn.with_logical_constraint(heads, ('batch', 'length', 'heads', 'kv'))

  def queries(self, x: jax.Array) -> jax.Array:
    """``[batch, time, hidden]`` -> queries ``[batch, time, heads, kv]``."""
    return self._heads(x, self.query)

  def keys_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``[batch, time, hidden]`` -> keys and values ``[batch, time, heads, kv]``."""
    return self._heads(x, self.key), self._heads(x, self.value)

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: Any, *,
             cached: bool = False) -> jax.Array:
    """Attention of ``q [b, t, h, k]`` over ``k, v [b, s, h, k]`` (``[b, h, s, k]``,
    the cache's layout, when `cached`) where ``mask`` (bool, broadcasting to
    ``[b, h, t, s]``) holds, projected out."""
    return self.attend_with_weights(q, k, v, mask, cached=cached)[0]

  def attend_with_weights(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: Any, *,
                          cached: bool = False) -> tuple[jax.Array, jax.Array]:
    """As :meth:`attend`, and the float32 weights ``[batch, heads, queries, keys]``
    (FastSpeech 2's teacher reads its alignment from them)."""
    cfg = self.config
    kv = 'bhsk' if cached else 'bshk'
    scores = jnp.einsum(f'bqhk,{kv}->bhqs', q, k, preferred_element_type=jnp.float32)
    scores = scores / np.sqrt(cfg.kv_dim).astype(np.float32)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    mixed = jnp.einsum(f'bhqs,{kv}->bqhk', probs.astype(cfg.dtype), v)
    mixed = nn.with_logical_constraint(mixed, ('batch', 'length', 'heads', 'kv'))
    return _contract(mixed, self.out.astype(cfg.dtype), 2), probs

  def __call__(self, x: jax.Array, mask: Any) -> jax.Array:
    """Self-attention over the whole of ``x [batch, time, hidden]``."""
    q, (k, v) = self.queries(x), self.keys_values(x)
    if self.config.positions == 'rope':
      q, k = _rope(q, self.config.rope_base), _rope(k, self.config.rope_base)
    return self.attend(q, k, v, mask)

  def decode(
      self, x: jax.Array, positions: jax.Array, cache: dict[str, jax.Array]
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Causal self-attention of new tokens at ``positions`` over a key/value cache."""
    q, (k, v) = self.queries(x), self.keys_values(x)
    if self.config.positions == 'rope':
      base = self.config.rope_base
      q, k = _rope_at(q, positions, base), _rope_at(k, positions, base)
    keys = _write_cache(cache['key'], k, positions[:, 0])
    values = _write_cache(cache['value'], v, positions[:, 0])
    mask = _cache_mask(positions, keys.shape[2])
    return self.attend(q, keys, values, mask, cached=True), {'key': keys, 'value': values}


  def beam_decode(
      self, x: jax.Array, positions: jax.Array, cache: dict[str, jax.Array], mask: jax.Array
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Self-attention of one new token per beam over a beam cache.

    Args:
      x: ``[batch, width, hidden]``, beam ``w``'s new token of row ``b``.
      positions: int ``[batch]``, the position of row ``b``'s new tokens.
      cache: ``{'key', 'value'}`` in :func:`expand_beam_cache`'s layouts;
        beam ``w``'s key and value are written into slot ``w`` at
        ``positions[b]``.
      mask: :func:`beam_cache_mask` of the beams' slots.

    Returns:
      ``(attended [batch, width, hidden], {'key', 'value'})``.
    """
    q, (k, v) = self.queries(x), self.keys_values(x)
    if self.config.positions == 'rope':
      base = self.config.rope_base
      beam_positions = jnp.broadcast_to(positions[:, None], x.shape[:2])
      q, k = _rope_at(q, beam_positions, base), _rope_at(k, beam_positions, base)
    keys = _write_beam_cache(cache['key'], k, positions, keys=True)
    values = _write_beam_cache(cache['value'], v, positions, keys=False)
    # Slots and positions flattened into one key axis (a free reshape): the
    # beams are the query axis, so each row is one batched matmul over its
    # whole cache, with no gather of the cache along the beams' ancestry.
    cfg = self.config
    b, h, w, t, kv = values.shape
    scores = jnp.einsum('bqhk,bhks->bhqs', q, keys.reshape(b, h, kv, w * t),
                        preferred_element_type=jnp.float32)
    scores = scores / np.sqrt(cfg.kv_dim).astype(np.float32)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
    # Heads before beams in the output: with ``bqhk`` XLA swaps the operands
    # into a transposed matmul that its CPU backend runs ~5x slower.
    mixed = jnp.einsum('bhqs,bhsk->bhqk', probs, values.reshape(b, h, w * t, kv))
    mixed = nn.with_logical_constraint(mixed, ('batch', 'heads', 'length', 'kv'))
    attended = jnp.einsum('bhtk,hkd->btd', mixed, self.out.astype(cfg.dtype))
    return attended, {'key': keys, 'value': values}


class _Mlp(nn.Module):
  """GELU, ReLU or SwiGLU feed-forward block."""

  config: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    init = nn.initializers.lecun_normal()
    shape_in, axes_in = (cfg.hidden, cfg.mlp_dim), ('embed', 'mlp')

    def project(name, inputs, shape, axes):
      return _contract(inputs, _param(self, name, init, shape, axes).astype(cfg.dtype))

    if cfg.mlp == 'swiglu':
      gate = project('wi_gate', x, shape_in, axes_in)
      inner = nn.silu(gate) * project('wi_up', x, shape_in, axes_in)
    else:
      activation = nn.gelu if cfg.mlp == 'gelu' else nn.relu
      inner = activation(project('wi', x, shape_in, axes_in))
    inner = nn.with_logical_constraint(inner, ('batch', 'length', 'mlp'))
    return project('wo', inner, (cfg.mlp_dim, cfg.hidden), ('mlp', 'embed'))


class _Block(nn.Module):
  """Pre-norm block: ``x + attn(norm(x))``, [``x + cross(norm(x), memory)``],
  then ``x + mlp(norm(x))``.

  The decoder-only model's block, the encoder's (a padding mask instead of
  the causal one) and, with ``cross=True``, the encoder-decoder's decoder
  block, whose cross-attention reads the encoder output ``memory``.
  """

  config: Any
  cross: bool = False

  def setup(self):
    cfg = self.config
    self.attention_norm = _norm(cfg, None)
    self.attention = _Attention(cfg)
    if self.cross:
      self.cross_attention_norm = _norm(cfg, None)
      self.cross_attention = _Attention(cfg)
    self.mlp_norm = _norm(cfg, None)
    self.mlp = _Mlp(cfg)
    # Named as the compact block named it, so dropout draws the same masks.
    self.Dropout_0 = nn.Dropout(cfg.dropout_rate)  # pylint: disable=invalid-name

  def _residual(self, x: jax.Array, branch: jax.Array, train: bool) -> jax.Array:
    x = x + self.Dropout_0(branch, deterministic=not train)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

  def _cross(self, x, keys, values, memory_mask, train, cached=False):
    q = self.cross_attention.queries(self.cross_attention_norm(x))
    attended = self.cross_attention.attend(q, keys, values, memory_mask, cached=cached)
    return self._residual(x, attended, train)

  def cross_keys_values(self, memory: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The cross-attention keys and values of ``memory [batch, source, hidden]``."""
    return self.cross_attention.keys_values(memory)

  def __call__(
      self, x: jax.Array, train: bool, *, mask: Any = None,
      memory: jax.Array | None = None, memory_mask: Any = None,
  ) -> jax.Array:
    """The whole sequence at once; ``mask=None`` is causal."""
    mask = _causal_mask(x.shape[1]) if mask is None else mask
    x = self._residual(x, self.attention(self.attention_norm(x), mask), train)
    if self.cross:
      x = self._cross(x, *self.cross_keys_values(memory), memory_mask, train)
    return self._residual(x, self.mlp(self.mlp_norm(x)), train)

  def decode(
      self, x: jax.Array, positions: jax.Array, cache: dict[str, jax.Array],
      memory_mask: Any = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """New tokens at ``positions`` against the layer's cache (no dropout)."""
    attended, self_cache = self.attention.decode(self.attention_norm(x), positions, cache)
    return self._after_cached_attention(x, attended, cache, self_cache, memory_mask)

  def _after_cached_attention(self, x, attended, cache, self_cache, memory_mask):
    """The rest of a cached step: residual, cross-attention on the cached
    source keys and values, MLP; the cache with the new self-attention entries."""
    x = self._residual(x, attended, False)
    new_cache = dict(cache, **self_cache)
    if self.cross:
      x = self._cross(x, cache['cross_key'], cache['cross_value'], memory_mask, False,
                      cached=True)
    return self._residual(x, self.mlp(self.mlp_norm(x)), False), new_cache

  def beam_decode(
      self, x: jax.Array, positions: jax.Array, cache: dict[str, jax.Array],
      mask: jax.Array, memory_mask: Any = None,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One new token per beam, ``x [batch, width, hidden]``, against a beam
    cache (see :meth:`_Attention.beam_decode`); the cross-attention reads the
    per-source keys and values with the beams as its query axis."""
    attended, self_cache = self.attention.beam_decode(
        self.attention_norm(x), positions, cache, mask)
    return self._after_cached_attention(x, attended, cache, self_cache, memory_mask)


def _check_beam_inputs(tokens: jax.Array, positions: jax.Array, slots: jax.Array,
                       key_cache: jax.Array, vocab_size: int) -> None:
  """Clear errors for a beam step's `tokens [batch, width]`, `positions [batch]`
  and `slots [batch, width, length]` against a beam cache's ``[batch, heads, kv,
  width, length]`` keys."""
  _checks.check_integer('tokens', tokens)
  _checks.check_integer('positions', positions)
  _checks.check_integer('slots', slots)
  if jnp.ndim(key_cache) != 5:
    raise ValueError(
        f'the cache must be a beam cache (expand_beam_cache) with [batch, heads, kv, '
        f'width, length] keys, got keys with shape {tuple(jnp.shape(key_cache))}.'
    )
  batch, _, _, width, length = key_cache.shape
  want = {'tokens': (batch, width), 'positions': (batch,), 'slots': (batch, width, length)}
  for name, arr in (('tokens', tokens), ('positions', positions), ('slots', slots)):
    if tuple(jnp.shape(arr)) != want[name]:
      raise ValueError(
          f'{name} must have shape {want[name]} for a beam cache of batch {batch}, width '
          f'{width} and length {length}, got shape {tuple(jnp.shape(arr))}.'
      )
  _checks.check_index_range('tokens', tokens, vocab_size, 'vocab_size')


def _unembed(hidden: jax.Array, unembedding: jax.Array, dtype: Any) -> jax.Array:
  logits = _contract(hidden, unembedding.astype(dtype), preferred_element_type=jnp.float32)
  return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


class DecoderLM(nn.Module):
  """A decoder-only (GPT-style) Transformer language model.

  Pre-norm blocks of causal multi-head self-attention and a GELU or SwiGLU
  MLP, a final norm, and an unembedding tied to the token embedding or not.
  Computation runs in ``config.dtype`` (attention softmax in float32);
  ``__call__`` returns float32 logits.

  Intermediates sown in the ``'intermediates'`` collection (so that
  :func:`kdjax.adapters.from_linen` exposes them by name): ``'layer_<i>'``,
  block ``i``'s output ``[batch, time, hidden]``, and ``'hidden'``, the final
  normed hidden state ``[batch, time, hidden]``.

  Parameters carry logical axis names (``TRANSFORMER_LOGICAL_AXES``)
  through ``nn.with_logical_partitioning``, so ``model.init`` returns
  ``nn.LogicallyPartitioned`` boxes: ``nn.get_partition_spec(variables)``
  gives the logical specs and ``nn.meta.unbox(variables)`` the plain arrays
  (``apply`` accepts either). The names are ``embedding`` ``('vocab',
  'embed')``, ``position_embedding`` ``('position', 'embed')``,
  ``unembedding`` ``('embed', 'vocab')``, attention ``query``/``key``/
  ``value`` ``('embed', 'heads', 'kv')`` and ``out`` ``('heads', 'kv',
  'embed')``, MLP ``wi``/``wi_gate``/``wi_up`` ``('embed', 'mlp')`` and
  ``wo`` ``('mlp', 'embed')``, norm scales and biases ``('embed',)``.
  Activations are constrained with ``nn.with_logical_constraint`` to
  ``('batch', 'length', 'embed')`` (residual stream), ``('batch',
  'length', 'heads', 'kv')`` (queries, keys, values), ``('batch', 'length',
  'mlp')`` and ``('batch', 'length', 'vocab')`` (logits); these are no-ops
  unless logical axis rules are set (``nn.logical_axis_rules``).

  Example, a character-level teacher and a student with about a quarter of
  its parameters (``param_count`` 410,240 and 106,816)::

    student = DecoderLM(DecoderConfig(
        vocab_size=128, num_layers=2, hidden=64, num_heads=4, mlp_dim=256,
        max_len=128))
    teacher = DecoderLM(DecoderConfig(
        vocab_size=128, num_layers=2, hidden=128, num_heads=4, mlp_dim=512,
        max_len=128))

  Attributes:
    config: the :class:`DecoderConfig`.

  References:
    Radford et al., "Language Models are Unsupervised Multitask Learners"
    (GPT-2, 2019); Vaswani et al., "Attention Is All You Need" (2017);
    Su et al., "RoFormer: Enhanced Transformer with Rotary Position
    Embedding" (2021), arXiv:2104.09864; Zhang & Sennrich, "Root Mean
    Square Layer Normalization" (2019); Shazeer, "GLU Variants Improve
    Transformer" (2020), arXiv:2002.05202.
  """

  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.embedding = _param(
        self, 'embedding', nn.initializers.normal(cfg.hidden**-0.5),
        (cfg.vocab_size, cfg.hidden), ('vocab', 'embed'),
    )
    if cfg.positions == 'learned':
      self.position_embedding = _param(
          self, 'position_embedding', nn.initializers.normal(0.02),
          (cfg.max_len, cfg.hidden), ('position', 'embed'),
      )
    if not cfg.tied_embeddings:
      self.unembedding = _param(
          self, 'unembedding', nn.initializers.lecun_normal(),
          (cfg.hidden, cfg.vocab_size), ('embed', 'vocab'),
      )
    self.blocks = [_Block(cfg) for _ in range(cfg.num_layers)]
    self.final_norm = _norm(cfg, None)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _check_tokens(self, tokens: jax.Array) -> None:
    cfg = self.config
    _checks.check_integer('tokens', tokens)
    shape = tuple(jnp.shape(tokens))
    if len(shape) != 2:
      raise ValueError(f'tokens must be [batch, time], got tokens with shape {shape}.')
    if shape[1] > cfg.max_len:
      raise ValueError(
          f'tokens with shape {shape} has {shape[1]} time steps, more than '
          f'max_len={cfg.max_len}; crop the sequence or build the model with '
          'a larger max_len.'
      )
    _checks.check_index_range('tokens', tokens, cfg.vocab_size, 'vocab_size')

  def hidden_and_unembedding(
      self, tokens: jax.Array, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    """Runs the model up to the final norm, without the logits.

    Args:
      tokens: int ``[batch, time]`` token ids, ``time <= max_len``.
      train: enables dropout (then a ``'dropout'`` RNG is needed).

    Returns:
      ``(hidden, unembedding)``: the final normed hidden state ``[batch,
      time, hidden]`` in ``config.dtype`` and the unembedding matrix
      ``[hidden, vocab]`` in ``config.param_dtype`` (the token embedding
      transposed when tied), so that ``hidden @ unembedding`` (accumulated
      in float32) is the logits.
    """
    cfg = self.config
    self._check_tokens(tokens)
    x = jnp.take(self.embedding, tokens, axis=0).astype(cfg.dtype)
    if cfg.positions == 'learned':
      x = x + self.position_embedding[None, : tokens.shape[1]].astype(cfg.dtype)
    x = self.dropout(x, deterministic=not train)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    for i, block in enumerate(self.blocks):
      x = block(x, train)
      self.sow('intermediates', f'layer_{i}', x)
    hidden = self.final_norm(x)
    hidden = nn.with_logical_constraint(hidden, ('batch', 'length', 'embed'))
    self.sow('intermediates', 'hidden', hidden)
    unembedding = self.embedding.T if cfg.tied_embeddings else self.unembedding
    return hidden, unembedding

  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    """Maps int ``tokens [batch, time]`` to float32 logits ``[batch, time, vocab]``."""
    hidden, unembedding = self.hidden_and_unembedding(tokens, train)
    return _unembed(hidden, unembedding, self.config.dtype)

  def init_cache(self, batch_size: int, cache_length: int) -> dict[str, Any]:
    """An empty key/value cache for :meth:`decode` (needs no variables).

    Args:
      batch_size: the number of sequences.
      cache_length: the most positions a sequence may reach, ``<= max_len``.

    Returns:
      ``{'layer_<i>': {'key': k, 'value': v}}``, each ``[batch_size, heads,
      cache_length, kv]`` zeros in ``config.dtype``, constrained to the
      logical axes ``('batch', 'heads', 'length', 'kv')``.
    """
    _check_cache_length(cache_length, self.config.max_len, 'max_len')
    return {
        f'layer_{i}': _empty_cache(self.config, batch_size, cache_length)
        for i in range(self.config.num_layers)
    }

  def decode(
      self, tokens: jax.Array, positions: jax.Array, cache: dict[str, Any]
  ) -> tuple[jax.Array, dict[str, Any]]:
    """Runs new tokens against a key/value cache (inference: no dropout).

    Writes the new tokens' keys and values into `cache` at their positions
    and lets the token at position ``p`` attend to slots ``<= p`` of its
    row, so the logits equal those of ``__call__`` on the whole sequence
    whenever slots ``< p`` hold that sequence's earlier tokens.

    Args:
      tokens: int ``[batch, time]`` token ids.
      positions: int ``[batch, time]``, consecutive in each row
        (``positions[b, 0] + arange(time)``), ``positions[b, -1] <
        cache_length``; rows may start at different positions. (Checked
        when concrete; under ``jit`` a row running past the cache would be
        written at the clamped slots ``cache_length - time ...``.)
      cache: from :meth:`init_cache` or a previous :meth:`decode`.

    Returns:
      ``(logits, cache)``: float32 ``[batch, time, vocab]`` and the cache
      with the new keys and values written.
    """
    cfg = self.config
    layer = cache['layer_0']['key']
    _check_decode_inputs(tokens, positions, cfg.vocab_size, layer.shape[2], layer.shape[0])
    x = jnp.take(self.embedding, tokens, axis=0).astype(cfg.dtype)
    if cfg.positions == 'learned':
      x = x + jnp.take(self.position_embedding, positions, axis=0).astype(cfg.dtype)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    new_cache = {}
    for i, block in enumerate(self.blocks):
      x, new_cache[f'layer_{i}'] = block.decode(x, positions, cache[f'layer_{i}'])
    hidden = nn.with_logical_constraint(self.final_norm(x), ('batch', 'length', 'embed'))
    unembedding = self.embedding.T if cfg.tied_embeddings else self.unembedding
    return _unembed(hidden, unembedding, cfg.dtype), new_cache

  def beam_decode(
      self, tokens: jax.Array, positions: jax.Array, cache: dict[str, Any],
      slots: jax.Array,
  ) -> tuple[jax.Array, dict[str, Any]]:
    """One new token per beam against a beam cache (inference: no dropout).

    Beam search's step without reordering the cache: beam ``w`` writes its
    new key and value into slot ``w`` of the cache at ``positions[b]`` and
    attends to the entries ``slots`` names as its own and its ancestors'
    (:func:`beam_cache_mask`), so the logits equal :meth:`decode`'s on a
    cache physically reordered along the beams' ancestry.

    Args:
      tokens: int ``[batch, width]``, one new token per beam.
      positions: int ``[batch]``: all beams of row ``b`` are at the same
        position.
      cache: :func:`expand_beam_cache` of a prefilled cache, or a previous
        :meth:`beam_decode`'s.
      slots: int ``[batch, width, cache_length]`` in ``[0, width)``: the
        slot holding beam ``w``'s key and value at each position, with
        ``slots[b, w, positions[b]] == w``.

    Returns:
      ``(logits, cache)``: float32 ``[batch, width, vocab]`` and the cache
      with the new keys and values written.
    """
    cfg = self.config
    _check_beam_inputs(tokens, positions, slots, cache['layer_0']['key'], cfg.vocab_size)
    x = jnp.take(self.embedding, tokens, axis=0).astype(cfg.dtype)
    if cfg.positions == 'learned':
      x = x + jnp.take(self.position_embedding, positions, axis=0)[:, None].astype(cfg.dtype)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    mask = beam_cache_mask(slots, positions)
    new_cache = {}
    for i, block in enumerate(self.blocks):
      x, new_cache[f'layer_{i}'] = block.beam_decode(x, positions, cache[f'layer_{i}'], mask)
    hidden = nn.with_logical_constraint(self.final_norm(x), ('batch', 'length', 'embed'))
    unembedding = self.embedding.T if cfg.tied_embeddings else self.unembedding
    return _unembed(hidden, unembedding, cfg.dtype), new_cache

  def features_outputs(self, tokens: jax.Array, train: bool = False) -> Outputs:
    """``Outputs(logits=None, features={'hidden', 'unembedding'})``, no logits.

    Args:
      tokens: int ``[batch, time]`` token ids.
      train: enables dropout.

    Returns:
      An :class:`~kdjax.Outputs` whose features are the results of
      :meth:`hidden_and_unembedding`.
    """
    hidden, unembedding = self.hidden_and_unembedding(tokens, train)
    return Outputs(logits=None, features={'hidden': hidden, 'unembedding': unembedding})


def lm_apply(
    model: DecoderLM,
    *,
    logits: bool = True,
    inputs: adapters.Inputs = 'tokens',
    features: Sequence[str] | dict[str, str] = (),
) -> adapters.Apply:
  """A kdjax ``apply`` for a :class:`DecoderLM`, reading ``batch['tokens']``.

  With ``logits=True`` it is ``from_linen(model, inputs=inputs,
  features=features)``: ``Outputs.logits`` is float32 ``[batch, time,
  vocab]``. With ``logits=False`` the ``[batch, time, vocab]`` logits are
  never computed: ``Outputs.logits`` is ``None`` and ``Outputs.features``
  holds ``'hidden'`` ``[batch, time, hidden]`` (the final normed hidden
  state, ``config.dtype``) and ``'unembedding'`` ``[hidden, vocab]`` (the
  parameter itself, or the token embedding transposed when tied, so
  gradients reach it through this feature), as chunked large-vocabulary
  losses need. Either way `features` may add any sown intermediate
  (``'layer_<i>'``, ``'hidden'``).

  Args:
    model: the language model.
    logits: whether to compute the logits.
    inputs: the batch key holding the tokens, or ``fn(batch) -> tokens``.
    features: further intermediates to expose (see
      :func:`kdjax.adapters.from_linen`).

  Returns:
    ``apply(variables, batch, *, train, rngs=None) -> (Outputs, new_state)``.
  """
  method = None if logits else DecoderLM.features_outputs
  return adapters.from_linen(model, inputs=inputs, features=features, method=method)


def lm_decoder(model: DecoderLM, *, use_cache: bool = True) -> Decoder:
  """A :class:`~kdjax.generate._decoder.Decoder` for a :class:`DecoderLM`.

  With ``use_cache=True`` the cache is :meth:`DecoderLM.init_cache`'s
  per-layer keys and values and a step is :meth:`DecoderLM.decode`: each
  new token costs one position's work. With ``use_cache=False`` the cache
  is only the token buffer ``{'tokens': int32 [batch, cache_length]}``: a
  step writes the new tokens into it, runs the full forward pass over the
  whole buffer and returns the logits at the requested positions -- the
  same outputs, at the cost of recomputing every position each step (the
  baseline a KV cache is measured against). `init_cache` ignores its
  `inputs` either way.

  Args:
    model: the language model.
    use_cache: keep keys and values (True) or recompute them (False).

  With the cache, beam search uses :meth:`DecoderLM.beam_decode`
  (``Decoder.beam_cache`` is :func:`expand_beam_cache`): the beams share
  the prompt's keys and values and the cache is never reordered.

  Returns:
    ``Decoder(init_cache, step, vocab_size, max_length=config.max_len,
    beam_cache, beam_step)`` (the last two ``None`` without the cache).
  """
  cfg = model.config

  def init_cache(variables, inputs, batch_size, cache_length):
    del variables, inputs
    if use_cache:
      return model.init_cache(batch_size, cache_length)
    _check_cache_length(cache_length, cfg.max_len, 'max_len')
    return {'tokens': jnp.zeros((batch_size, cache_length), jnp.int32)}

  def cached_step(variables, tokens, positions, cache):
    return model.apply(variables, tokens, positions, cache, method=DecoderLM.decode)

  def beam_step(variables, tokens, positions, cache, slots):
    return model.apply(variables, tokens, positions, cache, slots, method=DecoderLM.beam_decode)

  def recompute_step(variables, tokens, positions, cache):
    buffer = cache['tokens']
    _check_decode_inputs(tokens, positions, cfg.vocab_size, buffer.shape[1], buffer.shape[0])
    buffer = jax.vmap(lambda row, new, start: jax.lax.dynamic_update_slice(row, new, (start,)))(
        buffer, tokens.astype(buffer.dtype), positions[:, 0])
    logits = model.apply(variables, buffer)
    return jnp.take_along_axis(logits, positions[:, :, None], axis=1), {'tokens': buffer}

  return Decoder(
      init_cache=init_cache, step=cached_step if use_cache else recompute_step,
      vocab_size=cfg.vocab_size, max_length=cfg.max_len,
      beam_cache=expand_beam_cache if use_cache else None,
      beam_step=beam_step if use_cache else None,
      beam_resize=resize_beam_cache if use_cache else None,
  )
