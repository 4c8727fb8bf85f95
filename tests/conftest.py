"""Test settings: 8 simulated CPU devices, strict numerics, one XLA cache per run."""

import os
import shutil
import tempfile

# Must happen before jax initialises its backend. The tests check what the
# programs compute, not how fast they run, and most of their time is XLA
# compiling tiny programs: LLVM's optimisation level 0 compiles them about a
# third faster (the seqkd smoke run: 47 s -> 31 s CPU). The flag is LLVM's:
# the optimised HLO, and with it the fusions, stays the same (compared on a
# sample program); set the flag yourself in XLA_FLAGS to test at another
# level.
_FLAGS = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
if 'xla_backend_optimization_level' not in _FLAGS:
  _FLAGS += ' --xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = _FLAGS.strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

jax.config.update('jax_numpy_rank_promotion', 'raise')

# Many tests compile the same programs (the same tiny models, losses and
# steps built afresh in each test), and most of the suite's time is XLA
# compiling. A persistent compilation cache shared by this run's processes
# (the pytest-xdist workers inherit the directory through the environment)
# compiles each distinct program once. The directory is new for every run and
# removed at its end, so a clean clone pays the same as any other run and no
# test can pass on a program compiled by older code.
_CACHE_ENV = 'KDJAX_TEST_XLA_CACHE'
_OWNS_CACHE = _CACHE_ENV not in os.environ
if _OWNS_CACHE:
  os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix='kdjax-test-xla-cache-')
jax.config.update('jax_compilation_cache_dir', os.environ[_CACHE_ENV])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)


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


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWNS_CACHE:
    shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)
