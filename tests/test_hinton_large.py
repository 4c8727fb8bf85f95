"""Hinton et al. in the paper's regime on the larger MNIST-1D: data, selection, verdicts, smoke run."""

import json
import math

import mnist1d.data
import numpy as np
import pytest

from experiments import _common
from experiments import hinton
from experiments import hinton_large
from experiments import make_results
from experiments.configs import hinton_large as hinton_large_config
from kdjax import config as config_lib
from kdjax import data as kdata
from kdjax import writers

# ----------------------------------------------------------------------------
# Data.


def test_large_config_passes_num_samples_to_mnist1d(monkeypatch):
  seen = []

  def fake_make_dataset(args):
    seen.append(args.num_samples)
    n_train = int(args.num_samples * args.train_split)
    return {'x': np.zeros((n_train, 40)), 'y': np.zeros(n_train, int),
            'x_test': np.zeros((args.num_samples - n_train, 40)),
            'y_test': np.zeros(args.num_samples - n_train, int)}

  monkeypatch.setattr(mnist1d.data, 'make_dataset', fake_make_dataset)
  assert kdata.Mnist1d.builder_configs['large'].num_samples == 20000
  assert kdata.Mnist1d.builder_configs['default'].num_samples == 5000
  arrays = kdata.make_mnist1d_arrays(20000)
  assert arrays['x'].shape == (16000, 40) and arrays['x_test'].shape == (4000, 40)
  kdata.make_mnist1d_arrays()
  assert seen == [20000, 5000]


@pytest.mark.slow
def test_large_config_is_mnist1d_with_20000_samples(tmp_path):
  train = kdata.load_source('mnist1d/large', 'train', data_dir=str(tmp_path))
  test = kdata.load_source('mnist1d/large', 'test', data_dir=str(tmp_path))
  assert (len(train), len(test)) == (16000, 4000)
  args = mnist1d.data.get_dataset_args()
  args.num_samples = 20000
  reference = mnist1d.data.make_dataset(args)
  for source, x_key, y_key in ((train, 'x', 'y'), (test, 'x_test', 'y_test')):
    rows = [source[i] for i in range(0, len(source), 97)]  # a sample of rows, in order
    np.testing.assert_array_equal(np.stack([r['x'] for r in rows]),
                                  reference[x_key][::97].astype(np.float32))
    np.testing.assert_array_equal([int(r['label']) for r in rows], reference[y_key][::97])
  # About 400 test examples of each class.
  counts = np.bincount(reference['y_test'], minlength=10)
  assert counts.min() > 350 and counts.sum() == 4000
  # The default config is the package's 5,000 examples.
  assert len(kdata.load_source('mnist1d', 'test', data_dir=str(tmp_path))) == 1000


@pytest.mark.parametrize('num_samples', [0, -10, 15, 2.5, True])
def test_make_mnist1d_arrays_rejects_bad_sizes(num_samples):
  with pytest.raises(ValueError, match=r'num_samples must be a positive multiple of 10'):
    kdata.make_mnist1d_arrays(num_samples)


# ----------------------------------------------------------------------------
# Selection: validation only, widening at edges.


def _fake_runs(val, test):
  """A run function whose validation and test metrics disagree."""
  calls = []

  def run(point):
    calls.append(dict(point))
    return {'val/acc/student': val(point), 'test/acc/student': test(point)}

  return run, calls


def test_grid_search_chooses_on_validation_not_test():
  # Validation prefers lr = 1e-2; test prefers lr = 1e-3 (and disagrees everywhere).
  val = lambda p: {1e-3: 0.6, 3e-3: 0.7, 1e-2: 0.8}[p['learning_rate']]
  test = lambda p: 1.0 - val(p)
  run, calls = _fake_runs(val, test)
  record = hinton_large.grid_search({'learning_rate': (1e-3, 3e-3, 1e-2)}, run, max_widen=0)
  assert record['best'] == {'learning_rate': 1e-2} and record['best_val'] == 0.8
  assert record['on_edge'] == {'learning_rate': 'high'}  # not widened: max_widen = 0
  # Only the validation metric is recorded.
  assert all(set(r['val']) == {'val/acc/student'} for r in record['runs'])
  assert 'test' not in json.dumps(record)
  with pytest.raises(ValueError, match=r"metric must be a validation metric \('val/...'\)"):
    hinton_large.grid_search({'learning_rate': (1e-3,)}, run, metric='test/acc/student')


