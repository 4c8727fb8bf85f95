"""Writes docs/results.md from the committed results files (never typed by hand).

Usage::

    python -m experiments.make_results [--record runs/hinton_cpu] [--keep NAME ...]
        [--results experiments/results] [--out docs/results.md]

Each experiment's section is generated from ``<results>/<name>.json``, a
committed copy of a finished run's ``results.json`` (``--record RUNDIR``
makes it: the workdir's name must be the experiment's name). Every section
says the commit, command, config hash, library versions and machine its run
recorded. A section whose results file is missing, records no commit, or
records a commit that is not an ancestor of HEAD is an error (exit status 1,
nothing written) unless ``--keep NAME`` is given: then the section is
written with a note that says what could not be checked (a missing file
keeps the section already in ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys

from experiments import _common
from experiments import cifar_kd
from experiments import distilbert
from experiments import fastspeech2
from experiments import font_kd
from experiments import hinton
from experiments import hinton_large
from experiments import hinton_sweep
from experiments import lm_distill
from experiments import lm_kd
from experiments import multilingual
from experiments import seqkd
from experiments import tinybert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join('experiments', 'results')

# (name: the results file's and the run's workdir name, section title, the
# command that makes the run, formatter of the results (its tables, per-seed
# numbers included), claims: results -> the experiment's judged claims
# (experiments._common.claim records, recomputed from the per-seed numbers
# each time the page is written), or None for a section that makes no claim)
EXPERIMENTS = (
    (
        'hinton_cpu',
        'Hinton, Vinyals & Dean (2015): distillation on MNIST-1D (cpu scale)',
        'make demo',
        lambda r: (hinton.describe(r['config']) + '\n\n'
                   + hinton.format_table(r['summary'], r['num_test']) + '\n\n'
                   + hinton.per_seed_table(r)),
        hinton.claims,
    ),
    (
        'hinton_sweep',
        'Hinton et al. (2015): hyper-parameter selection on the validation split',
        'python -m experiments.hinton_sweep --config=experiments/configs/hinton.py:cpu --workdir=runs/hinton_sweep',
        hinton_sweep.format_table,
        None,
    ),
    (
        'hinton_large',
        "Hinton et al. (2015) in the paper's regime on the larger MNIST-1D: two arms, "
        'selection on unreported seeds, verdicts',
        'python -m experiments.hinton_large --config=experiments/configs/hinton_large.py:cpu '
        '--workdir=runs/hinton_large',
        lambda r: hinton_large.describe(r) + '\n\n' + hinton_large.format_table(r),
        hinton_large.claims,
    ),
    (
        'lm_kd_cpu',
        'Token-level distillation of a byte-level language model (cpu scale)',
        'make lm-demo',
        lambda r: lm_kd.describe(r) + '\n\n' + lm_kd.format_table(r) + '\n\n'
        + lm_kd.per_seed_table(r),
        lm_kd.claims,
    ),
    (
        'lm_distill_cpu',
        'Distilling a byte-level language model: GKD, MiniLLM, a top-k cache and ULD (cpu scale)',
        'make lm-distill-demo',
        lambda r: lm_distill.describe(r) + '\n\n' + lm_distill.format_table(r),
        lm_distill.claims,
    ),
    (
        'cifar_kd_cpu',
        'CIFAR KD benchmark methods on 8x8 digits: a smoke test (cpu scale)',
        'make cifar-demo',
        lambda r: ('A smoke test of the methods\' code paths, not a test of their claims: on '
                   '360 test digits the teacher and the labels-only student are a few errors '
                   'apart, so no method can be ranked here. The claims are tested on font '
                   'glyphs, in the section "The CIFAR KD methods compared fairly on font '
                   'glyphs".\n\n' + cifar_kd.describe(r['config'], r['params']) + '\n\n'
                   + cifar_kd.format_table(r)),
        cifar_kd.claims,
    ),
    (
        'font_kd_cpu',
        'The CIFAR KD methods compared fairly on font glyphs (cpu scale): equal epochs, weights '
        'tuned on validation, paired verdicts',
        'make font-demo',
        lambda r: font_kd.describe(r) + '\n\n' + font_kd.format_tables(r),
        font_kd.claims,
    ),
    (
        'seqkd_cpu',
        'Kim & Rush (2016): word-level, sequence-level and interpolated KD for translation (cpu scale)',
        'make seqkd-demo',
        lambda r: seqkd.describe(r) + '\n\n' + seqkd.format_table(r),
        seqkd.claims,
    ),
    (
        'multilingual_cpu',
        'Reimers & Gurevych (2020): multilingual sentence embeddings by distillation (cpu scale)',
        'make multilingual-demo',
        lambda r: multilingual.describe(r) + '\n\n' + multilingual.format_table(r),
        multilingual.claims,
    ),
    (
        'distilbert_cpu',
        'DistilBERT (2019) and Well-Read Students (2019): distilling a BERT on Debian text (cpu scale)',
        'make bert-demo',
        lambda r: distilbert.describe(r) + '\n\n' + distilbert.format_table(r),
        distilbert.claims,
    ),
    (
        'tinybert_cpu',
        'TinyBERT (2020) and MiniLM (2020, 2021): distilling all-MiniLM-L6-v2 on the Debian '
        'Section task (cpu scale)',
        'make tinybert-demo',
        lambda r: tinybert.describe(r) + '\n\n' + tinybert.format_table(r),
        tinybert.claims,
    ),
    (
        'fastspeech2_cpu',
        'FastSpeech (2019) vs FastSpeech 2 (2021) on MBROLA speech (cpu scale)',
        'make tts-demo',
        lambda r: fastspeech2.describe(r) + '\n\n' + fastspeech2.format_table(r),
        fastspeech2.claims,
    ),
)
NAMES = tuple(name for name, *_ in EXPERIMENTS)

HEADER = f"""# Results

