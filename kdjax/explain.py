"""Grad-CAM and Grad-CAM++ saliency maps, to compare what teacher and student look at.

The gradient of a class score with respect to an intermediate feature map is
taken through a *perturbation*: the model adds a zero-valued variable to the
feature map, and the gradient with respect to that variable is the gradient
with respect to the map. A Flax linen model marks a map with
``self.perturb`` and exposes it as a feature with ``self.sow``::

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3))(x))       # [batch, H, W, C]
        x = self.perturb('feat', x)               # gradients enter here
        self.sow('intermediates', 'feat', x)      # and the map leaves here
        return nn.Dense(10)(x.mean(axis=(1, 2)))

    apply = adapters.from_linen(net, features=['feat'])
    maps = explain.grad_cam(apply, variables, batch, feature='feat')

Without perturbations in its variables (as in training), ``perturb`` is a
no-op. Linen's ``init`` creates the collection, though, with the init
batch's shapes; :func:`kdjax.zoo.expose_feature` (which the zoo models use
for every feature they sow) sows and perturbs in one call and creates
nothing, so their variables, train states and checkpoints stay free of it.
In a submodule the names are paths (``'block/feat'``) for both. A model that
reads no perturbation of the given name is an error, not a zero map. For
models that cannot perturb (NNX modules, plain functions), compute the
feature map and its gradient yourself and call :func:`cam_from_gradients`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
from matplotlib.figure import Figure
import numpy as np

from kdjax import _checks
from kdjax.adapters import Apply, _flatten_intermediates

Batch = Mapping[str, Any]
PERTURBATIONS = 'perturbations'
AGREEMENT_METRICS = ('pearson', 'iou_topk')


def _nest(path: str, value: Any) -> dict[str, Any]:
  """'block/feat', v -> {'block': {'feat': v}}."""
  keys = path.split('/')
  tree = value
  for key in reversed(keys):
    tree = {key: tree}
  return tree


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
  out = dict(a)
  for key, value in b.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
      out[key] = _merge(out[key], value)
    else:
      out[key] = value
  return out


def _perturbations(variables: Mapping[str, Any], path: str, eps: jax.Array) -> dict[str, Any]:
  """The perturbations collection: `eps` at `path`, scalar zeros elsewhere.

  Other perturbations the model declares (listed when `variables` holds the
  collection from ``init``) get scalar zeros, which broadcast to any batch.
  """
  given = variables.get(PERTURBATIONS)
  if given is None:
    return _nest(path, eps)
  flat = _flatten_intermediates(given)
  if path not in flat:
    raise KeyError(
        f'the model declares no perturbation {path!r}; its perturbations are '
        f'{sorted(flat)}. Call self.perturb({path!r}, x) where the feature map '
        'is made, or pass perturbation=<its path>.'
    )
  zeros = jax.tree.map(lambda _: jnp.zeros((), jnp.float32), dict(given))
  return _merge(zeros, _nest(path, eps))


def _check_class_index(class_index: Any, batch_size: int | None, classes: int | None) -> None:
  if class_index is None or not _checks.is_concrete(class_index):
    return
  index = np.asarray(class_index)
  if not np.issubdtype(index.dtype, np.integer):
    raise TypeError(f'class_index must be an int or integer array, got dtype {index.dtype}.')
  wrong_length = index.ndim == 1 and batch_size is not None and index.shape[0] != batch_size
  if index.ndim > 1 or wrong_length:
    raise ValueError(
        f'class_index must be an int or a [batch] array with batch={batch_size}, '
        f'got shape {index.shape}.'
    )
  if classes is not None:
    _checks.check_index_range('class_index', index, classes, 'classes')


@functools.partial(jax.jit, static_argnames=('apply', 'feature', 'perturbation'))
def _feature_gradients(apply, variables, batch, class_index, eps, *, feature, perturbation):
  def score(eps):
    perturbed = {**variables, PERTURBATIONS: _perturbations(variables, perturbation, eps)}
    outputs, _ = apply(perturbed, batch, train=False)
    logits = jnp.asarray(outputs.logits, jnp.float32)
    if class_index is None:
      index = jnp.argmax(logits, axis=-1)
    else:
      index = jnp.broadcast_to(jnp.asarray(class_index, jnp.int32), logits.shape[:1])
    # Examples are independent, so d(sum of scores)/dA_b = d(score_b)/dA_b.
    picked = jnp.take_along_axis(logits, index[:, None], axis=-1)[:, 0]
    return jnp.sum(picked), (outputs.feature(feature), index)

  # At trace time only (once per compilation): a perturbation the model never
  # reads would give zero gradients, and zero maps, without a word.
  if not _reads_first_input(jax.make_jaxpr(score)(eps)):
    raise ValueError(
        f'the model reads no perturbation {perturbation!r}, so the gradient with respect to '
        f'the map would be zero. Add it where the map is made (self.perturb({perturbation!r}, '
        f'x) or kdjax.zoo.expose_feature(self, {perturbation!r}, x)), or pass '
        'perturbation=<its path> (e.g. with the submodule prefix).'
    )
  gradients, (features, index) = jax.grad(score, has_aux=True)(eps)
  return features, gradients, index


def _reads_first_input(closed_jaxpr) -> bool:
  first = closed_jaxpr.jaxpr.invars[0]
  return any(v is first for eqn in closed_jaxpr.jaxpr.eqns for v in eqn.invars)


def feature_gradients(
    apply: Apply,
    variables: Mapping[str, Any],
    batch: Batch,
    *,
    feature: str,
    class_index: int | jax.Array | None = None,
    perturbation: str | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A feature map and the gradient of a class score with respect to it.

  Runs `apply` in eval mode with a zero perturbation added where the model
  calls ``self.perturb(perturbation, x)`` (see the module docstring), and
  differentiates the class score (the logit, before any softmax) with
  respect to it. Compiled once per `apply`, feature and shapes.

  Args:
    apply: a kdjax ``apply`` of a linen model (:func:`kdjax.adapters.from_linen`)
      that perturbs and exposes the feature map.
    variables: the model's variables (``params`` and any state). A
      ``'perturbations'`` collection from the model's ``init`` may be left in:
      it lists the model's perturbations, and all but the one differentiated
      are set to zero.
    batch: the batch; examples are explained independently.
    feature: name of the feature map in the model's outputs, ``[batch, H, W, C]``.
    class_index: the class explained: ``None`` for each example's predicted
      class, an int for one class, or ``[batch]`` integers.
    perturbation: path of the perturbation, if it differs from `feature`.

  Returns:
    ``(features, gradients, class_index)``: the map ``[batch, H, W, C]``,
    the gradient of each example's class score with respect to its map
    ``[batch, H, W, C]`` (float32), and the classes explained ``[batch]``.
  """
  path = perturbation or feature
  shapes = jax.eval_shape(lambda v, b: apply(v, b, train=False)[0], variables, batch)
  feature_shape = shapes.feature(feature)
  if len(feature_shape.shape) != 4:
    raise ValueError(
        f'feature {feature!r} must be an NHWC map [batch, H, W, C], got shape '
        f'{tuple(feature_shape.shape)}.'
    )
  _check_class_index(class_index, feature_shape.shape[0], shapes.logits.shape[-1])
  eps = jnp.zeros(feature_shape.shape, jnp.float32)
  try:
    features, gradients, index = _feature_gradients(
        apply, dict(variables), batch, class_index, eps, feature=feature, perturbation=path
    )
  except ValueError as error:
    if 'missing perturbation variable' not in str(error):
      raise
    raise ValueError(
        f'{error}. The model perturbs more than the map {path!r}: pass the '
        "variables with the 'perturbations' collection from the model's init."
    ) from None
  return features, gradients, index


