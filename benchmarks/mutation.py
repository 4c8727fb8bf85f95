"""Mutation testing of kdjax's core: do the tests catch wrong code?

Each mutant is one small, deliberate bug written as data: a file, a snippet
of its source that must occur exactly once, the snippet's replacement and a
sentence saying what the bug is (an operator, a constant, a mask, an axis, a
dropped ``stop_gradient``, a local count where a ``psum``'d one belongs, an
off-by-one schedule or data position). For each mutant the script writes the
mutated file into a private copy of the repository (the checkout itself is
never touched), runs only the test files that cover that module (``pytest
-x -q -m 'not slow' -p no:xdist``, with a timeout), and records whether the
tests failed (the mutant is *killed*, and by which test), passed (it
*survived*) or ran past the timeout. One mutant runs at a time.

The mutant list is checked first: every original snippet must occur exactly
once in its file, so that the list stays true as the code changes
(tests/test_mutation_kills.py runs that check in CI, without running
mutants).

Usage::

  python benchmarks/mutation.py --check              # validate the list only
  python benchmarks/mutation.py --list               # print the mutants
  nice -n 19 python benchmarks/mutation.py --log /tmp/mutation.jsonl
  python benchmarks/mutation.py --only objective-local-count,loop-same-shuffle
  python benchmarks/mutation.py --from-log /tmp/mutation.jsonl --write-docs

``--log`` appends one JSON line per mutant as it finishes; ``--from-log``
reads such lines back (the latest line of each mutant wins), so a long run
can be resumed (``--skip-done``) or survivors rerun after a new test.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _docs  # pylint: disable=wrong-import-position

DOCS = ROOT / 'docs' / 'reliability.md'
SECTION = '## Mutation testing'
GOAL = 0.95


@dataclasses.dataclass(frozen=True)
class Mutant:
  """One deliberate bug: `original` (occurring once in `path`) becomes `replacement`."""

  name: str
  path: str
  original: str
  replacement: str
  description: str
  # Tests (node ids) likeliest to fail, run before the module's files in TESTS.
  first: tuple[str, ...] = ()


# Module (path prefix, longest match wins) -> the test files that cover it,
# the likeliest killers first (pytest -x stops at the first failure);
# tests/test_mutation_kills.py is added last to every list.
TESTS: dict[str, tuple[str, ...]] = {
    'kdjax/objective/_core.py': (
        'tests/test_objective.py', 'tests/test_step.py',
        'tests/test_parallel.py', 'tests/test_stateful.py'),
    'kdjax/objective/_single.py': (
        'tests/test_objective.py', 'tests/test_feature_losses.py'),
    'kdjax/objective/_multi.py': ('tests/test_multi_teacher.py', 'tests/test_objective.py'),
    'kdjax/objective/_stateful.py': ('tests/test_stateful.py', 'tests/test_crd.py'),
    'kdjax/objective/_lm.py': (
        'tests/test_objective.py', 'tests/test_cross_tokenizer.py', 'tests/test_lm_kd.py'),
    'kdjax/losses/_logit.py': (
        'tests/test_losses.py', 'tests/test_properties.py'),
    'kdjax/losses/_common.py': ('tests/test_losses.py', 'tests/test_properties.py'),
    'kdjax/losses/_chunked.py': ('tests/test_chunked.py',),
    'kdjax/losses/_sequence.py': ('tests/test_sequence_losses.py', 'tests/test_properties.py'),
    'kdjax/losses/_topk.py': ('tests/test_cache.py', 'tests/test_properties.py'),
    'kdjax/metrics.py': ('tests/test_metrics.py', 'tests/test_objective.py'),
    'kdjax/step.py': (
        'tests/test_step.py', 'tests/test_stateful.py',
        'tests/test_parallel.py', 'tests/test_mutual.py'),
    'kdjax/parallel/': ('tests/test_parallel.py',),
    'kdjax/checkpoint.py': ('tests/test_checkpoint.py', 'tests/test_fault_tolerance.py'),
    'kdjax/loop.py': (
        'tests/test_loop.py', 'tests/test_fault_tolerance.py'),
    'kdjax/data/_pipeline.py': ('tests/test_data.py',),
    'kdjax/generate/': ('tests/test_generate.py',),
    'kdjax/cache/': ('tests/test_cache.py', 'tests/test_untrusted_files.py'),
}


KILLS = 'tests/test_mutation_kills.py'


def M(name, path, original, replacement, description, first=()) -> Mutant:  # pylint: disable=invalid-name
  return Mutant(name, path, original, replacement, description, tuple(first))


PMAP = ('tests/test_parallel.py::test_uneven_mask_needs_psum_of_sums',
        'tests/test_parallel.py::test_pmap_step_equals_one_device',
        'tests/test_parallel.py::test_per_device_metric_equals_global')
EMA = ('tests/test_stateful.py::test_ema_teacher_equals_a_hand_written_mean_teacher_loop',)
RESUME = ('tests/test_loop.py::test_fit_resumes_to_the_same_state',)


CORE = 'kdjax/objective/_core.py'
SINGLE = 'kdjax/objective/_single.py'
LOGIT = 'kdjax/losses/_logit.py'
STEP = 'kdjax/step.py'
LOOP = 'kdjax/loop.py'
CKPT = 'kdjax/checkpoint.py'
PIPE = 'kdjax/data/_pipeline.py'
GEN = 'kdjax/generate/_generate.py'
METHODS = 'kdjax/generate/_methods.py'

MUTANTS: tuple[Mutant, ...] = (
    # --- objective: the one reduction, masks, schedules.
    M('objective-local-count', CORE,
      'weight * term_sum / jnp.maximum(global_count, 1.0)',
      'weight * term_sum / jnp.maximum(count, 1.0)',
      'pmap path divides by the local count instead of the psum\'d global one',
      first=PMAP),
    M('objective-count-floor', CORE,
      'weight * term_sum / jnp.maximum(global_count, 1.0)',
      'weight * term_sum / jnp.maximum(global_count, 0.0)',
      'no floor on the count: a fully masked batch gives 0/0'),
    M('objective-total-no-psum', CORE,
      'total if axis_name is None else jax.lax.psum(total, axis_name)',
      'total',
      'loss/total under pmap is one device\'s share, not the global total',
      first=PMAP),
    M('objective-term-mask-only', CORE,
      '  return mask * batch_mask',
      '  return mask',
      'a term with its own mask ignores the batch padding mask'),
    M('objective-no-batch-mask', CORE,
      '  if mask is None:\n    return batch_mask',
      '  if mask is None:\n    return None',
      'terms without their own mask ignore the batch padding mask'),
    M('objective-default-weight', CORE,
      'self.weights.get(name, 1.0)',
      'self.weights.get(name, 0.0)',
      'a term without a weight gets weight 0 instead of 1'),
    M('objective-schedule-off-by-one', CORE,
      'return jnp.asarray(value(step), jnp.float32)',
      'return jnp.asarray(value(step + 1), jnp.float32)',
      'schedules (weights, temperature) evaluated one step late'),
    M('objective-metric-mask', CORE,
      '_psum_pair(fn(student, teacher, batch, batch_mask), axis_name)',
      '_psum_pair(fn(student, teacher, batch, None), axis_name)',
      'extra metrics (accuracy) count padding rows'),
    M('objective-psum-pair-count', CORE,
      'jax.lax.psum(pair[0], axis_name), jax.lax.psum(pair[1], axis_name)',
      'jax.lax.psum(pair[0], axis_name), pair[1]',
      'metrics under pmap: global sum over a local count',
      first=PMAP),
    M('objective-term-losses-local', CORE,
      "{f'loss/{name}': _psum_pair(pair, axis_name) for name, pair in local.items()}",
      "{f'loss/{name}': pair for name, pair in local.items()}",
      'term_losses under an axis returns local pairs',
      first=PMAP),
    M('objective-mask-dtype', CORE,
      'return jnp.asarray(batch[self.mask_key], jnp.float32)',
      'return jnp.asarray(batch[self.mask_key], jnp.float32) > 1',
      'the batch mask read as "> 1": every row masked out'),
    M('objective-stateful-rng', CORE,
      'rng=jax.random.fold_in(rng, i), axis_name=axis_name,',
      'rng=rng, axis_name=axis_name,',
      'every stateful term gets the same key'),
    M('distill-frozen-temperature', SINGLE,
      'temperature=schedule_value(temperature, step), **kwargs',
      'temperature=schedule_value(temperature, 0), **kwargs',
      'the distill term\'s temperature schedule frozen at step 0'),
    M('relational-mask-threshold', SINGLE,
      "kwargs['example_mask'] = jnp.asarray(batch[mask_key]) > 0",
      "kwargs['example_mask'] = jnp.asarray(batch[mask_key]) >= 0",
      'relational terms see padding examples as real'),
    M('multi-teacher-unweighted', 'kdjax/objective/_multi.py',
      'return sum(w[i] * v for i, v in enumerate(values)), None',
      'return sum(v for v in values) / len(values), None',
      'mean_losses ignores the teacher weights'),
    M('multi-teacher-mean-logits', 'kdjax/objective/_multi.py',
      'target = jnp.tensordot(w, logits, axes=1)',
      'target = jnp.mean(logits, axis=0)',
      'mean_logits ignores the teacher weights'),
    M('ema-swapped', 'kdjax/objective/_stateful.py',
      'return (decay * a + (1.0 - decay) * v).astype(jnp.result_type(a))',
      'return (decay * v + (1.0 - decay) * a).astype(jnp.result_type(a))',
      'EMA teacher: decay applied to the new value instead of the average',
      first=EMA),
    M('crd-device-rows', 'kdjax/objective/_stateful.py',
      'jax.lax.dynamic_slice_in_dim(values, device * rows, rows)',
      'jax.lax.dynamic_slice_in_dim(values, 0, rows)',
      'CRD under pmap: every device keeps device 0\'s rows',
      first=('tests/test_stateful.py::test_crd_under_pmap_keeps_identical_banks_equal_to_the_global_step',)),
    M('uld-teacher-mask-slice', 'kdjax/objective/_lm.py',
      'mask = mask.at[:, :time].multiply(teacher_mask[:, :time])',
      'mask = mask.at[:, :time].multiply(1.0)',
      'ULD ignores the teacher\'s token mask'),
    # --- losses.
    M('logit-temperature-not-squared', LOGIT,
      'return divergence * jnp.square(jnp.asarray(temperature, divergence.dtype))',
      'return divergence * jnp.asarray(temperature, divergence.dtype)',
      'divergences scaled by T instead of T²'),
    M('logit-teacher-untempered', LOGIT,
      'student, teacher = student / temperature, teacher / temperature',
      'student, teacher = student / temperature, teacher',
      'the teacher\'s logits not divided by the temperature (masked forms)'),
    M('fast-kl-teacher-untempered', LOGIT,
      'log_p, shifted_p, teacher_max = _unmasked_log_softmax(teacher / temperature)',
      'log_p, shifted_p, teacher_max = _unmasked_log_softmax(teacher)',
      'the unmasked KL does not temper the teacher'),
    M('fast-kl-infinity', LOGIT,
      'finite, p * (log_p - log_q), jnp.where(has_mass, jnp.inf, 0.0)',
      'finite, p * (log_p - log_q), 0.0',
      'the unmasked KL is finite where the teacher has mass and the student none'),
    M('fast-kl-gradient-no-teacher-mass', LOGIT,
      'tangent = tangent + temperature * jnp.where(teacher_has_mass, row, 0.0)',
      'tangent = tangent + temperature * row',
      'the unmasked KL has a student gradient on a row where the teacher has no mass'),
    M('fast-kl-gradient-sign', LOGIT,
      'row = jnp.sum((jnp.exp(log_q) - p) * student_dot, axis=-1)',
      'row = jnp.sum((p - jnp.exp(log_q)) * student_dot, axis=-1)',
      'the unmasked KL\'s student gradient has the wrong sign'),
    M('fast-kl-temperature-derivative', LOGIT,
      'd_temperature = 2.0 * temperature * kl - temperature * slope',
      'd_temperature = temperature * kl - temperature * slope',
      'the unmasked KL\'s temperature derivative misses the T² product rule'),
    M('fast-ce-empty-row', LOGIT,
      'loss = jnp.where(row_max[..., 0] == -jnp.inf, 0.0, -target)',
      'loss = -target',
      'the unmasked cross entropy of a row with no class left is +inf, not 0'),
    M('fast-ce-gradient-label', LOGIT,
      'return loss, jnp.where(label_in, jnp.sum(grad * logits_dot, axis=-1), 0.0)',
      'return loss, jnp.sum(grad * logits_dot, axis=-1)',
      'the unmasked cross entropy has a gradient on rows whose label takes no part'),
    M('logit-teacher-gradient', LOGIT,
      'teacher_logits = lax.stop_gradient(jnp.asarray(teacher_logits))',
      'teacher_logits = jnp.asarray(teacher_logits)',
      'dropped stop_gradient on the teacher logits'),
    M('logit-masked-row-max', LOGIT,
      'row_max = lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))',
      'row_max = lax.stop_gradient(row_max)',
      'a fully masked row keeps max = -inf (NaN after the shift)'),
    M('logit-kl-sign', LOGIT,
      'terms = jnp.exp(log_p) * (log_p - log_q)',
      'terms = jnp.exp(log_p) * (log_q - log_p)',
      'KL with the log-ratio reversed'),
    M('logit-kl-infinity', LOGIT,
      'return jnp.sum(jnp.where(has_mass & ~finite, jnp.inf, terms), axis=-1)',
      'return jnp.sum(terms, axis=-1)',
      'KL is finite where the teacher has mass and the student none'),
    M('logit-class-mask', LOGIT,
      '  if mask is not None:\n    valid = valid & mask',
      '  if mask is not None:\n    valid = valid | mask',
      'the class mask ORed instead of ANDed with finiteness'),
    M('jsd-student-weight', LOGIT,
      'student_weight = jnp.where(beta == 1, 1.0, 1.0 - beta)',
      'student_weight = jnp.where(beta == 1, 1.0, beta)',
      'generalized JSD: the student side weighted by beta'),
    M('mixture-log1p', LOGIT,
      'term_b = jnp.where(valid_b, jnp.log1p(-weight_a) + log_b, -jnp.inf)',
      'term_b = jnp.where(valid_b, jnp.log(weight_a) + log_b, -jnp.inf)',
      'log-mixture: the second weight is w instead of 1 - w'),
    M('tvd-half', LOGIT,
      'return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)',
      'return jnp.sum(jnp.abs(p - q), axis=-1)',
      'total variation without the 1/2'),
    M('ce-smoothing-count', LOGIT,
      'uniform_nll = -jnp.sum(safe_log_probs, axis=-1) / jnp.maximum(num_valid, 1)',
      'uniform_nll = -jnp.sum(safe_log_probs, axis=-1) / logits.shape[-1]',
      'label smoothing spread over masked classes too'),
    M('ce-empty-row', LOGIT,
      'loss = jnp.where(num_valid > 0, loss, 0.0)',
      'loss = jnp.where(num_valid >= 0, loss, 0.0)',
      'cross-entropy of a row with no valid class is not 0'),
    M('dkd-swapped-weights', LOGIT,
      'return alpha * tckd + beta * nckd',
      'return alpha * nckd + beta * tckd',
      'DKD: alpha and beta swapped'),
    M('dkd-non-target-mask', LOGIT,
      'non_target = ~is_target if mask is None else mask & ~is_target',
      'non_target = ~is_target if mask is None else mask | ~is_target',
      'DKD: masked classes enter the non-target KL'),
    M('labels-out-of-range', LOGIT,
      'return jnp.where(in_range, values, jnp.nan)',
      'return values',
      'labels out of range give a number instead of NaN'),
    M('compute-dtype', 'kdjax/losses/_common.py',
      'return jnp.result_type(jnp.float32, *(a.dtype for a in arrays))',
      'return jnp.result_type(*(a.dtype for a in arrays))',
      'losses of bfloat16 inputs computed in bfloat16'),
    M('chunked-running-sum', 'kdjax/losses/_chunked.py',
      'running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(',
      'running_sum = running_sum + jnp.sum(',
      'chunked log-sum-exp not rescaled when the running max moves'),
    M('chunked-grad-temperature', 'kdjax/losses/_chunked.py',
      'd_logits = (g - q * total[:, None]) / temperature',
      'd_logits = (g - q * total[:, None]) * temperature',
      'chunked custom gradient multiplies by T instead of dividing'),
    M('chunked-vocab-valid', 'kdjax/losses/_chunked.py',
      'return (j * vocab_chunk + jnp.arange(vocab_chunk) < vocab)[None, :]',
      'return (j * vocab_chunk + jnp.arange(vocab_chunk) <= vocab)[None, :]',
      'chunked loss (vocabulary blocks) counts one padding column of the vocabulary'),
    M('chunked-whole-vocab-valid', 'kdjax/losses/_chunked.py',
      'return (offset + start + jnp.arange(size) < layout.vocab)[None, :]',
      'return (offset + start + jnp.arange(size) <= layout.vocab)[None, :]',
      'chunked loss (whole vocabulary) counts one padding column of the vocabulary'),
    M('token-mean-count', 'kdjax/losses/_sequence.py',
      'return total / jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)',
      'return total / mask.size',
      'token mean divides by all tokens, padding included'),
    M('token-mask-nonzero', 'kdjax/losses/_sequence.py',
      'return jnp.broadcast_to(aligned != 0, token_shape)',
      'return jnp.broadcast_to(aligned >= 0, token_shape)',
      'the token mask is ignored'),
    M('topk-temperature', 'kdjax/losses/_topk.py',
      'log_probs = jax.nn.log_softmax(logits / jnp.asarray(temperature, jnp.float32), axis=-1)',
      'log_probs = jax.nn.log_softmax(logits, axis=-1)',
      'teacher top-k ignores the temperature'),
    M('metric-count', 'kdjax/metrics.py',
      'return jnp.sum(jnp.where(mask > 0, values * mask, 0.0)), jnp.sum(mask)',
      'return jnp.sum(jnp.where(mask > 0, values * mask, 0.0)), jnp.asarray(mask.size, jnp.float32)',
      'masked metric counts padding'),
    # --- step.
    M('step-increment', STEP,
      'step=state.step + 1,\n      params=params,',
      'step=state.step + 2,\n      params=params,',
      'the step counter advances by 2'),
    M('step-pmean-grads', STEP,
      'grads = jax.lax.psum(grads, axis_name)',
      'grads = jax.lax.pmean(grads, axis_name)',
      'pmap step averages gradients that are already shares of the global mean',
      first=PMAP),
    M('step-no-pmean-model-state', STEP,
      'new_model_state = jax.lax.pmean(new_model_state, axis_name)',
      'new_model_state = new_model_state',
      'BatchNorm statistics not averaged over devices',
      first=PMAP),
    M('step-model-state-order', STEP,
      'model_state = {**state.model_state, **new_model_state}',
      'model_state = {**new_model_state, **state.model_state}',
      'the updated model state (BatchNorm) is discarded'),
    M('step-after-update-old-params', STEP,
      "objective_state, {'params': params, **model_state}, state.step)",
      "objective_state, {'params': state.params, **model_state}, state.step)",
      'stateful terms see the parameters before the update',
      first=EMA),
    M('step-device-rng', STEP,
      'rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))',
      'rng = rng',
      'every pmap device draws the same dropout',
      first=PMAP),
    M('step-rng-constant', STEP,
      '  return jax.random.fold_in(rng, state.step)',
      '  return rng',
      'the same dropout key at every step'),
    M('step-schedule-step', STEP,
      'student, teacher, batch, step=state.step, state=state.objective_state,\n        rng=objective_rng, axis_name=axis_name)',
      'student, teacher, batch, step=state.step + 1, state=state.objective_state,\n        rng=objective_rng, axis_name=axis_name)',
      'the objective\'s schedules evaluated at the next step'),
    M('eval-accuracy-mask', STEP,
      "metrics[f'acc/{name}'] = metrics_lib.accuracy(outputs.logits, labels, mask)",
      "metrics[f'acc/{name}'] = metrics_lib.accuracy(outputs.logits, labels, None)",
      'eval accuracy counts padding'),
    M('eval-train-mode', STEP,
      "state.variables, _student_batch(student_inputs, batch, teacher), train=False)",
      "state.variables, _student_batch(student_inputs, batch, teacher), train=True)",
      'the eval step runs the student in train mode'),
    M('grad-norm-of-updates', STEP,
      "metrics['optim/grad_norm'] = metrics_lib.scalar(optax.tree.norm(grads))",
      "metrics['optim/grad_norm'] = metrics_lib.scalar(optax.tree.norm(updates))",
      'grad_norm reports the update\'s norm'),
    # --- loop.
    M('loop-same-shuffle', LOOP,
      'key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)',
      'key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)',
      'every epoch shuffles the same way'),
    M('loop-no-shuffle', LOOP,
      'order = jax.random.permutation(shuffle_key, num_examples)',
      'order = jnp.arange(num_examples)',
      'the epoch does not shuffle'),
    M('loop-augment-key', LOOP,
      'batch = augment(batch, jax.random.fold_in(augment_key, index))',
      'batch = augment(batch, augment_key)',
      'every minibatch of an epoch gets the same augmentation noise'),
    M('loop-data-position', LOOP,
      "data_state={'epoch': epoch + 1}",
      "data_state={'epoch': epoch}",
      'the checkpoint records the epoch it ends as the one it starts',
      first=RESUME),
    M('loop-resume-epoch', LOOP,
      "start = int(data_state['epoch'])",
      "start = int(data_state['epoch']) + 1",
      'a resumed run skips an epoch',
      first=RESUME),
    M('loop-save-due', LOOP,
      'due = (epoch + 1) % save_every == 0 or epoch + 1 == num_epochs',
      'due = epoch % save_every == 0 or epoch + 1 == num_epochs',
      'checkpoints one epoch early (off-by-one save schedule)'),
    M('loop-last-eval', LOOP,
      "((epoch + 1) % eval_every == 0 or epoch + 1 == num_epochs)",
      "((epoch + 1) % eval_every == 0)",
      'no evaluation after the last epoch unless it falls on eval_every'),
    M('loop-rewind', LOOP,
      'if writer is not None and metadata.get(_METRICS_POSITION) is not None:',
      'if writer is None and metadata.get(_METRICS_POSITION) is not None:',
      'a resume does not cut the metrics file back'),
    M('loop-preempt-save', LOOP,
      '        if not due:\n          _save(manager, state, epoch, writer, config)',
      '        if due:\n          _save(manager, state, epoch, writer, config)',
      'a preempted run does not write its checkpoint'),
    M('loop-epoch-metrics-last', LOOP,
      'return state, jax.tree.map(lambda x: jnp.sum(x, axis=0), metrics)',
      'return state, jax.tree.map(lambda x: x[-1], metrics)',
      'the epoch reports only its last step\'s metrics'),
    M('evaluate-stride', LOOP,
      'for start in range(0, num_examples, batch_size):',
      'for start in range(0, num_examples - 1, batch_size):',
      'evaluation misses the data when the last batch is one example'),
    # --- checkpoint.
    M('checkpoint-oldest-first', CKPT,
      'steps = sorted(manager.all_steps(), reverse=True)',
      'steps = sorted(manager.all_steps())',
      'restore tries the oldest checkpoint first'),
    M('checkpoint-failure-flag', CKPT,
      'if parallel.any_process(error is not None):',
      'if parallel.any_process(error is not None and candidate != steps[0]):',
      'a damaged latest checkpoint is not recognised as failed'),
    M('checkpoint-config-check', CKPT,
      "if meta['config_hash'] == provenance.config_hash(config):",
      "if meta['config_hash'] != provenance.config_hash(config):",
      'the config check accepts another run\'s config'),
    M('checkpoint-no-cleanup', CKPT,
      'cleanup_tmp_directories=True,',
      'cleanup_tmp_directories=False,',
      'half-written temporary checkpoints are left behind'),
    M('checkpoint-data-state', CKPT,
      "return restored[_STATE], meta.get('data_state'), meta.get('metadata', {})",
      "return restored[_STATE], None, meta.get('metadata', {})",
      'restore loses the data position'),
    M('checkpoint-aside-collision', CKPT,
      '  while os.path.exists(destination):',
      '  if os.path.exists(destination):',
      'a third damaged copy of a step overwrites the second'),
    # --- parallel.
    M('shard-map-local-count', 'kdjax/parallel/_shard_map.py',
      'return jax.lax.psum(total, axes), jax.lax.psum(count, axes)',
      'return jax.lax.psum(total, axes), count',
      'sharded loss: global sum over the local count'),
    M('batch-global-size', 'kdjax/parallel/_batch.py',
      'if local % local_shards or global_size % shards:',
      'if global_size % shards:',
      'a local batch not divisible by the local shards is accepted'),
    M('pmap-split', 'kdjax/parallel/_pmap.py',
      'if not shape or shape[0] % n:',
      'if not shape:',
      'a batch not divisible by the devices is not refused'),
    M('mesh-fill-axis', 'kdjax/parallel/_mesh.py',
      'sizes = [count // known if size == -1 else size for size in sizes]',
      'sizes = [count // known if size == -1 else 1 for size in sizes]',
      'the -1 axis takes the devices, the explicit sizes become 1'),
    # --- data pipeline.
    M('data-shard-stride', PIPE,
      'return ds if shard_count == 1 else ds[shard_index::shard_count]',
      'return ds if shard_count == 1 else ds[::shard_count]',
      'every shard reads shard 0\'s examples'),
    M('data-label-range', PIPE,
      'bad = value[(value < 0) | (value >= n)]',
      'bad = value[(value < 0) | (value > n)]',
      'a label equal to num_classes is accepted'),
    M('data-image-scale', PIPE,
      'value = value.astype(np.float32) / np.float32(255.0)',
      'value = value.astype(np.float32) / np.float32(256.0)',
      'images scaled by 1/256 instead of 1/255'),
    M('data-shuffle-flag', PIPE,
      '  if shuffle:\n    ds = ds.shuffle(seed=seed)',
      '  if not shuffle:\n    ds = ds.shuffle(seed=seed)',
      'shuffle=True does not shuffle'),
    M('data-iterate-once-drop', PIPE,
      'ds = ds.batch(batch_size, drop_remainder=False)',
      'ds = ds.batch(batch_size, drop_remainder=True)',
      'evaluation iteration drops the last partial batch'),
    # --- generate.
    M('generate-prefill-last', GEN,
      'last = (prompt_lengths - 1)[:, None, None]',
      'last = jnp.maximum(prompt_lengths - 2, 0)[:, None, None]',
      'the first token is predicted from the second-to-last prompt position'),
    M('generate-lengths', GEN,
      'lengths = lengths + (~done).astype(jnp.int32)',
      'lengths = lengths + 1',
      'finished rows keep growing in length'),
    M('generate-eos', GEN,
      'done = done | (token == eos_id)',
      'done = done',
      'EOS does not end a row'),
    M('generate-positions', GEN,
      'variables, token[:, None], (prompt_lengths + t)[:, None], cache',
      'variables, token[:, None], (prompt_lengths + t + 1)[:, None], cache',
      'decoding writes each token one position late'),
    M('beam-length', GEN,
      'length = (t + 1).astype(jnp.int32)',
      'length = t.astype(jnp.int32)',
      'beam search scores hypotheses with their length minus one'),
    M('top-k-ties', METHODS,
      'logits = jnp.where(logits < kth, -jnp.inf, logits)',
      'logits = jnp.where(logits <= kth, -jnp.inf, logits)',
      'top-k drops the k-th token'),
    M('top-p-prefix', METHODS,
      'before = jnp.cumsum(probs, axis=-1) - probs',
      'before = jnp.cumsum(probs, axis=-1)',
      'top-p drops the token that crosses the threshold'),
    M('gnmt-penalty', METHODS,
      'return ((5.0 + length) / 6.0) ** self.alpha',
      'return ((5.0 + length) / 6.0) * self.alpha',
      'GNMT length penalty multiplied instead of raised to alpha'),
    # --- cache.
    M('cache-quantize-scale', 'kdjax/cache/_format.py',
      'scale = np.where(span > 0, 255.0 / np.where(span > 0, span, 1.0), 0.0)',
      'scale = np.where(span > 0, 254.0 / np.where(span > 0, span, 1.0), 0.0)',
      'uint8 log-probs quantised on 254 steps, decoded on 255'),
    M('cache-shard-path', 'kdjax/cache/_store.py',
      'path = self._paths[index // self.spec.examples_per_shard]',
      'path = self._paths[index % len(self._paths)]',
      'an unreadable record blames the wrong shard file'),
    M('cache-data-id', 'kdjax/cache/_store.py',
      'if data_fingerprint(np.asarray(arrays[tokens_key]), mask) != cache.spec.data_id:',
      'if False:',
      'a cache of other data is accepted'),
)


# ----------------------------------------------------------------------------
# Checking and applying.


def tests_for(mutant: Mutant) -> tuple[str, ...]:
  """The test files that cover `mutant`'s module (the longest prefix in TESTS)."""
  matches = [prefix for prefix in TESTS if mutant.path.startswith(prefix)]
  if not matches:
    raise KeyError(f'mutant {mutant.name!r}: no test files for {mutant.path}; add it to TESTS')
  files = TESTS[max(matches, key=len)]
  # The tests written for survivors run last: a mutant they kill got past
  # every other test file of its module.
  return mutant.first + tuple(f for f in files if f not in mutant.first) + (KILLS,)


