"""kdjax.generate against independent references on a toy decoder.

The toy is a second-order Markov model: the logits at position ``p`` are
``table[token[p-1], token[p]] + bias[p]`` (``token[-1]`` a start symbol).
Its decoder keeps the tokens in the cache and reads nothing after ``p``,
so it honours the :class:`~kdjax.generate.Decoder` contract, and the
probability of any sequence is computed here in NumPy without it.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import generate as gen


def _toy(vocab=5, max_length=16, seed=0, scale=2.0):
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(vocab + 1, vocab, vocab)).astype(np.float32) * scale
  bias = rng.normal(size=(max_length, vocab)).astype(np.float32) * 0.5

  def logits_np(seq):
    """Logits of the next token after every prefix of `seq` (NumPy)."""
    out = []
    for p, tok in enumerate(seq):
      prev = seq[p - 1] if p else vocab
      out.append(table[prev, tok] + bias[p])
    return np.stack(out)

  def init_cache(variables, inputs, batch_size, cache_length):
    del variables, inputs
    return {'tokens': jnp.zeros((batch_size, cache_length), jnp.int32)}

  def step(variables, tokens, positions, cache):
    t_table, t_bias = variables['table'], variables['bias']
    buf = jax.vmap(lambda row, tok, pos: row.at[pos].set(tok))(
        cache['tokens'], tokens, positions)
    prev = jnp.where(positions > 0,
                     jnp.take_along_axis(buf, jnp.maximum(positions - 1, 0), axis=1), vocab)
    logits = t_table[prev, tokens] + t_bias[positions]
    return logits, {'tokens': buf}

  decoder = gen.Decoder(init_cache=init_cache, step=step, vocab_size=vocab,
                        max_length=max_length)
  variables = {'table': jnp.asarray(table), 'bias': jnp.asarray(bias)}
  return decoder, variables, logits_np


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _greedy_reference(logits_np, prompt, steps, eos_id=None):
  seq, new, lps = list(prompt), [], []
  for _ in range(steps):
    lp = _log_softmax(logits_np(seq)[-1])
    tok = int(np.argmax(lp))
    new.append(tok)
    lps.append(lp[tok])
    seq.append(tok)
    if tok == eos_id:
      break
  return new, lps


def _seq_log_prob(logits_np, prompt, new):
  full = list(prompt) + list(new)
  lp = _log_softmax(logits_np(full[:-1]))
  return float(sum(lp[len(prompt) - 1 + i, t] for i, t in enumerate(new)))


def test_argmax_equals_jnp_argmax_with_ties_nan_and_inf():
  rng = np.random.default_rng(0)
  logits = rng.integers(0, 4, (64, 37)).astype(np.float32)  # many ties
  logits[3] = -np.inf
  logits[4, [5, 9]] = np.nan
  logits[5, 7] = np.inf
  logits[6, [2, 30]] = np.inf
  for fn in (gen._generate._argmax, jax.jit(gen._generate._argmax)):
    got = fn(jnp.asarray(logits))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, jnp.argmax(jnp.asarray(logits), axis=-1))
    np.testing.assert_array_equal(fn(jnp.asarray(logits[:2].reshape(2, 1, 37))),
                                  np.argmax(logits[:2], axis=-1)[:, None])


def test_greedy_matches_python_loop_with_ragged_prompts():
  decoder, variables, logits_np = _toy()
  prompts = np.array([[1, 2, 3, 4], [3, 0, 0, 0], [2, 4, 0, 0]], np.int32)
  lengths = np.array([4, 1, 2], np.int32)
  out = gen.generate(decoder, variables, prompts, lengths, max_new_tokens=6)
  for b in range(3):
    ref, ref_lp = _greedy_reference(logits_np, prompts[b, :lengths[b]], 6)
    np.testing.assert_array_equal(out.tokens[b], ref)
    np.testing.assert_allclose(out.log_probs[b], ref_lp, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out.lengths, [6, 6, 6])
  assert out.scores is None


def test_eos_stops_one_row_while_others_go_on():
  decoder, variables, logits_np = _toy(seed=3)
  prompts = np.array([[0], [1], [2], [3], [4]], np.int32)
  refs = [_greedy_reference(logits_np, p, 8) for p in prompts]
  # An EOS id that greedy decoding meets early in some rows and not others.
  firsts = {}
  for b, (toks, _) in enumerate(refs):
    for i, t in enumerate(toks):
      firsts.setdefault(t, {}).setdefault(b, i)
  eos = max(firsts, key=lambda t: (0 < len(firsts[t]) < 5, -min(firsts[t].values())))
  out = gen.generate(decoder, variables, prompts, max_new_tokens=8, eos_id=eos, pad_id=0)
  stopped = 0
  for b in range(5):
    ref, ref_lp = _greedy_reference(logits_np, prompts[b], 8, eos_id=eos)
    n = len(ref)
    assert int(out.lengths[b]) == n
    np.testing.assert_array_equal(out.tokens[b, :n], ref)
    np.testing.assert_array_equal(out.tokens[b, n:], 0)
    np.testing.assert_allclose(out.log_probs[b, :n], ref_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.log_probs[b, n:], 0.0)
    stopped += n < 8
  assert 0 < stopped < 5


def test_one_compilation_for_different_prompts_of_one_shape():
  decoder, variables, _ = _toy()
  fn = gen.make_generate(decoder, max_new_tokens=4)
  fn(variables, np.array([[1, 2], [3, 4]], np.int32), np.array([2, 1], np.int32))
  fn(variables, np.array([[4, 4], [0, 1]], np.int32), np.array([1, 2], np.int32))
  assert fn.jitted._cache_size() == 1


def _enumerate(logits_np, prompt, steps, eos_id, penalty):
  """Every finished continuation and its penalised score, exhaustively."""
  vocab = logits_np([0]).shape[-1]
  results = []
  for length in range(1, steps + 1):
    for seq in itertools.product(range(vocab), repeat=length):
      if eos_id in seq[:-1]:
        continue
      if length < steps and seq[-1] != eos_id:
        continue
      lp = _seq_log_prob(logits_np, prompt, seq)
      results.append((lp / penalty(length), seq))
  return sorted(results, key=lambda r: -r[0])


@pytest.mark.parametrize('length_penalty,alpha', [('gnmt', 0.8), ('average', 0.0),
                                                  ('none', 0.0)])
def test_wide_beam_finds_exhaustive_optimum(length_penalty, alpha):
  vocab, steps, eos = 3, 4, 2
  decoder, variables, logits_np = _toy(vocab=vocab, seed=5, scale=1.0)
  method = gen.BeamSearch(width=vocab**steps, alpha=alpha, length_penalty=length_penalty)
  penalty = lambda n: float(method.penalty(n))
  prompts = np.array([[0, 1], [1, 0]], np.int32)
  out = gen.generate(decoder, variables, prompts, max_new_tokens=steps, method=method,
                     eos_id=eos)
  for b in range(2):
    ranked = _enumerate(logits_np, prompts[b], steps, eos, penalty)
    best_score, best = ranked[0]
    n = int(out.lengths[b, 0])
    assert tuple(np.asarray(out.tokens[b, 0, :n])) == best
    np.testing.assert_allclose(out.scores[b, 0], best_score, rtol=1e-5)
    np.testing.assert_allclose(out.log_probs[b, 0].sum(), best_score * penalty(n), rtol=1e-5)
    # The whole finished set is the exhaustive top-k, in order.
    k = min(len(ranked), method.width)
    np.testing.assert_allclose(out.scores[b, :k], [r[0] for r in ranked[:k]], rtol=1e-5)


def test_early_stopping_changes_nothing():
  decoder, variables, _ = _toy(vocab=6, seed=7)
  prompts = np.array([[0, 1, 2], [3, 0, 0]], np.int32)
  lengths = np.array([3, 1], np.int32)
  outs = [gen.generate(decoder, variables, prompts, lengths, max_new_tokens=7, eos_id=1,
                       method=gen.BeamSearch(width=3, early_stopping=e)) for e in (True, False)]
  for a, b in zip(outs[0].__dict__.values(), outs[1].__dict__.values()):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_beam_width_one_is_greedy():
  # Width 1 extends the single best hypothesis by its best token, as greedy
  # decoding does. (With an EOS the two may still differ: beam search keeps
  # the hypothesis that ended at a lower-ranked EOS and returns it if it
  # outscores the one greedy decoding continues.)
  decoder, variables, _ = _toy(seed=11)
  prompts = np.array([[0, 1], [4, 0], [2, 2]], np.int32)
  lengths = np.array([2, 1, 2], np.int32)
  greedy = gen.generate(decoder, variables, prompts, lengths, max_new_tokens=6)
  for method in (gen.BeamSearch(width=1), gen.BeamSearch(width=1, length_penalty='none'),
                 gen.BeamSearch(width=1, length_penalty='average')):
    beam = gen.generate(decoder, variables, prompts, lengths, max_new_tokens=6,
                        method=method)
    np.testing.assert_array_equal(beam.tokens[:, 0], greedy.tokens)
    np.testing.assert_array_equal(beam.lengths[:, 0], greedy.lengths)
    np.testing.assert_allclose(beam.log_probs[:, 0], greedy.log_probs, rtol=1e-6)


def test_beam_hypotheses_are_distinct_and_scored_consistently():
  decoder, variables, logits_np = _toy(vocab=6, seed=2)
  prompts = np.array([[1, 2, 3]], np.int32)
  method = gen.BeamSearch(width=4, alpha=0.6)
  out = gen.generate(decoder, variables, prompts, max_new_tokens=5, eos_id=0, method=method)
  seqs = set()
  for k in range(4):
    n = int(out.lengths[0, k])
    seq = tuple(np.asarray(out.tokens[0, k, :n]))
    seqs.add(seq)
    lp = _seq_log_prob(logits_np, prompts[0], seq)
    np.testing.assert_allclose(out.log_probs[0, k, :n].sum(), lp, rtol=1e-5)
    np.testing.assert_allclose(out.scores[0, k], lp / float(method.penalty(n)), rtol=1e-5)
  assert len(seqs) == 4
  assert np.all(np.diff(np.asarray(out.scores[0])) <= 0)


def test_sampling_limits_are_greedy():
  decoder, variables, _ = _toy(seed=4)
  prompts = np.array([[0, 1], [2, 3], [4, 4]], np.int32)
  greedy = gen.generate(decoder, variables, prompts, max_new_tokens=6, eos_id=2)
  for method in (gen.Sampling(temperature=1e-4), gen.Sampling(top_k=1),
                 gen.Sampling(top_p=1e-6), gen.Sampling(temperature=3.0, top_k=1)):
    out = gen.generate(decoder, variables, prompts, max_new_tokens=6, eos_id=2,
                       method=method, rng=jax.random.key(1))
    np.testing.assert_array_equal(out.tokens, greedy.tokens, err_msg=str(method))
    np.testing.assert_allclose(out.log_probs, greedy.log_probs, rtol=1e-6)


def test_seeded_sampling_is_reproducible_and_seeds_differ():
  decoder, variables, _ = _toy(seed=4, scale=0.5)
  prompts = np.zeros((8, 1), np.int32)
  method = gen.Sampling(temperature=1.0)
  a = gen.generate(decoder, variables, prompts, max_new_tokens=8, method=method,
                   rng=jax.random.key(3))
  b = gen.generate(decoder, variables, prompts, max_new_tokens=8, method=method,
                   rng=jax.random.key(3))
  c = gen.generate(decoder, variables, prompts, max_new_tokens=8, method=method,
                   rng=jax.random.key(4))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def _warp_reference(logits, temperature, top_k, top_p):
  x = logits.astype(np.float64) / temperature
  keep = np.ones_like(x, bool)
  if top_k is not None:
    kth = np.sort(x)[::-1][min(top_k, len(x)) - 1]
    keep &= x >= kth
  if top_p is not None:
    order = np.argsort(-np.where(keep, x, -np.inf), kind='stable')
    p = np.exp(np.where(keep, x, -np.inf) - x[keep].max())
    p = p / p.sum()
    mass = 0.0
    nucleus = np.zeros_like(keep)
    for i in order:
      if mass >= top_p:
        break
      nucleus[i] = True
      mass += p[i]
    keep &= nucleus
  return np.where(keep, x, -np.inf)


@pytest.mark.parametrize('temperature,top_k,top_p', [
    (1.0, None, None), (0.7, 3, None), (1.3, None, 0.6), (1.0, 5, 0.9), (2.0, 2, 0.999),
    (1.0, 50, None)])
def test_warp_logits_matches_numpy(temperature, top_k, top_p):
  logits = np.random.default_rng(0).normal(size=(4, 12)).astype(np.float32) * 2
  got = np.asarray(gen.warp_logits(jnp.asarray(logits),
                                   gen.Sampling(temperature, top_k, top_p)))
  for row, want in zip(got, logits):
    np.testing.assert_allclose(row, _warp_reference(want, temperature, top_k, top_p),
                               rtol=1e-5)


def test_sampled_first_tokens_follow_the_warped_distribution():
  decoder, variables, logits_np = _toy(vocab=5, seed=9, scale=1.0)
  n = 4000
  prompts = np.full((n, 1), 2, np.int32)
  method = gen.Sampling(temperature=0.8, top_p=0.9)
  out = gen.generate(decoder, variables, prompts, max_new_tokens=1, method=method,
                     rng=jax.random.key(0))
  warped = _warp_reference(logits_np([2])[-1], 0.8, None, 0.9)
  want = np.exp(warped - warped.max())
  want /= want.sum()
  counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=5) / n
  assert np.all(counts[want == 0] == 0)
  # Four standard errors of a binomial frequency.
  np.testing.assert_array_less(np.abs(counts - want), 4 * np.sqrt(want * (1 - want) / n) + 1e-9)


def test_sharded_generation_equals_one_device():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  decoder, variables, _ = _toy(vocab=6, seed=1)
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ('data', 'model'))
  prompts = np.random.default_rng(0).integers(0, 6, size=(8, 3)).astype(np.int32)
  lengths = np.array([3, 1, 2, 3, 2, 1, 3, 3], np.int32)
  var_sh = {'table': NamedSharding(mesh, P(None, None, 'model')),
            'bias': NamedSharding(mesh, P(None, 'model'))}
  for method in (gen.Greedy(), gen.BeamSearch(width=3), gen.Sampling(top_k=3)):
    one = gen.make_generate(decoder, max_new_tokens=5, method=method, eos_id=1)
    many = gen.make_generate(decoder, max_new_tokens=5, method=method, eos_id=1, mesh=mesh,
                             variables_shardings=var_sh,
                             batch_sharding=NamedSharding(mesh, P('data')))
    a = one(variables, prompts, lengths, rng=jax.random.key(2))
    b = many(jax.device_put(variables, var_sh), prompts, lengths, rng=jax.random.key(2))
    np.testing.assert_array_equal(a.tokens, b.tokens, err_msg=str(method))
    np.testing.assert_allclose(a.log_probs, b.log_probs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kwargs,match', [
    (dict(max_new_tokens=0), 'max_new_tokens must be a positive int, got 0'),
    (dict(max_new_tokens=-3), 'max_new_tokens must be a positive int, got -3'),
    (dict(max_new_tokens=2, eos_id=9), r'eos_id must be a token id in \[0, vocab_size=5\)'),
    (dict(max_new_tokens=2, pad_id=-1), 'pad_id must be a token id'),
])
def test_bad_options(kwargs, match):
  decoder, _, _ = _toy()
  with pytest.raises(ValueError, match=match):
    gen.make_generate(decoder, **kwargs)


@pytest.mark.parametrize('make,match', [
    (lambda: gen.BeamSearch(width=0), 'BeamSearch.width must be a positive int, got 0'),
    (lambda: gen.BeamSearch(width=-2), 'BeamSearch.width must be a positive int, got -2'),
    (lambda: gen.BeamSearch(width=2, length_penalty='x'), 'length_penalty must be one of'),
    (lambda: gen.Sampling(top_p=0.0), r'top_p must be in \(0, 1\] or None, got 0.0'),
    (lambda: gen.Sampling(top_p=1.5), r'top_p must be in \(0, 1\] or None, got 1.5'),
    (lambda: gen.Sampling(temperature=0.0), 'temperature must be a finite number > 0'),
    (lambda: gen.Sampling(top_k=0), 'top_k must be a positive int'),
])
def test_bad_methods(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_bad_prompts():
  decoder, variables, _ = _toy(max_length=16)
  fn = gen.make_generate(decoder, max_new_tokens=4)
  with pytest.raises(ValueError, match=r"prompt_len=20, longer than the model's max_length=16"):
    fn(variables, np.zeros((2, 20), np.int32))
  with pytest.raises(ValueError, match=r'plus max_new_tokens=4 needs 18 positions'):
    fn(variables, np.zeros((2, 14), np.int32))
  with pytest.raises(TypeError, match=r'prompts must have an integer dtype, got float32'):
    fn(variables, np.zeros((2, 3), np.float32))
  with pytest.raises(ValueError, match=r'prompts must be \[batch, prompt_len\]'):
    fn(variables, np.zeros((3,), np.int32))
  with pytest.raises(ValueError, match=r'prompt_lengths must be in \[1, prompt_len=3\]'):
    fn(variables, np.zeros((2, 3), np.int32), np.array([0, 3], np.int32))
  with pytest.raises(ValueError, match=r'prompt_lengths must have shape \(2,\)'):
    fn(variables, np.zeros((2, 3), np.int32), np.array([1, 2, 3], np.int32))
  sample = gen.make_generate(decoder, max_new_tokens=2, method=gen.Sampling())
  with pytest.raises(ValueError, match='Sampling needs rng'):
    sample(variables, np.zeros((2, 3), np.int32))


def _exact_prefix_probs(logits_np, prompt, steps, vocab):
  """The target's probability of every `steps`-token continuation (no EOS)."""
  probs = {}
  for seq in itertools.product(range(vocab), repeat=steps):
    probs[seq] = np.exp(_seq_log_prob(logits_np, prompt, seq))
  return probs


