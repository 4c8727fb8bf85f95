"""Smoke test of benchmarks/beam_segments.py: --quick runs, every segmentation decodes the same."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / 'benchmarks'))

import beam_segments  # noqa: E402


def test_quick_run_checks_tokens_and_writes_the_section(tmp_path):
  docs = tmp_path / 'performance.md'
  docs.write_text('# Performance\n\n## Other\n\nkept\n')
  result = beam_segments.main(['--quick', '--force', '--segments', '1,3', '--write-docs',
                               '--docs-path', str(docs)])
  assert result['equal'] == {1: True, 3: True}
  assert all(len(t) == 1 and t[0] > 0 for t in result['times'].values())
  text = docs.read_text()
  assert '## Other\n\nkept' in text and beam_segments.SECTION in text and 'Not a result' in text
  assert '| 3 |' in text


def test_bad_counts_are_clear_errors(capsys):
  with pytest.raises(SystemExit):
    beam_segments.parse_args(['--segments', '1,0'])
  assert 'every --segments count must be at least 1' in capsys.readouterr().err
