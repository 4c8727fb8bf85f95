"""What the language-model benchmarks share: models, batch, objective, reporting.

The teacher and student are two :class:`kdjax.zoo.DecoderLM` configs
(RoPE, RMSNorm, GELU MLP of width 4 x hidden, tied embeddings, head width
64), distilled with forward KL over the full vocabulary at temperature T
(``objective.token_distill('forward_kl')``, or its chunked twin
``objective.chunked_distill`` that never materialises the logits) and
AdamW. Each script writes its own ``## ...`` section of
``docs/performance.md`` with :func:`write_section`.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import pathlib
import resource
import statistics
import sys
import time
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _docs  # pylint: disable=wrong-import-position

from kdjax import objective as objective_lib  # pylint: disable=wrong-import-position
from kdjax import writers  # pylint: disable=wrong-import-position
from kdjax import zoo  # pylint: disable=wrong-import-position

DOCS = ROOT / 'docs' / 'performance.md'
HEAD_DIM = 64
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01


def decoder_config(layers: int, hidden: int, vocab: int, seq: int) -> zoo.DecoderConfig:
  """A DecoderLM config: GELU MLP 4 x hidden, heads of width 64 (at least 2 heads)."""
  heads = max(2, hidden // HEAD_DIM)
  return zoo.DecoderConfig(
      vocab_size=vocab, num_layers=layers, hidden=hidden, num_heads=heads,
      mlp_dim=4 * hidden, max_len=seq,
  )


def configs(args) -> tuple[zoo.DecoderConfig, zoo.DecoderConfig]:
  """(teacher, student) configs from ``--teacher-layers`` etc."""
  teacher = decoder_config(args.teacher_layers, args.teacher_hidden, args.vocab, args.seq)
  student = decoder_config(args.student_layers, args.student_hidden, args.vocab, args.seq)
  return teacher, student


def add_model_flags(parser, *, teacher=(4, 512), student=(2, 512), vocab=32000, seq=256,
                    batch=8) -> None:
  parser.add_argument('--teacher-layers', type=int, default=teacher[0])
  parser.add_argument('--teacher-hidden', type=int, default=teacher[1])
  parser.add_argument('--student-layers', type=int, default=student[0])
  parser.add_argument('--student-hidden', type=int, default=student[1])
  parser.add_argument('--vocab', type=int, default=vocab)
  parser.add_argument('--seq', type=int, default=seq)
  parser.add_argument('--batch', type=int, default=batch)
  parser.add_argument('--temperature', type=float, default=2.0)


def describe(args) -> str:
  return (
      f'teacher {args.teacher_layers}x{args.teacher_hidden}, student '
      f'{args.student_layers}x{args.student_hidden} (MLP 4x, heads of 64), '
      f'vocab {args.vocab}, batch {args.batch} x seq {args.seq}'
  )


def token_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {'tokens': rng.integers(0, vocab, (batch, seq), dtype=np.int32)}


def optimizer() -> optax.GradientTransformation:
  """AdamW, as ``torch.optim.AdamW(lr, weight_decay=0.01)`` (decay on every parameter)."""
  return optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)


def kd_objective(temperature: float, *, chunked: bool = False,
                 token_chunk: int = 256) -> objective_lib.Objective:
  """Forward KL(teacher || student) at `temperature` (x T²), mean over tokens."""
  if chunked:
    term = objective_lib.chunked_distill(
        'forward_kl', temperature=temperature, token_chunk=token_chunk)
  else:
    term = objective_lib.token_distill('forward_kl', temperature=temperature)
  return objective_lib.Objective(terms={'kd': term})


def abstract_variables(config: zoo.DecoderConfig, seq: int) -> Any:
  """``jax.eval_shape`` of ``DecoderLM(config).init``: shapes with logical-axis boxes."""
  model = zoo.DecoderLM(config)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, seq), jnp.int32))


# DecoderLM's initializers by parameter name: 'normal' scales by a fixed
# std, 'lecun' is flax's lecun_normal (a normal truncated at 2 std, std
# sqrt(1 / fan_in) / 0.8796) with fan_in the product of the first
# `fan_in_axes` dimensions.
_INITS = {
    'embedding': ('embedding', None),
    'position_embedding': ('normal', 0.02),
    'unembedding': ('lecun', 1),
    'query': ('lecun', 1), 'key': ('lecun', 1), 'value': ('lecun', 1),
    'out': ('lecun', 2),
    'wi': ('lecun', 1), 'wi_gate': ('lecun', 1), 'wi_up': ('lecun', 1), 'wo': ('lecun', 1),
    'scale': ('ones', None), 'bias': ('zeros', None),
}


def numpy_variables(config: zoo.DecoderConfig, seed: int, seq: int) -> dict[str, Any]:
  """``DecoderLM(config)`` variables drawn in NumPy with the model's init scheme.

  The same distributions as ``model.init`` (not the same numbers): jitting
  ``model.init``'s random initializers costs seconds of compilation per
  model and layout, which this avoids.
  """
  rng = np.random.default_rng(seed)
  abstract = nn.meta.unbox(abstract_variables(config, seq))

  def draw(path, leaf):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name not in _INITS:
      raise KeyError(f'no init rule for DecoderLM parameter {name!r}')
    kind, arg = _INITS[name]
    shape = leaf.shape
    if kind == 'ones':
      return np.ones(shape, np.float32)
    if kind == 'zeros':
      return np.zeros(shape, np.float32)
    if kind == 'embedding':
      return (rng.standard_normal(shape) * config.hidden**-0.5).astype(np.float32)
    if kind == 'normal':
      return (rng.standard_normal(shape) * arg).astype(np.float32)
    fan_in = int(np.prod(shape[:arg]))
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2
    while outside.any():
      values[outside] = rng.standard_normal(int(outside.sum()))
      outside = np.abs(values) > 2
    return (values * np.sqrt(1.0 / fan_in) / 0.87962566103423978).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


# ----------------------------------------------------------------------------
# Statistics and reporting.


def median(values) -> float:
  return float(statistics.median(values))


def iqr(values) -> tuple[float, float]:
  return float(np.percentile(values, 25)), float(np.percentile(values, 75))


def load_average(load: tuple[float, ...] | None = None) -> str:
  """`load` (1-, 5- and 15-minute load averages; now by default) as text."""
  return ', '.join(f'{x:.2f}' for x in (os.getloadavg() if load is None else load))


def machine() -> str:
  return f"{writers.environment()['machine']}, load average {load_average()}"


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')


def versions(extra: str = '') -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  def version(name):
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return '?'

  text = (f'JAX {jax.__version__}, Flax {version("flax")}, optax {optax.__version__}, '
          f'backend {jax.default_backend()}')
  return text + (f', {extra}' if extra else '')


def command_line(script: str, argv) -> str:
  return ' '.join([f'python benchmarks/{script}'] + list(argv))


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
  lines = ['| ' + ' | '.join(headers) + ' |',
           '|' + '|'.join(['---'] + ['---:'] * (len(headers) - 1)) + '|']
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines)


def text_table(headers: list[str], rows: list[list[str]]) -> str:
  table = [headers] + rows
  widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
  return '\n'.join(
      '  '.join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
      for row in table
  )


def add_run_flags(parser, section: str) -> None:
  """--max-load, --force, --quick and --write-docs / --docs-path (the `section` of docs)."""
  parser.add_argument('--max-load', type=float, default=1.0)
  parser.add_argument('--force', action='store_true', help='run even when the load is high')
  parser.add_argument('--quick', action='store_true',
                      help='smoke test: a tiny model and few tokens (not a result)')
  parser.add_argument('--write-docs', action='store_true',
                      help=f'update the "{section}" section of docs/performance.md')
  parser.add_argument('--docs-path', default=str(DOCS))


def load_gate(args) -> tuple[str, bool]:
  """(the load average now as text, whether the run can be a result).

  Refuses to start (SystemExit) when the 1-minute load is above
  ``args.max_load`` unless ``args.force``; a forced or ``--quick`` run is
  not a result.
  """
  load = load_average()
  if os.getloadavg()[0] > args.max_load and not args.force:
    raise SystemExit(f'load average {load} is above --max-load {args.max_load}: '
                     'the timings would not be results; wait, or pass --force.')
  return load, os.getloadavg()[0] <= args.max_load and not args.quick


def not_a_result(valid: bool, max_load: float) -> str:
  """The docs' warning for a run that is not a result, or ''."""
  return '' if valid else (
      '\n**Not a result:** a `--quick` smoke run, or the load average was above '
      f'{max_load} when the run started (run with `--force`).\n')


