"""kdjax.seqkd: resumable teacher data, selection by beam rank or sentence BLEU."""

import os

import numpy as np
import pytest
import sacrebleu

from kdjax import seqkd
from kdjax.generate import Generation

WORDS = ['the', 'cat', 'sat', 'on', 'mat', 'a', 'dog', 'ran', 'far', 'away']


def _detok(tokens):
  return ' '.join(WORDS[t - 3] for t in tokens if t >= 3)


class _FakeTeacher:
  """A deterministic 'beam search': K hypotheses derived from each source row."""

  def __init__(self, width=3, length=6, fail_after=None):
    self.width, self.length, self.calls, self.fail_after = width, length, 0, fail_after

  def __call__(self, batch):
    if self.fail_after is not None and self.calls >= self.fail_after:
      raise RuntimeError('simulated crash')
    self.calls += 1
    src = np.asarray(batch['source'])
    b = len(src)
    tokens = np.zeros((b, self.width, self.length), np.int32)
    lengths = np.zeros((b, self.width), np.int32)
    for i in range(b):
      for k in range(self.width):
        n = 2 + (src[i, 0] + k) % (self.length - 2)
        tokens[i, k, :n - 1] = 3 + (src[i, :n - 1] + k) % len(WORDS)
        tokens[i, k, n - 1] = 2  # EOS
        tokens[i, k, n:] = 7  # junk after the end: must be padded away
        lengths[i, k] = n
    scores = -np.arange(self.width, dtype=np.float32)[None].repeat(b, 0) - src[:, :1]
    return Generation(tokens=tokens, log_probs=np.zeros(tokens.shape, np.float32),
                      lengths=lengths, scores=scores)


def _sources(n=11, s=5, seed=0):
  rng = np.random.default_rng(seed)
  source = rng.integers(0, 10, size=(n, s)).astype(np.int32)
  mask = np.arange(s)[None] < rng.integers(2, s + 1, size=(n, 1))
  return source, mask


def test_beam_selection_dataset_contents(tmp_path):
  source, mask = _sources()
  teacher = _FakeTeacher()
  path = seqkd.build_sequence_kd_data(teacher, source, mask, str(tmp_path), batch_size=4)
  data = seqkd.load_sequence_kd_data(path)
  want = teacher(({'source': source, 'source_mask': mask}))
  assert len(data) == len(source)
  for i in range(len(source)):
    ex = data[i]
    n = want.lengths[i, 0]
    np.testing.assert_array_equal(ex['source'], source[i])
    np.testing.assert_array_equal(ex['source_mask'], mask[i])
    np.testing.assert_array_equal(ex['target'][:n], want.tokens[i, 0, :n])
    np.testing.assert_array_equal(ex['target'][n:], 0)
    assert ex['target_length'] == n and ex['selected'] == 0 and ex['index'] == i
    np.testing.assert_allclose(ex['candidate_scores'], want.scores[i])
  # 3 chunks of 4 (the last padded): the teacher saw one batch shape only.
  assert teacher.calls == 1 + 3


def test_interrupted_build_resumes_and_equals_a_clean_build(tmp_path):
  source, mask = _sources(n=10)
  crashing = _FakeTeacher(fail_after=2)
  with pytest.raises(RuntimeError, match='simulated crash'):
    seqkd.build_sequence_kd_data(crashing, source, mask, str(tmp_path / 'a'), batch_size=3)
  chunks = sorted(os.listdir(tmp_path / 'a' / 'chunks'))
  assert chunks == ['chunk_000000.npz', 'chunk_000001.npz', 'spec.json']
  # Nothing half-written is readable as a dataset.
  with pytest.raises(FileNotFoundError, match='not a complete sequence-KD dataset'):
    seqkd.load_sequence_kd_data(str(tmp_path / 'a' / 'beam'))
  resumed = _FakeTeacher()
  path = seqkd.build_sequence_kd_data(resumed, source, mask, str(tmp_path / 'a'), batch_size=3)
  assert resumed.calls == 2  # chunks 2 and 3 only
  clean = seqkd.build_sequence_kd_data(_FakeTeacher(), source, mask, str(tmp_path / 'b'),
                                       batch_size=3)
  a, b = seqkd.load_sequence_kd_data(path), seqkd.load_sequence_kd_data(clean)
  for i in range(len(source)):
    for key in a[i]:
      np.testing.assert_array_equal(a[i][key], b[i][key])
  # A finished build is found, not rebuilt.
  again = _FakeTeacher(fail_after=0)
  assert seqkd.build_sequence_kd_data(again, source, mask, str(tmp_path / 'a'),
                                      batch_size=3) == path


