"""Debian package descriptions labelled with their Section, and English prose, built offline.

Two products, each a pipeline of functions:

* The Section task (:class:`DebianSections`): ``apt-get update`` into a
  private state (:func:`~kdjax.data._debian.private_apt_options`), the
  ``Packages`` and ``Translation-en`` lists parsed as deb822 paragraphs
  (:func:`parse_deb822`), a package joined to its long description by
  ``Description-md5`` (:func:`join_descriptions`), Sections without their
  ``contrib/`` / ``non-free/`` prefix, identical descriptions kept once, the
  packages split by a stable hash of their SOURCE package (so the binary
  packages of one source never straddle splits), and an equal number of
  examples per Section in each split (:func:`make_section_splits`).
* Prose (:func:`write_prose_shards`): paragraphs of the Debian
  descriptions outside the task's validation and test source packages,
  man pages rendered with ``man -P cat``, the python3 documentation's reST
  sources and fortunes, cleaned (:func:`keep_paragraph`), deduplicated and
  written as plain UTF-8 text shards (one paragraph a line) with a
  ``manifest.json``; and the task-related transfer set for pre-trained
  distillation: the descriptions of train source packages in the task's
  Sections, without labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
import dataclasses
import glob
import gzip
import hashlib
import html.parser
import json
import os
import re
import subprocess
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from kdjax.data import _builder
from kdjax.data import _debian
from kdjax.data import _sentences
from kdjax.data import _text
from kdjax.data import _translation

#: Sections of the default task: the ten largest of Debian 12 (main, contrib,
#: non-free) that are not another's development files nor a niche language's
#: modules, each with at least 1,120 / 140 / 135 deduplicated descriptions in
#: train / validation / test (counts in docs/data.md).
DEFAULT_SECTIONS = (
    'libs', 'python', 'doc', 'net', 'science', 'utils', 'devel', 'admin', 'javascript', 'perl')
SECTION_SPLITS = ('train', 'validation', 'test')
_COMPONENT_PREFIX = re.compile(r'^(?:contrib|non-free(?:-firmware)?)/')


@dataclasses.dataclass(frozen=True)
class PackageDescription:
  """One binary package's long description (short description excluded) and Section."""

  package: str
  source: str
  section: str
  text: str


def parse_deb822(text: str) -> list[dict[str, str]]:
  """The paragraphs of a deb822 file (``Packages``, ``Translation-en``) as field dicts.

  Paragraphs are separated by blank lines; a line starting with a space or
  tab continues the previous field (its text, lines joined by ``\\n``, the
  leading space kept so that :func:`long_description` can read ``" ."``).
  """
  paragraphs, fields, name = [], {}, None
  for line in text.splitlines():
    if not line.strip():
      if fields:
        paragraphs.append(fields)
      fields, name = {}, None
    elif line[0] in ' \t':
      if name is None:
        raise ValueError(f'text: a continuation line before any field: {line!r}')
      fields[name] += '\n' + line
    elif ':' in line:
      name, value = line.split(':', 1)
      fields[name] = value.strip()
    else:
      raise ValueError(f'text: a line that is neither a field nor a continuation: {line!r}')
  if fields:
    paragraphs.append(fields)
  return paragraphs


def long_description(value: str) -> str:
  """The long part of a deb822 ``Description`` value, paragraphs separated by blank lines.

  The first line (the short description) is dropped, one leading space is
  removed from each continuation line and a ``" ."`` line becomes a blank
  line (Debian Policy 5.6.13).
  """
  lines = value.split('\n')[1:]
  return '\n'.join('' if line.strip() == '.' else line[1:] for line in lines).strip('\n')


def section_name(section: str) -> str:
  """A Section without its archive-area prefix: ``contrib/games`` -> ``games``."""
  return _COMPONENT_PREFIX.sub('', section.strip())


def source_name(fields: Mapping[str, str]) -> str:
  """The source package of a ``Packages`` paragraph (``Source``, less its version, or ``Package``)."""
  source = fields.get('Source', '').split(' ')[0]
  return source or fields['Package']


