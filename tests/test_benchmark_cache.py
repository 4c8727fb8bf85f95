"""Smoke test of benchmarks/cache.py at toy size: it runs, and its figures are consistent."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / 'benchmarks'))

import cache as cache_benchmark  # noqa: E402


@pytest.mark.slow  # ~30 s of train-step compiles; run with `make test-slow`
def test_cache_benchmark_runs_at_toy_size(tmp_path, capsys):
  out = cache_benchmark.main([
      '--tiny', '--workdir', str(tmp_path), '--teacher-steps', '0', '--student-steps', '0',
      '--ks', '8', '--formats', 'float32,uint8', '--eval-windows', '8', '--batch', '4',
      '--repeats', '1', '--modes', 'tail'])
  text = capsys.readouterr().out
  assert text.startswith(cache_benchmark.SECTION) and '| online step |' in text
  for row in out['bias']:
    assert 0 <= row['tail'] <= row['full'] + 1e-5 and row['renormalize'] >= 0
    assert 0 < row['tail_mass'] < 1
  float32, uint8 = out['bias']
  np.testing.assert_allclose(uint8['tail'], float32['tail'], rtol=0.05)
  assert set(out['times']) >= {'online step', 'teacher forward alone'}
  assert all(seconds > 0 for seconds in out['times'].values())
