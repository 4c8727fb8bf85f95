"""conv2d(conv_impl='im2col') == lax.conv_general_dilated in values and gradients."""

from flax import linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from kdjax import zoo
from zoo_variables import numpy_variables

# (in, out, kernel, strides, padding, groups): 1x1/3x3, strides 1/2,
# SAME/VALID/explicit (asymmetric too), grouped, depthwise, depthwise with a
# channel multiplier, a non-square kernel.
CASES = [
    (4, 6, (3, 3), (1, 1), 'SAME', 1),
    (4, 6, (3, 3), (2, 2), 'SAME', 1),
    (4, 6, (3, 3), (2, 2), ((1, 1), (1, 1)), 1),
    (4, 6, (3, 3), (1, 1), 'VALID', 1),
    (5, 3, (1, 1), (2, 2), 'VALID', 1),
    (5, 3, (1, 1), (1, 1), 'SAME', 1),
    (4, 6, (3, 3), (1, 2), ((0, 2), (1, 0)), 1),
    (4, 6, (3, 1), (2, 1), 'SAME', 1),
    (6, 9, (1, 1), (1, 1), 'SAME', 3),
    (6, 9, (3, 3), (2, 2), ((1, 1), (1, 1)), 3),
    (4, 4, (3, 3), (1, 1), ((1, 1), (1, 1)), 4),
    (4, 4, (3, 3), (2, 2), ((1, 1), (1, 1)), 4),
    (4, 8, (3, 3), (1, 1), 'SAME', 4),
]


def _inputs(in_channels, out_channels, kernel, groups, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, 7, 6, in_channels), np.float32)
  w = rng.standard_normal((*kernel, in_channels // groups, out_channels), np.float32)
  return jnp.asarray(x), jnp.asarray(w)


@pytest.mark.parametrize('in_channels,out_channels,kernel,strides,padding,groups', CASES)
def test_values_and_gradients_equal_lax(in_channels, out_channels, kernel, strides, padding,
                                        groups):
  x, w = _inputs(in_channels, out_channels, kernel, groups)

  def loss(conv_impl, x, w):
    y = zoo.conv2d(x, w, strides=strides, padding=padding, feature_group_count=groups,
                   conv_impl=conv_impl)
    return jnp.sum(jnp.sin(y)), y

  @jax.jit
  def both(x, w):
    native = lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=groups)
    grad = lambda impl: jax.grad(loss, argnums=(1, 2), has_aux=True)(impl, x, w)
    return native, grad('lax'), grad('im2col')

  native, (grads_lax, y_lax), (grads_im2col, y_im2col) = both(x, w)
  np.testing.assert_array_equal(y_lax, native)
  np.testing.assert_array_equal(y_im2col, native)
  for a, b in zip(grads_im2col, grads_lax):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_kernel_gradient_equals_a_numpy_loop():
  # dL/dW[i, j, c, o] = sum_{n, p, q} xpad[n, s p + i, s q + j, g C' + c] * dY[n, p, q, o]
  # with g = o // (out / groups): an independent reference for a strided,
  # padded, grouped case.
  groups, strides = 2, 2
  x, w = _inputs(4, 6, (3, 3), groups, seed=1)
  cotangent = np.random.default_rng(2).standard_normal((2, 4, 3, 6)).astype(np.float32)
  f = lambda w: zoo.conv2d(x, w, strides=strides, padding=((1, 1), (1, 1)),
                           feature_group_count=groups, conv_impl='im2col')
  y, vjp = jax.vjp(f, w)
  assert y.shape == cotangent.shape
  (kernel_grad,) = vjp(jnp.asarray(cotangent))
  xpad = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = np.zeros(w.shape)
  in_per_group, out_per_group = 4 // groups, 6 // groups
  for i in range(3):
    for j in range(3):
      for o in range(6):
        g = o // out_per_group
        patch = xpad[:, i : i + 2 * 3 + 1 : strides, j : j + 2 * 2 + 1 : strides,
                     g * in_per_group : (g + 1) * in_per_group]
        expected[i, j, :, o] = np.einsum('npqc,npq->c', patch, cotangent[..., o])
  np.testing.assert_allclose(kernel_grad, expected, rtol=1e-5, atol=1e-5)


def test_check_grads():
  x, w = _inputs(2, 2, (3, 3), 1)
  x, w = x[:1, :4, :3], w * 0.3
  f = lambda x, w: zoo.conv2d(x, w, strides=2, padding='SAME', conv_impl='im2col')
  check_grads(jax.jit(f), (x, w), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


def test_conv_module_matches_flax_conv_and_pytorch_padding():
  x, _ = _inputs(4, 6, (3, 3), 1)
  conv = zoo.Conv(6, 3, strides=2, padding=1, use_bias=True)
  shapes = jax.eval_shape(conv.init, jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, shapes['params']) == {'kernel': (3, 3, 4, 6), 'bias': (6,)}
  rng = np.random.default_rng(4)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32), shapes)
  flax_conv = nn.Conv(6, (3, 3), 2, ((1, 1), (1, 1))).apply(variables, x)
  # PyTorch's padding=1, stride 2: out = floor((7 + 2 - 3) / 2) + 1 = 4 rows, 3 columns.
  assert flax_conv.shape == (2, 4, 3, 6)
  np.testing.assert_allclose(conv.apply(variables, x), flax_conv, rtol=1e-6, atol=1e-6)
  im2col = zoo.Conv(6, 3, strides=2, padding=1, use_bias=True, conv_impl='im2col')
  np.testing.assert_array_equal(im2col.apply(variables, x), conv.apply(variables, x))


