"""FastSpeech (Ren et al., 2019) vs FastSpeech 2 (Ren et al., 2021) on MBROLA speech.

Configs for ``experiments/fastspeech2.py``. The data are English sentences
of the machine's prose synthesised by espeak-ng through the MBROLA us1/us2
voices with randomised prosody (``kdjax.data.SpeechFeatures``, built on
first use into ``data.data_dir`` with ``apt-get download``, no other
network; see docs/data.md), so the true phoneme durations, pitch and
energy are known frame for frame.

* ``smoke``: the shipped five utterances (``tests/data/speech_sample.npz``),
  tiny models, one step per model: what the CI test runs.
* ``cpu`` (what ``make tts-demo`` runs): a 2,000-utterance build;
  utterances of at most 400 frames (4 s) and 64 phonemes (612 training
  utterances fit); a 2+2-layer, 128-wide Transformer TTS teacher with
  reduction factor r = 3 (frames per decoder step; r = 5 cannot be usable:
  rounding even the true boundaries to groups of 5 frames leaves 48 % of
  phonemes within one frame), a constant guided attention of weight 2
  (σ = 0.1) and the forward-sum alignment loss (weight 1; the guide of
  weight 10 decayed over 2,000 steps that the run of 7687cf9 used made the
  attention a positional march, docs/speech.md), 100 epochs (3,800 steps);
  durations read from every head averaged by the best monotonic path
  (``alignment.head='mean'``, ``alignment.extraction='monotonic'``: 0.4 to
  1.4 frames better than FastSpeech's focus-head argmax at 75 to 375
  steps, docs/speech.md); 2+2-layer, 64-wide FastSpeech students (15
  epochs, 570 steps), 3 seeds per variant. Measured (commit e95dc2d,
  2026-12-07, the 2-core machine alone): **42 min** in all, 0.30 s per
  teacher step and 0.26 s per student step (the epochs run as a host loop
  of jitted steps, ``kdjax.loop.compile_epoch_fn``; the scanned epoch was
  4.5x slower for the teacher and 49x for the students). Command::

      python -m experiments.fastspeech2 --config=experiments/configs/fastspeech2.py:cpu \\
          --workdir=runs/fastspeech2_cpu

* ``full``: for a user with an accelerator: the same data at the paper's
  model sizes (a 6+6-layer, 512-wide teacher, r = 1 and 2, guided attention
  of weight 10 decayed over 20,000 steps and the forward-sum loss;
  4+4-layer, 256-wide students), 10 s utterances.
"""

import ml_collections

from kdjax import config as config_lib

VARIANTS = ('gt', 'distilled', 'fastspeech2')


def _recipe(epochs, batch_size, learning_rate, warmup_steps, dropout):
  return {'epochs': epochs, 'batch_size': batch_size, 'learning_rate': learning_rate,
          'warmup_steps': warmup_steps, 'weight_decay': 0.0, 'dropout': dropout}


