"""Per-example distillation losses on logits: arrays in, no batch reduction."""

from kdjax.losses._logit import cross_entropy as cross_entropy
from kdjax.losses._logit import decoupled_kd as decoupled_kd
from kdjax.losses._logit import dkd_terms as dkd_terms
from kdjax.losses._logit import generalized_jsd as generalized_jsd
from kdjax.losses._logit import kl_divergence as kl_divergence
from kdjax.losses._logit import reverse_kl_divergence as reverse_kl_divergence
from kdjax.losses._logit import skew_kl_divergence as skew_kl_divergence
from kdjax.losses._logit import skew_reverse_kl_divergence as skew_reverse_kl_divergence
from kdjax.losses._logit import total_variation_distance as total_variation_distance

__all__ = [
    'cross_entropy',
    'decoupled_kd',
    'dkd_terms',
    'generalized_jsd',
    'kl_divergence',
    'reverse_kl_divergence',
    'skew_kl_divergence',
    'skew_reverse_kl_divergence',
    'total_variation_distance',
]
