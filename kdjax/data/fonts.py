"""Builds the font-glyph image dataset from Debian's font packages.

Usage::

  python -m kdjax.data.fonts --out DIR [--cache DIR] [--font-dir DIR] [--seed 0]
      [--train 50000 --validation 5000 --test 10000]

fetches the packages (``apt-get download``, no root needed) into the cache,
renders the images and builds ``DIR/font_glyphs/1.0.0`` (array_record
splits and ``font_glyphs_metadata.json``), then prints the faces and images
per split. Read it with
``kdjax.data.load_source('font_glyphs', 'train', data_dir=DIR)``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import os

from kdjax.data import _fonts


def main(argv: Sequence[str] | None = None) -> dict:
  """Builds the dataset; returns its metadata (the counts are also printed)."""
  parser = argparse.ArgumentParser(prog='python -m kdjax.data.fonts', description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='the TFDS data directory to build into')
  parser.add_argument('--cache', default=None, help='package cache (default OUT/downloads/fonts)')
  parser.add_argument('--font-dir', default=None, help='use the fonts under this directory instead of fetching')
  parser.add_argument('--seed', type=int, default=0)
  for split, size in _fonts.DEFAULT_SIZES.items():
    parser.add_argument(f'--{split}', type=int, default=size, help=f'{split} images')
  parser.add_argument('--validation-units', type=int, default=_fonts.DEFAULT_VALIDATION_UNITS)
  parser.add_argument('--test-units', type=int, default=_fonts.DEFAULT_TEST_UNITS)
  args = parser.parse_args(argv)
  builder = _fonts.FontGlyphs(
      data_dir=args.out, cache_dir=args.cache, font_dir=args.font_dir, seed=args.seed,
      sizes={split: getattr(args, split) for split in _fonts.FONT_SPLITS},
      num_validation_units=args.validation_units, num_test_units=args.test_units)
  builder.download_and_prepare()
  metadata = _fonts.font_glyphs_metadata(builder.data_dir)
  print(os.path.abspath(builder.data_dir))
  for split, report in metadata['splits'].items():
    print(split, json.dumps({'images': report['images'], 'units': len(report['units']),
                             'faces': len(report['faces'])}))
  return metadata


if __name__ == '__main__':
  main()
