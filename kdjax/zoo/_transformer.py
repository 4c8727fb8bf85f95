"""A decoder-only Transformer language model with logical axis names."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import _checks
from kdjax._outputs import Outputs
from kdjax import adapters

# Every logical axis name the model puts on a parameter or an activation.
# A partitioning rule list (e.g. ``('embed', 'fsdp'), ('mlp', 'tensor')``)
# maps them to mesh axes; a name with no rule is replicated.
TRANSFORMER_LOGICAL_AXES = (
    'batch',  # activations: the batch
    'length',  # activations: the time axis
    'embed',  # the model width (hidden, d_model)
    'vocab',  # the vocabulary
    'heads',  # attention heads
    'kv',  # the per-head width (head_dim)
    'mlp',  # the MLP's inner width
    'position',  # rows of the learned position table (max_len)
)

_POSITIONS = ('rope', 'learned')
_MLPS = ('gelu', 'swiglu')
_NORMS = ('rms', 'layer')


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """The shape and options of a :class:`DecoderLM`.

  A teacher and a student are two configs of the one model.

  Attributes:
    vocab_size: number of token ids.
    num_layers: number of Transformer blocks.
    hidden: the model width (d_model).
    num_heads: attention heads.
    mlp_dim: the MLP's inner width.
    max_len: the longest sequence the model accepts.
    head_dim: the per-head width; ``None`` means ``hidden // num_heads``.
    positions: ``'rope'`` (rotary embeddings on queries and keys, Su et al.,
      2021) or ``'learned'`` (a ``[max_len, hidden]`` table added to the
      token embeddings).
    tied_embeddings: if True the unembedding is the token embedding
      transposed; otherwise a separate ``[hidden, vocab]`` matrix.
    mlp: ``'gelu'`` (two matrices) or ``'swiglu'`` (three; Shazeer, 2020).
    norm: ``'rms'`` (RMSNorm, a scale) or ``'layer'`` (LayerNorm, a scale
      and a bias).
    dropout_rate: dropout on the embeddings and on each residual branch in
      training.
    dtype: the compute dtype (e.g. ``jnp.bfloat16``); logits are float32.
    param_dtype: the parameters' dtype.
    rope_base: the RoPE wavelength base.
  """

  vocab_size: int
  num_layers: int
  hidden: int
  num_heads: int
  mlp_dim: int
  max_len: int
  head_dim: int | None = None
  positions: str = 'rope'
  tied_embeddings: bool = True
  mlp: str = 'gelu'
  norm: str = 'rms'
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  rope_base: float = 10_000.0

  def __post_init__(self):
    for name in ('vocab_size', 'num_layers', 'hidden', 'num_heads', 'mlp_dim', 'max_len'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f'DecoderConfig.{name} must be a positive int, got {value!r}.')
    if self.head_dim is None and self.hidden % self.num_heads:
      raise ValueError(
          f'DecoderConfig.hidden={self.hidden} is not divisible by '
          f'num_heads={self.num_heads}; pass head_dim explicitly.'
      )
    if self.head_dim is not None and self.head_dim <= 0:
      raise ValueError(f'DecoderConfig.head_dim must be positive, got {self.head_dim}.')
    for name, allowed in (('positions', _POSITIONS), ('mlp', _MLPS), ('norm', _NORMS)):
      if getattr(self, name) not in allowed:
        raise ValueError(
            f'DecoderConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}.'
        )
    if self.positions == 'rope' and self.kv_dim % 2:
      raise ValueError(
          f"positions='rope' needs an even head_dim, got head_dim={self.kv_dim}."
      )
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'DecoderConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}.')

  @property
  def kv_dim(self) -> int:
    """The per-head width: `head_dim`, or ``hidden // num_heads``."""
    return self.head_dim if self.head_dim is not None else self.hidden // self.num_heads


