"""Hinton et al. (2015) in the paper's regime on the larger MNIST-1D, with honest selection.

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural
Network", https://arxiv.org/abs/1503.02531. Run::

    python -m experiments.hinton_large --config=experiments/configs/hinton_large.py:cpu \\
        --workdir=runs/hinton_large

(the config's docstring says what each arm does and what it costs). The
order of work:

1. Selection, on the validation split of ``config.selection_seeds`` only
   (the test split is not even read): the teacher's recipe; then for each
   arm the labels-only student's width and learning rate, the distilled
   student's temperature and soft weight (at that width and learning rate)
   and its learning rate (over the baseline's learning-rate values), and
   the bias added to the omitted class's logit. Every run is recorded with
   its validation accuracy (:func:`grid_search`).
2. The reported seeds (``config.seeds``): a teacher per seed (early stopping
   on validation), then per arm the labels-only, distilled and
   omitted-class students with the selected recipes. Nothing is evaluated
   on the test split during training.
3. The test split is read, and every reported model is scored on it once.
4. Per-seed tables and a verdict per claim (:func:`verdicts`, judged by
   :func:`experiments._common.judge`).

Writes ``<workdir>/results.json`` (with provenance) and prints the tables;
every run has its own directory (metrics, checkpoints) and resumes from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import itertools
import json
import math
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import _common
from experiments import hinton
from experiments.configs import hinton_large as configs
from kdjax import checkpoint
from kdjax import data as data_lib

MODULE = 'experiments.hinton_large'
METRIC = 'val/acc/student'
ARMS = ('paper', 'jittered')
# How an axis is widened past an edge: geometric steps ('log', 'int_log')
# or steps on the logit scale ('logit', for weights in (0, 1)); an axis
# not listed ('linear') steps by its edge spacing.
AXIS_SCALES = {'teacher_learning_rate': 'log', 'width': 'int_log', 'learning_rate': 'log',
               'temperature': 'log', 'soft_weight': 'logit', 'teacher_dropout': 'linear'}


# ----------------------------------------------------------------------------
# Selection on validation.


def _check_metric(metric: str) -> None:
  if not metric.startswith('val/'):
    raise ValueError(f"metric must be a validation metric ('val/...'), got {metric!r}: "
                     'selection never looks at another split')


def widen(values: Sequence[float], side: str, scale: str,
          limits: tuple[float, float] | None = None) -> float | None:
  """The next value past the `side` ('low' or 'high') edge of sorted `values`.

  One more step of the edge's own spacing, on the axis' `scale`; a step
  that leaves `limits` stops at the limit. None if the axis has fewer than
  two values or the edge already is the limit.
  """
  if len(values) < 2:
    return None
  if side not in ('low', 'high'):
    raise ValueError(f"side must be 'low' or 'high', got {side!r}")
  a, b = (values[1], values[0]) if side == 'low' else (values[-2], values[-1])
  if scale in ('log', 'int_log'):
    new = b * b / a
    if scale == 'int_log':
      new = float(round(new))
  elif scale == 'logit':
    logit = lambda p: math.log(p / (1 - p))
    z = 2 * logit(b) - logit(a)
    new = 1 / (1 + math.exp(-z))
  elif scale == 'linear':
    new = 2 * b - a
  else:
    raise ValueError(f"scale must be 'log', 'int_log', 'logit' or 'linear', got {scale!r}")
  if limits is not None:
    limit = limits[0] if side == 'low' else limits[1]
    beyond = (lambda v: v < limit) if side == 'low' else (lambda v: v > limit)
    if not beyond(b) and b != limit and beyond(new):
      return float(limit)  # the step overshoots: the limit itself is the next value
    if not limits[0] <= new <= limits[1]:
      return None
  return new


def grid_search(axes: Mapping[str, Sequence[float]], run: Callable[[dict], Mapping[str, float]],
                *, metric: str = METRIC, fixed: Mapping[str, float] | None = None,
                scales: Mapping[str, str] | None = None,
                limits: Mapping[str, tuple[float, float]] | None = None,
                max_widen: int = 2) -> dict:
  """Runs the full grid over `axes`, then widens every axis whose best value is an edge.

  The best point is the one with the highest `metric` (a validation metric;
  the first in run order on ties). While the best point's value of an axis
  (with at least two values) is that axis' lowest or highest, one value
  past that edge (:func:`widen`) is run along the line through the best
  point, at most `max_widen` times per axis.

  Args:
    axes: the values of each axis.
    run: ``run(point) -> metrics``, `point` holding `fixed` and one value of
      each axis; the metrics must hold `metric`. Only `metric` is read.
    metric: what is maximised; must be a ``'val/'`` metric.
    fixed: values held fixed, passed to `run` and recorded.
    scales: per axis, how to widen (:data:`AXIS_SCALES` by default).
    limits: per axis, the (low, high) range a widened value must stay in.
    max_widen: extra values per axis at most.

  Returns:
    ``{'axes', 'fixed', 'metric', 'runs': [{'hparams', 'val'}...], 'best',
    'best_val', 'on_edge': {axis: 'low' | 'high' | None}, 'widened'}``;
    `on_edge` says where the choice still sits on an edge (widening ran out
    or hit a limit).
  """
  _check_metric(metric)
  fixed = dict(fixed or {})
  scales = {**AXIS_SCALES, **(scales or {})}
  limits = dict(limits or {})
  values = {name: sorted(float(v) for v in axis) for name, axis in axes.items()}
  runs: list[dict] = []
  done: dict[tuple, dict] = {}

  def run_point(point):
    key = tuple(sorted(point.items()))
    if key in done:
      return
    metrics = run({**fixed, **point})
    if metric not in metrics:
      raise KeyError(f'run({point}) returned no {metric!r}: {sorted(metrics)}')
    record = {'hparams': dict(point), 'val': {metric: float(metrics[metric])}}
    done[key] = record
    runs.append(record)

  names = list(values)
  for combo in itertools.product(*(values[n] for n in names)):
    run_point(dict(zip(names, combo)))

  def best_run():
    return max(runs, key=lambda r: r['val'][metric])

  def edge(name, value):
    axis = values[name]
    if len(axis) < 2:
      return None
    return 'low' if value == axis[0] else 'high' if value == axis[-1] else None

  widened = {name: 0 for name in names}
  while True:
    best = best_run()['hparams']
    moved = False
    for name in names:
      side = edge(name, best[name])
      if side is None or widened[name] >= max_widen:
        continue
      new = widen(values[name], side, scales.get(name, 'linear'), limits.get(name))
      if new is None or new in values[name]:
        continue
      values[name] = sorted(values[name] + [new])
      widened[name] += 1
      run_point({**best, name: new})
      moved = True
      break  # the best point may have moved
    if not moved:
      break
  best = best_run()
  return {
      'axes': values, 'fixed': fixed, 'metric': metric, 'runs': runs,
      'best': best['hparams'], 'best_val': best['val'][metric],
      'on_edge': {name: edge(name, best['hparams'][name]) for name in names},
      'widened': widened,
  }


def choose_bias(val_logits: Sequence[np.ndarray], val_labels: np.ndarray, label: int,
                grid: Sequence[float]) -> dict:
  """The omitted class's bias increment with the best mean validation accuracy.

  `val_logits` holds one ``[n, classes]`` array per selection model (all on
  the same validation inputs, labels `val_labels`); the increment
  maximising their mean validation accuracy is chosen (the first on ties).
  """
  scores = [float(np.mean([hinton.class_accuracy(l, val_labels, label, d)['acc']
                           for l in val_logits])) for d in grid]
  i = int(np.argmax(scores))
  return {'bias': float(grid[i]), 'val_acc': scores[i],
          'grid': [float(d) for d in grid], 'val_acc_by_bias': scores,
          'on_edge': i in (0, len(grid) - 1)}


# ----------------------------------------------------------------------------
# Training.


class _BestOnValidation:
  """An evaluate_fn that keeps (on the host) the variables of the best validation epoch."""

  def __init__(self, evaluate):
    self.evaluate = evaluate
    self.best = None
    self.curve = []

  def __call__(self, state):
    metrics = self.evaluate(state)
    acc, step = float(metrics[METRIC]), int(jax.device_get(state.step))
    self.curve.append([step, acc])
    if self.best is None or acc > self.best['val_acc']:
      self.best = {'val_acc': acc, 'step': step, 'variables': jax.device_get(state.variables)}
    return metrics


def load_split(config: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
  """One split as arrays {'x', 'label'}."""
  source = data_lib.load_source(config.data.name, split, data_dir=config.data.data_dir or None)
  batches = list(data_lib.iterate_once(source, batch_size=512))
  merged = {k: np.concatenate([b[k] for b in batches]) for k in ('x', 'label', 'mask')}
  keep = merged.pop('mask')
  return {k: v[keep] for k, v in merged.items()}


class Experiment:
  """Data, models and compiled functions shared by every run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self.train = load_split(config, config.data.train_split)
    self.val = load_split(config, config.data.val_split)
    self.num_classes = int(max(self.train['label'].max(), self.val['label'].max())) + 1
    keep = self.train['label'] != config.omitted.label
    self.transfer = {k: v[keep] for k, v in self.train.items()}
    self.jitter = hinton.make_jitter(**config.data.jitter)
    self._shared: dict[Any, hinton.Trainer] = {}
    self._teachers: dict[tuple, dict] = {}

  # -- recipes

  def teacher_config(self, hparams: Mapping[str, float]) -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict(self.config.teacher.to_dict())
    t.dropout = float(hparams['teacher_dropout'])
    t.learning_rate = float(hparams['teacher_learning_rate'])
    return t

  def student_config(self, width: int, arm: str) -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict(self.config.student.to_dict())
    s.hidden_sizes = (int(width),) * s.num_layers
    s.jitter = arm == 'jittered'
    return s

  def _trainer(self, model_config, optim, objective, teacher_apply, num_train):
    model = hinton.make_model(model_config, self.num_classes)
    # Trainers of one model share its compiled apply, eval and init.
    model_key = (model_config.kind, tuple(model_config.hidden_sizes), model_config.dropout,
                 model_config.input_dropout)
    shared = self._shared.get(model_key)
    trainer = hinton.Trainer(model_config, optim, model, objective, num_train=num_train,
                             jitter=self.jitter, teacher_apply=teacher_apply,
                             evals={'val': self.val}, progress=self.config.progress,
                             shared=shared)
    self._shared.setdefault(model_key, trainer)
    return trainer

  def _dir(self, *parts) -> str:
    return os.path.join(self.workdir, *parts)

  # -- teacher

  def teacher(self, hparams: Mapping[str, float], seed: int, stage: str) -> dict:
    """Trains (or reads back) a teacher; keeps its best validation epoch."""
    key = (tuple(sorted(hparams.items())), seed)
    if key in self._teachers:
      return self._teachers[key]
    t = self.teacher_config(hparams)
    trainer = self._trainer(t, t, hinton.label_objective(), None, len(self.train['label']))
    trainer.eval_every = t.eval_every
    workdir = self._dir(stage, 'teacher', hinton_sweep_name(hparams), f'seed{seed}')
    best_dir, record_path = os.path.join(workdir, 'best'), os.path.join(workdir, 'best.json')
    if os.path.exists(record_path):
      with open(record_path, encoding='utf-8') as f:
        record = json.load(f)
      target = trainer.init(jax.random.PRNGKey(seed)).variables
      variables = checkpoint.load_teacher(best_dir, target)
    else:
      keeper = _BestOnValidation(trainer.evaluate)
      trainer.evaluate = keeper
      trainer.final_evaluate = keeper.evaluate
      trainer.train(self.train, seed=seed, teacher_variables=None, workdir=workdir,
                    desc=f'{stage} teacher {hinton_sweep_name(hparams)} s{seed}',
                    config=_common.run_config(self.config, phase='teacher', stage=stage,
                                              hparams=dict(hparams)))
      if keeper.best is None:
        raise RuntimeError(f'{workdir}: the teacher finished without a validation record; '
                           'delete the directory and rerun')
      variables = keeper.best.pop('variables')
      checkpoint.save_teacher(best_dir, variables, overwrite=True)
      record = {**keeper.best, 'curve': keeper.curve, 'epochs': t.epochs}
      with open(record_path + '.tmp', 'w', encoding='utf-8') as f:
        json.dump(record, f)
      os.replace(record_path + '.tmp', record_path)
    out = {'variables': variables, 'trainer': trainer, 'record': record,
           'val': {METRIC: record['val_acc']}, 'name': hinton_sweep_name(hparams)}
    self._teachers[key] = out
    return out

  # -- students

  def student(self, *, arm: str, phase: str, hparams: Mapping[str, float], seed: int,
              teacher: dict | None, stage: str):
    """One student run; returns (final variables, trainer, final validation metrics)."""
    s = self.student_config(hparams['width'], arm)
    optim = ml_collections.ConfigDict({'learning_rate': float(hparams['learning_rate']),
                                       'weight_decay': self.config.student.weight_decay})
    if phase == 'baseline':
      objective, teacher_apply, teacher_variables = hinton.label_objective(), None, None
    else:
      kd = ml_collections.ConfigDict({'temperature': float(hparams['temperature']),
                                      'soft_weight': float(hparams['soft_weight'])})
      objective = hinton.kd_objective(kd)
      teacher_apply, teacher_variables = teacher['trainer'].apply, teacher['variables']
    data = self.transfer if phase == 'omitted' else self.train
    trainer = self._trainer(s, optim, objective, teacher_apply, len(data['label']))
    name = hinton_sweep_name(hparams)
    # A distilled run belongs to its teacher's recipe: another teacher is
    # another run (directory and checkpoint identity).
    teacher_name = teacher['name'] if teacher_variables is not None else None
    parts = (stage, arm, phase, name) + ((f'teacher_{teacher_name}',) if teacher_name else ())
    start = time.time()
    state, metrics = trainer.train(
        data, seed=seed + 1000, teacher_variables=teacher_variables,
        workdir=self._dir(*parts, f'seed{seed}'),
        desc=f'{stage} {arm} {phase} {name} s{seed}',
        config=_common.run_config(self.config, phase=phase, arm=arm, stage=stage,
                                  hparams=dict(hparams), **(
                                      {'teacher': teacher_name} if teacher_variables is not None
                                      else {})))
    print(f'{stage} {arm} {phase} {name} seed {seed}: val acc {100 * metrics[METRIC]:.2f} % '
          f'({time.time() - start:.0f} s)', flush=True)
    return state.variables, trainer, metrics


