"""Tests for the Debian Section task and the prose shards: parsing, splits, builder, prose."""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import random

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax import data as kdata
from kdjax.data import _debian_text
from kdjax.data import debian_text

SAMPLE = pathlib.Path(__file__).parent / 'data' / 'debian_sections_sample.jsonl'
# Three paragraphs of each prose source, from a real build's shards.
PROSE_SAMPLE = pathlib.Path(__file__).parent / 'data' / 'debian_prose_sample.txt'
# The sample's ~200 source packages need larger held-out shares than the real lists' 30,000.
SPLIT_OPTIONS = dict(per_class=20, val_fraction=0.2, test_fraction=0.2)

PACKAGES = """\
Package: foo-utils
Source: foo (1.2-3)
Version: 1.2-3
Section: contrib/utils
Description-md5: aaaa

Package: libfoo1
Source: foo
Section: libs
Description: shared library of foo
 Foo's library keeps its long text here.
 .
 Second paragraph.
Description-md5: bbbb

Package: bar
Section: non-free/games
Description-md5: cccc

Package: foo-utils
Source: foo
Section: utils
Description-md5: aaaa

Package: nodesc
Section: net
Description-md5: dddd
"""

TRANSLATION = """\
Package: foo-utils
Description-md5: aaaa
Description-en: tools for foo
 The foo tools convert files.
 .
  * an indented list item
 .
 They are fast.

Package: bar
Description-md5: cccc
Description-en: a game
 Bar is a game about bars.
"""


@pytest.fixture(scope='module')
def sample():
  return kdata.read_descriptions(SAMPLE)


# ----------------------------------------------------------------- parsing


def test_parse_deb822_fields_and_continuations():
  paragraphs = kdata.parse_deb822(TRANSLATION)
  assert [p['Package'] for p in paragraphs] == ['foo-utils', 'bar']
  assert paragraphs[0]['Description-en'].split('\n') == [
      'tools for foo', ' The foo tools convert files.', ' .', '  * an indented list item', ' .',
      ' They are fast.']
  assert kdata.long_description(paragraphs[0]['Description-en']) == (
      'The foo tools convert files.\n\n * an indented list item\n\nThey are fast.')
  with pytest.raises(ValueError, match='continuation line before any field'):
    kdata.parse_deb822(' orphan\n')
  with pytest.raises(ValueError, match='neither a field'):
    kdata.parse_deb822('Package: x\nno colon here\n')


def test_join_descriptions_by_md5_with_sections_and_sources():
  joined = kdata.join_descriptions(kdata.parse_deb822(PACKAGES), kdata.parse_deb822(TRANSLATION))
  assert joined == [
      kdata.PackageDescription('bar', 'bar', 'games', 'Bar is a game about bars.'),
      kdata.PackageDescription(
          'foo-utils', 'foo', 'utils',
          'The foo tools convert files.\n\n * an indented list item\n\nThey are fast.'),
      kdata.PackageDescription(
          'libfoo1', 'foo', 'libs', "Foo's library keeps its long text here.\n\nSecond paragraph."),
  ]  # nodesc has no translation: skipped; the second foo-utils paragraph: a repeat.


# ------------------------------------------------------------------ splits


def test_splits_never_straddle_are_balanced_and_labelled(sample):
  splits, report = kdata.make_section_splits(sample, **SPLIT_OPTIONS)
  assert report['per_class'] == {'train': 12, 'validation': 4, 'test': 4}
  sources = {split: {d.source for d in items} for split, items in splits.items()}
  assert not sources['train'] & sources['validation']
  assert not sources['train'] & sources['test']
  assert not sources['validation'] & sources['test']
  for split, items in splits.items():
    counts = collections.Counter(d.section for d in items)
    assert counts == {s: report['per_class'][split] for s in kdata.DEBIAN_SECTIONS}
    for d in items:  # each split is the hash's split of the source, independent of the rest
      assert kdata.split_of_source(d.source, val_fraction=0.2, test_fraction=0.2) == split
  texts = [' '.join(d.text.split()) for items in splits.values() for d in items]
  assert len(texts) == len(set(texts))


