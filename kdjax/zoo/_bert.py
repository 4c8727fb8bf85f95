"""A BERT encoder with logical axis names, its features, and a torch-free checkpoint loader."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import json
import pathlib
from typing import Any

from flax import linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import numpy as safetensors_numpy
import tokenizers

from kdjax import _checks
from kdjax import adapters
from kdjax._outputs import Outputs
from kdjax.losses._feature import l2_normalize
from kdjax.zoo._features import expose_feature
from kdjax.zoo._seq2seq import _check_tokens
from kdjax.zoo._transformer import TRANSFORMER_LOGICAL_AXES
from kdjax.zoo._transformer import _param

# The decoder's logical axis names plus the rows of the token-type table.
BERT_LOGICAL_AXES = TRANSFORMER_LOGICAL_AXES + ('token_type',)

# What the encoder sows per layer, as ``<kind>_<i>``: ``hidden_0`` is the
# embedding output and ``hidden_<i>`` block ``i``'s output (``i`` from 1);
# ``projected_<i>`` is ``hidden_<i>`` through the student's projection; the
# attention kinds are block ``i``'s, ``i`` from 0.
BERT_FEATURE_KINDS = ('hidden', 'projected', 'scores', 'attention', 'query', 'key', 'value')


def gelu(x: jax.Array) -> jax.Array:
  """The exact GELU as BERT writes it, ``0.5 x (1 + erf(x / sqrt(2)))``.

  Hendrycks and Gimpel, "Gaussian Error Linear Units (GELUs)", 2016; the
  form of Google's BERT and of Hugging Face's ``BertModel`` (``gelu`` /
  ``GELUActivation``). ``jax.nn.gelu(approximate=False)`` computes the same
  function as ``0.5 x erfc(-x / sqrt(2))``, which XLA's CPU backend runs
  about 3.4x slower on ``[32, 128, 1536]`` (two-branch erfc); the two agree
  to about 1e-6, the float32 error of either against float64.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(np.sqrt(0.5), x.dtype)))


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The shape and options of a :class:`BertEncoder`.

  Attributes:
    vocab_size: rows of the word-embedding table.
    num_layers: number of Transformer blocks.
    hidden: the model width.
    num_heads: attention heads (``hidden`` must divide evenly).
    mlp_dim: the feed-forward inner width (BERT's ``intermediate_size``).
    max_len: rows of the learned position table (``max_position_embeddings``).
    type_vocab_size: rows of the token-type table.
    layer_norm_eps: LayerNorm epsilon (BERT: 1e-12).
    pooler: whether the model has BERT's pooler (a tanh dense layer on the
      first token).
    mlm_head: whether the model has BERT's masked-LM head (dense, GELU,
      LayerNorm, then the word embeddings transposed plus a bias); its
      logits are ``Outputs.logits``.
    projection_width: if set, a learnable dense layer ``hidden ->
      projection_width`` (TinyBERT's ``W_h``, shared by all layers as in the
      authors' code) maps every hidden state to ``projected_<i>``: give a
      narrow student the teacher's width here.
    dropout_rate: dropout on the embeddings, the attention probabilities and
      each residual branch in training.
    initializer_range: standard deviation of the normal weight init.
    dtype: the compute dtype; attention scores, softmax and logits are float32.
    param_dtype: the parameters' dtype.
  """

  vocab_size: int
  num_layers: int
  hidden: int
  num_heads: int
  mlp_dim: int
  max_len: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pooler: bool = True
  mlm_head: bool = False
  projection_width: int | None = None
  dropout_rate: float = 0.0
  initializer_range: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    for name in ('vocab_size', 'num_layers', 'hidden', 'num_heads', 'mlp_dim', 'max_len',
                 'type_vocab_size'):
      _checks.check_positive_int(f'BertConfig.{name}', getattr(self, name))
    if self.projection_width is not None:
      _checks.check_positive_int('BertConfig.projection_width', self.projection_width)
    if self.hidden % self.num_heads:
      raise ValueError(
          f'BertConfig.hidden={self.hidden} is not divisible by num_heads={self.num_heads}.')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'BertConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}.')

  @property
  def head_dim(self) -> int:
    """The per-head width ``hidden // num_heads``."""
    return self.hidden // self.num_heads

  @classmethod
  def from_hf(cls, config: Mapping[str, Any], **overrides: Any) -> 'BertConfig':
    """The config of a Hugging Face ``config.json`` of a BERT model.

    The dropout probabilities are not read: ``dropout_rate`` stays 0 unless
    given (BERT fine-tunes with ``dropout_rate=0.1``).

    Args:
      config: the parsed ``config.json``.
      **overrides: fields to set (``pooler``, ``mlm_head``, ``dtype``, ...).

    Returns:
      A :class:`BertConfig`.

    Raises:
      ValueError: for a config that is not BERT's architecture (another
        activation or position embedding type), naming the field.
    """
    for key, allowed in (('hidden_act', ('gelu',)),
                         ('position_embedding_type', ('absolute', None))):
      if config.get(key) not in allowed:
        raise ValueError(
            f'config.json has {key}={config.get(key)!r}; BertEncoder supports {allowed}.')
    missing = [k for k in ('vocab_size', 'num_hidden_layers', 'hidden_size',
                           'num_attention_heads', 'intermediate_size') if k not in config]
    if missing:
      raise ValueError(f'config.json lacks {missing}; is it a BERT config?')
    fields = dict(
        vocab_size=config['vocab_size'], num_layers=config['num_hidden_layers'],
        hidden=config['hidden_size'], num_heads=config['num_attention_heads'],
        mlp_dim=config['intermediate_size'],
        max_len=config.get('max_position_embeddings', 512),
        type_vocab_size=config.get('type_vocab_size', 2),
        layer_norm_eps=config.get('layer_norm_eps', 1e-12),
    )
    fields.update(overrides)
    return cls(**fields)


def _layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
  )


