"""He-scaled NumPy variables for zoo models, shared by the zoo tests."""

import jax
import numpy as np


def numpy_variables(model, images):
  """He-scaled NumPy variables of the model's shapes.

  ``model.init`` would compile a threefry sampler per parameter shape (about
  a second each on 2 CPU cores); these tests need values, not that init.
  """
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'var' in name or 'scale' in name:
      return np.ones(leaf.shape, np.float32) + 0.1 * rng.random(leaf.shape, np.float32)
    if 'mean' in name or 'bias' in name:
      return 0.1 * rng.standard_normal(leaf.shape, np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return rng.standard_normal(leaf.shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))

  return jax.tree_util.tree_map_with_path(fill, shapes)
