"""The CIFAR-100 KD benchmark of RepDistiller/mdistiller: eight methods, one student.

Run ``python -m experiments.cifar_kd --config=experiments/configs/cifar_kd.py:cpu
--workdir=runs/cifar_kd_cpu``; see the config file for the scales, the
methods and what they cost. For every seed the script trains the teacher(s)
on labels, then the student with each method of ``config.methods``:

* ``vanilla``: labels only.
* ``kd``: Hinton et al. (2015), ``ce_weight * CE + kd_weight * KL(T)``.
* ``fitnets``: Romero et al. (2015), a regressor on the student's guided
  layer predicts the teacher's hint (one stage with CE, or the paper's two
  stages: hint alone, then KD).
* ``at``: attention transfer (Zagoruyko & Komodakis 2017) on stage outputs.
* ``dkd``: decoupled KD (Zhao et al. 2022) with a linear warm-up.
* ``crd``: contrastive representation distillation (Tian et al. 2020) with
  memory banks carried in the student's state.
* ``dml``: deep mutual learning (Zhang et al. 2018), two students, no teacher.
* ``multi_teacher``: KD towards the mean of several teachers' probabilities.

Writes, under the workdir: ``<phase>/seed<k>/metrics.jsonl`` and TensorBoard
files, the teachers' checkpoints, ``results.json``, ``gradcam.png`` (when
:mod:`kdjax.explain` is available); then prints the results table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import os
import sys
import time
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import _common
from experiments.configs import cifar_kd as cifar_kd_configs
from kdjax import adapters
from kdjax import data as data_lib
from kdjax import explain
from kdjax import losses
from kdjax import loop
from kdjax import objective as objective_lib
from kdjax import recipes
from kdjax import step as step_lib
from kdjax import zoo

MODULE = 'experiments.cifar_kd'
PAPER = ('Tian, Krishnan & Isola (2020), RepDistiller, and Zhao et al. (2022), mdistiller: '
         'the CIFAR-100 knowledge-distillation benchmark')
METHOD_TITLES = {
    'vanilla': 'student, labels only',
    'kd': 'KD (Hinton et al. 2015)',
    'fitnets': 'FitNets (Romero et al. 2015)',
    'at': 'AT (Zagoruyko & Komodakis 2017)',
    'dkd': 'DKD (Zhao et al. 2022)',
    'crd': 'CRD (Tian et al. 2020)',
    'dml': 'DML, two students, no teacher (Zhang et al. 2018)',
    'multi_teacher': 'multi-teacher KD, mean of probabilities',
}


# ----------------------------------------------------------------------------
# Data.


def load_arrays(config: ml_collections.ConfigDict) -> tuple[dict[str, dict[str, np.ndarray]], int]:
  """Reads the train/val/test splits through TFDS + grain into arrays.

  Images are float32 in [0, 1] (``[n, height, width, channels]``); the
  training split also gets ``'index'``, each example's position in it
  (CRD's memory banks are indexed by it).
  """
  data_dir = config.data.data_dir or None
  arrays = {}
  source = None
  for split_name in ('train', 'val', 'test'):
    source = data_lib.load_source(
        config.data.name, config.data[f'{split_name}_split'], data_dir=data_dir
    )
    batches = list(data_lib.iterate_once(source, batch_size=1024))
    merged = {k: np.concatenate([b[k] for b in batches]) for k in ('x', 'label', 'mask')}
    keep = merged.pop('mask')
    arrays[split_name] = {k: v[keep] for k, v in merged.items()}
  arrays['train']['index'] = np.arange(len(arrays['train']['label']), dtype=np.int32)
  return arrays, data_lib.num_classes(source)


NORMALIZATIONS = cifar_kd_configs.NORMALIZATIONS


def make_normalize(train_x: np.ndarray,
                   mode: str = 'per_channel') -> Callable[[jax.Array], jax.Array]:
  """The models' input standardisation.

  ``'per_channel'``: each channel by the training split's mean and std (the
  CIFAR libraries). ``'per_image'``: each image by its own mean and std over
  pixels and channels (``tf.image.per_image_standardization``), which takes
  out an image's brightness and contrast. ``'gray_per_image'``: the mean of
  the channels, then per image, repeated to the input's channels: for
  images whose colours are random (font_glyphs), so the colour carries no
  class information.
  """
  if mode not in NORMALIZATIONS:
    raise ValueError(f'normalize must be one of {NORMALIZATIONS}, got {mode!r}')
  if mode != 'per_channel':
    channels = train_x.shape[-1]

    def per_image(x):
      if mode == 'gray_per_image':
        x = jnp.repeat(jnp.mean(x, axis=-1, keepdims=True), channels, axis=-1)
      axes = tuple(range(1, x.ndim))
      mean = jnp.mean(x, axis=axes, keepdims=True)
      # A flat image has std 0: floor it as TF does (1 / sqrt(pixels)).
      floor = 1.0 / np.sqrt(np.prod(x.shape[1:]))
      return (x - mean) / jnp.maximum(jnp.std(x, axis=axes, keepdims=True), floor)

    return per_image
  axes = tuple(range(train_x.ndim - 1))
  mean = np.asarray(train_x.mean(axis=axes), np.float32).reshape((1,) * len(axes) + (-1,))
  std = np.asarray(train_x.std(axis=axes), np.float32).reshape((1,) * len(axes) + (-1,))
  std = np.maximum(std, 1e-6)

  def normalize(x):
    return (x - mean) / std

  return normalize


def make_augment(crop_padding: int, flip: bool):
  """Random crop after zero padding by `crop_padding` pixels; random horizontal flip.

  Applied to the raw [0, 1] images (standardisation happens in the models'
  input function), so the padding is black as in torchvision's RandomCrop.
  """

  def augment(batch, key):
    x = batch['x']
    n, height, width, channels = x.shape
    crop_key, flip_key = jax.random.split(key)
    if crop_padding:
      p = crop_padding
      padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
      offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * p + 1)
      x = jax.vmap(
          lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (height, width, channels))
      )(padded, offsets)
    if flip:
      flips = jax.random.bernoulli(flip_key, 0.5, (n,))
      x = jnp.where(flips[:, None, None, None], x[:, :, ::-1], x)
    return {**batch, 'x': x}

  return augment


# ----------------------------------------------------------------------------
# Models.


def make_backbone(spec: ml_collections.ConfigDict, num_classes: int, conv_impl: str) -> nn.Module:
  """A zoo model: ``spec.name`` from ``kdjax.zoo.CIFAR_MODELS``, or 'CifarResNet'."""
  if spec.name == 'CifarResNet':
    return zoo.CifarResNet(spec.depth, tuple(spec.widths), num_classes, conv_impl)
  return zoo.cifar_model(spec.name, num_classes, conv_impl)


class Student(nn.Module):
  """A zoo backbone plus the heads some methods train with it.

  The heads are the student's parameters, next to the backbone's (under
  ``'backbone'``): FitNets' :class:`~kdjax.losses.HintRegressor` on the
  guided layer (sown as ``'hint'``), CRD's two :class:`~kdjax.losses.CRDHead`
  s (the student-side embedding sown as ``'crd_student'``; the teacher-side
  head embeds the teacher's features handed in with the input, sown as
  ``'crd_teacher'``). The backbone's own features are ``'backbone/<name>'``.

  Call it on images, or on ``(images, teacher_features)`` for CRD. Heads read
  the backbone's sown intermediates, so init with ``mutable=True`` (linen's
  ``init`` leaves ``'intermediates'`` out by default) and apply with
  ``'intermediates'`` mutable (as :func:`kdjax.adapters.from_linen` does).
  """

  backbone: nn.Module
  hint_feature: str = ''
  hint_channels: int = 0
  hint_kernel: int = 3
  crd_feature: str = ''
  crd_dim: int = 0

  def _backbone_feature(self, name: str) -> jax.Array:
    return self.variables['intermediates']['backbone'][name][0]

  @nn.compact
  def __call__(self, inputs, train: bool = False) -> jax.Array:
    x, teacher_features = inputs if isinstance(inputs, tuple) else (inputs, None)
    logits = self.backbone(x, train=train)
    if self.hint_channels:
      regressor = losses.HintRegressor(self.hint_channels, kernel_size=self.hint_kernel,
                                       name='hint_regressor')
      self.sow('intermediates', 'hint', regressor(self._backbone_feature(self.hint_feature)))
    if self.crd_dim:
      student_head = losses.CRDHead(self.crd_dim, name='crd_student_head')
      self.sow('intermediates', 'crd_student',
               student_head(self._backbone_feature(self.crd_feature)))
      if teacher_features is not None:
        teacher_head = losses.CRDHead(self.crd_dim, name='crd_teacher_head')
        self.sow('intermediates', 'crd_teacher', teacher_head(teacher_features))
    return logits


def _module_key(module: Student) -> tuple[Any, ...]:
  return (module.hint_feature, module.hint_channels, module.hint_kernel, module.crd_feature,
          module.crd_dim)


def param_count(variables: Mapping[str, Any]) -> int:
  return int(sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params'])))


# ----------------------------------------------------------------------------
# Optimizer, objectives, steps.


def make_optimizer(recipe: ml_collections.ConfigDict, steps_per_epoch: int,
                   epochs: int | None = None) -> optax.GradientTransformation:
  """SGD with momentum, L2 weight decay added to the gradient (as PyTorch), step decay.

  With ``recipe.warmup_epochs`` > 0 the rate first rises
  linearly from ``learning_rate / warmup steps`` to ``learning_rate`` over
  that many epochs (Goyal et al. 2017, arXiv:1706.02677).
  """
  epochs = recipe.epochs if epochs is None else epochs
  boundaries = {}
  for fraction in recipe.decay_fractions:
    step = int(round(fraction * epochs)) * steps_per_epoch
    boundaries[step] = boundaries.get(step, 1.0) * recipe.decay_rate
  decay = optax.piecewise_constant_schedule(recipe.learning_rate, boundaries)
  warmup_steps = int(recipe.warmup_epochs * steps_per_epoch)
  if warmup_steps > 0:
    def schedule(step):
      ramp = jnp.minimum((jnp.asarray(step, jnp.float32) + 1.0) / warmup_steps, 1.0)
      return decay(step) * ramp
  else:
    schedule = decay
  return optax.chain(
      optax.add_decayed_weights(recipe.weight_decay),
      optax.sgd(schedule, momentum=recipe.momentum),
  )


def _with_accuracy(terms, weights) -> objective_lib.Objective:
  return objective_lib.Objective(terms, weights=weights,
                                 metrics={'acc/student': objective_lib.accuracy_metric()})


def label_objective() -> objective_lib.Objective:
  return _with_accuracy({'ce': objective_lib.supervised()}, {})


def kd_objective(c: ml_collections.ConfigDict) -> objective_lib.Objective:
  return _with_accuracy(
      {'ce': objective_lib.supervised(),
       'kd': objective_lib.distill(losses.kl_divergence, temperature=c.temperature)},
      {'ce': c.ce_weight, 'kd': c.kd_weight})


def dkd_objective(c: ml_collections.ConfigDict, steps_per_epoch: int) -> objective_lib.Objective:
  """CE + min(step / warm-up, 1) * (alpha TCKD + beta NCKD), as mdistiller."""
  warmup_steps = max(c.warmup_epochs * steps_per_epoch, 1)

  def warmup(step):
    return jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)

  return _with_accuracy(
      {'ce': objective_lib.supervised(),
       'dkd': objective_lib.distill(losses.decoupled_kd, temperature=c.temperature,
                                    label_key='label', alpha=c.alpha, beta=c.beta)},
      {'ce': c.ce_weight, 'dkd': warmup})


def at_objective(c: ml_collections.ConfigDict) -> objective_lib.Objective:
  """CE + beta * AT on each (student, teacher) stage pair."""
  terms = {'ce': objective_lib.supervised()}
  weights = {}
  for name in c.features:
    terms[f'at_{name}'] = objective_lib.feature(
        losses.attention_transfer, name, name, p=c.p, resize=c.resize or None)
    weights[f'at_{name}'] = c.weight
  return _with_accuracy(terms, weights)


def fitnets_joint_objective(c: ml_collections.ConfigDict) -> objective_lib.Objective:
  """One stage, as mdistiller/RepDistiller: CE + hint_weight * hint."""
  return _with_accuracy(
      {'ce': objective_lib.supervised(),
       'hint': objective_lib.feature(losses.hint_loss, 'hint', c.teacher_feature,
                                     reduction=c.reduction, resize=c.resize or None)},
      {'hint': c.hint_weight})


def multi_teacher_objective(c: ml_collections.ConfigDict) -> objective_lib.Objective:
  return _with_accuracy(
      {'ce': objective_lib.supervised(),
       'kd': objective_lib.multi_teacher_distill(
           losses.kl_divergence, temperature=c.temperature, mode='mean_probs')},
      {'ce': c.ce_weight, 'kd': c.kd_weight})


def dml_objective(c: ml_collections.ConfigDict) -> objective_lib.Objective:
  """CE + 1/(K-1) sum over peers of KL(peer || self), the paper's loss."""
  return _with_accuracy(
      {'ce': objective_lib.supervised(),
       'kl': objective_lib.multi_teacher_distill(
           losses.kl_divergence, temperature=c.temperature, mode='mean_losses')},
      {'kl': c.kl_weight})


