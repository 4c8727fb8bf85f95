"""CIFAR ResNets (resnet20/56/110, resnet8x4, resnet32x4) of RepDistiller/mdistiller."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import functools

from flax import linen as nn
import jax

from kdjax.zoo import _cifar_layers as layers
from kdjax.zoo._conv import Conv
from kdjax.zoo._conv import check_conv_impl
from kdjax.zoo._features import expose_feature


class _BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, then ReLU."""

  features: int
  strides: int
  project: bool
  conv_impl: str

  @nn.compact
  def __call__(self, x: jax.Array, train: bool,
               expose_preact: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """`expose_preact` (the parent's sow-and-perturb) sees the residual sum before the ReLU."""
    out = Conv(self.features, 3, self.strides, 1, conv_impl=self.conv_impl, name='conv1')(x)
    out = nn.relu(layers.batch_norm(train, 'bn1')(out))
    out = Conv(self.features, 3, 1, 1, conv_impl=self.conv_impl, name='conv2')(out)
    out = layers.batch_norm(train, 'bn2')(out)
    if self.project:
      x = Conv(self.features, 1, self.strides, 0, conv_impl=self.conv_impl,
               name='downsample_conv')(x)
      x = layers.batch_norm(train, 'downsample_bn')(x)
    preact = out + x
    if expose_preact is not None:
      preact = expose_preact(preact)
    return nn.relu(preact)


class CifarResNet(nn.Module):
  """The CIFAR ResNet of He et al. (2016) as in RepDistiller and mdistiller.

  A 3x3 stem convolution (``widths[0]`` channels), BN and ReLU, then three
  stages of ``(depth - 2) // 6`` basic blocks with ``widths[1:]`` channels
  (strides 1, 2, 2; a 1x1 convolution + BN projects the shortcut where the
  shape changes), global average pooling and a linear classifier. Every
  convolution is bias-free and padded like PyTorch's ``padding=k // 2``.

  Sown features (collection ``'intermediates'``, as mdistiller's ``feats``):

  * ``feat_0``: the stem after ReLU ``[b, 32, 32, widths[0]]`` (for 32x32
    inputs); ``feat_1..feat_3``: each stage's output after the last ReLU
    (``[b, 32, 32, widths[1]]``, ``[b, 16, 16, widths[2]]``,
    ``[b, 8, 8, widths[3]]``).
  * ``preact_0 = feat_0``; ``preact_1..preact_3``: the same stage outputs
    before the last ReLU (residual sum).
  * ``pooled``: the pooled embedding ``[b, widths[3]]``.

  Each is exposed with :func:`kdjax.zoo.expose_feature` where it is made, so
  :mod:`kdjax.explain` can differentiate with respect to it by name.

  Attributes:
    depth: ``6 n + 2`` layers.
    widths: channels of the stem and the three stages.
    num_classes: output logits.
    conv_impl: ``'lax'`` or ``'im2col'`` (see :func:`kdjax.zoo.conv2d`).

  References:
    He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition",
    CVPR 2016; Tian, Krishnan and Isola, "Contrastive Representation
    Distillation", ICLR 2020 (github.com/HobbitLong/RepDistiller,
    ``models/resnet.py``).
  """

  depth: int
  widths: Sequence[int] = (16, 16, 32, 64)
  num_classes: int = 100
  conv_impl: str = 'lax'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``[batch, height, width, 3]`` to logits ``[batch, num_classes]``."""
    check_conv_impl(self.conv_impl)
    layers.check_image('CifarResNet', x)
    if self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(f'CifarResNet depth must be 6n+2 (20, 32, 56, 110), got {self.depth}.')
    if len(self.widths) != 4:
      raise ValueError(f'CifarResNet widths needs 4 entries, got {tuple(self.widths)}.')
    blocks = (self.depth - 2) // 6
    x = Conv(self.widths[0], 3, 1, 1, conv_impl=self.conv_impl, name='conv1')(x)
    x = nn.relu(layers.batch_norm(train, 'bn1')(x))
    x = expose_feature(self, 'feat_0', x)
    x = expose_feature(self, 'preact_0', x)
    in_planes = self.widths[0]
    for stage, (planes, stride) in enumerate(zip(self.widths[1:], (1, 2, 2))):
      for i in range(blocks):
        block_stride = stride if i == 0 else 1
        last = i == blocks - 1
        x = _BasicBlock(
            planes, block_stride, project=block_stride != 1 or in_planes != planes,
            conv_impl=self.conv_impl, name=f'layer{stage + 1}_{i}')(
                x, train, functools.partial(expose_feature, self, f'preact_{stage + 1}')
                if last else None)
        in_planes = planes
      x = expose_feature(self, f'feat_{stage + 1}', x)
    pooled = expose_feature(self, 'pooled', layers.global_avg_pool(x))
    return nn.Dense(
        self.num_classes, kernel_init=layers.torch_default_kernel_init(),
        bias_init=layers.torch_default_bias_init(pooled.shape[-1]), name='fc')(pooled)


def resnet20(num_classes: int = 100, conv_impl: str = 'lax') -> CifarResNet:
  """ResNet-20 (widths 16-16-32-64), 278,324 parameters; see :class:`CifarResNet`."""
  return CifarResNet(20, (16, 16, 32, 64), num_classes, conv_impl)


def resnet32(num_classes: int = 100, conv_impl: str = 'lax') -> CifarResNet:
  """ResNet-32 (widths 16-16-32-64); see :class:`CifarResNet`."""
  return CifarResNet(32, (16, 16, 32, 64), num_classes, conv_impl)


def resnet56(num_classes: int = 100, conv_impl: str = 'lax') -> CifarResNet:
  """ResNet-56 (widths 16-16-32-64), 861,620 parameters; see :class:`CifarResNet`."""
  return CifarResNet(56, (16, 16, 32, 64), num_classes, conv_impl)


def resnet110(num_classes: int = 100, conv_impl: str = 'lax') -> CifarResNet:
  """ResNet-110 (widths 16-16-32-64), 1,736,564 parameters; see :class:`CifarResNet`."""
  return CifarResNet(110, (16, 16, 32, 64), num_classes, conv_impl)


def resnet8x4(num_classes: int = 100, conv_impl: str = 'lax') -> CifarResNet:
  """ResNet-8 four times as wide (32-64-128-256), 1,233,540 parameters.

  See :class:`CifarResNet`.
  """
  return CifarResNet(8, (32, 64, 128, 256), num_classes, conv_impl)


def resnet32x4(num_classes: int = 100, conv_impl: str = 'lax') -> CifarResNet:
  """ResNet-32 four times as wide (32-64-128-256), 7,433,860 parameters.

  See :class:`CifarResNet`.
  """
  return CifarResNet(32, (32, 64, 128, 256), num_classes, conv_impl)
