"""Hinton, Vinyals & Dean (2015) in the paper's own regime, on the larger MNIST-1D.

Config for ``experiments/hinton_large.py``; one scale, ``cpu``::

    python -m experiments.hinton_large --config=experiments/configs/hinton_large.py:cpu \\
        --workdir=runs/hinton_large

Data: ``mnist1d/large`` (kdjax's MNIST-1D builder with ``num_samples`` =
20,000): 14,000 training examples, 2,000 validation examples (the last
2,000 of the generated training split) and 4,000 test examples (about 400
per class). The test split is read once, after every run has finished.

Two arms, side by side, sharing one teacher per seed:

* ``paper``: the paper's regime. Neither student is jittered nor dropped
  out, and the transfer set is the clean training set; the distilled
  student is "regularized solely by adding the additional task of matching
  the soft targets".
* ``jittered``: both students train on freshly jittered inputs every step
  (what ``experiments/configs/hinton.py`` does).

The teacher (a 1-D CNN with dropout, on jittered inputs) trains for at most
``teacher.epochs`` epochs and keeps the weights of its best validation
epoch (early stopping on validation). Every choice is made on the
validation split of the selection seeds (``selection_seeds``), which are
never reported: the teacher's dropout and learning rate, each arm's
student width and learning rate (on the labels-only student), temperature
and soft weight, the distilled student's learning rate (over the same
learning-rate grid as the baseline's), and the bias added to the omitted
class. A grid whose best value sits on an edge is widened (up to
``max_widen`` extra values per axis, within ``limits``). Cost: about 30
minutes on 2 shared CPU cores (estimated; the recorded run gives its wall time).
"""

import ml_collections

from kdjax import config as config_lib


def get_config(scale: str = 'cpu') -> ml_collections.ConfigDict:
  if scale != 'cpu':
    raise ValueError(f"unknown scale {scale!r}; use 'cpu'")
  c = ml_collections.ConfigDict()
  c.scale = scale
  c.seeds = (0, 1, 2, 3, 4)  # reported
  c.selection_seeds = (100,)  # choose everything on these; never reported
  c.progress = True

  c.data = ml_collections.ConfigDict()
  c.data.name = 'mnist1d/large'
  c.data.data_dir = ''  # '' -> ~/tensorflow_datasets
  c.data.train_split = 'train[:14000]'
  c.data.val_split = 'train[14000:]'
  c.data.test_split = 'test'
  # Circular shift by up to `shift` positions, amplitude scaling by 1 +-
  # `scale`, Gaussian noise: the teacher's inputs, and both students' in the
  # jittered arm.
  c.data.jitter = ml_collections.ConfigDict({'shift': 3, 'scale': 0.2, 'noise': 0.1})

  c.teacher = ml_collections.ConfigDict()
  c.teacher.kind = 'cnn1d'
  c.teacher.hidden_sizes = (64, 64, 64)
  c.teacher.dropout = 0.5  # replaced by the selection
  c.teacher.input_dropout = 0.0
  c.teacher.jitter = True
  c.teacher.epochs = 20  # at most; the best validation epoch is kept
  c.teacher.eval_every = 1
  c.teacher.batch_size = 128
  c.teacher.learning_rate = 3e-3  # replaced by the selection
  c.teacher.weight_decay = 0.0

  c.student = ml_collections.ConfigDict()
  c.student.kind = 'mlp'
  c.student.num_layers = 2  # hidden layers, each of the selected width
  c.student.dropout = 0.0
  c.student.input_dropout = 0.0
  c.student.epochs = 20  # the same fixed budget for every student
  c.student.batch_size = 128
  c.student.weight_decay = 0.0

  # Selection grids (the first value of an axis is not a default: every
  # value is run). Axes with one value are not searched.
  c.grid = ml_collections.ConfigDict()
  c.grid.teacher_dropout = (0.2, 0.5)
  c.grid.teacher_learning_rate = (3e-3, 1e-2)
  c.grid.width = (128, 256)
  c.grid.learning_rate = (3e-3, 1e-2, 3e-2)
  c.grid.temperature = (2.0, 4.0, 8.0)
  c.grid.soft_weight = (0.5, 0.9)
  c.max_widen = 2
  # How far an edge may be widened: (low, high) per axis.
  c.limits = ml_collections.ConfigDict({
      'teacher_dropout': (0.0, 0.8), 'teacher_learning_rate': (1e-4, 0.1),
      'width': (16, 512), 'learning_rate': (1e-4, 0.1), 'temperature': (0.5, 64.0),
      'soft_weight': (0.01, 0.999),
  })

  c.omitted = ml_collections.ConfigDict()
  c.omitted.label = 3
  c.omitted.bias_grid = tuple(0.25 * i for i in range(0, 81))
  return c


def schema() -> config_lib.Schema:
  """What ``experiments/hinton_large.py`` accepts: keys and types of the defaults,
  these bounds, and the rules below."""
  cl = config_lib
  bounds = {
      'scale': cl.one_of('cpu'),
      'seeds': cl.nonnegative(each=True),
      'selection_seeds': cl.nonnegative(each=True),
      'data.name': cl.one_of('mnist1d', 'mnist1d/default', 'mnist1d/large'),
      'data.jitter.shift': cl.nonnegative(),
      'data.jitter.scale': cl.unit_interval(high_open=True),
      'data.jitter.noise': cl.nonnegative(),
      'teacher.kind': cl.one_of('cnn1d', 'mlp'),
      'teacher.hidden_sizes': cl.positive(each=True),
      'teacher.dropout': cl.unit_interval(high_open=True),
      'teacher.input_dropout': cl.unit_interval(high_open=True),
      'teacher.epochs': cl.positive(),
      'teacher.eval_every': cl.positive(),
      'teacher.batch_size': cl.positive(),
      'teacher.learning_rate': cl.positive(),
      'teacher.weight_decay': cl.nonnegative(),
      'student.kind': cl.one_of('mlp'),
      'student.num_layers': cl.positive(),
      'student.dropout': cl.unit_interval(high_open=True),
      'student.input_dropout': cl.unit_interval(high_open=True),
      'student.epochs': cl.positive(),
      'student.batch_size': cl.positive(),
      'student.weight_decay': cl.nonnegative(),
      'grid.teacher_dropout': cl.unit_interval(each=True, high_open=True),
      'grid.teacher_learning_rate': cl.positive(each=True),
      'grid.width': cl.positive(each=True),
      'grid.learning_rate': cl.positive(each=True),
      'grid.temperature': cl.positive(each=True),
      'grid.soft_weight': cl.unit_interval(each=True),
      'max_widen': cl.nonnegative(),
      'omitted.label': cl.one_of(*range(10)),
  }
  rules = (*cl.distinct_non_empty('seeds', 'selection_seeds', 'grid.teacher_dropout',
                                  'grid.teacher_learning_rate', 'grid.width', 'grid.learning_rate',
                                  'grid.temperature', 'grid.soft_weight', 'omitted.bias_grid'),
           cl.non_empty('teacher.hidden_sizes'), cl.disjoint('selection_seeds', 'seeds'))
  return cl.Schema(get_config('cpu'), bounds, rules)
