"""Smoke tests of the LM benchmarks at toy sizes: each core function runs and its checks hold.

The fast tests run one piece of each script; the `slow` ones run the
comparisons the scripts make (8-device layout == 1 device, kdjax == PyTorch
losses over AdamW steps, the step timed in pieces).
"""

import pathlib
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / 'benchmarks'))

import _lm_common as common  # noqa: E402
import lm_flops  # noqa: E402
import lm_sharded  # noqa: E402

TOY = ['--teacher-layers', '1', '--teacher-hidden', '32', '--student-layers', '1',
       '--student-hidden', '16', '--vocab', '32', '--seq', '8', '--batch', '8']


def test_numpy_variables_follow_the_decoder_init_scheme():
  from flax import linen as nn  # pylint: disable=g-import-not-at-top

  config = common.decoder_config(1, 128, 64, 8)
  values = common.numpy_variables(config, 0, 8)
  abstract = nn.meta.unbox(common.abstract_variables(config, 8))
  assert jax.tree.structure(values) == jax.tree.structure(abstract)
  for value, leaf in zip(jax.tree.leaves(values), jax.tree.leaves(abstract)):
    assert value.shape == leaf.shape and value.dtype == leaf.dtype
  attention = values['params']['blocks_0']['attention']
  # lecun_normal: std sqrt(1 / fan_in); fan_in is hidden for query, heads x kv for out.
  np.testing.assert_allclose(attention['query'].std(), 128**-0.5, rtol=0.05)
  np.testing.assert_allclose(attention['out'].std(), 128**-0.5, rtol=0.05)
  assert np.abs(attention['query']).max() <= 2 * 128**-0.5 / 0.87962566103423978
  np.testing.assert_allclose(values['params']['embedding'].std(), 128**-0.5, rtol=0.05)
  assert (values['params']['final_norm']['scale'] == 1).all()


def test_sharded_layout_runs():
  args = lm_sharded.parse_args(TOY + ['--steps', '1', '--warmup', '0', '--repeats', '1'])
  result = lm_sharded.run_layout('data_parallel', args)
  assert result['devices'] == 8 and result['mesh'] == {'data': 8}
  assert np.isfinite(result['losses']).all() and len(result['step_s']) == 1


@pytest.mark.slow
def test_sharded_layout_losses_equal_one_device():
  args = lm_sharded.parse_args(TOY + ['--steps', '2', '--warmup', '0', '--repeats', '1'])
  one = lm_sharded.run_layout('one_device', args, devices=jax.devices()[:1])
  tp = lm_sharded.run_layout('teacher_tp', args)
  assert one['devices'] == 1 and tp['mesh'] == {'data': 4, 'tensor': 2}
  np.testing.assert_allclose(tp['losses'], one['losses'], rtol=1e-5)
  rows = lm_sharded.summarize({'one_device': one, 'teacher_tp': tp})
  assert rows[0]['ratio'] == 1.0 and rows[1]['max_rel_loss_diff'] < 1e-5
  assert len(lm_sharded.table_rows(rows)[1]) == len(lm_sharded.HEADERS)


def _flops(extra):
  args = lm_flops.parse_args(TOY + ['--matmul-size', '64', '--warmup', '0', '--repeats', '1']
                             + extra)
  result = lm_flops.measure(args)
  step = result['variants']['logits']['pieces']['step']
  # XLA counts every dot the analytic formula counts, plus element-wise work.
  assert result['analytic_step_flops'] <= step.flops <= 3 * result['analytic_step_flops']
  assert result['matmul_flops'] == 2 * 64**3 == result['matmul_xla_flops']
  assert step.median > 0 and result['matmul_rate'] > 0
  return result


def test_flops_of_the_step_cover_the_analytic_matmuls():
  result = _flops(['--no-pieces'])
  assert len(lm_flops.all_rows(result)) == 1


@pytest.mark.slow
def test_flops_pieces():
  result = _flops([])
  assert len(lm_flops.all_rows(result)) == 5


