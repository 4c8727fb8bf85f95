"""kdjax.parallel on 8 simulated devices: every layout and the pmap path equal one device."""

import chex
from flax import linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from kdjax import losses
from kdjax import metrics as metrics_lib
from kdjax import objective as objective_lib
from kdjax import parallel
from kdjax import step as step_lib
from kdjax import zoo
from multihost_worker import fixed_init

VOCAB, TIME, BATCH, STEPS = 16, 4, 16, 2
STUDENT = zoo.DecoderConfig(
    vocab_size=VOCAB, num_layers=1, hidden=8, num_heads=2, mlp_dim=16, max_len=TIME
)
TEACHER = zoo.DecoderConfig(
    vocab_size=VOCAB, num_layers=1, hidden=16, num_heads=2, mlp_dim=32, max_len=TIME
)

REPLICATED = [('.*', P())]
# Logical rules name every axis DecoderLM uses (TRANSFORMER_LOGICAL_AXES).
FSDP = [('embed', 'fsdp'), ('vocab', None), ('heads', None), ('kv', None),
        ('mlp', None), ('position', None)]
FSDP_TP = [('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'), ('vocab', 'tensor'),
           ('kv', None), ('position', None)]
# Megatron-style tensor parallelism as regex rules on the variables' paths.
TP_REGEX = [
    (r'attention/(query|key|value)$', P(None, 'tensor', None)),
    (r'attention/out$', P('tensor', None, None)),
    (r'mlp/wi$', P(None, 'tensor')),
    (r'mlp/wo$', P('tensor', None)),
    (r'embedding$', P('tensor', None)),
    ('.*', P()),
]

# Activation constraints (nn.with_logical_constraint inside DecoderLM).
ACTIVATIONS = [('batch', 'fsdp'), ('length', None), ('embed', None), ('mlp', 'tensor'),
               ('heads', 'tensor'), ('kv', None), ('vocab', 'tensor')]

# mesh axes, student rules, teacher rules, activation rules
LAYOUTS = {
    'data_parallel': ({'data': 8}, REPLICATED, REPLICATED, None),
    'student_fsdp': ({'data': 2, 'fsdp': 4}, FSDP, REPLICATED, None),
    'teacher_tensor_parallel': ({'data': 4, 'tensor': 2}, REPLICATED, TP_REGEX, None),
    'teacher_fsdp_tensor_parallel': ({'fsdp': 4, 'tensor': 2}, FSDP, FSDP_TP, ACTIVATIONS),
}


def _objective():
  return objective_lib.Objective(
      terms={
          'kd': objective_lib.distill(losses.kl_divergence, temperature=2.0),
          'ce': objective_lib.supervised(),
      },
      weights={'kd': 0.7, 'ce': 0.3},
      metrics={'acc/student': objective_lib.accuracy_metric()},
  )


