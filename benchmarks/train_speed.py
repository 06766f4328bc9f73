"""Training speed of the paper-sized TIGER model: ms/step, examples/s, where the time goes, bf16 and buckets.

Needs jax, flax, optax, orbax, numpy and gin-config only (no TensorFlow/seqio), so it runs on GPU hosts without them:

  python -m benchmarks.train_speed --out_dir=out [--cache_dir=work/beauty/cache] \
      [--steps=2000] [--configs=fp32,bf16,fp32_buckets,bf16_buckets] [--parts=micro,e2e]

On an H100 each 100-step loop takes ~40 s to compile (three per bucketed config); the micro part
(--parts=micro --micro_lengths=17,33,81 --configs=bf16) and the end-to-end configs (--parts=e2e
--configs=fp32,bf16_buckets) can run separately and their JSON files be merged afterwards.

Without --cache_dir the Beauty training examples are built in memory from data/beauty (the bundled
processed dataset) with random Semantic IDs: speed does not depend on the IDs. Three parts:
  1. micro: accelerator time per step of the jitted multi-step loop for each compute dtype and encoder length
     (forward only; forward + backward; forward + backward + Adafactor), plus one step per dispatch, which
     shows what running many steps per dispatch saves;
  2. end to end: tiger_jax.train.train() for --steps steps per config (resident data, K steps per dispatch,
     with or without length buckets), the loss curve, the validation loss at the end, and the projected
     time of the paper's 200k steps;
  3. comparison of the loss curves (bucketed vs not, bf16 vs fp32) window by window.
Writes train_speed.json (and prints a summary) under --out_dir.
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shutil
import tempfile
import time


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks import _common  # noqa: E402
from tiger_jax import gin_utils  # noqa: E402
from tiger_jax import partitioning  # noqa: E402
from tiger_jax import train as train_lib  # noqa: E402
from tiger_jax import utils  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {  # name -> (activation dtype, length buckets?, hardware RNG for dropout?, one-hot lookups?)
    "fp32": ("float32", False, False, False),
    "bf16": ("bfloat16", False, False, False),
    "fp32_buckets": ("float32", True, False, False),
    "bf16_buckets": ("bfloat16", True, False, False),
    "bf16_buckets_hwrng": ("bfloat16", True, True, False),
    "fp32_onehot": ("float32", False, False, True),
    "bf16_buckets_onehot": ("bfloat16", True, False, True),
}


# ----------------------------------------------------------------------------------------------------------
# Data.


def build_examples_in_memory(data_dir: str, seed: int = 0) -> dict:
  """Beauty's leave-one-out splits as the task cache holds them, with random Semantic IDs (numpy only)."""
  from tiger_jax import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from tiger_jax.data import splits as splits_lib  # pylint: disable=g-import-not-at-top
  from tiger_jax.data.types import Sessions  # pylint: disable=g-import-not-at-top
  layout = vocab_lib.DEFAULT_LAYOUT
  users, sequences, index = [], [], {}
  with gzip.open(os.path.join(data_dir, "sequences.txt.gz"), "rt") as f:
    for line in f:
      parts = line.split()
      if len(parts) < 2:
        continue
      users.append(parts[0])
      sequences.append([index.setdefault(a, len(index)) for a in parts[1:]])
  sessions = Sessions(users, sequences)
  codes = np.random.default_rng(seed).integers(0, layout.codebook_size, (len(index), layout.num_levels))
  item_tokens = layout.codes_to_tokens(codes)
  user_tokens = np.array([layout.user_token(u) for u in users], np.int32)
  out = {}
  for split in ("train", "validation"):
    ex = splits_lib.leave_one_out(sessions, split)
    n = len(ex)
    enc = np.zeros((n, 81), np.int32)
    tgt = np.zeros((n, 5), np.int32)
    for i, (u, history) in enumerate(zip(ex.user_index, ex.history)):
      row = np.concatenate([[user_tokens[u]], item_tokens[history].reshape(-1)])
      enc[i, :len(row)] = row
    tgt[:, :4] = item_tokens[ex.target]
    tgt[:, 4] = vocab_lib.EOS_ID
    dec_in = np.zeros_like(tgt)
    dec_in[:, 1:] = tgt[:, :-1]
    out[split] = {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt,
                  "decoder_loss_weights": (tgt > 0).astype(np.int32), "user_index": ex.user_index,
                  "target_item": ex.target}
  return out


