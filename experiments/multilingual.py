"""Multilingual sentence embeddings by distillation (Reimers & Gurevych, 2020).

Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual
using Knowledge Distillation", EMNLP 2020, arXiv:2004.09813: a frozen
monolingual teacher ``M`` embeds the English source ``s``; a student
``M^`` learns to map both ``s`` and its translation ``t`` onto it,

    loss = mean over the batch of  ||M(s) - M^(s)||² / d + ||M(s) - M^(t)||² / d,

so that translations land where the teacher puts their English source.

Here the teacher is all-MiniLM-L6-v2 (sentence-transformers' mean pooling
and L2 normalisation); the student is a kdjax ``BertEncoder`` with the
teacher's embeddings and every other layer (DistilBERT's initialisation),
and the teacher's English vocabulary (the paper's student is XLM-R, whose
vocabulary covers the target languages; here German, French and Spanish
are cut into the uncased English word pieces). The objective is two
:func:`kdjax.objective.feature` terms of
:func:`kdjax.losses.sentence_embedding_mse` through
:func:`kdjax.step.make_train_step`; the teacher is frozen, so its English
embeddings are computed once and cached, and the step's teacher reads them
from the batch.

Evaluation on held-out catalogs, per language: translation retrieval
accuracy (for each English sentence, is its translation the nearest of all
the held-out translations by cosine, and the other way round), for the
teacher, the untrained student and the trained student (the same model on
both sides); and the English side's agreement with the teacher (mean cosine
of the student's and the teacher's embeddings of the same sentence, and
the share of each sentence's k nearest English neighbours that are the
teacher's). Learning rate and steps are chosen on validation retrieval
with a selection seed; the test catalogs are scored once per seed, at the
end. Usage::

    python -m experiments.multilingual --config=experiments/configs/multilingual.py:cpu \\
        --workdir=runs/multilingual_cpu
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import hashlib
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import _common
from experiments.configs import multilingual as multilingual_configs
from kdjax import data as data_lib
from kdjax import losses
from kdjax import metrics as metrics_lib
from kdjax import objective as objective_lib
from kdjax import step as step_lib
from kdjax import zoo
from kdjax._outputs import Outputs

MODULE = 'experiments.multilingual'
DIRECTIONS = ('en_to_x', 'x_to_en')
TEACHER_FEATURE = 'teacher_embedding'


# ----------------------------------------------------------------------------
# Metrics.


def retrieval_accuracy(source: np.ndarray, target: np.ndarray) -> dict[str, float]:
  """Translation matching: row ``i`` of `source` and of `target` are translations.

  Embeddings are compared by cosine; ``en_to_x`` is the share of sources
  whose most similar target is their own translation, ``x_to_en`` the
  other way round (Reimers & Gurevych's bitext retrieval, as accuracy).
  A tie counts as a miss unless the translation is the first of the tied.

  Args:
    source: ``[n, d]`` embeddings of the English sentences.
    target: ``[n, d]`` embeddings of their translations, same order.

  Returns:
    ``{'en_to_x': float, 'x_to_en': float}``.
  """
  source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
  if source.ndim != 2 or source.shape != target.shape or not len(source):
    raise ValueError(f'source and target must both be [n, d] with n > 0, got '
                     f'{source.shape} and {target.shape}')
  source = source / np.linalg.norm(source, axis=1, keepdims=True)
  target = target / np.linalg.norm(target, axis=1, keepdims=True)
  similarity = source @ target.T
  rows = np.arange(len(source))
  return {'en_to_x': float(np.mean(similarity.argmax(axis=1) == rows)),
          'x_to_en': float(np.mean(similarity.argmax(axis=0) == rows))}


def english_agreement(student: np.ndarray, teacher: np.ndarray, k: int) -> dict[str, float]:
  """How close the student's English embeddings are to the teacher's, on the same sentences.

  Args:
    student: ``[n, d]`` the student's embeddings.
    teacher: ``[n, d]`` the teacher's, same sentences.
    k: neighbours compared (fewer than ``n``).

  Returns:
    ``cosine``: the mean cosine of row ``i`` of both; ``neighbours``: the
    mean over sentences of the share of the student's ``k`` nearest other
    sentences (cosine) that are among the teacher's ``k``.
  """
  student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
  if student.shape != teacher.shape or student.ndim != 2 or not 0 < k < len(student):
    raise ValueError(f'student and teacher must be [n, d] alike with 0 < k={k} < n, got '
                     f'{student.shape} and {teacher.shape}')
  student = student / np.linalg.norm(student, axis=1, keepdims=True)
  teacher = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)

  def neighbours(x):
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind='stable')[:, :k]

  s, t = neighbours(student), neighbours(teacher)
  overlap = [len(set(a) & set(b)) / k for a, b in zip(s.tolist(), t.tolist())]
  return {'cosine': float(np.mean(np.sum(student * teacher, axis=1))),
          'neighbours': float(np.mean(overlap))}


# ----------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class Data:
  """Pairs per split and language, and one token table for every sentence used."""

  pairs: dict[str, dict[str, list[data_lib.TranslationPair]]]
  sentences: list[str]  # every distinct sentence, English and foreign
  index: dict[str, int]
  tokens: np.ndarray  # int32 [n, max_tokens]
  lengths: np.ndarray  # int32 [n]
  report: dict[str, Any]
  pad_multiple: int = 8

  def ids(self, texts: Sequence[str]) -> np.ndarray:
    return np.asarray([self.index[t] for t in texts], np.int64)


def _read_pairs(d: ml_collections.ConfigDict):
  langs = tuple(d.langs)
  if d.source == 'gettext':
    return data_lib.gettext_multilingual_pairs(langs, cache_dir=d.cache_dir or None)
  if d.source == 'pairs_dir':
    if not d.pairs_dir:
      raise SystemExit("config.data.source = 'pairs_dir' needs config.data.pairs_dir")
    return data_lib.read_pairs_dir(d.pairs_dir, langs), {'pairs_dir': d.pairs_dir}
  raise ValueError(f'unknown data.source {d.source!r}')


def load_data(config: ml_collections.ConfigDict, tokenizer) -> Data:
  """Splits, filters (English words, tokens, unique targets) and subsets the pairs.

  A pair is kept when its English side has at least ``data.min_words``
  words and both sides fit ``data.max_tokens`` tokens ([CLS] and [SEP]
  included) of the teacher's tokenizer. In the held-out splits a
  translation that occurs twice keeps only its first pair, so that
  retrieval has one right answer. Then a seeded subset of each split and
  language (``data.max_*``; 0 keeps all).
  """
  d = config.data
  if d.source == 'ted_multi':
    splits = {split: data_lib.load_ted_multi_pairs(split, tuple(d.langs))
              for split in ('train', 'validation', 'test')}
    split_report = {'source': 'ted_multi_translate'}
  else:
    pairs, read_report = _read_pairs(d)
    splits, split_report = data_lib.make_multilingual_splits(
        pairs, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
        min_eval_pairs=d.min_eval_pairs)
    split_report['read'] = read_report
  candidates = sorted({t for by_lang in splits.values() for ps in by_lang.values() for p in ps
                       for t in (p.source, p.target)})
  encoded = tokenizer.encode_batch(candidates)
  length_of = {t: len(e.ids) for t, e in zip(candidates, encoded)}
  rng = np.random.default_rng(d.subset_seed)
  limits = {'train': d.max_train, 'validation': d.max_val, 'test': d.max_test}
  kept, report = {}, {'splits': split_report, 'kept': {}}
  for split, by_lang in splits.items():
    kept[split] = {}
    for lang in d.langs:
      pairs = [p for p in by_lang[lang] if len(p.source.split()) >= d.min_words
               and max(length_of[p.source], length_of[p.target]) <= d.max_tokens]
      if split != 'train':
        seen, unique = set(), []
        for p in pairs:
          if p.target not in seen:
            seen.add(p.target)
            unique.append(p)
        pairs = unique
      if limits[split] and len(pairs) > limits[split]:
        chosen = np.sort(rng.choice(len(pairs), limits[split], replace=False))
        pairs = [pairs[i] for i in chosen]
      if len(pairs) < (2 if split == 'train' else d.min_eval_pairs):
        raise ValueError(f'{split}/{lang}: {len(pairs)} pairs after the filters, fewer than '
                         f'{d.min_eval_pairs}; lower data.min_words or raise data.max_tokens')
      kept[split][lang] = pairs
      report['kept'][f'{split}/{lang}'] = len(pairs)
  sentences = sorted({t for by_lang in kept.values() for ps in by_lang.values() for p in ps
                      for t in (p.source, p.target)})
  tokens = np.zeros((len(sentences), d.max_tokens), np.int32)
  lengths = np.zeros(len(sentences), np.int32)
  for i, e in enumerate(tokenizer.encode_batch(sentences)):
    tokens[i, :len(e.ids)] = e.ids
    lengths[i] = len(e.ids)
  return Data(kept, sentences, {t: i for i, t in enumerate(sentences)}, tokens, lengths, report,
              d.pad_multiple)


def _bucket(width: int, max_tokens: int, multiple: int) -> int:
  """Pads batches to a multiple of `multiple` tokens: few compiled shapes, little padding."""
  return min(max_tokens, -(-width // multiple) * multiple)


# ----------------------------------------------------------------------------
# Models.


def make_embed_fn(model: zoo.BertEncoder):
  """``embed(variables, tokens, lengths) -> [n, d]`` mean-pooled, normalised (jitted)."""

  @jax.jit
  def embed(variables, tokens, lengths):
    mask = (jnp.arange(tokens.shape[1])[None] < lengths[:, None]).astype(jnp.int32)
    outputs = model.apply(variables, tokens, mask)
    return zoo.sentence_embedding(outputs.features['sequence'], mask)

  return embed


def embed_all(embed, variables, data: Data, ids: np.ndarray, batch_size: int) -> np.ndarray:
  """Embeddings of sentences ``ids`` of `data`, in batches sorted by length."""
  ids = np.asarray(ids)
  order = np.argsort(data.lengths[ids], kind='stable')
  rows = []
  for start in range(0, len(ids), batch_size):
    chosen = ids[order[start:start + batch_size]]
    count = len(chosen)
    padded = np.concatenate([chosen, np.repeat(chosen[-1:], batch_size - count)])
    width = _bucket(int(data.lengths[padded].max()), data.tokens.shape[1], data.pad_multiple)
    rows.append(np.asarray(embed(variables, data.tokens[padded, :width],
                                 data.lengths[padded]))[:count])
  out = np.zeros((len(ids), rows[0].shape[1]), np.float32)
  out[order] = np.concatenate(rows)
  return out


def student_apply_fn(model: zoo.BertEncoder):
  """The student as a kdjax ``apply``: both sides of each pair in one forward.

  Reads ``source_tokens``/``target_tokens`` ``[batch, time]`` and their
  masks; exposes ``source_embedding`` and ``target_embedding`` ``[batch, d]``.
  """

  def apply(variables, batch, *, train, rngs=None):
    tokens = jnp.concatenate([batch['source_tokens'], batch['target_tokens']])
    mask = jnp.concatenate([batch['source_mask'], batch['target_mask']])
    outputs = model.apply(variables, tokens, mask, train=train, rngs=rngs)
    embedding = zoo.sentence_embedding(outputs.features['sequence'], mask)
    n = batch['source_tokens'].shape[0]
    return Outputs(logits=None, features={'source_embedding': embedding[:n],
                                          'target_embedding': embedding[n:]}), {}

  return apply


def cached_teacher_apply(variables, batch, *, train, rngs=None):
  """The frozen teacher's embedding of the English side, read from the batch."""
  del variables, train, rngs
  return Outputs(logits=None, features={'embedding': batch[TEACHER_FEATURE]}), {}


def make_objective() -> objective_lib.Objective:
  """Reimers & Gurevych's loss: MSE(student(en), teacher(en)) + MSE(student(x), teacher(en))."""
  return objective_lib.Objective(terms={
      'source': objective_lib.feature(losses.sentence_embedding_mse, 'source_embedding',
                                      'embedding'),
      'target': objective_lib.feature(losses.sentence_embedding_mse, 'target_embedding',
                                      'embedding'),
  }, mask_key=None)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with the learning rate in its state (one compile for the grid), linear warm-up."""
  t = config.train
  warmup = lambda count: jnp.minimum(1.0, (count + 1) / max(t.warmup_steps, 1))
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.inject_hyperparams(optax.adamw)(learning_rate=t.learning_rate_grid[0],
                                            weight_decay=t.weight_decay),
      optax.scale_by_schedule(warmup),
  )


def _with_learning_rate(state, learning_rate: float):
  chain = list(state.opt_state)
  adam = chain[1]
  hyper = dict(adam.hyperparams)
  hyper['learning_rate'] = jnp.asarray(learning_rate, jnp.asarray(hyper['learning_rate']).dtype)
  chain[1] = adam._replace(hyperparams=hyper)
  return state.replace(opt_state=tuple(chain))


# ----------------------------------------------------------------------------
# The experiment.


class Experiment:
  """Everything compiled once: the teacher's cache, the student's step and embedder."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    teacher = zoo.load_bert(_common.minilm_dir(config.teacher.checkpoint))
    if teacher.pooling != 'mean' or not teacher.normalize:
      raise ValueError(f'the teacher must mean-pool and normalise (sentence-transformers); '
                       f'it has pooling={teacher.pooling!r}, normalize={teacher.normalize}')
    self.teacher = teacher
    self.data = load_data(config, teacher.tokenizer)
    if config.student.checkpoint:
      student = zoo.load_bert(config.student.checkpoint, dropout_rate=config.student.dropout)
      self.student_model, params = student.model, student.variables['params']
    else:
      layers = tuple(config.student.teacher_layers)
      self.student_model = zoo.BertEncoder(dataclasses.replace(
          teacher.model.config, num_layers=len(layers), dropout_rate=config.student.dropout))
      params = zoo.bert_student_from_teacher(teacher.variables['params'], layers)
    # Copies: the train step donates its state, the teacher's arrays must survive.
    self.initial_variables = {'params': jax.tree.map(np.array, params)}
    self.teacher_embed = make_embed_fn(teacher.model)
    self.student_embed = make_embed_fn(self.student_model)
    self.objective = make_objective()
    self.optimizer = make_optimizer(config)
    self.train_step = jax.jit(step_lib.make_train_step(
        student_apply_fn(self.student_model), cached_teacher_apply, self.objective,
        self.optimizer), donate_argnums=0)
    self.teacher_cache = self._teacher_embeddings()

  def _teacher_embeddings(self) -> np.ndarray:
    """The teacher's embeddings (cached in the workdir by content), zero where unneeded.

    Needed: every English sentence, and the translations of the held-out
    splits (for the teacher's own retrieval).
    """
    d = self.data
    needed = d.ids(sorted({t for split, by_lang in d.pairs.items() for ps in by_lang.values()
                           for p in ps for t in (p.source, p.target)[:1 if split == 'train' else 2]}))
    key = hashlib.sha256(('\n'.join(d.sentences[i] for i in needed)
                          + _common.minilm_dir(self.config.teacher.checkpoint)).encode())
    path = os.path.join(self.workdir, f'teacher_embeddings_{key.hexdigest()[:12]}.npy')
    if os.path.exists(path):
      return np.load(path)
    start = time.time()
    embeddings = np.zeros((len(d.sentences), self.teacher.model.config.hidden), np.float32)
    embeddings[needed] = embed_all(self.teacher_embed, self.teacher.variables, d, needed,
                                   self.config.teacher.batch_size)
    os.makedirs(self.workdir, exist_ok=True)
    np.save(path + '.tmp.npy', embeddings)
    os.replace(path + '.tmp.npy', path)
    print(f'teacher embeddings of {len(needed)} sentences in {time.time() - start:.0f} s')
    return embeddings

  def evaluate(self, split: str, embeddings: np.ndarray | None) -> dict[str, float]:
    """Retrieval per language and direction on `split`; English agreement on its sources.

    `embeddings`: the model's embedding of every sentence of ``self.data``
    (None: the teacher's cache).
    """
    d, k = self.data, self.config.eval.neighbours
    own = self.teacher_cache if embeddings is None else embeddings
    out = {}
    for lang, pairs in d.pairs[split].items():
      source, target = d.ids([p.source for p in pairs]), d.ids([p.target for p in pairs])
      for direction, value in retrieval_accuracy(own[source], own[target]).items():
        out[f'{lang}/{direction}'] = value
    out['mean_retrieval'] = float(np.mean([out[f'{l}/{r}'] for l in d.pairs[split]
                                           for r in DIRECTIONS]))
    english = d.ids(sorted({p.source for ps in d.pairs[split].values() for p in ps}))
    for name, value in english_agreement(own[english], self.teacher_cache[english], k).items():
      out[f'english/{name}'] = value
    return out

  def embed_student(self, variables, split: str) -> np.ndarray:
    """The student's embeddings of `split`'s sentences (zeros elsewhere)."""
    d = self.data
    ids = d.ids(sorted({t for ps in d.pairs[split].values() for p in ps
                        for t in (p.source, p.target)}))
    out = np.zeros_like(self.teacher_cache)
    out[ids] = embed_all(self.student_embed, variables, d, ids, self.config.eval.batch_size)
    return out

  def train(self, seed: int, learning_rate: float, steps: int, *, eval_every: int | None,
            desc: str):
    """Trains from the initial student; returns the state and validation scores by step."""
    d, t = self.data, self.config.train
    train_pairs = [(p.source, p.target) for ps in d.pairs['train'].values() for p in ps]
    source, target = (d.ids([s for s, _ in train_pairs]), d.ids([x for _, x in train_pairs]))
    state = step_lib.init_train_state(jax.tree.map(jnp.array, self.initial_variables),
                                      self.optimizer, rng=seed)
    state = _with_learning_rate(state, learning_rate)
    rng = np.random.default_rng(seed)
    order, position, curve = rng.permutation(len(train_pairs)), 0, {}
    start, losses_seen = time.time(), []
    for step in range(1, steps + 1):
      if position + t.batch_size > len(order):
        order, position = rng.permutation(len(train_pairs)), 0
      chosen = order[position:position + t.batch_size]
      position += t.batch_size
      s, x = source[chosen], target[chosen]
      width = _bucket(int(max(d.lengths[s].max(), d.lengths[x].max())), d.tokens.shape[1],
                      d.pad_multiple)
      batch = {
          'source_tokens': d.tokens[s, :width], 'target_tokens': d.tokens[x, :width],
          'source_mask': (np.arange(width)[None] < d.lengths[s][:, None]).astype(np.int32),
          'target_mask': (np.arange(width)[None] < d.lengths[x][:, None]).astype(np.int32),
          TEACHER_FEATURE: self.teacher_cache[s],
      }
      state, step_metrics = self.train_step(state, None, batch)
      losses_seen.append(step_metrics)
      if eval_every and step % eval_every == 0:
        scores = self.evaluate('validation', self.embed_student(state.variables, 'validation'))
        loss = metrics_lib.compute(losses_seen[-1])['loss/total']
        curve[step] = scores
        if self.config.progress:
          print(f'{desc} step {step}: loss {float(loss):.5f}, validation retrieval '
                f"{scores['mean_retrieval']:.3f} ({time.time() - start:.0f} s)", flush=True)
    return state, curve


def select(experiment: Experiment) -> dict[str, Any]:
  """Learning rate and steps by mean validation retrieval, on the selection seed."""
  config = experiment.config
  t = config.train
  grid = {}
  for lr in t.learning_rate_grid:
    _, curve = experiment.train(config.selection_seed, lr, t.steps, eval_every=t.eval_every,
                                desc=f'select lr={lr:g}')
    for steps, scores in curve.items():
      grid[f'{lr:g}@{steps}'] = {'learning_rate': lr, 'steps': steps,
                                 'validation_retrieval': scores['mean_retrieval'],
                                 'validation': scores}
  best = max(grid.values(), key=lambda g: (g['validation_retrieval'], -g['steps']))
  return {'seed': config.selection_seed, 'grid': grid, 'learning_rate': best['learning_rate'],
          'steps': best['steps']}


def run(config: ml_collections.ConfigDict, workdir: str,
        command_line: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the experiment; writes and returns ``<workdir>/results.json``."""
  start = time.time()
  os.makedirs(workdir, exist_ok=True)
  experiment = Experiment(config, workdir)
  initial = experiment.initial_variables
  before = {
      'teacher': {split: experiment.evaluate(split, None) for split in ('validation', 'test')},
      'student_init': {split: experiment.evaluate(split, experiment.embed_student(initial, split))
                       for split in ('validation', 'test')},
  }
  selection = select(experiment)
  per_seed = []
  for seed in config.seeds:
    state, _ = experiment.train(seed, selection['learning_rate'], selection['steps'],
                                eval_every=None, desc=f'seed {seed}')
    variables = state.variables
    per_seed.append({
        'seed': seed,
        'validation': experiment.evaluate('validation',
                                          experiment.embed_student(variables, 'validation')),
        # The test catalogs: scored once, here.
        'test': experiment.evaluate('test', experiment.embed_student(variables, 'test')),
    })
    if config.progress:
      print(f"seed {seed}: test retrieval {per_seed[-1]['test']['mean_retrieval']:.3f}",
            flush=True)
  summary = {key: _common.mean_std([r['test'][key] for r in per_seed])
             for key in per_seed[0]['test']}
  params = lambda tree: int(sum(np.size(x) for x in jax.tree.leaves(tree)))
  results = {
      'config': config.to_dict(),
      'data': experiment.data.report,
      'params': {'teacher': params(experiment.teacher.variables),
                 'student': params(initial)},
      'before': before,
      'selection': selection,
      'per_seed': per_seed,
      'summary': summary,
      'wall_seconds': time.time() - start,
      'finished': time.time(),
  }
  results['claims'] = claims(results)
  return _common.write_results(results, workdir, config, command_line)


# ----------------------------------------------------------------------------
# Claims and tables.


def claims(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Each claim, judged from the recorded per-seed numbers (the teacher is one deterministic run)."""
  config, per_seed, teacher = results['config'], results['per_seed'], results['before']['teacher']
  out = []
  for lang in config['data']['langs']:
    for direction in DIRECTIONS:
      key = f'{lang}/{direction}'
      arrow = 'en→x' if direction == 'en_to_x' else 'x→en'
      out.append(_common.claim(
          f'{lang} {arrow}: the student retrieves translations better than the teacher (test '
          'accuracy, student minus teacher, points)', [r['test'][key] for r in per_seed],
          [teacher['test'][key]] * len(per_seed), scale=100, digits=1))
  c = config['claims']
  out.append(_common.claim(
      f"English kept: the student's English embeddings have mean cosine "
      f"≥ {100 * c['english_cosine_min']:g} % with the teacher's (%)",
      [r['test']['english/cosine'] for r in per_seed], threshold=c['english_cosine_min'],
      scale=100, digits=1))
  out.append(_common.claim(
      f"English kept: ≥ {100 * c['english_neighbours_min']:g} % of each English sentence's "
      f"{config['eval']['neighbours']} nearest neighbours are the teacher's (%)",
      [r['test']['english/neighbours'] for r in per_seed], threshold=c['english_neighbours_min'],
      scale=100, digits=1))
  return out


def per_seed_table(results: Mapping[str, Any]) -> str:
  """Every seed's test retrieval accuracy and English agreement (%)."""
  config, per_seed = results['config'], results['per_seed']
  keys = [f'{lang}/{d}' for lang in config['data']['langs'] for d in DIRECTIONS]
  names = {k: k.replace('/en_to_x', ' en→x').replace('/x_to_en', ' x→en') for k in keys}
  names |= {'english/cosine': 'English cosine', 'english/neighbours': 'English k-NN'}
  columns = {name: [r['test'][k] for r in per_seed] for k, name in names.items()}
  return '\n'.join(['Student after training, per seed (test, %):', '',
                    *_common.per_seed_table(config['seeds'], columns, scale=100, digits=1)])


def describe(results: Mapping[str, Any]) -> str:
  config, params, kept = results['config'], results['params'], results['data']['kept']
  d, t, s = config['data'], config['train'], config['student']
  langs = ', '.join(d['langs'])
  counts = '; '.join(f"{lang}: {kept[f'train/{lang}']:,} / {kept[f'validation/{lang}']:,} / "
                     f"{kept[f'test/{lang}']:,}" for lang in d['langs'])
  sel = results['selection']
  return (
      'Reimers & Gurevych (2020), arXiv:2004.09813: the student learns the frozen teacher\'s '
      'embedding of an English sentence from the sentence and from its translation (MSE). '
      f'Teacher: all-MiniLM-L6-v2 ({params["teacher"]:,} parameters), mean pooled and '
      f'normalised. Student: a BertEncoder with the teacher\'s embeddings and layers '
      f'{tuple(s["teacher_layers"])} ({params["student"]:,} parameters; its vocabulary is the '
      'teacher\'s uncased English word pieces, unlike the paper\'s XLM-R). Data: English->'
      f'{langs} UI strings of Debian\'s gettext catalogs, split by catalog for all languages, '
      f'English side at least {d["min_words"]} words, both sides at most {d["max_tokens"]} '
      f'tokens; pairs (train / validation / test) {counts}. Training: batches of '
      f'{t["batch_size"]} pairs of every language mixed, AdamW, {t["warmup_steps"]} warm-up '
      f'steps then constant; learning rate from {{{", ".join(f"{v:g}" for v in t["learning_rate_grid"])}}} '
      f'and steps from multiples of {t["eval_every"]} up to {t["steps"]} chosen by mean '
      f'validation retrieval on seed {sel["seed"]} (not reported): lr {sel["learning_rate"]:g}, '
      f'{sel["steps"]} steps. Test: retrieval accuracy among each language\'s held-out pairs '
      '(is the nearest translation by cosine the right one, both directions), the same model on '
      'both sides; English: the mean cosine of the student\'s and the teacher\'s embedding of '
      f'each English test sentence, and the share of its {config["eval"]["neighbours"]} nearest '
      'English neighbours that are the teacher\'s.'
  )


def format_table(results: Mapping[str, Any]) -> str:
  config, summary, before = results['config'], results['summary'], results['before']
  pct = lambda x: f'{100 * x:.1f}'
  stat = lambda x: _common.mean_std_text(x, scale=100.0)
  header = ['model'] + [f'{lang} {arrow}' for lang in config['data']['langs']
                        for arrow in ('en→x', 'x→en')] + ['English cosine', 'English k-NN']
  keys = [f'{lang}/{r}' for lang in config['data']['langs'] for r in DIRECTIONS]
  english = ['english/cosine', 'english/neighbours']
  rows = [['teacher'] + [pct(before['teacher']['test'][k]) for k in keys] + ['100', '100'],
          ['student before training'] + [pct(before['student_init']['test'][k])
                                         for k in keys + english],
          ['student after training'] + [stat(summary[k]) for k in keys + english]]
  lines = ['Test retrieval accuracy (%) and English agreement with the teacher (%):', '']
  lines += _common.markdown_table(header, rows)
  lines += ['', per_seed_table(results)]
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  _common.run_main(argv, module=MODULE, doc=__doc__, schema=multilingual_configs.schema(),
                   run=run, report=format_table, claims=claims)


if __name__ == '__main__':
  main(sys.argv[1:])
