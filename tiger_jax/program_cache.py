"""Traced programs kept on disk, so a warm start skips Python tracing and lowering as well as XLA.

The persistent XLA cache (tiger_jax/compilation.py) only serves the compile: every start still traces and
lowers each training loop in Python, which is most of a warm start (about 5 of 7 s for the three loops of the
paper network on a 2-core CPU, 8-10 s on an H100). This cache stores each loop as a serialized `jax.export`
module beside the XLA cache; a later start with the same code, configuration and argument shapes
deserializes it and compiles it (an XLA cache hit) without tracing anything.

The key covers everything the traced program depends on: the source of every loaded module outside the
installed packages (the library and any user module a gin file imports), the versions of jax, jaxlib,
flax and optax, the jax settings that change tracing (x64, matmul precision, PRNG), the full gin
configuration text, the platform and devices, the arguments' shapes and dtypes, and the caller's own key
parts (encoder length, steps per dispatch); only MODEL_DIR, TASK_CACHE_DIR, INITIAL_CHECKPOINT_PATH,
RANDOM_SEED, EVAL_CHECKPOINT and EVAL_OUTPUT_DIR are left out of the configuration text, so another seed,
checkpoint or work directory finds the same program. Anything else than a flat dict of per-step outputs
beside a state of unchanged structure is not cached, and any failure to export or load falls back to
tracing, with a warning.

A function with no state, such as the constrained beam search of eval and infer (`compile_function`), is
kept the same way; its key also covers the arguments' tree structure, static fields included (the trie's
level sizes). The entry points mark the call whose arguments all come from gin (`gin_configured_run`); infer
keys its beam search by the model's config.gin (`for_config`).

A data-parallel loop over several devices of one process is cached too: the module records its device count
and the shardings of its inputs and outputs, it is exported and compiled again with the jitted loop's own
shardings (and the state donated, as the loop donates it), and the key covers the mesh's axis names and
sizes and each input's and output's partition spec. Multi-process runs are traced every time.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import sysconfig
from typing import Any, Callable, Iterator, Optional, Sequence

from tiger_jax import utils

log = logging.getLogger("tiger_jax.program_cache")

SUBDIR = "tiger_jax_traced"
# Macros that never reach a traced program (where a run writes, where its data and checkpoints are read from:
# the program sees only their arrays, whose shapes the key covers; the seed of the keys passed to it), so a
# rerun in another work directory or with another seed finds the same program.
_OUTSIDE_THE_PROGRAM = re.compile(
    r"^(MODEL_DIR|TASK_CACHE_DIR|INITIAL_CHECKPOINT_PATH|RANDOM_SEED|EVAL_CHECKPOINT|EVAL_OUTPUT_DIR)\s*=")
_PACKAGES = ("jax", "jaxlib", "flax", "optax")
# jax settings that change what tracing emits (dtypes, matmul precision, random bits), whether set by
# environment variable, gin or code.
_TRACING_SETTINGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_default_prng_impl",
                     "jax_numpy_dtype_promotion", "jax_threefry_partitionable")


def code_fingerprint() -> str:
  """sha256 of the loaded modules' sources (this project's wherever installed; others outside the
  interpreter's library and site-packages), plus the versions of the packages a traced program is built
  from."""
  skip = {os.path.realpath(p) for p in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
                                        sysconfig.get_paths()["platlib"]) if p}
  h = hashlib.sha256()
  for name, module in sorted(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py") or not os.path.isfile(path):
      continue
    real = os.path.realpath(path)
    own = name.split(".")[0] in ("tiger_jax", "tasks")
    if not own and (any(real.startswith(root + os.sep) for root in skip) or "site-packages" in real):
      continue
    with open(real, "rb") as f:
      h.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
  for package in _PACKAGES:
    module = sys.modules.get(package)
    h.update(f"{package}={getattr(module, '__version__', None)}".encode())
  return h.hexdigest()


class ProgramCache:
  """Loads or exports the compiled program of a jitted `fn(state, *args) -> (state, outputs)`."""

  def __init__(self, directory: str, config_text: str):
    self.directory = os.path.join(directory, SUBDIR)
    self.config_text = "\n".join(line for line in config_text.splitlines()
                                 if not _OUTSIDE_THE_PROGRAM.match(line))
    self._code = code_fingerprint()

  def key(self, flat_args: Sequence[Any], key_parts: Sequence[Any], shardings: Sequence[Any] = ()) -> str:
    """`shardings`: one per input and output leaf (None where unspecified)."""
    import jax  # pylint: disable=g-import-not-at-top
    h = hashlib.sha256()
    h.update(self._code.encode())
    h.update(self.config_text.encode())
    devices = jax.devices()
    h.update(f"{jax.default_backend()}|{len(devices)}|{devices[0].device_kind}".encode())
    h.update(repr([getattr(jax.config, name, None) for name in _TRACING_SETTINGS]).encode())
    for x in flat_args:
      h.update(f"{getattr(x, 'shape', ())}|{getattr(x, 'dtype', type(x).__name__)}".encode())
    h.update(repr(tuple(key_parts)).encode())
    h.update(repr([_describe(s) for s in shardings]).encode())
    return h.hexdigest()[:40]

  def compile(self, fn: Callable, state: Any, args: Sequence[Any], key_parts: Sequence[Any],
              in_shardings: Optional[Sequence[Any]] = None, out_shardings: Optional[Sequence[Any]] = None,
              compiler_options: Optional[dict] = None) -> tuple[Optional[Callable], bool]:
    """(a callable with `fn`'s signature and results, whether it came from disk): compiled from the stored
    module when there is one, else exported now (which traces once) and stored; (None, False) when this
    program cannot be cached. The state is donated, as the trainer's loop donates it.

    `in_shardings` and `out_shardings` are those `fn` was jitted with, as prefixes of (state, *args) and of
    (state, outputs) with one sharding for all outputs; a program over several devices needs them.
    `compiler_options` are XLA's for this program (the stored module does not depend on them; the XLA
    cache's key does).
    """
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() != 1 or (in_shardings is None and jax.device_count() != 1):
      return None, False
    leaves, treedef = jax.tree_util.tree_flatten(state)
    jit_shardings, flat_shardings = {}, []
    if in_shardings is not None:
      if (out_shardings is None or len(in_shardings) != 1 + len(args) or len(out_shardings) != 2
          or not _is_sharding(out_shardings[1])):
        return None, False
      # The exported function takes and returns the state as a flat list of leaves.
      state_in, state_out = _per_leaf(in_shardings[0], state), _per_leaf(out_shardings[0], state)
      jit_shardings = {"in_shardings": (state_in, *in_shardings[1:]),
                       "out_shardings": (state_out, out_shardings[1])}
      flat_shardings = _per_leaf(jit_shardings["in_shardings"], (leaves, *args)) + state_out + [out_shardings[1]]
    key = self.key(leaves + jax.tree_util.tree_leaves(list(args)), key_parts, flat_shardings)

    def export():
      exported, output_keys = self._export(fn, treedef, leaves, args, jit_shardings)
      return exported, {"output_keys": output_keys, "state_leaves": len(leaves)}

    def check(path, meta):
      if meta["state_leaves"] != len(leaves):
        raise ValueError(f"{path}.json: {meta['state_leaves']} state leaves, the run has {len(leaves)}")

    try:
      found = self._load_or_store(key, key_parts, export, check)
      if found is None:
        return None, False
      exported, meta, loaded = found
      compiled = jax.jit(exported.call, donate_argnums=(0,), **jit_shardings).lower(leaves, *args).compile(
          compiler_options)
    except Exception as e:  # pylint: disable=broad-except
      log.warning("traced program cache unusable for %s (%s: %s); tracing instead", list(key_parts),
                  type(e).__name__, e)
      return None, False
    output_keys = meta["output_keys"]

    def run(state_now, *args_now):
      state_leaves, outputs = compiled(jax.tree_util.tree_leaves(state_now), *args_now)
      return jax.tree_util.tree_unflatten(treedef, state_leaves), dict(zip(output_keys, outputs))

    return run, loaded

  def compile_function(self, fn: Callable, args: Sequence[Any], key_parts: Sequence[Any]
                       ) -> tuple[Optional[Callable], bool]:
    """(a callable taking `args`' structure and returning `fn`'s tuple of arrays, whether it came from disk)
    for a stateless `fn` whose arrays lie on one device (host arrays count as the default device), such as
    eval's beam search on a host of any number of devices; (None, False) when it cannot be cached, e.g. a
    validation beam search over a training run's sharded params."""
    import jax  # pylint: disable=g-import-not-at-top
    leaves, treedef = jax.tree_util.tree_flatten(list(args))
    if jax.process_count() != 1 or any(len(x.sharding.device_set) != 1 for x in leaves if hasattr(x, "sharding")):
      return None, False
    key = self.key(leaves, (*key_parts, str(treedef)))

    def export():
      returned = {}

      def flat_fn(*flat):
        out = fn(*jax.tree_util.tree_unflatten(treedef, list(flat)))
        returned["tuple"] = isinstance(out, tuple) and all(hasattr(o, "shape") for o in out)
        return list(out) if returned["tuple"] else out

      exported = jax.export.export(jax.jit(flat_fn))(*leaves)
      return (exported if returned["tuple"] else None), {}

    try:
      found = self._load_or_store(key, key_parts, export, lambda path, meta: None)
      if found is None:
        return None, False
      exported, _, loaded = found
      compiled = jax.jit(exported.call).lower(*leaves).compile()
    except Exception as e:  # pylint: disable=broad-except
      log.warning("traced program cache unusable for %s (%s: %s); tracing instead", list(key_parts),
                  type(e).__name__, e)
      return None, False

    def run(*args_now):
      return tuple(compiled(*jax.tree_util.tree_leaves(list(args_now))))

    return run, loaded

  def _load_or_store(self, key: str, key_parts: Sequence[Any], export: Callable, check: Callable):
    """(exported module, its metadata, whether it was on disk), or None when `export` declines (returns
    (None, ...)); a new module is stored. `check(path, meta)` raises when a stored entry does not fit."""
    import jax  # pylint: disable=g-import-not-at-top
    path = os.path.join(self.directory, key)
    if os.path.exists(path + ".json") and os.path.exists(path + ".bin"):
      with open(path + ".bin", "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
      with open(path + ".json") as f:
        meta = json.load(f)
      check(path, meta)
      return exported, meta, True
    exported, meta = export()
    if exported is None:
      return None
    meta = dict(meta, devices=exported.nr_devices, key_parts=[str(p) for p in key_parts])
    # Whole files only, the module before its metadata: a killed writer leaves no entry a reader takes.
    with utils.atomic_write(path + ".bin", "wb") as f:
      f.write(exported.serialize())
    utils.write_json(path + ".json", meta)
    return exported, meta, False

  @staticmethod
  def _export(fn: Callable, treedef, leaves: list, args: Sequence[Any], shardings: dict):
    """(jax.export of `fn` over the flat state, jitted with `shardings`, its outputs' names), or (None, None)
    when the outputs are not a state of the input's structure and a flat dict of arrays."""
    import jax  # pylint: disable=g-import-not-at-top
    structure = {}

    def flat_fn(flat_state, *rest):
      new_state, outputs = fn(jax.tree_util.tree_unflatten(treedef, flat_state), *rest)
      structure["state"] = jax.tree_util.tree_structure(new_state)
      structure["outputs"] = outputs
      names = sorted(outputs) if isinstance(outputs, dict) else []
      return jax.tree_util.tree_leaves(new_state), [outputs[k] for k in names]

    exported = jax.export.export(jax.jit(flat_fn, **shardings))(leaves, *args)
    outputs = structure["outputs"]
    if structure["state"] != treedef or not isinstance(outputs, dict) or not all(
        isinstance(k, str) and hasattr(v, "shape") for k, v in outputs.items()):
      return None, None
    return exported, sorted(outputs)


# The gin configuration of the entry point now running (inside gin_configured_run), else None.
_gin_run_config: Optional[str] = None


@contextlib.contextmanager
def gin_configured_run() -> Iterator[None]:
  """Around a call whose every argument comes from gin (an entry point's main): gin.config_str() then stands
  for those arguments in the key, and for_gin_run() has a cache."""
  import gin  # pylint: disable=g-import-not-at-top
  global _gin_run_config
  previous, _gin_run_config = _gin_run_config, gin.config_str()
  try:
    yield
  finally:
    _gin_run_config = previous


def for_gin_run() -> Optional[ProgramCache]:
  """The cache of the gin-configured run now going on (gin_configured_run); None outside one: a direct
  Python call's arguments are not part of any key."""
  return for_config(_gin_run_config)


def for_config(config_text: Optional[str]) -> Optional[ProgramCache]:
  """The cache beside jax's persistent compilation cache (tiger_jax/compilation.py) for programs that
  `config_text` (a gin configuration) fully determines; None when either is missing."""
  import jax  # pylint: disable=g-import-not-at-top
  directory = jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None
  if not directory or config_text is None:
    return None
  return ProgramCache(directory, config_text)


def _is_sharding(s: Any) -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return s is None or isinstance(s, jax.sharding.Sharding)


def _per_leaf(prefix: Any, tree: Any) -> list:
  """One sharding per leaf of `tree`, from jit's kind of prefix (a sharding or None covers a subtree)."""
  import jax  # pylint: disable=g-import-not-at-top
  subtrees = jax.tree_util.tree_structure(prefix, is_leaf=_is_sharding).flatten_up_to(tree)
  out = []
  for s, subtree in zip(jax.tree_util.tree_leaves(prefix, is_leaf=_is_sharding), subtrees):
    out += [s] * len(jax.tree_util.tree_leaves(subtree))
  return out


def _describe(sharding: Any) -> str:
  """What of a sharding the traced program depends on: the mesh's axes and the spec, not which devices."""
  import jax  # pylint: disable=g-import-not-at-top
  if isinstance(sharding, jax.sharding.NamedSharding):
    mesh = sharding.mesh
    return f"{tuple(mesh.shape.items())}|{getattr(mesh, 'axis_types', None)}|{sharding.spec}|{sharding.memory_kind}"
  return repr(sharding)
