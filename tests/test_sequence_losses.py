"""Token-level LM distillation: divergences by name, token masks, vocabulary padding."""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from kdjax import losses
from kdjax import metrics
from kdjax import objective
from kdjax._outputs import Outputs
from kdjax.losses import _sequence

BATCH, TIME, VOCAB, PADDED_VOCAB = 8, 5, 11, 16


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl(log_a, log_b):
  return np.sum(np.exp(log_a) * (log_a - log_b), -1)


def np_divergence(name, student, teacher, temperature=1.0, beta=0.5, alpha=0.1):
  """Independent float64 NumPy formulas of the papers, per token."""
  log_q = _np_log_softmax(np.asarray(student, np.float64) / temperature)
  log_p = _np_log_softmax(np.asarray(teacher, np.float64) / temperature)
  p, q = np.exp(log_p), np.exp(log_q)
  if name == 'forward_kl':
    value = _np_kl(log_p, log_q)
  elif name == 'reverse_kl':
    value = _np_kl(log_q, log_p)
  elif name == 'jsd':
    log_m = np.log(beta * p + (1 - beta) * q)
    value = beta * _np_kl(log_p, log_m) + (1 - beta) * _np_kl(log_q, log_m)
  elif name == 'skew_kl':
    value = _np_kl(log_p, np.log(alpha * p + (1 - alpha) * q))
  elif name == 'skew_reverse_kl':
    value = _np_kl(log_q, np.log(alpha * q + (1 - alpha) * p))
  else:
    value = 0.5 * np.abs(p - q).sum(-1)
  return value * temperature**2


def _logits(seed, vocab=VOCAB, shape=(BATCH, TIME)):
  return jax.random.normal(jax.random.PRNGKey(seed), shape + (vocab,)) * 2.0


def _uneven_mask():
  """Real lengths 5, 0, 1, 5, 2, 5, 3, 0: padding spread unevenly."""
  lengths = np.array([5, 0, 1, 5, 2, 5, 3, 0])
  return (np.arange(TIME)[None, :] < lengths[:, None]).astype(np.int32)


@pytest.mark.parametrize('name', losses.DIVERGENCE_NAMES)
def test_token_divergence_matches_numpy_with_padding(name):
  student = _logits(0)
  teacher = _logits(1, PADDED_VOCAB)
  # Huge padding logits: they would dominate the teacher's softmax if kept.
  teacher = teacher.at[..., VOCAB:].set(50.0)
  mask = _uneven_mask()
  values = losses.token_divergence(
      student, teacher, divergence=name, temperature=2.0, token_mask=mask,
      vocab_size=VOCAB,
  )
  expected = np_divergence(
      name, student, np.asarray(teacher)[..., :VOCAB], temperature=2.0
  )
  assert values.shape == (BATCH, TIME)
  np.testing.assert_allclose(values, np.where(mask, expected, 0.0), rtol=1e-5,
                             atol=1e-6)


def test_divergence_fn_names_and_hyperparameters():
  student, teacher = _logits(0), _logits(1)
  for name, beta, alpha in [('jsd', 0.3, None), ('skew_kl', None, 0.4),
                            ('skew_reverse_kl', None, 0.4)]:
    values = losses.token_divergence(student, teacher, divergence=name,
                                     beta=beta, alpha=alpha)
    expected = np_divergence(name, student, teacher, beta=beta or 0.5,
                             alpha=alpha or 0.1)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
  assert losses.divergence_fn('forward_kl') is losses.kl_divergence


@pytest.mark.parametrize('repeat', [1, 8])  # 40 rows: one block; 320: blocks in place
def test_masked_tokens_give_zero_and_no_nan_gradient(repeat):
  mask = jnp.tile(_uneven_mask(), (repeat, 1))
  student = jnp.where(mask[..., None] > 0, jnp.tile(_logits(0), (repeat, 1, 1)), jnp.nan)
  teacher = jnp.where(mask[..., None] > 0, jnp.tile(_logits(1), (repeat, 1, 1)), jnp.inf)

  def mean_loss(s):
    values = losses.token_divergence(s, teacher, divergence='jsd', token_mask=mask)
    return losses.token_mean(values, mask)

  loss, grad = jax.value_and_grad(mean_loss)(student)
  assert np.isfinite(loss)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(np.asarray(grad)[mask == 0], 0.0)


