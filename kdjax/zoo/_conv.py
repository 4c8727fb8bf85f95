"""2-D convolution with a switch for an im2col weight gradient (fast on CPU)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
from typing import Any

from flax import linen as nn
import jax
from jax import lax
import jax.numpy as jnp

CONV_IMPLS = ('lax', 'im2col')
_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')

Padding = str | Sequence[tuple[int, int]]


def check_conv_impl(conv_impl: str) -> None:
  """Raises a ValueError naming `conv_impl` unless it is 'lax' or 'im2col'."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}.")


def _explicit_padding(
    spatial: tuple[int, int], window: tuple[int, int], strides: tuple[int, int],
    padding: Padding,
) -> tuple[tuple[int, int], ...]:
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(spatial, window, strides, padding.upper()))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _lax_conv(x, kernel, strides, padding, groups):
  return lax.conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=_DIMENSION_NUMBERS,
      feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _im2col_conv(x, kernel, strides, padding, groups):
  return _lax_conv(x, kernel, strides, padding, groups)


def _im2col_fwd(x, kernel, strides, padding, groups):
  return _lax_conv(x, kernel, strides, padding, groups), (x, kernel)


def _kernel_grad(x, grads, kernel_shape, strides, padding, groups):
  """d loss / d kernel, tap by tap: (shifted input)^T @ output grads.

  For tap ``(i, j)`` the input pixels that meet kernel entry ``(i, j)`` are a
  strided slice of the padded input; the kernel gradient at that tap is that
  slice, flattened to ``[pixels, in]``, transposed times the output gradient
  ``[pixels, out]`` (one product per group). A depthwise kernel (one input
  and one output channel per group) needs no product: a multiply-and-sum.
  One matrix product per tap measured faster on CPU than one product of the
  concatenated patches (no patch matrix kh*kw times the input is built).
  """
  kh, kw, in_per_group, out = kernel_shape
  batch, out_h, out_w, _ = grads.shape
  if any(padding[0]) or any(padding[1]):
    x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  sh, sw = strides
  pixels = batch * out_h * out_w
  depthwise = in_per_group == 1 and out == groups
  grads = grads.reshape(pixels, groups, out // groups)
  per_tap = []
  for i in range(kh):
    for j in range(kw):
      tap = x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]
      tap = tap.reshape(pixels, groups, in_per_group)
      if depthwise:
        per_tap.append(jnp.sum(tap * grads, axis=0, dtype=jnp.float32)[None])
      else:
        # [in_per_group, groups, out_per_group]
        per_tap.append(jnp.einsum('pgc,pgo->cgo', tap, grads,
                                  preferred_element_type=jnp.float32))
  return jnp.stack(per_tap).reshape(kh, kw, in_per_group, out)


def _im2col_bwd(strides, padding, groups, residuals, grads):
  x, kernel = residuals
  # The convolution is linear in x: its transpose is the input gradient (the
  # same transposed convolution that autodiff of lax.conv_general_dilated
  # uses), with no forward pass recomputed.
  transpose = jax.linear_transpose(
      lambda inputs: _lax_conv(inputs, kernel, strides, padding, groups),
      jax.ShapeDtypeStruct(x.shape, x.dtype))
  (x_grad,) = transpose(grads)
  kernel_grad = _kernel_grad(x, grads, kernel.shape, strides, padding, groups)
  return x_grad, kernel_grad.astype(kernel.dtype)


_im2col_conv.defvjp(_im2col_fwd, _im2col_bwd)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = 'SAME',
    feature_group_count: int = 1,
    conv_impl: str = 'lax',
) -> jax.Array:
  """A 2-D convolution, NHWC input and HWIO kernel, with a choice of gradient.

  The value is always ``lax.conv_general_dilated``. With
  ``conv_impl='im2col'`` the reverse-mode gradient with respect to the kernel
  is computed as a matrix product of the input's patches (strided slices of
  the padded input, one per kernel tap) with the output gradient, through a
  ``jax.custom_vjp``; the input gradient stays the transposed convolution.
  Same values and gradients (tested), but XLA's CPU weight-gradient
  convolution is an order of magnitude slower than this matrix product.
  Grouped and depthwise convolutions (``feature_group_count > 1``) take the
  same path, with the groups as a batch dimension of the product. A
  ``custom_vjp`` has no forward-mode derivative: use ``'lax'`` for
  ``jax.jvp``/``jax.jacfwd``.

  Args:
    x: input ``[batch, height, width, in_channels]``.
    kernel: ``[kernel_h, kernel_w, in_channels // feature_group_count,
      out_channels]``.
    strides: one int or ``(stride_h, stride_w)``.
    padding: ``'SAME'``, ``'VALID'`` or ``((top, bottom), (left, right))``.
    feature_group_count: groups; ``in_channels`` for a depthwise convolution.
    conv_impl: ``'lax'`` (autodiff of ``lax.conv_general_dilated``) or
      ``'im2col'`` (same forward, patches x matrix kernel gradient).

  Returns:
    ``[batch, out_height, out_width, out_channels]``.

  Raises:
    ValueError: for a bad `conv_impl`, ranks, or channel counts that do not
      fit `feature_group_count`.
  """
  check_conv_impl(conv_impl)
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(
        f'conv2d takes x [batch, height, width, channels] and kernel '
        f'[kernel_h, kernel_w, in, out], got x.shape={x.shape} and '
        f'kernel.shape={kernel.shape}.')
  groups = int(feature_group_count)
  in_channels, out_channels = x.shape[-1], kernel.shape[-1]
  if (groups < 1 or in_channels % groups or out_channels % groups
      or kernel.shape[2] * groups != in_channels):
    raise ValueError(
        f'x.shape={x.shape} and kernel.shape={kernel.shape} do not fit '
        f'feature_group_count={feature_group_count}: need in_channels = '
        f'kernel.shape[2] * groups and out_channels divisible by groups.')
  strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
  pads = _explicit_padding(x.shape[1:3], kernel.shape[:2], strides, padding)
  if conv_impl == 'lax':
    return _lax_conv(x, kernel, strides, pads, groups)
  return _im2col_conv(x, kernel, strides, pads, groups)


