"""The CIFAR MobileNetV2 (``mobile_half``) of RepDistiller/mdistiller."""

from __future__ import annotations

from flax import linen as nn
import jax

from kdjax.zoo import _cifar_layers as layers
from kdjax.zoo._conv import Conv
from kdjax.zoo._conv import check_conv_impl
from kdjax.zoo._features import expose_feature

# (expansion, channels, blocks, stride); expansion None means the model's T.
_SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))
# Stages after which mdistiller takes feats[1..4].
_FEATURE_STAGES = (1, 2, 4, 6)


class _InvertedResidual(nn.Module):
  """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (+ input)."""

  features: int
  strides: int
  expansion: int
  conv_impl: str

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    hidden = x.shape[-1] * self.expansion
    out = Conv(hidden, 1, 1, 0, conv_impl=self.conv_impl, name='conv_expand')(x)
    out = nn.relu(layers.batch_norm(train, 'bn_expand')(out))
    out = Conv(hidden, 3, self.strides, 1, feature_group_count=hidden,
               conv_impl=self.conv_impl, name='conv_depthwise')(out)
    out = nn.relu(layers.batch_norm(train, 'bn_depthwise')(out))
    out = Conv(self.features, 1, 1, 0, conv_impl=self.conv_impl, name='conv_project')(out)
    out = layers.batch_norm(train, 'bn_project')(out)
    if self.strides == 1 and x.shape[-1] == self.features:
      out = x + out
    return out


def _expose_stage(module: nn.Module, index: int, x: jax.Array) -> jax.Array:
  """``feat_<index>`` and ``preact_<index>``: the same map (linear bottlenecks)."""
  return expose_feature(module, f'preact_{index}', expose_feature(module, f'feat_{index}', x))


class MobileNetV2(nn.Module):
  """The CIFAR MobileNetV2 of RepDistiller and mdistiller (``mobile_half``).

  A 3x3 stride-2 stem (``int(32 w)`` channels) + BN + ReLU, seven stages of
  inverted residual blocks (expansion ``T``, channels ``int(c w)`` for
  ``c`` in 16, 24, 32, 64, 96, 160, 320, strides 1, 1, 2, 2, 1, 2, 1; the
  first stage also has a 1x1 expansion convolution, with ratio 1), a 1x1
  convolution to 1280 channels + BN + ReLU, average pooling and a linear
  classifier. The benchmark's ``MobileNetV2`` student is ``mobile_half``:
  ``T = 6``, ``w = 0.5``. Depthwise convolutions use
  ``feature_group_count`` and so the ``conv_impl`` switch applies to them too.

  Sown features (collection ``'intermediates'``, as mdistiller's ``feats``),
  for 32x32 inputs with ``w = 0.5``:

  * ``feat_0``: the stem after ReLU ``[b, 16, 16, 16]``; ``feat_1..feat_4``:
    the outputs of stages 1, 2, 4 and 6 ``[b, 16, 16, 12]``,
    ``[b, 8, 8, 16]``, ``[b, 4, 4, 48]``, ``[b, 2, 2, 160]``.
  * ``preact_i = feat_i``: the stages end in a BN without ReLU (linear
    bottlenecks), so their outputs are already pre-activation (mdistiller
    gives no ``preact_feats`` for this model).
  * ``pooled``: the pooled embedding ``[b, 1280]``.

  Each is exposed with :func:`kdjax.zoo.expose_feature` where it is made, so
  :mod:`kdjax.explain` can differentiate with respect to it by name.

  Attributes:
    expansion: ``T``, the inverted residuals' expansion ratio.
    width_mult: ``w``, the channel multiplier.
    num_classes: output logits.
    conv_impl: ``'lax'`` or ``'im2col'`` (see :func:`kdjax.zoo.conv2d`).

  References:
    Sandler, Howard, Zhu, Zhmoginov and Chen, "MobileNetV2: Inverted
    Residuals and Linear Bottlenecks", CVPR 2018; Tian, Krishnan and Isola,
    "Contrastive Representation Distillation", ICLR 2020
    (github.com/HobbitLong/RepDistiller, ``models/mobilenetv2.py``).
  """

  expansion: int = 6
  width_mult: float = 0.5
  num_classes: int = 100
  conv_impl: str = 'lax'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``[batch, height, width, 3]`` to logits ``[batch, num_classes]``."""
    check_conv_impl(self.conv_impl)
    layers.check_image('MobileNetV2', x)
    x = Conv(int(32 * self.width_mult), 3, 2, 1, conv_impl=self.conv_impl, name='conv1')(x)
    x = nn.relu(layers.batch_norm(train, 'bn1')(x))
    x = _expose_stage(self, 0, x)
    for stage, (expansion, channels, blocks, stride) in enumerate(_SETTING):
      for i in range(blocks):
        x = _InvertedResidual(
            int(channels * self.width_mult), stride if i == 0 else 1,
            self.expansion if expansion is None else expansion, self.conv_impl,
            name=f'blocks{stage}_{i}')(x, train)
      if stage in _FEATURE_STAGES:
        x = _expose_stage(self, _FEATURE_STAGES.index(stage) + 1, x)
    last = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
    x = Conv(last, 1, 1, 0, conv_impl=self.conv_impl, name='conv2')(x)
    x = nn.relu(layers.batch_norm(train, 'bn2')(x))
    pooled = expose_feature(self, 'pooled', layers.global_avg_pool(x))
    return nn.Dense(self.num_classes, kernel_init=layers.normal_001(),
                    name='classifier')(pooled)


def mobile_half(num_classes: int = 100, conv_impl: str = 'lax') -> MobileNetV2:
  """MobileNetV2, ``T = 6``, width 0.5 (the benchmark's ``MobileNetV2``), 812,836 parameters.

  See :class:`MobileNetV2`.
  """
  return MobileNetV2(6, 0.5, num_classes, conv_impl)
