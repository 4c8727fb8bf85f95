"""TinyBERT (Jiao et al., 2020) and MiniLM (Wang et al., 2020, 2021) on the Debian Section task.

Jiao et al., "TinyBERT: Distilling BERT for Natural Language
Understanding", Findings of EMNLP 2020, arXiv:1909.10351: a small student
learns a BERT teacher layer by layer (attention scores before the softmax,
hidden states through a learnable projection, the embedding output; Eq.
7-9) and then its predictions (soft cross entropy, Eq. 10), in two stages:
GENERAL distillation on a large unlabelled corpus from the pre-trained
teacher, then TASK-SPECIFIC distillation from the fine-tuned teacher on
task data augmented by word replacement (Algorithm 1: each word replaced
with probability p_t by one of K candidates, a masked language model's for
one-piece words and word-vector neighbours for the others; N_a new
examples per example), the intermediate layers first and then the
prediction layer.

Wang et al., "MiniLM", NeurIPS 2020, arXiv:2002.10957, and "MiniLMv2",
Findings of ACL 2021, arXiv:2012.15828, transfer the LAST layer's
self-attention instead: the attention distributions' KL and the
value-value relation's KL (v1), or the query-query, key-key and
value-value relations with their own relation heads (v2).

Here the teacher is all-MiniLM-L6-v2 with a linear classifier on its
mean-pooled last layer, fine-tuned on the Debian Section task; the student
a narrower, shallower :class:`kdjax.zoo.BertEncoder` with the teacher's
tokenizer. all-MiniLM-L6-v2 has no masked-LM head, so the augmentation's
MLM is the frozen pre-trained teacher with an MLM head trained here on the
prose (the head's output tied to the teacher's word embeddings, as BERT's);
GloVe is not offline, so a many-piece word's neighbours are the words of
the augmented texts nearest to it by the pre-trained teacher's sentence
embedding of the word alone. Variants (every one the same student, data
order and budget):

* ``tinybert``: general distillation (TinyBERT's losses), augmentation,
  intermediate then prediction-layer distillation;
* ``no_general``: the same from a randomly initialised student;
* ``no_augmentation``: the task stage on the original training data;
* ``no_intermediate``: the task stage's prediction-layer distillation only
  (for both stages' steps);
* ``minilm`` / ``minilmv2``: MiniLM's / MiniLMv2's losses instead of
  TinyBERT's layer-wise ones in general distillation and in the task
  stage's first step, then the same prediction-layer distillation;
* ``finetune``: the generally distilled student fine-tuned on the labels
  alone (no task-specific distillation).

The prediction stage's learning rate is chosen on validation accuracy with
the ``tinybert`` variant and a selection seed that is not reported; every
run keeps its best validation step; the test split is scored once per run,
at the end. Usage::

    python -m experiments.tinybert --config=experiments/configs/tinybert.py:cpu \\
        --workdir=runs/tinybert_cpu
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import importlib
import importlib.util
import os
import sys
import time
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import _common
from experiments.configs import tinybert as tinybert_configs
from kdjax import data as data_lib
from kdjax import metrics as metrics_lib
from kdjax import objective as objective_lib
from kdjax import recipes
from kdjax import step as step_lib
from kdjax import zoo
from kdjax._outputs import Outputs

MODULE = 'experiments.tinybert'
SPLITS = ('train', 'validation', 'test')
TEACHER_LOGITS = 'teacher_logits'


@dataclasses.dataclass(frozen=True)
class Variant:
  """What a variant does: its layer-wise losses and which steps it takes."""

  losses: str  # 'tinybert', 'minilm' or 'minilmv2'
  general: bool  # starts from the generally distilled student (else random)
  augmented: bool  # the task stage reads the augmented training set
  intermediate: bool  # the task stage's first step distils the intermediate layers
  distill_prediction: bool  # the last step: soft cross entropy (else labels' cross entropy)


VARIANTS = {
    'tinybert': Variant('tinybert', True, True, True, True),
    'no_general': Variant('tinybert', False, True, True, True),
    'no_augmentation': Variant('tinybert', True, False, True, True),
    'no_intermediate': Variant('tinybert', True, True, False, True),
    'minilm': Variant('minilm', True, True, True, True),
    'minilmv2': Variant('minilmv2', True, True, True, True),
    'finetune': Variant('tinybert', True, False, False, False),
}
assert tuple(VARIANTS) == tinybert_configs.VARIANTS


# ----------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class Encoded:
  """Token ids of texts cut to ``max_tokens`` ([CLS] ... [SEP]), and their words.

  ``words[i]`` is text ``i``'s words as tuples of word-piece ids, in order,
  without [CLS] and [SEP] (the tokenizer's pre-tokenizer splits words at
  spaces and punctuation; a word's pieces share a ``word_id``).
  """

  tokens: np.ndarray  # int32 [n, max_tokens]
  lengths: np.ndarray  # int32 [n]
  words: list[list[tuple[int, ...]]]


def encode_texts(tokenizer, texts: Sequence[str], max_tokens: int) -> Encoded:
  """Tokenizes `texts`, keeping the whole words that fit ``max_tokens - 2`` pieces."""
  cls_id, sep_id = tokenizer.token_to_id('[CLS]'), tokenizer.token_to_id('[SEP]')
  words = []
  for encoding in tokenizer.encode_batch(list(texts)):
    groups: list[list[int]] = []
    last = None
    for piece, word_id in zip(encoding.ids, encoding.word_ids):
      if word_id is None:
        continue
      if word_id != last:
        groups.append([])
        last = word_id
      groups[-1].append(piece)
    words.append([tuple(g) for g in groups])
  tokens, lengths = pack(words, max_tokens, cls_id, sep_id)
  return Encoded(tokens, lengths, [_fitting_words(w, max_tokens) for w in words])


def _fitting_words(words: Sequence[tuple[int, ...]], max_tokens: int) -> list[tuple[int, ...]]:
  kept, used = [], 0
  for word in words:
    if used + len(word) > max_tokens - 2:
      break
    kept.append(word)
    used += len(word)
  return kept


def pack(examples: Sequence[Sequence[tuple[int, ...]]], max_tokens: int, cls_id: int,
         sep_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Word lists -> ``[CLS] pieces [SEP]`` rows of ``max_tokens`` (whole words that fit)."""
  tokens = np.zeros((len(examples), max_tokens), np.int32)
  lengths = np.zeros(len(examples), np.int32)
  for i, words in enumerate(examples):
    pieces = [p for word in _fitting_words(words, max_tokens) for p in word]
    row = [cls_id, *pieces, sep_id]
    tokens[i, :len(row)] = row
    lengths[i] = len(row)
  return tokens, lengths


def _subset(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
  return np.arange(n) if not limit or limit >= n else np.sort(rng.choice(n, limit, replace=False))


def read_task(config: ml_collections.ConfigDict) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
  """``{split: {'text': str [n], 'label': int [n]}}`` and the class names."""
  d = config.data
  if d.source == 'tfds':
    arrays = {}
    for split in SPLITS:
      source = data_lib.load_source('debian_sections', split, data_dir=d.data_dir,
                                    download=False)
      rows = [source[i] for i in range(len(source))]
      arrays[split] = {'text': [r['text'].decode() if isinstance(r['text'], bytes)
                                else str(r['text']) for r in rows],
                       'label': np.asarray([int(r['label']) for r in rows])}
    return arrays, {'classes': list(data_lib.DEBIAN_SECTIONS), 'source': d.data_dir}
  if d.source == 'descriptions':
    splits, report = data_lib.make_section_splits(
        data_lib.read_descriptions(d.descriptions_file), per_class=d.per_class,
        val_fraction=d.val_fraction, test_fraction=d.test_fraction)
    index = {s: i for i, s in enumerate(data_lib.DEBIAN_SECTIONS)}
    arrays = {split: {'text': [x.text for x in items],
                      'label': np.asarray([index[x.section] for x in items])}
              for split, items in splits.items()}
    return arrays, {'classes': list(data_lib.DEBIAN_SECTIONS),
                    'source': d.descriptions_file, 'split_report': report}
  arrays = data_lib.make_glue_arrays(d.glue_config, data_dir=d.data_dir or None)
  arrays = {s: {'text': [str(t) for t in a['text']], 'label': np.asarray(a['label'])}
            for s, a in arrays.items()}
  classes = int(max(a['label'].max() for a in arrays.values())) + 1
  return arrays, {'classes': [str(c) for c in range(classes)], 'source': f'glue/{d.glue_config}'}


def read_prose(config: ml_collections.ConfigDict) -> list[str]:
  d = config.data
  if d.prose_file:
    with open(d.prose_file, encoding='utf-8') as f:
      paragraphs = [line.strip() for line in f if line.strip()]
  else:
    paragraphs = data_lib.read_text_shards(d.prose_dir)
  chosen = _subset(len(paragraphs), d.max_prose, np.random.default_rng(d.subset_seed + 1))
  return [paragraphs[i] for i in chosen]


@dataclasses.dataclass
class Data:
  """The task (encoded per split, labels), the prose, and the class names."""

  task: dict[str, Encoded]
  labels: dict[str, np.ndarray]
  texts: dict[str, list[str]]
  prose: Encoded
  classes: list[str]
  report: dict[str, Any]


def load_data(config: ml_collections.ConfigDict, tokenizer) -> Data:
  """Reads, subsets (seeded) and tokenizes the task and the prose."""
  d = config.data
  arrays, report = read_task(config)
  rng = np.random.default_rng(d.subset_seed)
  limits = {'train': d.max_train, 'validation': d.max_val, 'test': d.max_test}
  task, labels, texts = {}, {}, {}
  for split in SPLITS:
    chosen = _subset(len(arrays[split]['text']), limits[split], rng)
    texts[split] = [arrays[split]['text'][i] for i in chosen]
    labels[split] = np.asarray(arrays[split]['label'])[chosen].astype(np.int32)
    task[split] = encode_texts(tokenizer, texts[split], d.max_tokens)
  prose = encode_texts(tokenizer, read_prose(config), d.max_tokens)
  report = {**report, 'examples': {s: int(len(labels[s])) for s in SPLITS},
            'prose_paragraphs': int(len(prose.lengths)),
            'cut_fraction': {s: float(np.mean(task[s].lengths == d.max_tokens)) for s in SPLITS}}
  return Data(task, labels, texts, prose, report.pop('classes'), report)


# ----------------------------------------------------------------------------
# TinyBERT's data augmentation (Algorithm 1).


def replaceable(pieces: Sequence[str]) -> bool:
  """A word that augmentation may replace: letters only (no number, symbol or [UNK])."""
  text = ''.join(p.removeprefix('##') for p in pieces)
  return text.isalpha() and text.isascii() and not pieces[0].startswith('##')


def augment_examples(
    words: Sequence[Sequence[tuple[int, ...]]],
    candidates: Sequence[Sequence[Sequence[tuple[int, ...]]]],
    *, num_augmented: int, replace_prob: float, rng: np.random.Generator,
) -> tuple[list[list[tuple[int, ...]]], list[int], dict[str, int]]:
  """TinyBERT's Algorithm 1: ``num_augmented`` new examples per example by word replacement.

  Each word of each new example is, independently with probability
  `replace_prob` (``p_t``), replaced by one of its candidates drawn
  uniformly; a word without candidates is kept.

  Args:
    words: per example, its words as tuples of word-piece ids.
    candidates: ``candidates[i][j]``, the replacement words of word ``j``
      of example ``i`` (none equal to the word itself; empty: kept).
    num_augmented: ``N_a``.
    replace_prob: ``p_t``.
    rng: the NumPy generator (the same seed gives the same examples).

  Returns:
    ``(new examples, source index of each, counts)``: the new examples'
    word lists, for each the index of the example it came from (its label
    is that example's), and ``{'replaceable', 'replaced'}`` word counts.

  References:
    Jiao et al., "TinyBERT", arXiv:1909.10351 (Section 3.3, Algorithm 1).
  """
  if len(words) != len(candidates):
    raise ValueError(f'words has {len(words)} examples but candidates {len(candidates)}')
  out, source, counts = [], [], {'replaceable': 0, 'replaced': 0}
  for i, (example, options) in enumerate(zip(words, candidates)):
    if len(example) != len(options):
      raise ValueError(f'example {i} has {len(example)} words but {len(options)} candidate lists')
    for _ in range(num_augmented):
      draws = rng.random(len(example))
      new = []
      for word, choices, draw in zip(example, options, draws):
        if choices:
          counts['replaceable'] += 1
          if draw < replace_prob:
            counts['replaced'] += 1
            word = choices[int(rng.integers(len(choices)))]
        new.append(word)
      out.append(new)
      source.append(i)
  return out, source, counts


class MlmHead(nn.Module):
  """BERT's masked-LM head on given hidden states: dense, GELU, LayerNorm, tied output."""

  hidden: int
  vocab_size: int
  layer_norm_eps: float = 1e-12

  @nn.compact
  def __call__(self, hidden: jax.Array, word_embedding: jax.Array) -> jax.Array:
    y = nn.Dense(self.hidden, kernel_init=nn.initializers.normal(0.02), name='transform')(hidden)
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, name='norm')(nn.gelu(y, approximate=False))
    bias = self.param('bias', nn.initializers.zeros, (self.vocab_size,))
    logits = jnp.einsum('...d,vd->...v', y, word_embedding)
    return logits + bias.reshape((1,) * (logits.ndim - 1) + bias.shape)


def mask_positions(lengths: np.ndarray, width: int, prob: float,
                   rng: np.random.Generator) -> np.ndarray:
  """Positions to mask, bool ``[n, width]``: each real non-special token with `prob`, >= 1 a row."""
  n = len(lengths)
  inner = (np.arange(width)[None] >= 1) & (np.arange(width)[None] < lengths[:, None] - 1)
  chosen = inner & (rng.random((n, width)) < prob)
  for i in np.flatnonzero(~chosen.any(axis=1) & inner.any(axis=1)):
    chosen[i, rng.choice(np.flatnonzero(inner[i]))] = True
  return chosen


class Augmenter:
  """Makes the augmented set: the MLM (the frozen teacher, a trained head) and word neighbours."""

  def __init__(self, teacher: zoo.BertCheckpoint, config: ml_collections.ConfigDict):
    self.teacher, self.config = teacher, config
    cfg = teacher.model.config
    self.head = MlmHead(cfg.hidden, cfg.vocab_size, cfg.layer_norm_eps)
    self.mask_id = teacher.tokenizer.token_to_id('[MASK]')
    vocab = teacher.tokenizer.get_vocab()
    self.pieces = [''] * cfg.vocab_size
    for piece, i in vocab.items():
      self.pieces[i] = piece
    # Candidates of the MLM: whole-word pieces made of letters.
    self.allowed = np.asarray([len(p) > 1 and replaceable([p]) and not p.startswith('[')
                               for p in self.pieces])
    model = self.encoder_model = zoo.BertEncoder(
        dataclasses.replace(cfg, pooler=False, mlm_head=False))
    self.encoder_variables = {'params': encoder_params(teacher.variables['params'])}

    def hidden_at(variables, tokens, lengths, positions):
      mask = (jnp.arange(tokens.shape[1])[None] < lengths[:, None]).astype(jnp.int32)
      sequence = model.apply(variables, tokens, mask).features['sequence']
      return jnp.take_along_axis(sequence, positions[..., None], axis=1)

    def mlm_loss(head_params, variables, tokens, lengths, positions, targets, weights):
      hidden = jax.lax.stop_gradient(hidden_at(variables, tokens, lengths, positions))
      word = variables['params']['word_embedding']
      logits = self.head.apply({'params': head_params}, hidden, word)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
      return jnp.sum(loss * weights) / jnp.maximum(jnp.sum(weights), 1.0)

    self._optimizer = optax.adam(config.augment.mlm_learning_rate)

    @jax.jit
    def mlm_step(head_params, opt_state, variables, tokens, lengths, positions, targets, weights):
      loss, grads = jax.value_and_grad(mlm_loss)(head_params, variables, tokens, lengths,
                                                 positions, targets, weights)
      updates, opt_state = self._optimizer.update(grads, opt_state, head_params)
      return optax.apply_updates(head_params, updates), opt_state, loss

    @jax.jit
    def top_candidates(head_params, variables, tokens, lengths, positions, allowed):
      hidden = hidden_at(variables, tokens, lengths, positions)
      logits = self.head.apply({'params': head_params}, hidden,
                               variables['params']['word_embedding'])
      logits = jnp.where(allowed[None, None], logits, -jnp.inf)
      return jax.lax.top_k(logits, config.augment.candidates + 1)

    self._mlm_step, self._top_candidates = mlm_step, top_candidates
    self.head_params = None

  def _masked_batch(self, encoded: Encoded, rows: np.ndarray, rng: np.random.Generator):
    tokens = encoded.tokens[rows].copy()
    chosen = mask_positions(encoded.lengths[rows], tokens.shape[1],
                            self.config.augment.mask_prob, rng)
    per_row = max(1, int(chosen.sum(axis=1).max()))
    positions = np.zeros((len(rows), per_row), np.int32)
    targets = np.zeros((len(rows), per_row), np.int32)
    weights = np.zeros((len(rows), per_row), np.float32)
    for i in range(len(rows)):
      where = np.flatnonzero(chosen[i])
      positions[i, :len(where)] = where
      targets[i, :len(where)] = tokens[i, where]
      weights[i, :len(where)] = 1.0
      tokens[i, where] = self.mask_id
    return tokens, positions, targets, weights

  def train_head(self, prose: Encoded, heldout: Encoded) -> dict[str, Any]:
    """Trains the MLM head on the prose (the teacher frozen); its held-out accuracy."""
    a = self.config.augment
    rng = np.random.default_rng(a.seed)
    variables = self.encoder_variables
    shapes = jax.eval_shape(self.head.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 1, self.head.hidden)),
                            variables['params']['word_embedding'])['params']
    params = self.teacher.variables['params']
    if a.mlm_steps == 0:
      if not self.teacher.model.config.mlm_head:
        raise ValueError('augment.mlm_steps=0 uses the teacher checkpoint\'s own masked-LM '
                         'head, but it has none (no cls.predictions.* tensors): train one '
                         'with augment.mlm_steps > 0')
      # The checkpoint's own head (BERT's MLM transform, LayerNorm and output bias).
      self.head_params = {'transform': params['mlm_transform'], 'norm': params['mlm_norm'],
                          'bias': params['mlm_bias']}
    else:
      self.head_params = init_params(shapes, a.seed, 0.02)
    opt_state = self._optimizer.init(self.head_params)
    start, losses = time.time(), []
    n = len(prose.lengths)
    width = self.config.augment.mlm_batch_size
    for _ in range(a.mlm_steps):
      rows = rng.choice(n, min(width, n), replace=False)
      tokens, positions, targets, weights = self._masked_batch(prose, rows, rng)
      positions = _pad_columns(positions, 16)
      targets, weights = _pad_columns(targets, 16), _pad_columns(weights, 16)
      self.head_params, opt_state, loss = self._mlm_step(
          self.head_params, opt_state, variables, tokens, prose.lengths[rows], positions,
          targets, weights)
      losses.append(float(loss))
    seconds = time.time() - start
    # Held-out: how often the masked word is the MLM's first / among its K candidates.
    # As many rows as mlm_candidates' batches: the same compiled program.
    rows = np.arange(min(len(heldout.lengths), self.config.eval.batch_size))
    tokens, positions, targets, weights = self._masked_batch(heldout, rows, rng)
    positions, targets, weights = (_pad_columns(x, 8) for x in (positions, targets, weights))
    _, top = self._top_candidates(self.head_params, variables, tokens, heldout.lengths[rows],
                                  positions, np.ones_like(self.allowed))
    top, real = np.asarray(top), weights > 0
    hit = top == targets[..., None]
    return {'steps': int(a.mlm_steps), 'seconds': seconds,
            'final_loss': float(np.mean(losses[-20:])) if losses else None,
            'heldout_top1': float(hit[..., 0][real].mean()),
            f'heldout_top{a.candidates}': float(hit[..., :a.candidates].any(-1)[real].mean())}

  def mlm_candidates(self, encoded: Encoded, rows: Sequence[int]) -> dict[tuple[int, int], list]:
    """``{(example, word): [candidate words]}`` for the one-piece replaceable words of `rows`.

    Words ``mask_stride`` apart are masked together (one forward per
    residue); ``mask_stride`` at least the number of words masks one word
    a forward, as the paper. The candidates are the MLM's top ``K`` whole
    words made of letters, the word itself left out.
    """
    a, cls_id = self.config.augment, self.teacher.tokenizer.token_to_id('[CLS]')
    sep_id = self.teacher.tokenizer.token_to_id('[SEP]')
    width = encoded.tokens.shape[1]
    jobs = []  # (example, masked word indices, their token positions)
    for i in rows:
      words = encoded.words[i]
      starts = np.cumsum([1] + [len(w) for w in words])[:-1]
      single = [j for j, w in enumerate(words) if len(w) == 1
                and replaceable([self.pieces[w[0]]])]
      for residue in range(a.mask_stride):
        chosen = [j for j in single if j % a.mask_stride == residue]
        if chosen:
          jobs.append((i, chosen, [int(starts[j]) for j in chosen]))
    out = {}
    batch = self.config.eval.batch_size
    for begin in range(0, len(jobs), batch):
      part = jobs[begin:begin + batch]
      tokens = np.zeros((batch, width), np.int32)
      lengths = np.full(batch, 2, np.int32)
      tokens[:, 0], tokens[:, 1] = cls_id, sep_id
      per_row = _round_up(max(len(p) for _, _, p in part), 8)
      positions = np.zeros((batch, per_row), np.int32)
      for r, (i, _, where) in enumerate(part):
        tokens[r] = encoded.tokens[i]
        lengths[r] = encoded.lengths[i]
        tokens[r, where] = self.mask_id
        positions[r, :len(where)] = where
      _, top = self._top_candidates(self.head_params, self.encoder_variables, tokens, lengths,
                                    positions, self.allowed)
      top = np.asarray(top)
      for r, (i, chosen, where) in enumerate(part):
        for c, j in enumerate(chosen):
          own = encoded.words[i][j][0]
          out[(i, j)] = [(int(t),) for t in top[r, c] if t != own][:a.candidates]
    return out

  def neighbour_candidates(self, encoded: Encoded,
                           rows: Sequence[int]) -> dict[tuple[int, int], list]:
    """``{(example, word): [words]}`` for the many-piece replaceable words: nearest words.

    GloVe's stand-in: each distinct replaceable word of `rows` is embedded
    alone by the pre-trained teacher (sentence-transformers' mean-pooled,
    normalised embedding); a many-piece word's candidates are the ``K``
    other words nearest by cosine.
    """
    a = self.config.augment
    vocabulary = sorted({w for i in rows for w in encoded.words[i]
                         if replaceable([self.pieces[p] for p in w])})
    if not vocabulary:
      return {}
    index = {w: k for k, w in enumerate(vocabulary)}
    width = _round_up(max(len(w) for w in vocabulary) + 2, 8)
    cls_id = self.teacher.tokenizer.token_to_id('[CLS]')
    sep_id = self.teacher.tokenizer.token_to_id('[SEP]')
    tokens, lengths = pack([[w] for w in vocabulary], width, cls_id, sep_id)
    embed = _embed_fn(self.encoder_model)
    vectors = np.concatenate([
        np.asarray(embed(self.encoder_variables, *_pad_rows(tokens[s:s + 256], lengths[s:s + 256],
                                                            256)))[:len(tokens[s:s + 256])]
        for s in range(0, len(tokens), 256)])
    multi = sorted({w for i in rows for w in encoded.words[i] if len(w) > 1 and w in index})
    nearest_of = {}
    for begin in range(0, len(multi), 512):
      part = multi[begin:begin + 512]
      own = np.asarray([index[w] for w in part])
      similarity = vectors[own] @ vectors.T
      similarity[np.arange(len(part)), own] = -np.inf
      order = np.argsort(-similarity, axis=1, kind='stable')[:, :a.candidates]
      for w, row in zip(part, order):
        nearest_of[w] = [vocabulary[k] for k in row if k != index[w]]
    return {(i, j): nearest_of[w] for i in rows for j, w in enumerate(encoded.words[i])
            if w in nearest_of}

  def augment(self, encoded: Encoded, labels: np.ndarray) -> tuple[Encoded, np.ndarray, dict]:
    """The augmented training set: every example, plus N_a new ones for the first ``examples``."""
    a = self.config.augment
    rng = np.random.default_rng(a.seed)
    n = len(labels)
    rows = _subset(n, a.examples, rng)
    start = time.time()
    found = {**self.mlm_candidates(encoded, rows), **self.neighbour_candidates(encoded, rows)}
    candidates = [[found.get((i, j), []) for j in range(len(encoded.words[i]))] for i in rows]
    new, source, counts = augment_examples([encoded.words[i] for i in rows], candidates,
                                           num_augmented=a.num_augmented,
                                           replace_prob=a.replace_prob, rng=rng)
    cls_id = self.teacher.tokenizer.token_to_id('[CLS]')
    sep_id = self.teacher.tokenizer.token_to_id('[SEP]')
    tokens, lengths = pack(new, encoded.tokens.shape[1], cls_id, sep_id)
    augmented = Encoded(np.concatenate([encoded.tokens, tokens]),
                        np.concatenate([encoded.lengths, lengths]), encoded.words + new)
    new_labels = np.concatenate([labels, labels[rows][np.asarray(source, np.int64)]])
    one_piece = sum(1 for (i, j) in found if len(encoded.words[i][j]) == 1)
    report = {'examples_augmented': int(len(rows)), 'new_examples': int(len(new)),
              'train_examples': int(len(new_labels)), 'seconds': time.time() - start,
              'one_piece_words': one_piece, 'many_piece_words': len(found) - one_piece,
              **counts,
              'replaced_fraction': counts['replaced'] / max(counts['replaceable'], 1)}
    return augmented, new_labels.astype(np.int32), report


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def _pad_columns(x: np.ndarray, multiple: int) -> np.ndarray:
  """Pads axis 1 with zeros to a multiple of `multiple` (few compiled shapes)."""
  extra = _round_up(x.shape[1], multiple) - x.shape[1]
  return np.pad(x, ((0, 0), (0, extra))) if extra else x


