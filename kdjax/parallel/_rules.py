"""Partition rules as data: logical axis rules or regex rules -> shardings."""

from __future__ import annotations

from collections.abc import Sequence
import re
from typing import Any

from flax import linen as nn
from flax.core import meta
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# (logical axis name, mesh axis | tuple of mesh axes | None), as flax's
# ``logical_axis_rules``; or (regex on the '/'-joined path, PartitionSpec).
LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]
RegexRules = Sequence[tuple[str, P]]
Rules = LogicalRules | RegexRules

_MAX_LISTED = 20


def _is_box(x: Any) -> bool:
  return isinstance(x, meta.AxisMetadata)


def key_name(key: Any) -> str:
  """One key of a jax key path as a string (dict key, attribute or index)."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path: Sequence[Any]) -> str:
  """A jax key path as the '/'-joined string that regex rules match."""
  return '/'.join(key_name(k) for k in path)


def _leaves(tree: Any) -> tuple[list[tuple[str, Any, tuple[int, ...], Any]], Any]:
  """``[(path, box_or_None, shape, leaf)]`` with metadata boxes kept whole."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_box)
  out = []
  for path, leaf in flat:
    box = leaf if _is_box(leaf) else None
    value = leaf.unbox() if box is not None else leaf
    out.append((path_str(path), box, tuple(getattr(value, 'shape', ())), leaf))
  return out, treedef


def _listing(items: Sequence[str]) -> str:
  shown = ', '.join(items[:_MAX_LISTED])
  more = len(items) - _MAX_LISTED
  return shown + (f' and {more} more' if more > 0 else '')


def rules_kind(rules: Rules) -> str:
  """``'regex'`` if every rule's target is a PartitionSpec, else ``'logical'``.

  Raises:
    ValueError: for an empty rule list, a rule that is not a pair, or a mix
      of the two kinds.
  """
  rules = list(rules)
  if not rules:
    raise ValueError('rules is empty; give logical axis rules or (regex, PartitionSpec) rules.')
  for rule in rules:
    if not isinstance(rule, (tuple, list)) or len(rule) != 2:
      raise ValueError(
          f'each rule must be a pair (logical_name, mesh_axes) or (regex, PartitionSpec); '
          f'got {rule!r}.'
      )
  is_spec = [isinstance(target, P) for _, target in rules]
  if all(is_spec):
    return 'regex'
  if not any(is_spec):
    return 'logical'
  raise ValueError(
      'rules mix (regex, PartitionSpec) pairs with logical axis rules '
      f'(logical_name, mesh_axes); use one kind per rule set. Got {rules!r}.'
  )


def _regex_specs(leaves, rules: RegexRules) -> list[P]:
  compiled = []
  for pattern, spec in rules:
    try:
      compiled.append((re.compile(pattern), spec))
    except re.error as e:
      raise ValueError(f'regex rule {pattern!r} does not compile: {e}.') from None
  specs, unmatched = [], []
  for path, _, shape, _ in leaves:
    spec = next((s for regex, s in compiled if regex.search(path)), None)
    if spec is None:
      unmatched.append(f'{path} {shape}')
    specs.append(spec)
  if unmatched:
    raise ValueError(
        f'no partition rule matches {len(unmatched)} parameter(s): '
        f'{_listing(unmatched)}. The rule patterns are {[p for p, _ in rules]}; '
        "add a rule for them, or a catch-all ('.*', PartitionSpec()) last to "
        'replicate whatever is left.'
    )
  return specs


def _logical_specs(leaves, rules: LogicalRules) -> list[P]:
  known = {name for name, _ in rules}
  specs, unboxed, unknown = [], [], {}
  for path, box, shape, _ in leaves:
    if not isinstance(box, meta.Partitioned):
      unboxed.append(f'{path} {shape}')
      specs.append(None)
      continue
    names = tuple(box.names)
    if not isinstance(box, nn.LogicallyPartitioned):
      specs.append(P(*names))  # nn.Partitioned names mesh axes directly
      continue
    for name in names:
      if name is not None and name not in known:
        unknown.setdefault(name, []).append(path)
    specs.append(nn.logical_to_mesh_axes(names, list(rules)))
  if unboxed:
    raise ValueError(
        f'logical axis rules need parameters boxed with logical axis names '
        f'(nn.with_logical_partitioning); {len(unboxed)} parameter(s) have none: '
        f'{_listing(unboxed)}. Pass the boxed variables (model.init or '
        'jax.eval_shape(model.init, ...), before nn.meta.unbox), or use regex '
        "rules with a catch-all ('.*', PartitionSpec())."
    )
  if unknown:
    detail = '; '.join(f'{name!r} (used by {_listing(paths)})' for name, paths in unknown.items())
    raise ValueError(
        f'no logical axis rule for {sorted(unknown)}: {detail}. The rules name '
        f'{sorted(known)}; add (name, None) to replicate a dimension.'
    )
  return specs