def hinton_sweep_name(hparams: Mapping[str, float]) -> str:
  return '_'.join(f'{k}={v:g}' for k, v in sorted(hparams.items()))


def _mean_over(seeds, fn) -> dict[str, float]:
  return {METRIC: float(np.mean([fn(seed)[METRIC] for seed in seeds]))}


def select(exp: Experiment) -> dict:
  """Every choice, on the validation split of the selection seeds."""
  config = exp.config
  seeds = config.selection_seeds
  limits = {k: tuple(v) for k, v in config.limits.items()}
  search = dict(limits=limits, max_widen=config.max_widen)

  teacher_search = grid_search(
      {'teacher_dropout': config.grid.teacher_dropout,
       'teacher_learning_rate': config.grid.teacher_learning_rate},
      lambda p: _mean_over(seeds, lambda s: exp.teacher(p, s, 'selection')['val']), **search)
  teacher_hparams = teacher_search['best']
  teachers = {s: exp.teacher(teacher_hparams, s, 'selection') for s in seeds}
  teacher_search['best_epoch'] = {str(s): teachers[s]['record']['step'] for s in seeds}

  arms = {}
  for arm in ARMS:
    def student_val(phase, point, arm=arm):
      return _mean_over(seeds, lambda s: exp.student(
          arm=arm, phase=phase, hparams=point, seed=s, teacher=teachers[s],
          stage='selection')[2])

    baseline = grid_search({'width': config.grid.width,
                            'learning_rate': config.grid.learning_rate},
                           lambda p: student_val('baseline', p), **search)
    width, base_lr = baseline['best']['width'], baseline['best']['learning_rate']
    kd = grid_search({'temperature': config.grid.temperature,
                      'soft_weight': config.grid.soft_weight},
                     lambda p: student_val('distilled', p),
                     fixed={'width': width, 'learning_rate': base_lr}, **search)
    kd_lr = grid_search({'learning_rate': config.grid.learning_rate},
                        lambda p: student_val('distilled', p),
                        fixed={'width': width, **kd['best']}, **search)
    distilled = {**kd_lr['fixed'], **kd_lr['best']}
    # The omitted-class student: the distilled recipe on the transfer set
    # without the label; its bias increment is chosen on validation.
    val_logits = []
    for s in seeds:
      variables, trainer, _ = exp.student(arm=arm, phase='omitted', hparams=distilled, seed=s,
                                          teacher=teachers[s], stage='selection')
      val_logits.append(np.asarray(trainer.logits(variables, exp.val['x'])))
    bias = choose_bias(val_logits, exp.val['label'], config.omitted.label,
                       config.omitted.bias_grid)
    arms[arm] = {
        'baseline': baseline, 'distilled': kd, 'distilled_lr': kd_lr, 'omitted_bias': bias,
        'chosen': {'baseline': {'width': width, 'learning_rate': base_lr},
                   'distilled': distilled, 'bias': bias['bias']},
    }
  return {'seeds': list(seeds), 'metric': METRIC, 'teacher': teacher_search,
          'teacher_hparams': teacher_hparams, 'arms': arms}


