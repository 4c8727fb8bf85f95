"""Experiments: a one-epoch smoke run of each, and the slow full runs."""

import json
import os
import pathlib

import numpy as np
import pytest

from experiments import hinton
from experiments import make_results
from kdjax import checkpoint
from kdjax import provenance
from kdjax import writers

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny_hinton_args(workdir, data_dir):
  return [
      '--config=experiments/configs/hinton.py:cpu', f'--workdir={workdir}',
      f'--config.data.data_dir={data_dir}', '--config.seeds=(0,)', '--config.progress=false',
      '--config.teacher.epochs=1', '--config.student.epochs=1',
      '--config.teacher.hidden_sizes=(4, 4, 4)', '--config.student.hidden_sizes=(8,)',
  ]


@pytest.fixture(scope='module')
def tiny_hinton_run(tmp_path_factory, mnist1d_data_dir):
  workdir = tmp_path_factory.mktemp('hinton') / 'hinton_cpu'
  hinton.main(_tiny_hinton_args(workdir, mnist1d_data_dir))
  return workdir


def test_hinton_smoke_run_writes_everything(tiny_hinton_run):
  workdir = tiny_hinton_run
  with open(workdir / 'results.json') as f:
    results = json.load(f)
  summary = results['summary']
  for phase in ('teacher', 'baseline', 'distilled'):
    assert 0.0 <= summary[phase]['test_acc']['mean'] <= 1.0
    records = writers.read_jsonl(workdir / phase / 'seed0')
    assert {r['split'] for r in records} == {'train', 'eval'}
    assert list((workdir / phase / 'seed0' / 'tensorboard').glob('events.out.tfevents.*'))
  assert (workdir / 'teacher' / 'seed0' / 'final' / 'teacher').is_dir()
  assert (workdir / 'learning_curves.png').stat().st_size > 10_000
  omitted = results['per_seed'][0]['omitted']
  assert set(omitted['bias_deltas']) == {'prior', 'val_acc'}
  assert omitted['test_examples_of_label'] == 106  # MNIST-1D's test 3s


def test_hinton_rerun_resumes_instead_of_retraining(tiny_hinton_run, mnist1d_data_dir):
  before = writers.read_jsonl(tiny_hinton_run / 'baseline' / 'seed0')
  hinton.main(_tiny_hinton_args(tiny_hinton_run, mnist1d_data_dir))
  after = writers.read_jsonl(tiny_hinton_run / 'baseline' / 'seed0')
  assert len(after) == len(before)  # nothing retrained: restored from checkpoints


def test_make_results_generates_the_section(tiny_hinton_run, tmp_path):
  out = tmp_path / 'results.md'
  others = [arg for name in make_results.NAMES if name != 'hinton_cpu' for arg in ('--keep', name)]
  make_results.main(['--record', str(tiny_hinton_run), '--results', str(tmp_path / 'results'),
                     '--out', str(out), *others])
  text = out.read_text()
  assert 'Hinton, Vinyals & Dean (2015)' in text
  assert 'student, distilled' in text and 'Gap recovered' in text
  with open(tmp_path / 'results' / 'hinton_cpu.json') as f:
    recorded = json.load(f)['provenance']
  # The section names the run's own commit, config hash and command line.
  assert f"Commit `{recorded['git']['commit'][:12]}`" in text
  assert f"config hash `{recorded['config_hash'][:12]}`" in text
  assert '--config.teacher.hidden_sizes=(4, 4, 4)' in text
  # A fresh --out holds no earlier section: every kept one says it never ran.
  assert text.count('Provenance not run yet') == len(others) // 2


def test_results_record_their_provenance(tiny_hinton_run, mnist1d_data_dir):
  with open(tiny_hinton_run / 'results.json') as f:
    results = json.load(f)
  record = results['provenance']
  args = _tiny_hinton_args(tiny_hinton_run, mnist1d_data_dir)
  assert record['command'] == ['python', '-m', 'experiments.hinton', *args]
  assert record['config'] == results['config']
  assert record['config_hash'] == provenance.config_hash(results['config'])
  assert len(record['git']['commit']) == 40 and isinstance(record['git']['dirty'], bool)
  assert record['versions']['jax'] and record['versions']['orbax-checkpoint']
  assert record['machine']['jax_devices']


