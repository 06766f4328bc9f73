"""predictions.jsonl (docs/CONTRACTS.md): the one writer and the one checked reader of ranked lists.

Eval, the baselines, fusion and the checkers all exchange a split's ranked lists through this file, so its
format is enforced in one place: one JSON object per user with `user`, `target`, `topk` (asins, best first)
and optionally `scores`. The reader refuses what would silently score wrong (a `topk` that is not a list of
asins, a user listed twice, an empty file) with an error naming the file, the line and the field.
"""
from __future__ import annotations

import json
from typing import Iterable, NamedTuple, Optional, Sequence

from tiger_jax import utils
from tiger_jax.data import lines as lines_lib
from tiger_jax.data.errors import DataFormatError

FILE_NAME = "predictions.jsonl"


class Ranked(NamedTuple):
  """One user's line: who, the held-out asin, the ranked asins and (if written) their scores."""
  user: str
  target: str
  topk: list[str]
  scores: Optional[list[float]] = None
  line: int = 0


def write(path: str, rows: Iterable[Ranked], score_digits: int = 5) -> None:
  """Writes the whole file atomically (a reader never sees half of it)."""
  with utils.atomic_write(path) as f:
    for row in rows:
      entry = {"user": str(row.user), "target": str(row.target), "topk": [str(a) for a in row.topk]}
      if row.scores is not None:
        entry["scores"] = [round(float(s), score_digits) for s in row.scores]
      f.write(json.dumps(entry) + "\n")


def read(path: str) -> list[Ranked]:
  """Every user's line, in file order; DataFormatError naming file, line and field on bad input."""
  rows: list[Ranked] = []
  seen: dict[str, int] = {}
  for number, entry in lines_lib.read_json_objects(path, "predictions", ("user", "target", "topk")):
    topk = entry["topk"]
    if not isinstance(topk, list) or not all(isinstance(a, str) for a in topk):
      raise DataFormatError("must be a list of asins", path, number, "topk")
    user = str(entry["user"])
    if user in seen:
      raise DataFormatError(f"user {user!r} appears a second time (first on line {seen[user]})", path, number,
                            "user")
    seen[user] = number
    rows.append(Ranked(user, str(entry["target"]), topk, entry.get("scores"), number))
  if not rows:
    raise DataFormatError("holds no predictions", path)
  return rows


def target_ranks(rows: Sequence[Ranked]) -> list[int]:
  """0-based rank of each row's target in its list, -1 where it is absent."""
  return [row.topk.index(row.target) if row.target in row.topk else -1 for row in rows]
