"""Chunked large-vocabulary divergences: equal to the plain form, memory far below the logits."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads
import numpy as np
import optax
import pytest

from kdjax import adapters
from kdjax import losses
from kdjax.losses import _chunked
from kdjax import objective
from kdjax import step as step_lib
from kdjax._outputs import Outputs

# 2 x 7 = 14 tokens: not a multiple of the token chunk (4); a vocabulary of
# 37 (not a multiple of the vocabulary chunk, 8) padded to 40 by the teacher.
BATCH, TIME, STUDENT_DIM, TEACHER_DIM, VOCAB, TEACHER_VOCAB = 2, 7, 8, 12, 37, 40
# Compiling dominates these tests' time. LLVM's optimisation level changes
# how fast the CPU code runs, not what it computes (XLA's own HLO passes,
# fusion and memory assignment still run), and -O0 halves the compile time.
FAST_COMPILE = {'xla_backend_optimization_level': 0}
HYPER = {'jsd': {'beta': 0.3}, 'skew_kl': {'alpha': 0.2},
         'skew_reverse_kl': {'alpha': 0.2}}


def _inputs(dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 6)
  student_hidden = jax.random.normal(keys[0], (BATCH, TIME, STUDENT_DIM))
  student_unembedding = jax.random.normal(keys[1], (STUDENT_DIM, VOCAB)) * 0.5
  teacher_hidden = jax.random.normal(keys[2], (BATCH, TIME, TEACHER_DIM))
  teacher_unembedding = jax.random.normal(keys[3], (TEACHER_DIM, TEACHER_VOCAB)) * 0.5
  mask = jax.random.bernoulli(keys[4], 0.7, (BATCH, TIME))
  cotangent = jax.random.normal(keys[5], (BATCH, TIME))
  arrays = (student_hidden, student_unembedding, teacher_hidden, teacher_unembedding)
  return tuple(a.astype(dtype) for a in arrays), mask, cotangent


def _plain(student_hidden, student_unembedding, teacher_hidden,
           teacher_unembedding, **kwargs):
  """Full logits (float32 accumulation) + the token-level loss."""
  dot = functools.partial(jnp.dot, preferred_element_type=jnp.float32)
  return losses.token_divergence(
      dot(student_hidden, student_unembedding),
      dot(teacher_hidden, teacher_unembedding), **kwargs)


def _values_and_grads(fn, arrays, cotangent, **kwargs):
  """Values and d(sum(cotangent * values)) w.r.t. all four inputs, jitted."""

  def weighted(*arrays):
    values = fn(*arrays, **kwargs)
    return jnp.sum(values * cotangent), values

  grad_fn = jax.grad(weighted, argnums=(0, 1, 2, 3), has_aux=True)
  grads, values = jax.jit(grad_fn, compiler_options=FAST_COMPILE)(*arrays)
  return values, grads


def _assert_equal_to_plain(arrays, mask, cotangent, divergence, vocab_chunks,
                           rtol, atol):
  kwargs = dict(divergence=divergence, temperature=1.5, token_mask=mask,
                vocab_size=VOCAB, **HYPER.get(divergence, {}))
  plain_values, plain_grads = _values_and_grads(_plain, arrays, cotangent, **kwargs)
  for vocab_chunk in vocab_chunks:
    values, grads = _values_and_grads(
        losses.chunked_divergence, arrays, cotangent, token_chunk=4,
        vocab_chunk=vocab_chunk, **kwargs)
    assert values.shape == (BATCH, TIME) and values.dtype == jnp.float32
    np.testing.assert_allclose(values, plain_values, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(np.asarray(values)[~np.asarray(mask)], 0.0)
    for name, grad, plain_grad, array in zip(
        ('student_hidden', 'student_unembedding'), grads, plain_grads, arrays):
      assert grad.dtype == array.dtype, name
      np.testing.assert_allclose(
          np.asarray(grad, np.float32), np.asarray(plain_grad, np.float32),
          rtol=rtol, atol=atol, err_msg=f'{name}, vocab_chunk={vocab_chunk}')
    # The teacher is a fixed target.
    for grad in grads[2:]:
      np.testing.assert_array_equal(grad, 0.0)


# The vocabulary-chunked path shares `_partial_sum` (the only code that
# depends on the divergence) with the default path, which is tested for every
# divergence; its generic backward pass is tested fast on three different
# kinds (a KL, a mixture, the absolute value) and on the rest in a slow test.
FAST_VOCAB_CHUNKED = ('forward_kl', 'jsd', 'tvd')


@pytest.mark.parametrize('divergence', losses.DIVERGENCE_NAMES)
def test_equals_plain_form(divergence):
  arrays, mask, cotangent = _inputs()
  vocab_chunks = (None, 8) if divergence in FAST_VOCAB_CHUNKED else (None,)
  # A masked mean's cotangent (a multiple of the mask) takes the fused path
  # of the default layout; a random one its recomputing fallback. (The fused
  # path's only divergence-specific code is the values it differentiates,
  # shared with the fallback: three kinds of divergence check it.)
  if divergence in FAST_VOCAB_CHUNKED:
    _assert_equal_to_plain(arrays, mask, 0.37 * mask.astype(jnp.float32), divergence, (None,),
                           rtol=1e-4, atol=1e-5)
  _assert_equal_to_plain(arrays, mask, cotangent, divergence, vocab_chunks,
                         rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    'divergence',
    [d for d in losses.DIVERGENCE_NAMES if d not in FAST_VOCAB_CHUNKED])
def test_equals_plain_form_vocab_chunked_slow(divergence):
  arrays, mask, cotangent = _inputs()
  _assert_equal_to_plain(arrays, mask, cotangent, divergence, (8,),
                         rtol=1e-4, atol=1e-5)


def test_equals_plain_form_bfloat16():
  arrays, mask, cotangent = _inputs(jnp.bfloat16)
  # The same bf16 inputs on both sides; gradients are rounded to bf16.
  _assert_equal_to_plain(arrays, mask, cotangent, 'jsd', (None,),
                         rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_equals_plain_form_bfloat16_vocab_chunked_slow():
  arrays, mask, cotangent = _inputs(jnp.bfloat16)
  _assert_equal_to_plain(arrays, mask, cotangent, 'jsd', (8,),
                         rtol=2e-2, atol=2e-2)


def test_check_grads():
  (hidden, unembedding, teacher_hidden, teacher_unembedding), mask, _ = _inputs(seed=1)
  # The vocabulary-chunked backward pass is written by hand: check it
  # against finite differences (the other path is autodiff per chunk).
  fn = functools.partial(
      losses.chunked_divergence, teacher_hidden=teacher_hidden,
      teacher_unembedding=teacher_unembedding, divergence='jsd',
      temperature=2.0, token_mask=mask, vocab_size=VOCAB, token_chunk=4,
      vocab_chunk=8)
  check_grads(fn, (hidden, unembedding), order=1, modes=['rev'], eps=1e-2,
              atol=2e-2, rtol=2e-2)


def test_masked_nan_tokens_and_flat_tokens():
  (hidden, unembedding, teacher_hidden, teacher_unembedding), _, _ = _inputs()
  # NaN hidden states on masked tokens leak into neither values nor gradients.
  mask = np.zeros((BATCH, TIME), bool)
  mask[0, :3] = True
  mask[1, 5] = True
  hidden = jnp.where(jnp.asarray(mask)[..., None], hidden, jnp.nan)
  (_, values), grads = jax.jit(jax.value_and_grad(
      lambda h, w: (lambda v: (jnp.sum(v), v))(losses.chunked_divergence(
          h, w, teacher_hidden, teacher_unembedding, token_mask=mask,
          vocab_size=VOCAB, token_chunk=4)), argnums=(0, 1), has_aux=True),
      compiler_options=FAST_COMPILE)(hidden, unembedding)
  assert all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_array_equal(np.asarray(grads[0])[~mask], 0.0)
  np.testing.assert_array_equal(np.asarray(values)[~mask], 0.0)
  assert np.all(np.asarray(values)[mask] > 0)
  # [tokens, dim] inputs (another chunking) give the same per-token values.
  flat = losses.chunked_divergence(
      hidden.reshape(-1, STUDENT_DIM), unembedding,
      teacher_hidden.reshape(-1, TEACHER_DIM), teacher_unembedding,
      token_mask=mask.reshape(-1), vocab_size=VOCAB, token_chunk=5)
  np.testing.assert_allclose(flat.reshape(BATCH, TIME), values, rtol=1e-5)


def _padded_sharded_inputs():
  """The inputs, the vocabulary padded to 40 columns (10 per device; 37 are
  real), and their copies sharded over a (data 2, tensor 4) mesh: tokens
  over 'data', the unembeddings' columns over 'tensor'. Auto axes, as
  kdjax.parallel makes them."""
  arrays, mask, cotangent = _inputs()
  hidden, unembedding, teacher_hidden, teacher_unembedding = arrays
  unembedding = jnp.pad(unembedding, ((0, 0), (0, TEACHER_VOCAB - VOCAB)))
  arrays = (hidden, unembedding, teacher_hidden, teacher_unembedding)
  mesh = jax.make_mesh((2, 4), ('data', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  tokens = NamedSharding(mesh, P('data'))
  vocab = NamedSharding(mesh, P(None, 'tensor'))
  sharded = tuple(jax.device_put(a, s) for a, s in zip(arrays, (tokens, vocab, tokens, vocab)))
  return arrays, sharded, mask, cotangent, mesh, tokens


def test_sharded_over_data_and_vocabulary():
  # Slicing the padded vocabulary (40 -> 37 columns over 4 devices) is left
  # to the compiler.
  arrays, sharded, mask, cotangent, _, tokens = _padded_sharded_inputs()
  kwargs = dict(divergence='jsd', temperature=2.0, vocab_size=VOCAB,
                token_chunk=4)
  values, grads = _values_and_grads(
      losses.chunked_divergence, arrays, cotangent, token_mask=mask, **kwargs)
  for vocab_chunk in (None, 8):
    s_values, s_grads = _values_and_grads(
        losses.chunked_divergence, sharded, jax.device_put(cotangent, tokens),
        token_mask=jax.device_put(mask, tokens), vocab_chunk=vocab_chunk, **kwargs)
    np.testing.assert_allclose(s_values, values, rtol=1e-5, atol=1e-6)
    for grad, s_grad in zip(grads[:2], s_grads[:2]):
      np.testing.assert_allclose(s_grad, grad, rtol=1e-5, atol=1e-6)
  # A masked mean's cotangent: the fused path, with the gradients summed in
  # the forward pass over a sharded vocabulary.
  mean_cotangent = 0.25 * mask.astype(jnp.float32)
  _, grads = _values_and_grads(
      losses.chunked_divergence, arrays, mean_cotangent, token_mask=mask, **kwargs)
  _, s_grads = _values_and_grads(
      losses.chunked_divergence, sharded, jax.device_put(mean_cotangent, tokens),
      token_mask=jax.device_put(mask, tokens), **kwargs)
  for grad, s_grad in zip(grads[:2], s_grads[:2]):
    np.testing.assert_allclose(s_grad, grad, rtol=1e-5, atol=1e-6)


def test_memory_far_below_the_logits():
  """Compiled temp memory of loss + grad: chunked << B*T*V*4 < plain."""
  batch, time, dim, vocab = 4, 256, 16, 4096
  logits_bytes = batch * time * vocab * 4
  shapes = (
      jax.ShapeDtypeStruct((batch, time, dim), jnp.float32),
      jax.ShapeDtypeStruct((dim, vocab), jnp.float32),
      jax.ShapeDtypeStruct((batch, time, dim), jnp.float32),
      jax.ShapeDtypeStruct((dim, vocab), jnp.float32),
  )

  def temp_bytes(fn, **kwargs):
    loss = lambda *a: jnp.sum(fn(*a, **kwargs))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*shapes).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  plain = temp_bytes(_plain)
  chunked = temp_bytes(losses.chunked_divergence, token_chunk=32)
  vocab_chunked = temp_bytes(losses.chunked_divergence, token_chunk=32,
                             vocab_chunk=512)
  assert plain > logits_bytes, (plain, logits_bytes)
  assert chunked < logits_bytes / 8, (chunked, logits_bytes)
  assert vocab_chunked < chunked, (vocab_chunked, chunked)


def test_chunked_distill_term_in_a_train_step():
  """Hidden state and unembedding from features == token_distill on logits."""
  (hidden, unembedding, teacher_hidden, teacher_unembedding), mask, _ = _inputs()
  batch = {'x': hidden, 'teacher_x': teacher_hidden,
           'mask': np.asarray(mask, np.int32)}

  def student_fn(params, x):
    h = jnp.tanh(x @ params['proj'])
    return Outputs(None, {'hidden': h, 'unembedding': params['unembedding']})

  def student_logits_fn(params, x):
    out = student_fn(params, x)
    return out.features['hidden'] @ out.features['unembedding']

  def teacher_fn(params, x):
    return Outputs(x @ params['unembedding'],
                   {'hidden': x, 'unembedding': params['unembedding']})

  params = {'proj': jnp.eye(STUDENT_DIM), 'unembedding': unembedding}
  teacher_variables = {'params': {'unembedding': teacher_unembedding}}
  teacher_apply = adapters.from_function(teacher_fn, inputs='teacher_x')
  results = []
  mesh = jax.make_mesh((2, 4), ('data', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  for student_apply, term in (
      (adapters.from_function(student_fn),
       objective.chunked_distill('skew_kl', temperature=2.0, alpha=0.3,
                                 vocab_size=VOCAB, token_chunk=4)),
      # The same per device, the batch split over the mesh's data axis.
      (adapters.from_function(student_fn),
       objective.chunked_distill('skew_kl', temperature=2.0, alpha=0.3,
                                 vocab_size=VOCAB, token_chunk=4, mesh=mesh,
                                 token_axes='data')),
      (adapters.from_function(student_logits_fn),
       objective.token_distill('skew_kl', temperature=2.0, alpha=0.3,
                               vocab_size=VOCAB)),
  ):
    train_step = jax.jit(step_lib.make_train_step(
        student_apply, teacher_apply, objective.Objective({'kd': term}),
        optax.sgd(0.1)), compiler_options=FAST_COMPILE)
    state = step_lib.init_train_state({'params': params}, optax.sgd(0.1))
    state, stats = train_step(state, teacher_variables, batch)
    results.append((state.params, stats['loss/kd']))
  *chunked, (plain_params, plain_loss) = results
  for chunked_params, chunked_loss in chunked:
    np.testing.assert_allclose(chunked_loss, plain_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 chunked_params, plain_params)


def test_errors():
  (hidden, unembedding, teacher_hidden, teacher_unembedding), mask, _ = _inputs()
  call = functools.partial(losses.chunked_divergence, vocab_size=VOCAB)
  with pytest.raises(ValueError, match=r'student_unembedding must be \[hidden, vocab\].*\(2, 7, 8\).*\(12, 37\)'):
    call(hidden, teacher_unembedding[:, :VOCAB], teacher_hidden, teacher_unembedding)
  with pytest.raises(ValueError, match=r'teacher_unembedding must be \[hidden, vocab\].*\(2, 7, 12\).*\(8, 37\)'):
    call(hidden, unembedding, teacher_hidden, unembedding)
  with pytest.raises(ValueError, match=r'different vocabularies.*\(8, 37\).*\(12, 40\)'):
    losses.chunked_divergence(hidden, unembedding, teacher_hidden, teacher_unembedding)
  with pytest.raises(ValueError, match=r'vocab_size=38 must be in \[1, 37\].*\(8, 37\).*\(12, 40\)'):
    losses.chunked_divergence(hidden, unembedding, teacher_hidden,
                              teacher_unembedding, vocab_size=38)
  with pytest.raises(ValueError, match=r'same leading.*\(2, 7, 8\).*\(2, 6, 12\)'):
    call(hidden, unembedding, teacher_hidden[:, :6], teacher_unembedding)
  with pytest.raises(ValueError, match=r'token_mask with shape \(7, 2\).*\(2, 7\)'):
    call(hidden, unembedding, teacher_hidden, teacher_unembedding, token_mask=mask.T)
  with pytest.raises(ValueError, match=r"unknown divergence 'kld'"):
    call(hidden, unembedding, teacher_hidden, teacher_unembedding, divergence='kld')
  with pytest.raises(ValueError, match=r"unknown divergence 'kld'"):
    objective.chunked_distill('kld')
  with pytest.raises(ValueError, match=r'token_chunk must be a positive int, got 0'):
    call(hidden, unembedding, teacher_hidden, teacher_unembedding, token_chunk=0)
  with pytest.raises(TypeError, match=r'student_hidden must have a floating dtype'):
    call(jnp.ones((2, 7, 8), jnp.int32), unembedding, teacher_hidden,
         teacher_unembedding)
  with pytest.raises(ValueError, match=r'temperature must be > 0'):
    call(hidden, unembedding, teacher_hidden, teacher_unembedding, temperature=0.0)


def _memory_shapes(batch, time, dim, vocab, token_sharding=None, vocab_sharding=None):
  return (
      jax.ShapeDtypeStruct((batch, time, dim), jnp.float32, sharding=token_sharding),
      jax.ShapeDtypeStruct((dim, vocab), jnp.float32, sharding=vocab_sharding),
      jax.ShapeDtypeStruct((batch, time, dim), jnp.float32, sharding=token_sharding),
      jax.ShapeDtypeStruct((dim, vocab), jnp.float32, sharding=vocab_sharding),
  )


def _grad_temp_bytes(shapes, **kwargs):
  """XLA temp bytes of the gradient of ``sum(values)`` (a masked mean's cotangent)."""
  loss = lambda *a: jnp.sum(losses.chunked_divergence(*a, **kwargs))
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*shapes).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def _column_block_bytes(token_chunk, dim, columns):
  """A [token_chunk, columns] slice of d_logits and its [dim, columns] product."""
  columns = min(columns, _chunked._COLUMNS)
  return (token_chunk + dim) * columns * 4


