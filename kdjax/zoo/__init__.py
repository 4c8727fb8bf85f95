"""Reference Flax models used by the experiments."""

from kdjax.zoo._cnn1d import Conv1D
from kdjax.zoo._cnn1d import ConvNet1D
from kdjax.zoo._mlp import MLP

__all__ = ['Conv1D', 'ConvNet1D', 'MLP']
