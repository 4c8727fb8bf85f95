"""Training loops: a whole epoch as one jitted scan (or a host loop), and a resumable driver.

For data sets that fit in device memory (MNIST-1D, digits, CIFAR on an
accelerator) an epoch is one compiled program: a seeded permutation, a
``lax.scan`` of the train step over minibatches, and metrics summed as
``(sum, count)`` pairs. On the CPU, where XLA runs convolution gradients
inside a loop slowly, the same epoch runs as a host loop of jitted steps
(:func:`compile_epoch_fn` chooses). :func:`fit` drives epochs with a progress bar,
JSONL/TensorBoard metrics, evaluation and checkpoints, resumes from the
latest checkpoint, and stops cleanly on SIGTERM or SIGINT (:class:`Preempted`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import contextlib
import logging
import signal
import threading
from typing import Any

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tqdm

from kdjax import checkpoint as checkpoint_lib
from kdjax import metrics as metrics_lib
from kdjax import parallel
from kdjax.step import TrainState
from kdjax.writers import MetricWriter

Arrays = Mapping[str, jax.Array]
TrainStep = Callable[[TrainState, Any, Arrays], tuple[TrainState, dict]]
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The checkpoint's metadata key for the metrics file's size when it was saved.
_METRICS_POSITION = 'metrics_position'

logger = logging.getLogger(__name__)


class Preempted(SystemExit):
  """:func:`fit` stopped on a signal after writing a checkpoint.

  A ``SystemExit`` with status 0: left uncaught it ends the program quietly
  with status 0 once ``finally`` blocks and context managers have run (a
  preempted job is not a failed one), while ``except Exception`` does not
  swallow it. A caller that wants to go on catches ``Preempted``.

  Attributes:
    signal_name: the signal received, e.g. ``'SIGTERM'``.
    step: the step of the checkpoint written.
    checkpoint: that checkpoint's directory.
  """

  def __init__(self, signal_name: str, step: int, checkpoint: str):
    super().__init__(0)
    self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint

  def __str__(self) -> str:
    return (f'stopped by {self.signal_name} at step {self.step}; '
            f'checkpoint {self.checkpoint} written, rerun the same command to resume')


class _StopRequests:
  """Turns the given signals into a flag while active (main thread only).

  A second SIGINT raises ``KeyboardInterrupt`` at once, for a user who does
  not want to wait for the current epoch. A signal received after the last
  check is raised again on exit, for the handlers restored.
  """

  def __init__(self, signals: Sequence[int]):
    self.signals = tuple(signals) if threading.current_thread() is threading.main_thread() else ()
    self.received: str | None = None
    self.acted = False
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name

  def __enter__(self):
    for signum in self.signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    if self.received is not None and not self.acted and exc_info[0] is None:
      # It came after the last check: pass it on to the handler it was meant for.
      signal.raise_signal(signal.Signals[self.received])


def _num_examples(data: Arrays) -> int:
  sizes = {name: np.shape(value)[0] for name, value in data.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f'data arrays must share their leading dimension, got {sizes}')
  return next(iter(sizes.values()))


def _epoch_order(key: jax.Array, num_examples: int, batch_size: int):
  """The epoch's ``[steps, batch_size]`` example indices and its augmentation key."""
  steps = num_examples // batch_size
  if steps == 0:
    raise ValueError(
        f'batch_size={batch_size} is larger than the data ({num_examples} examples)'
    )
  shuffle_key, augment_key = jax.random.split(key)
  order = jax.random.permutation(shuffle_key, num_examples)
  return order[: steps * batch_size].reshape(steps, batch_size), augment_key


def _minibatch_step(train_step, augment):
  """``step(state, teacher_variables, data, indices, index, augment_key)``: one minibatch."""

  def step(state, teacher_variables, data, indices, index, augment_key):
    batch = {name: value[indices] for name, value in data.items()}
    if augment is not None:
      batch = augment(batch, jax.random.fold_in(augment_key, index))
    return train_step(state, teacher_variables, batch)

  return step


def _check_batch_size(batch_size: int) -> None:
  if batch_size <= 0:
    raise ValueError(f'batch_size must be > 0, got {batch_size}')