def test_same_command_twice_gives_identical_results(tmp_path, monkeypatch, mnist1d_data_dir):
  """Two runs of one command (two working directories): equal results.json but for times."""
  args = [
      f'--config={REPO / "experiments" / "configs" / "hinton.py"}:cpu', '--workdir=run',
      *_tiny_hinton_args('run', mnist1d_data_dir)[2:], '--config.omitted.enabled=false',
  ]
  texts = []
  for name in ('first', 'second'):
    (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / name)
    hinton.main(args)
    with open(tmp_path / name / 'run' / 'results.json') as f:
      results = json.load(f)
    for key in ('wall_seconds', 'finished'):  # the run's times, nothing else
      del results[key]
    texts.append(json.dumps(results, sort_keys=True))
  assert texts[0] == texts[1]


def test_rerun_with_another_config_refuses_the_old_checkpoints(tiny_hinton_run, mnist1d_data_dir):
  args = _tiny_hinton_args(tiny_hinton_run, mnist1d_data_dir)
  with pytest.raises(checkpoint.ConfigMismatchError, match=r'kd\.temperature: 4\.0 -> 2\.0'):
    hinton.main([*args, '--config.kd.temperature=2'])


def test_choose_bias_rules():
  # Raising class 2 by more than 0.5 fixes rows 3-4; by more than 1.5 it
  # also takes rows 1-2.
  logits = np.array([[3.0, 0.0, 1.5], [0.0, 3.0, 1.5], [3.0, 0.0, 2.5], [0.0, 3.0, 2.5]])
  labels = np.array([0, 1, 2, 2])
  grid = tuple(0.5 * i for i in range(8))
  assert hinton.choose_bias(logits, labels, 2, grid, rule='prior', prior=0.5) == 1.0
  assert hinton.choose_bias(logits, labels, 2, grid, rule='val_acc', prior=0.5) == 1.0
  assert hinton.choose_bias(logits, labels, 2, grid, rule='prior', prior=1.0) == 2.0
  with pytest.raises(ValueError, match="omitted.rule must be 'prior' or 'val_acc'"):
    hinton.choose_bias(logits, labels, 2, grid, rule='median', prior=0.5)


def test_unknown_config_key_is_a_clear_error(tmp_path):
  with pytest.raises(KeyError, match=r"unknown config key 'kd.temprature'.*'temperature'"):
    hinton.main(['--config=experiments/configs/hinton.py:cpu', f'--workdir={tmp_path}',
                 '--config.kd.temprature=4'])


@pytest.mark.slow
def test_hinton_cpu_reproduces_the_claim(tmp_path):
  """The full cpu config: distillation recovers most of the student-teacher gap."""
  hinton.main(['--config=experiments/configs/hinton.py:cpu', f'--workdir={tmp_path}',
               '--config.progress=false'])
  with open(os.path.join(tmp_path, 'results.json')) as f:
    summary = json.load(f)['summary']
  assert summary['distilled']['test_acc']['mean'] > summary['baseline']['test_acc']['mean']
  means = {p: summary[p]['test_acc']['mean'] for p in ('teacher', 'baseline', 'distilled')}
  assert (means['distilled'] - means['baseline']) / (means['teacher'] - means['baseline']) > 0.5
  omitted = summary['omitted']
  assert omitted['by_rule']['prior']['acc_on_label']['mean'] > omitted['before']['acc_on_label']['mean']


# The paper-scale config beyond the smoke run: `make test-slow`.
@pytest.mark.slow
def test_hinton_full_config_runs_on_mocked_mnist(tmp_path):
  """The paper-scale config's data path (TFDS mnist: images, 2-D jitter)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  with tfds.testing.mock_data(num_examples=200):
    hinton.main([
        '--config=experiments/configs/hinton.py:full', f'--workdir={tmp_path}',
        '--config.seeds=(0,)', '--config.progress=false',
        '--config.teacher.epochs=1', '--config.student.epochs=1',
        '--config.teacher.hidden_sizes=(16,)', '--config.student.hidden_sizes=(8,)',
    ])
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  assert results['config']['data']['name'] == 'mnist'
  assert 0.0 <= results['summary']['distilled']['test_acc']['mean'] <= 1.0
