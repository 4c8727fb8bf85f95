"""Seq2SeqTransformer: parameter count, source padding, cached decoding, sharding, training, errors."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from decoding_checks import decode_right_padded
from decoding_checks import numpy_variables
from decoding_checks import sharded_decode
from kdjax import losses
from kdjax import objective
from kdjax import step as step_lib
from kdjax import zoo

SOURCE_VOCAB, TARGET_VOCAB, MAX_SOURCE, MAX_TARGET = 11, 13, 9, 12
SOURCE_LEN, TIME, CACHE = 6, 6, 10

# Between them: every position kind, every MLP, both norms, shared/separate
# tables, tied/untied output, explicit head_dim.
CONFIGS = {
    'learned_relu_untied': zoo.Seq2SeqConfig(
        source_vocab_size=SOURCE_VOCAB, target_vocab_size=TARGET_VOCAB, encoder_layers=2,
        decoder_layers=2, hidden=16, num_heads=2, mlp_dim=32, max_source_len=MAX_SOURCE,
        max_target_len=MAX_TARGET, positions='learned', tied_output=False, dropout_rate=0.1),
    'sinusoidal_gelu_shared': zoo.Seq2SeqConfig(
        source_vocab_size=TARGET_VOCAB, target_vocab_size=TARGET_VOCAB, encoder_layers=1,
        decoder_layers=2, hidden=16, num_heads=4, mlp_dim=24, max_source_len=MAX_SOURCE,
        max_target_len=MAX_TARGET, shared_embeddings=True, mlp='gelu', norm='rms'),
    'rope_swiglu': zoo.Seq2SeqConfig(
        source_vocab_size=SOURCE_VOCAB, target_vocab_size=TARGET_VOCAB, encoder_layers=1,
        decoder_layers=1, hidden=12, num_heads=3, head_dim=6, mlp_dim=20,
        max_source_len=MAX_SOURCE, max_target_len=MAX_TARGET, positions='rope', mlp='swiglu'),
}


def _source(seed=0, batch=3, lengths=(6, 4, 2)):
  rng = np.random.default_rng(seed)
  source = rng.integers(0, SOURCE_VOCAB, (batch, SOURCE_LEN)).astype(np.int32)
  mask = np.arange(SOURCE_LEN)[None] < np.asarray(lengths)[:batch, None]
  return source, mask


def _target(seed=1, batch=3):
  return np.random.default_rng(seed).integers(0, TARGET_VOCAB, (batch, TIME)).astype(np.int32)


def _init_shapes(config):
  return jax.eval_shape(zoo.Seq2SeqTransformer(config).init, jax.random.PRNGKey(0),
                        *_source(), _target())


@functools.lru_cache(maxsize=None)
def _model(name):
  return zoo.Seq2SeqTransformer(CONFIGS[name]), numpy_variables(_init_shapes(CONFIGS[name]))


@functools.lru_cache(maxsize=None)
def _full(name):
  return jax.jit(_model(name)[0].apply)


@functools.lru_cache(maxsize=None)
def _decoder_and_step(name):
  decoder = zoo.seq2seq_decoder(_model(name)[0])
  return decoder, jax.jit(decoder.step)


def _expected_count(config):
  d, a, f = config.hidden, config.num_heads * config.kv_dim, config.mlp_dim
  norm = d * (1 if config.norm == 'rms' else 2)
  mlp = (3 if config.mlp == 'swiglu' else 2) * d * f
  encoder_layer = 4 * d * a + mlp + 2 * norm  # q, k, v, out; MLP; two norms
  decoder_layer = 8 * d * a + mlp + 3 * norm  # self- and cross-attention; three norms
  tables = (1 if config.shared_embeddings else 2) * TARGET_VOCAB * d
  if not config.shared_embeddings:
    tables = (config.source_vocab_size + config.target_vocab_size) * d
  return (tables + config.encoder_layers * encoder_layer
          + config.decoder_layers * decoder_layer + 2 * norm
          + ((MAX_SOURCE + MAX_TARGET) * d if config.positions == 'learned' else 0)
          + (0 if config.tied_output else d * config.target_vocab_size))


@pytest.mark.parametrize('tied', [True, False])
def test_param_count_and_logical_axes_match_the_param_tree(tied):
  for config in CONFIGS.values():
    config = dataclasses.replace(config, tied_output=tied)
    shapes = _init_shapes(config)
    actual = sum(np.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(shapes)))
    assert actual == zoo.param_count(config) == _expected_count(config)
    leaves = jax.tree.leaves(
        shapes['params'], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
      assert isinstance(leaf, nn.LogicallyPartitioned), leaf
      assert len(leaf.names) == leaf.value.ndim
      assert all(n in zoo.TRANSFORMER_LOGICAL_AXES for n in leaf.names), leaf.names
  shared = _init_shapes(CONFIGS['sinusoidal_gelu_shared'])['params']
  assert 'embedding' in shared and 'source_embedding' not in shared
  assert sorted(shared['decoder_blocks_0']) == [
      'attention', 'attention_norm', 'cross_attention', 'cross_attention_norm', 'mlp',
      'mlp_norm']


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_incremental_decoding_equals_teacher_forcing(name):
  _, variables = _model(name)
  decoder, step = _decoder_and_step(name)
  assert decoder.vocab_size == TARGET_VOCAB and decoder.max_length == MAX_TARGET
  source, source_mask = _source()
  target = _target()
  expected = np.asarray(_full(name)(variables, source, source_mask, target))
  assert expected.shape == (3, TIME, TARGET_VOCAB) and expected.dtype == np.float32
  inputs = {'source': source, 'source_mask': source_mask}
  same, _ = decode_right_padded(step, decoder, variables, inputs, target, [4, 4, 4], CACHE)
  np.testing.assert_allclose(same, expected, rtol=1e-5, atol=1e-5)
  ragged, _ = decode_right_padded(step, decoder, variables, inputs, target, [1, 4, 3], CACHE)
  np.testing.assert_allclose(ragged, expected, rtol=1e-5, atol=1e-5)


def test_source_padding_is_never_seen():
  name = 'learned_relu_untied'
  model, variables = _model(name)
  source, source_mask = _source()
  target = _target()
  full = _full(name)
  expected = np.asarray(full(variables, source, source_mask, target))
  # Extra masked tokens at the end, and different ids under the mask.
  rng = np.random.default_rng(7)
  padded = np.concatenate([source, rng.integers(0, SOURCE_VOCAB, (3, 3))], 1).astype(np.int32)
  padded[~np.concatenate([source_mask, np.zeros((3, 3), bool)], 1)] = 3
  padded_mask = np.concatenate([source_mask, np.zeros((3, 3), bool)], 1)
  np.testing.assert_allclose(full(variables, padded, padded_mask, target), expected,
                             rtol=1e-5, atol=1e-5)
  decoder, step = _decoder_and_step(name)
  decoded, _ = decode_right_padded(step, decoder, variables,
                                   {'source': padded, 'source_mask': padded_mask},
                                   target, [2, 2, 2], CACHE)
  np.testing.assert_allclose(decoded, expected, rtol=1e-5, atol=1e-5)
  # Not vacuous: a real source token does change the outputs.
  changed = source.copy()
  changed[:, 0] = (changed[:, 0] + 1) % SOURCE_VOCAB
  assert np.abs(full(variables, changed, source_mask, target) - expected).max() > 1e-3
  # The encoder output at real positions ignores the padding too.
  encoded = model.apply(variables, source, source_mask, method='encode')
  encoded_padded = model.apply(variables, padded, padded_mask, method='encode')
  np.testing.assert_allclose(encoded_padded[:, :SOURCE_LEN][source_mask],
                             np.asarray(encoded)[source_mask], rtol=1e-5, atol=1e-5)


def test_cache_layout_tiling_and_one_encoder_pass():
  name = 'sinusoidal_gelu_shared'
  config = CONFIGS[name]
  _, variables = _model(name)
  decoder, step = _decoder_and_step(name)
  source, source_mask = _source(batch=2)
  target = _target(batch=2)
  inputs = {'source': source, 'source_mask': source_mask}
  _, cache = decode_right_padded(step, decoder, variables, inputs, target, [3, 2], CACHE)
  assert sorted(cache) == ['layer_0', 'layer_1', 'source_mask']
  layout = lambda length: (2, config.num_heads, length, config.kv_dim)
  assert jax.tree.map(lambda x: x.shape, cache['layer_0']) == {
      'key': layout(CACHE), 'value': layout(CACHE),
      'cross_key': layout(SOURCE_LEN), 'cross_value': layout(SOURCE_LEN)}
  np.testing.assert_array_equal(cache['source_mask'], source_mask)
  for leaf in jax.tree.leaves(cache):
    assert leaf.shape[0] == 2
  shuffle = np.array([5, 0, 3, 1, 4, 2])
  order = np.repeat(np.arange(2), 3)[shuffle]
  tiled = jax.tree.map(lambda leaf: jnp.repeat(leaf, 3, axis=0)[shuffle], cache)
  next_tokens, positions = target[:, 3:4], np.array([[3], [2]], np.int32)
  logits, _ = step(variables, next_tokens, positions, cache)
  tiled_logits, new_cache = step(variables, next_tokens[order], positions[order], tiled)
  np.testing.assert_allclose(tiled_logits, np.asarray(logits)[order], rtol=1e-6, atol=1e-6)
  # A step leaves the cross-attention keys and values as they were.
  np.testing.assert_array_equal(new_cache['layer_1']['cross_key'], tiled['layer_1']['cross_key'])


def test_sharded_decode_equals_one_device():
  name = 'sinusoidal_gelu_shared'
  _, variables = _model(name)
  decoder, step = _decoder_and_step(name)
  source, source_mask = _source(batch=4, lengths=(6, 4, 2, 5))
  inputs = {'source': source, 'source_mask': source_mask}
  tokens = _target(batch=4)[:, :3]
  positions = np.repeat(np.arange(3)[None], 4, 0).astype(np.int32)
  expected, _ = step(variables, tokens, positions, decoder.init_cache(variables, inputs, 4, CACHE))
  logits, cache = sharded_decode(decoder, variables, inputs, tokens, positions, CACHE)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  spec = tuple(cache['layer_0']['cross_key'].sharding.spec)
  assert spec + (None,) * (4 - len(spec)) == tuple(P('data', 'model', None, None))


def test_seq2seq_apply_features_and_a_distillation_step():
  teacher, teacher_variables = _model('learned_relu_untied')
  student, student_variables = _model('rope_swiglu')
  source, source_mask = _source()
  target = _target()
  batch = {'source': source, 'source_mask': source_mask, 'target_inputs': target,
           'mask': np.ones((3, TIME), np.float32)}
  features = ('encoder_layer_1', 'encoded', 'decoder_layer_0', 'hidden')
  outputs, _ = jax.jit(lambda v: zoo.seq2seq_apply(teacher, features=features)(
      v, batch, train=False))(teacher_variables)
  np.testing.assert_allclose(outputs.logits, _full('learned_relu_untied')(
      teacher_variables, source, source_mask, target), rtol=1e-6, atol=1e-6)
  assert outputs.feature('encoder_layer_1').shape == (3, SOURCE_LEN, 16)
  assert outputs.feature('encoded').shape == (3, SOURCE_LEN, 16)
  assert outputs.feature('hidden').shape == (3, TIME, 16)
  kd = objective.Objective(
      terms={'kd': objective.distill(losses.kl_divergence, temperature=2.0)})
  optimizer = optax.sgd(0.1)
  train_step = jax.jit(step_lib.make_train_step(
      zoo.seq2seq_apply(student), zoo.seq2seq_apply(teacher), kd, optimizer))
  state = step_lib.init_train_state(nn.meta.unbox(student_variables), optimizer)
  new_state, metrics = train_step(state, nn.meta.unbox(teacher_variables), batch)
  loss_sum, count = metrics['loss/kd']
  assert np.isfinite(float(loss_sum)) and float(loss_sum) > 0 and float(count) == 3 * TIME
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), new_state.params, state.params)
  assert all(float(m) > 0 for m in jax.tree.leaves(moved))


def test_bad_inputs_raise_clear_errors():
  name = 'learned_relu_untied'
  model, variables = _model(name)
  source, source_mask = _source()
  target = _target()
  apply = model.apply
  with pytest.raises(TypeError, match=r'source must have an integer dtype, got float32'):
    apply(variables, source.astype(np.float32), source_mask, target)
  with pytest.raises(TypeError, match=r'source_mask must be bool.*int(32|64).*\(3, 6\)'):
    apply(variables, source, source_mask.astype(np.int64), target)
  with pytest.raises(ValueError, match=r'source and source_mask must have the same shape'):
    apply(variables, source, source_mask[:, :4], target)
  long_source = np.zeros((3, MAX_SOURCE + 1), np.int32)
  with pytest.raises(ValueError, match=r'source with shape \(3, 10\).*max_source_len=9'):
    apply(variables, long_source, long_source > 0, target)
  with pytest.raises(ValueError, match=r'target_inputs with shape \(3, 13\).*max_target_len=12'):
    apply(variables, source, source_mask, np.zeros((3, 13), np.int32))
  with pytest.raises(ValueError, match=r'target_inputs with shape \(2, 6\).*same batch size'):
    apply(variables, source, source_mask, target[:2])
  with pytest.raises(ValueError, match=r'target_inputs must be in \[0, 13\)'):
    apply(variables, source, source_mask, target + TARGET_VOCAB)
  with pytest.raises(ValueError, match=r'target_inputs must be \[batch, time\].*\(6,\)'):
    apply(variables, source, source_mask, target[0])
  decoder = zoo.seq2seq_decoder(model)
  inputs = {'source': source, 'source_mask': source_mask}
  with pytest.raises(ValueError, match=r'batch_size=4 must equal the number of source rows'):
    decoder.init_cache(variables, inputs, 4, CACHE)
  with pytest.raises(KeyError, match=r"'source_mask' is not in the batch"):
    decoder.init_cache(variables, {'source': source}, 3, CACHE)
  with pytest.raises(ValueError, match=r'cache_length must be an int in \[1, max_target_len=12\]'):
    decoder.init_cache(variables, inputs, 3, MAX_TARGET + 1)
  with pytest.raises(KeyError, match=r"'target_inputs' is not in the batch"):
    zoo.seq2seq_apply(model)(variables, inputs, train=False)


def test_bad_configs_raise_clear_errors():
  config = CONFIGS['learned_relu_untied']
  with pytest.raises(ValueError, match=r'shared_embeddings=True needs one vocabulary, got '
                     r'source_vocab_size=11 and target_vocab_size=13'):
    dataclasses.replace(config, shared_embeddings=True)
  with pytest.raises(ValueError, match=r"positions must be one of \('learned', 'sinusoidal', "
                     r"'rope'\), got 'alibi'"):
    dataclasses.replace(config, positions='alibi')
  with pytest.raises(ValueError, match=r"mlp must be one of \('gelu', 'relu', 'swiglu'\)"):
    dataclasses.replace(config, mlp='tanh')
  with pytest.raises(ValueError, match=r"'rope' needs an even head_dim, got head_dim=5"):
    dataclasses.replace(config, positions='rope', head_dim=5)
  with pytest.raises(ValueError, match=r'hidden=16 is not divisible by num_heads=3'):
    dataclasses.replace(config, num_heads=3)
  with pytest.raises(ValueError, match=r'Seq2SeqConfig.decoder_layers must be a positive int'):
    dataclasses.replace(config, decoder_layers=0)
  with pytest.raises(TypeError, match=r'param_count takes a DecoderConfig or Seq2SeqConfig'):
    zoo.param_count({'hidden': 16})
