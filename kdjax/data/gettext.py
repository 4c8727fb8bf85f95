"""Builds the English->German/French gettext translation dataset.

Usage::

  python -m kdjax.data.gettext --lang de --out DIR [--cache DIR] [--vocab-size 8000]

fetches the Debian packages (``apt-get download``, no root needed) into the
cache, builds ``DIR/gettext_translation/<lang>/1.0.0`` (array_record splits,
``tokenizer.json``, ``translation_metadata.json``, ``pairs.tsv``) and prints
the counts per split. Read it with
``kdjax.data.load_source('gettext_translation/de', 'train', data_dir=DIR)``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import os

from kdjax.data import _gettext
from kdjax.data import _translation


def main(argv: Sequence[str] | None = None) -> dict:
  """Builds one language's dataset; returns its metadata (also printed as JSON)."""
  parser = argparse.ArgumentParser(prog='python -m kdjax.data.gettext', description=__doc__.split('\n')[0])
  parser.add_argument('--lang', required=True, choices=_gettext.LANGUAGES)
  parser.add_argument('--out', required=True, help='the TFDS data directory to build into')
  parser.add_argument('--cache', default=None, help='package cache (default OUT/downloads/gettext)')
  parser.add_argument('--pairs', default=None, help='build from this pairs TSV instead of fetching')
  parser.add_argument('--vocab-size', type=int, default=8000)
  args = parser.parse_args(argv)
  builder = _translation.GettextTranslation(
      config=args.lang, data_dir=args.out, cache_dir=args.cache, pairs_file=args.pairs,
      vocab_size=args.vocab_size)
  builder.download_and_prepare()
  metadata = _translation.translation_metadata(builder.data_dir)
  print(os.path.abspath(builder.data_dir))
  print(json.dumps({k: metadata[k] for k in ('lang', 'normalised_pairs', 'vocab_size')}))
  for split, report in metadata['splits'].items():
    print(split, json.dumps({k: v for k, v in report.items() if k != 'catalogs'}),
          f"{len(report['catalogs'])} catalogs")
  return metadata


if __name__ == '__main__':
  main()
