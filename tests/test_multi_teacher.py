"""Multi-teacher KD: mixture terms against NumPy, per-teacher terms, the step with a tuple of teachers."""

import chex
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import Outputs
from kdjax import adapters
from kdjax import losses
from kdjax import objective as objective_lib
from kdjax import step as step_lib

IN, CLASSES, BATCH = 5, 4, 6
STEP0 = jnp.asarray(0)


def _values(term, student, teachers, batch=None):
  """The term's values, traced once (eager op-by-op dispatch is slow on CPU)."""
  return jax.jit(lambda s, t, b: term(s, t, b, STEP0)[0])(student, teachers, batch or {})


def _logits(seed, scale=1.0, shape=(BATCH, CLASSES)):
  return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl(p, log_q, temperature):
  """T² sum p (log p - log q), 0 log 0 = 0."""
  safe = np.where(p > 0, p, 1.0)
  return temperature**2 * np.sum(np.where(p > 0, p * (np.log(safe) - log_q), 0.0), -1)


@pytest.mark.parametrize('mode', objective_lib.MULTI_TEACHER_MODES)
def test_one_teacher_equals_plain_distill(mode):
  student, teacher = Outputs(_logits(0)), Outputs(_logits(1, 3.0))
  labels = jnp.arange(BATCH) % CLASSES
  cases = [(losses.kl_divergence, None)]
  if mode == 'mean_probs':  # a label-aware loss against the mixture, too
    cases.append((losses.decoupled_kd, 'label'))
  for loss_fn, label_key in cases:
    plain = objective_lib.distill(loss_fn, temperature=2.5, label_key=label_key)
    multi = objective_lib.multi_teacher_distill(
        loss_fn, temperature=2.5, mode=mode, label_key=label_key
    )
    batch = {'label': labels}
    expected = _values(plain, student, teacher, batch)
    for teachers in ((teacher,), teacher):  # a tuple of one, or a bare Outputs
      assert jax.eval_shape(lambda: multi(student, teachers, batch, STEP0))[1] is None
      values = _values(multi, student, teachers, batch)
      np.testing.assert_allclose(values, expected, rtol=2e-5, atol=1e-6)


def test_mixture_equals_numpy_mean_of_probabilities():
  t = 2.0
  s = _logits(0)
  teachers = [_logits(1, 2.0), _logits(2, 4.0), _logits(3)]
  log_q = _np_log_softmax(np.asarray(s) / t)
  probs = [np.exp(_np_log_softmax(np.asarray(x) / t)) for x in teachers]
  outs = tuple(Outputs(x) for x in teachers)

  equal = objective_lib.multi_teacher_distill(losses.kl_divergence, temperature=t)
  np.testing.assert_allclose(
      _values(equal, Outputs(s), outs), _np_kl(sum(probs) / 3, log_q, t), rtol=1e-5
  )
  weights = [0.2, 0.5, 0.3]
  weighted = objective_lib.multi_teacher_distill(
      losses.kl_divergence, temperature=t, weights=weights
  )
  mixture = sum(w * p for w, p in zip(weights, probs))
  np.testing.assert_allclose(
      _values(weighted, Outputs(s), outs), _np_kl(mixture, log_q, t), rtol=1e-5
  )
  # A zero weight drops that teacher exactly.
  dropped = objective_lib.multi_teacher_distill(
      losses.kl_divergence, temperature=t, weights=[0.0, 1.0, 0.0]
  )
  np.testing.assert_allclose(
      _values(dropped, Outputs(s), outs), _np_kl(probs[1], log_q, t), rtol=1e-5
  )
  # Reverse KL against the mixture: the contract carries over to any divergence.
  reverse = objective_lib.multi_teacher_distill(losses.reverse_kl_divergence, temperature=t)
  q = np.exp(log_q)
  expected = t**2 * np.sum(q * (log_q - np.log(sum(probs) / 3)), -1)
  np.testing.assert_allclose(_values(reverse, Outputs(s), outs), expected, rtol=1e-5)


def test_mean_logits_and_mean_losses_equal_numpy():
  t = 3.0
  s = _logits(0)
  teachers = [_logits(1, 2.0), _logits(2, 4.0)]
  outs = tuple(Outputs(x) for x in teachers)
  w = [0.25, 0.75]
  log_q = _np_log_softmax(np.asarray(s) / t)
  mean_logits = w[0] * np.asarray(teachers[0]) + w[1] * np.asarray(teachers[1])
  term = objective_lib.multi_teacher_distill(
      losses.kl_divergence, temperature=t, weights=w, mode='mean_logits'
  )
  np.testing.assert_allclose(
      _values(term, Outputs(s), outs),
      _np_kl(np.exp(_np_log_softmax(mean_logits / t)), log_q, t), rtol=1e-5,
  )
  term = objective_lib.multi_teacher_distill(
      losses.kl_divergence, temperature=t, weights=w, mode='mean_losses'
  )
  expected = sum(
      wk * _np_kl(np.exp(_np_log_softmax(np.asarray(x) / t)), log_q, t)
      for wk, x in zip(w, teachers)
  )
  np.testing.assert_allclose(_values(term, Outputs(s), outs), expected, rtol=1e-5)


