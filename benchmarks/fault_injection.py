"""Fault injection: training runs killed at random points resume to the same bits.

Each task is a real training run in a subprocess (a "life"). The driver first
runs it once without faults (the reference), then again in a fresh
directory, killing it over and over and restarting it with the same
command, and finally lets it finish. Then it checks that the two runs end
alike, bit for bit: every checkpoint directory's latest state (parameters,
model state, optimizer state, objective state, step, rng) and data position,
every ``metrics.jsonl`` (less wall-clock times), the experiment's
``results.json`` (less times and provenance), and (task ``tiny``) the
example ids every step trained on.

Faults (``--faults``, cycled through the kills):

* ``random``: SIGKILL at a random moment after the run has written a
  random number of metrics lines (a random step, anywhere in the run:
  training, evaluation, checkpoint writes, teacher saves, results).
* ``in_save``: SIGKILL inside a checkpoint write: the life is started with
  a hook (this script only) that stops its next save at a random file
  operation of orbax's (creating the temporary directories, writing
  metadata, the commit marker, the final rename); the driver kills it
  there.
* ``sigterm``: SIGTERM at a random step; the run must finish its epoch,
  write a checkpoint, and exit with status 0 naming it
  (:class:`kdjax.loop.Preempted`).

Tasks: ``hinton`` (experiments/hinton.py, its ``cpu`` config shortened:
one seed, a 4-epoch teacher, 7-epoch students, a checkpoint every epoch),
``lm`` (experiments/lm_kd.py at a tiny size: 12 kB of text, context 32,
one-layer models, labels-only and forward-KL students distilled from cached
teacher logits) and ``tiny`` (a 2-layer MLP distilled with a Hinton term, an
EMA-teacher term with objective state, and labels; it records the example
ids of every step; the CI test runs it).

Commands::

    python benchmarks/fault_injection.py                     # hinton + lm, 12 kills each
    python benchmarks/fault_injection.py --tasks tiny --kills 6
    python benchmarks/fault_injection.py --write-docs        # the table in docs/reliability.md

Each life recompiles; a persistent compilation cache under the work
directory (shared by the reference and the faulted run) keeps that short.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
TASKS = ('hinton', 'lm', 'tiny')
FAULTS = ('random', 'in_save', 'sigterm')
SAVE_LOG = 'saves.log'
HANG_MARK = 'hang '
LIFE_TIMEOUT_S = 900
VOLATILE_KEYS = ('time', 'seconds', 'wall_seconds', 'finished', 'provenance')


# ----------------------------------------------------------------------------
# One life: the task's training, run in this process.


def _install_save_hook(workdir: pathlib.Path, hang_at_save: int | None, hang_at_op: int) -> None:
  """Logs every checkpoint save; optionally stops inside one of them.

  The `hang_at_save`-th save (counted over this directory's lives) stops
  before its `hang_at_op`-th file operation through orbax's ``async_path``
  (or the first of a later save if that save has fewer), writes a line
  ``hang <op> <path>`` to the save log and sleeps until killed.
  """
  from kdjax import checkpoint  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.path import async_path  # pylint: disable=g-import-not-at-top

  log_path = workdir / SAVE_LOG
  state = {'saving': False, 'ops': 0}

  def log(line):
    with open(log_path, 'a', encoding='utf-8') as f:
      f.write(line + '\n')
      f.flush()
      os.fsync(f.fileno())

  def saves_begun():
    if not log_path.exists():
      return 0
    return sum(1 for line in log_path.read_text().splitlines() if line.startswith('start'))

  original_save = checkpoint.save

  def save(*args, **kwargs):
    log(f'start {saves_begun() + 1}')
    state['saving'] = True
    try:
      return original_save(*args, **kwargs)
    finally:
      state['saving'] = False
      log('end')

  checkpoint.save = save

  def hooked(name, fn):
    async def wrapper(path, *args, **kwargs):
      if state['saving']:
        if hang_at_save is not None and saves_begun() >= hang_at_save:
          state['ops'] += 1
          if state['ops'] >= hang_at_op:
            log(f'{HANG_MARK}{name} {path}')
            while True:
              time.sleep(1)
        log(f'op {name}')
      return await fn(path, *args, **kwargs)
    return wrapper

  for name in ('mkdir', 'write_bytes', 'write_text', 'rename', 'touch', 'rmtree', 'unlink'):
    setattr(async_path, name, hooked(name, getattr(async_path, name)))


def _hinton_config():
  from experiments.configs import hinton  # pylint: disable=g-import-not-at-top

  config = hinton.get_config('cpu')
  config.seeds = (0,)
  config.progress = False
  config.teacher.epochs = 4
  config.student.epochs = 7  # Trainer saves every max(epochs // 4, 1) = 1 epoch
  config.omitted.enabled = False
  return config


def _lm_config():
  from experiments.configs import lm_kd  # pylint: disable=g-import-not-at-top

  config = lm_kd.get_config('cpu')
  config.seeds = (0,)
  config.progress = False
  config.variants = ('labels', 'forward_kl')
  config.kd.kd_weight_grid = (0.5,)
  config.data.train_bytes, config.data.val_bytes, config.data.test_bytes = 12_000, 3_000, 3_000
  config.data.context = 32
  config.data.eval_batch_size = 32
  for model, epochs in ((config.teacher, 4), (config.student, 5)):
    model.num_layers, model.hidden, model.num_heads, model.mlp_dim = 1, 32, 2, 64
    model.epochs, model.warmup_steps = epochs, 5
  return config


TINY_EXAMPLES, TINY_FEATURES, TINY_BATCH, TINY_EPOCHS = 48, 5, 8, 10


def _tiny_life(workdir: pathlib.Path, life: int) -> None:
  """A small distillation with objective state; records every step's example ids."""
  # pylint: disable=g-import-not-at-top
  from flax import linen as nn
  import jax
  import numpy as np
  import optax
  from kdjax import adapters, checkpoint, losses, loop, writers
  from kdjax import objective as objective_lib
  from kdjax import step as step_lib
  # pylint: enable=g-import-not-at-top

  class Net(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x, train):
      h = nn.Dropout(0.2, deterministic=not train)(nn.relu(nn.Dense(self.width)(x)))
      return nn.Dense(3)(h)

  rng = np.random.default_rng(0)
  data = {'x': rng.normal(size=(TINY_EXAMPLES, TINY_FEATURES)).astype(np.float32),
          'label': rng.integers(0, 3, TINY_EXAMPLES).astype(np.int32),
          'index': np.arange(TINY_EXAMPLES, dtype=np.int32)}

  def weights(shapes, scale):
    return jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32), shapes)

  teacher, student = Net(16), Net(8)
  example = np.zeros((1, TINY_FEATURES), np.float32)
  teacher_vars, student_vars = (
      weights(jax.eval_shape(lambda k, m=m: m.init(k, example, train=False),
                             jax.random.PRNGKey(0)), 0.5)
      for m in (teacher, student))
  student_apply = adapters.from_linen(student)
  objective = objective_lib.Objective(
      {'kd': objective_lib.distill(losses.kl_divergence, temperature=2.0),
       'ema': objective_lib.ema_teacher_distill(student_apply, losses.kl_divergence, decay=0.9),
       'ce': objective_lib.supervised()},
      weights={'kd': 0.5, 'ema': 0.2, 'ce': 0.3},
      metrics={'acc/student': objective_lib.accuracy_metric()})
  optimizer = optax.adam(1e-2)
  train_step = step_lib.make_train_step(
      student_apply, adapters.from_linen(teacher), objective, optimizer)
  ids_file = open(workdir / f'ids.{life}.txt', 'a', encoding='utf-8')  # pylint: disable=consider-using-with

  def record(step, ids):
    ids_file.write(f'{int(step)} ' + ' '.join(str(int(i)) for i in ids) + '\n')
    ids_file.flush()

  def recording_step(state, teacher_variables, batch):
    jax.debug.callback(record, state.step, batch['index'], ordered=True)
    return train_step(state, teacher_variables, batch)

  epoch_fn = jax.jit(loop.make_epoch_fn(recording_step, batch_size=TINY_BATCH), donate_argnums=0)
  eval_step = jax.jit(step_lib.make_eval_step(student_apply))
  state = step_lib.init_train_state(student_vars, optimizer, rng=3, objective=objective)
  manager = checkpoint.make_manager(workdir / 'checkpoints', max_to_keep=2)
  with writers.MetricWriter(workdir) as writer:
    loop.fit(epoch_fn, state, teacher_vars, data, num_epochs=TINY_EPOCHS, seed=1,
             evaluate_fn=lambda s: loop.evaluate(eval_step, s, None, data), writer=writer,
             manager=manager, save_every=1, progress=False, config={'task': 'tiny'})
  manager.close()