def cam_from_gradients(
    features: jax.Array, gradients: jax.Array, *, plusplus: bool = False
) -> jax.Array:
  r"""Grad-CAM (or Grad-CAM++) maps from a feature map and its gradient.

  With :math:`A^k` the ``k``-th channel of the map and :math:`g^k = \partial
  S / \partial A^k` the gradient of the class score:

  * Grad-CAM: :math:`w_k = \frac{1}{HW} \sum_{ij} g^k_{ij}`;
  * Grad-CAM++: :math:`w_k = \sum_{ij} \alpha^k_{ij}\, \mathrm{ReLU}(g^k_{ij})`
    with :math:`\alpha^k_{ij} = \frac{(g^k_{ij})^2}{2 (g^k_{ij})^2 +
    \sum_{ab} A^k_{ab} (g^k_{ij})^3}` (0 where the denominator is 0), the
    closed form of Chattopadhyay et al. (Eq. 19) for the score
    :math:`\exp(S)`. The positive factor :math:`\exp(S)` of the gradient is
    left out, as in the authors' code: it scales each example's map, not its
    shape;

  and the map is :math:`\mathrm{ReLU}(\sum_k w_k A^k)`.

  Args:
    features: ``[batch, H, W, C]`` feature maps.
    gradients: ``[batch, H, W, C]`` gradients of each example's class score.
    plusplus: Grad-CAM++ instead of Grad-CAM.

  Returns:
    ``[batch, H, W]`` non-negative float32 maps (not normalised; see
    :func:`normalize_maps`).

  References:
    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017, https://arxiv.org/abs/1610.02391.
    Chattopadhyay, Sarkar, Howlader and Balasubramanian, "Grad-CAM++:
    Improved Visual Explanations for Deep Convolutional Networks", WACV 2018,
    https://arxiv.org/abs/1710.11063.
  """
  _checks.check_same_shape('features', features, 'gradients', gradients)
  if jnp.ndim(features) != 4:
    raise ValueError(
        f'features must be NHWC maps [batch, H, W, C], got shape {jnp.shape(features)}.'
    )
  return _cam(jnp.asarray(features, jnp.float32), jnp.asarray(gradients, jnp.float32), plusplus)


