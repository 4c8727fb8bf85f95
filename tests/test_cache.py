"""kdjax.cache and the sparse top-k losses: bounds, formats, writer, reader, steps."""

import doctest
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import cache
from kdjax import losses
from kdjax import objective
from kdjax import Outputs
from kdjax.cache import _format
from kdjax.cache import _store
from kdjax.losses import _topk
from kdjax.step import init_train_state
from kdjax.step import make_train_step

VOCAB, TIME, DIM = 24, 5, 8


def _logits(seed, shape=(3, TIME, VOCAB), scale=3.0):
  return scale * jax.random.normal(jax.random.PRNGKey(seed), shape)


def _softmax64(logits):
  logits = np.asarray(logits, np.float64)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  return weights / weights.sum(-1, keepdims=True)


def _full_kl(student, teacher, temperature=1.0):
  return losses.kl_divergence(student, teacher, temperature=temperature)


def _sparse(student, teacher, k, mode, temperature=1.0, **kwargs):
  log_probs, indices, tail = losses.teacher_topk(teacher, k, temperature=temperature)
  return losses.topk_kl_divergence(student, log_probs, indices, tail, mode=mode,
                                   temperature=temperature, **kwargs)


# ----------------------------------------------------------------------------
# The sparse losses: their relation to the full forward KL.


@pytest.mark.parametrize('temperature', [1.0, 2.0])
@pytest.mark.parametrize('mode', losses.TOPK_MODES)
def test_k_equal_vocab_gives_the_full_kl_and_its_gradient(mode, temperature):
  student, teacher = _logits(0), _logits(1)
  full = _full_kl(student, teacher, temperature)
  np.testing.assert_allclose(_sparse(student, teacher, VOCAB, mode, temperature), full,
                             rtol=1e-5, atol=1e-6)
  grad_sparse = jax.grad(lambda s: _sparse(s, teacher, VOCAB, mode, temperature).sum())(student)
  grad_full = jax.grad(lambda s: _full_kl(s, teacher, temperature).sum())(student)
  np.testing.assert_allclose(grad_sparse, grad_full, atol=1e-5)


@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_tail_kl_is_a_lower_bound_with_the_chain_rule_gap(temperature):
  student, teacher = _logits(2), _logits(3)
  full = _full_kl(student, teacher, temperature) / temperature**2
  # The reference in float64 NumPy: a tail mass near 0 must not round to 0.
  p = _softmax64(teacher / temperature)
  q = _softmax64(student / temperature)
  for k in (1, 10):
    tail = _sparse(student, teacher, k, 'tail', temperature) / temperature**2
    renorm = _sparse(student, teacher, k, 'renormalize', temperature) / temperature**2
    _, indices, _ = losses.teacher_topk(teacher, k, temperature=temperature)
    in_top = np.asarray(jax.nn.one_hot(indices, VOCAB).sum(-2) > 0)
    p_top, q_top = np.sum(p * in_top, -1), np.sum(q * in_top, -1)
    assert np.all(tail >= -1e-6) and np.all(renorm >= -1e-6)
    assert np.all(tail <= full + 1e-5)
    # KL - KL_tail = P_C KL(p_C / P_C || q_C / Q_C).
    p_rest = np.where(in_top, 1, p) / (1 - p_top)[..., None]
    q_rest = np.where(in_top, 1, q) / (1 - q_top)[..., None]
    tail_gap = (1 - p_top) * np.sum(np.where(in_top, 0, p_rest * np.log(p_rest / q_rest)), -1)
    np.testing.assert_allclose(full - tail, tail_gap, rtol=1e-4, atol=2e-5)
    # KL_tail = P_S KL_renorm + binary KL of the top-k masses.
    binary = p_top * np.log(p_top / q_top) + (1 - p_top) * np.log((1 - p_top) / (1 - q_top))
    np.testing.assert_allclose(tail, p_top * renorm + binary, rtol=1e-4, atol=1e-5)


