"""The sharded LM distillation step on 8 simulated CPU devices against 1 device.

A :class:`kdjax.zoo.DecoderLM` teacher distilled into a smaller one
(forward KL over the vocabulary at T = 2, AdamW) with
``kdjax.parallel.jit_train_step``, run once on one device and once for each
layout on 8 devices, each run in its own process (the simulated device count,
``XLA_FLAGS=--xla_force_host_platform_device_count``, is fixed when JAX
starts). Same models, same initial parameters, same batches. Layouts (those
of docs/parallel.md):

* ``data_parallel``: mesh ``{'data': 8}``, everything replicated.
* ``teacher_tp``: mesh ``{'data': 4, 'tensor': 2}``, the teacher tensor
  parallel (Megatron regex rules), the student data parallel.
* ``student_fsdp``: mesh ``{'data': 2, 'fsdp': 4}``, the student's params
  and Adam moments sharded over ``fsdp``.
* ``fsdp_tp``: mesh ``{'fsdp': 4, 'tensor': 2}``, both models FSDP, the
  teacher also tensor parallel, activation constraints on.

Each run reports its per-step losses and the median step time; the parent
checks that every layout's losses equal the 1-device ones and prints the
relative cost (8-device time / 1-device time). The 8 "devices" are
simulated on the machine's CPU cores: they share those cores, so the ratio
measures the overhead of partitioning and collectives, not a speed-up.

Usage::

  python benchmarks/lm_sharded.py                       # all layouts
  python benchmarks/lm_sharded.py --layouts data_parallel,teacher_tp --repeats 5
  python benchmarks/lm_sharded.py --write-docs          # update docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _lm_common as common  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
from jax.sharding import PartitionSpec as P  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from kdjax import metrics as metrics_lib  # pylint: disable=wrong-import-position
from kdjax import parallel  # pylint: disable=wrong-import-position
from kdjax import step as step_lib  # pylint: disable=wrong-import-position
from kdjax import zoo  # pylint: disable=wrong-import-position

SECTION = '## Sharded LM distillation step: 8 simulated devices vs 1'
DEVICES = 8

REPLICATED = [('.*', P())]
FSDP = [('embed', 'fsdp'), ('vocab', None), ('heads', None), ('kv', None),
        ('mlp', None), ('position', None)]
FSDP_TP = [('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'), ('vocab', 'tensor'),
           ('kv', None), ('position', None)]
TP_REGEX = [  # Megatron: column-parallel in, row-parallel out
    (r'attention/(query|key|value)$', P(None, 'tensor', None)),
    (r'attention/out$', P('tensor', None, None)),
    (r'mlp/wi$', P(None, 'tensor')),
    (r'mlp/wo$', P('tensor', None)),
    (r'embedding$', P('tensor', None)),
    ('.*', P()),
]
ACTIVATIONS = [('batch', 'fsdp'), ('length', None), ('embed', None), ('mlp', 'tensor'),
               ('heads', 'tensor'), ('kv', None), ('vocab', 'tensor')]

# name -> (mesh axes, student rules, teacher rules, activation rules, description)
LAYOUTS = {
    'one_device': ({'data': 1}, REPLICATED, REPLICATED, None, '1 device'),
    'data_parallel': ({'data': 8}, REPLICATED, REPLICATED, None,
                      'data parallel (both models replicated)'),
    'teacher_tp': ({'data': 4, 'tensor': 2}, REPLICATED, TP_REGEX, None,
                   'teacher tensor parallel + student data parallel'),
    'student_fsdp': ({'data': 2, 'fsdp': 4}, FSDP, REPLICATED, None,
                     'student FSDP, teacher replicated'),
    'fsdp_tp': ({'fsdp': 4, 'tensor': 2}, FSDP, FSDP_TP, ACTIVATIONS,
                'both FSDP, teacher also tensor parallel'),
}


def run_layout(layout: str, args, devices=None) -> dict[str, Any]:
  """Builds and times the sharded step of `layout` in this process.

  Args:
    layout: a key of ``LAYOUTS``.
    args: the parsed flags (model sizes, ``steps``, ``repeats``, ``warmup``).
    devices: the devices of the mesh (default: all of this process's).

  Returns:
    ``{'losses': [...], 'step_s': [...], 'first_call_s': float, 'devices': n}``:
    the losses of ``args.steps`` steps from the initial state (each on its
    own batch), then the seconds of each of ``args.repeats`` timed steps.
  """
  axes, student_rules, teacher_rules, activation_rules, _ = LAYOUTS[layout]
  devices = list(jax.devices() if devices is None else devices)
  mesh = parallel.make_mesh(axes, devices=devices[:int(np.prod(list(axes.values())))])
  teacher_config, student_config = common.configs(args)
  optimizer = common.optimizer()
  # Initial values drawn on the host (the same in every process), placed by
  # the layout's rules; the optimizer state is created sharded.
  params_shardings = parallel.param_shardings(
      common.abstract_variables(student_config, args.seq)['params'], student_rules, mesh)
  params = parallel.place_variables(
      common.numpy_variables(student_config, 1, args.seq)['params'], params_shardings)
  init_state = lambda p: step_lib.init_train_state({'params': p}, optimizer)
  state_shardings = parallel.train_state_shardings(
      jax.eval_shape(init_state, params), params_shardings, mesh)
  state = jax.jit(init_state, out_shardings=state_shardings)(params)
  teacher_shardings = parallel.param_shardings(
      common.abstract_variables(teacher_config, args.seq), teacher_rules, mesh)
  teacher = parallel.place_variables(
      common.numpy_variables(teacher_config, 2, args.seq), teacher_shardings)
  step = parallel.jit_train_step(
      step_lib.make_train_step(
          zoo.lm_apply(zoo.DecoderLM(student_config)),
          zoo.lm_apply(zoo.DecoderLM(teacher_config)),
          common.kd_objective(args.temperature),
          optimizer,
      ),
      mesh,
      state_shardings=state_shardings,
      teacher_shardings=teacher_shardings,
      logical_axis_rules=activation_rules,
  )
  batches = [
      parallel.shard_batch(common.token_batch(args.batch, args.seq, args.vocab, seed), mesh)
      for seed in range(max(args.steps, 1))
  ]
  losses = []
  start = time.perf_counter()
  for i in range(args.steps):
    state, metrics = step(state, teacher, batches[i])
    if i == 0:
      jax.block_until_ready(metrics)
      first_call = time.perf_counter() - start
    losses.append(metrics_lib.compute(metrics)['loss/kd'])
  for i in range(args.warmup):
    state, metrics = step(state, teacher, batches[i % len(batches)])
  jax.block_until_ready((state, metrics))
  times = []
  for i in range(args.repeats):
    start = time.perf_counter()
    state, metrics = step(state, teacher, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return {'losses': losses, 'step_s': times, 'first_call_s': first_call,
          'devices': len(mesh.devices.flat), 'mesh': dict(mesh.shape)}


def run_subprocess(layout: str, argv: list[str]) -> dict[str, Any]:
  """`run_layout` in a fresh process with 1 or 8 simulated devices."""
  count = prod(LAYOUTS[layout][0].values())
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={count}'])
  env['JAX_PLATFORMS'] = 'cpu'
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / 'result.json'
    subprocess.run(
        [sys.executable, __file__, *argv, '--worker', layout, '--json', str(out)],
        env=env, check=True,
    )
    return json.loads(out.read_text())


def prod(values) -> int:
  return int(np.prod(list(values)))


def summarize(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
  """Rows: median step time, ratio to 1 device, max loss difference."""
  base = results['one_device']
  base_losses = np.asarray(base['losses'])
  base_median = common.median(base['step_s'])
  rows = []
  for name, r in results.items():
    med = common.median(r['step_s'])
    diff = np.max(np.abs(np.asarray(r['losses']) - base_losses) / np.abs(base_losses))
    rows.append({
        'layout': name,
        'description': LAYOUTS[name][4],
        'mesh': r['mesh'],
        'median_s': med,
        'iqr_s': common.iqr(r['step_s']),
        'ratio': med / base_median,
        'first_call_s': r['first_call_s'],
        'losses': r['losses'],
        'max_rel_loss_diff': float(diff),
    })
  return rows


HEADERS = ['layout', 'mesh', 'ms/step [IQR]', 'relative cost (/ 1 device)',
           'first call s', 'losses (first, last)', 'max rel. loss diff vs 1 device']


def table_rows(rows) -> list[list[str]]:
  out = []
  for r in rows:
    low, high = r['iqr_s']
    out.append([
        f"{r['layout']} ({r['description']})",
        ', '.join(f'{k} {v}' for k, v in r['mesh'].items()),
        f"{r['median_s'] * 1e3:.1f} [{low * 1e3:.1f}, {high * 1e3:.1f}]",
        f"{r['ratio']:.2f}",
        f"{r['first_call_s']:.1f}",
        f"{r['losses'][0]:.6f}, {r['losses'][-1]:.6f}",
        f"{r['max_rel_loss_diff']:.1e}",
    ])
  return out


def docs_section(rows, args, argv, load_before: str) -> str:
  worst = max(r['max_rel_loss_diff'] for r in rows)
  return f"""{SECTION}

Generated by `benchmarks/lm_sharded.py`; do not edit by hand.

The kdjax LM distillation step (`parallel.jit_train_step` of
`step.make_train_step` with `zoo.lm_apply` teacher and student,
`objective.token_distill('forward_kl', temperature={args.temperature})`,
`optax.adamw`) on one CPU device and, for each layout of
[Sharding](parallel.md), on {DEVICES} simulated CPU devices
(`--xla_force_host_platform_device_count={DEVICES}`), each run in its own
process with the same initial parameters (drawn on the host with the
models' init scheme, same seeds, placed by each layout's rules) and the same batches. Every run does {args.steps} steps from
the initial state, whose losses are compared with the 1-device run, then
{args.warmup} warm-up steps and {args.repeats} timed steps (each ending in
`jax.block_until_ready`). *Relative cost* is the median 8-device step time
over the median 1-device step time. The {DEVICES} simulated devices share
this machine's {os.cpu_count()} cores, so the ratio is **not** a parallel
speed-up (that needs real devices): it weighs the partitioned program (more,
smaller kernels, collectives, copies between device buffers) against the
1-device one on the same cores. A ratio below 1 means the 8 per-device
programs, run concurrently on the host's threads, kept the cores busier than
one device's intra-op threading did. *First call* is trace + compile + one
step.

* Models: {common.describe(args)}
* Command: `{common.command_line('lm_sharded.py', argv)}`
* Date: {common.now()}
* {common.versions()}
* Machine: {common.machine()} (at the start: {load_before})
* Result: every layout's losses equal the 1-device losses to a relative
  {worst:.1e} (float32, different reduction order).

{common.markdown_table(HEADERS, table_rows(rows))}
"""


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  common.add_model_flags(parser, teacher=(4, 256), student=(2, 128), vocab=4096, seq=128,
                         batch=16)
  parser.add_argument('--layouts', default='data_parallel,teacher_tp,student_fsdp,fsdp_tp',
                      help=f'comma-separated, from {sorted(set(LAYOUTS) - {"one_device"})}')
  parser.add_argument('--steps', type=int, default=3, help='steps whose losses are compared')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--markdown', action='store_true')
  parser.add_argument('--write-docs', action='store_true',
                      help=f'update the "{SECTION}" section of docs/performance.md')
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--json', default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.worker:
    result = run_layout(args.worker, args)
    pathlib.Path(args.json).write_text(json.dumps(result))
    return
  layouts = ['one_device'] + [name.strip() for name in args.layouts.split(',') if name.strip()]
  unknown = [name for name in layouts if name not in LAYOUTS]
  if unknown:
    raise SystemExit(f'unknown layouts {unknown}; choose from {sorted(LAYOUTS)}')
  load_before = f'load average {common.load_average()}'
  print(f'{common.describe(args)}; {common.machine()}', flush=True)
  passthrough = [a for a in argv if a not in ('--write-docs', '--markdown')]
  results = {}
  for name in layouts:
    print(f'{name}: {LAYOUTS[name][4]} ...', flush=True)
    results[name] = run_subprocess(name, passthrough)
  rows = summarize(results)
  print()
  print(common.text_table(HEADERS, table_rows(rows)))
  if args.markdown:
    print()
    print(common.markdown_table(HEADERS, table_rows(rows)))
  if args.write_docs:
    common.write_section(SECTION, docs_section(rows, args, argv, load_before))
    print(f'\nwrote the "{SECTION}" section of {common.DOCS}')


if __name__ == '__main__':
  main()
