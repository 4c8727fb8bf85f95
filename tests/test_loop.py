"""Epoch scan == step loop == host loop; fit resumes exactly; writers write what they say."""

import struct

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tensorboardX.proto import event_pb2

from kdjax import adapters
from kdjax import checkpoint
from kdjax import losses
from kdjax import loop
from kdjax import objective as objective_lib
from kdjax import step as step_lib
from kdjax import writers


class _Net(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x, train):
    h = nn.Dropout(0.2, deterministic=not train)(nn.relu(nn.Dense(self.width)(x)))
    return nn.Dense(3)(h)


def _setup(batch_size=8):
  rng = np.random.default_rng(0)
  data = {
      'x': rng.normal(size=(36, 5)).astype(np.float32),
      'label': rng.integers(0, 3, size=36).astype(np.int32),
  }
  teacher, student = _Net(16), _Net(4)
  teacher_vars = teacher.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)), train=False)
  student_vars = student.init(jax.random.PRNGKey(1), jnp.zeros((1, 5)), train=False)
  objective = objective_lib.Objective(
      {'kd': objective_lib.distill(losses.kl_divergence, temperature=2.0),
       'ce': objective_lib.supervised()},
      metrics={'acc/student': objective_lib.accuracy_metric()},
  )
  optimizer = optax.adam(1e-2)
  train_step = step_lib.make_train_step(
      adapters.from_linen(student), adapters.from_linen(teacher), objective, optimizer
  )
  state = step_lib.init_train_state(student_vars, optimizer, rng=3)
  eval_step = jax.jit(step_lib.make_eval_step(adapters.from_linen(student), adapters.from_linen(teacher)))
  return train_step, state, teacher_vars, data, eval_step


def _jitter(batch, key):
  return {**batch, 'x': batch['x'] + 0.1 * jax.random.normal(key, batch['x'].shape)}


def test_epoch_scan_equals_python_loop_of_steps():
  train_step, state, teacher_vars, data, _ = _setup()
  epoch = jax.jit(loop.make_epoch_fn(train_step, batch_size=8, augment=_jitter))
  key = jax.random.PRNGKey(11)
  scanned, metrics = epoch(state, teacher_vars, data, key)

  shuffle_key, augment_key = jax.random.split(key)
  order = np.asarray(jax.random.permutation(shuffle_key, 36))[:32].reshape(4, 8)
  looped, sums = state, None
  jit_step = jax.jit(train_step)
  for i, idx in enumerate(order):
    batch = _jitter({k: v[idx] for k, v in data.items()}, jax.random.fold_in(augment_key, i))
    looped, m = jit_step(looped, teacher_vars, batch)
    sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), scanned, looped)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), metrics, sums)
  assert float(metrics['loss/kd'][1]) == 32.0  # drop_remainder: 4 batches of 8


def test_host_epoch_equals_scanned_epoch():
  """The host loop of jitted steps sees the same batches and noise as the scan."""
  train_step, state, teacher_vars, data, _ = _setup()
  key = jax.random.PRNGKey(11)
  scanned, scan_metrics = jax.jit(
      loop.make_epoch_fn(train_step, batch_size=8, augment=_jitter))(state, teacher_vars, data, key)
  host = loop.compile_epoch_fn(train_step, batch_size=8, augment=_jitter, loop='host')
  looped, host_metrics = host(jax.tree.map(jnp.copy, state), teacher_vars, data, key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               scanned, looped)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               scan_metrics, host_metrics)
  assert float(host_metrics['loss/kd'][1]) == 32.0
  # A second epoch reuses the compiled steps (the state was donated, not aliased).
  again, _ = host(looped, teacher_vars, data, jax.random.PRNGKey(12))
  assert int(again.step) == 8


class _ConvNet(nn.Module):

  @nn.compact
  def __call__(self, x, train):
    del train
    h = nn.Conv(4, (3,))(x[..., None])
    return nn.Dense(3)(h.reshape(h.shape[0], -1))


