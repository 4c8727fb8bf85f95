"""The ``pmap`` path: plain data parallelism with replicated state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from kdjax import step as step_lib
from kdjax.adapters import Apply
from kdjax.objective import Objective
from kdjax.parallel._rules import path_str

def _devices(devices: Sequence[jax.Device] | None) -> list[jax.Device]:
  return list(jax.local_devices() if devices is None else devices)


def _stacked_sharding(devices: list[jax.Device], axis_name: str) -> NamedSharding:
  # The layout pmap gives its outputs (a mesh axis named like the pmap axis):
  # inputs placed any other way make the step's second call retrace.
  return NamedSharding(Mesh(np.array(devices), (axis_name,)), P(axis_name))


def replicate(
    tree: Any, devices: Sequence[jax.Device] | None = None, *, axis_name: str = 'batch'
) -> Any:
  """One copy of every leaf per device, for a ``pmap``'d step.

  (``jax.device_put_replicated`` is gone in jax 0.10; this stacks copies on
  a leading device axis and places one on each device.)

  Args:
    tree: a pytree of arrays (e.g. a :class:`~kdjax.step.TrainState` or the
      teacher's variables).
    devices: defaults to ``jax.local_devices()``, ``pmap``'s order.
    axis_name: the step's pmap axis name (placing the copies as ``pmap``
      places its outputs, so the step compiles once).

  Returns:
    The pytree with leaves ``[num_devices, ...]``.
  """
  devices = _devices(devices)
  sharding = _stacked_sharding(devices, axis_name)
  return jax.tree.map(
      lambda x: jax.device_put(jnp.stack([jnp.asarray(x)] * len(devices)), sharding), tree
  )


def unreplicate(tree: Any) -> Any:
  """The first device's copy of every leaf (``x[0]``)."""
  return jax.tree.map(lambda x: x[0], tree)


def split_batch(
    batch: Any, devices: Sequence[jax.Device] | None = None, *, axis_name: str = 'batch'
) -> Any:
  """Splits a global batch into ``[num_devices, batch / num_devices, ...]``.

  Device ``i`` gets rows ``i * b : (i + 1) * b`` with ``b = batch /
  num_devices``, the same rows a ``jax.jit`` step with the batch sharded
  over a ``data`` axis gives it.

  Args:
    batch: a pytree of ``[batch, ...]`` arrays.
    devices: defaults to ``jax.local_devices()``.
    axis_name: the step's pmap axis name.

  Returns:
    The pytree with leaves ``[num_devices, batch / num_devices, ...]``, on
    the devices.

  Raises:
    ValueError: if an entry is a scalar or its batch size is not divisible by
      the number of devices.
  """
  devices = _devices(devices)
  n = len(devices)
  sharding = _stacked_sharding(devices, axis_name)

  def split(path, x):
    shape = np.shape(x)
    name = path_str(path) or 'batch'
    if not shape or shape[0] % n:
      raise ValueError(
          f'batch entry {name!r} with shape {shape}: the batch size must be '
          f'divisible by the {n} devices of the pmap.'
      )
    return jax.device_put(jnp.reshape(x, (n, shape[0] // n) + tuple(shape[1:])), sharding)

  return jax.tree_util.tree_map_with_path(split, batch)


def make_pmap_train_step(
    student_apply: Apply,
    teacher_apply: Apply | None,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    *,
    axis_name: str = 'batch',
    rng_streams: Sequence[str] = ('dropout',),
    devices: Sequence[jax.Device] | None = None,
    donate_state: bool = True,
    grad_norm: bool = False,
    student_inputs: step_lib.StudentInputs | None = None,
) -> Callable[[step_lib.TrainState, Any, Any], tuple[step_lib.TrainState, Any]]:
  """A ``jax.pmap`` train step: plain data parallelism, replicated state.

  The same update as ``jax.jit(make_train_step(...))`` on the global batch:
  each device runs the student and the teacher on its rows, the gradients
  of the per-device *sums* are summed over devices and divided by the
  global (psum'd) count of unmasked tokens, so the update is that of the
  exact global token-weighted mean, however the padding is spread over the
  devices. (A ``pmean`` of per-device means weighs a device with few real
  tokens as much as one with many.) The step is
  :func:`kdjax.step.make_train_step` with ``axis_name`` set, which makes
  the objective's normalisation and the optimizer's gradients global.

  Differences from the jit path: dropout keys are folded with the device
  index (each device draws its own noise); non-parameter state such as
  BatchNorm statistics is averaged over devices after each step. An
  objective's stateful terms must keep their state identical on every
  device (:attr:`kdjax.objective.StatefulTerm.combines_across_devices`;
  CRD gathers its bank writes, an EMA teacher follows the identical
  parameters); any other stateful term is refused with an error naming it.

  Example::

    step = make_pmap_train_step(student_apply, teacher_apply, objective, tx)
    state, teacher = replicate(state), replicate(teacher_variables)
    state, metrics = step(state, teacher, split_batch(batch))
    metrics.compute(unreplicate(metrics))

  Args:
    student_apply: the student's ``apply``.
    teacher_apply: the teacher's ``apply`` or ``None``.
    objective: the :class:`~kdjax.objective.Objective`.
    optimizer: the optax optimizer (it sees the global gradient).
    axis_name: the pmap axis name.
    rng_streams: the student's RNG stream names.
    devices: the devices (default ``jax.local_devices()``).
    donate_state: donate the input state's buffers.
    grad_norm: also report the global gradient norm.
    student_inputs: as in :func:`kdjax.step.make_train_step`.

  Returns:
    ``step(state, teacher_variables, batch) -> (state, metrics)`` on
    replicated `state` and `teacher_variables` (:func:`replicate`) and a
    batch split by :func:`split_batch`. The metrics are the global
    ``(sum, count)`` pairs (:class:`~kdjax.metrics.Packed`), identical on
    every device: read them with :func:`unreplicate`.
  """
  step = step_lib.make_train_step(
      student_apply,
      teacher_apply,
      objective,
      optimizer,
      rng_streams=rng_streams,
      grad_norm=grad_norm,
      student_inputs=student_inputs,
      axis_name=axis_name,
  )
  return jax.pmap(
      step,
      axis_name=axis_name,
      devices=None if devices is None else list(devices),
      donate_argnums=(0,) if donate_state else (),
  )
