"""What every benchmark stores beside its numbers: the command, date, revision and card."""
from __future__ import annotations

import ast
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
from typing import Any, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_revision() -> str:
  """Short HEAD, with "+dirty" when tracked files differ from it (the numbers then need the diff too).

  $TIGER_GIT_REVISION wins, for copies of the tree without their .git (experiments/run_plan.py sets it).
  """
  if os.environ.get("TIGER_GIT_REVISION"):
    return os.environ["TIGER_GIT_REVISION"]
  try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                         check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True, check=False).stdout.strip()
  except OSError:
    return "unknown"
  return (rev or "unknown") + ("+dirty" if dirty else "")


def device_info() -> dict:
  """The accelerator the numbers came from (imports jax only when the caller already did)."""
  info = {"host": platform.node(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
          "python": platform.python_version()}
  jax = sys.modules.get("jax")
  if jax is not None:
    devices = jax.devices()
    info.update({"jax": jax.__version__, "backend": jax.default_backend(),
                 "device_kind": devices[0].device_kind, "device_count": len(devices)})
  return info


def command_line(argv: Sequence[str]) -> str:
  """The command that reproduces this run: `python -m package.module ...` for a script of this repository."""
  argv = list(argv)
  script = os.path.abspath(argv[0]) if argv and argv[0].endswith(".py") else ""
  rel = os.path.relpath(script, REPO) if script else ""
  if rel and not rel.startswith(".."):
    argv = ["-m", rel[:-len(".py")].replace(os.sep, ".")] + argv[1:]
  return " ".join(shlex.quote(a) for a in ["python"] + argv)


def run_metadata(argv: Optional[Sequence[str]] = None, **extra: Any) -> dict:
  argv = sys.argv if argv is None else argv
  meta = {"command": command_line(argv),
          "date": datetime.datetime.now().isoformat(timespec="seconds"), "git_revision": git_revision()}
  meta.update(device_info())
  if os.environ.get("XLA_FLAGS"):  # numbers measured under non-default compiler flags say so
    meta["xla_flags"] = os.environ["XLA_FLAGS"]
  meta.update(extra)
  return meta


def literal_or_string(text: str) -> Any:
  """A command-line override's value: a Python literal (64, 0.2, (8, 4), True), else the text itself (a bare word)."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_stages(parser, text: str, known: Sequence[str]) -> list[str]:
  """A --stages value (comma-separated) as a list; an unknown stage is a parser error naming the known ones."""
  stages = [s for s in text.split(",") if s]
  unknown = set(stages) - set(known)
  if unknown:
    parser.error(f"--stages: unknown {sorted(unknown)}; known: {list(known)}")
  return stages


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> list[str]:
  """Lines of a GitHub markdown table; floats printed with `digits` decimals, None as a dash."""
  def cell(v):
    if v is None:
      return "-"
    if isinstance(v, float):
      return f"{v:.{digits}f}"
    return str(v)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return lines


def plan_results_card(status: dict) -> str:
  """The card named in an experiments/run_plan.py status.json ("NVIDIA H200"; "" when the runner recorded none),
  without nvidia-smi's "GPU 0: " prefix and UUID suffix."""
  device = status.get("datasets", {}).get("_runner", {}).get("device") or ""
  return re.sub(r"^GPU \d+: | \(UUID.*\)$", "", device)


def try_plot(plot_fn, result: dict, path: str, logger) -> bool:
  """Draws the PNG if matplotlib is installed; otherwise make_report.py draws it later from the JSON."""
  try:
    import matplotlib  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    logger.warning("matplotlib is not installed: %s not drawn (experiments/make_report.py draws it from the "
                   "JSON)", path)
    return False
  plot_fn(result, path)
  return True
