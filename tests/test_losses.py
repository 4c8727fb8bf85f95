"""Tests for kdjax.losses: properties and equivalences, not golden numbers."""

from __future__ import annotations

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from kdjax import losses
from kdjax.losses import _logit

# name -> (public function, method parameters).
DIVERGENCES = {
    'kl': (losses.kl_divergence, {}),
    'reverse_kl': (losses.reverse_kl_divergence, {}),
    'jsd_0.1': (losses.generalized_jsd, {'beta': 0.1}),
    'jsd_0.5': (losses.generalized_jsd, {'beta': 0.5}),
    'jsd_0.9': (losses.generalized_jsd, {'beta': 0.9}),
    'skew_kl': (losses.skew_kl_divergence, {'alpha': 0.1}),
    'skew_reverse_kl': (losses.skew_reverse_kl_divergence, {'alpha': 0.3}),
    'tvd': (losses.total_variation_distance, {}),
}
NAMES = sorted(DIVERGENCES)
SHAPES = [(7,), (4, 6), (2, 4, 6)]


def _divergence(name):
  fn, params = DIVERGENCES[name]
  return functools.partial(fn, **params)


# Compiling is what costs time here, so the property tests evaluate every
# divergence in one jitted program, compiled once per input signature and
# shared by the tests parametrized over the names. The wrappers pass every
# argument explicitly (and `where` as an array) so that signatures repeat.


@functools.partial(jax.jit, static_argnums=(4,))
def _all_divergences_jit(student, teacher, temperature, where, axis):
  return {
      name: _divergence(name)(
          student, teacher, temperature=temperature, where=where, axis=axis
      )
      for name in NAMES
  }


def _all_divergences(student, teacher, temperature=1.0, where=None, axis=-1):
  if where is None:
    where = np.ones(np.shape(student), bool)
  return _all_divergences_jit(student, teacher, temperature, where, axis)


@jax.jit
def _all_grads_jit(student, teacher, temperature, where):
  """name -> (gradient w.r.t. the student, gradient w.r.t. the teacher)."""
  def loss_sum(student, teacher, name):
    return _divergence(name)(
        student, teacher, temperature=temperature, where=where
    ).sum()

  return {
      name: jax.grad(loss_sum, argnums=(0, 1))(student, teacher, name)
      for name in NAMES
  }


def _all_student_grads(student, teacher, temperature=1.0, where=None):
  if where is None:
    where = np.ones(np.shape(student), bool)
  grads = _all_grads_jit(student, teacher, temperature, where)
  return {name: student_grad for name, (student_grad, _) in grads.items()}


def _all_teacher_grads(student, teacher, temperature=1.0, where=None):
  if where is None:
    where = np.ones(np.shape(student), bool)
  grads = _all_grads_jit(student, teacher, temperature, where)
  return {name: teacher_grad for name, (_, teacher_grad) in grads.items()}


# Test data comes from NumPy: building it with jax.random would compile ops
# for every shape, which dominates the run time of this file.


def _logits(seed, shape, scale=2.0, dtype=np.float32):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(dtype)


def _pair(shape, seed=0):
  return _logits(seed, shape), _logits(seed + 1, shape)


def _labels(seed, shape, num_classes):
  return np.random.default_rng(seed).integers(
      0, num_classes, size=shape, dtype=np.int32
  )


# ----------------------------------------------------------------------------
# Independent float64 references, written from the papers' definitions.


def _np_softmax(logits, temperature):
  x = np.asarray(logits, np.float64) / temperature
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _np_kl(p, q):
  """KL(p || q) over the last axis, 0 log 0 = 0."""
  safe_p = np.where(p > 0, p, 1.0)
  safe_q = np.where(p > 0, q, 1.0)
  return np.sum(np.where(p > 0, p * np.log(safe_p / safe_q), 0.0), -1)


