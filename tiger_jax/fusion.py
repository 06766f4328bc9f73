r"""A hybrid recommender: weighted reciprocal-rank fusion of several systems' ranked lists, weighed on validation.

  python -m tiger_jax.fusion --system tiger=work/beauty/tuned/model --system transitions=/tmp/transitions \
      --out_dir=/tmp/hybrid [--metric=ndcg@10] [--weight_step=0.1] [--c=1,5,20,60] [--k=20]

Why: generative retrieval and item co-occurrence find different targets (TIGER finds rare ones, the transition
baseline ranks frequent ones higher), so the best list a user could ship may take from both. Each system is a
run directory holding the validation and test predictions.jsonl of docs/CONTRACTS.md: `eval_<split>/` (eval,
the baselines) or `<split>/` (tiger_jax.select_refit's phase 3). An item's fused score is
sum_m w_m / (c + rank_m), rank 1-based, an item absent from a list adding nothing; ties go to the item the
earlier-listed system ranks higher, then to the asin.

The weights (a simplex grid of step `--weight_step`) and c are chosen on validation alone, by the rule
"highest validation `--metric`, ties to the earlier grid point" (grid order: c as given, then weights with the
first system's weight highest first). `out_dir/selection.json` records every grid point's validation metrics
and the pick before any test file is opened; then the test split is fused once with the pick
(`out_dir/eval_test/{metrics.json,predictions.jsonl}`; `eval_validation/` holds the pick's validation lists).
A rerun reuses selection.json; a different set of systems or grid is refused. The systems' files must agree:
the same users, each once, with the same target; anything else is an error naming the file and line.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tiger_jax import metrics as metrics_lib
from tiger_jax import predictions as predictions_lib
from tiger_jax import utils
from tiger_jax.data.errors import DataFormatError

log = logging.getLogger("tiger_jax.fusion")

SELECTION_FILE = "selection.json"
PREDICTIONS_FILE = predictions_lib.FILE_NAME
SPLITS = ("validation", "test")
DEFAULT_C = (1.0, 5.0, 20.0, 60.0)


class FusionInputError(ValueError):
  """A system's predictions cannot be fused: missing, malformed, or disagreeing with another system's."""


# ----------------------------------------------------------------------------------------------------------
# Reading and checking the systems' predictions.


def predictions_path(run_dir: str, split: str) -> str:
  """`run_dir/eval_<split>/predictions.jsonl`, else `run_dir/<split>/predictions.jsonl` (select_refit)."""
  candidates = [os.path.join(run_dir, f"eval_{split}", PREDICTIONS_FILE),
                os.path.join(run_dir, split, PREDICTIONS_FILE)]
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise FusionInputError(f"no {split} predictions in {run_dir}: neither {candidates[0]} nor {candidates[1]} exists")


def read_predictions(path: str) -> dict[str, predictions_lib.Ranked]:
  """user -> that user's line of one predictions.jsonl, checked line by line."""
  try:
    return {row.user: row for row in predictions_lib.read(path)}
  except DataFormatError as e:
    raise FusionInputError(str(e)) from None


def load_split(systems: Mapping[str, str], split: str) -> tuple[list[str], list[str], list[list[list[str]]]]:
  """(users, targets, lists[user][system]) of one split, users in the first system's order; every system must
  hold the same users with the same targets."""
  paths = {name: predictions_path(run_dir, split) for name, run_dir in systems.items()}
  read = {name: read_predictions(path) for name, path in paths.items()}
  names = list(systems)
  first, first_path = read[names[0]], paths[names[0]]
  for name in names[1:]:
    other, path = read[name], paths[name]
    missing, extra = [u for u in first if u not in other], [u for u in other if u not in first]
    if missing or extra:
      user, where = (missing[0], path) if missing else (extra[0], first_path)
      raise FusionInputError(f"{split}: {len(missing)} users only in {first_path}, {len(extra)} only in {path} "
                             f"(e.g. {user!r}, missing from {where}): the files are not of one split")
    for user, row in first.items():
      if other[user].target != row.target:
        raise FusionInputError(f"{split}: user {user!r} has target {other[user].target!r} in {path} line "
                               f"{other[user].line} but {row.target!r} in {first_path} line {row.line}: the "
                               "files are not of one split of one dataset")
  users = list(first)
  return users, [first[u].target for u in users], [[read[n][u].topk for n in names] for u in users]


