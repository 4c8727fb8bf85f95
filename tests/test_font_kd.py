"""The font-glyph KD experiment: a one-step-per-method smoke run on the shipped fonts, and its pieces."""

import json
import pathlib

import jax
import numpy as np
import pytest

from experiments import _common
from experiments import cifar_kd
from experiments import font_kd
from experiments.configs import font_kd as font_kd_configs
from kdjax import config as config_lib
from kdjax import explain
from kdjax.data import fonts as fonts_main

FONT_DIR = pathlib.Path(__file__).parent / 'data' / 'fonts'


@pytest.fixture(autouse=True)
def _fast_compiling_rng():
  """Non-partitionable threefry: inits compile faster on CPU (as tests/test_cifar_kd.py)."""
  with jax.threefry_partitionable(False):
    yield


@pytest.fixture(scope='module')
def build_dir(tmp_path_factory):
  """font_glyphs rendered from the fonts shipped under tests/data/fonts."""
  out = tmp_path_factory.mktemp('fonts')
  fonts_main.main(['--out', str(out), '--font-dir', str(FONT_DIR), '--seed', '3',
                   '--validation-units', '1', '--test-units', '1',
                   '--train=64', '--validation=32', '--test=32'])
  return out


def _tiny_args(build_dir, workdir):
  tiny = {'name': 'CifarResNet', 'depth': 8}
  args = [f'--workdir={workdir}', '--config=experiments/configs/font_kd.py:cpu',
          f'--config.data.data_dir={build_dir}', '--config.data.image_size=8',
          '--config.data.num_train=64', '--config.data.num_val=0', '--config.seeds=(0,)',
          '--config.progress=false', '--config.teacher.train.epochs=1',
          '--config.teacher_b.train.epochs=1', '--config.student.train.epochs=2',
          '--config.fitnets.stage1_epochs=1', '--config.crd.num_negatives=8', '--config.crd.dim=4',
          '--config.select.learning_rates=(0.05,)', '--config.select.dkd_betas=(2.0,)']
  for model, widths in (('teacher', (4, 4, 8, 8)), ('teacher_b', (4, 8, 8, 8)),
                        ('student', (4, 4, 4, 8)), ('thin_student', (2, 2, 4, 4))):
    args += [f'--config.{model}.{k}={v}' for k, v in tiny.items()]
    args.append(f'--config.{model}.widths={widths}')
  args.append('--config.thin_student.depth=14')
  return args


# About 6 minutes on the shared 2-core machine (some 20 compilations): slow.
# CI keeps test_labels_and_kd_smoke_run below.
@pytest.mark.slow
def test_every_run_and_claim_is_recorded(build_dir, tmp_path):
  """The whole experiment at one step per epoch: every run, the selection and a verdict per claim."""
  workdir = tmp_path / 'run'
  font_kd.main(_tiny_args(build_dir, workdir))
  results = json.loads((workdir / 'results.json').read_text())
  (per_seed,) = results['per_seed']
  for phase in font_kd.PHASE_TITLES:
    assert 0.0 <= per_seed[phase]['test'] <= 1.0 and 0.0 <= per_seed[phase]['val'] <= 1.0, phase
  assert per_seed['kd_best']['from'] in ('kd', 'kd_b')
  assert per_seed['kd_best']['test'] == per_seed[per_seed['kd_best']['from']]['test']
  assert [v['claim'] for v in results['verdicts']] == [c[0] for c in font_kd.CLAIMS]
  for v in results['verdicts']:  # one seed: no interval, so never shown
    assert v['verdict'] == _common.WITHIN
    run, base = per_seed[v['run']]['test'], per_seed[v['baseline']]['test']
    assert v['difference']['values'] == pytest.approx([run - base])
  sel = results['selection']
  assert sel['chosen_learning_rate'] == 0.05 and sel['chosen_dkd_beta'] == 2.0
  assert set(sel['learning_rate']) == {'0.05'} and set(sel['dkd_beta']) == {'2'}
  assert results['config']['dkd']['beta'] == 2.0
  # Training logged validation only; the test split was scored after training.
  for line in (workdir / 'kd' / 'seed1000' / 'metrics.jsonl').read_text().splitlines():
    assert not any(k.startswith('test/') for k in json.loads(line)), line
  # FitNets: hint epochs + KD epochs = every other student's epochs.
  stage_steps = [max(json.loads(l).get('step', 0) for l in
                     (workdir / f'fitnets_stage{i}' / 'seed1000' / 'metrics.jsonl').read_text()
                     .splitlines()) for i in (1, 2)]
  vanilla_steps = max(json.loads(l).get('step', 0) for l in
                      (workdir / 'vanilla' / 'seed1000' / 'metrics.jsonl').read_text().splitlines())
  assert stage_steps[0] + stage_steps[1] == vanilla_steps == 2
  text = font_kd.format_tables(results)
  assert 'seed 0' in text
  assert 'DKD beats KD' in '\n'.join(_common.claims_table(font_kd.claims(results)))


