"""A small 1-D convolutional classifier (for MNIST-1D signals)."""

from __future__ import annotations

from collections.abc import Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp

from kdjax.zoo._features import expose_feature


def _same_padding(length: int, kernel_size: int, stride: int) -> tuple[int, int]:
  out = -(-length // stride)
  total = max((out - 1) * stride + kernel_size - length, 0)
  return total // 2, total - total // 2


class Conv1D(nn.Module):
  """1-D convolution with 'SAME' padding on ``[batch, length, channels]``.

  With ``im2col=True`` the convolution is written as a matrix product of the
  input's patches with the kernel: the same values and gradients as
  ``lax.conv_general_dilated`` (tested), but several times faster under XLA
  on CPU for small layers, where the native convolution (and above all its
  weight gradient) is slow.

  Attributes:
    features: output channels.
    kernel_size: taps.
    stride: step between output positions.
    im2col: use patches x matrix instead of ``lax.conv_general_dilated``.
  """

  features: int
  kernel_size: int
  stride: int = 1
  im2col: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``[batch, length, in]`` to ``[batch, ceil(length/stride), features]``."""
    channels = x.shape[-1]
    kernel = self.param(
        'kernel', nn.initializers.he_normal(), (self.kernel_size, channels, self.features)
    )
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    padding = _same_padding(x.shape[1], self.kernel_size, self.stride)
    if self.im2col:
      padded = jnp.pad(x, ((0, 0), padding, (0, 0)))
      out_length = -(-x.shape[1] // self.stride)
      span = self.stride * (out_length - 1) + 1
      patches = jnp.concatenate(
          [padded[:, j : j + span : self.stride] for j in range(self.kernel_size)], axis=-1
      )
      y = patches @ kernel.reshape(self.kernel_size * channels, self.features)
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, (self.stride,), (padding,), dimension_numbers=('NWC', 'WIO', 'NWC')
      )
    return y + bias[None, None, :]


class ConvNet1D(nn.Module):
  """Strided 1-D convolutions, ReLU, dropout, then a linear classifier.

  The convolutional MNIST-1D baseline of Greydanus (2020), "Scaling Down
  Deep Learning" (arXiv:2011.14439), in a strided form: each layer's
  activation (after the ReLU) is sown as ``'act_<i>'`` ``[batch, length_i,
  channels_i]`` with :func:`kdjax.zoo.expose_feature`, so gradients with
  respect to it are reachable by name (a ``'perturbations'`` entry).

  Attributes:
    channels: output channels of each convolution.
    kernel_sizes: taps of each convolution.
    strides: stride of each convolution.
    num_classes: output logits.
    dropout_rate: dropout on the flattened features in training.
    im2col: see :class:`Conv1D`.
  """

  channels: Sequence[int] = (32, 32, 32)
  kernel_sizes: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  num_classes: int = 10
  dropout_rate: float = 0.0
  im2col: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps ``[batch, length]`` or ``[batch, length, 1]`` to ``[batch, num_classes]``."""
    lengths = {'channels': len(self.channels), 'kernel_sizes': len(self.kernel_sizes),
               'strides': len(self.strides)}
    if len(set(lengths.values())) != 1:
      raise ValueError(f'ConvNet1D needs one entry per layer in each of {lengths}')
    if x.ndim == 2:
      x = x[:, :, None]
    for i, (width, size, stride) in enumerate(zip(self.channels, self.kernel_sizes, self.strides)):
      x = nn.relu(Conv1D(width, size, stride, im2col=self.im2col, name=f'conv_{i}')(x))
      x = expose_feature(self, f'act_{i}', x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name='logits')(x)
