"""Refit on train + validation: TIGER runs from experiments/run_plan.py beside the transition baseline.

The gain is measured on validation first without TIGER (the transition baseline counting each user's most
recent training item or not: holdout 3 vs 2), then TIGER's paper configuration and its refit are compared
on test at the same number of steps. Every number is read from stored results or computed here:

  python -m experiments.refit_report --gpu_dir experiments/results/refit_beauty_h200 --dataset beauty \
      --data_dir data/beauty --paper_job beauty_paper_20k --refit_job beauty_refit_20k \
      --plan experiments/plans/h200_refit_beauty20k.json \
      --out experiments/results/refit_beauty_h200 --transitions beauty=data/beauty \
      --transitions sports=../shared/data/amazon2014/sports

Writes OUT.json and OUT.md (the GPU card and revision come from the runner's status.json).
"""
from __future__ import annotations

import argparse
import json
import os
import re


from benchmarks import _common  # noqa: E402
from experiments.table1_report import METRICS, PAPER  # noqa: E402
from tiger_jax import utils  # noqa: E402
from tiger_jax.baselines import sequences  # noqa: E402
from tiger_jax.baselines import transitions  # noqa: E402

_RATE = re.compile(r"trained steps 0\.\.(\d+) in .*?\(([\d.]+) ms/step\)")


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def tiger_job(gpu_dir: str, job: str, status: dict) -> dict:
  """Test metrics, validation curve, step time and stage seconds of one gpu_jobs.py job."""
  records = [json.loads(line) for line in open(os.path.join(gpu_dir, f"{job}_metrics.jsonl"))]
  curve = [{"step": r["step"], **{m: r[f"validation/{m}"] for m in METRICS}}
           for r in records if "validation/ndcg@10" in r]
  with open(os.path.join(gpu_dir, f"{job}_train.log")) as f:
    rate = _RATE.search(f.read())
  test = _read_json(os.path.join(gpu_dir, f"{job}_eval_test_metrics.json"))
  times = status["jobs"][job]
  return {"test": {m: test[m] for m in METRICS}, "checkpoint_step": test.get("step"), "validation": curve,
          "steps": int(rate.group(1)) if rate else None, "ms_per_step": float(rate.group(2)) if rate else None,
          "train_s": times.get("train_s"), "eval_s": times.get("eval_s")}


def change(new: dict, old: dict) -> dict:
  return {m: new[m] / old[m] - 1 for m in METRICS}


def report(args, study: dict) -> dict:
  """The record; `study` is transitions.refit_study of args.data_dir."""
  status = _read_json(os.path.join(args.gpu_dir, "status.json"))
  paper_cfg = tiger_job(args.gpu_dir, args.paper_job, status) if args.paper_job else None
  refit = tiger_job(args.gpu_dir, args.refit_job, status)
  pick = lambda r: {m: r[m] for m in METRICS}
  others = {}
  for spec in args.compare:
    label, _, path = spec.partition("=")
    others[label] = {"file": path, "test": pick(_read_json(path))}
  return {
      "meta": _common.run_metadata(), "gpu_revision": status["revision"],
      "card": _common.plan_results_card(status) or "?",
      "dataset": args.dataset, "plan": args.plan,
      "semantic_ids_seconds": status["datasets"][args.dataset].get("prepare_s"),
      "paper_table1": PAPER[args.dataset], "tiger_paper_config": paper_cfg, "tiger_refit": refit,
      "tiger_refit_change_on_test": change(refit["test"], paper_cfg["test"]) if paper_cfg else None,
      "other_runs": others,
      "transitions": {k: pick(v) for k, v in study.items()},
      "transitions_recent_item_change_on_validation": change(pick(study["validation"]),
                                                             pick(study["validation_holdout3"])),
      "transitions_refit_change_on_test": change(pick(study["test_refit_holdout1"]), pick(study["test"])),
  }