def _batches():
  """Two batches whose padding is uneven over the devices: rows 0-7 hold one
  real token each, rows 8-15 four (any split into 2, 4 or 8 shards gives
  shards with different token counts)."""
  rng = np.random.default_rng(0)
  mask = np.ones((BATCH, TIME), np.float32)
  mask[: BATCH // 2, 1:] = 0.0
  return [
      {
          'tokens': rng.integers(0, VOCAB, (BATCH, TIME), dtype=np.int32),
          'label': rng.integers(0, VOCAB, (BATCH, TIME), dtype=np.int32),
          'mask': mask,
      }
      for _ in range(STEPS)
  ]


def _init_fns():
  """Fixed-value inits: model.init's random initializers take seconds to compile."""
  return fixed_init(STUDENT, 1.0), fixed_init(TEACHER, 2.0)


OPTIMIZER = optax.sgd(0.5, momentum=0.9)  # stateful: momentum sharded like params


def _student_apply(traces=None):
  """The student's apply; appends to `traces` each time it is traced."""
  apply = zoo.lm_apply(zoo.DecoderLM(STUDENT))

  def counting_apply(*args, **kwargs):
    if traces is not None:
      traces.append(1)
    return apply(*args, **kwargs)

  return counting_apply


def _pure_step(traces=None):
  return step_lib.make_train_step(
      _student_apply(traces), zoo.lm_apply(zoo.DecoderLM(TEACHER)), _objective(), OPTIMIZER)


@pytest.fixture(scope='module')
def reference():
  """Two steps on one device: metrics and the final student params."""
  student_init, teacher_init = _init_fns()
  state = jax.jit(
      lambda: step_lib.init_train_state(nn.meta.unbox(student_init()), OPTIMIZER))()
  teacher = jax.jit(lambda: nn.meta.unbox(teacher_init()))()
  step = jax.jit(_pure_step())
  history = []
  for batch in _batches():
    state, metrics = step(state, teacher, batch)
    history.append(metrics_lib.compute(metrics))
  return history, jax.device_get(state.params)


def _assert_matches(reference, history, params):
  ref_history, ref_params = reference
  for ref, got in zip(ref_history, history):
    assert sorted(ref) == sorted(got)
    for name in ref:
      np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
  chex.assert_trees_all_close(jax.device_get(params), ref_params, atol=1e-5, rtol=1e-5)


def _assert_sharded(tree, shardings):
  for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (leaf.sharding, sharding)


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_layout_equals_one_device(layout, reference):
  axes, student_rules, teacher_rules, activations = LAYOUTS[layout]
  mesh = parallel.make_mesh(axes)
  student_init, teacher_init = _init_fns()
  state, state_shardings = parallel.init_sharded_train_state(
      student_init, OPTIMIZER, student_rules, mesh)
  teacher, teacher_shardings = parallel.init_sharded_variables(teacher_init, teacher_rules, mesh)
  _assert_sharded(state, state_shardings)
  _assert_sharded(teacher, teacher_shardings)
  traces = []
  step = parallel.jit_train_step(
      _pure_step(traces), mesh,
      state_shardings=state_shardings, teacher_shardings=teacher_shardings,
      batch_sharding=parallel.batch_sharding(mesh), logical_axis_rules=activations,
  )
  batches = [parallel.shard_batch(batch, mesh) for batch in _batches()]
  if activations is not None:
    assert 'sharding_constraint' in step.lower(state, teacher, batches[0]).as_text()
  history = []
  for batch in batches:
    state, metrics = step(state, teacher, batch)
    history.append(metrics_lib.compute(metrics))
  assert len(traces) == 1
  _assert_sharded(state, state_shardings)
  _assert_matches(reference, history, state.params)


def test_layouts_shard_what_they_say():
  """Absolute checks of a few shards, independent of param_shardings' own output."""
  _, teacher_init = _init_fns()
  mesh = parallel.make_mesh({'fsdp': 4, 'tensor': 2})
  student = zoo.DecoderLM(STUDENT)  # the real init, as a user calls it
  state, _ = parallel.init_sharded_train_state(
      lambda: student.init(jax.random.PRNGKey(0), jnp.zeros((2, TIME), jnp.int32)),
      OPTIMIZER, FSDP, mesh)
  teacher, _ = parallel.init_sharded_variables(teacher_init, FSDP_TP, mesh)
  embedding = state.params['embedding']  # [vocab, embed] = [16, 8], embed over fsdp
  assert embedding.addressable_shards[0].data.shape == (VOCAB, STUDENT.hidden // 4)
  momentum = state.opt_state[0].trace['embedding']
  assert momentum.sharding.spec == embedding.sharding.spec
  wi = teacher['params']['blocks_0']['mlp']['wi']  # [embed, mlp] = [16, 32]
  assert wi.sharding.spec == P('fsdp', 'tensor')
  assert wi.addressable_shards[0].data.shape == (TEACHER.hidden // 4, TEACHER.mlp_dim // 2)
  assert state.step.sharding.is_fully_replicated

  mesh = parallel.make_mesh({'data': 4, 'tensor': 2})
  teacher, _ = parallel.init_sharded_variables(teacher_init, TP_REGEX, mesh)
  blocks = teacher['params']['blocks_0']
  assert blocks['attention']['query'].sharding.spec == P(None, 'tensor', None)
  assert blocks['attention']['query'].addressable_shards[0].data.shape == (16, 1, 8)
  assert blocks['mlp']['wo'].addressable_shards[0].data.shape == (16, 16)
  assert blocks['mlp_norm']['scale'].sharding.is_fully_replicated


def test_pmap_step_equals_one_device(reference):
  student_init, teacher_init = _init_fns()
  state = jax.jit(
      lambda: step_lib.init_train_state(nn.meta.unbox(student_init()), OPTIMIZER))()
  state = parallel.replicate(state)
  teacher = parallel.replicate(jax.jit(lambda: nn.meta.unbox(teacher_init()))())
  traces = []
  step = parallel.make_pmap_train_step(
      _student_apply(traces), zoo.lm_apply(zoo.DecoderLM(TEACHER)), _objective(), OPTIMIZER)
  history = []
  for batch in _batches():
    state, metrics = step(state, teacher, parallel.split_batch(batch))
    # every device holds the same global (sum, count) pairs
    np.testing.assert_array_equal(metrics.values[0], metrics.values[-1])
    history.append(metrics_lib.compute(parallel.unreplicate(metrics)))
  assert len(traces) == 1
  _assert_matches(reference, history, parallel.unreplicate(state.params))


def test_uneven_mask_needs_psum_of_sums():
  """The batch the equivalence tests use separates the global mean from a
  mean of per-device means, so those tests would catch a pmean of means."""
  values = np.arange(BATCH * TIME, dtype=np.float32).reshape(BATCH, TIME)
  mask = _batches()[0]['mask']
  global_mean = (values * mask).sum() / mask.sum()
  shards = zip(np.split(values, 8), np.split(mask, 8))
  mean_of_means = np.mean([(v * m).sum() / m.sum() for v, m in shards])
  assert abs(global_mean - mean_of_means) > 1.0


# --- shard_map: per-device losses ---------------------------------------------


def _relational(x):
  """Per-example squared distance to the batch mean: depends on the batch."""
  return jnp.sum((x - jnp.mean(x, axis=0, keepdims=True)) ** 2, axis=-1)


def _relational_np(x):
  return np.sum((x - x.mean(axis=0, keepdims=True)) ** 2, axis=-1)


def test_per_device_metric_equals_global():
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 4})
  rng = np.random.default_rng(1)
  student = rng.normal(size=(BATCH, TIME, VOCAB)).astype(np.float32)
  teacher = rng.normal(size=(BATCH, TIME, VOCAB)).astype(np.float32)
  mask = _batches()[0]['mask']
  metric = parallel.per_device_metric(losses.kl_divergence, mesh)

  @jax.jit
  def both(s, t, m, temperature):
    local = metric(s, t, mask=m, temperature=temperature)
    whole = metrics_lib.metric(losses.kl_divergence(s, t, temperature=temperature), m)
    return local, whole

  (total, count), (ref_total, ref_count) = both(student, teacher, mask, 2.0)
  np.testing.assert_allclose(total, ref_total, rtol=1e-5)
  assert float(count) == float(ref_count) == mask.sum()


def test_per_device_is_local_and_gather_batch_is_global():
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 4})
  x = np.random.default_rng(2).normal(size=(BATCH, 3)).astype(np.float32)
  local = jax.jit(parallel.per_device(_relational, mesh))(x)
  expected = np.concatenate([_relational_np(chunk) for chunk in np.split(x, 8)])
  np.testing.assert_allclose(local, expected, rtol=1e-5)

  axes = ('data', 'fsdp')

  def global_rows(shard):
    values = _relational(parallel.gather_batch(shard, axes))
    rows = shard.shape[0]
    return jax.lax.dynamic_slice_in_dim(values, jax.lax.axis_index(axes) * rows, rows)

  spec = P(axes)
  whole = jax.jit(jax.shard_map(global_rows, mesh=mesh, in_specs=spec, out_specs=spec))(x)
  np.testing.assert_allclose(whole, _relational_np(x), rtol=1e-5)


