"""Tests for kdjax.data: the MNIST-1D TFDS builder and the grain pipelines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax import data as kdata


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """MNIST-1D prepared once for the module (about 5 s)."""
  d = str(tmp_path_factory.mktemp('tfds'))
  kdata.Mnist1d(data_dir=d).download_and_prepare()
  return d


@pytest.fixture(scope='module')
def reference():
  """make_dataset's arrays, generated directly with mnist1d (about 2 s)."""
  import mnist1d.data  # pylint: disable=g-import-not-at-top

  return mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())


@pytest.fixture(scope='module')
def train(data_dir):
  return kdata.load_source('mnist1d', 'train', data_dir=data_dir)


@pytest.fixture(scope='module')
def small(data_dir):
  """The first 400 training examples: keeps the epoch tests fast."""
  return kdata.load_source('mnist1d', 'train[:400]', data_dir=data_dir)


@pytest.fixture(scope='module')
def test_split(data_dir):
  return kdata.load_source('mnist1d', 'test', data_dir=data_dir)


def _rows(source):
  """All examples of a source as ([N, 40] float32, [N] int64) arrays."""
  examples = [source[i] for i in range(len(source))]
  xs = np.stack([np.asarray(e['x']) for e in examples])
  ys = np.array([int(e['label']) for e in examples])
  return xs, ys


@pytest.fixture(scope='module')
def train_rows(train):
  return _rows(train)


@pytest.fixture(scope='module')
def test_rows(test_split):
  return _rows(test_split)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for ba, bb in zip(a, b):
    assert ba.keys() == bb.keys()
    for k in ba:
      np.testing.assert_array_equal(ba[k], bb[k])


# ----------------------------------------------------------------- builder


def test_builder_splits_features_and_metadata(data_dir):
  test = kdata.load_source('mnist1d', 'test', data_dir=data_dir)
  train = kdata.load_source('mnist1d', 'train', data_dir=data_dir)
  assert (len(train), len(test)) == (4000, 1000)
  info = train.dataset_info
  assert info.name == 'mnist1d' and str(info.version) == '1.0.0'
  assert info.supervised_keys == ('x', 'label')
  assert info.features['x'].shape == (40,)
  assert info.features['x'].np_dtype == np.float32
  assert kdata.num_classes(train) == 10 == kdata.num_classes(info)
  assert kdata.num_classes(info, 'x') is None
  assert '2011.14439' in info.citation and 'Greydanus' in info.citation
  assert info.file_format.value == 'array_record'
  ex = train[0]
  assert np.asarray(ex['x']).dtype == np.float32
  assert np.asarray(ex['x']).shape == (40,)
  assert 0 <= int(ex['label']) < 10


def test_data_source_by_name_finds_prepared_builder(data_dir):
  src = tfds.data_source(
      'mnist1d', split='test', data_dir=data_dir, download=False
  )
  assert len(src) == 1000
  info = kdata.dataset_info('mnist1d', data_dir)
  assert info.splits['train'].num_examples == 4000


def test_matches_make_dataset_in_order(train_rows, test_rows, reference):
  for (xs, ys), xk, yk in [
      (train_rows, 'x', 'y'),
      (test_rows, 'x_test', 'y_test'),
  ]:
    np.testing.assert_array_equal(xs, reference[xk].astype(np.float32))
    np.testing.assert_array_equal(ys, reference[yk])


def test_make_mnist1d_arrays_restores_global_rng(monkeypatch):
  import random  # pylint: disable=g-import-not-at-top

  import mnist1d.data  # pylint: disable=g-import-not-at-top

  def fake_make_dataset(args):  # Reseeds like the real one, but quickly.
    random.seed(args.seed)
    np.random.seed(args.seed)
    z = np.zeros((2, 40))
    return {'x': z, 'y': np.arange(2), 'x_test': z, 'y_test': np.arange(2)}

  monkeypatch.setattr(mnist1d.data, 'make_dataset', fake_make_dataset)
  np.random.seed(123)
  random.seed(123)
  expected = (np.random.rand(), random.random())
  np.random.seed(123)
  random.seed(123)
  arrays = kdata.make_mnist1d_arrays()
  assert (np.random.rand(), random.random()) == expected
  assert arrays['x'].dtype == np.float32 and arrays['y'].dtype == np.int64


