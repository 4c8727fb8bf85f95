"""An autoregressive Transformer TTS teacher, its cached generation, and FastSpeech durations.

The teacher is autoregressive (Li et al., 2019, "Neural Speech Synthesis with
Transformer Network", https://arxiv.org/abs/1809.08895): a phoneme encoder,
a mel decoder fed its previous frame through a pre-net, a stop-token head
and a convolutional post-net; its encoder-decoder attention gives phoneme
durations by the FastSpeech method (Ren et al., 2019,
https://arxiv.org/abs/1905.09263). The layers shared with the FastSpeech
student (:mod:`kdjax.zoo._fastspeech`) live here too.

Everything has static shapes: sources are padded to a phoneme count with a
``phoneme_mask``, frames to ``max_frames`` with a ``frame_mask``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
from typing import Any

from flax import linen as nn
from flax import struct
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from kdjax import _checks
from kdjax import adapters
from kdjax._outputs import Outputs
from kdjax.zoo import _transformer
from kdjax.zoo._seq2seq import _sinusoids

#: Logical axis names of the speech models' parameters and activations: the
#: Transformer's (``TRANSFORMER_LOGICAL_AXES``) plus ``'mel'``, ``'bins'`` and
#: ``'speakers'``. A partitioning rule list maps them to mesh axes.
TTS_LOGICAL_AXES = _transformer.TRANSFORMER_LOGICAL_AXES + (
    'mel',  # mel bins
    'bins',  # quantised pitch / energy bins
    'speakers',  # rows of the speaker table
)


def _check_positive_fields(owner: str, obj: Any, names: Sequence[str]) -> None:
  for name in names:
    value = getattr(obj, name)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
      raise ValueError(f'{owner}.{name} must be a positive int, got {value!r}.')


def _check_rate(owner: str, name: str, value: float) -> None:
  if not 0.0 <= value < 1.0:
    raise ValueError(f'{owner}.{name} must be in [0, 1), got {value}.')


@dataclasses.dataclass(frozen=True)
class TransformerTTSConfig:
  """The shape and options of a :class:`TransformerTTS` teacher.

  The paper's model is ``hidden=512, num_heads=8, encoder_layers=6,
  decoder_layers=6, mlp_dim=2048`` with 512-channel pre- and post-nets; the
  defaults here are a smaller one.

  Attributes:
    vocab_size: number of phoneme ids (0 pads).
    num_mels: mel bins per frame.
    hidden: the model width.
    num_heads: attention heads.
    encoder_layers: encoder blocks.
    decoder_layers: decoder blocks.
    mlp_dim: the blocks' ReLU MLP inner width.
    max_source_len: the most phonemes a source may have.
    max_frames: the most frames the decoder accepts and generates.
    encoder_prenet: the paper's convolutional encoder pre-net (conv, norm,
      ReLU, dropout, ``prenet_conv_layers`` times, then a linear
      projection) over the phoneme embeddings.
    prenet_conv_layers: convolutions of the encoder pre-net.
    prenet_kernel: their kernel width.
    decoder_prenet_dim: the width of the decoder pre-net's two dense layers.
    prenet_dropout: dropout of the decoder pre-net (0.5 in the paper).
    prenet_dropout_at_inference: keep the decoder pre-net's dropout on at
      inference, as Tacotron 2 and Transformer TTS do (the noise helps the
      autoregressive loop); then generation needs an rng.
    postnet_layers: convolutions of the post-net.
    postnet_channels: their width.
    postnet_kernel: their kernel width.
    num_speakers: 0 for one speaker; otherwise a speaker table is added to
      the encoder output.
    dropout_rate: dropout on embeddings and residual branches in training.
    head_dim: the per-head width; ``None`` means ``hidden // num_heads``.
    decoder_position_rate: the decoder's sinusoids are taken at frame
      ``p`` times this rate (Deep Voice 3's position rate, Ping et al.,
      2018, https://arxiv.org/abs/1710.07654): with the data's phonemes per
      decoder step, frame ``p``'s positions match those of the phoneme an
      average speaking rate reaches at ``p``, so the attention's positional
      part starts near the alignment's diagonal instead of at one phoneme
      per frame. 1 is Transformer TTS.
    dtype: the compute dtype; outputs are float32.
    param_dtype: the parameters' dtype.
  """

  vocab_size: int
  num_mels: int = 80
  hidden: int = 256
  num_heads: int = 4
  encoder_layers: int = 3
  decoder_layers: int = 3
  mlp_dim: int = 1024
  max_source_len: int = 256
  max_frames: int = 1024
  encoder_prenet: bool = True
  prenet_conv_layers: int = 3
  prenet_kernel: int = 5
  decoder_prenet_dim: int = 256
  prenet_dropout: float = 0.5
  prenet_dropout_at_inference: bool = True
  postnet_layers: int = 5
  postnet_channels: int = 512
  postnet_kernel: int = 5
  num_speakers: int = 0
  dropout_rate: float = 0.1
  head_dim: int | None = None
  decoder_position_rate: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  # What the shared Transformer pieces (kdjax.zoo._transformer) read.
  positions = 'sinusoidal'
  mlp = 'relu'
  norm = 'layer'
  rope_base = 10_000.0

  def __post_init__(self):
    owner = 'TransformerTTSConfig'
    _check_positive_fields(owner, self, (
        'vocab_size', 'num_mels', 'hidden', 'num_heads', 'encoder_layers', 'decoder_layers',
        'mlp_dim', 'max_source_len', 'max_frames', 'prenet_kernel', 'decoder_prenet_dim',
        'postnet_layers', 'postnet_channels', 'postnet_kernel'))
    if self.encoder_prenet:
      _check_positive_fields(owner, self, ('prenet_conv_layers',))
    _check_head_dim(owner, self)
    if self.hidden % 2:
      raise ValueError(f'{owner}.hidden must be even (sinusoidal positions), got {self.hidden}.')
    if self.num_speakers < 0:
      raise ValueError(f'{owner}.num_speakers must be >= 0, got {self.num_speakers}.')
    _check_rate(owner, 'dropout_rate', self.dropout_rate)
    _check_rate(owner, 'prenet_dropout', self.prenet_dropout)
    if not self.decoder_position_rate > 0:
      raise ValueError(f'{owner}.decoder_position_rate must be positive, got '
                       f'{self.decoder_position_rate}.')

  @property
  def kv_dim(self) -> int:
    """The per-head width: `head_dim`, or ``hidden // num_heads``."""
    return self.head_dim if self.head_dim is not None else self.hidden // self.num_heads


def _check_head_dim(owner: str, cfg: Any) -> None:
  if cfg.head_dim is None and cfg.hidden % cfg.num_heads:
    raise ValueError(f'{owner}.hidden={cfg.hidden} is not divisible by '
                     f'num_heads={cfg.num_heads}; pass head_dim explicitly.')
  if cfg.head_dim is not None and cfg.head_dim <= 0:
    raise ValueError(f'{owner}.head_dim must be positive, got {cfg.head_dim}.')


# ------------------------------------------------------------------ layers


def _distinct(axes: tuple[str | None, str | None]) -> tuple[str | None, str | None]:
  """A kernel's (input, output) logical names, the input's dropped when both are the same
  (a name may not appear twice in one array's partitioning)."""
  return (None, axes[1]) if axes[0] is not None and axes[0] == axes[1] else axes


def _dense(cfg: Any, features: int, axes: tuple[str | None, str | None], name: str,
           use_bias: bool = True) -> nn.Dense:
  axes = _distinct(axes)
  return nn.Dense(
      features, use_bias=use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)), name=name)


