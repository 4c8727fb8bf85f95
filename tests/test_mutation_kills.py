"""The mutant list of benchmarks/mutation.py stays valid; tests that kill its survivors."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import Outputs
from kdjax import adapters
from kdjax import checkpoint
from kdjax import loop
from kdjax import losses
from kdjax import metrics as metrics_lib
from kdjax import objective as objective_lib
from kdjax import step as step_lib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'))

import mutation  # noqa: E402


def test_every_mutant_snippet_occurs_exactly_once():
  assert mutation.check_mutants() == []
  assert len(mutation.MUTANTS) >= 60


# ----------------------------------------------------------------------------
# Tests written for mutants of benchmarks/mutation.py that survived the suite.


class _NoiseTerm(objective_lib.StatefulTerm):
  """Values drawn from the term's key; the state records the key's bits."""

  def init(self, rng, variables):
    del rng, variables
    return jnp.zeros((2,), jnp.uint32)

  def __call__(self, student, teacher, batch, step, *, state, rng, axis_name):
    del teacher, batch, step, state, axis_name
    values = jax.random.uniform(rng, student.logits.shape[:1])
    return values, None, jax.random.key_data(rng)


def test_stateful_terms_each_get_their_own_key():
  """Kills objective-stateful-rng: two stateful terms must not share their noise."""
  objective = objective_lib.Objective({'a': _NoiseTerm(), 'b': _NoiseTerm()})
  student = Outputs(logits=jnp.zeros((4, 3)))
  state = objective.init(jax.random.PRNGKey(0), {'params': {}})
  rng = jax.random.PRNGKey(7)
  _, metrics, new_state = objective.apply(student, None, {}, step=0, state=state, rng=rng)
  assert not np.array_equal(new_state['a'], new_state['b'])
  assert metrics_lib.compute(metrics)['loss/a'] != metrics_lib.compute(metrics)['loss/b']
  # Deterministic: the same rng gives the same keys.
  _, _, again = objective.apply(student, None, {}, step=0, state=state, rng=rng)
  np.testing.assert_array_equal(again['a'], new_state['a'])


def _np_kl(student_logits, teacher_logits, temperature):
  """T² KL(softmax(t/T) || softmax(s/T)) per row, in float64 NumPy."""

  def log_softmax(z):
    z = np.float64(z) / temperature
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  log_q, log_p = log_softmax(student_logits), log_softmax(teacher_logits)
  return temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(-1)


def test_train_step_evaluates_weight_and_temperature_schedules_at_the_state_step():
  """Kills objective-schedule-off-by-one, distill-frozen-temperature, step-schedule-step.

  The step's metrics at ``state.step == k`` must hold the weight schedule's
  value at k and the KL at the temperature schedule's value at k.
  """
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 4)).astype(np.float32)
  student_w = rng.normal(size=(4, 5)).astype(np.float32)
  teacher_w = rng.normal(size=(4, 5)).astype(np.float32)
  temperature = optax.linear_schedule(1.0, 4.0, 3)
  weight = optax.linear_schedule(1.0, 0.25, 3)
  objective = objective_lib.Objective(
      {'kd': objective_lib.distill(losses.kl_divergence, temperature=temperature)},
      weights={'kd': weight})
  linear = adapters.from_function(lambda params, inputs: inputs @ params['w'])
  optimizer = optax.sgd(0.0)  # frozen parameters: only the step moves
  step_fn = jax.jit(step_lib.make_train_step(linear, linear, objective, optimizer))
  state = step_lib.init_train_state({'params': {'w': jnp.asarray(student_w)}}, optimizer)
  teacher_variables = {'params': {'w': jnp.asarray(teacher_w)}}
  for k in range(4):
    state, metrics = step_fn(state, teacher_variables, {'x': x})
    means = metrics_lib.compute(metrics)
    expected_kl = _np_kl(x @ student_w, x @ teacher_w, float(temperature(k))).mean()
    np.testing.assert_allclose(means['weight/kd'], float(weight(k)), rtol=1e-6)
    np.testing.assert_allclose(means['loss/kd'], expected_kl, rtol=1e-5)
    np.testing.assert_allclose(means['loss/total'], float(weight(k)) * expected_kl, rtol=1e-5)


@pytest.mark.parametrize('num_examples,batch_size', [(7, 3), (7, 2), (4, 3), (5, 8)])
def test_evaluate_averages_every_example_whatever_the_last_batch(num_examples, batch_size):
  """Kills evaluate-stride: a last batch of one example must count too."""
  values = np.arange(1.0, num_examples + 1, dtype=np.float32) ** 2

  def eval_step(state, teacher_variables, batch):
    del state, teacher_variables
    return {'value': metrics_lib.metric(jnp.asarray(batch['v']), jnp.asarray(batch['mask']))}

  means = loop.evaluate(eval_step, None, None, {'v': values}, batch_size=batch_size)
  np.testing.assert_allclose(means['value'], values.mean(), rtol=1e-6)


def test_a_fully_masked_batch_gives_zero_loss_and_zero_gradients():
  """Kills objective-count-floor: a batch of padding only must not divide 0 by 0."""
  objective = objective_lib.Objective({
      'kd': objective_lib.distill(losses.kl_divergence, temperature=2.0),
      'ce': objective_lib.supervised(),
  })
  teacher = Outputs(logits=jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32))
  batch = {'label': jnp.array([0, 1, 2]), 'mask': jnp.zeros((3,))}

  def loss_fn(logits):
    return objective(Outputs(logits=logits), teacher, batch)[0]

  loss, grads = jax.value_and_grad(loss_fn)(jnp.ones((3, 4)))
  assert float(loss) == 0.0
  np.testing.assert_array_equal(grads, 0.0)


class _Manager:
  """What checkpoint._set_aside uses of an orbax manager: its directory and reload()."""

  def __init__(self, directory):
    self.directory = directory

  def reload(self):
    pass


def test_damaged_copies_of_the_same_step_are_all_kept_apart(tmp_path):
  """Kills checkpoint-aside-collision: a third damaged copy of a step gets its own name."""
  manager = _Manager(tmp_path)
  for life in range(3):
    (tmp_path / '5').mkdir()
    (tmp_path / '5' / 'life').write_text(str(life))
    checkpoint._set_aside(manager, 5)  # pylint: disable=protected-access
  corrupt = tmp_path / checkpoint.CORRUPT_DIR
  assert sorted(p.name for p in corrupt.iterdir()) == ['5', '5.1', '5.2']
  assert [(corrupt / n / 'life').read_text() for n in ('5', '5.1', '5.2')] == ['0', '1', '2']
