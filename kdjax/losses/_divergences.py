"""The one registry of divergences by name: logit, token-level and chunked forms."""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import inspect
from typing import Any

import jax

from kdjax.losses import _logit

Array = jax.Array
ArrayLike = Any


@dataclasses.dataclass(frozen=True)
class Divergence:
  """A named divergence in its two forms.

  Attributes:
    logit_fn: the :mod:`kdjax.losses` function on logits,
      ``fn(student_logits, teacher_logits, *, temperature, where, axis,
      ...)``; :func:`kdjax.losses.token_divergence` calls it.
    log_space_fn: ``fn(log_q, valid_q, log_p, valid_p, hyper) -> [...]`` on
      normalised log-probabilities of the student (`log_q`) and the teacher
      (`log_p`) over the last axis, without the ``T²`` factor;
      :func:`kdjax.losses.chunked_divergence` calls it block by block.
    hyperparameter: the keyword it takes (``'beta'``, ``'alpha'``) or None.
  """

  logit_fn: Callable[..., Array]
  log_space_fn: Callable[..., Array]
  hyperparameter: str | None = None

  @property
  def default(self) -> float | None:
    """The hyper-parameter's default, read from `logit_fn`'s signature."""
    if self.hyperparameter is None:
      return None
    return inspect.signature(self.logit_fn).parameters[self.hyperparameter].default


_DIVERGENCES: dict[str, Divergence] = {
    'forward_kl': Divergence(_logit.kl_divergence, _logit.log_space_forward_kl),
    'reverse_kl': Divergence(
        _logit.reverse_kl_divergence, _logit.log_space_reverse_kl
    ),
    'jsd': Divergence(_logit.generalized_jsd, _logit.log_space_jsd, 'beta'),
    'skew_kl': Divergence(
        _logit.skew_kl_divergence, _logit.log_space_skew_kl, 'alpha'
    ),
    'skew_reverse_kl': Divergence(
        _logit.skew_reverse_kl_divergence, _logit.log_space_skew_reverse_kl,
        'alpha',
    ),
    'tvd': Divergence(_logit.total_variation_distance, _logit.log_space_tvd),
}

DIVERGENCE_NAMES = tuple(_DIVERGENCES)


def lookup(divergence: str) -> Divergence:
  """The :class:`Divergence` of a name.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if divergence not in _DIVERGENCES:
    raise ValueError(
        f'unknown divergence {divergence!r}; choose one of '
        f'{list(DIVERGENCE_NAMES)}.'
    )
  return _DIVERGENCES[divergence]


def divergence_hyperparameter(divergence: str) -> str | None:
  """The hyper-parameter a named divergence takes (``'beta'``, ``'alpha'`` or None).

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  return lookup(divergence).hyperparameter


def divergence_kwargs(
    divergence: str, beta: ArrayLike | None, alpha: ArrayLike | None
) -> dict[str, ArrayLike]:
  """Checks that only the named divergence's hyper-parameter is given."""
  takes = divergence_hyperparameter(divergence)
  given = {'beta': beta, 'alpha': alpha}
  for name, value in given.items():
    if value is not None and name != takes:
      takes_text = 'no hyper-parameter' if takes is None else repr(takes)
      raise ValueError(
          f'{name}={value} was given, but divergence {divergence!r} takes '
          f'{takes_text}.'
      )
  if takes is not None and given[takes] is not None:
    return {takes: given[takes]}
  return {}


def divergence_fn(divergence: str) -> Callable[..., Array]:
  """The :mod:`kdjax.losses` function for a divergence name.

  Args:
    divergence: one of ``'forward_kl'`` (:func:`kl_divergence`),
      ``'reverse_kl'`` (:func:`reverse_kl_divergence`), ``'jsd'``
      (:func:`generalized_jsd`, takes ``beta``), ``'skew_kl'``
      (:func:`skew_kl_divergence`, takes ``alpha``), ``'skew_reverse_kl'``
      (:func:`skew_reverse_kl_divergence`, takes ``alpha``), ``'tvd'``
      (:func:`total_variation_distance`).

  Returns:
    ``fn(student_logits, teacher_logits, *, temperature, where, axis, ...)``.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  return lookup(divergence).logit_fn
