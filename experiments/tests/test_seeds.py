"""experiments/seeds.py: mean and standard error over seeds, checked against hand-computed values."""
import json
import math
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import seeds  # pylint: disable=wrong-import-position


def test_mean_and_standard_error_by_hand():
  # 0.04, 0.05, 0.06: mean 0.05; sample variance (0.0001 + 0 + 0.0001) / 2 = 0.0001; se 0.01 / sqrt(3).
  mean, se = seeds.mean_and_standard_error([0.04, 0.05, 0.06])
  assert mean == pytest.approx(0.05) and se == pytest.approx(0.01 / math.sqrt(3))
  assert seeds.mean_and_standard_error([0.07]) == (0.07, None)


def test_table_from_metrics_files(tmp_path):
  paths = []
  for i, r10 in enumerate((0.0600, 0.0648, 0.0696)):
    metrics = {"recall@5": 0.0454, "ndcg@5": 0.0321 + 0.001 * (i - 1), "recall@10": r10, "ndcg@10": 0.0384,
               "step": 20000, "device": "NVIDIA H200"}
    path = tmp_path / f"seed{i}.json"
    path.write_text(json.dumps(metrics))
    paths.append(path)
  out = tmp_path / "out" / "s"
  result = seeds.main(["--dataset=beauty", "--title=t", "--out", str(out)] +
                      [f"--run=seed {i}={p}" for i, p in enumerate(paths)])
  stats = result["stats"]
  assert stats["recall@10"]["mean"] == pytest.approx(0.0648)
  assert stats["recall@10"]["standard_error"] == pytest.approx(0.0048 / math.sqrt(3))
  assert stats["recall@10"]["vs_paper"] == pytest.approx(0.0)  # the paper's Beauty Recall@10 is 0.0648
  assert stats["ndcg@5"]["standard_error"] == pytest.approx(0.001 / math.sqrt(3))
  assert stats["recall@5"]["standard_error"] == pytest.approx(0.0)
  assert stats["recall@10"]["vs_paper_seed_mean"] == pytest.approx(0.0648 / 0.0642 - 1)  # Table 9: 0.0642
  text = (tmp_path / "out" / "s.md").read_text()
  assert "0.0648 ± 0.0028" in text and "mean vs paper's 3-seed mean" in text
  # A file that is not an eval metrics.json is refused by name.
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"recall@5": 0.1}))
  with pytest.raises(SystemExit, match="bad.json has no ndcg@5"):
    seeds.main(["--dataset=beauty", "--title=t", "--out", str(out), f"--run=x={bad}"])
