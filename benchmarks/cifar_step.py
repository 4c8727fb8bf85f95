"""CIFAR KD train step: kdjax against a hand-written `jax.jit` step and PyTorch.

The step of the CIFAR-100 KD benchmark of RepDistiller/mdistiller: a
resnet32x4 teacher (eval mode, no gradient) and a resnet8x4 student (train
mode, BatchNorm on batch statistics), batch 64 of 32x32x3 images, 100
classes, loss ``0.1 * CE + 0.9 * T² KL(teacher || student)`` at T = 4 and
one SGD step with momentum 0.9 (no weight decay), all on the CPU:

* kdjax: ``adapters.from_linen`` on the ``kdjax.zoo`` models,
  ``objective.Objective`` (``supervised`` + ``distill(losses.kl_divergence)``)
  and ``step.make_train_step``, ``jax.jit(..., donate_argnums=0)``.
* hand: one ``jax.jit`` function on the same linen modules, with the loss
  written inline, ``jax.value_and_grad`` and the optax update.
* kdjax+xla: the kdjax step jitted with
  ``compiler_options=zoo.cpu_conv_compiler_options()`` (XLA's own
  convolutions instead of YNNPACK's; nothing global is set).
* torch: the same architectures in PyTorch (NCHW, transcribed from
  RepDistiller's ``models/resnet.py``) and the step written as PyTorch KD
  libraries write it: teacher in ``eval()`` under ``torch.no_grad()``,
  student forward, CE + KD, ``zero_grad``, ``backward``, ``SGD.step``;
  ``torch.set_num_threads(--threads)``.

The JAX sides run once per ``conv_impl`` of the zoo (``'lax'``: autodiff of
``lax.conv_general_dilated``; ``'im2col'``: the same forward, the kernel
gradient as matrix products of shifted inputs). All sides start from the
same weights (the torch models get copies of the JAX ones): the script
checks that kdjax and hand give the same loss and parameters after the first
step, and that torch's first loss equals JAX's, before it times anything.

Timing: after the warm-up step, each of ``--repeats`` rounds times
``--steps`` steps of every side in turn (rotating the order), each block
ending in ``jax.block_until_ready``; wall clock (``time.perf_counter``) and
this process's CPU time (``time.process_time``, less sensitive to other
processes on a shared machine). Ratios are medians of the per-round ratios
with their interquartile range.

Phases: teacher forward, student forward (with the loss) and student
backward. In JAX each is a separately jitted function (the backward is a
jitted ``value_and_grad`` minus the forward); in torch the phases of the
step itself are timed (eager CPU execution is synchronous).

Convolutions: a micro-benchmark of one 3x3 convolution (``--conv-channels``,
32x32, the step's batch) splits forward, input gradient and kernel gradient
for XLA in NHWC and NCHW layouts, the zoo's ``im2col`` kernel gradient, a
single-matmul patches form, and torch.

XLA flags must be set before JAX starts, so ``--xla-variant NAME=FLAGS``
reruns the phases in a child process with ``XLA_FLAGS=FLAGS`` and reports
them next to the default.

Usage::

  python benchmarks/cifar_step.py                       # ~4 min on 2 idle cores
  python benchmarks/cifar_step.py --repeats 10 --impls im2col
  python benchmarks/cifar_step.py --xla-variant \
      ynn-dot=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT
  python benchmarks/cifar_step.py --write-docs          # update docs/performance.md
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _docs  # pylint: disable=wrong-import-position

from kdjax import adapters  # pylint: disable=wrong-import-position
from kdjax import losses  # pylint: disable=wrong-import-position
from kdjax import objective as objective_lib  # pylint: disable=wrong-import-position
from kdjax import step as step_lib  # pylint: disable=wrong-import-position
from kdjax import writers  # pylint: disable=wrong-import-position
from kdjax import zoo  # pylint: disable=wrong-import-position

DOCS = ROOT / 'docs' / 'performance.md'
SECTION = '## CIFAR KD train step'
GOAL_HAND = 1.02
# kdjax+xla: the kdjax step jitted with zoo.cpu_conv_compiler_options()
# (per-jit XLA options that leave convolutions to XLA instead of YNNPACK).
JAX_SIDES = ('kdjax', 'hand', 'kdjax+xla')
PHASES = ('teacher_fwd', 'student_fwd', 'student_bwd')


@dataclasses.dataclass(frozen=True)
class Setup:
  """The models and the step's hyper-parameters."""

  teacher_depth: int = 32
  teacher_widths: tuple[int, ...] = (32, 64, 128, 256)  # resnet32x4
  student_depth: int = 8
  student_widths: tuple[int, ...] = (32, 64, 128, 256)  # resnet8x4
  classes: int = 100
  batch: int = 64
  image: int = 32
  temperature: float = 4.0
  kd_weight: float = 0.9
  ce_weight: float = 0.1
  learning_rate: float = 0.05
  momentum: float = 0.9

  def describe(self) -> str:
    return (
        f'teacher resnet{self.teacher_depth} widths {self.teacher_widths}, student '
        f'resnet{self.student_depth} widths {self.student_widths}, batch '
        f'{self.batch} of {self.image}x{self.image}x3, {self.classes} classes'
    )


# ----------------------------------------------------------------------------
# JAX: models, data, the two steps and the phases.


def jax_models(setup: Setup, conv_impl: str) -> tuple[nn.Module, nn.Module]:
  teacher = zoo.CifarResNet(setup.teacher_depth, setup.teacher_widths, setup.classes,
                            conv_impl)
  student = zoo.CifarResNet(setup.student_depth, setup.student_widths, setup.classes,
                            conv_impl)
  return teacher, student


