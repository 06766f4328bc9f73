"""Diversity experiment (paper Sec. 4.3, Tables 3-4): temperature sampling of a trained TIGER model.

For each sample-level setting (all levels, or chosen levels only, e.g. the first code) and temperature T:
Entropy@K of the ground-truth (second-level) categories of the K sampled items, averaged over test users,
distinct items among the K draws, and Recall@10 of 10 draws; beam search as the reference row. Then, for
the most frequent target categories, the categories their 10 predictions fall in at T = 1 and T = 2
(Table 4's view). Definitions: tiger_jax/diversity.py.

  python -m benchmarks.diversity --model_dir=work/beauty/model --cache_dir=work/beauty/cache \
      --task=tiger_beauty --data_dir=data/beauty --name=diversity_beauty_h100

Needs jax, flax, gin and the task cache (no TensorFlow); writes OUT_DIR/NAME.{json,md,png}.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional, Sequence


import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402
from tiger_jax import diversity  # noqa: E402
from tiger_jax import utils  # noqa: E402

log = logging.getLogger("diversity")


def _levels(text: str) -> dict:
  """'all;0;0,1' -> {'all': None, '0': (0,), '0,1': (0, 1)}."""
  out = {}
  for part in text.split(";"):
    part = part.strip()
    if part:
      out[part] = None if part == "all" else tuple(int(x) for x in part.split(","))
  return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model_dir", required=True)
  p.add_argument("--cache_dir", required=True)
  p.add_argument("--task", default="tiger_beauty")
  p.add_argument("--data_dir", default="data/beauty", help="Item metadata (categories).")
  p.add_argument("--checkpoint", default="best")
  p.add_argument("--temperatures", default="1.0,1.5,2.0")
  p.add_argument("--sample_levels", default="all;0", help="Settings separated by ';': 'all' or levels '0,1'.")
  p.add_argument("--ks", default="10,20,50")
  p.add_argument("--recall_k", type=int, default=10)
  p.add_argument("--category_temperatures", default="1.0,2.0", help="Temperatures of the Table-4 view.")
  p.add_argument("--num_target_categories", type=int, default=5)
  p.add_argument("--num_beams", type=int, default=50, help="Beam-search reference row (0: none).")
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--max_users", type=int, default=None)
  p.add_argument("--length_buckets", default="17,33,49,81",
                 help="Encoder lengths decoding batches are trimmed to (one compile each); '' = full width.")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out_dir", default="experiments/results")
  p.add_argument("--name", default="diversity_beauty")
  return p.parse_args(argv)


def item_categories(data_dir: str, asins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(category names, category id per cache item) from the dataset's metadata."""
  from tiger_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
  catalog = load_dataset(data_dir).catalog
  missing = [a for a in asins.tolist() if a not in catalog]
  if missing:
    raise ValueError(f"{data_dir}: no metadata for {len(missing)} cached items, e.g. {missing[:3]}")
  labels = diversity.category_labels([catalog.items[catalog.index(a)].categories for a in asins.tolist()])
  return diversity.encode_labels(labels)


def run(args) -> dict:
  from tiger_jax import checkpoints, infer, utils  # pylint: disable=g-import-not-at-top
  from tiger_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  start = time.time()
  tables = eval_lib.CatalogTables.load(args.cache_dir, args.task)
  names, item_category = item_categories(args.data_dir, tables.asins)
  info = utils.load_task_info(args.cache_dir, args.task)
  cfg = utils.DatasetConfig(mixture_or_task_name=args.task, task_feature_lengths=info.get("feature_lengths", {}),
                            split="test", batch_size=args.batch_size, shuffle=False, cache_dir=args.cache_dir)
  arrays = utils.get_dataset_arrays(cfg, (utils.ENCODER_INPUT, "target_item"))
  if args.max_users:
    arrays = {k: v[:args.max_users] for k, v in arrays.items()}
  tokens, target = arrays[utils.ENCODER_INPUT], arrays["target_item"]
  model = infer.model_from_config(os.path.join(args.model_dir, "config.gin"))
  params, step = checkpoints.restore_params(args.model_dir, args.checkpoint)
  trie = tables.trie()
  temperatures = [float(t) for t in args.temperatures.split(",") if t]
  ks = [int(k) for k in args.ks.split(",") if k]
  settings = _levels(args.sample_levels)
  buckets = [int(x) for x in args.length_buckets.split(",") if x] or None
  sampler = diversity.Sampler(model, params, trie, args.batch_size, length_buckets=buckets)

  def decode(temperature, num_decodes, levels):
    t0 = time.time()
    out = sampler.sample(tokens, temperature, num_decodes, levels, seed=args.seed)
    log.info("T=%g K=%d levels=%s: %.1f s", temperature, num_decodes, levels, time.time() - t0)
    return out

  rows, draws = diversity.temperature_sweep(decode, target, item_category, temperatures, ks, args.recall_k,
                                            settings)
  if args.num_beams:
    beams = max(args.num_beams, args.recall_k)
    retriever = eval_lib.Retriever(model, params, trie, beams, constrain=True, batch_size=args.batch_size,
                                   length_buckets=buckets)
    ranked, _ = retriever.retrieve(tokens)
    row = {"decoder": "beam", "sample_levels": "-", "temperature": None,
           f"recall@{args.recall_k}": diversity.recall_at_k(ranked, target, args.recall_k)}
    for k in ks:
      if k <= beams:
        row[f"entropy@{k}"] = diversity.entropy_at_k(ranked, item_category, k)
        row[f"distinct@{k}"] = diversity.mean_distinct(ranked, k)
    rows.insert(0, row)
  first_setting = next(iter(settings))
  category_view = {}
  for t in [float(x) for x in args.category_temperatures.split(",") if x]:
    if (first_setting, t) in draws:
      category_view[f"{t:g}"] = diversity.top_predicted_categories(
          draws[(first_setting, t)], target, item_category, names, args.recall_k, args.num_target_categories)
  counts = np.bincount(item_category, minlength=len(names))
  config = {"task": args.task, "model_dir": args.model_dir, "cache_dir": args.cache_dir, "step": int(step),
            "checkpoint": args.checkpoint, "temperatures": temperatures, "ks": ks, "recall_k": args.recall_k,
            "sample_levels": {k: (None if v is None else list(v)) for k, v in settings.items()},
            "category_view_setting": first_setting, "num_users": int(len(target)), "seed": args.seed,
            "constrained": True, "entropy_units": "nats",
            "category": "second-level category (path index 1 of the main-root path)",
            "top_k_under_sampling": "K draws per user, duplicates removed"}
  return {"experiment": "diversity", "config": config, "rows": rows, "top_categories": category_view,
          "catalogue_categories": {str(n): int(c) for n, c in zip(names, counts)},
          "timings": {"seconds": round(time.time() - start, 2)}}


