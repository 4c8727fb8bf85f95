"""Terms that carry state: CRD's banks and a mean teacher through the stock steps."""

from __future__ import annotations

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from kdjax import adapters
from kdjax import Outputs
from kdjax import checkpoint as checkpoint_lib
from kdjax import loop
from kdjax import losses
from kdjax import metrics as metrics_lib
from kdjax import objective as objective_lib
from kdjax import parallel
from kdjax import step as step_lib

IN, HIDDEN, TEACHER_HIDDEN, CLASSES, DIM = 6, 8, 10, 4, 5
NUM_DATA, BATCH, NEGATIVES = 32, 8, 6
TAU, MOMENTUM, CRD_WEIGHT = 0.2, 0.4, 0.8


class Teacher(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(nn.Dense(TEACHER_HIDDEN, name='fc1')(x))
    self.sow('intermediates', 'hidden', h)
    return nn.Dense(CLASSES, name='fc2')(h)


class CRDStudent(nn.Module):
  """A BatchNorm student with CRD's two heads (the teacher-side one reads teacher features)."""

  batch_norm: bool = True

  @nn.compact
  def __call__(self, inputs, train=False):
    x, teacher_features = inputs
    h = nn.Dense(HIDDEN, name='fc1')(x)
    if self.batch_norm:
      h = nn.BatchNorm(use_running_average=not train, momentum=0.5, name='bn')(h)
    h = nn.relu(h)
    self.sow('intermediates', 'crd_student', losses.CRDHead(DIM, name='student_head')(h))
    self.sow('intermediates', 'crd_teacher',
             losses.CRDHead(DIM, name='teacher_head')(teacher_features))
    return nn.Dense(CLASSES, name='fc2')(h)


def _data(seed=0, n=NUM_DATA):
  rng = np.random.default_rng(seed)
  return {'x': rng.standard_normal((n, IN)).astype(np.float32),
          'label': rng.integers(0, CLASSES, n).astype(np.int32),
          'index': np.arange(n, dtype=np.int32)}


def _batches(count, seed=0):
  data = _data(seed)
  rng = np.random.default_rng(seed + 1)
  out = []
  for _ in range(count):
    rows = rng.permutation(NUM_DATA)[:BATCH]
    out.append({k: v[rows] for k, v in data.items()})
  return out


def _models(batch_norm=True):
  teacher = Teacher()
  teacher_variables = teacher.init(jax.random.PRNGKey(0), jnp.zeros((1, IN)))
  student = CRDStudent(batch_norm)
  student_variables = student.init(
      jax.random.PRNGKey(1), (jnp.zeros((1, IN)), jnp.zeros((1, TEACHER_HIDDEN))))
  teacher_apply = adapters.from_linen(teacher, features=('hidden',), train_kwarg=None)
  student_apply = adapters.from_linen(
      student, inputs=lambda b: (b['x'], b['teacher_features']),
      features=('crd_student', 'crd_teacher'))
  return student_apply, teacher_apply, student_variables, teacher_variables


def _student_inputs(batch, teacher):
  return {**batch, 'teacher_features': teacher.feature('hidden')}


def _crd_objective():
  return objective_lib.Objective(
      {'ce': objective_lib.supervised(),
       'crd': objective_lib.crd(NUM_DATA, DIM, num_negatives=NEGATIVES, temperature=TAU,
                                momentum=MOMENTUM)},
      weights={'crd': CRD_WEIGHT})


def reference_crd_step(student_apply, teacher_apply, optimizer):
  """The hand-written CE + CRD step the stateful term replaces (banks passed by hand)."""

  def step(state, memory, teacher_variables, batch):
    teacher, _ = teacher_apply(teacher_variables, batch, train=False)
    teacher = jax.lax.stop_gradient(teacher)
    key = jax.random.fold_in(state.rng, state.step)
    dropout_key, = jax.random.split(key, 1)
    # The stock step's key for its first stateful term (term 'crd' is the second term).
    term_key = jax.random.fold_in(objective_lib.objective_rng(key), 1)
    negatives = losses.crd_negatives(term_key, batch['index'], NUM_DATA, NEGATIVES)

    def loss_fn(params):
      student, new_model_state = student_apply(
          {'params': params, **state.model_state},
          {**batch, 'teacher_features': teacher.feature('hidden')}, train=True,
          rngs={'dropout': dropout_key})
      ce = losses.cross_entropy(student.logits, batch['label'])
      contrast, new_memory = losses.crd(
          student.feature('crd_student'), student.feature('crd_teacher'), memory,
          batch['index'], negatives, temperature=TAU, momentum=MOMENTUM)
      loss = jnp.mean(ce) + CRD_WEIGHT * jnp.mean(contrast)
      return loss, (jnp.mean(contrast), new_model_state, new_memory)

    grads, (contrast, new_model_state, new_memory) = jax.grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              model_state={**state.model_state, **new_model_state},
                              opt_state=opt_state)
    return new_state, new_memory, contrast

  return step