def _np_divergence(name, student, teacher, temperature):
  q = _np_softmax(student, temperature)  # student
  p = _np_softmax(teacher, temperature)  # teacher
  if name == 'kl':
    value = _np_kl(p, q)
  elif name == 'reverse_kl':
    value = _np_kl(q, p)
  elif name.startswith('jsd_'):
    beta = float(name.split('_')[1])
    m = beta * p + (1 - beta) * q
    value = beta * _np_kl(p, m) + (1 - beta) * _np_kl(q, m)
  elif name == 'skew_kl':
    value = _np_kl(p, 0.1 * p + 0.9 * q)
  elif name == 'skew_reverse_kl':
    value = _np_kl(q, 0.7 * p + 0.3 * q)
  elif name == 'tvd':
    value = 0.5 * np.abs(p - q).sum(-1)
  else:
    raise KeyError(name)
  return temperature**2 * value


def _np_dkd(student, teacher, labels, temperature):
  q = _np_softmax(student, temperature)
  p = _np_softmax(teacher, temperature)
  one_hot = np.eye(p.shape[-1], dtype=bool)[np.asarray(labels)]
  p_y = np.sum(np.where(one_hot, p, 0), -1)
  q_y = np.sum(np.where(one_hot, q, 0), -1)
  tckd = _np_kl(np.stack([p_y, 1 - p_y], -1), np.stack([q_y, 1 - q_y], -1))
  p_hat = np.where(one_hot, 0, p) / (1 - p_y)[..., None]
  q_hat = np.where(one_hot, 0, q) / (1 - q_y)[..., None]
  nckd = _np_kl(p_hat, q_hat)
  return temperature**2 * tckd, temperature**2 * nckd, p_y


# ----------------------------------------------------------------------------
# Divergences: properties.


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('name', NAMES)
def test_nonnegative_zero_at_equality_and_numpy_reference(name, shape):
  student, teacher = _pair(shape, seed=3)
  for temperature in (1.0, 2.5):
    values = _all_divergences(student, teacher, temperature=temperature)[name]
    assert values.shape == shape[:-1]
    assert values.dtype == jnp.float32
    assert np.all(np.asarray(values) > 1e-4)  # random logits differ
    expected = _np_divergence(name, student, teacher, temperature)
    np.testing.assert_allclose(values, expected, rtol=2e-5, atol=2e-6)
    at_equality = _all_divergences(teacher, teacher, temperature=temperature)
    np.testing.assert_allclose(at_equality[name], 0.0, atol=1e-6)


@pytest.mark.parametrize('name', NAMES)
def test_invariant_to_per_row_shift(name):
  student, teacher = _pair((2, 4, 6))
  shift = _logits(9, (2, 4, 1), scale=10.0)
  expected = _all_divergences(student, teacher)[name]
  for shifted_student, shifted_teacher in (
      (student + shift, teacher),
      (student, teacher - shift),
  ):
    np.testing.assert_allclose(
        _all_divergences(shifted_student, shifted_teacher)[name],
        expected,
        atol=1e-5,
    )


@pytest.mark.parametrize('name', NAMES)
def test_where_equals_slicing(name):
  student, teacher = _pair((2, 4, 6))
  keep = np.array([0, 2, 3, 5])
  where = np.isin(np.arange(6), keep)  # [classes], broadcast to the logits
  np.testing.assert_allclose(
      _all_divergences(student, teacher, where=where, temperature=1.5)[name],
      _all_divergences(
          student[..., keep], teacher[..., keep], temperature=1.5
      )[name],
      rtol=1e-5,
      atol=1e-6,
  )
  # A mask that differs per row (4 classes kept in each), row by row.
  student, teacher = student[0], teacher[0]
  where = np.array(
      [[1, 1, 1, 1, 0, 0], [0, 1, 0, 1, 1, 1], [1, 0, 1, 0, 1, 1],
       [1, 1, 0, 0, 1, 1]],
      bool,
  )
  np.testing.assert_allclose(
      _all_divergences(student, teacher, where=where)[name],
      _all_divergences(
          student[where].reshape(4, 4), teacher[where].reshape(4, 4)
      )[name],
      rtol=1e-5,
      atol=1e-6,
  )


@pytest.mark.parametrize('name', NAMES)
def test_fully_masked_row_is_zero_with_finite_grads(name):
  student, teacher = _pair((4, 6))
  where = np.ones((4, 6), bool)
  where[1] = False
  values = np.asarray(_all_divergences(student, teacher, where=where)[name])
  assert values[1] == 0.0
  grads = np.asarray(_all_student_grads(student, teacher, where=where)[name])
  assert np.all(np.isfinite(grads))
  np.testing.assert_array_equal(grads[1], 0.0)


