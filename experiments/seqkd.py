"""Kim & Rush (2016): word-level, sequence-level and interpolated KD for translation.

A Transformer teacher translates English to German (gettext catalogs of
Debian packages, split by catalog; see ``kdjax.data``); a student with
fewer and narrower layers is trained five ways on the same sources, the
same budget and the same initialisation per seed:

* ``baseline``: cross entropy on the reference translations;
* ``word_kd``: ``w`` x the token-level KL to the teacher on the
  references (teacher forced) + ``(1 - w)`` x cross entropy;
* ``seq_kd``: cross entropy on the teacher's beam-search output (beam
  ``K``) instead of the reference;
* ``seq_interp``: cross entropy on the one of the teacher's ``K`` beam
  hypotheses with the best sentence BLEU against the reference;
* ``seq_kd_word_kd``: word-level KD on the teacher's beam output.

Every student is decoded greedily and with beam search on the held-out
catalogs; BLEU and chrF by sacrebleu; decoding speed in tokens/s of the
teacher and the student on the same machine. The mix weight ``w`` and
the epoch kept (the best of the epochs run by validation greedy BLEU) are
chosen on the validation catalogs; the test catalogs are decoded once, at
the end. Usage::

    python -m experiments.seqkd --config=experiments/configs/seqkd.py:cpu \\
        --workdir=runs/seqkd_cpu
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os
import sys
import time
from typing import Any

from flax import linen as nn
from flax import serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import _common
from experiments.configs import seqkd as seqkd_configs
from kdjax import data as data_lib
from kdjax import generate as gen
from kdjax import losses
from kdjax import objective as objective_lib
from kdjax import seqkd
from kdjax import step as step_lib
from kdjax import zoo

MODULE = 'experiments.seqkd'
VARIANTS = ('baseline', 'word_kd', 'seq_kd', 'seq_interp', 'seq_kd_word_kd')
VARIANT_NAMES = {
    'baseline': 'baseline (labels)',
    'word_kd': 'word-KD',
    'seq_kd': 'seq-KD',
    'seq_interp': 'seq-interp',
    'seq_kd_word_kd': 'seq-KD + word-KD',
}
# The variants with a word-level term, whose weight is chosen on validation.
WORD_KD = ('word_kd', 'seq_kd_word_kd')
# The variants trained on the teacher's beam output, and the selection.
SEQUENCE_DATA = {'seq_kd': 'beam', 'seq_kd_word_kd': 'beam', 'seq_interp': 'bleu'}
TRAIN_KEYS = ('source', 'source_mask', 'target_inputs', 'labels', 'mask')
PAD, BOS, EOS = data_lib.PAD_ID, data_lib.BOS_ID, data_lib.EOS_ID
LANGUAGES = {'de': 'German', 'fr': 'French'}


# ----------------------------------------------------------------------------
# Data.


def training_arrays(source, source_length, target, target_length) -> dict[str, np.ndarray]:
  """The teacher-forcing batch entries of sources and EOS-terminated targets.

  ``labels`` is the target (tokens then EOS, then padding), ``mask`` marks
  its real tokens, and ``target_inputs`` is BOS followed by the labels
  shifted right by one: position ``t`` predicts ``labels[t]`` from
  ``labels[:t]``.
  """
  source, target = np.asarray(source, np.int32), np.asarray(target, np.int32)
  width = target.shape[1]
  mask = np.arange(width)[None] < np.asarray(target_length)[:, None]
  labels = np.where(mask, target, PAD).astype(np.int32)
  inputs = np.concatenate([np.full((len(target), 1), BOS, np.int32), labels[:, :-1]], axis=1)
  return {
      'source': source,
      'source_mask': np.arange(source.shape[1])[None] < np.asarray(source_length)[:, None],
      'target_inputs': inputs,
      'labels': labels,
      'mask': mask,
  }


def _columns(source) -> dict[str, np.ndarray]:
  """A TFDS data source's examples as columns (texts as Python strings)."""
  rows = [source[i] for i in range(len(source))]
  text = lambda v: v.decode('utf-8') if isinstance(v, bytes) else str(v)
  out = {key: np.stack([r[key] for r in rows]) for key in
         ('source', 'source_length', 'target', 'target_length')}
  for key in ('source_text', 'target_text'):
    out[key] = np.array([text(r[key]) for r in rows], object)
  return out