def test_speculative_greedy_is_target_greedy():
  target, t_vars, _ = _toy(vocab=6, seed=1, max_length=24)
  draft, d_vars, _ = _toy(vocab=6, seed=2, max_length=24)
  prompts = np.array([[0, 1, 2], [3, 0, 0], [5, 4, 0]], np.int32)
  lengths = np.array([3, 1, 2], np.int32)
  want = gen.generate(target, t_vars, prompts, lengths, max_new_tokens=9, eos_id=4)
  for gamma in (1, 3, 5):
    spec = gen.make_speculative_generate(target, draft, max_new_tokens=9, draft_tokens=gamma,
                                         eos_id=4)
    got = spec(t_vars, d_vars, prompts, lengths)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_allclose(got.log_probs, want.log_probs, rtol=1e-5, atol=1e-6)
    assert np.all(got.accepted <= got.proposed)
  # A draft that is the target has every proposal accepted.
  same = gen.make_speculative_generate(target, target, max_new_tokens=9, draft_tokens=3)
  out = same(t_vars, t_vars, prompts, lengths)
  np.testing.assert_array_equal(out.accepted, out.proposed)
  np.testing.assert_array_equal(out.rounds, 3)  # 9 tokens, 4 per round


@pytest.mark.parametrize('method', [gen.Sampling(), gen.Sampling(temperature=0.7, top_k=2)])
def test_speculative_samples_have_the_target_distribution(method):
  vocab, steps, n = 3, 3, 6000
  target, t_vars, t_np = _toy(vocab=vocab, seed=21, scale=1.0)
  draft, d_vars, _ = _toy(vocab=vocab, seed=22, scale=1.5)
  prompts = np.full((n, 1), 1, np.int32)
  spec = gen.make_speculative_generate(target, draft, max_new_tokens=steps, draft_tokens=2,
                                       method=method)
  out = spec(t_vars, d_vars, prompts, rng=jax.random.key(5))
  if method.temperature == 1.0 and method.top_k is None:
    want = _exact_prefix_probs(t_np, [1], steps, vocab)
  else:
    # Reference: the target sampled directly with the same method.
    ref = gen.generate(target, t_vars, prompts, max_new_tokens=steps, method=method,
                       rng=jax.random.key(6))
    seqs = [tuple(s) for s in np.asarray(ref.tokens)]
    want = {s: seqs.count(s) / n for s in set(seqs)}
  got_seqs = [tuple(s) for s in np.asarray(out.tokens)]
  got = {s: got_seqs.count(s) / n for s in set(got_seqs)}
  # The draft disagrees often enough to exercise the rejection path.
  rate = out.accepted.sum() / out.proposed.sum()
  assert 0.2 < rate < 0.95, rate
  scale = 2.0 if len(want) and method.top_k else 1.0
  for seq in set(got) | set(want):
    p = want.get(seq, 0.0)
    se = np.sqrt(max(p * (1 - p), 1.0 / n) / n) * scale
    assert abs(got.get(seq, 0.0) - p) < 5 * se, (seq, got.get(seq, 0.0), p)


