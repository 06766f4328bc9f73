r"""SASRec baseline: train on TIGER's training pairs, keep the best validation NDCG@10, score the test split.

  python -m tiger_jax.baselines.sasrec --gin_file=gin/baselines/sasrec_beauty.gin \
      --gin.MODEL_DIR="'/tmp/sasrec_beauty'" [--gin.DATA_DIR="'/data/sports'"]

Data: the category directory (numpy readers only, no seqio), split by tiger_jax/data/splits.py
(sequences.py says how rows map to TIGER's examples). Speed: the training rows live on the device, one
jitted call runs a whole epoch (`lax.fori_loop` over its batches, each gathered on device by index), and
evaluation scores the full catalogue in batches on the device. The reported validation and test numbers
rank those scores with tiger_jax/metrics.py on the host; the periodic validation that picks the best epoch
applies the same tie rule on the device (Scorer.device_ranks, tested against it). An epoch's batches are a
pure function of (seed, epoch), and the train state is checkpointed at every evaluation and every
`checkpoint_every_epochs`, so rerunning the same command after a crash or SIGTERM resumes from the last
checkpoint; a finished run only re-evaluates.

MODEL_DIR afterwards: config.gin, metrics.jsonl (loss per epoch, validation metrics), checkpoints/ and best/
(orbax, tiger_jax/checkpoints.py), eval_validation/ and eval_test/ with metrics.json (TIGER's keys plus
training time, parameter count and device) and predictions.jsonl (top 20 per user), both from the best
validation checkpoint (with `refit`, eval_test/ alone, from the last epoch).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tiger_jax import checkpoints as checkpoints_lib
from tiger_jax import metrics as metrics_lib
from tiger_jax.baselines import evaluation
from tiger_jax.baselines import sequences
from tiger_jax.baselines.sasrec_model import (LOSSES, SASRec, SASRecConfig, count_params, flat_target_positions,
                                              next_item_loss)

log = logging.getLogger("tiger_jax.baselines.sasrec")
TOP_K = 20  # items per user in predictions.jsonl (docs/CONTRACTS.md asks for at least 20)


def make_optimizer(learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.98, weight_decay: float = 0.0,
                   clip_norm: Optional[float] = None) -> optax.GradientTransformation:
  """Adam as in the SASRec paper (b2 = 0.98); AdamW when weight_decay > 0; optional global-norm clipping."""
  if learning_rate <= 0:
    raise ValueError(f"make_optimizer.learning_rate must be > 0, got {learning_rate}")
  if weight_decay:
    tx = optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)
  else:
    tx = optax.adam(learning_rate, b1=b1, b2=b2)
  return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx


def epoch_batches(num_rows: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """Row indices [steps, batch] of one epoch: a fresh permutation, the last batch filled up with `num_rows`.

  Row `num_rows` is an all-padding row that carries no loss, so every row is trained exactly once per epoch.
  """
  order = np.random.default_rng([seed, epoch]).permutation(num_rows)
  steps = max(1, math.ceil(num_rows / batch_size))
  filled = np.full([steps * batch_size], num_rows, np.int32)
  filled[:num_rows] = order
  return filled.reshape(steps, batch_size)


def epoch_target_positions(targets: np.ndarray, idx: np.ndarray, multiple: int = 256) -> np.ndarray:
  """[S, width] flat target positions of each batch of an epoch (`flat_target_positions`), the width the
  epoch's largest batch rounded up to `multiple` (at most B x L), so that few widths, each compiled once,
  serve a whole run; a function of the batches alone, so a resumed epoch scores the same slots."""
  batch_targets = targets[idx]
  steps, batch, length = batch_targets.shape
  largest = int((batch_targets > 0).reshape(steps, -1).sum(axis=1).max())
  width = min(max(multiple, -(-largest // multiple) * multiple), batch * length)
  return flat_target_positions(batch_targets, width)


def make_epoch_fn(module: SASRec, tx: optax.GradientTransformation, loss: str = "softmax",
                  num_negatives: int = 256) -> Callable:
  """(state, inputs, targets, batch indices [S, B], target positions [S, P] or None, dropout key) ->
  (state, mean loss): S steps per call. The positions (`epoch_target_positions`, full softmax only) limit the
  catalogue scores to positions that have a target.

  Dropout masks and sampled negatives of a step are functions of (key, step), so a resumed epoch matches.
  """

  def epoch(state, inputs, targets, idx, positions, dropout_key):
    def step(i, carry):
      state, loss_sum, count_sum = carry
      rows = idx[i]
      rng = jax.random.fold_in(dropout_key, state["step"])
      negatives_rng = jax.random.fold_in(rng, 1)
      step_positions = None if positions is None else positions[i]
      grad_fn = jax.value_and_grad(
          lambda p: next_item_loss(module, p, inputs[rows], targets[rows], rng, loss, num_negatives,
                                   negatives_rng, step_positions), has_aux=True)
      (step_loss, count), grads = grad_fn(state["params"])
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
      state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
               "opt_state": opt_state}
      return state, loss_sum + step_loss * count, count_sum + count

    zero = jnp.zeros([], jnp.float32)
    state, loss_sum, count_sum = jax.lax.fori_loop(0, idx.shape[0], step, (state, zero, zero))
    return state, loss_sum / jnp.maximum(count_sum, 1.0)

  return jax.jit(epoch)


class Scorer:
  """Full-catalogue next-item scores on the device (float32, batches of `batch_size` users).

  `rank` hands the scores to tiger_jax.metrics.ranks_from_scores on the host (the reported numbers);
  `device_ranks` applies the same rule on the device and returns only the ranks, which keeps the periodic
  validation of a GPU run from copying a [users, items] score matrix to the host every time.
  """

  def __init__(self, num_items: int, config: SASRecConfig, batch_size: int = 1024):
    module = SASRec(num_items, dataclasses.replace(config, dtype="float32"))
    self.batch_size = batch_size
    k = min(TOP_K, num_items)

    def score(params, ids):
      scores = module.apply({"params": params}, ids, method=SASRec.next_item_scores)
      top_scores, top_items = jax.lax.top_k(scores, k)
      return scores, top_items, top_scores

    def rank(params, ids, target):
      scores = module.apply({"params": params}, ids, method=SASRec.next_item_scores)
      target_score = jnp.take_along_axis(scores, target[:, None], axis=1)
      return (scores > target_score).sum(axis=1) + (scores == target_score).sum(axis=1) - 1

    self._score = jax.jit(score)
    self._rank = jax.jit(rank)

  def _batches(self, inputs: sequences.EvalInputs):
    """(start, stop, ids [batch_size, max_len], targets [batch_size]) with the last batch padded."""
    for start in range(0, len(inputs), self.batch_size):
      stop = min(start + self.batch_size, len(inputs))
      ids = np.zeros([self.batch_size, inputs.inputs.shape[1]], np.int32)
      ids[:stop - start] = inputs.inputs[start:stop]
      target = np.zeros([self.batch_size], np.int32)
      target[:stop - start] = inputs.target[start:stop]
      yield start, stop, ids, target

  def rank(self, params, inputs: sequences.EvalInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target ranks [U], top items [U, 20], their scores); the next batch is queued before one is read."""
    ranks = np.zeros([len(inputs)], np.int64)
    top_items, top_scores = [], []
    pending = None

    def collect(entry):
      start, stop, out = entry
      scores, items, item_scores = jax.device_get(out)
      ranks[start:stop] = metrics_lib.ranks_from_scores(scores[:stop - start], inputs.target[start:stop])
      top_items.append(items[:stop - start])
      top_scores.append(item_scores[:stop - start])

    for start, stop, ids, _ in self._batches(inputs):
      out = self._score(params, ids)
      if pending is not None:
        collect(pending)
      pending = (start, stop, out)
    if pending is not None:
      collect(pending)
    return ranks, np.concatenate(top_items), np.concatenate(top_scores)

  def device_ranks(self, params, inputs: sequences.EvalInputs) -> np.ndarray:
    """Target ranks [U] by metrics.ranks_from_scores's rule (ties count against the target), on device."""
    outs = [(start, stop, self._rank(params, ids, target)) for start, stop, ids, target in self._batches(inputs)]
    ranks = np.zeros([len(inputs)], np.int64)
    for start, stop, out in outs:
      ranks[start:stop] = np.asarray(jax.device_get(out))[:stop - start]
    return ranks


