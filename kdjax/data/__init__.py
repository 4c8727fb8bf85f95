"""Datasets and grain input pipelines over TFDS sources, without TensorFlow."""

from kdjax.data._audio import estimate_pitch
from kdjax.data._audio import FeatureConfig
from kdjax.data._audio import log_mel_and_energy
from kdjax.data._audio import mel_filterbank
from kdjax.data._audio import stft
from kdjax.data._audio import stft_magnitude
from kdjax.data._griffin_lim import griffin_lim
from kdjax.data._griffin_lim import istft
from kdjax.data._griffin_lim import mel_to_audio
from kdjax.data._griffin_lim import mel_to_magnitude
from kdjax.data._griffin_lim import spectral_convergence
from kdjax.data._griffin_lim import write_wav
from kdjax.data._cross_tokenizer import align_boundaries
from kdjax.data._cross_tokenizer import encode_with_byte_lengths
from kdjax.data._cross_tokenizer import make_cross_tokenizer_arrays
from kdjax.data._cross_tokenizer import normalize_text
from kdjax.data._cross_tokenizer import split_text
from kdjax.data._cross_tokenizer import token_bytes
from kdjax.data._cross_tokenizer import vocab_mapping
from kdjax.data._debian import AptError
from kdjax.data._debian_text import DEFAULT_SECTIONS as DEBIAN_SECTIONS
from kdjax.data._debian_text import DebianSections
from kdjax.data._debian_text import PackageDescription
from kdjax.data._debian_text import deduplicate
from kdjax.data._debian_text import fetch_descriptions
from kdjax.data._debian_text import join_descriptions
from kdjax.data._debian_text import keep_paragraph
from kdjax.data._debian_text import html_paragraphs
from kdjax.data._debian_text import info_paragraphs
from kdjax.data._debian_text import long_description
from kdjax.data._debian_text import make_glue_arrays
from kdjax.data._debian_text import make_section_splits
from kdjax.data._debian_text import parse_deb822
from kdjax.data._debian_text import read_descriptions
from kdjax.data._debian_text import read_package_lists
from kdjax.data._debian_text import read_text_shards
from kdjax.data._debian_text import split_of_source
from kdjax.data._debian_text import write_descriptions
from kdjax.data._debian_text import write_prose_shards
from kdjax.data._digits import Digits
from kdjax.data._digits import make_digits_arrays
from kdjax.data._fonts import collect_faces
from kdjax.data._fonts import DEFAULT_PACKAGES as FONT_PACKAGES
from kdjax.data._fonts import face_problem
from kdjax.data._fonts import family_unit
from kdjax.data._fonts import fetch_fonts
from kdjax.data._fonts import FONT_CLASSES
from kdjax.data._fonts import font_glyphs_metadata
from kdjax.data._fonts import FontFace
from kdjax.data._fonts import FontGlyphs
from kdjax.data._fonts import GlyphJitter
from kdjax.data._fonts import list_font_files
from kdjax.data._fonts import make_font_arrays
from kdjax.data._fonts import render_glyph
from kdjax.data._fonts import split_units
from kdjax.data._gettext import collect_pairs
from kdjax.data._gettext import DEFAULT_PACKAGES as GETTEXT_PACKAGES
from kdjax.data._gettext import fetch_catalogs
from kdjax.data._gettext import make_translation_splits
from kdjax.data._gettext import normalise_pair
from kdjax.data._gettext import normalise_text
from kdjax.data._gettext import read_mo_catalog
from kdjax.data._gettext import read_pairs
from kdjax.data._gettext import split_catalogs
from kdjax.data._gettext import TranslationPair
from kdjax.data._gettext import write_pairs
from kdjax.data._mnist1d import Mnist1d
from kdjax.data._multilingual import default_cache_dir as gettext_cache_dir
from kdjax.data._multilingual import gettext_multilingual_pairs
from kdjax.data._multilingual import load_ted_multi_pairs
from kdjax.data._multilingual import make_multilingual_splits
from kdjax.data._multilingual import MULTILINGUAL_LANGUAGES
from kdjax.data._multilingual import read_pairs_dir
from kdjax.data._multilingual import ted_multi_pairs
from kdjax.data._multilingual import write_pairs_dir
from kdjax.data._mnist1d import make_mnist1d_arrays
from kdjax.data._pipeline import dataset_info
from kdjax.data._pipeline import iterate_once
from kdjax.data._pipeline import load_source
from kdjax.data._pipeline import make_loader
from kdjax.data._pipeline import MASK_KEY
from kdjax.data._pipeline import num_classes
from kdjax.data._sentences import collect_sentences
from kdjax.data._sentences import keep_sentence
from kdjax.data._sentences import rst_paragraphs
from kdjax.data._sentences import split_sentences
from kdjax.data._speech import default_cache_dir as speech_cache_dir
from kdjax.data._speech import encode_phonemes
from kdjax.data._speech import featurize_recording
from kdjax.data._speech import ljspeech_examples
from kdjax.data._speech import PHONEMES
from kdjax.data._speech import phoneme_vocabulary
from kdjax.data._speech import read_chunks as read_speech_chunks
from kdjax.data._speech import select_utterances
from kdjax.data._speech import SpeechFeatures
from kdjax.data._speech_batch import pad_speech_batch
from kdjax.data._speech_batch import speech_stats
from kdjax.data._speech_batch import SpeechStats
from kdjax.data._speech import speech_sentences
from kdjax.data._speech import synthesize_chunks as synthesize_speech_chunks
from kdjax.data._synthesis import fetch_speech_tools
from kdjax.data._synthesis import frame_durations
from kdjax.data._synthesis import parse_pho
from kdjax.data._synthesis import Phone
from kdjax.data._synthesis import SpeechTools
from kdjax.data._synthesis import synthesize_utterance
from kdjax.data._text import BYTE_VOCAB_SIZE
from kdjax.data._text import list_text_files
from kdjax.data._text import make_text_lm_arrays
from kdjax.data._text import make_windows
from kdjax.data._text import python_stdlib_dir
from kdjax.data._text import read_byte_documents
from kdjax.data._text import split_files
from kdjax.data._translation import BOS_ID
from kdjax.data._translation import BpeTokenizer
from kdjax.data._translation import EOS_ID
from kdjax.data._translation import PAD_ID
from kdjax.data._translation import UNK_ID
from kdjax.data._translation import encode_translation_arrays
from kdjax.data._translation import GettextTranslation
from kdjax.data._translation import load_tokenizer
from kdjax.data._translation import make_translation_arrays
from kdjax.data._translation import make_wmt14_arrays
from kdjax.data._translation import WMT_DATASETS
from kdjax.data._translation import train_tokenizer
from kdjax.data._translation import translation_metadata

