"""DistilBERT (Sanh et al., 2019) and Well-Read Students (Turc et al., 2019) on Debian text.

Part 1, DistilBERT (Sanh, Debut, Chaumond & Wolf, "DistilBERT, a distilled
version of BERT", 2019, arXiv:1910.01108): a 6-layer BERT teacher is
pre-trained by masked LM on English prose; 3-layer students start from
every other teacher layer (:func:`kdjax.zoo.bert_student_from_teacher`)
and are pre-trained on the same prose with the triple loss
(:func:`kdjax.recipes.distilbert_objective`: soft-target cross entropy at
``T = 2`` over the masked positions, masked LM, cosine between the last
hidden states; weights 5 / 2 / 1 as the public script, and weights chosen
on validation), against masked LM alone, random initialisation, and the
triple loss less each term. Every model is then fine-tuned on the Debian
Section task; the table gives the share of the teacher's test accuracy
each keeps, the parameter ratio and the measured inference-time ratio.

Part 2, Well-Read Students (Turc, Chang, Lee & Toutanova, "Well-Read
Students Learn Better: On the Importance of Pre-training Compact Models",
2019, arXiv:1908.08962): the compact model (the 3-layer student shape)
(a) pre-trained by masked LM from scratch, then fine-tuned; (b) distilled
from the fine-tuned teacher on the unlabelled task-related transfer set
(Debian descriptions of the task's Sections, training packages only)
without pre-training; (c) pre-trained distillation: (a)'s pre-trained
model distilled on that transfer set, then fine-tuned if validation says
so; and (c) with an unrelated transfer set (man pages, Python and Linux
documentation, fortunes) of the same size.

Every choice (fine-tuning learning rates, the tuned weights, fine-tuning
after pre-trained distillation) is made on validation accuracy with the
selection seed, which is never reported; each reported seed's test split
is scored once, at the end; claims get verdicts from paired differences
over the seeds (:func:`experiments._common.paired_difference`). Usage::

    python -m experiments.distilbert --config=experiments/configs/distilbert.py:cpu \\
        --workdir=runs/distilbert_cpu

``--config.sizing=True`` times one step of each stage and prints the
estimated cost of the run instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
import dataclasses
import json
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
import tokenizers
from tokenizers import decoders
from tokenizers import models as tokenizer_models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import processors
from tokenizers import trainers

from experiments import _common
from experiments.configs import distilbert as distilbert_configs
from kdjax import config as config_lib
from kdjax import data as data_lib
from kdjax import losses
from kdjax import objective as objective_lib
from kdjax import recipes
from kdjax import step as step_lib
from kdjax import zoo
from kdjax._outputs import Outputs
from kdjax.data import _text
from kdjax.data import debian_text

MODULE = 'experiments.distilbert'
SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
PAD, UNK, CLS, SEP, MASK = range(len(SPECIAL_TOKENS))
# The masked-LM head's parameters: dropped when an MLM model becomes a classifier.
MLM_HEAD_PARAMS = ('mlm_transform', 'mlm_norm', 'mlm_bias')
TERMS = ('kd', 'mlm', 'cos')


# ----------------------------------------------------------------------------
# Data.


def train_tokenizer(paragraphs: Sequence[str], vocab_size: int) -> tokenizers.Tokenizer:
  """A BERT-style uncased WordPiece tokenizer trained on `paragraphs`.

  Ids 0-4 are ``[PAD] [UNK] [CLS] [SEP] [MASK]``; encoding adds
  ``[CLS] ... [SEP]``.
  """
  tokenizer = tokenizers.Tokenizer(tokenizer_models.WordPiece(unk_token='[UNK]'))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = decoders.WordPiece()
  trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      show_progress=False)
  tokenizer.train_from_iterator(paragraphs, trainer=trainer)
  tokenizer.post_processor = processors.TemplateProcessing(
      single='[CLS] $A [SEP]', special_tokens=[('[CLS]', CLS), ('[SEP]', SEP)])
  return tokenizer


def encode_rows(tokenizer: tokenizers.Tokenizer, texts: Sequence[str],
                max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """One row per text: ``[CLS] pieces [SEP]`` cut to `max_tokens` (``[SEP]`` kept), padded.

  Returns:
    ``(tokens int32 [n, max_tokens], token_mask int32 [n, max_tokens])``.
  """
  tokens = np.full((len(texts), max_tokens), PAD, np.int32)
  for i, encoding in enumerate(tokenizer.encode_batch(list(texts))):
    ids = encoding.ids
    if len(ids) > max_tokens:
      ids = ids[:max_tokens - 1] + [SEP]
    tokens[i, :len(ids)] = ids
  return tokens, (tokens != PAD).astype(np.int32)


def pack_sequences(tokenizer: tokenizers.Tokenizer, paragraphs: Sequence[str],
                   max_tokens: int) -> np.ndarray:
  """BERT pre-training's packing: paragraphs joined by ``[SEP]`` cut into full rows.

  Each row is ``[CLS]`` + ``max_tokens - 2`` pieces + ``[SEP]``, no
  padding; the last incomplete row is dropped.
  """
  stream = []
  for encoding in tokenizer.encode_batch(list(paragraphs), add_special_tokens=False):
    stream.extend(encoding.ids)
    stream.append(SEP)
  body = max_tokens - 2
  rows = len(stream) // body
  pieces = np.asarray(stream[:rows * body], np.int32).reshape(rows, body)
  return np.concatenate([np.full((rows, 1), CLS, np.int32), pieces,
                         np.full((rows, 1), SEP, np.int32)], axis=1)


def mask_tokens(tokens: np.ndarray, token_mask: np.ndarray, rng: np.random.Generator, *,
                rate: float, vocab_size: int) -> dict[str, np.ndarray]:
  """BERT's masking (Devlin et al., 2019, arXiv:1810.04805, Section 3.1).

  Each real, non-special token is chosen with probability `rate` (at
  least one per row); a chosen token becomes ``[MASK]`` 80 % of the time,
  a random ordinary token 10 %, itself 10 %.

  Returns:
    ``{'tokens', 'token_mask', 'mlm_labels' (the original tokens),
    'mlm_mask' (1 at the chosen positions)}``.
  """
  candidates = (token_mask > 0) & (tokens >= len(SPECIAL_TOKENS))
  chosen = candidates & (rng.random(tokens.shape) < rate)
  for row in np.flatnonzero(~chosen.any(axis=1) & candidates.any(axis=1)):
    chosen[row, rng.choice(np.flatnonzero(candidates[row]))] = True
  action = rng.random(tokens.shape)
  masked = tokens.copy()
  masked[chosen & (action < 0.8)] = MASK
  randomised = chosen & (action >= 0.8) & (action < 0.9)
  masked[randomised] = rng.integers(len(SPECIAL_TOKENS), vocab_size, randomised.sum())
  return {'tokens': masked, 'token_mask': token_mask.astype(np.int32),
          'mlm_labels': tokens.astype(np.int32), 'mlm_mask': chosen.astype(np.int32)}


@dataclasses.dataclass
class TextData:
  """Every token array the experiment reads."""

  tokenizer: tokenizers.Tokenizer
  sections: dict[str, dict[str, np.ndarray]]  # split -> tokens, token_mask, label
  num_classes: int
  prose_train: np.ndarray  # packed [n, max_tokens]
  prose_validation: np.ndarray  # packed, fixed masking at evaluation
  transfer: dict[str, np.ndarray]  # 'related' / 'unrelated' -> [n, max_tokens] padded rows
  report: dict[str, Any]


def ensure_built(data_dir: str, max_prose_mb: float) -> None:
  """Builds the Section task and the prose into `data_dir` unless both are there."""
  task = os.path.join(data_dir, 'debian_sections')
  prose = os.path.join(data_dir, 'debian_prose', 'manifest.json')
  if os.path.isdir(task) and os.path.exists(prose):
    return
  print(f'building the Debian Section task and prose into {data_dir} (apt, a few minutes)')
  debian_text.main(['--out', data_dir, '--prose', '--max-prose-mb', str(max_prose_mb)])


def _section_split(data_dir: str, split: str) -> tuple[list[str], np.ndarray]:
  source = data_lib.load_source('debian_sections', split, data_dir=data_dir, download=False)
  rows = [source[i] for i in range(len(source))]
  return ([r['text'].decode('utf-8') for r in rows],
          np.asarray([int(r['label']) for r in rows], np.int64))


def _balanced_subset(labels: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
  """Indices of `total` examples, the same number per class (all when 0 or too many)."""
  classes = np.unique(labels)
  per_class = total // len(classes)
  if not total or per_class >= np.bincount(labels).min():
    return np.arange(len(labels))
  return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                                 for c in classes]))


def _prose_parts(data_dir: str) -> tuple[list[str], list[str], list[str]]:
  """(all prose paragraphs, the task-related transfer set, the non-Debian prose)."""
  prose_dir = os.path.join(data_dir, 'debian_prose')
  with open(os.path.join(prose_dir, 'manifest.json'), encoding='utf-8') as f:
    manifest = json.load(f)
  prose = data_lib.read_text_shards(prose_dir)
  # The shards hold the sources in the manifest's order; 'debian' paragraphs are
  # descriptions (of every Section), the rest is unrelated to the task.
  start, unrelated = 0, []
  for source, record in manifest['sources'].items():
    if source != 'debian':
      unrelated += prose[start:start + record['paragraphs']]
    start += record['paragraphs']
  return prose, data_lib.read_text_shards(prose_dir, kind='transfer'), unrelated


def load_data(config: ml_collections.ConfigDict, workdir: str) -> TextData:
  """Reads (building if needed) the task and prose, trains the tokenizer, tokenises."""
  d = config.data
  ensure_built(d.data_dir, d.max_prose_mb)
  # One generator per use, so that a cached tokenizer changes no subset.
  tokenizer_rng, task_rng, transfer_rng = (np.random.default_rng([d.subset_seed, k])
                                           for k in range(3))
  prose, related, unrelated = _prose_parts(d.data_dir)
  held_out = np.asarray([_text.unit_hash(p) < d.prose_val_fraction for p in prose])
  prose_train = [p for p, h in zip(prose, held_out) if not h]
  prose_validation = [p for p, h in zip(prose, held_out) if h]
  if not prose_validation or not unrelated or not related:
    raise ValueError(f'{d.data_dir}/debian_prose: needs validation prose (got '
                     f'{len(prose_validation)} paragraphs), an unrelated source besides '
                     f"'debian' ({len(unrelated)}) and a transfer set ({len(related)})")
  path = os.path.join(workdir, 'tokenizer.json')
  if os.path.exists(path):
    tokenizer = tokenizers.Tokenizer.from_file(path)
  else:
    sample = [prose_train[i] for i in np.sort(tokenizer_rng.permutation(len(prose_train))[
        :d.tokenizer_paragraphs])]
    tokenizer = train_tokenizer(sample, d.vocab_size)
    os.makedirs(workdir, exist_ok=True)
    tokenizer.save(path)
  sections = {}
  for split in ('train', 'validation', 'test'):
    texts, labels = _section_split(d.data_dir, split)
    if split == 'train':
      chosen = _balanced_subset(labels, d.finetune_train_examples, task_rng)
      texts, labels = [texts[i] for i in chosen], labels[chosen]
    tokens, mask = encode_rows(tokenizer, texts, d.max_tokens)
    sections[split] = {'tokens': tokens, 'token_mask': mask, 'label': labels}
  # Both transfer sets the same size, so only their closeness to the task differs.
  size = min(len(related), len(unrelated))
  if d.transfer_paragraphs:
    size = min(size, d.transfer_paragraphs)
  transfer = {}
  for name, paragraphs in (('related', related), ('unrelated', unrelated)):
    chosen = np.sort(transfer_rng.choice(len(paragraphs), size, replace=False))
    tokens, mask = encode_rows(tokenizer, [paragraphs[i] for i in chosen], d.max_tokens)
    transfer[name] = {'tokens': tokens, 'token_mask': mask}
  packed_validation = pack_sequences(tokenizer, prose_validation, d.max_tokens)
  packed_validation = packed_validation[:d.max_prose_val_sequences]
  packed_train = pack_sequences(tokenizer, prose_train, d.max_tokens)
  report = {
      'prose_paragraphs': {'train': len(prose_train), 'validation': len(prose_validation)},
      'prose_sequences': {'train': len(packed_train), 'validation': len(packed_validation)},
      'sections': {split: len(v['label']) for split, v in sections.items()},
      'transfer_paragraphs': {'related': size, 'unrelated': size,
                              'related_available': len(related),
                              'unrelated_available': len(unrelated)},
      'vocab_size': tokenizer.get_vocab_size(),
  }
  return TextData(tokenizer, sections, int(max(sections['train']['label']) + 1), packed_train,
                  packed_validation, transfer, report)


# ----------------------------------------------------------------------------
# Models.


def bert_config(config: ml_collections.ConfigDict, vocab_size: int, num_layers: int, *,
                mlm_head: bool) -> zoo.BertConfig:
  """The teacher's or a student's :class:`kdjax.zoo.BertConfig` (no pooler, as DistilBERT)."""
  m = config.model
  return zoo.BertConfig(vocab_size=vocab_size, num_layers=num_layers, hidden=m.hidden,
                        num_heads=m.num_heads, mlp_dim=m.mlp_dim, max_len=config.data.max_tokens,
                        pooler=False, mlm_head=mlm_head, dropout_rate=m.dropout)


class SectionClassifier(nn.Module):
  """A :class:`kdjax.zoo.BertEncoder` (no MLM head), then dropout and a linear layer on the
  mean-pooled tokens."""

  config: zoo.BertConfig
  num_classes: int

  @nn.compact
  def __call__(self, tokens, token_mask, train: bool = False) -> Outputs:
    outputs = zoo.BertEncoder(self.config, name='encoder')(tokens, token_mask, train=train)
    pooled = nn.Dropout(self.config.dropout_rate)(outputs.features['mean_pooled'],
                                                  deterministic=not train)
    logits = nn.Dense(self.num_classes, name='classifier')(pooled)
    return Outputs(logits=logits, features=outputs.features)


def classifier_apply(model: SectionClassifier):
  """The classifier as a kdjax ``apply`` reading ``tokens`` and ``token_mask``."""

  def apply(variables, batch, *, train, rngs=None):
    return model.apply(variables, batch['tokens'], batch['token_mask'], train=train,
                       rngs=rngs), {}

  return apply


def encoder_of(mlm_params: Mapping[str, Any]) -> dict[str, Any]:
  """An MLM model's params less its head: the encoder of a classifier."""
  return {k: v for k, v in mlm_params.items() if k not in MLM_HEAD_PARAMS}