def _pad_rows(tokens: np.ndarray, lengths: np.ndarray, rows: int):
  """Pads a batch to `rows` rows (copies of the last), so one shape compiles once."""
  extra = rows - len(tokens)
  if extra <= 0:
    return tokens, lengths
  return (np.concatenate([tokens, np.repeat(tokens[-1:], extra, 0)]),
          np.concatenate([lengths, np.repeat(lengths[-1:], extra)]))


def _embed_fn(model: zoo.BertEncoder):

  @jax.jit
  def embed(variables, tokens, lengths):
    mask = (jnp.arange(tokens.shape[1])[None] < lengths[:, None]).astype(jnp.int32)
    return zoo.sentence_embedding(model.apply(variables, tokens, mask).features['sequence'],
                                  mask)

  return embed


# ----------------------------------------------------------------------------
# Models, objectives, steps.


def init_params(shapes, seed: int, std: float) -> dict:
  """BERT's initialisation drawn with NumPy: normal(0, std) weights, zero biases, unit scales."""
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name == 'scale':
      return jnp.ones(shape.shape, shape.dtype)
    if name == 'bias' or name.endswith('_bias'):
      return jnp.zeros(shape.shape, shape.dtype)
    return jnp.asarray(rng.normal(0.0, std, shape.shape), shape.dtype)

  return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes))


