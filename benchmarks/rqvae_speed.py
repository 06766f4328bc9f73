"""Times RQ-VAE training (paper schedule by default) and reports codebook usage and collisions.

Needs jax, flax, optax, numpy and gin-config, not TensorFlow or seqio:

  python -m benchmarks.rqvae_speed \
      --embeddings .cache/dev/beauty_embeddings.npy --asins .cache/dev/beauty_asins.txt \
      --out_dir=out --variant paper --variant paper_noreset:dead_code_reset_every=0

Each `--variant NAME[:key=value,...]` trains once with RQVAEConfig overrides (on top of
`--set` overrides shared by all variants) and writes NAME.json (timings, stats, usage during
training) and NAME_semantic_ids.npz to --out_dir, plus summary.json. `ms_per_step` is the whole training wall
over its steps, compile included; `steady_ms_per_step` leaves out the first dispatch (`first_dispatch_seconds`,
which compiles the epoch loop), so short schedules can be compared with the paper's. `--trace_dispatches N` then
profiles N more dispatches of the same compiled loop (no compiling): kernel launches and device-busy ms per
step, and the top kernels.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time


import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402
from benchmarks import kernel_trace  # noqa: E402
from tiger_jax import rqvae  # noqa: E402
from tiger_jax import semantic_ids  # noqa: E402


def _items(text: str) -> list[str]:
  """`text` split at the commas outside brackets, so `hidden_dims=(512,256),beta=0.5` is two items."""
  items, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    depth += (ch in "([{") - (ch in ")]}")
    if ch == "," and depth == 0:
      items.append(text[start:i])
      start = i + 1
  return [item for item in items + [text[start:]] if item.strip()]


def _overrides(text: str) -> dict:
  out = {}
  for item in _items(text):
    if "=" not in item:
      raise SystemExit(f"rqvae_speed: {item!r} in --set or --variant is not key=value")
    key, value = item.split("=", 1)
    out[key.strip()] = _common.literal_or_string(value.strip())
  return out


def epoch_loop_kernels(trainer: rqvae.Trainer, x: np.ndarray, params, dispatches: int, top: int) -> dict:
  """`dispatches` more dispatches of the trainer's own compiled epoch loop, from `params` and a fresh optimiser
  state, under the profiler: kernel launches and device-busy ms per training step (the kernels do not depend
  on the values). The loop is the one training ran, so nothing compiles again."""
  x_device = jax.device_put(x)
  epochs = trainer.dispatch_epochs

  def traced():
    p = jax.device_put(params)  # a fresh copy per dispatch: the loop donates its inputs on accelerators
    state = (p, trainer.tx.init(p))
    for i in range(dispatches):
      state = trainer.run_epochs(*state, x_device, jax.random.PRNGKey(2 + i), epochs)[:2]
    jax.block_until_ready(state)
  steps = dispatches * epochs * trainer.steps_per_epoch
  return {"dispatches": dispatches, "epochs": dispatches * epochs, "steps": steps,
          **kernel_trace.trace_per_step(traced, steps, top)}


def _print_kernels(name: str, kernels: dict) -> None:
  if "trace_error" in kernels:
    print(f"[{name}] no kernel profile: {kernels['trace_error']}", flush=True)
    return
  print(f"[{name}] {kernels['kernels_per_step']:.1f} kernels and {kernels['device_busy_ms_per_step']:.4f} device "
        f"ms per step ({kernels['steps']} steps traced)", flush=True)
  for row in kernels["top"]:
    print(f"  {row['ms_per_step']:8.4f} ms {row['calls_per_step']:6.1f}x {100 * row['share']:5.1f}%  "
          f"{row['name'][:110]}", flush=True)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--embeddings", required=True)
  p.add_argument("--asins", required=True,
                 help="asin order: text file (one a line) or embeddings.json of tiger_jax.embed")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--variant", action="append", default=[],
                 help="NAME[:key=value,...] RQVAEConfig overrides; repeatable (default: paper)")
  p.add_argument("--set", action="append", default=[], help="key=value,... overrides for every variant; repeatable")
  p.add_argument("--trace_dispatches", type=int, default=0,
                 help="after each variant, profile this many further dispatches of its compiled epoch loop "
                      "(100 epochs each in the paper config): kernels and device ms per step")
  p.add_argument("--top", type=int, default=15, help="kernels listed per trace")
  args = p.parse_args()

  x = np.load(args.embeddings).astype(np.float32)
  with open(args.asins) as f:
    if args.asins.endswith(".json"):  # tiger_jax.embed's embeddings.json
      asins = json.load(f)["asins"]
    else:
      asins = [line.strip() for line in f if line.strip()]
  os.makedirs(args.out_dir, exist_ok=True)
  meta = _common.run_metadata(num_items=int(x.shape[0]), input_dim=int(x.shape[1]))
  print(json.dumps(meta), flush=True)
  shared = _overrides(",".join(args.set))
  summary = {"meta": meta, "variants": {}}
  for spec in args.variant or ["paper"]:
    name, _, over = spec.partition(":")
    cfg = dataclasses.replace(rqvae.RQVAEConfig(), **{**shared, **_overrides(over)})
    print(f"== {name}: {cfg.to_dict()}", flush=True)
    t0 = time.time()
    ids, result = semantic_ids.rqvae_semantic_ids(x, asins, cfg, lambda s: print(f"[{name}] {s}",
                                                                         flush=True))
    wall = time.time() - t0
    st = ids.stats
    steps = st["train_steps"]
    report = {
        "name": name, "config": cfg.to_dict(), "wall_seconds": wall,
        "init_seconds": st["init_seconds"], "train_seconds": st["train_seconds"],
        "steps": steps, "ms_per_step": 1000 * st["train_seconds"] / max(steps, 1),
        "first_dispatch_seconds": st["first_dispatch_seconds"], "steady_ms_per_step": st["steady_ms_per_step"],
        "codebook_usage_rqvae_levels": st["rqvae_codebook_usage"],
        "codebook_usage_all_levels": st["codebook_usage"],
        "unique_prefixes": st["unique_prefixes"], "largest_bucket": st["largest_bucket"],
        "items_in_collisions": st["items_in_collisions"],
        "reconstruction_loss": st["reconstruction_loss"], "rq_loss": st["rq_loss"],
        "init_reconstruction_loss": st["init_reconstruction_loss"],
        "init_codebook_usage": st["init_codebook_usage"],
        "dead_code_resets": st["dead_code_resets"],
        "usage_during_training": st["usage_during_training"],
        "loss_history_every_100_epochs": result["history"][::100].tolist(),
        "semantic_ids_hash": ids.content_hash(),
    }
    if args.trace_dispatches:
      report["kernels"] = epoch_loop_kernels(result["trainer"], x, result["params"], args.trace_dispatches,
                                             args.top)
      _print_kernels(name, report["kernels"])
    ids.save(os.path.join(args.out_dir, f"{name}_semantic_ids.npz"))
    with open(os.path.join(args.out_dir, f"{name}.json"), "w") as f:
      json.dump({"meta": meta, **report}, f, indent=1)
    short = {k: report[k] for k in ("wall_seconds", "train_seconds", "ms_per_step", "first_dispatch_seconds",
                                    "steady_ms_per_step",
                                    "codebook_usage_rqvae_levels", "unique_prefixes",
                                    "largest_bucket", "reconstruction_loss")}
    summary["variants"][name] = short
    print(f"== {name} done: {json.dumps(short)}", flush=True)
  with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)


if __name__ == "__main__":
  main()