def _conv(cfg: Any, features: int, kernel: int, axes: tuple[str | None, str | None],
          name: str) -> nn.Conv:
  """A 1-D convolution over ``[batch, time, channels]`` with SAME (zero) padding."""
  axes = _distinct(axes)
  return nn.Conv(
      features, (kernel,), padding='SAME', dtype=cfg.dtype, param_dtype=cfg.param_dtype,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, *axes)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)), name=name)


def _layer_norm(cfg: Any, axis: str | None, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=1e-5, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)), name=name)


def _masked(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Zeroes ``x [batch, time, ...]`` where ``mask [batch, time]`` is False."""
  return x * mask.reshape(mask.shape + (1,) * (x.ndim - 2)).astype(x.dtype)


class _TTSBlock(nn.Module):
  """A pre-norm Transformer block whose cross-attention returns its weights."""

  config: Any
  cross: bool = False

  def setup(self):
    cfg = self.config
    self.attention_norm = _transformer._norm(cfg, None)
    self.attention = _transformer._Attention(cfg)
    if self.cross:
      self.cross_attention_norm = _transformer._norm(cfg, None)
      self.cross_attention = _transformer._Attention(cfg)
    self.mlp_norm = _transformer._norm(cfg, None)
    self.mlp = _transformer._Mlp(cfg)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _residual(self, x, branch, train):
    x = x + self.dropout(branch, deterministic=not train)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

  def _cross(self, x, keys, values, memory_mask, train, cached=False):
    q = self.cross_attention.queries(self.cross_attention_norm(x))
    attended, probs = self.cross_attention.attend_with_weights(
        q, keys, values, memory_mask, cached=cached)
    return self._residual(x, attended, train), probs

  def cross_keys_values(self, memory: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.cross_attention.keys_values(memory)

  def __call__(self, x, train, *, mask, memory=None, memory_mask=None):
    """``(x, cross-attention weights [batch, heads, time, source] or None)``."""
    x = self._residual(x, self.attention(self.attention_norm(x), mask), train)
    probs = None
    if self.cross:
      x, probs = self._cross(x, *self.cross_keys_values(memory), memory_mask, train)
    return self._residual(x, self.mlp(self.mlp_norm(x)), train), probs

  def decode(self, x, positions, cache, memory_mask):
    """New frames at ``positions`` against the layer's cache: ``(x, cache, weights)``."""
    attended, self_cache = self.attention.decode(self.attention_norm(x), positions, cache)
    x = self._residual(x, attended, False)
    x, probs = self._cross(x, cache['cross_key'], cache['cross_value'], memory_mask, False,
                           cached=True)
    return self._residual(x, self.mlp(self.mlp_norm(x)), False), dict(cache, **self_cache), probs


def _rated_sinusoids(length: int, width: int, rate: float) -> np.ndarray:
  """The sinusoid table of :func:`kdjax.zoo._seq2seq._sinusoids` at positions ``rate * p``."""
  if rate == 1.0:
    return _sinusoids(length, width)
  half = width // 2
  inv_freq = 10_000.0 ** (-np.arange(half, dtype=np.float64) / half)
  angles = rate * np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def _frame_dropout(x: jax.Array, key: jax.Array, positions: jax.Array, rate: float) -> jax.Array:
  """Dropout on ``x [batch, time, features]`` whose mask at frame ``p`` is drawn
  from ``fold_in(key, p)``: a frame gets the same mask whether the decoder
  runs all frames at once (teacher forcing) or one at a time (generation)."""
  keep = 1.0 - rate
  batch, _, features = x.shape
  masks = jax.vmap(lambda p: jax.random.bernoulli(
      jax.random.fold_in(key, p), keep, (batch, features)))(positions)
  return jnp.where(jnp.swapaxes(masks, 0, 1), x / keep, 0.0).astype(x.dtype)


class _DecoderPrenet(nn.Module):
  """Two dense ReLU layers with dropout, then a projection to the model width."""

  config: Any

  @nn.compact
  def __call__(self, frames: jax.Array, positions: jax.Array, key: jax.Array | None):
    cfg = self.config
    x = frames.astype(cfg.dtype)
    for i in range(2):
      x = nn.relu(_dense(cfg, cfg.decoder_prenet_dim, ('mel' if i == 0 else 'mlp', 'mlp'),
                         f'dense_{i}')(x))
      if key is not None:
        x = _frame_dropout(x, jax.random.fold_in(key, i), positions, cfg.prenet_dropout)
    return _dense(cfg, cfg.hidden, ('mlp', 'embed'), 'projection')(x)


class _Postnet(nn.Module):
  """``postnet_layers`` convolutions (LayerNorm, tanh but the last, dropout) -> a mel residual."""

  config: Any

  @nn.compact
  def __call__(self, mels: jax.Array, frame_mask: jax.Array, train: bool) -> jax.Array:
    cfg = self.config
    x = mels.astype(cfg.dtype)
    for i in range(cfg.postnet_layers):
      last = i == cfg.postnet_layers - 1
      width = cfg.num_mels if last else cfg.postnet_channels
      axes = ('mel' if i == 0 else 'mlp', 'mel' if last else 'mlp')
      x = _conv(cfg, width, cfg.postnet_kernel, axes, f'conv_{i}')(_masked(x, frame_mask))
      if not last:
        x = jnp.tanh(_layer_norm(cfg, 'mlp', f'norm_{i}')(x))
      x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not train)
    return _masked(x, frame_mask)