def make_init(model: nn.Module, max_tokens: int) -> Callable[[int], dict[str, Any]]:
  """``init(seed) -> params`` of `model` under one jit (one compile per architecture)."""
  tokens = jnp.zeros((1, max_tokens), jnp.int32)
  args = (tokens,) if isinstance(model, zoo.BertEncoder) else (tokens, jnp.ones_like(tokens))
  init = jax.jit(lambda key: nn.meta.unbox(model.init(key, *args)['params']))
  return lambda seed: init(jax.random.PRNGKey(seed))


def count_params(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def make_optimizer(warmup_steps: int, total_steps: int, weight_decay: float):
  """AdamW, global-norm clipping at 1, linear warm-up then linear decay to 0.

  The peak learning rate lives in the optimizer state (set it with
  :func:`with_learning_rate`), so a grid of learning rates compiles once.
  """
  warmup = max(min(warmup_steps, total_steps - 1), 1)

  def shape(count):
    count = count + 1
    up = jnp.minimum(1.0, count / warmup)
    down = jnp.clip((total_steps - count + 1) / max(total_steps - warmup + 1, 1), 0.0, 1.0)
    return jnp.where(count <= warmup, up, down)

  return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.inject_hyperparams(optax.adamw)(learning_rate=1.0, weight_decay=weight_decay),
      optax.scale_by_schedule(shape),
  )


