"""The paper's Sec. 4.3 experiments end to end at CPU size: cold start (all five stages), diversity, and the report.

One tiny dataset (60 items in 3 categories, 80 users), clustered embeddings written by the test, an RQ-VAE of
32 codes per level, a 1+1-layer T5 trained for 24 steps; then benchmarks/diversity.py on that model and
experiments/make_report.py over the produced files.
"""
import json
import os
import textwrap

import numpy as np
import pytest

pytest.importorskip("seqio")
pytest.importorskip("matplotlib")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import cold_start as cold_start_script  # noqa: E402
from benchmarks import diversity as diversity_script  # noqa: E402
from experiments import make_report  # noqa: E402
from conftest import TINY_RQVAE_GIN, write_category_walk_dataset, write_clustered_embeddings  # noqa: E402
from tiger_jax.data import cold_start as split_lib  # noqa: E402
from tiger_jax.data import load_dataset  # noqa: E402

TASK = "tiger_e2e_coldstart"
NUM_ITEMS, NUM_USERS = 60, 80
SMALL = dict(emb_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, head_dim=16, mlp_dim=64)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("experiments")
  rng = np.random.default_rng(0)
  data_dir, asins = write_category_walk_dataset(tmp / "data", rng, NUM_ITEMS, NUM_USERS, length_cycle=6,
                                                user_digits=2)
  work = tmp / "work"
  write_clustered_embeddings(work, asins, rng)
  rqvae_gin = tmp / "rqvae_tiny.gin"
  rqvae_gin.write_text(TINY_RQVAE_GIN)
  train_gin = tmp / "small.gin"
  train_gin.write_text(textwrap.dedent("""\
      from __gin__ import dynamic_registration
      from tiger_jax import network
      include 'gin/runs/train.gin'
      include 'gin/models/tiger_t5.gin'
      ACTIVATION_DTYPE = 'float32'
      TRAIN_STEPS = 24
      BATCH_SIZE = 16
      EVAL_BATCH_SIZE = 16
      EVAL_PERIOD = 24
      STATS_PERIOD = 12
      STEPS_PER_DISPATCH = 12
      LENGTH_BUCKETS = [81]
      network.T5Config:
      """) + "".join(f"  {k} = {v}\n" for k, v in SMALL.items()))
  out_dir = tmp / "results"
  common = [f"--data_dir={data_dir}", f"--work_dir={work}", f"--task={TASK}", "--fraction=0.2", "--seed=1",
            f"--out_dir={out_dir}", "--name=cold_start_tiny", "--length_buckets=", "--batch_size=32"]
  cold = cold_start_script.main(common + [f"--rqvae_gin={rqvae_gin}", f"--gin_file={train_gin}"])
  div = diversity_script.main([
      f"--model_dir={work / 'model'}", f"--cache_dir={work / 'cache'}", f"--task={TASK}", f"--data_dir={data_dir}",
      "--temperatures=1,2", "--sample_levels=all;0", "--ks=5,10", "--recall_k=10", "--num_beams=10",
      "--category_temperatures=1,2", "--num_target_categories=2", "--length_buckets=", "--batch_size=32",
      f"--out_dir={out_dir}", "--name=diversity_tiny"])
  report = make_report.make_report(str(out_dir))
  return {"cold": cold, "div": div, "report": report, "out": out_dir, "work": work, "data_dir": data_dir,
          "common": common}


@pytest.mark.slow
def test_cold_start_run_writes_figure5_tables_without_leaking_unseen_items(experiment):
  work, out = experiment["work"], experiment["out"]
  split = split_lib.ColdStartSplit.load(str(work / split_lib.FILENAME))
  assert split == split_lib.choose_unseen_items(load_dataset(experiment["data_dir"]), 0.2, seed=1)
  cache = work / "cache" / TASK
  items = np.load(cache / "items.npz")
  unseen = set(split.unseen_indices(items["asins"].tolist()).tolist())
  tokens = items["item_tokens"]
  # No unseen item in any training or validation example: neither as target nor in the history tokens.
  for name in ("train", "validation"):
    arrays = np.load(cache / f"{name}.npz")
    assert not unseen & set(arrays["target_item"].tolist())
    history = {tuple(row[1 + 4 * j:5 + 4 * j]) for row in arrays["encoder_input_tokens"].tolist()
               for j in range(20)}
    assert not history & {tuple(tokens[i].tolist()) for i in unseen}
  test = np.load(cache / "test.npz")
  assert unseen & set(test["target_item"].tolist()) and len(test["target_item"]) == NUM_USERS
  assert len({tuple(r) for r in tokens.tolist()}) == NUM_ITEMS  # unseen items have IDs, all distinct

  result = experiment["cold"]
  saved = json.loads((out / "cold_start_tiny.json").read_text())
  assert saved["experiment"] == "cold_start" and (out / "cold_start_tiny.png").stat().st_size > 1000
  assert "| K |" in (out / "cold_start_tiny.md").read_text()
  res = saved["results"]
  assert res["num_users"] == {"unseen_targets": int(np.isin(test["target_item"], list(unseen)).sum()),
                              "all": NUM_USERS}
  for method in ("TIGER", "Semantic_KNN"):
    for subset in ("unseen_targets", "all"):
      curve = [res["recall_at_k"][method][subset][str(k)] for k in range(1, 21)]
      assert curve == sorted(curve) and all(0.0 <= v <= 1.0 for v in curve)  # Recall@K grows with K
    # With epsilon = 0 no unseen item is ever shown, so no unseen target is found.
    assert res["recall_vs_epsilon"][method]["unseen_targets"]["0"] == 0.0
  # epsilon = 0.1 rounds down to no unseen item below K = 10 (floor), so TIGER cannot hit unseen targets there.
  assert res["recall_at_k"]["TIGER"]["unseen_targets"]["9"] == 0.0
  assert saved["meta"]["git_revision"] and saved["meta"]["command"].startswith("python -m benchmarks.cold_start")
  assert set(saved["meta"]["stage_seconds"]) == {"split", "ids", "cache", "train", "eval"}
  assert result["diagnostics"]["unseen_items"] == len(unseen)


