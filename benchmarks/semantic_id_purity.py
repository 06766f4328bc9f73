"""Hierarchy report (paper Fig. 4 spirit): how item categories spread over the first code.

For RQ-VAE, LSH and random Semantic IDs of the same items: per first code, its most common
second-level category (Beauty paths look like ["Beauty", "Makeup", "Nails", ...]; index 1)
and that category's share; "first-code purity" is the item-weighted mean share.

  python -m benchmarks.semantic_id_purity --rqvae WORK_DIR/semantic_ids.npz \
      --embeddings WORK_DIR/embeddings.npy --asins WORK_DIR/asins.txt \
      --items data/beauty/items.jsonl.gz --out_dir experiments/results --name semantic_id_purity

Without --rqvae it trains the RQ-VAE here with the quick schedule (--epochs). LSH and random
IDs are built on the fly with --seed. Writes NAME.json, NAME.png and NAME.md.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import time


import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402
from tiger_jax import semantic_ids as sid  # noqa: E402


def second_level_categories(items_path: str, asins) -> list[str]:
  """Each item's category at path index 1, from its first path rooted at the top category.

  Items can list several paths; the first one that starts with the catalogue's most common
  root wins, then any path. Missing levels read "(none)". A brand before the categories (the
  Sports set's attribute paths: root, brand, category, ...) is skipped: a name at index 1 that
  never sits at index 2, followed by a name that does sit at index 1 in other paths, is a brand.
  """
  cats = {}
  roots: dict[str, int] = {}
  with gzip.open(items_path, "rt") as f:
    for line_no, line in enumerate(f, 1):
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{items_path}:{line_no}: {e}") from e
      paths = [p for p in (obj.get("categories") or []) if p]
      cats[obj["asin"]] = paths
      for p in paths:
        roots[p[0]] = roots.get(p[0], 0) + 1
  top_root = max(roots, key=roots.get) if roots else None
  chosen = {}
  for a in asins:
    if a not in cats:
      raise ValueError(f"{items_path}: no metadata for asin {a}")
    paths = cats[a]
    chosen[a] = next((p for p in paths if p[0] == top_root), paths[0] if paths else [])
  at_1 = {p[1] for p in chosen.values() if len(p) > 1}
  at_2 = {p[2] for p in chosen.values() if len(p) > 2}
  out = []
  for a in asins:
    p = chosen[a]
    brand_first = len(p) > 2 and p[1] not in at_2 and p[2] in at_1
    out.append(p[2] if brand_first else p[1] if len(p) > 1 else "(none)")
  return out


def plot(results: dict, path: str) -> None:
  """Per ID type: first codes (sorted by top category, then share) as stacked category bars."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(results)
  labels = sorted({l for r in results.values() for l in r["table_labels"]},
                  key=lambda l: -sum(r["labels"].get(l, 0) for r in results.values()))
  # The ten largest categories get a colour each and the rest one grey "other" bar: a catalogue may have a
  # hundred categories, and a bar set per category made the Sports plot take minutes.
  shown = labels[:10]
  colors = {l: plt.cm.tab10(i) for i, l in enumerate(shown)}
  colors["other"] = (0.8, 0.8, 0.8, 1.0)
  fig, axes = plt.subplots(len(names), 1, figsize=(14, 3.2 * len(names)), squeeze=False)
  for ax, name in zip(axes[:, 0], names):
    r = results[name]
    table = np.asarray(r["table"], float)
    frac = table / table.sum(1, keepdims=True)
    lab = r["table_labels"]
    top = frac.argmax(1)
    order = np.lexsort((-frac.max(1), [labels.index(lab[t]) for t in top]))
    columns = {l: frac[order, lab.index(l)] if l in lab else np.zeros(len(order)) for l in shown}
    columns["other"] = 1.0 - sum(columns.values())
    bottom = np.zeros(len(order))
    for l, share in columns.items():
      ax.bar(np.arange(len(order)), share, bottom=bottom, width=1.0, color=colors[l], label=l, linewidth=0)
      bottom += share
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel("category share")
    ax.set_title(f"{name}: first-code purity {r['purity']:.3f} over {r['num_codes']} codes "
                 f"(majority baseline {r['majority_baseline']:.3f})")
  axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
  axes[-1, 0].set_xlabel("first code (sorted by its top category, then share)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--embeddings", required=True)
  p.add_argument("--asins", required=True, help="the embeddings' item order: asins.txt or embeddings.json")
  p.add_argument("--items", required=True, help="items.jsonl.gz with categories")
  p.add_argument("--rqvae", default=None, help="semantic_ids.npz from the RQ-VAE stage")
  p.add_argument("--epochs", type=int, default=100, help="RQ-VAE epochs when training here")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out_dir", default="experiments/results")
  p.add_argument("--name", default="semantic_id_purity")
  args = p.parse_args()

  x = np.load(args.embeddings).astype(np.float32)
  with open(args.asins) as f:  # asins.txt, or tiger_jax.embed's embeddings.json with its "asins" list
    asins = json.load(f)["asins"] if args.asins.endswith(".json") else [line.strip() for line in f if line.strip()]
  labels = second_level_categories(args.items, asins)
  ids = {}
  t0 = time.time()
  if args.rqvae:
    r = sid.SemanticIds.load(args.rqvae)
    if r.asins.tolist() != asins:
      raise ValueError(f"{args.rqvae}: asin order differs from {args.asins}")
    ids["RQ-VAE"] = r
  else:
    import dataclasses
    from tiger_jax import rqvae
    cfg = dataclasses.replace(rqvae.RQVAEConfig(), num_epochs=args.epochs, seed=args.seed)
    ids["RQ-VAE"], _ = sid.rqvae_semantic_ids(x, asins, cfg, print)
  ids["LSH"] = sid.lsh_semantic_ids(x, asins, args.seed)
  ids["Random"] = sid.random_semantic_ids(asins, args.seed)
  results = {}
  for name, s in ids.items():
    res = sid.code_purity(s.codes[:, 0], labels)
    res["id_stats"] = {k: s.stats.get(k) for k in (
        "codebook_usage", "unique_prefixes", "largest_bucket", "items_in_collisions",
        "reconstruction_loss", "items_reassigned", "collision_rule")}
    if "config" in s.stats:
      res["id_stats"]["config"] = s.stats["config"]
    results[name] = res
  meta = _common.run_metadata(seconds=time.time() - t0, num_items=len(asins),
                              category_level="second (path index 1)")
  os.makedirs(args.out_dir, exist_ok=True)
  base = os.path.join(args.out_dir, args.name)
  with open(base + ".json", "w") as f:
    json.dump({"meta": meta, "results": results}, f, indent=1)
  plot(results, base + ".png")
  lines = [f"# First-code purity ({args.name})", "",
           "| ID type | first-code purity | codes used (level 1) | majority baseline | "
           "unique 3-code prefixes | largest bucket |", "|---|---|---|---|---|---|"]
  for name, r in results.items():
    st = r["id_stats"]
    lines.append(f"| {name} | {r['purity']:.3f} | {r['num_codes']} | {r['majority_baseline']:.3f} "
                 f"| {st['unique_prefixes']} | {st['largest_bucket']} |")
  lines += ["", f"Second-level category counts: {results['RQ-VAE']['labels']}", "",
            "```", json.dumps(meta, indent=1), "```", ""]
  with open(base + ".md", "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines[:2 + 2 + len(results)]))


if __name__ == "__main__":
  main()
