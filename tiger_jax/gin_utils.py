"""t5x-style command-line flags and gin parsing for the tiger_jax entry points.

A t5x user types the same flags here: repeated `--gin_file` (later files override earlier ones),
`--gin_bindings`, the `--gin.NAME=VALUE` shorthand, `--gin_search_paths`, and the multi-process flags that
call `jax.distributed.initialize`. argparse replaces absl so that the entry points need nothing beyond
jax + gin-config.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util  # noqa: F401  gin-config 0.5.0 uses importlib.util without importing it (Python 3.11).
import inspect
import logging
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

import gin

from tiger_jax import compilation
from tiger_jax import utils

log = logging.getLogger(__name__)

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


# Library modules whose configurables the project's gin files bind. Every entry point imports them before
# parsing, so any stage can parse any experiment file strictly: a binding for an unknown name is an error.
CONFIGURABLE_MODULES = (
    "tiger_jax.network", "tiger_jax.models", "tiger_jax.utils", "tiger_jax.partitioning", "tiger_jax.train",
    "tiger_jax.eval", "tiger_jax.embed", "tiger_jax.collaborative", "tiger_jax.rqvae", "tiger_jax.semantic_ids",
    "tiger_jax.baselines.sasrec",
)


class GinConfigError(ValueError):
  """A gin file or binding the project cannot run: unknown name, unused macro, or a value gin cannot read."""


def register_configurables() -> None:
  for module in CONFIGURABLE_MODULES:
    importlib.import_module(module)


# Macros a file sets for the file that includes it, as t5x's model files set MODEL for the run files: not an
# error when such a file is parsed alone (a benchmark building just the model), unless a flag sets them.
EXPORTED_MACROS = ("MODEL",)


def parse_gin_flags(gin_search_paths: Sequence[str] = DEFAULT_GIN_SEARCH_PATHS,
                    gin_files: Sequence[str] = (),
                    gin_bindings: Sequence[str] = (),
                    finalize_config: bool = True) -> None:
  """Parses gin files then bindings strictly, resolving files and includes through the search paths.

  Raises GinConfigError naming the file or flag for an unknown configurable or parameter (with the closest
  known names), a binding value gin cannot read, or a macro that nothing uses (a misspelt `--gin.TRAIN_STEP`
  would otherwise be ignored while the default runs). `finalize_config=False` is for the data stages, which
  parse the experiment file without the trainer's required macros.
  """
  register_configurables()
  for path in gin_search_paths:
    if path and os.path.isdir(path):
      gin.add_config_file_search_path(os.path.abspath(path))
  resolved = [_resolve_gin_file(name, gin_search_paths) for name in gin_files]
  for path in resolved:
    try:
      gin.parse_config_file(path)
    except (ValueError, SyntaxError) as e:
      raise GinConfigError(_explain(str(e), f"gin file {path}")) from e
  unused_in_files = set(unused_macros())
  for binding in gin_bindings:
    try:
      gin.parse_config(binding)
    except (ValueError, SyntaxError) as e:
      raise GinConfigError(_explain(str(e), f"binding {_as_flag(binding)}", binding)) from e
  # A macro the files set and no file reads is a mistake in the files; one a binding sets and nothing reads is
  # a misspelt flag. A file's macro whose every use a binding overrides is fine.
  set_by_bindings = {b.split("=", 1)[0].strip() for b in gin_bindings}
  exported = set(EXPORTED_MACROS) - set_by_bindings
  unused = sorted((set(unused_macros()) & (unused_in_files | set_by_bindings)) - exported)
  if unused:
    defined = sorted(_defined_macros() - set(unused))
    hints = "; ".join(f"{m}{_did_you_mean(m, defined)}" for m in unused)
    raise GinConfigError(f"macro(s) set but used by no binding: {hints}. Known macros: {', '.join(defined)}")
  if finalize_config:
    gin.finalize()


def _defined_macros() -> set:
  return {scope for scope, selector in gin.config._CONFIG if selector == "gin.macro"}  # pylint: disable=protected-access


def unused_macros() -> list[str]:
  """Macros that some file or binding sets and that no binding (or other macro) reads."""
  macro_fn = gin.config.get_configurable(gin.config.macro)
  used = {ref.scopes[-1] for ref in gin.config.iterate_references(gin.config._CONFIG, to=macro_fn)  # pylint: disable=protected-access
          if ref.scopes}
  return sorted(_defined_macros() - used)


def _as_flag(binding: str) -> str:
  name, _, value = binding.partition("=")
  return f"--gin.{name.strip()}={value.strip()}"


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
  close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
  return f" (did you mean {' or '.join(close)}?)" if close else ""


def _explain(message: str, where: str, binding: Optional[str] = None) -> str:
  """gin's message with what it means for the user, and the closest known names where a name was wrong."""
  first = message.strip().splitlines()[0] if message.strip() else message
  unknown = re.search(r"No configurable matching '([^']+)'", message)
  if unknown:
    registered = [key[1] if isinstance(key, tuple) else str(key)
                  for key, _ in gin.config._REGISTRY.items()]  # pylint: disable=protected-access
    names = {n for r in registered for n in (r, r.split(".")[-1])}
    return f"{where}: unknown configurable {unknown.group(1)!r}{_did_you_mean(unknown.group(1), sorted(names))}"
  param = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", message)
  if param:
    return f"{where}: {param.group(1)!r} has no parameter {param.group(2)!r}{_param_hint(param.group(1), param.group(2))}"
  if binding is not None and ("parse" in message.lower() or "malformed" in message.lower()):
    name, _, value = binding.partition("=")
    return (f"{where}: {value.strip()!r} is not a gin value (a number, True/False/None, a quoted string, a list, "
            f"a %MACRO or an @reference); a string needs quotes, e.g. --gin.{name.strip()}=\"'{value.strip()}'\"")
  return f"{where}: {first}"


