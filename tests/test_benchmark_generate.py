"""Smoke test of benchmarks/generate.py: --quick runs, its checks hold, docs go to a tmp file.

Without torch/transformers the HF columns are skipped and the rest still runs.
"""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / 'benchmarks'))

import _lm_common  # noqa: E402
import generate as generate_bench  # noqa: E402

from kdjax import zoo  # noqa: E402


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
  for batch, kinds in result['floors'].items():
    assert [f['rows'] for f in kinds.values()] == [batch, 4 * batch]
    assert all(f['xla'] > 0 and ('torch' in f) == hf for f in kinds.values())
  text = docs.read_text()
  assert '## Other\n\nkept' in text and '## Generation' in text and 'Not a result' in text
  assert 'batch 2, beam-4 (8 rows a step): the dense matmuls alone' in text


def _tiny_model():
  config = generate_bench.model_config(2, 16, 2, 24, 40, 12)
  return config, _lm_common.numpy_variables(config, 0, config.max_len)


def test_the_floor_multiplies_by_every_dense_weight_and_nothing_else():
  config, variables = _tiny_model()
  blocks, unembedding = generate_bench.dense_kernels(variables)
  # All parameters but the embedding table and the norms' scales (two per
  # block and the final one), each multiplied once per row.
  dense = (zoo.param_count(config) - config.vocab_size * config.hidden
           - (2 * config.num_layers + 1) * config.hidden)
  assert generate_bench.dense_flops(blocks, unembedding, rows=3) == 2 * 3 * dense


def _numpy_floor(blocks, unembedding, h, steps):
  def rms(x):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)

  for _ in range(steps):
    for b in blocks:
      h = rms(h + (h @ b['query'] + h @ b['key'] + h @ b['value']) @ b['out'])
      gate = h @ b['gate']
      h = rms(h + (gate / (1 + np.exp(-gate)) * (h @ b['up'])) @ b['down'])
    h = rms((h @ unembedding)[:, :h.shape[-1]])
  return h


def test_the_floor_loops_compute_the_chained_steps():
  _, variables = _tiny_model()
  blocks, unembedding = generate_bench.dense_kernels(variables)
  h = generate_bench.floor_start(5, 16)
  expected = _numpy_floor([{k: v.astype(np.float64) for k, v in b.items()} for b in blocks],
                          unembedding.astype(np.float64), h.astype(np.float64), steps=3)
  np.testing.assert_allclose(generate_bench.xla_floor(blocks, unembedding, 5, 3)(),
                             expected, rtol=1e-4, atol=1e-4)
  if generate_bench.hf_available():
    np.testing.assert_allclose(generate_bench.torch_floor(blocks, unembedding, 5, 3)(),
                               expected, rtol=1e-4, atol=1e-4)


def test_zero_repeats_is_a_clear_error(capsys):
  with pytest.raises(SystemExit):
    generate_bench.parse_args(['--recompute-repeats', '0'])
  assert '--recompute-repeats must be at least 1, got 0' in capsys.readouterr().err
