"""Per-example distillation losses on logits: arrays in, no batch reduction."""

from kdjax.losses._crd import CRDHead as CRDHead
from kdjax.losses._crd import CRDMemory as CRDMemory
from kdjax.losses._crd import crd as crd
from kdjax.losses._crd import crd_memory_init as crd_memory_init
from kdjax.losses._crd import crd_negatives as crd_negatives
from kdjax.losses._feature import HintRegressor as HintRegressor
from kdjax.losses._feature import VIDRegressor as VIDRegressor
from kdjax.losses._feature import attention_map as attention_map
from kdjax.losses._feature import attention_transfer as attention_transfer
from kdjax.losses._feature import hint_loss as hint_loss
from kdjax.losses._feature import nst as nst
from kdjax.losses._feature import vid as vid
from kdjax.losses._relational import correlation_congruence as correlation_congruence
from kdjax.losses._relational import pkt as pkt
from kdjax.losses._relational import rkd_angle as rkd_angle
from kdjax.losses._relational import rkd_distance as rkd_distance
from kdjax.losses._relational import similarity_preserving as similarity_preserving

from kdjax.losses._chunked import chunked_divergence as chunked_divergence
from kdjax.losses._cross_tokenizer import chunk_end_mask as chunk_end_mask
from kdjax.losses._cross_tokenizer import chunk_log_probs as chunk_log_probs
from kdjax.losses._cross_tokenizer import cross_tokenizer_divergence as cross_tokenizer_divergence
from kdjax.losses._cross_tokenizer import uld_loss as uld_loss
from kdjax.losses._logit import cross_entropy as cross_entropy
from kdjax.losses._logit import decoupled_kd as decoupled_kd
from kdjax.losses._logit import dkd_terms as dkd_terms
from kdjax.losses._logit import generalized_jsd as generalized_jsd
from kdjax.losses._logit import kl_divergence as kl_divergence
from kdjax.losses._logit import reverse_kl_divergence as reverse_kl_divergence
from kdjax.losses._logit import skew_kl_divergence as skew_kl_divergence
from kdjax.losses._logit import skew_reverse_kl_divergence as skew_reverse_kl_divergence
from kdjax.losses._logit import total_variation_distance as total_variation_distance
from kdjax.losses._mixture import mixture_log_probs as mixture_log_probs
from kdjax.losses._policy import minillm_surrogate as minillm_surrogate
from kdjax.losses._divergences import DIVERGENCE_NAMES as DIVERGENCE_NAMES
from kdjax.losses._divergences import divergence_fn as divergence_fn
from kdjax.losses._divergences import divergence_kwargs as divergence_kwargs
from kdjax.losses._sequence import align_vocab as align_vocab
from kdjax.losses._sequence import token_divergence as token_divergence
from kdjax.losses._sequence import token_mean as token_mean
from kdjax.losses._topk import teacher_topk as teacher_topk
from kdjax.losses._topk import TOPK_MODES as TOPK_MODES
from kdjax.losses._topk import topk_kl_divergence as topk_kl_divergence
from kdjax.losses._speech import MEL_LOSS_KINDS as MEL_LOSS_KINDS
from kdjax.losses._speech import duration_loss as duration_loss
from kdjax.losses._speech import forward_sum_loss as forward_sum_loss
from kdjax.losses._speech import guided_attention_loss as guided_attention_loss
from kdjax.losses._speech import mel_loss as mel_loss
from kdjax.losses._speech import stop_targets as stop_targets
from kdjax.losses._speech import stop_token_loss as stop_token_loss
from kdjax.losses._speech import variance_loss as variance_loss
from kdjax.losses._transformer import attention_kl as attention_kl
from kdjax.losses._transformer import attention_score_mse as attention_score_mse
from kdjax.losses._transformer import cosine_embedding_loss as cosine_embedding_loss
from kdjax.losses._transformer import hidden_mse as hidden_mse
from kdjax.losses._transformer import relation_kl as relation_kl
from kdjax.losses._transformer import sentence_embedding_mse as sentence_embedding_mse
from kdjax.losses._transformer import soft_cross_entropy as soft_cross_entropy

__all__ = [
    'CRDHead',
    'CRDMemory',
    'HintRegressor',
    'VIDRegressor',
    'attention_map',
    'attention_transfer',
    'correlation_congruence',
    'crd',
    'crd_memory_init',
    'crd_negatives',
    'hint_loss',
    'nst',
    'pkt',
    'rkd_angle',
    'rkd_distance',
    'similarity_preserving',
    'vid',
    'DIVERGENCE_NAMES',
    'TOPK_MODES',
    'align_vocab',
    'chunk_end_mask',
    'chunk_log_probs',
    'chunked_divergence',
    'cross_tokenizer_divergence',
    'cross_entropy',
    'decoupled_kd',
    'divergence_fn',
    'divergence_kwargs',
    'dkd_terms',
    'generalized_jsd',
    'kl_divergence',
    'minillm_surrogate',
    'mixture_log_probs',
    'reverse_kl_divergence',
    'skew_kl_divergence',
    'skew_reverse_kl_divergence',
    'token_divergence',
    'teacher_topk',
    'token_mean',
    'topk_kl_divergence',
    'total_variation_distance',
    'uld_loss',
    'attention_kl',
    'attention_score_mse',
    'cosine_embedding_loss',
    'hidden_mse',
    'relation_kl',
    'sentence_embedding_mse',
    'soft_cross_entropy',
    'MEL_LOSS_KINDS',
    'duration_loss',
    'forward_sum_loss',
    'guided_attention_loss',
    'mel_loss',
    'stop_targets',
    'stop_token_loss',
    'variance_loss',
]
