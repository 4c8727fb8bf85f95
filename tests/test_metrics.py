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
