"""Transformer-encoder losses and terms: NumPy references, mask == slice, layer maps, a step."""

from __future__ import annotations

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import losses
from kdjax import Outputs
from kdjax import objective
from kdjax import recipes
from kdjax import step as step_lib
from kdjax import zoo
from zoo_variables import numpy_variables

RNG = np.random.default_rng(0)
B, H, T = 3, 2, 6
MASK = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 1 + [0] * 5], np.int32)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------
# NumPy references, written per example from the papers' formulas.


def np_attention_mse(s, t, n):
  """Mean over heads and real (query, key) pairs of one example cut to n tokens."""
  s, t = s[:, :n, :n], t[:, :n, :n]
  return ((s - t) ** 2).mean(axis=(0, 2))  # per real query


def np_kl_rows(s_logits, t_logits):
  p, q = _softmax(t_logits), _softmax(s_logits)
  return (p * (np.log(p) - np.log(q))).sum(-1)


def np_attention_kl(s, t, n):
  return np_kl_rows(s[:, :n, :n], t[:, :n, :n]).mean(0)


def np_relation_kl(s, t, n, r):
  def relations(x):
    x = x[:n].reshape(n, -1)
    d = x.shape[1] // r
    heads = x.reshape(n, r, d).transpose(1, 0, 2)
    return heads @ heads.transpose(0, 2, 1) / np.sqrt(d)
  return np_kl_rows(relations(s), relations(t)).mean(0)


def np_hidden_mse(s, t, n, w=None):
  s = s[:n] if w is None else s[:n] @ w
  return ((s - t[:n]) ** 2).mean(-1)


def np_cosine(s, t, n):
  s, t = s[:n], t[:n]
  return 1 - (s * t).sum(-1) / np.linalg.norm(s, axis=-1) / np.linalg.norm(t, axis=-1)


def per_example(fn, s, t, **kwargs):
  """The reference on each example's real tokens, zero-padded back to [batch, time]."""
  out = np.zeros((B, T))
  for b in range(B):
    n = int(MASK[b].sum())
    out[b, :n] = fn(s[b], t[b], n, **kwargs)
  return out


def garbage_padding(x, mask_axes):
  """x with its padded positions overwritten by large noise (they must not count)."""
  x = np.array(x)
  for b in range(B):
    n = int(MASK[b].sum())
    for axis in mask_axes:
      index = [b] + [slice(None)] * (x.ndim - 1)
      index[axis] = slice(n, None)
      x[tuple(index)] = RNG.normal(0, 50, x[tuple(index)].shape)
  return x


SCORES_S = RNG.normal(size=(B, H, T, T)).astype(np.float32)
SCORES_T = RNG.normal(size=(B, H, T, T)).astype(np.float32)
HIDDEN_S = RNG.normal(size=(B, T, 4)).astype(np.float32)
HIDDEN_T = RNG.normal(size=(B, T, 6)).astype(np.float32)
HIDDEN_T4 = RNG.normal(size=(B, T, 4)).astype(np.float32)
W = RNG.normal(size=(4, 6)).astype(np.float32)


