"""The CIFAR-100 knowledge-distillation benchmark of RepDistiller and mdistiller.

Configs for ``experiments/cifar_kd.py``, which trains a teacher, then the
same student with each method: ``vanilla`` (labels only), ``kd`` (Hinton et
al. 2015), ``fitnets`` (Romero et al. 2015), ``at`` (attention transfer,
Zagoruyko & Komodakis 2017), ``dkd`` (decoupled KD, Zhao et al. 2022),
``crd`` (contrastive representation distillation, Tian et al. 2020),
``dml`` (deep mutual learning of two students, no teacher; Zhang et al.
2018) and ``multi_teacher`` (the mean of the probabilities of several
teachers; You et al. 2017).

* ``cpu`` (what ``make cifar-demo`` runs): scikit-learn's 8x8 handwritten
  digits (1,797 real images, offline; 1,077 train / 360 validation / 360
  test, stratified), at their native 8x8 size with one channel: the CIFAR
  ResNets are fully convolutional up to a global average pool, so they run
  unchanged on 8x8 inputs (stages at 8x8, 4x4, 2x2), 16x cheaper than
  upsampling to 32x32. Teacher: a ResNet-14 of the CIFAR family (widths
  16-16-32-64, 0.17M parameters); student: a ResNet-8 at half width (widths
  8-8-16-32, 0.02M), both :class:`kdjax.zoo.CifarResNet`. Two teachers per
  seed (the second one for multi-teacher KD), every method, 12 epochs each
  (FitNets: 3 hint epochs first), 3 seeds. Sized for the 2-core machine
  shared by several jobs (about 40 minutes there; a few minutes alone).
  Command::

      python -m experiments.cifar_kd --config=experiments/configs/cifar_kd.py:cpu \\
          --workdir=runs/cifar_kd_cpu

* ``full_<teacher>_<student>``: one per teacher/student pair of the
  mdistiller/RepDistiller CIFAR-100 tables whose models are in
  :mod:`kdjax.zoo` (``full`` alone is ``full_resnet32x4_resnet8x4``):
  ``full_resnet56_resnet20``, ``full_resnet110_resnet20``,
  ``full_resnet110_resnet32``, ``full_resnet32x4_resnet8x4``,
  ``full_wrn_40_2_wrn_16_2``, ``full_wrn_40_2_wrn_40_1``,
  ``full_vgg13_vgg8``, ``full_vgg13_MobileNetV2``,
  ``full_resnet32x4_ShuffleV1``, ``full_resnet32x4_ShuffleV2``,
  ``full_wrn_40_2_ShuffleV1``. (The ResNet50 pairs are left out: the
  CIFAR ResNet50 is not in the zoo.) TFDS ``cifar100`` (needs the network
  once), the libraries' recipe: 240 epochs, SGD with momentum 0.9, learning
  rate 0.05 (0.01 for MobileNetV2 and ShuffleNet students) divided by 10 at
  epochs 150, 180 and 210, weight decay 5e-4, batch 64, random crop with
  4-pixel padding and horizontal flip, T = 4, and the methods' published
  weights (KD 0.9 with 0.1 on the labels; FitNets hint 100 on the mean
  squared error, one stage; AT 1000 per layer pair; DKD alpha 1, beta 8 (2
  for the ResNet-56/110 pairs, 6 for the VGG and WRN-40-2 pairs as in
  mdistiller's configs) with a 20-epoch warm-up; CRD 0.8 with 16,384
  negatives, 128-d embeddings, NCE temperature 0.07, momentum 0.5). Meant
  for an accelerator: a few GPU-hours per method and seed. Command::

      python -m experiments.cifar_kd \\
          --config=experiments/configs/cifar_kd.py:full_resnet32x4_resnet8x4 \\
          --workdir=runs/cifar_kd_resnet32x4_resnet8x4

Departures of the ``full`` configs from the libraries, all overridable:
45,000 training images with the last 5,000 held out for validation (the
libraries train on all 50,000 and report the test accuracy:
``--config.data.train_split=train``), and a teacher trained here rather
than downloaded (the libraries distil from their released checkpoints).

Every method hyper-parameter of the ``cpu`` config is the published value
(none was tuned on the test split); the scale choices (models, epochs,
crop padding, the FitNets stage-1 length, CRD's number of negatives, which
cannot exceed the 1,077 training examples) were made for the time budget
and on the validation split.
"""

import ml_collections

from kdjax import config as config_lib

