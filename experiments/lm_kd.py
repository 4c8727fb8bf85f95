"""Token-level distillation of a byte-level Transformer language model.

Run ``python -m experiments.lm_kd --config=experiments/configs/lm_kd.py:cpu
--workdir=runs/lm_kd_cpu``; see the config file for what each scale does and
costs. A teacher :class:`kdjax.zoo.DecoderLM` learns next-byte prediction
on the Python standard library's sources; students about a quarter of its
size learn from the labels alone or from a token-level divergence to the
teacher (forward KL, reverse KL, generalized JSD, skew KL) mixed with the
labels. Writes, under the workdir: ``teacher/`` and
``<variant>/seed<k>/`` with ``metrics.jsonl``, TensorBoard files and
checkpoints, the teacher's own checkpoint, ``results.json``; then prints
the table of held-out bits per byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
import os
import sys
import time

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import _common
from experiments.configs import lm_kd as lm_kd_configs
from kdjax import data as data_lib
from kdjax import losses
from kdjax import objective as objective_lib
from kdjax import step as step_lib
from kdjax import zoo
from kdjax._outputs import Outputs

MODULE = 'experiments.lm_kd'
TRAIN_KEYS = ('tokens', 'labels', 'mask')
TEACHER_LOGITS_KEY = 'teacher_logits'
# variant -> (token_distill divergence, its hyper-parameter, the kd config key holding it)
DIVERGENCES = {
    'forward_kl': ('forward_kl', None, None),
    'reverse_kl': ('reverse_kl', None, None),
    'jsd': ('jsd', 'beta', 'jsd_beta'),
    'skew_kl': ('skew_kl', 'alpha', 'skew_alpha'),
}
VARIANT_NAMES = {
    'labels': 'student, labels only',
    'forward_kl': 'student, forward KL + labels',
    'reverse_kl': 'student, reverse KL + labels',
    'jsd': 'student, generalized JSD (β = {beta:g}) + labels',
    'skew_kl': 'student, skew KL (α = {alpha:g}) + labels',
}


def load_arrays(config: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
  """The byte windows of the train, val and test files (whole files per split)."""
  d = config.data
  budgets = {'train': d.train_bytes, 'val': d.val_bytes, 'test': d.test_bytes}
  return data_lib.make_text_lm_arrays(
      d.root or None, length=d.context, suffixes=tuple(d.suffixes),
      val_fraction=d.val_fraction, test_fraction=d.test_fraction,
      max_bytes={k: (v or None) for k, v in budgets.items()},
  )


def model_config(model: ml_collections.ConfigDict, context: int) -> zoo.DecoderConfig:
  return zoo.DecoderConfig(
      vocab_size=data_lib.BYTE_VOCAB_SIZE, num_layers=model.num_layers, hidden=model.hidden,
      num_heads=model.num_heads, mlp_dim=model.mlp_dim, max_len=context,
      positions=model.positions, dropout_rate=model.dropout,
  )


def make_optimizer(model: ml_collections.ConfigDict, steps: int):
  """AdamW (b2 = 0.99) with linear warm-up and cosine decay to zero, clipping at 1."""
  return _common.warmup_cosine_adamw(model, steps, b2=0.99)


def make_objective(
    variant: str, kd: ml_collections.ConfigDict, kd_weight: float = 0.5
) -> objective_lib.Objective:
  """Labels only, or ``kd_weight`` x token divergence + ``1 - kd_weight`` x labels.

  Every term is a ``[batch, time]`` per-token value reduced over the real
  tokens of ``batch['mask']``.
  """
  labels = objective_lib.supervised(losses.cross_entropy, label_key='labels')
  if variant == 'labels':
    return objective_lib.Objective({'ce': labels})
  if variant not in DIVERGENCES:
    raise ValueError(f"variant must be 'labels' or one of {sorted(DIVERGENCES)}, got {variant!r}")
  divergence, hyper, key = DIVERGENCES[variant]
  kwargs = {} if hyper is None else {hyper: kd[key]}
  term = objective_lib.token_distill(divergence, temperature=kd.temperature, **kwargs)
  return objective_lib.Objective(
      {'kd': term, 'ce': labels}, weights={'kd': kd_weight, 'ce': 1.0 - kd_weight})


def cached_teacher_apply(variables, batch, *, train, rngs=None):
  """A teacher ``apply`` that reads its logits from ``batch['teacher_logits']``."""
  del variables, train, rngs
  return Outputs(logits=jnp.asarray(batch[TEACHER_LOGITS_KEY], jnp.float32)), {}


def _padded_batches(arrays: Mapping[str, np.ndarray], batch_size: int):
  """Batches of `arrays`; the last one is padded with rows whose mask is 0."""
  num = len(arrays['tokens'])
  for start in range(0, num, batch_size):
    batch = {k: np.asarray(arrays[k][start:start + batch_size]) for k in TRAIN_KEYS}
    pad = batch_size - len(batch['tokens'])
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch, batch_size - pad


def make_nll_fn(apply):
  """``fn(variables, batch) -> (summed nats, real targets)`` over ``batch['mask']``."""

  def fn(variables, batch):
    outputs, _ = apply(variables, batch, train=False)
    nll = losses.cross_entropy(outputs.logits, batch['labels'])
    mask = jnp.asarray(batch['mask'], jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)

  return jax.jit(fn)


def bits_per_byte(nll_fn, variables, arrays, batch_size: int) -> float:
  """Token-weighted mean negative log-likelihood over real targets, in bits."""
  total, count = 0.0, 0.0
  for batch, _ in _padded_batches(arrays, batch_size):
    nats, n = jax.device_get(nll_fn(variables, batch))
    total, count = total + float(nats), count + float(n)
  return total / max(count, 1.0) / math.log(2.0)


def teacher_logits(apply, variables, arrays, batch_size: int) -> np.ndarray:
  """The teacher's logits on every window, float16 ``[windows, time, 256]``."""
  fn = jax.jit(lambda v, b: apply(v, b, train=False)[0].logits.astype(jnp.float16))
  parts = []
  for batch, real in _padded_batches(arrays, batch_size):
    parts.append(np.asarray(fn(variables, batch))[:real])
  return np.concatenate(parts)


