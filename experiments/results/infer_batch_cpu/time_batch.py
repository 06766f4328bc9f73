"""Times Recommender.recommend one history at a time against recommend_batch, on the first N test users
(each twice: the first pass compiles).

  PYTHONPATH=TREE python experiments/results/infer_batch_cpu/time_batch.py --model_dir=M/model --cache_dir=M/cache \
      --users=512
"""
import argparse
import json
import os
import time

import numpy as np

from tiger_jax import infer
from tiger_jax import utils


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--model_dir", required=True)
  p.add_argument("--cache_dir", required=True, help="the task cache the model trained on")
  p.add_argument("--users", type=int, default=512)
  p.add_argument("--batch_size", type=int, default=256)
  args = p.parse_args()
  rec = infer.Recommender.from_model_dir(args.model_dir, cache_dir=args.cache_dir, task="tiger_beauty",
                                         batch_size=args.batch_size)
  with np.load(os.path.join(args.cache_dir, "tiger_beauty", "test.npz")) as test:
    tokens = test[utils.ENCODER_INPUT][:args.users]
  # Each row back to the ASINs of its history: item tokens come in groups of num_levels after the user token.
  by_tokens = {tuple(row): a for row, a in zip(rec.tables.item_tokens.tolist(), rec.tables.asins.tolist())}
  levels = rec.layout.num_levels
  histories = []
  for row in tokens.tolist():
    items = [t for t in row[1:] if t != 0]
    histories.append([by_tokens[tuple(items[i:i + levels])] for i in range(0, len(items), levels)])
  out = {"users": len(histories), "batch_size": args.batch_size}
  # First pass: compiles (one program for single histories, one per length bucket for batches); second: timed.
  for name, call in (("single", lambda: [rec.recommend(h, k=10) for h in histories]),
                     ("batch", lambda: rec.recommend_batch(histories, k=10))):
    start = time.perf_counter()
    call()
    out[f"{name}_first_pass_s"] = time.perf_counter() - start
    start = time.perf_counter()
    out[name] = call()
    out[f"{name}_s"] = time.perf_counter() - start
  single, batch = out.pop("single"), out.pop("batch")
  out["same_items"] = all([r["asin"] for r in a] == [r["asin"] for r in b] for a, b in zip(single, batch))
  out["max_score_difference"] = max(float(np.max(np.abs(np.array([r["score"] for r in a]) -
                                                         np.array([r["score"] for r in b]))))
                                    for a, b in zip(single, batch))
  print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
  main()
