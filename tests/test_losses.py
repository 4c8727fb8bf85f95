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

DIVERGENCES = {
    'kl': losses.kl_divergence,
    'reverse_kl': losses.reverse_kl_divergence,
    'jsd_0.5': functools.partial(losses.generalized_jsd, beta=0.5),
    'jsd_0.1': functools.partial(losses.generalized_jsd, beta=0.1),
    'jsd_0.9': functools.partial(losses.generalized_jsd, beta=0.9),
    'skew_kl': functools.partial(losses.skew_kl_divergence, alpha=0.1),
    'skew_reverse_kl': functools.partial(
        losses.skew_reverse_kl_divergence, alpha=0.3
    ),
    'tvd': losses.total_variation_distance,
}
NAMES = sorted(DIVERGENCES)
SHAPES = [(7,), (4, 5), (2, 3, 6)]


@functools.cache
def _jitted(name):
  """The divergence under jit: eager op-by-op dispatch makes tests slow."""
  return jax.jit(DIVERGENCES[name], static_argnames=('axis',))


@functools.cache
def _jitted_student_grad(name):
  def loss_sum(student, teacher, **kwargs):
    return DIVERGENCES[name](student, teacher, **kwargs).sum()

  return jax.jit(jax.grad(loss_sum))


def _logits(seed, shape, scale=2.0, dtype=jnp.float32):
  return (scale * jax.random.normal(jax.random.key(seed), shape)).astype(dtype)


def _pair(shape, seed=0):
  return _logits(seed, shape), _logits(seed + 1, shape)