def test_labels_and_kd_smoke_run(build_dir, tmp_path):
  """CI's smoke run: teacher, labels-only and KD students, one step each, fixed selection."""
  workdir = tmp_path / 'run'
  font_kd.main(_tiny_args(build_dir, workdir) + [
      "--config.methods=('vanilla', 'kd')", '--config.select.fixed_learning_rate=0.1',
      '--config.select.fixed_dkd_beta=4.0'])
  results = json.loads((workdir / 'results.json').read_text())
  (per_seed,) = results['per_seed']
  assert set(per_seed) == {'teacher', 'vanilla', 'kd'}
  assert results['config']['student']['train']['learning_rate'] == 0.1
  assert results['selection']['learning_rate'] == {}  # nothing was selected
  gap, kd = results['verdicts']
  assert (gap['run'], gap['baseline'], kd['run'], kd['baseline']) == (
      'teacher', 'vanilla', 'kd', 'vanilla')
  assert gap['difference']['values'] == pytest.approx(
      [per_seed['teacher']['test'] - per_seed['vanilla']['test']])
  assert kd['difference']['values'] == pytest.approx(
      [per_seed['kd']['test'] - per_seed['vanilla']['test']])
  for phase in ('teacher', 'vanilla', 'kd'):
    seed = 0 if phase == 'teacher' else 1000
    logged = (workdir / phase / f'seed{seed}' / 'metrics.jsonl').read_text().splitlines()
    assert not any(k.startswith('test/') for line in logged for k in json.loads(line))
  # Grad-CAM++ agreement with the teacher: a correlation, for each student, and the figure.
  assert all(-1.0 <= per_seed[p]['gradcam_agreement'] <= 1.0 for p in ('vanilla', 'kd'))
  assert 'gradcam_agreement' not in per_seed['teacher']
  assert (workdir / 'gradcam.png').exists()
  assert 'Grad-CAM++ agreement with the teacher' in font_kd.format_tables(results)
  # The description names the standardisation and warm-up the run used.
  text = font_kd.describe(results)
  data, recipe = results['config']['data'], results['config']['student']['train']
  assert font_kd.NORMALIZE_TEXT[data['normalize']] in text
  assert ('warm-up' in text) == (recipe['warmup_epochs'] > 0)


def test_every_normalization_is_described():
  assert set(font_kd.NORMALIZE_TEXT) == set(cifar_kd.NORMALIZATIONS)


def test_map_agreement_upsamples_the_coarser_maps():
  coarse = jax.random.uniform(jax.random.PRNGKey(0), (3, 4, 4))
  fine = explain.upsample(coarse, (8, 8))
  # The same maps at two resolutions agree fully, whichever side is coarser.
  assert font_kd._agreement(fine, coarse) == pytest.approx(1.0, abs=1e-5)
  assert font_kd._agreement(coarse, fine) == pytest.approx(1.0, abs=1e-5)
  assert font_kd._agreement(coarse, -coarse) == pytest.approx(-1.0, abs=1e-5)
  other = jax.random.uniform(jax.random.PRNGKey(1), (3, 4, 4))
  expected = np.mean([np.corrcoef(np.ravel(a), np.ravel(b))[0, 1] for a, b in zip(coarse, other)])
  assert font_kd._agreement(coarse, other) == pytest.approx(expected, abs=1e-5)