def test_auto_epoch_loop_is_the_host_loop_for_convolutions_on_cpu():
  train_step, state, teacher_vars, data, _ = _setup()
  mlp = loop.compile_epoch_fn(train_step, batch_size=8)
  mlp(state, teacher_vars, data, jax.random.PRNGKey(0))
  student = _ConvNet()
  variables = student.init(jax.random.PRNGKey(1), jnp.zeros((1, 5)), train=False)
  conv_step = step_lib.make_train_step(
      adapters.from_linen(student), None,
      objective_lib.Objective({'ce': objective_lib.supervised()}), optax.sgd(0.1))
  conv_state = step_lib.init_train_state(variables, optax.sgd(0.1), rng=0)
  conv = loop.compile_epoch_fn(conv_step, batch_size=8)
  assert conv.loop is None  # chosen at the first call
  conv(conv_state, None, data, jax.random.PRNGKey(0))
  on_cpu = jax.default_backend() == 'cpu'
  assert (mlp.loop, conv.loop) == ('scan', 'host' if on_cpu else 'scan')
  # Found inside a jitted step (a nested jaxpr) too.
  assert loop.step_has_convolution(jax.jit(conv_step), conv_state, None,
                                   {k: v[:8] for k, v in data.items()})
  assert not loop.step_has_convolution(jax.jit(train_step), state, teacher_vars,
                                       {k: v[:8] for k, v in data.items()})


def test_compile_epoch_fn_rejects_an_unknown_loop():
  train_step, *_ = _setup()
  with pytest.raises(ValueError, match=r"loop must be one of \('auto', 'scan', 'host'\), got 'while'"):
    loop.compile_epoch_fn(train_step, batch_size=8, loop='while')


def test_epoch_rejects_batch_larger_than_data():
  train_step, state, teacher_vars, data, _ = _setup()
  epoch = loop.make_epoch_fn(train_step, batch_size=64)
  with pytest.raises(ValueError, match=r'batch_size=64 is larger than the data \(36 examples\)'):
    epoch(state, teacher_vars, data, jax.random.PRNGKey(0))


def test_evaluate_counts_every_example_once():
  _, state, teacher_vars, data, eval_step = _setup()
  whole = loop.evaluate(eval_step, state, teacher_vars, data, batch_size=64)
  chunked = loop.evaluate(eval_step, state, teacher_vars, data, batch_size=10)
  for name in whole:
    assert chunked[name] == pytest.approx(whole[name], rel=1e-6)
  logits, _ = adapters.from_linen(_Net(4))(state.variables, data, train=False)
  expected = np.mean(np.argmax(logits.logits, -1) == data['label'])
  assert whole['acc/student'] == pytest.approx(expected)


@pytest.mark.parametrize('epoch_loop', ['scan', 'host'])
def test_fit_resumes_to_the_same_state(tmp_path, epoch_loop):
  train_step, state0, teacher_vars, data, eval_step = _setup()
  epoch = loop.compile_epoch_fn(train_step, batch_size=8, loop=epoch_loop)
  fresh = lambda: jax.tree.map(jnp.copy, state0)  # the epochs donate the state
  straight = loop.fit(epoch, fresh(), teacher_vars, data, num_epochs=6, seed=1, progress=False)

  manager = checkpoint.make_manager(tmp_path / 'ckpt')
  loop.fit(epoch, fresh(), teacher_vars, data, num_epochs=4, seed=1, manager=manager,
           save_every=2, progress=False)
  manager.close()
  manager = checkpoint.make_manager(tmp_path / 'ckpt')
  with writers.MetricWriter(tmp_path / 'run') as writer:
    resumed = loop.fit(
        epoch, fresh(), teacher_vars, data, num_epochs=6, seed=1, manager=manager,
        writer=writer, progress=False,
        evaluate_fn=lambda s: loop.evaluate(eval_step, s, teacher_vars, data),
    )
  manager.close()
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  records = writers.read_jsonl(tmp_path / 'run')
  # Only epochs 5 and 6 ran after the resume, 4 steps each.
  assert [(r['split'], r['step']) for r in records] == [
      ('train', 20), ('eval', 20), ('train', 24), ('eval', 24)]


