"""Side-by-side record of several training runs that differ in one setting (a sweep, a tuning attempt).

For each run (LABEL=MODEL_DIR) it reads what training and evaluation left in the model directory:
metrics.jsonl (the validation curve, whose best NDCG@10 picks the checkpoint) and eval_test/metrics.json (that
checkpoint on the test split). No number is typed by hand:

  python -m experiments.compare_runs --title "Beauty: dropout" --card "NVIDIA H100 80GB HBM3" \
      --revision 6765e0b --run "dropout 0.0=work/beauty_d0" --run "dropout 0.1=work/beauty_paper/..." \
      --out experiments/results/tuning_beauty_dropout_h100

A job of experiments/run_plan.py counts as a run too: `--gpu_run LABEL=RESULTS_DIR/JOB` reads the
JOB_metrics.jsonl and JOB_eval_test_metrics.json that the runner copied into its results directory.

Writes OUT.json and OUT.md: a table of each run's best checkpoint (validation and test metrics) and a table of
validation NDCG@10 against the step.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Optional


from experiments.table1_report import METRICS, validation_curve  # noqa: E402
from tiger_jax import utils  # noqa: E402


def _metrics(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def summarize(label: str, model_dir: str, files: Optional[tuple[str, str]] = None) -> dict:
  """`files`: (metrics.jsonl, test metrics.json) where they are not the model directory's own."""
  metrics_path, test_path = files or (os.path.join(model_dir, "metrics.jsonl"),
                                      os.path.join(model_dir, "eval_test", "metrics.json"))
  curve = validation_curve(metrics_path)
  if not curve:
    raise ValueError(f"{metrics_path}: no validation retrieval metrics (validation/ndcg@10)")
  best = max(curve, key=lambda r: r["ndcg@10"])
  test = _metrics(test_path)
  if test and test.get("step") != best["step"]:
    raise ValueError(f"{test_path} is of step {test.get('step')}, not the best step {best['step']}")
  return {"label": label, "model_dir": model_dir, "validation_curve": curve, "last_step": curve[-1]["step"],
          "best_step": best["step"], "validation": {k: best[k] for k in METRICS},
          "test": {k: test[k] for k in METRICS} if test else None}


def gpu_job_run(label: str, job_path: str) -> dict:
  """RESULTS_DIR/JOB of experiments/run_plan.py: its model directory stayed on the device machine."""
  results, job = os.path.split(job_path.rstrip("/"))
  files = (os.path.join(results, f"{job}_metrics.jsonl"), os.path.join(results, f"{job}_eval_test_metrics.json"))
  if not os.path.exists(files[0]):
    raise ValueError(f"--gpu_run {job_path}: no {files[0]} (is {job!r} a job of that results directory?)")
  return summarize(label, job_path, files)


def recorded_run(parser, spec: str) -> dict:
  label, sep, source = spec.partition("=")
  record, hash_, run_label = source.partition("#")
  if not sep or not hash_:
    parser.error(f"--recorded {spec!r}: expected LABEL=RECORD.json#RUN")
  with open(record) as f:
    runs = {r["label"]: r for r in json.load(f)["runs"]}
  if run_label not in runs:
    parser.error(f"--recorded: {record} has no run {run_label!r}; it has {sorted(runs)}")
  return dict(runs[run_label], label=label, record=record)


def to_markdown(report: dict) -> str:
  runs = report["runs"]
  lines = [f"# {report['title']}", "", f"Card: {report['card']}; revision {report['revision']}; written "
           f"{report['written']}.", "",
           "Best-on-validation checkpoint of each run (validation: the evaluation during training):", "",
           "| run | last evaluated step | best step | " + " | ".join(f"val {k}" for k in METRICS) + " | "
           + " | ".join(f"test {k}" for k in METRICS) + " |", "|---|---|---|" + "---|" * (2 * len(METRICS))]
  for r in runs:
    cells = [f"{r[s][k]:.4f}" if r[s] else "-" for s in ("validation", "test") for k in METRICS]
    lines.append(f"| {r['label']} | {r['last_step']} | {r['best_step']} | " + " | ".join(cells) + " |")
  steps = sorted({row["step"] for r in runs for row in r["validation_curve"]})
  by_step = [{row["step"]: row["ndcg@10"] for row in r["validation_curve"]} for r in runs]
  lines += ["", "Validation NDCG@10 during training (bfloat16 decoding on the training card):", "",
            "| step | " + " | ".join(r["label"] for r in runs) + " |", "|---|" + "---|" * len(runs)]
  lines += [f"| {s} | " + " | ".join(f"{b[s]:.4f}" if s in b else "" for b in by_step) + " |" for s in steps]
  if report.get("note"):
    lines += ["", report["note"]]
  return "\n".join(lines) + "\n"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--run", action="append", default=[], help="LABEL=MODEL_DIR")
  p.add_argument("--gpu_run", action="append", default=[], help="LABEL=RESULTS_DIR/JOB: a gpu_jobs.py job")
  p.add_argument("--recorded", action="append", default=[], help="LABEL=RECORD.json#RUN: run RUN of an earlier "
                 "record of this script (its model directory may be gone), shown as LABEL.")
  p.add_argument("--title", required=True)
  p.add_argument("--card", required=True)
  p.add_argument("--revision", required=True)
  p.add_argument("--note", default="")
  p.add_argument("--out", required=True, help="output path without extension")
  args = p.parse_args()
  if not args.run and not args.gpu_run and not args.recorded:
    p.error("give at least one --run, --gpu_run or --recorded")
  runs = []
  for flag, specs, read in (("--run", args.run, summarize), ("--gpu_run", args.gpu_run, gpu_job_run)):
    for spec in specs:
      label, sep, path = spec.partition("=")
      if not sep:
        p.error(f"{flag} {spec!r}: expected LABEL=PATH")
      runs.append(read(label, path))
  for spec in args.recorded:
    runs.append(recorded_run(p, spec))
  report = {"title": args.title, "card": args.card, "revision": args.revision, "note": args.note,
            "written": datetime.date.today().isoformat(), "command": " ".join(sys.argv), "runs": runs}
  utils.write_json(args.out + ".json", report)
  text = to_markdown(report)
  with open(args.out + ".md", "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