def crd_objective(c: ml_collections.ConfigDict, num_data: int) -> objective_lib.Objective:
  """CE + weight * CRD; the memory banks are the CRD term's state in the TrainState."""
  if c.num_negatives < 1:
    raise ValueError(f'crd.num_negatives must be >= 1, got {c.num_negatives}')
  return _with_accuracy(
      {'ce': objective_lib.supervised(),
       'crd': objective_lib.crd(num_data, c.dim, num_negatives=c.num_negatives,
                                temperature=c.temperature, momentum=c.momentum)},
      {'ce': c.ce_weight, 'crd': c.weight})


def pack_cohort(states: Sequence[step_lib.TrainState]) -> step_lib.TrainState:
  """K students' states as one TrainState (so loop.fit and checkpoints serve DML)."""
  names = [f'student_{k}' for k in range(len(states))]
  return step_lib.TrainState(
      step=states[0].step,
      params=dict(zip(names, (s.params for s in states))),
      model_state={'students': dict(zip(names, (s.model_state for s in states))),
                   'rngs': dict(zip(names, (s.rng for s in states)))},
      opt_state=dict(zip(names, (s.opt_state for s in states))),
      rng=states[0].rng,
  )


def unpack_cohort(state: step_lib.TrainState) -> tuple[step_lib.TrainState, ...]:
  names = sorted(state.params, key=lambda n: int(n.split('_')[1]))
  return tuple(
      step_lib.TrainState(step=state.step, params=state.params[n],
                          model_state=state.model_state['students'][n],
                          opt_state=state.opt_state[n], rng=state.model_state['rngs'][n])
      for n in names)


