"""The offline teacher cache on the LM experiment's teacher: bytes, sparse-loss bias, step time.

Builds the teacher and the student of ``experiments/lm_kd.py`` from
``experiments/configs/lm_kd.py:cpu`` (a byte-level DecoderLM, vocabulary
256, context 128) on its Python-stdlib text. The teacher is read from
``--teacher-checkpoint`` (an ``lm_kd`` run's ``teacher/final``), or from
``<workdir>/teacher`` written by an earlier run of this script, or else
trained here for ``--teacher-steps`` steps on the labels (and saved there);
the student is trained ``--student-steps`` steps on the labels, so that it
is neither random nor the teacher. Then:

* bytes/token of every storage format (log-prob format x index encoding)
  at k = 8, 32, 128, as computed from the format and as measured on disk
  for the caches written here, plus what a V = 32,000 and a V = 128,000
  vocabulary would take;
* on the held-out (validation) windows, cached with ``kdjax.cache.write_cache``
  for every k and log-prob format and read back with ``TeacherCache``: the
  mean per-token full-logit forward KL(teacher || student), the tail-bucket
  and renormalised sparse KLs (``losses.topk_kl_divergence``) and their mean
  absolute per-token difference to the full KL, and the teacher's mean
  mass outside its top-k;
* on one batch of ``--batch`` windows, the median time of the online-teacher
  train step (``token_distill('forward_kl')``, the teacher run in the
  step), the cached-teacher train step (``cached_teacher_apply`` +
  ``cached_token_distill``, same student, same batch), the teacher's forward
  alone, and reading + dequantising the batch from the cache; all as ratios
  to the online step of the same run.

Usage::

  nice python benchmarks/cache.py [--teacher-checkpoint runs/lm_kd_cpu/teacher/final]
  nice python benchmarks/cache.py --write-docs     # update docs/performance.md
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import _lm_common as common  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from experiments import lm_kd  # pylint: disable=wrong-import-position
from experiments.configs import lm_kd as lm_kd_config  # pylint: disable=wrong-import-position
from kdjax import cache  # pylint: disable=wrong-import-position
from kdjax import checkpoint  # pylint: disable=wrong-import-position
from kdjax import losses  # pylint: disable=wrong-import-position
from kdjax import objective as objective_lib  # pylint: disable=wrong-import-position
from kdjax import step as step_lib  # pylint: disable=wrong-import-position

SECTION = '## Offline teacher cache'
OTHER_VOCABS = (32000, 128000)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', default='runs/bench_cache')
  parser.add_argument('--teacher-checkpoint', default='',
                      help="a trained teacher (an lm_kd run's teacher/final)")
  parser.add_argument('--teacher-steps', type=int, default=300)
  parser.add_argument('--student-steps', type=int, default=100)
  parser.add_argument('--ks', default='8,32,128', type=lambda s: [int(v) for v in s.split(',')])
  parser.add_argument('--formats', default=','.join(cache.LOG_PROB_FORMATS),
                      type=lambda s: s.split(','), help='log-prob formats cached and scored')
  parser.add_argument('--modes', default=','.join(losses.TOPK_MODES),
                      type=lambda s: s.split(','), help='sparse losses whose cached step is timed')
  parser.add_argument('--eval-windows', type=int, default=128,
                      help='held-out windows cached and scored')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--tiny', action='store_true',
                      help='toy models and data: checks the script runs (seconds)')
  parser.add_argument('--write-docs', action='store_true')
  return parser.parse_args(argv)


def experiment_config(args):
  config = lm_kd_config.get_config('cpu')
  if args.tiny:
    config.data.train_bytes, config.data.val_bytes, config.data.test_bytes = 20_000, 8_000, 1
    config.data.context = 32
    for model in (config.teacher, config.student):
      model.num_layers, model.hidden, model.num_heads, model.mlp_dim = 1, 16, 2, 32
  return config


def _model(model_cfg, context: int, steps: int) -> lm_kd.Model:
  """lm_kd's Model with its learning-rate schedule spread over `steps` steps."""
  model_cfg = model_cfg.copy_and_resolve_references()
  model_cfg.epochs = 1
  return lm_kd.Model(model_cfg, context, max(steps, 1) * model_cfg.batch_size)


