"""Grad-CAM / Grad-CAM++ against closed forms and autodiff, on toy nets and every zoo CIFAR
architecture (split at the map, or with the head written out); saliency agreement against NumPy."""

import functools

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import adapters
from kdjax import explain
from kdjax import zoo
from zoo_variables import numpy_variables

BATCH, H, W, IN, C, CLASSES = 4, 5, 6, 2, 3, 5
LABELS = np.array([0, 2, 1, 4])  # a different class for each example

def _init(model, x, seed):
  """Random variables of `model`'s shapes, drawn with NumPy: an eager linen
  init compiles op by op, which costs seconds on CPU."""
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  shapes = jax.eval_shape(model.init, key, jax.ShapeDtypeStruct(x.shape, x.dtype))
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[0]), s.dtype), shapes
  )



class LinearScoreNet(nn.Module):
  """A = ReLU(1x1 conv of x); score = Dense(mean_ij A): linear in A."""

  @nn.compact
  def __call__(self, x):
    a = nn.relu(nn.Dense(C, name='conv')(x))
    a = self.perturb('feat', a)
    self.sow('intermediates', 'feat', a)
    return nn.Dense(CLASSES, name='head')(jnp.mean(a, axis=(1, 2)))


class Block(nn.Module):

  @nn.compact
  def __call__(self, x):
    a = jnp.tanh(nn.Dense(C, name='conv')(x))
    a = self.perturb('feat', a)
    self.sow('intermediates', 'feat', a)
    return a


class NonlinearHeadNet(nn.Module):
  """The map sits in a submodule; the head mixes positions non-linearly."""

  @nn.compact
  def __call__(self, x):
    a = Block(name='block')(x)
    h = jnp.tanh(nn.Dense(4, name='mix')(a))
    return nn.Dense(CLASSES, name='head')(h.reshape((h.shape[0], -1)))


def _head(params, a):
  """NonlinearHeadNet after the map, written out."""
  h = jnp.tanh(a @ params['mix']['kernel'] + params['mix']['bias'][None, None, None, :])
  return h.reshape((a.shape[0], -1)) @ params['head']['kernel'] + params['head']['bias'][None, :]


@functools.cache
def _setup(net_type):
  net = net_type()
  x = np.random.default_rng(0).normal(size=(BATCH, H, W, IN)).astype(np.float32)
  variables = _init(net, x[:1], 1)  # a batch of 1 at init
  apply = adapters.from_linen(net, inputs='image', features={'feat': _path(net_type)}, train_kwarg=None)
  return apply, variables, {'image': x}


def _path(net_type):
  return 'feat' if net_type is LinearScoreNet else 'block/feat'


def _np_feature(variables, x, activation):
  conv = variables['params']['conv'] if 'conv' in variables['params'] else variables['params']['block']['conv']
  return activation(np.asarray(x, np.float64) @ np.asarray(conv['kernel']) + np.asarray(conv['bias']))


def _np_cam_plus_plus(a, g):
  """Grad-CAM++ (Chattopadhyay et al., Eq. 19) with NumPy loops over channels."""
  maps = np.zeros(a.shape[:3])
  for b in range(a.shape[0]):
    for k in range(a.shape[3]):
      gk, ak = g[b, :, :, k], a[b, :, :, k]
      denominator = 2 * gk**2 + ak.sum() * gk**3
      alpha = np.divide(gk**2, denominator, out=np.zeros_like(gk), where=denominator != 0)
      maps[b] += np.sum(alpha * np.maximum(gk, 0)) * ak
  return np.maximum(maps, 0)


