r"""t5x-style trainer for TIGER over cached tasks.

  python -m tiger_jax.train --gin_file=gin/beauty.gin --gin.MODEL_DIR=\"/tmp/beauty\"

Speed comes from three things the host loop does not do per step: the training split lives on the devices
(replicated; it is a few tens of MB), a jitted loop runs up to `steps_per_dispatch` optimizer steps per
call and gathers each batch on device by index, and optional length buckets trim the encoder input of a
whole chunk of steps to the bucket's length (most sessions are far shorter than 20 items). The batch at a
step is a pure function of (seed, step), so rerunning the same command after a crash resumes exactly from
the latest checkpoint.

Stopping: the first SIGTERM (preemption, `kill`) or SIGINT (Ctrl-C) lets the dispatch in flight finish,
cuts a validation pass short (it runs again on resume), writes the last finished step's checkpoint,
waits until it is complete on disk and logs the step that is there. A second signal exits at once,
without a new checkpoint. Exit codes: 0 done, 3 non-finite loss, 128 + the signal when stopped by one
(143 for SIGTERM, 130 for SIGINT, as shells report them).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tiger_jax import checkpoints as checkpoints_lib
from tiger_jax import compilation
from tiger_jax import gin_utils
from tiger_jax import model_dir_lock
from tiger_jax import partitioning
from tiger_jax import program_cache as program_cache_lib
from tiger_jax import provenance
from tiger_jax import utils

log = logging.getLogger("tiger_jax.train")


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss; the last good checkpoint was left as it was."""


class CheckpointMismatchError(ValueError):
  """MODEL_DIR's checkpoint does not fit the configured model (e.g. a changed network config)."""


# ----------------------------------------------------------------------------------------------------------
# Evaluation hooks.


@dataclasses.dataclass
class EvalContext:
  """What a validation metric function gets; `cache` lives for the whole run (compiled fns, arrays)."""
  model: Any
  params: Any
  step: int
  partitioner: partitioning.PjitPartitioner
  train_eval_dataset_cfg: Optional[utils.DatasetConfig]
  infer_eval_dataset_cfg: Optional[utils.DatasetConfig]
  length_buckets: Optional[Sequence[int]]
  model_dir: str
  cache: dict
  eval_steps: Optional[int] = None  # batches of train_eval to use (the split's first rows); None: all
  # True once the run was asked to stop; long metric functions poll it between batches and then raise
  # utils.StopRequested, so a signal does not wait for a whole validation pass.
  stop_requested: Callable[[], bool] = lambda: False
  # The run's traced-program cache (tiger_jax/program_cache.py) when gin configured it, else None.
  program_cache: Optional[Any] = None
  # Build and compile the programs a validation pass runs, evaluate nothing, return {}: asked only of metric
  # functions marked utils.compiles_ahead, while the training loops compile.
  compile_only: bool = False


EvalMetricFn = Callable[[EvalContext], Mapping[str, float]]


def pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """Pads every feature with all-pad rows up to `rows` (a fixed shape for the jitted function)."""
  out = {}
  for k, v in batch.items():
    missing = rows - v.shape[0]
    out[k] = np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1)) if missing else v
  return out


def eval_params(state: Mapping[str, Any]) -> Any:
  """The parameters that evaluation, the best checkpoint and serving use: the EMA when training keeps one."""
  return state.get("ema_params", state["params"])


def resident_rows(num_examples: int) -> int:
  """Rows of the device-resident training split: the next power of two.

  The split is an argument of the compiled loop, so its row count is part of the program. Rounded up,
  a split and its refit on train + validation (one more example per user) share that shape, and so their
  compiled loops: both splits of Beauty (131,413 and 153,776 examples) and of Sports (189,543 and 225,141)
  take 262,144 rows. Padding rows are never sampled; they cost at most the split's own device memory again.
  """
  return 1 << max(0, num_examples - 1).bit_length()


@utils.compiles_ahead
def validation_loss(ctx: EvalContext) -> dict[str, float]:
  """Per-token negative log-likelihood of the targets on the `train_eval` split (via score_batch)."""
  cfg = ctx.train_eval_dataset_cfg
  if cfg is None:
    return {}
  first_pass = "validation_loss" not in ctx.cache
  if first_pass:
    arrays = utils.get_dataset_arrays(cfg, utils.MODEL_FEATURES)
    if ctx.eval_steps:
      arrays = {k: v[:ctx.eval_steps * cfg.batch_size] for k, v in arrays.items()}
    ctx.partitioner.check_batch_size(cfg.batch_size)
    model = ctx.model
    score = ctx.partitioner.partition(
        lambda params, batch: model.score_batch(params, batch),
        in_axis_resources=(ctx.partitioner.replicated, ctx.partitioner.data_sharding()),
        out_axis_resources=ctx.partitioner.replicated)  # every process can read the scores
    lengths = utils.nonpad_lengths(arrays[utils.ENCODER_INPUT])
    batches = list(utils.eval_batches(lengths, cfg.batch_size, ctx.length_buckets,
                                      arrays[utils.ENCODER_INPUT].shape[1]))
    ctx.cache["validation_loss"] = (arrays, score, batches)
  arrays, score, batches = ctx.cache["validation_loss"]

  def run(i: int):
    idx, length = batches[i]
    batch = {k: arrays[k][idx] for k in utils.MODEL_FEATURES}
    batch[utils.ENCODER_INPUT] = batch[utils.ENCODER_INPUT][:, :length]
    batch = pad_rows(batch, cfg.batch_size)
    return len(idx), score(ctx.params, ctx.partitioner.shard_global_batch(batch))

  results: list = [None] * len(batches)
  if ctx.stop_requested():
    raise utils.StopRequested(f"validation loss at step {ctx.step}")
  if first_pass:
    # The first batch of every length runs first, each in its own thread, so the lengths' programs compile side
    # by side (XLA compiles outside the GIL) instead of one after another. Several processes must launch their
    # programs in the same order, so there they run one after another. compile_only runs just these batches.
    firsts = sorted({length: i for i, (_, length) in reversed(list(enumerate(batches)))}.values())
    side_by_side = jax.process_count() == 1 and len(firsts) > 1
    if side_by_side or ctx.compile_only:
      with concurrent.futures.ThreadPoolExecutor(len(firsts) if side_by_side else 1) as pool:
        for i, result in zip(firsts, pool.map(run, firsts)):
          results[i] = result
  if ctx.compile_only:
    # Finished before the training loop's first dispatch donates the params these batches read.
    jax.block_until_ready([result for result in results if result is not None])
    return {}
  for i in range(len(batches)):
    if results[i] is None:
      if ctx.stop_requested():
        raise utils.StopRequested(f"validation loss at step {ctx.step}")
      results[i] = run(i)
  total_logp, count = 0.0, 0
  for n, scores in results:
    total_logp += float(np.sum(np.asarray(jax.device_get(scores), np.float64)[:n]))
    count += n
  tokens = float(np.sum(arrays[utils.DECODER_WEIGHTS][np.concatenate([i for i, _ in batches])]))
  return {"validation/loss": -total_logp / max(tokens, 1.0),
          "validation/sequence_nll": -total_logp / max(count, 1),
          "validation/examples": float(count)}


