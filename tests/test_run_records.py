"""The scripts that turn model directories and logs into results tables read the right numbers."""
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import compare_runs  # noqa: E402
import table1_report  # noqa: E402

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def _model_dir(root, name, ndcg_by_step, test_step, test_ndcg):
  d = root / name
  (d / "eval_test").mkdir(parents=True)
  with open(d / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 100, "train/loss": 3.0}) + "\n")  # a training row: no validation metrics
    for step, ndcg in ndcg_by_step.items():
      row = {"step": step, "validation/loss": 2.0, **{f"validation/{k}": ndcg for k in METRICS}}
      f.write(json.dumps(row) + "\n")
  with open(d / "eval_test" / "metrics.json", "w") as f:
    json.dump({"step": test_step, **{k: test_ndcg for k in METRICS}}, f)
  return str(d)


def test_compare_runs_reports_each_runs_best_validation_step_and_its_test_metrics(tmp_path):
  a = _model_dir(tmp_path, "a", {1000: 0.02, 2000: 0.05, 3000: 0.04}, test_step=2000, test_ndcg=0.031)
  b = _model_dir(tmp_path, "b", {1000: 0.03, 2000: 0.01}, test_step=1000, test_ndcg=0.012)
  runs = [compare_runs.summarize("a", a), compare_runs.summarize("b", b)]
  assert [r["best_step"] for r in runs] == [2000, 1000]
  assert [r["last_step"] for r in runs] == [3000, 2000]
  assert runs[0]["validation"]["ndcg@10"] == 0.05 and runs[0]["test"]["ndcg@10"] == 0.031
  text = compare_runs.to_markdown({"title": "t", "card": "c", "revision": "r", "written": "d", "runs": runs})
  assert "| a | 3000 | 2000 | 0.0500 |" in text
  assert "| 3000 | 0.0400 |  |" in text  # run b has no step 3000


def test_compare_runs_refuses_a_test_evaluation_of_another_checkpoint(tmp_path):
  a = _model_dir(tmp_path, "a", {1000: 0.02, 2000: 0.05}, test_step=1000, test_ndcg=0.01)
  with pytest.raises(ValueError, match="not the best step 2000"):
    compare_runs.summarize("a", a)


def test_table1_report_parses_the_trainers_summary_lines(tmp_path):
  log = tmp_path / "run.log"
  log.write_text("noise\n2026-11-25 INFO tiger_jax.train] trained steps 0..54600 in 6m24s: 186.7 steps/s while "
                 "training (5.36 ms/step); 1m31s compiling, evaluating and checkpointing\n")
  [segment] = table1_report.training_segments([str(log)])
  assert segment == {"log": "run.log", "from_step": 0, "to_step": 54600, "wall_s": 384.0, "ms_per_step": 5.36,
                     "compile_eval_checkpoint_s": 91.0}
