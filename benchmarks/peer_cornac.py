r"""Side by side with a peer: cornac's TIGER (PyTorch) and tiger_jax on the same data, embeddings and batch size.

  python -m benchmarks.peer_cornac --out_dir out --embeddings_dir EMB [--data_dir data/beauty] \
      [--cornac_epochs 20] [--tiger_steps 20000] [--eval_period 2000] [--target_ndcg X]

cornac 3.0.1 (PyPI) ships TIGER with constructor defaults that reproduce the paper's architecture (4+4 layers,
d_model 128, 6 heads of 64, d_ff 1024, dropout 0.1, RQ-VAE 512-256-128-32 with 3 x 256 codes). Both systems get
the same users' sequences under the same leave-one-out split (train prefixes, validation = second-to-last item),
the same item embeddings (each builds its own Semantic IDs from them) and batch 256, in one process tree on one
machine, one after the other. cornac is not a dependency of this project: `pip install cornac==3.0.1` (it needs
torch and transformers, which the `data` extra brings); on a host without network, `pip download -d DIR
cornac==3.0.1` elsewhere (its dependencies come along) and `pip install --no-index --find-links DIR cornac`.

Measured, for each system:
- examples per second of its training loop (cornac: its epochs' examples over the time spent in its training
  loop; tiger_jax: the trainer's own ms/step at batch 256), and their ratio;
- the validation NDCG@10 curve against training seconds (validation and compile time excluded): cornac's own
  validation (beam search of `--cornac_val_sample` users every `--cornac_val_every` epochs), tiger_jax's
  (20 constrained beams over every validation user every `--eval_period` steps);
- the training seconds each needs to reach `--target_ndcg` (default: the lower of the two best values, so both
  reach it), and their ratio.
Writes peer_cornac.json (with the commands and both curves) under --out_dir and prints a table. Tiny settings
(`--max_users`, few epochs and steps) run it on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks import _common
from benchmarks import recipe_speed

REPO = _common.REPO
_BATCH = re.compile(r"train split: \d+ examples, batch (\d+)")
_EVAL = re.compile(r"eval at step (\d+) \([\d.]+s\): .*?validation/ndcg@10 ([\d.]+)")


def cornac_records(users: Sequence[str], sequences: Sequence[Sequence[str]]) -> tuple[list, list]:
  """(train, validation) rows in cornac's 'USIT' format (user, session, item, time), one session per user.

  Train holds each sequence without its last two items (the leave-one-out training prefix); validation holds
  it without the test item, so its last item is the validation target and the rest is the history."""
  train, validation = [], []
  for user, items in zip(users, sequences):
    for t, item in enumerate(items[:-2]):
      train.append((user, user, item, t))
    for t, item in enumerate(items[:-1]):
      validation.append((user, user, item, t))
  return train, validation


def seconds_to_reach(curve: Sequence[tuple[float, float]], target: float) -> Optional[float]:
  """The training seconds of the first point whose NDCG@10 is at least `target` (None if none is)."""
  for seconds, value in curve:
    if value >= target:
      return seconds
  return None


def tiger_curve(log_text: str, ms_per_step: float) -> list[tuple[float, float]]:
  """(training seconds, validation NDCG@10) from tiger_jax.train's log: step count times the measured step time."""
  return [(int(step) * ms_per_step / 1000, float(value)) for step, value in _EVAL.findall(log_text)]


