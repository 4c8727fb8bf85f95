"""The CIFAR KD experiment: a one-epoch smoke run of every method, and its pieces."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _common
from experiments import cifar_kd
from experiments import make_results
from experiments.configs import cifar_kd as cifar_kd_configs
from kdjax import data as data_lib
from kdjax import metrics as metrics_lib
from kdjax import writers

TINY = [
    '--config.seeds=(0,)', '--config.progress=false',
    '--config.teacher.name=CifarResNet', '--config.teacher.depth=8',
    '--config.teacher.widths=(4, 4, 8, 8)', '--config.student.name=CifarResNet',
    '--config.student.depth=8', '--config.student.widths=(4, 4, 4, 8)',
    '--config.teacher.train.epochs=1', '--config.student.train.epochs=1',
]


@pytest.fixture(autouse=True)
def _fast_compiling_rng():
  """Non-partitionable threefry: the models' inits compile about 4x faster on CPU.

  (It changes the random streams, not what the tests check.)
  """
  with jax.threefry_partitionable(False):
    yield


def _tiny_config(data_dir):
  config = cifar_kd_configs.get_config('cpu')
  config.data.data_dir = str(data_dir)
  for spec, widths in ((config.teacher, (4, 4, 8, 8)), (config.student, (4, 4, 4, 8))):
    spec.update({'name': 'CifarResNet', 'depth': 8, 'widths': widths})
  config.crd.update({'num_negatives': 8, 'dim': 4})
  return config


@pytest.fixture(scope='module')
def experiment(tmp_path_factory):
  """The cpu config's Experiment at tiny width, on 96 training digits (one step of 64)."""
  config = _tiny_config(tmp_path_factory.mktemp('tfds'))
  arrays, num_classes = cifar_kd.load_arrays(config)
  train = {k: v[:96] for k, v in arrays['train'].items()}
  arrays = {'train': train, 'val': arrays['val'], 'test': arrays['test']}
  return cifar_kd.Experiment(config, arrays, num_classes)


def _numpy(tree):
  return jax.tree.map(np.asarray, tree)


# About 15-40 s of compilation each on 2 cores: slow. The fast suite keeps
# test_full_config_runs_on_mocked_cifar100 (teacher + DKD through main()).
@pytest.mark.slow
@pytest.mark.parametrize('method', cifar_kd_configs.METHODS)
def test_one_step_of_every_method(experiment, method):
  """Each method's compiled epoch (one step here) runs, moves the student, reports its losses."""
  teachers = [jax.jit(experiment._init_teacher)(jax.random.PRNGKey(k)) for k in range(2)]
  teacher_variables = {'vanilla': None, 'dml': None,
                       'multi_teacher': tuple(teachers)}.get(method, teachers[0])
  train = jax.device_put(experiment.arrays['train'])
  state = None
  for stage, trainer in enumerate(experiment.method_trainers(method)):
    start = trainer.init(jax.random.PRNGKey(7))
    if state is not None:  # FitNets' stage 2 continues from stage 1
      start = start.replace(params=state.params, model_state=state.model_state)
    before = _numpy(start)
    state, metrics = trainer.epoch_fn(start, teacher_variables, train, jax.random.PRNGKey(1))
    means = metrics_lib.compute(metrics)
    assert int(state.step) == 1
    total = [v for k, v in means.items() if k.endswith('loss/total')]
    assert total and all(np.isfinite(total)), means
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)),
                         before.params, state.params)
    if method == 'fitnets' and stage == 0:
      # Stage 1 moves the layers up to the guided layer (feat_2) and the
      # regressor, and nothing after it.
      assert all(jax.tree.leaves(moved['hint_regressor']))
      assert all(jax.tree.leaves(moved['backbone']['layer1_0']))
      assert not any(jax.tree.leaves(moved['backbone']['layer3_0']))
      assert not any(jax.tree.leaves(moved['backbone']['fc']))
      assert means['loss/hint'] > 0
    else:
      assert all(jax.tree.leaves(moved)), method
  expected = {'vanilla': ['loss/ce'], 'kd': ['loss/kd', 'loss/ce'], 'dkd': ['loss/dkd'],
              'at': ['loss/at_feat_1', 'loss/at_feat_3'], 'crd': ['loss/crd'],
              'fitnets': ['loss/kd'], 'multi_teacher': ['loss/kd'],
              'dml': ['student_0/loss/kl', 'student_1/loss/kl']}[method]
  assert all(name in means for name in expected), sorted(means)
  if method == 'crd':
    bank = np.asarray(state.objective_state['crd'].student)
    old = np.asarray(before.objective_state['crd'].student)
    changed = np.any(bank != old, axis=1)
    assert changed.sum() == 64 and float(state.objective_state['crd'].z_student) > 0
    assert 'crd_memory' not in state.model_state