def _split_arrays(columns: Mapping[str, np.ndarray], data: ml_collections.ConfigDict,
                  limit: int, seed: int) -> dict[str, np.ndarray]:
  """The examples of a split that fit the config's lengths, in a seeded random subset."""
  keep = np.flatnonzero((columns['source_length'] <= data.max_source_len)
                        & (columns['target_length'] <= data.max_target_len))
  if limit and len(keep) > limit:
    keep = np.sort(np.random.default_rng(seed).permutation(keep)[:limit])
  arrays = training_arrays(
      columns['source'][keep, : data.max_source_len], columns['source_length'][keep],
      columns['target'][keep, : data.max_target_len], columns['target_length'][keep])
  for key in ('source_text', 'target_text'):
    arrays[key] = columns[key][keep]
  return arrays


def load_data(config: ml_collections.ConfigDict):
  """``(splits, tokenizer, info)``: arrays per split and the dataset's BPE tokenizer.

  ``config.data.source`` is ``'gettext'`` (built into ``config.data.data_dir``
  on first use, with ``apt-get download`` of the Debian packages, or from
  ``config.data.pairs_file``; no other network) or ``'wmt14'`` (TFDS's
  ``wmt14_translate/<lang>-en``, for users with network).
  """
  d = config.data
  if d.source == 'gettext':
    builder = data_lib.GettextTranslation(
        config=d.lang, data_dir=d.data_dir or None, vocab_size=d.vocab_size,
        pairs_file=d.pairs_file or None, val_fraction=d.val_fraction,
        test_fraction=d.test_fraction, min_eval_pairs=d.min_eval_pairs)
    builder.download_and_prepare()
    metadata = data_lib.translation_metadata(builder.data_dir)
    if metadata['vocab_size'] != d.vocab_size:
      raise ValueError(
          f'the dataset in {builder.data_dir} was built with vocab_size='
          f"{metadata['vocab_size']}, the config asks for {d.vocab_size}: use another "
          'data_dir.')
    tokenizer = data_lib.load_tokenizer(builder.data_dir)
    columns = {split: _columns(data_lib.load_source(f'gettext_translation/{d.lang}', split,
                                                    data_dir=d.data_dir or None))
               for split in ('train', 'validation', 'test')}
    where = builder.data_dir
  elif d.source == 'wmt14':
    columns, tokenizer, _ = data_lib.make_wmt14_arrays(
        f'{d.lang}-en', data_dir=d.data_dir or None, vocab_size=d.vocab_size,
        max_source_length=d.max_source_len, max_target_length=d.max_target_len)
    where = f'wmt14_translate/{d.lang}-en'
  else:
    raise ValueError(f"config.data.source must be 'gettext' or 'wmt14', got {d.source!r}.")
  splits, info = {}, {'dataset': where, 'vocab_size': int(tokenizer.vocab_size),
                      'splits': {}}
  limits = {'train': d.max_train, 'val': d.max_val, 'test': d.max_test}
  names = {'train': 'train', 'val': 'validation', 'test': 'test'}
  for split, limit in limits.items():
    splits[split] = _split_arrays(columns[names[split]], d, limit, seed=d.subset_seed)
    info['splits'][split] = {'examples': int(len(splits[split]['source'])),
                             'available': int(len(columns[names[split]]['source'])),
                             'target_tokens': int(splits[split]['mask'].sum())}
  return splits, tokenizer, info


# ----------------------------------------------------------------------------
# Models, objectives and training.


def model_config(m: ml_collections.ConfigDict, vocab: int, data) -> zoo.Seq2SeqConfig:
  return zoo.Seq2SeqConfig(
      source_vocab_size=vocab, target_vocab_size=vocab, encoder_layers=m.encoder_layers,
      decoder_layers=m.decoder_layers, hidden=m.hidden, num_heads=m.num_heads,
      mlp_dim=m.mlp_dim, max_source_len=data.max_source_len,
      # One position more than the longest target: the BOS prompt.
      max_target_len=data.max_target_len + 1, positions='sinusoidal',
      shared_embeddings=True, tied_output=True, mlp='relu', norm='layer',
      dropout_rate=m.dropout)


def make_optimizer(m: ml_collections.ConfigDict, steps: int):
  """AdamW (b2 = 0.98) with linear warm-up and cosine decay to zero, clipping at 1."""
  return _common.warmup_cosine_adamw(m, steps, b2=0.98)


