"""Text corpora as byte tokens: file lists, held-out files, fixed-length windows.

A corpus is a directory of text files (by default the CPython standard
library sources of the running interpreter). Files are assigned to the
train, validation and test splits whole, by a stable hash of their path, so
no file is ever split across them. Each file becomes a sequence of byte
tokens (vocabulary 256, no tokenizer, no unknown token), cut into
fixed-length next-token windows that never cross a file boundary; the last
window of a file is padded and its padding masked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os
import sysconfig
import zlib

import numpy as np

#: The vocabulary of byte tokens: ids 0-255, one per byte value.
BYTE_VOCAB_SIZE = 256
TEXT_SPLITS = ('train', 'val', 'test')
# Directories of tests and installed third-party packages: not the library's
# own source text.
DEFAULT_EXCLUDE_DIRS = (
    'test', 'tests', 'idle_test', 'site-packages', 'dist-packages', '__pycache__',
)


def python_stdlib_dir() -> str:
  """The standard library directory of the running interpreter (e.g. ``/usr/lib/python3.11``)."""
  return sysconfig.get_paths()['stdlib']


def list_text_files(
    root: str | os.PathLike[str],
    *,
    suffixes: Sequence[str] = ('.py',),
    exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS,
) -> list[str]:
  """Paths (relative to `root`, ``/``-separated) of the text files of a corpus, sorted.

  Args:
    root: the corpus directory.
    suffixes: file name endings to keep (e.g. ``('.py',)`` or ``('.rst',
      '.txt')``).
    exclude_dirs: directory names whose whole subtree is skipped, at any
      depth.

  Returns:
    The sorted list of relative paths; the order does not depend on the
    file system.
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise FileNotFoundError(f'root: no corpus directory {root!r}')
  excluded = set(exclude_dirs)
  found = []
  for directory, subdirs, names in os.walk(root):
    subdirs[:] = [d for d in subdirs if d not in excluded]
    for name in names:
      if name.endswith(tuple(suffixes)):
        found.append(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, '/'))
  if not found:
    raise ValueError(f'root: no file ending in {tuple(suffixes)} under {root!r}')
  return sorted(found)


def unit_hash(name: str) -> float:
  """A stable number in [0, 1) for a name (a path, a catalog): ``crc32(name) / 2**32``."""
  return zlib.crc32(name.encode('utf-8')) / 2.0**32


def check_split_fractions(val_fraction: float, test_fraction: float, units: str) -> None:
  """Raises unless both fractions are in [0, 1) and leave training `units`."""
  for name, value in (('val_fraction', val_fraction), ('test_fraction', test_fraction)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f'{name} must be in [0, 1), got {value}')
  if val_fraction + test_fraction >= 1.0:
    raise ValueError(
        f'val_fraction + test_fraction must be < 1 to leave training {units}, got '
        f'{val_fraction} + {test_fraction}'
    )


def split_files(
    files: Sequence[str], *, val_fraction: float, test_fraction: float
) -> dict[str, list[str]]:
  """Assigns whole files to ``'train'``, ``'val'`` and ``'test'`` by a hash of their path.

  File ``f`` goes to test if ``u(f) < test_fraction``, else to val if
  ``u(f) < test_fraction + val_fraction``, else to train, where ``u(f) =
  crc32(f) / 2**32``. The assignment of a file does not depend on which
  other files are listed, so a subset of a corpus is split consistently
  with the whole.

  Args:
    files: relative paths, as from :func:`list_text_files`.
    val_fraction: expected share of files held out for validation.
    test_fraction: expected share of files held out for test.

  Returns:
    ``{'train': [...], 'val': [...], 'test': [...]}``, each in the order of
    `files`.
  """
  check_split_fractions(val_fraction, test_fraction, 'files')
  splits = {name: [] for name in TEXT_SPLITS}
  for path in files:
    u = unit_hash(path)
    if u < test_fraction:
      splits['test'].append(path)
    elif u < test_fraction + val_fraction:
      splits['val'].append(path)
    else:
      splits['train'].append(path)
  return splits


def read_byte_documents(
    root: str | os.PathLike[str],
    files: Sequence[str],
    *,
    max_bytes: int | None = None,
) -> list[np.ndarray]:
  """Reads files as byte-token documents, in order, up to a byte budget.

  Args:
    root: the corpus directory.
    files: relative paths under `root`.
    max_bytes: stop before the file that would take the total past this
      many bytes (``None``: read all). Whole files only; the first file is
      always read.

  Returns:
    One ``uint8`` array of byte values per file read, for the first
    ``len(result)`` files of `files` (an empty file gives an empty array).
  """
  if max_bytes is not None and max_bytes <= 0:
    raise ValueError(f'max_bytes must be positive or None, got {max_bytes}')
  documents, total = [], 0
  for path in files:
    with open(os.path.join(os.fspath(root), path), 'rb') as f:
      data = np.frombuffer(f.read(), np.uint8)
    if max_bytes is not None and documents and total + data.size > max_bytes:
      break
    documents.append(data)
    total += data.size
  return documents


