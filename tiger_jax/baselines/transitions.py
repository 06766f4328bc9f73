r"""Item-to-item transition baseline: what followed the user's last few items in other users' sequences.

  python -m tiger_jax.baselines.transitions --data_dir=data/beauty --out_dir=/tmp/transitions_beauty

A first-order Markov chain widened to the last `window` items: in every training sequence, item b at
position k adds decay^(k-1-j) to the count C[a, b] of each item a at position j in [k - window, k). A user
with history h scores item b as sum_j decay^j * C[h[-1-j], b], plus a popularity term too small to overtake
any transition count, so users whose items never led anywhere get the most popular items. It has no
parameters to fit, so it shows how much of a dataset's next-item signal is plain co-occurrence of items:
on Amazon Beauty and Sports it is most of it (README, Table 1).

`holdout` says how many trailing items of each sequence the counts leave out: 2 is the leave-one-out
training data (what TIGER trains on), 1 adds each user's validation target (the refit of
gin/*_refit.gin), 3 drops each user's most recent training item too. Evaluating validation with holdout 3
against holdout 2 measures, on validation, what refitting with holdout 1 then buys on test.
Writes `<out_dir>/eval_<split>/{metrics.json,predictions.jsonl}` for the standard counts (`--refit`: test from
holdout 1, as a select-then-refit TIGER is tested) and `<out_dir>/transitions.json`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Optional, Sequence

import numpy as np
import scipy.sparse as sp

from tiger_jax import metrics as metrics_lib
from tiger_jax import utils
from tiger_jax.baselines import evaluation
from tiger_jax.baselines import sequences
from tiger_jax.data import splits as splits_lib
from tiger_jax.data.types import Dataset, Sessions

log = logging.getLogger("tiger_jax.baselines.transitions")
# Which split's target is position n - offset, and the fewest held-out items that keep it unseen.
TARGET_OFFSET = {"validation": 2, "test": 1}


def transition_counts(sessions: Sessions, num_items: int, holdout: int = 2, window: int = 3,
                      decay: float = 0.5) -> tuple[sp.csr_matrix, np.ndarray]:
  """(C [items, items] decayed transition counts, per-item counts) over s[0 : n - holdout] of each user."""
  if holdout < 1:
    raise ValueError(f"holdout must be >= 1 (the test target is never counted), got {holdout}")
  if window < 1 or not 0 < decay <= 1:
    raise ValueError(f"need window >= 1 and 0 < decay <= 1, got window={window}, decay={decay}")
  rows, cols, vals, seen = [], [], [], []
  for seq in sessions.sequences:
    prefix = np.asarray(seq[:max(0, len(seq) - holdout)], np.int64)
    seen.append(prefix)
    for lag in range(1, window + 1):  # pairs (prefix[k - lag], prefix[k])
      if len(prefix) > lag:
        rows.append(prefix[:-lag])
        cols.append(prefix[lag:])
        vals.append(np.full(len(prefix) - lag, decay ** (lag - 1)))
  cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros([0], dtype)
  counts = sp.csr_matrix((cat(vals, np.float64), (cat(rows, np.int64), cat(cols, np.int64))),
                         shape=(num_items, num_items))
  counts.sum_duplicates()
  return counts, np.bincount(cat(seen, np.int64), minlength=num_items).astype(np.float64)


def transition_scores(counts: sp.csr_matrix, popularity: np.ndarray, histories: Sequence[np.ndarray],
                      window: int = 3, decay: float = 0.5) -> np.ndarray:
  """Scores [len(histories), items]: decayed transition rows of the last `window` items, then popularity."""
  rows, cols, vals = [], [], []
  for u, history in enumerate(histories):
    recent = np.asarray(history[-window:], np.int64)[::-1]  # most recent first
    rows.append(np.full(len(recent), u))
    cols.append(recent)
    vals.append(decay ** np.arange(len(recent), dtype=np.float64))
  weights = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(len(histories), counts.shape[0]))
  scores = np.asarray((weights @ counts).todense())
  # Below the smallest possible transition score (decay^(2 window - 2)), so popularity only breaks ties.
  floor = decay ** (2 * window - 2)
  return scores + 0.5 * floor * popularity / max(float(popularity.max(initial=0.0)), 1.0)


def evaluate_split(dataset: Dataset, split: str, holdout: int = 2, window: int = 3, decay: float = 0.5,
                   ks: Sequence[int] = metrics_lib.DEFAULT_KS, chunk_size: int = 1024,
                   counted: Optional[tuple[sp.csr_matrix, np.ndarray]] = None,
                   predictions_path: Optional[str] = None, predictions_k: int = 20) -> dict[str, Any]:
  """Metrics of one split's targets under counts that leave `holdout` trailing items out.

  `counted`: `transition_counts(...)` of these settings, when the caller already has them.
  `predictions_path`: also write each user's `predictions_k` best items there (predictions.jsonl), from the
  same scores.
  """
  if split not in TARGET_OFFSET:
    raise ValueError(f"split must be one of {sorted(TARGET_OFFSET)}, got {split!r}")
  if holdout < TARGET_OFFSET[split]:
    raise ValueError(f"holdout={holdout} counts the {split} targets themselves; use holdout >= "
                     f"{TARGET_OFFSET[split]} for {split}")
  counts, popularity = counted or transition_counts(dataset.sessions, len(dataset.catalog), holdout, window,
                                                    decay)
  examples = splits_lib.leave_one_out(dataset.sessions, split)
  ranks, top_items, top_scores = evaluation.ranks_and_top_k_in_chunks(
      lambda start, stop: transition_scores(counts, popularity, examples.history[start:stop], window, decay),
      examples.target, predictions_k if predictions_path else 0, chunk_size)
  if predictions_path:
    os.makedirs(os.path.dirname(predictions_path), exist_ok=True)
    evaluation.write_predictions(predictions_path, dataset.sessions.users, dataset.catalog.asins,
                                 examples.user_index, examples.target, top_items, top_scores)
  result = evaluation.split_result(ranks, split, ks)
  result.update({"model": "transitions", "dataset": dataset.name, "holdout": holdout, "window": window,
                 "decay": decay, "transition_pairs": int(counts.nnz)})
  return result


def refit_study(dataset: Dataset, window: int = 3, decay: float = 0.5,
                predictions_dir: Optional[str] = None, refit: bool = False) -> dict[str, dict[str, Any]]:
  """The refit measured on validation (holdout 3 vs 2), then applied to test (holdout 2 vs 1).

  `predictions_dir`: where the validation and test predictions.jsonl go: validation from the usual counts
  (holdout 2); test from the same counts, or with `refit` from counts that include each user's validation
  target (holdout 1), as a select-then-refit TIGER is tested (the "test" entry is then that one)."""
  usual = transition_counts(dataset.sessions, len(dataset.catalog), 2, window, decay)  # validation and test

  def predictions(split):
    return predictions_dir and os.path.join(evaluation.eval_dir(predictions_dir, split),
                                            evaluation.PREDICTIONS_FILE)
  with_validation = transition_counts(dataset.sessions, len(dataset.catalog), 1, window, decay)
  test = evaluate_split(dataset, "test", 1 if refit else 2, window, decay,
                        counted=with_validation if refit else usual, predictions_path=predictions("test"))
  return {"validation_holdout3": evaluate_split(dataset, "validation", 3, window, decay),
          "validation": evaluate_split(dataset, "validation", 2, window, decay, counted=usual,
                                       predictions_path=predictions("validation")),
          "test": test,
          # With `refit`, the test entry is already this one: not scored twice.
          "test_refit_holdout1": dict(test) if refit else evaluate_split(dataset, "test", 1, window, decay,
                                                                         counted=with_validation)}


def run(data_dir: str, out_dir: Optional[str] = None, window: int = 3, decay: float = 0.5,
        refit: bool = False) -> dict:
  dataset = sequences.load_dataset(data_dir)
  results = refit_study(dataset, window, decay, predictions_dir=out_dir, refit=refit)
  for name, result in results.items():
    log.info("transitions %s/%s (holdout %d): %s", dataset.name, name, result["holdout"],
             metrics_lib.format_metrics(result))
  if out_dir:
    for split in ("validation", "test"):
      evaluation.write_metrics(out_dir, split, results[split])
    utils.write_json(os.path.join(out_dir, "transitions.json"),
                     {"dataset": dataset.stats(), "window": window, "decay": decay, "refit": refit,
                      "results": results})
  return results


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m tiger_jax.baselines.transitions",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True, help="Dataset directory (processed or raw Amazon 2014).")
  parser.add_argument("--out_dir", required=True, help="Where eval_<split>/metrics.json and transitions.json go.")
  parser.add_argument("--window", type=int, default=3, help="How many recent items vote.")
  parser.add_argument("--decay", type=float, default=0.5, help="Weight factor per step back in time.")
  parser.add_argument("--refit", action="store_true",
                      help="Test (metrics and predictions) with counts that include the validation targets, "
                           "as a select-then-refit recipe is tested.")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s] %(message)s")
  run(args.data_dir, args.out_dir, args.window, args.decay, args.refit)


if __name__ == "__main__":
  main()