class _Linear(nn.Module):
  """``x @ kernel + bias`` contracting the last `contract` axes of ``x``."""

  config: BertConfig
  features: tuple[int, ...]
  axes: tuple[str | None, ...]  # the kernel's: contracted axes, then features
  contract: int = 1
  heads_first: bool = False  # [batch, time, d] -> [batch, heads, time, head_dim]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    shape = (*x.shape[x.ndim - self.contract:], *self.features)
    kernel = _param(self, 'kernel', nn.initializers.normal(cfg.initializer_range), shape,
                    self.axes)
    bias = _param(self, 'bias', nn.initializers.zeros, self.features,
                  self.axes[self.contract:])
    kernel, bias = kernel.astype(cfg.dtype), bias.astype(cfg.dtype)
    if self.heads_first:
      # Written straight in the attention's layout: XLA's CPU batched
      # matmuls then need no transposes (70 -> 45 ms per MiniLM-sized block
      # of attention, batch 32 x 128, measured beside [batch, time, heads]).
      return jnp.einsum('btd,dhk->bhtk', x, kernel) + bias[None, :, None, :]
    y = jnp.tensordot(x, kernel, axes=self.contract)
    return y + bias.reshape((1,) * (y.ndim - bias.ndim) + bias.shape)


class _BertLayer(nn.Module):
  """A post-norm BERT block; returns the new hidden state and its attention internals."""

  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array, train: bool):
    cfg = self.config
    h, k = cfg.num_heads, cfg.head_dim
    dropout = nn.Dropout(cfg.dropout_rate)
    qkv_axes = ('embed', 'heads', 'kv')
    # Queries, keys and values as [batch, heads, time, head_dim].
    q, key, v = (
        nn.with_logical_constraint(
            _Linear(cfg, (h, k), qkv_axes, heads_first=True, name=name)(x),
            ('batch', 'heads', 'length', 'kv'))
        for name in ('query', 'key', 'value'))
    scores = jnp.einsum('bhqk,bhsk->bhqs', q, key, preferred_element_type=jnp.float32)
    scores = scores / np.float32(np.sqrt(k))
    probs = jax.nn.softmax(jnp.where(key_mask, scores, jnp.finfo(jnp.float32).min), axis=-1)
    mixed = jnp.einsum('bhqs,bhsk->bqhk', dropout(probs, deterministic=not train).astype(
        cfg.dtype), v)
    attended = _Linear(cfg, (cfg.hidden,), ('heads', 'kv', 'embed'), contract=2,
                       name='attention_out')(mixed)
    x = _layer_norm(cfg, 'attention_norm')(x + dropout(attended, deterministic=not train))
    inner = _Linear(cfg, (cfg.mlp_dim,), ('embed', 'mlp'), name='intermediate')(x)
    inner = nn.with_logical_constraint(gelu(inner),
                                       ('batch', 'length', 'mlp'))
    out = _Linear(cfg, (cfg.hidden,), ('mlp', 'embed'), name='output')(inner)
    x = _layer_norm(cfg, 'output_norm')(x + dropout(out, deterministic=not train))
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    # Sown as [batch, time, heads, head_dim]; transposed only when exposed.
    return x, {'scores': scores, 'attention': probs, 'query': jnp.swapaxes(q, 1, 2),
               'key': jnp.swapaxes(key, 1, 2), 'value': jnp.swapaxes(v, 1, 2)}