class Model:
  """A DecoderLM with its optimizer, jitted init and jitted held-out NLL.

  Built once per model config and shared by the trainers that train it
  (the student variants differ in their objective only), so the init and
  the evaluation compile once.
  """

  def __init__(self, model_cfg: ml_collections.ConfigDict, context: int, num_train: int):
    self.cfg = model_cfg
    self.decoder_config = model_config(model_cfg, context)
    self.module = zoo.DecoderLM(self.decoder_config)
    self.apply = zoo.lm_apply(self.module)
    self.steps = num_train // model_cfg.batch_size * model_cfg.epochs
    self.optimizer = make_optimizer(model_cfg, self.steps)
    self.nll_fn = make_nll_fn(self.apply)
    example = jnp.zeros((1, context), jnp.int32)

    def init(key):
      variables = nn.meta.unbox(self.module.init(key, example, train=False))
      return step_lib.init_train_state(variables, self.optimizer, rng=jax.random.fold_in(key, 1))

    self.init = jax.jit(init)


class Trainer(_common.Trainer):
  """One model and objective; the epoch compiles once for all seeds.

  Trains with the validation bits per byte logged every epoch; returns
  (and logs, split ``'final'``) the validation and test bits per byte, the
  training time and the steps.
  """

  def __init__(self, model: Model, objective, *, teacher_apply, evals, eval_batch_size,
               progress):
    self.model, self.evals = model, evals
    self.eval_batch_size = eval_batch_size
    train_step = step_lib.make_train_step(model.apply, teacher_apply, objective, model.optimizer)
    super().__init__(
        train_step, model.init, lambda s: self.bits(s.variables, ('val',)),
        epochs=model.cfg.epochs, batch_size=model.cfg.batch_size, eval_every=1, save_every=1,
        progress=progress, final_evaluate_fn=lambda s: self.bits(s.variables, ('val', 'test')),
        write_final=True)

  def bits(self, variables, splits: Sequence[str]) -> dict[str, float]:
    return {f'{split}/bpc': bits_per_byte(self.model.nll_fn, variables, self.evals[split],
                                          self.eval_batch_size) for split in splits}

  def train(self, train, **kwargs):
    """:meth:`experiments._common.Trainer.train`, plus ``'seconds'`` and ``'steps'``."""
    start = time.time()
    state, metrics = super().train(train, **kwargs)
    return state, {**metrics, 'seconds': time.time() - start, 'steps': int(state.step)}


