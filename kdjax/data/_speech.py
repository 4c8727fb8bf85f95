"""The offline speech dataset for FastSpeech-style text to speech, and its LJSpeech form.

Config ``'mbrola'`` (offline): English sentences from the machine's prose
(:mod:`kdjax.data._sentences`) synthesised by espeak-ng and MBROLA with
random prosody (:mod:`kdjax.data._synthesis`); every example carries its
phonemes, their durations in frames, and frame-level log-mel, energy and
pitch that line up with them. Synthesis runs in chunks, each written
atomically, so an interrupted build resumes at the first missing chunk.

Config ``'full'``: LJSpeech through TFDS (``tfds.data_source('ljspeech')``,
for users with network), resampled to 16 kHz and featurised alike; its
phonemes are espeak-ng's for the text, its pitch is estimated from the
audio, and it has no durations (zeros): they must come from an aligner or
from a teacher's attention (FastSpeech).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import concurrent.futures
import functools
import glob
import hashlib
import itertools
import json
import os
import re
from typing import Any
import zlib

import numpy as np
import tensorflow_datasets as tfds

from kdjax import _checks
from kdjax.data import _audio
from kdjax.data import _builder
from kdjax.data import _debian
from kdjax.data import _sentences
from kdjax.data import _synthesis
from kdjax.data import _text

#: Phoneme ids: 0 pads, then silence and MBROLA's us voices' SAMPA phones.
PHONEMES = ('<pad>', *_synthesis.VOICE_PHONES)
PHONEME_PAD_ID = 0
#: Bumped when synthesis or featurisation changes, so older chunks are not reused.
SYNTHESIS_VERSION = 2
SPEECH_SPLITS = ('train', 'validation', 'test')
VOCAB_FILE = 'phonemes.json'
METADATA_FILE = 'speech_metadata.json'
#: The Python documentation's metapackage; its python3.X-doc dependency holds the text.
PYTHON_DOC_PACKAGE = 'python3-doc'
_FRAME_KEYS = ('mel', 'energy', 'pitch', 'voiced')
_PROSODY_KEYS = ('speed', 'pitch_base', 'pitch_range', 'duration_sigma', 'pause_scale')


def default_cache_dir() -> str:
  """Where packages and synthesis chunks go by default: ``$KDJAX_CACHE/speech`` or ``~/.cache/kdjax/speech``."""
  root = os.environ.get('KDJAX_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'kdjax')
  return os.path.join(root, 'speech')


def encode_phonemes(phones: Sequence[str]) -> np.ndarray:
  """Phone names to ids of :data:`PHONEMES`; an unknown phone raises ValueError naming it."""
  index = {name: i for i, name in enumerate(PHONEMES)}
  unknown = sorted({p for p in phones if p not in index or p == PHONEMES[0]})
  if unknown:
    raise ValueError(f'phones {unknown} are not in the phoneme vocabulary {PHONEMES[1:]}')
  return np.asarray([index[p] for p in phones], np.int32)


# ---------------------------------------------------------------- sentences


def speech_sentences(
    cache_dir: str | os.PathLike[str], *, apt_options: Sequence[str]
) -> tuple[list[tuple[str, str]], dict[str, int]]:
  """The machine's English sentences: Python docs, licences, Debian descriptions.

  Downloads and unpacks the suite's python3.X-doc (the dependency of
  :data:`PYTHON_DOC_PACKAGE`) into `cache_dir` and reads the
  ``Translation-en`` lists of the private apt state.

  Returns:
    ``([(document, sentence)], {source: sentences})``.
  """
  versioned = [p for p in _debian.package_depends(PYTHON_DOC_PACKAGE, apt_options=apt_options)
               if re.fullmatch(r'python3\.\d+-doc', p)]
  if not versioned:
    raise RuntimeError(f'{PYTHON_DOC_PACKAGE} depends on no python3.X-doc package')
  (_, root), = _debian.fetch_packages(versioned[:1], cache_dir=cache_dir,
                                      apt_options=apt_options).values()
  sources = glob.glob(os.path.join(root, 'usr', 'share', 'doc', 'python3*', 'html', '_sources'))
  if not sources:
    raise RuntimeError(f'{versioned[0]} has no html/_sources directory under {root}')
  lists = sorted(glob.glob(os.path.join(_debian.lists_dir(apt_options), '*_i18n_Translation-en*')))
  if not lists:
    raise RuntimeError(f'no Translation-en package list in {_debian.lists_dir(apt_options)}')
  documents = {
      'python-doc': _sentences.read_documents(sources[0], '**/*.rst.txt', 'python-doc'),
      'license': _sentences.read_documents(_sentences.LICENSES_DIR, '*', 'license'),
      'debian': itertools.chain.from_iterable(
          _sentences.debian_descriptions(_debian.read_list_file(path)) for path in lists),
  }
  pairs = _sentences.collect_sentences(itertools.chain.from_iterable(documents.values()))
  counts = {name: sum(d.startswith(name + '/') for d, _ in pairs) for name in documents}
  return pairs, counts


def select_utterances(
    sentences: Sequence[tuple[str, str]], *, num: int, seed: int, renditions: int = 1
) -> list[tuple[str, str]]:
  """`num` utterances: sentences in a seeded hash order, each repeated `renditions` times.

  The order is ``crc32(f'{seed}:{sentence}')``, so it does not depend on
  the order of `sentences`; consecutive utterances are renditions of one
  sentence (each gets its own random prosody).
  """
  _checks.check_positive_int('num', num)
  _checks.check_positive_int('renditions', renditions)
  needed = -(-num // renditions)
  if needed > len(sentences):
    raise ValueError(f'num={num} with renditions={renditions} needs {needed} sentences, '
                     f'only {len(sentences)} are available')
  ordered = sorted(sentences, key=lambda p: (zlib.crc32(f'{seed}:{p[1]}'.encode()), p))
  return [pair for pair in ordered[:needed] for _ in range(renditions)][:num]


# ------------------------------------------------------------------- chunks


def _pack(made: Sequence[dict[str, Any] | str]) -> dict[str, np.ndarray]:
  """Utterances as one chunk's flat arrays (variable lengths concatenated), failures apart."""
  utterances = [u for u in made if not isinstance(u, str)]
  num_mels = _audio.FeatureConfig().num_mels
  empty = {'phones': [], 'durations': np.zeros(0, np.int32),
           'mel': np.zeros((0, num_mels), np.float32), 'energy': np.zeros(0, np.float32),
           'pitch': np.zeros(0, np.float32), 'voiced': np.zeros(0, np.bool_)}
  rows = utterances or [empty]  # a chunk whose every utterance failed
  packed = {
      'failed': np.asarray([u for u in made if isinstance(u, str)], str),
      'text': np.asarray([u['text'] for u in utterances], str),
      'document': np.asarray([u['document'] for u in utterances], str),
      'phonemes': np.concatenate([encode_phonemes(u['phones']) for u in rows]),
      'durations': np.concatenate([u['durations'] for u in rows]).astype(np.int32),
      'num_phonemes': np.asarray([len(u['phones']) for u in utterances], np.int32),
      'num_frames': np.asarray([len(u['energy']) for u in utterances], np.int32),
      'audio_frames': np.asarray([u['audio_frames'] for u in utterances], np.int32),
      'speaker': np.asarray([_synthesis.VOICES.index(u['prosody'].voice) for u in utterances],
                            np.int32),
  }
  for key in _FRAME_KEYS:
    packed[key] = np.concatenate([u[key] for u in rows])
  names = ('speed', 'pitch', 'pitch_range', 'duration_sigma', 'pause_scale')
  for key, name in zip(_PROSODY_KEYS, names):
    packed[key] = np.asarray([getattr(u['prosody'], name) for u in utterances],
                             np.int32 if key in ('speed', 'pitch_base') else np.float32)
  return packed