def test_speculative_bad_input():
  target, t_vars, _ = _toy(vocab=6, max_length=12)
  other, _, _ = _toy(vocab=5)
  with pytest.raises(ValueError, match='share a vocabulary, got vocab_size=6 and 5'):
    gen.make_speculative_generate(target, other, max_new_tokens=3)
  with pytest.raises(ValueError, match='draft_tokens must be a positive int, got 0'):
    gen.make_speculative_generate(target, target, max_new_tokens=3, draft_tokens=0)
  spec = gen.make_speculative_generate(target, target, max_new_tokens=6, draft_tokens=4)
  with pytest.raises(ValueError, match=r'max_new_tokens=6 \+ draft_tokens=4 - 1 needs 13'):
    spec(t_vars, t_vars, np.zeros((2, 4), np.int32))


def _tiny_lm(**kwargs):
  from flax import linen as nn
  from kdjax import zoo
  cfg = zoo.DecoderConfig(vocab_size=11, num_layers=2, hidden=16, num_heads=2, mlp_dim=32,
                          max_len=20, **kwargs)
  model = zoo.DecoderLM(cfg)
  variables = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
  return model, variables


@pytest.mark.parametrize('method', [gen.Greedy(), gen.BeamSearch(width=3),
                                    gen.Sampling(temperature=0.9, top_p=0.9)])