def check_mutants(mutants=MUTANTS, root: pathlib.Path = ROOT) -> list[str]:
  """Problems with the list: snippets not found exactly once, bad names, unknown tests."""
  problems = []
  names = [m.name for m in mutants]
  for name in sorted({n for n in names if names.count(n) > 1}):
    problems.append(f'mutant name {name!r} is used more than once')
  for m in mutants:
    path = root / m.path
    if not path.exists():
      problems.append(f'{m.name}: {m.path} does not exist')
      continue
    count = path.read_text().count(m.original)
    if count != 1:
      problems.append(f'{m.name}: the original snippet occurs {count} times in {m.path} '
                      f'(must be once): {m.original!r}')
    if m.original == m.replacement:
      problems.append(f'{m.name}: the replacement equals the original')
    try:
      for test in tests_for(m):
        if not (root / test.split('::')[0]).exists():
          problems.append(f'{m.name}: test file {test} does not exist')
    except KeyError as e:
      problems.append(str(e))
  return problems


def line_of(mutant: Mutant, root: pathlib.Path = ROOT) -> int:
  text = (root / mutant.path).read_text()
  return text[: text.index(mutant.original)].count('\n') + 1


def copy_repository(destination: pathlib.Path) -> None:
  """The repository's tracked and untracked-unignored files, without caches."""
  files = subprocess.run(
      ['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
      cwd=ROOT, check=True, capture_output=True).stdout.split(b'\0')
  for name in files:
    if not name:
      continue
    relative = name.decode()
    source = ROOT / relative
    if not source.is_file():
      continue
    target = destination / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


_FAILED = re.compile(r'^(?:FAILED|ERROR) (\S+)', re.M)
# The check of this list fails on any mutated source by design: not a kill.
_LIST_CHECK = 'tests/test_mutation_kills.py::test_every_mutant_snippet_occurs_exactly_once'


def _default_signals() -> None:
  """In the test process: SIGINT as in a terminal.

  A job started in the background by a non-interactive shell (``nohup ...
  &``) inherits SIGINT ignored, and Python then installs no
  ``KeyboardInterrupt`` handler: the tests of fit's SIGINT handling would
  fail on every mutant, unmutated too.
  """
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_tests(copy: pathlib.Path, tests, timeout: float, env) -> tuple[str, str, float]:
  """(status, detail, seconds) of the tests in `copy`: passed/failed/timeout."""
  command = [sys.executable, '-m', 'pytest', '-x', '-q', '-m', 'not slow', '-p', 'no:xdist',
             '-p', 'no:cacheprovider', '-rfE', '--deselect', _LIST_CHECK, *tests]
  start = time.monotonic()
  try:
    result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True,
                            timeout=timeout, preexec_fn=_default_signals)
  except subprocess.TimeoutExpired:
    return 'timeout', f'over {timeout:.0f} s', time.monotonic() - start
  seconds = time.monotonic() - start
  if result.returncode == 0:
    return 'passed', '', seconds
  failed = _FAILED.findall(result.stdout)
  if failed:
    return 'failed', failed[0], seconds
  tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
  return 'failed', 'pytest exit %d: %s' % (result.returncode, ' | '.join(tail)), seconds


