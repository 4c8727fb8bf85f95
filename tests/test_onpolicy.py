"""On-policy distillation (GKD, MiniLLM): the sampler, the step and MiniLLM's estimator."""

import dataclasses
import itertools

import chex
from flax import linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from kdjax import generate
from kdjax import losses
from kdjax import metrics as metrics_lib
from kdjax import objective as objective_lib
from kdjax import onpolicy
from kdjax import parallel
from kdjax import step as step_lib
from kdjax import zoo
from multihost_worker import fixed_init

VOCAB, TIME, ROWS, PROMPT = 12, 8, 8, 4
EOS = 2
STUDENT = zoo.DecoderConfig(vocab_size=VOCAB, num_layers=1, hidden=16, num_heads=2,
                            mlp_dim=32, max_len=TIME + 1)
TEACHER = zoo.DecoderConfig(vocab_size=VOCAB, num_layers=1, hidden=24, num_heads=2,
                            mlp_dim=48, max_len=TIME + 1)
OPTIMIZER = optax.sgd(0.3)


def _variables(config, seed):
  return jax.jit(lambda: nn.meta.unbox(fixed_init(config, seed)()))()


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  sequence = rng.integers(3, VOCAB, (ROWS, TIME + 1), dtype=np.int32)
  prompt_lengths = rng.integers(1, PROMPT + 1, (ROWS,), dtype=np.int32)
  # The reference continuation's loss mask: labels after the prompt.
  mask = (np.arange(TIME)[None, :] >= prompt_lengths[:, None] - 1).astype(np.float32)
  return {'tokens': sequence[:, :-1], 'labels': sequence[:, 1:], 'mask': mask,
          'prompt_lengths': prompt_lengths}


def _objective():
  return objective_lib.Objective({
      'kd': objective_lib.token_distill('jsd', beta=0.5, temperature=2.0)})


def _sampler(fraction=1.0, mixing='per_sample', method=generate.Sampling(temperature=1.5)):
  return onpolicy.make_on_policy_batch(
      zoo.lm_decoder(zoo.DecoderLM(STUDENT)), method=method, prompt_width=PROMPT,
      fraction=fraction, mixing=mixing, eos_id=EOS, pad_id=0)


def _steps(sampler, traces=None):
  student_apply = zoo.lm_apply(zoo.DecoderLM(STUDENT))

  def counting(*args, **kwargs):
    if traces is not None:
      traces.append(1)
    return student_apply(*args, **kwargs)

  teacher_apply = zoo.lm_apply(zoo.DecoderLM(TEACHER))
  on_policy = onpolicy.make_on_policy_train_step(
      counting, teacher_apply, _objective(), OPTIMIZER, sampler=sampler)
  off_policy = step_lib.make_train_step(student_apply, teacher_apply, _objective(), OPTIMIZER)
  return on_policy, off_policy


@pytest.fixture(scope='module')
def models():
  student = _variables(STUDENT, 1.0)
  teacher = _variables(TEACHER, 2.0)
  return step_lib.init_train_state(student, OPTIMIZER, rng=3), teacher


def _metrics(metrics):
  return metrics_lib.compute(metrics)


@pytest.fixture(scope='module')
def half():
  """One compiled sampler and step at fraction 0.5 (and the off-policy step),
  shared by the tests: compiling is most of their time."""
  sampler = _sampler(fraction=0.5)
  traces = []
  on_policy, off_policy = _steps(sampler, traces)
  return {'sampler': jax.jit(sampler), 'raw_step': on_policy, 'step': jax.jit(on_policy),
          'off_policy': jax.jit(off_policy), 'traces': traces}


def test_splice_rows_by_hand():
  tokens = jnp.array([[5, 6, 7, 8], [5, 6, 7, 8]])
  labels = jnp.array([[6, 7, 8, 9], [6, 7, 8, 9]])
  generated = jnp.array([[10, 2, 0], [11, 11, 11]])
  new_tokens, new_labels, mask = onpolicy._splice(
      tokens, labels, jnp.array([2, 1]), generated, jnp.array([2, 3]), pad_id=0)
  # Row 0: sequence 5 6 | 10 2 | pad; row 1: 5 | 11 11 11 | pad.
  np.testing.assert_array_equal(new_tokens, [[5, 6, 10, 2], [5, 11, 11, 11]])
  np.testing.assert_array_equal(new_labels, [[6, 10, 2, 0], [11, 11, 11, 0]])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 0], [1, 1, 1, 0]])