def test_decoder_lm_cached_generation_equals_recomputation(method):
  from kdjax import zoo
  model, variables = _tiny_lm(positions='learned', mlp='swiglu')
  prompts = np.array([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0], [8, 0, 0, 0, 0]], np.int32)
  lengths = np.array([5, 2, 1], np.int32)
  outs = [gen.generate(zoo.lm_decoder(model, use_cache=c), variables, prompts, lengths,
                       max_new_tokens=9, eos_id=3, method=method, rng=jax.random.key(0))
          for c in (True, False)]
  np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
  np.testing.assert_array_equal(outs[0].lengths, outs[1].lengths)
  np.testing.assert_allclose(outs[0].log_probs, outs[1].log_probs, rtol=1e-5, atol=1e-5)


def test_decoder_lm_greedy_equals_argmax_of_the_full_forward():
  from kdjax import zoo
  model, variables = _tiny_lm()
  prompt = np.array([[4, 9, 2]], np.int32)
  out = gen.generate(zoo.lm_decoder(model), variables, prompt, max_new_tokens=6)
  # The full forward of the sequence so far, right-padded to one length: the
  # model is causal, so the logits at its last real position ignore the pad
  # (one compiled forward instead of six op-by-op ones).
  forward = jax.jit(model.apply)
  seq = list(prompt[0])
  for t in range(6):
    padded = np.zeros((1, 3 + 6), np.int32)
    padded[0, :len(seq)] = seq
    logits = forward(variables, padded)[0, len(seq) - 1]
    lp = jax.nn.log_softmax(logits)
    seq.append(int(jnp.argmax(logits)))
    np.testing.assert_allclose(out.log_probs[0, t], lp[seq[-1]], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out.tokens[0], seq[3:])