def with_learning_rate(state: step_lib.TrainState, learning_rate: float) -> step_lib.TrainState:
  chain = list(state.opt_state)
  hyper = dict(chain[1].hyperparams)
  hyper['learning_rate'] = jnp.asarray(learning_rate, jnp.float32)
  chain[1] = chain[1]._replace(hyperparams=hyper)
  return state.replace(opt_state=tuple(chain))


def _weighted_by_batch(term: objective_lib.Term, key: str) -> objective_lib.Term:
  def weighted(student, teacher, batch, step):
    values, mask = term(student, teacher, batch, step)
    return values * batch[key], mask
  return weighted


def distilbert_objective(temperature: float) -> objective_lib.Objective:
  """The triple loss of :func:`kdjax.recipes.distilbert_objective`, its weights read from the batch.

  Each term's values are multiplied by the batch's scalar ``weight_kd``,
  ``weight_mlm``, ``weight_cos`` (:func:`weight_entries`): every variant
  and ablation with a teacher shares one compiled step.
  """
  full = recipes.distilbert_objective(temperature=temperature)
  return objective_lib.Objective(
      terms={name: _weighted_by_batch(full.terms[name], f'weight_{name}') for name in TERMS})


def weight_entries(weights: Sequence[float]) -> dict[str, np.ndarray]:
  """The batch entries :func:`distilbert_objective` reads: ``(kd, mlm, cos)`` as float32 scalars."""
  return {f'weight_{name}': np.float32(w) for name, w in zip(TERMS, weights)}


# ----------------------------------------------------------------------------
# The experiment.


def _copy(tree):
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