def test_fraction_zero_is_the_off_policy_step(models):
  state, teacher = models
  on_policy, off_policy = _steps(_sampler(fraction=0.0))
  batch = _batch()
  got_state, got = jax.jit(on_policy)(state, teacher, batch)
  want_state, want = jax.jit(off_policy)(state, teacher, batch)
  chex.assert_trees_all_equal(got_state.params, want_state.params)
  assert _metrics(got) == _metrics(want)


def test_only_generated_tokens_enter_the_loss(models, half):
  """The rewritten rows hold the prompt and exactly the tokens generate() gives
  with the sampler's key, the others are untouched; the loss is the JSD over
  the generated tokens and the reference mask of the other rows."""
  state, teacher = models
  key = onpolicy.sampler_key(state)
  batch = _batch(1)
  sampled = half['sampler'](state.variables, batch, key, state.step)
  chosen = np.asarray(sampled['on_policy']) == 1
  assert 0 < chosen.sum() < ROWS  # a real mix of rows

  # The same draw, by hand: the sampler splits its key into (coins, samples).
  _, sample_key = jax.random.split(key)
  result = generate.make_generate(
      zoo.lm_decoder(zoo.DecoderLM(STUDENT)), max_new_tokens=TIME + 1 - PROMPT,
      method=generate.Sampling(temperature=1.5), eos_id=EOS, pad_id=0)(
          state.variables, batch['tokens'][:, :PROMPT], batch['prompt_lengths'],
          rng=sample_key)
  full = np.concatenate([batch['tokens'][:, :1], batch['labels']], axis=1)
  for b in range(ROWS):
    if not chosen[b]:
      for key_name in ('tokens', 'labels', 'mask'):
        np.testing.assert_array_equal(sampled[key_name][b], batch[key_name][b])
      continue
    p, n = int(batch['prompt_lengths'][b]), int(result.lengths[b])
    want = np.concatenate([full[b, :p], np.asarray(result.tokens[b, :n]),
                           np.zeros(TIME + 1 - p - n, np.int32)])
    np.testing.assert_array_equal(sampled['tokens'][b], want[:-1])
    np.testing.assert_array_equal(sampled['labels'][b], want[1:])
    want_mask = np.zeros(TIME)
    want_mask[p - 1:p - 1 + n] = 1
    np.testing.assert_array_equal(sampled['mask'][b], want_mask)
  assert (np.asarray(result.lengths)[chosen] < TIME + 1 - PROMPT).any()  # an EOS stopped one

  _, metrics = half['step'](state, teacher, batch)

  @jax.jit  # one compilation rather than every op eagerly
  def jsd(student, teacher, tokens):
    return losses.generalized_jsd(zoo.DecoderLM(STUDENT).apply(student, tokens),
                                  zoo.DecoderLM(TEACHER).apply(teacher, tokens),
                                  beta=0.5, temperature=2.0)

  values = np.asarray(jsd(state.variables, teacher, sampled['tokens']))
  mask = np.asarray(sampled['mask'])
  np.testing.assert_allclose(_metrics(metrics)['loss/kd'], (values * mask).sum() / mask.sum(),
                             rtol=1e-5)