def test_the_blind_spots_of_each_sparse_loss():
  teacher = _logits(4)
  k = 4
  log_probs, indices, tail_mass = losses.teacher_topk(teacher, k)
  in_top = jax.nn.one_hot(indices, VOCAB).sum(-2) > 0
  teacher_log_probs = jax.nn.log_softmax(teacher)
  # A student equal to the teacher on the top-k, with a flat tail: tail KL 0, full KL > 0.
  flat_tail = (tail_mass - jnp.log(VOCAB - k))[..., None]
  student = jnp.where(in_top, teacher_log_probs, flat_tail)
  assert np.all(_sparse(student, teacher, k, 'tail') < 1e-5)
  assert np.all(_full_kl(student, teacher) > 1e-3)
  # A student proportional to the teacher on the top-k with only 10% mass there:
  # the renormalised KL is 0, the tail KL is not.
  student = jnp.where(in_top, teacher_log_probs - jax.nn.logsumexp(
      jnp.where(in_top, teacher_log_probs, -jnp.inf), -1, keepdims=True) + jnp.log(0.1),
                      jnp.log(0.9 / (VOCAB - k)))
  assert np.all(_sparse(student, teacher, k, 'renormalize') < 1e-5)
  assert np.all(_sparse(student, teacher, k, 'tail') > 0.1)


def test_teacher_topk_tail_is_the_mass_outside():
  teacher = _logits(5, scale=1.0)
  log_probs, indices, tail = losses.teacher_topk(teacher, 6, temperature=1.5)
  probs = jax.nn.softmax(teacher / 1.5)
  np.testing.assert_allclose(jnp.exp(log_probs), jnp.take_along_axis(probs, indices, -1),
                             rtol=1e-5)
  np.testing.assert_allclose(jnp.exp(tail), 1 - jnp.exp(log_probs).sum(-1), rtol=1e-4)
  assert np.all(np.diff(np.asarray(log_probs), axis=-1) <= 0)
  assert np.all(np.isneginf(losses.teacher_topk(teacher, VOCAB)[2]))
  # Vocabulary padding takes no part.
  padded = jnp.concatenate([teacher, jnp.full(teacher.shape[:-1] + (8,), 50.0)], -1)
  np.testing.assert_allclose(losses.teacher_topk(padded, 6, temperature=1.5,
                                                 vocab_size=VOCAB)[0], log_probs, rtol=1e-6)


@pytest.mark.parametrize('mode', losses.TOPK_MODES)
def test_masked_tokens_give_zero_and_finite_gradients(mode):
  student, teacher = _logits(6), _logits(7)
  mask = np.ones((3, TIME), bool)
  mask[1, 2:] = False
  student = student.at[1, 3].set(jnp.nan)
  log_probs, indices, tail = losses.teacher_topk(teacher, 5)
  log_probs = log_probs.at[1, 4].set(jnp.nan)

  def total(s):
    return losses.topk_kl_divergence(s, log_probs, indices, tail, mode=mode,
                                     token_mask=mask).sum()

  values = losses.topk_kl_divergence(student, log_probs, indices, tail, mode=mode,
                                     token_mask=mask)
  assert np.all(values[1, 2:] == 0) and np.all(np.isfinite(values))
  grad = jax.grad(total)(student)
  assert np.all(np.isfinite(grad)) and np.all(grad[1, 2:] == 0)
  np.testing.assert_allclose(jax.jit(total)(student), values.sum(), rtol=1e-6)