def mean_pool(hidden: jax.Array, token_mask: jax.Array | None = None) -> jax.Array:
  """The mean of ``hidden [batch, time, width]`` over the real tokens, ``[batch, width]``.

  sentence-transformers' mean pooling: ``sum(mask * h) / max(sum(mask), 1e-9)``.

  Args:
    hidden: token vectors.
    token_mask: ``[batch, time]``, 1 on real tokens; ``None``: all real.

  Returns:
    float32 ``[batch, width]``.
  """
  hidden = jnp.asarray(hidden, jnp.float32)
  if token_mask is None:
    return jnp.mean(hidden, axis=1)
  mask = _checks.align_mask('token_mask', token_mask, hidden.shape, what='hidden')
  return jnp.sum(hidden * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def sentence_embedding(
    hidden: jax.Array, token_mask: jax.Array | None = None, *, normalize: bool = True
) -> jax.Array:
  """sentence-transformers' embedding: :func:`mean_pool`, then L2 normalisation.

  Args:
    hidden: ``[batch, time, width]`` last hidden states.
    token_mask: ``[batch, time]``, 1 on real tokens.
    normalize: divide by the L2 norm (the ``Normalize`` module of models
      such as all-MiniLM-L6-v2).

  Returns:
    float32 ``[batch, width]``.

  References:
    Reimers & Gurevych, "Sentence-BERT", EMNLP 2019, arXiv:1908.10084.
  """
  pooled = mean_pool(hidden, token_mask)
  return l2_normalize(pooled) if normalize else pooled


class BertEncoder(nn.Module):
  """BERT (Devlin et al.): post-norm Transformer encoder with learned positions.

  Embeddings (word + position + token type, LayerNorm, dropout), then
  ``num_layers`` blocks of ``LayerNorm(x + attention(x))`` and
  ``LayerNorm(x + W2 gelu(W1 x))`` with the exact (erf) GELU, as Hugging
  Face's ``BertModel``; optionally the pooler and the tied masked-LM head.

  ``__call__(tokens, token_mask=None, token_types=None, train=False)``
  returns an :class:`~kdjax.Outputs`: ``logits`` are the masked-LM logits
  float32 ``[batch, time, vocab]`` (``None`` without ``mlm_head``);
  ``features`` hold ``'sequence'`` (last hidden state ``[batch, time,
  hidden]``), ``'mean_pooled'`` (:func:`mean_pool`, ``[batch, hidden]``)
  and ``'pooled'`` (the pooler's ``[batch, hidden]``, with ``pooler``).

  Sown in ``'intermediates'`` (expose them with :func:`bert_apply`):
  ``hidden_0`` (the embedding output) to ``hidden_<num_layers>``
  ``[batch, time, hidden]`` (exposed with :func:`~kdjax.zoo.expose_feature`,
  so :mod:`kdjax.explain` can differentiate them); ``projected_<i>``
  (with ``projection_width``); and for block ``i`` (from 0)
  ``scores_<i>`` (float32 ``[batch, heads, time, time]``, ``q·k/sqrt(d)``
  before the padding mask and the softmax), ``attention_<i>`` (the
  probabilities, same shape, zero on padding keys), ``query_<i>``,
  ``key_<i>``, ``value_<i>`` (``[batch, time, heads, head_dim]``).

  Parameters carry logical axis names (:data:`BERT_LOGICAL_AXES`, as
  :class:`~kdjax.zoo.DecoderLM`'s plus ``'token_type'``); the pooler's,
  the MLM transform's and the projection's output axis is unnamed (``None``,
  replicated).

  Attributes:
    config: the :class:`BertConfig`.

  References:
    Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers
    for Language Understanding", NAACL 2019, arXiv:1810.04805.
  """

  config: BertConfig

  def _check_inputs(self, tokens, token_mask, token_types) -> None:
    cfg = self.config
    _check_tokens('tokens', tokens, cfg.vocab_size, 'vocab_size', cfg.max_len, 'max_len')
    if token_mask is not None:
      _checks.check_same_shape('tokens', tokens, 'token_mask', token_mask)
    if token_types is not None:
      _checks.check_same_shape('tokens', tokens, 'token_types', token_types)
      _checks.check_index_range('token_types', token_types, cfg.type_vocab_size,
                                'type_vocab_size')

  @nn.compact
  def __call__(self, tokens: jax.Array, token_mask: jax.Array | None = None,
               token_types: jax.Array | None = None, train: bool = False) -> Outputs:
    """Encodes int ``tokens [batch, time]`` (``token_mask``: 1 on real tokens)."""
    cfg = self.config
    self._check_inputs(tokens, token_mask, token_types)
    init = nn.initializers.normal(cfg.initializer_range)
    word = _param(self, 'word_embedding', init, (cfg.vocab_size, cfg.hidden),
                  ('vocab', 'embed'))
    position = _param(self, 'position_embedding', init, (cfg.max_len, cfg.hidden),
                      ('position', 'embed'))
    types = _param(self, 'token_type_embedding', init, (cfg.type_vocab_size, cfg.hidden),
                   ('token_type', 'embed'))
    if token_types is None:
      token_types = jnp.zeros_like(tokens)
    x = (jnp.take(word, tokens, axis=0) + position[None, :tokens.shape[1]]
         + jnp.take(types, token_types, axis=0)).astype(cfg.dtype)
    x = _layer_norm(cfg, 'embedding_norm')(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not train)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    mask = (jnp.ones(tokens.shape, bool) if token_mask is None
            else jnp.asarray(token_mask).astype(bool))
    projection = (None if cfg.projection_width is None else _Linear(
        cfg, (cfg.projection_width,), ('embed', None), name='projection'))
    for i in range(cfg.num_layers + 1):
      if i:
        x, internals = _BertLayer(cfg, name=f'layer_{i - 1}')(x, mask[:, None, None, :], train)
        for kind, value in internals.items():
          self.sow('intermediates', f'{kind}_{i - 1}', value)
      x = expose_feature(self, f'hidden_{i}', x)
      if projection is not None:
        self.sow('intermediates', f'projected_{i}', projection(x))
    features = {'sequence': x, 'mean_pooled': mean_pool(x, token_mask)}
    if cfg.pooler:
      first = _Linear(cfg, (cfg.hidden,), ('embed', None), name='pooler')(x[:, 0])
      features['pooled'] = jnp.tanh(first)
    logits = None
    if cfg.mlm_head:
      y = _Linear(cfg, (cfg.hidden,), ('embed', None), name='mlm_transform')(x)
      y = _layer_norm(cfg, 'mlm_norm')(gelu(y))
      bias = _param(self, 'mlm_bias', nn.initializers.zeros, (cfg.vocab_size,), ('vocab',))
      logits = jnp.einsum('btd,vd->btv', y, word.astype(cfg.dtype),
                          preferred_element_type=jnp.float32) + bias.astype(jnp.float32)[None, None]
      logits = nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
    return Outputs(logits=logits, features=features)


def bert_feature_names(config: BertConfig, kinds: Sequence[str]) -> tuple[str, ...]:
  """Every per-layer feature name of `kinds` (see :data:`BERT_FEATURE_KINDS`).

  Args:
    config: the encoder's config.
    kinds: e.g. ``('hidden', 'scores')``.

  Returns:
    E.g. ``('hidden_0', ..., 'hidden_L', 'scores_0', ..., 'scores_<L-1>')``.
  """
  names = []
  for kind in kinds:
    if kind not in BERT_FEATURE_KINDS:
      raise ValueError(f'unknown feature kind {kind!r}; the kinds are {BERT_FEATURE_KINDS}.')
    if kind == 'projected' and config.projection_width is None:
      raise ValueError("feature kind 'projected' needs BertConfig.projection_width.")
    count = config.num_layers + 1 if kind in ('hidden', 'projected') else config.num_layers
    names.extend(f'{kind}_{i}' for i in range(count))
  return tuple(names)


def bert_apply(
    model: BertEncoder,
    *,
    features: Sequence[str] = (),
    tokens_key: str = 'tokens',
    mask_key: str | None = 'token_mask',
    types_key: str | None = None,
) -> adapters.Apply:
  """A kdjax ``apply`` for a :class:`BertEncoder` reading its inputs from the batch.

  Args:
    model: the encoder.
    features: sown intermediates to expose besides ``'sequence'``,
      ``'mean_pooled'`` (and ``'pooled'``): feature kinds (``'hidden'``,
      ``'scores'``, ... -- every layer's) or single names (``'hidden_3'``).
    tokens_key: the batch entry of int ``[batch, time]`` token ids.
    mask_key: the batch entry of the ``[batch, time]`` token mask (1 =
      real); ``None``: every token is real.
    types_key: the batch entry of token types; ``None``: all zero.

  Returns:
    ``apply(variables, batch, *, train, rngs=None) -> (Outputs, new_state)``.
  """
  names = []
  for name in features:
    names.extend(bert_feature_names(model.config, (name,)) if name in BERT_FEATURE_KINDS
                 else (name,))

  def inputs(batch):
    return (_checks.batch_entry(batch, tokens_key, 'tokens_key'),
            None if mask_key is None else _checks.batch_entry(batch, mask_key, 'mask_key'),
            None if types_key is None else _checks.batch_entry(batch, types_key, 'types_key'))

  def call(module, args, train=False):
    return module(*args, train=train)

  return adapters.from_linen(model, inputs=inputs, features=names, method=call)


def bert_student_from_teacher(
    teacher_params: Mapping[str, Any], teacher_layers: Sequence[int] | None = None
) -> dict[str, Any]:
  """DistilBERT's initialisation: a student's params from a teacher's layers.

  The student gets the teacher's embeddings, pooler, masked-LM head and
  projection (whatever the teacher has) and, as its block ``i``, the
  teacher's block ``teacher_layers[i]``. By default one layer out of two,
  ``(0, 2, 4, ...)``, as Sanh et al. (the public script keeps layers 0, 2,
  4, 7, 9, 11 of 12: pass them explicitly).

  Args:
    teacher_params: the teacher's ``params`` (boxed or not), a
      :class:`BertEncoder`'s, or its variables ``{'params': ...}``.
    teacher_layers: the teacher blocks to keep, in order.

  Returns:
    The student's params, or ``{'params': ...}`` when given variables (the
    arrays themselves, not copies): build the student with the teacher's
    config and ``num_layers=len(teacher_layers)``.

  References:
    Sanh, Debut, Chaumond & Wolf, "DistilBERT, a distilled version of BERT",
    2019, arXiv:1910.01108.
  """
  if 'params' in teacher_params:
    return {'params': bert_student_from_teacher(teacher_params['params'], teacher_layers)}
  params = nn.meta.unbox(dict(teacher_params))
  blocks = sorted((k for k in params if k.startswith('layer_')),
                  key=lambda k: int(k.split('_')[1]))
  if teacher_layers is None:
    teacher_layers = tuple(range(0, len(blocks), 2))
  bad = [i for i in teacher_layers if not 0 <= i < len(blocks)]
  if bad or not teacher_layers:
    raise ValueError(
        f'teacher_layers={tuple(teacher_layers)} must be a non-empty list of teacher blocks '
        f'in [0, {len(blocks)}) (the teacher has {len(blocks)} layers); {bad} are not.')
  student = {k: v for k, v in params.items() if not k.startswith('layer_')}
  student.update({f'layer_{i}': params[f'layer_{t}'] for i, t in enumerate(teacher_layers)})
  return student


# ---------------------------------------------------------------------------
# Loading a Hugging Face / sentence-transformers checkpoint.

# Tensors a BERT checkpoint may hold that the encoder does not use: the
# position ids buffer, the next-sentence head, and the MLM decoder, which is
# tied to the word embeddings (its bias is ``cls.predictions.bias``).
_IGNORED = frozenset({
    'embeddings.position_ids', 'cls.seq_relationship.weight', 'cls.seq_relationship.bias',
    'cls.predictions.decoder.weight', 'cls.predictions.decoder.bias',
})


def _norm_keys(hf: str, ours: tuple[str, ...]) -> dict[str, tuple]:
  return {f'{hf}.weight': (*ours, 'scale'), f'{hf}.bias': (*ours, 'bias')}


def _dense_keys(hf: str, ours: tuple[str, ...], kernel_shape: tuple[int, ...],
                bias_shape: tuple[int, ...]) -> dict[str, tuple]:
  """A torch Linear ``[out, in]`` as our ``[in..., out...]`` kernel and bias."""
  return {f'{hf}.weight': (*ours, 'kernel', kernel_shape),
          f'{hf}.bias': (*ours, 'bias', bias_shape)}


def _tensor_map(cfg: BertConfig) -> tuple[dict[str, tuple], dict[str, dict[str, tuple]]]:
  """HF name -> (our path..., [kernel shape]): the required ones and the optional groups."""
  d, h, k, f = cfg.hidden, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
  required = {
      'embeddings.word_embeddings.weight': ('word_embedding',),
      'embeddings.position_embeddings.weight': ('position_embedding',),
      'embeddings.token_type_embeddings.weight': ('token_type_embedding',),
      **_norm_keys('embeddings.LayerNorm', ('embedding_norm',)),
  }
  for i in range(cfg.num_layers):
    hf, ours = f'encoder.layer.{i}', (f'layer_{i}',)
    for name in ('query', 'key', 'value'):
      required.update(_dense_keys(f'{hf}.attention.self.{name}', (*ours, name), (d, h, k),
                                  (h, k)))
    required.update(_dense_keys(f'{hf}.attention.output.dense', (*ours, 'attention_out'),
                                (h, k, d), (d,)))
    required.update(_norm_keys(f'{hf}.attention.output.LayerNorm', (*ours, 'attention_norm')))
    required.update(_dense_keys(f'{hf}.intermediate.dense', (*ours, 'intermediate'), (d, f),
                                (f,)))
    required.update(_dense_keys(f'{hf}.output.dense', (*ours, 'output'), (f, d), (d,)))
    required.update(_norm_keys(f'{hf}.output.LayerNorm', (*ours, 'output_norm')))
  optional = {
      'pooler': _dense_keys('pooler.dense', ('pooler',), (d, d), (d,)),
      'mlm_head': {
          **_dense_keys('cls.predictions.transform.dense', ('mlm_transform',), (d, d), (d,)),
          **_norm_keys('cls.predictions.transform.LayerNorm', ('mlm_norm',)),
          'cls.predictions.bias': ('mlm_bias',),
      },
  }
  return required, optional


def _hf_name(name: str) -> str:
  """Drops the ``bert.`` prefix and renames TF-era LayerNorm ``gamma``/``beta``."""
  name = name.removeprefix('bert.')
  if name.endswith('LayerNorm.gamma'):
    return name[:-len('gamma')] + 'weight'
  if name.endswith('LayerNorm.beta'):
    return name[:-len('beta')] + 'bias'
  return name


def _place(params: dict, path: tuple, value: np.ndarray) -> None:
  *parents, leaf = path
  for key in parents:
    params = params.setdefault(key, {})
  params[leaf] = value


def _expected_shapes(config: BertConfig) -> dict[str, jax.ShapeDtypeStruct]:
  """``'path/to/leaf' -> shape`` of a :class:`BertEncoder`'s params (no compile)."""
  return traverse_util.flatten_dict(jax.eval_shape(
      lambda: nn.meta.unbox(BertEncoder(config).init(
          jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))['params'])), sep='/')


