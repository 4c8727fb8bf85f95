"""kdjax: knowledge distillation in JAX and Flax."""

from kdjax._outputs import Outputs

__version__ = '0.1.0'

__all__ = ['Outputs']