def _labels(seed, shape, num_classes):
  return jax.random.randint(jax.random.key(seed), shape, 0, num_classes)


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
  fn = _jitted(name)
  student, teacher = _pair(shape, seed=3)
  for temperature in (1.0, 2.5):
    values = fn(student, teacher, temperature=temperature)
    assert values.shape == shape[:-1]
    assert values.dtype == jnp.float32
    assert np.all(np.asarray(values) > 1e-4)  # random logits differ
    expected = _np_divergence(name, student, teacher, temperature)
    np.testing.assert_allclose(values, expected, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(
        fn(teacher, teacher, temperature=temperature), 0.0, atol=1e-6
    )


@pytest.mark.parametrize('name', NAMES)
def test_invariant_to_per_row_shift(name):
  fn = _jitted(name)
  student, teacher = _pair((3, 4, 5))
  shift = 10.0 * jax.random.normal(jax.random.key(9), (3, 4, 1))
  expected = fn(student, teacher)
  np.testing.assert_allclose(fn(student + shift, teacher), expected, atol=1e-5)
  np.testing.assert_allclose(fn(student, teacher - shift), expected, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_where_equals_slicing(name):
  fn = _jitted(name)
  student, teacher = _pair((3, 2, 6))
  keep = np.array([0, 2, 3, 5])
  where = np.isin(np.arange(6), keep)  # [classes], broadcast to the logits
  np.testing.assert_allclose(
      fn(student, teacher, where=where, temperature=1.5),
      fn(student[..., keep], teacher[..., keep], temperature=1.5),
      rtol=1e-5,
      atol=1e-6,
  )
  # A mask that differs per row, against slicing each row.
  student, teacher = student[:, 0], teacher[:, 0]
  where = np.array(
      [[1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 1, 0]], bool
  )
  values = fn(student, teacher, where=where)
  for row in range(3):
    expected = fn(student[row, where[row]], teacher[row, where[row]])
    np.testing.assert_allclose(values[row], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', NAMES)
def test_fully_masked_row_is_zero_with_finite_grads(name):
  student, teacher = _pair((3, 5))
  where = np.ones((3, 5), bool)
  where[1] = False
  values = _jitted(name)(student, teacher, where=where)
  assert values[1] == 0.0
  grads = _jitted_student_grad(name)(student, teacher, where=where)
  assert np.all(np.isfinite(grads))
  np.testing.assert_array_equal(grads[1], 0.0)


@pytest.mark.parametrize('name', NAMES)
def test_jit_vmap_and_axis_agree_with_eager(name):
  fn = DIVERGENCES[name]
  student, teacher = _pair((3, 4, 5))
  eager = fn(student, teacher, temperature=3.0)
  np.testing.assert_allclose(
      _jitted(name)(student, teacher, temperature=jnp.float32(3.0)),
      eager,
      rtol=1e-5,
      atol=1e-6,
  )
  vmapped = jax.jit(
      jax.vmap(jax.vmap(functools.partial(fn, temperature=3.0)))
  )(student, teacher)
  np.testing.assert_allclose(vmapped, eager, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      _jitted(name)(
          jnp.moveaxis(student, -1, 0),
          jnp.moveaxis(teacher, -1, 0),
          temperature=3.0,
          axis=0,
      ),
      eager,
      rtol=1e-5,
      atol=1e-6,
  )


@pytest.mark.parametrize('name', NAMES)
def test_check_grads_and_teacher_stop_gradient(name):
  fn = DIVERGENCES[name]
  with jax.enable_x64(True):
    student, teacher = _pair((2, 5))
    student = student.astype(jnp.float64)
    teacher = teacher.astype(jnp.float64)
    assert fn(student, teacher).dtype == jnp.float64
    check_grads(
        jax.jit(lambda s: fn(s, teacher, temperature=1.7)),
        (student,),
        order=1,
        modes=['rev'],
    )
  student, teacher = _pair((2, 5))
  teacher_grads = jax.jit(jax.grad(lambda t: fn(student, t).sum()))(teacher)
  np.testing.assert_array_equal(teacher_grads, 0.0)


def test_forward_kl_gradient_closed_form():
  # d/ds T² KL(p || softmax(s / T)) = T² * (q - p) / T = T * (q - p).
  student, teacher = _pair((3, 6))
  for temperature in (1.0, 4.0):
    grads = _jitted_student_grad('kl')(
        student, teacher, temperature=temperature
    )
    expected = temperature * (
        jax.nn.softmax(student / temperature)
        - jax.nn.softmax(teacher / temperature)
    )
    np.testing.assert_allclose(grads, expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_inputs_are_computed_in_float32():
  student, teacher = _pair((4, 5))
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
  student, teacher = _pair((4, 5))
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
  student, teacher = _pair((4, 5))
  np.testing.assert_allclose(
      losses.generalized_jsd(student, teacher),
      losses.generalized_jsd(teacher, student),
      rtol=1e-5,
  )


def test_skew_end_points():
  student, teacher = _pair((4, 5))
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


@pytest.mark.parametrize('temperature', [1.0, 4.0])
@pytest.mark.parametrize('shape', [(6, 5), (2, 3, 7)])
def test_dkd_identity(shape, temperature):
  # KD = TCKD + (1 - p_y) NCKD (Zhao et al. 2022), all terms times T².
  student, teacher = _pair(shape)
  labels = _labels(5, shape[:-1], shape[-1])
  tckd, nckd, p_y = losses.dkd_terms(
      student, teacher, labels, temperature=temperature
  )
  kd = losses.kl_divergence(student, teacher, temperature=temperature)
  np.testing.assert_allclose(tckd + (1 - p_y) * nckd, kd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_dkd_matches_numpy_reference(temperature):
  student, teacher = _pair((6, 5))
  labels = _labels(5, (6,), 5)
  tckd, nckd, p_y = losses.dkd_terms(
      student, teacher, labels, temperature=temperature
  )
  ref_tckd, ref_nckd, ref_p_y = _np_dkd(student, teacher, labels, temperature)
  np.testing.assert_allclose(tckd, ref_tckd, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(nckd, ref_nckd, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(p_y, ref_p_y, rtol=1e-5)
  loss = losses.decoupled_kd(
      student, teacher, labels, alpha=0.5, beta=8.0, temperature=temperature
  )
  np.testing.assert_allclose(
      loss, 0.5 * ref_tckd + 8.0 * ref_nckd, rtol=2e-5, atol=2e-6
  )


def test_dkd_where_equals_slicing_and_jit():
  student, teacher = _pair((4, 6))
  labels = jnp.array([0, 3, 1, 0])
  keep = np.array([0, 1, 3, 4])
  where = np.isin(np.arange(6), keep)
  sliced_labels = jnp.searchsorted(jnp.asarray(keep), labels)
  expected = losses.decoupled_kd(
      student[:, keep], teacher[:, keep], sliced_labels
  )
  np.testing.assert_allclose(
      losses.decoupled_kd(student, teacher, labels, where=where),
      expected,
      rtol=1e-5,
  )
  jitted = jax.jit(lambda s, t, y: losses.decoupled_kd(s, t, y, where=where))
  np.testing.assert_allclose(jitted(student, teacher, labels), expected, rtol=1e-5)


def test_dkd_check_grads_and_teacher_stop_gradient():
  labels = jnp.array([0, 4, 2])
  with jax.enable_x64(True):
    student, teacher = _pair((3, 5))
    check_grads(
        jax.jit(
            lambda s: losses.decoupled_kd(s, teacher.astype(jnp.float64), labels)
        ),
        (student.astype(jnp.float64),),
        order=1,
        modes=['rev'],
    )
  teacher_grads = jax.grad(
      lambda t: losses.decoupled_kd(student, t, labels).sum()
  )(teacher)
  np.testing.assert_array_equal(teacher_grads, 0.0)


def test_dkd_out_of_range_label_under_jit_is_nan():
  student, teacher = _pair((2, 4))
  values = jax.jit(losses.decoupled_kd)(student, teacher, jnp.array([1, 9]))
  assert np.isfinite(values[0]) and np.isnan(values[1])


# ----------------------------------------------------------------------------
# Cross entropy.


@pytest.mark.parametrize('label_smoothing', [0.0, 0.2])
@pytest.mark.parametrize('shape', [(6, 5), (2, 3, 7)])
def test_cross_entropy_matches_optax(shape, label_smoothing):
  logits = _logits(0, shape)
  labels = _labels(1, shape[:-1], shape[-1])
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, shape[-1]), label_smoothing
  )
  np.testing.assert_allclose(
      losses.cross_entropy(logits, labels, label_smoothing=label_smoothing),
      optax.softmax_cross_entropy(logits, targets),
      rtol=1e-5,
  )


def test_cross_entropy_where_equals_slicing_and_masked_row():
  logits = _logits(0, (3, 6))
  labels = jnp.array([2, 5, 0])
  keep = np.array([0, 2, 3, 5])
  where = np.broadcast_to(np.isin(np.arange(6), keep), (3, 6)).copy()
  sliced_labels = jnp.searchsorted(jnp.asarray(keep), labels)
  fn = functools.partial(losses.cross_entropy, label_smoothing=0.1)
  np.testing.assert_allclose(
      fn(logits, labels, where=where),
      fn(logits[:, keep], sliced_labels),
      rtol=1e-6,
  )
  where[1] = False
  values = fn(logits, labels, where=where)
  assert values[1] == 0.0
  grads = jax.grad(lambda x: fn(x, labels, where=where).sum())(logits)
  assert np.all(np.isfinite(grads))
  np.testing.assert_array_equal(grads[1], 0.0)


def test_cross_entropy_check_grads_and_jit():
  labels = jnp.array([0, 4, 2])
  with jax.enable_x64(True):
    logits = _logits(0, (3, 5)).astype(jnp.float64)
    check_grads(
        jax.jit(lambda x: losses.cross_entropy(x, labels, label_smoothing=0.1)),
        (logits,),
        order=1,
        modes=['rev'],
    )
  logits = _logits(0, (3, 5))
  np.testing.assert_allclose(
      jax.jit(losses.cross_entropy)(logits, labels),
      losses.cross_entropy(logits, labels),
      rtol=1e-6,
  )


def test_cross_entropy_out_of_range_label_under_jit_is_nan():
  logits = _logits(0, (2, 4))
  values = jax.jit(losses.cross_entropy)(logits, jnp.array([4, 1]))
  assert np.isnan(values[0]) and np.isfinite(values[1])


# ----------------------------------------------------------------------------
# Extreme logits.


def _extreme_pair():
  """±1e4 logits, -inf at the same places in both, one row all -inf."""
  signs = jnp.sign(jax.random.normal(jax.random.key(0), (2, 4, 6)))
  student = 1e4 * signs
  teacher = 1e4 * jnp.roll(signs, 1, axis=-1)
  student = student.at[:, 3, :].set(_logits(1, (2, 6)))  # ordinary logits
  teacher = teacher.at[:, 3, :].set(_logits(2, (2, 6)))
  student = student.at[..., 4].set(-jnp.inf)
  teacher = teacher.at[..., 4].set(-jnp.inf)
  student = student.at[:, 2, :].set(-jnp.inf)
  teacher = teacher.at[:, 2, :].set(-jnp.inf)
  return student, teacher


@pytest.mark.parametrize('name', NAMES)
def test_extreme_logits_give_finite_values_and_grads(name):
  fn = _jitted(name)
  student, teacher = _extreme_pair()
  for temperature in (1.0, 3.0):
    values = fn(student, teacher, temperature=temperature)
    assert np.all(np.isfinite(values)) and np.all(np.asarray(values) >= -1e-6)
    np.testing.assert_array_equal(values[:, 2], 0.0)
    grads = _jitted_student_grad(name)(
        student, teacher, temperature=temperature
    )
    assert np.all(np.isfinite(grads))
    # -inf classes are left out: the value is that of the sliced logits.
    finite = np.array([0, 1, 2, 3, 5])
    np.testing.assert_allclose(
        values[:, 3],
        fn(student[:, 3, finite], teacher[:, 3, finite], temperature=temperature),
        rtol=1e-5,
    )


def test_extreme_logits_label_losses_are_finite():
  student, teacher = _extreme_pair()
  labels = jnp.zeros((2, 4), jnp.int32)  # class 0 is finite everywhere
  for fn in (
      lambda s: losses.decoupled_kd(s, teacher, labels),
      lambda s: jnp.stack(
          losses.dkd_terms(s, teacher, labels, temperature=2.0)
      ),
      lambda s: losses.cross_entropy(s, labels, label_smoothing=0.1),
  ):
    values = fn(student)
    assert np.all(np.isfinite(values))
    grads = jax.grad(lambda s: fn(s).sum())(student)  # pylint: disable=cell-var-from-loop
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
  fn = DIVERGENCES[name]
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
      call(jnp.zeros(2))
    with pytest.raises(
        ValueError, match=r'labels.*\(2,\).*labels.shape=\(3,\).*\(2, 3\)'
    ):
      call(jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match=r'alpha must be >= 0'):
    dkd(jnp.zeros(2, jnp.int32), alpha=-1.0)
  with pytest.raises(ValueError, match=r'label_smoothing must be in \[0, 1\]'):
    ce(jnp.zeros(2, jnp.int32), label_smoothing=2.0)
  with pytest.raises(TypeError, match=r'logits.*int32.*\(2, 3\)'):
    _call(
        losses.cross_entropy, student.astype(jnp.int32), jnp.zeros(2, jnp.int32)
    )


def test_concrete_labels_out_of_range():
  student, teacher = _pair((2, 3))
  for labels in (jnp.array([0, 3]), jnp.array([-1, 0])):
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