def test_memory_bound_from_block_sizes():
  """Loss + grad temp memory: two logits blocks, d_hidden, column slices.

  No [dim, vocab] array besides the gradient's own accumulator (which is
  the output) and no third [token_chunk, vocab] block: either would exceed
  the bound, whose slack (the column slices) is below one of them.
  """
  batch, time, dim, vocab, chunk = 2, 128, 64, 16384, 32
  bound = (2 * chunk * vocab * 4  # the student's and the teacher's logits block
           + batch * time * dim * 4  # d values / d hidden, per token
           + 2 * _column_block_bytes(chunk, dim, vocab) + 2**18)
  assert bound - 2 * chunk * vocab * 4 < min(dim * vocab * 4, chunk * vocab * 4)
  temp = _grad_temp_bytes(_memory_shapes(batch, time, dim, vocab), token_chunk=chunk)
  assert temp <= bound, (temp, bound)
  # Vocabulary blocks of 2,048: [chunk, vocab_chunk] blocks and [dim,
  # vocab_chunk] products only, below one [dim, vocab] array in all.
  vocab_chunk = 2048
  bound = (8 * chunk * vocab_chunk * 4 + 2 * dim * vocab_chunk * 4
           + batch * time * dim * 4 + 2**18)
  assert bound < dim * vocab * 4
  temp = _grad_temp_bytes(_memory_shapes(batch, time, dim, vocab), token_chunk=chunk,
                          vocab_chunk=vocab_chunk)
  assert temp <= bound, (temp, bound)


