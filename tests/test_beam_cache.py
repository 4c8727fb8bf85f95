"""Beam search over a shared, never-reordered KV cache (``Decoder.beam_step``).

The zoo's decoders give beam search a step that leaves the cache in place
and follows the beams' ancestry with per-position slot pointers. These
tests hold it to the plain scheme (the cache tiled per beam and gathered
along the parents every step, what a ``Decoder`` without ``beam_step``
gets), to exhaustive enumeration with the model's full forward pass, and
to greedy decoding at width 1.
"""

import dataclasses
import itertools

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding_checks import numpy_variables
from kdjax import generate as gen
from kdjax import zoo
from kdjax.zoo import _transformer


def _lm(vocab=11, seed=0, scale=0.3, **kwargs):
  cfg = zoo.DecoderConfig(vocab_size=vocab, num_layers=2, hidden=16, num_heads=2, mlp_dim=32,
                          max_len=20, **kwargs)
  model = zoo.DecoderLM(cfg)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  return model, nn.meta.unbox(numpy_variables(shapes, scale=scale, seed=seed))


def _full_reorder(decoder):
  return dataclasses.replace(decoder, beam_cache=None, beam_step=None, beam_resize=None)


def _assert_same_beams(a, b):
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.lengths, b.lengths)
  np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(a.log_probs, b.log_probs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('positions,width', [('rope', 3), ('learned', 4)])
def test_decoder_lm_shared_cache_equals_full_reorder(positions, width):
  model, variables = _lm(positions=positions, mlp='swiglu', norm='rms', seed=1)
  decoder = zoo.lm_decoder(model)
  assert decoder.beam_step is not None
  prompts = np.array([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0], [8, 0, 0, 0, 0]], np.int32)
  lengths = np.array([5, 2, 1], np.int32)
  method = gen.BeamSearch(width=width, alpha=0.6)
  outs = [gen.generate(d, variables, prompts, lengths, max_new_tokens=9, eos_id=3,
                       method=method) for d in (decoder, _full_reorder(decoder))]
  _assert_same_beams(*outs)
  # In segments of growing cache length (cut to 5 + 3, 5 + 6, 5 + 8
  # positions), the same beams; a reordering decoder ignores the option.
  segmented = dataclasses.replace(method, cache_segments=3)
  assert gen._generate._segments(segmented, decoder, True, 5, 9) == [(3, 8), (6, 11), (8, 13)]
  for d in (decoder, _full_reorder(decoder)):
    _assert_same_beams(outs[1], gen.generate(d, variables, prompts, lengths, max_new_tokens=9,
                                             eos_id=3, method=segmented))


def test_seq2seq_shared_cache_equals_full_reorder():
  cfg = zoo.Seq2SeqConfig(source_vocab_size=13, target_vocab_size=9, encoder_layers=1,
                          decoder_layers=2, hidden=16, num_heads=2, mlp_dim=32,
                          max_source_len=8, max_target_len=10)
  model = zoo.Seq2SeqTransformer(cfg)
  rng = np.random.default_rng(0)
  source = rng.integers(1, 13, size=(3, 8)).astype(np.int32)
  mask = np.arange(8)[None] < np.array([[8], [5], [2]])
  shapes = jax.eval_shape(model.init, jax.random.key(1), source, mask,
                          np.zeros((3, 4), np.int32))
  variables = nn.meta.unbox(numpy_variables(shapes, scale=0.4, seed=3))
  decoder = zoo.seq2seq_decoder(model)
  assert decoder.beam_step is not None
  bos = np.ones((3, 1), np.int32)
  outs = [gen.generate(d, variables, bos, max_new_tokens=8, eos_id=2,
                       method=gen.BeamSearch(width=3), inputs={'source': source,
                                                              'source_mask': mask})
          for d in (decoder, _full_reorder(decoder))]
  _assert_same_beams(*outs)
  segmented = gen.generate(decoder, variables, bos, max_new_tokens=8, eos_id=2,
                           method=gen.BeamSearch(width=3, cache_segments=2),
                           inputs={'source': source, 'source_mask': mask})
  _assert_same_beams(outs[1], segmented)


