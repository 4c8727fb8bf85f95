"""DecoderLM cached decoding: equals the full forward, per-row positions, tiling, sharding."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from decoding_checks import decode_right_padded
from decoding_checks import numpy_variables
from decoding_checks import sharded_decode
from kdjax import zoo

VOCAB, MAX_LEN, TIME, CACHE = 16, 12, 6, 10

# Between them: rope/learned, gelu/swiglu, tied/untied, rms/layer norm.
CONFIGS = {
    'rope_gelu_tied': zoo.DecoderConfig(
        vocab_size=VOCAB, num_layers=2, hidden=16, num_heads=2, mlp_dim=32, max_len=MAX_LEN),
    'learned_swiglu_untied': zoo.DecoderConfig(
        vocab_size=VOCAB, num_layers=2, hidden=12, num_heads=3, head_dim=6, mlp_dim=20,
        max_len=MAX_LEN, positions='learned', tied_embeddings=False, mlp='swiglu',
        norm='layer', dropout_rate=0.1),
}


def _tokens(seed=0, batch=3):
  return np.random.default_rng(seed).integers(0, VOCAB, (batch, TIME)).astype(np.int32)


@functools.lru_cache(maxsize=None)
def _model(name):
  model = zoo.DecoderLM(CONFIGS[name])
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), _tokens())
  return model, numpy_variables(shapes)


@functools.lru_cache(maxsize=None)
def _full(name):
  return jax.jit(_model(name)[0].apply)


@functools.lru_cache(maxsize=None)
def _decoder_and_step(name, use_cache=True):
  decoder = zoo.lm_decoder(_model(name)[0], use_cache=use_cache)
  return decoder, jax.jit(decoder.step)


@pytest.mark.parametrize('use_cache', [True, False])
@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_incremental_decoding_equals_the_full_forward(name, use_cache):
  _, variables = _model(name)
  decoder, step = _decoder_and_step(name, use_cache)
  assert decoder.vocab_size == VOCAB and decoder.max_length == MAX_LEN
  tokens = _tokens(1)
  expected = np.asarray(_full(name)(variables, tokens))
  # One prompt length for all rows: a 4-token chunk, then one token a step.
  same, _ = decode_right_padded(step, decoder, variables, {}, tokens, [4, 4, 4], CACHE)
  np.testing.assert_allclose(same, expected, rtol=1e-5, atol=1e-5)
  # Different prompt lengths in one batch: each row continues at its own
  # position over its padding, and still equals the row run alone.
  ragged, _ = decode_right_padded(step, decoder, variables, {}, tokens, [2, 4, 1], CACHE)
  np.testing.assert_allclose(ragged, expected, rtol=1e-5, atol=1e-5)
  alone = np.asarray(_full(name)(variables, tokens[1:2]))
  np.testing.assert_allclose(ragged[1:2], alone, rtol=1e-5, atol=1e-5)


def test_cache_layout_batch_axis_0_dtype_and_tiling():
  name = 'rope_gelu_tied'
  config = CONFIGS[name]
  _, variables = _model(name)
  decoder, step = _decoder_and_step(name)
  tokens = _tokens(2, batch=2)
  _, cache = decode_right_padded(step, decoder, variables, {}, tokens, [3, 2], CACHE)
  assert sorted(cache) == ['layer_0', 'layer_1']
  for leaf in jax.tree.leaves(cache):
    assert leaf.shape == (2, config.num_heads, CACHE, config.kv_dim)
    assert leaf.dtype == config.dtype
  # Beam search tiles the cache with jnp.repeat and reorders it by rows.
  shuffle = np.array([5, 0, 3, 1, 4, 2])
  order = np.repeat(np.arange(2), 3)[shuffle]
  tiled = jax.tree.map(lambda leaf: jnp.repeat(leaf, 3, axis=0)[shuffle], cache)
  next_tokens, positions = tokens[:, 3:4], np.array([[3], [2]], np.int32)
  logits, _ = step(variables, next_tokens, positions, cache)
  tiled_logits, _ = step(variables, next_tokens[order], positions[order], tiled)
  np.testing.assert_allclose(tiled_logits, np.asarray(logits)[order], rtol=1e-6, atol=1e-6)
  # The recompute baseline's cache is a token buffer with the batch first too.
  buffer = _decoder_and_step(name, False)[0].init_cache(variables, {}, 2, CACHE)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), buffer) == {
      'tokens': ((2, CACHE), jnp.int32)}


def test_eager_step_equals_jit_and_init_cache_needs_no_variables():
  name = 'learned_swiglu_untied'
  model, variables = _model(name)
  decoder, step = _decoder_and_step(name)
  cache = model.init_cache(2, CACHE)  # an unbound module: no variables needed
  tokens, positions = _tokens(3, batch=2)[:, :2], np.array([[0, 1], [0, 1]], np.int32)
  eager, eager_cache = decoder.step(variables, tokens, positions, cache)
  jitted, jitted_cache = step(variables, tokens, positions, cache)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
               eager_cache, jitted_cache)
  # Only the first two slots were written.
  assert np.abs(np.asarray(jitted_cache['layer_0']['key'])[:, :, 2:]).max() == 0


def test_sharded_decode_equals_one_device():
  name = 'rope_gelu_tied'
  _, variables = _model(name)
  decoder, step = _decoder_and_step(name)
  tokens = _tokens(4, batch=4)[:, :3]
  positions = np.repeat(np.arange(3)[None], 4, 0).astype(np.int32)
  expected, _ = step(variables, tokens, positions, decoder.init_cache(variables, {}, 4, CACHE))
  logits, cache = sharded_decode(decoder, variables, {}, tokens, positions, CACHE)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  # The cache shards like the keys: batch over 'data', heads over 'model'.
  spec = tuple(cache['layer_1']['value'].sharding.spec)
  assert spec + (None,) * (4 - len(spec)) == tuple(P('data', 'model', None, None))


def test_bad_decode_inputs_raise_clear_errors():
  name = 'rope_gelu_tied'
  model, variables = _model(name)
  decoder = _decoder_and_step(name)[0]
  cache = decoder.init_cache(variables, {}, 2, CACHE)
  ok = np.zeros((2, 3), np.int32)
  step = decoder.step
  with pytest.raises(ValueError, match=r'cache_length must be an int in \[1, max_len=12\], got 13'):
    decoder.init_cache(variables, {}, 2, MAX_LEN + 1)
  with pytest.raises(ValueError, match=r'cache_length must be an int in \[1, max_len=12\]'):
    zoo.lm_decoder(model, use_cache=False).init_cache(variables, {}, 2, MAX_LEN + 1)
  with pytest.raises(TypeError, match=r'tokens must have an integer dtype, got float32'):
    step(variables, ok.astype(np.float32), ok, cache)
  with pytest.raises(TypeError, match=r'positions must have an integer dtype'):
    step(variables, ok, ok.astype(np.float32), cache)
  with pytest.raises(ValueError, match=r'tokens and positions must have the same shape.*\(2, 2\)'):
    step(variables, ok, ok[:, :2], cache)
  with pytest.raises(ValueError, match=r'tokens with shape \(3, 3\) do not fit a cache of batch 2'):
    step(variables, np.zeros((3, 3), np.int32), np.zeros((3, 3), np.int32), cache)
  with pytest.raises(ValueError, match=r'positions must be consecutive'):
    step(variables, ok, np.array([[0, 1, 2], [0, 2, 3]], np.int32), cache)
  with pytest.raises(ValueError, match=r'within \[0, cache_length=10\)'):
    step(variables, ok, np.array([[0, 1, 2], [8, 9, 10]], np.int32), cache)
  with pytest.raises(ValueError, match=r'tokens must be in \[0, 16\)'):
    step(variables, ok + VOCAB, np.repeat(np.arange(3)[None], 2, 0), cache)