def classifier_head(width: int, classes: int, seed: int) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  return {'kernel': jnp.asarray(rng.normal(0.0, 0.02, (width, classes)), jnp.float32),
          'bias': jnp.zeros((classes,), jnp.float32)}


def classifier_apply(model: zoo.BertEncoder, features: Sequence[str] = ()):
  """A kdjax ``apply`` of an encoder plus a linear classifier on its mean-pooled last layer.

  Variables ``{'params': {'encoder': ..., 'classifier': {'kernel', 'bias'}}}``;
  reads ``batch['tokens']`` and ``batch['token_mask']``; ``logits`` are the
  classifier's ``[batch, classes]``, ``features`` the encoder's.
  """
  encoder = zoo.bert_apply(model, features=features)

  def apply(variables, batch, *, train, rngs=None):
    params = variables['params']
    outputs, _ = encoder({'params': params['encoder']}, batch, train=train, rngs=rngs)
    head = params['classifier']
    logits = outputs.features['mean_pooled'] @ head['kernel'] + head['bias'][None]
    return Outputs(logits=logits, features=outputs.features), {}

  return apply


FEATURES = {  # (student's, teacher's) feature kinds per loss family
    'tinybert': (('projected', 'scores'), ('hidden', 'scores')),
    'minilm': (('scores', 'value'), ('scores', 'value')),
    'minilmv2': (('query', 'key', 'value'), ('query', 'key', 'value')),
}


