"""experiments/fastspeech2.py: its metrics, frame grouping, verdicts, and a one-step smoke run."""

import json
import math
import pathlib
import time
import types

import ml_collections
import numpy as np
import pytest

from experiments import _common
from experiments import fastspeech2 as fs2
from experiments.configs import fastspeech2 as configs
from kdjax import config as config_lib
from kdjax import loop
from kdjax import zoo

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_group_frames_round_trips_and_marks_real_groups():
  rng = np.random.default_rng(0)
  mel = rng.normal(size=(2, 7, 3)).astype(np.float32)
  mask = np.arange(7)[None] < np.array([[7], [4]])
  grouped, group_mask = fs2.group_frames(mel * mask[..., None], mask, 3)
  assert grouped.shape == (2, 3, 9)
  np.testing.assert_array_equal(group_mask, [[1, 1, 1], [1, 1, 0]])
  # Group g holds frames 3g, 3g+1, 3g+2 side by side.
  np.testing.assert_array_equal(grouped[0, 1, 3:6], mel[0, 4])
  np.testing.assert_array_equal(fs2.ungroup_frames(grouped, 3, 7), mel * mask[..., None])


def test_durations_of_repeated_group_attention_sum_to_the_frames():
  # A grouped decoder attends phoneme t for groups [t, t]: each phoneme owns
  # two groups of r = 3 frames, the last cut at the real length.
  r, groups, phonemes = 3, 6, 3
  attention = np.zeros((1, 1, 1, groups, phonemes), np.float32)
  attention[0, 0, 0, np.arange(groups), np.repeat(np.arange(phonemes), 2)] = 1.0
  frames = fs2.frame_attention(attention, r, 17)
  assert frames.shape == (1, 1, 1, 17, phonemes)
  durations, _ = zoo.extract_durations(frames, np.ones((1, 3), bool), np.array([17]))
  np.testing.assert_array_equal(durations, [[6, 6, 5]])


def test_uniform_durations_sum_to_the_frames():
  mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  durations = fs2.uniform_durations(np.array([10, 8]), mask)
  np.testing.assert_array_equal(durations, [[3, 3, 4, 0], [2, 2, 2, 2]])


def _dct_matrix(m):
  k, n = np.meshgrid(np.arange(m), np.arange(m), indexing='ij')
  c = np.sqrt(2.0 / m) * np.cos(np.pi * k * (n + 0.5) / m)
  c[0] /= np.sqrt(2.0)
  return c


def test_mcd_matches_the_formula_and_ignores_a_constant_offset():
  rng = np.random.default_rng(1)
  pred, true = rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 5, 8))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  cep = lambda x: x @ _dct_matrix(8).T
  per_frame = 10 / math.log(10) * np.sqrt(2 * ((cep(pred) - cep(true))[..., 1:] ** 2).sum(-1))
  want = per_frame[mask].mean()
  assert fs2.mel_cepstral_distortion(pred, true, mask) == pytest.approx(want, rel=1e-10)
  # A gain (constant over bins in the log domain) only moves c0.
  assert fs2.mel_cepstral_distortion(pred + 3.0, pred, mask) == pytest.approx(0.0, abs=1e-9)


def test_mel_l1_variance_ratio_and_duration_errors():
  rng = np.random.default_rng(2)
  true = rng.normal(size=(2, 6, 4))
  mask = np.array([[1] * 6, [1] * 3 + [0] * 3], bool)
  pred = true + 0.5
  pred[1, 3:] = 100.0  # padding: never counted
  assert fs2.mel_l1(pred, true, mask) == pytest.approx(0.5)
  mean = true[mask].mean(0)
  assert fs2.variance_ratio(mean + 2 * (true - mean), true, mask) == pytest.approx(4.0)
  assert fs2.variance_ratio(np.broadcast_to(mean, true.shape), true, mask) == pytest.approx(0.0)
  errors = fs2.duration_errors(np.array([[3, 5, 9]]), np.array([[4, 5, 1]]),
                               np.array([[1, 1, 0]], bool))
  assert errors == {'mae': 0.5, 'within_one': 1.0}