class Experiment:
  """Data, models and compiled steps; every training stage as a method."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self.data = load_data(config, workdir)
    vocab, m = self.data.report['vocab_size'], config.model
    student_layers = len(m.student_layers_from_teacher)
    self.teacher_mlm = zoo.BertEncoder(bert_config(config, vocab, m.teacher_layers, mlm_head=True))
    self.student_mlm = zoo.BertEncoder(bert_config(config, vocab, student_layers, mlm_head=True))
    self.teacher_classifier = SectionClassifier(
        bert_config(config, vocab, m.teacher_layers, mlm_head=False), self.data.num_classes)
    self.student_classifier = SectionClassifier(
        bert_config(config, vocab, student_layers, mlm_head=False), self.data.num_classes)
    self.mlm_apply = {'teacher': zoo.bert_apply(self.teacher_mlm),
                      'student': zoo.bert_apply(self.student_mlm)}
    self.classifier_apply = {'teacher': classifier_apply(self.teacher_classifier),
                             'student': classifier_apply(self.student_classifier)}
    self._steps: dict[Any, Callable] = {}
    self.init = {name: make_init(getattr(self, name), config.data.max_tokens)
                 for name in ('teacher_mlm', 'student_mlm', 'teacher_classifier',
                              'student_classifier')}
    self._mlm_accuracy = {name: jax.jit(self._mlm_counts(apply))
                          for name, apply in self.mlm_apply.items()}
    self._predict = {name: jax.jit(lambda v, b, apply=apply: jnp.argmax(
        apply(v, b, train=False)[0].logits, -1)) for name, apply in self.classifier_apply.items()}
    self.timings: dict[str, float] = {}
    self.step_counts: dict[str, int] = {}

  # -- compiled pieces, built once per kind ---------------------------------

  def _step(self, key, student_apply, teacher_apply, objective, optimizer):
    if key not in self._steps:
      self._steps[key] = jax.jit(step_lib.make_train_step(
          student_apply, teacher_apply, objective, optimizer), donate_argnums=0)
    return self._steps[key]

  @staticmethod
  def _mlm_counts(apply):
    def counts(variables, batch):
      logits = apply(variables, batch, train=False)[0].logits
      right = (jnp.argmax(logits, -1) == batch['mlm_labels']) * batch['mlm_mask']
      return jnp.sum(right), jnp.sum(batch['mlm_mask'])
    return counts

  def _mlm_optimizer(self, steps: int):
    return make_optimizer(self.config.mlm.warmup_steps, steps, self.config.mlm.weight_decay)

  # -- batches ----------------------------------------------------------------

  def _mlm_batches(self, seed: int, batch_size: int, extra: Mapping[str, np.ndarray] | None = None
                   ) -> Iterator[dict[str, np.ndarray]]:
    rows, rng = self.data.prose_train, np.random.default_rng(seed)
    ones = np.ones((batch_size, rows.shape[1]), np.int32)
    while True:
      order = rng.permutation(len(rows))
      for start in range(0, len(order) - batch_size + 1, batch_size):
        yield {**mask_tokens(rows[order[start:start + batch_size]], ones, rng,
                             rate=self.config.mlm.mask_rate,
                             vocab_size=self.data.report['vocab_size']), **(extra or {})}

  @staticmethod
  def _row_batches(arrays: Mapping[str, np.ndarray], seed: int,
                   batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    n, rng = len(arrays['tokens']), np.random.default_rng(seed)
    while True:
      order = rng.permutation(n)
      for start in range(0, n - batch_size + 1, batch_size):
        yield {k: v[order[start:start + batch_size]] for k, v in arrays.items()}

  def _padded_batches(self, arrays: Mapping[str, np.ndarray]):
    """Fixed-size evaluation batches (the last padded by repeating a row) and their counts."""
    size, n = self.config.eval.batch_size, len(arrays['tokens'])
    for start in range(0, n, size):
      index = np.arange(start, min(start + size, n))
      count = len(index)
      index = np.concatenate([index, np.full(size - count, index[-1])])
      yield {k: v[index] for k, v in arrays.items()}, count

  # -- evaluation -------------------------------------------------------------

  def mlm_accuracy(self, which: str, variables) -> float:
    """Masked-token accuracy on the held-out prose, the same masks for every model."""
    rows = self.data.prose_validation
    batch = mask_tokens(rows, np.ones_like(rows), np.random.default_rng(12345),
                        rate=self.config.mlm.mask_rate, vocab_size=self.data.report['vocab_size'])
    right = total = 0
    for chunk, count in self._padded_batches(batch):
      # The repeated rows that fill the last batch are not counted.
      real = (np.arange(len(chunk['tokens'])) < count)[:, None]
      chunk['mlm_mask'] = chunk['mlm_mask'] * real.astype(np.int32)
      r, t = self._mlm_accuracy[which](variables, chunk)
      right, total = right + int(r), total + int(t)
    return right / max(total, 1)

  def accuracy(self, which: str, variables, split: str) -> float:
    """Section accuracy of a classifier on `split`."""
    arrays = self.data.sections[split]
    right = 0
    for batch, count in self._padded_batches(arrays):
      predicted = np.asarray(self._predict[which](
          variables, {'tokens': batch['tokens'], 'token_mask': batch['token_mask']}))[:count]
      right += int(np.sum(predicted == batch['label'][:count]))
    return right / len(arrays['label'])

  # -- stages -----------------------------------------------------------------

  def _run_steps(self, step_fn, state, teacher_variables, batches, steps: int, desc: str,
                 kind: str, evaluate: Callable[[Any], float] | None = None,
                 eval_every: int = 0):
    """`steps` steps of `step_fn`; counted under `kind` (as :func:`stage_counts` plans them)."""
    self.step_counts[kind] = self.step_counts.get(kind, 0) + steps
    start, curve = time.time(), {}
    for i in range(1, steps + 1):
      state, _ = step_fn(state, teacher_variables, next(batches))
      if evaluate is not None and eval_every and (i % eval_every == 0 or i == steps):
        curve[i] = evaluate(state)
        if self.config.progress:
          print(f'{desc} step {i}: validation {curve[i]:.4f} ({time.time() - start:.0f} s)',
                flush=True)
    self.timings[desc] = time.time() - start
    return state, curve

  def pretrain_teacher(self) -> tuple[dict[str, Any], dict[int, float]]:
    """The teacher's masked-LM pre-training.

    Returns:
      Its params and the validation masked-token accuracy by step.
    """
    c = self.config
    params = self.init['teacher_mlm'](c.teacher_seed)
    optimizer = self._mlm_optimizer(c.mlm.teacher_steps)
    state = with_learning_rate(step_lib.init_train_state({'params': params}, optimizer,
                                                          rng=c.teacher_seed),
                               c.mlm.teacher_learning_rate)
    objective = objective_lib.Objective(terms={'mlm': objective_lib.masked_lm()})
    step_fn = self._step('teacher_mlm', self.mlm_apply['teacher'], None, objective, optimizer)
    state, curve = self._run_steps(
        step_fn, state, None, self._mlm_batches(c.teacher_seed, c.mlm.batch_size),
        c.mlm.teacher_steps, 'teacher pre-training', 'teacher_mlm_steps',
        evaluate=lambda s: self.mlm_accuracy('teacher', s.variables),
        eval_every=max(c.mlm.teacher_steps // 5, 1))
    return state.params, curve

  def pretrain_student(self, seed: int, teacher_params, *, init: str,
                       weights: Sequence[float]) -> dict[str, Any]:
    """A 3-layer MLM student: DistilBERT's triple loss (or part of it) on the prose.

    Args:
      seed: the run's seed (random init, dropout, batches, masks).
      teacher_params: the pre-trained teacher's params.
      init: ``'teacher'`` (every other layer) or ``'random'``.
      weights: (kd, mlm, cos); only mlm: no teacher is run.
    """
    c = self.config
    if init == 'teacher':
      params = zoo.bert_student_from_teacher(teacher_params,
                                             tuple(c.model.student_layers_from_teacher))
    else:
      params = self.init['student_mlm'](seed)
    optimizer = self._mlm_optimizer(c.mlm.student_steps)
    state = with_learning_rate(step_lib.init_train_state({'params': _copy(params)}, optimizer,
                                                          rng=seed), c.mlm.student_learning_rate)
    needs_teacher = bool(weights[0] or weights[2])
    if needs_teacher:
      step_fn = self._step('student_distil', self.mlm_apply['student'], self.mlm_apply['teacher'],
                           distilbert_objective(c.distil.temperature), optimizer)
    else:  # masked LM alone: no teacher to run
      step_fn = self._step('student_mlm', self.mlm_apply['student'], None, objective_lib.Objective(
          terms={'mlm': objective_lib.masked_lm()}), optimizer)
    state, _ = self._run_steps(step_fn, state, {'params': teacher_params} if needs_teacher
                               else None, self._mlm_batches(seed, c.mlm.batch_size,
                                                            weight_entries(weights)),
                               c.mlm.student_steps, f'student {init} {tuple(weights)} s{seed}',
                               'student_distil_steps' if needs_teacher
                               else 'student_mlm_only_steps')
    return state.params

  def finetune(self, which: str, mlm_params, seed: int, learning_rate: float, *,
               classifier_params=None):
    """Fine-tunes on the Section task; keeps the epoch of best validation accuracy.

    Args:
      which: ``'teacher'`` or ``'student'`` (the architecture).
      mlm_params: a pre-trained MLM model's params (its encoder is used), or None
        with `classifier_params`.
      seed: the run's seed (the new linear layer, dropout, batch order).
      learning_rate: the peak learning rate.
      classifier_params: start from these full classifier params instead.

    Returns:
      ``(params, {'validation': best accuracy, 'epoch': its epoch})``.
    """
    f = self.config.finetune
    if classifier_params is None:
      params = dict(self.init[f'{which}_classifier'](seed))
      params['encoder'] = encoder_of(mlm_params)
    else:
      params = classifier_params
    train = self.data.sections['train']
    steps_per_epoch = len(train['label']) // f.batch_size
    optimizer = make_optimizer(f.warmup_steps, steps_per_epoch * f.epochs, f.weight_decay)
    state = with_learning_rate(step_lib.init_train_state({'params': _copy(params)}, optimizer,
                                                          rng=seed), learning_rate)
    objective = objective_lib.Objective(terms={'ce': objective_lib.supervised()})
    step_fn = self._step(('finetune', which, steps_per_epoch), self.classifier_apply[which], None,
                         objective, optimizer)
    batches = self._row_batches(train, seed, f.batch_size)
    best = (-1.0, 0, None)
    for epoch in range(1, f.epochs + 1):
      state, _ = self._run_steps(step_fn, state, None, batches, steps_per_epoch,
                                 f'finetune {which} lr={learning_rate:g} s{seed} e{epoch}',
                                 f'{which}_finetune_steps')
      accuracy = self.accuracy(which, state.variables, 'validation')
      if accuracy > best[0]:
        best = (accuracy, epoch, jax.tree.map(np.asarray, state.params))
    return best[2], {'validation': best[0], 'epoch': best[1]}

  def distill_classifier(self, seed: int, student_params, teacher_params, transfer: str):
    """Well-Read Students' distillation: the fine-tuned teacher's soft labels on a transfer set.

    Args:
      seed: the run's seed.
      student_params: the student classifier's starting params.
      teacher_params: the fine-tuned teacher classifier's params.
      transfer: ``'related'`` or ``'unrelated'``.

    Returns:
      The student classifier's params.
    """
    c, w = self.config, self.config.well_read
    optimizer = make_optimizer(c.finetune.warmup_steps, w.distill_steps, c.finetune.weight_decay)
    state = with_learning_rate(step_lib.init_train_state({'params': _copy(student_params)},
                                                          optimizer, rng=seed),
                               w.distill_learning_rate)
    objective = objective_lib.Objective(terms={
        'kd': objective_lib.distill(losses.kl_divergence, temperature=w.temperature)})
    step_fn = self._step('well_read_distill', self.classifier_apply['student'],
                         self.classifier_apply['teacher'], objective, optimizer)
    state, _ = self._run_steps(step_fn, state, {'params': teacher_params},
                               self._row_batches(self.data.transfer[transfer], seed, w.batch_size),
                               w.distill_steps, f'distill {transfer} s{seed}',
                               'well_read_distill_steps')
    return jax.tree.map(np.asarray, state.params)

  def student_classifier_params(self, mlm_params, seed: int):
    """A student classifier whose encoder is `mlm_params`' (random when None)."""
    params = dict(self.init['student_classifier'](seed))
    if mlm_params is not None:
      params['encoder'] = encoder_of(mlm_params)
    return params

  def inference_speed(self, teacher_params, student_params) -> dict[str, Any]:
    """Forward time of the teacher and the student classifier, alternated, same batches.

    Returns per-round seconds for each, the per-round ratio teacher/student
    and the load average before and after (a ratio measured at load above
    2 on a 2-core machine is not a result).
    """
    e = self.config.eval
    batch = {k: self.data.sections['validation'][k][:e.batch_size]
             for k in ('tokens', 'token_mask')}
    variables = {'teacher': {'params': teacher_params}, 'student': {'params': student_params}}
    forward = self._predict  # compiled already for the accuracies
    for name in forward:
      forward[name](variables[name], batch).block_until_ready()
    load_before = os.getloadavg()
    seconds = {'teacher': [], 'student': []}
    for _ in range(e.speed_rounds):
      for name in ('teacher', 'student'):
        start = time.perf_counter()
        for _ in range(e.speed_batches):
          forward[name](variables[name], batch).block_until_ready()
        seconds[name].append(time.perf_counter() - start)
    ratios = [t / s for t, s in zip(seconds['teacher'], seconds['student'])]
    return {'seconds': seconds, 'ratio': _common.mean_std(ratios),
            'batch': [e.batch_size, self.config.data.max_tokens], 'batches': e.speed_batches,
            'load_average': {'before': list(load_before), 'after': list(os.getloadavg())}}


