"""A short run of benchmarks/soak.py: its checks pass on kdjax and catch injected faults."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'))

import soak  # noqa: E402

# 20 steps, a check every 5; the memory limit is loose for so few samples
# (allocator jitter of 1 MiB over 10 steps is 100 MiB per 1,000 steps).
SHORT = ['--steps', '20', '--check-every', '5', '--train-examples', '256',
         '--eval-examples', '100', '--eval-batch', '64', '--teacher-width', '32',
         '--student-width', '16', '--max-growth', '2000']


def test_short_soak_passes_with_bfloat16_drift_within_tolerance():
  result = soak.main(SHORT)
  # bfloat16 compute really differs from the float32 recomputation, within
  # the tolerance; the step compiled once; nothing compiled after warm-up.
  assert 0 < result['max_drift'] <= soak.TOLERANCE
  assert result['train_step_cache_size'] == 1
  assert result['backend_compiles_after_warmup'] == 0
  assert result['checks'] == 5  # steps 0, 5, 10, 15 and the last, 19
  assert result['checks_detail'][-1]['step'] == 19


def test_injected_leak_recompile_and_drift_are_each_reported():
  with pytest.raises(soak.SoakFailure) as failure:
    soak.main(SHORT + ['--inject-leak', '8', '--inject-recompile', '12',
                       '--tolerance', '1e-7'])
  message = str(failure.value)
  assert 'resident memory grows' in message
  assert 'the train step was compiled 2 times' in message
  assert 'XLA compilations after the second check' in message
  assert 'loss drift' in message