def make_windows(
    documents: Sequence[np.ndarray], length: int, *, stride: int | None = None
) -> dict[str, np.ndarray]:
  """Cuts documents into next-token windows of `length` targets.

  Window ``k`` of a document ``d`` (``n`` tokens) holds inputs
  ``d[k s : k s + length]`` and targets ``d[k s + 1 : k s + length + 1]``
  (``s`` the stride), clipped to the document; what is missing at the end
  is padding (token 0) with ``mask`` 0. With the default stride, ``length``,
  every token of a document but the first is a target exactly once. Windows
  never cross a document boundary.

  Args:
    documents: 1-D integer token arrays; documents of fewer than two tokens
      give no window.
    length: targets per window (the model's context).
    stride: offset between the starts of consecutive windows of a document
      (defaults to `length`; smaller values overlap the windows).

  Returns:
    ``{'tokens': int32 [windows, length], 'labels': int32 [windows,
    length], 'mask': float32 [windows, length] (1 = real target, 0 =
    padding), 'document': int32 [windows] (the index of its document)}``,
    in document order.
  """
  if length <= 0:
    raise ValueError(f'length must be positive, got {length}')
  stride = length if stride is None else stride
  if stride <= 0:
    raise ValueError(f'stride must be positive, got {stride}')
  tokens, labels, masks, owners = [], [], [], []
  for index, doc in enumerate(documents):
    doc = np.asarray(doc)
    if doc.ndim != 1:
      raise ValueError(f'documents[{index}] must be 1-D tokens, got shape {doc.shape}')
    targets = doc.size - 1
    if targets <= 0:
      continue
    starts = np.arange(0, targets, stride)
    if stride < length:  # overlapping windows: stop once one reaches the end
      starts = starts[: int(np.searchsorted(starts + length, targets, side='left')) + 1]
    positions = starts[:, None] + np.arange(length)[None, :]
    real = positions < targets
    safe = np.where(real, positions, 0)
    tokens.append(np.where(real, doc[safe], 0))
    labels.append(np.where(real, doc[np.minimum(safe + 1, targets)], 0))
    masks.append(real)
    owners.append(np.full(len(starts), index))
  if not tokens:
    raise ValueError('documents give no window: every document has fewer than two tokens')
  return {
      'tokens': np.concatenate(tokens).astype(np.int32),
      'labels': np.concatenate(labels).astype(np.int32),
      'mask': np.concatenate(masks).astype(np.float32),
      'document': np.concatenate(owners).astype(np.int32),
  }


def make_text_lm_arrays(
    root: str | os.PathLike[str] | None = None,
    *,
    length: int,
    suffixes: Sequence[str] = ('.py',),
    exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    max_bytes: Mapping[str, int | None] | None = None,
    train_stride: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:
  """A byte-level language-modelling corpus split by held-out files.

  Lists the corpus (:func:`list_text_files`), assigns whole files to the
  splits (:func:`split_files`), reads each split's files in the order of
  their path hash (a deterministic sample spread over the whole corpus, not
  the alphabetically first files) up to its byte budget
  (:func:`read_byte_documents`) and cuts them into
  windows (:func:`make_windows`; validation and test windows never
  overlap, so each of their targets is scored once).

  Args:
    root: the corpus directory; ``None`` for the Python standard library
      (:func:`python_stdlib_dir`).
    length: targets per window.
    suffixes: file endings to keep.
    exclude_dirs: directory names skipped at any depth.
    val_fraction: share of files held out for validation.
    test_fraction: share of files held out for test.
    max_bytes: optional byte budget per split name (a deterministic subset:
      the first files in hash order); a missing name or ``None`` reads the
      whole split.
    train_stride: stride of the training windows (defaults to `length`).

  Returns:
    ``{split: arrays}`` for ``'train'``, ``'val'``, ``'test'``, each as
    :func:`make_windows` returns, plus ``'files'`` (the paths read, a
    ``str`` array, in the order read) and ``'bytes'`` (a 0-d int64 array,
    the bytes read).
  """
  root = python_stdlib_dir() if root is None else os.fspath(root)
  files = split_files(
      list_text_files(root, suffixes=suffixes, exclude_dirs=exclude_dirs),
      val_fraction=val_fraction, test_fraction=test_fraction,
  )
  budgets = dict(max_bytes or {})
  unknown = sorted(set(budgets) - set(TEXT_SPLITS))
  if unknown:
    raise KeyError(f'max_bytes has unknown splits {unknown}; the splits are {list(TEXT_SPLITS)}')
  out = {}
  for split in TEXT_SPLITS:
    if not files[split]:
      raise ValueError(
          f'split {split!r} has no file (of {sum(map(len, files.values()))} files); raise '
          'its fraction'
      )
    ordered = sorted(files[split], key=lambda path: (unit_hash(path), path))
    documents = read_byte_documents(root, ordered, max_bytes=budgets.get(split))
    arrays = make_windows(
        documents, length, stride=train_stride if split == 'train' else None)
    arrays['files'] = np.asarray(ordered[: len(documents)], dtype=str)
    arrays['bytes'] = np.asarray(sum(d.size for d in documents), np.int64)
    out[split] = arrays
  return out
