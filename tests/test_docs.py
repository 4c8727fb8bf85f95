"""The documentation cannot rot: its examples run and its Sphinx build passes.

* Every ```python block in ``docs/*.md`` is executed, page by page, in order,
  in one namespace per page (so a later block may use an earlier block's
  names). A block preceded by a ``<!-- skip-test -->`` line is skipped.
* The Sphinx build (MyST pages + autodoc API reference) runs with warnings as
  errors, so a broken docstring, a dangling toctree entry or a missing module
  fails the suite.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import subprocess
import sys
import types

import pytest
from sphinx import addnodes

DOCS = pathlib.Path(__file__).resolve().parent.parent / 'docs'
SKIP_MARKER = '<!-- skip-test -->'
_FENCE = re.compile(r'^(`{3,})\s*python\s*$')


def python_blocks(text: str) -> list[tuple[int, str]]:
  """``(first line number, source)`` of each ```python block not marked skip.

  The source is padded with blank lines so that line numbers in a traceback
  are line numbers of the markdown file.
  """
  lines = text.splitlines()
  blocks = []
  i = 0
  while i < len(lines):
    match = _FENCE.match(lines[i].strip())
    if not match:
      i += 1
      continue
    fence = match.group(1)
    previous = next((l.strip() for l in reversed(lines[:i]) if l.strip()), '')
    start = i + 1
    end = start
    while end < len(lines) and lines[end].strip() != fence:
      end += 1
    if end == len(lines):
      raise ValueError(f'unclosed ```python block at line {i + 1}')
    if previous != SKIP_MARKER:
      blocks.append((start + 1, '\n' * start + '\n'.join(lines[start:end]) + '\n'))
    i = end + 1
  return blocks


def test_python_blocks_parser():
  text = '\n'.join([
      '# t', '```python', 'a = 1', '```', '', SKIP_MARKER, '', '```python',
      'raise SystemExit', '```', '```bash', 'ls', '```', '````python', 'b = a',
      '# ```', 'c = 2', '````',
  ])
  blocks = python_blocks(text)
  assert [line for line, _ in blocks] == [3, 15]
  namespace = {}
  for _, source in blocks:
    exec(compile(source, 'text.md', 'exec', dont_inherit=True), namespace)  # pylint: disable=exec-used
  assert namespace['b'] == 1 and namespace['c'] == 2


PAGES = sorted(
    p for p in [*DOCS.glob('*.md'), DOCS.parent / 'README.md'] if python_blocks(p.read_text())
)


def test_pages_have_examples():
  names = {p.name for p in PAGES}
  assert {'index.md', 'objective.md', 'models.md', 'README.md'} <= names, names


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_page_examples_run(page, monkeypatch):
  # A real module, so that dataclasses (linen modules) can find their module.
  module = types.ModuleType(f'docs_{page.stem}')
  monkeypatch.setitem(sys.modules, module.__name__, module)
  for _, source in python_blocks(page.read_text()):
    # dont_inherit: this file's `from __future__` imports must not leak in.
    code = compile(source, str(page), 'exec', dont_inherit=True)
    exec(code, module.__dict__)  # pylint: disable=exec-used


def test_sphinx_build(tmp_path):
  # Sphinx's `dummy` builder reads every page, runs autodoc and resolves every
  # cross-reference (where the warnings come from) but writes no HTML: about
  # two thirds of the html build's CPU time (30 against 45 s measured here).
  # `make docs` builds the HTML itself.
  doctrees = tmp_path / 'doctrees'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run(
      [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b', 'dummy',
       '-d', str(doctrees), str(DOCS), str(tmp_path / 'out')],
      capture_output=True, text=True, timeout=300, env=env, check=False,
  )
  assert proc.returncode == 0, f'sphinx failed:\n{proc.stdout}\n{proc.stderr}'
  for name in ('index', 'objective', 'models', 'api'):
    assert (doctrees / f'{name}.doctree').exists(), name
  with open(doctrees / 'api.doctree', 'rb') as f:
    api = pickle.load(f)  # a doctree Sphinx just wrote in this test
  documented = {i for node in api.findall(addnodes.desc_signature) for i in node['ids']}
  for name in ('kdjax.step.make_train_step', 'kdjax.losses.kl_divergence',
               'kdjax.adapters.from_linen', 'kdjax.objective.Objective', 'kdjax.step.TrainState'):
    assert name in documented, f'{name} has no entry in api: did autodoc run?'
