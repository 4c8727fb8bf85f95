"""Datasets and grain input pipelines over TFDS sources, without TensorFlow."""

from kdjax.data._digits import Digits
from kdjax.data._digits import make_digits_arrays
from kdjax.data._mnist1d import Mnist1d
from kdjax.data._mnist1d import make_mnist1d_arrays
from kdjax.data._pipeline import dataset_info
from kdjax.data._pipeline import iterate_once
from kdjax.data._pipeline import load_source
from kdjax.data._pipeline import make_loader
from kdjax.data._pipeline import MASK_KEY
from kdjax.data._pipeline import num_classes

__all__ = [
    'MASK_KEY',
    'Digits',
    'Mnist1d',
    'dataset_info',
    'iterate_once',
    'load_source',
    'make_digits_arrays',
    'make_loader',
    'make_mnist1d_arrays',
    'num_classes',
]