def test_sparse_loss_bad_inputs_name_the_argument_and_shapes():
  student = _logits(8)
  log_probs, indices, tail = losses.teacher_topk(_logits(9), 4)
  with pytest.raises(ValueError, match=r'k=0 must be in \[1, 24\]'):
    losses.teacher_topk(student, 0)
  with pytest.raises(ValueError, match=r'k=25 must be in \[1, 24\]'):
    losses.teacher_topk(student, 25)
  with pytest.raises(ValueError, match=r'teacher_log_probs.shape=\(3, 5, 4\).*\(2, 5, 24\)'):
    losses.topk_kl_divergence(student[:2], log_probs, indices, tail)
  with pytest.raises(ValueError, match=r'teacher_tail_log_mass.*\(3, 5\).*\(3, 4\)'):
    losses.topk_kl_divergence(student, log_probs, indices, tail[:, :4])
  with pytest.raises(TypeError, match='teacher_indices must have an integer dtype'):
    losses.topk_kl_divergence(student, log_probs, indices.astype(jnp.float32), tail)
  with pytest.raises(TypeError, match='teacher_log_probs must have a floating dtype'):
    losses.topk_kl_divergence(student, indices, indices, tail)
  with pytest.raises(ValueError, match=r'teacher_indices must be in \[0, 10\)'):
    losses.topk_kl_divergence(student, log_probs, indices + 9, tail, vocab_size=10)
  with pytest.raises(ValueError, match='needs teacher_tail_log_mass'):
    losses.topk_kl_divergence(student, log_probs, indices)
  with pytest.raises(ValueError, match='mode must be one of'):
    losses.topk_kl_divergence(student, log_probs, indices, tail, mode='full')


# ----------------------------------------------------------------------------
# Formats: quantisation error bounds, index encodings, bytes per token.


def test_quantisation_round_trip_error_bounds():
  log_probs, _, _ = losses.teacher_topk(_logits(10, (64, 1, 200), scale=4.0), 32)
  log_probs = np.asarray(log_probs)
  for name, bound in (('float32', lambda x: 0 * x), ('bfloat16', lambda x: 2**-8 * abs(x)),
                      ('float16', lambda x: 2**-11 * abs(x) + 2**-25)):
    codes, ranges = cache.quantize_log_probs(log_probs, name)
    back = cache.dequantize_log_probs(codes, ranges)
    assert back.dtype == np.float32 and ranges is None
    assert np.all(np.abs(back - log_probs) <= bound(log_probs) * (1 + 1e-6)), name
  codes, ranges = cache.quantize_log_probs(log_probs, 'uint8')
  back = cache.dequantize_log_probs(codes, ranges)
  span = (ranges[..., 1].astype(np.float32) - ranges[..., 0].astype(np.float32))[..., None]
  assert codes.dtype == np.uint8 and ranges.dtype == np.float16
  assert np.all(ranges[..., 0] <= log_probs.min(-1)) and np.all(ranges[..., 1] >= log_probs.max(-1))
  assert np.all(np.abs(back - log_probs) <= span / 510 * (1 + 1e-3) + 1e-6)
  # Outward float16 rounding keeps the span within float16 rounding of the true one.
  true_span = (log_probs.max(-1) - log_probs.min(-1))[..., None]
  assert np.all(span <= true_span + 2**-9 * np.abs(log_probs).max(-1, keepdims=True) * 2)


@pytest.mark.parametrize('vocab', [2, 256, 300, 65536, 65537, 131072, 2**24 + 3])
@pytest.mark.parametrize('encoding', cache.INDEX_ENCODINGS)
def test_index_encodings_round_trip(vocab, encoding):
  indices = np.random.default_rng(vocab).integers(0, vocab, 37)
  indices[:2] = [0, vocab - 1]
  data = _format.encode_indices(indices, vocab, encoding)
  back = _format.decode_indices(data, vocab, encoding, len(indices))
  np.testing.assert_array_equal(back, indices)
  assert back.dtype == np.int32
  per_index = cache.index_bits(vocab) / 8 if encoding == 'packed' else cache.index_bytes(vocab)
  assert len(data) == int(np.ceil(37 * per_index))


def test_index_widths():
  assert [cache.index_bytes(v) for v in (256, 257, 65536, 65537, 2**24)] == [1, 2, 2, 3, 3]
  assert [cache.index_bits(v) for v in (256, 32000, 128000, 131072, 131073)] == [8, 15, 17, 17, 18]


@pytest.mark.parametrize('log_prob_format', cache.LOG_PROB_FORMATS)
@pytest.mark.parametrize('encoding', cache.INDEX_ENCODINGS)
def test_record_round_trip_and_bytes_per_token(log_prob_format, encoding):
  spec = _spec(k=6, vocab_size=300, log_prob_format=log_prob_format, index_encoding=encoding)
  log_probs, indices, tail = losses.teacher_topk(_logits(11, (TIME, 300)), 6)
  record = cache.encode_record(spec, log_probs, indices, tail)
  back = cache.decode_record(spec, record)
  np.testing.assert_array_equal(back[1], indices)
  np.testing.assert_allclose(back[0], log_probs, atol=0.05)
  np.testing.assert_allclose(back[2], tail, rtol=0.01)
  assert abs(len(record) - TIME * spec.bytes_per_token) < 1
  assert spec.record_bytes == len(record)


