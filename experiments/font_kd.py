"""The CIFAR KD methods on font glyphs, compared fairly, with per-seed tables and verdicts.

Run ``python -m experiments.font_kd --config=experiments/configs/font_kd.py:cpu
--workdir=runs/font_kd``; the config's docstring says what is compared with
what and why. The methods, models and recipes are ``experiments/cifar_kd.py``'s
(:class:`experiments.cifar_kd.Experiment`); this script adds the selection
runs (on a seed that is not reported), the baselines each claim needs, the
test split scored once after training, and verdicts from paired differences
over seeds (:func:`experiments._common.paired_difference`).

Writes ``results.json`` under the workdir (per-seed validation and test
accuracy of every run, the selections, the differences and verdicts) and
prints the tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import logging
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import _common
from experiments import cifar_kd
from experiments.configs import font_kd as font_kd_configs
from kdjax import explain
from kdjax import step as step_lib

MODULE = 'experiments.font_kd'
PAPER = ('The CIFAR-100 KD methods of RepDistiller (Tian, Krishnan & Isola 2020) and mdistiller '
         '(Zhao et al. 2022) on the font_glyphs benchmark')
# How describe() names each of cifar_kd.NORMALIZATIONS.
NORMALIZE_TEXT = {
    'per_channel': "per colour channel with the training set's statistics (the libraries' way)",
    'per_image': 'per image (each image to zero mean and unit variance)',
    'gray_per_image': ('in grey per image (the colours, random here, averaged out, then each '
                       'image to zero mean and unit variance)'),
}
# (claim, run, baseline[, threshold]): each verdict is on the per-seed test
# accuracy of run - baseline, claimed above the threshold (0 unless given).
CLAIMS = (
    ('the teacher beats the labels-only student by more than 5 points (the benchmark has '
     'room for KD)', 'teacher', 'vanilla', 0.05),
    ('KD beats labels only', 'kd', 'vanilla'),
    ('DKD beats KD', 'dkd', 'kd'),
    ('CRD beats KD', 'crd', 'kd'),
    ("FitNets' hints help a thin deep student", 'fitnets', 'thin_kd'),
    ('DML student 0 beats its independent peer', 'dml_0', 'independent_0'),
    ('DML student 1 beats its independent peer', 'dml_1', 'independent_1'),
    ('multi-teacher KD beats KD from the best single teacher', 'multi_teacher', 'kd_best'),
    ('AT beats labels only', 'at', 'vanilla'),
)
# The students of the main architecture whose Grad-CAM++ maps are compared with the teacher's.
SALIENCY_METHODS = ('vanilla', 'kd', 'at', 'dkd', 'crd')
PHASE_TITLES = {
    'teacher': 'teacher (A)',
    'teacher_b': 'teacher B (other architecture)',
    'vanilla': 'student, labels only',
    'kd': 'KD from teacher A',
    'kd_b': 'KD from teacher B',
    'kd_best': 'KD from the better teacher (on validation)',
    'at': 'AT, beta scaled by map area',
    'dkd': 'DKD, beta tuned',
    'crd': 'CRD',
    'multi_teacher': 'multi-teacher KD (A + B)',
    'dml_0': 'DML student 0',
    'dml_1': 'DML student 1',
    'independent_0': 'labels only, DML student 0\'s start',
    'independent_1': 'labels only, DML student 1\'s start',
    'fitnets': 'FitNets, thin deep student',
    'thin_kd': 'thin deep student, FitNets stage-2 KD only',
}


# ----------------------------------------------------------------------------
# Data.


def downsample(x: np.ndarray, size: int) -> np.ndarray:
  """``[n, H, W, C]`` -> ``[n, size, size, C]`` by averaging ``(H/size) x (W/size)`` blocks."""
  n, height, width, channels = x.shape
  if height % size or width % size:
    raise ValueError(f'image_size {size} must divide the images\' {height}x{width}')
  fh, fw = height // size, width // size
  return x.reshape(n, size, fh, size, fw, channels).mean(axis=(2, 4)).astype(x.dtype)


def load_arrays(config: ml_collections.ConfigDict):
  """cifar_kd's arrays, cut to ``num_train`` / ``num_val`` and downsampled."""
  arrays, num_classes = cifar_kd.load_arrays(config)
  limits = {'train': config.data.num_train, 'val': config.data.num_val, 'test': 0}
  out = {}
  for split, split_arrays in arrays.items():
    n = limits[split] or len(split_arrays['label'])
    cut = {k: v[:n] for k, v in split_arrays.items()}
    if cut['x'].shape[1] != config.data.image_size:
      cut['x'] = downsample(cut['x'], config.data.image_size)
    out[split] = cut
  out['train']['index'] = np.arange(len(out['train']['label']), dtype=np.int32)
  return out, num_classes


