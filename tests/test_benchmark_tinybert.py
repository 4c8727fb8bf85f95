"""benchmarks/tinybert_step.py at toy sizes: the PyTorch twin and the equivalence check hold.

No timing is asserted; the real run (all-MiniLM-L6-v2 teacher) is the lead's.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load_benchmark():
  sys.path.insert(0, str(ROOT / 'benchmarks'))
  spec = importlib.util.spec_from_file_location(
      'tinybert_step', ROOT / 'benchmarks' / 'tinybert_step.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


bench = _load_benchmark()
ARGS = bench.parse_args(['--tiny', '--repeats', '0', '--check-steps', '2'])


@pytest.fixture(scope='module')
def parts():
  return bench.build_parts(ARGS)


def test_torch_twin_computes_the_encoders_features(parts):
  config, params = parts['teacher_config'], parts['teacher']
  batch = parts['batch']
  apply = bench.zoo.bert_apply(bench.zoo.BertEncoder(config), features=('hidden', 'scores'))
  outputs, _ = jax.jit(lambda v, b: apply(v, b, train=False))({'params': params}, batch)
  model = bench.torch_from_params(config, params)
  with torch.no_grad():
    hidden, scores = model(torch.from_numpy(batch['tokens'].astype(np.int64)),
                           torch.from_numpy(batch['token_mask']))
  assert batch['token_mask'].min() == 0  # the batch is padded
  for i, h in enumerate(hidden):
    np.testing.assert_allclose(h.numpy(), outputs.feature(f'hidden_{i}'), atol=2e-5, rtol=0)
  for i, s in enumerate(scores):
    np.testing.assert_allclose(s.numpy(), outputs.feature(f'scores_{i}'), atol=2e-5, rtol=0)


def test_equivalence_check_passes_and_catches_a_wrong_twin(parts):
  sides = {'kdjax': bench.KdjaxSide(ARGS, parts), 'torch': bench.TorchSide(ARGS, parts)}
  result = bench.check_equivalence(ARGS, sides)
  assert max(result['loss_rel'].values()) <= ARGS.loss_rtol
  assert result['grad_rel'][result['worst_grad']] <= ARGS.grad_rtol
  assert len(result['grad_rel']) == len(jax.tree.leaves(parts['student']))
  assert result['history']['kdjax'][1] != result['history']['kdjax'][0]  # the student moved
  # The reporting runs on these sides (one timed block, one inference call each).
  args = bench.parse_args(['--tiny', '--repeats', '1', '--warmup', '0',
                           '--inference-repeats', '1'])
  report = {'check': result, 'times': bench.common.time_alternating(
                sides, warmup=args.warmup, repeats=args.repeats, steps=args.steps),
            'inference': bench.inference(args, parts)}
  assert report['inference']['student']['params'] < report['inference']['teacher']['params']
  section = bench.docs_section(report, args, ['--tiny'], parts, (0.0, 0.0, 0.0))
  assert section.startswith(bench.SECTION) and 'goal >= 1.2' in section
  # A twin whose student differs in one weight fails the check.
  wrong_torch = bench.TorchSide(ARGS, parts)
  with torch.no_grad():
    wrong_torch.student.layers[0].query.weight[0, 0] += 0.5
  with pytest.raises(AssertionError, match='differ'):
    bench.check_equivalence(ARGS, {'kdjax': bench.KdjaxSide(ARGS, parts), 'torch': wrong_torch})
