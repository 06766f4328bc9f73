"""Offline H100 compile of the trainer loop at one length: kernels per step and compile seconds, for a
dropout variant; BARRIER=1 materialises each hashed mask (optimization_barrier) before its use,
as mask_once.patch does in tiger_jax/dropout.py.

  JAX_PLATFORMS=cpu [BARRIER=1] [TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=hlo_pass_pipeline=1] \
      python experiments/results/<this>/offline_compile.py VARIANT LENGTH"""
import os, sys, time, json
sys.path.insert(0, os.getcwd())
import jax
from benchmarks import gpu_kernel_count as g
from tiger_jax import dropout
variant, length = sys.argv[1], int(sys.argv[2])
if os.environ.get("BARRIER"):
  orig = dropout.keep_mask
  dropout.keep_mask = lambda seed, shape, rate: jax.lax.optimization_barrier(orig(seed, shape, rate))
dev = g.compile_only_device("h100")
t = time.perf_counter()
hlo = g.train_loop_hlo(dev, variant, length, "gin/models/tiger_t5.gin", ["network.T5Config.cast_weights_once = True"])
k = g.loop_kernels(hlo)
print(json.dumps({"variant": variant, "barrier": bool(os.environ.get("BARRIER")), "length": length,
                  "kernels": sum(k.values()), "seconds": round(time.perf_counter() - t, 1),
                  "top": k.most_common(6)}))
