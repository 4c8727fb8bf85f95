"""Distilling a byte-level language model: claims of GKD, MiniLLM, offline caches and ULD tested.

Configs for ``experiments/lm_distill.py``. The corpus is the Python
standard library's own ``*.py`` sources on this machine (no network), read
as bytes (vocabulary 256), whole files held out for validation and test
(by a hash of the path), each cut to its first ``data.max_file_bytes``
(32 kB, at a line end) so that no file dominates a split. Excluded: tests and third-party packages (as in
``lm_kd``), ``encodings/`` (generated codec tables) and ``pydoc_data/``
(the generated help topics), and every other file whose bytes are mostly
*table lines* (lines of literals and punctuation only, no name, no
docstring; ``data.max_table_share``): ``locale.py``'s alias tables,
``html/entities.py``, ``stringprep.py``, ``_sysconfigdata_*.py``,
``_compat_pickle.py`` and a few tiny files. The results record every file
excluded and why.

Two teachers (``teacher_seeds``) are trained on next-byte prediction;
student seed ``i`` distils from teacher ``i mod 2`` (seeds 0 and 2 from
the first, seed 1 from the second), and every variant of a seed starts from
the same initialisation and sees the same batches. Variants: labels only
at the student's budget and at the teacher's token budget
(``labels_long``); off-policy forward KL, reverse KL, generalized JSD and
skew KL, each mixed with the labels, ``w`` and ``T`` searched on
validation bits/byte of an unreported selection seed over
``kd.weights x kd.temperatures`` (widened while the choice is on an edge
of the grid, up to ``kd.widen_rounds`` times); on-policy GKD (a share
``onpolicy.fraction`` of each batch's rows continued by the student from
their first ``onpolicy.prompt_width`` bytes, the divergence
``onpolicy.divergence`` at its selected ``w``, ``T``); MiniLLM's
policy-gradient reverse KL with teacher-mixed sampling (at reverse KL's
``w``, ``T``); forward KL from the offline top-k cache of ``kdjax.cache``
(at forward KL's ``w``, ``T``); and a student with its own byte-level BPE
(trained with ``tokenizers`` on the training split) on labels only or with
cross-tokenizer ULD from the byte-level teacher. Evaluated: held-out
bits/byte teacher-forced, and generation: continuations of held-out
prompts sampled with a fixed key, scored by the teachers' per-token NLL,
with distinct-n. The test split is scored once, at the end.

* ``smoke``: a few steps of every variant with 1-layer, 8-wide models (the
  teacher the student's size) on about 24 kB of text; what the CI test
  runs (plumbing, not a result).
* ``cpu``: 2.10 MB of training text (186 files), 235 kB of validation (19)
  and 219 kB of test text (21), context 128; 4-layer, 128-wide teachers
  (820,352 parameters, 2 epochs of batch 32: 1,032 steps), 2-layer, 64-wide
  students (115,008 parameters, 0.14 of the teacher; 1 epoch, 516 steps;
  ``labels_long`` 2 epochs). Estimated run time, from one step of each kind
  timed by ``benchmarks/lm_distill_steps.py`` (2026-12-06, load 12, so the
  CPU time of each step is used, not its wall time): 14,100 CPU-seconds for
  the training steps and evaluations (teachers 1,900; the 12 reported
  off-policy runs 2,600; the 20 selection runs 4,300; GKD 740; MiniLLM
  990; cached 330 + cache writes 200; BPE students 1,400; labels 950;
  evaluations 730), plus compilation of about 15 programs, checkpoints and
  any widening of the grid. On a quiet 2-core machine that is between 2.0 h
  (both cores busy) and 3.9 h (one core); about 2.5-3 h expected. Command::

      python -m experiments.lm_distill --config=experiments/configs/lm_distill.py:cpu \\
          --workdir=runs/lm_distill_cpu

* ``full``: the whole standard library, context 512, a 12-layer, 768-wide
  teacher and 6-layer, 512-wide students; for an accelerator (hours on one
  GPU). Command::

      python -m experiments.lm_distill --config=experiments/configs/lm_distill.py:full \\
          --workdir=runs/lm_distill_full
"""

import ml_collections

from kdjax import config as config_lib

OFF_POLICY = ('forward_kl', 'reverse_kl', 'jsd', 'skew_kl')
VARIANTS = ('labels', 'labels_long', *OFF_POLICY, 'gkd', 'minillm', 'cached_forward_kl',
            'bpe_labels', 'bpe_uld')

def _model(num_layers, hidden, num_heads, mlp_dim, dropout):
  return ml_collections.ConfigDict({
      'num_layers': num_layers, 'hidden': hidden, 'num_heads': num_heads, 'mlp_dim': mlp_dim,
      'dropout': dropout, 'positions': 'rope',
  })


def _recipe(model, *, epochs, batch_size, learning_rate, warmup_steps, weight_decay):
  model.epochs = epochs
  model.batch_size = batch_size
  model.learning_rate = learning_rate
  model.warmup_steps = warmup_steps
  model.weight_decay = weight_decay
  return model


