"""Sharding for distillation: meshes, partition rules, sharded and pmap steps, multi-host."""

from kdjax.parallel._batch import batch_sharding
from kdjax.parallel._batch import batch_spec
from kdjax.parallel._batch import process_rows
from kdjax.parallel._batch import shard_batch
from kdjax.parallel._distributed import any_process
from kdjax.parallel._distributed import initialize_distributed
from kdjax.parallel._mesh import DATA_AXES
from kdjax.parallel._mesh import make_mesh
from kdjax.parallel._pmap import make_pmap_train_step
from kdjax.parallel._pmap import replicate
from kdjax.parallel._pmap import split_batch
from kdjax.parallel._pmap import unreplicate
from kdjax.parallel._rules import like_params
from kdjax.parallel._rules import param_shardings
from kdjax.parallel._rules import param_specs
from kdjax.parallel._shard_map import gather_batch
from kdjax.parallel._shard_map import per_device
from kdjax.parallel._shard_map import per_device_metric
from kdjax.parallel._step import init_sharded_train_state
from kdjax.parallel._step import init_sharded_variables
from kdjax.parallel._step import jit_train_step
from kdjax.parallel._step import place_variables
from kdjax.parallel._step import train_state_shardings

__all__ = [
    'DATA_AXES',
    'any_process',
    'batch_sharding',
    'batch_spec',
    'gather_batch',
    'init_sharded_train_state',
    'init_sharded_variables',
    'initialize_distributed',
    'jit_train_step',
    'like_params',
    'make_mesh',
    'make_pmap_train_step',
    'param_shardings',
    'param_specs',
    'process_rows',
    'per_device',
    'per_device_metric',
    'place_variables',
    'replicate',
    'shard_batch',
    'split_batch',
    'train_state_shardings',
    'unreplicate',
]
