"""Tests for the gettext translation data: reading, normalisation, splits, BPE, builders."""

from __future__ import annotations

import os
import pathlib
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax import data as kdata
from kdjax.data import _gettext

SAMPLE = pathlib.Path(__file__).parent / 'data' / 'gettext_de_sample.tsv'
# The sample's 9 catalogs need larger held-out shares than the real corpus's 180.
SPLIT_OPTIONS = dict(val_fraction=0.25, test_fraction=0.25, min_eval_pairs=20)


def write_mo(path, entries):
  """Writes a GNU .mo file: `entries` maps msgid keys to msgstr values.

  Keys and values are written as gettext stores them: a context as
  ``ctx\\x04msgid``, a plural as ``msgid\\x00msgid_plural`` with the forms
  joined by ``\\x00``; ``''`` is the header.
  """
  items = sorted((k.encode('utf-8'), v.encode('utf-8')) for k, v in entries.items())
  count = len(items)
  originals_at = 28
  translations_at = originals_at + 8 * count
  data_at = translations_at + 8 * count
  tables, blob = [[], []], b''
  for column in (0, 1):
    for item in items:
      tables[column].append((len(item[column]), data_at + len(blob)))
      blob += item[column] + b'\0'
  header = struct.pack('<7I', 0x950412DE, 0, count, originals_at, translations_at, 0, data_at)
  body = b''.join(struct.pack('<2I', *entry) for column in tables for entry in column)
  pathlib.Path(path).write_bytes(header + body + blob)


HEADER = (
    'Content-Type: text/plain; charset=UTF-8\n'
    'Plural-Forms: nplurals=2; plural=(n != 1);\n'
)


@pytest.fixture(scope='module')
def sample_pairs():
  return kdata.read_pairs(SAMPLE)


