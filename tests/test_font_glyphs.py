"""The font-glyph image dataset, on the fonts shipped under tests/data/fonts."""

import json
import os
import pathlib

import numpy as np
import pytest

from kdjax import data as kdata
from kdjax.data import _fonts
from kdjax.data import fonts as fonts_main

FONT_DIR = pathlib.Path(__file__).parent / 'data' / 'fonts'
SIZES = {'train': 200, 'validation': 100, 'test': 100}
# The shipped fonts' families, as family_unit names them.
UNITS = {'comic neue', 'karla', 'hermit', 'oxygen'}


@pytest.fixture(scope='module')
def faces():
  faces, report = kdata.collect_faces(kdata.list_font_files(FONT_DIR))
  assert report['dropped'] == {}
  return faces


@pytest.fixture(scope='module')
def build_dir(tmp_path_factory):
  """Built once through the command line entry."""
  out = tmp_path_factory.mktemp('fonts')
  fonts_main.main(['--out', str(out), '--font-dir', str(FONT_DIR), '--seed', '3',
                   '--validation-units', '1', '--test-units', '1',
                   *(f'--{split}={n}' for split, n in SIZES.items())])
  return out


def _split(build_dir, split):
  source = kdata.load_source('font_glyphs', split, data_dir=str(build_dir), download=False)
  rows = [source[i] for i in range(len(source))]
  return source, {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


def test_classes():
  assert len(kdata.FONT_CLASSES) == len(set(kdata.FONT_CLASSES)) == 100
  assert set('09AZaz!~') <= set(kdata.FONT_CLASSES)
  assert all(c.isprintable() and not c.isspace() for c in kdata.FONT_CLASSES)


def test_family_unit_merges_members_and_clones():
  assert {kdata.family_unit(f) for f in ('DejaVu Sans', 'DejaVu Sans Mono', 'DejaVu Serif',
                                         'DejaVu Sans Condensed')} == {'dejavu'}
  assert {kdata.family_unit(f) for f in ('Liberation Sans', 'Arimo', 'Nimbus Sans Narrow',
                                         'FreeSerif', 'Nimbus Mono PS')} == {'liberation'}
  assert kdata.family_unit('Carlito') == kdata.family_unit('Lato') == 'lato'
  assert kdata.family_unit('Linux Libertine O') != kdata.family_unit('Linux Biolinum O')
  assert kdata.family_unit('Sans') == 'sans'  # never empty


def test_collect_faces_reads_families(faces):
  assert [f.name for f in faces] == [
      'ComicNeue-Bold.otf', 'ComicNeue-Regular.otf', 'Hermit-medium.otf', 'Karla-Italic.otf',
      'Karla-Regular.otf', 'OxygenMono-Regular.ttf']
  assert {f.unit for f in faces} == UNITS
  assert {f.family for f in faces if f.unit == 'comic neue'} == {'Comic Neue'}
  assert {f.style for f in faces if f.unit == 'karla'} == {'Regular', 'Italic'}


def test_face_problem_reasons(faces):
  face = faces[0]
  cmap = {ord(c): f'glyph{ord(c)}' for c in kdata.FONT_CLASSES}
  assert kdata.face_problem(face.path, face.family, cmap) is None
  assert kdata.face_problem(face.path, 'Standard Symbols PS', cmap) == 'excluded_family'
  assert kdata.face_problem(face.path, face.family, {**cmap, ord('a'): cmap[ord('A')]}) == (
      'case_shares_glyph')
  del cmap[ord('~')]
  assert kdata.face_problem(face.path, face.family, cmap) == 'missing_glyphs'


def test_split_units_disjoint_stable_and_checked():
  units = [f'family{i}' for i in range(20)]
  splits = kdata.split_units(units, num_validation=3, num_test=5)
  assert [len(splits[s]) for s in ('train', 'validation', 'test')] == [12, 3, 5]
  assert sorted(sum(splits.values(), [])) == sorted(units)
  assert kdata.split_units(units[::-1] + units, num_validation=3, num_test=5) == splits
  with pytest.raises(ValueError, match='leaves no training unit'):
    kdata.split_units(units, num_validation=10, num_test=10)
  with pytest.raises(ValueError, match='num_test'):
    kdata.split_units(units, num_validation=1, num_test=0)


def test_render_is_a_blend_of_two_contrasting_colours(faces):
  """Without noise every pixel is background + alpha (foreground - background)."""
  jitter = kdata.GlyphJitter(noise=0.0)
  luma = np.array([0.299, 0.587, 0.114])
  for seed, char in enumerate('A.g@'):
    image = kdata.render_glyph(faces[seed].path, char, np.random.default_rng(seed), jitter=jitter)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    # The colours are the generator's first draws (render_glyph's documented order).
    foreground, background = _fonts._contrasting_colours(  # pylint: disable=protected-access
        np.random.default_rng(seed), jitter.min_contrast)
    assert abs(luma @ (foreground - background)) >= 255 * jitter.min_contrast
    difference = foreground - background
    alpha = (image - background) @ difference / (difference @ difference)
    np.testing.assert_allclose(background + alpha[..., None] * difference, image, atol=1.0)
    assert alpha.min() > -0.02 and alpha.max() < 1.02
    assert (alpha < 0.02).mean() > 0.3, 'background present'
    assert alpha.max() > 0.75 and np.clip(alpha, 0, 1).sum() > 1.5, f'{char!r}: glyph ink'
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 2


def test_render_is_deterministic_and_seed_dependent(faces):
  path = faces[0].path
  first = kdata.render_glyph(path, 'Q', np.random.default_rng(7))
  np.testing.assert_array_equal(first, kdata.render_glyph(path, 'Q', np.random.default_rng(7)))
  assert not np.array_equal(first, kdata.render_glyph(path, 'Q', np.random.default_rng(8)))
  assert first.std() > 0


def test_build_shapes_labels_and_families(build_dir, faces):
  metadata = kdata.font_glyphs_metadata(
      kdata.load_source('font_glyphs', 'train', data_dir=str(build_dir)))
  assert metadata['classes'] == kdata.FONT_CLASSES and metadata['seed'] == 3
  families = {}
  for split, n in SIZES.items():
    source, arrays = _split(build_dir, split)
    assert len(source) == n
    assert arrays['image'].shape == (n, 32, 32, 3) and arrays['image'].dtype == np.uint8
    np.testing.assert_array_equal(arrays['label'], np.arange(n) % 100)  # balanced classes
    families[split] = {f.decode() for f in arrays['family']}
    report = metadata['splits'][split]
    assert set(report['units']) == families[split]
    assert {f.decode() for f in arrays['font']} <= {f['name'] for f in report['faces']}
    assert report['image_sha256'] == _fonts.array_digest(arrays['image'])
  assert len(families['validation']) == len(families['test']) == 1
  assert families['train'] | families['validation'] | families['test'] == UNITS
  assert not families['train'] & (families['validation'] | families['test'])
  assert not families['validation'] & families['test']
  # Every face of a family is in its family's split (Bold never straddles).
  for split, report in metadata['splits'].items():
    names = {f['name'] for f in report['faces']}
    assert names == {f.name for f in faces if f.unit in families[split]}


def test_loader_scales_images(build_dir):
  source = kdata.load_source('font_glyphs', 'validation', data_dir=str(build_dir))
  batch = next(kdata.make_loader(source, batch_size=8, seed=0))
  assert set(batch) == {'x', 'label'}
  assert batch['x'].shape == (8, 32, 32, 3) and batch['x'].dtype == np.float32
  assert 0.0 <= batch['x'].min() and batch['x'].max() <= 1.0
  assert kdata.num_classes(source) == 100


def test_rebuild_gives_the_same_bytes(build_dir, faces, tmp_path):
  """The same seed renders the same images; another seed other images on the same fonts."""
  builder = kdata.FontGlyphs(data_dir=str(tmp_path), font_dir=FONT_DIR, seed=3, sizes=SIZES,
                             num_validation_units=1, num_test_units=1)
  builder.download_and_prepare()
  again = kdata.font_glyphs_metadata(builder.data_dir)
  first = kdata.font_glyphs_metadata(
      os.path.join(build_dir, 'font_glyphs', str(builder.version)))
  assert json.dumps(again['splits'], sort_keys=True) == json.dumps(first['splits'], sort_keys=True)
  for split in SIZES:
    np.testing.assert_array_equal(_split(tmp_path, split)[1]['image'],
                                  _split(build_dir, split)[1]['image'])
  units = kdata.split_units([f.unit for f in faces], num_validation=1, num_test=1)
  other = kdata.make_font_arrays(faces, units, {'train': 20, 'validation': 1, 'test': 1}, seed=4)
  assert not np.array_equal(other['train']['image'], _split(build_dir, 'train')[1]['image'][:20])


def test_bad_arguments_raise(faces, tmp_path):
  with pytest.raises(ValueError, match='sizes'):
    kdata.FontGlyphs(data_dir=str(tmp_path), font_dir=FONT_DIR, sizes={'train': 10})
  with pytest.raises(ValueError, match='no unit'):
    kdata.make_font_arrays(faces, {'train': ['karla'], 'validation': [], 'test': ['hermit']},
                           {'train': 1, 'validation': 1, 'test': 1}, seed=0)
  with pytest.raises(ValueError, match='no face'):
    kdata.make_font_arrays(faces, {'train': ['nope'], 'validation': [], 'test': []},
                           {'train': 1, 'validation': 1, 'test': 1}, seed=0)
