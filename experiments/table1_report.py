"""Table 1 record for one dataset: test metrics beside the paper's, the validation curve, and stage times.

Reads what a training run leaves in MODEL_DIR (metrics.jsonl, eval_test/metrics.json) and the logs of the
GPU runs that trained it (benchmarks/gpu_table1.sh writes run_<dataset>.log), so no number is typed by
hand:

  python -m experiments.table1_report --dataset beauty --model_dir work/beauty_paper/model_final/model_beauty \
      --logs run1.log run2.log run3.log --stage embed=252.5 --stage rqvae=94 --stage cache=55 \
      --card "NVIDIA H100 80GB HBM3" --revision 0aae945 --out experiments/results/table1_beauty_h100

Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re


from tiger_jax import utils  # noqa: E402
from tiger_jax.metrics import REPORTED_METRICS as METRICS  # noqa: E402

# Rajput et al., NeurIPS 2023, Table 1 (TIGER row), test split.
PAPER = {
    "beauty": {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648, "ndcg@10": 0.0384},
    "sports": {"recall@5": 0.0264, "ndcg@5": 0.0181, "recall@10": 0.0400, "ndcg@10": 0.0225},
    "toys": {"recall@5": 0.0521, "ndcg@5": 0.0371, "recall@10": 0.0712, "ndcg@10": 0.0432},
}
# The same paper, Table 9: TIGER's mean and standard error over 3 seeds, (mean, standard error) per metric.
PAPER_SEEDS = {
    "beauty": {"recall@5": (0.0441, 0.00069), "ndcg@5": (0.0309, 0.00062), "recall@10": (0.0642, 0.00092),
               "ndcg@10": (0.0374, 0.00061)},
    "sports": {"recall@5": (0.0278, 0.00069), "ndcg@5": (0.0189, 0.00043), "recall@10": (0.0419, 0.0010),
               "ndcg@10": (0.0234, 0.00048)},
    "toys": {"recall@5": (0.0518, 0.00064), "ndcg@5": (0.0375, 0.00039), "recall@10": (0.0698, 0.0013),
             "ndcg@10": (0.0433, 0.00047)},
}
_TRAINED = re.compile(r"trained steps (\d+)\.\.(\d+) in (?:(\d+)m)?([\d.]+)s: [\d.]+ steps/s while training "
                      r"\(([\d.]+) ms/step\); (?:(\d+)m)?([\d.]+)s compiling")


def _seconds(minutes, seconds) -> float:
  return 60 * int(minutes or 0) + float(seconds)


def training_segments(log_paths) -> list[dict]:
  """One entry per GPU run: steps trained, wall time, ms/step while training, overhead."""
  segments = []
  for path in log_paths:
    with open(path) as f:
      for line in f:
        m = _TRAINED.search(line)
        if m:
          segments.append({"log": os.path.basename(path), "from_step": int(m.group(1)),
                           "to_step": int(m.group(2)), "wall_s": _seconds(m.group(3), m.group(4)),
                           "ms_per_step": float(m.group(5)),
                           "compile_eval_checkpoint_s": _seconds(m.group(6), m.group(7))})
  return segments


def validation_curve(metrics_jsonl: str) -> list[dict]:
  curve = []
  with open(metrics_jsonl) as f:
    for line in f:
      row = json.loads(line)
      if "validation/ndcg@10" in row:
        curve.append({"step": row["step"], "loss": row["validation/loss"],
                      **{k: row[f"validation/{k}"] for k in METRICS}})
  return curve


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", required=True, choices=sorted(PAPER))
  p.add_argument("--model_dir", required=True)
  p.add_argument("--logs", nargs="*", default=[])
  p.add_argument("--stage", action="append", default=[], help="NAME=SECONDS for stages run elsewhere")
  p.add_argument("--card", required=True)
  p.add_argument("--revision", required=True)
  p.add_argument("--embedding_model", default="offline:all-MiniLM-L6-v2 (384-d)")
  p.add_argument("--note", default="", help="what else a reader must know (e.g. where the test split ran)")
  p.add_argument("--out", required=True, help="output path without extension")
  args = p.parse_args()

  with open(os.path.join(args.model_dir, "eval_test", "metrics.json")) as f:
    test = json.load(f)
  curve = validation_curve(os.path.join(args.model_dir, "metrics.jsonl"))
  segments = training_segments(args.logs)
  stages = {k: float(v) for k, v in (s.split("=", 1) for s in args.stage)}
  if segments:
    stages["train"] = sum(s["wall_s"] for s in segments)
  stages["eval_test"] = test.get("seconds")
  paper = PAPER[args.dataset]
  report = {
      "dataset": args.dataset, "card": args.card, "revision": args.revision,
      "embedding_model": args.embedding_model, "written": datetime.date.today().isoformat(),
      "test": {k: test[k] for k in METRICS}, "paper_test": paper,
      "relative_to_paper": {k: test[k] / paper[k] - 1 for k in METRICS},
      "checkpoint_step": test.get("step"), "num_beams": test.get("num_beams"),
      "constrained": test.get("constrained"), "validation_curve": curve,
      "training_segments": segments, "stage_seconds": stages, "note": args.note,
  }
  utils.write_json(args.out + ".json", report)

  lines = [f"# Table 1, {args.dataset}: {args.card}, revision {args.revision}", "",
           f"Embeddings: {args.embedding_model}. Checkpoint: step {report['checkpoint_step']} "
           f"(best validation NDCG@10), {report['num_beams']} beams, constrained={report['constrained']}.", "",
           "| | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS),
           "| tiger_jax (test) | " + " | ".join(f"{test[k]:.4f}" for k in METRICS) + " |",
           "| paper, Table 1 | " + " | ".join(f"{paper[k]:.4f}" for k in METRICS) + " |",
           "| difference | " + " | ".join(f"{100 * report['relative_to_paper'][k]:+.1f}%" for k in METRICS) + " |",
           "", "Validation during training:", "", "| step | loss | " + " | ".join(METRICS) + " |",
           "|---|---|" + "---|" * len(METRICS)]
  lines += [f"| {r['step']} | {r['loss']:.3f} | " + " | ".join(f"{r[k]:.4f}" for k in METRICS) + " |"
            for r in curve]
  lines += ["", "Stage wall times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if v is not None)]
  if segments:
    lines += ["", "Training calls: " + "; ".join(
        f"steps {s['from_step']}..{s['to_step']} in {s['wall_s']:.0f} s ({s['ms_per_step']} ms/step while "
        f"training, {s['compile_eval_checkpoint_s']:.0f} s compile/eval/checkpoint)" for s in segments)]
  if args.note:
    lines += ["", args.note]
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