def baseline(copy: pathlib.Path, mutants, env) -> None:
  """Runs every test file the mutants use, unmutated: all must pass."""
  files = sorted({t for m in mutants for t in tests_for(m)})
  print(f'baseline: {len(files)} test files, unmutated ...', flush=True)
  command = [sys.executable, '-m', 'pytest', '-q', '-m', 'not slow', '-p', 'no:xdist',
             '-p', 'no:cacheprovider', '-rfE', *files]
  start = time.monotonic()
  result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True,
                          preexec_fn=_default_signals)
  if result.returncode != 0:
    raise SystemExit('the unmutated tests fail; fix them first:\n'
                     + '\n'.join(_FAILED.findall(result.stdout)) + result.stdout[-2000:])
  print(f'baseline passed in {time.monotonic() - start:.0f} s', flush=True)


def verify_killers(copy: pathlib.Path, results: dict[str, dict], env) -> list[str]:
  """The tests that killed mutants, run on the unmutated copy: those that fail."""
  killers = sorted({r['killed_by'].split(' ')[0] for r in results.values()
                    if r['status'] == 'killed' and '::' in r['killed_by']})
  if not killers:
    return []
  print(f'checking that the {len(killers)} killing tests pass unmutated ...', flush=True)
  command = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:xdist', '-p', 'no:cacheprovider',
             '-rfE', *killers]
  result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True,
                          preexec_fn=_default_signals)
  return _FAILED.findall(result.stdout) if result.returncode else []


