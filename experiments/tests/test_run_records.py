"""The scripts that turn model directories and logs into results tables read the right numbers."""
import gzip
import json
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import embedding_knn
from benchmarks import semantic_id_purity
from experiments import compare_runs
from experiments import decoding_choices
from experiments import sports_style_text
from experiments import table1_report
from experiments import target_frequency
from tiger_jax.data import splits

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


def test_compare_runs_takes_a_run_from_an_earlier_record(tmp_path):
  """--recorded: a run whose model directory is gone comes from the earlier record, under a new label."""
  old = _model_dir(tmp_path, "old", {1000: 0.02, 2000: 0.03}, test_step=2000, test_ndcg=0.025)
  record = tmp_path / "record.json"
  record.write_text(json.dumps({"runs": [compare_runs.summarize("paper", old)]}))
  parser = compare_runs.argparse.ArgumentParser()
  run = compare_runs.recorded_run(parser, f"paper config (H100)={record}#paper")
  assert run["label"] == "paper config (H100)" and run["best_step"] == 2000 and run["test"]["ndcg@10"] == 0.025
  with pytest.raises(SystemExit):
    compare_runs.recorded_run(parser, f"x={record}#dropout 0.3")  # no such run: an error naming the record


def test_compare_runs_reads_a_gpu_jobs_job_from_its_results_directory(tmp_path):
  """gpu_jobs.py copies JOB_metrics.jsonl and JOB_eval_test_metrics.json into one results directory."""
  d = _model_dir(tmp_path, "wide", {10000: 0.021, 20000: 0.025, 30000: 0.024}, test_step=20000, test_ndcg=0.018)
  results = tmp_path / "results"
  results.mkdir()
  os.rename(os.path.join(d, "metrics.jsonl"), results / "wide_metrics.jsonl")
  os.rename(os.path.join(d, "eval_test", "metrics.json"), results / "wide_eval_test_metrics.json")
  run = compare_runs.gpu_job_run("wide (H200)", str(results / "wide"))
  assert run["best_step"] == 20000 and run["last_step"] == 30000
  assert run["validation"]["ndcg@10"] == 0.025 and run["test"]["recall@5"] == 0.018
  with pytest.raises(ValueError, match="no .*other_metrics.jsonl"):
    compare_runs.gpu_job_run("x", str(results / "other"))


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


def test_embedding_knn_ranks_by_similarity_to_the_last_history_item():
  # Items 0 and 1 are near-identical, 2 and 3 are near-identical, the two pairs are orthogonal.
  x = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99]], np.float32)
  examples = splits.SplitExamples(user_index=np.arange(3, dtype=np.int32),
                                  history=[np.array([2, 0]), np.array([3]), np.array([1, 2])],
                                  target=np.array([1, 0, 3], np.int32))
  m = embedding_knn.knn_metrics(x, examples, num_candidates=3)
  # User 0: last item 0 -> [1, ...] hit at rank 1; user 1: last item 3 -> [2, 1, 0] target 0 at rank 3;
  # user 2: last item 2 -> [3, ...] hit at rank 1.
  assert m["recall@5"] == pytest.approx(1.0)
  assert m["ndcg@5"] == pytest.approx((1 + 1 / np.log2(4) + 1) / 3)


def test_target_frequency_recall_per_bucket_of_training_target_count(tmp_path):
  asin_index = {"a": 0, "b": 1, "c": 2}
  train_counts = np.array([0, 3, 50])  # a: never a training target; b: 1-4 times; c: 20+
  rows = [("a", ["a", "b"]), ("b", ["c", "a"]), ("b", ["b"]), ("c", ["a"] * 10 + ["c"])]
  path = tmp_path / "predictions.jsonl"
  path.write_text("".join(json.dumps({"user": f"u{i}", "target": t, "topk": k}) + "\n"
                          for i, (t, k) in enumerate(rows)))
  got = target_frequency.recall_by_bucket(str(path), asin_index, train_counts, k=10)
  assert [(r["bucket"], r["users"], r["recall@10"]) for r in got] == [
      ("0", 1, 1.0), ("1-4", 2, 0.5), ("5-19", 0, None), ("20+", 1, 0.0)]  # c is 11th: not in the top 10
  path.write_text(json.dumps({"user": "u", "target": "zzz", "topk": []}) + "\n")
  with pytest.raises(ValueError, match="predictions.jsonl, line 1: target 'zzz'"):
    target_frequency.recall_by_bucket(str(path), asin_index, train_counts, k=10)


