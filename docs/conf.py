"""Sphinx configuration for the kdjax documentation.

Build with ``make docs`` or ``python -m sphinx -W -b html docs docs/_build/html``.
The pages are MyST markdown; the API reference is generated from the Google
style docstrings by autodoc + napoleon. ``tests/test_docs.py`` runs this build
(warnings are errors) and executes every ``python`` block in the pages.
"""

import os
import sys

# Import kdjax from this checkout, on CPU (autodoc only needs to import it).
sys.path.insert(0, os.path.abspath('..'))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

project = 'kdjax'
author = 'the kdjax authors'
copyright = '2025, the kdjax authors'  # pylint: disable=redefined-builtin

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
    'myst_parser',
]

source_suffix = {'.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']

# MyST: ```{eval-rst} blocks for autodoc, $...$ maths, anchors for headings.
myst_enable_extensions = ['dollarmath', 'colon_fence']
myst_heading_anchors = 3

# autodoc + napoleon (Google style docstrings).
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
autodoc_default_options = {'show-inheritance': False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

html_theme = 'alabaster'
html_title = 'kdjax'
html_theme_options = {
    'description': 'Knowledge distillation in JAX and Flax',
    'fixed_sidebar': True,
}
