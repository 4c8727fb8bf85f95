"""100-class glyph images rendered from the fonts of Debian's font packages, split by family.

The pipeline, each step a function:

1. :func:`fetch_fonts`: ``apt-get download`` the packages into a cache and
   unpack them with ``dpkg-deb -x`` (:func:`kdjax.data._debian.fetch_packages`),
   then list their ``.ttf`` / ``.otf`` files under ``usr/share/fonts``.
2. :func:`collect_faces`: read each file's family name and character map
   with fontTools and keep the faces that can draw every class of
   :data:`FONT_CLASSES` (:func:`face_problem` says why a face is dropped).
3. :func:`family_unit`: the families that must never straddle two splits
   (every weight and style of a family; Sans/Serif/Mono of one superfamily;
   known clones such as Liberation and Nimbus) get one unit name.
4. :func:`split_units`: whole units go to test, validation or train.
5. :func:`render_glyph`: one 32x32 RGB image of one class in one face, with
   random colours, an affine jitter and noise, all drawn from a generator
   seeded by ``(seed, split, index)``, so an image depends on nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import functools
import glob
import hashlib
import json
import math
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from kdjax.data import _builder
from kdjax.data import _debian
from kdjax.data import _text
from kdjax.data import _translation

#: The 100 classes, label ``k`` is ``FONT_CLASSES[k]``: the 94 printable
#: ASCII characters (``!`` to ``~``: punctuation, digits, upper and lower
#: case Latin letters) and six Latin-1 signs found in nearly every Latin
#: font (sharp s, inverted question mark, pilcrow, copyright, pound,
#: section).
FONT_CLASSES = ''.join(chr(c) for c in range(33, 127)) + '\u00df\u00bf\u00b6\u00a9\u00a3\u00a7'
FONT_SPLITS = ('train', 'validation', 'test')
IMAGE_SIZE = 32
#: Rendering is done this many times larger, then box-filtered down.
SUPERSAMPLE = 4
#: A capital H's ink height, as a fraction of the image side, before jitter.
CAP_HEIGHT = 0.45

#: Debian 12 packages of Latin text fonts (serif, sans, monospace, a few
#: handwriting and display faces) whose faces pass :func:`face_problem`:
#: every package of a wider candidate list that kept at least one face (see
#: docs/data.md), less fonts-aenigma (465 decorative display faces: 3-D,
#: shadowed, stencilled, splattered letters that would swamp the rest).
DEFAULT_PACKAGES = (
    'fonts-adf-accanthis', 'fonts-adf-baskervald', 'fonts-adf-berenis', 'fonts-adf-gillius',
    'fonts-adf-ikarius', 'fonts-adf-irianis', 'fonts-adf-libris', 'fonts-adf-mekanus',
    'fonts-adf-oldania', 'fonts-adf-romande', 'fonts-adf-switzera', 'fonts-adf-tribun',
    'fonts-adf-universalis', 'fonts-adf-verana', 'fonts-agave', 'fonts-anonymous-pro',
    'fonts-arapey', 'fonts-averia-gwf', 'fonts-averia-sans-gwf', 'fonts-averia-serif-gwf',
    'fonts-b612', 'fonts-breip', 'fonts-cabin', 'fonts-cantarell', 'fonts-cardo',
    'fonts-century-catalogue', 'fonts-cherrybomb', 'fonts-clear-sans', 'fonts-cmu',
    'fonts-comfortaa', 'fonts-comic-neue', 'fonts-courier-prime', 'fonts-croscore',
    'fonts-crosextra-caladea', 'fonts-crosextra-carlito', 'fonts-dancingscript',
    'fonts-dejavu-core', 'fonts-dejavu-extra', 'fonts-dosis', 'fonts-dustin',
    'fonts-ebgaramond', 'fonts-elstob', 'fonts-engadget', 'fonts-eurofurence',
    'fonts-fantasque-sans', 'fonts-fanwood', 'fonts-femkeklaver', 'fonts-firacode',
    'fonts-freefont-ttf', 'fonts-georgewilliams', 'fonts-gfs-neohellenic', 'fonts-go',
    'fonts-hack', 'fonts-hermit', 'fonts-inconsolata', 'fonts-inter', 'fonts-isabella',
    'fonts-jetbrains-mono', 'fonts-jura', 'fonts-karla', 'fonts-kaushanscript', 'fonts-klee',
    'fonts-kristi', 'fonts-lato', 'fonts-league-mono', 'fonts-league-spartan',
    'fonts-leckerli-one', 'fonts-levien-museum', 'fonts-liberation2', 'fonts-lindenhill',
    'fonts-linuxlibertine', 'fonts-lobster', 'fonts-manrope', 'fonts-millimetre',
    'fonts-monofur', 'fonts-mononoki', 'fonts-mph-2b-damase', 'fonts-noto-mono',
    'fonts-okolaks', 'fonts-oldstandard', 'fonts-open-sans', 'fonts-opendyslexic',
    'fonts-osifont', 'fonts-oxygen', 'fonts-paratype', 'fonts-play', 'fonts-prociono',
    'fonts-quattrocento', 'fonts-quicksand', 'fonts-roboto-slab', 'fonts-roboto-unhinted',
    'fonts-routed-gothic', 'fonts-sil-andika', 'fonts-sil-charis', 'fonts-sil-doulos',
    'fonts-sil-gentium', 'fonts-sjfonts', 'fonts-sora', 'fonts-staypuft', 'fonts-stix',
    'fonts-tiresias', 'fonts-tuffy', 'fonts-urw-base35', 'fonts-vollkorn',
    'fonts-yanone-kaffeesatz',
)

# Words that name a member of a superfamily (width, weight, style, genre,
# optical size, vendor tags), dropped from a family name to get its unit.
_MEMBER_WORDS = frozenset(
    'sans serif mono monospace roman slab condensed semicondensed narrow wide extended light '
    'thin medium demi semibold bold black heavy book display text caption extra classic code '
    'minus std pro no2 no3 style script titling alta o g tt gwf adf ps upright italic oblique '
    'half variable width lpfont'.split())
# Families whose names differ but whose designs are one (metric clones and
# derivatives): each maps to the unit of its original.
_SAME_DESIGN = {
    'arimo': 'liberation', 'tinos': 'liberation', 'cousine': 'liberation',
    'nimbus': 'liberation',  # Helvetica/Times/Courier clones, as Liberation's metrics
    'freesans': 'liberation', 'freeserif': 'liberation', 'freemono': 'liberation',  # from Nimbus
    'carlito': 'lato',  # Carlito is Lato with Calibri's metrics
    'open': 'noto', 'droid': 'noto',  # Noto Sans grew from Open Sans / Droid Sans
    'opendyslexicalta': 'opendyslexic', 'opendyslexicmono': 'opendyslexic',
    'gentiumalt': 'gentium', 'stixgeneral': 'stix', 'unifur': 'eurofurence',
    'dejavu math tex gyre': 'dejavu',
    'cmu bright': 'cmu', 'cmu classical': 'cmu', 'cmu concrete': 'cmu',  # Computer Modern
    'cmu typewriter': 'cmu',
}
# Faces whose glyphs for our classes are not letters and digits (symbol
# encodings, dingbats) or whose lower case is a small copy of the upper.
_EXCLUDED_FAMILY = re.compile(r'symbol|dingbat|math|d050000l|small ?caps|titling', re.IGNORECASE)


def family_unit(family: str) -> str:
  """The split unit of a font family: its superfamily, clones merged.

  Lower-cased, punctuation to spaces, member words (Sans, Serif, Mono,
  Condensed, Light, Std, ...) dropped, then known clones mapped to their
  original (Arimo, Nimbus, FreeSans -> liberation; Carlito -> lato).

  Args:
    family: a typographic family name, e.g. 'DejaVu Sans Mono'.

  Returns:
    The unit name, e.g. 'dejavu'.

  Examples:
    >>> family_unit('DejaVu Sans Mono'), family_unit('Nimbus Sans Narrow')
    ('dejavu', 'liberation')
  """
  words = re.sub(r'[^0-9a-z]+', ' ', family.lower()).split()
  kept = [w for w in words if w not in _MEMBER_WORDS] or words[:1]
  unit = ' '.join(kept)
  return _SAME_DESIGN.get(unit, unit)


@dataclasses.dataclass(frozen=True, order=True)
class FontFace:
  """One font file: its name in the dataset, path, family and split unit."""

  name: str  # '<package>/<path under the package>' or the file's path under a font dir
  path: str
  family: str
  style: str
  unit: str


# ------------------------------------------------------------------ fetching


def list_font_files(root: str | os.PathLike[str]) -> dict[str, str]:
  """``{name: path}`` of the ``.ttf`` / ``.otf`` files under `root`, names relative to it."""
  root = os.fspath(root)
  files = {}
  for path in sorted(glob.glob(os.path.join(root, '**', '*'), recursive=True)):
    if path.lower().endswith(('.ttf', '.otf')) and os.path.isfile(path):
      files[os.path.relpath(path, root)] = path
  return files


def fetch_fonts(
    *,
    cache_dir: str | os.PathLike[str],
    packages: Sequence[str] = DEFAULT_PACKAGES,
) -> tuple[dict[str, str], dict[str, str]]:
  """Downloads and unpacks font packages; lists their font files.

  Args:
    cache_dir: where the packages are downloaded and extracted (see
      :func:`kdjax.data._debian.fetch_packages`).
    packages: Debian package names.

  Returns:
    ``({'<package>/usr/share/fonts/...': path}, {package: version})``.
  """
  files, versions = {}, {}
  for package, (version, root) in _debian.fetch_packages(packages, cache_dir=cache_dir).items():
    versions[package] = version
    for name, path in list_font_files(os.path.join(root, 'usr', 'share', 'fonts')).items():
      files[f'{package}/usr/share/fonts/{name}'] = path
  return files, versions


# ------------------------------------------------------------------- faces


def _image_font(path: str, size: int) -> Any:
  image_font = _builder.import_optional('PIL.ImageFont', needed_for='Font glyphs', package='pillow')
  return image_font.truetype(path, size)


def _ink_bbox(font: Any, char: str) -> tuple[int, int, int, int] | None:
  """The ink bounding box of `char` drawn at the origin, or None if it draws nothing."""
  return font.getmask(char).getbbox()


def face_problem(path: str, family: str, cmap: Mapping[int, str]) -> str | None:
  """Why a face cannot be used, or None.

  Reasons: ``'excluded_family'`` (symbol, dingbat, math, small-caps and
  titling families), ``'missing_glyphs'`` (a class not in the character
  map), ``'case_shares_glyph'`` (a lower-case letter mapped to the
  upper-case glyph), ``'empty_glyph'`` (a class that draws no ink at 32
  px, Pillow's ``getmask().getbbox()``), ``'case_draws_same'`` (a lower-case
  letter drawn exactly like its capital).

  Args:
    path: the font file.
    family: its family name.
    cmap: its best character map, code point -> glyph name.
  """
  if _EXCLUDED_FAMILY.search(family):
    return 'excluded_family'
  if any(ord(c) not in cmap for c in FONT_CLASSES):
    return 'missing_glyphs'
  letters = [c for c in FONT_CLASSES if c.islower() and c.isascii()]
  if any(cmap[ord(c)] == cmap[ord(c.upper())] for c in letters):
    return 'case_shares_glyph'
  font = _image_font(path, 32)
  if any(_ink_bbox(font, c) is None for c in FONT_CLASSES):
    return 'empty_glyph'
  if any(bytes(font.getmask(c)) == bytes(font.getmask(c.upper())) for c in letters):
    return 'case_draws_same'
  return None


def collect_faces(font_files: Mapping[str, str]) -> tuple[list[FontFace], dict[str, Any]]:
  """Reads the font files and keeps the faces that draw every class.

  The family is the typographic family name (OpenType name 16) or else the
  family name (name 1); the style likewise (17, else 2).

  Args:
    font_files: ``{name: path}``, as from :func:`fetch_fonts` or
      :func:`list_font_files`.

  Returns:
    ``(faces, report)``: the usable faces sorted by name, and
    ``{'dropped': {name: reason}}`` for the others (:func:`face_problem`'s
    reasons, or ``'unreadable: <error>'``).
  """
  tt_lib = _builder.import_optional('fontTools.ttLib', needed_for='Font glyphs', package='fonttools')
  faces, dropped = [], {}
  for name in sorted(font_files):
    path = font_files[name]
    try:
      with tt_lib.TTFont(path, lazy=True) as font:
        names = font['name']
        family = names.getDebugName(16) or names.getDebugName(1) or ''
        style = names.getDebugName(17) or names.getDebugName(2) or ''
        cmap = dict(font.getBestCmap() or {})
    except Exception as e:  # pylint: disable=broad-except
      dropped[name] = f'unreadable: {type(e).__name__}: {e}'
      continue
    problem = face_problem(path, family, cmap)
    if problem is None:
      faces.append(FontFace(name=name, path=path, family=family, style=style,
                            unit=family_unit(family)))
    else:
      dropped[name] = problem
  return faces, {'dropped': dropped}


def split_units(
    units: Sequence[str], *, num_validation: int, num_test: int,
) -> dict[str, list[str]]:
  """Assigns whole units to splits in a stable hash order.

  Units are visited in the order of ``crc32(unit)``; the first `num_test`
  go to test, the next `num_validation` to validation, the rest to train.

  Args:
    units: unit names (duplicates are counted once).
    num_validation: units in validation (>= 1).
    num_test: units in test (>= 1).

  Returns:
    ``{'train' | 'validation' | 'test': [units, sorted]}``.

  Raises:
    ValueError: if train would get no unit.
  """
  ordered = sorted(set(units), key=lambda u: (_text.unit_hash(u), u))
  for name, value in (('num_validation', num_validation), ('num_test', num_test)):
    if value < 1:
      raise ValueError(f'{name} must be >= 1, got {value}')
  if num_validation + num_test >= len(ordered):
    raise ValueError(
        f'num_validation + num_test = {num_validation} + {num_test} leaves no training '
        f'unit of the {len(ordered)} font families')
  return {
      'test': sorted(ordered[:num_test]),
      'validation': sorted(ordered[num_test:num_test + num_validation]),
      'train': sorted(ordered[num_test + num_validation:]),
  }


# --------------------------------------------------------------- rendering


@dataclasses.dataclass(frozen=True)
class GlyphJitter:
  """The random variation of a rendered glyph; each draw is uniform in its range.

  Attributes:
    rotation: largest rotation, degrees, either way.
    scale: (smallest, largest) scale of the glyph.
    shear: largest horizontal shear (the tangent of the angle), either way.
    translation: largest shift, a fraction of the image side, each axis.
    noise: largest standard deviation of the Gaussian pixel noise, a
      fraction of 255; each image draws its own in [0, noise].
    min_contrast: smallest difference of luma (0.299 R + 0.587 G + 0.114 B,
      a fraction of 255) between foreground and background colours.
  """

  rotation: float = 15.0
  scale: tuple[float, float] = (0.8, 1.2)
  shear: float = 0.25
  translation: float = 0.1
  noise: float = 0.1
  min_contrast: float = 0.3


@functools.lru_cache(maxsize=1024)
def _sized_font(path: str) -> Any:
  """The face at the size where a capital H is CAP_HEIGHT of the supersampled image."""
  reference = 100
  top, bottom = _ink_bbox(_image_font(path, reference), 'H')[1::2]
  target = CAP_HEIGHT * IMAGE_SIZE * SUPERSAMPLE
  return _image_font(path, max(1, round(reference * target / (bottom - top))))


def _glyph_alpha(path: str, char: str) -> np.ndarray:
  """An 8-bit (mode L) image of `char`'s coverage, 2s x 2s with s the supersampled side.

  The ink is centred horizontally; the baseline sits CAP_HEIGHT / 2 below
  the centre, so a capital H is centred and lower case keeps its height
  and its place on the baseline.
  """
  image = _builder.import_optional('PIL.Image', needed_for='Font glyphs', package='pillow')
  image_draw = _builder.import_optional('PIL.ImageDraw', needed_for='Font glyphs', package='pillow')
  font = _sized_font(path)
  side = IMAGE_SIZE * SUPERSAMPLE
  canvas = image.new('L', (2 * side, 2 * side), 0)
  left, _, right, _ = font.getbbox(char, anchor='ls')
  baseline = side + 0.5 * CAP_HEIGHT * side
  image_draw.Draw(canvas).text((side - 0.5 * (left + right), baseline), char, fill=255,
                               font=font, anchor='ls')
  return canvas


def _contrasting_colours(rng: np.random.Generator, min_contrast: float) -> tuple[np.ndarray, np.ndarray]:
  luma = np.array([0.299, 0.587, 0.114])
  while True:
    foreground, background = rng.uniform(0.0, 255.0, size=(2, 3))
    if abs(luma @ (foreground - background)) >= 255.0 * min_contrast:
      return foreground, background


def render_glyph(
    path: str, char: str, rng: np.random.Generator, *, jitter: GlyphJitter = GlyphJitter(),
) -> np.ndarray:
  """One image of `char` in the face at `path`, randomised by `rng`.

  The glyph is drawn at SUPERSAMPLE times the size (a capital H
  CAP_HEIGHT of the side high), mapped by a random affine (rotation,
  scale, shear, translation about the centre; bilinear), box-filtered to
  IMAGE_SIZE, used as the alpha of a random foreground colour over a
  random background colour (their luma at least `min_contrast` apart), and
  Gaussian noise is added. Draws from `rng`, in order: colours (rejection
  sampling), rotation, scale, shear, translation, noise level, noise.

  Args:
    path: a font file.
    char: one character.
    rng: the image's random generator.
    jitter: the ranges of the random variation.

  Returns:
    uint8 ``[IMAGE_SIZE, IMAGE_SIZE, 3]``.
  """
  image = _builder.import_optional('PIL.Image', needed_for='Font glyphs', package='pillow')
  foreground, background = _contrasting_colours(rng, jitter.min_contrast)
  angle = math.radians(rng.uniform(-jitter.rotation, jitter.rotation))
  scale = rng.uniform(*jitter.scale)
  shear = rng.uniform(-jitter.shear, jitter.shear)
  side = IMAGE_SIZE * SUPERSAMPLE
  shift = rng.uniform(-jitter.translation, jitter.translation, size=2) * side
  # Output pixel p (about the output's centre) reads input A^-1 (p - shift),
  # about the input canvas's centre, with A = rotation @ shear * scale.
  forward = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
  forward = forward @ np.array([[1.0, shear], [0.0, 1.0]]) * scale
  inverse = np.linalg.inv(forward)
  offset = np.array([side, side]) - inverse @ (np.array([side / 2, side / 2]) + shift)
  coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
  alpha = _glyph_alpha(path, char).transform(
      (side, side), image.Transform.AFFINE, coefficients, resample=image.Resampling.BILINEAR)
  alpha = alpha.resize((IMAGE_SIZE, IMAGE_SIZE), image.Resampling.BOX)
  alpha = np.asarray(alpha, np.float64)[..., None] / 255.0
  noise_level = rng.uniform(0.0, jitter.noise) * 255.0
  pixels = background + alpha * (foreground - background)
  pixels = pixels + rng.normal(0.0, 1.0, size=pixels.shape) * noise_level
  return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def make_font_arrays(
    faces: Sequence[FontFace],
    units: Mapping[str, Sequence[str]],
    sizes: Mapping[str, int],
    *,
    seed: int,
    jitter: GlyphJitter = GlyphJitter(),
) -> dict[str, dict[str, np.ndarray]]:
  """Renders every split's images.

  Example ``i`` of a split has label ``i % 100`` (classes balanced), unit
  number ``(i // 100) % len(units)`` of the split's units in a seeded
  order (units balanced), and a face of that unit drawn uniformly; its
  generator is ``numpy.random.default_rng((seed, split number, i))``, so
  an image depends only on the seed, its split, its index and its face.

  Args:
    faces: the usable faces (:func:`collect_faces`).
    units: ``{split: [units]}`` (:func:`split_units`).
    sizes: ``{split: number of images}``.
    seed: the rendering seed.
    jitter: the random variation.

  Returns:
    ``{split: {'image': uint8 [n, 32, 32, 3], 'label': int64 [n],
    'face': int64 [n] (row of `faces`)}}``.
  """
  face_rows = {}
  for row, face in enumerate(faces):
    face_rows.setdefault(face.unit, []).append(row)
  arrays = {}
  for number, split in enumerate(FONT_SPLITS):
    split_units_ = sorted(units[split])
    if not split_units_:
      raise ValueError(f'units: {split} has no unit for its {sizes[split]} images')
    missing = [u for u in split_units_ if u not in face_rows]
    if missing:
      raise ValueError(f'units: {split} names units with no face: {missing}')
    order = np.random.default_rng((seed, number)).permutation(len(split_units_))
    n = sizes[split]
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.arange(n, dtype=np.int64) % len(FONT_CLASSES)
    rows = np.empty(n, np.int64)
    for i in range(n):
      rng = np.random.default_rng((seed, number, i))
      members = face_rows[split_units_[order[(i // len(FONT_CLASSES)) % len(order)]]]
      rows[i] = members[rng.integers(len(members))]
      images[i] = render_glyph(faces[rows[i]].path, FONT_CLASSES[labels[i]], rng, jitter=jitter)
    arrays[split] = {'image': images, 'label': labels, 'face': rows}
  return arrays


def array_digest(array: np.ndarray) -> str:
  """The SHA-256 of an array's dtype, shape and bytes (for the build's metadata)."""
  digest = hashlib.sha256(f'{array.dtype.str}{array.shape}'.encode())
  digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


# ------------------------------------------------------------------ builder

METADATA_FILE = 'font_glyphs_metadata.json'
#: Images per split of the default build.
DEFAULT_SIZES = {'train': 50_000, 'validation': 5_000, 'test': 10_000}
#: Font-family units held out for validation and test in the default build.
DEFAULT_VALIDATION_UNITS = 15
DEFAULT_TEST_UNITS = 25

_DESCRIPTION = """\
32x32 RGB images of 100 glyph classes (the 94 printable ASCII characters and
six Latin-1 signs) rendered with Pillow from the fonts of Debian 12's font
packages: random foreground and background colours, a random affine jitter
(rotation, scale, shear, translation) and Gaussian noise. Train, validation
and test use disjoint font families (every weight and style of a family, the
members of a superfamily and known clones stay together), so the task needs
generalisation to unseen type designs. Deterministic given the seed. The
build's packages, versions, faces per split and jitter are in
`font_glyphs_metadata.json`. See kdjax's docs/data.md.
"""


class FontGlyphs(_builder.OfflineArrayBuilder):
  """Glyphs of 100 classes in unseen font families: 32x32 RGB, split by family.

  Registered in the TFDS catalogue as 'font_glyphs' when `kdjax.data` is
  imported; read a prepared build with ``load_source('font_glyphs',
  'train', data_dir=...)``. Examples are ``{'image': uint8 [32, 32, 3],
  'label': int (index into FONT_CLASSES), 'font': str (the face's name),
  'family': str (its split unit)}`` with supervised keys ('image',
  'label'); kdjax's loaders rename them to 'x' and 'label' and scale the
  image to [0, 1]. A data source gives the text features as UTF-8 bytes.

  Building fetches the packages with ``apt-get download`` into `cache_dir`
  (see :func:`fetch_fonts`), unless `font_dir` gives the font files.
  ``font_glyphs_metadata.json`` in the build's directory
  (:func:`font_glyphs_metadata`) records the packages and versions, every
  face per split, the dropped files with their reasons, the sizes, seed
  and jitter, and each split's image digest.

  Args:
    font_dir: build from the ``.ttf`` / ``.otf`` files under this directory
      instead of fetching packages.
    cache_dir: where packages are downloaded and extracted
      (``<data_dir>/downloads/fonts`` when None).
    packages: the Debian font packages.
    sizes: images per split, ``{'train': n, 'validation': n, 'test': n}``.
    seed: the rendering seed (the font split does not depend on it).
    num_validation_units: font-family units in validation.
    num_test_units: font-family units in test.
    jitter: the random variation of the glyphs.
    **kwargs: for ``tfds.core.GeneratorBasedBuilder`` (``data_dir``, ...).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: Debian 12 font packages.'}
  DESCRIPTION = _DESCRIPTION
  HOMEPAGE = 'https://wiki.debian.org/Fonts'
  LICENSE = 'Each font under its package license (OFL-1.1, GPL with font exception, ...)'
  SUPERVISED_KEYS = ('image', 'label')

  def __init__(
      self,
      *,
      font_dir: str | os.PathLike[str] | None = None,
      cache_dir: str | os.PathLike[str] | None = None,
      packages: Sequence[str] = DEFAULT_PACKAGES,
      sizes: Mapping[str, int] | None = None,
      seed: int = 0,
      num_validation_units: int = DEFAULT_VALIDATION_UNITS,
      num_test_units: int = DEFAULT_TEST_UNITS,
      jitter: GlyphJitter = GlyphJitter(),
      **kwargs: Any,
  ):
    self._font_dir = None if font_dir is None else os.fspath(font_dir)
    self._cache_dir = cache_dir
    self._packages = tuple(packages)
    self._sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    if sorted(self._sizes) != sorted(FONT_SPLITS) or min(self._sizes.values()) < 1:
      raise ValueError(f'sizes must give every split of {FONT_SPLITS} >= 1 image, got {sizes}')
    self._seed = seed
    self._num_units = {'validation': num_validation_units, 'test': num_test_units}
    self._jitter = jitter
    super().__init__(**kwargs)

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
        'label': tfds.features.ClassLabel(names=[f'U+{ord(c):04X}' for c in FONT_CLASSES]),
        'font': tfds.features.Text(),
        'family': tfds.features.Text(),
    })

  def _font_files(self) -> tuple[dict[str, str], dict[str, Any]]:
    if self._font_dir is not None:
      return list_font_files(self._font_dir), {'font_dir': self._font_dir}
    cache_dir = self._cache_dir or os.path.join(self._data_dir_root, 'downloads', 'fonts')
    files, versions = fetch_fonts(cache_dir=cache_dir, packages=self._packages)
    return files, {'packages': versions}

  def _split_arrays(self) -> _builder.SplitArrays:
    files, source = self._font_files()
    faces, report = collect_faces(files)
    units = split_units([f.unit for f in faces], num_validation=self._num_units['validation'],
                        num_test=self._num_units['test'])
    arrays = make_font_arrays(faces, units, self._sizes, seed=self._seed, jitter=self._jitter)
    splits = {}
    for split in FONT_SPLITS:
      members = [f for f in faces if f.unit in set(units[split])]
      splits[split] = {
          'images': self._sizes[split],
          'units': units[split],
          'faces': [{'name': f.name, 'family': f.family, 'style': f.style} for f in members],
          'image_sha256': array_digest(arrays[split]['image']),
      }
    # self.data_dir is TFDS's temporary build directory here: the file
    # appears with the dataset, when it is renamed into place.
    os.makedirs(self.data_dir, exist_ok=True)
    _translation.write_json(os.path.join(self.data_dir, METADATA_FILE), {
        'classes': FONT_CLASSES,
        'image_size': IMAGE_SIZE,
        'seed': self._seed,
        'jitter': dataclasses.asdict(self._jitter),
        'splits': splits,
        'dropped_files': report['dropped'],
        'source': source,
    })
    return {
        split: {
            'image': split_arrays['image'],
            'label': split_arrays['label'],
            'font': np.array([faces[r].name for r in split_arrays['face']], dtype=object),
            'family': np.array([faces[r].unit for r in split_arrays['face']], dtype=object),
        }
        for split, split_arrays in arrays.items()
    }


def font_glyphs_metadata(source_or_dir: Any) -> dict[str, Any]:
  """The ``font_glyphs_metadata.json`` of a build (a data source of it, or its directory)."""
  with open(os.path.join(_translation.dataset_dir(source_or_dir), METADATA_FILE),
            encoding='utf-8') as f:
    return json.load(f)