def bert_params_from_hf(
    tensors: Mapping[str, np.ndarray], config: BertConfig
) -> tuple[dict[str, Any], BertConfig]:
  """A :class:`BertEncoder`'s params from a Hugging Face BERT state dict.

  Any BERT-layout checkpoint: ``BertModel`` (names ``embeddings.*``,
  ``encoder.layer.<i>.*``, ``pooler.*``, as sentence-transformers saves
  them), or ``BertForMaskedLM`` / ``BertForPreTraining`` (the same under
  ``bert.``, plus ``cls.predictions.*``). The pooler and the MLM head are
  switched on in the returned config when their tensors are present.
  Ignored: ``embeddings.position_ids``, the next-sentence head and the MLM
  decoder (tied to the word embeddings).

  Args:
    tensors: name -> array (``safetensors.numpy.load_file``).
    config: the model's config (``BertConfig.from_hf``).

  Returns:
    ``(params, config)``, params as float arrays in ``config.param_dtype``.

  Raises:
    ValueError: listing every missing tensor, every unexpected one, and
      every tensor whose shape is not the config's.
  """
  renamed = {_hf_name(k): v for k, v in tensors.items()}
  decoder = renamed.get('cls.predictions.decoder.weight')
  word = renamed.get('embeddings.word_embeddings.weight')
  if decoder is not None and word is not None and not np.array_equal(decoder, word):
    raise ValueError(
        'cls.predictions.decoder.weight differs from embeddings.word_embeddings.weight: '
        'the checkpoint\'s masked-LM decoder is not tied to the word embeddings, which '
        'BertEncoder\'s head assumes (as BERT).')
  required, optional = _tensor_map(config)
  groups = {name: bool(set(keys) & set(renamed)) for name, keys in optional.items()}
  wanted = dict(required)
  for name, present in groups.items():
    if present:
      wanted.update(optional[name])
  missing = sorted(set(wanted) - set(renamed))
  unexpected = sorted(set(renamed) - set(wanted) - _IGNORED)
  params: dict[str, Any] = {}
  for name, target in wanted.items():
    if name not in renamed:
      continue
    value = np.asarray(renamed[name])
    path, shape = (target[:-1], target[-1]) if isinstance(target[-1], tuple) else (target, None)
    if shape is not None:  # a torch Linear: weight [out, in] -> kernel [in..., out...]
      value = value.T if value.ndim == 2 else value
      value = value.reshape(shape) if value.size == int(np.prod(shape)) else value
    _place(params, path, value.astype(config.param_dtype))
  config = dataclasses.replace(config, **groups)
  expected = _expected_shapes(config)
  problems = [f'{path}: checkpoint {value.shape}, config {expected[path].shape}'
              for path, value in traverse_util.flatten_dict(params, sep='/').items()
              if tuple(value.shape) != tuple(expected[path].shape)]
  if missing or unexpected or problems:
    raise ValueError(
        f'the checkpoint does not fit BertConfig(num_layers={config.num_layers}, '
        f'hidden={config.hidden}, ...): {len(missing)} missing tensor(s) {missing}; '
        f'{len(unexpected)} unexpected tensor(s) {unexpected}; {len(problems)} of another '
        f'shape {problems}.')
  return params, config


