"""CIFAR zoo: parameter counts equal the PyTorch originals; features; BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import adapters
from kdjax import step
from kdjax import zoo
from zoo_variables import numpy_variables

# Parameter counts of the PyTorch originals with num_classes=100 (weights and
# biases, BatchNorm weight and bias; running statistics are buffers and not
# counted). Counted with torch 2.13.0 (CPU, in a separate venv) as
# sum(p.numel() for p in model.parameters()) on models transcribed from
# HobbitLong/RepDistiller models/{resnet,wrn,vgg,mobilenetv2,ShuffleNetv1,
# ShuffleNetv2}.py (= megvii-research/mdistiller mdistiller/models/cifar/),
# with the benchmark's constructors: resnet*(num_classes), wrn_*(num_classes),
# vgg13_bn/vgg8_bn ('vgg13'/'vgg8' in model_dict), mobile_half (T=6, w=0.5),
# ShuffleV1 (groups 3), ShuffleV2 (net_size 1). They agree with the rounded
# counts of Tian et al. (2020), "Contrastive Representation Distillation",
# Table 1/2 (e.g. resnet32x4 7.43M, resnet8x4 1.23M, wrn_40_2 2.25M, vgg13
# 9.46M, ShuffleV2 1.35M).
PYTORCH_PARAM_COUNTS = {
    'resnet20': 278_324,
    'resnet56': 861_620,
    'resnet110': 1_736_564,
    'resnet8x4': 1_233_540,
    'resnet32x4': 7_433_860,
    'wrn_40_2': 2_255_156,
    'wrn_16_2': 703_284,
    'wrn_40_1': 569_780,
    'vgg13': 9_462_180,
    'vgg8': 3_965_028,
    'MobileNetV2': 812_836,
    'ShuffleV1': 949_258,
    'ShuffleV2': 1_355_528,
}

# Per-stage feature maps [h, w, c] for 32x32 inputs and the pooled width,
# from the architectures (mdistiller's get_stage_channels where it has one).
_RESNET = [(32, 32, 16), (32, 32, 16), (16, 16, 32), (8, 8, 64)]
_RESNET_X4 = [(32, 32, 32), (32, 32, 64), (16, 16, 128), (8, 8, 256)]
_WRN_2 = [(32, 32, 16), (32, 32, 32), (16, 16, 64), (8, 8, 128)]
_VGG = [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512), (4, 4, 512)]
FEATURE_SHAPES = {
    'resnet20': (_RESNET, 64),
    'resnet56': (_RESNET, 64),
    'resnet110': (_RESNET, 64),
    'resnet8x4': (_RESNET_X4, 256),
    'resnet32x4': (_RESNET_X4, 256),
    'wrn_40_2': (_WRN_2, 128),
    'wrn_16_2': (_WRN_2, 128),
    'wrn_40_1': ([(32, 32, 16), (32, 32, 16), (16, 16, 32), (8, 8, 64)], 64),
    'vgg13': (_VGG, 512),
    'vgg8': (_VGG, 512),
    'MobileNetV2': ([(16, 16, 16), (16, 16, 12), (8, 8, 16), (4, 4, 48), (2, 2, 160)], 1280),
    'ShuffleV1': ([(32, 32, 24), (16, 16, 240), (8, 8, 480), (4, 4, 960)], 960),
    'ShuffleV2': ([(32, 32, 24), (16, 16, 116), (8, 8, 232), (4, 4, 464)], 1024),
}


@pytest.mark.parametrize('name', sorted(PYTORCH_PARAM_COUNTS))
def test_param_count_and_feature_shapes_match_the_pytorch_model(name):
  model = zoo.cifar_model(name, num_classes=100)

  def init_and_apply(images):
    variables = model.init(jax.random.PRNGKey(0), images)
    logits, state = model.apply(variables, images, train=False, mutable=['intermediates'])
    return variables, logits, state['intermediates']

  variables, logits, intermediates = jax.eval_shape(
      init_and_apply, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables['params']))
  assert count == PYTORCH_PARAM_COUNTS[name]
  assert sorted(variables) == ['batch_stats', 'params']
  assert logits.shape == (2, 100)
  stages, pooled = FEATURE_SHAPES[name]
  expected = {'pooled': (2, pooled)}
  for i, shape in enumerate(stages):
    expected[f'feat_{i}'] = expected[f'preact_{i}'] = (2, *shape)
  assert {key: value[0].shape for key, value in intermediates.items()} == expected


SMALL_MODELS = {
    'resnet8x4': zoo.resnet8x4,
    'wrn_16_2': zoo.wrn_16_2,
    # The benchmark's ShuffleNets, narrowed (same code paths; fast to compile).
    'shufflenet_v1': lambda **kw: zoo.ShuffleNetV1((48, 96, 192), (2, 1, 1), 3, **kw),
    'shufflenet_v2': lambda **kw: zoo.ShuffleNetV2((16, 32, 64, 128), (1, 1, 1), **kw),
}


@pytest.mark.parametrize('name', sorted(SMALL_MODELS))
def test_jitted_forward_features_and_their_relations(name):
  model = SMALL_MODELS[name](num_classes=7)
  images = np.random.default_rng(1).standard_normal((3, 16, 16, 3), np.float32)
  variables = numpy_variables(model, images)
  names = ['feat_0', 'feat_1', 'feat_3', 'preact_0', 'preact_3', 'pooled']
  apply = jax.jit(adapters.from_linen(model, inputs='image', features=names),
                  static_argnames='train')
  outputs, new_state = apply(variables, {'image': images}, train=True)
  assert outputs.logits.shape == (3, 7)
  assert sorted(new_state) == ['batch_stats']
  feats = outputs.features
  np.testing.assert_array_equal(feats['feat_0'], feats['preact_0'])
  # Two (ResNet, WRN) or three (ShuffleNets) stride-2 stages on 16x16 inputs.
  assert feats['feat_3'].shape[1:3] == ((2, 2) if 'shufflenet' in name else (4, 4))
  preact = feats['preact_3']
  if name == 'shufflenet_v2':
    # The output is the channel shuffle of concat(kept half, ReLU(BN)); the
    # kept half is itself a ReLU output, so ReLU(preact) shuffled is feat_3.
    expected = zoo._cifar_layers.channel_shuffle(jax.nn.relu(preact), 2)
  elif name == 'wrn_16_2':
    # Pre-activation network: preact_3 is the final BN of feat_3.
    expected = feats['feat_3']
    np.testing.assert_allclose(
        feats['pooled'], jnp.mean(jax.nn.relu(preact), axis=(1, 2)), rtol=1e-5, atol=1e-6)
  else:
    expected = jax.nn.relu(preact)
  np.testing.assert_allclose(feats['feat_3'], expected, rtol=1e-6, atol=1e-6)
  if name in ('resnet8x4', 'shufflenet_v1'):
    np.testing.assert_allclose(
        feats['pooled'], jnp.mean(feats['feat_3'], axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_batch_norm_train_and_eval_follow_pytorch_semantics():
  model = zoo.WideResNet(10, 1, num_classes=5)
  rng = np.random.default_rng(2)
  images = rng.standard_normal((4, 8, 8, 3), np.float32)
  # The same first two examples with a different rest of the batch.
  other_images = np.concatenate([images[:2], rng.standard_normal((2, 8, 8, 3), np.float32)])
  variables = numpy_variables(model, images)

  @jax.jit
  def train_call(variables, images):
    return model.apply(variables, images, train=True, mutable=['batch_stats'])

  eval_call = jax.jit(lambda v, x: model.apply(v, x, train=False))
  logits, state1 = train_call(variables, images)
  _, state2 = train_call({**variables, **state1}, images)
  # Running averages keep 0.9 of the old value (PyTorch's momentum=0.1):
  # s1 = 0.9 s0 + 0.1 m and s2 = 0.9 s1 + 0.1 m, so s2 - s1 = 0.9 (s1 - s0).
  jax.tree.map(
      lambda s0, s1, s2: np.testing.assert_allclose(s2 - s1, 0.9 * (s1 - s0), rtol=1e-4, atol=1e-6),
      variables['batch_stats'], state1['batch_stats'], state2['batch_stats'])
  # Training normalises with the batch's statistics: the stored ones don't
  # matter, and an example's output depends on the rest of the batch.
  shifted = jax.tree.map(lambda s: s + 1.0, variables['batch_stats'])
  logits_shifted, _ = train_call({**variables, 'batch_stats': shifted}, images)
  np.testing.assert_allclose(logits, logits_shifted, rtol=1e-5, atol=1e-6)
  other_logits, _ = train_call(variables, other_images)
  assert not np.allclose(other_logits[:2], logits[:2], atol=1e-4)
  # Inference uses the stored statistics: per-example, and they matter.
  np.testing.assert_allclose(eval_call(variables, other_images)[:2],
                             eval_call(variables, images)[:2], rtol=1e-5, atol=1e-6)
  assert not np.allclose(eval_call({**variables, 'batch_stats': shifted}, images),
                         eval_call(variables, images), atol=1e-4)


def test_unknown_feature_lists_the_model_features():
  model = zoo.resnet20(num_classes=10)
  apply = adapters.from_linen(model, inputs='image', features=['feat_4'])
  images = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  with pytest.raises(KeyError, match=r"exposes no intermediate \['feat_4'\].*'feat_3'.*'pooled'"):
    jax.eval_shape(lambda v, x: apply(v, {'image': x}, train=False), variables, images)


def test_registry_and_bad_arguments():
  assert zoo.cifar_model('MobileNetV2').width_mult == 0.5
  assert zoo.cifar_model('MobileNetV2').expansion == 6
  assert isinstance(zoo.cifar_model('vgg13', 10, 'im2col'), zoo.CifarVGG)
  with pytest.raises(KeyError, match=r"no CIFAR model named 'resnet9'.*'resnet20'"):
    zoo.cifar_model('resnet9')
  images = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError,
                     match=r"conv_impl must be one of \('lax', 'im2col'\), got 'cudnn'"):
    zoo.resnet20(conv_impl='cudnn').init(jax.random.PRNGKey(0), images)
  with pytest.raises(ValueError, match=r'depth must be 6n\+2.*got 21'):
    zoo.CifarResNet(21).init(jax.random.PRNGKey(0), images)
  with pytest.raises(ValueError, match=r'depth must be 6n\+4.*got 17'):
    zoo.WideResNet(17, 2).init(jax.random.PRNGKey(0), images)
  with pytest.raises(ValueError, match=r'ShuffleNetV1 takes images .*x.shape=\(8, 8, 3\)'):
    zoo.shuffle_v1().init(jax.random.PRNGKey(0), images[0])


@pytest.mark.parametrize('name', ['resnet20', 'wrn_16_1', 'vgg8', 'MobileNetV2', 'ShuffleV1',
                                  'ShuffleV2'])
def test_exposed_features_leave_no_state_and_cost_nothing_without_perturbations(name):
  """expose_feature creates no 'perturbations' at init, and reads one only when passed."""
  model = zoo.cifar_model(name, num_classes=10)
  images = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  # As the experiments init (intermediates dropped): no collection for a TrainState.
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False, mutable=True), images)
  assert sorted(variables) == ['batch_stats', 'intermediates', 'params']
  variables = {k: v for k, v in variables.items() if k != 'intermediates'}
  state = jax.eval_shape(lambda v: step.init_train_state(v, optax.sgd(0.1)), variables)
  assert sorted(state.model_state) == ['batch_stats']

  def apply(variables, x, train):
    return model.apply(variables, x, train=train, mutable=['batch_stats', 'intermediates'])

  shapes = jax.eval_shape(lambda v, x: apply(v, x, False)[1]['intermediates'], variables, images)
  # (Tracing only; a few cases, as tracing MobileNetV2 takes a second on 2 cores.)
  for train, features in ((False, ('preact_3',)), (True, ('feat_1', 'pooled'))):
    plain = jax.make_jaxpr(lambda v, x: apply(v, x, train))(variables, images).jaxpr
    for feature in features:
      eps = jax.ShapeDtypeStruct(shapes[feature][0].shape, jnp.float32)
      perturbed = jax.make_jaxpr(lambda v, x, e: apply(
          {**v, 'perturbations': {feature: e}}, x, train))(variables, images, eps).jaxpr
      # The perturbation is one add; without it, nothing is traced for it.
      assert len(perturbed.eqns) == len(plain.eqns) + 1, (feature, train)
      assert [e.primitive.name for e in perturbed.eqns].count('add') == (
          [e.primitive.name for e in plain.eqns].count('add') + 1)
