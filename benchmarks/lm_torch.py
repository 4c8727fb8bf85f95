"""The LM distillation step: kdjax against the same step in plain PyTorch.

Both sides distil the same ``DecoderLM`` teacher into the same student
(RoPE, RMSNorm, GELU MLP, tied embeddings; the PyTorch modules get the
JAX parameters copied in; both start from the same values, drawn with
DecoderLM's init scheme) with
forward KL over the full vocabulary at temperature T and AdamW:

* kdjax: ``step.make_train_step(zoo.lm_apply(student), zoo.lm_apply(teacher),
  Objective({'kd': token_distill('forward_kl', temperature=T)}),
  optax.adamw)``, ``jax.jit(..., donate_argnums=0)``. Second row
  (``kdjax-chunked``): ``objective.chunked_distill`` on ``lm_apply(...,
  logits=False)``, which never materialises the ``[batch, time, vocab]``
  logits.
* PyTorch, as PyTorch LLM-distillation trainers write it: the teacher's
  forward under ``torch.no_grad()``, the student's forward, then
  ``F.kl_div(F.log_softmax(s / T), F.log_softmax(t / T), log_target=True,
  reduction='batchmean') * T**2`` on ``[batch * time, vocab]`` logits,
  ``loss.backward()``, ``torch.optim.AdamW.step()``. Attention is
  ``F.scaled_dot_product_attention(is_causal=True)``, norms
  ``torch.nn.RMSNorm``; eager mode, ``torch.set_num_threads(os.cpu_count())``.

The script first checks that both compute the same losses from identical
weights (the first loss, and the next ones after AdamW updates). Step
time: in one process, after warm-up, blocks of K steps of each side in
turn (rotating the order), each ending in ``jax.block_until_ready`` (JAX)
or returning a loss already computed (PyTorch's eager ops are synchronous).
Peak memory: each side in its own process; everything that exists before
the first step (models, parameters, the batch, and for kdjax the compiled
executables) is built first, the peak-RSS counter is reset (``echo 5 >
/proc/self/clear_refs``) and the RSS read; then the optimizer state is
created and ``--memory-steps`` steps run; the peak RSS (``VmHWM``) minus
that RSS is the step's memory: optimizer state, gradients, activations,
logits and temporaries. For kdjax, XLA's ``memory_analysis()`` of the
compiled step is reported too.

Usage::

  python benchmarks/lm_torch.py                      # 4x512 -> 2x512, vocab 32000
  python benchmarks/lm_torch.py --vocab 8192 --batch 4
  python benchmarks/lm_torch.py --write-docs         # update docs/performance.md
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
import numpy as np  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position
from torch import nn as tnn  # pylint: disable=wrong-import-position
import torch.nn.functional as F  # pylint: disable=wrong-import-position

from kdjax import metrics as metrics_lib  # pylint: disable=wrong-import-position
from kdjax import step as step_lib  # pylint: disable=wrong-import-position
from kdjax import zoo  # pylint: disable=wrong-import-position

SECTION = '## LM distillation step: kdjax vs PyTorch'
# The same benchmark with `--malloc retain` writes its own section.
SECTIONS = common.malloc_sections(SECTION)
SPEED_GOAL = 1.2
MEMORY_GOAL = 0.5
SIDES = ('kdjax', 'kdjax-chunked', 'torch')


# ----------------------------------------------------------------------------
# The PyTorch twin of kdjax.zoo.DecoderLM (RoPE, RMSNorm, GELU, tied).


class TorchBlock(tnn.Module):
  """Pre-norm block: causal attention (SDPA) and a GELU MLP, no biases."""

  def __init__(self, config: zoo.DecoderConfig):
    super().__init__()
    d, a = config.hidden, config.num_heads * config.kv_dim
    self.heads, self.kv = config.num_heads, config.kv_dim
    self.attention_norm = tnn.RMSNorm(d, eps=1e-6)
    self.query = tnn.Linear(d, a, bias=False)
    self.key = tnn.Linear(d, a, bias=False)
    self.value = tnn.Linear(d, a, bias=False)
    self.out = tnn.Linear(a, d, bias=False)
    self.mlp_norm = tnn.RMSNorm(d, eps=1e-6)
    self.wi = tnn.Linear(d, config.mlp_dim, bias=False)
    self.wo = tnn.Linear(config.mlp_dim, d, bias=False)

  def forward(self, x, cos, sin):
    b, t, _ = x.shape
    h = self.attention_norm(x)
    q, k, v = (proj(h).view(b, t, self.heads, self.kv).transpose(1, 2)
               for proj in (self.query, self.key, self.value))
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.out(mixed.transpose(1, 2).reshape(b, t, self.heads * self.kv))
    return x + self.wo(F.gelu(self.wi(self.mlp_norm(x)), approximate='tanh'))


def rotate(x, cos, sin):
  """RoPE, rotate-half form, on ``[batch, heads, time, kv]``."""
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half], x[..., half:]
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class TorchDecoderLM(tnn.Module):
  """``kdjax.zoo.DecoderLM`` (rope, rms, gelu, tied embeddings) in PyTorch."""

  def __init__(self, config: zoo.DecoderConfig):
    super().__init__()
    self.embedding = tnn.Embedding(config.vocab_size, config.hidden)
    self.blocks = tnn.ModuleList(TorchBlock(config) for _ in range(config.num_layers))
    self.final_norm = tnn.RMSNorm(config.hidden, eps=1e-6)
    half = config.kv_dim // 2
    inv_freq = config.rope_base ** (-torch.arange(half, dtype=torch.float32) / half)
    angles = torch.arange(config.max_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
    self.register_buffer('cos', torch.cos(angles), persistent=False)
    self.register_buffer('sin', torch.sin(angles), persistent=False)

  def forward(self, tokens):
    t = tokens.shape[1]
    cos, sin = self.cos[:t], self.sin[:t]
    x = self.embedding(tokens)
    for block in self.blocks:
      x = block(x, cos, sin)
    return F.linear(self.final_norm(x), self.embedding.weight)


def load_jax_params(model: TorchDecoderLM, params: Any) -> TorchDecoderLM:
  """Copies a DecoderLM's flax params into `model` (einsum layouts -> Linear)."""
  params = jax.device_get(params)

  def tensor(x):
    return torch.from_numpy(np.array(x, dtype=np.float32))

  with torch.no_grad():
    model.embedding.weight.copy_(tensor(params['embedding']))
    model.final_norm.weight.copy_(tensor(params['final_norm']['scale']))
    for i, block in enumerate(model.blocks):
      p = params[f'blocks_{i}']
      for name in ('query', 'key', 'value'):
        w = np.asarray(p['attention'][name])  # [hidden, heads, kv]
        getattr(block, name).weight.copy_(tensor(w.reshape(w.shape[0], -1).T))
      w = np.asarray(p['attention']['out'])  # [heads, kv, hidden]
      block.out.weight.copy_(tensor(w.reshape(-1, w.shape[-1]).T))
      block.wi.weight.copy_(tensor(np.asarray(p['mlp']['wi']).T))
      block.wo.weight.copy_(tensor(np.asarray(p['mlp']['wo']).T))
      block.attention_norm.weight.copy_(tensor(p['attention_norm']['scale']))
      block.mlp_norm.weight.copy_(tensor(p['mlp_norm']['scale']))
  return model


