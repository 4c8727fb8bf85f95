"""DecoderLM: causality, parameter counts, logical axes, errors, logit-free apply."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import losses
from kdjax import objective
from kdjax import step as step_lib
from kdjax import zoo

VOCAB, MAX_LEN = 16, 8

# Between them the two configs use every option once.
ROPE = zoo.DecoderConfig(
    vocab_size=VOCAB, num_layers=1, hidden=16, num_heads=2, mlp_dim=32, max_len=MAX_LEN)
LEARNED = zoo.DecoderConfig(
    vocab_size=VOCAB, num_layers=1, hidden=12, num_heads=3, head_dim=6, mlp_dim=20,
    max_len=MAX_LEN, positions='learned', tied_embeddings=False, mlp='swiglu', norm='layer',
    dropout_rate=0.1)
CONFIGS = {'rope': ROPE, 'learned': LEARNED}


def _tokens(seed=0, shape=(3, 6)):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, VOCAB, jnp.int32)


@functools.lru_cache(maxsize=None)
def _init(config, seed=0):
  """The model and random variables of its shapes (boxed, as `init` gives).

  Drawn with NumPy rather than `model.init`, whose compilation (mostly the
  PRNG) costs seconds; the tests need parameters of the right structure.
  """
  model = zoo.DecoderLM(config)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), _tokens())
  rng = np.random.default_rng(seed)
  return model, jax.tree.map(
      lambda s: jnp.asarray(rng.normal(0.0, 0.5, s.shape), s.dtype), shapes)


@functools.lru_cache(maxsize=None)
def _forward(config):
  """Jitted ``(logits, (hidden, unembedding))``, one compile per config."""
  model = zoo.DecoderLM(config)
  return jax.jit(lambda v, tokens: (
      model.apply(v, tokens), model.apply(v, tokens, method='hidden_and_unembedding')))


def _batch():
  """Rows 0-2 random, rows 3-5 the same with token 3 changed, rows 6-7 constant."""
  tokens = _tokens(1)
  changed = tokens.at[:, 3].set((tokens[:, 3] + 1) % VOCAB)
  return jnp.concatenate([tokens, changed, jnp.full((2, 6), 5, jnp.int32)])


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_causal_position_aware_and_logits_are_hidden_times_unembedding(name):
  config = CONFIGS[name]
  _, variables = _init(config)
  all_logits, (hidden, unembedding) = _forward(config)(variables, _batch())
  logits, logits_changed, logits_constant = all_logits[:3], all_logits[3:6], all_logits[6]
  assert all_logits.shape == (8, 6, VOCAB) and all_logits.dtype == jnp.float32
  assert hidden.shape == (8, 6, config.hidden) and unembedding.shape == (config.hidden, VOCAB)
  np.testing.assert_allclose(hidden @ unembedding, all_logits, rtol=1e-5, atol=1e-5)
  # Earlier positions never see a later token; position 3 and after do.
  np.testing.assert_allclose(logits[:, :3], logits_changed[:, :3], rtol=1e-6, atol=1e-6)
  assert np.all(np.abs(logits[:, 3:] - logits_changed[:, 3:]).max(axis=-1) > 1e-4)
  if name == 'learned':
    # The same token everywhere: only absolute positions tell the steps apart.
    # (RoPE is relative: on a constant sequence every value vector is equal,
    # so the attention output cannot depend on the position; see test_rope.)
    assert np.abs(logits_constant[1:] - logits_constant[:1]).max() > 1e-4


def test_jit_equals_eager():
  model, variables = _init(LEARNED)
  np.testing.assert_allclose(
      model.apply(variables, _batch()), _forward(LEARNED)(variables, _batch())[0],
      rtol=1e-5, atol=1e-5)


def test_rope_rotates_pairs_so_scores_depend_on_relative_position():
  from kdjax.zoo import _transformer  # pylint: disable=g-import-not-at-top
  q, k = jax.random.normal(jax.random.PRNGKey(0), (2, 4))
  time = 5
  rq = _transformer._rope(jnp.broadcast_to(q, (1, time, 1, 4)), 100.0)[0, :, 0]
  rk = _transformer._rope(jnp.broadcast_to(k, (1, time, 1, 4)), 100.0)[0, :, 0]
  # Independent reference: rotate (x[i], x[i + 2]) by angle pos * 100**(-i/2).
  freqs = 100.0 ** (-np.arange(2) / 2)
  for pos in range(time):
    c, s = np.cos(pos * freqs), np.sin(pos * freqs)
    x1, x2 = np.asarray(q[:2]), np.asarray(q[2:])
    np.testing.assert_allclose(rq[pos], np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s]),
                               rtol=1e-5, atol=1e-6)
  scores = np.asarray(rq @ rk.T)
  for offset in range(-time + 1, time):
    diagonal = np.diagonal(scores, offset)
    np.testing.assert_allclose(diagonal, diagonal[0], rtol=1e-5, atol=1e-5)
  assert np.abs(np.diagonal(scores, 0)[0] - np.diagonal(scores, 1)[0]) > 1e-4


def _expected_count(vocab, layers, hidden, heads, head_dim, mlp_dim, max_len, *,
                    learned, tied, swiglu, layernorm):
  norm = (2 if layernorm else 1) * hidden
  per_layer = (
      3 * hidden * heads * head_dim  # query, key, value
      + heads * head_dim * hidden  # attention output
      + (3 if swiglu else 2) * hidden * mlp_dim
      + 2 * norm
  )
  return (vocab * hidden + layers * per_layer + norm
          + (max_len * hidden if learned else 0) + (0 if tied else hidden * vocab))


@pytest.mark.parametrize('tied', [True, False])
def test_param_count_matches_the_model_and_an_independent_formula(tied):
  expected = {
      'rope': _expected_count(VOCAB, 1, 16, 2, 8, 32, MAX_LEN, learned=False, tied=tied,
                              swiglu=False, layernorm=False),
      'learned': _expected_count(VOCAB, 1, 12, 3, 6, 20, MAX_LEN, learned=True, tied=tied,
                                 swiglu=True, layernorm=True),
  }
  for name, config in CONFIGS.items():
    config = dataclasses.replace(config, tied_embeddings=tied)
    shapes = jax.eval_shape(zoo.DecoderLM(config).init, jax.random.PRNGKey(0), _tokens())
    actual = sum(np.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(shapes)))
    assert actual == zoo.param_count(config) == expected[name]
  untied = dataclasses.replace(ROPE, tied_embeddings=False)
  assert zoo.param_count(untied) - zoo.param_count(ROPE) == 16 * VOCAB


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_every_param_has_logical_axis_names(name):
  shapes = jax.eval_shape(zoo.DecoderLM(CONFIGS[name]).init, jax.random.PRNGKey(0), _tokens())
  leaves = jax.tree.leaves(
      shapes['params'], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim
    assert all(n in zoo.TRANSFORMER_LOGICAL_AXES for n in leaf.names), leaf.names
  specs = jax.tree.leaves(nn.get_partition_spec(shapes))
  assert all(all(n is not None for n in spec) for spec in specs)


def test_sharded_by_logical_rules_equals_unsharded():
  rules = (('batch', 'data'), ('heads', 'tensor'), ('mlp', 'tensor'), ('vocab', 'tensor'),
           ('embed', None), ('kv', None), ('length', None))
  mesh = jax.make_mesh((4, 2), ('data', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  _, variables = _init(ROPE)
  apply = _forward(ROPE)
  expected, _ = apply(variables, _batch())
  specs = nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, rules)
  # Unboxed outside the mesh: inside it, unbox applies sharding constraints.
  sharded_vars = jax.device_put(nn.meta.unbox(variables), specs)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    assert sharded_vars['params']['embedding'].sharding.spec == jax.P('tensor', None)
    logits, _ = apply(sharded_vars, _batch())
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_bad_tokens_raise_clear_errors():
  model, variables = _init(ROPE)
  with pytest.raises(ValueError, match=r'tokens with shape \(2, 9\).*max_len=8'):
    model.apply(variables, jnp.zeros((2, 9), jnp.int32))
  with pytest.raises(ValueError, match=r'tokens with shape \(2, 9\).*max_len=8'):
    jax.jit(model.apply)(variables, jnp.zeros((2, 9), jnp.int32))
  with pytest.raises(TypeError, match=r'tokens must have an integer dtype, got float32 .*\(2, 4\)'):
    model.apply(variables, jnp.zeros((2, 4), jnp.float32))
  with pytest.raises(ValueError, match=r'tokens must be \[batch, time\].*\(4,\)'):
    model.apply(variables, jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match=r'tokens must be in \[0, 16\).*got 16'):
    model.apply(variables, jnp.full((2, 4), VOCAB, jnp.int32))


def test_bad_configs_raise_clear_errors():
  with pytest.raises(ValueError, match=r'hidden=16 is not divisible by num_heads=3'):
    dataclasses.replace(ROPE, num_heads=3)
  with pytest.raises(
      ValueError, match=r"positions must be one of \('rope', 'learned'\), got 'alibi'"):
    dataclasses.replace(ROPE, positions='alibi')
  with pytest.raises(ValueError, match=r"'rope' needs an even head_dim, got head_dim=5"):
    dataclasses.replace(ROPE, head_dim=5)
  with pytest.raises(ValueError, match=r'max_len must be a positive int, got 0'):
    dataclasses.replace(ROPE, max_len=0)


def test_logit_free_apply_gives_hidden_and_unembedding_with_the_same_grads():
  # Tied: the gradient reaches the embedding through the transposed feature.
  config = ROPE
  model, variables = _init(config)
  params = nn.meta.unbox(variables)['params']
  batch = {'tokens': _tokens(3)}
  full = zoo.lm_apply(model, features=('hidden', 'layer_0'))
  free = zoo.lm_apply(model, logits=False)
  target = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(4), (3, 6, VOCAB)))

  def loss_from(logits):
    return jnp.sum(optax.losses.softmax_cross_entropy(logits, target))

  def via_logits(p):
    outputs, _ = full({'params': p}, batch, train=False)
    return loss_from(outputs.logits), outputs

  def via_features(p):
    outputs, _ = free({'params': p}, batch, train=False)
    return loss_from(outputs.feature('hidden') @ outputs.feature('unembedding')), outputs

  @jax.jit
  def run(p):
    grads, outputs = jax.grad(via_logits, has_aux=True)(p)
    grads_free, free_outputs = jax.grad(via_features, has_aux=True)(p)
    return grads, outputs, grads_free, free_outputs

  grads, outputs, grads_free, free_outputs = run(params)
  assert free_outputs.logits is None
  hidden, unembedding = free_outputs.feature('hidden'), free_outputs.feature('unembedding')
  assert hidden.shape == (3, 6, config.hidden) and unembedding.shape == (config.hidden, VOCAB)
  assert outputs.feature('layer_0').shape == hidden.shape
  np.testing.assert_allclose(outputs.feature('hidden'), hidden, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(hidden @ unembedding, outputs.logits, rtol=1e-5, atol=1e-5)
  assert np.abs(grads_free['embedding']).max() > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads, grads_free)


def test_bfloat16_compute_gives_float32_logits_close_to_float32():
  _, variables = _init(LEARNED)
  bf16 = dataclasses.replace(LEARNED, dtype=jnp.bfloat16)
  logits, (hidden, _) = _forward(bf16)(variables, _batch())
  logits_f32, _ = _forward(LEARNED)(variables, _batch())
  assert logits.dtype == jnp.float32 and hidden.dtype == jnp.bfloat16
  np.testing.assert_allclose(logits, logits_f32, atol=0.1)


def test_distillation_train_step_on_token_logits_with_a_time_mask():
  teacher, teacher_variables = _init(ROPE)
  student, student_variables = _init(LEARNED)  # with dropout
  assert zoo.param_count(ROPE) > zoo.param_count(LEARNED)
  tokens = _tokens(6)
  batch = {'tokens': tokens, 'mask': jnp.ones((3, 6)).at[1:, 4:].set(0.0)}
  kd = objective.Objective(
      terms={'kd': objective.distill(losses.kl_divergence, temperature=2.0)})
  optimizer = optax.sgd(0.1)
  train_step = jax.jit(step_lib.make_train_step(
      zoo.lm_apply(student), zoo.lm_apply(teacher), kd, optimizer))
  state = step_lib.init_train_state(nn.meta.unbox(student_variables), optimizer)
  new_state, metrics = train_step(state, nn.meta.unbox(teacher_variables), batch)
  loss_sum, count = metrics['loss/kd']
  assert np.isfinite(float(loss_sum)) and float(loss_sum) > 0
  assert float(count) == 3 * 6 - 2 * 2  # masked tokens are not counted
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), new_state.params, state.params)
  assert all(float(m) > 0 for m in jax.tree.leaves(moved))


@pytest.mark.parametrize('spec, x_shape, k_shape, n', [
    ('btd,dv->btv', (2, 3, 5), (5, 7), 1),
    ('btd,dhk->bthk', (2, 3, 5), (5, 4, 6), 1),
    ('bthk,hkd->btd', (2, 3, 4, 6), (4, 6, 5), 2),
])
def test_projections_as_2d_matmuls_equal_the_einsums(spec, x_shape, k_shape, n):
  """The model's projections merge batch and time into matrix rows (no
  transposed copies in XLA:CPU's backward pass): values and both gradients
  equal the einsum's."""
  from kdjax.zoo import _transformer
  kx, kk, kr = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, x_shape)
  kernel = jax.random.normal(kk, k_shape)
  r = jax.random.normal(kr, jnp.einsum(spec, x, kernel).shape)
  ours = lambda x, k: jnp.sum(_transformer._contract(x, k, n) * r)
  theirs = lambda x, k: jnp.sum(jnp.einsum(spec, x, k) * r)
  np.testing.assert_allclose(ours(x, kernel), theirs(x, kernel), rtol=1e-5)
  for got, want in zip(jax.grad(ours, (0, 1))(x, kernel), jax.grad(theirs, (0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cached', [False, True])
def test_attention_weights_and_output_equal_numpy(cached):
  """`attend_with_weights` (which FastSpeech 2's teacher reads its alignment
  from, and `attend` is written on) against softmax attention in NumPy:
  masked keys get weight 0, each query's weights sum to 1, and the output is
  the weighted values projected out."""
  from kdjax.zoo import _transformer
  cfg = ROPE
  heads, kv = cfg.num_heads, cfg.kv_dim
  attention = _transformer._Attention(cfg)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, cfg.hidden))
  key_mask = jnp.array([[True] * 5, [True, True, True, False, False]])
  mask = key_mask[:, None, None, :]
  params = jax.eval_shape(attention.init, jax.random.PRNGKey(0), x, mask)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.5, s.shape), s.dtype), params)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 5, heads, kv)), jnp.float32) for _ in range(3))
  as_given = lambda a: jnp.swapaxes(a, 1, 2) if cached else a  # the cache is [b, h, s, k]
  out, weights = attention.apply(params, q, as_given(k), as_given(v), mask, cached=cached,
                                 method='attend_with_weights')
  np.testing.assert_allclose(
      attention.apply(params, q, as_given(k), as_given(v), mask, cached=cached,
                      method='attend'), out)
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  scores = np.einsum('bqhk,bshk->bhqs', q, k) / np.sqrt(kv)
  scores = np.where(np.asarray(mask), scores, -np.inf)
  want = np.exp(scores - scores.max(-1, keepdims=True))
  want /= want.sum(-1, keepdims=True)
  np.testing.assert_allclose(weights, want, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(weights)[1, :, :, 3:] == 0)
  (out_kernel,) = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                   if 'out' in jax.tree_util.keystr(path)]
  mixed = np.einsum('bhqs,bshk->bqhk', want, v)
  np.testing.assert_allclose(out, np.einsum('bqhk,hkd->bqd', mixed, np.asarray(out_kernel)),
                             rtol=1e-4, atol=1e-5)