def write_cache(root: str, task: str, splits: dict) -> None:
  os.makedirs(os.path.join(root, task), exist_ok=True)
  for split, arrays in splits.items():
    np.savez(os.path.join(root, task, f"{split}.npz"), **arrays)


def length_stats(lengths: np.ndarray, buckets) -> dict:
  """How much encoder work bucketing saves: mean trimmed length vs the full 81."""
  padded = np.array([utils.bucket_length(int(l), buckets, 81) for l in lengths])
  return {"mean_nonpad_length": float(lengths.mean()), "mean_bucketed_length": float(padded.mean()),
          "full_length": 81, "fraction_per_bucket": {int(b): float(np.mean(padded == b))
                                                     for b in sorted(set(padded.tolist()))}}


# ----------------------------------------------------------------------------------------------------------
# Model.


def make_model(model_gin: str, dtype: str, dropout: float, one_hot: bool = False, bindings=()):
  """The model of gin/models/tiger_t5.gin with the given activation dtype (and extra gin bindings).

  `one_hot` selects t5x's one-hot lookups (T5Config.one_hot_lookups): embedding and relative-bias
  gradients become matmuls instead of scatter-adds with heavily colliding indices.
  """
  import gin  # pylint: disable=g-import-not-at-top
  from tiger_jax import models  # pylint: disable=g-import-not-at-top
  gin.clear_config(clear_constants=True)
  gin_utils.parse_gin_flags(gin_utils.DEFAULT_GIN_SEARCH_PATHS, [model_gin],
                            [f"ACTIVATION_DTYPE = '{dtype}'", f"DROPOUT_RATE = {dropout}",
                             f"network.T5Config.one_hot_lookups = {one_hot}", *bindings],
                            finalize_config=False)
  model = gin.get_configurable(models.EncoderDecoderModel)()
  gin.clear_config(clear_constants=True)
  return model


# ----------------------------------------------------------------------------------------------------------
# Part 1: accelerator time per step.