def _check_spec(path: str, shape: tuple[int, ...], spec: P, mesh: Mesh | None) -> None:
  if len(spec) > len(shape):
    raise ValueError(
        f'parameter {path} with shape {shape} has rank {len(shape)}, but its '
        f'partition spec {spec} has {len(spec)} entries.'
    )
  used = []
  for dim, entry in enumerate(spec):
    if entry is None or entry is P.UNCONSTRAINED:
      continue
    axes = (entry,) if isinstance(entry, str) else tuple(entry)
    used.extend(axes)
    if mesh is None:
      continue
    missing = [a for a in axes if a not in mesh.axis_names]
    if missing:
      raise ValueError(
          f'parameter {path} with shape {shape} is partitioned as {spec}, but the '
          f'mesh has no axis {missing}; the mesh axes are {dict(mesh.shape)}.'
      )
    size = 1
    for a in axes:
      size *= mesh.shape[a]
    if shape[dim] % size:
      raise ValueError(
          f'parameter {path} with shape {shape}: dimension {dim} (size {shape[dim]}) '
          f'is not divisible by mesh axis {entry!r} of size {size} (spec {spec}).'
      )
  repeated = sorted({a for a in used if used.count(a) > 1})
  if repeated:
    raise ValueError(
        f'parameter {path} with shape {shape}: spec {spec} uses mesh axis '
        f'{repeated} for more than one dimension.'
    )


def param_specs(tree: Any, rules: Rules, mesh: Mesh | None = None) -> Any:
  """Mesh ``PartitionSpec`` of every leaf of `tree` under `rules`.

  Two kinds of rules, as data:

  * **logical axis rules** ``[(logical_name, mesh_axes), ...]`` as in flax's
    ``logical_axis_rules``, with `mesh_axes` a mesh axis name, a tuple of
    them, or ``None`` (replicated). They apply to parameters boxed with
    ``nn.with_logical_partitioning`` (``nn.LogicallyPartitioned``), e.g. the
    variables of :class:`kdjax.zoo.DecoderLM` before ``nn.meta.unbox``. A
    name may have several rules, tried in order (flax's priority rules); a
    mesh axis is used at most once per parameter. Every logical name a
    parameter carries must have a rule (``(name, None)`` replicates), so a
    misspelt name is an error rather than a silently replicated matrix.
  * **regex rules** ``[(regex, PartitionSpec), ...]`` matched with
    ``re.search`` against the '/'-joined path of each leaf (e.g.
    ``'params/block_0/mlp/wi'`` when `tree` is the variables dict,
    ``'block_0/mlp/wi'`` when it is the params); the first match wins. A leaf
    no rule matches is an error; end with ``('.*', PartitionSpec())`` to
    replicate the rest on purpose.

  Args:
    tree: parameters or variables, boxed or not, as arrays or
      ``jax.ShapeDtypeStruct`` (``jax.eval_shape(model.init, ...)``).
    rules: logical axis rules or regex rules (not mixed).
    mesh: if given, the spec's mesh axes must exist in it and divide the
      dimensions they shard.

  Returns:
    A pytree of ``PartitionSpec`` with the structure of the *unboxed* tree.

  Raises:
    ValueError: listing the parameters no rule matches, naming the logical
      names without a rule, or naming the parameter, shape and mesh axis of a
      dimension the axis does not divide.
  """
  kind = rules_kind(rules)
  leaves, treedef = _leaves(tree)
  specs = _regex_specs(leaves, rules) if kind == 'regex' else _logical_specs(leaves, rules)
  for (path, _, shape, _), spec in zip(leaves, specs):
    _check_spec(path, shape, spec, mesh)
  return jax.tree_util.tree_unflatten(treedef, specs)


def param_shardings(tree: Any, rules: Rules, mesh: Mesh) -> Any:
  """``NamedSharding`` of every leaf of `tree` under `rules` on `mesh`.

  Give the student and the teacher each their own rules: the teacher may be
  tensor parallel or fully sharded while the student is data parallel.

  Example, a teacher sharded over ``fsdp`` and ``tensor``::

    mesh = make_mesh({'fsdp': 4, 'tensor': 2})
    rules = [('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'),
             ('vocab', 'tensor'), ('kv', None), ('position', None)]
    abstract = jax.eval_shape(teacher.init, key, tokens)  # boxed
    shardings = param_shardings(abstract, rules, mesh)

  Args:
    tree: parameters or variables (boxed or not; arrays or abstract).
    rules: logical axis rules or regex rules, see :func:`param_specs`.
    mesh: the mesh.

  Returns:
    A pytree of ``NamedSharding`` with the structure of the unboxed tree.
  """
  specs = param_specs(tree, rules, mesh)
  return jax.tree.map(
      lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P)
  )


def like_params(tree: Any, params: Any, param_shardings_tree: Any, mesh: Mesh) -> Any:
  """Shardings for `tree` (an optimizer state) that follow the parameters'.

  A leaf whose key path ends with a parameter's path and has that
  parameter's shape (Adam's ``mu`` and ``nu``, momentum traces) takes the
  parameter's sharding; every other leaf (step counts, factored second
  moments of another shape) is replicated.

  Args:
    tree: the pytree to shard, arrays or abstract.
    params: the parameters (unboxed), arrays or abstract.
    param_shardings_tree: their shardings, same structure as `params`.
    mesh: the mesh.

  Returns:
    A pytree of ``NamedSharding`` with the structure of `tree`.
  """
  by_path = {}
  flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_shardings = jax.tree_util.tree_leaves(
      param_shardings_tree, is_leaf=lambda x: isinstance(x, NamedSharding)
  )
  for (path, leaf), sharding in zip(flat_params, flat_shardings):
    by_path[tuple(key_name(k) for k in path)] = (tuple(getattr(leaf, 'shape', ())), sharding)
  replicated = NamedSharding(mesh, P())

  def pick(path, leaf):
    keys = tuple(key_name(k) for k in path)
    shape = tuple(getattr(leaf, 'shape', ()))
    for start in range(len(keys)):
      found = by_path.get(keys[start:])
      if found is not None and found[0] == shape:
        return found[1]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, tree)