def intermediate_objective(family: str, student: zoo.BertConfig, teacher: zoo.BertConfig,
                           relation_heads: int) -> objective_lib.Objective:
  """The layer-wise objective of a loss family (TinyBERT's, MiniLM's or MiniLMv2's)."""
  if family == 'tinybert':
    return recipes.tinybert_intermediate_objective(
        objective_lib.LayerMap.uniform(student.num_layers, teacher.num_layers))
  last = {'student_block': student.num_layers - 1, 'teacher_block': teacher.num_layers - 1}
  if family == 'minilm':
    return objective_lib.Objective(terms={
        'attention': objective_lib.minilm_attention(**last),
        'value_relation': objective_lib.minilm_relations(
            **last, num_relation_heads=student.num_heads, relations=('value',)),
    })
  return objective_lib.Objective(terms={
      'relations': objective_lib.minilm_relations(**last, num_relation_heads=relation_heads),
  })


def prediction_objective(distill: bool, temperature: float) -> objective_lib.Objective:
  if distill:
    return recipes.tinybert_prediction_objective(temperature=temperature)
  return objective_lib.Objective(terms={'ce': objective_lib.supervised()})


def make_optimizer(weight_decay: float, warmup_steps: int) -> optax.GradientTransformation:
  """AdamW with the learning rate in its state (one compile for every rate), linear warm-up."""
  warmup = lambda count: jnp.minimum(1.0, (count + 1) / max(warmup_steps, 1))
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=weight_decay),
      optax.scale_by_schedule(warmup),
  )


