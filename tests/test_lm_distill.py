"""experiments/lm_distill.py: its data exclusions, selection, objectives, verdicts and a smoke run."""

import json
import math
import os

import numpy as np
import pytest

from experiments import _common
from experiments import lm_distill
from experiments import make_results
from experiments.configs import lm_distill as configs
from kdjax import config as config_lib
from kdjax import data as data_lib
from kdjax import losses
from kdjax import writers
from kdjax._outputs import Outputs


def _config(scale='smoke', **data):
  config = configs.get_config(scale)
  with config.unlocked():
    for key, value in data.items():
      setattr(config.data, key, value)
  return config


# ---------------------------------------------------------------- data


def test_table_share_separates_generated_tables_from_code():
  table = b'TABLE = {\n' + b''.join(b"    '%d': 0x%04x,  # entry\n" % (i, i) for i in range(50)) + b'}\n'
  code = b'"""A module.\n\nWith a long docstring\nof prose.\n"""\n\ndef f(x):\n  return x + 1\n'
  assert lm_distill.table_share(table) > 0.9
  assert lm_distill.table_share(code) == 0.0  # the docstring is not a table
  assert lm_distill.table_share(b'') == 0.0
  root = data_lib.python_stdlib_dir()
  for path, is_table in (('html/entities.py', True), ('stringprep.py', True),
                         ('argparse.py', False), ('json/decoder.py', False)):
    with open(os.path.join(root, path), 'rb') as f:
      assert (lm_distill.table_share(f.read()) >= 0.5) == is_table, path


def _write_corpus(root):
  files = {}
  for i in range(40):
    files[f'mod{i:02d}.py' if i % 2 else f'pkg/sub{i:02d}.py'] = (
        ''.join(f'def f{i}_{j}(x):\n    return x * {j} + {i}\n' for j in range(8)))
  table = 'MAP = {\n' + ''.join(f'    {i}: {i + 1},\n' for i in range(60)) + '}\n'
  files['tables.py'] = table
  for i in range(6):
    files[f'encodings/cp{i}.py'] = 'def decode(x):\n    return x\n' * 20
    files[f'pkg/pydoc_data/topics{i}.py'] = 'topics = 1\n' * 40
    files[f'test/test_{i}.py'] = 'def test():\n    pass\n' * 20
  for path, text in files.items():
    os.makedirs(os.path.dirname(os.path.join(root, path)) or root, exist_ok=True)
    with open(os.path.join(root, path), 'w') as f:
      f.write(text)
  return files


def test_no_excluded_directory_or_table_reaches_any_split(tmp_path):
  _write_corpus(tmp_path)
  config = _config(root=str(tmp_path), train_bytes=0, val_bytes=0, test_bytes=0,
                   val_fraction=0.2, test_fraction=0.2)
  documents, info = lm_distill.load_texts(config)
  read = [path for split in info.values() for path in split['files']]
  assert len(read) == 40  # every module, nothing else
  for path in read:
    parts = path.split('/')[:-1]
    assert not {'encodings', 'pydoc_data', 'test'} & set(parts), path
  skipped = [x['file'] for split in info.values() for x in split['skipped_tables']]
  assert skipped == ['tables.py']
  for split, docs in documents.items():
    assert sum(map(len, docs)) == info[split]['bytes']


def test_splits_meet_their_budgets_with_files_cut_at_line_ends(tmp_path):
  files = _write_corpus(tmp_path)
  config = _config(root=str(tmp_path), train_bytes=2_000, val_bytes=300, test_bytes=300,
                   val_fraction=0.2, test_fraction=0.2, max_file_bytes=150)
  documents, info = lm_distill.load_texts(config)
  for split, docs in documents.items():
    assert info[split]['bytes'] >= getattr(config.data, f'{split}_bytes')
    # Only the last file read may take the split past its budget.
    assert info[split]['bytes'] - len(docs[-1]) < getattr(config.data, f'{split}_bytes')
    for path, doc in zip(info[split]['files'], docs):
      assert len(doc) <= 150 and doc.endswith(b'\n')
      assert files[path].encode().startswith(doc)
  with pytest.raises(ValueError, match=r"split 'val' holds .* less than its budget"):
    lm_distill.load_texts(_config(root=str(tmp_path), train_bytes=100, val_bytes=10**6,
                                  test_bytes=100, val_fraction=0.2, test_fraction=0.2))


