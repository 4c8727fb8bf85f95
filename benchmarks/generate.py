"""Generation speed: kdjax's cached decoding vs recomputation vs Hugging Face ``generate``.

One ``DecoderLM`` (RoPE, SwiGLU, RMSNorm, untied embeddings: a Llama
without grouped-query attention) with random weights, decoded from random
prompts of ``--prompt`` tokens for exactly ``--new-tokens`` new tokens (no
EOS) at each batch size of ``--batches``:

* *kdjax cached*: ``make_generate(zoo.lm_decoder(model), method=Greedy())``
  and ``BeamSearch(width=4, length_penalty='none')``: the whole loop in one
  ``jax.jit`` (``lax.while_loop``), one position's work per new token.
* *kdjax recompute*: the same with ``lm_decoder(model, use_cache=False)``:
  every step runs the full forward over the whole token buffer (greedy
  only by default: ``--recompute-beam`` adds beam search, slow).
* *HF*: ``transformers.LlamaForCausalLM`` holding the same weights
  (``benchmarks/_hf_llama.py``), ``generate(do_sample=False, num_beams=1 or
  4, use_cache=True, min_new_tokens=max_new_tokens, eos_token_id=None)``,
  eager PyTorch, ``torch.set_num_threads(os.cpu_count())`` (XLA's CPU
  client also uses one thread per core).

The greedy tokens of kdjax (cached and recompute) and HF are compared
before timing. Each system is run once (warm-up; kdjax compiles here),
then ``--repeats`` times in rotating order; times are medians, ratios are
between medians of the same run. Also: the KV cache's bytes, the *matmul
floor* (the model's dense matmuls alone, timed in XLA and in PyTorch at
the rows each step decodes: no float32 decoder of this model is faster),
and speculative decoding (``make_speculative_generate``) of the model with a
small draft ``DecoderLM`` trained briefly by token-level KD
(``objective.token_distill``) on the target's own greedy outputs.

Usage::

  nice python benchmarks/generate.py                # ~7 min on 2 idle cores
  nice python benchmarks/generate.py --write-docs   # update docs/performance.md
  python benchmarks/generate.py --quick --force     # smoke test, seconds
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _lm_common as common  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from kdjax import generate as gen  # pylint: disable=wrong-import-position
from kdjax import metrics as metrics_lib  # pylint: disable=wrong-import-position
from kdjax import objective as objective_lib  # pylint: disable=wrong-import-position
from kdjax import step as step_lib  # pylint: disable=wrong-import-position
from kdjax import zoo  # pylint: disable=wrong-import-position

SECTION = '## Generation'
HF_GOAL = 2.0  # kdjax cached / HF tokens/s at the largest batch
CACHE_GOAL = 5.0  # kdjax cached / recompute tokens/s (greedy)
BEAM_WIDTH = 4


def hf_available() -> bool:
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import transformers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def model_config(layers, hidden, heads, mlp, vocab, max_len) -> zoo.DecoderConfig:
  return zoo.DecoderConfig(
      vocab_size=vocab, num_layers=layers, hidden=hidden, num_heads=heads, mlp_dim=mlp,
      max_len=max_len, positions='rope', mlp='swiglu', norm='rms', tied_embeddings=False,
  )


def configs(args) -> tuple[zoo.DecoderConfig, zoo.DecoderConfig]:
  """(target, draft) configs; max_len covers the speculative look-ahead."""
  max_len = args.prompt + args.new_tokens + args.draft_tokens
  target = model_config(args.layers, args.hidden, args.heads, args.mlp, args.vocab, max_len)
  draft = model_config(args.draft_layers, args.draft_hidden, args.draft_heads, args.draft_mlp,
                       args.vocab, max_len)
  return target, draft


def describe(config: zoo.DecoderConfig) -> str:
  return (f'{config.num_layers} layers x hidden {config.hidden}, {config.num_heads} heads of '
          f'{config.kv_dim}, SwiGLU {config.mlp_dim}, vocab {config.vocab_size}, untied, '
          f'{zoo.param_count(config) / 1e6:.1f}M params')


def cache_bytes(decoder, batch: int, length: int) -> int:
  cache = jax.eval_shape(lambda: decoder.init_cache(None, {}, batch, length))
  return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(cache)))


def prompts_for(args, batch: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, args.vocab, (batch, args.prompt)).astype(np.int32)


# ----------------------------------------------------------------------------
# The systems: name -> fn(prompts) -> new tokens [batch, new_tokens] (best beam).


def kdjax_system(model, variables, args, *, cached: bool, beam: bool):
  method = gen.BeamSearch(BEAM_WIDTH, length_penalty='none') if beam else gen.Greedy()
  generate = gen.make_generate(zoo.lm_decoder(model, use_cache=cached),
                               max_new_tokens=args.new_tokens, method=method)

  def run(prompts):
    out = jax.block_until_ready(generate(variables, prompts))
    return np.asarray(out.tokens[:, 0] if beam else out.tokens)
  return run


def hf_system(hf_model, args, *, beam: bool):
  import _hf_llama  # pylint: disable=g-import-not-at-top
  return lambda prompts: _hf_llama.hf_generate(
      hf_model, prompts, args.new_tokens, num_beams=BEAM_WIDTH if beam else 1)


def build_systems(args, config, variables, hf_model) -> dict[str, Any]:
  model = zoo.DecoderLM(config)
  systems = {
      'kdjax greedy': kdjax_system(model, variables, args, cached=True, beam=False),
      'kdjax recompute greedy': kdjax_system(model, variables, args, cached=False, beam=False),
      f'kdjax beam-{BEAM_WIDTH}': kdjax_system(model, variables, args, cached=True, beam=True),
  }
  if args.recompute_beam:
    systems[f'kdjax recompute beam-{BEAM_WIDTH}'] = kdjax_system(
        model, variables, args, cached=False, beam=True)
  if hf_model is not None:
    systems['HF greedy'] = hf_system(hf_model, args, beam=False)
    systems[f'HF beam-{BEAM_WIDTH}'] = hf_system(hf_model, args, beam=True)
  return systems


def time_systems(systems, prompts, args) -> tuple[dict, dict, dict]:
  """(first-call seconds, list of timed seconds, tokens of the warm-up) per system."""
  first, tokens = {}, {}
  for name, run in systems.items():
    start = time.perf_counter()
    tokens[name] = run(prompts)
    first[name] = time.perf_counter() - start
  times = {name: [] for name in systems}
  names = list(systems)
  for rep in range(args.repeats):
    for name in names[rep % len(names):] + names[:rep % len(names)]:
      if 'recompute' in str(name) and len(times[name]) >= args.recompute_repeats:
        continue
      start = time.perf_counter()
      systems[name](prompts)
      times[name].append(time.perf_counter() - start)
  return first, times, tokens


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
  return {'rows_equal': int(np.all(a == b, axis=1).sum()), 'rows': int(a.shape[0]),
          'tokens_equal': float(np.mean(a == b))}


# ----------------------------------------------------------------------------
# Speculative decoding with a draft distilled from the target.


def target_greedy_sequences(config, variables, args) -> np.ndarray:
  """Prompts + the target's greedy continuations: the draft's training data."""
  generate = gen.make_generate(zoo.lm_decoder(zoo.DecoderLM(config)),
                               max_new_tokens=args.new_tokens, method=gen.Greedy())
  rows = []
  for i in range(args.draft_data // args.draft_batch):
    prompts = prompts_for(args, args.draft_batch, seed=1000 + i)
    rows.append(np.concatenate([prompts, np.asarray(generate(variables, prompts).tokens)], 1))
  return np.concatenate(rows)


def train_draft(target_config, target_variables, draft_config, args) -> tuple[Any, dict]:
  """Forward-KL token distillation of the target into the draft on its greedy outputs."""
  start = time.perf_counter()
  data = target_greedy_sequences(target_config, target_variables, args)
  data_s = time.perf_counter() - start
  optimizer = optax.adam(args.draft_lr)
  train_step = jax.jit(step_lib.make_train_step(
      zoo.lm_apply(zoo.DecoderLM(draft_config)), zoo.lm_apply(zoo.DecoderLM(target_config)),
      objective_lib.Objective(terms={'kd': objective_lib.token_distill('forward_kl')}),
      optimizer), donate_argnums=0)
  state = step_lib.init_train_state(
      common.numpy_variables(draft_config, 7, draft_config.max_len), optimizer)
  rng = np.random.default_rng(3)
  losses = []
  start = time.perf_counter()
  for i in range(args.draft_steps):
    batch = {'tokens': data[rng.integers(0, len(data), args.draft_batch)]}
    state, metrics = train_step(state, target_variables, batch)
    if i in (0, args.draft_steps - 1):
      losses.append(metrics_lib.compute(metrics)['loss/kd'])
  jax.block_until_ready(state)
  info = {'sequences': len(data), 'data_s': data_s, 'train_s': time.perf_counter() - start,
          'first_loss': losses[0], 'last_loss': losses[-1]}
  return {'params': state.params}, info


def speculative(args, target_config, target_variables, draft_config, draft_variables,
                untrained_draft, greedy_times, greedy_tokens) -> dict[int, dict]:
  spec = gen.make_speculative_generate(
      zoo.lm_decoder(zoo.DecoderLM(target_config)), zoo.lm_decoder(zoo.DecoderLM(draft_config)),
      max_new_tokens=args.new_tokens, draft_tokens=args.draft_tokens, method=gen.Greedy())
  results = {}
  for batch in args.batch_sizes:
    prompts = prompts_for(args, batch, seed=batch)

    def run(draft_vars, prompts=prompts):
      return jax.block_until_ready(spec(target_variables, draft_vars, prompts))

    start = time.perf_counter()
    out = run(draft_variables)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      run(draft_variables)
      times.append(time.perf_counter() - start)
    untrained = run(untrained_draft)
    accepted, proposed, rounds = (int(np.sum(x)) for x in (out.accepted, out.proposed,
                                                           out.rounds))
    results[batch] = {
        'first_s': first, 'times': times,
        'equal': agreement(np.asarray(out.tokens), greedy_tokens[batch]),
        'acceptance': accepted / proposed,
        'tokens_per_call': batch * args.new_tokens / rounds,
        'untrained_acceptance': int(np.sum(untrained.accepted)) / int(np.sum(untrained.proposed)),
        'speedup': common.median(greedy_times[batch]) / common.median(times),
    }
  return results


# ----------------------------------------------------------------------------


def measure(args) -> dict[str, Any]:
  target_config, draft_config = configs(args)
  variables = jax.device_put(common.numpy_variables(target_config, 0, target_config.max_len))
  hf_model = None
  if args.hf:
    import torch  # pylint: disable=g-import-not-at-top
    import _hf_llama  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    hf_model = _hf_llama.hf_llama(target_config, variables)
  systems = build_systems(args, target_config, variables, hf_model)
  result = {'batches': {}, 'target': target_config, 'draft': draft_config}
  for batch in args.batch_sizes:
    prompts = prompts_for(args, batch, seed=batch)
    first, times, tokens = time_systems(systems, prompts, args)
    checks = {'recompute': agreement(tokens['kdjax recompute greedy'], tokens['kdjax greedy'])}
    if hf_model is not None:
      checks['HF greedy'] = agreement(tokens['HF greedy'], tokens['kdjax greedy'])
      checks['HF beam'] = agreement(tokens[f'HF beam-{BEAM_WIDTH}'],
                                    tokens[f'kdjax beam-{BEAM_WIDTH}'])
    result['batches'][batch] = {'first': first, 'times': times, 'checks': checks,
                                'greedy_tokens': tokens['kdjax greedy']}
    print(f'batch {batch}: ' + ', '.join(
        f'{name} {common.median(t):.3f} s' for name, t in times.items()), flush=True)
    print(f'  checks vs kdjax greedy (beam vs kdjax beam): {checks}', flush=True)
  result['floors'] = measure_floors(variables, args, hf_model is not None)
  decoder = zoo.lm_decoder(zoo.DecoderLM(target_config))
  length = args.prompt + args.new_tokens
  batch = max(args.batch_sizes)
  result['cache'] = {'batch': batch, 'length': length,
                     'bytes': cache_bytes(decoder, batch, length),
                     'beam_bytes': cache_bytes(decoder, batch * BEAM_WIDTH, length)}
  if args.draft_steps:
    draft_variables, info = train_draft(target_config, variables, draft_config, args)
    untrained = jax.device_put(common.numpy_variables(draft_config, 7, draft_config.max_len))
    result['draft_training'] = info
    result['speculative'] = speculative(
        args, target_config, variables, draft_config, draft_variables, untrained,
        {b: r['times']['kdjax greedy'] for b, r in result['batches'].items()},
        {b: r['greedy_tokens'] for b, r in result['batches'].items()})
  return result


# ----------------------------------------------------------------------------
# The matmul floor: how fast a decoding loop could be if it did nothing but
# the model's dense matmuls, in XLA and in PyTorch, at the rows one step
# decodes (batch for greedy, batch x beam width for beam search).


def dense_kernels(variables) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
  """The model's matmul weights as 2-D ``[in, out]`` arrays: per block, and the unembedding.

  Every parameter of a ``DecoderLM`` block that multiplies an activation
  (query, key, value and output projections, the SwiGLU gate, up and down
  kernels) and the unembedding; not the embedding table (a gather) nor the
  norms' scales.
  """
  params = variables['params']
  blocks = []
  for index in range(len([k for k in params if k.startswith('blocks_')])):
    block = params[f'blocks_{index}']
    attention, mlp = block['attention'], block['mlp']
    hidden = attention['query'].shape[0]
    blocks.append({
        **{name: np.asarray(attention[name]).reshape(hidden, -1)
           for name in ('query', 'key', 'value')},
        'out': np.asarray(attention['out']).reshape(-1, hidden),
        'gate': np.asarray(mlp['wi_gate']), 'up': np.asarray(mlp['wi_up']),
        'down': np.asarray(mlp['wo']),
    })
  return blocks, np.asarray(params['unembedding'])


def dense_flops(blocks, unembedding, rows: int) -> int:
  """Multiply-adds x 2 of one step's dense matmuls at `rows` rows."""
  sizes = [w.size for block in blocks for w in block.values()] + [unembedding.size]
  return 2 * rows * sum(sizes)


