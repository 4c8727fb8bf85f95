"""On-policy distillation of language models: the student's own samples, scored by the teacher.

Off-policy (teacher-forced) distillation trains the student on sequences it
did not produce, so at inference it meets prefixes of its own making that it
never saw in training (exposure bias). GKD (Agarwal et al. 2024) and MiniLLM
(Gu et al. 2024) train on continuations the student samples from the batch's
prompts instead, scored token by token by the teacher run teacher-forced on
them.

Here that is a pure function of the batch: :func:`make_on_policy_batch`
samples continuations with :mod:`kdjax.generate` and writes them into the
batch (tokens, labels and a mask of the generated tokens only), and
:func:`make_on_policy_train_step` is that sampler followed by the stock
:func:`kdjax.step.make_train_step` -- one program for one ``jax.jit``,
reading the student's current parameters from the state (no weight copy).
Any objective works on the rewritten batch: ``token_distill`` with any of
the token-level divergences (GKD), or
:func:`kdjax.objective.minillm_distill` (MiniLLM's policy gradient).

A batch is a decoder-only LM batch of fixed shape: ``tokens`` int
``[batch, time]`` (the inputs), ``labels`` int ``[batch, time]`` (the next
tokens: ``labels[:, t] == tokens[:, t + 1]``), ``mask`` ``[batch, time]``
(1 on the labels the loss counts) and ``prompt_lengths`` int ``[batch]``:
the first ``prompt_lengths[b]`` tokens of row ``b``'s sequence are its
prompt, the rest its reference continuation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import optax

from kdjax import _checks
from kdjax import losses
from kdjax import step as step_lib
from kdjax.adapters import Apply
from kdjax.generate import Decoder
from kdjax.generate import Greedy
from kdjax.generate import make_generate
from kdjax.generate import Sampling
from kdjax.objective import Objective
from kdjax.objective._core import check_schedule
from kdjax.objective._core import schedule_value
from kdjax.objective._core import Schedule

Batch = Mapping[str, Any]
MIXINGS = ('per_sample', 'per_batch')
# Folded into the step's key for the sampler; the objective's own key uses
# another constant (kdjax.objective.objective_rng), dropout the step's key.
_SAMPLER_KEY = 0x5A3


def mixture_decoder(student: Decoder, teacher: Decoder, teacher_weight: float) -> Decoder:
  r"""A decoder of the mixture ``teacher_weight * p_teacher + (1 - teacher_weight) * q_student``.

  MiniLLM's teacher-mixed sampling (Gu et al. 2024, Eq. 5) draws each next
  token from :math:`\tilde p = \alpha p + (1 - \alpha) q_\theta`, which
  keeps early, poor students from sampling degenerate text. This decoder
  runs both models step by step, each with its own cache, and returns the
  mixture's log-probabilities as its logits, so any method of
  :mod:`kdjax.generate` samples from it (with ``Sampling(temperature=1)``,
  exactly :math:`\tilde p`). Its variables are the pair ``(student_variables,
  teacher_variables)``.

  Args:
    student: the student's decoder.
    teacher: the teacher's decoder, over the same vocabulary.
    teacher_weight: :math:`\alpha` in ``[0, 1]``.

  Returns:
    A :class:`~kdjax.generate.Decoder`.

  Raises:
    ValueError: for vocabularies of different sizes or a weight outside
      ``[0, 1]``.
  """
  if student.vocab_size != teacher.vocab_size:
    raise ValueError(
        f'mixture_decoder: the student decodes {student.vocab_size} tokens and the teacher '
        f'{teacher.vocab_size}; the mixture needs one vocabulary.')
  if not isinstance(teacher_weight, (int, float)) or not 0.0 <= teacher_weight <= 1.0:
    raise ValueError(f'teacher_weight must be a number in [0, 1], got {teacher_weight!r}.')
  log_weight = jnp.log(jnp.float32(teacher_weight))
  log_rest = jnp.log1p(-jnp.float32(teacher_weight))

  def init_cache(variables, inputs, batch_size, cache_length):
    student_variables, teacher_variables = variables
    return (student.init_cache(student_variables, inputs, batch_size, cache_length),
            teacher.init_cache(teacher_variables, inputs, batch_size, cache_length))

  def step(variables, tokens, positions, cache):
    student_variables, teacher_variables = variables
    student_logits, student_cache = student.step(student_variables, tokens, positions, cache[0])
    teacher_logits, teacher_cache = teacher.step(teacher_variables, tokens, positions, cache[1])
    logits = jnp.logaddexp(
        log_weight + jax.nn.log_softmax(teacher_logits.astype(jnp.float32)),
        log_rest + jax.nn.log_softmax(student_logits.astype(jnp.float32)))
    return logits, (student_cache, teacher_cache)

  return Decoder(init_cache=init_cache, step=step, vocab_size=student.vocab_size,
                 max_length=min(student.max_length, teacher.max_length))


def _check_batch(batch: Batch, keys: Sequence[str], prompt_width: int) -> None:
  for key in keys:
    if key not in batch:
      raise KeyError(f'the on-policy batch needs {key!r}; it has {sorted(batch)}.')
  tokens_key, labels_key, mask_key, lengths_key = keys
  shape = tuple(jnp.shape(batch[tokens_key]))
  if len(shape) != 2:
    raise ValueError(f'batch[{tokens_key!r}] must be [batch, time], got shape {shape}.')
  for key in (labels_key, mask_key):
    if tuple(jnp.shape(batch[key])) != shape:
      raise ValueError(
          f'batch[{key!r}] must have the shape {shape} of batch[{tokens_key!r}], got '
          f'{tuple(jnp.shape(batch[key]))}.')
  if tuple(jnp.shape(batch[lengths_key])) != shape[:1]:
    raise ValueError(
        f'batch[{lengths_key!r}] must be [batch] = {shape[:1]}, got '
        f'{tuple(jnp.shape(batch[lengths_key]))}.')
  _checks.check_integer(f'batch[{tokens_key!r}]', batch[tokens_key])
  _checks.check_integer(f'batch[{lengths_key!r}]', batch[lengths_key])
  if prompt_width > shape[1]:
    raise ValueError(
        f'prompt_width={prompt_width} exceeds the batch\'s time axis {shape[1]}.')
  if _checks.is_concrete(batch[lengths_key]):
    lengths = jax.device_get(batch[lengths_key])
    if lengths.size and (lengths.min() < 1 or lengths.max() > prompt_width):
      raise ValueError(
          f'batch[{lengths_key!r}] must be in [1, prompt_width={prompt_width}], got values '
          f'in [{lengths.min()}, {lengths.max()}].')


def _splice(tokens, labels, prompt_lengths, generated, generated_lengths, pad_id):
  """Rows of ``prompt + generated + padding`` as (tokens, labels, mask).

  The full sequence of row ``b`` is ``s = [tokens[b, 0], labels[b]]``
  (``time + 1`` tokens); its first ``P = prompt_lengths[b]`` stay and the
  ``n = generated_lengths[b]`` new tokens follow; the mask is 1 on exactly
  the labels that are generated tokens, positions ``P - 1 .. P + n - 2``.
  """
  time = tokens.shape[1]
  sequence = jnp.concatenate([tokens[:, :1], labels], axis=1)  # [B, time + 1]
  position = jnp.arange(time + 1)[None, :]
  start = prompt_lengths[:, None]
  offset = jnp.clip(position - start, 0, generated.shape[1] - 1)
  new = jnp.take_along_axis(generated, offset, axis=1)
  in_prompt = position < start
  in_generated = (position >= start) & (position < start + generated_lengths[:, None])
  sequence = jnp.where(in_prompt, sequence, jnp.where(in_generated, new, pad_id))
  mask = in_generated[:, 1:]
  return sequence[:, :-1], sequence[:, 1:], mask


def make_on_policy_batch(
    decoder: Decoder,
    *,
    method: Greedy | Sampling,
    prompt_width: int,
    max_new_tokens: int | None = None,
    fraction: Schedule = 1.0,
    mixing: str = 'per_sample',
    eos_id: int | None = None,
    pad_id: int = 0,
    keys: tuple[str, str, str, str] = ('tokens', 'labels', 'mask', 'prompt_lengths'),
) -> Callable[..., dict[str, Any]]:
  """A pure ``fn(variables, batch, rng, step) -> batch`` that puts student samples in the batch.

  A fraction `fraction` (GKD's lambda, a schedule of the step) of the rows
  become on-policy: the student (`decoder` with `variables`, cut from the
  gradient) continues each row's prompt -- its first ``prompt_lengths[b]``
  tokens, read from the first `prompt_width` tokens -- with `method`, and
  the row becomes ``prompt + continuation + padding`` with ``mask`` 1 on
  exactly the generated tokens (the EOS included, nothing after it, nothing
  of the prompt). The other rows are left as they are, reference
  continuation and mask included, so at ``fraction = 0`` the batch is
  unchanged and the train step is exactly the off-policy one. The batch
  also gains ``'on_policy'`` (int32 ``[batch]``, 1 for rewritten rows).

  The continuations are generated only when some row needs one (``lax.cond``
  on the coins), so a ``per_batch`` off-policy step costs no decoding.

  Args:
    decoder: the model to sample from, normally the student's
      (:func:`kdjax.zoo.lm_decoder`); :func:`mixture_decoder` for MiniLLM's
      teacher-mixed sampling (then `variables` is ``(student, teacher)``).
    method: ``Sampling(temperature=...)`` (the *sampling* temperature,
      independent of any loss temperature) or ``Greedy()``. Required: the
      sampling temperature is always a choice the caller writes down.
    prompt_width: the static width of the prompts, at least the largest
      ``prompt_lengths``; the decoding cache holds ``prompt_width +
      max_new_tokens`` positions.
    max_new_tokens: continuation budget; default all that fits in the
      batch's rows and the decoder's ``max_length``: ``min(time + 1,
      max_length) - prompt_width``. More than fits in a row is an error.
    fraction: the share of on-policy rows in ``[0, 1]``, a float or a
      schedule ``fn(step)``: traced, so changing it never recompiles.
    mixing: ``'per_sample'`` draws one coin per row (each row is on-policy
      with probability `fraction`); ``'per_batch'`` one coin for the whole
      batch, as TRL's ``GKDTrainer`` does with its ``lmbda``.
    eos_id: the token that ends a continuation (kept, masked 1); None to
      always generate `max_new_tokens`.
    pad_id: what fills the rows after a continuation.
    keys: the batch keys of the tokens, labels, mask and prompt lengths.

  Returns:
    ``fn(variables, batch, rng, step) -> batch``, traceable inside a step.
  """
  if not isinstance(method, (Greedy, Sampling)):
    raise TypeError(
        f'method must be kdjax.generate.Sampling(...) or Greedy(), got {method!r} '
        '(beam search is not a sample of the student\'s distribution).')
  _checks.check_positive_int('prompt_width', prompt_width)
  if max_new_tokens is not None:
    _checks.check_positive_int('max_new_tokens', max_new_tokens)
  if mixing not in MIXINGS:
    raise ValueError(f'mixing must be one of {MIXINGS}, got {mixing!r}.')
  check_schedule('fraction', fraction, positive=False)
  if not callable(fraction) and not 0.0 <= float(fraction) <= 1.0:
    raise ValueError(f'fraction must be in [0, 1], got {fraction!r}.')
  tokens_key, labels_key, mask_key, lengths_key = keys

  def sample_batch(variables, batch, rng, step):
    _check_batch(batch, keys, prompt_width)
    tokens = jnp.asarray(batch[tokens_key], jnp.int32)
    labels = jnp.asarray(batch[labels_key], jnp.int32)
    prompt_lengths = jnp.asarray(batch[lengths_key], jnp.int32)
    rows, time = tokens.shape
    room = min(time + 1, decoder.max_length)
    new_tokens = room - prompt_width if max_new_tokens is None else max_new_tokens
    if new_tokens < 1 or prompt_width + new_tokens > time + 1:
      raise ValueError(
          f'prompt_width={prompt_width} + max_new_tokens={new_tokens} must fit in the '
          f'{time + 1} tokens of a row (time={time} inputs + 1) and leave at least one '
          'new token.')
    generate = make_generate(decoder, max_new_tokens=new_tokens, method=method,
                             eos_id=eos_id, pad_id=pad_id)
    coin_key, sample_key = jax.random.split(rng)
    share = schedule_value(fraction, step)
    if mixing == 'per_sample':
      on_policy = jax.random.uniform(coin_key, (rows,)) < share
    else:
      on_policy = jnp.broadcast_to(jax.random.uniform(coin_key, ()) < share, (rows,))

    def rewrite(_):
      result = generate(jax.lax.stop_gradient(variables), tokens[:, :prompt_width],
                        prompt_lengths, rng=sample_key)
      return _splice(tokens, labels, prompt_lengths, result.tokens, result.lengths, pad_id)

    def keep(_):
      return tokens, labels, jnp.zeros(tokens.shape, bool)

    new_t, new_l, new_mask = lax.cond(jnp.any(on_policy), rewrite, keep, None)
    chosen = on_policy[:, None]
    mask = batch[mask_key]
    return {
        **batch,
        tokens_key: jnp.where(chosen, new_t, tokens).astype(jnp.asarray(batch[tokens_key]).dtype),
        labels_key: jnp.where(chosen, new_l, labels).astype(jnp.asarray(batch[labels_key]).dtype),
        mask_key: jnp.where(chosen, new_mask, mask).astype(jnp.asarray(mask).dtype),
        'on_policy': on_policy.astype(jnp.int32),
    }

  return sample_batch


def sampler_key(state: step_lib.TrainState, axis_name: str | None = None) -> jax.Array:
  """The sampler's key at this step: ``fold_in(fold_in(rng, step), constant)``.

  Under pmap (`axis_name`) it is folded with the device index first, so the
  devices draw different samples for their different rows.
  """
  return jax.random.fold_in(step_lib.step_key(state, axis_name), _SAMPLER_KEY)


def make_on_policy_train_step(
    student_apply: Apply,
    teacher_apply: Apply,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    *,
    sampler: Callable[..., dict[str, Any]],
    teacher_decoder: bool = False,
    **step_kwargs,
) -> Callable[[step_lib.TrainState, Any, Batch], tuple[step_lib.TrainState, Any]]:
  """``step(state, teacher_variables, batch)``: sample on-policy rows, then the stock train step.

  The step calls ``sampler(variables, batch, sampler_key(state),
  state.step)`` with the student's current variables (``state.variables``,
  or ``(state.variables, teacher_variables)`` with ``teacher_decoder=True``
  for a :func:`mixture_decoder`), then
  :func:`kdjax.step.make_train_step`'s step on the rewritten batch: the
  teacher scores the sampled rows teacher-forced and the objective sees
  their mask. The sampling is outside the differentiated function and
  yields integers, so no gradient flows through it. Jit it once; the
  on-policy fraction is a traced schedule.

  Args:
    student_apply: the student's ``apply``.
    teacher_apply: the teacher's ``apply``.
    objective: e.g. ``Objective({'kd': token_distill('jsd', beta=0.5,
      temperature=1.0)})`` (GKD) or ``Objective({'kd': minillm_distill()})``.
    optimizer: an optax transformation.
    sampler: :func:`make_on_policy_batch`'s function.
    teacher_decoder: whether the sampler's decoder also takes the teacher's
      variables (teacher-mixed sampling).
    **step_kwargs: passed to :func:`kdjax.step.make_train_step`
      (``rng_streams``, ``grad_norm``, ``axis_name``, ...).

  Returns:
    ``step(state, teacher_variables, batch) -> (state, metrics)``.
  """
  train_step = step_lib.make_train_step(
      student_apply, teacher_apply, objective, optimizer, **step_kwargs)
  axis_name = step_kwargs.get('axis_name')

  def step(state, teacher_variables, batch):
    variables = state.variables
    if teacher_decoder:
      variables = (variables, teacher_variables)
    batch = sampler(variables, batch, sampler_key(state, axis_name), state.step)
    return train_step(state, teacher_variables, batch)

  return step


def make_continuation_scorer(
    sampler: Callable[..., dict[str, Any]],
    teacher_apply: Apply,
    *,
    teacher_decoder: bool = False,
) -> Callable[..., dict[str, jax.Array]]:
  """``fn(variables, teacher_variables, batch, rng) -> scores``: the teacher's NLL of samples.

  The generation-based evaluation of on-policy distillation (GKD, Sec. 4;
  MiniLLM scores with the teacher too): the model continues each held-out
  prompt with `sampler` (:func:`make_on_policy_batch`, normally with
  ``fraction=1``), and the teacher, teacher-forced on prompt +
  continuation, scores every generated token. Lower is better: the
  continuations are likelier under the teacher.

  Args:
    sampler: the batch rewriter that generates (its ``fraction`` should be
      1, so every row is a continuation).
    teacher_apply: the teacher's ``apply`` (logits).
    teacher_decoder: the sampler's decoder also takes the teacher's
      variables (a :func:`mixture_decoder`).

  Returns:
    A pure function (jit it) returning ``'teacher_nll'`` float32 ``[batch]``
    (nats summed over each row's generated tokens), ``'lengths'`` int32
    ``[batch]`` (generated tokens, EOS included), ``'tokens'`` (the rewritten
    ``[batch, time]`` inputs) and ``'mask'`` (1 on the generated labels).
  """

  def score(variables, teacher_variables, batch, rng):
    model_variables = (variables, teacher_variables) if teacher_decoder else variables
    rewritten = sampler(model_variables, batch, rng, jnp.zeros((), jnp.int32))
    outputs, _ = teacher_apply(teacher_variables, rewritten, train=False)
    nll = losses.cross_entropy(outputs.logits, rewritten['labels'])
    mask = jnp.asarray(rewritten['mask'], jnp.float32)
    return {
        'teacher_nll': jnp.sum(jnp.where(mask > 0, nll, 0.0), axis=-1),
        'lengths': jnp.sum(mask, axis=-1).astype(jnp.int32),
        'tokens': rewritten['tokens'],
        'mask': mask,
    }

  return score


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
  """Distinct-n: unique n-grams over all n-grams of a set of generations.

  Li, Galley, Brockett, Gao and Dolan, "A Diversity-Promoting Objective
  Function for Neural Conversation Models", NAACL 2016,
  https://arxiv.org/abs/1510.03055. 1 when no n-gram repeats, small for
  repetitive or mode-collapsed samples; 0 when no sequence has ``n``
  tokens. Computed on the host.

  Args:
    sequences: token ids, one sequence per generation (their own lengths).
    n: the n-gram order, ``>= 1``.
  """
  _checks.check_positive_int('n', n)
  grams, total = set(), 0
  for sequence in sequences:
    sequence = [int(t) for t in sequence]
    for i in range(len(sequence) - n + 1):
      grams.add(tuple(sequence[i:i + n]))
      total += 1
  return len(grams) / total if total else 0.0