def test_split_slicing_partitions_train(data_dir, train_rows):
  head = kdata.load_source('mnist1d', 'train[:90%]', data_dir=data_dir)
  tail = kdata.load_source('mnist1d', 'train[90%:]', data_dir=data_dir)
  assert (len(head), len(tail)) == (3600, 400)
  xs_h, ys_h = _rows(head)
  xs_t, ys_t = _rows(tail)
  xs, ys = train_rows
  np.testing.assert_array_equal(np.concatenate([xs_h, xs_t]), xs)
  np.testing.assert_array_equal(np.concatenate([ys_h, ys_t]), ys)


# ------------------------------------------------------------------ loader


def test_loader_batches_shapes_and_dtypes(train):
  it = kdata.make_loader(train, batch_size=32, seed=0)
  batch = next(it)
  assert set(batch) == {'x', 'label'}
  assert batch['x'].dtype == np.float32 and batch['x'].shape == (32, 40)
  assert batch['label'].dtype == np.int32 and batch['label'].shape == (32,)
  assert ((batch['label'] >= 0) & (batch['label'] < 10)).all()


def test_features_select_and_rename(train):
  it = kdata.make_loader(
      train, batch_size=8, seed=0, features={'x': 'signal', 'label': 'y'}
  )
  assert set(next(it)) == {'signal', 'y'}
  it = kdata.make_loader(train, batch_size=8, seed=0, features=('label',))
  assert set(next(it)) == {'label'}
  with pytest.raises(KeyError, match='image'):
    next(kdata.make_loader(train, batch_size=8, seed=0, features=('image',)))


def test_shuffle_deterministic_per_seed_and_differs_across_seeds(
    train, train_rows
):
  def first(seed):
    return _take(kdata.make_loader(train, batch_size=64, seed=seed), 3)

  _assert_batches_equal(first(0), first(0))
  a, b = first(0), first(1)
  assert not np.array_equal(a[0]['x'], b[0]['x'])
  unshuffled = next(
      kdata.make_loader(train, batch_size=64, seed=0, shuffle=False)
  )
  np.testing.assert_array_equal(unshuffled['x'], train_rows[0][:64])


def test_each_epoch_is_a_different_permutation(small, train_rows):
  it = kdata.make_loader(small, batch_size=50, seed=3, num_epochs=2)
  batches = list(it)
  assert len(batches) == 16
  epochs = [
      np.concatenate([b['x'] for b in batches[:8]]),
      np.concatenate([b['x'] for b in batches[8:]]),
  ]
  xs = train_rows[0][:400]
  for e in epochs:  # Each epoch holds every example exactly once.
    order = np.lexsort(e.T)
    np.testing.assert_array_equal(e[order], xs[np.lexsort(xs.T)])
  assert not np.array_equal(epochs[0], epochs[1])


@pytest.mark.parametrize(
    'num_epochs,drop_remainder,expected',
    [(1, True, 13), (1, False, 14), (2, True, 26), (2, False, 27)],
)
def test_num_epochs_ends_iteration(small, num_epochs, drop_remainder, expected):
  it = kdata.make_loader(
      small,
      batch_size=30,
      seed=0,
      num_epochs=num_epochs,
      drop_remainder=drop_remainder,
  )
  sizes = [len(b['label']) for b in it]
  assert len(sizes) == expected
  assert sum(sizes) == (
      num_epochs * 400 if not drop_remainder else expected * 30
  )


def test_iterator_state_resumes_exactly(train):
  def loader():
    return kdata.make_loader(train, batch_size=32, seed=7)

  it = loader()
  _take(it, 7)
  state = it.get_state()
  text = json.dumps(state)  # A small JSON-serialisable dict.
  assert json.loads(text) == state and len(text) < 100
  a = _take(it, 5)
  it2 = loader()
  it2.set_state(json.loads(text))
  b = _take(it2, 5)
  _assert_batches_equal(a, b)


def test_transform_applied(train):
  def double(ex):
    return {**ex, 'x': ex['x'] * 2}

  plain = next(kdata.make_loader(train, batch_size=4, seed=0))
  doubled = next(
      kdata.make_loader(train, batch_size=4, seed=0, transform=double)
  )
  np.testing.assert_array_equal(doubled['x'], plain['x'] * 2)


