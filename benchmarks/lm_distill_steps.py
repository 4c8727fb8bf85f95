"""One step of each kind of ``experiments/lm_distill.py``, and the run time it implies.

Builds the experiment at a config's sizes (default
``experiments/configs/lm_distill.py:cpu``: its data, models and compiled
steps, with freshly initialised weights: a step costs the same whatever the
weights) and times, on one batch of real training windows, the median of
``--repeats`` calls of each jitted train step after one warm-up call: the
teacher's, the labels-only student's, the off-policy student's (the teacher
run in the step), on-policy GKD's and MiniLLM's (the student's sampling
included), the cached-teacher student's, the BPE student's alone and with
cross-tokenizer ULD, and one evaluation batch (held-out NLL) and one
generation batch. Ratios are to the labels-only student step of the same
run. It then multiplies each by the number of times the config's run
calls it (seeds, teachers, the selection grid without widening, epochs,
evaluations) and prints the estimated total, with the load average: a
measurement at load above 2 on 2 cores is not a result, only an upper
bound.

Usage::

  nice python benchmarks/lm_distill_steps.py [--config experiments/configs/lm_distill.py:cpu]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from experiments import lm_distill  # pylint: disable=wrong-import-position
from kdjax import cache as cache_lib  # pylint: disable=wrong-import-position
from kdjax import config as config_lib  # pylint: disable=wrong-import-position


CPU_SECONDS = {}


def _median_seconds(fn, repeats, name=None):
  """Median wall seconds of `fn`; the median CPU seconds of this process go to CPU_SECONDS.

  On a loaded machine the wall time measures the other jobs too; the CPU
  time this process used does not (much): on a quiet 2-core machine a step
  takes between half of it (both cores busy) and all of it (one core).
  """
  jax.block_until_ready(fn())
  times, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  if name is not None:
    CPU_SECONDS[name] = float(np.median(cpu))
  return float(np.median(times))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='experiments/configs/lm_distill.py:cpu')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args(argv)
  config = config_lib.load_config(args.config)
  with config.unlocked():
    config.progress = False
  start = time.time()
  exp = lm_distill.Experiment(config, tempfile.mkdtemp())
  print(f'data and models built in {time.time() - start:.0f} s '
        f"({exp.data_info['train']['bytes'] / 1e6:.2f} MB train, {exp.num_train} windows)")
  c = config
  teacher_vars = exp.teacher.init_variables(jax.random.PRNGKey(0))
  seconds, compile_seconds = {}, {}

  def time_step(name, variant, data, teacher_variables, batch_size):
    trainer = exp.trainer(variant)
    state = trainer.init(jax.random.PRNGKey(1))
    model = trainer.model
    raw = exp._train_step(variant, model, model.optimizer(trainer.steps))  # pylint: disable=protected-access
    jitted = jax.jit(raw)
    batch = {k: jnp.asarray(v[:batch_size]) for k, v in data.items()}
    t0 = time.time()
    jax.block_until_ready(jitted(state, teacher_variables, batch))
    compile_seconds[name] = time.time() - t0
    seconds[name] = _median_seconds(lambda: jitted(state, teacher_variables, batch)[1],
                                    args.repeats, name)
    print(f'{name}: {seconds[name] * 1e3:.1f} ms/step wall, {CPU_SECONDS[name] * 1e3:.1f} ms '
          f'CPU (first call {compile_seconds[name]:.1f} s)', flush=True)

  w, t = c.kd.weights[len(c.kd.weights) // 2], c.kd.temperatures[len(c.kd.temperatures) // 2]
  time_step('teacher', 'teacher', exp.train_data('labels'), None, c.teacher.batch_size)
  time_step('labels', 'labels', exp.train_data('labels'), None, c.student.batch_size)
  time_step('off_policy', 'forward_kl', exp.train_data('forward_kl', w, t), teacher_vars,
            c.student.batch_size)
  time_step('gkd', 'gkd', exp.train_data('gkd', w, t), teacher_vars, c.student.batch_size)
  time_step('minillm', 'minillm', exp.train_data('minillm', w, t), teacher_vars,
            c.student.batch_size)
  rows = 4 * c.student.batch_size
  cache_dir = tempfile.mkdtemp()
  arrays = {k: v[:rows] for k, v in exp.bytes['train'].items()}
  spec = cache_lib.write_cache(cache_dir, exp.teacher.apply, teacher_vars, arrays, k=c.cache.k,
                               temperature=t, log_prob_format=c.cache.log_prob_format,
                               index_encoding=c.cache.index_encoding,
                               batch_size=c.data.eval_batch_size, teacher_id='bench')
  # A second write (compiled already? write_cache jits afresh, so time a
  # write of the same rows with its compilation excluded: the teacher's
  # top-k forward is the eval forward's cost; the encoding is measured).
  start = time.process_time()
  for row in range(rows):
    cache_lib.encode_record(spec, *(np.zeros((c.data.context, c.cache.k), np.float32),
                                    np.zeros((c.data.context, c.cache.k), np.int32),
                                    np.zeros((c.data.context,), np.float32)))
  encode_per_window = (time.process_time() - start) / rows
  stored = cache_lib.TeacherCache(cache_dir, expected=spec).read(range(rows))
  exp.cache_temperature = t
  cached = {**{k: v[:rows] for k, v in exp.train_data('cached_forward_kl', w, t).items()},
            **stored}
  time_step('cached', 'cached_forward_kl', cached, None, c.student.batch_size)
  time_step('bpe_labels', 'bpe_labels', exp.train_data('bpe_labels', 0.0, 1.0), None,
            c.student.batch_size)
  time_step('bpe_uld', 'bpe_uld', exp.train_data('bpe_uld', c.xtok.weight, c.xtok.temperature),
            teacher_vars, c.student.batch_size)
  eval_batch = {k: v[:c.data.eval_batch_size] for k, v in exp.bytes['val'].items()}
  eval_batch['target_bytes'] = eval_batch['mask']
  student_vars = exp.student.init_variables(jax.random.PRNGKey(2))
  seconds['eval_student'] = _median_seconds(lambda: exp.student.nll(student_vars, eval_batch),
                                            args.repeats, 'eval_student')
  seconds['eval_teacher'] = _median_seconds(lambda: exp.teacher.nll(teacher_vars, eval_batch),
                                            args.repeats, 'eval_teacher')
  prompts = {k: v[:c.data.eval_batch_size] for k, v in exp.prompts['test'].items()}
  seconds['generate'] = _median_seconds(
      lambda: exp.generation.continuations(student_vars, prompts)['tokens'], 2, 'generate')
  print(f"eval batch: student {seconds['eval_student'] * 1e3:.0f} ms, teacher "
        f"{seconds['eval_teacher'] * 1e3:.0f} ms; generation batch "
        f"{seconds['generate']:.2f} s")

  # How often the run calls each.
  n_seeds, n_teachers = len(c.seeds), len(c.teacher_seeds)
  grid = (len(c.kd.weights) * len(c.kd.temperatures) if c.kd.search == 'grid'
          else len(c.kd.weights) + len(c.kd.temperatures) - 1)
  windows = exp.num_train
  bpe_windows = len(exp.bpe['train']['tokens'])
  epoch = lambda rows, batch: rows // batch
  val_batches = math_ceil(len(exp.bytes['val']['tokens']), c.data.eval_batch_size)
  test_batches = math_ceil(len(exp.bytes['test']['tokens']), c.data.eval_batch_size)
  gen_batches = math_ceil(len(exp.prompts['test']['tokens']), c.data.eval_batch_size)
  s_steps = epoch(windows, c.student.batch_size) * c.student.epochs
  t_steps = epoch(windows, c.teacher.batch_size) * c.teacher.epochs
  parts = {
      'teachers': n_teachers * t_steps * seconds['teacher'],
      'labels': n_seeds * s_steps * seconds['labels'],
      'labels_long': n_seeds * t_steps * seconds['labels'],
      'off-policy (4 x seeds)': 4 * n_seeds * s_steps * seconds['off_policy'],
      f'selection (4 x {grid} points, no widening)': 4 * grid * s_steps * seconds['off_policy'],
      'gkd': n_seeds * s_steps * seconds['gkd'],
      'minillm': n_seeds * s_steps * seconds['minillm'],
      'cache writes': n_teachers * windows * (encode_per_window + seconds['eval_teacher']
                                              / c.data.eval_batch_size),
      'cached': n_seeds * s_steps * seconds['cached'],
      'bpe': n_seeds * epoch(bpe_windows, c.student.batch_size) * c.student.epochs * (
          seconds['bpe_labels'] + seconds['bpe_uld']),
  }
  runs = n_teachers + n_seeds * 11 + 4 * grid
  epochs = (n_teachers * c.teacher.epochs + n_seeds * (9 * c.student.epochs + c.teacher.epochs)
            + 4 * grid * c.student.epochs)
  parts['validation every epoch'] = epochs * val_batches * seconds['eval_student']
  parts['final val + test'] = runs * (val_batches + test_batches) * seconds['eval_student']
  parts['generation evals'] = (n_teachers + n_seeds * 9) * gen_batches * (
      seconds['generate'] + n_teachers * seconds['eval_teacher'])
  total = sum(parts.values())
  # The same sums with CPU seconds in place of wall seconds.
  ratio = {k: CPU_SECONDS[k] / seconds[k] for k in CPU_SECONDS}
  cpu_parts = dict(parts)
  for name in cpu_parts:
    key = {'teachers': 'teacher', 'labels': 'labels', 'labels_long': 'labels', 'gkd': 'gkd',
           'minillm': 'minillm', 'cached': 'cached', 'bpe': 'bpe_uld'}.get(
               name, 'off_policy' if 'off' in name or 'selection' in name else 'eval_student')
    if name == 'generation evals':
      key = 'generate'
    if name == 'cache writes':
      key = 'eval_teacher'
    cpu_parts[name] = parts[name] * ratio[key]
  cpu_total = sum(cpu_parts.values())
  load = os.getloadavg()
  print('\n| part | from wall seconds | from CPU seconds |\n|---|---:|---:|')
  for name, value in parts.items():
    print(f'| {name} | {value:.0f} | {cpu_parts[name]:.0f} |')
  print(f'| total | {total:.0f} s ({total / 3600:.2f} h) | {cpu_total:.0f} s '
        f'({cpu_total / 3600:.2f} h) |')
  print('\nA quiet 2-core machine: between half the CPU total and the CPU total.')
  print('\n| step | wall ms | CPU ms | ratio to labels-only student step (wall) |'
        '\n|---|---:|---:|---:|')
  for name in ('teacher', 'labels', 'off_policy', 'gkd', 'minillm', 'cached', 'bpe_labels',
               'bpe_uld'):
    print(f"| {name} | {seconds[name] * 1e3:.1f} | {CPU_SECONDS[name] * 1e3:.1f} | "
          f"{seconds[name] / seconds['labels']:.2f} |")
  print(f'\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}'
        + ('' if load[0] <= 2 else ' (above 2: not a result, an upper bound of a quiet run)'))
  print('Not counted: compilation (about 15 programs), checkpoints, BPE training, widening.')


def math_ceil(a, b):
  return -(-a // b)


if __name__ == '__main__':
  main()
