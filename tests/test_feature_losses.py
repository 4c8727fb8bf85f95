"""Tests for the feature losses: NumPy formulas, invariances, masks, sharding."""

from __future__ import annotations

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from kdjax import losses
from kdjax import objective
from kdjax import recipes
from kdjax._outputs import Outputs
from kdjax.losses import _feature

RELATIONAL = {
    'similarity_preserving': losses.similarity_preserving,
    'pkt': losses.pkt,
    'rkd_distance': losses.rkd_distance,
    'rkd_angle': losses.rkd_angle,
    'correlation_congruence': losses.correlation_congruence,
}
REL_NAMES = sorted(RELATIONAL)


def _normal(seed, shape, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


# ----------------------------------------------------------------------------
# NumPy references, written from the papers / reference code, in float64.


def _np_normalize(x, axis=-1, eps=1e-12):
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def np_hint(s, t):
  return 0.5 * ((np.float64(s) - t) ** 2).reshape(len(s), -1).sum(1)


def np_attention(s, t, p=2.0):
  def q(f):
    return _np_normalize((np.abs(np.float64(f)) ** p).mean(-1).reshape(len(f), -1))
  return ((q(s) - q(t)) ** 2).mean(1)


def np_nst(s, t):
  out = []
  for fs, ft in zip(np.float64(s), np.float64(t)):
    fs = _np_normalize(fs.reshape(-1, fs.shape[-1]).T)  # [channels, positions]
    ft = _np_normalize(ft.reshape(-1, ft.shape[-1]).T)
    k = lambda a, b: ((a @ b.T) ** 2).mean()
    out.append(k(ft, ft) + k(fs, fs) - 2 * k(fs, ft))
  return np.array(out)


def np_vid(mean, variance, t):
  nll = 0.5 * ((np.float64(t) - mean) ** 2 / variance + np.log(variance))
  return nll.reshape(len(t), -1).mean(1)


def _smooth_l1(x):
  return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def np_sp(s, t):
  b = len(s)
  def g(f):
    f = np.float64(f).reshape(b, -1)
    return _np_normalize(f @ f.T)
  return ((g(t) - g(s)) ** 2).sum() / b**2


def np_pkt(s, t, eps=1e-7):
  def cond(f):
    f = np.float64(f).reshape(len(f), -1)
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
    k = (f @ f.T + 1) / 2
    return k / k.sum(1, keepdims=True)
  p, q = cond(t), cond(s)
  return np.mean(p * np.log((p + eps) / (q + eps)))


def np_rkd_distance(s, t):
  def d(f):
    f = np.float64(f).reshape(len(f), -1)
    dist = np.linalg.norm(f[:, None] - f[None], axis=-1)
    return dist / dist[dist > 0].mean()
  return _smooth_l1(d(s) - d(t)).mean()


def np_rkd_angle(s, t):
  def angles(f):
    f = np.float64(f).reshape(len(f), -1)
    e = _np_normalize(f[None, :] - f[:, None], axis=2)  # e[a, b] = f_b - f_a
    return np.einsum('abd,acd->abc', e, e)
  return _smooth_l1(angles(s) - angles(t)).mean()


def np_cc(s, t, gamma=0.4, order=2, kernel='rbf'):
  def corr(f):
    f = _np_normalize(np.float64(f).reshape(len(f), -1))
    g = f @ f.T
    if kernel == 'inner':
      return g
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * g**p
               for p in range(order + 1))
  return ((corr(t) - corr(s)) ** 2).mean()


NP_RELATIONAL = {
    'similarity_preserving': np_sp,
    'pkt': np_pkt,
    'rkd_distance': np_rkd_distance,
    'rkd_angle': np_rkd_angle,
    'correlation_congruence': np_cc,
}


# ----------------------------------------------------------------------------
# Per-example losses.


