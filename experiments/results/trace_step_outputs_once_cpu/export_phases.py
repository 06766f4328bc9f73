"""One trainer loop (argv[1]: length) compiled directly (argv[2] = direct) or through the traced-program
cache's steps (export, serialize, deserialize, lower the call, compile; argv[2] = export), each phase timed (CPU)."""
import sys, time
import jax, numpy as np
from benchmarks import profile_step, train_speed
from tiger_jax import partitioning, train as train_lib, utils, compilation
length = int(sys.argv[1]); mode = sys.argv[2]
arrays = train_speed.build_examples_in_memory("data/beauty")["train"]
model, tx, lr_fn = profile_step.variant_model("bf16_onehot_rbg_castonce", "gin/models/tiger_t5.gin")
part = partitioning.PjitPartitioner()
feats = {f: arrays[f] for f in utils.MODEL_FEATURES}
data = part.replicate(feats)
shapes = {f: (1, feats[f].shape[1]) for f in utils.MODEL_FEATURES}
params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
state = part.replicate({"step": np.zeros((), np.int32), "params": params, "opt_state": tx.init(params)})
runner = train_lib.StepRunner(model, tx, lr_fn, part, 100, resident=True)
idx = part.replicate(np.zeros((100, 256), np.int32)); n = part.replicate(np.asarray(100, np.int32))
rng = part.replicate(np.asarray(jax.random.PRNGKey(1)))
loop = runner._build(length, False)
t0 = time.perf_counter()
if mode == "direct":
  lowered = loop.lower(state, data, idx, n, rng); t1 = time.perf_counter()
  lowered.compile(runner.compiler_options); t2 = time.perf_counter()
  print(f"direct L={length}: trace+lower {t1-t0:.2f} s, XLA {t2-t1:.2f} s, total {t2-t0:.2f} s")
else:
  leaves, treedef = jax.tree_util.tree_flatten(state)
  def flat_fn(flat_state, *rest):
    new_state, outputs = loop(jax.tree_util.tree_unflatten(treedef, flat_state), *rest)
    return jax.tree_util.tree_leaves(new_state), [outputs[k] for k in sorted(outputs)]
  exported = jax.export.export(jax.jit(flat_fn))(leaves, data, idx, n, rng); t1 = time.perf_counter()
  blob = exported.serialize(); t2 = time.perf_counter()
  back = jax.export.deserialize(bytearray(blob)); t3 = time.perf_counter()
  lowered = jax.jit(back.call, donate_argnums=(0,)).lower(leaves, data, idx, n, rng); t4 = time.perf_counter()
  lowered.compile(runner.compiler_options); t5 = time.perf_counter()
  print(f"export L={length}: export {t1-t0:.2f} s, serialize {t2-t1:.2f}, deserialize {t3-t2:.2f}, "
        f"lower call {t4-t3:.2f}, XLA {t5-t4:.2f} s, total {t5-t0:.2f} s, {len(blob)/1e6:.1f} MB")