def bert_params_to_hf(params: Mapping[str, Any], config: BertConfig) -> dict[str, np.ndarray]:
  """A :class:`BertEncoder`'s params as a Hugging Face BERT state dict.

  The inverse of :func:`bert_params_from_hf`: ``BertModel``'s names
  (``embeddings.*``, ``encoder.layer.<i>.*``, ``pooler.*`` with the
  pooler) and torch's ``Linear`` layout (``weight [out, in]``), so that
  ``safetensors.numpy.save_file(bert_params_to_hf(params, config),
  'model.safetensors')`` next to a ``config.json`` is a checkpoint that
  ``transformers`` and :func:`load_bert` read. With ``config.mlm_head`` the
  names are ``BertForMaskedLM``'s: the encoder's under ``bert.`` and the
  head's ``cls.predictions.transform.*`` and ``cls.predictions.bias`` (the
  decoder is tied to the word embeddings and not written, as
  ``save_pretrained`` leaves tied weights out). A student's projection
  (``config.projection_width``, TinyBERT's ``W_h``) is not a BERT tensor and
  is left out.

  Args:
    params: the encoder's ``params`` (boxed or not), or its variables
      ``{'params': ...}``.
    config: its :class:`BertConfig` (``pooler`` and ``mlm_head`` say which
      tensors exist).

  Returns:
    name -> C-contiguous NumPy array in the params' dtype.

  Raises:
    ValueError: listing every missing parameter, every unexpected one and
      every parameter whose shape is not the config's.
  """
  if 'params' in params:
    params = params['params']
  flat = traverse_util.flatten_dict(jax.device_get(nn.meta.unbox(dict(params))), sep='/')
  expected = _expected_shapes(config)
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  problems = [f'{path}: params {np.shape(value)}, config {expected[path].shape}'
              for path, value in flat.items()
              if path in expected and tuple(np.shape(value)) != tuple(expected[path].shape)]
  if missing or unexpected or problems:
    raise ValueError(
        f'params do not fit BertConfig(num_layers={config.num_layers}, hidden={config.hidden}, '
        f'pooler={config.pooler}, mlm_head={config.mlm_head}, projection_width='
        f'{config.projection_width}, ...): {len(missing)} missing {missing}; '
        f'{len(unexpected)} unexpected {unexpected}; {len(problems)} of another shape '
        f'{problems}.')
  required, optional = _tensor_map(config)
  wanted = dict(required)
  for name, present in (('pooler', config.pooler), ('mlm_head', config.mlm_head)):
    if present:
      wanted.update(optional[name])
  prefix = 'bert.' if config.mlm_head else ''
  tensors = {}
  for name, target in wanted.items():
    path, shape = (target[:-1], target[-1]) if isinstance(target[-1], tuple) else (target, None)
    value = np.asarray(flat['/'.join(path)])
    if shape is not None:  # our kernel [in..., out...] -> torch Linear weight [out, in]
      out = int(np.prod(wanted[name.rsplit('.', 1)[0] + '.bias'][-1]))
      value = value.reshape(-1, out).T if path[-1] == 'kernel' else value.reshape(out)
    tensors[name if name.startswith('cls.') else prefix + name] = np.ascontiguousarray(value)
  return tensors


