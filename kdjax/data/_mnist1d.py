"""TFDS builder for MNIST-1D, generated offline with the `mnist1d` package."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import tensorflow_datasets as tfds

from kdjax.data import _builder

_DESCRIPTION = """\
MNIST-1D (Greydanus, 2020): a procedurally generated, 1-D analogue of MNIST.
Each example is a length-40 float32 signal made by padding, scaling,
translating, shearing and adding correlated and iid noise to one of ten
digit-like templates; the label is the template's digit (10 classes).

It is generated here, offline, with
`mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())` (the package's
default arguments: 5,000 examples, 80/20 train/test split, seed 42), which
reseeds Python's `random` and NumPy's global generator with `args.seed`
(42); the builder restores both global generators afterwards. The result is
deterministic: 4,000 train and 1,000 test examples, stored in make_dataset's
order (example i of a split is row i of its arrays).
Builder configs: `mnist1d/default` (the package's 5,000 examples; plain
`mnist1d` means this one) and `mnist1d/large` (the same generator with
`num_samples` = 20,000: 16,000 train and 4,000 test examples, about 400 test
examples per class), everything else the package's defaults.
The package's download path (`get_dataset(download=True)`) is never used.
"""

_CITATION = """\
@article{greydanus2020scaling,
  title={Scaling Down Deep Learning},
  author={Greydanus, Sam},
  journal={arXiv preprint arXiv:2011.14439},
  year={2020}
}
"""

_HOMEPAGE = 'https://github.com/greydanus/mnist1d'

NUM_FEATURES = 40
NUM_CLASSES = 10


def make_mnist1d_arrays(num_samples: int | None = None) -> dict[str, np.ndarray]:
  """Generates MNIST-1D offline with mnist1d's default arguments (seed 42).

  Args:
    num_samples: examples in all (train and test, split 80/20); None keeps
      the package's default (5,000). mnist1d makes ``num_samples // 10`` of
      each class, so it must be a positive multiple of 10.

  Python's `random` and NumPy's global generator states are saved and
  restored around the call, so generating the data does not disturb the
  caller's global random state.

  Returns:
    A dict with 'x' float32 [4000, 40], 'y' int64 [4000], 'x_test' float32
    [1000, 40] and 'y_test' int64 [1000] (for the default 5,000 examples),
    in make_dataset's order.
  """
  if num_samples is not None and (
      isinstance(num_samples, bool) or not isinstance(num_samples, int)
      or num_samples <= 0 or num_samples % NUM_CLASSES):
    raise ValueError(f'num_samples must be a positive multiple of {NUM_CLASSES} (mnist1d '
                     f'makes num_samples // {NUM_CLASSES} of each class), got {num_samples!r}')
  mnist1d_data = _builder.import_optional(
      'mnist1d.data', needed_for='Building mnist1d', package='mnist1d'
  )

  args = mnist1d_data.get_dataset_args()
  if num_samples is not None:
    args.num_samples = num_samples
  py_state = random.getstate()
  np_state = np.random.get_state()
  try:
    data = mnist1d_data.make_dataset(args)
  finally:
    random.setstate(py_state)
    np.random.set_state(np_state)
  return {
      'x': np.asarray(data['x'], np.float32),
      'y': np.asarray(data['y'], np.int64),
      'x_test': np.asarray(data['x_test'], np.float32),
      'y_test': np.asarray(data['y_test'], np.int64),
  }


@dataclasses.dataclass(eq=False)
class Mnist1dConfig(tfds.core.BuilderConfig):
  """A size of MNIST-1D: `num_samples` examples generated in all (80 % train)."""

  num_samples: int = 5000


class Mnist1d(_builder.OfflineArrayBuilder):
  """MNIST-1D: 4,000 train / 1,000 test signals of length 40, 10 classes.

  Two configs: ``'default'`` (those 5,000 examples; what plain
  ``'mnist1d'`` loads) and ``'large'`` (``'mnist1d/large'``: 16,000 train /
  4,000 test, the same generator with ``num_samples`` = 20,000).

  Registered in the TFDS catalogue as 'mnist1d' when `kdjax.data` is
  imported. Writes `array_record` files by default, so it is readable
  without TensorFlow through `tfds.data_source('mnist1d', data_dir=...)`.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release, generated offline.'}
  DESCRIPTION = _DESCRIPTION
  CITATION = _CITATION
  HOMEPAGE = _HOMEPAGE
  LICENSE = 'Apache-2.0'
  SUPERVISED_KEYS = ('x', 'label')
  BUILDER_CONFIGS = [
      Mnist1dConfig(name='default', num_samples=5000,
                    description="mnist1d's default size: 4,000 train / 1,000 test."),
      Mnist1dConfig(name='large', num_samples=20000,
                    description='num_samples = 20,000: 16,000 train / 4,000 test.'),
  ]

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        'x': tfds.features.Tensor(shape=(NUM_FEATURES,), dtype=np.float32),
        'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
    })

  def _split_arrays(self) -> _builder.SplitArrays:
    # Keep make_dataset's (already shuffled) order: example i of a split is
    # row i of make_dataset's arrays.
    data = make_mnist1d_arrays(self.builder_config.num_samples)
    return {
        'train': {'x': data['x'], 'label': data['y']},
        'test': {'x': data['x_test'], 'label': data['y_test']},
    }
