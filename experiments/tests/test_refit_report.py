"""experiments/refit_report.py from a hand-made run_plan results directory: the numbers it reports are the files'."""
import json
import os
import subprocess
import sys

import pytest

from conftest import write_processed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def _job(gpu_dir, name, test, steps=3000, ms=7.5, validation=None):
  (gpu_dir / f"{name}_eval_test_metrics.json").write_text(json.dumps(dict(test, step=steps)))
  lines = [{"step": s, **{f"validation/{m}": v for m, v in metrics.items()}} for s, metrics in (validation or [])]
  (gpu_dir / f"{name}_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines + [{"step": steps}]))
  (gpu_dir / f"{name}_train.log").write_text(
      f"INFO tiger_jax.train] trained steps 0..{steps} in 1m02s: 133.3 steps/s while training ({ms} ms/step); "
      "40s compiling, evaluating and checkpointing\n")


@pytest.fixture()
def setup(tmp_path):
  items = [{"asin": a, "title": a} for a in "ABCDE"]
  data_dir = write_processed(tmp_path / "data", {"u0": list("ABCDE"), "u1": list("CBAED"), "u2": list("ABDEC")},
                             items)
  gpu = tmp_path / "gpu"
  gpu.mkdir()
  (gpu / "status.json").write_text(json.dumps({"revision": "abc1234", "datasets": {
      "_runner": {"device": "GPU 0: NVIDIA H200 (UUID: GPU-1)"}, "beauty": {"prepare_s": 90.0}},
      "jobs": {"paper": {"train_s": 100.0, "eval_s": 9.0}, "refit": {"train_s": 90.0, "eval_s": 8.0}}}))
  paper = {"recall@5": 0.04, "ndcg@5": 0.025, "recall@10": 0.06, "ndcg@10": 0.032}
  refit = {"recall@5": 0.05, "ndcg@5": 0.03, "recall@10": 0.075, "ndcg@10": 0.04}
  _job(gpu, "paper", paper, validation=[(1000, paper), (3000, paper)])
  _job(gpu, "refit", refit)
  other = tmp_path / "other_metrics.json"
  other.write_text(json.dumps({**paper, "recall@5": 0.032}))
  return dict(data_dir=data_dir, gpu=gpu, other=other, paper=paper, refit=refit, tmp=tmp_path)


def _report(setup, *extra):
  out = setup["tmp"] / "report"
  subprocess.run([sys.executable, "-m", "experiments.refit_report", f"--gpu_dir={setup['gpu']}",
                  "--dataset=beauty", f"--data_dir={setup['data_dir']}", "--refit_job=refit", "--plan=plan.json",
                  f"--out={out}", *extra], cwd=REPO, check=True, capture_output=True, text=True, timeout=300)
  return json.load(open(f"{out}.json")), open(f"{out}.md").read()


def test_same_call_paper_job(setup):
  result, md = _report(setup, "--paper_job=paper")
  assert result["card"] == "NVIDIA H200" and result["gpu_revision"] == "abc1234" and result["plan"] == "plan.json"
  assert result["tiger_refit"]["test"] == setup["refit"] and result["tiger_paper_config"]["test"] == setup["paper"]
  assert result["tiger_refit"]["ms_per_step"] == 7.5 and result["tiger_refit"]["steps"] == 3000
  assert result["tiger_refit_change_on_test"]["recall@5"] == pytest.approx(0.25)  # 0.05 / 0.04 - 1
  assert result["tiger_refit_change_on_test"]["ndcg@10"] == pytest.approx(0.25)  # 0.04 / 0.032 - 1
  assert [e["step"] for e in result["tiger_paper_config"]["validation"]] == [1000, 3000]
  assert "| refit vs paper config | +25.0% | +20.0% | +25.0% | +25.0% |" in md
  assert "--plan=plan.json" in md


def test_refit_alone_against_another_run(setup):
  result, md = _report(setup, f"--compare=H100 run={setup['other']}")
  assert result["tiger_paper_config"] is None and result["tiger_refit_change_on_test"] is None
  assert result["other_runs"]["H100 run"]["test"]["recall@5"] == 0.032
  assert "| refit vs H100 run | +56.2% | +20.0% | +25.0% | +25.0% |" in md  # 0.05 / 0.032 - 1 = +56.25%
  assert "paper config, 3k steps" not in md
  assert "| tiger_jax, refit, 3k steps | 0.0500 | 0.0300 | 0.0750 | 0.0400 |" in md
