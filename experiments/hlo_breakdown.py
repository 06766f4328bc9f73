"""Where a compiled training loop's kernels come from: its fusions counted by phase and by what they compute.

  python -m experiments.hlo_breakdown experiments/results/speed_h200_step_profile/hlo_bf16_onehot_rbg_dynamic_17.txt.gz

Reads an HLO dump written by `benchmarks.profile_step --dump_hlo` and sorts every fusion of the loop by the
`op_name` JAX recorded: forward (under `jvp(`), backward (under `transpose(`) or outside the model (gradient
norm, optimizer, loop bookkeeping), then by kind of work: dropout, dtype casts, layer norm, single-tensor sums,
matrix products (XLA's other custom gemm fusions), softmax, other. Each fusion is one kernel launch per step on a GPU, so
the table says which change could remove launches.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import re
import sys
from typing import Iterable, Optional, Sequence

PHASES = ("forward", "backward", "outside")
CATEGORIES = ("gemm", "dropout", "cast", "layer_norm", "softmax", "reduce", "other")
_FUSION = re.compile(r"\bfusion\(.*\bkind=(k\w+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def classify(line: str) -> Optional[tuple[str, str]]:
  """(phase, category) of one HLO instruction line that calls a fusion, else None."""
  fusion = _FUSION.search(line)
  if not fusion or "calls=" not in line:
    return None
  kind = fusion.group(1)
  match = _OP_NAME.search(line)
  name = match.group(1) if match else ""
  phase = "backward" if "transpose(" in name else ("forward" if "jvp(" in name else "outside")
  if "Dropout" in name or "rng_bit_generator" in name or "bernoulli" in name:
    category = "dropout"
  elif "convert_element_type" in name:
    category = "cast"
  elif "layer_norm" in name:
    category = "layer_norm"
  elif name.endswith("reduce_sum"):  # single-tensor sums (XLA may emit them as custom fusions too)
    category = "reduce"
  elif kind == "kCustom":
    category = "gemm"
  elif "/exp" in name or "reduce_max" in name or "softmax" in name:
    category = "softmax"
  else:
    category = "other"
  return phase, category


def breakdown(lines: Iterable[str]) -> dict[str, dict[str, int]]:
  """phase -> category -> fusion count."""
  counts = {phase: collections.Counter() for phase in PHASES}
  for line in lines:
    found = classify(line)
    if found:
      counts[found[0]][found[1]] += 1
  return {phase: {c: counts[phase][c] for c in CATEGORIES} for phase in PHASES}


def format_table(table: dict[str, dict[str, int]]) -> str:
  head = f"{'':10}" + "".join(f"{c:>11}" for c in CATEGORIES) + f"{'total':>8}"
  rows = [head]
  for phase in PHASES:
    rows.append(f"{phase:10}" + "".join(f"{table[phase][c]:>11}" for c in CATEGORIES)
                + f"{sum(table[phase].values()):>8}")
  total = {c: sum(table[p][c] for p in PHASES) for c in CATEGORIES}
  rows.append(f"{'total':10}" + "".join(f"{total[c]:>11}" for c in CATEGORIES) + f"{sum(total.values()):>8}")
  return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("hlo", help="an HLO text dump (.txt or .txt.gz)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  opener = gzip.open if args.hlo.endswith(".gz") else open
  with opener(args.hlo, "rt") as f:
    print(format_table(breakdown(f)))


if __name__ == "__main__":
  main()