def test_purity_labels_skip_a_brand_that_precedes_the_categories(tmp_path):
  """Sports paths are root, brand, category...; Beauty's are root, category, subcategory. Both give the category."""
  items = [("b1", [["Beauty", "Skin Care", "Face"]]), ("b2", [["Beauty", "Makeup", "Eyes"], ["Other", "X"]]),
           ("b3", [["Other", "Y"], ["Beauty", "Skin Care", "Body"]]), ("s1", [["Beauty", "Ghost", "Makeup", "Eyes"]]),
           ("s2", [["Beauty"]])]
  path = tmp_path / "items.jsonl.gz"
  with gzip.open(path, "wt") as f:
    for asin, cats in items:
      f.write(json.dumps({"asin": asin, "title": asin, "categories": cats}) + "\n")
  labels = semantic_id_purity.second_level_categories(str(path), ["b1", "b2", "b3", "s1", "s2"])
  assert labels == ["Skin Care", "Makeup", "Skin Care", "Makeup", "(none)"]
  with pytest.raises(ValueError, match="no metadata for asin zz"):
    semantic_id_purity.second_level_categories(str(path), ["zz"])


def test_sports_style_text_rewrites_title_and_moves_the_brand_into_the_paths(tmp_path):
  item = {"asin": "a1", "title": "Neutrogena Ultra-Sheer Dry Touch Sunscreen, SPF 30 (3 oz)", "brand": "Neutrogena",
          "categories": [["Beauty", "Skin Care", "Sun"], ["Beauty", "Makeup"]], "price": 9.5}
  out = sports_style_text.sports_style_item(item)
  assert out == {"asin": "a1", "title": "neutrogena ultra sheer dry touch",
                 "categories": [["Beauty", "Neutrogena", "Skin Care", "Sun"], ["Beauty", "Neutrogena", "Makeup"]]}
  assert sports_style_text.sports_style_item({"asin": "b", "title": "X", "brand": "Acme"})["categories"] == [["Acme"]]
  data = tmp_path / "d"
  data.mkdir()
  with gzip.open(data / "sequences.txt.gz", "wt") as f:
    f.write("u1 a1 a1 a1\n")
  with gzip.open(data / "items.jsonl.gz", "wt") as f:
    f.write(json.dumps(item) + "\n")
  assert sports_style_text.rewrite(str(data), str(tmp_path / "out")) == 1
  with gzip.open(tmp_path / "out" / "items.jsonl.gz", "rt") as f:
    assert [json.loads(line) for line in f] == [out]
  assert (tmp_path / "out" / "sequences.txt.gz").read_bytes() == (data / "sequences.txt.gz").read_bytes()
  with gzip.open(data / "items.jsonl.gz", "wt") as f:
    f.write(json.dumps(item) + "\n" + json.dumps({"title": "no asin"}) + "\n")
  with pytest.raises(ValueError, match=r"items.jsonl.gz:2: no 'asin'"):
    sports_style_text.rewrite(str(data), str(tmp_path / "out"))


def _eval_metrics(path, recall10, step=20000, **extra):
  values = {"recall@5": 0.02, "ndcg@5": 0.01, "recall@10": recall10, "ndcg@10": 0.02}
  path.write_text(json.dumps({**values, "step": step, "split": "test", "task": "tiger_sports", **extra}))
  return str(path)


def test_decoding_choices_compares_decodes_of_one_checkpoint_with_the_first(tmp_path):
  ref = _eval_metrics(tmp_path / "a.json", 0.040, num_beams=20, constrained=True)
  wide = _eval_metrics(tmp_path / "b.json", 0.042, num_beams=50, constrained=True,
                       invalid_fraction_at_k={"10": 0.0, "20": 0.0})
  out = tmp_path / "report"
  result = decoding_choices.main(["--title", "t", "--run", f"20 beams={ref}", "--run", f"50 beams={wide}",
                                  "--out", str(out)])
  assert result["change"]["20 beams"]["recall@10"] == 0
  assert abs(result["change"]["50 beams"]["recall@10"] - 0.05) < 1e-12
  text = (tmp_path / "report.md").read_text()
  assert "| 50 beams | 50 | True |" in text and "+5.0%" in text and "0.000%" in text
  other_step = _eval_metrics(tmp_path / "c.json", 0.04, step=30000)
  with pytest.raises(SystemExit, match="labels must be unique"):
    decoding_choices.main(["--title", "t", "--run", f"a={ref}", "--run", f"a={wide}", "--out", str(out)])
  with pytest.raises(ValueError, match="step 30000 differs"):
    decoding_choices.main(["--title", "t", "--run", f"a={ref}", "--run", f"c={other_step}", "--out", str(out)])