def test_gradient_does_not_flow_through_sampling(models, half):
  """The on-policy step equals the off-policy step on the sampled batch held
  fixed: sampling contributes data, no gradient."""
  state, teacher = models
  batch = _batch(1)
  sampled = half['sampler'](state.variables, batch, onpolicy.sampler_key(state), state.step)
  got_state, got = half['step'](state, teacher, batch)
  want_state, want = half['off_policy'](state, teacher, sampled)
  chex.assert_trees_all_close(got_state.params, want_state.params, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(_metrics(got)['loss/kd'], _metrics(want)['loss/kd'], rtol=1e-6)


def test_one_compilation_across_steps(models, half):
  state, teacher = models
  before = len(half['traces'])
  for seed in range(3):
    state, _ = half['step'](state, teacher, _batch(seed))
  # Traced once in all, whichever test ran the step first.
  assert len(half['traces']) - before == (1 if before == 0 else 0)


def test_mixing_coins():
  state = step_lib.init_train_state(_variables(STUDENT, 1.0), OPTIMIZER)
  batch = _batch()
  per_batch = jax.jit(_sampler(fraction=0.5, mixing='per_batch', method=generate.Greedy()))
  per_sample = jax.jit(_sampler(fraction=0.5, method=generate.Greedy()))
  batch_flags, sample_flags = [], []
  for i in range(40):
    key = jax.random.PRNGKey(i)
    flags = np.asarray(per_batch(state.variables, batch, key, 0)['on_policy'])
    assert flags.min() == flags.max()  # one coin for the batch
    batch_flags.append(flags[0])
    sample_flags.append(np.asarray(per_sample(state.variables, batch, key, 0)['on_policy']))
  # Binomial(40, 0.5) and Binomial(320, 0.5): within about 3.5 standard deviations.
  assert 9 <= sum(batch_flags) <= 31
  assert 128 <= np.sum(sample_flags) <= 192
  assert 0 < np.mean([f.mean() for f in sample_flags]) < 1


def test_sharded_equals_one_device(models, half):
  state, teacher = models
  batch = _batch(2)
  want_state, want = half['step'](state, teacher, batch)
  mesh = parallel.make_mesh({'data': 8})
  replicated = NamedSharding(mesh, P())
  step = jax.jit(half['raw_step'],
                 in_shardings=(replicated, replicated, parallel.batch_sharding(mesh)))
  got_state, got = step(state, teacher, parallel.shard_batch(batch, mesh))
  chex.assert_trees_all_close(jax.device_get(got_state.params), want_state.params,
                              rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(_metrics(got)['loss/kd'], _metrics(want)['loss/kd'], rtol=1e-5)


def test_mixture_decoder_samples_the_mixture(models):
  state, teacher = models
  student_decoder = zoo.lm_decoder(zoo.DecoderLM(STUDENT))
  teacher_decoder = zoo.lm_decoder(zoo.DecoderLM(TEACHER))
  mixed = onpolicy.mixture_decoder(student_decoder, teacher_decoder, 0.25)
  prompts = _batch()['tokens'][:, :PROMPT]
  result = generate.make_generate(mixed, max_new_tokens=3, method=generate.Sampling())(
      (state.variables, teacher), prompts, rng=jax.random.PRNGKey(0))
  sequence = jnp.concatenate([prompts, result.tokens], axis=1)
  q, p = jax.jit(lambda s, t, x: (  # one compilation rather than every op eagerly
      jax.nn.softmax(zoo.DecoderLM(STUDENT).apply(s, x)),
      jax.nn.softmax(zoo.DecoderLM(TEACHER).apply(t, x))))(state.variables, teacher, sequence)
  mixture = np.log(0.25 * np.asarray(p) + 0.75 * np.asarray(q))
  want = np.take_along_axis(mixture[:, PROMPT - 1:-1], np.asarray(result.tokens)[..., None],
                            axis=-1)[..., 0]
  np.testing.assert_allclose(result.log_probs, want, rtol=1e-4, atol=1e-5)
  # teacher_weight 0 decodes the student alone.
  alone = onpolicy.mixture_decoder(student_decoder, teacher_decoder, 0.0)
  greedy = generate.make_generate(alone, max_new_tokens=3, method=generate.Greedy())(
      (state.variables, teacher), prompts)
  plain = generate.make_generate(student_decoder, max_new_tokens=3, method=generate.Greedy())(
      state.variables, prompts)
  np.testing.assert_array_equal(greedy.tokens, plain.tokens)


# ------------------------------------------------------------------ MiniLLM


def _tables(seed):
  """A tiny autoregressive 'model': logits for y1 (from a table) and for y2
  given y1 (a table per y1), from parameters `theta`."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(1 + 3, 3)), jnp.float32)


def _sequence_logits(theta, sequences):
  """``[N, 2, 3]`` logits of the two positions of each sequence ``(y1, y2)``."""
  first = jnp.broadcast_to(theta[0], (len(sequences), 3))
  second = theta[1 + sequences[:, 0]]
  return jnp.stack([first, second], axis=1)


@pytest.mark.parametrize('single_step', [True, False])
def test_minillm_gradient_is_the_sequence_reverse_kl_gradient(single_step):
  """Enumerating all 9 sequences: the q-weighted sum of the surrogate's
  gradients is exactly the gradient of KL(q || p) over whole sequences."""
  theta, teacher_theta = _tables(0), _tables(1)
  sequences = jnp.asarray(list(itertools.product(range(3), repeat=2)), jnp.int32)
  teacher_logits = _sequence_logits(teacher_theta, sequences)

  def sequence_log_prob(logits):
    log_probs = jax.nn.log_softmax(logits)
    return jnp.take_along_axis(log_probs, sequences[..., None], axis=-1)[..., 0].sum(-1)

  def exact_kl(theta):
    log_q = sequence_log_prob(_sequence_logits(theta, sequences))
    return jnp.sum(jnp.exp(log_q) * (log_q - sequence_log_prob(teacher_logits)))

  def surrogate(theta):
    logits = _sequence_logits(theta, sequences)
    weight = jax.lax.stop_gradient(jnp.exp(sequence_log_prob(logits)))
    values = losses.minillm_surrogate(logits, teacher_logits, sequences,
                                      single_step=single_step, length_normalize=False)
    return jnp.sum(weight * values.sum(-1))

  np.testing.assert_allclose(jax.grad(surrogate)(theta), jax.grad(exact_kl)(theta),
                             rtol=1e-5, atol=1e-6)


def test_minillm_values_weights_and_normalisation():
  rng = np.random.default_rng(0)
  student = rng.normal(size=(2, 4, 5)).astype(np.float32)
  teacher = rng.normal(size=(2, 4, 5)).astype(np.float32)
  tokens = rng.integers(0, 5, (2, 4))
  mask = np.array([[1, 1, 1, 0], [0, 1, 1, 1]], np.float32)
  alpha = 0.3
  values = losses.minillm_surrogate(student, teacher, tokens, token_mask=mask,
                                    teacher_mix=alpha)

  def log_softmax(x):
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  log_q, log_p = log_softmax(student), log_softmax(teacher)
  q_tok = np.take_along_axis(log_q, tokens[..., None], -1)[..., 0]
  p_tok = np.take_along_axis(log_p, tokens[..., None], -1)[..., 0]
  weight = np.exp(q_tok) / (alpha * np.exp(p_tok) + (1 - alpha) * np.exp(q_tok))
  reverse_kl = (np.exp(log_q) * (log_q - log_p)).sum(-1)
  np.testing.assert_allclose(values, weight * reverse_kl * mask, rtol=1e-5, atol=1e-6)

  # The gradient w.r.t. the token log-probs: -w_t * R_{t+1} / (future count).
  def total(student):
    return jnp.sum(losses.minillm_surrogate(student, teacher, tokens, token_mask=mask,
                                            teacher_mix=alpha))

  grad = np.asarray(jax.grad(total)(jnp.asarray(student)))
  reward = (p_tok - q_tok) * mask
  future = np.flip(np.cumsum(np.flip(reward, -1), -1), -1) - reward
  count = np.flip(np.cumsum(np.flip(mask, -1), -1), -1) - mask
  coefficient = -weight * future / np.maximum(count, 1) * mask
  q = np.exp(log_q)
  one_hot = np.eye(5)[tokens]
  score_grad = coefficient[..., None] * (one_hot - q)  # d log q(y) / d logits
  kl_grad = jax.grad(lambda s: jnp.sum(
      jnp.asarray(weight * mask) * jnp.sum(jax.nn.softmax(s) * (
          jax.nn.log_softmax(s) - log_p), -1)))(jnp.asarray(student))
  np.testing.assert_allclose(grad, score_grad + np.asarray(kl_grad), rtol=1e-4, atol=1e-6)
  assert np.all(grad[mask == 0] == 0)


def test_minillm_term_in_an_on_policy_step(models):
  state, teacher = models
  student_decoder = zoo.lm_decoder(zoo.DecoderLM(STUDENT))
  teacher_decoder = zoo.lm_decoder(zoo.DecoderLM(TEACHER))
  sampler = onpolicy.make_on_policy_batch(
      onpolicy.mixture_decoder(student_decoder, teacher_decoder, 0.2),
      method=generate.Sampling(temperature=1.0), prompt_width=PROMPT, eos_id=EOS)
  step = jax.jit(onpolicy.make_on_policy_train_step(
      zoo.lm_apply(zoo.DecoderLM(STUDENT)), zoo.lm_apply(zoo.DecoderLM(TEACHER)),
      objective_lib.Objective({'kd': objective_lib.minillm_distill(teacher_mix=0.2)}),
      OPTIMIZER, sampler=sampler, teacher_decoder=True))
  new_state, metrics = step(state, teacher, _batch())
  loss = _metrics(metrics)['loss/kd']
  assert np.isfinite(loss) and loss > 0
  assert int(new_state.step) == 1


def test_bad_input_is_named():
  decoder = zoo.lm_decoder(zoo.DecoderLM(STUDENT))
  with pytest.raises(TypeError, match='method'):
    onpolicy.make_on_policy_batch(decoder, method=generate.BeamSearch(width=2),
                                  prompt_width=PROMPT)
  with pytest.raises(ValueError, match='fraction'):
    onpolicy.make_on_policy_batch(decoder, method=generate.Greedy(), prompt_width=PROMPT,
                                  fraction=1.5)
  with pytest.raises(ValueError, match='mixing'):
    onpolicy.make_on_policy_batch(decoder, method=generate.Greedy(), prompt_width=PROMPT,
                                  mixing='per_token')
  sampler = onpolicy.make_on_policy_batch(decoder, method=generate.Greedy(),
                                          prompt_width=PROMPT)
  variables = _variables(STUDENT, 1.0)
  batch = _batch()
  with pytest.raises(KeyError, match='prompt_lengths'):
    sampler(variables, {k: v for k, v in batch.items() if k != 'prompt_lengths'},
            jax.random.PRNGKey(0), 0)
  with pytest.raises(ValueError, match=r"prompt_lengths.*\[1, prompt_width=4\]"):
    sampler(variables, {**batch, 'prompt_lengths': batch['prompt_lengths'] + 4},
            jax.random.PRNGKey(0), 0)
  with pytest.raises(ValueError, match=r"batch\['mask'\].*\(8, 8\)"):
    sampler(variables, {**batch, 'mask': batch['mask'][:, :3]}, jax.random.PRNGKey(0), 0)
  with pytest.raises(ValueError, match='vocabulary'):
    onpolicy.mixture_decoder(
        decoder, zoo.lm_decoder(zoo.DecoderLM(dataclasses.replace(TEACHER, vocab_size=13))), 0.1)
  with pytest.raises(ValueError, match='tokens must have the shape'):
    losses.minillm_surrogate(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)), jnp.zeros((2, 4), int))
  with pytest.raises(ValueError, match='teacher_mix'):
    losses.minillm_surrogate(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), int),
                             teacher_mix=1.5)


def test_continuation_scorer_and_distinct_n(models):
  state, teacher = models
  sampler = _sampler(fraction=1.0, method=generate.Greedy())
  score = jax.jit(onpolicy.make_continuation_scorer(sampler, zoo.lm_apply(zoo.DecoderLM(TEACHER))))
  batch = _batch(3)
  scores = score(state.variables, teacher, batch, jax.random.PRNGKey(0))
  # By hand: the teacher's log-probs of the generated labels.
  rewritten = sampler(state.variables, batch, jax.random.PRNGKey(0), 0)
  log_probs = np.asarray(jax.nn.log_softmax(zoo.DecoderLM(TEACHER).apply(teacher, rewritten['tokens'])))
  picked = np.take_along_axis(log_probs, np.asarray(rewritten['labels'])[..., None], -1)[..., 0]
  mask = np.asarray(rewritten['mask'])
  np.testing.assert_allclose(scores['teacher_nll'], -(picked * mask).sum(-1), rtol=1e-5)
  np.testing.assert_array_equal(scores['lengths'], mask.sum(-1))
  assert onpolicy.distinct_n([[1, 2, 3], [1, 2, 4]], 2) == 3 / 4
  assert onpolicy.distinct_n([[5, 5, 5, 5]], 1) == 1 / 4
  assert onpolicy.distinct_n([[1]], 2) == 0.0
