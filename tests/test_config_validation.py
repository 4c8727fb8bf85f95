"""Config validation: every bad key listed in one message, before anything compiles."""

import math

import ml_collections
import pytest

from experiments.configs import cifar_kd as cifar_kd_configs
from experiments.configs import hinton as hinton_configs
from experiments.configs import hinton_large as hinton_large_configs
from experiments.configs import lm_distill as lm_distill_configs
from experiments.configs import lm_kd as lm_kd_configs
from experiments.configs import multilingual as multilingual_configs
from experiments.configs import seqkd as seqkd_configs
from kdjax import config as config_lib

CONFIGS = {'hinton': hinton_configs, 'lm_kd': lm_kd_configs, 'seqkd': seqkd_configs,
           'cifar_kd': cifar_kd_configs, 'hinton_large': hinton_large_configs,
           'lm_distill': lm_distill_configs, 'multilingual': multilingual_configs}


def _scales(name):
  if name == 'cifar_kd':
    return ['cpu', 'full'] + [f'full_{t}_{s}' for t, s in cifar_kd_configs.FULL_PAIRS]
  if name == 'hinton_large':
    return ['cpu']
  if name == 'lm_distill':
    return ['smoke', 'cpu', 'full']
  return ['cpu', 'full']


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_every_shipped_config_is_valid(name):
  schema = CONFIGS[name].schema()
  for scale in _scales(name):
    schema.validate(CONFIGS[name].get_config(scale))


def _set(key, value):
  def mutate(c):
    *path, last = key.split('.')
    node = c
    for part in path:
      node = node.setdefault(part, {})
    node[last] = value
  return mutate


def _delete(key):
  def mutate(c):
    *path, last = key.split('.')
    node = c
    for part in path:
      node = node[part]
    del node[last]
  return mutate


def _both(*mutations):
  def mutate(c):
    for m in mutations:
      m(c)
  return mutate


