"""Runs `python -m tiger_jax.train` with pauses at the points a fault-injection test kills it.

  PYTHONPATH=. python tests/fault_injection.py <train flags...>

Three points are slowed by $TIGER_FAULT_PAUSE seconds (default 0.3) and announced on stdout, one line each,
before the pause, so a test can send a signal while the trainer is in one of them:
  FAULT-POINT step <first step of the dispatch>   a dispatch was queued, its steps are not checkpointed
  FAULT-POINT save <checkpoint directory>         orbax is writing a checkpoint (its temporary directory)
  FAULT-POINT validation <step>                    a validation pass has started
Nothing else changes: the same code trains, saves and validates, so the parameters are those of a plain run.
The validation pause ends early when the run is asked to stop, as the real validation loop does.
"""
import asyncio
import os
import sys
import threading
import time

from orbax.checkpoint._src.handlers import json_checkpoint_handler  # noqa: E402
from tiger_jax import train  # noqa: E402

PAUSE = float(os.environ.get("TIGER_FAULT_PAUSE", "0.3"))
_STDOUT_LOCK = threading.Lock()


def announce(*words) -> None:
  # One write under a lock: orbax's commit thread announces saves while the main thread announces
  # dispatches, and print()'s separate writes of words and newline could interleave into one garbled line.
  line = " ".join(["FAULT-POINT", *map(str, words)]) + "\n"
  with _STDOUT_LOCK:
    sys.stdout.write(line)
    sys.stdout.flush()


def _slow_dispatches():
  get = train.StepRunner.get

  def slow_get(self, length, *args):
    compiled = get(self, length, *args)

    def call(state, data, idx, n, dropout_base):
      first = int(state["step"])  # read before the call: the dispatch donates the state's buffers
      out = compiled(state, data, idx, n, dropout_base)
      announce("step", first)
      time.sleep(PAUSE)
      return out

    return call

  train.StepRunner.get = slow_get


def _slow_saves():
  # The JSON item (the checkpoint's meta) is written in orbax's commit thread, inside the temporary
  # directory, after the arrays were handed over: a pause there keeps the checkpoint unfinished.
  write = json_checkpoint_handler.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  async def slow_write(self, x, directory):
    announce("save", directory)
    await asyncio.sleep(PAUSE)
    return await write(self, x, directory)

  json_checkpoint_handler.JsonCheckpointHandler._save_fn = slow_write  # pylint: disable=protected-access


def _slow_validation():
  validation_loss = train.validation_loss

  def slow_validation_loss(ctx):
    announce("validation", ctx.step)
    deadline = time.time() + PAUSE
    stop_requested = getattr(ctx, "stop_requested", lambda: False)
    while time.time() < deadline and not stop_requested():
      time.sleep(0.01)
    return validation_loss(ctx)

  # The gin files name `train_script.validation_loss`, which gin looks up when it parses them, after this.
  slow_validation_loss.__name__ = validation_loss.__name__
  train.validation_loss = slow_validation_loss


if __name__ == "__main__":
  _slow_dispatches()
  _slow_saves()
  _slow_validation()
  train.console_main()
