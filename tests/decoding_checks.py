"""Drives a kdjax Decoder the way a generation loop does, shared by the zoo decode tests."""

import contextlib

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def numpy_variables(init_shapes, scale=0.3, seed=0):
  """Random NumPy variables of ``jax.eval_shape(model.init, ...)``'s structure
  (boxed); ``model.init`` would compile a PRNG sampler per shape."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), s.dtype),
                      init_shapes)


def decode_right_padded(step, decoder, variables, inputs, tokens, prompt_lengths,
                        cache_length):
  """Row b's first `prompt_lengths[b]` tokens as a right-padded prompt chunk,
  then one token at a time, each row at its own next position.

  The padding is junk tokens that the later steps must overwrite. Returns
  ``(logits [batch, time, vocab], cache after the prompt)`` where
  ``logits[b, p]`` came from the step that fed ``tokens[b, p]``.
  """
  tokens = np.asarray(tokens)
  batch, time = tokens.shape
  lengths = np.asarray(prompt_lengths)
  width = int(lengths.max())
  slots = np.arange(width)[None]
  junk = (tokens[:, :width] + 5) % decoder.vocab_size
  prompt = np.where(slots < lengths[:, None], tokens[:, :width], junk).astype(np.int32)
  cache = decoder.init_cache(variables, inputs, batch, cache_length)
  logits = np.zeros((batch, time, decoder.vocab_size), np.float32)
  prompt_logits, cache = step(variables, prompt, np.repeat(slots, batch, 0).astype(np.int32),
                              cache)
  prompt_cache = cache
  for b in range(batch):
    logits[b, : lengths[b]] = prompt_logits[b, : lengths[b]]
  for k in range(time - int(lengths.min())):
    positions = lengths + k
    fed = tokens[np.arange(batch), np.minimum(positions, time - 1)]
    step_logits, cache = step(variables, fed[:, None].astype(np.int32),
                              positions[:, None].astype(np.int32), cache)
    for b in range(batch):
      if positions[b] < time:
        logits[b, positions[b]] = step_logits[b, 0]
  return logits, prompt_cache


@contextlib.contextmanager
def logical_mesh(mesh, rules):
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
    yield


def shard_variables(variables, mesh, rules):
  specs = nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, rules)
  # Unboxed outside the mesh: inside it, unbox applies sharding constraints.
  return jax.device_put(nn.meta.unbox(variables), specs)


# 'heads' and 'mlp' on a model axis, the batch on a data axis (the rest replicated).
RULES = (('batch', 'data'), ('heads', 'model'), ('mlp', 'model'), ('vocab', None),
         ('embed', None), ('kv', None), ('length', None), ('position', None))


def mesh_4x2():
  return jax.make_mesh((4, 2), ('data', 'model'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def sharded_decode(decoder, variables, inputs, tokens, positions, cache_length):
  """init_cache and one step, jitted under the logical rules on a 4x2 mesh."""
  mesh = mesh_4x2()

  @jax.jit
  def run(variables, inputs, tokens, positions):
    with logical_mesh(mesh, RULES):
      cache = decoder.init_cache(variables, inputs, tokens.shape[0], cache_length)
      return decoder.step(variables, tokens, positions, cache)

  return run(shard_variables(variables, mesh, RULES), inputs, tokens, positions)
