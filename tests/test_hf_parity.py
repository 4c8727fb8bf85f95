"""A DecoderLM and the Hugging Face LlamaForCausalLM holding its weights agree.

The same logits on random tokens, and HF's greedy ``generate`` (with its KV
cache) gives exactly kdjax's greedy tokens. Skipped without torch and
transformers (the ``bench`` extra).
"""

import pathlib
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / 'benchmarks'))

import _hf_llama  # noqa: E402
import _lm_common as common  # noqa: E402

from kdjax import generate as gen  # noqa: E402
from kdjax import zoo  # noqa: E402


def _config(tied: bool) -> zoo.DecoderConfig:
  return zoo.DecoderConfig(
      vocab_size=97, num_layers=2, hidden=32, num_heads=4, mlp_dim=48, max_len=40,
      positions='rope', mlp='swiglu', norm='rms', tied_embeddings=tied, rope_base=500.0,
  )


@pytest.fixture(scope='module', params=[True, False], ids=['tied', 'untied'])
def models(request):
  config = _config(request.param)
  variables = jax.device_put(common.numpy_variables(config, 0, config.max_len))
  return config, variables, _hf_llama.hf_llama(config, variables)


def test_logits_equal_the_full_forward(models):
  config, variables, hf = models
  tokens = np.random.default_rng(1).integers(0, config.vocab_size, (3, config.max_len))
  ours = np.asarray(jax.jit(zoo.DecoderLM(config).apply)(variables, tokens))
  with torch.no_grad():
    theirs = hf(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
  np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)


def test_hf_greedy_generate_gives_kdjax_greedy_tokens(models):
  config, variables, hf = models
  new_tokens = 24
  generate = gen.make_generate(
      zoo.lm_decoder(zoo.DecoderLM(config)), max_new_tokens=new_tokens, method=gen.Greedy())
  rng = np.random.default_rng(2)
  for prompt_len in (1, 5, 16):
    prompts = rng.integers(0, config.vocab_size, (2, prompt_len)).astype(np.int32)
    ours = np.asarray(generate(variables, prompts).tokens)
    theirs = _hf_llama.hf_generate(hf, prompts, new_tokens)
    np.testing.assert_array_equal(theirs, ours)


def test_rejects_a_config_that_is_not_a_llama():
  config = zoo.DecoderConfig(vocab_size=8, num_layers=1, hidden=8, num_heads=2, mlp_dim=8,
                             max_len=8, mlp='gelu')
  with pytest.raises(ValueError, match='swiglu'):
    _hf_llama.llama_config(config)