def get_config(scale: str = 'cpu') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.scale = scale
  c.seeds = (0, 1, 2)
  c.teacher_seeds = (0, 1)  # student seed i distils from teacher i mod len(teacher_seeds)
  c.selection_seed = 100  # chooses w and T; never reported
  c.progress = True
  c.variants = VARIANTS

  c.data = ml_collections.ConfigDict()
  c.data.root = ''  # '' -> the running interpreter's standard library
  c.data.suffixes = ('.py',)
  # Skipped at any depth, besides tests and installed packages.
  c.data.exclude_dirs = ('encodings', 'pydoc_data')
  # A file whose bytes are at least this share table lines is a generated table.
  c.data.max_table_share = 0.5
  # Each file's first bytes only (cut at a line end), so no file dominates a split.
  c.data.max_file_bytes = 32_000
  c.data.val_fraction = 0.1
  c.data.test_fraction = 0.1
  # Byte budgets per split (whole files, first in path-hash order); 0 = all.
  c.data.train_bytes = 2_100_000
  c.data.val_bytes = 210_000
  c.data.test_bytes = 210_000
  c.data.context = 128
  c.data.eval_batch_size = 64

  c.teacher = _recipe(_model(4, 128, 4, 512, 0.1), epochs=2, batch_size=32,
                      learning_rate=3e-3, warmup_steps=100, weight_decay=0.01)
  c.student = _recipe(_model(2, 64, 4, 256, 0.0), epochs=1, batch_size=32,
                      learning_rate=3e-3, warmup_steps=50, weight_decay=0.01)

  c.kd = ml_collections.ConfigDict()
  # loss = w * divergence(T) + (1 - w) * cross entropy on the labels.
  c.kd.weights = (0.25, 0.5, 0.75)
  c.kd.temperatures = (0.5, 1.0, 2.0)
  # While the chosen w or T is on an edge of its grid (and not at w = 1),
  # the grid grows by one value past that edge, at most this many times.
  c.kd.widen_rounds = 2
  # 'coordinate': every w at the middle T, then every T at the chosen w
  # (5 runs per divergence here, not 9); 'grid': every pair.
  c.kd.search = 'coordinate'
  c.kd.jsd_beta = 0.5  # the teacher's weight in GKD's mixture (TRL's convention)
  c.kd.skew_alpha = 0.1  # DistiLLM's skew

  c.onpolicy = ml_collections.ConfigDict()
  c.onpolicy.divergence = 'jsd'  # GKD's divergence; its off-policy run is the control
  c.onpolicy.fraction = 0.5  # GKD's lambda: the share of rows the student continues
  c.onpolicy.prompt_width = 96  # bytes of each training window kept as the prompt
  c.onpolicy.sample_temperature = 1.0
  c.minillm = ml_collections.ConfigDict()
  c.minillm.teacher_mix = 0.2  # MiniLLM's alpha
  c.minillm.single_step = True
  c.minillm.length_normalize = True

  c.cache = ml_collections.ConfigDict()
  c.cache.k = 16
  c.cache.log_prob_format = 'uint8'
  c.cache.index_encoding = 'bytes'

  c.xtok = ml_collections.ConfigDict()
  c.xtok.vocab_size = 1024  # the student's BPE, trained on the training split
  c.xtok.student_context = 64  # BPE tokens per window (a window is context + 1 bytes)
  c.xtok.weight = 0.5
  c.xtok.temperature = 1.0
  c.xtok.hybrid = False  # True: GOLD's hybrid (exact matches by KL) instead of ULD alone

  c.eval = ml_collections.ConfigDict()
  c.eval.num_prompts = 256
  c.eval.prompt_width = 64
  c.eval.new_tokens = 64
  c.eval.temperature = 1.0  # sampling; the key is fixed (eval.seed)
  c.eval.seed = 1234
  c.eval.distinct_n = (4, 8)

  if scale == 'smoke':
    c.seeds = (0, 1)
    c.progress = False
    c.data.train_bytes = 24_000
    c.data.val_bytes = 4_000
    c.data.test_bytes = 4_000
    c.data.max_file_bytes = 4_000
    c.data.context = 32
    c.data.eval_batch_size = 64
    # Teacher and student alike, so that the teacher's, the labels-only and
    # the teacher-budget programs are one program (compiled once, the rest
    # read from the compilation cache): the smoke run tests the plumbing.
    c.teacher = _recipe(_model(1, 8, 2, 16, 0.0), epochs=1, batch_size=128,
                        learning_rate=3e-3, warmup_steps=1, weight_decay=0.0)
    c.student = _recipe(_model(1, 8, 2, 16, 0.0), epochs=1, batch_size=128,
                        learning_rate=3e-3, warmup_steps=1, weight_decay=0.0)
    c.kd.weights = (0.5,)
    c.kd.temperatures = (1.0,)
    c.kd.widen_rounds = 0
    c.onpolicy.prompt_width = 24
    c.cache.k = 4
    c.xtok.vocab_size = 300
    c.xtok.student_context = 24
    c.eval.num_prompts = 8
    c.eval.prompt_width = 16
    c.eval.new_tokens = 8
  elif scale == 'full':
    c.data.train_bytes = 0
    c.data.val_bytes = 0
    c.data.test_bytes = 0
    c.data.max_file_bytes = 0
    c.data.context = 512
    c.data.eval_batch_size = 32
    c.teacher = _recipe(_model(12, 768, 12, 3072, 0.1), epochs=20, batch_size=64,
                        learning_rate=6e-4, warmup_steps=2000, weight_decay=0.1)
    c.student = _recipe(_model(6, 512, 8, 2048, 0.1), epochs=10, batch_size=64,
                        learning_rate=1e-3, warmup_steps=1000, weight_decay=0.1)
    c.onpolicy.prompt_width = 384
    c.cache.k = 64
    c.xtok.vocab_size = 8192
    c.xtok.student_context = 256
    c.eval.num_prompts = 1024
    c.eval.prompt_width = 256
    c.eval.new_tokens = 256
  elif scale != 'cpu':
    raise ValueError(f"unknown scale {scale!r}; use 'smoke', 'cpu' or 'full'")
  return c


