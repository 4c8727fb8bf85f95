"""A joint BPE tokenizer, padded token arrays and TFDS builders for translation pairs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import json
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from kdjax.data import _builder
from kdjax.data import _gettext

_SPECIAL_TOKENS = ('<pad>', '<s>', '</s>', '<unk>')
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
TranslationPair = _gettext.TranslationPair


# ---------------------------------------------------------------- tokenizer


class BpeTokenizer:
  """A byte-level BPE from the `tokenizers` package, with batch encode/decode to arrays.

  Ids 0-3 are ``<pad>``, ``<s>`` (BOS), ``</s>`` (EOS) and ``<unk>``
  (byte-level BPE never needs it; it is there so that the ids are fixed).
  Text is NFC-normalised; decoding an encoding gives the NFC text back.
  """

  def __init__(self, tokenizer):
    for token, index in zip(_SPECIAL_TOKENS, range(4)):
      if tokenizer.token_to_id(token) != index:
        raise ValueError(
            f'tokenizer: {token!r} has id {tokenizer.token_to_id(token)}, expected {index}')
    self.tokenizer = tokenizer

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size()

  def save(self, path: str | os.PathLike[str]) -> None:
    """Writes the tokenizer as ``tokenizer.json`` (the `tokenizers` format)."""
    self.tokenizer.save(os.fspath(path))

  @classmethod
  def load(cls, path: str | os.PathLike[str]) -> BpeTokenizer:
    """Reads a tokenizer written by :meth:`save`."""
    tokenizers = _import_tokenizers()
    return cls(tokenizers.Tokenizer.from_file(os.fspath(path)))

  def encode(
      self, texts: Sequence[str], max_length: int | None = None, *, add_eos: bool = False
  ) -> dict[str, np.ndarray]:
    """Encodes texts to a padded batch.

    Args:
      texts: ``n`` strings.
      max_length: columns of the batch; ``None``: the longest encoding. A
        longer encoding raises ValueError (truncation is the caller's
        choice: drop the example or cut its text).
      add_eos: append ``</s>`` (id 2) to each encoding.

    Returns:
      ``{'ids': int32 [n, max_length] (0 = padding), 'lengths': int32 [n],
      'mask': bool [n, max_length]}``.
    """
    ids = [e.ids + [EOS_ID] * add_eos for e in self.tokenizer.encode_batch(list(texts))]
    lengths = np.asarray([len(i) for i in ids], np.int32)
    width = int(lengths.max(initial=0)) if max_length is None else max_length
    if lengths.size and lengths.max() > width:
      row = int(lengths.argmax())
      raise ValueError(
          f'texts[{row}] encodes to {lengths[row]} tokens, more than '
          f'max_length={width}: {texts[row]!r}')
    out = np.zeros((len(ids), width), np.int32)
    for row, row_ids in enumerate(ids):
      out[row, : len(row_ids)] = row_ids
    return {'ids': out, 'lengths': lengths, 'mask': np.arange(width) < lengths[:, None]}

  def decode(self, ids: np.ndarray, lengths: np.ndarray | None = None) -> list[str]:
    """Decodes a batch ``[n, length]`` of ids to texts.

    Each row stops at its length (``lengths``) or, without lengths, at its
    first EOS; padding, BOS and EOS are skipped.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
      raise ValueError(f'ids must be [batch, length], got shape {ids.shape}')
    rows = []
    for row, row_ids in enumerate(ids.tolist()):
      if lengths is not None:
        row_ids = row_ids[: int(lengths[row])]
      elif EOS_ID in row_ids:
        row_ids = row_ids[: row_ids.index(EOS_ID)]
      rows.append(row_ids)
    return self.tokenizer.decode_batch(rows, skip_special_tokens=True)


