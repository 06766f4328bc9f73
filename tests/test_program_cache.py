"""tiger_jax/program_cache.py: what the key covers, and a loop stored then loaded computing what it traced."""
import importlib
import os
import sys

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


def test_outputs_other_than_a_state_and_a_flat_dict_are_not_stored(tmp_path):
  run, loaded = program_cache.ProgramCache(str(tmp_path), "").compile(
      jax.jit(lambda s, x: (s, x * 2)), _state(), (jnp.ones(2),), ())
  assert run is None and not loaded
  assert not os.path.exists(tmp_path / program_cache.SUBDIR)


def test_key_covers_config_shapes_and_parts_but_not_where_or_which_seed():
  cache = program_cache.ProgramCache("/unused", "MODEL_DIR = '/a'\nRANDOM_SEED = 3\nDROPOUT_RATE = 0.1")
  assert cache.config_text == "DROPOUT_RATE = 0.1"
  other_run = program_cache.ProgramCache("/unused", "MODEL_DIR = '/b'\nRANDOM_SEED = 4\nDROPOUT_RATE = 0.1")
  args = [np.zeros((2, 3), np.float32), np.zeros((), np.int32)]
  assert cache.key(args, (17,)) == other_run.key(args, (17,))
  assert cache.key(args, (17,)) != cache.key(args, (33,))
  assert cache.key(args, (17,)) != cache.key([np.zeros((2, 4), np.float32), args[1]], (17,))
  assert cache.key(args, (17,)) != cache.key([args[0].astype(np.float16), args[1]], (17,))
  changed = program_cache.ProgramCache("/unused", "MODEL_DIR = '/a'\nDROPOUT_RATE = 0.2")
  assert cache.key(args, (17,)) != changed.key(args, (17,))


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