def make_epoch_fn(
    train_step: TrainStep,
    *,
    batch_size: int,
    augment: Callable[[Arrays, jax.Array], Arrays] | None = None,
) -> Callable[[TrainState, Any, Arrays, jax.Array], tuple[TrainState, dict]]:
  """Returns ``epoch(state, teacher_variables, data, key) -> (state, metrics)``.

  The epoch shuffles the examples with `key`, drops the last partial batch,
  and scans `train_step` over ``num_examples // batch_size`` minibatches.
  Jit it with the state donated: ``jax.jit(epoch, donate_argnums=0)``, or
  let :func:`compile_epoch_fn` choose between this and a host loop.

  Args:
    train_step: from :func:`kdjax.step.make_train_step`.
    batch_size: examples per step.
    augment: optional ``augment(batch, key) -> batch`` applied to each
      minibatch (e.g. input jitter); teacher and student see the same
      augmented inputs.

  Returns:
    The epoch function; its metrics are summed ``(sum, count)`` pairs over
    the epoch's steps.
  """
  _check_batch_size(batch_size)
  step = _minibatch_step(train_step, augment)

  def epoch(state, teacher_variables, data, key):
    order, augment_key = _epoch_order(key, _num_examples(data), batch_size)

    def body(state, inputs):
      index, indices = inputs
      return step(state, teacher_variables, data, indices, index, augment_key)

    state, metrics = jax.lax.scan(body, state, (jnp.arange(order.shape[0]), order))
    return state, jax.tree.map(lambda x: jnp.sum(x, axis=0), metrics)

  return epoch


def make_host_epoch_fn(
    train_step: TrainStep,
    *,
    batch_size: int,
    augment: Callable[[Arrays, jax.Array], Arrays] | None = None,
) -> Callable[[TrainState, Any, Arrays, jax.Array], tuple[TrainState, dict]]:
  """The same epoch as :func:`make_epoch_fn`, driven from Python one jitted step at a time.

  The same batches in the same order (and the same augmentation keys) as the
  scanned epoch; the metrics are summed on the device by the step itself, so
  the host waits for nothing until the caller reads them. The data is put on
  the device once per epoch. The function is compiled already (the state is
  donated): do not wrap it in ``jax.jit``, which would unroll the loop.

  Why it exists: XLA:CPU runs some convolutions inside a while loop through
  a slow generic path (jax-ml/jax#12868), the kernel gradient of an NHWC or
  NWC convolution among them. With jax 0.10.2, the steps of the zoo's
  resnet8x4 and of the FastSpeech 2 student ran 62 and 43 times slower
  inside ``lax.scan`` than one by one (``benchmarks/epoch_loop.py``,
  docs/performance.md). :func:`compile_epoch_fn` picks this loop where that
  matters; for small steps without convolutions the scan is faster (no
  dispatch per step).
  """
  _check_batch_size(batch_size)
  step = _minibatch_step(train_step, augment)

  def accumulate(state, sums, teacher_variables, data, indices, index, augment_key):
    state, metrics = step(state, teacher_variables, data, indices, index, augment_key)
    return state, jax.tree.map(jnp.add, sums, metrics)

  # One compiled program for every step: the sums start at zeros shaped
  # like the step's metrics (read from its cached trace, not compiled).
  shapes = jax.jit(step)
  accumulate = jax.jit(accumulate, donate_argnums=(0, 1))
  order_fn = jax.jit(_epoch_order, static_argnums=(1, 2))

  def epoch(state, teacher_variables, data, key):
    data = jax.device_put(data)
    order, augment_key = order_fn(key, _num_examples(data), batch_size)
    metrics = shapes.eval_shape(state, teacher_variables, data, order[0], jnp.int32(0),
                                augment_key)[1]
    sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics)
    for index in range(order.shape[0]):
      state, sums = accumulate(state, sums, teacher_variables, data, order[index],
                               jnp.int32(index), augment_key)
    return state, sums

  return epoch


EPOCH_LOOPS = ('auto', 'scan', 'host')


