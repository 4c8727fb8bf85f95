"""Sizing of experiments/fastspeech2.py: seconds per teacher and student step at a config's sizes.

Times the jitted train step of the Transformer TTS teacher (each reduction
factor of the config) and of the FastSpeech students (with and without the
variance adaptor) on random batches of the config's shapes, and the
teacher's generation of one batch (every row runs to ``max_frames``: the
stop threshold is set above 1), then estimates the run's total from the
steps the config implies for ``--train`` training utterances. The load
average is printed beside: on a shared machine the seconds are only an
estimate for scheduling, not a result; the process CPU seconds per call are
printed too (less sensitive to the load) with the range of wall time they
imply alone on 2 cores. Usage::

    python -m benchmarks.fastspeech2_sizing --config=experiments/configs/fastspeech2.py:cpu \\
        [--train 612] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from experiments import fastspeech2 as fs2
from kdjax import config as config_lib
from kdjax import step as step_lib


def _random_batch(config, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  p, t = config.data.max_phonemes, config.data.max_frames
  durations = np.full((size, p), t // p, np.int32)
  frames = durations.sum(1)
  return {
      'phonemes': rng.integers(1, 40, (size, p)).astype(np.int32),
      'phoneme_mask': np.ones((size, p), bool),
      'durations': durations,
      'mel': rng.normal(size=(size, t, fs2.NUM_MELS)).astype(np.float32),
      'frame_mask': np.arange(t)[None] < frames[:, None],
      'num_frames': frames.astype(np.int32),
      'pitch': rng.normal(size=(size, t)).astype(np.float32),
      'energy': rng.normal(size=(size, t)).astype(np.float32),
      'speaker': np.zeros(size, np.int32),
  }


#: Process CPU seconds per call, summed over XLA's threads, by key (see main).
CPU_SECONDS: dict[str, float] = {}


def _time(fn, repeats: int, key: str = '') -> float:
  """Wall seconds per call after compilation; the process CPU seconds go to CPU_SECONDS[key]."""
  jax.block_until_ready(fn())  # compile
  tick, cpu = time.perf_counter(), time.process_time()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  if key:
    CPU_SECONDS[key] = (time.process_time() - cpu) / repeats
  return (time.perf_counter() - tick) / repeats


def time_step(model, objective, batch, repeats: int, key: str = '') -> float:
  train_step = jax.jit(step_lib.make_train_step(model.apply, None, objective, model.optimizer))
  state = jax.jit(model.init)(jax.random.key(0))
  return _time(lambda: train_step(state, None, batch)[0].step, repeats, key)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='experiments/configs/fastspeech2.py:cpu')
  parser.add_argument('--train', type=int, default=612,
                      help='training utterances assumed (612 of the 2,000-utterance build fit '
                           'the cpu shapes)')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  config = config_lib.load_config(args.config)
  rng = np.random.default_rng(0)
  load = os.getloadavg()
  out = {}
  for r in config.alignment.reduction_factors:
    teacher = fs2.Teacher(config, int(r), 10.0, args.train)
    batch = fs2.teacher_batch(_random_batch(config, config.teacher.batch_size, rng), int(r))
    objective = fs2.teacher_objective(config, 10.0, int(r))
    out[f'teacher_r{r}_step'] = time_step(teacher, objective, batch, args.repeats,
                                          f'teacher_r{r}_step')
    gen = _random_batch(config, config.alignment.generate_batch_size, rng)
    out[f'teacher_r{r}_generate_batch'] = _time(lambda: teacher.generate(
        teacher.init(jax.random.key(0)).variables, gen['phonemes'], gen['phoneme_mask'],
        speaker=gen['speaker'], rng=jax.random.key(1), stop_threshold=2.0).mels, 1,
        f'teacher_r{r}_generate_batch')
    out[f'teacher_r{r}_steps'] = teacher.steps
  batch = _random_batch(config, config.student.batch_size, rng)
  for variant in ('gt', 'fastspeech2'):
    student = fs2.Student(config, variant, args.train)
    keys = fs2.STUDENT_KEYS + (('pitch', 'energy') if variant == 'fastspeech2' else ())
    out[f'student_{variant}_step'] = time_step(student, fs2.student_objective(variant),
                                               {k: batch[k] for k in keys}, args.repeats,
                                               f'student_{variant}_step')
    out['student_steps'] = student.steps
  def totals(seconds):
    teacher = sum(seconds[f'teacher_r{r}_step'] * out[f'teacher_r{r}_steps']
                  + seconds[f'teacher_r{r}_generate_batch'] * (
                      -(-args.train // config.alignment.generate_batch_size))
                  for r in config.alignment.reduction_factors) * len(
                      config.alignment.guided_weights)
    students = out['student_steps'] * len(config.seeds) * (
        2 * seconds['student_gt_step'] + seconds['student_fastspeech2_step'])
    return teacher, students

  for key, value in out.items():
    cpu = f' (process CPU {CPU_SECONDS[key]:.3f} s)' if key in CPU_SECONDS else ''
    print(f'{key}: {value:.3f}{cpu}' if isinstance(value, float) else f'{key}: {value}')
  teacher_total, student_total = totals(out)
  print(f'estimated teacher candidates + generation: {teacher_total / 60:.0f} min')
  print(f'estimated students: {student_total / 60:.0f} min')
  print(f'estimated total: {(teacher_total + student_total) / 3600:.1f} h '
        f'(compilation and evaluation not included)')
  # On a loaded machine the wall seconds measure the load; the process's CPU
  # seconds much less so. Alone on 2 cores a step takes between its CPU
  # seconds / 2 (both cores busy) and its CPU seconds (one).
  cpu_total = sum(totals(CPU_SECONDS))
  print(f'from process CPU seconds: {cpu_total / 3600:.1f} h of CPU, so about '
        f'{cpu_total / 7200:.1f} to {cpu_total / 3600:.1f} h alone on 2 cores')
  print(f'load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
