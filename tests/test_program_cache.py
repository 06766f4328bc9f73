"""tiger_jax/program_cache.py: what the key covers, and a loop or a function stored then loaded computing what it
traced."""
import importlib
import os
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tiger_jax import program_cache


def _loop(state, x, n):
  """A state of the trainer's kind (params and an optax state) and a flat dict of per-step outputs."""
  grads = jax.tree_util.tree_map(lambda p: p * jnp.sum(x) * n, state["params"])
  updates, opt_state = optax.adam(0.1).update(grads, state["opt_state"], state["params"])
  new_state = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}
  norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
  return new_state, {"loss": jnp.sum(x) * n, "norm": norm}


def _state():
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  return {"params": params, "opt_state": optax.adam(0.1).init(params)}


def test_a_stored_loop_is_loaded_by_a_new_cache_and_computes_the_same(tmp_path):
  x, n = jnp.arange(4.0), jnp.asarray(2.0)
  expected_state, expected_out = jax.jit(_loop)(_state(), x, n)
  run, loaded = program_cache.ProgramCache(str(tmp_path), "A = 1").compile(jax.jit(_loop), _state(), (x, n), (17,))
  assert run is not None and not loaded
  stored = sorted(os.listdir(tmp_path / program_cache.SUBDIR))
  assert [name.rsplit(".", 1)[-1] for name in stored] == ["bin", "json"]
  run, loaded = program_cache.ProgramCache(str(tmp_path), "A = 1").compile(
      lambda *a: (_ for _ in ()).throw(AssertionError("traced")), _state(), (x, n), (17,))
  assert loaded
  state, out = run(_state(), x, n)
  assert sorted(out) == ["loss", "norm"]
  for a, b in zip(jax.tree_util.tree_leaves((state, out)), jax.tree_util.tree_leaves((expected_state, expected_out))):
    np.testing.assert_array_equal(a, b)
  assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(expected_state)


def test_a_loop_is_compiled_with_the_callers_compiler_options(tmp_path, caplog):
  x, n = jnp.arange(4.0), jnp.asarray(2.0)
  cache = program_cache.ProgramCache(str(tmp_path), "A = 1")
  run, _ = cache.compile(jax.jit(_loop), _state(), (x, n), (17,), compiler_options={"xla_no_such_option": True})
  assert run is None and "xla_no_such_option" in caplog.text  # falls back to tracing, with a warning
  run, loaded = cache.compile(jax.jit(_loop), _state(), (x, n), (17,),
                              compiler_options={"xla_gpu_graph_min_graph_size": 1})
  assert loaded  # the module stored by the first call; only its compile differs
  expected = jax.jit(_loop)(_state(), x, n)
  for a, b in zip(jax.tree_util.tree_leaves(run(_state(), x, n)), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(a, b)


def test_outputs_other_than_a_state_and_a_flat_dict_are_not_stored(tmp_path):
  run, loaded = program_cache.ProgramCache(str(tmp_path), "").compile(
      jax.jit(lambda s, x: (s, x * 2)), _state(), (jnp.ones(2),), ())
  assert run is None and not loaded
  assert not os.path.exists(tmp_path / program_cache.SUBDIR)


def test_key_covers_config_shapes_and_parts_but_not_where_or_which_seed():
  cache = program_cache.ProgramCache(
      "/unused", "MODEL_DIR = '/a'\nTASK_CACHE_DIR = '/a/cache'\nINITIAL_CHECKPOINT_PATH = None\n"
      "RANDOM_SEED = 3\nDROPOUT_RATE = 0.1")
  assert cache.config_text == "DROPOUT_RATE = 0.1"
  other_run = program_cache.ProgramCache(
      "/unused", "MODEL_DIR = '/b'\nTASK_CACHE_DIR = '/b/cache'\nINITIAL_CHECKPOINT_PATH = '/c/checkpoints/1000'\n"
      "RANDOM_SEED = 4\nDROPOUT_RATE = 0.1")
  args = [np.zeros((2, 3), np.float32), np.zeros((), np.int32)]
  assert cache.key(args, (17,)) == other_run.key(args, (17,))
  assert cache.key(args, (17,)) != cache.key(args, (33,))
  assert cache.key(args, (17,)) != cache.key([np.zeros((2, 4), np.float32), args[1]], (17,))
  assert cache.key(args, (17,)) != cache.key([args[0].astype(np.float16), args[1]], (17,))
  changed = program_cache.ProgramCache("/unused", "MODEL_DIR = '/a'\nDROPOUT_RATE = 0.2")
  assert cache.key(args, (17,)) != changed.key(args, (17,))
  default_precision = cache.key(args, (17,))
  with jax.default_matmul_precision("highest"):  # same code and config, traced to other dot precisions
    assert cache.key(args, (17,)) != default_precision


def test_code_fingerprint_follows_the_source_of_loaded_user_modules(tmp_path, monkeypatch):
  (tmp_path / "my_model_for_key.py").write_text("WIDTH = 1\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.import_module("my_model_for_key")
  try:
    before = program_cache.code_fingerprint()
    assert program_cache.code_fingerprint() == before
    (tmp_path / "my_model_for_key.py").write_text("WIDTH = 2\n")
    assert program_cache.code_fingerprint() != before
  finally:
    sys.modules.pop("my_model_for_key", None)


# Run in a subprocess with N fake CPU devices: a data-parallel loop jitted over a ('data', 'model') mesh as the
# trainer's is, then asked of ProgramCache.compile. Prints {"loaded": ...}; asserts the loop computes what the
# jitted loop computes, bit for bit, with the same output shardings and the state donated.
_SHARDED_SCRIPT = """
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[2])))
from test_program_cache import _loop, _state
from tiger_jax import partitioning, program_cache
assert jax.device_count() == int(sys.argv[3])
mesh = partitioning.PjitPartitioner().mesh
rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

def sharded_loop(state, x, n):
  return _loop(state, jax.lax.with_sharding_constraint(x * x, data), n)

in_shardings, out_shardings = (rep, data, rep), (rep, rep)
loop = jax.jit(sharded_loop, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=(0,))
x, n = jax.device_put(jnp.linspace(0.1, 1.7, 8), data), jax.device_put(jnp.asarray(2.0), rep)
expected = loop(jax.device_put(_state(), rep), x, n)
cache = program_cache.ProgramCache(sys.argv[1], "A = 1")
run, loaded = cache.compile(loop, _state(), (x, n), (17,), in_shardings, out_shardings)
state = jax.device_put(_state(), rep)
got = run(state, x, n)
assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(state)), "the state was not donated"
assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
  np.testing.assert_array_equal(a, b)
  assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
print(json.dumps({"loaded": loaded}))
"""


def _sharded_run(cache_dir, devices):
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=repo)
  out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, str(cache_dir), os.path.abspath(__file__),
                        str(devices)], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])["loaded"]