def test_seq2seq_beam_search_with_sources():
  from flax import linen as nn
  from kdjax import zoo
  cfg = zoo.Seq2SeqConfig(source_vocab_size=13, target_vocab_size=9, encoder_layers=1,
                          decoder_layers=2, hidden=16, num_heads=2, mlp_dim=32,
                          max_source_len=8, max_target_len=10)
  model = zoo.Seq2SeqTransformer(cfg)
  rng = np.random.default_rng(0)
  source = rng.integers(1, 13, size=(3, 8)).astype(np.int32)
  mask = np.arange(8)[None] < np.array([[8], [5], [2]])
  variables = nn.meta.unbox(model.init(jax.random.key(1), source, mask, np.zeros((3, 4),
                                                                                  np.int32)))
  fn = gen.make_generate(zoo.seq2seq_decoder(model), max_new_tokens=8, eos_id=2,
                         method=gen.BeamSearch(width=4))
  bos = np.ones((3, 1), np.int32)
  out = fn(variables, bos, inputs={'source': source, 'source_mask': mask})
  # Each hypothesis' log-probability is the teacher-forced model's: all 12
  # in one pass, BOS + the hypothesis (padded after its end, which a causal
  # decoder cannot see from the positions scored), summed over its length.
  tokens = np.asarray(out.tokens).reshape(12, 8)
  lengths = np.asarray(out.lengths).reshape(12)
  target_in = np.concatenate([np.ones((12, 1), np.int32), tokens[:, :-1]], axis=1)
  logits = jax.jit(model.apply)(variables, np.repeat(source, 4, axis=0),
                                np.repeat(mask, 4, axis=0), target_in)
  lp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, axis=-1)),
                          tokens[:, :, None], axis=-1)[..., 0]
  want = np.where(np.arange(8)[None] < lengths[:, None], lp, 0.0).sum(axis=1)
  np.testing.assert_allclose(np.asarray(out.log_probs).reshape(12, 8).sum(axis=1), want,
                             rtol=1e-4, atol=1e-5)
  # Another batch of sources of the same shape: no recompilation; a row alone
  # gives the same hypotheses as in the batch.
  fn(variables, bos, inputs={'source': source[::-1].copy(), 'source_mask': mask[::-1].copy()})
  assert fn.jitted._cache_size() == 1
  alone = gen.generate(zoo.seq2seq_decoder(model), variables, bos[:1], max_new_tokens=8,
                       eos_id=2, method=gen.BeamSearch(width=4),
                       inputs={'source': source[1:2], 'source_mask': mask[1:2]})
  np.testing.assert_array_equal(alone.tokens[0], out.tokens[1])


