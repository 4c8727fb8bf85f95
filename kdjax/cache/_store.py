"""Writing a teacher cache (resumable, sharded, multi-host) and reading it through grain."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import os
from typing import Any

from array_record.python import array_record_module
import grain
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _checks
from kdjax import losses
from kdjax.cache import _format
from kdjax.cache._format import CacheSpec
from kdjax.data._pipeline import array_record_count
from kdjax.losses._topk import check_k

Apply = Callable[..., Any]
# The batch entries a cache adds to the token arrays (see `join_cache`).
LOG_PROBS_KEY = 'teacher_topk_log_probs'
INDICES_KEY = 'teacher_topk_indices'
TAIL_KEY = 'teacher_tail_log_mass'
CACHE_KEYS = (LOG_PROBS_KEY, INDICES_KEY, TAIL_KEY)
# One record per group: record i is read without decoding its neighbours.
_WRITER_OPTIONS = 'group_size:1'


def data_fingerprint(tokens: np.ndarray, mask: np.ndarray | None) -> str:
  """The fingerprint of the token windows (and mask) a cache is written for."""
  return _format.fingerprint({'tokens': np.asarray(tokens),
                              'mask': None if mask is None else np.asarray(mask)})


def _check_token_arrays(tokens: Any, mask: Any, tokens_key: str, mask_key: str | None):
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(
        f'arrays[{tokens_key!r}] must be [num_examples, time] token windows, got shape '
        f'{tokens.shape}.')
  if not np.issubdtype(tokens.dtype, np.integer):
    raise TypeError(
        f'arrays[{tokens_key!r}] must hold integer tokens, got dtype {tokens.dtype} with '
        f'shape {tokens.shape}.')
  if len(tokens) == 0:
    raise ValueError(f'arrays[{tokens_key!r}] has no examples (shape {tokens.shape}).')
  if mask is not None:
    mask = np.asarray(mask)
    if mask.shape != tokens.shape:
      raise ValueError(
          f'arrays[{mask_key!r}] must have the shape of arrays[{tokens_key!r}], got '
          f'{mask.shape} and {tokens.shape}.')
  return tokens, mask


def _teacher_forward(teacher_apply: Apply, k: int, temperature: float,
                     vocab_size: int | None):
  def forward(variables, batch):
    outputs, _ = teacher_apply(variables, batch, train=False)
    if outputs.logits is None:
      raise ValueError(
          'the teacher apply returned no logits (Outputs.logits is None); the cache '
          'needs a teacher apply that computes them (e.g. zoo.lm_apply(model)).')
    return losses.teacher_topk(outputs.logits, k, temperature=temperature,
                               vocab_size=vocab_size)
  return forward


def _vocab_of(teacher_apply, teacher_variables, batch, vocab_size) -> int:
  """The teacher's vocabulary, from the shape of its logits (nothing computed)."""
  outputs, _ = jax.eval_shape(
      lambda v, b: teacher_apply(v, b, train=False), teacher_variables, batch)
  if outputs.logits is None:
    raise ValueError(
        'the teacher apply returned no logits (Outputs.logits is None); the cache '
        'needs a teacher apply that computes them (e.g. zoo.lm_apply(model)).')
  logits_vocab = outputs.logits.shape[-1]
  if vocab_size is None:
    return logits_vocab
  if not 1 <= vocab_size <= logits_vocab:
    raise ValueError(
        f'vocab_size={vocab_size} must be in [1, {logits_vocab}], the teacher logits\' '
        f'last axis (logits shape {outputs.logits.shape}).')
  return int(vocab_size)