def _param_hint(configurable: str, param: str) -> str:
  try:
    fn = gin.config._REGISTRY.get_match(configurable).wrapped  # pylint: disable=protected-access
    names = list(inspect.signature(fn).parameters)
  except Exception:  # pylint: disable=broad-except  (only a hint)
    return ""
  return _did_you_mean(param, names)


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
  log.info("jax.distributed.initialize(%s)", kwargs)
  jax.distributed.initialize(**kwargs)


def write_config(model_dir: str, filename: str = "config.gin") -> Optional[str]:
  """Writes the effective gin config to `model_dir/filename` (process 0 only); returns the path."""
  text = gin.config_str()
  if not text.strip():
    return None
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return None
  path = os.path.join(model_dir, filename)
  with utils.atomic_write(path) as f:
    f.write(text)
  return path


# Library lines every run would print that tell the user nothing: (logger, message prefix).
_NOISE = (
    # orbax, for every checkpoint opened read-only; eval and infer open them so on purpose.
    ("absl", "Given directory is read only"),
    # jax, when it probes for TPUs on a machine without libtpu.
    ("jax._src.xla_bridge", "Unable to initialize backend 'tpu'"),
)


class _DropPrefixes(logging.Filter):
  """Drops a logger's records whose message starts with one of `prefixes`."""

  def __init__(self, prefixes: Sequence[str]):
    super().__init__()
    self.prefixes = tuple(prefixes)

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(self.prefixes)


def quiet_library_noise(quiet: bool = True) -> None:
  """Drops the `_NOISE` lines (quiet) or lets them through again; calling it twice never stacks filters."""
  by_logger: dict[str, list[str]] = {}
  for name, prefix in _NOISE:
    by_logger.setdefault(name, []).append(prefix)
  for name, prefixes in by_logger.items():
    logger = logging.getLogger(name)
    for old in [f for f in logger.filters if isinstance(f, _DropPrefixes)]:
      logger.removeFilter(old)
    if quiet:
      logger.addFilter(_DropPrefixes(prefixes))


def setup_logging(level: str = "INFO") -> None:
  """Console logging for the entry points (replacing the root handler absl installs at import)."""
  level = str(level).upper()
  logging.basicConfig(level=getattr(logging, level, logging.INFO),
                      format="%(asctime)s %(levelname)s %(name)s] %(message)s", force=True)
  if level != "DEBUG":
    # orbax logs every save step by step through absl at INFO; keep the console to our progress lines.
    logging.getLogger("absl").setLevel(logging.WARNING)
  quiet_library_noise(quiet=level != "DEBUG")


def run(main: Callable[[argparse.Namespace], Any], argv: Optional[Sequence[str]] = None,
        extra_flags: Optional[Callable[[argparse.ArgumentParser], Any]] = None) -> Any:
  """t5x's `gin_utils.run`: parse flags, start jax.distributed if asked, parse gin, call `main(flags)`; a missing
  task cache or checkpoint ends it with one line naming the path (exit 2)."""
  flags = parse_flags(argv, extra_flags)
  setup_logging(flags.log_level)
  compilation.enable_compilation_cache(flags.compilation_cache_dir)
  maybe_initialize_distributed(flags)
  parse_gin_or_exit(flags)
  try:
    return main(flags)
  except utils.MissingArtifactError as e:
    # gin appends "In call to configurable ..." on a second line; the first names the file and the fix.
    utils.exit_with_error(str(e).splitlines()[0])


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
  """Flags of a data stage (embed, Semantic IDs): t5x's gin flags plus --data_dir, --work_dir and `extra_flags`.

  The experiment gin file is shared by every stage and parsed strictly here too; it is not finalized, since
  the trainer's required macros (MODEL_DIR) mean nothing to a data stage.
  """
  def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data_dir", required=True, help="Dataset directory (processed or raw Amazon 2014).")
    parser.add_argument("--work_dir", required=True, help="Where the stage's artifacts are written.")
    if extra_flags is not None:
      extra_flags(parser)
  flags = parse_flags(argv, extra, prog=prog)
  setup_logging(flags.log_level)
  parse_gin_or_exit(flags, finalize_config=False)
  compilation.enable_compilation_cache(flags.compilation_cache_dir)
  return flags


def parse_gin_or_exit(flags: argparse.Namespace, finalize_config: bool = True) -> None:
  """`parse_gin_flags` for an entry point: a configuration error ends it with one line and exit code 2."""
  try:
    parse_gin_flags(flags.gin_search_paths, flags.gin_file, flags.gin_bindings, finalize_config=finalize_config)
  except (GinConfigError, FileNotFoundError) as e:
    utils.exit_with_error(str(e))
