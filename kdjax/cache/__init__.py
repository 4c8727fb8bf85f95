"""Offline teacher cache for language-model distillation: top-k log-probs + tail mass on disk.

A cache holds, for every token of a dataset of token windows, the teacher's
top-k log-probabilities at a recorded temperature, their vocabulary indices
and the log of the remaining mass (one tail bucket), quantised (float32,
bfloat16, float16 or an 8-bit code; indices in whole bytes or bit-packed)
in array_record shards (:func:`write_cache`, resumable and multi-host). It
is read back through grain (:class:`TeacherCache`, :func:`join_cache`) and
distilled from with :func:`cached_teacher_apply` and
:func:`kdjax.objective.cached_token_distill` in an unchanged
:func:`kdjax.step.make_train_step`. The sparse losses are
:func:`kdjax.losses.topk_kl_divergence`.
"""

from kdjax.cache._format import bytes_per_token as bytes_per_token
from kdjax.cache._format import CacheSpec as CacheSpec
from kdjax.cache._format import decode_record as decode_record
from kdjax.cache._format import dequantize_log_probs as dequantize_log_probs
from kdjax.cache._format import encode_record as encode_record
from kdjax.cache._format import fingerprint as fingerprint
from kdjax.cache._format import INDEX_ENCODINGS as INDEX_ENCODINGS
from kdjax.cache._format import index_bits as index_bits
from kdjax.cache._format import index_bytes as index_bytes
from kdjax.cache._format import LOG_PROB_FORMATS as LOG_PROB_FORMATS
from kdjax.cache._format import pack_indices as pack_indices
from kdjax.cache._format import quantize_log_probs as quantize_log_probs
from kdjax.cache._format import read_spec as read_spec
from kdjax.cache._format import unpack_indices as unpack_indices
from kdjax.cache._store import CACHE_KEYS as CACHE_KEYS
from kdjax.cache._store import INDICES_KEY as INDICES_KEY
from kdjax.cache._store import join_cache as join_cache
from kdjax.cache._store import JoinedSource as JoinedSource
from kdjax.cache._store import LOG_PROBS_KEY as LOG_PROBS_KEY
from kdjax.cache._store import TAIL_KEY as TAIL_KEY
from kdjax.cache._store import TeacherCache as TeacherCache
from kdjax.cache._store import write_cache as write_cache
from kdjax.cache._teacher import cached_teacher_apply as cached_teacher_apply
from kdjax.cache._teacher import topk_teacher_apply as topk_teacher_apply

__all__ = [
    'CACHE_KEYS',
    'CacheSpec',
    'INDEX_ENCODINGS',
    'INDICES_KEY',
    'JoinedSource',
    'LOG_PROBS_KEY',
    'LOG_PROB_FORMATS',
    'TAIL_KEY',
    'TeacherCache',
    'bytes_per_token',
    'cached_teacher_apply',
    'decode_record',
    'dequantize_log_probs',
    'encode_record',
    'fingerprint',
    'index_bits',
    'index_bytes',
    'join_cache',
    'pack_indices',
    'quantize_log_probs',
    'read_spec',
    'topk_teacher_apply',
    'unpack_indices',
    'write_cache',
]