def _import_tokenizers():
  return _builder.import_optional(
      'tokenizers', needed_for='The translation tokenizer', package='tokenizers')


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 8000) -> BpeTokenizer:
  """Trains a joint byte-level BPE on `texts` (both sides of the train split).

  Args:
    texts: training text, source and target sentences alike.
    vocab_size: the vocabulary size, special tokens and the 256 bytes
      included (fewer when the texts have fewer merges to offer).

  Returns:
    The trained :class:`BpeTokenizer`.
  """
  if vocab_size < len(_SPECIAL_TOKENS) + 256:
    raise ValueError(f'vocab_size must be at least {len(_SPECIAL_TOKENS) + 256}, got {vocab_size}')
  tokenizers = _import_tokenizers()
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token='<unk>'))
  tokenizer.normalizer = tokenizers.normalizers.NFC()
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(_SPECIAL_TOKENS), show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(texts, trainer=trainer)
  return BpeTokenizer(tokenizer)


def encode_translation_arrays(
    tokenizer: BpeTokenizer,
    sources: Sequence[str],
    targets: Sequence[str],
    *,
    max_source_length: int,
    max_target_length: int,
) -> dict[str, np.ndarray]:
  """Token arrays of a split: sources as they are, targets followed by EOS.

  Args:
    tokenizer: the split's tokenizer.
    sources: ``n`` source texts.
    targets: ``n`` target texts.
    max_source_length: source columns; a longer source raises.
    max_target_length: target columns (EOS included); a longer one raises.

  Returns:
    ``{'source': int32 [n, max_source_length], 'source_length': int32 [n],
    'target': int32 [n, max_target_length], 'target_length': int32 [n]}``
    (lengths count real tokens, the target's EOS included; the rest is
    padding, id 0).
  """
  if len(sources) != len(targets):
    raise ValueError(f'sources and targets differ in length: {len(sources)} != {len(targets)}')
  source = tokenizer.encode(sources, max_source_length)
  target = tokenizer.encode(targets, max_target_length, add_eos=True)
  return {
      'source': source['ids'], 'source_length': source['lengths'],
      'target': target['ids'], 'target_length': target['lengths'],
  }