# ----------------------------------------------------------------------------
# Reported seeds.


def run_reported(exp: Experiment, selection: dict) -> list[dict]:
  """Trains the reported seeds' models; returns their variables and validation metrics.

  The test split is not read here.
  """
  config = exp.config
  trained = []
  for seed in config.seeds:
    teacher = exp.teacher(selection['teacher_hparams'], seed, 'reported')
    entry = {'seed': seed, 'teacher': teacher, 'arms': {}}
    for arm in ARMS:
      chosen = selection['arms'][arm]['chosen']
      entry['arms'][arm] = {
          phase: exp.student(arm=arm, phase=phase, seed=seed, teacher=teacher, stage='reported',
                             hparams=chosen['baseline'] if phase == 'baseline'
                             else chosen['distilled'])
          for phase in ('baseline', 'distilled', 'omitted')
      }
    trained.append(entry)
  return trained


def score_test(exp: Experiment, selection: dict, trained: list[dict]) -> tuple[list[dict], dict]:
  """Reads the test split and scores every reported model on it, once."""
  config = exp.config
  test = load_split(config, config.data.test_split)
  label = config.omitted.label
  per_seed = []

  def acc(logits, labels):
    return float(np.mean(np.asarray(logits).argmax(-1) == labels))

  for entry in trained:
    teacher = entry['teacher']
    t_test = np.asarray(teacher['trainer'].logits(teacher['variables'], test['x']))
    record = {'seed': entry['seed'],
              'teacher': {'val_acc': teacher['record']['val_acc'], 'test_acc': acc(t_test, test['label']),
                          'best_step': teacher['record']['step'],
                          'last_step': teacher['record']['curve'][-1][0],
                          'test_acc_on_label': hinton.class_accuracy(
                              t_test, test['label'], label)['acc_on_label']},
              'arms': {}}
    for arm, runs in entry['arms'].items():
      out = {}
      for phase in ('baseline', 'distilled'):
        variables, trainer, val = runs[phase]
        logits = np.asarray(trainer.logits(variables, test['x']))
        out[phase] = {'val_acc': val[METRIC], 'test_acc': acc(logits, test['label'])}
      variables, trainer, val = runs['omitted']
      test_logits = np.asarray(trainer.logits(variables, test['x']))
      val_logits = np.asarray(trainer.logits(variables, exp.val['x']))
      own = choose_bias([val_logits], exp.val['label'], label, config.omitted.bias_grid)['bias']
      selected = selection['arms'][arm]['chosen']['bias']
      out['omitted'] = {
          'val_acc': val[METRIC],
          'before': hinton.class_accuracy(test_logits, test['label'], label, 0.0),
          'after_selected_bias': hinton.class_accuracy(test_logits, test['label'], label, selected),
          'own_val_bias': own,
          'after_own_val_bias': hinton.class_accuracy(test_logits, test['label'], label, own),
      }
      record['arms'][arm] = out
    per_seed.append(record)
  counts = {'num_test': int(len(test['label'])),
            'test_examples_of_label': int(np.sum(test['label'] == label))}
  return per_seed, counts


