"""Tests for the offline speech dataset: features, .pho alignment, synthesis, builder."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax import data as kdata
from kdjax.data import _debian
from kdjax.data import _sentences
from kdjax.data import _speech
from kdjax.data import _synthesis

# The shipped sample: SENTENCES synthesised by kdata.synthesize_speech_chunks
# (seed 0, one chunk of 5) and saved with np.savez_compressed. Regenerated on
# 2026-12-06 it was identical, array for array, to the first one made.
SAMPLE = os.path.join(os.path.dirname(__file__), 'data', 'speech_sample.npz')
SENTENCES = (
    ('doc/a', 'The quick brown fox jumps over the lazy dog, twice.'),
    ('doc/b', 'Classes provide a means of bundling data together.'),
    ('doc/c', 'This package provides utilities, scripts and examples.'),
    ('doc/d', 'Permission is hereby granted, free of charge.'),
    ('doc/e', 'Objects have individuality.'),
)


@pytest.fixture(scope='module')
def tools():
  """espeak-ng and MBROLA unpacked in the shared cache (fetched once: about 30 MB, 10 s)."""
  try:
    return kdata.fetch_speech_tools(kdata.speech_cache_dir())
  except kdata.AptError as e:
    pytest.skip(f'espeak-ng/MBROLA cannot be fetched here: {e}')


# ------------------------------------------------------------------ features


def _slaney_mel(hz):
  # Slaney's Auditory Toolbox: 66.67 Hz per mel below 1 kHz, then 27 log
  # steps per factor 6.4 (librosa's hz_to_mel with htk=False).
  return hz * 3 / 200 if hz < 1000 else 15 + 27 * math.log(hz / 1000) / math.log(6.4)


def _slaney_hz(mel):
  return mel * 200 / 3 if mel < 15 else 1000 * 6.4 ** ((mel - 15) / 27)


def test_mel_filterbank_matches_an_independent_formula():
  config = kdata.FeatureConfig(sample_rate=16000, n_fft=512, num_mels=40, fmin=30.0,
                               fmax=7000.0)
  filters = kdata.mel_filterbank(config)
  low, high = _slaney_mel(30.0), _slaney_mel(7000.0)
  edges = [_slaney_hz(low + (high - low) * i / 41) for i in range(42)]
  expected = np.zeros((40, 257))
  for m in range(40):
    left, centre, right = edges[m:m + 3]
    for k in range(257):
      f = k * 16000 / 512
      if left < f < right:
        weight = (f - left) / (centre - left) if f <= centre else (right - f) / (right - centre)
        expected[m, k] = weight * 2 / (right - left)
  np.testing.assert_allclose(filters, expected, rtol=1e-5, atol=1e-8)
  # Slaney normalisation: every triangle has unit area in Hz (wide ones resolve it).
  area = filters.sum(axis=1) * 16000 / 512
  np.testing.assert_allclose(area[20:], 1.0, rtol=0.02)


def test_a_sine_lands_in_its_bins_and_energy_is_the_frame_norm():
  config = kdata.FeatureConfig()
  t = np.arange(16000) / 16000
  audio = 0.5 * np.sin(2 * np.pi * 1000 * t)
  magnitude = kdata.stft_magnitude(audio, config)
  log_mel, energy = kdata.log_mel_and_energy(audio, config)
  assert magnitude.shape == (1 + 16000 // 160, 513) and log_mel.shape == (101, 80)
  assert np.all(np.argmax(magnitude[5:-5], axis=1) == 64)  # 1000 Hz / (16000 / 1024)
  filters = kdata.mel_filterbank(config)
  assert np.all(np.argmax(log_mel[5:-5], axis=1) == np.argmax(filters[:, 64]))
  np.testing.assert_allclose(energy, np.sqrt((magnitude ** 2).sum(axis=1)), rtol=1e-5)
  # Frame t is centred on sample t * hop: a click at sample 8000 peaks in frame 50.
  click = np.zeros(16000)
  click[8000] = 1.0
  assert int(np.argmax(kdata.log_mel_and_energy(click, config)[1])) == 50


def test_estimate_pitch_finds_a_known_f0():
  rate = 16000
  t = np.arange(rate) / rate
  f0 = 120 + 40 * t  # a slow glide, 120 -> 160 Hz
  phase = 2 * np.pi * np.cumsum(f0) / rate
  audio = sum(np.sin(k * phase) / k for k in range(1, 6))
  estimate, voiced = kdata.estimate_pitch(audio)
  frames = slice(10, 90)
  truth = 120 + 40 * np.arange(101)[frames] * 0.01
  assert voiced[frames].all()
  np.testing.assert_allclose(estimate[frames], truth, rtol=0.01)
  silent, voiced = kdata.estimate_pitch(np.zeros(rate))
  assert not voiced.any() and not silent.any()


# ---------------------------------------------------------------- .pho logic


def test_pho_parse_format_round_trip_and_errors():
  text = '; comment\n_\t50\nh\t70\n\n@U\t63\t 0 232 80 215 100 215\n'
  phones = kdata.parse_pho(text)
  assert [p.name for p in phones] == ['_', 'h', '@U']
  assert phones[2].pitch == ((0, 232), (80, 215), (100, 215))
  assert kdata.parse_pho(_synthesis.format_pho(phones)) == phones
  with pytest.raises(ValueError, match='line 1'):
    kdata.parse_pho('a 10 50\n')


def test_frame_durations_give_each_frame_centre_to_its_phone():
  durations_ms = [100, 7, 33, 0.5, 61, 150]
  frames = kdata.frame_durations(durations_ms, sample_rate=16000, hop_length=160)
  ends = np.cumsum(durations_ms) * 16
  assert frames.sum() == math.ceil(ends[-1] / 160)
  owner = np.repeat(np.arange(len(durations_ms)), frames)
  starts = np.concatenate([[0], ends[:-1]])
  for t, k in enumerate(owner):
    assert starts[k] <= t * 160 < ends[k]


def test_merge_silences_and_perturb_phones():
  phones = [_synthesis.Phone('h', 70), _synthesis.Phone('e', 50, ((0, 100), (100, 200))),
            _synthesis.Phone('_', 150), _synthesis.Phone('_', 1), _synthesis.Phone('s', 80)]
  merged = _synthesis.merge_silences(phones, leading_ms=40)
  assert [(p.name, p.duration_ms) for p in merged] == [
      ('_', 40), ('h', 70), ('EI', 50), ('_', 151), ('s', 80)]
  prosody = _synthesis.Prosody('us1', 175, 50, pitch_range=2.0, duration_sigma=0.0,
                               pause_scale=0.5)
  out = _synthesis.perturb_phones(merged, prosody, np.random.default_rng(0))
  assert [p.duration_ms for p in out] == [20, 70, 50, 76, 80]  # silences halved
  # Range 2 around the geometric mean (141.4 Hz): 100 -> 70.7, 200 -> 282.8.
  np.testing.assert_allclose([hz for _, hz in out[2].pitch], [70.71, 282.84], rtol=1e-3)


def test_pitch_targets_are_interpolated_at_frame_centres():
  phones = [_synthesis.Phone('_', 20), _synthesis.Phone('a', 40, ((0, 100), (100, 200))),
            _synthesis.Phone('s', 40)]
  pitch = _synthesis.pitch_targets_per_frame(phones, 10, hop_ms=10.0)
  # Targets at 20 ms (100 Hz) and 60 ms (200 Hz), held outside.
  np.testing.assert_allclose(pitch, [100, 100, 100, 125, 150, 175, 200, 200, 200, 200])


# ------------------------------------------------------------------ sentences


def test_sentences_from_rst_and_debian_descriptions():
  rst = (
      '.. _label:\n\nTitle\n=====\n\nUse :func:`os.walk` or :meth:`~dict.items` to see '
      '``every`` *file* here. Then `read this <http://x>`_ twice! Not kept, e.g. here.\n\n'
      '::\n\n   code = 1\n\n* a list item is dropped.\n')
  paragraphs = kdata.rst_paragraphs(rst)
  assert paragraphs == ['Use os.walk or items to see every file here. Then read this twice! '
                        'Not kept, e.g. here.']
  sentences = [s for s in kdata.split_sentences(paragraphs[0]) if kdata.keep_sentence(s)]
  assert sentences == ['Then read this twice!']  # 'os.walk', 'e.g.': dotted tokens
  assert not kdata.keep_sentence('THE SOFTWARE IS PROVIDED AS IS.')
  assert not kdata.keep_sentence('Too short.')
  translation = ('Package: foo\nDescription-md5: 0\nDescription-en: short title\n'
                 ' Foo is a tool for doing things well.\n .\n It works fine.\n\n'
                 'Package: bar\nDescription-en: nothing else\n')
  documents = list(_sentences.debian_descriptions(translation))
  assert documents == [('debian/foo', 'Foo is a tool for doing things well.\n\nIt works fine.')]
  assert kdata.collect_sentences(documents * 2) == [
      ('debian/foo', 'Foo is a tool for doing things well.')]


def test_select_utterances_is_seeded_and_order_free():
  pairs = [(f'd{i}', f'Sentence number {i} is here.') for i in range(20)]
  chosen = kdata.select_utterances(pairs, num=7, seed=1, renditions=2)
  assert chosen == kdata.select_utterances(pairs[::-1], num=7, seed=1, renditions=2)
  assert chosen[0] == chosen[1] and chosen[2] == chosen[3] and len(set(chosen)) == 4
  assert chosen != kdata.select_utterances(pairs, num=7, seed=2, renditions=2)
  with pytest.raises(ValueError, match='num=30'):
    kdata.select_utterances(pairs, num=30, seed=0)


def test_apt_errors_are_clear(tmp_path, monkeypatch):
  with pytest.raises(kdata.AptError, match='apt-get update'):
    _debian.private_apt_options(tmp_path, suite='bookworm', mirror='http://127.0.0.1:9/debian',
                                retries=0)
  monkeypatch.setenv('PATH', str(tmp_path))
  with pytest.raises(kdata.AptError, match='not on PATH'):
    _debian.download_packages(['espeak-ng'], cache_dir=tmp_path)


# ------------------------------------------------------- real synthesis


def test_real_synthesis_is_aligned_frame_for_frame(tools):
  config = kdata.FeatureConfig()
  for seed, (_, text) in enumerate(SENTENCES[:3]):
    u = kdata.synthesize_utterance(text, tools=tools, rng=np.random.default_rng(seed),
                                   return_audio=True)
    frames = int(u['durations'].sum())
    assert abs(u['audio_frames'] - frames) <= 1
    assert u['mel'].shape == (frames, 80) and u['pitch'].shape == (frames,)
    owner = np.repeat(np.arange(len(u['phones'])), u['durations'])
    # Long pauses are silent inside, frame for frame, wherever they fall.
    vowel_energy = np.median(u['energy'][u['voiced']])
    for k, phone in enumerate(u['phones']):
      inside = np.flatnonzero(owner == k)[2:-2]
      if phone == '_' and k > 0 and inside.size >= 4:
        assert u['energy'][inside].max() < 0.02 * vowel_energy, (text, k)
    # The audio's own pitch follows the .pho targets in clearly voiced frames.
    estimate, voiced = kdata.estimate_pitch(u['audio'], config, threshold=0.8)
    both = voiced[:frames] & u['voiced'] & (estimate[:frames] > 0)
    assert both.sum() > 20
    error = np.abs(np.log(estimate[:frames][both] / u['pitch'][both]))
    assert np.median(error) < 0.05, (text, np.median(error))


def test_synthesis_is_deterministic_per_seed_and_one_to_many(tools):
  text = SENTENCES[1][1]
  a = kdata.synthesize_utterance(text, tools=tools, rng=np.random.default_rng(7))
  b = kdata.synthesize_utterance(text, tools=tools, rng=np.random.default_rng(7))
  c = kdata.synthesize_utterance(text, tools=tools, rng=np.random.default_rng(8))
  for key in ('durations', 'mel', 'energy', 'pitch', 'voiced'):
    np.testing.assert_array_equal(a[key], b[key])
  assert a['phones'] == b['phones']
  assert a['prosody'] != c['prosody'] and not np.array_equal(a['durations'], c['durations'])


def test_resume_after_a_crash_equals_a_clean_build(tools, tmp_path, monkeypatch):
  utterances = list(SENTENCES[:4])
  clean = kdata.synthesize_speech_chunks(utterances, str(tmp_path / 'clean'), tools=tools,
                                         seed=3, chunk_size=2, workers=1)
  real, calls = _synthesis.synthesize_utterance, []

  def crashing(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt('simulated crash in chunk 2')
    return real(*args, **kwargs)

  monkeypatch.setattr(_synthesis, 'synthesize_utterance', crashing)
  with pytest.raises(KeyboardInterrupt):
    kdata.synthesize_speech_chunks(utterances, str(tmp_path / 'resumed'), tools=tools, seed=3,
                                   chunk_size=2, workers=1)
  assert sorted(os.listdir(tmp_path / 'resumed')) == ['chunk_000000.npz', 'spec.json']
  calls.clear()
  resumed = kdata.synthesize_speech_chunks(utterances, str(tmp_path / 'resumed'), tools=tools,
                                           seed=3, chunk_size=2, workers=2)
  assert len(calls) == 2  # only the missing chunk's utterances
  for x, y in zip(kdata.read_speech_chunks(clean), kdata.read_speech_chunks(resumed)):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  with pytest.raises(ValueError, match='another build'):
    kdata.synthesize_speech_chunks(utterances, str(tmp_path / 'resumed'), tools=tools, seed=4,
                                   chunk_size=2)


def test_a_failing_utterance_is_recorded_and_left_out(tools, tmp_path, monkeypatch):
  real = _synthesis.synthesize_utterance

  def failing(text, **kwargs):
    if text == SENTENCES[1][1]:
      raise RuntimeError('mbrola exited with status 1')
    return real(text, **kwargs)

  monkeypatch.setattr(_synthesis, 'synthesize_utterance', failing)
  # One utterance per chunk: chunk 1 has no utterance left.
  paths = kdata.synthesize_speech_chunks(list(SENTENCES[:3]), str(tmp_path), tools=tools, seed=0,
                                         chunk_size=1, workers=1)
  assert [e['text'] for e in kdata.read_speech_chunks(paths)] == [
      SENTENCES[0][1], SENTENCES[2][1]]
  assert _speech.chunk_failures(paths) == [
      f"utterance 1 ({SENTENCES[1][1]!r}): mbrola exited with status 1"]


# ----------------------------------------------------------------- builder


def test_builder_on_the_shipped_sample(tmp_path):
  assert os.path.getsize(SAMPLE) < 1_000_000
  builder = kdata.SpeechFeatures(config='mbrola', data_dir=str(tmp_path), chunk_files=[SAMPLE],
                                 val_fraction=0.3, test_fraction=0.3)
  builder.download_and_prepare()
  expected = kdata.read_speech_chunks([SAMPLE])
  seen = 0
  for split in ('train', 'validation', 'test'):
    if not os.path.exists(os.path.join(builder.data_dir,
                                       f'speech_features-{split}.array_record-00000-of-00001')):
      continue
    source = kdata.load_source('speech_features/mbrola', split, data_dir=str(tmp_path))
    assert kdata.phoneme_vocabulary(source) == list(kdata.PHONEMES)
    for i in range(len(source)):
      example = source[i]
      frames = example['num_frames']
      assert example['durations'].sum() == frames == example['mel'].shape[0]
      assert example['mel'].shape == (frames, 80) and example['energy'].shape == (frames,)
      assert example['phonemes'].shape == example['durations'].shape
      assert 0 < example['phonemes'].min() and example['phonemes'].max() < len(kdata.PHONEMES)
      original = next(e for e in expected if e['text'] == example['text'].decode())
      np.testing.assert_array_equal(original['mel'], example['mel'])
      seen += 1
  assert seen == len(expected) >= 4


def test_a_recording_without_alignment_is_featurised(tools):
  """The 'full' (LJSpeech) path on a 22,050 Hz recording: resampled, pitch estimated."""
  rate = 22050
  t = np.arange(rate) / rate
  speech = (8000 * np.sin(2 * np.pi * 150 * t)).astype(np.int16)
  example = kdata.featurize_recording(speech, 'Printing, in the only sense.', document='LJ001',
                                      sample_rate=rate, tools=tools)
  frames = example['num_frames']
  assert frames == 1 + 16000 // 160
  assert example['mel'].shape == (frames, 80) and example['pitch'].shape == (frames,)
  np.testing.assert_allclose(example['pitch'][10:-10], 150, rtol=0.01)
  assert example['phonemes'].shape == example['durations'].shape
  assert not example['durations'].any()  # no alignment


def test_full_config_reads_ljspeech_with_mock_data(tools, tmp_path, monkeypatch):
  pytest.importorskip('tensorflow', reason="TFDS's Audio feature (ljspeech) needs TensorFlow")
  import tensorflow_datasets.datasets.ljspeech.ljspeech_dataset_builder  # noqa: F401  pylint: disable=g-import-not-at-top

  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    examples = kdata.ljspeech_examples(tools=tools, limit=3)
  assert len(examples) == 3
  for example in examples:
    assert example['mel'].shape == (example['num_frames'], 80)
  # mock_data fakes every builder, ours too: build the 'full' config outside
  # it, from the mock LJSpeech examples.
  monkeypatch.setattr(_speech, 'ljspeech_examples', lambda **kwargs: examples)
  builder = kdata.SpeechFeatures(config='full', data_dir=str(tmp_path), val_fraction=0.0,
                                 test_fraction=0.0)
  builder.download_and_prepare()
  with open(os.path.join(builder.data_dir, 'speech_metadata.json'), encoding='utf-8') as f:
    metadata = json.load(f)
  assert metadata['examples'] == {'train': 3, 'validation': 0, 'test': 0}
  assert metadata['pitch'] == 'audio estimate'