def run_mutant(mutant: Mutant, copy: pathlib.Path, timeout: float, env,
               tests: tuple[str, ...] | None = None) -> dict:
  """Applies `mutant` in `copy`, runs its tests (or `tests`), restores the file."""
  tests = tests or tests_for(mutant)
  path = copy / mutant.path
  original = path.read_text()
  if original.count(mutant.original) != 1:
    raise ValueError(f'{mutant.name}: snippet not found once in the copy')
  try:
    path.write_text(original.replace(mutant.original, mutant.replacement))
    status, detail, seconds = run_tests(copy, tests, timeout, env)
  finally:
    path.write_text(original)
  outcome = {'passed': 'survived', 'failed': 'killed', 'timeout': 'timeout'}[status]
  return {
      'name': mutant.name, 'path': mutant.path, 'line': line_of(mutant),
      'description': mutant.description, 'status': outcome, 'killed_by': detail,
      'seconds': round(seconds, 1), 'tests': list(tests),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }


def read_log(path: pathlib.Path) -> dict[str, dict]:
  results = {}
  if path.exists():
    for line in path.read_text().splitlines():
      if line.strip():
        record = json.loads(line)
        results[record['name']] = record
  return results


# ----------------------------------------------------------------------------
# Reporting.


def score(results: dict[str, dict]) -> tuple[int, int, int]:
  statuses = [r['status'] for r in results.values()]
  return statuses.count('killed'), statuses.count('survived'), statuses.count('timeout')


