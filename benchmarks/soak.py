"""Soak run: a long small distillation, checking for drift, memory growth and recompiles.

The Hinton et al. (2015) setting at toy scale: a linen MLP teacher (float32)
distilled into a smaller MLP student whose parameters are float32 and whose
compute dtype is bfloat16, with kdjax's pieces: ``adapters.from_linen``, an
``objective.Objective`` of ``0.9 * T² KL`` at a temperature scheduled from 4
to 1 over the run plus ``0.1 *`` cross-entropy, ``step.make_train_step``
jitted with the state donated, ``step.make_eval_step`` with
``loop.evaluate`` (padded last batch) on a held-out set, and
``metrics.merge``/``compute`` for the running means. Data: a fixed synthetic
set (Gaussian inputs, labels from a fixed random linear map), reshuffled every
epoch.

Every ``--check-every`` steps the script

* recomputes the loss the step reported, in float32: the same objective at
  the same step on the same parameters (the ones the step received) and
  batch, with the student's compute dtype float32, and records the relative
  difference ``|loss_step - loss_f32| / |loss_f32|`` (the drift);
* samples the process's resident memory (``/proc/self/statm``);
* runs the evaluation.

At the end it checks (and raises ``SoakFailure`` otherwise) that

* the largest relative drift is within ``--tolerance``;
* resident memory grows by less than ``--max-growth`` MiB per 1,000 steps
  (the slope of a least-squares line through the samples of the second
  half, after the warm-up);
* the train step was compiled exactly once (its jit cache holds one entry,
  and XLA compiled nothing at all after the first check: counted with a
  ``jax.monitoring`` listener on backend compilations) once every program
  had run (from the second check on: the first merge of metrics compiles an
  addition).

Faults can be injected to show the checks work: ``--inject-leak MIB`` keeps
MIB MiB per step alive, ``--inject-recompile STEP`` feeds the step one batch
with another dtype at STEP.

Usage::

  nice -n 19 python benchmarks/soak.py                # 10,000 steps
  python benchmarks/soak.py --steps 200 --check-every 20
  python benchmarks/soak.py --write-docs              # update docs/reliability.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _docs  # pylint: disable=wrong-import-position

from kdjax import adapters  # pylint: disable=wrong-import-position
from kdjax import losses  # pylint: disable=wrong-import-position
from kdjax import loop  # pylint: disable=wrong-import-position
from kdjax import metrics as metrics_lib  # pylint: disable=wrong-import-position
from kdjax import objective as objective_lib  # pylint: disable=wrong-import-position
from kdjax import step as step_lib  # pylint: disable=wrong-import-position
from kdjax import writers  # pylint: disable=wrong-import-position

DOCS = ROOT / 'docs' / 'reliability.md'
SECTION = '## Long-run stability (soak)'
NUM_CLASSES = 10
KD_WEIGHT = 0.9
CE_WEIGHT = 0.1
# bfloat16 keeps 8 significant bits: one rounding is off by up to 2**-9 of
# the value (0.2%). The student's two hidden layers and its logits are each
# rounded to bfloat16 after a float32-accumulated matmul, so its logits carry
# errors of a few 2**-9; the loss (computed in float32 from them) averages
# them over the batch. The limit is one bfloat16 unit in the last place,
# 2**-8 (0.39%) of the loss: rounding stays below it, an error that
# accumulates from step to step would not.
TOLERANCE = 2.0**-8
# MiB per 1,000 steps over the second half. Python and XLA allocate and free
# in pools, so the resident size jitters by a few MiB; a leak of one small
# buffer per step (e.g. a 1 KiB array kept alive) would already show as 1 MiB
# per 1,000 steps.
MAX_GROWTH = 1.0


class SoakFailure(AssertionError):
  """A soak check failed: drift beyond tolerance, memory growth or a recompile."""


class MLP(nn.Module):
  """ReLU MLP classifier; `dtype` is the compute dtype, parameters stay float32."""

  width: int
  depth: int = 2
  dtype: Any = jnp.float32
  classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout: train and eval modes are the same function
    x = x.astype(self.dtype)
    for _ in range(self.depth):
      x = nn.relu(nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32)(x))
    return nn.Dense(self.classes, dtype=self.dtype, param_dtype=jnp.float32)(x)


class _CompileCounter:
  """Counts XLA backend compilations through jax.monitoring."""

  def __init__(self):
    self.count = 0
    self.active = True
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)

  def _on_duration(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if self.active and event == '/jax/core/compile/backend_compile_duration':
      self.count += 1

  def close(self) -> None:
    # jax offers no public way to unregister; a closed counter ignores events.
    self.active = False


def resident_mib() -> float:
  """This process's resident set size in MiB (Linux /proc, else ru_maxrss)."""
  try:
    with open('/proc/self/statm') as f:
      pages = int(f.read().split()[1])
    return pages * os.sysconf('SC_PAGE_SIZE') / 2**20
  except OSError:
    import resource  # pylint: disable=g-import-not-at-top
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(args) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  rng = np.random.default_rng(args.seed)
  total = args.train_examples + args.eval_examples
  x = rng.standard_normal((total, args.input_dim)).astype(np.float32)
  projection = rng.standard_normal((args.input_dim, NUM_CLASSES)).astype(np.float32)
  labels = np.argmax(x @ projection, axis=-1).astype(np.int32)
  train = {'x': x[: args.train_examples], 'label': labels[: args.train_examples]}
  held_out = {'x': x[args.train_examples:], 'label': labels[args.train_examples:]}
  return train, held_out