@functools.partial(jax.jit, static_argnames='plusplus')
def _cam(features, gradients, plusplus):
  if plusplus:
    g2 = jnp.square(gradients)
    total = jnp.sum(features, axis=(1, 2), keepdims=True)
    denominator = 2.0 * g2 + total * g2 * gradients
    nonzero = denominator != 0
    alpha = jnp.where(nonzero, g2 / jnp.where(nonzero, denominator, 1.0), 0.0)
    weights = jnp.sum(alpha * jax.nn.relu(gradients), axis=(1, 2))
  else:
    weights = jnp.mean(gradients, axis=(1, 2))
  return jax.nn.relu(jnp.einsum('bhwc,bc->bhw', features, weights))


def normalize_maps(maps: jax.Array) -> jax.Array:
  """Rescales each example's map to ``[0, 1]``: ``(m - min) / (max - min)``.

  Args:
    maps: ``[batch, ...]`` maps.

  Returns:
    Maps of the same shape; a constant map becomes all zeros.
  """
  return _normalize(jnp.asarray(maps, jnp.float32))


@jax.jit
def _normalize(maps):
  axes = tuple(range(1, maps.ndim))
  low = jnp.min(maps, axis=axes, keepdims=True)
  span = jnp.max(maps, axis=axes, keepdims=True) - low
  return jnp.where(span > 0, (maps - low) / jnp.where(span > 0, span, 1.0), 0.0)


