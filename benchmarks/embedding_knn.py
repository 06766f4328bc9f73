"""How much next-item signal does an item-embedding model carry? Semantic_KNN with each embedding model.

TIGER's Semantic IDs are only as good as the item embeddings under them (the paper uses Sentence-T5; this
project's default is the offline MiniLM). This benchmark compares embedding models without any training:
for every validation and test user it ranks the catalogue by cosine similarity to the user's most recent
item (the Semantic_KNN baseline of the paper's cold-start section, `tiger_jax.cold_start.knn_candidates`)
and reports Recall/NDCG@5/10 with the project's metrics code. Runs on the CPU in seconds:

  python -m benchmarks.embedding_knn --data_dir data/beauty \
      --embeddings MiniLM-L6=work/beauty --embeddings mpnet-base=work/beauty_mpnet \
      --out experiments/results/embedding_knn_beauty_cpu

Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np


from benchmarks import _common  # noqa: E402
from benchmarks.cold_start import load_embeddings_for  # noqa: E402
from tiger_jax import cold_start, metrics, utils  # noqa: E402
from tiger_jax import predictions as predictions_lib  # noqa: E402
from tiger_jax.data import load_dataset, splits  # noqa: E402

METRICS = metrics.REPORTED_METRICS


def knn_ranked(embeddings: np.ndarray, examples: splits.SplitExamples, num_candidates: int = 20) -> np.ndarray:
  """The catalogue ranked by similarity to each example's last history item [N, num_candidates]."""
  last = np.array([h[-1] if len(h) else -1 for h in examples.history], np.int64)
  return cold_start.knn_candidates(embeddings, last, num_candidates)


def ranked_metrics(ranked: np.ndarray, examples: splits.SplitExamples) -> dict:
  """Ranking metrics of each example's target in its ranked list."""
  return metrics.ranking_metrics(metrics.target_ranks(ranked, examples.target))


def knn_metrics(embeddings: np.ndarray, examples: splits.SplitExamples, num_candidates: int = 20) -> dict:
  return ranked_metrics(knn_ranked(embeddings, examples, num_candidates), examples)


def write_predictions(path: str, ranked: np.ndarray, examples: splits.SplitExamples, users, asins) -> None:
  """eval's predictions.jsonl layout (user, target, topk), so other scripts read KNN like any model."""
  predictions_lib.write(path, (predictions_lib.Ranked(users[u], asins[t], [asins[i] for i in row if i >= 0])
                               for u, t, row in zip(examples.user_index, examples.target, ranked)))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", required=True)
  p.add_argument("--embeddings", action="append", required=True, help="LABEL=WORK_DIR holding embeddings.npy")
  p.add_argument("--out", required=True, help="output path without extension")
  p.add_argument("--predictions_dir", default=None, help="also write <label>_<split>.jsonl predictions here")
  args = p.parse_args()
  dataset = load_dataset(args.data_dir)
  asins = np.array([item.asin for item in dataset.catalog.items])
  examples = {s: splits.leave_one_out(dataset.sessions, s) for s in ("validation", "test")}
  rows = []
  for spec in args.embeddings:
    label, sep, work_dir = spec.partition("=")
    if not sep:
      p.error(f"--embeddings {spec!r}: expected LABEL=WORK_DIR")
    x = load_embeddings_for(asins, work_dir)
    with open(os.path.join(work_dir, "embeddings.json")) as f:
      info = json.load(f)
    row = {"label": label, "work_dir": work_dir, "dim": int(x.shape[1]), "model_name": info.get("model_name"),
           "encode_seconds": info.get("seconds")}
    for split, ex in examples.items():
      ranked = knn_ranked(x, ex)
      row[split] = ranked_metrics(ranked, ex)
      if args.predictions_dir:
        os.makedirs(args.predictions_dir, exist_ok=True)
        write_predictions(os.path.join(args.predictions_dir, f"{label}_{split}.jsonl"), ranked, ex,
                          dataset.sessions.users, asins)
    rows.append(row)
    print(label, {s: {k: round(row[s][k], 4) for k in METRICS} for s in examples}, flush=True)
  report = {**_common.run_metadata(), "dataset": dataset.name, "rows": rows}
  utils.write_json(args.out + ".json", report)
  lines = [f"# Semantic_KNN by embedding model: {dataset.name}", "",
           f"Command: `{report['command']}`; {report['date']}; revision {report['git_revision']}. Ranking: "
           "cosine similarity to the user's most recent item, full catalogue, leave-one-out.", "",
           "| embeddings | dim | encode s (2-core CPU) | " + " | ".join(f"val {k}" for k in METRICS) + " | "
           + " | ".join(f"test {k}" for k in METRICS) + " |", "|---|---|---|" + "---|" * 2 * len(METRICS)]
  for r in rows:
    cells = [f"{r[s][k]:.4f}" for s in ("validation", "test") for k in METRICS]
    lines.append(f"| {r['label']} | {r['dim']} | {r['encode_seconds']} | " + " | ".join(cells) + " |")
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