@pytest.mark.parametrize('rules', [
    # tensor parallel teacher, data-parallel batch
    (('batch', 'data'), ('heads', 'model'), ('mlp', 'model'), ('vocab', 'model'),
     ('embed', None), ('kv', None), ('length', None)),
    # FSDP: parameters sharded over the embedding axis
    (('batch', 'data'), ('embed', 'model'), ('heads', None), ('mlp', None), ('vocab', None),
     ('kv', None), ('length', None)),
])
def test_decoder_lm_sharded_generation_equals_one_device(rules):
  from flax import linen as nn
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from kdjax import parallel, zoo
  cfg = zoo.DecoderConfig(vocab_size=16, num_layers=2, hidden=16, num_heads=2, mlp_dim=32,
                          max_len=20, mlp='swiglu')
  model = zoo.DecoderLM(cfg)
  boxed = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  variables = nn.meta.unbox(boxed)
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ('data', 'model'))
  shardings = parallel.param_shardings(boxed, list(rules), mesh)
  prompts = np.random.default_rng(1).integers(0, 16, size=(8, 4)).astype(np.int32)
  lengths = np.array([4, 1, 2, 4, 3, 1, 4, 2], np.int32)
  for method in (gen.Greedy(), gen.BeamSearch(width=2)):
    one = gen.make_generate(zoo.lm_decoder(model), max_new_tokens=6, eos_id=3, method=method)
    many = gen.make_generate(zoo.lm_decoder(model), max_new_tokens=6, eos_id=3, method=method,
                             mesh=mesh, variables_shardings=shardings,
                             batch_sharding=NamedSharding(mesh, P('data')),
                             logical_axis_rules=rules)
    a = one(variables, prompts, lengths)
    b = many(jax.device_put(variables, shardings), prompts, lengths)
    np.testing.assert_array_equal(a.tokens, b.tokens, err_msg=str(method))
    np.testing.assert_allclose(a.log_probs, b.log_probs, rtol=1e-4, atol=1e-5)