def test_shard_map_over_data_and_vocabulary():
  """mesh/token_axes/vocab_axis: the same values and gradients as one device."""
  arrays, sharded, mask, cotangent, mesh, tokens = _padded_sharded_inputs()
  kwargs = dict(divergence='jsd', temperature=2.0, vocab_size=VOCAB,
                token_chunk=4, token_mask=mask)
  # A random cotangent (the recomputing backward pass) and a masked mean's
  # (the gradients summed in the forward pass, over the devices).
  for ct in (cotangent, 0.25 * mask.astype(jnp.float32)):
    values, grads = _values_and_grads(losses.chunked_divergence, arrays, ct,
                                      **kwargs)
    s_values, s_grads = _values_and_grads(
        losses.chunked_divergence, sharded, jax.device_put(ct, tokens),
        mesh=mesh, token_axes='data', vocab_axis='tensor', **kwargs)
    np.testing.assert_allclose(s_values, values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(s_values)[~np.asarray(mask)], 0.0)
    for name, grad, s_grad in zip(('hidden', 'unembedding'), grads, s_grads):
      assert s_grad.shape == grad.shape
      np.testing.assert_allclose(s_grad, grad, rtol=1e-5, atol=1e-6, err_msg=name)
    # The padding columns take no part: no gradient reaches them.
    np.testing.assert_array_equal(np.asarray(s_grads[1])[:, VOCAB:], 0.0)
  # Only the vocabulary sharded (tokens replicated), and only the tokens.
  kwargs = dict(divergence='forward_kl', temperature=1.5, vocab_size=VOCAB,
                token_chunk=4, token_mask=mask)
  values, grads = _values_and_grads(losses.chunked_divergence, arrays, cotangent,
                                    **kwargs)
  for token_axes, vocab_axis in ((None, 'tensor'), ('data', None)):
    s_values, s_grads = _values_and_grads(
        losses.chunked_divergence, arrays, cotangent, mesh=mesh,
        token_axes=token_axes, vocab_axis=vocab_axis, **kwargs)
    np.testing.assert_allclose(s_values, values, rtol=1e-5, atol=1e-6)
    for grad, s_grad in zip(grads[:2], s_grads[:2]):
      np.testing.assert_allclose(s_grad, grad, rtol=1e-5, atol=1e-6,
                                 err_msg=f'{token_axes}, {vocab_axis}')