@pytest.mark.parametrize('name', ['forward_kl', 'jsd', 'tvd'])
@pytest.mark.parametrize('rows, in_place', [
    (4 * _sequence._ROW_BLOCK, True),  # full blocks
    (2 * _sequence._ROW_BLOCK + 3, True),  # 7 blocks of 37 rows
    (257, False),  # prime: padded blocks in a new array
    (5, None),  # one block, no loop
])
def test_fused_gradient_equals_autodiff_for_any_cotangent(name, rows, in_place):
  """token_divergence computes each row's gradient in the forward pass, in
  blocks of rows written over the student's logits (or, for a row count
  with no usable divisor, padded into a new array); times any cotangent it
  equals autodiff through the divergence's own function."""
  if in_place is not None:
    assert (_sequence._block_size(rows) is not None) == in_place
  rng = np.random.default_rng(0)
  student = jnp.asarray(rng.normal(size=(rows, 1, 7)), jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(rows, 1, 7)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(rows, 1)), jnp.float32)
  mask = jnp.asarray(rng.random((rows, 1)) < 0.8)
  kwargs = {'beta': 0.3} if name == 'jsd' else {}
  fn = losses.divergence_fn(name)

  def fused(s):
    values = losses.token_divergence(s, teacher, divergence=name, temperature=1.5,
                                     token_mask=mask, **kwargs)
    return jnp.sum(values * cotangent), values

  def reference(s):
    values = jnp.where(mask, fn(s, teacher, temperature=1.5, **kwargs), 0.0)
    return jnp.sum(values * cotangent), values

  (_, got_values), got = jax.value_and_grad(fused, has_aux=True)(student)
  (_, want_values), want = jax.value_and_grad(reference, has_aux=True)(student)
  np.testing.assert_allclose(got_values, want_values, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got)[~np.asarray(mask)], 0.0)


def test_token_mean_is_token_weighted_and_equals_slicing():
  mask = _uneven_mask()
  student, teacher = _logits(0), _logits(1)
  values = losses.token_divergence(student, teacher, token_mask=mask)
  real = mask.astype(bool)
  sliced = losses.kl_divergence(np.asarray(student)[real], np.asarray(teacher)[real])
  np.testing.assert_allclose(losses.token_mean(values, mask), np.mean(sliced),
                             rtol=1e-6)
  # A [batch] mask drops whole sequences.
  rows = np.array([1, 0, 1, 0, 0, 0, 0, 1])
  np.testing.assert_allclose(
      losses.token_mean(values, rows),
      np.sum(np.asarray(values)[rows.astype(bool)]) / (3 * TIME), rtol=1e-6)
  assert float(losses.token_mean(values, np.zeros((BATCH, TIME)))) == 0.0


def test_align_vocab_slices_padding_only():
  student, teacher = _logits(0, VOCAB), _logits(1, PADDED_VOCAB)
  s, t = losses.align_vocab(student, teacher, vocab_size=VOCAB)
  assert s.shape == t.shape == (BATCH, TIME, VOCAB)
  np.testing.assert_array_equal(t, np.asarray(teacher)[..., :VOCAB])
  np.testing.assert_array_equal(s, student)


def test_token_distill_term_is_the_global_token_mean_under_sharding():
  """Sharded over 8 devices == unsharded == NumPy sum over real tokens / count."""
  mask = _uneven_mask()
  student, teacher = _logits(0), _logits(1, PADDED_VOCAB)
  batch = {'mask': mask}
  kd = objective.Objective(
      {'kd': objective.token_distill('reverse_kl', temperature=2.0,
                                     vocab_size=VOCAB)})

  def loss_and_grad(student_logits, teacher_logits, batch):
    def loss_fn(s):
      return kd(Outputs(s), Outputs(teacher_logits), batch)

    (loss, stats), grad = jax.value_and_grad(loss_fn, has_aux=True)(student_logits)
    return loss, stats['loss/kd'], grad

  # -O0 LLVM: compiles twice as fast, computes the same.
  fn = jax.jit(loss_and_grad,
               compiler_options={'xla_backend_optimization_level': 0})
  loss, (total, count), grad = fn(student, teacher, batch)

  mesh = jax.make_mesh((8,), ('data',))
  shard = NamedSharding(mesh, P('data'))
  sharded = jax.device_put((student, teacher, batch), shard)
  s_loss, (s_total, s_count), s_grad = fn(*sharded)
  assert s_grad.sharding.is_equivalent_to(shard, 3)

  expected = np_divergence('reverse_kl', student,
                           np.asarray(teacher)[..., :VOCAB], temperature=2.0)
  expected = expected[mask.astype(bool)].mean()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(s_loss, loss, rtol=1e-6)
  assert float(count) == float(s_count) == mask.sum()
  np.testing.assert_allclose(s_total, total, rtol=1e-6)
  np.testing.assert_allclose(s_grad, grad, rtol=1e-5, atol=1e-8)
  assert metrics.compute({'kd': (s_total, s_count)})['kd'] == pytest.approx(
      float(expected), rel=1e-5)


