"""Test settings: 8 simulated CPU devices, strict numerics, one XLA cache per run."""

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile

# Must happen before jax initialises its backend. The tests check what the
# programs compute, not how fast they run, and most of their time is XLA
# compiling tiny programs: LLVM's optimisation level 0 compiles them about a
# third faster (the seqkd smoke run: 47 s -> 31 s CPU). The flag is LLVM's:
# the optimised HLO, and with it the fusions, stays the same (compared on a
# sample program); set the flag yourself in XLA_FLAGS to test at another
# level.
#
# XLA:CPU's MLIR fusion emitters cost compile time too: with
# --xla_cpu_use_fusion_emitters=false XLA emits fusions through its older
# elemental emitter, which compiles the suite's programs in about 40 % less
# time (the whole suite on 2 cores: 1,314 s -> 811 s, all tests passing; a
# tiny LM's train step: 1.2 -> 0.5 s). The programs are the same up to XLA's
# fusion choices (a tiny LM's gradient: 136 fusions against 134, the rest of
# the optimised HLO alike) and the machine code of each fusion, so results may
# differ in the last bits, which no test depends on: each compares programs
# compiled under the same flags, or within a tolerance. XLA aborts
# the process on a flag it does not know, and it means to retire this one, so
# a child process asks first; without it the suite runs on the default
# emitters, only slower.
#
# KDJAX_TEST_COMPILE_FLAGS keeps the flags that change only how fast XLA
# compiles, for the tests that start their own processes with their own
# XLA_FLAGS (through tests/child_processes.py).
_FUSION_FLAG = '--xla_cpu_use_fusion_emitters=false'
_COMPILE_FLAGS_ENV = 'KDJAX_TEST_COMPILE_FLAGS'


def _xla_accepts(flag: str) -> bool:
  env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, '-c', 'import jax; jax.devices()'], env=env,
                        capture_output=True, timeout=300, check=False)
  return done.returncode == 0


if _COMPILE_FLAGS_ENV not in os.environ:  # the first process; pytest-xdist workers inherit it
  _compile_flags = []
  if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
    _compile_flags.append('--xla_backend_optimization_level=0')
  if 'xla_cpu_use_fusion_emitters' not in os.environ.get('XLA_FLAGS', '') and _xla_accepts(
      _FUSION_FLAG):
    _compile_flags.append(_FUSION_FLAG)
  os.environ[_COMPILE_FLAGS_ENV] = ' '.join(_compile_flags)
  os.environ['XLA_FLAGS'] = ' '.join(
      [os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=8',
       *_compile_flags]).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

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


@pytest.fixture(scope='session')
def mnist1d_data_dir(tmp_path_factory):
  """A TFDS ``data_dir`` holding MNIST-1D (its default config), built once per run.

  The Hinton experiments' smoke tests read it instead of each generating
  the same 5,000 signals (about 8 s of CPU each). Under pytest-xdist every
  worker has a session of its own: the first worker to take the lock builds
  the dataset in the run's shared temporary directory and the others wait
  for it and read it. Building the dataset is tested on its own in
  tests/test_data.py.
  """
  root = tmp_path_factory.getbasetemp()
  if 'PYTEST_XDIST_WORKER' in os.environ:
    root = root.parent  # shared by the run's workers
  data_dir = root / 'mnist1d_tfds'
  with open(root / 'mnist1d_tfds.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    built = data_dir / 'built'
    if not built.exists():
      from kdjax import data as kdata  # pylint: disable=import-outside-toplevel
      kdata.Mnist1d(data_dir=str(data_dir)).download_and_prepare()
      built.touch()
  return data_dir


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWNS_CACHE:
    shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)
