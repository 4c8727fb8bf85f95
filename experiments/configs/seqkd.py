"""Sequence-level KD (Kim & Rush, 2016) on English->German gettext catalogs.

Configs for ``experiments/seqkd.py``. The data are the UI strings of
Debian packages' gettext catalogs (``kdjax.data.GettextTranslation``,
built on first use with ``apt-get download``, no other network), split by
catalog so that one program's strings never straddle train and test, with
a joint BPE trained on the training split.

* ``cpu`` (what ``make seqkd-demo`` runs): a 4,000-token BPE; pairs of at
  most 16 source and 16 target tokens (EOS included; about 70 % of the
  pairs); a seeded subset of 10,000 training pairs, 500 validation pairs
  and every test pair that fits; a 3+3-layer, 128-wide teacher (10 epochs)
  and 1+1-layer, 64-wide students (6 epochs), 3 seeds. Command::

      python -m experiments.seqkd --config=experiments/configs/seqkd.py:cpu \\
          --workdir=runs/seqkd_cpu

* ``full``: for a user with network and an accelerator: WMT'14
  English->German through TFDS (``wmt14_translate/de-en``, 4.5 M pairs, a
  32k joint BPE trained on its training split), sentences up to 64 tokens,
  a 6+6-layer, 512-wide teacher (Transformer base) and 3+3-layer,
  256-wide students.

The word-KD weight is chosen from ``kd.kd_weight_grid`` by validation
greedy BLEU of the first seed; each run keeps its epoch of best validation
greedy BLEU. The test catalogs are decoded once, at the end.
"""

import ml_collections

from kdjax import config as config_lib


def _model(encoder_layers, decoder_layers, hidden, num_heads, mlp_dim, dropout, epochs,
           batch_size, learning_rate, warmup_steps):
  return ml_collections.ConfigDict({
      'encoder_layers': encoder_layers, 'decoder_layers': decoder_layers, 'hidden': hidden,
      'num_heads': num_heads, 'mlp_dim': mlp_dim, 'dropout': dropout, 'epochs': epochs,
      'batch_size': batch_size, 'learning_rate': learning_rate,
      'warmup_steps': warmup_steps, 'weight_decay': 0.01,
  })


def get_config(scale: str = 'cpu') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.scale = scale
  c.seeds = (0, 1, 2)
  c.teacher_seed = 0
  c.progress = True
  c.variants = ('baseline', 'word_kd', 'seq_kd', 'seq_interp', 'seq_kd_word_kd')

  c.data = ml_collections.ConfigDict()
  c.data.source = 'gettext'  # or 'wmt14' (TFDS, needs network)
  c.data.lang = 'de'
  c.data.pairs_file = ''  # build from these normalised pairs instead of apt-get
  c.data.data_dir = 'runs/data'  # where the gettext dataset is built
  c.data.vocab_size = 4000
  c.data.val_fraction = 0.05  # of the pairs, by whole catalogs
  c.data.test_fraction = 0.05
  c.data.min_eval_pairs = 1000
  c.data.max_source_len = 16
  c.data.max_target_len = 16
  c.data.max_train = 10_000  # 0 = every pair that fits
  c.data.max_val = 500
  c.data.max_test = 0
  c.data.subset_seed = 0

  c.teacher = _model(3, 3, 128, 4, 512, 0.1, epochs=10, batch_size=64, learning_rate=2e-3,
                     warmup_steps=200)
  c.student = _model(1, 1, 64, 4, 256, 0.1, epochs=6, batch_size=64, learning_rate=2e-3,
                     warmup_steps=200)

  c.kd = ml_collections.ConfigDict()
  c.kd.temperature = 1.0
  c.kd.kd_weight_grid = (0.5, 0.9)
  c.kd.data_beam_width = 5  # Kim & Rush's beam for the teacher's data
  c.kd.data_batch_size = 128

  c.eval = ml_collections.ConfigDict()
  c.eval.beam_width = 5
  c.eval.beam_alpha = 0.6
  c.eval.batch_size = 128

  if scale == 'full':
    c.data.max_source_len = 64
    c.data.max_target_len = 64
    c.data.max_train = 0
    c.data.max_val = 0
    c.data.source = 'wmt14'
    c.data.data_dir = ''  # TFDS's default
    c.data.vocab_size = 32000
    c.teacher = _model(6, 6, 512, 8, 2048, 0.1, epochs=40, batch_size=128,
                       learning_rate=7e-4, warmup_steps=4000)
    c.student = _model(3, 3, 256, 4, 1024, 0.1, epochs=40, batch_size=128,
                       learning_rate=7e-4, warmup_steps=4000)
  elif scale != 'cpu':
    raise ValueError(f"unknown scale {scale!r}; use 'cpu' or 'full'")
  return c


def schema() -> config_lib.Schema:
  """What ``experiments/seqkd.py`` accepts: keys and types of the defaults,
  these bounds, and the rules below."""
  cl = config_lib
  bounds = {
      'scale': cl.one_of('cpu', 'full'),
      'seeds': cl.nonnegative(each=True),
      'teacher_seed': cl.nonnegative(),
      'variants': cl.one_of('baseline', 'word_kd', 'seq_kd', 'seq_interp', 'seq_kd_word_kd',
                            each=True),
      'data.source': cl.one_of('gettext', 'wmt14'),
      'data.vocab_size': cl.Bound(low=8),
      'data.val_fraction': cl.unit_interval(high_open=True),
      'data.test_fraction': cl.unit_interval(high_open=True),
      'data.min_eval_pairs': cl.nonnegative(),
      'data.max_source_len': cl.positive(),
      'data.max_target_len': cl.positive(),
      **cl.bounds_under('data', cl.nonnegative(), ('max_train', 'max_val', 'max_test')),
      'data.subset_seed': cl.nonnegative(),
      'kd.temperature': cl.positive(),
      'kd.kd_weight_grid': cl.unit_interval(each=True),
      'kd.data_beam_width': cl.positive(),
      'kd.data_batch_size': cl.positive(),
      'eval.beam_width': cl.positive(),
      'eval.beam_alpha': cl.nonnegative(),
      'eval.batch_size': cl.positive(),
  }
  for model in ('teacher', 'student'):
    bounds.update(cl.recipe_bounds(model, ('encoder_layers', 'decoder_layers', 'hidden', 'num_heads',
                                         'mlp_dim')))
  rules = (*cl.distinct_non_empty('seeds', 'variants'), cl.non_empty('kd.kd_weight_grid'),
           cl.divisible('teacher.hidden', 'teacher.num_heads'),
           cl.divisible('student.hidden', 'student.num_heads'),
           cl.sum_below(('data.val_fraction', 'data.test_fraction'), 1.0))
  return cl.Schema(get_config('cpu'), bounds, rules)