def test_mixture_class_mask_equals_slicing():
  """Classes outside `where` leave every teacher's softmax, as if sliced away."""
  s, teachers = _logits(0, shape=(BATCH, 6)), [_logits(i, 2.0, (BATCH, 6)) for i in (1, 2)]
  keep = np.array([True, False, True, True, False, True])
  masked = objective_lib.multi_teacher_distill(
      losses.kl_divergence, temperature=1.5, where_key='classes'
  )
  sliced = objective_lib.multi_teacher_distill(losses.kl_divergence, temperature=1.5)
  got = _values(masked, Outputs(s), tuple(Outputs(x) for x in teachers), {'classes': keep})
  expected = _values(
      sliced, Outputs(s[:, keep]), tuple(Outputs(x[:, keep]) for x in teachers)
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_per_teacher_terms_sum_equals_hand_written():
  s = _logits(0)
  teachers = [_logits(1, 2.0), _logits(2, 4.0)]
  batch = {'label': jnp.arange(BATCH) % CLASSES}
  objective = objective_lib.Objective(
      {**objective_lib.per_teacher_terms(losses.kl_divergence, 2, temperature=(2.0, 4.0)),
       'ce': objective_lib.supervised()},
      weights={'kd_0': 0.7, 'kd_1': 0.3, 'ce': 0.5},
  )
  total, metrics = jax.jit(lambda *a: objective(*a))(Outputs(s), tuple(Outputs(x) for x in teachers), batch)
  log_q = lambda t: _np_log_softmax(np.asarray(s) / t)
  kd = [
      _np_kl(np.exp(_np_log_softmax(np.asarray(x) / t)), log_q(t), t)
      for x, t in zip(teachers, (2.0, 4.0))
  ]
  ce = -log_q(1.0)[np.arange(BATCH), np.asarray(batch['label'])]
  expected = 0.7 * kd[0].mean() + 0.3 * kd[1].mean() + 0.5 * ce.mean()
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss/kd_1'][0] / metrics['loss/kd_1'][1], kd[1].mean(), rtol=1e-5)


def test_term_errors_name_the_sizes():
  s, outs = Outputs(_logits(0)), (Outputs(_logits(1)), Outputs(_logits(2)))
  term = objective_lib.multi_teacher_distill(losses.kl_divergence, weights=[0.2, 0.3, 0.5])
  with pytest.raises(ValueError, match='weights has length 3 but there are 2 teachers'):
    term(s, outs, {}, STEP0)
  with pytest.raises(ValueError, match=r'weights must be >= 0, got \[-0.5, 1.5\]'):
    objective_lib.multi_teacher_distill(losses.kl_divergence, weights=[-0.5, 1.5])
  with pytest.raises(ValueError, match=r'weights must sum to 1 .* with sum 3'):
    objective_lib.multi_teacher_distill(losses.kl_divergence, weights=[1.0, 2.0])
  with pytest.raises(ValueError, match="mode must be one of .* got 'mean'"):
    objective_lib.multi_teacher_distill(losses.kl_divergence, mode='mean')
  uneven = (Outputs(_logits(1)), Outputs(_logits(2, shape=(BATCH, CLASSES + 1))))
  with pytest.raises(ValueError, match=r'one shape, got shapes \[\(6, 4\), \(6, 5\)\]'):
    objective_lib.multi_teacher_distill(losses.kl_divergence)(s, uneven, {}, STEP0)
  picked = objective_lib.pick_teacher(objective_lib.distill(losses.kl_divergence), 2)
  with pytest.raises(ValueError, match='uses teacher 2 but there are 2 teachers'):
    picked(s, outs, {}, STEP0)
  with pytest.raises(ValueError, match='temperature has length 3 but num_teachers is 2'):
    objective_lib.per_teacher_terms(losses.kl_divergence, 2, temperature=(1.0, 2.0, 3.0))

def _init(model, x, seed):
  """Random variables of `model`'s shapes, drawn with NumPy: an eager linen
  init compiles op by op, which costs seconds on CPU."""
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  shapes = jax.eval_shape(model.init, key, jax.ShapeDtypeStruct(x.shape, x.dtype))
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[0]), s.dtype), shapes
  )



class MLP(nn.Module):
  hidden: int = 8

  @nn.compact
  def __call__(self, x):
    return nn.Dense(CLASSES)(nn.relu(nn.Dense(self.hidden)(x)))


def _models():
  x = jnp.asarray(np.random.default_rng(5).normal(size=(BATCH, IN)), jnp.float32)
  batch = {'x': x, 'label': jnp.arange(BATCH) % CLASSES}
  student = MLP(hidden=4)
  teachers = (MLP(16), MLP(12))
  student_vars = _init(student, x, 0)
  teacher_vars = tuple(_init(m, x, i + 1) for i, m in enumerate(teachers))
  applies = tuple(adapters.from_linen(m, train_kwarg=None) for m in teachers)
  return student, student_vars, teachers, teacher_vars, applies, batch


