"""The teacher cache's on-disk format: its spec, quantised log-probs, packed indices.

One record per example holds, for its ``time`` tokens, the teacher's top-k
log-probabilities, the log of the mass outside them (the tail) and the
top-k vocabulary indices, as raw little-endian bytes in a fixed layout
(every record of a cache has the same size, given by the spec):

``log_probs [time, k] | ranges [time, 2] (uint8 only) | tail [time] | indices``

Log-prob formats (the error is that of one stored log-probability):

* ``'float32'``: exact (4 bytes each; the tail float32).
* ``'bfloat16'``: 8 significant bits, error <= ``2**-8 |log p|`` (2 bytes;
  the tail bfloat16).
* ``'float16'``: 11 significant bits, error <= ``2**-11 |log p| + 2**-25``
  (2 bytes; the tail float16). Log-probs below -65504 would overflow: they
  are clipped there (``exp(-65504)`` is 0 in float32 anyway).
* ``'uint8'``: an 8-bit code uniform over each token's own range
  ``[lo, hi]`` of its top-k log-probs, ``lo`` and ``hi`` stored as float16
  rounded outwards (4 bytes per token); error <= ``(hi - lo) / 510`` (half
  a step), so at most 0.5/255 of the token's log-prob spread; the top-1
  and the smallest kept log-prob are within float16 rounding of exact.
  The tail is float16.

Index encodings: ``'bytes'``, the fewest whole bytes for the vocabulary
(1 for V <= 256, 2 for V <= 65,536, 3 for V <= 2**24, else 4);
``'packed'``, ``ceil(log2 V)`` bits each, packed over the whole record
(17 bits for V <= 131,072).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import hashlib
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.data._builder import write_json

Array = np.ndarray

FORMAT_VERSION = 1
SPEC_FILE = 'cache_spec.json'
LOG_PROB_FORMATS = ('float32', 'bfloat16', 'float16', 'uint8')
INDEX_ENCODINGS = ('bytes', 'packed')
# (log-prob storage dtype, tail storage dtype) per format.
_STORAGE = {
    'float32': (np.dtype('<f4'), np.dtype('<f4')),
    'bfloat16': (np.dtype(jnp.bfloat16), np.dtype(jnp.bfloat16)),
    'float16': (np.dtype('<f2'), np.dtype('<f2')),
    'uint8': (np.dtype('u1'), np.dtype('<f2')),
}
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f'{name} must be one of {list(choices)}, got {value!r}.')


def index_bits(vocab_size: int) -> int:
  """``ceil(log2(vocab_size))`` bits (at least 1): what one packed index takes."""
  return max(1, math.ceil(math.log2(vocab_size)))


def index_bytes(vocab_size: int) -> int:
  """The fewest whole bytes holding any index below `vocab_size` (1 to 4)."""
  return max(1, math.ceil(index_bits(vocab_size) / 8))


def bytes_per_token(k: int, vocab_size: int, log_prob_format: str,
                    index_encoding: str) -> float:
  """The cache's bytes per token for `k` entries of a `vocab_size` vocabulary.

  ``k * log-prob bytes + range bytes (uint8: 4) + tail bytes + index bytes``,
  the packed indices counted at ``k * ceil(log2 V) / 8`` (a record pads its
  last byte, under 1 bit per token for any record of 8 tokens or more).
  """
  _check_choice('log_prob_format', log_prob_format, LOG_PROB_FORMATS)
  _check_choice('index_encoding', index_encoding, INDEX_ENCODINGS)
  log_prob_dtype, tail_dtype = _STORAGE[log_prob_format]
  ranges = 4 if log_prob_format == 'uint8' else 0
  if index_encoding == 'bytes':
    indices = k * index_bytes(vocab_size)
  else:
    indices = k * index_bits(vocab_size) / 8
  return k * log_prob_dtype.itemsize + ranges + tail_dtype.itemsize + indices


@dataclasses.dataclass(frozen=True)
class CacheSpec:
  """What a teacher cache holds and how; stored as ``cache_spec.json``.

  Two caches with different specs are different caches: a writer resuming
  into a directory refuses one whose spec differs from its own, and a
  reader checks the spec it was promised.

  Attributes:
    k: top-k entries per token.
    vocab_size: the teacher's (true) vocabulary.
    time: tokens per example.
    num_examples: examples in the cache; record ``i`` is example ``i``.
    temperature: the temperature of the stored log-probabilities.
    log_prob_format: one of :data:`LOG_PROB_FORMATS`.
    index_encoding: one of :data:`INDEX_ENCODINGS`.
    teacher_id: the user's name for the teacher, or a SHA-256 fingerprint of
      its variables (:func:`fingerprint`).
    data_id: SHA-256 fingerprint of the token windows (and mask) cached.
    examples_per_shard: shard ``s`` holds examples ``[s * n, (s + 1) * n)``.
    version: the format version.
  """

  k: int
  vocab_size: int
  time: int
  num_examples: int
  temperature: float
  log_prob_format: str
  index_encoding: str
  teacher_id: str
  data_id: str
  examples_per_shard: int
  version: int = FORMAT_VERSION

  def __post_init__(self):
    _check_choice('log_prob_format', self.log_prob_format, LOG_PROB_FORMATS)
    _check_choice('index_encoding', self.index_encoding, INDEX_ENCODINGS)

  @property
  def num_shards(self) -> int:
    return max(1, math.ceil(self.num_examples / self.examples_per_shard))

  def shard_examples(self, shard: int) -> range:
    """The examples of `shard`."""
    start = shard * self.examples_per_shard
    return range(start, min(start + self.examples_per_shard, self.num_examples))

  def shard_name(self, shard: int) -> str:
    return f'teacher_cache-{shard:05d}-of-{self.num_shards:05d}.array_record'

  @property
  def bytes_per_token(self) -> float:
    return bytes_per_token(self.k, self.vocab_size, self.log_prob_format,
                           self.index_encoding)

  @property
  def record_bytes(self) -> int:
    return len(encode_record(self, *_zeros(self)))

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> CacheSpec:
    """The spec of a parsed ``cache_spec.json``, every field checked.

    Raises:
      ValueError: naming every missing, unknown or ill-typed field, and
        values out of range (a spec is read from disk: it is untrusted).
    """
    if not isinstance(value, Mapping):
      raise ValueError(f'a cache spec must be a JSON object, got {type(value).__name__}.')
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
    problems = [f'missing field {n!r}' for n in required if n not in value]
    problems += [f'unknown field {n!r}' for n in value if n not in fields]
    for name, item in value.items():
      if name in _SPEC_CHECKS and not _SPEC_CHECKS[name][0](item):
        problems.append(f'{name}={item!r} must be {_SPEC_CHECKS[name][1]}')
    if not problems:
      if value.get('version', FORMAT_VERSION) != FORMAT_VERSION:
        problems.append(f'version={value["version"]} is not this reader\'s {FORMAT_VERSION}')
      if value['k'] > value['vocab_size']:
        problems.append(f'k={value["k"]} exceeds vocab_size={value["vocab_size"]}')
    if problems:
      raise ValueError('invalid cache spec: ' + '; '.join(problems) + '.')
    return cls(**value)

  def differences(self, other: CacheSpec) -> dict[str, tuple[Any, Any]]:
    """``{field: (self's, other's)}`` where the two specs differ."""
    mine, theirs = self.to_json(), other.to_json()
    return {name: (mine[name], theirs[name]) for name in mine if mine[name] != theirs[name]}


def _positive_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


# Field checks of a spec read from disk: (test, what it must be).
_SPEC_CHECKS = {
    **{name: (_positive_int, 'a positive integer')
       for name in ('k', 'vocab_size', 'time', 'num_examples', 'examples_per_shard', 'version')},
    'temperature': (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) and v > 0, 'a finite number > 0'),
    'log_prob_format': (lambda v: v in LOG_PROB_FORMATS, f'one of {list(LOG_PROB_FORMATS)}'),
    'index_encoding': (lambda v: v in INDEX_ENCODINGS, f'one of {list(INDEX_ENCODINGS)}'),
    'teacher_id': (lambda v: isinstance(v, str), 'a string'),
    'data_id': (lambda v: isinstance(v, str), 'a string'),
}


def read_spec(directory: str | os.PathLike[str]) -> CacheSpec | None:
  """The spec stored in `directory`, or None when there is none.

  Raises:
    ValueError: naming the file, when it is not valid JSON or not a valid
      spec (missing, unknown or ill-typed fields, values out of range).
  """
  path = os.path.join(directory, SPEC_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      return CacheSpec.from_json(json.load(f))
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
    raise ValueError(f'{path}: {e}') from None


def write_spec(directory: str | os.PathLike[str], spec: CacheSpec) -> None:
  """Writes ``cache_spec.json`` atomically (a temporary file renamed)."""
  write_json(os.path.join(directory, SPEC_FILE), spec.to_json())


def fingerprint(tree: Any) -> str:
  """SHA-256 of a pytree of arrays: its structure, shapes, dtypes and bytes."""
  digest = hashlib.sha256()
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  digest.update(str(treedef).encode())
  for path, leaf in leaves:
    value = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f'{jax.tree_util.keystr(path)}:{value.dtype}:{value.shape}'.encode())
    digest.update(value.tobytes())
  return 'sha256:' + digest.hexdigest()


# ----------------------------------------------------------------------------
# Quantisation of the log-probs.


def _round_float16(values: Array, direction: float) -> Array:
  """float16 nearest `values` on the side of `direction` (-inf: below, +inf: above)."""
  clipped = np.clip(values, -_FLOAT16_MAX, _FLOAT16_MAX)
  rounded = clipped.astype(np.float16)
  wrong_side = (rounded > clipped) if direction < 0 else (rounded < clipped)
  return np.where(wrong_side, np.nextafter(rounded, np.float16(direction)), rounded)


def quantize_log_probs(log_probs: Array, log_prob_format: str) -> tuple[Array, Array | None]:
  """Stored form of float32 ``[..., k]`` log-probs: ``(codes, ranges or None)``.

  ``ranges`` is float16 ``[..., 2]`` (``lo``, ``hi``) for ``'uint8'``.
  """
  _check_choice('log_prob_format', log_prob_format, LOG_PROB_FORMATS)
  log_probs = np.asarray(log_probs, np.float32)
  if log_prob_format != 'uint8':
    if log_prob_format == 'float16':
      log_probs = np.maximum(log_probs, -_FLOAT16_MAX)
    return log_probs.astype(_STORAGE[log_prob_format][0]), None
  lo = _round_float16(log_probs.min(axis=-1), -np.inf)
  hi = _round_float16(log_probs.max(axis=-1), np.inf)
  lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
  span = hi32 - lo32
  scale = np.where(span > 0, 255.0 / np.where(span > 0, span, 1.0), 0.0)
  codes = np.rint((np.clip(log_probs, lo32[..., None], hi32[..., None]) - lo32[..., None])
                  * scale[..., None])
  return codes.astype(np.uint8), np.stack([lo, hi], axis=-1)


def dequantize_log_probs(codes: Array, ranges: Array | None) -> Array:
  """float32 log-probs from :func:`quantize_log_probs`'s stored form."""
  if ranges is None:
    return np.asarray(codes).astype(np.float32)
  lo = ranges[..., 0].astype(np.float32)
  step = (ranges[..., 1].astype(np.float32) - lo) / np.float32(255.0)
  return lo[..., None] + codes.astype(np.float32) * step[..., None]