def build(args) -> dict[str, Any]:
  """Models, objective, jitted train/eval steps and the float32 recomputation."""
  teacher = MLP(args.teacher_width)
  student = MLP(args.student_width, dtype=jnp.bfloat16)
  student_f32 = MLP(args.student_width, dtype=jnp.float32)
  k_teacher, k_student = jax.random.split(jax.random.PRNGKey(args.seed))
  example = jnp.zeros((1, args.input_dim), jnp.float32)
  teacher_variables = teacher.init(k_teacher, example)
  student_variables = student.init(k_student, example)
  temperature = optax.linear_schedule(4.0, 1.0, args.steps)
  objective = objective_lib.Objective(
      terms={
          'kd': objective_lib.distill(losses.kl_divergence, temperature=temperature),
          'ce': objective_lib.supervised(),
      },
      weights={'kd': KD_WEIGHT, 'ce': CE_WEIGHT},
      metrics={'acc/student': objective_lib.accuracy_metric()},
  )
  optimizer = optax.adam(args.learning_rate)
  student_apply = adapters.from_linen(student)
  teacher_apply = adapters.from_linen(teacher)
  train_step = jax.jit(
      step_lib.make_train_step(student_apply, teacher_apply, objective, optimizer),
      donate_argnums=0)
  eval_step = jax.jit(step_lib.make_eval_step(student_apply, teacher_apply, objective))
  student_f32_apply = adapters.from_linen(student_f32)

  @jax.jit
  def float32_loss(params, teacher_variables, batch, step):
    """The step's loss recomputed with the student in float32 compute."""
    teacher_out = step_lib.teacher_outputs(teacher_apply, teacher_variables, batch)
    student_out, _ = student_f32_apply({'params': params}, batch, train=True)
    loss, _ = objective(student_out, teacher_out, batch, step=step)
    return loss

  state = step_lib.init_train_state(student_variables, optimizer, rng=args.seed)
  return {
      'state': state, 'teacher_variables': teacher_variables, 'train_step': train_step,
      'eval_step': eval_step, 'float32_loss': float32_loss,
  }


