"""MiniLLM's on-policy term: the policy-gradient estimate of the sequence-level reverse KL."""

from __future__ import annotations

from kdjax import _checks
from kdjax import losses
from kdjax.objective._core import check_schedule
from kdjax.objective._core import require_teacher
from kdjax.objective._core import schedule_value
from kdjax.objective._core import Schedule
from kdjax.objective._core import Term


def minillm_distill(
    *,
    label_key: str = 'labels',
    temperature: Schedule = 1.0,
    teacher_mix: float = 0.0,
    single_step: bool = True,
    length_normalize: bool = True,
) -> Term:
  """MiniLLM (Gu et al. 2024) as a term: reverse KL on the student's own samples.

  :func:`kdjax.losses.minillm_surrogate` on the student's and the teacher's
  logits and the sampled tokens ``batch[label_key]``: per token, the
  importance-weighted reverse KL ``w_t KL(q_t || p_t)`` as the value and
  MiniLLM's policy-gradient estimate as the gradient. Use it on batches
  whose rows the student sampled (:func:`kdjax.onpolicy.make_on_policy_batch`
  with ``fraction=1``): on reference text the policy gradient is not a
  gradient of anything. The :class:`Objective` masks it by ``batch['mask']``
  (the generated tokens) and averages per token.

  Args:
    label_key: the batch key of the sampled next tokens.
    temperature: a constant or a schedule; MiniLLM uses 1.
    teacher_mix: the teacher's weight alpha in the sampling mixture
      (:func:`kdjax.onpolicy.mixture_decoder` with the same value); 0 for
      sampling from the student alone. It only sets the importance weights:
      it must be the sampler's.
    single_step: the single-step decomposition (exact per-position reverse
      KL plus the future return's score function).
    length_normalize: divide each return by its number of tokens.

  Returns:
    A :class:`Term` of ``[batch, time]`` values.
  """
  check_schedule('temperature', temperature, positive=True)
  _checks.check_in_unit_interval('teacher_mix', teacher_mix)

  def term(student, teacher, batch, step):
    teacher = require_teacher(teacher)
    values = losses.minillm_surrogate(
        student.logits, teacher.logits, _checks.batch_entry(batch, label_key, 'label_key'),
        temperature=schedule_value(temperature, step), teacher_mix=teacher_mix,
        single_step=single_step, length_normalize=length_normalize)
    return values, None

  return term