@pytest.mark.slow
def test_cold_start_stages_are_skipped_or_refused_when_the_split_changes(experiment):
  common = [a for a in experiment["common"] if not a.startswith("--seed")]
  cold_start_script.main(common + ["--stages=split", "--seed=1"])  # same split: kept
  with pytest.raises(SystemExit, match="another split"):
    cold_start_script.main(common + ["--stages=split", "--seed=2"])


@pytest.mark.slow
def test_diversity_run_reports_entropy_recall_and_categories(experiment):
  out = experiment["out"]
  saved = json.loads((out / "diversity_tiny.json").read_text())
  rows = {(r["decoder"], r["sample_levels"], r["temperature"]): r for r in saved["rows"]}
  assert set(rows) == {("beam", "-", None), ("sample", "all", 1.0), ("sample", "all", 2.0),
                       ("sample", "0", 1.0), ("sample", "0", 2.0)}
  for row in rows.values():
    assert 0.0 <= row["entropy@5"] <= np.log(3) + 1e-9  # three categories in the catalogue
    assert 0.0 <= row["recall@10"] <= 1.0 and 1.0 <= row["distinct@10"] <= 10.0
  assert set(saved["top_categories"]) == {"1", "2"}
  assert {v["target_category"] for v in saved["top_categories"]["1"]} <= {"Cat0", "Cat1", "Cat2"}
  assert (out / "diversity_tiny.png").stat().st_size > 1000
  assert "Entropy@5" in (out / "diversity_tiny.md").read_text()


@pytest.mark.slow
def test_report_links_every_produced_table_and_plot(experiment):
  text = open(experiment["report"]).read()
  for name in ("cold_start_tiny.json", "cold_start_tiny.md", "cold_start_tiny.png", "diversity_tiny.json",
               "diversity_tiny.md", "diversity_tiny.png"):
    assert f"]({name})" in text, name
  cold = experiment["cold"]["results"]
  recall = cold["recall_at_k"]["TIGER"]["all"]["10"]
  assert f"{recall:.4f}" in text  # the number comes from the JSON
  assert "Table 2: Semantic ID types" in text and "0.0648" in text  # the paper's constants, attributed
  assert "Entropy@5" in text and ("rises" in text or "does not rise" in text)
  # A run on a machine without matplotlib leaves the PNG to the report, which draws it from the JSON.
  png = experiment["out"] / "cold_start_tiny.png"
  png.unlink()
  make_report.make_report(str(experiment["out"]))
  assert png.stat().st_size > 1000


def test_report_shows_invalid_ids_per_k_beside_the_metrics_and_plots_them(tmp_path):
  """Figure 6 from eval metrics.json files: constrained and unconstrained decodes, every K, the plot."""
  fractions = {str(k): 0.001 * k for k in range(1, 21)}
  (tmp_path / "free_metrics_test.json").write_text(json.dumps(
      {"recall@5": 0.03, "ndcg@5": 0.02, "recall@10": 0.05, "ndcg@10": 0.025, "constrained": False,
       "invalid_fraction_at_k": fractions}))
  (tmp_path / "valid_metrics_test.json").write_text(json.dumps(
      {"recall@5": 0.031, "ndcg@5": 0.021, "recall@10": 0.052, "ndcg@10": 0.026, "constrained": True,
       "invalid_fraction_at_k": {str(k): 0.0 for k in range(1, 21)}}))
  text = open(make_report.make_report(str(tmp_path))).read()
  section = text[text.index("### Figure 6"):text.index("## Other stored results")]
  assert "| [free_metrics_test.json](free_metrics_test.json) | unconstrained | 0.0300 | 0.0200 | 0.0500 | 0.0250 | " \
         "0.0010 | 0.0050 | 0.0100 | 0.0200 |" in section
  assert "| constrained | 0.0310 |" in section
  # Every K of the unconstrained decode (and only that one) in the per-K table.
  assert "| K | free_metrics_test |" in section and "| 17 | 0.01700 |" in section
  assert (tmp_path / "invalid_ids.png").stat().st_size > 0 and "![invalid IDs](invalid_ids.png)" in section
