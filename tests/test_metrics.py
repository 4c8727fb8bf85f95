"""(sum, count) metrics: exact means, packing, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import metrics as metrics_lib


def test_metric_masks_and_leading_dims():
  values = jnp.arange(6.0).reshape(2, 3)
  total, count = metrics_lib.metric(values, jnp.array([1.0, 0.0]))
  assert float(total) == 3.0 and float(count) == 3.0
  total, count = metrics_lib.metric(values.at[1, 2].set(jnp.nan), jnp.array([[1, 1, 1], [1, 1, 0]]))
  assert float(total) == 0 + 1 + 2 + 3 + 4 and float(count) == 5.0


def test_merged_means_are_exact_across_uneven_batches():
  rng = np.random.default_rng(0)
  parts = [rng.normal(size=n) for n in (3, 7, 1)]
  merged = None
  for part in parts:
    merged = metrics_lib.merge(merged, {'m': metrics_lib.metric(part)})
  assert metrics_lib.compute(merged)['m'] == pytest.approx(np.concatenate(parts).mean())


def test_packed_reads_like_the_dict_and_merges():
  plain = {'b': (jnp.array(2.0), jnp.array(4.0)), 'a': metrics_lib.scalar(3.0)}
  packed = metrics_lib.Packed.from_dict(plain)
  assert sorted(packed) == ['a', 'b'] and len(packed) == 2
  assert metrics_lib.compute(packed) == metrics_lib.compute(plain)
  doubled = metrics_lib.merge(packed, packed)
  assert isinstance(doubled, metrics_lib.Packed)
  assert float(doubled['b'][0]) == 4.0 and float(doubled['b'][1]) == 8.0
  summed = jax.tree.map(lambda x: x.sum(0), jax.tree.map(lambda x: jnp.stack([x, x]), packed))
  assert metrics_lib.compute(summed) == metrics_lib.compute(packed)
  jitted = jax.jit(lambda p: p)(packed)
  assert jitted.names == packed.names
  with pytest.raises(KeyError, match=r"no metric 'c'; the metrics are \['a', 'b'\]"):
    packed['c']


def test_compute_of_empty_count_is_zero():
  assert metrics_lib.compute({'m': (0.0, 0.0)}) == {'m': 0.0}


def test_pad_batch_fills_zeros_and_masks_them():
  batch = {'x': np.arange(6.0).reshape(3, 2), 'label': np.array([4, 5, 6])}
  padded = metrics_lib.pad_batch(batch, 5)
  assert list(padded) == ['x', 'label', metrics_lib.MASK_KEY]
  np.testing.assert_array_equal(padded['x'][3:], 0.0)
  np.testing.assert_array_equal(padded['label'], [4, 5, 6, 0, 0])
  np.testing.assert_array_equal(padded['mask'], [True, True, True, False, False])
  assert padded['mask'].dtype == np.bool_ and padded['label'].dtype == batch['label'].dtype
  full = metrics_lib.pad_batch(batch, 3, mask_key='real')
  assert full['real'].all()
  np.testing.assert_array_equal(full['x'], batch['x'])
  with pytest.raises(ValueError, match=r"already has a 'mask' entry"):
    metrics_lib.pad_batch({'x': np.zeros(2), 'mask': np.ones(2)}, 4)
  with pytest.raises(ValueError, match=r"size=2 rows shared by every array, got \{'x': 3\}"):
    metrics_lib.pad_batch({'x': np.zeros(3)}, 2)
  with pytest.raises(ValueError, match=r"got \{'x': 3, 'y': 2\}"):
    metrics_lib.pad_batch({'x': np.zeros(3), 'y': np.zeros(2)}, 4)


def test_metric_names_a_misaligned_mask():
  with pytest.raises(ValueError, match=r'mask with shape \(3,\).*leading axes of values with shape \(2, 3\)'):
    metrics_lib.metric(jnp.zeros((2, 3)), jnp.ones(3))
