"""Train and eval step factories: pure functions for one `jax.jit`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from kdjax import metrics as metrics_lib
from kdjax import objective as objective_lib
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
    objective_state: the state of the objective's stateful terms, by term
      name (CRD's memory banks, an EMA teacher's variables; see
      :class:`kdjax.objective.StatefulTerm`); ``{}`` for a stateless
      objective, which then costs nothing.
  """

  step: jax.Array
  params: Any
  model_state: Mapping[str, Any]
  opt_state: Any
  rng: jax.Array
  objective_state: Mapping[str, Any] = flax.struct.field(default_factory=dict)

  @property
  def variables(self) -> dict[str, Any]:
    """``{'params': params, **model_state}``: what an `apply` takes."""
    return {'params': self.params, **self.model_state}


def init_train_state(
    variables: Mapping[str, Any],
    optimizer: optax.GradientTransformation,
    *,
    rng: jax.Array | int = 0,
    objective: Objective | None = None,
) -> TrainState:
  """Builds a :class:`TrainState` from a model's variables.

  Args:
    variables: ``{'params': ..., <other collections>}`` as returned by a
      linen ``init`` or :func:`kdjax.adapters.from_nnx`.
    optimizer: an optax gradient transformation.
    rng: a seed or a legacy ``uint32[2]`` key for dropout and other noise.
    objective: the objective the state will be trained on; its stateful
      terms' state (:meth:`kdjax.objective.Objective.init`) becomes
      ``objective_state``. Needed only for an objective with stateful terms.

  Returns:
    The state at step 0.
  """
  if 'params' not in variables:
    raise KeyError(
        f"variables must hold 'params'; got collections {sorted(variables)}"
    )
  if isinstance(rng, int):
    rng = jax.random.PRNGKey(rng)
  rng = jnp.asarray(rng)
  objective_state = {}
  if objective is not None:
    objective_state = objective.init(jax.random.fold_in(rng, _INIT_KEY), variables)
  variables = dict(variables)
  params = variables.pop('params')
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state=variables,
      opt_state=optimizer.init(params),
      rng=rng,
      objective_state=objective_state,
  )


# Folded into the state's key for the objective's initial state; the steps
# fold the step number in instead, so the two never meet below 2**31 steps.
_INIT_KEY = 2**31 - 1


def step_key(state: TrainState, axis_name: str | None = None) -> jax.Array:
  """``fold_in(rng, step)``; under pmap the rng is folded with the device first."""
  rng = state.rng
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  return jax.random.fold_in(rng, state.step)


def _step_rngs(
    state: TrainState, streams: Sequence[str], axis_name: str | None = None
) -> dict[str, jax.Array]:
  keys = jax.random.split(step_key(state, axis_name), len(streams))
  return dict(zip(streams, keys))


def _objective_rng(objective: Objective, state: TrainState) -> jax.Array | None:
  """The stateful terms' key at this step (the same on every device); None without any."""
  if not objective.stateful_terms:
    return None
  return objective_lib.objective_rng(step_key(state))


def _student_batch(student_inputs, batch: Batch, teacher) -> Batch:
  """What the student is applied to: `batch`, or ``student_inputs(batch, teacher)``."""
  return batch if student_inputs is None else student_inputs(batch, teacher)


Teachers = Apply | Sequence[Apply] | None


def teacher_outputs(
    teacher_apply: Teachers, teacher_variables: Any, batch: Batch
) -> Outputs | tuple[Outputs, ...] | None:
  """The teacher's outputs in eval mode, cut from the gradient.

  Args:
    teacher_apply: one ``apply``, a tuple/list of them (several teachers),
      or ``None``.
    teacher_variables: the teacher's variables; for several teachers a
      tuple/list of the same length, in the same order.
    batch: the batch.

  Returns:
    ``None``, one :class:`~kdjax.Outputs`, or for several teachers a tuple of
    them in the order of `teacher_apply`.
  """
  if teacher_apply is None:
    return None
  if isinstance(teacher_apply, (tuple, list)):
    _check_teacher_variables(teacher_apply, teacher_variables)
    return tuple(
        teacher_outputs(apply, variables, batch)
        for apply, variables in zip(teacher_apply, teacher_variables)
    )
  outputs, _ = teacher_apply(teacher_variables, batch, train=False)
  return jax.lax.stop_gradient(outputs)