def grad_cam(
    apply: Apply,
    variables: Mapping[str, Any],
    batch: Batch,
    *,
    feature: str,
    class_index: int | jax.Array | None = None,
    plusplus: bool = False,
    normalize: bool = False,
    perturbation: str | None = None,
) -> jax.Array:
  """Grad-CAM (or Grad-CAM++) maps of a model's feature map, per example.

  :func:`feature_gradients` followed by :func:`cam_from_gradients` (and
  :func:`normalize_maps`). The model must perturb and expose the map (see
  the module docstring).

  Args:
    apply: a kdjax ``apply`` of a linen model.
    variables: its variables.
    batch: the batch.
    feature: name of the ``[batch, H, W, C]`` feature map.
    class_index: ``None`` (each example's predicted class), an int, or
      ``[batch]`` integers.
    plusplus: Grad-CAM++ weights instead of Grad-CAM's.
    normalize: rescale each map to ``[0, 1]``.
    perturbation: path of the perturbation, if it differs from `feature`.

  Returns:
    ``[batch, H, W]`` float32 maps; :func:`upsample` brings them to the
    input's size.

  References:
    Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391;
    Chattopadhyay et al., WACV 2018, https://arxiv.org/abs/1710.11063.
  """
  features, gradients, _ = feature_gradients(
      apply, variables, batch, feature=feature, class_index=class_index,
      perturbation=perturbation,
  )
  maps = cam_from_gradients(features, gradients, plusplus=plusplus)
  return normalize_maps(maps) if normalize else maps


def grad_cam_plus_plus(
    apply: Apply, variables: Mapping[str, Any], batch: Batch, **kwargs: Any
) -> jax.Array:
  """:func:`grad_cam` with ``plusplus=True`` (Chattopadhyay et al., 2018)."""
  return grad_cam(apply, variables, batch, plusplus=True, **kwargs)


def upsample(maps: jax.Array, size: Sequence[int], *, method: str = 'bilinear') -> jax.Array:
  """Resizes ``[batch, h, w]`` maps to ``[batch, *size]`` (e.g. the input's H, W).

  Args:
    maps: ``[batch, h, w]`` maps.
    size: ``(H, W)``.
    method: a :func:`jax.image.resize` method (``'bilinear'``, ``'nearest'``,
      ``'cubic'``, ...).

  Returns:
    ``[batch, H, W]`` float32 maps.
  """
  if jnp.ndim(maps) != 3 or len(size) != 2:
    raise ValueError(
        f'upsample takes maps [batch, h, w] and size (H, W), got maps with shape '
        f'{jnp.shape(maps)} and size {tuple(size)}.'
    )
  maps = jnp.asarray(maps, jnp.float32)
  return _resize(maps, (maps.shape[0], *(int(n) for n in size)), method)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _resize(maps, shape, method):
  return jax.image.resize(maps, shape, method=method)


def saliency_agreement(
    map_a: jax.Array,
    map_b: jax.Array,
    *,
    metric: str = 'pearson',
    top_fraction: float = 0.2,
) -> jax.Array:
  """Per-example agreement of two saliency maps (e.g. teacher and student).

  * ``'pearson'``: the Pearson correlation of the two maps' pixels, in
    ``[-1, 1]``; 0 when either map is constant.
  * ``'iou_topk'``: the intersection over union of the two maps' top
    ``k = ceil(top_fraction * pixels)`` pixels (ties broken by position),
    in ``[0, 1]``.

  Both are invariant to a positive rescaling of either map, so raw and
  normalised maps give the same agreement.

  Args:
    map_a: ``[batch, ...]`` maps (e.g. ``[batch, H, W]``).
    map_b: maps of the same shape (:func:`upsample` one of them if the two
      models' feature maps differ in size).
    metric: ``'pearson'`` or ``'iou_topk'``.
    top_fraction: share of the pixels in the top set for ``'iou_topk'``, in
      ``(0, 1]``.

  Returns:
    ``[batch]`` float32 agreements.
  """
  if metric not in AGREEMENT_METRICS:
    raise ValueError(f'metric must be one of {AGREEMENT_METRICS}, got {metric!r}.')
  _checks.check_same_shape('map_a', map_a, 'map_b', map_b)
  if jnp.ndim(map_a) < 2:
    raise ValueError(
        f'maps must be [batch, ...] with at least 2 axes, got shape {jnp.shape(map_a)}.'
    )
  if not 0 < top_fraction <= 1:
    raise ValueError(f'top_fraction must be in (0, 1], got {top_fraction}.')
  pixels = math.prod(jnp.shape(map_a)[1:])
  a = jnp.reshape(jnp.asarray(map_a, jnp.float32), (-1, pixels))
  b = jnp.reshape(jnp.asarray(map_b, jnp.float32), (-1, pixels))
  if metric == 'pearson':
    return _pearson(a, b)
  return _iou_topk(a, b, max(1, math.ceil(top_fraction * pixels)))