def life_main(task: str, workdir: str, life: int, hang_at_save: int | None,
              hang_at_op: int) -> None:
  """Runs `task` in `workdir` to the end (or until killed), resuming what is there."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  sys.path.insert(0, str(ROOT))
  _install_save_hook(workdir, hang_at_save, hang_at_op)
  if task == 'tiny':
    _tiny_life(workdir, life)
  elif task == 'hinton':
    from experiments import hinton  # pylint: disable=g-import-not-at-top
    hinton.run(_hinton_config(), str(workdir), command=['fault_injection', task])
  elif task == 'lm':
    from experiments import lm_kd  # pylint: disable=g-import-not-at-top
    lm_kd.run(_lm_config(), str(workdir), command=['fault_injection', task])
  else:
    raise ValueError(f'task must be one of {TASKS}, got {task!r}')


# ----------------------------------------------------------------------------
# The driver.


@dataclasses.dataclass
class Life:
  """One started life and what happened to it."""

  fault: str
  rc: int | None = None
  landed: str = ''  # where the fault hit, as far as the driver can tell
  message: str = ''
  seconds: float = 0.0
  problems: list[str] = dataclasses.field(default_factory=list)


def _env(cache_dir: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  env.update({
      'JAX_PLATFORMS': 'cpu',
      'PYTHONPATH': os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')]),
      'JAX_COMPILATION_CACHE_DIR': str(cache_dir),
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
      'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
  })
  env.pop('XLA_FLAGS', None)  # one CPU device in every life
  return env


def _metrics_lines(workdir: pathlib.Path) -> int:
  """Lines in all the metrics files of a (running) task's directory."""
  total = 0
  # os.walk skips directories that vanish under it (orbax renames its own).
  for root, dirs, files in os.walk(workdir):
    dirs[:] = [d for d in dirs if d not in ('checkpoints', 'tensorboard', 'final', 'jax_cache')]
    if 'metrics.jsonl' in files:
      with open(os.path.join(root, 'metrics.jsonl'), 'rb') as f:
        total += f.read().count(b'\n')
  return total


