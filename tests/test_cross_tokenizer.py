"""Distillation across tokenizers: ULD, byte-offset chunk alignment, GOLD's hybrid."""

import doctest
import glob

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from kdjax import data
from kdjax import losses
from kdjax import objective
from kdjax import Outputs
from kdjax import zoo
from kdjax.step import init_train_state
from kdjax.losses import _cross_tokenizer
from kdjax.step import make_train_step


def _logits(seed, shape, scale=2.0):
  # NumPy draws: jax.random compiles a sampler per shape (about a second each here).
  return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _numpy_uld(student_logits, teacher_logits, temperature=1.0):
  q = -np.sort(-_softmax(np.asarray(student_logits) / temperature), -1)
  p = -np.sort(-_softmax(np.asarray(teacher_logits) / temperature), -1)
  width = max(q.shape[-1], p.shape[-1])
  pad = lambda x: np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])
  return np.abs(pad(q) - pad(p)).sum(-1) * temperature**2


@pytest.fixture(scope='module')
def bpe():
  """A byte-level BPE trained on a few standard library files (well under a second)."""
  files = sorted(glob.glob(data.python_stdlib_dir() + '/*.py'))[:8]
  texts = []
  for path in files:
    with open(path, encoding='utf-8') as f:
      texts.append(f.read())
  return data.train_tokenizer(texts, vocab_size=500), texts


# ---------------------------------------------------------------- ULD


def test_uld_equals_numpy_sorted_l1():
  student, teacher = _logits(0, (2, 5, 7)), _logits(1, (2, 5, 11))
  values = losses.uld_loss(student, teacher, temperature=1.5)
  assert values.shape == (2, 5) and values.dtype == jnp.float32
  np.testing.assert_allclose(values, _numpy_uld(student, teacher, 1.5), rtol=1e-5, atol=1e-6)


def test_uld_top_k_full_is_exact_and_smaller_k_is_a_bound():
  student, teacher = _logits(2, (3, 4, 9)), _logits(3, (3, 4, 13))
  exact = losses.uld_loss(student, teacher)
  np.testing.assert_array_equal(losses.uld_loss(student, teacher, top_k=13), exact)
  np.testing.assert_array_equal(losses.uld_loss(student, teacher, top_k=50), exact)
  k = 3
  approx = np.asarray(losses.uld_loss(student, teacher, top_k=k))
  tail_q = 1 - np.sort(_softmax(student), -1)[..., -k:].sum(-1)
  tail_p = 1 - np.sort(_softmax(teacher), -1)[..., -k:].sum(-1)
  assert np.all(approx <= exact + 1e-6)
  assert np.all(exact <= approx + 2 * np.minimum(tail_q, tail_p) + 1e-6)


def test_uld_is_invariant_to_vocabulary_permutations():
  student, teacher = _logits(4, (2, 3, 8)), _logits(5, (2, 3, 12))
  perm_s = np.random.default_rng(0).permutation(8)
  perm_t = np.random.default_rng(1).permutation(12)
  np.testing.assert_allclose(
      losses.uld_loss(student[..., perm_s], teacher[..., perm_t]),
      losses.uld_loss(student, teacher), rtol=1e-5)  # the sums run in another order


def test_uld_mask_nan_logits_give_zero_and_zero_gradients():
  student, teacher = _logits(6, (2, 4, 6)), _logits(7, (2, 4, 10))
  mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
  nan = jnp.where(mask[..., None] == 0, jnp.nan, student)
  teacher_nan = jnp.where(mask[..., None] == 0, jnp.nan, teacher)
  values = losses.uld_loss(nan, teacher_nan, token_mask=mask)
  assert np.all(np.asarray(values)[mask == 0] == 0)
  np.testing.assert_allclose(np.asarray(values)[mask == 1],
                             np.asarray(losses.uld_loss(student, teacher))[mask == 1], rtol=1e-6)
  grads = jax.grad(lambda s: losses.uld_loss(s, teacher_nan, token_mask=mask).sum())(nan)
  assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads)[mask == 0] == 0)


def test_uld_errors_name_arguments_and_shapes():
  shapes = r'student_logits\.shape=\(2, 3, 5\).*teacher_logits\.shape=\(2, 4, 5\)'
  with pytest.raises(ValueError, match=shapes):
    losses.uld_loss(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4, 5)))
  with pytest.raises(ValueError, match='top_k'):
    losses.uld_loss(jnp.zeros((2, 5)), jnp.zeros((2, 5)), top_k=0)