def _assert_trees_close(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw), a, b)


def test_crd_term_through_the_stock_step_equals_the_hand_written_step():
  student_apply, teacher_apply, student_variables, teacher_variables = _models()
  optimizer = optax.sgd(0.1, momentum=0.9)
  objective = _crd_objective()
  state = step_lib.init_train_state(student_variables, optimizer, rng=3, objective=objective)
  assert set(state.objective_state) == {'crd'}
  assert 'batch_stats' in state.model_state
  memory = state.objective_state['crd']
  reference_state = state.replace(objective_state={})
  train_step = jax.jit(step_lib.make_train_step(
      student_apply, teacher_apply, objective, optimizer, student_inputs=_student_inputs))
  reference = jax.jit(reference_crd_step(student_apply, teacher_apply, optimizer))
  for batch in _batches(3):
    state, metrics = train_step(state, teacher_variables, batch)
    reference_state, memory, contrast = reference(reference_state, memory, teacher_variables,
                                                  batch)
    np.testing.assert_allclose(metrics_lib.compute(metrics)['loss/crd'], contrast, rtol=1e-5)
  _assert_trees_close(state.objective_state['crd'], memory, rtol=1e-5, atol=1e-6)
  _assert_trees_close(state.params, reference_state.params, rtol=1e-5, atol=1e-6)
  _assert_trees_close(state.model_state, reference_state.model_state, rtol=1e-5, atol=1e-6)
  # The banks moved and Z was fixed on the first batch.
  assert float(state.objective_state['crd'].z_student) > 0


def test_crd_padding_rows_write_nothing_and_count_nothing():
  student_apply, teacher_apply, student_variables, teacher_variables = _models()
  optimizer = optax.sgd(0.1)
  objective = _crd_objective()
  state = step_lib.init_train_state(student_variables, optimizer, rng=0, objective=objective)
  batch = _batches(1)[0]
  mask = np.arange(BATCH) < BATCH - 3
  train_step = jax.jit(step_lib.make_train_step(
      student_apply, teacher_apply, objective, optimizer, student_inputs=_student_inputs))
  new_state, metrics = train_step(state, teacher_variables, {**batch, 'mask': mask})
  bank = np.asarray(new_state.objective_state['crd'].student)
  old = np.asarray(state.objective_state['crd'].student)
  written = np.flatnonzero(np.any(bank != old, axis=1))
  np.testing.assert_array_equal(np.sort(written), np.sort(batch['index'][mask]))
  assert metrics_lib.compute(metrics)  # finite
  assert metrics['loss/crd'][1] == mask.sum()