def run_cornac(users, sequences, asins, embeddings, *, epochs: int, val_every: int, val_sample: int,
               batch_size: int, seed: int) -> dict[str, Any]:
  """Trains cornac's TIGER (constructor defaults) and times its training loop apart from its validations."""
  import cornac  # pylint: disable=g-import-not-at-top
  from cornac.data import FeatureModality  # pylint: disable=g-import-not-at-top
  from cornac.eval_methods import NextItemEvaluation  # pylint: disable=g-import-not-at-top
  from cornac.models import TIGER  # pylint: disable=g-import-not-at-top

  train, validation = cornac_records(users, sequences)
  method = NextItemEvaluation.from_splits(train_data=train, test_data=validation, val_data=validation, fmt="USIT",
                                          mode="last", item_feature=FeatureModality(features=embeddings,
                                                                                    ids=list(asins)))
  curve, clock = [], {"validation": 0.0, "start": None}

  class TimedTIGER(TIGER):
    """Records (training seconds, validation NDCG@10) at each of cornac's validations."""

    def _fit_seq2seq(self, torch, val_set):  # pylint: disable=arguments-differ
      clock["start"] = time.perf_counter()
      return super()._fit_seq2seq(torch, val_set)

    def _validate(self, val_sessions, metric):
      began = time.perf_counter()
      trained = began - clock["start"] - clock["validation"]
      value = super()._validate(val_sessions, metric)
      clock["validation"] += time.perf_counter() - began
      curve.append((trained, value))
      return value

  model = TimedTIGER(n_epochs=epochs, batch_size=batch_size, model_selection="best", val_eval_every=val_every,
                     val_sample=val_sample, seed=seed, verbose=False)
  began = time.perf_counter()
  model.fit(method.train_set, method.val_set)
  total = time.perf_counter() - began
  loop = time.perf_counter() - clock["start"] - clock["validation"] if clock["start"] else float("nan")
  examples_per_epoch = sum(max(len(s) - 2 - 1, 0) for s in sequences)
  return {"version": cornac.__version__, "epochs": epochs, "batch_size": batch_size, "val_every": val_every,
          "val_sample": val_sample, "fit_seconds": total, "training_loop_seconds": loop,
          "validation_seconds": clock["validation"], "examples_per_epoch": examples_per_epoch,
          "examples_per_second": examples_per_epoch * epochs / loop if loop > 0 else float("nan"),
          "device": getattr(model, "device_", "?"), "curve": curve}


def run_tiger(args, work_dir: str, env: dict) -> dict[str, Any]:
  """tiger_jax's paper recipe through its own stage commands, validated every --eval_period steps."""
  commands = recipe_speed.stage_commands(
      dataset=args.dataset, data_dir=args.data_dir, work_dir=work_dir, gin_file=args.tiger_gin, rqvae_gin=None,
      compilation_cache_dir=os.path.join(work_dir, "xla_cache"), train_steps=args.tiger_steps,
      embeddings_dir=args.embeddings_dir, bindings=[f"EVAL_PERIOD={args.eval_period}", *args.binding])
  commands = [(name, argv) for name, argv in commands if name != "eval"]
  results = recipe_speed.run_stages(commands, work_dir, os.path.join(args.out_dir, "logs"), args.embeddings_dir, env)
  failed = [r for r in results if r.returncode != 0]
  if failed:
    raise RuntimeError(f"tiger_jax stage {failed[0].name} failed: see {failed[0].log}")
  with open(next(r.log for r in results if r.name == "train")) as f:
    log_text = f.read()
  parsed = recipe_speed.parse_train_log(log_text)
  ms = parsed["ms_per_step"]
  batch = int(_BATCH.search(log_text).group(1))
  return {"gin_file": args.tiger_gin, "steps": parsed["steps"], "batch_size": batch, "ms_per_step": ms,
          "examples_per_second": batch * 1000 / ms, "stage_seconds": {r.name: r.seconds for r in results},
          "commands": {r.name: r.command for r in results}, "curve": tiger_curve(log_text, ms)}