def _save_log(workdir: pathlib.Path) -> list[str]:
  path = workdir / SAVE_LOG
  return path.read_text().splitlines() if path.exists() else []


def _hangs(workdir: pathlib.Path) -> list[str]:
  return [line for line in _save_log(workdir) if line.startswith(HANG_MARK)]


def _uncommitted_steps(workdir: pathlib.Path) -> list[str]:
  """Step directories (what a restore can pick) without orbax's commit marker."""
  return sorted(str(p.relative_to(workdir)) for ckpt in workdir.rglob('checkpoints')
                for p in ckpt.iterdir()
                if p.name.isdigit() and not (p / 'commit_success.txt').exists())


def _tmp_dirs(workdir: pathlib.Path) -> list[str]:
  """Unfinished checkpoint directories (not counting the items inside them)."""
  return sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*orbax-checkpoint-tmp*')
                if p.is_dir() and 'orbax-checkpoint-tmp' not in p.parent.name)


def _start(task, workdir, life, env, hang_at_save=None, hang_at_op=1):
  command = [sys.executable, __file__, '--life', task, str(workdir), '--life-id', str(life)]
  if hang_at_save is not None:
    command += ['--hang-at-save', str(hang_at_save), '--hang-at-op', str(hang_at_op)]
  log = open(workdir.parent / f'{workdir.name}.life{life}.log', 'w', encoding='utf-8')  # pylint: disable=consider-using-with
  proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  return proc, log


def _wait(proc, log, what: str) -> int:
  try:
    rc = proc.wait(timeout=LIFE_TIMEOUT_S)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    log.close()
  if rc is None:
    raise RuntimeError(f'{what} did not finish in {LIFE_TIMEOUT_S} s; see {log.name}')
  return rc


