"""One text, two tokenizers: byte spans, chunk alignment and vocabulary mapping arrays.

A student and a teacher that tokenize differently read the same text. Each
token covers a span of the text's UTF-8 bytes; both tokenizations of a
text cover the same bytes, so the offsets where both have a token boundary
cut the text into chunks that each side spells with whole tokens. The
arrays here give every target position its chunk (fixed shapes, -1 where
none), precomputed once in the data pipeline so that the loss jits once.

A tokenizer here is ``None`` for the byte-level vocabulary of
:mod:`kdjax.data._text` (ids 0-255, one per byte) or a byte-level BPE
(:class:`~kdjax.data.BpeTokenizer`, or a ``tokenizers.Tokenizer`` with a
``ByteLevel`` pre-tokenizer).
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import numpy as np

from kdjax import _checks
from kdjax.data._text import BYTE_VOCAB_SIZE

#: A byte-level tokenizer: None (one token per byte) or a byte-level BPE.
Tokenizer = Any


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
  """The inverse of byte-level BPE's byte -> printable character table (GPT-2's).

  Printable Latin-1 bytes stand for themselves; the other 68 bytes are
  shifted to the characters ``U+0100`` onwards, in byte order.
  """
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  table, shifted = {}, 0
  for byte in range(256):
    if byte in printable:
      table[chr(byte)] = byte
    else:
      table[chr(256 + shifted)] = byte
      shifted += 1
  return table


def _backend(tokenizer: Tokenizer):
  """The ``tokenizers.Tokenizer`` inside a :class:`BpeTokenizer` (or itself)."""
  return getattr(tokenizer, 'tokenizer', tokenizer)


def token_bytes(tokenizer: Tokenizer) -> list[bytes]:
  """Each token id's byte string.

  Byte-level BPE stores a token as printable characters, one per byte
  (GPT-2's byte-to-unicode table); this undoes the table, so that
  ``'Ġthe'`` becomes ``b' the'``. Added tokens (``<pad>``, ``<s>``, ...)
  match their literal text, so their bytes are the UTF-8 of their content.

  Args:
    tokenizer: ``None`` (byte level) or a byte-level BPE.

  Returns:
    ``vocab_size`` byte strings, indexed by id.

  Raises:
    ValueError: if a (non-added) token has a character outside the
      byte-level alphabet: the tokenizer is not byte-level.
  """
  if tokenizer is None:
    return [bytes([i]) for i in range(BYTE_VOCAB_SIZE)]
  backend = _backend(tokenizer)
  added = {index: token.content for index, token in backend.get_added_tokens_decoder().items()}
  table = _unicode_to_byte()
  vocab = [b''] * backend.get_vocab_size()
  for token, index in backend.get_vocab().items():
    if index in added:
      vocab[index] = added[index].encode('utf-8')
      continue
    try:
      vocab[index] = bytes(table[char] for char in token)
    except KeyError:
      raise ValueError(
          f'tokenizer: token {token!r} (id {index}) is not written in the byte-level '
          'alphabet; only byte-level tokenizers map to byte spans.') from None
  return vocab


def special_token_ids(tokenizer: Tokenizer) -> frozenset[int]:
  """The ids of the tokenizer's special tokens (none for the byte level)."""
  if tokenizer is None:
    return frozenset()
  decoder = _backend(tokenizer).get_added_tokens_decoder()
  return frozenset(index for index, token in decoder.items() if token.special)


def vocab_size(tokenizer: Tokenizer) -> int:
  """The number of ids: 256 for the byte level."""
  return BYTE_VOCAB_SIZE if tokenizer is None else _backend(tokenizer).get_vocab_size()


def vocab_mapping(student_tokenizer: Tokenizer, teacher_tokenizer: Tokenizer) -> np.ndarray:
  """Student id -> the teacher id with the same byte string, or -1.

  The exact-match vocabulary overlap of GOLD's hybrid loss. Tokens are
  compared as decoded byte strings (:func:`token_bytes`), not as stored
  strings, so that a byte-level BPE's ``'Ġ'`` matches the byte token of a
  space. Special tokens match nothing.

  Args:
    student_tokenizer: ``None`` (byte level) or a byte-level BPE.
    teacher_tokenizer: likewise.

  Returns:
    int32 ``[student_vocab]``.
  """
  teacher_special = special_token_ids(teacher_tokenizer)
  teacher_ids = {}
  for index, token in enumerate(token_bytes(teacher_tokenizer)):
    if index not in teacher_special and token:
      teacher_ids.setdefault(token, index)
  student_special = special_token_ids(student_tokenizer)
  return np.asarray([
      -1 if index in student_special else teacher_ids.get(token, -1)
      for index, token in enumerate(token_bytes(student_tokenizer))
  ], np.int32)


def normalize_text(text: str, tokenizer: Tokenizer) -> str:
  """`text` as the tokenizer's normalizer sees it (unchanged for the byte level)."""
  if tokenizer is None:
    return text
  normalizer = _backend(tokenizer).normalizer
  return text if normalizer is None else normalizer.normalize_str(text)


def encode_with_byte_lengths(
    tokenizer: Tokenizer, text: str, *, vocab: Sequence[bytes] | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Token ids of `text` and the number of UTF-8 bytes each covers.

  Args:
    tokenizer: ``None`` (byte level) or a byte-level BPE.
    text: the text, already normalised (:func:`normalize_text`).
    vocab: the tokenizer's :func:`token_bytes`, when already computed.

  Returns:
    ``(ids, lengths)``, int32 ``[tokens]`` each; ``lengths`` sums to the
    number of bytes of `text`.

  Raises:
    ValueError: if the tokens do not spell the text's bytes (a tokenizer
      that normalises or drops characters).
  """
  data = text.encode('utf-8')
  if tokenizer is None:
    ids = np.frombuffer(data, np.uint8).astype(np.int32)
    return ids, np.ones_like(ids)
  ids = _backend(tokenizer).encode(text).ids
  vocab = token_bytes(tokenizer) if vocab is None else vocab
  pieces = [vocab[i] for i in ids]
  if b''.join(pieces) != data:
    raise ValueError(
        'tokenizer: the tokens of the text do not spell its bytes (does the tokenizer '
        f'normalise it? pass text through normalize_text first): {text[:60]!r}')
  return np.asarray(ids, np.int32), np.asarray([len(p) for p in pieces], np.int32)


def align_boundaries(
    student_boundaries: Sequence[int], teacher_boundaries: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
  """Chunk ids of two segmentations of the same bytes, cut where both have a boundary.

  Side ``s`` has ``n`` target tokens given by ``n + 1`` strictly increasing
  byte offsets ``b_0 < b_1 < ... < b_n``: token ``i`` spans ``[b_i,
  b_{i+1})``. The offsets present on both sides, ``c_0 < c_1 < ... <
  c_K``, cut the bytes into chunks ``[c_k, c_{k+1})``; chunk ``k`` is
  spelled exactly by the tokens of each side that lie inside it. Tokens
  outside ``[c_0, c_K)`` (where only one side has tokens) get -1.

  Args:
    student_boundaries: the student's ``n_s + 1`` offsets.
    teacher_boundaries: the teacher's ``n_t + 1`` offsets.

  Returns:
    ``(student_chunk, teacher_chunk)``: int32 ``[n_s]`` and ``[n_t]``, the
    chunk of each token (0, 1, ... in order) or -1.

  Raises:
    ValueError: if an offset list is not strictly increasing (an empty
      token).
  """
  sides = []
  for name, boundaries in (('student_boundaries', student_boundaries),
                           ('teacher_boundaries', teacher_boundaries)):
    boundaries = np.asarray(boundaries, np.int64)
    if boundaries.ndim != 1 or boundaries.size == 0:
      raise ValueError(
          f'{name} must be a non-empty 1-D list of offsets, got shape {boundaries.shape}')
    if np.any(np.diff(boundaries) <= 0):
      raise ValueError(
          f'{name} must be strictly increasing (no empty token), got {boundaries.tolist()}')
    sides.append(boundaries)
  common = np.intersect1d(*sides)
  chunks = []
  for boundaries in sides:
    starts, ends = boundaries[:-1], boundaries[1:]
    chunk = np.searchsorted(common, ends, side='left') - 1
    inside = (common.size >= 2) & (starts >= common[0]) & (ends <= common[-1])
    chunks.append(np.where(inside, chunk, -1).astype(np.int32))
  return chunks[0], chunks[1]


def _side_arrays(ids: np.ndarray, lengths: np.ndarray, length: int):
  """Inputs, targets, mask and the boundaries of the targets of one side."""
  ends = np.cumsum(lengths)
  targets = max(min(ids.size - 1, length), 0)
  tokens = np.zeros(length, np.int32)
  labels = np.zeros(length, np.int32)
  tokens[:targets] = ids[:targets]
  labels[:targets] = ids[1:targets + 1]
  mask = (np.arange(length) < targets).astype(np.float32)
  # Targets start where the first input token ends.
  return tokens, labels, mask, ends[: targets + 1], targets


def make_cross_tokenizer_arrays(
    texts: Sequence[str],
    *,
    teacher_tokenizer: Tokenizer,
    student_tokenizer: Tokenizer = None,
    student_length: int,
    teacher_length: int,
) -> dict[str, np.ndarray]:
  """Next-token arrays of the same texts in two tokenizations, with their alignment.

  Each text is normalised by both tokenizers' normalizers and tokenized by
  each; a side's inputs are its first ``length`` tokens and its targets the
  tokens after them (a longer text is cut; the first token is an input
  only). The targets of both sides are then cut into chunks at the byte
  offsets where both have a boundary (:func:`align_boundaries`): chunk
  ``k`` of a row is spelled exactly by the student targets with
  ``student_chunk == k`` and by the teacher targets with ``teacher_chunk ==
  k``. Bytes before the later of the two first targets, or after the
  earlier of the two last targets, belong to no chunk (-1), nor does
  padding. The arrays have fixed shapes, so a loss over them compiles once.

  Args:
    texts: ``n`` texts.
    teacher_tokenizer: the teacher's tokenizer (``None``: bytes).
    student_tokenizer: the student's (default ``None``: bytes, the
      vocabulary of :func:`~kdjax.data.make_text_lm_arrays`).
    student_length: student positions per row.
    teacher_length: teacher positions per row.

  Returns:
    ``{'tokens', 'labels', 'mask'}`` of the student (int32, int32, float32
    ``[n, student_length]``, mask 1 = real target), ``{'teacher_tokens',
    'teacher_labels', 'teacher_mask'}`` likewise ``[n, teacher_length]``,
    ``'student_chunk'`` int32 ``[n, student_length]`` and
    ``'teacher_chunk'`` int32 ``[n, teacher_length]`` (chunk id or -1).
    Chunk ids of a row run 0, 1, ... and are below ``min(student_length,
    teacher_length)``.

  Raises:
    ValueError: for non-positive lengths, or a tokenizer whose tokens do not
      spell the text.
  """
  _checks.check_positive_int('student_length', student_length)
  _checks.check_positive_int('teacher_length', teacher_length)
  rows = {key: [] for key in ('tokens', 'labels', 'mask', 'teacher_tokens', 'teacher_labels',
                              'teacher_mask', 'student_chunk', 'teacher_chunk')}
  student_vocab = None if student_tokenizer is None else token_bytes(student_tokenizer)
  teacher_vocab = None if teacher_tokenizer is None else token_bytes(teacher_tokenizer)
  for text in texts:
    text = normalize_text(normalize_text(text, teacher_tokenizer), student_tokenizer)
    student = _side_arrays(
        *encode_with_byte_lengths(student_tokenizer, text, vocab=student_vocab), student_length)
    teacher = _side_arrays(
        *encode_with_byte_lengths(teacher_tokenizer, text, vocab=teacher_vocab), teacher_length)
    student_chunk = np.full(student_length, -1, np.int32)
    teacher_chunk = np.full(teacher_length, -1, np.int32)
    if student[4] > 0 and teacher[4] > 0:
      student_ids, teacher_ids = align_boundaries(student[3], teacher[3])
      student_chunk[: student[4]] = student_ids
      teacher_chunk[: teacher[4]] = teacher_ids
    for prefix, side in (('', student), ('teacher_', teacher)):
      rows[f'{prefix}tokens'].append(side[0])
      rows[f'{prefix}labels'].append(side[1])
      rows[f'{prefix}mask'].append(side[2])
    rows['student_chunk'].append(student_chunk)
    rows['teacher_chunk'].append(teacher_chunk)
  out = {}
  for key, values in rows.items():
    width = teacher_length if key.startswith('teacher_') else student_length
    dtype = np.float32 if 'mask' in key else np.int32
    out[key] = np.stack(values) if values else np.zeros((0, width), dtype)
  return out


def split_text(text: str, max_bytes: int) -> list[str]:
  """Cuts a text into pieces of at most `max_bytes` UTF-8 bytes, at line ends where possible.

  Lines are gathered into a piece while it fits; a line longer than
  `max_bytes` is cut at character boundaries. Joined, the pieces give the
  text back.

  Args:
    text: the text.
    max_bytes: the most bytes per piece (at least 4, one UTF-8 character).

  Returns:
    The pieces, none empty.
  """
  if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 4:
    raise ValueError(f'max_bytes must be an int of at least 4, got {max_bytes!r}')
  pieces, current, size = [], [], 0
  for line in text.splitlines(keepends=True):
    while line:
      encoded = line.encode('utf-8')
      if size + len(encoded) <= max_bytes:
        current.append(line)
        size += len(encoded)
        break
      if current:
        pieces.append(''.join(current))
        current, size = [], 0
        continue
      cut = len(encoded[:max_bytes].decode('utf-8', errors='ignore'))
      pieces.append(line[:cut])
      line = line[cut:]
  if current:
    pieces.append(''.join(current))
  return pieces