def _stored(cache_dir):
  directory = cache_dir / program_cache.SUBDIR
  return sorted(name for name in os.listdir(directory) if name.endswith(".bin")) if directory.exists() else []


def test_a_loop_over_two_devices_is_stored_loaded_and_not_taken_by_one_device(tmp_path):
  assert not _sharded_run(tmp_path, 2)
  two_devices = _stored(tmp_path)
  assert len(two_devices) == 1
  with open(tmp_path / program_cache.SUBDIR / two_devices[0].replace(".bin", ".json")) as f:
    assert '"devices": 2' in f.read()
  assert _sharded_run(tmp_path, 2)  # from disk: same results, shardings and donation as the jitted loop
  assert _stored(tmp_path) == two_devices
  assert not _sharded_run(tmp_path, 1)  # another key: traced and stored beside the 2-device module
  assert len(_stored(tmp_path)) == 2 and set(two_devices) < set(_stored(tmp_path))
  assert _sharded_run(tmp_path, 1)


def test_key_covers_the_mesh_and_the_partition_specs():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  cache = program_cache.ProgramCache("/unused", "")
  args = [np.zeros((2, 3), np.float32)]
  devices = np.asarray(jax.devices()[:1], dtype=object)
  mesh = Mesh(devices.reshape(1, 1), ("data", "model"))
  replicated = NamedSharding(mesh, PartitionSpec())
  key = cache.key(args, (), [replicated])
  assert key == cache.key(args, (), [NamedSharding(Mesh(devices.reshape(1, 1), ("data", "model")), PartitionSpec())])
  assert key != cache.key(args, (), [NamedSharding(Mesh(devices.reshape(1, 1), ("batch", "model")), PartitionSpec())])
  assert key != cache.key(args, (), [NamedSharding(Mesh(devices.reshape(1), ("data",)), PartitionSpec())])
  assert key != cache.key(args, (), [NamedSharding(mesh, PartitionSpec("data"))])
  assert key != cache.key(args, ())


@flax.struct.dataclass
class _Table:
  """A pytree with a static field, as the decoder's trie has (its level sizes)."""
  rows: jax.Array
  offset: int = flax.struct.field(pytree_node=False)


def _search(params, tokens, table, rng):
  """Stateless, as a beam search is: params, a batch, a table with a static field, no key."""
  assert rng is None
  scores = tokens @ params["w"] + table.rows[table.offset]
  return jnp.argsort(-scores, axis=-1), jnp.sort(scores, axis=-1)


