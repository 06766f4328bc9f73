"""Dataset and checkpoint configs, the task-cache reader and the deterministic batch schedule.

Mirrors t5x's `utils` module names (`DatasetConfig`, `SaveCheckpointConfig`, `RestoreCheckpointConfig`,
`CheckpointConfig`, `create_learning_rate_scheduler`) so that t5x gin files read naturally. Everything here
is numpy (+ jax.numpy for the schedules): training must never import TensorFlow or seqio.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import sys
from typing import IO, Any, Callable, Iterator, Mapping, NoReturn, Optional, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

ENCODER_INPUT = "encoder_input_tokens"
DECODER_INPUT = "decoder_input_tokens"
DECODER_TARGET = "decoder_target_tokens"
DECODER_WEIGHTS = "decoder_loss_weights"
MODEL_FEATURES = (ENCODER_INPUT, DECODER_INPUT, DECODER_TARGET, DECODER_WEIGHTS)
EXTRA_FEATURES = ("user_index", "target_item")
# Which task feature length governs each converted feature (seqio's EncDecFeatureConverter mapping).
_FEATURE_TO_TASK_FEATURE = {ENCODER_INPUT: "inputs", DECODER_INPUT: "targets", DECODER_TARGET: "targets",
                            DECODER_WEIGHTS: "targets"}
CACHE_DIR_ENV = "TIGER_TASK_CACHE_DIR"


# ----------------------------------------------------------------------------------------------------------
# Configs.


@dataclasses.dataclass
class DatasetConfig:
  """Which cached task split to read and how to batch it (t5x's DatasetConfig, plus `cache_dir`)."""
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str
  batch_size: int  # global batch size, over all processes
  shuffle: bool
  seed: Optional[int] = None
  use_cached: bool = True
  pack: bool = False
  module: Optional[str] = None
  cache_dir: Optional[str] = None  # default: $TIGER_TASK_CACHE_DIR
  trim_output_features: bool = True
  use_memory_cache: bool = True


@dataclasses.dataclass
class SaveCheckpointConfig:
  """When and how to write checkpoints (t5x's names; `keep_best` is TIGER's best-by-validation copy)."""
  dtype: str = "float32"
  period: Optional[int] = None  # None: every eval period
  keep: Optional[int] = None  # how many periodic checkpoints to keep; None keeps all
  keep_best: bool = True
  async_save: bool = True


@dataclasses.dataclass
class RestoreCheckpointConfig:
  """Where to initialize from when MODEL_DIR holds no checkpoint yet (e.g. fine-tuning).

  The data position needs no checkpoint of its own (it follows from the step), and a restore whose tree
  differs from the model's is always an error, so t5x's restore_dataset and strict have no counterpart.
  """
  path: Optional[Union[str, Sequence[str]]] = None
  mode: str = "latest"  # latest | specific (path names a step directory) | best (params_only)
  dtype: str = "float32"
  fallback_to_scratch: bool = False
  params_only: bool = False  # start optimizer state and step afresh (fine-tuning)


@dataclasses.dataclass
class CheckpointConfig:
  save: Optional[SaveCheckpointConfig] = None
  restore: Optional[RestoreCheckpointConfig] = None


# ----------------------------------------------------------------------------------------------------------
# Learning rate and optimizer.


def create_learning_rate_scheduler(factors: str = "constant * rsqrt_decay",
                                   base_learning_rate: float = 1.0,
                                   warmup_steps: int = 10000,
                                   decay_factor: float = 0.5,
                                   steps_per_decay: int = 20000,
                                   steps_per_cycle: int = 100000,
                                   step_offset: int = 0,
                                   min_learning_rate: float = 1e-8,
                                   cooldown_steps: int = 0,
                                   total_steps: Optional[int] = None) -> Callable[[Any], Any]:
  """t5x's product-of-factors schedule; the default gives 0.01 up to step 10k, then 1/sqrt(step).

  Factors: t5x's constant, linear_warmup, rsqrt_decay, rsqrt_normalized_decay, decay_every,
  cosine_decay, linear_decay; and linear_cooldown (not t5x's), which scales the rate linearly down to
  0 over the last `cooldown_steps` of `total_steps`, so a short run ends on settled weights instead
  of wherever a constant rate left them.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  names = [n.strip() for n in factors.split("*") if n.strip()]
  known = {"constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay", "decay_every",
           "cosine_decay", "linear_decay", "linear_cooldown"}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"create_learning_rate_scheduler: unknown factor(s) {unknown}; known: {sorted(known)}")
  if "linear_cooldown" in names and not (total_steps and 0 < cooldown_steps <= total_steps):
    raise ValueError("create_learning_rate_scheduler: linear_cooldown needs 0 < cooldown_steps <= total_steps, "
                     f"got cooldown_steps={cooldown_steps}, total_steps={total_steps}")

  def schedule(step):
    step = jnp.maximum(0, jnp.asarray(step, jnp.float32) - step_offset)
    ret = jnp.asarray(1.0, jnp.float32)
    for name in names:
      if name == "constant":
        ret *= base_learning_rate
      elif name == "linear_warmup":
        ret *= jnp.minimum(1.0, step / warmup_steps)
      elif name == "rsqrt_decay":
        ret /= jnp.sqrt(jnp.maximum(step, warmup_steps))
      elif name == "rsqrt_normalized_decay":
        ret *= jnp.sqrt(warmup_steps) / jnp.sqrt(jnp.maximum(step, warmup_steps))
      elif name == "decay_every":
        ret *= decay_factor ** (step // steps_per_decay)
      elif name == "cosine_decay":
        progress = jnp.maximum(0.0, (step - warmup_steps) / float(steps_per_cycle))
        ret *= jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0))))
      elif name == "linear_decay":
        progress = jnp.maximum(0.0, (step - warmup_steps) / float(steps_per_cycle))
        ret *= 1.0 - (progress % 1.0)
      elif name == "linear_cooldown":
        ret *= jnp.clip((total_steps - step) / cooldown_steps, 0.0, 1.0)
    return jnp.maximum(ret, min_learning_rate)

  return schedule


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
  """A file that replaces `path` whole when the block ends without error, so neither a reader nor a rerun
  after a crash sees half a file; the directory is created. A failed block leaves `path` as it was."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, value: Any, indent: Optional[int] = 1) -> str:
  """Writes JSON whole (atomic_write), creating the directory."""
  with atomic_write(path) as f:
    json.dump(value, f, indent=indent)
  return path


def adafactor(learning_rate, *, decay_rate: float = 0.8, clipping_threshold: Optional[float] = 1.0,
              momentum: Optional[float] = None, multiply_by_parameter_scale: bool = True,
              factored: bool = True, min_dim_size_to_factor: int = 128, epsilon1: float = 1e-30,
              weight_decay_rate: Optional[float] = None, decay_offset: int = 0,
              group_same_shapes: bool = True):
  """Adafactor with t5x's defaults (decay 0.8, no momentum, update clipping 1.0, factored, param scale).

  `group_same_shapes` runs it once per group of same-shaped parameters (see `per_shape_group`): the same
  arithmetic in a few kernels per group instead of a few per tensor.
  """
  import optax  # pylint: disable=g-import-not-at-top
  tx = optax.adafactor(learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
                       decay_rate=decay_rate, decay_offset=decay_offset,
                       multiply_by_parameter_scale=multiply_by_parameter_scale,
                       clipping_threshold=clipping_threshold, momentum=momentum,
                       weight_decay_rate=weight_decay_rate, eps=epsilon1, factored=factored)
  return per_shape_group(tx) if group_same_shapes else tx


def _shape_groups(leaves) -> list[list[int]]:
  """Leaf indices grouped by (shape, dtype), in order of first appearance."""
  groups: dict = {}
  for i, leaf in enumerate(leaves):
    groups.setdefault((tuple(leaf.shape), np.dtype(leaf.dtype)), []).append(i)
  return list(groups.values())


def per_shape_group(inner):
  """Applies a per-tensor optimizer to stacks of same-shaped leaves, vmapped over each stack.

  Why: a T5 has ~90 small parameter tensors and Adafactor launches several kernels for each (factored
  second moments, update clipping, parameter scale); at TIGER's size those launches, not arithmetic, bound
  a GPU step. vmap keeps every statistic per tensor, so updates equal the ungrouped ones; the state is one
  stacked entry per group (about 7 for the paper's model).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  def stacks(leaves, groups):
    return [jnp.stack([leaves[i] for i in g]) for g in groups]

  def init(params):
    leaves = jax.tree_util.tree_leaves(params)
    return tuple(jax.vmap(inner.init)(s) for s in stacks(leaves, _shape_groups(leaves)))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("per_shape_group: the wrapped optimizer needs params (Adafactor's parameter scale)")
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    groups = _shape_groups(leaves)
    if len(groups) != len(state):
      raise ValueError(f"per_shape_group: optimizer state has {len(state)} groups, the parameters "
                       f"{len(groups)}; was the state made for another model?")
    param_leaves = treedef.flatten_up_to(params)
    out, new_state = [None] * len(leaves), []
    for g, u, p, s in zip(groups, stacks(leaves, groups), stacks(param_leaves, groups), state):
      u, s = jax.vmap(inner.update)(u, s, p)
      new_state.append(s)
      for j, i in enumerate(g):
        out[i] = u[j]
    return jax.tree_util.tree_unflatten(treedef, out), tuple(new_state)

  return optax.GradientTransformation(init, update)


def global_norm(tree):
  """optax.global_norm, summed per group of same-shaped leaves (the groups `per_shape_group` stacks).

  One reduction per group instead of one (two, for a matrix on a GPU) per tensor: on the paper's network
  most of the 145 single-tensor reductions among the 1,053 kernels of a training step were those of the
  logged gradient norm (H200, encoder length 17). The stacks are the ones the grouped optimizer builds
  anyway, so XLA computes them once. The value equals optax's up to the order of summation.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_leaves(tree)
  total = jnp.zeros((), jnp.float32)
  for group in _shape_groups(leaves):
    stack = jnp.stack([leaves[i] for i in group])
    total = total + jnp.sum(jnp.square(stack.astype(jnp.float32)))
  return jnp.sqrt(total)


def adamw(learning_rate, *, b1: float = 0.9, b2: float = 0.999, weight_decay: float = 0.0):
  """AdamW, for ablations against Adafactor."""
  import optax  # pylint: disable=g-import-not-at-top
  return optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


# ----------------------------------------------------------------------------------------------------------
# Task cache (numpy only).


class MissingArtifactError(FileNotFoundError):
  """What an earlier stage writes (a task cache, a checkpoint) is not there: that stage has not run here.

  Entry points run through `gin_utils.run` report it in one line naming the path (exit 2).
  """


def exit_with_error(message: str) -> NoReturn:
  """How an entry point ends on bad configuration or a missing or mismatched artifact: one line on stderr,
  exit status 2, no traceback."""
  sys.stderr.write(f"error: {message}\n")
  raise SystemExit(2)


def resolve_cache_dir(cache_dir: Optional[str]) -> str:
  """The task cache root: the config's value, else $TIGER_TASK_CACHE_DIR."""
  cache_dir = cache_dir or os.environ.get(CACHE_DIR_ENV)
  if not cache_dir:
    raise ValueError(f"no task cache directory: set DatasetConfig.cache_dir (gin macro TASK_CACHE_DIR) or "
                     f"${CACHE_DIR_ENV}")
  return cache_dir


def load_task_info(cache_dir: Optional[str], task_name: str) -> dict:
  """The cache's info.json for a task ({} when the cache has none)."""
  path = os.path.join(resolve_cache_dir(cache_dir), task_name, "info.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _fit_width(name: str, array: np.ndarray, width: int, path: str, trim: bool) -> np.ndarray:
  """Pads (with 0 = pad) or trims a [N, L] feature to `width` columns."""
  have = array.shape[1]
  if have == width:
    return array
  if have < width:
    return np.pad(array, [(0, 0), (0, width - have)])
  cut = np.count_nonzero(np.any(array[:, width:] != 0, axis=1))
  if cut and not trim:
    raise ValueError(f"{path}: field {name!r} has width {have} > feature length {width} and "
                     f"{cut} rows would lose tokens (set trim_output_features=True to allow)")
  if cut:
    log.warning("%s: trimming %r from %d to %d columns drops tokens of %d rows", path, name, have, width, cut)
  return np.ascontiguousarray(array[:, :width])


@functools.lru_cache(maxsize=16)
def _load_npz(path: str) -> dict:
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def get_dataset_arrays(cfg: DatasetConfig, features: Sequence[str] = MODEL_FEATURES + EXTRA_FEATURES,
                       ) -> dict[str, np.ndarray]:
  """Reads one cached split as int32 arrays, checked against CONTRACTS.md and fit to the feature lengths.

  `split` may join cached splits TFDS-style, e.g. 'train+validation': their rows in that order. Training on
  that refits on the validation targets too (each user's most recent training example), once the number of
  steps has been chosen on validation.
  """
  parts = cfg.split.split("+")
  if len(parts) > 1:
    if any(not p for p in parts) or len(set(parts)) != len(parts):
      raise ValueError(f"split {cfg.split!r}: expected distinct split names joined by '+'")
    loaded = [get_dataset_arrays(dataclasses.replace(cfg, split=p), features) for p in parts]
    names = set(loaded[0])
    for part, arrays in zip(parts[1:], loaded[1:]):
      if set(arrays) != names:
        raise ValueError(f"split {cfg.split!r}: {part!r} has fields {sorted(arrays)}, {parts[0]!r} has "
                         f"{sorted(names)}")
    out = {}
    for k in loaded[0]:
      width = max(a[k].shape[1] for a in loaded) if loaded[0][k].ndim == 2 else None
      out[k] = np.concatenate([a[k] if width is None else _fit_width(k, a[k], width, cfg.split, False)
                               for a in loaded])
    return out
  if not cfg.use_cached:
    raise NotImplementedError(
        f"{cfg.mixture_or_task_name}: training reads only cached tasks (no TensorFlow at train time); "
        "cache the task first (tasks/cache_tasks.py) and set USE_CACHED_TASKS = True")
  if cfg.pack:
    raise NotImplementedError("packing is not implemented; use train(length_buckets=...) instead")
  path = os.path.join(resolve_cache_dir(cfg.cache_dir), cfg.mixture_or_task_name, f"{cfg.split}.npz")
  if not os.path.exists(path):
    raise MissingArtifactError(
        f"{path}: no cached split {cfg.split!r} of task {cfg.mixture_or_task_name!r}; build the task's cache first: "
        f"python -m tasks.cache_tasks --tasks={cfg.mixture_or_task_name} --data_dir=<dataset> "
        f"--output_cache_dir={os.path.dirname(os.path.dirname(path))} --semantic_ids=<semantic_ids.npz> "
        "(run.sh's cache stage)")
  raw = _load_npz(path) if cfg.use_memory_cache else _load_npz.__wrapped__(path)
  out = {}
  n = None
  for name in features:
    if name not in raw:
      if name in EXTRA_FEATURES:
        continue
      raise ValueError(f"{path}: missing field {name!r} (has {sorted(raw)})")
    array = raw[name]
    if not np.issubdtype(array.dtype, np.integer):
      raise ValueError(f"{path}: field {name!r} has dtype {array.dtype}, expected int32")
    array = array.astype(np.int32, copy=False)
    if n is None:
      n = array.shape[0]
    elif array.shape[0] != n:
      raise ValueError(f"{path}: field {name!r} has {array.shape[0]} rows, expected {n}")
    if name in _FEATURE_TO_TASK_FEATURE:
      if array.ndim != 2:
        raise ValueError(f"{path}: field {name!r} has shape {array.shape}, expected [N, length]")
      key = _FEATURE_TO_TASK_FEATURE[name]
      if cfg.task_feature_lengths and key in cfg.task_feature_lengths:
        array = _fit_width(name, array, int(cfg.task_feature_lengths[key]), path, cfg.trim_output_features)
    out[name] = array
  return out


def nonpad_lengths(tokens: np.ndarray) -> np.ndarray:
  """Per row, 1 + the index of the last non-pad token (0 for an all-pad row)."""
  nonzero = tokens != 0
  last = tokens.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
  return np.where(nonzero.any(axis=1), last, 0).astype(np.int32)


def bucket_length(length: int, buckets: Optional[Sequence[int]], max_length: int) -> int:
  """The smallest bucket length >= `length` (the full width when buckets are off or all too short)."""
  for b in sorted(buckets or ()):
    if b >= length:
      return min(int(b), max_length)
  return max_length


# ----------------------------------------------------------------------------------------------------------
# Deterministic batch schedule.


class BatchSchedule:
  """Maps a global step to the example indices of its batch, as a pure function of (seed, step).

  Resume is exact because nothing but the step is needed to continue. Without buckets, each epoch is a
  permutation of all examples cut into batches (the last batch wraps around to the epoch's start). With
  length buckets (by non-pad encoder tokens), examples are grouped per bucket into chunks of `chunk_steps`
  batches that share one trimmed encoder length, so that a jitted multi-step loop can run a whole chunk on
  one shape, and chunk order is shuffled per epoch. With `partial_chunks` (the default) each bucket's last chunk
  may be shorter, so every example trains at its own bucket's length once per epoch (only each bucket's last
  batch wraps around). Without, every chunk is full: the leftovers of a bucket move up to the next longer
  bucket, and the longest bucket wraps around to fill its last chunk; on Beauty's [17, 33, 81] buckets and
  100-step chunks that is 600 instead of 514 steps an epoch, 300 instead of 142 of them at length 81.
  The number of steps per epoch does not depend on the epoch.
  """

  def __init__(self, input_lengths: np.ndarray, batch_size: int, seed: int, shuffle: bool = True,
               buckets: Optional[Sequence[int]] = None, chunk_steps: int = 1,
               max_length: Optional[int] = None, partial_chunks: bool = True):
    input_lengths = np.asarray(input_lengths)
    self._input_lengths = input_lengths
    self.num_examples = len(input_lengths)
    if self.num_examples == 0:
      raise ValueError("BatchSchedule: empty dataset")
    if batch_size < 1 or chunk_steps < 1:
      raise ValueError(f"BatchSchedule: batch_size {batch_size} and chunk_steps {chunk_steps} must be >= 1")
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.shuffle = bool(shuffle)
    self.max_length = int(max_length if max_length is not None else input_lengths.max())
    self.buckets = tuple(sorted({min(int(b), self.max_length) for b in (buckets or ())}
                                | {self.max_length}))
    self.chunk_steps = int(chunk_steps) if len(self.buckets) > 1 else 1
    self.partial_chunks = bool(partial_chunks) and len(self.buckets) > 1
    bucket_of = np.searchsorted(np.asarray(self.buckets), np.minimum(input_lengths, self.max_length))
    self._members = [np.flatnonzero(bucket_of == b).astype(np.int64) for b in range(len(self.buckets))]
    self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # epoch -> _epoch()
    if self.partial_chunks:
      self.steps_per_epoch = sum(-(-len(m) // self.batch_size) for m in self._members)
      return
    # Plan (counts only, the same every epoch): examples used per bucket and chunks per bucket.
    self._plan = []
    carried = 0
    chunk_examples = self.chunk_steps * self.batch_size
    for b, members in enumerate(self._members):
      available = len(members) + carried
      if b < len(self.buckets) - 1:
        chunks = available // chunk_examples
        used = chunks * chunk_examples
      else:
        chunks = -(-available // chunk_examples)
        used = available
      self._plan.append((chunks, used))
      carried = available - used
    self.steps_per_epoch = sum(c for c, _ in self._plan) * self.chunk_steps

  def with_partial_chunks(self, partial_chunks: bool) -> "BatchSchedule":
    """The same schedule with full (False) or partial (True) chunks: a resumed run follows its checkpoint."""
    return BatchSchedule(self._input_lengths, self.batch_size, self.seed, self.shuffle, self.buckets,
                         self.chunk_steps, self.max_length, partial_chunks=partial_chunks)

  def fingerprint(self) -> dict:
    """What must match for a resumed run to see the same batches."""
    out = {"num_examples": self.num_examples, "batch_size": self.batch_size, "seed": self.seed,
           "shuffle": self.shuffle, "buckets": list(self.buckets), "chunk_steps": self.chunk_steps}
    if self.partial_chunks:  # absent for full chunks, as in checkpoints from before the option
      out["partial_chunks"] = True
    return out

  def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([steps_per_epoch, B] example indices, [steps_per_epoch] encoder lengths, [chunks] the step offset
    where each chunk ends) of one epoch."""
    if epoch in self._cache:
      return self._cache[epoch]
    rng = np.random.default_rng([self.seed, epoch])
    chunks = self._partial_chunks(rng) if self.partial_chunks else self._full_chunks(rng)
    order = rng.permutation(len(chunks)) if self.shuffle and len(chunks) > 1 else np.arange(len(chunks))
    idx = np.concatenate([chunks[i][1] for i in order]).reshape(-1, self.batch_size).astype(np.int32)
    sizes = [len(chunks[i][1]) // self.batch_size for i in order]
    lengths = np.concatenate([np.full(n, chunks[i][0], np.int32) for n, i in zip(sizes, order)])
    if len(self._cache) >= 2:
      self._cache.pop(min(self._cache))
    self._cache[epoch] = (idx, lengths, np.cumsum(sizes))
    return self._cache[epoch]

  def _full_chunks(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """(bucket length, example indices) of each chunk of one epoch, every chunk chunk_steps batches long."""
    chunks = []
    carried = np.zeros([0], np.int64)
    chunk_examples = self.chunk_steps * self.batch_size
    for b, (members, (n_chunks, used)) in enumerate(zip(self._members, self._plan)):
      pool = np.concatenate([carried, members])
      if self.shuffle:
        pool = rng.permutation(pool)
      take = pool[:used]
      carried = pool[used:]
      if n_chunks == 0:
        continue
      need = n_chunks * chunk_examples
      if len(take) < need:  # last bucket: wrap around to fill the final chunk
        take = np.resize(take, need)
      for c in range(n_chunks):
        chunks.append((self.buckets[b], take[c * chunk_examples:(c + 1) * chunk_examples]))
    return chunks

  def _partial_chunks(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """(bucket length, example indices) of each chunk of one epoch: each bucket's examples once, in chunks of
    chunk_steps batches, its last chunk shorter and its last batch filled from the bucket's start."""
    chunks = []
    for length, members in zip(self.buckets, self._members):
      if not len(members):
        continue
      pool = rng.permutation(members) if self.shuffle else members
      batches = -(-len(pool) // self.batch_size)
      pool = np.resize(pool, batches * self.batch_size)
      for first in range(0, batches, self.chunk_steps):
        chunks.append((length, pool[first * self.batch_size:min(first + self.chunk_steps, batches)
                                    * self.batch_size]))
    return chunks

  def length(self, step: int) -> int:
    """Encoder length (bucket) of the batch at `step`."""
    epoch, offset = divmod(int(step), self.steps_per_epoch)
    return int(self._epoch(epoch)[1][offset])

  def steps_left_in_chunk(self, step: int) -> int:
    """Steps from `step` to the end of its chunk: with partial chunks the trainer dispatches chunk by chunk,
    since their boundaries fall anywhere (with full chunks they are multiples of chunk_steps)."""
    epoch, offset = divmod(int(step), self.steps_per_epoch)
    ends = self._epoch(epoch)[2]
    return int(ends[np.searchsorted(ends, offset, side="right")] - offset)

  def steps(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices [count, B] and encoder lengths [count] of steps start .. start+count-1."""
    idx, lengths = [], []
    step = int(start)
    end = step + int(count)
    while step < end:
      epoch, offset = divmod(step, self.steps_per_epoch)
      e_idx, e_len, _ = self._epoch(epoch)
      n = min(end - step, self.steps_per_epoch - offset)
      idx.append(e_idx[offset:offset + n])
      lengths.append(e_len[offset:offset + n])
      step += n
    return np.concatenate(idx), np.concatenate(lengths)

  def run_length(self, start: int, limit: int) -> int:
    """How many steps from `start` (at most `limit`) share the encoder length of step `start`."""
    _, lengths = self.steps(start, limit)
    different = np.flatnonzero(lengths != lengths[0])
    return int(different[0]) if len(different) else int(limit)


class StopRequested(Exception):
  """A long loop (a validation pass) stopped early because the run was asked to stop (SIGTERM, SIGINT)."""


def compiles_ahead(metric_fn):
  """Marks a trainer eval metric function that honours `EvalContext.compile_only`: called so, it builds and
  compiles its programs and returns {} without evaluating. train() calls such functions beside the training
  loops' compile, so the first validation does not compile after them."""
  metric_fn.compiles_ahead = True
  return metric_fn


def eval_batches(lengths: np.ndarray, batch_size: int, buckets: Optional[Sequence[int]], max_length: int):
  """Deterministic eval batches: sorted by bucket so each batch can be trimmed; yields (indices, length).

  The final batch of a bucket is short; callers pad it and mask the padding.
  """
  lengths = np.asarray(lengths)
  bucket_lens = np.array([bucket_length(int(l), buckets, max_length) for l in lengths], np.int32)
  for b in np.unique(bucket_lens):
    members = np.flatnonzero(bucket_lens == b)
    for start in range(0, len(members), batch_size):
      yield members[start:start + batch_size], int(b)


def cast_floating(tree, dtype: Union[str, Any]):
  """Casts floating leaves of a pytree of arrays to `dtype` (checkpoint save/restore dtype)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = jnp.dtype(dtype)

  def cast(x):
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
      return x.astype(dtype)
    return x

  return jax.tree_util.tree_map(cast, tree)


def format_duration(seconds: float) -> str:
  """`1h02m`, `3m05s`, `12s`: for ETA lines."""
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  if h:
    return f"{h}h{m:02d}m"
  if m:
    return f"{m}m{s:02d}s"
  return f"{s}s"
