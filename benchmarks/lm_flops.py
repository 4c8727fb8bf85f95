"""Achieved FLOP/s of the LM distillation step against a dense fp32 matmul.

The kdjax LM distillation step (``DecoderLM`` teacher and student,
``objective.token_distill('forward_kl')`` at T = 2, ``optax.adamw``,
``jax.jit(step, donate_argnums=0)``) on one CPU device. Its FLOPs are
XLA's count for the compiled step
(``jax.jit(step).lower(...).compile().cost_analysis()['flops']``); achieved
FLOP/s is that count over the median measured step time. The reference is
the FLOP/s of a jitted float32 ``[n, n] @ [n, n]`` matmul (``2 n³`` FLOPs,
n = 2048 by default) timed in the same process, alternating with the step.
Goal: the step reaches at least 50% of the matmul rate.

To say where the time goes, the step is also timed in pieces, each jitted
on its own with its own XLA FLOP count: the teacher's forward pass, the
student's forward and backward pass with the loss (teacher logits given),
the loss alone (forward and backward of the vocabulary softmaxes, logits
given), and the AdamW update. An analytic count of the matmul FLOPs (the
``2 x m x n x k`` of every dense layer, attention product and unembedding;
backward = 2 x forward) checks XLA's count.

Usage::

  python benchmarks/lm_flops.py                         # 4x512 -> 2x512, vocab 32000
  python benchmarks/lm_flops.py --vocab 8192 --batch 4
  python benchmarks/lm_flops.py --variants logits,chunked
  python benchmarks/lm_flops.py --write-docs            # update docs/performance.md
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any, Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _lm_common as common  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from kdjax import losses  # pylint: disable=wrong-import-position
from kdjax import step as step_lib  # pylint: disable=wrong-import-position
from kdjax import zoo  # pylint: disable=wrong-import-position

SECTION = '## Achieved FLOP/s of the LM distillation step'
GOAL = 0.5


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost.get('flops', float('nan')))


def forward_matmul_flops(config: zoo.DecoderConfig, tokens: int, seq: int) -> float:
  """Matmul FLOPs of one forward pass over `tokens` tokens (causal mask not exploited)."""
  d, f, v = config.hidden, config.mlp_dim, config.vocab_size
  a = config.num_heads * config.kv_dim
  per_token_layer = 2 * (4 * d * a) + 2 * (2 * d * f) + 2 * (2 * seq * a)
  return float(tokens * (config.num_layers * per_token_layer + 2 * d * v))


class Timed:
  """A jitted function with fixed arguments, compiled ahead, its FLOPs and times."""

  def __init__(self, name: str, fn: Callable[..., Any], args: tuple, *, donate=(),
               state_out: Callable[[Any], tuple] | None = None):
    self.name = name
    jitted = jax.jit(fn, donate_argnums=donate)
    start = time.perf_counter()
    self.compiled = jitted.lower(*args).compile()
    self.compile_s = time.perf_counter() - start
    self.flops = xla_flops(self.compiled)
    self.args = args
    self.state_out = state_out  # maps outputs to the next call's arguments
    self.times: list[float] = []

  def once(self) -> float:
    start = time.perf_counter()
    out = self.compiled(*self.args)
    jax.block_until_ready(out)
    seconds = time.perf_counter() - start
    if self.state_out is not None:
      self.args = self.state_out(out)
    return seconds

  def run(self, calls: int = 1) -> None:
    self.times.append(min(self.once() for _ in range(calls)) if calls > 1 else self.once())

  @property
  def median(self) -> float:
    return common.median(self.times)

  useful_flops: float | None = None  # set on the chunked step: see docs_section

  @property
  def rate(self) -> float:
    return (self.useful_flops or self.flops) / self.median


def build(args, chunked: bool) -> dict[str, Any]:
  """The step and its pieces, compiled, on one device."""
  teacher_config, student_config = common.configs(args)
  teacher_model, student_model = zoo.DecoderLM(teacher_config), zoo.DecoderLM(student_config)
  teacher_vars = jax.device_put(common.numpy_variables(teacher_config, 2, args.seq))
  student_vars = jax.device_put(common.numpy_variables(student_config, 1, args.seq))
  optimizer = common.optimizer()
  batch = jax.device_put(common.token_batch(args.batch, args.seq, args.vocab))
  objective = common.kd_objective(args.temperature, chunked=chunked, token_chunk=args.token_chunk)
  student_apply = zoo.lm_apply(student_model, logits=not chunked)
  teacher_apply = zoo.lm_apply(teacher_model, logits=not chunked)
  train_step = step_lib.make_train_step(student_apply, teacher_apply, objective, optimizer)
  state = jax.jit(lambda v: step_lib.init_train_state(v, optimizer))(student_vars)
  pieces = {'step': Timed('step', train_step, (state, teacher_vars, batch), donate=(0,),
                          state_out=lambda out: (out[0], teacher_vars, batch))}
  if chunked or not args.pieces:
    return {'pieces': pieces, 'teacher': teacher_config, 'student': student_config}

  def teacher_forward(variables, batch):
    return teacher_apply(variables, batch, train=False)[0].logits

  teacher_logits = jax.jit(teacher_forward)(teacher_vars, batch)

  def student_grad(params, teacher_logits, batch):
    def loss_fn(p):
      outputs, _ = student_apply({'params': p}, batch, train=True)
      return objective(outputs, outputs.replace(logits=teacher_logits), batch)[0]
    return jax.value_and_grad(loss_fn)(params)

  student_logits = jax.jit(lambda p, b: student_apply({'params': p}, b, train=False)[0].logits)(
      state.params, batch)

  def loss_only(student_logits, teacher_logits):
    def mean_kl(s):
      return jnp.mean(losses.token_divergence(
          s, teacher_logits, divergence='forward_kl', temperature=args.temperature))
    return jax.value_and_grad(mean_kl)(student_logits)

  grads = jax.jit(student_grad)(state.params, teacher_logits, batch)[1]

  def adamw_update(params, opt_state, grads):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(state.params)
  params = jax.tree.map(jnp.copy, state.params)
  adamw_params = jax.tree.map(jnp.copy, state.params)  # donated by its piece
  pieces.update({
      'teacher forward': Timed('teacher forward', teacher_forward, (teacher_vars, batch)),
      'student forward + backward (with loss)': Timed(
          'student', student_grad, (params, teacher_logits, batch)),
      'loss alone (forward + backward, logits given)': Timed(
          'loss', loss_only, (student_logits, teacher_logits)),
      'AdamW update': Timed(
          'adamw', adamw_update, (adamw_params, opt_state, grads), donate=(0, 1),
          state_out=lambda out: (out[0], out[1], grads)),
  })
  return {'pieces': pieces, 'teacher': teacher_config, 'student': student_config}


def measure(args) -> dict[str, Any]:
  n = args.matmul_size
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  matmul = Timed('matmul', lambda x, y: x @ y, (a, b))
  matmul_flops = 2.0 * n**3
  variants = {}
  for name in args.variants.split(','):
    variants[name] = build(args, chunked=(name == 'chunked'))
  everything = [matmul] + [t for v in variants.values() for t in v['pieces'].values()]
  for t in everything:  # warm-up
    for _ in range(args.warmup):
      t.once()
  for _ in range(args.repeats):
    for t in everything:
      t.run(3 if t is matmul else 1)
  if 'logits' in variants and 'chunked' in variants:
    # XLA counts a while loop's body once, so the chunked step's own count
    # misses most of its chunks: rate it by the logits step's FLOPs (the same
    # useful work; its recomputation of the logits is extra).
    variants['chunked']['pieces']['step'].useful_flops = (
        variants['logits']['pieces']['step'].flops)
  first = next(iter(variants.values()))
  teacher, student = first['teacher'], first['student']
  tokens = args.batch * args.seq
  analytic = (forward_matmul_flops(teacher, tokens, args.seq)
              + 3 * forward_matmul_flops(student, tokens, args.seq))
  return {
      'matmul_rate': matmul_flops / matmul.median,
      'matmul_xla_flops': matmul.flops,
      'matmul_flops': matmul_flops,
      'variants': variants,
      'analytic_step_flops': analytic,
  }


HEADERS = ['piece', 'XLA GFLOP', 'ms [IQR]', 'GFLOP/s', '% of matmul rate',
           '% of step time', 'compile s']


def table_rows(result, name) -> list[list[str]]:
  pieces = result['variants'][name]['pieces']
  step_s = pieces['step'].median
  rows = []
  for label, t in pieces.items():
    low, high = common.iqr(t.times)
    rows.append([
        f'{name}: {label}' if label == 'step' else label,
        f'{t.flops / 1e9:.1f}',
        f'{t.median * 1e3:.0f} [{low * 1e3:.0f}, {high * 1e3:.0f}]',
        f'{t.rate / 1e9:.1f}',
        f"{100 * t.rate / result['matmul_rate']:.0f}%",
        f'{100 * t.median / step_s:.0f}%',
        f'{t.compile_s:.1f}' if label == 'step' else '',
    ])
  return rows


def all_rows(result) -> list[list[str]]:
  return [row for name in result['variants'] for row in table_rows(result, name)]


def verdicts(result) -> list[str]:
  out = []
  for name, v in result['variants'].items():
    ratio = v['pieces']['step'].rate / result['matmul_rate']
    word = 'meets' if ratio >= GOAL else 'misses'
    out.append(f'{name}: {100 * ratio:.0f}% of the matmul rate ({word} the goal of '
               f'{100 * GOAL:.0f}%)')
  return out


def where_time_goes(result) -> str:
  """A sentence from the measured pieces (logits variant)."""
  if 'logits' not in result['variants']:
    return ''
  p = result['variants']['logits']['pieces']
  step = p['step'].median
  names = [k for k in p if k != 'step']
  parts = ', '.join(f'{k} {100 * p[k].median / step:.0f}% ({p[k].rate / 1e9:.0f} GFLOP/s)'
                    for k in names)
  return ('Share of the step time taken by each piece timed alone (they overlap: the '
          f'student piece includes the loss): {parts}.')


def docs_section(result, args, argv, load_before: str) -> str:
  first = next(iter(result['variants'].values()))
  step_flops = first['pieces']['step'].flops
  return f"""{SECTION}

