"""Kernels per training step for an NVIDIA GPU, counted on a host without one.

Compiles a training loop ahead of time for the GPU a target file describes (`benchmarks/gpu_targets/NAME.txtpb`:
the card's facts that XLA plans kernels with) and counts what the loop's body launches per step: fusions,
library calls and copies. A GPU step of these small networks costs about as much per kernel as per FLOP, so the
count says, without a card, whether a change can make a step faster; only a timing on a card says by how much.

  python -m benchmarks.gpu_kernel_count --program train --variants bf16_onehot_rbg_castonce --lengths 17,81
  python -m benchmarks.gpu_kernel_count --program rqvae --variant base --variant bf16:compute_dtype=bfloat16

`--program train` is the trainer's K-step loop (`benchmarks.profile_step`'s variants, paper network, batch 256);
`--program rqvae` the RQ-VAE's epoch loop of Beauty's shape (12,101 items, 384-d; `--variant NAME:key=value,...`
sets RQVAEConfig fields). Needs jax's CUDA plugin (`pip install "jax[cuda12]"`) but no GPU; run it with
JAX_PLATFORMS=cpu. Without a device XLA cannot pick Triton tiles for some matrix products, so every product is
compiled as a cuBLAS call (`xla_gpu_enable_triton_gemm=false`), and nothing is autotuned. Against the profiler's
kernels per step on an H100 the counts are 1-8 % low (autotuned products split in two kernels; casts and
activations that Triton products fuse count apart here), and the difference two variants make comes out about
a fifth smaller (experiments/results/gpu_kernel_count_offline): compare variants with each other, not with profiles.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import sys
import time
from typing import Iterable, Optional, Sequence

from benchmarks import _common

TARGETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")
COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}
# HLO instructions that launch nothing: they name buffers, or hold the computations that do.
NOT_KERNELS = frozenset({"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "conditional",
                         "call", "after-all", "opt-barrier", "partition-id", "replica-id", "add-dependency"})
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_OPCODE = re.compile(r"\s([a-z][a-z0-9\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_BODY = re.compile(r"body=%?([\w.\-]+)")


def computations(hlo: str) -> dict[str, list[str]]:
  """Computation name -> its instruction lines, from compiled HLO text."""
  comps: dict[str, list[str]] = {}
  body: Optional[list[str]] = None
  for line in hlo.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(" "):
      body = comps.setdefault(header.group(1), [])
    elif line.startswith("}"):
      body = None
    elif body is not None and " = " in line:
      body.append(line.strip())
  return comps


def opcode(line: str) -> str:
  """The opcode of one instruction line (`%x = f32[2]{0} fusion(%a), kind=kLoop, ...` -> 'fusion')."""
  found = _OPCODE.search(" " + line.split(" = ", 1)[1])
  return found.group(1) if found else "?"


def kernel_name(line: str) -> Optional[str]:
  """What a launching instruction runs, grouped by kind ('fusion:fused_reduce', 'custom-call:<target>',
  'copy'); None for instructions that launch nothing."""
  op = opcode(line)
  if op in NOT_KERNELS:
    return None
  if op == "fusion":
    called = _CALLS.search(line)
    name = called.group(1) if called else "?"
    return "fusion:" + re.sub(r"(_computation)?([._]\d+)*(\.clone)*$", "", name)
  if op == "custom-call":
    target = _TARGET.search(line)
    return "custom-call:" + (target.group(1) if target else "?")
  return op


def loop_kernels(hlo: str) -> collections.Counter:
  """Kernels of the largest loop body in `hlo` (the training step), by kind. Kernels of a loop nested in that
  body are not counted (the programs compiled here have none)."""
  comps = computations(hlo)
  bodies = [_BODY.search(line).group(1) for lines in comps.values() for line in lines
            if opcode(line) == "while"]
  if not bodies:
    raise ValueError("the compiled program has no loop")
  counts = [collections.Counter(filter(None, map(kernel_name, comps[b]))) for b in bodies]
  return max(counts, key=lambda c: sum(c.values()))


def compile_only_device(target: str):
  """A device that programs compile for but never run on: the GPU of `TARGETS_DIR/target.txtpb`."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  path = target if target.endswith(".txtpb") else os.path.join(TARGETS_DIR, f"{target}.txtpb")
  with open(path) as f:
    spec = f.read()
  try:
    topology = topologies.get_topology_desc(platform="cuda", topology="1x1x1", target_config=spec)
  except (RuntimeError, NotImplementedError, ValueError) as e:
    raise SystemExit(f"no compile-only CUDA device for {path}: {e}\n(needs jax's CUDA plugin: "
                     "pip install 'jax[cuda12]')") from e
  return topology.devices[0]


