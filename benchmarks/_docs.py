"""Writes one generated section of docs/performance.md, keeping the rest."""

from __future__ import annotations

import pathlib
import re

DOCS = pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'performance.md'


def write_section(title: str, section: str, path: pathlib.Path = DOCS) -> None:
  """Replaces (or appends) the ``title`` section of `path`, keeping the rest."""
  text = path.read_text() if path.exists() else '# Performance\n'
  pattern = re.compile(rf'^{re.escape(title)}\n.*?(?=^## |\Z)', re.M | re.S)
  if pattern.search(text):
    text = pattern.sub(lambda _: section.rstrip('\n') + '\n\n', text, count=1)
    text = text.rstrip('\n') + '\n'
  else:
    text = text.rstrip('\n') + '\n\n' + section.rstrip('\n') + '\n'
  path.write_text(text)