def train_on_labels(model: lm_kd.Model, train, steps: int, seed: int):
  """`steps` AdamW steps on the next-byte labels, batches drawn at random."""
  objective = lm_kd.make_objective('labels', None)
  step = jax.jit(step_lib.make_train_step(model.apply, None, objective, model.optimizer),
                 donate_argnums=0)
  state = model.init(jax.random.PRNGKey(seed))
  if not steps:
    return state
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    rows = rng.integers(0, len(train['tokens']), model.cfg.batch_size)
    state, _ = step(state, None, {k: train[k][rows] for k in lm_kd.TRAIN_KEYS})
  return state


def load_or_train_teacher(args, model: lm_kd.Model, train) -> tuple[Any, str]:
  target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)).variables)
  if args.teacher_checkpoint:
    return checkpoint.load_teacher(args.teacher_checkpoint, target), args.teacher_checkpoint
  saved = os.path.join(args.workdir, 'teacher')
  if os.path.isdir(saved) and not args.tiny:
    return checkpoint.load_teacher(saved, target), f'{saved} (trained by an earlier run)'
  start = time.perf_counter()
  variables = train_on_labels(model, train, args.teacher_steps, seed=0).variables
  seconds = time.perf_counter() - start
  if args.teacher_steps == 0:
    return variables, 'untrained (initialised, --teacher-steps 0)'
  if not args.tiny:
    checkpoint.save_teacher(saved, variables, overwrite=True)
  return variables, f'trained here: {args.teacher_steps} steps, {seconds:.0f} s'


def _median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return common.median(times)


def sparse_bias(args, teacher, teacher_variables, student, student_state, held_out, workdir):
  """Per (k, format): mean full / sparse KLs on the held-out windows, via written caches."""
  mask = held_out['mask'].astype(bool)
  teacher_logits = _logits(args.teacher_forward, teacher_variables, held_out, args.batch)
  student_logits = _logits(forward_fn(student.apply), student_state.variables, held_out,
                           args.batch)
  full = np.asarray(losses.kl_divergence(student_logits, teacher_logits))
  bits = {name: _bits_per_byte(logits, held_out)
          for name, logits in (('teacher', teacher_logits), ('student', student_logits))}
  rows, caches = [], {}
  for k in args.ks:
    for log_prob_format in args.formats:
      directory = os.path.join(workdir, f'k{k}_{log_prob_format}')
      start = time.perf_counter()
      spec = cache.write_cache(directory, teacher.apply, teacher_variables, held_out, k=k,
                               log_prob_format=log_prob_format, batch_size=args.batch,
                               examples_per_shard=1024, teacher_id='benchmark-teacher')
      write_seconds = time.perf_counter() - start
      teacher_cache = cache.TeacherCache(directory, expected=spec)
      caches[(k, log_prob_format)] = teacher_cache
      read = teacher_cache.read(range(len(teacher_cache)))
      on_disk = sum(os.path.getsize(os.path.join(directory, spec.shard_name(s)))
                    for s in range(spec.num_shards))
      row = {'k': k, 'format': log_prob_format, 'write_s': write_seconds,
             'disk_bytes_per_token': on_disk / (spec.num_examples * spec.time),
             'full': float(full[mask].mean()),
             'tail_mass': float(np.exp(read[cache.TAIL_KEY])[mask].mean())}
      for mode in losses.TOPK_MODES:
        sparse = np.asarray(losses.topk_kl_divergence(
            student_logits, read[cache.LOG_PROBS_KEY], read[cache.INDICES_KEY],
            read[cache.TAIL_KEY], mode=mode))
        row[mode] = float(sparse[mask].mean())
        row[f'{mode}_abs_diff'] = float(np.abs(sparse - full)[mask].mean())
      rows.append(row)
  return rows, caches, bits


def _bits_per_byte(logits: np.ndarray, arrays) -> float:
  """Token-weighted mean negative log-likelihood of the labels, in bits."""
  log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits)))
  nll = -np.take_along_axis(log_probs, arrays['labels'][..., None], -1)[..., 0]
  mask = arrays['mask'].astype(bool)
  return float(nll[mask].mean() / np.log(2.0))


