"""The CIFAR-100 models of the RepDistiller/mdistiller KD benchmark, by name."""

from __future__ import annotations

from collections.abc import Callable

from flax import linen as nn

from kdjax.zoo._mobilenetv2 import mobile_half
from kdjax.zoo._resnet_cifar import resnet110
from kdjax.zoo._resnet_cifar import resnet20
from kdjax.zoo._resnet_cifar import resnet32
from kdjax.zoo._resnet_cifar import resnet32x4
from kdjax.zoo._resnet_cifar import resnet56
from kdjax.zoo._resnet_cifar import resnet8x4
from kdjax.zoo._shufflenet import shuffle_v1
from kdjax.zoo._shufflenet import shuffle_v2
from kdjax.zoo._vgg import vgg13
from kdjax.zoo._vgg import vgg8
from kdjax.zoo._wrn import wrn_16_1
from kdjax.zoo._wrn import wrn_16_2
from kdjax.zoo._wrn import wrn_40_1
from kdjax.zoo._wrn import wrn_40_2

# Keys are the names the benchmark's tables and configs use (mdistiller's
# ``cifar_model_dict``, RepDistiller's ``model_dict``).
CIFAR_MODELS: dict[str, Callable[..., nn.Module]] = {
    'resnet20': resnet20,
    'resnet32': resnet32,
    'resnet56': resnet56,
    'resnet110': resnet110,
    'resnet8x4': resnet8x4,
    'resnet32x4': resnet32x4,
    'wrn_16_1': wrn_16_1,
    'wrn_16_2': wrn_16_2,
    'wrn_40_1': wrn_40_1,
    'wrn_40_2': wrn_40_2,
    'vgg8': vgg8,
    'vgg13': vgg13,
    'MobileNetV2': mobile_half,
    'mobile_half': mobile_half,
    'ShuffleV1': shuffle_v1,
    'ShuffleV2': shuffle_v2,
}


def cifar_model(name: str, num_classes: int = 100, conv_impl: str = 'lax') -> nn.Module:
  """A CIFAR model of the KD benchmark by its name in the papers' tables.

  Every model takes NHWC images (32x32 for CIFAR), is called as
  ``model.apply(variables, x, train=...)`` and sows ``feat_<i>``,
  ``preact_<i>`` and ``pooled`` into ``'intermediates'`` (see each class).

  Args:
    name: one of ``CIFAR_MODELS``: ``'resnet20'``, ``'resnet32'``,
      ``'resnet56'``, ``'resnet110'``, ``'resnet8x4'``, ``'resnet32x4'``,
      ``'wrn_16_1'``, ``'wrn_16_2'``, ``'wrn_40_1'``, ``'wrn_40_2'``,
      ``'vgg8'``, ``'vgg13'``, ``'MobileNetV2'`` (= ``'mobile_half'``),
      ``'ShuffleV1'``, ``'ShuffleV2'``.
    num_classes: output logits.
    conv_impl: ``'lax'`` or ``'im2col'`` (see :func:`kdjax.zoo.conv2d`).

  Returns:
    The (uninitialised) linen module.

  Raises:
    KeyError: for an unknown name, listing the known ones.
  """
  if name not in CIFAR_MODELS:
    raise KeyError(f'no CIFAR model named {name!r}; known: {sorted(CIFAR_MODELS)}')
  return CIFAR_MODELS[name](num_classes=num_classes, conv_impl=conv_impl)
