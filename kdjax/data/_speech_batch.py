"""Speech examples as padded batches for the TTS models: masks, z-scored pitch and energy.

The speech dataset's examples have their own lengths; the models of
:mod:`kdjax.zoo` take static shapes (phonemes padded to ``max_phonemes``,
frames to ``max_frames``) with masks. Pitch and energy are standardised with
statistics of the training split's real frames, as FastSpeech 2's reference
implementations do (pitch in log Hz by default: its spread is a ratio).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any

import numpy as np

from kdjax import _checks


@dataclasses.dataclass(frozen=True)
class SpeechStats:
  """Means and standard deviations that z-score pitch and energy.

  Attributes:
    pitch_mean: mean of the pitch (log Hz when `log_pitch`) over real frames.
    pitch_std: its standard deviation.
    energy_mean: mean frame energy.
    energy_std: its standard deviation.
    log_pitch: whether pitch is standardised in log Hz.
  """

  pitch_mean: float
  pitch_std: float
  energy_mean: float
  energy_std: float
  log_pitch: bool = True

  def pitch(self, hz: np.ndarray) -> np.ndarray:
    """Pitch in Hz -> z-scores (float32)."""
    values = np.log(np.maximum(hz, 1e-5)) if self.log_pitch else np.asarray(hz, np.float64)
    return ((values - self.pitch_mean) / self.pitch_std).astype(np.float32)

  def pitch_hz(self, z: np.ndarray) -> np.ndarray:
    """z-scores -> pitch in Hz (the inverse of :meth:`pitch`)."""
    values = np.asarray(z, np.float64) * self.pitch_std + self.pitch_mean
    return (np.exp(values) if self.log_pitch else values).astype(np.float32)

  def energy(self, energy: np.ndarray) -> np.ndarray:
    """Frame energy -> z-scores (float32)."""
    return ((np.asarray(energy, np.float64) - self.energy_mean) / self.energy_std).astype(
        np.float32)


def speech_stats(examples: Sequence[Mapping[str, Any]], *, log_pitch: bool = True) -> SpeechStats:
  """The pitch and energy statistics of some examples' frames (the training split's).

  Args:
    examples: dicts with ``'pitch'`` (Hz, > 0) and ``'energy'``, ``[frames]`` each.
    log_pitch: standardise pitch in log Hz.

  Returns:
    A :class:`SpeechStats`.
  """
  if not examples:
    raise ValueError('speech_stats needs at least one example')
  pitch = np.concatenate([np.asarray(e['pitch'], np.float64) for e in examples])
  energy = np.concatenate([np.asarray(e['energy'], np.float64) for e in examples])
  if log_pitch:
    if np.any(pitch <= 0):
      raise ValueError(f'log_pitch needs pitch > 0 Hz everywhere, got a minimum of {pitch.min()}')
    pitch = np.log(pitch)
  return SpeechStats(float(pitch.mean()), float(max(pitch.std(), 1e-8)), float(energy.mean()),
                     float(max(energy.std(), 1e-8)), log_pitch)


def pad_speech_batch(
    examples: Sequence[Mapping[str, Any]], *, max_phonemes: int, max_frames: int,
    stats: SpeechStats | None = None,
) -> dict[str, np.ndarray]:
  """Examples of the speech dataset as one padded batch for the TTS models.

  Args:
    examples: dicts with ``'phonemes'`` and ``'durations'`` ``[P]``,
      ``'mel'`` ``[T, mels]``, and optionally ``'pitch'``, ``'energy'``
      ``[T]`` and ``'speaker'`` (an int).
    max_phonemes: the padded phoneme count.
    max_frames: the padded frame count.
    stats: z-scores pitch and energy when given (else they are kept as they are).

  Returns:
    ``phonemes`` int32 ``[B, max_phonemes]`` (0 pads), ``phoneme_mask``
    bool, ``durations`` int32 (0 on padding), ``mel`` float32 ``[B,
    max_frames, mels]``, ``frame_mask`` bool ``[B, max_frames]``,
    ``num_frames`` int32 ``[B]``, and when the examples have them ``pitch``,
    ``energy`` float32 ``[B, max_frames]`` (0 on padding) and ``speaker``
    int32 ``[B]``.

  Raises:
    ValueError: an example is longer than the maxima, or its durations do
      not sum to its frame count (naming the example).
  """
  _checks.check_positive_int('max_phonemes', max_phonemes)
  _checks.check_positive_int('max_frames', max_frames)
  if not examples:
    raise ValueError('pad_speech_batch needs at least one example')
  size = len(examples)
  num_mels = np.shape(examples[0]['mel'])[-1]
  batch = {
      'phonemes': np.zeros((size, max_phonemes), np.int32),
      'durations': np.zeros((size, max_phonemes), np.int32),
      'mel': np.zeros((size, max_frames, num_mels), np.float32),
      'num_frames': np.zeros(size, np.int32),
  }
  optional = [k for k in ('pitch', 'energy') if all(k in e for e in examples)]
  for key in optional:
    batch[key] = np.zeros((size, max_frames), np.float32)
  for i, example in enumerate(examples):
    phonemes = np.asarray(example['phonemes'])
    durations = np.asarray(example['durations'])
    mel = np.asarray(example['mel'])
    if len(phonemes) > max_phonemes or len(mel) > max_frames:
      raise ValueError(f'example {i} has {len(phonemes)} phonemes and {len(mel)} frames, more '
                       f'than max_phonemes={max_phonemes} or max_frames={max_frames}; filter '
                       'or bucket the examples by length first.')
    if durations.shape != phonemes.shape or durations.sum() != len(mel):
      raise ValueError(f'example {i}: durations with shape {durations.shape} summing to '
                       f'{durations.sum()} do not match {phonemes.shape[0]} phonemes and '
                       f'{len(mel)} frames.')
    batch['phonemes'][i, :len(phonemes)] = phonemes
    batch['durations'][i, :len(phonemes)] = durations
    batch['mel'][i, :len(mel)] = mel
    batch['num_frames'][i] = len(mel)
    if stats is not None:
      converted = {'pitch': stats.pitch, 'energy': stats.energy}
    else:
      converted = {'pitch': np.asarray, 'energy': np.asarray}
    for key in optional:
      batch[key][i, :len(mel)] = converted[key](np.asarray(example[key]))
  if all('speaker' in e for e in examples):
    batch['speaker'] = np.asarray([int(e['speaker']) for e in examples], np.int32)
  batch['phoneme_mask'] = np.arange(max_phonemes)[None] < np.asarray(
      [len(e['phonemes']) for e in examples])[:, None]
  batch['frame_mask'] = np.arange(max_frames)[None] < batch['num_frames'][:, None]
  return batch
