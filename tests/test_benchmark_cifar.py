"""Smoke tests of benchmarks/cifar_step.py on toy models (no timing asserted)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
      'cifar_step', ROOT / 'benchmarks' / 'cifar_step.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  return module


bench = _load_benchmark()
TOY = bench.make_setup(bench.parse_args(['--toy', '--batch', '4']))


@pytest.fixture(scope='module')
def data():
  return bench.make_data(TOY)


def test_kdjax_step_equals_hand_written_step(data):
  runners = {}
  for side in bench.JAX_SIDES:
    runner = bench.JaxRunner(side, 'lax', TOY, data)
    runner.run()
    runners[runner.name] = runner
  # Same first loss and parameters (raises otherwise); then a second step.
  first = bench.check_first_step(runners, None)
  assert np.isfinite(first['kdjax/lax']) and 'kdjax+xla/lax' in first
  for runner in runners.values():
    runner.run()
  np.testing.assert_allclose(float(runners['kdjax/lax'].loss),
                             float(runners['hand/lax'].loss), rtol=1e-5)
  # The student moved: a step really happened.
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       runners['kdjax/lax'].params(), data['student']['params'])
  assert max(jax.tree.leaves(moved)) > 0


@pytest.fixture(scope='module')
def jax_logits(data):
  """Teacher logits (eval mode) and student logits (train mode) of the toy batch."""
  teacher, student = bench.jax_models(TOY, 'lax')
  logits = {}
  for name, module, train in (('teacher', teacher, False), ('student', student, True)):
    apply = jax.jit(lambda v, x, m=module, t=train: m.apply(
        v, x, train=t, mutable=['batch_stats'])[0])
    logits[name] = apply(data[name], data['batch']['x'])
  return logits


def test_torch_transcription_matches_the_zoo(data, jax_logits):
  torch = pytest.importorskip('torch')
  x_torch = torch.from_numpy(np.array(data['batch']['x']).transpose(0, 3, 1, 2).copy())
  for name, depth, widths, train in (
      ('teacher', TOY.teacher_depth, TOY.teacher_widths, False),
      ('student', TOY.student_depth, TOY.student_widths, True),
  ):
    model = bench.torch_resnet(depth, widths, TOY.classes)
    assert sum(p.numel() for p in model.parameters()) == sum(
        v.size for v in jax.tree.leaves(data[name]['params']))
    bench.load_jax_variables(model, data[name])
    model.train(train)
    with torch.no_grad():
      got = model(x_torch).numpy()
    np.testing.assert_allclose(got, np.asarray(jax_logits[name]), rtol=1e-4, atol=1e-5)


def test_torch_step_loss_equals_jax_loss(data, jax_logits):
  pytest.importorskip('torch')
  runner = bench.TorchRunner(TOY, data, threads=1)
  runner.run()
  expected = bench.kd_loss_inline(TOY, jax_logits['student'], jax_logits['teacher'],
                                  data['batch']['label'])
  np.testing.assert_allclose(runner.loss, float(expected), rtol=1e-4)
  assert set(runner.phases) == {f'{name}{suffix}' for name in (*bench.PHASES, 'update')
                                 for suffix in ('', '_cpu')}


def test_write_docs_replaces_only_its_section(tmp_path):
  page = tmp_path / 'performance.md'
  page.write_text('# Performance\n\nIntro.\n\n## Other\n\nkept\n')
  bench.write_docs(f'{bench.SECTION}\n\nfirst\n', page)
  bench.write_docs(f'{bench.SECTION}\n\nsecond\n', page)
  text = page.read_text()
  assert text.count(bench.SECTION) == 1
  assert 'second' in text and 'first' not in text
  assert '## Other\n\nkept' in text and text.startswith('# Performance\n\nIntro.')


def test_docs_section_and_verdicts():
  args = bench.parse_args(['--toy', '--impls', 'im2col', '--batch', '4'])
  steps = {
      'compile_s': {'kdjax/im2col': 1.0, 'hand/im2col': 1.0, 'torch': 0.5},
      'first_loss': {'kdjax/im2col': 2.0, 'torch': 2.0},
      'median_s': {'kdjax/im2col': 0.1, 'hand/im2col': 0.1, 'torch': 0.2},
      'median_cpu_s': {'kdjax/im2col': 0.2, 'hand/im2col': 0.2, 'torch': 0.4},
      'ratios': {'kdjax/im2col / hand/im2col (wall)': [1.0, 0.99, 1.01],
                 'kdjax/im2col / torch (wall)': [0.5, 0.4, 1.1]},
      'torch_phases_s': {'teacher_fwd': 0.1, 'student_fwd': 0.05, 'student_bwd': 0.05},
  }
  results = {
      'steps': steps,
      'phases': {'im2col': {'teacher_fwd': 0.01, 'student_fwd': 0.01, 'student_bwd': 0.02,
                            'teacher_fwd_cpu': 0.02, 'student_fwd_cpu': 0.02,
                            'student_bwd_cpu': 0.04}},
      'variants': {'broken': {'error': 'bad flag'}},
      'conv': {'XLA NHWC (lax)': {'fwd': 0.1, 'input_grad': 0.1, 'kernel_grad': 1.0}},
  }
  text = bench.docs_section(results, TOY, args, [(1.0, 1.0, 1.0), (1.0, 1.0, 1.0)])
  assert text.startswith(bench.SECTION) and 'NOT A RESULT' not in text
  assert 'meets the goal of 1.02' in text
  assert 'spans the goal of 1.0: not resolved' in text
  assert '| kdjax/im2col | 100 | 40.0 |' in text  # 4 images / 0.1 s
  assert '| JAX im2col | 10 | 10 | 20 | 40 | 20 / 20 / 40 |' in text
  assert 'failed: bad flag' in text
  loaded = bench.docs_section(results, TOY, args, [(1.0, 1.0, 1.0), (2.5, 1.0, 1.0)])
  assert '* Result: NOT A RESULT' in loaded


def test_bad_side_is_refused():
  with pytest.raises(SystemExit):
    bench.parse_args(['--sides', 'kdjax,tensorflow'])


def test_round_order_alternates_kdjax_and_hand():
  names = ['kdjax/im2col', 'hand/im2col', 'kdjax/lax', 'hand/lax', 'torch']
  runners = [type('R', (), {'name': name})() for name in names]
  firsts = []
  for rep in range(4):
    order = [r.name for r in bench.round_order(runners, rep)]
    assert sorted(order) == sorted(names)  # every side once per round
    for impl in ('im2col', 'lax'):
      i, j = order.index(f'kdjax/{impl}'), order.index(f'hand/{impl}')
      assert abs(i - j) == 1  # the pair runs back to back
      firsts.append(i < j)
  assert firsts == [True, True, False, False] * 2


def test_load_warning_marks_loaded_runs_as_not_a_result():
  assert bench.load_warning([(0.50, 1.0, 1.0), (1.90, 1.0, 1.0)]) is None
  for loads in ([(2.10, 0.1, 0.1), (0.5, 0.1, 0.1)], [(0.5, 0.1, 0.1), (9.0, 1, 1)]):
    warning = bench.load_warning(loads)
    assert warning.startswith('NOT A RESULT') and f'{bench.MAX_LOAD:g}' in warning


def test_shared_load_warning_limits_are_inclusive_and_separate():
  warn = bench._docs.load_warning  # pylint: disable=protected-access
  assert warn(2.0, 4.0, max_start=2.0, max_end=4.0) is None
  assert warn(2.01, 0.0, max_start=2.0, max_end=4.0).startswith('NOT A RESULT')
  assert '4.01 at the end (limits 2 and 4)' in warn(0.0, 4.01, max_start=2.0, max_end=4.0)