def torch_kd_step(student, teacher, optimizer, tokens, temperature: float):
  """One distillation step the way PyTorch trainers write it; returns the loss."""
  with torch.no_grad():
    teacher_logits = teacher(tokens)
  student_logits = student(tokens)
  vocab = student_logits.shape[-1]
  loss = F.kl_div(
      F.log_softmax(student_logits.view(-1, vocab) / temperature, dim=-1),
      F.log_softmax(teacher_logits.view(-1, vocab) / temperature, dim=-1),
      log_target=True, reduction='batchmean',
  ) * temperature**2
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  optimizer.step()
  return loss.detach()


# ----------------------------------------------------------------------------
# Both sides, built from the same JAX parameters.


class Side:
  """One framework's step with its state; `run(k)` does k steps, returns the last loss."""

  def __init__(self, name: str, args, parts: dict[str, Any], *, lazy_state: bool = False):
    self.name = name
    self.temperature = args.temperature
    if name == 'torch':
      self.student = load_jax_params(TorchDecoderLM(parts['student_config']), parts['student'])
      self.teacher = load_jax_params(TorchDecoderLM(parts['teacher_config']), parts['teacher'])
      self.teacher.eval().requires_grad_(False)
      self.tokens = torch.from_numpy(np.asarray(parts['batch']['tokens']).astype(np.int64))
      self.optimizer = torch.optim.AdamW(
          self.student.parameters(), lr=common.LEARNING_RATE, weight_decay=common.WEIGHT_DECAY)
      self.memory = {}
      return
    chunked = name == 'kdjax-chunked'
    optimizer = common.optimizer()
    step = step_lib.make_train_step(
        zoo.lm_apply(zoo.DecoderLM(parts['student_config']), logits=not chunked),
        zoo.lm_apply(zoo.DecoderLM(parts['teacher_config']), logits=not chunked),
        common.kd_objective(args.temperature, chunked=chunked, token_chunk=args.token_chunk),
        optimizer,
    )
    self.teacher = parts['teacher_vars']
    self.batch = parts['jax_batch']
    init = jax.jit(lambda params: step_lib.init_train_state({'params': params}, optimizer),
                   donate_argnums=0)
    student = jax.tree.map(lambda x: x.copy(), parts['student'])
    abstract_state = jax.eval_shape(init, student)
    self.init = init.lower(student).compile()
    self.step = jax.jit(step, donate_argnums=0).lower(
        abstract_state, self.teacher, self.batch).compile()
    analysis = self.step.memory_analysis()
    self.memory = {key: int(getattr(analysis, key, 0) or 0) for key in (
        'temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes',
        'alias_size_in_bytes', 'generated_code_size_in_bytes')}
    self.student_params = student
    self.state = None
    if not lazy_state:
      self.create_state()

  def create_state(self) -> None:
    """kdjax: the TrainState (AdamW moments); PyTorch creates its state in the first step."""
    if self.name != 'torch':
      self.state, self.student_params = self.init(self.student_params), None

  def run(self, k: int):
    if self.name == 'torch':
      for _ in range(k):
        loss = torch_kd_step(self.student, self.teacher, self.optimizer, self.tokens,
                             self.temperature)
      return float(loss)
    for _ in range(k):
      self.state, metrics = self.step(self.state, self.teacher, self.batch)
    jax.block_until_ready((self.state, metrics))
    return metrics


