"""tiger_jax/fusion.py: the fused ranking by hand, selection on validation only, and inputs that disagree."""
import json
import os
import subprocess
import sys

import pytest

from tiger_jax import fusion

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(run_dir, split, rows, folder=None):
  path = os.path.join(run_dir, folder or f"eval_{split}", "predictions.jsonl")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for row in rows:
      f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
  return path


def _rows(targets, lists):
  return [{"user": f"u{i}", "target": t, "topk": l, "scores": [0.0] * len(l)}
          for i, (t, l) in enumerate(zip(targets, lists))]


def _fillers(n):
  return [f"f{i}" for i in range(n)]


def test_fused_scores_by_hand():
  fused = fusion.fuse([["x", "y", "z"], ["y", "w"]], [0.5, 0.5], c=1.0, k=10)
  # x .5/2, y .5/3 + .5/2, z .5/4, w .5/3
  assert [a for a, _ in fused] == ["y", "x", "w", "z"]
  assert [s for _, s in fused] == pytest.approx([0.5 / 3 + 0.25, 0.25, 0.5 / 3, 0.125])
  # Equal scores: the item the earlier system ranks higher first; a zero weight adds no items.
  assert [a for a, _ in fusion.fuse([["x"], ["y"]], [0.5, 0.5], 1.0, 10)] == ["x", "y"]
  assert [a for a, _ in fusion.fuse([["y"], ["x"]], [0.5, 0.5], 1.0, 10)] == ["y", "x"]
  assert fusion.fuse([["x", "y"], ["w"]], [1.0, 0.0], 5.0, 10) == [("x", 1 / 6), ("y", 1 / 7)]
  assert len(fusion.fuse([_fillers(30)], [1.0], 1.0, 20)) == 20


def test_weight_grid():
  assert fusion.weight_grid(2, 0.5) == [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]
  assert len(fusion.weight_grid(3, 0.1)) == 66 and all(sum(w) == pytest.approx(1) for w in fusion.weight_grid(3, 0.1))
  with pytest.raises(ValueError, match="divide 1"):
    fusion.weight_grid(2, 0.3)


@pytest.fixture
def two_systems(tmp_path):
  """A is right on validation and wrong on test, B the reverse; 4 users."""
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  val_targets, test_targets = ["v0", "v1", "v2", "v3"], ["t0", "t1", "t2", "t3"]
  _write(a, "validation", _rows(val_targets, [[t] + _fillers(19) for t in val_targets]))
  _write(b, "validation", _rows(val_targets, [_fillers(20) for _ in val_targets]))
  _write(a, "test", _rows(test_targets, [_fillers(20) for _ in test_targets]))
  _write(b, "test", _rows(test_targets, [[t] + _fillers(19) for t in test_targets]), folder="test")
  return {"a": a, "b": b}


def test_the_pick_is_validations_and_test_is_scored_once_with_it(tmp_path, two_systems):
  out = str(tmp_path / "out")
  results = fusion.run(two_systems, out, weight_step=0.5, cs=[1.0, 5.0])
  record = json.load(open(os.path.join(out, "selection.json")))
  assert record["chosen"]["weights"] == [1.0, 0.0] and record["chosen"]["c"] == 1.0
  assert record["chosen"]["ndcg@10"] == 1.0 and len(record["points"]) == 6
  # B alone would be perfect on test; the pick made on validation is what test reports.
  assert results["validation"]["ndcg@10"] == 1.0 and results["test"]["ndcg@10"] == 0.0
  written = json.load(open(os.path.join(out, "eval_test", "metrics.json")))
  assert written["weights"] == [1.0, 0.0] and written["num_users"] == 4
  rows = [json.loads(line) for line in open(os.path.join(out, "eval_test", "predictions.jsonl"))]
  assert [r["user"] for r in rows] == ["u0", "u1", "u2", "u3"] and all(len(r["topk"]) == 20 for r in rows)
  from tiger_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  recomputed = eval_lib.metrics_from_predictions(os.path.join(out, "eval_validation", "predictions.jsonl"))
  assert recomputed["ndcg@10"] == pytest.approx(results["validation"]["ndcg@10"])
  # A rerun reuses the selection; another grid is refused rather than re-chosen after test was seen.
  before = open(os.path.join(out, "selection.json")).read()
  assert fusion.run(two_systems, out, weight_step=0.5, cs=[1.0, 5.0])["test"] == results["test"]
  assert open(os.path.join(out, "selection.json")).read() == before
  with pytest.raises(fusion.FusionInputError, match="weights_grid"):
    fusion.run(two_systems, out, weight_step=0.25, cs=[1.0, 5.0])