# ----------------------------------------------------------------------------
# Indices: whole bytes or bit-packed.


def pack_indices(indices: Array, bits: int) -> bytes:
  """Non-negative integers below ``2**bits``, `bits` each, little-endian bit order."""
  flat = np.asarray(indices, np.uint32).reshape(-1)
  planes = (flat[:, None] >> np.arange(bits, dtype=np.uint32)[None, :]) & 1
  return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder='little').tobytes()


def unpack_indices(data: bytes | Array, bits: int, count: int) -> Array:
  """The first `count` integers of :func:`pack_indices`'s bytes, as int32."""
  planes = np.unpackbits(np.frombuffer(data, np.uint8), count=count * bits, bitorder='little')
  weights = (np.uint32(1) << np.arange(bits, dtype=np.uint32))
  return (planes.reshape(count, bits).astype(np.uint32) @ weights).astype(np.int32)


def encode_indices(indices: Array, vocab_size: int, index_encoding: str) -> bytes:
  if index_encoding == 'packed':
    return pack_indices(indices, index_bits(vocab_size))
  width = index_bytes(vocab_size)
  as_bytes = np.asarray(indices, '<u4').reshape(-1, 1).view(np.uint8)
  return np.ascontiguousarray(as_bytes[:, :width]).tobytes()