def test_crd_under_pmap_keeps_identical_banks_equal_to_the_global_step():
  devices = jax.local_devices()[:4]
  # BatchNorm normalises each device's rows under pmap: compare without it.
  student_apply, teacher_apply, student_variables, teacher_variables = _models(False)
  optimizer = optax.sgd(0.1)
  objective = _crd_objective()
  state = step_lib.init_train_state(student_variables, optimizer, rng=5, objective=objective)
  pmap_step = parallel.make_pmap_train_step(
      student_apply, teacher_apply, objective, optimizer, devices=devices,
      student_inputs=_student_inputs, donate_state=False)
  jit_step = jax.jit(step_lib.make_train_step(
      student_apply, teacher_apply, objective, optimizer, student_inputs=_student_inputs))
  replicated = parallel.replicate(state, devices)
  teacher = parallel.replicate(teacher_variables, devices)
  global_state = state
  for batch in _batches(2, seed=4):
    replicated, pmetrics = pmap_step(replicated, teacher, parallel.split_batch(batch, devices))
    global_state, metrics = jit_step(global_state, teacher_variables, batch)
  banks = jax.device_get(replicated.objective_state['crd'])
  for leaf in jax.tree.leaves(banks):  # the same on every device
    for d in range(1, len(devices)):
      np.testing.assert_array_equal(leaf[d], leaf[0])
  _assert_trees_close(parallel.unreplicate(banks), global_state.objective_state['crd'],
                      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      metrics_lib.compute(parallel.unreplicate(pmetrics))['loss/crd'],
      metrics_lib.compute(metrics)['loss/crd'], rtol=1e-5)
  _assert_trees_close(parallel.unreplicate(replicated.params), global_state.params,
                      rtol=1e-5, atol=1e-6)


class _CountingTerm(objective_lib.StatefulTerm):
  """Counts the examples it has seen: a state that depends on each device's rows."""

  def init(self, rng, variables):
    return jnp.zeros((), jnp.float32)

  def __call__(self, student, teacher, batch, step, *, state, rng, axis_name):
    values = jnp.zeros(student.logits.shape[:1])
    return values, None, state + values.shape[0]


def test_pmap_refuses_a_stateful_term_that_does_not_combine_across_devices():
  student_apply, teacher_apply, _, _ = _models()
  objective = objective_lib.Objective({'ce': objective_lib.supervised(),
                                       'seen': _CountingTerm()})
  with pytest.raises(ValueError, match=r"\['seen'\].*pmap axis 'batch'"):
    parallel.make_pmap_train_step(student_apply, teacher_apply, objective, optax.sgd(0.1))


def test_stateful_objective_errors():
  objective = objective_lib.Objective({'seen': _CountingTerm()})
  outputs = Outputs(jnp.zeros((3, CLASSES)))
  with pytest.raises(TypeError, match=r"\['seen'\] carry state.*objective.apply"):
    objective(outputs, None, {})
  with pytest.raises(ValueError, match=r"\['seen'\].*init_train_state"):
    objective.apply(outputs, None, {}, state={}, rng=jax.random.PRNGKey(0))
  loss, metrics, state = objective.apply(outputs, None, {}, state={'seen': jnp.zeros(())},
                                         rng=jax.random.PRNGKey(0))
  assert float(state['seen']) == 3.0 and float(loss) == 0.0


def test_crd_state_checkpoints_and_resumes_through_fit(tmp_path):
  student_apply, teacher_apply, student_variables, teacher_variables = _models()
  optimizer = optax.sgd(0.05, momentum=0.9)
  objective = _crd_objective()
  data = _data(2)
  epoch_fn = jax.jit(loop.make_epoch_fn(step_lib.make_train_step(
      student_apply, teacher_apply, objective, optimizer, student_inputs=_student_inputs),
      batch_size=BATCH))

  def fresh():
    return step_lib.init_train_state(student_variables, optimizer, rng=1, objective=objective)

  straight = loop.fit(epoch_fn, fresh(), teacher_variables, data, num_epochs=3, seed=0,
                      progress=False)
  manager = checkpoint_lib.make_manager(str(tmp_path / 'ckpt'))
  loop.fit(epoch_fn, fresh(), teacher_variables, data, num_epochs=2, seed=0,
           manager=manager, save_every=1, progress=False)
  manager = checkpoint_lib.make_manager(str(tmp_path / 'ckpt'))
  resumed = loop.fit(epoch_fn, fresh(), teacher_variables, data, num_epochs=3, seed=0,
                     manager=manager, save_every=1, progress=False)
  assert isinstance(resumed.objective_state['crd'], losses.CRDMemory)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               straight, resumed)