@pytest.mark.parametrize('with_init_perturbations', [True, False])
def test_linear_score_has_closed_form_maps(with_init_perturbations):
  apply, variables, batch = _setup(LinearScoreNet)
  if not with_init_perturbations:
    variables = {'params': variables['params']}
  a = _np_feature(variables, batch['image'], lambda z: np.maximum(z, 0))
  head = np.asarray(variables['params']['head']['kernel'], np.float64)  # [C, classes]
  weights = head[:, LABELS].T  # [batch, C]: W_k for each example's class

  features, gradients, index = explain.feature_gradients(
      apply, variables, batch, feature='feat', class_index=LABELS
  )
  np.testing.assert_allclose(features, a, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(index, LABELS)
  # score = sum_k W_k mean_ij A_ijk, so dS/dA_ijk = W_k / (H W) everywhere.
  np.testing.assert_allclose(
      gradients, np.broadcast_to(weights[:, None, None, :] / (H * W), a.shape), rtol=1e-5
  )
  cam = explain.grad_cam(apply, variables, batch, feature='feat', class_index=LABELS)
  expected = np.maximum(np.einsum('bhwk,bk->bhw', a, weights), 0) / (H * W)
  np.testing.assert_allclose(cam, expected, rtol=1e-5, atol=1e-7)

  # Grad-CAM++: g = c_k is constant per channel, so alpha_k = 1 / (2 + c_k sum_ab A^k_ab)
  # and w_k = H W alpha_k ReLU(c_k).
  c = weights / (H * W)
  totals = a.sum(axis=(1, 2))
  w_plus = np.where(c > 0, H * W * np.maximum(c, 0) / (2 + c * totals), 0.0)
  expected_plus = np.maximum(np.einsum('bhwk,bk->bhw', a, w_plus), 0)
  cam_plus = explain.grad_cam_plus_plus(apply, variables, batch, feature='feat', class_index=LABELS)
  np.testing.assert_allclose(cam_plus, expected_plus, rtol=1e-4, atol=1e-7)


def test_nonlinear_head_gradients_equal_autodiff_of_the_head():
  apply, variables, batch = _setup(NonlinearHeadNet)
  params = variables['params']
  a = jnp.asarray(_np_feature(variables, batch['image'], np.tanh), jnp.float32)
  logits = jax.jit(_head)(params, a)
  # Default class: each example's prediction.
  features, gradients, index = explain.feature_gradients(
      apply, variables, batch, feature='feat', perturbation='block/feat'
  )
  np.testing.assert_array_equal(index, np.argmax(logits, -1))
  expected = jax.jit(jax.grad(
      lambda f: jnp.sum(jnp.take_along_axis(_head(params, f), index[:, None], -1))
  ))(a)
  np.testing.assert_allclose(features, a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gradients, expected, rtol=1e-4, atol=1e-7)
  a64, g64 = np.asarray(features, np.float64), np.asarray(gradients, np.float64)
  np.testing.assert_allclose(
      explain.cam_from_gradients(features, gradients, plusplus=True),
      _np_cam_plus_plus(a64, g64), rtol=1e-4, atol=1e-7,
  )
  np.testing.assert_allclose(
      explain.cam_from_gradients(features, gradients),
      np.maximum(np.einsum('bhwk,bk->bhw', a64, g64.mean(axis=(1, 2))), 0), rtol=1e-4, atol=1e-7,
  )
  normalized = explain.grad_cam(
      apply, variables, batch, feature='feat', perturbation='block/feat', normalize=True
  )
  raw = np.asarray(explain.cam_from_gradients(features, gradients))
  low, high = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(normalized, (raw - low) / (high - low), rtol=1e-5, atol=1e-6)


def test_saliency_agreement_equals_numpy():
  rng = np.random.default_rng(3)
  map_a, map_b = rng.uniform(size=(3, 4, 5)), rng.uniform(size=(3, 4, 5))
  map_b[2] = 2.0 * map_a[2] + 1.0  # a positive affine copy: correlation 1
  pearson = explain.saliency_agreement(map_a, map_b)
  expected = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(map_a, map_b)]
  np.testing.assert_allclose(pearson, expected, rtol=1e-5, atol=1e-6)
  assert abs(float(pearson[2]) - 1.0) < 1e-5

  k = int(np.ceil(0.3 * 20))
  iou = explain.saliency_agreement(map_a, map_b, metric='iou_topk', top_fraction=0.3)
  for row, (a, b) in enumerate(zip(map_a, map_b)):
    top_a, top_b = set(np.argsort(-a.ravel())[:k]), set(np.argsort(-b.ravel())[:k])
    np.testing.assert_allclose(iou[row], len(top_a & top_b) / len(top_a | top_b), rtol=1e-6)
  assert float(iou[2]) == 1.0
  # A constant map correlates with nothing.
  flat = np.ones_like(map_a)
  np.testing.assert_array_equal(explain.saliency_agreement(flat, map_b), 0.0)


