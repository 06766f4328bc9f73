"""One writer per MODEL_DIR: a lock file that a trainer takes before writing anything there.

Two trainers on one MODEL_DIR would interleave their checkpoints, best/ and metrics. The lock is a file
created with O_EXCL holding who took it (pid, host, start time, command), so the second trainer fails at
once with a message naming the first. A lock whose pid is no longer alive on this host (a run killed with
SIGKILL) is stale and is taken over, with a log line. A lock from another host cannot be checked from
here; the message says how to remove it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from typing import Optional

log = logging.getLogger("tiger_jax.model_dir_lock")
FILENAME = "train.lock"


class ModelDirLockedError(RuntimeError):
  """Another live process holds MODEL_DIR's lock."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # alive, owned by someone else
  return True


def _read(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # half-written or foreign: treated as held by an unknown process


def _describe(holder: dict) -> str:
  return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}, "
          f"command: {holder.get('command', '?')}")


class ModelDirLock:
  """The lock file of one MODEL_DIR; `acquire` takes it, `release` removes it if it is still ours."""

  def __init__(self, model_dir: str):
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, FILENAME)
    self.held = False

  def _create(self) -> bool:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
          "command": " ".join(sys.argv)}
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    self.held = True
    return True

  def acquire(self) -> "ModelDirLock":
    os.makedirs(self.model_dir, exist_ok=True)
    if self._create():
      return self
    holder = _read(self.path)
    if holder is None and self._create():  # released between our two looks
      return self
    holder = holder or {}
    same_host = holder.get("host") == socket.gethostname()
    pid = holder.get("pid")
    if same_host and isinstance(pid, int) and not _pid_alive(pid):
      log.warning("%s: taking over a stale lock (%s is no longer running)", self.path, _describe(holder))
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
      if self._create():
        return self
      holder = _read(self.path) or {}
    hint = ("" if same_host else f" If that process is gone (it ran on another host), remove {self.path}.")
    raise ModelDirLockedError(
        f"{self.model_dir} is in use by another trainer ({_describe(holder)}): one trainer per MODEL_DIR. "
        f"Wait for it to finish or stop it, or train into another MODEL_DIR.{hint}")

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    holder = _read(self.path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
      os.remove(self.path)

  def __enter__(self) -> "ModelDirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