def test_selection_is_written_before_any_test_file_is_read(tmp_path, two_systems):
  _write(two_systems["b"], "test", ['{"user": "u0", "target": "t0", "topk": []}', "{not json"], folder="test")
  out = str(tmp_path / "out")
  with pytest.raises(fusion.FusionInputError, match=r"b/test/predictions\.jsonl, line 2: not valid JSON"):
    fusion.run(two_systems, out, weight_step=0.5, cs=[1.0])
  assert os.path.exists(os.path.join(out, "selection.json"))


@pytest.mark.parametrize("rows, message", [
    (['{"user": "u0", "topk": []}'], r"line 1, field 'target': missing"),
    (['{"user": "u0", "target": "v0", "topk": "v0"}'], r"line 1, field 'topk': must be a list"),
    (['{"user": "u0", "target": "v0", "topk": []}', '{"user": "u0", "target": "v0", "topk": []}'],
     r"line 2, field 'user': user 'u0' appears a second time \(first on line 1\)"),
    (['[1, 2]'], r"line 1: expected a JSON object"),
])
def test_a_malformed_line_is_named(tmp_path, rows, message):
  path = _write(str(tmp_path / "a"), "validation", rows)
  with pytest.raises(fusion.FusionInputError, match=message) as e:
    fusion.read_predictions(path)
  assert path in str(e.value)


def test_systems_that_disagree_are_refused_naming_both_files(tmp_path, two_systems):
  other = str(tmp_path / "c")
  rows = _rows(["v0", "v1", "v2", "WRONG"], [_fillers(20)] * 4)
  _write(other, "validation", rows)
  with pytest.raises(fusion.FusionInputError, match=r"user 'u3' has target 'WRONG' in .*c/eval_validation/"
                                                     r"predictions\.jsonl line 4 but 'v3' in .*a/eval_validation"):
    fusion.load_split({"a": two_systems["a"], "c": other}, "validation")
  _write(other, "validation", rows[:3])
  with pytest.raises(fusion.FusionInputError,
                     match=r"1 users only in .*a/eval_validation/predictions\.jsonl, 0 only in .*'u3', "
                           r"missing from .*c/eval"):
    fusion.load_split({"a": two_systems["a"], "c": other}, "validation")
  with pytest.raises(fusion.FusionInputError, match=r"no test predictions in .*nowhere"):
    fusion.load_split({"a": two_systems["a"], "n": str(tmp_path / "nowhere")}, "test")
  with pytest.raises(ValueError, match="at least two systems"):
    fusion.run({"a": two_systems["a"]}, str(tmp_path / "o"))


def test_cli_prints_both_splits_and_a_bad_input_is_one_line(tmp_path, two_systems):
  argv = [sys.executable, "-m", "tiger_jax.fusion", f"--system=a={two_systems['a']}",
          f"--system=b={two_systems['b']}", "--weight_step=0.5", "--c=1"]
  done = subprocess.run(argv + [f"--out_dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0, done.stderr
  assert "fusion validation" in done.stdout and "fusion test" in done.stdout
  _write(two_systems["b"], "validation", ['{"user": "u0"}'])
  done = subprocess.run(argv + [f"--out_dir={tmp_path / 'out2'}"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 2 and "Traceback" not in done.stderr
  assert "b/eval_validation/predictions.jsonl, line 1, field 'target': missing" in done.stderr
