"""English->X sentence pairs for several languages at once, split by catalog for all of them.

For multilingual sentence embeddings by distillation (Reimers & Gurevych,
2020, arXiv:2004.09813) the student learns from English->German, French
and Spanish pairs together and is evaluated on catalogs it never saw. The
pairs are the gettext catalogs' of :mod:`kdjax.data._gettext` (fetched with
``apt-get download``, read, normalised and deduplicated the same way); what
this module adds:

* :func:`gettext_multilingual_pairs`: one call for several languages, the
  normalised pairs cached as ``<cache>/pairs/<lang>-n<version>-<hash>.tsv``
  (the hash is the package list's), so a rerun reads TSV files instead of
  the catalogs.
* :func:`make_multilingual_splits`: the catalogs are assigned to train,
  validation and test ONCE, from the union of every language's pairs, so a
  catalog is in the same split for every language (a German test string's
  program never trains the French side either); within a split and language
  each source keeps one target; a held-out source that occurs in train (in
  any language) is dropped, and a test source that occurs in validation.
* :func:`read_pairs_dir` / :func:`write_pairs_dir`: ``<dir>/<lang>.tsv``
  files (:func:`~kdjax.data.write_pairs`' format), how the shipped test
  sample and a user's own pairs come in.
* :func:`ted_multi_pairs`: the same pairs from TFDS's
  ``ted_multi_translate`` (TED talk transcripts, 60 languages) for users
  with network; the talk plays the catalog's part.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
import hashlib
import os
from typing import Any

import tensorflow_datasets as tfds

from kdjax.data import _gettext

TranslationPair = _gettext.TranslationPair
MULTILINGUAL_LANGUAGES = ('de', 'fr', 'es')
SPLITS = _gettext.TRANSLATION_SPLITS


def default_cache_dir() -> str:
  """``$KDJAX_CACHE/gettext`` or ``~/.cache/kdjax/gettext``: packages and pairs files."""
  root = os.environ.get('KDJAX_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'kdjax')
  return os.path.join(root, 'gettext')


def _check_languages(langs: Sequence[str]) -> tuple[str, ...]:
  langs = tuple(langs)
  if not langs or len(set(langs)) != len(langs) or 'en' in langs:
    raise ValueError(f'langs must be distinct non-English language codes, got {langs}')
  return langs


def write_pairs_dir(directory: str | os.PathLike[str],
                    pairs_by_lang: Mapping[str, Sequence[TranslationPair]]) -> None:
  """Writes ``<directory>/<lang>.tsv`` for each language (:func:`~kdjax.data.write_pairs`)."""
  os.makedirs(directory, exist_ok=True)
  for lang, pairs in pairs_by_lang.items():
    _gettext.write_pairs(os.path.join(directory, f'{lang}.tsv'), pairs)


def read_pairs_dir(directory: str | os.PathLike[str],
                   langs: Sequence[str] = MULTILINGUAL_LANGUAGES) -> dict[str, list[TranslationPair]]:
  """Reads ``<directory>/<lang>.tsv`` for each of `langs`; a missing file is an error naming it."""
  out = {}
  for lang in _check_languages(langs):
    path = os.path.join(os.fspath(directory), f'{lang}.tsv')
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'{path} does not exist: a pairs directory holds <lang>.tsv for each of {list(langs)} '
          '(catalog<TAB>English<TAB>translation lines)')
    out[lang] = _gettext.read_pairs(path)
  return out


def gettext_multilingual_pairs(
    langs: Sequence[str] = MULTILINGUAL_LANGUAGES,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    packages: Sequence[str] = _gettext.DEFAULT_PACKAGES,
) -> tuple[dict[str, list[TranslationPair]], dict[str, Any]]:
  """The normalised English->`lang` pairs of the Debian catalogs, for each language.

  Fetches the packages once (:func:`~kdjax.data.fetch_catalogs`, into
  ``cache_dir``), reads each language's catalogs with
  :func:`~kdjax.data.collect_pairs` and keeps the result as a TSV file
  under ``cache_dir/pairs``, named by the normalisation version and a hash
  of `packages`, which later calls read instead.

  Args:
    langs: gettext language codes.
    cache_dir: the package cache (default :func:`default_cache_dir`).
    packages: Debian packages whose catalogs are read.

  Returns:
    ``({lang: pairs}, report)``; the report has, per language, the pairs
    file and (when the catalogs were read in this call) the read/drop counts.
  """
  langs = _check_languages(langs)
  cache_dir = os.fspath(cache_dir or default_cache_dir())
  tag = hashlib.sha256('\n'.join(sorted(packages)).encode()).hexdigest()[:10]
  pairs_by_lang, report = {}, {}
  for lang in langs:
    path = os.path.join(cache_dir, 'pairs',
                        f'{lang}-n{_gettext.NORMALISATION_VERSION}-{tag}.tsv')
    if os.path.exists(path):
      pairs_by_lang[lang] = _gettext.read_pairs(path)
      report[lang] = {'pairs_file': path, 'pairs': len(pairs_by_lang[lang])}
      continue
    files, versions = _gettext.fetch_catalogs(lang, cache_dir=cache_dir, packages=packages)
    pairs, collected = _gettext.collect_pairs(files)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _gettext.write_pairs(path, pairs)
    pairs_by_lang[lang] = pairs
    report[lang] = {'pairs_file': path, 'pairs': len(pairs), 'catalogs': len(files),
                    'packages': len(versions), **collected}
  return pairs_by_lang, report


def make_multilingual_splits(
    pairs_by_lang: Mapping[str, Sequence[TranslationPair]],
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    min_eval_pairs: int = 100,
) -> tuple[dict[str, dict[str, list[TranslationPair]]], dict[str, Any]]:
  """Train/validation/test pairs per language, every catalog in one split for all languages.

  The catalogs are assigned by :func:`~kdjax.data.split_catalogs` on the
  union of the languages' pairs (so its sizes count English sources found
  in any language). Then, for each language and split in the order train,
  validation, test: each source keeps one target (the most frequent across
  the split's catalogs, ties by the smallest string), and a held-out pair
  is dropped when its English source occurs in an earlier split in ANY
  language: no English sentence of the evaluation was trained on.

  Args:
    pairs_by_lang: ``{lang: normalised pairs}``.
    val_fraction: share of own sources wanted in validation.
    test_fraction: share of own sources wanted in test.
    min_eval_pairs: fewest pairs each language's validation and test must
      keep; fewer raises ValueError naming the language and split.

  Returns:
    ``({split: {lang: pairs}}, report)``; the report lists each split's
    catalogs and, per language, its pair counts.
  """
  if not pairs_by_lang:
    raise ValueError('pairs_by_lang is empty; give at least one language')
  _check_languages(list(pairs_by_lang))
  union = [p for pairs in pairs_by_lang.values() for p in pairs]
  catalogs = _gettext.split_catalogs(union, val_fraction=val_fraction,
                                     test_fraction=test_fraction)
  split_of = {c: split for split, names in catalogs.items() for c in names}
  grouped = collections.defaultdict(list)
  for lang, pairs in pairs_by_lang.items():
    for pair in pairs:
      grouped[split_of[pair.catalog], lang].append(pair)
  splits = {split: {} for split in SPLITS}
  report = {split: {'catalogs': catalogs[split]} for split in SPLITS}
  seen = set()
  for split in SPLITS:
    kept_sources = set()
    for lang in pairs_by_lang:
      deduplicated = _gettext._one_target_per_source(grouped[split, lang])  # pylint: disable=protected-access
      kept = [p for p in deduplicated if p.source not in seen]
      kept_sources.update(p.source for p in kept)
      splits[split][lang] = kept
      report[split][lang] = {'deduplicated': len(deduplicated),
                             'dropped_seen': len(deduplicated) - len(kept), 'pairs': len(kept)}
    seen |= kept_sources
  for split in ('validation', 'test'):
    for lang, pairs in splits[split].items():
      if len(pairs) < min_eval_pairs:
        raise ValueError(
            f'split {split!r} of language {lang!r} has {len(pairs)} pairs, fewer than '
            f'min_eval_pairs={min_eval_pairs}; raise val_fraction/test_fraction '
            f'({val_fraction}/{test_fraction}) or add catalogs')
  return splits, report


def ted_multi_pairs(example: Mapping[str, Any],
                    langs: Sequence[str] = MULTILINGUAL_LANGUAGES) -> dict[str, TranslationPair]:
  """The English->`lang` pairs of one TFDS ``ted_multi_translate`` example.

  An example holds one sentence of a talk in many languages
  (``translations: {'language': [...], 'translation': [...]}``) and the
  ``talk_name``, which becomes the pair's catalog (split by talk as the
  gettext pairs are split by catalog). Text is normalised with
  :func:`~kdjax.data.normalise_text`. Languages the example lacks, or an
  example without English, give no pair.

  Args:
    example: one example as NumPy (bytes or str values).
    langs: the target languages.

  Returns:
    ``{lang: pair}`` for the languages present.
  """
  decode = lambda v: v.decode('utf-8') if isinstance(v, bytes) else str(v)
  translations = example['translations']
  texts = dict(zip((decode(l) for l in translations['language']),
                   (decode(t) for t in translations['translation'])))
  if 'en' not in texts:
    return {}
  source = _gettext.normalise_text(texts['en'])
  talk = decode(example['talk_name'])
  out = {}
  for lang in _check_languages(langs):
    raw = texts.get(lang, '')
    target = '' if raw.strip() == '__NULL__' else _gettext.normalise_text(raw)  # TED's gap mark
    if source and target:
      out[lang] = TranslationPair(source=source, target=target, catalog=talk)
  return out


def load_ted_multi_pairs(
    split: str, langs: Sequence[str] = MULTILINGUAL_LANGUAGES, *, data_dir: str | None = None,
) -> dict[str, list[TranslationPair]]:
  """English->`lang` pairs of a ``ted_multi_translate`` split (TFDS; needs network once).

  TED's own train/validation/test splits are by talk. Reading this
  dataset needs TensorFlow installed (TFDS's own requirement).
  """
  dataset = tfds.as_numpy(tfds.load('ted_multi_translate', split=split, data_dir=data_dir))
  out = {lang: [] for lang in _check_languages(langs)}
  for example in dataset:
    for lang, pair in ted_multi_pairs(example, langs).items():
      out[lang].append(pair)
  return out