def test_shard_map_memory_per_device():
  """Per device: its share of the blocks, not an all-gathered unembedding."""
  batch, time, dim, vocab, chunk = 2, 128, 64, 16384, 32
  mesh = jax.make_mesh((2, 4), ('data', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  shapes = _memory_shapes(batch, time, dim, vocab, NamedSharding(mesh, P('data')),
                          NamedSharding(mesh, P(None, 'tensor')))
  local_vocab, local_tokens = vocab // 4, batch * time // 2
  bound = (2 * chunk * local_vocab * 4  # the two logits blocks, local columns
           + dim * local_vocab * 4  # the summed gradient's all-reduce
           + local_tokens * dim * 4
           + 2 * _column_block_bytes(chunk, dim, local_vocab) + 2**18)
  temp = _grad_temp_bytes(shapes, token_chunk=chunk, mesh=mesh, token_axes='data',
                          vocab_axis='tensor')
  assert temp <= bound, (temp, bound)
  # The full unembedding (what a device holds if it is all-gathered) is more.
  assert bound < dim * vocab * 4 + 2 * chunk * local_vocab * 4


def test_reduction_mask_other_than_token_mask():
  """Tokens outside reduction_mask still get exact gradients from any cotangent."""
  arrays, mask, cotangent = _inputs(seed=2)
  reduction = np.asarray(mask).copy()
  reduction[0, :] = False  # real tokens the reduction leaves out
  kwargs = dict(divergence='forward_kl', temperature=1.5, token_mask=mask,
                vocab_size=VOCAB)
  plain_values, plain_grads = _values_and_grads(_plain, arrays, cotangent, **kwargs)
  values, grads = _values_and_grads(
      losses.chunked_divergence, arrays, cotangent, token_chunk=4,
      reduction_mask=reduction, **kwargs)
  np.testing.assert_allclose(values, plain_values, rtol=1e-4, atol=1e-5)
  for grad, plain_grad in zip(grads[:2], plain_grads[:2]):
    np.testing.assert_allclose(grad, plain_grad, rtol=1e-4, atol=1e-5)


def test_mesh_errors():
  (hidden, unembedding, teacher_hidden, teacher_unembedding), _, _ = _inputs()
  mesh = jax.make_mesh((2, 4), ('data', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  call = functools.partial(losses.chunked_divergence, hidden, unembedding,
                           teacher_hidden, teacher_unembedding, vocab_size=VOCAB)
  with pytest.raises(ValueError, match=r"vocab_axis='tensor' need a mesh"):
    call(vocab_axis='tensor')
  with pytest.raises(ValueError, match=r"axis 'model' is not in the mesh.*'data', 'tensor'"):
    call(mesh=mesh, vocab_axis='model')
  with pytest.raises(ValueError, match=r'same number of columns, a multiple of 4.*\(8, 37\).*\(12, 40\)'):
    call(mesh=mesh, vocab_axis='tensor')
  with pytest.raises(ValueError, match=r'\(2, 7, 8\).*multiple of 8'):
    call(mesh=mesh, token_axes=('data', 'tensor'))
  with pytest.raises(ValueError, match=r'vocab_chunk cannot be combined with a mesh'):
    call(mesh=mesh, token_axes='data', vocab_chunk=8)