def summarize(per_seed: list[dict], variants: Sequence[str]) -> dict:
  """Means and standard deviations over seeds; paired differences to labels only."""
  summary = _common.summarize(per_seed, variants,
                              {'val': 'val/bpc', 'test': 'test/bpc', 'seconds': 'seconds'})
  for variant in variants:
    if variant != 'labels' and 'labels' in variants:
      summary[variant]['test_minus_labels'] = _common.mean_std(
          [r[variant]['test/bpc'] - r['labels']['test/bpc'] for r in per_seed])
  return summary


def run(config: ml_collections.ConfigDict, workdir: str,
        command: Sequence[str] | None = None) -> dict:
  """Trains the teacher and every student variant for every seed; writes results.json.

  `command` is the command line recorded with the results (default: this
  process's).
  """
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  arrays = load_arrays(config)
  train = {k: arrays['train'][k] for k in TRAIN_KEYS}
  evals = {split: arrays[split] for split in ('val', 'test')}
  num_train = len(train['tokens'])
  common = dict(evals=evals, eval_batch_size=config.data.eval_batch_size,
                progress=config.progress)
  teacher_model = Model(config.teacher, config.data.context, num_train)
  student_model = Model(config.student, config.data.context, num_train)

  teacher = Trainer(teacher_model, make_objective('labels', config.kd), teacher_apply=None,
                    **common)
  teacher_variables, teacher_metrics = _common.train_teacher(
      teacher, jax.device_put(train), seed=config.teacher_seed,
      workdir=os.path.join(workdir, 'teacher'), desc='teacher',
      config=_common.run_config(config, phase='teacher'))

  kd_train, kd_teacher_variables, kd_teacher_apply = train, teacher_variables, teacher_model.apply
  if config.kd.cache_teacher_logits and any(v != 'labels' for v in config.variants):
    logits = teacher_logits(teacher_model.apply, teacher_variables, train, config.data.eval_batch_size)
    kd_train = {**train, TEACHER_LOGITS_KEY: logits}
    kd_teacher_variables, kd_teacher_apply = None, cached_teacher_apply
  train_device, kd_train_device = jax.device_put(train), jax.device_put(kd_train)

  def make_trainer(variant, kd_weight=0.5):
    return Trainer(student_model, make_objective(variant, config.kd, kd_weight),
                   teacher_apply=None if variant == 'labels' else kd_teacher_apply, **common)

  def train_student(variant, seed, kd_weight=None):
    # Every variant of a seed starts from the same init and sees the same batches.
    is_kd = variant != 'labels'
    key = (variant, kd_weight)
    if key not in trainers:
      trainers[key] = make_trainer(variant, kd_weight)
    subdir = os.path.join(variant, f'weight{kd_weight:g}') if is_kd else variant
    _, metrics = trainers[key].train(
        kd_train_device if is_kd else train_device, seed=seed + 1000,
        teacher_variables=kd_teacher_variables if is_kd else None,
        workdir=os.path.join(workdir, subdir, f'seed{seed}'), desc=f'{subdir} s{seed}',
        config=_common.run_config(config, variant=variant, kd_weight=kd_weight))
    return metrics

  trainers, per_seed, selection = {}, [], {}
  grid = tuple(float(w) for w in config.kd.kd_weight_grid)
  for index, seed in enumerate(config.seeds):
    result = {}
    for variant in config.variants:
      if variant == 'labels':
        result[variant] = train_student(variant, seed)
      elif index == 0:
        # The first seed chooses the divergence's weight by validation bits.
        runs = {w: train_student(variant, seed, w) for w in grid}
        chosen = min(grid, key=lambda w: runs[w]['val/bpc'])
        selection[variant] = {'grid': list(grid), 'val_bpc': [runs[w]['val/bpc'] for w in grid],
                              'chosen': chosen}
        result[variant] = runs[chosen]
      else:
        result[variant] = train_student(variant, seed, selection[variant]['chosen'])
    per_seed.append(result)

  results = {
      'paper': 'Token-level KD of a byte-level LM: Hinton et al. (2015), MiniLLM (2024), '
               'GKD (2024), DistiLLM (2024)',
      'config': config.to_dict(),
      'data': {split: {'files': int(len(arrays[split]['files'])),
                       'bytes': int(arrays[split]['bytes']),
                       'targets': int(arrays[split]['mask'].sum()),
                       'windows': int(len(arrays[split]['tokens']))}
               for split in ('train', 'val', 'test')},
      'params': {'teacher': zoo.param_count(teacher_model.decoder_config),
                 'student': zoo.param_count(student_model.decoder_config)},
      'steps': {'teacher': teacher_model.steps, 'student': student_model.steps},
      'teacher': teacher_metrics,
      'per_seed': per_seed,
      'summary': summarize(per_seed, config.variants),
      'selection': selection,
      'wall_seconds': time.time() - start,
      'finished': time.time(),
  }
  return _common.write_results(results, workdir, config,
                               command or _common.command(MODULE, None))


