"""Provenance: the config hash is a function of the values only; a record is complete."""

import json
import subprocess

import ml_collections
import pytest

from kdjax import provenance


def _config():
  return ml_collections.ConfigDict({
      'seeds': (0, 1), 'kd': {'temperature': 4.0, 'soft_weight': 0.5},
      'data': {'name': 'mnist1d', 'jitter': {'shift': 3}}})


def test_config_hash_depends_on_values_not_order_or_container():
  config = _config()
  as_dict = {'seeds': [0, 1], 'kd': {'temperature': 4.0, 'soft_weight': 0.5},
             'data': {'name': 'mnist1d', 'jitter': {'shift': 3}}}
  reversed_order = {'data': {'jitter': {'shift': 3}, 'name': 'mnist1d'},
                    'kd': {'soft_weight': 0.5, 'temperature': 4.0}, 'seeds': (0, 1)}
  assert provenance.config_hash(config) == provenance.config_hash(as_dict)
  assert provenance.config_hash(as_dict) == provenance.config_hash(reversed_order)
  assert provenance.config_hash(config) == provenance.config_hash(json.loads(
      provenance.canonical_json(config)))
  changed = _config()
  changed.kd.temperature = 2.0
  assert provenance.config_hash(changed) != provenance.config_hash(config)
  # An int and a float of equal value are different configs (JSON keeps 4 and 4.0 apart).
  assert provenance.config_hash({'t': 4}) != provenance.config_hash({'t': 4.0})


def test_changed_keys_names_added_removed_and_changed_leaves():
  old = _config().to_dict()
  new = _config()
  new.kd.temperature = 2.0
  new.data.jitter.shift = 0
  with new.unlocked():
    new.extra = 1
  assert provenance.changed_keys(old, new) == ['data.jitter.shift', 'extra', 'kd.temperature']
  # The flattened form (as stored in a checkpoint) compares the same.
  assert provenance.changed_keys(provenance.flatten(old), new) == provenance.changed_keys(old, new)
  assert provenance.changed_keys(old, old) == []


def test_record_holds_commit_command_config_versions_and_machine():
  config = _config()
  rec = provenance.record(config, command=['python', '-m', 'x', '--flag'])
  json.dumps(rec)  # serialisable as it is
  head = subprocess.run(['git', '-C', provenance._REPO, 'rev-parse', 'HEAD'],
                        capture_output=True, text=True, check=True).stdout.strip()
  assert rec['git']['commit'] == head
  assert isinstance(rec['git']['dirty'], bool)
  assert rec['git']['dirty'] == bool(rec['git']['changed_files'])
  assert rec['command'] == ['python', '-m', 'x', '--flag']
  assert rec['config'] == json.loads(provenance.canonical_json(config))
  assert rec['config_hash'] == provenance.config_hash(config)
  assert set(rec['versions']) == set(provenance.LIBRARIES) | {'python'}
  assert all(rec['versions'][name] for name in ('jax', 'jaxlib', 'flax', 'optax', 'numpy'))
  assert rec['machine']['cpu_count'] >= 1 and rec['machine']['jax_devices']


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
  state = provenance.git_state(str(tmp_path))
  assert state['commit'] is None and state['dirty'] is None


@pytest.mark.parametrize('value', [float('nan'), (1, (2, 3))])
def test_canonical_json_of_awkward_values_round_trips(value):
  text = provenance.canonical_json({'v': value})
  assert provenance.canonical_json(json.loads(text)) == text