def with_learning_rate(state, learning_rate: float):
  """The state with the AdamW learning rate set (see :func:`make_optimizer`)."""
  chain = list(state.opt_state)
  hyper = dict(chain[1].hyperparams)
  hyper['learning_rate'] = jnp.asarray(learning_rate, jnp.asarray(hyper['learning_rate']).dtype)
  chain[1] = chain[1]._replace(hyperparams=hyper)
  return state.replace(opt_state=tuple(chain))


HEAD_PARAMS = ('pooler', 'mlm_transform', 'mlm_norm', 'mlm_bias')


def encoder_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """A BertEncoder's params without its pooler and masked-LM head."""
  return {k: v for k, v in params.items() if k not in HEAD_PARAMS}


def _copy(tree):
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def count_params(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------
# The experiment.


class Experiment:
  """The data, the teachers and every compiled step, shared by all runs."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               teacher: zoo.BertCheckpoint | None = None):
    self.config, self.workdir = config, workdir
    self.timings: dict[str, float] = {}
    start = time.time()
    if teacher is None:
      teacher = zoo.load_bert(_common.minilm_dir(config.teacher.checkpoint))
    self.pretrained = teacher
    tcfg = teacher.model.config
    s = config.student
    if tcfg.num_layers % s.num_layers:
      raise ValueError(f'student.num_layers={s.num_layers} must divide the teacher\'s '
                       f'{tcfg.num_layers} layers (TinyBERT\'s uniform layer map)')
    if s.num_heads != tcfg.num_heads:
      raise ValueError(f'student.num_heads={s.num_heads} must equal the teacher\'s '
                       f'{tcfg.num_heads} (attention-score MSE and attention KL compare heads)')
    if tcfg.hidden % s.relation_heads:
      raise ValueError(f'student.relation_heads={s.relation_heads} must divide the teacher\'s '
                       f'width {tcfg.hidden}')
    self.data = load_data(config, teacher.tokenizer)
    self.num_classes = len(self.data.classes)
    self.timings['load'] = time.time() - start
    # The classifier reads the mean-pooled last layer: no pooler, no MLM head.
    encoder_config = dataclasses.replace(tcfg, pooler=False, mlm_head=False)
    self.teacher_model = zoo.BertEncoder(dataclasses.replace(encoder_config, dropout_rate=0.0))
    self.teacher_train_model = zoo.BertEncoder(dataclasses.replace(
        encoder_config, dropout_rate=config.teacher.dropout))
    self.student_config = zoo.BertConfig(
        vocab_size=tcfg.vocab_size, num_layers=s.num_layers, hidden=s.hidden,
        num_heads=s.num_heads, mlp_dim=s.mlp_dim, max_len=config.data.max_tokens,
        pooler=False, projection_width=tcfg.hidden, dropout_rate=s.dropout)
    self.student_model = zoo.BertEncoder(self.student_config)
    # For inference (evaluation, size and speed): no dropout, no projection W_h.
    self.student_eval_model = zoo.BertEncoder(dataclasses.replace(
        self.student_config, projection_width=None, dropout_rate=0.0))
    t = config.task
    self.optimizer = make_optimizer(t.weight_decay, t.warmup_steps)
    teacher_features = sorted({k for f in FEATURES.values() for k in f[1]})
    self.teacher_apply = classifier_apply(self.teacher_model, teacher_features)
    self.steps: dict[str, Callable] = {}
    for family, (student_features, _) in FEATURES.items():
      objective = intermediate_objective(family, self.student_config, tcfg, s.relation_heads)
      self.steps[family] = jax.jit(step_lib.make_train_step(
          classifier_apply(self.student_model, student_features), self.teacher_apply,
          objective, self.optimizer), donate_argnums=0)
    student = classifier_apply(self.student_model)
    # The prediction stage reads the fine-tuned teacher's logits, computed once per training
    # example (augmented ones included), from the batch.
    self.steps['prediction'] = jax.jit(step_lib.make_train_step(
        student, cached_teacher_apply, prediction_objective(True, t.temperature),
        self.optimizer), donate_argnums=0)
    self.steps['labels'] = jax.jit(step_lib.make_train_step(
        student, None, prediction_objective(False, t.temperature), self.optimizer),
        donate_argnums=0)
    self.teacher_step = jax.jit(step_lib.make_train_step(
        classifier_apply(self.teacher_train_model), None, prediction_objective(False, 1.0),
        self._teacher_optimizer()), donate_argnums=0)
    self._student_logits = jax.jit(lambda v, b: classifier_apply(self.student_eval_model)(
        v, b, train=False)[0].logits)
    self._teacher_logits = jax.jit(lambda v, b: classifier_apply(self.teacher_model)(
        v, b, train=False)[0].logits)
    self.fine_tuned = None
    self._teacher_logit_cache: dict[str, np.ndarray] = {}

  def _teacher_optimizer(self) -> optax.GradientTransformation:
    te = self.config.teacher
    warmup = max(1, te.steps // 10)

    def schedule(peak):
      return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                   optax.linear_schedule(peak, 0.0, max(te.steps - warmup, 1))],
                                  [warmup])

    def label(params):
      return jax.tree_util.tree_map_with_path(
          lambda path, _: 'head' if path[0].key == 'classifier' else 'encoder', params)

    return optax.chain(optax.clip_by_global_norm(1.0), optax.multi_transform(
        {'encoder': optax.adamw(schedule(te.learning_rate), weight_decay=0.01),
         'head': optax.adamw(schedule(te.head_learning_rate), weight_decay=0.01)}, label))

  # -- batches ---------------------------------------------------------------

  @staticmethod
  def batches(encoded: Encoded, labels: np.ndarray | None, batch_size: int, steps: int,
              seed: int, teacher_logits: np.ndarray | None = None):
    """`steps` batches drawn by epochs of a seeded permutation (fixed shapes).

    The order depends on the seed and the example count only, so runs of one
    seed on the same examples see the same batches.
    """
    rng = np.random.default_rng(seed)
    n = len(encoded.lengths)
    order, position = rng.permutation(n), 0
    width = encoded.tokens.shape[1]
    for _ in range(steps):
      if position + batch_size > n:
        order, position = rng.permutation(n), 0
      rows = order[position:position + batch_size]
      if len(rows) < batch_size:  # fewer examples than a batch: repeat them
        rows = np.resize(rows, batch_size)
      position += batch_size
      batch = {'tokens': encoded.tokens[rows],
               'token_mask': (np.arange(width)[None] < encoded.lengths[rows][:, None]
                              ).astype(np.int32)}
      if labels is not None:
        batch['label'] = labels[rows]
      if teacher_logits is not None:
        batch[TEACHER_LOGITS] = teacher_logits[rows]
      yield batch

  def logits(self, fn, variables, split: str | Encoded) -> np.ndarray:
    encoded = self.data.task[split] if isinstance(split, str) else split
    size, n = self.config.eval.batch_size, len(encoded.lengths)
    width = encoded.tokens.shape[1]
    out = []
    for begin in range(0, n, size):
      tokens, lengths = _pad_rows(encoded.tokens[begin:begin + size],
                                  encoded.lengths[begin:begin + size], size)
      mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
      out.append(np.asarray(fn(variables, {'tokens': tokens, 'token_mask': mask}))[
          :min(size, n - begin)])
    return np.concatenate(out)

  def accuracy(self, variables, split: str, *, teacher: bool = False) -> float:
    fn = self._teacher_logits if teacher else self._student_logits
    if not teacher:
      params = dict(variables['params'])
      params['encoder'] = {k: v for k, v in params['encoder'].items() if k != 'projection'}
      variables = {'params': params}
    predictions = self.logits(fn, variables, split).argmax(-1)
    return float(np.mean(predictions == self.data.labels[split]))

  # -- the teacher -----------------------------------------------------------

  def pretrained_variables(self) -> dict:
    """The pre-trained teacher with a zero classifier (same pytree as the fine-tuned one)."""
    return {'params': {'encoder': encoder_params(self.pretrained.variables['params']),
                       'classifier': {'kernel': jnp.zeros((self.pretrained.model.config.hidden,
                                                           self.num_classes)),
                                      'bias': jnp.zeros((self.num_classes,))}}}

  def fine_tune_teacher(self) -> dict[str, Any]:
    te = self.config.teacher
    start = time.time()
    variables = {'params': {'encoder': _copy(encoder_params(self.pretrained.variables['params'])),
                            'classifier': classifier_head(self.pretrained.model.config.hidden,
                                                          self.num_classes, te.seed)}}
    state = step_lib.init_train_state(variables, self._teacher_optimizer(), rng=te.seed)
    train = self.data.task['train']
    for step, batch in enumerate(self.batches(train, self.data.labels['train'], te.batch_size,
                                              te.steps, te.seed), 1):
      state, step_metrics = self.teacher_step(state, None, batch)
      if self.config.progress and (step % 50 == 0 or step == te.steps):
        loss = metrics_lib.compute(step_metrics)['loss/total']
        print(f'teacher step {step}: loss {loss:.4f} ({time.time() - start:.0f} s)', flush=True)
    self.fine_tuned = {'params': state.params}
    self.timings['teacher'] = time.time() - start
    return {split: self.accuracy(self.fine_tuned, split, teacher=True)
            for split in ('validation', 'test')}

  def teacher_logits(self, encoded: Encoded, name: str) -> np.ndarray:
    """The fine-tuned teacher's logits of every example of `encoded` (computed once)."""
    if name not in self._teacher_logit_cache:
      start = time.time()
      self._teacher_logit_cache[name] = self.logits(self._teacher_logits, self.fine_tuned,
                                                    encoded)
      self.timings[f'teacher_logits/{name}'] = time.time() - start
    return self._teacher_logit_cache[name]

  # -- general distillation --------------------------------------------------

  def student_init(self, seed: int) -> dict:
    shapes = jax.eval_shape(self.student_model.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 4), jnp.int32))['params']
    return {'params': {'encoder': init_params(shapes, seed, 0.02),
                       'classifier': classifier_head(self.student_config.hidden,
                                                     self.num_classes, seed + 1)}}

  def general_distillation(self, family: str) -> tuple[dict, dict[str, Any]]:
    """The student distilled from the pre-trained teacher on the prose with `family`'s losses."""
    g = self.config.general
    start = time.time()
    state = step_lib.init_train_state(self.student_init(g.seed), self.optimizer, rng=g.seed)
    state = with_learning_rate(state, g.learning_rate)
    teacher, losses = self.pretrained_variables(), []
    for step, batch in enumerate(self.batches(self.data.prose, None, g.batch_size, g.steps,
                                              g.seed), 1):
      state, step_metrics = self.steps[family](state, teacher, batch)
      if step % 25 == 0 or step == g.steps:
        losses.append(metrics_lib.compute(step_metrics)['loss/total'])
        if self.config.progress and (step % 100 == 0 or step == g.steps):
          print(f'general {family} step {step}: loss {losses[-1]:.4f} '
                f'({time.time() - start:.0f} s)', flush=True)
    seconds = time.time() - start
    self.timings[f'general/{family}'] = seconds
    return ({'params': state.params['encoder']},
            {'seconds': seconds, 'loss_curve': losses})

  # -- task-specific distillation --------------------------------------------

  def task_run(self, variant: str, seed: int, learning_rate: float, general: Mapping[str, dict],
               train: tuple[Encoded, np.ndarray]) -> dict[str, Any]:
    """One run of `variant`: its stages, the best validation step's accuracy and params."""
    spec, t = VARIANTS[variant], self.config.task
    start = time.time()
    init = self.student_init(seed)
    if spec.general:
      init['params']['encoder'] = _copy(general[spec.losses]['params'])
    encoded, labels = train if spec.augmented else (self.data.task['train'],
                                                    self.data.labels['train'])
    teacher = self.fine_tuned
    params = init['params']
    if spec.intermediate:
      state = step_lib.init_train_state({'params': params}, self.optimizer, rng=seed)
      state = with_learning_rate(state, t.intermediate_learning_rate)
      for batch in self.batches(encoded, labels, t.batch_size, t.intermediate_steps, seed):
        state, _ = self.steps[spec.losses](state, teacher, batch)
      params = state.params
    steps = t.prediction_steps + (0 if spec.intermediate else t.intermediate_steps)
    state = step_lib.init_train_state({'params': params}, self.optimizer, rng=seed + 1)
    state = with_learning_rate(state, learning_rate)
    step_fn = self.steps['prediction' if spec.distill_prediction else 'labels']
    cached = None
    if spec.distill_prediction:
      cached = self.teacher_logits(encoded, 'augmented' if spec.augmented else 'train')
    best, curve = None, {}
    for step, batch in enumerate(self.batches(encoded, labels, t.batch_size, steps, seed + 1,
                                              cached), 1):
      state, _ = step_fn(state, None, batch)
      if step % t.eval_every == 0:
        accuracy = self.accuracy(state.variables, 'validation')
        curve[step] = accuracy
        if best is None or accuracy > best[0]:
          # Copies: the state is donated to the next step.
          best = (accuracy, step, jax.tree.map(np.array, state.variables))
    seconds = time.time() - start
    self.timings[f'task/{variant}'] = self.timings.get(f'task/{variant}', 0.0) + seconds
    return {'validation': best[0], 'best_step': best[1], 'curve': curve, 'variables': best[2],
            'seconds': seconds}

  # -- size and speed --------------------------------------------------------

  def speed(self, student_variables) -> dict[str, Any]:
    """Teacher vs student inference on the test split, interleaved, same batches."""
    student = dict(student_variables['params'])
    student['encoder'] = {k: v for k, v in student['encoder'].items() if k != 'projection'}
    student = {'params': student}
    runs = {'teacher': (self._teacher_logits, self.fine_tuned),
            'student': (self._student_logits, student)}
    for fn, variables in runs.values():  # compile
      self.logits(fn, variables, 'test')
    seconds = {name: [] for name in runs}
    for _ in range(self.config.eval.speed_repeats):
      for name, (fn, variables) in runs.items():
        begin = time.perf_counter()
        self.logits(fn, variables, 'test')
        seconds[name].append(time.perf_counter() - begin)
    best = {name: min(v) for name, v in seconds.items()}
    return {'seconds': seconds, 'speedup': best['teacher'] / best['student'],
            'examples': int(len(self.data.labels['test'])), 'load_average': list(os.getloadavg())}


