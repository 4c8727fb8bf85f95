"""FastSpeech (Ren et al., 2019) vs FastSpeech 2 (Ren et al., 2021) on MBROLA speech.

An autoregressive Transformer TTS teacher (Li et al., 2019) is trained on
the training split (teacher forcing, guided attention decayed to 0, a
reduction factor ``r``: ``r`` frames per decoder step); the candidate
``(r, guided weight)`` with the smallest duration error on the validation
split is kept. The MBROLA data know every phoneme's true duration, so the
teacher's alignment is *measured*: durations extracted from its attention
(FastSpeech's focus-rate head, teacher forced on the validation split's
true mels) against the true ones, mean absolute error in frames and the
share of phonemes within one frame. A non-autoregressive student
(:class:`kdjax.zoo.FastSpeech`) is then trained three ways, 3 seeds each,
the same initialisation per seed:

* ``gt`` (a): ground-truth mels and durations, no pitch or energy;
* ``distilled`` (b), FastSpeech: the teacher's generated mels and the
  durations extracted from its attention (sequence-level distillation);
* ``fastspeech2`` (c): ground truth plus true duration, pitch and energy
  (the variance adaptor).

Held-out metrics on the test split: mel L1 and mel cepstral distortion
(:func:`mel_cepstral_distortion`) with the true durations (aligned frame for
frame) and free running (over the frames both have), duration error,
pitch error (c only: the others predict no pitch), the over-smoothing ratio
(:func:`variance_ratio`), and the training time end to end (the teacher's
training and generation included for (b)). Usage::

    python -m experiments.fastspeech2 --config=experiments/configs/fastspeech2.py:cpu \\
        --workdir=runs/fastspeech2_cpu
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import functools
import json
import os
import shutil
import sys
import time
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy.fft

from experiments import _common
from experiments.configs import fastspeech2 as fs2_configs
from kdjax import data as data_lib
from kdjax import loop
from kdjax import objective as objective_lib
from kdjax import step as step_lib
from kdjax import zoo

MODULE = 'experiments.fastspeech2'
VARIANT_NAMES = {
    'gt': '(a) ground truth',
    'distilled': '(b) FastSpeech (teacher data)',
    'fastspeech2': '(c) FastSpeech 2',
}
NUM_MELS = 80


# ----------------------------------------------------------------------------
# Data.


def _fits(example, d) -> bool:
  return (len(example['phonemes']) <= d.max_phonemes
          and int(example['num_frames']) <= d.max_frames)


def _subset(examples: list, limit: int, seed: int) -> list:
  if limit and len(examples) > limit:
    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:limit])
    examples = [examples[i] for i in keep]
  return examples


def load_data(config: ml_collections.ConfigDict) -> tuple[dict[str, list], dict[str, Any]]:
  """``({'train', 'val', 'test': [example dicts]}, info)`` of the utterances that fit.

  ``config.data.source`` is ``'mbrola'`` (the offline espeak-ng + MBROLA
  build in ``data.data_dir``, made on first use) or ``'sample'`` (the chunk
  files of ``data.chunk_files``, every utterance in every split: for the
  smoke test only).
  """
  d = config.data
  if d.source == 'sample':
    files = [f for f in d.chunk_files.split(',') if f]
    if not files:
      raise ValueError("config.data.source='sample' needs config.data.chunk_files.")
    examples = data_lib.read_speech_chunks(files)
    raw = {'train': examples, 'val': examples, 'test': examples}
    where = ','.join(files)
  elif d.source == 'mbrola':
    builder = data_lib.SpeechFeatures(
        config='mbrola', data_dir=d.data_dir, num=d.num, val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        log=(lambda line: print(line, file=sys.stderr, flush=True)) if config.progress else None)
    builder.download_and_prepare()
    names = {'train': 'train', 'val': 'validation', 'test': 'test'}
    raw = {}
    for split, name in names.items():
      source = data_lib.load_source('speech_features/mbrola', name, data_dir=d.data_dir)
      raw[split] = [dict(source[i]) for i in range(len(source))]
    where = builder.data_dir
  else:
    raise ValueError(f"config.data.source must be 'mbrola' or 'sample', got {d.source!r}.")
  limits = {'train': d.max_train, 'val': d.max_val, 'test': d.max_test}
  splits, info = {}, {'dataset': where, 'splits': {}}
  for split, examples in raw.items():
    kept = _subset([e for e in examples if _fits(e, d)], limits[split], d.subset_seed)
    if not kept:
      raise ValueError(f'no {split} utterance has at most {d.max_phonemes} phonemes and '
                       f'{d.max_frames} frames.')
    splits[split] = kept
    info['splits'][split] = {
        'examples': len(kept), 'available': len(examples),
        'frames': int(sum(int(e['num_frames']) for e in kept)),
        'mean_duration': float(np.mean(np.concatenate([e['durations'] for e in kept])))}
  return splits, info


def batch_arrays(examples, config, stats) -> dict[str, np.ndarray]:
  """The padded batch of every example (:func:`kdjax.data.pad_speech_batch`)."""
  return data_lib.pad_speech_batch(examples, max_phonemes=config.data.max_phonemes,
                                   max_frames=config.data.max_frames, stats=stats)


# ----------------------------------------------------------------------------
# Reduction factor: r frames per decoder step, as Tacotron and Transformer TTS.


def group_frames(mel: np.ndarray, frame_mask: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
  """``[B, T, M]`` -> ``[B, ceil(T / r), r * M]`` (zero-padded) and the group mask.

  A group is real when its first frame is.
  """
  b, t, m = mel.shape
  groups = -(-t // r)
  padded = np.zeros((b, groups * r, m), mel.dtype)
  padded[:, :t] = mel
  mask = np.zeros((b, groups * r), bool)
  mask[:, :t] = frame_mask
  return padded.reshape(b, groups, r * m), mask.reshape(b, groups, r)[..., 0]


def ungroup_frames(grouped: np.ndarray, r: int, frames: int) -> np.ndarray:
  """The inverse of :func:`group_frames`: ``[B, G, r * M]`` -> ``[B, frames, M]``."""
  b, g, rm = grouped.shape
  return np.asarray(grouped).reshape(b, g * r, rm // r)[:, :frames]


def frame_attention(attention: np.ndarray, r: int, frames: int) -> np.ndarray:
  """A grouped decoder's attention ``[..., G, P]`` repeated to ``[..., frames, P]``."""
  return np.repeat(np.asarray(attention), r, axis=-2)[..., :frames, :]


