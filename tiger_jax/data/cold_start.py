"""The cold-start split (paper Sec. 4.3): a seeded 5% of the test items that training never sees.

Selection: the distinct test targets (each user's last item), sorted by ASIN, are permuted with
`numpy.random.default_rng(seed)`; the first round(fraction * count) (at least one) are "unseen". Sorting by
ASIN makes the choice a function of (dataset, fraction, seed) alone, not of catalogue or user order.

The choice is saved once as `cold_start_split.json` (the unseen ASINs plus how they were chosen) and every
later stage reads that file, so the RQ-VAE (fit on seen items only), the task cache (train/validation
without unseen items, `splits.leave_one_out(exclude_items=...)`) and the evaluation agree by construction.

  python -m tiger_jax.data.cold_start --data_dir=data/beauty --out=work/beauty_coldstart/cold_start_split.json \
      [--fraction=0.05] [--seed=0]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from typing import Optional, Sequence

import numpy as np

from tiger_jax.data.types import Dataset
from tiger_jax import utils

FILENAME = "cold_start_split.json"
FORMAT = "tiger_cold_start_split/1"
DEFAULT_FRACTION = 0.05


@dataclasses.dataclass
class ColdStartSplit:
  """Which items are unseen, and how they were chosen (enough to re-derive and to check the choice)."""
  unseen_asins: tuple[str, ...]
  fraction: float
  seed: int
  num_test_items: int  # distinct test targets the choice was made from
  dataset: str = ""

  def __post_init__(self):
    self.unseen_asins = tuple(sorted(str(a) for a in self.unseen_asins))
    if len(set(self.unseen_asins)) != len(self.unseen_asins):
      raise ValueError("ColdStartSplit: duplicate unseen asin")

  def content_hash(self) -> str:
    """Identifies the split in the ID table's and the task cache's keys."""
    h = hashlib.sha256(f"{FORMAT}|{self.fraction!r}|{self.seed}|".encode())
    h.update("\n".join(self.unseen_asins).encode())
    return h.hexdigest()

  def unseen_mask(self, asins: Sequence[str]) -> np.ndarray:
    """[len(asins)] bool; every unseen asin must be among `asins` (else the split is for other data)."""
    asins = [str(a) for a in asins]
    unseen = set(self.unseen_asins)
    missing = unseen - set(asins)
    if missing:
      raise ValueError(f"cold-start split: {len(missing)} unseen items are not in the catalogue, "
                       f"e.g. {sorted(missing)[:5]} (split made for another dataset?)")
    return np.array([a in unseen for a in asins], dtype=bool)

  def unseen_indices(self, asins: Sequence[str]) -> np.ndarray:
    return np.flatnonzero(self.unseen_mask(asins)).astype(np.int32)

  def to_json(self) -> dict:
    return {"format": FORMAT, "dataset": self.dataset, "fraction": self.fraction, "seed": self.seed,
            "num_test_items": self.num_test_items, "num_unseen": len(self.unseen_asins),
            "selection": "distinct test targets sorted by asin, permuted by numpy default_rng(seed), "
                         "first max(1, round(fraction * count))",
            "content_hash": self.content_hash(), "unseen_asins": list(self.unseen_asins)}

  def save(self, path: str) -> str:
    """Writes JSON atomically; a directory gets `cold_start_split.json`. Returns the file path."""
    if os.path.isdir(path):
      path = os.path.join(path, FILENAME)
    return utils.write_json(path, self.to_json())

  @classmethod
  def load(cls, path: str) -> "ColdStartSplit":
    if os.path.isdir(path):
      path = os.path.join(path, FILENAME)
    with open(path) as f:
      obj = json.load(f)
    if obj.get("format") != FORMAT:
      raise ValueError(f"{path}: format {obj.get('format')!r} is not {FORMAT!r}")
    split = cls(unseen_asins=obj["unseen_asins"], fraction=float(obj["fraction"]), seed=int(obj["seed"]),
                num_test_items=int(obj["num_test_items"]), dataset=obj.get("dataset", ""))
    if obj.get("content_hash") not in (None, split.content_hash()):
      raise ValueError(f"{path}: content_hash does not match its unseen_asins (edited by hand?)")
    return split


def choose_unseen_items(dataset: Dataset, fraction: float = DEFAULT_FRACTION, seed: int = 0
                        ) -> ColdStartSplit:
  """The seeded choice of unseen items among the distinct test targets (module docstring)."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"cold-start fraction must lie in (0, 1), got {fraction}")
  asins = dataset.catalog.asins
  targets = sorted({asins[seq[-1]] for seq in dataset.sessions.sequences if seq})
  if not targets:
    raise ValueError(f"{dataset.name}: no test targets to choose unseen items from")
  count = max(1, int(round(fraction * len(targets))))
  order = np.random.default_rng(seed).permutation(len(targets))[:count]
  return ColdStartSplit(unseen_asins=tuple(targets[i] for i in order), fraction=float(fraction),
                        seed=int(seed), num_test_items=len(targets), dataset=dataset.name)


def main(argv: Optional[Sequence[str]] = None) -> None:
  from tiger_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description="Choose and save the cold-start split (unseen test items).")
  p.add_argument("--data_dir", required=True)
  p.add_argument("--out", required=True, help=f"JSON file or directory (gets {FILENAME}).")
  p.add_argument("--fraction", type=float, default=DEFAULT_FRACTION)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  split = choose_unseen_items(load_dataset(args.data_dir), args.fraction, args.seed)
  path = split.save(args.out)
  print(json.dumps({k: v for k, v in split.to_json().items() if k != "unseen_asins"} | {"path": path},
                   indent=1))


if __name__ == "__main__":
  main()