def verdicts(per_seed: Sequence[dict]) -> dict:
  """The paper's claims, per arm: ``{arm: {key: _common.claim record}}`` from the per-seed test numbers.

  A claim whose quantity is undefined on some seed (the gap recovered where
  a seed's teacher ties its labels-only student) is left out.
  """
  out = {}
  for arm in per_seed[0]['arms']:
    teacher = np.array([r['teacher']['test_acc'] for r in per_seed])
    base = np.array([r['arms'][arm]['baseline']['test_acc'] for r in per_seed])
    dist = np.array([r['arms'][arm]['distilled']['test_acc'] for r in per_seed])
    on_label = [r['arms'][arm]['omitted']['after_selected_bias']['acc_on_label'] for r in per_seed]
    gap = teacher - base
    quantities = {
        'kd_beats_labels': (dist, base, 0.0),
        'most_of_gap_recovered': ((dist - base) / gap, None, 0.5) if np.all(gap != 0) else None,
        'omitted_class_recognised': (on_label, None, 0.5),
        'teacher_beats_student': (teacher, base, 0.0),
    }
    out[arm] = {}
    for key, text, measure, scale in CLAIMS:
      if quantities[key] is not None:
        values, baseline, threshold = quantities[key]
        out[arm][key] = _common.claim(f'{arm}: {text}; measured: {measure}', values, baseline,
                                      threshold=threshold, scale=scale)
  return out