def _floor_step(h, blocks, unembedding, matmul, normalize, silu):
  """One step's dense matmuls, chained so that no step can be skipped or hoisted.

  The attention's three input projections are summed into its output
  projection's input (the attention itself is left out), the SwiGLU is
  computed as in the model, and each block's output is RMS-normalised to
  keep the values finite; the next step starts from the first `hidden`
  logits.
  """
  hidden = h.shape[-1]
  for block in blocks:
    mixed = matmul(h, block['query']) + matmul(h, block['key']) + matmul(h, block['value'])
    h = normalize(h + matmul(mixed, block['out']))
    h = normalize(h + matmul(silu(matmul(h, block['gate'])) * matmul(h, block['up']),
                             block['down']))
  return normalize(matmul(h, unembedding)[:, :hidden])


def _rms(x, xp):
  return x / xp.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)


def floor_start(rows: int, hidden: int) -> np.ndarray:
  """The floor loops' first activations (float32 ``[rows, hidden]``, seeded by `rows`)."""
  return np.random.default_rng(rows).standard_normal((rows, hidden)).astype(np.float32)


def xla_floor(blocks, unembedding, rows: int, steps: int):
  """``run(h) -> h``: `steps` steps of the dense matmuls in one ``jax.jit`` loop."""
  blocks = jax.device_put(blocks)
  unembedding = jax.device_put(unembedding)

  @jax.jit
  def run(h):
    def body(_, h):
      return _floor_step(h, blocks, unembedding, jnp.matmul, lambda x: _rms(x, jnp),
                         jax.nn.silu)
    return jax.lax.fori_loop(0, steps, body, h)

  h = jnp.asarray(floor_start(rows, unembedding.shape[0]))
  return lambda: jax.block_until_ready(run(h))