def run_to_end(task: str, workdir: pathlib.Path, life: int, env) -> float:
  """Runs a life without faults; returns its wall time."""
  start = time.time()
  proc, log = _start(task, workdir, life, env)
  rc = _wait(proc, log, f'{task} life {life}')
  if rc != 0:
    raise RuntimeError(f'{task} life {life} failed with status {rc}; see {log.name}:\n'
                       + pathlib.Path(log.name).read_text()[-3000:])
  return time.time() - start


def faulted_life(task, workdir, life, env, fault, rng, total_lines, total_saves,
                 *, share=(0.0, 1.0), ops_per_save=6) -> Life:
  """Starts a life and hits it with `fault` at a random point.

  A SIGKILL or SIGTERM comes once the run has written a number of metrics
  lines drawn from `share` (a fraction range) of the reference's
  `total_lines`, at least one more than when the life started; an
  ``in_save`` fault stops the next save before a random one of its first
  `ops_per_save` file operations.
  """
  result, start = Life(fault), time.time()
  lines_at_start = _metrics_lines(workdir)
  hangs_at_start = _hangs(workdir)
  if fault == 'in_save':
    begun = sum(1 for line in _save_log(workdir) if line.startswith('start'))
    target = begun + 1
    proc, log = _start(task, workdir, life, env, hang_at_save=target,
                       hang_at_op=rng.randint(1, ops_per_save))
  else:
    # A random step: wait for a random number of metrics lines (at least
    # one more, so that every life makes progress), then a random moment.
    target = max(lines_at_start + 1, round(total_lines * rng.uniform(*share)))
    proc, log = _start(task, workdir, life, env)
  hit = False
  while proc.poll() is None and not hit:
    time.sleep(0.01)
    if fault == 'in_save':
      hangs = _hangs(workdir)
      if len(hangs) > len(hangs_at_start):
        result.landed = 'during orbax ' + hangs[-1][len(HANG_MARK):].split(' ')[0]
        hit = True
    elif _metrics_lines(workdir) >= target:
      time.sleep(rng.uniform(0.0, 0.5))
      hit = True
  if hit and proc.poll() is None:
    in_save = _save_log(workdir)[-1:] != ['end']
    proc.send_signal(signal.SIGTERM if fault == 'sigterm' else signal.SIGKILL)
    if fault != 'in_save':
      result.landed = 'during a checkpoint write' if in_save else 'between checkpoint writes'
  else:
    result.landed = 'finished before the fault'
  result.rc = _wait(proc, log, f'{task} life {life}')
  result.seconds = time.time() - start
  text = pathlib.Path(log.name).read_text()
  found = re.findall(r'stopped by SIG\w+ at step \d+; checkpoint \S+ written', text)
  result.message = found[-1] if found else ''
  tmp = _tmp_dirs(workdir)
  if tmp:
    result.landed += f'; left {len(tmp)} unfinished tmp dir(s)'
  result.problems = [f'step directory {d} is not complete after the fault'
                     for d in _uncommitted_steps(workdir)]
  return result


# ----------------------------------------------------------------------------
# Comparing two runs.


def _strip(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _strip(v) for k, v in tree.items() if k not in VOLATILE_KEYS}
  if isinstance(tree, list):
    return [_strip(v) for v in tree]
  return tree


