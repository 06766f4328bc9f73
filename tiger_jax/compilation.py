"""How the entry points compile: a persistent XLA compilation cache, on by default.

Compiling is a large share of a run's wall time on a GPU (the training loops of three encoder lengths,
the beam search of each evaluation length, the RQ-VAE's loops). With the cache on, a rerun, a resumed run,
an evaluation of a trained model, or another dataset of the same shapes loads those programs from disk
instead of compiling them again; GPU autotuning results are kept there too.

Where the cache lives, first that is set:
  1. the entry points' `--compilation_cache_dir=DIR` flag;
  2. $TIGER_COMPILATION_CACHE_DIR;
  3. $JAX_COMPILATION_CACHE_DIR (JAX's own setting, honoured when a user already has one);
  4. $XDG_CACHE_HOME/tiger_jax/xla, i.e. ~/.cache/tiger_jax/xla by default.
The value `off` (or `none`, `0`, `false`) turns the cache off. Entries are keyed by the program, the
compiler flags, the device kind and the jax version, so one directory serves every run and card; delete it
to reclaim the space. The trainer keeps its traced loops there too, and eval, validation and infer their
traced beam searches (tiger_jax/program_cache.py), so a warm start skips Python tracing as well.

It also holds the XLA options that two kinds of program are compiled with (below): loops of many small steps
on the device, and programs that run only a few times.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Mapping, Optional

# XLA options of a program that loops over many small steps on the device (the trainer's multi-step loops,
# the RQ-VAE's epochs): the whole loop, while loops included, becomes one CUDA graph, and the graph launches
# the kernels that do not depend on each other side by side instead of one after another. Backends without
# CUDA graphs ignore them.
DEVICE_LOOP_COMPILER_OPTIONS = {
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL",
    "xla_gpu_graph_min_graph_size": 1,
    "xla_gpu_command_buffer_scheduling_mode": "CONCURRENT",
}

# XLA options of a program that runs a few times per training (the RQ-VAE's k-means initialisation, evaluation,
# dead-code resets, code assignment): matrix products as cuBLAS calls, so that compiling it does not time Triton
# candidates for each of them.
ONE_OFF_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}

ENV_VAR = "TIGER_COMPILATION_CACHE_DIR"
JAX_ENV_VAR = "JAX_COMPILATION_CACHE_DIR"
OFF_VALUES = ("off", "none", "0", "false", "no")

log = logging.getLogger("tiger_jax.compilation")


def default_cache_dir(environ: Optional[Mapping[str, str]] = None) -> str:
  """$XDG_CACHE_HOME/tiger_jax/xla (~/.cache/tiger_jax/xla when XDG_CACHE_HOME is unset)."""
  environ = os.environ if environ is None else environ
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "tiger_jax", "xla")


def resolve_cache_dir(flag_value: Optional[str] = None,
                      environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """The cache directory the module docstring's order gives, or None when the cache is turned off."""
  environ = os.environ if environ is None else environ
  for value in (flag_value, environ.get(ENV_VAR), environ.get(JAX_ENV_VAR)):
    if value is None:
      continue
    value = value.strip()
    if not value or value.lower() in OFF_VALUES:
      return None
    return os.path.abspath(os.path.expanduser(value))
  return default_cache_dir(environ)


def enable_compilation_cache(flag_value: Optional[str] = None) -> Optional[str]:
  """Points JAX's persistent cache at `resolve_cache_dir(flag_value)` (or turns it off); returns the directory.

  Every program is cached, however fast it compiled, so that a rerun compiles nothing. The settings go into
  this process's environment too, where JAX reads them when it is imported later (a stage that never
  imports JAX, such as the embedding stage, does not pay for importing it) and where child processes
  find them. Call it before the first compile (the entry points do, right after parsing their flags).
  """
  path = resolve_cache_dir(flag_value)
  if path is not None:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise ValueError(f"compilation cache directory {path!r} cannot be created ({e}); pass another with "
                       f"--compilation_cache_dir or ${ENV_VAR}, or 'off'") from e
  settings = {"jax_enable_compilation_cache": path is not None}
  if path is not None:
    settings.update(jax_compilation_cache_dir=path, jax_persistent_cache_min_compile_time_secs=0.0,
                    jax_persistent_cache_min_entry_size_bytes=0)
  for name, value in settings.items():
    os.environ[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
  jax = sys.modules.get("jax")
  if jax is not None:
    for name, value in settings.items():
      jax.config.update(name, value)
  log.info("persistent compilation cache: %s", path or "off")
  return path
