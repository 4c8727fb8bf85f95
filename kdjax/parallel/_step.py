"""The sharded train step: sharded state and teacher, ``jax.jit`` with explicit shardings."""

from __future__ import annotations

from collections.abc import Callable
import contextlib
from typing import Any

from flax import linen as nn
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import optax

from kdjax import step as step_lib
from kdjax.parallel import _batch
from kdjax.parallel import _rules


def train_state_shardings(
    abstract_state: step_lib.TrainState,
    params_shardings: Any,
    mesh: Mesh,
    *,
    objective_rules: _rules.Rules | None = None,
) -> step_lib.TrainState:
  """Shardings for every field of a :class:`kdjax.step.TrainState`.

  ``params`` take `params_shardings`; the optimizer state follows them
  (:func:`like_params`: Adam's moments are sharded like their parameters,
  counts replicated); ``step``, ``rng`` and ``model_state`` (e.g. BatchNorm
  statistics, small) are replicated. The objective's state (memory banks,
  EMA weights) is replicated, or sharded by `objective_rules` (regex rules
  on paths such as ``'crd/student'`` or ``'ema/params/.../kernel'``, the
  first path component being the term's name).

  Args:
    abstract_state: the state, or ``jax.eval_shape`` of building it.
    params_shardings: shardings of ``state.params`` (see
      :func:`param_shardings`).
    mesh: the mesh.
    objective_rules: optional partition rules for ``objective_state``
      (see :func:`param_specs`).

  Returns:
    A ``TrainState`` whose leaves are ``NamedSharding``.
  """
  replicated = NamedSharding(mesh, P())
  return step_lib.TrainState(
      step=replicated,
      params=params_shardings,
      model_state=jax.tree.map(lambda _: replicated, abstract_state.model_state),
      opt_state=_rules.like_params(
          abstract_state.opt_state, abstract_state.params, params_shardings, mesh
      ),
      rng=replicated,
      objective_state=(
          jax.tree.map(lambda _: replicated, abstract_state.objective_state)
          if objective_rules is None
          else _rules.param_shardings(abstract_state.objective_state, objective_rules, mesh)
      ),
  )


def init_sharded_train_state(
    init_fn: Callable[[], Any],
    optimizer: optax.GradientTransformation,
    rules: _rules.Rules,
    mesh: Mesh,
    *,
    rng: jax.Array | int = 0,
    objective: Any = None,
    objective_rules: _rules.Rules | None = None,
) -> tuple[step_lib.TrainState, step_lib.TrainState]:
  """The student's :class:`~kdjax.step.TrainState`, created sharded.

  :func:`kdjax.step.init_train_state` runs under ``jax.jit`` with
  ``out_shardings``, so each device only ever holds its shard of the
  parameters and of the optimizer state (nothing is built whole on one
  device first).

  Example::

    state, state_shardings = init_sharded_train_state(
        lambda: student.init(jax.random.PRNGKey(0), tokens),
        optax.adam(1e-3), [('embed', 'fsdp'), ('mlp', None), ...], mesh)

  Args:
    init_fn: ``() -> variables`` (``{'params': ..., <collections>}``,
      boxed with logical names or not), e.g. ``lambda:
      model.init(key, example_input)``. Traced, never run eagerly.
    optimizer: the optax optimizer.
    rules: partition rules for the student's params (logical or regex, see
      :func:`param_specs`).
    mesh: the mesh.
    rng: seed or key of the state's RNG (dropout).
    objective: the :class:`~kdjax.objective.Objective`, when it has stateful
      terms whose state the ``TrainState`` must hold.
    objective_rules: partition rules for that state (default replicated;
      see :func:`train_state_shardings`).

  Returns:
    ``(state, state_shardings)``: the state (plain arrays, metadata boxes
    removed) and the ``TrainState`` of its shardings, for
    :func:`jit_train_step`.
  """
  abstract_variables = jax.eval_shape(init_fn)
  if 'params' not in abstract_variables:
    raise KeyError(
        f"init_fn must return variables holding 'params'; got collections "
        f'{sorted(abstract_variables)}'
    )
  params_shardings = _rules.param_shardings(abstract_variables['params'], rules, mesh)

  def build():
    return step_lib.init_train_state(
        nn.meta.unbox(init_fn()), optimizer, rng=rng, objective=objective)

  shardings = train_state_shardings(
      jax.eval_shape(build), params_shardings, mesh, objective_rules=objective_rules)
  return jax.jit(build, out_shardings=shardings)(), shardings


