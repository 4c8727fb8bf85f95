"""Token-level distillation of a character (byte) level Transformer language model.

Configs for ``experiments/lm_kd.py``. The corpus is the Python standard
library's own ``*.py`` sources on this machine (no network), read as bytes
(vocabulary 256); whole files are held out for validation and test (5 %
each, by a hash of the path), tests and third-party packages excluded. A
teacher :class:`kdjax.zoo.DecoderLM` is trained on next-byte prediction;
students with about a quarter of its parameters are trained on labels
alone, or on a token-level divergence from the teacher (forward KL, reverse
KL, generalized JSD with beta 0.5, skew KL with alpha 0.1) mixed with the
labels. Reported: held-out bits per byte (= bits per character: the
sources are ASCII but for a few files), token-weighted over real targets.

* ``cpu`` (what ``make lm-demo`` runs): a deterministic subset of the
  files (the first ones of each split in path-hash order: about 480 kB of
  training text, 32 kB of validation and 96 kB of test text), context 128;
  a 4-layer, 96-wide teacher (467,808 parameters, 2 epochs) trained once
  and shared by all seeds; 2-layer, 64-wide students (115,008 parameters,
  0.25 of the teacher, 1 epoch) for 3 seeds. The students distil from the
  teacher's logits computed once over the training windows and kept in
  float16 (``kd.cache_teacher_logits``): the same targets as running the
  teacher at every step, for a fraction of the cost. With the choice of
  the mix weight (two weights per divergence on the first seed) that is one
  teacher and 19 student runs: 24 minutes measured on 2 CPU cores shared
  with other jobs (load about 10; the teacher 6 minutes, a student about
  50 s); less on an idle machine. Command::

      python -m experiments.lm_kd --config=experiments/configs/lm_kd.py:cpu \\
          --workdir=runs/lm_kd_cpu

* ``full``: the whole standard library (about 11 MB of training text),
  context 512, a 12-layer, 768-wide teacher (85 M parameters) and 6-layer,
  512-wide students (19 M parameters, 0.22 of the teacher), distilling
  from the teacher run live at every step (no logit cache); meant for an
  accelerator, a few hours on one GPU. Command::

      python -m experiments.lm_kd --config=experiments/configs/lm_kd.py:full \\
          --workdir=runs/lm_kd_full

The mix of divergence and labels, ``w`` x divergence + ``(1 - w)`` x cross
entropy, is chosen per divergence from ``kd.kd_weight_grid`` by the
validation bits per byte of the first seed (whose run at the chosen ``w``
is reused); the test files never choose anything. The learning rates were
fixed before the run, the same for every student.
"""

import ml_collections

from kdjax import config as config_lib


def _model(num_layers, hidden, num_heads, mlp_dim, dropout):
  return ml_collections.ConfigDict({
      'num_layers': num_layers, 'hidden': hidden, 'num_heads': num_heads, 'mlp_dim': mlp_dim,
      'dropout': dropout, 'positions': 'rope',
  })


def get_config(scale: str = 'cpu') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.scale = scale
  c.seeds = (0, 1, 2)
  c.teacher_seed = 0  # one teacher, shared by every seed's students
  c.progress = True
  c.variants = ('labels', 'forward_kl', 'reverse_kl', 'jsd', 'skew_kl')

  c.data = ml_collections.ConfigDict()
  c.data.root = ''  # '' -> the running interpreter's standard library
  c.data.suffixes = ('.py',)
  c.data.val_fraction = 0.05
  c.data.test_fraction = 0.05
  # Byte budgets per split (whole files, first in path-hash order); 0 = all.
  c.data.train_bytes = 480_000
  c.data.val_bytes = 32_000
  c.data.test_bytes = 96_000
  c.data.context = 128
  c.data.eval_batch_size = 64

  c.teacher = _model(4, 96, 4, 384, 0.1)
  c.teacher.epochs = 2
  c.teacher.batch_size = 16
  c.teacher.learning_rate = 3e-3
  c.teacher.warmup_steps = 50
  c.teacher.weight_decay = 0.01

  c.student = _model(2, 64, 4, 256, 0.0)
  c.student.epochs = 1
  c.student.batch_size = 16
  c.student.learning_rate = 3e-3
  c.student.warmup_steps = 50
  c.student.weight_decay = 0.01

  c.kd = ml_collections.ConfigDict()
  c.kd.temperature = 1.0
  # loss = w * divergence + (1 - w) * cross entropy on the labels, with w
  # chosen per divergence from this grid by the first seed's validation bits.
  c.kd.kd_weight_grid = (0.5, 1.0)
  c.kd.jsd_beta = 0.5  # GKD's generalized JSD
  c.kd.skew_alpha = 0.1  # DistiLLM's skew KL
  c.kd.cache_teacher_logits = True

  if scale == 'full':
    c.data.train_bytes = 0
    c.data.val_bytes = 0
    c.data.test_bytes = 0
    c.data.context = 512
    c.data.eval_batch_size = 32
    c.teacher = _model(12, 768, 12, 3072, 0.1)
    c.teacher.epochs = 20
    c.teacher.batch_size = 64
    c.teacher.learning_rate = 6e-4
    c.teacher.warmup_steps = 2000
    c.teacher.weight_decay = 0.1
    c.student = _model(6, 512, 8, 2048, 0.1)
    c.student.epochs = 10
    c.student.batch_size = 64
    c.student.learning_rate = 1e-3
    c.student.warmup_steps = 1000
    c.student.weight_decay = 0.1
    # [windows, 512, 256] logits of 11 MB of text would be 3 GB in float16:
    # run the teacher at every step instead.
    c.kd.cache_teacher_logits = False
  elif scale != 'cpu':
    raise ValueError(f"unknown scale {scale!r}; use 'cpu' or 'full'")
  return c


def schema() -> config_lib.Schema:
  """What ``experiments/lm_kd.py`` accepts: keys and types of the defaults,
  these bounds, and the rules below."""
  cl = config_lib
  bounds = {
      'teacher.positions': cl.one_of('rope', 'learned'),
      'student.positions': cl.one_of('rope', 'learned'),
      'scale': cl.one_of('cpu', 'full'),
      'seeds': cl.nonnegative(each=True),
      'teacher_seed': cl.nonnegative(),
      'variants': cl.one_of('labels', 'forward_kl', 'reverse_kl', 'jsd', 'skew_kl', each=True),
      'data.val_fraction': cl.unit_interval(high_open=True),
      'data.test_fraction': cl.unit_interval(high_open=True),
      **cl.bounds_under('data', cl.nonnegative(), ('train_bytes', 'val_bytes', 'test_bytes')),
      'data.context': cl.positive(),
      'data.eval_batch_size': cl.positive(),
      'kd.temperature': cl.positive(),
      'kd.kd_weight_grid': cl.unit_interval(each=True),
      'kd.jsd_beta': cl.unit_interval(),
      'kd.skew_alpha': cl.unit_interval(),
  }
  for model in ('teacher', 'student'):
    bounds.update(cl.recipe_bounds(model, ('num_layers', 'hidden', 'num_heads', 'mlp_dim')))
  rules = (*cl.distinct_non_empty('seeds', 'variants'), cl.non_empty('kd.kd_weight_grid'),
           cl.divisible('teacher.hidden', 'teacher.num_heads'),
           cl.divisible('student.hidden', 'student.num_heads'),
           cl.sum_below(('data.val_fraction', 'data.test_fraction'), 1.0))
  return cl.Schema(get_config('cpu'), bounds, rules)
