"""The Hinton hyper-parameter sweep: a one-epoch smoke run, selection logic, full run."""

import contextlib
import io
import json

import pytest

from experiments import hinton_sweep
from experiments import make_results
from kdjax import writers


def _tiny_sweep_args(workdir, data_dir):
  return [
      '--config=experiments/configs/hinton.py:cpu', f'--workdir={workdir}',
      f'--config.data.data_dir={data_dir}', '--config.progress=false',
      '--config.teacher.epochs=1', '--config.student.epochs=1',
      '--config.teacher.hidden_sizes=(4, 4, 4)', '--config.student.hidden_sizes=(8,)',
      '--config.student.jitter=false',
  ]


# The smoke run's grids: two points where the published grid has more, the
# same shapes (the config's learning rate is on the baseline grid and is the
# distillation grid's, so one extra learning-rate run follows). Six runs
# instead of the published sixteen: the sweep compiles one training epoch
# per run, which dominates a one-epoch smoke run.
SMOKE_BASELINE_GRID = {'learning_rate': (3e-3, 1e-2), 'weight_decay': (0.0,)}
SMOKE_DISTILL_GRID = {'temperature': (2.0, 4.0), 'soft_weight': (0.9,)}


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory, mnist1d_data_dir):
  workdir = tmp_path_factory.mktemp('sweep') / 'hinton_sweep'
  stdout = io.StringIO()
  with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
    mp.setattr(hinton_sweep, 'BASELINE_GRID', SMOKE_BASELINE_GRID)
    mp.setattr(hinton_sweep, 'DISTILL_GRID', SMOKE_DISTILL_GRID)
    hinton_sweep.main(_tiny_sweep_args(workdir, mnist1d_data_dir))
  with open(workdir / 'results.json') as f:
    return workdir, json.load(f), stdout.getvalue()


def test_published_grids():
  """The grids the module docstring and docs/results.md describe."""
  assert hinton_sweep.BASELINE_GRID == {'learning_rate': (1e-3, 3e-3, 1e-2),
                                        'weight_decay': (0.0, 1e-3)}
  assert hinton_sweep.DISTILL_GRID == {'temperature': (1.0, 2.0, 4.0, 8.0),
                                       'soft_weight': (0.5, 0.9)}
  assert hinton_sweep.DISTILL_LEARNING_RATES == (3e-3, 1e-2)


def _keys(tree, path=()):
  """Every (path, key) of the nested dicts in `tree`."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield path, key
      yield from _keys(value, path + (key,))
  elif isinstance(tree, list):
    for value in tree:
      yield from _keys(value, path)


def test_sweep_runs_every_grid_point(tiny_sweep):
  _, results, _ = tiny_sweep
  grids = results['grids']
  assert [r['hparams'] for r in grids['baseline']['runs']] == [
      {'learning_rate': lr, 'weight_decay': 0.0} for lr in (3e-3, 1e-2)]
  assert [r['hparams'] for r in grids['distilled']['runs']] == [
      {'temperature': t, 'soft_weight': 0.9, 'learning_rate': 1e-2, 'weight_decay': 0.0}
      for t in (2.0, 4.0)]
  best_kd = {key: grids['distilled']['best_hparams'][key] for key in ('temperature', 'soft_weight')}
  assert [r['hparams'] for r in grids['distilled_lr']['runs']] == [
      {**best_kd, 'learning_rate': lr, 'weight_decay': 0.0} for lr in (3e-3, 1e-2)]
  assert results['seed'] == 0 and results['config']['seeds'] == [0]
  assert results['num_val'] == 500


def test_sweep_records_validation_metrics_only(tiny_sweep):
  workdir, results, stdout = tiny_sweep
  for path, key in _keys(results):
    if path[-2:] == ('config', 'data') and key == 'test_split':
      continue  # the config's split name (also in its provenance), not a measurement
    assert 'test' not in key, (path, key)
  runs = [r for grid in results['grids'].values() for r in grid['runs']]
  for run in runs:
    assert set(run['val']) == {'val/acc/student'}
    assert 0.0 <= run['val']['val/acc/student'] <= 1.0
  assert set(results['teacher']['val']) == {'val/acc/student'}
  # Nor do the runs' metric logs hold a test number.
  logs = list(workdir.glob('**/metrics.jsonl'))
  assert len(logs) == 1 + 2 + 2 + 1  # teacher, baseline grid, (T, w) grid, extra lr
  for log in logs:
    for record in writers.read_jsonl(log.parent):
      assert not any(key.startswith('test') for key in record), (log, record)
  assert 'test acc' not in stdout.lower()


def test_sweep_marks_the_best_of_each_grid(tiny_sweep):
  _, results, stdout = tiny_sweep
  for grid in results['grids'].values():
    accs = [r['val']['val/acc/student'] for r in grid['runs']]
    best = grid['runs'][accs.index(max(accs))]
    assert grid['best'] == best['name'] and grid['best_hparams'] == best['hparams']
    assert grid['best_val_acc'] == max(accs)
    assert isinstance(grid['config_is_best'], bool)
  assert stdout.count('**') >= 2 * 3 * 2  # one bold row (2 cells) per table
  assert "config's choice" in stdout


def test_make_results_generates_the_sweep_section(tiny_sweep, tmp_path):
  workdir, _, _ = tiny_sweep
  out = tmp_path / 'results.md'
  others = [arg for name in make_results.NAMES if name != 'hinton_sweep' for arg in ('--keep', name)]
  make_results.main(['--record', str(workdir), '--results', str(tmp_path / 'results'),
                     '--out', str(out), *others])
  text = out.read_text()
  assert '## Hinton et al. (2015): hyper-parameter selection on the validation split' in text
  assert 'val accuracy (%)' in text and 'Seeds: 0.' in text
  assert 'the test split was not evaluated' in text


def _run(name, acc, **hparams):
  return {'name': name, 'hparams': hparams, 'val': {'val/acc/student': acc}}


def test_selection_reports_the_config_honestly():
  runs = [_run('a', 0.8, lr=1.0), _run('b', 0.9, lr=2.0), _run('c', 0.9, lr=3.0)]
  best = hinton_sweep._selection('lr', runs, {'lr': 2.0}, {})
  assert best['best'] == 'b' and best['config_is_best'] and best['config_ties_best']
  tie = hinton_sweep._selection('lr', runs, {'lr': 3.0}, {})
  assert tie['best'] == 'b' and not tie['config_is_best'] and tie['config_ties_best']
  assert 'ties the best' in hinton_sweep._verdict(tie, ('lr',))
  worse = hinton_sweep._selection('lr', runs, {'lr': 1.0}, {})
  assert not worse['config_ties_best']
  assert 'is NOT the best: 80.0 %' in hinton_sweep._verdict(worse, ('lr',))
  absent = hinton_sweep._selection('lr', runs, {'lr': 4.0}, {})
  assert absent['config_val_acc'] is None and not absent['config_is_best']


@pytest.mark.slow
def test_hinton_sweep_cpu_full(tmp_path):
  """The full cpu sweep: every run learns, and distillation beats labels alone."""
  hinton_sweep.main(['--config=experiments/configs/hinton.py:cpu', f'--workdir={tmp_path}',
                     '--config.progress=false'])
  with open(tmp_path / 'results.json') as f:
    grids = json.load(f)['grids']
  for grid in grids.values():
    assert all(r['val']['val/acc/student'] > 0.5 for r in grid['runs'])
  assert grids['distilled']['best_val_acc'] > grids['baseline']['best_val_acc']