@pytest.mark.parametrize('name', NAMES)
def test_jit_vmap_and_axis_agree_with_eager(name):
  fn = _divergence(name)
  student, teacher = _pair((2, 4, 6))
  eager = _all_divergences(student, teacher, temperature=3.0)[name]
  np.testing.assert_allclose(
      fn(student, teacher, temperature=3.0), eager, rtol=1e-5, atol=1e-6
  )
  vmapped = jax.vmap(jax.vmap(functools.partial(fn, temperature=3.0)))(
      student, teacher
  )
  np.testing.assert_allclose(vmapped, eager, rtol=1e-5, atol=1e-6)
  moved = _all_divergences(
      np.moveaxis(student, -1, 0),
      np.moveaxis(teacher, -1, 0),
      temperature=3.0,
      axis=0,
  )
  np.testing.assert_allclose(moved[name], eager, rtol=1e-5, atol=1e-6)


def test_check_grads():
  student, teacher = _pair((2, 5))
  with jax.enable_x64(True):
    teacher = teacher.astype(np.float64)
    values = _all_divergences(student.astype(np.float64), teacher)
    assert all(v.dtype == jnp.float64 for v in values.values())
    check_grads(
        lambda s: _all_divergences(s, teacher, temperature=1.7),
        (student.astype(np.float64),),
        order=1,
        modes=['rev'],
    )


def test_teacher_gets_no_gradient():
  student, teacher = _pair((4, 6))
  for name, grads in _all_teacher_grads(student, teacher).items():
    np.testing.assert_array_equal(grads, 0.0, err_msg=name)