def make_objective(variant: str, kd: ml_collections.ConfigDict,
                   kd_weight: float | None = None) -> objective_lib.Objective:
  """Cross entropy on ``batch['labels']``, with a word-level KL for the word-KD variants.

  Both terms are per-token values reduced over the real target tokens of
  ``batch['mask']``.
  """
  if variant not in VARIANTS:
    raise ValueError(f'variant must be one of {VARIANTS}, got {variant!r}.')
  labels = objective_lib.supervised(losses.cross_entropy, label_key='labels')
  if variant not in WORD_KD:
    return objective_lib.Objective({'ce': labels})
  if kd_weight is None:
    raise ValueError(f'variant {variant!r} needs kd_weight.')
  word = objective_lib.token_distill('forward_kl', temperature=kd.temperature)
  return objective_lib.Objective({'kd': word, 'ce': labels},
                                 weights={'kd': kd_weight, 'ce': 1.0 - kd_weight})


class Model:
  """A Seq2SeqTransformer with its optimizer, init, decoders and decoding helpers."""

  def __init__(self, m: ml_collections.ConfigDict, vocab: int, config, num_train: int):
    self.cfg = m
    self.config = model_config(m, vocab, config.data)
    self.module = zoo.Seq2SeqTransformer(self.config)
    self.apply = zoo.seq2seq_apply(self.module)
    self.steps = num_train // m.batch_size * m.epochs
    self.optimizer = make_optimizer(m, self.steps)
    self.max_new = config.data.max_target_len
    decoder = zoo.seq2seq_decoder(self.module)
    self.greedy = gen.make_generate(decoder, max_new_tokens=self.max_new, eos_id=EOS,
                                    pad_id=PAD)
    self.beam = {}
    self._decoder = decoder
    self.beam_alpha = config.eval.beam_alpha
    s, t = config.data.max_source_len, config.data.max_target_len

    def init(key):
      variables = self.module.init(
          key, jnp.zeros((1, s), jnp.int32), jnp.ones((1, s), bool), jnp.zeros((1, t), jnp.int32))
      return step_lib.init_train_state(nn.meta.unbox(variables), self.optimizer,
                                       rng=jax.random.fold_in(key, 1))

    self.init = init

  def beam_search(self, width: int):
    if width not in self.beam:
      self.beam[width] = gen.make_generate(
          self._decoder, max_new_tokens=self.max_new, eos_id=EOS, pad_id=PAD,
          method=gen.BeamSearch(width=width, alpha=self.beam_alpha))
    return self.beam[width]

  def decode(self, variables, arrays, *, width: int, batch_size: int):
    """Tokens ``[N, T]``, lengths and seconds (compilation excluded) of a split."""
    fn = self.greedy if width == 1 else self.beam_search(width)
    num = len(arrays['source'])
    bos = np.full((batch_size, 1), BOS, np.int32)
    tokens, lengths, seconds = [], [], 0.0
    for start in range(0, num, batch_size):
      rows = np.arange(start, start + batch_size)
      rows = np.where(rows < num, rows, start)
      inputs = {'source': arrays['source'][rows], 'source_mask': arrays['source_mask'][rows]}
      if start == 0:  # compile outside the clock
        jax.block_until_ready(fn(variables, bos, inputs=inputs))
      tick = time.perf_counter()
      out = jax.block_until_ready(fn(variables, bos, inputs=inputs))
      seconds += time.perf_counter() - tick
      real = min(batch_size, num - start)
      tok, length = np.asarray(out.tokens), np.asarray(out.lengths)
      if width > 1:
        tok, length = tok[:, 0], length[:, 0]
      tokens.append(tok[:real])
      lengths.append(length[:real])
    return np.concatenate(tokens), np.concatenate(lengths), seconds