def describe(results: dict) -> str:
  """One paragraph saying what was trained, from a run's recorded results."""
  config, data, params = results['config'], results['data'], results['params']
  t, s, kd = config['teacher'], config['student'], config['kd']

  def model(c):
    return (f"{c['num_layers']} layers × {c['hidden']} wide ({c['num_heads']} heads, MLP "
            f"{c['mlp_dim']}, RoPE, dropout {c['dropout']:g})")

  cache = ('from its logits computed once on the training windows (float16)'
           if kd['cache_teacher_logits'] else 'running the teacher at every step')
  return (
      f"Data: the Python standard library's `*.py` sources (tests excluded), read as bytes "
      f"(vocabulary 256), whole files held out: {data['train']['files']} training files "
      f"({data['train']['bytes'] / 1e3:.0f} kB), {data['val']['files']} validation files "
      f"({data['val']['bytes'] / 1e3:.0f} kB), {data['test']['files']} test files "
      f"({data['test']['targets']:,} scored bytes); windows of {config['data']['context']} "
      f"bytes that never cross a file. Teacher: DecoderLM, {model(t)}, "
      f"{params['teacher']:,} parameters, {results['steps']['teacher']} steps of "
      f"{t['batch_size']} windows, trained once (seed {config['teacher_seed']}) and shared by "
      f"all seeds. Students: {model(s)}, {params['student']:,} parameters "
      f"({params['student'] / params['teacher']:.2f} of the teacher), "
      f"{results['steps']['student']} steps; for each seed every variant starts from the "
      f"same initialisation and sees the same batches. Distilled students minimise "
      f"w × the token-level divergence (temperature {kd['temperature']:g}) "
      f"+ (1 − w) × the cross entropy on the labels, distilling {cache}; w is chosen per "
      f"divergence from {{{', '.join(f'{w:g}' for w in kd['kd_weight_grid'])}}} by the "
      f"validation bits per byte of seed {config['seeds'][0]} (that run is reused; the test "
      f"files are never used to choose anything). "
      f"Bits per byte are the token-weighted mean negative log-likelihood over every real "
      f"target of the held-out files, in bits (the files are ASCII save a few, so this is "
      f"bits per character).")