class _MeanTeacherStudent(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(HIDDEN, name='fc1')(x)
    h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5, name='bn')(h))
    h = nn.Dropout(0.3, deterministic=not train)(h)
    return nn.Dense(CLASSES, name='fc2')(h)


def test_ema_teacher_equals_a_hand_written_mean_teacher_loop():
  module = _MeanTeacherStudent()
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, IN)))
  apply = adapters.from_linen(module)
  optimizer = optax.adam(1e-2)
  decay = lambda s: jnp.minimum(1.0 - 1.0 / (s + 1.0), 0.9)
  objective = objective_lib.Objective(
      {'ce': objective_lib.supervised(),
       'mt': objective_lib.ema_teacher_distill(apply, losses.kl_divergence, decay=decay,
                                               temperature=2.0)},
      weights={'mt': 0.5})
  state = step_lib.init_train_state(variables, optimizer, rng=7, objective=objective)
  train_step = jax.jit(step_lib.make_train_step(apply, None, objective, optimizer))

  # By hand: the teacher starts as a copy, is averaged after each update.
  params, model_state = variables['params'], {'batch_stats': variables['batch_stats']}
  opt_state = optimizer.init(params)
  ema = jax.tree.map(np.asarray, dict(variables))

  @jax.jit
  def hand_step(params, model_state, opt_state, ema, batch, step):
    key, = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(7), step), 1)
    teacher_logits = jax.lax.stop_gradient(
        module.apply(ema, batch['x'], train=False))

    def loss_fn(p):
      logits, new_state = module.apply({'params': p, **model_state}, batch['x'], train=True,
                                       rngs={'dropout': key}, mutable=['batch_stats'])
      loss = (jnp.mean(losses.cross_entropy(logits, batch['label']))
              + 0.5 * jnp.mean(losses.kl_divergence(logits, teacher_logits, temperature=2.0)))
      return loss, new_state

    grads, new_state = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    d = decay(jnp.asarray(step, jnp.float32))
    new_variables = {'params': params, **new_state}
    ema = jax.tree.map(lambda e, v: d * e + (1 - d) * v, ema, new_variables)
    return params, dict(new_state), opt_state, ema

  for i, batch in enumerate(_batches(4, seed=9)):
    batch = {'x': batch['x'], 'label': batch['label']}
    state, _ = train_step(state, None, batch)
    params, model_state, opt_state, ema = hand_step(params, model_state, opt_state, ema,
                                                     batch, i)
  _assert_trees_close(state.params, params, rtol=1e-5, atol=1e-6)
  _assert_trees_close(state.objective_state['mt'], ema, rtol=1e-5, atol=1e-6)
  # The mean teacher lags the student: it is not the student's weights.
  assert not np.allclose(state.objective_state['mt']['params']['fc1']['kernel'],
                         state.params['fc1']['kernel'])


def test_stateless_objective_keeps_an_empty_state_and_its_call():
  module = Teacher()
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, IN)))
  objective = objective_lib.Objective({'ce': objective_lib.supervised()})
  state = step_lib.init_train_state(variables, optax.sgd(0.1), objective=objective)
  assert state.objective_state == {}
  assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(
      step_lib.init_train_state(variables, optax.sgd(0.1))))
  batch = _batches(1)[0]
  outputs, _ = adapters.from_linen(module, train_kwarg=None)(variables, batch, train=False)
  loss, metrics = objective(outputs, None, batch)
  assert np.isfinite(float(loss)) and 'loss/ce' in metrics