def join_descriptions(
    packages: Iterable[Mapping[str, str]],
    translations: Iterable[Mapping[str, str]],
) -> list[PackageDescription]:
  """Joins ``Packages`` paragraphs to their ``Translation-en`` long descriptions.

  A package's ``Description-md5`` names its ``Translation-en`` paragraph;
  a package whose own ``Description`` field is long (lists made without
  ``Acquire::Languages``) uses that. Packages without a Section or a long
  description are skipped; a package listed twice (two architectures)
  is kept once, its first paragraph.

  Returns:
    The descriptions sorted by package name.
  """
  by_md5 = {}
  for fields in translations:
    if 'Description-md5' in fields and 'Description-en' in fields:
      by_md5[fields['Description-md5']] = long_description(fields['Description-en'])
  found = {}
  for fields in packages:
    name = fields.get('Package')
    if not name or name in found or not fields.get('Section'):
      continue
    text = long_description(fields.get('Description', ''))
    if not text:
      text = by_md5.get(fields.get('Description-md5', ''), '')
    if text:
      found[name] = PackageDescription(
          package=name, source=source_name(fields), section=section_name(fields['Section']),
          text=text)
  return [found[name] for name in sorted(found)]


def read_package_lists(lists_dir: str) -> list[PackageDescription]:
  """The descriptions of every ``*_Packages`` and ``*_Translation-en`` list in `lists_dir`."""
  def read(kind: str) -> list[dict[str, str]]:
    paths = sorted(glob.glob(os.path.join(lists_dir, f'*_{kind}*')))
    if not paths:
      raise _debian.AptError(f'lists_dir: no *_{kind} list in {lists_dir!r}; run apt-get update')
    return [p for path in paths for p in parse_deb822(_debian.read_list_file(path))]
  return join_descriptions(read('Packages'), read('Translation-en'))


def fetch_descriptions(cache_dir: str | os.PathLike[str], **apt_kwargs: Any) -> list[PackageDescription]:
  """``apt-get update`` into ``cache_dir/apt`` (once), then :func:`read_package_lists`.

  Args:
    cache_dir: the private apt state's home.
    **apt_kwargs: for :func:`~kdjax.data._debian.private_apt_options`
      (``suite``, ``components``, ``mirror``).
  """
  options = _debian.private_apt_options(cache_dir, **apt_kwargs)
  return read_package_lists(_debian.lists_dir(options))


def deduplicate(descriptions: Iterable[PackageDescription]) -> list[PackageDescription]:
  """The descriptions whose text (whitespace normalised) is not a repeat of an earlier one."""
  seen, kept = set(), []
  for description in descriptions:
    key = ' '.join(description.text.split())
    if key not in seen:
      seen.add(key)
      kept.append(description)
  return kept


def split_of_source(source: str, *, val_fraction: float, test_fraction: float) -> str:
  """``'test'``, ``'validation'`` or ``'train'`` by the stable hash of a source package name."""
  u = _text.unit_hash(source)
  if u < test_fraction:
    return 'test'
  return 'validation' if u < test_fraction + val_fraction else 'train'