def test_resize_beam_cache_cuts_and_pads_positions_only():
  model, variables = _lm()
  decoder = zoo.lm_decoder(model)
  cache = decoder.beam_cache(decoder.init_cache(variables, {}, 2, 9), 3)
  cache = jax.tree.map(lambda x: x + 1, cache)
  cut = _transformer.resize_beam_cache(cache, 4)
  grown = _transformer.resize_beam_cache(cut, 9)
  for layer in cache:
    key, value = cache[layer]['key'], cache[layer]['value']  # [b, h, kv, w, t], [b, h, w, t, kv]
    np.testing.assert_array_equal(cut[layer]['key'], key[..., :4])
    np.testing.assert_array_equal(cut[layer]['value'], value[:, :, :, :4])
    np.testing.assert_array_equal(grown[layer]['key'][..., :4], key[..., :4])
    np.testing.assert_array_equal(grown[layer]['key'][..., 4:], 0)
    np.testing.assert_array_equal(grown[layer]['value'][:, :, :, 4:], 0)
  with pytest.raises(ValueError, match='length'):
    _transformer.resize_beam_cache(cache, 0)
  with pytest.raises(ValueError, match='cache_segments'):
    gen.BeamSearch(width=2, cache_segments=0)
  with pytest.raises(ValueError, match='beam_resize needs'):
    dataclasses.replace(decoder, beam_cache=None, beam_step=None)


def test_decoder_lm_wide_beam_finds_exhaustive_optimum():
  # Width V**L keeps every hypothesis, so the finished set is the exhaustive
  # top-k of all sequences, each scored with the full forward pass.
  vocab, steps, eos = 3, 3, 2
  model, variables = _lm(vocab=vocab, seed=4, scale=1.0)
  prompts = np.array([[0, 1], [1, 0]], np.int32)
  method = gen.BeamSearch(width=vocab**steps, alpha=0.7)
  out = gen.generate(zoo.lm_decoder(model), variables, prompts, max_new_tokens=steps,
                     method=method, eos_id=eos)
  forward = jax.jit(lambda tokens: jax.nn.log_softmax(model.apply(variables, tokens), -1))
  for b in range(2):
    ranked = []
    for n in range(1, steps + 1):
      for seq in itertools.product(range(vocab), repeat=n):
        if eos in seq[:-1] or (n < steps and seq[-1] != eos):
          continue
        lp = np.asarray(forward(np.asarray([list(prompts[b]) + list(seq)], np.int32)))[0]
        total = sum(lp[len(prompts[b]) - 1 + i, t] for i, t in enumerate(seq))
        ranked.append(float(total) / float(method.penalty(n)))
    ranked.sort(reverse=True)
    k = min(len(ranked), method.width)
    np.testing.assert_allclose(out.scores[b, :k], ranked[:k], rtol=1e-5, atol=1e-6)


def test_decoder_lm_width_one_is_greedy():
  model, variables = _lm(seed=2)
  decoder = zoo.lm_decoder(model)
  prompts = np.array([[4, 9, 2], [1, 0, 0]], np.int32)
  lengths = np.array([3, 1], np.int32)
  greedy = gen.generate(decoder, variables, prompts, lengths, max_new_tokens=7)
  beam = gen.generate(decoder, variables, prompts, lengths, max_new_tokens=7,
                      method=gen.BeamSearch(width=1, length_penalty='none'))
  np.testing.assert_array_equal(beam.tokens[:, 0], greedy.tokens)
  np.testing.assert_allclose(beam.log_probs[:, 0], greedy.log_probs, rtol=1e-5, atol=1e-6)