def test_hint_loss_matches_formula_and_reductions():
  s, t = _normal(0, (3, 4, 4, 5)), _normal(1, (3, 4, 4, 5))
  np.testing.assert_allclose(losses.hint_loss(s, t), np_hint(s, t), rtol=1e-5)
  mse = ((np.float64(s) - t) ** 2).reshape(3, -1).mean(1)
  np.testing.assert_allclose(losses.hint_loss(s, t, reduction='mean'), mse, rtol=1e-5)
  np.testing.assert_allclose(losses.hint_loss(t, t), 0.0)
  vectors = losses.hint_loss(s.reshape(3, -1), t.reshape(3, -1))
  np.testing.assert_allclose(vectors, np_hint(s, t), rtol=1e-5)
  masked = losses.hint_loss(s, t, example_mask=np.array([True, False, True]))
  np.testing.assert_allclose(masked, np_hint(s, t) * [1, 0, 1], rtol=1e-5)


def test_hint_loss_resize():
  s, t = _normal(2, (2, 8, 8, 3)), _normal(3, (2, 4, 4, 3))
  pooled = np.float64(s).reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(
      losses.hint_loss(s, t, resize='avg_pool'), np_hint(pooled, t), rtol=1e-5
  )
  # Pooling applies to whichever map is larger.
  np.testing.assert_allclose(
      losses.hint_loss(t, s, resize='avg_pool'), np_hint(t, pooled), rtol=1e-5
  )
  # A constant map stays constant under bilinear resizing.
  constant = np.full((2, 4, 4, 3), 2.0, np.float32)
  np.testing.assert_allclose(
      losses.hint_loss(constant, np.ones((2, 8, 8, 3), np.float32), resize='bilinear'),
      [0.5 * 8 * 8 * 3] * 2, rtol=1e-5,
  )


