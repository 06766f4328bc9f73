"""One trainer loop (argv[1]: length) compiled directly (argv[2] = direct) or through the traced-program
cache's steps (export, serialize, deserialize, lower the call, compile; argv[2] = export), each phase timed (CPU).
Run from the repository root with PYTHONPATH=.:experiments/results/trace_step_outputs_once_cpu JAX_PLATFORMS=cpu."""
import sys, time
import jax
from trace_loops import build

length, mode = int(sys.argv[1]), sys.argv[2]
runner, (state, data, idx, n, rng) = build()
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