def make_section_splits(
    descriptions: Sequence[PackageDescription],
    *,
    sections: Sequence[str] = DEFAULT_SECTIONS,
    per_class: int = 1400,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> tuple[dict[str, list[PackageDescription]], dict[str, Any]]:
  """The balanced Section task: split by source package, equal counts per class in each split.

  The descriptions are deduplicated (:func:`deduplicate`, in package-name
  order, so the input's order does not matter), restricted to `sections`, and assigned to a split by their
  source package (:func:`split_of_source`). Each split then takes the same
  number of examples from every Section: ``round(per_class * fraction)``
  (the train fraction is the rest), or fewer when a Section has fewer in
  that split (then every Section takes that smaller count). Which examples
  are taken is decided by the hash of the package name, so a build does not
  depend on the lists' order.

  Args:
    descriptions: from :func:`read_package_lists`.
    sections: the classes, label ``i`` is ``sections[i]``.
    per_class: examples per class over the three splits.
    val_fraction: expected share of source packages in validation.
    test_fraction: expected share of source packages in test.

  Returns:
    ``({split: [PackageDescription, ...]}, report)``, each split sorted by
    (section index, package); the report holds the counts available and
    taken.
  """
  _text.check_split_fractions(val_fraction, test_fraction, 'packages')
  if len(set(sections)) != len(sections) or len(sections) < 2:
    raise ValueError(f'sections must be at least 2 distinct names, got {list(sections)}')
  index = {s: i for i, s in enumerate(sections)}
  pools = {split: {s: [] for s in sections} for split in SECTION_SPLITS}
  for d in deduplicate(sorted(descriptions, key=lambda d: d.package)):
    if d.section in index:
      split = split_of_source(d.source, val_fraction=val_fraction, test_fraction=test_fraction)
      pools[split][d.section].append(d)
  wanted = {'validation': round(per_class * val_fraction), 'test': round(per_class * test_fraction)}
  wanted['train'] = per_class - wanted['validation'] - wanted['test']
  splits, report = {}, {'sections': list(sections), 'available': {}, 'per_class': {}}
  for split in SECTION_SPLITS:
    available = {s: len(pools[split][s]) for s in sections}
    take = min(wanted[split], *available.values())
    if take == 0:
      raise ValueError(f'sections: the {split} split has no example of some Section: {available}')
    splits[split] = [
        d for s in sections
        for d in sorted(pools[split][s], key=lambda d: (_text.unit_hash(d.package), d.package))[:take]]
    splits[split].sort(key=lambda d: (index[d.section], d.package))
    report['available'][split] = available
    report['per_class'][split] = take
  return splits, report


def write_descriptions(path: str | os.PathLike[str], descriptions: Iterable[PackageDescription]) -> None:
  """Writes descriptions as JSON lines (``package``, ``source``, ``section``, ``text``)."""
  with open(path, 'w', encoding='utf-8') as f:
    for d in descriptions:
      f.write(json.dumps(dataclasses.asdict(d), ensure_ascii=False) + '\n')


def read_descriptions(path: str | os.PathLike[str]) -> list[PackageDescription]:
  """Reads what :func:`write_descriptions` wrote."""
  with open(path, encoding='utf-8') as f:
    return [PackageDescription(**json.loads(line)) for line in f if line.strip()]


# ------------------------------------------------------------------ prose

PROSE_SOURCES = ('debian', 'man', 'python_doc', 'linux_doc', 'fortunes', 'html_doc', 'info_doc')
#: Per-source byte caps of the default prose build (150 MB in all; the
#: sources hold less, about 90 MB, see docs/data.md).
DEFAULT_PROSE_CAPS = {'debian': 25_000_000, 'man': 35_000_000, 'python_doc': 15_000_000,
                      'linux_doc': 20_000_000, 'fortunes': 5_000_000, 'html_doc': 40_000_000,
                      'info_doc': 10_000_000}
#: Packages of man pages (perl-doc: the perl*(1) manuals; manpages-posix*: non-free).
MAN_PACKAGES = ('manpages', 'manpages-dev', 'perl-doc', 'manpages-posix', 'manpages-posix-dev')
#: Sphinx documentation whose ``html/_sources/**/*.rst.txt`` are read, per source (Debian 12).
RST_DOC_PACKAGES = {'python_doc': ('python3.11-doc',), 'linux_doc': ('linux-doc-6.1',)}
FORTUNE_PACKAGES = ('fortunes-min', 'fortunes')
_DOC_HTML = 'usr/share/doc/**/*.html'
#: HTML manuals read paragraph by paragraph (:func:`html_paragraphs`): each
#: package with the glob of its English pages (Debian 12). The GNU manuals
#: of gcc-12-doc, gdb-doc, glibc-doc-reference, gawk-doc and make-doc are in
#: non-free; debian-handbook ships 20 translations, of which en-US is read.
HTML_DOC_GLOBS = {
    'bash-doc': _DOC_HTML, 'debian-handbook': 'usr/share/doc/debian-handbook/html/en-US/*.html',
    'debian-policy': _DOC_HTML, 'debian-reference-en': _DOC_HTML,
    'developers-reference': _DOC_HTML, 'docutils-doc': _DOC_HTML, 'gawk-doc': _DOC_HTML,
    'gcc-12-doc': _DOC_HTML, 'gdb-doc': _DOC_HTML,
    'gimp-help-en': 'usr/share/gimp/2.0/help/en/**/*.html', 'git-doc': _DOC_HTML,
    'glibc-doc-reference': _DOC_HTML, 'gnu-standards': _DOC_HTML, 'gnuplot-doc': _DOC_HTML,
    'maint-guide': _DOC_HTML, 'make-doc': _DOC_HTML, 'octave-doc': _DOC_HTML,
    'postgresql-doc-15': _DOC_HTML, 'python-astropy-doc': _DOC_HTML,
    'python-biopython-doc': _DOC_HTML, 'python-celery-doc': _DOC_HTML,
    'python-django-doc': _DOC_HTML, 'python-ipython-doc': _DOC_HTML,
    'python-lxml-doc': _DOC_HTML, 'python-mpmath-doc': _DOC_HTML,
    'python-pandas-doc': _DOC_HTML, 'python-pytest-doc': _DOC_HTML,
    'python-scipy-doc': _DOC_HTML, 'python-sklearn-doc': _DOC_HTML,
    'python-sqlalchemy-doc': _DOC_HTML, 'sphinx-doc': _DOC_HTML, 'zsh-doc': _DOC_HTML,
}
#: Texinfo manuals that exist only as Info files (the GNU Emacs and Emacs
#: Lisp manuals and their companions; non-free: GFDL with invariant sections).
INFO_DOC_PACKAGES = ('emacs-common-non-dfsg',)
DPKG_INFO_DIR = '/var/lib/dpkg/info'
MIN_PARAGRAPH_WORDS = 6
_MAN_BATCH = 50


def keep_paragraph(paragraph: str) -> bool:
  """Whether a paragraph is prose: at least :data:`MIN_PARAGRAPH_WORDS` words, mostly letters,
  starting with a letter or quote and ending with ``.``, ``!``, ``?``, ``:`` or a closing quote."""
  words = paragraph.split()
  letters = sum(c.isalpha() for c in paragraph)
  return (len(words) >= MIN_PARAGRAPH_WORDS and letters >= 0.6 * len(paragraph.replace(' ', ''))
          and (paragraph[0].isalpha() or paragraph[0] in '"\'(') and paragraph[-1] in '.!?:"\')')


def text_blocks(text: str) -> list[str]:
  """The blank-line separated blocks of a text, each on one line with single spaces."""
  return [' '.join(block.split()) for block in re.split(r'\n\s*\n', text) if block.strip()]


def fortune_paragraphs(text: str) -> list[str]:
  """The fortunes of a fortune data file (entries separated by ``%`` lines), one line each."""
  return [' '.join(entry.split()) for entry in re.split(r'^%\s*$', text, flags=re.M)
          if entry.strip()]


class _HtmlParagraphs(html.parser.HTMLParser):
  """Collects the text of ``<p>`` and ``<div class="para">`` elements outside code and tables."""

  _SKIPPED = frozenset({'pre', 'script', 'style', 'table', 'head'})

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.paragraphs: list[str] = []
    self._text: list[str] | None = None
    self._divs = 0  # open <div>s inside the current <div class="para">
    self._skipped = 0

  def _close(self) -> None:
    if self._text is not None:
      self.paragraphs.append(' '.join(''.join(self._text).split()))
    self._text, self._divs = None, 0

  def handle_starttag(self, tag, attrs):
    if tag in self._SKIPPED:
      self._skipped += 1
    elif tag == 'p' or (tag == 'div' and 'para' in (dict(attrs).get('class') or '').split()):
      self._close()
      self._text = []
      self._divs = 1 if tag == 'div' else 0
    elif tag == 'div' and self._divs:
      self._divs += 1

  def handle_endtag(self, tag):
    if tag in self._SKIPPED:
      self._skipped = max(0, self._skipped - 1)
    elif tag == 'p' and not self._divs:
      self._close()
    elif tag == 'div' and self._divs:
      self._divs -= 1
      if not self._divs:
        self._close()

  def handle_data(self, data):
    if self._text is not None and not self._skipped:
      self._text.append(data)


def html_paragraphs(text: str) -> list[str]:
  """The paragraphs of an HTML page: the text of each ``<p>`` (and DocBook's
  ``<div class="para">``), whitespace collapsed; code blocks, tables, scripts
  and everything outside paragraphs (navigation, headings, lists of links)
  are left out."""
  parser = _HtmlParagraphs()
  parser.feed(text)
  parser.close()
  parser._close()  # pylint: disable=protected-access
  return [p for p in parser.paragraphs if p]


def info_paragraphs(text: str) -> list[str]:
  """The paragraphs of a GNU Info file: its nodes' blank-line separated blocks,
  without the node header lines, the menus and the tag tables."""
  paragraphs = []
  for node in text.split('\x1f'):
    lines = node.strip('\n').splitlines()
    if not lines or not lines[0].startswith('File:'):
      continue  # the preamble, 'Tag Table:', 'Indirect:', 'Local Variables'
    body = '\n'.join(lines[1:]).split('\n* Menu:')[0]
    paragraphs += text_blocks(body)
  return paragraphs


def render_man_pages(paths: Sequence[str]) -> str:
  """The man pages as plain text (``man -P cat -l``, 80 columns, no hyphenation)."""
  env = {k: v for k, v in os.environ.items() if k != 'MAN_KEEP_FORMATTING'}
  env.update(MANWIDTH='80', MANROFFOPT='-rHY=0')
  proc = subprocess.run(['man', '-P', 'cat', '-l', *paths], capture_output=True, text=True,
                        env=env, check=False, errors='replace')
  return re.sub(r'.\x08', '', proc.stdout)


def installed_man_pages(packages: Iterable[str], *, dpkg_info_dir: str = DPKG_INFO_DIR) -> list[str]:
  """The English man pages (``/usr/share/man/man1``-``man8``) that installed `packages` own.

  Read from dpkg's file lists (``<package>[:<arch>].list``); restricting
  to the packages of the Debian lists leaves out pages of software from
  other archives (thousands of near-identical cloud CLI pages on some
  machines).
  """
  wanted, pages = set(packages), []
  for path in sorted(glob.glob(os.path.join(dpkg_info_dir, '*.list'))):
    if os.path.basename(path)[:-len('.list')].split(':')[0] in wanted:
      pages += [line.strip() for line in _read(path).splitlines()
                if re.match(r'^/usr/share/man/man[1-8]/[^/]+$', line.strip())]
  return [p for p in pages if os.path.isfile(p) and not os.path.islink(p)]


def _extracted(packages: Sequence[str], cache_dir: str, apt_options: Sequence[str]) -> list[str]:
  debs = _debian.download_packages(packages, cache_dir=cache_dir, apt_options=apt_options)
  return [_debian.extract_package(debs[p], cache_dir=cache_dir, package=p) for p in packages]


def _read(path: str) -> str:
  with open(path, encoding='utf-8', errors='replace') as f:
    return f.read()


def prose_documents(
    source: str,
    *,
    cache_dir: str,
    apt_options: Sequence[str],
    descriptions: Sequence[PackageDescription] = (),
    installed_packages: Iterable[str] = (),
    dpkg_info_dir: str = DPKG_INFO_DIR,
) -> Iterator[list[str]]:
  """The raw paragraphs of one prose source, a list per document (a package, page or file).

  Documents come in the order of the hash of their name (man pages,
  reST files) so that a byte cap takes a uniform sample.

  Args:
    source: one of :data:`PROSE_SOURCES`.
    cache_dir: where packages are downloaded and extracted.
    apt_options: from :func:`~kdjax.data._debian.private_apt_options`.
    descriptions: the Debian descriptions (source ``'debian'``).
    installed_packages: installed packages whose man pages join those of
      :data:`MAN_PACKAGES` (:func:`installed_man_pages`).
    dpkg_info_dir: dpkg's file lists.
  """
  if source == 'debian':
    for d in descriptions:
      yield _sentences.rst_paragraphs(d.text)
  elif source == 'man':
    roots = [os.path.join(r, 'usr/share/man') for r in _extracted(MAN_PACKAGES, cache_dir, apt_options)]
    packaged = [p for r in roots for p in sorted(glob.glob(os.path.join(r, 'man[1-8]', '*')))
                if os.path.isfile(p) and not os.path.islink(p)]
    pages = {}
    for path in packaged + installed_man_pages(installed_packages, dpkg_info_dir=dpkg_info_dir):
      pages.setdefault(os.path.basename(path), path)
    ordered = [pages[n] for n in sorted(pages, key=lambda n: (_text.unit_hash(n), n))]
    for start in range(0, len(ordered), _MAN_BATCH):
      yield text_blocks(render_man_pages(ordered[start:start + _MAN_BATCH]))
  elif source in RST_DOC_PACKAGES:
    files = [p for r in _extracted(RST_DOC_PACKAGES[source], cache_dir, apt_options)
             for p in glob.glob(os.path.join(r, 'usr/share/doc/*/html/_sources/**/*.rst.txt'),
                                recursive=True)]
    for path in sorted(files, key=lambda p: (_text.unit_hash(os.path.basename(p)), p)):
      yield _sentences.rst_paragraphs(_read(path))
  elif source == 'html_doc':
    roots = _extracted(tuple(HTML_DOC_GLOBS), cache_dir, apt_options)
    files = [p for r, pattern in zip(roots, HTML_DOC_GLOBS.values())
             for p in glob.glob(os.path.join(r, pattern), recursive=True)
             if os.path.isfile(p) and not os.path.islink(p)]
    for path in sorted(files, key=lambda p: (_text.unit_hash(os.path.relpath(p, cache_dir)), p)):
      yield html_paragraphs(_read(path))
  elif source == 'info_doc':
    files = [p for r in _extracted(INFO_DOC_PACKAGES, cache_dir, apt_options)
             for p in glob.glob(os.path.join(r, 'usr/share/info/**/*.info*.gz'), recursive=True)
             if os.path.isfile(p) and not os.path.islink(p)]
    for path in sorted(files, key=lambda p: (_text.unit_hash(os.path.basename(p)), p)):
      with gzip.open(path, 'rt', encoding='utf-8', errors='replace') as f:
        yield info_paragraphs(f.read())
  elif source == 'fortunes':
    for root in _extracted(FORTUNE_PACKAGES, cache_dir, apt_options):
      for path in sorted(glob.glob(os.path.join(root, 'usr/share/games/fortunes/*'))):
        if os.path.isfile(path) and not os.path.islink(path) and not path.endswith(('.dat', '.u8')):
          yield fortune_paragraphs(_read(path))
  else:
    raise ValueError(f'source must be one of {PROSE_SOURCES}, got {source!r}')


def clean_paragraphs(
    documents: Iterable[list[str]], *, max_bytes: int, seen: set[str]
) -> tuple[list[str], int]:
  """The kept (:func:`keep_paragraph`), unseen paragraphs of `documents`, up to `max_bytes`.

  Args:
    documents: lists of raw paragraphs, as :func:`prose_documents` yields.
    max_bytes: stop before the UTF-8 bytes (newlines included) pass this.
    seen: paragraphs already taken (updated: deduplication across sources).

  Returns:
    ``(paragraphs, documents read)``.
  """
  kept, size, read = [], 0, 0
  for paragraphs in documents:
    read += 1
    for paragraph in paragraphs:
      paragraph = ' '.join(paragraph.split())
      if paragraph.endswith('::'):  # reST's introduction of a literal block: a colon in prose
        paragraph = paragraph[:-1]
      if paragraph in seen or not keep_paragraph(paragraph):
        continue
      n = len(paragraph.encode('utf-8')) + 1
      if size + n > max_bytes:
        return kept, read
      seen.add(paragraph)
      kept.append(paragraph)
      size += n
  return kept, read


def write_text_shards(
    out_dir: str | os.PathLike[str],
    paragraphs: Sequence[str],
    *,
    prefix: str,
    shard_bytes: int = 16_000_000,
) -> list[dict[str, Any]]:
  """Writes paragraphs one a line into ``<prefix>-NNNNN.txt`` files of about `shard_bytes`.

  Returns:
    One ``{'file', 'paragraphs', 'bytes', 'sha256'}`` record per shard.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  shards, start = [], 0
  while start < len(paragraphs):
    data, stop = [], start
    size = 0
    while stop < len(paragraphs) and (size < shard_bytes or stop == start):
      line = (paragraphs[stop] + '\n').encode('utf-8')
      data.append(line)
      size += len(line)
      stop += 1
    name = f'{prefix}-{len(shards):05d}.txt'
    blob = b''.join(data)
    with open(os.path.join(out_dir, name + '.tmp'), 'wb') as f:
      f.write(blob)
    os.replace(os.path.join(out_dir, name + '.tmp'), os.path.join(out_dir, name))
    shards.append({'file': name, 'paragraphs': stop - start, 'bytes': len(blob),
                   'sha256': hashlib.sha256(blob).hexdigest()})
    start = stop
  return shards


def write_prose_shards(
    out_dir: str | os.PathLike[str],
    descriptions: Sequence[PackageDescription],
    *,
    cache_dir: str | os.PathLike[str],
    apt_options: Sequence[str],
    sources: Sequence[str] = PROSE_SOURCES,
    caps: Mapping[str, int] | None = None,
    sections: Sequence[str] = DEFAULT_SECTIONS,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    dpkg_info_dir: str = DPKG_INFO_DIR,
) -> dict[str, Any]:
  """Writes the prose shards and the task-related transfer set, with ``manifest.json``.

  ``out_dir/prose-*.txt``: the paragraphs of `sources` in that order, each
  source up to its cap (:data:`DEFAULT_PROSE_CAPS`), a paragraph kept
  once. Its ``'debian'`` source holds only descriptions of source packages
  in the Section task's train split (:func:`split_of_source` with the same
  fractions), so nothing of the task's validation or test text is in it.
  ``out_dir/transfer-*.txt``: the paragraphs of the descriptions of train
  source packages in `sections`, without labels (the unlabelled transfer
  set of pre-trained distillation).

  Args:
    out_dir: where the shards and ``manifest.json`` go.
    descriptions: every Debian description (:func:`read_package_lists`).
    cache_dir: where packages are downloaded and extracted.
    apt_options: from :func:`~kdjax.data._debian.private_apt_options`.
    sources: the prose sources, a subset of :data:`PROSE_SOURCES`.
    caps: bytes per source, overriding :data:`DEFAULT_PROSE_CAPS`.
    sections: the task's Sections (for the transfer set).
    val_fraction: the task's split, as for :func:`make_section_splits`.
    test_fraction: likewise.
    dpkg_info_dir: dpkg's file lists (man pages of installed Debian packages).

  Returns:
    The manifest: per source the paragraphs, bytes and documents read, and
    the shards of both sets.
  """
  for source in sources:
    if source not in PROSE_SOURCES:
      raise ValueError(f'sources: {source!r} is not one of {PROSE_SOURCES}')
  caps = {**DEFAULT_PROSE_CAPS, **(caps or {})}
  train = [d for d in descriptions if split_of_source(
      d.source, val_fraction=val_fraction, test_fraction=test_fraction) == 'train']
  cache_dir = os.fspath(cache_dir)
  seen, prose, report = set(), [], {}
  for source in sources:
    documents = prose_documents(source, cache_dir=cache_dir, apt_options=apt_options,
                                descriptions=train, dpkg_info_dir=dpkg_info_dir,
                                installed_packages=[d.package for d in descriptions])
    kept, read = clean_paragraphs(documents, max_bytes=caps[source], seen=seen)
    prose += kept
    report[source] = {'paragraphs': len(kept), 'documents_read': read,
                      'bytes': sum(len(p.encode('utf-8')) + 1 for p in kept)}
  related = [d for d in train if d.section in set(sections)]
  transfer, _ = clean_paragraphs(
      (_sentences.rst_paragraphs(d.text) for d in related), max_bytes=2**62, seen=set())
  manifest = {
      'format': 'UTF-8 text, one paragraph a line',
      'sources': report,
      'prose': write_text_shards(out_dir, prose, prefix='prose'),
      'transfer': write_text_shards(out_dir, transfer, prefix='transfer'),
      'transfer_sections': list(sections),
      'split': {'val_fraction': val_fraction, 'test_fraction': test_fraction},
  }
  _builder.write_json(os.path.join(os.fspath(out_dir), 'manifest.json'), manifest)
  return manifest


def read_text_shards(out_dir: str | os.PathLike[str], *, kind: str = 'prose') -> list[str]:
  """The paragraphs of the ``'prose'`` or ``'transfer'`` shards a manifest lists, in order."""
  with open(os.path.join(os.fspath(out_dir), 'manifest.json'), encoding='utf-8') as f:
    manifest = json.load(f)
  if kind not in ('prose', 'transfer'):
    raise ValueError(f"kind must be 'prose' or 'transfer', got {kind!r}")
  return [line for shard in manifest[kind]
          for line in _read(os.path.join(os.fspath(out_dir), shard['file'])).split('\n')[:-1]]


# ------------------------------------------------------------ TFDS builder

METADATA_FILE = 'debian_sections_metadata.json'
DESCRIPTIONS_FILE = 'descriptions.jsonl'

_DESCRIPTION = """\
Debian package long descriptions labelled with their Section: a balanced
10-way text classification task, split by source package. The text is
raw (tokenise it with the model's tokenizer); the build's per-split counts
are in `debian_sections_metadata.json`. See kdjax's docs/data.md.
"""


def section_arrays(
    splits: Mapping[str, Sequence[PackageDescription]], sections: Sequence[str]
) -> _builder.SplitArrays:
  """``{split: {'text', 'label', 'package', 'source'}}`` arrays, label ``i`` = ``sections[i]``."""
  index = {s: i for i, s in enumerate(sections)}
  return {
      split: {
          'text': np.array([d.text for d in items], dtype=str),
          'label': np.array([index[d.section] for d in items], dtype=np.int64),
          'package': np.array([d.package for d in items], dtype=str),
          'source': np.array([d.source for d in items], dtype=str),
      }
      for split, items in splits.items()
  }


class DebianSections(_builder.OfflineArrayBuilder):
  """Debian package descriptions labelled with their Section, split by source package.

  Registered in the TFDS catalogue as 'debian_sections' when `kdjax.data`
  is imported; read a prepared build with ``load_source('debian_sections',
  'train', data_dir=...)``. Examples are ``{'text': str, 'label': int64
  (index into the Sections), 'package': str, 'source': str}``, in
  (label, package) order; a data source gives the text features as UTF-8
  ``bytes``. Building runs ``apt-get update`` into a private state under
  `cache_dir` (:func:`fetch_descriptions`), unless `descriptions_file`
  gives the descriptions (JSON lines, as :func:`write_descriptions`
  writes them, e.g. a build's own ``descriptions.jsonl``). The build's
  directory also holds ``debian_sections_metadata.json``.

  Args:
    descriptions_file: build from these descriptions instead of apt's lists.
    cache_dir: the private apt state (``<data_dir>/downloads/debian`` when None).
    sections: the classes.
    per_class: as for :func:`make_section_splits`.
    val_fraction: likewise.
    test_fraction: likewise.
    **kwargs: for ``tfds.core.GeneratorBasedBuilder`` (``data_dir``, ...).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: Debian 12 lists, 10 Sections.'}
  DESCRIPTION = _DESCRIPTION
  HOMEPAGE = 'https://www.debian.org/distrib/packages'
  LICENSE = 'Each description under its package license (see debian/copyright)'
  SUPERVISED_KEYS = ('text', 'label')

  def __init__(
      self,
      *,
      descriptions_file: str | os.PathLike[str] | None = None,
      cache_dir: str | os.PathLike[str] | None = None,
      sections: Sequence[str] = DEFAULT_SECTIONS,
      per_class: int = 1400,
      val_fraction: float = 0.1,
      test_fraction: float = 0.1,
      **kwargs: Any,
  ):
    self._descriptions_file = None if descriptions_file is None else os.fspath(descriptions_file)
    self._cache_dir = cache_dir
    self._sections = tuple(sections)
    self._split_options = dict(
        sections=self._sections, per_class=per_class, val_fraction=val_fraction,
        test_fraction=test_fraction)
    super().__init__(**kwargs)

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        'text': tfds.features.Text(),
        'label': tfds.features.ClassLabel(names=list(self._sections)),
        'package': tfds.features.Text(),
        'source': tfds.features.Text(),
    })

  def _split_arrays(self) -> _builder.SplitArrays:
    if self._descriptions_file is not None:
      descriptions, origin = read_descriptions(self._descriptions_file), self._descriptions_file
    else:
      cache_dir = self._cache_dir or os.path.join(self._data_dir_root, 'downloads', 'debian')
      descriptions, origin = fetch_descriptions(cache_dir), 'apt-get update'
    splits, report = make_section_splits(descriptions, **self._split_options)
    # self.data_dir is TFDS's temporary build directory here.
    os.makedirs(self.data_dir, exist_ok=True)
    write_descriptions(os.path.join(self.data_dir, DESCRIPTIONS_FILE), descriptions)
    _builder.write_json(os.path.join(self.data_dir, METADATA_FILE), {
        **report, 'descriptions': len(descriptions), 'origin': origin,
        'examples': {split: len(items) for split, items in splits.items()}})
    return section_arrays(splits, self._sections)


