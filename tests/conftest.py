"""Test settings: 8 simulated CPU devices, strict numerics."""

import os

# Must happen before jax initialises its backend.
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

jax.config.update('jax_numpy_rank_promotion', 'raise')

# Hypothesis (tests/test_properties.py): `ci`, the default, runs few examples
# with a fixed seed, so `make test` is quick and never flaky; `make test-slow`
# selects `slow` through KDJAX_HYPOTHESIS_PROFILE. No deadline: the first
# example of each test pays for the compilation.
import hypothesis  # noqa: E402

hypothesis.settings.register_profile(
    'ci', max_examples=5, deadline=None, derandomize=True, database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.register_profile(
    'slow', max_examples=300, deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile(os.environ.get('KDJAX_HYPOTHESIS_PROFILE', 'ci'))
