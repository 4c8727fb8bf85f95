"""FastSpeech 2 (and FastSpeech 1): a non-autoregressive text-to-mel student.

Ren et al. (2021), "FastSpeech 2: Fast and High-Quality End-to-End Text to
Speech", https://arxiv.org/abs/2006.04558: phoneme encoder (FFT blocks), a
variance adaptor (duration, pitch and energy predictors, the latter two
embedded by quantisation), the length regulator of FastSpeech (Ren et al.,
2019, https://arxiv.org/abs/1905.09263) and a mel decoder (FFT blocks).
With pitch and energy off the model is FastSpeech 1. Static shapes
throughout: ``max_frames`` output frames and a frame mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _checks
from kdjax import adapters
from kdjax._outputs import Outputs
from kdjax.zoo import _transformer
from kdjax.zoo._seq2seq import _sinusoids
from kdjax.zoo._tts import _batch_value
from kdjax.zoo._tts import _check_head_dim
from kdjax.zoo._tts import _check_phonemes
from kdjax.zoo._tts import _check_positive_fields
from kdjax.zoo._tts import _check_rate
from kdjax.zoo._tts import _check_speaker
from kdjax.zoo._tts import _conv
from kdjax.zoo._tts import _dense
from kdjax.zoo._tts import _layer_norm
from kdjax.zoo._tts import _masked
from kdjax.zoo._tts import _optional

_SCALES = ('linear', 'log')
_LEVELS = ('frame', 'phoneme')


# ---------------------------------------------------------- length regulator


def _check_durations(durations: Any, phoneme_mask: Any | None) -> None:
  _checks.check_integer('durations', durations)
  shape = tuple(jnp.shape(durations))
  if len(shape) != 2:
    raise ValueError(f'durations must be [batch, phonemes], got shape {shape}.')
  if phoneme_mask is not None:
    _checks.check_same_shape('durations', durations, 'phoneme_mask', phoneme_mask)
  _checks.check_nonnegative_entries('durations', durations, ' (frames per phoneme)')


def frame_phoneme_index(durations: jax.Array, max_frames: int,
                        phoneme_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Which phoneme each frame expands: the length regulator's index.

  Frame ``f`` of a row belongs to the phoneme ``t`` with ``sum(d[:t]) <= f <
  sum(d[:t + 1])``. A row's real frames are the first ``min(sum(d),
  max_frames)``: durations that add up to more than `max_frames` are cut at
  the end (the last phonemes lose their frames, the first ones keep theirs),
  as a spectrogram would be cropped. Durations of padded phonemes (where
  `phoneme_mask` is False) count as 0; negative durations raise when known
  at trace time and count as 0 under ``jit``.

  Args:
    durations: int ``[batch, phonemes]``, frames per phoneme.
    max_frames: the frame count of the output (static).
    phoneme_mask: optional bool ``[batch, phonemes]``.

  Returns:
    ``(index int32 [batch, max_frames], frame_mask bool [batch,
    max_frames])``; `index` is 0 on padded frames.
  """
  _check_durations(durations, phoneme_mask)
  _checks.check_positive_int('max_frames', max_frames)
  durations = jnp.maximum(jnp.asarray(durations, jnp.int32), 0)
  if phoneme_mask is not None:
    durations = jnp.where(phoneme_mask, durations, 0)
  ends = jnp.cumsum(durations, axis=-1)  # [batch, phonemes]
  frames = jnp.arange(max_frames, dtype=jnp.int32)
  index = (ends[:, None, :] <= frames[None, :, None]).sum(axis=-1).astype(jnp.int32)
  frame_mask = frames[None] < ends[:, -1:]
  return jnp.where(frame_mask, index, 0), frame_mask