# ----------------------------------------------------------------------------------------------------------
# Summaries.


# Characters a TensorBoard tag may not hold; each becomes '_' (`validation/ndcg@10` shows as `ndcg_10`).
_TAG_ILLEGAL = re.compile(r"[^-/\w.]")


class _Summaries:
  """TensorBoard (tensorboardX when importable) plus a JSON-lines log, written by process 0 only.

  Tags are made legal here, the same way tensorboardX would, so it does not log a line per metric per eval;
  metrics.jsonl keeps the original names."""

  def __init__(self, model_dir: str, enabled: bool):
    self.enabled = enabled and jax.process_index() == 0
    self._writers: dict[str, Any] = {}
    self._model_dir = model_dir
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(model_dir, exist_ok=True)
    self._jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter
    except ImportError:
      log.warning("tensorboardX is not installed: metrics go to %s/metrics.jsonl only", model_dir)

  def _writer(self, group: str):
    if self._tb is None:
      return None
    if group not in self._writers:
      self._writers[group] = self._tb(os.path.join(self._model_dir, group))
    return self._writers[group]

  def scalars(self, step: int, values: Mapping[str, float], default_group: str = "train") -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n")
    self._jsonl.flush()
    for key, value in values.items():
      group, _, tag = key.rpartition("/")
      writer = self._writer(group or default_group)
      if writer is not None:
        writer.add_scalar(_TAG_ILLEGAL.sub("_", tag), float(value), int(step))

  def text(self, step: int, tag: str, text: str) -> None:
    writer = self._writer("train") if self.enabled else None
    if writer is not None:
      writer.add_text(tag, text, int(step))

  def flush(self) -> None:
    for writer in self._writers.values():
      writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    if self._jsonl is not None:
      self._jsonl.close()


# ----------------------------------------------------------------------------------------------------------
# The jitted multi-step loop.


def _scalar_metrics(metrics: Any) -> dict[str, Any]:
  """Scalar array entries of a model's metrics dict (other kinds of metric objects are skipped)."""
  out = {}
  if isinstance(metrics, Mapping):
    for k, v in metrics.items():
      if isinstance(v, (jax.Array, np.ndarray)) and np.ndim(v) == 0:
        out[str(k)] = v
  return out


