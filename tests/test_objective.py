"""Objective: reduction, masks, weights, schedules, metrics, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import Outputs
from kdjax import losses
from kdjax import metrics as metrics_lib
from kdjax import objective as objective_lib
from kdjax import recipes


def _outputs(seed, shape=(6, 5)):
  key = jax.random.PRNGKey(seed)
  return Outputs(
      logits=jax.random.normal(key, shape),
      features={'h': jax.random.normal(jax.random.fold_in(key, 1), shape[:-1] + (3,))},
  )


def _batch(batch_size=6, classes=5):
  return {'label': jnp.arange(batch_size) % classes}


def _np_kl(s, t, temperature):
  def log_softmax(z):
    z = z / temperature
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  ls, lt = log_softmax(np.float64(s)), log_softmax(np.float64(t))
  return temperature**2 * (np.exp(lt) * (lt - ls)).sum(-1)


def test_total_is_weighted_sum_of_term_means():
  student, teacher, batch = _outputs(0), _outputs(1), _batch()
  objective = objective_lib.Objective(
      {
          'kd': objective_lib.distill(losses.kl_divergence, temperature=2.0),
          'ce': objective_lib.supervised(),
      },
      weights={'kd': 0.7, 'ce': 0.3},
  )
  loss, metrics = objective(student, teacher, batch, step=0)
  kd = _np_kl(student.logits, teacher.logits, 2.0).mean()
  logp = np.asarray(jax.nn.log_softmax(student.logits))
  ce = -logp[np.arange(6), np.asarray(batch['label'])].mean()
  np.testing.assert_allclose(loss, 0.7 * kd + 0.3 * ce, rtol=1e-5)
  means = metrics_lib.compute(metrics)
  np.testing.assert_allclose(means['loss/kd'], kd, rtol=1e-5)
  np.testing.assert_allclose(means['loss/ce'], ce, rtol=1e-5)
  assert means['weight/kd'] == pytest.approx(0.7)


def test_batch_mask_equals_slicing():
  student, teacher, batch = _outputs(0), _outputs(1), _batch()
  objective = objective_lib.Objective(
      {'kd': objective_lib.distill(losses.kl_divergence), 'ce': objective_lib.supervised()},
      metrics={'acc/student': objective_lib.accuracy_metric()},
  )
  mask = jnp.array([1, 1, 1, 1, 0, 0])
  masked_loss, masked = objective(student, teacher, {**batch, 'mask': mask})
  sliced = jax.tree.map(lambda x: x[:4], (student, teacher, batch))
  sliced_loss, plain = objective(*sliced)
  np.testing.assert_allclose(masked_loss, sliced_loss, rtol=1e-6)
  for name in ('loss/kd', 'loss/ce', 'acc/student'):
    np.testing.assert_allclose(masked[name][0], plain[name][0], rtol=1e-6)
    assert float(masked[name][1]) == float(plain[name][1]) == 4.0


def test_padding_with_nan_does_not_leak():
  student, teacher, batch = _outputs(0), _outputs(1), _batch()
  logits = student.logits.at[5].set(jnp.nan)
  objective = objective_lib.Objective({'ce': objective_lib.supervised()})
  loss, _ = objective(student.replace(logits=logits), teacher, {**batch, 'mask': jnp.arange(6) < 5})
  assert np.isfinite(loss)


def test_token_weighted_mean_over_batch_and_time():
  student, teacher = _outputs(0, (3, 4, 7)), _outputs(1, (3, 4, 7))
  mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
  objective = objective_lib.Objective({'kd': objective_lib.distill(losses.kl_divergence)})
  loss, metrics = objective(student, teacher, {'mask': mask})
  per_token = _np_kl(student.logits, teacher.logits, 1.0)
  expected = (per_token * np.asarray(mask)).sum() / 7.0
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(metrics['loss/kd'][1]) == 7.0
  # A [batch] mask on [batch, time] values masks whole sequences.
  loss_rows, _ = objective(student, teacher, {'mask': jnp.array([1, 0, 1])})
  expected_rows = per_token[[0, 2]].mean()
  np.testing.assert_allclose(loss_rows, expected_rows, rtol=1e-5)


def test_schedules_are_evaluated_at_the_step():
  schedule = optax.linear_schedule(1.0, 0.0, 10)
  temperature = optax.linear_schedule(1.0, 5.0, 10)
  student, teacher = _outputs(0), _outputs(1)
  objective = objective_lib.Objective(
      {'kd': objective_lib.distill(losses.kl_divergence, temperature=temperature)},
      weights={'kd': schedule},
  )
  for step in (0, 4, 10):
    loss, metrics = objective(student, teacher, {}, step=jnp.asarray(step))
    t = float(temperature(step))
    kd = _np_kl(student.logits, teacher.logits, t).mean()
    np.testing.assert_allclose(loss, float(schedule(step)) * kd, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics['weight/kd'][0], schedule(step), rtol=1e-6)


def test_feature_term_and_custom_term():
  student, teacher = _outputs(0), _outputs(1)

  def mse(a, b):
    return jnp.mean((a - b) ** 2, axis=-1)

  def logit_l1(student, teacher, batch, step):
    del batch, step
    return jnp.sum(jnp.abs(student.logits - teacher.logits), -1), None

  objective = objective_lib.Objective(
      {'hint': objective_lib.feature(mse, 'h'), 'l1': logit_l1}
  )
  loss, _ = objective(student, teacher, {})
  expected = np.mean((student.features['h'] - teacher.features['h']) ** 2) + np.mean(
      np.abs(student.logits - teacher.logits).sum(-1)
  )
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_label_aware_distill_passes_labels():
  student, teacher, batch = _outputs(0), _outputs(1), _batch()
  objective = objective_lib.Objective(
      {'dkd': objective_lib.distill(losses.decoupled_kd, temperature=4.0, label_key='label')}
  )
  loss, _ = objective(student, teacher, batch)
  expected = losses.decoupled_kd(
      student.logits, teacher.logits, batch['label'], temperature=4.0
  ).mean()
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_errors_name_the_problem():
  student, teacher = _outputs(0), _outputs(1)
  kd = objective_lib.distill(losses.kl_divergence)
  with pytest.raises(KeyError, match=r"unknown terms \['kld'\]"):
    objective_lib.Objective({'kd': kd}, weights={'kld': 1.0})
  with pytest.raises(ValueError, match='at least one term'):
    objective_lib.Objective({})
  with pytest.raises(TypeError, match="term 'kd' must be callable.*NoneType"):
    objective_lib.Objective({'kd': None})
  with pytest.raises(ValueError, match='temperature must be > 0'):
    objective_lib.distill(losses.kl_divergence, temperature=0.0)
  with pytest.raises(ValueError, match='temperature must be > 0'):
    objective_lib.distill(losses.kl_divergence, temperature=lambda step: -1.0 + 0 * step)
  with pytest.raises(ValueError, match=r"weights\['kd'\] must be >= 0"):
    objective_lib.Objective({'kd': kd}, weights={'kd': -1.0})
  objective = objective_lib.Objective({'kd': kd, 'ce': objective_lib.supervised()})
  with pytest.raises(KeyError, match=r"label_key 'label' is not in the batch; the batch has \['y'\]"):
    objective(student, teacher, {'y': jnp.zeros(6, jnp.int32)})
  with pytest.raises(ValueError, match=r'batch mask with shape \(4,\).*values with shape \(6,\)'):
    objective(student, teacher, {'label': jnp.zeros(6, jnp.int32), 'mask': jnp.ones(4)})
  with pytest.raises(ValueError, match="term 'kd' needs teacher outputs"):
    objective(student, None, {'label': jnp.zeros(6, jnp.int32)})
  hint = objective_lib.Objective({'hint': objective_lib.feature(lambda a, b: a, 'conv3')})
  with pytest.raises(KeyError, match=r"feature 'conv3'.*exposes \['h'\]"):
    hint(student, teacher, {})


def test_jit_equals_no_jit():
  student, teacher, batch = _outputs(0), _outputs(1), _batch()
  objective = objective_lib.Objective(
      {
          'kd': objective_lib.distill(losses.kl_divergence, temperature=optax.linear_schedule(1.0, 4.0, 8)),
          'ce': objective_lib.supervised(),
      },
      weights={'ce': optax.linear_schedule(1.0, 0.1, 8)},
  )
  for step in (0, 3):
    eager = objective(student, teacher, batch, step=step)
    jitted = jax.jit(lambda s, t, b, k: objective(s, t, b, step=k))(student, teacher, batch, step)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager, jitted)


def test_term_masks_align_with_leading_axes():
  values = jnp.arange(9.0).reshape(3, 3)

  def term_with(mask):
    return lambda student, teacher, batch, step: (values, mask)

  rows, _ = objective_lib.Objective({'t': term_with(jnp.array([1.0, 1.0, 0.0]))})(None, None, {})
  np.testing.assert_allclose(rows, np.asarray(values)[:2].mean())
  columns, _ = objective_lib.Objective({'t': term_with(jnp.array([[1.0, 1.0, 0.0]]))})(None, None, {})
  np.testing.assert_allclose(columns, np.asarray(values)[:, :2].mean())
  with pytest.raises(ValueError, match=r"term 't' mask with shape \(2,\).*shape \(3, 3\)"):
    objective_lib.Objective({'t': term_with(jnp.ones(2))})(None, None, {})


def test_missing_teacher_error_names_the_term():
  objective = objective_lib.Objective({'soft': objective_lib.distill(losses.kl_divergence)})
  with pytest.raises(ValueError, match=r"term 'soft' needs teacher outputs"):
    objective(_outputs(0), None, {})


def test_a_terms_own_mask_is_multiplied_by_the_batch_padding_mask():
  # The term masks some rows itself; the batch pads others. Only rows that
  # both keep may count (dropping the batch mask would count the padding).
  values = jnp.arange(1.0, 7.0)
  own = jnp.asarray([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
  padding = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])

  def masked_term(student, teacher, batch, step):
    return values, own

  objective = objective_lib.Objective({'t': masked_term})
  loss, metrics = objective(_outputs(0), None, {'mask': padding})
  keep = np.asarray(own) * np.asarray(padding)
  np.testing.assert_allclose(loss, (np.asarray(values) * keep).sum() / keep.sum(), rtol=1e-6)
  assert float(metrics['loss/t'][1]) == keep.sum()


def test_token_terms_weigh_tokens_by_the_padding_mask_once():
  # Fractional token weights: the mean is sum(v * w) / sum(w), not w squared.
  student, teacher = _outputs(0, (2, 3, 5)), _outputs(1, (2, 3, 5))
  weights = jnp.asarray([[1.0, 0.5, 0.0], [0.25, 1.0, 1.0]])
  per_token = np.asarray(losses.token_divergence(student.logits, teacher.logits))
  expected = (per_token * np.asarray(weights)).sum() / np.asarray(weights).sum()
  objective = objective_lib.Objective({'kd': objective_lib.token_distill()})
  loss, _ = objective(student, teacher, {'mask': weights})
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_deprecated_names_warn_and_still_work():
  with pytest.warns(DeprecationWarning, match='schedule_value'):
    evaluate = objective_lib.evaluate
  assert float(evaluate(lambda s: 2.0 * s, jnp.asarray(3))) == 6.0
  with pytest.warns(DeprecationWarning, match='accuracy_metric'):
    assert objective_lib.accuracy is objective_lib.accuracy_metric
  with pytest.warns(DeprecationWarning, match='kdjax.recipes.freeze_except'):
    assert objective_lib.fitnets_stage1_optimizer is recipes.freeze_except
  with pytest.warns(DeprecationWarning, match='kdjax.losses.mixture_log_probs'):
    assert objective_lib.mixture_log_probs is losses.mixture_log_probs
  with pytest.raises(AttributeError, match='no attribute'):
    objective_lib.no_such_name  # noqa: B018


def test_language_model_term_constructors_return_terms():
  """Every LM term constructor returns a callable term that an Objective takes."""
  terms = {
      'token': objective_lib.token_distill(),
      'chunked': objective_lib.chunked_distill(),
      'uld': objective_lib.uld_distill(),
      'cross_tokenizer': objective_lib.cross_tokenizer_distill(),
      'cached': objective_lib.cached_token_distill(),
      'minillm': objective_lib.minillm_distill(),
  }
  for name, term in terms.items():
    assert callable(term), name
  objective_lib.Objective(terms)
