"""benchmarks/sasrec_sweep.py: points from a grid file, selection on validation only, test scored for the pick.

The end-to-end case trains six tiny SASRec runs (three points, one extra seed, two refits): about a minute on a
busy CPU.
"""
import json
import os

import gin
import numpy as np
import pytest

from conftest import write_processed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


from benchmarks import sasrec_sweep as sweep_lib  # noqa: E402


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_choose_best_and_grid_checks(tmp_path):
  points = [{"name": "a", "validation": {"ndcg@10": 0.2}}, {"name": "b", "validation": {"ndcg@10": 0.3}},
            {"name": "c", "validation": {"ndcg@10": 0.3}}, {"name": "d", "validation": {"ndcg@10": float("nan")}}]
  assert sweep_lib.choose_best(points, "ndcg@10")["name"] == "b"  # the tie goes to the earlier point
  with pytest.raises(ValueError, match="no point"):
    sweep_lib.choose_best(points[3:], "ndcg@10")
  around = sweep_lib.stage_points({"around_best": True, "grid": {"LR": [1, 2]}}, {"LOSS": "bce", "LR": 5})
  assert around == [{"LOSS": "bce", "LR": 1}, {"LOSS": "bce", "LR": 2}]
  assert sweep_lib.point_name({"LOSS": "bce", "sasrec_model.SASRecConfig.num_layers": 3}) == "loss-bce_num_layers-3"
  grid = sweep_lib.load_grid(os.path.join(REPO, "benchmarks", "sasrec_grid.json"))
  assert len(sweep_lib.stage_points(grid["stages"][0], None)) == 12
  for bad, message in [({"stages": [{"around_best": True, "grid": {"LR": [1]}}]}, "no best yet"),
                       ({"metric": "mrr", "stages": [{"grid": {"LR": [1]}}]}, "metric"),
                       ({"stages": [{"grid": {"LR": []}}]}, "non-empty lists"),
                       ({"stages": [{"grid": {"LR": [1]}, "arround_best": True}]}, "unknown keys")]:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=message):
      sweep_lib.load_grid(str(path))


def _successor_dataset(path, users=120, items=30, seed=0):
  rng = np.random.default_rng(seed)
  sequences = {}
  for u in range(users):
    first, n = int(rng.integers(items)), int(rng.integers(4, 10))
    sequences[f"user{u}"] = [f"I{(first + j) % items:02d}" for j in range(n)]
  return write_processed(path, sequences, [{"asin": f"I{i:02d}", "title": f"item {i}"} for i in range(items)])


@pytest.mark.slow
def test_sweep_selects_on_validation_and_scores_only_the_pick_on_test(tmp_path, monkeypatch):
  data_dir = _successor_dataset(tmp_path / "data")
  grid = tmp_path / "grid.json"
  grid.write_text(json.dumps({
      "metric": "ndcg@10",
      "fixed": {"NUM_EPOCHS": 4, "EVAL_EVERY_EPOCHS": 2, "CHECKPOINT_EVERY_EPOCHS": 2, "EMB_DIM": 16,
                "MAX_LEN": 10, "BATCH_SIZE": 32, "LEARNING_RATE": 0.01},
      "stages": [{"grid": {"DROPOUT_RATE": [0.1, 0.4]}}, {"around_best": True, "grid": {"LOSS": ["bce"]}}]}))
  out = tmp_path / "out"
  args = [f"--data_dir={data_dir}", f"--out_dir={out}", f"--grid={grid}", "--test_seeds=0,1", "--refit",
          "--gin.sasrec_model.SASRecConfig.num_layers=1"]
  report = sweep_lib.main(args)

  points = report["points"]
  assert [p["stage"] for p in points] == [0, 0, 1]
  # The pick is the highest validation NDCG@10 as each point's own eval_validation/metrics.json gives it.
  written = {p["name"]: json.load(open(out / "points" / p["name"] / "eval_validation" / "metrics.json"))
             for p in points}
  best = max(points, key=lambda p: (written[p["name"]]["ndcg@10"], -points.index(p)))
  assert report["best"] == best["name"]
  first = max(points[:2], key=lambda p: (written[p["name"]]["ndcg@10"], -points.index(p)))
  assert points[2]["bindings"] == {**first["bindings"], "LOSS": "bce"}  # stage 1 varies stage 0's best
  assert written[points[2]["name"]]["loss"] == "bce"
  # Test: the chosen point only, at seed 0 (its own run) and seed 1 (a run of its own).
  for p in points:
    assert os.path.exists(out / "points" / p["name"] / "eval_test") == (p["name"] == best["name"])
  assert report["test"]["0"]["model_dir"] == str(out / "points" / best["name"])
  assert os.path.exists(out / "seeds" / f"{best['name']}_seed1" / "eval_test" / "metrics.json")
  for k in KEYS:
    assert report["test_mean"][k] == pytest.approx((report["test"]["0"][k] + report["test"]["1"][k]) / 2)
  # --refit: per seed, the pick trained on train + validation for its best validation epoch count, test only.
  refit = report["refit"]
  assert refit["epochs"] == best["best"]["epoch"] and refit["epochs_from"] == best["name"]
  for seed in ("0", "1"):
    run_dir = out / "refit" / f"{best['name']}_seed{seed}"
    assert refit["test"][seed]["model_dir"] == str(run_dir)
    scored = json.load(open(run_dir / "eval_test" / "metrics.json"))
    assert scored["refit"] and scored["epochs_trained"] == refit["epochs"]
    assert scored["train_targets"] == written[best["name"]]["train_targets"] + 120  # one validation target a user
    assert not os.path.exists(run_dir / "eval_validation")
  saved = json.load(open(out / f"sasrec_sweep_{report['dataset']['dataset']}.json"))
  assert saved["best"] == best["name"] and len(saved["points"]) == 3 and saved["git_revision"]

  # A rerun trains and scores nothing, and reports the same.
  monkeypatch.setattr(sweep_lib, "run_sasrec", lambda *a, **k: pytest.fail("a finished sweep ran SASRec"))
  again = sweep_lib.main(args)
  assert again["best"] == report["best"] and again["test_mean"] == report["test_mean"]
  assert again["refit"]["test_mean"] == refit["test_mean"]