@dataclasses.dataclass(frozen=True)
class BertCheckpoint:
  """A loaded encoder: model, variables, tokenizer and the sentence-embedding recipe.

  Attributes:
    model: the :class:`BertEncoder`.
    variables: ``{'params': ...}``.
    tokenizer: the ``tokenizers.Tokenizer`` of ``tokenizer.json``, with its
      own padding and truncation switched off (:meth:`encode` pads).
    pooling: ``'mean'`` or ``'cls'`` (sentence-transformers' pooling mode).
    normalize: whether the sentence embedding is L2-normalised.
    max_length: the longest token sequence :meth:`encode` keeps
      (sentence-transformers' ``max_seq_length``, else ``max_len``).
  """

  model: BertEncoder
  variables: Mapping[str, Any]
  tokenizer: tokenizers.Tokenizer
  pooling: str = 'mean'
  normalize: bool = False
  max_length: int = 512

  def encode(self, texts: Sequence[str], *, length: int | None = None) -> dict[str, np.ndarray]:
    """Tokenizes `texts` into a batch for :func:`bert_apply`.

    Args:
      texts: the sentences.
      length: pad every row to this many tokens (default: the longest row).
        Rows longer than :attr:`max_length` are truncated to it.

    Returns:
      ``{'tokens', 'token_mask', 'token_types'}``, int32 ``[len(texts), length]``.
    """
    rows = [e for e in self.tokenizer.encode_batch(list(texts))]
    longest = max(min(len(e.ids), self.max_length) for e in rows)
    length = longest if length is None else length
    if length > self.model.config.max_len or length < longest:
      raise ValueError(
          f'length={length} must hold the longest row ({longest} tokens) and fit the '
          f'position table (max_len={self.model.config.max_len}).')
    batch = {k: np.zeros((len(rows), length), np.int32)
             for k in ('tokens', 'token_mask', 'token_types')}
    for i, e in enumerate(rows):
      n = min(len(e.ids), self.max_length)
      batch['tokens'][i, :n] = e.ids[:n]
      batch['token_mask'][i, :n] = e.attention_mask[:n]
      batch['token_types'][i, :n] = e.type_ids[:n]
    return batch

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """sentence-transformers' embeddings of `texts`, float32 ``[len(texts), hidden]``.

    One batch, compiled for its shape at each call; for many batches, jit
    :func:`bert_apply` and :func:`sentence_embedding` once yourself.
    """
    batch = self.encode(texts)
    apply = bert_apply(self.model, types_key='token_types')

    def run(variables, batch):
      outputs, _ = apply(variables, batch, train=False)
      if self.pooling == 'cls':
        pooled = outputs.features['sequence'][:, 0]
        return l2_normalize(pooled) if self.normalize else pooled
      return sentence_embedding(outputs.features['sequence'], batch['token_mask'],
                                normalize=self.normalize)

    return np.asarray(jax.jit(run)(self.variables, batch))


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _sentence_transformers_layout(root: pathlib.Path) -> tuple[pathlib.Path, str, bool, int | None]:
  """(model dir, pooling, normalize, max_seq_length) of a sentence-transformers folder."""
  modules = _read_json(root / 'modules.json') if (root / 'modules.json').exists() else []
  model_dir, pooling, normalize, max_length = root, 'mean', False, None
  for module in modules:
    kind, path = module.get('type', ''), root / module.get('path', '')
    if kind.endswith('.Transformer'):
      model_dir = path
    elif kind.endswith('.Pooling'):
      pooling_config = _read_json(path / 'config.json')
      modes = [m for m in ('mean_tokens', 'cls_token') if pooling_config.get(f'pooling_mode_{m}')]
      others = [k for k, v in pooling_config.items() if k.startswith('pooling_mode_') and v
                and k[len('pooling_mode_'):] not in ('mean_tokens', 'cls_token')]
      if len(modes) != 1 or others:
        raise ValueError(f'{path}/config.json asks for pooling {pooling_config}; only mean or '
                         'CLS pooling alone is supported.')
      pooling = 'mean' if modes[0] == 'mean_tokens' else 'cls'
    elif kind.endswith('.Normalize'):
      normalize = True
  for config_dir in (root, model_dir):
    if (config_dir / 'sentence_bert_config.json').exists():
      max_length = _read_json(config_dir / 'sentence_bert_config.json').get('max_seq_length')
  return model_dir, pooling, normalize, max_length