def _check_teacher_variables(teacher_applies: Sequence[Apply], teacher_variables: Any) -> None:
  count = len(teacher_applies)
  if not isinstance(teacher_variables, (tuple, list)):
    raise TypeError(
        f'with {count} teacher applies, teacher_variables must be a tuple or list of '
        f'{count} variable pytrees (one per teacher, same order); got '
        f'{type(teacher_variables).__name__}.'
    )
  if len(teacher_variables) != count:
    raise ValueError(
        f'teacher_variables has {len(teacher_variables)} entries but there are '
        f'{count} teacher applies; give one variable pytree per teacher.'
    )


def _update(
    apply: Apply,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    rngs: Mapping[str, jax.Array],
    teacher: Outputs | tuple[Outputs, ...] | None,
    batch: Batch,
    grad_norm: bool,
    *,
    student_batch: Batch | None = None,
    axis_name: str | None = None,
) -> tuple[TrainState, dict]:
  """One optimizer update of `state` on `objective` against fixed `teacher`.

  With `axis_name` (the pmap path) the objective normalises by the global
  counts, the gradients are summed over the axis before the optimizer sees
  them, and the model state is averaged over it.
  """
  objective_rng = _objective_rng(objective, state)

  def loss_fn(params):
    variables = {'params': params, **state.model_state}
    student, new_model_state = apply(
        variables, batch if student_batch is None else student_batch, train=True, rngs=rngs)
    loss, metrics, objective_state = objective.apply(
        student, teacher, batch, step=state.step, state=state.objective_state,
        rng=objective_rng, axis_name=axis_name)
    return loss, (metrics, new_model_state, objective_state)

  grads, (metrics, new_model_state, objective_state) = jax.grad(loss_fn, has_aux=True)(
      state.params)
  if axis_name is not None:
    grads = jax.lax.psum(grads, axis_name)
    new_model_state = jax.lax.pmean(new_model_state, axis_name)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  model_state = {**state.model_state, **new_model_state}
  # ({} in, {} out for an objective without stateful terms.)
  objective_state = objective.after_update(
      objective_state, {'params': params, **model_state}, state.step)
  new_state = state.replace(
      step=state.step + 1,
      params=params,
      model_state=model_state,
      opt_state=opt_state,
      objective_state=objective_state,
  )
  metrics = dict(metrics)
  if grad_norm:
    metrics['optim/grad_norm'] = metrics_lib.scalar(optax.tree.norm(grads))
  return new_state, metrics


StudentInputs = Callable[[Batch, Any], Batch]


def make_train_step(
    student_apply: Apply,
    teacher_apply: Teachers,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    *,
    rng_streams: Sequence[str] = ('dropout',),
    grad_norm: bool = False,
    student_inputs: StudentInputs | None = None,
    axis_name: str | None = None,
) -> Callable[[TrainState, Any, Batch], tuple[TrainState, dict]]:
  """Returns a pure train step ``step(state, teacher_variables, batch)``.

  The step runs the teacher in eval mode under ``stop_gradient``, the student
  in train mode (its mutable collections updated, dropout keys drawn from
  ``fold_in(state.rng, state.step)``), evaluates `objective` at the current
  step (so schedules of weights and temperature are traced values: changing
  them never recompiles), and applies one `optimizer` update. The
  objective's stateful terms (:class:`kdjax.objective.StatefulTerm`) read
  and write ``state.objective_state``, with a key of their own
  (``fold_in(fold_in(rng, step), <constant>)``), and see the updated
  student once the optimizer has run.

  Jit it at the call site, donating the state::

    step = jax.jit(make_train_step(...), donate_argnums=0)

  Args:
    student_apply: the student's ``apply`` (see :mod:`kdjax.adapters`).
    teacher_apply: the teacher's ``apply``, or ``None`` to train on the
      objective's label terms alone. Several teachers (multi-teacher KD) are
      a tuple or list of applies: then ``teacher_variables`` is a tuple of
      their variables in the same order, and the objective's terms receive
      the teachers' outputs as a tuple of :class:`~kdjax.Outputs` (see
      :func:`kdjax.objective.multi_teacher_distill` and
      :func:`kdjax.objective.per_teacher_terms`).
    objective: the :class:`~kdjax.objective.Objective`.
    optimizer: an optax gradient transformation.
    rng_streams: names of the student's RNG streams.
    grad_norm: also report the global gradient norm as ``optim/grad_norm``
      (it costs a pass over the gradients).
    student_inputs: optional ``fn(batch, teacher_outputs) -> batch``: what
      the student is applied to, for students that read the teacher's
      outputs (CRD's teacher-side head, e.g. ``lambda b, t: {**b,
      'teacher_features': t.feature('pool')}``). The objective still sees
      `batch`.
    axis_name: set when the step itself runs under ``pmap`` (or
      ``shard_map``) over this axis on each device's rows: the objective's
      means use counts summed over the axis, the gradients are summed
      before the optimizer (so every device applies the global update), the
      model state (e.g. BatchNorm statistics) is averaged, and dropout keys
      are folded with the device index. :func:`kdjax.parallel.make_pmap_train_step`
      does this for you.

  Returns:
    ``step(state, teacher_variables, batch) -> (new_state, metrics)`` with
    metrics as ``(sum, count)`` pairs packed in one array
    (:class:`kdjax.metrics.Packed`, which reads like a dict).
  """
  objective.check_devices(axis_name)

  def step(state: TrainState, teacher_variables: Any, batch: Batch):
    teacher = teacher_outputs(teacher_apply, teacher_variables, batch)
    student_batch = _student_batch(student_inputs, batch, teacher)
    rngs = _step_rngs(state, rng_streams, axis_name)
    new_state, metrics = _update(
        student_apply, objective, optimizer, state, rngs, teacher, batch, grad_norm,
        student_batch=student_batch, axis_name=axis_name,
    )
    return new_state, metrics_lib.Packed.from_dict(metrics)

  return step


