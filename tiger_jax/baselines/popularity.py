r"""Most-popular baseline: every user gets the items ranked by their training-interaction counts.

  python -m tiger_jax.baselines.popularity --data_dir=data/beauty --out_dir=/tmp/popularity_beauty

Counts come from the training prefixes only (all but each user's last two items), the interactions TIGER
and SASRec train on; counting validation or test targets would leak them into the ranking. The same counts
rank both the validation and the test targets. Ties count against the target (metrics.ranks_from_scores):
an item never seen in training ranks below every item seen, and level with the other unseen ones, last.
Writes `<out_dir>/eval_validation/metrics.json` and `<out_dir>/eval_test/metrics.json`.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

from tiger_jax import metrics as metrics_lib
from tiger_jax.baselines import evaluation
from tiger_jax.baselines import sequences
from tiger_jax.data import splits as splits_lib
from tiger_jax.data.types import Dataset

log = logging.getLogger("tiger_jax.baselines.popularity")


def popularity_ranks(counts: np.ndarray, target: np.ndarray, chunk_size: int = 2048) -> np.ndarray:
  """Rank of each target when every user sees the same scores (the counts) over the full catalogue."""
  scores = np.asarray(counts, np.float64)
  return evaluation.ranks_in_chunks(lambda start, stop: np.broadcast_to(scores, (stop - start, len(scores))),
                                    target, chunk_size)


def evaluate(dataset: Dataset, split_names: Sequence[str] = ("validation", "test"),
             ks: Sequence[int] = metrics_lib.DEFAULT_KS) -> dict[str, dict[str, Any]]:
  """{split: metrics} for the most-popular ranking on `dataset`'s leave-one-out targets."""
  start = time.time()
  counts = sequences.training_counts(dataset.sessions, len(dataset.catalog))
  results = {}
  for split in split_names:
    target = splits_lib.leave_one_out(dataset.sessions, split).target
    result = evaluation.split_result(popularity_ranks(counts, target), split, ks)
    result.update({"model": "popularity", "dataset": dataset.name, "num_items": len(dataset.catalog),
                   "training_interactions": int(counts.sum()),
                   "items_seen_in_training": int((counts > 0).sum()),
                   "seconds": round(time.time() - start, 3)})
    results[split] = result
  return results


def run(data_dir: str, out_dir: Optional[str] = None) -> dict[str, dict[str, Any]]:
  """Loads `data_dir`, evaluates, and writes metrics.json per split under `out_dir` (when given)."""
  dataset = sequences.load_dataset(data_dir)
  results = evaluate(dataset)
  for split, result in results.items():
    if out_dir:
      evaluation.write_metrics(out_dir, split, result)
    log.info("popularity %s/%s: %s", dataset.name, split, metrics_lib.format_metrics(result))
  return results


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m tiger_jax.baselines.popularity",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True, help="Dataset directory (processed or raw Amazon 2014).")
  parser.add_argument("--out_dir", required=True, help="Where eval_<split>/metrics.json are written.")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s] %(message)s")
  run(args.data_dir, args.out_dir)


if __name__ == "__main__":
  main()