def _read_users(data_dir: str, max_users: Optional[int]) -> tuple[list[str], list[list[str]]]:
  from tiger_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  dataset = data_lib.load_dataset(data_dir)
  asins = dataset.catalog.asins
  users = list(dataset.sessions.users)
  sequences = [[asins[i] for i in seq] for seq in dataset.sessions.sequences]
  if max_users:
    users, sequences = users[:max_users], sequences[:max_users]
  return users, sequences


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out_dir", required=True)
  p.add_argument("--dataset", default="beauty")
  p.add_argument("--data_dir", default=None, help="default: data/<dataset>")
  p.add_argument("--embeddings_dir", required=True, help="embeddings.npy/json of tiger_jax.embed, for both")
  p.add_argument("--tiger_gin", default=None, help="default: gin/<dataset>.gin (the paper recipe)")
  p.add_argument("--tiger_steps", type=int, default=20000)
  p.add_argument("--eval_period", type=int, default=2000)
  p.add_argument("--binding", action="append", default=[], help="NAME=VALUE gin binding for tiger_jax")
  p.add_argument("--cornac_epochs", type=int, default=20)
  p.add_argument("--cornac_val_every", type=int, default=2)
  p.add_argument("--cornac_val_sample", type=int, default=2000)
  p.add_argument("--max_users", type=int, default=None, help="first N users only (a quick run)")
  p.add_argument("--target_ndcg", type=float, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--skip", choices=("cornac", "tiger"), default=None, help="run one side only")
  args = p.parse_args(argv)
  args.data_dir = args.data_dir or os.path.join(REPO, "data", args.dataset)
  args.tiger_gin = args.tiger_gin or f"gin/{args.dataset}.gin"
  os.makedirs(args.out_dir, exist_ok=True)
  report: dict[str, Any] = {**_common.run_metadata(argv if argv is not None else sys.argv),
                            "dataset": args.dataset, "max_users": args.max_users}
  path = os.path.join(args.out_dir, "peer_cornac.json")
  from tiger_jax import embed  # pylint: disable=g-import-not-at-top
  embeddings, asins, _ = embed.load_embeddings(args.embeddings_dir)
  if args.skip != "cornac":
    users, sequences = _read_users(args.data_dir, args.max_users)
    report["cornac"] = run_cornac(users, sequences, asins, np.asarray(embeddings, np.float32),
                                  epochs=args.cornac_epochs, val_every=args.cornac_val_every,
                                  val_sample=args.cornac_val_sample, batch_size=256, seed=args.seed)
    with open(path, "w") as f:
      json.dump(report, f, indent=1)
  if args.skip != "tiger":
    if args.max_users:
      raise SystemExit("--max_users applies to cornac only; give tiger_jax a --data_dir of that size instead")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    report["tiger_jax"] = run_tiger(args, os.path.join(args.out_dir, "tiger_work"), env)
  if "cornac" in report and "tiger_jax" in report:
    c, t = report["cornac"], report["tiger_jax"]
    bests = [max((v for _, v in s["curve"]), default=float("nan")) for s in (c, t)]
    target = args.target_ndcg if args.target_ndcg is not None else min(bests)
    reach = {name: seconds_to_reach(s["curve"], target) for name, s in (("cornac", c), ("tiger_jax", t))}
    report["comparison"] = {
        "examples_per_second_ratio": t["examples_per_second"] / c["examples_per_second"],
        "target_ndcg@10": target, "training_seconds_to_target": reach,
        "time_to_target_ratio": (reach["cornac"] / reach["tiger_jax"]
                                 if reach["cornac"] and reach["tiger_jax"] else None)}
    print(f"\n{'':10}{'examples/s':>12}{'best val N@10':>15}{'s to target':>13}")
    for name, s, best in (("cornac", c, bests[0]), ("tiger_jax", t, bests[1])):
      print(f"{name:10}{s['examples_per_second']:12.0f}{best:15.4f}{reach[name] or float('nan'):13.1f}")
    print(f"tiger_jax / cornac: {report['comparison']['examples_per_second_ratio']:.2f}x examples/s; "
          f"target validation NDCG@10 {target:.4f}")
  with open(path, "w") as f:
    json.dump(report, f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