def teacher_batch(arrays: Mapping[str, np.ndarray], r: int) -> dict[str, np.ndarray]:
  mel, mask = group_frames(arrays['mel'], arrays['frame_mask'], r)
  return {'phonemes': arrays['phonemes'], 'phoneme_mask': arrays['phoneme_mask'], 'mel': mel,
          'frame_mask': mask, 'speaker': arrays['speaker']}


# ----------------------------------------------------------------------------
# Metrics.


def mel_l1(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> float:
  """Mean over the real frames of `mask` of the mean over bins of ``|pred - true|``."""
  per_frame = np.abs(pred - true).mean(-1)
  return float((per_frame * mask).sum() / max(mask.sum(), 1))


def mel_cepstral_distortion(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> float:
  """MCD in dB between log-mel spectrograms, averaged over the real frames.

  The cepstra are the orthonormal DCT-II of each frame's natural-log mel
  magnitudes, ``c_k = sqrt(2/M) s_k sum_m log_mel_m cos(pi k (m + 1/2) / M)``
  (``s_0 = 1/sqrt(2)``, else 1), and per frame

  ``MCD = (10 / ln 10) * sqrt(2 * sum_{k=1}^{K-1} (c_k - c'_k)^2)``,

  the energy coefficient ``c_0`` left out (Kubichek, 1993). Computed from
  the features the models predict, not SPTK mel-cepstra of the waveform,
  so the values are comparable between the models here, not with
  published MCDs.
  """
  diff = scipy.fft.dct(pred - true, type=2, norm='ortho', axis=-1)[..., 1:]
  per_frame = (10.0 / np.log(10.0)) * np.sqrt(2.0 * (diff ** 2).sum(-1))
  return float((per_frame * mask).sum() / max(mask.sum(), 1))


def variance_ratio(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> float:
  """Over-smoothing: mean over mel bins of ``var(pred) / var(true)`` over the real frames.

  1 means as much frame-to-frame variation as the ground truth; below 1,
  smoother (the blur an L1/L2 regression to a one-to-many target makes).
  """
  sel = mask.astype(bool)
  return float(np.mean(pred[sel].var(0) / np.maximum(true[sel].var(0), 1e-8)))


def duration_errors(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> dict[str, float]:
  """Mean absolute error in frames and the share within one frame, over real phonemes."""
  err = np.abs(np.asarray(pred, np.int64) - np.asarray(true, np.int64))[mask.astype(bool)]
  return {'mae': float(err.mean()), 'within_one': float((err <= 1).mean())}


def uniform_durations(num_frames: np.ndarray, phoneme_mask: np.ndarray) -> np.ndarray:
  """The no-information alignment: each row's frames spread evenly over its phonemes.

  Phoneme ``i`` of ``P`` real ones gets ``floor((i + 1) T / P) - floor(i T / P)``
  frames, so the durations sum to ``T``. The error of a teacher's durations
  is read against this one's.
  """
  count = phoneme_mask.sum(1, keepdims=True).astype(np.int64)
  edges = (np.arange(phoneme_mask.shape[1] + 1)[None] * np.asarray(num_frames)[:, None]
           // np.maximum(count, 1))
  return np.where(phoneme_mask, np.diff(edges, axis=1), 0).astype(np.int32)


def overlap_mask(pred_mask: np.ndarray, true_mask: np.ndarray) -> np.ndarray:
  return pred_mask.astype(bool) & true_mask.astype(bool)


# ----------------------------------------------------------------------------
# Teacher.


def teacher_config(config, r: int, position_rate: float = 1.0) -> zoo.TransformerTTSConfig:
  t = config.teacher
  return zoo.TransformerTTSConfig(
      vocab_size=len(data_lib.PHONEMES), num_mels=NUM_MELS * r, hidden=t.hidden,
      num_heads=t.num_heads, encoder_layers=t.encoder_layers, decoder_layers=t.decoder_layers,
      mlp_dim=t.mlp_dim, max_source_len=config.data.max_phonemes,
      max_frames=-(-config.data.max_frames // r), decoder_prenet_dim=t.prenet_dim,
      postnet_layers=t.postnet_layers, postnet_channels=t.postnet_channels, num_speakers=2,
      dropout_rate=t.dropout, decoder_position_rate=position_rate)


def position_rate(examples, r: int) -> float:
  """Phonemes per decoder step (``r`` frames) over `examples`: the teacher's
  ``decoder_position_rate`` (Deep Voice 3's position rate)."""
  phonemes = sum(len(e['phonemes']) for e in examples)
  return r * phonemes / sum(int(e['num_frames']) for e in examples)


def teacher_objective(config, guided_weight: float, r: int) -> objective_lib.Objective:
  """Mel L1 before and after the post-net, the stop token, guided attention (decayed
  linearly, or constant when ``alignment.guided_decay_steps`` is 0) and
  (``alignment.forward_sum_weight > 0``) the forward-sum alignment loss at reduction `r`."""
  terms = {
      'mel': objective_lib.mel_reconstruction(kind='l1'),
      'mel_postnet': objective_lib.mel_reconstruction(feature='mel_postnet', kind='l1'),
      'stop': objective_lib.stop_token(positive_weight=config.teacher.stop_positive_weight),
  }
  weights = {}
  if guided_weight > 0:
    terms['guided'] = objective_lib.guided_attention(sigma=config.alignment.guided_sigma)
    decay = config.alignment.guided_decay_steps
    weights['guided'] = (optax.linear_schedule(guided_weight, 0.0, decay) if decay
                         else guided_weight)  # 0: a constant weight
  if config.alignment.forward_sum_weight > 0:
    terms['forward_sum'] = objective_lib.forward_sum(frames_per_step=r)
    weights['forward_sum'] = config.alignment.forward_sum_weight
  return objective_lib.Objective(terms=terms, weights=weights)


def _steps(num: int, recipe) -> int:
  return max(num // recipe.batch_size, 1) * recipe.epochs


def _optimizer(recipe, steps: int):
  return _common.warmup_cosine_adamw(recipe, steps, b2=0.98)


def _batches(arrays: Mapping[str, np.ndarray], size: int):
  """``(rows, batch)`` of padded-to-`size` batches (the last repeats its first row)."""
  num = len(next(iter(arrays.values())))
  for start in range(0, num, size):
    rows = np.arange(start, start + size)
    rows = np.where(rows < num, rows, start)
    yield min(size, num - start), {k: v[rows] for k, v in arrays.items()}


class Teacher:
  """A Transformer TTS at reduction factor ``r``: training, alignment, generation."""

  def __init__(self, config, r: int, guided_weight: float, num_train: int,
               position_rate: float = 1.0):
    self.config, self.r, self.guided_weight = config, r, guided_weight
    self.model_config = teacher_config(config, r, position_rate)
    self.module = zoo.TransformerTTS(self.model_config)
    self.steps = _steps(num_train, config.teacher)
    self.optimizer = _optimizer(config.teacher, self.steps)
    self.apply = zoo.transformer_tts_apply(self.module)
    p, g = config.data.max_phonemes, self.model_config.max_frames

    def init(key):
      variables = self.module.init(
          {'params': key, 'dropout': key}, jnp.ones((1, p), jnp.int32), jnp.ones((1, p), bool),
          jnp.zeros((1, g, NUM_MELS * r)), speaker=jnp.zeros((1,), jnp.int32))
      return step_lib.init_train_state(nn.meta.unbox(variables), self.optimizer,
                                       rng=jax.random.fold_in(key, 1))

    self.init = init
    self.forced = jax.jit(lambda v, b: self.module.apply(
        v, b['phonemes'], b['phoneme_mask'], b['mel'], frame_mask=b['frame_mask'],
        speaker=b['speaker'], prenet_key=jax.random.key(0)))  # pre-net dropout stays on
    self.generate = zoo.make_tts_generate(self.module, max_frames=g,
                                          stop_threshold=config.alignment.stop_threshold)

  def alignment(self, variables, arrays, batch_size: int) -> dict[str, Any]:
    """Teacher forced on true mels: focus rates, the chosen head, duration errors vs truth.

    Durations come from ``config.alignment.head`` (``'focus'``: the head of
    highest mean focus rate, FastSpeech's rule; ``'mean'``: the average of
    every head) by ``config.alignment.extraction`` (``'argmax'``, FastSpeech's
    per-frame argmax, or ``'monotonic'``, the best monotonic path). FastSpeech's
    own rule (focus head, argmax) is recorded beside as ``'fastspeech_rule'``.
    """
    a = self.config.alignment
    frames = arrays['mel'].shape[1]
    attention, l1 = [], []
    for real, batch in _batches(arrays, batch_size):
      out = self.forced(variables, teacher_batch(batch, self.r))
      attention.append(frame_attention(np.asarray(out['attention'])[:real], self.r, frames))
      mel = ungroup_frames(np.asarray(out['mel_postnet'])[:real], self.r, frames)
      l1.append(mel_l1(mel, batch['mel'][:real], batch['frame_mask'][:real]) *
                batch['frame_mask'][:real].sum())
    attention = np.concatenate(attention)
    mask, lengths, true = arrays['phoneme_mask'], arrays['num_frames'], arrays['durations']

    def errors_of(head, method):
      durations, _ = zoo.extract_durations(attention, mask, lengths, head=head, method=method)
      return duration_errors(np.asarray(durations), true, mask)

    focus = np.asarray(zoo.focus_rate(attention, mask, lengths)).mean(0)  # [layers, heads]
    focus_head = tuple(int(i) for i in np.unravel_index(np.argmax(focus), focus.shape))
    head = list(focus_head) if a.head == 'focus' else 'mean'
    chosen = errors_of(focus_head if a.head == 'focus' else 'mean', a.extraction)
    per_head = {(layer, h): errors_of((layer, h), a.extraction)
                for layer in range(focus.shape[0]) for h in range(focus.shape[1])}
    oracle = min(per_head, key=lambda k: per_head[k]['mae'])
    per_example, _ = zoo.extract_durations(attention, mask, lengths, method=a.extraction)
    return {
        'head': head, 'extraction': a.extraction, 'focus_rate': focus.tolist(),
        'duration_mae': chosen['mae'], 'within_one': chosen['within_one'],
        'fastspeech_rule': {'head': list(focus_head), **errors_of(focus_head, 'argmax')},
        'per_example_head': duration_errors(np.asarray(per_example), true, mask),
        'best_head_by_error': {'head': list(oracle), **per_head[oracle]},
        'uniform_baseline': duration_errors(uniform_durations(lengths, mask), true, mask),
        'mel_l1_forced': float(sum(l1) / arrays['frame_mask'].sum()),
    }

  def synthesize(self, variables, arrays, head, batch_size: int, seed: int) -> dict[str, Any]:
    """Generates every row; returns mels, lengths, durations (from `head`) and seconds."""
    frames = arrays['mel'].shape[1]
    groups = self.model_config.max_frames
    mels, lengths, durations, seconds = [], [], [], 0.0
    for index, (real, batch) in enumerate(_batches(arrays, batch_size)):
      rng = jax.random.fold_in(jax.random.key(seed), index)
      call = lambda: self.generate(variables, batch['phonemes'], batch['phoneme_mask'],
                                   speaker=batch['speaker'], rng=rng)
      if index == 0:  # compile outside the clock
        jax.block_until_ready(call())
      tick = time.perf_counter()
      out = jax.block_until_ready(call())
      seconds += time.perf_counter() - tick
      # The whole batch (its padding rows repeat a real one): one compilation.
      n = np.minimum(np.asarray(out.lengths) * self.r, frames)
      att = frame_attention(np.asarray(out.attention), self.r, frames)
      d, _ = zoo.extract_durations(att, batch['phoneme_mask'], n,
                                   head=head if isinstance(head, str) else tuple(head),
                                   method=self.config.alignment.extraction)
      d = np.asarray(d)[:real]
      mels.append(ungroup_frames(np.asarray(out.mels)[:real], self.r, frames))
      lengths.append(np.asarray(out.lengths)[:real])
      durations.append(np.asarray(d))
    mels, lengths = np.concatenate(mels), np.concatenate(lengths)
    num_frames = np.minimum(lengths * self.r, frames).astype(np.int32)
    mask = np.arange(frames)[None] < num_frames[:, None]
    return {'mel': mels * mask[..., None], 'num_frames': num_frames, 'frame_mask': mask,
            'durations': np.concatenate(durations).astype(np.int32),
            'stopped': lengths < groups, 'seconds': seconds}


# ----------------------------------------------------------------------------
# Student.


def student_config(config, variant: str) -> zoo.FastSpeechConfig:
  s = config.student
  variances = variant == 'fastspeech2'
  return zoo.FastSpeechConfig(
      vocab_size=len(data_lib.PHONEMES), num_mels=NUM_MELS, hidden=s.hidden,
      num_heads=s.num_heads, encoder_layers=s.encoder_layers, decoder_layers=s.decoder_layers,
      conv_filter=s.conv_filter, max_source_len=config.data.max_phonemes,
      max_frames=config.data.max_frames, dropout_rate=s.dropout,
      predictor_filter=s.predictor_filter, use_pitch=variances, use_energy=variances,
      num_bins=s.num_bins, num_speakers=2)


def student_objective(variant: str) -> objective_lib.Objective:
  terms = {'mel': objective_lib.mel_reconstruction(kind='l1'),
           'duration': objective_lib.duration_regression()}
  if variant == 'fastspeech2':
    terms |= {'pitch': objective_lib.variance_regression('pitch'),
              'energy': objective_lib.variance_regression('energy')}
  return objective_lib.Objective(terms=terms)


STUDENT_KEYS = ('phonemes', 'phoneme_mask', 'durations', 'mel', 'frame_mask', 'speaker')


def student_train_arrays(variant: str, train, distilled=None) -> dict[str, np.ndarray]:
  """What the batch holds for each variant (the only difference between them)."""
  arrays = {k: train[k] for k in STUDENT_KEYS}
  if variant == 'fastspeech2':
    arrays |= {'pitch': train['pitch'], 'energy': train['energy']}
  elif variant == 'distilled':
    keep = distilled['stopped']
    arrays = {k: v[keep] for k, v in arrays.items()}
    arrays |= {k: distilled[k][keep] for k in ('mel', 'frame_mask', 'durations')}
  return arrays


class Student:
  """A FastSpeech student of one variant: init, training, free and aligned evaluation."""

  def __init__(self, config, variant: str, num_train: int):
    self.variant, self.config = variant, config
    self.model_config = student_config(config, variant)
    self.module = zoo.FastSpeech(self.model_config)
    self.apply = zoo.fastspeech_apply(self.module)
    self.steps = _steps(num_train, config.student)
    self.optimizer = _optimizer(config.student, self.steps)
    p = config.data.max_phonemes

    def init(key):
      variables = self.module.init(
          {'params': key, 'dropout': key}, jnp.ones((1, p), jnp.int32), jnp.ones((1, p), bool),
          durations=jnp.ones((1, p), jnp.int32), speaker=jnp.zeros((1,), jnp.int32))
      return step_lib.init_train_state(nn.meta.unbox(variables), self.optimizer,
                                       rng=jax.random.fold_in(key, 1))

    self.init = init
    self.free, self.aligned = _student_inference(self.model_config)


@functools.lru_cache(maxsize=None)
def _student_inference(model_config: zoo.FastSpeechConfig):
  """The jitted free-running and aligned forward passes, shared by the variants of one
  model config (one compilation for (a) and (b))."""
  module = zoo.FastSpeech(model_config)
  free = jax.jit(lambda v, b: module.apply(v, b['phonemes'], b['phoneme_mask'],
                                           speaker=b['speaker']))
  aligned = jax.jit(lambda v, b: module.apply(
      v, b['phonemes'], b['phoneme_mask'], durations=b['durations'], speaker=b['speaker']))
  return free, aligned


def synthesize_student(student: Student, variables, arrays, batch_size: int) -> dict:
  out = {'free_mel': [], 'free_mask': [], 'durations': [], 'aligned_mel': [], 'pitch': []}
  for real, batch in _batches(arrays, batch_size):
    free = student.free(variables, batch)
    aligned = student.aligned(variables, batch)
    out['free_mel'].append(np.asarray(free['mel'])[:real])
    out['free_mask'].append(np.asarray(free['frame_mask'])[:real])
    out['durations'].append(np.asarray(free['durations'])[:real])
    out['aligned_mel'].append(np.asarray(aligned['mel'])[:real])
    if 'pitch' in aligned:
      out['pitch'].append(np.asarray(aligned['pitch'])[:real])
  return {k: np.concatenate(v) for k, v in out.items() if v}


def evaluate_mels(free_mel, free_mask, aligned_mel, arrays) -> dict[str, float]:
  """The spectrogram metrics of a model's outputs against the true held-out mels."""
  true, mask = arrays['mel'], arrays['frame_mask']
  metrics = {}
  if aligned_mel is not None:
    metrics |= {'mel_l1': mel_l1(aligned_mel, true, mask),
                'mcd': mel_cepstral_distortion(aligned_mel, true, mask),
                'variance_ratio': variance_ratio(aligned_mel, true, mask)}
  both = overlap_mask(free_mask, mask)
  lengths = free_mask.sum(1) / np.maximum(mask.sum(1), 1)
  metrics |= {'free_mel_l1': mel_l1(free_mel, true, both),
              'free_mcd': mel_cepstral_distortion(free_mel, true, both),
              'free_variance_ratio': variance_ratio(free_mel, true, both),
              'length_ratio': float(lengths.mean())}
  return metrics


def evaluate_student(student: Student, variables, arrays, stats, batch_size: int) -> dict:
  out = synthesize_student(student, variables, arrays, batch_size)
  metrics = evaluate_mels(out['free_mel'], out['free_mask'], out['aligned_mel'], arrays)
  d = duration_errors(out['durations'], arrays['durations'], arrays['phoneme_mask'])
  metrics |= {'duration_mae': d['mae'], 'duration_within_one': d['within_one']}
  if 'pitch' in out:
    mask = arrays['frame_mask'].astype(bool)
    pred, true = stats.pitch_hz(out['pitch'])[mask], stats.pitch_hz(arrays['pitch'])[mask]
    metrics['pitch_rmse_hz'] = float(np.sqrt(np.mean((pred - true) ** 2)))
  return metrics, out


# ----------------------------------------------------------------------------
# Training.


# Config entries that change neither what a teacher nor what a student
# trains: a checkpoint stays valid when they change (so an ``alignment.only``
# run's teacher is the full run's).
_NOT_TRAINING = {'alignment': ('only', 'eval_every', 'head', 'extraction', 'stop_threshold',
                               'generate_batch_size', 'usable_within_one'),
                 'eval': None}
# What a teacher's training does not read either.
_NOT_TEACHER = ('student', 'seeds', 'variants')
SECONDS_FILE = 'train_seconds.json'


def run_identity(config: ml_collections.ConfigDict, *, teacher: bool, **run: Any) -> dict:
  """What identifies a training run for its checkpoints (:func:`experiments._common.run_config`),
  less the entries it does not read: how the alignment is read and scored,
  the evaluation, and for a teacher the students' settings."""
  c = config.to_dict()
  for section, keys in _NOT_TRAINING.items():
    if keys is None:
      c.pop(section, None)
    else:
      c[section] = {k: v for k, v in c[section].items() if k not in keys}
  if teacher:
    for key in _NOT_TEACHER:
      c.pop(key, None)
  return _common.run_config(ml_collections.ConfigDict(c), **run)


def train_model(model, arrays, *, seed: int, workdir: str, desc: str, config,
                run: Mapping[str, Any], objective, evaluate_fn=None,
                eval_every: int = 0) -> tuple[Any, float]:
  """Trains (or resumes) `model` on `arrays`; returns its variables and training seconds.

  The seconds are summed over every process that trained the run (kept in
  ``<workdir>/train_seconds.json``), so a run restored from its checkpoint
  reports the time it took to train, not the time to restore it.
  `evaluate_fn(state)`, when given, is logged every `eval_every` epochs and
  after the last.
  """
  recipe = config.teacher if isinstance(model, Teacher) else config.student
  train_step = step_lib.make_train_step(model.apply, None, objective, model.optimizer)
  evaluating = [0.0]  # seconds spent in evaluate_fn, not counted as training

  def evaluate(state):
    if evaluate_fn is None:
      return {}
    started = time.time()
    out = evaluate_fn(state)
    evaluating[0] += time.time() - started
    return out

  trainer = _common.Trainer(train_step, model.init, evaluate,
                            epochs=recipe.epochs, batch_size=recipe.batch_size,
                            eval_every=eval_every or recipe.epochs,
                            save_every=recipe.epochs, progress=config.progress,
                            final_evaluate_fn=lambda state: {})
  path = os.path.join(workdir, SECONDS_FILE)
  earlier = {'seconds': 0.0, 'lives': 0}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      earlier = json.load(f)
  tick = time.time()

  def record(finished_step):
    out = {'seconds': earlier['seconds'] + time.time() - tick - evaluating[0],
           'lives': earlier['lives'] + 1, 'finished_step': finished_step}
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      json.dump(out, f)
    os.replace(path + '.tmp', path)
    return out['seconds']

  try:
    state, _ = trainer.train(jax.device_put(dict(arrays)), seed=seed, teacher_variables=None,
                             workdir=workdir, desc=desc,
                             config=run_identity(config, teacher=isinstance(model, Teacher),
                                                 **run))
  except (loop.Preempted, KeyboardInterrupt):  # a stopped life's time counts on resuming
    if os.path.isdir(workdir):
      record(None)
    raise
  step = int(jax.device_get(state.step))
  if earlier.get('finished_step') == step:  # restored a finished run: its recorded time
    return state.variables, float(earlier['seconds'])
  return state.variables, record(step)


def alignment_progress(teacher: 'Teacher', arrays, batch_size: int):
  """``evaluate(state)``: the teacher's validation alignment as scalars to log during training."""

  def evaluate(state) -> dict[str, float]:
    v = teacher.alignment(state.variables, arrays, batch_size)
    rule = v['fastspeech_rule']
    return {'val/duration_mae': v['duration_mae'], 'val/within_one': v['within_one'],
            'val/fastspeech_rule_mae': rule['mae'],
            'val/fastspeech_rule_within_one': rule['within_one'],
            'val/best_focus_rate': float(np.max(v['focus_rate'])),
            'val/mel_l1_forced': v['mel_l1_forced']}

  return evaluate


# ----------------------------------------------------------------------------
# Claims, computed from the numbers.


def claims(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The paper's claims, judged from the recorded per-seed numbers (lower is better for both metrics)."""
  per_seed, config = results['per_seed'], results['config']
  variants = config['variants']
  caveat = None
  if not results['teacher']['alignment_usable']:
    caveat = ("the teacher's alignment is not usable: "
              f"{results['teacher']['validation']['within_one']:.0%} of validation phonemes "
              'within one frame')
  out = []
  for metric in ('mel_l1', 'mcd'):
    if 'gt' in variants and 'distilled' in variants:
      out.append(_common.claim(
          f'(b) FastSpeech beats (a) ground truth alone (test {metric}, b − a)',
          [r['distilled'][metric] for r in per_seed], [r['gt'][metric] for r in per_seed],
          test='<', digits=3, caveat=caveat))
    if 'fastspeech2' in variants and 'distilled' in variants:
      margin = config['eval']['noninferiority_margin'] * float(
          np.mean([r['distilled'][metric] for r in per_seed]))
      out.append(_common.claim(
          f'(c) FastSpeech 2 is at least as good as (b) (test {metric}, c − b, margin '
          f'{margin:.3f})', [r['fastspeech2'][metric] for r in per_seed],
          [r['distilled'][metric] for r in per_seed], test='<', threshold=margin, digits=3,
          caveat=caveat))
  if 'fastspeech2' in variants and 'distilled' in variants:
    times = results['times']
    out.append(_common.claim(
        '(c) trains faster end to end than (b) (teacher training and generation included; '
        'end-to-end seconds of (b) / (c) per seed; the paper: about 3x)',
        np.divide(times['distilled_end_to_end']['values'],
                  times['fastspeech2_end_to_end']['values']), threshold=1.0))
  return out


# ----------------------------------------------------------------------------
# Samples and figure.


def write_samples(outputs: Mapping[str, np.ndarray], arrays, config, directory: str) -> list[str]:
  """Griffin-Lim wav files of the first test utterances and a spectrogram figure."""
  os.makedirs(directory, exist_ok=True)
  feature = data_lib.FeatureConfig()
  written = []
  count = min(config.eval.samples, len(arrays['mel']))
  for i in range(count):
    for name, (mel, mask) in outputs.items():
      frames = int(mask[i].sum())
      if frames < 2:
        continue
      audio = data_lib.mel_to_audio(mel[i, :frames], feature,
                                    iterations=config.eval.griffin_lim_iterations)
      path = os.path.join(directory, f'{i}_{name}.wav')
      data_lib.write_wav(path, audio, feature.sample_rate)
      written.append(path)
  if count:
    written.append(spectrogram_figure(outputs, os.path.join(directory, 'spectrograms.png')))
  return written


def spectrogram_figure(outputs: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str) -> str:
  """The first utterance's spectrogram per model, one row each (matplotlib, Agg)."""
  import matplotlib  # pylint: disable=import-outside-toplevel  (as experiments/hinton.py: the backend is set before pyplot loads)
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  names = list(outputs)
  width = max(int(mask[0].sum()) for mel, mask in outputs.values())
  fig, axes = plt.subplots(len(names), 1, figsize=(8, 1.6 * len(names)), sharex=True)
  for ax, name in zip(np.atleast_1d(axes), names):
    mel, mask = outputs[name]
    frames = int(mask[0].sum())
    ax.imshow(mel[0, :max(frames, 1)].T, origin='lower', aspect='auto', vmin=-11.5, vmax=2,
              extent=(0, frames, 0, mel.shape[-1]))
    ax.set_xlim(0, width)
    ax.set_ylabel(name, fontsize=8)
  np.atleast_1d(axes)[-1].set_xlabel('frame (10 ms)')
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


# ----------------------------------------------------------------------------
# The run.


def _param_count(variables) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(variables['params'])))


def run(config: ml_collections.ConfigDict, workdir: str,
        command: Sequence[str] | None = None) -> dict:
  """Teacher candidates, alignment check, generation, three students x seeds; writes results."""
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  splits, data_info = load_data(config)
  stats = data_lib.speech_stats(splits['train'])
  arrays = {split: batch_arrays(examples, config, stats) for split, examples in splits.items()}
  num_train = len(splits['train'])
  eval_batch = config.eval.batch_size

  # 1. Teacher candidates, chosen on validation by the duration error.
  candidates = []
  for r in config.alignment.reduction_factors:
    rate = position_rate(splits['train'], int(r)) if config.alignment.position_rate else 1.0
    for weight in config.alignment.guided_weights:
      teacher = Teacher(config, int(r), float(weight), num_train, rate)
      variables, seconds = train_model(
          teacher, teacher_batch(arrays['train'], teacher.r), seed=config.teacher_seed,
          workdir=os.path.join(workdir, f'teacher_r{r}_g{weight:g}'),
          desc=f'teacher r={r} g={weight:g}', config=config,
          run={'phase': 'teacher', 'r': int(r), 'guided': float(weight)},
          objective=teacher_objective(config, float(weight), int(r)),
          evaluate_fn=(alignment_progress(teacher, arrays['val'], eval_batch)
                       if config.alignment.eval_every else None),
          eval_every=config.alignment.eval_every)
      validation = teacher.alignment(variables, arrays['val'], eval_batch)
      candidates.append({'r': int(r), 'guided_weight': float(weight), 'position_rate': rate,
                         'seconds': seconds,
                         'steps': teacher.steps, 'validation': validation,
                         '_teacher': teacher, '_variables': variables})
      if config.progress:
        print(f"teacher r={r} g={weight:g}: {seconds:.0f} s, validation duration MAE "
              f"{validation['duration_mae']:.2f} frames, {validation['within_one']:.0%} within "
              f"one frame, head {validation['head']}", flush=True)
  chosen = min(candidates, key=lambda c: c['validation']['duration_mae'])
  if config.alignment.only:
    results = {'config': config.to_dict(), 'data': data_info,
               'candidates': [{k: v for k, v in c.items() if not k.startswith('_')}
                              for c in candidates],
               'wall_seconds': time.time() - start}
    return _common.write_results(results, workdir, config,
                                 command or _common.command(MODULE, None))
  teacher, teacher_variables = chosen['_teacher'], chosen['_variables']
  head = chosen['validation']['head']
  usable = chosen['validation']['within_one'] >= config.alignment.usable_within_one

  # 2. Sequence-level data: the teacher generates the training split.
  needs_data = 'distilled' in config.variants
  distilled, generation = None, {}
  if needs_data:
    tick = time.time()
    distilled = teacher.synthesize(teacher_variables, arrays['train'], head,
                                   config.alignment.generate_batch_size, config.teacher_seed)
    train = arrays['train']
    stopped = distilled['stopped']
    generation = {
        'seconds': time.time() - tick, 'loop_seconds': distilled['seconds'],
        'stopped': int(stopped.sum()), 'examples': int(len(stopped)),
        'length_ratio': float(np.mean(distilled['num_frames'] / train['num_frames'])),
    }
    # Durations on generated speech cannot match the true ones frame for
    # frame (the lengths differ): compared as they are, for scale.
    generation['duration_mae_vs_true'] = duration_errors(
        distilled['durations'], train['durations'], train['phoneme_mask'])['mae']
    if not stopped.any():
      raise RuntimeError('the teacher never stopped on any training utterance: no data for '
                         'the distilled student (train the teacher longer).')
  teacher_test = teacher.synthesize(teacher_variables, arrays['test'], head, eval_batch,
                                    config.teacher_seed + 1)
  teacher_metrics = evaluate_mels(teacher_test['mel'], teacher_test['frame_mask'], None,
                                  arrays['test'])

  # 3. Students.
  per_seed, samples = [], {}
  for index, seed in enumerate(config.seeds):
    result = {}
    for variant in config.variants:
      train_arrays = student_train_arrays(variant, arrays['train'], distilled)
      student = Student(config, variant, len(train_arrays['phonemes']))
      variables, seconds = train_model(
          student, train_arrays, seed=seed + 1000,
          workdir=os.path.join(workdir, variant, f'seed{seed}'), desc=f'{variant} s{seed}',
          config=config, run={'phase': 'student', 'variant': variant},
          objective=student_objective(variant))
      metrics, out = evaluate_student(student, variables, arrays['test'], stats, eval_batch)
      result[variant] = {**metrics, 'seconds': seconds, 'steps': student.steps,
                         'params': _param_count(variables)}
      if index == 0:
        samples[variant] = (out['free_mel'], out['free_mask'])
    per_seed.append(result)

  teacher_seconds = chosen['seconds']
  times = {
      'teacher_training': teacher_seconds,
      'teacher_selection': float(sum(c['seconds'] for c in candidates)),
      'generation': generation.get('seconds', 0.0),
  }
  for variant in config.variants:
    extra = teacher_seconds + times['generation'] if variant == 'distilled' else 0.0
    times[f'{variant}_end_to_end'] = _common.mean_std(
        [r[variant]['seconds'] + extra for r in per_seed])

  # 4. Audio and figure.
  figure_rows = {'ground truth': (arrays['test']['mel'], arrays['test']['frame_mask']),
                 'teacher': (teacher_test['mel'], teacher_test['frame_mask'])}
  labels = {'gt': '(a)', 'distilled': '(b)', 'fastspeech2': '(c)'}
  figure_rows |= {labels[v]: samples[v] for v in config.variants}
  sample_dir = os.path.join(workdir, 'samples')
  written = write_samples({k.replace(' ', '_').strip('()'): v for k, v in figure_rows.items()},
                          arrays['test'], config, sample_dir)
  if config.eval.publish_dir:
    os.makedirs(config.eval.publish_dir, exist_ok=True)
    for path in written:
      shutil.copy(path, config.eval.publish_dir)

  metric_keys = ('mel_l1', 'mcd', 'variance_ratio', 'free_mel_l1', 'free_mcd',
                 'free_variance_ratio', 'length_ratio', 'duration_mae', 'duration_within_one',
                 'seconds')
  summary = {v: {k: _common.mean_std([r[v][k] for r in per_seed]) for k in metric_keys}
             for v in config.variants}
  if 'fastspeech2' in config.variants:
    summary['fastspeech2']['pitch_rmse_hz'] = _common.mean_std(
        [r['fastspeech2']['pitch_rmse_hz'] for r in per_seed])
  results = {
      'paper': 'Ren et al. (2019), FastSpeech; Ren et al. (2021), FastSpeech 2',
      'config': config.to_dict(),
      'data': data_info,
      'teacher': {
          'r': chosen['r'], 'guided_weight': chosen['guided_weight'], 'head': head,
          'steps': chosen['steps'], 'params': _param_count(teacher_variables),
          'validation': chosen['validation'], 'alignment_usable': bool(usable),
          'test': teacher_metrics, 'generation': generation,
          'candidates': [{k: v for k, v in c.items() if not k.startswith('_')}
                         for c in candidates],
      },
      'times': times,
      'per_seed': per_seed,
      'summary': summary,
      'samples': [os.path.basename(p) for p in written],
      'wall_seconds': time.time() - start,
      'finished': time.time(),
  }
  results['claims'] = claims(results)
  return _common.write_results(results, workdir, config,
                               command or _common.command(MODULE, None))


# ----------------------------------------------------------------------------
# Tables.


def describe(results: Mapping[str, Any]) -> str:
  config, data, teacher = results['config'], results['data'], results['teacher']
  t, s, sp = config['teacher'], config['student'], data['splits']
  v = teacher['validation']
  weight = config['alignment'].get('forward_sum_weight', 0.0)
  forward_sum = f", forward-sum alignment loss weight {weight:g}" if weight else ''
  steps = config['alignment']['guided_decay_steps']
  decay = f'decayed linearly to 0 over {steps} steps' if steps else 'constant'
  return (
      f"Data: {data['dataset']}: utterances of at most {config['data']['max_phonemes']} "
      f"phonemes and {config['data']['max_frames']} frames, {sp['train']['examples']:,} "
      f"training, {sp['val']['examples']:,} validation and {sp['test']['examples']:,} test "
      f"(mean true duration {sp['test']['mean_duration']:.1f} frames per phoneme). Teacher: "
      f"Transformer TTS {t['encoder_layers']}+{t['decoder_layers']} layers × {t['hidden']}, "
      f"{teacher['params']:,} parameters, {teacher['steps']} steps, reduction factor "
      f"r = {teacher['r']}, guided attention weight {teacher['guided_weight']:g} {decay}"
      f"{forward_sum} (chosen among "
      f"{len(teacher['candidates'])} candidates by validation duration error). Its alignment "
      f"on the validation split (teacher forced, durations from "
      f"{'the average of every head' if v['head'] == 'mean' else 'head ' + str(v['head'])} "
      f"by {'the best monotonic path' if v['extraction'] == 'monotonic' else 'argmax'}): "
      f"duration error {v['duration_mae']:.2f} frames, {v['within_one']:.0%} of "
      f"phonemes within one frame ({'usable' if teacher['alignment_usable'] else 'NOT usable'}"
      f"; threshold {config['alignment']['usable_within_one']:.0%}). Students: FastSpeech "
      f"{s['encoder_layers']}+{s['decoder_layers']} layers × {s['hidden']}, "
      f"{s['epochs']} epochs, {len(config['seeds'])} seeds. Metrics on the test split: mel L1 "
      f"and MCD (DCT-II cepstra of the log-mels, c0 excluded) with the true durations, and "
      f"free running over the frames both have; variance ratio: mean over bins of the "
      f"output's variance over the true one's (< 1: over-smoothed).")


def per_seed_table(results: Mapping[str, Any]) -> str:
  """Every seed's test mel L1 and MCD of every variant."""
  per_seed = results['per_seed']
  variants = [v for v in VARIANT_NAMES if all(v in r for r in per_seed)]
  columns = {f'{VARIANT_NAMES[v]}, {name}': [r[v][metric] for r in per_seed]
             for metric, name in (('mel_l1', 'mel L1'), ('mcd', 'MCD (dB)')) for v in variants}
  return '\n'.join(['Test numbers per seed:', '',
                    *_common.per_seed_table(results['config']['seeds'], columns, digits=3)])


def format_table(results: Mapping[str, Any]) -> str:
  s, times, teacher = results['summary'], results['times'], results['teacher']
  stat = lambda x, d=3: _common.mean_std_text(x, digits=d)
  tm = teacher['test']
  rows = [['teacher (free running)', '—', '—', '—', f"{tm['free_mel_l1']:.3f}",
           f"{tm['free_mcd']:.2f}", '—', '—', f"{times['teacher_training']:.0f} + "
           f"{times['generation']:.0f} gen."]]
  for variant, st in s.items():
    pitch = stat(st['pitch_rmse_hz'], 1) if 'pitch_rmse_hz' in st else '—'
    rows.append([VARIANT_NAMES[variant], stat(st['mel_l1']), stat(st['mcd'], 2),
                 stat(st['variance_ratio'], 2), stat(st['free_mel_l1']), stat(st['free_mcd'], 2),
                 stat(st['duration_mae'], 2), pitch,
                 stat(times[f'{variant}_end_to_end'], 0)])
  lines = _common.markdown_table(
      ['model', 'mel L1', 'MCD (dB)', 'variance ratio', 'free mel L1', 'free MCD',
       'duration MAE (frames)', 'pitch RMSE (Hz)', 'end-to-end training (s)'], rows)
  lines += ['', per_seed_table(results)]
  publish = results['config']['eval']['publish_dir']
  if publish and results.get('samples'):
    where = os.path.relpath(publish, 'docs')
    wavs = [f'[{name}]({where}/{name})' for name in results['samples'] if name.endswith('.wav')]
    lines += ['', 'Griffin-Lim samples (test utterances; ground truth, teacher, (a), (b), '
              '(c), first seed): ' + ', '.join(wavs), '',
              f'![spectrograms: ground truth, teacher, (a), (b), (c)]({where}/spectrograms.png)']
  return '\n'.join(lines)


def format_alignment(results: Mapping[str, Any]) -> str:
  """The teacher candidates' validation alignment (``alignment.only`` runs)."""
  rows = []
  for c in results['candidates']:
    v = c['validation']
    best, rule, uniform = v['best_head_by_error'], v['fastspeech_rule'], v['uniform_baseline']
    rows.append([str(c['r']), f"{c['guided_weight']:g}", str(c['steps']), f"{c['seconds']:.0f}",
                 f"{v['mel_l1_forced']:.3f}", f"{max(map(max, v['focus_rate'])):.3f}",
                 f"{v['head']} {v['extraction']}", f"{v['duration_mae']:.2f}",
                 f"{v['within_one']:.0%}",
                 f"{rule['head']}: {rule['mae']:.2f} / {rule['within_one']:.0%}",
                 f"{v['per_example_head']['mae']:.2f}",
                 f"{best['head']}: {best['mae']:.2f}",
                 f"{uniform['mae']:.2f} / {uniform['within_one']:.0%}"])
  return '\n'.join(_common.markdown_table(
      ['r', 'guided weight', 'steps', 'seconds', 'forced mel L1', 'best focus rate',
       'durations from', 'duration MAE', 'within ±1',
       'FastSpeech rule (focus head, argmax): MAE / within ±1', 'MAE (per-example head)',
       'head of least MAE', 'uniform durations: MAE / within ±1'], rows))


def report(results: Mapping[str, Any]) -> str:
  """What main prints: the teacher candidates (``alignment.only``) or the whole section."""
  if results['config']['alignment']['only']:
    return format_alignment(results)
  return describe(results) + '\n\n' + format_table(results)


def main(argv: Sequence[str] | None = None) -> None:
  _common.run_main(argv, module=MODULE, doc=__doc__, schema=fs2_configs.schema(), run=run,
                   report=report,
                   claims=lambda r: [] if r['config']['alignment']['only'] else claims(r))


if __name__ == '__main__':
  main(sys.argv[1:])