def length_regulate(hidden: jax.Array, durations: jax.Array, max_frames: int,
                    phoneme_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """FastSpeech's length regulator: each phoneme's state repeated for its frames.

  Equals ``np.repeat(hidden[b], durations[b], axis=0)`` row by row, cut or
  zero-padded to `max_frames` (see :func:`frame_phoneme_index` for the rule
  when the durations add up to more).

  Args:
    hidden: ``[batch, phonemes, features]``.
    durations: int ``[batch, phonemes]``.
    max_frames: the frame count of the output (static).
    phoneme_mask: optional bool ``[batch, phonemes]`` (padded phonemes get 0 frames).

  Returns:
    ``(frames [batch, max_frames, features], frame_mask bool [batch,
    max_frames])``, frames zero where the mask is False.

  References:
    Ren et al., "FastSpeech: Fast, Robust and Controllable Text to Speech"
    (2019), section 3.2, https://arxiv.org/abs/1905.09263.
  """
  if jnp.ndim(hidden) != 3 or tuple(jnp.shape(hidden))[:2] != tuple(jnp.shape(durations)):
    raise ValueError(f'hidden must be [batch, phonemes, features] matching durations '
                     f'[batch, phonemes], got hidden {jnp.shape(hidden)} and durations '
                     f'{jnp.shape(durations)}.')
  index, frame_mask = frame_phoneme_index(durations, max_frames, phoneme_mask)
  frames = jnp.take_along_axis(hidden, index[..., None], axis=1)
  return _masked(frames, frame_mask), frame_mask


def phoneme_average(values: jax.Array, durations: jax.Array,
                    phoneme_mask: jax.Array | None = None) -> jax.Array:
  """Frame-level values ``[batch, frames]`` averaged over each phoneme's frames.

  The phoneme-level pitch and energy targets of FastSpeech 2's reference
  implementation (``variance_level='phoneme'``); a phoneme with no frame
  gets 0.

  Args:
    values: float ``[batch, frames]``.
    durations: int ``[batch, phonemes]``.
    phoneme_mask: optional bool ``[batch, phonemes]``.

  Returns:
    float32 ``[batch, phonemes]``.
  """
  _checks.check_floating('values', values)
  index, frame_mask = frame_phoneme_index(durations, jnp.shape(values)[1], phoneme_mask)
  one_hot = jax.nn.one_hot(index, jnp.shape(durations)[1], dtype=jnp.float32)
  one_hot = one_hot * frame_mask[..., None]
  sums = jnp.einsum('bf,bfp->bp', jnp.asarray(values, jnp.float32), one_hot)
  return sums / jnp.maximum(one_hot.sum(axis=1), 1.0)


def predicted_durations(log_durations: jax.Array, phoneme_mask: jax.Array,
                        duration_scale: float | jax.Array = 1.0) -> jax.Array:
  """Frames per phoneme from the duration predictor: ``round((exp(l) - 1) * scale)``, >= 0.

  The predictor works on ``l = log(d + 1)``; `duration_scale` (> 1 slower,
  < 1 faster) is FastSpeech's speed control. Padded phonemes get 0.
  """
  frames = jnp.round((jnp.exp(log_durations.astype(jnp.float32)) - 1.0) * duration_scale)
  return jnp.where(phoneme_mask, jnp.maximum(frames, 0.0), 0.0).astype(jnp.int32)


# ---------------------------------------------------------------- student


@dataclasses.dataclass(frozen=True)
class FastSpeechConfig:
  """The shape and options of a :class:`FastSpeech` student (FastSpeech 1 and 2).

  Pitch and energy are predicted and embedded in the units the targets are
  given in (z-scores of the training split are what the reference
  implementations use); `pitch_range` and `energy_range` bound the bins.

  Attributes:
    vocab_size: number of phoneme ids (0 pads).
    num_mels: mel bins per frame.
    hidden: the model width.
    num_heads: attention heads.
    encoder_layers: FFT blocks of the phoneme encoder.
    decoder_layers: FFT blocks of the mel decoder.
    conv_filter: the inner width of the FFT blocks' convolutional FFN.
    conv_kernels: the kernel widths of its two convolutions ((9, 1) as the
      reference implementations; the FastSpeech paper used (3, 3)).
    max_source_len: the most phonemes a source may have.
    max_frames: the frame count of the output spectrogram.
    dropout_rate: dropout in the FFT blocks.
    predictor_filter: the variance predictors' convolution width.
    predictor_kernel: their kernel width.
    predictor_dropout: their dropout (0.5 in the reference implementations).
    use_pitch: predict and embed pitch (FastSpeech 2).
    use_energy: predict and embed energy (FastSpeech 2). With both off the
      model is FastSpeech 1.
    variance_level: ``'frame'`` (the paper: pitch and energy per frame,
      after the length regulator) or ``'phoneme'`` (per phoneme, before it,
      targets from :func:`phoneme_average`).
    num_bins: quantisation bins of the pitch and energy embeddings.
    pitch_range: ``(low, high)``, the pitch bins' span.
    energy_range: ``(low, high)``, the energy bins' span.
    pitch_scale: ``'linear'`` or ``'log'`` (geometric) bin boundaries.
    energy_scale: ``'linear'`` or ``'log'``.
    num_speakers: 0 for one speaker; otherwise a speaker table is added to
      the encoder output.
    head_dim: the per-head width; ``None`` means ``hidden // num_heads``.
    dtype: the compute dtype; outputs are float32.
    param_dtype: the parameters' dtype.
  """

  vocab_size: int
  num_mels: int = 80
  hidden: int = 256
  num_heads: int = 2
  encoder_layers: int = 4
  decoder_layers: int = 4
  conv_filter: int = 1024
  conv_kernels: tuple[int, int] = (9, 1)
  max_source_len: int = 256
  max_frames: int = 1024
  dropout_rate: float = 0.2
  predictor_filter: int = 256
  predictor_kernel: int = 3
  predictor_dropout: float = 0.5
  use_pitch: bool = True
  use_energy: bool = True
  variance_level: str = 'frame'
  num_bins: int = 256
  pitch_range: tuple[float, float] = (-4.0, 4.0)
  energy_range: tuple[float, float] = (-4.0, 4.0)
  pitch_scale: str = 'linear'
  energy_scale: str = 'linear'
  num_speakers: int = 0
  head_dim: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  positions = 'sinusoidal'
  rope_base = 10_000.0

  def __post_init__(self):
    owner = 'FastSpeechConfig'
    _check_positive_fields(owner, self, (
        'vocab_size', 'num_mels', 'hidden', 'num_heads', 'encoder_layers', 'decoder_layers',
        'conv_filter', 'max_source_len', 'max_frames', 'predictor_filter', 'predictor_kernel'))
    _check_head_dim(owner, self)
    if self.hidden % 2:
      raise ValueError(f'{owner}.hidden must be even (sinusoidal positions), got {self.hidden}.')
    if len(self.conv_kernels) != 2 or any(int(k) <= 0 for k in self.conv_kernels):
      raise ValueError(f'{owner}.conv_kernels must be two positive ints, got {self.conv_kernels}.')
    _check_rate(owner, 'dropout_rate', self.dropout_rate)
    _check_rate(owner, 'predictor_dropout', self.predictor_dropout)
    if self.variance_level not in _LEVELS:
      raise ValueError(f'{owner}.variance_level must be one of {_LEVELS}, '
                       f'got {self.variance_level!r}.')
    if self.num_speakers < 0:
      raise ValueError(f'{owner}.num_speakers must be >= 0, got {self.num_speakers}.')
    if self.use_pitch or self.use_energy:
      if not isinstance(self.num_bins, int) or self.num_bins < 2:
        raise ValueError(f'{owner}.num_bins must be an int >= 2, got {self.num_bins!r}.')
      for name in ('pitch', 'energy'):
        variance_bins(*getattr(self, f'{name}_range'), self.num_bins,
                      getattr(self, f'{name}_scale'), name=f'{owner}.{name}')

  @property
  def kv_dim(self) -> int:
    """The per-head width: `head_dim`, or ``hidden // num_heads``."""
    return self.head_dim if self.head_dim is not None else self.hidden // self.num_heads


def variance_bins(low: float, high: float, num_bins: int, scale: str = 'linear', *,
                  name: str = 'variance') -> np.ndarray:
  """The ``num_bins - 1`` boundaries that quantise pitch or energy into `num_bins` bins.

  ``'linear'``: equally spaced from `low` to `high`; ``'log'``: equally
  spaced in log (needs ``low > 0``, e.g. pitch in Hz). A value below `low`
  falls in bin 0, above `high` in the last (FastSpeech 2, section 2.3).

  Returns:
    float32 ``[num_bins - 1]``, increasing.
  """
  if scale not in _SCALES:
    raise ValueError(f'{name} scale must be one of {_SCALES}, got {scale!r}.')
  if not low < high:
    raise ValueError(f'{name} range must have low < high, got ({low}, {high}).')
  if scale == 'log':
    if low <= 0:
      raise ValueError(f"{name} range must be positive for scale='log', got ({low}, {high}).")
    return np.geomspace(low, high, num_bins - 1).astype(np.float32)
  return np.linspace(low, high, num_bins - 1).astype(np.float32)


def quantize(values: jax.Array, boundaries: np.ndarray | jax.Array) -> jax.Array:
  """Bin ids in ``[0, len(boundaries)]``: how many boundaries are ``< value``."""
  return jnp.searchsorted(jnp.asarray(boundaries), values, side='left').astype(jnp.int32)


class _FFTBlock(nn.Module):
  """FastSpeech's feed-forward Transformer block (post-norm, as the paper).

  ``x = LN(x + attn(x)); x = LN(x + conv(ReLU(conv(x))))``, padded positions
  zeroed before each convolution so that they never leak into real ones.
  """

  config: Any

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate)
    attended = _transformer._Attention(cfg, name='attention')(x, _transformer._key_mask(mask))
    x = _layer_norm(cfg, 'embed', 'attention_norm')(x + drop(attended, deterministic=not train))
    x = _masked(x, mask)
    first, second = cfg.conv_kernels
    inner = nn.relu(_conv(cfg, cfg.conv_filter, first, ('embed', 'mlp'), 'conv_0')(x))
    inner = _conv(cfg, cfg.hidden, second, ('mlp', 'embed'), 'conv_1')(_masked(inner, mask))
    x = _layer_norm(cfg, 'embed', 'conv_norm')(x + drop(inner, deterministic=not train))
    return nn.with_logical_constraint(_masked(x, mask), ('batch', 'length', 'embed'))