def test_splits_are_deterministic_and_deduplicated(sample):
  splits, _ = kdata.make_section_splits(sample, **SPLIT_OPTIONS)
  shuffled = list(sample)
  random.Random(0).shuffle(shuffled)
  # A copy of a taken description under a later package name and another source: a repeat.
  taken = splits['train'][0]
  copy = dataclasses.replace(taken, package='zzz-copy', source='zzz-copy', text=taken.text + ' ')
  again, _ = kdata.make_section_splits(shuffled + [copy], **SPLIT_OPTIONS)
  assert again == splits
  assert kdata.deduplicate([taken, copy]) == [taken]


def test_split_options_are_checked(sample):
  with pytest.raises(ValueError, match='at least 2 distinct'):
    kdata.make_section_splits(sample, sections=('libs', 'libs'))
  with pytest.raises(ValueError, match='val_fraction'):
    kdata.make_section_splits(sample, val_fraction=0.6, test_fraction=0.5)
  with pytest.raises(ValueError, match='no example of some Section'):
    kdata.make_section_splits(sample, sections=('libs', 'no-such-section'))


# ----------------------------------------------------------------- builder


def test_builder_on_the_sample_reads_back(sample, tmp_path):
  builder = kdata.DebianSections(data_dir=str(tmp_path), descriptions_file=SAMPLE, **SPLIT_OPTIONS)
  builder.download_and_prepare()
  splits, _ = kdata.make_section_splits(sample, **SPLIT_OPTIONS)
  for split, items in splits.items():
    source = kdata.load_source('debian_sections', split, data_dir=str(tmp_path), download=False)
    rows = [source[i] for i in range(len(source))]
    assert [(r['text'].decode(), int(r['label']), r['source'].decode()) for r in rows] == [
        (d.text, kdata.DEBIAN_SECTIONS.index(d.section), d.source) for d in items]
  assert kdata.num_classes(source) == len(kdata.DEBIAN_SECTIONS)


def test_command_line_builds_task_and_prose_from_the_sample(tmp_path):
  report = debian_text.main([
      '--out', str(tmp_path), '--descriptions', str(SAMPLE), '--per-class', '20',
      '--val-fraction', '0.2', '--test-fraction', '0.2', '--prose', '--prose-sources', 'debian',
      '--max-prose-mb', '0.01'])
  assert report['sections']['examples'] == {'train': 120, 'validation': 40, 'test': 40}
  assert 0 < report['prose']['debian']['bytes'] <= 10_000
  assert kdata.read_text_shards(tmp_path / 'debian_prose')


# ------------------------------------------------------------------- prose


def test_paragraph_rules():
  assert _debian_text.fortune_paragraphs('One fortune\n  here.\n%\nTwo.\n%\n') == [
      'One fortune here.', 'Two.']
  assert _debian_text.text_blocks('NAME\n   ls - list\n\n  Two  lines\n of text.\n') == [
      'NAME ls - list', 'Two lines of text.']
  assert kdata.keep_paragraph('This paragraph is made of plain English words.')
  kept, read = _debian_text.clean_paragraphs(
      [['Call it from a program like this::', 'Too short.'],
       ['Call it from a  program\nlike this::', 'A second document of six words.']],
      max_bytes=1000, seen=set())
  assert kept == ['Call it from a program like this:', 'A second document of six words.']
  assert read == 2
  assert not kdata.keep_paragraph('Too short to keep.')
  assert not kdata.keep_paragraph('-a, --all do not ignore entries starting with')
  assert not kdata.keep_paragraph('0x00 0x01 0x02 0x03 0x04 0x05 0x06 0x07.')


def test_html_paragraphs_keep_paragraph_text_only():
  page = (
      '<html><head><title>Manual</title><style>p {}</style></head><body>'
      '<div class="nav"><a href="x.html">Next</a></div><h1>Heading</h1>'
      '<p>The <code>ls</code> command\n   lists &amp; sorts files.</p>'
      '<pre>$ ls -l\n<p>not prose</p></pre>'
      '<div class="para">DocBook wraps <div class="note">nested</div> paragraphs in divs.</div>'
      '<table><tr><td><p>A cell is not prose.</p></td></tr></table>'
      '<p>An unclosed paragraph<p>ends where the next one starts.</p>'
      '<ul><li>List item without a paragraph.</li></ul><p></p></body></html>')
  assert _debian_text.html_paragraphs(page) == [
      'The ls command lists & sorts files.',
      'DocBook wraps nested paragraphs in divs.',
      'An unclosed paragraph',
      'ends where the next one starts.']


