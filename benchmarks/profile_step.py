"""Where a training step's accelerator time goes: per-kernel breakdown of the trainer's K-step loop.

Runs the exact compiled loop of tiger_jax.train.StepRunner (resident data, K steps per dispatch) for
each variant and encoder length, times it, then traces one dispatch with jax.profiler and sums the
device kernels by name. Needs jax, flax, optax, numpy and gin-config only (so it runs on GPU hosts without TensorFlow):

  python -m benchmarks.profile_step --out_dir=out \
      --variants bf16,bf16_onehot,bf16_onehot_rbg --lengths 81,17

Prints, per variant and length: ms/step, device-busy ms/step (the rest is launch gaps and host
work), kernels per step and the top kernels; per variant, the step time weighed by the examples' lengths and by
the trainer's steps (its batch schedule, full or partial chunks); writes profile_step[_TAG].json under --out_dir.
The loops compile with the trainer's options (one CUDA graph per loop, its independent kernels side by side;
compilation.DEVICE_LOOP_COMPILER_OPTIONS); `--loop_compiler_options xla_default` compiles them with XLA's
defaults. Set XLA_FLAGS before starting (and --tag) to compare other compiler flags. `--dispatch_inputs fresh`
hands each timed dispatch newly transferred index arrays, as train() does, instead of reusing one set.

Compiling: by default every length's loop compiles side by side with no persistent cache, so each run compiles
from nothing. `--compile_order first_alone` compiles the first length's loop before the others (which can then
reuse its autotuning of the products every length shares), `one_by_one` each in turn. `--compilation_cache_dir
DIR` compiles as train() does with its cache on: JAX's persistent cache (and XLA's autotuning cache) in DIR, and
each loop exported to and compiled from the traced-program cache there.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import time


import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402  (benchmarks/_common.py: command, date, revision, card)
from benchmarks import kernel_trace  # noqa: E402
from benchmarks import train_speed  # noqa: E402  (benchmarks/train_speed.py: data and model builders)
from tiger_jax import compilation  # noqa: E402
from tiger_jax import partitioning  # noqa: E402
from tiger_jax import program_cache as program_cache_lib  # noqa: E402
from tiger_jax import train as train_lib  # noqa: E402
from tiger_jax import utils  # noqa: E402

BATCH_SIZE = 256  # the paper's batch, for every timed loop and schedule
# name -> (activation dtype, one-hot lookups, PRNG implementation for dropout, dropout rate,
#          Adafactor over stacks of same-shaped tensors (utils.per_shape_group) rather than per tensor,
#          dropout layer: 'rng' (flax's) or 'hash' (tiger_jax/dropout.py))
VARIANTS = {
    "fp32": ("float32", False, "threefry2x32", 0.1, True, "rng"),
    "bf16": ("bfloat16", False, "threefry2x32", 0.1, True, "rng"),
    "bf16_onehot": ("bfloat16", True, "threefry2x32", 0.1, True, "rng"),
    "bf16_onehot_rbg": ("bfloat16", True, "unsafe_rbg", 0.1, True, "rng"),
    "bf16_onehot_rbg_pertensor": ("bfloat16", True, "unsafe_rbg", 0.1, False, "rng"),
    "bf16_onehot_hashdrop": ("bfloat16", True, "unsafe_rbg", 0.1, True, "hash"),
    "bf16_onehot_nodropout": ("bfloat16", True, "threefry2x32", 0.0, True, "rng"),
    "bf16_onehot_rbg_castonce": ("bfloat16", True, "unsafe_rbg", 0.1, True, "rng"),
    "bf16_onehot_hashdrop_castonce": ("bfloat16", True, "unsafe_rbg", 0.1, True, "hash"),
}
# Every variant's network casts each weight inside its layer, as when the variants were first measured, whatever
# gin/models sets; a variant's further gin bindings come after (and override) these.
DEFAULT_BINDINGS = ["network.T5Config.cast_weights_once = False"]
VARIANT_BINDINGS = {
    "bf16_onehot_rbg_castonce": ["network.T5Config.cast_weights_once = True"],
    "bf16_onehot_hashdrop_castonce": ["network.T5Config.cast_weights_once = True"],
}

# How the loops of several lengths are compiled before the first step (module docstring).
COMPILE_ORDERS = ("side_by_side", "first_alone", "one_by_one")


def variant_model(name: str, model_gin: str, bindings=()):
  """(model, optimizer, learning-rate schedule) of variant `name`, with its PRNG implementation set for the
  process (the caller sets "threefry2x32" back when done); `bindings` come after the variant's own."""
  dtype, one_hot, prng_impl, dropout, grouped, dropout_impl = VARIANTS[name]
  jax.config.update("jax_default_prng_impl", prng_impl)
  model = train_speed.make_model(model_gin, dtype, dropout, one_hot,
                                 bindings=[f"network.T5Config.dropout_impl = '{dropout_impl}'",
                                           *DEFAULT_BINDINGS, *VARIANT_BINDINGS.get(name, []), *bindings])
  lr_fn = utils.create_learning_rate_scheduler()
  return model, utils.adafactor(lr_fn, group_same_shapes=grouped), lr_fn