def claims(results: Mapping[str, Any]) -> list[dict]:
  """Every arm's claims, judged now from the recorded per-seed numbers."""
  return [c for arm in verdicts(results['per_seed']).values() for c in arm.values()]


def run(config: ml_collections.ConfigDict, workdir: str,
        command: Sequence[str] | None = None) -> dict:
  """Selection, reported seeds, test scoring, verdicts; writes and returns results.json's content."""
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  exp = Experiment(config, workdir)
  selection = select(exp)
  print(f'selection done in {time.time() - start:.0f} s', flush=True)
  trained = run_reported(exp, selection)
  per_seed, counts = score_test(exp, selection, trained)
  results = {
      'paper': 'Hinton, Vinyals & Dean (2015), Distilling the Knowledge in a Neural Network',
      'config': config.to_dict(),
      'num_train': int(len(exp.train['label'])),
      'num_val': int(len(exp.val['label'])),
      **counts,
      'selection': selection,
      'per_seed': per_seed,
      'verdicts': verdicts(per_seed),
      'wall_seconds': time.time() - start,
      'finished': time.time(),
  }
  return _common.write_results(results, workdir, config, command or _common.command(MODULE, None))


# ----------------------------------------------------------------------------
# Tables.

CLAIMS = (
    ('kd_beats_labels', 'the distilled student beats the labels-only student',
     'distilled − labels-only test accuracy (points)', 100),
    ('most_of_gap_recovered', 'distillation recovers most (> 50 %) of the teacher\'s gain',
     '(distilled − labels-only) / (teacher − labels-only) (%)', 100),
    ('omitted_class_recognised',
     'the omitted class is recognised (> 50 % of its test examples) after the bias correction',
     'test accuracy on the omitted class, bias chosen on the selection seeds (%)', 100),
    ('teacher_beats_student', 'the teacher beats the labels-only student (the gap to close)',
     'teacher − labels-only test accuracy (points)', 100),
)
ARM_TITLES = {
    'paper': "the paper's regime (clean inputs for both students, no dropout; the transfer set "
             'is the clean training set)',
    'jittered': 'the jittered arm (both students see freshly jittered inputs every step)',
}


