"""Runs killed, preempted or left with a corrupted checkpoint resume to the same bits.

The subprocess tests send real signals to real training processes
(benchmarks/fault_injection.py's lives, tests/multihost_fit_worker.py).
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest

from kdjax import checkpoint
from kdjax import loop
from kdjax import writers

import child_processes
import test_loop

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 240


sys.path.insert(0, str(ROOT / 'benchmarks'))
import fault_injection  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='module')
def tiny():
  """The test_loop set-up with its epoch compiled once for this module."""
  train_step, state, teacher_vars, data, _ = test_loop._setup()
  epoch = jax.jit(loop.make_epoch_fn(train_step, batch_size=8))
  return epoch, state, teacher_vars, data


def _fit(tiny, directory, num_epochs, **kwargs):
  epoch, state, teacher_vars, data = tiny
  manager = checkpoint.make_manager(directory, max_to_keep=kwargs.pop('max_to_keep', 3))
  kwargs.setdefault('save_every', 1)
  try:
    return loop.fit(epoch, state, teacher_vars, data, num_epochs=num_epochs, seed=1,
                    manager=manager, progress=False, **kwargs)
  finally:
    manager.close()


def _assert_same(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


# Files of a step directory whose damage orbax's readers detect (lengths,
# JSON syntax, OCDBT checksums): the arrays' data, their index, the state's
# tree metadata and the data position.
CORRUPTIONS = {
    'array data truncated': ('state/d/*', _truncate),
    'array data deleted': ('state/d/*', os.remove),
    'array index truncated': ('state/manifest.ocdbt', _truncate),
    'tree metadata truncated': ('state/_METADATA', _truncate),
    'data position deleted': ('meta/metadata', os.remove),
}


# After a failed read, orbax sometimes leaves a callback for its closed event
# loop, reported when garbage collected ("Event loop is closed"), or a
# coroutine it never awaited ("coroutine 'Store._get_array_metadatas' was
# never awaited"): harmless, and when the collector runs decides whether and
# where either is reported (inside `pytest.warns` the second is re-raised).
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.filterwarnings("ignore:coroutine '.*' was never awaited:RuntimeWarning")
def test_a_corrupted_latest_checkpoint_is_set_aside_and_the_previous_restored(tiny, tmp_path):
  epoch, state, teacher_vars, data = tiny
  straight = loop.fit(epoch, state, teacher_vars, data, num_epochs=4, seed=1, progress=False)
  _fit(tiny, tmp_path / 'saved', 3)  # checkpoints at steps 4, 8, 12 (4 steps an epoch)
  for name, (pattern, damage) in CORRUPTIONS.items():
    directory = tmp_path / name.replace(' ', '_')
    shutil.copytree(tmp_path / 'saved', directory)
    for path in glob.glob(str(directory / '12' / pattern)):
      damage(path)
    where = re.escape(str(directory))
    with pytest.warns(checkpoint.CorruptCheckpointWarning,
                      match=rf'checkpoint 12 in {where} could not be read .*moved to '
                            rf'{where}/corrupt/12; restored checkpoint 8'):
      resumed = _fit(tiny, directory, 4, save_every=2)  # resumes at step 8: 2 epochs
    _assert_same(resumed, straight)
    assert sorted(os.listdir(directory / 'corrupt')) == ['12'], name
    assert sorted(int(p) for p in os.listdir(directory) if p.isdigit()) == [4, 8, 16], name


def _zero_second_half(path):
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size // 2)
    f.write(b'\0' * (size - size // 2))


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_no_damage_to_any_file_restores_wrong_values(tiny, tmp_path):
  """Every file of the latest checkpoint truncated, zeroed or deleted in turn.

  Either the damage is detected (the previous checkpoint is restored, with a
  warning) or the file is not read by a restore (the latest restores with
  its own values): never other values.
  """
  epoch, state, teacher_vars, data = tiny
  _fit(tiny, tmp_path / 'saved', 2)  # steps 4 and 8
  after = {n: loop.fit(epoch, state, teacher_vars, data, num_epochs=n, seed=1, progress=False)
           for n in (1, 2)}
  files = sorted(os.path.relpath(os.path.join(root, name), tmp_path / 'saved' / '8')
                 for root, _, names in os.walk(tmp_path / 'saved' / '8') for name in names)
  detected = set()
  for k, (rel, damage) in enumerate(
      (rel, damage) for rel in files for damage in (_truncate, _zero_second_half, os.remove)):
    directory = tmp_path / str(k)
    shutil.copytree(tmp_path / 'saved', directory)
    damage(directory / '8' / rel)
    manager = checkpoint.make_manager(directory)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always', checkpoint.CorruptCheckpointWarning)
      restored, data_state, _ = checkpoint.restore(manager, state)
    manager.close()
    epochs = data_state['epoch']
    assert (epochs == 1) == bool(caught), (rel, damage.__name__)
    if epochs == 1:
      detected.add((rel, damage.__name__))
    _assert_same(restored, after[epochs])
  # The arrays' data and index, their tree metadata and the data position:
  # any damage to them is seen.
  read = [rel for rel in files
          if rel in ('meta/metadata', 'state/_METADATA', 'state/manifest.ocdbt')
          or rel.startswith('state/d/')]
  assert len(read) == 4, files
  assert {(rel, d.__name__) for rel in read
          for d in (_truncate, _zero_second_half, os.remove)} <= detected


def test_restore_fails_clearly_and_moves_nothing_when_no_checkpoint_restores(tiny, tmp_path):
  _fit(tiny, tmp_path / 'damaged', 2, max_to_keep=2)
  for step in (4, 8):
    os.remove(tmp_path / 'damaged' / str(step) / 'meta' / 'metadata')
  _fit(tiny, tmp_path / 'intact', 2, max_to_keep=2)
  other_model = tiny[1].replace(params={'w': np.zeros(3, np.float32)})
  for name, target in (('damaged', tiny[1]), ('intact', other_model)):
    manager = checkpoint.make_manager(tmp_path / name)
    with pytest.raises(ValueError, match=r'none of the checkpoints \[8, 4\] .* could be '
                                         r'restored into this target \(nothing was moved\)'):
      checkpoint.restore(manager, target)
    manager.close()
    assert sorted(os.listdir(tmp_path / name)) == ['4', '8'], name


def _raise_signal_after(calls, signum):
  """An evaluate_fn that sends this process `signum` at its `calls`-th call."""
  seen = []

  def evaluate(state):
    del state
    seen.append(1)
    if len(seen) == calls:
      os.kill(os.getpid(), signum)
    return {}

  return evaluate


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_epoch_checkpoints_flushes_and_raises(tiny, tmp_path, signum):
  straight = _fit(tiny, tmp_path / 'straight', 5)
  before = signal.getsignal(signum)
  with writers.MetricWriter(tmp_path / 'run', tensorboard=False) as writer:
    with pytest.raises(loop.Preempted) as stopped:
      _fit(tiny, tmp_path / 'ckpt', 5, writer=writer, save_every=10,
           evaluate_fn=_raise_signal_after(2, signum))
    # Nothing was saved before: the checkpoint is the signal's, after epoch 2.
    assert [(r['split'], r['step']) for r in writers.read_jsonl(tmp_path / 'run')] == [
        ('train', 4), ('eval', 4), ('train', 8), ('eval', 8)]
  assert signal.getsignal(signum) is before
  assert stopped.value.code == 0 and stopped.value.step == 8
  name = signal.Signals(signum).name
  assert str(stopped.value) == (
      f'stopped by {name} at step 8; checkpoint {tmp_path}/ckpt/8 written, '
      'rerun the same command to resume')
  _assert_same(_fit(tiny, tmp_path / 'ckpt', 5), straight)


def test_a_signal_in_the_last_epoch_still_stops_the_program(tiny, tmp_path):
  with pytest.raises(loop.Preempted) as stopped:
    _fit(tiny, tmp_path, 3, evaluate_fn=_raise_signal_after(3, signal.SIGTERM))
  assert stopped.value.step == 12  # the run's end, saved: nothing more to do on resume
  assert sorted(os.listdir(tmp_path)) == ['12', '4', '8']


def test_a_signal_after_the_last_check_goes_to_the_previous_handler():
  received = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
  try:
    with loop._StopRequests([signal.SIGTERM]) as stops:
      os.kill(os.getpid(), signal.SIGTERM)
      assert stops.received == 'SIGTERM' and not received  # held while active
    assert received == [signal.SIGTERM]  # passed on at exit, nobody having acted on it
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_a_second_sigint_interrupts_at_once(tiny, tmp_path):
  def evaluate(state):
    del state
    os.kill(os.getpid(), signal.SIGINT)  # asks to stop after this epoch
    os.kill(os.getpid(), signal.SIGINT)  # insists
    return {}

  # Python's own handler, whatever this process inherited (a background
  # job starts with SIGINT ignored).
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with pytest.raises(KeyboardInterrupt):
      _fit(tiny, tmp_path, 5, evaluate_fn=evaluate)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, previous)


def test_fit_rewinds_the_metrics_of_steps_trained_again(tiny, tmp_path):
  """A run killed after logging an epoch it had not saved logs it once after resuming."""
  with writers.MetricWriter(tmp_path / 'straight') as writer:
    _fit(tiny, tmp_path / 'straight_ckpt', 4, writer=writer)
  with writers.MetricWriter(tmp_path / 'run') as writer:
    _fit(tiny, tmp_path / 'ckpt', 2, writer=writer)
    writer.write(12, {'loss/total': 1.0})  # logged by the "killed" run, never saved
    writer.write(12, {'acc/student': 0.5}, split='final')
  with writers.MetricWriter(tmp_path / 'run') as writer:
    _fit(tiny, tmp_path / 'ckpt', 4, writer=writer)

  def records(name):
    return [{k: v for k, v in r.items() if k != 'time'}
            for r in writers.read_jsonl(tmp_path / name)]

  assert records('run') == records('straight')
  # TensorBoard: a new event file per writer and per rewind (a fresh start,
  # then the resume), whose purge_step hides the steps trained again.
  tags = sorted(test_loop._read_events(tmp_path / 'run' / 'tensorboard'))
  assert len(list((tmp_path / 'run' / 'tensorboard').iterdir())) == 4  # 2 writers, 2 rewinds
  assert (12, 'train/loss/total', 1.0) in tags  # still on disk; TensorBoard purges it


def _wait_for(condition, timeout=TIMEOUT_S):
  deadline = time.time() + timeout
  while not condition():
    if time.time() > deadline:
      raise TimeoutError('condition not reached')
    time.sleep(0.01)


def test_killed_and_preempted_lives_resume_bit_identical(tmp_path):
  """Real SIGKILLs (one inside an orbax save) and a SIGTERM, then a comparison."""
  env = fault_injection._env(tmp_path / 'jax_cache')
  env['XLA_FLAGS'] = child_processes.xla_flags()  # one device; compiles faster
  reference, faulted = tmp_path / 'reference', tmp_path / 'faulted'
  reference.mkdir()
  faulted.mkdir()
  fault_injection.run_to_end('tiny', reference, 0, env)
  lines = fault_injection._metrics_lines(reference)
  saves = sum(1 for line in fault_injection._save_log(reference) if line.startswith('start'))
  lives = [fault_injection.faulted_life('tiny', faulted, k, env, fault, random.Random(k),
                                        lines, saves)
           for k, fault in enumerate(['in_save', 'sigterm'])]
  in_save, sigterm = lives
  assert in_save.rc == -signal.SIGKILL and in_save.landed.startswith('during orbax')
  assert not in_save.problems  # every finished step directory is complete
  assert sigterm.rc == 0 and sigterm.message.startswith('stopped by SIGTERM at step ')
  step = int(sigterm.message.split('at step ')[1].split(';')[0])
  assert sigterm.message.endswith(f'checkpoint {faulted}/checkpoints/{step} written')
  fault_injection.run_to_end('tiny', faulted, len(lives), env)
  assert fault_injection.compare(reference, faulted) == []
  # The last life started where the SIGTERM's checkpoint left off: the
  # example ids it trained on are the reference's from that step on.
  last = (faulted / f'ids.{len(lives)}.txt').read_text().splitlines()
  assert int(last[0].split()[0]) == step
  assert [line.split(' ', 1)[1] for line in last] == [
      line.split(' ', 1)[1]
      for line in (reference / 'ids.0.txt').read_text().splitlines()[step:]]


def test_compare_sees_a_difference(tmp_path):
  """The comparison above would fail if a run differed (here by one metrics value)."""
  for name in ('a', 'b'):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'metrics.jsonl').write_text(
        json.dumps({'step': 1, 'time': name, 'loss': 0.5 if name == 'a' else 0.25}) + '\n')
    (tmp_path / name / 'ids.0.txt').write_text(f'0 1 2\n1 {3 if name == "a" else 4} 5\n')
  problems = fault_injection.compare(tmp_path / 'a', tmp_path / 'b')
  assert any('metrics.jsonl' in p for p in problems)
  assert any('step 1 trained on other examples' in p for p in problems)


@pytest.mark.slow
def test_many_faults_on_the_tiny_task(tmp_path):
  assert fault_injection.main(['--tasks', 'tiny', '--kills', '9', '--workdir',
                               str(tmp_path)]) == 0


def test_two_processes_stop_at_the_same_step_when_one_gets_sigterm(tmp_path):
  env = child_processes.env(devices=4)
  port = child_processes.free_port()
  logs = [open(tmp_path / f'log{i}', 'w') for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, str(ROOT / 'tests' / 'multihost_fit_worker.py'), str(port), str(i),
       str(tmp_path), '100000'], env=env, cwd=ROOT, stdout=logs[i], stderr=subprocess.STDOUT)
           for i in range(2)]
  try:
    metrics = tmp_path / 'process_1' / 'metrics.jsonl'
    _wait_for(lambda: metrics.exists() and metrics.read_text().count('\n') >= 2)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p, log in zip(procs, logs):
      if p.poll() is None:
        p.kill()
        p.wait()
      log.close()
  report = '\n'.join((tmp_path / f'log{i}').read_text()[-2000:] for i in range(2))
  assert codes == [0, 0], report
  stops = [json.loads((tmp_path / f'process_{i}' / 'preempted.json').read_text())
           for i in range(2)]
  assert stops[0]['step'] == stops[1]['step'], stops
  assert stops[1]['signal'] == 'SIGTERM' and stops[0]['signal'] == 'a signal in another process'
  step = stops[0]['step']
  assert f'checkpoint {tmp_path}/checkpoints/{step} written' in stops[0]['message']
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == [str(step)]
  for i in range(2):  # both logged the same epochs, up to the one they stopped after
    assert writers.read_jsonl(tmp_path / f'process_{i}')[-1]['step'] == step