def numpy_init(module: nn.Module, x_shape, seed: int) -> dict[str, Any]:
  """Variables with the shapes of ``module.init``, drawn with NumPy.

  Compiling ``jax.jit(module.init)`` of a ResNet (a threefry draw per
  parameter) costs more CPU than compiling the train step; here only
  ``jax.eval_shape`` traces it. Conv kernels are He normal on fan-out
  (RepDistiller's init), the classifier PyTorch's default uniform; the
  BatchNorm scale, bias and running statistics are perturbed away from
  1 / 0 so that a wrong mapping of them would show in a comparison.
  """
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct(x_shape, jnp.float32))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == 'kernel' and len(shape) == 4:
      value = rng.normal(0.0, np.sqrt(2.0 / (shape[0] * shape[1] * shape[3])), shape)
    elif name == 'kernel':
      value = rng.uniform(-1.0, 1.0, shape) / np.sqrt(shape[0])
    elif name in ('scale', 'var'):
      value = rng.uniform(0.8, 1.2, shape)
    else:  # BatchNorm and classifier bias, running mean
      value = rng.uniform(-0.1, 0.1, shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def make_data(setup: Setup) -> dict[str, Any]:
  """A batch and both models' initial variables (the same for every side)."""
  rng = np.random.default_rng(0)
  shape = (setup.batch, setup.image, setup.image, 3)
  batch = {
      'x': jnp.asarray(rng.normal(size=shape), jnp.float32),
      'label': jnp.asarray(rng.integers(0, setup.classes, setup.batch), jnp.int32),
  }
  teacher, student = jax_models(setup, 'lax')
  return {
      'batch': batch,
      'teacher': numpy_init(teacher, (1, *shape[1:]), seed=1),
      'student': numpy_init(student, (1, *shape[1:]), seed=2),
  }


def optimizer(setup: Setup) -> optax.GradientTransformation:
  return optax.sgd(setup.learning_rate, momentum=setup.momentum)


def kd_loss_inline(setup: Setup, student_logits, teacher_logits, labels):
  """0.1 CE + 0.9 T² KL(p_teacher || p_student), batch means, written out."""
  temp = setup.temperature
  log_q = jax.nn.log_softmax(student_logits / temp)
  log_p = jax.nn.log_softmax(teacher_logits / temp)
  kl = temp**2 * jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  log_probs = jax.nn.log_softmax(student_logits)
  ce = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return setup.kd_weight * jnp.mean(kl) + setup.ce_weight * jnp.mean(ce)


def make_kdjax_step(setup: Setup, conv_impl: str, compiler_options=None):
  teacher, student = jax_models(setup, conv_impl)
  objective = objective_lib.Objective(
      terms={
          'kd': objective_lib.distill(losses.kl_divergence, temperature=setup.temperature),
          'ce': objective_lib.supervised(),
      },
      weights={'kd': setup.kd_weight, 'ce': setup.ce_weight},
  )
  step = step_lib.make_train_step(
      adapters.from_linen(student), adapters.from_linen(teacher), objective,
      optimizer(setup))
  return jax.jit(step, donate_argnums=0, compiler_options=compiler_options)


def make_hand_step(setup: Setup, conv_impl: str):
  teacher, student = jax_models(setup, conv_impl)
  tx = optimizer(setup)

  def hand_step(params, batch_stats, opt_state, teacher_vars, batch):
    t_logits = teacher.apply(teacher_vars, batch['x'], train=False)
    t_logits = jax.lax.stop_gradient(t_logits)

    def loss_fn(p):
      s_logits, new_vars = student.apply(
          {'params': p, 'batch_stats': batch_stats}, batch['x'], train=True,
          mutable=['batch_stats'])
      return kd_loss_inline(setup, s_logits, t_logits, batch['label']), new_vars

    (loss, new_vars), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, new_vars['batch_stats'], opt_state, loss

  return jax.jit(hand_step, donate_argnums=(0, 1, 2))


def make_phases(setup: Setup, conv_impl: str) -> dict[str, Any]:
  """Separately jitted teacher forward, student forward (+loss), student value_and_grad."""
  teacher, student = jax_models(setup, conv_impl)

  def teacher_fwd(teacher_vars, x):
    return teacher.apply(teacher_vars, x, train=False)

  def student_loss(params, batch_stats, t_logits, batch):
    s_logits, new_vars = student.apply(
        {'params': params, 'batch_stats': batch_stats}, batch['x'], train=True,
        mutable=['batch_stats'])
    return kd_loss_inline(setup, s_logits, t_logits, batch['label']), new_vars

  return {
      'teacher_fwd': jax.jit(teacher_fwd),
      'student_fwd': jax.jit(student_loss),
      'student_fwd_bwd': jax.jit(jax.value_and_grad(student_loss, has_aux=True)),
  }


def _fresh(tree):
  return jax.tree.map(jnp.copy, tree)


class JaxRunner:
  """One JAX side (kdjax or hand) for one conv_impl; `run(k)` does k steps."""

  def __init__(self, side: str, conv_impl: str, setup: Setup, data: dict[str, Any]):
    self.name = f'{side}/{conv_impl}'
    self.side = side
    self.batch = data['batch']
    self.teacher = _fresh(data['teacher'])
    student = _fresh(data['student'])
    tx = optimizer(setup)
    self.kdjax = side.startswith('kdjax')  # kdjax or kdjax+xla: a TrainState
    if self.kdjax:
      options = zoo.cpu_conv_compiler_options() if side == 'kdjax+xla' else None
      self.fn = make_kdjax_step(setup, conv_impl, options)
      self.state = step_lib.init_train_state(student, tx)
    else:
      self.fn = make_hand_step(setup, conv_impl)
      self.state = (student['params'], student['batch_stats'], tx.init(student['params']))
    self.loss = None

  def run(self, k: int = 1) -> None:
    for _ in range(k):
      if self.kdjax:
        self.state, metrics = self.fn(self.state, self.teacher, self.batch)
        self.loss = metrics['loss/total'][0]
      else:
        *state, self.loss = self.fn(*self.state, self.teacher, self.batch)
        self.state = tuple(state)
    jax.block_until_ready((self.state, self.loss))

  def params(self):
    return self.state.params if self.kdjax else self.state[0]

  def flops(self) -> float:
    """XLA's flop count of the lowered step (tracing only, no compile)."""
    args = (self.state,) if self.kdjax else tuple(self.state)
    try:
      cost = self.fn.lower(*args, self.teacher, self.batch).cost_analysis()
    except Exception:  # pylint: disable=broad-except
      return float('nan')
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    return float((cost or {}).get('flops', float('nan')))


# ----------------------------------------------------------------------------
# PyTorch: RepDistiller's CIFAR ResNet and its KD step.


def torch_resnet(depth: int, widths, classes: int):
  """RepDistiller's ``ResNet(depth, num_filters, 'basicblock')`` in PyTorch.

  conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (1x1 conv + BN where the shape
  changes), ReLU; stem conv3x3-BN-ReLU; stages of (depth - 2) / 6 blocks with
  strides 1, 2, 2; global average pooling (``AvgPool2d(8)`` on 32x32 input)
  and a linear classifier. The layer names follow RepDistiller's.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn as tnn  # pylint: disable=g-import-not-at-top

  def conv(cin, cout, size, stride):
    return tnn.Conv2d(cin, cout, size, stride=stride, padding=size // 2, bias=False)

  class BasicBlock(tnn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = conv(cin, cout, 3, stride)
      self.bn1 = tnn.BatchNorm2d(cout)
      self.conv2 = conv(cout, cout, 3, 1)
      self.bn2 = tnn.BatchNorm2d(cout)
      self.downsample = None
      if stride != 1 or cin != cout:
        self.downsample = tnn.Sequential(conv(cin, cout, 1, stride), tnn.BatchNorm2d(cout))

    def forward(self, x):
      out = torch.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      shortcut = x if self.downsample is None else self.downsample(x)
      return torch.relu(out + shortcut)

  class ResNet(tnn.Module):

    def __init__(self):
      super().__init__()
      blocks = (depth - 2) // 6
      self.conv1 = conv(3, widths[0], 3, 1)
      self.bn1 = tnn.BatchNorm2d(widths[0])
      cin = widths[0]
      for stage, (cout, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
        layer = []
        for i in range(blocks):
          layer.append(BasicBlock(cin, cout, stride if i == 0 else 1))
          cin = cout
        setattr(self, f'layer{stage + 1}', tnn.Sequential(*layer))
      self.fc = tnn.Linear(widths[3], classes)

    def forward(self, x):
      x = torch.relu(self.bn1(self.conv1(x)))
      x = self.layer3(self.layer2(self.layer1(x)))
      return self.fc(torch.flatten(x.mean(dim=(2, 3)), 1))

  return ResNet()


def load_jax_variables(model, variables) -> None:
  """Copies linen CifarResNet variables into :func:`torch_resnet` (HWIO -> OIHW)."""
  import torch  # pylint: disable=g-import-not-at-top

  params, stats = variables['params'], variables['batch_stats']
  state = {}

  def put(name, value, transpose=None):
    value = np.asarray(value, np.float32)
    if transpose is not None:
      value = value.transpose(transpose)
    state[name] = torch.from_numpy(np.array(value, order='C'))  # a writable copy

  def conv(prefix, p):
    put(f'{prefix}.weight', p['kernel'], (3, 2, 0, 1))

  def bn(prefix, p, s):
    put(f'{prefix}.weight', p['scale'])
    put(f'{prefix}.bias', p['bias'])
    put(f'{prefix}.running_mean', s['mean'])
    put(f'{prefix}.running_var', s['var'])

  conv('conv1', params['conv1'])
  bn('bn1', params['bn1'], stats['bn1'])
  for name, block in params.items():
    match = re.fullmatch(r'layer(\d)_(\d+)', name)
    if not match:
      continue
    prefix = f'layer{match.group(1)}.{match.group(2)}'
    conv(f'{prefix}.conv1', block['conv1'])
    conv(f'{prefix}.conv2', block['conv2'])
    bn(f'{prefix}.bn1', block['bn1'], stats[name]['bn1'])
    bn(f'{prefix}.bn2', block['bn2'], stats[name]['bn2'])
    if 'downsample_conv' in block:
      conv(f'{prefix}.downsample.0', block['downsample_conv'])
      bn(f'{prefix}.downsample.1', block['downsample_bn'], stats[name]['downsample_bn'])
  put('fc.weight', params['fc']['kernel'], (1, 0))
  put('fc.bias', params['fc']['bias'])
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [m for m in missing if not m.endswith('num_batches_tracked')]
  if missing or unexpected:
    raise ValueError(f'weights do not fit: missing {missing}, unexpected {unexpected}')


class TorchRunner:
  """The PyTorch KD step as RepDistiller's ``train_distill`` writes it."""

  def __init__(self, setup: Setup, data: dict[str, Any], threads: int):
    import torch  # pylint: disable=g-import-not-at-top
    import torch.nn.functional as F  # pylint: disable=g-import-not-at-top,invalid-name

    torch.set_num_threads(threads)
    self.name = 'torch'
    self.torch, self.F, self.setup = torch, F, setup
    self.teacher = torch_resnet(setup.teacher_depth, setup.teacher_widths, setup.classes)
    self.student = torch_resnet(setup.student_depth, setup.student_widths, setup.classes)
    load_jax_variables(self.teacher, data['teacher'])
    load_jax_variables(self.student, data['student'])
    self.teacher.eval()
    self.student.train()
    self.opt = torch.optim.SGD(self.student.parameters(), lr=setup.learning_rate,
                               momentum=setup.momentum)
    self.x = torch.from_numpy(np.asarray(data['batch']['x']).transpose(0, 3, 1, 2).copy())
    self.y = torch.from_numpy(np.asarray(data['batch']['label']).astype(np.int64))
    self.loss = None
    self.phases = collections.defaultdict(list)

  def kd_loss(self, s_logits, t_logits):
    temp = self.setup.temperature
    log_q = self.F.log_softmax(s_logits / temp, dim=1)
    p = self.F.softmax(t_logits / temp, dim=1)
    return self.F.kl_div(log_q, p, reduction='batchmean') * temp**2

  def run(self, k: int = 1) -> None:
    setup = self.setup
    clock = lambda: np.array([time.perf_counter(), time.process_time()])
    for _ in range(k):
      start = clock()
      with self.torch.no_grad():
        t_logits = self.teacher(self.x)
      t_fwd = clock()
      s_logits = self.student(self.x)
      loss = (setup.ce_weight * self.F.cross_entropy(s_logits, self.y)
              + setup.kd_weight * self.kd_loss(s_logits, t_logits))
      s_fwd = clock()
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      s_bwd = clock()
      self.opt.step()
      end = clock()
      self.loss = float(loss.detach())
      for name, value in (('teacher_fwd', t_fwd - start), ('student_fwd', s_fwd - t_fwd),
                          ('student_bwd', s_bwd - s_fwd), ('update', end - s_bwd)):
        self.phases[name].append(value[0])
        self.phases[f'{name}_cpu'].append(value[1])


# ----------------------------------------------------------------------------
# Timing.


def time_call(fn) -> tuple[float, float]:
  """(wall, CPU) seconds of fn()."""
  start, start_cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - start, time.process_time() - start_cpu


def check_first_step(runners: dict[str, Any], torch_runner) -> dict[str, float]:
  """After the warm-up step (which is the first step): kdjax == hand, torch == JAX."""
  first = {}
  for name, runner in runners.items():
    first[name] = float(runner.loss)
  for name, runner in runners.items():
    # kdjax against hand; kdjax under the compiler options against kdjax.
    reference = {'kdjax': 'hand', 'kdjax+xla': 'kdjax'}.get(runner.side)
    other = runners.get(name.replace(f'{runner.side}/', f'{reference}/')) if reference else None
    if other is None:
      continue
    np.testing.assert_allclose(first[name], first[other.name], rtol=1e-5,
                               err_msg=f'{name} and {other.name}: first losses differ')
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 runner.params(), other.params())
  if torch_runner is not None and runners:
    reference = next(iter(first.values()))
    np.testing.assert_allclose(torch_runner.loss, reference, rtol=2e-4,
                               err_msg='torch and JAX first losses differ')
    first['torch'] = torch_runner.loss
  return first