def markdown(result: dict, title: str) -> list[str]:
  c = result["config"]
  ks = c["ks"]
  header = ["decoder", "sample levels", "T"] + [f"Entropy@{k}" for k in ks] + [f"Recall@{c['recall_k']}"] + [
      f"distinct@{k}" for k in ks]
  rows = [[r["decoder"], r["sample_levels"], "-" if r["temperature"] is None else f"{r['temperature']:g}"] +
          [r.get(f"entropy@{k}") for k in ks] + [r.get(f"recall@{c['recall_k']}")] +
          [r.get(f"distinct@{k}") for k in ks] for r in result["rows"]]
  lines = [f"# {title}", "", f"{c['num_users']} test users, step {c['step']}; entropy in {c['entropy_units']} "
           f"of the {c['category']}; {c['top_k_under_sampling']}.", "", "## Entropy and recall by temperature", ""]
  lines += _common.markdown_table(header, rows, digits=3)
  for t, view in result["top_categories"].items():
    lines += ["", f"## Most common predicted categories (top {c['recall_k']}) per target category, T = {t} "
              f"(sample levels {c['category_view_setting']})", ""]
    lines += _common.markdown_table(["target category", "users", "predicted categories (share)"], [
        [v["target_category"], v["users"], ", ".join(f"{x['category']} ({x['share']:.2f})" for x in v["top"])]
        for v in view])
  return lines + [""]


def plot(result: dict, path: str) -> None:
  """Entropy@K against temperature, one line per K and sample-level setting; beam search dotted."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  c = result["config"]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, k in enumerate(c["ks"]):
    color = plt.cm.tab10(i)
    for setting, style in zip(c["sample_levels"], ("o-", "s--", "^:", "d-.")):
      pts = [(r["temperature"], r[f"entropy@{k}"]) for r in result["rows"]
             if r["decoder"] == "sample" and r["sample_levels"] == setting]
      ax.plot(*zip(*pts), style, color=color, label=f"Entropy@{k}, levels {setting}")
    beam = [r for r in result["rows"] if r["decoder"] == "beam" and f"entropy@{k}" in r]
    if beam:
      ax.axhline(beam[0][f"entropy@{k}"], color=color, lw=0.8, ls=":", label=f"Entropy@{k}, beam search")
  ax.set(xlabel="temperature", ylabel="entropy of predicted categories (nats)",
         title=f"Diversity by temperature ({c['num_users']} users)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s] %(message)s")
  args = parse_args(argv)
  result = run(args)
  result["meta"] = _common.run_metadata(sys.argv if argv is None else ["benchmarks/diversity.py"] + list(argv))
  base = os.path.join(args.out_dir, args.name)
  os.makedirs(args.out_dir, exist_ok=True)
  result["files"] = {"markdown": args.name + ".md", "plot": args.name + ".png"}
  with open(base + ".md", "w") as f:
    import json  # pylint: disable=g-import-not-at-top
    f.write("\n".join(markdown(result, f"Diversity by temperature ({args.name})") +
                      ["```", json.dumps(result["meta"], indent=1), "```", ""]))
  _common.try_plot(plot, result, base + ".png", log)
  utils.write_json(base + ".json", result)
  for r in result["rows"]:
    log.info("%s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
  return result


if __name__ == "__main__":
  main()