# ---------------------------------------------------------------- chunk merging


def test_chunk_log_probs_equal_naive_probability_products():
  logits = _logits(8, (1, 6, 5))
  labels = np.array([[3, 1, 4, 0, 2, 2]])
  chunks = np.array([[0, 0, 0, 1, 2, 2]])
  merged, ends = losses.chunk_log_probs(logits, labels, chunks, temperature=2.0)
  np.testing.assert_array_equal(ends, [[False, False, True, True, False, True]])
  probs = _softmax(np.asarray(logits) / 2.0)[0]
  expected = {2: probs[0, 3] * probs[1, 1] * probs[2], 3: probs[3], 5: probs[4, 2] * probs[5]}
  for position, value in expected.items():
    np.testing.assert_allclose(np.exp(merged[0, position]), value, rtol=1e-5)


# ---------------------------------------------------------------- identical tokenizers


def test_identical_tokenizers_reduce_to_token_level_kl():
  student, teacher = _logits(9, (2, 6, 10)), _logits(10, (2, 6, 10))
  labels = np.random.default_rng(11).integers(0, 10, (2, 6)).astype(np.int32)
  chunks = np.broadcast_to(np.arange(6, dtype=np.int32), (2, 6))
  kwargs = dict(student_labels=labels, teacher_labels=labels, student_chunk=chunks,
                teacher_chunk=chunks, temperature=2.0)
  hybrid = losses.cross_tokenizer_divergence(
      student, teacher, vocab_mapping=np.arange(10, dtype=np.int32), **kwargs)
  kl = losses.token_divergence(student, teacher, divergence='forward_kl', temperature=2.0)
  np.testing.assert_allclose(hybrid, kl, rtol=1e-5, atol=1e-6)
  uld = losses.cross_tokenizer_divergence(student, teacher, **kwargs)
  np.testing.assert_allclose(uld, losses.uld_loss(student, teacher, temperature=2.0), rtol=1e-5,
                             atol=1e-6)


