"""One process of tests/test_multihost.py: a few distillation steps on a global mesh.

Run as ``python tests/multihost_worker.py PORT PROCESS_ID OUT.json`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; two such processes
make one 8-device mesh. The test process imports :func:`run` to compute the
same steps on 8 local devices.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import losses
from kdjax import metrics as metrics_lib
from kdjax import objective as objective_lib
from kdjax import parallel
from kdjax import step as step_lib
from kdjax import zoo

VOCAB, TIME, BATCH, STEPS = 16, 4, 16, 3
STUDENT = zoo.DecoderConfig(
    vocab_size=VOCAB, num_layers=1, hidden=8, num_heads=2, mlp_dim=16, max_len=TIME
)
TEACHER = zoo.DecoderConfig(
    vocab_size=VOCAB, num_layers=1, hidden=16, num_heads=2, mlp_dim=32, max_len=TIME
)
AXES = {'data': -1, 'fsdp': 2}  # 4 x 2 over the 8 devices of both processes
STUDENT_RULES = [('embed', 'fsdp'), ('vocab', None), ('heads', None), ('kv', None),
                 ('mlp', None), ('position', None)]
TEACHER_RULES = [(r'mlp/wi$', jax.sharding.PartitionSpec(None, 'fsdp')),
                 ('.*', jax.sharding.PartitionSpec())]
OPTIMIZER = optax.sgd(0.5, momentum=0.9)


def fixed_init(config: zoo.DecoderConfig, seed: float):
  """``() -> boxed variables`` of ``DecoderLM(config)`` with fixed values.

  ``model.init``'s random initializers take seconds of CPU to compile; the
  equivalence tests only need some fixed values (a sine of the index).
  """
  abstract = jax.eval_shape(
      zoo.DecoderLM(config).init, jax.random.PRNGKey(0), jnp.zeros((2, TIME), jnp.int32))

  def init():
    leaves, treedef = jax.tree.flatten(
        abstract, is_leaf=lambda x: hasattr(x, 'replace_boxed'))
    values = []
    for i, box in enumerate(leaves):
      shape = box.unbox().shape
      index = jnp.arange(np.prod(shape), dtype=jnp.float32)
      value = 0.5 * jnp.sin(index * (0.37 + 0.1 * i) + seed)
      values.append(box.replace_boxed(value.reshape(shape)))
    return jax.tree.unflatten(treedef, values)

  return init


def global_batches() -> list[dict[str, np.ndarray]]:
  """The global batches; padding is uneven over the processes and devices."""
  rng = np.random.default_rng(0)
  mask = np.ones((BATCH, TIME), np.float32)
  mask[: BATCH // 2, 1:] = 0.0
  return [
      {
          'tokens': rng.integers(0, VOCAB, (BATCH, TIME), dtype=np.int32),
          'label': rng.integers(0, VOCAB, (BATCH, TIME), dtype=np.int32),
          'mask': mask,
      }
      for _ in range(STEPS)
  ]


def run() -> dict:
  """The steps on a mesh of all devices; each process feeds its own rows."""
  mesh = parallel.make_mesh(AXES)
  state, state_shardings = parallel.init_sharded_train_state(
      fixed_init(STUDENT, 1.0), OPTIMIZER, STUDENT_RULES, mesh)
  # The teacher as a restored checkpoint would be: host values, the same in
  # every process, placed on its own shardings.
  teacher_host = jax.device_get(jax.jit(lambda: jax.tree.map(
      lambda b: b.unbox(), fixed_init(TEACHER, 2.0)(),
      is_leaf=lambda x: hasattr(x, 'unbox')))())
  teacher_shardings = parallel.param_shardings(teacher_host, TEACHER_RULES, mesh)
  teacher = parallel.place_variables(teacher_host, teacher_shardings)
  step = parallel.jit_train_step(
      step_lib.make_train_step(
          zoo.lm_apply(zoo.DecoderLM(STUDENT)), zoo.lm_apply(zoo.DecoderLM(TEACHER)),
          objective_lib.Objective(
              terms={
                  'kd': objective_lib.distill(losses.kl_divergence, temperature=2.0),
                  'ce': objective_lib.supervised(),
              },
              weights={'kd': 0.7, 'ce': 0.3},
          ),
          OPTIMIZER,
      ),
      mesh, state_shardings=state_shardings, teacher_shardings=teacher_shardings,
  )
  rows = parallel.process_rows(mesh, BATCH)
  history = []
  for batch in global_batches():
    local = {name: value[rows] for name, value in batch.items()}
    state, metrics = step(state, teacher, parallel.shard_batch(local, mesh))
    history.append(metrics_lib.compute(metrics))
  norm = jax.jit(optax.tree.norm, out_shardings=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))(state.params)
  return {
      'history': history,
      'param_norm': float(jax.device_get(norm)),
      'rows': [rows.start, rows.stop],
      'devices': jax.device_count(),
      'processes': jax.process_count(),
  }


def main(port: str, process_id: str, out_path: str) -> None:
  jax.config.update('jax_numpy_rank_promotion', 'raise')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  parallel.initialize_distributed(
      f'127.0.0.1:{port}', num_processes=2, process_id=int(process_id),
      initialization_timeout=60,
  )
  result = run()
  with open(out_path, 'w') as f:
    json.dump(result, f)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main(*sys.argv[1:])
