"""Leave-one-out split, the paper's protocol.

For a user with items s[0..n-1]: s[n-1] is the test target, s[n-2] the validation target, and every
position t in 1..n-3 of the training prefix s[0..n-3] is a training target with history s[max(0,t-H):t].
Validation and test histories are the H items right before their target. H (max_history) is 20.
Users with fewer than 3 items are an error: the protocol needs a train, a validation and a test item.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tiger_jax.data.types import Sessions

SPLITS = ("train", "validation", "test")
MAX_HISTORY = 20


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


def leave_one_out(sessions: Sessions, split: str, max_history: int = MAX_HISTORY) -> SplitExamples:
  """Examples of one split, in user order (and chronological order within a user for train)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  if max_history < 1:
    raise ValueError(f"max_history must be >= 1, got {max_history}")
  pairs = []
  for u, seq in enumerate(sessions.sequences):
    n = len(seq)
    if n < 3:
      raise ValueError(f"user {sessions.users[u]!r} has {n} items; leave-one-out needs at least 3")
    seq = np.asarray(seq, dtype=np.int32)
    if split == "train":
      targets = range(1, n - 2)
    else:
      targets = [n - 2] if split == "validation" else [n - 1]
    for t in targets:
      pairs.append((u, seq[max(0, t - max_history):t], int(seq[t])))
  return _examples(pairs)
