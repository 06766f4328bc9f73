"""Offline H100 compile of the trainer loop: directly (profile_step's path) vs through ProgramCache (train()'s),
exported for cuda although the host backend is the CPU."""
import os, sys, time, json, tempfile
sys.path.insert(0, os.getcwd())
import jax, jax.numpy as jnp
from benchmarks import gpu_kernel_count as g, profile_step
from tiger_jax import partitioning, train as train_lib, utils, program_cache, compilation
how, length = sys.argv[1], int(sys.argv[2])
_exp = jax.export.export
jax.export.export = lambda f, **kw: _exp(f, **{**kw, "platforms": ["cuda"]})
opts = {**g.COMPILER_OPTIONS}
dev = g.compile_only_device("h100")
model, tx, lr_fn = profile_step.variant_model("bf16_onehot_rbg_castonce", "gin/models/tiger_t5.gin", ["network.T5Config.cast_weights_once = True"])
widths = {f: 81 if f == utils.ENCODER_INPUT else 5 for f in utils.MODEL_FEATURES}
params = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), {f: (1, w) for f, w in widths.items()})["params"])
state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "opt_state": jax.eval_shape(tx.init, params)}
data = {f: jax.ShapeDtypeStruct((131413, w), jnp.float32 if f == utils.DECODER_WEIGHTS else jnp.int32) for f, w in widths.items()}
part = partitioning.PjitPartitioner(devices=[dev])
runner = train_lib.StepRunner(model, tx, lr_fn, part, 100, resident=True)
loop = runner._build(length, False)
args = (data, jax.ShapeDtypeStruct((100, 256), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32), jax.eval_shape(lambda: jax.random.PRNGKey(1)))
t = time.perf_counter()
if how == "direct":
  lowered = loop.lower(state, *args); t1 = time.perf_counter()
  c = lowered.compile(opts)
  text = lowered.as_text()
else:
  pc = program_cache.ProgramCache(tempfile.mkdtemp(), "x")

  run, _ = pc.compile(loop, state, args, (length, False, 100), *runner._shardings(), compiler_options=opts)
  t1 = time.perf_counter()
print(json.dumps({"how": how, "length": length, "trace_s": round(t1 - t, 1), "total_s": round(time.perf_counter() - t, 1)}))
