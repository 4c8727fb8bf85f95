"""Speech models: length regulator, duration extraction, variance adaptor, cached TTS generation,
losses, Griffin-Lim, one train step of teacher and student on the shipped sample, bad inputs."""

import dataclasses
import functools
import itertools
import os
import wave

import flax.linen as nn
import jax
from jax import test_util
import numpy as np
import optax
import pytest

import decoding_checks
from kdjax import data as kdata
from kdjax import losses
from kdjax import objective
from kdjax import step as step_lib
from kdjax import zoo

SAMPLE = os.path.join(os.path.dirname(__file__), 'data', 'speech_sample.npz')
VOCAB, MELS = 12, 8

TEACHER = zoo.TransformerTTSConfig(
    vocab_size=VOCAB, num_mels=MELS, hidden=16, num_heads=2, encoder_layers=1, decoder_layers=2,
    mlp_dim=32, max_source_len=8, max_frames=16, prenet_conv_layers=1, decoder_prenet_dim=16,
    postnet_layers=2, postnet_channels=8, num_speakers=2, decoder_position_rate=0.6)
STUDENT = zoo.FastSpeechConfig(
    vocab_size=VOCAB, num_mels=MELS, hidden=16, num_heads=2, encoder_layers=1, decoder_layers=1,
    conv_filter=24, conv_kernels=(3, 1), max_source_len=8, max_frames=16, predictor_filter=8,
    num_bins=8, pitch_range=(-2.0, 2.0), energy_range=(-2.0, 2.0))