class VariancePredictor(nn.Module):
  """FastSpeech 2's duration / pitch / energy predictor.

  Two times [Conv1D (ReLU) -> LayerNorm -> dropout], then a linear layer to
  one value per position, as the reference implementations; positions
  where `mask` is False give 0.

  Attributes:
    config: the :class:`FastSpeechConfig` (widths, kernel, dropout, dtypes).
  """

  config: FastSpeechConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    cfg = self.config
    for i in range(2):
      x = _conv(cfg, cfg.predictor_filter, cfg.predictor_kernel,
                ('embed' if i == 0 else 'mlp', 'mlp'), f'conv_{i}')(_masked(x, mask))
      x = _layer_norm(cfg, 'mlp', f'norm_{i}')(nn.relu(x))
      x = nn.Dropout(cfg.predictor_dropout)(x, deterministic=not train)
    out = _dense(cfg, 1, ('mlp', None), 'output')(x)[..., 0].astype(jnp.float32)
    return jnp.where(mask, out, 0.0)


class FastSpeech(nn.Module):
  """A FastSpeech 2 student (FastSpeech 1 with ``use_pitch=use_energy=False``).

  Phoneme embeddings plus sinusoidal positions run through the encoder's FFT
  blocks; the variance adaptor predicts ``log(d + 1)`` per phoneme and, with
  FastSpeech 2's options, pitch and energy, whose values (the targets when
  given, the predictions otherwise) are quantised into bins and embedded and
  added to the hidden sequence; the length regulator repeats each phoneme's
  state for its duration (the given durations, else the rounded predicted
  ones times `duration_scale`) into ``max_frames`` frames; positions are
  added again and the decoder's FFT blocks and a linear layer give the mel
  frames.

  Returns (``__call__``) a dict: ``'mel'`` float32 ``[batch, max_frames,
  num_mels]`` (zero on padded frames), ``'frame_mask'`` bool ``[batch,
  max_frames]``, ``'log_duration'`` ``[batch, phonemes]`` (the predictor's
  output), ``'durations'`` int32 ``[batch, phonemes]`` (those used), and
  ``'pitch'`` / ``'energy'`` (the predictions, ``[batch, max_frames]`` at
  frame level, ``[batch, phonemes]`` at phoneme level) when enabled.

  Parameters carry the logical axis names of
  :data:`~kdjax.zoo.TTS_LOGICAL_AXES`: embeddings ``('vocab' | 'speakers' |
  'bins', 'embed')``, attention as the zoo's Transformers, the FFT blocks'
  convolutions ``('embed', 'mlp')`` and ``('mlp', 'embed')``, the
  predictors' ``'mlp'`` channels, the mel projection ``('embed', 'mel')``.

  Attributes:
    config: the :class:`FastSpeechConfig`.

  References:
    Ren et al., "FastSpeech: Fast, Robust and Controllable Text to Speech"
    (2019), https://arxiv.org/abs/1905.09263; Ren et al., "FastSpeech 2:
    Fast and High-Quality End-to-End Text to Speech" (2021),
    https://arxiv.org/abs/2006.04558.
  """

  config: FastSpeechConfig

  def setup(self):
    cfg = self.config
    self.embedding = _transformer._param(
        self, 'embedding', nn.initializers.normal(cfg.hidden**-0.5),
        (cfg.vocab_size, cfg.hidden), ('vocab', 'embed'))
    if cfg.num_speakers:
      self.speaker_embedding = _transformer._param(
          self, 'speaker_embedding', nn.initializers.normal(cfg.hidden**-0.5),
          (cfg.num_speakers, cfg.hidden), ('speakers', 'embed'))
    self.encoder_blocks = [_FFTBlock(cfg) for _ in range(cfg.encoder_layers)]
    self.decoder_blocks = [_FFTBlock(cfg) for _ in range(cfg.decoder_layers)]
    self.duration_predictor = VariancePredictor(cfg)
    for name in self._variances():
      setattr(self, f'{name}_predictor', VariancePredictor(cfg))
      setattr(self, f'{name}_embedding', _transformer._param(
          self, f'{name}_embedding', nn.initializers.normal(cfg.hidden**-0.5),
          (cfg.num_bins, cfg.hidden), ('bins', 'embed')))
    self.mel_projection = _dense(cfg, cfg.num_mels, ('embed', 'mel'), 'mel_projection')

  def _variances(self) -> tuple[str, ...]:
    cfg = self.config
    return tuple(n for n, on in (('pitch', cfg.use_pitch), ('energy', cfg.use_energy)) if on)

  def _positions(self, length: int, max_len: int) -> jax.Array:
    return jnp.asarray(_sinusoids(max_len, self.config.hidden)[:length]).astype(self.config.dtype)

  def encode(self, phonemes: jax.Array, phoneme_mask: jax.Array,
             speaker: jax.Array | None = None, train: bool = False) -> jax.Array:
    """The phoneme encoder's output ``[batch, phonemes, hidden]``, zero on padding."""
    cfg = self.config
    _check_phonemes(phonemes, phoneme_mask, cfg.vocab_size, cfg.max_source_len)
    _check_speaker(speaker, phonemes.shape[0], cfg.num_speakers)
    x = jnp.take(self.embedding, phonemes, axis=0).astype(cfg.dtype)
    x = _masked(x + self._positions(phonemes.shape[1], cfg.max_source_len)[None], phoneme_mask)
    for block in self.encoder_blocks:
      x = block(x, phoneme_mask, train)
    if cfg.num_speakers:
      x = x + jnp.take(self.speaker_embedding, speaker, axis=0)[:, None].astype(cfg.dtype)
    return _masked(x, phoneme_mask)

  def _add_variance(self, name: str, x: jax.Array, mask: jax.Array, target: Any,
                    train: bool) -> tuple[jax.Array, jax.Array]:
    """Predicts `name` over ``x``, embeds the target (or the prediction) and adds it."""
    cfg = self.config
    prediction = getattr(self, f'{name}_predictor')(x, mask, train)
    if target is not None:
      _checks.check_floating(name, target)
      _checks.check_same_shape(name, target, f'its prediction ({cfg.variance_level} level)',
                               prediction)
      value = jnp.asarray(target, jnp.float32)
    else:
      value = prediction
    bins = variance_bins(*getattr(cfg, f'{name}_range'), cfg.num_bins,
                         getattr(cfg, f'{name}_scale'), name=name)
    embedded = jnp.take(getattr(self, f'{name}_embedding'), quantize(value, bins), axis=0)
    return x + _masked(embedded.astype(cfg.dtype), mask), prediction

  def __call__(self, phonemes: jax.Array, phoneme_mask: jax.Array, *,
               durations: jax.Array | None = None, pitch: jax.Array | None = None,
               energy: jax.Array | None = None, speaker: jax.Array | None = None,
               duration_scale: float | jax.Array = 1.0,
               train: bool = False) -> dict[str, jax.Array]:
    """Phonemes to a mel spectrogram through the variance adaptor.

    Args:
      phonemes: int ``[batch, phonemes]``.
      phoneme_mask: bool ``[batch, phonemes]``, True on real phonemes.
      durations: int ``[batch, phonemes]`` frames per phoneme (ground truth
        or a teacher's) for the length regulator; ``None`` uses the rounded
        predictions.
      pitch: float targets to embed (``[batch, max_frames]`` at frame level,
        ``[batch, phonemes]`` at phoneme level); ``None`` embeds the
        predictions. Ignored (must be ``None``) when ``use_pitch`` is off.
      energy: as `pitch`, for energy.
      speaker: int ``[batch]`` when ``num_speakers > 0``.
      duration_scale: multiplies the predicted durations (speed control).
      train: enables dropout (a ``'dropout'`` rng is then needed).

    Returns:
      The dict described in the class docstring.
    """
    cfg = self.config
    for name, value in (('pitch', pitch), ('energy', energy)):
      if value is not None and name not in self._variances():
        raise ValueError(f'{name} given but the model has use_{name}=False.')
    if durations is not None:  # checked before any work is done
      _check_durations(durations, phoneme_mask)
    x = self.encode(phonemes, phoneme_mask, speaker, train)
    log_duration = self.duration_predictor(x, phoneme_mask, train)
    if durations is None:
      durations = predicted_durations(log_duration, phoneme_mask, duration_scale)
    else:
      durations = jnp.where(phoneme_mask, jnp.maximum(jnp.asarray(durations, jnp.int32), 0), 0)
    outputs = {'log_duration': log_duration, 'durations': durations}
    targets = {'pitch': pitch, 'energy': energy}
    if cfg.variance_level == 'phoneme':
      for name in self._variances():
        x, outputs[name] = self._add_variance(name, x, phoneme_mask, targets[name], train)
    x, frame_mask = length_regulate(x, durations, cfg.max_frames, phoneme_mask)
    if cfg.variance_level == 'frame':
      for name in self._variances():
        x, outputs[name] = self._add_variance(name, x, frame_mask, targets[name], train)
    x = _masked(x + self._positions(cfg.max_frames, cfg.max_frames)[None], frame_mask)
    for block in self.decoder_blocks:
      x = block(x, frame_mask, train)
    mel = _masked(self.mel_projection(x).astype(jnp.float32), frame_mask)
    return {'mel': mel, 'frame_mask': frame_mask, **outputs}