def param_count(config: DecoderConfig) -> int:
  """The number of parameters of ``DecoderLM(config)``.

  With ``V = vocab_size``, ``D = hidden``, ``A = num_heads * head_dim``,
  ``F = mlp_dim``, ``L = num_layers`` and ``n = D`` (RMSNorm) or ``2 D``
  (LayerNorm), it is::

      V D                              token embedding
    + max_len D                        if positions == 'learned'
    + L (4 D A + m D F + 2 n)          attention (q, k, v, out), MLP, 2 norms
    + n                                final norm
    + D V                              if not tied_embeddings

  where ``m = 2`` for GELU and ``3`` for SwiGLU. No dense layer has a bias.

  Args:
    config: the model's config.

  Returns:
    The count, an int.
  """
  d, v = config.hidden, config.vocab_size
  attn = config.num_heads * config.kv_dim
  norm = d if config.norm == 'rms' else 2 * d
  mlp_mats = 2 if config.mlp == 'gelu' else 3
  count = v * d + norm
  count += config.num_layers * (4 * d * attn + mlp_mats * d * config.mlp_dim + 2 * norm)
  if config.positions == 'learned':
    count += config.max_len * d
  if not config.tied_embeddings:
    count += d * v
  return int(count)


def _param(module: nn.Module, name: str, init, shape: Sequence[int], axes: Sequence[str]):
  """A parameter carrying its logical axis names."""
  return module.param(
      name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
      module.config.param_dtype,
  )


def _norm(config: DecoderConfig, name: str) -> nn.Module:
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ('embed',))
  if config.norm == 'rms':
    return nn.RMSNorm(
        epsilon=1e-6, dtype=config.dtype, param_dtype=config.param_dtype,
        scale_init=scale_init, name=name,
    )
  return nn.LayerNorm(
      epsilon=1e-6, dtype=config.dtype, param_dtype=config.param_dtype, scale_init=scale_init,
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)), name=name,
  )