# ----------------------------------------------------------------------------
# Experiments.


class FontExperiment(cifar_kd.Experiment):
  """cifar_kd's Experiment, evaluating on validation only during training.

  The test split is scored once, by :meth:`score_test`, after a run.
  """

  def __init__(self, config, arrays, num_classes):
    super().__init__(config, arrays, num_classes)
    self.evals = {'val': arrays['val']}

  def score_test(self, evaluate, state) -> dict[str, float]:
    """``evaluate`` (an evaluate_fn of this experiment) on the test split alone."""
    saved = self.evals
    self.evals = {'test': self.arrays['test']}
    try:
      return evaluate(state)
    finally:
      self.evals = saved


def variant(config: ml_collections.ConfigDict, **changes: Any) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted keys (``'student.train.epochs'``) set."""
  c = ml_collections.ConfigDict(config.to_dict())
  for key, value in changes.items():
    *path, last = key.split('.')
    node = c
    for part in path:
      node = node[part]
    node[last] = value
  return c


def _accuracies(metrics: Mapping[str, float], suffix: str = '') -> dict[str, float]:
  return {split: float(metrics[f'{split}/acc/student{suffix}'])
          for split in ('val', 'test') if f'{split}/acc/student{suffix}' in metrics}


class Runner:
  """Trains and scores runs; each run is recorded under ``<workdir>/<phase>/seed<k>``."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir

  def train(self, experiment: FontExperiment, trainers, *, phase: str, seed: int,
            teacher_variables=None, state=None, evaluate=None):
    """Trains the trainers in turn (stages), scores the test split once; returns (state, metrics)."""
    for i, trainer in enumerate(trainers):
      stage = phase if len(trainers) == 1 else f'{phase}_stage{i + 1}'
      start = state
      if i > 0:  # a later stage starts from the previous stage's weights
        start = trainer.init(jax.random.PRNGKey(seed)).replace(
            params=state.params, model_state=state.model_state)
      state, metrics = trainer.train(
          experiment.arrays['train'], seed=seed, teacher_variables=teacher_variables,
          workdir=os.path.join(self.workdir, stage, f'seed{seed}'), desc=f'{stage} s{seed}',
          state=start, config=_common.run_config(self.config, phase=stage))
    test = experiment.score_test(evaluate or trainers[-1].evaluate, state)
    return state, {**metrics, **test}

  def teacher(self, experiment: FontExperiment, *, phase: str, seed: int):
    trainer = experiment.teacher_trainer()
    variables, metrics = _common.train_teacher(
        trainer, experiment.arrays['train'], seed=seed,
        workdir=os.path.join(self.workdir, phase, f'seed{seed}'),
        config=_common.run_config(self.config, phase=phase))
    state = step_lib.TrainState(step=0, params=variables['params'],
                                model_state={k: v for k, v in variables.items() if k != 'params'},
                                opt_state=None, rng=None)
    return variables, {**metrics, **experiment.score_test(trainer.evaluate, state)}


def _best_on_validation(config, base, arrays, num_classes, runner: Runner, *, method: str,
                        key: str, values, name: str, label: str, seed: int,
                        teacher_variables) -> tuple[float, dict[str, float]]:
  """Trains `method` once per value of the config entry `key` (on top of
  `base`) and returns the value with the best validation accuracy and every
  value's accuracy (keyed ``f'{value:g}'``)."""
  scores = {}
  for value in values:
    exp = FontExperiment(variant(base, **{key: value}), arrays, num_classes)
    trainer = exp.method_trainers(method)[0]
    _, metrics = trainer.train(
        exp.arrays['train'], seed=seed, teacher_variables=teacher_variables,
        workdir=os.path.join(runner.workdir, 'select', f'{name}{value:g}'),
        desc=f'select {label} {value:g}', config=_common.run_config(config, phase='select'))
    scores[f'{value:g}'] = float(metrics['val/acc/student'])
  return float(max(values, key=lambda v: scores[f'{v:g}'])), scores


