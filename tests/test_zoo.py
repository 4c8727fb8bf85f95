"""Zoo models: im2col convolution == lax convolution; shapes; features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import adapters
from kdjax import zoo


@pytest.mark.parametrize('length,kernel_size,stride,channels', [
    (40, 5, 2, 1), (20, 3, 2, 8), (11, 3, 1, 4), (10, 4, 3, 2)])
def test_im2col_conv_equals_lax_conv_values_and_grads(length, kernel_size, stride, channels):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, length, channels))
  fast = zoo.Conv1D(6, kernel_size, stride, im2col=True)
  native = zoo.Conv1D(6, kernel_size, stride, im2col=False)
  variables = fast.init(jax.random.PRNGKey(1), x)
  np.testing.assert_allclose(
      fast.apply(variables, x), native.apply(variables, x), rtol=1e-5, atol=1e-5)
  assert fast.apply(variables, x).shape == (3, -(-length // stride), 6)

  def loss(module):
    return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

  g_fast = jax.grad(loss(fast), argnums=(0, 1))(variables, x)
  g_native = jax.grad(loss(native), argnums=(0, 1))(variables, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_fast, g_native)


def test_convnet_and_mlp_shapes_and_features():
  x = jnp.ones((4, 40))
  net = zoo.ConvNet1D(dropout_rate=0.5)
  variables = net.init(jax.random.PRNGKey(0), x)
  apply = adapters.from_linen(net, features=['act_0', 'act_2'])
  outputs, _ = apply(variables, {'x': x}, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  assert outputs.logits.shape == (4, 10)
  assert outputs.features['act_0'].shape == (4, 20, 32)
  assert outputs.features['act_2'].shape == (4, 5, 32)
  mlp = zoo.MLP(hidden_sizes=(16, 8), num_classes=3, dropout_rate=0.2)
  variables = mlp.init(jax.random.PRNGKey(0), x)
  outputs, _ = adapters.from_linen(mlp, features=['hidden_1'])(variables, {'x': x}, train=False)
  assert outputs.logits.shape == (4, 3) and outputs.features['hidden_1'].shape == (4, 8)
  counts = jax.tree.map(np.size, variables['params'])
  assert sum(jax.tree.leaves(counts)) == 40 * 16 + 16 + 16 * 8 + 8 + 8 * 3 + 3


def test_convnet_layer_lists_must_agree():
  net = zoo.ConvNet1D(channels=(8, 8, 8, 8))
  with pytest.raises(ValueError, match=r"one entry per layer.*'channels': 4, 'kernel_sizes': 3"):
    net.init(jax.random.PRNGKey(0), jnp.ones((2, 40)))