Generated by `benchmarks/lm_flops.py`; do not edit by hand.

The kdjax LM distillation step (`step.make_train_step` with `zoo.lm_apply`
teacher and student, `objective.token_distill('forward_kl',
temperature={args.temperature})` -- *chunked*: `objective.chunked_distill`
with `token_chunk={args.token_chunk}` on `lm_apply(..., logits=False)` --
and `optax.adamw`, `jax.jit(..., donate_argnums=0)`) on one CPU device.
FLOPs are XLA's count of the compiled program
(`jit(f).lower(...).compile().cost_analysis()['flops']`); GFLOP/s is that
count over the median time of {args.repeats} calls (after {args.warmup}
warm-up calls, each ending in `jax.block_until_ready`). The reference rate
is a jitted float32 `{args.matmul_size} x {args.matmul_size}` matmul
(2n³ FLOPs, best of 3 per repeat), timed in the same process, alternating
with everything else: {result['matmul_rate'] / 1e9:.1f} GFLOP/s. The
analytic matmul count of the step (every dense layer, attention product
and unembedding; backward = 2 x forward) is
{result['analytic_step_flops'] / 1e9:.1f} GFLOP against XLA's
{step_flops / 1e9:.1f} GFLOP. The pieces below the step are jitted and
timed on their own, to show where the time goes. XLA counts the body of a
while loop once, so the *chunked* step's own count misses most of its
chunks; its GFLOP/s uses the logits step's count (the same useful work,
without the chunked loss's recomputation of the logits).

