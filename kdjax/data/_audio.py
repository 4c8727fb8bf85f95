"""Speech features in NumPy: STFT, Slaney mel filterbank, log-mel, frame energy, pitch.

The conventions are FastSpeech 2's (Ren et al., 2021, and its reference
implementations): a centred STFT with a periodic Hann window, the
magnitude spectrogram projected on a mel filterbank and its natural log
(clamped at 1e-5), the frame energy the L2 norm of the frame's STFT
magnitudes. The mel filterbank is librosa's default (``htk=False,
norm='slaney'``): the Slaney (Auditory Toolbox) mel scale, linear below 1 kHz
and logarithmic above, and triangles scaled to equal area.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kdjax import _checks


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  """How audio becomes frames: sample rate, STFT and mel options.

  The defaults: 16 kHz audio (MBROLA's us1/us2 voices' own rate), a 10 ms
  hop (160 samples), a 50 ms Hann window (800 samples) zero-padded to a
  1024-point FFT, 80 mel bins from 0 Hz to Nyquist.
  """

  sample_rate: int = 16000
  n_fft: int = 1024
  win_length: int = 800
  hop_length: int = 160
  num_mels: int = 80
  fmin: float = 0.0
  fmax: float | None = None
  log_floor: float = 1e-5

  def to_json(self) -> dict[str, float | int | None]:
    return dataclasses.asdict(self)


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
  """The Slaney mel scale: ``3 f / 200`` below 1 kHz, logarithmic (27 steps per 6.4x) above."""
  hz = np.asarray(hz, np.float64)
  linear = hz / (200.0 / 3.0)
  log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
  return np.where(hz >= 1000.0, log_part, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
  """The inverse of :func:`hz_to_mel`."""
  mel = np.asarray(mel, np.float64)
  return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)),
                  mel * (200.0 / 3.0))


def mel_filterbank(config: FeatureConfig = FeatureConfig()) -> np.ndarray:
  """Slaney-style mel filters, librosa's default (``htk=False, norm='slaney'``).

  ``num_mels + 2`` points equally spaced on the mel scale from ``fmin`` to
  ``fmax`` are the edges and centres of the triangles; filter ``m`` rises
  from point ``m`` to ``m + 1`` and falls to ``m + 2``, evaluated at the FFT
  bin frequencies, and is scaled by ``2 / (f[m + 2] - f[m])`` (equal area).

  Args:
    config: the sample rate, FFT size and mel options.

  Returns:
    float32 ``[num_mels, n_fft // 2 + 1]``.

  References:
    Slaney (1998), Auditory Toolbox; librosa.filters.mel.
  """
  fmax = config.sample_rate / 2.0 if config.fmax is None else config.fmax
  if not 0.0 <= config.fmin < fmax <= config.sample_rate / 2.0:
    raise ValueError(
        f'need 0 <= fmin < fmax <= sample_rate / 2, got fmin={config.fmin}, fmax={fmax}, '
        f'sample_rate={config.sample_rate}')
  bins = np.linspace(0.0, config.sample_rate / 2.0, config.n_fft // 2 + 1)
  points = mel_to_hz(np.linspace(hz_to_mel(config.fmin), hz_to_mel(fmax), config.num_mels + 2))
  widths = np.diff(points)
  ramps = points[:, None] - bins[None, :]
  rising = -ramps[:-2] / widths[:-1, None]
  falling = ramps[2:] / widths[1:, None]
  filters = np.maximum(0.0, np.minimum(rising, falling))
  filters *= (2.0 / (points[2:] - points[:-2]))[:, None]
  return filters.astype(np.float32)


def analysis_window(config: FeatureConfig = FeatureConfig()) -> np.ndarray:
  """The STFT window: a periodic Hann of ``win_length`` samples centred in ``n_fft``, float32."""
  if not 0 < config.win_length <= config.n_fft:
    raise ValueError(f'need 0 < win_length <= n_fft, got {config.win_length}, {config.n_fft}')
  window = np.zeros(config.n_fft, np.float32)
  offset = (config.n_fft - config.win_length) // 2
  n = np.arange(config.win_length)
  window[offset:offset + config.win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * n / config.win_length)
  return window


def stft(audio: np.ndarray, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
  """The complex STFT of a centred, reflect-padded signal.

  Frame ``t`` is centred on sample ``t * hop_length``; there are ``1 +
  len(audio) // hop_length`` frames. The window is :func:`analysis_window`.

  Args:
    audio: float ``[samples]``.
    config: the STFT options.

  Returns:
    complex64 ``[frames, n_fft // 2 + 1]``.
  """
  audio = np.asarray(audio, np.float32)
  if audio.ndim != 1 or audio.size < 2:
    raise ValueError(f'audio must be 1-D with at least 2 samples, got shape {audio.shape}')
  window = analysis_window(config)
  pad = config.n_fft // 2
  padded = np.pad(audio, pad, mode='reflect' if audio.size > pad else 'constant')
  frames = 1 + audio.size // config.hop_length
  starts = np.arange(frames) * config.hop_length
  segments = padded[starts[:, None] + np.arange(config.n_fft)[None, :]] * window
  return np.fft.rfft(segments, axis=-1).astype(np.complex64)


def stft_magnitude(audio: np.ndarray, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
  """The magnitude of :func:`stft`: float32 ``[frames, n_fft // 2 + 1]``."""
  return np.abs(stft(audio, config)).astype(np.float32)


def log_mel_and_energy(
    audio: np.ndarray, config: FeatureConfig = FeatureConfig()
) -> tuple[np.ndarray, np.ndarray]:
  """FastSpeech 2's frame features: the log-mel spectrogram and the frame energy.

  Args:
    audio: float ``[samples]`` in [-1, 1].
    config: the feature options.

  Returns:
    ``(log_mel float32 [frames, num_mels], energy float32 [frames])``:
    ``log(max(mel @ |STFT|, log_floor))`` and the L2 norm of each frame's
    STFT magnitudes.

  References:
    Ren et al. (2021), FastSpeech 2, https://arxiv.org/abs/2006.04558.
  """
  magnitude = stft_magnitude(audio, config)
  mel = magnitude @ mel_filterbank(config).T
  log_mel = np.log(np.maximum(mel, config.log_floor)).astype(np.float32)
  return log_mel, np.linalg.norm(magnitude, axis=-1).astype(np.float32)


def estimate_pitch(
    audio: np.ndarray,
    config: FeatureConfig = FeatureConfig(),
    *,
    fmin: float = 60.0,
    fmax: float = 400.0,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
  """A per-frame F0 estimate from the normalised autocorrelation (for audio without targets).

  Each frame (``2.5 / fmin`` seconds centred on ``t * hop_length``) is
  mean-removed and Hann-windowed; its autocorrelation, divided by the
  window's own, peaks at the period and its multiples. The shortest lag
  between ``1 / fmax`` and ``1 / fmin`` whose peak is at least 0.9 of the
  highest (refined by a parabola through it) gives F0 where its normalised
  height exceeds `threshold`; other frames are unvoiced.

  Args:
    audio: float ``[samples]``.
    config: the sample rate and hop.
    fmin: lowest F0 searched, Hz.
    fmax: highest F0 searched, Hz.
    threshold: the least normalised autocorrelation of a voiced frame.

  Returns:
    ``(f0 float32 [frames], voiced bool [frames])``, ``frames = 1 +
    len(audio) // hop_length`` as :func:`stft_magnitude`; f0 is 0 where
    unvoiced.
  """
  _checks.check_positive('fmin', fmin)
  if fmax <= fmin:
    raise ValueError(f'need fmax > fmin, got fmin={fmin}, fmax={fmax}')
  audio = np.asarray(audio, np.float64)
  rate = config.sample_rate
  size = int(2.5 * rate / fmin)
  padded = np.pad(audio, size // 2)
  frames = 1 + audio.size // config.hop_length
  starts = np.arange(frames) * config.hop_length
  segments = padded[starts[:, None] + np.arange(size)[None, :]]
  segments = (segments - segments.mean(axis=1, keepdims=True)) * np.hanning(size)
  fft_size = 1 << int(np.ceil(np.log2(2 * size)))
  auto = np.fft.irfft(np.abs(np.fft.rfft(segments, fft_size)) ** 2, fft_size)[:, :size]
  window_auto = np.fft.irfft(np.abs(np.fft.rfft(np.hanning(size), fft_size)) ** 2, fft_size)[:size]
  normalised = auto / np.maximum(auto[:, :1], 1e-12) / np.maximum(window_auto / window_auto[0], 1e-3)
  low, high = int(rate / fmax), int(np.ceil(rate / fmin))
  search = normalised[:, low:high + 1]
  # The period is the shortest lag whose peak is near the highest: multiples
  # of the period peak nearly as high (octave errors).
  is_peak = np.zeros_like(search, bool)
  is_peak[:, 1:-1] = (search[:, 1:-1] >= search[:, :-2]) & (search[:, 1:-1] >= search[:, 2:])
  near_best = search >= 0.9 * search.max(axis=1, keepdims=True)
  candidates = is_peak & near_best
  lag = low + np.where(candidates.any(axis=1), np.argmax(candidates, axis=1),
                       np.argmax(search, axis=1))
  peak = normalised[np.arange(frames), lag]
  left = normalised[np.arange(frames), lag - 1]
  right = normalised[np.arange(frames), np.minimum(lag + 1, size - 1)]
  curvature = left - 2 * peak + right
  shift = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1), 0.0)
  voiced = (peak > threshold) & (auto[:, 0] > 1e-8)
  f0 = np.where(voiced, rate / (lag + shift), 0.0)
  return f0.astype(np.float32), voiced
