"""Speculative decoding of a trained translation teacher with its distilled students as drafts.

Reads a finished ``experiments/seqkd.py`` run (``--workdir``, default
``runs/seqkd_cpu``): the teacher's and the students' kept variables
(``best_variables.msgpack``) and the test sources of its data. The
teacher is decoded greedily (``make_generate``) and speculatively
(``make_speculative_generate``, ``Greedy()``) with each student as the
draft; the tokens must equal the teacher's (checked), and the script
reports the acceptance rate (accepted / proposed draft tokens), target
tokens per teacher call and the wall-clock speed-up against plain teacher
greedy decoding measured in the same run. A student distilled at the
sequence level was trained on the teacher's own beam outputs, so it should
propose what the teacher would write more often than the labels-only
student does.

The models use sinusoidal positions (no parameters), so they are rebuilt
with room for the ``draft_tokens - 1`` positions speculative decoding looks
past the last one; the variables are the run's own.

Usage::

  nice python benchmarks/speculative_seqkd.py [--workdir runs/seqkd_cpu] [--write-docs]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import _lm_common as common  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from flax import serialization  # pylint: disable=wrong-import-position

from experiments import seqkd as experiment  # pylint: disable=wrong-import-position
from kdjax import generate as gen  # pylint: disable=wrong-import-position
from kdjax import zoo  # pylint: disable=wrong-import-position

SECTION = '## Speculative decoding of the seq-KD teacher'
DRAFTS = ('seq_kd', 'baseline', 'word_kd', 'seq_interp')


def _variables(path: str) -> Any:
  with open(path, 'rb') as f:
    return serialization.msgpack_restore(f.read())['variables']


def _run_dir(workdir: str, variant: str, results: dict) -> str:
  weight = results.get('selection', {}).get(variant, {}).get('chosen')
  sub = variant if weight is None else os.path.join(variant, f'weight{weight:g}')
  return os.path.join(workdir, sub, f"seed{results['config']['seeds'][0]}")


def _decoder(model_cfg: zoo.Seq2SeqConfig, extra: int) -> gen.Decoder:
  cfg = dataclasses.replace(model_cfg, max_target_len=model_cfg.max_target_len + extra)
  return zoo.seq2seq_decoder(zoo.Seq2SeqTransformer(cfg))


def _median_time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    tick = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - tick)
  return common.median(times)


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/seqkd_cpu')
  parser.add_argument('--draft-tokens', default='2,4')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--batches', type=int, default=4, help='test batches decoded')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--max-load', type=float, default=1.0)
  parser.add_argument('--force', action='store_true')
  parser.add_argument('--write-docs', action='store_true')
  args = parser.parse_args(argv)
  load_before = os.getloadavg()
  if load_before[0] > args.max_load and not args.force:
    raise SystemExit(f'load average {load_before[0]:.2f} is above --max-load {args.max_load}')
  with open(os.path.join(args.workdir, 'results.json')) as f:
    results = json.load(f)
  config = ml_collections.ConfigDict(results['config'])
  splits, _, info = experiment.load_data(config)
  test = splits['test']
  vocab = info['vocab_size']
  gammas = tuple(int(g) for g in args.draft_tokens.split(','))
  extra = max(gammas) - 1
  teacher_cfg = experiment.model_config(config.teacher, vocab, config.data)
  student_cfg = experiment.model_config(config.student, vocab, config.data)
  teacher_vars = _variables(os.path.join(args.workdir, 'teacher', 'best_variables.msgpack'))
  new_tokens = config.data.max_target_len
  target = _decoder(teacher_cfg, extra)
  greedy = gen.make_generate(target, max_new_tokens=new_tokens, eos_id=experiment.EOS,
                             pad_id=experiment.PAD)
  num = min(args.batches * args.batch, len(test['source']))
  batches = [{'source': test['source'][i:i + args.batch],
              'source_mask': test['source_mask'][i:i + args.batch]}
             for i in range(0, num - args.batch + 1, args.batch)]
  bos = np.full((args.batch, 1), experiment.BOS, np.int32)
  reference = [greedy(teacher_vars, bos, inputs=b) for b in batches]
  teacher_seconds = _median_time(
      lambda: [greedy(teacher_vars, bos, inputs=b) for b in batches], args.repeats)
  rows = []
  for variant in DRAFTS:
    path = os.path.join(_run_dir(args.workdir, variant, results), 'best_variables.msgpack')
    if not os.path.exists(path):
      continue
    draft_vars = _variables(path)
    for gamma in gammas:
      spec = gen.make_speculative_generate(
          target, _decoder(student_cfg, extra), max_new_tokens=new_tokens,
          draft_tokens=gamma, eos_id=experiment.EOS, pad_id=experiment.PAD)
      outs = [spec(teacher_vars, draft_vars, bos, inputs=b, draft_inputs=b) for b in batches]
      equal = all(np.array_equal(o.tokens, r.tokens) for o, r in zip(outs, reference))
      seconds = _median_time(
          lambda: [spec(teacher_vars, draft_vars, bos, inputs=b, draft_inputs=b)
                   for b in batches], args.repeats)
      accepted = sum(int(o.accepted.sum()) for o in outs)
      proposed = sum(int(o.proposed.sum()) for o in outs)
      made = sum(int(o.lengths.sum()) for o in outs)
      calls = sum(int(o.rounds.sum()) for o in outs)
      rows.append({'draft': variant, 'draft_tokens': gamma, 'acceptance': accepted / proposed,
                   'tokens_per_call': made / calls, 'seconds': seconds,
                   'speedup': teacher_seconds / seconds, 'equal': equal})
      print(f"{variant:>12} draft_tokens={gamma}: acceptance {accepted / proposed:.1%}, "
            f"{made / calls:.2f} tokens per teacher call, {seconds:.3f} s vs teacher "
            f"{teacher_seconds:.3f} s: {teacher_seconds / seconds:.2f}x; tokens equal: {equal}")
  load_after = os.getloadavg()
  out = {'teacher_seconds': teacher_seconds, 'rows': rows, 'sources': len(batches) * args.batch,
         'load_before': load_before, 'load_after': load_after}
  if args.write_docs:
    common.write_section(SECTION, docs_section(out, args, results, argv))
    print(f'wrote the "{SECTION}" section of {common.DOCS}')
  return out


def docs_section(out, args, results, argv) -> str:
  commit = results['provenance']['git']['commit'][:12]
  lines = [
      SECTION, '',
      'Generated by `benchmarks/speculative_seqkd.py`; do not edit by hand.', '',
      f"The teacher of the seq-KD experiment (run of commit `{commit}`, "
      f"`{args.workdir}`; Transformer 3+3 x 128) decoded greedily from "
      f"{out['sources']} test sources in batches of {args.batch}, plain and speculatively "
      'with a student of the same run (1+1 x 64, first seed, its kept epoch) as the draft. '
      'Speculative greedy decoding returns the teacher\'s greedy tokens exactly (checked '
      'below); acceptance is accepted / proposed draft tokens; speed-up is plain teacher '
      'time / speculative time, medians of the same run.', '',
      f"* Command: `{common.command_line('speculative_seqkd.py', argv or sys.argv[1:])}`",
      f'* Date: {common.now()}',
      f'* {common.versions()}',
      f"* Load average at the start {', '.join(f'{x:.2f}' for x in out['load_before'])}, "
      f"at the end {', '.join(f'{x:.2f}' for x in out['load_after'])}",
      f"* Teacher greedy: {out['teacher_seconds']:.3f} s", '',
  ]
  best = max(out['rows'], key=lambda r: r['speedup'])
  summary = (
      f"Best: {experiment.VARIANT_NAMES[best['draft']]} with {best['draft_tokens']} draft "
      f"tokens, {best['acceptance']:.1%} accepted, {best['speedup']:.2f}x the plain teacher's "
      'speed' + (' (slower: speculative decoding does not pay here; it needs a draft that is '
                 'much cheaper per call than the target and agrees with it far more often, '
                 'and this teacher is small and its students weak).' if best['speedup'] < 1
                 else '.'))
  by_draft = {}
  for r in out['rows']:
    by_draft.setdefault(r['draft'], []).append(r['acceptance'])
  if 'seq_kd' in by_draft and 'baseline' in by_draft:
    diff = np.mean(by_draft['seq_kd']) - np.mean(by_draft['baseline'])
    summary += (f" The seq-KD student's acceptance minus the labels-only student's, averaged "
                f"over the draft lengths: {100 * diff:+.1f} points (one seed).")
  rows = [[experiment.VARIANT_NAMES[r['draft']], str(r['draft_tokens']),
           f"{r['acceptance']:.1%}", f"{r['tokens_per_call']:.2f}", f"{r['seconds']:.3f}",
           f"{r['speedup']:.2f}x", str(r['equal'])] for r in out['rows']]
  table = common.markdown_table(
      ['draft (student)', 'draft tokens', 'acceptance', 'tokens per teacher call', 'seconds',
       'speed-up', 'tokens equal'], rows)
  return '\n'.join(lines + [table, '', summary]) + '\n'


if __name__ == '__main__':
  main()