def cached_teacher_apply(variables, batch, *, train, rngs=None):
  """The fine-tuned teacher's logits, read from the batch (:meth:`Experiment.teacher_logits`)."""
  del variables, train, rngs
  return Outputs(logits=batch[TEACHER_LOGITS], features={}), {}


def naive_bayes(data: Data) -> dict[str, float] | None:
  """The task's naive Bayes baseline (scikit-learn, word counts), if scikit-learn is installed."""
  if importlib.util.find_spec('sklearn') is None:
    return None
  feature_extraction = importlib.import_module('sklearn.feature_extraction.text')
  naive = importlib.import_module('sklearn.naive_bayes')
  vectorizer = feature_extraction.CountVectorizer()
  model = naive.MultinomialNB().fit(vectorizer.fit_transform(data.texts['train']),
                                    data.labels['train'])
  return {split: float(model.score(vectorizer.transform(data.texts[split]), data.labels[split]))
          for split in ('validation', 'test')}


def run(config: ml_collections.ConfigDict, workdir: str,
        command_line: Sequence[str] | None = None,
        teacher: zoo.BertCheckpoint | None = None) -> dict[str, Any]:
  """Runs the experiment; writes and returns ``<workdir>/results.json``.

  `teacher` replaces the checkpoint the config names (the tests pass a
  tiny random one).
  """
  start = time.time()
  os.makedirs(workdir, exist_ok=True)
  experiment = Experiment(config, workdir, teacher)
  data = experiment.data
  variants = tuple(config.variants)
  log = (lambda text: print(text, flush=True)) if config.progress else (lambda text: None)
  teacher_accuracy = experiment.fine_tune_teacher()
  log(f'teacher: {teacher_accuracy}')
  augmenter = Augmenter(experiment.pretrained, config)
  mlm = augmenter.train_head(data.prose, data.task['validation'])
  log(f'MLM head: {mlm}')
  augmented_encoded, augmented_labels, augmentation = augmenter.augment(data.task['train'],
                                                                        data.labels['train'])
  experiment.timings['augment'] = augmentation['seconds'] + mlm['seconds']
  log(f'augmentation: {augmentation}')
  augmented = (augmented_encoded, augmented_labels)
  general, general_report = {}, {}
  for family in sorted({VARIANTS[v].losses for v in variants if VARIANTS[v].general}):
    general[family], general_report[family] = experiment.general_distillation(family)
  # The prediction stage's learning rate, on validation, with TinyBERT and the selection seed.
  grid = {}
  for lr in config.task.learning_rate_grid:
    result = experiment.task_run('tinybert', config.selection_seed, lr, general, augmented)
    grid[f'{lr:g}'] = {'learning_rate': lr, 'validation': result['validation'],
                       'best_step': result['best_step'], 'curve': result['curve']}
    log(f'select lr={lr:g}: validation {result["validation"]:.4f}')
  chosen = max(grid.values(), key=lambda g: (g['validation'], -g['learning_rate']))
  selection = {'seed': config.selection_seed, 'variant': 'tinybert', 'grid': grid,
               'learning_rate': chosen['learning_rate']}
  per_seed, last = [], None
  for seed in config.seeds:
    record = {'seed': seed}
    for variant in variants:
      result = experiment.task_run(variant, seed, selection['learning_rate'], general, augmented)
      # The test split: scored once, here, with the best validation step's variables.
      record[variant] = {'validation': result['validation'], 'best_step': result['best_step'],
                         'test': experiment.accuracy(result['variables'], 'test'),
                         'seconds': result['seconds']}
      last = result['variables'] if variant == 'tinybert' else last
      log(f'seed {seed} {variant}: validation {result["validation"]:.4f}, '
          f'test {record[variant]["test"]:.4f}')
    per_seed.append(record)
  teacher_params = count_params(experiment.fine_tuned)
  student_params = count_params({k: v for k, v in last['params']['encoder'].items()
                                 if k != 'projection'}) + count_params(
                                     last['params']['classifier'])
  results = {
      'config': config.to_dict(),
      'data': data.report,
      'classes': data.classes,
      'baselines': {'naive_bayes': naive_bayes(data)},
      'teacher': teacher_accuracy,
      'mlm': mlm,
      'augmentation': {k: v for k, v in augmentation.items()},
      'general': general_report,
      'selection': selection,
      'per_seed': per_seed,
      'summary': {v: _common.mean_std([r[v]['test'] for r in per_seed]) for v in variants},
      'retained': {v: _common.mean_std([r[v]['test'] / teacher_accuracy['test']
                                        for r in per_seed]) for v in variants},
      'params': {'teacher': teacher_params, 'student': student_params,
                 'ratio': teacher_params / student_params},
      'speed': experiment.speed(last),
      'timings': experiment.timings,
      'wall_seconds': time.time() - start,
      'finished': time.time(),
  }
  results['claims'] = claims(results)
  return _common.write_results(results, workdir, config, command_line)


