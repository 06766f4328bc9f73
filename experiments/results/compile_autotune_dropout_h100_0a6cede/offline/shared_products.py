"""Which matrix products of the trainer loop have the same operand shapes at two encoder lengths (offline, H100)."""
import os, sys, re, collections, json
sys.path.insert(0, os.getcwd())
from benchmarks import gpu_kernel_count as g
dev = g.compile_only_device("h100")
res = {}
for L in (17, 33, 81):
  hlo = g.train_loop_hlo(dev, "bf16_onehot_rbg_castonce", L, "gin/models/tiger_t5.gin", ["network.T5Config.cast_weights_once = True"])
  sigs = collections.Counter()
  for line in hlo.splitlines():
    if "custom_call_target=\"__cublas" in line:
      m = re.search(r"=\s*(\(?[^=]*?\)?)\s+custom-call\((.*?)\), custom_call_target", line)
      if m:
        ops = re.sub(r"%[\w.\-]+", "", m.group(2))
        sigs[(m.group(1)[:80], ops)] += 1
  res[L] = sigs
for a, b in ((17, 33), (17, 81), (33, 81)):
  shared = sum((res[a] & res[b]).values())
  print(a, b, "products", sum(res[a].values()), sum(res[b].values()), "distinct", len(res[a]), len(res[b]),
        "distinct shared", len(set(res[a]) & set(res[b])))
