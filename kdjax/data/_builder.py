"""A base for TFDS builders whose splits are arrays made offline."""

from __future__ import annotations

import importlib
import json
import os
from types import ModuleType
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

SplitArrays = dict[str, dict[str, np.ndarray]]


def import_optional(module: str, *, needed_for: str, package: str) -> ModuleType:
  """Imports `module`, or raises an ImportError saying which package to install."""
  try:
    return importlib.import_module(module)
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f'{needed_for} needs the `{package}` package: `pip install kdjax[data]` '
        f'(or `pip install {package}`).'
    ) from e


def write_json(path: str | os.PathLike[str], value: object) -> None:
  """Writes JSON atomically (a temporary file of this process, renamed).

  The temporary file's name holds the process id, so processes of one
  multi-host job writing the same file never write into each other's
  temporary file.
  """
  path = os.fspath(path)
  temporary = f'{path}.tmp{os.getpid()}'
  with open(temporary, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=1, ensure_ascii=False, sort_keys=True)
    f.write('\n')
  os.replace(temporary, path)


def atomic_savez(path: str, **arrays: np.ndarray) -> None:
  """``np.savez`` to a temporary file of this process, renamed: the file is whole or absent."""
  tmp = f'{path}.tmp-{os.getpid()}.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def claim_chunk_dir(chunk_dir: str, fingerprint: str, spec: dict[str, object]) -> None:
  """Makes `chunk_dir` the home of one resumable build's chunks, or refuses another build's.

  The first call writes ``spec.json`` (`spec` and the `fingerprint`); a
  later call with another fingerprint raises, so chunks of two builds are
  never mixed.
  """
  os.makedirs(chunk_dir, exist_ok=True)
  spec_path = os.path.join(chunk_dir, 'spec.json')
  if os.path.exists(spec_path):
    try:
      with open(spec_path, encoding='utf-8') as f:
        found = json.load(f)['fingerprint']
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
      raise ValueError(f'{spec_path}: not a chunk spec ({e!r}); delete {chunk_dir!r} to '
                       'build again.') from None
    if found != fingerprint:
      raise ValueError(
          f'chunk_dir {chunk_dir!r} holds chunks of another build (fingerprint {found}, '
          f'this build {fingerprint}): use a new directory or delete it.'
      )
  else:
    write_json(spec_path, {'fingerprint': fingerprint, **spec})


class OfflineArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS builder for data generated or bundled locally, never downloaded.

  Subclasses give the metadata (``DESCRIPTION``, ``CITATION``, ``HOMEPAGE``,
  ``LICENSE``, ``SUPERVISED_KEYS``), the features (:meth:`_features`) and
  the data as arrays per split (:meth:`_split_arrays`); this base writes
  `array_record` files by default (readable without TensorFlow through
  ``tfds.data_source``) and keeps every split in the arrays' order: example
  ``i`` of a split is row ``i`` of its arrays (shuffling is disabled).
  """

  DESCRIPTION: str = ''
  CITATION: str = ''
  HOMEPAGE: str = ''
  LICENSE: str = ''
  SUPERVISED_KEYS: tuple[str, str] | None = None

  def __init__(self, *, file_format: Any = None, **kwargs: Any):
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _features(self) -> tfds.features.FeaturesDict:
    """The features of one example."""
    raise NotImplementedError

  def _split_arrays(self) -> SplitArrays:
    """``{split: {feature: [n, ...] array}}``, row ``i`` the split's example ``i``."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=self._features(),
        supervised_keys=self.SUPERVISED_KEYS,
        disable_shuffling=True,
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        license=self.LICENSE,
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager  # Made offline; nothing to download.
    return {
        name: self._generate_examples(arrays)
        for name, arrays in self._split_arrays().items()
    }

  def _generate_examples(
      self, arrays: dict[str, np.ndarray]
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (key, example), key the example's position in its split.

    Args:
      arrays: one split of :meth:`_split_arrays`; scalar entries (labels,
        indices) are passed on as Python numbers, entries of object arrays
        (strings) as they are.
    """
    names = tuple(arrays)
    for i, row in enumerate(zip(*(arrays[name] for name in names))):
      yield i, {
          name: value.item() if isinstance(value, np.generic) else value
          for name, value in zip(names, row)
      }
