"""Chunked vs plain large-vocabulary forward KL: memory and time of loss + grad.

Both variants compute the token-weighted mean forward KL between a student's
and a teacher's next-token distributions at every position of a ``[batch,
time]`` batch, from final hidden states ``[batch, time, hidden]`` and
unembedding matrices ``[hidden, vocab]``, and its gradient with respect to
the student's hidden states and unembedding, in one ``jax.jit``:

* plain: ``logits = hidden @ unembedding`` for both models, then
  ``kdjax.losses.token_divergence`` (the ``[batch, time, vocab]`` logits of
  both models, their softmaxes and gradients are materialised);
* chunked: ``kdjax.losses.chunked_divergence`` (``token_chunk`` tokens at a
  time, the backward pass recomputing each chunk's logits).

Each variant runs in its own subprocess, and so does a *baseline* that does
everything but the loss (imports, the same inputs, a jitted function with
outputs of the same shapes). The memory a step costs is the process's peak
resident memory during the timed calls (``VmHWM`` in ``/proc/self/status``,
reset through ``/proc/self/clear_refs`` after the inputs were made, the
function compiled and run once) minus its resident memory just before them;
the loss's is that minus the baseline's (its outputs). Making the inputs
(random normal draws) peaks above a small loss's step, so the whole
process's ``ru_maxrss`` would hide it. XLA's temporary allocation comes from
the compiled function's ``memory_analysis().temp_size_in_bytes``, read
before running: a
variant whose arguments + temporaries exceed ``--max-gib`` is not run. The
step time is the median over ``--repeats`` calls after one warm-up call. The
parent checks that both variants give the same loss.

Usage::

  python benchmarks/chunked_vocab.py                      # vocab 32000 and 128000
  python benchmarks/chunked_vocab.py --vocabs 32000 --repeats 3
  python benchmarks/chunked_vocab.py --plain-compile-only-vocabs 128000
  python benchmarks/chunked_vocab.py --write-docs         # update docs/performance.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import gc
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _docs  # pylint: disable=wrong-import-position

DOCS = ROOT / 'docs' / 'performance.md'
SECTION = '## Chunked large-vocabulary divergences'
MEMORY_GOAL = 16.0
TIME_GOAL = 1.0
GIB = 1024**3


# ----------------------------------------------------------------------------
# Worker: one variant in this process.


def _inputs(args, vocab):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  shape = (args.batch, args.time)
  student_hidden = jax.random.normal(keys[0], shape + (args.hidden,))
  teacher_hidden = jax.random.normal(keys[1], shape + (args.hidden,))
  scale = args.hidden**-0.5
  student_unembedding = jax.random.normal(keys[2], (args.hidden, vocab)) * scale
  teacher_unembedding = jax.random.normal(keys[3], (args.hidden, vocab)) * scale
  # About 10% padding, as in a batch of packed sequences of uneven length.
  mask = jax.random.bernoulli(keys[4], 0.9, shape)
  return (student_hidden, student_unembedding, teacher_hidden,
          teacher_unembedding, mask)


def _loss_fn(variant, args):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from kdjax import losses  # pylint: disable=g-import-not-at-top

  def per_token(hidden, unembedding, teacher_hidden, teacher_unembedding, mask):
    if variant == 'plain':
      return losses.token_divergence(
          jnp.dot(hidden, unembedding), jnp.dot(teacher_hidden, teacher_unembedding),
          divergence='forward_kl', temperature=args.temperature, token_mask=mask)
    return losses.chunked_divergence(
        hidden, unembedding, teacher_hidden, teacher_unembedding,
        divergence='forward_kl', temperature=args.temperature, token_mask=mask,
        token_chunk=args.token_chunk)

  def loss(hidden, unembedding, teacher_hidden, teacher_unembedding, mask):
    values = per_token(hidden, unembedding, teacher_hidden, teacher_unembedding,
                       mask)
    return losses.token_mean(values, mask)

  if variant == 'baseline':
    def no_loss(hidden, unembedding, teacher_hidden, teacher_unembedding, mask):
      del teacher_hidden, teacher_unembedding, mask
      return jnp.zeros(()), (jnp.zeros_like(hidden), jnp.zeros_like(unembedding))
    return no_loss
  return jax.value_and_grad(loss, argnums=(0, 1))


def worker(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  inputs = _inputs(args, args.vocab)
  jax.block_until_ready(inputs)
  start = time.perf_counter()
  compiled = jax.jit(_loss_fn(args.worker, args)).lower(*inputs).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  temp = int(analysis.temp_size_in_bytes)
  needed = temp + int(analysis.argument_size_in_bytes) + int(
      analysis.output_size_in_bytes)
  result = {'variant': args.worker, 'vocab': args.vocab, 'temp_bytes': temp,
            'needed_bytes': needed, 'compile_s': compile_s}
  if args.no_run:
    result.update(skipped=True, why='compiled only')
    return result
  if needed > args.max_gib * GIB:
    result.update(skipped=True, why=f'not run (needs {needed / GIB:.1f} GiB)')
    return result
  outputs = jax.block_until_ready(compiled(*inputs))
  loss = float(outputs[0])
  del outputs
  gc.collect()
  before = _reset_peak_rss()
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*inputs))  # the outputs are freed at once
    times.append(time.perf_counter() - start)
  result.update(
      skipped=False,
      loss=loss,
      step_s=float(np.median(times)),
      step_s_all=times,
      step_rss_bytes=_peak_rss() - before,
  )
  return result


def _status_bytes(key: str) -> int:
  """A ``/proc/self/status`` memory line (kilobytes) in bytes."""
  with open('/proc/self/status', encoding='ascii') as status:
    for line in status:
      if line.startswith(key + ':'):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f'no {key} in /proc/self/status')


def _reset_peak_rss() -> int:
  """Resets the peak resident memory to the current one, which it returns."""
  with open('/proc/self/clear_refs', 'w', encoding='ascii') as clear_refs:
    clear_refs.write('5')
  return _status_bytes('VmRSS')


def _peak_rss() -> int:
  return _status_bytes('VmHWM')


# ----------------------------------------------------------------------------
# Parent: one subprocess per variant, table, docs.


def run_variant(variant, vocab, args, token_chunk=None) -> dict:
  command = [sys.executable, __file__, '--worker', variant, '--vocab',
             str(vocab)] + _forwarded_argv()
  if token_chunk is not None:
    command += ['--token-chunk', str(token_chunk)]
  if vocab in args.compile_only_vocabs or (
      variant == 'plain' and vocab in args.plain_compile_only_vocabs):
    command.append('--no-run')
  out = subprocess.run(command, check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _forwarded_argv() -> list[str]:
  """This run's arguments for a worker: without --write-docs and --token-chunks."""
  argv, skip = [], False
  for arg in sys.argv[1:]:
    if skip:
      skip = False
      continue
    if arg == '--token-chunks':
      skip = True
      continue
    if arg == '--write-docs' or arg.startswith('--token-chunks='):
      continue
    argv.append(arg)
  return argv