def test_downsample_averages_blocks():
  x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
  small = font_kd.downsample(x, 8)
  assert small.shape == (2, 8, 8, 3) and small.dtype == np.float32
  for i, j in ((0, 0), (3, 5), (7, 7)):
    np.testing.assert_allclose(small[:, i, j], x[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean((1, 2)),
                               rtol=1e-6)
  with pytest.raises(ValueError, match='image_size 12'):
    font_kd.downsample(x, 12)


def test_verdicts_follow_the_paired_interval():
  seeds = [{'kd': {'test': 0.70 + d}, 'vanilla': {'test': 0.60}} for d in (0.0, 0.01, 0.02)]
  (kd,) = font_kd.verdicts(seeds)
  assert kd['claim'] == 'KD beats labels only' and kd['verdict'] == _common.SHOWN
  assert kd['difference']['values'] == pytest.approx([0.10, 0.11, 0.12])
  worse = [{'kd': {'test': 0.5 + d}, 'vanilla': {'test': 0.6}} for d in (0.0, 0.01, 0.02)]
  assert font_kd.verdicts(worse)[0]['verdict'] == _common.CONTRADICTED
  mixed = [{'kd': {'test': 0.6 + d}, 'vanilla': {'test': 0.6}} for d in (-0.05, 0.0, 0.06)]
  assert font_kd.verdicts(mixed)[0]['verdict'] == _common.WITHIN


def test_the_teacher_gap_is_judged_against_five_points():
  # A 6-point gap on every seed clears 5; a 4-point gap on every seed is below it.
  wide = [{'teacher': {'test': 0.66 + d}, 'vanilla': {'test': 0.60 + d}} for d in (0, .01, .02)]
  (gap,) = font_kd.verdicts(wide)
  assert gap['run'] == 'teacher' and gap['threshold'] == 0.05
  assert gap['verdict'] == _common.SHOWN
  narrow = [{'teacher': {'test': 0.64 + d}, 'vanilla': {'test': 0.60 + d}} for d in (0, .01, .02)]
  assert font_kd.verdicts(narrow)[0]['verdict'] == _common.CONTRADICTED


def test_config_is_fair_and_rejects_a_reported_selection_seed():
  c = font_kd_configs.get_config('cpu')
  assert c.select.seed not in c.seeds
  assert c.at.weight == pytest.approx(1000.0 * (c.data.image_size / 32) ** 2)
  assert tuple(c.select.dkd_betas) == (1.0, 2.0, 4.0, 8.0)
  assert len(c.select.dkd_betas) == len(c.select.learning_rates)  # the same tuning budget
  thin, teacher = c.thin_student, c.teacher
  assert thin.depth > teacher.depth and max(thin.widths) < max(teacher.widths)
  assert (c.teacher_b.depth, tuple(c.teacher_b.widths)) != (teacher.depth, tuple(teacher.widths))
  assert not font_kd_configs.schema().problems(c)
  c.select.seed = 1
  assert any(key == 'select.seed' for key, _, _ in font_kd_configs.schema().problems(c))
  with pytest.raises(config_lib.ConfigError,
                     match='select.seed'):
    config_lib.parse_args(['--config=experiments/configs/font_kd.py:cpu', '--workdir=/tmp/x',
                           '--config.select.seed=0'], schema=font_kd_configs.schema())


def test_selection_picks_the_best_validation_value(monkeypatch, tmp_path):
  """select() trains once per grid value, records each validation accuracy and
  keeps the best (no training: the trainer is a stand-in scoring by value)."""
  calls = []

  class FakeTrainer:
    def __init__(self, config, method):
      self.config, self.method = config, method

    def train(self, arrays, *, seed, teacher_variables, workdir, desc, config):
      del arrays, config
      lr, beta = self.config.student.train.learning_rate, self.config.dkd.beta
      calls.append((self.method, lr, beta, seed, teacher_variables, workdir, desc))
      score = ({0.01: 0.5, 0.1: 0.7, 1.0: 0.6}[lr] if self.method == 'vanilla'
               else {1.0: 0.2, 2.0: 0.4, 4.0: 0.9, 8.0: 0.3}[beta])
      return None, {'val/acc/student': score}

  class FakeExperiment:
    def __init__(self, config, arrays, num_classes):
      self.config, self.arrays = config, {'train': arrays}

    def method_trainers(self, method):
      return [FakeTrainer(self.config, method)]

  class FakeRunner:
    workdir = str(tmp_path)

    def teacher(self, exp, *, phase, seed):
      return 'teacher-variables', None

  monkeypatch.setattr(font_kd, 'FontExperiment', FakeExperiment)
  config = font_kd_configs.get_config('cpu')
  config.select.fixed_learning_rate = 0.0
  config.select.fixed_dkd_beta = 0.0
  config.select.learning_rates = (0.01, 0.1, 1.0)
  config.select.dkd_betas = (1.0, 2.0, 4.0, 8.0)
  record = font_kd.select(config, 'arrays', 10, FakeRunner())
  assert record['learning_rate'] == {'0.01': 0.5, '0.1': 0.7, '1': 0.6}
  assert record['chosen_learning_rate'] == 0.1
  assert record['dkd_beta'] == {'1': 0.2, '2': 0.4, '4': 0.9, '8': 0.3}
  assert record['chosen_dkd_beta'] == 4.0
  vanilla = [c for c in calls if c[0] == 'vanilla']
  dkd = [c for c in calls if c[0] == 'dkd']
  assert [c[1] for c in vanilla] == [0.01, 0.1, 1.0] and all(c[4] is None for c in vanilla)
  # DKD's betas are tried at the chosen learning rate, against the selection teacher.
  assert {c[1] for c in dkd} == {0.1} and all(c[4] == 'teacher-variables' for c in dkd)
  assert {c[3] for c in calls} == {config.select.seed + 1000}
  assert vanilla[0][5].endswith('select/vanilla_lr0.01') and dkd[2][5].endswith('select/dkd_beta4')


# Three more runs of the experiment beyond its smoke run (28 s): `make test-slow`.
@pytest.mark.slow
def test_more_seeds_resume_the_earlier_ones(build_dir, tmp_path):
  """A rerun with one more seed restores the finished seed (same numbers, its recorded timings)."""
  workdir = tmp_path / 'run'
  args = _tiny_args(build_dir, workdir) + [
      "--config.methods=('vanilla',)", '--config.select.fixed_learning_rate=0.1',
      '--config.select.fixed_dkd_beta=4.0']
  font_kd.main(args)
  first = json.loads((workdir / 'results.json').read_text())
  assert 'resumed' not in first
  font_kd.main(args + ['--config.seeds=(0, 1)'])
  second = json.loads((workdir / 'results.json').read_text())
  assert second['config']['seeds'] == [0, 1]
  assert second['per_seed'][0] == first['per_seed'][0]
  assert second['phase_seconds'][0] == first['phase_seconds'][0]
  assert second['resumed'] == {'seeds': [0], 'wall_seconds': first['wall_seconds'],
                               'commit': first['provenance']['git']['commit']}
  assert second['wall_seconds'] > first['wall_seconds']
  # Seed 1 was trained (it has its own runs); seed 0 was not trained again.
  assert (workdir / 'vanilla' / 'seed1001' / 'checkpoints').is_dir()
  def train_lines(seed):
    logged = (workdir / 'vanilla' / f'seed{seed}' / 'metrics.jsonl').read_text().splitlines()
    return [l for l in logged if json.loads(l).get('split') == 'train']

  assert len(train_lines(1000)) == len(train_lines(1001))
  assert 'restored here from their checkpoints' in font_kd.format_tables(second)
  # Accuracies that differ from the earlier file are kept, with their own timings, not merged.
  earlier = json.loads((workdir / 'results.json').read_text())
  earlier['per_seed'][0]['vanilla']['test'] += 0.5
  (workdir / 'results.json').write_text(json.dumps(earlier))
  font_kd.main(args)
  third = json.loads((workdir / 'results.json').read_text())
  assert 'resumed' not in third
  assert third['per_seed'][0] == first['per_seed'][0]
