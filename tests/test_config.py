"""Config overrides: typed, strict, clear errors."""

import textwrap

import pytest

from kdjax import config as config_lib


@pytest.fixture
def config_file(tmp_path):
  path = tmp_path / 'exp.py'
  path.write_text(textwrap.dedent('''
      import ml_collections

      def get_config(arg='cpu'):
        c = ml_collections.ConfigDict()
        c.scale = arg
        c.seeds = (0, 1, 2)
        c.student = ml_collections.ConfigDict(
            {'hidden': (64, 64), 'lr': 1e-3, 'epochs': 10, 'dropout': False})
        return c
  '''))
  return str(path)


def test_overrides_keep_types(config_file):
  config, workdir = config_lib.parse_args([
      f'--config={config_file}:full', '--workdir=/tmp/w',
      '--config.student.lr=3e-3', '--config.student.epochs=5',
      '--config.student.hidden=(32,)', '--config.student.dropout=true',
      '--config.seeds=(4,)', '--config.student.lr=1',
  ])
  assert workdir == '/tmp/w'
  assert config.scale == 'full'
  assert config.student.lr == 1.0 and isinstance(config.student.lr, float)
  assert config.student.epochs == 5
  assert config.student.hidden == (32,)
  assert config.student.dropout is True
  assert config.seeds == (4,)


def test_unknown_key_lists_known_keys(config_file):
  with pytest.raises(KeyError, match=r"unknown config key 'student.lrr'.*known keys: \['dropout', 'epochs', 'hidden', 'lr'\]"):
    config_lib.parse_args([f'--config={config_file}', '--workdir=w', '--config.student.lrr=1'])
  with pytest.raises(KeyError, match=r"unknown config key 'teacher.lr'"):
    config_lib.parse_args([f'--config={config_file}', '--workdir=w', '--config.teacher.lr=1'])


def test_wrong_type_and_locked_config(config_file):
  with pytest.raises(ValueError, match=r"config key 'student.epochs': expected int, got '1.5'"):
    config_lib.parse_args([f'--config={config_file}', '--workdir=w', '--config.student.epochs=1.5'])
  config, _ = config_lib.parse_args([f'--config={config_file}', '--workdir=w'])
  with pytest.raises(AttributeError):
    config.student.lrr = 1.0


def test_missing_file_is_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match='--config: no config file'):
    config_lib.parse_args([f'--config={tmp_path}/nope.py', '--workdir=w'])