def init_sharded_variables(
    init_fn: Callable[[], Any], rules: _rules.Rules, mesh: Mesh
) -> tuple[Any, Any]:
  """A model's variables (e.g. a teacher's), created sharded by `rules`.

  Args:
    init_fn: ``() -> variables``, boxed with logical names or not.
    rules: partition rules for all of the variables (paths start with the
      collection, e.g. ``'params/...'``, ``'batch_stats/...'``).
    mesh: the mesh.

  Returns:
    ``(variables, shardings)``, both with the unboxed structure.
  """
  shardings = _rules.param_shardings(jax.eval_shape(init_fn), rules, mesh)
  variables = jax.jit(lambda: nn.meta.unbox(init_fn()), out_shardings=shardings)()
  return variables, shardings


def place_variables(variables: Any, shardings: Any) -> Any:
  """Puts existing variables (e.g. a restored teacher) on their shardings.

  Args:
    variables: arrays (boxed or not); in a multi-process run every process
      passes the same values.
    shardings: from :func:`param_shardings` of the same (unboxed) structure.

  Returns:
    The variables as arrays laid out by `shardings`.
  """
  return jax.device_put(nn.meta.unbox(variables), shardings)


def jit_train_step(
    step: Callable[..., Any],
    mesh: Mesh,
    *,
    state_shardings: Any,
    teacher_shardings: Any = None,
    batch_sharding: NamedSharding | Any = None,
    logical_axis_rules: _rules.LogicalRules | None = None,
    donate_state: bool = True,
) -> Callable[..., Any]:
  """Jits a pure step of :func:`kdjax.step.make_train_step` for `mesh`.

  ``jax.jit`` with ``in_shardings=(state, teacher, batch)``,
  ``out_shardings=(state, replicated metrics)`` and the student state
  donated. The step sees the *global* batch, so XLA inserts every
  collective, and the metrics it returns (:class:`kdjax.metrics.Packed`
  ``(sum, count)`` pairs) are already the exact global token-weighted sums
  and counts, whatever the layout: ``metrics.compute`` gives global means.

  Example, a data-parallel student with an FSDP teacher::

    step = jit_train_step(
        make_train_step(student_apply, teacher_apply, objective, optimizer),
        mesh, state_shardings=state_shardings,
        teacher_shardings=teacher_shardings,
        batch_sharding=batch_sharding(mesh))
    state, metrics = step(state, teacher_variables, shard_batch(batch, mesh))

  Args:
    step: ``step(state, teacher_variables, batch) -> (state, metrics)``.
    mesh: the mesh.
    state_shardings: the ``TrainState`` of shardings
      (:func:`init_sharded_train_state` returns it).
    teacher_shardings: shardings of the teacher's variables, or ``None``
      for no teacher.
    batch_sharding: one sharding for every batch entry (default
      :func:`batch_sharding` of `mesh`), or a pytree of them.
    logical_axis_rules: if given, the step is traced under
      ``nn.logical_axis_rules(...)`` and `mesh` (as the abstract mesh;
      ``jax.set_mesh`` is refused inside ``jit``), so a model's
      ``nn.with_logical_constraint`` on activations takes effect (e.g.
      ``('batch', ('data', 'fsdp'))``, ``('mlp', 'tensor')``). Without them
      those constraints are no-ops and XLA propagates the parameters' and
      the batch's shardings on its own.
    donate_state: donate the input state's buffers (the old state is
      unusable after the call).

  Returns:
    The jitted step, same signature.
  """
  if batch_sharding is None:
    batch_sharding = _batch.batch_sharding(mesh)
  fn = step
  if logical_axis_rules is not None:
    rules = list(logical_axis_rules)

    def fn(state, teacher_variables, batch):
      with contextlib.ExitStack() as stack:
        stack.enter_context(jax.sharding.use_abstract_mesh(mesh.abstract_mesh))
        stack.enter_context(nn.logical_axis_rules(rules))
        return step(state, teacher_variables, batch)

  return jax.jit(
      fn,
      in_shardings=(state_shardings, teacher_shardings, batch_sharding),
      out_shardings=(state_shardings, NamedSharding(mesh, P())),
      donate_argnums=(0,) if donate_state else (),
  )