def _chunked_name(token_chunk: int) -> str:
  return f'chunked {token_chunk}'


def _mib(x):
  return f'{x / 2**20:,.0f}'


def table(results, args) -> tuple[str, list[str]]:
  lines = [
      '| vocab | variant | XLA temp MiB | step RSS - baseline MiB | step s '
      '(median) | compile s | memory ratio plain/chunked (temp; RSS) | '
      'time ratio chunked/plain |',
      '|---:|---|---:|---:|---:|---:|---:|---:|',
  ]
  verdicts = []
  for vocab in args.vocabs:
    base, plain = results[(vocab, 'baseline')], results[(vocab, 'plain')]
    rows = [('plain', plain, ['', ''])]
    for token_chunk in args.token_chunks:
      name = _chunked_name(token_chunk)
      chunked = results[(vocab, name)]
      if not plain['skipped'] and not chunked['skipped']:
        plain_rss = plain['step_rss_bytes'] - base['step_rss_bytes']
        chunked_rss = chunked['step_rss_bytes'] - base['step_rss_bytes']
        temp_ratio = plain['temp_bytes'] / max(chunked['temp_bytes'], 1)
        rss_ratio = plain_rss / max(chunked_rss, 1)
        time_ratio = chunked['step_s'] / plain['step_s']
        cells = [f'{temp_ratio:.1f}x; {rss_ratio:.1f}x', f'{time_ratio:.2f}']
        memory_ok = min(temp_ratio, rss_ratio) >= MEMORY_GOAL
        time_ok = time_ratio <= TIME_GOAL
        verdicts.append(
            f'vocab {vocab}, token_chunk {token_chunk}: {min(temp_ratio, rss_ratio):.1f}x '
            f'less memory ({"meets" if memory_ok else "misses"} the {MEMORY_GOAL:.0f}x goal) '
            f'at {time_ratio:.2f}x the time ({"meets" if time_ok else "misses"} the '
            f'{TIME_GOAL} goal)')
      else:
        temp_ratio = plain['temp_bytes'] / max(chunked['temp_bytes'], 1)
        cells = [f'{temp_ratio:.1f}x; -', '']
        why = ', '.join(f'{name} {r["why"]}' for name, r in (
            ('plain', plain), ('chunked', chunked)) if r['skipped'])
        verdicts.append(
            f'vocab {vocab}, token_chunk {token_chunk}: {temp_ratio:.1f}x less XLA temp '
            f'memory ({why}: RSS and time ratios not measured)')
      rows.append((name, chunked, cells))
    for name, r, extra in rows:
      if r['skipped']:
        cells = [_mib(r['temp_bytes']), r['why'], '', f'{r["compile_s"]:.1f}']
      else:
        cells = [_mib(r['temp_bytes']),
                 _mib(r['step_rss_bytes'] - base['step_rss_bytes']),
                 f'{r["step_s"]:.2f}', f'{r["compile_s"]:.1f}']
      lines.append(f'| {vocab} | {name} | ' + ' | '.join(cells + extra) + ' |')
  return '\n'.join(lines), verdicts