def make_glue_arrays(
    config: str = 'sst2', *, data_dir: str | None = None, download: bool = True
) -> _builder.SplitArrays:
  """A single-sentence GLUE task through TFDS in :class:`DebianSections`' format.

  For users with network: ``tfds.data_source('glue/<config>')``. GLUE's
  test labels are hidden (-1), so its ``validation`` split serves as test
  and is also returned as ``validation``; choose on a slice of train
  instead when that matters.

  Args:
    config: ``'sst2'`` or ``'cola'`` (the one-sentence tasks).
    data_dir: the TFDS data directory.
    download: let TFDS download and prepare a missing dataset.

  Returns:
    ``{'train', 'validation', 'test': {'text': str [n], 'label': int64 [n]}}``.
  """
  if config not in ('sst2', 'cola'):
    raise ValueError(f"config must be 'sst2' or 'cola' (one-sentence GLUE tasks), got {config!r}")
  arrays = {}
  for split in ('train', 'validation'):
    source = tfds.data_source(f'glue/{config}', split=split, data_dir=data_dir, download=download)
    examples = [source[i] for i in range(len(source))]
    arrays[split] = {
        'text': np.array([_translation._as_str(ex['sentence']) for ex in examples], dtype=str),
        'label': np.array([int(ex['label']) for ex in examples], dtype=np.int64),
    }
  arrays['test'] = arrays['validation']
  return arrays
