"""An encoder-decoder (sequence-to-sequence) Transformer with logical axis names."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _checks
from kdjax import adapters
from kdjax.generate._decoder import Decoder
from kdjax.zoo import _transformer
from kdjax.zoo._transformer import DecoderConfig

_POSITIONS = ('learned', 'sinusoidal', 'rope')
_MLPS = ('gelu', 'relu', 'swiglu')
_NORMS = ('rms', 'layer')


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
  """The shape and options of a :class:`Seq2SeqTransformer`.

  Attributes:
    source_vocab_size: number of source token ids.
    target_vocab_size: number of target token ids (the output distribution).
    encoder_layers: number of encoder blocks.
    decoder_layers: number of decoder blocks.
    hidden: the model width (d_model).
    num_heads: attention heads.
    mlp_dim: the MLP's inner width.
    max_source_len: the longest source the model accepts.
    max_target_len: the longest target the model accepts (and decodes).
    head_dim: the per-head width; ``None`` means ``hidden // num_heads``.
    positions: ``'sinusoidal'`` (fixed sin/cos added to the embeddings,
      Vaswani et al.), ``'learned'`` (a ``[max_len, hidden]`` table each
      for source and target) or ``'rope'`` (rotary embeddings on the
      self-attention queries and keys; cross-attention has none).
    shared_embeddings: one token table for source and target (requires
      equal vocabulary sizes); with `tied_output` it is also the output
      layer, one table for all three.
    tied_output: if True the unembedding is the target embedding
      transposed; otherwise a separate ``[hidden, target_vocab]`` matrix.
    mlp: ``'relu'`` (as Vaswani et al.), ``'gelu'`` or ``'swiglu'``.
    norm: ``'layer'`` (LayerNorm) or ``'rms'`` (RMSNorm, as T5).
    dropout_rate: dropout on the embeddings and each residual branch in
      training.
    dtype: the compute dtype; logits are float32.
    param_dtype: the parameters' dtype.
    rope_base: the RoPE wavelength base.
  """

  source_vocab_size: int
  target_vocab_size: int
  encoder_layers: int
  decoder_layers: int
  hidden: int
  num_heads: int
  mlp_dim: int
  max_source_len: int
  max_target_len: int
  head_dim: int | None = None
  positions: str = 'sinusoidal'
  shared_embeddings: bool = False
  tied_output: bool = True
  mlp: str = 'relu'
  norm: str = 'layer'
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  rope_base: float = 10_000.0

  def __post_init__(self):
    for name in ('source_vocab_size', 'target_vocab_size', 'encoder_layers',
                 'decoder_layers', 'hidden', 'num_heads', 'mlp_dim', 'max_source_len',
                 'max_target_len'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f'Seq2SeqConfig.{name} must be a positive int, got {value!r}.')
    if self.head_dim is None and self.hidden % self.num_heads:
      raise ValueError(
          f'Seq2SeqConfig.hidden={self.hidden} is not divisible by '
          f'num_heads={self.num_heads}; pass head_dim explicitly.'
      )
    if self.head_dim is not None and self.head_dim <= 0:
      raise ValueError(f'Seq2SeqConfig.head_dim must be positive, got {self.head_dim}.')
    for name, allowed in (('positions', _POSITIONS), ('mlp', _MLPS), ('norm', _NORMS)):
      if getattr(self, name) not in allowed:
        raise ValueError(
            f'Seq2SeqConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.'
        )
    if self.positions == 'rope' and self.kv_dim % 2:
      raise ValueError(f"positions='rope' needs an even head_dim, got head_dim={self.kv_dim}.")
    if self.positions == 'sinusoidal' and self.hidden % 2:
      raise ValueError(f"positions='sinusoidal' needs an even hidden, got hidden={self.hidden}.")
    if self.shared_embeddings and self.source_vocab_size != self.target_vocab_size:
      raise ValueError(
          'Seq2SeqConfig.shared_embeddings=True needs one vocabulary, got '
          f'source_vocab_size={self.source_vocab_size} and '
          f'target_vocab_size={self.target_vocab_size}.'
      )
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'Seq2SeqConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}.')

  @property
  def kv_dim(self) -> int:
    """The per-head width: `head_dim`, or ``hidden // num_heads``."""
    return self.head_dim if self.head_dim is not None else self.hidden // self.num_heads