def profile_variant(name: str, arrays: dict, lengths, k: int, reps: int, top: int, model_gin: str,
                    hlo_dir: str | None, fixed_trip_count: bool = False, trace_lengths=None,
                    fresh_inputs: bool = False, compiler_options=None, compile_order: str = "side_by_side",
                    traced_program_cache: bool = False) -> dict:
  """Times (and traces) `name`'s loop per length. `fresh_inputs`: every timed dispatch gets newly transferred
  index and step-count arrays, as `train()` passes them, instead of the same device arrays each time; a program
  whose CUDA graphs must follow moved buffers pays for that only in the fresh case. `compiler_options`: the
  loops' XLA options (None: the trainer's). `compile_order`: one of COMPILE_ORDERS (module docstring);
  `traced_program_cache`: export the loops to and compile them from the traced-program cache beside JAX's
  persistent cache (which must be on), as train() does."""
  if compile_order not in COMPILE_ORDERS:
    raise ValueError(f"compile_order {compile_order!r} is not one of {COMPILE_ORDERS}")
  model, tx, lr_fn = variant_model(name, model_gin)
  program_cache = program_cache_lib.for_config(gin.config_str()) if traced_program_cache else None
  if traced_program_cache and program_cache is None:
    raise ValueError("traced_program_cache needs JAX's persistent compilation cache on (compilation.py)")
  partitioner = partitioning.PjitPartitioner()
  feats = {f: arrays[f] for f in utils.MODEL_FEATURES}
  data = partitioner.replicate(feats)
  shapes = {f: (1, feats[f].shape[1]) for f in utils.MODEL_FEATURES}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  init_state = {"step": np.zeros((), np.int32), "params": jax.device_get(params),
                "opt_state": jax.device_get(tx.init(params))}
  rng = partitioner.replicate(np.asarray(jax.random.PRNGKey(1)))
  runner = train_lib.StepRunner(model, tx, lr_fn, partitioner, k, resident=True,
                                fixed_trip_count=fixed_trip_count, compiler_options=compiler_options,
                                program_cache=program_cache)
  nonpad = utils.nonpad_lengths(feats[utils.ENCODER_INPUT])
  order = np.random.default_rng(0).permutation(len(nonpad))
  n = partitioner.replicate(np.asarray(k, np.int32))
  idx_for = {}
  idx_host = {}
  for length in lengths:
    pool = order[nonpad[order] <= length]
    idx_host[length] = np.resize(pool, k * BATCH_SIZE).reshape(k, BATCH_SIZE).astype(np.int32)
    idx_for[length] = partitioner.replicate(idx_host[length])
  # Every length's loop before the first step, as train() compiles them (side by side).
  def args_for(length):
    return partitioner.replicate(init_state), data, idx_for[length], n, rng
  start = time.perf_counter()
  groups = {"side_by_side": [list(lengths)], "first_alone": [list(lengths[:1]), list(lengths[1:])],
            "one_by_one": [[length] for length in lengths]}[compile_order]
  for group in filter(None, groups):
    runner.precompile(group, args_for)
  all_compile_s = time.perf_counter() - start
  print(f"\n== {name}: compiled the loops of lengths {list(lengths)} in {all_compile_s:.1f} s "
        f"({'fixed' if fixed_trip_count else 'dynamic'} trip count, {compile_order})", flush=True)
  out = {"compile_all_lengths_s": all_compile_s, "fixed_trip_count": fixed_trip_count,
         "compile_order": compile_order}
  for length in lengths:
    state = partitioner.replicate(init_state)
    idx = idx_for[length]
    fn = runner.get(length, state, data, idx, n, rng)
    if hlo_dir and (trace_lengths is None or length in trace_lengths):
      loop = "fixed" if fixed_trip_count else "dynamic"
      with gzip.open(os.path.join(hlo_dir, f"hlo_{name}_{loop}_{length}.txt.gz"), "wt") as f:
        f.write(fn.as_text())
    state, outs = fn(state, data, idx, n, rng)  # warm-up; its losses are the first k steps from init
    first_losses = np.asarray(jax.device_get(outs["loss"]), np.float64)
    start = time.perf_counter()
    for _ in range(reps):
      if fresh_inputs:
        idx, n = partitioner.replicate(idx_host[length].copy()), partitioner.replicate(np.asarray(k, np.int32))
      state, outs = fn(state, data, idx, n, rng)
    jax.block_until_ready(outs)
    ms = 1000 * (time.perf_counter() - start) / (reps * k)
    entry = {"ms_per_step": ms, "examples_per_s": BATCH_SIZE / ms * 1000,
             "compile_s": runner.compile_seconds.get(length), "lower_s": runner.lower_seconds.get(length),
             "loss_last": float(np.asarray(outs["loss"])[-1]),
             "first_dispatch_losses": first_losses.tolist()}
    if trace_lengths is None or length in trace_lengths:
      def traced():
        jax.block_until_ready(fn(state, data, idx, n, rng))
      entry.update(kernel_trace.trace_per_step(traced, k, top))
    out[int(length)] = entry
    print(f"\n== {name} L={length}: {ms:.3f} ms/step, device busy "
          f"{entry.get('device_busy_ms_per_step', float('nan')):.3f} ms/step, "
          f"{entry.get('kernels_per_step', float('nan')):.0f} kernels/step", flush=True)
    for row in entry.get("top", [])[:top]:
      print(f"  {row['ms_per_step']:8.4f} ms {row['calls_per_step']:6.1f}x {100 * row['share']:5.1f}%  "
            f"{row['name'][:110]}", flush=True)
  jax.config.update("jax_default_prng_impl", "threefry2x32")
  return out