# (teacher, student) pairs of the tables whose models are all in kdjax.zoo,
# with mdistiller's per-pair DKD beta (configs/cifar100/dkd/*.yaml).
FULL_PAIRS = {
    ('resnet56', 'resnet20'): 2.0,
    ('resnet110', 'resnet20'): 2.0,
    ('resnet110', 'resnet32'): 2.0,
    ('resnet32x4', 'resnet8x4'): 8.0,
    ('wrn_40_2', 'wrn_16_2'): 6.0,
    ('wrn_40_2', 'wrn_40_1'): 6.0,
    ('vgg13', 'vgg8'): 6.0,
    ('vgg13', 'MobileNetV2'): 6.0,
    ('resnet32x4', 'ShuffleV1'): 8.0,
    ('resnet32x4', 'ShuffleV2'): 8.0,
    ('wrn_40_2', 'ShuffleV1'): 8.0,
}
# Students trained at learning rate 0.01 in both libraries.
LOW_LR_STUDENTS = ('MobileNetV2', 'ShuffleV1', 'ShuffleV2')
METHODS = ('vanilla', 'kd', 'fitnets', 'at', 'dkd', 'crd', 'dml', 'multi_teacher')
# data.normalize: the models' input standardisation (experiments.cifar_kd.make_normalize).
NORMALIZATIONS = ('per_channel', 'per_image', 'gray_per_image')


def _model(name: str, depth: int = 0, widths: tuple[int, ...] = ()) -> ml_collections.ConfigDict:
  """A zoo model: a name of ``kdjax.zoo.CIFAR_MODELS``, or 'CifarResNet' with depth and widths."""
  return ml_collections.ConfigDict({'name': name, 'depth': depth, 'widths': widths})


def _recipe(epochs: int, learning_rate: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'epochs': epochs,
      'batch_size': 64,
      'learning_rate': learning_rate,
      'momentum': 0.9,
      'weight_decay': 5e-4,
      # Learning rate times `decay_rate` at each of these fractions of the
      # epochs: 150/240, 180/240, 210/240 in the libraries.
      'decay_fractions': (0.625, 0.75, 0.875),
      'decay_rate': 0.1,
      # Linear learning-rate warm-up over this many epochs (0: none, as the libraries).
      'warmup_epochs': 0.0,
  })


