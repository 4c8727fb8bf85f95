"""Train/eval steps and adapters: equivalences, one compilation, no teacher gradient."""

import chex
from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import adapters
from kdjax import losses
from kdjax import metrics as metrics_lib
from kdjax import objective as objective_lib
from kdjax import step as step_lib

IN, HIDDEN, CLASSES, BATCH = 6, 16, 4, 12


class LinenMLP(nn.Module):
  hidden: int = HIDDEN

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(self.hidden, name='fc1')(x))
    self.sow('intermediates', 'hidden', h)
    return nn.Dense(CLASSES, name='fc2')(h)


class NnxMLP(nnx.Module):

  def __init__(self, rngs, hidden=HIDDEN):
    self.fc1 = nnx.Linear(IN, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, CLASSES, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.fc1(x))
    self.sow(nnx.Intermediate, 'hidden', h)
    return self.fc2(h)


def plain_mlp(params, x):
  h = jax.nn.relu(x @ params['fc1']['kernel'] + params['fc1']['bias'][None, :])
  return h @ params['fc2']['kernel'] + params['fc2']['bias'][None, :], {'hidden': h}


def _batch(seed=0):
  key = jax.random.PRNGKey(seed)
  return {
      'x': jax.random.normal(key, (BATCH, IN)),
      'label': jax.random.randint(jax.random.fold_in(key, 1), (BATCH,), 0, CLASSES),
  }


def _objective(temperature=2.0):
  return objective_lib.Objective(
      {
          'kd': objective_lib.distill(losses.kl_divergence, temperature=temperature),
          'ce': objective_lib.supervised(),
          'hint': objective_lib.feature(
              lambda s, t: jnp.mean((s - t) ** 2, axis=-1), 'hidden'
          ),
      },
      weights={'ce': 0.5, 'hint': 0.1},
      metrics={'acc/student': objective_lib.accuracy_metric()},
  )


def _linen_teacher():
  teacher = LinenMLP()
  variables = teacher.init(jax.random.PRNGKey(42), jnp.zeros((1, IN)))
  return adapters.from_linen(teacher, features=['hidden'], train_kwarg=None), variables


def test_same_step_with_linen_nnx_and_plain_function():
  """The three adapters of one MLP give the same training trajectory."""
  linen_student = LinenMLP()
  linen_vars = linen_student.init(jax.random.PRNGKey(0), jnp.zeros((1, IN)))
  params = jax.tree.map(np.asarray, linen_vars['params'])

  nnx_model = NnxMLP(nnx.Rngs(0))
  for layer in ('fc1', 'fc2'):
    getattr(nnx_model, layer).kernel[...] = jnp.asarray(params[layer]['kernel'])
    getattr(nnx_model, layer).bias[...] = jnp.asarray(params[layer]['bias'])
  nnx_apply, nnx_vars = adapters.from_nnx(nnx_model, features=['hidden'])

  students = {
      'linen': (adapters.from_linen(linen_student, features=['hidden'], train_kwarg=None), linen_vars),
      'nnx': (nnx_apply, nnx_vars),
      'function': (adapters.from_function(plain_mlp), {'params': params}),
  }
  teacher_apply, teacher_vars = _linen_teacher()
  optimizer = optax.sgd(0.1)
  trajectories = {}
  for name, (apply, variables) in students.items():
    step = jax.jit(step_lib.make_train_step(apply, teacher_apply, _objective(), optimizer))
    state = step_lib.init_train_state(variables, optimizer)
    losses_seen = []
    for i in range(3):
      state, metrics = step(state, teacher_vars, _batch(i))
      losses_seen.append(float(metrics['loss/total'][0]))
    outputs, _ = apply(state.variables, _batch(9), train=False)
    trajectories[name] = (losses_seen, outputs.logits, outputs.features['hidden'])
  for name in ('nnx', 'function'):
    np.testing.assert_allclose(trajectories[name][0], trajectories['linen'][0], rtol=1e-5)
    np.testing.assert_allclose(trajectories[name][1], trajectories['linen'][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trajectories[name][2], trajectories['linen'][2], rtol=1e-5, atol=1e-6)


def test_sgd_step_equals_hand_written_update():
  student = LinenMLP(hidden=8)
  variables = student.init(jax.random.PRNGKey(0), jnp.zeros((1, IN)))
  teacher_apply, teacher_vars = _linen_teacher()
  batch = _batch()
  lr = 0.3
  objective = objective_lib.Objective(
      {'kd': objective_lib.distill(losses.kl_divergence, temperature=3.0), 'ce': objective_lib.supervised()},
      weights={'kd': 0.9, 'ce': 0.1},
  )
  step = step_lib.make_train_step(
      adapters.from_linen(student, train_kwarg=None), teacher_apply, objective, optax.sgd(lr)
  )
  state = step_lib.init_train_state(variables, optax.sgd(lr))
  new_state, _ = step(state, teacher_vars, batch)

  teacher_logits = LinenMLP().apply(teacher_vars, batch['x'])

  def hand_loss(params):
    logits = student.apply({'params': params}, batch['x'])
    t = 3.0
    p_t = jax.nn.softmax(teacher_logits / t)
    kd = t**2 * jnp.sum(p_t * (jnp.log(p_t) - jax.nn.log_softmax(logits / t)), -1)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch['label'][:, None], -1)[:, 0]
    return 0.9 * kd.mean() + 0.1 * ce.mean()

  grads = jax.grad(hand_loss)(variables['params'])
  expected = jax.tree.map(lambda p, g: p - lr * g, variables['params'], grads)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      new_state.params,
      expected,
  )
  assert int(new_state.step) == 1


