"""DistilBERT (Sanh et al., 2019) and Well-Read Students (Turc et al., 2019) on Debian text.

Configs for ``experiments/distilbert.py``. The data are the Debian Section
task and the English prose of ``kdjax.data.debian_text`` (docs/data.md),
built into ``data.data_dir`` on first use (a private ``apt-get update``
and ``apt-get download`` of the man-page, documentation and fortune
packages: network to a Debian mirror the first time, then offline). A
WordPiece vocabulary is trained on the prose's training paragraphs with
the ``tokenizers`` package (the MiniLM vocabulary of 30,522 pieces would
make the masked-LM head the cost of every step at this width).

* ``smoke``: a few steps of every stage on tiny shapes (tests use it on
  the shipped samples).
* ``cpu`` (what ``make bert-demo`` runs): a 6-layer teacher (width 128,
  4 heads, MLP 512, sequences of 64 tokens, vocabulary 4,096) pre-trained
  by masked LM on the prose for 1,500 steps of 32 sequences; 3-layer
  students initialised from teacher layers 0, 2, 4 (DistilBERT) or at
  random, pre-trained for 250 steps; fine-tuning on the Section task for
  2 epochs of a class-balanced 1,600-example subset of train (validation
  accuracy each epoch, the best epoch kept); Well-Read Students'
  distillation for 250 steps on transfer sets of 12,000 paragraphs. Every
  learning rate of fine-tuning (per model), the tuned triple-loss weights
  (5/2/1 or 2/2/1) and whether pre-trained distillation is followed by
  fine-tuning are chosen on validation with the selection seed 100 (not
  reported); 3 reported seeds. Sizing: ``--config.sizing=True`` times one
  step of each stage and multiplies by the run's step counts; the numbers
  and the estimate (about an hour of a quiet 2-core machine; the recorded
  run took about 80 minutes on shared cores) are in docs/encoders.md,
  "Cost". Command::

      python -m experiments.distilbert --config=experiments/configs/distilbert.py:cpu \\
          --workdir=runs/distilbert_cpu

* ``full``: the paper's shapes for a user with an accelerator: a 12-layer,
  768-wide teacher over a 30,522-piece vocabulary, sequences of 512
  tokens, 6-layer students from layers (0, 2, 4, 7, 9, 11), batches of
  256; the prose is the same offline corpus (Wikipedia and BookCorpus are
  not wired in).
"""

import ml_collections

from kdjax import config as config_lib

# Student variants of the DistilBERT part: (init, kd, mlm, cos weights).
DISTILBERT_VARIANTS = ('triple', 'tuned', 'mlm_only', 'no_kd', 'no_mlm', 'no_cos', 'random_init')
# Runs of the Well-Read Students part.
WRS_VARIANTS = ('a_pretrain_finetune', 'b_distill_only', 'c_pretrained_distill',
                'c_unrelated_transfer')


