"""Distilling a byte-level language model: GKD, MiniLLM, an offline cache and ULD, with verdicts.

Run ``python -m experiments.lm_distill --config=experiments/configs/lm_distill.py:cpu
--workdir=runs/lm_distill_cpu``; the config file says what each scale
trains and costs. Two :class:`kdjax.zoo.DecoderLM` teachers learn
next-byte prediction on the Python standard library's sources (generated
tables excluded); students learn from labels alone, from token-level
divergences mixed with the labels (off-policy), from their own samples
(on-policy GKD, MiniLLM), from the teacher's offline top-k cache, or, with
a BPE vocabulary of their own, across tokenizers (ULD). Every student is
scored on held-out bits/byte and on the teacher's NLL of its sampled
continuations of held-out prompts (with distinct-n), and each paper's claim
gets a verdict from paired differences over seeds.

Writes under the workdir: ``teacher<k>/``, ``select/<variant>/...``,
``<variant>/seed<s>/`` (metrics, TensorBoard, checkpoints), ``cache/``,
``bpe.json`` and ``results.json``; prints the tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import io
import math
import os
import sys
import time
import tokenize
import zlib

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import _common
from experiments.configs import lm_distill as configs
from kdjax import cache as cache_lib
from kdjax import data as data_lib
from kdjax import generate
from kdjax import losses
from kdjax import objective as objective_lib
from kdjax import onpolicy
from kdjax import step as step_lib
from kdjax import zoo

MODULE = 'experiments.lm_distill'
OFF_POLICY = configs.OFF_POLICY
VARIANTS = configs.VARIANTS
TRAIN_KEYS = ('tokens', 'labels', 'mask')
# Hyper-parameters travel with the data, one value per row: every point of a
# grid, every seed and every teacher reuse one compiled epoch.
WEIGHT_KEY, TEMPERATURE_KEY = 'kd_weight', 'kd_temperature'
# The off-policy divergence (its index in OFF_POLICY), also a column: the four
# divergences are one compiled program (`lax.switch`).
DIVERGENCE_KEY = 'kd_divergence'
PROMPT_KEY = 'prompt_lengths'
# Directory names skipped besides these (tests, installed packages).
BASE_EXCLUDE_DIRS = ('test', 'tests', 'idle_test', 'site-packages', 'dist-packages',
                     '__pycache__')
VARIANT_NAMES = {
    'labels': 'labels only (student budget)',
    'labels_long': "labels only (the teacher's token budget)",
    'forward_kl': 'forward KL + labels',
    'reverse_kl': 'reverse KL + labels',
    'jsd': 'generalized JSD + labels',
    'skew_kl': 'skew KL + labels',
    'gkd': 'on-policy GKD + labels',
    'minillm': 'MiniLLM + labels',
    'cached_forward_kl': 'forward KL from the top-k cache + labels',
    'bpe_labels': 'BPE student, labels only',
    'bpe_uld': 'BPE student, cross-tokenizer ULD + labels',
}


# ----------------------------------------------------------------------------
# Data.


def table_share(source: bytes) -> float:
  """The share of a Python file's bytes on *table lines*: literals and punctuation only.

  A line is a table line when the tokens on it are strings, numbers and
  operators only (no name, no keyword) and it is not part of a docstring
  (a string standing alone as a statement); comments and blank lines are
  not counted either way. Generated tables (codec maps, entity lists,
  ``locale.py``'s alias dictionary) are almost all table lines; code is
  mostly not. A file that does not tokenize counts as all table (it is not
  Python anyone wrote).
  """
  if not source:
    return 0.0
  lines = source.splitlines(keepends=True)
  skip = (tokenize.COMMENT, tokenize.NL)
  layout = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING)
  try:
    tokens = [t for t in tokenize.tokenize(io.BytesIO(source).readline) if t.type not in skip]
  except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
    return 1.0
  docstring, named, occupied = set(), set(), set()
  for i, tok in enumerate(tokens):
    span = range(tok.start[0], tok.end[0] + 1)
    if tok.type in (*layout, tokenize.ENDMARKER):
      continue
    if (tok.type == tokenize.STRING and i and tokens[i - 1].type in layout
        and i + 1 < len(tokens) and tokens[i + 1].type == tokenize.NEWLINE):
      docstring.update(span)
    occupied.update(span)
    if tok.type == tokenize.NAME:
      named.update(span)
  table = occupied - named - docstring
  return sum(len(lines[n - 1]) for n in table if n <= len(lines)) / len(source)


def corpus_root(config: ml_collections.ConfigDict) -> str:
  return config.data.root or data_lib.python_stdlib_dir()


def corpus_files(config: ml_collections.ConfigDict) -> dict[str, list[str]]:
  """The files of each split, before budgets: whole files by path hash, excluded dirs skipped."""
  d = config.data
  files = data_lib.list_text_files(
      corpus_root(config), suffixes=tuple(d.suffixes),
      exclude_dirs=(*BASE_EXCLUDE_DIRS, *d.exclude_dirs))
  return data_lib.split_files(files, val_fraction=d.val_fraction, test_fraction=d.test_fraction)


def _hash_order(path: str) -> tuple[float, str]:
  return zlib.crc32(path.encode('utf-8')) / 2.0**32, path


def load_texts(config: ml_collections.ConfigDict) -> tuple[dict[str, list[bytes]], dict]:
  """Each split's documents (bytes), read in path-hash order until its budget is met.

  Files that are generated tables (:func:`table_share` at least
  ``data.max_table_share``, judged on the whole file) or not UTF-8 are
  skipped as they are met, so the budget fills with code. Each file is cut
  at a line end to its first ``data.max_file_bytes`` bytes (0: whole), so
  that no file dominates a held-out split. A split reads files until it
  holds at least its budget (0: every file). Returns the documents and a
  record of the files read and skipped.
  """
  d, root = config.data, corpus_root(config)
  budgets = {'train': d.train_bytes, 'val': d.val_bytes, 'test': d.test_bytes}
  documents, info = {}, {}
  for split, files in corpus_files(config).items():
    read, skipped, total = [], [], 0
    docs = []
    for path in sorted(files, key=_hash_order):
      if budgets[split] and total >= budgets[split]:
        break
      with open(os.path.join(root, path), 'rb') as f:
        source = f.read()
      share = table_share(source)
      if share >= d.max_table_share:
        skipped.append({'file': path, 'bytes': len(source), 'table_share': round(share, 3)})
        continue
      try:
        text = source.decode('utf-8')
      except UnicodeDecodeError:
        skipped.append({'file': path, 'bytes': len(source), 'reason': 'not UTF-8'})
        continue
      if d.max_file_bytes and len(source) > d.max_file_bytes:
        source = data_lib.split_text(text, d.max_file_bytes)[0].encode('utf-8')
      docs.append(source)
      read.append(path)
      total += len(source)
    if budgets[split] and total < budgets[split]:
      raise ValueError(
          f'split {split!r} holds {total} bytes of {len(read)} files, less than its budget '
          f'data.{split}_bytes={budgets[split]}; raise data.max_file_bytes or its fraction')
    documents[split] = docs
    info[split] = {'files': read, 'bytes': total, 'skipped_tables': skipped}
  return documents, info


def byte_arrays(documents: Sequence[bytes], context: int) -> dict[str, np.ndarray]:
  """Next-byte windows of `context` targets that never cross a file."""
  arrays = data_lib.make_windows([np.frombuffer(doc, np.uint8) for doc in documents], context)
  return {k: arrays[k] for k in TRAIN_KEYS}


def bpe_arrays(documents: Sequence[bytes], tokenizer, config) -> dict[str, np.ndarray]:
  """Both tokenizations of the same text, aligned by byte offsets (:mod:`kdjax.data`).

  Each file is cut at line ends into pieces of at most ``context + 1``
  bytes; the teacher reads a piece as bytes, the student as BPE tokens (at
  most ``xtok.student_context``; longer pieces are cut). ``target_bytes``
  holds the bytes each student target spells, for bits per byte.
  """
  pieces = [piece for doc in documents
            for piece in data_lib.split_text(doc.decode('utf-8'), config.data.context + 1)]
  arrays = data_lib.make_cross_tokenizer_arrays(
      pieces, teacher_tokenizer=None, student_tokenizer=tokenizer,
      student_length=config.xtok.student_context, teacher_length=config.data.context)
  lengths = np.asarray([len(t) for t in data_lib.token_bytes(tokenizer)], np.float32)
  arrays['target_bytes'] = lengths[arrays['labels']] * arrays['mask']
  return arrays


def with_columns(arrays: Mapping[str, np.ndarray], **columns: float) -> dict[str, np.ndarray]:
  """`arrays` plus one constant float32 ``[num_rows]`` column per keyword."""
  rows = len(arrays['tokens'])
  return {**arrays, **{k: np.full((rows,), v, np.float32) for k, v in columns.items()}}


def prompt_lengths(mask: np.ndarray, width: int) -> np.ndarray:
  """Each row's prompt: its first `width` tokens, fewer in a file's short last window."""
  return np.clip(mask.sum(axis=1).astype(np.int32), 1, width)


# ----------------------------------------------------------------------------
# Terms and objectives. Weights and temperatures are read from the batch.


def _scalar(batch, key):
  return jnp.asarray(batch[key], jnp.float32)[0]


def reference_labels_term(student, teacher, batch, step):
  """``(1 - w)`` x cross entropy on the labels, on rows the student did not write.

  On-policy rows hold the student's own samples as labels; training on them
  would be self-training, so they are masked (``batch['on_policy']``).
  """
  del teacher, step
  values = losses.cross_entropy(student.logits, batch['labels'])
  if WEIGHT_KEY in batch:
    values = values * (1.0 - _scalar(batch, WEIGHT_KEY))
  if 'on_policy' in batch:
    return values, jnp.broadcast_to(
        (1 - batch['on_policy'])[:, None].astype(jnp.float32), values.shape)
  return values, None


def _divergence_fn(divergence: str, kd: ml_collections.ConfigDict):
  hyper = {'jsd': {'beta': kd.jsd_beta}, 'skew_kl': {'alpha': kd.skew_alpha}}.get(divergence, {})
  losses.divergence_kwargs(divergence, hyper.get('beta'), hyper.get('alpha'))

  def fn(student_logits, teacher_logits, temperature):
    return losses.token_divergence(student_logits, teacher_logits, divergence=divergence,
                                   temperature=temperature, **hyper)

  return fn


def divergence_term(divergence: str | None, kd: ml_collections.ConfigDict):
  """``w`` x a token-level divergence at temperature ``T`` (both from the batch).

  With `divergence` None, the divergence is ``OFF_POLICY[batch['kd_divergence']]``,
  chosen by ``lax.switch`` inside the one compiled step.
  """
  if divergence is not None:
    fns = [_divergence_fn(divergence, kd)]
  else:
    fns = [_divergence_fn(name, kd) for name in OFF_POLICY]

  def term(student, teacher, batch, step):
    del step
    operands = (student.logits, teacher.logits, _scalar(batch, TEMPERATURE_KEY))
    if len(fns) == 1:
      values = fns[0](*operands)
    else:
      index = jnp.asarray(batch[DIVERGENCE_KEY], jnp.int32)[0]
      values = jax.lax.switch(index, fns, *operands)
    return values * _scalar(batch, WEIGHT_KEY), None

  return term


def minillm_term(config: ml_collections.ConfigDict):
  """``w`` x MiniLLM's policy-gradient surrogate, on the student's own rows only."""

  def term(student, teacher, batch, step):
    del step
    values = losses.minillm_surrogate(
        student.logits, teacher.logits, batch['labels'],
        token_mask=batch['mask'], temperature=_scalar(batch, TEMPERATURE_KEY),
        teacher_mix=config.minillm.teacher_mix, single_step=config.minillm.single_step,
        length_normalize=config.minillm.length_normalize)
    rows = jnp.broadcast_to(batch['on_policy'][:, None].astype(jnp.float32), values.shape)
    return values * _scalar(batch, WEIGHT_KEY), rows

  return term


def cached_term(temperature: float):
  """``w`` x the forward KL over the teacher's cached top-k plus its tail bucket.

  The temperature is the cache's (a top-k cannot be re-tempered), so it is
  fixed when the term is built.
  """
  inner = objective_lib.cached_token_distill('tail', temperature=temperature)

  def term(student, teacher, batch, step):
    values, mask = inner(student, teacher, batch, step)
    return values * _scalar(batch, WEIGHT_KEY), mask

  return term


def uld_term(config: ml_collections.ConfigDict, mapping: np.ndarray | None):
  """``w`` x cross-tokenizer ULD (or GOLD's hybrid) aligned by byte offsets."""
  inner = objective_lib.cross_tokenizer_distill(
      vocab_mapping=mapping, temperature=config.xtok.temperature)

  def term(student, teacher, batch, step):
    values, mask = inner(student, teacher, batch, step)
    return values * _scalar(batch, WEIGHT_KEY), mask

  return term


def make_objective(variant: str, config: ml_collections.ConfigDict, *,
                   mapping: np.ndarray | None = None,
                   cache_temperature: float = 1.0) -> objective_lib.Objective:
  """The objective of a variant (the divergence's weight and temperature from the batch).

  `mapping` is the BPE -> byte vocabulary mapping of GOLD's hybrid (None:
  ULD alone); `cache_temperature` the temperature the teacher cache holds.
  """
  terms = {'ce': reference_labels_term}
  if variant in OFF_POLICY:
    terms['kd'] = divergence_term(None, config.kd)
  elif variant == 'gkd':
    terms['kd'] = divergence_term(config.onpolicy.divergence, config.kd)
  elif variant == 'minillm':
    terms['kd'] = minillm_term(config)
  elif variant == 'cached_forward_kl':
    terms['kd'] = cached_term(cache_temperature)
  elif variant == 'bpe_uld':
    terms['kd'] = uld_term(config, mapping)
  elif variant not in ('labels', 'labels_long', 'bpe_labels'):
    raise ValueError(f'variant must be one of {list(VARIANTS)}, got {variant!r}')
  return objective_lib.Objective(terms)


# ----------------------------------------------------------------------------
# Models, steps and evaluation.


class Model:
  """A DecoderLM of one size and vocabulary, its jitted init and held-out NLL."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, vocab_size: int, context: int):
    self.cfg = cfg
    self.decoder_config = zoo.DecoderConfig(
        vocab_size=vocab_size, num_layers=cfg.num_layers, hidden=cfg.hidden,
        num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim, max_len=context,
        positions=cfg.positions, dropout_rate=cfg.dropout)
    self.module = zoo.DecoderLM(self.decoder_config)
    self.apply = zoo.lm_apply(self.module)
    self.decoder = zoo.lm_decoder(self.module)
    self.example = jnp.zeros((1, context), jnp.int32)
    self.init_variables = jax.jit(
        lambda key: nn.meta.unbox(self.module.init(key, self.example, train=False)))

    def nll(variables, batch):
      outputs, _ = self.apply(variables, batch, train=False)
      mask = jnp.asarray(batch['mask'], jnp.float32)
      per_token = losses.cross_entropy(outputs.logits, batch['labels'])
      return jnp.sum(jnp.where(mask > 0, per_token, 0.0)), jnp.sum(batch['target_bytes'])

    self.nll = jax.jit(nll)

  def optimizer(self, steps: int):
    """AdamW (b2 = 0.99), warm-up and cosine decay over `steps`, clipping at 1."""
    return _common.warmup_cosine_adamw(self.cfg, steps, b2=0.99)

  def init_fn(self, optimizer):
    def init(key):
      return step_lib.init_train_state(self.init_variables(key), optimizer,
                                       rng=jax.random.fold_in(key, 1))
    return init


def padded_batches(arrays: Mapping[str, np.ndarray], batch_size: int, keys: Sequence[str]):
  """Batches of `keys`; the last is padded with zero rows (mask 0)."""
  num = len(arrays['tokens'])
  for start in range(0, num, batch_size):
    batch = {k: np.asarray(arrays[k][start:start + batch_size]) for k in keys}
    pad = batch_size - len(batch['tokens'])
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch, batch_size - pad


def bits_per_byte(model: Model, variables, arrays, batch_size: int) -> float:
  """Summed NLL of every real target, in bits, over the bytes those targets spell."""
  if 'target_bytes' not in arrays:
    arrays = {**arrays, 'target_bytes': np.asarray(arrays['mask'], np.float32)}
  nats = count = 0.0
  for batch, _ in padded_batches(arrays, batch_size, (*TRAIN_KEYS, 'target_bytes')):
    total, n = jax.device_get(model.nll(variables, batch))
    nats, count = nats + float(total), count + float(n)
  return nats / max(count, 1.0) / math.log(2.0)


def generation_prompts(arrays: Mapping[str, np.ndarray], config) -> dict[str, np.ndarray]:
  """``eval.num_prompts`` held-out windows spread over the split, cut to prompt + continuation.

  Only windows whose first ``prompt_width + new_tokens`` bytes are all real
  are used, evenly spaced (a deterministic choice); each keeps its first
  ``prompt_width`` bytes as the prompt and its reference continuation.
  """
  e = config.eval
  time_ = e.prompt_width + e.new_tokens - 1
  full = np.flatnonzero(arrays['mask'][:, :time_].min(axis=1) > 0)
  if full.size == 0:
    raise ValueError(f'no held-out window has {time_ + 1} real bytes for a prompt and its '
                     'continuation; lower eval.prompt_width or eval.new_tokens')
  rows = np.unique(full[np.linspace(0, full.size - 1, min(e.num_prompts, full.size)).astype(int)])
  mask = np.zeros((rows.size, time_), np.float32)
  mask[:, e.prompt_width - 1:] = 1.0  # the reference continuation's targets
  return {'tokens': arrays['tokens'][rows, :time_], 'labels': arrays['labels'][rows, :time_],
          'mask': mask, PROMPT_KEY: np.full(rows.size, e.prompt_width, np.int32)}


class GenerationEval:
  """Continuations of held-out prompts, sampled with a fixed key, scored by teachers."""

  def __init__(self, model: Model, teacher: Model, config):
    e = config.eval
    self.config = config
    sampler = onpolicy.make_on_policy_batch(
        model.decoder, method=generate.Sampling(temperature=e.temperature),
        prompt_width=e.prompt_width, max_new_tokens=e.new_tokens, fraction=1.0)
    self.sample = jax.jit(lambda v, b, key: sampler(v, b, key, jnp.zeros((), jnp.int32)))
    self.teacher = teacher

  def continuations(self, variables, prompts) -> dict[str, np.ndarray]:
    key = jax.random.PRNGKey(self.config.eval.seed)
    parts = []
    size = self.config.data.eval_batch_size
    for index, (batch, real) in enumerate(
        padded_batches(prompts, size, (*TRAIN_KEYS, PROMPT_KEY))):
      batch[PROMPT_KEY] = np.maximum(batch[PROMPT_KEY], 1)
      out = jax.device_get(self.sample(variables, batch, jax.random.fold_in(key, index)))
      parts.append({k: np.asarray(out[k])[:real] for k in TRAIN_KEYS})
    return {k: np.concatenate([p[k] for p in parts]) for k in TRAIN_KEYS}

  def teacher_nll(self, teacher_variables, rows) -> float:
    """Mean NLL per generated token (nats) under the teacher, teacher-forced."""
    nats = count = 0.0
    arrays = {**rows, 'target_bytes': rows['mask']}
    for batch, _ in padded_batches(arrays, self.config.data.eval_batch_size,
                                   (*TRAIN_KEYS, 'target_bytes')):
      total, n = jax.device_get(self.teacher.nll(teacher_variables, batch))
      nats, count = nats + float(total), count + float(n)
    return nats / max(count, 1.0)

  def evaluate(self, variables, prompts, teachers: Sequence, own: int) -> dict[str, float]:
    """``gen/teacher_nll`` (the own teacher's), ``gen/other_teacher_nll``, ``gen/distinct<n>``."""
    rows = self.continuations(variables, prompts)
    scores = [self.teacher_nll(t, rows) for t in teachers]
    out = {'gen/teacher_nll': scores[own]}
    if len(teachers) > 1:
      out['gen/other_teacher_nll'] = float(np.mean([s for i, s in enumerate(scores) if i != own]))
    generated = [row_labels[row_mask > 0] for row_labels, row_mask in
                 zip(rows['labels'], rows['mask'])]
    for n in self.config.eval.distinct_n:
      out[f'gen/distinct{n}'] = onpolicy.distinct_n(generated, n)
    return out


class Trainer(_common.Trainer):
  """One train step (objective, steps, optimizer), compiled once for every run of it.

  Logs the validation bits/byte every epoch; returns the final validation
  bits/byte, and the test split's only when asked (reported runs, at the end).
  """

  def __init__(self, model: Model, train_step, init_fn, *, epochs: int, batch_size: int,
               evals, eval_batch_size: int, progress: bool):
    self.model, self.evals, self.eval_batch_size = model, evals, eval_batch_size
    super().__init__(
        train_step, init_fn, lambda s: self.bits(s.variables, ('val',)), epochs=epochs,
        batch_size=batch_size, eval_every=1, save_every=1, progress=progress, write_final=True)

  def bits(self, variables, splits: Sequence[str]) -> dict[str, float]:
    return {f'{split}/bpb': bits_per_byte(self.model, variables, self.evals[split],
                                          self.eval_batch_size) for split in splits}

  def run(self, train, *, splits: Sequence[str], **kwargs):
    """Trains; returns the state and ``{'<split>/bpb', 'seconds', 'steps'}``."""
    self.final_evaluate = lambda s: self.bits(s.variables, splits)
    start = time.time()
    state, metrics = super().train(train, **kwargs)
    return state, {**metrics, 'seconds': time.time() - start, 'steps': int(state.step)}


# ----------------------------------------------------------------------------
# Selection of w and T on validation.


def _widened(grid: Sequence[float], index: int, *, multiplicative: bool,
             upper: float | None) -> float | None:
  """The next value past the edge at `index` (0 or -1), or None at the domain's edge."""
  grid = sorted(grid)
  if len(grid) < 2:
    return None
  if index == 0:
    value = (grid[0] ** 2 / grid[1] if multiplicative else grid[0] - (grid[1] - grid[0]))
    return value if value > 0 else (grid[0] / 2 if grid[0] > 0 else None)
  value = (grid[-1] ** 2 / grid[-2] if multiplicative else grid[-1] + (grid[-1] - grid[-2]))
  if upper is not None and grid[-1] >= upper:
    return None
  return min(value, upper) if upper is not None else value


def _edge_status(grid, best, multiplicative, upper):
  """``(index of the edge, next value past it)`` if `best` is on an edge, else None."""
  if len(grid) < 2:
    return (None, None)
  if best == grid[0]:
    return (0, _widened(grid, 0, multiplicative=multiplicative, upper=upper))
  if best == grid[-1]:
    return (-1, _widened(grid, -1, multiplicative=multiplicative, upper=upper))
  return None


def _edge_text(status) -> str:
  where, nxt = status
  if where is None:
    return 'a grid of one value'
  if nxt is None:
    return 'at the edge of its domain'
  return 'at the edge of the grid after the last widening'


def select(evaluate: Callable[[float, float], float], weights: Sequence[float],
           temperatures: Sequence[float], *, widen_rounds: int, search: str = 'grid') -> dict:
  """Search of ``(w, T)`` minimising ``evaluate(w, T)`` (validation bits/byte).

  ``search='grid'`` evaluates every pair of ``weights x temperatures``;
  ``'coordinate'`` one axis at a time: every ``w`` at the middle ``T``,
  then every ``T`` at the chosen ``w`` (``len(w) + len(T) - 1`` runs
  instead of their product). Either way, while a chosen value is the
  smallest or largest of its axis's grid, that axis gains the next value
  past the edge (``w``: the same step, never past 1 nor down to 0; ``T``:
  the same ratio) and the new points are evaluated, up to `widen_rounds`
  times per search. The record says where a final choice is still on an
  edge (``on_edge``), and why.
  """
  if search not in ('grid', 'coordinate'):
    raise ValueError(f"search must be 'grid' or 'coordinate', got {search!r}")
  weights, temperatures = sorted(set(weights)), sorted(set(temperatures))
  scores: dict[tuple[float, float], float] = {}

  def score(w, t):
    if (w, t) not in scores:
      scores[(w, t)] = float(evaluate(w, t))
    return scores[(w, t)]

  on_edge = {}
  if search == 'grid':
    for rounds in range(widen_rounds + 1):
      for w in weights:
        for t in temperatures:
          score(w, t)
      w_best, t_best = min(scores, key=lambda p: (scores[p], p))
      edges = {name: status for name, status in (
          ('w', _edge_status(weights, w_best, False, 1.0)),
          ('T', _edge_status(temperatures, t_best, True, None))) if status is not None}
      growable = {k: v[1] for k, v in edges.items() if v[1] is not None}
      if not growable or rounds == widen_rounds:
        break
      if 'w' in growable:
        weights = sorted({*weights, round(growable['w'], 6)})
      if 'T' in growable:
        temperatures = sorted({*temperatures, round(growable['T'], 6)})
    on_edge = {k: _edge_text(v) for k, v in edges.items()}
  else:
    def line(fn, grid, multiplicative, upper):
      for rounds in range(widen_rounds + 1):
        values = {x: fn(x) for x in grid}
        best = min(grid, key=lambda x: (values[x], x))
        status = _edge_status(grid, best, multiplicative, upper)
        if status is None or status[1] is None or rounds == widen_rounds:
          return best, grid, status
        grid = sorted({*grid, round(status[1], 6)})
      raise AssertionError('unreachable')

    t_middle = temperatures[(len(temperatures) - 1) // 2]
    w_best, weights, w_status = line(lambda w: score(w, t_middle), weights, False, 1.0)
    t_best, temperatures, t_status = line(lambda t: score(w_best, t), temperatures, True, None)
    on_edge = {k: _edge_text(v) for k, v in (('w', w_status), ('T', t_status))
               if v is not None}
  return {
      'search': search, 'weights': weights, 'temperatures': temperatures,
      'val_bpb': {f'w={w:g},T={t:g}': v for (w, t), v in sorted(scores.items())},
      'weight': w_best, 'temperature': t_best, 'on_edge': on_edge,
  }


# ----------------------------------------------------------------------------
# The run.


class Experiment:
  """Data, models, compiled trainers and teachers of one run (built once, shared)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    documents, self.data_info = load_texts(config)
    context = config.data.context
    self.bytes = {split: byte_arrays(docs, context) for split, docs in documents.items()}
    self.documents = documents
    self.teacher = Model(config.teacher, vocab_size=data_lib.BYTE_VOCAB_SIZE, context=context)
    self.student = Model(config.student, vocab_size=data_lib.BYTE_VOCAB_SIZE, context=context)
    self.trainers: dict[str, Trainer] = {}
    self.num_train = len(self.bytes['train']['tokens'])
    self.prompts = {split: generation_prompts(self.bytes[split], config) for split in ('test',)}
    self.generation = GenerationEval(self.student, self.teacher, config)
    self.teacher_generation = GenerationEval(self.teacher, self.teacher, config)
    self._bpe = None
    self.cache_temperature = 1.0  # set before the cached variant's trainer is built

  # -- compiled trainers, by name

  def _steps(self, cfg, num_rows, epochs=None):
    return num_rows // cfg.batch_size * (cfg.epochs if epochs is None else epochs)

  def trainer(self, variant: str) -> Trainer:
    """The compiled trainer of a variant (the off-policy divergences share one)."""
    if variant in OFF_POLICY:
      variant = OFF_POLICY[0]
    if variant in self.trainers:
      return self.trainers[variant]
    c = self.config
    common = dict(eval_batch_size=c.data.eval_batch_size, progress=c.progress)
    if variant == 'teacher':
      model, cfg, epochs, evals = self.teacher, c.teacher, c.teacher.epochs, self.bytes
    elif variant in ('bpe_labels', 'bpe_uld'):
      model, cfg, epochs, evals = self.bpe_model, c.student, c.student.epochs, self.bpe
    else:
      model, cfg, evals = self.student, c.student, self.bytes
      epochs = c.teacher.epochs if variant == 'labels_long' else c.student.epochs
    batch_size = c.teacher.batch_size if variant in ('teacher', 'labels_long') else cfg.batch_size
    rows = len(evals['train']['tokens'])
    steps = rows // batch_size * epochs
    optimizer = model.optimizer(steps)
    step = self._train_step(variant, model, optimizer)
    trainer = Trainer(model, step, model.init_fn(optimizer), epochs=epochs,
                      batch_size=batch_size, evals=evals, **common)
    # The model's init is compiled once per architecture; the optimizer state
    # is built eagerly around it (no init program per trainer).
    trainer.init = model.init_fn(optimizer)
    trainer.steps = steps
    self.trainers[variant] = trainer
    return trainer

  def _train_step(self, variant, model, optimizer):
    c = self.config
    labels_only = variant in ('teacher', 'labels', 'labels_long', 'bpe_labels')
    if variant == 'teacher':
      objective = make_objective('labels', c)
    else:
      objective = make_objective(
          variant, c, mapping=self.bpe_mapping if variant == 'bpe_uld' else None,
          cache_temperature=self.cache_temperature)
    if labels_only:
      return step_lib.make_train_step(model.apply, None, objective, optimizer)
    if variant == 'cached_forward_kl':
      return step_lib.make_train_step(model.apply, cache_lib.cached_teacher_apply, objective,
                                      optimizer)
    if variant == 'bpe_uld':
      teacher_apply = zoo.lm_apply(self.teacher.module, inputs='teacher_tokens')
      return step_lib.make_train_step(model.apply, teacher_apply, objective, optimizer)
    if variant in ('gkd', 'minillm'):
      method = generate.Sampling(temperature=(c.onpolicy.sample_temperature
                                              if variant == 'gkd' else 1.0))
      decoder = model.decoder
      if variant == 'minillm' and c.minillm.teacher_mix > 0:
        decoder = onpolicy.mixture_decoder(model.decoder, self.teacher.decoder,
                                           c.minillm.teacher_mix)
      sampler = onpolicy.make_on_policy_batch(
          decoder, method=method, prompt_width=c.onpolicy.prompt_width,
          fraction=c.onpolicy.fraction)
      return onpolicy.make_on_policy_train_step(
          model.apply, self.teacher.apply, objective, optimizer, sampler=sampler,
          teacher_decoder=variant == 'minillm' and c.minillm.teacher_mix > 0)
    return step_lib.make_train_step(model.apply, self.teacher.apply, objective, optimizer)

  # -- the BPE student's data (built on first use)

  def _build_bpe(self):
    c = self.config
    path = os.path.join(self.workdir, 'bpe.json')
    if os.path.exists(path):
      tokenizer = data_lib.BpeTokenizer.load(path)
    else:
      tokenizer = data_lib.train_tokenizer(
          [doc.decode('utf-8') for doc in self.documents['train']], vocab_size=c.xtok.vocab_size)
      tokenizer.save(path)
    arrays = {split: bpe_arrays(docs, tokenizer, c) for split, docs in self.documents.items()}
    mapping = data_lib.vocab_mapping(tokenizer, None) if c.xtok.hybrid else None
    model = Model(c.student, vocab_size=tokenizer.vocab_size, context=c.xtok.student_context)
    self._bpe = (tokenizer, arrays, mapping, model)

  @property
  def bpe(self):
    if self._bpe is None:
      self._build_bpe()
    return self._bpe[1]

  @property
  def bpe_mapping(self):
    if self._bpe is None:
      self._build_bpe()
    return self._bpe[2]

  @property
  def bpe_model(self):
    if self._bpe is None:
      self._build_bpe()
    return self._bpe[3]

  # -- training

  def train_data(self, variant: str, weight: float = 0.0, temperature: float = 1.0):
    """The training arrays a variant's step reads (hyper-parameters as columns)."""
    c = self.config
    if variant in ('bpe_labels', 'bpe_uld'):
      keys = [*TRAIN_KEYS, 'teacher_tokens', 'teacher_labels', 'student_chunk', 'teacher_chunk']
      arrays = {k: self.bpe['train'][k] for k in keys}
      return with_columns(arrays, **{WEIGHT_KEY: weight, TEMPERATURE_KEY: temperature})
    arrays = dict(self.bytes['train'])
    if variant in OFF_POLICY:
      arrays[DIVERGENCE_KEY] = np.full(len(arrays['tokens']), OFF_POLICY.index(variant), np.int32)
    if variant in ('gkd', 'minillm'):
      arrays[PROMPT_KEY] = prompt_lengths(arrays['mask'], c.onpolicy.prompt_width)
    return with_columns(arrays, **{WEIGHT_KEY: weight, TEMPERATURE_KEY: temperature})

  def train_teachers(self) -> tuple[list, list[dict]]:
    variables, metrics = [], []
    train = jax.device_put(self.train_data('labels'))
    for index, seed in enumerate(self.config.teacher_seeds):
      trainer = self.trainer('teacher')
      trainer.final_evaluate = lambda s: trainer.bits(s.variables, ('val', 'test'))
      start = time.time()
      v, m = _common.train_teacher(
          trainer, train, seed=seed, workdir=os.path.join(self.workdir, f'teacher{index}'),
          desc=f'teacher {index} (seed {seed})',
          config=_common.run_config(self.config, phase='teacher'))
      variables.append(v)
      metrics.append({**m, 'seconds': time.time() - start, 'seed': seed})
    return variables, metrics

  def train_student(self, variant: str, seed: int, teacher_variables, *, subdir: str,
                    splits: Sequence[str], weight: float = 0.0, temperature: float = 1.0,
                    data=None):
    trainer = self.trainer(variant)
    if data is None:
      data = self.train_data(variant, weight, temperature)
    state, metrics = trainer.run(
        jax.device_put(data), splits=splits, seed=seed + 1000,
        teacher_variables=teacher_variables, workdir=os.path.join(self.workdir, subdir),
        desc=subdir, config=_common.run_config(self.config, variant=variant, weight=weight,
                                               temperature=temperature))
    return state, metrics

  def write_cache(self, teacher_index: int, teacher_variables, temperature: float):
    """Writes (or reuses) teacher `teacher_index`'s top-k cache; returns the joined arrays."""
    c = self.config
    directory = os.path.join(self.workdir, 'cache', f'teacher{teacher_index}_T{temperature:g}')
    train = self.bytes['train']
    start = time.time()
    spec = cache_lib.write_cache(
        directory, self.teacher.apply, teacher_variables, train, k=c.cache.k,
        temperature=temperature, log_prob_format=c.cache.log_prob_format,
        index_encoding=c.cache.index_encoding, batch_size=c.data.eval_batch_size,
        teacher_id=f'teacher{teacher_index}')
    written = time.time() - start
    stored = cache_lib.TeacherCache(directory, expected=spec).read(range(spec.num_examples))
    # Held in memory as float16 log-probs and uint8 ids (a 256-token vocabulary).
    stored = {cache_lib.LOG_PROBS_KEY: stored[cache_lib.LOG_PROBS_KEY].astype(np.float16),
              cache_lib.INDICES_KEY: stored[cache_lib.INDICES_KEY].astype(np.uint8),
              cache_lib.TAIL_KEY: stored[cache_lib.TAIL_KEY].astype(np.float16)}
    info = {'bytes_per_token': spec.bytes_per_token, 'k': spec.k, 'seconds': written,
            'directory': os.path.relpath(directory, self.workdir)}
    return stored, info


def run(config: ml_collections.ConfigDict, workdir: str,
        command: Sequence[str] | None = None) -> dict:
  """Trains the teachers, selects w and T, trains every variant for every seed; writes results."""
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  c = config
  exp = Experiment(config, workdir)
  teachers, teacher_metrics = exp.train_teachers()
  teacher_of = lambda index: index % len(teachers)
  variants = tuple(c.variants)

  # Teachers' own generations: a reference point for the students'.
  for index, variables in enumerate(teachers):
    teacher_metrics[index].update(exp.teacher_generation.evaluate(
        variables, exp.prompts['test'], teachers, own=index))
  reference = {'gen/teacher_nll': float(np.mean([
      exp.generation.teacher_nll(t, exp.prompts['test']) for t in teachers]))}

  # w and T of each divergence, chosen on validation with the selection seed.
  needed = {v for v in variants if v in OFF_POLICY}
  if 'gkd' in variants:
    needed.add(c.onpolicy.divergence)
  if 'minillm' in variants:
    needed.add('reverse_kl')
  if 'cached_forward_kl' in variants:
    needed.add('forward_kl')
  selection = {}
  for divergence in [d for d in OFF_POLICY if d in needed]:
    def evaluate(w, t, divergence=divergence):
      _, metrics = exp.train_student(
          divergence, c.selection_seed, teachers[0], weight=w, temperature=t, splits=('val',),
          subdir=os.path.join('select', divergence, f'w{w:g}_T{t:g}'))
      return metrics['val/bpb']
    selection[divergence] = select(evaluate, c.kd.weights, c.kd.temperatures,
                                   widen_rounds=c.kd.widen_rounds, search=c.kd.search)

  def chosen(divergence):
    return selection[divergence]['weight'], selection[divergence]['temperature']

  caches, cache_info = {}, {}
  per_seed = []
  for index, seed in enumerate(c.seeds):
    t_index = teacher_of(index)
    t_vars = teachers[t_index]
    result = {}
    for variant in variants:
      weight, temperature = 0.0, 1.0
      if variant in OFF_POLICY:
        weight, temperature = chosen(variant)
      elif variant == 'gkd':
        weight, temperature = chosen(c.onpolicy.divergence)
      elif variant == 'minillm':
        weight, temperature = chosen('reverse_kl')
      elif variant == 'cached_forward_kl':
        weight, temperature = chosen('forward_kl')
      elif variant == 'bpe_uld':
        weight, temperature = c.xtok.weight, c.xtok.temperature
      data, teacher_variables = None, t_vars
      if variant in ('labels', 'labels_long', 'bpe_labels'):
        teacher_variables = None
      if variant == 'cached_forward_kl':
        exp.cache_temperature = temperature
        key = (t_index, temperature)
        if key not in caches:
          caches[key], cache_info[f'teacher{t_index}_T{temperature:g}'] = exp.write_cache(
              t_index, t_vars, temperature)
        data = {**exp.train_data(variant, weight, temperature), **caches[key]}
        teacher_variables = None
      state, metrics = exp.train_student(
          variant, seed, teacher_variables, weight=weight, temperature=temperature,
          splits=('val', 'test'), subdir=os.path.join(variant, f'seed{seed}'), data=data)
      metrics.update({'teacher': t_index, 'weight': weight, 'temperature': temperature})
      if variant not in ('bpe_labels', 'bpe_uld'):
        metrics.update(exp.generation.evaluate(state.variables, exp.prompts['test'], teachers,
                                               own=t_index))
      result[variant] = metrics
    per_seed.append(result)

  results = {
      'paper': 'Distilling a byte-level LM: Hinton et al. (2015), GKD (Agarwal et al. 2024), '
               'MiniLLM (Gu et al. 2024), DistiLLM (Ko et al. 2024), ULD (Boizard et al. 2024)',
      'config': config.to_dict(),
      'data': {split: {**exp.data_info[split],
                       'targets': int(exp.bytes[split]['mask'].sum()),
                       'windows': int(len(exp.bytes[split]['tokens']))}
               for split in ('train', 'val', 'test')},
      'params': {'teacher': zoo.param_count(exp.teacher.decoder_config),
                 'student': zoo.param_count(exp.student.decoder_config)},
      'steps': {name: trainer.steps for name, trainer in exp.trainers.items()},
      'teachers': teacher_metrics,
      'reference': reference,
      'selection': selection,
      'cache': cache_info,
      'per_seed': per_seed,
      'wall_seconds': time.time() - start,
      'finished': time.time(),
  }
  if exp._bpe is not None:  # pylint: disable=protected-access
    results['params']['bpe_student'] = zoo.param_count(exp.bpe_model.decoder_config)
    results['bpe'] = {'vocab_size': exp._bpe[0].vocab_size,  # pylint: disable=protected-access
                      'windows': int(len(exp.bpe['train']['tokens']))}
  results['summary'] = summarize(per_seed, variants)
  results['claims'] = claims(results)
  return _common.write_results(results, workdir, config, command or _common.command(MODULE, None))



# ----------------------------------------------------------------------------
# Summaries, claims and tables.

METRICS = ('val/bpb', 'test/bpb', 'gen/teacher_nll', 'gen/other_teacher_nll', 'seconds')


def summarize(per_seed: Sequence[Mapping[str, Mapping[str, float]]],
              variants: Sequence[str]) -> dict:
  """Mean, std and values over seeds of every metric each variant has."""
  summary = {}
  for variant in variants:
    keys = [k for k in per_seed[0][variant]
            if k in METRICS or k.startswith('gen/distinct')]
    summary[variant] = {k: _common.mean_std([r[variant][k] for r in per_seed]) for k in keys}
  return summary


# (claim, variant, baseline, metric, sign): the claim is sign * (variant - baseline) > 0;
# sign 0 marks a claim that the two match.
CLAIMS = (
    ('On-policy GKD beats off-policy distillation with the same divergence on generation '
     '(GKD)', 'gkd', '{onpolicy}', 'gen/teacher_nll', -1),
    ('On-policy GKD beats off-policy forward KL on generation (GKD)', 'gkd', 'forward_kl',
     'gen/teacher_nll', -1),
    ('Reverse KL beats forward KL on generation (MiniLLM)', 'reverse_kl', 'forward_kl',
     'gen/teacher_nll', -1),
    ('MiniLLM beats forward KL on generation (MiniLLM)', 'minillm', 'forward_kl',
     'gen/teacher_nll', -1),
    ('... but not on bits/byte: forward KL beats reverse KL there (MiniLLM; within the spread '
     'also agrees)', 'forward_kl', 'reverse_kl', 'test/bpb', -1),
    ('The cached top-k teacher matches the online teacher (bits/byte)', 'cached_forward_kl',
     'forward_kl', 'test/bpb', 0),
    ('The cached top-k teacher matches the online teacher (generation)', 'cached_forward_kl',
     'forward_kl', 'gen/teacher_nll', 0),
    ('Cross-tokenizer ULD beats labels only (BPE student, bits/byte)', 'bpe_uld', 'bpe_labels',
     'test/bpb', -1),
    ('Forward KL beats labels only at the student budget (bits/byte)', 'forward_kl', 'labels',
     'test/bpb', -1),
    ("Forward KL beats labels only at the teacher's token budget (bits/byte)", 'forward_kl',
     'labels_long', 'test/bpb', -1),
)


def claims(results: Mapping) -> list[dict]:
  """Each claim whose runs were made, judged from the recorded per-seed numbers."""
  config, per_seed = results['config'], results['per_seed']
  out = []
  for text, variant, baseline, metric, sign in CLAIMS:
    baseline = baseline.format(onpolicy=config['onpolicy']['divergence'])
    if not all(variant in r and baseline in r for r in per_seed):
      continue
    if not all(metric in r[variant] and metric in r[baseline] for r in per_seed):
      continue
    out.append({**_common.claim(f'{text} ({metric})', [r[variant][metric] for r in per_seed],
                                [r[baseline][metric] for r in per_seed],
                                test={1: '>', -1: '<', 0: '=='}[sign], digits=4),
                'variant': variant, 'baseline': baseline, 'metric': metric})
  return out


def per_seed_table(results: Mapping) -> str:
  """Every seed's test bits/byte and generation NLL of every student variant."""
  per_seed = results['per_seed']
  variants = [v for v in per_seed[0] if all(v in r for r in per_seed)]
  columns = {f'{VARIANT_NAMES[v]}, {name}': [r[v][metric] for r in per_seed]
             for metric, name in (('test/bpb', 'bits/byte'), ('gen/teacher_nll', 'gen NLL'))
             for v in variants if all(metric in r[v] for r in per_seed)}
  return '\n'.join(['Test numbers per seed:', '',
                    *_common.per_seed_table(results['config']['seeds'], columns, digits=3)])


def describe(results: Mapping) -> str:
  """One paragraph saying what was trained, from a run's recorded results."""
  config, data, params = results['config'], results['data'], results['params']
  t, s = config['teacher'], config['student']

  def model(m):
    return f"{m['num_layers']} layers × {m['hidden']} wide (MLP {m['mlp_dim']}, RoPE)"

  skipped = sorted({x['file'] for split in data.values() for x in split['skipped_tables']})
  return (
      f"Data: the Python standard library's `*.py` sources read as bytes, whole files held "
      f"out; excluded: tests, `{'/`, `'.join(config['data']['exclude_dirs'])}/` and "
      f"{len(skipped)} generated-table files met within the budgets "
      f"({', '.join(f'`{f}`' for f in skipped[:6])}{', ...' if len(skipped) > 6 else ''}). "
      f"Train {data['train']['bytes'] / 1e6:.2f} MB ({len(data['train']['files'])} files), "
      f"validation {data['val']['bytes'] / 1e3:.0f} kB, test {data['test']['bytes'] / 1e3:.0f} "
      f"kB; windows of {config['data']['context']} bytes. {len(results['teachers'])} teachers "
      f"({model(t)}, {params['teacher']:,} parameters, {t['epochs']} epochs); students "
      f"{model(s)}, {params['student']:,} parameters, {s['epochs']} epoch(s); student seed i "
      f"distils from teacher i mod {len(results['teachers'])} and is scored by it. "
      f"w and T chosen per divergence on validation bits/byte of seed "
      f"{config['selection_seed']} (not reported). On-policy rows: a share "
      f"{config['onpolicy']['fraction']:g} of each batch, continued by the student from "
      f"{config['onpolicy']['prompt_width']} bytes. Generation: {config['eval']['num_prompts']} "
      f"test prompts of {config['eval']['prompt_width']} bytes, {config['eval']['new_tokens']} "
      f"bytes sampled at T = {config['eval']['temperature']:g} with a fixed key, scored by the "
      f"teacher's mean NLL per generated byte (nats; lower = likelier under the teacher) and "
      f"distinct-n. Verdicts: paired differences over seeds with "
      f"{100 * _common.CONFIDENCE:g} % t intervals; shown = the interval excludes 0 on the "
      f"claimed side.")


def _stat(stats, digits=3):
  return _common.mean_std_text(stats, digits=digits) if stats else ''


def format_table(results: Mapping) -> str:
  """Markdown tables: teachers, students, the selection of w and T, and the claims."""
  lines = []
  distinct = [f'gen/distinct{n}' for n in results['config']['eval']['distinct_n']]
  rows = []
  for i, m in enumerate(results['teachers']):
    rows.append([f"teacher {i} (seed {m['seed']})", f"{m['test/bpb']:.3f}",
                 f"{m['val/bpb']:.3f}", f"{m['gen/teacher_nll']:.3f}",
                 *(f'{m[k]:.3f}' for k in distinct), f"{m['seconds']:.0f}"])
  lines += _common.markdown_table(
      ['teacher', 'test bits/byte', 'val bits/byte', 'own samples: NLL/byte',
       *(k.removeprefix('gen/') for k in distinct), 'train time (s)'], rows)
  lines += ['', f"Reference continuations of the test prompts: teacher NLL "
            f"{results['reference']['gen/teacher_nll']:.3f} nats/byte.", '']
  rows = []
  for variant, stats in results['summary'].items():
    first = results['per_seed'][0][variant]
    hyper = (f"w = {first['weight']:g}, T = {first['temperature']:g}"
             if variant not in ('labels', 'labels_long', 'bpe_labels') else '')
    rows.append([VARIANT_NAMES[variant], hyper, _stat(stats.get('test/bpb')),
                 _stat(stats.get('val/bpb')), _stat(stats.get('gen/teacher_nll')),
                 _stat(stats.get('gen/other_teacher_nll')),
                 *(_stat(stats.get(k)) for k in distinct),
                 f"{stats['seconds']['mean']:.0f}"])
  lines += _common.markdown_table(
      ['student', 'w, T', 'test bits/byte', 'val bits/byte', 'gen: own teacher NLL',
       'gen: other teacher NLL', *(k.removeprefix('gen/') for k in distinct), 'time (s)'],
      rows)
  selection = results.get('selection', {})
  if selection:
    lines += ['', f"Choice of w and T (validation bits/byte of seed "
              f"{results['config']['selection_seed']}, teacher 0; not reported above):", '']
    rows = []
    for divergence, record in selection.items():
      best = min(record['val_bpb'].values())
      grid = ', '.join(f'{k}: {v:.3f}' + (' (chosen)' if v == best else '')
                       for k, v in record['val_bpb'].items())
      edge = '; '.join(f'{k} {v}' for k, v in record['on_edge'].items()) or 'interior'
      rows.append([VARIANT_NAMES[divergence], grid, edge])
    lines += _common.markdown_table(['divergence', 'grid (val bits/byte)', 'chosen point'],
                                    rows)
  lines += ['', per_seed_table(results)]
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  _common.run_main(argv, module=MODULE, doc=__doc__, schema=configs.schema(), run=run,
                   report=lambda r: describe(r) + '\n\n' + format_table(r), claims=claims)


if __name__ == '__main__':
  main(sys.argv[1:])
