"""Sizes the font-glyph benchmark: does a zoo teacher clearly beat a zoo student, and how fast?

Trains a teacher and a student with labels only on ``font_glyphs`` (built
by ``python -m kdjax.data.fonts --out DATA_DIR``), with the CIFAR KD
benchmark's recipe (``experiments/configs/cifar_kd.py:cpu``: SGD with
momentum 0.9, learning rate 0.05 decayed at 62.5/75/87.5 % of the epochs,
weight decay 5e-4, batch 64, random crop after padding; no flips, glyphs
are not mirror-symmetric), on the first ``--train`` training images, and
reports validation accuracy after each epoch, the wall and CPU seconds each
epoch took (the first includes compilation) and, for the budget, one epoch of the KD
step (the student's step plus the teacher's forward pass). The test split is
never read. Prints one JSON line per run and a summary; writes nothing else.

Run (not in CI; minutes per model on 2 shared cores; run it under ``nice``
and record ``uptime``)::

    python -m experiments.font_glyphs_sizing --data-dir DATA_DIR \\
        --teacher resnet20 --student CifarResNet:8:8,8,16,32 --train 20000 --epochs 8

A model is a name of ``kdjax.zoo.CIFAR_MODELS`` or ``CifarResNet:<depth>:<widths>``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import os
import time

import jax
import ml_collections

from experiments import cifar_kd
from experiments import font_kd
from experiments.configs import cifar_kd as cifar_kd_configs


def model_spec(text: str) -> ml_collections.ConfigDict:
  """``'resnet20'`` or ``'CifarResNet:8:8,8,16,32'`` as the config's model spec."""
  name, _, rest = text.partition(':')
  if name != 'CifarResNet':
    return ml_collections.ConfigDict({'name': name, 'depth': 0, 'widths': ()})
  depth, _, widths = rest.partition(':')
  return ml_collections.ConfigDict({
      'name': name, 'depth': int(depth), 'widths': tuple(int(w) for w in widths.split(','))})


def make_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
  c = cifar_kd_configs.get_config('cpu')
  c.progress = False
  c.data.name = 'font_glyphs'
  c.data.data_dir = args.data_dir
  c.data.train_split = f'train[:{args.train}]'
  c.data.val_split = f'validation[:{args.validation}]'
  c.data.test_split = c.data.val_split  # never scored: the evaluations read validation only
  c.data.crop_padding = args.crop_padding
  c.data.flip = False
  c.conv_impl = args.conv_impl
  c.data.normalize = args.normalize
  teacher, student = model_spec(args.teacher), model_spec(args.student)
  teacher.train, student.train = c.teacher.train, c.student.train
  c.teacher, c.student = teacher, student
  c.teacher.train.epochs = c.student.train.epochs = args.epochs
  if args.learning_rate:
    c.teacher.train.learning_rate = c.student.train.learning_rate = args.learning_rate
  c.teacher.train.warmup_epochs = c.student.train.warmup_epochs = args.warmup_epochs
  return c


def run_epochs(trainer, arrays, *, epochs: int, seed: int, teacher_variables, evaluate_fn,
               name: str):
  """Trains `epochs` epochs; returns the state and per-epoch seconds and validation accuracy."""
  state = trainer.init(jax.random.PRNGKey(seed))
  history = []
  for epoch in range(epochs):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, _ = trainer.epoch_fn(state, teacher_variables, arrays,
                                jax.random.fold_in(jax.random.PRNGKey(seed), epoch))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    # CPU seconds of this process: less sensitive to other jobs than wall time.
    history.append({'epoch': epoch + 1, 'seconds': round(seconds, 2),
                    'cpu_seconds': round(time.process_time() - cpu_start, 2),
                    'val_accuracy': round(float(evaluate_fn(state)['val/acc/student']), 4)})
    print(json.dumps({'run': name, **history[-1], 'load_average': os.getloadavg()[0]}),
          flush=True)
  return state, history


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data-dir', required=True)
  parser.add_argument('--teacher', default='resnet20')
  parser.add_argument('--student', default='CifarResNet:8:8,8,16,32')
  parser.add_argument('--train', type=int, default=20000)
  parser.add_argument('--validation', type=int, default=5000)
  parser.add_argument('--epochs', type=int, default=8)
  parser.add_argument('--crop-padding', type=int, default=2)
  parser.add_argument('--seed', type=int, default=100, help='not a seed of any reported run')
  parser.add_argument('--conv-impl', default='im2col', choices=('im2col', 'lax'),
                      help="kdjax.zoo.conv2d's implementation; im2col is about 3x faster here")
  parser.add_argument('--learning-rate', type=float, default=0.0,
                      help="both models' peak learning rate (0: the CIFAR recipe's 0.05)")
  parser.add_argument('--normalize', default='per_channel', choices=cifar_kd.NORMALIZATIONS,
                      help="the models' input standardisation (cifar_kd.make_normalize)")
  parser.add_argument('--warmup-epochs', type=float, default=0.0,
                      help='linear learning-rate warm-up over this many epochs')
  parser.add_argument('--image-size', type=int, default=32,
                      help='downsample to this size by averaging blocks (font_kd.downsample)')
  args = parser.parse_args(argv)
  config = make_config(args)
  arrays, num_classes = cifar_kd.load_arrays(config)
  if args.image_size != arrays['train']['x'].shape[1]:
    for split in arrays.values():
      split['x'] = font_kd.downsample(split['x'], args.image_size)
  experiment = cifar_kd.Experiment(config, arrays, num_classes)
  experiment.evals = {'val': arrays['val']}
  report = {'args': vars(args), 'load_average_start': os.getloadavg()}

  teacher = experiment.teacher_trainer()
  teacher_state, report['teacher'] = run_epochs(
      teacher, arrays['train'], epochs=args.epochs, seed=args.seed, teacher_variables=None,
      evaluate_fn=teacher.evaluate, name='teacher')
  print(json.dumps({'teacher': args.teacher, 'history': report['teacher']}), flush=True)
  student = experiment.method_trainers('vanilla')[0]
  _, report['student'] = run_epochs(
      student, arrays['train'], epochs=args.epochs, seed=args.seed, teacher_variables=None,
      evaluate_fn=student.evaluate, name='student')
  print(json.dumps({'student': args.student, 'history': report['student']}), flush=True)
  kd = experiment.method_trainers('kd')[0]
  _, report['kd_two_epochs'] = run_epochs(
      kd, arrays['train'], epochs=2, seed=args.seed, teacher_variables=teacher_state.variables,
      evaluate_fn=kd.evaluate, name='kd')
  report['load_average_end'] = os.getloadavg()
  gap = report['teacher'][-1]['val_accuracy'] - report['student'][-1]['val_accuracy']
  report['gap_points'] = round(100 * gap, 2)
  print(json.dumps({k: report[k] for k in ('gap_points', 'kd_two_epochs', 'load_average_start',
                                           'load_average_end')}), flush=True)
  return report


if __name__ == '__main__':
  main()
