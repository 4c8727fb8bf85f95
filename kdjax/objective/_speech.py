"""Text-to-speech terms: regression of the student's outputs onto targets the batch holds.

Sequence-level distillation of speech (FastSpeech) is offline: the
teacher's generated spectrograms and the durations extracted from its
attention are written into the data, and the student regresses onto them
exactly as it would onto ground truth. So these terms read their targets
from the batch (whichever the experiment put there) and need no teacher in
the step (``make_train_step(student_apply, None, objective, optimizer)``).
Each returns per-position values with its own mask: ``[batch, frames]``
with the frame mask, ``[batch, phonemes]`` with the phoneme mask.
"""

from __future__ import annotations

import jax.numpy as jnp

from kdjax import _checks
from kdjax.losses import _speech
from kdjax.objective._core import Term


def _mask(batch, key):
  return None if key is None else _checks.batch_entry(batch, key, 'mask key')


def mel_reconstruction(*, feature: str = 'mel', target_key: str = 'mel',
                       mask_key: str | None = 'frame_mask', kind: str = 'l1') -> Term:
  """``mel_loss(student.features[feature], batch[target_key])`` per frame.

  Args:
    feature: the student's spectrogram (``'mel'``; the teacher model also
      has ``'mel_postnet'``).
    target_key: the batch's target spectrogram ``[batch, frames, mels]``
      (ground truth or a teacher's generated one).
    mask_key: the batch's frame mask ``[batch, frames]``.
    kind: ``'l1'`` (FastSpeech 2) or ``'l2'``.

  Returns:
    A :class:`Term` of ``[batch, frames]`` values masked by the frame mask.
  """

  def term(student, teacher, batch, step):
    del teacher, step
    mask = _mask(batch, mask_key)
    target = _checks.batch_entry(batch, target_key, 'target mel')
    return _speech.mel_loss(student.feature(feature), target, frame_mask=mask, kind=kind), mask

  return term


def duration_regression(*, feature: str = 'log_duration', target_key: str = 'durations',
                        mask_key: str | None = 'phoneme_mask') -> Term:
  """``duration_loss(student.features[feature], batch[target_key])`` per phoneme.

  Returns:
    A :class:`Term` of ``[batch, phonemes]`` values masked by the phoneme mask.
  """

  def term(student, teacher, batch, step):
    del teacher, step
    mask = _mask(batch, mask_key)
    durations = _checks.batch_entry(batch, target_key, 'target durations')
    return _speech.duration_loss(student.feature(feature), durations, phoneme_mask=mask), mask

  return term


def variance_regression(name: str, *, target_key: str | None = None,
                        mask_key: str | None = 'frame_mask') -> Term:
  """``variance_loss(student.features[name], batch[target_key])``: pitch or energy.

  Args:
    name: the student's feature, ``'pitch'`` or ``'energy'``.
    target_key: the batch's target (defaults to `name`), ``[batch, frames]``
      (frame level) or ``[batch, phonemes]`` (phoneme level).
    mask_key: the matching mask (``'phoneme_mask'`` at phoneme level).

  Returns:
    A :class:`Term` of per-position values with that mask.
  """
  target_key = target_key or name

  def term(student, teacher, batch, step):
    del teacher, step
    mask = _mask(batch, mask_key)
    target = _checks.batch_entry(batch, target_key, f'target {name}')
    return _speech.variance_loss(student.feature(name), target, token_mask=mask), mask

  return term


def stop_token(*, feature: str = 'stop_logits', mask_key: str = 'frame_mask',
               positive_weight: float = 1.0) -> Term:
  """``stop_token_loss`` per frame, the targets being each row's last real frame.

  Returns:
    A :class:`Term` of ``[batch, frames]`` values masked by the frame mask.
  """

  def term(student, teacher, batch, step):
    del teacher, step
    mask = _checks.batch_entry(batch, mask_key, 'frame mask')
    return _speech.stop_token_loss(
        student.feature(feature), _speech.stop_targets(mask), frame_mask=mask,
        positive_weight=positive_weight), mask

  return term


def _attention_inputs(student, batch, feature, layers, phoneme_mask_key, frame_mask_key):
  """The model's attention feature (the chosen decoder layers) and the batch's two masks."""
  attention = student.feature(feature)
  if layers is not None:
    attention = attention[:, list(layers)]
  return (attention, _checks.batch_entry(batch, phoneme_mask_key, 'phoneme mask'),
          _checks.batch_entry(batch, frame_mask_key, 'frame mask'))


def guided_attention(*, feature: str = 'attention', layers: tuple[int, ...] | None = None,
                     phoneme_mask_key: str = 'phoneme_mask', frame_mask_key: str = 'frame_mask',
                     sigma: float = 0.2) -> Term:
  """``guided_attention_loss`` of the teacher model's encoder-decoder attention, per frame.

  Args:
    feature: the attention feature ``[batch, layers, heads, frames, phonemes]``.
    layers: the decoder layers to guide (all when ``None``); guiding some
      leaves the others free.
    phoneme_mask_key: the batch's phoneme mask.
    frame_mask_key: the batch's frame mask.
    sigma: the diagonal band's width.

  Returns:
    A :class:`Term` of ``[batch, frames]`` values masked by the frame mask.
  """

  def term(student, teacher, batch, step):
    del teacher, step
    attention, phoneme_mask, frame_mask = _attention_inputs(
        student, batch, feature, layers, phoneme_mask_key, frame_mask_key)
    return _speech.guided_attention_loss(attention, phoneme_mask=phoneme_mask,
                                         frame_mask=frame_mask, sigma=sigma), frame_mask

  return term


def forward_sum(*, feature: str = 'attention', layers: tuple[int, ...] | None = None,
                phoneme_mask_key: str = 'phoneme_mask', frame_mask_key: str = 'frame_mask',
                frames_per_step: int = 1) -> Term:
  """``forward_sum_loss`` of the teacher model's encoder-decoder attention, per frame.

  Args:
    feature: the attention feature ``[batch, layers, heads, steps, phonemes]``.
    layers: the decoder layers to align (all when ``None``).
    phoneme_mask_key: the batch's phoneme mask.
    frame_mask_key: the batch's decoder-step mask.
    frames_per_step: the decoder's reduction factor (each step's row
      repeated for its frames).

  Returns:
    A :class:`Term` of ``[batch, steps * frames_per_step]`` values masked by
    the step mask repeated ``frames_per_step`` times.
  """

  def term(student, teacher, batch, step):
    del teacher, step
    attention, phoneme_mask, frame_mask = _attention_inputs(
        student, batch, feature, layers, phoneme_mask_key, frame_mask_key)
    values = _speech.forward_sum_loss(attention, phoneme_mask=phoneme_mask,
                                      frame_mask=frame_mask, frames_per_step=frames_per_step)
    return values, jnp.repeat(jnp.asarray(frame_mask), frames_per_step, axis=1)

  return term