def make_translation_arrays(
    splits: Mapping[str, Sequence[TranslationPair]],
    tokenizer: BpeTokenizer,
    *,
    max_source_length: int,
    max_target_length: int,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
  """Encodes every split, dropping the pairs that do not fit the lengths.

  Args:
    splits: ``{split: [pairs]}`` as from
      :func:`~kdjax.data.make_translation_splits`.
    tokenizer: the tokenizer (trained on the train split).
    max_source_length: source columns; a pair with a longer source is
      dropped.
    max_target_length: target columns, EOS included; likewise.

  Returns:
    ``(arrays, dropped)``: per split the arrays of
    :func:`encode_translation_arrays` plus ``'source_text'``,
    ``'target_text'`` and ``'catalog'`` (``str`` arrays), and
    per split the number of pairs dropped for their length.
  """
  arrays, dropped = {}, {}
  for split, pairs in splits.items():
    sources = tokenizer.encode([p.source for p in pairs])['lengths']
    targets = tokenizer.encode([p.target for p in pairs], add_eos=True)['lengths']
    fits = (sources <= max_source_length) & (targets <= max_target_length)
    kept = [p for p, ok in zip(pairs, fits) if ok]
    dropped[split] = len(pairs) - len(kept)
    encoded = encode_translation_arrays(
        tokenizer, [p.source for p in kept], [p.target for p in kept],
        max_source_length=max_source_length, max_target_length=max_target_length)
    for name, field in (('source_text', 'source'), ('target_text', 'target'),
                        ('catalog', 'catalog')):
      encoded[name] = np.asarray([getattr(p, field) for p in kept], dtype=str)
    arrays[split] = encoded
  return arrays, dropped


write_json = _builder.write_json


# ------------------------------------------------------------------ builders

TOKENIZER_FILE = 'tokenizer.json'
METADATA_FILE = 'translation_metadata.json'
PAIRS_FILE = 'pairs.tsv'

_DESCRIPTION = """\
English->{language} translation pairs from the GNU gettext catalogs (.mo) of
Debian 12 packages: the user-interface and message strings of GCC, the GNU
tools, git, GTK, GNOME and other desktops, GIMP, Inkscape, VLC and the ISO
code names, each with its {language} translation.

Strings are normalised (accelerator marks removed, printf/format
placeholders in one canonical `{{k}}`/`{{name}}` form, whitespace collapsed)
and filtered (untranslated, over 200 characters, multi-line blobs,
mismatched placeholders); whole catalogs are assigned to the train,
validation and test splits, each source keeps one target, and no
validation or test source occurs in train. The source and EOS-terminated
target are encoded with a joint byte-level BPE trained on the train split
(`tokenizer.json`, next to the data); the build's packages, versions and
counts are in `translation_metadata.json`. See kdjax's docs/data.md.
"""

_HOMEPAGE = 'https://www.gnu.org/software/gettext/'


class GettextConfig(tfds.core.BuilderConfig):
  """One target language and the padded lengths of its token arrays."""

  def __init__(
      self, *, lang: str, language: str, max_source_length: int = 64,
      max_target_length: int = 64, **kwargs: Any):
    super().__init__(name=lang, description=f'English->{language}', **kwargs)
    self.lang = lang
    self.language = language
    self.max_source_length = max_source_length
    self.max_target_length = max_target_length


class GettextTranslation(_builder.OfflineArrayBuilder):
  """English->German ('de'), French ('fr') or Spanish ('es') pairs from Debian's gettext catalogs.

  Registered in the TFDS catalogue as 'gettext_translation' when
  `kdjax.data` is imported; read a prepared build with
  ``load_source('gettext_translation/de', 'train', data_dir=...)``.
  Examples are ``{'source': int32 [64], 'source_length': int32,
  'target': int32 [64] (tokens, then EOS), 'target_length': int32 (EOS
  included), 'source_text': str, 'target_text': str, 'catalog': str}``,
  padding id 0, in (catalog, source) order. A data source gives the
  text features as UTF-8 ``bytes`` (TFDS's NumPy decoding of ``Text``).

  Building fetches the packages with ``apt-get download`` into
  `cache_dir` (see :func:`~kdjax.data.fetch_catalogs`), unless
  `pairs_file` gives the normalised pairs (as :func:`~kdjax.data.write_pairs`
  writes them, e.g. a build's own ``pairs.tsv``). TFDS builds into a
  temporary directory and renames it, so a build is complete or absent; the
  build's directory also holds ``tokenizer.json`` (:func:`load_tokenizer`),
  ``translation_metadata.json`` (:func:`translation_metadata`) and
  ``pairs.tsv``.

  Args:
    pairs_file: build from these normalised pairs instead of fetching.
    cache_dir: where packages are downloaded and extracted
      (``<data_dir>/downloads/gettext`` when None).
    packages: the Debian packages to read.
    vocab_size: the BPE vocabulary size.
    val_fraction: as for :func:`~kdjax.data.make_translation_splits`.
    test_fraction: likewise.
    min_eval_pairs: likewise.
    **kwargs: for ``tfds.core.GeneratorBasedBuilder`` (``config``,
      ``data_dir``, ...).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: Debian 12 catalogs, normalisation 1.'}
  BUILDER_CONFIGS = [
      GettextConfig(lang='de', language='German'),
      GettextConfig(lang='fr', language='French'),
      GettextConfig(lang='es', language='Spanish'),
  ]
  HOMEPAGE = _HOMEPAGE
  LICENSE = 'GPL-2.0-or-later (each catalog under its package license; see debian/copyright)'
  SUPERVISED_KEYS = ('source', 'target')

  def __init__(
      self,
      *,
      pairs_file: str | os.PathLike[str] | None = None,
      cache_dir: str | os.PathLike[str] | None = None,
      packages: Sequence[str] = _gettext.DEFAULT_PACKAGES,
      vocab_size: int = 8000,
      val_fraction: float = 0.05,
      test_fraction: float = 0.05,
      min_eval_pairs: int = 1000,
      **kwargs: Any,
  ):
    self._pairs_file = None if pairs_file is None else os.fspath(pairs_file)
    self._cache_dir = cache_dir
    self._packages = tuple(packages)
    self._vocab_size = vocab_size
    self._split_options = dict(
        val_fraction=val_fraction, test_fraction=test_fraction,
        min_eval_pairs=min_eval_pairs)
    super().__init__(**kwargs)

  @property
  def DESCRIPTION(self) -> str:  # pylint: disable=invalid-name
    return _DESCRIPTION.format(language=self.builder_config.language)

  def _features(self) -> tfds.features.FeaturesDict:
    config = self.builder_config
    return tfds.features.FeaturesDict({
        'source': tfds.features.Tensor(shape=(config.max_source_length,), dtype=np.int32),
        'source_length': tfds.features.Scalar(dtype=np.int32),
        'target': tfds.features.Tensor(shape=(config.max_target_length,), dtype=np.int32),
        'target_length': tfds.features.Scalar(dtype=np.int32),
        'source_text': tfds.features.Text(),
        'target_text': tfds.features.Text(),
        'catalog': tfds.features.Text(),
    })

  def _read_pairs(self) -> tuple[list[TranslationPair], dict[str, Any]]:
    if self._pairs_file is not None:
      return _gettext.read_pairs(self._pairs_file), {'pairs_file': self._pairs_file}
    cache_dir = self._cache_dir or os.path.join(self._data_dir_root, 'downloads', 'gettext')
    files, versions = _gettext.fetch_catalogs(
        self.builder_config.lang, cache_dir=cache_dir, packages=self._packages)
    pairs, report = _gettext.collect_pairs(files)
    root = os.path.join(os.fspath(cache_dir), 'extracted') + os.sep
    return pairs, {
        'packages': versions,
        'catalog_files': {c: [p.replace(root, '') for p in f] for c, f in files.items()},
        **report,
    }

  def _split_arrays(self) -> _builder.SplitArrays:
    config = self.builder_config
    pairs, source = self._read_pairs()
    splits, split_report = _gettext.make_translation_splits(pairs, **self._split_options)
    tokenizer = train_tokenizer(
        (text for p in splits['train'] for text in (p.source, p.target)),
        vocab_size=self._vocab_size)
    arrays, dropped = make_translation_arrays(
        splits, tokenizer, max_source_length=config.max_source_length,
        max_target_length=config.max_target_length)
    for split, report in split_report.items():
      report['dropped_too_many_tokens'] = dropped[split]
      report['examples'] = len(arrays[split]['source'])
    # self.data_dir is TFDS's temporary build directory here: these files
    # appear with the dataset, when it is renamed into place.
    os.makedirs(self.data_dir, exist_ok=True)
    tokenizer.save(os.path.join(self.data_dir, TOKENIZER_FILE))
    _gettext.write_pairs(os.path.join(self.data_dir, PAIRS_FILE), pairs)
    write_json(os.path.join(self.data_dir, METADATA_FILE), {
        'lang': config.lang,
        'normalisation_version': _gettext.NORMALISATION_VERSION,
        'vocab_size': tokenizer.vocab_size,
        'max_source_length': config.max_source_length,
        'max_target_length': config.max_target_length,
        'normalised_pairs': len(pairs),
        'splits': split_report,
        'source': source,
    })
    return arrays


def dataset_dir(source_or_dir: Any) -> str:
  """The version directory of a built dataset, from a data source of it or the directory."""
  info = getattr(source_or_dir, 'dataset_info', None)
  return os.fspath(info.data_dir if info is not None else source_or_dir)


def load_tokenizer(source_or_dir: Any) -> BpeTokenizer:
  """The tokenizer of a built translation dataset.

  Args:
    source_or_dir: a data source from :func:`~kdjax.data.load_source`, or
      the dataset's version directory (``.../gettext_translation/de/1.0.0``).
  """
  return BpeTokenizer.load(os.path.join(dataset_dir(source_or_dir), TOKENIZER_FILE))


def translation_metadata(source_or_dir: Any) -> dict[str, Any]:
  """The build record of a translation dataset: packages and versions, counts per split.

  Args:
    source_or_dir: as for :func:`load_tokenizer`.
  """
  with open(os.path.join(dataset_dir(source_or_dir), METADATA_FILE), encoding='utf-8') as f:
    return json.load(f)


# --------------------------------------------------------------- wmt14 (full)


def _as_str(text: Any) -> str:
  return text.decode('utf-8') if isinstance(text, bytes) else str(text)


#: The TFDS dataset of each '<lang>-en' pair: WMT'14 has no Spanish, WMT'13 does.
WMT_DATASETS = {'cs': 'wmt14_translate', 'de': 'wmt14_translate', 'fr': 'wmt14_translate',
                'hi': 'wmt14_translate', 'ru': 'wmt14_translate', 'es': 'wmt13_translate'}


def make_wmt14_arrays(
    pair: str = 'de-en',
    *,
    data_dir: str | None = None,
    vocab_size: int = 32000,
    max_source_length: int = 64,
    max_target_length: int = 64,
    max_tokenizer_examples: int | None = 1_000_000,
    download: bool = True,
) -> tuple[dict[str, dict[str, np.ndarray]], BpeTokenizer, dict[str, int]]:
  """WMT'14 (WMT'13 for Spanish) through TFDS in the gettext datasets' example format (English source).

  For users with network: ``tfds.data_source('wmt14_translate/<pair>')``,
  ``wmt13_translate/es-en`` for Spanish (:data:`WMT_DATASETS`)
  (prepared by TFDS on first use, several GB). The joint BPE is trained on
  the first `max_tokenizer_examples` train pairs, both sides; every split
  is encoded as :func:`make_translation_arrays` does, pairs that do not
  fit the lengths dropped. ``catalog`` is the split name (WMT has no
  catalogs).

  Args:
    pair: the TFDS config, ``'<lang>-en'`` for a `lang` of :data:`WMT_DATASETS`
      (``'de-en'``, ``'fr-en'``, ``'es-en'``, ...).
    data_dir: the TFDS data directory.
    vocab_size: the BPE vocabulary size.
    max_source_length: source columns.
    max_target_length: target columns, EOS included.
    max_tokenizer_examples: train pairs the BPE sees (``None``: all).
    download: let TFDS download and prepare a missing dataset.

  Returns:
    ``(arrays, tokenizer, dropped)`` as :func:`make_translation_arrays`
    returns them, with the tokenizer.
  """
  lang, english = pair.split('-') if '-' in pair else (pair, '')
  if english != 'en' or lang not in WMT_DATASETS:
    raise ValueError(f"pair must be one of {sorted(f'{k}-en' for k in WMT_DATASETS)} "
                     f"(wmt14_translate's configs, and es-en from wmt13_translate), got {pair!r}")
  name = f'{WMT_DATASETS[lang]}/{pair}'
  splits = {}
  for split in _gettext.TRANSLATION_SPLITS:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    splits[split] = [
        TranslationPair(source=_as_str(ex['en']), target=_as_str(ex[lang]), catalog=split)
        for ex in (source[i] for i in range(len(source)))
    ]
  train = splits['train'][:max_tokenizer_examples]
  tokenizer = train_tokenizer(
      (text for p in train for text in (p.source, p.target)), vocab_size=vocab_size)
  arrays, dropped = make_translation_arrays(
      splits, tokenizer, max_source_length=max_source_length,
      max_target_length=max_target_length)
  return arrays, tokenizer, dropped
