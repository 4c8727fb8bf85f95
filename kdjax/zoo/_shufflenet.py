"""The CIFAR ShuffleNetV1 and ShuffleNetV2 of RepDistiller/mdistiller."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import functools

from flax import linen as nn
import jax
import jax.numpy as jnp

from kdjax.zoo import _cifar_layers as layers
from kdjax.zoo._conv import Conv
from kdjax.zoo._conv import check_conv_impl
from kdjax.zoo._features import expose_feature

# The parent's sow-and-perturb of a block's pre-activation (None: not exposed).
_Expose = Callable[[jax.Array], jax.Array] | None


def _conv(features, kernel_size, strides, padding, conv_impl, name, groups=1):
  # The ShuffleNets keep PyTorch's default initialisation.
  return Conv(features, kernel_size, strides, padding, feature_group_count=groups,
              conv_impl=conv_impl, kernel_init=layers.torch_default_kernel_init(),
              name=name)


def _dense(num_classes, fan_in):
  return nn.Dense(num_classes, kernel_init=layers.torch_default_kernel_init(),
                  bias_init=layers.torch_default_bias_init(fan_in), name='linear')


def _stem(module, x, train, conv_impl):
  x = _conv(24, 1, 1, 0, conv_impl, 'conv1')(x)
  x = expose_feature(module, 'feat_0', nn.relu(layers.batch_norm(train, 'bn1')(x)))
  return expose_feature(module, 'preact_0', x)


class _ShuffleV1Block(nn.Module):
  """Grouped 1x1-BN-ReLU, shuffle, depthwise 3x3-BN, grouped 1x1-BN, + shortcut.

  With stride 2 the shortcut is a 3x3 average pooling (zero padding counted,
  as PyTorch's default) concatenated to the branch; otherwise it is added.
  Returns the output after ReLU; `expose_preact` sees it before.
  """

  features: int
  strides: int
  groups: int
  conv_impl: str

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, expose_preact: _Expose = None) -> jax.Array:
    mid = int(self.features / 4)
    first_groups = 1 if x.shape[-1] == 24 else self.groups
    out = _conv(mid, 1, 1, 0, self.conv_impl, 'conv1', first_groups)(x)
    out = nn.relu(layers.batch_norm(train, 'bn1')(out))
    out = layers.channel_shuffle(out, first_groups)
    out = _conv(mid, 3, self.strides, 1, self.conv_impl, 'conv2', mid)(out)
    out = nn.relu(layers.batch_norm(train, 'bn2')(out))
    out = _conv(self.features, 1, 1, 0, self.conv_impl, 'conv3', self.groups)(out)
    out = layers.batch_norm(train, 'bn3')(out)
    if self.strides == 2:
      shortcut = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                             count_include_pad=True)
      preact = jnp.concatenate([out, shortcut], axis=-1)
    else:
      preact = out + x
    if expose_preact is not None:
      preact = expose_preact(preact)
    return nn.relu(preact)


class ShuffleNetV1(nn.Module):
  """The CIFAR ShuffleNetV1 of RepDistiller and mdistiller (``ShuffleV1``).

  A 1x1 stem convolution (24 channels, no downsampling) + BN + ReLU, three
  stages of shuffle units (the first of each with stride 2 and a pooled,
  concatenated shortcut), global average pooling and a linear classifier.
  The benchmark's ``ShuffleV1`` has ``out_planes = (240, 480, 960)``,
  ``num_blocks = (4, 8, 4)`` and 3 groups. Convolutions and the classifier
  keep PyTorch's default initialisation, as the original.

  Sown features (collection ``'intermediates'``, as mdistiller's ``feats``),
  for 32x32 inputs:

  * ``feat_0``: the stem after ReLU ``[b, 32, 32, 24]``; ``feat_1..feat_3``:
    the stage outputs after ReLU ``[b, 16, 16, 240]``, ``[b, 8, 8, 480]``,
    ``[b, 4, 4, 960]``.
  * ``preact_0 = feat_0``; ``preact_1..preact_3``: the same before the last
    ReLU.
  * ``pooled``: the pooled embedding ``[b, 960]``.

  Each is exposed with :func:`kdjax.zoo.expose_feature` where it is made, so
  :mod:`kdjax.explain` can differentiate with respect to it by name.

  Attributes:
    out_planes: output channels of the three stages.
    num_blocks: shuffle units per stage.
    groups: groups of the 1x1 convolutions.
    num_classes: output logits.
    conv_impl: ``'lax'`` or ``'im2col'`` (see :func:`kdjax.zoo.conv2d`).

  References:
    Zhang, Zhou, Lin and Sun, "ShuffleNet: An Extremely Efficient
    Convolutional Neural Network for Mobile Devices", CVPR 2018; Tian,
    Krishnan and Isola, "Contrastive Representation Distillation", ICLR 2020
    (github.com/HobbitLong/RepDistiller, ``models/ShuffleNetv1.py``).
  """

  out_planes: Sequence[int] = (240, 480, 960)
  num_blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3
  num_classes: int = 100
  conv_impl: str = 'lax'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``[batch, height, width, 3]`` to logits ``[batch, num_classes]``."""
    check_conv_impl(self.conv_impl)
    layers.check_image('ShuffleNetV1', x)
    x = _stem(self, x, train, self.conv_impl)
    for stage, (planes, blocks) in enumerate(zip(self.out_planes, self.num_blocks, strict=True)):
      for i in range(blocks):
        # The first unit concatenates its input to a branch of the remainder.
        features = planes - x.shape[-1] if i == 0 else planes
        hook = (functools.partial(expose_feature, self, f'preact_{stage + 1}')
                if i == blocks - 1 else None)
        x = _ShuffleV1Block(features, 2 if i == 0 else 1, self.groups,
                            self.conv_impl, name=f'layer{stage + 1}_{i}')(x, train, hook)
      x = expose_feature(self, f'feat_{stage + 1}', x)
    pooled = expose_feature(self, 'pooled', layers.global_avg_pool(x))
    return _dense(self.num_classes, pooled.shape[-1])(pooled)


class _ShuffleV2Block(nn.Module):
  """Split in half; 1x1-BN-ReLU, depthwise 3x3-BN, 1x1-BN-ReLU on one half; concat; shuffle.

  Returns the shuffled output; `expose_preact` sees the pre-activation
  ``concat(x1, BN)`` (not shuffled, as the original).
  """

  conv_impl: str

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, expose_preact: _Expose = None) -> jax.Array:
    keep = int(x.shape[-1] * 0.5)
    kept, x = x[..., :keep], x[..., keep:]
    width = x.shape[-1]
    out = _conv(width, 1, 1, 0, self.conv_impl, 'conv1')(x)
    out = nn.relu(layers.batch_norm(train, 'bn1')(out))
    out = _conv(width, 3, 1, 1, self.conv_impl, 'conv2', width)(out)
    out = layers.batch_norm(train, 'bn2')(out)
    out = _conv(width, 1, 1, 0, self.conv_impl, 'conv3')(out)
    preact = layers.batch_norm(train, 'bn3')(out)
    if expose_preact is not None:
      both = expose_preact(jnp.concatenate([kept, preact], axis=-1))
      kept, preact = both[..., :keep], both[..., keep:]
    out = jnp.concatenate([kept, nn.relu(preact)], axis=-1)
    return layers.channel_shuffle(out, 2)


class _ShuffleV2DownBlock(nn.Module):
  """Two stride-2 branches (depthwise first, or 1x1 first), concatenated and shuffled."""

  features: int
  conv_impl: str

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    mid = self.features // 2
    channels = x.shape[-1]
    left = _conv(channels, 3, 2, 1, self.conv_impl, 'conv1', channels)(x)
    left = layers.batch_norm(train, 'bn1')(left)
    left = _conv(mid, 1, 1, 0, self.conv_impl, 'conv2')(left)
    left = nn.relu(layers.batch_norm(train, 'bn2')(left))
    right = _conv(mid, 1, 1, 0, self.conv_impl, 'conv3')(x)
    right = nn.relu(layers.batch_norm(train, 'bn3')(right))
    right = _conv(mid, 3, 2, 1, self.conv_impl, 'conv4', mid)(right)
    right = layers.batch_norm(train, 'bn4')(right)
    right = _conv(mid, 1, 1, 0, self.conv_impl, 'conv5')(right)
    right = nn.relu(layers.batch_norm(train, 'bn5')(right))
    return layers.channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nn.Module):
  """The CIFAR ShuffleNetV2 of RepDistiller and mdistiller (``ShuffleV2``).

  A 1x1 stem convolution (24 channels, no downsampling) + BN + ReLU, three
  stages of one down-sampling unit followed by ``num_blocks`` basic units,
  a 1x1 convolution + BN + ReLU, global average pooling and a linear
  classifier. The benchmark's ``ShuffleV2`` is ``net_size=1``:
  ``out_channels = (116, 232, 464, 1024)``, ``num_blocks = (3, 7, 3)``.
  Convolutions and the classifier keep PyTorch's default initialisation.

  Sown features (collection ``'intermediates'``, as mdistiller's ``feats``),
  for 32x32 inputs:

  * ``feat_0``: the stem after ReLU ``[b, 32, 32, 24]``; ``feat_1..feat_3``:
    the stage outputs ``[b, 16, 16, 116]``, ``[b, 8, 8, 232]``,
    ``[b, 4, 4, 464]``.
  * ``preact_0 = feat_0``; ``preact_1..preact_3``: the last unit's
    ``concat(kept half, BN output)`` before ReLU and channel shuffle.
  * ``pooled``: the pooled embedding ``[b, 1024]``.

  Each is exposed with :func:`kdjax.zoo.expose_feature` where it is made, so
  :mod:`kdjax.explain` can differentiate with respect to it by name.

  Attributes:
    out_channels: channels of the three stages and of the final 1x1 conv.
    num_blocks: basic units per stage (after the down-sampling unit).
    num_classes: output logits.
    conv_impl: ``'lax'`` or ``'im2col'`` (see :func:`kdjax.zoo.conv2d`).

  References:
    Ma, Zhang, Zheng and Sun, "ShuffleNet V2: Practical Guidelines for
    Efficient CNN Architecture Design", ECCV 2018; Tian, Krishnan and Isola,
    "Contrastive Representation Distillation", ICLR 2020
    (github.com/HobbitLong/RepDistiller, ``models/ShuffleNetv2.py``).
  """

  out_channels: Sequence[int] = (116, 232, 464, 1024)
  num_blocks: Sequence[int] = (3, 7, 3)
  num_classes: int = 100
  conv_impl: str = 'lax'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``[batch, height, width, 3]`` to logits ``[batch, num_classes]``."""
    check_conv_impl(self.conv_impl)
    layers.check_image('ShuffleNetV2', x)
    if len(self.out_channels) != 4 or len(self.num_blocks) != 3:
      raise ValueError(
          f'ShuffleNetV2 needs 4 out_channels and 3 num_blocks, got '
          f'{tuple(self.out_channels)} and {tuple(self.num_blocks)}.')
    x = _stem(self, x, train, self.conv_impl)
    for stage, (channels, blocks) in enumerate(zip(self.out_channels[:3], self.num_blocks)):
      x = _ShuffleV2DownBlock(channels, self.conv_impl, name=f'layer{stage + 1}_0')(x, train)
      for i in range(blocks):
        hook = (functools.partial(expose_feature, self, f'preact_{stage + 1}')
                if i == blocks - 1 else None)
        x = _ShuffleV2Block(self.conv_impl, name=f'layer{stage + 1}_{i + 1}')(x, train, hook)
      x = expose_feature(self, f'feat_{stage + 1}', x)
    x = _conv(self.out_channels[3], 1, 1, 0, self.conv_impl, 'conv2')(x)
    x = nn.relu(layers.batch_norm(train, 'bn2')(x))
    pooled = expose_feature(self, 'pooled', layers.global_avg_pool(x))
    return _dense(self.num_classes, pooled.shape[-1])(pooled)


def shuffle_v1(num_classes: int = 100, conv_impl: str = 'lax') -> ShuffleNetV1:
  """The benchmark's ``ShuffleV1`` (groups 3), 949,258 parameters; see :class:`ShuffleNetV1`."""
  return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, conv_impl)


def shuffle_v2(num_classes: int = 100, conv_impl: str = 'lax') -> ShuffleNetV2:
  """The benchmark's ``ShuffleV2`` (net size 1), 1,355,528 parameters; see :class:`ShuffleNetV2`."""
  return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes, conv_impl)