def make_eval_step(
    student_apply: Apply,
    teacher_apply: Teachers = None,
    objective: Objective | None = None,
    *,
    label_key: str | None = 'label',
    mask_key: str = metrics_lib.MASK_KEY,
    student_inputs: StudentInputs | None = None,
) -> Callable[[TrainState, Any, Batch], dict]:
  """Returns ``eval_step(state, teacher_variables, batch) -> metrics``.

  The student runs in eval mode. Metrics are ``acc/student`` (and
  ``acc/teacher``, or ``acc/teacher_<i>`` for each of several teachers,
  when there is one) against ``batch[label_key]``, plus the objective's
  term losses ``loss/<name>`` when one is given (its stateful terms read
  ``state.objective_state``, which the eval step never changes). A
  ``batch[mask_key]`` entry marks padded examples, which no metric counts.

  Args:
    student_apply: the student's ``apply``.
    teacher_apply: the teacher's ``apply`` (or a tuple of them), optional.
    objective: optional; its terms are reported as ``loss/<name>``.
    label_key: the batch entry with integer labels, or ``None``.
    mask_key: the batch entry with the padding mask.
    student_inputs: as in :func:`make_train_step`.

  Returns:
    A pure function; jit it at the call site.
  """

  def eval_step(state: TrainState, teacher_variables: Any, batch: Batch) -> dict:
    teacher = teacher_outputs(teacher_apply, teacher_variables, batch)
    student, _ = student_apply(
        state.variables, _student_batch(student_inputs, batch, teacher), train=False)
    mask = batch.get(mask_key)
    metrics = {}
    if objective is not None:
      metrics, _ = objective.term_losses(
          student, teacher, batch, step=state.step, state=state.objective_state,
          rng=_objective_rng(objective, state))
    if label_key is not None and label_key in batch:
      labels = batch[label_key]
      named = [('student', student)]
      if isinstance(teacher, tuple):
        named += [(f'teacher_{i}', outputs) for i, outputs in enumerate(teacher)]
      else:
        named.append(('teacher', teacher))
      for name, outputs in named:
        # A logit-free apply (e.g. for chunked losses) has no accuracy to report.
        if outputs is not None and outputs.logits is not None:
          metrics[f'acc/{name}'] = metrics_lib.accuracy(outputs.logits, labels, mask)
    return metrics

  return eval_step


def _per_student(name: str, value: Any, kind: type, count: int) -> tuple[Any, ...]:
  """One `value` shared by all students, or a sequence of `count` of them."""
  if isinstance(value, kind):
    return (value,) * count
  if not isinstance(value, (tuple, list)):
    raise TypeError(
        f'{name} must be one {kind.__name__} or a tuple/list of {count} (one per '
        f'student); got {type(value).__name__}.'
    )
  if len(value) != count:
    raise ValueError(
        f'{name} has {len(value)} entries but there are {count} students; give one '
        f'per student, or a single one shared by all.'
    )
  return tuple(value)


