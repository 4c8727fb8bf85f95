"""Builds the Debian Section task and, optionally, the English prose shards.

Usage::

  python -m kdjax.data.debian_text --out DIR [--cache DIR] [--prose]
      [--prose-sources debian,man,python_doc,linux_doc,fortunes] [--max-prose-mb 80]

runs ``apt-get update`` into a private state under the cache (no root
needed, nothing of the system's apt touched), builds
``DIR/debian_sections/1.0.0`` (array_record splits,
``debian_sections_metadata.json``, ``descriptions.jsonl``) and prints the
counts per split; with ``--prose`` it also writes ``DIR/debian_prose``
(text shards, ``manifest.json``). Read the task with
``kdjax.data.load_source('debian_sections', 'train', data_dir=DIR)`` and
the prose with ``kdjax.data.read_text_shards(DIR + '/debian_prose')``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import os
import time

from kdjax.data import _debian
from kdjax.data import _debian_text


def main(argv: Sequence[str] | None = None) -> dict:
  """Builds the task (and the prose); returns the build report (also printed as JSON)."""
  parser = argparse.ArgumentParser(prog='python -m kdjax.data.debian_text',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='the TFDS data directory to build into')
  parser.add_argument('--cache', default=None, help='apt state and packages (default OUT/downloads/debian)')
  parser.add_argument('--descriptions', default=None,
                      help='build the task from this descriptions JSONL instead of apt')
  parser.add_argument('--per-class', type=int, default=1400, help='examples per Section')
  parser.add_argument('--val-fraction', type=float, default=0.1)
  parser.add_argument('--test-fraction', type=float, default=0.1)
  parser.add_argument('--prose', action='store_true', help='also write the prose shards')
  parser.add_argument('--prose-sources', default=','.join(_debian_text.PROSE_SOURCES))
  parser.add_argument('--max-prose-mb', type=float, default=None,
                      help='scale the per-source caps so that the prose is at most this many MB')
  args = parser.parse_args(argv)
  cache = args.cache or os.path.join(args.out, 'downloads', 'debian')
  fractions = dict(val_fraction=args.val_fraction, test_fraction=args.test_fraction)
  start = time.time()
  builder = _debian_text.DebianSections(
      data_dir=args.out, cache_dir=cache, descriptions_file=args.descriptions,
      per_class=args.per_class, **fractions)
  builder.download_and_prepare()
  with open(os.path.join(builder.data_dir, _debian_text.METADATA_FILE), encoding='utf-8') as f:
    report = {'sections': json.load(f), 'sections_seconds': round(time.time() - start, 1)}
  print(os.path.abspath(builder.data_dir))
  print(json.dumps({k: report['sections'][k] for k in ('examples', 'per_class', 'descriptions')}))
  if args.prose:
    sources = [s for s in args.prose_sources.split(',') if s]
    caps = dict(_debian_text.DEFAULT_PROSE_CAPS)
    if args.max_prose_mb is not None:
      scale = min(1.0, args.max_prose_mb * 1e6 / sum(caps[s] for s in sources))
      caps = {s: int(c * scale) for s, c in caps.items()}
    # The 'debian' source alone needs no apt (a --descriptions build stays offline).
    options = _debian.private_apt_options(cache) if set(sources) - {'debian'} else []
    descriptions = _debian_text.read_descriptions(
        os.path.join(builder.data_dir, _debian_text.DESCRIPTIONS_FILE))
    manifest = _debian_text.write_prose_shards(
        os.path.join(args.out, 'debian_prose'), descriptions, cache_dir=cache,
        apt_options=options, sources=sources, caps=caps, **fractions)
    report['prose'] = manifest['sources']
    report['transfer_bytes'] = sum(s['bytes'] for s in manifest['transfer'])
    print(json.dumps({k: report[k] for k in ('prose', 'transfer_bytes')}))
  report['seconds'] = round(time.time() - start, 1)
  report['load_average'] = os.getloadavg()
  print(json.dumps({k: report[k] for k in ('seconds', 'load_average')}))
  return report


if __name__ == '__main__':
  main()