def format_table(results: dict) -> str:
  """Markdown table of held-out bits per byte, mean ± std over seeds."""
  summary, kd, params = results['summary'], results['config']['kd'], results['params']

  def stat(s):
    return _common.mean_std_text(s, digits=3)

  teacher = results['teacher']
  rows = [['teacher (one run)', f"{params['teacher']:,}", f"{teacher['test/bpc']:.3f}",
           f"{teacher['val/bpc']:.3f}", '', f"{teacher['seconds']:.0f}"]]
  for variant, stats in summary.items():
    name = VARIANT_NAMES[variant].format(beta=kd['jsd_beta'], alpha=kd['skew_alpha'])
    if variant in results.get('selection', {}):
      weight = f"w = {results['selection'][variant]['chosen']:g}"
      name = (name.replace(') + labels', f', {weight}) + labels') if ') + labels' in name
              else name.replace(' + labels', f' ({weight}) + labels'))
    diff = stat(stats['test_minus_labels']) if 'test_minus_labels' in stats else ''
    rows.append([name, f"{params['student']:,}", stat(stats['test']), stat(stats['val']), diff,
                 f"{stats['seconds']['mean']:.0f}"])
  lines = _common.markdown_table(
      ['model', 'parameters', 'test bits/byte', 'validation bits/byte',
       'test − labels only (paired)', 'train time (s)'], rows)
  selection = results.get('selection', {})
  if selection:
    grid = next(iter(selection.values()))['grid']
    seed = results['config']['seeds'][0]
    choices = []
    for variant, chosen in selection.items():
      name = VARIANT_NAMES[variant].format(beta=kd['jsd_beta'], alpha=kd['skew_alpha'])
      name = name.removeprefix('student, ').removesuffix(' + labels')
      choices.append([name, *(f'{v:.3f}' for v in chosen['val_bpc']), f"{chosen['chosen']:g}"])
    lines += [
        '',
        f'Choice of w (validation bits/byte of seed {seed}; the chosen run is the one in the '
        'table):',
        '',
        *_common.markdown_table(['divergence', *(f'w = {w:g}' for w in grid), 'chosen w'],
                                choices),
    ]
  return '\n'.join(lines)


def _variant_name(variant: str, kd: Mapping) -> str:
  name = VARIANT_NAMES[variant].format(beta=kd['jsd_beta'], alpha=kd['skew_alpha'])
  return name.removeprefix('student, ')


def per_seed_table(results: Mapping) -> str:
  """Every seed's test bits/byte of every student variant."""
  per_seed, kd = results['per_seed'], results['config']['kd']
  columns = {_variant_name(v, kd): [r[v]['test/bpc'] for r in per_seed] for v in per_seed[0]}
  return '\n'.join(['Test bits/byte per seed (the teacher is one run):', '',
                    *_common.per_seed_table(results['config']['seeds'], columns, digits=3)])


def claims(results: Mapping) -> list[dict]:
  """Each divergence + labels beats labels only (lower test bits/byte), seed by seed."""
  per_seed, kd = results['per_seed'], results['config']['kd']
  return [_common.claim(f'{_variant_name(v, kd)} beats labels only (test bits/byte, lower is '
                        'better)', [r[v]['test/bpc'] for r in per_seed],
                        [r['labels']['test/bpc'] for r in per_seed], test='<', digits=3)
          for v in per_seed[0] if v != 'labels' and 'labels' in per_seed[0]]


def main(argv: Sequence[str] | None = None) -> None:
  _common.run_main(argv, module=MODULE, doc=__doc__, schema=lm_kd_configs.schema(), run=run,
                   report=lambda r: format_table(r) + '\n\n' + per_seed_table(r),
                   claims=claims)


if __name__ == '__main__':
  main(sys.argv[1:])