def step_has_convolution(train_step: TrainStep, state: TrainState, teacher_variables: Any,
                         batch: Arrays) -> bool:
  """Whether `train_step` traced on `batch` (arrays or shape structs) contains a convolution."""
  jaxpr = jax.make_jaxpr(train_step)(state, teacher_variables, batch)

  def found(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated':
        return True
      for sub in jax_core.jaxprs_in_params(eqn.params):
        if found(sub):
          return True
    return False

  return found(jaxpr.jaxpr)


def auto_epoch_loop(train_step: TrainStep, state: TrainState, teacher_variables: Any,
                    batch: Arrays) -> str:
  """The loop ``compile_epoch_fn(loop='auto')`` picks for `train_step` on `batch`.

  ``'host'`` when the default backend is the CPU and the step contains a
  convolution (:func:`step_has_convolution`), ``'scan'`` otherwise.
  """
  if jax.default_backend() == 'cpu' and step_has_convolution(
      train_step, state, teacher_variables, batch):
    return 'host'
  return 'scan'


def compile_epoch_fn(
    train_step: TrainStep,
    *,
    batch_size: int,
    augment: Callable[[Arrays, jax.Array], Arrays] | None = None,
    loop: str = 'auto',
) -> Callable[[TrainState, Any, Arrays, jax.Array], tuple[TrainState, dict]]:
  """A compiled epoch, ready for :func:`fit`: the scanned one or the host loop.

  Args:
    train_step: from :func:`kdjax.step.make_train_step`.
    batch_size: examples per step.
    augment: as in :func:`make_epoch_fn`.
    loop: ``'scan'`` (:func:`make_epoch_fn` jitted with the state donated:
      one program per epoch), ``'host'`` (:func:`make_host_epoch_fn`), or
      ``'auto'``: :func:`auto_epoch_loop`, decided at the first call from
      the step's trace on one minibatch (the host loop on the CPU for a
      step with a convolution, the scan otherwise).

  Both loops give the same batches and, up to float rounding, the same
  states and metrics.
  """
  if loop not in EPOCH_LOOPS:
    raise ValueError(f'loop must be one of {EPOCH_LOOPS}, got {loop!r}')
  _check_batch_size(batch_size)
  if loop == 'scan':
    return jax.jit(make_epoch_fn(train_step, batch_size=batch_size, augment=augment),
                   donate_argnums=0)
  if loop == 'host':
    return make_host_epoch_fn(train_step, batch_size=batch_size, augment=augment)
  return _AutoEpoch(train_step, batch_size, augment)


class _AutoEpoch:
  """``compile_epoch_fn(..., loop='auto')``: chooses its loop at the first call.

  Attributes:
    loop: ``'scan'`` or ``'host'`` once called, ``None`` before.
  """

  def __init__(self, train_step, batch_size, augment):
    self._args = (train_step, batch_size, augment)
    self._fn = None
    self.loop: str | None = None

  def __call__(self, state, teacher_variables, data, key):
    if self._fn is None:
      train_step, batch_size, augment = self._args
      batch = {name: jax.ShapeDtypeStruct((batch_size, *np.shape(value)[1:]), value.dtype)
               for name, value in data.items()}
      self.loop = auto_epoch_loop(train_step, state, teacher_variables, batch)
      self._fn = compile_epoch_fn(train_step, batch_size=batch_size, augment=augment,
                                  loop=self.loop)
      logger.info('epoch loop: %s', self.loop)
    return self._fn(state, teacher_variables, data, key)


def evaluate(
    eval_step: Callable[[TrainState, Any, Arrays], dict],
    state: TrainState,
    teacher_variables: Any,
    data: Arrays,
    *,
    batch_size: int = 1024,
    mask_key: str = metrics_lib.MASK_KEY,
) -> dict[str, float]:
  """Means of `eval_step`'s metrics over all of `data`, padding not counted.

  The data is cut into batches of `batch_size`; the last one is padded
  (:func:`kdjax.metrics.pad_batch`) and masked with a `mask_key` entry, so
  every example counts exactly once (the eval step must read the same key).
  """
  num_examples = _num_examples(data)
  total = None
  for start in range(0, num_examples, batch_size):
    batch = {name: value[start : start + batch_size] for name, value in data.items()}
    # Data smaller than one batch is one unpadded batch.
    batch = metrics_lib.pad_batch(
        batch, min(batch_size, num_examples), mask_key=mask_key
    )
    total = metrics_lib.merge(total, eval_step(state, teacher_variables, batch))
  return metrics_lib.compute(total)


def fit(
    epoch_fn: Callable[[TrainState, Any, Arrays, jax.Array], tuple[TrainState, dict]],
    state: TrainState,
    teacher_variables: Any,
    data: Arrays,
    *,
    num_epochs: int,
    seed: int,
    evaluate_fn: Callable[[TrainState], Mapping[str, float]] | None = None,
    eval_every: int = 1,
    writer: MetricWriter | None = None,
    manager: ocp.CheckpointManager | None = None,
    save_every: int = 10,
    desc: str = 'train',
    progress: bool = True,
    config: Any = None,
    stop_signals: Sequence[int] = STOP_SIGNALS,
) -> TrainState:
  """Runs `num_epochs` epochs, resuming from `manager`'s latest checkpoint.

  Epoch ``e`` shuffles with ``fold_in(PRNGKey(seed), e)``, so a resumed run
  sees the same batches as an uninterrupted one. After every epoch the train
  metrics (and every `eval_every` epochs the `evaluate_fn` metrics, split
  ``'eval'``) go to `writer`, and the state is saved with the epoch as its
  data position every `save_every` epochs and at the end; an interrupted run
  resumes from the last save (the latest readable one:
  :func:`kdjax.checkpoint.restore`). With a `manager`, the `writer`'s
  ``metrics.jsonl`` belongs to the run: a resume cuts it back to what was
  written when the checkpoint was saved, and a fresh start (no checkpoint)
  empties it (:meth:`~kdjax.writers.MetricWriter.rewind`), so the final
  state and metrics file equal an uninterrupted run's bit for bit.
  Given a `config`, every save records it and a resume refuses a checkpoint
  saved with another config (:class:`kdjax.checkpoint.ConfigMismatchError`,
  naming the keys that changed).

  With a `manager`, a signal in `stop_signals` (SIGTERM, SIGINT) does not
  kill the run: the epoch under way finishes (a scanned epoch is one
  compiled program), a checkpoint is written, the writer is flushed, and
  :class:`Preempted` is raised (a ``SystemExit`` with status 0) naming the
  checkpoint, also after the last epoch (so that a script's next phase does
  not start). With several processes they agree after each epoch
  (:func:`kdjax.parallel.any_process`) and all stop after the same one, even
  if only some got the signal. A single process checks a Python flag: no
  device sync is added.

  Args:
    epoch_fn: from :func:`compile_epoch_fn` (or :func:`make_epoch_fn`
      jitted, or :func:`make_host_epoch_fn`).
    state: the initial state (also the restore target).
    teacher_variables: passed to every step; ``None`` without a teacher.
    data: device- or host-resident arrays with a shared leading dimension.
    num_epochs: epochs in all (including those already done before resume).
    seed: the shuffling seed.
    evaluate_fn: ``evaluate_fn(state) -> {name: mean}``.
    eval_every: evaluate every this many epochs (and after the last).
    writer: optional :class:`~kdjax.writers.MetricWriter`.
    manager: optional checkpoint manager from
      :func:`kdjax.checkpoint.make_manager`.
    save_every: save every this many epochs (and after the last).
    desc: the progress bar's label.
    progress: show a progress bar.
    config: what identifies this run (a ``ConfigDict`` or JSON-like tree,
      e.g. the experiment's config and the seed); ``None`` saves none and
      checks nothing.
    stop_signals: the signals that stop the run cleanly (only with a
      `manager`, and only when called from the main thread); ``()`` leaves
      signal handling alone.

  Returns:
    The final state.

  Raises:
    Preempted: a stop signal arrived; the checkpoint is written.
  """
  start = 0
  if manager is not None:
    restored = checkpoint_lib.restore(manager, state, config=config)
    if restored is None and writer is not None:
      writer.rewind(0, step=0)  # lines of a run that died before its first save
    if restored is not None:
      state, data_state, metadata = restored
      if not data_state or 'epoch' not in data_state:
        raise ValueError(
            f"the latest checkpoint in {manager.directory} has no epoch in its data "
            f"position ({data_state!r}); it was not written by fit()"
        )
      start = int(data_state['epoch'])
      if writer is not None and metadata.get(_METRICS_POSITION) is not None:
        writer.rewind(metadata[_METRICS_POSITION], step=int(jax.device_get(state.step)))
  stops = _StopRequests(stop_signals if manager is not None else ())
  with stops, contextlib.closing(
      tqdm.tqdm(range(start, num_epochs), desc=desc, disable=not progress, leave=False)) as bar:
    for epoch in bar:
      key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
      state, metrics = epoch_fn(state, teacher_variables, data, key)
      step = _log_epoch(state, metrics, epoch, num_epochs, evaluate_fn, eval_every, writer, bar)
      due = (epoch + 1) % save_every == 0 or epoch + 1 == num_epochs
      if manager is not None and due:
        _save(manager, state, epoch, writer, config)
      # Checked after the save, so that a signal during it is seen now.
      stopping = bool(stops.signals) and parallel.any_process(stops.received is not None)
      if stopping:  # even after the last epoch: the caller's next phase must not start
        stops.acted = True
        if not due:
          _save(manager, state, epoch, writer, config)
        manager.wait_until_finished()
        if writer is not None:
          writer.flush()
        preempted = Preempted(stops.received or 'a signal in another process', step,
                              str(manager.directory / str(step)))
        logger.warning('%s', preempted)
        raise preempted
  if manager is not None:
    manager.wait_until_finished()
  return state


def _save(manager, state, epoch, writer, config) -> None:
  metadata = {_METRICS_POSITION: writer.position() if writer is not None else None}
  checkpoint_lib.save(manager, state, data_state={'epoch': epoch + 1}, config=config,
                      metadata=metadata, force=True)


def _log_epoch(state, metrics, epoch, num_epochs, evaluate_fn, eval_every, writer, bar) -> int:
  """Writes an epoch's train (and eval) metrics; returns the step reached."""
  means = metrics_lib.compute(metrics)
  step = int(jax.device_get(state.step))
  postfix = {'loss': f"{means.get('loss/total', float('nan')):.4f}"}
  if writer is not None:
    writer.write(step, means, split='train')
  if evaluate_fn is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == num_epochs):
    eval_means = dict(evaluate_fn(state))
    if writer is not None:
      writer.write(step, eval_means, split='eval')
    if 'acc/student' in eval_means:
      postfix['eval_acc'] = f"{eval_means['acc/student']:.4f}"
  bar.set_postfix(postfix)
  return step
