"""Smoke test of benchmarks/generate.py: --quick runs, its checks hold, docs go to a tmp file.

Without torch/transformers the HF columns are skipped and the rest still runs.
"""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / 'benchmarks'))

import generate as generate_bench  # noqa: E402


def test_quick_run_checks_tokens_and_writes_the_section(tmp_path):
  docs = tmp_path / 'performance.md'
  docs.write_text('# Performance\n\n## Other\n\nkept\n')
  result = generate_bench.main(['--quick', '--force', '--batches', '1,2', '--write-docs',
                                '--docs-path', str(docs)])
  hf = generate_bench.hf_available()
  for batch, r in result['batches'].items():
    assert r['greedy_tokens'].shape == (batch, 8)
    # The recompute baseline decodes the same tokens as the cache.
    assert r['checks']['recompute']['rows_equal'] == batch
    assert ('HF greedy' in r['times']) == hf
  cache = result['cache']
  config = result['target']
  assert cache['bytes'] == 2 * config.num_layers * 2 * 12 * config.num_heads * config.kv_dim * 4
  assert cache['beam_bytes'] == 4 * cache['bytes']
  for spec in result['speculative'].values():
    # Greedy speculative decoding reproduces the target's greedy tokens exactly.
    assert spec['equal']['tokens_equal'] == 1.0
    assert 0.0 <= spec['acceptance'] <= 1.0 and spec['tokens_per_call'] >= 1.0
  text = docs.read_text()
  assert '## Other\n\nkept' in text and '## Generation' in text and 'Not a result' in text


def test_zero_repeats_is_a_clear_error(capsys):
  with pytest.raises(SystemExit):
    generate_bench.parse_args(['--recompute-repeats', '0'])
  assert '--recompute-repeats must be at least 1, got 0' in capsys.readouterr().err