def test_grid_search_widens_an_edge_until_the_best_is_inside():
  # Validation accuracy peaks at lr = 0.1, beyond the grid's high edge.
  val = lambda p: 1.0 - (math.log10(p['learning_rate']) + 1.0) ** 2 / 10
  run, calls = _fake_runs(val, lambda p: 0.0)
  record = hinton_large.grid_search({'learning_rate': (1e-3, 1e-2)}, run, max_widen=3)
  lrs = [c['learning_rate'] for c in calls]
  np.testing.assert_allclose(lrs, [1e-3, 1e-2, 1e-1, 1.0])  # widened twice, then inside
  assert record['best']['learning_rate'] == pytest.approx(0.1)
  assert record['on_edge'] == {'learning_rate': None} and record['widened'] == {'learning_rate': 2}
  # A limit stops the widening, and the record says the choice is on an edge.
  run, calls = _fake_runs(val, lambda p: 0.0)
  record = hinton_large.grid_search({'learning_rate': (1e-3, 1e-2)}, run, max_widen=3,
                                    limits={'learning_rate': (1e-4, 0.05)})
  np.testing.assert_allclose([c['learning_rate'] for c in calls], [1e-3, 1e-2, 0.05])
  assert record['best']['learning_rate'] == 0.05  # the limit itself was tried
  assert record['on_edge'] == {'learning_rate': 'high'} and record['widened'] == {
      'learning_rate': 1}


def test_grid_search_widens_along_the_line_through_the_best_point():
  # Two axes: the best width is on its high edge; only the best lr is rerun there.
  val = lambda p: p['width'] / 1000 + {1e-3: 0.0, 1e-2: 0.1}[p['learning_rate']]
  run, calls = _fake_runs(val, lambda p: 0.0)
  record = hinton_large.grid_search({'width': (64, 128), 'learning_rate': (1e-3, 1e-2)}, run,
                                    max_widen=1, scales={'learning_rate': 'log'},
                                    limits={'learning_rate': (1e-3, 1e-2)})
  assert calls[4:] == [{'width': 256.0, 'learning_rate': 1e-2}]
  assert record['best'] == {'width': 256.0, 'learning_rate': 1e-2}
  assert record['on_edge'] == {'width': 'high', 'learning_rate': 'high'}


def test_widen_steps():
  assert hinton_large.widen([1e-3, 1e-2], 'high', 'log') == pytest.approx(0.1)
  assert hinton_large.widen([2.0, 4.0, 8.0], 'low', 'log') == pytest.approx(1.0)
  assert hinton_large.widen([128, 256], 'low', 'int_log') == 64.0
  logit = lambda p: math.log(p / (1 - p))
  high = hinton_large.widen([0.5, 0.9], 'high', 'logit')
  assert logit(high) == pytest.approx(2 * logit(0.9))
  assert hinton_large.widen([0.5, 0.9], 'low', 'logit') == pytest.approx(0.1)
  assert hinton_large.widen([0.2, 0.5], 'high', 'linear') == pytest.approx(0.8)
  # A step past a limit stops at the limit; an edge at the limit is not widened.
  assert hinton_large.widen([0.2, 0.5], 'high', 'linear', (0.0, 0.7)) == 0.7
  assert hinton_large.widen([0.2, 0.5], 'low', 'linear', (0.0, 0.7)) == 0.0
  assert hinton_large.widen([0.0, 0.5], 'low', 'linear', (0.0, 0.7)) is None
  assert hinton_large.widen([128, 256], 'high', 'int_log', (16, 512)) == 512
  assert hinton_large.widen([0.5], 'high', 'log') is None


