"""What the tests that start their own JAX processes give them, shared by those tests."""

import os
import pathlib
import socket

ROOT = pathlib.Path(__file__).resolve().parent.parent


def xla_flags(devices: int | None = None) -> str:
  """XLA_FLAGS for a child: conftest's compile-only flags, and `devices` CPU devices.

  The flags are the ones that change only how fast XLA compiles
  (``KDJAX_TEST_COMPILE_FLAGS``, set by conftest); without `devices` the
  child has one CPU device.
  """
  flags = [os.environ['KDJAX_TEST_COMPILE_FLAGS']]
  if devices is not None:
    flags.insert(0, f'--xla_force_host_platform_device_count={devices}')
  return ' '.join(flags).strip()


def env(devices: int | None = None) -> dict[str, str]:
  """This process's environment for a child on the CPU that can import kdjax."""
  return {**os.environ, 'XLA_FLAGS': xla_flags(devices), 'JAX_PLATFORMS': 'cpu',
          'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}


def free_port() -> int:
  """A TCP port on localhost that nothing listens on now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
