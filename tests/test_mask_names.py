"""One name per kind of mask: where= (classes), example_mask=, token_mask=.

The old where= of the example- and token-masked losses still works for one
release: it warns and gives the same value.
"""

from __future__ import annotations

import inspect
import warnings

import jax
import numpy as np
import pytest

from kdjax import _checks
from kdjax import losses

BATCH, TIME, VOCAB, DIM = 4, 3, 7, 5


def _normal(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _unit(seed, shape):
  x = _normal(seed, shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


ROWS = np.array([True, False, True, True])
TOKENS = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], np.float32)
MAPS = (_normal(0, (BATCH, 4, 4, 3)), _normal(1, (BATCH, 4, 4, 3)))
VECTORS = (_normal(2, (BATCH, DIM)), _normal(3, (BATCH, 6)))


def _crd(**kwargs):
  memory = losses.crd_memory_init(jax.random.PRNGKey(0), 10, DIM)
  indices = np.arange(BATCH, dtype=np.int32)
  negatives = np.asarray(losses.crd_negatives(jax.random.PRNGKey(1), indices, 10, 3))
  return losses.crd(_unit(4, (BATCH, DIM)), _unit(5, (BATCH, DIM)), memory, indices,
                    negatives, **kwargs)[0]


# name -> (call taking the mask keyword, new name, mask)
CASES = {
    'hint_loss': (lambda **kw: losses.hint_loss(*MAPS, **kw), 'example_mask', ROWS),
    'attention_transfer': (lambda **kw: losses.attention_transfer(*MAPS, **kw), 'example_mask', ROWS),
    'nst': (lambda **kw: losses.nst(*MAPS, **kw), 'example_mask', ROWS),
    'vid': (lambda **kw: losses.vid((MAPS[0], np.ones(3, np.float32)), MAPS[1], **kw),
            'example_mask', ROWS),
    'similarity_preserving': (lambda **kw: losses.similarity_preserving(*VECTORS, **kw),
                              'example_mask', ROWS),
    'pkt': (lambda **kw: losses.pkt(*VECTORS, **kw), 'example_mask', ROWS),
    'rkd_distance': (lambda **kw: losses.rkd_distance(*VECTORS, **kw), 'example_mask', ROWS),
    'rkd_angle': (lambda **kw: losses.rkd_angle(*VECTORS, **kw), 'example_mask', ROWS),
    'correlation_congruence': (lambda **kw: losses.correlation_congruence(*VECTORS, **kw),
                               'example_mask', ROWS),
    'crd': (_crd, 'example_mask', ROWS),
    'token_divergence': (
        lambda **kw: losses.token_divergence(
            _normal(6, (BATCH, TIME, VOCAB)), _normal(7, (BATCH, TIME, VOCAB)), **kw),
        'token_mask', TOKENS),
    'chunked_divergence': (
        lambda **kw: losses.chunked_divergence(
            _normal(8, (BATCH, TIME, DIM)), _normal(9, (DIM, VOCAB)),
            _normal(10, (BATCH, TIME, 6)), _normal(11, (6, VOCAB)), token_chunk=5, **kw),
        'token_mask', TOKENS),
    'token_mean': (lambda **kw: losses.token_mean(_normal(12, (BATCH, TIME)), **kw),
                   'token_mask', TOKENS),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_old_where_warns_and_gives_the_same_value(name):
  call, new, mask = CASES[name]
  fn = getattr(losses, name)
  parameters = inspect.signature(fn).parameters
  assert new in parameters and 'where' not in parameters
  expected = call(**{new: mask})
  with pytest.warns(DeprecationWarning, match=rf'{name}\(where=\.\.\.\) is deprecated.*pass {new}='):
    old = call(where=mask)
  np.testing.assert_array_equal(old, expected)
  assert not np.allclose(expected, call()), 'the mask must matter in this case'
  with pytest.raises(TypeError, match=rf'got both where= .* and {new}='):
    call(where=mask, **{new: mask})


def test_the_warning_points_at_the_caller():
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    losses.token_mean(np.ones((2, 3), np.float32), where=np.ones(2))
  assert [w.filename for w in caught] == [__file__]


@pytest.mark.parametrize('name', [
    'kl_divergence', 'reverse_kl_divergence', 'generalized_jsd', 'skew_kl_divergence',
    'skew_reverse_kl_divergence', 'total_variation_distance', 'dkd_terms', 'decoupled_kd',
    'cross_entropy',
])
def test_logit_losses_keep_where_as_the_class_mask(name):
  assert 'where' in inspect.signature(getattr(losses, name)).parameters


def test_align_mask_aligns_leading_axes_and_names_the_shapes():
  aligned = _checks.align_mask('token_mask', np.array([1, 0, 1]), (3, 4, 5))
  assert aligned.shape == (3, 1, 1) and aligned.dtype == np.float32
  assert _checks.align_mask('m', np.ones((1, 4)), (3, 4)).shape == (1, 4)
  with pytest.raises(ValueError, match=r"term 'kd' mask with shape \(4,\) does not align "
                                       r"with the leading axes of term 'kd' values with shape \(6,\)"):
    _checks.align_mask("term 'kd' mask", np.ones(4), (6,), what="term 'kd' values")
  with pytest.raises(ValueError, match=r'm with shape \(3, 4, 1\).*values with shape \(3, 4\)'):
    _checks.align_mask('m', np.ones((3, 4, 1)), (3, 4))
  jitted = jax.jit(lambda m: _checks.align_mask('m', m, (2, 3)))
  assert jitted(np.ones(2, bool)).shape == (2, 1)
