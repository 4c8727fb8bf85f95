"""experiments._common's one verdict rule: the t-interval, each kind of claim, and what the page says."""

import math

import numpy as np
import pytest
from scipy import stats

from experiments import _common

# Student t quantiles from printed tables (not from scipy): 0.975 and 0.95, 2 degrees of freedom.
T_975_DF2 = 4.302652729911275
T_95_DF2 = 2.919985580353726
# Half-width of the 95 % interval of three values m + s * (-1, 0, 1) (mean m, std s), per unit s.
HALF = T_975_DF2 / math.sqrt(3)


def three(mean, std=1.0):
  return [mean - std, mean, mean + std]


@pytest.mark.parametrize('values', [[1.0, 2.0, 3.0], [0.3, -0.1, 0.25, 0.4, 0.05],
                                    [10.0, 10.5], list(np.linspace(-1, 2, 7) ** 2)])
@pytest.mark.parametrize('confidence', [0.9, 0.95, 0.99])
def test_interval_matches_scipy_ttest(values, confidence):
  got = _common.t_interval(values, confidence=confidence)
  want = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
  assert got['ci'] == pytest.approx([want.low, want.high], rel=1e-12)
  assert got['mean'] == pytest.approx(np.mean(values))
  assert got['std'] == pytest.approx(np.std(values, ddof=1))
  assert got['values'] == pytest.approx(values) and got['confidence'] == confidence


def test_interval_matches_the_printed_table_and_defaults_to_95():
  assert _common.CONFIDENCE == 0.95
  assert _common.t_interval([1.0, 2.0, 3.0])['ci'] == pytest.approx([2 - HALF, 2 + HALF])


def test_paired_difference_is_the_interval_of_the_differences():
  a, b = [0.91, 0.95, 0.90, 0.97], [0.88, 0.91, 0.90, 0.93]
  diff = _common.paired_difference(a, b)
  want = stats.ttest_rel(a, b).confidence_interval(0.95)
  assert diff['ci'] == pytest.approx([want.low, want.high], rel=1e-12)
  assert diff['values'] == pytest.approx(np.subtract(a, b))


@pytest.mark.parametrize('test,threshold,mean,want', [
    # A sign claim: the quantity exceeds 0.
    ('>', 0.0, HALF + 0.01, _common.SHOWN),
    ('>', 0.0, HALF - 0.01, _common.WITHIN),
    ('>', 0.0, -HALF - 0.01, _common.CONTRADICTED),
    ('>', 0.0, -HALF + 0.01, _common.WITHIN),
    # The quantity is below 0 (lower is better).
    ('<', 0.0, -HALF - 0.01, _common.SHOWN),
    ('<', 0.0, -HALF + 0.01, _common.WITHIN),
    ('<', 0.0, HALF + 0.01, _common.CONTRADICTED),
    ('<', 0.0, HALF - 0.01, _common.WITHIN),
    # A thresholded claim: at least 50 (e.g. % of the gain recovered).
    ('>', 50.0, 50 + HALF + 0.01, _common.SHOWN),
    ('>', 50.0, 50 + HALF - 0.01, _common.WITHIN),
    ('>', 50.0, 50 - HALF - 0.01, _common.CONTRADICTED),
    ('>', 50.0, 50 - HALF + 0.01, _common.WITHIN),
    # Non-inferiority: below a margin of 0.5.
    ('<', 0.5, 0.5 - HALF - 0.01, _common.SHOWN),
    ('<', 0.5, 0.5 + HALF + 0.01, _common.CONTRADICTED),
    # Equivalence within ±3: shown when the interval is inside, contradicted when wholly outside.
    ('==', 3.0, 3.0 - HALF - 0.01, _common.SHOWN),
    ('==', 3.0, 3.0 - HALF + 0.01, _common.WITHIN),
    ('==', 3.0, -(3.0 - HALF - 0.01), _common.SHOWN),
    ('==', 3.0, 3.0 + HALF + 0.01, _common.CONTRADICTED),
    ('==', 3.0, 3.0 + HALF - 0.01, _common.WITHIN),
    ('==', 3.0, -(3.0 + HALF + 0.01), _common.CONTRADICTED),
    ('==', 0.0, 0.0, _common.WITHIN),  # margin 0: never shown while the seeds differ
])
def test_each_side_of_each_boundary(test, threshold, mean, want):
  assert _common.judge(_common.t_interval(three(mean)), test=test, threshold=threshold) == want
  c = _common.claim('x', three(mean), test=test, threshold=threshold)
  assert c['verdict'] == want


