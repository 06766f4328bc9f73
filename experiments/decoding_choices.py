"""One checkpoint decoded several ways (beams, the valid-ID constraint, precision), side by side.

Issue 6 asks whether decoding explains a gap to the paper. Each --run is the eval metrics.json of one decode of
the same checkpoint on the same split (`python -m tiger_jax.eval ... --gin.NUM_BEAMS=50`, `CONSTRAIN_IDS=False`,
`EVAL_OUTPUT_DIR=...`); the first run is the reference the others are compared with:

  python -m experiments.decoding_choices --title "Sports test, wide network, best validation checkpoint" \
      --run "constrained, 20 beams=work/sports_wide_h200/cpu/model/eval_test/metrics.json" \
      --run "unconstrained, 20 beams=work/sports_wide_h200/decode_unconstrained/metrics.json" \
      --out experiments/results/decoding_sports_wide_cpu

Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


from benchmarks import _common  # noqa: E402
from experiments.seeds import load_runs  # noqa: E402
from experiments.table1_report import METRICS  # noqa: E402
from tiger_jax import utils  # noqa: E402


def compare(runs: dict[str, dict]) -> dict[str, dict]:
  """Each run's change from the first run, per metric (relative); refuses decodes of different checkpoints."""
  (ref_label, ref), *_ = runs.items()
  for label, m in runs.items():
    for key in ("step", "split", "task"):
      if m.get(key) != ref.get(key):
        raise ValueError(f"{label}: {key} {m.get(key)!r} differs from {ref_label}'s {ref.get(key)!r} "
                         f"({m['file']} against {ref['file']})")
  return {label: {k: m[k] / ref[k] - 1 for k in METRICS} for label, m in runs.items()}


def markdown(result: dict) -> list[str]:
  rows = []
  for label, m in result["runs"].items():
    invalid = m.get("invalid_fraction_at_k") or {}
    rows.append([label, m.get("num_beams"), m.get("constrained"), m.get("device")] + [m[k] for k in METRICS]
                + [f"{100 * result['change'][label][k]:+.1f}%" for k in ("recall@10", "ndcg@10")]
                + [f"{100 * invalid[k]:.3f}%" if k in invalid else "-" for k in ("10", "20")])
  header = (["decode", "beams", "constrained", "device"] + list(METRICS) + ["recall@10 change", "ndcg@10 change"]
            + ["invalid IDs in top 10", "invalid IDs in top 20"])
  first = next(iter(result["runs"].values()))
  lines = [f"# {result['title']}", "", f"Split {first.get('split')}, checkpoint step {first.get('step')}; changes "
           "are relative to the first row.", ""] + _common.markdown_table(header, rows)
  lines += [""] + [f"- {label}: `{m['file']}`" for label, m in result["runs"].items()]
  if result.get("note"):
    lines += ["", result["note"]]
  return lines + ["", "```", json.dumps(result["meta"], indent=1), "```", ""]


def main(argv: Optional[Sequence[str]] = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--title", required=True)
  p.add_argument("--run", action="append", required=True, help="LABEL=METRICS_JSON; the first is the reference")
  p.add_argument("--note", default="", help="what the checkpoint is, where each decode ran")
  p.add_argument("--out", required=True, help="output path without extension")
  args = p.parse_args(argv)
  runs = load_runs(args.run)
  command = sys.argv if argv is None else ["experiments/decoding_choices.py"] + list(argv)
  result = {"title": args.title, "note": args.note, "runs": runs, "change": compare(runs),
            "meta": _common.run_metadata(command)}
  utils.write_json(args.out + ".json", result)
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(markdown(result)))
  return result


if __name__ == "__main__":
  main()