def _results(distilled, fastspeech2, usable=True):
  per_seed = [{'gt': {'mel_l1': 1.0, 'mcd': 10.0},
               'distilled': {'mel_l1': d, 'mcd': 10.0 * d},
               'fastspeech2': {'mel_l1': f, 'mcd': 10.0 * f}}
              for d, f in zip(distilled, fastspeech2)]
  return {'per_seed': per_seed,
          'config': {'variants': ('gt', 'distilled', 'fastspeech2'),
                     'eval': {'noninferiority_margin': 0.02}},
          'teacher': {'alignment_usable': usable, 'validation': {'within_one': 0.4}},
          'times': {'distilled_end_to_end': {'values': [300.0, 310.0, 290.0]},
                    'fastspeech2_end_to_end': {'values': [100.0, 100.0, 100.0]}}}


def test_claims_lower_is_better_non_inferiority_and_speed():
  results = _results([0.90, 0.91, 0.89], [0.905, 0.91, 0.895])
  mel_b, mel_c, mcd_b, mcd_c, speed = fs2.claims(results)
  assert mel_b['test'] == '<' and mel_b['difference']['values'] == pytest.approx([-0.1, -0.09, -0.11])
  assert mel_b['verdict'] == _common.SHOWN and _common.outcome(mel_b) == _common.REPRODUCED
  # (c) - (b) per seed 0.005, 0, 0.005, below the margin 2 % of (b)'s mean mel L1 (0.018).
  assert mel_c['threshold'] == pytest.approx(0.02 * 0.90)
  assert mel_c['verdict'] == _common.judge(
      _common.t_interval([0.005, 0.0, 0.005]), test='<', threshold=0.018) == _common.SHOWN
  assert speed['difference']['values'] == pytest.approx([3.0, 3.1, 2.9])
  assert speed['verdict'] == _common.SHOWN
  unusable = fs2.claims(_results([0.90, 0.91, 0.89], [0.905, 0.91, 0.895], usable=False))
  assert _common.outcome(unusable[0]).startswith(
      f"{_common.NOT_SHOWN}: the teacher's alignment is not usable")


def test_every_config_is_valid_and_bad_values_are_named():
  schema = configs.schema()
  for scale in ('smoke', 'cpu', 'full'):
    schema.validate(configs.get_config(scale))
  bad = configs.get_config('cpu')
  bad.alignment.reduction_factors = (0,)
  bad.variants = ('gt', 'teacher')
  with pytest.raises(config_lib.ConfigError, match='alignment.reduction_factors') as info:
    schema.validate(bad)
  assert 'variants' in str(info.value)


def test_smoke_run_one_step_per_variant(tmp_path):
  workdir = tmp_path / 'fastspeech2_smoke'
  args = ['--config=experiments/configs/fastspeech2.py:smoke', f'--workdir={workdir}',
          f'--config.data.chunk_files={REPO / "tests" / "data" / "speech_sample.npz"}']
  # The teacher alone first, its alignment logged during training ...
  fs2.main(args + ['--config.alignment.only=True', '--config.alignment.eval_every=1',
                   '--config.student.hidden=8'])
  teacher_dir = workdir / 'teacher_r3_g10'
  logged = [json.loads(l) for l in (teacher_dir / 'metrics.jsonl').read_text().splitlines()]
  (progress,) = [l for l in logged if l['split'] == 'eval']
  (candidate,) = json.loads((workdir / 'results.json').read_text())['candidates']
  assert progress['val/duration_mae'] == pytest.approx(candidate['validation']['duration_mae'])
  recorded = json.loads((teacher_dir / fs2.SECONDS_FILE).read_text())
  assert recorded['lives'] == 1 and recorded['finished_step'] == candidate['steps']
  assert 0 < recorded['seconds'] == pytest.approx(candidate['seconds'])
  # ... then the whole run in the same workdir: the teacher is restored (how
  # the alignment is measured and the students' settings are not its
  # identity), with the time it took to train.
  fs2.main(args)
  assert json.loads((teacher_dir / fs2.SECONDS_FILE).read_text()) == recorded
  assert len((teacher_dir / 'metrics.jsonl').read_text().splitlines()) == len(logged)
  results = json.loads((workdir / 'results.json').read_text())
  assert results['times']['teacher_training'] == pytest.approx(recorded['seconds'])
  assert set(results['per_seed'][0]) == {'gt', 'distilled', 'fastspeech2'}
  for variant, metrics in results['per_seed'][0].items():
    assert metrics['steps'] == 1, variant
    assert all(np.isfinite(metrics[k]) for k in ('mel_l1', 'mcd', 'variance_ratio',
                                                  'duration_mae')), variant
  assert 'pitch_rmse_hz' in results['per_seed'][0]['fastspeech2']
  validation = results['teacher']['validation']
  assert 0 <= validation['within_one'] <= 1 and validation['duration_mae'] >= 0
  assert validation['uniform_baseline']['mae'] >= 0
  # The five utterances' teacher cannot align after one step: the claims that
  # need it say so instead of a verdict.
  assert not results['teacher']['alignment_usable']
  assert all(_common.outcome(c).startswith(_common.NOT_SHOWN)
             for c in results['claims'] if c['caveat'] is not None)
  assert sum(c['caveat'] is not None for c in results['claims']) == 4
  samples = sorted(p.name for p in (workdir / 'samples').iterdir())
  assert samples == ['0_a.wav', '0_b.wav', '0_c.wav', '0_ground_truth.wav', '0_teacher.wav',
                     'spectrograms.png']
  assert 'provenance' in results
  assert '(c) FastSpeech 2' in fs2.format_table(results)