def test_95_is_stricter_than_90():
  mean = 0.5 * (T_95_DF2 + T_975_DF2) / math.sqrt(3)  # between the two half-widths
  assert _common.judge(_common.t_interval(three(mean), confidence=0.9)) == _common.SHOWN
  assert _common.judge(_common.t_interval(three(mean))) == _common.WITHIN


def test_one_seed_is_never_more_than_within():
  one = _common.t_interval([5.0])
  assert one['ci'] == [5.0, 5.0]
  for test in _common.TESTS:
    assert _common.judge(one, test=test, threshold=10.0 if test == '==' else 0.0) == _common.WITHIN
  assert _common.outcome(_common.claim('x', [5.0])) == (
      f'{_common.NOT_SHOWN}: one seed gives no interval')


def test_the_old_names_keep_their_signatures():
  up = _common.paired_difference(three(HALF + 0.1), [0.0] * 3)
  assert _common.paired_verdict(up) == _common.SHOWN
  assert _common.paired_verdict(up, claim_sign=-1.0) == _common.CONTRADICTED
  assert _common.equivalence_verdict(up) == _common.CONTRADICTED
  assert _common.equivalence_verdict(up, margin=10.0) == _common.SHOWN
  noisy = _common.paired_difference(three(0.0), [0.0] * 3)
  assert _common.equivalence_verdict(noisy) == _common.WITHIN


def test_what_the_page_says():
  shown = _common.claim('a beats b', three(0.2, 0.01), [0.0] * 3, scale=100)
  assert shown['verdict'] == _common.SHOWN and _common.outcome(shown) == _common.REPRODUCED
  caveat = _common.claim('a beats b', three(0.2, 0.01), [0.0] * 3, caveat='the teacher is weak')
  assert _common.outcome(caveat) == f'{_common.NOT_SHOWN}: the teacher is weak'
  within = _common.claim('a beats b', three(0.0, 0.01), [0.0] * 3, scale=100)
  low, high = within['difference']['ci']
  assert _common.outcome(within) == (
      f'{_common.NOT_SHOWN}: the 95 % interval [{100 * low:+.2f}, {100 * high:+.2f}] over 3 '
      'seeds contains 0')
  below = _common.claim('at least half', three(0.2, 0.01), threshold=0.5)
  assert _common.outcome(below).endswith('lies wholly below 0.5 (contradicted)')
  apart = _common.claim('match', three(5.0), test='==', threshold=1.0)
  assert _common.outcome(apart).endswith('lies wholly outside ±1 (contradicted)')


def test_claims_table_shows_every_seed_and_the_outcome():
  c = _common.claim('a beats b', [0.91, 0.95, 0.93], [0.90, 0.90, 0.90], scale=100)
  lines = _common.claims_table([c])
  row = lines[-1]
  assert '+1.00, +5.00, +3.00' in row and '> 0' in row
  assert row.endswith(f"| {c['verdict']} | {_common.outcome(c)} |")
  assert '95 %' in lines[0]


def test_claims_table_names_numbers_that_are_not_per_seed():
  c = _common.claim('faster', [1.6, 1.7, 1.5, 1.6, 1.6], over='timed rounds', digits=1)
  row = _common.claims_table([c])[-1]
  assert '| timed rounds: 1.6, 1.7, 1.5, 1.6, 1.6 |' in row and c['over'] == 'timed rounds'
  seeds = _common.claims_table([_common.claim('x', [1.0, 2.0])])[-1]
  assert 'seeds:' not in seeds and '| 1.00, 2.00 |' in seeds


@pytest.mark.parametrize('kwargs,match', [
    ({'values': []}, 'non-empty list of finite numbers'),
    ({'values': [1.0, math.nan]}, 'finite'),
    ({'values': [1.0, 2.0], 'baseline': [1.0]}, 'equal-length'),
    ({'values': [1.0, 2.0], 'test': '>='}, 'test must be one of'),
    ({'values': [1.0, 2.0], 'test': '==', 'threshold': -1.0}, 'margin'),
    ({'values': [1.0, 2.0], 'confidence': 1.0}, r'confidence must be in \(0, 1\)'),
])
def test_bad_input_is_refused_by_name(kwargs, match):
  with pytest.raises(ValueError, match=match):
    _common.claim('x', **kwargs)


def test_per_seed_table_has_every_seed_and_refuses_a_short_column():
  lines = _common.per_seed_table([0, 1], {'a': [0.5, 0.25], 'b': [1.0, 0.0]}, scale=100, digits=1)
  assert lines[2:] == ['| 0 | 50.0 | 100.0 |', '| 1 | 25.0 | 0.0 |']
  with pytest.raises(ValueError, match="column 'b' has 1 values for 2 seeds"):
    _common.per_seed_table([0, 1], {'a': [0.5, 0.25], 'b': [1.0]})