def run(args) -> dict[str, Any]:
  """Trains `args.steps` steps with the checks; returns the measurements."""
  train, held_out = make_data(args)
  parts = build(args)
  state, teacher_variables = parts['state'], parts['teacher_variables']
  train_step, eval_step = parts['train_step'], parts['eval_step']
  float32_loss = parts['float32_loss']
  counter = _CompileCounter()
  leaked = []
  order_rng = np.random.default_rng(args.seed + 1)
  batches_per_epoch = args.train_examples // args.batch
  order = None
  checks, running = [], None
  compiles_after_warmup = None
  start = time.perf_counter()
  try:
    for step in range(args.steps):
      position = step % batches_per_epoch
      if position == 0:
        order = order_rng.permutation(args.train_examples)
      rows = order[position * args.batch:(position + 1) * args.batch]
      batch = {name: value[rows] for name, value in train.items()}
      if step == args.inject_recompile:
        batch['x'] = batch['x'].astype(np.float16)
      checking = step % args.check_every == 0 or step == args.steps - 1
      if checking:
        params = jax.tree.map(jnp.copy, state.params)  # the state is donated
        step_value = jnp.copy(state.step)
      state, metrics = train_step(state, teacher_variables, batch)
      running = metrics_lib.merge(running, metrics)
      if args.inject_leak:
        leaked.append(np.ones(int(args.inject_leak * 2**20) // 8, np.float64))
      if checking:
        step_loss = float(metrics_lib.compute(metrics)['loss/total'])
        reference = float(float32_loss(params, teacher_variables, batch, step_value))
        evaluation = loop.evaluate(eval_step, state, teacher_variables, held_out,
                                   batch_size=args.eval_batch)
        checks.append({
            'step': step, 'loss': step_loss, 'loss_f32': reference,
            'drift': abs(step_loss - reference) / max(abs(reference), 1e-30),
            'rss_mib': resident_mib(), 'eval_acc': evaluation['acc/student'],
        })
        if len(checks) == 2:  # every program has run once: the step, the check, merge
          compiles_after_warmup = counter.count
    jax.block_until_ready(state)
  finally:
    counter.close()
  seconds = time.perf_counter() - start
  return summarize(args, checks, running, train_step, eval_step, float32_loss, counter,
                   compiles_after_warmup, seconds)


def _slope_per_1k(steps: np.ndarray, values: np.ndarray) -> float:
  if len(steps) < 2:
    return 0.0
  return float(np.polyfit(steps, values, 1)[0] * 1000)


def summarize(args, checks, running, train_step, eval_step, float32_loss, counter,
              compiles_after_warmup, seconds) -> dict[str, Any]:
  steps = np.array([c['step'] for c in checks], np.float64)
  drift = np.array([c['drift'] for c in checks])
  rss = np.array([c['rss_mib'] for c in checks])
  second_half = steps >= args.steps / 2
  quarter = max(len(checks) // 4, 1)
  return {
      'steps': args.steps,
      'checks': len(checks),
      'seconds': seconds,
      'max_drift': float(drift.max()),
      'max_drift_step': int(steps[int(drift.argmax())]),
      'median_drift_first_quarter': float(np.median(drift[:quarter])),
      'median_drift_last_quarter': float(np.median(drift[-quarter:])),
      'drift_slope_per_1k': _slope_per_1k(steps, drift),
      'rss_first_mib': float(rss[0]),
      'rss_mid_mib': float(rss[second_half][0]) if second_half.any() else float(rss[-1]),
      'rss_last_mib': float(rss[-1]),
      'rss_slope_mib_per_1k': _slope_per_1k(steps[second_half], rss[second_half]),
      'train_step_cache_size': train_step._cache_size(),  # pylint: disable=protected-access
      'eval_step_cache_size': eval_step._cache_size(),  # pylint: disable=protected-access
      'float32_loss_cache_size': float32_loss._cache_size(),  # pylint: disable=protected-access
      'backend_compiles_total': counter.count,
      'backend_compiles_after_warmup': counter.count - (
          counter.count if compiles_after_warmup is None else compiles_after_warmup),
      'first_loss': checks[0]['loss'],
      'last_loss': checks[-1]['loss'],
      'last_eval_acc': checks[-1]['eval_acc'],
      'train_means': metrics_lib.compute(running),
      'tolerance': args.tolerance,
      'max_growth': args.max_growth,
      'checks_detail': checks,
  }


def verify(result: dict[str, Any]) -> None:
  """Raises SoakFailure naming every check that failed."""
  failures = []
  if not result['max_drift'] <= result['tolerance']:
    failures.append(
        f"loss drift {result['max_drift']:.3g} (at step {result['max_drift_step']}) exceeds "
        f"the tolerance {result['tolerance']:.3g}")
  if not result['rss_slope_mib_per_1k'] < result['max_growth']:
    failures.append(
        f"resident memory grows {result['rss_slope_mib_per_1k']:.3g} MiB per 1,000 steps over "
        f"the second half (limit {result['max_growth']:.3g})")
  if result['train_step_cache_size'] != 1:
    failures.append(f"the train step was compiled {result['train_step_cache_size']} times "
                    '(its jit cache), expected once')
  if result['backend_compiles_after_warmup']:
    failures.append(f"{result['backend_compiles_after_warmup']} XLA compilations after the "
                    'second check, expected none')
  if failures:
    raise SoakFailure('soak checks failed: ' + '; '.join(failures))


def machine() -> str:
  load = ', '.join(f'{x:.2f}' for x in os.getloadavg())
  return f"{writers.environment()['machine']}, load average {load}"


def command_line(argv) -> str:
  return ' '.join(['python benchmarks/soak.py'] + list(argv if argv is not None else sys.argv[1:]))


def docs_section(result: dict[str, Any], args, argv, load_before: str) -> str:
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  grows = result['median_drift_last_quarter'] > 2 * result['median_drift_first_quarter']
  return f"""{SECTION}

Generated by `benchmarks/soak.py`; do not edit by hand.

{args.steps:,} steps of a small distillation on CPU: a linen MLP teacher
(2x{args.teacher_width}, float32) into an MLP student (2x{args.student_width}) with float32
parameters and **bfloat16 compute**, input {args.input_dim}, batch {args.batch}, adam
{args.learning_rate:g}; objective {KD_WEIGHT} x T² KL at a temperature scheduled linearly
from 4 to 1 over the run + {CE_WEIGHT} x cross-entropy, plus an accuracy metric;
`make_train_step` jitted with the state donated, `make_eval_step` with
`loop.evaluate` (padded last batch) every check, `metrics.merge` for the
running means. Every {args.check_every} steps ({result['checks']} checks) the loss the
step reported is recomputed in float32 (student compute dtype float32, the
same parameters, batch and step), resident memory is sampled
(`/proc/self/statm`), and XLA compilations are counted
(`jax.monitoring`, backend compile events) along with the jitted step's
cache entries.

* Command: `nice -n 19 {command_line(argv)}`
* Date: {date}; {result['seconds']:.0f} s (not a speed figure: the machine is shared)
* JAX {jax.__version__}, backend {jax.default_backend()}
* Machine: {machine()} (at the end; {load_before} at the start)

| check | result | limit |
|---|---|---|
| largest relative loss drift, bf16 step vs float32 recomputation | {result['max_drift']:.2e} (step {result['max_drift_step']:,}) | {result['tolerance']:.2e} |
| median drift, first / last quarter of the checks | {result['median_drift_first_quarter']:.2e} / {result['median_drift_last_quarter']:.2e} ({'grows' if grows else 'does not grow'}) | |
| drift trend (least squares) | {result['drift_slope_per_1k']:+.2e} per 1,000 steps | |
| resident memory: first check / mid-run / last | {result['rss_first_mib']:.1f} / {result['rss_mid_mib']:.1f} / {result['rss_last_mib']:.1f} MiB | |
| memory growth over the second half (least squares) | {result['rss_slope_mib_per_1k']:+.3f} MiB per 1,000 steps | < {result['max_growth']:g} |
| train step compilations (jit cache entries) | {result['train_step_cache_size']} | exactly 1 |
| eval step / float32 recomputation cache entries | {result['eval_step_cache_size']} / {result['float32_loss_cache_size']} | |
| XLA compilations in all / after the second check | {result['backend_compiles_total']} / {result['backend_compiles_after_warmup']} | 0 after |
| train loss, first / last check; held-out accuracy at the end | {result['first_loss']:.4f} / {result['last_loss']:.4f}; {result['last_eval_acc']:.3f} | |

The tolerance: bfloat16 keeps 8 significant bits, so each rounding is off by
up to 2^-9 (0.2%) of the value; the student's hidden layers and logits are
each rounded once after a float32-accumulated matmul (the losses compute in
float32 and average the errors over the batch). The limit is one bfloat16
unit in the last place of the loss, 2^-8 ({result['tolerance']:.2e}): rounding
stays below it, an error that accumulates from step to step would not. What
would show a drift is the drift growing with the step count; the
first/last-quarter medians and the trend above say whether it does. The
teacher is untrained (random weights, the labels come from another random
map), so the held-out accuracy is low: the run exercises the machinery, not
the method. The
checks are shown to work by tests/test_soak.py, which runs 20 steps and
injects a leak (a buffer kept alive each step) and a recompilation (one
batch of another dtype): each is reported.
"""


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=10_000)
  parser.add_argument('--check-every', type=int, default=100)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--eval-batch', type=int, default=192,
                      help='evaluation batch (the held-out set is not a multiple: padded)')
  parser.add_argument('--train-examples', type=int, default=4096)
  parser.add_argument('--eval-examples', type=int, default=1000)
  parser.add_argument('--input-dim', type=int, default=40)
  parser.add_argument('--teacher-width', type=int, default=256)
  parser.add_argument('--student-width', type=int, default=64)
  parser.add_argument('--learning-rate', type=float, default=1e-3)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--tolerance', type=float, default=TOLERANCE)
  parser.add_argument('--max-growth', type=float, default=MAX_GROWTH,
                      help='MiB per 1,000 steps')
  parser.add_argument('--inject-leak', type=float, default=0.0,
                      help='keep this many MiB alive per step (tests the memory check)')
  parser.add_argument('--inject-recompile', type=int, default=-1,
                      help='feed a float16 batch at this step (tests the compile check)')
  parser.add_argument('--no-verify', action='store_true', help='report without raising')
  parser.add_argument('--write-docs', action='store_true',
                      help=f'update the "{SECTION}" section of {DOCS.relative_to(ROOT)}')
  args = parser.parse_args(argv)
  if args.steps < 1 or args.check_every < 1:
    parser.error(f'--steps and --check-every must be >= 1, got {args.steps}, {args.check_every}')
  return args


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  load_before = 'load average ' + ', '.join(f'{x:.2f}' for x in os.getloadavg())
  print(f'JAX {jax.__version__} ({jax.default_backend()}); {machine()}', flush=True)
  result = run(args)
  for key, value in result.items():
    if key not in ('checks_detail', 'train_means'):
      print(f'  {key}: {value}')
  if args.write_docs:
    _docs.write_section(SECTION, docs_section(result, args, argv, load_before), DOCS)
    print(f'wrote the "{SECTION}" section of {DOCS}')
  if not args.no_verify:
    verify(result)
    print('soak checks passed')
  return result


if __name__ == '__main__':
  main()