def docs_section(body, verdicts, args) -> str:
  from kdjax import writers  # pylint: disable=g-import-not-at-top

  env = writers.environment()
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  end = os.getloadavg()
  load = (', '.join(f'{x:.2f}' for x in end) + f'; 1-minute load average '
          f'{args.load_at_start:.2f} at the start, {end[0]:.2f} at the end')
  # The run itself keeps both cores busy (a load of about 2 by its end):
  # what counts is the load it started at.
  busy = (' (other processes were running: the timings are noisy; the memory '
          'figures are not)' if args.load_at_start > 1.5 or end[0] > 3.5 else '')
  command = ' '.join(['python benchmarks/chunked_vocab.py'] + sys.argv[1:])
  return f"""{SECTION}

Generated by `benchmarks/chunked_vocab.py`; do not edit by hand.

Loss + gradient of the token-weighted mean forward KL (T = {args.temperature})
between a student's and a teacher's next-token distributions, from final
hidden states `[{args.batch}, {args.time}, {args.hidden}]` and unembeddings
`[{args.hidden}, vocab]`, about 10% of the tokens masked, gradients with
respect to the student's hidden states and unembedding, in one `jax.jit`.
*plain* computes `hidden @ unembedding` for both models and
`losses.token_divergence` (which computes each row's gradient in the
forward pass); *chunked N* is `losses.chunked_divergence` with
`token_chunk=N`: each chunk's logits are computed once, and its gradients
with respect to the hidden states and the unembedding come from the same
block in the forward pass (the backward pass scales them). Each variant ran
in its own process. *XLA temp* is the compiled
function's `memory_analysis().temp_size_in_bytes`; *step RSS - baseline* is
the peak resident memory during the timed calls over that just before them
(`VmHWM` reset through `/proc/self/clear_refs`), minus the same for a
process doing everything but the loss (whose outputs have the same shapes);
the step time is the median of
{args.repeats} calls after a warm-up call. Both variants were checked to
give the same loss. Vocabularies given in `--compile-only-vocabs` were
compiled but not run (too slow for the busy machine), and so was the plain
loss at those in `--plain-compile-only-vocabs`: only their XLA temporary
memory is reported. Goal: at least {MEMORY_GOAL:.0f}x less memory at no more
than {TIME_GOAL}x the time.

* Command: `{command}`
* Date: {date}
* JAX {env['jax_version']}, backend {env['backend']}, {env['devices']}
* Machine: {env['machine']}, load average {load}{busy}
* Result: {'; '.join(verdicts)}

{body}
"""


