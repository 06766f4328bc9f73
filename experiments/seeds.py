"""Mean and standard error over seeds of one configuration's test metrics, beside the paper's Table 1 and 9 rows.

The paper reports TIGER's spread over seeds (its Table 9); a single run moves by a few percent from seed to
seed (README, Table 1), so a claim "at or above the paper" rests on the mean and its standard error. Each
--run is one seed's eval metrics.json (eval_test/metrics.json, or gpu_jobs' JOB_eval_test_metrics.json):

  python -m experiments.seeds --dataset beauty --title "Beauty refit (gin/beauty_refit.gin), 20k steps" \
      --run "seed 0=experiments/results/refit_beauty_h200/beauty_refit_20k_eval_test_metrics.json" \
      --run "seed 1=experiments/results/gpu_jobs_h200_combined_refit_seeds/beauty_refit_seed1_eval_test_metrics.json" \
      --out experiments/results/seeds_beauty_refit_h200

Writes OUT.json and OUT.md. The standard error is the sample standard deviation (n - 1) over sqrt(n).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence


from benchmarks import _common  # noqa: E402
from experiments.table1_report import METRICS, PAPER, PAPER_SEEDS  # noqa: E402
from tiger_jax import utils  # noqa: E402
from tiger_jax.metrics import mean_and_standard_error  # noqa: E402


def summarize(runs: dict[str, dict], dataset: str) -> dict:
  """Per metric: mean, standard error, and the mean's difference (relative) from the paper's Table 1 number and
  from the paper's own 3-seed mean (Table 9)."""
  stats = {}
  for k in METRICS:
    mean, se = mean_and_standard_error([m[k] for m in runs.values()])
    paper, (paper_mean, paper_se) = PAPER[dataset][k], PAPER_SEEDS[dataset][k]
    stats[k] = {"mean": mean, "standard_error": se, "paper": paper, "vs_paper": mean / paper - 1,
                "paper_seed_mean": paper_mean, "paper_seed_standard_error": paper_se,
                "vs_paper_seed_mean": mean / paper_mean - 1}
  return stats


def _load_one(label_and_path: str) -> tuple[str, dict]:
  label, sep, path = label_and_path.partition("=")
  if not sep or not label or not path:
    raise SystemExit(f"--run: expected LABEL=METRICS_JSON, got {label_and_path!r}")
  with open(path) as f:
    metrics = json.load(f)
  missing = [k for k in METRICS if k not in metrics]
  if missing:
    raise SystemExit(f"--run {label}: {path} has no {', '.join(missing)} (not an eval metrics.json?)")
  return label, dict(metrics, file=path)


def load_runs(specs: Sequence[str]) -> dict[str, dict]:
  """--run LABEL=METRICS_JSON arguments, in order; a repeated label would silently drop a run, so it is refused."""
  runs = dict(_load_one(s) for s in specs)
  if len(runs) != len(specs):
    raise SystemExit("--run: labels must be unique")
  return runs


def markdown(result: dict) -> list[str]:
  runs, stats = result["runs"], result["stats"]
  rows = [[label] + [m[k] for k in METRICS] + [m.get("device"), m.get("step")] for label, m in runs.items()]
  rows.append([f"mean ± standard error ({len(runs)} runs)"] +
              [f"{s['mean']:.4f} ± {s['standard_error']:.4f}" if s["standard_error"] is not None
               else f"{s['mean']:.4f}" for s in stats.values()] + ["", ""])
  rows.append(["paper, Table 1"] + [s["paper"] for s in stats.values()] + ["", ""])
  rows.append(["mean vs paper, Table 1"] + [f"{100 * s['vs_paper']:+.1f}%" for s in stats.values()] + ["", ""])
  rows.append(["paper, 3-seed mean ± standard error (Table 9)"] +
              [f"{s['paper_seed_mean']:.4f} ± {s['paper_seed_standard_error']:.5f}" for s in stats.values()] +
              ["", ""])
  rows.append(["mean vs paper's 3-seed mean"] + [f"{100 * s['vs_paper_seed_mean']:+.1f}%" for s in stats.values()]
              + ["", ""])
  lines = [f"# {result['title']}", ""] + _common.markdown_table(
      ["run"] + list(METRICS) + ["test device", "checkpoint step"], rows) + [""]
  lines += [f"- {label}: `{m['file']}`" for label, m in runs.items()]
  return lines + ["", "```", json.dumps(result["meta"], indent=1), "```", ""]


def main(argv: Optional[Sequence[str]] = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dataset", required=True, choices=sorted(PAPER))
  p.add_argument("--title", required=True)
  p.add_argument("--run", action="append", required=True, help="LABEL=METRICS_JSON, one per seed.")
  p.add_argument("--note", default="", help="Where the runs come from (cards, revisions, what varies).")
  p.add_argument("--out", required=True, help="Output path without extension.")
  args = p.parse_args(argv)
  runs = load_runs(args.run)
  command = sys.argv if argv is None else ["experiments/seeds.py"] + list(argv)
  result = {"title": args.title, "dataset": args.dataset, "runs": runs, "stats": summarize(runs, args.dataset),
            "note": args.note, "meta": _common.run_metadata(command)}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  utils.write_json(args.out + ".json", result)
  lines = markdown(result)
  if args.note:
    lines[2:2] = [args.note, ""]
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(lines))
  return result


if __name__ == "__main__":
  main()