def describe(results: dict) -> str:
  """What was trained and how it was chosen, from a run's record."""
  config, selection = results['config'], results['selection']
  t, st, jitter = config['teacher'], config['student'], config['data']['jitter']
  th = selection['teacher_hparams']
  arms = []
  for arm in ARMS:
    c = selection['arms'][arm]['chosen']
    d = c['distilled']
    arms.append(
        f"{arm}: labels-only student {st['num_layers']} × {c['baseline']['width']:g} units at "
        f"learning rate {c['baseline']['learning_rate']:g}; distilled student the same width, "
        f"T = {d['temperature']:g}, soft weight {d['soft_weight']:g} (times T²; hard labels "
        f"{1 - d['soft_weight']:g}), learning rate {d['learning_rate']:g}; omitted-class bias "
        f"+{c['bias']:g}")
  return (
      f"Hinton, Vinyals & Dean (2015), https://arxiv.org/abs/1503.02531. Data: "
      f"{config['data']['name']}: {results['num_train']} training examples "
      f"(`{config['data']['train_split']}`), {results['num_val']} validation examples "
      f"(`{config['data']['val_split']}`, where every choice was made), {results['num_test']} "
      f"test examples (`{config['data']['test_split']}`, read once after all training). "
      f"Teacher: a 1-D CNN ({'/'.join(str(w) for w in t['hidden_sizes'])} channels), dropout "
      f"{th['teacher_dropout']:g}, learning rate {th['teacher_learning_rate']:g}, jittered inputs "
      f"(circular shift up to {jitter['shift']}, scale ±{jitter['scale']}, noise "
      f"{jitter['noise']}), at most {t['epochs']} epochs, keeping its best validation epoch. "
      f"Students: MLPs, no dropout, no weight decay, {st['epochs']} epochs each (AdamW, cosine "
      f"decay, batch {st['batch_size']}); the baseline and the distilled student of a seed "
      f"start from the same weights. Selected on the validation split of seed(s) "
      f"{', '.join(str(s) for s in selection['seeds'])} (never reported): "
      + '; '.join(arms) + '.')


