"""What every experiment script shares: the Trainer, teachers, statistics, tables, results files."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import contextlib
import json
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from scipy import stats as scipy_stats

from kdjax import checkpoint
from kdjax import loop
from kdjax import provenance
from kdjax import writers

# Config entries that say which runs to make or how to show them, not what a
# run trains: a checkpoint stays valid when they change.
NOT_IDENTIFYING = ('seeds', 'progress', 'methods', 'variants')


def run_config(config: ml_collections.ConfigDict, **run: Any) -> dict[str, Any]:
  """What identifies one training run, for its checkpoints.

  The experiment's config (less :data:`NOT_IDENTIFYING`) and `run`, the
  phase and whatever else sets this run apart (hyper-parameters of a sweep
  point); :meth:`Trainer.train` adds the seed. A resumed run whose identity
  differs is refused (:class:`kdjax.checkpoint.ConfigMismatchError`): a
  workdir belongs to one config.
  """
  experiment = {k: v for k, v in config.to_dict().items() if k not in NOT_IDENTIFYING}
  return {'experiment': experiment, 'run': run}


class Trainer:
  """One training recipe (train step, init, evaluation), compiled once for all seeds.

  Args:
    train_step: from :func:`kdjax.step.make_train_step` (or alike).
    init_fn: ``init(key) -> TrainState`` (jitted here).
    evaluate_fn: ``evaluate(state) -> {name: value}``, run during training.
    epochs: epochs per run.
    batch_size: examples per step.
    augment: optional ``augment(batch, key) -> batch``.
    eval_every: evaluate every this many epochs (and after the last).
    save_every: checkpoint every this many epochs (and after the last).
    progress: show a progress bar.
    final_evaluate_fn: the metrics returned after training (default
      `evaluate_fn`).
    write_final: also write those metrics to the run's log, split ``'final'``.
  """

  def __init__(self, train_step, init_fn, evaluate_fn, *, epochs: int, batch_size: int,
               augment=None, eval_every: int, save_every: int, progress: bool,
               final_evaluate_fn: Callable[[Any], dict] | None = None, write_final: bool = False):
    self.epochs, self.progress = epochs, progress
    self.eval_every, self.save_every = eval_every, save_every
    self.epoch_fn = jax.jit(
        loop.make_epoch_fn(train_step, batch_size=batch_size, augment=augment),
        donate_argnums=0)
    self.init = jax.jit(init_fn)
    self.evaluate = evaluate_fn
    self.final_evaluate = final_evaluate_fn or evaluate_fn
    self.write_final = write_final

  def train(self, train, *, seed: int, teacher_variables, workdir: str, desc: str,
            config: Mapping[str, Any], state=None):
    """Trains from `state` (default: a fresh init) or resumes `workdir`'s checkpoint.

    `config` (from :func:`run_config`) and `seed` identify the run: they are
    saved with each checkpoint, and a checkpoint saved under another
    identity is refused rather than resumed. A SIGTERM or SIGINT ends the
    program with status 0 after a checkpoint (:class:`kdjax.loop.Preempted`
    propagates; the writer and manager are closed on the way out).
    """
    if state is None:
      state = self.init(jax.random.PRNGKey(seed))
    # Two kept: if the latest is found unreadable, the one before it restores.
    manager = checkpoint.make_manager(os.path.join(workdir, 'checkpoints'), max_to_keep=2)
    with contextlib.closing(manager), writers.MetricWriter(workdir) as writer:
      state = loop.fit(
          self.epoch_fn, state, teacher_variables, train,
          num_epochs=self.epochs, seed=seed, evaluate_fn=self.evaluate,
          eval_every=self.eval_every, writer=writer, manager=manager,
          save_every=self.save_every, desc=desc, progress=self.progress,
          config={**config, 'seed': seed},
      )
      metrics = self.final_evaluate(state)
      if self.write_final:
        writer.write(int(state.step), metrics, split='final')
    return state, metrics


def train_teacher(trainer: Trainer, train, *, seed: int, workdir: str,
                  config: Mapping[str, Any], desc: str | None = None):
  """Trains (or resumes) a teacher, writes its own checkpoint and reads it back.

  Students get the variables read from the teacher's checkpoint, so what
  they learn from is exactly what was saved. Returns the variables and the
  teacher's final metrics.
  """
  state, metrics = trainer.train(train, seed=seed, teacher_variables=None, workdir=workdir,
                                 desc=desc or f'teacher s{seed}', config=config)
  final = os.path.join(workdir, 'final')
  # (A rerun restores the same teacher from its training checkpoint.)
  checkpoint.save_teacher(final, state.variables, overwrite=True)
  return checkpoint.load_teacher(final, state.variables), metrics


def warmup_cosine_adamw(model: ml_collections.ConfigDict, steps: int, *, b2: float):
  """AdamW with linear warm-up and cosine decay to zero, global-norm clipping at 1.

  `model` gives ``learning_rate``, ``warmup_steps`` (cut to fit `steps`)
  and ``weight_decay``.
  """
  warmup = min(model.warmup_steps, max(steps - 1, 1))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, model.learning_rate, warmup_steps=warmup, decay_steps=max(steps, warmup + 1))
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(schedule, b2=b2, weight_decay=model.weight_decay),
  )


# ----------------------------------------------------------------------------
# Statistics and tables.


def mean_std(values: Sequence[float]) -> dict[str, Any]:
  """Mean, sample standard deviation (0 for one value) and the values themselves."""
  values = np.asarray(values, np.float64)
  return {'mean': float(values.mean()),
          'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0,
          'values': [float(v) for v in values]}


def summarize(per_seed: Sequence[Mapping[str, Mapping[str, float]]], phases: Sequence[str],
              metrics: Mapping[str, str]) -> dict[str, dict[str, Any]]:
  """``{phase: {name: mean_std over seeds of r[phase][key]}}`` for ``name, key`` in `metrics`."""
  return {phase: {name: mean_std([r[phase][key] for r in per_seed])
                  for name, key in metrics.items()}
          for phase in phases}


# Verdicts of a paper's claims, from paired differences over seeds.
SHOWN = 'shown'
WITHIN = 'within the seed spread'
CONTRADICTED = 'contradicted'


def paired_difference(values: Sequence[float], baseline: Sequence[float], *,
                      confidence: float = 0.9) -> dict[str, Any]:
  """``values - baseline`` seed by seed: :func:`mean_std` plus a t confidence interval.

  Runs of one seed share their initialisation, batches (and teacher), so
  the per-seed difference cancels what the seeds have in common; its spread
  is the seed-to-seed noise of the *difference*.

  Args:
    values: one number per seed.
    baseline: the same seeds' numbers of the compared run, in the same order.
    confidence: the two-sided level of the interval, in (0, 1).

  Returns:
    :func:`mean_std` of the differences plus ``'ci'``: ``[low, high]``, the
    Student-t interval ``mean -+ t * std / sqrt(n)`` (``[mean, mean]`` for
    one seed: no interval can be computed), and ``'confidence'``.
  """
  values, baseline = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
  if values.shape != baseline.shape or values.ndim != 1 or values.size == 0:
    raise ValueError(
        f'values and baseline must be equal-length non-empty lists (one number per seed), '
        f'got shapes {values.shape} and {baseline.shape}')
  if not 0.0 < confidence < 1.0:
    raise ValueError(f'confidence must be in (0, 1), got {confidence}')
  diff = mean_std(values - baseline)
  n = values.size
  half = 0.0
  if n > 1:
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * diff['std'] / np.sqrt(n)
  return {**diff, 'ci': [diff['mean'] - half, diff['mean'] + half], 'confidence': confidence}


def paired_verdict(diff: Mapping[str, Any], *, claim_sign: float = 1.0) -> str:
  """Whether a :func:`paired_difference` shows ``claim_sign * difference > 0``.

  ``'shown'`` when the interval lies wholly on the claimed side of 0,
  ``'contradicted'`` when it lies wholly on the other side, otherwise
  ``'within the seed spread'`` (one seed has no interval: always within).
  """
  low, high = (claim_sign * v for v in diff['ci'])
  low, high = min(low, high), max(low, high)
  if len(diff['values']) > 1 and low > 0:
    return SHOWN
  if len(diff['values']) > 1 and high < 0:
    return CONTRADICTED
  return WITHIN


def equivalence_verdict(diff: Mapping[str, Any]) -> str:
  """For a claim that two runs *match*: ``'within the seed spread'`` or ``'contradicted'``.

  Contradicted when the :func:`paired_difference`'s interval excludes 0;
  within the spread (what the claim says) otherwise. Not a proof of
  equivalence: with few seeds the interval is wide, so read its width.
  """
  low, high = diff['ci']
  if len(diff['values']) > 1 and (low > 0 or high < 0):
    return CONTRADICTED
  return WITHIN


def mean_std_text(stats: Mapping[str, float], *, scale: float = 1.0, digits: int = 1) -> str:
  """``'mean ± std'`` of a :func:`mean_std` record, times `scale`, to `digits` decimals."""
  return f"{scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """The lines of a Markdown table."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  return lines + ['| ' + ' | '.join(row) + ' |' for row in rows]


# ----------------------------------------------------------------------------
# Results files.


def command(module: str, argv: Sequence[str] | None) -> list[str]:
  """The command line that runs `module` with `argv` (default: this process's arguments)."""
  return ['python', '-m', module, *(sys.argv[1:] if argv is None else argv)]


def write_results(results: Mapping[str, Any], workdir: str, config: ml_collections.ConfigDict,
                  command_line: Sequence[str] | None) -> dict[str, Any]:
  """Writes ``<workdir>/results.json`` with its provenance; returns what was written.

  The provenance (:func:`kdjax.provenance.record`: commit, dirty tree,
  command, config and hash, versions, machine) goes under ``'provenance'``.
  The file is replaced atomically, so a reader never sees half of it.
  """
  results = {**results, 'provenance': provenance.record(config, command=command_line)}
  path = os.path.join(workdir, 'results.json')
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=1, default=list)
  os.replace(path + '.tmp', path)
  return results