def finish(args, title: str, make_section, load_before: str, valid: bool) -> None:
  """Prints the end of a run's report; with ``--write-docs`` writes its section.

  `make_section(load_after)` returns the section's text.
  """
  load_after = load_average()
  print(f'load average at the start {load_before}, at the end {load_after}'
        + ('' if valid else ' -- NOT A RESULT (load above --max-load, or --quick)'))
  if args.write_docs:
    path = pathlib.Path(args.docs_path)
    write_section(title, make_section(load_after), path)
    print(f'\nwrote the "{title}" section of {path}')


def write_section(title: str, section: str, path: pathlib.Path = DOCS) -> None:
  """Replaces (or appends) the ``title`` section of `path`, keeping the rest."""
  _docs.write_section(title, section, path)


def time_alternating(sides: dict[str, Any], *, warmup: int, repeats: int,
                     steps: int, faults: dict[str, float] | None = None
                     ) -> dict[str, np.ndarray]:
  """Seconds per step of each side, the sides taking turns (the order rotated each repeat).

  Each side has ``run(k)``, which does k steps and waits for them. After
  `warmup` steps of every side, each of `repeats` rounds times `steps`
  steps of every side in turn, so that load changes hit every side alike.
  With `faults`, it also gets each side's median minor page faults per step
  (``getrusage``: pages the kernel had to map, and zero, on first touch).
  """
  for side in sides.values():
    side.run(warmup)
  times = {name: [] for name in sides}
  counts = {name: [] for name in sides}
  names = list(sides)
  for rep in range(repeats):
    for name in names[rep % len(names):] + names[:rep % len(names)]:
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      start = time.perf_counter()
      sides[name].run(steps)
      times[name].append((time.perf_counter() - start) / steps)
      counts[name].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps)
  if faults is not None:
    faults.update({name: median(v) for name, v in counts.items()})
  return {name: np.asarray(v) for name, v in times.items()}


