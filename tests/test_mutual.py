"""Deep mutual learning: the step equals a hand-written cohort update, in both orders."""

import chex
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import adapters
from kdjax import losses
from kdjax import objective as objective_lib
from kdjax import step as step_lib

IN, CLASSES, BATCH, LR = 5, 4, 8, 0.5

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
  hidden: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(CLASSES)(jnp.tanh(nn.Dense(self.hidden)(x)))


def _cohort(widths):
  x = jnp.asarray(np.random.default_rng(9).normal(size=(BATCH, IN)), jnp.float32)
  batch = {'x': x, 'label': jnp.arange(BATCH) % CLASSES}
  models = [MLP(w) for w in widths]
  variables = [_init(m, x, i) for i, m in enumerate(models)]
  applies = [adapters.from_linen(m, train_kwarg=None) for m in models]
  return models, variables, applies, batch


def _dml_objective():
  """The paper's loss: CE + mean over peers of KL(p_peer || p_self)."""
  return objective_lib.Objective({
      'ce': objective_lib.supervised(),
      'kl': objective_lib.multi_teacher_distill(losses.kl_divergence, mode='mean_losses'),
  })


def _reference_step(models, params, batch, *, sequential):
  """Algorithm 1 of Zhang et al. (2018) written out with optax.sgd's update."""
  x, labels = batch['x'], batch['label']
  logits = [m.apply({'params': p}, x) for m, p in zip(models, params)]
  new_params = list(params)
  for k, model in enumerate(models):
    peers = [jax.nn.softmax(logits[j]) for j in range(len(models)) if j != k]

    def loss(p, peers=peers, model=model):
      log_q = jax.nn.log_softmax(model.apply({'params': p}, x))
      ce = -jnp.take_along_axis(log_q, labels[:, None], -1)[:, 0]
      kl = sum(jnp.sum(pj * (jnp.log(pj) - log_q), -1) for pj in peers) / len(peers)
      return ce.mean() + kl.mean()

    grads = jax.grad(loss)(params[k])
    new_params[k] = jax.tree.map(lambda p, g: p - LR * g, params[k], grads)
    if sequential:  # the next students see this one's updated predictions
      logits[k] = model.apply({'params': new_params[k]}, x)
  return new_params


def _assert_trees_close(a, b):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)


def test_two_students_simultaneous_equal_hand_written_step():
  models, variables, applies, batch = _cohort((8, 12))
  step = jax.jit(step_lib.make_mutual_train_step(
      applies, _dml_objective(), optax.sgd(LR), sequential=False
  ))
  states = tuple(step_lib.init_train_state(v, optax.sgd(LR), rng=i) for i, v in enumerate(variables))
  new_states, metrics = step(states, batch)
  params = [v['params'] for v in variables]
  expected = jax.jit(lambda p: _reference_step(models, p, batch, sequential=False))(params)
  for state, want in zip(new_states, expected):
    _assert_trees_close(state.params, want)
    assert int(state.step) == 1
  assert sorted(metrics) == sorted(
      f'student_{k}/{name}' for k in range(2)
      for name in ('loss/ce', 'loss/kl', 'loss/total', 'weight/ce', 'weight/kl')
  )


def test_three_students_sequential_one_compile_donated():
  """The paper's order: each student sees the ones before it already updated.

  (Sequential and simultaneous updates differ from the second student on, so
  equality with the sequential reference also tells the two orders apart.)
  """
  models, variables, applies, batch = _cohort((6, 10, 8))
  optimizers = [optax.sgd(LR)] * 3
  step = step_lib.make_mutual_train_step(applies, [_dml_objective()] * 3, optimizers, grad_norm=True)
  step = jax.jit(chex.assert_max_traces(step, n=1), donate_argnums=0)
  params = jax.tree.map(np.array, [v['params'] for v in variables])  # the step donates its own
  states = tuple(step_lib.init_train_state(v, o) for v, o in zip(variables, optimizers))
  reference = jax.jit(lambda p: _reference_step(models, p, batch, sequential=True))
  for _ in range(2):
    old_leaves = jax.tree.leaves([s.params for s in states])
    states, metrics = step(states, batch)
    assert all(leaf.is_deleted() for leaf in old_leaves), 'states were not donated'
    params = reference(params)
  for state, want in zip(states, params):
    _assert_trees_close(state.params, want)
  assert step._cache_size() == 1
  assert 'student_2/optim/grad_norm' in metrics and 'student_2/loss/kl' in metrics


def test_no_student_receives_another_students_gradient():
  """Student 1 learns from labels alone: its update is plain supervised training,
  whatever student 0's KL towards it does."""
  models, variables, applies, batch = _cohort((8, 12))
  ce_only = objective_lib.Objective({'ce': objective_lib.supervised()})
  step = jax.jit(step_lib.make_mutual_train_step(applies, (_dml_objective(), ce_only), optax.sgd(LR)))
  states = tuple(step_lib.init_train_state(v, optax.sgd(LR)) for v in variables)
  new_states, metrics = step(states, batch)
  alone = jax.jit(step_lib.make_train_step(applies[1], None, ce_only, optax.sgd(LR)))
  alone_state, _ = alone(states[1], None, batch)
  _assert_trees_close(new_states[1].params, alone_state.params)
  # ... while student 0 does learn from student 1 (the test would be vacuous otherwise).
  assert float(metrics['student_0/loss/kl'][0]) > 1e-4


def test_errors_name_the_counts():
  _, variables, applies, batch = _cohort((4, 4))
  with pytest.raises(ValueError, match='at least 2 students, got 1'):
    step_lib.make_mutual_train_step(applies[:1], _dml_objective(), optax.sgd(LR))
  with pytest.raises(ValueError, match='objectives has 3 entries but there are 2 students'):
    step_lib.make_mutual_train_step(applies, [_dml_objective()] * 3, optax.sgd(LR))
  with pytest.raises(TypeError, match='optimizers must be one GradientTransformation or a tuple/list of 2'):
    step_lib.make_mutual_train_step(applies, _dml_objective(), 'sgd')
  step = step_lib.make_mutual_train_step(applies, _dml_objective(), optax.sgd(LR))
  state = step_lib.init_train_state(variables[0], optax.sgd(LR))
  with pytest.raises(ValueError, match='states must be a tuple of 2 TrainStates .* got 1'):
    step((state,), batch)
