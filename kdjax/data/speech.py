"""Builds the offline speech dataset (espeak-ng + MBROLA) for FastSpeech-style models.

Usage::

  python -m kdjax.data.speech --out DIR --num 2000 [--seed 0] [--voices us1,us2] [--cache DIR]

fetches espeak-ng, MBROLA and its us1/us2 voices and the Python
documentation (``apt-get download`` with a private apt state, no root, no
system install) into the cache, synthesises `num` utterances in resumable
chunks (rerun the same command after an interruption: it continues at the
first missing chunk), and builds ``DIR/speech_features/mbrola/1.0.0``
(array_record splits, ``phonemes.json``, ``speech_metadata.json``). Read it
with ``kdjax.data.load_source('speech_features/mbrola', 'train', data_dir=DIR)``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import os
import sys

from kdjax.data import _speech


def main(argv: Sequence[str] | None = None) -> dict:
  """Builds the dataset; returns its metadata (also printed as JSON)."""
  parser = argparse.ArgumentParser(prog='python -m kdjax.data.speech',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='the TFDS data directory to build into')
  parser.add_argument('--num', type=int, default=2000, help='utterances to synthesise')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--renditions', type=int, default=1, help='utterances per sentence')
  parser.add_argument('--voices', default='us1,us2',
                      help='MBROLA voices, comma-separated (us1 female, us2 male)')
  parser.add_argument('--cache', default=None, help=f'default {_speech.default_cache_dir()}')
  parser.add_argument('--chunk-size', type=int, default=50)
  parser.add_argument('--workers', type=int, default=2)
  args = parser.parse_args(argv)
  builder = _speech.SpeechFeatures(
      config='mbrola', data_dir=args.out, num=args.num, seed=args.seed,
      renditions=args.renditions, voices=args.voices.split(','), cache_dir=args.cache, chunk_size=args.chunk_size,
      workers=args.workers, log=lambda line: print(line, file=sys.stderr, flush=True))
  builder.download_and_prepare()
  with open(os.path.join(builder.data_dir, _speech.METADATA_FILE), encoding='utf-8') as f:
    metadata = json.load(f)
  print(os.path.abspath(builder.data_dir))
  print(json.dumps({k: metadata[k] for k in ('examples', 'sentences') if k in metadata}))
  return metadata


if __name__ == '__main__':
  main()