class StepRunner:
  """Builds and caches one compiled multi-step function per encoder length.

  Each loop is compiled with `compiler_options`. By default a loop on one device takes
  `compilation.DEVICE_LOOP_COMPILER_OPTIONS` (on a GPU the whole loop is one CUDA graph whose independent
  kernels run side by side); a loop over several devices, whose steps hold collectives and have not been
  timed that way, keeps XLA's defaults, as {} does.

  `fixed_trip_count` compiles full dispatches as a loop of exactly steps_per_dispatch steps (a partial
  dispatch then needs a second program); off, one program per length loops a run-time number of steps.
  The trainer leaves it off; benchmarks/profile_step.py --loop fixed,dynamic compares the two.
  """

  def __init__(self, model, tx, learning_rate_fn, partitioner: partitioning.PjitPartitioner,
               steps_per_dispatch: int, resident: bool, ema_decay: Optional[float] = None,
               fixed_trip_count: bool = False, program_cache: Optional[Any] = None,
               compiler_options: Optional[Mapping[str, Any]] = None):
    self.model = model
    self.ema_decay = ema_decay
    self.tx = tx
    self.learning_rate_fn = learning_rate_fn
    self.partitioner = partitioner
    self.k = steps_per_dispatch
    self.resident = resident
    self.fixed_trip_count = fixed_trip_count
    self.program_cache = program_cache  # program_cache.ProgramCache: traced loops kept on disk
    if compiler_options is None:
      compiler_options = compilation.DEVICE_LOOP_COMPILER_OPTIONS if partitioner.mesh.size == 1 else {}
    self.compiler_options = dict(compiler_options)
    self._compiled: dict[tuple[int, bool], Any] = {}
    self._step_outputs = None  # shapes of one_step's outputs, the same at every encoder length
    self._step_outputs_lock = threading.Lock()
    self.compile_seconds: dict[int, float] = {}
    self.lower_seconds: dict[int, float] = {}

  def one_step(self, state, batch, dropout_base):
    step = state["step"]
    rng = jax.random.fold_in(dropout_base, step)
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: self.model.loss_fn(p, batch, rng), has_aux=True)(state["params"])
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": step + 1, "params": params, "opt_state": opt_state}
    if self.ema_decay is not None:
      d = self.ema_decay
      new_state["ema_params"] = jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p,
                                                       state["ema_params"], params)
    out = {"loss": jnp.asarray(loss, jnp.float32), "grad_norm": utils.global_norm(grads),
           "learning_rate": jnp.asarray(self.learning_rate_fn(step), jnp.float32)}
    for k, v in _scalar_metrics(metrics).items():
      out.setdefault(k, jnp.asarray(v, jnp.float32))
    return new_state, out

  def step_outputs(self, state, batch, dropout_base):
    """The shapes of one_step's outputs (scalars, whatever the encoder length), traced once per runner:
    tracing the step for them takes as long as tracing it into a loop, so each further loop saves that."""
    with self._step_outputs_lock:  # loops of several lengths trace side by side (precompile)
      if self._step_outputs is None:
        self._step_outputs = jax.eval_shape(self.one_step, state, batch, dropout_base)[1]
      return self._step_outputs

  def _build(self, length: int, full: bool):
    k = self.k
    data_sharding = self.partitioner.data_sharding()

    def get_batch(data, idx, i):
      if self.resident:
        rows = idx[i]
        batch = {f: jnp.take(data[f], rows, axis=0) for f in utils.MODEL_FEATURES}
        batch[utils.ENCODER_INPUT] = batch[utils.ENCODER_INPUT][:, :length]
      else:
        batch = {f: data[f][i] for f in utils.MODEL_FEATURES}
      return jax.lax.with_sharding_constraint(batch, data_sharding)

    def multi_step(state, data, idx, n, dropout_base):
      sample = self.step_outputs(state, get_batch(data, idx, 0), dropout_base)
      outs = jax.tree_util.tree_map(lambda s: jnp.zeros((k,) + s.shape, s.dtype), sample)

      def body(i, carry):
        state, outs = carry
        state, out = self.one_step(state, get_batch(data, idx, i), dropout_base)
        outs = jax.tree_util.tree_map(lambda buf, v: buf.at[i].set(v), outs, out)
        return state, outs

      # With fixed_trip_count, a full dispatch loops a compile-time number of times (XLA then knows the
      # trip count); otherwise, and for a partial dispatch, the loop runs the run-time n.
      return jax.lax.fori_loop(0, k if full else n, body, (state, outs))

    in_shardings, out_shardings = self._shardings()
    return self.partitioner.partition(multi_step, in_axis_resources=in_shardings,
                                      out_axis_resources=out_shardings, donate_argnums=(0,))

  def _shardings(self):
    """The loop's (in, out) shardings over (state, data, idx, n, dropout_base) and (state, outputs)."""
    rep = self.partitioner.replicated
    data_spec = rep if self.resident else self.partitioner.data_sharding(batch_axis=1)
    return (rep, data_spec, rep, rep, rep), (rep, rep)

  def get(self, length: int, state, data, idx, n, dropout_base, full: bool = True):
    """The compiled loop for `length`; with fixed_trip_count, `full` picks the loop of exactly
    steps_per_dispatch steps (n ignored), else the loop runs n steps."""
    full = full and self.fixed_trip_count
    key = (length, full)
    if key not in self._compiled:
      start = time.time()
      loop = self._build(length, full)
      compiled, from_disk = None, False
      if self.program_cache is not None:
        compiled, from_disk = self.program_cache.compile(loop, state, (data, idx, n, dropout_base),
                                                         (length, full, self.k), *self._shardings(),
                                                         compiler_options=self.compiler_options)
      if compiled is None:
        lowered = loop.lower(state, data, idx, n, dropout_base)
        lowered_at = time.time()
        compiled = lowered.compile(self.compiler_options)
        self.lower_seconds[length] = self.lower_seconds.get(length, 0.0) + lowered_at - start
        # Tracing and lowering run in Python; the XLA compilation cache serves only what follows them.
        how = f"{lowered_at - start:.1f}s tracing and lowering"
      else:
        how = "traced program from disk" if from_disk else "traced and stored"
      self._compiled[key] = compiled
      seconds = time.time() - start
      self.compile_seconds[length] = self.compile_seconds.get(length, 0.0) + seconds
      log.info("compiled the %s%d-step loop for encoder length %d in %.1fs (%s)",
               "fixed " if full else "", self.k, length, seconds, how)
    return self._compiled[key]

  def precompile(self, lengths: Sequence[int], args_for: Callable[[int], tuple]) -> None:
    """Compiles the loops of several encoder lengths at once: XLA compiles outside the GIL, and on a GPU
    each length's compile (autotuning included) took about a minute when done one after another."""
    todo = [length for length in lengths if (length, self.fixed_trip_count) not in self._compiled]
    if len(todo) < 2:
      for length in todo:
        self.get(length, *args_for(length))
      return
    with concurrent.futures.ThreadPoolExecutor(len(todo)) as pool:
      for future in [pool.submit(self.get, length, *args_for(length)) for length in todo]:
        future.result()


# ----------------------------------------------------------------------------------------------------------
# train().


@dataclasses.dataclass
class TrainResult:
  """What train() returns: the final step and state, and this invocation's per-step losses."""
  step: int
  state: Any
  start_step: int
  losses: np.ndarray
  evals: list
  best: Optional[dict]
  steps_per_second: float  # while training: compile, eval and checkpoint time excluded
  seconds: float = 0.0  # wall time of the loop, everything included
  compile_seconds: Optional[dict] = None  # per encoder length
  # encoder length -> (ms per step, steps timed) while training; a dispatch is timed from the end of the one
  # before it, so the first dispatch of the run is not counted.
  ms_per_step_by_length: Optional[dict] = None
  stopped_by_signal: Optional[int] = None  # SIGTERM or SIGINT ended the run early (after a checkpoint)
  stopped_early: bool = False  # best_metric had not improved for early_stopping_steps (after a checkpoint)
  partial_chunks: Optional[bool] = None  # the batch schedule's chunking (a resumed run keeps its checkpoint's)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A stop signal the command line caught while train() was still setting up (reading data, restoring); the
# training loop's handlers take it over, so the run stops before its first step instead of losing it.
_early_signal: Optional[int] = None


def _note_early_signal(signum, frame) -> None:
  del frame
  global _early_signal
  name = signal.Signals(signum).name
  if _early_signal is not None:
    log.error("%s again: exiting before training started; no step of this run was trained", name)
    logging.shutdown()
    os._exit(128 + signum)
  _early_signal = signum
  log.warning("%s: the run stops once it is set up, before its first step (send it again to exit now)", name)