def test_upsample_and_normalize():
  maps = np.random.default_rng(4).uniform(size=(2, 3, 4)).astype(np.float32)
  np.testing.assert_allclose(
      explain.upsample(maps, (6, 8), method='nearest'),
      np.repeat(np.repeat(np.asarray(maps), 2, axis=1), 2, axis=2),
  )
  assert explain.upsample(maps, (7, 9)).shape == (2, 7, 9)
  normalized = np.asarray(explain.normalize_maps(maps))
  np.testing.assert_allclose(normalized.min(axis=(1, 2)), 0.0)
  np.testing.assert_allclose(normalized.max(axis=(1, 2)), 1.0)
  np.testing.assert_array_equal(explain.normalize_maps(jnp.full((1, 2, 2), 3.0)), 0.0)


def test_errors_name_arguments_and_shapes():
  apply, variables, batch = _setup(LinearScoreNet)
  with pytest.raises(ValueError, match=r'class_index must be in \[0, 5\) \(classes=5\), got 7'):
    explain.grad_cam(apply, variables, batch, feature='feat', class_index=7)
  with pytest.raises(ValueError, match=r'\[batch\] array with batch=4, got shape \(3,\)'):
    explain.grad_cam(apply, variables, batch, feature='feat', class_index=np.array([0, 1, 2]))
  with pytest.raises(KeyError, match=r"declares no perturbation 'other'; its perturbations are \['feat'\]"):
    explain.grad_cam(apply, variables, batch, feature='feat', perturbation='other')
  with pytest.raises(ValueError, match="missing perturbation variable feat.*'perturbations' collection"):
    explain.grad_cam(apply, {'params': variables['params']}, batch, feature='feat', perturbation='other')
  with pytest.raises(ValueError, match=r'NHWC maps \[batch, H, W, C\], got shape \(4, 5\)'):
    explain.cam_from_gradients(jnp.zeros((4, 5)), jnp.zeros((4, 5)))
  with pytest.raises(ValueError, match=r'map_a.shape=\(2, 3, 4\) and map_b.shape=\(2, 6, 8\)'):
    explain.saliency_agreement(jnp.zeros((2, 3, 4)), jnp.zeros((2, 6, 8)))
  with pytest.raises(ValueError, match="metric must be one of .* got 'spearman'"):
    explain.saliency_agreement(jnp.zeros((2, 3)), jnp.zeros((2, 3)), metric='spearman')
  with pytest.raises(ValueError, match=r'top_fraction must be in \(0, 1\], got 0'):
    explain.saliency_agreement(jnp.zeros((2, 3)), jnp.zeros((2, 3)), metric='iou_topk', top_fraction=0)


def test_plot_maps_writes_a_png(tmp_path):
  pytest.importorskip('matplotlib')
  from matplotlib import image as mpl_image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(5)
  images = rng.uniform(size=(3, 8, 8, 3))
  maps = {name: rng.uniform(size=(3, 4, 4)) for name in ('teacher', 'student', 'distilled student')}
  path = tmp_path / 'maps.png'
  figure = explain.plot_maps(images, maps, path, max_examples=1, dpi=20)
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert mpl_image.imread(path).shape[:2] == (1 * 2 * 20, 4 * 2 * 20)  # rows x (1 + 3 maps)
  assert len(figure.axes) == 1 * 4
  with pytest.raises(ValueError, match=r"maps\['teacher'\] must be \[batch, h, w\]"):
    explain.plot_maps(images, {'teacher': jnp.zeros((3, 4))})


# ----------------------------------------------------------------------------
# The zoo's CIFAR models: each architecture, narrowed (the same code paths,
# fast to compile), on tiny images with NumPy weights.

ZOO_BATCH, ZOO_CLASSES = 3, 5
# architecture: (model, image side, a map that is a submodule's output, that
# submodule, the last map with its head written out below)
ZOO_CASES = {
    'CifarResNet': (lambda: zoo.CifarResNet(8, (4, 8, 8, 16), ZOO_CLASSES), 8,
                    'feat_2', 'layer2_0', 'preact_3'),
    'WideResNet': (lambda: zoo.WideResNet(10, 1, ZOO_CLASSES), 8, 'feat_2', 'block2_0', 'preact_3'),
    'CifarVGG': (lambda: zoo.CifarVGG(((4,), (8,), (8, 8), (16,), (16,)), ZOO_CLASSES), 16,
                 'preact_2', 'block2_bn1', 'feat_4'),
    'MobileNetV2': (lambda: zoo.MobileNetV2(6, 0.25, ZOO_CLASSES), 32, 'feat_2', 'blocks2_2',
                    'feat_4'),
    'ShuffleNetV1': (lambda: zoo.ShuffleNetV1((48, 96, 192), (1, 1, 1), 3, ZOO_CLASSES), 16,
                     'feat_2', 'layer2_0', 'preact_3'),
    'ShuffleNetV2': (lambda: zoo.ShuffleNetV2((16, 32, 64, 128), (1, 1, 1), ZOO_CLASSES), 16,
                     'feat_2', 'layer2_1', 'preact_3'),
}