# ----------------------------------------------------------------------------
# Claims and tables.

CLAIMS = (  # (variant, compared with, claim); the claim is "variant - compared > 0"
    ('tinybert', 'no_general', 'general distillation helps (TinyBERT minus no general '
     'distillation)'),
    ('tinybert', 'no_augmentation', 'data augmentation helps (TinyBERT minus no augmentation)'),
    ('tinybert', 'no_intermediate', 'task-specific intermediate-layer distillation helps '
     '(TinyBERT minus prediction-layer only)'),
    ('tinybert', 'finetune', 'task-specific distillation beats fine-tuning the generally '
     'distilled student on the labels'),
    ('minilm', 'tinybert', "MiniLM's last-layer attention and value relations beat TinyBERT's "
     'layer-wise losses at equal budget'),
    ('minilmv2', 'tinybert', "MiniLMv2's Q-Q/K-K/V-V relations beat TinyBERT's layer-wise "
     'losses at equal budget'),
    ('minilmv2', 'minilm', "MiniLMv2's relations beat MiniLM's"),
)


def claims(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Each claim, judged now from the recorded per-seed test accuracies (:func:`_common.claim`)."""
  per_seed, variants = results['per_seed'], set(results['config']['variants'])
  teacher = results['teacher']['test']
  keep = results['config']['claims']['retained_min']
  tiny = [r['tinybert']['test'] for r in per_seed]
  out = [_common.claim(f"TinyBERT keeps at least {100 * keep:g} % of the teacher's test accuracy "
                       f'(student minus {keep:g} x teacher)', tiny, [keep * teacher] * len(tiny),
                       scale=100, unit='points')]
  for variant, other, text in CLAIMS:
    if variant in variants and other in variants:
      out.append(_common.claim(text, [r[variant]['test'] for r in per_seed],
                               [r[other]['test'] for r in per_seed], scale=100, unit='points'))
  return out


def describe(results: Mapping[str, Any]) -> str:
  config, data, params = results['config'], results['data'], results['params']
  d, s, a, g, t = (config[k] for k in ('data', 'student', 'augment', 'general', 'task'))
  aug, sel, mlm = results['augmentation'], results['selection'], results['mlm']
  topk = f'heldout_top{a["candidates"]}'
  examples = data['examples']
  nb = results['baselines']['naive_bayes']
  nb_text = (f'; naive Bayes on word counts of the same training examples: '
             f"{100 * nb['test']:.1f} % test" if nb else '')
  return (
      'TinyBERT (Jiao et al. 2020, arXiv:1909.10351) and MiniLM / MiniLMv2 (Wang et al. 2020, '
      'arXiv:2002.10957; 2021, arXiv:2012.15828) on the Debian Section task '
      f'({len(results["classes"])} classes; train / validation / test '
      f'{examples["train"]:,} / {examples["validation"]:,} / {examples["test"]:,}, '
      f'{d["max_tokens"]} tokens at most). Teacher: all-MiniLM-L6-v2 plus a linear classifier '
      f'on its mean-pooled last layer, fine-tuned {config["teacher"]["steps"]} steps: '
      f'{100 * results["teacher"]["test"]:.1f} % test{nb_text}. Student: {s["num_layers"]} '
      f'layers, width {s["hidden"]}, {s["num_heads"]} heads, inner {s["mlp_dim"]} '
      f'({params["student"]:,} parameters against the teacher\'s {params["teacher"]:,}: '
      f'{params["ratio"]:.1f}x smaller). General distillation: {g["steps"]} steps of '
      f'{g["batch_size"]} prose paragraphs ({data["prose_paragraphs"]:,}) from the pre-trained '
      'teacher, once per loss family. Augmentation: '
      f'{aug["examples_augmented"]:,} training examples x N_a = {a["num_augmented"]}, '
      f'p_t = {a["replace_prob"]:g}, K = {a["candidates"]}; one-piece words replaced by the '
      'MLM\'s candidates (the frozen teacher with an MLM head trained here '
      f'{a["mlm_steps"]} steps on the prose: held-out masked word first '
      f'{100 * mlm["heldout_top1"]:.0f} %, among its top {a["candidates"]} '
      f'{100 * mlm[topk]:.0f} %; words {a["mask_stride"]} apart '
      'masked in one forward), many-piece words by their nearest words under the teacher\'s '
      f'embedding (for GloVe); {100 * aug["replaced_fraction"]:.1f} % of the replaceable words '
      f'replaced. Task stage: {t["intermediate_steps"]} intermediate + '
      f'{t["prediction_steps"]} prediction steps of {t["batch_size"]}; prediction-stage '
      f'learning rate from {{{", ".join(f"{v:g}" for v in t["learning_rate_grid"])}}} chosen on '
      f'validation with TinyBERT on seed {sel["seed"]} (not reported): {sel["learning_rate"]:g}, '
      'for every variant; each run keeps its best validation step (every '
      f'{t["eval_every"]}).'
  )


def format_table(results: Mapping[str, Any]) -> str:
  summary, retained, per_seed = results['summary'], results['retained'], results['per_seed']
  rows = [['teacher (fine-tuned all-MiniLM-L6-v2)', f'{100 * results["teacher"]["test"]:.1f}',
           '100', '', '']]
  for variant in results['config']['variants']:
    rows.append([variant, _common.mean_std_text(summary[variant], scale=100.0),
                 _common.mean_std_text(retained[variant], scale=100.0),
                 ', '.join(f'{100 * r[variant]["test"]:.1f}' for r in per_seed),
                 ', '.join(str(r[variant]['best_step']) for r in per_seed)])
  speed, params = results['speed'], results['params']
  lines = ['Test accuracy (%), share of the teacher\'s (%), per seed, best validation step:', '']
  lines += _common.markdown_table(['model', 'test accuracy', '% of teacher', 'per seed',
                                   'best step'], rows)
  load = max(speed['load_average'][:2])
  lines += ['', f'Size: {params["ratio"]:.1f}x fewer parameters. Speed: the student classifies '
                f'the test split {speed["speedup"]:.1f}x faster than the teacher (best of '
                f'{len(speed["seconds"]["student"])}, same run, load average {load:.1f}'
                f'{"; above 2, so not a result" if load > 2 else ""}).']
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  _common.run_main(argv, module=MODULE, doc=__doc__, schema=tinybert_configs.schema(), run=run,
                   report=format_table, claims=claims)


if __name__ == '__main__':
  main(sys.argv[1:])