def _by_new_test(record: dict) -> bool:
  """Killed only by a test of tests/test_mutation_kills.py (it ran last)."""
  earlier = record.get('earlier')
  return record['status'] == 'killed' and (
      record['killed_by'].startswith(KILLS)
      or bool(earlier and earlier['status'] == 'survived'))


def _result_word(record: dict) -> str:
  if _by_new_test(record):
    return 'killed by a new test (survived its module\'s tests)'
  return record['status']


def markdown_table(results: dict[str, dict]) -> str:
  lines = ['| mutant | where | bug | result | first failing test |',
           '|---|---|---|---|---|']
  for m in MUTANTS:
    r = results.get(m.name)
    if r is None:
      continue
    killer = r['killed_by'].replace('|', '\\|') if r['status'] == 'killed' else ''
    lines.append(f"| `{m.name}` | `{m.path}:{r['line']}` | {m.description} | "
                 f"{_result_word(r)} | {killer} |")
  return '\n'.join(lines)


def docs_section(results: dict[str, dict], equivalent: dict[str, str], load: str) -> str:
  killed, survived, timeout = score(results)
  total = killed + survived + timeout
  caught = killed + timeout
  survivors = [name for name, r in results.items() if r['status'] == 'survived']
  survivor_lines = '\n'.join(
      f"* `{name}`: {equivalent.get(name, 'NOT EXPLAINED: needs a test or an argument')}"
      for name in survivors) or '* none'
  new = sum(_by_new_test(r) for r in results.values())
  dates = sorted(r['date'] for r in results.values())
  cpu = sum(r['seconds'] for r in results.values())
  return f"""{SECTION}

Generated by `benchmarks/mutation.py`; do not edit the table by hand.

How well do the tests catch wrong code? `benchmarks/mutation.py` holds
{len(MUTANTS)} mutants of the core (objective, losses, metrics, step,
parallel, checkpoint, loop, data pipeline, generation, teacher cache), each a
deliberate small bug written as data (file, original snippet, replacement,
description): operators, constants, masks, axes, a dropped
`stop_gradient`, a local count where the `psum`'d one belongs, off-by-one
schedules and data positions. Each is applied to a private copy of the
repository and the test files covering its module run against it
(`pytest -x -m 'not slow'`, one mutant at a time, with a timeout); a
mutant is *killed* when a test fails. A CI test
(`tests/test_mutation_kills.py`) checks that every snippet still occurs
exactly once in the current sources.

* Command: `nice -n 19 python benchmarks/mutation.py --log <file>`, then
  `--from-log <file> --write-docs` (survivors rerun after new tests)
* Runs: {dates[0] if dates else '?'} to {dates[-1] if dates else '?'}, {cpu / 60:.0f} min of
  test time in all; machine load average at writing {load}
* Score: **{killed} killed, {timeout} timed out, {survived} survived of {total}:
  {caught / max(total, 1):.1%} caught** (goal {GOAL:.0%}; a timeout counts as caught)
* Of the killed, {new} were killed only by the tests written for them
  (`tests/test_mutation_kills.py`, run last in every mutant's list): the
  suite before them caught {killed - new + timeout} of {total}
  ({(killed - new + timeout) / max(total, 1):.1%}).
* Every test named below as a killer passes on the unmutated sources
  (`--from-log <file> --verify-killers`), so no kill is a test that fails
  anyway. (The runner resets SIGINT to its default in the test processes:
  started from a background shell it is inherited ignored, and then
  `test_a_second_sigint_interrupts_at_once` fails on every mutant; three
  mutants first counted as killed by it were rerun.)

Survivors:

{survivor_lines}

{markdown_table(results)}
"""


