"""Metrics as `(sum, count)` pairs: exact means across steps, devices and hosts."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _checks

# name -> (sum, count); both scalars (arrays or floats).
Metrics = Mapping[str, tuple[jax.Array, jax.Array]]

# The batch entry marking real examples (1) and padding (0), wherever kdjax
# pads: eval loops, data iterators, objectives and eval steps.
MASK_KEY = 'mask'


def pad_batch(
    batch: Mapping[str, np.ndarray], size: int, *, mask_key: str = MASK_KEY
) -> dict[str, np.ndarray]:
  """Pads a host batch to `size` rows and marks the real ones under `mask_key`.

  The one way kdjax pads (:func:`kdjax.loop.evaluate`,
  :func:`kdjax.data.iterate_once`): the padding rows are zeros of each
  array's dtype, and the mask ``[size]`` (bool, False on padding) keeps
  them out of every mean. Losses and metrics give 0 with finite gradients
  on masked rows, whatever a model computes from the zeros.

  Args:
    batch: arrays with a shared leading dimension ``n``, ``1 <= n <= size``.
    size: the rows wanted (fixed shapes, so no recompiles).
    mask_key: the entry that receives the mask; must not be in `batch`.

  Returns:
    A new dict: every array of `batch` with `size` rows, plus the mask.

  Raises:
    ValueError: if the arrays disagree on ``n``, ``n`` is 0 or above
      `size`, or `batch` already has `mask_key`.
  """
  if mask_key in batch:
    raise ValueError(f'the batch already has a {mask_key!r} entry; pad_batch adds it.')
  arrays = {name: np.asarray(value) for name, value in batch.items()}
  rows = {name: value.shape[0] for name, value in arrays.items()}
  n = next(iter(rows.values()), 0)
  if set(rows.values()) != {n} or not 1 <= n <= size:
    raise ValueError(
        f'pad_batch needs 1 to size={size} rows shared by every array, got {rows}.'
    )
  padded = {
      name: np.concatenate([value, np.zeros((size - n, *value.shape[1:]), value.dtype)])
      if n < size else value
      for name, value in arrays.items()
  }
  padded[mask_key] = np.arange(size) < n
  return padded


def metric(values: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Reduces per-example `values` to a `(sum, count)` pair.

  Args:
    values: per-example values, any shape (e.g. ``[batch]``, ``[batch, time]``).
    mask: optional weights (1 = counts, 0 = padding) with the leading shape
      of `values` (``[batch]`` for ``[batch, time]`` values masks whole rows)
      or broadcastable to it.

  Returns:
    ``(sum(values * mask), sum(mask))`` as float32 scalars.
  """
  values = jnp.asarray(values, jnp.float32)
  if mask is None:
    return jnp.sum(values), jnp.asarray(values.size, jnp.float32)
  mask = jnp.broadcast_to(_checks.align_mask('mask', mask, values.shape), values.shape)
  # where, not multiply: a padded NaN/inf must not leak into the sum.
  return jnp.sum(jnp.where(mask > 0, values * mask, 0.0)), jnp.sum(mask)


def leading_mask(mask: jax.Array, ndim: int) -> jax.Array:
  """Float mask with trailing unit axes added so it aligns with `ndim` leading dims.

  Kept for existing callers; :func:`kdjax._checks.align_mask` does the same
  and also checks the mask against the values' shape.
  """
  shape = tuple(jnp.shape(mask))
  return _checks.align_mask('mask', mask, shape + (1,) * max(ndim - len(shape), 0))


def scalar(value: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A single value reported as a metric (its mean over steps is the mean)."""
  return jnp.asarray(value, jnp.float32), jnp.asarray(1.0, jnp.float32)


def accuracy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Top-1 accuracy of ``logits [..., classes]`` against ``labels [...]``."""
  return metric(jnp.argmax(logits, axis=-1) == labels, mask)


@jax.tree_util.register_pytree_node_class
class Packed(Mapping):
  """Metrics packed into one ``[n, 2]`` array of (sum, count) rows.

  Reads like the dict it came from (``packed['loss/kd'] -> (sum, count)``),
  but a jitted step returns one buffer instead of one per scalar, which
  saves a few microseconds per metric and step. The names are static.
  """

  def __init__(self, names: tuple[str, ...], values: jax.Array):
    self.names = tuple(names)
    self.values = values

  @classmethod
  def from_dict(cls, metrics: Metrics) -> Packed:
    names = tuple(sorted(metrics))
    rows = [jnp.stack([jnp.asarray(metrics[n][0], jnp.float32),
                       jnp.asarray(metrics[n][1], jnp.float32)]) for n in names]
    return cls(names, jnp.stack(rows))

  def __getitem__(self, name: str) -> tuple[jax.Array, jax.Array]:
    try:
      row = self.names.index(name)
    except ValueError:
      raise KeyError(f'no metric {name!r}; the metrics are {list(self.names)}') from None
    return self.values[..., row, 0], self.values[..., row, 1]

  def __iter__(self):
    return iter(self.names)

  def __len__(self) -> int:
    return len(self.names)

  def __repr__(self) -> str:
    return f'Packed({list(self.names)})'

  def tree_flatten(self):
    return (self.values,), self.names

  @classmethod
  def tree_unflatten(cls, names, children):
    return cls(names, children[0])


def merge(a: Metrics | None, b: Metrics) -> Metrics:
  """Adds two metric dicts name by name (sums and counts add)."""
  if a is None:
    return b if isinstance(b, Packed) else dict(b)
  if isinstance(a, Packed) and isinstance(b, Packed) and a.names == b.names:
    return Packed(a.names, a.values + b.values)
  names = set(a) | set(b)
  out = {}
  for name in names:
    if name in a and name in b:
      out[name] = (a[name][0] + b[name][0], a[name][1] + b[name][1])
    else:
      out[name] = a[name] if name in a else b[name]
  return out


def compute(metrics: Metrics) -> dict[str, float]:
  """Turns `(sum, count)` pairs into means (host-side floats)."""
  metrics = jax.device_get(metrics)
  out = {}
  for name, (total, count) in sorted(metrics.items()):
    count = float(np.asarray(count))
    out[name] = float(np.asarray(total)) / count if count > 0 else 0.0
  return out