def test_bad_arguments_name_themselves():
  x, w = _inputs(4, 6, (3, 3), 1)
  with pytest.raises(ValueError, match=r"conv_impl must be one of \('lax', 'im2col'\), got 'fft'"):
    zoo.conv2d(x, w, conv_impl='fft')
  with pytest.raises(ValueError, match=r'x.shape=\(2, 7, 6, 4\) and kernel.shape=\(3, 3, 4, 6\) '
                     r'do not fit feature_group_count=2'):
    zoo.conv2d(x, w, feature_group_count=2)
  with pytest.raises(ValueError, match=r'got x.shape=\(7, 6, 4\)'):
    zoo.conv2d(x[0], w)
  with pytest.raises(ValueError,
                     match=r'divisible by feature_group_count=3, got x.shape=\(2, 7, 6, 4\)'):
    zoo.Conv(6, feature_group_count=3).init(jax.random.PRNGKey(0), x)


def test_model_with_im2col_equals_model_with_lax():
  images = np.random.default_rng(3).standard_normal((2, 8, 8, 3), np.float32)
  labels = jnp.array([1, 3])
  # Strided 3x3 and 1x1 shortcut convolutions.
  make = lambda conv_impl: zoo.WideResNet(10, 1, num_classes=5, conv_impl=conv_impl)
  variables = numpy_variables(make('lax'), images)

  @jax.jit
  def loss_and_grads(params, images):
    def loss(conv_impl, params):
      logits, _ = make(conv_impl).apply({**variables, 'params': params}, images, train=True,
                                        mutable=['batch_stats'])
      return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(2), labels]), logits
    grad = lambda impl: jax.value_and_grad(loss, argnums=1, has_aux=True)(impl, params)
    return grad('lax'), grad('im2col')

  ((loss_lax, logits_lax), grads_lax), ((loss_im2col, logits_im2col), grads_im2col) = (
      loss_and_grads(variables['params'], images))
  np.testing.assert_array_equal(logits_im2col, logits_lax)
  np.testing.assert_array_equal(loss_im2col, loss_lax)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads_im2col, grads_lax)


def test_every_convolution_of_a_model_takes_the_switch():
  # Grouped 1x1, depthwise 3x3 (strides 1 and 2): one custom-VJP convolution
  # per Conv with 'im2col', none with 'lax' (a trace, no compilation).
  images = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)

  def count(conv_impl, primitive):
    model = zoo.ShuffleNetV1((48, 96, 192), (2, 1, 1), 3, num_classes=5, conv_impl=conv_impl)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, images)
    return str(jaxpr).count(primitive)

  # Stem + three per shuffle unit (4 units).
  assert count('im2col', 'custom_vjp_call') == 1 + 3 * 4
  assert count('lax', 'custom_vjp_call') == 0
  assert count('lax', 'conv_general_dilated') == 1 + 3 * 4


def test_cpu_conv_compiler_options_keep_values_and_leave_convolutions_to_xla():
  """The per-jit options change which library runs the ops, not what they compute."""
  assert zoo.cpu_conv_compiler_options('gpu') == {} == zoo.cpu_conv_compiler_options('tpu')
  options = zoo.cpu_conv_compiler_options('cpu')
  assert 'INDIVIDUAL_CONVOLUTION' not in ''.join(options.values())
  x, w = _inputs(4, 6, (3, 3), 1)

  def loss(x, w):
    y = zoo.conv2d(x, w, padding='SAME')
    return jnp.sum(jnp.tanh(y) * (y - jnp.mean(y, axis=(0, 1, 2), keepdims=True)))

  fn = jax.value_and_grad(loss, argnums=(0, 1))
  plain = jax.jit(fn)(x, w)
  tuned = jax.jit(fn, compiler_options=options)(x, w)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(tuned)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=2e-5)
  # Compiled (not run) at a size XLA hands to YNNPACK by default: with the
  # options the convolution stays XLA's own op.
  x, w = jnp.zeros((8, 16, 16, 32)), jnp.zeros((3, 3, 32, 32))
  conv = lambda x, w: zoo.conv2d(x, w, padding='SAME')

  def entry(**kwargs):
    text = jax.jit(conv, **kwargs).lower(x, w).compile().as_text()
    return text[text.index('ENTRY'):]

  assert ' convolution(' in entry(compiler_options=options)
  assert ' convolution(' not in entry() and 'ynn' in entry()  # what the options change
