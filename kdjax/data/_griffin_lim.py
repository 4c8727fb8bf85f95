"""Spectrograms back to audio: inverse STFT, mel inversion, Griffin-Lim, wav files (NumPy).

The inverse of :mod:`kdjax.data._audio`'s front end, for listening to what a
text-to-speech model makes: a log-mel spectrogram becomes a magnitude
spectrogram through the pseudo-inverse of the mel filterbank, and the
magnitude becomes a signal by Griffin-Lim's alternating projections (with
the "fast" momentum of Perraudin et al.).
"""

from __future__ import annotations

import os
import wave

import numpy as np

from kdjax import _checks
from kdjax.data import _audio


def istft(spectrum: np.ndarray, config: _audio.FeatureConfig = _audio.FeatureConfig(),
          length: int | None = None) -> np.ndarray:
  """The least-squares inverse of :func:`kdjax.data.stft` (weighted overlap-add).

  Each frame's inverse FFT is windowed again, the frames are added at their
  hops and divided by the summed squared windows, and the centring pad is
  removed, so ``istft(stft(x)) == x`` (up to float error) wherever the
  windows cover the signal (Griffin & Lim, 1984, eq. 6).

  Args:
    spectrum: complex ``[frames, n_fft // 2 + 1]``.
    config: the STFT options the spectrum was made with.
    length: the number of samples to return; default ``(frames - 1) *
      hop_length``.

  Returns:
    float32 ``[length]``.
  """
  spectrum = np.asarray(spectrum)
  bins = config.n_fft // 2 + 1
  if spectrum.ndim != 2 or spectrum.shape[1] != bins:
    raise ValueError(f'spectrum must be [frames, n_fft // 2 + 1 = {bins}], got shape '
                     f'{spectrum.shape}')
  frames = spectrum.shape[0]
  window = _audio.analysis_window(config).astype(np.float64)
  segments = np.fft.irfft(spectrum.astype(np.complex128), n=config.n_fft, axis=-1) * window
  total = config.n_fft + (frames - 1) * config.hop_length
  signal = np.zeros(total)
  norm = np.zeros(total)
  index = np.arange(frames)[:, None] * config.hop_length + np.arange(config.n_fft)[None, :]
  np.add.at(signal, index, segments)
  np.add.at(norm, index, np.broadcast_to(window**2, segments.shape))
  signal = signal / np.where(norm > 1e-8, norm, 1.0)
  pad = config.n_fft // 2
  length = (frames - 1) * config.hop_length if length is None else length
  out = signal[pad:pad + length]
  return np.pad(out, (0, length - out.size)).astype(np.float32)


def mel_to_magnitude(log_mel: np.ndarray,
                     config: _audio.FeatureConfig = _audio.FeatureConfig()) -> np.ndarray:
  """A magnitude spectrogram from a log-mel one: the filterbank's pseudo-inverse, clipped at 0.

  Args:
    log_mel: float ``[frames, num_mels]``, natural log of mel energies (as
      :func:`kdjax.data.log_mel_and_energy` makes them).
    config: the feature options.

  Returns:
    float32 ``[frames, n_fft // 2 + 1]``: ``max(exp(log_mel) @ pinv(M).T, 0)``.
  """
  log_mel = np.asarray(log_mel, np.float64)
  if log_mel.ndim != 2 or log_mel.shape[1] != config.num_mels:
    raise ValueError(f'log_mel must be [frames, num_mels={config.num_mels}], got shape '
                     f'{log_mel.shape}')
  inverse = np.linalg.pinv(_audio.mel_filterbank(config).astype(np.float64))
  return np.maximum(np.exp(log_mel) @ inverse.T, 0.0).astype(np.float32)


def spectral_convergence(magnitude: np.ndarray, audio: np.ndarray,
                         config: _audio.FeatureConfig = _audio.FeatureConfig()) -> float:
  """``||S - |STFT(x)| ||_F / ||S||_F``: how well `audio` realises the magnitude `S`."""
  magnitude = np.asarray(magnitude, np.float64)
  rebuilt = np.abs(_audio.stft(audio, config)).astype(np.float64)
  frames = min(len(rebuilt), len(magnitude))
  error = np.linalg.norm(magnitude[:frames] - rebuilt[:frames])
  return float(error / max(np.linalg.norm(magnitude), 1e-12))


