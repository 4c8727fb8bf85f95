"""benchmarks/step_overhead.py's verdict: a confidence interval of the median, checked in NumPy."""

import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / 'benchmarks'))

import step_overhead  # noqa: E402


def test_median_interval_takes_the_binomial_order_statistics():
  values = np.random.default_rng(0).permutation(np.arange(1.0, 101.0))  # 1..100, shuffled
  # n = 100: ranks floor((100 - 19.6) / 2) = 40 and ceil(1 + (100 + 19.6) / 2) = 61.
  assert step_overhead.median_interval(values) == (40.0, 61.0)
  with pytest.raises(ValueError, match='at least 6 values, got 5'):
    step_overhead.median_interval(np.ones(5))


def _exact_coverage(n, low_rank, high_rank):
  """P(X_(low) <= median < X_(high)) = P(low <= B <= high - 1), B ~ Binomial(n, 1/2)."""
  return sum(math.comb(n, b) for b in range(low_rank, high_rank)) / 2**n


def test_median_interval_covers_the_true_median_as_the_binomial_says():
  rng = np.random.default_rng(1)
  for n in (20, 50, 100):
    ranks = np.arange(1.0, n + 1.0)
    low_rank, high_rank = (int(r) for r in step_overhead.median_interval(ranks))
    exact = _exact_coverage(n, low_rank, high_rank)
    assert exact >= 0.95, (n, exact)  # never below the nominal level
    # Skewed per-repeat ratios (log-normal) whose true median is 1.01.
    hits = 0
    for _ in range(2000):
      low, high = step_overhead.median_interval(1.01 * np.exp(0.02 * rng.standard_normal(n)))
      hits += low <= 1.01 <= high
    assert abs(hits / 2000 - exact) < 0.015, (n, hits / 2000, exact)


def test_goal_verdict_reads_the_interval():
  assert step_overhead.goal_verdict(1.005, 1.018).startswith('meets the goal of 1.02')
  assert step_overhead.goal_verdict(1.021, 1.03).startswith('misses the goal of 1.02')
  assert step_overhead.goal_verdict(1.01, 1.025).startswith('not resolved')