def param_count(config: Seq2SeqConfig | DecoderConfig) -> int:
  """The number of parameters of the zoo Transformer that `config` describes.

  A :class:`~kdjax.zoo.DecoderConfig` is counted by the decoder-only
  formula (see ``DecoderLM``). For a :class:`Seq2SeqConfig`, with ``D =
  hidden``, ``A = num_heads * head_dim``, ``F = mlp_dim``, ``E`` and ``L``
  encoder and decoder layers, ``n = D`` (RMSNorm) or ``2 D`` (LayerNorm)
  and ``m = 2`` (ReLU, GELU) or ``3`` (SwiGLU)::

      (V_source + V_target) D           token tables (V D if shared)
    + (max_source_len + max_target_len) D   if positions == 'learned'
    + E (4 D A + m D F + 2 n)           self-attention, MLP, 2 norms
    + L (8 D A + m D F + 3 n)           self- and cross-attention, MLP, 3 norms
    + 2 n                               final encoder and decoder norms
    + D V_target                        if not tied_output

  No dense layer has a bias.

  Args:
    config: the model's config.

  Returns:
    The count, an int.
  """
  if isinstance(config, DecoderConfig):
    return _transformer.param_count(config)
  if not isinstance(config, Seq2SeqConfig):
    raise TypeError(f'param_count takes a DecoderConfig or Seq2SeqConfig, got {config!r}.')
  d, attn = config.hidden, config.num_heads * config.kv_dim
  norm = d if config.norm == 'rms' else 2 * d
  mlp = (3 if config.mlp == 'swiglu' else 2) * d * config.mlp_dim
  vocab = config.source_vocab_size + (0 if config.shared_embeddings else config.target_vocab_size)
  count = vocab * d + 2 * norm
  count += config.encoder_layers * (4 * d * attn + mlp + 2 * norm)
  count += config.decoder_layers * (8 * d * attn + mlp + 3 * norm)
  if config.positions == 'learned':
    count += (config.max_source_len + config.max_target_len) * d
  if not config.tied_output:
    count += d * config.target_vocab_size
  return int(count)


def _sinusoids(length: int, width: int) -> np.ndarray:
  """Vaswani et al.'s ``[length, width]`` table: sin on the first half of
  the channels, cos on the second (the tensor2tensor layout)."""
  half = width // 2
  inv_freq = 10_000.0 ** (-np.arange(half, dtype=np.float64) / half)
  angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def _check_tokens(name: str, tokens: Any, vocab_size: int, vocab_name: str,
                  max_len: int, max_name: str) -> None:
  _checks.check_integer(name, tokens)
  shape = tuple(jnp.shape(tokens))
  if len(shape) != 2:
    raise ValueError(f'{name} must be [batch, time], got {name} with shape {shape}.')
  if shape[1] > max_len:
    raise ValueError(
        f'{name} with shape {shape} has {shape[1]} time steps, more than '
        f'{max_name}={max_len}; crop it or build the model with a larger {max_name}.'
    )
  _checks.check_index_range(name, tokens, vocab_size, vocab_name)


def _check_source_mask(source: Any, source_mask: Any) -> None:
  if jnp.result_type(source_mask) != jnp.bool_:
    raise TypeError(
        f'source_mask must be bool (True on real tokens), got {jnp.result_type(source_mask)} '
        f'with shape {jnp.shape(source_mask)}; pass source_mask != 0.'
    )
  _checks.check_same_shape('source', source, 'source_mask', source_mask)