@pytest.mark.slow
def test_evaluation_and_init_are_shared_between_methods(experiment):
  plain = experiment.student()
  assert experiment.evaluate_fn(plain) is experiment.evaluate_fn(experiment.student())
  init = experiment.student_init(plain, experiment.student_optimizer)
  assert experiment.student_init(experiment.student(), experiment.student_optimizer) is init


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """Every method for one epoch on the digits at tiny width, through main()."""
  root = tmp_path_factory.mktemp('cifar_kd')
  workdir = root / 'cifar_kd_cpu'
  cifar_kd.main(['--config=experiments/configs/cifar_kd.py:cpu', f'--workdir={workdir}',
                 f'--config.data.data_dir={root / "tfds"}', '--config.fitnets.stage1_epochs=1',
                 '--config.crd.num_negatives=8', '--config.crd.dim=4', *TINY])
  with open(workdir / 'results.json') as f:
    return workdir, json.load(f)


@pytest.mark.slow
def test_every_method_runs_and_is_recorded(tiny_run):
  workdir, results = tiny_run
  summary = results['summary']
  assert set(summary) == {'teacher', 'teacher_1', *cifar_kd_configs.METHODS}
  for phase, stats in summary.items():
    assert 0.0 <= stats['test']['mean'] <= 1.0, phase
  phases = ['teacher', 'teacher_1', 'fitnets_stage1', 'fitnets_stage2'] + [
      m for m in cifar_kd_configs.METHODS if m != 'fitnets']
  for phase in phases:
    records = writers.read_jsonl(workdir / phase / 'seed0')
    assert {r['split'] for r in records} == {'train', 'eval'}, phase
  assert (workdir / 'teacher' / 'seed0' / 'final' / 'teacher').is_dir()
  dml_eval = [r for r in writers.read_jsonl(workdir / 'dml' / 'seed0') if r['split'] == 'eval']
  last = dml_eval[-1]
  np.testing.assert_allclose(
      last['test/acc/student'], (last['test/acc/student_0'] + last['test/acc/student_1']) / 2)
  assert results['num_test'] == 360 and results['params']['student'] < results['params']['teacher']
  assert results['gradcam']['method'] == 'grad_cam_plus_plus'
  assert (workdir / 'gradcam.png').stat().st_size > 5_000


@pytest.mark.slow
def test_make_results_writes_the_section(tiny_run, tmp_path):
  workdir, results = tiny_run
  out = tmp_path / 'results.md'
  others = [arg for name in make_results.NAMES if name != 'cifar_kd_cpu' for arg in ('--keep', name)]
  make_results.main(['--record', str(workdir), '--results', str(tmp_path / 'results'),
                     '--out', str(out), *others])
  text = out.read_text()
  assert 'DKD (Zhao et al. 2022)' in text and 'CRD (Tian et al. 2020)' in text
  for c in cifar_kd.claims(results):
    assert f"| {c['claim']} |" in text


