"""Hinton et al. (2015): the students' hyper-parameters, selected on validation.

Reruns the student part of the selection behind ``experiments/configs/hinton.py``
for one seed (``config.seeds[0]``), scoring every run by its final accuracy on
the validation split (``config.data.val_split``, the last 500 training
examples of MNIST-1D). The test split is never evaluated: every Trainer here
is given the validation arrays only, so neither ``results.json`` nor the
metric logs hold a test number.

Run ``python -m experiments.hinton_sweep --config=experiments/configs/hinton.py:cpu
--workdir=runs/hinton_sweep`` (about 4 minutes on 2 CPU cores; the usual
``--config.<key>=<value>`` overrides apply, e.g. ``--config.student.epochs=20``
for a quick run). The steps:

1. The teacher is trained once with the config's recipe (or resumed from
   ``<workdir>/teacher/seed<k>``).
2. Baseline grid: the label-only student over ``BASELINE_GRID``, learning
   rate x weight decay = {1e-3, 3e-3, 1e-2} x {0, 1e-3} (6 runs).
3. Distillation grid: the distilled student over ``DISTILL_GRID``,
   temperature x soft weight = {1, 2, 4, 8} x {0.5, 0.9} (8 runs), at the
   config's ``kd.learning_rate`` and ``kd.weight_decay``; then the learning
   rates in ``DISTILL_LEARNING_RATES`` = {3e-3, 1e-2} at the best (T, w) of
   that grid (the one not already run: 1 extra run for the cpu config).
4. Each grid's best run (highest validation accuracy; ties go to the first
   in grid order) is marked, and the config's choice is compared with it.

Every run has its own directory under the workdir (metrics, checkpoints) and
resumes from it, so a rerun retrains nothing. Writes ``<workdir>/results.json``
and prints the tables (:func:`format_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
import itertools
import os
import sys
import time

import ml_collections
import numpy as np

from experiments import _common
from experiments.configs import hinton as hinton_configs
from experiments import hinton

# The grids (constants, not config entries: the config holds the choice, this
# script checks it).
BASELINE_GRID = {'learning_rate': (1e-3, 3e-3, 1e-2), 'weight_decay': (0.0, 1e-3)}
DISTILL_GRID = {'temperature': (1.0, 2.0, 4.0, 8.0), 'soft_weight': (0.5, 0.9)}
DISTILL_LEARNING_RATES = (3e-3, 1e-2)

METRIC = 'val/acc/student'
MODULE = 'experiments.hinton_sweep'


def run_name(hparams: dict[str, float]) -> str:
  """A run's directory name, e.g. ``'learning_rate=0.003_weight_decay=0.001'``."""
  return '_'.join(f'{key}={value:g}' for key, value in hparams.items())


def _grid_points(grid: dict[str, Sequence[float]]) -> list[dict[str, float]]:
  keys = list(grid)
  return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def _best(runs: list[dict]) -> dict:
  """The run with the highest validation accuracy (the first one on ties)."""
  return max(runs, key=lambda run: run['val'][METRIC])


def _is_choice(run: dict, config_choice: dict[str, float]) -> bool:
  return all(run['hparams'].get(key) == value for key, value in config_choice.items())


def _selection(grid_name: str, runs: list[dict], config_choice: dict[str, float],
               fixed: dict[str, float]) -> dict:
  """One grid's record: its runs, its best run, and how the config's choice fares.

  Args:
    grid_name: what the grid varies, for the record.
    runs: ``{'name', 'hparams', 'val'}`` per run, in grid order.
    config_choice: the config's values of the grid's axes; a run is the
      config's choice if its `hparams` agree on these keys.
    fixed: the values held fixed across the grid, for the record.

  Returns:
    The record stored in ``results.json``.
  """
  best = _best(runs)
  chosen = [r for r in runs if _is_choice(r, config_choice)]
  record = {
      'grid': grid_name,
      'fixed': fixed,
      'runs': runs,
      'best': best['name'],
      'best_hparams': best['hparams'],
      'best_val_acc': best['val'][METRIC],
      'config_choice': config_choice,
  }
  if chosen:
    record['config_val_acc'] = chosen[0]['val'][METRIC]
    record['config_is_best'] = chosen[0]['name'] == best['name']
    record['config_ties_best'] = chosen[0]['val'][METRIC] >= best['val'][METRIC]
  else:  # the config's value is off the grid
    record['config_val_acc'] = None
    record['config_is_best'] = False
    record['config_ties_best'] = False
  return record


