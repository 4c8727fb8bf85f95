"""Byte-level text corpora and the language-model distillation experiment."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import lm_kd
from experiments import make_results
from kdjax import data as data_lib
from kdjax import losses
from kdjax import writers
from kdjax._outputs import Outputs


def _write_corpus(root, count=24):
  """Small Python-like files of varied lengths, a package, a test dir and a non-.py file."""
  rng = np.random.default_rng(0)
  texts = {}
  for i in range(count):
    lines = [f'def f{i}_{j}(x):\n    return x * {j} + {i}\n' for j in range(int(rng.integers(0, 6)))]
    texts[f'mod{i:02d}.py' if i % 3 else f'pkg/sub{i:02d}.py'] = ''.join(lines)
  texts['pkg/__init__.py'] = ''  # an empty file: no window
  texts['tests/test_x.py'] = 'excluded = True\n'
  texts['test/data.py'] = 'excluded = True\n'
  texts['notes.txt'] = 'not python\n'
  for path, text in texts.items():
    os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
    with open(os.path.join(root, path), 'w') as f:
      f.write(text)
  return texts


def _docs(rng, lengths):
  return [rng.integers(0, 256, size=n).astype(np.uint8) for n in lengths]


@pytest.mark.parametrize('stride', [None, 3])
def test_windows_reassemble_every_document_and_mask_only_padding(stride):
  rng = np.random.default_rng(1)
  length = 5
  docs = _docs(rng, [0, 1, 2, 5, 6, 7, 11, 23])
  w = data_lib.make_windows(docs, length, stride=stride)
  assert w['tokens'].shape == w['labels'].shape == w['mask'].shape
  assert w['tokens'].shape[1] == length and w['tokens'].dtype == np.int32
  mask = w['mask'] > 0
  # The mask is a prefix of each row and the padding is token 0.
  assert np.all(np.diff(w['mask'], axis=1) <= 0)
  assert np.all(w['tokens'][~mask] == 0) and np.all(w['labels'][~mask] == 0)
  step = stride or length
  for index, doc in enumerate(docs):
    rows = np.flatnonzero(w['document'] == index)
    if doc.size < 2:
      assert rows.size == 0
      continue
    targets = np.zeros(doc.size, int)  # times each position is a target
    for k, row in enumerate(rows):
      real = mask[row]
      start = k * step
      np.testing.assert_array_equal(w['tokens'][row][real], doc[start:start + real.sum()])
      np.testing.assert_array_equal(w['labels'][row][real], doc[start + 1:start + 1 + real.sum()])
      targets[start + 1:start + 1 + real.sum()] += 1
      # Only a document's last window is short.
      assert real.all() or k == len(rows) - 1
    assert targets[0] == 0 and np.all(targets[1:] >= 1)
    if stride is None:  # non-overlapping: every target exactly once
      assert np.all(targets[1:] == 1)
      assert rows.size == math.ceil((doc.size - 1) / length)


def test_split_files_is_disjoint_complete_and_stable_under_subsets():
  files = [f'dir{i % 7}/file{i}.py' for i in range(400)]
  splits = data_lib.split_files(files, val_fraction=0.1, test_fraction=0.2)
  sets = {k: set(v) for k, v in splits.items()}
  assert not sets['train'] & sets['val'] and not sets['train'] & sets['test']
  assert not sets['val'] & sets['test']
  assert sets['train'] | sets['val'] | sets['test'] == set(files)
  assert 40 < len(sets['test']) < 120 and 15 < len(sets['val']) < 70
  subset = files[::3]
  sub_splits = data_lib.split_files(subset, val_fraction=0.1, test_fraction=0.2)
  for name, paths in sub_splits.items():
    assert paths == [p for p in splits[name] if p in set(subset)]


def test_corpus_arrays_hold_out_whole_files(tmp_path):
  texts = _write_corpus(tmp_path)
  files = data_lib.list_text_files(tmp_path)
  assert files == sorted(p for p in texts if p.endswith('.py') and not p.startswith('test'))
  arrays = data_lib.make_text_lm_arrays(
      tmp_path, length=8, val_fraction=0.25, test_fraction=0.25)
  read = {split: list(arrays[split]['files']) for split in ('train', 'val', 'test')}
  assert sorted(sum(read.values(), [])) == files
  for a, b in (('train', 'val'), ('train', 'test'), ('val', 'test')):
    assert not set(read[a]) & set(read[b])
  for split in ('train', 'val', 'test'):
    windows = arrays[split]
    mask = windows['mask'] > 0
    for index, path in enumerate(read[split]):
      text = texts[path].encode()
      rows = windows['document'] == index
      np.testing.assert_array_equal(windows['labels'][rows][mask[rows]],
                                    np.frombuffer(text[1:], np.uint8))
    assert int(windows['bytes']) == sum(len(texts[p]) for p in read[split])
  # A byte budget keeps the first whole files in sorted order.
  small = data_lib.make_text_lm_arrays(
      tmp_path, length=8, val_fraction=0.25, test_fraction=0.25, max_bytes={'train': 150})
  kept = list(small['train']['files'])
  assert kept == read['train'][:len(kept)] and 0 < int(small['train']['bytes']) <= 150
  assert int(small['train']['bytes']) + len(texts[read['train'][len(kept)]]) > 150


def test_text_data_errors(tmp_path):
  with pytest.raises(ValueError, match='length must be positive, got 0'):
    data_lib.make_windows([np.arange(4)], 0)
  with pytest.raises(ValueError, match=r'documents\[0\] must be 1-D tokens, got shape \(2, 2\)'):
    data_lib.make_windows([np.zeros((2, 2), int)], 4)
  with pytest.raises(ValueError, match='fewer than two tokens'):
    data_lib.make_windows([np.arange(1)], 4)
  with pytest.raises(ValueError, match=r'val_fraction \+ test_fraction must be < 1'):
    data_lib.split_files(['a.py'], val_fraction=0.5, test_fraction=0.5)
  with pytest.raises(FileNotFoundError, match='no corpus directory'):
    data_lib.list_text_files(tmp_path / 'missing')
  with pytest.raises(ValueError, match=r"no file ending in \('.py',\)"):
    data_lib.list_text_files(tmp_path)
  _write_corpus(tmp_path)
  with pytest.raises(KeyError, match=r"max_bytes has unknown splits \['dev'\]"):
    data_lib.make_text_lm_arrays(tmp_path, length=4, max_bytes={'dev': 10})


def test_bits_per_byte_equals_numpy_on_a_bigram_table():
  rng = np.random.default_rng(2)
  table = rng.normal(size=(256, 256)).astype(np.float32) * 3

  def apply(variables, batch, *, train, rngs=None):
    del train, rngs
    return Outputs(logits=variables['table'][batch['tokens']]), {}

  docs = _docs(rng, [9, 30, 4])
  arrays = data_lib.make_windows(docs, 6)
  got = lm_kd.bits_per_byte(lm_kd.make_nll_fn(apply), {'table': table}, arrays, batch_size=4)
  # NumPy, one target at a time: -log2 softmax(table[previous byte])[byte].
  total, count = 0.0, 0
  for doc in docs:
    for prev, nxt in zip(doc[:-1], doc[1:]):
      row = table[prev].astype(np.float64)
      log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
      total += (log_z - row[nxt]) / np.log(2.0)
      count += 1
  assert count == int(arrays['mask'].sum())
  np.testing.assert_allclose(got, total / count, rtol=1e-5)


def _config():
  from kdjax import config as config_lib  # pylint: disable=g-import-not-at-top

  return config_lib.load_config('experiments/configs/lm_kd.py:cpu')


@pytest.mark.parametrize('variant,loss_fn,kwargs', [
    ('forward_kl', losses.kl_divergence, {}),
    ('reverse_kl', losses.reverse_kl_divergence, {}),
    ('jsd', losses.generalized_jsd, {'beta': 0.5}),
    ('skew_kl', losses.skew_kl_divergence, {'alpha': 0.1}),
])
def test_objective_mixes_the_named_divergence_and_labels_over_real_tokens(variant, loss_fn, kwargs):
  rng = np.random.default_rng(3)
  student = rng.normal(size=(2, 5, 7)).astype(np.float32)
  teacher = rng.normal(size=(2, 5, 7)).astype(np.float32)
  labels = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.float32)
  config = _config()
  loss, _ = lm_kd.make_objective(variant, config.kd, kd_weight=0.3)(
      Outputs(logits=student), Outputs(logits=teacher), {'labels': labels, 'mask': mask})
  real = mask > 0
  kd = np.asarray(loss_fn(student[real], teacher[real], **kwargs)).mean()
  ce = np.asarray(losses.cross_entropy(student[real], labels[real])).mean()
  np.testing.assert_allclose(float(loss), 0.3 * kd + 0.7 * ce, rtol=1e-5)
  with pytest.raises(ValueError, match="variant must be 'labels' or one of"):
    lm_kd.make_objective('kl', config.kd)


def _tiny_args(workdir, root, *extra):
  return [
      '--config=experiments/configs/lm_kd.py:cpu', f'--workdir={workdir}',
      f'--config.data.root={root}', '--config.seeds=(0,)', '--config.progress=false',
      '--config.data.context=8', '--config.data.val_fraction=0.25',
      '--config.data.test_fraction=0.25', "--config.variants=('forward_kl',)",
      '--config.teacher.num_layers=1', '--config.teacher.hidden=8',
      '--config.teacher.num_heads=2', '--config.teacher.mlp_dim=8',
      '--config.student.num_layers=1', '--config.student.hidden=4',
      '--config.student.num_heads=2', '--config.student.mlp_dim=4',
      '--config.teacher.epochs=1', '--config.student.epochs=1', *extra,
  ]


def test_lm_kd_smoke_run_writes_results_and_the_results_section(tmp_path):
  root = tmp_path / 'corpus'
  _write_corpus(root, count=60)
  workdir = tmp_path / 'runs' / 'lm_kd_cpu'
  windows = len(data_lib.make_text_lm_arrays(
      root, length=8, val_fraction=0.25, test_fraction=0.25)['train']['tokens'])
  lm_kd.main(_tiny_args(workdir, root, f'--config.teacher.batch_size={windows}',
                        f'--config.student.batch_size={windows}'))
  with open(workdir / 'results.json') as f:
    results = json.load(f)
  assert results['steps'] == {'teacher': 1, 'student': 1}  # one step per phase
  assert results['params']['student'] < results['params']['teacher']
  for variant in ('teacher', 'forward_kl/weight0.5/seed0', 'forward_kl/weight1/seed0'):
    records = writers.read_jsonl(workdir / variant)
    assert {r['split'] for r in records} == {'train', 'eval', 'final'}
  selection = results['selection']['forward_kl']
  assert selection['chosen'] == selection['grid'][int(np.argmin(selection['val_bpc']))]
  stats = results['summary']['forward_kl']
  assert 0.0 < stats['test']['mean'] < 10.0  # about log2(256) = 8 untrained
  assert (workdir / 'teacher' / 'final' / 'teacher').is_dir()

  out = tmp_path / 'results.md'
  others = [arg for name in make_results.NAMES if name != 'lm_kd_cpu' for arg in ('--keep', name)]
  make_results.main(['--record', str(workdir), '--results', str(tmp_path / 'results'),
                     '--out', str(out), *others])
  text = out.read_text()
  assert 'byte-level language model' in text and 'forward KL (w = ' in text


def test_cached_teacher_logits_give_the_live_teachers_loss():
  rng = np.random.default_rng(4)
  table = {'table': rng.normal(size=(256, 256)).astype(np.float32) * 3}

  def teacher_apply(variables, batch, *, train, rngs=None):  # a bigram "teacher"
    del train, rngs
    return Outputs(logits=variables['table'][batch['tokens']]), {}

  batch = data_lib.make_windows(_docs(rng, [12, 7]), 8)
  batch = {k: batch[k] for k in lm_kd.TRAIN_KEYS}
  cached = lm_kd.teacher_logits(teacher_apply, table, batch, batch_size=2)  # padded batches
  assert cached.dtype == np.float16 and cached.shape == (3, 8, 256)
  live, _ = teacher_apply(table, batch, train=False)
  from_cache, _ = lm_kd.cached_teacher_apply(None, {**batch, 'teacher_logits': cached},
                                             train=False)
  np.testing.assert_allclose(np.asarray(from_cache.logits), np.asarray(live.logits), atol=4e-3)
  student = Outputs(logits=jnp.asarray(rng.normal(size=(3, 8, 256)), jnp.float32))
  objective = lm_kd.make_objective('forward_kl', _config().kd)
  np.testing.assert_allclose(float(objective(student, from_cache, batch)[0]),
                             float(objective(student, live, batch)[0]), rtol=1e-3)
