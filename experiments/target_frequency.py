"""Recall by how often the target item is a training target: why every trained model loses on test.

On Beauty every trained model scores 22-31% lower on test than on validation, a training-free nearest-neighbour
ranking only 5%. This script measures the two halves of that: how often the validation and test targets occur
as targets in the training split, and Recall@K of stored predictions (eval's predictions.jsonl) per bucket of
that count:

  python -m experiments.target_frequency --data_dir data/beauty \
      --predictions TIGER=work/beauty_paper/model_final/model_beauty/eval_test/predictions.jsonl \
      --out experiments/results/target_frequency_beauty

Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse

import numpy as np


from benchmarks import _common  # noqa: E402
from tiger_jax import predictions as predictions_lib  # noqa: E402
from tiger_jax import utils  # noqa: E402
from tiger_jax.data import load_dataset, splits  # noqa: E402

BUCKETS = ((0, 0), (1, 4), (5, 19), (20, None))


def bucket_label(lo: int, hi) -> str:
  return f"{lo}" if hi == lo else (f"{lo}+" if hi is None else f"{lo}-{hi}")


def in_bucket(counts: np.ndarray, lo: int, hi) -> np.ndarray:
  return (counts >= lo) & (counts <= (np.inf if hi is None else hi))


def recall_by_bucket(predictions_path: str, asin_index: dict, train_counts: np.ndarray, k: int) -> list[dict]:
  """Recall@k of a predictions.jsonl per bucket of the target's count as a training target."""
  hits, counts = [], []
  for row in predictions_lib.read(predictions_path):
    if row.target not in asin_index:
      raise ValueError(f"{predictions_path}, line {row.line}: target {row.target!r} is not in the catalogue")
    hits.append(row.target in row.topk[:k])
    counts.append(train_counts[asin_index[row.target]])
  hits, counts = np.array(hits), np.array(counts)
  rows = []
  for lo, hi in BUCKETS:
    m = in_bucket(counts, lo, hi)
    rows.append({"bucket": bucket_label(lo, hi), "users": int(m.sum()),
                 f"recall@{k}": float(hits[m].mean()) if m.any() else None})
  return rows


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", required=True)
  p.add_argument("--predictions", action="append", default=[], help="LABEL=predictions.jsonl (any split)")
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--out", required=True, help="output path without extension")
  args = p.parse_args()
  dataset = load_dataset(args.data_dir)
  asin_index = {item.asin: i for i, item in enumerate(dataset.catalog.items)}
  train_counts = np.bincount(splits.leave_one_out(dataset.sessions, "train").target,
                             minlength=len(asin_index))
  target_stats = {}
  for split in ("validation", "test"):
    c = train_counts[splits.leave_one_out(dataset.sessions, split).target]
    target_stats[split] = {"median": float(np.median(c)), "mean": float(c.mean()),
                           **{bucket_label(lo, hi): float(in_bucket(c, lo, hi).mean()) for lo, hi in BUCKETS}}
  models = {}
  for spec in args.predictions:
    label, sep, path = spec.partition("=")
    if not sep:
      p.error(f"--predictions {spec!r}: expected LABEL=PATH")
    models[label] = recall_by_bucket(path, asin_index, train_counts, args.k)
  report = {**_common.run_metadata(), "dataset": dataset.name, "k": args.k,
            "target_train_counts": target_stats, "recall_by_bucket": models}
  utils.write_json(args.out + ".json", report)
  labels = [bucket_label(lo, hi) for lo, hi in BUCKETS]
  lines = [f"# Targets by their count as training targets: {dataset.name}", "",
           f"Command: `{report['command']}`; {report['date']}; revision {report['git_revision']}.", "",
           "Share of each split's targets per count bucket:", "",
           "| split | median count | mean count | " + " | ".join(labels) + " |", "|---|---|---|" + "---|" * len(labels)]
  lines += [f"| {s} | {v['median']:.0f} | {v['mean']:.1f} | " + " | ".join(f"{v[b]:.3f}" for b in labels) + " |"
            for s, v in target_stats.items()]
  if models:
    lines += ["", f"Recall@{args.k} per bucket (users in brackets; each row is one model on one split):", "",
              "| model | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for label, rows in models.items():
      lines.append(f"| {label} | " + " | ".join(
          f"{r[f'recall@{args.k}']:.4f} ({r['users']})" if r["users"] else "-" for r in rows) + " |")
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
