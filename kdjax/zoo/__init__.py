"""Reference Flax models used by the experiments."""

from kdjax.zoo._cnn1d import Conv1D
from kdjax.zoo._cnn1d import ConvNet1D
from kdjax.zoo._mlp import MLP
from kdjax.zoo._transformer import DecoderConfig
from kdjax.zoo._transformer import DecoderLM
from kdjax.zoo._transformer import TRANSFORMER_LOGICAL_AXES
from kdjax.zoo._transformer import lm_apply
from kdjax.zoo._transformer import param_count

__all__ = ['Conv1D', 'ConvNet1D', 'MLP',
           'DecoderConfig', 'DecoderLM', 'TRANSFORMER_LOGICAL_AXES', 'lm_apply',
           'param_count']
