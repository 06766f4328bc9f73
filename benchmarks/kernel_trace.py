"""Which kernels a piece of device work launched and how long each ran, read from jax's profiler trace.

Shared by `profile_step` (the T5 training loop) and `rqvae_speed` (the RQ-VAE's epoch loop). Needs jax only.
On a CPU the trace has no device stream: `trace_per_step` then reports the error instead of numbers.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import shutil
import tempfile
from typing import Any, Callable


def device_kernels(trace_dir: str) -> dict[str, list[float]]:
  """Kernel name -> durations (us) of the device-stream events in a perfetto trace written by jax."""
  paths = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(paths[0], "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  processes, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      processes[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e["pid"], e["tid"])] = e["args"]["name"]
  device_pids = {pid for pid, name in processes.items() if "GPU" in name or "TPU" in name}
  kernels = collections.defaultdict(list)
  for e in events:
    if e.get("ph") != "X" or e.get("pid") not in device_pids:
      continue
    if "Stream" not in threads.get((e["pid"], e.get("tid")), ""):
      continue  # module/op summary rows repeat the kernels' time
    kernels[e["name"]].append(float(e.get("dur", 0.0)))
  return kernels


def summarise(kernels: dict[str, list[float]], steps: int, top: int) -> dict[str, Any]:
  """Device-busy ms and kernel launches per step, and the `top` kernels by total time."""
  total = {name: sum(d) for name, d in kernels.items()}
  busy_us = sum(total.values())
  rows = sorted(total.items(), key=lambda kv: -kv[1])[:top]
  return {
      "device_busy_ms_per_step": busy_us / 1000 / steps,
      "kernels_per_step": sum(len(d) for d in kernels.values()) / steps,
      "distinct_kernels": len(kernels),
      "top": [{"name": name[:160], "ms_per_step": us / 1000 / steps,
               "calls_per_step": len(kernels[name]) / steps, "share": us / busy_us if busy_us else 0.0}
              for name, us in rows],
  }


def trace_per_step(run: Callable[[], Any], steps: int, top: int) -> dict[str, Any]:
  """Runs `run()` (which must block until its device work is done) under the profiler; per-step summary,
  or {"trace_error": ...} where the trace has no device kernels (a CPU) or could not be read."""
  import jax  # pylint: disable=g-import-not-at-top
  trace_dir = tempfile.mkdtemp(prefix="kernel_trace_")
  try:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      run()
    kernels = device_kernels(trace_dir)
    if not kernels:
      raise ValueError("the trace has no device-stream kernels")
    return summarise(kernels, steps, top)
  except (FileNotFoundError, KeyError, ValueError) as e:
    return {"trace_error": repr(e)}
  finally:
    shutil.rmtree(trace_dir, ignore_errors=True)
