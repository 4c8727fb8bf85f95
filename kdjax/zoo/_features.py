"""Named feature maps that kdjax.explain can differentiate, at no cost in training."""

from __future__ import annotations

from flax import linen as nn
import jax

PERTURBATIONS = 'perturbations'


def expose_feature(module: nn.Module, name: str, x: jax.Array) -> jax.Array:
  """Sows `x` into ``'intermediates'`` as `name`; adds the perturbation `name` if passed.

  Use it where the map is made and carry on with its result, so that a
  perturbation flows on through the rest of the model::

    x = expose_feature(self, 'feat_1', x)

  :mod:`kdjax.explain` passes a zero ``'perturbations'`` variable of the
  map's shape and differentiates with respect to it to get the gradient
  with respect to the map. Unlike linen's ``self.perturb``, nothing is
  created at ``init``: the variables, and so a ``TrainState`` and its
  checkpoints, hold no ``'perturbations'`` collection (whose shapes would be
  the init batch's), and an apply without one (every train and eval step)
  traces exactly the unperturbed model plus the sow. A perturbation that is
  not passed is not read, so several maps may be exposed and one of them
  perturbed.

  Args:
    module: the bound module the map belongs to (its path prefixes `name`).
    name: the feature's and the perturbation's name.
    x: the map, e.g. ``[batch, H, W, C]``.

  Returns:
    ``x``, plus the perturbation when one is passed.
  """
  if module.has_variable(PERTURBATIONS, name):
    x = x + module.get_variable(PERTURBATIONS, name)
  module.sow('intermediates', name, x)
  return x