# (config, mutation, expected in the message): each a distinct mistake.
BAD_CONFIGS = [
    ('hinton', _set('foo', 1), "foo = 1: unknown key; 'the config' has"),
    ('hinton', _set('kd.temprature', 3.0), "kd.temprature = 3.0: unknown key; 'kd' has ['learning_rate'"),
    ('hinton', _set('bar.x', 1), "bar.x = 1: unknown key; the config has no group 'bar'"),
    ('hinton', _set('student.epochs', 2.5), 'student.epochs = 2.5: expected int'),
    ('hinton', _set('seeds', 'abc'), "seeds = 'abc': expected tuple of int"),
    ('hinton', _set('progress', 'yes'), "progress = 'yes': expected bool"),
    ('hinton', _set('teacher.epochs', True), 'teacher.epochs = True: expected int'),
    ('hinton', _set('kd.temperature', 0.0), 'kd.temperature = 0.0: must be > 0'),
    ('hinton', _set('kd.temperature', -2.0), 'kd.temperature = -2.0: must be > 0'),
    ('hinton', _set('kd.temperature', math.nan), 'kd.temperature = nan: must be > 0'),
    ('hinton', _set('kd.soft_weight', 1.5), 'kd.soft_weight = 1.5: must be in [0, 1]'),
    ('hinton', _set('teacher.dropout', 1.0), 'teacher.dropout = 1.0: must be in [0, 1)'),
    ('hinton', _set('teacher.kind', 'cnn'), "teacher.kind = 'cnn': must be one of ['cnn1d', 'mlp']"),
    ('hinton', _set('student.hidden_sizes', (256, 0)),
     'student.hidden_sizes = (256, 0): each element must be > 0'),
    ('hinton', _set('seeds', ()), 'seeds = (): must not be empty'),
    ('hinton', _set('seeds', (0, 0)), 'seeds = (0, 0): elements must be distinct'),
    ('hinton', _set('omitted.label', 10), 'omitted.label = 10: must be one of [0, 1,'),
    ('hinton', _delete('kd.temperature'), 'kd.temperature = None: missing key'),
    ('lm_kd', _set('student.num_heads', 5), 'student.hidden = 64: must be divisible by student.num_heads=5'),
    ('lm_kd', _both(_set('data.val_fraction', 0.6), _set('data.test_fraction', 0.5)),
     'data.val_fraction = 0.6: data.val_fraction + data.test_fraction = 1.1 must be < 1'),
    ('lm_kd', _set('variants', ('labels', 'kl')), "each element must be one of ['labels'"),
    ('lm_kd', _set('kd.jsd_beta', -0.1), 'kd.jsd_beta = -0.1: must be in [0, 1]'),
    ('lm_kd', _set('kd.kd_weight_grid', ()), 'kd.kd_weight_grid = (): must not be empty'),
    ('seqkd', _set('data.source', 'wmt'), "data.source = 'wmt': must be one of ['gettext', 'wmt14']"),
    ('seqkd', _set('eval.beam_width', 0), 'eval.beam_width = 0: must be > 0'),
    ('seqkd', _set('data.vocab_size', 4), 'data.vocab_size = 4: must be >= 8'),
    ('cifar_kd', _set('at.features', ('feat_1', 'feat_7')),
     "at.features = ('feat_1', 'feat_7'): ['feat_7'] out of range for the teacher model"),
    ('cifar_kd', _set('fitnets.teacher_feature', 'feat_9'),
     "fitnets.teacher_feature = 'feat_9': ['feat_9'] out of range"),
    ('cifar_kd', _set('student.train.decay_rate', -0.5),
     "student.train.decay_rate = -0.5: the student's learning rate goes negative (reaches -0.025)"),
    ('cifar_kd', _set('teacher.train.learning_rate', -0.1),
     'teacher.train.learning_rate = -0.1: must be > 0'),
    ('cifar_kd', _set('methods', ('kd', 'dkdx')), "each element must be one of ['vanilla'"),
    ('cifar_kd', _set('dml.num_students', 1), 'dml.num_students = 1: must be >= 2'),
    ('cifar_kd', _set('student.train.decay_fractions', (0.5, 1.5)), 'each element must be in (0, 1)'),
]


@pytest.mark.parametrize('name,mutate,expected', BAD_CONFIGS,
                         ids=[f'{n}-{e.split(":")[0].split(" ")[0]}' for n, _, e in BAD_CONFIGS])
def test_bad_config_names_the_key_value_and_range(name, mutate, expected):
  module = CONFIGS[name]
  values = module.get_config('cpu').to_dict()
  mutate(values)
  with pytest.raises(config_lib.ConfigError) as error:
    module.schema().validate(ml_collections.ConfigDict(values))
  assert expected in str(error.value), str(error.value)


def test_one_message_lists_every_offending_key():
  values = hinton_configs.get_config('cpu').to_dict()
  for mutate in (_set('foo', 1), _set('kd.temperature', -1.0), _set('seeds', ()),
                 _set('student.epochs', 0.5), _set('omitted.label', 11)):
    mutate(values)
  with pytest.raises(config_lib.ConfigError) as error:
    hinton_configs.schema().validate(ml_collections.ConfigDict(values))
  message = str(error.value)
  assert message.startswith('invalid config (5 problems):')
  for key in ('foo', 'kd.temperature', 'seeds', 'student.epochs', 'omitted.label'):
    assert f'\n  {key} = ' in message
  assert len(error.value.problems) == 5