def _spec(**overrides):
  values = dict(k=4, vocab_size=VOCAB, time=TIME, num_examples=10, temperature=1.0,
                log_prob_format='float32', index_encoding='bytes', teacher_id='t',
                data_id='d', examples_per_shard=3)
  return cache.CacheSpec(**{**values, **overrides})


# ----------------------------------------------------------------------------
# The writer and the reader, with a plain-function teacher.


def _teacher_apply(variables, batch, *, train, rngs=None):
  del train, rngs
  hidden = jnp.tanh(variables['embedding'][batch['tokens']])
  return Outputs(logits=hidden @ variables['unembedding']), {}


def _variables(seed, vocab=VOCAB):
  rng = np.random.default_rng(seed)
  return {'embedding': rng.standard_normal((vocab, DIM)).astype(np.float32),
          'unembedding': (2 * rng.standard_normal((DIM, vocab))).astype(np.float32)}


def _arrays(num=10, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, (num, TIME)).astype(np.int32)
  mask = np.ones((num, TIME), np.int32)
  mask[-1, 3:] = 0
  return {'tokens': tokens, 'labels': np.roll(tokens, -1, 1), 'mask': mask}


WRITE = dict(k=4, batch_size=4, examples_per_shard=3, temperature=2.0)


def _shard_bytes(directory):
  return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_writer_resumes_after_a_crash_with_identical_bytes(tmp_path, monkeypatch):
  arrays, variables = _arrays(), _variables(0)
  reference = cache.write_cache(tmp_path / 'once', _teacher_apply, variables, arrays, **WRITE)
  assert reference.num_shards == 4 and reference.temperature == 2.0
  assert reference.teacher_id == cache.fingerprint(variables)

  written = []
  real_write = _store._write_shard

  def crashing_write(path, *args):
    if len(written) == 2:
      with open(f'{path}.tmp', 'wb') as f:
        f.write(b'half a shard')  # killed mid-write
      raise KeyboardInterrupt
    written.append(os.path.basename(path))
    real_write(path, *args)

  monkeypatch.setattr(_store, '_write_shard', crashing_write)
  with pytest.raises(KeyboardInterrupt):
    cache.write_cache(tmp_path / 'resumed', _teacher_apply, variables, arrays, **WRITE)
  with pytest.raises(FileNotFoundError, match='incomplete: 2 of 4 shards missing'):
    cache.TeacherCache(tmp_path / 'resumed')
  monkeypatch.setattr(_store, '_write_shard', lambda path, *args: (
      written.append(os.path.basename(path)), real_write(path, *args)))
  cache.write_cache(tmp_path / 'resumed', _teacher_apply, variables, arrays, **WRITE)
  assert written == [reference.shard_name(s) for s in range(4)]  # none written twice
  resumed = _shard_bytes(tmp_path / 'resumed')
  assert resumed == _shard_bytes(tmp_path / 'once')
  assert not any(name.endswith('.tmp') for name in resumed)


def test_process_split_equals_one_process(tmp_path):
  arrays, variables = _arrays(), _variables(0)
  cache.write_cache(tmp_path / 'one', _teacher_apply, variables, arrays, **WRITE)
  done = []
  for index in (1, 0):
    cache.write_cache(tmp_path / 'two', _teacher_apply, variables, arrays, process_index=index,
                      process_count=2, progress=lambda i, n: done.append((index, i, n)), **WRITE)
  assert done == [(1, 1, 2), (1, 2, 2), (0, 1, 2), (0, 2, 2)]
  assert _shard_bytes(tmp_path / 'two') == _shard_bytes(tmp_path / 'one')
  with pytest.raises(ValueError, match=r'process_index must be in \[0, process_count=2\)'):
    cache.write_cache(tmp_path / 'x', _teacher_apply, variables, arrays, process_index=2,
                      process_count=2, **WRITE)