# ----------------------------------------------------------------------------
# Selection and the runs.


def student_recipe(variant: str, config, tuned_weights=None) -> tuple[str, tuple[float, ...]]:
  """(init, (kd, mlm, cos) weights) of a DistilBERT-part variant."""
  default = tuple(float(w) for w in config.distil.weights)
  kd, mlm, cos = default
  return {
      'triple': ('teacher', default),
      'tuned': ('teacher', tuple(tuned_weights) if tuned_weights is not None else default),
      'mlm_only': ('teacher', (0.0, 1.0, 0.0)),
      'no_kd': ('teacher', (0.0, mlm, cos)),
      'no_mlm': ('teacher', (kd, 0.0, cos)),
      'no_cos': ('teacher', (kd, mlm, 0.0)),
      'random_init': ('random', default),
  }[variant]


class Runner:
  """Pre-trained students cached by (seed, init, weights): a run is never repeated."""

  def __init__(self, experiment: Experiment, teacher_params):
    self.experiment, self.teacher_params = experiment, teacher_params
    self._students: dict[Any, Any] = {}

  def student(self, seed: int, init: str, weights: Sequence[float]):
    key = (seed, init, tuple(weights))
    if key not in self._students:
      self._students[key] = self.experiment.pretrain_student(
          seed, self.teacher_params, init=init, weights=weights)
    return self._students[key]

  def scratch_mlm(self, seed: int):
    """Well-Read Students' compact model pre-trained by MLM alone from random weights."""
    return self.student(seed, 'random', (0.0, 1.0, 0.0))


def _best(scores: Mapping[Any, float]):
  """The key of the highest score (the first on ties)."""
  return max(scores, key=lambda k: scores[k])


