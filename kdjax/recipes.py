"""Paper recipes: staged objectives and optimizers built from kdjax.objective and optax."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from kdjax import _checks
from kdjax import losses
from kdjax import objective


def fitnets_stage1_objective(
    student_feature: str,
    teacher_feature: str | None = None,
    *,
    resize: str | None = None,
    reduction: str = 'sum',
) -> objective.Objective:
  """Stage 1 of FitNets: the hint loss alone (term ``'hint'``).

  The student's `student_feature` must be the output of a
  :class:`kdjax.losses.HintRegressor` placed after its guided layer (the
  regressor is part of the student's parameters). Only the layers up to the
  guided layer and the regressor receive gradient from this objective; train
  it with an optimizer that leaves the other parameters alone (so weight
  decay does not move them either): :func:`freeze_except`.

  Args:
    student_feature: the regressor's output among the student's features.
    teacher_feature: the teacher's hint layer (defaults to `student_feature`).
    resize: passed to :func:`kdjax.losses.hint_loss`.
    reduction: passed to :func:`kdjax.losses.hint_loss` (``'sum'``: the
      paper's ``1/2 ||t - s||²``; ``'mean'``: RepDistiller's MSE).

  Returns:
    An :class:`~kdjax.objective.Objective`.

  References:
    Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015,
    https://arxiv.org/abs/1412.6550.
  """
  return objective.Objective(terms={
      'hint': objective.feature(
          losses.hint_loss, student_feature, teacher_feature, resize=resize,
          reduction=reduction,
      )
  })


def freeze_except(
    optimizer: optax.GradientTransformation, trainable: Callable[[str], bool]
) -> optax.GradientTransformation:
  """Wraps `optimizer` so that only the parameters `trainable` selects move.

  For staged recipes that train part of a network (FitNets' stage 1 trains
  the layers up to the guided layer and the hint regressor; TinyBERT's
  and others' stages likewise): the frozen parameters get zero updates, so
  weight decay does not move them either, and no optimizer state.

  Args:
    optimizer: an optax gradient transformation.
    trainable: ``fn(path) -> bool`` on each parameter's ``/``-joined path
      (e.g. ``'block_0/conv/kernel'``).

  Returns:
    An optax transformation: `optimizer` on the selected parameters, zero
    updates (no decay, no state) on the others.
  """

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: 'train' if trainable(
            '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
        ) else 'freeze',
        params,
    )

  return optax.multi_transform(
      {'train': optimizer, 'freeze': optax.set_to_zero()}, labels
  )


def fitnets_stage2_objective(
    *,
    total_steps: int,
    temperature: float = 4.0,
    lambda_start: float = 4.0,
    lambda_end: float = 1.0,
    label_key: str = 'label',
    metrics: Mapping[str, objective.Metric] | None = None,
) -> objective.Objective:
  r"""Stage 2 of FitNets: knowledge distillation with an annealed weight.

  The whole student is trained on :math:`H(y, P_s) + \lambda H(P_t^\tau,
  P_s^\tau)` with :math:`\lambda` decaying linearly from `lambda_start` to
  `lambda_end` over `total_steps` (4 to 1 in the paper). The KD term is
  :func:`kdjax.losses.kl_divergence`, which equals the cross entropy up to
  the teacher's entropy (no gradient) but is multiplied by :math:`\tau^2`;
  its weight is therefore :math:`\lambda / \tau^2`, so that gradients are
  the paper's. Terms ``'kd'`` and ``'ce'``.

  Args:
    total_steps: length of stage 2, over which :math:`\lambda` decays.
    temperature: :math:`\tau`, a constant (the paper tunes it on validation).
    lambda_start: :math:`\lambda` at step 0.
    lambda_end: :math:`\lambda` from `total_steps` on.
    label_key: the batch entry with integer labels.
    metrics: optional extra metrics for the :class:`~kdjax.objective.Objective`.

  Returns:
    An :class:`~kdjax.objective.Objective`.

  References:
    Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015,
    https://arxiv.org/abs/1412.6550.
  """
  if callable(temperature):
    raise TypeError('temperature must be a constant for fitnets_stage2_objective.')
  _checks.check_positive('temperature', temperature)
  _checks.check_positive('total_steps', total_steps)

  def kd_weight(step):
    fraction = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
    lam = lambda_start + (lambda_end - lambda_start) * fraction
    return lam / temperature**2

  return objective.Objective(
      terms={
          'kd': objective.distill(losses.kl_divergence, temperature=temperature),
          'ce': objective.supervised(label_key=label_key),
      },
      weights={'kd': kd_weight},
      metrics=dict(metrics or {}),
  )


def tinybert_intermediate_objective(
    layer_map: objective.LayerMap,
    *,
    student_kind: str = 'projected',
    mask_key: str | None = 'token_mask',
) -> objective.Objective:
  """TinyBERT's intermediate-layer distillation: attention + hidden + embedding terms.

  The objective of both stages' layer-wise part: GENERAL distillation
  (the pre-trained teacher, a large unlabelled corpus) and the first step of
  TASK-SPECIFIC distillation (the fine-tuned teacher, augmented task data);
  the second step is :func:`tinybert_prediction_objective`. Terms
  ``'attention'`` (:func:`~kdjax.objective.tinybert_attention`),
  ``'hidden'`` (:func:`~kdjax.objective.tinybert_hidden`) and
  ``'embedding'`` (:func:`~kdjax.objective.tinybert_embedding`), weight 1
  each as in the paper. The teacher must expose ``'hidden'`` and
  ``'scores'`` and the student ``'scores'`` and ``student_kind``
  (:func:`kdjax.zoo.bert_apply` with ``features=``).

  Args:
    layer_map: student layer ``m`` learns from teacher layer ``g(m)``.
    student_kind: ``'projected'`` (the student's ``W_h``, for a narrower
      student) or ``'hidden'`` (equal widths).
    mask_key: the batch entry of the ``[batch, time]`` token mask.

  Returns:
    An :class:`~kdjax.objective.Objective`.

  References:
    Jiao et al., "TinyBERT: Distilling BERT for Natural Language
    Understanding", Findings of EMNLP 2020, arXiv:1909.10351 (Section 3.2).
  """
  return objective.Objective(terms={
      'attention': objective.tinybert_attention(layer_map, mask_key=mask_key),
      'hidden': objective.tinybert_hidden(layer_map, student_kind=student_kind,
                                          mask_key=mask_key),
      'embedding': objective.tinybert_embedding(student_kind=student_kind, mask_key=mask_key),
  })


def tinybert_prediction_objective(
    *, temperature: objective.Schedule = 1.0, mask_key: str | None = None
) -> objective.Objective:
  """TinyBERT's prediction-layer distillation (the last step of the task-specific stage).

  One term ``'prediction'``: :func:`~kdjax.objective.tinybert_prediction`,
  the soft cross entropy of the student's logits against the fine-tuned
  teacher's, on the (augmented) task data.

  Args:
    temperature: constant or schedule (the paper's runs use 1).
    mask_key: a batch entry masking the values (MLM positions for
      token-level logits); ``None`` for classification logits.

  Returns:
    An :class:`~kdjax.objective.Objective`.

  References:
    Jiao et al., "TinyBERT", arXiv:1909.10351 (Section 3.2, Eq. 10).
  """
  return objective.Objective(terms={
      'prediction': objective.tinybert_prediction(temperature=temperature, mask_key=mask_key),
  })


def distilbert_objective(
    *,
    temperature: objective.Schedule = 2.0,
    weights: Mapping[str, objective.Schedule] | None = None,
    label_key: str = 'mlm_labels',
    mlm_mask_key: str = 'mlm_mask',
    token_mask_key: str | None = 'token_mask',
) -> objective.Objective:
  """DistilBERT's triple loss: soft targets at temperature, masked LM and cosine.

  Terms ``'kd'`` (:func:`~kdjax.objective.token_distill`: forward KL times
  ``T²`` at the masked positions, the script's ``KLDivLoss``), ``'mlm'``
  (:func:`~kdjax.objective.masked_lm`) and ``'cos'``
  (:func:`~kdjax.objective.distilbert_cosine` on the last hidden states
  ``'sequence'``, over the real tokens). Default weights 5.0 / 2.0 / 1.0
  and ``T = 2``, the values of the public training script's README run.
  Both models need the masked-LM head (``BertConfig(mlm_head=True)``).
  Start the student with :func:`kdjax.zoo.bert_student_from_teacher`.

  Args:
    temperature: ``T``.
    weights: ``{'kd', 'mlm', 'cos'}`` weights (constants or schedules).
    label_key: the batch entry of the original tokens at masked positions.
    mlm_mask_key: the batch entry marking the masked positions.
    token_mask_key: the batch entry of the padding mask for the cosine.

  Returns:
    An :class:`~kdjax.objective.Objective`.

  References:
    Sanh et al., "DistilBERT, a distilled version of BERT: smaller,
    faster, cheaper and lighter", 2019, arXiv:1910.01108.
  """
  return objective.Objective(
      terms={
          'kd': objective.token_distill(temperature=temperature, mask_key=mlm_mask_key),
          'mlm': objective.masked_lm(label_key=label_key, mask_key=mlm_mask_key),
          'cos': objective.distilbert_cosine(mask_key=token_mask_key),
      },
      weights=dict(weights or {'kd': 5.0, 'mlm': 2.0, 'cos': 1.0}),
  )