def test_eval_step_reads_but_never_writes_the_objective_state():
  student_apply, teacher_apply, student_variables, teacher_variables = _models()
  objective = _crd_objective()
  state = step_lib.init_train_state(student_variables, optax.sgd(0.1), objective=objective)
  eval_step = jax.jit(step_lib.make_eval_step(student_apply, teacher_apply, objective,
                                              student_inputs=_student_inputs))
  metrics = eval_step(state, teacher_variables, _batches(1)[0])
  assert {'loss/ce', 'loss/crd', 'acc/student', 'acc/teacher'} <= set(metrics)
  assert not any(name.startswith('weight/') for name in metrics)


def test_jit_train_step_shards_the_objective_state():
  student_apply, teacher_apply, student_variables, teacher_variables = _models()
  objective = _crd_objective()
  optimizer = optax.sgd(0.1)
  mesh = parallel.make_mesh({'data': 4, 'fsdp': 2})
  state, shardings = parallel.init_sharded_train_state(
      lambda: student_variables, optimizer, [('.*', P())], mesh, rng=2, objective=objective,
      objective_rules=[('crd/(student|teacher)$', P('fsdp', None)), ('.*', P())])
  assert shardings.objective_state['crd'].student.spec == P('fsdp', None)
  step = parallel.jit_train_step(
      step_lib.make_train_step(student_apply, teacher_apply, objective, optimizer,
                               student_inputs=_student_inputs),
      mesh, state_shardings=shardings,
      teacher_shardings=jax.tree.map(lambda _: jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec()), teacher_variables),
      donate_state=False)
  single = step_lib.init_train_state(student_variables, optimizer, rng=2, objective=objective)
  single_step = jax.jit(step_lib.make_train_step(student_apply, teacher_apply, objective,
                                                 optimizer, student_inputs=_student_inputs))
  batch = _batches(1, seed=3)[0]
  sharded, _ = step(state, teacher_variables, parallel.shard_batch(batch, mesh))
  unsharded, _ = single_step(single, teacher_variables, batch)
  _assert_trees_close(sharded.objective_state, unsharded.objective_state, rtol=1e-5, atol=1e-6)
  _assert_trees_close(sharded.params, unsharded.params, rtol=1e-5, atol=1e-6)


def test_each_student_of_a_mutual_cohort_carries_its_own_objective_state():
  module = _MeanTeacherStudent()
  apply = adapters.from_linen(module)
  optimizer = optax.sgd(0.1)
  objective = objective_lib.Objective(
      {'ce': objective_lib.supervised(),
       'kl': objective_lib.multi_teacher_distill(losses.kl_divergence, mode='mean_losses'),
       'mt': objective_lib.ema_teacher_distill(apply, losses.kl_divergence, decay=0.5)})
  states = tuple(
      step_lib.init_train_state(module.init(jax.random.PRNGKey(i), jnp.zeros((1, IN))),
                                optimizer, rng=i, objective=objective)
      for i in range(2))
  mutual = jax.jit(step_lib.make_mutual_train_step((apply, apply), objective, optimizer))
  batch = {k: v for k, v in _batches(1)[0].items() if k != 'index'}
  new_states, _ = mutual(states, batch)
  for old, new in zip(states, new_states):
    # One EMA step with decay 0.5 from the student's own start.
    expected = jax.tree.map(lambda e, v: 0.5 * e + 0.5 * v, old.variables, new.variables)
    _assert_trees_close(new.objective_state['mt'], expected, rtol=1e-6, atol=1e-7)
  assert not np.allclose(new_states[0].objective_state['mt']['params']['fc1']['kernel'],
                         new_states[1].objective_state['mt']['params']['fc1']['kernel'])