@functools.cache
def _zoo_setup(architecture):
  make, side = ZOO_CASES[architecture][:2]
  model = make()
  images = np.random.default_rng(6).standard_normal((ZOO_BATCH, side, side, 3), np.float32)
  return model, numpy_variables(model, images), {'image': images}


def _zoo_apply(model, feature):
  return adapters.from_linen(model, inputs='image', features=[feature])


def _np_cam(a, g):
  """Grad-CAM from the map and its gradient, in float64."""
  return np.maximum(np.einsum('bhwk,bk->bhw', a, g.mean(axis=(1, 2))), 0)


def _check_maps_against(apply, variables, batch, feature, a, g, index):
  """explain's maps (Grad-CAM and ++) equal NumPy's from the reference (a, g); both non-zero."""
  features, gradients, explained = explain.feature_gradients(apply, variables, batch,
                                                             feature=feature)
  np.testing.assert_array_equal(explained, index)
  np.testing.assert_allclose(features, a, rtol=1e-5, atol=1e-5)
  scale = np.abs(g).max()
  assert scale > 0
  np.testing.assert_allclose(gradients, g, rtol=1e-4, atol=1e-5 * scale)
  ours = np.asarray(features, np.float64), np.asarray(gradients, np.float64)
  theirs = np.asarray(a, np.float64), np.asarray(g, np.float64)
  for plusplus, np_maps in ((False, _np_cam), (True, _np_cam_plus_plus)):
    maps = np.asarray(explain.grad_cam(apply, variables, batch, feature=feature,
                                       plusplus=plusplus))
    assert maps.shape == a.shape[:3]
    assert np.all(maps.max(axis=(1, 2)) > 0), (feature, plusplus)  # every example's map
    # From explain's own gradients: float32 against float64 arithmetic, up to
    # the conditioning of Grad-CAM++'s alpha = 1 / (2 + g sum(A)) where g sum(A)
    # nears -2. From the reference's gradients: also up to their float32
    # difference, which the sum over channels can amplify.
    expected = np_maps(*ours)
    rtol = 2e-3 if plusplus else 1e-4
    np.testing.assert_allclose(maps, expected, rtol=rtol, atol=rtol * 1e-2 * expected.max())
    expected = np_maps(*theirs)
    np.testing.assert_allclose(maps, expected, rtol=2e-3, atol=2e-3 * expected.max())


def _split_reference(model, submodule):
  """The map a submodule makes and d logit / d map through the rest of the real model.

  The model is split at the submodule by linen's method interception, which
  replaces its output by the argument: no perturbation is involved.
  """

  def logits_from(variables, images, replacement):
    def interceptor(next_fun, args, kwargs, context):
      if context.method_name == '__call__' and context.module.scope.path == (submodule,):
        return replacement
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      return model.apply(variables, images, train=False)

  @jax.jit
  def reference(variables, images):
    logits, state = model.apply(
        variables, images, train=False, capture_intermediates=lambda m, name: (
            name == '__call__' and m.scope.path == (submodule,)),
        mutable=['intermediates'])
    a = state['intermediates'][submodule]['__call__'][0]
    index = jnp.argmax(logits, axis=-1)

    def score(a):
      picked = jnp.take_along_axis(logits_from(variables, images, a), index[:, None], -1)
      return jnp.sum(picked)

    return a, jax.grad(score)(a), index, logits, logits_from(variables, images, a)

  return reference


@pytest.mark.parametrize('architecture', sorted(ZOO_CASES))
def test_zoo_maps_equal_numpy_from_the_model_split_at_the_map(architecture):
  model, variables, batch = _zoo_setup(architecture)
  feature, submodule = ZOO_CASES[architecture][2:4]
  a, g, index, logits, split_logits = _split_reference(model, submodule)(variables,
                                                                           batch['image'])
  np.testing.assert_allclose(split_logits, logits, rtol=1e-5, atol=1e-5)  # a true split
  _check_maps_against(_zoo_apply(model, feature), variables, batch, feature, a, g, index)