def select(config, arrays, num_classes, runner: Runner) -> dict[str, Any]:
  """The student's learning rate (labels only), then DKD's beta, on validation, on select.seed."""
  s = config.select
  seed, student_seed = s.seed, s.seed + 1000
  record: dict[str, Any] = {'seed': seed, 'learning_rate': {}, 'dkd_beta': {}}
  if s.fixed_learning_rate:
    lr = s.fixed_learning_rate
  else:
    lr, record['learning_rate'] = _best_on_validation(
        config, config, arrays, num_classes, runner, method='vanilla',
        key='student.train.learning_rate', values=s.learning_rates, name='vanilla_lr',
        label='lr', seed=student_seed, teacher_variables=None)
  record['chosen_learning_rate'] = lr
  if s.fixed_dkd_beta or 'dkd' not in config.methods:
    beta = s.fixed_dkd_beta or config.dkd.beta
  else:
    base = variant(config, **{'student.train.learning_rate': lr})
    teacher_variables, _ = runner.teacher(FontExperiment(base, arrays, num_classes),
                                          phase='select/teacher', seed=seed)
    beta, record['dkd_beta'] = _best_on_validation(
        config, base, arrays, num_classes, runner, method='dkd', key='dkd.beta',
        values=s.dkd_betas, name='dkd_beta', label='dkd beta', seed=student_seed,
        teacher_variables=teacher_variables)
  record['chosen_dkd_beta'] = beta
  return record


def build(config, arrays, num_classes) -> dict[str, FontExperiment]:
  """The experiments: main (teacher A, the student), b (teacher B), thin FitNets and its baseline."""
  c = config
  stage1 = c.fitnets.stage1_epochs
  epochs = c.student.train.epochs
  if 'fitnets' in c.methods and not 0 < stage1 < epochs:
    raise ValueError(f'fitnets.stage1_epochs must be in (0, student.train.epochs = {epochs}) so '
                     f'that FitNets trains the same total epochs, got {stage1}')
  thin = {'student.name': c.thin_student.name, 'student.depth': c.thin_student.depth,
          'student.widths': tuple(c.thin_student.widths)}
  b = {'teacher.name': c.teacher_b.name, 'teacher.depth': c.teacher_b.depth,
       'teacher.widths': tuple(c.teacher_b.widths),
       'teacher.train': c.teacher_b.train.to_dict()}
  return {
      'main': FontExperiment(c, arrays, num_classes),
      'b': FontExperiment(variant(c, **b), arrays, num_classes),
      # FitNets: hint epochs + KD epochs = the student's epochs.
      'thin_fitnets': FontExperiment(variant(c, **thin, **{'student.train.epochs': epochs - stage1}),
                                     arrays, num_classes),
      'thin_kd': FontExperiment(variant(c, **thin), arrays, num_classes),
  }


