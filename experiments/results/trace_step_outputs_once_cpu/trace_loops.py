"""Traces each trainer loop of the paper network (CPU), one after another: trace seconds and the sha256 of
its lowered module text. Run from the repository root with PYTHONPATH=. JAX_PLATFORMS=cpu; argv[1]: lengths."""
import hashlib, sys, time
import jax, numpy as np
from benchmarks import profile_step, train_speed
from tiger_jax import partitioning, train as train_lib, utils


def build():
  """(StepRunner of 100-step loops, its loop arguments) for the paper network on the bundled Beauty."""
  arrays = train_speed.build_examples_in_memory("data/beauty")["train"]
  model, tx, lr_fn = profile_step.variant_model("bf16_onehot_rbg_castonce", "gin/models/tiger_t5.gin")
  part = partitioning.PjitPartitioner()
  feats = {f: arrays[f] for f in utils.MODEL_FEATURES}
  shapes = {f: (1, feats[f].shape[1]) for f in utils.MODEL_FEATURES}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  state = part.replicate({"step": np.zeros((), np.int32), "params": params, "opt_state": tx.init(params)})
  runner = train_lib.StepRunner(model, tx, lr_fn, part, 100, resident=True)
  args = (state, part.replicate(feats), part.replicate(np.zeros((100, 256), np.int32)),
          part.replicate(np.asarray(100, np.int32)), part.replicate(np.asarray(jax.random.PRNGKey(1))))
  return runner, args


if __name__ == "__main__":
  runner, args = build()
  for length in [int(x) for x in sys.argv[1].split(",")]:
    t = time.perf_counter(); traced = runner._build(length, False).trace(*args)
    t1 = time.perf_counter(); txt = traced.lower().as_text()
    print(f"L={length}: trace {t1-t:.2f} s sha {hashlib.sha256(txt.encode()).hexdigest()[:16]}", flush=True)