def test_identical_tokenizers_through_the_pipeline(bpe):
  tokenizer, _ = bpe
  texts = ['def f(x):\n    return x + 1\n', 'naïve café ☕ ok']
  for tok in (None, tokenizer):
    arrays = data.make_cross_tokenizer_arrays(
        texts, student_tokenizer=tok, teacher_tokenizer=tok, student_length=24, teacher_length=24)
    real = arrays['mask'] > 0
    np.testing.assert_array_equal(arrays['student_chunk'], arrays['teacher_chunk'])
    np.testing.assert_array_equal(arrays['student_chunk'][real],
                                  np.concatenate([np.arange(n) for n in real.sum(1)]))
    mapping = data.vocab_mapping(tok, tok)
    vocab = 256 if tok is None else tokenizer.vocab_size
    assert mapping.shape == (vocab,)
    shared = mapping >= 0
    np.testing.assert_array_equal(mapping[shared], np.arange(vocab)[shared])
    student, teacher = _logits(12, (2, 24, vocab)), _logits(13, (2, 24, vocab))
    hybrid = losses.cross_tokenizer_divergence(
        student, teacher, student_labels=arrays['labels'], teacher_labels=arrays['teacher_labels'],
        student_chunk=arrays['student_chunk'], teacher_chunk=arrays['teacher_chunk'],
        vocab_mapping=np.arange(vocab, dtype=np.int32), token_mask=arrays['mask'])
    kl = losses.token_divergence(student, teacher, token_mask=arrays['mask'])
    np.testing.assert_allclose(hybrid, kl, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- alignment


def test_align_boundaries_on_hand_made_offsets():
  # 'aé€b': bytes a | c3 a9 | e2 82 ac | b (7 bytes). The student reads bytes;
  # the teacher's tokens straddle characters: [a c3] [a9 e2] [82 ac] [b].
  student = np.arange(8)            # targets are the 7 bytes
  teacher = [0, 2, 4, 6, 7]
  s_chunk, t_chunk = data.align_boundaries(student, teacher)
  np.testing.assert_array_equal(s_chunk, [0, 0, 1, 1, 2, 2, 3])
  np.testing.assert_array_equal(t_chunk, [0, 1, 2, 3])
  # Targets start at different bytes (first input token of different size):
  # bytes before the later start, or after the earlier end, are in no chunk.
  s_chunk, t_chunk = data.align_boundaries([1, 2, 3, 4, 5, 6, 7], [3, 6, 7])
  np.testing.assert_array_equal(s_chunk, [-1, -1, 0, 0, 0, 1])
  np.testing.assert_array_equal(t_chunk, [0, 1])
  s_chunk, t_chunk = data.align_boundaries([0, 3, 5], [0, 2, 4])
  np.testing.assert_array_equal(s_chunk, [-1, -1])
  np.testing.assert_array_equal(t_chunk, [-1, -1])
  with pytest.raises(ValueError, match='teacher_boundaries must be strictly increasing'):
    data.align_boundaries([0, 1], [0, 1, 1])


def test_pipeline_on_multibyte_text_with_straddling_tokens(bpe):
  tokenizer, _ = bpe
  text = 'aé€b 𝄞 def'
  ids, lengths = data.encode_with_byte_lengths(tokenizer, text)
  assert lengths.sum() == len(text.encode('utf-8'))
  vocab = data.token_bytes(tokenizer)
  assert b''.join(vocab[i] for i in ids) == text.encode('utf-8')
  # 'é', '€' and '𝄞' never occur in the training files: their bytes are
  # single byte tokens, straddling nothing but splitting the characters.
  assert any(vocab[i] == b'\xe2' for i in ids)
  # Byte spans agree with the tokenizer's own (character) offsets wherever a
  # token starts and ends on character boundaries.
  encoding = tokenizer.tokenizer.encode(text)
  char_ends = np.cumsum([len(c.encode('utf-8')) for c in text])
  ends = np.cumsum(lengths)
  for (start, end), byte_end in zip(encoding.offsets, ends):
    if end > start and byte_end in char_ends:
      assert char_ends[end - 1] == byte_end
  # Decomposed text is NFC-normalised (the BPE's normalizer) for both sides.
  decomposed = 'cafe\u0301 ' + text
  arrays = data.make_cross_tokenizer_arrays(
      [text, decomposed], teacher_tokenizer=tokenizer, student_length=32, teacher_length=32)
  _check_chunks_spell_the_same_bytes(arrays, tokenizer)
  assert bytes(arrays['tokens'][1][:5].tolist()) == 'café'.encode('utf-8')
  with pytest.raises(ValueError, match='student_length must be a positive int'):
    data.make_cross_tokenizer_arrays([text], teacher_tokenizer=tokenizer, student_length=0,
                                     teacher_length=8)


def _check_chunks_spell_the_same_bytes(arrays, tokenizer):
  vocab = data.token_bytes(tokenizer)
  checked = 0
  for row in range(arrays['tokens'].shape[0]):
    s_chunk, t_chunk = arrays['student_chunk'][row], arrays['teacher_chunk'][row]
    assert set(s_chunk[s_chunk >= 0]) == set(t_chunk[t_chunk >= 0])
    ids = s_chunk[s_chunk >= 0]
    assert np.all(np.diff(ids) >= 0)
    assert ids.size == 0 or ids.max() < min(s_chunk.size, t_chunk.size)
    for k in np.unique(ids):
      student_bytes = bytes(arrays['labels'][row][s_chunk == k].tolist())
      teacher_bytes = b''.join(vocab[i] for i in arrays['teacher_labels'][row][t_chunk == k])
      assert student_bytes == teacher_bytes, (row, k)
      checked += 1
    assert np.all(arrays['mask'][row][s_chunk >= 0] == 1)
    assert np.all(arrays['teacher_mask'][row][t_chunk >= 0] == 1)
  return checked


def test_real_text_aligns_byte_level_and_bpe(bpe):
  tokenizer, texts = bpe
  pieces = [p for text in texts[:3] for p in data.split_text(text, 96)][:40]
  assert ''.join(data.split_text(texts[0], 96)) == texts[0]
  arrays = data.make_cross_tokenizer_arrays(
      pieces, teacher_tokenizer=tokenizer, student_length=96, teacher_length=48)
  checked = _check_chunks_spell_the_same_bytes(arrays, tokenizer)
  assert checked > 40 * 10
  # Most of the text is covered by chunks.
  assert (arrays['student_chunk'] >= 0).sum() > 0.8 * arrays['mask'].sum()
  mapping = data.vocab_mapping(None, tokenizer)
  vocab = data.token_bytes(tokenizer)
  assert mapping.shape == (256,) and np.all(mapping >= 0)
  assert all(vocab[mapping[b]] == bytes([b]) for b in range(256))
  reverse = data.vocab_mapping(tokenizer, None)
  assert reverse.shape == (tokenizer.vocab_size,)
  assert np.sum(reverse >= 0) == 256   # the byte tokens; merges and special tokens match nothing
  assert np.all(reverse[:4] == -1)


# ---------------------------------------------------------------- the loss on real alignments


@pytest.fixture(scope='module')
def aligned(bpe):
  tokenizer, texts = bpe
  pieces = [p for p in data.split_text(texts[1], 40)][:4]
  arrays = data.make_cross_tokenizer_arrays(
      pieces, teacher_tokenizer=tokenizer, student_length=40, teacher_length=24)
  batch = {key: jnp.asarray(value) for key, value in arrays.items()}
  student = _logits(14, (4, 40, 256))
  teacher = _logits(15, (4, 24, tokenizer.vocab_size))
  return tokenizer, batch, student, teacher, data.vocab_mapping(None, tokenizer)


def _divergence(batch, student, teacher, **kwargs):
  return losses.cross_tokenizer_divergence(
      student, teacher, student_labels=batch['labels'], teacher_labels=batch['teacher_labels'],
      student_chunk=batch['student_chunk'], teacher_chunk=batch['teacher_chunk'], **kwargs)


def test_cross_tokenizer_values_on_a_real_alignment(aligned):
  _, batch, student, teacher, mapping = aligned
  ends = np.asarray(losses.chunk_end_mask(batch['student_chunk']))
  for kwargs in ({}, {'vocab_mapping': mapping}, {'top_k': 8}):
    values = np.asarray(_divergence(batch, student, teacher, **kwargs))
    assert np.all(np.isfinite(values)) and np.all(values[~ends] == 0)
    assert np.all(values[ends] > 0)
  # A chunk of one byte and one BPE token: the hybrid's KL + ULD of the rest, by hand.
  s_chunk, t_chunk = np.asarray(batch['student_chunk']), np.asarray(batch['teacher_chunk'])
  row, k = next((r, k) for r in range(4) for k in np.unique(s_chunk[r][s_chunk[r] >= 0])
                if (s_chunk[r] == k).sum() == 1 and (t_chunk[r] == k).sum() == 1)
  i, j = int(np.flatnonzero(s_chunk[row] == k)[0]), int(np.flatnonzero(t_chunk[row] == k)[0])
  q, p = _softmax(student[row, i]), _softmax(teacher[row, j])
  p_shared = p[mapping] / p[mapping].sum()
  kl = np.sum(p_shared * (np.log(p_shared) - np.log(q)))
  rest = np.ones(p.size, bool)
  rest[mapping] = False
  rest_sorted = -np.sort(-p[rest])
  expected = kl + rest_sorted.sum()   # every student token is shared: its rest is empty
  hybrid = _divergence(batch, student, teacher, vocab_mapping=mapping)
  np.testing.assert_allclose(hybrid[row, i], expected, rtol=1e-5)


def test_cross_tokenizer_jit_equals_no_jit_and_padding_gets_no_gradient(aligned):
  _, batch, student, teacher, mapping = aligned
  padding = np.asarray(batch['student_chunk']) < 0
  nan_student = jnp.where(padding[..., None], jnp.nan, student)
  nan_teacher = jnp.where(np.asarray(batch['teacher_chunk'])[..., None] < 0, jnp.nan, teacher)

  def total(s, t):
    return _divergence(batch, s, t, vocab_mapping=mapping, temperature=2.0).sum()

  eager = _divergence(batch, nan_student, nan_teacher, vocab_mapping=mapping, temperature=2.0)
  jitted = jax.jit(lambda s, t: _divergence(batch, s, t, vocab_mapping=mapping, temperature=2.0))(
      nan_student, nan_teacher)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(
      eager, _divergence(batch, student, teacher, vocab_mapping=mapping, temperature=2.0),
      rtol=1e-6)
  grads = jax.grad(total)(nan_student, nan_teacher)
  assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads)[padding] == 0)
  assert np.any(np.asarray(grads)[~padding] != 0)
  # A token mask drops the chunks it touches, with zero gradients there too.
  mask = np.asarray(batch['mask']).copy()
  mask[:, 5:] = 0
  masked = _divergence(batch, student, teacher, token_mask=mask)
  assert np.all(np.asarray(masked)[:, 5:] == 0)