def loss_of(side: Side, k: int = 1) -> float:
  out = side.run(k)
  return out if side.name == 'torch' else metrics_lib.compute(out)['loss/kd']


def build_parts(args) -> dict[str, Any]:
  teacher_config, student_config = common.configs(args)
  teacher = jax.device_put(common.numpy_variables(teacher_config, 2, args.seq))
  student = jax.device_put(common.numpy_variables(student_config, 1, args.seq))
  batch = common.token_batch(args.batch, args.seq, args.vocab)
  return {
      'teacher_config': teacher_config, 'student_config': student_config,
      'teacher_vars': teacher, 'teacher': teacher['params'], 'student': student['params'],
      'batch': batch, 'jax_batch': jax.device_put(batch),
  }


def check_losses(args, parts, sides: dict[str, Side], steps: int) -> dict[str, list[float]]:
  """Every side's first `steps` losses from the same weights; they must agree."""
  history = {name: [loss_of(side) for _ in range(steps)] for name, side in sides.items()}
  reference = np.asarray(history['torch'])
  for name, values in history.items():
    np.testing.assert_allclose(
        values[:1], reference[:1], rtol=args.loss_rtol,
        err_msg=f'first loss of {name} differs from PyTorch')
    np.testing.assert_allclose(
        values, reference, rtol=10 * args.loss_rtol,
        err_msg=f'losses of {name} after AdamW updates differ from PyTorch')
  return history


# ----------------------------------------------------------------------------
# Time (one process, alternating) and memory (one process per side).


def rss_kib(field: str) -> int:
  with open('/proc/self/status', encoding='utf-8') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  raise RuntimeError(f'{field} not in /proc/self/status')


def memory_worker(side_name: str, args) -> dict[str, Any]:
  """Peak RSS of `args.memory_steps` steps above the RSS before the first one."""
  torch.set_num_threads(os.cpu_count())
  parts = build_parts(args)
  side = Side(side_name, args, parts, lazy_state=True)
  del parts
  import gc  # pylint: disable=g-import-not-at-top
  gc.collect()
  with open('/proc/self/clear_refs', 'w', encoding='utf-8') as f:
    f.write('5')  # resets VmHWM to the current RSS
  before = rss_kib('VmRSS')
  side.create_state()
  side.run(args.memory_steps)
  peak = rss_kib('VmHWM')
  return {'before_kib': before, 'peak_kib': peak, 'delta_kib': peak - before,
          'xla': side.memory}