def load_bert(directory: str | pathlib.Path, **config_overrides: Any) -> BertCheckpoint:
  """Loads a BERT checkpoint from a local Hugging Face or sentence-transformers folder.

  Reads ``config.json``, ``model.safetensors`` (``safetensors``' NumPy
  API) and ``tokenizer.json`` (the ``tokenizers`` package); no torch. For a
  sentence-transformers folder (``modules.json``) it also reads the
  Transformer module's sub-folder, the pooling mode, whether a
  ``Normalize`` module follows, and ``max_seq_length``.

  Args:
    directory: the folder.
    **config_overrides: :class:`BertConfig` fields to set (``dtype``,
      ``dropout_rate``, ``projection_width``, ...).

  Returns:
    A :class:`BertCheckpoint`.

  Raises:
    FileNotFoundError: naming the missing file.
    ValueError: for tensors that do not fit the config (all listed), or a
      tokenizer whose vocabulary size differs from the embedding table's
      rows (both numbers named).
  """
  root = pathlib.Path(directory)
  model_dir, pooling, normalize, max_length = _sentence_transformers_layout(root)
  for name in ('config.json', 'model.safetensors'):
    if not (model_dir / name).exists():
      raise FileNotFoundError(f'{model_dir / name} does not exist (a BERT checkpoint folder '
                              'holds config.json, model.safetensors and tokenizer.json).')
  tokenizer_path = next((p / 'tokenizer.json' for p in (model_dir, root)
                         if (p / 'tokenizer.json').exists()), None)
  if tokenizer_path is None:
    raise FileNotFoundError(f'no tokenizer.json in {model_dir} or {root}.')
  config = BertConfig.from_hf(_read_json(model_dir / 'config.json'),
                              **{'pooler': False, **config_overrides})
  params, config = bert_params_from_hf(
      safetensors_numpy.load_file(str(model_dir / 'model.safetensors')), config)
  tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
  if tokenizer.get_vocab_size() != config.vocab_size:
    raise ValueError(
        f'{tokenizer_path} has a vocabulary of {tokenizer.get_vocab_size()} tokens but the '
        f'word-embedding table has {config.vocab_size} rows; they must be the same model\'s.')
  tokenizer.no_padding()
  tokenizer.no_truncation()
  max_length = min(max_length or config.max_len, config.max_len)
  return BertCheckpoint(model=BertEncoder(config), variables={'params': params},
                        tokenizer=tokenizer, pooling=pooling, normalize=normalize,
                        max_length=max_length)
