"""TFDS builder for scikit-learn's bundled 8x8 handwritten digits, offline."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from kdjax.data import _builder

_DESCRIPTION = """\
The UCI "Optical Recognition of Handwritten Digits" test set as bundled
with scikit-learn (`sklearn.datasets.load_digits`): 1,797 greyscale 8x8
images of the digits 0-9 written by 43 people, each pixel a count in
[0, 16] of the set pixels in a 4x4 block of the original 32x32 bitmap.

Stored here as float32 images [8, 8, 1] with the counts divided by 16 (so
in [0, 1], like TFDS's uint8 images after kdjax's scaling), in three
stratified splits drawn once with a fixed seed (0): 1,077 train, 360
validation and 360 test examples, each split keeping the class proportions
of the whole set. Nothing is downloaded: the data ships with scikit-learn.
"""

_CITATION = """\
@misc{alpaydin1998digits,
  title={Optical Recognition of Handwritten Digits},
  author={Alpaydin, E. and Kaynak, C.},
  year={1998},
  howpublished={UCI Machine Learning Repository},
  doi={10.24432/C50P49}
}
"""

_HOMEPAGE = 'https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html'

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10
SPLIT_SIZES = {'train': 1077, 'validation': 360, 'test': 360}
SPLIT_SEED = 0


def make_digits_arrays() -> dict[str, dict[str, np.ndarray]]:
  """scikit-learn's digits in kdjax's three stratified, seeded splits.

  The test split (360 examples) is drawn first with
  ``sklearn.model_selection.train_test_split(..., stratify=labels,
  random_state=0)``, then the validation split (360) from the rest the
  same way; the remaining 1,077 examples are the train split.

  Returns:
    ``{'train' | 'validation' | 'test': {'x': float32 [n, 8, 8, 1] in
    [0, 1], 'label': int64 [n], 'index': int64 [n]}}`` where 'index' is
    the row of the example in ``load_digits()``.
  """
  datasets = _builder.import_optional(
      'sklearn.datasets', needed_for='Building digits', package='scikit-learn'
  )
  model_selection = _builder.import_optional(
      'sklearn.model_selection', needed_for='Building digits', package='scikit-learn'
  )

  digits = datasets.load_digits()
  images = np.asarray(digits.images, np.float32)[..., None] / np.float32(16.0)
  labels = np.asarray(digits.target, np.int64)
  index = np.arange(len(labels))
  rest, test = model_selection.train_test_split(
      index, test_size=SPLIT_SIZES['test'], stratify=labels, random_state=SPLIT_SEED
  )
  train, validation = model_selection.train_test_split(
      rest, test_size=SPLIT_SIZES['validation'], stratify=labels[rest],
      random_state=SPLIT_SEED,
  )
  return {
      name: {'x': images[rows], 'label': labels[rows], 'index': rows.astype(np.int64)}
      for name, rows in (('train', train), ('validation', validation), ('test', test))
  }


class Digits(_builder.OfflineArrayBuilder):
  """scikit-learn's 8x8 digits: 1,077 train / 360 validation / 360 test.

  Registered in the TFDS catalogue as 'digits' when `kdjax.data` is
  imported. Writes `array_record` files by default, so it is readable
  without TensorFlow through ``tfds.data_source('digits', data_dir=...)``
  (or :func:`kdjax.data.load_source`). Examples are ``{'image': float32
  [8, 8, 1], 'label': int, 'index': int}`` with supervised keys
  ('image', 'label'), which kdjax's loaders rename to 'x' and 'label'.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release, from scikit-learn, offline.'}
  DESCRIPTION = _DESCRIPTION
  CITATION = _CITATION
  HOMEPAGE = _HOMEPAGE
  LICENSE = 'CC-BY-4.0'
  SUPERVISED_KEYS = ('image', 'label')

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.float32),
        'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        'index': tfds.features.Scalar(dtype=np.int64),
    })

  def _split_arrays(self) -> _builder.SplitArrays:
    # Example i of a split is row i of make_digits_arrays()'s split.
    return {
        name: {'image': split['x'], 'label': split['label'], 'index': split['index']}
        for name, split in make_digits_arrays().items()
    }