def test_a_stored_function_is_loaded_by_a_new_cache_and_computes_the_same(tmp_path):
  params, tokens = {"w": jnp.arange(12.0).reshape(4, 3)}, jnp.arange(8.0).reshape(2, 4)
  table = _Table(jnp.arange(6.0).reshape(2, 3), offset=1)
  expected = jax.jit(_search, static_argnums=3)(params, tokens, table, None)
  run, loaded = program_cache.ProgramCache(str(tmp_path), "A = 1").compile_function(
      _search, (params, tokens, table, None), ("search",))
  assert run is not None and not loaded
  never = lambda *a: (_ for _ in ()).throw(AssertionError("traced"))
  run, loaded = program_cache.ProgramCache(str(tmp_path), "A = 1").compile_function(
      never, (params, tokens, table, None), ("search",))
  assert loaded
  for a, b in zip(run(params, tokens, table, None), expected):
    np.testing.assert_array_equal(a, b)
  # Another static field is another program: found nowhere on disk, so traced again, never the stored one.
  other = _Table(table.rows, offset=0)
  run, loaded = program_cache.ProgramCache(str(tmp_path), "A = 1").compile_function(
      _search, (params, tokens, other, None), ("search",))
  assert not loaded
  np.testing.assert_array_equal(run(params, tokens, other, None)[1],
                                jax.jit(_search, static_argnums=3)(params, tokens, other, None)[1])
  assert len(os.listdir(tmp_path / program_cache.SUBDIR)) == 4


def test_a_function_returning_anything_but_a_tuple_of_arrays_is_not_stored(tmp_path):
  run, loaded = program_cache.ProgramCache(str(tmp_path), "").compile_function(
      lambda x: {"y": x * 2}, (jnp.ones(2),), ())
  assert run is None and not loaded
  assert not os.path.exists(tmp_path / program_cache.SUBDIR)


def test_only_a_call_marked_gin_configured_gets_a_cache_keyed_by_its_config(jax_compilation_cache):
  import gin  # pylint: disable=g-import-not-at-top
  tmp_path = jax_compilation_cache
  try:
    assert program_cache.for_gin_run() is None  # a direct call: its arguments are in no key
    gin.clear_config()
    with gin.unlock_config():
      gin.parse_config("MODEL_DIR = '/runs/a'\nBATCH_SIZE = 8")
    with program_cache.gin_configured_run():
      cache = program_cache.for_gin_run()
      assert cache.directory == str(tmp_path / program_cache.SUBDIR)
      assert "BATCH_SIZE = 8" in cache.config_text and "/runs/a" not in cache.config_text
    assert program_cache.for_gin_run() is None
    jax.config.update("jax_enable_compilation_cache", False)
    assert program_cache.for_config("BATCH_SIZE = 8") is None  # no cache without the compilation cache
  finally:
    gin.clear_config()


# With N fake CPU devices: the stateless search of _search, its arrays on the last device, asked of
# ProgramCache.compile_function; prints {"loaded": ..., "device": ...} after checking it against jit.
_ONE_OF_SEVERAL_DEVICES_SCRIPT = """
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[2])))
from test_program_cache import _Table, _search
from tiger_jax import program_cache
device = jax.devices()[-1]
params = jax.device_put({"w": jnp.arange(12.0).reshape(4, 3)}, device)
table = jax.device_put(_Table(jnp.arange(6.0).reshape(2, 3), offset=1), device)
tokens = np.arange(8.0, dtype=np.float32).reshape(2, 4)
run, loaded = program_cache.ProgramCache(sys.argv[1], "A = 1").compile_function(
    _search, (params, tokens, table, None), ("search",))
got, expected = run(params, tokens, table, None), jax.jit(_search, static_argnums=3)(params, tokens, table, None)
for a, b in zip(got, expected):
  np.testing.assert_array_equal(a, b)
sharded = jax.device_put(params, jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ("data",)),
                                                            jax.sharding.PartitionSpec()))
assert program_cache.ProgramCache(sys.argv[1], "A = 1").compile_function(
    _search, (sharded, tokens, table, None), ("search",)) == (None, False)
print(json.dumps({"loaded": loaded, "device": list(got[0].devices())[0].id}))
"""


def test_a_function_on_one_of_several_devices_is_stored_and_loaded_there(tmp_path):
  """Eval and infer restore params onto one device; on a host of several devices their beam search is still
  kept on disk, while arrays spread over devices (a training run's sharded params) are traced as before."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2", PYTHONPATH=repo)
  runs = []
  for _ in range(2):
    out = subprocess.run([sys.executable, "-c", _ONE_OF_SEVERAL_DEVICES_SCRIPT, str(tmp_path),
                          os.path.abspath(__file__)], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
  assert [r["loaded"] for r in runs] == [False, True]
  assert runs[0]["device"] == runs[1]["device"] == 1