# --- errors --------------------------------------------------------------------


def test_make_mesh_sizes_and_errors():
  mesh = parallel.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 2})
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 1, 'tensor': 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match=r'need 16 devices but jax.device_count\(\)=8'):
    parallel.make_mesh({'data': 8, 'tensor': 2})
  with pytest.raises(ValueError, match=r'multiply to 3, which does not divide .*=8'):
    parallel.make_mesh({'data': -1, 'tensor': 3})
  with pytest.raises(ValueError, match=r'at most one mesh axis may be -1'):
    parallel.make_mesh({'data': -1, 'fsdp': -1})
  with pytest.raises(ValueError, match=r'use 4 of the .*=8 devices'):
    parallel.make_mesh({'data': 4})
  with pytest.raises(ValueError, match=r"mesh axis 'tensor' has size 0"):
    parallel.make_mesh({'data': -1, 'tensor': 0})


def test_rule_errors():
  mesh = parallel.make_mesh({'data': 4, 'tensor': 2})
  student_init, _ = _init_fns()
  abstract = jax.eval_shape(student_init)
  with pytest.raises(ValueError, match=r'no partition rule matches .*params/blocks_0/mlp/wo'):
    parallel.param_shardings(abstract, [('embedding', P()), ('attention', P())], mesh)
  with pytest.raises(ValueError, match=r"no logical axis rule for \['kv', 'mlp'\]"):
    parallel.param_shardings(abstract, [('embed', None), ('vocab', None), ('heads', None)], mesh)
  with pytest.raises(ValueError, match=r'need parameters boxed .* params/embedding \(16, 8\)'):
    parallel.param_shardings(nn.meta.unbox(abstract), FSDP, mesh)
  with pytest.raises(ValueError, match=r'mix'):
    parallel.param_shardings(abstract, [('embed', None), ('.*', P())], mesh)
  with pytest.raises(ValueError, match=r"mesh has no axis \['fsdp'\]"):
    parallel.param_shardings(abstract, FSDP, mesh)
  params = {'w': jnp.zeros((6, 4))}
  with pytest.raises(
      ValueError, match=r"w with shape \(6, 4\): dimension 0 \(size 6\) is not divisible "
      r"by mesh axis 'data' of size 4"):
    parallel.param_shardings(params, [('w', P('data'))], mesh)
  with pytest.raises(ValueError, match=r'rank 2, but its partition spec'):
    parallel.param_shardings(params, [('w', P(None, None, 'data'))], mesh)


def test_batch_errors():
  mesh = parallel.make_mesh({'data': 4, 'tensor': 2})
  batch = {'tokens': np.zeros((6, TIME), np.int32)}
  with pytest.raises(
      ValueError, match=r"'tokens' with shape \(6, 4\): global batch size 6 is not "
      r"divisible by the data axes \{'data': 4\}"):
    parallel.shard_batch(batch, mesh)
  with pytest.raises(ValueError, match=r"data_axes \('fsdp',\) name \['fsdp'\]"):
    parallel.batch_sharding(mesh, 'fsdp')
  with pytest.raises(ValueError, match=r"'tokens' is a scalar"):
    parallel.shard_batch({'tokens': np.int32(3)}, mesh)
  with pytest.raises(ValueError, match=r"'tokens' with shape \(6, 4\).*divisible by the 8"):
    parallel.split_batch(batch)
  sharded = parallel.shard_batch({'tokens': np.zeros((8, TIME), np.int32)}, mesh)
  assert sharded['tokens'].sharding == NamedSharding(mesh, P(('data',)))
