"""Wide residual networks (wrn_40_2, wrn_16_2, wrn_40_1) of RepDistiller/mdistiller."""

from __future__ import annotations

from collections.abc import Callable
import functools

from flax import linen as nn
import jax

from kdjax.zoo import _cifar_layers as layers
from kdjax.zoo._conv import Conv
from kdjax.zoo._conv import check_conv_impl
from kdjax.zoo._features import expose_feature


class _WideBlock(nn.Module):
  """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut.

  Where the channel count changes, the shortcut is a 1x1 convolution of the
  activated input; otherwise it is the raw input. Returns the sum; the
  block's first BN output (the pre-activation of its input) goes through
  `expose_preact` (the parent's sow-and-perturb) when one is given.
  """

  features: int
  strides: int
  conv_impl: str

  @nn.compact
  def __call__(self, x: jax.Array, train: bool,
               expose_preact: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    equal_in_out = x.shape[-1] == self.features
    preact = layers.batch_norm(train, 'bn1')(x)
    if expose_preact is not None:
      preact = expose_preact(preact)
    activated = nn.relu(preact)
    out = Conv(self.features, 3, self.strides, 1, conv_impl=self.conv_impl,
               name='conv1')(activated)
    out = nn.relu(layers.batch_norm(train, 'bn2')(out))
    out = Conv(self.features, 3, 1, 1, conv_impl=self.conv_impl, name='conv2')(out)
    if equal_in_out:
      shortcut = x
    else:
      shortcut = Conv(self.features, 1, self.strides, 0, conv_impl=self.conv_impl,
                      name='conv_shortcut')(activated)
    return shortcut + out


class WideResNet(nn.Module):
  """WRN-depth-k of Zagoruyko and Komodakis, as in RepDistiller and mdistiller.

  A 3x3 stem convolution (16 channels), three stages of ``(depth - 4) // 6``
  pre-activation blocks with ``16 k``, ``32 k``, ``64 k`` channels (strides
  1, 2, 2), a final BN and ReLU, global average pooling and a linear
  classifier. No dropout (the benchmark's ``dropRate`` is 0).

  Sown features (collection ``'intermediates'``, as mdistiller's ``feats``;
  the network is pre-activation, so the stage outputs are residual sums):

  * ``feat_0``: the stem convolution's output ``[b, 32, 32, 16]`` (for
    32x32 inputs); ``feat_1..feat_3``: the stage outputs
    ``[b, 32, 32, 16k]``, ``[b, 16, 16, 32k]``, ``[b, 8, 8, 64k]``.
  * ``preact_0 = feat_0``; ``preact_1``, ``preact_2``: the first BN of the
    next stage applied to ``feat_1``, ``feat_2``; ``preact_3``: the final BN
    applied to ``feat_3`` (mdistiller calls these BNs a second time; here
    they are the values of the forward pass, the same numbers without a
    second update of the running statistics).
  * ``pooled``: the pooled embedding ``[b, 64k]``.

  Each is exposed with :func:`kdjax.zoo.expose_feature` where it is made, so
  :mod:`kdjax.explain` can differentiate with respect to it by name.

  Attributes:
    depth: ``6 n + 4`` layers.
    widen_factor: ``k``.
    num_classes: output logits.
    conv_impl: ``'lax'`` or ``'im2col'`` (see :func:`kdjax.zoo.conv2d`).

  References:
    Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016; Tian,
    Krishnan and Isola, "Contrastive Representation Distillation", ICLR 2020
    (github.com/HobbitLong/RepDistiller, ``models/wrn.py``).
  """

  depth: int
  widen_factor: int
  num_classes: int = 100
  conv_impl: str = 'lax'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``[batch, height, width, 3]`` to logits ``[batch, num_classes]``."""
    check_conv_impl(self.conv_impl)
    layers.check_image('WideResNet', x)
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f'WideResNet depth must be 6n+4 (16, 40), got {self.depth}.')
    blocks = (self.depth - 4) // 6
    widths = [16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor]
    x = Conv(16, 3, 1, 1, conv_impl=self.conv_impl, name='conv1')(x)
    x = expose_feature(self, 'feat_0', x)
    x = expose_feature(self, 'preact_0', x)
    for stage, (planes, stride) in enumerate(zip(widths, (1, 2, 2))):
      for i in range(blocks):
        # preact_<stage> is the first BN of the next stage, applied to feat_<stage>.
        hook = (functools.partial(expose_feature, self, f'preact_{stage}')
                if i == 0 and stage > 0 else None)
        x = _WideBlock(planes, stride if i == 0 else 1, self.conv_impl,
                       name=f'block{stage + 1}_{i}')(x, train, hook)
      x = expose_feature(self, f'feat_{stage + 1}', x)
    preact = expose_feature(self, 'preact_3', layers.batch_norm(train, 'bn1')(x))
    pooled = expose_feature(self, 'pooled', layers.global_avg_pool(nn.relu(preact)))
    return nn.Dense(self.num_classes, kernel_init=layers.torch_default_kernel_init(),
                    name='fc')(pooled)


def wrn_40_2(num_classes: int = 100, conv_impl: str = 'lax') -> WideResNet:
  """WRN-40-2, 2,255,156 parameters; see :class:`WideResNet`."""
  return WideResNet(40, 2, num_classes, conv_impl)


def wrn_40_1(num_classes: int = 100, conv_impl: str = 'lax') -> WideResNet:
  """WRN-40-1, 569,780 parameters; see :class:`WideResNet`."""
  return WideResNet(40, 1, num_classes, conv_impl)


def wrn_16_2(num_classes: int = 100, conv_impl: str = 'lax') -> WideResNet:
  """WRN-16-2, 703,284 parameters; see :class:`WideResNet`."""
  return WideResNet(16, 2, num_classes, conv_impl)


def wrn_16_1(num_classes: int = 100, conv_impl: str = 'lax') -> WideResNet:
  """WRN-16-1; see :class:`WideResNet`."""
  return WideResNet(16, 1, num_classes, conv_impl)