def _check_phonemes(phonemes: Any, phoneme_mask: Any, vocab_size: int, max_len: int) -> None:
  _checks.check_integer('phonemes', phonemes)
  shape = tuple(jnp.shape(phonemes))
  if len(shape) != 2:
    raise ValueError(f'phonemes must be [batch, phonemes], got phonemes with shape {shape}.')
  if shape[1] > max_len:
    raise ValueError(f'phonemes with shape {shape} has {shape[1]} phonemes, more than '
                     f'max_source_len={max_len}.')
  _checks.check_index_range('phonemes', phonemes, vocab_size, 'vocab_size')
  if jnp.result_type(phoneme_mask) != jnp.bool_:
    raise TypeError(f'phoneme_mask must be bool (True on real phonemes), got '
                    f'{jnp.result_type(phoneme_mask)} with shape {jnp.shape(phoneme_mask)}.')
  _checks.check_same_shape('phonemes', phonemes, 'phoneme_mask', phoneme_mask)


def _check_speaker(speaker: Any, batch: int, num_speakers: int) -> None:
  if num_speakers == 0:
    if speaker is not None:
      raise ValueError('speaker given but the model has num_speakers=0.')
    return
  if speaker is None:
    raise ValueError(f'the model has num_speakers={num_speakers}: pass speaker int [batch].')
  _checks.check_integer('speaker', speaker)
  if tuple(jnp.shape(speaker)) != (batch,):
    raise ValueError(f'speaker must be [batch] = ({batch},), got shape {jnp.shape(speaker)}.')
  _checks.check_index_range('speaker', speaker, num_speakers, 'num_speakers')


def _check_frames(name: str, x: Any, batch: int, num_mels: int, max_frames: int) -> None:
  _checks.check_floating(name, x)
  shape = tuple(jnp.shape(x))
  if len(shape) != 3 or shape[0] != batch or shape[2] != num_mels or shape[1] > max_frames:
    raise ValueError(f'{name} must be [batch={batch}, frames <= max_frames={max_frames}, '
                     f'num_mels={num_mels}], got shape {shape}.')


def shift_frames_right(mels: jax.Array) -> jax.Array:
  """The decoder's inputs under teacher forcing: a zero "go" frame, then ``mels[:, :-1]``."""
  return jnp.pad(mels, ((0, 0), (1, 0), (0, 0)))[:, :-1]


# ----------------------------------------------------------------- teacher