* Models: {common.describe(args)}
* Command: `{common.command_line('lm_flops.py', argv)}`
* Date: {common.now()}
* {common.versions()}
* Machine: {common.machine()} (at the start: {load_before})
* Result: {'; '.join(verdicts(result))}.
* {where_time_goes(result)}

{common.markdown_table(HEADERS, all_rows(result))}
"""


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  common.add_model_flags(parser)
  parser.add_argument('--variants', default='logits',
                      help="comma-separated: 'logits' (token_distill), 'chunked' (chunked_distill)")
  parser.add_argument('--token-chunk', type=int, default=512)
  parser.add_argument('--no-pieces', dest='pieces', action='store_false',
                      help='time the whole step only, not its pieces')
  parser.add_argument('--matmul-size', type=int, default=2048)
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--markdown', action='store_true')
  parser.add_argument('--write-docs', action='store_true',
                      help=f'update the "{SECTION}" section of docs/performance.md')
  return parser.parse_args(argv)


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  load_before = f'load average {common.load_average()}'
  print(f'{common.describe(args)}; {common.machine()}', flush=True)
  result = measure(args)
  print(f"\nmatmul {args.matmul_size}^3: {result['matmul_rate'] / 1e9:.1f} GFLOP/s; "
        f"analytic step matmul FLOPs {result['analytic_step_flops'] / 1e9:.1f} G")
  print(common.text_table(HEADERS, all_rows(result)))
  print('\n'.join(verdicts(result)))
  print(where_time_goes(result))
  if args.markdown:
    print()
    print(common.markdown_table(HEADERS, all_rows(result)))
  if args.write_docs:
    common.write_section(SECTION, docs_section(result, args, argv, load_before))
    print(f'\nwrote the "{SECTION}" section of {common.DOCS}')


if __name__ == '__main__':
  main()