def micro_timings(model, arrays, batch_size: int, k: int, lengths, reps: int, seed: int = 0) -> dict:
  """ms/step of forward, forward+backward and full steps inside a K-step jitted loop, per encoder length."""
  partitioner = partitioning.PjitPartitioner()
  tx = utils.adafactor(utils.create_learning_rate_scheduler())
  lr_fn = utils.create_learning_rate_scheduler()
  feats = {f: arrays[f] for f in utils.MODEL_FEATURES}
  data = partitioner.replicate(feats)
  width = feats[utils.ENCODER_INPUT].shape[1]
  shapes = {f: (1, feats[f].shape[1]) for f in utils.MODEL_FEATURES}
  params = model.get_initial_variables(jax.random.PRNGKey(seed), shapes)["params"]
  state = partitioner.replicate({"step": np.zeros((), np.int32), "params": jax.device_get(params),
                                 "opt_state": jax.device_get(tx.init(params))})
  rng = partitioner.replicate(np.asarray(jax.random.PRNGKey(1)))
  runner = train_lib.StepRunner(model, tx, lr_fn, partitioner, k, resident=True)
  single = train_lib.StepRunner(model, tx, lr_fn, partitioner, 1, resident=True)
  lengths_of = utils.nonpad_lengths(feats[utils.ENCODER_INPUT])
  order = np.random.default_rng(seed).permutation(len(lengths_of))
  results = {}

  def pick(length, steps):
    pool = order[lengths_of[order] <= length]
    need = steps * batch_size
    return np.resize(pool, need).reshape(steps, batch_size).astype(np.int32)

  def make_loop(kind, length):
    def gather(d, rows):
      batch = {f: jnp.take(d[f], rows, axis=0) for f in utils.MODEL_FEATURES}
      batch[utils.ENCODER_INPUT] = batch[utils.ENCODER_INPUT][:, :length]
      return batch

    def loop(params, d, idx, base):
      def body(i, acc):
        batch = gather(d, idx[i])
        r = jax.random.fold_in(base, i)
        if kind == "forward":
          return acc + model.loss_fn(params, batch, r)[0]
        (loss, _), grads = jax.value_and_grad(lambda p: model.loss_fn(p, batch, r), has_aux=True)(params)
        return acc + loss + 1e-30 * optax.global_norm(grads)
      return jax.lax.fori_loop(0, idx.shape[0], body, jnp.zeros((), jnp.float32))
    return jax.jit(loop)

  def timed(fn, *args):
    jax.block_until_ready(fn(*args))  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
      out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / reps

  for length in lengths:
    entry = {}
    idx = partitioner.replicate(pick(length, k))
    n = partitioner.replicate(np.asarray(k, np.int32))
    start = time.perf_counter()
    full = runner.get(min(length, width), state, data, idx, n, rng)
    entry["compile_full_s"] = time.perf_counter() - start

    def run_full(st=None):
      nonlocal state
      state, outs = full(state, data, idx, n, rng)
      return outs["loss"]

    entry["full_ms"] = 1000 * timed(run_full) / k
    for kind in ("forward", "forward_backward"):
      loop = make_loop(kind, length)
      start = time.perf_counter()
      compiled = loop.lower(state["params"], data, idx, rng).compile()
      entry[f"compile_{kind}_s"] = time.perf_counter() - start
      entry[f"{kind}_ms"] = 1000 * timed(compiled, state["params"], data, idx, rng) / k
    entry["backward_ms"] = entry["forward_backward_ms"] - entry["forward_ms"]
    entry["optimizer_ms"] = entry["full_ms"] - entry["forward_backward_ms"]
    entry["examples_per_s"] = batch_size / (entry["full_ms"] / 1000)
    results[int(length)] = entry
    logging.info("micro L=%d: %s", length, json.dumps({k_: round(v, 3) for k_, v in entry.items()}))

  # One step per dispatch from Python (what a plain loop pays), at full length.
  idx1 = partitioner.replicate(pick(width, 1))
  n1 = partitioner.replicate(np.asarray(1, np.int32))
  one = single.get(width, state, data, idx1, n1, rng)

  def run_one():
    nonlocal state
    steps = k
    for _ in range(steps):
      state, outs = one(state, data, idx1, n1, rng)
    return outs["loss"]

  per_dispatch = timed(run_one) / k
  results["one_step_per_dispatch_ms_at_81"] = 1000 * per_dispatch
  return results


# ----------------------------------------------------------------------------------------------------------
# Part 2: end to end.


