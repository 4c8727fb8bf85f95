"""The mutant list of benchmarks/mutation.py stays valid; tests that kill its survivors."""

import json
import pathlib
import shutil
import sys

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import Outputs
from kdjax import adapters
from kdjax import cache
from kdjax import checkpoint
from kdjax import data
from kdjax import generate
from kdjax import loop
from kdjax import losses
from kdjax import metrics as metrics_lib
from kdjax import objective as objective_lib
from kdjax import parallel
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


def test_term_losses_under_a_device_axis_are_the_global_sums_and_counts():
  """Kills objective-term-losses-local: each device must get the global (sum, count)."""
  rng = np.random.default_rng(1)
  student = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  mask = jnp.array([1, 1, 1, 0, 1, 0, 0, 0], jnp.float32)  # uneven padding per device
  objective = objective_lib.Objective(
      {'kd': objective_lib.distill(losses.kl_divergence, temperature=2.0)})
  expected, _ = objective.term_losses(Outputs(logits=student), Outputs(logits=teacher),
                                      {'mask': mask})

  def per_device(s, t, m):
    pairs, _ = objective.term_losses(Outputs(logits=s), Outputs(logits=t), {'mask': m},
                                     axis_name='devices')
    return pairs

  pairs = jax.pmap(per_device, axis_name='devices', devices=jax.devices()[:2])(
      student.reshape(2, 4, 5), teacher.reshape(2, 4, 5), mask.reshape(2, 4))
  total, count = pairs['loss/kd']
  np.testing.assert_allclose(total, [expected['loss/kd'][0]] * 2, rtol=1e-5)
  np.testing.assert_array_equal(count, [4.0, 4.0])


class _BatchNormNet(nn.Module):

  @nn.compact
  def __call__(self, x, train):
    h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(nn.Dense(3)(x))
    return nn.Dense(2)(nn.relu(h))


def test_pmap_step_averages_batchnorm_statistics_over_devices():
  """Kills step-no-pmean-model-state: the running mean must be the global batch's."""
  student = _BatchNormNet()
  x = jnp.asarray(np.random.default_rng(2).normal(size=(8, 4)) + np.arange(8)[:, None],
                  jnp.float32)  # the devices' halves have different means
  batch = {'x': x, 'label': jnp.arange(8) % 2}
  variables = student.init(jax.random.PRNGKey(0), x[:1], train=False)
  objective = objective_lib.Objective({'ce': objective_lib.supervised()})
  optimizer = optax.sgd(0.1)
  apply = adapters.from_linen(student)
  state = step_lib.init_train_state(variables, optimizer)
  one_device, _ = jax.jit(step_lib.make_train_step(apply, None, objective, optimizer))(
      state, None, batch)
  devices = jax.devices()[:2]
  pmap_step = parallel.make_pmap_train_step(apply, None, objective, optimizer, devices=devices,
                                            donate_state=False)
  replicated, _ = pmap_step(parallel.replicate(state, devices), parallel.replicate(None, devices),
                            parallel.split_batch(batch, devices))
  stats = replicated.model_state['batch_stats']['BatchNorm_0']
  np.testing.assert_array_equal(stats['mean'][0], stats['mean'][1])
  np.testing.assert_array_equal(stats['var'][0], stats['var'][1])
  np.testing.assert_allclose(stats['mean'][0],
                             one_device.model_state['batch_stats']['BatchNorm_0']['mean'],
                             rtol=1e-5, atol=1e-6)


class _NoiseRecorder(nn.Module):
  """Stores a Bernoulli draw of its dropout key in the 'noise' collection."""

  @nn.compact
  def __call__(self, x, train):
    draw = self.variable('noise', 'draw', jnp.zeros, (64,))
    if train:
      draw.value = jax.random.bernoulli(self.make_rng('dropout'), 0.5, (64,)).astype(jnp.float32)
    return nn.Dense(2)(x)


def test_pmap_devices_draw_their_own_dropout_noise():
  """Kills step-device-rng: each device must fold its index into its keys.

  The step averages the model state over devices, so the stored draw is the
  mean of the devices' draws: with distinct keys some entries are 0.5.
  """
  module = _NoiseRecorder()
  x = jnp.ones((4, 3))
  variables = module.init({'params': jax.random.PRNGKey(0)}, x, train=False)
  objective = objective_lib.Objective({'ce': objective_lib.supervised()})
  optimizer = optax.sgd(0.1)
  devices = jax.devices()[:2]
  step = parallel.make_pmap_train_step(adapters.from_linen(module), None, objective, optimizer,
                                       devices=devices)
  state = parallel.replicate(step_lib.init_train_state(variables, optimizer, rng=0), devices)
  state, _ = step(state, parallel.replicate(None, devices),
                  parallel.split_batch({'x': x, 'label': jnp.zeros((4,), jnp.int32)}, devices))
  draw = np.asarray(state.model_state['noise']['draw'][0])
  assert np.any(draw == 0.5), draw


