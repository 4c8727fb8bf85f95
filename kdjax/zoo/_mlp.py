"""Multi-layer perceptrons, as in Hinton et al. (2015)'s MNIST experiments."""

from __future__ import annotations

from collections.abc import Sequence

from flax import linen as nn
import jax


class MLP(nn.Module):
  """ReLU MLP classifier with optional dropout on inputs and hidden units.

  Each hidden layer's activation is sown as ``'hidden_<i>'`` (after the ReLU,
  before dropout), so it can serve as a feature for hint losses.

  Attributes:
    hidden_sizes: widths of the hidden layers, e.g. ``(1200, 1200)``.
    num_classes: output logits.
    dropout_rate: dropout on hidden units in training (Hinton et al. used 0.5).
    input_dropout_rate: dropout on the inputs in training (they used 0.2).
  """

  hidden_sizes: Sequence[int]
  num_classes: int
  dropout_rate: float = 0.0
  input_dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps inputs ``[batch, features...]`` to logits ``[batch, num_classes]``."""
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(self.input_dropout_rate, deterministic=not train)(x)
    for i, width in enumerate(self.hidden_sizes):
      x = nn.relu(nn.Dense(width, name=f'dense_{i}')(x))
      self.sow('intermediates', f'hidden_{i}', x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name='logits')(x)
