"""CIFAR VGG with BatchNorm (vgg13, vgg8) of RepDistiller/mdistiller."""

from __future__ import annotations

from collections.abc import Sequence

from flax import linen as nn
import jax

from kdjax.zoo import _cifar_layers as layers
from kdjax.zoo._conv import Conv
from kdjax.zoo._conv import check_conv_impl
from kdjax.zoo._features import expose_feature

VGG_CONFIGS = {
    'vgg8': ((64,), (128,), (256,), (512,), (512,)),
    'vgg11': ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    'vgg13': ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    'vgg16': ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    'vgg19': ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class CifarVGG(nn.Module):
  """The CIFAR VGG (with BatchNorm) of RepDistiller and mdistiller.

  Five blocks of 3x3 convolutions (with bias) + BN + ReLU, where the last
  ReLU of each block is applied outside it so that its pre-activation can be
  read; 2x2 max pooling after blocks 0, 1 and 2 (and after block 3 only for
  64x64 inputs, as the original), global average pooling and one linear
  classifier on the 512 channels. The benchmark's ``vgg13``/``vgg8`` are the
  ``_bn`` variants (``model_dict['vgg13'] = vgg13_bn``).

  Sown features (collection ``'intermediates'``, as mdistiller's ``feats``),
  for 32x32 inputs:

  * ``feat_0..feat_4``: each block's output after ReLU, ``[b, 32, 32, 64]``,
    ``[b, 16, 16, 128]``, ``[b, 8, 8, 256]``, ``[b, 4, 4, 512]``,
    ``[b, 4, 4, 512]``.
  * ``preact_0 = feat_0``; ``preact_1..preact_4``: the same before the ReLU.
  * ``pooled``: the pooled embedding ``[b, 512]``.

  Each is exposed with :func:`kdjax.zoo.expose_feature` where it is made, so
  :mod:`kdjax.explain` can differentiate with respect to it by name.

  Attributes:
    blocks: output channels of each convolution, per block (five blocks).
    num_classes: output logits.
    conv_impl: ``'lax'`` or ``'im2col'`` (see :func:`kdjax.zoo.conv2d`).

  References:
    Simonyan and Zisserman, "Very Deep Convolutional Networks for
    Large-Scale Image Recognition", ICLR 2015; Tian, Krishnan and Isola,
    "Contrastive Representation Distillation", ICLR 2020
    (github.com/HobbitLong/RepDistiller, ``models/vgg.py``).
  """

  blocks: Sequence[Sequence[int]]
  num_classes: int = 100
  conv_impl: str = 'lax'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``[batch, height, width, 3]`` to logits ``[batch, num_classes]``."""
    check_conv_impl(self.conv_impl)
    layers.check_image('CifarVGG', x)
    if len(self.blocks) != 5:
      raise ValueError(f'CifarVGG blocks needs 5 entries, got {len(self.blocks)}.')
    height = x.shape[1]
    for b, widths in enumerate(self.blocks):
      if b > 0 and (b < 4 or height == 64):
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for i, width in enumerate(widths):
        if i > 0:
          x = nn.relu(x)
        x = Conv(width, 3, 1, 1, use_bias=True, conv_impl=self.conv_impl,
                 name=f'block{b}_conv{i}')(x)
        x = layers.batch_norm(train, f'block{b}_bn{i}')(x)
      if b > 0:
        x = expose_feature(self, f'preact_{b}', x)
      x = expose_feature(self, f'feat_{b}', nn.relu(x))
      if b == 0:
        x = expose_feature(self, 'preact_0', x)
    pooled = expose_feature(self, 'pooled', layers.global_avg_pool(x))
    return nn.Dense(self.num_classes, kernel_init=layers.normal_001(),
                    name='classifier')(pooled)


def vgg13(num_classes: int = 100, conv_impl: str = 'lax') -> CifarVGG:
  """VGG-13 with BatchNorm, 9,462,180 parameters; see :class:`CifarVGG`."""
  return CifarVGG(VGG_CONFIGS['vgg13'], num_classes, conv_impl)


def vgg8(num_classes: int = 100, conv_impl: str = 'lax') -> CifarVGG:
  """VGG-8 with BatchNorm, 3,965,028 parameters; see :class:`CifarVGG`."""
  return CifarVGG(VGG_CONFIGS['vgg8'], num_classes, conv_impl)