class Seq2SeqTransformer(nn.Module):
  """An encoder-decoder Transformer (Vaswani et al., 2017) with pre-norm blocks.

  The encoder is a stack of pre-norm blocks (self-attention over the
  source, padding keys masked out, and an MLP) and a final norm; the
  decoder's blocks add cross-attention over the encoder output between
  the causal self-attention and the MLP, then a final norm and the
  unembedding. Pre-norm (Xiong et al., 2020), as in T5. Token embeddings
  are multiplied by ``sqrt(hidden)`` (Vaswani et al., section 3.4).
  Computation runs in ``config.dtype`` (softmax in float32); logits are
  float32.

  Entry points:

  * ``__call__(source, source_mask, target_inputs, train=False)``: teacher
    forcing, logits ``[batch, target_len, target_vocab]``;
  * ``encode(source, source_mask, train=False)``: the encoder output
    ``[batch, source_len, hidden]``;
  * ``init_cache(encoded, source_mask, cache_length)`` and ``decode(tokens,
    positions, cache)``: cached decoding, the cross-attention keys and
    values computed once per source (see :meth:`init_cache`).

  Sown intermediates (``'intermediates'``, exposed by name through
  :func:`seq2seq_apply`): ``'encoder_layer_<i>'`` ``[batch, source_len,
  hidden]``, ``'encoded'`` (the final-normed encoder output),
  ``'decoder_layer_<i>'`` ``[batch, target_len, hidden]`` and ``'hidden'``
  (the final-normed decoder state).

  Parameters and activations use the logical axis names of
  ``TRANSFORMER_LOGICAL_AXES`` (the source's time axis is ``'length'`` as
  well): ``embedding`` (shared) or ``source_embedding`` /
  ``target_embedding`` ``('vocab', 'embed')``, ``source_position_embedding``
  / ``target_position_embedding`` ``('position', 'embed')``,
  ``unembedding`` ``('embed', 'vocab')``, and in ``encoder_blocks_<i>`` /
  ``decoder_blocks_<i>`` the ``attention`` (and ``cross_attention``)
  ``query``/``key``/``value`` ``('embed', 'heads', 'kv')``, ``out``
  ``('heads', 'kv', 'embed')``, the MLP's ``('embed', 'mlp')`` /
  ``('mlp', 'embed')`` and the norms' ``('embed',)``.

  Attributes:
    config: the :class:`Seq2SeqConfig`.

  References:
    Vaswani et al., "Attention Is All You Need" (2017), arXiv:1706.03762;
    Xiong et al., "On Layer Normalization in the Transformer Architecture"
    (2020), arXiv:2002.04745; Raffel et al., "Exploring the Limits of
    Transfer Learning with a Unified Text-to-Text Transformer" (T5, 2020).
  """

  config: Seq2SeqConfig

  def setup(self):
    cfg = self.config
    token_init = nn.initializers.normal(cfg.hidden**-0.5)
    axes = ('vocab', 'embed')
    if cfg.shared_embeddings:
      self.embedding = _transformer._param(
          self, 'embedding', token_init, (cfg.source_vocab_size, cfg.hidden), axes)
    else:
      self.source_embedding = _transformer._param(
          self, 'source_embedding', token_init, (cfg.source_vocab_size, cfg.hidden), axes)
      self.target_embedding = _transformer._param(
          self, 'target_embedding', token_init, (cfg.target_vocab_size, cfg.hidden), axes)
    if cfg.positions == 'learned':
      position_init = nn.initializers.normal(0.02)
      self.source_position_embedding = _transformer._param(
          self, 'source_position_embedding', position_init,
          (cfg.max_source_len, cfg.hidden), ('position', 'embed'))
      self.target_position_embedding = _transformer._param(
          self, 'target_position_embedding', position_init,
          (cfg.max_target_len, cfg.hidden), ('position', 'embed'))
    if not cfg.tied_output:
      self.unembedding = _transformer._param(
          self, 'unembedding', nn.initializers.lecun_normal(),
          (cfg.hidden, cfg.target_vocab_size), ('embed', 'vocab'))
    self.encoder_blocks = [_transformer._Block(cfg) for _ in range(cfg.encoder_layers)]
    self.encoder_norm = _transformer._norm(cfg, None)
    self.decoder_blocks = [
        _transformer._Block(cfg, cross=True) for _ in range(cfg.decoder_layers)
    ]
    self.decoder_norm = _transformer._norm(cfg, None)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _embed(self, tokens: jax.Array, positions: Any, side: str) -> jax.Array:
    """Token (times sqrt(hidden)) plus position embeddings of one side."""
    cfg = self.config
    table = self.embedding if cfg.shared_embeddings else getattr(self, f'{side}_embedding')
    x = jnp.take(table, tokens, axis=0).astype(cfg.dtype) * np.sqrt(cfg.hidden).astype(cfg.dtype)
    if cfg.positions == 'learned':
      positional = jnp.take(getattr(self, f'{side}_position_embedding'), positions, axis=0)
      x = x + positional.astype(cfg.dtype)
    elif cfg.positions == 'sinusoidal':
      max_len = cfg.max_source_len if side == 'source' else cfg.max_target_len
      table = jnp.asarray(_sinusoids(max_len, cfg.hidden))
      x = x + jnp.take(table, positions, axis=0).astype(cfg.dtype)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

  def _unembedding(self) -> jax.Array:
    if not self.config.tied_output:
      return self.unembedding
    return (self.embedding if self.config.shared_embeddings else self.target_embedding).T

  def encode(self, source: jax.Array, source_mask: jax.Array, train: bool = False) -> jax.Array:
    """The encoder output ``[batch, source_len, hidden]`` in ``config.dtype``.

    Args:
      source: int ``[batch, source_len]`` token ids, ``source_len <=
        max_source_len``.
      source_mask: bool ``[batch, source_len]``, True on real tokens; the
        others are never attended to.
      train: enables dropout (then a ``'dropout'`` RNG is needed).
    """
    cfg = self.config
    _check_tokens('source', source, cfg.source_vocab_size, 'source_vocab_size',
                  cfg.max_source_len, 'max_source_len')
    _check_source_mask(source, source_mask)
    x = self._embed(source, np.arange(source.shape[1])[None], 'source')
    x = self.dropout(x, deterministic=not train)
    mask = _transformer._key_mask(source_mask)
    for i, block in enumerate(self.encoder_blocks):
      x = block(x, train, mask=mask)
      self.sow('intermediates', f'encoder_layer_{i}', x)
    encoded = nn.with_logical_constraint(self.encoder_norm(x), ('batch', 'length', 'embed'))
    self.sow('intermediates', 'encoded', encoded)
    return encoded

  def _check_target(self, target: jax.Array, source_mask: jax.Array, name: str) -> None:
    cfg = self.config
    _check_tokens(name, target, cfg.target_vocab_size, 'target_vocab_size',
                  cfg.max_target_len, 'max_target_len')
    if jnp.shape(target)[0] != jnp.shape(source_mask)[0]:
      raise ValueError(
          f'{name} with shape {jnp.shape(target)} and the source with shape '
          f'{jnp.shape(source_mask)} must have the same batch size.'
      )

  def __call__(
      self, source: jax.Array, source_mask: jax.Array, target_inputs: jax.Array,
      train: bool = False,
  ) -> jax.Array:
    """Teacher forcing: float32 logits ``[batch, target_len, target_vocab]``.

    Args:
      source: int ``[batch, source_len]`` token ids.
      source_mask: bool ``[batch, source_len]``, True on real tokens.
      target_inputs: int ``[batch, target_len]``, the decoder's inputs (the
        targets shifted right behind a start token); ``target_len <=
        max_target_len``. Position ``t``'s logits predict the token after
        ``target_inputs[:, t]``.
      train: enables dropout.
    """
    encoded = self.encode(source, source_mask, train)
    self._check_target(target_inputs, source_mask, 'target_inputs')
    x = self._embed(target_inputs, np.arange(target_inputs.shape[1])[None], 'target')
    x = self.dropout(x, deterministic=not train)
    memory_mask = _transformer._key_mask(source_mask)
    for i, block in enumerate(self.decoder_blocks):
      x = block(x, train, memory=encoded, memory_mask=memory_mask)
      self.sow('intermediates', f'decoder_layer_{i}', x)
    hidden = nn.with_logical_constraint(self.decoder_norm(x), ('batch', 'length', 'embed'))
    self.sow('intermediates', 'hidden', hidden)
    return _transformer._unembed(hidden, self._unembedding(), self.config.dtype)

  def init_cache(
      self, encoded: jax.Array, source_mask: jax.Array, cache_length: int
  ) -> dict[str, Any]:
    """The decoding cache of a batch of encoded sources.

    The cross-attention keys and values are computed here, once per
    source, and read by every :meth:`decode` step.

    Args:
      encoded: :meth:`encode`'s output ``[batch, source_len, hidden]``.
      source_mask: bool ``[batch, source_len]``, True on real tokens.
      cache_length: the most target positions to decode, ``<=
        max_target_len``.

    Returns:
      ``{'source_mask': bool [batch, source_len], 'layer_<i>': {'key',
      'value': [batch, heads, cache_length, kv] zeros, 'cross_key',
      'cross_value': [batch, heads, source_len, kv]}}``, keys and values in
      ``config.dtype`` constrained to ``('batch', 'heads', 'length',
      'kv')``.
    """
    cfg = self.config
    _transformer._check_cache_length(cache_length, cfg.max_target_len, 'max_target_len')
    _check_source_mask(encoded[..., 0], source_mask)
    return _transformer._cross_attention_cache(cfg, self.decoder_blocks, encoded, cache_length,
                                               source_mask)

  def decode(
      self, tokens: jax.Array, positions: jax.Array, cache: dict[str, Any]
  ) -> tuple[jax.Array, dict[str, Any]]:
    """New target tokens against the cache (inference: no dropout).

    Args:
      tokens: int ``[batch, time]`` target token ids.
      positions: int ``[batch, time]``, consecutive in each row, rows may
        start at different positions (see ``DecoderLM.decode``).
      cache: from :meth:`init_cache` or a previous :meth:`decode`.

    Returns:
      ``(logits, cache)``: float32 ``[batch, time, target_vocab]`` and the
      cache with the new self-attention keys and values written.
    """
    cfg = self.config
    layer = cache['layer_0']['key']
    _transformer._check_decode_inputs(
        tokens, positions, cfg.target_vocab_size, layer.shape[2], layer.shape[0])
    x = self._embed(tokens, positions, 'target')
    memory_mask = _transformer._key_mask(cache['source_mask'])
    new_cache = {'source_mask': cache['source_mask']}
    for i, block in enumerate(self.decoder_blocks):
      x, new_cache[f'layer_{i}'] = block.decode(
          x, positions, cache[f'layer_{i}'], memory_mask=memory_mask)
    hidden = nn.with_logical_constraint(self.decoder_norm(x), ('batch', 'length', 'embed'))
    return _transformer._unembed(hidden, self._unembedding(), cfg.dtype), new_cache


  def beam_decode(
      self, tokens: jax.Array, positions: jax.Array, cache: dict[str, Any],
      slots: jax.Array,
  ) -> tuple[jax.Array, dict[str, Any]]:
    """One new target token per beam against a beam cache (inference).

    As ``DecoderLM.beam_decode``: beam ``w`` writes its self-attention key
    and value into slot ``w`` at ``positions[b]`` and attends to the slots
    `slots` names; the cross-attention reads the source's keys and values,
    stored once per source, with the beams as its query axis.

    Args:
      tokens: int ``[batch, width]``, one new target token per beam.
      positions: int ``[batch]``, the position of row ``b``'s new tokens.
      cache: ``expand_beam_cache`` of a prefilled :meth:`init_cache` cache,
        or a previous :meth:`beam_decode`'s.
      slots: int ``[batch, width, cache_length]`` in ``[0, width)``.

    Returns:
      ``(logits, cache)``: float32 ``[batch, width, target_vocab]`` and the
      cache with the new self-attention keys and values written.
    """
    cfg = self.config
    _transformer._check_beam_inputs(
        tokens, positions, slots, cache['layer_0']['key'], cfg.target_vocab_size)
    x = self._embed(tokens, jnp.broadcast_to(positions[:, None], jnp.shape(tokens)), 'target')
    memory_mask = _transformer._key_mask(cache['source_mask'])
    mask = _transformer.beam_cache_mask(slots, positions)
    new_cache = {'source_mask': cache['source_mask']}
    for i, block in enumerate(self.decoder_blocks):
      x, new_cache[f'layer_{i}'] = block.beam_decode(
          x, positions, cache[f'layer_{i}'], mask, memory_mask=memory_mask)
    hidden = nn.with_logical_constraint(self.decoder_norm(x), ('batch', 'length', 'embed'))
    return _transformer._unembed(hidden, self._unembedding(), cfg.dtype), new_cache