def memory_subprocess(side_name: str, argv: list[str]) -> dict[str, Any]:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / 'memory.json'
    subprocess.run([sys.executable, __file__, *argv, '--memory-worker', side_name,
                    '--json', str(out)], env=env, check=True)
    return json.loads(out.read_text())


def measure(args, argv: list[str], *, memory: bool = True) -> dict[str, Any]:
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  parts = build_parts(args)
  sides = {name: Side(name, args, parts) for name in args.sides.split(',')}
  if 'torch' not in sides:
    raise SystemExit("--sides must include 'torch'")
  history = check_losses(args, parts, sides, args.check_steps)
  faults = {}
  times = (common.time_alternating(sides, warmup=args.warmup, repeats=args.repeats,
                                   steps=args.steps, faults=faults) if args.repeats else {})
  result = {'history': history, 'times': times, 'faults': faults}
  if memory:
    passthrough = [a for a in argv if a not in ('--write-docs', '--markdown')]
    result['memory'] = {name: memory_subprocess(name, passthrough) for name in sides}
  return result


# ----------------------------------------------------------------------------
# Reporting.

HEADERS = ['side', 'ms/step [IQR]', 'torch time / this (speed-up) [IQR]',
           common.FAULTS_HEADER,
           'step memory MiB (peak RSS - RSS before)', 'this / torch memory',
           'XLA temp MiB', 'XLA arguments MiB', 'first losses']


def table_rows(result) -> list[list[str]]:
  times, memory = result['times'], result.get('memory', {})
  rows = []
  for name, losses in result['history'].items():
    row = [name]
    if times:
      low, high = common.iqr(times[name])
      row.append(f'{common.median(times[name]) * 1e3:.0f} [{low * 1e3:.0f}, {high * 1e3:.0f}]')
      ratios = times['torch'] / times[name]
      low, high = common.iqr(ratios)
      row.append(f'{common.median(ratios):.2f} [{low:.2f}, {high:.2f}]')
      row.append(common.faults_cell(result['faults'][name]))
    else:
      row += ['', '', '']
    if memory:
      delta = memory[name]['delta_kib']
      row.append(f'{delta / 1024:.0f}')
      row.append(f"{delta / memory['torch']['delta_kib']:.2f}")
      xla = memory[name]['xla']
      row.append(f"{xla['temp_size_in_bytes'] / 2**20:.0f}" if xla else '')
      row.append(f"{xla['argument_size_in_bytes'] / 2**20:.0f}" if xla else '')
    else:
      row += ['', '', '', '']
    row.append(', '.join(f'{x:.6f}' for x in losses))
    rows.append(row)
  return rows


def verdicts(result) -> list[str]:
  out = []
  for name in result['history']:
    if name == 'torch':
      continue
    parts = []
    if result['times']:
      speedup = common.median(result['times']['torch'] / result['times'][name])
      parts.append(f'{speedup:.2f}x the speed of PyTorch (goal >= {SPEED_GOAL}: '
                   f"{'met' if speedup >= SPEED_GOAL else 'missed'})")
    if result.get('memory'):
      ratio = result['memory'][name]['delta_kib'] / result['memory']['torch']['delta_kib']
      parts.append(f'{ratio:.2f} of its step memory (goal <= {MEMORY_GOAL}: '
                   f"{'met' if ratio <= MEMORY_GOAL else 'missed'})")
    out.append(f"{name}: {', '.join(parts)}")
  return out