def test_teacher_objective_forward_sum_term_and_guide_schedule():
  config = configs.get_config('smoke')
  config.alignment.forward_sum_weight = 0.0
  assert 'forward_sum' not in fs2.teacher_objective(config, 10.0, 3).terms
  config.alignment.forward_sum_weight = 0.5
  objective_ = fs2.teacher_objective(config, 10.0, 3)
  assert objective_.weights['forward_sum'] == 0.5
  # The guide decays linearly over guided_decay_steps, or stays constant at 0.
  assert float(objective_.weights['guided'](config.alignment.guided_decay_steps)) == 0.0
  config.alignment.guided_decay_steps = 0
  assert fs2.teacher_objective(config, 2.0, 3).weights['guided'] == 2.0
  # The term's values are per frame: the step mask repeated r = 3 times.
  attention = np.full((1, 1, 2, 4, 2), 0.5, np.float32)

  class Outputs:
    def feature(self, name):
      assert name == 'attention'
      return attention

  batch = {'phoneme_mask': np.ones((1, 2), bool), 'frame_mask': np.array([[1, 1, 1, 0]], bool)}
  values, mask = objective_.terms['forward_sum'](Outputs(), None, batch, 0)
  assert values.shape == mask.shape == (1, 12)
  np.testing.assert_array_equal(mask, [[1] * 9 + [0] * 3])


def test_position_rate_is_phonemes_per_decoder_step():
  examples = [{'phonemes': np.arange(4), 'num_frames': 10},
              {'phonemes': np.arange(2), 'num_frames': 20}]
  assert fs2.position_rate(examples, 3) == pytest.approx(3 * 6 / 30)


def test_training_seconds_add_up_over_a_stopped_life(tmp_path, monkeypatch):
  """A life stopped by a signal records its time; the resumed life adds its own; a restore adds none."""
  lives = []

  class FakeTrainer:
    def __init__(self, *args, **kwargs):
      del args, kwargs

    def train(self, *args, **kwargs):
      del args, kwargs
      lives.append(len(lives))
      if len(lives) == 1:
        time.sleep(0.05)
        raise loop.Preempted('SIGTERM', 3, 'ckpt')
      time.sleep(0.05)
      return types.SimpleNamespace(step=8, variables={'params': {}}), {}

  monkeypatch.setattr(fs2._common, 'Trainer', FakeTrainer)
  monkeypatch.setattr(fs2.step_lib, 'make_train_step', lambda *args: None)
  model = types.SimpleNamespace(apply=None, optimizer=None, init=None)
  config = configs.get_config('smoke')
  kwargs = dict(seed=0, workdir=str(tmp_path), desc='s', config=config, run={}, objective=None)
  with pytest.raises(loop.Preempted):
    fs2.train_model(model, {}, **kwargs)
  first = json.loads((tmp_path / fs2.SECONDS_FILE).read_text())
  assert first['lives'] == 1 and first['finished_step'] is None and first['seconds'] >= 0.05
  _, seconds = fs2.train_model(model, {}, **kwargs)
  second = json.loads((tmp_path / fs2.SECONDS_FILE).read_text())
  assert second == {'seconds': seconds, 'lives': 2, 'finished_step': 8}
  assert seconds >= first['seconds'] + 0.05
  _, restored = fs2.train_model(model, {}, **kwargs)  # a finished run: the recorded time
  assert restored == seconds
  assert json.loads((tmp_path / fs2.SECONDS_FILE).read_text()) == second