def get_config(scale: str = 'cpu') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.scale = scale
  c.seeds = (0, 1, 2)
  c.progress = True
  c.methods = METHODS
  c.conv_impl = 'lax'  # or 'im2col' (see kdjax.zoo.conv2d)

  c.data = ml_collections.ConfigDict()
  c.data.name = 'digits'
  c.data.data_dir = ''  # '' -> ~/tensorflow_datasets
  c.data.train_split = 'train'
  c.data.val_split = 'validation'
  c.data.test_split = 'test'
  # Random crop after zero padding by this many pixels, and random
  # horizontal flips (not for digits).
  c.data.crop_padding = 1
  c.data.flip = False
  # The models' input standardisation: 'per_channel' (the libraries),
  # 'per_image' or 'gray_per_image' (see experiments.cifar_kd.make_normalize).
  c.data.normalize = 'per_channel'

  c.teacher = _model('CifarResNet', depth=14, widths=(16, 16, 32, 64))
  c.teacher.train = _recipe(epochs=12, learning_rate=0.05)
  # Multi-teacher KD uses this many teachers: the first is the teacher of
  # every other method, the others are the same model from other seeds.
  c.num_teachers = 2

  c.student = _model('CifarResNet', depth=8, widths=(8, 8, 16, 32))
  c.student.train = _recipe(epochs=12, learning_rate=0.05)

  # The libraries' loss weights: loss = ce_weight * CE + <method weights>.
  c.kd = ml_collections.ConfigDict({'temperature': 4.0, 'ce_weight': 0.1, 'kd_weight': 0.9})

  c.fitnets = ml_collections.ConfigDict()
  c.fitnets.student_feature = 'feat_2'  # the guided layer (mdistiller's hint layer 2)
  c.fitnets.teacher_feature = 'feat_2'  # the hint
  c.fitnets.regressor_kernel = 3  # the libraries' ConvReg is a 3x3 convolution
  # stage1_epochs > 0: the paper's two stages, hint alone (only the layers
  # up to the guided layer and the regressor move) then KD with an annealed
  # weight (4 -> 1, divided by T²); 0: one stage, CE + hint_weight * hint
  # (mdistiller, RepDistiller).
  c.fitnets.stage1_epochs = 3
  c.fitnets.hint_weight = 100.0
  c.fitnets.reduction = 'mean'  # the libraries' MSE
  c.fitnets.temperature = 4.0
  # '' (the regressor's output must match the hint's size), 'avg_pool' (the
  # larger map is average-pooled to the smaller) or 'bilinear'.
  c.fitnets.resize = ''

  c.at = ml_collections.ConfigDict()
  c.at.features = ('feat_1', 'feat_2', 'feat_3')  # mdistiller: feats[1:]
  c.at.weight = 1000.0  # beta, per layer pair
  c.at.p = 2.0
  c.at.resize = ''  # '' (sizes must match), 'avg_pool' or 'bilinear'

  c.dkd = ml_collections.ConfigDict({
      'alpha': 1.0, 'beta': 8.0, 'temperature': 4.0, 'ce_weight': 1.0, 'warmup_epochs': 20,
  })

  c.crd = ml_collections.ConfigDict({
      'feature': 'pooled', 'dim': 128, 'num_negatives': 16384, 'temperature': 0.07,
      'momentum': 0.5, 'weight': 0.8, 'ce_weight': 1.0,
  })

  c.dml = ml_collections.ConfigDict({'num_students': 2, 'temperature': 1.0, 'kl_weight': 1.0,
                                     'sequential': True})

  c.multi_teacher = ml_collections.ConfigDict({'temperature': 4.0, 'ce_weight': 0.1,
                                               'kd_weight': 0.9})

  c.gradcam = ml_collections.ConfigDict({'feature': 'feat_3', 'examples': 6, 'method': 'kd'})

  if scale == 'cpu':
    # The 20-epoch DKD warm-up scaled like the schedule (20/240 of 12 epochs).
    c.dkd.warmup_epochs = 1
    c.crd.num_negatives = 512  # fewer than the 1,077 training examples
    return c
  if scale == 'full':
    scale = 'full_resnet32x4_resnet8x4'
  pair = _parse_pair(scale)
  teacher, student = pair
  c.data.name = 'cifar100'
  c.data.train_split = 'train[:90%]'  # 45,000 images
  c.data.val_split = 'train[90%:]'  # the last 5,000
  c.data.test_split = 'test'
  c.data.crop_padding = 4
  c.data.flip = True
  c.teacher = _model(teacher)
  c.teacher.train = _recipe(epochs=240, learning_rate=0.05)
  c.student = _model(student)
  lr = 0.01 if student in LOW_LR_STUDENTS else 0.05
  c.student.train = _recipe(epochs=240, learning_rate=lr)
  c.fitnets.stage1_epochs = 0
  if 'vgg' in (_family(teacher), _family(student)):
    c.at.features = ('feat_1', 'feat_2', 'feat_3', 'feat_4')  # the VGGs have four stages
  if _family(teacher) != _family(student):
    # Heterogeneous pairs: stage maps of different sizes (e.g. ResNet-32x4's
    # 16x16 feat_2 against ShuffleNet's 8x8): pool the larger to the smaller.
    c.fitnets.resize = 'avg_pool'
    c.at.resize = 'avg_pool'
  c.dkd.beta = FULL_PAIRS[pair]
  c.dkd.warmup_epochs = 20
  c.crd.num_negatives = 16384
  return c


def _family(model: str) -> str:
  for family in ('resnet', 'wrn', 'vgg', 'Mobile', 'Shuffle'):
    if model.startswith(family):
      return family
  return model


def _parse_pair(scale: str) -> tuple[str, str]:
  for teacher, student in FULL_PAIRS:
    if scale == f'full_{teacher}_{student}':
      return teacher, student
  known = ['cpu', 'full'] + [f'full_{t}_{s}' for t, s in FULL_PAIRS]
  raise ValueError(f'unknown scale {scale!r}; use one of {known}')


def _feature_count(model: ml_collections.ConfigDict) -> int:
  """How many ``feat_<i>`` a zoo model sows: one per stage, plus the stem."""
  if model.name == 'CifarResNet':
    return len(model.widths)
  return 5 if _family(model.name) in ('vgg', 'Mobile') else 4


def _features_exist(keys_and_models):
  """A rule: each feature name at these keys is ``'pooled'`` or a ``feat_<i>`` its model sows."""

  def rule(config, context):
    for key, models in keys_and_models:
      names = config_lib.value_at(config, key)
      for model in models:
        count = _feature_count(config_lib.value_at(config, model))
        allowed = {'pooled', *(f'feat_{i}' for i in range(count))}
        bad = [n for n in (names if isinstance(names, tuple) else (names,)) if n not in allowed]
        if bad:
          yield (key, names, f'{bad} out of range for the {model} model: '
                 f'one of {sorted(allowed)}')

  return rule