def test_choose_bias_maximises_mean_validation_accuracy():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 200)
  logits = [rng.normal(size=(200, 4)) + 2.0 * np.eye(4)[labels] - 1.5 * np.eye(4)[2]
            for _ in range(2)]
  grid = tuple(0.25 * i for i in range(13))
  chosen = hinton_large.choose_bias(logits, labels, 2, grid)

  def mean_acc(delta):  # evaluated here, in NumPy
    accs = []
    for l in logits:
      shifted = l.copy()
      shifted[:, 2] += delta
      accs.append(np.mean(shifted.argmax(-1) == labels))
    return np.mean(accs)

  scores = [mean_acc(d) for d in grid]
  assert chosen['bias'] == grid[int(np.argmax(scores))]
  assert chosen['val_acc'] == pytest.approx(max(scores))
  assert chosen['bias'] > 0  # the class was pushed down, so raising it helps


# ----------------------------------------------------------------------------
# Verdicts.

def _per_seed(teacher, base, dist, on_label):
  return [{'teacher': {'test_acc': t},
           'arms': {'paper': {'baseline': {'test_acc': b}, 'distilled': {'test_acc': d},
                              'omitted': {'after_selected_bias': {'acc_on_label': o}}}}}
          for t, b, d, o in zip(teacher, base, dist, on_label)]


def test_verdicts_of_the_claims():
  per_seed = _per_seed([0.90, 0.91, 0.92], [0.80, 0.80, 0.81], [0.88, 0.885, 0.895],
                       [0.9, 0.95, 0.97])
  v = hinton_large.verdicts(per_seed)['paper']
  assert v['kd_beats_labels']['verdict'] == _common.SHOWN
  np.testing.assert_allclose(v['kd_beats_labels']['difference']['values'], [0.08, 0.085, 0.085])
  np.testing.assert_allclose(v['most_of_gap_recovered']['difference']['values'],
                             [0.08 / 0.10, 0.085 / 0.11, 0.085 / 0.11])
  assert v['most_of_gap_recovered']['threshold'] == 0.5
  assert v['most_of_gap_recovered']['verdict'] == _common.SHOWN
  assert v['omitted_class_recognised']['verdict'] == _common.SHOWN
  worse = hinton_large.verdicts(_per_seed([0.9] * 3, [0.8, 0.81, 0.8], [0.79, 0.795, 0.785],
                                          [0.1, 0.2, 0.1]))['paper']
  assert worse['kd_beats_labels']['verdict'] == _common.CONTRADICTED
  assert worse['omitted_class_recognised']['verdict'] == _common.CONTRADICTED
  # A seed whose teacher ties its student leaves the gap-recovered claim out.
  tie = hinton_large.verdicts(_per_seed([0.8, 0.9, 0.9], [0.8, 0.8, 0.8], [0.81, 0.82, 0.83],
                                        [0.6, 0.7, 0.8]))['paper']
  assert 'most_of_gap_recovered' not in tie and 'kd_beats_labels' in tie


# ----------------------------------------------------------------------------
# Config.


def test_schema_refuses_reported_seeds_among_the_selection_seeds():
  config = hinton_large_config.get_config()
  config.selection_seeds = (100, 1)
  with pytest.raises(config_lib.ConfigError, match=r'selection_seeds.*shared: \[1\]'):
    hinton_large_config.schema().validate(config)
  hinton_large_config.schema().validate(hinton_large_config.get_config())


# ----------------------------------------------------------------------------
# A smoke run: one epoch, tiny models, tiny splits.


def _tiny_args(workdir, data_dir):
  return [
      '--config=experiments/configs/hinton_large.py:cpu', f'--workdir={workdir}',
      f'--config.data.data_dir={data_dir}', '--config.data.name=mnist1d',
      '--config.data.train_split=train[:256]', '--config.data.val_split=train[3800:]',
      '--config.data.test_split=test[:300]', '--config.progress=false',
      '--config.seeds=(0,)', '--config.selection_seeds=(100,)',
      '--config.teacher.epochs=2', '--config.student.epochs=1',
      '--config.teacher.hidden_sizes=(4, 4, 4)', '--config.grid.teacher_dropout=(0.5,)',
      '--config.grid.teacher_learning_rate=(0.003,)', '--config.grid.width=(8,)',
      '--config.grid.learning_rate=(0.01,)', '--config.grid.temperature=(2.0, 4.0)',
      '--config.grid.soft_weight=(0.5,)', '--config.max_widen=1',
  ]


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, mnist1d_data_dir):
  workdir = tmp_path_factory.mktemp('hinton_large') / 'hinton_large'
  reads = []
  load_split = hinton_large.load_split
  select, score_test = hinton_large.select, hinton_large.score_test
  events = []

  def recording_load_split(config, split):
    reads.append(split)
    events.append(('read', split))
    return load_split(config, split)

  def recording_select(exp):
    out = select(exp)
    events.append(('selected', None))
    return out

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(hinton_large, 'load_split', recording_load_split)
    mp.setattr(hinton_large, 'select', recording_select)
    hinton_large.main(_tiny_args(workdir, mnist1d_data_dir))
  with open(workdir / 'results.json') as f:
    return workdir, json.load(f), events