def test_forward_kl_gradient_closed_form():
  # d/ds T² KL(p || softmax(s / T)) = T² * (q - p) / T = T * (q - p).
  student, teacher = _pair((4, 6))
  for temperature in (1.0, 4.0):
    grads = _all_student_grads(student, teacher, temperature=temperature)['kl']
    expected = temperature * (
        jax.nn.softmax(student / temperature)
        - jax.nn.softmax(teacher / temperature)
    )
    np.testing.assert_allclose(grads, expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_inputs_are_computed_in_float32():
  student, teacher = _pair((4, 6))
  values = losses.kl_divergence(
      student.astype(jnp.bfloat16), teacher.astype(jnp.bfloat16)
  )
  assert values.dtype == jnp.float32
  expected = losses.kl_divergence(
      student.astype(jnp.bfloat16).astype(jnp.float32),
      teacher.astype(jnp.bfloat16).astype(jnp.float32),
  )
  np.testing.assert_allclose(values, expected, rtol=1e-6)


# ----------------------------------------------------------------------------
# Method parameters: limits.


def test_generalized_jsd_end_points_are_forward_and_reverse_kl():
  student, teacher = _pair((4, 6))
  kl = losses.kl_divergence(student, teacher, temperature=2.0)
  rkl = losses.reverse_kl_divergence(student, teacher, temperature=2.0)
  jsd = functools.partial(losses.generalized_jsd, temperature=2.0)
  np.testing.assert_allclose(jsd(student, teacher, beta=0.0), kl, rtol=1e-6)
  np.testing.assert_allclose(jsd(student, teacher, beta=1.0), rkl, rtol=1e-6)
  # The end points are the limits of the scaled formula.
  eps = 1e-3
  np.testing.assert_allclose(
      jsd(student, teacher, beta=eps) / eps, kl, rtol=2e-2
  )
  np.testing.assert_allclose(
      jsd(student, teacher, beta=1 - eps) / eps, rkl, rtol=2e-2
  )
  # A traced beta takes the same branches.
  traced = jax.jit(lambda s, t, b: jsd(s, t, beta=b))
  np.testing.assert_allclose(traced(student, teacher, 0.0), kl, rtol=1e-6)
  np.testing.assert_allclose(traced(student, teacher, 1.0), rkl, rtol=1e-6)


def test_generalized_jsd_half_is_symmetric():
  student, teacher = _pair((4, 6))
  np.testing.assert_allclose(
      losses.generalized_jsd(student, teacher),
      losses.generalized_jsd(teacher, student),
      rtol=1e-5,
  )


def test_skew_end_points():
  student, teacher = _pair((4, 6))
  np.testing.assert_allclose(
      losses.skew_kl_divergence(student, teacher, alpha=0.0),
      losses.kl_divergence(student, teacher),
      rtol=1e-6,
  )
  np.testing.assert_allclose(
      losses.skew_reverse_kl_divergence(student, teacher, alpha=0.0),
      losses.reverse_kl_divergence(student, teacher),
      rtol=1e-6,
  )
  for fn in (losses.skew_kl_divergence, losses.skew_reverse_kl_divergence):
    np.testing.assert_allclose(fn(student, teacher, alpha=1.0), 0.0, atol=1e-6)


# ----------------------------------------------------------------------------
# Decoupled KD.


@jax.jit
def _label_losses_jit(student, teacher, labels, temperature, where):
  tckd, nckd, p_y = losses.dkd_terms(
      student, teacher, labels, temperature=temperature, where=where
  )
  return {
      'tckd': tckd,
      'nckd': nckd,
      'p_y': p_y,
      'dkd': losses.decoupled_kd(
          student, teacher, labels, alpha=0.5, beta=8.0,
          temperature=temperature, where=where,
      ),
      'kl': losses.kl_divergence(
          student, teacher, temperature=temperature, where=where
      ),
      'ce': losses.cross_entropy(student, labels, where=where),
      'ce_smooth': losses.cross_entropy(
          student, labels, where=where, label_smoothing=0.2
      ),
  }


def _label_losses(student, teacher, labels, temperature=1.0, where=None):
  """DKD and cross entropy in one program (see `_all_divergences`)."""
  if where is None:
    where = np.ones(np.shape(student), bool)
  return _label_losses_jit(student, teacher, labels, temperature, where)


@jax.jit
def _label_losses_student_grads(student, teacher, labels, where):
  def total(student):
    values = _label_losses_jit(student, teacher, labels, 2.0, where)
    return sum(values[k].sum() for k in ('dkd', 'tckd', 'nckd', 'ce_smooth'))

  return jax.grad(total)(student)


@pytest.mark.parametrize('shape', [(4, 6), (2, 4, 6)])
def test_dkd_identity_and_numpy_reference(shape):
  student, teacher = _pair(shape)
  labels = _labels(5, shape[:-1], shape[-1])
  for temperature in (1.0, 4.0):
    values = _label_losses(student, teacher, labels, temperature)
    # KD = TCKD + (1 - p_y) NCKD (Zhao et al. 2022), all terms times T².
    np.testing.assert_allclose(
        values['tckd'] + (1 - values['p_y']) * values['nckd'],
        values['kl'],
        rtol=1e-5,
        atol=1e-5,
    )
    tckd, nckd, p_y = _np_dkd(student, teacher, labels, temperature)
    np.testing.assert_allclose(values['tckd'], tckd, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(values['nckd'], nckd, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(values['p_y'], p_y, rtol=1e-5)
    np.testing.assert_allclose(
        values['dkd'], 0.5 * tckd + 8.0 * nckd, rtol=2e-5, atol=1e-4
    )


def test_dkd_eager_matches_jit_and_defaults():
  student, teacher = _pair((4, 6))
  labels = _labels(5, (4,), 6)
  values = _label_losses(student, teacher, labels, 4.0)
  np.testing.assert_allclose(
      losses.decoupled_kd(student, teacher, labels),  # alpha=1, beta=8, T=4
      values['tckd'] + 8.0 * values['nckd'],
      rtol=1e-5,
  )


def test_label_losses_where_equals_slicing():
  student, teacher = _pair((4, 6))
  labels = np.array([0, 3, 5, 0], np.int32)
  keep = np.array([0, 1, 3, 5])
  where = np.broadcast_to(np.isin(np.arange(6), keep), (4, 6))
  masked = _label_losses(student, teacher, labels, 2.0, where)
  sliced = _label_losses(
      student[:, keep], teacher[:, keep], np.searchsorted(keep, labels), 2.0
  )
  for key in masked:
    np.testing.assert_allclose(masked[key], sliced[key], rtol=1e-5, atol=1e-6)


def test_label_losses_fully_masked_row_and_teacher_gradient():
  student, teacher = _pair((4, 6))
  labels = np.array([0, 3, 5, 0], np.int32)
  where = np.ones((4, 6), bool)
  where[1] = False
  values = _label_losses(student, teacher, labels, 2.0, where)
  for key in ('tckd', 'nckd', 'dkd', 'kl', 'ce', 'ce_smooth'):
    assert values[key][1] == 0.0, key
  grads = _label_losses_student_grads(student, teacher, labels, where)
  grads = np.asarray(grads)
  assert np.all(np.isfinite(grads))
  np.testing.assert_array_equal(grads[1], 0.0)
  teacher_grads = jax.jit(
      jax.grad(lambda t: losses.decoupled_kd(student, t, labels).sum())
  )(teacher)
  np.testing.assert_array_equal(teacher_grads, 0.0)


def test_label_losses_check_grads():
  student, teacher = _pair((3, 5))
  labels = np.array([0, 4, 2], np.int32)
  with jax.enable_x64(True):
    teacher = teacher.astype(np.float64)
    check_grads(
        lambda s: _label_losses(s, teacher, labels, 1.7),
        (student.astype(np.float64),),
        order=1,
        modes=['rev'],
    )


def test_out_of_range_label_under_jit_is_nan():
  student, teacher = _pair((4, 6))
  labels = np.array([1, 9, -1, 0], np.int32)
  values = _label_losses(student, teacher, labels)
  for key in ('tckd', 'nckd', 'p_y', 'dkd', 'ce', 'ce_smooth'):
    in_range = np.isfinite(np.asarray(values[key]))
    np.testing.assert_array_equal(in_range, [True, False, False, True])


def test_cross_entropy_matches_optax():
  logits = _logits(0, (2, 4, 6))
  labels = _labels(1, (2, 4), 6)
  values = _label_losses(logits, logits, labels)

  @jax.jit
  def optax_reference(logits, labels):
    targets = optax.smooth_labels(jax.nn.one_hot(labels, 6), 0.2)
    return (
        optax.softmax_cross_entropy_with_integer_labels(logits, labels),
        optax.softmax_cross_entropy(logits, targets),
    )

  ce, ce_smooth = optax_reference(logits, labels)
  np.testing.assert_allclose(values['ce'], ce, rtol=1e-5)
  np.testing.assert_allclose(values['ce_smooth'], ce_smooth, rtol=1e-5)


# ----------------------------------------------------------------------------
# Extreme logits.


def _extreme_pair():
  """[4, 6]: ±1e4 logits, -inf in column 4 of both, row 2 all -inf."""
  signs = np.sign(_logits(0, (4, 6)))
  student = 1e4 * signs
  teacher = 1e4 * np.roll(signs, 1, axis=-1)
  student[3] = _logits(1, (6,))  # an ordinary row
  teacher[3] = _logits(2, (6,))
  student[:, 4] = teacher[:, 4] = -np.inf
  student[2] = teacher[2] = -np.inf
  return student, teacher


def _as_where_mask(logits):
  """-inf entries replaced by a finite value and masked out with `where`."""
  return np.where(np.isinf(logits), 7.0, logits), ~np.isinf(logits)


@pytest.mark.parametrize('name', NAMES)
def test_extreme_logits_give_finite_values_and_grads(name):
  student, teacher = _extreme_pair()
  finite_student, finite_where = _as_where_mask(student)
  finite_teacher, _ = _as_where_mask(teacher)
  for temperature in (1.0, 3.0):
    values = np.asarray(
        _all_divergences(student, teacher, temperature=temperature)[name]
    )
    assert np.all(np.isfinite(values)) and np.all(values >= -1e-6)
    assert values[2] == 0.0
    grads = _all_student_grads(student, teacher, temperature=temperature)[name]
    assert np.all(np.isfinite(grads))
    # A -inf class in both inputs is left out, like a masked class.
    masked = _all_divergences(
        finite_student, finite_teacher, temperature=temperature,
        where=finite_where,
    )[name]
    np.testing.assert_allclose(values, masked, rtol=1e-5)


def test_extreme_logits_label_losses_are_finite():
  student, teacher = _extreme_pair()
  labels = np.array([0, 5, 1, 2], np.int32)  # on finite classes
  where = np.ones((4, 6), bool)
  values = _label_losses(student, teacher, labels, 2.0, where)
  for key, value in values.items():
    assert np.all(np.isfinite(value)), key
  grads = _label_losses_student_grads(student, teacher, labels, where)
  assert np.all(np.isfinite(grads))


# ----------------------------------------------------------------------------
# Bad input: clear errors at trace time, eager and under jit.


def _call(fn, *args, jit=False, **kwargs):
  if jit:
    return jax.jit(lambda *a: fn(*a, **kwargs))(*args)
  return fn(*args, **kwargs)


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize('name', NAMES)
def test_bad_divergence_input(name, jit):
  fn = _divergence(name)
  student, teacher = _pair((2, 3))
  with pytest.raises(
      ValueError,
      match=r'student_logits.*\(2, 3\).*teacher_logits.*\(2, 4\)',
  ):
    _call(fn, student, _logits(0, (2, 4)), jit=jit)
  with pytest.raises(TypeError, match=r'student_logits.*int32.*\(2, 3\)'):
    _call(fn, student.astype(jnp.int32), teacher, jit=jit)
  with pytest.raises(TypeError, match=r'teacher_logits.*int32.*\(2, 3\)'):
    _call(fn, student, teacher.astype(jnp.int32), jit=jit)
  for temperature in (0.0, -1.0):
    with pytest.raises(ValueError, match=r'temperature must be > 0'):
      _call(fn, student, teacher, jit=jit, temperature=temperature)
  with pytest.raises(ValueError, match=r'temperature must be a scalar'):
    _call(fn, student, teacher, jit=jit, temperature=jnp.ones(2))
  with pytest.raises(
      ValueError, match=r'where with shape \(5,\).*student_logits.*\(2, 3\)'
  ):
    _call(fn, student, teacher, jit=jit, where=np.ones(5, bool))
  with pytest.raises(ValueError, match=r'axis=2 .*\(2, 3\)'):
    _call(fn, student, teacher, jit=jit, axis=2)


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize(
    'fn, param',
    [
        (losses.generalized_jsd, 'beta'),
        (losses.skew_kl_divergence, 'alpha'),
        (losses.skew_reverse_kl_divergence, 'alpha'),
    ],
)
def test_method_parameter_out_of_range(fn, param, jit):
  student, teacher = _pair((2, 3))
  for value in (-0.1, 1.5):
    with pytest.raises(ValueError, match=rf'{param} must be in \[0, 1\]'):
      _call(fn, student, teacher, jit=jit, **{param: value})


@pytest.mark.parametrize('jit', [False, True])
def test_bad_label_input(jit):
  student, teacher = _pair((2, 3))
  dkd = functools.partial(_call, losses.decoupled_kd, student, teacher, jit=jit)
  ce = functools.partial(_call, losses.cross_entropy, student, jit=jit)
  for call in (dkd, ce):
    with pytest.raises(TypeError, match=r'labels.*integer.*float32.*\(2,\)'):
      call(np.zeros(2, np.float32))
    with pytest.raises(
        ValueError, match=r'labels.*\(2,\).*labels.shape=\(3,\).*\(2, 3\)'
    ):
      call(np.zeros(3, np.int32))
  with pytest.raises(ValueError, match=r'alpha must be >= 0'):
    dkd(np.zeros(2, np.int32), alpha=-1.0)
  with pytest.raises(ValueError, match=r'label_smoothing must be in \[0, 1\]'):
    ce(np.zeros(2, np.int32), label_smoothing=2.0)
  with pytest.raises(TypeError, match=r'logits.*int32.*\(2, 3\)'):
    _call(
        losses.cross_entropy, student.astype(jnp.int32), np.zeros(2, np.int32)
    )


def test_concrete_labels_out_of_range():
  student, teacher = _pair((2, 3))
  for labels in (np.array([0, 3], np.int32), np.array([-1, 0], np.int32)):
    bad = int(labels[labels != 0][0])
    message = rf'labels must be in \[0, 3\) \(num_classes=3\), got {bad}'
    with pytest.raises(ValueError, match=message):
      losses.cross_entropy(student, labels)
    with pytest.raises(ValueError, match=message):
      losses.decoupled_kd(student, teacher, labels)
    with pytest.raises(ValueError, match=message):
      losses.dkd_terms(student, teacher, labels)


# ----------------------------------------------------------------------------
# Module.


def test_public_api():
  assert sorted(losses.__all__) == sorted(
      name for name in dir(losses) if not name.startswith('_')
  )


def test_doctests():
  result = doctest.testmod(_logit, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0
  assert result.failed == 0


@pytest.mark.parametrize('dtype', [jnp.uint8, jnp.int8, jnp.int16])
def test_narrow_integer_labels_with_many_classes(dtype):
  # A label iota in the labels' dtype would wrap around past 255 classes.
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 300))
  labels = jnp.array([4, 100], dtype)
  wide = losses.cross_entropy(logits, labels.astype(jnp.int32))
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), wide, rtol=1e-6)
  teacher = jax.random.normal(jax.random.PRNGKey(1), (2, 300))
  np.testing.assert_allclose(
      losses.decoupled_kd(logits, teacher, labels),
      losses.decoupled_kd(logits, teacher, labels.astype(jnp.int32)), rtol=1e-6)