def test_cross_tokenizer_errors_name_arguments_and_shapes(aligned):
  _, batch, student, teacher, mapping = aligned
  with pytest.raises(ValueError, match=r'one entry per student token, shape \(256,\).*\(255,\)'):
    _divergence(batch, student, teacher, vocab_mapping=mapping[:255])
  with pytest.raises(ValueError, match=r'teacher ids in \[0, 500\)'):
    _divergence(batch, student, teacher, vocab_mapping=np.full(256, 900, np.int32))
  with pytest.raises(ValueError, match='same teacher token'):
    _divergence(batch, student, teacher, vocab_mapping=np.zeros(256, np.int32))
  with pytest.raises(ValueError, match=r'teacher_chunk must have the shape .*\(4, 24\).*\(4, 40\)'):
    losses.cross_tokenizer_divergence(
        student, teacher, student_labels=batch['labels'], teacher_labels=batch['teacher_labels'],
        student_chunk=batch['student_chunk'], teacher_chunk=batch['student_chunk'])
  with pytest.raises(ValueError, match=r'same batch size.*\(4, 40, 256\).*\(2, 24, 500\)'):
    _divergence(batch, student, teacher[:2])
  with pytest.raises(ValueError, match='vocab_mapping must be a 1-D integer array'):
    objective.cross_tokenizer_distill(vocab_mapping=np.zeros((2, 3)))


