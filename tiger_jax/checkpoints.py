"""Orbax checkpoints of the train state under MODEL_DIR, and the best-by-validation copy.

Layout:
  MODEL_DIR/checkpoints/<step>/{state,meta}   periodic: params (+ their EMA), optimizer state, step, JSON meta
  MODEL_DIR/best/<step>/{state,meta}          the params of the best validation metric so far
The data position is not stored: the batch schedule is a pure function of (seed, step). Orbax writes each
step to a temporary directory and renames it when complete, so a process killed mid-save leaves the
previous checkpoint as the latest one.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Union

import jax
import numpy as np
import orbax.checkpoint as ocp

from tiger_jax import utils

log = logging.getLogger(__name__)

PERIODIC_DIR = "checkpoints"
BEST_DIR = "best"


def _manager(directory: str, max_to_keep: Optional[int], async_save: bool,
             read_only: bool = False) -> ocp.CheckpointManager:
  """An orbax manager whose cross-process barriers are named after `directory`.

  Orbax names its barriers by step ('async_write_complete.8.orbax-checkpoint-tmp'), so the periodic and
  the best manager saving the same step at once would meet at one barrier in a multi-process run: seen as
  'Barrier ... is already ongoing', or as the primary finalizing a checkpoint before the other process
  wrote its part. The basename (checkpoints/best) is the same on every process.
  """
  # A read-only manager saves nothing; saying so spares orbax's warning that it forces the interval to 0.
  quiet = {"save_interval_steps": 0} if read_only else {}
  options = ocp.CheckpointManagerOptions(
      **quiet, max_to_keep=max_to_keep, create=not read_only, enable_async_checkpointing=async_save,
      cleanup_tmp_directories=not read_only, read_only=read_only,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=os.path.basename(os.path.normpath(directory))))
  # Handlers named up front (not just item names) so that item_metadata() can read the array metadata of a
  # checkpoint this process did not write: restore_params builds its one-device target from it.
  handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)


class TrainCheckpointer:
  """Periodic and best checkpoints of one training run."""

  def __init__(self, model_dir: str, keep: Optional[int] = None, keep_best: bool = True,
               async_save: bool = True):
    self.model_dir = model_dir
    self.periodic = _manager(os.path.join(model_dir, PERIODIC_DIR), keep, async_save)
    self.best = _manager(os.path.join(model_dir, BEST_DIR), 1, async_save) if keep_best else None

  def latest_step(self) -> Optional[int]:
    return self.periodic.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.periodic.all_steps())

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Queues an (async) save of the full train state at `step`."""
    if step in self.periodic.all_steps():
      return
    self.periodic.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores the state at `step` into the shapes, dtypes and shardings of `abstract_state`."""
    restored = self.periodic.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"] or {})

  def best_record(self) -> Optional[dict]:
    """Meta of the best checkpoint so far ({'step', 'metric', 'value', ...}) or None."""
    if self.best is None:
      return None
    step = self.best.latest_step()
    if step is None:
      return None
    return _restore_meta(self.best, step)

  def save_best(self, step: int, params: Any, meta: dict) -> None:
    """Replaces the best checkpoint with `params` at `step`."""
    if self.best is None or step in self.best.all_steps():
      return
    self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params}),
                                                 meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    self.periodic.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.periodic.close()
    if self.best is not None:
      self.best.close()


def checkpoint_dir(model_dir: str, which: str = "latest") -> str:
  """MODEL_DIR/checkpoints or MODEL_DIR/best."""
  return os.path.join(model_dir, BEST_DIR if which == "best" else PERIODIC_DIR)


CHECKPOINT_CHOICES = ("best", "latest")


def parse_checkpoint_choice(which: Union[str, int]) -> Union[str, int]:
  """'best', 'latest' or a step (an int or a string of digits); anything else is a ValueError listing them."""
  if isinstance(which, (int, np.integer)) and not isinstance(which, bool) and which >= 0:
    return int(which)
  if isinstance(which, str):
    text = which.strip()
    if text in CHECKPOINT_CHOICES:
      return text
    if text.isdigit():
      return int(text)
  raise ValueError(f"checkpoint {which!r} is not one of the valid choices: 'best' (by validation metric), "
                   "'latest', or a step number such as 1000")


def saved_steps(directory: str) -> list[int]:
  """Steps whose checkpoint is complete on disk under `directory` (orbax renames a step's temporary
  directory to the bare step number only once every part of it is written)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def latest_meta(model_dir: str) -> Optional[dict]:
  """The metadata saved with MODEL_DIR's latest periodic checkpoint (its step, its batch schedule's
  fingerprint, ...), read without its arrays; None when MODEL_DIR holds no complete checkpoint."""
  directory = checkpoint_dir(model_dir)
  steps = saved_steps(directory)
  if not steps:
    return None
  manager = _manager(directory, None, async_save=False, read_only=True)
  try:
    return _restore_meta(manager, steps[-1])
  finally:
    manager.close()