# ----------------------------------------------------------------- apply


def _call_student(module: FastSpeech, inputs: dict[str, Any], train: bool = False):
  outputs = module(inputs['phonemes'], inputs['phoneme_mask'], durations=inputs['durations'],
                   pitch=inputs['pitch'], energy=inputs['energy'], speaker=inputs['speaker'],
                   duration_scale=inputs['duration_scale'], train=train)
  return Outputs(logits=None, features=outputs)


def fastspeech_apply(
    model: FastSpeech, *, phonemes: str = 'phonemes', phoneme_mask: str = 'phoneme_mask',
    durations: str | None = 'durations', pitch: str | None = 'pitch',
    energy: str | None = 'energy', speaker: str | None = 'speaker',
    duration_scale: float = 1.0,
) -> adapters.Apply:
  """A kdjax ``apply`` for the student, conditioned on the batch's variances.

  The student is given ``batch[durations]`` (and, when the model uses them,
  ``batch[pitch]`` and ``batch[energy]``) whenever the batch holds them
  (train and eval alike: the losses of the paper are computed this way);
  pass ``None`` for a key, or leave it out of the batch, to use the
  model's own predictions instead (free-running synthesis). So the three
  experiment variants differ only by what the batch holds: ground-truth
  mels and durations; a teacher's generated mels and extracted durations;
  ground truth with durations, pitch and energy.

  ``Outputs.logits`` is ``None``; ``Outputs.features`` is the dict of
  :meth:`FastSpeech.__call__`.

  Returns:
    ``apply(variables, batch, *, train, rngs=None) -> (Outputs, new_state)``.
  """
  cfg = model.config

  def inputs(batch):
    return {
        'phonemes': _batch_value(batch, phonemes, 'phonemes'),
        'phoneme_mask': _batch_value(batch, phoneme_mask, 'phoneme mask'),
        'durations': _optional(batch, durations),
        'pitch': _optional(batch, pitch) if cfg.use_pitch else None,
        'energy': _optional(batch, energy) if cfg.use_energy else None,
        'speaker': _optional(batch, speaker) if cfg.num_speakers else None,
        'duration_scale': duration_scale,
    }

  return adapters.from_linen(model, inputs=inputs, method=_call_student)
