"""Grad-CAM / Grad-CAM++ against closed forms and autodiff; saliency agreement against NumPy."""

import functools

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import adapters
from kdjax import explain

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