def seq2seq_decoder(model: Seq2SeqTransformer) -> Decoder:
  """A :class:`~kdjax.generate._decoder.Decoder` for a :class:`Seq2SeqTransformer`.

  ``init_cache(variables, inputs, batch_size, cache_length)`` encodes
  ``inputs['source']`` (int ``[batch_size, source_len]``) with
  ``inputs['source_mask']`` (bool, True on real tokens) and returns
  :meth:`Seq2SeqTransformer.init_cache`'s cache; a step is
  :meth:`Seq2SeqTransformer.decode`. Beam search uses
  :meth:`Seq2SeqTransformer.beam_decode`: the source's cross-attention
  keys and values stay once per source and the cache is never reordered.

  Args:
    model: the encoder-decoder model.

  Returns:
    ``Decoder(init_cache, step, vocab_size=target_vocab_size,
    max_length=max_target_len)``.
  """
  cfg = model.config

  def init_cache(variables, inputs, batch_size, cache_length):
    source = _checks.batch_entry(inputs, 'source', 'the source')
    source_mask = _checks.batch_entry(inputs, 'source_mask', 'the source mask')
    if jnp.shape(source)[0] != batch_size:
      raise ValueError(
          f'batch_size={batch_size} must equal the number of source rows, got source '
          f'with shape {jnp.shape(source)}.'
      )
    encoded = model.apply(variables, source, source_mask, method=Seq2SeqTransformer.encode)
    return model.apply(
        variables, encoded, source_mask, cache_length, method=Seq2SeqTransformer.init_cache)

  def step(variables, tokens, positions, cache):
    return model.apply(variables, tokens, positions, cache, method=Seq2SeqTransformer.decode)

  def beam_step(variables, tokens, positions, cache, slots):
    return model.apply(variables, tokens, positions, cache, slots,
                       method=Seq2SeqTransformer.beam_decode)

  return Decoder(init_cache=init_cache, step=step, vocab_size=cfg.target_vocab_size,
                 max_length=cfg.max_target_len,
                 beam_cache=_transformer.expand_beam_cache, beam_step=beam_step,
                 beam_resize=_transformer.resize_beam_cache)


