"""Full-catalogue ranking for score-based baselines, through the project's metrics code.

Ranks come from `tiger_jax.metrics.ranks_from_scores` (ties count against the target) and metrics from
`ranking_metrics`, the function TIGER's eval reports with, so the numbers differ only by the model. Results
go to `<dir>/eval_<split>/metrics.json` with TIGER's keys (`recall@5`, `ndcg@5`, `recall@10`, ...).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from tiger_jax import metrics as metrics_lib
from tiger_jax import predictions as predictions_lib
from tiger_jax import utils

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = predictions_lib.FILE_NAME


def ranks_in_chunks(score_chunk: Callable[[int, int], np.ndarray], target: np.ndarray,
                    chunk_size: int = 1024) -> np.ndarray:
  """Ranks of `target` [U] where `score_chunk(start, stop)` gives the scores [stop - start, num_items].

  Chunked so that a full [users, items] score matrix (1 GB for Beauty in float32) never exists at once.
  """
  return ranks_and_top_k_in_chunks(score_chunk, target, 0, chunk_size)[0]


def ranks_and_top_k_in_chunks(score_chunk: Callable[[int, int], np.ndarray], target: np.ndarray, k: int,
                              chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`ranks_in_chunks` plus each user's `k` best items and their scores [U, k], best first (ties: lower item
  index first), from the same scores: predictions.jsonl without scoring every user twice."""
  target = np.asarray(target)
  ranks = np.zeros([len(target)], np.int64)
  top_items, top_scores = [], []
  for start in range(0, len(target), chunk_size):
    stop = min(start + chunk_size, len(target))
    scores = score_chunk(start, stop)
    ranks[start:stop] = metrics_lib.ranks_from_scores(scores, target[start:stop])
    if k:
      top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
      top_items.append(top)
      top_scores.append(np.take_along_axis(scores, top, axis=1))  # the scores' own dtype
  if not top_items:  # k == 0 or no users
    return ranks, np.zeros([len(target), k], np.int64), np.zeros([len(target), k])
  return ranks, np.concatenate(top_items), np.concatenate(top_scores)


def split_result(ranks: np.ndarray, split: str, ks: Sequence[int] = metrics_lib.DEFAULT_KS) -> dict[str, Any]:
  """TIGER's metric keys plus the split and user count; the median rank helps when every hit rate is ~0."""
  out: dict[str, Any] = metrics_lib.ranking_metrics(ranks, ks)
  out["num_users"] = int(len(ranks))
  out["split"] = split
  out["median_rank"] = float(np.median(ranks)) if len(ranks) else None
  return out


def eval_dir(root: str, split: str) -> str:
  """`root/eval_<split>`, where TIGER's eval writes by default too."""
  return os.path.join(root, f"eval_{split}")


def write_metrics(root: str, split: str, result: dict[str, Any]) -> str:
  return utils.write_json(os.path.join(eval_dir(root, split), METRICS_FILE), result)


def write_predictions(path: str, users: Sequence[str], asins: Sequence[str], user_index: np.ndarray,
                      target: np.ndarray, topk_items: np.ndarray, topk_scores: np.ndarray) -> None:
  """predictions.jsonl as TIGER's eval writes it (docs/CONTRACTS.md): reviewerID, target asin, ranked asins."""
  predictions_lib.write(path, (predictions_lib.Ranked(users[u], asins[t], [asins[i] for i in items.tolist()],
                                                      scores.tolist())
                               for u, t, items, scores in zip(user_index, target, topk_items, topk_scores)))


def format_table(rows: Iterable[tuple[str, dict[str, Any]]],
                 keys: Sequence[str] = metrics_lib.REPORTED_METRICS) -> str:
  """A plain-text table of `keys` per named result (e.g. 'sasrec test')."""
  rows = list(rows)
  width = max([len(name) for name, _ in rows] + [10])
  lines = [f"{'':{width}}  " + "  ".join(f"{k:>9}" for k in keys)]
  for name, result in rows:
    lines.append(f"{name:{width}}  " + "  ".join(f"{result.get(k, float('nan')):9.4f}" for k in keys))
  return "\n".join(lines)