def trainable_paths(loss_fn: Callable[[Any], jax.Array], params: Any) -> set[str]:
  """'/'-joined paths of the parameters that get a nonzero gradient from `loss_fn`.

  For FitNets' stage 1: the layers up to the guided layer and the regressor
  (the layers after it are not on the hint's path and get exact zeros).
  """
  grads = jax.jit(jax.grad(loss_fn))(params)
  paths = set()
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    if np.any(np.asarray(g) != 0):
      paths.add('/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path))
  return paths


# ----------------------------------------------------------------------------
# Training.


# The shared recipe runner (kept under this name: the methods' builders return it).
Trainer = _common.Trainer


class Experiment:
  """Builds every method's Trainer from the config (each compiles once)."""

  def __init__(self, config: ml_collections.ConfigDict, arrays, num_classes: int):
    self.config, self.arrays = config, arrays
    self.num_train = len(arrays['train']['label'])
    self.normalize = make_normalize(arrays['train']['x'], config.data.normalize)
    self.augment = make_augment(config.data.crop_padding, config.data.flip)
    self.example = jnp.zeros((1,) + arrays['train']['x'].shape[1:], jnp.float32)
    self.evals = {'val': arrays['val'], 'test': arrays['test']}
    self.teacher_model = make_backbone(config.teacher, num_classes, config.conv_impl)
    self.student_backbone = make_backbone(config.student, num_classes, config.conv_impl)
    self.teacher_apply = self._teacher_apply(())
    # Shapes only: an eager init would compile every parameter's initialiser.
    self.teacher_variables_shape = jax.eval_shape(self._init_teacher, jax.random.PRNGKey(0))
    recipe = config.student.train
    # One optimizer and one init / eval function per student module, shared
    # by the methods (jax compiles a shared function once).
    self.student_optimizer = make_optimizer(recipe, self.steps_per_epoch(recipe.batch_size))
    self._evaluate_fns, self._init_fns = {}, {}

  # Applies and inits.

  def _inputs(self, batch):
    return self.normalize(batch['x'])

  def _teacher_apply(self, features: Sequence[str]):
    return adapters.from_linen(self.teacher_model, inputs=self._inputs, features=tuple(features))

  def _init_teacher(self, key):
    variables = self.teacher_model.init(key, self.example, train=False)
    return {k: v for k, v in variables.items() if k != 'intermediates'}

  def _teacher_feature_shape(self, name: str) -> tuple[int, ...]:
    outputs = jax.eval_shape(
        lambda v: self._teacher_apply((name,))(v, {'x': self.example}, train=False)[0],
        self.teacher_variables_shape)
    return outputs.features[name].shape

  def student(self, **heads) -> Student:
    return Student(self.student_backbone, **heads)

  def student_apply(self, module: Student, features: Sequence[str] = (), *,
                    teacher_features: bool = False):
    mapping = {}
    for name in features:
      mapping[name] = name if name in ('hint', 'crd_student', 'crd_teacher') else f'backbone/{name}'
    if teacher_features:
      inputs = lambda batch: (self._inputs(batch), batch['teacher_features'])
    else:
      inputs = self._inputs
    return adapters.from_linen(module, inputs=inputs, features=mapping)

  def student_init(self, module: Student, optimizer, *, init_inputs=None, objective=None):
    """``init(key) -> TrainState``; shared between calls with the same module and optimizer."""
    key = (_module_key(module), id(optimizer))
    if init_inputs is None and objective is None and key in self._init_fns:
      return self._init_fns[key]
    example = self.example if init_inputs is None else init_inputs

    def init(key):
      variables = module.init(key, example, train=False, mutable=True)
      variables = {k: v for k, v in variables.items() if k != 'intermediates'}
      return step_lib.init_train_state(variables, optimizer, rng=jax.random.fold_in(key, 1),
                                       objective=objective)

    if init_inputs is None and objective is None:
      self._init_fns[key] = init
    return init

  def evaluate_fn(self, module: Student):
    """Validation and test accuracy; one compiled eval step per student module."""
    key = _module_key(module)
    if key not in self._evaluate_fns:
      self._evaluate_fns[key] = self._make_evaluate_fn(module)
    return self._evaluate_fns[key]

  def _make_evaluate_fn(self, module: Student):
    eval_step = jax.jit(step_lib.make_eval_step(self.student_apply(module)))

    def evaluate(state):
      out = {}
      for split, arrays in self.evals.items():
        for metric, value in loop.evaluate(eval_step, state, None, arrays).items():
          out[f'{split}/{metric}'] = value
      return out

    return evaluate

  def steps_per_epoch(self, batch_size: int) -> int:
    return self.num_train // batch_size

  def _trainer(self, recipe, train_step, init_fn, evaluate_fn, *, epochs=None) -> Trainer:
    epochs = recipe.epochs if epochs is None else epochs
    return Trainer(train_step, init_fn, evaluate_fn, epochs=epochs,
                   batch_size=recipe.batch_size, augment=self.augment,
                   eval_every=max(epochs // 5, 1), save_every=max(epochs // 2, 1),
                   progress=self.config.progress)

  # Recipes.

  def teacher_trainer(self) -> Trainer:
    recipe = self.config.teacher.train
    optimizer = make_optimizer(recipe, self.steps_per_epoch(recipe.batch_size))
    train_step = step_lib.make_train_step(self.teacher_apply, None, label_objective(), optimizer)
    eval_step = jax.jit(step_lib.make_eval_step(self.teacher_apply))

    def init(key):
      return step_lib.init_train_state(self._init_teacher(key), optimizer,
                                       rng=jax.random.fold_in(key, 1))

    def evaluate(state):
      return {f'{split}/{metric}': value
              for split, arrays in self.evals.items()
              for metric, value in loop.evaluate(eval_step, state, None, arrays).items()}

    return self._trainer(recipe, train_step, init, evaluate)

  def method_trainers(self, method: str) -> list[Trainer]:
    """The Trainer(s) of one method (FitNets' two stages are two)."""
    c, recipe = self.config, self.config.student.train
    optimizer = self.student_optimizer
    plain = self.student()
    simple = {
        'vanilla': (label_objective, None),
        'kd': (lambda: kd_objective(c.kd), self.teacher_apply),
        'dkd': (lambda: dkd_objective(c.dkd, self.steps_per_epoch(recipe.batch_size)),
                self.teacher_apply),
    }
    if method in simple:
      make_objective, teacher_apply = simple[method]
      train_step = step_lib.make_train_step(self.student_apply(plain), teacher_apply,
                                            make_objective(), optimizer)
      return [self._trainer(recipe, train_step, self.student_init(plain, optimizer),
                            self.evaluate_fn(plain))]
    if method == 'at':
      features = tuple(c.at.features)
      train_step = step_lib.make_train_step(
          self.student_apply(plain, features), self._teacher_apply(features),
          at_objective(c.at), optimizer)
      return [self._trainer(recipe, train_step, self.student_init(plain, optimizer),
                            self.evaluate_fn(plain))]
    if method == 'multi_teacher':
      teachers = (self.teacher_apply,) * c.num_teachers
      train_step = step_lib.make_train_step(self.student_apply(plain), teachers,
                                            multi_teacher_objective(c.multi_teacher), optimizer)
      return [self._trainer(recipe, train_step, self.student_init(plain, optimizer),
                            self.evaluate_fn(plain))]
    if method == 'fitnets':
      return self._fitnets_trainers(optimizer)
    if method == 'crd':
      return [self._crd_trainer(optimizer)]
    if method == 'dml':
      return [self._dml_trainer(optimizer)]
    raise ValueError(f'unknown method {method!r}; known: {sorted(METHOD_TITLES)}')

  def _fitnets_trainers(self, optimizer) -> list[Trainer]:
    c, recipe = self.config.fitnets, self.config.student.train
    hint_shape = self._teacher_feature_shape(c.teacher_feature)
    module = self.student(hint_feature=c.student_feature, hint_channels=hint_shape[-1],
                          hint_kernel=c.regressor_kernel)
    student_apply = self.student_apply(module, ('hint',))
    teacher_apply = self._teacher_apply((c.teacher_feature,))
    evaluate = self.evaluate_fn(module)
    if not c.stage1_epochs:
      train_step = step_lib.make_train_step(student_apply, teacher_apply,
                                            fitnets_joint_objective(c), optimizer)
      return [self._trainer(recipe, train_step, self.student_init(module, optimizer), evaluate)]
    # Stage 1: the hint alone, moving only what lies on its path.
    stage1 = recipes.fitnets_stage1_objective('hint', c.teacher_feature,
                                                    reduction=c.reduction, resize=c.resize or None)
    example_state = jax.jit(self.student_init(module, optimizer))(jax.random.PRNGKey(0))
    example_batch = {k: v[:8] for k, v in self.arrays['train'].items()}
    teacher_variables = jax.jit(self._init_teacher)(jax.random.PRNGKey(0))

    def hint_loss(params):
      teacher_out = step_lib.teacher_outputs(teacher_apply, teacher_variables, example_batch)
      student, _ = student_apply({**example_state.variables, 'params': params}, example_batch,
                                 train=True)
      return stage1(student, teacher_out, example_batch)[0]

    paths = trainable_paths(hint_loss, example_state.params)
    stage1_recipe = ml_collections.ConfigDict({**recipe.to_dict(), 'epochs': c.stage1_epochs})
    stage1_optimizer = recipes.freeze_except(
        make_optimizer(stage1_recipe, self.steps_per_epoch(recipe.batch_size)),
        lambda path: path in paths)
    stage1_step = step_lib.make_train_step(student_apply, teacher_apply, stage1, stage1_optimizer)
    # Stage 2: KD with the paper's annealed weight, the whole student.
    total_steps = recipe.epochs * self.steps_per_epoch(recipe.batch_size)
    stage2 = recipes.fitnets_stage2_objective(
        total_steps=total_steps, temperature=c.temperature,
        metrics={'acc/student': objective_lib.accuracy_metric()})
    stage2_step = step_lib.make_train_step(self.student_apply(module), self.teacher_apply, stage2,
                                           optimizer)
    return [
        self._trainer(recipe, stage1_step, self.student_init(module, stage1_optimizer), evaluate,
                      epochs=c.stage1_epochs),
        self._trainer(recipe, stage2_step, self.student_init(module, optimizer), evaluate),
    ]

  def _crd_trainer(self, optimizer) -> Trainer:
    c, recipe = self.config.crd, self.config.student.train
    teacher_dim = self._teacher_feature_shape(c.feature)
    module = self.student(crd_feature=c.feature, crd_dim=c.dim)
    student_apply = self.student_apply(module, ('crd_student', 'crd_teacher'),
                                       teacher_features=True)
    objective = crd_objective(c, self.num_train)
    # The teacher-side CRD head is the student's: it reads the teacher's feature.
    train_step = step_lib.make_train_step(
        student_apply, self._teacher_apply((c.feature,)), objective, optimizer,
        student_inputs=lambda batch, teacher: {
            **batch, 'teacher_features': teacher.feature(c.feature)})
    init = self.student_init(module, optimizer,
                             init_inputs=(self.example, jnp.zeros((1,) + teacher_dim[1:])),
                             objective=objective)
    return self._trainer(recipe, train_step, init, self.evaluate_fn(module))

  def _dml_trainer(self, optimizer) -> Trainer:
    c, recipe = self.config.dml, self.config.student.train
    if c.num_students < 2:
      raise ValueError(f'dml.num_students must be >= 2, got {c.num_students}')
    plain = self.student()
    apply = self.student_apply(plain)
    mutual = step_lib.make_mutual_train_step((apply,) * c.num_students, dml_objective(c),
                                             optimizer, sequential=c.sequential)
    single_init = self.student_init(plain, optimizer)

    def train_step(state, teacher_variables, batch):
      del teacher_variables
      states, metrics = mutual(unpack_cohort(state), batch)
      return pack_cohort(states), metrics

    def init(key):
      return pack_cohort([single_init(jax.random.fold_in(key, 100 + k))
                          for k in range(c.num_students)])

    evaluate_one = self.evaluate_fn(plain)

    def evaluate(state):
      per_student = [evaluate_one(s) for s in unpack_cohort(state)]
      out = {}
      for k, metrics in enumerate(per_student):
        out.update({name.replace('/acc/student', f'/acc/student_{k}'): value
                    for name, value in metrics.items() if '/acc/student' in name})
      for name in per_student[0]:  # the cohort's mean, reported as the method's
        out[name] = float(np.mean([m[name] for m in per_student]))
      return out

    return self._trainer(recipe, train_step, init, evaluate)


def run_seed(experiment: Experiment, trainers, seed: int, workdir: str):
  """Teachers, then every method, for one seed; returns metrics and teacher variables."""
  config = experiment.config
  train = jax.device_put(experiment.arrays['train'])
  result, teachers, timings = {}, [], {}

  def phase_dir(phase):
    return os.path.join(workdir, phase, f'seed{seed}')

  needs = set(config.methods) - {'vanilla', 'dml'}
  num_teachers = config.num_teachers if 'multi_teacher' in config.methods else 1
  for k in range(num_teachers if needs else 0):
    phase = 'teacher' if k == 0 else f'teacher_{k}'
    started = time.time()
    variables, result[phase] = _common.train_teacher(
        trainers['teacher'], train, seed=seed + 100 * k, workdir=phase_dir(phase),
        config=_common.run_config(config, phase='teacher'))
    teachers.append(variables)
    timings[phase] = time.time() - started
  student_seed = seed + 1000  # every method's student starts alike
  states = {}
  for method in config.methods:
    teacher_variables = tuple(teachers) if method == 'multi_teacher' else (
        teachers[0] if teachers else None)
    state, started = None, time.time()
    for i, trainer in enumerate(trainers[method]):
      stage = method if len(trainers[method]) == 1 else f'{method}_stage{i + 1}'
      start = None
      if state is not None:  # a later stage starts from the previous stage's weights
        start = trainer.init(jax.random.PRNGKey(student_seed)).replace(
            params=state.params, model_state=state.model_state)
      state, metrics = trainer.train(train, seed=student_seed, teacher_variables=teacher_variables,
                                     workdir=phase_dir(stage), desc=f'{stage} s{seed}', state=start,
                                     config=_common.run_config(config, phase=stage))
    result[method] = metrics
    states[method] = state
    timings[method] = time.time() - started
  return result, teachers, states, timings


def summarize(per_seed: list[dict]) -> dict:
  """Test and validation accuracy of every phase: mean and std over seeds."""
  return _common.summarize(per_seed, list(per_seed[0]),
                           {'test': 'test/acc/student', 'val': 'val/acc/student'})


# ----------------------------------------------------------------------------
# Report.


def describe(config: Mapping[str, Any], params: Mapping[str, int]) -> str:
  """One paragraph saying what was trained, from a run's recorded config."""

  def model(spec):
    if spec['name'] == 'CifarResNet':
      return (f"a CIFAR ResNet-{spec['depth']} (widths "
              f"{'-'.join(str(w) for w in spec['widths'])})")
    return spec['name']

  data = config['data']
  t, s = config['teacher'], config['student']
  r = s['train']
  aug = []
  if data['crop_padding']:
    aug.append(f"random crops with {data['crop_padding']}-pixel padding")
  if data['flip']:
    aug.append('horizontal flips')
  return (
      f"Data: {data['name']}, trained on `{data['train_split']}`, validation accuracy on "
      f"`{data['val_split']}` (no method weight was tuned: all are the published ones), test "
      f"accuracy on `{data['test_split']}`"
      f"{'; training with ' + ' and '.join(aug) if aug else ''}. Teacher: {model(t)}, "
      f"{params['teacher']:,} parameters, {t['train']['epochs']} epochs; student: {model(s)}, "
      f"{params['student']:,} parameters, {r['epochs']} epochs of SGD (momentum "
      f"{r['momentum']}, learning rate {r['learning_rate']} divided by "
      f"{1 / r['decay_rate']:g} at {', '.join(f'{f:g}' for f in r['decay_fractions'])} of the "
      f"epochs, weight decay {r['weight_decay']:g}, batch {r['batch_size']}) with each method at "
      f"its published weights: KD T = {config['kd']['temperature']:g} "
      f"({config['kd']['kd_weight']:g} KD + {config['kd']['ce_weight']:g} CE); FitNets hint "
      f"on {config['fitnets']['student_feature']}"
      + (f" ({config['fitnets']['stage1_epochs']} hint-only epochs first, then KD with the "
         f"paper's annealed weight)" if config['fitnets']['stage1_epochs'] else
         f" (weight {config['fitnets']['hint_weight']:g})")
      + f"; AT β = {config['at']['weight']:g} on {', '.join(config['at']['features'])}; DKD "
      f"α = {config['dkd']['alpha']:g}, β = {config['dkd']['beta']:g}, "
      f"{config['dkd']['warmup_epochs']}-epoch warm-up; CRD weight {config['crd']['weight']:g}, "
      f"{config['crd']['num_negatives']} negatives; DML {config['dml']['num_students']} students; "
      f"multi-teacher KD from {config['num_teachers']} teachers (the same model, other seeds).")


def format_table(results: Mapping[str, Any]) -> str:
  """Markdown tables of test accuracy per method: mean ± std, and per seed."""
  summary, num_test = results['summary'], results['num_test']

  def pct(stats):
    return _common.mean_std_text(stats, scale=100, digits=2)

  rows = []
  teacher_rows = [p for p in summary if p.startswith('teacher')]
  for phase in teacher_rows + [m for m in METHOD_TITLES if m in summary]:
    title = {'teacher': 'teacher'}.get(phase, METHOD_TITLES.get(phase, phase.replace('_', ' ')))
    test = summary[phase]['test']
    rows.append([title, pct(test), pct(summary[phase]['val']),
                 f"{num_test * (1 - test['mean']):.1f} ± {num_test * test['std']:.1f}"])
  lines = _common.markdown_table(
      ['model', 'test accuracy (%)', 'validation accuracy (%)', f'test errors (of {num_test})'],
      rows)
  lines += ['', per_seed_table(results)]
  phase_seconds = results.get('phase_seconds') or []
  if phase_seconds:
    mean_seconds = {p: np.mean([s[p] for s in phase_seconds if p in s]) for p in phase_seconds[0]}
    lines += ['', 'Training time per seed (s, mean over seeds, compilation in the first): '
              + ', '.join(f'{p} {t:.0f}' for p, t in mean_seconds.items()) + '.']
  gradcam = results.get('gradcam')
  if gradcam:
    how = {'closed_form': 'in closed form at the last stage (CAM: runs from before the zoo '
                          'models exposed their maps)',
           'grad_cam': 'with kdjax.explain.grad_cam',
           'grad_cam_plus_plus': 'with kdjax.explain.grad_cam_plus_plus'}
    lines += ['', f"Grad-CAM maps of {results['config']['gradcam']['feature']} (teacher, "
              f"labels-only student, {results['config']['gradcam']['method']} student; true "
              f"class) for the first test images: `{gradcam['file']}` in the run's workdir, "
              f"computed {' and '.join(how.get(h, h) for h in gradcam['method'].split('+'))}."]
  return '\n'.join(lines)


# (claim, run, baseline, caveat): each is judged on the per-seed test accuracy of run - baseline.
CLAIMS = (
    ('the teacher beats the labels-only student, the gap to close', 'teacher', 'vanilla', None),
    ('KD beats labels only', 'kd', 'vanilla', None),
    ('FitNets beats KD', 'fitnets', 'kd', None),
    ('AT beats KD', 'at', 'kd', None),
    ('DKD beats KD', 'dkd', 'kd', None),
    ('CRD beats KD', 'crd', 'kd', None),
    ('DML peers beat the labels-only student', 'dml', 'vanilla',
     'the DML number is the mean of its two students, which start from other weights than the '
     'labels-only student'),
    ('multi-teacher KD beats KD from one teacher', 'multi_teacher', 'kd', None),
)


def claims(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Every claim whose runs were made, judged from the recorded per-seed test accuracies."""
  per_seed = results['per_seed']
  out = []
  for text, run, baseline, caveat in CLAIMS:
    if all(run in r and baseline in r for r in per_seed):
      out.append(_common.claim(f'{text} (test accuracy, points)',
                               [r[run]['test/acc/student'] for r in per_seed],
                               [r[baseline]['test/acc/student'] for r in per_seed],
                               scale=100, caveat=caveat))
  return out


def per_seed_table(results: Mapping[str, Any]) -> str:
  """Every seed's test accuracy (%) of every run."""
  per_seed = results['per_seed']
  phases = [p for p in per_seed[0] if all(p in r for r in per_seed)]
  columns = {METHOD_TITLES.get(p, p.replace('_', ' ')).split(' (')[0]:
                 [r[p]['test/acc/student'] for r in per_seed] for p in phases}
  return '\n'.join([f"Test accuracy (%) per seed (of {results['num_test']} test images):", '',
                    *_common.per_seed_table(results['config']['seeds'], columns, scale=100)])


# ----------------------------------------------------------------------------
# Grad-CAM figure.


def gradcam_figure(experiment: Experiment, teacher_variables, states, path: str) -> str | None:
  """Teacher / vanilla student / distilled student Grad-CAM++ maps side by side.

  Maps of ``config.gradcam.feature`` for the first test images, explaining
  the true class, with :func:`kdjax.explain.grad_cam_plus_plus`: the zoo
  models expose their maps to it (:func:`kdjax.zoo.expose_feature`); in the
  student the backbone's map and perturbation are under ``'backbone/'``.

  Returns:
    How the maps were computed ('grad_cam_plus_plus'), or None when nothing
    was written (the runs are missing).
  """
  c = experiment.config.gradcam
  if teacher_variables is None or 'vanilla' not in states or c.method not in states:
    return None
  test = experiment.arrays['test']
  batch = {'x': test['x'][:c.examples], 'label': test['label'][:c.examples]}
  labels = jnp.asarray(batch['label'], jnp.int32)
  teacher_apply = experiment._teacher_apply((c.feature,))  # pylint: disable=protected-access
  student_apply = experiment.student_apply(experiment.student(), (c.feature,))
  in_student = f'backbone/{c.feature}'
  rows = [('teacher', teacher_apply, teacher_variables, c.feature),
          ('student, labels only', student_apply, states['vanilla'].variables,
           in_student),
          (f"student, {METHOD_TITLES[c.method].split(' (')[0]}", student_apply,
           states[c.method].variables, in_student)]
  maps = {name: explain.grad_cam_plus_plus(apply, variables, batch, feature=c.feature,
                                           class_index=labels, perturbation=perturbation)
          for name, apply, variables, perturbation in rows}
  explain.plot_maps(batch['x'], maps, path)
  return 'grad_cam_plus_plus'


# ----------------------------------------------------------------------------
# Driver.


def run(config: ml_collections.ConfigDict, workdir: str,
        command: Sequence[str] | None = None) -> dict:
  """Runs every seed, writes results.json (and the Grad-CAM figure); returns the results.

  `command` is the command line recorded with the results (default: this
  process's).
  """
  command = command or _common.command(MODULE, None)
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  unknown = sorted(set(config.methods) - set(METHOD_TITLES))
  if unknown:
    raise ValueError(f'config.methods has unknown methods {unknown}; known: {sorted(METHOD_TITLES)}')
  arrays, num_classes = load_arrays(config)
  experiment = Experiment(config, arrays, num_classes)
  trainers = {'teacher': experiment.teacher_trainer()}
  for method in config.methods:
    trainers[method] = experiment.method_trainers(method)
  per_seed, seconds, phase_seconds = [], [], []
  teachers, states = [], {}
  params = {
      'teacher': param_count(experiment.teacher_variables_shape),
      'student': param_count(jax.eval_shape(
          lambda: experiment.student().init(jax.random.PRNGKey(0), experiment.example,
                                            mutable=True))),
  }
  results = {}
  for seed in config.seeds:
    seed_start = time.time()
    result, teachers, states, timings = run_seed(experiment, trainers, seed, workdir)
    per_seed.append(result)
    phase_seconds.append(timings)
    seconds.append(time.time() - seed_start)
    # Written after every seed, so an interrupted run leaves its finished seeds.
    results = _results(config, arrays, params, per_seed, seconds, phase_seconds, None, start)
    results = _common.write_results(results, workdir, config, command)
  figure = os.path.join(workdir, 'gradcam.png')
  gradcam = gradcam_figure(experiment, teachers[0] if teachers else None, states, figure)
  results = _results(config, arrays, params, per_seed, seconds, phase_seconds, gradcam, start)
  return _common.write_results(results, workdir, config, command)


def _results(config, arrays, params, per_seed, seconds, phase_seconds, gradcam, start):
  done = list(config.seeds)[:len(per_seed)]
  recorded = config.to_dict()
  notes = None
  if len(done) < len(config.seeds):
    notes = (f'Partial run: {len(done)} of the {len(config.seeds)} seeds of the config '
             f'({list(config.seeds)}) had finished when this was written.')
  recorded['seeds'] = done
  return {
      'paper': PAPER,
      'config': recorded,
      'num_test': int(len(arrays['test']['label'])),
      'params': params,
      'per_seed': per_seed,
      'seed_seconds': seconds,
      'phase_seconds': phase_seconds,
      'summary': summarize(per_seed),
      'gradcam': {'file': 'gradcam.png', 'method': gradcam} if gradcam else None,
      'notes': notes,
      'wall_seconds': time.time() - start,
      'finished': time.time(),
  }


def main(argv: Sequence[str] | None = None) -> None:
  _common.run_main(
      argv, module=MODULE, doc=__doc__, schema=cifar_kd_configs.schema(), run=run,
      report=lambda r: describe(r['config'], r['params']) + '\n\n' + format_table(r),
      claims=claims)


if __name__ == '__main__':
  main(sys.argv[1:])