def docs_section(result, args, argv, load_before: str) -> str:
  torch_loss = result['history']['torch'][0]
  diffs = ', '.join(
      f'{name} {abs(v[0] - torch_loss) / abs(torch_loss):.1e}'
      for name, v in result['history'].items() if name != 'torch')
  student_params = zoo.param_count(common.configs(args)[1])
  fixed_mib = 3 * 4 * student_params / 2**20
  if result.get('memory'):
    memory_text = f"""Memory: each side in its own process, with the
system allocator; with
the models, parameters, batch (and for kdjax the compiled step) in place,
the peak-RSS counter is reset (`/proc/self/clear_refs`), then the optimizer
state is created and {args.memory_steps} steps run: *step memory* is the
peak RSS (`VmHWM`) minus the RSS before, i.e. optimizer state, gradients,
activations, logits and temporaries. *XLA temp* and *XLA arguments* are the
compiled step's `memory_analysis()` (temporaries; state, teacher and batch).
Goals: kdjax at least {SPEED_GOAL}x faster, with at most {MEMORY_GOAL} of
PyTorch's step memory.

Of each side's step memory, {fixed_mib:.0f} MiB are the AdamW moments and
the gradients of the student's {student_params / 1e6:.1f}M float32
parameters (3 x its parameter bytes, the same on both sides); the rest is
activations, logits and temporaries.
"""
  else:
    memory_text = f"""Memory was not measured in this run
(`--no-memory`). Goal: kdjax at least {SPEED_GOAL}x faster.
"""
  return f"""{SECTIONS[args.malloc]}

Generated by `benchmarks/lm_torch.py`; do not edit by hand.

The same LM distillation step in kdjax and in plain PyTorch: a
`DecoderLM` teacher and student (RoPE, RMSNorm, GELU MLP, tied
embeddings), forward KL over the full vocabulary at T = {args.temperature}
(x T²), AdamW (lr {common.LEARNING_RATE}, weight decay
{common.WEIGHT_DECAY}). *kdjax*: `step.make_train_step` with `zoo.lm_apply`
and `objective.token_distill('forward_kl')`, `jax.jit(...,
donate_argnums=0)`; *kdjax-chunked*: `objective.chunked_distill`
(`token_chunk={args.token_chunk}`) on `lm_apply(..., logits=False)`, which
never materialises the logits. *torch*: the PyTorch twin of `DecoderLM`
(`nn.Linear`, `F.scaled_dot_product_attention(is_causal=True)`,
`nn.RMSNorm`, eager), the teacher under `torch.no_grad()`,
`F.kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True,
reduction='batchmean') * T²` on `[batch x time, vocab]`, `loss.backward()`,
`torch.optim.AdamW`, `torch.set_num_threads({os.cpu_count()})`. The PyTorch
modules get the JAX parameters copied in; the first loss of each kdjax side
differs from PyTorch's by a relative {diffs}, and the next
{args.check_steps - 1} (after AdamW updates) agree too (table).

Time: in one process, after {args.warmup} warm-up steps, {args.repeats}
repeats of {args.steps} steps of each side in turn (rotating the order);
medians per step, and the median of the per-repeat ratios torch / side
with the interquartile range; *page faults* are the median minor page
faults per step (`getrusage`). Allocator: {common.malloc_description(args.malloc)}
(`--malloc {args.malloc}`; the section "LM distillation step: the allocator"
says why it matters). {memory_text}
* Models: {common.describe(args)}
* Command: `{common.command_line('lm_torch.py', argv)}`
* Date: {common.now()}
* {common.versions(f'PyTorch {torch.__version__}')}
* Machine: {common.machine()} (at the start: {load_before})
* Result: {'; '.join(verdicts(result))}.

{common.markdown_table(HEADERS, table_rows(result))}
"""


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  common.add_model_flags(parser)
  parser.add_argument('--sides', default='kdjax,kdjax-chunked,torch',
                      help=f'comma-separated, from {SIDES}')
  parser.add_argument('--token-chunk', type=int, default=512)
  parser.add_argument('--check-steps', type=int, default=3,
                      help='steps whose losses are compared across sides')
  parser.add_argument('--loss-rtol', type=float, default=1e-4)
  parser.add_argument('--steps', type=int, default=1, help='steps per timed block')
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--memory-steps', type=int, default=2)
  parser.add_argument('--no-memory', action='store_true')
  parser.add_argument('--markdown', action='store_true')
  parser.add_argument('--write-docs', action='store_true',
                      help=f'update the "{SECTION}" section of docs/performance.md')
  common.add_malloc_flag(parser)
  parser.add_argument('--memory-worker', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--json', default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.memory_worker:
    # Always the system allocator: memory kept after a free would count in
    # the RSS before the step and hide what the step needs.
    pathlib.Path(args.json).write_text(json.dumps(memory_worker(args.memory_worker, args)))
    return
  common.set_malloc(args.malloc)
  load_before = f'load average {common.load_average()}'
  print(f'{common.describe(args)}; {common.machine()}', flush=True)
  result = measure(args, argv, memory=not args.no_memory)
  print()
  print(common.text_table(HEADERS, table_rows(result)))
  print('\n'.join(verdicts(result)))
  if args.markdown:
    print()
    print(common.markdown_table(HEADERS, table_rows(result)))
  if args.write_docs:
    common.write_section(SECTIONS[args.malloc], docs_section(result, args, argv, load_before))
    print(f'\nwrote the "{SECTIONS[args.malloc]}" section of {common.DOCS}')


if __name__ == '__main__':
  main()