def _learning_rates(model: str):
  """The step schedule of `model`'s recipe: its learning rate before and after each decay."""

  def values(config):
    train = config_lib.value_at(config, f'{model}.train')
    return [train.learning_rate * train.decay_rate ** k
            for k in range(len(train.decay_fractions) + 1)]

  return values


def schema() -> config_lib.Schema:
  """What ``experiments/cifar_kd.py`` accepts: keys and types of the ``cpu``
  defaults (every scale has the same keys), these bounds, and the rules below."""
  cl = config_lib
  bounds = {
      'seeds': cl.nonnegative(each=True),
      'methods': cl.one_of(*METHODS, each=True),
      'conv_impl': cl.one_of('lax', 'im2col'),
      'data.name': cl.one_of('digits', 'cifar100', 'cifar10'),
      'data.crop_padding': cl.nonnegative(),
      'data.normalize': cl.one_of(*NORMALIZATIONS),
      'num_teachers': cl.positive(),
      'fitnets.regressor_kernel': cl.positive(),
      'fitnets.stage1_epochs': cl.nonnegative(),
      'fitnets.hint_weight': cl.nonnegative(),
      'fitnets.reduction': cl.one_of('sum', 'mean'),
      'fitnets.temperature': cl.positive(),
      'fitnets.resize': cl.one_of('', 'avg_pool', 'bilinear'),
      'at.weight': cl.nonnegative(),
      'at.p': cl.positive(),
      'at.resize': cl.one_of('', 'avg_pool', 'bilinear'),
      'dkd.alpha': cl.nonnegative(),
      'dkd.beta': cl.nonnegative(),
      'dkd.temperature': cl.positive(),
      'dkd.ce_weight': cl.nonnegative(),
      'dkd.warmup_epochs': cl.nonnegative(),
      'crd.dim': cl.positive(),
      'crd.num_negatives': cl.positive(),
      'crd.temperature': cl.positive(),
      'crd.momentum': cl.unit_interval(),
      'crd.weight': cl.nonnegative(),
      'crd.ce_weight': cl.nonnegative(),
      'dml.num_students': cl.Bound(low=2),
      'dml.temperature': cl.positive(),
      'dml.kl_weight': cl.nonnegative(),
      'multi_teacher.temperature': cl.positive(),
      'multi_teacher.ce_weight': cl.nonnegative(),
      'multi_teacher.kd_weight': cl.nonnegative(),
      'gradcam.examples': cl.positive(),
      'gradcam.method': cl.one_of(*METHODS),
  }
  for key in ('kd.temperature', 'kd.ce_weight', 'kd.kd_weight'):
    bounds[key] = cl.positive() if key.endswith('temperature') else cl.nonnegative()
  for model in ('teacher', 'student'):
    bounds[f'{model}.name'] = cl.one_of('CifarResNet', *sorted({m for p in FULL_PAIRS for m in p}))
    bounds[f'{model}.depth'] = cl.nonnegative()
    bounds[f'{model}.widths'] = cl.positive(each=True)
    bounds.update(cl.bounds_under(f'{model}.train', cl.positive(),
                                  ('epochs', 'batch_size', 'learning_rate')))
    bounds.update(cl.bounds_under(f'{model}.train', cl.nonnegative(),
                                  ('momentum', 'weight_decay', 'warmup_epochs')))
    bounds[f'{model}.train.decay_fractions'] = cl.Bound(low=0, high=1, low_open=True,
                                                        high_open=True, each=True)
  rules = (
      *cl.distinct_non_empty('seeds', 'methods'),
      _features_exist((('fitnets.student_feature', ('student',)),
                       ('fitnets.teacher_feature', ('teacher',)),
                       ('at.features', ('teacher', 'student')),
                       ('crd.feature', ('teacher', 'student')),
                       ('gradcam.feature', ('teacher', 'student')))),
      cl.schedule_nonnegative(('teacher.train.learning_rate', 'teacher.train.decay_rate'),
                              _learning_rates('teacher'), 'the teacher\'s learning rate'),
      cl.schedule_nonnegative(('student.train.learning_rate', 'student.train.decay_rate'),
                              _learning_rates('student'), 'the student\'s learning rate'),
  )
  return cl.Schema(get_config('cpu'), bounds, rules)