def _search_table(record: dict, titles: Mapping[str, str], num_val: int) -> list[str]:
  """One search's runs, the best in bold; then where the choice sits."""
  names = list(record['axes'])
  rows = []
  for r in sorted(record['runs'], key=lambda r: [r['hparams'][n] for n in names]):
    acc = r['val'][record['metric']]
    cells = [f"{r['hparams'][n]:g}" for n in names] + [f'{100 * acc:.2f}',
                                                        f'{num_val * (1 - acc):.0f}']
    if r['hparams'] == record['best']:
      cells = [f'**{c}**' for c in cells]
    rows.append(cells)
  lines = _common.markdown_table([titles.get(n, n) for n in names]
                                 + ['val accuracy (%)', f'val errors (of {num_val})'], rows)
  edges = [f'{titles.get(n, n)} on its {side} edge' for n, side in record['on_edge'].items() if side]
  widened = [f"{titles.get(n, n)} +{k}" for n, k in record['widened'].items() if k]
  note = 'Choice inside every searched range' if not edges else (
      'Choice still on an edge after widening: ' + ', '.join(edges))
  if widened:
    note += f" (widened: {', '.join(widened)})"
  fixed = ', '.join(f'{titles.get(k, k)} {v:g}' for k, v in record['fixed'].items())
  if fixed:
    note += f'; held fixed: {fixed}'
  return [*lines, '', note + '.', '']


TITLES = {'teacher_dropout': 'teacher dropout', 'teacher_learning_rate': 'teacher learning rate',
          'width': 'width', 'learning_rate': 'learning rate', 'temperature': 'T',
          'soft_weight': 'soft weight'}