def test_grad_norm_is_the_norm_of_the_loss_gradient():
  """Kills grad-norm-of-updates: with adam the update's norm is not the gradient's."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  labels = jnp.arange(6) % 3
  w = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  objective = objective_lib.Objective({'ce': objective_lib.supervised()})
  optimizer = optax.adam(0.1)
  linear = adapters.from_function(lambda params, inputs: inputs @ params['w'])
  step = jax.jit(step_lib.make_train_step(linear, None, objective, optimizer, grad_norm=True))
  state = step_lib.init_train_state({'params': {'w': w}}, optimizer)
  _, metrics = step(state, None, {'x': x, 'label': labels})

  def mean_cross_entropy(w):
    log_probs = jax.nn.log_softmax(x @ w)
    return -jnp.mean(log_probs[jnp.arange(6), labels])

  expected = float(jnp.linalg.norm(jax.grad(mean_cross_entropy)(w)))
  assert metrics_lib.compute(metrics)['optim/grad_norm'] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('alpha', [0.0, 0.6, 2.0])
def test_gnmt_length_penalty_is_the_formula_of_wu_et_al(alpha):
  """Kills gnmt-penalty: the GNMT length penalty is ``((5 + |Y|) / 6) ** alpha``.

  Wu et al. 2016, "Google's Neural Machine Translation System",
  https://arxiv.org/abs/1609.08144, section 7.
  """
  lengths = np.arange(1, 9)
  expected = ((5.0 + lengths) / 6.0) ** alpha
  penalty = generate.BeamSearch(width=2, alpha=alpha, length_penalty='gnmt').penalty(lengths)
  np.testing.assert_allclose(penalty, expected, rtol=1e-6)


def _table_teacher(variables, batch, *, train, rngs=None):
  del train, rngs
  return Outputs(logits=variables['table'][batch['tokens']]), {}


def test_an_unreadable_record_names_its_own_shard_file(tmp_path):
  """Kills cache-shard-path: example 4 of 3-example shards lives in the second file."""
  rng = np.random.default_rng(0)
  variables = {'table': rng.standard_normal((12, 12)).astype(np.float32)}
  arrays = {'tokens': rng.integers(0, 12, (6, 3)).astype(np.int32),
            'mask': np.ones((6, 3), np.int32)}
  directory = tmp_path / 'cache'
  cache.write_cache(directory, _table_teacher, variables, arrays, k=4, batch_size=6,
                    examples_per_shard=3)
  spec_path = directory / 'cache_spec.json'
  spec = json.loads(spec_path.read_text())
  spec['k'] = 8  # every record now has the wrong size
  spec_path.write_text(json.dumps(spec))
  teacher_cache = cache.TeacherCache(directory)
  with pytest.raises(ValueError, match='teacher_cache-00001-of-00002.*example 4 '):
    teacher_cache[4]  # pylint: disable=pointless-statement
  with pytest.raises(ValueError, match='teacher_cache-00000-of-00002.*example 2 '):
    teacher_cache[2]  # pylint: disable=pointless-statement


def test_uint8_images_are_scaled_by_one_over_255():
  """Kills data-image-scale: 0..255 maps onto [0, 1], 255 to exactly 1."""
  levels = np.array([0, 1, 128, 255], np.uint8)
  source = [{'image': np.full((2, 2, 1), v, np.uint8), 'label': np.int64(i)}
            for i, v in enumerate(levels)]
  loader = data.make_loader(source, batch_size=4, seed=0, num_epochs=1, shuffle=False)
  batch = next(loader)
  assert batch['image'].dtype == np.float32
  expected = (levels.astype(np.float32) / np.float32(255.0))[:, None, None, None]
  np.testing.assert_array_equal(batch['image'], np.broadcast_to(expected, (4, 2, 2, 1)))
  assert batch['image'].max() == 1.0


def test_make_manager_removes_a_half_written_checkpoint(tmp_path):
  """Kills checkpoint-no-cleanup: a leftover ``<step>.orbax-checkpoint-tmp-*`` is removed."""
  optimizer = optax.sgd(0.1)
  state = step_lib.init_train_state({'params': {'w': jnp.ones(3)}}, optimizer)
  manager = checkpoint.make_manager(tmp_path)
  checkpoint.save(manager, state, force=True)
  manager.wait_until_finished()
  manager.close()
  # What a process killed while writing step 1 leaves: a full copy under the temporary name.
  shutil.copytree(tmp_path / '0', tmp_path / '1.orbax-checkpoint-tmp-1234567')
  manager = checkpoint.make_manager(tmp_path)
  try:
    assert sorted(p.name for p in tmp_path.iterdir()) == ['0']
    assert manager.all_steps() == [0]
  finally:
    manager.close()
