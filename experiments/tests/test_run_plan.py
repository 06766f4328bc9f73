"""experiments/run_plan.py on the CPU: a tiny plan runs IDs, cache, two jobs side by side, and is collected."""
import json
import os
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest

from conftest import write_clustered_embeddings, write_processed

from experiments import run_plan

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(emb_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, head_dim=16, mlp_dim=64)


@pytest.mark.slow
def test_plan_runs_ids_cache_and_jobs_then_collects(tmp_path):
  rng = np.random.default_rng(0)
  items = [{"asin": f"P{i:02d}", "title": f"product {i}"} for i in range(30)]
  sequences = {f"user{u}": [f"P{(u + 3 * j) % 30:02d}" for j in range(4 + u % 5)] for u in range(40)}
  data_dir = write_processed(tmp_path / "data", sequences, items)
  work = tmp_path / "work"
  write_clustered_embeddings(str(work), [it["asin"] for it in items], rng)
  gin_file = tmp_path / "small.gin"
  gin_file.write_text(textwrap.dedent("""\
      from __gin__ import dynamic_registration
      from tiger_jax import network
      include 'gin/runs/train.gin'
      include 'gin/models/tiger_t5.gin'
      MIXTURE_OR_TASK_NAME = 'tiger_jobstiny'
      ACTIVATION_DTYPE = 'float32'
      TRAIN_STEPS = 12
      BATCH_SIZE = 16
      EVAL_BATCH_SIZE = 16
      EVAL_PERIOD = 6
      STEPS_PER_DISPATCH = 6
      LENGTH_BUCKETS = [81]
      network.T5Config:
      """) + "".join(f"  {k} = {v}\n" for k, v in SMALL.items()))
  refit = ["train/utils.DatasetConfig.split='train+validation'", "train_script.train.eval_metric_fns=[]",
           "train_script.train.best_metric=None"]
  rqvae = ["RQVAEConfig.num_epochs=20", "RQVAEConfig.epochs_per_dispatch=10", "RQVAEConfig.codebook_size=16",
           "RQVAEConfig.batch_size=32", "RQVAEConfig.dead_code_reset_every=0"]
  plan = {"datasets": {"tiny": {"data_dir": data_dir, "work_dir": str(work), "tasks": ["tiger_jobstiny"],
                                "rqvae_gin": "gin/rqvae/quick.gin", "rqvae_bindings": rqvae}},
          "jobs": [{"name": "paper", "dataset": "tiny", "gin_file": str(gin_file),
                    "post": [["-c", "import sys; open(sys.argv[1] + '/post.txt', 'w').write(sys.argv[2])",
                              "{results}", "{model_dir} {cache_dir}"]]},
                   {"name": "refit", "dataset": "tiny_cf", "gin_file": str(gin_file), "bindings": refit,
                    "eval_checkpoint": "latest"},
                   {"name": "orphan", "dataset": "tiny", "gin_file": str(tmp_path / "missing.gin")},
                   {"name": "stranded", "dataset": "no_embeddings", "gin_file": str(gin_file)}]}
  # The refit job trains on IDs of the text embeddings fused with co-occurrence vectors, made in its work dir
  # (Adagrad at 0.1: at the paper's 0.4 the toy's unnormalised text beside unit co-occurrence vectors diverges
  # within 20 epochs and leaves over 16 of the 30 items on one prefix; the real unit-norm inputs do not.)
  plan["datasets"]["tiny_cf"] = dict(plan["datasets"]["tiny"], work_dir=str(tmp_path / "work_cf"),
                                     rqvae_bindings=rqvae + ["RQVAEConfig.learning_rate=0.1"],
                                     collaborative={"text_dir": str(work), "bindings": ["fuse_collaborative.dim=4"]})
  # A dataset whose preparation raises (its embeddings are not there) fails; its job is skipped, not waited for.
  plan["datasets"]["no_embeddings"] = {"data_dir": data_dir, "work_dir": str(tmp_path / "work2"), "tasks": [],
                                       "embeddings_from": str(tmp_path / "nowhere")}
  plan_path = tmp_path / "plan.json"
  plan_path.write_text(json.dumps(plan))
  root, out = tmp_path / "root", tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  subprocess.run([sys.executable, "-m", "experiments.run_plan", f"--plan={plan_path}", f"--root={root}", "--concurrency=2",
                  "--revision=abc1234"], cwd=REPO, env=env, check=True, timeout=900)
  decoded = root / "results" / "beams50_test"  # what a post eval writes under {results}
  decoded.mkdir()
  (decoded / "metrics.json").write_text("{}")
  (decoded / "predictions.jsonl").write_text("{}\n")
  collected = subprocess.run([sys.executable, "-m", "experiments.run_plan", f"--collect={out}", f"--root={root}", "--ship_models=refit",
                              "--ship_cache"],
                             cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=120)

  status = json.load(open(root / "results" / "status.json"))
  assert status["revision"] == "abc1234"
  assert status["datasets"]["tiny"]["stage"] == "ready" and (work / "semantic_ids.npz").exists()
  assert {n: j["stage"] for n, j in status["jobs"].items()} == {"paper": "done", "refit": "done",
                                                                "orphan": "failed",
                                                                "stranded": "skipped: dataset failed"}
  assert status["datasets"]["no_embeddings"]["stage"] == "failed"
  assert "nowhere" in status["datasets"]["no_embeddings"]["error"]
  with tarfile.open(out / "results.tgz") as tar:
    names = set(tar.getnames())
  for job in ("paper", "refit"):
    assert f"results/{job}_eval_test_metrics.json" in names and f"results/{job}_metrics.jsonl" in names
  # The IDs travel with the results (a later call carries them); the post command got its paths.
  assert "results/tiny_semantic_ids.npz" in names
  # Predictions stay behind (they once made results.tgz too large to come back), their metrics do not.
  assert "results/beams50_test/metrics.json" in names and "results/beams50_test/predictions.jsonl" not in names
  assert "results/beams50_test/predictions.jsonl" in collected.stdout
  assert {"results/tiny_cf_semantic_ids.npz", "results/tiny_cf_embeddings.json"} <= names
  assert np.load(tmp_path / "work_cf" / "embeddings.npy").shape == (30, 16 + 4)
  assert json.load(open(root / "results" / "tiny_cf_embeddings.json"))["collaborative"]["dim"] == 4
  assert status["jobs"]["paper"]["post0_rc"] == 0
  assert (root / "results" / "post.txt").read_text() == f"{root / 'models' / 'paper'} {work / 'cache'}"
  with tarfile.open(out / "jaxcache.tgz.00") as tar:  # the compilation cache the jobs wrote
    assert any(n.startswith("jaxcache/") for n in tar.getnames())
  paper = json.load(open(root / "results" / "paper_eval_test_metrics.json"))
  refit_metrics = json.load(open(root / "results" / "refit_eval_test_metrics.json"))
  assert 0 <= paper["recall@10"] <= 1 and 0 <= refit_metrics["recall@10"] <= 1
  # The refit job trained on train + validation rows and computed no validation metrics.
  refit_log = open(root / "results" / "refit_train.log").read()
  paper_log = open(root / "results" / "paper_train.log").read()
  n_train = int(paper_log.split("train split: ")[1].split()[0])
  assert int(refit_log.split("train split: ")[1].split()[0]) == n_train + 40  # one validation row per user
  assert not any("validation/ndcg@10" in line for line in open(root / "results" / "refit_metrics.jsonl"))
  with open(out / "model_refit.tgz.00", "rb") as f:
    assert f.read(2) == b"\x1f\x8b"  # a gzip stream, chunked


def test_jobs_start_in_plan_order_and_a_waiting_job_keeps_its_slot():
  jobs = [{"name": f"j{i}", "dataset": d} for i, d in enumerate(["slow", "fast", "fast", "broken", "fast"])]
  states = {"slow": "waiting", "fast": "ready", "broken": "failed"}.get

  def plan(num_running, concurrency):
    return [(a, s["name"]) for a, s in run_plan.next_actions(jobs, num_running, concurrency, states)]

  # Three slots: j0 waits for its IDs and holds one, j1 and j2 take the other two; j3, j4 wait their turn.
  assert plan(0, 3) == [("start", "j1"), ("start", "j2")]
  # A failed dataset's job is dropped, whatever the slots; a running job's slot is not free.
  assert plan(1, 4) == [("start", "j1"), ("start", "j2")]
  assert plan(0, 5) == [("start", "j1"), ("start", "j2"), ("skip", "j3"), ("start", "j4")]
  # One slot: the first job in the plan keeps it even while it waits (plan order is priority order).
  assert plan(0, 1) == []
  assert plan(2, 2) == []
