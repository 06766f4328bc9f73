"""t5x-style command-line flags and gin parsing for the tiger_jax entry points.

A t5x user types the same flags here: repeated `--gin_file` (later files override earlier ones),
`--gin_bindings`, the `--gin.NAME=VALUE` shorthand, `--gin_search_paths`, and the multi-process flags that
call `jax.distributed.initialize`. argparse replaces absl so that the entry points need nothing beyond
jax + gin-config.
"""
from __future__ import annotations

import argparse
import importlib.util  # noqa: F401  gin-config 0.5.0 uses importlib.util without importing it (Python 3.11).
import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence

import gin

from tiger_jax import compilation

# The repository's gin/ directory (next to the package) is searched by default, like t5x's configs dir.
# Includes may be written relative to the repository root ('gin/runs/train.gin') or to gin/ itself
# ('runs/train.gin'); both resolve from any working directory.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_GIN_DIR = os.path.join(REPO_ROOT, "gin")
DEFAULT_GIN_SEARCH_PATHS = (".", REPO_ROOT, REPO_GIN_DIR)

_GIN_SHORTHAND = "--gin."
# absl logging flags t5x users habitually pass; accepted and ignored.
_IGNORED_ABSL_FLAGS = ("--alsologtostderr", "--logtostderr", "--v", "--verbosity", "--noalsologtostderr")


def rewrite_gin_args(args: Sequence[str]) -> list[str]:
  """Turns t5x's `--gin.NAME=VALUE` shorthand into `--gin_bindings=NAME = VALUE`.

  `--gin.NAME VALUE` (value as the next argument) is accepted too, since shells make that easy to type.
  """
  out = []
  i = 0
  args = list(args)
  while i < len(args):
    arg = args[i]
    if arg.startswith(_GIN_SHORTHAND):
      body = arg[len(_GIN_SHORTHAND):]
      if "=" in body:
        name, value = body.split("=", 1)
      elif i + 1 < len(args):
        name, value = body, args[i + 1]
        i += 1
      else:
        raise ValueError(f"{arg!r}: the --gin.NAME=VALUE shorthand needs a value")
      if not name:
        raise ValueError(f"{arg!r}: empty binding name after --gin.")
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(arg)
    i += 1
  return out


def _bool(value: str) -> bool:
  lowered = str(value).lower()
  if lowered in ("1", "true", "t", "yes", "y"):
    return True
  if lowered in ("0", "false", "f", "no", "n"):
    return False
  raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def _split_list(value: str) -> list[str]:
  return [v for v in value.split(",") if v]


def define_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Adds t5x's gin and multi-process flags to `parser`."""
  parser.add_argument("--gin_file", action="append", default=[],
                      help="Gin file; repeat it: later files override earlier ones.")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="Individual gin binding, applied after all gin files.")
  parser.add_argument("--gin_search_paths", type=_split_list, action="append", default=None,
                      help="Comma-separated directories searched for gin files and includes "
                           f"(default: cwd, {REPO_ROOT} and {REPO_GIN_DIR}).")
  parser.add_argument("--multiprocess_gpu", nargs="?", const=True, default=False, type=_bool,
                      help="Initialize jax.distributed (one process per host or per GPU).")
  parser.add_argument("--nomultiprocess_gpu", dest="multiprocess_gpu", action="store_false")
  parser.add_argument("--coordinator_address", default=None,
                      help="IP:port of process 0, for --multiprocess_gpu.")
  parser.add_argument("--process_count", type=int, default=None,
                      help="Number of processes, for --multiprocess_gpu.")
  parser.add_argument("--process_index", type=int, default=None,
                      help="This process's index, for --multiprocess_gpu.")
  parser.add_argument("--log_level", default="INFO", help="Python logging level.")
  parser.add_argument("--compilation_cache_dir", default=None,
                      help="Persistent XLA compilation cache (default: $TIGER_COMPILATION_CACHE_DIR, "
                           "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/tiger_jax/xla); 'off' disables it. "
                           "See tiger_jax/compilation.py.")
  return parser


def parse_flags(argv: Optional[Sequence[str]] = None,
                extra_flags: Optional[Callable[[argparse.ArgumentParser], Any]] = None,
                prog: Optional[str] = None) -> argparse.Namespace:
  """Parses argv (without the program name) after rewriting the `--gin.` shorthand."""
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(prog=prog, allow_abbrev=False)
  define_flags(parser)
  if extra_flags is not None:
    extra_flags(parser)
  flags, unknown = parser.parse_known_args(rewrite_gin_args(argv))
  unknown = [a for a in unknown if not a.split("=", 1)[0] in _IGNORED_ABSL_FLAGS]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  if flags.gin_search_paths is None:
    flags.gin_search_paths = list(DEFAULT_GIN_SEARCH_PATHS)
  else:
    # The repository's own dirs stay searchable so that its files' includes keep resolving.
    given = [p for group in flags.gin_search_paths for p in group]
    flags.gin_search_paths = given + [p for p in DEFAULT_GIN_SEARCH_PATHS[1:] if p not in given]
  return flags