def _generic_config(**changes):
  c = ml_collections.ConfigDict({
      'mesh': {'data': 2, 'fsdp': 2, 'tensor': 2},
      'batch_size': 16,
      'student_vocab': 32_064, 'vocab_padding': 64, 'teacher_vocab': 32_000,
      'layer_map': ((0, 1), (1, 3)), 'student_layers': 2, 'teacher_layers': 4,
      'warmup': 10.0, 'peak': 1.0, 'final': 0.1,
      'seeds': (0, 1, 2), 'selection_seed': 100, 'selection_seeds': (100, 101),
  })
  for key, value in changes.items():
    *path, last = key.split('.')
    node = c
    for part in path:
      node = node[part]
    node[last] = value
  return c


def _generic_schema():
  cl = config_lib
  return cl.Schema(_generic_config(), {'batch_size': cl.positive()}, (
      cl.mesh_fits_devices('mesh'),
      cl.batch_divisible('batch_size', 'mesh'),
      cl.vocab_covers('student_vocab', 'teacher_vocab', 'vocab_padding'),
      cl.layer_map_in_range('layer_map', 'student_layers', 'teacher_layers'),
      cl.schedule_nonnegative(('peak', 'final'), lambda c: (0.0, c.peak, c.final),
                              'the learning rate'),
      cl.disjoint('selection_seed', 'seeds'),
      cl.disjoint('selection_seeds', 'seeds'),
  ))


BAD_COMBINATIONS = [
    ({'mesh.data': 4}, 'mesh = ', 'the mesh has 16 devices; it must divide the 8 devices'),
    ({'mesh.tensor': 3, 'batch_size': 12}, 'mesh = ', 'the mesh has 12 devices'),
    ({'batch_size': 6}, 'batch_size = 6', 'must be divisible by 4, the product of the mesh axes'),
    ({'teacher_vocab': 31_999}, 'teacher_vocab = 31999', 'must be >= 32000'),
    ({'layer_map': ((0, 1), (2, 3))}, 'layer_map = ((0, 1), (2, 3))', 'out of range: [(2, 3)]'),
    ({'layer_map': ((0, 4),)}, 'layer_map = ((0, 4),)', 'teacher in [0, 4)'),
    ({'layer_map': ((0, -1),)}, 'layer_map = ((0, -1),)', 'out of range: [(0, -1)]'),
    ({'final': -0.1}, 'final = -0.1', 'the learning rate goes negative (reaches -0.1)'),
    ({'selection_seed': 2}, 'selection_seed = 2',
     'must share no value with seeds = (0, 1, 2); shared: [2]'),
    ({'selection_seeds': (1, 100, 0)}, 'selection_seeds = (1, 100, 0)', 'shared: [0, 1]'),
]


@pytest.mark.parametrize('changes,key,expected', BAD_COMBINATIONS)
def test_impossible_combinations(changes, key, expected):
  _generic_schema().validate(_generic_config(), device_count=8)
  with pytest.raises(config_lib.ConfigError) as error:
    _generic_schema().validate(_generic_config(**changes), device_count=8)
  assert f'  {key}' in str(error.value) and expected in str(error.value), str(error.value)


def test_schema_rejects_bounds_for_unknown_keys():
  with pytest.raises(ValueError, match=r"bounds for keys the defaults lack: \['kd.temprature'\]"):
    config_lib.Schema(hinton_configs.get_config(), {'kd.temprature': config_lib.positive()})


@pytest.mark.parametrize('module,configs', [
    ('hinton', 'hinton'), ('hinton_sweep', 'hinton'), ('lm_kd', 'lm_kd'), ('seqkd', 'seqkd'),
    ('cifar_kd', 'cifar_kd')])
def test_experiments_validate_before_running(module, configs, tmp_path, monkeypatch):
  experiment = __import__(f'experiments.{module}', fromlist=['main'])
  ran = []
  monkeypatch.setattr(experiment, 'run', lambda *a, **k: ran.append(a))
  with pytest.raises(config_lib.ConfigError, match='temperature = -1.0: must be > 0'):
    experiment.main([f'--config=experiments/configs/{configs}.py:cpu', f'--workdir={tmp_path}',
                     '--config.kd.temperature=-1'])
  assert not ran