def _rope(x: jax.Array, base: float) -> jax.Array:
  """Rotary position embedding (rotate-half form) of ``[batch, time, heads, kv]``."""
  half = x.shape[-1] // 2
  inv_freq = base ** (-np.arange(half, dtype=np.float32) / half)
  angles = np.arange(x.shape[1], dtype=np.float32)[:, None] * inv_freq[None, :]
  cos = jnp.asarray(np.cos(angles))[None, :, None, :]
  sin = jnp.asarray(np.sin(angles))[None, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


class _Attention(nn.Module):
  """Causal multi-head self-attention."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    d, h, k = cfg.hidden, cfg.num_heads, cfg.kv_dim
    in_init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    q, kk, v = (
        jnp.einsum(
            'btd,dhk->bthk', x,
            _param(self, name, in_init, (d, h, k), ('embed', 'heads', 'kv')).astype(cfg.dtype),
        )
        for name in ('query', 'key', 'value')
    )
    q, kk, v = (
        nn.with_logical_constraint(a, ('batch', 'length', 'heads', 'kv')) for a in (q, kk, v)
    )
    if cfg.positions == 'rope':
      q, kk = _rope(q, cfg.rope_base), _rope(kk, cfg.rope_base)
    scores = jnp.einsum('bqhk,bshk->bhqs', q, kk, preferred_element_type=jnp.float32)
    scores = scores / np.sqrt(k).astype(np.float32)
    time = x.shape[1]
    causal = np.tril(np.ones((time, time), dtype=bool))[None, None]
    scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
    mixed = jnp.einsum('bhqs,bshk->bqhk', probs, v)
    mixed = nn.with_logical_constraint(mixed, ('batch', 'length', 'heads', 'kv'))
    out_init = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    out = _param(self, 'out', out_init, (h, k, d), ('heads', 'kv', 'embed'))
    return jnp.einsum('bthk,hkd->btd', mixed, out.astype(cfg.dtype))


class _Mlp(nn.Module):
  """GELU or SwiGLU feed-forward block."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    init = nn.initializers.lecun_normal()
    shape_in, axes_in = (cfg.hidden, cfg.mlp_dim), ('embed', 'mlp')

    def project(name, inputs, shape, axes):
      return inputs @ _param(self, name, init, shape, axes).astype(cfg.dtype)

    if cfg.mlp == 'gelu':
      inner = nn.gelu(project('wi', x, shape_in, axes_in))
    else:
      gate = project('wi_gate', x, shape_in, axes_in)
      inner = nn.silu(gate) * project('wi_up', x, shape_in, axes_in)
    inner = nn.with_logical_constraint(inner, ('batch', 'length', 'mlp'))
    return project('wo', inner, (cfg.mlp_dim, cfg.hidden), ('mlp', 'embed'))


class _Block(nn.Module):
  """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate, deterministic=not train)
    x = x + dropout(_Attention(cfg, name='attention')(_norm(cfg, 'attention_norm')(x)))
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = x + dropout(_Mlp(cfg, name='mlp')(_norm(cfg, 'mlp_norm')(x)))
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class DecoderLM(nn.Module):
  """A decoder-only (GPT-style) Transformer language model.

  Pre-norm blocks of causal multi-head self-attention and a GELU or SwiGLU
  MLP, a final norm, and an unembedding tied to the token embedding or not.
  Computation runs in ``config.dtype`` (attention softmax in float32);
  ``__call__`` returns float32 logits.

  Intermediates sown in the ``'intermediates'`` collection (so that
  :func:`kdjax.adapters.from_linen` exposes them by name): ``'layer_<i>'``,
  block ``i``'s output ``[batch, time, hidden]``, and ``'hidden'``, the final
  normed hidden state ``[batch, time, hidden]``.

  Parameters carry logical axis names (``TRANSFORMER_LOGICAL_AXES``)
  through ``nn.with_logical_partitioning``, so ``model.init`` returns
  ``nn.LogicallyPartitioned`` boxes: ``nn.get_partition_spec(variables)``
  gives the logical specs and ``nn.meta.unbox(variables)`` the plain arrays
  (``apply`` accepts either). The names are ``embedding`` ``('vocab',
  'embed')``, ``position_embedding`` ``('position', 'embed')``,
  ``unembedding`` ``('embed', 'vocab')``, attention ``query``/``key``/
  ``value`` ``('embed', 'heads', 'kv')`` and ``out`` ``('heads', 'kv',
  'embed')``, MLP ``wi``/``wi_gate``/``wi_up`` ``('embed', 'mlp')`` and
  ``wo`` ``('mlp', 'embed')``, norm scales and biases ``('embed',)``.
  Activations are constrained with ``nn.with_logical_constraint`` to
  ``('batch', 'length', 'embed')`` (residual stream), ``('batch',
  'length', 'heads', 'kv')`` (queries, keys, values), ``('batch', 'length',
  'mlp')`` and ``('batch', 'length', 'vocab')`` (logits); these are no-ops
  unless logical axis rules are set (``nn.logical_axis_rules``).

  Example, a character-level teacher and a student with about a quarter of
  its parameters (``param_count`` 410,240 and 106,816)::

    student = DecoderLM(DecoderConfig(
        vocab_size=128, num_layers=2, hidden=64, num_heads=4, mlp_dim=256,
        max_len=128))
    teacher = DecoderLM(DecoderConfig(
        vocab_size=128, num_layers=2, hidden=128, num_heads=4, mlp_dim=512,
        max_len=128))

  Attributes:
    config: the :class:`DecoderConfig`.

  References:
    Radford et al., "Language Models are Unsupervised Multitask Learners"
    (GPT-2, 2019); Vaswani et al., "Attention Is All You Need" (2017);
    Su et al., "RoFormer: Enhanced Transformer with Rotary Position
    Embedding" (2021), arXiv:2104.09864; Zhang & Sennrich, "Root Mean
    Square Layer Normalization" (2019); Shazeer, "GLU Variants Improve
    Transformer" (2020), arXiv:2002.05202.
  """

  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.embedding = _param(
        self, 'embedding', nn.initializers.normal(cfg.hidden**-0.5),
        (cfg.vocab_size, cfg.hidden), ('vocab', 'embed'),
    )
    if cfg.positions == 'learned':
      self.position_embedding = _param(
          self, 'position_embedding', nn.initializers.normal(0.02),
          (cfg.max_len, cfg.hidden), ('position', 'embed'),
      )
    if not cfg.tied_embeddings:
      self.unembedding = _param(
          self, 'unembedding', nn.initializers.lecun_normal(),
          (cfg.hidden, cfg.vocab_size), ('embed', 'vocab'),
      )
    self.blocks = [_Block(cfg) for _ in range(cfg.num_layers)]
    self.final_norm = _norm(cfg, None)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _check_tokens(self, tokens: jax.Array) -> None:
    cfg = self.config
    _checks.check_integer('tokens', tokens)
    shape = tuple(jnp.shape(tokens))
    if len(shape) != 2:
      raise ValueError(f'tokens must be [batch, time], got tokens with shape {shape}.')
    if shape[1] > cfg.max_len:
      raise ValueError(
          f'tokens with shape {shape} has {shape[1]} time steps, more than '
          f'max_len={cfg.max_len}; crop the sequence or build the model with '
          'a larger max_len.'
      )
    _checks.check_index_range('tokens', tokens, cfg.vocab_size, 'vocab_size')

  def hidden_and_unembedding(
      self, tokens: jax.Array, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    """Runs the model up to the final norm, without the logits.

    Args:
      tokens: int ``[batch, time]`` token ids, ``time <= max_len``.
      train: enables dropout (then a ``'dropout'`` RNG is needed).

    Returns:
      ``(hidden, unembedding)``: the final normed hidden state ``[batch,
      time, hidden]`` in ``config.dtype`` and the unembedding matrix
      ``[hidden, vocab]`` in ``config.param_dtype`` (the token embedding
      transposed when tied), so that ``hidden @ unembedding`` (accumulated
      in float32) is the logits.
    """
    cfg = self.config
    self._check_tokens(tokens)
    x = jnp.take(self.embedding, tokens, axis=0).astype(cfg.dtype)
    if cfg.positions == 'learned':
      x = x + self.position_embedding[None, : tokens.shape[1]].astype(cfg.dtype)
    x = self.dropout(x, deterministic=not train)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    for i, block in enumerate(self.blocks):
      x = block(x, train)
      self.sow('intermediates', f'layer_{i}', x)
    hidden = self.final_norm(x)
    hidden = nn.with_logical_constraint(hidden, ('batch', 'length', 'embed'))
    self.sow('intermediates', 'hidden', hidden)
    unembedding = self.embedding.T if cfg.tied_embeddings else self.unembedding
    return hidden, unembedding

  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    """Maps int ``tokens [batch, time]`` to float32 logits ``[batch, time, vocab]``."""
    hidden, unembedding = self.hidden_and_unembedding(tokens, train)
    logits = jnp.einsum(
        'btd,dv->btv', hidden, unembedding.astype(self.config.dtype),
        preferred_element_type=jnp.float32,
    )
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))

  def features_outputs(self, tokens: jax.Array, train: bool = False) -> Outputs:
    """``Outputs(logits=None, features={'hidden', 'unembedding'})``, no logits.

    Args:
      tokens: int ``[batch, time]`` token ids.
      train: enables dropout.

    Returns:
      An :class:`~kdjax.Outputs` whose features are the results of
      :meth:`hidden_and_unembedding`.
    """
    hidden, unembedding = self.hidden_and_unembedding(tokens, train)
    return Outputs(logits=None, features={'hidden': hidden, 'unembedding': unembedding})


def lm_apply(
    model: DecoderLM,
    *,
    logits: bool = True,
    inputs: adapters.Inputs = 'tokens',
    features: Sequence[str] | dict[str, str] = (),
) -> adapters.Apply:
  """A kdjax ``apply`` for a :class:`DecoderLM`, reading ``batch['tokens']``.

  With ``logits=True`` it is ``from_linen(model, inputs=inputs,
  features=features)``: ``Outputs.logits`` is float32 ``[batch, time,
  vocab]``. With ``logits=False`` the ``[batch, time, vocab]`` logits are
  never computed: ``Outputs.logits`` is ``None`` and ``Outputs.features``
  holds ``'hidden'`` ``[batch, time, hidden]`` (the final normed hidden
  state, ``config.dtype``) and ``'unembedding'`` ``[hidden, vocab]`` (the
  parameter itself, or the token embedding transposed when tied, so
  gradients reach it through this feature), as chunked large-vocabulary
  losses need. Either way `features` may add any sown intermediate
  (``'layer_<i>'``, ``'hidden'``).

  Args:
    model: the language model.
    logits: whether to compute the logits.
    inputs: the batch key holding the tokens, or ``fn(batch) -> tokens``.
    features: further intermediates to expose (see
      :func:`kdjax.adapters.from_linen`).

  Returns:
    ``apply(variables, batch, *, train, rngs=None) -> (Outputs, new_state)``.
  """
  method = None if logits else DecoderLM.features_outputs
  return adapters.from_linen(model, inputs=inputs, features=features, method=method)