@dataclasses.dataclass
class Clocks:
  """Seconds spent, summed over every invocation that trained this MODEL_DIR (kept in checkpoint meta)."""
  train_seconds: float = 0.0  # the jitted epochs only
  compile_seconds: float = 0.0
  eval_seconds: float = 0.0  # periodic validation
  checkpoint_seconds: float = 0.0
  wall_seconds: float = 0.0  # the training loop, everything included

  def as_dict(self) -> dict[str, float]:
    return {k: round(v, 3) for k, v in dataclasses.asdict(self).items()}


def _check_positive(**values) -> None:
  for name, value in values.items():
    if value is None or value < 1:
      raise ValueError(f"{name} must be >= 1, got {value!r}")


def train_and_evaluate(*,
                       data_dir: str,
                       model_dir: str,
                       model_config: SASRecConfig = SASRecConfig(),
                       num_epochs: int = 200,
                       batch_size: int = 128,
                       eval_batch_size: int = 1024,
                       eval_every_epochs: int = 5,
                       checkpoint_every_epochs: int = 5,
                       random_seed: int = 0,
                       optimizer_fn: Callable[[], optax.GradientTransformation] = make_optimizer,
                       window_stride: Optional[int] = None,
                       ks: Sequence[int] = metrics_lib.DEFAULT_KS,
                       best_metric: str = "ndcg@10",
                       write_predictions: bool = True,
                       checkpoints_to_keep: int = 2,
                       loss: str = "softmax",
                       num_negatives: int = 256,
                       early_stopping_epochs: Optional[int] = None,
                       eval_splits: Optional[Sequence[str]] = None,
                       refit: bool = False) -> dict[str, Any]:
  """Trains SASRec on `data_dir`'s training split (resuming from MODEL_DIR), then evaluates the best params.

  loss / num_negatives: see sasrec_model.next_item_loss. early_stopping_epochs: stop (after a checkpoint)
  once validation `best_metric` has not improved for this many epochs. eval_splits: what the best params
  are scored on at the end (default validation and test, test alone for a refit; a sweep scores 'validation'
  alone, and 'test' once for the point it picks; a finished run only re-evaluates). refit: train on the
  training and validation targets (holdout 1) for exactly num_epochs epochs, with no validation (the epoch
  count comes from a run selected on validation), and score test with the last parameters, as a
  select-then-refit TIGER is tested. Returns {split: metrics, ...}, each also written as
  eval_<split>/metrics.json.
  """
  config = model_config.validate()
  _check_positive(num_epochs=num_epochs, batch_size=batch_size, eval_batch_size=eval_batch_size,
                  eval_every_epochs=eval_every_epochs, checkpoint_every_epochs=checkpoint_every_epochs)
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
  if loss == "sampled_softmax":
    _check_positive(num_negatives=num_negatives)
  negatives = num_negatives if loss == "sampled_softmax" else None
  if early_stopping_epochs is not None:
    _check_positive(early_stopping_epochs=early_stopping_epochs)
  if eval_splits is None:
    eval_splits = ("test",) if refit else ("validation", "test")
  if isinstance(eval_splits, str) or not set(eval_splits) <= {"validation", "test"} or not eval_splits:
    raise ValueError(f"eval_splits must name 'validation' and/or 'test', got {eval_splits!r}")
  if refit and ("validation" in eval_splits or early_stopping_epochs is not None):
    raise ValueError("refit=True trains on the validation targets: eval_splits must be ('test',) and "
                     f"early_stopping_epochs None, got {tuple(eval_splits)!r} and {early_stopping_epochs!r}")
  if not model_dir:
    raise ValueError("model_dir (MODEL_DIR) is empty")
  best_key = f"validation/{best_metric}"
  if best_metric not in metrics_lib.ranking_metrics(np.zeros([1]), ks):
    raise ValueError(f"best_metric {best_metric!r} is not one of the metrics for ks={list(ks)}")
  run_start = time.time()

  # Data: training rows on the device, validation and test histories on the host.
  dataset = sequences.load_dataset(data_dir)
  num_items = len(dataset.catalog)
  rows = sequences.training_rows(dataset.sessions, config.max_len, window_stride, holdout=1 if refit else 2)
  if not len(rows):
    raise ValueError(f"data_dir={data_dir!r}: no user has a training target (every sequence has 3 items)")
  eval_sets = {split: sequences.eval_inputs(dataset.sessions, split, config.max_len)
               for split in ("validation", "test") if (split == "validation" and not refit) or split in eval_splits}
  fingerprint = {"dataset": dataset.name, "num_items": num_items, "num_users": len(dataset.sessions),
                 "train_rows": len(rows), "train_targets": rows.num_targets, "max_len": config.max_len,
                 "window_stride": window_stride}
  if refit:
    fingerprint["holdout"] = 1  # absent for the training split, so older checkpoints still match
  tiger_examples = sum(max(len(s) - 3, 0) for s in dataset.sessions.sequences)
  steps_per_epoch = len(epoch_batches(len(rows), batch_size, random_seed, 0))
  log.info("%s: %d users, %d items; %d training rows with %d targets (TIGER trains on %d examples); "
           "%d steps of %d rows per epoch", dataset.name, len(dataset.sessions), num_items, len(rows),
           rows.num_targets, tiger_examples, steps_per_epoch, batch_size)
  pad_row = np.zeros([1, config.max_len], np.int32)
  host_targets = np.concatenate([rows.targets, pad_row])
  device_inputs = jax.device_put(np.concatenate([rows.inputs, pad_row]))
  device_targets = jax.device_put(host_targets)

  # Model, optimizer, state (fresh or resumed).
  os.makedirs(model_dir, exist_ok=True)
  from tiger_jax import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.write_config(model_dir)
  module = SASRec(num_items, config)
  tx = optimizer_fn()
  init_key, dropout_key = jax.random.split(jax.random.PRNGKey(random_seed))

  def init_state(key):
    params = module.init({"params": key}, jnp.zeros([1, config.max_len], jnp.int32))["params"]
    return {"step": jnp.zeros([], jnp.int32), "params": params, "opt_state": tx.init(params)}

  device = jax.devices()[0]
  abstract_state = jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=jax.sharding.SingleDeviceSharding(device)),
      jax.eval_shape(init_state, init_key))
  ckpt = checkpoints_lib.TrainCheckpointer(model_dir, keep=checkpoints_to_keep, keep_best=not refit)
  clocks, epoch, resumed_from = Clocks(), 0, None
  latest = ckpt.latest_step()
  if latest is not None:
    state, meta = ckpt.restore(latest, abstract_state)
    if meta.get("data") != fingerprint:
      ckpt.close()
      raise ValueError(f"MODEL_DIR={model_dir!r} holds a checkpoint of another data set or model "
                       f"({meta.get('data')} vs now {fingerprint}); use a fresh MODEL_DIR")
    if meta.get("batch_size") != batch_size or meta.get("random_seed") != random_seed:
      log.warning("batch_size/random_seed differ from the checkpoint's (%s/%s): resumed epochs will not "
                  "match an uninterrupted run", meta.get("batch_size"), meta.get("random_seed"))
    trained_with = (meta.get("loss", "softmax"), meta.get("num_negatives"))
    if trained_with != (loss, negatives):
      ckpt.close()
      raise ValueError(f"MODEL_DIR={model_dir!r} holds a checkpoint trained with (loss, negatives) {trained_with}, "
                       f"not {(loss, negatives)}; use a fresh MODEL_DIR")
    epoch = resumed_from = int(meta["epoch"])
    clocks = Clocks(**meta.get("clocks", {}))
    log.info("resumed from %s at epoch %d (step %d)", checkpoints_lib.checkpoint_dir(model_dir), epoch, latest)
  else:
    state = jax.jit(init_state)(init_key)
  best = ckpt.best_record()
  num_params = count_params(state["params"])
  scorer = Scorer(num_items, config, eval_batch_size)
  summaries = open(os.path.join(model_dir, "metrics.jsonl"), "a")

  def save(state_now, at_epoch: int) -> None:
    start = time.time()
    meta = {"epoch": at_epoch, "step": int(state_now["step"]), "data": fingerprint, "best": best,
            "batch_size": batch_size, "random_seed": random_seed, "clocks": clocks.as_dict(),
            "loss": loss, "num_negatives": negatives,
            "time": time.time()}
    ckpt.save(int(state_now["step"]), state_now, meta)
    clocks.checkpoint_seconds += time.time() - start

  def validate(state_now, at_epoch: int) -> None:
    nonlocal best
    start = time.time()
    ranks = scorer.device_ranks(state_now["params"], eval_sets["validation"])
    found = {f"validation/{k}": v for k, v in metrics_lib.ranking_metrics(ranks, ks).items()}
    clocks.eval_seconds += time.time() - start
    value = found[best_key]
    if math.isfinite(value) and (best is None or value > best["value"]):
      best = {"epoch": at_epoch, "step": int(state_now["step"]), "metric": best_key, "value": value}
      ckpt.save_best(int(state_now["step"]), state_now["params"], best)
    summaries.write(json.dumps({"epoch": at_epoch, "step": int(state_now["step"]), **found}) + "\n")
    log.info("epoch %d validation: %s | best %s %.4f @ epoch %d (%.1fs)", at_epoch,
             " ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in found.items()), best_key, best["value"],
             best["epoch"], time.time() - start)

  # SIGTERM (preemption, `kill`): finish the epoch, checkpoint, stop; rerunning resumes.
  stop = {"signal": None}
  old_handler = None
  if threading.current_thread() is threading.main_thread():
    old_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
  epochs_this_run = 0

  def patience_exhausted(at_epoch: int) -> bool:
    return bool(early_stopping_epochs and best is not None and at_epoch - best["epoch"] >= early_stopping_epochs)

  stopped_early = epoch < num_epochs and patience_exhausted(epoch)
  if stopped_early:
    log.info("validation %s has not improved since epoch %d: the run stopped early at epoch %d", best_metric,
             best["epoch"], epoch)
  jitted_epoch = make_epoch_fn(module, tx, loss, num_negatives)
  compiled_epochs = {}  # width of the target positions (None: every position is scored) -> compiled epoch

  def epoch_fn(idx):
    """The compiled epoch for these batches and its arguments after the state."""
    positions = epoch_target_positions(host_targets, idx) if loss == "softmax" else None
    width = None if positions is None else positions.shape[1]
    args = (device_inputs, device_targets, idx, positions, dropout_key)
    if width not in compiled_epochs:
      start = time.time()
      compiled_epochs[width] = jitted_epoch.lower(state, *args).compile()
      clocks.compile_seconds += time.time() - start
      log.info("compiled the %d-step epoch in %.1fs%s", steps_per_epoch, time.time() - start,
               "" if width is None else f" (catalogue scores at {width} of {batch_size * config.max_len} "
               "positions a step)")
    return compiled_epochs[width], args

  try:
    if epoch > num_epochs:
      log.warning("the checkpoint is at epoch %d > num_epochs=%d: nothing to train", epoch, num_epochs)
    loop_start = time.time()
    wall_before = clocks.wall_seconds
    while epoch < num_epochs and not stopped_early:
      compiled, args = epoch_fn(epoch_batches(len(rows), batch_size, random_seed, epoch))
      start = time.time()
      state, epoch_loss = compiled(state, *args)
      epoch_loss = float(epoch_loss)
      seconds = time.time() - start
      clocks.train_seconds += seconds
      epoch += 1
      epochs_this_run += 1
      if not math.isfinite(epoch_loss):
        raise FloatingPointError(f"non-finite training loss at epoch {epoch}; the last good checkpoint is "
                                 f"step {ckpt.latest_step()} (lower the learning rate and rerun)")
      summaries.write(json.dumps({"epoch": epoch, "step": int(state["step"]), "train/loss": epoch_loss,
                                  "train/seconds": round(seconds, 4)}) + "\n")
      summaries.flush()
      log.info("epoch %d/%d loss %.4f (%.2fs, %.0f rows/s)", epoch, num_epochs, epoch_loss, seconds,
               len(rows) / max(seconds, 1e-9))
      evaluated = not refit and (epoch % eval_every_epochs == 0 or epoch == num_epochs)
      if evaluated:
        validate(state, epoch)
        stopped_early = epoch < num_epochs and patience_exhausted(epoch)
      clocks.wall_seconds = wall_before + time.time() - loop_start
      if evaluated or epoch % checkpoint_every_epochs == 0 or epoch == num_epochs or stop["signal"] is not None:
        save(state, epoch)
      if stopped_early:
        log.info("early stop at epoch %d: validation %s has not improved since epoch %d", epoch, best_metric,
                 best["epoch"])
      if stop["signal"] is not None:
        log.warning("signal %d: checkpointed epoch %d; rerun the same command to resume", stop["signal"], epoch)
        break
  finally:
    ckpt.close()
    summaries.close()
    if old_handler is not None:
      signal.signal(signal.SIGTERM, old_handler)
  if stop["signal"] is not None:
    return {"stopped_by_signal": stop["signal"], "epoch": epoch}

  # The best validation params (a refit: the last ones), scored on eval_splits.
  if refit:
    params, best_step = state["params"], int(state["step"])
  else:
    params, best_step = checkpoints_lib.restore_params(model_dir, "best")
  common = {"model": "sasrec", "dataset": dataset.name, "data_dir": data_dir, "num_items": num_items,
            "num_params": num_params, "config": dataclasses.asdict(config), "num_epochs": num_epochs,
            "epochs_trained": epoch, "epochs_this_run": epochs_this_run, "resumed_from_epoch": resumed_from,
            "stopped_early": stopped_early, "refit": refit, "loss": loss, "num_negatives": negatives,
            "best": best, "best_step": best_step, "batch_size": batch_size, "steps_per_epoch": steps_per_epoch,
            "window_stride": window_stride, "train_rows": len(rows), "train_targets": rows.num_targets,
            "tiger_train_examples": tiger_examples, **clocks.as_dict(), "device": device.device_kind,
            "jax_version": jax.__version__}
  results = {}
  for split in [name for name in ("validation", "test") if name in eval_splits]:
    inputs = eval_sets[split]
    start = time.time()
    ranks, top_items, top_scores = scorer.rank(params, inputs)
    result = evaluation.split_result(ranks, split, ks)
    result.update(common, eval_seconds_this_split=round(time.time() - start, 3))
    evaluation.write_metrics(model_dir, split, result)
    if write_predictions:
      evaluation.write_predictions(
          os.path.join(evaluation.eval_dir(model_dir, split), evaluation.PREDICTIONS_FILE),
          dataset.sessions.users, dataset.catalog.asins, inputs.user_index, inputs.target, top_items, top_scores)
    log.info("sasrec %s/%s (%s): %s", dataset.name, split,
             f"refit, epoch {epoch}" if refit else f"best epoch {best and best['epoch']}",
             metrics_lib.format_metrics(result))
    results[split] = result
  results["seconds_this_run"] = round(time.time() - run_start, 2)
  return results


def main(flags) -> None:
  del flags
  import gin  # pylint: disable=g-import-not-at-top
  result = gin.get_configurable(train_and_evaluate)()
  if result.get("stopped_by_signal") is not None:
    sys.exit(128 + result["stopped_by_signal"])


def console_main(argv: Optional[Sequence[str]] = None) -> None:
  """`python -m tiger_jax.baselines.sasrec`: t5x's flags, then train_and_evaluate() with gin's arguments."""
  from tiger_jax import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.run(main, argv)


if __name__ == "__main__":
  # Delegate to the importable module, whose `train_and_evaluate` is the one gin files refer to.
  from tiger_jax.baselines import sasrec as _sasrec_module  # pylint: disable=import-self
  _sasrec_module.console_main()