def forward_fn(apply):
  """The jitted eval forward ``fn(variables, batch) -> logits``."""
  return jax.jit(lambda v, b: apply(v, b, train=False)[0].logits)


def _logits(fn, variables, arrays, batch_size):
  """The logits ``fn`` gives on every window, ``[windows, time, vocab]``."""
  parts = []
  for batch, real in lm_kd._padded_batches(arrays, batch_size):  # pylint: disable=protected-access
    parts.append(np.asarray(fn(variables, batch))[:real])
  return np.concatenate(parts)


def step_times(args, teacher, teacher_variables, student, student_state, held_out, caches):
  """Median seconds of the online and cached steps, the teacher forward and the cache read."""
  rows = np.arange(args.batch)
  batch = {key: jnp.asarray(held_out[key][rows]) for key in lm_kd.TRAIN_KEYS}
  k = max(args.ks)
  read = caches[(k, args.formats[0])].read(rows)
  cached_batch = {**batch, **{key: jnp.asarray(value) for key, value in read.items()}}
  online = jax.jit(step_lib.make_train_step(
      student.apply, teacher.apply,
      objective_lib.Objective({'kd': objective_lib.token_distill('forward_kl')}),
      student.optimizer))
  times = {'online step': _median_seconds(
      lambda: online(student_state, teacher_variables, batch)[1].values, args.repeats)}
  for mode in args.modes:
    cached = jax.jit(step_lib.make_train_step(
        student.apply, cache.cached_teacher_apply,
        objective_lib.Objective({'kd': objective_lib.cached_token_distill(mode)}),
        student.optimizer))
    times[f'cached step ({mode}, k = {k})'] = _median_seconds(
        lambda cached=cached: cached(student_state, None, cached_batch)[1].values, args.repeats)
  times['teacher forward alone'] = _median_seconds(
      lambda: args.teacher_forward(teacher_variables, batch), args.repeats)
  for log_prob_format in args.formats:
    teacher_cache = caches[(k, log_prob_format)]
    times[f'read + dequantise the batch ({log_prob_format}, k = {k})'] = _median_seconds(
        lambda c=teacher_cache: c.read(rows)[cache.LOG_PROBS_KEY], args.repeats)
  return times


def bytes_rows(ks) -> list[list[str]]:
  rows = []
  for k in ks:
    for log_prob_format in cache.LOG_PROB_FORMATS:
      for encoding in cache.INDEX_ENCODINGS:
        cells = [str(k), log_prob_format, encoding]
        for vocab in (256,) + OTHER_VOCABS:
          cells.append(f'{cache.bytes_per_token(min(k, vocab), vocab, log_prob_format, encoding):g}')
        rows.append(cells)
  return rows


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  load_before = os.getloadavg()
  start = time.perf_counter()
  config = experiment_config(args)
  arrays = lm_kd.load_arrays(config)
  train = {key: arrays['train'][key] for key in lm_kd.TRAIN_KEYS}
  held_out = {key: arrays['val'][key][:args.eval_windows] for key in lm_kd.TRAIN_KEYS}
  args.batch = min(args.batch, len(held_out['tokens']))
  context = config.data.context
  teacher = _model(config.teacher, context, args.teacher_steps)
  student = _model(config.student, context, args.student_steps)
  teacher_variables, teacher_source = load_or_train_teacher(args, teacher, train)
  student_state = train_on_labels(student, train, args.student_steps, seed=1)
  args.teacher_forward = forward_fn(teacher.apply)
  workdir = tempfile.mkdtemp(prefix='kdjax_cache_bench_')
  try:
    bias, caches, bits = sparse_bias(args, teacher, teacher_variables, student, student_state,
                               held_out, workdir)
    times = step_times(args, teacher, teacher_variables, student, student_state, held_out,
                       caches)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  out = {'bias': bias, 'times': times, 'bits': bits, 'teacher_source': teacher_source,
         'windows': len(held_out['tokens']), 'tokens': int(held_out['mask'].sum()),
         'context': context, 'load_before': load_before, 'load_after': os.getloadavg(),
         'seconds': time.perf_counter() - start}
  text = report(out, args, argv)
  print(text)
  if args.write_docs:
    common.write_section(SECTION, text)
    print(f'wrote {SECTION!r} in {common.DOCS}')
  return out