def test_step_with_two_teachers_equals_hand_written_sgd():
  student, student_vars, teachers, teacher_vars, applies, batch = _models()
  t, lr, w = 2.0, 0.5, (0.3, 0.7)
  objective = objective_lib.Objective({
      'kd': objective_lib.multi_teacher_distill(losses.kl_divergence, temperature=t, weights=w),
      'ce': objective_lib.supervised(),
  })
  step = jax.jit(step_lib.make_train_step(
      adapters.from_linen(student, train_kwarg=None), list(applies), objective, optax.sgd(lr)
  ))
  state = step_lib.init_train_state(student_vars, optax.sgd(lr))
  new_state, metrics = step(state, teacher_vars, batch)
  assert int(new_state.step) == 1 and 'loss/kd' in metrics

  @jax.jit
  def hand_grads(params):
    mixture = sum(
        wk * jax.nn.softmax(m.apply(v, batch['x']) / t) for wk, m, v in zip(w, teachers, teacher_vars)
    )
    return jax.grad(hand_loss)(params, mixture)

  def hand_loss(params, mixture):
    logits = student.apply({'params': params}, batch['x'])
    kd = t**2 * jnp.sum(mixture * (jnp.log(mixture) - jax.nn.log_softmax(logits / t)), -1)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch['label'][:, None], -1)[:, 0]
    return kd.mean() + ce.mean()

  grads = hand_grads(student_vars['params'])
  expected = jax.tree.map(lambda p, g: p - lr * g, student_vars['params'], grads)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_state.params, expected
  )


def test_no_teacher_gets_gradient_and_one_compile():
  student, student_vars, _, teacher_vars, applies, batch = _models()
  student_apply = adapters.from_linen(student, train_kwarg=None)
  objective = objective_lib.Objective(
      {
          'mix': objective_lib.multi_teacher_distill(
              losses.kl_divergence, temperature=optax.linear_schedule(1.0, 4.0, 3)
          ),
          **objective_lib.per_teacher_terms(losses.reverse_kl_divergence, 2),
      },
      weights={'kd_1': optax.linear_schedule(0.0, 1.0, 3)},
  )

  def loss_wrt_teachers(variables):
    teacher = step_lib.teacher_outputs(applies, variables, batch)
    student_out, _ = student_apply(student_vars, batch, train=True)
    return objective(student_out, teacher, batch)[0]

  grads = jax.jit(jax.grad(loss_wrt_teachers))(teacher_vars)
  assert len(jax.tree.leaves(grads)) == len(jax.tree.leaves(teacher_vars))
  for leaf in jax.tree.leaves(grads):
    np.testing.assert_array_equal(leaf, 0.0)

  optimizer = optax.adam(1e-2)
  step = step_lib.make_train_step(student_apply, applies, objective, optimizer)
  step = jax.jit(chex.assert_max_traces(step, n=1), donate_argnums=0)
  state = step_lib.init_train_state(student_vars, optimizer)
  seen = set()
  for _ in range(3):
    state, metrics = step(state, teacher_vars, batch)
    seen.add(float(metrics['weight/kd_1'][0]))
  assert len(seen) == 3 and step._cache_size() == 1

  eval_step = jax.jit(step_lib.make_eval_step(student_apply, applies, objective))
  metrics = eval_step(state, teacher_vars, batch)
  teachers = jax.jit(lambda v: step_lib.teacher_outputs(applies, v, batch))(teacher_vars)
  for i, outputs in enumerate(teachers):
    accuracy = np.mean(np.argmax(outputs.logits, -1) == np.asarray(batch['label']))
    np.testing.assert_allclose(metrics[f'acc/teacher_{i}'][0] / metrics[f'acc/teacher_{i}'][1], accuracy)


def test_step_errors_on_mismatched_teacher_variables():
  student, student_vars, _, teacher_vars, applies, batch = _models()
  objective = objective_lib.Objective({'kd': objective_lib.multi_teacher_distill(losses.kl_divergence)})
  step = step_lib.make_train_step(
      adapters.from_linen(student, train_kwarg=None), applies, objective, optax.sgd(0.1)
  )
  state = step_lib.init_train_state(student_vars, optax.sgd(0.1))
  with pytest.raises(ValueError, match='teacher_variables has 1 entries but there are 2 teacher applies'):
    step(state, teacher_vars[:1], batch)
  with pytest.raises(TypeError, match='must be a tuple or list of 2 variable pytrees.*got dict'):
    step(state, teacher_vars[0], batch)


def test_single_teacher_term_given_several_teachers_names_the_fix():
  logits = jnp.zeros((2, 3))
  term = objective_lib.distill(losses.kl_divergence)
  teachers = (Outputs(logits), Outputs(logits))
  with pytest.raises(TypeError, match='takes one teacher but the step passes 2.*pick_teacher'):
    term(Outputs(logits), teachers, {}, 0)