def test_another_spec_is_refused(tmp_path):
  arrays, variables = _arrays(), _variables(0)
  cache.write_cache(tmp_path, _teacher_apply, variables, arrays, **WRITE)
  with pytest.raises(ValueError, match=r"another spec \(teacher_id: cached 'sha256:"):
    cache.write_cache(tmp_path, _teacher_apply, _variables(1), arrays, **WRITE)
  with pytest.raises(ValueError, match=r'k: cached 4, asked 5.*temperature: cached 2.0, asked 1.0'):
    cache.write_cache(tmp_path, _teacher_apply, variables, arrays,
                      **{**WRITE, 'k': 5, 'temperature': 1.0})
  other = {**arrays, 'tokens': arrays['tokens'][::-1].copy()}
  with pytest.raises(ValueError, match='data_id'):
    cache.write_cache(tmp_path, _teacher_apply, variables, other, **WRITE)
  spec = cache.read_spec(tmp_path)
  with pytest.raises(ValueError, match='differs from the one expected'):
    cache.TeacherCache(tmp_path, expected=_spec())
  assert len(cache.TeacherCache(tmp_path, expected=spec)) == 10


def test_writer_bad_inputs(tmp_path):
  arrays, variables = _arrays(), _variables(0)

  def write(**kwargs):
    cache.write_cache(tmp_path, _teacher_apply, variables, kwargs.pop('arrays', arrays),
                      **{**WRITE, **kwargs})

  with pytest.raises(ValueError, match=r'k=25 must be in \[1, 24\]'):
    write(k=25)
  with pytest.raises(ValueError, match=r'k=0 must be in \[1, 24\]'):
    write(k=0)
  with pytest.raises(ValueError, match=r"arrays\['tokens'\] must be \[num_examples, time\].*\(10, 5, 1\)"):
    write(arrays={**arrays, 'tokens': arrays['tokens'][..., None]})
  with pytest.raises(TypeError, match=r"integer tokens, got dtype float32 with shape \(10, 5\)"):
    write(arrays={**arrays, 'tokens': arrays['tokens'].astype(np.float32)})
  with pytest.raises(ValueError, match=r"arrays\['mask'\].*got \(10, 4\) and \(10, 5\)"):
    write(arrays={**arrays, 'mask': arrays['mask'][:, :4]})
  with pytest.raises(ValueError, match='log_prob_format must be one of'):
    write(log_prob_format='int4')
  with pytest.raises(ValueError, match=r'vocab_size=30 must be in \[1, 24\]'):
    write(vocab_size=30)
  assert not os.listdir(tmp_path)  # nothing written before the checks


@pytest.mark.parametrize('log_prob_format,encoding', [('float32', 'packed'), ('uint8', 'bytes')])
def test_reader_gives_example_i_in_order_through_grain(tmp_path, log_prob_format, encoding):
  arrays, variables = _arrays(), _variables(0)
  spec = cache.write_cache(tmp_path, _teacher_apply, variables, arrays,
                           log_prob_format=log_prob_format, index_encoding=encoding, **WRITE)
  teacher_cache = cache.TeacherCache(tmp_path, expected=spec)
  outputs, _ = _teacher_apply(variables, arrays, train=False)
  log_probs, indices, tail = jax.device_get(
      losses.teacher_topk(outputs.logits, 4, temperature=2.0))
  # float32 storage is lossless (test_record_round_trip_and_bytes_per_token
  # checks it bit for bit); here the reference is another compiled program
  # (the whole array at once, not the writer's batches), whose last bit may
  # differ.
  atol, rtol = (0, 1e-6) if log_prob_format == 'float32' else (0.05, 1e-7)
  for i in range(len(teacher_cache)):
    record = teacher_cache[i]
    np.testing.assert_array_equal(record[cache.INDICES_KEY], indices[i])
    np.testing.assert_allclose(record[cache.LOG_PROBS_KEY], log_probs[i], atol=atol, rtol=rtol)
    np.testing.assert_allclose(record[cache.TAIL_KEY], tail[i], rtol=1e-3 if atol else 1e-5)
  joined = cache.join_cache(arrays, teacher_cache)
  batches = list(grain.MapDataset.source(joined).batch(4))
  assert batches[0][cache.LOG_PROBS_KEY].shape == (4, TIME, 4)
  assert batches[0][cache.TAIL_KEY].shape == (4, TIME)
  np.testing.assert_array_equal(np.concatenate([b['tokens'] for b in batches]), arrays['tokens'])
  np.testing.assert_array_equal(
      np.concatenate([b[cache.INDICES_KEY] for b in batches]), indices)
  np.testing.assert_array_equal(teacher_cache.read([7, 2])[cache.INDICES_KEY], indices[[7, 2]])
  with pytest.raises(ValueError, match='are not those the teacher cache'):
    cache.join_cache(_arrays(seed=1), teacher_cache)


