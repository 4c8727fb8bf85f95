"""Per-frame and per-phoneme losses of text-to-speech models (Transformer TTS, FastSpeech 2).

Conventions of this module, as :mod:`kdjax.losses._transformer`'s:

* Masks are token masks (positions of a sequence) named by the sequence:
  ``frame_mask`` or ``phoneme_mask`` (``token_mask`` where either fits).
* Values are PER POSITION, ``[batch, frames]`` or ``[batch, phonemes]``
  (a mel loss is averaged over the mel bins of its frame): the Objective's
  masked ``sum / count`` with the same mask is then the mean over the
  batch's real frames (phonemes), which is the reference implementations'
  masked mean. A masked position gives 0 with a zero gradient.
* Arguments are ``(prediction, target, ...)``; the target passes through
  ``stop_gradient``; work is float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kdjax import _checks
from kdjax.losses._common import jit_after_checks
from kdjax.losses._common import positive_int_value

Array = jax.Array
ArrayLike = Any

MEL_LOSS_KINDS = ('l1', 'l2')


def _position_mask(name: str, mask: ArrayLike | None, shape: tuple[int, ...]) -> Array | None:
  if mask is None:
    return None
  if tuple(jnp.shape(mask)) != shape[:2]:
    raise ValueError(f'{name} must be [batch, time] = {shape[:2]}, got {name} with shape '
                     f'{tuple(jnp.shape(mask))}.')
  return jnp.asarray(mask) > 0


def _pair(prediction: ArrayLike, target: ArrayLike, names: tuple[str, str],
          ndim: int, layout: str) -> tuple[Array, Array]:
  _checks.check_floating(names[0], prediction)
  _checks.check_same_shape(*names[:1], prediction, names[1], target)
  if jnp.ndim(prediction) != ndim:
    raise ValueError(f'{names[0]} must be {layout}, got shape {jnp.shape(prediction)}.')
  prediction = jnp.asarray(prediction, jnp.float32)
  return prediction, jax.lax.stop_gradient(jnp.asarray(target, jnp.float32))


def _check_kind(arguments: dict[str, Any]) -> None:
  if arguments['kind'] not in MEL_LOSS_KINDS:
    raise ValueError(f"kind must be one of {MEL_LOSS_KINDS}, got {arguments['kind']!r}.")


def _check_durations_value(arguments: dict[str, Any]) -> None:
  durations = arguments['durations']
  _checks.check_integer('durations', durations)
  _checks.check_nonnegative_entries('durations', durations)


@jit_after_checks(_check_kind, static_argnames=('kind',))
def mel_loss(predicted: ArrayLike, target: ArrayLike, *, frame_mask: ArrayLike | None = None,
             kind: str = 'l1') -> Array:
  r"""The mel-spectrogram reconstruction loss per frame: mean absolute (L1) or squared (L2) error.

  .. math::
     \ell_{b,t} = \frac{1}{M} \sum_{m=1}^{M} |\hat y_{b,t,m} - y_{b,t,m}|^p,
     \quad p = 1 \text{ (L1, FastSpeech 2) or } 2 \text{ (L2, FastSpeech, Transformer TTS)}

  Args:
    predicted: float ``[batch, frames, mels]``.
    target: float ``[batch, frames, mels]`` (ground truth or a teacher's
      generated spectrogram; no gradient).
    frame_mask: optional ``[batch, frames]``, 1 on real frames.
    kind: ``'l1'`` or ``'l2'``.

  Returns:
    float32 ``[batch, frames]``, 0 on masked frames.

  References:
    Ren et al., "FastSpeech 2" (2021), https://arxiv.org/abs/2006.04558;
    Li et al., "Neural Speech Synthesis with Transformer Network" (2019),
    https://arxiv.org/abs/1809.08895.
  """
  predicted, target = _pair(predicted, target, ('predicted', 'target'), 3,
                            '[batch, frames, mels]')
  mask = _position_mask('frame_mask', frame_mask, predicted.shape)
  error = predicted - target
  values = (jnp.abs(error) if kind == 'l1' else jnp.square(error)).mean(axis=-1)
  return values if mask is None else jnp.where(mask, values, 0.0)


@jit_after_checks(_check_durations_value)
def duration_loss(log_duration: ArrayLike, durations: ArrayLike, *,
                  phoneme_mask: ArrayLike | None = None) -> Array:
  r"""FastSpeech's duration loss per phoneme: squared error in the log domain.

  .. math::
     \ell_{b,t} = \left(\hat l_{b,t} - \log(d_{b,t} + 1)\right)^2

  where :math:`\hat l` is the duration predictor's output and :math:`d` the
  duration in frames (ground truth, or extracted from a teacher's attention).

  Args:
    log_duration: float ``[batch, phonemes]``, the predicted ``log(d + 1)``.
    durations: int ``[batch, phonemes]``, frames per phoneme (>= 0).
    phoneme_mask: optional ``[batch, phonemes]``, 1 on real phonemes.

  Returns:
    float32 ``[batch, phonemes]``, 0 on masked phonemes.

  References:
    Ren et al., "FastSpeech" (2019), section 3.3,
    https://arxiv.org/abs/1905.09263; "FastSpeech 2" (2021), section 2.3.
  """
  _checks.check_floating('log_duration', log_duration)
  _checks.check_same_shape('log_duration', log_duration, 'durations', durations)
  if jnp.ndim(log_duration) != 2:
    raise ValueError(f'log_duration must be [batch, phonemes], got shape '
                     f'{jnp.shape(log_duration)}.')
  mask = _position_mask('phoneme_mask', phoneme_mask, jnp.shape(log_duration))
  target = jnp.log1p(jnp.maximum(jnp.asarray(durations, jnp.float32), 0.0))
  values = jnp.square(jnp.asarray(log_duration, jnp.float32) - target)
  return values if mask is None else jnp.where(mask, values, 0.0)


@jit_after_checks()
def variance_loss(predicted: ArrayLike, target: ArrayLike, *,
                  token_mask: ArrayLike | None = None) -> Array:
  """FastSpeech 2's pitch or energy loss per position: the squared error.

  Args:
    predicted: float ``[batch, time]`` (frames or phonemes).
    target: float ``[batch, time]``, in the same units (e.g. z-scores).
    token_mask: optional ``[batch, time]``, 1 on real positions (the frame
      or the phoneme mask).

  Returns:
    float32 ``[batch, time]``, 0 on masked positions.

  References:
    Ren et al., "FastSpeech 2" (2021), section 2.3,
    https://arxiv.org/abs/2006.04558.
  """
  predicted, target = _pair(predicted, target, ('predicted', 'target'), 2, '[batch, time]')
  mask = _position_mask('token_mask', token_mask, predicted.shape)
  values = jnp.square(predicted - target)
  return values if mask is None else jnp.where(mask, values, 0.0)


def stop_targets(frame_mask: ArrayLike) -> Array:
  """The stop token's targets: 1 on each row's last real frame, 0 elsewhere.

  Args:
    frame_mask: ``[batch, frames]``, 1 on real frames (a prefix of each row).

  Returns:
    float32 ``[batch, frames]``.
  """
  mask = jnp.asarray(frame_mask) > 0
  following = jnp.pad(mask[:, 1:], ((0, 0), (0, 1)))
  return (mask & ~following).astype(jnp.float32)


@jit_after_checks()
def stop_token_loss(stop_logits: ArrayLike, targets: ArrayLike, *,
                    frame_mask: ArrayLike | None = None,
                    positive_weight: float | ArrayLike = 1.0) -> Array:
  r"""The stop token's binary cross entropy per frame (Transformer TTS).

  .. math::
     \ell_{b,t} = -w\, y_{b,t} \log \sigma(z_{b,t}) - (1 - y_{b,t}) \log(1 - \sigma(z_{b,t}))

  computed from the logits ``z`` stably. One frame per utterance is a
  stop frame, so the paper weights the positives (`positive_weight`
  :math:`w`, 5 to 8 in Li et al.) against the imbalance.

  Args:
    stop_logits: float ``[batch, frames]``.
    targets: ``[batch, frames]`` in [0, 1] (:func:`stop_targets`).
    frame_mask: optional ``[batch, frames]``, 1 on real frames.
    positive_weight: the weight of the stop frames' term.

  Returns:
    float32 ``[batch, frames]``, 0 on masked frames.

  References:
    Li et al., "Neural Speech Synthesis with Transformer Network" (2019),
    section 3.7, https://arxiv.org/abs/1809.08895.
  """
  logits, targets = _pair(stop_logits, targets, ('stop_logits', 'targets'), 2,
                          '[batch, frames]')
  mask = _position_mask('frame_mask', frame_mask, logits.shape)
  values = -(positive_weight * targets * jax.nn.log_sigmoid(logits)
             + (1.0 - targets) * jax.nn.log_sigmoid(-logits))
  return values if mask is None else jnp.where(mask, values, 0.0)


def _attention_and_masks(attention: ArrayLike, phoneme_mask: ArrayLike,
                         frame_mask: ArrayLike) -> tuple[Array, Array, Array]:
  """Float32 attention ``[batch, layers, heads, frames, phonemes]`` (a 4-D one gets
  one layer) and its boolean masks, each shape checked."""
  _checks.check_floating('attention', attention)
  attention = jnp.asarray(attention, jnp.float32)
  if attention.ndim == 4:
    attention = attention[:, None]
  if attention.ndim != 5:
    raise ValueError('attention must be [batch, layers, heads, frames, phonemes], got shape '
                     f'{jnp.shape(attention)}.')
  batch, _, _, frames, phonemes = attention.shape
  return (attention, _position_mask('phoneme_mask', phoneme_mask, (batch, phonemes)),
          _position_mask('frame_mask', frame_mask, (batch, frames)))


@jit_after_checks()
def guided_attention_loss(attention: ArrayLike, *, phoneme_mask: ArrayLike,
                          frame_mask: ArrayLike, sigma: float | ArrayLike = 0.2) -> Array:
  r"""Guided attention: the attention weight far from the diagonal, per frame.

  .. math::
     \ell_{b,s} = \frac{1}{LH} \sum_{l,h} \sum_{t} a_{l,h,s,t}\,
       \left(1 - e^{-(t/N_b - s/T_b)^2 / (2\sigma^2)}\right)

  over the real phonemes ``t`` (``N_b`` of them) of frame ``s`` (``T_b``
  real frames): 0 for an attention on the diagonal, up to 1 far from it.
  Not part of Transformer TTS or FastSpeech; it makes an autoregressive
  TTS teacher's encoder-decoder attention diagonal in far fewer steps, and
  FastSpeech's durations need a diagonal head.

  Args:
    attention: float ``[batch, layers, heads, frames, phonemes]`` (or
      ``[batch, heads, frames, phonemes]``).
    phoneme_mask: ``[batch, phonemes]``, 1 on real phonemes.
    frame_mask: ``[batch, frames]``, 1 on real frames.
    sigma: the width of the diagonal band (0.2 in Tachibana et al.).

  Returns:
    float32 ``[batch, frames]``, 0 on masked frames.

  References:
    Tachibana, Uenoyama & Aihara, "Efficiently Trainable Text-to-Speech
    System Based on Deep Convolutional Networks with Guided Attention"
    (2018), https://arxiv.org/abs/1710.08969.
  """
  attention, phoneme_mask, frame_mask = _attention_and_masks(attention, phoneme_mask,
                                                             frame_mask)
  batch, _, _, frames, phonemes = attention.shape
  num_phonemes = jnp.maximum(phoneme_mask.sum(-1), 1).astype(jnp.float32)[:, None, None]
  num_frames = jnp.maximum(frame_mask.sum(-1), 1).astype(jnp.float32)[:, None, None]
  offset = (jnp.arange(phonemes, dtype=jnp.float32)[None, None, :] / num_phonemes
            - jnp.arange(frames, dtype=jnp.float32)[None, :, None] / num_frames)
  weight = 1.0 - jnp.exp(-jnp.square(offset) / (2.0 * jnp.square(sigma)))
  weight = jnp.where(phoneme_mask[:, None, :], weight, 0.0)  # [batch, frames, phonemes]
  heads = attention.shape[1] * attention.shape[2]
  values = jnp.einsum('blhst,bst->bs', attention, weight) / heads
  return jnp.where(frame_mask, values, 0.0)


_LOG_FLOOR = -1e30


def _forward_sum_row(log_probs: Array, frame_mask: Array, phoneme_mask: Array) -> Array:
  """Per-frame negative log normalisers of the forward algorithm, one row ``[S, P]``."""
  num_frames, num_phonemes = log_probs.shape
  index = jnp.arange(num_phonemes)
  phonemes = phoneme_mask.sum().astype(jnp.int32)
  frames = frame_mask.sum().astype(jnp.int32)
  log_probs = jnp.where(phoneme_mask[None], log_probs, _LOG_FLOOR)
  # The path starts on phoneme 0 at frame 0 and ends on the last real
  # phoneme at the last real frame.
  start = jnp.where(index == 0, 0.0, _LOG_FLOOR)

  def step(previous, inputs):
    row, s = inputs
    advance = jnp.concatenate([jnp.full((1,), _LOG_FLOOR), previous[:-1]])
    reached = jnp.where(s == 0, start, jnp.logaddexp(previous, advance))
    log_alpha = row + reached
    last = s == frames - 1
    log_norm = jnp.where(last, log_alpha[jnp.maximum(phonemes - 1, 0)],
                         jax.nn.logsumexp(log_alpha))
    real = s < frames
    carried = jnp.where(real, log_alpha - log_norm, previous)
    return carried, jnp.where(real, -log_norm, 0.0)

  _, values = jax.lax.scan(step, start, (log_probs, jnp.arange(num_frames)))
  feasible = (frames >= phonemes) & (phonemes > 0)
  return jnp.where(feasible, values, 0.0)


@jit_after_checks(positive_int_value('frames_per_step'), static_argnames=('frames_per_step',))
def forward_sum_loss(attention: ArrayLike, *, phoneme_mask: ArrayLike, frame_mask: ArrayLike,
                     frames_per_step: int = 1) -> Array:
  r"""The forward-sum alignment loss: minus the log-likelihood of every monotonic alignment.

  Reading each frame's attention over the phonemes as a distribution, the
  likelihood of the text is the sum over monotonic alignments (frame 0 on
  phoneme 0, the last real frame on the last real phoneme, each frame on
  the same phoneme as the one before or the next):

  .. math::
     p_b = \sum_{\text{monotonic } t(\cdot)} \prod_{s < T_b} a_{s, t(s)},
     \qquad -\log p_b = \sum_{s < T_b} -\log c_{b,s}

  computed by the forward algorithm, whose normaliser ``c_{b,s}`` at frame
  ``s`` is the frame's share of the likelihood: the values are the
  per-frame ``-log c_{b,s}``, so their sum over a row's real frames is its
  ``-log p_b`` and the Objective's masked mean is the negative
  log-likelihood per frame. A row's sum is >= 0 (the paths' products sum to
  at most 1), a single frame's value may be negative, and it is 0 exactly
  when the attention is one-hot on a monotonic path through every phoneme.
  This is the alignment loss of Badlani et al. (CTC's forward algorithm
  without the blank), here on an autoregressive teacher's encoder-decoder
  attention: the guided attention loss only keeps the attention near the
  diagonal, this one rewards attending to every phoneme in order without
  skipping one.

  The loss is averaged over the attention's layers and heads (each is
  pushed to a monotonic alignment, as each is guided). A row with fewer
  real frames than phonemes has no monotonic alignment and gives 0.

  Args:
    attention: float ``[batch, layers, heads, steps, phonemes]`` (or
      ``[batch, heads, steps, phonemes]``), softmax weights over the
      phonemes.
    phoneme_mask: ``[batch, phonemes]``, 1 on real phonemes (a prefix).
    frame_mask: ``[batch, steps]``, 1 on real decoder steps (a prefix).
    frames_per_step: the decoder's reduction factor ``r``: each step's
      attention row stands for its ``r`` frames (repeated), so that a
      phoneme shorter than a step can still get a frame of its own.

  Returns:
    float32 ``[batch, steps * frames_per_step]``, 0 on masked frames (the
    step mask repeated ``frames_per_step`` times is their mask).

  References:
    Badlani, Łańcucki, Shih, Valle, Ping & Catanzaro, "One TTS Alignment To
    Rule Them All" (2021), https://arxiv.org/abs/2108.10447.
  """
  attention, phoneme_mask, frame_mask = _attention_and_masks(attention, phoneme_mask,
                                                             frame_mask)
  if frames_per_step > 1:
    attention = jnp.repeat(attention, frames_per_step, axis=3)
    frame_mask = jnp.repeat(frame_mask, frames_per_step, axis=1)
  log_probs = jnp.log(jnp.maximum(attention, jnp.finfo(jnp.float32).tiny))
  # Heads, then layers, share their row's masks; the outer map is the batch.
  per_head = jax.vmap(jax.vmap(jax.vmap(_forward_sum_row, (0, None, None)), (0, None, None)))
  values = per_head(log_probs, frame_mask, phoneme_mask).mean(axis=(1, 2))
  return jnp.where(frame_mask, values, 0.0)