# ----------------------------------------------------------------------------------------------------------
# Fusion and selection.


def fuse(lists: Sequence[Sequence[str]], weights: Sequence[float], c: float, k: int) -> list[tuple[str, float]]:
  """The top k (asin, fused score) of one user's ranked lists, one per system."""
  scores: dict[str, float] = {}
  first_seen: dict[str, tuple[int, int]] = {}
  for m, (ranked, weight) in enumerate(zip(lists, weights)):
    for position, asin in enumerate(ranked):
      if weight > 0:
        scores[asin] = scores.get(asin, 0.0) + weight / (c + position + 1)
      first_seen.setdefault(asin, (m, position))
  ranked = [a for a in scores if scores[a] > 0]
  ranked.sort(key=lambda a: (-scores[a], first_seen[a], a))
  return [(a, scores[a]) for a in ranked[:k]]


def weight_grid(num_systems: int, step: float) -> list[tuple[float, ...]]:
  """Non-negative weights summing to 1 on a grid of `step`, the first system's weight highest first."""
  if not 0 < step <= 1:
    raise ValueError(f"weight_step must be in (0, 1], got {step}")
  units = round(1 / step)
  if abs(units * step - 1) > 1e-9:
    raise ValueError(f"weight_step must divide 1 (e.g. 0.1, 0.125, 0.25), got {step}")
  grid = [p for p in itertools.product(range(units, -1, -1), repeat=num_systems) if sum(p) == units]
  return [tuple(round(x / units, 10) for x in p) for p in grid]


def split_metrics(users_lists: Sequence[Sequence[Sequence[str]]], targets: Sequence[str], weights, c: float,
                  k: int, ks: Sequence[int] = metrics_lib.DEFAULT_KS) -> dict[str, float]:
  """Recall/NDCG@ks of the fused lists."""
  ranks = np.array([_target_rank(fuse(lists, weights, c, k), target)
                    for lists, target in zip(users_lists, targets)], np.int64)
  return metrics_lib.ranking_metrics(ranks, ks)


def _target_rank(fused: Sequence[tuple[str, float]], target: str) -> int:
  """0-based position of the target in a fused list, -1 when absent (metrics.target_ranks' convention)."""
  return next((position for position, (asin, _) in enumerate(fused) if asin == target), -1)


def _identity(systems: Mapping[str, str], grid: Sequence, cs: Sequence[float], metric: str, k: int) -> dict:
  return {"systems": {n: os.path.abspath(d) for n, d in systems.items()}, "weights_grid": [list(w) for w in grid],
          "c_grid": list(cs), "metric": metric, "k": k}


def select(systems: Mapping[str, str], out_dir: str, metric: str = "ndcg@10", weight_step: float = 0.1,
           cs: Sequence[float] = DEFAULT_C, k: int = 20) -> dict:
  """Chooses weights and c on validation and writes selection.json (or reuses a matching one)."""
  grid = weight_grid(len(systems), weight_step)
  identity = _identity(systems, grid, cs, metric, k)
  path = os.path.join(out_dir, SELECTION_FILE)
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    for key, value in identity.items():
      if record.get(key) != value:
        raise FusionInputError(f"{path}: its {key} {record.get(key)!r} differs from this command's {value!r}; "
                               "the test split was already scored with that selection, so use a fresh --out_dir")
    log.info("selection: %s exists; reused (weights %s, c %g)", path, record["chosen"]["weights"],
             record["chosen"]["c"])
    return record
  users, targets, lists = load_split(systems, "validation")
  ks = sorted({5, 10, int(metric.split("@")[1]) if "@" in metric else 10})
  points = []
  for c in cs:
    for weights in grid:
      found = split_metrics(lists, targets, weights, c, k, ks)
      if metric not in found:
        raise ValueError(f"--metric {metric!r} is not one of {sorted(found)}")
      points.append({"c": c, "weights": list(weights), **found})
  best = max(range(len(points)), key=lambda i: (points[i][metric], -i))
  record = dict(identity, rule=f"highest validation {metric}; ties to the earlier grid point (c as listed, then "
                                "weights with the first system's highest first)",
                chosen=points[best], num_validation_users=len(users), points=points)
  utils.write_json(path, record)
  log.info("selection: validation %s %.4f with weights %s (%s), c %g -> %s", metric, points[best][metric],
           points[best]["weights"], ", ".join(systems), points[best]["c"], path)
  return record


