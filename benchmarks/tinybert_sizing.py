"""Sizes experiments/tinybert.py's cpu config: each stage's step timed, and the run's estimate.

Usage::

    python benchmarks/tinybert_sizing.py [--config=experiments/configs/tinybert.py:cpu]
        [--config.data.data_dir=...] [--repeats 3]

Builds the experiment's data and compiled steps (the real teacher), times
each stage's step after its compile (best of ``--repeats``), and multiplies
by the config's step counts: teacher fine-tuning, the MLM head, the
augmentation's MLM forwards, general distillation per loss family, and
every task-specific run (the selection grid and each seed's variants),
validation scoring included. Prints a JSON record with the load average:
a run at load above 2 on the shared 2-core machines is not a result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import tinybert  # pylint: disable=wrong-import-position
from experiments.configs import tinybert as tinybert_configs  # pylint: disable=C0413
from kdjax import config as config_lib  # pylint: disable=wrong-import-position
from kdjax import step as step_lib  # pylint: disable=wrong-import-position


CPU = {}  # name -> best process CPU seconds (all threads) of the timed call


def best_time(fn, repeats: int, name: str | None = None) -> float:
  """Best wall seconds of `repeats` calls after one (compiling) call; CPU seconds into CPU."""
  fn()  # compile
  times, cpu = [], []
  for _ in range(repeats):
    begin, begin_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - begin)
    cpu.append(time.process_time() - begin_cpu)
  if name:
    CPU[name] = min(cpu)
  return min(times)


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=3)
  args, rest = parser.parse_known_args(argv)
  if not any(a.startswith('--config=') for a in rest):
    rest = ['--config=experiments/configs/tinybert.py:cpu', *rest]
  config, _ = config_lib.parse_args([*rest, '--workdir=/tmp/unused'],
                                    schema=tinybert_configs.schema())
  load_before = os.getloadavg()
  start = time.time()
  experiment = tinybert.Experiment(config, '/tmp/unused')
  setup = time.time() - start
  data = experiment.data
  timed = {}

  def stepper(step_fn, variables, teacher, encoded, labels, batch_size, needs_teacher=True,
              logits=None):
    state = {'s': step_lib.init_train_state(tinybert._copy(variables), experiment.optimizer
                                            if step_fn is not experiment.teacher_step
                                            else experiment._teacher_optimizer())}
    batch = next(experiment.batches(encoded, labels, batch_size, 1, 0, logits))

    def once():
      state['s'], metrics = step_fn(state['s'], teacher if needs_teacher else None, batch)
      return metrics

    return once

  teacher_vars = experiment.pretrained_variables()
  fine = {'params': {'encoder': teacher_vars['params']['encoder'],
                     'classifier': tinybert.classifier_head(
                         experiment.pretrained.model.config.hidden, experiment.num_classes, 0)}}
  experiment.fine_tuned = fine
  student = experiment.student_init(0)
  train, labels = data.task['train'], data.labels['train']
  timed['teacher_step'] = best_time(stepper(experiment.teacher_step, fine, None, train, labels,
                                            config.teacher.batch_size, False), args.repeats,
                                    'teacher_step')
  for family in tinybert.FEATURES:
    timed[f'{family}_step'] = best_time(stepper(experiment.steps[family], student, teacher_vars,
                                                data.prose, None, config.general.batch_size),
                                        args.repeats, f'{family}_step')
  logits = np.zeros((len(labels), experiment.num_classes), np.float32)
  timed['prediction_step'] = best_time(stepper(experiment.steps['prediction'], student, None,
                                               train, labels, config.task.batch_size, False,
                                               logits), args.repeats, 'prediction_step')
  timed['labels_step'] = best_time(stepper(experiment.steps['labels'], student, None, train,
                                           labels, config.task.batch_size, False), args.repeats,
                                   'labels_step')
  timed['validation_scoring'] = best_time(
      lambda: experiment.accuracy(student, 'validation'), args.repeats, 'validation_scoring')
  validation = data.task['validation']
  timed['teacher_logits_per_example'] = best_time(
      lambda: experiment.logits(experiment._teacher_logits, fine, validation),
      1, 'teacher_logits_per_example') / len(validation.lengths)
  CPU['teacher_logits_per_example'] /= len(validation.lengths)
  # The MLM head's step and one batch of candidate forwards.
  augmenter = tinybert.Augmenter(experiment.pretrained, config)
  a = config.augment
  one_step = config.copy_and_resolve_references()
  with one_step.unlocked():
    one_step.augment.mlm_steps = 1
  augmenter.config = one_step
  augmenter.train_head(data.prose, data.task['validation'])
  augmenter.config = config
  rows = np.arange(min(len(train.lengths), 64))
  augmenter.mlm_candidates(train, rows)  # compiles
  begin, begin_cpu = time.perf_counter(), time.process_time()
  augmenter.mlm_candidates(train, rows)
  timed['candidates_per_example'] = (time.perf_counter() - begin) / len(rows)
  CPU['candidates_per_example'] = (time.process_time() - begin_cpu) / len(rows)
  mlm_batch = augmenter._masked_batch(data.prose, np.arange(a.mlm_batch_size),
                                      np.random.default_rng(0))
  tokens, positions, targets, weights = mlm_batch
  positions, targets, weights = (tinybert._pad_columns(x, 16) for x in (positions, targets,
                                                                          weights))
  opt_state = augmenter._optimizer.init(augmenter.head_params)
  timed['mlm_step'] = best_time(lambda: augmenter._mlm_step(
      augmenter.head_params, opt_state, augmenter.encoder_variables, tokens,
      data.prose.lengths[:a.mlm_batch_size], positions, targets, weights)[2], args.repeats,
      'mlm_step')

  t, g = config.task, config.general
  variants = tuple(config.variants)
  families = sorted({tinybert.VARIANTS[v].losses for v in variants
                     if tinybert.VARIANTS[v].general})
  augmented = a.examples or len(train.lengths)

  def estimate(timing):
    def run_seconds(variant):
      spec = tinybert.VARIANTS[variant]
      steps = t.prediction_steps + (0 if spec.intermediate else t.intermediate_steps)
      inner = t.intermediate_steps * timing[f'{spec.losses}_step'] if spec.intermediate else 0.0
      last = timing['prediction_step' if spec.distill_prediction else 'labels_step']
      return inner + steps * last + steps // t.eval_every * timing['validation_scoring']

    train_examples = len(train.lengths) + augmented * a.num_augmented
    return {
        'teacher': config.teacher.steps * timing['teacher_step'],
        'mlm_head': a.mlm_steps * timing['mlm_step'],
        'augmentation': augmented * timing['candidates_per_example'],
        'teacher_logits': (train_examples + len(train.lengths))
                          * timing['teacher_logits_per_example'],
        'general': sum(g.steps * timing[f'{f}_step'] for f in families),
        'selection': len(t.learning_rate_grid) * run_seconds('tinybert'),
        'seeds': len(config.seeds) * sum(run_seconds(v) for v in variants),
    }

  wall, cpu = estimate(timed), estimate(CPU)
  record = {
      'config': config.scale, 'setup_seconds': setup, 'step_seconds': timed,
      'step_cpu_seconds': CPU,
      'estimate_seconds': wall, 'estimate_total_minutes': sum(wall.values()) / 60,
      # CPU seconds over the 2 cores: the wall time of a quiet 2-core machine if the
      # steps used both cores fully (an optimistic bound; CPU seconds alone is the other).
      'estimate_cpu_minutes': sum(cpu.values()) / 60,
      'load_average_before': list(load_before), 'load_average_after': list(os.getloadavg()),
      'cpus': os.cpu_count(),
  }
  print(json.dumps(record, indent=1))
  return record


if __name__ == '__main__':
  main()
