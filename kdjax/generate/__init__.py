"""Autoregressive generation: greedy, sampling and beam search with a KV cache.

A model takes part through a :class:`Decoder` (the zoo builds one for its
``DecoderLM`` and encoder-decoder Transformer); :func:`make_generate`
compiles the whole decoding loop into one ``jax.jit``.
"""

from kdjax.generate._decoder import Decoder
from kdjax.generate._generate import Generation
from kdjax.generate._generate import generate
from kdjax.generate._generate import make_generate
from kdjax.generate._methods import BeamSearch
from kdjax.generate._methods import Greedy
from kdjax.generate._methods import Sampling
from kdjax.generate._methods import warp_logits
from kdjax.generate._speculative import SpeculativeGeneration
from kdjax.generate._speculative import make_speculative_generate

__all__ = [
    'BeamSearch',
    'Decoder',
    'Generation',
    'Greedy',
    'Sampling',
    'SpeculativeGeneration',
    'generate',
    'make_generate',
    'make_speculative_generate',
    'warp_logits',
]