def get_config(scale: str = 'cpu') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.scale = scale
  c.seeds = (0, 1, 2)
  c.selection_seed = 100  # every choice is made with it; never reported
  c.teacher_seed = 0  # the one pre-trained teacher (fine-tuned once per seed)
  c.progress = True
  c.parts = ('distilbert', 'well_read')
  c.sizing = False  # True: time one step of each stage, print the estimated cost, stop

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = 'runs/data/text'  # built there on first use (needs a Debian mirror once)
  c.data.max_prose_mb = 100.0  # cap of the prose build (when it is built here)
  c.data.vocab_size = 4096  # the WordPiece vocabulary trained on the prose
  c.data.tokenizer_paragraphs = 100_000  # prose paragraphs the vocabulary is trained on
  c.data.max_tokens = 64  # per sequence, [CLS] and [SEP] included
  c.data.prose_val_fraction = 0.02  # prose paragraphs held out for validation MLM accuracy
  c.data.max_prose_val_sequences = 512
  c.data.finetune_train_examples = 1600  # a class-balanced subset of the task's train split
  c.data.transfer_paragraphs = 12_000  # per transfer set (related, unrelated)
  c.data.subset_seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.hidden = 128
  c.model.num_heads = 4
  c.model.mlp_dim = 512
  c.model.teacher_layers = 6
  c.model.student_layers_from_teacher = (0, 2, 4)  # DistilBERT: one layer out of two
  c.model.dropout = 0.1

  c.mlm = ml_collections.ConfigDict()
  c.mlm.mask_rate = 0.15  # BERT: 15 % of tokens, 80 % [MASK], 10 % random, 10 % kept
  c.mlm.batch_size = 32
  c.mlm.teacher_steps = 1500
  c.mlm.teacher_learning_rate = 1e-3
  c.mlm.student_steps = 250
  c.mlm.student_learning_rate = 5e-4
  c.mlm.warmup_steps = 100
  c.mlm.weight_decay = 0.01

  c.distil = ml_collections.ConfigDict()
  c.distil.temperature = 2.0  # the public script's T
  c.distil.weights = (5.0, 2.0, 1.0)  # kd, mlm, cos: the public script's README run
  # The grid the 'tuned' variant is chosen from (with the weights above), on validation.
  c.distil.tuned_weight_grid = ((2.0, 2.0, 1.0),)

  c.finetune = ml_collections.ConfigDict()
  c.finetune.batch_size = 32
  c.finetune.epochs = 2  # the best validation epoch is kept
  c.finetune.learning_rate_grid = (1e-4, 3e-4)
  c.finetune.warmup_steps = 30
  c.finetune.weight_decay = 0.01

  c.well_read = ml_collections.ConfigDict()
  c.well_read.distill_steps = 250
  c.well_read.distill_learning_rate = 3e-4
  c.well_read.temperature = 1.0  # Turc et al.: cross entropy against the soft labels
  c.well_read.batch_size = 32

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 128
  c.eval.speed_batches = 20  # timed forward passes per model and round
  c.eval.speed_rounds = 5

  c.claims = ml_collections.ConfigDict()
  c.claims.retained_fraction = 0.97  # "the student keeps 97 % of the teacher's score"

  if scale == 'smoke':
    c.seeds = (0,)
    c.data.vocab_size = 200
    c.data.tokenizer_paragraphs = 10_000
    c.data.max_tokens = 32
    c.data.prose_val_fraction = 0.2
    c.data.max_prose_val_sequences = 8
    c.data.finetune_train_examples = 40
    c.data.transfer_paragraphs = 16
    c.model.hidden = 16
    c.model.num_heads = 2
    c.model.mlp_dim = 32
    c.model.teacher_layers = 2
    c.model.student_layers_from_teacher = (0,)
    c.model.dropout = 0.0  # no random-bit graphs: each train step compiles faster
    c.mlm.batch_size = 4
    c.mlm.teacher_steps = 2
    c.mlm.student_steps = 1
    c.mlm.warmup_steps = 1
    c.distil.tuned_weight_grid = ((2.0, 2.0, 1.0),)
    c.finetune.batch_size = 8
    c.finetune.epochs = 1
    c.finetune.learning_rate_grid = (1e-3,)
    c.finetune.warmup_steps = 1
    c.well_read.distill_steps = 1
    c.well_read.batch_size = 4
    c.eval.batch_size = 16
    c.eval.speed_batches = 1
    c.eval.speed_rounds = 2
  elif scale == 'full':
    c.data.vocab_size = 30_522
    c.data.tokenizer_paragraphs = 1_000_000
    c.data.max_tokens = 512
    c.data.finetune_train_examples = 0
    c.data.transfer_paragraphs = 0
    c.model.hidden = 768
    c.model.num_heads = 12
    c.model.mlp_dim = 3072
    c.model.teacher_layers = 12
    c.model.student_layers_from_teacher = (0, 2, 4, 7, 9, 11)
    c.mlm.batch_size = 256
    c.mlm.teacher_steps = 100_000
    c.mlm.teacher_learning_rate = 1e-4
    c.mlm.student_steps = 100_000
    c.mlm.student_learning_rate = 5e-4
    c.mlm.warmup_steps = 10_000
    c.finetune.epochs = 3
    c.finetune.learning_rate_grid = (2e-5, 5e-5)
    c.finetune.warmup_steps = 300
    c.well_read.distill_steps = 20_000
    c.well_read.distill_learning_rate = 1e-4
  elif scale != 'cpu':
    raise ValueError(f"unknown scale {scale!r}; use 'smoke', 'cpu' or 'full'")
  return c


