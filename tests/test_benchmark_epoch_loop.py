"""benchmarks/epoch_loop.py: both loops agree before they are timed, and 'auto' is reported."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'))

import epoch_loop  # noqa: E402


def test_measure_checks_the_loops_agree_and_reports_the_auto_choice():
  row = epoch_loop.measure('mlp', steps=2, repeats=1)
  assert row['auto'] == 'scan'  # no convolution
  assert row['update_diff'] < 1e-2
  assert row['scan'] > 0 and row['host'] > 0
  assert row['ratio'] == pytest.approx(row['scan'] / row['host'])  # one repeat: its own ratio
  assert '| mlp | 128 |' in epoch_loop.table([row])