def decode_indices(data: bytes | Array, vocab_size: int, index_encoding: str,
                   count: int) -> Array:
  if index_encoding == 'packed':
    return unpack_indices(data, index_bits(vocab_size), count)
  width = index_bytes(vocab_size)
  raw = np.frombuffer(data, np.uint8).reshape(count, width)
  if width in (1, 2, 4):
    return raw.view(f'<u{width}').reshape(count).astype(np.int32)
  padded = np.zeros((count, 4), np.uint8)
  padded[:, :width] = raw
  return padded.view('<u4').reshape(count).astype(np.int32)


# ----------------------------------------------------------------------------
# Records.


def _zeros(spec: CacheSpec) -> tuple[Array, Array, Array]:
  return (np.zeros((spec.time, spec.k), np.float32), np.zeros((spec.time, spec.k), np.int32),
          np.zeros((spec.time,), np.float32))


def encode_record(spec: CacheSpec, log_probs: Array, indices: Array, tail: Array) -> bytes:
  """One example's record: float32 ``[time, k]``, int ``[time, k]``, float32 ``[time]``."""
  codes, ranges = quantize_log_probs(log_probs, spec.log_prob_format)
  tail_dtype = _STORAGE[spec.log_prob_format][1]
  parts = [codes.tobytes()]
  if ranges is not None:
    parts.append(ranges.astype('<f2').tobytes())
  tail = np.asarray(tail, np.float32)
  if tail_dtype == np.float16:
    tail = np.maximum(tail, -_FLOAT16_MAX)
  parts.append(tail.astype(tail_dtype).tobytes())
  parts.append(encode_indices(indices, spec.vocab_size, spec.index_encoding))
  return b''.join(parts)