def get_config(scale: str = 'cpu') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.scale = scale
  c.seeds = (0, 1, 2)
  c.teacher_seed = 0
  c.progress = True
  # gt: (a) ground truth, no pitch/energy; distilled: (b) FastSpeech 1, the
  # teacher's mels and durations; fastspeech2: (c) ground truth + variances.
  c.variants = VARIANTS

  c.data = ml_collections.ConfigDict()
  c.data.source = 'mbrola'  # or 'sample': the chunk files of data.chunk_files
  c.data.chunk_files = ''  # comma-separated chunk .npz files ('sample')
  c.data.data_dir = 'runs/data'
  c.data.num = 2000
  c.data.val_fraction = 0.05
  c.data.test_fraction = 0.05
  c.data.max_phonemes = 64
  c.data.max_frames = 400
  c.data.max_train = 0  # 0 = every utterance that fits
  c.data.max_val = 64
  c.data.max_test = 64
  c.data.subset_seed = 0

  c.teacher = ml_collections.ConfigDict({
      'hidden': 128, 'num_heads': 4, 'encoder_layers': 2, 'decoder_layers': 2, 'mlp_dim': 512,
      'prenet_dim': 128, 'postnet_layers': 3, 'postnet_channels': 128,
      'stop_positive_weight': 5.0, **_recipe(100, 16, 1e-3, 200, 0.1)})
  c.alignment = ml_collections.ConfigDict()
  c.alignment.reduction_factors = (3,)
  # 0 measured: the attention stays uniform; 10 decayed to 0 over 2,000 steps
  # (the run recorded at 7687cf9): a positional march, teacher-forced mel L1 1.37.
  c.alignment.guided_weights = (2.0,)
  c.alignment.guided_decay_steps = 0  # linear decay of the guided weight to 0; 0: constant
  # Tachibana et al. use 0.2; 0.1 gave 0.4-0.6 frames less duration error
  # at 225-300 steps (one seed each, docs/speech.md).
  c.alignment.guided_sigma = 0.1
  # The forward-sum alignment loss (Badlani et al., 2021) on every head's
  # attention, its weight constant; 0 leaves it out.
  # With a constant guide of 2 it lowered the teacher-forced mel L1 from 1.37
  # to 0.85 and the duration error from 4.9 to 3.5 frames (docs/speech.md).
  c.alignment.forward_sum_weight = 1.0
  # The teacher's decoder positions at the training data's phonemes per
  # decoder step (Deep Voice 3's position rate), not one phoneme per step.
  c.alignment.position_rate = False
  # How durations are read from the teacher's attention (zoo.extract_durations):
  # 'focus' (the head of highest mean focus rate on validation, FastSpeech's
  # rule) or 'mean' (every head averaged); 'monotonic' (the best monotonic
  # path, Glow-TTS's search) or 'argmax' (each frame's top phoneme, FastSpeech).
  c.alignment.head = 'mean'
  c.alignment.extraction = 'monotonic'
  c.alignment.stop_threshold = 0.5
  c.alignment.generate_batch_size = 32
  # The teacher's alignment counts as usable when its durations on the
  # validation split (teacher forced on the true mels) are within one frame
  # of the true ones for at least this share of phonemes.
  c.alignment.usable_within_one = 0.5
  # Train and measure the teacher candidates only (the alignment
  # investigation), no generation, no students.
  c.alignment.only = False
  # Also measure the alignment on validation every this many teacher epochs
  # (logged to the teacher's metrics.jsonl); 0: only after training.
  c.alignment.eval_every = 0

  c.student = ml_collections.ConfigDict({
      'hidden': 64, 'num_heads': 2, 'encoder_layers': 2, 'decoder_layers': 2,
      'conv_filter': 256, 'predictor_filter': 64, 'num_bins': 64,
      **_recipe(15, 16, 1e-3, 200, 0.2)})

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 32
  c.eval.samples = 3  # Griffin-Lim wav files per variant (and ground truth)
  c.eval.griffin_lim_iterations = 60
  c.eval.publish_dir = 'docs/_static/fastspeech2'  # '' writes them under the workdir only
  c.eval.noninferiority_margin = 0.02  # (c) may be this share of (b)'s mel L1 worse

  if scale == 'smoke':
    c.seeds = (0,)
    c.progress = False
    c.data.source = 'sample'
    c.data.chunk_files = 'tests/data/speech_sample.npz'
    c.data.max_phonemes = 48
    c.data.max_frames = 400
    c.data.max_val = 0
    c.data.max_test = 0
    c.data.val_fraction = 0.3
    c.data.test_fraction = 0.3
    c.teacher.update({'hidden': 16, 'num_heads': 2, 'encoder_layers': 1, 'decoder_layers': 1,
                      'mlp_dim': 16, 'prenet_dim': 16, 'postnet_layers': 1,
                      'postnet_channels': 8, **_recipe(1, 4, 1e-3, 1, 0.1)})
    c.alignment.reduction_factors = (3,)
    c.alignment.guided_weights = (10.0,)
    c.alignment.guided_decay_steps = 1
    c.alignment.generate_batch_size = 4
    c.student.update({'hidden': 16, 'num_heads': 2, 'encoder_layers': 1, 'decoder_layers': 1,
                      'conv_filter': 16, 'predictor_filter': 8, 'num_bins': 8,
                      **_recipe(1, 4, 1e-3, 1, 0.2)})
    c.eval.batch_size = 4
    c.eval.samples = 1
    c.eval.griffin_lim_iterations = 2
    c.eval.publish_dir = ''
  elif scale == 'full':
    c.data.max_phonemes = 160
    c.data.max_frames = 1000
    c.data.max_val = 0
    c.data.max_test = 0
    c.teacher.update({'hidden': 512, 'num_heads': 8, 'encoder_layers': 6,
                      'decoder_layers': 6, 'mlp_dim': 2048, 'prenet_dim': 256,
                      'postnet_layers': 5, 'postnet_channels': 512,
                      **_recipe(300, 32, 1e-3, 4000, 0.1)})
    c.alignment.reduction_factors = (1, 2)
    c.alignment.guided_weights = (10.0,)
    c.alignment.guided_decay_steps = 20_000
    c.student.update({'hidden': 256, 'num_heads': 2, 'encoder_layers': 4,
                      'decoder_layers': 4, 'conv_filter': 1024, 'predictor_filter': 256,
                      'num_bins': 256, **_recipe(300, 32, 1e-3, 4000, 0.2)})
    c.eval.publish_dir = ''
  elif scale != 'cpu':
    raise ValueError(f"unknown scale {scale!r}; use 'smoke', 'cpu' or 'full'")
  return c