Generated by `python -m experiments.make_results` from the committed results
files `experiments/results/<name>.json` (copies of the runs' `results.json`);
do not edit by hand. Each section gives the git commit its run recorded
(and whether that tree had uncommitted changes), the command, the config's
hash, the library versions and the machine; the results file holds the
config itself and every per-seed number. `make_results` refuses a section
whose results file is missing or whose commit is not an ancestor of this
one, unless told to keep it, and a kept section says so.

Results are means ± standard deviations over the seeds listed, measured on
the test split, unless a section says otherwise (hyper-parameter selection
is reported on the validation split, where every choice was made); every
section also gives each seed's numbers. They are measurements at small
scale, not reproductions: each section's claims are judged when this page
is written, from the per-seed numbers in its results file, by one rule
(`experiments._common.judge`): the two-sided {100 * _common.CONFIDENCE:g} % Student-t interval over
the seeds of the claimed quantity (a paired difference, run − baseline of
the same seed, where two runs are compared) is "shown" when it lies wholly
on the claimed side of the claim's bound, "contradicted" when it lies
wholly on the other side, otherwise "within the seed spread". A claim is
called reproduced only where it is shown; elsewhere the section says "not
shown at this scale", with the reason.
"""

NOTE_MARK = '> **Provenance'
# How a section with no results file and no earlier text begins.
NOT_RUN = 'Not run yet'


def _section(title: str, body: str) -> str:
  return f'## {title}\n\n{body.strip()}\n'


def _existing_sections(text: str) -> dict[str, str]:
  """Title -> body of each ``## `` section of `text`, without provenance notes."""
  sections, title, lines = {}, None, []
  for line in text.splitlines() + ['## ']:
    if line.startswith('## '):
      if title is not None:
        kept = [l for l in '\n'.join(lines).split('\n\n') if not l.startswith(NOTE_MARK)]
        sections[title] = '\n\n'.join(kept).strip()
      title, lines = line[3:].strip(), []
    elif title is not None:
      lines.append(line)
  return sections


def commit_problem(provenance: dict | None, repo: str = REPO) -> str | None:
  """Why a results file's commit cannot be checked against HEAD, or None if it can."""
  if not provenance:
    return 'the results file records no provenance'
  commit = (provenance.get('git') or {}).get('commit')
  if not commit:
    return 'the results file records no git commit'
  done = subprocess.run(['git', '-C', repo, 'merge-base', '--is-ancestor', commit, 'HEAD'],
                        capture_output=True, text=True, check=False)
  if done.returncode != 0:
    return f'its recorded commit {commit[:12]} is not an ancestor of HEAD'
  return None


def _provenance_lines(provenance: dict) -> list[str]:
  git, versions, machine = provenance['git'], provenance['versions'], provenance['machine']
  tree = ('with uncommitted changes to ' + ', '.join(f'`{f}`' for f in git['changed_files'])
          if git['dirty'] else 'clean tree')
  libraries = ', '.join(f'{name} {version}' for name, version in versions.items())
  devices = machine['jax_devices']
  return [
      f"Commit `{git['commit'][:12]}` ({tree}); config hash `{provenance['config_hash'][:12]}`.",
      '',
      f"Versions: {libraries}. Machine: {machine['platform']}, {machine['cpu_count']} CPUs "
      f"({machine['cpu']}), JAX {machine['jax_backend']} with {len(devices)} device"
      f"{'s' if len(devices) != 1 else ''} ({devices[0] if devices else 'none'}).",
      '',
      f"Command: `{shlex.join(provenance['command'])}`",
  ]


def render(results: dict, formatter, results_path: str, claims=None) -> str:
  """A section's body: the formatter's tables, the claims, then seeds, time and provenance."""
  config = results['config']
  seeds = ', '.join(str(s) for s in config['seeds'])
  finished = 'date not recorded'  # runs recorded before their experiment wrote it
  if 'finished' in results:
    when = datetime.datetime.fromtimestamp(results['finished'], datetime.timezone.utc)
    finished = f'finished {when:%Y-%m-%d}'
  lines = [
      formatter(results),
      '',
      claims_text(results, claims),
      '',
      f"Seeds: {seeds}. Wall time: {results['wall_seconds']:.0f} s ({finished}).",
      '',
  ]
  if results.get('provenance'):
    lines += _provenance_lines(results['provenance'])
  lines += ['', f'Results file: `{results_path}`.']
  notes = results.get('notes')
  if notes:
    lines += ['', notes]
  return '\n'.join(lines)


NO_CLAIMS = ('No claim of the paper is judged in this section: it records a selection on the '
             'validation split, one seed per point.')
NO_PER_SEED = ('This results file records no per-seed numbers, so no claim can be judged here; '
               'rerun the experiment and record it.')


def claims_text(results: dict, claims) -> str:
  """The section's claims table, judged from the recorded per-seed numbers, or why there is none."""
  if claims is None:
    return NO_CLAIMS
  if not results.get('per_seed'):
    return NO_PER_SEED
  return '\n'.join(_common.claims_table(claims(results)))


def record(run_dir: str, results_dir: str) -> str:
  """Copies ``<run_dir>/results.json`` to ``<results_dir>/<name>.json``; returns that path."""
  name = os.path.basename(os.path.normpath(run_dir))
  if name not in NAMES:
    raise SystemExit(f'--record {run_dir}: the workdir must be named after an experiment, '
                     f'one of {list(NAMES)}')
  source = os.path.join(run_dir, 'results.json')
  if not os.path.exists(source):
    raise SystemExit(f'--record {run_dir}: no {source} (has the run finished?)')
  with open(source, encoding='utf-8') as f:
    if 'provenance' not in json.load(f):
      raise SystemExit(f'--record {run_dir}: {source} records no provenance; rerun it')
  os.makedirs(results_dir, exist_ok=True)
  target = os.path.join(results_dir, f'{name}.json')
  shutil.copyfile(source, target)
  return target


def build(results_dir: str, old_text: str, keep: set[str]) -> tuple[list[str], list[str]]:
  """The sections, and the errors (sections neither checkable nor kept)."""
  existing = _existing_sections(old_text)
  sections, errors = [], []
  for name, title, command, formatter, claims in EXPERIMENTS:
    path = os.path.join(results_dir, f'{name}.json')
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        results = json.load(f)
      problem = commit_problem(results.get('provenance'))
      body = render(results, formatter, path, claims)
    else:
      problem = f'no results file {path}'
      body = existing.get(title) or f'{NOT_RUN}: `{command}`.'
    if problem is None:
      print(f'{name}: from {path}')
    elif name in keep:
      print(f'{name}: KEPT with --keep {name}: {problem}')
      if os.path.exists(path):
        note = f'{NOTE_MARK} not checked**: {problem}.'
      elif body.startswith(NOT_RUN):  # no run now, nor when the page was last written
        note = (f'{NOTE_MARK} not run yet**: there is no results file `{path}` and no '
                'earlier section, so there are no numbers here.')
      else:
        note = (f'{NOTE_MARK} not recorded (run predates provenance)**: there is no '
                f'results file `{path}`, so the commit, command and config behind these '
                'numbers cannot be checked.')
      body += f'\n\n{note} Kept with `--keep {name}`.'
    else:
      errors.append(f'{title} ({name}): {problem}; rerun it and --record its workdir, '
                    f'or pass --keep {name}')
    sections.append(_section(title, body))
  return sections, errors


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--results', default=RESULTS, help='the committed results files')
  parser.add_argument('--out', default=os.path.join('docs', 'results.md'))
  parser.add_argument('--record', action='append', default=[], metavar='RUNDIR',
                      help="copy a finished run's results.json into --results first")
  parser.add_argument('--keep', action='append', default=[], choices=NAMES,
                      help='write this section with a note instead of failing on it')
  args = parser.parse_args(argv)
  for run_dir in args.record:
    print(f'recorded {record(run_dir, args.results)}')
  old = ''
  if os.path.exists(args.out):
    with open(args.out, encoding='utf-8') as f:
      old = f.read()
  sections, errors = build(args.results, old, set(args.keep))
  if errors:
    for error in errors:
      print(f'make_results: {error}', file=sys.stderr)
    raise SystemExit(f'make_results: {len(errors)} section(s) cannot be checked; '
                     f'{args.out} not written')
  with open(args.out, 'w', encoding='utf-8') as f:
    f.write(HEADER + '\n' + '\n'.join(sections))
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