def select(experiment: Experiment, runner: Runner) -> dict[str, Any]:
  """Every choice, on validation accuracy of the selection seed."""
  c = experiment.config
  seed, grid = c.selection_seed, tuple(c.finetune.learning_rate_grid)
  out: dict[str, Any] = {'seed': seed}

  def lr_scores(which, mlm_params):
    return {lr: experiment.finetune(which, mlm_params, seed, lr)[1]['validation'] for lr in grid}

  teachers = {lr: experiment.finetune('teacher', runner.teacher_params, seed, lr) for lr in grid}
  scores = {lr: info['validation'] for lr, (_, info) in teachers.items()}
  out['teacher'] = {'validation': {f'{k:g}': v for k, v in scores.items()},
                    'learning_rate': _best(scores)}
  if 'distilbert' in c.parts:
    default = tuple(float(w) for w in c.distil.weights)
    candidates = [default] + [tuple(float(w) for w in t) for t in c.distil.tuned_weight_grid
                              if tuple(float(w) for w in t) != default]
    tuned = {}
    for weights in candidates:
      s = lr_scores('student', runner.student(seed, 'teacher', weights))
      tuned[weights] = s
    best_weights = _best({w: max(s.values()) for w, s in tuned.items()})
    out['tuned_weights'] = {'grid': {','.join(f'{w:g}' for w in k): {f'{lr:g}': v
                                                                     for lr, v in s.items()}
                                     for k, s in tuned.items()},
                            'weights': list(best_weights)}
    out['distilbert'] = {}
    for variant in distilbert_configs.DISTILBERT_VARIANTS:
      init, weights = student_recipe(variant, c, best_weights)
      s = tuned[weights] if init == 'teacher' and weights in tuned else lr_scores(
          'student', runner.student(seed, init, weights))
      out['distilbert'][variant] = {'weights': list(weights), 'init': init,
                                    'validation': {f'{k:g}': v for k, v in s.items()},
                                    'learning_rate': _best(s)}
  if 'well_read' in c.parts:
    out['well_read'] = select_well_read(experiment, runner,
                                        teachers[out['teacher']['learning_rate']][0])
  return out


def select_well_read(experiment: Experiment, runner: Runner, teacher) -> dict[str, Any]:
  """(a)'s learning rate; for (c), whether to fine-tune after distillation and at which rate.

  `teacher`: the selected fine-tuned teacher classifier of the selection seed.
  """
  c = experiment.config
  seed, grid = c.selection_seed, tuple(c.finetune.learning_rate_grid)
  scratch = runner.scratch_mlm(seed)
  a = {lr: experiment.finetune('student', scratch, seed, lr)[1]['validation'] for lr in grid}
  out = {'a_pretrain_finetune': {'validation': {f'{k:g}': v for k, v in a.items()},
                                 'learning_rate': _best(a)}}
  for variant, init, transfer in (('b_distill_only', None, 'related'),
                                  ('c_pretrained_distill', scratch, 'related'),
                                  ('c_unrelated_transfer', scratch, 'unrelated')):
    distilled = experiment.distill_classifier(
        seed, experiment.student_classifier_params(init, seed), teacher, transfer)
    options = {'none': experiment.accuracy('student', {'params': distilled}, 'validation')}
    if variant != 'b_distill_only':  # (b) is distillation alone, as the paper's baseline
      for lr in grid:
        options[f'{lr:g}'] = experiment.finetune('student', None, seed, lr,
                                                 classifier_params=distilled)[1]['validation']
    choice = _best(options)
    out[variant] = {'validation': options, 'finetune': choice}
  return out


def run_seed(experiment: Experiment, runner: Runner, selection: Mapping[str, Any],
             seed: int) -> dict[str, Any]:
  """One reported seed: every model trained with the selected settings, test scored once."""
  c = experiment.config
  record: dict[str, Any] = {'seed': seed}

  def scored(which, params):
    return {'validation': experiment.accuracy(which, {'params': params}, 'validation'),
            # The test split: scored once per model, here.
            'test': experiment.accuracy(which, {'params': params}, 'test')}

  teacher, _ = experiment.finetune('teacher', runner.teacher_params, seed,
                                   selection['teacher']['learning_rate'])
  record['teacher'] = scored('teacher', teacher)
  record['classifiers'] = {'teacher': teacher}
  if 'distilbert' in c.parts:
    record['distilbert'] = {}
    for variant, chosen in selection['distilbert'].items():
      mlm_params = runner.student(seed, chosen['init'], tuple(chosen['weights']))
      params, _ = experiment.finetune('student', mlm_params, seed, chosen['learning_rate'])
      record['distilbert'][variant] = {
          **scored('student', params), 'mlm_validation': experiment.mlm_accuracy(
              'student', {'params': mlm_params})}
      if variant == 'triple':
        record['classifiers']['student'] = params
  if 'well_read' in c.parts:
    w = selection['well_read']
    scratch = runner.scratch_mlm(seed)
    record['well_read'] = {}
    params, _ = experiment.finetune('student', scratch, seed,
                                    w['a_pretrain_finetune']['learning_rate'])
    record['well_read']['a_pretrain_finetune'] = scored('student', params)
    for variant, init, transfer in (('b_distill_only', None, 'related'),
                                    ('c_pretrained_distill', scratch, 'related'),
                                    ('c_unrelated_transfer', scratch, 'unrelated')):
      params = experiment.distill_classifier(
          seed, experiment.student_classifier_params(init, seed), teacher, transfer)
      if w[variant]['finetune'] != 'none':
        params, _ = experiment.finetune('student', None, seed, float(w[variant]['finetune']),
                                        classifier_params=params)
      record['well_read'][variant] = scored('student', params)
  return record