class _StopSignals:
  """SIGTERM and SIGINT handlers for the training loop: the first asks the loop to checkpoint and stop, a
  second one exits at once (the latest complete checkpoint stays as it is; orbax never leaves a partial one)."""

  def __init__(self, model_dir: str):
    self.model_dir = model_dir
    self.signal: Optional[int] = None
    self._previous: dict[int, Any] = {}

  def install(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return  # signal handlers can only be set from the main thread; the caller keeps its own
    self.signal = _early_signal
    for signum in STOP_SIGNALS:
      if signal.getsignal(signum) is signal.SIG_IGN:
        continue  # ignored by whoever started us (e.g. SIGINT for a shell's background job): keep it so
      self._previous[signum] = signal.signal(signum, self._handle)

  def restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def requested(self) -> bool:
    return self.signal is not None

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.signal is None:
      self.signal = signum
      log.warning("%s: stopping after the step in flight and checkpointing it (send it again to exit at once "
                  "without a new checkpoint)", name)
      return
    steps = checkpoints_lib.saved_steps(checkpoints_lib.checkpoint_dir(self.model_dir))
    log.error("%s again: exiting now without a new checkpoint; the latest complete checkpoint on disk is %s",
              name, f"step {steps[-1]}" if steps else "none")
    logging.shutdown()
    os._exit(128 + signum)


def _next_multiple(step: int, period: Optional[int]) -> float:
  if not period:
    return math.inf
  return (step // period + 1) * period


def _holding_the_model_dir_lock(fn):
  """Runs `fn(model_dir=..., ...)` holding MODEL_DIR's lock (process 0 takes it for all processes)."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if jax.process_index() != 0:
      return fn(*args, **kwargs)
    with model_dir_lock.ModelDirLock(kwargs["model_dir"]):
      return fn(*args, **kwargs)

  return wrapper


def _schedule_of_checkpoint(schedule: utils.BatchSchedule, recorded: dict) -> utils.BatchSchedule:
  """The configured schedule, with the chunking (full or partial chunks) the checkpoint was trained with.

  A run checkpointed under the other chunking (before the default changed, or with another binding) resumes
  on its own batches instead of switching schedules half way.
  """
  recorded_partial = bool(recorded.get("partial_chunks", False))
  if recorded_partial == schedule.partial_chunks or len(schedule.buckets) < 2:
    return schedule
  log.info("resuming with %s chunks, as the checkpoint was trained", "partial" if recorded_partial else "full")
  return schedule.with_partial_chunks(recorded_partial)


@_holding_the_model_dir_lock
def train(*,
          model: Any,
          train_dataset_cfg: utils.DatasetConfig,
          train_eval_dataset_cfg: Optional[utils.DatasetConfig] = None,
          infer_eval_dataset_cfg: Optional[utils.DatasetConfig] = None,
          checkpoint_cfg: Optional[utils.CheckpointConfig] = None,
          partitioner: Optional[partitioning.PjitPartitioner] = None,
          model_dir: str,
          total_steps: int,
          eval_period: int = 1000,
          stats_period: Optional[int] = None,
          random_seed: Optional[int] = 0,
          learning_rate_fn: Optional[Callable[[Any], Any]] = None,
          optimizer_fn: Callable[..., optax.GradientTransformation] = utils.adafactor,
          steps_per_dispatch: int = 100,
          length_buckets: Optional[Sequence[int]] = None,
          bucket_partial_chunks: bool = True,
          resident_data: bool = True,
          eval_metric_fns: Sequence[EvalMetricFn] = (validation_loss,),
          best_metric: Optional[str] = "validation/loss",
          best_mode: str = "min",
          run_eval_before_training: bool = False,
          eval_steps: Optional[int] = None,
          use_hardware_rng: bool = False,
          use_tensorboard: bool = True,
          ema_decay: Optional[float] = None,
          early_stopping_steps: Optional[int] = None) -> TrainResult:
  """Trains `model` for `total_steps` steps, resuming from MODEL_DIR's latest checkpoint if any.

  Args mirror t5x's train(); TIGER-specific ones:
    learning_rate_fn: step -> learning rate (default: t5x's constant * rsqrt_decay, 0.01 up to 10k steps).
    optimizer_fn: learning_rate_fn -> optax transformation (default Adafactor with t5x's settings).
    steps_per_dispatch: optimizer steps per jitted call (K); dispatches stop at eval/checkpoint steps.
    length_buckets: encoder lengths (e.g. [17, 33, 81]) to trim batches to; None trains at full length.
    bucket_partial_chunks: a bucket's last run of steps may be shorter than steps_per_dispatch, so every
      example trains once per epoch at its own bucket's length (the default: fewer steps at the longest
      length); False moves leftovers up to the next longer bucket and repeats examples of the longest one
      to fill its last run (utils.BatchSchedule). A resumed run keeps the choice its checkpoint was made with.
    resident_data: keep the training split on the devices and gather batches there.
    eval_metric_fns: called every `eval_period` steps with an EvalContext; their merged dict is logged. Those
      marked utils.compiles_ahead are also called once with `compile_only` while the training loops compile.
    best_metric / best_mode: which eval metric picks the checkpoint kept under MODEL_DIR/best.
    eval_steps: evaluate only the first eval_steps batches of train_eval (t5x's name); None: all of it.
    use_hardware_rng: t5x's option: dropout masks from the faster 'unsafe_rbg' generator instead of
      threefry (still deterministic on one device topology; results then depend on the device count).
    ema_decay: keep an exponential moving average of the parameters, ema = d * ema + (1 - d) * params
      after every step (not t5x's; started from the initial parameters). Validation, the best
      checkpoint and `checkpoints.restore_params` (eval, infer) then use the average; training and
      resuming use the raw parameters, both of which periodic checkpoints hold.
    early_stopping_steps: stop (after a checkpoint) at the first evaluation where `best_metric` has not
      improved for this many steps; a rerun of a run that stopped so trains nothing. None: never stop early.
  """
  partitioner = partitioner or partitioning.PjitPartitioner()
  checkpoint_cfg = checkpoint_cfg or utils.CheckpointConfig()
  save_cfg = checkpoint_cfg.save or utils.SaveCheckpointConfig()
  restore_cfg = checkpoint_cfg.restore
  learning_rate_fn = learning_rate_fn or utils.create_learning_rate_scheduler()
  random_seed = 0 if random_seed is None else int(random_seed)
  stats_period = stats_period or min(eval_period or 100, 100)
  steps_per_dispatch = max(1, int(steps_per_dispatch))
  if best_mode not in ("min", "max"):
    raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
  if total_steps < 0:
    raise ValueError(f"total_steps must be >= 0, got {total_steps}")
  if ema_decay is not None and not 0.0 < ema_decay < 1.0:
    raise ValueError(f"ema_decay must be in (0, 1) or None, got {ema_decay}")
  if early_stopping_steps is not None and early_stopping_steps <= 0:
    raise ValueError(f"early_stopping_steps must be > 0 or None, got {early_stopping_steps}")
  if use_hardware_rng:
    jax.config.update("jax_default_prng_impl", "unsafe_rbg")
  os.makedirs(model_dir, exist_ok=True)

  # Data.
  batch_size = train_dataset_cfg.batch_size
  partitioner.check_batch_size(batch_size)
  arrays = utils.get_dataset_arrays(train_dataset_cfg, utils.MODEL_FEATURES)
  width = arrays[utils.ENCODER_INPUT].shape[1]
  data_seed = random_seed if train_dataset_cfg.seed is None else int(train_dataset_cfg.seed)
  schedule = utils.BatchSchedule(utils.nonpad_lengths(arrays[utils.ENCODER_INPUT]), batch_size,
                                 seed=data_seed, shuffle=train_dataset_cfg.shuffle,
                                 buckets=length_buckets, chunk_steps=steps_per_dispatch, max_length=width,
                                 partial_chunks=bucket_partial_chunks)
  log.info("train split: %d examples, batch %d, %d steps per epoch, encoder buckets %s",
           schedule.num_examples, batch_size, schedule.steps_per_epoch, list(schedule.buckets))
  device_data = None
  if resident_data:
    device_data = partitioner.replicate(pad_rows(arrays, resident_rows(schedule.num_examples)))

  # Model, optimizer and state.
  tx = optimizer_fn(learning_rate_fn)
  input_shapes = {utils.ENCODER_INPUT: (1, width),
                  utils.DECODER_INPUT: (1, arrays[utils.DECODER_INPUT].shape[1]),
                  utils.DECODER_TARGET: (1, arrays[utils.DECODER_TARGET].shape[1])}

  def init_state(rng):
    params = model.get_initial_variables(rng, input_shapes)["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    if ema_decay is not None:
      state["ema_params"] = params
    return state

  rep = partitioner.replicated
  init_rng, dropout_base = jax.random.split(jax.random.PRNGKey(random_seed))
  init_fn = jax.jit(init_state, out_shardings=rep)
  abstract_state = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
                                          jax.eval_shape(init_state, init_rng))
  ckpt = checkpoints_lib.TrainCheckpointer(model_dir, keep=save_cfg.keep, keep_best=save_cfg.keep_best,
                                           async_save=save_cfg.async_save)
  try:
    state, best = None, None
    eval_pending = False  # the restored step's validation was due but cut short by a stop signal
    latest = ckpt.latest_step()
    cache = provenance.cache_fingerprint(train_dataset_cfg.cache_dir, train_dataset_cfg.mixture_or_task_name)
    if latest is not None:
      provenance.check_cache(model_dir, cache, "resuming training", strict=True)
      try:
        state, meta = ckpt.restore(latest, abstract_state)
      except ValueError as e:
        raise CheckpointMismatchError(
            f"{checkpoints_lib.checkpoint_dir(model_dir)}/{latest} does not fit the configured model "
            f"({str(e).splitlines()[0]}): resume with the configuration it was trained with "
            f"({os.path.join(model_dir, 'config.gin')}, left unchanged), or train into a new MODEL_DIR") from e
      eval_pending = bool(meta.get("eval_pending", False))
      state = _cast_state_params(state, "float32")
      if meta.get("schedule"):
        schedule = _schedule_of_checkpoint(schedule, meta["schedule"])
      if meta.get("schedule") and meta["schedule"] != schedule.fingerprint():
        log.warning("the data schedule differs from the checkpoint's (%s vs %s): the resumed run will not "
                    "see the same batches as an uninterrupted one", schedule.fingerprint(), meta["schedule"])
      log.info("resumed from %s at step %d", checkpoints_lib.checkpoint_dir(model_dir), latest)
    elif restore_cfg is not None and restore_cfg.path:
      state = _restore_initial(restore_cfg, abstract_state, init_fn, init_rng)
    if state is None:
      state = init_fn(init_rng)
    # Written only now that the data, the cache's provenance and the restored state have been checked, so a
    # refused resume leaves MODEL_DIR's config and records as they were.
    if jax.process_index() == 0 and (latest is None or provenance.read(model_dir) is None):
      provenance.write(model_dir, cache)
    config_path = gin_utils.write_config(model_dir)
    summaries = _Summaries(model_dir, use_tensorboard)
    best = ckpt.best_record()
  except BaseException:
    ckpt.close()  # an error here must not leave orbax's background threads running into interpreter exit
    raise
  dropout_base = partitioner.replicate(np.asarray(jax.device_get(dropout_base)))

  step = int(jax.device_get(state["step"]))
  start_step = step

  def patience_exhausted(at_step: int) -> bool:
    return bool(early_stopping_steps and best_metric and best is not None
                and at_step - best["step"] >= early_stopping_steps)

  stopped_early = step < total_steps and patience_exhausted(step)
  if stopped_early:
    log.info("%s has not improved since step %d (best %.4g): the run stopped early at step %d and trains "
             "no further", best_metric, best["step"], best["value"], step)
  runner = StepRunner(model, tx, learning_rate_fn, partitioner, steps_per_dispatch, resident_data, ema_decay,
                      program_cache=program_cache_lib.for_gin_run())
  eval_ctx_cache: dict = {}
  losses: list[np.ndarray] = []
  evals: list[dict] = []
  save_period = save_cfg.period or eval_period or max(total_steps, 1)
  eval_due = lambda s: bool(eval_period and s % eval_period == 0) or s >= total_steps
  evaluated = {"step": None}  # the last step whose validation pass completed
  ckpt_meta = lambda s: {"step": int(s), "schedule": schedule.fingerprint(), "total_steps": int(total_steps),
                         "best": best, "time": time.time(),
                         "eval_pending": eval_due(s) and evaluated["step"] != s}
  if config_path:
    summaries.text(step, "gin/config", "```\n" + open(config_path).read() + "\n```")

  def eval_context(at_step: int, state_now, compile_only: bool = False) -> EvalContext:
    return EvalContext(model=model, params=eval_params(state_now), step=at_step, partitioner=partitioner,
                       train_eval_dataset_cfg=train_eval_dataset_cfg,
                       infer_eval_dataset_cfg=infer_eval_dataset_cfg, length_buckets=length_buckets,
                       model_dir=model_dir, cache=eval_ctx_cache, eval_steps=eval_steps,
                       stop_requested=stop.requested, program_cache=runner.program_cache,
                       compile_only=compile_only)

  def run_eval(at_step: int, state_now) -> bool:
    """Validates at `at_step`; False when a stop signal cut it short (nothing is recorded then)."""
    nonlocal best
    ctx = eval_context(at_step, state_now)
    start = time.time()
    results: dict[str, float] = {}
    try:
      for fn in eval_metric_fns or ():
        if stop.requested():
          raise utils.StopRequested(f"validation at step {at_step}")
        results.update({k: float(v) for k, v in fn(ctx).items()})
    except utils.StopRequested:
      log.warning("validation at step %d cut short by the stop signal; it runs again when the run resumes",
                  at_step)
      return False
    evaluated["step"] = at_step
    if not results:
      return True
    evals.append({"step": at_step, **results})
    summaries.scalars(at_step, results)
    line = " ".join(f"{k} {v:.4g}" for k, v in sorted(results.items()))
    if best_metric and best_metric in results:
      value = results[best_metric]
      better = best is None or (value < best["value"] if best_mode == "min" else value > best["value"])
      if better and math.isfinite(value):
        best = {"step": at_step, "metric": best_metric, "value": value, "mode": best_mode}
        ckpt.save_best(at_step, eval_params(state_now), best)
      line += f" | best {best_metric} {best['value']:.4f} @ {best['step']}" if best else ""
    elif best_metric:
      log.warning("best_metric %r is not among the eval metrics %s", best_metric, sorted(results))
    log.info("eval at step %d (%.1fs): %s", at_step, time.time() - start, line)
    return True

  # Main loop. Metrics of a dispatch are read after the next one is queued, so the device never waits.
  clock = {"paused": 0.0}  # seconds spent compiling, evaluating and checkpointing (not training)
  # Per encoder length, [seconds, steps] of the dispatches timed between the ends of consecutive ones (the
  # device runs them back to back), paused time excluded.
  by_length: dict[int, list] = {}
  last_drain: dict[str, float] = {}
  stats = {"sum": {}, "n": 0}
  # (time, paused seconds, step) at recent log lines: the rate is taken over the last few of them because
  # metrics arrive one dispatch late, and in pairs at eval/checkpoint steps.
  marks = collections.deque([(time.time(), 0.0, step)], maxlen=4)

  def paused(fn, *args):
    start = time.time()
    try:
      return fn(*args)
    finally:
      clock["paused"] += time.time() - start

  def dispatch_args(first: int, n: int, length: int):
    idx, _ = schedule.steps(first, n)
    if resident_data:
      idx_full = np.zeros((steps_per_dispatch, batch_size), np.int32)
      idx_full[:n] = idx
      data, idx_dev = device_data, partitioner.replicate(idx_full)
    else:
      data = _host_batches(arrays, idx, length, steps_per_dispatch, partitioner)
      idx_dev = partitioner.replicate(np.zeros((1, 1), np.int32))
    return data, idx_dev, partitioner.replicate(np.asarray(n, np.int32))

  def drain(entry) -> None:
    """Fetches a dispatch's per-step metrics; stops on a non-finite loss; logs at stats_period."""
    first, n, length, outs = entry
    host = jax.device_get(outs)
    now = time.time()
    if last_drain:
      spent = by_length.setdefault(length, [0.0, 0])
      spent[0] += now - last_drain["time"] - (clock["paused"] - last_drain["paused"])
      spent[1] += n
    last_drain.update(time=now, paused=clock["paused"])
    host = {k: np.asarray(v)[:n] for k, v in host.items()}
    bad = np.flatnonzero(~np.isfinite(host["loss"]))
    if len(bad):
      bad_step = first + int(bad[0])
      ckpt.wait()
      good = ckpt.latest_step()
      where = (f"{checkpoints_lib.checkpoint_dir(model_dir)}/{good}" if good is not None else "none")
      raise NonFiniteLossError(
          f"non-finite loss ({host['loss'][bad[0]]}) at step {bad_step}: training stopped. The last good "
          f"checkpoint is step {good} ({where}) and was left unchanged. Lower the learning rate, check "
          f"the data, or rerun to resume from that checkpoint.")
    losses.append(host["loss"])
    for key, values in host.items():
      stats["sum"][key] = stats["sum"].get(key, 0.0) + float(np.sum(values, dtype=np.float64))
    stats["n"] += n
    done = first + n
    if done // stats_period > (done - n) // stats_period or done >= total_steps:
      now = time.time()
      then, then_paused, then_step = marks[0]
      busy = now - then - (clock["paused"] - then_paused)
      rate = (done - then_step) / max(busy, 1e-9)
      run_busy = now - loop_start - clock["paused"]
      run_rate = (done - start_step) / max(run_busy, 1e-9)
      means = {k: v / max(stats["n"], 1) for k, v in stats["sum"].items()}
      lr = float(host["learning_rate"][-1])
      summaries.scalars(done, {"train/loss": means["loss"], "train/learning_rate": lr,
                               "train/grad_norm": means["grad_norm"], "train/steps_per_second": rate,
                               "train/examples_per_second": rate * batch_size,
                               **{f"train/{k}": v for k, v in means.items()
                                  if k not in ("loss", "learning_rate", "grad_norm")}})
      log.info("step %d/%d loss %.4f lr %.2e | %.1f steps/s (%.2f ms/step, %.0f examples/s) | ETA %s", done,
               total_steps, means["loss"], lr, rate, 1000.0 / max(rate, 1e-9), rate * batch_size,
               utils.format_duration((total_steps - done) / max(run_rate, 1e-9)))
      marks.append((now, clock["paused"], done))
      stats.update(sum={}, n=0)

  def compile_programs(lengths: Sequence[int], validation_ran: bool) -> None:
    """The training loops of `lengths` and, beside them, the validation's programs (the metric functions
    marked utils.compiles_ahead) unless a validation already ran in this process: one wall of compiling
    instead of the loops' and then the first validation's."""
    ahead = [] if validation_ran else [fn for fn in eval_metric_fns or () if getattr(fn, "compiles_ahead", False)]
    loop_args = lambda length: (state, *dispatch_args(step, 1, length), dropout_base)
    if not ahead:
      runner.precompile(lengths, loop_args)
      return

    def compile_validation() -> None:
      start = time.time()
      ctx = eval_context(step, state, compile_only=True)
      try:
        for fn in ahead:
          fn(ctx)
      except utils.StopRequested:
        return  # the loop sees the stop signal next
      log.info("compiled the validation's programs beside the training loops in %.1fs", time.time() - start)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      futures = [pool.submit(runner.precompile, lengths, loop_args), pool.submit(compile_validation)]
      for future in futures:
        future.result()

  def save(at_step: int, state_now) -> None:
    if not checkpoints_lib.all_finite(state_now["params"]):
      raise NonFiniteLossError(f"parameters became non-finite by step {at_step}; not saving. The last good "
                               f"checkpoint is step {ckpt.latest_step()} (left unchanged).")
    to_save = state_now if save_cfg.dtype == "float32" else _cast_state_params(state_now, save_cfg.dtype)
    ckpt.save(at_step, to_save, ckpt_meta(at_step))

  def checkpoint_on_stop() -> None:
    """After a stop signal: the last finished step's checkpoint, complete on disk, and a log line saying
    which step is there (the async saves are waited for, then the directory is read back)."""
    name = signal.Signals(stop.signal).name
    if step != start_step:
      paused(save, step, state)  # a no-op when the periodic save of this step was already queued
    ckpt.wait()
    on_disk = checkpoints_lib.saved_steps(checkpoints_lib.checkpoint_dir(model_dir))
    where = checkpoints_lib.checkpoint_dir(model_dir)
    if on_disk and on_disk[-1] == step:
      what = "checkpointed step" if step != start_step else "nothing trained since the checkpoint of step"
      log.warning("%s: %s %d (%s/%d); rerun the same command to resume", name, what, step, where, step)
    elif step == start_step:
      log.warning("%s: stopped before training step %d; the latest checkpoint on disk is %s", name, step + 1,
                  f"step {on_disk[-1]}" if on_disk else "none")
    else:
      log.error("%s: the checkpoint of step %d is not on disk; the latest one there is %s", name, step,
                f"step {on_disk[-1]}" if on_disk else "none")

  # SIGTERM (preemption, `kill`) and SIGINT (Ctrl-C): finish the dispatch in flight, checkpoint, exit.
  stop = _StopSignals(model_dir)
  stop.install()

  loop_start = time.time()
  pending = None
  try:
    validation_ran = False
    if eval_pending and not stop.requested() and not stopped_early:
      log.info("step %d's validation was cut short when the run stopped; running it now", step)
      paused(run_eval, step, state)
      validation_ran = True
    elif run_eval_before_training and step < total_steps and not stopped_early:
      paused(run_eval, step, state)
      validation_ran = True
    # Compile every encoder length this run will use (and the validation) before the first step, so that
    # progress lines measure training only.
    if step < total_steps and not stopped_early:
      _, upcoming = schedule.steps(step, min(total_steps - step, schedule.steps_per_epoch))
      paused(compile_programs, sorted(set(upcoming.tolist())), validation_ran)
    while step < total_steps and not stop.requested() and not stopped_early:
      boundary = min(_next_multiple(step, eval_period), _next_multiple(step, save_period), total_steps)
      dispatch_end = (schedule.steps_left_in_chunk(step) if schedule.partial_chunks
                      else steps_per_dispatch - step % steps_per_dispatch)
      limit = int(min(dispatch_end, boundary - step))
      n = schedule.run_length(step, limit)
      length = schedule.length(step)
      data, idx_dev, n_dev = dispatch_args(step, n, length)
      fn = paused(runner.get, length, state, data, idx_dev, n_dev, dropout_base, n == steps_per_dispatch)
      state, outs = fn(state, data, idx_dev, n_dev, dropout_base)
      if pending is not None:
        drain(pending)
      pending = (step, n, length, outs)
      step += n
      if stop.requested():
        break  # the step just dispatched is the last finished one: checkpoint_on_stop saves it
      at_save = step % save_period == 0 or step >= total_steps
      if eval_due(step) or at_save:
        drain(pending)
        pending = None
        if eval_due(step):
          if not paused(run_eval, step, state):
            break  # cut short by a stop signal; the checkpoint records the pending validation
          stopped_early = step < total_steps and patience_exhausted(step)
          at_save = at_save or stopped_early
        if at_save:
          paused(save, step, state)
      if stopped_early:
        log.info("early stop at step %d: %s has not improved for %d steps (best %.4g at step %d)", step,
                 best_metric, step - best["step"], best["value"], best["step"])
    if pending is not None:
      drain(pending)
      pending = None
    stopped_by = stop.signal  # a signal after this point finds the run complete and changes nothing
    if stopped_by is not None:
      checkpoint_on_stop()
  finally:
    ckpt.close()
    summaries.close()
    stop.restore()
  elapsed = time.time() - loop_start
  steps_done = step - start_step
  busy = elapsed - clock["paused"]
  rate = steps_done / busy if busy > 0 and steps_done else 0.0
  per_length = {length: (1000.0 * seconds / steps, steps) for length, (seconds, steps) in sorted(by_length.items())}
  if steps_done:
    log.info("trained steps %d..%d in %s: %.1f steps/s while training (%.2f ms/step); %s compiling, "
             "evaluating and checkpointing", start_step, step, utils.format_duration(elapsed), rate,
             1000.0 / max(rate, 1e-9), utils.format_duration(clock["paused"]))
    if per_length:
      log.info("ms/step by encoder length: %s", ", ".join(f"{length}: {ms:.2f} ({steps} steps)"
                                                          for length, (ms, steps) in per_length.items()))
  elif stopped_by is None and not stopped_early:
    log.info("nothing to train: the checkpoint is at step %d >= total_steps %d", step, total_steps)
  return TrainResult(step=step, state=state, start_step=start_step,
                     losses=np.concatenate(losses) if losses else np.zeros([0], np.float32), evals=evals,
                     best=best, steps_per_second=rate, seconds=elapsed,
                     compile_seconds=dict(runner.compile_seconds), ms_per_step_by_length=per_length,
                     stopped_by_signal=stopped_by, stopped_early=stopped_early,
                     partial_chunks=schedule.partial_chunks)


def _cast_state_params(state, dtype: str):
  return {**state, "params": utils.cast_floating(state["params"], dtype)}


def _host_batches(arrays, idx: np.ndarray, length: int, k: int, partitioner: partitioning.PjitPartitioner):
  """Streaming mode: this process's rows of `idx` [n, B] as [k, B, ...] arrays sharded on axis 1."""
  batch_size = idx.shape[1]
  start, stop = partitioner.host_batch_slice(batch_size)
  local_idx = np.zeros((k, stop - start), np.int32)
  local_idx[:len(idx)] = idx[:, start:stop]
  local = {f: arrays[f][local_idx] for f in utils.MODEL_FEATURES}
  local[utils.ENCODER_INPUT] = local[utils.ENCODER_INPUT][..., :length]
  return partitioner.shard_host_batch(local, batch_size, batch_axis=1)


def _restore_initial(restore_cfg: utils.RestoreCheckpointConfig, abstract_state, init_fn, init_rng):
  """Initial state from RestoreCheckpointConfig.path when MODEL_DIR has no checkpoint yet.

  mode 'latest' takes the latest periodic checkpoint under each path (a MODEL_DIR or its checkpoints/ dir);
  'specific' takes exactly the checkpoint a path names (a step directory, e.g. MODEL_DIR/checkpoints/4000),
  as t5x's; 'best' (TIGER's) takes the best-on-validation parameters, so it needs `params_only`.
  """
  if restore_cfg.mode not in ("latest", "specific", "best"):
    raise ValueError(f"RestoreCheckpointConfig.mode: {restore_cfg.mode!r}; expected 'latest', 'specific' or 'best'")
  if restore_cfg.mode == "best" and not restore_cfg.params_only:
    raise ValueError("RestoreCheckpointConfig.mode='best' restores parameters only (the best checkpoint keeps no "
                     "optimizer state): set RestoreCheckpointConfig.params_only = True")
  paths = [restore_cfg.path] if isinstance(restore_cfg.path, str) else list(restore_cfg.path)
  for path in paths:
    which, source = restore_cfg.mode, path
    if which == "specific":
      step_name = os.path.basename(os.path.normpath(path))
      if not step_name.isdigit():
        raise ValueError(f"RestoreCheckpointConfig.path {path!r}: mode 'specific' needs a checkpoint's step "
                         "directory (e.g. MODEL_DIR/checkpoints/4000)")
      which, source = int(step_name), os.path.dirname(os.path.normpath(path))
    try:
      if restore_cfg.params_only:
        params, step = checkpoints_lib.restore_params(source, which, abstract_state["params"],
                                                      dtype=restore_cfg.dtype)
        state = init_fn(init_rng)
        state["params"] = utils.cast_floating(params, "float32")
        if "ema_params" in state:  # the average starts from the restored parameters, not the random ones
          # (copies: the training loop donates the state, and one buffer cannot be donated twice)
          state["ema_params"] = jax.tree_util.tree_map(jnp.copy, state["params"])
        log.info("initialized params from %s (step %d); optimizer and step start afresh", path, step)
        return state
      if os.path.basename(os.path.normpath(source)) == checkpoints_lib.PERIODIC_DIR:
        source = os.path.dirname(os.path.normpath(source))
      ckpt = checkpoints_lib.TrainCheckpointer(source, keep_best=False, async_save=False)
      try:
        step = ckpt.latest_step() if which == "latest" else which
        if step is None or step not in ckpt.all_steps():
          raise utils.MissingArtifactError(
              f"{path}: no checkpoint" + ("" if which == "latest" else f" at step {which}"))
        state, _ = ckpt.restore(step, abstract_state)
      finally:
        ckpt.close()
      log.info("initialized the train state from %s at step %d", path, step)
      return _cast_state_params(state, "float32")
    except FileNotFoundError:
      if not restore_cfg.fallback_to_scratch:
        raise
      log.warning("no checkpoint at %s; training from scratch (fallback_to_scratch)", path)
  return None


# ----------------------------------------------------------------------------------------------------------
# Entry point.


def train_using_gin() -> TrainResult:
  """Calls train() with every argument from the parsed gin config."""
  import gin  # pylint: disable=g-import-not-at-top
  with program_cache_lib.gin_configured_run():
    return gin.get_configurable(train)()


def main(flags) -> None:
  """Exit codes: 0 done, 3 non-finite loss, 128 + signal when SIGTERM (143) or SIGINT (130) stopped it."""
  del flags
  previous = {signum: signal.signal(signum, _note_early_signal) for signum in STOP_SIGNALS
              if signal.getsignal(signum) is not signal.SIG_IGN}
  try:
    result = train_using_gin()
  except NonFiniteLossError as e:
    log.error("%s", e)
    sys.exit(3)
  except (provenance.ProvenanceError, CheckpointMismatchError) as e:  # nothing was written
    log.error("%s", e)
    sys.exit(2)
  except model_dir_lock.ModelDirLockedError as e:  # another trainer writes this MODEL_DIR
    log.error("%s", e)
    sys.exit(4)
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  if result.stopped_by_signal is not None:
    sys.exit(128 + result.stopped_by_signal)


def console_main() -> None:
  """`tiger-train` console script and `python -m tiger_jax.train`."""
  try:
    gin_utils.run(main)
  except KeyboardInterrupt:
    # Ctrl-C outside the training loop (parsing gin, reading data, restoring, or after the loop closed its
    # checkpoints): no step finished there, so none is lost.
    log.warning("SIGINT outside the training loop: no finished step was lost; rerun the same command to "
                "resume from the latest checkpoint")
    sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
  # Delegate to the importable module so that gin files can refer to `tiger_jax.train.train`.
  from tiger_jax import train as _train_module  # pylint: disable=import-self
  _train_module.console_main()