def _teacher_forced(module: Seq2SeqTransformer, inputs: tuple, train: bool = False):
  return module(*inputs, train=train)


def seq2seq_apply(
    model: Seq2SeqTransformer,
    *,
    source: str = 'source',
    source_mask: str = 'source_mask',
    target_inputs: str = 'target_inputs',
    features: Sequence[str] | dict[str, str] = (),
) -> adapters.Apply:
  """A kdjax ``apply`` for a :class:`Seq2SeqTransformer` (teacher forcing).

  Reads ``batch[source]``, ``batch[source_mask]`` and
  ``batch[target_inputs]``; ``Outputs.logits`` is float32 ``[batch,
  target_len, target_vocab]``. `features` may name any sown intermediate
  (``'encoder_layer_<i>'``, ``'encoded'``, ``'decoder_layer_<i>'``,
  ``'hidden'``). Train it with :func:`kdjax.step.make_train_step` and a
  ``batch['label']`` of target tokens with ``batch['mask']`` over them.

  Args:
    model: the encoder-decoder model.
    source: the batch key of the source tokens.
    source_mask: the batch key of the source mask.
    target_inputs: the batch key of the decoder's input tokens.
    features: intermediates to expose (see :func:`kdjax.adapters.from_linen`).

  Returns:
    ``apply(variables, batch, *, train, rngs=None) -> (Outputs, new_state)``.
  """

  def inputs(batch):
    return tuple(
        _checks.batch_entry(batch, key, role) for key, role in (
            (source, 'source'), (source_mask, 'source_mask'), (target_inputs, 'target_inputs'))
    )

  return adapters.from_linen(model, inputs=inputs, features=features, method=_teacher_forced)
