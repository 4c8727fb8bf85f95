"""Steps per second of ``loop.fit`` on the Hinton cpu config's distillation, A/B.

Times a short :func:`kdjax.loop.fit` (the distilled MLP student of
experiments/configs/hinton.py:cpu, its CNN teacher, jittered MNIST-1D, with a
checkpoint manager and a metrics writer, so that the preemption check is
active) after a warm-up fit that compiles. To compare two versions of kdjax,
run it alternately with each on ``PYTHONPATH``::

    for i in 1 2 3; do
      PYTHONPATH=/path/to/old python benchmarks/fit_overhead.py --label before
      PYTHONPATH=. python benchmarks/fit_overhead.py --label after
    done

Each run prints one JSON line: label, steps/s of each repeat, load average.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after PYTHONPATH, which picks the kdjax under test

from experiments import hinton  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.configs import hinton as hinton_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdjax import adapters  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdjax import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdjax import loop  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdjax import step as step_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdjax import writers  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--label', default='')
  parser.add_argument('--epochs', type=int, default=30)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  config = hinton_config.get_config('cpu')
  arrays, num_classes = hinton.load_arrays(config)
  train = jax.device_put(arrays['train'])
  teacher = hinton.make_model(config.teacher, num_classes)
  student = hinton.make_model(config.student, num_classes)
  x = arrays['train']['x'][:1]
  teacher_vars = jax.jit(lambda k: teacher.init(k, x, train=False))(jax.random.PRNGKey(0))
  steps_per_epoch = len(arrays['train']['label']) // config.student.batch_size
  optimizer = hinton.make_optimizer(config.kd, steps_per_epoch * args.epochs)
  train_step = step_lib.make_train_step(adapters.from_linen(student), adapters.from_linen(teacher),
                                        hinton.kd_objective(config.kd), optimizer)
  epoch_fn = jax.jit(loop.make_epoch_fn(train_step, batch_size=config.student.batch_size,
                                        augment=hinton.make_jitter(**config.data.jitter)),
                     donate_argnums=0)
  init = jax.jit(lambda k: step_lib.init_train_state(
      student.init(k, x, train=False), optimizer, rng=1))

  def timed_fit(num_epochs):
    with tempfile.TemporaryDirectory() as workdir:
      manager = checkpoint.make_manager(os.path.join(workdir, 'ckpt'))
      with writers.MetricWriter(workdir) as writer:
        state = init(jax.random.PRNGKey(0))
        jax.block_until_ready(state)
        start = time.perf_counter()
        # save_every beyond the run: the one save is the last, outside the timing's noise
        state = loop.fit(epoch_fn, state, teacher_vars, train, num_epochs=num_epochs, seed=0,
                         writer=writer, manager=manager, save_every=10 * num_epochs,
                         progress=False)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - start
      manager.close()
    return steps_per_epoch * num_epochs / seconds

  timed_fit(1)  # compiles
  rates = [timed_fit(args.epochs) for _ in range(args.repeats)]
  print(json.dumps({'label': args.label, 'kdjax': os.path.dirname(loop.__file__),
                    'steps_per_s': [round(r, 1) for r in rates],
                    'load': [round(v, 2) for v in os.getloadavg()]}))


if __name__ == '__main__':
  main()