CASES = {
    'attention_score_mse': (losses.attention_score_mse, SCORES_S, SCORES_T, (2, 3), {},
                            np_attention_mse, {}),
    'attention_kl': (losses.attention_kl, SCORES_S, SCORES_T, (2, 3), {}, np_attention_kl, {}),
    'relation_kl': (losses.relation_kl, HIDDEN_S, HIDDEN_T, (1,), {'num_relation_heads': 2},
                    np_relation_kl, {'r': 2}),
    'hidden_mse': (losses.hidden_mse, HIDDEN_S, HIDDEN_T, (1,), {'projection': W},
                   np_hidden_mse, {'w': W}),
    'cosine_embedding_loss': (losses.cosine_embedding_loss, HIDDEN_S, HIDDEN_T4, (1,), {},
                              np_cosine, {}),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_matches_numpy_and_mask_equals_slice(name):
  fn, s, t, axes, kwargs, reference, ref_kwargs = CASES[name]
  s_pad, t_pad = garbage_padding(s, axes), garbage_padding(t, axes)
  got = np.asarray(fn(s_pad, t_pad, token_mask=MASK, **kwargs))
  expected = per_example(reference, s.astype(np.float64), t.astype(np.float64), **ref_kwargs)
  assert got.shape == (B, T) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)
  # Without a mask every token is real: the reference on whole sequences.
  full = np.asarray(fn(s, t, **kwargs))
  for b in range(B):
    np.testing.assert_allclose(full[b], reference(s[b].astype(np.float64),
                                                  t[b].astype(np.float64), T, **ref_kwargs),
                               rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize('name', sorted(CASES))
def test_gradients_finite_zero_on_padding_and_teacher(name):
  fn, s, t, axes, kwargs, _, _ = CASES[name]

  def total(s, t):
    return jnp.sum(fn(s, t, token_mask=MASK, **kwargs))

  grad_s, grad_t = jax.jit(jax.grad(total, argnums=(0, 1)))(s, t)
  assert np.all(np.isfinite(grad_s)) and not np.any(grad_t)
  # The padded positions get no gradient.
  padded = np.zeros(s.shape, bool)
  for b in range(B):
    n = int(MASK[b].sum())
    for axis in axes:
      index = [b] + [slice(None)] * (s.ndim - 1)
      index[axis] = slice(n, None)
      padded[tuple(index)] = True
  assert not np.any(np.asarray(grad_s)[padded])


def test_soft_cross_entropy_matches_numpy():
  s, t = RNG.normal(size=(B, T, 7)), RNG.normal(size=(B, T, 7))
  got = losses.soft_cross_entropy(s.astype(np.float32), t.astype(np.float32), temperature=2.0)
  expected = -(_softmax(t / 2.0) * np.log(_softmax(s / 2.0))).sum(-1)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Its gradient is the KL's over T² (they differ by the teacher's entropy).
  kl = jax.jit(jax.grad(lambda x: jnp.sum(losses.kl_divergence(x, t, temperature=2.0))))(s)
  ce = jax.jit(jax.grad(lambda x: jnp.sum(losses.soft_cross_entropy(x, t, temperature=2.0))))(s)
  np.testing.assert_allclose(ce * 4.0, kl, rtol=1e-4, atol=1e-6)


def test_shape_errors():
  with pytest.raises(ValueError, match=r'width 4 and teacher_hidden 6: add a projection'):
    losses.hidden_mse(HIDDEN_S, HIDDEN_T)
  with pytest.raises(ValueError, match=r'add a projection'):
    losses.cosine_embedding_loss(HIDDEN_S, HIDDEN_T)
  with pytest.raises(ValueError, match=r'projection must be \[d_s, d_t\] = \[4, 6\]'):
    losses.hidden_mse(HIDDEN_S, HIDDEN_T, projection=W.T)
  with pytest.raises(ValueError, match=r'as many heads'):
    losses.attention_score_mse(SCORES_S, SCORES_T[:, :1])
  with pytest.raises(ValueError, match=r'width 6 .* num_relation_heads=4'):
    losses.relation_kl(HIDDEN_S, HIDDEN_T, num_relation_heads=4)
  with pytest.raises(ValueError, match=r'token_mask must be \[batch, time\] = \(3, 6\)'):
    losses.attention_kl(SCORES_S, SCORES_T, token_mask=MASK[:, :5])


# ----------------------------------------------------------------------------
# Layer maps.


def test_layer_maps():
  uniform = objective.LayerMap.uniform(4, 12)
  assert uniform.teacher_of == (3, 6, 9, 12)
  # The authors' code: attention i -> i*k + k - 1, hidden i -> i*k (0 = embeddings).
  assert uniform.block_pairs() == tuple((i, i * 3 + 2) for i in range(4))
  assert uniform.hidden_pairs(embeddings=True) == tuple((i, i * 3) for i in range(5))
  assert objective.LayerMap.last(3, 6).teacher_of == (4, 5, 6)
  assert objective.LayerMap.skip(3, 12, every=2).teacher_of == (2, 4, 6)
  assert objective.LayerMap.custom(2, 6, [1, 6]).teacher_of == (1, 6)


@pytest.mark.parametrize('make, pattern', [
    (lambda: objective.LayerMap.custom(3, 6, (2, 4)),
     r'student_layers=3, teacher_layers=6.*2 entries'),
    (lambda: objective.LayerMap.custom(2, 6, (0, 7)),
     r'\[1, teacher_layers=6\].*student_layers=2.*\[0, 7\]'),
    (lambda: objective.LayerMap.skip(3, 6, every=3),
     r'student_layers=3, teacher_layers=6.*\[9\]'),
    (lambda: objective.LayerMap.uniform(4, 6),
     r'teacher_layers=6 to be a multiple of student_layers=4'),
])
def test_layer_map_errors(make, pattern):
  with pytest.raises(ValueError, match=pattern):
    make()


# ----------------------------------------------------------------------------
# Terms through one train step on a tiny student and teacher BERT.

TEACHER = zoo.BertConfig(vocab_size=20, num_layers=2, hidden=8, num_heads=2, mlp_dim=16,
                         max_len=8, mlm_head=True, pooler=False)