class _Sweep:
  """The shared pieces of every run: the data, the models, the teacher."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self.seed = config.seeds[0]
    arrays, num_classes = hinton.load_arrays(config)
    del arrays['test']  # selection must not see test
    self.train, self.val = arrays['train'], arrays['val']
    self.num_train = len(self.train['label'])
    self.jitter = hinton.make_jitter(**config.data.jitter)
    self.student = hinton.make_model(config.student, num_classes)
    self.teacher_model = hinton.make_model(config.teacher, num_classes)
    self.shared = None  # the first student Trainer; later ones reuse its eval functions
    self.teacher_trainer = None
    self.teacher_variables = None

  def _trainer(self, model_config, optim_config, model, objective, teacher_apply, shared):
    trainer = hinton.Trainer(model_config, optim_config, model, objective,
                             num_train=self.num_train, jitter=self.jitter,
                             teacher_apply=teacher_apply, evals={'val': self.val},
                             progress=self.config.progress, shared=shared)
    return trainer

  def train_teacher(self) -> dict[str, float]:
    """Trains (or resumes) the teacher; returns its validation metrics."""
    config = self.config
    trainer = self._trainer(config.teacher, config.teacher, self.teacher_model,
                            hinton.label_objective(), None, None)
    workdir = os.path.join(self.workdir, 'teacher', f'seed{self.seed}')
    self.teacher_variables, metrics = _common.train_teacher(
        trainer, self.train, seed=self.seed, workdir=workdir,
        config=_common.run_config(config, phase='teacher'))
    self.teacher_trainer = trainer
    return metrics

  def train_student(self, phase: str, hparams: dict[str, float]) -> dict:
    """One student run; `hparams` holds the optimizer's and (if 'distilled') the KD values."""
    start = time.time()
    optim = ml_collections.ConfigDict(
        {'learning_rate': hparams['learning_rate'], 'weight_decay': hparams['weight_decay']})
    if phase == 'baseline':
      objective, teacher_apply, teacher_variables = hinton.label_objective(), None, None
    else:
      kd = ml_collections.ConfigDict(
          {'temperature': hparams['temperature'], 'soft_weight': hparams['soft_weight']})
      objective = hinton.kd_objective(kd)
      teacher_apply, teacher_variables = self.teacher_trainer.apply, self.teacher_variables
    trainer = self._trainer(self.config.student, optim, self.student, objective, teacher_apply,
                            self.shared)
    if self.shared is None:
      self.shared = trainer
    name = run_name(hparams)
    _, metrics = trainer.train(
        self.train, seed=self.seed + 1000, teacher_variables=teacher_variables,
        workdir=os.path.join(self.workdir, phase, f'seed{self.seed}', name),
        desc=f'{phase} {name}',
        config=_common.run_config(self.config, phase=phase, hparams=dict(hparams)))
    if any(not key.startswith('val/') for key in metrics):
      raise AssertionError(f'non-validation metrics in a sweep run: {sorted(metrics)}')
    print(f'{phase} {name}: val acc {100 * metrics[METRIC]:.1f} % '
          f'({time.time() - start:.0f} s)', flush=True)
    return {'name': name, 'hparams': dict(hparams), 'val': metrics}


def run(config: ml_collections.ConfigDict, workdir: str,
        command: Sequence[str] | None = None) -> dict:
  """Runs the teacher and the three grids; writes and returns results.json's content.

  `command` is the command line recorded with the results (default: this
  process's).
  """
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  sweep = _Sweep(config, workdir)
  teacher_val = sweep.train_teacher()

  baseline_runs = [sweep.train_student('baseline', point)
                   for point in _grid_points(BASELINE_GRID)]
  baseline = _selection(
      'learning_rate x weight_decay', baseline_runs,
      {'learning_rate': config.baseline.learning_rate,
       'weight_decay': config.baseline.weight_decay}, {})

  kd_fixed = {'learning_rate': config.kd.learning_rate, 'weight_decay': config.kd.weight_decay}
  kd_runs = [sweep.train_student('distilled', {**point, **kd_fixed})
             for point in _grid_points(DISTILL_GRID)]
  config_kd = {'temperature': config.kd.temperature, 'soft_weight': config.kd.soft_weight}
  distilled = _selection('temperature x soft_weight', kd_runs, config_kd, kd_fixed)

  best_kd = {key: distilled['best_hparams'][key] for key in DISTILL_GRID}
  lr_runs = []
  for lr in sorted(set(DISTILL_LEARNING_RATES) | {config.kd.learning_rate}):
    hparams = {**best_kd, 'learning_rate': lr, 'weight_decay': config.kd.weight_decay}
    done = [r for r in kd_runs if r['hparams'] == hparams]
    if done:  # already run in the (T, w) grid
      lr_runs.append({key: done[0][key] for key in ('name', 'hparams', 'val')})
    else:
      lr_runs.append(sweep.train_student('distilled', hparams))
  distilled_lr = _selection(
      'learning_rate at the best (temperature, soft_weight)', lr_runs,
      {'learning_rate': config.kd.learning_rate},
      {**best_kd, 'weight_decay': config.kd.weight_decay})

  recorded = config.to_dict()
  recorded['seeds'] = [sweep.seed]  # the sweep runs one seed
  results = {
      'experiment': 'Hinton et al. (2015) student hyper-parameter selection on validation',
      'config': recorded,
      'seed': sweep.seed,
      'selection_metric': METRIC,
      'num_val': int(len(sweep.val['label'])),
      'teacher': {'val': teacher_val},
      'grids': {'baseline': baseline, 'distilled': distilled, 'distilled_lr': distilled_lr},
      'notes': (f"Validation accuracy ({METRIC}) of each run's final student, on the "
                f"{len(sweep.val['label'])} validation examples ({config.data.val_split}); "
                'the test split was not evaluated. Bold: the best run of its grid.'),
      'wall_seconds': time.time() - start,
      'finished': time.time(),
  }
  return _common.write_results(results, workdir, config,
                               command or _common.command(MODULE, None))