def run_seed(config, experiments, runner: Runner, seed: int) -> tuple[dict, dict]:
  """Every run of one seed; returns ``{phase: {'val', 'test'}}`` and seconds per phase."""
  methods = set(config.methods)
  main, b = experiments['main'], experiments['b']
  out, seconds = {}, {}

  def timed(phase, fn):
    started = time.time()
    result = fn()
    seconds[phase] = time.time() - started
    return result

  teacher_a, out['teacher'] = timed('teacher', lambda: runner.teacher(main, phase='teacher',
                                                                      seed=seed))
  teacher_b = None
  if 'multi_teacher' in methods:
    teacher_b, out['teacher_b'] = timed('teacher_b', lambda: runner.teacher(
        b, phase='teacher_b', seed=seed + 100))
  student_seed = seed + 1000  # every student starts alike
  states = {}
  for method in SALIENCY_METHODS:
    if method in methods:
      states[method], out[method] = timed(method, lambda m=method: runner.train(
          main, main.method_trainers(m), phase=m, seed=student_seed,
          teacher_variables=None if m == 'vanilla' else teacher_a))
  if 'multi_teacher' in methods:
    _, out['kd_b'] = timed('kd_b', lambda: runner.train(
        b, b.method_trainers('kd'), phase='kd_b', seed=student_seed, teacher_variables=teacher_b))
    plain = main.student()
    step = step_lib.make_train_step(
        main.student_apply(plain), (main.teacher_apply, b.teacher_apply),
        cifar_kd.multi_teacher_objective(config.multi_teacher), main.student_optimizer)
    trainer = main._trainer(config.student.train, step,  # pylint: disable=protected-access
                            main.student_init(plain, main.student_optimizer),
                            main.evaluate_fn(plain))
    _, out['multi_teacher'] = timed('multi_teacher', lambda: runner.train(
        main, [trainer], phase='multi_teacher', seed=student_seed,
        teacher_variables=(teacher_a, teacher_b)))
    if 'kd' in out:
      best = 'kd' if out['kd']['val/acc/student'] >= out['kd_b']['val/acc/student'] else 'kd_b'
      out['kd_best'] = {**out[best], 'from': best}
  if 'dml' in methods:
    _, metrics = timed('dml', lambda: runner.train(main, main.method_trainers('dml'), phase='dml',
                                                   seed=student_seed))
    vanilla = main.method_trainers('vanilla')[0]
    for k in range(config.dml.num_students):
      out[f'dml_{k}'] = {f'{split}/acc/student': metrics[f'{split}/acc/student_{k}']
                         for split in ('val', 'test')}
      # DML's student k starts from fold_in(key, 100 + k) (cifar_kd's DML init).
      start = vanilla.init(jax.random.fold_in(jax.random.PRNGKey(student_seed), 100 + k))
      _, out[f'independent_{k}'] = timed(f'independent_{k}', lambda s=start, k=k: runner.train(
          main, [vanilla], phase=f'independent_{k}', seed=student_seed, state=s))
  if 'fitnets' in methods:
    thin = experiments['thin_fitnets']
    _, out['fitnets'] = timed('fitnets', lambda: runner.train(
        thin, thin.method_trainers('fitnets'), phase='fitnets', seed=student_seed,
        teacher_variables=teacher_a))
    base = experiments['thin_kd']
    # pylint: disable-next=protected-access
    stage2 = base._fitnets_trainers(base.student_optimizer)[-1]
    _, out['thin_kd'] = timed('thin_kd', lambda: runner.train(
        base, [stage2], phase='thin_kd', seed=student_seed, teacher_variables=teacher_a))
  accuracies = {phase: {**_accuracies(m), **({'from': m['from']} if 'from' in m else {})}
                for phase, m in out.items()}
  figure = os.path.join(runner.workdir, 'gradcam.png') if seed == config.seeds[0] else None
  agreement = timed('gradcam', lambda: saliency_agreement(main, teacher_a, states, figure))
  for phase, value in agreement.items():
    accuracies[phase]['gradcam_agreement'] = value
  return accuracies, seconds


def _agreement(teacher_maps: jax.Array, student_maps: jax.Array) -> float:
  """Mean Pearson agreement of two ``[batch, h, w]`` map sets, the coarser upsampled."""
  size = max(teacher_maps.shape[1:], student_maps.shape[1:])
  resized = [m if m.shape[1:] == size else explain.upsample(m, size)
             for m in (teacher_maps, student_maps)]
  return float(jnp.mean(explain.saliency_agreement(*resized, metric='pearson')))


def saliency_agreement(experiment: FontExperiment, teacher_variables, states: Mapping[str, Any],
                       figure: str | None = None) -> dict[str, float]:
  """Each student's Grad-CAM++ agreement with the teacher on the first test images.

  Maps of ``config.gradcam.feature`` explaining the true class
  (:func:`kdjax.explain.grad_cam_plus_plus`, Chattopadhay et al. 2018,
  arXiv:1710.11063) for the first ``config.gradcam.examples`` test images;
  the agreement is their mean Pearson correlation with the teacher's
  (:func:`kdjax.explain.saliency_agreement`), so 1 means the student looks
  where the teacher looks. With `figure`, the teacher's and the students'
  maps are also plotted there. Returns ``{phase: agreement}`` for the
  phases in `states` (empty when ``gradcam.examples`` is 0).
  """
  c = experiment.config.gradcam
  if not c.examples or not states:
    return {}
  test = experiment.arrays['test']
  batch = {'x': test['x'][:c.examples], 'label': test['label'][:c.examples]}
  labels = jnp.asarray(batch['label'], jnp.int32)
  teacher_apply = experiment._teacher_apply((c.feature,))  # pylint: disable=protected-access
  student_apply = experiment.student_apply(experiment.student(), (c.feature,))
  maps = {'teacher': explain.grad_cam_plus_plus(
      teacher_apply, teacher_variables, batch, feature=c.feature, class_index=labels,
      perturbation=c.feature)}
  for phase, state in states.items():
    maps[phase] = explain.grad_cam_plus_plus(
        student_apply, state.variables, batch, feature=c.feature, class_index=labels,
        perturbation=f'backbone/{c.feature}')
  if figure:
    explain.plot_maps(batch['x'], {PHASE_TITLES.get(k, k): v for k, v in maps.items()}, figure)
  return {phase: _agreement(maps['teacher'], maps[phase]) for phase in states}


