"""Objectives: named loss terms, weights and schedules, one masked reduction.

The package's parts: :mod:`~kdjax.objective._core` (schedules, the term
protocols, :class:`Objective`), single-teacher terms, multi-teacher terms,
language-model terms (MiniLLM's on-policy term among them) and stateful
terms, Transformer-encoder terms (TinyBERT, DistilBERT, MiniLM) with their
layer maps, and text-to-speech regression terms. Paper recipes (FitNets' stages)
live in :mod:`kdjax.recipes`.
"""

import importlib
import warnings

from kdjax.objective._core import accuracy_metric as accuracy_metric
from kdjax.objective._core import Batch as Batch
from kdjax.objective._core import Metric as Metric
from kdjax.objective._core import Objective as Objective
from kdjax.objective._core import objective_rng as objective_rng
from kdjax.objective._core import Schedule as Schedule
from kdjax.objective._core import schedule_value as schedule_value
from kdjax.objective._core import StatefulTerm as StatefulTerm
from kdjax.objective._core import Teacher as Teacher
from kdjax.objective._core import Term as Term
from kdjax.objective._lm import cached_token_distill as cached_token_distill
from kdjax.objective._lm import chunked_distill as chunked_distill
from kdjax.objective._lm import cross_tokenizer_distill as cross_tokenizer_distill
from kdjax.objective._lm import token_distill as token_distill
from kdjax.objective._lm import uld_distill as uld_distill
from kdjax.objective._policy import minillm_distill as minillm_distill
from kdjax.objective._multi import MULTI_TEACHER_MODES as MULTI_TEACHER_MODES
from kdjax.objective._multi import multi_teacher_distill as multi_teacher_distill
from kdjax.objective._multi import per_teacher_terms as per_teacher_terms
from kdjax.objective._multi import pick_teacher as pick_teacher
from kdjax.objective._single import distill as distill
from kdjax.objective._single import feature as feature
from kdjax.objective._single import relational_feature as relational_feature
from kdjax.objective._single import supervised as supervised
from kdjax.objective._speech import duration_regression as duration_regression
from kdjax.objective._speech import forward_sum as forward_sum
from kdjax.objective._speech import guided_attention as guided_attention
from kdjax.objective._speech import mel_reconstruction as mel_reconstruction
from kdjax.objective._speech import stop_token as stop_token
from kdjax.objective._speech import variance_regression as variance_regression
from kdjax.objective._stateful import crd as crd
from kdjax.objective._stateful import CRDTerm as CRDTerm
from kdjax.objective._stateful import ema_teacher_distill as ema_teacher_distill
from kdjax.objective._stateful import EMATeacherTerm as EMATeacherTerm
from kdjax.objective._transformer import distilbert_cosine as distilbert_cosine
from kdjax.objective._transformer import LayerMap as LayerMap
from kdjax.objective._transformer import masked_lm as masked_lm
from kdjax.objective._transformer import minilm_attention as minilm_attention
from kdjax.objective._transformer import minilm_relations as minilm_relations
from kdjax.objective._transformer import tinybert_attention as tinybert_attention
from kdjax.objective._transformer import tinybert_embedding as tinybert_embedding
from kdjax.objective._transformer import tinybert_hidden as tinybert_hidden
from kdjax.objective._transformer import tinybert_prediction as tinybert_prediction

__all__ = [
    'Batch',
    'CRDTerm',
    'EMATeacherTerm',
    'MULTI_TEACHER_MODES',
    'Metric',
    'Objective',
    'objective_rng',
    'Schedule',
    'StatefulTerm',
    'Teacher',
    'Term',
    'accuracy_metric',
    'cached_token_distill',
    'chunked_distill',
    'crd',
    'cross_tokenizer_distill',
    'distill',
    'ema_teacher_distill',
    'feature',
    'minillm_distill',
    'multi_teacher_distill',
    'per_teacher_terms',
    'pick_teacher',
    'relational_feature',
    'schedule_value',
    'supervised',
    'token_distill',
    'uld_distill',
    'LayerMap',
    'distilbert_cosine',
    'masked_lm',
    'minilm_attention',
    'minilm_relations',
    'tinybert_attention',
    'tinybert_embedding',
    'tinybert_hidden',
    'tinybert_prediction',
    'duration_regression',
    'forward_sum',
    'guided_attention',
    'mel_reconstruction',
    'stop_token',
    'variance_regression',
]

# Names that moved or were renamed; they keep working for one release.
# (module, new name) for each old name.
_DEPRECATED = {
    'evaluate': ('kdjax.objective._core', 'schedule_value'),
    'accuracy': ('kdjax.objective._core', 'accuracy_metric'),
    'mixture_log_probs': ('kdjax.losses', 'mixture_log_probs'),
    'fitnets_stage1_objective': ('kdjax.recipes', 'fitnets_stage1_objective'),
    'fitnets_stage2_objective': ('kdjax.recipes', 'fitnets_stage2_objective'),
    'fitnets_stage1_optimizer': ('kdjax.recipes', 'freeze_except'),
}


def __getattr__(name):
  if name not in _DEPRECATED:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module, new = _DEPRECATED[name]
  public = module.replace('._core', '')
  warnings.warn(
      f'kdjax.objective.{name} is deprecated and will be removed in the next '
      f'release; use {public}.{new}.',
      DeprecationWarning,
      stacklevel=2,
  )
  # kdjax.recipes imports this package, so it is looked up when asked for.
  return getattr(importlib.import_module(module), new)