STUDENT = zoo.BertConfig(vocab_size=20, num_layers=1, hidden=4, num_heads=2, mlp_dim=8,
                         max_len=8, mlm_head=True, pooler=False, projection_width=8)


def _numpy_params(config):
  return nn.meta.unbox(numpy_variables(zoo.BertEncoder(config), np.zeros((1, 1), np.int32)))[
      'params']


def test_terms_in_a_train_step():
  layer_map = objective.LayerMap.uniform(1, 2)
  kd = objective.Objective(
      terms={
          'attention': objective.tinybert_attention(layer_map),
          'hidden': objective.tinybert_hidden(layer_map),
          'embedding': objective.tinybert_embedding(),
          'prediction': objective.tinybert_prediction(mask_key='token_mask'),
          'relations': objective.minilm_relations(student_block=0, teacher_block=1,
                                                  num_relation_heads=2),
          'minilm_attention': objective.minilm_attention(student_block=0, teacher_block=1),
      })
  student_apply = zoo.bert_apply(zoo.BertEncoder(STUDENT),
                                 features=('projected', 'scores', 'query', 'key', 'value'))
  teacher_apply = zoo.bert_apply(zoo.BertEncoder(TEACHER),
                                 features=('hidden', 'scores', 'query', 'key', 'value'))
  student_params = _numpy_params(STUDENT)
  teacher_variables = {'params': _numpy_params(TEACHER)}
  tokens = np.random.default_rng(3).integers(0, 20, (2, 5)).astype(np.int32)
  batch = {'tokens': tokens, 'token_mask': np.array([[1] * 5, [1, 1, 1, 0, 0]], np.int32)}

  def check(student_params, teacher_variables, batch):
    s_out, _ = student_apply({'params': student_params}, batch, train=False)
    t_out, _ = teacher_apply(teacher_variables, batch, train=False)
    expected = losses.hidden_mse(s_out.features['projected_1'], t_out.features['hidden_2'],
                                 token_mask=batch['token_mask']).sum() / 8.0
    _, metrics = kd(s_out, t_out, batch)
    return metrics['loss/hidden'][0] / metrics['loss/hidden'][1], expected

  # The terms see what the features say: the objective's hidden loss is the
  # token mean of hidden_mse on the named features. (That no loss passes a
  # gradient to the teacher is checked loss by loss above.)
  got, expected = jax.jit(check)(student_params, teacher_variables, batch)
  np.testing.assert_allclose(got, expected, rtol=1e-6)

  optimizer = optax.sgd(0.1)
  state = step_lib.init_train_state({'params': student_params}, optimizer)
  train_step = jax.jit(step_lib.make_train_step(student_apply, teacher_apply, kd, optimizer))
  new_state, step_metrics = train_step(state, teacher_variables, batch)
  for name in kd.terms:
    assert np.isfinite(step_metrics[f'loss/{name}'][0]) and step_metrics[f'loss/{name}'][0] > 0
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), state.params, new_state.params)
  assert moved['projection']['kernel'] and moved['projection']['bias']
  assert moved['layer_0']['query']['kernel'] and moved['word_embedding']


def test_hidden_term_without_projection_says_to_add_one():
  layer_map = objective.LayerMap.uniform(1, 2)
  term = objective.tinybert_hidden(layer_map, student_kind='hidden')
  s = Outputs(None, {'hidden_1': jnp.zeros((2, 5, 4))})
  t = Outputs(None, {'hidden_2': jnp.zeros((2, 5, 8))})
  with pytest.raises(ValueError, match=r'projection_width=8'):
    term(s, t, {'token_mask': np.ones((2, 5))}, 0)


def test_distilbert_cosine_term_uses_the_mask():
  term = objective.distilbert_cosine()
  s, t = Outputs(None, {'sequence': HIDDEN_S}), Outputs(None, {'sequence': HIDDEN_T4})
  values, mask = term(s, t, {'token_mask': MASK}, 0)
  np.testing.assert_array_equal(mask, MASK)
  np.testing.assert_allclose(values, per_example(np_cosine, HIDDEN_S.astype(np.float64),
                                                 HIDDEN_T4.astype(np.float64)), rtol=2e-5,
                             atol=2e-6)