def round_order(everyone: list[Any], rep: int) -> list[Any]:
  """The order of the sides in round `rep`.

  The kdjax and hand steps of one conv_impl run back to back, kdjax first in
  even rounds and hand first in odd ones (so neither always follows the
  other, nor torch); the groups (and torch) rotate from round to round.
  """
  groups = collections.defaultdict(list)
  for runner in everyone:
    groups[runner.name.split('/')[-1] if '/' in runner.name else runner.name].append(runner)
  groups = [g if rep % 2 == 0 else g[::-1] for g in groups.values()]
  shift = rep % len(groups)
  return [runner for group in groups[shift:] + groups[:shift] for runner in group]


def measure_steps(setup: Setup, data, args) -> dict[str, Any]:
  runners = {}
  compile_s = {}
  for impl in args.impls:
    for side in JAX_SIDES:
      if side in args.sides:
        runner = JaxRunner(side, impl, setup, data)
        compile_s[runner.name] = time_call(runner.run)[0]  # trace + compile + step 1
        runners[runner.name] = runner
  torch_runner = None
  if 'torch' in args.sides:
    torch_runner = TorchRunner(setup, data, args.threads)
    compile_s['torch'] = time_call(torch_runner.run)[0]
  first_loss = check_first_step(runners, torch_runner)
  everyone = list(runners.values()) + ([torch_runner] if torch_runner else [])
  for runner in everyone:  # warm-up beyond the checked first step
    runner.run(args.warmup)
  if torch_runner is not None:
    torch_runner.phases.clear()
  times = collections.defaultdict(list)
  for rep in range(args.repeats):
    for runner in round_order(everyone, rep):
      wall, cpu = time_call(lambda r=runner: r.run(args.steps))
      times[runner.name].append((wall / args.steps, cpu / args.steps))
  times = {name: np.asarray(v) for name, v in times.items()}  # [repeats, 2]
  result = {
      'compile_s': compile_s,
      'flops': {name: runner.flops() for name, runner in runners.items()},
      'first_loss': first_loss,
      'median_s': {n: float(np.median(v[:, 0])) for n, v in times.items()},
      'median_cpu_s': {n: float(np.median(v[:, 1])) for n, v in times.items()},
      'rounds_s': {n: v.tolist() for n, v in times.items()},  # [round, (wall, CPU)]
      'ratios': {},
  }
  for impl in args.impls:
    pairs = [(f'kdjax/{impl}', f'hand/{impl}'), (f'kdjax/{impl}', 'torch'),
             (f'kdjax+xla/{impl}', 'torch'), (f'kdjax+xla/{impl}', f'kdjax/{impl}')]
    for num, den in pairs:
      if num in times and den in times:
        for clock, col in (('wall', 0), ('cpu', 1)):
          ratio = times[num][:, col] / times[den][:, col]
          result['ratios'][f'{num} / {den} ({clock})'] = [
              float(np.median(ratio)), float(np.percentile(ratio, 25)),
              float(np.percentile(ratio, 75))]
  if torch_runner is not None:
    result['torch_phases_s'] = {n: float(np.median(v)) for n, v in torch_runner.phases.items()}
  return result