def test_real_stdlib_splits_hold_no_excluded_directory():
  config = configs.get_config('cpu')
  files = lm_distill.corpus_files(config)
  excluded = {*config.data.exclude_dirs, *lm_distill.BASE_EXCLUDE_DIRS}
  listed = [p for split in files.values() for p in split]
  assert len(listed) > 300
  assert not [p for p in listed if excluded & set(p.split('/')[:-1])]
  sets = {k: set(v) for k, v in files.items()}
  assert not sets['train'] & sets['val'] and not sets['train'] & sets['test']
  assert not sets['val'] & sets['test']


def test_bpe_arrays_spell_the_text_and_count_its_bytes(tmp_path):
  texts = [b'def f(x):\n    return x + 1\n' * 3, b'import os\nprint(os.sep)\n']
  tokenizer = data_lib.train_tokenizer([t.decode() for t in texts], vocab_size=280)
  config = _config()
  with config.unlocked():
    config.data.context = 40
    config.xtok.student_context = 40
  arrays = lm_distill.bpe_arrays(texts, tokenizer, config)
  spelled = data_lib.token_bytes(tokenizer)
  for row in range(len(arrays['tokens'])):
    real = arrays['mask'][row] > 0
    target = b''.join(spelled[i] for i in arrays['labels'][row][real])
    assert arrays['target_bytes'][row].sum() == len(target)
    assert np.all(arrays['target_bytes'][row][~real] == 0)


# ---------------------------------------------------------------- selection


def test_selection_widens_past_chosen_edges_until_interior():
  calls = []

  def evaluate(w, t):  # a bowl with its minimum at w = 0.9, T = 6
    calls.append((w, t))
    return (w - 0.9) ** 2 + math.log(t / 6.0) ** 2

  record = lm_distill.select(evaluate, (0.25, 0.5, 0.75), (0.5, 1.0, 2.0), widen_rounds=3)
  assert record['weight'] == 1.0  # 0.75 -> 1.0, the domain's edge
  assert record['on_edge'] == {'w': 'at the edge of its domain'}
  assert record['temperature'] == 8.0 and 8.0 < max(record['temperatures'])
  assert len(calls) == len(set(calls)) == len(record['val_bpb'])
  best = min(record['val_bpb'], key=record['val_bpb'].get)
  assert best == f"w={record['weight']:g},T={record['temperature']:g}"


def test_selection_stops_when_the_choice_is_interior_and_reports_a_bounded_grid():
  record = lm_distill.select(lambda w, t: (w - 0.5) ** 2 + (t - 1.0) ** 2, (0.25, 0.5, 0.75),
                             (0.5, 1.0, 2.0), widen_rounds=2)
  assert (record['weight'], record['temperature']) == (0.5, 1.0)
  assert record['on_edge'] == {} and len(record['val_bpb']) == 9
  edge = lm_distill.select(lambda w, t: -t, (0.5, 0.75), (1.0, 2.0), widen_rounds=1)
  assert edge['on_edge']['T'] == 'at the edge of the grid after the last widening'
  assert edge['temperature'] == 4.0