# Survivors shown equivalent (or knowingly untested); cited in the docs.
EQUIVALENT: dict[str, str] = {
    'batch-global-size': (
        'equivalent. `shard_batch` refuses a batch unless `local % local_shards == 0` and '
        '`global % shards == 0`, with `global = local * shards // local_shards`. The data '
        'axes span whole processes, so `shards = r * local_shards` for an integer `r` '
        '(every process holds the same number of data shards), and then '
        '`global % shards == (r * local) % (r * local_shards) == r * (local % local_shards)`: '
        'the second condition alone is the first. (On one process `r = 1` and they are the '
        'same test.) No test can tell them apart; the check on the local size stays because '
        'it names the process-local cause.'),
}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--check', action='store_true', help='validate the list and exit')
  parser.add_argument('--list', action='store_true', help='print the mutants and exit')
  parser.add_argument('--only', default='', help='comma-separated mutant names')
  parser.add_argument('--log', type=pathlib.Path, default=None,
                      help='append one JSON line per mutant to this file')
  parser.add_argument('--from-log', type=pathlib.Path, default=None,
                      help='report from this log instead of running')
  parser.add_argument('--skip-done', action='store_true',
                      help='with --log: skip mutants already in the log')
  parser.add_argument('--tests', default='',
                      help='comma-separated test files to run instead of the module\'s '
                      '(e.g. to rerun survivors against the tests written for them alone)')
  parser.add_argument('--timeout', type=float, default=300.0,
                      help='seconds per mutant run')
  parser.add_argument('--workdir', type=pathlib.Path, default=None,
                      help='where to put the copy (default: a temporary directory)')
  parser.add_argument('--baseline', action='store_true',
                      help='first run every test file the mutants use, unmutated')
  parser.add_argument('--verify-killers', action='store_true',
                      help='with --from-log: run the killing tests unmutated (all must pass)')
  parser.add_argument('--write-docs', action='store_true',
                      help=f'update the "{SECTION}" section of {DOCS.relative_to(ROOT)}')
  return parser.parse_args(argv)