# XLA:CPU's YNNPACK library fusions: which op kinds it hands to YNNPACK.
_YNN_FUSION_TYPE = 'xla_cpu_experimental_ynn_fusion_type'
# Everything XLA:CPU's default gives YNNPACK (individual dots, reductions)
# except the convolutions: XLA's own convolutions are the fast ones here.
CPU_CONV_FUSION_TYPES = ('LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT', 'LIBRARY_FUSION_TYPE_REDUCE')


def cpu_conv_compiler_options(backend: str | None = None) -> dict[str, str]:
  """Per-jit XLA options for convolutional networks on CPU (``{}`` elsewhere).

  JAX 0.10's XLA:CPU hands convolutions to YNNPACK by default (the
  ``LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION`` library fusion, alongside
  individual dots and reductions). On the 2-core Xeon these docs were
  measured on, those convolutions were 2 to 4 times slower than XLA's own:
  a 3x3, 64->64 convolution at 32x32, batch 64, took 37 / 35 / 139 ms
  (forward / input gradient / kernel gradient) by default and 21 / 20 /
  38 ms with these options, and the CIFAR KD step of
  ``benchmarks/cifar_step.py`` (``lax`` convolutions) 0.69 times the time
  (docs/performance.md).
  The options keep YNNPACK for dots and reductions (dropping the
  reductions too made BatchNorm's statistics in training mode slower
  than the default) and leave convolutions to XLA.

  They are compiler options of one ``jax.jit``, not global flags: pass
  them as ``jax.jit(step, compiler_options=cpu_conv_compiler_options())``;
  nothing is set at import. The values computed are the same (the ops are
  the same; only the library that runs them changes).

  Args:
    backend: the platform the function will be compiled for; default
      ``jax.default_backend()``.

  Returns:
    ``{'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,
    LIBRARY_FUSION_TYPE_REDUCE'}`` for ``'cpu'``, else ``{}``.
  """
  backend = jax.default_backend() if backend is None else backend
  if backend != 'cpu':
    return {}
  return {_YNN_FUSION_TYPE: ','.join(CPU_CONV_FUSION_TYPES)}


def torch_conv_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32):
  """He normal on fan-out, ``N(0, 2 / (kh * kw * out))``, as the CIFAR zoo's PyTorch code."""
  fan_out = shape[0] * shape[1] * shape[-1]
  return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / fan_out).astype(dtype)


class Conv(nn.Module):
  """2-D convolution (NHWC) with the ``conv_impl`` switch of :func:`conv2d`.

  Parameters are those of ``flax.linen.Conv``: ``'kernel'`` with shape
  ``[kernel_h, kernel_w, in // feature_group_count, features]`` and, with
  `use_bias`, ``'bias'`` ``[features]``.

  Attributes:
    features: output channels.
    kernel_size: ``k`` or ``(kh, kw)``.
    strides: ``s`` or ``(sh, sw)``.
    padding: ``'SAME'``, ``'VALID'``, an int ``p`` (``p`` on every side, as
      PyTorch's ``padding=p``) or ``((top, bottom), (left, right))``.
    feature_group_count: groups (``in`` channels for depthwise).
    use_bias: add a bias.
    conv_impl: ``'lax'`` or ``'im2col'``, see :func:`conv2d`.
    kernel_init: kernel initializer (default :func:`torch_conv_init`).
    bias_init: bias initializer.
  """

  features: int
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  padding: Padding | int = 'SAME'
  feature_group_count: int = 1
  use_bias: bool = False
  conv_impl: str = 'lax'
  kernel_init: Callable[..., jax.Array] = torch_conv_init
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``[batch, height, width, in]`` to ``[batch, out_h, out_w, features]``."""
    check_conv_impl(self.conv_impl)
    size = self.kernel_size
    kh, kw = (size, size) if isinstance(size, int) else tuple(size)
    groups = self.feature_group_count
    if x.ndim != 4 or x.shape[-1] % groups:
      raise ValueError(
          f'Conv takes x [batch, height, width, channels] with channels '
          f'divisible by feature_group_count={groups}, got x.shape={x.shape}.')
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, x.shape[-1] // groups, self.features))
    padding = self.padding
    if isinstance(padding, int):
      padding = ((padding, padding), (padding, padding))
    y = conv2d(x, kernel, strides=self.strides, padding=padding,
               feature_group_count=groups, conv_impl=self.conv_impl)
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,))
      y = y + bias[None, None, None, :]
    return y