# ----------------------------------------------------------------------------
# Steps: the cache as a teacher of an unchanged make_train_step.


def _student_apply(variables, batch, *, train, rngs=None):
  del train, rngs
  params = variables['params']
  hidden = jnp.tanh(params['embedding'][batch['tokens']])
  return Outputs(logits=hidden @ params['unembedding']), {}


def _one_step(teacher_apply, teacher_variables, term, batch):
  optimizer = optax.sgd(1.0)
  state = init_train_state({'params': _variables(5)}, optimizer)
  step = jax.jit(make_train_step(_student_apply, teacher_apply,
                                 objective.Objective({'kd': term}), optimizer))
  new_state, metrics = step(state, teacher_variables, batch)
  total, count = metrics['loss/kd']
  grads = jax.tree.map(lambda old, new: old - new, state.params, new_state.params)
  return float(total / count), grads


def _cached_batch(tmp_path, k, **write):
  arrays, variables = _arrays(), _variables(0)
  cache.write_cache(tmp_path, _teacher_apply, variables, arrays, k=k, batch_size=4,
                    examples_per_shard=4, **write)
  joined = cache.join_cache(arrays, cache.TeacherCache(tmp_path))
  return next(iter(grain.MapDataset.source(joined).batch(10))), variables


@pytest.mark.parametrize('mode', losses.TOPK_MODES)
def test_cached_step_equals_the_live_topk_step(tmp_path, mode):
  batch, variables = _cached_batch(tmp_path, 5, temperature=2.0)
  term = objective.cached_token_distill(mode, temperature=2.0)
  cached = _one_step(cache.cached_teacher_apply, None, term, batch)
  live = _one_step(cache.topk_teacher_apply(_teacher_apply, 5, temperature=2.0), variables,
                   term, {key: batch[key] for key in ('tokens', 'labels', 'mask')})
  np.testing.assert_allclose(cached[0], live[0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), cached[1], live[1])


def test_full_k_float32_cache_step_equals_token_distill(tmp_path):
  batch, variables = _cached_batch(tmp_path, VOCAB, temperature=2.0)
  full = _one_step(_teacher_apply, variables,
                   objective.token_distill('forward_kl', temperature=2.0), batch)
  for mode in losses.TOPK_MODES:
    cached = _one_step(cache.cached_teacher_apply, None,
                       objective.cached_token_distill(mode, temperature=2.0), batch)
    np.testing.assert_allclose(cached[0], full[0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), cached[1], full[1])


def test_cached_term_errors():
  with pytest.raises(ValueError, match='mode must be one of'):
    objective.cached_token_distill('reverse')
  term = objective.cached_token_distill()
  with pytest.raises(KeyError, match="feature 'tail_log_mass' is not among the outputs"):
    term(Outputs(_logits(0)), Outputs(_logits(1)), {}, 0)
  with pytest.raises(KeyError, match="'teacher_topk_log_probs' is not in the batch"):
    cache.cached_teacher_apply(None, {'tokens': np.zeros((1, 2))}, train=False)


def test_doctests():
  result = doctest.testmod(_topk, optionflags=doctest.ELLIPSIS)
  assert result.attempted >= 2 and result.failed == 0