def write_split(systems: Mapping[str, str], out_dir: str, split: str, weights, c: float, k: int) -> dict:
  """Fuses one split with the chosen parameters; writes eval_<split>/{predictions.jsonl,metrics.json}."""
  users, targets, lists = load_split(systems, split)
  directory = os.path.join(out_dir, f"eval_{split}")
  os.makedirs(directory, exist_ok=True)
  ranks = np.full(len(users), -1, np.int64)
  rows = []
  for u, (user, target, user_lists) in enumerate(zip(users, targets, lists)):
    fused = fuse(user_lists, weights, c, k)
    ranks[u] = _target_rank(fused, target)
    rows.append(predictions_lib.Ranked(user, target, [a for a, _ in fused], [s for _, s in fused]))
  predictions_lib.write(os.path.join(directory, PREDICTIONS_FILE), rows, score_digits=6)
  result: dict[str, Any] = metrics_lib.ranking_metrics(ranks)
  result.update({"split": split, "num_users": len(users), "model": "fusion", "systems": list(systems),
                 "weights": list(weights), "c": c, "k": k})
  utils.write_json(os.path.join(directory, "metrics.json"), result)
  return result


def run(systems: Mapping[str, str], out_dir: str, metric: str = "ndcg@10", weight_step: float = 0.1,
        cs: Sequence[float] = DEFAULT_C, k: int = 20) -> dict[str, dict]:
  """Selection on validation, then the test split once; returns both splits' metrics."""
  if len(systems) < 2:
    raise ValueError(f"fusion needs at least two systems, got {list(systems)}")
  if k < 10:
    raise ValueError(f"k={k}: Recall/NDCG@10 need lists of at least 10 items")
  record = select(systems, out_dir, metric, weight_step, cs, k)
  weights, c = record["chosen"]["weights"], record["chosen"]["c"]
  results = {}
  for split in SPLITS:
    done = os.path.join(out_dir, f"eval_{split}", "metrics.json")
    if os.path.exists(done):
      with open(done) as f:
        results[split] = json.load(f)
    else:
      results[split] = write_split(systems, out_dir, split, weights, c, k)
  return results


def _system(text: str) -> tuple[str, str]:
  name, sep, run_dir = text.partition("=")
  if not sep or not name or not run_dir:
    raise argparse.ArgumentTypeError(f"expected NAME=RUN_DIR, got {text!r}")
  return name, run_dir


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m tiger_jax.fusion", description=__doc__.splitlines()[0])
  parser.add_argument("--system", type=_system, action="append", required=True,
                      help="NAME=RUN_DIR holding eval_<split>/ or <split>/predictions.jsonl; two or more.")
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--metric", default="ndcg@10", help="Validation metric the weights are chosen by.")
  parser.add_argument("--weight_step", type=float, default=0.1, help="Step of the simplex grid of weights.")
  parser.add_argument("--c", default=",".join(f"{c:g}" for c in DEFAULT_C), help="Rank offsets to try.")
  parser.add_argument("--k", type=int, default=20, help="Length of the fused lists.")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s] %(message)s")
  systems = dict(args.system)
  if len(systems) != len(args.system):
    parser.error("--system: each NAME once")
  try:
    cs = [float(x) for x in args.c.split(",") if x]
    results = run(systems, args.out_dir, args.metric, args.weight_step, cs, args.k)
  except (ValueError, OSError) as e:
    log.error("%s", e)
    sys.exit(2)
  from tiger_jax.baselines import evaluation  # pylint: disable=g-import-not-at-top
  print(evaluation.format_table([(f"fusion {split}", results[split]) for split in SPLITS]))


if __name__ == "__main__":
  main()