def test_label_smoothing_as_constant_array_or_traced_value_agree():
  # A Python number is static in cross_entropy (its 0 skips the smoothing
  # half); an array or a traced schedule value takes the general path. Both
  # must give the same losses and gradients.
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  labels = jnp.asarray([0, 5, 2, 3])
  for smoothing in (0.0, 0.1):
    constant = losses.cross_entropy(logits, labels, label_smoothing=smoothing)
    as_array = losses.cross_entropy(logits, labels, label_smoothing=jnp.float32(smoothing))
    traced = jax.jit(lambda s: losses.cross_entropy(logits, labels, label_smoothing=s))(
        jnp.float32(smoothing))
    np.testing.assert_allclose(as_array, constant, rtol=1e-6)
    np.testing.assert_allclose(traced, constant, rtol=1e-6)
    grad = lambda s: jax.grad(
        lambda x: jnp.sum(losses.cross_entropy(x, labels, label_smoothing=s)))(logits)
    np.testing.assert_allclose(grad(jnp.float32(smoothing)), grad(smoothing), rtol=1e-6,
                               atol=1e-7)


def _awkward_rows():
  """Student and teacher logits [6, 5] covering every -inf case of the losses."""
  rng = np.random.default_rng(3)
  student = rng.normal(size=(6, 5)).astype(np.float32) * 3
  teacher = rng.normal(size=(6, 5)).astype(np.float32) * 3
  student[1, 2] = teacher[1, 2] = -np.inf  # a class left out by both
  student[2, 0] = -np.inf                  # teacher mass where q = 0: +inf
  teacher[3, :] = -np.inf                  # no teacher mass: 0
  student[4, :] = teacher[4, :] = -np.inf  # no class left: 0
  teacher[5, 1], student[5, 1] = -200.0, -np.inf  # p underflows, q = 0: +inf
  return student, teacher