def unpack_chunk(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
  """A chunk's arrays as one example dict per utterance (the builder's features)."""
  phone_ends = np.cumsum(arrays['num_phonemes'])
  frame_ends = np.cumsum(arrays['num_frames'])
  examples = []
  for i in range(len(arrays['text'])):
    phones = slice(phone_ends[i] - arrays['num_phonemes'][i], phone_ends[i])
    frames = slice(frame_ends[i] - arrays['num_frames'][i], frame_ends[i])
    example = {key: arrays[key][phones] for key in ('phonemes', 'durations')}
    example.update({key: arrays[key][frames] for key in _FRAME_KEYS})
    example.update({key: arrays[key][i] for key in (
        'text', 'document', 'num_phonemes', 'num_frames', 'speaker', *_PROSODY_KEYS)})
    examples.append(example)
  return examples


def _synthesize_row(row: int, document: str, text: str, *, tools: _synthesis.SpeechTools,
                    seed: int, voices: Sequence[str], config: _audio.FeatureConfig) -> dict | str:
  """The utterance, or (when espeak-ng or mbrola fail on it) a line saying why."""
  rng = np.random.default_rng([seed, row])
  try:
    utterance = _synthesis.synthesize_utterance(text, tools=tools, rng=rng, voices=voices,
                                                 config=config)
  except (RuntimeError, ValueError) as e:
    return f'utterance {row} ({text!r}): {e}'
  return {**utterance, 'text': text, 'document': document}


def chunk_fingerprint(
    utterances: Sequence[tuple[str, str]], *, tools: _synthesis.SpeechTools, seed: int,
    chunk_size: int, voices: Sequence[str],
    config: _audio.FeatureConfig = _audio.FeatureConfig()) -> str:
  """A digest of everything a build's chunks depend on (the tools' versions included)."""
  return hashlib.sha256(json.dumps(
      [SYNTHESIS_VERSION, list(map(list, utterances)), seed, chunk_size, list(voices), config.to_json(),
       sorted(tools.versions.items())]).encode()).hexdigest()[:16]


def synthesize_chunks(
    utterances: Sequence[tuple[str, str]],
    chunk_dir: str,
    *,
    tools: _synthesis.SpeechTools,
    seed: int,
    chunk_size: int = 50,
    voices: Sequence[str] = _synthesis.VOICES,
    config: _audio.FeatureConfig = _audio.FeatureConfig(),
    workers: int = 2,
    log: Callable[[str], None] | None = None,
) -> list[str]:
  """Synthesises and featurises the utterances in chunks, resumably; returns the chunk paths.

  Chunk ``i`` holds utterances ``[i * chunk_size, (i + 1) * chunk_size)``;
  it is written whole (a temporary file renamed) and skipped when already
  there, so a rebuild continues from the first missing chunk. Utterance
  ``j`` draws its prosody from ``np.random.default_rng([seed, j])``: a
  chunk's content does not depend on which chunks were made before it. An
  utterance that espeak-ng or mbrola fail on (or whose audio disagrees with
  its script) is left out and recorded in the chunk's ``failed`` array,
  so one bad sentence cannot stop a long build on every rerun.
  `chunk_dir` remembers a fingerprint of everything the chunks depend on
  and refuses chunks of another build.

  Args:
    utterances: ``(document, sentence)`` pairs.
    chunk_dir: where the chunks go.
    tools: from :func:`~kdjax.data.fetch_speech_tools`.
    seed: the prosody seed.
    chunk_size: utterances per chunk.
    voices: MBROLA voices to draw from.
    config: the feature options.
    workers: utterances synthesised at once (threads running espeak-ng and
      mbrola processes).
    log: called with a progress line per chunk made.

  Returns:
    The chunk files, in order.
  """
  _checks.check_positive_int('chunk_size', chunk_size)
  _checks.check_positive_int('workers', workers)
  digest = chunk_fingerprint(utterances, tools=tools, seed=seed, chunk_size=chunk_size,
                             voices=voices, config=config)
  _builder.claim_chunk_dir(chunk_dir, digest, {
      'num_utterances': len(utterances), 'chunk_size': chunk_size, 'seed': seed})
  paths = []
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for lo in range(0, len(utterances), chunk_size):
      path = os.path.join(chunk_dir, f'chunk_{lo // chunk_size:06d}.npz')
      if not os.path.exists(path):
        rows = range(lo, min(lo + chunk_size, len(utterances)))
        made = list(pool.map(lambda j: _synthesize_row(
            j, *utterances[j], tools=tools, seed=seed, voices=voices, config=config), rows))
        _builder.atomic_savez(path, **_pack(made))
        if log:
          log(f'speech chunk {lo // chunk_size + 1}/{-(-len(utterances) // chunk_size)}')
      paths.append(path)
  return paths


def chunk_failures(paths: Sequence[str]) -> list[str]:
  """The utterances left out of chunk files, with the reason."""
  failed = []
  for path in paths:
    with np.load(path, allow_pickle=False) as saved:
      failed.extend(str(line) for line in saved['failed'])
  return failed


def read_chunks(paths: Sequence[str]) -> list[dict[str, Any]]:
  """The examples of chunk files, in order."""
  examples = []
  for path in paths:
    with np.load(path, allow_pickle=False) as saved:
      examples.extend(unpack_chunk({key: saved[key] for key in saved.files}))
  return examples


def document_splits(documents: Sequence[str], *, val_fraction: float,
                    test_fraction: float) -> dict[str, str]:
  """``{document: 'train' | 'validation' | 'test'}`` by a hash of its name (:func:`kdjax.data.split_files`)."""
  by_name = _text.split_files(sorted(set(documents)), val_fraction=val_fraction,
                              test_fraction=test_fraction)
  names = dict(zip(_text.TEXT_SPLITS, SPEECH_SPLITS))
  return {d: names[split] for split, docs in by_name.items() for d in docs}


def _chunk_documents(path: str) -> list[str]:
  with np.load(path, allow_pickle=False) as saved:
    return [str(d) for d in saved['document']]


# ------------------------------------------------------------ full: LJSpeech


def featurize_recording(
    speech: np.ndarray,
    text: str,
    *,
    document: str,
    sample_rate: int,
    tools: _synthesis.SpeechTools,
    config: _audio.FeatureConfig = _audio.FeatureConfig(),
) -> dict[str, Any]:
  """A recording without alignment featurised as the synthesised examples.

  The audio is resampled to the config's rate (``scipy.signal.resample_poly``);
  mel and energy as for the synthesised data; pitch estimated from the
  audio (:func:`kdjax.data.estimate_pitch`, 0 where unvoiced) with its
  voicing; phonemes are espeak-ng's for the text (``mb-us1``, pauses
  merged, no leading silence), durations zeros (unknown: they must come
  from an aligner or a teacher's attention).

  Args:
    speech: int16 ``[samples]``.
    text: the (normalised) transcript.
    document: the unit the splits keep whole.
    sample_rate: the recording's rate.
    tools: espeak-ng for the phonemes.
    config: the feature options.

  Returns:
    An example dict, as :func:`unpack_chunk` gives them.
  """
  # Imported here: scipy.signal takes 1.5-2 s to import, which every process
  # importing kdjax.data would otherwise pay for this one function.
  import scipy.signal  # pylint: disable=g-import-not-at-top

  step = int(np.gcd(sample_rate, config.sample_rate))
  audio = scipy.signal.resample_poly(np.asarray(speech, np.float32) / 32768.0,
                                     config.sample_rate // step, sample_rate // step)
  mel, energy = _audio.log_mel_and_energy(audio.astype(np.float32), config)
  pitch, voiced = _audio.estimate_pitch(audio, config)
  phones = _synthesis.merge_silences(_synthesis.espeak_phones(
      text, tools=tools, voice=_synthesis.VOICES[0], speed=175, pitch=50), leading_ms=0)
  phonemes = encode_phonemes([p.name for p in phones if p.duration_ms > 0])
  return {
      'phonemes': phonemes, 'durations': np.zeros(len(phonemes), np.int32),
      'mel': mel, 'energy': energy, 'pitch': pitch, 'voiced': voiced,
      'text': text, 'document': document,
      'num_phonemes': len(phonemes), 'num_frames': len(energy), 'speaker': 0,
      'speed': 0, 'pitch_base': 0, 'pitch_range': 0.0, 'duration_sigma': 0.0,
      'pause_scale': 0.0,
  }


def ljspeech_examples(
    *,
    tools: _synthesis.SpeechTools,
    data_dir: str | None = None,
    config: _audio.FeatureConfig = _audio.FeatureConfig(),
    download: bool = True,
    limit: int | None = None,
) -> list[dict[str, Any]]:
  """LJSpeech (``tfds.data_source('ljspeech')``) featurised by :func:`featurize_recording`.

  For users with network; TFDS's ``Audio`` feature needs TensorFlow
  installed. The document of a recording is its chapter (``LJ001``), so a
  chapter goes to one split.

  Args:
    tools: espeak-ng for the phonemes.
    data_dir: the TFDS data directory.
    config: the feature options.
    download: let TFDS download and prepare LJSpeech (2.6 GB).
    limit: read only the first `limit` recordings.

  Returns:
    One example dict per recording.
  """
  source = tfds.data_source('ljspeech', split='train', data_dir=data_dir, download=download)
  examples = []
  for i in range(len(source) if limit is None else min(limit, len(source))):
    record = source[i]
    examples.append(featurize_recording(
        record['speech'], _text_of(record['text_normalized']),
        document=_text_of(record['id']).split('-')[0], sample_rate=22050, tools=tools,
        config=config))
  return examples


def _text_of(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------ builder

_DESCRIPTION = """\
Speech for FastSpeech-style text to speech, made offline: English sentences
from a Debian machine's prose (the Python documentation, the licence texts,
Debian's package descriptions) synthesised by espeak-ng through the MBROLA
us1 and us2 voices with random speed, pitch, pitch range, per-phone durations
and pauses per utterance. espeak-ng's .pho script gives every phone's exact
duration and pitch targets, so phonemes, durations (frames), log-mel, energy
and pitch line up frame for frame. 16 kHz, 10 ms hop, 80 log-mel bins.
Config 'full' is LJSpeech (TFDS 'ljspeech', network needed) featurised
alike, with pitch estimated from the audio and no durations.
See kdjax's docs/data.md.
"""


class SpeechConfig(tfds.core.BuilderConfig):
  """'mbrola' (offline synthesis) or 'full' (LJSpeech)."""


class SpeechFeatures(_builder.OfflineArrayBuilder):
  """Phonemes, durations, log-mel, energy and pitch for text to speech (FastSpeech 2).

  Registered in the TFDS catalogue as 'speech_features' when `kdjax.data`
  is imported. An example: ``phonemes`` int32 ``[P]`` (ids of
  :data:`PHONEMES`, the build's ``phonemes.json``), ``durations`` int32
  ``[P]`` (frames; they sum to ``num_frames``), ``mel`` float32 ``[T,
  80]``, ``energy``, ``pitch`` (Hz) float32 ``[T]``, ``voiced`` bool
  ``[T]``, ``num_phonemes``, ``num_frames``, ``speaker`` (0 us1, 1 us2),
  the prosody drawn (``speed``, ``pitch_base``, ``pitch_range``,
  ``duration_sigma``, ``pause_scale``), ``text`` and ``document``.

  Config 'mbrola' fetches espeak-ng and MBROLA
  (:func:`~kdjax.data.fetch_speech_tools`) and the sentences
  (:func:`speech_sentences`) into `cache_dir`, selects `num` utterances
  (:func:`select_utterances`), synthesises them in resumable chunks under
  ``cache_dir/chunks/<fingerprint>`` (:func:`synthesize_chunks`) and splits them by
  document. `chunk_files` builds from chunks made before (the shipped
  sample), `sentences` from given ``(document, sentence)`` pairs. Config
  'full' reads LJSpeech from `ljspeech_data_dir`.

  Args:
    num: utterances to synthesise.
    seed: the selection and prosody seed.
    renditions: utterances per sentence.
    voices: MBROLA voices.
    cache_dir: packages and chunks (:func:`default_cache_dir` when None).
    chunk_size: utterances per chunk.
    workers: utterances synthesised at once.
    sentences: ``(document, sentence)`` pairs instead of the machine's.
    chunk_files: build from these chunk files, synthesising nothing.
    val_fraction: share of documents held out for validation.
    test_fraction: share of documents held out for test.
    ljspeech_data_dir: the TFDS data directory holding LJSpeech ('full').
    ljspeech_limit: featurise only the first recordings ('full').
    log: progress lines.
    **kwargs: for ``tfds.core.GeneratorBasedBuilder``.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: espeak-ng 1.51 + MBROLA us1/us2, Debian 12.'}
  BUILDER_CONFIGS = [
      SpeechConfig(name='mbrola', description='espeak-ng + MBROLA synthesis, offline'),
      SpeechConfig(name='full', description='LJSpeech, 16 kHz, estimated pitch, no durations'),
  ]
  DESCRIPTION = _DESCRIPTION
  HOMEPAGE = 'https://github.com/espeak-ng/espeak-ng'
  LICENSE = 'Sentences: their packages\' licences; MBROLA voices: non-commercial use'
  SUPERVISED_KEYS = ('phonemes', 'mel')

  def __init__(
      self,
      *,
      num: int = 2000,
      seed: int = 0,
      renditions: int = 1,
      voices: Sequence[str] = _synthesis.VOICES,
      cache_dir: str | os.PathLike[str] | None = None,
      chunk_size: int = 50,
      workers: int = 2,
      sentences: Sequence[tuple[str, str]] | None = None,
      chunk_files: Sequence[str] | None = None,
      val_fraction: float = 0.05,
      test_fraction: float = 0.05,
      ljspeech_data_dir: str | None = None,
      ljspeech_limit: int | None = None,
      log: Callable[[str], None] | None = None,
      **kwargs: Any,
  ):
    self._options = dict(num=num, seed=seed, renditions=renditions, voices=tuple(voices),
                         chunk_size=chunk_size, workers=workers)
    self._cache_dir = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    self._sentences = None if sentences is None else [tuple(s) for s in sentences]
    self._chunk_files = None if chunk_files is None else [os.fspath(p) for p in chunk_files]
    self._fractions = dict(val_fraction=val_fraction, test_fraction=test_fraction)
    self._ljspeech = dict(data_dir=ljspeech_data_dir, limit=ljspeech_limit)
    self._log = log
    super().__init__(**kwargs)

  def _features(self) -> tfds.features.FeaturesDict:
    config = _audio.FeatureConfig()
    frames = lambda dtype: tfds.features.Tensor(shape=(None,), dtype=dtype)  # noqa: E731
    features = {
        'phonemes': frames(np.int32), 'durations': frames(np.int32),
        'mel': tfds.features.Tensor(shape=(None, config.num_mels), dtype=np.float32),
        'energy': frames(np.float32), 'pitch': frames(np.float32), 'voiced': frames(np.bool_),
        'text': tfds.features.Text(), 'document': tfds.features.Text(),
    }
    for key in ('num_phonemes', 'num_frames', 'speaker', 'speed', 'pitch_base'):
      features[key] = tfds.features.Scalar(dtype=np.int32)
    for key in ('pitch_range', 'duration_sigma', 'pause_scale'):
      features[key] = tfds.features.Scalar(dtype=np.float32)
    return tfds.features.FeaturesDict(features)

  def _sources(self) -> tuple[list[Callable[[], list[dict[str, Any]]]], list[str], dict]:
    """Loaders of the examples (one per chunk), their documents in order, and the build record."""
    if self.builder_config.name == 'full':
      tools = _synthesis.fetch_speech_tools(self._cache_dir, voices=_synthesis.VOICES[:1])
      examples = ljspeech_examples(tools=tools, **self._ljspeech)
      return [lambda: examples], [e['document'] for e in examples], {'source': 'ljspeech'}
    if self._chunk_files is not None:
      paths, record = self._chunk_files, {'chunk_files': self._chunk_files}
    else:
      paths, record = self._synthesize()
    loaders = [functools.partial(read_chunks, [path]) for path in paths]
    return loaders, [d for path in paths for d in _chunk_documents(path)], record

  def _synthesize(self) -> tuple[list[str], dict[str, Any]]:
    """Fetches the tools and sentences and makes the chunks; their paths and the build record."""
    tools = _synthesis.fetch_speech_tools(self._cache_dir, voices=self._options['voices'])
    record = {'packages': tools.versions}
    sentences = self._sentences
    if sentences is None:
      options = _debian.private_apt_options(self._cache_dir)
      sentences, record['sentences'] = speech_sentences(self._cache_dir, apt_options=options)
    options = self._options
    utterances = select_utterances(sentences, num=options['num'], seed=options['seed'],
                                   renditions=options['renditions'])
    keys = dict(seed=options['seed'], chunk_size=options['chunk_size'], voices=options['voices'])
    chunk_dir = os.path.join(self._cache_dir, 'chunks',
                             chunk_fingerprint(utterances, tools=tools, **keys))
    paths = synthesize_chunks(utterances, chunk_dir, tools=tools, workers=options['workers'],
                              log=self._log, **keys)
    return paths, {**record, **options, 'failed': chunk_failures(paths)}

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    # Examples stream from the chunks, one chunk in memory at a time, so a
    # build's size is not bounded by memory.
    del dl_manager
    loaders, documents, record = self._sources()
    split_of = document_splits(documents, **self._fractions)
    counts = {name: sum(split_of[d] == name for d in documents) for name in SPEECH_SPLITS}
    # self.data_dir is TFDS's temporary build directory here: the files
    # appear with the dataset when it is renamed into place.
    os.makedirs(self.data_dir, exist_ok=True)
    _builder.write_json(os.path.join(self.data_dir, VOCAB_FILE), list(PHONEMES))
    _builder.write_json(os.path.join(self.data_dir, METADATA_FILE), {
        'config': self.builder_config.name, 'features': _audio.FeatureConfig().to_json(),
        'pitch': 'audio estimate' if self.builder_config.name == 'full' else '.pho targets',
        'examples': counts, **record})
    return {name: self._split_examples(loaders, split_of, name)
            for name in SPEECH_SPLITS if counts[name]}

  def _split_examples(self, loaders, split_of, split) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (key, example) of one split, in build order, key the example's position."""
    index = 0
    for load in loaders:
      for example in load():
        if split_of[str(example['document'])] == split:
          yield index, {k: np.asarray(v).item() if np.ndim(v) == 0 else v
                        for k, v in example.items()}
          index += 1


def phoneme_vocabulary(source_or_dir: Any) -> list[str]:
  """The phoneme names of a built speech dataset, id order (its ``phonemes.json``).

  Args:
    source_or_dir: a data source from :func:`~kdjax.data.load_source`, or
      the dataset's version directory.
  """
  info = getattr(source_or_dir, 'dataset_info', None)
  directory = os.fspath(info.data_dir if info is not None else source_or_dir)
  with open(os.path.join(directory, VOCAB_FILE), encoding='utf-8') as f:
    return json.load(f)