def _shapes(tree, sharding):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def train_loop_hlo(device, variant: str, length: int, model_gin: str, bindings: Sequence[str] = (),
                   steps: int = 100, batch: int = 256, examples: int = 131413) -> str:
  """The trainer's `steps`-step loop at encoder length `length`, compiled for `device` (Beauty's split size)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import profile_step  # pylint: disable=g-import-not-at-top
  from tiger_jax import partitioning  # pylint: disable=g-import-not-at-top
  from tiger_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  from tiger_jax import utils  # pylint: disable=g-import-not-at-top
  model, tx, lr_fn = profile_step.variant_model(variant, model_gin, bindings)
  widths = {f: 81 if f == utils.ENCODER_INPUT else 5 for f in utils.MODEL_FEATURES}
  params = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.PRNGKey(0), {f: (1, w) for f, w in widths.items()})["params"])
  state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "opt_state": jax.eval_shape(tx.init, params)}
  data = {f: jax.ShapeDtypeStruct((examples, w), jnp.float32 if f == utils.DECODER_WEIGHTS else jnp.int32)
          for f, w in widths.items()}
  runner = train_lib.StepRunner(model, tx, lr_fn, partitioning.PjitPartitioner(devices=[device]), steps,
                                resident=True)
  loop = runner._build(length, False)  # pylint: disable=protected-access
  lowered = loop.lower(state, data, jax.ShapeDtypeStruct((steps, batch), jnp.int32),
                       jax.ShapeDtypeStruct((), jnp.int32), jax.eval_shape(lambda: jax.random.PRNGKey(1)))
  jax.config.update("jax_default_prng_impl", "threefry2x32")
  return lowered.compile(COMPILER_OPTIONS).as_text()


def rqvae_loop_hlo(device, overrides: dict, num_items: int = 12101, input_dim: int = 384) -> str:
  """The RQ-VAE's loop of one epoch (its steps as one loop) with `overrides` of RQVAEConfig, for `device`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import SingleDeviceSharding  # pylint: disable=g-import-not-at-top
  from tiger_jax import rqvae  # pylint: disable=g-import-not-at-top
  cfg = dataclasses.replace(rqvae.RQVAEConfig(), **overrides)
  trainer = rqvae.Trainer(input_dim, num_items, cfg)
  x = jax.ShapeDtypeStruct((num_items, input_dim), jnp.float32)
  params = jax.eval_shape(trainer._init_impl, x, jax.eval_shape(lambda: jax.random.PRNGKey(0)))  # pylint: disable=protected-access
  on = SingleDeviceSharding(device)
  lowered = trainer.run_epochs.lower(
      _shapes(params, on), _shapes(jax.eval_shape(trainer.tx.init, params), on), _shapes(x, on),
      _shapes(jax.eval_shape(lambda: jax.random.PRNGKey(1)), on), 1)
  return lowered.compile(COMPILER_OPTIONS).as_text()


def _overrides(text: str) -> dict:
  from benchmarks import rqvae_speed  # pylint: disable=g-import-not-at-top
  return rqvae_speed._overrides(text)  # pylint: disable=protected-access


def report_line(name: str, kernels: collections.Counter, top: int) -> str:
  rows = [f"{name}: {sum(kernels.values())} kernels per step"]
  rows += [f"  {count:5d} {kind}" for kind, count in kernels.most_common(top)]
  return "\n".join(rows)


def main(argv: Optional[Iterable[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--program", choices=("train", "rqvae"), required=True)
  p.add_argument("--target", default="h100", help=f"a file of {TARGETS_DIR} (h100, h200) or a .txtpb path")
  p.add_argument("--variants", default="bf16_onehot_rbg_castonce", help="train: benchmarks.profile_step variants")
  p.add_argument("--lengths", default="17", help="train: encoder lengths")
  p.add_argument("--model_gin", default="gin/models/tiger_t5.gin")
  p.add_argument("--gin_bindings", action="append", default=[], help="train: extra gin bindings")
  p.add_argument("--variant", action="append", default=[], help="rqvae: NAME[:key=value,...]; repeatable")
  p.add_argument("--top", type=int, default=12, help="kinds of kernel listed per program")
  p.add_argument("--out", default="", help="also write the counts as JSON here")
  args = p.parse_args(None if argv is None else list(argv))
  device = compile_only_device(args.target)
  results = {}
  if args.program == "train":
    jobs = [(f"{v} L={length}", lambda v=v, length=length: train_loop_hlo(device, v, length, args.model_gin,
                                                                           args.gin_bindings))
            for v in filter(None, args.variants.split(",")) for length in map(int, args.lengths.split(","))]
  else:
    jobs = [(spec.partition(":")[0], lambda spec=spec: rqvae_loop_hlo(device, _overrides(spec.partition(":")[2])))
            for spec in args.variant or ["base"]]
  for name, build in jobs:
    start = time.perf_counter()
    kernels = loop_kernels(build())
    results[name] = {"kernels_per_step": sum(kernels.values()), "by_kind": dict(kernels.most_common()),
                     "compile_seconds": time.perf_counter() - start}
    print(report_line(name, kernels, args.top) + f"\n  (compiled in {results[name]['compile_seconds']:.1f} s)",
          flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({**_common.run_metadata(), "target": args.target, "compiler_options": COMPILER_OPTIONS,
                 "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1:])
