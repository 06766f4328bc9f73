"""A copy of a processed dataset whose item text has the Sports set's form, to measure what that form costs.

Our Sports items carry no real title (../shared/data/amazon2014/README.md): `title` is a short lowercase
phrase (5.3 words on average, often cut inside a word, e.g. "nfl fleece dallas cow") and the brand sits in
the category path (root, brand, categories...) instead of a `brand` field. Beauty has real titles (10.9
words) and brands. Rewriting Beauty's items into the Sports form and measuring the next-item signal of the
embeddings before and after (benchmarks/embedding_knn.py) isolates the cost of the text form from
everything else that differs between the two catalogues:

  python -m experiments.sports_style_text --data_dir data/beauty --out_dir work/beauty_sports_style
  python -m tiger_jax.embed --data_dir=work/beauty_sports_style --work_dir=work/beauty_sports_style
  python -m benchmarks.embedding_knn --data_dir data/beauty \
      --embeddings "real titles=work/beauty/embeddings" --embeddings "Sports-style text=work/beauty_sports_style" \
      --out experiments/results/embedding_knn_beauty_sports_style_cpu

The sequences are copied unchanged, so the two embeddings are evaluated on the same users and targets.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil

SPORTS_TITLE_WORDS = 5  # the median title length of our Sports items


def sports_style_item(item: dict, max_words: int = SPORTS_TITLE_WORDS) -> dict:
  """Title lowercased, punctuation dropped, cut to `max_words` words; the brand moved into each category path."""
  words = re.sub(r"[^\w\s]", " ", item.get("title", "").lower()).split()
  out = {"asin": item["asin"], "title": " ".join(words[:max_words])}
  paths = [list(p) for p in item.get("categories") or [] if p]
  if item.get("brand"):
    paths = [[p[0], item["brand"], *p[1:]] for p in paths] or [[item["brand"]]]
  out["categories"] = paths
  return out


def rewrite(data_dir: str, out_dir: str, max_words: int = SPORTS_TITLE_WORDS) -> int:
  """Writes out_dir/items.jsonl.gz in the Sports form and copies sequences.txt.gz; returns the item count."""
  os.makedirs(out_dir, exist_ok=True)
  src = os.path.join(data_dir, "items.jsonl.gz")
  n = 0
  with gzip.open(src, "rt") as f, gzip.open(os.path.join(out_dir, "items.jsonl.gz"), "wt") as g:
    for line_no, line in enumerate(f, 1):
      try:
        item = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{src}:{line_no}: {e}") from e
      if "asin" not in item:
        raise ValueError(f"{src}:{line_no}: no 'asin' field")
      g.write(json.dumps(sports_style_item(item, max_words)) + "\n")
      n += 1
  shutil.copyfile(os.path.join(data_dir, "sequences.txt.gz"), os.path.join(out_dir, "sequences.txt.gz"))
  return n


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data_dir", required=True, help="a processed dataset: items.jsonl.gz, sequences.txt.gz")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--max_words", type=int, default=SPORTS_TITLE_WORDS)
  args = p.parse_args()
  n = rewrite(args.data_dir, args.out_dir, args.max_words)
  print(f"{n} items rewritten into {args.out_dir}")


if __name__ == "__main__":
  main()