def test_coordinate_search_runs_one_axis_at_a_time_and_widens_each():
  calls = []

  def evaluate(w, t):  # minimum at w = 0.5, T = 4
    calls.append((w, t))
    return (w - 0.5) ** 2 + math.log(t / 4.0) ** 2

  record = lm_distill.select(evaluate, (0.25, 0.5, 0.75), (0.5, 1.0, 2.0), widen_rounds=2,
                             search='coordinate')
  assert (record['weight'], record['temperature']) == (0.5, 4.0)
  assert record['on_edge'] == {} and record['temperatures'] == [0.5, 1.0, 2.0, 4.0, 8.0]
  # w at the middle T (3 runs), then T at w = 0.5 (2 new), widened twice (2 more).
  assert calls[:3] == [(0.25, 1.0), (0.5, 1.0), (0.75, 1.0)]
  assert len(calls) == len(set(calls)) == 7
  with pytest.raises(ValueError, match="search must be 'grid' or 'coordinate'"):
    lm_distill.select(evaluate, (0.5,), (1.0,), widen_rounds=0, search='random')


# ---------------------------------------------------------------- objectives


@pytest.mark.parametrize('variant,loss_fn,kwargs', [
    ('forward_kl', losses.kl_divergence, {}),
    ('reverse_kl', losses.reverse_kl_divergence, {}),
    ('jsd', losses.generalized_jsd, {'beta': 0.5}),
    ('skew_kl', losses.skew_kl_divergence, {'alpha': 0.1}),
])
def test_one_program_mixes_the_chosen_divergence_and_labels(variant, loss_fn, kwargs):
  rng = np.random.default_rng(3)
  student = rng.normal(size=(2, 5, 7)).astype(np.float32)
  teacher = rng.normal(size=(2, 5, 7)).astype(np.float32)
  labels = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.float32)
  batch = {'labels': labels, 'mask': mask,
           lm_distill.WEIGHT_KEY: np.full(2, 0.3, np.float32),
           lm_distill.TEMPERATURE_KEY: np.full(2, 2.0, np.float32),
           lm_distill.DIVERGENCE_KEY: np.full(2, lm_distill.OFF_POLICY.index(variant), np.int32)}
  loss, _ = lm_distill.make_objective(variant, _config())(
      Outputs(logits=student), Outputs(logits=teacher), batch)
  real = mask > 0
  kd = np.asarray(loss_fn(student[real], teacher[real], temperature=2.0, **kwargs)).mean()
  ce = np.asarray(losses.cross_entropy(student[real], labels[real])).mean()
  np.testing.assert_allclose(float(loss), 0.3 * kd + 0.7 * ce, rtol=1e-5)


def test_labels_are_not_learned_from_the_students_own_rows():
  rng = np.random.default_rng(4)
  student = rng.normal(size=(3, 4, 6)).astype(np.float32)
  labels = rng.integers(0, 6, size=(3, 4)).astype(np.int32)
  batch = {'labels': labels, 'mask': np.ones((3, 4), np.float32),
           'on_policy': np.array([0, 1, 0], np.int32)}
  loss, _ = lm_distill.make_objective('labels', _config())(Outputs(logits=student), None, batch)
  ce = np.asarray(losses.cross_entropy(student[[0, 2]], labels[[0, 2]])).mean()
  np.testing.assert_allclose(float(loss), ce, rtol=1e-5)


def test_unknown_variant_is_refused():
  with pytest.raises(ValueError, match='variant must be one of'):
    lm_distill.make_objective('kl', _config())


# ---------------------------------------------------------------- verdicts


def test_paired_difference_interval_matches_the_t_formula():
  a, b = [1.0, 1.4, 1.3], [0.5, 0.7, 0.9]
  diff = _common.paired_difference(a, b, confidence=0.9)
  d = np.subtract(a, b)
  half = 2.919986 * d.std(ddof=1) / math.sqrt(3)  # t_{0.95, 2}
  np.testing.assert_allclose(diff['ci'], [d.mean() - half, d.mean() + half], rtol=1e-5)
  assert _common.paired_verdict(diff) == 'shown'
  assert _common.paired_verdict(diff, claim_sign=-1.0) == 'contradicted'
  noisy = _common.paired_difference([1.0, -0.8, 0.3], [0.0, 0.0, 0.0])
  assert _common.paired_verdict(noisy) == 'within the seed spread'
  assert _common.equivalence_verdict(noisy) == 'within the seed spread'
  assert _common.equivalence_verdict(diff) == 'contradicted'
  one = _common.paired_difference([2.0], [1.0])
  assert one['ci'] == [1.0, 1.0] and _common.paired_verdict(one) == 'within the seed spread'
  with pytest.raises(ValueError, match='equal-length'):
    _common.paired_difference([1.0, 2.0], [1.0])