def test_teacher_gets_no_gradient():
  teacher_apply, teacher_vars = _linen_teacher()
  student = LinenMLP()
  student_vars = student.init(jax.random.PRNGKey(1), jnp.zeros((1, IN)))
  student_apply = adapters.from_linen(student, features=['hidden'], train_kwarg=None)
  objective, batch = _objective(), _batch()

  def loss_wrt_teacher(teacher_variables):
    teacher = step_lib.teacher_outputs(teacher_apply, teacher_variables, batch)
    student_out, _ = student_apply(student_vars, batch, train=True)
    return objective(student_out, teacher, batch)[0]

  grads = jax.grad(loss_wrt_teacher)(teacher_vars)
  for leaf in jax.tree.leaves(grads):
    np.testing.assert_array_equal(leaf, 0.0)


def test_one_compilation_with_changing_temperature_and_donated_state():
  teacher_apply, teacher_vars = _linen_teacher()
  student = LinenMLP()
  variables = student.init(jax.random.PRNGKey(1), jnp.zeros((1, IN)))
  temperature = optax.linear_schedule(1.0, 8.0, 4)
  objective = objective_lib.Objective(
      {'kd': objective_lib.distill(losses.kl_divergence, temperature=temperature)},
      weights={'kd': optax.cosine_decay_schedule(1.0, 4)},
  )
  optimizer = optax.adam(1e-2)
  step = step_lib.make_train_step(
      adapters.from_linen(student, train_kwarg=None), teacher_apply, objective, optimizer
  )
  step = jax.jit(chex.assert_max_traces(step, n=1), donate_argnums=0)
  state = step_lib.init_train_state(variables, optimizer)
  weights = []
  for i in range(5):
    old_leaves = jax.tree.leaves(state.params)
    state, metrics = step(state, teacher_vars, _batch(i))
    assert all(leaf.is_deleted() for leaf in old_leaves), 'state was not donated'
    weights.append(float(metrics['weight/kd'][0]))
  assert len(set(weights)) == 5, weights
  assert step._cache_size() == 1


class BnDropoutNet(nn.Module):

  @nn.compact
  def __call__(self, x, train):
    h = nn.Dense(HIDDEN)(x)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(h)
    h = nn.Dropout(0.5, deterministic=not train)(nn.relu(h))
    return nn.Dense(CLASSES)(h)


def test_batchnorm_and_dropout_student():
  teacher_apply, teacher_vars = _linen_teacher()
  student = BnDropoutNet()
  variables = student.init(jax.random.PRNGKey(3), jnp.zeros((1, IN)), train=False)
  apply = adapters.from_linen(student)
  optimizer = optax.sgd(0.0)  # parameters frozen: only state and rng move.
  objective = objective_lib.Objective({'kd': objective_lib.distill(losses.kl_divergence)})
  step = jax.jit(step_lib.make_train_step(apply, teacher_apply, objective, optimizer))
  state = step_lib.init_train_state(variables, optimizer, rng=5)
  batch = _batch()
  state1, m1 = step(state, teacher_vars, batch)
  state2, m2 = step(state1, teacher_vars, batch)
  # Running statistics are updated.
  before = variables['batch_stats']['BatchNorm_0']['mean']
  after = state1.model_state['batch_stats']['BatchNorm_0']['mean']
  assert not np.allclose(before, after)
  # Dropout masks differ between steps (params frozen, same batch) ...
  assert float(m1['loss/kd'][0]) != float(m2['loss/kd'][0])
  # ... and are reproducible from the same state.
  _, m1_again = step(state, teacher_vars, batch)
  np.testing.assert_array_equal(m1['loss/kd'][0], m1_again['loss/kd'][0])
  # Eval mode is deterministic and uses the running averages.
  eval_step = jax.jit(step_lib.make_eval_step(apply, teacher_apply, objective))
  e1, e2 = eval_step(state2, teacher_vars, batch), eval_step(state2, teacher_vars, batch)
  np.testing.assert_array_equal(e1['loss/kd'][0], e2['loss/kd'][0])


def test_jit_equals_no_jit():
  teacher_apply, teacher_vars = _linen_teacher()
  student = LinenMLP()
  variables = student.init(jax.random.PRNGKey(1), jnp.zeros((1, IN)))
  optimizer = optax.adam(1e-2)
  step = step_lib.make_train_step(
      adapters.from_linen(student, features=['hidden'], train_kwarg=None),
      teacher_apply, _objective(optax.linear_schedule(1.0, 3.0, 3)), optimizer,
  )
  eager = jitted = step_lib.init_train_state(variables, optimizer)
  jit_step = jax.jit(step)
  for i in range(3):
    eager, m_eager = step(eager, teacher_vars, _batch(i))
    jitted, m_jit = jit_step(jitted, teacher_vars, _batch(i))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), eager, jitted)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), m_eager, m_jit)


