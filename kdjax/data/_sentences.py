"""English sentences from prose on a Debian machine, cleaned for speech synthesis.

Three sources, each a set of documents (a document goes to one split
whole): the reST sources of the Python documentation (Debian's
python3.X-doc, ``_sources/**/*.rst.txt``), the licence texts under
``/usr/share/common-licenses``, and the long descriptions of Debian's
packages (``Translation-en`` of the package lists; one document per
package).

Paragraphs are what survive :func:`rst_paragraphs` (indented blocks,
directives, headings, tables and lists dropped, inline markup reduced to
its text); :func:`split_sentences` cuts them after ``.``, ``!`` or ``?``
followed by a capital; :func:`keep_sentence` keeps a sentence of
:data:`MIN_WORDS`-:data:`MAX_WORDS` words and at most :data:`MAX_CHARS`
characters made only of ASCII letters, digits, spaces and ``,.;:'"()!?-``,
starting with a capital and ending with ``.``, ``!`` or ``?``, with no
dotted token (``os.path``, ``e.g.``), and not mostly capitals.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
import glob
import os
import re

MIN_WORDS = 4
MAX_WORDS = 25
MAX_CHARS = 150
LICENSES_DIR = '/usr/share/common-licenses'

_ALLOWED = re.compile(r"^[A-Za-z0-9 ,.;:'\"()!?-]+$")
_DOTTED = re.compile(r'\w\.\w')
_SENTENCE_END = re.compile(r'(?<=[.!?])["\')]?\s+(?=["(]?[A-Z])')
_ROLE = re.compile(r':[\w:+-]+:`~?([^`<]*?)\s*(?:<[^`]*>)?`')
_LINK = re.compile(r'`([^`<]+?)\s*<[^`]*>`_{1,2}')
_MARKUP = re.compile(r'``([^`]+)``|\*\*([^*]+)\*\*|\*([^*]+)\*|`([^`]+)`_{0,2}')
_UNDERLINE = re.compile(r'^([=\-~^"\'`#*+.:_])\1{2,}\s*$')
_BULLET = re.compile(r'^\s*([*+-]|\d+\.|#\.)\s')


def _inline_text(text: str) -> str:
  """reST inline markup reduced to its text (roles, links, literals, emphasis)."""
  text = _ROLE.sub(lambda m: m[1].rsplit('.', 1)[-1] if m[0].split('`', 1)[1].startswith('~')
                   else m[1], text)
  text = _LINK.sub(r'\1', text)
  return _MARKUP.sub(lambda m: next(g for g in m.groups() if g is not None), text)


def rst_paragraphs(text: str) -> list[str]:
  """The prose paragraphs of a reST (or plain text) document, one line each.

  A paragraph is a run of non-blank lines. It is dropped when a line is
  indented (code, directive bodies, quotes), starts with ``..``
  (directives, comments, targets), is a heading over- or underline, a
  table border or row (``+--``, ``|``), or a list item.
  """
  paragraphs = []
  for block in re.split(r'\n\s*\n', text):
    lines = block.strip('\n').splitlines()
    if not lines or any(
        line[:1].isspace() or line.startswith(('..', '+-', '|', '>>>')) or _UNDERLINE.match(line)
        or _BULLET.match(line) for line in lines) or not any(c.isalpha() for c in block):
      continue
    paragraphs.append(_inline_text(' '.join(line.strip() for line in lines)))
  return paragraphs


def split_sentences(paragraph: str) -> list[str]:
  """A paragraph cut after ``.``, ``!`` or ``?`` (and a closing quote) before a capital."""
  return [s.strip() for s in _SENTENCE_END.split(' '.join(paragraph.split())) if s.strip()]


def keep_sentence(sentence: str) -> bool:
  """Whether a sentence is fit to synthesise (the rules: the module docstring)."""
  words = sentence.split()
  letters = [c for c in sentence if c.isalpha()]
  return (
      MIN_WORDS <= len(words) <= MAX_WORDS and len(sentence) <= MAX_CHARS
      and bool(_ALLOWED.match(sentence)) and sentence[0].isupper()
      and sentence[-1] in '.!?' and not _DOTTED.search(sentence)
      and sum(c.isupper() for c in letters) <= 0.3 * len(letters))


def document_sentences(text: str) -> list[str]:
  """The kept sentences of one document, in order, without repeats."""
  seen, kept = set(), []
  for paragraph in rst_paragraphs(text):
    for sentence in split_sentences(paragraph):
      if keep_sentence(sentence) and sentence not in seen:
        seen.add(sentence)
        kept.append(sentence)
  return kept


def read_documents(root: str, pattern: str, prefix: str) -> Iterator[tuple[str, str]]:
  """``(prefix/relative path, text)`` of the files matching `pattern` under `root`, sorted."""
  for path in sorted(glob.glob(os.path.join(root, pattern), recursive=True)):
    if os.path.isfile(path):
      with open(path, encoding='utf-8', errors='replace') as f:
        yield f'{prefix}/{os.path.relpath(path, root)}', f.read()


def debian_descriptions(translation_text: str) -> Iterator[tuple[str, str]]:
  """``('debian/<package>', long description)`` of a ``Translation-en`` package list.

  The long description's continuation lines lose their leading space and
  `` .`` lines (paragraph breaks) become blank lines, so
  :func:`rst_paragraphs` sees its paragraphs; the short description
  (a title, no sentence) is skipped.
  """
  for record in translation_text.split('\n\n'):
    package, lines, in_description = None, [], False
    for line in record.splitlines():
      if line.startswith('Package:'):
        package = line.split(':', 1)[1].strip()
      elif line.startswith('Description-en:'):
        in_description = True
      elif in_description and line.startswith(' '):
        lines.append('' if line.strip() == '.' else line[1:])
      else:
        in_description = False
    if package and lines:
      yield f'debian/{package}', '\n'.join(lines)


def collect_sentences(documents: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
  """``(document, sentence)`` pairs of the documents; a sentence is kept once, in its first document."""
  seen, pairs = set(), []
  for name, text in documents:
    for sentence in document_sentences(text):
      if sentence not in seen:
        seen.add(sentence)
        pairs.append((name, sentence))
  return pairs