def _bn(variables, name, x):
  """Inference BatchNorm (PyTorch's eps) from the variables, written out."""
  stats, params = variables['batch_stats'][name], variables['params'][name]
  per_channel = lambda v: v[None, None, None, :]
  return ((x - per_channel(stats['mean'])) / jnp.sqrt(per_channel(stats['var']) + 1e-5)
          * per_channel(params['scale']) + per_channel(params['bias']))


def _dense(variables, name, x):
  return x @ variables['params'][name]['kernel'] + variables['params'][name]['bias'][None, :]


def _conv1x1(variables, name, x):
  return jnp.einsum('bhwc,cd->bhwd', x, variables['params'][name]['kernel'][0, 0])


def _zoo_head(architecture, variables, a):
  """The architectures after their last map, written out from the papers' code."""
  pool = lambda x: jnp.mean(x, axis=(1, 2))
  if architecture in ('CifarResNet', 'WideResNet'):  # preact_3
    return _dense(variables, 'fc', pool(jax.nn.relu(a)))
  if architecture == 'CifarVGG':  # feat_4
    return _dense(variables, 'classifier', pool(a))
  if architecture == 'MobileNetV2':  # feat_4
    x = jax.nn.relu(_bn(variables, 'bn2', _conv1x1(variables, 'conv2', a)))
    return _dense(variables, 'classifier', pool(x))
  if architecture == 'ShuffleNetV1':  # preact_3
    return _dense(variables, 'linear', pool(jax.nn.relu(a)))
  # ShuffleNetV2, preact_3 = concat(kept half, BN): only the BN half goes
  # through a ReLU; then the channel shuffle, conv2, bn2, ReLU, pooling.
  keep = a.shape[-1] // 2
  x = jnp.concatenate([a[..., :keep], jax.nn.relu(a[..., keep:])], axis=-1)
  x = zoo._cifar_layers.channel_shuffle(x, 2)  # pylint: disable=protected-access
  x = jax.nn.relu(_bn(variables, 'bn2', _conv1x1(variables, 'conv2', x)))
  return _dense(variables, 'linear', pool(x))


@pytest.mark.parametrize('architecture', sorted(ZOO_CASES))
def test_zoo_last_maps_equal_numpy_from_the_head_written_out(architecture):
  model, variables, batch = _zoo_setup(architecture)
  _check_last_map(architecture, model, variables, batch, ZOO_CASES[architecture][4])


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(set(zoo.CIFAR_MODELS) - {'mobile_half'}))
def test_benchmark_models_last_maps_equal_numpy_from_the_head_written_out(name):
  """The benchmark's own widths and depths on 32x32 images (compiles for minutes in all)."""
  model = zoo.cifar_model(name, num_classes=ZOO_CLASSES)
  architecture = type(model).__name__
  images = np.random.default_rng(7).standard_normal((2, 32, 32, 3), np.float32)
  _check_last_map(architecture, model, numpy_variables(model, images), {'image': images},
                  ZOO_CASES[architecture][4])


def _check_last_map(architecture, model, variables, batch, feature):
  apply = _zoo_apply(model, feature)
  outputs, _ = jax.jit(functools.partial(apply, train=False))(variables, batch)
  a = outputs.feature(feature)
  head = functools.partial(_zoo_head, architecture, variables)
  np.testing.assert_allclose(jax.jit(head)(a), outputs.logits, rtol=1e-5, atol=1e-5)
  index = jnp.argmax(outputs.logits, axis=-1)
  g = jax.jit(jax.grad(lambda a: jnp.sum(jnp.take_along_axis(head(a), index[:, None], -1))))(a)
  _check_maps_against(apply, variables, batch, feature, a, g, index)


def test_a_perturbation_the_model_does_not_read_is_an_error():
  model, variables, batch = _zoo_setup('CifarVGG')
  apply = _zoo_apply(model, 'feat_4')
  # A path the model never reads (the student wrapper's prefix on a bare model)
  # would give zero gradients and maps: refused at trace time instead.
  with pytest.raises(ValueError, match="reads no perturbation 'backbone/feat_4'.*zero"):
    explain.grad_cam(apply, variables, batch, feature='feat_4', perturbation='backbone/feat_4')
