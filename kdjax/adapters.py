"""Adapters: a linen module, an NNX module or a plain function as an `apply`.

Every adapter returns a function with one signature::

    apply(variables, batch, *, train, rngs=None) -> (Outputs, new_state)

`variables` is a dict with the trainable ``'params'`` and any other
collections (``'batch_stats'`` for linen BatchNorm, ``'state'`` for NNX
non-parameter state). `new_state` holds the updated non-parameter
collections after a training call (empty when there are none, or when
``train=False``). The rest of kdjax only ever sees this signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import inspect
from typing import Any

from flax import linen as nn
from flax import nnx
from kdjax import _checks
from kdjax._outputs import Outputs

Apply = Callable[..., tuple[Outputs, dict]]
Inputs = str | Callable[[Mapping[str, Any]], Any]


def _get_inputs(inputs: Inputs, batch: Mapping[str, Any]) -> Any:
  if callable(inputs):
    return inputs(batch)
  return _checks.batch_entry(batch, inputs, 'inputs')


def _feature_map(features: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
  """`features` as {output name: intermediate path}."""
  if isinstance(features, Mapping):
    return dict(features)
  return {name: name for name in features}


def _flatten_intermediates(tree: Mapping[str, Any]) -> dict[str, Any]:
  """{'block': {'__call__': (x,)}} -> {'block/__call__': x}; sow tuples unwrapped."""
  flat = {}

  def visit(prefix, node):
    if isinstance(node, Mapping):
      for key, value in node.items():
        visit(f'{prefix}/{key}' if prefix else str(key), value)
    elif isinstance(node, tuple) and len(node) == 1:
      flat[prefix] = node[0]
    else:
      flat[prefix] = node

  visit('', tree)
  return flat


def _select(
    flat: Mapping[str, Any], wanted: Mapping[str, str], model: str
) -> dict[str, Any]:
  missing = [path for path in wanted.values() if path not in flat]
  if missing:
    raise KeyError(
        f'{model} exposes no intermediate {missing}; available intermediates: '
        f'{sorted(flat)}'
    )
  return {name: flat[path] for name, path in wanted.items()}


def _as_outputs(result: Any, features: dict[str, Any]) -> Outputs:
  if isinstance(result, Outputs):
    return result.replace(features={**result.features, **features})
  if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
    logits, extra = result
    return Outputs(logits=logits, features={**extra, **features})
  return Outputs(logits=result, features=features)


def from_linen(
    module: nn.Module,
    *,
    inputs: Inputs = 'x',
    features: Sequence[str] | Mapping[str, str] = (),
    train_kwarg: str | None = 'train',
    method: str | Callable[..., Any] | None = None,
) -> Apply:
  """Wraps a Flax linen module as an `apply`.

  Intermediates are named by their path: a value the module ``sow``s as
  ``self.sow('intermediates', 'hidden', h)`` is ``'hidden'`` (inside a
  submodule ``'block/hidden'``); a submodule's output is captured as
  ``'<path>/__call__'`` (e.g. ``'Dense_0/__call__'``).

  Args:
    module: the linen module. Its output is the logits, ``(logits, features)``
      or an :class:`Outputs`.
    inputs: the batch key holding the model input, or ``fn(batch) -> input``.
    features: intermediate paths to expose, or ``{name: path}``.
    train_kwarg: keyword through which the module takes the train flag (for
      BatchNorm and dropout); ``None`` if it takes none.
    method: optional module method to call instead of ``__call__``.

  Returns:
    ``apply(variables, batch, *, train, rngs=None) -> (Outputs, new_state)``.
  """
  wanted = _feature_map(features)
  captured = {path for path in wanted.values() if path.endswith('/__call__')}

  def capture_filter(mdl, method_name):
    path = '/'.join(mdl.scope.path) if mdl.scope is not None else ''
    return f'{path}/{method_name}' in captured

  def apply(variables, batch, *, train, rngs=None):
    state_collections = [c for c in variables if c != 'params']
    mutable = ['intermediates'] + (state_collections if train else [])
    kwargs = {} if train_kwarg is None else {train_kwarg: train}
    result, mutated = module.apply(
        variables,
        _get_inputs(inputs, batch),
        rngs=rngs if train else None,
        mutable=mutable,
        capture_intermediates=capture_filter if captured else False,
        method=method,
        **kwargs,
    )
    mutated = dict(mutated)
    flat = _flatten_intermediates(mutated.pop('intermediates', {}))
    outputs = _as_outputs(result, _select(flat, wanted, type(module).__name__))
    return outputs, mutated

  return apply


def from_nnx(
    model: nnx.Module,
    *,
    inputs: Inputs = 'x',
    features: Sequence[str] | Mapping[str, str] = (),
) -> tuple[Apply, dict[str, Any]]:
  """Splits a Flax NNX module into a pure `apply` and its `variables`.

  The module's ``nnx.Param`` leaves become ``variables['params']`` and all
  other state (BatchNorm statistics, dropout RNG counters) becomes
  ``variables['state']``. Inside `apply` the module is rebuilt with
  ``nnx.merge``, put in train or eval mode, and called under ``nnx.capture``
  so that values it ``sow``s as ``nnx.Intermediate`` become features (named
  by their path, e.g. ``'hidden'`` or ``'block/hidden'``). Dropout draws from
  the module's own ``nnx.Rngs`` streams, which live in ``variables['state']``;
  the `rngs` argument is accepted for a common signature and ignored.

  Args:
    model: an initialised NNX module. Its output is the logits,
      ``(logits, features)`` or an :class:`Outputs`.
    inputs: the batch key holding the model input, or ``fn(batch) -> input``.
    features: intermediate paths to expose, or ``{name: path}``.

  Returns:
    ``(apply, variables)``.
  """
  graphdef, params, state = nnx.split(model, nnx.Param, ...)
  wanted = _feature_map(features)

  def apply(variables, batch, *, train, rngs=None):
    del rngs
    # copy=True: the traced state must not be mutated in place (grad/jit).
    module = nnx.merge(graphdef, variables['params'], variables['state'], copy=True)
    if train:
      module.train()
    else:
      module.eval()
    result, intermediates = nnx.capture(module, nnx.Intermediate)(
        _get_inputs(inputs, batch)
    )
    flat = _flatten_intermediates(nnx.to_pure_dict(intermediates))
    outputs = _as_outputs(result, _select(flat, wanted, type(model).__name__))
    if not train:
      return outputs, {}
    _, _, new_state = nnx.split(module, nnx.Param, ...)
    return outputs, {'state': new_state}

  return apply, {'params': params, 'state': state}


def from_function(
    fn: Callable[..., Any],
    *,
    inputs: Inputs = 'x',
) -> Apply:
  """Wraps ``fn(params, inputs) -> logits | (logits, features) | Outputs``.

  If `fn` also takes keyword arguments ``train`` and/or ``rng``, they are
  passed (``rng`` is ``rngs['dropout']`` when training, else ``None``).

  Args:
    fn: a pure function of the parameters and the model input.
    inputs: the batch key holding the model input, or ``fn(batch) -> input``.

  Returns:
    ``apply(variables, batch, *, train, rngs=None) -> (Outputs, {})`` with
    ``variables = {'params': params}``.
  """
  parameters = inspect.signature(fn).parameters
  takes_train = 'train' in parameters
  takes_rng = 'rng' in parameters

  def apply(variables, batch, *, train, rngs=None):
    kwargs = {}
    if takes_train:
      kwargs['train'] = train
    if takes_rng:
      kwargs['rng'] = (rngs or {}).get('dropout') if train else None
    result = fn(variables['params'], _get_inputs(inputs, batch), **kwargs)
    return _as_outputs(result, {}), {}

  return apply
