"""The epoch as one `lax.scan` against a host loop of jitted steps, on the CPU.

XLA:CPU compiles some convolutions inside a while loop to a slow generic
loop nest instead of its library kernels (jax-ml/jax#12868): the kernel
gradient of a channels-last convolution is one of them. A scanned epoch
(`kdjax.loop.make_epoch_fn`) puts every step inside such a loop, so a model
with convolutions can train many times slower there than its step alone.
`kdjax.loop.compile_epoch_fn(loop='auto')` runs such epochs as a host loop
(`make_host_epoch_fn`) on the CPU. This script measures both loops on:

* ``fs2_teacher``, ``fs2_student``: the Transformer TTS teacher and the
  FastSpeech 2 student of ``experiments/configs/fastspeech2.py:cpu`` (their
  convolutions are 1-D), on random batches of the config's shapes;
* ``resnet8x4_lax``, ``resnet8x4_im2col``: the CIFAR student of the zoo
  (batch 64, 32x32) with the two ``conv_impl`` (im2col computes the kernel
  gradient as matrix products, so it never meets the slow path);
* ``mlp``: a 784-1200-1200-10 MLP, batch 128 (no convolution; the loop
  that 'auto' keeps).

For each it first checks that both loops end an epoch at the same
parameters (the difference under 1e-2 of the
epoch's update, in norm) and summed losses (relative 1e-4), then times ``--repeats`` epochs of ``--steps``
steps of each loop, alternating, and prints the median seconds per step
and the ratio scan / host (above 1: the host loop is faster). Usage::

    nice python benchmarks/epoch_loop.py
    nice python benchmarks/epoch_loop.py --models mlp,resnet8x4_lax --repeats 5
    nice python benchmarks/epoch_loop.py --write-docs   # refused at load > 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _docs  # pylint: disable=wrong-import-position

from fastspeech2_sizing import _random_batch  # pylint: disable=wrong-import-position
from experiments import fastspeech2 as fs2  # pylint: disable=wrong-import-position
from kdjax import adapters  # pylint: disable=wrong-import-position
from kdjax import config as config_lib  # pylint: disable=wrong-import-position
from kdjax import loop  # pylint: disable=wrong-import-position
from kdjax import objective as objective_lib  # pylint: disable=wrong-import-position
from kdjax import step as step_lib  # pylint: disable=wrong-import-position
from kdjax import zoo  # pylint: disable=wrong-import-position

SECTION = '## Epoch loop: scan against a host loop (CPU)'
MODELS = ('fs2_teacher', 'fs2_student', 'resnet8x4_lax', 'resnet8x4_im2col', 'mlp')
MAX_LOAD = 2.0


class _MLP(nn.Module):

  @nn.compact
  def __call__(self, x, train):
    del train
    for width in (1200, 1200):
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(10)(x)


def _classifier(module, shape, batch, steps, rng):
  """(train_step, init, data) for a supervised classifier on random data."""
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), train=False)
  tx = optax.sgd(0.01, momentum=0.9)
  step = step_lib.make_train_step(
      adapters.from_linen(module), None,
      objective_lib.Objective({'ce': objective_lib.supervised()}), tx)
  data = {'x': rng.normal(size=(batch * steps, *shape)).astype(np.float32),
          'label': rng.integers(0, 10, batch * steps).astype(np.int32)}
  # A fresh copy each time: the epochs donate the state.
  return step, lambda: jax.tree.map(jnp.copy, step_lib.init_train_state(variables, tx, rng=0)), \
      data, batch


def setup(name: str, steps: int, rng: np.random.Generator):
  """(train_step, init() -> state, data, batch_size) for one model."""
  if name == 'mlp':
    return _classifier(_MLP(), (784,), 128, steps, rng)
  if name.startswith('resnet8x4_'):
    conv_impl = name.split('_', 1)[1]
    return _classifier(zoo.resnet8x4(num_classes=10, conv_impl=conv_impl), (32, 32, 3), 64,
                       steps, rng)
  config = config_lib.load_config(str(ROOT / 'experiments/configs/fastspeech2.py') + ':cpu')
  if name == 'fs2_teacher':
    model = fs2.Teacher(config, 3, 10.0, 612)
    batch = config.teacher.batch_size
    data = fs2.teacher_batch(_random_batch(config, batch * steps, rng), 3)
    objective = fs2.teacher_objective(config, 10.0, 3)
  else:
    model = fs2.Student(config, 'fastspeech2', 612)
    batch = config.student.batch_size
    data = fs2.student_train_arrays('fastspeech2', _random_batch(config, batch * steps, rng))
    objective = fs2.student_objective('fastspeech2')
  step = step_lib.make_train_step(model.apply, None, objective, model.optimizer)
  init = jax.jit(model.init)
  return step, lambda: init(jax.random.key(0)), data, batch


def measure(name: str, steps: int, repeats: int) -> dict:
  step, init, data, batch = setup(name, steps, np.random.default_rng(0))
  data = jax.device_put(data)
  epochs = {mode: loop.compile_epoch_fn(step, batch_size=batch, loop=mode)
            for mode in ('scan', 'host')}
  start = jax.device_get(init().params)
  ends, losses, first = {}, {}, {}
  for mode, epoch in epochs.items():
    tick = time.perf_counter()
    state, metrics = epoch(init(), None, data, jax.random.PRNGKey(1))
    ends[mode] = jax.device_get(state.params)
    losses[mode] = float(np.asarray(metrics['loss/total'])[0])
    first[mode] = time.perf_counter() - tick
  # Adam turns rounding noise in a near-zero gradient into a whole step, so
  # the parameters are compared by the epoch's update as a whole: the norm of
  # the two loops' difference over the norm of the update.
  def norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree))))
  worst = norm(jax.tree.map(np.subtract, ends['scan'], ends['host'])) / norm(
      jax.tree.map(np.subtract, ends['host'], start))
  loss_diff = abs(losses['scan'] - losses['host']) / abs(losses['host'])
  if worst > 1e-2 or loss_diff > 1e-4:
    raise AssertionError(f'{name}: scan and host loops disagree (update {worst:.2e}, '
                         f'summed loss {loss_diff:.2e})')
  times = {mode: [] for mode in epochs}
  for repeat in range(repeats):
    for mode in (('scan', 'host') if repeat % 2 == 0 else ('host', 'scan')):
      state = init()
      jax.block_until_ready(state)
      tick = time.perf_counter()
      state, metrics = epochs[mode](state, None, data, jax.random.PRNGKey(2 + repeat))
      jax.block_until_ready((state, metrics))
      times[mode].append((time.perf_counter() - tick) / steps)
  scan, host = (float(np.median(times[m])) for m in ('scan', 'host'))
  ratios = np.array(times['scan']) / np.array(times['host'])
  return {'model': name, 'batch': batch, 'scan': scan, 'host': host,
          'ratio': float(np.median(ratios)), 'ratio_min': float(ratios.min()),
          'ratio_max': float(ratios.max()), 'first_scan': first['scan'],
          'first_host': first['host'], 'update_diff': worst,
          'auto': loop.auto_epoch_loop(step, init(), None,
                                       {k: v[:batch] for k, v in data.items()})}


def table(rows) -> str:
  lines = ['| model | batch | scan s/step | host s/step | scan / host (min–max) | '
           "'auto' picks | first epoch scan / host (s) | update differs by |",
           '|---|---:|---:|---:|---|---|---|---:|']
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['batch']} | {r['scan']:.3f} | {r['host']:.3f} | "
        f"{r['ratio']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | {r['auto']} | "
        f"{r['first_scan']:.1f} / {r['first_host']:.1f} | {r['update_diff']:.1e} |")
  return '\n'.join(lines)


def _commit() -> str:
  try:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--steps', type=int, default=8, help='steps per timed epoch')
  parser.add_argument('--repeats', type=int, default=4)
  parser.add_argument('--write-docs', action='store_true')
  args = parser.parse_args(argv)
  names = [m for m in args.models.split(',') if m]
  unknown = sorted(set(names) - set(MODELS))
  if unknown:
    parser.error(f'unknown --models {unknown}; choose from {MODELS}')
  load_start = os.getloadavg()[0]
  rows = []
  for name in names:
    rows.append(measure(name, args.steps, args.repeats))
    r = rows[-1]
    print(f"{name}: scan {r['scan']:.3f} s/step, host {r['host']:.3f} s/step, "
          f"scan/host {r['ratio']:.2f}", flush=True)
  load_end = os.getloadavg()[0]
  warning = _docs.load_warning(load_start, load_end, max_start=MAX_LOAD, max_end=MAX_LOAD)
  print(table(rows))
  if warning:
    print(warning)
  if args.write_docs:
    if warning:
      raise SystemExit('--write-docs refused: ' + warning)
    command = 'python benchmarks/epoch_loop.py ' + ' '.join(argv if argv is not None
                                                           else sys.argv[1:])
    section = '\n'.join([
        SECTION, '',
        'Generated by `benchmarks/epoch_loop.py`; do not edit by hand.', '',
        "One epoch of the same steps as a `lax.scan` (`loop.make_epoch_fn`, jitted) and as a "
        "host loop of jitted steps (`loop.make_host_epoch_fn`), after checking that both end "
        "at the same parameters. XLA:CPU compiles the kernel gradient of a convolution inside "
        "a while loop to a slow generic loop (jax-ml/jax#12868); "
        "`loop.compile_epoch_fn(loop='auto')` (what the experiments use) picks the host loop "
        "when the step has a convolution and the backend is the CPU.", '',
        f"* Command: `{command.strip()}` (under `nice`), {args.steps} steps per epoch, "
        f"{args.repeats} epochs of each loop, alternating; medians.",
        f"* Commit {_commit()}, jax {jax.__version__}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, 1-minute load "
        f"{load_start:.2f} at the start and {load_end:.2f} at the end.", '',
        table(rows), ''])
    _docs.write_section(SECTION, section)


if __name__ == '__main__':
  main()
