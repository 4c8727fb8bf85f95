"""Hinton et al. (2015) measured: teacher, student, distilled student, omitted class.

Run ``python -m experiments.hinton --config=experiments/configs/hinton.py:cpu
--workdir=runs/hinton_cpu``; see the config file for what each scale does and
costs. Writes, under the workdir: ``<phase>/seed<k>/metrics.jsonl`` and
TensorBoard files, the teachers' own checkpoints, ``results.json``,
``learning_curves.png``; then prints the results table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import _common
from experiments.configs import hinton as hinton_configs
from kdjax import adapters
from kdjax import data as data_lib
from kdjax import losses
from kdjax import loop
from kdjax import objective as objective_lib
from kdjax import step as step_lib
from kdjax import writers
from kdjax import zoo

MODULE = 'experiments.hinton'
PHASES = ('teacher', 'baseline', 'distilled', 'omitted')


def load_arrays(config: ml_collections.ConfigDict) -> tuple[dict[str, dict[str, np.ndarray]], int]:
  """Reads the train/val/test splits through TFDS + grain into arrays."""
  data_dir = config.data.data_dir or None
  arrays = {}
  for split_name in ('train', 'val', 'test'):
    source = data_lib.load_source(
        config.data.name, config.data[f'{split_name}_split'], data_dir=data_dir
    )
    batches = list(data_lib.iterate_once(source, batch_size=512))
    merged = {k: np.concatenate([b[k] for b in batches]) for k in ('x', 'label', 'mask')}
    keep = merged.pop('mask')
    arrays[split_name] = {k: v[keep] for k, v in merged.items()}
  return arrays, data_lib.num_classes(source)


def make_jitter(shift: int, scale: float, noise: float):
  """Input jitter: circular shift along the signal/image axes, scaling, noise."""

  def jitter(batch, key):
    x = batch['x']
    shift_key, scale_key, noise_key = jax.random.split(key, 3)
    if shift:
      spatial_axes = range(1, x.ndim - 1) if x.ndim > 2 else (1,)
      for axis, axis_key in zip(spatial_axes, jax.random.split(shift_key, x.ndim)):
        offsets = jax.random.randint(axis_key, (x.shape[0],), -shift, shift + 1)
        x = jax.vmap(lambda row, k, a=axis: jnp.roll(row, k, axis=a - 1))(x, offsets)
    if scale:
      factor = 1.0 + scale * jax.random.uniform(scale_key, (x.shape[0],), minval=-1.0, maxval=1.0)
      x = x * factor.reshape((-1,) + (1,) * (x.ndim - 1))
    if noise:
      x = x + noise * jax.random.normal(noise_key, x.shape)
    return {**batch, 'x': x}

  return jitter


def make_model(model_config: ml_collections.ConfigDict, num_classes: int):
  if model_config.kind == 'cnn1d':
    return zoo.ConvNet1D(
        channels=tuple(model_config.hidden_sizes), num_classes=num_classes,
        dropout_rate=model_config.dropout,
    )
  if model_config.kind == 'mlp':
    return zoo.MLP(
        hidden_sizes=tuple(model_config.hidden_sizes),
        num_classes=num_classes,
        dropout_rate=model_config.dropout,
        input_dropout_rate=model_config.input_dropout,
    )
  raise ValueError(f"kind must be 'cnn1d' or 'mlp', got {model_config.kind!r}")


def make_optimizer(optim_config: ml_collections.ConfigDict, steps: int):
  schedule = optax.cosine_decay_schedule(optim_config.learning_rate, steps)
  return optax.adamw(schedule, weight_decay=optim_config.weight_decay)


def kd_objective(kd_config: ml_collections.ConfigDict) -> objective_lib.Objective:
  """The paper's weighted average of soft (x T^2) and hard cross entropies."""
  return objective_lib.Objective(
      {
          'kd': objective_lib.distill(losses.kl_divergence, temperature=kd_config.temperature),
          'ce': objective_lib.supervised(),
      },
      weights={'kd': kd_config.soft_weight, 'ce': 1.0 - kd_config.soft_weight},
      metrics={'acc/student': objective_lib.accuracy_metric()},
  )


def label_objective() -> objective_lib.Objective:
  return objective_lib.Objective(
      {'ce': objective_lib.supervised()},
      metrics={'acc/student': objective_lib.accuracy_metric()},
  )