def markdown(r: dict, args) -> str:
  pct = lambda d: [f"{100 * d[m]:+.1f}%" for m in METRICS]
  row = lambda name, d: [name] + [d[m] for m in METRICS]
  p, f = r["tiger_paper_config"], r["tiger_refit"]
  # Two layouts: the paper configuration trained in the same call as the refit (compared at equal steps, with
  # its validation curve), or the refit alone against runs named by --compare.
  if p:
    jobs = f"{args.paper_job}, {args.refit_job}: two jobs side by side on the one GPU, {f['steps']:,} steps each"
    intro = (f"TIGER, paper configuration (gin/{r['dataset']}.gin) at {p['steps']:,} steps, tested at its best "
             f"validation checkpoint (step {p['checkpoint_step']}), against the refit (gin/{r['dataset']}_refit"
             ".gin, the same steps, last checkpoint); the transition baseline for scale:")
    paper_config_row = [row(f"tiger_jax, paper config, {p['steps'] // 1000}k steps", p["test"])]
    paper_config_change = [["refit vs paper config", *pct(r["tiger_refit_change_on_test"])]]
    tail = (["", "TIGER paper config, validation during training:", ""]
            + _common.markdown_table(["step", *METRICS], [row(e["step"], e) for e in p["validation"]])
            + ["", f"Training: paper config {p['ms_per_step']} ms/step, refit {f['ms_per_step']} ms/step while "
               f"training (each beside the other); wall {p['train_s']} s and {f['train_s']} s including "
               f"compilation and evaluation; test decoding {p['eval_s']} s and {f['eval_s']} s."])
  else:
    jobs = f"{args.refit_job}: {f['steps']:,} steps, beside the plan's other jobs on the one GPU"
    intro = (f"TIGER refit (gin/{r['dataset']}_refit.gin, {f['steps']:,} steps, last checkpoint); the paper "
             "configuration from the runs named below (other Semantic IDs, and maybe another card); the "
             "transition baseline for scale:")
    paper_config_row, paper_config_change = [], []
    tail = ["", f"Training: refit {f['ms_per_step']} ms/step while training (beside the other jobs); wall "
            f"{f['train_s']} s including compilation; test decoding {f['eval_s']} s."]
  lines = [f"# Refit on train + validation, {r['dataset']}: {r['card']}", "",
           f"GPU jobs at revision {r['gpu_revision']} ({jobs}); "
           f"report written {r['meta']['date']} at {r['meta']['git_revision']}. Paper-schedule RQ-VAE Semantic "
           f"IDs and task cache: {r['semantic_ids_seconds']} s.", "",
           "## 1. Measured on validation first (no TIGER run needed)", "",
           "Leave-one-out keeps each user's most recent training item (the validation target) out of training. "
           "How much is such a most recent item worth? The transition baseline "
           "(tiger_jax/baselines/transitions.py) on the validation targets, without and with each user's "
           "most recent training item in its counts:", ""]
  lines += _common.markdown_table(["counts", *METRICS], [
      row("holdout 3 (without)", r["transitions"]["validation_holdout3"]),
      row("holdout 2 (with: the usual training data)", r["transitions"]["validation"]),
      ["change", *pct(r["transitions_recent_item_change_on_validation"])]])
  lines += ["", "## 2. Then on test", "", intro, ""]
  others = r["other_runs"]
  rows = ([row("paper, Table 1 (TIGER)", r["paper_table1"])] + paper_config_row
          + [row(label, o["test"]) for label, o in others.items()]
          + [row(f"tiger_jax, refit, {f['steps'] // 1000}k steps", f["test"])] + paper_config_change
          + [["refit vs " + label, *pct(change(f["test"], o["test"]))] for label, o in others.items()]
          + [["refit vs paper, Table 1", *pct(change(f["test"], r["paper_table1"]))],
             row("transition baseline (holdout 2)", r["transitions"]["test"]),
             row("transition baseline, refit (holdout 1)", r["transitions"]["test_refit_holdout1"]),
             ["transition refit vs holdout 2", *pct(r["transitions_refit_change_on_test"])]])
  lines += _common.markdown_table(["test", *METRICS], rows)
  lines += [""] + [f"- {label}: [{o['file']}]({os.path.relpath(o['file'], os.path.dirname(args.out))})"
                   for label, o in others.items()]
  lines += tail
  lines += ["", f"Commands: the GPU run ran `python -m experiments.run_plan --plan={r['plan']}` (then "
            "`--collect`; experiments/run_plan.py); this report: `" + r["meta"]["command"] + "`."]
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--gpu_dir", required=True, help="a gpu_jobs.py results directory")
  parser.add_argument("--dataset", required=True, choices=sorted(PAPER))
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--paper_job", default=None, help="the paper-config job of the same call (optional)")
  parser.add_argument("--refit_job", required=True)
  parser.add_argument("--plan", required=True, help="the gpu_jobs.py plan the call ran (for the record)")
  parser.add_argument("--compare", action="append", default=[], metavar="LABEL=METRICS_JSON",
                      help="another run's test metrics (eval's metrics.json) as a row")
  parser.add_argument("--out", required=True, help="output path without extension")
  parser.add_argument("--transitions", action="append", default=[], metavar="NAME=DATA_DIR",
                      help="also write the transition baseline's refit study to "
                      "<dir of OUT>/transitions_NAME_cpu.json")
  args = parser.parse_args()
  studies = {}  # data_dir -> refit study, each computed once

  def study_of(data_dir: str) -> dict:
    if data_dir not in studies:
      studies[data_dir] = transitions.refit_study(sequences.load_dataset(data_dir))
    return studies[data_dir]

  for spec in args.transitions:
    name, _, data_dir = spec.partition("=")
    utils.write_json(os.path.join(os.path.dirname(args.out), f"transitions_{name}_cpu.json"),
                     {"meta": _common.run_metadata(), "data_dir": data_dir, "results": study_of(data_dir)})
  result = report(args, study_of(args.data_dir))
  utils.write_json(args.out + ".json", result)
  with open(args.out + ".md", "w") as f:
    f.write(markdown(result, args))
  print(markdown(result, args))


if __name__ == "__main__":
  main()