def test_eval_step_counts_no_padding():
  teacher_apply, teacher_vars = _linen_teacher()
  apply = teacher_apply
  state = step_lib.init_train_state(teacher_vars, optax.sgd(0.1))
  eval_step = jax.jit(step_lib.make_eval_step(apply, teacher_apply))
  batch = _batch()
  full = metrics_lib.compute(eval_step(state, teacher_vars, {k: v[:7] for k, v in batch.items()}))
  padded = eval_step(state, teacher_vars, {**batch, 'mask': jnp.arange(BATCH) < 7})
  assert float(padded['acc/student'][1]) == 7.0
  assert metrics_lib.compute(padded)['acc/student'] == pytest.approx(full['acc/student'])
  assert metrics_lib.compute(padded)['acc/teacher'] == pytest.approx(full['acc/teacher'])


def test_adapter_errors_list_what_exists():
  student = LinenMLP()
  variables = student.init(jax.random.PRNGKey(1), jnp.zeros((1, IN)))
  apply = adapters.from_linen(student, features=['hiden'], train_kwarg=None)
  with pytest.raises(KeyError, match=r"no intermediate \['hiden'\].*\['hidden'\]"):
    apply(variables, _batch(), train=False)
  apply = adapters.from_linen(student, train_kwarg=None, inputs='image')
  with pytest.raises(KeyError, match=r"inputs 'image' is not in the batch; the batch has \['label', 'x'\]"):
    apply(variables, _batch(), train=False)
  with pytest.raises(KeyError, match="must hold 'params'"):
    step_lib.init_train_state({'weights': 1.0}, optax.sgd(0.1))


def test_linen_captures_submodule_outputs():
  student = LinenMLP()
  variables = student.init(jax.random.PRNGKey(1), jnp.zeros((1, IN)))
  apply = adapters.from_linen(
      student, features={'pre': 'fc1/__call__', 'hidden': 'hidden'}, train_kwarg=None
  )
  outputs, state = apply(variables, _batch(), train=False)
  assert state == {}
  params = variables['params']['fc1']
  np.testing.assert_allclose(
      outputs.features['pre'], _batch()['x'] @ params['kernel'] + params['bias'][None, :], rtol=1e-5
  )
  np.testing.assert_allclose(outputs.features['hidden'], jax.nn.relu(outputs.features['pre']))


class NnxBnDropout(nnx.Module):

  def __init__(self, rngs):
    self.fc1 = nnx.Linear(IN, HIDDEN, rngs=rngs)
    self.bn = nnx.BatchNorm(HIDDEN, momentum=0.5, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.fc2 = nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

  def __call__(self, x):
    return self.fc2(self.dropout(nnx.relu(self.bn(self.fc1(x)))))


def test_nnx_student_with_batchnorm_and_dropout():
  teacher_apply, teacher_vars = _linen_teacher()
  apply, variables = adapters.from_nnx(NnxBnDropout(nnx.Rngs(0, dropout=1)))
  optimizer = optax.sgd(0.0)
  objective = objective_lib.Objective({'kd': objective_lib.distill(losses.kl_divergence)})
  step = jax.jit(step_lib.make_train_step(apply, teacher_apply, objective, optimizer))
  state = step_lib.init_train_state(variables, optimizer)
  state1, m1 = step(state, teacher_vars, _batch())
  state2, m2 = step(state1, teacher_vars, _batch())
  before = variables['state']['bn']['mean'][...]
  assert not np.allclose(before, state1.model_state['state']['bn']['mean'][...])
  # The dropout stream advances: same params and batch, different loss.
  assert float(m1['loss/kd'][0]) != float(m2['loss/kd'][0])
  eval_step = jax.jit(step_lib.make_eval_step(apply, teacher_apply, objective))
  e1, e2 = eval_step(state2, teacher_vars, _batch()), eval_step(state2, teacher_vars, _batch())
  np.testing.assert_array_equal(e1['loss/kd'][0], e2['loss/kd'][0])


def test_eval_step_skips_accuracy_of_a_logit_free_apply():
  from kdjax import Outputs  # pylint: disable=g-import-not-at-top

  def student_apply(variables, batch, *, train, rngs=None):
    del train, rngs
    hidden = batch['x'] @ variables['params']['w']
    return Outputs(None, {'hidden': hidden}), {}

  def teacher_apply(variables, batch, *, train, rngs=None):
    del variables, train, rngs
    return Outputs(batch['x']), {}

  state = step_lib.init_train_state({'params': {'w': jnp.eye(3)}}, optax.sgd(0.1))
  batch = {'x': jnp.eye(3), 'label': jnp.arange(3)}
  metrics = step_lib.make_eval_step(student_apply, teacher_apply)(state, {}, batch)
  assert 'acc/student' not in metrics
  np.testing.assert_allclose(metrics_lib.compute(metrics)['acc/teacher'], 1.0)