def write_docs(section: str, path: pathlib.Path = DOCS) -> None:
  """Replaces (or appends) this benchmark's section, keeping the rest of the page."""
  _docs.write_section(SECTION, section, path)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--vocabs', default='32000,128000',
                      type=lambda s: [int(v) for v in s.split(',')])
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--time', type=int, default=1024)
  parser.add_argument('--hidden', type=int, default=512)
  parser.add_argument('--temperature', type=float, default=2.0)
  parser.add_argument('--token-chunk', type=int, default=128, help=argparse.SUPPRESS)
  parser.add_argument('--token-chunks', default='128,256,512',
                      type=lambda s: [int(v) for v in s.split(',')],
                      help='token_chunk values of the chunked variant, one row each')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--max-gib', type=float, default=16.0,
                      help='skip a variant needing more (arguments + temp)')
  parser.add_argument('--compile-only-vocabs', default='',
                      type=lambda s: [int(v) for v in s.split(',') if v],
                      help='vocabularies only compiled (XLA temp memory, no '
                      'run): for a machine too slow or too busy to time them')
  parser.add_argument('--plain-compile-only-vocabs', default='',
                      type=lambda s: [int(v) for v in s.split(',') if v],
                      help='vocabularies at which the plain loss is only '
                      'compiled (the chunked ones run): its XLA temp memory '
                      'is compared, not its time or RSS')
  parser.add_argument('--write-docs', action='store_true')
  parser.add_argument('--worker', choices=('baseline', 'plain', 'chunked'),
                      help=argparse.SUPPRESS)
  parser.add_argument('--vocab', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--no-run', action='store_true', help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    print(json.dumps(worker(args)))
    return
  results = {}
  args.load_at_start = os.getloadavg()[0]
  args.vocabs = args.vocabs + [
      v for v in args.compile_only_vocabs if v not in args.vocabs]
  for vocab in args.vocabs:
    runs = [('baseline', 'baseline', None), ('plain', 'plain', None)] + [
        (_chunked_name(c), 'chunked', c) for c in args.token_chunks]
    for name, variant, token_chunk in runs:
      results[(vocab, name)] = run_variant(variant, vocab, args, token_chunk)
      print(f'vocab {vocab} {name}: {results[(vocab, name)]}', file=sys.stderr, flush=True)
    plain = results[(vocab, 'plain')]
    for token_chunk in args.token_chunks:
      chunked = results[(vocab, _chunked_name(token_chunk))]
      if not plain['skipped'] and not chunked['skipped']:
        if abs(plain['loss'] - chunked['loss']) > 1e-4 * max(abs(plain['loss']), 1):
          raise SystemExit(f'losses differ at vocab {vocab}: plain '
                           f'{plain["loss"]} vs chunked {chunked["loss"]}')
  body, verdicts = table(results, args)
  print(body)
  print('\n'.join(verdicts))
  if args.write_docs:
    write_docs(docs_section(body, verdicts, args))
    print(f'wrote {SECTION!r} in {DOCS}')


if __name__ == '__main__':
  main()
