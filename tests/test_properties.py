"""Property-based tests (hypothesis) over every loss of kdjax.losses.

Each test draws inputs (values including ±1e4, -inf entries shared by student
and teacher, class/token/example masks with fully masked rows and batches,
temperatures, float32/bfloat16/float16 dtypes) and checks what the maths
promises: no NaN in values or gradients, non-negativity, zero at equality,
shift invariance of logit losses, masked entries acting as if sliced away,
jit == eager. Shapes come from a fixed small set so that each loss compiles
a handful of times; the example count comes from the hypothesis profile
(``ci`` in ``make test``, ``slow`` in ``make test-slow``, see conftest.py).
docs/properties.md lists the invariants and where a value may be infinite.
"""

import functools
import os

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses

DTYPES = (np.float32, jnp.bfloat16, np.float16)
# Every dtype compiles each loss anew: under the quick `ci` profile the
# losses outside the logit divergences and DKD (which run all three) draw
# float32 or bfloat16 only.
_SLOW = os.environ.get('KDJAX_HYPOTHESIS_PROFILE', 'ci') != 'ci'
DRAWN_DTYPES = st.sampled_from(DTYPES if _SLOW else DTYPES[:2])
TEMPERATURES = st.sampled_from((0.5, 1.0, 2.0, 4.0))
_ROWS, _CLASSES = 3, 5
_SPECIAL = (1e4, -1e4, 0.0)


def _values(shape, low=-20.0, high=20.0, special=_SPECIAL):
  finite = st.floats(low, high, width=32)
  return hnp.arrays(np.float32, shape, elements=st.one_of(finite, st.sampled_from(special)))


def _mask(shape, false_every=3):
  """Boolean arrays, mostly True; `st.just` rows of False come from the draws."""
  return hnp.arrays(bool, shape, elements=st.integers(0, false_every).map(bool))


def _row_masks(shape):
  """Masks with whole rows (and the whole batch) False among the draws."""
  return st.one_of(_mask(shape), _mask(shape).map(lambda m: m & False),
                   st.tuples(_mask(shape), _mask(shape[:-1] + (1,), false_every=1))
                   .map(lambda pair: pair[0] & pair[1]))


def _cast(x, dtype):
  return jnp.asarray(x).astype(dtype)


def _low_precision_tol(dtype):
  return 1e-5 if dtype == np.float32 else 2e-2


def _assert_no_nan(name, *arrays):
  for array in arrays:
    array = np.asarray(array, np.float32)
    assert not np.isnan(array).any(), f'{name}: NaN in {array}'


def _assert_finite(name, *arrays):
  for array in arrays:
    array = np.asarray(array, np.float32)
    assert np.isfinite(array).all(), f'{name}: non-finite entries in {array}'


def _assert_finite_gradient(name, grad, grad_in_float32):
  """Finite gradients; in float16 one beyond its range (65504) may overflow.

  The gradient comes back in the input's dtype: near an all-zero feature
  vector a normalisation's derivative is ~1/eps, finite in float32 but
  beyond float16. Then only NaN is an error, and the float32 gradient of the
  same values must be finite.
  """
  if grad.dtype == jnp.float16:
    _assert_no_nan(name, grad)
    _assert_finite(name, grad_in_float32())
  else:
    _assert_finite(name, grad)


def _assert_close(name, a, b, tol):
  np.testing.assert_allclose(
      np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol, err_msg=name)


def _student_grad(fn, **static):
  """``d sum(fn(student, ...)) / d student`` (the jit caches one per shape and dtype)."""
  return _jitted_student_grad(fn, tuple(sorted(static.items())))


@functools.cache
def _jitted_student_grad(fn, static):
  loss = functools.partial(fn, **dict(static))
  return jax.jit(jax.grad(lambda student, *args, **kw: jnp.sum(loss(student, *args, **kw))))


# ----------------------------------------------------------------------------
# Logit divergences, their token-level and chunked forms (one registry).

_HYPER = {'jsd': ('beta', st.sampled_from((0.0, 0.1, 0.5, 0.9, 1.0))),
          'skew_kl': ('alpha', st.sampled_from((0.0, 0.1, 0.5, 1.0))),
          'skew_reverse_kl': ('alpha', st.sampled_from((0.0, 0.1, 0.5, 1.0)))}


def _hyper(draw, name):
  if name not in _HYPER:
    return {}
  key, values = _HYPER[name]
  return {key: draw(values)}


@st.composite
def _divergence_case(draw, name):
  shape = (_ROWS, _CLASSES)
  student, teacher = draw(_values((2,) + shape))
  shared_inf = ~draw(_mask(shape, false_every=4))
  where = draw(_row_masks(shape))
  return dict(student=student, teacher=teacher, shared_inf=shared_inf, where=where,
              temperature=draw(TEMPERATURES), hyper=_hyper(draw, name),
              shift=draw(hnp.arrays(np.float32, (_ROWS, 1), elements=st.integers(-8, 8))))


