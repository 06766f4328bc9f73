"""Runs `python -m tiger_jax.eval` with its arguments, printing how long Retriever.precompile took (the beam
search of every encoder length, ready to run) and the process's wall time."""
import sys
import time

START = time.perf_counter()

from tiger_jax import eval as eval_lib  # noqa: E402
from tiger_jax import gin_utils  # noqa: E402

_precompile = eval_lib.Retriever.precompile


def _timed(self, *args):
  t = time.perf_counter()
  _precompile(self, *args)
  print(f"precompile {time.perf_counter() - t:.2f} s", file=sys.stderr)


eval_lib.Retriever.precompile = _timed
gin_utils.run(eval_lib.main, sys.argv[1:])
print(f"process {time.perf_counter() - START:.2f} s", file=sys.stderr)