def measure_phases(setup: Setup, data, args) -> dict[str, dict[str, float]]:
  """Median seconds of each phase, per conv_impl, timed alternating."""
  batch, teacher_vars, student_vars = data['batch'], data['teacher'], data['student']
  params, stats = student_vars['params'], student_vars['batch_stats']
  calls = {}
  for impl in args.phase_impls:
    fns = make_phases(setup, impl)
    t_logits = jax.block_until_ready(fns['teacher_fwd'](teacher_vars, batch['x']))
    calls[impl] = {
        'teacher_fwd': lambda f=fns['teacher_fwd']: f(teacher_vars, batch['x']),
        'student_fwd': lambda f=fns['student_fwd'], t=t_logits: f(params, stats, t, batch),
        'student_fwd_bwd': lambda f=fns['student_fwd_bwd'], t=t_logits: f(params, stats, t, batch),
    }
    for fn in calls[impl].values():  # compile and warm up
      jax.block_until_ready(fn())
  times = collections.defaultdict(list)
  for _ in range(args.phase_repeats):
    for impl, fns in calls.items():
      for name, fn in fns.items():
        times[impl, name].append(time_call(lambda f=fn: jax.block_until_ready(f())))
  result = {}
  for impl in calls:
    med = {name: np.median(times[impl, name], axis=0) for name in calls[impl]}
    result[impl] = {}
    for col, suffix in ((0, ''), (1, '_cpu')):
      result[impl].update({
          f'teacher_fwd{suffix}': float(med['teacher_fwd'][col]),
          f'student_fwd{suffix}': float(med['student_fwd'][col]),
          f'student_bwd{suffix}': float(med['student_fwd_bwd'][col] - med['student_fwd'][col]),
      })
  return result


