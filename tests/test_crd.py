"""Tests for CRD: the NCE loss against NumPy, memory updates, negatives, sharding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from kdjax import losses

NUM_DATA, DIM, BATCH, K = 12, 4, 8, 5
TAU, MOMENTUM = 0.5, 0.3


def _unit(seed, shape):
  x = np.random.default_rng(seed).standard_normal(shape)
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _inputs(seed=0):
  student, teacher = _unit(seed, (BATCH, DIM)), _unit(seed + 1, (BATCH, DIM))
  memory = losses.crd_memory_init(jax.random.PRNGKey(seed), NUM_DATA, DIM)
  indices = np.random.default_rng(seed).permutation(NUM_DATA)[:BATCH].astype(np.int32)
  negatives = losses.crd_negatives(jax.random.PRNGKey(seed + 1), indices, NUM_DATA, K)
  return student, teacher, memory, indices, np.asarray(negatives)


def np_crd(student, teacher, student_bank, teacher_bank, indices, negatives,
           z_student=None, z_teacher=None):
  """The paper's NCE loss with the reference code's Z estimate, in float64."""
  candidates = np.concatenate([indices[:, None], negatives], axis=1)
  noise = negatives.shape[1] / NUM_DATA  # m * P_n with P_n = 1/N

  def side(bank, embedding, z):
    h = np.exp(np.einsum('bkd,bd->bk', np.float64(bank)[candidates], embedding) / TAU)
    if z is None:
      z = h.mean() * NUM_DATA
    h = h / z
    log_d1 = np.log(h[:, 0] / (h[:, 0] + noise + 1e-7))
    log_d0 = np.log(noise / (h[:, 1:] + noise + 1e-7))
    return -(log_d1 + log_d0.sum(axis=1)), z

  student_side, z_s = side(teacher_bank, np.float64(student), z_student)
  teacher_side, z_t = side(student_bank, np.float64(teacher), z_teacher)
  return student_side + teacher_side, z_s, z_t


def np_update(bank, embedding, indices):
  bank = np.array(bank, np.float64)
  rows = MOMENTUM * bank[indices] + (1 - MOMENTUM) * embedding
  bank[indices] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
  return bank


def _crd(student, teacher, memory, indices, negatives, example_mask=None):
  return losses.crd(student, teacher, memory, indices, negatives,
                    temperature=TAU, momentum=MOMENTUM, example_mask=example_mask)


def test_crd_loss_z_and_memory_update_match_numpy():
  student, teacher, memory, indices, negatives = _inputs()
  loss, new_memory = _crd(student, teacher, memory, indices, negatives)
  expected, z_s, z_t = np_crd(student, teacher, memory.student, memory.teacher,
                              indices, negatives)
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  np.testing.assert_allclose([new_memory.z_student, new_memory.z_teacher], [z_s, z_t],
                             rtol=1e-5)
  np.testing.assert_allclose(new_memory.student,
                             np_update(memory.student, student, indices), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new_memory.teacher,
                             np_update(memory.teacher, teacher, indices), rtol=1e-5, atol=1e-6)
  # Rows of examples outside the batch are untouched.
  others = np.setdiff1d(np.arange(NUM_DATA), indices)
  np.testing.assert_array_equal(np.asarray(new_memory.student)[others],
                                np.asarray(memory.student)[others])

  # The second batch keeps Z fixed at the first batch's estimate.
  student2, teacher2 = _unit(7, (BATCH, DIM)), _unit(8, (BATCH, DIM))
  loss2, newer = _crd(student2, teacher2, new_memory, indices, negatives)
  expected2, _, _ = np_crd(student2, teacher2, new_memory.student, new_memory.teacher,
                           indices, negatives, z_s, z_t)
  np.testing.assert_allclose(loss2, expected2, rtol=1e-4)
  np.testing.assert_allclose(newer.z_student, z_s, rtol=1e-5)


def test_crd_padding_neither_scores_nor_updates():
  student, teacher, memory, indices, negatives = _inputs(seed=3)
  where = np.array([True, True, False, True, True, True, False, True])
  loss, new_memory = _crd(student, teacher, memory, indices, negatives, example_mask=where)
  sliced, sliced_memory = _crd(student[where], teacher[where], memory, indices[where],
                               negatives[where])
  np.testing.assert_allclose(np.asarray(loss)[where], sliced, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(loss)[~where], 0.0)
  for field in ('student', 'teacher', 'z_student', 'z_teacher'):
    np.testing.assert_allclose(getattr(new_memory, field), getattr(sliced_memory, field),
                               rtol=1e-6)


def test_crd_negatives_exclude_the_positive():
  indices = np.array([0, 5, 11, 5], np.int32)
  negatives = np.asarray(losses.crd_negatives(jax.random.PRNGKey(0), indices, NUM_DATA, 400))
  assert negatives.shape == (4, 400) and negatives.dtype == np.int32
  assert np.all((negatives >= 0) & (negatives < NUM_DATA))
  for row, index in zip(negatives, indices):
    assert index not in row
    # Every other index is drawn (400 draws over 11 values).
    assert set(row) == set(range(NUM_DATA)) - {index}
  with pytest.raises(ValueError, match=r'indices must be in \[0, 12\)'):
    losses.crd_negatives(jax.random.PRNGKey(0), np.array([12]), NUM_DATA, 3)


def test_crd_gradients():
  student, teacher, memory, indices, negatives = _inputs(seed=5)
  # Z fixed: with an unset Z, finite differences would move the estimate too.
  memory = memory.replace(z_student=jnp.float32(30.0), z_teacher=jnp.float32(40.0))

  @jax.jit
  def loss_fn(student, teacher, student_bank, teacher_bank):
    mem = memory.replace(student=student_bank, teacher=teacher_bank)
    return _crd(student, teacher, mem, indices, negatives)[0]

  check_grads(lambda s, t: loss_fn(s, t, memory.student, memory.teacher),
              (student, teacher), order=1, modes=['rev'], atol=2e-2, rtol=2e-2)
  bank_grads = jax.grad(lambda *banks: loss_fn(student, teacher, *banks).sum(),
                        argnums=(0, 1))(memory.student, memory.teacher)
  assert not any(np.any(np.asarray(g)) for g in bank_grads)


def test_crd_sharded_batch_equals_unsharded():
  student, teacher, memory, indices, negatives = _inputs(seed=9)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P('data')))
  replicated = jax.device_put(memory, NamedSharding(mesh, P()))
  loss, new_memory = jax.jit(_crd)(shard(student), shard(teacher), replicated,
                                   shard(indices), shard(negatives))
  expected_loss, expected_memory = _crd(student, teacher, memory, indices, negatives)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(new_memory), jax.tree.leaves(expected_memory)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_crd_head_memory_init_and_errors():
  x = np.random.default_rng(0).standard_normal((3, 2, 2, 5)).astype(np.float32)
  head = losses.CRDHead(dim=DIM)
  embedding = head.apply(head.init(jax.random.PRNGKey(0), x), x)
  np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
  memory = losses.crd_memory_init(jax.random.PRNGKey(0), NUM_DATA, DIM)
  bound = 1 / np.sqrt(DIM / 3)
  assert memory.student.shape == (NUM_DATA, DIM)
  assert np.all(np.abs(np.asarray(memory.teacher)) <= bound)
  assert float(memory.z_student) < 0

  student, teacher, memory, indices, negatives = _inputs()
  with pytest.raises(ValueError, match=r"memory's dim 4, got student_embedding.shape=\(8, 3\)"):
    _crd(student[:, :3], teacher, memory, indices, negatives)
  with pytest.raises(ValueError, match=r'negatives must be in \[0, 12\)'):
    _crd(student, teacher, memory, indices, negatives + NUM_DATA)
  with pytest.raises(ValueError, match=r'negatives \[batch, K\] with batch=8'):
    _crd(student, teacher, memory, indices, negatives[:4])
  with pytest.raises(ValueError, match=r'momentum must be in \[0, 1\]'):
    losses.crd(student, teacher, memory, indices, negatives, momentum=1.5)
  with pytest.raises(TypeError, match='indices must have an integer dtype'):
    _crd(student, teacher, memory, indices.astype(np.float32), negatives)