def format_table(results: dict) -> str:
  """The per-seed tables, the verdicts, and the selection runs, in Markdown."""
  per_seed, selection = results['per_seed'], results['selection']
  num_val, num_test = results['num_val'], results['num_test']
  label = results['config']['omitted']['label']
  pct = lambda v: f'{100 * v:.2f}'
  lines = ['Teacher per reported seed (early stopping on validation):', '']
  rows = [[str(r['seed']), pct(r['teacher']['val_acc']),
           f"{r['teacher']['best_step']} of {r['teacher']['last_step']}",
           pct(r['teacher']['test_acc']), pct(r['teacher']['test_acc_on_label'])]
          for r in per_seed]
  lines += _common.markdown_table(['seed', 'val accuracy (%)', 'best step (of)',
                                   'test accuracy (%)', f'test accuracy on class {label} (%)'],
                                  rows)
  for arm in ARMS:
    lines += ['', f'Arm `{arm}`: {ARM_TITLES[arm]}. Test accuracy (%) per seed ({num_test} '
              f"test examples, {results['test_examples_of_label']} of class {label}):", '']
    rows = []
    for r in per_seed:
      a, t = r['arms'][arm], r['teacher']['test_acc']
      b, d, o = a['baseline']['test_acc'], a['distilled']['test_acc'], a['omitted']
      gap = f'{100 * (d - b) / (t - b):.0f}' if t != b else 'n/a'
      rows.append([str(r['seed']), pct(t), pct(b), pct(d), f'{100 * (d - b):+.2f}', gap,
                   pct(o['before']['acc_on_label']), pct(o['after_selected_bias']['acc_on_label']),
                   f"{pct(o['after_own_val_bias']['acc_on_label'])} (+{o['own_val_bias']:g})",
                   pct(o['after_selected_bias']['acc'])])
    lines += _common.markdown_table(
        ['seed', 'teacher', 'labels only', 'distilled', 'distilled − labels', 'gap recovered (%)',
         f'omitted: class {label} before', f'after bias +{selection["arms"][arm]["chosen"]["bias"]:g}',
         "after the seed's own val bias", 'omitted: overall after'], rows)
  lines += ['', 'For comparison, the paper on MNIST: teacher 67 test errors, small net 146, the '
            'small net distilled 74 (about 91 % of the gap recovered); with every 3 left out of '
            'the transfer set, 98.6 % of the test 3s right once the bias of class 3 was raised '
            '(by 3.5).']
  lines += ['', f"Selection runs (validation split, {num_val} examples, seed(s) "
            f"{', '.join(str(s) for s in selection['seeds'])}; the best of each search in bold; "
            'the test split was not read):', '', 'Teacher (best validation epoch of each run):',
            '', *_search_table(selection['teacher'], TITLES, num_val)]
  for arm in ARMS:
    rec = selection['arms'][arm]
    lines += [f'Arm `{arm}`, labels-only student:', '',
              *_search_table(rec['baseline'], TITLES, num_val),
              f'Arm `{arm}`, distilled student, temperature and soft weight:', '',
              *_search_table(rec['distilled'], TITLES, num_val),
              f'Arm `{arm}`, distilled student, learning rate:', '',
              *_search_table(rec['distilled_lr'], TITLES, num_val)]
    b = rec['omitted_bias']
    lines += [f"Arm `{arm}`, omitted class: bias +{b['bias']:g} chosen from "
              f"{b['grid'][0]:g}..{b['grid'][-1]:g} (validation accuracy "
              f"{100 * b['val_acc']:.2f} %{'; on the edge of the grid' if b['on_edge'] else ''}).",
              '']
  return '\n'.join(lines).rstrip()


def main(argv: Sequence[str] | None = None) -> None:
  _common.run_main(argv, module=MODULE, doc=__doc__, schema=configs.schema(), run=run,
                   report=format_table, claims=claims)


if __name__ == '__main__':
  main(sys.argv[1:])