# ----------------------------------------------------------------------------
# One convolution: forward, input gradient and kernel gradient of each form.


def conv_forms(channels: int):
  """name -> (fwd(x, k), input_grad(x, k, g), kernel_grad(x, k, g)), NHWC/HWIO args."""
  from kdjax.zoo import _conv  # pylint: disable=g-import-not-at-top

  def lax_conv(dims):
    def fwd(x, k):
      return jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=dims)

    return fwd

  def bf16_conv(x, k):
    dims = ('NHWC', 'HWIO', 'NHWC')
    y = jax.lax.conv_general_dilated(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), (1, 1),
                                     'SAME', dimension_numbers=dims)
    return y.astype(jnp.float32)

  def im2col(x, k):
    return _conv.conv2d(x, k, padding=((1, 1), (1, 1)), conv_impl='im2col')

  def patches_kernel_grad(x, k, g):
    """One matrix product of the concatenated patches [pixels, 9 in] with g."""
    del k
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    taps = [xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]
    patches = jnp.concatenate(taps, axis=-1).reshape(-1, 9 * channels)
    out = jnp.dot(patches.T, g.reshape(-1, g.shape[-1]))
    return out.reshape(3, 3, channels, -1)

  def grads(fwd):
    def input_grad(x, k, g):
      return jax.vjp(lambda x_: fwd(x_, k), x)[1](g)[0]

    def kernel_grad(x, k, g):
      return jax.vjp(lambda k_: fwd(x, k_), k)[1](g)[0]

    return fwd, input_grad, kernel_grad

  nhwc = grads(lax_conv(('NHWC', 'HWIO', 'NHWC')))
  forms = {
      'XLA NHWC (lax)': nhwc,
      # Takes NCHW / OIHW arrays: the layout itself, no transposes timed.
      'XLA NCHW': grads(lax_conv(('NCHW', 'OIHW', 'NCHW'))),
      'zoo im2col (per-tap matmuls)': grads(im2col),
      'patches, one matmul': (nhwc[0], nhwc[1], patches_kernel_grad),
      # Inputs, kernel and gradients cast to bfloat16 inside (casts timed).
      'XLA NHWC, bfloat16 arrays': grads(bf16_conv),
  }
  return forms


