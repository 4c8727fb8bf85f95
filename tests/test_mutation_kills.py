"""The mutant list of benchmarks/mutation.py stays valid; tests that kill its survivors."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'))

import mutation  # noqa: E402


def test_every_mutant_snippet_occurs_exactly_once():
  assert mutation.check_mutants() == []
  assert len(mutation.MUTANTS) >= 60