def _restore_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  """The JSON metadata item of one checkpoint, without its arrays."""
  restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  return dict(restored["meta"] or {})


def restore_params(path: str, which: Union[str, int] = "best", abstract_params: Any = None,
                   dtype: Optional[str] = None) -> tuple[Any, int]:
  """Params (and their step) for eval/infer: `path` is a MODEL_DIR, or a checkpoints/ or best/ dir.

  which: "best" (falls back to the latest periodic checkpoint when no best exists), "latest", or a step.
  abstract_params: optional target tree (ShapeDtypeStruct with shardings); None restores host arrays.
  """
  which = parse_checkpoint_choice(which)
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, PERIODIC_DIR)) or os.path.isdir(os.path.join(path, BEST_DIR)):
    candidates = ([os.path.join(path, BEST_DIR)] if which == "best" else []) + [
        os.path.join(path, PERIODIC_DIR)]
  else:
    candidates = [path]
  for directory in candidates:
    if not os.path.isdir(directory):
      continue
    mngr = _manager(directory, None, False, read_only=True)
    try:
      step = mngr.latest_step() if which in CHECKPOINT_CHOICES else which
      if step is None or step not in mngr.all_steps():
        continue
      meta = mngr.item_metadata(step)
      state_meta = meta["state"] if "state" in meta else meta
      # Restore every leaf onto one local device: the saving run's sharding need not exist here.
      target = jax.tree_util.tree_map(_as_host_struct, _to_builtin(state_meta))
      restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
      # A run with ema_decay evaluates its moving average, so that is what eval and infer get too.
      params = restored["state"].get("ema_params", restored["state"]["params"])
      if abstract_params is not None:
        params = jax.tree_util.tree_map(
            lambda x, a: jax.device_put(x.astype(a.dtype), getattr(a, "sharding", None)), params,
            abstract_params)
      if dtype is not None:
        params = utils.cast_floating(params, dtype)
      log.info("restored params of step %d from %s", step, directory)
      return params, int(step)
    finally:
      mngr.close()
  found = {d: saved_steps(d) for d in candidates if os.path.isdir(d)}
  raise utils.MissingArtifactError(f"{path}: no checkpoint ({which}) found under {candidates}"
                                   + (f"; steps on disk: {found}" if found else ""))


def _to_builtin(tree: Any) -> Any:
  """Orbax metadata trees may use their own mapping types; make them plain dicts/lists."""
  if isinstance(tree, dict) or hasattr(tree, "items") and not hasattr(tree, "shape"):
    return {k: _to_builtin(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
    return type(tree)(_to_builtin(v) for v in tree)
  return tree


def _as_host_struct(meta: Any) -> Any:
  """Orbax array metadata -> a ShapeDtypeStruct on one local device (for parts we do not need)."""
  shape = getattr(meta, "shape", None)
  dtype = getattr(meta, "dtype", None)
  if shape is None or dtype is None:
    return meta
  return jax.ShapeDtypeStruct(shape, dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))


def all_finite(tree: Any) -> bool:
  """True when every floating leaf is finite (checked before a checkpoint is written)."""
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if np.issubdtype(np.dtype(x.dtype), np.floating)]
  if not leaves:
    return True
  ok = jax.jit(lambda xs: jax.numpy.all(jax.numpy.stack([jax.numpy.all(jax.numpy.isfinite(x))
                                                        for x in xs])))(leaves)
  return bool(ok)