@jax.jit
def _pearson(a, b):
  a = a - jnp.mean(a, axis=1, keepdims=True)
  b = b - jnp.mean(b, axis=1, keepdims=True)
  norms = jnp.sqrt(jnp.sum(a * a, axis=1) * jnp.sum(b * b, axis=1))
  return jnp.where(norms > 0, jnp.sum(a * b, axis=1) / jnp.where(norms > 0, norms, 1.0), 0.0)


@functools.partial(jax.jit, static_argnums=2)
def _iou_topk(a, b, k):
  def top_set(x):
    _, index = jax.lax.top_k(x, k)
    return jnp.sum(jax.nn.one_hot(index, x.shape[1], dtype=jnp.float32), axis=1)

  intersection = jnp.sum(top_set(a) * top_set(b), axis=1)
  return intersection / (2.0 * k - intersection)


def plot_maps(
    images: Any,
    maps: Mapping[str, Any],
    path: str | os.PathLike | None = None,
    *,
    max_examples: int = 8,
    alpha: float = 0.5,
    cmap: str = 'jet',
    dpi: int = 100,
):
  """Draws each example's image beside its saliency maps, one row per example.

  For the experiments' figure: e.g. ``{'teacher': ..., 'student': ...,
  'distilled student': ...}`` gives four columns (image, then each map
  overlaid on it). Maps are upsampled to the image size and normalised per
  example. Needs matplotlib (imported here, not with kdjax); no global
  pyplot state is touched.

  Args:
    images: ``[batch, H, W, C]`` (C = 1 or 3) or ``[batch, H, W]`` images, any
      range (each is rescaled to ``[0, 1]`` for display).
    maps: column title -> ``[batch, h, w]`` maps, in column order.
    path: if given, the figure is saved there (PNG for a ``.png`` name).
    max_examples: at most this many rows.
    alpha: opacity of the maps over the images.
    cmap: matplotlib colormap of the maps.
    dpi: resolution when saving.

  Returns:
    The :class:`matplotlib.figure.Figure`.
  """
  images = np.asarray(images, np.float32)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
    raise ValueError(
        f'images must be [batch, H, W], [batch, H, W, 1] or [batch, H, W, 3], got '
        f'shape {images.shape}.'
    )
  rows = min(images.shape[0], max_examples)
  columns = {}
  for title, m in maps.items():
    if np.ndim(m) != 3 or np.shape(m)[0] < rows:
      raise ValueError(
          f'maps[{title!r}] must be [batch, h, w] with batch >= {rows}, got shape '
          f'{np.shape(m)}.'
      )
    columns[title] = np.asarray(normalize_maps(upsample(m[:rows], images.shape[1:3])))
  shown = np.asarray(normalize_maps(images[:rows]))
  figure = Figure(figsize=(2.0 * (1 + len(columns)), 2.0 * rows))
  axes = figure.subplots(rows, 1 + len(columns), squeeze=False)
  gray = 'gray' if shown.ndim == 3 else None
  for row in range(rows):
    axes[row, 0].imshow(shown[row], cmap=gray)
    for col, (title, m) in enumerate(columns.items(), start=1):
      axes[row, col].imshow(shown[row], cmap=gray)
      axes[row, col].imshow(m[row], cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
      if row == 0:
        axes[row, col].set_title(title)
    if row == 0:
      axes[row, 0].set_title('input')
  for ax in axes.flat:
    ax.set_axis_off()
  figure.tight_layout()
  if path is not None:
    figure.savefig(os.fspath(path), dpi=dpi)
  return figure