def test_torch_twin_gives_the_same_logits_and_kl():
  torch = pytest.importorskip('torch')
  import lm_torch  # pylint: disable=g-import-not-at-top
  from kdjax import losses  # pylint: disable=g-import-not-at-top

  args = lm_torch.parse_args(TOY)
  parts = lm_torch.build_parts(args)
  tokens = parts['batch']['tokens']
  apply = jax.jit(lm_torch.zoo.DecoderLM(parts['teacher_config']).apply)
  teacher_logits = np.array(apply(parts['teacher_vars'], tokens))
  model = lm_torch.load_jax_params(
      lm_torch.TorchDecoderLM(parts['teacher_config']), parts['teacher'])
  with torch.no_grad():
    torch_logits = model(torch.from_numpy(tokens.astype(np.int64))).numpy()
  np.testing.assert_allclose(torch_logits, teacher_logits, rtol=1e-4, atol=1e-5)
  # The PyTorch loss formula equals kdjax's token-mean forward KL (x T²).
  student_logits = np.random.default_rng(0).normal(size=teacher_logits.shape).astype(np.float32)
  t = args.temperature
  vocab = teacher_logits.shape[-1]
  torch_kl = torch.nn.functional.kl_div(
      torch.log_softmax(torch.from_numpy(student_logits).view(-1, vocab) / t, -1),
      torch.log_softmax(torch.from_numpy(teacher_logits).view(-1, vocab) / t, -1),
      log_target=True, reduction='batchmean') * t**2
  kdjax_kl = jax.jit(lambda s, p: losses.token_divergence(s, p, temperature=t).mean())(
      student_logits, teacher_logits)
  np.testing.assert_allclose(float(torch_kl), float(kdjax_kl), rtol=1e-5)


@pytest.mark.slow
def test_torch_step_equals_kdjax_step():
  pytest.importorskip('torch')
  import lm_torch  # pylint: disable=g-import-not-at-top

  args = lm_torch.parse_args(TOY + ['--sides', 'kdjax,torch', '--repeats', '0'])
  parts = lm_torch.build_parts(args)
  sides = {name: lm_torch.Side(name, args, parts) for name in ('kdjax', 'torch')}
  history = lm_torch.check_losses(args, parts, sides, steps=3)  # raises if they differ
  assert len(history['torch']) == 3


_FAULTS_PROBE = r'''
import ctypes, resource, sys
sys.path.insert(0, sys.argv[1])
import _lm_common as common

libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB)

def faults_per_cycle():
  # Plain malloc (numpy asks for huge pages, which would hide the count).
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5

system = faults_per_cycle()
common.set_malloc('retain')
faults_per_cycle()  # grows the heap once
print(system, faults_per_cycle())
'''


def test_retained_malloc_stops_refaulting_freed_blocks():
  """`--malloc retain` makes a freed 64 MiB block come back without page
  faults; the system allocator maps it afresh (one fault per 4 KiB page).
  Runs in a subprocess: the setting is process-wide."""
  import subprocess  # pylint: disable=g-import-not-at-top

  benchmarks = str(pathlib.Path(common.__file__).parent)
  out = subprocess.run([sys.executable, '-c', _FAULTS_PROBE, benchmarks], check=True,
                       capture_output=True, text=True).stdout.split()
  system, retained = float(out[-2]), float(out[-1])
  pages = 64 * 2**20 / 4096
  assert system > 0.5 * pages, (system, pages)
  assert retained < 0.05 * pages, (retained, pages)
  assert common.malloc_description('system') != common.malloc_description('retain')
  with pytest.raises(ValueError, match='malloc must be one of'):
    common.set_malloc('jemalloc')


def test_time_alternating_reports_page_faults_per_step():
  import ctypes  # pylint: disable=g-import-not-at-top
  import mmap  # pylint: disable=g-import-not-at-top

  class Side:
    """Touches `size` bytes of fresh anonymous memory per step (or none)."""

    def __init__(self, size):
      self.size = size

    def run(self, k):
      for _ in range(k):
        if self.size:
          # mmap directly: whatever malloc settings this process has.
          with mmap.mmap(-1, self.size) as block:
            ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(block)), 1, self.size)

  faults = {}
  times = common.time_alternating({'none': Side(0), 'big': Side(64 * 2**20)}, warmup=1,
                                  repeats=3, steps=2, faults=faults)
  assert set(times) == set(faults) == {'none', 'big'}
  # 64 MiB of fresh pages per step: at least one fault per 2 MiB huge page.
  assert faults['big'] >= 32 and faults['big'] > 10 * max(faults['none'], 1.0), faults
