"""The `Outputs` pytree every teacher and student apply returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class Outputs:
  """What a model hands to the objective: logits plus named intermediates.

  Attributes:
    logits: ``[..., classes]`` (``[batch, classes]`` for a classifier,
      ``[batch, time, vocab]`` for a language model), or ``None`` for a
      model that hands over what makes the logits instead (e.g. a language
      model's final hidden state and unembedding matrix as features, for
      chunked large-vocabulary losses that never materialise the logits).
    features: named intermediates (hidden states, attention maps, conv maps),
      each an array with the batch as its leading dimension.
  """

  logits: jax.Array | None
  features: Mapping[str, Any] = flax.struct.field(default_factory=dict)

  def feature(self, name: str) -> Any:
    """Returns ``features[name]`` or raises a KeyError listing the names."""
    try:
      return self.features[name]
    except KeyError:
      raise KeyError(
          f'feature {name!r} is not among the outputs; the model exposes '
          f'{sorted(self.features)}'
      ) from None