def test_chunks_of_another_build_are_refused(tmp_path):
  source, mask = _sources()
  seqkd.generate_teacher_chunks(_FakeTeacher(), source, mask, str(tmp_path), batch_size=4,
                                fingerprint='teacher-a')
  with pytest.raises(ValueError, match='holds chunks of another build'):
    seqkd.generate_teacher_chunks(_FakeTeacher(), source, mask, str(tmp_path), batch_size=4,
                                  fingerprint='teacher-b')
  with pytest.raises(ValueError, match='holds chunks of another build'):
    seqkd.generate_teacher_chunks(_FakeTeacher(), source + 1, mask, str(tmp_path),
                                  batch_size=4, fingerprint='teacher-a')


def test_bleu_selection_picks_the_candidate_closest_to_the_reference(tmp_path):
  source, mask = _sources(n=9, s=6, seed=3)
  teacher = _FakeTeacher(width=4, length=7)
  want = teacher({'source': source, 'source_mask': mask})
  # References: for each row, one of the candidates (not always the first)
  # with a word changed, so that candidate is the closest but not exact.
  references = []
  for i in range(len(source)):
    k = i % 4
    words = _detok(want.tokens[i, k, :want.lengths[i, k]]).split()
    words[-1] = 'zebra'
    references.append(' '.join(words + ['again']))
  beam_path = seqkd.build_sequence_kd_data(teacher, source, mask, str(tmp_path), batch_size=4,
                                           references=references, detokenize=_detok)
  calls = teacher.calls
  bleu_path = seqkd.build_sequence_kd_data(teacher, source, mask, str(tmp_path), batch_size=4,
                                           select='bleu', references=references,
                                           detokenize=_detok)
  assert teacher.calls == calls  # the second selection reuses the chunks
  beam, bleu = seqkd.load_sequence_kd_data(beam_path), seqkd.load_sequence_kd_data(bleu_path)
  for i in range(len(source)):
    hyps = [_detok(want.tokens[i, k, :want.lengths[i, k]]) for k in range(4)]
    scores = [sacrebleu.sentence_bleu(h, [references[i]]).score for h in hyps]
    best = int(np.argmax(scores))
    np.testing.assert_allclose(bleu[i]['candidate_bleu'], scores, rtol=1e-5)
    assert bleu[i]['selected'] == best
    np.testing.assert_array_equal(bleu[i]['target'], bleu[i]['candidates'][best])
    assert beam[i]['selected'] == 0
  assert any(bleu[i]['selected'] != 0 for i in range(len(source)))


def test_select_by_bleu_ties_go_to_the_teachers_choice():
  np.testing.assert_array_equal(seqkd.select_by_bleu([[3.0, 5.0, 5.0], [1.0, 1.0, 0.0]]),
                                [1, 0])


def test_bad_arguments(tmp_path):
  source, mask = _sources()
  with pytest.raises(ValueError, match="select must be one of \\('beam', 'bleu'\\)"):
    seqkd.build_sequence_kd_data(_FakeTeacher(), source, mask, str(tmp_path), batch_size=2,
                                 select='best')
  with pytest.raises(ValueError, match="select='bleu' needs references and detokenize"):
    seqkd.build_sequence_kd_data(_FakeTeacher(), source, mask, str(tmp_path), batch_size=2,
                                 select='bleu')
  with pytest.raises(ValueError, match='one entry per source: got 2 for 11 sources'):
    seqkd.build_sequence_kd_data(_FakeTeacher(), source, mask, str(tmp_path), batch_size=2,
                                 references=['a', 'b'], detokenize=_detok)
  with pytest.raises(ValueError, match=r'source_mask with shape \(11, 4\)'):
    seqkd.generate_teacher_chunks(_FakeTeacher(), source, mask[:, :4], str(tmp_path),
                                  batch_size=2)


def test_several_selections_score_each_candidate_once(tmp_path):
  source, mask = _sources(n=7, s=6, seed=5)
  references = ['the cat sat', 'a dog ran far', 'on the mat', 'far away', 'the dog',
                'a cat', 'ran on']
  calls = []

  def counting_detok(tokens):
    calls.append(1)
    return _detok(tokens)

  paths = seqkd.build_sequence_kd_datasets(
      _FakeTeacher(width=3), source, mask, str(tmp_path / 'both'), batch_size=4,
      references=references, detokenize=counting_detok)
  assert sorted(paths) == ['beam', 'bleu'] and len(calls) == 7 * 3
  for select in ('beam', 'bleu'):
    alone = seqkd.build_sequence_kd_data(
        _FakeTeacher(width=3), source, mask, str(tmp_path / select), batch_size=4,
        select=select, references=references, detokenize=_detok)
    a, b = seqkd.load_sequence_kd_data(paths[select]), seqkd.load_sequence_kd_data(alone)
    for i in range(len(source)):
      for key in a[i]:
        np.testing.assert_array_equal(a[i][key], b[i][key])