def test_out_of_time_exits_for_a_rerun(tmp_path):
  data_dir = _successor_dataset(tmp_path / "data", users=20)
  with pytest.raises(SystemExit) as stopped:
    sweep_lib.main([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}", "--stop_after_seconds=1e-9"])
  assert stopped.value.code == sweep_lib.EXIT_RERUN
  assert not os.path.exists(tmp_path / "out" / "points")


@pytest.mark.slow
def test_workers_run_a_stage_side_by_side_with_the_same_results(tmp_path):
  data_dir = _successor_dataset(tmp_path / "data", users=40)
  grid = tmp_path / "grid.json"
  grid.write_text(json.dumps({
      "fixed": {"NUM_EPOCHS": 2, "EVAL_EVERY_EPOCHS": 1, "CHECKPOINT_EVERY_EPOCHS": 2, "EMB_DIM": 8,
                "MAX_LEN": 10, "BATCH_SIZE": 16},
      "stages": [{"grid": {"DROPOUT_RATE": [0.1, 0.3, 0.5]}}]}))
  reports = {}
  for workers in (1, 3):
    out = tmp_path / f"out{workers}"
    reports[workers] = sweep_lib.main([f"--data_dir={data_dir}", f"--out_dir={out}", f"--grid={grid}",
                                       "--test_seeds=0,1", "--refit", f"--workers={workers}",
                                       "--gin.sasrec_model.SASRecConfig.num_layers=1"])
  serial, parallel = reports[1], reports[3]
  assert [p["validation"] for p in parallel["points"]] == [p["validation"] for p in serial["points"]]
  assert parallel["best"] == serial["best"] and parallel["test"]["1"]["ndcg@10"] == serial["test"]["1"]["ndcg@10"]
  assert parallel["refit"]["test_mean"] == serial["refit"]["test_mean"]


def test_a_memory_fraction_the_workers_cannot_all_have_is_refused_before_any_run(tmp_path, monkeypatch):
  data_dir = _successor_dataset(tmp_path / "data", users=20)
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.2")
  with pytest.raises(ValueError, match=r"XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 for each of --workers=6 asks for 1.20"):
    sweep_lib.main([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}", "--workers=6"])
  assert not os.path.exists(tmp_path / "out" / "points")
  sweep_lib.check_memory_fraction(5, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.2"})  # exactly the device: allowed
  sweep_lib.check_memory_fraction(6, {})  # unset: the sweep splits 0.9 itself
  sweep_lib.check_memory_fraction(1, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"})  # one worker: the user's choice
  with pytest.raises(ValueError, match="is not a number"):
    sweep_lib.check_memory_fraction(2, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "half"})


def test_a_failing_worker_names_its_run_and_stops_the_sweep(tmp_path):
  data_dir = _successor_dataset(tmp_path / "data", users=20)
  grid = tmp_path / "grid.json"
  grid.write_text(json.dumps({"fixed": {"NUM_EPOCHS": 1, "EMB_DIM": 8, "MAX_LEN": 10},
                              "stages": [{"grid": {"LOSS": ["softmax", "no_such_loss"]}}]}))
  with pytest.raises(RuntimeError, match=r"stage 0, point loss-no_such_loss: ValueError: loss must be one of"):
    sweep_lib.main([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}", f"--grid={grid}", "--workers=2"])
  assert os.path.exists(tmp_path / "out" / "points" / "loss-softmax" / "point.json")  # the other run is kept
  saved = json.load(open(tmp_path / "out" / "sasrec_sweep_data.json"))  # and so is its line in the report
  assert [p["name"] for p in saved["points"]] == ["loss-softmax"]
