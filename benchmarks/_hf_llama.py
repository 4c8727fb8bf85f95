"""A Hugging Face ``LlamaForCausalLM`` holding a ``kdjax.zoo.DecoderLM``'s weights.

A ``DecoderLM`` with ``positions='rope'``, ``mlp='swiglu'``, ``norm='rms'``
is a Llama without grouped-query attention: both use pre-norm blocks,
RMSNorm (eps 1e-6 here, a scale and no bias), no biases in any dense layer,
the SwiGLU MLP ``down(silu(gate(x)) * up(x))``, attention scaled by
``1 / sqrt(head_dim)``, and rotary embeddings in the rotate-half form
(``[x1 cos - x2 sin, x2 cos + x1 sin]`` over the two halves of each head)
with inverse frequencies ``base ** (-2 i / head_dim)`` for ``i < head_dim /
2`` (kdjax ``_rope_inverse_frequencies``: ``base ** (-i / half)``; HF
``compute_default_rope_parameters``: ``1 / base ** (arange(0, dim, 2) /
dim)``, the same numbers). Heads are laid out head-major in both
(``[hidden, heads, kv]`` reshaped to ``[hidden, heads * kv]``).
``tests/test_hf_parity.py`` checks that the two give the same logits and
the same greedy tokens.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import torch
import transformers

from kdjax import zoo


def check_llama_shape(config: zoo.DecoderConfig) -> None:
  """Raises ValueError unless `config` is a Llama: rope, swiglu, rms, fp32."""
  wanted = {'positions': 'rope', 'mlp': 'swiglu', 'norm': 'rms'}
  wrong = {k: getattr(config, k) for k, v in wanted.items() if getattr(config, k) != v}
  if wrong:
    raise ValueError(f'a Llama twin needs a DecoderConfig with {wanted}, got {wrong}.')


def llama_config(config: zoo.DecoderConfig) -> transformers.LlamaConfig:
  """The ``LlamaConfig`` of the same shape as ``DecoderLM(config)``."""
  check_llama_shape(config)
  return transformers.LlamaConfig(
      vocab_size=config.vocab_size,
      hidden_size=config.hidden,
      intermediate_size=config.mlp_dim,
      num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_heads,
      head_dim=config.kv_dim,
      max_position_embeddings=config.max_len,
      rms_norm_eps=1e-6,
      rope_parameters={'rope_type': 'default', 'rope_theta': float(config.rope_base)},
      attention_bias=False,
      mlp_bias=False,
      tie_word_embeddings=config.tied_embeddings,
      hidden_act='silu',
      # No special tokens: generation runs for exactly max_new_tokens.
      bos_token_id=None,
      eos_token_id=None,
      pad_token_id=None,
  )


def _tensor(x: Any) -> torch.Tensor:
  return torch.from_numpy(np.array(x, dtype=np.float32, copy=True))


def hf_llama(config: zoo.DecoderConfig, variables: Any) -> transformers.LlamaForCausalLM:
  """A ``LlamaForCausalLM`` (float32, eval mode) with ``DecoderLM(config)``'s `variables`.

  Args:
    config: the DecoderLM's config (rope, swiglu, rms).
    variables: ``{'params': ...}`` of ``DecoderLM(config)`` (boxed or not).

  Returns:
    The PyTorch model, every weight copied from `variables`:
    ``query/key/value [D, H, K]`` -> ``q/k/v_proj.weight = W.reshape(D,
    H*K).T``; ``out [H, K, D]`` -> ``o_proj.weight = out.reshape(H*K, D).T``;
    ``wi_gate/wi_up [D, F]`` -> ``gate/up_proj.weight`` ``[F, D]``; ``wo [F,
    D]`` -> ``down_proj.weight [D, F]``; norm ``scale`` -> ``weight``;
    ``embedding [V, D]`` -> ``embed_tokens.weight``; ``unembedding [D, V]``
    (untied only) -> ``lm_head.weight [V, D]``.
  """
  from flax import linen as nn  # pylint: disable=g-import-not-at-top

  params = jax.device_get(nn.meta.unbox(variables)['params'])
  model = transformers.LlamaForCausalLM(llama_config(config)).to(torch.float32).eval()
  hidden = config.hidden
  with torch.no_grad():
    model.model.embed_tokens.weight.copy_(_tensor(params['embedding']))
    model.model.norm.weight.copy_(_tensor(params['final_norm']['scale']))
    if not config.tied_embeddings:
      model.lm_head.weight.copy_(_tensor(np.asarray(params['unembedding']).T))
    for i, layer in enumerate(model.model.layers):
      block = params[f'blocks_{i}']
      attention, mlp = block['attention'], block['mlp']
      for name, proj in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
        w = np.asarray(attention[name]).reshape(hidden, -1)  # [D, H*K]
        getattr(layer.self_attn, proj).weight.copy_(_tensor(w.T))
      w = np.asarray(attention['out']).reshape(-1, hidden)  # [H*K, D]
      layer.self_attn.o_proj.weight.copy_(_tensor(w.T))
      layer.mlp.gate_proj.weight.copy_(_tensor(np.asarray(mlp['wi_gate']).T))
      layer.mlp.up_proj.weight.copy_(_tensor(np.asarray(mlp['wi_up']).T))
      layer.mlp.down_proj.weight.copy_(_tensor(np.asarray(mlp['wo']).T))
      layer.input_layernorm.weight.copy_(_tensor(block['attention_norm']['scale']))
      layer.post_attention_layernorm.weight.copy_(_tensor(block['mlp_norm']['scale']))
  if config.tied_embeddings:
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
  return model


def hf_generate(model: transformers.LlamaForCausalLM, prompts: np.ndarray, max_new_tokens: int,
                *, num_beams: int = 1) -> np.ndarray:
  """HF ``generate`` of exactly `max_new_tokens` new tokens (no EOS), greedy or beam.

  Args:
    model: from :func:`hf_llama`.
    prompts: int ``[batch, prompt_len]``, all of full length (no padding).
    max_new_tokens: new tokens per sequence.
    num_beams: 1 is greedy decoding; more is beam search (best hypothesis).

  Returns:
    int64 ``[batch, max_new_tokens]``, the new tokens only.
  """
  input_ids = torch.from_numpy(np.asarray(prompts, dtype=np.int64))
  with torch.inference_mode():
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=num_beams,
        use_cache=True,
        eos_token_id=None,
        pad_token_id=0,
        early_stopping=False,
        length_penalty=1.0,
        temperature=None,
        top_p=None,
        top_k=None,
    )
  return out[:, input_ids.shape[1]:].numpy()