def write_cache(
    directory: str | os.PathLike[str],
    teacher_apply: Apply,
    teacher_variables: Any,
    arrays: Mapping[str, Any],
    *,
    k: int,
    temperature: float = 1.0,
    log_prob_format: str = 'float32',
    index_encoding: str = 'bytes',
    batch_size: int = 32,
    examples_per_shard: int = 1024,
    vocab_size: int | None = None,
    teacher_id: str | None = None,
    tokens_key: str = 'tokens',
    mask_key: str | None = 'mask',
    process_index: int | None = None,
    process_count: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CacheSpec:
  """Writes the teacher's top-k log-probs of every token of `arrays` to `directory`.

  For every example (a row of ``arrays[tokens_key]``, ``[num_examples,
  time]``) and token, the teacher's `k` largest log-probabilities at
  `temperature`, their indices and the log of the remaining mass
  (:func:`kdjax.losses.teacher_topk`) are stored, quantised as
  `log_prob_format` says, in array_record shards of `examples_per_shard`
  examples (record ``i`` of the cache is example ``i``), next to a
  ``cache_spec.json`` (:class:`CacheSpec`).

  * Resumable: each shard is written to a temporary file and renamed when
    complete; a rerun skips the shards already there (checking their record
    counts) and writes the rest, giving the same bytes as an uninterrupted
    run. A directory holding a cache of another spec (another teacher, k,
    temperature, format or data) is refused.
  * Multi-host: process ``i`` of ``P`` writes shards ``i, i + P, ...`` (each
    process runs its own copy of the teacher); all write the same spec.
  * The teacher runs in one ``jax.jit`` of fixed shape ``[batch_size,
    time]`` (the last batch of a shard padded), so it compiles once.

  Args:
    directory: where the cache goes (created if missing).
    teacher_apply: ``apply(variables, batch, *, train) -> (Outputs, state)``
      with ``Outputs.logits`` ``[batch, time, vocab]``; it is given
      ``{tokens_key: ..., mask_key: ...}`` batches.
    teacher_variables: its variables.
    arrays: the token windows (and mask); other entries are ignored.
    k: entries kept per token, in ``[1, vocab_size]``.
    temperature: the temperature of the stored log-probs (recorded).
    log_prob_format: ``'float32'``, ``'bfloat16'``, ``'float16'`` or
      ``'uint8'`` (see :mod:`kdjax.cache`).
    index_encoding: ``'bytes'`` (fewest whole bytes) or ``'packed'``
      (``ceil(log2 V)`` bits).
    batch_size: examples per teacher forward.
    examples_per_shard: examples per shard file.
    vocab_size: the true vocabulary when the teacher's logits are padded.
    teacher_id: a name for the teacher recorded in the spec; None: a SHA-256
      fingerprint of `teacher_variables` (which reads them all to the host:
      give a name for a teacher sharded over hosts, or a large one).
    tokens_key: the entry of `arrays` with the int ``[num_examples, time]``
      tokens.
    mask_key: the entry with the ``[num_examples, time]`` mask (None: no mask).
    process_index: this process (default ``jax.process_index()``).
    process_count: the number of processes (default ``jax.process_count()``).
    progress: optional ``fn(shards_done, shards_of_this_process)``.

  Returns:
    The cache's :class:`CacheSpec`.

  Raises:
    ValueError: for a `k` outside ``[1, vocab]``, arrays of the wrong shape,
      a bad process index, or an existing cache of another spec (listing
      the differing fields).
    TypeError: for non-integer tokens.
  """
  _checks.check_positive_int('batch_size', batch_size)
  _checks.check_positive_int('examples_per_shard', examples_per_shard)
  _checks.check_positive('temperature', temperature)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  _checks.check_positive_int('process_count', process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index must be in [0, process_count={process_count}), got {process_index}.')
  if tokens_key not in arrays:
    raise KeyError(f'arrays has no {tokens_key!r} entry (tokens_key); it has {sorted(arrays)}.')
  mask = None if mask_key is None else _checks.batch_entry(arrays, mask_key, 'mask_key')
  tokens, mask = _check_token_arrays(arrays[tokens_key], mask, tokens_key, mask_key)
  num_examples, time = tokens.shape

  def batch_of(rows: np.ndarray) -> dict[str, np.ndarray]:
    batch = {tokens_key: np.zeros((batch_size, time), tokens.dtype)}
    batch[tokens_key][:len(rows)] = tokens[rows]
    if mask is not None:
      batch[mask_key] = np.zeros((batch_size, time), mask.dtype)
      batch[mask_key][:len(rows)] = mask[rows]
    return batch

  vocab = _vocab_of(teacher_apply, teacher_variables, batch_of(np.arange(1)), vocab_size)
  k = check_k(k, vocab, 'the teacher\'s vocabulary')
  spec = CacheSpec(
      k=k, vocab_size=vocab, time=int(time), num_examples=int(num_examples),
      temperature=float(temperature), log_prob_format=log_prob_format,
      index_encoding=index_encoding,
      teacher_id=teacher_id if teacher_id is not None else _format.fingerprint(teacher_variables),
      data_id=data_fingerprint(tokens, mask), examples_per_shard=examples_per_shard)
  os.makedirs(directory, exist_ok=True)
  _check_or_write_spec(directory, spec)
  forward = jax.jit(_teacher_forward(teacher_apply, k, float(temperature), vocab_size))
  mine = list(range(process_index, spec.num_shards, process_count))
  for done, shard in enumerate(mine):
    path = os.path.join(directory, spec.shard_name(shard))
    examples = spec.shard_examples(shard)
    if os.path.exists(path):
      count = array_record_count(path)
      if count != len(examples):
        raise ValueError(
            f'{path} holds {count} records but shard {shard} has {len(examples)} examples: '
            'the file is not this cache\'s; delete it to rewrite it.')
    else:
      _write_shard(path, spec, forward, teacher_variables, batch_of, examples, batch_size)
    if progress is not None:
      progress(done + 1, len(mine))
  return spec


def _check_or_write_spec(directory, spec: CacheSpec) -> None:
  existing = _format.read_spec(directory)
  if existing is None:
    _format.write_spec(directory, spec)
    return
  differences = existing.differences(spec)
  if differences:
    listed = '; '.join(f'{name}: cached {old!r}, asked {new!r}'
                       for name, (old, new) in differences.items())
    raise ValueError(
        f'{directory} holds a teacher cache of another spec ({listed}); write to a new '
        'directory, or delete this one to replace it.')


def _write_shard(path, spec, forward, teacher_variables, batch_of, examples, batch_size):
  """Runs the teacher over one shard's examples and writes it atomically."""
  temporary = f'{path}.tmp'
  writer = array_record_module.ArrayRecordWriter(temporary, _WRITER_OPTIONS)
  try:
    for start in range(examples.start, examples.stop, batch_size):
      rows = np.arange(start, min(start + batch_size, examples.stop))
      log_probs, indices, tail = jax.device_get(
          forward(teacher_variables, batch_of(rows)))
      for row in range(len(rows)):
        writer.write(_format.encode_record(spec, log_probs[row], indices[row], tail[row]))
  finally:
    writer.close()
  os.replace(temporary, path)


class TeacherCache:
  """A teacher cache as a grain random-access data source: record ``i`` is example ``i``.

  ``cache[i]`` is ``{'teacher_topk_log_probs': float32 [time, k],
  'teacher_topk_indices': int32 [time, k], 'teacher_tail_log_mass': float32
  [time]}``, dequantised to float32 on read (NumPy, in grain's reading
  threads: the device then receives float32, which costs host-to-device
  bandwidth but no work in the step; see ``benchmarks/cache.py`` for the
  decoding time). ``grain.MapDataset.source(cache)`` and
  :func:`kdjax.data.make_loader` accept it; :func:`join_cache` joins it with
  the token arrays.

  Args:
    directory: a directory written by :func:`write_cache`.
    expected: optional :class:`CacheSpec` the cache must have (e.g. the one
      :func:`write_cache` returned, or one built from the training config).

  Raises:
    FileNotFoundError: without a spec, or with shards missing (the writer
      did not finish: rerun it).
    ValueError: if the spec differs from `expected`.
  """

  def __init__(self, directory: str | os.PathLike[str], *, expected: CacheSpec | None = None):
    self.directory = os.fspath(directory)
    spec = _format.read_spec(self.directory)
    if spec is None:
      raise FileNotFoundError(f'{self.directory} holds no {_format.SPEC_FILE}: not a teacher cache.')
    if expected is not None and spec.differences(expected):
      raise ValueError(
          f'the teacher cache in {self.directory} differs from the one expected: '
          f'{spec.differences(expected)} (cached, expected).')
    self.spec = spec
    paths = [os.path.join(self.directory, spec.shard_name(s)) for s in range(spec.num_shards)]
    missing = [os.path.basename(p) for p in paths if not os.path.exists(p)]
    if missing:
      raise FileNotFoundError(
          f'the teacher cache in {self.directory} is incomplete: {len(missing)} of '
          f'{len(paths)} shards missing ({missing[:3]}...); rerun write_cache to finish it.')
    # Each shard's footer is read here, so a truncated or corrupt file is
    # named now rather than failing inside the C++ reader at some later step.
    for shard, path in enumerate(paths):
      records = array_record_count(path)
      if records != len(spec.shard_examples(shard)):
        raise ValueError(
            f'{path}: holds {records} records, where the spec of the teacher cache in '
            f'{self.directory} puts {len(spec.shard_examples(shard))} examples in this shard.')
    self._paths = paths
    self._source = grain.sources.ArrayRecordDataSource(paths)

  def __len__(self) -> int:
    return self.spec.num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    path = self._paths[index // self.spec.examples_per_shard]
    try:
      log_probs, indices, tail = _format.decode_record(self.spec, self._source[index])
    except (RuntimeError, ValueError) as e:
      raise ValueError(f'{path}: example {index} of the teacher cache is unreadable: {e}') from None
    return {LOG_PROBS_KEY: log_probs, INDICES_KEY: indices, TAIL_KEY: tail}

  def __repr__(self) -> str:
    return f'TeacherCache({self.directory!r}, k={self.spec.k}, examples={len(self)})'

  def read(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """The records of `indices` stacked: ``[len(indices), time, k]`` etc."""
    records = [self[int(i)] for i in indices]
    return {key: np.stack([r[key] for r in records]) for key in CACHE_KEYS}


class JoinedSource:
  """Token arrays joined with their teacher cache: item ``i`` has both (see :func:`join_cache`)."""

  def __init__(self, arrays: Mapping[str, np.ndarray], cache: TeacherCache):
    self.arrays, self.cache = arrays, cache

  def __len__(self) -> int:
    return len(self.cache)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {**{key: value[index] for key, value in self.arrays.items()}, **self.cache[index]}

  def __repr__(self) -> str:
    return f'JoinedSource({sorted(self.arrays)}, {self.cache!r})'


def join_cache(
    arrays: Mapping[str, Any],
    cache: TeacherCache,
    *,
    keys: Sequence[str] = ('tokens', 'labels', 'mask'),
    tokens_key: str = 'tokens',
    mask_key: str | None = 'mask',
) -> JoinedSource:
  """A data source whose item ``i`` is example ``i`` of `arrays` with its cache.

  Item ``i`` holds ``arrays[key][i]`` for each of `keys` and the cache's
  ``teacher_topk_log_probs`` ``[time, k]``, ``teacher_topk_indices``
  ``[time, k]`` and ``teacher_tail_log_mass`` ``[time]``, so that batches
  from ``grain.MapDataset.source(joined).shuffle(seed=...).batch(B)`` (or
  :func:`kdjax.data.make_loader`) carry ``[B, time, k]`` teacher entries
  next to the tokens, for :func:`cached_teacher_apply`.

  Args:
    arrays: the token windows the cache was written for.
    cache: the :class:`TeacherCache`.
    keys: the entries of `arrays` to carry.
    tokens_key: the tokens' entry, checked against the cache's data
      fingerprint together with `mask_key`'s (as :func:`write_cache` was
      given them).
    mask_key: the mask's entry, or None if the cache was written without.

  Raises:
    ValueError: if the arrays are not those the cache was written for (other
      tokens, mask or number of examples).
  """
  mask = None if mask_key is None else np.asarray(arrays[mask_key])
  if data_fingerprint(np.asarray(arrays[tokens_key]), mask) != cache.spec.data_id:
    raise ValueError(
        f'the arrays ({tokens_key!r} with shape {np.shape(arrays[tokens_key])}) are not those '
        f'the teacher cache in {cache.directory} was written for ({cache.spec.num_examples} '
        f'examples of {cache.spec.time} tokens, data_id {cache.spec.data_id[:19]}...).')
  return JoinedSource({key: np.asarray(arrays[key]) for key in keys}, cache)


def cache_batch(batch: Mapping[str, Any], log_probs_dtype: Any = jnp.float32):
  """``(log_probs, indices, tail)`` of a batch carrying a cache's entries."""
  return (jnp.asarray(_checks.batch_entry(batch, LOG_PROBS_KEY, 'the teacher cache entry'),
                      log_probs_dtype),
          jnp.asarray(_checks.batch_entry(batch, INDICES_KEY, 'the teacher cache entry'),
                      jnp.int32),
          jnp.asarray(_checks.batch_entry(batch, TAIL_KEY, 'the teacher cache entry'),
                      log_probs_dtype))
