"""Reference Flax models used by the experiments."""

from kdjax.zoo._mlp import MLP

__all__ = ['MLP']