def test_unmasked_fast_paths_equal_the_masked_forms():
  # Without `where`, kl_divergence and cross_entropy (label smoothing 0) take
  # paths with their derivatives written out (custom_jvp); an all-True
  # `where` takes the masked forms differentiated by autodiff. Values and
  # per-row gradients must agree on every -inf case, and stay finite.
  student, teacher = _awkward_rows()
  everything = np.ones_like(student, bool)
  for temperature in (0.5, 2.5):
    fast = lambda s, i=None: losses.kl_divergence(s, teacher, temperature=temperature)
    masked = lambda s: losses.kl_divergence(
        s, teacher, temperature=temperature, where=everything)
    np.testing.assert_array_equal(np.isinf(fast(student)), [0, 0, 1, 0, 0, 1])
    np.testing.assert_allclose(fast(student), masked(student), rtol=1e-6)
    for row in range(len(student)):
      g_fast = jax.grad(lambda s: fast(s)[row])(student)
      g_masked = jax.grad(lambda s: masked(s)[row])(student)
      assert np.isfinite(g_fast).all(), row
      if row in (2, 5):
        # +inf: the fast path gives the cross entropy's gradient T (q - p),
        # the masked form's autodiff the finite terms'; both are finite.
        q = jax.nn.softmax(student[row] / temperature)
        p = jax.nn.softmax(teacher[row] / temperature)
        np.testing.assert_allclose(g_fast[row], temperature * (q - p), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.delete(g_fast, row, 0), 0.0)
      else:
        np.testing.assert_allclose(g_fast, g_masked, rtol=1e-5, atol=1e-6, err_msg=row)
  labels = np.array([0, 2, 1, 3, 4, 1])
  student[0, 0] = -np.inf  # the label's own logit is -inf: +inf
  fast = lambda x: losses.cross_entropy(x, labels)
  masked = lambda x: losses.cross_entropy(x, labels, where=everything)
  np.testing.assert_array_equal(fast(student), masked(student))
  assert fast(student)[0] == np.inf and fast(student)[4] == 0
  for row in range(len(student)):
    g_fast = jax.grad(lambda x: fast(x)[row])(student)
    assert np.isfinite(g_fast).all(), row
    np.testing.assert_allclose(
        g_fast, jax.grad(lambda x: masked(x)[row])(student), rtol=1e-6, atol=1e-7)
  # An out-of-range label under jit: NaN, and no gradient for that row.
  bad = jnp.array([0, 2, 1, 3, 4, 7])
  finite_student = np.nan_to_num(student, neginf=-3.0)
  values = jax.jit(losses.cross_entropy)(finite_student, bad)
  assert np.isnan(values[5]) and np.isfinite(values[:5]).all()
  grads = jax.jit(jax.grad(lambda x, y: jnp.nansum(losses.cross_entropy(x, y))))(
      finite_student, bad)
  np.testing.assert_array_equal(grads[5], 0.0)