def detokenize(tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
  """Texts of hypotheses cut before their EOS (and at their lengths)."""
  cut = np.where(np.asarray(tokens) == EOS, PAD, tokens)
  return tokenizer.decode(cut, lengths)


def score(tokenizer, tokens, lengths, references: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU and chrF (sacrebleu's defaults) against the references."""
  import sacrebleu  # pylint: disable=import-outside-toplevel
  hyps = detokenize(tokenizer, tokens, lengths)
  refs = [list(references)]
  return {'bleu': float(sacrebleu.corpus_bleu(hyps, refs).score),
          'chrf': float(sacrebleu.corpus_chrf(hyps, refs).score)}


def evaluate(model: Model, tokenizer, variables, arrays, *, width: int, batch_size: int):
  tokens, lengths, seconds = model.decode(variables, arrays, width=width, batch_size=batch_size)
  out = score(tokenizer, tokens, lengths, arrays['target_text'])
  out['tokens_per_second'] = float(lengths.sum() / max(seconds, 1e-9))
  return out


class Trainer(_common.Trainer):
  """Trains one model and objective; keeps the epoch with the best validation greedy BLEU."""

  def __init__(self, model: Model, objective, *, teacher_apply, tokenizer, evals,
               config: ml_collections.ConfigDict):
    self.model, self.tokenizer, self.evals, self.eval_cfg = model, tokenizer, evals, config.eval
    self.best: dict[str, Any] = {}
    self.workdir = ''
    train_step = step_lib.make_train_step(model.apply, teacher_apply, objective,
                                          model.optimizer)
    super().__init__(train_step, model.init, self._validate, epochs=model.cfg.epochs,
                     batch_size=model.cfg.batch_size, eval_every=1, save_every=1,
                     progress=config.progress, final_evaluate_fn=self._final,
                     write_final=True)

  def _best_path(self) -> str:
    return os.path.join(self.workdir, 'best_variables.msgpack')

  def _validate(self, state) -> dict[str, float]:
    out = evaluate(self.model, self.tokenizer, state.variables, self.evals['val'], width=1,
                   batch_size=self.eval_cfg.batch_size)
    if not self.best or out['bleu'] > self.best['bleu']:
      per_epoch = max(self.model.steps // max(self.model.cfg.epochs, 1), 1)
      self.best = {'bleu': out['bleu'], 'epoch': int(state.step) // per_epoch,
                   'variables': jax.device_get(state.variables)}
      # Kept beside the checkpoints, so that a resumed run knows its best epoch.
      tmp = self._best_path() + '.tmp'
      with open(tmp, 'wb') as f:
        f.write(serialization.msgpack_serialize(
            {'bleu': out['bleu'], 'epoch': self.best['epoch'],
             'variables': serialization.to_state_dict(self.best['variables'])}))
      os.replace(tmp, self._best_path())
    return {'val/greedy_bleu': out['bleu']}

  def _final(self, state) -> dict[str, float]:
    del state  # the best epoch's variables are kept instead
    variables = self.best['variables']
    metrics = {'best_epoch': self.best['epoch'], 'val/greedy_bleu': self.best['bleu']}
    widths = {'greedy': 1, 'beam': self.eval_cfg.beam_width}
    for split in ('val', 'test'):
      for name, width in widths.items():
        if split == 'val' and name == 'greedy':
          continue
        out = evaluate(self.model, self.tokenizer, variables, self.evals[split], width=width,
                       batch_size=self.eval_cfg.batch_size)
        for key, value in out.items():
          metrics[f'{split}/{name}_{key}'] = value
    return metrics

  def train(self, train, **kwargs):
    self.best, self.workdir = {}, kwargs['workdir']
    os.makedirs(self.workdir, exist_ok=True)
    if os.path.exists(self._best_path()):  # a resumed run: its best epoch so far
      with open(self._best_path(), 'rb') as f:
        saved = serialization.msgpack_restore(f.read())
      self.best = {'bleu': float(saved['bleu']), 'epoch': int(saved['epoch']),
                   'variables': saved['variables']}
    start = time.time()
    state, metrics = super().train(train, **kwargs)
    return self.best['variables'], {**metrics, 'seconds': time.time() - start}


# ----------------------------------------------------------------------------
# Sequence-level data from the teacher.


def teacher_data(teacher: Model, variables, tokenizer, train: Mapping[str, np.ndarray],
                 config, workdir: str) -> dict[str, dict[str, np.ndarray]]:
  """The training arrays of every selection, from one resumable beam decoding."""
  width = config.kd.data_beam_width
  fn = teacher.beam_search(width)
  bos = np.full((config.kd.data_batch_size, 1), BOS, np.int32)
  decode = lambda batch: fn(variables, bos, inputs=batch)
  references = list(train['target_text'])
  paths = seqkd.build_sequence_kd_datasets(
      decode, train['source'], train['source_mask'], os.path.join(workdir, 'teacher_data'),
      batch_size=config.kd.data_batch_size, selections=sorted(set(SEQUENCE_DATA.values())),
      references=references,
      detokenize=lambda t: detokenize(tokenizer, t[None], np.array([len(t)]))[0],
      fingerprint=f'{teacher.config}|beam{width}|alpha{config.eval.beam_alpha}',
      log=print if config.progress else None)
  out = {}
  for selection, path in paths.items():
    data = seqkd.load_sequence_kd_data(path)
    rows = [data[i] for i in range(len(data))]
    target = np.stack([r['target'] for r in rows])
    length = np.array([r['target_length'] for r in rows])
    arrays = training_arrays(train['source'], train['source_mask'].sum(1), target, length)
    arrays['bleu'] = np.array([r['candidate_bleu'][r['selected']] for r in rows])
    out[selection] = arrays
  return out


# ----------------------------------------------------------------------------
# The run.


def summarize(per_seed: list[dict], variants: Sequence[str]) -> dict:
  keys = {f'test_{d}_{m}': f'test/{d}_{m}' for d in ('greedy', 'beam') for m in ('bleu', 'chrf')}
  keys.update({'test_greedy_tps': 'test/greedy_tokens_per_second',
               'test_beam_tps': 'test/beam_tokens_per_second',
               'val_greedy_bleu': 'val/greedy_bleu', 'seconds': 'seconds'})
  summary = _common.summarize(per_seed, variants, keys)
  for variant in variants:
    summary[variant]['beam_minus_greedy_bleu'] = _common.mean_std(
        [r[variant]['test/beam_bleu'] - r[variant]['test/greedy_bleu'] for r in per_seed])
    for other in variants:
      if other != variant:
        summary[variant][f'minus_{other}_greedy_bleu'] = _common.mean_std(
            [r[variant]['test/greedy_bleu'] - r[other]['test/greedy_bleu'] for r in per_seed])
        summary[variant][f'minus_{other}_beam_bleu'] = _common.mean_std(
            [r[variant]['test/beam_bleu'] - r[other]['test/beam_bleu'] for r in per_seed])
  return summary


def run(config: ml_collections.ConfigDict, workdir: str,
        command: Sequence[str] | None = None) -> dict:
  """Trains the teacher, builds its sequence-level data, trains every student; writes results."""
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  splits, tokenizer, data_info = load_data(config)
  vocab = data_info['vocab_size']
  train = {k: splits['train'][k] for k in TRAIN_KEYS}
  num_train = len(train['source'])
  evals = {split: splits[split] for split in ('val', 'test')}
  teacher_model = Model(config.teacher, vocab, config, num_train)
  student_model = Model(config.student, vocab, config, num_train)
  common = dict(tokenizer=tokenizer, evals=evals, config=config)

  teacher = Trainer(teacher_model, make_objective('baseline', config.kd), teacher_apply=None,
                    **common)
  teacher_variables, teacher_metrics = teacher.train(
      jax.device_put(train), seed=config.teacher_seed, teacher_variables=None,
      workdir=os.path.join(workdir, 'teacher'), desc='teacher',
      config=_common.run_config(config, phase='teacher'))

  needs_data = any(v in SEQUENCE_DATA for v in config.variants)
  data = (teacher_data(teacher_model, teacher_variables, tokenizer, splits['train'], config,
                       workdir) if needs_data else {})
  train_sets = {'reference': jax.device_put(train)}
  for selection, arrays in data.items():
    train_sets[selection] = jax.device_put({k: arrays[k] for k in TRAIN_KEYS})

  trainers = {}

  def train_student(variant, seed, kd_weight=None):
    # The variants differ by their data and their objective. Those with the
    # same objective (cross entropy alone, or word-KD at one weight) share one
    # Trainer, so its compiled programs serve each of them (and a run's
    # 'seconds' include compiling only where no earlier run compiled them).
    key = (variant in WORD_KD, kd_weight)
    if key not in trainers:
      trainers[key] = Trainer(
          student_model, make_objective(variant, config.kd, kd_weight),
          teacher_apply=teacher_model.apply if variant in WORD_KD else None, **common)
    subdir = variant if kd_weight is None else os.path.join(variant, f'weight{kd_weight:g}')
    _, metrics = trainers[key].train(
        train_sets[SEQUENCE_DATA.get(variant, 'reference')], seed=seed + 1000,
        teacher_variables=teacher_variables if variant in WORD_KD else None,
        workdir=os.path.join(workdir, subdir, f'seed{seed}'), desc=f'{subdir} s{seed}',
        config=_common.run_config(config, variant=variant, kd_weight=kd_weight))
    return metrics

  per_seed, selection = [], {}
  grid = tuple(float(w) for w in config.kd.kd_weight_grid)
  for index, seed in enumerate(config.seeds):
    result = {}
    for variant in config.variants:
      if variant not in WORD_KD:
        result[variant] = train_student(variant, seed)
      elif index == 0:
        runs = {w: train_student(variant, seed, w) for w in grid}
        chosen = max(grid, key=lambda w: runs[w]['val/greedy_bleu'])
        selection[variant] = {'grid': list(grid),
                              'val_greedy_bleu': [runs[w]['val/greedy_bleu'] for w in grid],
                              'chosen': chosen}
        result[variant] = runs[chosen]
      else:
        result[variant] = train_student(variant, seed, selection[variant]['chosen'])
    per_seed.append(result)

  results = {
      'paper': 'Kim & Rush (2016), Sequence-Level Knowledge Distillation',
      'config': config.to_dict(),
      'data': data_info,
      'teacher_data': {sel: {'mean_sentence_bleu': float(a['bleu'].mean()),
                             'target_tokens': int(a['mask'].sum())} for sel, a in data.items()},
      'params': {'teacher': zoo.param_count(teacher_model.config),
                 'student': zoo.param_count(student_model.config)},
      'steps': {'teacher': teacher_model.steps, 'student': student_model.steps},
      'teacher': teacher_metrics,
      'per_seed': per_seed,
      'summary': summarize(per_seed, config.variants),
      'selection': selection,
      'wall_seconds': time.time() - start,
      'finished': time.time(),
  }
  results['claims'] = claims(results)
  return _common.write_results(results, workdir, config,
                               command or _common.command(MODULE, None))


# ----------------------------------------------------------------------------
# Claims, computed from the numbers.


def claims(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Each claim of the paper, judged from the recorded per-seed numbers."""
  per_seed = results['per_seed']
  variants = [v for v in VARIANTS if all(v in r for r in per_seed)]
  out = []

  def bleu(variant, decoding):
    return [r[variant][f'test/{decoding}_bleu'] for r in per_seed]

  def ordering(a, b, decoding):
    if a in variants and b in variants:
      out.append(_common.claim(
          f'{VARIANT_NAMES[a]} beats {VARIANT_NAMES[b]} ({decoding}, test BLEU)',
          bleu(a, decoding), bleu(b, decoding)))

  for decoding in ('greedy', 'beam'):
    ordering('seq_kd', 'word_kd', decoding)
    ordering('word_kd', 'baseline', decoding)
    ordering('seq_kd', 'baseline', decoding)
    ordering('seq_interp', 'baseline', decoding)
    # "The methods combine": word-KD on top of seq-KD.
    ordering('seq_kd_word_kd', 'seq_kd', decoding)
  if 'seq_kd' in variants and 'baseline' in variants:
    # The seq-KD student needs beam search less: its beam-greedy gap is smaller.
    gap = lambda v: np.subtract(bleu(v, 'beam'), bleu(v, 'greedy'))
    out.append(_common.claim('the seq-KD student gains less from beam search than the baseline '
                             '(beam − greedy BLEU, seq-KD minus baseline)',
                             gap('seq_kd'), gap('baseline'), test='<'))
  teacher = results['teacher']
  student = 'seq_kd' if 'seq_kd' in variants else 'baseline' if 'baseline' in variants else None
  if student:
    for decoding in ('greedy', 'beam'):
      key = f'test/{decoding}_tokens_per_second'
      out.append(_common.claim(
          f'the student ({VARIANT_NAMES[student]}) decodes faster than the teacher ({decoding}; '
          'student / teacher tokens/s, the teacher one run)',
          [r[student][key] / teacher[key] for r in per_seed], threshold=1.0))
  return out


def per_seed_table(results: Mapping[str, Any]) -> str:
  """Every seed's test BLEU, greedy and beam, of every student variant."""
  per_seed = results['per_seed']
  variants = [v for v in VARIANTS if all(v in r for r in per_seed)]
  columns = {f'{VARIANT_NAMES[v]}, {decoding}': [r[v][f'test/{decoding}_bleu'] for r in per_seed]
             for decoding in ('greedy', 'beam') for v in variants}
  return '\n'.join(['Test BLEU per seed:', '',
                    *_common.per_seed_table(results['config']['seeds'], columns)])


def describe(results: Mapping[str, Any]) -> str:
  config, data, params = results['config'], results['data'], results['params']
  t, s = config['teacher'], config['student']

  def model(c):
    return (f"{c['encoder_layers']}+{c['decoder_layers']} layers × {c['hidden']} wide "
            f"({c['num_heads']} heads, MLP {c['mlp_dim']})")

  sp = data['splits']
  return (
      f"Data: English→{LANGUAGES.get(config['data']['lang'], config['data']['lang'])} UI "
      f"strings from Debian's gettext catalogs, "
      f"split by catalog; joint BPE of {data['vocab_size']} tokens trained on the training "
      f"split; sentences of at most {config['data']['max_source_len']} source and "
      f"{config['data']['max_target_len']} target tokens: {sp['train']['examples']:,} training, "
      f"{sp['val']['examples']:,} validation and {sp['test']['examples']:,} test pairs. "
      f"Teacher: Transformer, {model(t)}, {params['teacher']:,} parameters, "
      f"{t['epochs']} epochs, trained once and shared by all seeds. Students: {model(s)}, "
      f"{params['student']:,} parameters ({params['student'] / params['teacher']:.2f} of the "
      f"teacher), {s['epochs']} epochs each, every variant from the same initialisation per "
      f"seed. Sequence-level data: the teacher's beam search (width "
      f"{config['kd']['data_beam_width']}, GNMT length penalty α = "
      f"{config['eval']['beam_alpha']:g}) over every training source, decoded once and shared "
      f"by seq-KD, seq-interp (the hypothesis of best sentence BLEU against the reference) and "
      f"seq-KD + word-KD. The word-KD weight w (w × KL + (1 − w) × CE) is chosen from "
      f"{{{', '.join(f'{w:g}' for w in config['kd']['kd_weight_grid'])}}} by validation greedy "
      f"BLEU of seed {config['seeds'][0]}, and each run keeps its epoch of best validation "
      f"greedy BLEU; the test catalogs are decoded once. BLEU and chrF are sacrebleu's corpus "
      f"scores; beam search uses width {config['eval']['beam_width']}. Tokens/s: new tokens "
      f"of the test set decoded in batches of {config['eval']['batch_size']}, compilation "
      f"excluded, measured during the run on one machine for every model (its load is not "
      f"recorded, so read them as ratios)."
  )


def format_table(results: Mapping[str, Any]) -> str:
  s, teacher, params = results['summary'], results['teacher'], results['params']
  stat = lambda x: _common.mean_std_text(x, digits=2)
  rows = [['teacher (one run)', f"{params['teacher']:,}",
           f"{teacher['test/greedy_bleu']:.2f}", f"{teacher['test/beam_bleu']:.2f}",
           f"{teacher['test/beam_bleu'] - teacher['test/greedy_bleu']:+.2f}",
           f"{teacher['test/greedy_chrf']:.2f}", f"{teacher['test/greedy_tokens_per_second']:.0f}",
           f"{teacher['test/beam_tokens_per_second']:.0f}"]]
  for variant, st in s.items():
    name = VARIANT_NAMES[variant]
    if variant in results.get('selection', {}):
      name += f" (w = {results['selection'][variant]['chosen']:g})"
    rows.append([name, f"{params['student']:,}", stat(st['test_greedy_bleu']),
                 stat(st['test_beam_bleu']), stat(st['beam_minus_greedy_bleu']),
                 stat(st['test_greedy_chrf']), f"{st['test_greedy_tps']['mean']:.0f}",
                 f"{st['test_beam_tps']['mean']:.0f}"])
  lines = _common.markdown_table(
      ['model', 'parameters', 'test BLEU greedy', 'test BLEU beam', 'beam − greedy',
       'test chrF greedy', 'greedy tokens/s', 'beam tokens/s'], rows)
  lines += ['', per_seed_table(results)]
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  _common.run_main(argv, module=MODULE, doc=__doc__, schema=seqkd_configs.schema(), run=run,
                   report=format_table, claims=claims)


if __name__ == '__main__':
  main(sys.argv[1:])