def bucket_mix(arrays: dict, lengths) -> dict[int, float]:
  """Share of the training examples whose encoder input fits each length (and no shorter one of them)."""
  nonpad = utils.nonpad_lengths(arrays[utils.ENCODER_INPUT])
  padded = np.array([utils.bucket_length(int(l), lengths, max(lengths)) for l in nonpad])
  return {int(b): float(np.mean(padded == b)) for b in sorted(lengths)}


def schedule_mix(arrays: dict, lengths, steps_per_dispatch: int, partial_chunks: bool) -> dict[int, float]:
  """Share of the trainer's steps at each length in an epoch of its batch schedule (utils.BatchSchedule at
  BATCH_SIZE): chunks of steps_per_dispatch steps; full chunks move each bucket's leftovers to longer lengths."""
  schedule = utils.BatchSchedule(utils.nonpad_lengths(arrays[utils.ENCODER_INPUT]), BATCH_SIZE, seed=0,
                                 buckets=lengths, chunk_steps=steps_per_dispatch, max_length=max(lengths),
                                 partial_chunks=partial_chunks)
  _, per_step = schedule.steps(0, schedule.steps_per_epoch)
  return {int(b): float(np.mean(per_step == b)) for b in sorted(lengths)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out_dir", required=True)
  p.add_argument("--data_dir", default=os.path.join(train_speed.REPO, "data", "beauty"))
  p.add_argument("--model_gin", default="gin/models/tiger_t5.gin")
  p.add_argument("--variants", default="bf16,bf16_onehot,bf16_onehot_rbg")
  p.add_argument("--lengths", default="81,17")
  p.add_argument("--trace_lengths", default=None, help="lengths to trace (default: all); '' traces none")
  p.add_argument("--steps_per_dispatch", type=int, default=50)
  p.add_argument("--loop", default="dynamic",
                 help="trip count of the compiled loop: dynamic (a run-time n, the trainer's), fixed "
                      "(StepRunner.fixed_trip_count), or both, comma-separated")
  p.add_argument("--reps", type=int, default=4)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--tag", default="")
  p.add_argument("--dump_hlo", action="store_true", help="write each compiled loop's HLO (gzip)")
  p.add_argument("--dispatch_inputs", choices=("same", "fresh"), default="same",
                 help="same: the timed dispatches reuse one set of index arrays; fresh: each gets new ones, as "
                      "in train()")
  p.add_argument("--loop_compiler_options", choices=("device_loop", "xla_default"), default="device_loop",
                 help="device_loop: the trainer's (compilation.DEVICE_LOOP_COMPILER_OPTIONS); xla_default: none")
  p.add_argument("--compile_order", choices=COMPILE_ORDERS, default="side_by_side",
                 help="side_by_side: all lengths' loops at once, as train(); first_alone: the first length's, "
                      "then the others side by side; one_by_one: each in turn")
  p.add_argument("--compilation_cache_dir", default="off",
                 help="off (default): compile from nothing; DIR: JAX's persistent cache and the traced-program "
                      "cache in DIR, as train() uses them")
  args = p.parse_args()
  os.makedirs(args.out_dir, exist_ok=True)
  cache_dir = compilation.enable_compilation_cache(args.compilation_cache_dir)
  arrays = train_speed.build_examples_in_memory(args.data_dir)["train"]
  lengths = [int(x) for x in args.lengths.split(",")]
  trace_lengths = (None if args.trace_lengths is None
                   else [int(x) for x in args.trace_lengths.split(",") if x])
  mix = bucket_mix(arrays, lengths)
  trainer_mixes = {name: schedule_mix(arrays, lengths, args.steps_per_dispatch, partial)
                   for name, partial in (("full_chunks", False), ("partial_chunks", True))}
  report = {**_common.run_metadata(), "args": vars(args),
            "bucket_mix": mix, "trainer_step_mix": trainer_mixes, "variants": {}}
  path = os.path.join(args.out_dir, f"profile_step{'_' + args.tag if args.tag else ''}.json")
  loops = [x for x in args.loop.split(",") if x]
  if not loops or set(loops) - {"fixed", "dynamic"}:
    p.error(f"--loop: expected fixed and/or dynamic, got {args.loop!r}")
  for name in filter(None, args.variants.split(",")):
    for loop in loops:
      key = name if len(loops) == 1 else f"{name}/{loop}"
      result = profile_variant(name, arrays, lengths, args.steps_per_dispatch, args.reps, args.top,
                               args.model_gin, args.out_dir if args.dump_hlo else None,
                               loop == "fixed", trace_lengths, args.dispatch_inputs == "fresh",
                               {} if args.loop_compiler_options == "xla_default" else None, args.compile_order,
                               cache_dir is not None)
      result["bucket_mean_ms_per_step"] = sum(mix[l] * result[l]["ms_per_step"] for l in lengths)
      for name, shares in trainer_mixes.items():
        result[f"trainer_{name}_ms_per_step"] = sum(shares[l] * result[l]["ms_per_step"] for l in lengths)
      report["variants"][key] = result
      print(f"\n== {key}: {result['bucket_mean_ms_per_step']:.3f} ms/step over the bucket mix {mix}", flush=True)
      print(f"== {key}: over the trainer's steps {result['trainer_full_chunks_ms_per_step']:.3f} ms/step "
            f"(full chunks), {result['trainer_partial_chunks_ms_per_step']:.3f} (partial chunks)", flush=True)
      with open(path, "w") as f:  # after every variant, so a cut-off run keeps what it measured
        json.dump(report, f, indent=1)
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