def test_unmasked_forward_kl_temperature_and_higher_derivatives():
  # The temperature's derivative (a learnt or adversarial temperature, as in
  # curriculum temperature KD) against central differences in float64, and
  # second-order derivatives of the written-out rule against autodiff.
  student, teacher = _awkward_rows()
  with jax.enable_x64(True):
    for row in (0, 1, 3):  # finite, a class left out by both, no teacher mass
      s, t = student[row:row + 1].astype(np.float64), teacher[row:row + 1].astype(np.float64)
      loss = lambda temperature: losses.kl_divergence(s, t, temperature=temperature)[0]
      for temperature in (0.5, 2.5):
        eps = 1e-5
        numeric = (loss(temperature + eps) - loss(temperature - eps)) / (2 * eps)
        np.testing.assert_allclose(jax.grad(loss)(temperature), numeric, rtol=1e-6,
                                   atol=1e-9, err_msg=row)
    s, t = _pair((3, 5))
    s, t = s.astype(np.float64), t.astype(np.float64)
    check_grads(lambda s, temperature: losses.kl_divergence(s, t, temperature=temperature),
                (s, 1.7), order=2, modes=['fwd', 'rev'])
    check_grads(lambda s: losses.cross_entropy(s, jnp.array([0, 4, 2])), (s,), order=2,
                modes=['fwd', 'rev'])
    everything = np.ones_like(s, bool)
    hvp = lambda f, v: jax.jvp(jax.grad(lambda x: jnp.sum(f(x))), (s,), (v,))[1]
    v = np.random.default_rng(1).normal(size=s.shape)
    np.testing.assert_allclose(
        hvp(lambda x: losses.kl_divergence(x, t, temperature=2.0), v),
        hvp(lambda x: losses.kl_divergence(x, t, temperature=2.0, where=everything), v),
        rtol=1e-10, atol=1e-12)


def test_nan_logits_give_nan_on_every_path():
  # A NaN must show, not be swallowed by the guard of an empty row.
  nan_row = jnp.array([[np.nan, 1.0, 0.5]])
  other = jnp.array([[0.2, 1.0, -1.0]])
  everything = jnp.ones((1, 3), bool)
  for where in (None, everything):
    assert np.isnan(losses.cross_entropy(nan_row, jnp.array([1]), where=where)[0])
    assert np.isnan(losses.kl_divergence(nan_row, other, where=where)[0])
    assert np.isnan(losses.kl_divergence(other, nan_row, where=where)[0])