class TransformerTTS(nn.Module):
  """An autoregressive Transformer TTS teacher (Li et al., 2019).

  The encoder embeds phonemes, runs the optional convolutional pre-net, adds
  sinusoidal positions scaled by a trained scalar (the paper's "scaled
  positional encoding") and pre-norm self-attention blocks. The decoder
  reads the previous mel frame through a pre-net (two dense ReLU layers
  with dropout, kept on at inference if the config says so), adds its own
  scaled positions, and runs pre-norm blocks of causal self-attention,
  encoder-decoder attention and a ReLU MLP; a linear layer gives the mel
  frame, another the stop-token logit, and a convolutional post-net adds a
  residual to the whole spectrogram. The paper uses post-norm blocks and
  BatchNorm in its pre- and post-nets; here the blocks are pre-norm and the
  convolutions use LayerNorm (no batch statistics to carry).

  Entry points:

  * ``__call__(phonemes, phoneme_mask, mels, ...)``: teacher forcing, a dict
    of ``'mel'`` and ``'mel_postnet'`` ``[batch, frames, num_mels]``,
    ``'stop_logits'`` ``[batch, frames]`` and ``'attention'``, the
    encoder-decoder attention ``[batch, decoder_layers, heads, frames,
    phonemes]``;
  * ``encode``, ``init_cache``, ``decode_step`` and ``postnet``: the pieces
    of cached generation (:func:`make_tts_generate`).

  Parameters carry logical axis names (:data:`TTS_LOGICAL_AXES`): the
  Transformer blocks' as in :class:`~kdjax.zoo.Seq2SeqTransformer`, the
  embeddings ``('vocab', 'embed')`` and ``('speakers', 'embed')``, the mel
  projection ``('embed', 'mel')``, the pre- and post-nets' dense and
  convolution kernels ``(input, output)`` from ``'mel'``, ``'embed'`` and
  ``'mlp'`` (a square kernel names its output only: a name may appear once
  per array), so ``nn.logical_axis_rules`` shard them; the tests check
  that sharded generation equals the unsharded one.

  Attributes:
    config: the :class:`TransformerTTSConfig`.

  References:
    Li et al., "Neural Speech Synthesis with Transformer Network" (2019),
    https://arxiv.org/abs/1809.08895; Shen et al., "Natural TTS Synthesis by
    Conditioning WaveNet on Mel Spectrogram Predictions" (Tacotron 2, 2018),
    https://arxiv.org/abs/1712.05884.
  """

  config: TransformerTTSConfig

  def setup(self):
    cfg = self.config
    self.embedding = _transformer._param(
        self, 'embedding', nn.initializers.normal(cfg.hidden**-0.5),
        (cfg.vocab_size, cfg.hidden), ('vocab', 'embed'))
    if cfg.encoder_prenet:
      self.prenet_convs = [_conv(cfg, cfg.hidden, cfg.prenet_kernel, ('embed', 'embed'),
                                 f'prenet_conv_{i}') for i in range(cfg.prenet_conv_layers)]
      self.prenet_norms = [_layer_norm(cfg, 'embed', f'prenet_norm_{i}')
                           for i in range(cfg.prenet_conv_layers)]
      self.prenet_projection = _dense(cfg, cfg.hidden, ('embed', 'embed'), 'prenet_projection')
    self.encoder_alpha = self.param('encoder_alpha', nn.initializers.ones, (), cfg.param_dtype)
    self.decoder_alpha = self.param('decoder_alpha', nn.initializers.ones, (), cfg.param_dtype)
    if cfg.num_speakers:
      self.speaker_embedding = _transformer._param(
          self, 'speaker_embedding', nn.initializers.normal(cfg.hidden**-0.5),
          (cfg.num_speakers, cfg.hidden), ('speakers', 'embed'))
    self.encoder_blocks = [_TTSBlock(cfg) for _ in range(cfg.encoder_layers)]
    self.encoder_norm = _transformer._norm(cfg, None)
    self.decoder_prenet = _DecoderPrenet(cfg)
    self.decoder_blocks = [_TTSBlock(cfg, cross=True) for _ in range(cfg.decoder_layers)]
    self.decoder_norm = _transformer._norm(cfg, None)
    self.mel_projection = _dense(cfg, cfg.num_mels, ('embed', 'mel'), 'mel_projection')
    self.stop_projection = _dense(cfg, 1, ('embed', None), 'stop_projection')
    self.postnet_net = _Postnet(cfg)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _positions(self, positions: jax.Array, alpha: jax.Array, length: int,
                 rate: float = 1.0) -> jax.Array:
    """``alpha`` times the sinusoids at ``rate * positions [time]``, as ``[1, time, hidden]``."""
    table = jnp.asarray(_rated_sinusoids(length, self.config.hidden, rate))
    return alpha.astype(self.config.dtype) * jnp.take(table, positions, axis=0)[None].astype(
        self.config.dtype)

  def encode(self, phonemes: jax.Array, phoneme_mask: jax.Array, speaker: jax.Array | None = None,
             train: bool = False) -> jax.Array:
    """The encoder output ``[batch, phonemes, hidden]``, zero on padding.

    Args:
      phonemes: int ``[batch, phonemes]`` ids.
      phoneme_mask: bool ``[batch, phonemes]``, True on real phonemes.
      speaker: int ``[batch]`` when ``num_speakers > 0``.
      train: enables dropout (a ``'dropout'`` rng is then needed).
    """
    cfg = self.config
    _check_phonemes(phonemes, phoneme_mask, cfg.vocab_size, cfg.max_source_len)
    _check_speaker(speaker, phonemes.shape[0], cfg.num_speakers)
    x = jnp.take(self.embedding, phonemes, axis=0).astype(cfg.dtype)
    if cfg.encoder_prenet:
      for conv, norm in zip(self.prenet_convs, self.prenet_norms):
        x = nn.relu(norm(conv(_masked(x, phoneme_mask))))
        x = self.dropout(x, deterministic=not train)
      x = self.prenet_projection(x)
    x = x + self._positions(np.arange(phonemes.shape[1]), self.encoder_alpha, cfg.max_source_len)
    x = nn.with_logical_constraint(self.dropout(x, deterministic=not train),
                                   ('batch', 'length', 'embed'))
    mask = _transformer._key_mask(phoneme_mask)
    for block in self.encoder_blocks:
      x, _ = block(x, train, mask=mask)
    x = self.encoder_norm(x)
    if cfg.num_speakers:
      x = x + jnp.take(self.speaker_embedding, speaker, axis=0)[:, None].astype(cfg.dtype)
    return _masked(x, phoneme_mask)

  def _prenet_key(self, train: bool, prenet_key: jax.Array | None) -> jax.Array | None:
    cfg = self.config
    if cfg.prenet_dropout == 0.0 or not (train or cfg.prenet_dropout_at_inference):
      return None
    return prenet_key if prenet_key is not None else self.make_rng('dropout')

  def _head(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    hidden = nn.with_logical_constraint(self.decoder_norm(x), ('batch', 'length', 'embed'))
    mel = self.mel_projection(hidden).astype(jnp.float32)
    return mel, self.stop_projection(hidden)[..., 0].astype(jnp.float32)

  def decode_frames(self, encoded: jax.Array, phoneme_mask: jax.Array, frame_inputs: jax.Array,
                    train: bool = False, prenet_key: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The decoder over all frames at once (teacher forcing), without the post-net.

    Args:
      encoded: :meth:`encode`'s output ``[batch, phonemes, hidden]``.
      phoneme_mask: bool ``[batch, phonemes]``.
      frame_inputs: float ``[batch, frames, num_mels]``, the previous frames
        (:func:`shift_frames_right` of the targets).
      train: enables dropout.
      prenet_key: the pre-net's dropout key (else the ``'dropout'`` rng).

    Returns:
      ``(mel [batch, frames, num_mels], stop_logits [batch, frames],
      attention [batch, decoder_layers, heads, frames, phonemes])``, float32.
    """
    cfg = self.config
    _check_frames('frame_inputs', frame_inputs, encoded.shape[0], cfg.num_mels, cfg.max_frames)
    positions = jnp.arange(frame_inputs.shape[1])
    x = self.decoder_prenet(frame_inputs, positions, self._prenet_key(train, prenet_key))
    x = x + self._positions(positions, self.decoder_alpha, cfg.max_frames,
                            cfg.decoder_position_rate)
    x = nn.with_logical_constraint(self.dropout(x, deterministic=not train),
                                   ('batch', 'length', 'embed'))
    causal = _transformer._causal_mask(frame_inputs.shape[1])
    memory_mask = _transformer._key_mask(phoneme_mask)
    weights = []
    for block in self.decoder_blocks:
      x, probs = block(x, train, mask=causal, memory=encoded, memory_mask=memory_mask)
      weights.append(probs)
    mel, stop_logits = self._head(x)
    return mel, stop_logits, jnp.stack(weights, axis=1)

  def postnet(self, mels: jax.Array, frame_mask: jax.Array, train: bool = False) -> jax.Array:
    """``mels`` plus the post-net's residual, zero where ``frame_mask`` is False (float32)."""
    residual = self.postnet_net(mels, frame_mask, train)
    return _masked(mels + residual.astype(jnp.float32), frame_mask)

  def __call__(self, phonemes: jax.Array, phoneme_mask: jax.Array, mels: jax.Array, *,
               frame_mask: jax.Array | None = None, speaker: jax.Array | None = None,
               train: bool = False, prenet_key: jax.Array | None = None) -> dict[str, jax.Array]:
    """Teacher forcing: frame ``t`` is predicted from the target frames before it.

    Args:
      phonemes: int ``[batch, phonemes]``.
      phoneme_mask: bool ``[batch, phonemes]``.
      mels: float ``[batch, frames, num_mels]``, the target spectrogram.
      frame_mask: bool ``[batch, frames]`` (True on real frames) for the
        post-net; ``None`` means all frames are real.
      speaker: int ``[batch]`` when ``num_speakers > 0``.
      train: enables dropout.
      prenet_key: the decoder pre-net's dropout key (else the ``'dropout'`` rng).

    Returns:
      ``{'mel', 'mel_postnet': [batch, frames, num_mels], 'stop_logits':
      [batch, frames], 'attention': [batch, decoder_layers, heads, frames,
      phonemes]}``, float32.
    """
    _check_frames('mels', mels, jnp.shape(phonemes)[0], self.config.num_mels,
                  self.config.max_frames)
    encoded = self.encode(phonemes, phoneme_mask, speaker, train)
    mel, stop_logits, attention = self.decode_frames(
        encoded, phoneme_mask, shift_frames_right(mels), train, prenet_key)
    if frame_mask is None:
      frame_mask = jnp.ones(mel.shape[:2], bool)
    _checks.check_same_shape('frame_mask', frame_mask, 'stop_logits', stop_logits)
    return {'mel': mel, 'mel_postnet': self.postnet(mel, frame_mask, train),
            'stop_logits': stop_logits, 'attention': attention}

  def init_cache(self, encoded: jax.Array, phoneme_mask: jax.Array,
                 cache_length: int) -> dict[str, Any]:
    """The generation cache: the encoder-decoder keys and values, computed once.

    The layout is :class:`~kdjax.zoo.Seq2SeqTransformer`'s: ``{'source_mask',
    'layer_<i>': {'key', 'value' [batch, heads, cache_length, kv] zeros,
    'cross_key', 'cross_value' [batch, heads, phonemes, kv]}}``.
    """
    cfg = self.config
    _transformer._check_cache_length(cache_length, cfg.max_frames, 'max_frames')
    return _transformer._cross_attention_cache(cfg, self.decoder_blocks, encoded, cache_length,
                                               phoneme_mask)

  def decode_step(self, frame: jax.Array, position: jax.Array, cache: dict[str, Any],
                  prenet_key: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array, dict[str, Any]]:
    """One frame for every row, all at the same `position` (no dropout but the pre-net's).

    Args:
      frame: float ``[batch, 1, num_mels]``, the previous frame (zeros at 0).
      position: int32 scalar, the frame index being predicted.
      cache: from :meth:`init_cache` or the previous step.
      prenet_key: the pre-net's dropout key when its dropout is on at inference.

    Returns:
      ``(mel [batch, 1, num_mels], stop_logits [batch, 1], attention
      [batch, decoder_layers, heads, 1, phonemes], cache)``.
    """
    cfg = self.config
    position = jnp.asarray(position, jnp.int32)
    positions = jnp.full((frame.shape[0], 1), position, jnp.int32)
    x = self.decoder_prenet(frame, position[None], self._prenet_key(False, prenet_key))
    x = x + self._positions(position[None], self.decoder_alpha, cfg.max_frames,
                            cfg.decoder_position_rate)
    memory_mask = _transformer._key_mask(cache['source_mask'])
    new_cache = {'source_mask': cache['source_mask']}
    weights = []
    for i, block in enumerate(self.decoder_blocks):
      x, new_cache[f'layer_{i}'], probs = block.decode(x, positions, cache[f'layer_{i}'],
                                                      memory_mask)
      weights.append(probs)
    mel, stop_logits = self._head(x)
    return mel, stop_logits, jnp.stack(weights, axis=1), new_cache


@struct.dataclass
class SpeechGeneration:
  """What :func:`make_tts_generate` returns.

  Attributes:
    mels: float32 ``[batch, max_frames, num_mels]``, the post-net output,
      zero after each row's length.
    mels_before_postnet: float32 ``[batch, max_frames, num_mels]``, the
      frames the decoder fed itself, zero after each row's length.
    lengths: int32 ``[batch]``, frames up to and including the first whose
      stop probability exceeds the threshold (``max_frames`` if none does).
    attention: float32 ``[batch, decoder_layers, heads, max_frames,
      phonemes]``, the encoder-decoder attention of every generated frame
      (zero after the length): the input of :func:`extract_durations`.
    stop_probs: float32 ``[batch, max_frames]``.
  """

  mels: jax.Array
  mels_before_postnet: jax.Array
  lengths: jax.Array
  attention: jax.Array
  stop_probs: jax.Array

  @property
  def frame_mask(self) -> jax.Array:
    """bool ``[batch, max_frames]``: True on the generated frames."""
    return jnp.arange(self.mels.shape[1])[None] < self.lengths[:, None]


def make_tts_generate(
    model: TransformerTTS, *, max_frames: int, stop_threshold: float = 0.5,
    min_frames: int = 1,
) -> Callable[..., SpeechGeneration]:
  """A jitted ``generate(variables, phonemes, phoneme_mask, *, speaker=None, rng=None)``.

  The whole autoregressive loop is one ``jax.jit``, with the machinery of
  :mod:`kdjax.generate`: the encoder runs once, the cross-attention keys and
  values are cached once (:meth:`TransformerTTS.init_cache`, the cache
  layout of the zoo's encoder-decoder), then a ``lax.while_loop`` runs one
  frame per iteration, writing each layer's self-attention keys and values
  at the frame's slot and feeding the predicted frame (before the post-net)
  back. A row stops at the first frame whose stop probability exceeds
  `stop_threshold` (not before `min_frames`); the loop ends when every row
  has stopped or `max_frames` are made. The post-net then runs once over
  the generated spectrogram.

  Args:
    model: the teacher.
    max_frames: frames to allocate and the most to generate (``<=
      config.max_frames``).
    stop_threshold: the default stop probability that ends a row (a call
      may pass another; it is a traced value, so changing it does not
      recompile).
    min_frames: no row stops before this many frames.

  Returns:
    ``generate(variables, phonemes, phoneme_mask, *, speaker=None, rng=None,
    stop_threshold=...) -> SpeechGeneration``; `rng` is the pre-net's
    dropout key, needed when ``config.prenet_dropout_at_inference`` (a
    frame's mask is drawn from ``fold_in(rng, frame)``, as in teacher
    forcing with ``prenet_key=rng``; it also depends on the row's index in
    the batch).
  """
  cfg = model.config
  _transformer._check_cache_length(max_frames, cfg.max_frames, 'config.max_frames')
  _checks.check_positive_int('min_frames', min_frames)
  needs_rng = cfg.prenet_dropout_at_inference and cfg.prenet_dropout > 0.0
  default_threshold = stop_threshold

  def run(variables, phonemes, phoneme_mask, speaker, rng, stop_threshold):
    batch, num_phonemes = phonemes.shape
    encoded = model.apply(variables, phonemes, phoneme_mask, speaker,
                          method=TransformerTTS.encode)
    cache = model.apply(variables, encoded, phoneme_mask, max_frames,
                        method=TransformerTTS.init_cache)

    def body(carry):
      t, frame, cache, mels, stops, attention, lengths, done = carry
      mel, stop_logits, probs, cache = model.apply(
          variables, frame, t, cache, rng, method=TransformerTTS.decode_step)
      mels = lax.dynamic_update_slice(mels, mel, (0, t, 0))
      stop = jax.nn.sigmoid(stop_logits[:, 0])
      stops = lax.dynamic_update_slice(stops, stop[:, None], (0, t))
      attention = lax.dynamic_update_slice(attention, probs, (0, 0, 0, t, 0))
      lengths = lengths + (~done).astype(jnp.int32)
      done = done | ((stop > stop_threshold) & (t + 1 >= min_frames))
      return t + 1, mel, cache, mels, stops, attention, lengths, done

    def cond(carry):
      t, *_, done = carry
      return (t < max_frames) & ~jnp.all(done)

    carry = (
        jnp.int32(0), jnp.zeros((batch, 1, cfg.num_mels), jnp.float32), cache,
        jnp.zeros((batch, max_frames, cfg.num_mels), jnp.float32),
        jnp.zeros((batch, max_frames), jnp.float32),
        jnp.zeros((batch, cfg.decoder_layers, cfg.num_heads, max_frames, num_phonemes),
                  jnp.float32),
        jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool),
    )
    _, _, _, mels, stops, attention, lengths, _ = lax.while_loop(cond, body, carry)
    frame_mask = jnp.arange(max_frames)[None] < lengths[:, None]
    mels = _masked(mels, frame_mask)
    attention = attention * frame_mask[:, None, None, :, None]
    postnet = model.apply(variables, mels, frame_mask, method=TransformerTTS.postnet)
    return SpeechGeneration(mels=postnet, mels_before_postnet=mels, lengths=lengths,
                            attention=attention, stop_probs=stops)

  jitted = jax.jit(run)

  def generate(variables, phonemes, phoneme_mask, *, speaker=None, rng=None,
               stop_threshold=default_threshold):
    _check_phonemes(phonemes, phoneme_mask, cfg.vocab_size, cfg.max_source_len)
    _check_speaker(speaker, jnp.shape(phonemes)[0], cfg.num_speakers)
    if needs_rng and rng is None:
      raise ValueError('the teacher keeps its pre-net dropout on at inference '
                       '(prenet_dropout_at_inference=True): pass rng=jax.random.key(...).')
    return jitted(variables, phonemes, phoneme_mask, speaker, rng if needs_rng else None,
                  jnp.asarray(stop_threshold, jnp.float32))

  return generate


# ------------------------------------------------------- duration extraction


def _check_attention(attention: Any, src_mask: Any) -> tuple[int, ...]:
  _checks.check_floating('attention', attention)
  shape = tuple(jnp.shape(attention))
  if len(shape) != 5:
    raise ValueError('attention must be [batch, layers, heads, frames, phonemes], got shape '
                     f'{shape} (add axes for a single layer: attention[:, None]).')
  if tuple(jnp.shape(src_mask)) != (shape[0], shape[4]):
    raise ValueError(f'src_mask must be [batch, phonemes] = ({shape[0]}, {shape[4]}) for '
                     f'attention with shape {shape}, got shape {jnp.shape(src_mask)}.')
  return shape


def _frame_mask_of(lengths: Any, batch: int, frames: int, name: str) -> jax.Array:
  _checks.check_integer(name, lengths)
  if tuple(jnp.shape(lengths)) != (batch,):
    raise ValueError(f'{name} must be [batch] = ({batch},), got shape {jnp.shape(lengths)}.')
  if _checks.is_concrete(lengths):
    arr = np.asarray(lengths)
    if np.any(arr < 0) or np.any(arr > frames):
      raise ValueError(f'{name} must be in [0, frames={frames}], got {arr.tolist()}.')
  return jnp.arange(frames)[None] < jnp.asarray(lengths)[:, None]


def focus_rate(attention: jax.Array, src_mask: jax.Array, tgt_lengths: jax.Array) -> jax.Array:
  r"""FastSpeech's focus rate of each attention head: how diagonal (sharp) it is.

  .. math::
     F = \frac{1}{S} \sum_{s=1}^{S} \max_{1 \le t \le T} a_{s,t}

  where ``s`` runs over the ``S`` real frames (the paper's decoder steps)
  and ``t`` over the real phonemes: the mean over frames of the largest
  weight a frame puts on one phoneme. A head that attends to one phoneme
  per frame scores 1.

  Args:
    attention: float ``[batch, layers, heads, frames, phonemes]``, the
      encoder-decoder attention (:class:`SpeechGeneration`'s or teacher
      forcing's ``'attention'``).
    src_mask: bool ``[batch, phonemes]``, True on real phonemes.
    tgt_lengths: int ``[batch]``, real frames per example.

  Returns:
    float32 ``[batch, layers, heads]`` (0 for an example with no frames).

  References:
    Ren et al., "FastSpeech: Fast, Robust and Controllable Text to Speech"
    (2019), section 3.3, https://arxiv.org/abs/1905.09263.
  """
  batch, _, _, frames, _ = _check_attention(attention, src_mask)
  frame_mask = _frame_mask_of(tgt_lengths, batch, frames, 'tgt_lengths')
  weights = jnp.where(jnp.asarray(src_mask)[:, None, None, None, :],
                      jnp.asarray(attention, jnp.float32), 0.0)
  peaks = jnp.where(frame_mask[:, None, None, :], weights.max(axis=-1), 0.0)
  count = jnp.maximum(frame_mask.sum(axis=-1), 1)[:, None, None]
  return peaks.sum(axis=-1) / count


def _monotonic_owner(log_probs: jax.Array, frames: jax.Array, phonemes: jax.Array) -> jax.Array:
  """The monotonic path of largest summed ``log_probs [S, P]`` for one row, as each frame's phoneme.

  Viterbi over paths that start at phoneme 0 on frame 0, end at phoneme
  ``phonemes - 1`` on frame ``frames - 1``, and move on by at most one
  phoneme per frame (so every phoneme gets at least one frame). Frames from
  ``frames`` on get -1.
  """
  num_frames, num_phonemes = log_probs.shape
  floor = jnp.float32(-1e30)
  index = jnp.arange(num_phonemes)
  real = index < phonemes
  log_probs = jnp.where(real[None], log_probs, floor)
  first = jnp.where(index == 0, log_probs[0], floor)

  def forward(previous, row):
    stay = previous
    advance = jnp.concatenate([jnp.full((1,), floor), previous[:-1]])
    moved = advance > stay  # ties stay on the phoneme
    return row + jnp.where(moved, advance, stay), moved

  _, moved = lax.scan(forward, first, log_probs[1:])  # moved[s - 1]: frame s came from j - 1
  moved = jnp.concatenate([jnp.zeros((1, num_phonemes), bool), moved])

  def backward(j, s):
    inside = s < frames
    owner = jnp.where(inside, j, -1)
    step = jnp.where(inside & moved[s, jnp.maximum(j, 0)], 1, 0)
    return j - step, owner

  _, owners = lax.scan(backward, phonemes - 1, jnp.arange(num_frames), reverse=True)
  return owners


def monotonic_alignment(attention: jax.Array, src_mask: jax.Array,
                        tgt_lengths: jax.Array) -> jax.Array:
  r"""The monotonic alignment of largest likelihood under an attention matrix.

  Each frame ``s`` is assigned to one phoneme ``t(s)`` with ``t(0) = 0``,
  ``t(S - 1) = T - 1`` and ``t(s) - t(s - 1)`` in ``{0, 1}``, maximising
  ``sum_s log a[s, t(s)]``: dynamic programming as the monotonic alignment
  search of Glow-TTS (Kim et al., 2020), here over an autoregressive
  teacher's encoder-decoder attention instead of a flow's likelihoods. The
  argmax of each frame (FastSpeech) may jump back and forth and skip
  phonemes; this path cannot, and gives every phoneme at least one frame.
  A row with fewer real frames than phonemes has no such path: its frames
  then go to their argmax phoneme.

  Args:
    attention: float ``[batch, frames, phonemes]``, one head's weights (or
      an average of heads).
    src_mask: bool ``[batch, phonemes]``, True on real phonemes (a prefix of
      each row).
    tgt_lengths: int ``[batch]``, real frames per row.

  Returns:
    int32 ``[batch, frames]``: each real frame's phoneme, -1 on padded
    frames.

  References:
    Kim et al., "Glow-TTS: A Generative Flow for Text-to-Speech via
    Monotonic Alignment Search" (2020), https://arxiv.org/abs/2005.11129.
  """
  _checks.check_floating('attention', attention)
  shape = tuple(jnp.shape(attention))
  if len(shape) != 3:
    raise ValueError(f'attention must be [batch, frames, phonemes], got shape {shape}.')
  if tuple(jnp.shape(src_mask)) != (shape[0], shape[2]):
    raise ValueError(f'src_mask must be [batch, phonemes] = ({shape[0]}, {shape[2]}) for '
                     f'attention with shape {shape}, got shape {jnp.shape(src_mask)}.')
  _frame_mask_of(tgt_lengths, shape[0], shape[1], 'tgt_lengths')
  return _monotonic_owners(jnp.asarray(attention, jnp.float32), jnp.asarray(src_mask, bool),
                           jnp.asarray(tgt_lengths, jnp.int32))


@jax.jit
def _monotonic_owners(weights: jax.Array, src_mask: jax.Array, lengths: jax.Array) -> jax.Array:
  """:func:`monotonic_alignment` after its checks (one compilation per shape)."""
  log_probs = jnp.log(jnp.maximum(weights, jnp.finfo(jnp.float32).tiny))
  counts = src_mask.sum(-1).astype(jnp.int32)
  path = jax.vmap(_monotonic_owner)(log_probs, lengths, counts)
  argmax = jnp.argmax(jnp.where(src_mask[:, None, :], weights, -1.0), axis=-1)
  feasible = (lengths >= counts) & (counts > 0)
  owner = jnp.where(feasible[:, None], path, argmax)
  frame_mask = jnp.arange(weights.shape[1])[None] < lengths[:, None]
  return jnp.where(frame_mask, owner, -1).astype(jnp.int32)


def extract_durations(
    attention: jax.Array, src_mask: jax.Array, tgt_lengths: jax.Array, *,
    head: tuple[int, int] | str | None = None, method: str = 'argmax',
) -> tuple[jax.Array, jax.Array]:
  """Phoneme durations from a teacher's encoder-decoder attention (FastSpeech).

  The attention head with the highest :func:`focus_rate` (chosen per
  example, or the fixed ``(layer, head)`` given, e.g. the best one averaged
  over a dataset, or ``'mean'``: the average of every layer's heads) gives
  the alignment. With ``method='argmax'`` (FastSpeech) frame ``s`` belongs
  to the real phoneme it attends to most, ``argmax_t a_{s,t}`` (the first on
  a tie); with ``method='monotonic'`` to the phoneme of the most likely
  monotonic path through the attention (:func:`monotonic_alignment`, the
  Glow-TTS search), which never goes back or skips a phoneme. Phoneme
  ``t``'s duration is the number of real frames that belong to it. Every
  real frame belongs to exactly one real phoneme, so the durations of a
  row sum to its length exactly (unless the row has no real phoneme: then
  they are all 0), and padded phonemes get 0.

  Args:
    attention: float ``[batch, layers, heads, frames, phonemes]``.
    src_mask: bool ``[batch, phonemes]``, True on real phonemes.
    tgt_lengths: int ``[batch]``, real frames per example.
    head: ``(layer, head)`` to use for every example; ``'mean'`` for the
      average over layers and heads; ``None`` picks the highest focus rate
      per example.
    method: ``'argmax'`` or ``'monotonic'``.

  Returns:
    ``(durations int32 [batch, phonemes], chosen int32 [batch, 2])``: the
    durations and the ``(layer, head)`` each row used (``(-1, -1)`` for
    ``head='mean'``).

  References:
    Ren et al., "FastSpeech: Fast, Robust and Controllable Text to Speech"
    (2019), section 3.3, https://arxiv.org/abs/1905.09263; Kim et al.,
    "Glow-TTS" (2020), https://arxiv.org/abs/2005.11129.
  """
  batch, layers, heads, frames, phonemes = _check_attention(attention, src_mask)
  if method not in ('argmax', 'monotonic'):
    raise ValueError(f"method must be 'argmax' or 'monotonic', got {method!r}.")
  _frame_mask_of(tgt_lengths, batch, frames, 'tgt_lengths')
  if isinstance(head, str):
    if head != 'mean':
      raise ValueError(f"head must be (layer, head), 'mean' or None, got {head!r}.")
    mode, fixed = 'mean', (0, 0)
  elif head is None:
    mode, fixed = 'focus', (0, 0)
  else:
    layer, index = head
    if not (0 <= layer < layers and 0 <= index < heads):
      raise ValueError(f'head=(layer, head) must be within ({layers}, {heads}), got {head}.')
    mode, fixed = 'fixed', (layer, index)
  return _durations(jnp.asarray(attention, jnp.float32), jnp.asarray(src_mask, bool),
                    jnp.asarray(tgt_lengths, jnp.int32), jnp.asarray(fixed, jnp.int32),
                    mode=mode, method=method)


@functools.partial(jax.jit, static_argnames=('mode', 'method'))
def _durations(attention: jax.Array, src_mask: jax.Array, lengths: jax.Array, fixed: jax.Array,
               *, mode: str, method: str) -> tuple[jax.Array, jax.Array]:
  """:func:`extract_durations` after its checks; `fixed` is the (layer, head) of mode 'fixed'."""
  batch, _, heads, frames, phonemes = attention.shape
  frame_mask = jnp.arange(frames)[None] < lengths[:, None]
  if mode == 'mean':
    chosen = jnp.full((batch, 2), -1, jnp.int32)
    picked = attention.mean(axis=(1, 2))
  else:
    if mode == 'focus':
      flat = jnp.argmax(focus_rate(attention, src_mask, lengths).reshape(batch, -1), axis=-1)
      chosen = jnp.stack([flat // heads, flat % heads], axis=-1).astype(jnp.int32)
    else:
      chosen = jnp.broadcast_to(fixed, (batch, 2))
    picked = jax.vmap(lambda a, c: a[c[0], c[1]])(attention, chosen)
  if method == 'monotonic':
    owner = _monotonic_owners(picked, src_mask, lengths)
  else:
    owner = jnp.argmax(jnp.where(src_mask[:, None, :], picked, -1.0), axis=-1)
  # -1 (padded frames) one-hot encodes to zeros.
  one_hot = jax.nn.one_hot(owner, phonemes, dtype=jnp.int32) * frame_mask[..., None]
  # (Only a row without any real phoneme loses its frames here.)
  one_hot = one_hot * src_mask[:, None, :]
  return one_hot.sum(axis=1), chosen


# ----------------------------------------------------------------- applies


def _batch_value(batch: Mapping[str, Any], key: str | None, role: str) -> Any:
  if key is None:
    return None
  return _checks.batch_entry(batch, key, role)


def _optional(batch: Mapping[str, Any], key: str | None) -> Any:
  return None if key is None else batch.get(key)


def _call_teacher(module: TransformerTTS, inputs: dict[str, Any], train: bool = False):
  outputs = module(inputs['phonemes'], inputs['phoneme_mask'], inputs['mel'],
                   frame_mask=inputs['frame_mask'], speaker=inputs['speaker'], train=train)
  return Outputs(logits=None, features=outputs)


def transformer_tts_apply(
    model: TransformerTTS, *, phonemes: str = 'phonemes', phoneme_mask: str = 'phoneme_mask',
    mel: str = 'mel', frame_mask: str = 'frame_mask', speaker: str | None = 'speaker',
) -> adapters.Apply:
  """A kdjax ``apply`` for the teacher under teacher forcing.

  Reads the batch keys named; `speaker` is read when the batch holds it.
  ``Outputs.logits`` is ``None``; ``Outputs.features`` is the dict of
  :meth:`TransformerTTS.__call__` (``'mel'``, ``'mel_postnet'``,
  ``'stop_logits'``, ``'attention'``). Train it with
  :func:`kdjax.step.make_train_step` (no teacher) and the terms of
  :mod:`kdjax.objective` for speech (``mel_reconstruction`` on both mels,
  ``stop_token``).

  Returns:
    ``apply(variables, batch, *, train, rngs=None) -> (Outputs, new_state)``.
  """

  def inputs(batch):
    return {
        'phonemes': _batch_value(batch, phonemes, 'phonemes'),
        'phoneme_mask': _batch_value(batch, phoneme_mask, 'phoneme mask'),
        'mel': _batch_value(batch, mel, 'target mel'),
        'frame_mask': _batch_value(batch, frame_mask, 'frame mask'),
        'speaker': _optional(batch, speaker) if model.config.num_speakers else None,
    }

  return adapters.from_linen(model, inputs=inputs, method=_call_teacher)