def measure_conv(args, batch: int, size: int) -> dict[str, dict[str, float]]:
  """Median seconds of fwd / input grad / kernel grad for one 3x3 convolution."""
  c = args.conv_channels
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(1), 3)
  x = jax.random.normal(kx, (batch, size, size, c))
  k = jax.random.normal(kk, (3, 3, c, c)) * 0.1
  g = jax.random.normal(kg, (batch, size, size, c))
  layouts = {
      'XLA NCHW': (x.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1), g.transpose(0, 3, 1, 2)),
  }
  calls = {}
  reference = None
  for name, (fwd, input_grad, kernel_grad) in conv_forms(c).items():
    xa, ka, ga = layouts.get(name, (x, k, g))
    jitted = [jax.jit(fwd), jax.jit(input_grad), jax.jit(kernel_grad)]
    calls[name] = [lambda f=f, a=a: f(*a) for f, a in zip(
        jitted, [(xa, ka), (xa, ka, ga), (xa, ka, ga)])]
    kernel_grad_value = np.asarray(jax.block_until_ready(calls[name][2]()))
    if name == 'XLA NCHW':
      kernel_grad_value = kernel_grad_value.transpose(2, 3, 1, 0)
    if reference is None:
      reference = kernel_grad_value
    tol = 5e-2 if 'bfloat16' in name else 2e-3
    np.testing.assert_allclose(kernel_grad_value, reference, rtol=tol,
                               atol=tol * np.abs(reference).max(),
                               err_msg=f'{name}: kernel gradient differs')
    for call in calls[name]:
      jax.block_until_ready(call())
  if 'torch' in args.sides:
    calls['torch NCHW'] = torch_conv_calls(x, k, g, args.threads)
  times = collections.defaultdict(list)
  for _ in range(args.conv_repeats):
    for name, fns in calls.items():
      for part, fn in zip(('fwd', 'input_grad', 'kernel_grad'), fns):
        times[name, part].append(time_call(lambda f=fn: jax.block_until_ready(f()))[0])
  return {name: {part: float(np.median(times[name, part]))
                 for part in ('fwd', 'input_grad', 'kernel_grad')} for name in calls}


def torch_conv_calls(x, k, g, threads: int):
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import grad as tgrad  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  kt = torch.from_numpy(np.asarray(k).transpose(3, 2, 0, 1).copy())
  gt = torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy())
  conv = torch.nn.functional.conv2d

  def timed(fn):
    def call():
      with torch.no_grad():
        return fn()
    call()
    return call

  return [
      timed(lambda: conv(xt, kt, padding=1)),
      timed(lambda: tgrad.conv2d_input(xt.shape, kt, gt, padding=1)),
      timed(lambda: tgrad.conv2d_weight(xt, kt.shape, gt, padding=1)),
  ]


# ----------------------------------------------------------------------------
# XLA flag variants: a child process per variant (flags are read at start-up).


