"""Sequence-level distillation data: a teacher's beam outputs as a TFDS dataset.

Kim & Rush, "Sequence-Level Knowledge Distillation" (EMNLP 2016),
arXiv:1606.07947, train a student on the teacher's beam-search output for
every training source instead of (or besides) the reference:

* **word-level KD** matches the teacher's per-token distributions on the
  reference (teacher-forced) targets: the token terms of
  :mod:`kdjax.objective` (``token_distill`` beside ``supervised``) with a
  teacher-forced :func:`kdjax.zoo.seq2seq_apply`; no data to build.
* **sequence-level KD** replaces each reference by the teacher's best beam
  hypothesis (``select='beam'``).
* **sequence-level interpolation** picks, among the teacher's K beam
  hypotheses, the one closest to the reference by sentence-level BLEU
  (``select='bleu'``): a target the teacher finds likely that is also
  near the truth.

:func:`build_sequence_kd_data` runs the teacher over the sources in chunks,
each saved atomically as soon as it is decoded, so a run that dies resumes
at the first missing chunk; only when every chunk exists is the TFDS
dataset written (TFDS writes into a temporary directory and renames it when
complete, so a half-written dataset is never read as complete). The dataset
is `array_record` and reads through :func:`load_sequence_kd_data` and
grain like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import hashlib
import os
import zipfile
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from kdjax import _checks
from kdjax.data._builder import OfflineArrayBuilder
from kdjax.data._builder import atomic_savez
from kdjax.data._builder import claim_chunk_dir
from kdjax.data._builder import import_optional

SELECTIONS = ('beam', 'bleu')
_CHUNK_KEYS = ('tokens', 'lengths', 'scores')

# ``decode(batch) -> Generation`` of beam search: ``batch`` holds
# ``'source'`` int32 [B, S] and ``'source_mask'`` bool [B, S].
Decode = Callable[[Mapping[str, np.ndarray]], Any]


def sentence_bleu_scores(hypotheses: Sequence[str], reference: str) -> np.ndarray:
  """Sentence BLEU of each hypothesis against one reference (sacrebleu, smoothed).

  sacrebleu's ``sentence_bleu`` with its default exponential smoothing
  (Chen & Cherry, 2014, method 3), on a 0-100 scale.

  Args:
    hypotheses: detokenized candidate translations.
    reference: the detokenized reference.

  Returns:
    float64 ``[len(hypotheses)]``.
  """
  sacrebleu = import_optional('sacrebleu', needed_for='sequence-level interpolation',
                              package='sacrebleu')
  return np.array([sacrebleu.sentence_bleu(h, [reference]).score for h in hypotheses])


def select_by_bleu(bleu: np.ndarray) -> np.ndarray:
  """The index of the best candidate per row of ``bleu [N, K]`` (ties: lower index).

  Candidates come best-first from beam search, so a tie goes to the
  hypothesis the teacher prefers.
  """
  return np.argmax(np.asarray(bleu), axis=1)


def _fingerprint(source: np.ndarray, source_mask: np.ndarray, batch_size: int,
                 extra: str) -> str:
  digest = hashlib.sha256()
  for array in (source, source_mask):
    array = np.ascontiguousarray(array)
    digest.update(str((array.shape, array.dtype.str)).encode())
    digest.update(array.tobytes())
  digest.update(f'{batch_size}|{extra}'.encode())
  return digest.hexdigest()[:16]


def generate_teacher_chunks(
    decode: Decode,
    source: np.ndarray,
    source_mask: np.ndarray,
    chunk_dir: str,
    *,
    batch_size: int,
    fingerprint: str = '',
    log: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
  """Runs the teacher over every source, resumably; returns the stacked outputs.

  Chunk ``i`` holds sources ``[i * batch_size, (i + 1) * batch_size)``
  (the last padded to `batch_size` with copies of its first row, so every
  call has one shape and compiles once, and trimmed). A chunk is written to
  a temporary file and renamed, so it exists whole or not at all; chunks
  already in `chunk_dir` are not decoded again. `chunk_dir` remembers a
  fingerprint of the sources, `batch_size` and `fingerprint` (put the
  teacher's identity and the decoding options in it): chunks of another
  build are refused instead of mixed in.

  Args:
    decode: ``decode({'source', 'source_mask'}) -> Generation`` of beam
      search (tokens ``[B, K, T]``, lengths ``[B, K]``, scores ``[B, K]``).
    source: int ``[N, S]`` source tokens.
    source_mask: bool ``[N, S]``, True on real tokens.
    chunk_dir: where the chunks go.
    batch_size: sources per call.
    fingerprint: a string naming everything else the outputs depend on.
    log: called with a progress line per decoded chunk.

  Returns:
    ``{'tokens': [N, K, T], 'lengths': [N, K], 'scores': [N, K]}``.
  """
  source, source_mask = np.asarray(source), np.asarray(source_mask)
  if source.ndim != 2 or source_mask.shape != source.shape:
    raise ValueError(
        f'source must be [N, S] and source_mask the same shape, got source with shape '
        f'{source.shape} and source_mask with shape {source_mask.shape}.'
    )
  _checks.check_positive_int('batch_size', batch_size)
  stamp = _fingerprint(source, source_mask, batch_size, fingerprint)
  claim_chunk_dir(chunk_dir, stamp, {'num_sources': len(source), 'batch_size': int(batch_size)})
  num = len(source)
  num_chunks = -(-num // batch_size)
  parts = []
  for i in range(num_chunks):
    path = os.path.join(chunk_dir, f'chunk_{i:06d}.npz')
    lo, hi = i * batch_size, min(num, (i + 1) * batch_size)
    if not os.path.exists(path):
      rows = np.arange(lo, lo + batch_size)
      rows = np.where(rows < hi, rows, lo)
      out = decode({'source': source[rows], 'source_mask': source_mask[rows]})
      arrays = {key: np.asarray(getattr(out, key))[: hi - lo] for key in _CHUNK_KEYS}
      if arrays['tokens'].ndim != 3:
        raise ValueError(
            'decode must return beam search output (tokens [batch, width, length]), got '
            f"tokens with shape {arrays['tokens'].shape}."
        )
      atomic_savez(path, **arrays)
      if log:
        log(f'teacher chunk {i + 1}/{num_chunks} ({hi} of {num} sources)')
    parts.append(_load_chunk(path, hi - lo))
  return {key: np.concatenate([p[key] for p in parts]) for key in _CHUNK_KEYS}


def _load_chunk(path: str, rows: int) -> dict[str, np.ndarray]:
  """A chunk of teacher outputs, never unpickled, its keys and row count checked.

  Raises:
    ValueError: naming the file when it is truncated, corrupt, or holds
      other arrays or another number of rows than its chunk (delete it to
      decode it again).
  """
  try:
    # Opened here, so the file is closed even when np.load fails on it.
    with open(path, 'rb') as f, np.load(f, allow_pickle=False) as saved:
      arrays = {key: saved[key] for key in _CHUNK_KEYS}
  except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
    raise ValueError(f'{path}: not a readable chunk of teacher outputs ({e}); delete it to '
                     'decode the chunk again.') from None
  shapes = {key: value.shape for key, value in arrays.items()}
  if arrays['tokens'].ndim != 3 or any(shape[:1] != (rows,) for shape in shapes.values()):
    raise ValueError(f'{path}: arrays of shapes {shapes}, where the chunk has {rows} sources '
                     '(tokens [rows, width, length]); delete it to decode the chunk again.')
  return arrays


class SequenceKDData(OfflineArrayBuilder, skip_registration=True):
  """The teacher's outputs for every training source (one ``'train'`` split).

  Features per example: ``source`` int32 ``[S]`` and ``source_mask`` bool
  ``[S]`` as given; ``target`` int32 ``[T]`` (the selected hypothesis,
  EOS included when the teacher produced one, then padding) and
  ``target_length``; every beam hypothesis ``candidates`` ``[K, T]`` with
  ``candidate_lengths``, ``candidate_scores`` (the beam's length-penalised
  scores) and ``candidate_bleu`` (sentence BLEU against the reference; all
  zero without references); ``selected`` (the index of ``target`` among
  the candidates) and ``index`` (the source's row).
  """

  VERSION = tfds.core.Version('1.0.0')
  DESCRIPTION = 'Sequence-level KD targets: a teacher\'s beam search outputs.'
  CITATION = 'Kim & Rush, Sequence-Level Knowledge Distillation, EMNLP 2016.'

  def __init__(self, *, arrays: Mapping[str, np.ndarray] | None = None, **kwargs: Any):
    self._arrays = arrays
    super().__init__(**kwargs)

  def _features(self) -> tfds.features.FeaturesDict:
    a = self._arrays
    if a is None:
      raise ValueError('SequenceKDData needs its arrays to be prepared.')
    tensor = lambda key: tfds.features.Tensor(shape=a[key].shape[1:], dtype=a[key].dtype)
    return tfds.features.FeaturesDict({key: tensor(key) for key in a})

  def _split_arrays(self):
    return {'train': dict(self._arrays)}


def build_sequence_kd_data(
    decode: Decode,
    source: np.ndarray,
    source_mask: np.ndarray,
    out_dir: str,
    *,
    batch_size: int,
    select: str = 'beam',
    references: Sequence[str] | None = None,
    detokenize: Callable[[np.ndarray], str] | None = None,
    pad_id: int = 0,
    fingerprint: str = '',
    log: Callable[[str], None] | None = None,
) -> str:
  """Builds (or finds) a sequence-level KD dataset; returns its directory.

  The teacher's outputs are decoded once into ``out_dir/chunks`` (see
  :func:`generate_teacher_chunks`; a rerun after a crash resumes there) and
  every selection is prepared from them into ``out_dir/<select>``: building
  ``'beam'`` and then ``'bleu'`` decodes the sources once.

  Args:
    decode: beam search over a batch, ``decode({'source', 'source_mask'})
      -> Generation``.
    source: int ``[N, S]``.
    source_mask: bool ``[N, S]``.
    out_dir: the build's directory.
    batch_size: sources per teacher call.
    select: ``'beam'`` (the best hypothesis: sequence-level KD) or
      ``'bleu'`` (the hypothesis with the best sentence BLEU against the
      reference: sequence-level interpolation).
    references: the detokenized reference of every source; needed by
      ``'bleu'`` (and, if given, recorded as ``candidate_bleu`` for either).
    detokenize: ``detokenize(tokens [T]) -> str`` for a hypothesis cut at
      its length; needed with `references`.
    pad_id: written after each hypothesis' length.
    fingerprint: see :func:`generate_teacher_chunks`.
    log: progress lines.

  Returns:
    The prepared dataset's directory (read it with
    :func:`load_sequence_kd_data`).
  """
  return build_sequence_kd_datasets(
      decode, source, source_mask, out_dir, batch_size=batch_size, selections=(select,),
      references=references, detokenize=detokenize, pad_id=pad_id, fingerprint=fingerprint,
      log=log)[select]


def build_sequence_kd_datasets(
    decode: Decode,
    source: np.ndarray,
    source_mask: np.ndarray,
    out_dir: str,
    *,
    batch_size: int,
    selections: Sequence[str] = SELECTIONS,
    references: Sequence[str] | None = None,
    detokenize: Callable[[np.ndarray], str] | None = None,
    pad_id: int = 0,
    fingerprint: str = '',
    log: Callable[[str], None] | None = None,
) -> dict[str, str]:
  """:func:`build_sequence_kd_data` for several selections at once.

  The teacher's chunks are read and the candidates' sentence BLEU is
  computed once for all of `selections` (each ``'beam'`` or ``'bleu'``);
  a selection already prepared is found, not rebuilt.

  Returns:
    ``{select: the prepared dataset's directory}``.
  """
  for select in selections:
    if select not in SELECTIONS:
      raise ValueError(f'select must be one of {SELECTIONS}, got {select!r}.')
  if 'bleu' in selections and (references is None or detokenize is None):
    raise ValueError("select='bleu' needs references and detokenize.")
  if references is not None and len(references) != len(source):
    raise ValueError(
        f'references must have one entry per source: got {len(references)} for '
        f'{len(source)} sources.'
    )
  paths = {select: _prepared_dir(os.path.join(out_dir, select)) for select in selections}
  missing = [select for select, path in paths.items() if path is None]
  if not missing:
    return paths
  outputs = generate_teacher_chunks(
      decode, source, source_mask, os.path.join(out_dir, 'chunks'), batch_size=batch_size,
      fingerprint=fingerprint, log=log,
  )
  tokens, lengths, scores = outputs['tokens'], outputs['lengths'], outputs['scores']
  num, width, length = tokens.shape
  keep = np.arange(length)[None, None, :] < lengths[..., None]
  tokens = np.where(keep, tokens, pad_id).astype(np.int32)
  bleu = np.zeros((num, width), np.float32)
  if references is not None:
    for i in range(num):
      hyps = [detokenize(tokens[i, k, : lengths[i, k]]) for k in range(width)]
      bleu[i] = sentence_bleu_scores(hyps, references[i])
  rows = np.arange(num)
  for select in missing:
    selected = select_by_bleu(bleu) if select == 'bleu' else np.zeros(num, np.int64)
    arrays = {
        'source': np.asarray(source, np.int32),
        'source_mask': np.asarray(source_mask, bool),
        'target': tokens[rows, selected],
        'target_length': lengths[rows, selected].astype(np.int32),
        'candidates': tokens,
        'candidate_lengths': lengths.astype(np.int32),
        'candidate_scores': scores.astype(np.float32),
        'candidate_bleu': bleu,
        'selected': selected.astype(np.int32),
        'index': rows.astype(np.int64),
    }
    builder = SequenceKDData(arrays=arrays, data_dir=os.path.join(out_dir, select))
    builder.download_and_prepare()
    paths[select] = builder.data_dir
  return paths


def _prepared_dir(data_dir: str) -> str | None:
  path = os.path.join(data_dir, 'sequence_kd_data', str(SequenceKDData.VERSION))
  return path if os.path.exists(os.path.join(path, 'dataset_info.json')) else None


def load_sequence_kd_data(dataset_dir: str, split: str = 'train') -> Sequence[Mapping[str, Any]]:
  """The random-access data source of a prepared dataset (grain reads it).

  Args:
    dataset_dir: what :func:`build_sequence_kd_data` returned.
    split: ``'train'``, or a slice such as ``'train[:1000]'``.

  Raises:
    FileNotFoundError: `dataset_dir` is not a complete prepared dataset
      (for instance a build that has not finished).
  """
  if not os.path.exists(os.path.join(dataset_dir, 'dataset_info.json')):
    raise FileNotFoundError(
        f'dataset_dir {dataset_dir!r} is not a complete sequence-KD dataset (no '
        'dataset_info.json): run build_sequence_kd_data to the end first.'
    )
  return tfds.builder_from_directory(dataset_dir).as_data_source(split)