# ----------------------------------------------------------------------------
# Verdicts and tables.


def verdicts(per_seed: Sequence[Mapping[str, Mapping[str, float]]]) -> list[dict[str, Any]]:
  """A :func:`experiments._common.claim` per claim whose runs exist, on paired test accuracies."""
  out = []
  for text, run, baseline, *threshold in CLAIMS:
    if not all(run in r and baseline in r for r in per_seed):
      continue
    out.append({**_common.claim(text, [r[run]['test'] for r in per_seed],
                                [r[baseline]['test'] for r in per_seed], scale=100,
                                threshold=threshold[0] if threshold else 0.0),
                'run': run, 'baseline': baseline})
  return out


def claims(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The claims, judged now from the recorded per-seed numbers."""
  return verdicts(results['per_seed'])


def teacher_gap(per_seed) -> dict[str, Any] | None:
  """Teacher minus the labels-only student, test accuracy, per seed (the benchmark's headroom)."""
  if not all('teacher' in r and 'vanilla' in r for r in per_seed):
    return None
  return _common.paired_difference([r['teacher']['test'] for r in per_seed],
                                   [r['vanilla']['test'] for r in per_seed])


def param_count(spec: Mapping[str, Any], num_classes: int, image_size: int) -> int:
  """Parameters of the zoo model `spec` (a recorded config's model entry), by shapes only."""
  model = cifar_kd.make_backbone(ml_collections.ConfigDict(dict(spec)), num_classes, 'lax')
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  return cifar_kd.param_count(shapes)


def describe(results: Mapping[str, Any]) -> str:
  """What was trained, on what, and how each choice was made, from a run's record."""
  config, selection = results['config'], results.get('selection') or {}
  data, r = config['data'], config['student']['train']
  size, classes = data['image_size'], 10 if data['name'] == 'digits' else 100

  def model(key):
    spec = config[key]
    return (f"CIFAR ResNet-{spec['depth']} ({'-'.join(str(w) for w in spec['widths'])}, "
            f"{param_count(spec, classes, size):,} parameters)")

  lr_note = (f"chosen on validation from {', '.join(selection['learning_rate'])}"
             if selection.get('learning_rate') else 'fixed')
  beta_note = (f"chosen on validation from {', '.join(selection['dkd_beta'])}"
               if selection.get('dkd_beta') else 'fixed')
  fit = config['fitnets']
  warmup_epochs = r['warmup_epochs']
  warmup = (f"; a linear warm-up of the learning rate over the first {warmup_epochs:g} "
            f"epoch{'s' if warmup_epochs != 1 else ''}" if warmup_epochs else '')
  return (
      f"{PAPER}. Data: `font_glyphs` (100 glyph classes rendered from Debian's font "
      f"packages, train, validation and test fonts disjoint by family; docs/data.md), "
      f"{results['num_train']:,} training, {results['num_val']:,} validation and "
      f"{results['num_test']:,} test images, downsampled from 32x32 to {size}x{size}; training "
      f"with random crops after {data['crop_padding']}-pixel padding; inputs standardised "
      f"{NORMALIZE_TEXT[data['normalize']]}. The test split is scored "
      f"once, after each run; every choice was made on validation. Teacher A: "
      f"{model('teacher')}; teacher B: {model('teacher_b')}; student: {model('student')}; "
      f"FitNets' thin deep student: {model('thin_student')}. Every model trains "
      f"{r['epochs']} epochs of SGD (momentum {r['momentum']:g}, weight decay "
      f"{r['weight_decay']:g}, batch {r['batch_size']}, the learning rate divided by "
      f"{1 / r['decay_rate']:g} at {', '.join(f'{f:g}' for f in r['decay_fractions'])} of the "
      f"epochs{warmup}) at learning rate {r['learning_rate']:g} for the students ({lr_note}, labels "
      f"only, on seed {selection.get('seed', config['select']['seed'])}, not reported) and "
      f"{config['teacher']['train']['learning_rate']:g} and "
      f"{config['teacher_b']['train']['learning_rate']:g} for teachers A and B "
      f"({config['teacher']['train']['epochs']} and {config['teacher_b']['train']['epochs']} "
      f"epochs; chosen in the sizing, on seeds that are not reported). "
      f"Method weights: KD "
      f"T = {config['kd']['temperature']:g} ({config['kd']['kd_weight']:g} KD + "
      f"{config['kd']['ce_weight']:g} CE); DKD alpha = {config['dkd']['alpha']:g}, beta = "
      f"{config['dkd']['beta']:g} ({beta_note} with the same number of runs); AT beta = "
      f"{config['at']['weight']:g} (the published 1000 scaled by the maps' area); CRD weight "
      f"{config['crd']['weight']:g}, {config['crd']['num_negatives']} negatives; FitNets "
      f"{fit['stage1_epochs']} hint-only epochs then {r['epochs'] - fit['stage1_epochs']} of KD "
      f"(equal total epochs), against the same thin student trained with the KD stage alone for "
      f"all {r['epochs']} epochs; DML {config['dml']['num_students']} students, each against a "
      f"labels-only student from its starting weights; multi-teacher KD from teachers A and B "
      f"against KD from whichever single teacher gave the better student on validation. The "
      f"students of one architecture start from the same weights in a seed (DML's students from "
      f"their own, shared with their independent peers).")


def format_tables(results: Mapping[str, Any]) -> str:
  """Per-seed test (validation) accuracy of every run, and the selection."""
  per_seed, seeds = results['per_seed'], results['config']['seeds']
  phases = [p for p in PHASE_TITLES if all(p in r for r in per_seed)]
  rows = []
  for phase in phases:
    cells = [f"{100 * r[phase]['test']:.2f} ({100 * r[phase]['val']:.2f})" for r in per_seed]
    stats = _common.mean_std([r[phase]['test'] for r in per_seed])
    rows.append([PHASE_TITLES[phase], *cells, _common.mean_std_text(stats, scale=100, digits=2)])
  lines = ['Test accuracy % (validation accuracy %) per seed:', '']
  lines += _common.markdown_table(['run', *(f'seed {s}' for s in seeds), 'test mean ± std'], rows)
  saliency = [p for p in SALIENCY_METHODS
              if all('gradcam_agreement' in r.get(p, {}) for r in per_seed) and p in phases]
  if saliency:
    rows = [[PHASE_TITLES[p], *(f"{r[p]['gradcam_agreement']:.3f}" for r in per_seed),
             _common.mean_std_text(_common.mean_std([r[p]['gradcam_agreement'] for r in per_seed]),
                                   digits=3)]
            for p in saliency]
    examples = results['config']['gradcam']['examples']
    lines += ['', f'Grad-CAM++ agreement with the teacher (mean Pearson correlation of the maps '
              f"of `{results['config']['gradcam']['feature']}`, explaining the true class, over "
              f'the first {examples} test images; 1: the student looks where the teacher looks):',
              '']
    lines += _common.markdown_table(['student', *(f'seed {s}' for s in seeds), 'mean ± std'],
                                    rows)
  inits = [r[p]['test'] for r in per_seed for p in ('vanilla', 'independent_0', 'independent_1')
           if p in r]
  if len(inits) > 1:
    lines += ['', f'Labels-only students of the main architecture (the student and DML\'s two '
              f'independent peers: one recipe from {len(inits)} starting weights over the seeds) '
              f'score {100 * min(inits):.2f} to {100 * max(inits):.2f} % on test: how much one '
              f'init can move this recipe at this budget.']
  gap = results.get('teacher_gap')
  if gap:
    lines += ['', f"Teacher minus labels-only student (test): {100 * gap['mean']:+.2f} points "
              f"({', '.join(f'{100 * v:+.2f}' for v in gap['values'])} per seed)."]
  sel = results.get('selection') or {}
  if sel:

    def grid(scores):
      return ('(fixed)' if not scores else
              '(validation accuracy: ' + ', '.join(f'{k}: {100 * v:.2f} %'
                                                   for k, v in scores.items()) + ')')

    lines += ['', f"Selected on validation, seed {sel['seed']} (not reported): student learning "
              f"rate {sel['chosen_learning_rate']:g} {grid(sel['learning_rate'])}; DKD beta "
              f"{sel['chosen_dkd_beta']:g} {grid(sel['dkd_beta'])}."]
  phase_seconds = results.get('phase_seconds') or []
  if phase_seconds:
    mean = {p: float(np.mean([s[p] for s in phase_seconds if p in s])) for p in phase_seconds[0]}
    lines += ['', 'Wall seconds per seed (mean over seeds, compilation included): '
              + ', '.join(f'{p} {t:.0f}' for p, t in mean.items()) + '.']
  resumed = results.get('resumed')
  if resumed:
    commit = (resumed.get('commit') or 'unknown')[:7]
    lines += ['', f"Seeds {', '.join(str(s) for s in resumed['seeds'])} were trained by an earlier "
              f"run (commit {commit}, {resumed['wall_seconds']:.0f} s) and restored here from "
              f"their checkpoints, with the same accuracies; their wall seconds are the earlier "
              f"run's, and the wall time counts both runs."]
  return '\n'.join(lines)


# ----------------------------------------------------------------------------
# Driver.


def earlier_seeds(workdir: str) -> dict[str, Any]:
  """What an earlier run recorded in ``<workdir>/results.json``, to add seeds to it.

  Returns ``{'seeds': {seed: {'accuracies', 'seconds'}}, 'wall_seconds',
  'commit'}``: each seed it finished, its wall time and its commit (from
  its provenance); ``{'seeds': {}}`` when there is no such file. A rerun
  with more seeds restores the finished runs from their checkpoints (the
  config that identifies them must be the same, or the checkpoints are
  refused) and trains only the new seeds.
  """
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return {'seeds': {}}
  with open(path, encoding='utf-8') as f:
    results = json.load(f)
  seconds = results.get('phase_seconds') or [{} for _ in results['per_seed']]
  return {
      'seeds': {seed: {'accuracies': accuracies, 'seconds': timings} for seed, accuracies, timings
                in zip(results['config']['seeds'], results['per_seed'], seconds)},
      # A run that was itself resumed already counts the time before it.
      'wall_seconds': results['wall_seconds'],
      'commit': results.get('provenance', {}).get('git', {}).get('commit'),
  }


def run(config: ml_collections.ConfigDict, workdir: str,
        command: Sequence[str] | None = None) -> dict:
  """Selection, then every seed; writes results.json after each seed; returns the results."""
  command = command or _common.command(MODULE, None)
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  arrays, num_classes = load_arrays(config)
  runner = Runner(config, workdir)
  selection = select(config, arrays, num_classes, runner)
  config = variant(config, **{'student.train.learning_rate': selection['chosen_learning_rate'],
                              'dkd.beta': selection['chosen_dkd_beta']})
  runner.config = config
  experiments = build(config, arrays, num_classes)
  earlier = earlier_seeds(workdir)
  per_seed, seconds, restored = [], [], []
  results = {}
  for seed in config.seeds:
    accuracies, timings = run_seed(config, experiments, runner, seed)
    if seed in earlier['seeds']:
      if accuracies == earlier['seeds'][seed]['accuracies']:
        # The same runs (restored from their checkpoints): their training
        # time is the one measured when they were trained.
        timings = earlier['seeds'][seed]['seconds']
        restored.append(seed)
      else:
        logging.warning('seed %d: the accuracies differ from those the earlier results.json in '
                        '%s recorded; keeping the new ones', seed, workdir)
    per_seed.append(accuracies)
    seconds.append(timings)
    resumed = {}
    if restored:
      resumed = {'seeds': restored, 'wall_seconds': earlier['wall_seconds'],
                 'commit': earlier['commit']}
    results = {
        'paper': PAPER, 'config': {**config.to_dict(), 'seeds': list(config.seeds)[:len(per_seed)]},
        'num_train': int(len(arrays['train']['label'])), 'num_val': int(len(arrays['val']['label'])),
        'num_test': int(len(arrays['test']['label'])), 'selection': selection,
        'per_seed': per_seed, 'phase_seconds': seconds,
        'teacher_gap': teacher_gap(per_seed), 'verdicts': verdicts(per_seed),
        'wall_seconds': time.time() - start + resumed.get('wall_seconds', 0.0),
        'finished': time.time(), **({'resumed': resumed} if resumed else {}),
    }
    results = _common.write_results(results, workdir, config, command)
  return results


def main(argv: Sequence[str] | None = None) -> None:
  _common.run_main(argv, module=MODULE, doc=__doc__, schema=font_kd_configs.schema(), run=run,
                   report=format_tables, claims=claims)


if __name__ == '__main__':
  main(sys.argv[1:])