def report(out, args, argv) -> str:
  loads = [', '.join(f'{x:.2f}' for x in out[key]) for key in ('load_before', 'load_after')]
  bytes_table = common.markdown_table(
      ['k', 'log-probs', 'indices', 'V = 256', 'V = 32,000', 'V = 128,000'], bytes_rows(args.ks))
  disk = {(r['k'], r['format']): r['disk_bytes_per_token'] for r in out['bias']}
  bias_rows = [[str(r['k']), r['format'], f"{disk[(r['k'], r['format'])]:.1f}",
                f"{r['tail_mass']:.4f}", f"{r['full']:.4f}", f"{r['tail']:.4f}",
                f"{r['tail'] / r['full']:.3f}", f"{r['tail_abs_diff']:.4f}",
                f"{r['renormalize']:.4f}", f"{r['renormalize'] / r['full']:.3f}",
                f"{r['renormalize_abs_diff']:.4f}"] for r in out['bias']]
  bias_table = common.markdown_table(
      ['k', 'log-probs', 'on disk B/token', 'teacher mass outside top-k', 'full KL',
       'tail KL', 'tail / full', 'mean abs(tail - full)', 'renormalised KL',
       'renormalised / full', 'mean abs(renormalised - full)'], bias_rows)
  online = out['times']['online step']
  time_rows = [[name, f'{seconds * 1e3:.2f}', f'{seconds / online:.3f}']
               for name, seconds in out['times'].items()]
  time_table = common.markdown_table(['what', 'median ms', 'ratio to the online step'],
                                     time_rows)
  size = 'tiny models (--tiny: a smoke run, not a result)' if args.tiny else (
      "experiments/configs/lm_kd.py:cpu's teacher and student")
  lines = [
      SECTION, '',
      'Generated by `benchmarks/cache.py`; do not edit by hand.', '',
      f"Models: {size}; teacher: {out['teacher_source']}; student: {args.student_steps} steps "
      f"on the labels. Held-out text: the first {out['windows']} validation windows of "
      f"{out['context']} bytes ({out['tokens']:,} real tokens); bits/byte there: teacher "
      f"{out['bits']['teacher']:.3f}, student {out['bits']['student']:.3f}. Temperature 1.",
      '',
      f"* Command: `{common.command_line('cache.py', argv if argv is not None else sys.argv[1:])}`",
      f'* Date: {common.now()}',
      f'* {common.versions()}',
      f'* Machine: {common.machine()}',
      f'* Load average at the start {loads[0]}, at the end {loads[1]} (the end includes '
      'this benchmark\'s own threads)'
      + ('; above 1.5 at the start: the times are not a result, rerun on a quiet machine'
         if out['load_before'][0] > 1.5 else ''),
      f"* Wall time: {out['seconds']:.0f} s", '',
      '### Bytes per token', '',
      'Computed from the format (`kdjax.cache.bytes_per_token`): k log-probs, the tail '
      '(float32 for float32, 2 bytes otherwise), the uint8 code\'s per-token range (4 bytes) '
      'and k indices, in whole bytes or packed at ceil(log2 V) bits (V = 256 needs 8 bits: '
      'both encodings equal). For comparison, float16 full logits take 2 V bytes per token '
      '(512 at V = 256, 64,000 at V = 32,000).', '',
      bytes_table, '',
      '### Sparse losses against the full-logit forward KL (held-out text)', '',
      'Per token, mean over the real tokens; the caches were written by `write_cache` and '
      'read back by `TeacherCache` (index encoding `bytes`; the values do not depend on it). '
      'The tail KL is a lower bound of the full KL (tail / full <= 1); the renormalised KL '
      'is neither bound. *On disk* is the shard files\' size over the tokens: array_record '
      'compresses every chunk (one record each) with its default compressor and pads the file '
      'to 64 KiB, so it is below the format\'s bytes where the codes compress.', '',
      bias_table, '',
      f'### Step time (batch {args.batch} x {out["context"]})', '',
      f'Median of the same run. The cached step reads the {args.formats[0]} cache; reading and '
      'dequantising is NumPy on the host, in grain\'s reading threads during training.', '',
      time_table,
  ]
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()
