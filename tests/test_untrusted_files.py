"""Untrusted files: corrupt caches, datasets and chunks give a clear error naming the file.

Nothing is unpickled; a truncated or corrupt array_record shard, a bad cache
spec (not JSON, missing or unknown fields, wrong types, a shape or dtype
that is not the records'), a truncated dataset shard or a bad chunk of
teacher outputs raise a ValueError (or FileNotFoundError) whose message
names the file, instead of a RuntimeError from the C++ reader without one,
a NumPy reshape error, or arrays of a silently wrong shape.
"""

import json
import os
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax import cache
from kdjax import data
from kdjax import seqkd
from kdjax._outputs import Outputs
from kdjax.data._builder import OfflineArrayBuilder

VOCAB, TIME = 24, 5


def _teacher_apply(variables, batch, *, train, rngs=None):
  del train, rngs
  return Outputs(logits=variables['table'][batch['tokens']]), {}


@pytest.fixture(scope='module')
def good_cache(tmp_path_factory):
  directory = tmp_path_factory.mktemp('cache') / 'good'
  rng = np.random.default_rng(0)
  variables = {'table': rng.standard_normal((VOCAB, VOCAB)).astype(np.float32)}
  arrays = {'tokens': rng.integers(0, VOCAB, (6, TIME)).astype(np.int32),
            'mask': np.ones((6, TIME), np.int32)}
  cache.write_cache(directory, _teacher_apply, variables, arrays, k=4, batch_size=6,
                    examples_per_shard=3)
  return directory


def _shard(directory):
  return directory / 'teacher_cache-00000-of-00002.array_record'


def _truncate(size):
  def mutate(directory):
    path = _shard(directory)
    content = path.read_bytes()
    path.write_bytes(content[:size(len(content))])
  return mutate


