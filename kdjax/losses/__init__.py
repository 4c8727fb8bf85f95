"""Per-example distillation losses on logits: arrays in, no batch reduction."""

from kdjax.losses._chunked import chunked_divergence as chunked_divergence
from kdjax.losses._logit import cross_entropy as cross_entropy
from kdjax.losses._logit import decoupled_kd as decoupled_kd
from kdjax.losses._logit import dkd_terms as dkd_terms
from kdjax.losses._logit import generalized_jsd as generalized_jsd
from kdjax.losses._logit import kl_divergence as kl_divergence
from kdjax.losses._logit import reverse_kl_divergence as reverse_kl_divergence
from kdjax.losses._logit import skew_kl_divergence as skew_kl_divergence
from kdjax.losses._logit import skew_reverse_kl_divergence as skew_reverse_kl_divergence
from kdjax.losses._logit import total_variation_distance as total_variation_distance
from kdjax.losses._sequence import DIVERGENCE_NAMES as DIVERGENCE_NAMES
from kdjax.losses._sequence import align_vocab as align_vocab
from kdjax.losses._sequence import divergence_fn as divergence_fn
from kdjax.losses._sequence import token_divergence as token_divergence
from kdjax.losses._sequence import token_mean as token_mean

__all__ = [
    'DIVERGENCE_NAMES',
    'align_vocab',
    'chunked_divergence',
    'cross_entropy',
    'decoupled_kd',
    'divergence_fn',
    'dkd_terms',
    'generalized_jsd',
    'kl_divergence',
    'reverse_kl_divergence',
    'skew_kl_divergence',
    'skew_reverse_kl_divergence',
    'token_divergence',
    'token_mean',
    'total_variation_distance',
]