# The paper-scale config beyond the smoke run (14 s): `make test-slow`.
@pytest.mark.slow
def test_full_config_runs_on_mocked_cifar100(tmp_path):
  """The paper-scale data path: TFDS cifar100, uint8 32x32x3 images, crops and flips."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  with tfds.testing.mock_data(num_examples=100):
    cifar_kd.main(['--config=experiments/configs/cifar_kd.py:full_resnet32x4_resnet8x4',
                   f'--workdir={tmp_path}', "--config.methods=('dkd',)", *TINY])
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  assert results['config']['data']['name'] == 'cifar100'
  assert results['config']['data']['flip'] and results['config']['data']['crop_padding'] == 4
  assert results['num_test'] == 100
  assert set(results['summary']) == {'teacher', 'dkd'}


def test_digits_splits_are_stratified_disjoint_and_complete():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  splits = data_lib.make_digits_arrays()
  digits = datasets.load_digits()
  indices = np.concatenate([splits[s]['index'] for s in ('train', 'validation', 'test')])
  np.testing.assert_array_equal(np.sort(indices), np.arange(1797))
  overall = np.bincount(digits.target, minlength=10) / 1797
  for name, split in splits.items():
    assert len(split['label']) == {'train': 1077, 'validation': 360, 'test': 360}[name]
    np.testing.assert_array_equal(split['label'], digits.target[split['index']])
    np.testing.assert_array_equal(split['x'][..., 0] * 16, digits.images[split['index']])
    share = np.bincount(split['label'], minlength=10) / len(split['label'])
    assert np.max(np.abs(share - overall)) < 0.01, name


def test_augment_crops_are_zero_filled_shifts_and_flips_mirror():
  x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1) + 1.0
  out = np.asarray(cifar_kd.make_augment(1, False)({'x': jnp.asarray(x)}, jax.random.PRNGKey(3))['x'])
  for image, crop in zip(x, out):
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
    windows = [padded[dy:dy + 4, dx:dx + 4] for dy in range(3) for dx in range(3)]
    assert any(np.array_equal(crop, w) for w in windows)
  flipped = np.asarray(cifar_kd.make_augment(0, True)({'x': jnp.asarray(x)},
                                                      jax.random.PRNGKey(0))['x'])
  for image, result in zip(x, flipped):
    assert np.array_equal(result, image) or np.array_equal(result, image[:, ::-1])
  same = cifar_kd.make_augment(0, False)({'x': jnp.asarray(x)}, jax.random.PRNGKey(0))['x']
  np.testing.assert_array_equal(same, x)


def test_per_image_normalizations_match_numpy():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(4, 5, 5, 3)).astype(np.float32)
  per_image = np.asarray(cifar_kd.make_normalize(x, 'per_image')(jnp.asarray(x)))
  expected = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(per_image, expected, rtol=1e-4, atol=1e-5)
  gray = np.asarray(cifar_kd.make_normalize(x, 'gray_per_image')(jnp.asarray(x)))
  g = x.mean(axis=-1, keepdims=True)
  g = (g - g.mean(axis=(1, 2, 3), keepdims=True)) / g.std(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(gray, np.repeat(g, 3, axis=-1), rtol=1e-4, atol=1e-5)
  # Colour carries nothing: the channels permuted give the same input.
  np.testing.assert_allclose(
      np.asarray(cifar_kd.make_normalize(x, 'gray_per_image')(jnp.asarray(x[..., ::-1]))), gray,
      rtol=1e-5, atol=1e-6)
  flat = np.full((1, 5, 5, 3), 0.5, np.float32)  # std 0: floored, no NaN
  assert np.all(np.asarray(cifar_kd.make_normalize(x, 'per_image')(jnp.asarray(flat))) == 0)
  per_channel = np.asarray(cifar_kd.make_normalize(x)(jnp.asarray(x)))
  np.testing.assert_allclose(per_channel.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  with pytest.raises(ValueError, match='normalize must be one of'):
    cifar_kd.make_normalize(x, 'per_row')


def _sgd_rates(**recipe_changes) -> list[float]:
  """The learning rate of each of 16 steps (2 a epoch, 8 epochs, plain SGD) of the recipe."""
  recipe = cifar_kd_configs.get_config('cpu').student.train
  recipe.update({'epochs': 8, 'momentum': 0.0, 'weight_decay': 0.0,
                 'decay_fractions': (0.5, 0.75), 'decay_rate': 0.1, **recipe_changes})
  optimizer = cifar_kd.make_optimizer(recipe, steps_per_epoch=2)
  params = {'w': jnp.zeros(())}
  state = optimizer.init(params)
  rates = []
  for _ in range(16):
    updates, state = optimizer.update({'w': jnp.ones(())}, state, params)
    rates.append(-float(updates['w']))
  return rates


def test_optimizer_is_step_decayed_sgd_with_l2_like_pytorch():
  # Boundaries at epochs 4 and 6 of 8, i.e. steps 8 and 12.
  expected = [0.05] * 8 + [0.005] * 4 + [0.0005] * 4
  np.testing.assert_allclose(_sgd_rates(), expected, rtol=1e-6)
  recipe = cifar_kd_configs.get_config('cpu').student.train
  recipe.update({'weight_decay': 5e-4, 'momentum': 0.9})
  optimizer = cifar_kd.make_optimizer(recipe, steps_per_epoch=2)
  params = {'w': jnp.full((3,), 2.0)}
  updates, _ = optimizer.update({'w': jnp.zeros(3)}, optimizer.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.05 * 5e-4 * 2.0, rtol=1e-6)


def test_optimizer_warms_up_linearly_then_decays_as_before():
  # 1.5 epochs of 2 steps: 3 warm-up steps at 1/3, 2/3, 3/3 of the rate.
  expected = [0.05 / 3, 0.1 / 3, 0.05] + [0.05] * 5 + [0.005] * 4 + [0.0005] * 4
  np.testing.assert_allclose(_sgd_rates(warmup_epochs=1.5), expected, rtol=1e-6)


def test_dkd_weight_warms_up_linearly():
  config = cifar_kd_configs.get_config('cpu').dkd
  config.warmup_epochs = 3
  objective = cifar_kd.dkd_objective(config, steps_per_epoch=10)
  warmup = 3 * 10
  for step in (0, 7, 30, 100):
    assert float(objective.weight('dkd', jnp.asarray(step))) == pytest.approx(
        min(step / warmup, 1.0))


def test_trainable_paths_are_the_parameters_on_the_loss_path():
  params = {'early': {'w': jnp.ones(2)}, 'late': {'w': jnp.ones(2)}, 'head': jnp.ones(())}
  paths = cifar_kd.trainable_paths(lambda p: jnp.sum(p['early']['w'] * p['head']), params)
  assert paths == {'early/w', 'head'}


def test_cohort_packs_and_unpacks():
  from kdjax import step as step_lib  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  states = [step_lib.init_train_state({'params': {'w': jnp.full(2, float(k))},
                                       'batch_stats': {'m': jnp.full(2, 10.0 + k)}},
                                      optax.sgd(0.1, momentum=0.9), rng=k)
            for k in range(3)]
  back = cifar_kd.unpack_cohort(cifar_kd.pack_cohort(states))
  for before, after in zip(states, back):
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
      np.testing.assert_array_equal(a, b)


def test_claims_are_paired_per_seed_test_accuracies():
  def seed(**acc):
    return {m: {'test/acc/student': a} for m, a in acc.items()}

  per_seed = [seed(teacher=0.95, vanilla=0.90, kd=0.92 + d, dkd=0.95, dml=0.93)
              for d in (0.0, 0.005, -0.005)]
  by_text = {c['claim'].split(' (')[0]: c for c in cifar_kd.claims({'per_seed': per_seed})}
  # Only the claims whose runs were made.
  assert set(by_text) == {'the teacher beats the labels-only student, the gap to close',
                          'KD beats labels only', 'DKD beats KD',
                          'DML peers beat the labels-only student'}
  kd = by_text['KD beats labels only']
  assert kd['difference']['values'] == pytest.approx([0.02, 0.025, 0.015])
  assert kd['verdict'] == _common.SHOWN and _common.outcome(kd) == _common.REPRODUCED
  assert by_text['DKD beats KD']['verdict'] == _common.SHOWN
  # DML is shown by its numbers, but the comparison is not a fair one: never reproduced.
  dml = by_text['DML peers beat the labels-only student']
  assert dml['verdict'] == _common.SHOWN and _common.outcome(dml).startswith(_common.NOT_SHOWN)


def test_configs_cover_the_tables_and_reject_unknown_scales():
  for teacher, student in cifar_kd_configs.FULL_PAIRS:
    c = cifar_kd_configs.get_config(f'full_{teacher}_{student}')
    assert (c.teacher.name, c.student.name) == (teacher, student)
    assert c.student.train.learning_rate == (
        0.01 if student in cifar_kd_configs.LOW_LR_STUDENTS else 0.05)
    assert c.student.train.epochs == 240 and c.crd.num_negatives == 16384
  assert cifar_kd_configs.get_config('full').teacher.name == 'resnet32x4'
  with pytest.raises(ValueError, match="unknown scale 'full_resnet8_resnet2'"):
    cifar_kd_configs.get_config('full_resnet8_resnet2')


def test_unknown_method_is_a_clear_error(tmp_path):
  # The config's schema refuses it before anything is built.
  with pytest.raises(ValueError, match=r"methods = \('fitnet',\): each element must be one of"):
    cifar_kd.main(['--config=experiments/configs/cifar_kd.py:cpu', f'--workdir={tmp_path}',
                   "--config.methods=('fitnet',)"])
