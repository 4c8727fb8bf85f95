"""Checkpoints: resume == uninterrupted, the teacher kept apart."""

from flax import linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import adapters
from kdjax import checkpoint
from kdjax import losses
from kdjax import objective as objective_lib
from kdjax import step as step_lib


class _Net(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x, train):
    x = nn.relu(nn.Dense(self.width)(x))
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Dropout(0.3, deterministic=not train)(x)
    return nn.Dense(5)(x)


def _loader(seed=0):
  rng = np.random.default_rng(0)
  examples = [
      {'x': rng.normal(size=8).astype(np.float32), 'label': np.int32(i % 5)}
      for i in range(40)
  ]
  dataset = grain.MapDataset.source(examples).shuffle(seed=seed).repeat(None).batch(8)
  return iter(dataset)


def _setup():
  teacher, student = _Net(32), _Net(8)
  x = jnp.zeros((1, 8))
  teacher_vars = teacher.init(jax.random.PRNGKey(0), x, train=False)
  student_vars = student.init(jax.random.PRNGKey(1), x, train=False)
  objective = objective_lib.Objective(
      {
          'kd': objective_lib.distill(
              losses.kl_divergence, temperature=optax.linear_schedule(1.0, 4.0, 10)
          ),
          'ce': objective_lib.supervised(),
      },
      weights={'ce': 0.5},
  )
  optimizer = optax.adamw(1e-2)
  step = jax.jit(
      step_lib.make_train_step(
          adapters.from_linen(student), adapters.from_linen(teacher), objective, optimizer
      ),
      donate_argnums=0,
  )
  state = step_lib.init_train_state(student_vars, optimizer, rng=7)
  return step, state, teacher_vars


def _run(step, state, teacher_vars, loader, n):
  history = []
  for _ in range(n):
    state, metrics = step(state, teacher_vars, next(loader))
    history.append(jax.device_get(metrics))
  return state, history


def test_resume_reproduces_uninterrupted_run(tmp_path):
  step, state, teacher_vars = _setup()
  _, uninterrupted = _run(step, state, teacher_vars, _loader(), 12)

  # First life: 5 steps, a checkpoint, then the process "dies".
  step, state, teacher_vars = _setup()
  loader = _loader()
  state, first = _run(step, state, teacher_vars, loader, 5)
  manager = checkpoint.make_manager(tmp_path / 'ckpt')
  assert checkpoint.save(manager, state, data_state=loader.get_state(), metadata={'seed': 7})
  manager.wait_until_finished()
  manager.close()
  del state, loader

  # Second life: everything rebuilt from scratch, then restored.
  step, fresh_state, teacher_vars = _setup()
  manager = checkpoint.make_manager(tmp_path / 'ckpt')
  state, data_state, metadata = checkpoint.restore(manager, fresh_state)
  manager.close()
  assert int(state.step) == 5
  assert metadata == {'seed': 7}
  loader = _loader()
  loader.set_state(data_state)
  _, second = _run(step, state, teacher_vars, loader, 7)

  resumed = first + second
  assert len(resumed) == len(uninterrupted)
  for got, want in zip(resumed, uninterrupted):
    assert sorted(got) == sorted(want)
    for name in want:
      np.testing.assert_array_equal(got[name][0], want[name][0], err_msg=name)
      np.testing.assert_array_equal(got[name][1], want[name][1], err_msg=name)


def test_restore_without_checkpoint_returns_none(tmp_path):
  _, state, _ = _setup()
  manager = checkpoint.make_manager(tmp_path / 'empty')
  assert checkpoint.restore(manager, state) is None
  manager.close()


def test_teacher_is_saved_apart_and_never_with_the_student(tmp_path):
  step, state, teacher_vars = _setup()
  checkpoint.save_teacher(tmp_path / 'teacher', teacher_vars)
  loaded = checkpoint.load_teacher(tmp_path / 'teacher', teacher_vars)
  jax.tree.map(np.testing.assert_array_equal, loaded, teacher_vars)
  with pytest.raises(FileExistsError, match='overwrite=True'):
    checkpoint.save_teacher(tmp_path / 'teacher', teacher_vars)
  doubled = jax.tree.map(lambda x: 2 * x, teacher_vars)
  checkpoint.save_teacher(tmp_path / 'teacher', doubled, overwrite=True)
  jax.tree.map(np.testing.assert_array_equal,
               checkpoint.load_teacher(tmp_path / 'teacher', teacher_vars), doubled)

  state, _ = _run(step, state, loaded, _loader(), 1)
  manager = checkpoint.make_manager(tmp_path / 'student')
  checkpoint.save(manager, state)
  manager.wait_until_finished()
  saved = manager.item_metadata(int(state.step))['state']
  manager.close()
  # The saved arrays are exactly the student's state's, leaf for leaf.
  def shapes(tree):
    return sorted(tuple(leaf.shape) for leaf in jax.tree.leaves(tree))

  assert shapes(saved) == shapes(state)
  teacher_only = set(shapes(teacher_vars)) - set(shapes(state))
  assert teacher_only, 'the test needs teacher arrays the student lacks'
  assert not teacher_only & set(shapes(saved))


def test_save_rejects_teacher_variables(tmp_path):
  _, _, teacher_vars = _setup()
  manager = checkpoint.make_manager(tmp_path / 'student')
  with pytest.raises(TypeError, match='TrainState'):
    checkpoint.save(manager, teacher_vars)
  manager.close()


def test_load_teacher_missing_directory_is_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match='no teacher checkpoint'):
    checkpoint.load_teacher(tmp_path / 'nowhere')


def test_restore_refuses_another_configs_checkpoint_naming_the_keys(tmp_path):
  _, state, _ = _setup()
  config = {'kd': {'temperature': 4.0, 'soft_weight': 0.5}, 'seed': 0}
  manager = checkpoint.make_manager(tmp_path / 'ckpt')
  checkpoint.save(manager, state, data_state={'epoch': 1}, config=config)
  manager.wait_until_finished()
  restored, data_state, _ = checkpoint.restore(manager, state, config=dict(config))
  assert data_state == {'epoch': 1}
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  other = {'kd': {'temperature': 2.0, 'soft_weight': 0.5}, 'seed': 0, 'new_key': True}
  with pytest.raises(checkpoint.ConfigMismatchError,
                     match=r'changed keys: kd\.temperature: 4\.0 -> 2\.0; new_key: \(absent\) -> True'):
    checkpoint.restore(manager, state, config=other)
  assert checkpoint.restore(manager, state) is not None  # no config: nothing checked
  manager.close()


def test_restore_with_a_config_refuses_a_checkpoint_that_records_none(tmp_path):
  _, state, _ = _setup()
  manager = checkpoint.make_manager(tmp_path / 'ckpt')
  checkpoint.save(manager, state)
  manager.wait_until_finished()
  with pytest.raises(checkpoint.ConfigMismatchError, match='records no config'):
    checkpoint.restore(manager, state, config={'seed': 0})
  manager.close()