def schema() -> config_lib.Schema:
  """What ``experiments/fastspeech2.py`` accepts: keys and types of the defaults,
  these bounds, and the rules below."""
  cl = config_lib
  bounds = {
      'scale': cl.one_of('smoke', 'cpu', 'full'),
      'seeds': cl.nonnegative(each=True),
      'teacher_seed': cl.nonnegative(),
      'variants': cl.one_of(*VARIANTS, each=True),
      'data.source': cl.one_of('mbrola', 'sample'),
      'data.num': cl.positive(),
      'data.val_fraction': cl.unit_interval(high_open=True),
      'data.test_fraction': cl.unit_interval(high_open=True),
      'data.max_phonemes': cl.positive(),
      'data.max_frames': cl.positive(),
      **cl.bounds_under('data', cl.nonnegative(), ('max_train', 'max_val', 'max_test',
                                                   'subset_seed')),
      'teacher.stop_positive_weight': cl.positive(),
      'alignment.reduction_factors': cl.positive(each=True),
      'alignment.guided_weights': cl.nonnegative(each=True),
      'alignment.guided_decay_steps': cl.nonnegative(),
      'alignment.guided_sigma': cl.positive(),
      'alignment.forward_sum_weight': cl.nonnegative(),
      'alignment.stop_threshold': cl.unit_interval(high_open=True),
      'alignment.head': cl.one_of('focus', 'mean'),
      'alignment.extraction': cl.one_of('monotonic', 'argmax'),
      'alignment.generate_batch_size': cl.positive(),
      'alignment.usable_within_one': cl.unit_interval(),
      'alignment.eval_every': cl.nonnegative(),
      'eval.batch_size': cl.positive(),
      'eval.samples': cl.nonnegative(),
      'eval.griffin_lim_iterations': cl.positive(),
      'eval.noninferiority_margin': cl.nonnegative(),
  }
  bounds.update(cl.recipe_bounds('teacher', (
      'hidden', 'num_heads', 'encoder_layers', 'decoder_layers', 'mlp_dim', 'prenet_dim',
      'postnet_layers', 'postnet_channels')))
  bounds.update(cl.recipe_bounds('student', (
      'hidden', 'num_heads', 'encoder_layers', 'decoder_layers', 'conv_filter',
      'predictor_filter')))
  bounds['student.num_bins'] = cl.Bound(low=2)
  rules = (*cl.distinct_non_empty('seeds', 'variants'),
           cl.non_empty('alignment.reduction_factors'), cl.non_empty('alignment.guided_weights'),
           cl.divisible('teacher.hidden', 'teacher.num_heads'),
           cl.divisible('student.hidden', 'student.num_heads'),
           cl.sum_below(('data.val_fraction', 'data.test_fraction'), 1.0))
  return cl.Schema(get_config('cpu'), bounds, rules)