@pytest.fixture(scope='module')
def sample_splits(sample_pairs):
  return kdata.make_translation_splits(sample_pairs, **SPLIT_OPTIONS)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """The builder run on the shipped sample (no apt), once for the module."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  builder = kdata.GettextTranslation(
      config='de', data_dir=data_dir, pairs_file=SAMPLE, vocab_size=600, **SPLIT_OPTIONS)
  builder.download_and_prepare()
  return data_dir, builder


# ----------------------------------------------------------- normalisation


@pytest.mark.parametrize('raw,expected', [
    ('_File', 'File'),
    ('E_xit', 'Exit'),
    ('&Open', 'Open'),
    ('~Quit', 'Quit'),
    ('Save _As…', 'Save As…'),
    ('Tom & Jerry', 'Tom & Jerry'),          # & before a space: text
    ('&amp; stays', '&amp; stays'),          # an HTML entity
    ('see ~/.bashrc', 'see ~/.bashrc'),      # a path
    ('POSIXLY_CORRECT is set', 'POSIXLY_CORRECT is set'),
    ('_a and _b', '_a and _b'),              # two underscores: not a mark
])
def test_accelerators(raw, expected):
  assert kdata.normalise_text(raw) == expected


@pytest.mark.parametrize('raw,expected', [
    ('%s: %d files', '{0}: {1} files'),
    ('%-10s|%5.2f|%lu', '{0}|{1}|{2}'),
    ('%2$s von %1$s', '{1} von {0}'),
    ('%1$s of %2$s', '{0} of {1}'),
    ('copy {0} to {1}', 'copy {0} to {1}'),
    ('hello {name}', 'hello {name}'),
    ('hello %(name)s', 'hello {name}'),
    ('hello ${name}', 'hello {name}'),
    ('%1 of %2', '{0} of {1}'),               # Qt/KDE
    ('100%% done', '100% done'),
    ('%qs is not %<const%>', "{0} is not 'const'"),  # GCC
    ('%<PRIu64> bytes', '{0} bytes'),
    ('cannot open: %m', 'cannot open: {m}'),
])
def test_placeholders(raw, expected):
  assert kdata.normalise_text(raw) == expected


def test_whitespace_collapsed():
  assert kdata.normalise_text('  two\n\tlines   here \n') == 'two lines here'


def test_normalise_pair_keeps_and_drops():
  assert kdata.normalise_pair('_Open %s', '%s ö_ffnen') == ('Open {0}', '{0} öffnen')
  assert kdata.normalise_pair('%2$s of %1$s', '%1$s de %2$s') == ('{1} of {0}', '{0} de {1}')
  assert kdata.normalise_pair('OK', 'OK') == 'identical'
  assert kdata.normalise_pair('_OK', 'OK') == 'identical'  # after normalisation
  assert kdata.normalise_pair('   ', 'x') == 'empty'
  assert kdata.normalise_pair('%s: %s', '%s : %s') == 'no_letter'
  assert kdata.normalise_pair('a\nb\nc', 'x\ny\nz') == 'multiline'
  assert kdata.normalise_pair('word ' * 50, 'Wort ' * 50) == 'too_long'
  assert kdata.normalise_pair('x' * 201, 'y') == 'too_long'
  assert kdata.normalise_pair('%s files', 'Dateien') == 'placeholders'
  assert kdata.normalise_pair('%s of %d', '%s von %s %d') == 'placeholders'


# ------------------------------------------------------------------- reading


def test_read_mo_catalog_context_plural_header(tmp_path):
  path = tmp_path / 'demo.mo'
  write_mo(path, {
      '': HEADER,
      'menu\x04_File': '_Datei',
      '%d file\x00%d files': '%d Datei\x00%d Dateien',
      'untranslated': '',
      'Cancel': 'Abbrechen',
  })
  assert kdata.read_mo_catalog(path) == [
      ('%d file', '%d Datei'), ('Cancel', 'Abbrechen'), ('_File', '_Datei')]
  pairs, report = kdata.collect_pairs({'demo': [path]})
  assert [(p.source, p.target, p.catalog) for p in pairs] == [
      ('Cancel', 'Abbrechen', 'demo'), ('File', 'Datei', 'demo'),
      ('{0} file', '{0} Datei', 'demo')]
  assert report['entries'] == {'kept': 3, 'read': 3}


def test_collect_pairs_skips_and_reports_unreadable(tmp_path):
  good, bad = tmp_path / 'good.mo', tmp_path / 'bad.mo'
  write_mo(good, {'': HEADER, 'Yes': 'Ja', 'Same': 'Same'})
  write_mo(bad, {'': 'Content-Type: text/plain; charset=UTF-8\nPlural-Forms: broken\n',
                 'No': 'Nein'})
  pairs, report = kdata.collect_pairs({'good': [good], 'bad': [bad]})
  assert [p.source for p in pairs] == ['Yes']
  assert report['entries'] == {'dropped_identical': 1, 'kept': 1, 'read': 2}
  assert len(report['unreadable']) == 1 and 'bad.mo' in report['unreadable'][0]


def test_pairs_file_round_trip(tmp_path, sample_pairs):
  path = tmp_path / 'pairs.tsv'
  kdata.write_pairs(path, sample_pairs)
  assert kdata.read_pairs(path) == sample_pairs
  with pytest.raises(ValueError, match='tab or newline'):
    kdata.write_pairs(path, [kdata.TranslationPair('a\tb', 'c', 'x')])


# ---------------------------------------------------------------- splitting


def test_splits_are_catalog_disjoint_and_held_out_sources_unseen(sample_splits):
  splits, report = sample_splits
  catalogs = {s: {p.catalog for p in pairs} for s, pairs in splits.items()}
  assert all(catalogs.values())
  for a, b in (('train', 'validation'), ('train', 'test'), ('validation', 'test')):
    assert not catalogs[a] & catalogs[b]
    assert not {p.source for p in splits[a]} & {p.source for p in splits[b]}
  for split, pairs in splits.items():
    assert set(report[split]['catalogs']) == catalogs[split]
    assert report[split]['pairs'] == len(pairs)
    assert report[split]['deduplicated'] - report[split]['dropped_seen'] == len(pairs)
    sources = [p.source for p in pairs]
    assert len(sources) == len(set(sources))  # one target per source
  assert report['train']['dropped_seen'] == 0
  assert report['test']['dropped_seen'] > 0  # gnulib strings shared with train


def test_one_target_per_source_is_most_frequent_then_smallest():
  pair = kdata.TranslationPair
  pairs = [pair('Open', 'Öffnen', 'a'), pair('Open', 'Öffnen', 'b'), pair('Open', 'Auf', 'c'),
           pair('Quit', 'Verlassen', 'a'), pair('Quit', 'Beenden', 'b')]
  # Öffnen is in two catalogs; Verlassen and Beenden tie and Beenden sorts first.
  assert _gettext._one_target_per_source(pairs) == [
      pair('Open', 'Öffnen', 'a'), pair('Quit', 'Beenden', 'b')]


def test_split_catalogs_is_deterministic_and_checks_fractions(sample_pairs):
  a = kdata.split_catalogs(sample_pairs, val_fraction=0.25, test_fraction=0.25)
  b = kdata.split_catalogs(sample_pairs[::-1], val_fraction=0.25, test_fraction=0.25)
  assert a == b
  with pytest.raises(ValueError, match='val_fraction'):
    kdata.split_catalogs(sample_pairs, val_fraction=1.0, test_fraction=0.0)
  with pytest.raises(ValueError, match='val_fraction \\+ test_fraction'):
    kdata.split_catalogs(sample_pairs, val_fraction=0.5, test_fraction=0.5)
  with pytest.raises(ValueError, match='min_eval_pairs=1000'):
    kdata.make_translation_splits(sample_pairs, val_fraction=0.25, test_fraction=0.25)


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_special_ids_round_trip_and_padding(sample_splits):
  splits, _ = sample_splits
  train_texts = [t for p in splits['train'] for t in (p.source, p.target)]
  tokenizer = kdata.train_tokenizer(train_texts, vocab_size=500)
  vocab = tokenizer.tokenizer.get_vocab()
  assert [vocab[t] for t in ('<pad>', '<s>', '</s>', '<unk>')] == [0, 1, 2, 3]
  texts = [p.target for p in splits['test'][:20]] + ['Größe: {0} — ça va?', '']
  batch = tokenizer.encode(texts, add_eos=True)
  ids, lengths, mask = batch['ids'], batch['lengths'], batch['mask']
  assert ids.dtype == np.int32 and lengths.dtype == np.int32 and mask.dtype == np.bool_
  assert ids.shape == (len(texts), lengths.max())
  np.testing.assert_array_equal(mask.sum(1), lengths)
  np.testing.assert_array_equal(ids[~mask], 0)
  np.testing.assert_array_equal(ids[np.arange(len(texts)), lengths - 1], 2)  # EOS
  assert tokenizer.decode(ids, lengths) == texts
  assert tokenizer.decode(ids) == texts  # stops at EOS
  with pytest.raises(ValueError, match='max_length=3'):
    tokenizer.encode(texts, 3)


def test_tokenizer_vocabulary_comes_from_train_only(sample_splits):
  splits, _ = sample_splits
  train_text = ' '.join(t for p in splits['train'] for t in (p.source, p.target))
  test_words = {w for p in splits['test'] for w in p.target.split() if w.isalpha()}
  only_in_test = sorted(w for w in test_words if w not in train_text and len(w) > 6)
  assert only_in_test
  tokenizer = kdata.train_tokenizer(train_text.split('. '), vocab_size=2000)
  for word in only_in_test:
    assert len(tokenizer.encode([' ' + word])['ids'][0]) > 1, word


# ----------------------------------------------------------------- builders


def test_builder_from_pairs_file_reads_back(built, sample_splits):
  data_dir, builder = built
  splits, report = sample_splits
  train = kdata.load_source('gettext_translation/de', 'train', data_dir=data_dir, download=False)
  info = train.dataset_info
  assert info.features['source'].shape == (64,) and info.features['target'].shape == (64,)
  tokenizer = kdata.load_tokenizer(train)
  metadata = kdata.translation_metadata(train)
  for split, pairs in splits.items():
    source = kdata.load_source('gettext_translation/de', split, data_dir=data_dir)
    fits = [p for p in pairs if max(
        len(tokenizer.encode([p.source])['ids'][0]),
        len(tokenizer.encode([p.target], add_eos=True)['ids'][0])) <= 64]
    assert len(source) == len(fits) == len(pairs) - metadata['splits'][split][
        'dropped_too_many_tokens']
    rows = [source[i] for i in range(len(source))]
    # TFDS's NumPy decoding gives Text features as UTF-8 bytes.
    assert [tuple(r[k].decode() for k in ('source_text', 'target_text', 'catalog'))
            for r in rows] == [(p.source, p.target, p.catalog) for p in fits]
  ex = train[3]
  assert ex['source'].dtype == np.int32 and ex['target'].dtype == np.int32
  n, m = int(ex['source_length']), int(ex['target_length'])
  assert ex['target'][m - 1] == 2 and not ex['target'][m:].any() and not ex['source'][n:].any()
  assert tokenizer.decode(ex['target'][None]) == [ex['target_text'].decode()]
  assert tokenizer.decode(ex['source'][None, :n], [n]) == [ex['source_text'].decode()]
  assert metadata['normalisation_version'] == _gettext.NORMALISATION_VERSION
  assert metadata['splits']['test']['pairs'] == report['test']['pairs']
  assert metadata['source'] == {'pairs_file': str(SAMPLE)}
  assert sorted(os.listdir(os.path.dirname(builder.data_dir))) == ['1.0.0']  # no leftovers
  assert {'tokenizer.json', 'translation_metadata.json', 'pairs.tsv'} <= set(
      os.listdir(builder.data_dir))


def test_builder_source_feeds_make_loader(built):
  data_dir, _ = built
  train = kdata.load_source('gettext_translation/de', 'train', data_dir=data_dir)
  batch = next(kdata.make_loader(
      train, batch_size=8, seed=0,
      features=('source', 'source_length', 'target', 'target_length', 'source_text')))
  assert batch['source'].shape == (8, 64) and batch['source'].dtype == np.int32
  assert batch['source_text'].shape == (8,) and isinstance(batch['source_text'][0], bytes)
  assert batch['target_length'].shape == (8,)
  np.testing.assert_array_equal((batch['target'] != 0).sum(1), batch['target_length'])


def test_fetch_catalogs_uses_the_cache_without_apt(tmp_path, monkeypatch):
  """A cached .deb is extracted, not downloaded; only de and de_DE are read."""
  root = tmp_path / 'pkg'
  for locale, domain in (('de', 'demo'), ('de_DE', 'demo'), ('de_DE', 'other'),
                         ('de_CH', 'swiss'), ('fr', 'french')):
    directory = root / 'usr' / 'share' / 'locale' / locale / 'LC_MESSAGES'
    directory.mkdir(parents=True, exist_ok=True)
    write_mo(directory / f'{domain}.mo', {'': HEADER, 'Yes': 'Ja'})
  (root / 'DEBIAN').mkdir()
  (root / 'DEBIAN' / 'control').write_text(
      'Package: demo-l10n\nVersion: 1.2-3\nArchitecture: all\nMaintainer: x <x@y>\n'
      'Description: demo\n')
  debs = tmp_path / 'cache' / 'debs'
  debs.mkdir(parents=True)
  import subprocess  # pylint: disable=g-import-not-at-top
  subprocess.run(['dpkg-deb', '--build', '-Znone', str(root), str(debs / 'demo-l10n_1.2-3_all.deb')],
                 check=True, capture_output=True)
  monkeypatch.setenv('PATH', os.environ['PATH'])  # apt-get must not be needed
  files, versions = kdata.fetch_catalogs(
      'de', cache_dir=tmp_path / 'cache', packages=['demo-l10n'])
  assert versions == {'demo-l10n': '1.2-3'}
  assert sorted(files) == ['demo', 'other']
  assert [p.split('/locale/')[1] for p in files['demo']] == ['de/LC_MESSAGES/demo.mo']


def test_wmt14_with_mock_data():
  import tensorflow_datasets.translate.wmt14  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    arrays, tokenizer, dropped = kdata.make_wmt14_arrays(
        'de-en', vocab_size=300, max_source_length=16, max_target_length=16)
  assert set(arrays) == {'train', 'validation', 'test'}
  for split, split_arrays in arrays.items():
    assert len(split_arrays['source']) + dropped[split] == 12
    assert split_arrays['source'].dtype == np.int32
    assert split_arrays['source'].shape[1:] == (16,)
    lengths = split_arrays['target_length']
    np.testing.assert_array_equal(
        split_arrays['target'][np.arange(len(lengths)), lengths - 1], 2)
    assert tokenizer.decode(split_arrays['target'][:2]) == list(split_arrays['target_text'][:2])
  with pytest.raises(ValueError, match="pair must be"):
    kdata.make_wmt14_arrays('en-de')


def test_spanish_config_builds_from_real_pairs(tmp_path):
  # The Spanish side of the multilingual sample: real pairs from the same
  # gettext catalogs, in the pairs TSV format the builder reads.
  pairs_file = pathlib.Path(__file__).parent / 'data' / 'multilingual_sample' / 'es.tsv'
  pairs = kdata.read_pairs(pairs_file)
  builder = kdata.GettextTranslation(
      config='es', data_dir=str(tmp_path), pairs_file=pairs_file, vocab_size=400,
      val_fraction=0.25, test_fraction=0.25, min_eval_pairs=10)
  builder.download_and_prepare()
  assert 'Spanish' in builder.info.description
  metadata = kdata.translation_metadata(builder.data_dir)
  assert metadata['lang'] == 'es'
  read = []
  for split in ('train', 'validation', 'test'):
    source = kdata.load_source('gettext_translation/es', split, data_dir=str(tmp_path))
    read += [(source[i]['source_text'].decode(), source[i]['target_text'].decode())
             for i in range(len(source))]
  # Every example is one of the sample's pairs, and none is read twice.
  assert set(read) <= {(p.source, p.target) for p in pairs}
  assert len(read) == len(set(read)) > 0


def test_wmt_spanish_reads_wmt13():
  import tensorflow_datasets.translate.wmt13  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  assert kdata.WMT_DATASETS['es'] == 'wmt13_translate'
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    arrays, _, dropped = kdata.make_wmt14_arrays(
        'es-en', vocab_size=300, max_source_length=16, max_target_length=16)
  assert all(len(a['source']) + dropped[s] == 6 for s, a in arrays.items())