def torch_floor(blocks, unembedding, rows: int, steps: int):
  """The same steps in eager PyTorch, with ``nn.Linear``'s ``[out, in]`` weight layout."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  def linear_weights(w):
    return torch.from_numpy(np.ascontiguousarray(w.T))

  t_blocks = [{name: linear_weights(w) for name, w in block.items()} for block in blocks]
  t_unembedding = linear_weights(unembedding)
  h0 = torch.from_numpy(floor_start(rows, unembedding.shape[0]))

  def run():
    with torch.inference_mode():
      h = h0
      for _ in range(steps):
        h = _floor_step(h, t_blocks, t_unembedding, F.linear, lambda x: _rms(x, torch),
                        F.silu)
      return h
  return run


def measure_floors(variables, args, hf: bool) -> dict[int, dict[str, dict[str, float]]]:
  """batch -> kind -> {'rows', 'flops', 'xla' (and 'torch'): median seconds of the loop}."""
  blocks, unembedding = dense_kernels(variables)
  out = {}
  for batch in args.batch_sizes:
    out[batch] = {}
    for kind, rows in (('greedy', batch), (f'beam-{BEAM_WIDTH}', batch * BEAM_WIDTH)):
      runs = {'xla': xla_floor(blocks, unembedding, rows, args.new_tokens)}
      if hf:
        runs['torch'] = torch_floor(blocks, unembedding, rows, args.new_tokens)
      # Timed like the decoders: a first call (XLA compiles), then rotating rounds.
      _, times, _ = time_systems({name: lambda _, run=run: run() for name, run in runs.items()},
                                 None, args)
      out[batch][kind] = {
          'rows': rows, 'flops': dense_flops(blocks, unembedding, rows) * args.new_tokens,
          **{name: common.median(t) for name, t in times.items()}}
  return out


HEADERS = ['batch', 'system', 'median s', 'new tokens/s', 'first call s', 'runs']


def table_rows(result, args) -> list[list[str]]:
  rows = []
  for batch, r in result['batches'].items():
    for name, times in r['times'].items():
      seconds = common.median(times)
      rows.append([str(batch), name, f'{seconds:.3f}',
                   f'{batch * args.new_tokens / seconds:,.0f}', f"{r['first'][name]:.2f}",
                   str(len(times))])
  return rows


def ratios(result) -> list[str]:
  out = []
  beam = f'beam-{BEAM_WIDTH}'
  for batch, r in result['batches'].items():
    med = {name: common.median(t) for name, t in r['times'].items()}
    parts = [f"cached / recompute (greedy) {med['kdjax recompute greedy'] / med['kdjax greedy']:.1f}x"]
    if f'kdjax recompute {beam}' in med:
      parts.append(f"cached / recompute ({beam}) "
                   f"{med[f'kdjax recompute {beam}'] / med[f'kdjax {beam}']:.1f}x")
    if 'HF greedy' in med:
      parts.append(f"kdjax / HF greedy {med['HF greedy'] / med['kdjax greedy']:.2f}x")
      parts.append(f"kdjax / HF {beam} {med[f'HF {beam}'] / med[f'kdjax {beam}']:.2f}x")
    out.append(f'batch {batch}: ' + ', '.join(parts))
  return out


def goals(result) -> list[str]:
  batch = max(result['batches'])
  med = {name: common.median(t) for name, t in result['batches'][batch]['times'].items()}
  out = []
  if 'HF greedy' in med:
    for kind in ('greedy', f'beam-{BEAM_WIDTH}'):
      ratio = med[f'HF {kind}'] / med[f'kdjax {kind}']
      out.append(f'kdjax {kind} >= {HF_GOAL}x HF tokens/s at batch {batch}: {ratio:.2f}x, '
                 f"{'met' if ratio >= HF_GOAL else 'NOT met'}")
  ratio = med['kdjax recompute greedy'] / med['kdjax greedy']
  out.append(f'cached >= {CACHE_GOAL}x recompute (greedy, batch {batch}): {ratio:.1f}x, '
             f"{'met' if ratio >= CACHE_GOAL else 'NOT met'}")
  return out


def floor_lines(result) -> list[str]:
  """Per batch and decoding kind: the matmul floor beside kdjax's and HF's times."""
  out = []
  for batch, kinds in result['floors'].items():
    med = {name: common.median(t) for name, t in result['batches'][batch]['times'].items()}
    for kind, f in kinds.items():
      line = (f"batch {batch}, {kind} ({f['rows']} rows a step): the dense matmuls alone "
              f"{1e3 * f['xla']:.1f} ms in XLA ({f['flops'] / f['xla'] / 1e9:.0f} GFLOP/s)")
      floor = f['xla']
      if 'torch' in f:
        line += (f", {1e3 * f['torch']:.1f} ms in PyTorch "
                 f"({f['flops'] / f['torch'] / 1e9:.0f} GFLOP/s)")
        floor = min(floor, f['torch'])
      kdjax = med[f'kdjax {kind}']
      line += f'; kdjax {1e3 * kdjax:.1f} ms (matmuls {f["xla"] / kdjax:.0%})'
      if f'HF {kind}' in med:
        needed = med[f'HF {kind}'] / HF_GOAL
        line += (f"; {HF_GOAL}x HF needs at most {1e3 * needed:.1f} ms, "
                 + ('BELOW the floor: out of reach for float32 matmuls on this machine'
                    if needed < floor else f'{needed / floor:.2f}x the floor'))
      out.append(line)
  return out


def check_lines(result) -> list[str]:
  out = []
  for batch, r in result['batches'].items():
    for name, c in r['checks'].items():
      out.append(f"batch {batch}, {name} vs kdjax: {c['rows_equal']}/{c['rows']} sequences "
                 f"identical, {100 * c['tokens_equal']:.1f}% of tokens")
  return out


def cache_line(result, config) -> str:
  c = result['cache']
  formula = (2 * config.num_layers * c['batch'] * c['length'] * config.num_heads
             * config.kv_dim * 4)
  return (f"KV cache at batch {c['batch']}, length {c['length']} (prompt + new tokens): "
          f"{c['bytes']:,} bytes = {c['bytes'] / 2**20:.2f} MiB; the formula 2 x L x B x T x "
          f"H x K x 4 bytes = 2 x {config.num_layers} x {c['batch']} x {c['length']} x "
          f"{config.num_heads} x {config.kv_dim} x 4 = {formula:,} "
          f"({'equal' if formula == c['bytes'] else 'DIFFERENT'}); beam-{BEAM_WIDTH} holds "
          f"{BEAM_WIDTH}x that ({c['beam_bytes'] / 2**20:.2f} MiB: one slot per beam, "
          f"read in place, never gathered)")


def speculative_lines(result, args) -> list[str]:
  if 'speculative' not in result:
    return []
  info = result['draft_training']
  out = [f"draft: {describe(result['draft'])}, trained {args.draft_steps} steps "
         f"(batch {args.draft_batch}, Adam {args.draft_lr}) of forward-KL token KD on "
         f"{info['sequences']} target greedy sequences in {info['data_s'] + info['train_s']:.0f} s "
         f"(KD loss {info['first_loss']:.2f} -> {info['last_loss']:.2f})"]
  for batch, s in result['speculative'].items():
    out.append(
        f"batch {batch}: speculative greedy (draft_tokens={args.draft_tokens}) "
        f"{common.median(s['times']):.3f} s, {s['speedup']:.2f}x plain target greedy; "
        f"acceptance {100 * s['acceptance']:.1f}% (untrained draft "
        f"{100 * s['untrained_acceptance']:.1f}%), {s['tokens_per_call']:.2f} tokens per "
        f"target call; tokens equal target greedy: {s['equal']['rows_equal']}/"
        f"{s['equal']['rows']} sequences, {100 * s['equal']['tokens_equal']:.1f}% of tokens")
  return out


def settings_line(args) -> str:
  extra = ''
  if args.hf:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    extra = (f'PyTorch {torch.__version__}, transformers {transformers.__version__}, '
             f'torch.set_num_threads({args.threads}) (torch.get_num_threads() = '
             f'{torch.get_num_threads()})')
  else:
    extra = 'no torch/transformers: HF columns skipped'
  xla = os.environ.get('XLA_FLAGS', '') or 'unset'
  return (f"{common.versions(extra)}; XLA's CPU client uses its default thread pool "
          f'(one thread per core, {os.cpu_count()} cores), XLA_FLAGS {xla}')


def docs_section(result, args, argv, load_before, load_after, valid) -> str:
  target = result['target']
  status = common.not_a_result(valid, args.max_load)
  bullets = '\n'.join(f'* {line}' for line in speculative_lines(result, args))
  return f"""{SECTION}

