"""Grain input pipelines over TFDS random-access data sources."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import os
from typing import Any

from array_record.python import array_record_module
import grain
import numpy as np
import tensorflow_datasets as tfds

# Imported for its side effect: registers the 'mnist1d' builder with TFDS.
from kdjax.data import _mnist1d  # noqa: F401

from kdjax.metrics import MASK_KEY
from kdjax.metrics import pad_batch

Example = dict[str, Any]
Features = Sequence[str] | Mapping[str, str] | None



def load_source(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    download: bool = True,
) -> Sequence[Example]:
  """Returns a random-access TFDS data source for `split` of dataset `name`.

  `name` is 'mnist1d' (kdjax's offline builder, registered by importing
  `kdjax.data`; it is generated and prepared into `data_dir` on first use,
  about 5 s, no network) or any TFDS catalogue name ('mnist', 'cifar10',
  'cifar100', ...; these need the network the first time). The datasets are
  read without TensorFlow, so they must be stored as `array_record`.

  Args:
    name: TFDS dataset name, optionally with config and version
      ('mnist1d', 'mnist', 'cifar10:3.0.2').
    split: a TFDS split, with slicing if wanted: 'train', 'test',
      'train[:90%]', 'train[90%:]', 'train[:1000]'.
    data_dir: where the prepared dataset lives (TFDS's default,
      ~/tensorflow_datasets, when None).
    download: whether to download and prepare the dataset if it is not in
      `data_dir` yet (for 'mnist1d' this means generating it offline). With
      False a missing dataset raises.

  Returns:
    A `Sequence` of examples (dicts of NumPy arrays / scalars) with
    `len()` and random access, and a `dataset_info` attribute holding the
    `tfds.core.DatasetInfo`. `grain.MapDataset.source` accepts it.
  """
  source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  # The reader opens its files lazily, and its C++ errors name no file:
  # check every shard's footer and record count now, naming a bad one.
  try:
    instructions = source.dataset_info.splits[split].file_instructions
  except KeyError:  # no split files to check (tfds.testing.mock_data)
    instructions = []
  problems = []
  for instruction in instructions:
    try:
      count = array_record_count(instruction.filename)
    except ValueError as bad:
      problems.append(str(bad))
      continue
    if count != instruction.examples_in_shard:
      problems.append(f'{instruction.filename}: {count} records, where the dataset info '
                      f'says {instruction.examples_in_shard}')
  if problems:
    raise ValueError(
        f'dataset {name!r}, split {split!r} is unreadable: {"; ".join(problems)}. Delete '
        'its directory to prepare it again.')
  return source


def array_record_count(path: str) -> int:
  """The number of records of the array_record file at `path`, its footer checked.

  Raises:
    ValueError: naming the file, when it is missing, truncated or corrupt
      (instead of the C++ reader's RuntimeError, which names no file).
  """
  try:
    reader = array_record_module.ArrayRecordReader(path)
    try:
      return reader.num_records()
    finally:
      reader.close()
  except RuntimeError as e:
    raise ValueError(f'{path}: not a readable array_record file (missing, truncated or '
                     f'corrupt: {str(e) or "the reader gave no reason"})') from None


def dataset_info(name: str, data_dir: str | None = None) -> Any:
  """Returns the `tfds.core.DatasetInfo` of dataset `name`.

  Needs no network and prepares nothing: for a dataset not prepared in
  `data_dir` the features and description are known but the split sizes
  are not.

  Args:
    name: TFDS dataset name ('mnist1d', 'mnist', ...).
    data_dir: TFDS data directory (TFDS's default when None).

  Returns:
    The dataset's `tfds.core.DatasetInfo`.
  """
  return tfds.builder(name, data_dir=data_dir).info


def _info_of(source_or_info: Any) -> Any:
  if isinstance(source_or_info, tfds.core.DatasetInfo):
    return source_or_info
  return getattr(source_or_info, 'dataset_info', None)


def num_classes(source_or_info: Any, key: str = 'label') -> int | None:
  """Number of classes of the `ClassLabel` feature `key`, when known.

  Args:
    source_or_info: a TFDS data source (from `load_source`), or a
      `tfds.core.DatasetInfo`.
    key: the feature's name in the source's examples.

  Returns:
    The number of classes, or None when the source carries no TFDS info or
    `key` is not a `ClassLabel` with a known number of classes.
  """
  info = _info_of(source_or_info)
  if info is None or info.features is None:
    return None
  if key not in info.features:
    return None
  feature = info.features[key]
  if isinstance(feature, tfds.features.ClassLabel):
    return feature.num_classes
  return None


def _key_mapping(info: Any, features: Features) -> dict[str, str] | None:
  """Source key -> output key; None keeps every key as it is."""
  if features is None:
    keys = getattr(info, 'supervised_keys', None) if info is not None else None
    if (
        isinstance(keys, tuple)
        and len(keys) == 2
        and all(isinstance(k, str) for k in keys)
    ):
      return {keys[0]: 'x', keys[1]: 'label'}
    return None
  if isinstance(features, str):
    raise TypeError(
        f'features must be a sequence of keys or a mapping, got the string '
        f'{features!r}; write ({features!r},).'
    )
  if isinstance(features, Mapping):
    mapping = dict(features)
  else:
    mapping = {k: k for k in features}
  outs = list(mapping.values())
  if len(set(outs)) != len(outs):
    raise ValueError(f'features maps two keys to one name: {mapping}.')
  return mapping


def _image_keys(info: Any) -> set[str] | None:
  """Source keys holding images; None when unknown.

  Images are `tfds.features.Image`s and uint8 `tfds.features.Tensor`s of
  rank >= 2 (raw images, as kdjax's offline builders store them: encoding
  PNG needs TensorFlow).
  """
  if info is None or info.features is None:
    return None
  return {
      k
      for k, f in info.features.items()
      if isinstance(f, tfds.features.Image)
      or (isinstance(f, tfds.features.Tensor) and np.dtype(f.np_dtype) == np.uint8
          and len(f.shape) >= 2)
  }


def _class_counts(
    info: Any, explicit: Mapping[str, int] | None
) -> dict[str, int]:
  counts = {}
  if info is not None and info.features is not None:
    for k, f in info.features.items():
      if isinstance(f, tfds.features.ClassLabel) and f.num_classes:
        counts[k] = f.num_classes
  counts.update(explicit or {})
  return counts


def _make_prepare(
    source: Any,
    features: Features,
    scale_images: bool,
    class_counts: Mapping[str, int] | None,
    transform: Callable[[Example], Example] | None,
) -> Callable[[Example], Example]:
  """Builds the per-example function: select/rename, convert, check."""
  info = _info_of(source)
  mapping = _key_mapping(info, features)
  image_keys = _image_keys(info)
  counts = _class_counts(info, class_counts)

  def is_image(key: str, value: np.ndarray) -> bool:
    if image_keys is not None:
      return key in image_keys
    return value.dtype == np.uint8 and value.ndim >= 2

  def prepare(example: Example) -> Example:
    keys = mapping if mapping is not None else {k: k for k in example}
    out = {}
    for src_key, out_key in keys.items():
      if src_key not in example:
        raise KeyError(
            f'Key {src_key!r} is not in the examples (keys: '
            f'{sorted(example)}); pass features= to select or rename keys.'
        )
      value = np.asarray(example[src_key])
      if scale_images and is_image(src_key, value):
        if value.dtype != np.uint8:
          raise TypeError(
              f'Image feature {src_key!r} has dtype {value.dtype}; only uint8 '
              'images are scaled to [0, 1]. Pass scale_images=False and a '
              'transform.'
          )
        value = value.astype(np.float32) / np.float32(255.0)
      elif src_key in counts:
        n = counts[src_key]
        bad = value[(value < 0) | (value >= n)]
        if bad.size:
          raise ValueError(
              f'Label {src_key!r} has value {bad.flat[0]} outside '
              f'[0, num_classes={n}).'
          )
        value = value.astype(np.int32)
      out[out_key] = value
    if transform is not None:
      out = transform(out)
    return out

  return prepare


def _default_read_options() -> grain.ReadOptions:
  """grain's defaults with at most one reading thread per CPU.

  Reading and preparing an example is Python work holding the GIL: on a
  2-core machine grain's 16 threads cost twice the CPU time of 2.
  """
  return grain.ReadOptions(num_threads=min(16, os.cpu_count() or 1))


def _check_positive(name: str, value: int) -> None:
  if not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{name} must be a positive integer, got {value!r}.')


def _sharded(
    ds: grain.MapDataset, shard_index: int, shard_count: int
) -> grain.MapDataset:
  _check_positive('shard_count', shard_count)
  if not 0 <= shard_index < shard_count:
    raise ValueError(
        f'shard_index must be in [0, shard_count={shard_count}), got '
        f'{shard_index}.'
    )
  return ds if shard_count == 1 else ds[shard_index::shard_count]


def make_loader(
    source: Sequence[Example],
    *,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    shuffle: bool = True,
    drop_remainder: bool = True,
    transform: Callable[[Example], Example] | None = None,
    features: Features = None,
    scale_images: bool = True,
    class_counts: Mapping[str, int] | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    read_options: grain.ReadOptions | None = None,
) -> grain.DatasetIterator:
  """Returns a checkpointable iterator of shuffled training batches.

  The pipeline is `grain.MapDataset.source(source)[shard].shuffle(seed)
  .repeat(num_epochs).map(prepare).to_iter_dataset(read_options)
  .batch(batch_size)`: examples are read and prepared by grain's prefetch
  threads, then batched. Each epoch is a fresh permutation (the shuffle seed
  is folded with the epoch number), and the whole stream is a deterministic
  function of `seed`. Batches run across epoch boundaries: with
  `num_epochs=E` and N examples there are `E * N // batch_size` batches
  (`ceil` when `drop_remainder=False`).

  Per example, `prepare` selects and renames keys (`features`), turns uint8
  `tfds.features.Image`s into float32 in [0, 1], checks that every
  `ClassLabel` feature lies in [0, num_classes) (raising ValueError naming
  the key, the value and num_classes) and casts it to int32, then applies
  `transform`.

  The iterator's position is `it.get_state()`, a small JSON-serialisable
  dict such as `{'next_index': 224}` (the number of examples consumed, here
  7 batches of 32; grain 0.2.18). A fresh iterator from the same arguments
  and source resumes exactly there after `it.set_state(state)`. Save it next
  to the model checkpoint (e.g. with orbax's `JsonSave`).

  Args:
    source: random-access examples: a TFDS data source from `load_source`
      (whose `dataset_info` gives image keys, class counts and supervised
      keys) or any `Sequence` of dicts.
    batch_size: examples per batch (per process when sharded).
    seed: shuffle seed.
    num_epochs: passes over the data; None repeats forever.
    shuffle: shuffle the examples (each epoch differently).
    drop_remainder: drop a final partial batch (only matters when
      `num_epochs` is finite).
    transform: optional function of a prepared example (dict of NumPy
      arrays) returning a dict of NumPy arrays, e.g. augmentation.
    features: which source keys to keep: a sequence of keys (names kept) or
      a mapping source key -> output key. None (default) maps the source's
      supervised keys to 'x' and 'label' (mnist1d: x, label; mnist/cifar:
      image -> x, label), or keeps every key when there are none.
    scale_images: turn uint8 images into float32 in [0, 1]. Without TFDS
      info, uint8 arrays of rank >= 2 count as images.
    class_counts: extra or overriding number of classes per source key, for
      the label range check (TFDS `ClassLabel` features are checked
      automatically).
    shard_index: this process's shard (e.g. `jax.process_index()`).
    shard_count: number of shards (e.g. `jax.process_count()`); every
      process uses the same `seed` and reads a disjoint 1/shard_count of the
      examples.
    read_options: grain threading/prefetch options for reading and
      preparing examples. None: grain's defaults (500 examples prefetched)
      with min(16, CPU count) threads.

  Returns:
    A `grain.DatasetIterator` of batches: dicts of NumPy arrays with a
    leading batch axis, e.g. mnist1d gives {'x': float32 [B, 40],
    'label': int32 [B]}; mnist gives {'x': float32 [B, 28, 28, 1],
    'label': int32 [B]}.
  """
  _check_positive('batch_size', batch_size)
  if num_epochs is not None:
    _check_positive('num_epochs', num_epochs)
  prepare = _make_prepare(
      source, features, scale_images, class_counts, transform
  )
  ds = _sharded(grain.MapDataset.source(source), shard_index, shard_count)
  if len(ds) == 0:
    raise ValueError('The source has no examples (for this shard).')
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs).map(prepare).to_iter_dataset(
      read_options or _default_read_options()
  )
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  return iter(ds)


def iterate_once(
    source: Sequence[Example],
    batch_size: int,
    *,
    transform: Callable[[Example], Example] | None = None,
    features: Features = None,
    scale_images: bool = True,
    class_counts: Mapping[str, int] | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    read_options: grain.ReadOptions | None = None,
) -> grain.DatasetIterator:
  """Iterates over every example once, in order, for evaluation.

  All batches have exactly `batch_size` rows (fixed shapes, no recompiles):
  the last one is padded with zeros (:func:`kdjax.metrics.pad_batch`) and
  every batch has a boolean 'mask' [B] that is False on padding rows, so
  that means exclude padding:
  `sum(metric * mask) / sum(mask)`.

  Args:
    source: random-access examples, as for `make_loader`.
    batch_size: rows per batch.
    transform: as for `make_loader`.
    features: as for `make_loader`.
    scale_images: as for `make_loader`.
    class_counts: as for `make_loader`.
    shard_index: as for `make_loader`; shards are in order, not shuffled.
    shard_count: as for `make_loader`.
    read_options: as for `make_loader`.

  Returns:
    A `grain.DatasetIterator` (checkpointable like `make_loader`'s) of
    `ceil(N / batch_size)` batches: the prepared features with a leading
    axis of `batch_size` plus 'mask': bool [batch_size].
  """
  _check_positive('batch_size', batch_size)
  base_prepare = _make_prepare(
      source, features, scale_images, class_counts, transform
  )

  def prepare(example: Example) -> Example:
    out = base_prepare(example)
    if MASK_KEY in out:
      raise ValueError(
          f'Examples already have a {MASK_KEY!r} key; iterate_once adds it.'
      )
    return out

  ds = _sharded(grain.MapDataset.source(source), shard_index, shard_count)
  ds = ds.map(prepare).to_iter_dataset(
      read_options or _default_read_options()
  )
  ds = ds.batch(batch_size, drop_remainder=False)
  ds = ds.map(lambda b: pad_batch(b, batch_size))
  return iter(ds)

