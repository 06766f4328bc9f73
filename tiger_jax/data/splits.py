"""Leave-one-out split, the paper's protocol.

For a user with items s[0..n-1]: s[n-1] is the test target, s[n-2] the validation target, and every
position t in 1..n-3 of the training prefix s[0..n-3] is a training target with history s[max(0,t-H):t].
Validation and test histories are the H items right before their target. H (max_history) is 20.
Users with fewer than 3 items are an error: the protocol needs a train, a validation and a test item.

Cold start (`exclude_items`, paper Sec. 4.3): the excluded items are removed from the data the model
trains and validates on, and only from it. Train: they are deleted from the training prefix s[0..n-3]
before its examples are cut, so they are neither a target nor a history item (the remaining items close
up). Validation: dropped when its target is excluded (or nothing is left of its history), else its history
is the filtered prefix. Test: unchanged, full history and target, so test users can ask for unseen items.
"""
from __future__ import annotations

import dataclasses
from typing import Collection, Optional

import numpy as np

from tiger_jax.data.types import Sessions

SPLITS = ("train", "validation", "test")
MAX_HISTORY = 20
MIN_SESSION_LENGTH = 3  # a train, a validation and a test item; the readers drop shorter users


@dataclasses.dataclass
class SplitExamples:
  """Next-item examples: `history[i]` (catalogue indices, oldest first) predicts `target[i]`."""
  user_index: np.ndarray  # [N] row in Sessions
  history: list[np.ndarray]
  target: np.ndarray  # [N] catalogue index

  def __len__(self) -> int:
    return len(self.target)


def _examples(pairs: list[tuple[int, np.ndarray, int]]) -> SplitExamples:
  return SplitExamples(
      user_index=np.array([u for u, _, _ in pairs], dtype=np.int32),
      history=[h for _, h, _ in pairs],
      target=np.array([t for _, _, t in pairs], dtype=np.int32),
  )


def leave_one_out(sessions: Sessions, split: str, max_history: int = MAX_HISTORY,
                  exclude_items: Optional[Collection[int]] = None) -> SplitExamples:
  """Examples of one split, in user order (and chronological order within a user for train).

  `exclude_items` (catalogue indices) keeps those items out of train and validation (module docstring).
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  if max_history < 1:
    raise ValueError(f"max_history must be >= 1, got {max_history}")
  excluded = np.unique(np.asarray(list(exclude_items) if exclude_items is not None else [], dtype=np.int64))
  pairs = []
  for u, seq in enumerate(sessions.sequences):
    n = len(seq)
    if n < MIN_SESSION_LENGTH:
      raise ValueError(f"user {sessions.users[u]!r} has {n} items; leave-one-out needs at least "
                       f"{MIN_SESSION_LENGTH}")
    seq = np.asarray(seq, dtype=np.int32)
    if split == "test":
      pairs.append((u, seq[max(0, n - 1 - max_history):n - 1], int(seq[n - 1])))
      continue
    prefix = seq[:n - 2]
    if excluded.size:
      prefix = prefix[~np.isin(prefix, excluded)]
    if split == "train":
      for t in range(1, len(prefix)):
        pairs.append((u, prefix[max(0, t - max_history):t], int(prefix[t])))
    elif not (excluded.size and (np.isin(seq[n - 2], excluded) or not len(prefix))):
      pairs.append((u, prefix[max(0, len(prefix) - max_history):], int(seq[n - 2])))
  return _examples(pairs)