def _read_events(directory):
  """Parses TensorBoard event files (TFRecord framing) without TensorFlow."""
  scalars = []
  for path in sorted(directory.rglob('events.out.tfevents.*')):
    raw = path.read_bytes()
    offset = 0
    while offset < len(raw):
      (length,) = struct.unpack('<Q', raw[offset : offset + 8])
      payload = raw[offset + 12 : offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        scalars.append((event.step, value.tag, value.simple_value))
  return scalars


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  with writers.MetricWriter(tmp_path) as writer:
    writer.write(1, {'loss/kd': 0.5, 'acc/student': 0.25})
    writer.write(2, {'acc/student': 0.75}, split='eval')
  records = writers.read_jsonl(tmp_path / 'metrics.jsonl')
  assert [(r['step'], r['split']) for r in records] == [(1, 'train'), (2, 'eval')]
  assert records[0]['loss/kd'] == 0.5 and records[1]['acc/student'] == 0.75
  scalars = sorted(_read_events(tmp_path / 'tensorboard'))
  assert scalars == [(1, 'train/acc/student', 0.25), (1, 'train/loss/kd', 0.5),
                     (2, 'eval/acc/student', 0.75)]


def test_evaluate_with_another_mask_key():
  train_step, state, teacher_vars, data, _ = _setup()
  del train_step
  student_apply = adapters.from_linen(_Net(4))
  eval_step = jax.jit(step_lib.make_eval_step(student_apply, mask_key='valid'))
  whole = loop.evaluate(eval_step, state, teacher_vars, data, batch_size=64, mask_key='valid')
  chunked = loop.evaluate(eval_step, state, teacher_vars, data, batch_size=10, mask_key='valid')
  assert chunked['acc/student'] == pytest.approx(whole['acc/student'])


def test_fit_refuses_a_checkpoint_without_epoch(tmp_path):
  train_step, state, teacher_vars, data, _ = _setup()
  manager = checkpoint.make_manager(tmp_path / 'ckpt')
  checkpoint.save(manager, state)
  manager.wait_until_finished()
  epoch = jax.jit(loop.make_epoch_fn(train_step, batch_size=8))
  with pytest.raises(ValueError, match='has no epoch in its data position'):
    loop.fit(epoch, state, teacher_vars, data, num_epochs=1, seed=0, manager=manager,
             progress=False)
  manager.close()


def _recording_epoch(train_step, seen, batch_size=8):
  """An epoch whose steps append the indices of their batch's examples to `seen`."""

  def step(state, teacher_variables, batch):
    jax.debug.callback(lambda i: seen.append(np.asarray(i)), batch['index'], ordered=True)
    return train_step(state, teacher_variables, batch)

  return jax.jit(loop.make_epoch_fn(step, batch_size=batch_size))


def test_fit_shuffles_every_epoch_differently_as_documented():
  train_step, state, teacher_vars, data, _ = _setup()
  data = {**data, 'index': np.arange(36, dtype=np.int32)}
  seen = []
  loop.fit(_recording_epoch(train_step, seen), state, teacher_vars, data, num_epochs=3,
           seed=1, progress=False)
  jax.effects_barrier()
  orders = np.concatenate(seen).reshape(3, 32)  # 3 epochs of 4 batches of 8
  assert all(len(set(order.tolist())) == 32 for order in orders)  # no example twice
  for a in range(3):
    for b in range(a + 1, 3):
      assert not np.array_equal(orders[a], orders[b]), (a, b)
  # The documented key, fold_in(PRNGKey(seed), epoch), is the one each epoch used.
  for epoch, order in enumerate(orders):
    key = jax.random.fold_in(jax.random.PRNGKey(1), epoch)
    shuffle_key, _ = jax.random.split(key)
    np.testing.assert_array_equal(order, np.asarray(jax.random.permutation(shuffle_key, 36))[:32])


def test_fit_refuses_to_resume_another_configs_checkpoint(tmp_path):
  train_step, state, teacher_vars, data, _ = _setup()
  epoch = jax.jit(loop.make_epoch_fn(train_step, batch_size=8))
  config = {'lr': 0.01, 'seed': 1}
  manager = checkpoint.make_manager(tmp_path / 'ckpt')
  loop.fit(epoch, state, teacher_vars, data, num_epochs=2, seed=1, manager=manager,
           config=config, progress=False)
  with pytest.raises(checkpoint.ConfigMismatchError, match=r'changed keys: lr: 0\.01 -> 0\.1'):
    loop.fit(epoch, state, teacher_vars, data, num_epochs=3, seed=1, manager=manager,
             config={'lr': 0.1, 'seed': 1}, progress=False)
  resumed = loop.fit(epoch, state, teacher_vars, data, num_epochs=2, seed=1, manager=manager,
                     config=dict(config), progress=False)
  assert int(resumed.step) == 2 * 4  # restored after two epochs, nothing retrained
  manager.close()
