"""One process of tests/test_fault_tolerance.py's two-process preemption test.

Run as ``python tests/multihost_fit_worker.py PORT PROCESS_ID WORKDIR EPOCHS``
with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``. Both processes
run :func:`kdjax.loop.fit` on one 8-device mesh (state and data replicated)
with a shared checkpoint directory; each writes its metrics under
``WORKDIR/process_<i>``. A SIGTERM to either process makes both stop after
the same epoch, save, and exit with status 0.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import optax

from kdjax import checkpoint
from kdjax import Outputs
from kdjax import loop
from kdjax import objective as objective_lib
from kdjax import parallel
from kdjax import step as step_lib
from kdjax import writers

FEATURES, CLASSES, EXAMPLES, BATCH = 4, 3, 32, 8


def linear_apply(variables, batch, *, train, rngs=None):
  del train, rngs
  return Outputs(logits=batch['x'] @ variables['params']['w']), {}


def main(port: str, process_id: str, workdir: str, epochs: str) -> None:
  jax.config.update('jax_numpy_rank_promotion', 'raise')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  parallel.initialize_distributed(
      f'127.0.0.1:{port}', num_processes=2, process_id=int(process_id),
      initialization_timeout=60)
  mesh = parallel.make_mesh({'data': -1})
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def place(tree):
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), replicated,
                                               lambda index: np.asarray(x)[index]), tree)

  rng = np.random.default_rng(0)
  data = place({'x': rng.normal(size=(EXAMPLES, FEATURES)).astype(np.float32),
                'label': rng.integers(0, CLASSES, EXAMPLES).astype(np.int32)})
  optimizer = optax.sgd(0.1)
  train_step = step_lib.make_train_step(
      linear_apply, None, objective_lib.Objective({'ce': objective_lib.supervised()}), optimizer)
  state = place(jax.device_get(step_lib.init_train_state(
      {'params': {'w': np.zeros((FEATURES, CLASSES), np.float32)}}, optimizer, rng=0)))
  epoch_fn = jax.jit(loop.make_epoch_fn(train_step, batch_size=BATCH))
  manager = checkpoint.make_manager(os.path.join(workdir, 'checkpoints'))
  out = os.path.join(workdir, f'process_{process_id}')
  try:
    with writers.MetricWriter(out, tensorboard=False) as writer:
      loop.fit(epoch_fn, state, None, data, num_epochs=int(epochs), seed=0, writer=writer,
               manager=manager, save_every=int(epochs), progress=False)
  except loop.Preempted as preempted:
    with open(os.path.join(out, 'preempted.json'), 'w') as f:
      json.dump({'step': preempted.step, 'signal': preempted.signal_name,
                 'message': str(preempted)}, f)
    raise
  finally:
    manager.close()


if __name__ == '__main__':
  main(*sys.argv[1:])