def test_smoke_run_reads_test_once_after_selection_and_training(tiny_run):
  workdir, results, events = tiny_run
  assert events == [('read', 'train[:256]'), ('read', 'train[3800:]'), ('selected', None),
                    ('read', 'test[:300]')]
  # No metric log of any run (selection or reported) holds a test number.
  logs = list(workdir.glob('**/metrics.jsonl'))
  assert len(logs) == 1 + 2 * (1 + 3 + 1) + 1 * (1 + 2 * 3)  # see the grids in _tiny_args
  for log in logs:
    for record in writers.read_jsonl(log.parent):
      assert not any('test' in key for key in record), (log, record)
  assert 'test' not in json.dumps(results['selection'])


def test_smoke_run_records_selection_per_seed_tables_and_verdicts(tiny_run):
  _, results, _ = tiny_run
  sel = results['selection']
  assert sel['seeds'] == [100]
  for arm in hinton_large.ARMS:
    kd = sel['arms'][arm]['distilled']
    # T was on an edge, so one value past it was run (max_widen = 1).
    assert kd['widened']['temperature'] == 1 and len(kd['runs']) == 3
    assert sel['arms'][arm]['chosen']['distilled']['width'] == 8
  assert [r['seed'] for r in results['per_seed']] == [0]
  assert results['num_test'] == 300
  test_labels = np.array([int(e['label']) for e in kdata.load_source(
      'mnist1d', 'test[:300]', data_dir=results['config']['data']['data_dir'])])
  assert results['test_examples_of_label'] == np.sum(test_labels == 3) > 0
  for r in results['per_seed']:
    assert r['arms']['paper'].keys() == {'baseline', 'distilled', 'omitted'}
    for arm in r['arms'].values():
      assert 0.0 <= arm['distilled']['test_acc'] <= 1.0
  for arm in hinton_large.ARMS:
    assert set(results['verdicts'][arm]) == {'kd_beats_labels', 'most_of_gap_recovered',
                                             'omitted_class_recognised', 'teacher_beats_student'}


def test_make_results_renders_the_section(tiny_run, tmp_path):
  workdir, _, _ = tiny_run
  out = tmp_path / 'results.md'
  others = [arg for name in make_results.NAMES if name != 'hinton_large' for arg in ('--keep', name)]
  make_results.main(['--record', str(workdir), '--results', str(tmp_path / 'results'),
                     '--out', str(out), *others])
  text = out.read_text()
  assert "## Hinton et al. (2015) in the paper's regime on the larger MNIST-1D" in text
  assert '| paper: the distilled student beats' in text and 'Arm `paper`' in text and 'Arm `jittered`' in text
  assert '--config.grid.width=(8,)' in text  # the command that made it


def test_bad_config_is_refused_before_anything_runs(tmp_path, monkeypatch):
  ran = []
  monkeypatch.setattr(hinton_large, 'run', lambda *a, **k: ran.append(a))
  with pytest.raises(config_lib.ConfigError, match=r'grid\.temperature'):
    hinton_large.main(['--config=experiments/configs/hinton_large.py:cpu',
                       f'--workdir={tmp_path}', '--config.grid.temperature=(-1.0, 2.0)'])
  with pytest.raises(config_lib.ConfigError, match=r'selection_seeds'):
    hinton_large.main(['--config=experiments/configs/hinton_large.py:cpu',
                       f'--workdir={tmp_path}', '--config.selection_seeds=(0,)'])
  assert not ran
