"""Offline speech synthesis with espeak-ng and MBROLA, aligned frame for frame.

espeak-ng turns text into an MBROLA ``.pho`` script (``--pho``): one line
per phone, ``name duration_ms [position_% pitch_Hz]...``. MBROLA turns a
``.pho`` script into audio by diphone concatenation, realising each phone's
duration and the pitch targets exactly. So the phone sequence, the
durations and the pitch contour of the script *are* those of the audio.
Between the two steps the script is edited (:func:`perturb_phones`):
per-phone durations and the pitch range are drawn at random per utterance,
on top of espeak's own speed (``-s``) and pitch (``-p``) drawn likewise, so
one text has many renditions (the one-to-many problem of text to speech).

The tools come from Debian (:func:`fetch_speech_tools`): espeak-ng and
MBROLA with its us1 (female) and us2 (male) American English voices
(contrib and non-free), downloaded and unpacked into a cache directory,
never installed. (The us3 voice fails on some sentences and is not used.)
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import glob
import json
import os
import subprocess

import numpy as np

from kdjax.data import _audio
from kdjax.data import _debian

SILENCE = '_'
VOICES = ('us1', 'us2')
#: MBROLA's us voices' phones (SAMPA) that are never voiced: the unvoiced
#: stops (plain and aspirated), fricatives and affricate, h and silence.
UNVOICED_PHONES = frozenset(
    ('_', 'p', 'p_h', 't', 't_h', 'k', 'k_h', 'f', 'T', 's', 'S', 'tS', 'h'))
_TOOL_PACKAGES = ('espeak-ng', 'espeak-ng-data', 'libespeak-ng1', 'mbrola')
_PACKAGES_FILE = 'speech_packages.json'
#: The phones of MBROLA's us1/us2 voices (SAMPA, from ``mbrola -i``) and silence.
VOICE_PHONES = (
    '_', 'p', 'p_h', 't', 't_h', '4', 'k', 'k_h', 'b', 'd', 'g', 'f', 's', 'S', 'tS', 'T', 'v',
    'z', 'Z', 'dZ', 'D', 'm', 'n', 'N', 'l', 'r', 'j', 'w', 'h', 'r=', 'i', 'A', 'O', 'u', 'I',
    'E', '{', 'V', 'U', '@', 'EI', 'AI', 'OI', '@U', 'aU',
)
#: Phones espeak-ng writes for foreign words (about 1 in 5,000 phones) that
#: the us voices lack, and the voices' phone that stands in; any other
#: unknown phone becomes '@'.
PHONE_SUBSTITUTES = {
    'l/': 'l', 'e': 'EI', 'o': '@U', 'a': 'A', 'C': 'h', 'x': 'k', 'y': 'u', 'Y': 'U',
    '2': '@', '9': 'V', '?': 't',
}
#: The shortest phone MBROLA is given after editing, in ms.
MIN_PHONE_MS = 10
LEADING_SILENCE_MS = 100


# -------------------------------------------------------------------- tools


@dataclasses.dataclass(frozen=True)
class SpeechTools:
  """Paths of the unpacked espeak-ng and MBROLA, and the environment to run them in."""

  espeak: str
  mbrola: str
  voices: dict[str, str]  # voice name -> MBROLA database file
  env: dict[str, str]
  versions: dict[str, str]  # package -> Debian version


def _package_set(voices: Sequence[str], cache_dir: str, suite: str | None,
                 mirror: str) -> tuple[list[str], list[str]]:
  """The packages to unpack (the tools and the dependencies the system lacks), and apt options.

  The list is resolved once and recorded in the cache, so later calls
  need no apt at all while the ``.deb`` files are there.
  """
  record = os.path.join(cache_dir, _PACKAGES_FILE)
  wanted = [*_TOOL_PACKAGES, *(f'mbrola-{v}' for v in voices)]
  if os.path.exists(record):
    with open(record, encoding='utf-8') as f:
      packages = json.load(f)
    if set(wanted) <= set(packages) and all(
        glob.glob(os.path.join(cache_dir, 'debs', f'{p}_*.deb')) for p in packages):
      return packages, []
  options = _debian.private_apt_options(cache_dir, suite=suite, mirror=mirror)
  packages = sorted(set(wanted) | set(_debian.missing_packages(wanted, apt_options=options)))
  with open(record, 'w', encoding='utf-8') as f:
    json.dump(packages, f)
  return packages, options


def _link(target: str, link: str) -> None:
  if not os.path.lexists(link):
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)


def fetch_speech_tools(
    cache_dir: str | os.PathLike[str],
    *,
    voices: Sequence[str] = VOICES,
    suite: str | None = None,
    mirror: str = _debian.DEFAULT_MIRROR,
) -> SpeechTools:
  """Downloads and unpacks espeak-ng, MBROLA and its voices (with a private apt state).

  The packages (espeak-ng, espeak-ng-data, libespeak-ng1, mbrola,
  mbrola-<voice>, and the libraries among their dependencies that the
  system lacks, as ``apt-get -s install`` resolves them) are fetched with
  ``apt-get download`` from the suite's main, contrib and non-free
  components (:func:`~kdjax.data._debian.private_apt_options`) and
  unpacked with ``dpkg-deb -x`` under ``cache_dir``. Each voice is linked
  as ``espeak-ng-data/mbrola/<voice>``, where espeak-ng looks first.

  Args:
    cache_dir: the package cache (reused: nothing is fetched twice).
    voices: MBROLA voices, of ``'us1'``, ``'us2'``.
    suite: the Debian codename (the running system's when None).
    mirror: the Debian mirror.

  Returns:
    The :class:`SpeechTools`.

  Raises:
    kdjax.data.AptError: apt cannot reach or find the packages.
    RuntimeError: the unpacked espeak-ng does not run.
  """
  unknown = sorted(set(voices) - set(VOICES))
  if unknown or not voices:
    raise ValueError(f'voices must be a non-empty subset of {VOICES}, got {tuple(voices)}')
  cache_dir = os.path.abspath(os.fspath(cache_dir))
  packages, options = _package_set(voices, cache_dir, suite, mirror)
  fetched = _debian.fetch_packages(packages, cache_dir=cache_dir, apt_options=options)
  roots = {p: root for p, (_, root) in fetched.items()}
  data = glob.glob(os.path.join(roots['espeak-ng-data'], 'usr', 'lib', '*', 'espeak-ng-data'))
  if not data:
    raise RuntimeError(f'no espeak-ng-data directory under {roots["espeak-ng-data"]}')
  voice_files = {}
  for voice in voices:
    voice_files[voice] = os.path.join(roots[f'mbrola-{voice}'], 'usr', 'share', 'mbrola', voice, voice)
    _link(voice_files[voice], os.path.join(data[0], 'mbrola', voice))
  libraries = sorted({os.path.dirname(path) for root in roots.values()
                      for path in glob.glob(os.path.join(root, 'usr', 'lib', '**', '*.so*'),
                                            recursive=True)})
  env = dict(os.environ)
  env['ESPEAK_DATA_PATH'] = os.path.dirname(data[0])
  # espeak-ng starts `mbrola` from PATH to check a voice, even for --pho.
  env['PATH'] = os.pathsep.join([os.path.join(roots['mbrola'], 'usr', 'bin'), env.get('PATH', '')])
  env['LD_LIBRARY_PATH'] = os.pathsep.join(
      [*libraries, *filter(None, [os.environ.get('LD_LIBRARY_PATH')])])
  tools = SpeechTools(
      espeak=os.path.join(roots['espeak-ng'], 'usr', 'bin', 'espeak-ng'),
      mbrola=os.path.join(roots['mbrola'], 'usr', 'bin', 'mbrola'),
      voices=voice_files, env=env,
      versions={p: version for p, (version, _) in fetched.items()})
  espeak_phones('Test.', tools=tools, voice=voices[0], speed=175, pitch=50)
  return tools


# -------------------------------------------------------------- .pho files


@dataclasses.dataclass(frozen=True)
class Phone:
  """One line of a ``.pho`` script: a phone, its duration and its pitch targets."""

  name: str
  duration_ms: float
  pitch: tuple[tuple[float, float], ...] = ()  # (position in %, Hz)


def parse_pho(text: str) -> list[Phone]:
  """The phones of an MBROLA ``.pho`` script (comments ``;`` and blank lines skipped).

  Raises:
    ValueError: a line that is not ``name duration [position pitch]...``.
  """
  phones = []
  for number, line in enumerate(text.splitlines(), 1):
    fields = line.split(';', 1)[0].split()
    if not fields:
      continue
    try:
      values = [float(v) for v in fields[1:]]
    except ValueError:
      values = []
    if not values or len(values) % 2 != 1 or values[0] < 0:
      raise ValueError(f'.pho line {number} is not "name duration [position pitch]...": {line!r}')
    pitch = tuple(zip(values[1::2], values[2::2]))
    phones.append(Phone(fields[0], values[0], pitch))
  return phones


def format_pho(phones: Sequence[Phone]) -> str:
  """A ``.pho`` script of the phones (durations in whole ms, pitch in whole Hz)."""
  lines = []
  for phone in phones:
    targets = ''.join(f' {position:g} {hz:.0f}' for position, hz in phone.pitch)
    lines.append(f'{phone.name} {phone.duration_ms:.0f}{targets}')
  return '\n'.join(lines) + '\n'


def merge_silences(phones: Sequence[Phone], *, leading_ms: float = LEADING_SILENCE_MS) -> list[Phone]:
  """One silence phone per pause: runs of ``_`` merged, a leading silence added.

  Phones the voices lack are replaced (:data:`PHONE_SUBSTITUTES`, else
  ``@``) too, so
  the script MBROLA gets is the phone sequence recorded.

  espeak ends each clause with a pause and a 1 ms ``_``; a run of silences
  becomes one (durations summed, pitch targets dropped: silence has none).
  A silence is put first (MBROLA synthesises from the middle of the first
  phone's first diphone, so the first spoken phone needs one before it).
  """
  merged = [Phone(SILENCE, leading_ms)]
  for phone in phones:
    if phone.name == SILENCE and merged[-1].name == SILENCE:
      merged[-1] = Phone(SILENCE, merged[-1].duration_ms + phone.duration_ms)
    elif phone.name == SILENCE:
      merged.append(Phone(SILENCE, phone.duration_ms))
    else:
      name = phone.name if phone.name in VOICE_PHONES else PHONE_SUBSTITUTES.get(phone.name, '@')
      merged.append(dataclasses.replace(phone, name=name))
  return merged


# -------------------------------------------------------------- prosody


@dataclasses.dataclass(frozen=True)
class Prosody:
  """One utterance's random prosody: espeak's speed and pitch, the .pho edits."""

  voice: str
  speed: int  # espeak -s, words per minute
  pitch: int  # espeak -p, 0-99
  pitch_range: float  # pitch targets' deviations from their log-mean scaled by this
  duration_sigma: float  # per-phone log-normal duration factor's sigma
  pause_scale: float  # silences scaled by this


def draw_prosody(rng: np.random.Generator, *, voices: Sequence[str] = VOICES) -> Prosody:
  """Draws an utterance's prosody: voice uniform, speed 130-230 wpm, pitch 20-80, range 0.6-1.5.

  Per-phone durations get a log-normal factor with sigma 0.2 (0.1-0.3 per
  utterance) and pauses a factor 0.5-1.5.
  """
  return Prosody(
      voice=str(voices[rng.integers(len(voices))]),
      speed=int(rng.integers(130, 231)),
      pitch=int(rng.integers(20, 81)),
      pitch_range=float(np.exp(rng.uniform(np.log(0.6), np.log(1.5)))),
      duration_sigma=float(rng.uniform(0.1, 0.3)),
      pause_scale=float(rng.uniform(0.5, 1.5)),
  )


def perturb_phones(phones: Sequence[Phone], prosody: Prosody,
                   rng: np.random.Generator) -> list[Phone]:
  """Edits a ``.pho`` script: per-phone durations jittered, pitch range scaled, pauses scaled.

  Each spoken phone's duration is multiplied by ``exp(N(0, sigma^2))``
  and each silence's by ``pause_scale``; durations are rounded to whole ms
  and at least :data:`MIN_PHONE_MS`. Pitch targets ``f`` become ``m *
  (f / m) ** pitch_range`` with ``m`` the geometric mean of the
  utterance's targets, clipped to 50-400 Hz.
  """
  hz = np.array([p for phone in phones for _, p in phone.pitch], np.float64)
  log_mean = np.log(hz).mean() if hz.size else 0.0
  factors = np.exp(prosody.duration_sigma * rng.standard_normal(len(phones)))
  out = []
  for phone, factor in zip(phones, factors):
    scale = prosody.pause_scale if phone.name == SILENCE else factor
    duration = max(MIN_PHONE_MS, round(phone.duration_ms * scale))
    pitch = tuple(
        (position, float(np.clip(np.exp(log_mean + prosody.pitch_range * (np.log(f) - log_mean)),
                                 50.0, 400.0)))
        for position, f in phone.pitch)
    out.append(Phone(phone.name, duration, pitch))
  return out


# ---------------------------------------------------------------- running


def _run(command: Sequence[str], *, tools: SpeechTools, stdin: bytes, what: str) -> bytes:
  proc = subprocess.run(list(command), input=stdin, capture_output=True, env=tools.env,
                        check=False)
  if proc.returncode != 0:
    raise RuntimeError(
        f'{what} failed (exit {proc.returncode}): {" ".join(command)}\n'
        f'{proc.stderr.decode(errors="replace").strip()}')
  return proc.stdout


def espeak_phones(text: str, *, tools: SpeechTools, voice: str, speed: int, pitch: int) -> list[Phone]:
  """espeak-ng's MBROLA phones for `text` (``-v mb-<voice> --pho -s speed -p pitch``)."""
  out = _run([tools.espeak, '-v', f'mb-{voice}', '-q', '--pho', '-s', str(speed), '-p',
              str(pitch), '--stdin'], tools=tools, stdin=text.encode('utf-8'),
             what=f'espeak-ng on {text!r}')
  phones = parse_pho(out.decode('utf-8'))
  if not any(p.name != SILENCE for p in phones):
    raise ValueError(f'espeak-ng gave no phone for {text!r}')
  return phones


def mbrola_audio(phones: Sequence[Phone], *, tools: SpeechTools, voice: str) -> np.ndarray:
  """MBROLA's 16 kHz audio for a phone sequence, float32 in [-1, 1]."""
  raw = _run([tools.mbrola, '-e', tools.voices[voice], '-', '-.raw'], tools=tools,
             stdin=format_pho(phones).encode('ascii'), what=f'mbrola ({voice})')
  return np.frombuffer(raw, '<i2').astype(np.float32) / 32768.0


# -------------------------------------------------------------- alignment


def frame_durations(durations_ms: Sequence[float], *, sample_rate: int, hop_length: int) -> np.ndarray:
  """Phone durations in frames: the frames whose centres fall in each phone.

  Frame ``t`` is centred on sample ``t * hop_length``; phone ``k`` spans
  samples ``[s_k, e_k)``, so it owns frames ``ceil(s_k / hop) <= t <
  ceil(e_k / hop)``. The frames sum to ``ceil(total / hop)`` and a phone
  shorter than a hop may own none.

  Returns:
    int32 ``[phones]``.
  """
  ends = np.round(np.cumsum(np.asarray(durations_ms, np.float64)) * sample_rate / 1000.0)
  boundaries = -(-np.concatenate([[0], ends]).astype(np.int64) // hop_length)
  return np.diff(boundaries).astype(np.int32)


def pitch_targets_per_frame(phones: Sequence[Phone], num_frames: int, *, hop_ms: float) -> np.ndarray:
  """The ``.pho`` pitch contour at the frame centres (``t * hop_ms``), as MBROLA realises it.

  The targets (phone start + position% of its duration, Hz) are
  interpolated linearly, held constant before the first and after the
  last; an utterance with no target gives zeros.

  Returns:
    float32 ``[num_frames]`` in Hz.
  """
  times, hz, start = [], [], 0.0
  for phone in phones:
    for position, f in phone.pitch:
      times.append(start + position / 100.0 * phone.duration_ms)
      hz.append(f)
    start += phone.duration_ms
  if not times:
    return np.zeros(num_frames, np.float32)
  order = np.argsort(times, kind='stable')
  centres = np.arange(num_frames) * hop_ms
  return np.interp(centres, np.asarray(times)[order], np.asarray(hz)[order]).astype(np.float32)


def synthesize_utterance(
    text: str,
    *,
    tools: SpeechTools,
    rng: np.random.Generator,
    voices: Sequence[str] = VOICES,
    config: _audio.FeatureConfig = _audio.FeatureConfig(),
    return_audio: bool = False,
) -> dict[str, object]:
  """One randomised rendition of `text` with its aligned features.

  espeak-ng's phones under a random :class:`Prosody`, edited by
  :func:`perturb_phones`, synthesised by MBROLA and featurised. The
  spectrogram has exactly ``sum(durations)`` frames: the audio's own frame
  count (``1 + samples // hop``) is checked to be within one frame of it,
  and the audio zero-padded or cut to that many frames.

  Args:
    text: an English sentence.
    tools: from :func:`fetch_speech_tools`.
    rng: draws the prosody and the duration jitter.
    voices: the voices to draw from.
    config: the feature options; its sample rate must be MBROLA's 16 kHz.
    return_audio: also return the audio (``'audio'``, float32).

  Returns:
    ``{'phones': [str] * P, 'durations': int32 [P] (frames), 'mel': float32
    [T, num_mels], 'energy': float32 [T], 'pitch': float32 [T] (Hz, the
    .pho targets), 'voiced': bool [T] (frame in a voiced phone), 'prosody':
    Prosody, 'audio_frames': int (the audio's own frame count)}``, ``T =
    sum(durations)``.

  Raises:
    RuntimeError: the audio's length disagrees with the script's by more
      than one frame (the alignment would be wrong).
  """
  if config.sample_rate != 16000:
    raise ValueError(f'config.sample_rate must be MBROLA us voices\' 16000, got {config.sample_rate}')
  prosody = draw_prosody(rng, voices=voices)
  phones = espeak_phones(text, tools=tools, voice=prosody.voice, speed=prosody.speed,
                         pitch=prosody.pitch)
  phones = perturb_phones(merge_silences(phones), prosody, rng)
  audio = mbrola_audio(phones, tools=tools, voice=prosody.voice)
  durations = frame_durations([p.duration_ms for p in phones], sample_rate=config.sample_rate,
                              hop_length=config.hop_length)
  frames = int(durations.sum())
  audio_frames = 1 + audio.size // config.hop_length
  if abs(audio_frames - frames) > 1:
    raise RuntimeError(
        f'mbrola gave {audio.size} samples ({audio_frames} frames) for a script of {frames} '
        f'frames ({sum(p.duration_ms for p in phones):.0f} ms): {text!r}')
  audio = np.pad(audio, (0, max(0, (frames - 1) * config.hop_length + 1 - audio.size)))
  mel, energy = _audio.log_mel_and_energy(audio, config)
  voiced = np.repeat([p.name not in UNVOICED_PHONES for p in phones], durations)
  out = {
      'phones': [p.name for p in phones],
      'durations': durations,
      'mel': mel[:frames],
      'energy': energy[:frames],
      'pitch': pitch_targets_per_frame(phones, frames,
                                       hop_ms=1000.0 * config.hop_length / config.sample_rate),
      'voiced': voiced,
      'prosody': prosody,
      'audio_frames': audio_frames,
  }
  if return_audio:
    out['audio'] = audio
  return out