def test_config_schema_accepts_every_scale_and_names_bad_keys():
  schema = configs.schema()
  for scale in ('smoke', 'cpu', 'full'):
    schema.validate(configs.get_config(scale))
  config = configs.get_config('cpu')
  with config.unlocked():
    config.onpolicy.prompt_width = 129
    config.selection_seed = 1
    config.onpolicy.divergence = 'tvd'
  with pytest.raises(config_lib.ConfigError) as error:
    schema.validate(config)
  text = str(error.value)
  assert 'onpolicy.prompt_width' in text and 'selection_seed' in text
  assert 'onpolicy.divergence' in text


# ---------------------------------------------------------------- smoke run


def test_smoke_run_of_three_variants(tmp_path):
  """CI's smoke run: labels, an off-policy divergence with its selection, and GKD."""
  workdir = tmp_path / 'run'
  variants = ('labels', 'forward_kl', 'gkd')
  lm_distill.main(['--config=experiments/configs/lm_distill.py:smoke', f'--workdir={workdir}',
                   f'--config.variants={variants}'])
  results = json.loads((workdir / 'results.json').read_text())
  assert set(results['summary']) == set(variants)
  assert [r['forward_kl']['teacher'] for r in results['per_seed']] == [0, 1]
  for variant, stats in results['summary'].items():
    assert 0.0 < stats['test/bpb']['mean'] < 12.0, variant
    assert stats['gen/teacher_nll']['mean'] > 0.0
  # GKD takes the JSD's selected weight and temperature: both are selected.
  assert set(results['selection']) == {'forward_kl', 'jsd'}


# Every variant (about 50 s on 2 cores, mostly compilation): slow. CI runs
# the three-variant smoke run above.
@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
  workdir = tmp_path / 'runs' / 'lm_distill_cpu'
  lm_distill.main(['--config=experiments/configs/lm_distill.py:smoke', f'--workdir={workdir}'])
  results = json.loads((workdir / 'results.json').read_text())
  assert set(results['summary']) == set(configs.VARIANTS)
  assert len(results['teachers']) == 2
  # Seed i distils from teacher i mod 2.
  assert [r['forward_kl']['teacher'] for r in results['per_seed']] == [0, 1]
  for variant, stats in results['summary'].items():
    assert 0.0 < stats['test/bpb']['mean'] < 12.0, variant
    if not variant.startswith('bpe'):
      assert stats['gen/teacher_nll']['mean'] > 0.0
  # The selection reads validation only: its runs never scored the test split.
  for divergence, record in results['selection'].items():
    for point in record['val_bpb']:
      w, t = (float(x.split('=')[1]) for x in point.split(','))
      final = [r for r in writers.read_jsonl(workdir / 'select' / divergence / f'w{w:g}_T{t:g}')
               if r['split'] == 'final']
      assert len(final) == 1 and not [k for k in final[0] if k.startswith('test')]
      assert final[0]['val/bpb'] == pytest.approx(record['val_bpb'][point])
  assert {c['verdict'] for c in results['claims']} <= {
      'shown', 'within the seed spread', 'contradicted'}
  assert len(results['claims']) == len(lm_distill.CLAIMS)
  out = tmp_path / 'results.md'
  others = [a for name in make_results.NAMES if name != 'lm_distill_cpu' for a in ('--keep', name)]
  make_results.main(['--record', str(workdir), '--results', str(tmp_path / 'results'),
                     '--out', str(out), *others])
  text = out.read_text()
  assert 'Distilling a byte-level language model' in text and 'verdict' in text