def make_mutual_train_step(
    student_applies: Sequence[Apply],
    objectives: Objective | Sequence[Objective],
    optimizers: optax.GradientTransformation | Sequence[optax.GradientTransformation],
    *,
    sequential: bool = True,
    rng_streams: Sequence[str] = ('dropout',),
    grad_norm: bool = False,
) -> Callable[[tuple[TrainState, ...], Batch], tuple[tuple[TrainState, ...], Any]]:
  """Returns a pure deep-mutual-learning step ``step(states, batch)``.

  A cohort of K >= 2 students learns together, with no pretrained teacher:
  each student minimises its own objective in which the *other* students
  play the teachers. Student ``k``'s objective receives, as its teacher
  outputs, the tuple of the other students' outputs (in cohort order, ``k``
  left out) under ``stop_gradient``: no student receives gradient from
  another's loss. Multi-teacher terms therefore serve for DML; the paper's
  loss ``L_k = CE + 1/(K-1) sum_{l != k} KL(p_l || p_k)`` is::

    Objective({
        'ce': objective.supervised(),
        'kl': objective.multi_teacher_distill(losses.kl_divergence, mode='mean_losses'),
    })

  Order of the updates:

  * ``sequential=True`` (default) follows Algorithm 1 of the paper: the
    students are updated one after the other within a step, and student
    ``k`` sees students ``0..k-1`` *after* their update of this step (their
    predictions are recomputed) and students ``k+1..K-1`` before theirs.
  * ``sequential=False`` updates all students simultaneously: every student
    sees the others' predictions from the parameters at the start of the
    step (one forward pass per student; what most re-implementations do).

  The peers' predictions come from the same train-mode forward as the
  student's own update (same dropout keys ``fold_in(state.rng, state.step)``
  of that student's state; BatchNorm on batch statistics); only a student's
  own update forward changes its model state. Each student keeps its own
  :class:`TrainState` (step, rng, optimizer state): initialise them with
  different ``rng`` seeds if they use dropout.

  Jit it at the call site, donating the states::

    step = jax.jit(make_mutual_train_step(...), donate_argnums=0)

  Args:
    student_applies: the K students' ``apply`` functions (K >= 2).
    objectives: one :class:`~kdjax.objective.Objective` shared by all
      students, or a tuple of K.
    optimizers: one optax gradient transformation shared by all students (each
      student has its own optimizer state), or a tuple of K.
    sequential: update in the paper's sequential order (see above), or
      simultaneously.
    rng_streams: names of the students' RNG streams.
    grad_norm: also report each student's global gradient norm.

  Returns:
    ``step(states, batch) -> (new_states, metrics)``: `states` is a tuple of
    K :class:`TrainState`; metrics are :class:`kdjax.metrics.Packed`
    ``(sum, count)`` pairs namespaced per student: ``student_0/loss/ce``,
    ``student_1/loss/kl``, ``student_0/loss/total``, ...

  References:
    Zhang, Xiang, Hospedales and Lu, "Deep Mutual Learning", CVPR 2018,
    https://arxiv.org/abs/1706.00384.
  """
  applies = tuple(student_applies)
  count = len(applies)
  if count < 2:
    raise ValueError(f'deep mutual learning needs at least 2 students, got {count}.')
  objectives = _per_student('objectives', objectives, Objective, count)
  optimizers = _per_student(
      'optimizers', optimizers, optax.GradientTransformation, count
  )

  def forward(k, state, rngs, batch):
    outputs, _ = applies[k](state.variables, batch, train=True, rngs=rngs)
    return jax.lax.stop_gradient(outputs)

  def step(states, batch):
    if not isinstance(states, (tuple, list)) or len(states) != count:
      got = len(states) if isinstance(states, (tuple, list)) else type(states).__name__
      raise ValueError(
          f'states must be a tuple of {count} TrainStates (one per student), got {got}.'
      )
    states = list(states)
    rngs = [_step_rngs(state, rng_streams) for state in states]
    # In sequential mode student 0's first forward is unused; XLA drops it.
    outputs = [forward(k, states[k], rngs[k], batch) for k in range(count)]
    metrics = {}
    for k in range(count):
      peers = tuple(outputs[j] for j in range(count) if j != k)
      states[k], student_metrics = _update(
          applies[k], objectives[k], optimizers[k], states[k], rngs[k], peers, batch,
          grad_norm,
      )
      metrics.update({f'student_{k}/{name}': v for name, v in student_metrics.items()})
      if sequential and k < count - 1:
        outputs[k] = forward(k, states[k], rngs[k], batch)
    return tuple(states), metrics_lib.Packed.from_dict(metrics)

  return step