def run(config: ml_collections.ConfigDict, workdir: str,
        command_line: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the experiment; writes and returns ``<workdir>/results.json``."""
  start = time.time()
  os.makedirs(workdir, exist_ok=True)
  experiment = Experiment(config, workdir)
  teacher_params, teacher_curve = experiment.pretrain_teacher()
  runner = Runner(experiment, teacher_params)
  selection = select(experiment, runner)
  per_seed = []
  for seed in config.seeds:
    record = run_seed(experiment, runner, selection, seed)
    classifiers = record.pop('classifiers')
    per_seed.append(record)
    if config.progress:
      print(f"seed {seed}: teacher test {record['teacher']['test']:.3f}", flush=True)
  speed = None
  if 'student' in classifiers:
    speed = experiment.inference_speed(classifiers['teacher'], classifiers['student'])
  results = {
      'config': config.to_dict(),
      'data': experiment.data.report,
      'params': {'teacher': count_params(classifiers['teacher']['encoder']),
                 'student': count_params(experiment.student_classifier_params(None, 0)['encoder'])},
      'teacher_pretraining': {'validation_mlm_accuracy': {str(k): v
                                                          for k, v in teacher_curve.items()}},
      'selection': _jsonable(selection),
      'per_seed': per_seed,
      'speed': speed,
      'stage_seconds': experiment.timings,
      'steps': experiment.step_counts,
      'wall_seconds': time.time() - start,
      'finished': time.time(),
  }
  results['summary'] = summarize(results)
  results['claims'] = claims(results)
  return _common.write_results(results, workdir, config, command_line)


def _jsonable(tree):
  if isinstance(tree, Mapping):
    return {str(k) if not isinstance(k, tuple) else ','.join(map(str, k)): _jsonable(v)
            for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_jsonable(v) for v in tree]
  return tree


# ----------------------------------------------------------------------------
# Sizing: one step of each stage timed, the run's cost estimated.


def stage_counts(config: ml_collections.ConfigDict, train_examples: int) -> dict[str, int]:
  """How many steps of each kind the run makes (its plan, as :func:`run` follows it)."""
  c = config
  grid = len(c.finetune.learning_rate_grid)
  seeds = len(c.seeds)
  ft_steps = (train_examples // c.finetune.batch_size) * c.finetune.epochs
  default = tuple(c.distil.weights)
  extra_weights = sum(1 for t in c.distil.tuned_weight_grid if tuple(t) != default)
  distil_runs = mlm_only_runs = ft_student = distill = ft_teacher = 0
  ft_teacher += grid + seeds
  if 'distilbert' in c.parts:
    # Selection: the variants (tuned = the best grid point, not rerun) + the grid's extra points.
    with_teacher = 5 + extra_weights  # triple, no_kd, no_mlm, no_cos, random_init + grid
    distil_runs += with_teacher + 5 * seeds + seeds  # + tuned per reported seed
    mlm_only_runs += 1 + seeds
    ft_student += (with_teacher + 1) * grid + 7 * seeds
  if 'well_read' in c.parts:
    mlm_only_runs += 1 + seeds
    ft_student += grid + 2 * grid + seeds * 3  # (a) grid, (c) x2 grid; reported (a) + (c) x2
    distill += 3 * (1 + seeds)
  return {'teacher_mlm_steps': c.mlm.teacher_steps,
          'student_distil_steps': distil_runs * c.mlm.student_steps,
          'student_mlm_only_steps': mlm_only_runs * c.mlm.student_steps,
          'teacher_finetune_steps': ft_teacher * ft_steps,
          'student_finetune_steps': ft_student * ft_steps,
          'well_read_distill_steps': distill * c.well_read.distill_steps}


def sizing(config: ml_collections.ConfigDict, workdir: str, repeats: int = 5) -> dict[str, Any]:
  """Times one step of each stage (after its compile) and estimates the whole run.

  Both the wall time and this process's CPU time per step are measured: on
  a loaded machine the wall time says little, while the CPU time bounds a
  quiet machine's wall time (between CPU / cores and CPU).
  """
  start = time.time()
  experiment = Experiment(config, workdir)
  data_seconds = time.time() - start
  c, e = config, experiment
  teacher = e.init['teacher_mlm'](0)
  load_before = os.getloadavg()

  def time_step(step_fn, state, teacher_variables, batches):
    state, _ = step_fn(state, teacher_variables, next(batches))  # compile
    jax.block_until_ready(state.params)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(repeats):
      state, _ = step_fn(state, teacher_variables, next(batches))
    jax.block_until_ready(state.params)
    return ((time.perf_counter() - start) / repeats,
            (time.process_time() - cpu_start) / repeats)

  timed = {}
  opt = e._mlm_optimizer(100)
  mlm = objective_lib.Objective(terms={'mlm': objective_lib.masked_lm()})
  state = with_learning_rate(step_lib.init_train_state({'params': _copy(teacher)}, opt), 1e-4)
  timed['teacher_mlm_steps'] = time_step(
      e._step('size_teacher', e.mlm_apply['teacher'], None, mlm, opt), state, None,
      e._mlm_batches(0, c.mlm.batch_size))
  student = zoo.bert_student_from_teacher(teacher, tuple(c.model.student_layers_from_teacher))
  for key, needs in (('student_distil_steps', True), ('student_mlm_only_steps', False)):
    state = with_learning_rate(step_lib.init_train_state({'params': _copy(student)}, opt), 1e-4)
    objective = distilbert_objective(2.0) if needs else mlm
    timed[key] = time_step(
        e._step(('size', needs), e.mlm_apply['student'], e.mlm_apply['teacher'] if needs
                else None, objective, opt), state, {'params': teacher} if needs else None,
        e._mlm_batches(0, c.mlm.batch_size, weight_entries(c.distil.weights)))
  ce = objective_lib.Objective(terms={'ce': objective_lib.supervised()})
  classifiers = {}
  for which in ('teacher', 'student'):
    params = e.init[f'{which}_classifier'](0)
    classifiers[which] = params
    state = with_learning_rate(step_lib.init_train_state({'params': _copy(params)}, opt), 1e-4)
    timed[f'{which}_finetune_steps'] = time_step(
        e._step(('size_ft', which), e.classifier_apply[which], None, ce, opt), state, None,
        e._row_batches(e.data.sections['train'], 0, c.finetune.batch_size))
  kd = objective_lib.Objective(terms={'kd': objective_lib.distill(losses.kl_divergence)})
  state = with_learning_rate(step_lib.init_train_state({'params': _copy(classifiers['student'])},
                                                        opt), 1e-4)
  timed['well_read_distill_steps'] = time_step(
      e._step('size_wrs', e.classifier_apply['student'], e.classifier_apply['teacher'], kd, opt),
      state, {'params': classifiers['teacher']},
      e._row_batches(e.data.transfer['related'], 0, c.well_read.batch_size))
  counts = stage_counts(config, experiment.data.report['sections']['train'])
  wall = {k: counts[k] * timed[k][0] for k in counts}
  cpu = {k: counts[k] * timed[k][1] for k in counts}
  return {'wall_seconds_per_step': {k: v[0] for k, v in timed.items()},
          'cpu_seconds_per_step': {k: v[1] for k, v in timed.items()},
          'steps': counts, 'estimated_wall_seconds': wall,
          'estimated_total_wall_seconds': sum(wall.values()),
          'estimated_total_cpu_seconds': sum(cpu.values()),
          'data_seconds': data_seconds, 'cpu_count': os.cpu_count(),
          'load_average': {'before': list(load_before), 'after': list(os.getloadavg())}}



# ----------------------------------------------------------------------------
# Summary, claims and tables.


def _runs(results: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
  """Row name -> (part, variant) of every student run in the results."""
  first = results['per_seed'][0]
  return {f'{part}/{variant}': (part, variant) for part in ('distilbert', 'well_read')
          for variant in first.get(part, {})}


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
  per_seed = results['per_seed']
  out = {'teacher': {k: _common.mean_std([r['teacher'][k] for r in per_seed])
                     for k in ('validation', 'test')}}
  for name, (part, variant) in _runs(results).items():
    rows = [r[part][variant] for r in per_seed]
    out[name] = {k: _common.mean_std([row[k] for row in rows]) for k in rows[0]}
    out[name]['retained'] = _common.mean_std([row['test'] / r['teacher']['test']
                                              for row, r in zip(rows, per_seed)])
  return out


def _test(results, part, variant):
  return [r[part][variant]['test'] for r in results['per_seed']]


def claims(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Each paper claim, judged now from the recorded per-seed numbers (:func:`_common.claim`)."""
  per_seed, c = results['per_seed'], results['config']
  out = []

  def better(text, part, variant, baseline_part, baseline_variant):
    out.append(_common.claim(text, _test(results, part, variant),
                             _test(results, baseline_part, baseline_variant),
                             scale=100, unit='points'))

  if 'distilbert' in per_seed[0]:
    fraction = c['claims']['retained_fraction']
    teacher = [r['teacher']['test'] for r in per_seed]
    out.append(_common.claim(
        f"DistilBERT keeps ≥ {100 * fraction:g} % of the teacher's test accuracy (student "
        'minus that share of the teacher)', _test(results, 'distilbert', 'triple'),
        [fraction * t for t in teacher], scale=100, unit='points'))
    # The parameter ratio is a count, not a measurement over seeds: format_table states it.
    speed = results.get('speed')
    if speed:
      loaded = max(speed['load_average']['before'][0], speed['load_average']['after'][0]) > 2
      out.append(_common.claim(
          'DistilBERT infers faster (teacher minus student seconds per round)',
          speed['seconds']['teacher'], speed['seconds']['student'], digits=4, unit='s',
          over='timed rounds',
          caveat='measured at a load average above 2: not a result' if loaded else None))
    for variant, what in (('no_kd', 'the soft-target term'), ('no_mlm', 'the masked-LM term'),
                          ('no_cos', 'the cosine term'),
                          ('random_init', 'the initialisation from the teacher'),
                          ('mlm_only', 'distillation (vs masked LM alone)')):
      better(f'{what} matters: the triple loss beats {variant}', 'distilbert', 'triple',
             'distilbert', variant)
  if 'well_read' in per_seed[0]:
    better('Pre-trained distillation (c) beats pre-training + fine-tuning (a)', 'well_read',
           'c_pretrained_distill', 'well_read', 'a_pretrain_finetune')
    better('Pre-trained distillation (c) beats distillation without pre-training (b)',
           'well_read', 'c_pretrained_distill', 'well_read', 'b_distill_only')
    better('A task-related transfer set beats an unrelated one (both (c))', 'well_read',
           'c_pretrained_distill', 'well_read', 'c_unrelated_transfer')
  return out

LABELS = {
    'distilbert/triple': 'DistilBERT: triple loss 5/2/1, teacher init',
    'distilbert/tuned': 'DistilBERT: triple loss, weights tuned on validation',
    'distilbert/mlm_only': 'masked LM alone, teacher init',
    'distilbert/no_kd': 'triple loss less the soft-target term',
    'distilbert/no_mlm': 'triple loss less the masked-LM term',
    'distilbert/no_cos': 'triple loss less the cosine term',
    'distilbert/random_init': 'triple loss, random init',
    'well_read/a_pretrain_finetune': 'WRS (a): MLM pre-training, fine-tuning',
    'well_read/b_distill_only': 'WRS (b): distillation on the task-related set, no pre-training',
    'well_read/c_pretrained_distill': 'WRS (c): pre-trained distillation, task-related set',
    'well_read/c_unrelated_transfer': 'WRS (c) with an unrelated transfer set',
}


def describe(results: Mapping[str, Any]) -> str:
  config, params, data = results['config'], results['params'], results['data']
  m, mlm, f = config['model'], config['mlm'], config['finetune']
  sel = results['selection']
  curve = results['teacher_pretraining']['validation_mlm_accuracy']
  last = list(curve)[-1]
  return (
      'Sanh et al. (2019), arXiv:1910.01108, and Turc et al. (2019), arXiv:1908.08962, on '
      f'Debian text. Teacher: a {m["teacher_layers"]}-layer BERT (width {m["hidden"]}, '
      f'{params["teacher"]:,} encoder parameters, vocabulary of {data["vocab_size"]:,} WordPiece '
      f'pieces trained on the prose) pre-trained by masked LM for {mlm["teacher_steps"]} steps '
      f'of {mlm["batch_size"]} packed sequences of {config["data"]["max_tokens"]} tokens '
      f'(validation masked-token accuracy {100 * curve[last]:.1f} % at the end). Students: '
      f'{len(m["student_layers_from_teacher"])} layers ({params["student"]:,} parameters), '
      f'from teacher layers {tuple(m["student_layers_from_teacher"])} or random, '
      f'{mlm["student_steps"]} steps on the prose; tuned weights (kd, mlm, cos) = '
      f'{tuple(sel.get("tuned_weights", {}).get("weights", ()))}. Fine-tuning on the Section task '
      f'({data["sections"]["train"]:,} training examples, {data["sections"]["validation"]:,} '
      f'validation, {data["sections"]["test"]:,} test): {f["epochs"]} epochs, the best '
      'validation epoch kept, the learning rate from '
      f'{{{", ".join(f"{v:g}" for v in f["learning_rate_grid"])}}} chosen per model on '
      f'validation with seed {sel["seed"]} (not reported). Well-Read Students: transfer sets of '
      f'{data["transfer_paragraphs"]["related"]:,} paragraphs each, distillation for '
      f'{config["well_read"]["distill_steps"]} steps.'
  )


def format_table(results: Mapping[str, Any]) -> str:
  summary = results['summary']
  pct = lambda s: _common.mean_std_text(s, scale=100.0)
  rows = [['teacher (6 layers)', pct(summary['teacher']['validation']),
           pct(summary['teacher']['test']), '100', '']]
  for name in _runs(results):
    s = summary[name]
    rows.append([LABELS.get(name, name), pct(s['validation']), pct(s['test']), pct(s['retained']),
                 pct(s['mlm_validation']) if 'mlm_validation' in s else ''])
  lines = ['Section accuracy (%), share of the teacher\'s test accuracy kept (%), and the '
           'pre-trained student\'s validation masked-token accuracy (%):', '']
  lines += _common.markdown_table(['model', 'validation', 'test', 'teacher kept', 'MLM'], rows)
  speed = results.get('speed')
  if speed:
    load = speed['load_average']
    lines += ['', f"Parameters (encoder): teacher {results['params']['teacher']:,}, student "
                  f"{results['params']['student']:,} (ratio "
                  f"{results['params']['student'] / results['params']['teacher']:.2f}). "
                  f"Inference time ratio teacher / student: "
                  f"{_common.mean_std_text(speed['ratio'], digits=2)} (batch {speed['batch']}, "
                  f"load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after)."]
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  # Checked against the schema before anything is built or compiled.
  config, workdir = config_lib.parse_args(argv, description=__doc__,
                                          schema=distilbert_configs.schema())
  if config.sizing:
    report = sizing(config, workdir)
    print(json.dumps(report, indent=1))
    return
  results = run(config, workdir, _common.command(MODULE, argv))
  print(format_table(results))
  print('\n' + '\n'.join(_common.claims_table(claims(results))))
  print(f"\n{len(config.seeds)} seeds in {results['wall_seconds']:.0f} s; "
        f"results in {workdir}/results.json")


if __name__ == '__main__':
  main(sys.argv[1:])
