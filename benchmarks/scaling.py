"""Data-parallel scaling of the paper-sized TIGER trainer over 1, 2, 4, 8 devices of one host.

For each device count k (from --device_counts, capped at the devices present) it runs tiger_jax.train.train()
end to end on a mesh over the first k devices:
  - strong scaling: the paper's global batch (256) split over k devices, --steps steps;
  - weak scaling: --per_device_batch rows on each device (global batch k x that), --steps / k steps,
    so every run sees the same number of examples.
It reports examples/s, scaling efficiency against the 1-device run of the same mode, and the validation loss
after the same number of examples; strong-scaling runs must match the 1-device loss (same global batches,
threefry dropout masks that do not depend on the sharding). Needs jax, flax, optax, orbax, numpy, gin:

  python -m benchmarks.scaling --out_dir=out --device_counts 1,2,4,8 --steps 3000
  # a CPU check of the plumbing:
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m benchmarks.scaling \
      --out_dir /tmp/scaling --device_counts 1,2,4 --steps 8 --steps_per_dispatch 4 --dtype float32

Without --cache_dir the Beauty examples are built in memory from data/beauty with random Semantic IDs
(speed and loss agreement do not depend on the IDs). Writes scaling.json under --out_dir.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile


import jax  # noqa: E402

from benchmarks import _common  # noqa: E402  (benchmarks/_common.py: command, date, revision, card)
from benchmarks import train_speed  # noqa: E402  (benchmarks/train_speed.py: in-memory data and model builders)
from tiger_jax import partitioning  # noqa: E402
from tiger_jax import train as train_lib  # noqa: E402
from tiger_jax import utils  # noqa: E402

TASK = "tiger_beauty"


def run(model, cache_root: str, devices, batch_size: int, steps: int, args) -> dict:
  model_dir = tempfile.mkdtemp(prefix=f"scaling_{len(devices)}dev_")
  # Validation always in batches of --global_batch, so every run's loss covers the same examples.
  cfg = lambda split, shuffle, batch: utils.DatasetConfig(TASK, {"inputs": 81, "targets": 5}, split, batch,
                                                          shuffle, cache_dir=cache_root)
  try:
    result = train_lib.train(
        model=model, train_dataset_cfg=cfg("train", True, batch_size),
        train_eval_dataset_cfg=cfg("validation", False, args.global_batch),
        partitioner=partitioning.PjitPartitioner(devices=devices), model_dir=model_dir, total_steps=steps,
        eval_period=steps, stats_period=max(steps // 10, 1), random_seed=args.seed,
        steps_per_dispatch=args.steps_per_dispatch, length_buckets=args.buckets or None,
        eval_steps=args.eval_batches, use_tensorboard=False,
        checkpoint_cfg=utils.CheckpointConfig(save=utils.SaveCheckpointConfig(period=steps, keep=1,
                                                                               keep_best=False)))
  finally:
    shutil.rmtree(model_dir, ignore_errors=True)
  rate = result.steps_per_second
  return {"devices": len(devices), "global_batch": batch_size, "steps": steps,
          "examples": steps * batch_size, "ms_per_step": 1000 / rate if rate else None,
          "examples_per_s": rate * batch_size if rate else None, "compile_s": result.compile_seconds,
          "validation_loss": result.evals[-1]["validation/loss"] if result.evals else None}


def to_markdown(report: dict) -> str:
  """The scaling tables, from scaling.json alone."""
  args = report["args"]
  lines = [f"# Data-parallel scaling: {report['device_kind']} x{report['device_count']}", "",
           f"Command: `{report['command']}`; date {report['date']}; revision {report['git_revision']}; "
           f"{args['dtype']}, encoder length {args['buckets'] or 81}, {args['steps']} steps at one device, "
           f"validation loss on {args['eval_batches']} batches of {args['global_batch']}.", ""]
  for mode, rows in report["runs"].items():
    lines += [f"{mode} scaling:", "", "| GPUs | global batch | steps | ms/step | examples/s | speedup | "
              "efficiency | validation loss | minus 1-GPU |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['devices']} | {r['global_batch']} | {r['steps']} | {r['ms_per_step']:.2f} | "
              f"{r['examples_per_s']:.0f} | {r['speedup']:.2f} | {r['efficiency']:.2f} | "
              f"{r['validation_loss']:.4f} | {r['loss_minus_base']:+.4f} |" for r in rows]
    lines.append("")
  return "\n".join(lines)


def write_markdown(out_dir: str, report: dict) -> None:
  with open(os.path.join(out_dir, "scaling.md"), "w") as f:
    f.write(to_markdown(report))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out_dir", required=True)
  p.add_argument("--render", default=None, help="only write the markdown of this scaling.json into --out_dir")
  p.add_argument("--cache_dir", default=None, help="task cache root holding tiger_beauty/; default: in memory")
  p.add_argument("--data_dir", default=os.path.join(train_speed.REPO, "data", "beauty"))
  p.add_argument("--model_gin", default="gin/models/tiger_t5.gin")
  p.add_argument("--device_counts", default="1,2,4,8")
  p.add_argument("--modes", default="strong,weak")
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--global_batch", type=int, default=256)
  p.add_argument("--per_device_batch", type=int, default=256)
  p.add_argument("--steps_per_dispatch", type=int, default=100)
  p.add_argument("--buckets", default="17,33,81", help="encoder length buckets ('' for none)")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--eval_batches", type=int, default=20)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  args.buckets = [int(b) for b in args.buckets.split(",") if b]
  os.makedirs(args.out_dir, exist_ok=True)
  if args.render:
    with open(args.render) as f:
      report = json.load(f)
    write_markdown(args.out_dir, report)
    return

  cache_root = args.cache_dir
  if cache_root is None:
    cache_root = tempfile.mkdtemp(prefix="scaling_cache_")
    train_speed.write_cache(cache_root, TASK, train_speed.build_examples_in_memory(args.data_dir, args.seed))
  devices = jax.devices()
  counts = sorted({int(c) for c in args.device_counts.split(",") if int(c) <= len(devices)})
  model = train_speed.make_model(args.model_gin, args.dtype, 0.1, one_hot=True)
  report = {**_common.run_metadata(), "args": vars(args), "runs": {}}
  path = os.path.join(args.out_dir, "scaling.json")
  for mode in filter(None, args.modes.split(",")):
    rows = []
    for k in counts:
      if mode == "strong":
        if args.global_batch % k:
          continue
        rows.append(run(model, cache_root, devices[:k], args.global_batch, args.steps, args))
      elif k == 1 and args.per_device_batch == args.global_batch and report["runs"].get("strong"):
        rows.append(dict(report["runs"]["strong"][0]))  # the same run: one device, the same batch and steps
      else:
        rows.append(run(model, cache_root, devices[:k], args.per_device_batch * k, max(args.steps // k, 1),
                        args))
      base = rows[0]
      for row in rows:
        speedup = row["examples_per_s"] / base["examples_per_s"]
        row["speedup"], row["efficiency"] = speedup, speedup / (row["devices"] / base["devices"])
        row["loss_minus_base"] = row["validation_loss"] - base["validation_loss"]
      print(f"{mode} k={rows[-1]['devices']}: " + json.dumps({k_: (round(v, 4) if isinstance(v, float) else v)
                                                            for k_, v in rows[-1].items()}), flush=True)
      report["runs"][mode] = rows
      utils.write_json(path, report)
  write_markdown(args.out_dir, report)
  print(f"wrote {path} and scaling.md")


if __name__ == "__main__":
  main()