def test_token_distill_schedules_and_row_mask():
  student, teacher = _logits(0), _logits(1)
  rows = np.array([1, 1, 0, 1, 0, 1, 1, 1])
  kd = objective.Objective({'kd': objective.token_distill(
      'jsd', temperature=lambda step: 1.0 + step, beta=lambda step: 0.25 * step)})
  loss, _ = kd(Outputs(student), Outputs(teacher), {'mask': rows}, step=2)
  expected = np_divergence('jsd', student, teacher, temperature=3.0, beta=0.5)
  np.testing.assert_allclose(loss, expected[rows.astype(bool)].mean(), rtol=1e-5)


def test_errors():
  student, teacher = _logits(0, VOCAB), _logits(1, PADDED_VOCAB)
  with pytest.raises(ValueError, match=r'different vocabularies.*\(8, 5, 11\).*\(8, 5, 16\).*pass vocab_size='):
    losses.token_divergence(student, teacher)
  with pytest.raises(ValueError, match=r'vocab_size=12 must be in \[1, 11\].*\(8, 5, 11\).*\(8, 5, 16\)'):
    losses.align_vocab(student, teacher, vocab_size=12)
  with pytest.raises(ValueError, match=r'every axis but the last.*\(8, 5, 11\).*\(8, 4, 16\)'):
    losses.align_vocab(student, teacher[:, :4], vocab_size=VOCAB)
  with pytest.raises(ValueError, match=r"unknown divergence 'kl'.*'forward_kl'"):
    losses.token_divergence(student, student, divergence='kl')
  with pytest.raises(ValueError, match=r"unknown divergence 'fkl'"):
    objective.token_distill('fkl')
  with pytest.raises(ValueError, match=r"beta=0.5 was given, but divergence 'skew_kl' takes 'alpha'"):
    losses.token_divergence(student, student, divergence='skew_kl', beta=0.5)
  with pytest.raises(ValueError, match=r"alpha=0.2 was given, but divergence 'tvd' takes no"):
    objective.token_distill('tvd', alpha=0.2)
  with pytest.raises(ValueError, match=r'token_mask with shape \(8, 4\).*\(8, 5\)'):
    losses.token_divergence(student, student, token_mask=np.ones((8, 4)))
  with pytest.raises(ValueError, match=r'beta must be in \[0, 1\]'):
    losses.token_divergence(student, student, divergence='jsd', beta=1.5)


def test_doctests():
  from kdjax.losses import _chunked, _sequence  # pylint: disable=g-import-not-at-top

  for module in (_sequence, _chunked):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed, module.__name__


@pytest.mark.parametrize('name', losses.DIVERGENCE_NAMES)
def test_one_registry_serves_the_logit_and_log_space_forms(name):
  from kdjax.losses import _divergences  # pylint: disable=g-import-not-at-top

  entry = _divergences.lookup(name)
  assert losses.divergence_fn(name) is entry.logit_fn
  student, teacher = _logits(0), _logits(1)
  hyper = entry.default
  log_q = jax.nn.log_softmax(student / 2.0)
  log_p = jax.nn.log_softmax(teacher / 2.0)
  valid = jnp.ones((1, VOCAB), bool)
  kwargs = {} if entry.hyperparameter is None else {entry.hyperparameter: hyper}
  np.testing.assert_allclose(
      entry.logit_fn(student, teacher, temperature=2.0, **kwargs),
      4.0 * entry.log_space_fn(log_q, valid, log_p, valid, hyper),
      rtol=1e-5, atol=1e-6,
  )


def test_fused_divergence_holds_no_logits_sized_temporary():
  """Loss and gradient of token_divergence compile to less than half a
  logits-sized array of XLA temporaries: the per-row gradients are written
  block by block over the student's logits (forward) and scaled in place
  (backward). Materialising the gradient in a new array, as an earlier
  version did, takes at least one whole array more."""
  shape = (8, 16 * _sequence._ROW_BLOCK // 8, 1024)

  def loss_and_grad(student, teacher, mask):
    def loss(s):
      values = losses.token_divergence(s, teacher, temperature=2.0, token_mask=mask)
      return losses.token_mean(values, mask)
    return jax.value_and_grad(loss)(student)

  logits = jax.ShapeDtypeStruct(shape, jnp.float32)
  compiled = jax.jit(loss_and_grad).lower(
      logits, logits, jax.ShapeDtypeStruct(shape[:-1], jnp.bool_)).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    pytest.skip('this backend reports no memory analysis')
  logits_bytes = np.prod(shape) * 4
  assert analysis.temp_size_in_bytes < 0.5 * logits_bytes, (
      analysis.temp_size_in_bytes / logits_bytes)