def _fits_context(config, context):
  del context
  problems = []
  limit = config.data.context + 1
  if config.onpolicy.prompt_width >= limit:
    problems.append(('onpolicy.prompt_width', config.onpolicy.prompt_width,
                     f'< data.context + 1 = {limit} (room for a continuation)'))
  total = config.eval.prompt_width + config.eval.new_tokens
  if total > limit:
    problems.append(('eval.new_tokens', config.eval.new_tokens,
                     f'eval.prompt_width + eval.new_tokens <= data.context + 1 = {limit}'))
  return problems


def schema() -> config_lib.Schema:
  """What ``experiments/lm_distill.py`` accepts: keys and types of the defaults,
  these bounds, and the rules below."""
  cl = config_lib
  bounds = {
      'teacher.positions': cl.one_of('rope', 'learned'),
      'student.positions': cl.one_of('rope', 'learned'),
      'scale': cl.one_of('smoke', 'cpu', 'full'),
      'seeds': cl.nonnegative(each=True),
      'teacher_seeds': cl.nonnegative(each=True),
      'selection_seed': cl.nonnegative(),
      'variants': cl.one_of(*VARIANTS, each=True),
      'data.max_table_share': cl.unit_interval(),
      'data.max_file_bytes': cl.nonnegative(),
      'data.val_fraction': cl.unit_interval(high_open=True),
      'data.test_fraction': cl.unit_interval(high_open=True),
      **cl.bounds_under('data', cl.nonnegative(), ('train_bytes', 'val_bytes', 'test_bytes')),
      'data.context': cl.positive(),
      'data.eval_batch_size': cl.positive(),
      'kd.weights': cl.unit_interval(each=True),
      'kd.temperatures': cl.positive(each=True),
      'kd.widen_rounds': cl.nonnegative(),
      'kd.search': cl.one_of('grid', 'coordinate'),
      'kd.jsd_beta': cl.unit_interval(),
      'kd.skew_alpha': cl.unit_interval(),
      'onpolicy.divergence': cl.one_of(*OFF_POLICY),
      'onpolicy.fraction': cl.unit_interval(),
      'onpolicy.prompt_width': cl.positive(),
      'onpolicy.sample_temperature': cl.positive(),
      'minillm.teacher_mix': cl.unit_interval(high_open=True),
      'cache.k': cl.positive(),
      'cache.log_prob_format': cl.one_of('float32', 'bfloat16', 'float16', 'uint8'),
      'cache.index_encoding': cl.one_of('bytes', 'packed'),
      'xtok.vocab_size': cl.positive(),
      'xtok.student_context': cl.positive(),
      'xtok.weight': cl.unit_interval(),
      'xtok.temperature': cl.positive(),
      **cl.bounds_under('eval', cl.positive(),
                        ('num_prompts', 'prompt_width', 'new_tokens', 'temperature')),
      'eval.seed': cl.nonnegative(),
      'eval.distinct_n': cl.positive(each=True),
  }
  for model in ('teacher', 'student'):
    bounds.update(cl.recipe_bounds(model, ('num_layers', 'hidden', 'num_heads', 'mlp_dim')))
  rules = (*cl.distinct_non_empty('seeds', 'teacher_seeds', 'variants'),
           cl.non_empty('kd.weights'), cl.non_empty('kd.temperatures'),
           cl.non_empty('eval.distinct_n'),
           cl.divisible('teacher.hidden', 'teacher.num_heads'),
           cl.divisible('student.hidden', 'student.num_heads'),
           cl.sum_below(('data.val_fraction', 'data.test_fraction'), 1.0),
           _fits_context, cl.disjoint('selection_seed', 'seeds'))
  return cl.Schema(get_config('cpu'), bounds, rules)