MALLOC_CHOICES = ('system', 'retain')
FAULTS_HEADER = 'page faults / step (MiB of 4 KiB pages)'


def faults_cell(count: float) -> str:
  """A table cell: minor page faults per step and the MiB of 4 KiB pages they map."""
  return f'{count:,.0f} ({count * 4 / 1024:,.0f})'


def add_malloc_flag(parser) -> None:
  """``--malloc {system,retain}``: the allocator of the timing process (:func:`set_malloc`)."""
  parser.add_argument('--malloc', choices=MALLOC_CHOICES, default='system',
                      help="'retain': glibc keeps freed memory for reuse (both sides); "
                           'its results go to their own section')


def malloc_sections(section: str) -> dict[str, str]:
  """The docs section each ``--malloc`` choice writes: `section`, or its kept-memory twin."""
  return {'system': section, 'retain': section + ', freed memory kept'}


def malloc_description(choice: str) -> str:
  """What :func:`set_malloc` does for `choice`, in words (changes nothing)."""
  if choice == 'system':
    return 'glibc malloc as configured by the system'
  return ('glibc malloc keeping freed memory (`mallopt`: M_MMAP_MAX 0, M_ARENA_MAX 1, '
          'M_TRIM_THRESHOLD 2^31 - 1)')


def set_malloc(choice: str) -> None:
  """Configures glibc's allocator for this process.

  ``'system'`` leaves it alone. ``'retain'`` keeps freed memory for reuse
  instead of handing it back to the kernel: every ``malloc`` served from
  one heap grown with ``brk`` (``M_MMAP_MAX = 0``, ``M_ARENA_MAX = 1``)
  that is never trimmed (``M_TRIM_THRESHOLD`` at its maximum). By default
  glibc serves blocks of 32 MiB and more with fresh ``mmap`` pages and
  unmaps them on ``free``, so a step that allocates a logits-sized
  temporary (XLA's per-run temporaries, PyTorch's per-op tensors) takes
  one page fault per 4 KiB page of it, every step. Call it before the
  large allocations. Both sides of a benchmark run in the process, so
  both get the same allocator.
  """
  if choice not in MALLOC_CHOICES:
    raise ValueError(f'malloc must be one of {MALLOC_CHOICES}, got {choice!r}')
  if choice == 'system':
    return
  libc = ctypes.CDLL('libc.so.6')
  m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # <malloc.h>
  for option, value in ((m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_arena_max, 1)):
    if libc.mallopt(option, value) != 1:
      raise RuntimeError(f'mallopt({option}, {value}) failed')
