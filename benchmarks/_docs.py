"""Writes one generated section of docs/performance.md, keeping the rest, and
judges whether a run's machine was quiet enough for its timings to count."""

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


def load_warning(start: float, end: float, *, max_start: float,
                 max_end: float) -> str | None:
  """A sentence when the machine was too busy for a run's timings to count.

  `start` and `end` are the 1-minute load averages (``os.getloadavg()[0]``)
  when the run began and ended; None when both are within their limits.
  (Runs taken at a load of 8-14 on the 2-core machine were off by 2x and
  reversed a conclusion.) A benchmark whose own threads keep both cores
  busy may allow its end a higher limit than its start.
  """
  if start <= max_start and end <= max_end:
    return None
  return (f'NOT A RESULT: the 1-minute load average was {start:.2f} at the start and '
          f'{end:.2f} at the end (limits {max_start:g} and {max_end:g}); other processes '
          'shared the cores, rerun on a quiet machine')