@pytest.mark.parametrize('dtype', DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize('name', losses.DIVERGENCE_NAMES)
def test_logit_divergences(name, dtype):
  fn = losses.divergence_fn(name)
  tol = _low_precision_tol(dtype)

  @hypothesis.given(_divergence_case(name))
  def check(case):
    shared_inf, where = case['shared_inf'], case['where']
    kw = dict(temperature=case['temperature'], **case['hyper'])
    student = np.where(shared_inf, -np.inf, case['student'])
    teacher = np.where(shared_inf, -np.inf, case['teacher'])
    s, t = _cast(student, dtype), _cast(teacher, dtype)
    values = fn(s, t, where=where, **kw)
    grad = _student_grad(fn)(s, t, where=where, **kw)
    # Shared -inf entries leave every value finite: no NaN, no inf.
    _assert_finite(name, values, grad)
    assert values.dtype == jnp.float32
    assert (values >= -tol * kw['temperature'] ** 2).all(), values
    # A row with no class left (masked or -inf) gives 0 and zero gradients.
    empty = ~(where & ~shared_inf).any(-1)
    assert (np.asarray(values)[empty] == 0).all()
    assert (np.asarray(grad, np.float32)[empty] == 0).all()
    # Zero at equality.
    _assert_close(name, fn(s, s, where=where, **kw), 0.0, tol * kw['temperature'] ** 2)
    # -inf, a False `where` and garbage under a False `where` are one thing.
    garbage_student = np.where(shared_inf, np.nan, case['student'])
    garbage_teacher = np.where(shared_inf, 1e4, case['teacher'])
    masked = fn(_cast(garbage_student, dtype), _cast(garbage_teacher, dtype),
                where=where & ~shared_inf, **kw)
    _assert_close(name, masked, values, tol)
    if dtype != np.float32:
      return  # the rest compiles new shapes: checked once, in float32
    # Mask == slice: the last class masked out is the last class sliced away.
    last_out = where.copy()
    last_out[:, -1] = False
    _assert_close(name, fn(s, t, where=last_out, **kw),
                  fn(s[:, :-1], t[:, :-1], where=where[:, :-1], **kw), tol)
    # The token-level form computes the same divergence, 0 on masked tokens,
    # with shared -inf entries standing for the class mask.
    token_mask = where.any(-1)
    token_values = losses.token_divergence(
        _cast(np.where(where, student, -np.inf), dtype)[None],
        _cast(np.where(where, teacher, -np.inf), dtype)[None],
        divergence=name, token_mask=token_mask[None], **kw)
    _assert_close(name, token_values[0], np.where(token_mask, values, 0.0), tol)
    # Shift invariance: a constant added to a row of logits changes nothing.
    shifted = fn(s + case['shift'], t - 2 * case['shift'], where=where, **kw)
    _assert_close(name, shifted, values, 1e-4 * max(1.0, np.abs(values).max()))

  check()


@pytest.mark.parametrize('name', losses.DIVERGENCE_NAMES)
def test_logit_divergences_jit_equals_eager(name):
  fn = losses.divergence_fn(name)

  @hypothesis.given(_divergence_case(name))
  @hypothesis.settings(max_examples=2 if not _SLOW else 20)
  def check(case):
    s = np.where(case['shared_inf'], -np.inf, case['student'])
    t = np.where(case['shared_inf'], -np.inf, case['teacher'])
    kw = dict(temperature=case['temperature'], where=case['where'], **case['hyper'])
    jitted = fn(s, t, **kw)
    with jax.disable_jit():
      eager = fn(s, t, **kw)
    _assert_close(name, jitted, eager, 1e-5)

  check()


def _infinite_rows(name, hyper, student_inf, teacher_inf):
  """Rows where the divergence is mathematically +inf: one side has mass the other lacks."""
  student_only = (~student_inf & teacher_inf).any(-1)   # student mass, teacher none
  teacher_only = (student_inf & ~teacher_inf).any(-1)   # teacher mass, student none
  weight = next(iter(hyper.values()), None)
  if name == 'forward_kl':
    return teacher_only
  if name == 'reverse_kl':
    return student_only
  if name == 'jsd':  # beta = 0 is the forward KL, beta = 1 the reverse KL
    return teacher_only if weight == 0 else student_only if weight == 1 else np.zeros_like(teacher_only)
  if name == 'skew_kl':  # KL(p || alpha p + (1 - alpha) q)
    return teacher_only if weight == 0 else np.zeros_like(teacher_only)
  if name == 'skew_reverse_kl':  # KL(q || alpha q + (1 - alpha) p)
    return student_only if weight == 0 else np.zeros_like(teacher_only)
  return np.zeros_like(teacher_only)  # total variation is bounded


@pytest.mark.parametrize('name', losses.DIVERGENCE_NAMES)
def test_logit_divergences_infinite_only_where_mathematically_infinite(name):
  fn = losses.divergence_fn(name)

  @hypothesis.given(case=_divergence_case(name),
                    student_inf=_mask((_ROWS, _CLASSES), false_every=3).map(np.logical_not),
                    teacher_inf=_mask((_ROWS, _CLASSES), false_every=3).map(np.logical_not))
  def check(case, student_inf, teacher_inf):
    kw = dict(temperature=case['temperature'], **case['hyper'])
    s = np.where(student_inf, -np.inf, case['student']).astype(np.float32)
    t = np.where(teacher_inf, -np.inf, case['teacher']).astype(np.float32)
    where = np.ones_like(student_inf)
    values = np.asarray(fn(s, t, where=where, **kw))
    grad = _student_grad(fn)(s, t, where=where, **kw)
    _assert_no_nan(name, values, grad)
    expected_inf = _infinite_rows(name, case['hyper'], student_inf, teacher_inf)
    np.testing.assert_array_equal(np.isposinf(values), expected_inf, err_msg=name)
    assert (values >= -1e-5 * kw['temperature'] ** 2).all()
    # The gradient stays finite even where the value is +inf.
    _assert_finite(name, grad)

  check()


@st.composite
def _chunked_case(draw):
  hidden = draw(hnp.arrays(np.float32, (2, 1, 3, 4), elements=st.one_of(
      st.floats(-3, 3, width=32), st.sampled_from((30.0, -30.0)))))
  unembedding = draw(hnp.arrays(np.float32, (2, 4, 5), elements=st.floats(-2, 2, width=32)))
  return dict(hidden=hidden, unembedding=unembedding, token_mask=draw(_row_masks((1, 3, 1)))[..., 0],
              temperature=draw(TEMPERATURES))


@pytest.mark.parametrize('name', losses.DIVERGENCE_NAMES if _SLOW else ('forward_kl', 'jsd'))
def test_chunked_divergence(name):
  @hypothesis.given(_chunked_case())
  def check(case):
    (h, th), (w, tw) = case['hidden'], case['unembedding']
    kw = dict(divergence=name, temperature=case['temperature'], token_mask=case['token_mask'])
    dense = losses.token_divergence(h @ w, th @ tw, **kw)
    # The whole-vocabulary (fused) form too: finite and equal, gradient finite.
    fused = losses.chunked_divergence(h, w, th, tw, token_chunk=2, **kw)
    _assert_finite(name, fused)
    _assert_close(name, fused, dense, 1e-4 * max(1.0, np.abs(dense).max()))
    _assert_finite(name, jax.grad(lambda x: jnp.sum(losses.chunked_divergence(
        x, w, th, tw, token_chunk=2, **kw)))(h))
    values = losses.chunked_divergence(h, w, th, tw, token_chunk=2, vocab_chunk=2, **kw)
    _assert_finite(name, values)
    _assert_close(name, values, dense, 1e-4 * max(1.0, np.abs(dense).max()))
    assert (np.asarray(values)[~case['token_mask']] == 0).all()
    # The vocabulary-blocked form subtracts max + log_sum in one step: its
    # log-probabilities round to float32's spacing at the tempered logits.
    temperature = case['temperature']
    logits = max(np.abs(h @ w).max(), np.abs(th @ tw).max()) / temperature
    rounding = 4e-6 * temperature ** 2 * max(1.0, float(logits))
    assert (values >= -rounding).all()
    same = losses.chunked_divergence(h, w, h, w, token_chunk=2, vocab_chunk=2, **kw)
    _assert_close(name, same, 0.0, rounding)
    grad = jax.grad(lambda x: jnp.sum(losses.chunked_divergence(
        x, w, th, tw, token_chunk=2, vocab_chunk=2, **kw)))(h)
    _assert_finite(name, grad)

  check()


# ----------------------------------------------------------------------------
# Losses with labels: decoupled KD and cross entropy.


@st.composite
def _labelled_case(draw):
  case = draw(_divergence_case('forward_kl'))
  case['labels'] = draw(hnp.arrays(np.int32, (_ROWS,), elements=st.integers(0, _CLASSES - 1)))
  return case


def test_decoupled_kd_and_cross_entropy():
  @hypothesis.given(_labelled_case(), DRAWN_DTYPES)
  def check(case, dtype):
    tol = _low_precision_tol(dtype)
    where, labels, temperature = case['where'], case['labels'], case['temperature']
    s = _cast(np.where(case['shared_inf'], -np.inf, case['student']), dtype)
    t = _cast(np.where(case['shared_inf'], -np.inf, case['teacher']), dtype)
    tckd, nckd, target_prob = losses.dkd_terms(s, t, labels, temperature=temperature, where=where)
    dkd = losses.decoupled_kd(s, t, labels, temperature=temperature, where=where)
    kl = losses.kl_divergence(s, t, temperature=temperature, where=where)
    _assert_finite('dkd', tckd, nckd, target_prob, dkd)
    _assert_finite('dkd grad', _student_grad(losses.decoupled_kd)(s, t, labels, temperature=temperature, where=where))
    scale = tol * temperature ** 2 * max(1.0, np.abs(kl).max())
    assert (tckd >= -scale).all() and (nckd >= -scale).all() and (dkd >= -scale).all()
    # Zhao et al.'s reformulation: KL = TCKD + (1 - p_target) NCKD.
    _assert_close('dkd', tckd + (1 - target_prob) * nckd, kl, scale)
    _assert_close('dkd', losses.decoupled_kd(s, s, labels, temperature=temperature, where=where), 0.0, scale)
    # Cross entropy: non-negative and shift invariant; +inf exactly on a label
    # with no mass (masked out or -inf) in a row that has a class left.
    ce = np.asarray(losses.cross_entropy(s, labels, where=where))
    present = where & ~case['shared_inf']
    label_gone = ~np.take_along_axis(present, labels[:, None], -1)[:, 0]
    row_empty = ~present.any(-1)
    _assert_no_nan('cross_entropy', ce)
    _assert_finite('cross_entropy grad', _student_grad(losses.cross_entropy)(s, labels, where=where))
    np.testing.assert_array_equal(np.isposinf(ce), label_gone & ~row_empty)
    assert (ce[row_empty] == 0).all() and (ce >= -tol).all()
    if dtype == np.float32:
      shifted = losses.cross_entropy(s + case['shift'], labels, where=where)
      _assert_close('cross_entropy', np.where(label_gone, 0, shifted), np.where(label_gone, 0, ce),
                    1e-4 * max(1.0, np.abs(np.where(label_gone, 0, ce)).max()))

  check()


def test_kl_with_no_student_mass_is_inf_with_finite_gradients():
  # Found by the properties: a teacher class whose probability underflows to 0
  # (logit 0 next to 1e4) where the student's logit is -inf gave 0 * inf = NaN
  # in the forward KL; the reverse KL's gradient was NaN wherever it was +inf.
  student = np.array([[-np.inf] * 5, [1.0, -np.inf, 2.0, 0.0, 1.0]], np.float32)
  teacher = np.array([[-np.inf, 0.0, -np.inf, -np.inf, 1e4], [0.5, 1.0, 1.0, 3.0, 0.0]], np.float32)
  for fn, s, t in ((losses.kl_divergence, student, teacher),
                   (losses.reverse_kl_divergence, teacher, student)):
    values = fn(s, t, temperature=0.5)
    np.testing.assert_array_equal(values, [np.inf, np.inf])
    _assert_finite(fn.__name__, _student_grad(fn)(s, t, temperature=0.5))


# ----------------------------------------------------------------------------
# Top-k KL against a sparse teacher, cross-tokenizer losses, MiniLLM.

_TOKENS = (1, 3)  # [batch, time] of the token-level losses


@st.composite
def _token_case(draw):
  shape = _TOKENS + (_CLASSES,)
  student, teacher = draw(_values((2,) + shape))
  shared_inf = ~draw(_mask(shape, false_every=4))
  shared_inf[..., 0] = False  # every token keeps a class: a real model's logits
  return dict(student=np.where(shared_inf, -np.inf, student),
              teacher=np.where(shared_inf, -np.inf, teacher),
              token_mask=draw(_row_masks(shape))[..., 0], temperature=draw(TEMPERATURES),
              k=draw(st.sampled_from((2, _CLASSES))), dtype=draw(DRAWN_DTYPES))


def _topk_case(mode):
  if _SLOW or mode == 'tail':
    return _token_case()
  # Quick profile: one k for 'renormalize' (each k compiles anew), the one
  # where it must equal the full KL.
  return _token_case().map(lambda case: {**case, 'k': _CLASSES})


def _with_garbage(logits, token_mask):
  """Masked tokens hold NaN: they must give 0 and never leak."""
  return np.where(token_mask[..., None], logits, np.nan)


@pytest.mark.parametrize('mode', losses.TOPK_MODES)
def test_topk_kl_divergence(mode):
  @hypothesis.given(_topk_case(mode))
  def check(case):
    mask, temperature, k = case['token_mask'], case['temperature'], case['k']
    s = _cast(case['student'], case['dtype'])
    t = _cast(case['teacher'], case['dtype'])
    log_probs, indices, tail = losses.teacher_topk(t, k, temperature=temperature)
    kw = dict(temperature=temperature, token_mask=mask)
    values = losses.topk_kl_divergence(_with_garbage(s, mask), log_probs, indices, tail, mode=mode, **kw)
    grad = _student_grad(losses.topk_kl_divergence, mode=mode)(s, log_probs, indices, tail, **kw)
    _assert_finite(mode, values, grad)
    assert (np.asarray(values)[~mask] == 0).all()
    full = losses.token_divergence(s, t, temperature=temperature, token_mask=mask)
    scale = 1e-4 * temperature ** 2 * max(1.0, float(np.abs(full).max()))
    assert (values >= -scale).all()
    if mode == 'tail':  # a lower bound of the full KL, equal at k = V
      assert (values <= full + scale).all()
    if k == _CLASSES:
      _assert_close(mode, values, full, scale)
    same = losses.topk_kl_divergence(t, log_probs, indices, tail, mode=mode, **kw)
    _assert_close(mode, same, 0.0, scale)

  check()


def test_uld_loss():
  @hypothesis.given(_token_case())
  def check(case):
    mask, temperature = case['token_mask'], case['temperature']
    s = _cast(case['student'], case['dtype'])
    t = _cast(case['teacher'], case['dtype'])
    kw = dict(temperature=temperature, token_mask=mask)
    values = losses.uld_loss(_with_garbage(s, mask), t[..., :-1], **kw)
    grad = _student_grad(losses.uld_loss)(s, t[..., :-1], **kw)
    _assert_finite('uld', values, grad)
    assert (np.asarray(values)[~mask] == 0).all()
    # Sorted L1 of two distributions: in [0, 2] (times T²).
    assert (values >= -1e-6).all() and (values <= 2 * temperature ** 2 + 1e-4).all()
    _assert_close('uld', losses.uld_loss(s, s, **kw), 0.0, 1e-5)
    # Invariant to a permutation of either vocabulary.
    _assert_close('uld', losses.uld_loss(s[..., ::-1], t[..., :-1], **kw), values, 1e-5)

  check()


def test_cross_tokenizer_divergence_with_one_tokenizer_is_the_forward_kl():
  @hypothesis.given(_token_case(), st.booleans())
  def check(case, mapped):
    mask, temperature = case['token_mask'], case['temperature']
    s, t = case['student'].astype(np.float32), case['teacher'].astype(np.float32)
    labels = np.argmax(t, -1).astype(np.int32)
    chunks = np.where(mask, np.arange(_TOKENS[1]), -1).astype(np.int32)
    kw = dict(student_labels=labels, teacher_labels=labels, student_chunk=chunks,
              teacher_chunk=chunks, temperature=temperature, token_mask=mask,
              vocab_mapping=np.arange(_CLASSES, dtype=np.int32) if mapped else None)
    values = losses.cross_tokenizer_divergence(_with_garbage(s, mask), t, **kw)
    _assert_finite('cross_tokenizer', values)
    assert (np.asarray(values)[~mask] == 0).all() and (values >= -1e-5).all()
    if mapped:
      expected = losses.token_divergence(s, t, temperature=temperature, token_mask=mask)
      _assert_close('cross_tokenizer', values, expected, 1e-4 * max(1.0, float(np.abs(expected).max())))
    _assert_close('cross_tokenizer', losses.cross_tokenizer_divergence(t, t, **kw), 0.0, 1e-5)

  check()


def test_minillm_surrogate():
  @hypothesis.given(_token_case(), st.sampled_from((0.0, 0.2)), st.booleans())
  def check(case, teacher_mix, single_step):
    mask, temperature = case['token_mask'], case['temperature']
    s = _cast(case['student'], case['dtype'])
    t = _cast(case['teacher'], case['dtype'])
    tokens = np.argmax(case['student'], -1).astype(np.int32)  # a class the student can sample
    kw = dict(temperature=temperature, token_mask=mask, teacher_mix=teacher_mix)
    values = losses.minillm_surrogate(_with_garbage(s, mask), t, tokens, single_step=single_step, **kw)
    grad = _student_grad(losses.minillm_surrogate, single_step=single_step)(s, t, tokens, **kw)
    _assert_finite('minillm', values, grad)
    assert (np.asarray(values)[~mask] == 0).all()
    if single_step:  # importance-weighted per-position reverse KL
      assert (values >= -1e-5 * temperature ** 2).all()
    _assert_close('minillm', losses.minillm_surrogate(s, s, tokens, single_step=single_step, **kw),
                  0.0, 1e-4)

  check()


def test_log_softmax_keeps_shift_invariance_at_large_logits():
  # Found by the properties: x - (max + log_sum) rounded to float32's spacing
  # at 2e4 (1e4 / T), so the KL moved by 3e-4 relative under a shift of 1e4.
  student = np.array([[0.0, -np.inf, 0.0, 0.0]], np.float32)
  teacher = np.array([[0.0, -np.inf, -1e4, 0.0]], np.float32)
  expected = np.log(1.5) * 0.25  # p = (1/2, 0, 0, 1/2), q = (1/3, 0, 1/3, 1/3)
  for shift in (0.0, 1e4):
    values = losses.kl_divergence(student + shift, teacher + shift, temperature=0.5)
    np.testing.assert_allclose(values, [expected], rtol=1e-6)


# ----------------------------------------------------------------------------
# Feature and batch-relational losses, VID and CRD.

_BATCH = 4
_FEATURE_LOSSES = {
    # name: (fn, per-example feature shape)
    'hint_loss': (losses.hint_loss, (2, 2, 3)),
    'attention_transfer': (losses.attention_transfer, (2, 2, 3)),
    'nst': (losses.nst, (2, 2, 3)),
    'similarity_preserving': (losses.similarity_preserving, (3,)),
    'pkt': (losses.pkt, (3,)),
    'rkd_distance': (losses.rkd_distance, (3,)),
    'rkd_angle': (losses.rkd_angle, (3,)),
    'correlation_congruence': (losses.correlation_congruence, (3,)),
}


@st.composite
def _feature_case(draw, shape):
  student, teacher = draw(_values((2, _BATCH) + shape, low=-3.0, high=3.0))
  mask = draw(st.one_of(_mask((_BATCH,)), st.just(np.zeros(_BATCH, bool))))
  garbage = draw(_values((_BATCH,) + shape, special=(1e4, -1e4)))
  return dict(student=student, teacher=teacher, example_mask=mask, garbage=garbage,
              dtype=draw(DRAWN_DTYPES))


@pytest.mark.parametrize('name', sorted(_FEATURE_LOSSES))
def test_feature_losses(name):
  fn, shape = _FEATURE_LOSSES[name]

  @hypothesis.given(_feature_case(shape))
  def check(case):
    mask, dtype = case['example_mask'], case['dtype']
    tol = 1e-4 if dtype == np.float32 else 5e-2
    s, t = _cast(case['student'], dtype), _cast(case['teacher'], dtype)
    values = fn(s, t, example_mask=mask)
    grad = _student_grad(fn)(s, t, example_mask=mask)
    _assert_finite(name, values)
    _assert_finite_gradient(name, grad, lambda: _student_grad(fn)(
        s.astype(np.float32), t.astype(np.float32), example_mask=mask))
    assert values.shape == (_BATCH,) and values.dtype == jnp.float32
    assert (values >= -tol).all()
    assert (np.asarray(values)[~mask] == 0).all()
    if not mask.any():  # a fully masked batch: zeros and zero gradients
      assert (np.asarray(grad, np.float32) == 0).all()
    _assert_close(name, fn(s, s, example_mask=mask), 0.0, tol)
    # Padding takes part in nothing: garbage there changes no value.
    pad = (slice(None),) + (None,) * len(shape)
    s_padded = _cast(np.where(mask[pad], case['student'], case['garbage']), dtype)
    t_padded = _cast(np.where(mask[pad], case['teacher'], -case['garbage']), dtype)
    scale = tol * max(1.0, float(np.abs(values).max()))
    _assert_close(name, fn(s_padded, t_padded, example_mask=mask), values, scale)
    if dtype != np.float32:
      return  # a new shape compiles anew: checked once, in float32
    # Mask == slice: the last example masked out is the last example dropped.
    kept = mask.copy()
    kept[-1] = False
    _assert_close(name, fn(s, t, example_mask=kept)[:-1],
                  fn(s[:-1], t[:-1], example_mask=mask[:-1]), scale)

  check()


@pytest.mark.parametrize('name', sorted(_FEATURE_LOSSES) if _SLOW else
                         ('attention_transfer', 'pkt', 'rkd_angle'))
def test_feature_losses_jit_equals_eager(name):
  fn, shape = _FEATURE_LOSSES[name]

  @hypothesis.given(_feature_case(shape))
  @hypothesis.settings(max_examples=1 if not _SLOW else 10)
  def check(case):
    kw = dict(example_mask=case['example_mask'])
    jitted = fn(case['student'], case['teacher'], **kw)  # the losses jit themselves
    with jax.disable_jit():
      eager = fn(case['student'], case['teacher'], **kw)
    _assert_close(name, jitted, eager, 1e-4 * max(1.0, float(np.abs(eager).max())))

  check()


def test_vid():
  @hypothesis.given(_feature_case((2, 2, 3)),
                    hnp.arrays(np.float32, (3,), elements=st.sampled_from((1e-3, 0.1, 1.0, 10.0, 1e3))))
  def check(case, variance):
    mask, dtype = case['example_mask'], case['dtype']
    mean, t = _cast(case['student'], dtype), _cast(case['teacher'], dtype)
    values = losses.vid((mean, variance), t, example_mask=mask)
    vid_grad = lambda m: jax.grad(
        lambda m: jnp.sum(losses.vid((m, variance), t, example_mask=mask)))(m)
    _assert_finite('vid', values)
    _assert_finite_gradient('vid', vid_grad(mean), lambda: vid_grad(mean.astype(np.float32)))
    assert (np.asarray(values)[~mask] == 0).all()
    # A perfect mean leaves only the log-variance term, the minimum over the mean.
    best = losses.vid((t, variance), t, example_mask=mask)
    _assert_close('vid', best, np.where(mask, 0.5 * np.mean(np.log(variance)), 0.0), 1e-3)
    assert (values >= best - 1e-3).all()

  check()


def test_crd():
  num_data, dim = 8, 3

  @hypothesis.given(_feature_case((dim,)),
                    hnp.arrays(np.int32, (_BATCH,), elements=st.integers(0, num_data - 1)),
                    st.integers(0, 2**16))
  def check(case, indices, seed):
    mask, dtype = case['example_mask'], case['dtype']
    key = jax.random.PRNGKey(seed)
    memory = losses.crd_memory_init(key, num_data, dim)
    negatives = losses.crd_negatives(key, indices, num_data, 5)
    # CRD takes unit-norm embeddings (a CRDHead's); the draws are normalised.
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    s, t = _cast(unit(case['student']), dtype), _cast(unit(case['teacher']), dtype)
    values, new_memory = losses.crd(s, t, memory, indices, negatives, example_mask=mask)
    grad = jax.grad(lambda x: jnp.sum(losses.crd(x, t, memory, indices, negatives,
                                                 example_mask=mask)[0]))(s)
    _assert_finite('crd', values, grad, new_memory.student, new_memory.teacher)
    # Each side is -log of NCE posteriors, probabilities: non-negative.
    assert (values >= -1e-5).all()
    assert (np.asarray(values)[~mask] == 0).all()

  check()


def test_pkt_gradient_is_finite_at_zero_features():
  # Found by the properties: the norm's sqrt at an all-zero feature vector
  # had an infinite derivative, and the gradient was NaN.
  zeros = np.zeros((3, 4), np.float32)
  features = np.arange(12, dtype=np.float32).reshape(3, 4)
  for student, teacher in ((zeros, features), (features, zeros), (zeros, zeros)):
    _assert_finite('pkt', _student_grad(losses.pkt)(student, teacher))


def test_crd_fully_masked_first_batch_leaves_the_normalisers_unset():
  # Found by the properties: a first batch of padding only set Z = 0, so the
  # scores were divided by 0 and the gradient was NaN.
  key = jax.random.PRNGKey(0)
  memory = losses.crd_memory_init(key, 8, 3)
  indices = np.arange(4, dtype=np.int32)
  negatives = losses.crd_negatives(key, indices, 8, 5)
  embedding = np.ones((4, 3), np.float32) / np.sqrt(3.0)
  mask = np.zeros(4, bool)
  values, new_memory = losses.crd(embedding, embedding, memory, indices, negatives,
                                  example_mask=mask)
  grad = jax.grad(lambda x: jnp.sum(losses.crd(x, embedding, memory, indices, negatives,
                                               example_mask=mask)[0]))(embedding)
  np.testing.assert_array_equal(values, 0.0)
  _assert_finite('crd', grad)
  assert new_memory.z_student <= 0 and new_memory.z_teacher <= 0


# ----------------------------------------------------------------------------
# Transformer (TinyBERT, DistilBERT, MiniLM) losses: per-token values.

_TRANSFORMER_LOSSES = {
    # name: (fn, per-example shape, static options)
    'attention_score_mse': (losses.attention_score_mse, (2, 3, 3), {}),
    'attention_kl': (losses.attention_kl, (2, 3, 3), {}),
    'relation_kl': (losses.relation_kl, (3, 4), {'num_relation_heads': 2}),
    'hidden_mse': (losses.hidden_mse, (3, 4), {}),
    'cosine_embedding_loss': (losses.cosine_embedding_loss, (3, 4), {}),
}


@pytest.mark.parametrize('name', sorted(_TRANSFORMER_LOSSES))
def test_transformer_losses(name):
  fn, shape, static = _TRANSFORMER_LOSSES[name]

  @hypothesis.given(_values((2, 1) + shape, low=-3.0, high=3.0), _row_masks((1, 3, 1)),
                    DRAWN_DTYPES)
  def check(features, token_mask, dtype):
    token_mask = token_mask[..., 0]
    tol = 1e-4 if dtype == np.float32 else 5e-2
    s, t = _cast(features[0], dtype), _cast(features[1], dtype)
    values = fn(s, t, token_mask=token_mask, **static)
    grad = _student_grad(fn, **static)(s, t, token_mask=token_mask)
    _assert_finite(name, values)
    _assert_finite_gradient(name, grad, lambda: _student_grad(fn, **static)(
        s.astype(np.float32), t.astype(np.float32), token_mask=token_mask))
    assert values.shape == (1, 3) and (values >= -tol).all()
    assert (np.asarray(values)[~token_mask] == 0).all()
    scale = tol * max(1.0, float(np.abs(values).max()))
    _assert_close(name, fn(t, t, token_mask=token_mask, **static), 0.0, scale)

  check()


def test_soft_cross_entropy():
  @hypothesis.given(_divergence_case('forward_kl'), DRAWN_DTYPES)
  def check(case, dtype):
    s = _cast(np.where(case['shared_inf'], -np.inf, case['student']), dtype)
    t = _cast(np.where(case['shared_inf'], -np.inf, case['teacher']), dtype)
    temperature = case['temperature']
    values = losses.soft_cross_entropy(s, t, temperature=temperature)
    _assert_finite('soft_cross_entropy', values,
                   _student_grad(losses.soft_cross_entropy)(s, t, temperature=temperature))
    # Cross entropy = H(p) + KL(p || q) >= H(p), the value at equality.
    entropy = losses.soft_cross_entropy(t, t, temperature=temperature)
    tol = _low_precision_tol(dtype) * max(1.0, float(np.abs(values).max()))
    assert (values >= entropy - tol).all() and (entropy >= -tol).all()

  check()


def test_soft_cross_entropy_with_shared_minus_inf_logits_is_finite():
  # Found by the properties: a -inf logit shared by student and teacher gave
  # 0 * -inf = NaN, and so did a row of -inf logits (now 0).
  student = np.array([[1.0, -np.inf, 2.0], [-np.inf] * 3], np.float32)
  teacher = np.array([[0.5, -np.inf, 1.0], [-np.inf] * 3], np.float32)
  values = losses.soft_cross_entropy(student, teacher)
  p = np.exp([0.5, 1.0]) / np.exp([0.5, 1.0]).sum()
  log_q = np.array([1.0, 2.0]) - np.log(np.exp([1.0, 2.0]).sum())
  np.testing.assert_allclose(values, [-(p * log_q).sum(), 0.0], rtol=1e-6)
  _assert_finite('soft_cross_entropy', _student_grad(losses.soft_cross_entropy)(student, teacher))


# ----------------------------------------------------------------------------
# Regression losses (speech models, sentence embeddings): per-position values.

# name -> (fn(prediction, target, mask) with the loss's own mask name, the
# prediction's shape, NumPy reference of one position's value).
_REGRESSION_LOSSES = {
    'mel_loss_l1': (lambda p, t, m: losses.mel_loss(p, t, frame_mask=m, kind='l1'),
                    (2, 3, 4), lambda p, t: np.abs(p - t).mean(-1)),
    'mel_loss_l2': (lambda p, t, m: losses.mel_loss(p, t, frame_mask=m, kind='l2'),
                    (2, 3, 4), lambda p, t: np.square(p - t).mean(-1)),
    'variance_loss': (lambda p, t, m: losses.variance_loss(p, t, token_mask=m),
                      (2, 3), lambda p, t: np.square(p - t)),
    'sentence_embedding_mse': (lambda p, t, m: losses.sentence_embedding_mse(p, t),
                               (2, 4), lambda p, t: np.square(p - t).mean(-1)),
}


@pytest.mark.parametrize('name', sorted(_REGRESSION_LOSSES))
def test_regression_losses(name):
  fn, shape, reference = _REGRESSION_LOSSES[name]
  mask_shape = shape[:2] if len(shape) == 3 else shape[:1] if name.startswith('sentence') else shape

  @hypothesis.given(_values((2,) + shape, low=-50.0, high=50.0, special=(1e3, -1e3, 0.0)),
                    _row_masks(mask_shape), DRAWN_DTYPES)
  def check(pair, mask, dtype):
    p, t = _cast(pair[0], dtype), _cast(pair[1], dtype)
    mask = None if name.startswith('sentence') else mask
    values = fn(p, t, mask)
    _assert_finite(name, values, _student_grad(lambda a, b, m: fn(a, b, m))(p, t, mask))
    expected = reference(np.asarray(p, np.float64), np.asarray(t, np.float64))
    if mask is not None:
      expected = np.where(mask, expected, 0.0)
    tol = 1e-5 if dtype == np.float32 else 1e-2
    _assert_close(name, values, expected, tol)
    assert (np.asarray(values) >= 0).all()
    np.testing.assert_array_equal(fn(t, t, mask), 0.0)

  check()


def test_duration_and_stop_token_losses():
  @hypothesis.given(_values((2, 3), low=-5.0, high=5.0, special=(1e3, -1e3, 0.0)),
                    hnp.arrays(np.int32, (2, 3), elements=st.integers(0, 40)),
                    hnp.arrays(np.float32, (2, 3), elements=st.sampled_from((0.0, 1.0))),
                    _row_masks((2, 3)), st.sampled_from((1.0, 5.0)))
  def check(prediction, durations, targets, mask, weight):
    values = losses.duration_loss(prediction, durations, phoneme_mask=mask)
    expected = np.where(mask, np.square(prediction.astype(np.float64) - np.log1p(durations)), 0)
    _assert_close('duration_loss', values, expected, 1e-5)
    np.testing.assert_array_equal(
        losses.duration_loss(np.log1p(durations).astype(np.float32), durations,
                             phoneme_mask=mask) < 1e-10, True)
    # Binary cross entropy from logits as large as 1e3: finite, >= 0, and
    # the stable NumPy form -w y log s(z) - (1 - y) log(1 - s(z)).
    stop = losses.stop_token_loss(prediction, targets, frame_mask=mask, positive_weight=weight)
    z = prediction.astype(np.float64)
    expected = np.where(mask, weight * targets * np.logaddexp(0, -z)
                        + (1 - targets) * np.logaddexp(0, z), 0)
    _assert_close('stop_token_loss', stop, expected, 1e-5)
    grads = jax.grad(lambda z: jnp.sum(losses.stop_token_loss(
        z, targets, frame_mask=mask, positive_weight=weight)))(prediction)
    _assert_finite('stop_token_loss', stop, grads)

  check()


def _attention_loss_checked(loss, scores, phoneme_mask, frame_mask):
  """`loss` of the softmax over the real phonemes of `scores`: its values, after
  checking that they and their gradient with respect to the attention are finite."""
  attention = jax.nn.softmax(jnp.where(phoneme_mask[:, None, None], scores, -jnp.inf), -1)
  attention = jnp.nan_to_num(attention)  # rows with no phoneme: all zeros
  masks = {'phoneme_mask': phoneme_mask, 'frame_mask': frame_mask}
  values = loss(attention, **masks)
  grads = jax.grad(lambda a: jnp.sum(loss(a, **masks)))(attention)
  _assert_finite(loss.__name__, values, grads)
  return values


def test_guided_attention_loss():
  @hypothesis.given(_values((2, 1, 3, 4), low=-5.0, high=5.0, special=(20.0, -20.0, 0.0)),
                    _row_masks((2, 4)), _row_masks((2, 3)))
  def check(scores, phoneme_mask, frame_mask):
    values = _attention_loss_checked(losses.guided_attention_loss, scores, phoneme_mask,
                                     frame_mask)
    # Attention weights in [0, 1] that sum to at most 1 over the phonemes:
    # the penalty is in [0, 1], and 0 on padded frames.
    assert values.shape == (2, 3)
    assert (np.asarray(values) >= 0).all() and (np.asarray(values) <= 1 + 1e-6).all()
    np.testing.assert_array_equal(np.asarray(values)[~frame_mask], 0.0)

  check()


def test_forward_sum_loss():
  @hypothesis.given(_values((2, 1, 5, 4), low=-5.0, high=5.0, special=(20.0, -20.0, 0.0)),
                    _row_masks((2, 4)), _row_masks((2, 5)))
  def check(scores, phoneme_mask, frame_mask):
    # The masks are prefixes (the loss's contract): a row's real positions come first.
    phoneme_mask = np.cumprod(phoneme_mask, -1).astype(bool)
    frame_mask = np.cumprod(frame_mask, -1).astype(bool)
    values = _attention_loss_checked(losses.forward_sum_loss, scores, phoneme_mask,
                                     frame_mask)
    # Minus the log of a sum of path probabilities that is at most 1: each
    # row's sum is >= 0; padded frames give 0.
    assert values.shape == (2, 5)
    assert (np.asarray(values).sum(-1) >= -1e-4).all()
    np.testing.assert_array_equal(np.asarray(values)[~frame_mask], 0.0)

  check()