def _flip_byte(directory):
  path = _shard(directory)
  content = bytearray(path.read_bytes())
  content[len(content) // 2] ^= 0xFF
  path.write_bytes(bytes(content))


def _spec_text(text):
  return lambda directory: (directory / 'cache_spec.json').write_text(text)


def _spec(**changes):
  def mutate(directory):
    path = directory / 'cache_spec.json'
    spec = json.loads(path.read_text())
    for key, value in changes.items():
      if value is None:
        del spec[key]
      else:
        spec[key] = value
    path.write_text(json.dumps(spec))
  return mutate


SHARD = 'teacher_cache-00000-of-00002.array_record'
# (mutation, file named, what the message says): each a distinct corruption.
CORRUPT_CACHES = {
    'truncated_by_10_bytes': (_truncate(lambda n: n - 10), SHARD, 'not a readable array_record'),
    'truncated_to_half': (_truncate(lambda n: n // 2), SHARD, 'not a readable array_record'),
    'truncated_to_empty': (_truncate(lambda n: 0), SHARD, 'at least 64KB'),
    'flipped_byte': (_flip_byte, SHARD, 'hash mismatch'),
    'spec_not_json': (_spec_text('{"k": 4,'), 'cache_spec.json', 'Expecting property name'),
    'spec_a_list': (_spec_text('[4, 24]'), 'cache_spec.json', 'must be a JSON object'),
    'spec_binary': (lambda d: (d / 'cache_spec.json').write_bytes(b'\x80\x04\x95'),
                    'cache_spec.json', 'cache_spec.json'),
    'spec_missing_field': (_spec(time=None), 'cache_spec.json', "missing field 'time'"),
    'spec_unknown_field': (_spec(extra=1), 'cache_spec.json', "unknown field 'extra'"),
    'spec_k_a_string': (_spec(k='4'), 'cache_spec.json', "k='4' must be a positive integer"),
    'spec_negative_count': (_spec(num_examples=-3), 'cache_spec.json', 'num_examples=-3'),
    'spec_temperature_zero': (_spec(temperature=0), 'cache_spec.json', 'a finite number > 0'),
    'spec_unknown_format': (_spec(log_prob_format='float8'), 'cache_spec.json',
                            "log_prob_format='float8' must be one of"),
    'spec_k_above_vocab': (_spec(vocab_size=3), 'cache_spec.json', 'k=4 exceeds vocab_size=3'),
    'spec_newer_version': (_spec(version=2), 'cache_spec.json', 'version=2'),
    'spec_wrong_time': (_spec(time=TIME + 1), SHARD, 'a record of 120 bytes, where the spec'),
    'spec_wrong_k': (_spec(k=8), SHARD, 'a record of 120 bytes'),
    'spec_wrong_dtype': (_spec(log_prob_format='float16'), SHARD, 'float16'),
    'spec_wrong_vocab': (_spec(vocab_size=5), SHARD, "outside the spec's vocab_size=5"),
    'spec_wrong_shard_size': (_spec(examples_per_shard=2, num_examples=4), 'teacher_cache-00000-of-00002',
                              'holds 3 records'),
}


@pytest.mark.parametrize('case', sorted(CORRUPT_CACHES))
def test_corrupt_cache_names_the_file(case, good_cache, tmp_path):
  mutate, name, message = CORRUPT_CACHES[case]
  directory = tmp_path / 'cache'
  shutil.copytree(good_cache, directory)
  mutate(directory)
  with pytest.raises(ValueError) as error:
    teacher_cache = cache.TeacherCache(directory)
    teacher_cache.read(range(len(teacher_cache)))
  assert str(directory / name) in str(error.value) and message in str(error.value), str(error.value)


def test_good_cache_reads(good_cache):
  teacher_cache = cache.TeacherCache(good_cache)
  records = teacher_cache.read(range(len(teacher_cache)))
  assert records['teacher_topk_indices'].shape == (6, TIME, 4)


class _TinyDataset(OfflineArrayBuilder, skip_registration=True):
  VERSION = tfds.core.Version('1.0.0')

  def _features(self):
    return tfds.features.FeaturesDict({'x': tfds.features.Tensor(shape=(3,), dtype=np.float32)})

  def _split_arrays(self):
    return {'train': {'x': np.arange(3000, dtype=np.float32).reshape(1000, 3)}}


@pytest.mark.parametrize('cut', [0, 100_000, -10])
def test_truncated_dataset_shard_names_the_file(cut, tmp_path, monkeypatch):
  builder = _TinyDataset(data_dir=str(tmp_path))
  builder.download_and_prepare()
  [shard] = pathlib.Path(builder.data_dir).glob('*train.array_record*')
  monkeypatch.setattr(tfds, 'data_source', lambda *a, **k: builder.as_data_source(split='train'))
  assert len(data.load_source('tiny', 'train')) == 1000
  content = shard.read_bytes()
  shard.write_bytes(content[:cut] if cut >= 0 else content[:cut])
  with pytest.raises(ValueError, match=f"split 'train' is unreadable: {shard}: not a readable"):
    data.load_source('tiny', 'train')


def _decode_never_called(batch):
  raise AssertionError('every chunk exists; nothing is decoded')


def _chunk_dir(tmp_path, write_chunk):
  source = np.ones((2, 3), np.int32)
  mask = np.ones((2, 3), bool)
  directory = tmp_path / 'chunks'
  directory.mkdir()
  stamp = seqkd._fingerprint(source, mask, 2, '')
  (directory / 'spec.json').write_text(json.dumps({'fingerprint': stamp}))
  write_chunk(str(directory / 'chunk_000000.npz'))
  return source, mask, str(directory)


class _Payload:
  """Unpickling this sets a flag: the test fails if a chunk is ever unpickled."""
  unpickled = False

  def __reduce__(self):
    return (_Payload._mark, ())

  @staticmethod
  def _mark():
    _Payload.unpickled = True
    return 0


CORRUPT_CHUNKS = {
    'pickled_object': (lambda p: np.savez(p, tokens=np.array([_Payload()], object),
                                          lengths=np.ones((2, 1)), scores=np.ones((2, 1))),
                       'Object arrays cannot be loaded'),
    'truncated': (lambda p: pathlib.Path(p).write_bytes(b'PK\x03\x04 truncated'),
                  'not a readable chunk'),
    'missing_array': (lambda p: np.savez(p, tokens=np.ones((2, 1, 3))),
                      'lengths is not a file in the archive'),
    'wrong_rows': (lambda p: np.savez(p, tokens=np.ones((3, 1, 3)), lengths=np.ones((3, 1)),
                                      scores=np.ones((3, 1))), 'where the chunk has 2 sources'),
}


@pytest.mark.parametrize('case', sorted(CORRUPT_CHUNKS))
def test_corrupt_teacher_chunk_names_the_file(case, tmp_path):
  write_chunk, message = CORRUPT_CHUNKS[case]
  source, mask, directory = _chunk_dir(tmp_path, write_chunk)
  with pytest.raises(ValueError) as error:
    seqkd.generate_teacher_chunks(_decode_never_called, source, mask, directory, batch_size=2)
  assert os.path.join(directory, 'chunk_000000.npz') in str(error.value)
  assert message in str(error.value), str(error.value)
  assert not _Payload.unpickled


def test_corrupt_chunk_spec_names_the_file(tmp_path):
  source, mask, directory = _chunk_dir(tmp_path, lambda p: None)
  (pathlib.Path(directory) / 'spec.json').write_text('{not json')
  with pytest.raises(ValueError, match='spec.json: not a chunk spec'):
    seqkd.generate_teacher_chunks(_decode_never_called, source, mask, directory, batch_size=2)


def test_nothing_in_kdjax_unpickles():
  root = pathlib.Path(__file__).parent.parent / 'kdjax'
  for path in root.rglob('*.py'):
    text = path.read_text()
    for needle in ('import pickle', 'allow_pickle=True', 'cloudpickle', 'dill'):
      assert needle not in text, f'{path} uses {needle}'