def measure_variant(flags: str, args) -> dict[str, Any]:
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / 'phases.json'
    cmd = [sys.executable, __file__, '--phases-only', '--json', str(out),
           '--impls', ','.join(args.phase_impls), '--phase-repeats', str(args.phase_repeats),
           '--batch', str(args.batch), '--sides', 'kdjax',  # no torch in the child
           '--conv-channels', str(args.conv_channels), '--conv-repeats', str(args.conv_repeats)]
    cmd += ['--toy'] if args.toy else []
    cmd += ['--no-conv'] if args.no_conv else []
    env = {**os.environ, 'XLA_FLAGS': f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
      return {'error': (proc.stderr.strip().splitlines() or ['failed'])[-1]}
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------
# Reporting.


def machine() -> str:
  load = ', '.join(f'{x:.2f}' for x in os.getloadavg())
  return f"{writers.environment()['machine']}, load average {load}"


def _ms(seconds: float) -> str:
  return f'{seconds * 1e3:.0f}'


def step_table(result, setup: Setup) -> str:
  med, cpu = result['median_s'], result['median_cpu_s']
  lines = ['| side | ms/step | images/s | CPU s/step | first call s | XLA GFLOP/step |',
           '|---|---:|---:|---:|---:|---:|']
  for name in med:
    flops = result.get('flops', {}).get(name)
    flops = '' if flops is None else f'{flops / 1e9:.1f}'
    lines.append(f"| {name} | {_ms(med[name])} | {setup.batch / med[name]:.1f} | "
                 f"{cpu[name]:.2f} | {result['compile_s'][name]:.1f} | {flops} |")
  return '\n'.join(lines)


def ratio_table(result) -> str:
  lines = ['| ratio | median [IQR] |', '|---|---:|']
  for name, (mid, low, high) in result['ratios'].items():
    lines.append(f'| {name} | {mid:.3f} [{low:.3f}, {high:.3f}] |')
  return '\n'.join(lines)


def phase_table(phases: dict[str, Any], torch_phases: dict[str, float] | None) -> str:
  lines = ['| variant | teacher fwd ms | student fwd ms | student bwd ms | sum ms | '
           'CPU ms: teacher fwd / student fwd / student bwd |',
           '|---|---:|---:|---:|---:|---:|']
  rows = dict(phases)
  if torch_phases:
    rows['torch (phases of its step)'] = torch_phases
  for name, p in rows.items():
    if 'error' in p:
      lines.append(f"| {name} | failed: {p['error']} | | | |")
      continue
    total = sum(p[k] for k in PHASES)
    cpu = ' / '.join(_ms(p[f'{k}_cpu']) for k in PHASES if f'{k}_cpu' in p)
    lines.append(f'| {name} | ' + ' | '.join(_ms(p[k]) for k in PHASES)
                 + f' | {_ms(total)} | {cpu} |')
  return '\n'.join(lines)


def conv_table(conv: dict[str, dict[str, float]], args, setup: Setup) -> str:
  c, size = args.conv_channels, setup.image
  lines = [f'| 3x3 conv {c}->{c}, {size}x{size}, batch {setup.batch} | forward ms | input grad ms | '
           'kernel grad ms |', '|---|---:|---:|---:|']
  for name, p in conv.items():
    lines.append(f"| {name} | {p['fwd'] * 1e3:.1f} | {p['input_grad'] * 1e3:.1f} | "
                 f"{p['kernel_grad'] * 1e3:.1f} |")
  return '\n'.join(lines)


def flatten_phases(results) -> dict[str, Any]:
  phases = {f'JAX {impl}': p for impl, p in results.get('phases', {}).items()}
  for variant, child in results.get('variants', {}).items():
    if 'error' in child:
      phases[f'JAX, XLA_FLAGS {variant}'] = child
      continue
    for impl, p in child['phases'].items():
      phases[f'JAX {impl}, XLA_FLAGS {variant}'] = p
  return phases


def flatten_conv(results) -> dict[str, Any]:
  conv = dict(results.get('conv', {}))
  for variant, child in results.get('variants', {}).items():
    for name, p in child.get('conv', {}).items():
      if name.startswith('XLA NHWC') or name.startswith('zoo'):
        conv[f'{name}, XLA_FLAGS {variant}'] = p
  return conv


def verdicts(result) -> list[str]:
  words = []
  for name, (mid, low, high) in result['ratios'].items():
    if not name.endswith('(wall)'):
      continue
    if '/ kdjax' in name:  # the options' speed-up, no goal
      words.append(f'{name.replace(" (wall)", "")}: {mid:.3f}')
      continue
    goal = GOAL_HAND if '/ hand' in name else 1.0
    if high <= goal:
      word = f'meets the goal of {goal}'
    elif low > goal:
      word = f'misses the goal of {goal}'
    else:
      word = f'the interquartile range spans the goal of {goal}: not resolved'
    words.append(f'{name.replace(" (wall)", "")}: {mid:.3f} ({word})')
  return words


def variant_lines(results) -> str:
  flags = results.get('variant_flags', {})
  if not flags:
    return ''
  return '* XLA flag variants (child processes): ' + '; '.join(
      f'*{name}*: `{value}`' for name, value in flags.items()) + '\n'


def command_line() -> str:
  return shlex.join(['python', 'benchmarks/cifar_step.py', *sys.argv[1:]])


def importlib_version(name: str) -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return '?'


# Above this 1-minute load average, at the start or at the end of a run, the
# timings are not a result (issue 12: "a benchmark run at a load average
# above 2 is not a result").
MAX_LOAD = 2.0


def load_warning(loads) -> str | None:
  """:func:`_docs.load_warning` of ``os.getloadavg()`` at the start and at
  the end (`loads`), both held to MAX_LOAD."""
  return _docs.load_warning(loads[0][0], loads[-1][0], max_start=MAX_LOAD, max_end=MAX_LOAD)


def docs_section(results, setup: Setup, args, loads) -> str:
  load_before, load_after = (', '.join(f'{x:.2f}' for x in load) for load in loads)
  invalid = load_warning(loads)
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  parts = [f"""{SECTION}

Generated by `benchmarks/cifar_step.py`; do not edit by hand.

The CIFAR-100 KD train step of RepDistiller/mdistiller on the CPU: {setup.describe()};
loss {setup.ce_weight} x CE + {setup.kd_weight} x T² KL at T = {setup.temperature:g};
SGD (lr {setup.learning_rate}, momentum {setup.momentum}, no weight decay).
*kdjax* is `adapters.from_linen` + `objective.Objective` (`supervised`,
`distill(losses.kl_divergence)`) + `step.make_train_step` under
`jax.jit(..., donate_argnums=0)`; *kdjax+xla* is the same under
`jax.jit(..., compiler_options=zoo.cpu_conv_compiler_options())`
({', '.join(f'`{k}={v}`' for k, v in zoo.cpu_conv_compiler_options().items()) or 'none on this backend'}:
per-jit options that leave the convolutions to XLA instead of YNNPACK); *hand* is one hand-written `jax.jit`
function on the same linen modules; *torch* is the same architectures in
PyTorch {importlib_version('torch')} (NCHW) with the step as RepDistiller writes it (teacher
`eval()` under `no_grad`, student forward, CE + KD, `backward`, `SGD.step`),
`torch.set_num_threads({args.threads})`. `lax` and `im2col` are the zoo's `conv_impl`
(`im2col` computes the kernel gradient as matrix products of shifted inputs).
All sides start from the same weights; kdjax and hand (and kdjax+xla and
kdjax) were checked to give the same first loss and parameters, torch the
same first loss
(JAX {results['steps']['first_loss'].get(f'kdjax/{args.impls[0]}', float('nan')):.5f},
torch {results['steps']['first_loss'].get('torch', float('nan')):.5f}).
After {args.warmup} warm-up step(s), each of {args.repeats} rounds times {args.steps}
step(s) of every side in turn (kdjax and hand of one `conv_impl` back to back,
alternating which goes first; the groups rotate). Times are medians;
ratios are medians of the per-round ratios with the interquartile range, by
wall clock and by this process's CPU time (less sensitive to the other
processes on a shared machine).

* Command: `{command_line()}` (under `nice`)
* Date: {date}
* JAX {jax.__version__}, Flax {importlib_version('flax')}, optax {optax.__version__}, backend {jax.default_backend()}, XLA_FLAGS `{os.environ.get('XLA_FLAGS') or '(none)'}`
* Machine: {writers.environment()['machine']}; load average before the run {load_before}, after {load_after}
* Result: {invalid + '. Read as: ' if invalid else ''}{'; '.join(verdicts(results['steps']))}
{variant_lines(results)}
{step_table(results['steps'], setup)}

{ratio_table(results['steps'])}
"""]
  if results.get('phases'):
    parts.append(f"""### Where the time goes

Median of {args.phase_repeats} alternating calls of separately jitted teacher
forward (eval mode), student forward (train mode, with the loss) and student
forward + backward (`jax.value_and_grad`); *student bwd* is the difference.
The torch row splits its own step. XLA flag variants run in a child
process with `XLA_FLAGS` set.

{phase_table(flatten_phases(results), results['steps'].get('torch_phases_s'))}
""")
  if results.get('conv'):
    parts.append(f"""### One convolution

A 3x3, stride-1 convolution split into forward, input gradient and kernel
gradient, each jitted alone (torch: `conv2d`, `conv2d_input`,
`conv2d_weight` under `no_grad`); median of {args.conv_repeats}. All kernel
gradients were checked equal to XLA's. *patches, one matmul* concatenates
the nine shifted inputs into one `[pixels, 9 x in]` matrix and does a single
product (the im2col of the textbooks); the zoo's `im2col` does one product
per tap and sums nothing (each tap is its own slice of the kernel gradient).
*bfloat16 arrays* casts inputs and kernel to bfloat16 inside the function.
Rows with `XLA_FLAGS` come from the child process of that variant.

{conv_table(flatten_conv(results), args, setup)}
""")
  return '\n'.join(parts)


def write_docs(section: str, path: pathlib.Path = DOCS) -> None:
  """Replaces (or appends) this benchmark's section, keeping the rest of the page."""
  _docs.write_section(SECTION, section, path)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--impls', default='lax,im2col',
                      help="comma-separated conv_impl values of the JAX steps")
  parser.add_argument('--phase-impls', default=None,
                      help='conv_impl values of the phase split (default: --impls)')
  parser.add_argument('--sides', default='kdjax,hand,kdjax+xla,torch',
                      help='comma-separated sides to time: kdjax, hand, kdjax+xla, torch')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--toy', action='store_true',
                      help='tiny models and 8x8 images (for tests)')
  parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
  parser.add_argument('--steps', type=int, default=1, help='steps per timed block')
  parser.add_argument('--warmup', type=int, default=1,
                      help='warm-up steps after the checked first step')
  parser.add_argument('--repeats', type=int, default=3, help='timed rounds')
  parser.add_argument('--phase-repeats', type=int, default=3)
  parser.add_argument('--no-phases', action='store_true')
  parser.add_argument('--conv-channels', type=int, default=64)
  parser.add_argument('--conv-repeats', type=int, default=5)
  parser.add_argument('--no-conv', action='store_true')
  parser.add_argument('--xla-variant', action='append', default=[],
                      metavar='NAME=FLAGS', help='phases again under XLA_FLAGS=FLAGS')
  parser.add_argument('--phases-only', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--json', default=None, help='also write the results as JSON')
  parser.add_argument('--write-docs', action='store_true',
                      help=f'update the "{SECTION}" section of {DOCS.relative_to(ROOT)}')
  args = parser.parse_args(argv)
  args.impls = [s for s in args.impls.split(',') if s]
  args.phase_impls = ([s for s in args.phase_impls.split(',') if s]
                      if args.phase_impls is not None else args.impls)
  args.sides = [s for s in args.sides.split(',') if s]
  unknown = sorted(set(args.sides) - {*JAX_SIDES, 'torch'})
  if unknown:
    parser.error(f'--sides: unknown {unknown}')
  return args


def make_setup(args) -> Setup:
  if args.toy:
    return Setup(teacher_depth=8, teacher_widths=(4, 4, 8, 8), student_depth=8,
                 student_widths=(4, 4, 4, 8), classes=10, batch=args.batch, image=8)
  return Setup(batch=args.batch)


def run(args) -> dict[str, Any]:
  setup = make_setup(args)
  data = make_data(setup)
  results: dict[str, Any] = {}
  if args.phases_only:  # a child process of --xla-variant
    results['phases'] = measure_phases(setup, data, args)
    if not args.no_conv:
      results['conv'] = measure_conv(args, setup.batch, setup.image)
    return results
  print(f'{setup.describe()}; JAX {jax.__version__}; {machine()}', flush=True)
  results['steps'] = measure_steps(setup, data, args)
  print(step_table(results['steps'], setup), '', ratio_table(results['steps']), sep='\n',
        flush=True)
  if not args.no_phases:
    results['phases'] = measure_phases(setup, data, args)
    for variant in args.xla_variant:
      name, _, flags = variant.partition('=')
      results.setdefault('variants', {})[name] = measure_variant(flags, args)
      results.setdefault('variant_flags', {})[name] = flags
    print(phase_table(flatten_phases(results), results['steps'].get('torch_phases_s')),
          flush=True)
  if not args.no_conv:
    results['conv'] = measure_conv(args, setup.batch, setup.image)
    print(conv_table(flatten_conv(results), args, setup), flush=True)
  return results


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  loads = [os.getloadavg()]
  results = run(args)
  loads.append(os.getloadavg())
  invalid = None if args.phases_only else load_warning(loads)
  if invalid:
    print(f'\n{invalid}.', flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1, default=str))
  if args.write_docs:
    write_docs(docs_section(results, make_setup(args), args, loads))
    print(f'\nwrote the "{SECTION}" section of {DOCS}')
  return results


if __name__ == '__main__':
  main()
