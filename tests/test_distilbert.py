"""DistilBERT and Well-Read Students: masking, packing, init, loss, configs, a smoke run."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _common
from experiments import distilbert
from experiments.configs import distilbert as distilbert_configs
from kdjax import data as kdata
from kdjax import zoo
from kdjax._outputs import Outputs
from kdjax.data import _debian_text
from kdjax.data import debian_text

DATA = pathlib.Path(__file__).parent / 'data'
SAMPLE = DATA / 'debian_sections_sample.jsonl'
PROSE_SAMPLE = DATA / 'debian_prose_sample.txt'


@pytest.fixture(scope='module')
def sample_data_dir(tmp_path_factory):
  """The task and prose built from the shipped samples, plus non-Debian prose as 'man'."""
  out = tmp_path_factory.mktemp('text')
  debian_text.main(['--out', str(out), '--descriptions', str(SAMPLE), '--per-class', '20',
                    '--val-fraction', '0.2', '--test-fraction', '0.2', '--prose',
                    '--prose-sources', 'debian'])
  prose_dir = out / 'debian_prose'
  manifest = json.loads((prose_dir / 'manifest.json').read_text())
  debian = kdata.read_text_shards(prose_dir)
  # The prose sample holds three paragraphs of each source, 'debian' first.
  others = PROSE_SAMPLE.read_text(encoding='utf-8').splitlines()[3:]
  manifest['prose'] = _debian_text.write_text_shards(prose_dir, debian + others, prefix='prose')
  manifest['sources']['man'] = {'paragraphs': len(others), 'documents_read': 1, 'bytes': 0}
  _debian_text._builder.write_json(prose_dir / 'manifest.json', manifest)
  return out


def test_tokenizer_packing_and_rows(sample_data_dir):
  prose, related, unrelated = distilbert._prose_parts(str(sample_data_dir))
  others = len(PROSE_SAMPLE.read_text(encoding='utf-8').splitlines()) - 3  # all but 'debian'
  assert len(unrelated) == others and unrelated == prose[-others:]
  assert related and set(related) <= set(prose)  # train descriptions of the task's Sections
  tokenizer = distilbert.train_tokenizer(prose, 120)
  assert [tokenizer.token_to_id(t) for t in distilbert.SPECIAL_TOKENS] == list(range(5))
  packed = distilbert.pack_sequences(tokenizer, prose, 16)
  assert packed.shape[1] == 16 and len(packed) > 10
  assert np.all(packed[:, 0] == distilbert.CLS) and np.all(packed[:, -1] == distilbert.SEP)
  stream = []
  for p in prose:
    stream += tokenizer.encode(p, add_special_tokens=False).ids + [distilbert.SEP]
  np.testing.assert_array_equal(packed[:, 1:-1].ravel(), stream[:packed[:, 1:-1].size])
  tokens, mask = distilbert.encode_rows(tokenizer, ['a', prose[0]], 8)
  full = tokenizer.encode(prose[0]).ids
  assert len(full) > 8  # cut: the first 7 pieces, then [SEP]
  np.testing.assert_array_equal(tokens[1], full[:7] + [distilbert.SEP])
  short = tokenizer.encode('a').ids
  np.testing.assert_array_equal(mask[0], np.arange(8) < len(short))
  assert np.all(tokens[0][len(short):] == distilbert.PAD)


def test_masking_follows_bert():
  rng = np.random.default_rng(0)
  vocab = 50
  tokens = rng.integers(5, vocab, (400, 32)).astype(np.int32)
  tokens[:, 0], tokens[:, -1] = distilbert.CLS, distilbert.SEP
  mask = np.ones_like(tokens)
  mask[:5, 10:] = 0  # padded rows
  tokens[:5, 10:] = distilbert.PAD
  tokens[5] = distilbert.CLS  # a row of special tokens only: nothing to choose
  batch = distilbert.mask_tokens(tokens, mask, rng, rate=0.15, vocab_size=vocab)
  chosen = batch['mlm_mask'].astype(bool)
  candidates = (mask > 0) & (tokens >= 5)
  assert not np.any(chosen & ~candidates)  # never specials, never padding
  rows_with = candidates.any(1)
  assert np.all(chosen.any(1) == rows_with)  # at least one per row that has a candidate
  np.testing.assert_array_equal(batch['mlm_labels'], tokens)
  np.testing.assert_array_equal(batch['tokens'][~chosen], tokens[~chosen])
  rate = chosen.sum() / candidates.sum()
  assert 0.13 < rate < 0.17
  replaced = batch['tokens'][chosen]
  share_mask = np.mean(replaced == distilbert.MASK)
  share_kept = np.mean(replaced == tokens[chosen])
  assert 0.76 < share_mask < 0.84 and 0.07 < share_kept < 0.14
  assert np.all((replaced == distilbert.MASK) | (replaced >= 5))


def _tiny_config():
  return zoo.BertConfig(vocab_size=40, num_layers=6, hidden=8, num_heads=2, mlp_dim=16,
                        max_len=12, pooler=False, mlm_head=True)


def test_student_copies_teacher_layers_0_2_4_and_starts_where_the_teacher_is():
  teacher_config = _tiny_config()
  teacher = zoo.BertEncoder(teacher_config)
  params = distilbert.make_init(teacher, 12)(0)
  layers = distilbert_configs.get_config('cpu').model.student_layers_from_teacher
  student_params = zoo.bert_student_from_teacher(params, tuple(layers))
  student = zoo.BertEncoder(zoo.BertConfig(**{**teacher_config.__dict__, 'num_layers': 3}))
  shapes = jax.eval_shape(distilbert.make_init(student, 12), 0)
  assert jax.tree.structure(shapes) == jax.tree.structure(student_params)
  for i, t in enumerate((0, 2, 4)):
    for a, b in zip(jax.tree.leaves(student_params[f'layer_{i}']),
                    jax.tree.leaves(params[f'layer_{t}']), strict=True):
      assert a is b
  for key in ('word_embedding', 'position_embedding', 'mlm_bias', 'mlm_transform'):
    assert jax.tree.leaves(student_params[key])[0] is jax.tree.leaves(params[key])[0]
  tokens = np.random.default_rng(0).integers(5, 40, (2, 12)).astype(np.int32)
  apply = lambda model, p: jax.jit(zoo.bert_apply(model, features=('hidden',)),
                                   static_argnames='train')(
      {'params': p}, {'tokens': tokens, 'token_mask': np.ones_like(tokens)}, train=False)[0]
  out_t, out_s = apply(teacher, params), apply(student, student_params)
  # Embeddings and block 0 are the teacher's: the first two hidden states are equal.
  for name in ('hidden_0', 'hidden_1'):
    np.testing.assert_array_equal(out_s.features[name], out_t.features[name])
  # The classifier's encoder is the MLM model less its head.
  encoder = distilbert.encoder_of(student_params)
  assert set(student_params) - set(encoder) == set(distilbert.MLM_HEAD_PARAMS)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize('weights', [(5.0, 2.0, 1.0), (0.0, 2.0, 1.0), (5.0, 0.0, 1.0),
                                     (5.0, 2.0, 0.0), (0.0, 1.0, 0.0)])
def test_triple_loss_and_its_ablations_match_numpy(weights):
  rng = np.random.default_rng(1)
  b, t, v, d = 3, 5, 7, 4
  logits_s, logits_t = rng.normal(size=(2, b, t, v))
  hidden_s, hidden_t = rng.normal(size=(2, b, t, d))
  labels = rng.integers(0, v, (b, t))
  token_mask = (np.arange(t) < np.array([[5], [3], [4]])).astype(np.int32)
  mlm = (rng.random((b, t)) < 0.5).astype(np.int32) * token_mask
  mlm[:, 0] = 1
  batch = {'token_mask': token_mask, 'mlm_mask': mlm, 'mlm_labels': labels.astype(np.int32)}
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  batch.update(distilbert.weight_entries(weights))
  loss, _ = distilbert.distilbert_objective(2.0)(
      Outputs(f32(logits_s), {'sequence': f32(hidden_s)}),
      Outputs(f32(logits_t), {'sequence': f32(hidden_t)}), batch)
  at = mlm.astype(bool)
  p_t, log_q = np.exp(_log_softmax(logits_t / 2)), _log_softmax(logits_s / 2)
  kd = 4.0 * (p_t * (np.log(p_t) - log_q)).sum(-1)[at].mean()
  ce = -np.take_along_axis(_log_softmax(logits_s), labels[..., None], -1)[..., 0][at].mean()
  cosine = (hidden_s * hidden_t).sum(-1) / np.linalg.norm(hidden_s, axis=-1) / np.linalg.norm(
      hidden_t, axis=-1)
  cos = (1 - cosine)[token_mask.astype(bool)].mean()
  expected = weights[0] * kd + weights[1] * ce + weights[2] * cos
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_optimizer_schedule_warms_up_then_decays_to_zero():
  # With a constant gradient Adam's bias-corrected step is exactly the learning
  # rate, so the updates read the schedule off: up over 4 steps, then down.
  optimizer = distilbert.make_optimizer(warmup_steps=4, total_steps=10, weight_decay=0.0)
  params = {'w': jnp.zeros(())}
  state = distilbert.with_learning_rate(
      distilbert.step_lib.init_train_state({'params': params}, optimizer), 0.5).opt_state
  scales = []
  for _ in range(10):
    updates, state = optimizer.update({'w': jnp.ones(())}, state, params)
    scales.append(-float(updates['w']) / 0.5)
  expected = [0.25, 0.5, 0.75, 1.0] + [k / 7 for k in range(6, 0, -1)]
  np.testing.assert_allclose(scales, expected, rtol=1e-5)


def test_shipped_configs_validate_and_bad_ones_are_named():
  schema = distilbert_configs.schema()
  for scale in ('smoke', 'cpu', 'full'):
    schema.validate(distilbert_configs.get_config(scale))
  config = distilbert_configs.get_config('cpu')
  config.selection_seed = 1
  config.model.student_layers_from_teacher = (0, 2, 6)
  config.distil.tuned_weight_grid = ((1.0, 1.0),)
  config.model.num_heads = 3
  problems = {key for key, *_ in schema.problems(config)}
  assert problems == {'selection_seed', 'model.student_layers_from_teacher',
                      'distil.tuned_weight_grid', 'model.hidden'}
  with pytest.raises(ValueError, match='unknown scale'):
    distilbert_configs.get_config('huge')


def smoke_config(data_dir):
  config = distilbert_configs.get_config('smoke')
  config.progress = False
  config.data.data_dir = str(data_dir)
  distilbert_configs.schema().validate(config)
  return config


def test_one_step_smoke_run_of_every_variant(sample_data_dir, tmp_path):
  config = smoke_config(sample_data_dir)
  results = distilbert.run(config, str(tmp_path), ['smoke'])
  written = json.loads((tmp_path / 'results.json').read_text())
  assert written['provenance']['command'] == ['smoke']
  (record,) = results['per_seed']
  assert set(record['distilbert']) == set(distilbert_configs.DISTILBERT_VARIANTS)
  assert set(record['well_read']) == set(distilbert_configs.WRS_VARIANTS)
  for part in ('distilbert', 'well_read'):
    for variant, scores in record[part].items():
      assert 0.0 <= scores['test'] <= 1.0 and 0.0 <= scores['validation'] <= 1.0, variant
  assert results['selection']['seed'] == config.selection_seed not in config.seeds
  assert results['params']['student'] < results['params']['teacher']
  # The steps the run made are those the sizing plans (upper bounds where a
  # selection may reuse a run: the tuned weights, fine-tuning after (c)).
  plan = distilbert.stage_counts(config, results['data']['sections']['train'])
  for kind, steps in results['steps'].items():
    assert steps <= plan[kind], kind
  for kind in ('teacher_mlm_steps', 'student_mlm_only_steps', 'teacher_finetune_steps',
               'well_read_distill_steps'):
    assert results['steps'][kind] == plan[kind], kind
  assert {c['verdict'] for c in results['claims']} <= {
      'shown', 'contradicted', 'within the seed spread'}
  assert len(results['claims']) == 2 + 5 + 3
  assert all(c['difference']['confidence'] == _common.CONFIDENCE for c in results['claims'])
  table = distilbert.format_table(results)
  assert 'WRS (c)' in table and 'teacher kept' in table and distilbert.describe(results)