# ----------------------------------------------------------------------------
# Recipes.


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_tinybert_recipes_sum_the_mapped_losses():
  layer_map = objective.LayerMap.uniform(1, 2)
  student = Outputs(None, {'scores_0': SCORES_S, 'projected_0': HIDDEN_S @ W,
                           'projected_1': HIDDEN_S[::-1] @ W})
  teacher = Outputs(None, {'scores_1': SCORES_T, 'hidden_0': HIDDEN_T,
                           'hidden_2': HIDDEN_T[::-1] * 2})
  general = recipes.tinybert_intermediate_objective(layer_map)
  assert sorted(general.terms) == ['attention', 'embedding', 'hidden']
  _, metrics = general(student, teacher, {'token_mask': MASK})
  mean = lambda pair: float(pair[0] / pair[1])
  n = MASK.sum()
  expected = {
      'attention': per_example(np_attention_mse, SCORES_S, SCORES_T).sum() / n,
      'embedding': per_example(np_hidden_mse, HIDDEN_S @ W, HIDDEN_T).sum() / n,
      'hidden': per_example(np_hidden_mse, HIDDEN_S[::-1] @ W, HIDDEN_T[::-1] * 2).sum() / n,
  }
  for name, value in expected.items():
    np.testing.assert_allclose(mean(metrics[f'loss/{name}']), value, rtol=1e-5)
  logits_s, logits_t = RNG.normal(size=(B, 5)), RNG.normal(size=(B, 5))
  prediction = recipes.tinybert_prediction_objective()
  loss, _ = prediction(Outputs(logits_s.astype(np.float32)), Outputs(logits_t), {})
  ce = -(_softmax(logits_t) * _log_softmax(logits_s)).sum(-1).mean()
  np.testing.assert_allclose(loss, ce, rtol=1e-5)


def test_distilbert_objective_matches_numpy():
  vocab = 7
  logits_s = RNG.normal(size=(B, T, vocab)).astype(np.float32)
  logits_t = RNG.normal(size=(B, T, vocab)).astype(np.float32)
  labels = RNG.integers(0, vocab, (B, T)).astype(np.int32)
  mlm = (RNG.random((B, T)) < 0.5).astype(np.int32) * MASK
  mlm[0, 0] = 1
  batch = {'token_mask': MASK, 'mlm_mask': mlm, 'mlm_labels': labels}
  student = Outputs(logits_s, {'sequence': HIDDEN_S})
  teacher = Outputs(logits_t, {'sequence': HIDDEN_T4})
  loss, metrics = recipes.distilbert_objective()(student, teacher, batch)
  selected = mlm.astype(bool)
  log_s, log_t = _log_softmax(logits_s / 2.0), _log_softmax(logits_t / 2.0)
  kd = (np.exp(log_t) * (log_t - log_s)).sum(-1)[selected].mean() * 4.0
  ce = -np.take_along_axis(_log_softmax(logits_s), labels[..., None], -1)[..., 0][selected]
  cos = per_example(np_cosine, HIDDEN_S.astype(np.float64), HIDDEN_T4.astype(np.float64))
  cos = cos.sum() / MASK.sum()
  np.testing.assert_allclose(loss, 5.0 * kd + 2.0 * ce.mean() + 1.0 * cos, rtol=1e-5)


def test_minilm_terms_sum_the_relations():
  vectors = {kind: RNG.normal(size=(B, T, 2, 3)).astype(np.float32)
             for kind in ('query', 'key', 'value')}
  teacher_vectors = {kind: RNG.normal(size=(B, T, 3, 4)).astype(np.float32)
                     for kind in ('query', 'key', 'value')}
  student = Outputs(None, {f'{k}_0': v for k, v in vectors.items()} | {'scores_0': SCORES_S})
  teacher = Outputs(None, {f'{k}_2': v for k, v in teacher_vectors.items()}
                    | {'scores_2': SCORES_T})
  term = objective.minilm_relations(student_block=0, teacher_block=2, num_relation_heads=2)
  values, mask = term(student, teacher, {'token_mask': MASK}, 0)
  expected = sum(per_example(np_relation_kl, vectors[k].reshape(B, T, 6).astype(np.float64),
                             teacher_vectors[k].reshape(B, T, 12).astype(np.float64), r=2)
                 for k in ('query', 'key', 'value'))
  np.testing.assert_allclose(values, expected, rtol=2e-5, atol=2e-6)
  np.testing.assert_array_equal(mask, MASK)
  values, _ = objective.minilm_attention(student_block=0, teacher_block=2)(
      student, teacher, {'token_mask': MASK}, 0)
  np.testing.assert_allclose(values, per_example(np_attention_kl, SCORES_S.astype(np.float64),
                                                 SCORES_T.astype(np.float64)), rtol=2e-5,
                             atol=2e-6)
  with pytest.raises(ValueError, match='relations must be among'):
    objective.minilm_relations(student_block=0, teacher_block=2, num_relation_heads=2,
                               relations=('keys',))