def test_info_paragraphs_skip_headers_menus_and_tables():
  info = ('This is demo.info, produced by makeinfo.\n\nINFO-DIR-SECTION Demo\n'
          '\x1f\nFile: demo.info,  Node: Top,  Next: Use,  Up: (dir)\n\n'
          'Demo\n****\n\nThis manual describes\nthe demo program.\n\n'
          '* Menu:\n\n* Use::      How to use it.\n\n'
          '\x1f\nFile: demo.info,  Node: Use,  Prev: Top,  Up: Top\n\n'
          '1 Use\n=====\n\nRun it twice.  *Note Top::.\n'
          '\x1f\nTag Table:\nNode: Top\x7f92\nNode: Use\x7f250\n\x1f\nEnd Tag Table\n')
  assert _debian_text.info_paragraphs(info) == [
      'Demo ****', 'This manual describes the demo program.', '1 Use =====',
      'Run it twice. *Note Top::.']
  assert not kdata.keep_paragraph('Demo ****')


def test_prose_sources_have_caps_and_packages():
  assert set(_debian_text.DEFAULT_PROSE_CAPS) == set(_debian_text.PROSE_SOURCES)
  assert 'html_doc' in _debian_text.PROSE_SOURCES and 'info_doc' in _debian_text.PROSE_SOURCES
  # Every HTML manual is read through a glob inside its own package.
  assert all(not pattern.startswith('/') and pattern.endswith('.html')
             for pattern in _debian_text.HTML_DOC_GLOBS.values())


def test_text_shards_round_trip_the_prose_sample(tmp_path):
  paragraphs = PROSE_SAMPLE.read_text(encoding='utf-8').splitlines()
  assert len(paragraphs) == 3 * len(_debian_text.PROSE_SOURCES)
  assert all(kdata.keep_paragraph(p) for p in paragraphs)
  shards = _debian_text.write_text_shards(tmp_path, paragraphs, prefix='prose', shard_bytes=500)
  assert len(shards) > 1 and sum(s['paragraphs'] for s in shards) == len(paragraphs)
  assert all(s['bytes'] == (tmp_path / s['file']).stat().st_size for s in shards)
  _debian_text._builder.write_json(tmp_path / 'manifest.json', {'prose': shards, 'transfer': []})
  assert kdata.read_text_shards(tmp_path) == paragraphs
  assert kdata.read_text_shards(tmp_path, kind='transfer') == []


def test_prose_shards_exclude_held_out_sources(sample, tmp_path):
  options = dict(val_fraction=0.2, test_fraction=0.2)
  manifest = kdata.write_prose_shards(
      tmp_path, sample, cache_dir=tmp_path / 'cache', apt_options=(), sources=('debian',),
      caps={'debian': 20_000}, **options)
  prose = kdata.read_text_shards(tmp_path)
  transfer = kdata.read_text_shards(tmp_path, kind='transfer')
  assert len(prose) == len(set(prose)) == manifest['sources']['debian']['paragraphs'] > 10
  assert sum(len(p.encode()) + 1 for p in prose) <= 20_000
  assert sum(s['bytes'] for s in manifest['prose']) == manifest['sources']['debian']['bytes']
  by_split = collections.defaultdict(set)
  for d in sample:
    split = kdata.split_of_source(d.source, **options)
    by_split[split].update(' '.join(p.split()) for p in _debian_text._sentences.rst_paragraphs(d.text))
  held_out_only = (by_split['validation'] | by_split['test']) - by_split['train']
  assert prose and not set(prose) & held_out_only
  assert transfer and set(transfer) <= by_split['train'] and not set(transfer) & held_out_only
  with pytest.raises(ValueError, match='sources'):
    kdata.write_prose_shards(tmp_path, sample, cache_dir=tmp_path, apt_options=(),
                             sources=('wikipedia',))


# ------------------------------------------------------------ with network


def test_glue_path_reads_mock_data():
  import tensorflow_datasets.text.glue  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    arrays = kdata.make_glue_arrays('sst2', download=False)
  assert set(arrays) == {'train', 'validation', 'test'}
  assert arrays['train']['text'].shape == (6,) and arrays['train']['label'].dtype == np.int64
  with pytest.raises(ValueError, match='one-sentence'):
    kdata.make_glue_arrays('mnli')