def griffin_lim(
    magnitude: np.ndarray, config: _audio.FeatureConfig = _audio.FeatureConfig(), *,
    iterations: int = 60, momentum: float = 0.99, seed: int = 0,
    length: int | None = None, history: list[float] | None = None,
) -> np.ndarray:
  """A signal whose STFT magnitude approaches `magnitude` (Griffin-Lim).

  From random phases, alternate: put the target magnitude under the current
  phases and invert (:func:`istft`), take the STFT of the result. With
  ``momentum > 0`` it is the fast Griffin-Lim of Perraudin et al. (2013):
  the new projection is extrapolated by ``momentum`` times its change
  (``momentum=0`` is the original algorithm, whose inconsistency never
  increases). As in Perraudin et al. the extrapolated spectrum is
  ``c_n + momentum (c_n - c_{n-1})``; only its phase is kept, so it is
  taken as ``c_n - momentum / (1 + momentum) c_{n-1}``.

  Args:
    magnitude: float ``[frames, n_fft // 2 + 1]``.
    config: the STFT options.
    iterations: projections to run.
    momentum: the fast Griffin-Lim's extrapolation, in [0, 1).
    seed: the initial phases' seed.
    length: samples to return; default ``(frames - 1) * hop_length``.
    history: if a list, :func:`spectral_convergence` after each iteration
      is appended to it (one more STFT per iteration).

  Returns:
    float32 ``[length]``.

  References:
    Griffin & Lim, "Signal Estimation from Modified Short-Time Fourier
    Transform" (1984), IEEE TASSP 32(2); Perraudin, Balazs & Sondergaard,
    "A Fast Griffin-Lim Algorithm" (2013), IEEE WASPAA.
  """
  _checks.check_positive_int('iterations', iterations)
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f'momentum must be in [0, 1), got {momentum}')
  magnitude = np.asarray(magnitude, np.float64)
  bins = config.n_fft // 2 + 1
  if magnitude.ndim != 2 or magnitude.shape[1] != bins:
    raise ValueError(f'magnitude must be [frames, n_fft // 2 + 1 = {bins}], got shape '
                     f'{magnitude.shape}')
  frames = magnitude.shape[0]
  length = (frames - 1) * config.hop_length if length is None else length
  if length // config.hop_length + 1 != frames:
    raise ValueError(f'length={length} gives {length // config.hop_length + 1} frames, the '
                     f'magnitude has {frames}')
  rng = np.random.default_rng(seed)
  angles = np.exp(2j * np.pi * rng.random(magnitude.shape))
  previous = np.zeros_like(angles)
  audio = istft(magnitude * angles, config, length)
  for _ in range(iterations):
    rebuilt = _audio.stft(audio, config).astype(np.complex128)
    accelerated = rebuilt - (momentum / (1.0 + momentum)) * previous if momentum else rebuilt
    previous = rebuilt
    angles = accelerated / np.maximum(np.abs(accelerated), 1e-12)
    audio = istft(magnitude * angles, config, length)
    if history is not None:
      history.append(spectral_convergence(magnitude, audio, config))
  return audio


def mel_to_audio(log_mel: np.ndarray, config: _audio.FeatureConfig = _audio.FeatureConfig(),
                 *, iterations: int = 60, momentum: float = 0.99, seed: int = 0) -> np.ndarray:
  """:func:`mel_to_magnitude` then :func:`griffin_lim`: float32 ``[(frames - 1) * hop]``."""
  return griffin_lim(mel_to_magnitude(log_mel, config), config, iterations=iterations,
                     momentum=momentum, seed=seed)


def write_wav(path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int, *,
              peak: float | None = 0.95) -> None:
  """Writes mono 16-bit PCM with the standard library's :mod:`wave`.

  Args:
    path: the file to write.
    audio: float ``[samples]``, nominally in [-1, 1] (clipped there).
    sample_rate: samples per second.
    peak: if set, the audio is first scaled so its largest magnitude is
      `peak` (silence stays silence); ``None`` keeps its level.
  """
  audio = np.asarray(audio, np.float64)
  if audio.ndim != 1:
    raise ValueError(f'audio must be 1-D [samples], got shape {audio.shape}')
  _checks.check_positive_int('sample_rate', sample_rate)
  if peak is not None:
    largest = np.max(np.abs(audio)) if audio.size else 0.0
    if largest > 0:
      audio = audio * (peak / largest)
  pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype('<i2')
  with wave.open(os.fspath(path), 'wb') as out:
    out.setnchannels(1)
    out.setsampwidth(2)
    out.setframerate(sample_rate)
    out.writeframes(pcm.tobytes())