def _verdict(record: dict, keys: Sequence[str]) -> str:
  def values(hparams):
    return ', '.join(f'{key} = {hparams[key]:g}' for key in keys)

  chosen = values(record['config_choice'])
  best = f"{values(record['best_hparams'])} ({100 * record['best_val_acc']:.1f} %)"
  if record['config_val_acc'] is None:
    return f'config ({chosen}) not in this grid; best: {best}'
  if record['config_is_best']:
    return f"config's choice ({chosen}) is the best: {100 * record['config_val_acc']:.1f} %"
  if record['config_ties_best']:
    return (f"config's choice ({chosen}) ties the best ({best}) at "
            f"{100 * record['config_val_acc']:.1f} %")
  return (f"config's choice ({chosen}) is NOT the best: {100 * record['config_val_acc']:.1f} % "
          f"against {best}")


def format_table(results: dict) -> str:
  """Markdown tables of validation accuracy per run, the best of each grid in bold."""
  num_val = results['num_val']
  grids = results['grids']

  def cells(run, best_name):
    acc = run['val'][METRIC]
    text = [f'{100 * acc:.1f}', f'{num_val * (1 - acc):.0f}']
    return [f'**{t}**' for t in text] if run['name'] == best_name else text

  def grid_table(record, keys, titles):
    """The grid's runs: its axes' values (the config's marked), accuracy, errors."""
    rows = []
    for r in record['runs']:
      values = [f"{r['hparams'][key]:g}" for key in keys]
      if _is_choice(r, record['config_choice']):
        values[0] += ' (config)'
      rows.append(values + cells(r, record['best']))
    header = [*titles, 'val accuracy (%)', f'val errors (of {num_val})']
    return [*_common.markdown_table(header, rows), '', _verdict(record, keys) + '.', '']

  lines = [f"Teacher validation accuracy: {100 * results['teacher']['val'][METRIC]:.1f} %.", '']
  lines += ['Student on labels only:', '',
            *grid_table(grids['baseline'], ('learning_rate', 'weight_decay'),
                        ('learning rate', 'weight decay'))]
  d = grids['distilled']
  lines += [f"Distilled student, learning rate {d['fixed']['learning_rate']:g}, "
            f"weight decay {d['fixed']['weight_decay']:g}:", '',
            *grid_table(d, ('temperature', 'soft_weight'), ('temperature', 'soft weight'))]
  lr = grids['distilled_lr']
  lines += [f"Distilled student at the best temperature {lr['fixed']['temperature']:g} and "
            f"soft weight {lr['fixed']['soft_weight']:g}:", '',
            *grid_table(lr, ('learning_rate',), ('learning rate',))]
  # One validation error is 1/num_val; the binomial standard error of one
  # accuracy is what separates a real difference from the noise.
  acc = d['best_val_acc']
  se = np.sqrt(acc * (1 - acc) / num_val)
  lines.append(f'One seed, {num_val} validation examples: one error is {100 / num_val:.1f} %, '
               f'and the standard error of an accuracy near {100 * acc:.0f} % is about '
               f'{100 * se:.1f} %.')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  _common.run_main(argv, module=MODULE, doc=__doc__, schema=hinton_configs.schema(), run=run,
                   report=format_table)


if __name__ == '__main__':
  main(sys.argv[1:])