def _checkpoint_contents(directory: pathlib.Path) -> dict[str, Any]:
  """Step, data position and every array's bytes of the latest checkpoint in `directory`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  latest = directory / str(steps[-1])
  meta = json.loads((latest / 'meta' / 'metadata').read_text())
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.restore(latest / 'state')
  import jax  # pylint: disable=g-import-not-at-top
  leaves = {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  return {
      'step': steps[-1],
      'data_state': meta['data_state'],
      'arrays': {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in leaves.items()},
  }


def _teacher_contents(directory: pathlib.Path) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.restore(directory)
  return {jax.tree_util.keystr(p): np.asarray(x).tobytes()
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _ids(workdir: pathlib.Path) -> dict[int, list[str]]:
  """``{step: [ids line of every life that trained it]}`` (complete lines only)."""
  seen: dict[int, list[str]] = {}
  for path in sorted(workdir.glob('ids.*.txt')):
    for line in path.read_text().split('\n')[:-1]:
      step, ids = line.split(' ', 1)
      seen.setdefault(int(step), []).append(ids)
  return seen


def compare(reference: pathlib.Path, faulted: pathlib.Path) -> list[str]:
  """Differences between two finished runs of a task (empty: bit-identical)."""
  problems, compared = [], 0
  for ckpt in sorted(reference.rglob('checkpoints')):
    rel = ckpt.relative_to(reference)
    a, b = _checkpoint_contents(ckpt), _checkpoint_contents(faulted / rel)
    if a['step'] != b['step'] or a['data_state'] != b['data_state']:
      problems.append(f'{rel}: step/data position {a["step"]} {a["data_state"]} vs '
                      f'{b["step"]} {b["data_state"]}')
    if a['arrays'].keys() != b['arrays'].keys():
      problems.append(f'{rel}: different leaves')
    for name in a['arrays']:
      if a['arrays'][name] != b['arrays'].get(name):
        problems.append(f'{rel}: {name} differs')
    compared += len(a['arrays'])
    if (faulted / rel / 'corrupt').exists():
      problems.append(f'{rel}: checkpoints were found unreadable and set aside')
  for final in sorted(reference.rglob('final')):
    rel = final.relative_to(reference)
    if _teacher_contents(final / 'teacher') != _teacher_contents(faulted / rel / 'teacher'):
      problems.append(f'{rel}: the saved teacher differs')
  for metrics in sorted(reference.rglob('metrics.jsonl')):
    rel = metrics.relative_to(reference)
    ra = [_strip(json.loads(line)) for line in metrics.read_text().splitlines()]
    rb = [_strip(json.loads(line)) for line in (faulted / rel).read_text().splitlines()]
    if ra != rb:
      problems.append(f'{rel}: {len(ra)} vs {len(rb)} records, first difference at '
                      f'{next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), min(len(ra), len(rb)))}')
  if (reference / 'results.json').exists():
    ra = _strip(json.loads((reference / 'results.json').read_text()))
    rb = _strip(json.loads((faulted / 'results.json').read_text()))
    if ra != rb:
      problems.append('results.json differs')
  reference_ids = {step: lines[0] for step, lines in _ids(reference).items()}
  for step, lines in _ids(faulted).items():
    if any(line != reference_ids.get(step) for line in lines):
      problems.append(f'step {step} trained on other examples than the reference')
  if reference_ids and set(_ids(faulted)) != set(reference_ids):
    problems.append('the faulted run skipped steps')
  if not compared:
    problems.append('no checkpoint compared')
  return problems


# ----------------------------------------------------------------------------
# Main.


def run_task(task: str, root: pathlib.Path, kills: int, faults: list[str], rng,
             env) -> dict[str, Any]:
  """Reference run, `kills` faulted lives and a last one; returns the record."""
  reference, faulted = root / task / 'reference', root / task / 'faulted'
  for d in (reference, faulted):
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
  reference_seconds = run_to_end(task, reference, 0, env)
  total_lines = _metrics_lines(reference)
  saves = _save_log(reference)
  total_saves = sum(1 for line in saves if line.startswith('start'))
  ops_per_save = max(1, min(sum(1 for line in saves if line.startswith('op ')) // total_saves,
                            40))
  lives = []
  for k in range(kills):
    # Kill k lands in the k-th slice of the run, so that the faults cover it all.
    life = faulted_life(task, faulted, k, env, faults[k % len(faults)], rng, total_lines,
                        total_saves, share=(k / kills, (k + 1) / kills),
                        ops_per_save=ops_per_save)
    print(f'{task} life {k}: {life.fault} -> {life.landed} (status {life.rc}) '
          f'{life.message}', flush=True)
    lives.append(life)
  run_to_end(task, faulted, kills, env)
  problems = [p for life in lives for p in life.problems] + compare(reference, faulted)
  return {'task': task, 'reference_seconds': reference_seconds,
          'lives': [dataclasses.asdict(life) for life in lives], 'problems': problems}


def summary_rows(records: list[dict[str, Any]]) -> list[list[str]]:
  """One table row per task and fault kind."""
  rows = []
  for record in records:
    by_fault: dict[str, list[dict]] = {}
    for life in record['lives']:
      by_fault.setdefault(life['fault'], []).append(life)
    for fault, lives in by_fault.items():
      hit = [life for life in lives if life['landed'] != 'finished before the fault']
      in_save = sum(life['landed'].startswith('during') for life in hit)
      if fault == 'sigterm':
        clean = sum(life['rc'] == 0 and bool(life['message']) for life in hit)
        outcome = f'{clean} exited 0 naming the checkpoint'
        if clean < len(hit):  # the signal came outside fit: its default effect
          outcome += (f'; {len(hit) - clean} ended by it outside `fit` (status '
                      + ', '.join(str(life['rc']) for life in hit
                                  if not (life['rc'] == 0 and life['message'])) + ')')
      else:
        outcome = f"{sum(life['rc'] == -signal.SIGKILL for life in hit)} killed"
      lost = 'nothing' if not record['problems'] else '; '.join(record['problems'][:3])
      rows.append([record['task'], FAULT_NAMES[fault], str(len(hit)), str(in_save), outcome,
                   lost])
  return rows


FAULT_NAMES = {
    'random': 'SIGKILL at a random step',
    'in_save': 'SIGKILL inside an orbax checkpoint write',
    'sigterm': 'SIGTERM at a random step (preemption)',
}


def markdown(records, command: str, load: tuple[float, float, float], seconds: float) -> str:
  lines = ['| task | fault | times | during a checkpoint write | outcome | lost |',
           '|---|---|---|---|---|---|']
  lines += ['| ' + ' | '.join(row) + ' |' for row in summary_rows(records)]
  tried = sum(len(r['lives']) for r in records)
  landed = sum(life['landed'] != 'finished before the fault' for r in records
               for life in r['lives'])
  lines += ['', f'{landed} faults landed ({tried} tried; the others came after the run had '
            f'finished), {seconds / 60:.0f} minutes; command '
            f'`{command}`; load average before the run {load[0]:.1f}, {load[1]:.1f}, '
            f'{load[2]:.1f} (timings do not matter here, only bits).']
  return '\n'.join(lines)


SECTION_START = '<!-- fault-injection table: written by benchmarks/fault_injection.py -->'
SECTION_END = '<!-- end of fault-injection table -->'


def write_docs(text: str, path: pathlib.Path = ROOT / 'docs' / 'reliability.md') -> None:
  doc = path.read_text()
  start, end = doc.index(SECTION_START) + len(SECTION_START), doc.index(SECTION_END)
  path.write_text(doc[:start] + '\n' + text + '\n' + doc[end:])


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tasks', nargs='+', choices=TASKS, default=['hinton', 'lm'])
  parser.add_argument('--kills', type=int, default=12, help='faulted lives per task')
  parser.add_argument('--faults', nargs='+', choices=FAULTS, default=list(FAULTS))
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default=None, help='default: a temporary directory')
  parser.add_argument('--write-docs', action='store_true')
  parser.add_argument('--life', nargs=2, metavar=('TASK', 'WORKDIR'), help=argparse.SUPPRESS)
  parser.add_argument('--life-id', type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument('--hang-at-save', type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument('--hang-at-op', type=int, default=1, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.life:
    life_main(*args.life, args.life_id, args.hang_at_save, args.hang_at_op)
    return 0
  load, start = os.getloadavg(), time.time()
  root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix='fault_injection_'))
  env, rng = _env(root / 'jax_cache'), random.Random(args.seed)
  records = [run_task(task, root, args.kills, args.faults, rng, env) for task in args.tasks]
  command = 'python benchmarks/fault_injection.py ' + ' '.join(argv if argv is not None
                                                              else sys.argv[1:])
  text = markdown(records, command.strip(), load, time.time() - start)
  print(text)
  (root / 'records.json').write_text(json.dumps(records, indent=1))
  if args.write_docs:
    write_docs(text)
  return 0 if all(not r['problems'] for r in records) else 1


if __name__ == '__main__':
  sys.exit(main())