def test_uld_distill_aligns_by_position():
  student, teacher = _logits(16, (2, 6, 7)), _logits(17, (2, 4, 9))
  teacher_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
  term = objective.uld_distill(teacher_mask_key='teacher_mask')
  values, mask = term(Outputs(student), Outputs(teacher), {'teacher_mask': teacher_mask}, 0)
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
  np.testing.assert_allclose(values[:, :4] * mask[:, :4],
                             _numpy_uld(student[:, :4], teacher) * teacher_mask,
                             rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- a train step


def test_train_step_byte_student_bpe_teacher(aligned, bpe):
  tokenizer, texts = bpe
  pieces = data.split_text(texts[2], 32)[:8]
  arrays = data.make_cross_tokenizer_arrays(
      pieces, teacher_tokenizer=tokenizer, student_length=32, teacher_length=16)
  batch = {key: jnp.asarray(value) for key, value in arrays.items()}
  common = dict(num_layers=1, num_heads=2, max_len=32)
  student_lm = zoo.DecoderLM(zoo.DecoderConfig(vocab_size=256, hidden=16, mlp_dim=32, **common))
  teacher_lm = zoo.DecoderLM(
      zoo.DecoderConfig(vocab_size=tokenizer.vocab_size, hidden=32, mlp_dim=64, **common))
  student_vars = nn.meta.unbox(jax.jit(student_lm.init)(jax.random.PRNGKey(0), batch['tokens']))
  teacher_vars = nn.meta.unbox(
      jax.jit(teacher_lm.init)(jax.random.PRNGKey(1), batch['teacher_tokens']))
  kd = objective.Objective({
      'ce': objective.supervised(label_key='labels'),
      'kd': objective.cross_tokenizer_distill(vocab_mapping=data.vocab_mapping(None, tokenizer)),
  })
  optimizer = optax.adam(3e-3)
  step = jax.jit(make_train_step(
      zoo.lm_apply(student_lm), zoo.lm_apply(teacher_lm, inputs='teacher_tokens'), kd, optimizer))
  state = init_train_state(student_vars, optimizer)
  totals = []
  for _ in range(6):
    state, metrics = step(state, teacher_vars, batch)
    totals.append(float(metrics['loss/total'][0]))
    kd_sum, kd_count = metrics['loss/kd']
    assert int(kd_count) == int(losses.chunk_end_mask(batch['student_chunk']).sum())
  assert np.all(np.isfinite(totals)) and totals[-1] < totals[0], totals


def test_doctests():
  result = doctest.testmod(_cross_tokenizer, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0