def end_to_end(name: str, model, cache_root: str, task: str, batch_size: int, steps: int, k: int, buckets,
               eval_batches: int, seed: int, hw_rng: bool = False) -> dict:
  model_dir = tempfile.mkdtemp(prefix=f"train_speed_{name}_")
  cfg = lambda split, shuffle: utils.DatasetConfig(task, {"inputs": 81, "targets": 5}, split, batch_size,
                                                   shuffle, cache_dir=cache_root)
  try:
    result = train_lib.train(model=model, train_dataset_cfg=cfg("train", True),
                             train_eval_dataset_cfg=cfg("validation", False), model_dir=model_dir,
                             total_steps=steps, eval_period=steps, stats_period=max(steps // 20, 1),
                             random_seed=seed, steps_per_dispatch=k, length_buckets=buckets,
                             eval_steps=eval_batches, use_tensorboard=False, use_hardware_rng=hw_rng,
                             checkpoint_cfg=utils.CheckpointConfig(
                                 save=utils.SaveCheckpointConfig(period=steps, keep=1, keep_best=False)))
  finally:
    jax.config.update("jax_default_prng_impl", "threefry2x32")
    shutil.rmtree(model_dir, ignore_errors=True)
  rate = result.steps_per_second
  losses = result.losses.astype(np.float64)
  window = max(steps // 20, 1)
  curve = [float(losses[i:i + window].mean()) for i in range(0, len(losses), window)]
  return {"steps": steps, "ms_per_step": 1000.0 / rate if rate else None, "steps_per_s": rate,
          "examples_per_s": rate * batch_size, "wall_s": result.seconds,
          "compile_s": result.compile_seconds,
          "projected_200k_steps_min": 200000 / rate / 60 if rate else None,
          "loss_window": window, "loss_curve": curve,
          "final_validation_loss": result.evals[-1]["validation/loss"] if result.evals else None}


def compare_curves(a: list, b: list) -> dict:
  a, b = np.asarray(a), np.asarray(b)
  n = min(len(a), len(b))
  diff = b[:n] - a[:n]
  return {"max_abs_diff": float(np.max(np.abs(diff))), "mean_diff": float(np.mean(diff)),
          "last_window_diff": float(diff[-1])}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out_dir", required=True)
  p.add_argument("--cache_dir", default=None, help="task cache root; default: build from --data_dir")
  p.add_argument("--task", default="tiger_beauty")
  p.add_argument("--data_dir", default=os.path.join(REPO, "data", "beauty"))
  p.add_argument("--model_gin", default="gin/models/tiger_t5.gin")
  p.add_argument("--configs", default="fp32,bf16,fp32_buckets,bf16_buckets")
  p.add_argument("--buckets", default="17,33,81")
  p.add_argument("--steps", type=int, default=2000, help="end-to-end steps per config")
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--steps_per_dispatch", type=int, default=100)
  p.add_argument("--micro_lengths", default="17,33,81")
  p.add_argument("--micro_reps", type=int, default=5)
  p.add_argument("--parts", default="micro,e2e", help="which parts to run: micro, e2e or both")
  p.add_argument("--compilation_cache", default="/tmp/train_speed_xla_cache",
                 help="persistent XLA cache: identical loops (micro vs end to end) compile once; '' disables")
  p.add_argument("--eval_batches", type=int, default=16)
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  gin_utils.setup_logging("INFO")
  os.makedirs(args.out_dir, exist_ok=True)
  if args.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  buckets = [int(b) for b in args.buckets.split(",") if b]
  report = {**_common.run_metadata(), "devices": [str(d) for d in jax.devices()], "args": vars(args)}

  tmp_cache = None
  cache_root = args.cache_dir
  if cache_root is None:
    tmp_cache = tempfile.mkdtemp(prefix="train_speed_cache_")
    start = time.time()
    write_cache(tmp_cache, args.task, build_examples_in_memory(args.data_dir, args.seed))
    cache_root = tmp_cache
    report["data"] = (f"built in memory from {args.data_dir} with random Semantic IDs in "
                      f"{time.time() - start:.0f}s")
  else:
    report["data"] = f"task cache {cache_root}/{args.task}"
  try:
    train_arrays = utils.get_dataset_arrays(utils.DatasetConfig(
        args.task, {"inputs": 81, "targets": 5}, "train", args.batch_size, True, cache_dir=cache_root))
    report["train_examples"] = int(len(train_arrays[utils.ENCODER_INPUT]))
    report["lengths"] = length_stats(utils.nonpad_lengths(train_arrays[utils.ENCODER_INPUT]), buckets)
    logging.info("data: %s; %s", report["data"], json.dumps(report["lengths"]))

    configs = [c for c in args.configs.split(",") if c]
    parts = set(args.parts.split(","))
    if "micro" in parts:
      report["micro"] = {}
      for dtype, one_hot in sorted({(CONFIGS[c][0], CONFIGS[c][3]) for c in configs}):
        model = make_model(args.model_gin, dtype, args.dropout, one_hot)
        report["micro"][dtype + ("_onehot" if one_hot else "")] = micro_timings(
            model, train_arrays, args.batch_size, args.steps_per_dispatch,
            [int(x) for x in args.micro_lengths.split(",")], args.micro_reps, args.seed)
        _write(args.out_dir, report)

    report["end_to_end"] = {}
    for name in (configs if "e2e" in parts else []):
      dtype, use_buckets, hw_rng, one_hot = CONFIGS[name]
      model = make_model(args.model_gin, dtype, args.dropout, one_hot)
      logging.info("end to end: %s", name)
      report["end_to_end"][name] = end_to_end(
          name, model, cache_root, args.task, args.batch_size, args.steps, args.steps_per_dispatch,
          buckets if use_buckets else None, args.eval_batches, args.seed, hw_rng)
      _write(args.out_dir, report)

    e2e = report["end_to_end"]
    report["curve_comparison"] = {}
    for a, b in (("fp32", "fp32_buckets"), ("bf16", "bf16_buckets"), ("fp32", "bf16"),
                 ("fp32", "bf16_buckets"), ("fp32", "fp32_onehot"), ("bf16_buckets", "bf16_buckets_onehot")):
      if a in e2e and b in e2e:
        report["curve_comparison"][f"{b}_vs_{a}"] = compare_curves(e2e[a]["loss_curve"], e2e[b]["loss_curve"])
    _write(args.out_dir, report)
    _print_summary(report)
  finally:
    if tmp_cache:
      shutil.rmtree(tmp_cache, ignore_errors=True)


def _write(out_dir: str, report: dict) -> None:
  with open(os.path.join(out_dir, "train_speed.json"), "w") as f:
    json.dump(report, f, indent=1)


def _print_summary(report: dict) -> None:
  print(f"\n== train speed on {report['device_kind']} (jax {report['jax']}), batch "
        f"{report['args']['batch_size']}, {report['args']['steps_per_dispatch']} steps per dispatch")
  lengths = report.get("lengths", {})
  if lengths:
    print(f"encoder length: mean non-pad {lengths['mean_nonpad_length']:.1f}, bucketed "
          f"{lengths['mean_bucketed_length']:.1f}, full 81; fraction per bucket "
          f"{lengths['fraction_per_bucket']}")
  for dtype, rows in report.get("micro", {}).items():
    print(f"\nmicro ({dtype}): ms/step by encoder length")
    print(f"  {'L':>4} {'fwd':>7} {'bwd':>7} {'opt':>7} {'total':>7} {'ex/s':>9}")
    for length, e in rows.items():
      if isinstance(e, dict):
        print(f"  {length:>4} {e['forward_ms']:7.2f} {e['backward_ms']:7.2f} {e['optimizer_ms']:7.2f} "
              f"{e['full_ms']:7.2f} {e['examples_per_s']:9.0f}")
    print(f"  one step per dispatch at L=81: {rows['one_step_per_dispatch_ms_at_81']:.2f} ms/step")
  print("\nend to end (train(): resident data, K steps per dispatch)")
  print(f"  {'config':<20} {'ms/step':>8} {'ex/s':>9} {'200k steps':>11} {'compile s':>10} {'val loss':>9}")
  for name, e in report.get("end_to_end", {}).items():
    compile_s = sum((e["compile_s"] or {}).values())
    val = e["final_validation_loss"] or float("nan")
    print(f"  {name:<20} {e['ms_per_step']:8.2f} {e['examples_per_s']:9.0f} "
          f"{e['projected_200k_steps_min']:9.1f} m {compile_s:10.1f} {val:9.4f}")
  for key, c in report.get("curve_comparison", {}).items():
    print(f"  loss curve {key}: max |diff| {c['max_abs_diff']:.4f}, mean diff {c['mean_diff']:+.4f}, "
          f"last window {c['last_window_diff']:+.4f}")


if __name__ == "__main__":
  main()