__all__ = [
    'MASK_KEY',
    'Digits',
    'Mnist1d',
    'dataset_info',
    'iterate_once',
    'load_source',
    'make_digits_arrays',
    'make_loader',
    'make_mnist1d_arrays',
    'num_classes',
]
__all__ += [
    'BYTE_VOCAB_SIZE',
    'list_text_files',
    'make_text_lm_arrays',
    'make_windows',
    'python_stdlib_dir',
    'read_byte_documents',
    'split_files',
]
__all__ += [
    'align_boundaries',
    'encode_with_byte_lengths',
    'make_cross_tokenizer_arrays',
    'normalize_text',
    'split_text',
    'token_bytes',
    'vocab_mapping',
]
__all__ += [
    'GETTEXT_PACKAGES',
    'BOS_ID',
    'EOS_ID',
    'PAD_ID',
    'UNK_ID',
    'BpeTokenizer',
    'GettextTranslation',
    'TranslationPair',
    'collect_pairs',
    'encode_translation_arrays',
    'fetch_catalogs',
    'load_tokenizer',
    'make_translation_arrays',
    'make_translation_splits',
    'make_wmt14_arrays',
    'WMT_DATASETS',
    'normalise_pair',
    'normalise_text',
    'read_mo_catalog',
    'read_pairs',
    'split_catalogs',
    'train_tokenizer',
    'translation_metadata',
    'write_pairs',
]
__all__ += [
    'MULTILINGUAL_LANGUAGES',
    'gettext_cache_dir',
    'gettext_multilingual_pairs',
    'load_ted_multi_pairs',
    'make_multilingual_splits',
    'read_pairs_dir',
    'ted_multi_pairs',
    'write_pairs_dir',
]
__all__ += [
    'FONT_CLASSES',
    'FONT_PACKAGES',
    'FontFace',
    'FontGlyphs',
    'GlyphJitter',
    'collect_faces',
    'face_problem',
    'family_unit',
    'fetch_fonts',
    'font_glyphs_metadata',
    'list_font_files',
    'make_font_arrays',
    'render_glyph',
    'split_units',
]
__all__ += [
    'PHONEMES',
    'AptError',
    'FeatureConfig',
    'Phone',
    'SpeechFeatures',
    'SpeechStats',
    'SpeechTools',
    'collect_sentences',
    'encode_phonemes',
    'estimate_pitch',
    'featurize_recording',
    'fetch_speech_tools',
    'frame_durations',
    'keep_sentence',
    'ljspeech_examples',
    'log_mel_and_energy',
    'mel_filterbank',
    'parse_pho',
    'phoneme_vocabulary',
    'read_speech_chunks',
    'rst_paragraphs',
    'select_utterances',
    'speech_cache_dir',
    'speech_sentences',
    'speech_stats',
    'pad_speech_batch',
    'split_sentences',
    'stft',
    'stft_magnitude',
    'griffin_lim',
    'istft',
    'mel_to_audio',
    'mel_to_magnitude',
    'spectral_convergence',
    'write_wav',
    'synthesize_speech_chunks',
    'synthesize_utterance',
]
__all__ += [
    'DEBIAN_SECTIONS',
    'DebianSections',
    'PackageDescription',
    'deduplicate',
    'fetch_descriptions',
    'join_descriptions',
    'keep_paragraph',
    'html_paragraphs',
    'info_paragraphs',
    'long_description',
    'make_glue_arrays',
    'make_section_splits',
    'parse_deb822',
    'read_descriptions',
    'read_package_lists',
    'read_text_shards',
    'split_of_source',
    'write_descriptions',
    'write_prose_shards',
]