def parse_gin_flags(gin_search_paths: Sequence[str] = DEFAULT_GIN_SEARCH_PATHS,
                    gin_files: Sequence[str] = (),
                    gin_bindings: Sequence[str] = (),
                    skip_unknown: bool = False,
                    finalize_config: bool = True) -> None:
  """Parses gin files then bindings, resolving files and includes through the search paths."""
  for path in gin_search_paths:
    if path and os.path.isdir(path):
      gin.add_config_file_search_path(os.path.abspath(path))
  resolved = []
  for name in gin_files:
    resolved.append(_resolve_gin_file(name, gin_search_paths))
  gin.parse_config_files_and_bindings(resolved, list(gin_bindings), finalize_config=finalize_config,
                                      skip_unknown=skip_unknown)


def _resolve_gin_file(name: str, search_paths: Sequence[str]) -> str:
  """Absolute path of a gin file given directly or relative to a search path."""
  if os.path.isfile(name):
    return name
  for path in search_paths:
    candidate = os.path.join(path, name)
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(f"gin file {name!r} not found (searched cwd and {list(search_paths)})")


def maybe_initialize_distributed(flags: argparse.Namespace) -> None:
  """Calls `jax.distributed.initialize` when --multiprocess_gpu asks for it (t5x's semantics)."""
  if not flags.multiprocess_gpu:
    return
  import jax  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if flags.coordinator_address:
    kwargs["coordinator_address"] = flags.coordinator_address
  if flags.process_count is not None:
    kwargs["num_processes"] = flags.process_count
  if flags.process_index is not None:
    kwargs["process_id"] = flags.process_index
  logging.info("jax.distributed.initialize(%s)", kwargs)
  jax.distributed.initialize(**kwargs)


def write_config(model_dir: str, filename: str = "config.gin") -> Optional[str]:
  """Writes the effective gin config to `model_dir/filename` (process 0 only); returns the path."""
  text = gin.config_str()
  if not text.strip():
    return None
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return None
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, filename)
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
  return path


def setup_logging(level: str = "INFO") -> None:
  """Console logging for the entry points (replacing the root handler absl installs at import)."""
  logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                      format="%(asctime)s %(levelname)s %(name)s] %(message)s", force=True)
  if str(level).upper() != "DEBUG":
    # orbax logs every save step by step through absl at INFO; keep the console to our progress lines.
    logging.getLogger("absl").setLevel(logging.WARNING)


def run(main: Callable[[argparse.Namespace], Any], argv: Optional[Sequence[str]] = None,
        extra_flags: Optional[Callable[[argparse.ArgumentParser], Any]] = None) -> Any:
  """t5x's `gin_utils.run`: parse flags, start jax.distributed if asked, parse gin, call `main(flags)`."""
  flags = parse_flags(argv, extra_flags)
  setup_logging(flags.log_level)
  compilation.enable_compilation_cache(flags.compilation_cache_dir)
  maybe_initialize_distributed(flags)
  parse_gin_flags(flags.gin_search_paths, flags.gin_file, flags.gin_bindings)
  return main(flags)


# Small helpers gin files can call (t5x ships the same ones).
def sum_fn(var1: Any, var2: Any) -> Any:
  """Lets a gin file add two macros (e.g. a base step count and fine-tuning steps)."""
  return var1 + var2


def bool_fn(var1: object) -> bool:
  """Lets a gin file turn a string macro such as "False" into a bool."""
  return _bool(var1) if isinstance(var1, str) else bool(var1)


def parse_stage_flags(argv: Optional[Sequence[str]], prog: str,
                      extra_flags: Optional[Callable[[argparse.ArgumentParser], Any]] = None
                      ) -> argparse.Namespace:
  """Flags of a data stage (embed, rqvae, cache): t5x's gin flags plus --data_dir, --work_dir and `extra_flags`.

  The experiment gin file is shared by every stage, so a stage skips bindings for configurables it does
  not import (the trainer's, say) instead of failing on them.
  """
  def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data_dir", required=True, help="Dataset directory (processed or raw Amazon 2014).")
    parser.add_argument("--work_dir", required=True, help="Where the stage's artifacts are written.")
    if extra_flags is not None:
      extra_flags(parser)
  flags = parse_flags(argv, extra, prog=prog)
  setup_logging(flags.log_level)
  compilation.enable_compilation_cache(flags.compilation_cache_dir)
  # Not finalized: finalizing checks every reference and %gin.REQUIRED macro, the trainer's included, which a
  # data stage neither needs nor always has (gin/beauty.gin's MODEL is bound by the model file through a
  # configurable this stage never calls). Gin still checks a stage's own required arguments when called.
  parse_gin_flags(flags.gin_search_paths, flags.gin_file, flags.gin_bindings, skip_unknown=True,
                  finalize_config=False)
  return flags
