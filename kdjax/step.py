"""Train and eval step factories: pure functions for one `jax.jit`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from kdjax import metrics as metrics_lib
from kdjax._outputs import Outputs
from kdjax.adapters import Apply
from kdjax.objective import Objective

Batch = Mapping[str, Any]


class TrainState(flax.struct.PyTreeNode):
  """The student's training state: everything a checkpoint must hold.

  The teacher is not here: it is an argument of the step.

  Attributes:
    step: int32 scalar, the number of updates applied.
    params: the student's trainable parameters.
    model_state: the student's other collections (e.g. ``batch_stats``).
    opt_state: the optimizer's state.
    rng: a ``uint32[2]`` PRNG key; the step's randomness is
      ``fold_in(rng, step)``, so a restored state draws the same numbers.
  """

  step: jax.Array
  params: Any
  model_state: Mapping[str, Any]
  opt_state: Any
  rng: jax.Array

  @property
  def variables(self) -> dict[str, Any]:
    """``{'params': params, **model_state}``: what an `apply` takes."""
    return {'params': self.params, **self.model_state}


def init_train_state(
    variables: Mapping[str, Any],
    optimizer: optax.GradientTransformation,
    *,
    rng: jax.Array | int = 0,
) -> TrainState:
  """Builds a :class:`TrainState` from a model's variables.

  Args:
    variables: ``{'params': ..., <other collections>}`` as returned by a
      linen ``init`` or :func:`kdjax.adapters.from_nnx`.
    optimizer: an optax gradient transformation.
    rng: a seed or a legacy ``uint32[2]`` key for dropout and other noise.

  Returns:
    The state at step 0.
  """
  if 'params' not in variables:
    raise KeyError(
        f"variables must hold 'params'; got collections {sorted(variables)}"
    )
  variables = dict(variables)
  params = variables.pop('params')
  if isinstance(rng, int):
    rng = jax.random.PRNGKey(rng)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state=variables,
      opt_state=optimizer.init(params),
      rng=jnp.asarray(rng),
  )


def _step_rngs(state: TrainState, streams: Sequence[str]) -> dict[str, jax.Array]:
  key = jax.random.fold_in(state.rng, state.step)
  keys = jax.random.split(key, len(streams))
  return dict(zip(streams, keys))


def teacher_outputs(
    teacher_apply: Apply | None, teacher_variables: Any, batch: Batch
) -> Outputs | None:
  """The teacher's outputs in eval mode, cut from the gradient."""
  if teacher_apply is None:
    return None
  outputs, _ = teacher_apply(teacher_variables, batch, train=False)
  return jax.lax.stop_gradient(outputs)


def make_train_step(
    student_apply: Apply,
    teacher_apply: Apply | None,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    *,
    rng_streams: Sequence[str] = ('dropout',),
    grad_norm: bool = False,
) -> Callable[[TrainState, Any, Batch], tuple[TrainState, dict]]:
  """Returns a pure train step ``step(state, teacher_variables, batch)``.

  The step runs the teacher in eval mode under ``stop_gradient``, the student
  in train mode (its mutable collections updated, dropout keys drawn from
  ``fold_in(state.rng, state.step)``), evaluates `objective` at the current
  step (so schedules of weights and temperature are traced values: changing
  them never recompiles), and applies one `optimizer` update.

  Jit it at the call site, donating the state::

    step = jax.jit(make_train_step(...), donate_argnums=0)

  Args:
    student_apply: the student's ``apply`` (see :mod:`kdjax.adapters`).
    teacher_apply: the teacher's ``apply``, or ``None`` to train on the
      objective's label terms alone.
    objective: the :class:`~kdjax.objective.Objective`.
    optimizer: an optax gradient transformation.
    rng_streams: names of the student's RNG streams.
    grad_norm: also report the global gradient norm as ``optim/grad_norm``
      (it costs a pass over the gradients).

  Returns:
    ``step(state, teacher_variables, batch) -> (new_state, metrics)`` with
    metrics as ``(sum, count)`` pairs packed in one array
    (:class:`kdjax.metrics.Packed`, which reads like a dict).
  """

  def step(state: TrainState, teacher_variables: Any, batch: Batch):
    teacher = teacher_outputs(teacher_apply, teacher_variables, batch)
    rngs = _step_rngs(state, rng_streams)

    def loss_fn(params):
      variables = {'params': params, **state.model_state}
      student, new_model_state = student_apply(variables, batch, train=True, rngs=rngs)
      loss, metrics = objective(student, teacher, batch, step=state.step)
      return loss, (metrics, new_model_state)

    grads, (metrics, new_model_state) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        model_state={**state.model_state, **new_model_state},
        opt_state=opt_state,
    )
    metrics = dict(metrics)
    if grad_norm:
      metrics['optim/grad_norm'] = metrics_lib.scalar(optax.tree.norm(grads))
    return new_state, metrics_lib.Packed.from_dict(metrics)

  return step


def make_eval_step(
    student_apply: Apply,
    teacher_apply: Apply | None = None,
    objective: Objective | None = None,
    *,
    label_key: str | None = 'label',
    mask_key: str = metrics_lib.MASK_KEY,
) -> Callable[[TrainState, Any, Batch], dict]:
  """Returns ``eval_step(state, teacher_variables, batch) -> metrics``.

  The student runs in eval mode. Metrics are ``acc/student`` (and
  ``acc/teacher`` when there is a teacher) against ``batch[label_key]``, plus
  the objective's terms when one is given. A ``batch[mask_key]`` entry marks
  padded examples, which no metric counts.

  Args:
    student_apply: the student's ``apply``.
    teacher_apply: the teacher's ``apply``, optional.
    objective: optional; its terms are reported as ``loss/<name>``.
    label_key: the batch entry with integer labels, or ``None``.
    mask_key: the batch entry with the padding mask.

  Returns:
    A pure function; jit it at the call site.
  """

  def eval_step(state: TrainState, teacher_variables: Any, batch: Batch) -> dict:
    student, _ = student_apply(state.variables, batch, train=False)
    teacher = teacher_outputs(teacher_apply, teacher_variables, batch)
    mask = batch.get(mask_key)
    metrics = {}
    if objective is not None:
      _, metrics = objective(student, teacher, batch, step=state.step)
      metrics = {k: v for k, v in metrics.items() if k.startswith('loss/')}
    if label_key is not None and label_key in batch:
      labels = batch[label_key]
      for name, outputs in (('student', student), ('teacher', teacher)):
        if outputs is not None:
          metrics[f'acc/{name}'] = metrics_lib.accuracy(outputs.logits, labels, mask)
    return metrics

  return eval_step
