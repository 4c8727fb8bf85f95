"""Layers shared by the CIFAR models: PyTorch-matched BatchNorm, inits, pooling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's ``BatchNorm2d`` defaults (momentum 0.1, eps 1e-5).

  PyTorch's running average keeps ``1 - momentum`` of the old value, so its
  ``momentum=0.1`` is Flax's ``momentum=0.9``. The scale and bias are
  parameters, the running mean and variance live in ``'batch_stats'``.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      name=name)


def torch_default_kernel_init() -> Any:
  """PyTorch's default ``Conv2d``/``Linear`` weight init, ``U(+-1/sqrt(fan_in))``.

  ``kaiming_uniform_(a=sqrt(5))`` has bound ``sqrt(6 / ((1 + 5) fan_in))``;
  a variance-scaling uniform with scale 1/3 has bound ``sqrt(3 s / fan_in)``:
  the same.
  """
  return nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_default_bias_init(fan_in: int) -> Any:
  """PyTorch's default ``Linear`` bias init, ``U(+-1/sqrt(fan_in))``."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def normal_001() -> Any:
  """``N(0, 0.01^2)``: the classifier init of the CIFAR VGG and MobileNetV2."""
  return nn.initializers.normal(0.01)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """``[batch, h, w, c] -> [batch, c]``.

  The PyTorch models pool with a fixed window that covers the whole final map
  for 32x32 inputs (``AvgPool2d(8)`` in the ResNets, ``avg_pool2d(4)`` in the
  ShuffleNets); a global mean is the same there and also works on the small
  inputs the tests use.
  """
  return jnp.mean(x, axis=(1, 2))


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet's channel shuffle (NHWC): channel ``i * (C/g) + j`` moves to ``j * g + i``.

  The NHWC form of PyTorch's ``view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4)``.
  """
  batch, height, width, channels = x.shape
  x = x.reshape(batch, height, width, groups, channels // groups)
  return jnp.swapaxes(x, 3, 4).reshape(batch, height, width, channels)


def check_image(model: str, x: jax.Array) -> None:
  if x.ndim != 4:
    raise ValueError(
        f'{model} takes images [batch, height, width, channels] (NHWC), got '
        f'x.shape={x.shape}.')