Generated by `benchmarks/generate.py`; do not edit by hand.
{status}
Decoding speed of one `DecoderLM` ({describe(target)}; random weights)
from random prompts of {args.prompt} tokens, exactly {args.new_tokens} new
tokens per sequence (no EOS), float32 on the CPU. *kdjax greedy* and
*kdjax beam-{BEAM_WIDTH}*: `generate.make_generate(zoo.lm_decoder(model),
method=Greedy())` or `BeamSearch(width={BEAM_WIDTH}, length_penalty='none')`,
the whole loop in one `jax.jit`, with the KV cache (beam search never
reorders it: one slot per beam, the prompt's entries shared, int32
per-position slot pointers follow the chosen parents; see "Beam search" in
docs/generate.md). *kdjax recompute*: the
same with `lm_decoder(model, use_cache=False)` (each step runs the full
forward over the whole {args.prompt + args.new_tokens}-token buffer: the
baseline a KV cache is measured against). *HF*:
`transformers.LlamaForCausalLM` holding the same weights
(`benchmarks/_hf_llama.py`; `tests/test_hf_parity.py` checks equal logits
and greedy tokens), `generate(do_sample=False, num_beams=1 or {BEAM_WIDTH},
use_cache=True, min_new_tokens={args.new_tokens}, eos_token_id=None)`,
eager PyTorch. Each system ran once first (kdjax compiles there: *first
call*), then {args.repeats} times in rotating order (recompute
{args.recompute_repeats} times, it is slow); times are medians, *new
tokens/s* is batch x {args.new_tokens} / time (for beam search the best
hypothesis' tokens, though {BEAM_WIDTH} rows per prompt are decoded).
Goals (issue 9): kdjax >= {HF_GOAL}x HF's tokens/s at batch
{max(args.batch_sizes)}, and cached >= {CACHE_GOAL}x recompute at
{args.new_tokens} tokens.

*Matmul floor*: every step multiplies each of its rows (the batch for
greedy decoding, batch x {BEAM_WIDTH} for beam search) by every dense
weight of the model (attention projections, SwiGLU, unembedding), so no
float32 decoder of this model can take less time than those matmuls.
`benchmarks/generate.py` times them alone, {args.new_tokens} chained steps
at the same shapes with the same weights, once in one `jax.jit` loop
(XLA's kernels, which kdjax uses) and once in eager PyTorch (`F.linear`,
the kernels HF uses). Where {HF_GOAL}x HF's tokens/s would need less time
than both, the goal is out of reach on this machine whatever the
decoder does around its matmuls.

* Command: `{common.command_line('generate.py', argv)}`
* Date: {common.now()}
* {settings_line(args)}
* Machine: {common.writers.environment()['machine']}; load average at the start {load_before}, at the end {load_after}
* Goals: {'; '.join(goals(result))}.
* Ratios (of medians, same run): {'; '.join(ratios(result))}.
* Token checks before timing: {'; '.join(check_lines(result))}.
* Matmul floor (the model's dense matmuls alone, {args.new_tokens} steps, same weights; see above): {'; '.join(floor_lines(result))}.
* {cache_line(result, target)}.

{common.markdown_table(HEADERS, table_rows(result, args))}

Speculative decoding, `make_speculative_generate(target, draft,
draft_tokens={args.draft_tokens}, method=Greedy())`, the target above and a
small draft `DecoderLM` distilled from it with kdjax (`step.make_train_step`,
`objective.token_distill('forward_kl')`) on the target's own greedy
continuations of other random prompts. Speed-up is against *kdjax greedy*
of the table (same prompts, same run); acceptance is accepted / proposed
draft tokens. A random-weight target's greedy text is not natural text, so
the acceptance rate says how well this draft imitates this target, not what
a real model pair would reach.

{bullets}
"""


def add_model_flags(parser) -> None:
  """The benchmark model's shape and the decode's lengths."""
  parser.add_argument('--layers', type=int, default=4)
  parser.add_argument('--hidden', type=int, default=256)
  parser.add_argument('--heads', type=int, default=4)
  parser.add_argument('--mlp', type=int, default=768)
  parser.add_argument('--vocab', type=int, default=8192)
  parser.add_argument('--prompt', type=int, default=16)
  parser.add_argument('--new-tokens', type=int, default=128)


def quick_model(args) -> None:
  """`--quick`'s tiny model and few tokens."""
  args.layers, args.hidden, args.heads, args.mlp, args.vocab = 1, 32, 2, 48, 64
  args.prompt, args.new_tokens = 4, 8


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  add_model_flags(parser)
  parser.add_argument('--batches', default='1,8')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--recompute-repeats', type=int, default=2)
  parser.add_argument('--recompute-beam', action='store_true')
  parser.add_argument('--draft-layers', type=int, default=1)
  parser.add_argument('--draft-hidden', type=int, default=128)
  parser.add_argument('--draft-heads', type=int, default=2)
  parser.add_argument('--draft-mlp', type=int, default=384)
  parser.add_argument('--draft-tokens', type=int, default=4)
  parser.add_argument('--draft-steps', type=int, default=200, help='0 skips speculative')
  parser.add_argument('--draft-batch', type=int, default=16)
  parser.add_argument('--draft-data', type=int, default=128, help='target greedy sequences')
  parser.add_argument('--draft-lr', type=float, default=3e-3)
  parser.add_argument('--threads', type=int, default=os.cpu_count(),
                      help='torch.set_num_threads')
  parser.add_argument('--no-hf', dest='hf', action='store_false',
                      help='skip the Hugging Face columns (automatic without torch)')
  common.add_run_flags(parser, SECTION)
  args = parser.parse_args(argv)
  if args.quick:
    quick_model(args)
    args.repeats, args.recompute_repeats = 1, 1
    args.draft_hidden, args.draft_heads, args.draft_mlp = 16, 2, 32
    args.draft_steps, args.draft_batch, args.draft_data = 2, 4, 4
  args.batch_sizes = [int(b) for b in args.batches.split(',')]
  for name in ('repeats', 'recompute_repeats'):
    # Every system is timed at least once: its tokens are also the checks'.
    if getattr(args, name) < 1:
      parser.error(f'--{name.replace("_", "-")} must be at least 1, got {getattr(args, name)}')
  if args.hf and not hf_available():
    print('torch/transformers not installed: skipping the HF columns', flush=True)
    args.hf = False
  return args


def main(argv=None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  load_before, valid = common.load_gate(args)
  print(f'target {describe(configs(args)[0])}; load average {load_before}', flush=True)
  print(settings_line(args), flush=True)
  result = measure(args)
  print()
  print(common.text_table(HEADERS, table_rows(result, args)))
  for line in (ratios(result) + goals(result) + floor_lines(result) + check_lines(result)
               + [cache_line(result, result['target'])] + speculative_lines(result, args)):
    print(line)
  common.finish(args, SECTION, lambda load_after: docs_section(
      result, args, argv, load_before, load_after, valid), load_before, valid)
  return result


if __name__ == '__main__':
  main()
