"""The trainer's loops (paper network, batch 256, 100 steps a dispatch) under train()'s dispatch patterns.

Each dispatch gets newly transferred index and step-count arrays, as train() passes them. Patterns: one encoder
length alone, lengths 17 and 81 alternating, runs of three dispatches per length, each with and without
fetching the previous dispatch's outputs after queueing the next (train()'s `drain`). PCACHE=1 compiles the
loops from a stored traced program (tiger_jax/program_cache.py), as train() does. Set XLA_FLAGS to compare.

  PYTHONPATH=. [PCACHE=1] [ROUNDS=2] XLA_FLAGS=... python experiments/results/<this>/dispatch_patterns.py TAG OUT.json
"""
import json, os, sys, time
import jax, numpy as np
from benchmarks import profile_step, train_speed
from tiger_jax import partitioning, train as train_lib, utils
tag, out = sys.argv[1], sys.argv[2]
lengths = [17, 81]
k, reps = int(os.environ.get("K", 100)), int(os.environ.get("REPS", 6))
arrays = train_speed.build_examples_in_memory(os.path.join(train_speed.REPO, "data", "beauty"))["train"]
model, tx, lr_fn = profile_step.variant_model("bf16_onehot_rbg_castonce", "gin/models/tiger_t5.gin")
part = partitioning.PjitPartitioner()
feats = {f: arrays[f] for f in utils.MODEL_FEATURES}
data = part.replicate(feats)
params = model.get_initial_variables(jax.random.PRNGKey(0), {f: (1, feats[f].shape[1]) for f in feats})["params"]
init = {"step": np.zeros((), np.int32), "params": jax.device_get(params), "opt_state": jax.device_get(tx.init(params))}
rng = part.replicate(np.asarray(jax.random.PRNGKey(1)))
runner = train_lib.StepRunner(model, tx, lr_fn, part, k, resident=True)
if os.environ.get("PCACHE"):
  import tempfile
  from tiger_jax import program_cache
  runner.program_cache = program_cache.ProgramCache(tempfile.mkdtemp(), "probe " + tag)
order = np.random.default_rng(0).permutation(len(arrays[utils.ENCODER_INPUT]))
nonpad = utils.nonpad_lengths(feats[utils.ENCODER_INPUT])
idx_np = {L: np.resize(order[nonpad[order] <= L], k * 256).reshape(k, 256).astype(np.int32) for L in lengths}
t = time.perf_counter()
runner.precompile(lengths, lambda L: (part.replicate(init), data, part.replicate(idx_np[L]), part.replicate(np.asarray(k, np.int32)), rng))
res = {"tag": tag, "compile_s": time.perf_counter() - t, "xla_flags": os.environ.get("XLA_FLAGS", "")}
print(f"== {tag}: compiled {lengths} in {res['compile_s']:.1f} s", flush=True)
fns = {L: runner._compiled[(L, False)] for L in lengths}
print("== program:", type(fns[17]).__name__, getattr(fns[17], "__name__", ""), flush=True)
state = part.replicate(init)
nk = part.replicate(np.asarray(k, np.int32))
def dispatch(L):
  global state
  idx = part.replicate(idx_np[L].copy())
  state, outs = fns[L](state, data, idx, part.replicate(np.asarray(k, np.int32)), rng)
  return outs
for L in lengths:  # warm each graph
  jax.block_until_ready(dispatch(L))
def timed(name, seq, drain):
  jax.block_until_ready(state)
  t = time.perf_counter(); pending = None; marks = []
  for L in seq:
    outs = dispatch(L)
    if drain and pending is not None:
      jax.device_get(pending); marks.append(time.perf_counter())
    pending = outs
  jax.block_until_ready(pending)
  s = time.perf_counter() - t
  res.setdefault(name, []).append(s)
  print(f"== {tag} {name}: {1000*s/(len(seq)*k):.3f} ms/step over {len(seq)} dispatches", flush=True)
for rep in range(int(os.environ.get("ROUNDS", 2))):
  for L in lengths:
    timed(f"alone{L}", [L] * reps, False)
    timed(f"alone{L}_drain", [L] * reps, True)
  timed("alternate", [17, 81] * reps, False)
  timed("alternate_drain", [17, 81] * reps, True)
  timed("runs3_drain", ([17] * 3 + [81] * 3) * (reps // 3), True)
with open(out, "w") as f:
  json.dump(res, f)