def test_hint_loss_errors():
  s = np.zeros((2, 4, 4, 3), np.float32)
  with pytest.raises(ValueError, match=r'HintRegressor\(channels=5\).*|channels=5'):
    losses.hint_loss(s, np.zeros((2, 4, 4, 5), np.float32))
  with pytest.raises(ValueError, match=r"different spatial sizes.*resize='avg_pool'"):
    losses.hint_loss(s, np.zeros((2, 2, 2, 3), np.float32))
  with pytest.raises(ValueError, match=r'divide evenly.*\(2, 3, 3, 3\)'):
    losses.hint_loss(np.zeros((2, 3, 3, 3), np.float32), np.zeros((2, 2, 2, 3), np.float32),
                     resize='avg_pool')
  with pytest.raises(ValueError, match='same batch size'):
    losses.hint_loss(s, np.zeros((3, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match=r'resize must be one of'):
    losses.hint_loss(s, s, resize='nearest')
  with pytest.raises(ValueError, match=r'example_mask must be a \[batch\] mask.*\(2,\)'):
    losses.hint_loss(s, s, example_mask=np.ones((2, 4), bool))
  with pytest.raises(TypeError, match='student_features must have a floating dtype'):
    losses.hint_loss(s.astype(np.int32), s)


def test_hint_regressor_shapes_and_fitnets_stage1():
  x = _normal(4, (2, 8, 8, 3))
  conv = losses.HintRegressor(channels=6, kernel_size=3, strides=2)
  variables = jax.jit(conv.init)(jax.random.PRNGKey(0), x)
  assert conv.apply(variables, x).shape == (2, 4, 4, 6)
  dense = losses.HintRegressor(channels=6)
  assert jax.eval_shape(dense.init_with_output, jax.random.PRNGKey(0), x[:, 0, 0])[0].shape == (2, 6)

  # Stage 1 trains only the selected parameters, weight decay included.
  params = {'guided': jnp.ones((3,)), 'regressor': jnp.ones((3,)), 'head': jnp.ones((3,))}
  tx = recipes.freeze_except(
      optax.adamw(0.1, weight_decay=0.5), lambda path: not path.startswith('head')
  )
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert np.all(np.asarray(updates['head']) == 0)
  assert np.all(np.asarray(updates['guided']) != 0)

  hint_objective = recipes.fitnets_stage1_objective('hint', 'teacher_hint')
  t = _normal(5, (2, 4, 4, 6))
  student = Outputs(logits=None, features={'hint': conv.apply(variables, x)})
  teacher = Outputs(logits=None, features={'teacher_hint': t})
  loss, _ = jax.jit(lambda s, t: hint_objective(s, t, {}))(student, teacher)
  np.testing.assert_allclose(loss, np_hint(student.features['hint'], t).mean(), rtol=1e-5)


def test_fitnets_stage2_gradient_is_the_papers():
  """grad = grad[CE + lambda * H(p_t^tau, p_s^tau)], lambda 4 -> 1 linearly."""
  logits_s, logits_t = _normal(6, (4, 5)), _normal(7, (4, 5))
  labels = np.array([0, 1, 2, 3])
  tau, total = 3.0, 10
  stage2 = recipes.fitnets_stage2_objective(total_steps=total, temperature=tau)

  @jax.jit
  def ours(s, step):
    return stage2(Outputs(s), Outputs(logits_t), {'label': labels}, step=step)[0]

  @jax.jit
  def paper(s, lam):
    ce = optax.softmax_cross_entropy_with_integer_labels(s, labels)
    soft = -jnp.sum(jax.nn.softmax(logits_t / tau) * jax.nn.log_softmax(s / tau), -1)
    return jnp.mean(ce + lam * soft)

  for step, lam in ((0, 4.0), (5, 2.5), (10, 1.0), (20, 1.0)):
    np.testing.assert_allclose(jax.grad(ours)(logits_s, step), jax.grad(paper)(logits_s, lam),
                               rtol=1e-5, atol=1e-7)


def test_attention_transfer_formula_invariance_and_errors():
  s, t = _normal(8, (3, 4, 4, 5)), _normal(9, (3, 4, 4, 7))
  np.testing.assert_allclose(losses.attention_transfer(s, t), np_attention(s, t), rtol=1e-5)
  np.testing.assert_allclose(
      losses.attention_transfer(s, t, p=3.0), np_attention(s, t, p=3.0), rtol=1e-5
  )
  np.testing.assert_allclose(losses.attention_transfer(s * 7.0, s), 0.0, atol=1e-7)
  # Attention maps of a 2x-pooled student against a 2x-smaller teacher.
  big = _normal(10, (3, 8, 8, 5))
  pooled_power = (np.float64(big) ** 2).mean(-1).reshape(3, 4, 2, 4, 2).mean((2, 4))
  q_s = _np_normalize(pooled_power.reshape(3, -1))
  q_t = _np_normalize((np.float64(t) ** 2).mean(-1).reshape(3, -1))
  np.testing.assert_allclose(
      losses.attention_transfer(big, t, resize='avg_pool'),
      ((q_s - q_t) ** 2).mean(1), rtol=1e-5,
  )
  with pytest.raises(ValueError, match=r'student_features must be a feature map.*\(3, 5\)'):
    losses.attention_transfer(s[:, 0, 0], t)
  with pytest.raises(ValueError, match='different spatial sizes'):
    losses.attention_transfer(big, t)
  with pytest.raises(ValueError, match='p must be > 0'):
    losses.attention_transfer(s, t, p=0.0)


def test_nst_formula_and_properties():
  s, t = _normal(11, (3, 4, 4, 5)), _normal(12, (3, 4, 4, 6))
  np.testing.assert_allclose(losses.nst(s, t), np_nst(s, t), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(losses.nst(t, t), 0.0, atol=1e-6)
  # Each channel is normalised over positions: per-channel scales change nothing.
  scales = np.linspace(0.5, 3.0, 6).astype(np.float32)
  np.testing.assert_allclose(losses.nst(t * scales, t), 0.0, atol=1e-6)
  # Channel order is irrelevant: channels are samples of one distribution.
  np.testing.assert_allclose(losses.nst(s[..., ::-1], t), losses.nst(s, t), rtol=1e-5)
  with pytest.raises(ValueError, match='different spatial sizes'):
    losses.nst(s, t[:, :2, :2])


def test_vid_formula_regressor_and_errors():
  t = _normal(13, (2, 3, 3, 4))
  mean, variance = _normal(14, (2, 3, 3, 4)), np.array([0.5, 1.0, 2.0, 4.0], np.float32)
  np.testing.assert_allclose(
      losses.vid((mean, variance), t), np_vid(mean, variance, t), rtol=1e-5
  )
  regressor = losses.VIDRegressor(channels=4, init_variance=5.0)
  x = _normal(15, (2, 3, 3, 6))
  variables = jax.jit(regressor.init)(jax.random.PRNGKey(0), x)
  pred_mean, pred_variance = regressor.apply(variables, x)
  assert pred_mean.shape == (2, 3, 3, 4)
  np.testing.assert_allclose(pred_variance, 5.0, rtol=1e-5)
  np.testing.assert_allclose(
      losses.vid((pred_mean, pred_variance), t),
      np_vid(np.asarray(pred_mean), np.asarray(pred_variance), t), rtol=1e-5,
  )
  with pytest.raises(ValueError, match=r"mean must have the teacher's shape"):
    losses.vid((mean[:, :2], variance), t)
  with pytest.raises(ValueError, match=r'variance with shape \(3,\) does not broadcast'):
    losses.vid((mean, variance[:3]), t)
  with pytest.raises(TypeError, match=r'pair \(mean, variance\)'):
    losses.vid(mean, t)


def test_per_example_gradients():
  s, t = _normal(16, (2, 3, 3, 2)), _normal(17, (2, 3, 3, 3))
  variance = np.array([0.5, 1.0, 2.0], np.float32)

  @jax.jit
  def all_losses(x, mean):
    return jnp.stack([
        losses.hint_loss(x, t[..., :2]),
        losses.attention_transfer(x, t),
        losses.nst(x, t),
        losses.vid((mean, variance), t),
    ])

  check_grads(all_losses, (s, t + 0.3), order=1, modes=['rev'], atol=2e-2, rtol=2e-2)
  # The teacher is a fixed target.
  grad_t = jax.grad(lambda y: losses.attention_transfer(s, y).sum())(t)
  assert not np.any(np.asarray(grad_t))


# ----------------------------------------------------------------------------
# Batch-relational losses.


@pytest.mark.parametrize('name', REL_NAMES)
def test_relational_matches_reference_code(name):
  s, t = _normal(20, (6, 2, 2, 3)), _normal(21, (6, 5))
  rows = RELATIONAL[name](s, t)
  assert rows.shape == (6,)
  np.testing.assert_allclose(np.mean(rows), NP_RELATIONAL[name](s, t), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(RELATIONAL[name](t, t), 0.0, atol=1e-6)


@pytest.mark.parametrize('name', REL_NAMES)
def test_relational_mask_equals_slice_and_permutation(name):
  fn = RELATIONAL[name]
  s, t = _normal(22, (6, 4)), _normal(23, (6, 3))
  where = np.array([True, False, True, True, False, True])
  masked = fn(s, t, example_mask=where)
  np.testing.assert_allclose(masked[where], fn(s[where], t[where]), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(masked)[~where], 0.0)
  perm = np.array([3, 0, 5, 1, 4, 2])
  np.testing.assert_allclose(fn(s[perm], t[perm]), np.asarray(fn(s, t))[perm],
                             rtol=1e-5, atol=1e-7)
  # Scale invariance (all of them normalise).
  np.testing.assert_allclose(fn(5.0 * s, 0.2 * t), fn(s, t), rtol=1e-4, atol=1e-7)


def test_relational_special_cases_and_gradients():
  s, t = _normal(24, (5, 4)), _normal(25, (5, 3))
  # Angles are also translation invariant.
  np.testing.assert_allclose(losses.rkd_angle(s + 3.0, t), losses.rkd_angle(s, t), rtol=1e-3)
  # A high-order Taylor expansion is the Gaussian kernel itself.
  def exact(f):
    f = _np_normalize(np.float64(f))
    return np.exp(-0.4 * ((f[:, None] - f[None]) ** 2).sum(-1))
  np.testing.assert_allclose(
      np.mean(losses.correlation_congruence(s, t, order=12)),
      ((exact(t) - exact(s)) ** 2).mean(), rtol=1e-4,
  )
  np.testing.assert_allclose(
      np.mean(losses.correlation_congruence(s, t, kernel='inner')),
      np_cc(s, t, kernel='inner'), rtol=1e-5,
  )
  all_relational = jax.jit(lambda x: jnp.stack([RELATIONAL[n](x, t) for n in REL_NAMES]))
  check_grads(all_relational, (s,), order=1, modes=['rev'], atol=2e-2, rtol=2e-2)
  with pytest.raises(ValueError, match="kernel must be 'rbf' or 'inner'"):
    losses.correlation_congruence(s, t, kernel='cosine')
  with pytest.raises(ValueError, match='same batch size'):
    losses.similarity_preserving(s, t[:4])


def test_relational_feature_term_excludes_padding():
  s, t = _normal(26, (6, 4)), _normal(27, (6, 3))
  mask = np.array([1, 1, 0, 1, 0, 1], np.float32)
  real = mask > 0
  student = Outputs(logits=None, features={'emb': s})
  teacher = Outputs(logits=None, features={'emb': t})
  terms = {name: objective.relational_feature(fn, 'emb') for name, fn in RELATIONAL.items()}
  _, metrics = objective.Objective(terms)(student, teacher, {'mask': mask})
  for name in REL_NAMES:
    total, count = metrics[f'loss/{name}']
    np.testing.assert_allclose(
        total / count, NP_RELATIONAL[name](s[real], t[real]), rtol=1e-4, atol=1e-7
    )


# ----------------------------------------------------------------------------
# Semantics under a mesh: global batch vs per device.


def _mesh():
  return jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def test_relational_under_a_mesh():
  mesh = _mesh()
  s, t = _normal(28, (16, 4)), _normal(29, (16, 3))
  sharding = NamedSharding(mesh, P('data'))
  s_sharded, t_sharded = jax.device_put(s, sharding), jax.device_put(t, sharding)

  def per_device(fn):
    return jax.shard_map(fn, mesh=mesh, in_specs=(P('data'), P('data')),
                         out_specs=P('data'))

  def gathered(fn):
    def local(s_local, t_local):
      rows = fn(jax.lax.all_gather(s_local, 'data', tiled=True),
                jax.lax.all_gather(t_local, 'data', tiled=True))
      size = s_local.shape[0]
      return jax.lax.dynamic_slice_in_dim(rows, jax.lax.axis_index('data') * size, size)
    return per_device(local)

  @jax.jit
  def all_semantics(s, t):
    return {name: (fn(s, t), per_device(fn)(s, t), gathered(fn)(s, t))
            for name, fn in RELATIONAL.items()}

  results = all_semantics(s_sharded, t_sharded)
  for name, fn in RELATIONAL.items():
    global_jit, local, all_gathered = results[name]
    unsharded = fn(s, t)
    np.testing.assert_allclose(global_jit, unsharded, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(all_gathered, unsharded, rtol=1e-5, atol=1e-7)
    shards = [NP_RELATIONAL[name](s[i:i + 2], t[i:i + 2]) for i in range(0, 16, 2)]
    # The per-device loss: mean over the batch = mean of per-shard losses.
    np.testing.assert_allclose(np.mean(local), np.mean(shards), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        local, np.concatenate([fn(s[i:i + 2], t[i:i + 2]) for i in range(0, 16, 2)]),
        rtol=1e-5, atol=1e-7,
    )


def test_nst_is_per_example_under_a_mesh():
  s, t = _normal(30, (8, 2, 2, 3)), _normal(31, (8, 2, 2, 2))
  mesh = _mesh()
  local = jax.jit(jax.shard_map(losses.nst, mesh=mesh, in_specs=(P('data'), P('data')),
                                out_specs=P('data')))(s, t)
  np.testing.assert_allclose(local, losses.nst(s, t), rtol=1e-5, atol=1e-7)


def test_doctests():
  result = doctest.testmod(_feature, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0
  assert result.failed == 0
