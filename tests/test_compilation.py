"""The persistent compilation cache: on by default, where it lives, how to move it or turn it off."""
import os
import subprocess
import sys

import pytest

from tiger_jax import compilation
from tiger_jax import gin_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_is_under_the_users_cache_dir():
  assert compilation.resolve_cache_dir(None, {"XDG_CACHE_HOME": "/x/cache"}) == "/x/cache/tiger_jax/xla"
  home_default = compilation.resolve_cache_dir(None, {})
  assert home_default == os.path.join(os.path.expanduser("~"), ".cache", "tiger_jax", "xla")


def test_flag_then_tiger_env_then_jax_env():
  env = {compilation.ENV_VAR: "/from/tiger", compilation.JAX_ENV_VAR: "/from/jax"}
  assert compilation.resolve_cache_dir("/from/flag", env) == "/from/flag"
  assert compilation.resolve_cache_dir(None, env) == "/from/tiger"
  assert compilation.resolve_cache_dir(None, {compilation.JAX_ENV_VAR: "/from/jax"}) == "/from/jax"


@pytest.mark.parametrize("off", ["off", "OFF", "none", "0", "false", ""])
def test_off_values_disable_it_even_when_jax_has_a_dir(off):
  assert compilation.resolve_cache_dir(off, {compilation.JAX_ENV_VAR: "/from/jax"}) is None
  assert compilation.resolve_cache_dir(None, {compilation.ENV_VAR: off, compilation.JAX_ENV_VAR: "/j"}) is None


def test_entry_points_take_the_flag():
  flags = gin_utils.parse_flags(["--compilation_cache_dir=off"])
  assert flags.compilation_cache_dir == "off"
  assert gin_utils.parse_flags([]).compilation_cache_dir is None


def _entry_point_compiling_once(cache_flag, env_extra, home):
  """Runs gin_utils.run (as train and eval do) around one jitted function in a fresh process."""
  code = ("import sys, jax, jax.numpy as jnp\n"
          "from tiger_jax import gin_utils\n"
          "def main(flags):\n"
          "  jax.jit(lambda x: jnp.sin(x) * 3 + 1)(jnp.arange(7.0)).block_until_ready()\n"
          "  print('cache', jax.config.values['jax_compilation_cache_dir'],"
          " jax.config.values['jax_enable_compilation_cache'])\n"
          f"gin_utils.run(main, {cache_flag!r})\n")
  env = {k: v for k, v in os.environ.items() if k not in (compilation.ENV_VAR, compilation.JAX_ENV_VAR)}
  env.update(PYTHONPATH=REPO, XDG_CACHE_HOME=str(home), JAX_PLATFORMS="cpu", **env_extra)
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  return done.stdout


def _entries(path):
  return [f for f in os.listdir(path)] if os.path.isdir(path) else []


def test_on_by_default_and_a_rerun_finds_its_programs(tmp_path):
  default_dir = tmp_path / "tiger_jax" / "xla"
  out = _entry_point_compiling_once([], {}, tmp_path)
  assert f"cache {default_dir} True" in out
  first = _entries(default_dir)
  assert first, "nothing was written to the default cache"
  _entry_point_compiling_once([], {}, tmp_path)
  assert sorted(_entries(default_dir)) == sorted(first)  # the rerun compiled nothing new


def test_flag_moves_it_and_off_turns_it_off(tmp_path):
  moved = tmp_path / "moved"
  _entry_point_compiling_once([f"--compilation_cache_dir={moved}"], {}, tmp_path)
  assert _entries(moved)
  assert not _entries(tmp_path / "tiger_jax" / "xla")
  jax_dir = tmp_path / "jax_own"
  out = _entry_point_compiling_once(["--compilation_cache_dir=off"], {compilation.JAX_ENV_VAR: str(jax_dir)},
                                    tmp_path / "home2")
  assert out.strip().endswith("False")
  assert not _entries(jax_dir)
  assert not _entries(tmp_path / "home2" / "tiger_jax" / "xla")


def test_environment_variable_turns_it_off(tmp_path):
  out = _entry_point_compiling_once([], {compilation.ENV_VAR: "off"}, tmp_path)
  assert out.strip().endswith("False")
  assert not _entries(tmp_path / "tiger_jax" / "xla")


def test_unwritable_directory_is_a_clear_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="compilation cache directory"):
    compilation.enable_compilation_cache(str(blocker / "sub"))
