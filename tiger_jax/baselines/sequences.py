"""Next-item arrays for the ID baselines, cut from the same leave-one-out split as TIGER's tasks.

Item ids: catalogue index + 1, with 0 as padding. Rows are left-padded, so a user's most recent item sits
at the last position (SASRec's convention: the learned position then says how recent an item is).

Training uses each user's training prefix s[0..n-3] only (splits.py), or with `holdout=1` s[0..n-2], which
adds each user's validation target as a refit does (TIGER's train + validation examples): position j of a row
reads the items up to j and predicts the next one, so one row yields every next-item pair of a short prefix at
once, the same (history, target) pairs as `splits.leave_one_out(..., "train", max_history=max_len)`. A prefix
longer than max_len + 1 items does not fit one row:
  window_stride=None   standard SASRec: keep the most recent max_len + 1 items (older targets are dropped);
  window_stride=S      further rows every S items from the start, each target trained once, in the earliest
                       row that holds it: every TIGER training target is covered, with the full history
                       for targets at index <= max_len and at least max_len - S + 1 items after that
                       (stride 1 reproduces leave_one_out's pairs exactly, at one row per late target).
Validation and test inputs are leave_one_out's histories (the max_len items right before the target) and
their targets, so SASRec, popularity and TIGER are scored on identical users and targets.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from tiger_jax import data as data_lib
from tiger_jax.data import splits as splits_lib
from tiger_jax.data.types import Dataset, Sessions

PAD_ID = 0


def load_dataset(data_dir: str) -> Dataset:
  """Reads a processed or raw category directory; a relative path may also be relative to the repository."""
  if not data_dir:
    raise ValueError("data_dir is empty: pass the dataset directory (e.g. data/beauty)")
  if not os.path.isdir(data_dir):
    in_repo = os.path.join(data_lib.PACKAGE_ROOT, data_dir)
    if os.path.isabs(data_dir) or not os.path.isdir(in_repo):
      raise FileNotFoundError(f"data_dir={data_dir!r}: dataset directory not found (looked in "
                              f"{os.getcwd()} and {data_lib.PACKAGE_ROOT})")
    data_dir = in_repo
  return data_lib.load_dataset(data_dir)


HOLDOUTS = (1, 2)  # items held out at the end: 2 = the training split, 1 = training + validation (a refit)


def training_prefix(sequence, holdout: int = 2) -> np.ndarray:
  """The items training may see: all but the validation and test targets (s[0..n-3]), or with holdout=1 all
  but the test target (s[0..n-2])."""
  if holdout not in HOLDOUTS:
    raise ValueError(f"holdout must be one of {HOLDOUTS}, got {holdout!r}")
  if len(sequence) < 3:
    raise ValueError(f"a sequence of {len(sequence)} items: leave-one-out needs at least 3")
  return np.asarray(sequence[:-holdout], np.int32)


def training_counts(sessions: Sessions, num_items: int) -> np.ndarray:
  """Interactions per item in the training prefixes: what a popularity model may count without leakage."""
  if not len(sessions):
    return np.zeros([num_items], np.int64)
  prefixes = np.concatenate([training_prefix(s) for s in sessions.sequences])
  return np.bincount(prefixes, minlength=num_items).astype(np.int64)


@dataclasses.dataclass
class TrainRows:
  """SASRec training rows: `inputs[r, j]` is read at position j to predict `targets[r, j]` (0: no loss)."""
  inputs: np.ndarray  # [R, max_len] int32 item ids, left-padded
  targets: np.ndarray  # [R, max_len] int32 item ids
  user_index: np.ndarray  # [R] row in Sessions

  def __len__(self) -> int:
    return len(self.user_index)

  @property
  def num_targets(self) -> int:
    return int((self.targets > 0).sum())


def _window_starts(num_targets: int, max_len: int, window_stride: Optional[int]) -> list[int]:
  """Start indices of the rows over a prefix with targets 1..num_targets (the last row ends at the end)."""
  last = max(num_targets - max_len, 0)
  if window_stride is None or last == 0:
    return [last]
  return list(range(0, last, window_stride)) + [last]


def training_rows(sessions: Sessions, max_len: int, window_stride: Optional[int] = None,
                  holdout: int = 2) -> TrainRows:
  """One row per user (more for long prefixes with a window_stride); users with no training target get none.
  holdout: see training_prefix (1 trains on the validation targets too)."""
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  if window_stride is not None and not 1 <= window_stride <= max_len:
    raise ValueError(f"window_stride must be None or in [1, max_len={max_len}], got {window_stride}")
  inputs, targets, users = [], [], []
  for u, sequence in enumerate(sessions.sequences):
    ids = training_prefix(sequence, holdout) + 1
    num_targets = len(ids) - 1  # targets are ids[1..num_targets]
    covered = 0  # targets up to this index already have a row
    for start in _window_starts(num_targets, max_len, window_stride):
      stop = min(start + max_len, num_targets)  # last target index of this row
      row_in = np.zeros([max_len], np.int32)
      row_out = np.zeros([max_len], np.int32)
      width = stop - start
      row_in[max_len - width:] = ids[start:stop]
      new = np.arange(start + 1, stop + 1) > covered
      row_out[max_len - width:] = np.where(new, ids[start + 1:stop + 1], PAD_ID)
      covered = stop
      if new.any():
        inputs.append(row_in)
        targets.append(row_out)
        users.append(u)
  shape = (len(users), max_len)
  return TrainRows(inputs=np.array(inputs, np.int32).reshape(shape),
                   targets=np.array(targets, np.int32).reshape(shape),
                   user_index=np.array(users, np.int32))


def row_pairs(rows: TrainRows) -> list[tuple[int, tuple[int, ...], int]]:
  """(user, history, target) in catalogue indices for every trained position: what a row teaches."""
  pairs = []
  for r, j in zip(*np.nonzero(rows.targets)):
    history = rows.inputs[r, :j + 1]
    history = tuple(int(i) - 1 for i in history[history != PAD_ID])
    pairs.append((int(rows.user_index[r]), history, int(rows.targets[r, j]) - 1))
  return pairs


@dataclasses.dataclass
class EvalInputs:
  """One left-padded history per user (ids) and its target (catalogue index), in Sessions order."""
  inputs: np.ndarray  # [U, max_len] int32 item ids
  target: np.ndarray  # [U] catalogue index
  user_index: np.ndarray  # [U]

  def __len__(self) -> int:
    return len(self.target)


def eval_inputs(sessions: Sessions, split: str, max_len: int) -> EvalInputs:
  """leave_one_out's validation or test examples with histories of up to max_len items."""
  if split not in ("validation", "test"):
    raise ValueError(f"split must be 'validation' or 'test', got {split!r}")
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  examples = splits_lib.leave_one_out(sessions, split, max_history=max_len)
  inputs = np.zeros([len(examples), max_len], np.int32)
  for i, history in enumerate(examples.history):
    if len(history):
      inputs[i, max_len - len(history):] = history + 1
  return EvalInputs(inputs=inputs, target=examples.target, user_index=examples.user_index)