def schema() -> config_lib.Schema:
  """What ``experiments/distilbert.py`` accepts: keys and types of the defaults,
  these bounds, and the rules below."""
  cl = config_lib
  bounds = {
      'scale': cl.one_of('smoke', 'cpu', 'full'),
      'seeds': cl.nonnegative(each=True),
      'selection_seed': cl.nonnegative(),
      'teacher_seed': cl.nonnegative(),
      'parts': cl.one_of('distilbert', 'well_read', each=True),
      'data.max_prose_mb': cl.positive(),
      'data.vocab_size': cl.Bound(low=32),
      'data.tokenizer_paragraphs': cl.positive(),
      'data.max_tokens': cl.Bound(low=8),
      'data.prose_val_fraction': cl.unit_interval(high_open=True),
      'data.max_prose_val_sequences': cl.positive(),
      **cl.bounds_under('data', cl.nonnegative(), ('finetune_train_examples',
                                                   'transfer_paragraphs', 'subset_seed')),
      **cl.bounds_under('model', cl.positive(), ('hidden', 'num_heads', 'mlp_dim',
                                                 'teacher_layers')),
      'model.student_layers_from_teacher': cl.nonnegative(each=True),
      'model.dropout': cl.unit_interval(high_open=True),
      'mlm.mask_rate': cl.unit_interval(high_open=True),
      **cl.bounds_under('mlm', cl.positive(), ('batch_size', 'teacher_steps',
                                               'teacher_learning_rate', 'student_steps',
                                               'student_learning_rate')),
      'mlm.warmup_steps': cl.nonnegative(),
      'mlm.weight_decay': cl.nonnegative(),
      'distil.temperature': cl.positive(),
      'distil.weights': cl.nonnegative(each=True),
      'finetune.batch_size': cl.positive(),
      'finetune.epochs': cl.positive(),
      'finetune.learning_rate_grid': cl.positive(each=True),
      'finetune.warmup_steps': cl.nonnegative(),
      'finetune.weight_decay': cl.nonnegative(),
      **cl.bounds_under('well_read', cl.positive(), ('distill_steps', 'distill_learning_rate',
                                                     'temperature', 'batch_size')),
      **cl.bounds_under('eval', cl.positive(), ('batch_size', 'speed_batches')),
      'eval.speed_rounds': cl.Bound(low=2),
      'claims.retained_fraction': cl.unit_interval(),
  }
  rules = (*cl.distinct_non_empty('seeds', 'parts', 'finetune.learning_rate_grid',
                                  'model.student_layers_from_teacher'),
           cl.divisible('model.hidden', 'model.num_heads'),
           cl.disjoint('selection_seed', 'seeds'), _student_layers_in_teacher,
           _weight_triples)
  return cl.Schema(get_config('cpu'), bounds, rules)


def _student_layers_in_teacher(config, context):
  del context
  layers, n = tuple(config.model.student_layers_from_teacher), config.model.teacher_layers
  bad = [i for i in layers if i >= n]
  if bad:
    return [('model.student_layers_from_teacher', layers,
             f'{bad} are not teacher blocks: model.teacher_layers={n} has blocks 0..{n - 1}')]
  return []


def _weight_triples(config, context):
  """The weights and every grid point are (kd, mlm, cos) triples, not all zero."""
  del context
  found = []
  for key, triples in (('distil.weights', (tuple(config.distil.weights),)),
                       ('distil.tuned_weight_grid', tuple(config.distil.tuned_weight_grid))):
    for triple in triples:
      triple = tuple(triple)
      if len(triple) != 3 or any(w < 0 for w in triple) or not any(triple):
        found.append((key, triple, 'must be (kd, mlm, cos) weights: 3 non-negative numbers, '
                                   'not all zero'))
  if not config.distil.tuned_weight_grid:
    found.append(('distil.tuned_weight_grid', (), 'must hold at least one (kd, mlm, cos) triple'))
  return found
