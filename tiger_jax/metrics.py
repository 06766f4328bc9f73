"""Leave-one-out ranking metrics over the full catalogue: Recall@K and NDCG@K, and invalid-ID rates.

Every user has exactly one held-out target, so Recall@K is the hit rate at K and NDCG@K is 1/log2(rank+2)
for a hit at 0-based rank < K, else 0 (the ideal DCG is 1).

Ranked lists hold catalogue indices with -1 for an invalid Semantic ID (a beam that names no item) or for
padding. The rule used everywhere (metrics.json and the ranks written to predictions.jsonl): invalid entries
and repeats of an item are removed and the rest moves up, as a recommender serving these beams would show
them (`clean_ranked`). The invalid-ID rate is reported separately, on the raw beams.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

DEFAULT_KS = (5, 10)
# The four metrics every evaluation reports, in table order.
REPORTED_METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def clean_ranked(ranked: np.ndarray) -> np.ndarray:
  """Drops -1 entries and repeated items per row, keeping order; pads the tail with -1. [U, L] -> [U, L]."""
  ranked = np.asarray(ranked)
  out = np.full_like(ranked, -1)
  for u, row in enumerate(ranked):
    seen, kept = set(), []
    for item in row.tolist():
      if item >= 0 and item not in seen:
        seen.add(item)
        kept.append(item)
    out[u, :len(kept)] = kept
  return out


def target_ranks(ranked: np.ndarray, target: np.ndarray) -> np.ndarray:
  """0-based position of each user's target in its (clean) ranked list, -1 when absent. [U]."""
  ranked, target = np.asarray(ranked), np.asarray(target)
  if ranked.ndim != 2 or target.shape != ranked.shape[:1]:
    raise ValueError(f"ranked must be [users, L] and target [users]; got {ranked.shape} and {target.shape}")
  hits = ranked == target[:, None]
  return np.where(hits.any(axis=1), hits.argmax(axis=1), -1)


def ranks_from_scores(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Rank of each target under full-catalogue scores [U, num_items]; ties count against the target.

  Pessimistic ties keep score-based baselines honest: a model that scores every item the same ranks its
  target last, not first.
  """
  scores, target = np.asarray(scores), np.asarray(target)
  target_score = scores[np.arange(len(target)), target]
  ahead = (scores > target_score[:, None]).sum(axis=1)
  tied = (scores == target_score[:, None]).sum(axis=1) - 1
  return ahead + tied


def recall_at_k(ranks: np.ndarray, k: int) -> float:
  ranks = np.asarray(ranks)
  return float(np.mean((ranks >= 0) & (ranks < k))) if ranks.size else 0.0


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
  ranks = np.asarray(ranks)
  if not ranks.size:
    return 0.0
  hit = (ranks >= 0) & (ranks < k)
  return float(np.mean(np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)))


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
  """{'recall@5': ..., 'ndcg@5': ..., ...} from target ranks."""
  out = {}
  for k in ks:
    out[f"recall@{k}"] = recall_at_k(ranks, k)
    out[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
  return out


def format_metrics(result: Mapping[str, Any]) -> str:
  """'recall@5 0.0454 ndcg@5 ...': the one-line summary every evaluation logs, so runs compare by eye."""
  return " ".join(f"{k} {result[k]:.4f}" for k in REPORTED_METRICS)


def mean_and_standard_error(values: Sequence[float]) -> tuple[float, Optional[float]]:
  """Mean over runs (seeds) and its standard error, sample standard deviation / sqrt(n); None for one run,
  which says nothing about the spread."""
  n = len(values)
  if n == 0:
    raise ValueError("mean_and_standard_error: no values")
  mean = sum(values) / n
  if n < 2:
    return mean, None
  variance = sum((v - mean) ** 2 for v in values) / (n - 1)
  return mean, math.sqrt(variance / n)


def mean_and_standard_error_per_metric(runs: Sequence[Mapping[str, float]], keys: Sequence[str]
                                        ) -> tuple[dict[str, float], dict[str, Optional[float]]]:
  """(means, standard errors) of each metric in `keys` over runs (seeds), as mean_and_standard_error gives them."""
  spread = {k: mean_and_standard_error([float(run[k]) for run in runs]) for k in keys}
  return {k: mean for k, (mean, _) in spread.items()}, {k: stderr for k, (_, stderr) in spread.items()}


def hit_fraction_at_rank(ranks: np.ndarray, max_rank: int) -> dict[int, float]:
  """Share of users whose target is at each 1-based rank 1..max_rank.

  Recall@K is the sum over ranks <= K and NDCG@K weights each by 1/log2(rank+1), so this says whether a change
  finds more targets or ranks the same targets higher (NDCG@5 / Recall@5 alone mixes the two).
  """
  ranks = np.asarray(ranks)
  if max_rank < 1:
    raise ValueError(f"max_rank must be >= 1, got {max_rank}")
  counts = np.bincount(ranks[(ranks >= 0) & (ranks < max_rank)], minlength=max_rank)
  return {r + 1: float(c) / max(len(ranks), 1) for r, c in enumerate(counts.tolist())}


def invalid_fraction_at_k(raw_ranked: np.ndarray, ks: Iterable[int] = range(1, 21)) -> dict[int, float]:
  """Fraction of invalid IDs (-1) among the raw top-K beams, averaged over users (the paper's Figure 6)."""
  raw_ranked = np.asarray(raw_ranked)
  return {k: float(np.mean(raw_ranked[:, :k] < 0)) for k in ks if k <= raw_ranked.shape[1]}
