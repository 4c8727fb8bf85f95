"""experiments/seqkd.py: its data layout, its verdicts, and a smoke run on the shipped sample."""

import json
import pathlib

import numpy as np
import pytest

from experiments import _common
from experiments import make_results
from experiments import seqkd
from kdjax import writers

SAMPLE = pathlib.Path(__file__).parent / 'data' / 'gettext_de_sample.tsv'


def test_training_arrays_shift_the_targets_behind_bos():
  target = np.array([[7, 8, 2, 5], [9, 2, 5, 5]], np.int32)  # junk after EOS
  arrays = seqkd.training_arrays(np.array([[4, 5, 6], [4, 0, 0]]), np.array([3, 1]), target,
                                 np.array([3, 2]))
  np.testing.assert_array_equal(arrays['labels'], [[7, 8, 2, 0], [9, 2, 0, 0]])
  np.testing.assert_array_equal(arrays['target_inputs'], [[1, 7, 8, 2], [1, 9, 2, 0]])
  np.testing.assert_array_equal(arrays['mask'], [[1, 1, 1, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(arrays['source_mask'], [[1, 1, 1], [1, 0, 0]])


def _per_seed(greedy, beam):
  return [{v: {'test/greedy_bleu': g[v], 'test/beam_bleu': b[v], 'test/greedy_tokens_per_second': 200.0,
               'test/beam_tokens_per_second': 50.0} for v in g} for g, b in zip(greedy, beam)]


def test_claims_are_paired_over_seeds_and_judged_by_the_common_rule():
  greedy = [{'baseline': 10.0, 'word_kd': 13.0, 'seq_kd': 12.0 + d} for d in (0.0, 0.1, -0.1)]
  beam = [{'baseline': 12.0, 'word_kd': 15.0, 'seq_kd': 13.0 + d} for d in (0.0, 0.5, -0.5)]
  results = {'per_seed': _per_seed(greedy, beam),
             'teacher': {'test/greedy_tokens_per_second': 100.0,
                         'test/beam_tokens_per_second': 100.0}}
  by_text = {c['claim']: c for c in seqkd.claims(results)}
  kd = by_text['seq-KD beats baseline (labels) (greedy, test BLEU)']
  assert kd['difference']['values'] == pytest.approx([2.0, 2.1, 1.9])
  assert kd['verdict'] == _common.judge(_common.t_interval([2.0, 2.1, 1.9])) == _common.SHOWN
  assert by_text['seq-KD beats word-KD (greedy, test BLEU)']['verdict'] == _common.CONTRADICTED
  # Beam - greedy: seq-KD gains 1, 1.4, 0.6; the baseline 2: less, beyond the spread.
  gap = next(c for t, c in by_text.items() if t.startswith('the seq-KD student gains less'))
  assert gap['difference']['values'] == pytest.approx([-1.0, -0.6, -1.4])
  assert gap['test'] == '<' and gap['verdict'] == _common.SHOWN
  speed = [c for t, c in by_text.items() if 'decodes faster' in t]
  assert [c['difference']['values'] for c in speed] == [[2.0] * 3, [0.5] * 3]
  assert [c['verdict'] for c in speed] == [_common.SHOWN, _common.CONTRADICTED]


def test_word_kd_needs_a_weight():
  from experiments.configs import seqkd as configs
  with pytest.raises(ValueError, match="variant 'word_kd' needs kd_weight"):
    seqkd.make_objective('word_kd', configs.get_config().kd)
  with pytest.raises(ValueError, match='variant must be one of'):
    seqkd.make_objective('word', configs.get_config().kd)


def test_seqkd_smoke_run_writes_results_and_the_results_section(tmp_path):
  workdir = tmp_path / 'runs' / 'seqkd_cpu'
  args = [
      '--config=experiments/configs/seqkd.py:cpu', f'--workdir={workdir}',
      f'--config.data.pairs_file={SAMPLE}', f'--config.data.data_dir={tmp_path / "data"}',
      '--config.data.vocab_size=300', '--config.data.val_fraction=0.25',
      '--config.data.test_fraction=0.25', '--config.data.min_eval_pairs=20',
      '--config.data.max_train=32', '--config.data.max_val=16', '--config.data.max_test=16',
      '--config.data.max_source_len=24', '--config.data.max_target_len=24',
      '--config.seeds=0,', '--config.progress=False',
      '--config.kd.data_batch_size=16', '--config.eval.batch_size=16',
      '--config.eval.beam_width=2', '--config.kd.data_beam_width=2',
  ]
  for model in ('teacher', 'student'):
    args += [f'--config.{model}.epochs=1', f'--config.{model}.batch_size=32',
             f'--config.{model}.encoder_layers=1', f'--config.{model}.decoder_layers=1',
             f'--config.{model}.num_heads=2', f'--config.{model}.mlp_dim=16']
  args += ['--config.teacher.hidden=16', '--config.student.hidden=8']
  seqkd.main(args)
  results = json.loads((workdir / 'results.json').read_text())
  assert results['steps'] == {'teacher': 1, 'student': 1}
  assert results['params']['student'] < results['params']['teacher']
  assert set(results['summary']) == set(seqkd.VARIANTS)
  for variant in seqkd.WORD_KD:
    chosen = results['selection'][variant]
    assert chosen['chosen'] == chosen['grid'][int(np.argmax(chosen['val_greedy_bleu']))]
  # Variants share a compiled Trainer only where their objectives are equal:
  # each run trained on its own variant's terms and weight.
  for variant in seqkd.VARIANTS:
    weights = results['config']['kd']['kd_weight_grid'] if variant in seqkd.WORD_KD else [None]
    for weight in weights:
      run_dir = workdir / variant / (f'weight{weight:g}' if weight is not None else '') / 'seed0'
      (train,) = [r for r in writers.read_jsonl(run_dir / 'metrics.jsonl')
                  if r['split'] == 'train']
      if weight is None:
        assert 'loss/kd' not in train and train['weight/ce'] == 1.0, variant
      else:
        assert train['weight/kd'] == pytest.approx(weight), (variant, weight)
        assert train['weight/ce'] == pytest.approx(1 - weight), (variant, weight)
  # The interpolated data's BLEU against the reference is at least the beam's.
  data = results['teacher_data']
  assert data['bleu']['mean_sentence_bleu'] >= data['beam']['mean_sentence_bleu']
  assert {c['verdict'] for c in results['claims']} <= {
      'shown', 'within the seed spread', 'contradicted'}
  out = tmp_path / 'results.md'
  others = [a for name in make_results.NAMES if name != 'seqkd_cpu' for a in ('--keep', name)]
  make_results.main(['--record', str(workdir), '--results', str(tmp_path / 'results'),
                     '--out', str(out), *others])
  text = out.read_text()
  assert 'Kim & Rush (2016)' in text and 'seq-interp' in text


def test_full_config_reads_wmt14_through_tfds(monkeypatch):
  # No network here: TFDS's mock data stands in for wmt14_translate/de-en.
  import tensorflow_datasets as tfds
  import tensorflow_datasets.translate.wmt14  # noqa: F401  pylint: disable=unused-import
  from kdjax import config as config_lib
  config = config_lib.load_config('experiments/configs/seqkd.py:full')
  assert config.data.source == 'wmt14'
  with config.unlocked():
    config.data.vocab_size = 300
    config.data.max_source_len = 40
    config.data.max_target_len = 40
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    splits, tokenizer, info = seqkd.load_data(config)
  assert set(splits) == {'train', 'val', 'test'}
  assert info['dataset'] == 'wmt14_translate/de-en'
  for split, arrays in splits.items():
    assert info['splits'][split]['examples'] == len(arrays['source']) > 0
    assert arrays['target_inputs'].shape == arrays['labels'].shape
    assert (arrays['target_inputs'][:, 0] == seqkd.BOS).all()
    np.testing.assert_array_equal(arrays['target_inputs'][:, 1:], arrays['labels'][:, :-1])