def numpy_variables(model, *args, **kwargs):
  """Plain NumPy variables of the model's shapes (no init compile per parameter shape)."""
  shapes = nn.meta.unbox(jax.eval_shape(
      functools.partial(model.init, **kwargs), {'params': jax.random.key(0),
                                                'dropout': jax.random.key(1)}, *args))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'scale' in name or 'alpha' in name:
      return np.ones(leaf.shape, np.float32)
    if 'bias' in name:
      return 0.1 * rng.standard_normal(leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _phonemes():
  phonemes = np.array([[1, 2, 3, 4, 5, 0], [3, 4, 5, 6, 7, 8], [2, 9, 0, 0, 0, 0]], np.int32)
  return phonemes, phonemes > 0


# ----------------------------------------------------------- length regulator


def _reference_regulate(hidden, durations, mask, max_frames):
  rows, masks = [], []
  for h, d, m in zip(hidden, durations, mask):
    repeated = np.repeat(h, np.where(m, d, 0), axis=0)[:max_frames]
    masks.append(np.arange(max_frames) < len(repeated))
    rows.append(np.pad(repeated, ((0, max_frames - len(repeated)), (0, 0))))
  return np.stack(rows), np.stack(masks)


def test_length_regulator_equals_np_repeat_and_truncates_at_the_end():
  rng = np.random.default_rng(0)
  hidden = rng.standard_normal((4, 5, 3)).astype(np.float32)
  durations = rng.integers(0, 5, (4, 5)).astype(np.int32)
  durations[1] = [9, 9, 9, 0, 1]  # sums to 28 > 16: the last phonemes lose their frames
  mask = np.ones((4, 5), bool)
  mask[2, 3:] = False  # padded phonemes' durations do not count
  durations[2, 3:] = 7
  frames, frame_mask = zoo.length_regulate(hidden, durations, 16, mask)
  expected, expected_mask = _reference_regulate(hidden, durations, mask, 16)
  np.testing.assert_array_equal(frames, expected)
  np.testing.assert_array_equal(frame_mask, expected_mask)
  np.testing.assert_array_equal(
      np.asarray(frame_mask).sum(-1), np.minimum(np.where(mask, durations, 0).sum(-1), 16))
  # Row 1: 16 frames are phoneme 0 (9) then phoneme 1 (7 of 9); phonemes 2 and 4 get none.
  index, _ = zoo.frame_phoneme_index(durations, 16, mask)
  np.testing.assert_array_equal(index[1], [0] * 9 + [1] * 7)
  jitted = jax.jit(zoo.length_regulate, static_argnums=2)(hidden, durations, 16, mask)
  np.testing.assert_array_equal(jitted[0], frames)


def test_phoneme_average_matches_numpy():
  rng = np.random.default_rng(1)
  durations = np.array([[2, 0, 3, 1], [1, 1, 1, 0]], np.int32)
  values = rng.standard_normal((2, 8)).astype(np.float32)
  got = np.asarray(zoo.phoneme_average(values, durations))
  for b in range(2):
    ends = np.cumsum(durations[b])
    for t, d in enumerate(durations[b]):
      segment = values[b, ends[t] - d:ends[t]]
      np.testing.assert_allclose(got[b, t], segment.mean() if d else 0.0, rtol=1e-6)


def test_predicted_durations_invert_log_d_plus_one_and_scale():
  durations = np.array([[0, 1, 4, 10]], np.int32)
  mask = np.array([[True, True, True, False]])
  log_d = np.log1p(durations).astype(np.float32)
  np.testing.assert_array_equal(zoo.predicted_durations(log_d, mask), [[0, 1, 4, 0]])
  np.testing.assert_array_equal(zoo.predicted_durations(log_d, mask, 2.0), [[0, 2, 8, 0]])


# --------------------------------------------------------- duration extraction


def _diagonal_attention(durations, lengths, num_phonemes, frames, sharp=0.9):
  """[batch, layers=2, heads=2, frames, phonemes]: head (1, 0) sharp and diagonal."""
  batch = len(durations)
  attention = np.zeros((batch, 2, 2, frames, num_phonemes), np.float32)
  rng = np.random.default_rng(2)
  for b, d in enumerate(durations):
    owner = np.repeat(np.arange(len(d)), d)
    real = len(d)
    for layer in range(2):
      for head in range(2):
        noise = rng.random((frames, real)) + 0.5
        attention[b, layer, head, :, :real] = noise / noise.sum(-1, keepdims=True)
    sharp_rows = np.full((lengths[b], real), (1 - sharp) / max(real - 1, 1), np.float32)
    sharp_rows[np.arange(lengths[b]), owner] = sharp
    attention[b, 1, 0, :lengths[b], :real] = sharp_rows
  return attention


def test_decoder_position_rate_scales_the_sinusoids_positions():
  plain = zoo._seq2seq._sinusoids(12, 6)
  np.testing.assert_array_equal(zoo._tts._rated_sinusoids(12, 6, 1.0), plain)
  np.testing.assert_allclose(zoo._tts._rated_sinusoids(12, 6, 0.5)[::2], plain[:6], atol=1e-6)
  with pytest.raises(ValueError, match='decoder_position_rate must be positive'):
    dataclasses.replace(TEACHER, decoder_position_rate=0.0)


def test_extract_durations_recovers_a_diagonal_alignment_exactly():
  true = [np.array([3, 1, 4, 2], np.int32), np.array([2, 5, 3], np.int32)]
  lengths = np.array([10, 10], np.int32)
  num_phonemes, frames = 5, 12
  src_mask = np.zeros((2, num_phonemes), bool)
  src_mask[0, :4] = src_mask[1, :3] = True
  attention = _diagonal_attention(true, lengths, num_phonemes, frames)
  # Attention on padded phonemes and frames must be ignored.
  attention[:, :, :, :, 4] += 5.0 * ~src_mask[:, None, None, None, 4]
  attention[:, :, :, 10:] = 0.0
  attention[:, 0, 1, 10:, 0] = 1.0
  durations, chosen = zoo.extract_durations(attention, src_mask, lengths)
  np.testing.assert_array_equal(chosen, [[1, 0], [1, 0]])
  np.testing.assert_array_equal(durations[0], [3, 1, 4, 2, 0])
  np.testing.assert_array_equal(durations[1], [2, 5, 3, 0, 0])
  np.testing.assert_array_equal(np.asarray(durations).sum(-1), lengths)
  fixed, _ = zoo.extract_durations(attention, src_mask, lengths, head=(1, 0))
  np.testing.assert_array_equal(fixed, durations)
  # Any head's durations sum to the lengths, sharp or not.
  blurred, _ = zoo.extract_durations(attention, src_mask, lengths, head=(0, 1))
  np.testing.assert_array_equal(np.asarray(blurred).sum(-1), lengths)


def _best_monotonic_path(log_probs, frames, phonemes):
  """Brute force: every split of `frames` frames into `phonemes` non-empty runs."""
  best, path = -np.inf, None
  for cuts in itertools.combinations(range(1, frames), phonemes - 1):
    owner = np.repeat(np.arange(phonemes), np.diff((0, *cuts, frames)))
    score = log_probs[np.arange(frames), owner].sum()
    if score > best:
      best, path = score, owner
  return path


def test_monotonic_alignment_is_the_best_monotonic_path():
  rng = np.random.default_rng(5)
  frames, phonemes = np.array([7, 5, 6, 2, 0]), np.array([3, 5, 1, 3, 2])
  attention = rng.dirichlet(np.ones(6), size=(5, 8)).astype(np.float32)
  src_mask = np.arange(6)[None] < phonemes[:, None]
  got = np.asarray(zoo.monotonic_alignment(attention, src_mask, frames))
  for b in range(3):  # feasible rows: the best of all monotonic paths
    want = _best_monotonic_path(np.log(attention[b]), frames[b], phonemes[b])
    np.testing.assert_array_equal(got[b, :frames[b]], want)
  # Fewer frames than phonemes: no monotonic path, the argmax of each frame.
  np.testing.assert_array_equal(got[3, :2], attention[3, :2, :3].argmax(-1))
  np.testing.assert_array_equal(got[:, :][np.arange(8)[None] >= frames[:, None]], -1)
  jitted = jax.jit(zoo.monotonic_alignment)(attention, src_mask, frames)
  np.testing.assert_array_equal(jitted, got)


def test_monotonic_durations_recover_the_diagonal_and_repair_a_stray_frame():
  true = [np.array([3, 1, 4, 2], np.int32), np.array([2, 5, 3], np.int32)]
  lengths = np.array([10, 10], np.int32)
  src_mask = np.zeros((2, 5), bool)
  src_mask[0, :4] = src_mask[1, :3] = True
  attention = _diagonal_attention(true, lengths, 5, 12)
  for head in ((1, 0), None):
    durations, _ = zoo.extract_durations(attention, src_mask, lengths, head=head,
                                         method='monotonic')
    np.testing.assert_array_equal(durations[0], [3, 1, 4, 2, 0])
    np.testing.assert_array_equal(durations[1], [2, 5, 3, 0, 0])
  # One frame of phoneme 2 glances back at phoneme 0: argmax miscounts,
  # the monotonic path cannot go back and keeps the true durations.
  attention[0, 1, 0, 6, :4] = [0.5, 0.1, 0.35, 0.05]
  argmax, _ = zoo.extract_durations(attention, src_mask, lengths, head=(1, 0))
  np.testing.assert_array_equal(argmax[0], [4, 1, 3, 2, 0])
  path, _ = zoo.extract_durations(attention, src_mask, lengths, head=(1, 0),
                                  method='monotonic')
  np.testing.assert_array_equal(path[0], [3, 1, 4, 2, 0])
  # Every phoneme gets a frame even from a blurred head; the sum is the length.
  blurred, _ = zoo.extract_durations(attention, src_mask, lengths, head=(0, 1),
                                     method='monotonic')
  assert (np.asarray(blurred)[src_mask] >= 1).all()
  np.testing.assert_array_equal(np.asarray(blurred).sum(-1), lengths)


def test_mean_head_durations_use_the_average_attention():
  true = [np.array([3, 1, 4, 2], np.int32)]
  lengths = np.array([10], np.int32)
  src_mask = np.arange(5)[None] < 4
  attention = _diagonal_attention(true, lengths, 5, 12)
  mean = attention.mean(axis=(1, 2), keepdims=True)
  for method in ('argmax', 'monotonic'):
    got, chosen = zoo.extract_durations(attention, src_mask, lengths, head='mean', method=method)
    want, _ = zoo.extract_durations(mean, src_mask, lengths, head=(0, 0), method=method)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(chosen, [[-1, -1]])


def test_focus_rate_matches_its_formula():
  rng = np.random.default_rng(3)
  attention = rng.random((2, 1, 3, 6, 4)).astype(np.float32)
  src_mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  lengths = np.array([4, 6], np.int32)
  got = np.asarray(zoo.focus_rate(attention, src_mask, lengths))
  for b in range(2):
    real = attention[b, :, :, :lengths[b]][..., src_mask[b]]
    np.testing.assert_allclose(got[b], real.max(-1).mean(-1), rtol=1e-6)


# ------------------------------------------------------------------- student


@functools.lru_cache(maxsize=None)
def _student(config=STUDENT):
  model = zoo.FastSpeech(config)
  phonemes, mask = _phonemes()
  durations = np.ones_like(phonemes)
  return model, numpy_variables(model, phonemes, mask, durations=durations), jax.jit(model.apply)


def _student_inputs():
  phonemes, mask = _phonemes()
  durations = np.array([[2, 3, 1, 4, 2, 0], [1, 1, 2, 2, 1, 1], [5, 4, 9, 9, 9, 9]], np.int32)
  rng = np.random.default_rng(4)
  pitch = rng.standard_normal((3, STUDENT.max_frames)).astype(np.float32)
  energy = rng.standard_normal((3, STUDENT.max_frames)).astype(np.float32)
  return phonemes, mask, durations, pitch, energy


def test_variance_adaptor_shapes_and_masks():
  model, variables, apply = _student()
  phonemes, mask, durations, pitch, energy = _student_inputs()
  out = apply(variables, phonemes, mask, durations=durations, pitch=pitch, energy=energy)
  frames = STUDENT.max_frames
  assert out['mel'].shape == (3, frames, MELS)
  for name in ('pitch', 'energy', 'frame_mask'):
    assert out[name].shape == (3, frames), name
  assert out['log_duration'].shape == out['durations'].shape == phonemes.shape
  lengths = np.where(mask, durations, 0).sum(-1)
  np.testing.assert_array_equal(np.asarray(out['frame_mask']).sum(-1), lengths)
  np.testing.assert_array_equal(out['durations'], np.where(mask, durations, 0))
  padded = ~np.asarray(out['frame_mask'])
  assert np.all(np.asarray(out['mel'])[padded] == 0)
  assert np.all(np.asarray(out['pitch'])[padded] == 0)
  assert np.all(np.asarray(out['log_duration'])[~mask] == 0)
  # Free running: the rounded predicted durations drive the length regulator.
  free = apply(variables, phonemes, mask)
  expected = zoo.predicted_durations(free['log_duration'], mask)
  np.testing.assert_array_equal(free['durations'], expected)
  np.testing.assert_array_equal(np.asarray(free['frame_mask']).sum(-1),
                                np.minimum(np.asarray(expected).sum(-1), frames))


def test_student_padding_equals_slicing():
  model, variables, apply = _student()
  phonemes, mask, durations, pitch, energy = _student_inputs()
  out = apply(variables, phonemes, mask, durations=durations, pitch=pitch, energy=energy)
  row = 2  # two real phonemes of six
  alone = apply(variables, phonemes[row:, :2], mask[row:, :2],
                      durations=durations[row:, :2], pitch=pitch[row:], energy=energy[row:])
  np.testing.assert_allclose(alone['mel'][0], out['mel'][row], atol=1e-5)
  np.testing.assert_allclose(alone['log_duration'][0], out['log_duration'][row, :2], atol=1e-5)


def test_pitch_embedding_uses_the_targets_bins():
  model, variables, apply = _student()
  phonemes, mask, durations, pitch, energy = _student_inputs()
  base = apply(variables, phonemes, mask, durations=durations, pitch=pitch, energy=energy)
  bins = zoo.variance_bins(*STUDENT.pitch_range, STUDENT.num_bins)
  ids = np.asarray(zoo.quantize(pitch, bins))
  np.testing.assert_array_equal(ids, np.searchsorted(bins, pitch, side='left'))
  # A change of pitch that stays within its bins changes nothing; one that crosses does.
  centre = (bins[:-1] + bins[1:]) / 2
  inside = centre[np.clip(ids - 1, 0, len(centre) - 1)]
  inside = np.where((ids > 0) & (ids < len(bins)), inside, pitch).astype(np.float32)
  same = apply(variables, phonemes, mask, durations=durations, pitch=inside, energy=energy)
  np.testing.assert_allclose(same['mel'], base['mel'], atol=1e-6)
  moved = apply(variables, phonemes, mask, durations=durations, pitch=pitch + 1.0,
                      energy=energy)
  assert np.abs(np.asarray(moved['mel']) - np.asarray(base['mel'])).max() > 1e-3


def test_fastspeech1_and_phoneme_level_variants():
  fs1 = dataclasses.replace(STUDENT, use_pitch=False, use_energy=False)
  model, variables, apply = _student(fs1)
  assert not any('pitch' in k or 'energy' in k for k in variables['params'])
  phonemes, mask, durations, _, _ = _student_inputs()
  out = apply(variables, phonemes, mask, durations=durations)
  assert set(out) == {'mel', 'frame_mask', 'log_duration', 'durations'}
  with pytest.raises(ValueError, match='use_pitch=False'):
    apply(variables, phonemes, mask, durations=durations, pitch=np.zeros((3, 16),
                                                                               np.float32))
  level = dataclasses.replace(STUDENT, variance_level='phoneme')
  model, variables, apply = _student(level)
  targets = np.zeros(phonemes.shape, np.float32)
  out = apply(variables, phonemes, mask, durations=durations, pitch=targets,
                    energy=targets)
  assert out['pitch'].shape == out['energy'].shape == phonemes.shape
  with pytest.raises(ValueError, match='same shape'):
    apply(variables, phonemes, mask, durations=durations,
                pitch=np.zeros((3, 16), np.float32))


def test_parameters_carry_logical_axis_names():
  phonemes, mask = _phonemes()
  mels = np.zeros((3, TEACHER.max_frames, MELS), np.float32)
  models = {
      'teacher': (zoo.TransformerTTS(TEACHER), (phonemes, mask, mels),
                  {'speaker': np.zeros(3, np.int32)}),
      'student': (zoo.FastSpeech(STUDENT), (phonemes, mask), {'durations': np.ones_like(phonemes)}),
  }
  for name, (model, args, kwargs) in models.items():
    shapes = jax.eval_shape(functools.partial(model.init, **kwargs),
                            {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, *args)
    leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    unnamed = [leaf for leaf in leaves if not isinstance(leaf, nn.LogicallyPartitioned)]
    assert all(leaf.shape == () for leaf in unnamed), name  # only the position scales
    for leaf in leaves:
      if isinstance(leaf, nn.LogicallyPartitioned):
        assert len(leaf.names) == leaf.value.ndim
        named = [n for n in leaf.names if n is not None]
        assert len(set(named)) == len(named), leaf.names  # a name may appear once
        assert set(leaf.names) - {None} <= set(zoo.TTS_LOGICAL_AXES), leaf.names


# ------------------------------------------------------------------- teacher


@functools.lru_cache(maxsize=None)
def _teacher():
  model = zoo.TransformerTTS(TEACHER)
  phonemes, mask = _phonemes()
  mels = np.zeros((3, TEACHER.max_frames, MELS), np.float32)
  variables = numpy_variables(model, phonemes, mask, mels, speaker=np.zeros(3, np.int32))
  return model, variables, jax.jit(model.apply)


def test_teacher_cached_generation_equals_recomputation():
  model, variables, apply = _teacher()
  phonemes, mask = _phonemes()
  speaker = np.array([0, 1, 1], np.int32)
  key = jax.random.key(7)
  generate = zoo.make_tts_generate(model, max_frames=TEACHER.max_frames, stop_threshold=2.0)
  out = generate(variables, phonemes, mask, speaker=speaker, rng=key)
  np.testing.assert_array_equal(out.lengths, [TEACHER.max_frames] * 3)  # never stops
  # Teacher forcing on the generated frames, with the same pre-net dropout masks.
  forced = apply(variables, phonemes, mask, out.mels_before_postnet, speaker=speaker,
                       prenet_key=key)
  np.testing.assert_allclose(forced['mel'], out.mels_before_postnet, atol=1e-5)
  np.testing.assert_allclose(forced['mel_postnet'], out.mels, atol=1e-5)
  np.testing.assert_allclose(jax.nn.sigmoid(forced['stop_logits']), out.stop_probs, atol=1e-5)
  np.testing.assert_allclose(forced['attention'], out.attention, atol=1e-5)
  # Per-row stop: a threshold inside the stop probabilities' range ends each row at its
  # first crossing.
  probs = np.asarray(out.stop_probs)
  threshold = float(np.median(probs))
  stopped = generate(variables, phonemes, mask, speaker=speaker, rng=key,
                     stop_threshold=threshold)
  above = probs > threshold
  expected = np.where(above.any(-1), above.argmax(-1) + 1, TEACHER.max_frames)
  np.testing.assert_array_equal(stopped.lengths, expected)
  frame_mask = np.asarray(stopped.frame_mask)
  np.testing.assert_allclose(
      np.asarray(stopped.mels_before_postnet)[frame_mask],
      np.asarray(out.mels_before_postnet)[frame_mask], atol=1e-5)
  assert np.all(np.asarray(stopped.mels)[~frame_mask] == 0)
  durations, _ = zoo.extract_durations(stopped.attention, mask, stopped.lengths)
  np.testing.assert_array_equal(np.asarray(durations).sum(-1), expected)
  assert np.all(np.asarray(durations)[~mask] == 0)


@pytest.mark.slow
def test_sharded_generation_equals_unsharded():
  model, variables, _ = _teacher()
  phonemes, mask = _phonemes()
  phonemes, mask = np.concatenate([phonemes, phonemes[:1]]), np.concatenate([mask, mask[:1]])
  speaker = np.array([0, 1, 1, 0], np.int32)
  boxed = jax.eval_shape(functools.partial(model.init, speaker=speaker),
                         {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
                         phonemes, mask, np.zeros((4, TEACHER.max_frames, MELS), np.float32))
  boxed = jax.tree.map(lambda box, value: box.replace_boxed(value) if hasattr(
      box, 'replace_boxed') else value, boxed, variables,
                       is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  generate = zoo.make_tts_generate(model, max_frames=TEACHER.max_frames, stop_threshold=2.0)
  key = jax.random.key(3)
  expected = generate(variables, phonemes, mask, speaker=speaker, rng=key)
  mesh = decoding_checks.mesh_4x2()
  sharded = decoding_checks.shard_variables(boxed, mesh, decoding_checks.RULES)
  with decoding_checks.logical_mesh(mesh, decoding_checks.RULES):
    got = generate(sharded, phonemes, mask, speaker=speaker, rng=key)
  np.testing.assert_allclose(got.mels, expected.mels, atol=1e-5)
  np.testing.assert_allclose(got.attention, expected.attention, atol=1e-5)


def test_teacher_forcing_is_causal_and_ignores_padding():
  model, variables, apply = _teacher()
  phonemes, mask = _phonemes()
  speaker = np.array([0, 1, 1], np.int32)
  key = jax.random.key(0)
  frames = TEACHER.max_frames  # the shapes of the generation test: one compile for both
  mels = np.random.default_rng(5).standard_normal((3, frames, MELS)).astype(np.float32)
  base = apply(variables, phonemes, mask, mels, speaker=speaker, prenet_key=key)
  assert base['attention'].shape == (3, TEACHER.decoder_layers, TEACHER.num_heads, frames, 6)
  np.testing.assert_allclose(np.asarray(base['attention']).sum(-1), 1.0, atol=1e-5)
  assert np.all(np.asarray(base['attention'])[2][..., 2:] == 0)  # padded phonemes
  changed = mels.copy()
  changed[:, 6:] += 1.0  # frames 6.. are the inputs of outputs 7..
  after = apply(variables, phonemes, mask, changed, speaker=speaker, prenet_key=key)
  np.testing.assert_allclose(after['mel'][:, :7], base['mel'][:, :7], atol=1e-6)
  assert np.abs(np.asarray(after['mel'][:, 7:]) - np.asarray(base['mel'][:, 7:])).max() > 1e-4
  # Padding == slicing (the pre-net's inference dropout off: its masks depend on the row).
  plain = zoo.TransformerTTS(dataclasses.replace(TEACHER, prenet_dropout_at_inference=False))
  plain_apply = jax.jit(plain.apply)
  padded = plain_apply(variables, phonemes, mask, mels, speaker=speaker)
  alone = plain_apply(variables, phonemes[2:, :2], mask[2:, :2], mels[2:], speaker=speaker[2:])
  np.testing.assert_allclose(alone['mel'][0], padded['mel'][2], atol=1e-5)
  np.testing.assert_allclose(alone['attention'][0][..., :2], padded['attention'][2][..., :2],
                             atol=1e-6)


# -------------------------------------------------------------------- losses


def test_losses_match_numpy_and_mask():
  rng = np.random.default_rng(6)
  predicted, target = rng.standard_normal((2, 2, 5, 3)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  l1 = np.asarray(losses.mel_loss(predicted, target, frame_mask=mask))
  np.testing.assert_allclose(l1, np.abs(predicted - target).mean(-1) * mask, rtol=1e-6)
  l2 = np.asarray(losses.mel_loss(predicted, target, frame_mask=mask, kind='l2'))
  np.testing.assert_allclose(l2, np.square(predicted - target).mean(-1) * mask, rtol=1e-6)
  grad = jax.grad(lambda p: losses.mel_loss(p, target, frame_mask=mask).sum())(predicted)
  assert np.all(np.asarray(grad)[~mask] == 0)
  log_d = rng.standard_normal((2, 5)).astype(np.float32)
  durations = rng.integers(0, 6, (2, 5)).astype(np.int32)
  np.testing.assert_allclose(losses.duration_loss(log_d, durations, phoneme_mask=mask),
                             (log_d - np.log(durations + 1.0)) ** 2 * mask, rtol=1e-5)
  np.testing.assert_allclose(losses.variance_loss(log_d, target[..., 0], token_mask=mask),
                             (log_d - target[..., 0]) ** 2 * mask, rtol=1e-6)
  stops = np.asarray(losses.stop_targets(mask))
  np.testing.assert_array_equal(stops, [[0, 0, 1, 0, 0], [0, 0, 0, 0, 1]])
  p = 1 / (1 + np.exp(-log_d))
  bce = -(3.0 * stops * np.log(p) + (1 - stops) * np.log(1 - p)) * mask
  np.testing.assert_allclose(
      losses.stop_token_loss(log_d, stops, frame_mask=mask, positive_weight=3.0), bce,
      rtol=1e-5)


def test_guided_attention_matches_its_formula_and_prefers_the_diagonal():
  rng = np.random.default_rng(9)
  attention = rng.random((2, 1, 2, 6, 4)).astype(np.float32)
  attention /= attention.sum(-1, keepdims=True)
  phoneme_mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  frame_mask = np.array([[1] * 5 + [0], [1] * 6], bool)
  got = np.asarray(losses.guided_attention_loss(attention, phoneme_mask=phoneme_mask,
                                                frame_mask=frame_mask, sigma=0.3))
  for b in range(2):
    n, t = phoneme_mask[b].sum(), frame_mask[b].sum()
    for s in range(6):
      weight = 1 - np.exp(-(np.arange(n) / n - s / t) ** 2 / (2 * 0.3**2))
      expected = (attention[b, 0, :, s, :n] * weight).sum(-1).mean() if s < t else 0.0
      np.testing.assert_allclose(got[b, s], expected, rtol=1e-5, atol=1e-7)
  owner = np.repeat(np.arange(4), [2, 1, 2, 1])
  diagonal = np.zeros((1, 1, 1, 6, 4), np.float32)
  diagonal[0, 0, 0, np.arange(6), owner] = 1.0
  reverse = diagonal[..., ::-1]
  masks = {'phoneme_mask': np.ones((1, 4), bool), 'frame_mask': np.ones((1, 6), bool)}
  assert (np.asarray(losses.guided_attention_loss(diagonal, **masks)).sum()
          < 0.25 * np.asarray(losses.guided_attention_loss(reverse, **masks)).sum())


def _monotonic_log_likelihood(log_probs):
  """log of the sum over every monotonic path (start on phoneme 0, end on the last,
  advance by 0 or 1 per frame) of the product of the path's weights, by enumeration."""
  frames, phonemes = log_probs.shape
  paths = []
  for moves in itertools.product((0, 1), repeat=frames - 1):
    if sum(moves) == phonemes - 1:
      owner = np.concatenate([[0], np.cumsum(moves)])
      paths.append(log_probs[np.arange(frames), owner].sum())
  return np.logaddexp.reduce(paths)


@pytest.mark.parametrize('frames_per_step', [1, 2])
def test_forward_sum_loss_is_minus_the_log_likelihood_of_every_monotonic_path(frames_per_step):
  rng = np.random.default_rng(11)
  scores = rng.normal(size=(3, 2, 2, 5, 4)) * 2
  phoneme_mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], bool)
  step_mask = np.array([[1] * 5, [1] * 4 + [0], [1] * 2 + [0] * 3], bool)
  attention = np.where(phoneme_mask[:, None, None, None], np.exp(scores), 0.0)
  attention = (attention / attention.sum(-1, keepdims=True)).astype(np.float32)
  got = np.asarray(losses.forward_sum_loss(attention, phoneme_mask=phoneme_mask,
                                           frame_mask=step_mask,
                                           frames_per_step=frames_per_step))
  frame_mask = np.repeat(step_mask, frames_per_step, axis=1)
  assert got.shape == frame_mask.shape
  np.testing.assert_array_equal(got[~frame_mask], 0.0)
  for b in range(3):
    n, t = phoneme_mask[b].sum(), frame_mask[b].sum()
    frames = np.repeat(attention[b], frames_per_step, axis=-2)[..., :t, :n].astype(np.float64)
    expected = np.mean([-_monotonic_log_likelihood(np.log(frames[l, h]))
                        for l in range(2) for h in range(2)])
    # The per-frame values sum to the row's negative log-likelihood.
    np.testing.assert_allclose(got[b].sum(), expected, rtol=1e-5)


def test_forward_sum_loss_rewards_a_monotonic_attention_and_has_gradients():
  masks = {'phoneme_mask': np.ones((1, 4), bool), 'frame_mask': np.ones((1, 6), bool)}
  owner = np.repeat(np.arange(4), [2, 1, 2, 1])
  path = np.full((1, 1, 6, 4), 1e-6, np.float32)
  path[0, 0, np.arange(6), owner] = 1.0
  path /= path.sum(-1, keepdims=True)
  # One-hot on a monotonic path through every phoneme: (nearly) 0. The same
  # path reversed is not monotonic: its only monotonic paths are improbable.
  np.testing.assert_allclose(np.asarray(losses.forward_sum_loss(path, **masks)).sum(), 0.0,
                             atol=1e-4)
  reverse = path[..., ::-1, :]
  assert np.asarray(losses.forward_sum_loss(reverse, **masks)).sum() > 10
  # A path that skips phoneme 2 scores worse than one that visits it.
  skipping = path.copy()
  skipping[0, 0, 3:5] = path[0, 0, 5]
  assert (np.asarray(losses.forward_sum_loss(skipping, **masks)).sum()
          > np.asarray(losses.forward_sum_loss(path, **masks)).sum() + 5)
  # Gradients of the softmax scores: finite, and they match finite differences.
  scores = np.random.default_rng(12).normal(size=(1, 1, 6, 4))

  def loss(scores):
    return losses.forward_sum_loss(jax.nn.softmax(scores, -1), **masks).sum()

  test_util.check_grads(loss, (scores,), order=1, modes=('rev',), atol=1e-2, rtol=1e-2)


def test_forward_sum_loss_gives_zero_without_a_monotonic_path_and_checks_its_arguments():
  attention = np.full((1, 1, 3, 4), 0.25, np.float32)
  got = losses.forward_sum_loss(attention, phoneme_mask=np.ones((1, 4), bool),
                                frame_mask=np.ones((1, 3), bool))  # 3 frames, 4 phonemes
  np.testing.assert_array_equal(np.asarray(got), 0.0)
  # With two frames per step there is a path.
  assert np.asarray(losses.forward_sum_loss(
      attention, phoneme_mask=np.ones((1, 4), bool), frame_mask=np.ones((1, 3), bool),
      frames_per_step=2)).sum() > 0
  with pytest.raises(ValueError, match='frames_per_step must be a positive int'):
    losses.forward_sum_loss(attention, phoneme_mask=np.ones((1, 4), bool),
                            frame_mask=np.ones((1, 3), bool), frames_per_step=0)
  with pytest.raises(ValueError, match=r'frame_mask must be \[batch, time\] = \(1, 3\)'):
    losses.forward_sum_loss(attention, phoneme_mask=np.ones((1, 4), bool),
                            frame_mask=np.ones((1, 4), bool))
  with pytest.raises(ValueError, match='attention must be'):
    losses.forward_sum_loss(attention[0], phoneme_mask=np.ones((1, 4), bool),
                            frame_mask=np.ones((1, 3), bool))


def test_loss_errors():
  x = np.zeros((2, 5, 3), np.float32)
  with pytest.raises(ValueError, match='kind'):
    losses.mel_loss(x, x, kind='l3')
  with pytest.raises(ValueError, match='same shape'):
    losses.mel_loss(x, x[:, :4])
  with pytest.raises(ValueError, match=r'frame_mask must be \[batch, time\]'):
    losses.mel_loss(x, x, frame_mask=np.ones((2, 4), bool))
  with pytest.raises(ValueError, match='durations must be >= 0'):
    losses.duration_loss(x[..., 0], -np.ones((2, 5), np.int32))
  with pytest.raises(TypeError, match='integer'):
    losses.duration_loss(x[..., 0], x[..., 0])


# --------------------------------------------------------------- Griffin-Lim


def test_istft_inverts_stft():
  config = kdata.FeatureConfig()
  x = np.random.default_rng(8).standard_normal(4000).astype(np.float32)
  np.testing.assert_allclose(kdata.istft(kdata.stft(x, config), config, len(x)), x, atol=1e-5)


def test_griffin_lim_converges_on_a_sinusoid(tmp_path):
  config = kdata.FeatureConfig()
  n = 3200  # 0.2 s
  x = 0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / config.sample_rate)
  magnitude = np.abs(kdata.stft(x, config))
  history = []
  audio = kdata.griffin_lim(magnitude, config, iterations=40, momentum=0.0, length=n,
                            history=history)
  assert np.all(np.diff(history) <= 1e-6), history  # Griffin & Lim: never increases
  assert history[-1] < 0.5 * history[0], history
  assert abs(history[-1] - kdata.spectral_convergence(magnitude, audio, config)) < 1e-9
  fast = []  # Perraudin et al.'s momentum: not monotone, but much closer
  audio = kdata.griffin_lim(magnitude, config, iterations=60, length=n, history=fast)
  assert fast[-1] < 0.08 and fast[-1] < history[-1], (fast[-1], history[-1])
  # Through the mel filterbank: the pseudo-inverse keeps the tone's bin the loudest.
  log_mel, _ = kdata.log_mel_and_energy(x.astype(np.float32), config)
  rebuilt = kdata.mel_to_magnitude(log_mel, config)
  assert rebuilt.shape == magnitude.shape and np.all(rebuilt >= 0)
  peak = round(440 * config.n_fft / config.sample_rate)
  assert abs(int(np.argmax(rebuilt[10])) - peak) <= 2
  path = tmp_path / 'tone.wav'
  kdata.write_wav(path, audio, config.sample_rate)
  with wave.open(str(path)) as f:
    assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (
        1, 2, config.sample_rate, n)
    pcm = np.frombuffer(f.readframes(n), '<i2')
  assert abs(np.abs(pcm).max() - round(0.95 * 32767)) <= 1


# ------------------------------------------------------------- train smoke


def _sample_batch(max_phonemes=48, max_frames=400):
  """The shipped sample's five utterances, padded, pitch and energy z-scored."""
  examples = kdata.read_speech_chunks([SAMPLE])
  return kdata.pad_speech_batch(examples, max_phonemes=max_phonemes, max_frames=max_frames,
                                stats=kdata.speech_stats(examples))


def test_pad_speech_batch_masks_and_standardises():
  examples = kdata.read_speech_chunks([SAMPLE])
  stats = kdata.speech_stats(examples)
  batch = _sample_batch()
  frame_mask, phoneme_mask = batch['frame_mask'], batch['phoneme_mask']
  for i, example in enumerate(examples):
    frames, phonemes = len(example['mel']), len(example['phonemes'])
    assert frame_mask[i].sum() == frames == batch['durations'][i].sum()
    assert phoneme_mask[i].sum() == phonemes
    np.testing.assert_array_equal(batch['mel'][i, :frames], example['mel'])
    np.testing.assert_allclose(stats.pitch_hz(batch['pitch'][i, :frames]), example['pitch'],
                               rtol=1e-5)
  assert not batch['mel'][~frame_mask].any() and not batch['pitch'][~frame_mask].any()
  assert not batch['phonemes'][~phoneme_mask].any()
  pitch = batch['pitch'][frame_mask]
  np.testing.assert_allclose([pitch.mean(), pitch.std()], [0.0, 1.0], atol=1e-5)
  np.testing.assert_array_equal(batch['speaker'], [e['speaker'] for e in examples])
  with pytest.raises(ValueError, match='example 2 has 45 phonemes and 395 frames'):
    kdata.pad_speech_batch(examples, max_phonemes=48, max_frames=300)
  broken = dict(examples[0], durations=examples[0]['durations'] + 1)
  with pytest.raises(ValueError, match='example 0: durations'):
    kdata.pad_speech_batch([broken], max_phonemes=48, max_frames=400)


def _one_step(apply, variables, objective_, batch):
  optimizer = optax.adam(1e-3)
  state = step_lib.init_train_state(variables, optimizer, rng=0)
  train_step = jax.jit(step_lib.make_train_step(apply, None, objective_, optimizer))
  new_state, metrics = train_step(state, None, batch)
  assert int(new_state.step) == 1
  total = metrics['loss/total']
  assert np.isfinite(float(total[0] / total[1] if isinstance(total, tuple) else total))
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         state.params, new_state.params)
  assert all(jax.tree.leaves(changed))
  return metrics


def test_one_train_step_of_the_teacher_on_the_sample():
  batch = _sample_batch()
  num_phonemes = len(kdata.PHONEMES)
  teacher = zoo.TransformerTTS(zoo.TransformerTTSConfig(
      vocab_size=num_phonemes, hidden=16, num_heads=2, encoder_layers=1, decoder_layers=1,
      mlp_dim=32, max_source_len=48, max_frames=400, prenet_conv_layers=1,
      decoder_prenet_dim=16, postnet_layers=2, postnet_channels=8, num_speakers=2))
  teacher_objective = objective.Objective(terms={
      'mel': objective.mel_reconstruction(),
      'mel_postnet': objective.mel_reconstruction(feature='mel_postnet'),
      'stop': objective.stop_token(positive_weight=5.0),
      'guided': objective.guided_attention(),
      'align': objective.forward_sum(frames_per_step=2)})
  variables = numpy_variables(teacher, batch['phonemes'], batch['phoneme_mask'], batch['mel'],
                              speaker=batch['speaker'])
  metrics = _one_step(zoo.transformer_tts_apply(teacher), variables, teacher_objective, batch)
  assert {'loss/mel', 'loss/mel_postnet', 'loss/stop', 'loss/guided', 'loss/align'} <= set(metrics)
  # Each frame term is a mean over the real frames only (the alignment term's
  # frames are the steps' repeated twice).
  for name in ('loss/mel', 'loss/stop', 'loss/guided'):
    assert float(metrics[name][1]) == batch['frame_mask'].sum(), name
  assert float(metrics['loss/align'][1]) == 2 * batch['frame_mask'].sum()
  assert float(metrics['loss/align'][0]) > 0


def test_one_train_step_of_the_student_on_the_sample():
  batch = _sample_batch()
  num_phonemes = len(kdata.PHONEMES)
  student = zoo.FastSpeech(zoo.FastSpeechConfig(
      vocab_size=num_phonemes, hidden=16, num_heads=2, encoder_layers=1, decoder_layers=1,
      conv_filter=24, max_source_len=48, max_frames=400, predictor_filter=8, num_bins=16,
      num_speakers=2))
  student_objective = objective.Objective(terms={
      'mel': objective.mel_reconstruction(),
      'duration': objective.duration_regression(),
      'pitch': objective.variance_regression('pitch'),
      'energy': objective.variance_regression('energy')})
  variables = numpy_variables(student, batch['phonemes'], batch['phoneme_mask'],
                              durations=batch['durations'], speaker=batch['speaker'])
  metrics = _one_step(zoo.fastspeech_apply(student), variables, student_objective, batch)
  assert float(metrics['loss/duration'][1]) == batch['phoneme_mask'].sum()
  assert float(metrics['loss/pitch'][1]) == batch['frame_mask'].sum()


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_clear_errors():
  durations = np.array([[1, -2, 3]], np.int32)
  with pytest.raises(ValueError, match=r'durations must be >= 0.*-2 at index \(0, 1\)'):
    zoo.length_regulate(np.zeros((1, 3, 2), np.float32), durations, 8)
  with pytest.raises(ValueError, match='hidden must be'):
    zoo.length_regulate(np.zeros((1, 4, 2), np.float32), np.ones((1, 3), np.int32), 8)
  with pytest.raises(TypeError, match='integer'):
    zoo.frame_phoneme_index(np.ones((1, 3), np.float32), 8)
  model, variables, apply = _student()
  phonemes, mask, *_ = _student_inputs()
  with pytest.raises(ValueError, match='durations must be >= 0'):
    model.apply(variables, phonemes, mask, durations=-np.ones_like(phonemes))
  with pytest.raises(ValueError, match='same shape'):
    model.apply(variables, phonemes, mask, durations=np.ones((3, 5), np.int32))
  with pytest.raises(TypeError, match='phoneme_mask must be bool'):
    model.apply(variables, phonemes, mask.astype(np.int32))
  with pytest.raises(ValueError, match='phonemes must be in'):
    model.apply(variables, phonemes + VOCAB, mask)
  with pytest.raises(ValueError, match='more than max_source_len'):
    model.apply(variables, np.ones((1, 9), np.int32), np.ones((1, 9), bool))
  attention = np.zeros((2, 1, 1, 4, 3), np.float32)
  with pytest.raises(ValueError, match=r'attention must be \[batch, layers'):
    zoo.extract_durations(attention[:, 0], np.ones((2, 3), bool), np.ones(2, np.int32))
  with pytest.raises(ValueError, match='src_mask must be'):
    zoo.extract_durations(attention, np.ones((2, 4), bool), np.ones(2, np.int32))
  with pytest.raises(ValueError, match=r'tgt_lengths must be in \[0, frames=4\]'):
    zoo.extract_durations(attention, np.ones((2, 3), bool), np.array([1, 5], np.int32))
  with pytest.raises(ValueError, match='head='):
    zoo.extract_durations(attention, np.ones((2, 3), bool), np.ones(2, np.int32), head=(0, 2))
  with pytest.raises(ValueError, match="head must be"):
    zoo.extract_durations(attention, np.ones((2, 3), bool), np.ones(2, np.int32), head='max')
  with pytest.raises(ValueError, match="method must be 'argmax' or 'monotonic'"):
    zoo.extract_durations(attention, np.ones((2, 3), bool), np.ones(2, np.int32), method='mas')
  with pytest.raises(ValueError, match=r'attention must be \[batch, frames, phonemes\]'):
    zoo.monotonic_alignment(attention, np.ones((2, 3), bool), np.ones(2, np.int32))
  teacher, teacher_variables, _ = _teacher()
  generate = zoo.make_tts_generate(teacher, max_frames=4)
  with pytest.raises(ValueError, match='pass rng'):
    generate(teacher_variables, phonemes, mask, speaker=np.zeros(3, np.int32))
  with pytest.raises(ValueError, match='num_speakers=2: pass speaker'):
    generate(teacher_variables, phonemes, mask, rng=jax.random.key(0))
  with pytest.raises(ValueError, match='cache_length'):
    zoo.make_tts_generate(teacher, max_frames=TEACHER.max_frames + 1)
  with pytest.raises(ValueError, match=r'mels must be \[batch=3'):
    teacher.apply(teacher_variables, phonemes, mask, np.zeros((3, 4, MELS + 1), np.float32),
                  speaker=np.zeros(3, np.int32), prenet_key=jax.random.key(0))
  with pytest.raises(ValueError, match="scale='log'"):
    zoo.FastSpeechConfig(vocab_size=4, pitch_scale='log')
  with pytest.raises(ValueError, match='variance_level'):
    zoo.FastSpeechConfig(vocab_size=4, variance_level='word')
