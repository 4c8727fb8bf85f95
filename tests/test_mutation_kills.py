"""The mutant list of benchmarks/mutation.py stays valid; tests that kill its survivors."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import Outputs
from kdjax import metrics as metrics_lib
from kdjax import objective as objective_lib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'))

import mutation  # noqa: E402


def test_every_mutant_snippet_occurs_exactly_once():
  assert mutation.check_mutants() == []
  assert len(mutation.MUTANTS) >= 60


# ----------------------------------------------------------------------------
# Tests written for mutants of benchmarks/mutation.py that survived the suite.


class _NoiseTerm(objective_lib.StatefulTerm):
  """Values drawn from the term's key; the state records the key's bits."""

  def init(self, rng, variables):
    del rng, variables
    return jnp.zeros((2,), jnp.uint32)

  def __call__(self, student, teacher, batch, step, *, state, rng, axis_name):
    del teacher, batch, step, state, axis_name
    values = jax.random.uniform(rng, student.logits.shape[:1])
    return values, None, jax.random.key_data(rng)


def test_stateful_terms_each_get_their_own_key():
  """Kills objective-stateful-rng: two stateful terms must not share their noise."""
  objective = objective_lib.Objective({'a': _NoiseTerm(), 'b': _NoiseTerm()})
  student = Outputs(logits=jnp.zeros((4, 3)))
  state = objective.init(jax.random.PRNGKey(0), {'params': {}})
  rng = jax.random.PRNGKey(7)
  _, metrics, new_state = objective.apply(student, None, {}, step=0, state=state, rng=rng)
  assert not np.array_equal(new_state['a'], new_state['b'])
  assert metrics_lib.compute(metrics)['loss/a'] != metrics_lib.compute(metrics)['loss/b']
  # Deterministic: the same rng gives the same keys.
  _, _, again = objective.apply(student, None, {}, step=0, state=state, rng=rng)
  np.testing.assert_array_equal(again['a'], new_state['a'])