class Trainer(_common.Trainer):
  """One training recipe (model, objective, optimizer), compiled once for all seeds."""

  def __init__(self, model_config, optim_config, model, objective, *, num_train, jitter,
               teacher_apply, evals, progress, shared=None):
    self.model, self.evals = model, evals
    self.input_shape = next(iter(evals.values()))['x'].shape[1:]
    steps_per_epoch = num_train // model_config.batch_size
    self.optimizer = make_optimizer(optim_config, steps_per_epoch * model_config.epochs)
    if shared is not None:  # same model: reuse its compiled functions
      self.apply, self.eval_step, self.logits = shared.apply, shared.eval_step, shared.logits
    else:
      self.apply = adapters.from_linen(model)
      self.eval_step = jax.jit(step_lib.make_eval_step(self.apply))
      self.logits = jax.jit(
          lambda variables, x: self.apply(variables, {'x': x}, train=False)[0].logits)
    train_step = step_lib.make_train_step(self.apply, teacher_apply, objective, self.optimizer)
    example = jnp.zeros((1,) + tuple(self.input_shape))

    def init(key):
      variables = model.init(key, example, train=False)
      return step_lib.init_train_state(variables, self.optimizer, rng=jax.random.fold_in(key, 1))

    epochs = model_config.epochs
    super().__init__(train_step, init, self._evaluate, epochs=epochs,
                     batch_size=model_config.batch_size,
                     augment=jitter if model_config.jitter else None,
                     eval_every=max(epochs // 10, 1), save_every=max(epochs // 4, 1),
                     progress=progress)
    if shared is not None:
      # The initial state (the model's init, zeroed optimizer moments) does
      # not depend on learning rate, weight decay or objective: reuse the
      # compiled init when the state's shapes agree. (An optimizer whose state
      # held hyper-parameter values would break this; adamw's does not.)
      key = jax.random.PRNGKey(0)
      if jax.eval_shape(self.init, key) == jax.eval_shape(shared.init, key):
        self.init = shared.init

  def _evaluate(self, state) -> dict[str, float]:
    out = {}
    for name, arrays in self.evals.items():
      for metric, value in loop.evaluate(self.eval_step, state, None, arrays).items():
        out[f'{name}/{metric}'] = value
    return out


def class_accuracy(logits, labels, label, bias_delta=0.0):
  """Accuracy overall and on `label`'s examples, with `label`'s bias shifted."""
  logits = np.array(logits, np.float64)
  logits[:, label] += bias_delta
  predictions = logits.argmax(-1)
  is_label = labels == label
  if not is_label.any():
    raise ValueError(f'no example of class {label} to measure accuracy on')
  return {
      'acc': float(np.mean(predictions == labels)),
      'acc_on_label': float(np.mean(predictions[is_label] == label)),
      'errors': int(np.sum(predictions != labels)),
  }


def choose_bias(logits, labels, label, grid, *, rule, prior):
  """The bias increment for an omitted class, chosen on validation data.

  ``'prior'``: the increment whose predicted share of `label` is closest to
  its share `prior` of the training labels (uses the inputs only).
  ``'val_acc'``: the increment with the best validation accuracy.
  """
  logits = np.asarray(logits, np.float64)
  if rule == 'prior':
    shares = []
    for delta in grid:
      shifted = logits.copy()
      shifted[:, label] += delta
      shares.append(np.mean(shifted.argmax(-1) == label))
    return float(grid[int(np.argmin(np.abs(np.asarray(shares) - prior)))])
  if rule == 'val_acc':
    scores = [class_accuracy(logits, labels, label, delta)['acc'] for delta in grid]
    return float(grid[int(np.argmax(scores))])
  raise ValueError(f"omitted.rule must be 'prior' or 'val_acc', got {rule!r}")


def run_seed(config, arrays, trainers, seed, workdir):
  """Teacher, baseline, distilled and omitted-class runs for one seed."""
  result = {}

  def phase_dir(phase):
    return os.path.join(workdir, phase, f'seed{seed}')

  # The teacher gets its own checkpoint; the students read it from there.
  teacher_variables, result['teacher'] = _common.train_teacher(
      trainers['teacher'], arrays['train'], seed=seed, workdir=phase_dir('teacher'),
      config=_common.run_config(config, phase='teacher'))

  student_seed = seed + 1000  # baseline and distilled students start alike
  _, result['baseline'] = trainers['baseline'].train(
      arrays['train'], seed=student_seed, teacher_variables=None,
      workdir=phase_dir('baseline'), desc=f'baseline s{seed}',
      config=_common.run_config(config, phase='baseline'))
  _, result['distilled'] = trainers['distilled'].train(
      arrays['train'], seed=student_seed, teacher_variables=teacher_variables,
      workdir=phase_dir('distilled'), desc=f'distilled s{seed}',
      config=_common.run_config(config, phase='distilled'))

  if config.omitted.enabled:
    label = config.omitted.label
    trainer = trainers['omitted']
    state, _ = trainer.train(
        arrays['transfer'], seed=student_seed, teacher_variables=teacher_variables,
        workdir=phase_dir('omitted'), desc=f'omitted s{seed}',
        config=_common.run_config(config, phase='omitted'))
    val_logits = trainer.logits(state.variables, arrays['val']['x'])
    test_logits = trainer.logits(state.variables, arrays['test']['x'])
    test_labels = arrays['test']['label']
    deltas = {
        rule: choose_bias(val_logits, arrays['val']['label'], label, config.omitted.bias_grid,
                          rule=rule, prior=float(np.mean(arrays['train']['label'] == label)))
        for rule in ('prior', 'val_acc')
    }
    teacher_logits = trainers['teacher'].logits(teacher_variables, arrays['test']['x'])
    result['omitted'] = {
        'bias_deltas': deltas,
        'before': class_accuracy(test_logits, test_labels, label, 0.0),
        'after_by_rule': {rule: class_accuracy(test_logits, test_labels, label, delta)
                          for rule, delta in deltas.items()},
        'teacher': class_accuracy(teacher_logits, test_labels, label, 0.0),
        'test_examples_of_label': int(np.sum(arrays['test']['label'] == label)),
    }
  return result


def make_trainers(config, arrays, num_classes):
  """The four recipes; each compiles once and serves every seed."""
  jitter = make_jitter(**config.data.jitter)
  evals = {'val': arrays['val'], 'test': arrays['test']}
  teacher = make_model(config.teacher, num_classes)
  student = make_model(config.student, num_classes)
  common = dict(jitter=jitter, evals=evals, progress=config.progress)
  num_train = len(arrays['train']['label'])
  trainers = {
      'teacher': Trainer(config.teacher, config.teacher, teacher, label_objective(),
                         num_train=num_train, teacher_apply=None, **common),
      'baseline': Trainer(config.student, config.baseline, student, label_objective(),
                          num_train=num_train, teacher_apply=None, **common),
  }
  teacher_apply = trainers['teacher'].apply
  common['shared'] = trainers['baseline']
  trainers['distilled'] = Trainer(config.student, config.kd, student, kd_objective(config.kd),
                                  num_train=num_train, teacher_apply=teacher_apply, **common)
  if config.omitted.enabled:
    trainers['omitted'] = Trainer(config.student, config.kd, student, kd_objective(config.kd),
                                  num_train=len(arrays['transfer']['label']),
                                  teacher_apply=teacher_apply, **common)
  return trainers


def summarize(per_seed: list[dict], config) -> dict:
  """Means and standard deviations over seeds, and the gap recovered."""
  summary = _common.summarize(per_seed, ('teacher', 'baseline', 'distilled'),
                              {'test_acc': 'test/acc/student', 'val_acc': 'val/acc/student'})
  gaps = [
      (r['distilled']['test/acc/student'] - r['baseline']['test/acc/student'])
      / (r['teacher']['test/acc/student'] - r['baseline']['test/acc/student'])
      for r in per_seed
  ]
  summary['gap_recovered'] = _common.mean_std(gaps)
  if config.omitted.enabled:
    omitted = {}
    for when in ('before', 'teacher'):
      omitted[when] = {
          'acc': _common.mean_std([r['omitted'][when]['acc'] for r in per_seed]),
          'acc_on_label': _common.mean_std([r['omitted'][when]['acc_on_label'] for r in per_seed]),
      }
    omitted['by_rule'] = {
        rule: {
            'bias_delta': _common.mean_std([r['omitted']['bias_deltas'][rule] for r in per_seed]),
            'acc': _common.mean_std([r['omitted']['after_by_rule'][rule]['acc'] for r in per_seed]),
            'acc_on_label': _common.mean_std(
                [r['omitted']['after_by_rule'][rule]['acc_on_label'] for r in per_seed]),
        }
        for rule in ('prior', 'val_acc')
    }
    omitted['label'] = config.omitted.label
    omitted['test_examples_of_label'] = per_seed[0]['omitted']['test_examples_of_label']
    summary['omitted'] = omitted
  return summary


def describe(config: dict) -> str:
  """One paragraph saying what was trained, from a run's recorded config."""
  t, st, kd, jitter = config['teacher'], config['student'], config['kd'], config['data']['jitter']

  def model(c):
    if c['kind'] == 'cnn1d':
      return f"a 1-D CNN ({'/'.join(str(w) for w in c['hidden_sizes'])} channels)"
    return f"an MLP (hidden layers {'-'.join(str(w) for w in c['hidden_sizes'])})"

  def inputs(c):
    if not c['jitter']:
      return 'clean inputs'
    return (f"jittered inputs (circular shift up to {jitter['shift']}, scale ±{jitter['scale']}, "
            f"noise {jitter['noise']})")

  return (
      f"Data: {config['data']['name']}, trained on `{config['data']['train_split']}`, "
      f"choices made on `{config['data']['val_split']}`, reported on `{config['data']['test_split']}`. "
      f"Teacher: {model(t)} with dropout {t['dropout']}, trained on {inputs(t)}. "
      f"Student: {model(st)}, trained on {inputs(st)} "
      f"either on labels alone or distilled with soft targets at T = {kd['temperature']:g} "
      f"(weight {kd['soft_weight']:g}, times T²) plus hard labels (weight {1 - kd['soft_weight']:g}).")


def format_table(summary: dict, num_test: int) -> str:
  """Markdown table of test accuracy and errors, mean +- std over seeds."""

  def pct(stats):
    return _common.mean_std_text(stats, scale=100)

  def errors(stats):
    return f"{num_test * (1 - stats['mean']):.0f} ± {num_test * stats['std']:.0f}"

  names = {'teacher': 'teacher', 'baseline': 'student, labels only',
           'distilled': 'student, distilled'}
  lines = _common.markdown_table(
      ['model', 'test accuracy (%)', f'test errors (of {num_test})'],
      [[name, pct(summary[phase]['test_acc']), errors(summary[phase]['test_acc'])]
       for phase, name in names.items()])
  means = {phase: summary[phase]['test_acc']['mean'] for phase in names}
  of_means = (means['distilled'] - means['baseline']) / (means['teacher'] - means['baseline'])
  per_seed = ', '.join(f'{100 * v:.0f} %' for v in summary['gap_recovered']['values'])
  lines.append('')
  lines.append(
      f"Gap recovered by distillation, (distilled − baseline) / (teacher − baseline): "
      f"{100 * of_means:.0f} % from the means; per seed {per_seed} (a seed whose teacher is "
      "weak can give more than 100 %: the distilled student then beats its teacher).")
  if 'omitted' in summary:
    o = summary['omitted']
    rows = [['before bias correction', pct(o['before']['acc_on_label']), pct(o['before']['acc'])]]
    rules = {'prior': "predicted share of validation inputs = training prior",
             'val_acc': 'best validation accuracy'}
    for rule, text in rules.items():
      r = o['by_rule'][rule]
      rows.append([f"bias raised by {_common.mean_std_text(r['bias_delta'], digits=2)} ({text})",
                   pct(r['acc_on_label']), pct(r['acc'])])
    rows.append(['teacher, for reference', pct(o['teacher']['acc_on_label']),
                 pct(o['teacher']['acc'])])
    lines += [
        '',
        f"Omitted class: every {o['label']} removed from the transfer set "
        f"({o['test_examples_of_label']} test examples of it).",
        '',
        *_common.markdown_table(['distilled student', f"accuracy on class {o['label']} (%)",
                                 'overall test accuracy (%)'], rows),
    ]
  return '\n'.join(lines)


PHASE_NAMES = {'teacher': 'teacher', 'baseline': 'labels only', 'distilled': 'distilled'}
OMITTED_RULES = {'prior': 'the prior rule', 'val_acc': 'validation accuracy'}


def per_seed_table(results: Mapping[str, Any]) -> str:
  """Every seed's test accuracy (%) of each model, and of the omitted class after each bias rule."""
  per_seed, seeds = results['per_seed'], results['config']['seeds']
  columns = {name: [r[phase]['test/acc/student'] for r in per_seed]
             for phase, name in PHASE_NAMES.items()}
  if all('omitted' in r for r in per_seed):
    label = results['config']['omitted']['label']
    columns[f'omitted: class {label} before'] = [
        r['omitted']['before']['acc_on_label'] for r in per_seed]
    for rule, name in OMITTED_RULES.items():
      columns[f'class {label}, bias by {name}'] = [
          r['omitted']['after_by_rule'][rule]['acc_on_label'] for r in per_seed]
  return '\n'.join(['Test accuracy (%) per seed:', '',
                    *_common.per_seed_table(seeds, columns, scale=100, digits=1)])


def claims(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The paper's claims, judged from the recorded per-seed test accuracies."""
  per_seed = results['per_seed']
  acc = {phase: np.array([r[phase]['test/acc/student'] for r in per_seed]) for phase in PHASE_NAMES}
  gap = acc['teacher'] - acc['baseline']
  out = [_common.claim('the distilled student beats the labels-only student (test accuracy, '
                       'points)', acc['distilled'], acc['baseline'], scale=100),
         _common.claim('the teacher beats the labels-only student (the gap to close; points)',
                       acc['teacher'], acc['baseline'], scale=100)]
  if np.all(gap != 0):
    out.append(_common.claim(
        'distillation recovers most (> 50 %) of the teacher\'s gain ((distilled − labels) / '
        '(teacher − labels), %)', (acc['distilled'] - acc['baseline']) / gap, threshold=0.5,
        scale=100, digits=0))
  if all('omitted' in r for r in per_seed):
    label = results['config']['omitted']['label']
    for rule, name in OMITTED_RULES.items():
      out.append(_common.claim(
          f'the omitted class {label} is recognised (> 50 % of its test examples) after the '
          f'bias correction chosen by {name} (%)',
          [r['omitted']['after_by_rule'][rule]['acc_on_label'] for r in per_seed],
          threshold=0.5, scale=100, digits=1))
  return out


def plot_learning_curves(
    workdir: str, phases: Sequence[str], seeds: Sequence[int], path: str, title: str
) -> None:
  """Validation and test accuracy against steps, one line per phase and seed."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  colors = dict(zip(PHASES, ('tab:blue', 'tab:gray', 'tab:red', 'tab:green')))
  for ax, split in zip(axes, ('val', 'test')):
    for phase in phases:
      for i, seed in enumerate(seeds):
        records = writers.read_jsonl(os.path.join(workdir, phase, f'seed{seed}'))
        points = [(r['step'], r[f'{split}/acc/student']) for r in records if r['split'] == 'eval']
        if points:
          steps, accs = zip(*points)
          label = {'omitted': 'omitted class (before bias fix)'}.get(phase, phase)
          ax.plot(steps, accs, color=colors[phase], alpha=0.8, label=label if i == 0 else None)
    ax.set_title(f'{split} accuracy')
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('accuracy')
  axes[0].legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str,
        command: Sequence[str] | None = None) -> dict:
  """Runs every seed and writes results.json and the plot; returns the results.

  `command` is the command line recorded with the results (default: this
  process's).
  """
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  arrays, num_classes = load_arrays(config)
  if config.omitted.enabled:
    keep = arrays['train']['label'] != config.omitted.label
    arrays['transfer'] = {k: v[keep] for k, v in arrays['train'].items()}
  trainers = make_trainers(config, arrays, num_classes)
  per_seed = [run_seed(config, arrays, trainers, seed, workdir) for seed in config.seeds]
  summary = summarize(per_seed, config)
  results = {
      'paper': 'Hinton, Vinyals & Dean (2015), Distilling the Knowledge in a Neural Network',
      'config': config.to_dict(),
      'num_test': int(len(arrays['test']['label'])),
      'per_seed': per_seed,
      'summary': summary,
      'wall_seconds': time.time() - start,
      'finished': time.time(),
  }
  results = _common.write_results(results, workdir, config, command or _common.command(MODULE, None))
  phases = [p for p in PHASES if p != 'omitted' or config.omitted.enabled]
  title = (f'Hinton et al. (2015) on {config.data.name}: learning curves '
           f'({len(config.seeds)} seed{"s" if len(config.seeds) > 1 else ""})')
  plot_learning_curves(workdir, phases, config.seeds, os.path.join(workdir, 'learning_curves.png'),
                       title)
  return results


def main(argv: Sequence[str] | None = None) -> None:
  _common.run_main(
      argv, module=MODULE, doc=__doc__, schema=hinton_configs.schema(), run=run,
      report=lambda r: format_table(r['summary'], r['num_test']) + '\n\n' + per_seed_table(r),
      claims=claims, where=', plot in {workdir}/learning_curves.png')


if __name__ == '__main__':
  main(sys.argv[1:])
