"""English->German/French pairs from the GNU gettext catalogs (.mo) of Debian packages.

The pipeline, each step a function:

1. :func:`fetch_catalogs`: ``apt-get download`` the packages into a cache
   directory, extract their ``usr/share/locale/<lang>/LC_MESSAGES/*.mo``
   files with ``dpkg-deb``, record each package's version.
2. :func:`read_mo_catalog`: read a catalog with Python's
   ``gettext.GNUTranslations`` (context stripped, plurals as singular msgid
   with ``msgstr[0]``, header skipped).
3. :func:`normalise_pair`: the normalisation rules of
   :func:`normalise_text` on both sides, then the drop rules.
4. :func:`make_translation_splits`: whole catalogs (gettext domains) go to
   one split, one target per source within a split, no validation or test
   source that occurs in train (and no test source that occurs in
   validation).

The joint BPE tokenizer, the token arrays and the TFDS builder are in
``_translation.py``.

Normalisation (version :data:`NORMALISATION_VERSION`), applied identically
to source and target by :func:`normalise_text`:

* Accelerator marks are removed: ``&`` before a letter or digit unless it
  starts an HTML entity (``&amp;``); ``~`` before a letter or digit; ``_``
  before a letter or digit when it is the only ``_`` in the string and not
  between two capitals or digits (so ``POSIXLY_CORRECT`` stays; a lone
  ``snake_case`` word loses its ``_`` on both sides alike).
* Placeholders take one canonical form, ``{k}`` for positional ones and
  ``{name}`` for named ones: printf conversions (``%s``, ``%d``, ``%-10s``,
  ``%lu``, ``%.*f``, ``%<PRIu64>``, GCC's ``%qs``/``%wd``) are numbered
  ``{0}``, ``{1}``, ... in their order in the string, and ``%n$s`` becomes
  ``{n-1}`` (so a translation that reorders its arguments keeps the
  mapping); Qt's ``%1`` becomes ``{0}``; Python's ``{0}`` stays ``{0}``,
  ``{}`` is numbered like printf; ``{name}``, ``%(name)s`` and ``${name}``
  become ``{name}``; ``%m`` (``strerror(errno)``) becomes ``{m}``. ``%%``
  becomes ``%``, GCC's quote marks ``%<`` and ``%>`` become ``'``.
* Whitespace runs (spaces, tabs, newlines) become one space; the ends are
  stripped.

A normalised pair is dropped (:func:`normalise_pair`) when either side is
empty or has no letter, when the two sides are identical (untranslated),
when either side is longer than :data:`MAX_CHARS` characters or
:data:`MAX_WORDS` words, when either side had more than
:data:`MAX_LINES` lines before normalisation (usage texts and other
blobs), or when the multisets of canonical placeholders of the two sides
differ.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import gettext
import glob
import os
import re
import unicodedata

from kdjax.data import _debian
from kdjax.data import _text


#: Bumped whenever a rule of normalise_text or normalise_pair changes.
NORMALISATION_VERSION = 1
MAX_CHARS = 200
MAX_WORDS = 40
MAX_LINES = 2
TRANSLATION_SPLITS = ('train', 'validation', 'test')
LANGUAGES = ('de', 'fr', 'es')

#: Debian 12 packages whose catalogs make the default corpus: every package
#: of a wider candidate list that gave German pairs when measured (see
#: docs/data.md), less gcc-11-locales (its strings are gcc-12's). GCC and
#: binutils, the GNU and util-linux tools, git, the GTK/GLib/GNOME/Cinnamon/
#: MATE/Xfce/KDE desktop strings, GIMP, Inkscape, VLC, GnuCash, ISO names.
DEFAULT_PACKAGES = (
    'acl', 'apt', 'aptitude-common', 'attr', 'bash', 'binutils-common', 'bison',
    'cinnamon-l10n', 'coreutils', 'cpio', 'debconf-i18n', 'diffutils', 'dpkg',
    'e2fsprogs-l10n', 'evolution-data-server-common', 'findutils', 'flex', 'gawk',
    'gcc-12-locales', 'gedit-common', 'gettext', 'gimp-data', 'git',
    'gnome-control-center-data', 'gnome-shell-common', 'gnucash-common', 'gnupg-l10n',
    'grep', 'gstreamer1.0-plugins-good', 'inkscape', 'iso-codes', 'kbd', 'libc-l10n',
    'libglib2.0-data', 'libgphoto2-l10n', 'libgstreamer1.0-0', 'libgtk-3-common',
    'libgtk-4-common', 'libgtk2.0-common', 'libsane-common', 'lynx-common', 'make',
    'man-db', 'mate-desktop-common', 'mc-data', 'nano', 'nautilus-data',
    'network-manager', 'plasma-workspace-data', 'procps', 'psmisc', 'pulseaudio', 'sed',
    'sudo', 'tar', 'texinfo', 'thunar-data', 'util-linux-locales', 'vlc-l10n', 'wget',
    'xfce4-panel',
)



@dataclasses.dataclass(frozen=True, order=True)
class TranslationPair:
  """One normalised pair and the catalog (gettext domain) it comes from."""

  source: str
  target: str
  catalog: str


# ------------------------------------------------------------------ reading


def read_mo_catalog(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
  """The ``(msgid, msgstr)`` entries of a compiled gettext catalog, raw.

  Read with ``gettext.GNUTranslations`` (which decodes with the catalog's
  charset). The header (empty msgid) is skipped; a context (``ctx\\x04msgid``)
  is stripped from the msgid; a plural entry gives its singular msgid with
  ``msgstr[0]`` (the other plural forms are dropped); entries whose msgstr is
  empty are dropped (``msgfmt`` writes no fuzzy entries).

  Args:
    path: a ``.mo`` file.

  Returns:
    The entries, sorted (a catalog's own order is a hash table's).
  """
  with open(os.fspath(path), 'rb') as f:
    catalog = gettext.GNUTranslations(f)._catalog  # pylint: disable=protected-access
  entries = set()
  for key, msgstr in catalog.items():
    if isinstance(key, tuple):  # (msgid, plural index)
      msgid, index = key
      if index != 0:
        continue
    else:
      msgid = key
    msgid = msgid.rpartition('\x04')[2]
    if msgid and msgstr:
      entries.add((msgid, msgstr))
  return sorted(entries)


# ------------------------------------------------------------ normalisation

_PRINTF = re.compile(
    r"%(?:(?P<pos>[1-9]\d*)\$)?[-+#0'qw]*(?:\d+|\*)?(?:\.(?:\d+|\*)?)?"
    r'(?:hh|h|ll|l|L|q|j|z|Z|t|I64|I32|I)?'
    r'(?:(?P<conv>[diouxXeEfFgGaAcspnCSDETV])|<(?P<pri>PRI\w+)>)'
)
_PLACEHOLDER = re.compile(
    r'(?P<percent>%%)'
    r'|(?P<printf>' + _PRINTF.pattern.replace('(?P<pos>', '(?P<ppos>') + r')'
    r'|(?P<quote>%[<>])'
    r'|(?P<errno>%m)'
    r'|%\((?P<pyname>\w+)\)[-+#0]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]'
    r'|%(?P<qt>[1-9]\d?)(?![\d$])'
    r'|\$\{(?P<shell>\w+)\}'
    r'|\{(?P<brace>\w*)(?:![rsa])?(?::[^{}]*)?\}'
)
_ACCEL_AMP = re.compile(r'&(?![#\w]+;)(?=[^\W_])')
_ACCEL_TILDE = re.compile(r'~(?=[^\W_])')
_ACCEL_UNDERSCORE = re.compile(r'(?<![A-Z0-9])_(?=[^\W_])|_(?=[^\W_A-Z0-9])')
_CANONICAL = re.compile(r'\{\w+\}')
_LETTER = re.compile(r'[^\W\d_]')


def _strip_accelerators(text: str) -> str:
  text = _ACCEL_AMP.sub('', text)
  text = _ACCEL_TILDE.sub('', text)
  if text.count('_') == 1:
    text = _ACCEL_UNDERSCORE.sub('', text, count=1)
  return text


def _canonical_placeholders(text: str) -> str:
  """Rewrites every placeholder of `text` in the ``{k}`` / ``{name}`` form."""
  counter = iter(range(10**6))

  def replace(match: re.Match[str]) -> str:
    group = match.lastgroup
    if group == 'percent':
      return '%'
    if group == 'quote':
      return "'"
    if group == 'errno':
      return '{m}'
    if group == 'pyname':
      return '{' + match['pyname'] + '}'
    if group in ('printf', 'ppos', 'conv', 'pri'):
      pos = match['ppos']
      return '{%d}' % (int(pos) - 1 if pos else next(counter))
    if group == 'qt':
      return '{%d}' % (int(match['qt']) - 1)
    if group == 'shell':
      return '{' + match['shell'] + '}'
    name = match['brace']
    return '{%d}' % next(counter) if name == '' else '{' + name + '}'

  return _PLACEHOLDER.sub(replace, text)


def normalise_text(text: str) -> str:
  """One side of a pair in kdjax's normal form (rules: the module docstring).

  Unicode NFC, accelerator marks removed, placeholders canonical,
  whitespace collapsed.

  Args:
    text: a msgid or msgstr.

  Returns:
    The normalised text.

  Examples:
    >>> normalise_text('_Open %s in\\n  %1$s')
    'Open {0} in {0}'
    >>> normalise_text('Save &As…')
    'Save As…'
  """
  text = unicodedata.normalize('NFC', text)
  text = _strip_accelerators(text)
  text = _canonical_placeholders(text)
  return ' '.join(text.split())


def placeholders(text: str) -> list[str]:
  """The canonical placeholders (``{0}``, ``{name}``) of a normalised text, sorted."""
  return sorted(_CANONICAL.findall(text))


def normalise_pair(source: str, target: str) -> tuple[str, str] | str:
  """Normalises a raw pair, or says which drop rule removes it.

  Args:
    source: the msgid (English).
    target: the msgstr.

  Returns:
    ``(source, target)`` normalised, or the name of the rule that drops the
    pair: ``'empty'``, ``'no_letter'``, ``'identical'``, ``'multiline'``,
    ``'too_long'`` or ``'placeholders'``.
  """
  if max(len(source.strip().splitlines()), len(target.strip().splitlines())) > MAX_LINES:
    return 'multiline'
  source, target = normalise_text(source), normalise_text(target)
  if not source or not target:
    return 'empty'
  if not _LETTER.search(source) or not _LETTER.search(target):
    return 'no_letter'
  if source == target:
    return 'identical'
  if max(len(source), len(target)) > MAX_CHARS or max(
      len(source.split()), len(target.split())) > MAX_WORDS:
    return 'too_long'
  if placeholders(source) != placeholders(target):
    return 'placeholders'
  return source, target


def collect_pairs(
    catalog_files: Mapping[str, Sequence[str | os.PathLike[str]]],
) -> tuple[list[TranslationPair], dict[str, object]]:
  """Reads and normalises the catalogs, dropping pairs by the rules.

  Args:
    catalog_files: ``{catalog name: [.mo paths]}``; a catalog may have
      several files (one domain shipped by two packages).

  Returns:
    ``(pairs, report)``: the distinct normalised pairs (sorted; the same
    pair in two catalogs is kept once per catalog) and a report:
    ``'entries'``, the number of raw entries read (``'read'``), kept
    (``'kept'``) and dropped per rule (``'dropped_<rule>'``), and
    ``'unreadable'``, the files ``gettext.GNUTranslations`` rejects (a
    header not in UTF-8, a malformed Plural-Forms line), skipped with the
    reason.
  """
  counts = collections.Counter()
  pairs, unreadable = set(), []
  for catalog in sorted(catalog_files):
    for path in catalog_files[catalog]:
      try:
        entries = read_mo_catalog(path)
      except (UnicodeDecodeError, ValueError, IndexError) as e:
        # GNUTranslations rejects a few real catalogs: a header not in
        # UTF-8 (m4's, Latin-1), a malformed Plural-Forms line.
        unreadable.append(f'{path}: {type(e).__name__}: {e}')
        continue
      for msgid, msgstr in entries:
        counts['read'] += 1
        result = normalise_pair(msgid, msgstr)
        if isinstance(result, str):
          counts[f'dropped_{result}'] += 1
        else:
          counts['kept'] += 1
          pairs.add(TranslationPair(*result, catalog=catalog))
  return sorted(pairs), {'entries': dict(sorted(counts.items())), 'unreadable': unreadable}


# ---------------------------------------------------------------- splitting


def split_catalogs(
    pairs: Sequence[TranslationPair],
    *,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, list[str]]:
  """Assigns whole catalogs to the splits, greedily in a stable hash order.

  A catalog's size is its number of *own* sources (normalised sources found
  in no other catalog): those are what survive the removal of held-out
  sources seen in train. Catalogs are visited in the order of
  ``crc32(name)``; each joins test while test holds fewer than
  ``test_fraction`` of all own sources, if the catalog is at most half that
  share; else validation by the same rule with ``val_fraction``; else
  train. So no large catalog (GCC's, util-linux's) lands in a held-out
  split by the luck of its hash, each held-out split has several catalogs,
  and its share is close to its fraction.

  Args:
    pairs: normalised pairs, as from :func:`collect_pairs`.
    val_fraction: share of own sources wanted in validation.
    test_fraction: share of own sources wanted in test.

  Returns:
    ``{'train' | 'validation' | 'test': [catalog names, sorted]}``.
  """
  _text.check_split_fractions(val_fraction, test_fraction, 'catalogs')
  catalogs_of = collections.defaultdict(set)
  for pair in pairs:
    catalogs_of[pair.source].add(pair.catalog)
  own = collections.Counter(
      next(iter(c)) for c in catalogs_of.values() if len(c) == 1)
  names = sorted({p.catalog for p in pairs}, key=lambda c: (_text.unit_hash(c), c))
  total = sum(own.values())
  wanted = {'test': test_fraction * total, 'validation': val_fraction * total}
  have = {'test': 0, 'validation': 0}
  splits = {name: [] for name in TRANSLATION_SPLITS}
  for catalog in names:
    size = own[catalog]
    for split in ('test', 'validation'):
      if have[split] < wanted[split] and size <= 0.5 * wanted[split]:
        have[split] += size
        splits[split].append(catalog)
        break
    else:
      splits['train'].append(catalog)
  return {name: sorted(c) for name, c in splits.items()}


def _one_target_per_source(pairs: Iterable[TranslationPair]) -> list[TranslationPair]:
  """Keeps, for each source, its most frequent target (ties: the smallest).

  The kept pair's catalog is the first (sorted) catalog holding that pair.
  """
  by_source = collections.defaultdict(lambda: collections.defaultdict(list))
  for pair in pairs:
    by_source[pair.source][pair.target].append(pair.catalog)
  kept = []
  for source, targets in by_source.items():
    target = min(targets, key=lambda t: (-len(targets[t]), t))
    kept.append(TranslationPair(source, target, min(targets[target])))
  return sorted(kept, key=lambda p: (p.catalog, p.source))


def make_translation_splits(
    pairs: Sequence[TranslationPair],
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    min_eval_pairs: int = 1000,
) -> tuple[dict[str, list[TranslationPair]], dict[str, object]]:
  """Catalog-disjoint train/validation/test splits with no held-out source in train.

  Catalogs are assigned with :func:`split_catalogs`; within each split
  each source keeps one target (:func:`_one_target_per_source`: the most
  frequent across the split's catalogs, ties broken by the smallest
  string); then validation loses every pair whose source is in train, and
  test every pair whose source is in train or validation. Pairs are
  ordered by (catalog, source).

  Args:
    pairs: normalised pairs, as from :func:`collect_pairs`.
    val_fraction: as for :func:`split_catalogs`.
    test_fraction: as for :func:`split_catalogs`.
    min_eval_pairs: fewest pairs validation and test must each keep;
      fewer raises ValueError.

  Returns:
    ``(splits, report)``: ``{split: [pairs]}`` and a JSON-ready report with
    each split's ``catalogs`` and its pair counts (``deduplicated``,
    ``dropped_seen`` held-out sources seen in an earlier split, ``pairs``).
  """
  catalogs = split_catalogs(pairs, val_fraction=val_fraction, test_fraction=test_fraction)
  split_of = {c: split for split, names in catalogs.items() for c in names}
  grouped = collections.defaultdict(list)
  for pair in pairs:
    grouped[split_of[pair.catalog]].append(pair)
  splits, report, seen = {}, {}, set()
  for split in TRANSLATION_SPLITS:
    deduplicated = _one_target_per_source(grouped[split])
    kept = [p for p in deduplicated if p.source not in seen]
    seen.update(p.source for p in kept)
    splits[split] = kept
    report[split] = {
        'catalogs': catalogs[split],
        'deduplicated': len(deduplicated),
        'dropped_seen': len(deduplicated) - len(kept),
        'pairs': len(kept),
    }
  for split in ('validation', 'test'):
    if len(splits[split]) < min_eval_pairs:
      raise ValueError(
          f'split {split!r} has {len(splits[split])} pairs, fewer than '
          f'min_eval_pairs={min_eval_pairs} (from {len(pairs)} pairs in '
          f'{len(split_of)} catalogs); raise val_fraction/test_fraction '
          f'({val_fraction}/{test_fraction}) or add packages')
  return splits, report


# ------------------------------------------------------------ pairs files


def write_pairs(path: str | os.PathLike[str], pairs: Iterable[TranslationPair]) -> None:
  """Writes pairs as TSV lines ``catalog<TAB>source<TAB>target``, atomically.

  Normalised text has no tab or newline (whitespace is collapsed), so no
  quoting is needed.
  """
  path = os.fspath(path)
  lines = []
  for pair in pairs:
    fields = (pair.catalog, pair.source, pair.target)
    if any(ch in f for f in fields for ch in '\t\n\r'):
      raise ValueError(f'pairs: {pair!r} has a tab or newline; normalise it first')
    lines.append('\t'.join(fields) + '\n')
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(lines)
  os.replace(tmp, path)


def read_pairs(path: str | os.PathLike[str]) -> list[TranslationPair]:
  """Reads a file written by :func:`write_pairs`."""
  pairs = []
  with open(os.fspath(path), encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      fields = line.rstrip('\n').split('\t')
      if len(fields) != 3:
        raise ValueError(
            f'{path}:{number}: expected catalog<TAB>source<TAB>target, got '
            f'{len(fields)} fields')
      pairs.append(TranslationPair(source=fields[1], target=fields[2], catalog=fields[0]))
  return pairs


# ----------------------------------------------------------------- fetching


def _locale_dirs(root: str, lang: str) -> list[str]:
  """``usr/share/locale/<lang>`` and the country variant ``<lang>_<LANG>``.

  Other variants (de_CH, fr_CA, de.us-ascii) and other languages that
  start with the same letters (frp, Arpitan) are left out.
  """
  base = os.path.join(root, 'usr', 'share', 'locale')
  return [os.path.join(base, d) for d in (lang, f'{lang}_{lang.upper()}')]


def fetch_catalogs(
    lang: str,
    *,
    cache_dir: str | os.PathLike[str],
    packages: Sequence[str] = DEFAULT_PACKAGES,
) -> tuple[dict[str, list[str]], dict[str, str]]:
  """Downloads Debian packages and extracts their `lang` catalogs.

  Fetches them with :func:`kdjax.data._debian.fetch_packages`
  (``apt-get download`` into ``cache_dir/debs``, no root needed, then
  ``dpkg-deb -x`` into ``cache_dir/extracted/<package>``, once). A domain found in
  ``locale/<lang>`` is used from there; the country variant
  ``locale/<lang>_<LANG>`` (de_DE, fr_FR) is used only for domains missing
  from ``locale/<lang>``.

  Args:
    lang: 'de', 'fr' or 'es' (any gettext language code works).
    cache_dir: where the packages are downloaded and extracted.
    packages: Debian package names.

  Returns:
    ``({catalog (domain): [.mo paths]}, {package: version})``.
  """
  versions, catalog_files = {}, collections.defaultdict(list)
  for package, (version, root) in _debian.fetch_packages(packages, cache_dir=cache_dir).items():
    versions[package] = version
    seen = set()
    for locale_dir in _locale_dirs(root, lang):
      for path in sorted(glob.glob(os.path.join(locale_dir, 'LC_MESSAGES', '*.mo'))):
        domain = os.path.basename(path)[:-3]
        if domain not in seen:
          seen.add(domain)
          catalog_files[domain].append(path)
  return dict(sorted(catalog_files.items())), versions