def test_shards_are_disjoint_and_cover(small):
  xs = []
  for i in range(2):
    it = kdata.make_loader(
        small,
        batch_size=20,
        seed=0,
        num_epochs=1,
        shard_index=i,
        shard_count=2,
    )
    xs.append(np.concatenate([b['x'] for b in it]))
  both = np.concatenate(xs)
  assert both.shape == (400, 40)
  assert len(np.unique(both, axis=0)) == 400


class _BadLabel:
  """A source whose example 5 has label 10, keeping the TFDS info."""

  def __init__(self, source):
    self._source = source
    self.dataset_info = source.dataset_info

  def __len__(self):
    return 20

  def __getitem__(self, i):
    ex = dict(self._source[i])
    if i == 5:
      ex['label'] = np.int64(10)
    return ex


def test_label_out_of_range_raises(train):
  it = kdata.make_loader(_BadLabel(train), batch_size=4, seed=0, num_epochs=1)
  with pytest.raises(ValueError, match=r"'label'.* 10 .*num_classes=10"):
    list(it)
  # Plain sources have no info: the class count can be given.
  src = [{'x': np.zeros(3, np.float32), 'label': i} for i in (0, 1, 2, -1)]
  it = kdata.make_loader(
      src, batch_size=4, seed=0, features=('x', 'label'),
      class_counts={'label': 3},
  )
  with pytest.raises(ValueError, match=r"'label'.* -1 .*num_classes=3"):
    next(it)


def test_bad_arguments_raise(train):
  with pytest.raises(ValueError, match='batch_size'):
    kdata.make_loader(train, batch_size=0, seed=0)
  with pytest.raises(ValueError, match='num_epochs'):
    kdata.make_loader(train, batch_size=2, seed=0, num_epochs=0)
  with pytest.raises(ValueError, match='shard_index'):
    kdata.make_loader(train, batch_size=2, seed=0, shard_index=2, shard_count=2)


# ------------------------------------------------------------ iterate_once


def test_iterate_once_covers_everything_with_mask(test_split, test_rows):
  batches = list(kdata.iterate_once(test_split, 300))
  assert len(batches) == 4
  for b in batches:
    assert set(b) == {'x', 'label', 'mask'}
    assert b['x'].shape == (300, 40) and b['mask'].dtype == np.bool_
  assert [int(b['mask'].sum()) for b in batches] == [300, 300, 300, 100]
  np.testing.assert_array_equal(batches[-1]['mask'][:100], True)
  np.testing.assert_array_equal(batches[-1]['x'][100:], 0.0)
  xs = np.concatenate([b['x'][b['mask']] for b in batches])
  ys = np.concatenate([b['label'][b['mask']] for b in batches])
  ref_x, ref_y = test_rows
  np.testing.assert_array_equal(xs, ref_x)
  np.testing.assert_array_equal(ys, ref_y)
  # A masked mean counts each example once.
  correct = np.concatenate([(b['label'] == 0) & b['mask'] for b in batches])
  assert correct.sum() / 1000 == np.mean(ref_y == 0)


def test_iterate_once_exact_multiple_has_full_masks(test_split):
  batches = list(kdata.iterate_once(test_split, 250))
  assert len(batches) == 4 and all(b['mask'].all() for b in batches)


# ------------------------------------------------------- catalogue datasets


def test_catalogue_dataset_with_mock_data():
  with tfds.testing.mock_data(num_examples=20):
    src = kdata.load_source('mnist', 'train')
    assert len(src) == 20
    it = kdata.make_loader(src, batch_size=8, seed=0)
    batch = next(it)
    assert set(batch) == {'x', 'label'}
    assert batch['x'].dtype == np.float32
    assert batch['x'].shape == (8, 28, 28, 1)
    assert 0.0 <= batch['x'].min() and batch['x'].max() <= 1.0
    assert batch['label'].dtype == np.int32
    renamed = next(
        kdata.make_loader(
            src, batch_size=8, seed=0,
            features={'image': 'image', 'label': 'label'},
        )
    )
    np.testing.assert_array_equal(renamed['image'], batch['x'])
    evals = list(kdata.iterate_once(src, 8))
    assert [int(b['mask'].sum()) for b in evals] == [8, 8, 4]