def decode_record(spec: CacheSpec, record: bytes) -> tuple[Array, Array, Array]:
  """``(log_probs float32 [time, k], indices int32 [time, k], tail float32 [time])``.

  Raises:
    ValueError: when the record's size is not the spec's, or an index is
      outside the spec's vocabulary (a record of another cache or a corrupt
      one): never a silently wrong shape.
  """
  if len(record) != spec.record_bytes:
    raise ValueError(
        f'a record of {len(record)} bytes, where the spec (time={spec.time}, k={spec.k}, '
        f'{spec.log_prob_format}, {spec.index_encoding} indices of vocab_size='
        f'{spec.vocab_size}) makes {spec.record_bytes}.')
  log_prob_dtype, tail_dtype = _STORAGE[spec.log_prob_format]
  count = spec.time * spec.k
  buffer = memoryview(record)
  offset = count * log_prob_dtype.itemsize
  codes = np.frombuffer(buffer[:offset], log_prob_dtype).reshape(spec.time, spec.k)
  ranges = None
  if spec.log_prob_format == 'uint8':
    end = offset + spec.time * 4
    ranges = np.frombuffer(buffer[offset:end], '<f2').reshape(spec.time, 2)
    offset = end
  end = offset + spec.time * tail_dtype.itemsize
  tail = np.frombuffer(buffer[offset:end], tail_dtype).astype(np.float32)
  indices = decode_indices(buffer[end:], spec.vocab_size, spec.index_encoding, count)
  if indices.size and (indices.min() < 0 or indices.max() >= spec.vocab_size):
    raise ValueError(
        f'a record holds token index {indices.max()}, outside the spec\'s vocab_size='
        f'{spec.vocab_size}.')
  return (dequantize_log_probs(codes, ranges), indices.reshape(spec.time, spec.k), tail)