def test_beam_cache_mask_matches_numpy():
  rng = np.random.default_rng(0)
  batch, width, length = 2, 3, 5
  slots = rng.integers(0, width, size=(batch, width, length)).astype(np.int32)
  positions = np.array([1, 4], np.int32)
  mask = np.asarray(_transformer.beam_cache_mask(jnp.asarray(slots), jnp.asarray(positions)))
  assert mask.shape == (batch, 1, width, width * length)
  for b, w, v, p in itertools.product(range(batch), range(width), range(width), range(length)):
    assert mask[b, 0, w, v * length + p] == (slots[b, w, p] == v and p <= positions[b])


def test_beam_decode_equals_decode_on_a_reordered_cache():
  # One step with an arbitrary ancestry: the beam step's logits equal the
  # plain step's on a cache holding each beam's own history contiguously.
  model, variables = _lm(seed=5)
  width, length, prompt_len = 3, 8, 2
  prompt = np.array([[3, 7]], np.int32)
  history = np.random.default_rng(1).integers(0, 11, size=(width, 3)).astype(np.int32)  # steps 0..2
  # Beam w continues slot parents[w]'s two tokens (ancestries are consistent:
  # an entry's key and value depend on the tokens before it in its slot).
  parents = np.array([2, 2, 0])
  slots = np.zeros((1, width, length), np.int32)
  slots[0, :, prompt_len:prompt_len + 2] = parents[:, None]
  slots[0, :, prompt_len + 2] = np.arange(width)
  decoder = zoo.lm_decoder(model)
  # Jitted: one compilation each instead of every op eagerly (eager decoding
  # equals jitted in tests/test_zoo_decode.py).
  beam_step = jax.jit(decoder.beam_step)
  cache = decoder.init_cache(variables, {}, 1, length)
  _, cache = jax.jit(decoder.step)(variables, prompt, np.arange(2, dtype=np.int32)[None], cache)
  beam_cache = decoder.beam_cache(cache, width)
  # Fill slot v at positions 2, 3 with beam v's tokens of steps 0, 1.
  for t in range(2):
    step_slots = np.broadcast_to(np.arange(width)[None, :, None], (1, width, length)).copy()
    step_slots[0, :, :prompt_len] = 0
    _, beam_cache = beam_step(variables, history[None, :, t], np.array([prompt_len + t], np.int32),
                              beam_cache, step_slots)
  logits, _ = beam_step(variables, history[None, :, 2], np.array([prompt_len + 2], np.int32),
                        beam_cache, slots)
  seqs = [list(prompt[0]) + list(history[parents[w], :2]) + [history[w, 2]] for w in range(width)]
  full = jax.jit(model.apply)(variables, np.asarray(seqs, np.int32))
  np.testing.assert_allclose(logits[0], full[:, -1], rtol=1e-5, atol=1e-5)


def test_beam_step_bad_input():
  model, variables = _lm()
  decoder = zoo.lm_decoder(model)
  cache = decoder.init_cache(variables, {}, 2, 6)
  with pytest.raises(ValueError, match='must be a beam cache'):
    decoder.beam_step(variables, np.zeros((2, 3), np.int32), np.zeros((2,), np.int32), cache,
                      np.zeros((2, 3, 6), np.int32))
  beam_cache = decoder.beam_cache(cache, 3)
  with pytest.raises(ValueError, match=r'slots must have shape \(2, 3, 6\)'):
    decoder.beam_step(variables, np.zeros((2, 3), np.int32), np.zeros((2,), np.int32),
                      beam_cache, np.zeros((2, 3, 5), np.int32))
  with pytest.raises(ValueError, match=r'tokens must have shape \(2, 3\)'):
    decoder.beam_step(variables, np.zeros((2, 4), np.int32), np.zeros((2,), np.int32),
                      beam_cache, np.zeros((2, 3, 6), np.int32))
  with pytest.raises(ValueError, match='beam_cache and Decoder.beam_step must be given together'):
    dataclasses.replace(decoder, beam_cache=None)