def main(argv=None) -> dict[str, dict]:
  args = parse_args(argv)
  problems = check_mutants()
  if problems:
    raise SystemExit('invalid mutant list:\n  ' + '\n  '.join(problems))
  print(f'{len(MUTANTS)} mutants, every snippet found once', flush=True)
  if args.check:
    return {}
  if args.list:
    for m in MUTANTS:
      print(f'{m.name:34} {m.path}:{line_of(m):<5} {m.description}')
    return {}
  selected = [m for m in MUTANTS if not args.only or m.name in args.only.split(',')]
  if args.from_log is not None:
    results = read_log(args.from_log)
    if args.verify_killers:
      workdir = pathlib.Path(tempfile.mkdtemp(prefix='kdjax-mutation-', dir=args.workdir))
      try:
        copy_repository(workdir / 'repo')
        bad = verify_killers(workdir / 'repo', results, dict(os.environ))
      finally:
        shutil.rmtree(workdir, ignore_errors=True)
      if bad:
        raise SystemExit(f'tests that "killed" mutants fail unmutated: {bad}')
      print('every killing test passes unmutated')
  else:
    done = read_log(args.log) if (args.log and args.skip_done) else {}
    results = dict(done)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix='kdjax-mutation-', dir=args.workdir))
    try:
      copy = workdir / 'repo'
      copy_repository(copy)
      env = dict(os.environ, PYTHONDONTWRITEBYTECODE='1')
      # One XLA cache for all runs: its keys are the programs, so a mutant
      # that changes a program compiles it afresh.
      env.setdefault('KDJAX_TEST_XLA_CACHE', str(workdir / 'xla-cache'))
      os.makedirs(env['KDJAX_TEST_XLA_CACHE'], exist_ok=True)
      if args.baseline:
        baseline(copy, selected, env)
      for i, m in enumerate(selected):
        if m.name in done and not args.tests:
          continue
        record = run_mutant(m, copy, args.timeout, env,
                            tuple(args.tests.split(',')) if args.tests else None)
        if args.tests and m.name in done:
          record['earlier'] = done[m.name]
        results[m.name] = record
        print(f"[{i + 1}/{len(selected)}] {record['status']:8} {m.name:34} "
              f"{record['seconds']:6.1f}s {record['killed_by']}", flush=True)
        if args.log is not None:
          with args.log.open('a') as f:
            f.write(json.dumps(record) + '\n')
    finally:
      shutil.rmtree(workdir, ignore_errors=True)
  results = {m.name: results[m.name] for m in MUTANTS if m.name in results}
  killed, survived, timeout = score(results)
  total = killed + survived + timeout
  print(f'\nscore: {killed} killed, {timeout} timeout, {survived} survived of {total} '
        f'({(killed + timeout) / max(total, 1):.1%} caught)')
  for name, r in results.items():
    if r['status'] == 'survived':
      print(f"  survived: {name} ({r['path']}:{r['line']}): {r['description']}")
  if args.write_docs:
    load = ', '.join(f'{x:.2f}' for x in os.getloadavg())
    _docs.write_section(SECTION, docs_section(results, EQUIVALENT, load), DOCS)
    print(f'\nwrote the "{SECTION}" section of {DOCS}')
  return results


if __name__ == '__main__':
  main()
