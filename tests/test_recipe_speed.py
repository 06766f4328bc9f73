"""benchmarks/recipe_speed.py: which commands a recipe runs, the stage bookkeeping, and a tiny recipe cold and warm."""
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import TINY_RQVAE_GIN, write_clustered_embeddings, write_processed

from benchmarks import recipe_speed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_recipes_name_the_datasets_gin_files(tmp_path):
  assert recipe_speed.recipe_gin_files("beauty", ["paper"]) == {"paper": "gin/beauty.gin"}
  other = tmp_path / "x.gin"
  other.write_text("")
  assert recipe_speed.recipe_gin_files("beauty", [f"mine={other}"]) == {"mine": str(other)}
  with pytest.raises(ValueError, match="unknown recipe 'fast'"):
    recipe_speed.recipe_gin_files("beauty", ["fast"])
  with pytest.raises(FileNotFoundError, match="gin/nosuch_tuned.gin"):
    recipe_speed.recipe_gin_files("nosuch", ["tuned"])
  assert recipe_speed.recipe_gin_files("nosuch", ["any"]) == {"any": "gin/tuned.gin"}


def test_the_select_then_refit_recipe_is_one_stage_that_reports_its_test_metrics(tmp_path):
  commands = dict(recipe_speed.stage_commands(
      dataset="toys", data_dir="/d", work_dir="/w", gin_file="gin/tuned.gin", rqvae_gin=None,
      compilation_cache_dir="/c", train_steps=500, embeddings_dir="/e"))
  assert list(commands) == list(recipe_speed.SELECT_REFIT_STAGES)
  assert commands["select_refit"][1:3] == ["-m", "tiger_jax.select_refit"]
  assert "--gin.TRAIN_STEPS=500" in commands["select_refit"] and "--compilation_cache_dir=/c" in commands["select_refit"]
  assert "--gin.MIXTURE_OR_TASK_NAME='tiger_toys'" in commands["select_refit"]
  model_dir = tmp_path / "model"
  (model_dir / "test").mkdir(parents=True)
  metrics = {"recall@5": 0.05, "ndcg@5": 0.03, "recall@10": 0.08, "ndcg@10": 0.04, "num_users": 9, "step": 6,
             "checkpoint": "latest", "decode_seconds": 1.0, "seconds": 2.0}
  (model_dir / "test" / "metrics.json").write_text(json.dumps(metrics))
  log = tmp_path / "select_refit.log"
  log.write_text("trained steps 0..6 in 3s: 2.0 steps/s while training (500.00 ms/step); 1s compiling, "
                 "evaluating and checkpointing\n")
  results = [recipe_speed.StageResult(name, ["x"], 1.0, 0, str(log)) for name in recipe_speed.SELECT_REFIT_STAGES]
  run = recipe_speed.summarise(results, str(model_dir), len(results))
  assert run["complete"] and run["test"]["ndcg@10"] == 0.04 and run["train"]["ms_per_step"] == 500.0


def test_stage_commands_share_one_compilation_cache_and_the_work_dir():
  commands = dict(recipe_speed.stage_commands(
      dataset="beauty", data_dir="/d", work_dir="/w", gin_file="gin/beauty.gin", rqvae_gin="gin/rqvae/paper.gin",
      compilation_cache_dir="/c", train_steps=500, embeddings_dir="/e", bindings=["EVAL_PERIOD=250"],
      eval_bindings=["NUM_BEAMS=30"]))
  assert list(commands) == list(recipe_speed.STAGES)
  assert commands["embed"] is None  # embeddings given: copied, not computed
  for stage in ("ids", "train", "eval"):
    assert "--compilation_cache_dir=/c" in commands[stage]
  assert "--backend=numpy" in commands["cache"] and "--semantic_ids=/w/semantic_ids.npz" in commands["cache"]
  assert "--gin.TRAIN_STEPS=500" in commands["train"] and "--gin.EVAL_PERIOD=250" in commands["train"]
  assert "--gin.MODEL_DIR='/w/model'" in commands["eval"] and "--gin.NUM_BEAMS=30" in commands["eval"]
  assert "--gin.NUM_BEAMS=30" not in commands["train"]
  assert "--gin_file=gin/runs/eval.gin" in commands["eval"]


def test_run_stages_times_each_and_stops_at_the_first_failure(tmp_path):
  py = sys.executable
  commands = [("ids", [py, "-c", "print('made ids')"]),
              ("cache", [py, "-c", "import sys; print('broken'); sys.exit(3)"]),
              ("train", [py, "-c", "open('never', 'w')"])]
  results = recipe_speed.run_stages(commands, str(tmp_path / "w"), str(tmp_path / "logs"))
  assert [(r.name, r.returncode) for r in results] == [("ids", 0), ("cache", 3)]
  assert all(r.seconds >= 0 for r in results)
  assert open(results[1].log).read().strip() == "broken"
  summary = recipe_speed.summarise(results, str(tmp_path / "w" / "model"))
  assert not summary["complete"] and set(summary["stages"]) == {"ids", "cache"}
  assert summary["total_seconds"] == pytest.approx(sum(r.seconds for r in results), abs=0.2)


def test_a_stopped_benchmark_stops_its_running_stage(tmp_path):
  marker = tmp_path / "stage_pid"
  script = textwrap.dedent(f"""\
      import sys, time
      from benchmarks import recipe_speed
      stage = [sys.executable, "-c", "import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(600)"]
      recipe_speed.main.__globals__["signal"].signal(15, lambda s, f: sys.exit(143))
      recipe_speed.run_stages([("train", stage)], {str(tmp_path / 'w')!r}, {str(tmp_path / 'logs')!r})
      """)
  bench = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
  deadline = time.time() + 60
  while not marker.exists() or not marker.read_text():
    assert time.time() < deadline and bench.poll() is None
    time.sleep(0.1)
  stage_pid = int(marker.read_text())
  bench.terminate()
  assert bench.wait(timeout=60) == 143
  with pytest.raises(ProcessLookupError):
    for _ in range(100):  # the stage is gone (reaped by the benchmark before it exited)
      os.kill(stage_pid, 0)
      time.sleep(0.1)


def test_parse_train_log_reads_what_the_trainer_logs():
  text = textwrap.dedent("""\
      2026-12-05 10:03:26,368 INFO tiger_jax.train] compiled the 100-step loop for encoder length 33 in 61.7s
      2026-12-05 10:03:38,635 INFO tiger_jax.train] compiled the 100-step loop for encoder length 17 in 73.9s
      2026-12-05 10:04:00,000 INFO tiger_jax.train] compiled the fixed 100-step loop for encoder length 17 in 5.0s
      2026-12-05 10:05:21,711 INFO tiger_jax.train] eval at step 40 (56.6s): validation/loss 3.818 validation/ndcg@10 0.0312 | best
      2026-12-05 10:05:23,853 INFO tiger_jax.train] trained steps 0..40 in 2m59s: 0.9 steps/s while training (1168.62 ms/step); 2m12s compiling, evaluating and checkpointing
      2026-12-05 10:05:23,854 INFO tiger_jax.train] ms/step by encoder length: 17: 905.10 (20 steps), 33: 1370.00 (16 steps)
      """)
  parsed = recipe_speed.parse_train_log(text)
  assert parsed["ms_per_step_by_length"] == {17: 905.1, 33: 1370.0}
  assert parsed["loop_compile_seconds"] == {33: 61.7, 17: pytest.approx(78.9)}
  assert parsed["steps"] == 40 and parsed["ms_per_step"] == 1168.62 and parsed["paused"] == "2m12s"
  assert parsed["evals"] == [{"step": 40, "seconds": 56.6, "validation_ndcg@10": 0.0312}]


def test_parse_ids_log_reads_the_rqvae_loop_and_the_ids_statistics():
  text = textwrap.dedent("""\
      epoch 100/20000 loss 0.646313 recon 0.590246 rq 0.056067 usage [0.352, 0.695, 0.855] (9.5s)
      epoch 20000/20000 loss 0.699409 recon 0.287643 rq 0.411766 usage [1.0, 1.0, 1.0] (52.5s)
      wrote /w/paper_cold/semantic_ids.npz: {"codebook_usage": [1.0, 1.0, 1.0, 0.07421875], "unique_prefixes": 11225, "largest_bucket": 19, "items_in_collisions": 1532, "reconstruction_loss": 0.287}
      """)
  parsed = recipe_speed.parse_ids_log(text)
  assert parsed["epochs"] == 20000 and parsed["loop_seconds"] == 52.5
  assert parsed["unique_prefixes"] == 11225 and parsed["codebook_usage"] == [1.0, 1.0, 1.0, 0.07421875]
  assert recipe_speed.parse_ids_log("no such lines") == {}


def test_parse_beam_search_sources_reads_what_eval_logs():
  text = textwrap.dedent("""\
      2026-12-06 18:45:17,010 INFO tiger_jax.eval] compiled the beam search for encoder length 49 (traced program from disk)
      2026-12-06 18:45:17,019 INFO tiger_jax.eval] compiled the beam search for encoder length 81 (traced and stored)
      2026-12-06 18:45:18,000 INFO tiger_jax.eval] tiger_beauty/test step 1000: recall@5 0.0110
      """)
  assert recipe_speed.parse_beam_search_sources(text) == {49: "disk", 81: "traced"}
  assert recipe_speed.parse_beam_search_sources("no such lines") == {}


def test_the_table_gives_each_run_its_stages_step_time_and_validation(capsys):
  evals = [{"step": 10000, "seconds": 38.6, "validation_ndcg@10": 0.0385},
           {"step": 20000, "seconds": 0.8, "validation_ndcg@10": 0.04381}]
  stages = {name: {"seconds": 10.0 * i, "returncode": 0, "given": name == "embed"}
            for i, name in enumerate(recipe_speed.STAGES)}
  run = {"stages": stages, "total_seconds": 100.0,
         "train": {"steps": 20000, "ms_per_step": 5.01, "paused": "1m58s", "loop_compile_seconds": {17: 77.6},
                   "evals": evals, "ms_per_step_by_length": {81: 6.9, 17: 3.12}},
         "ids": {"epochs": 20000, "loop_seconds": 43.2, "codebook_usage": [1.0, 1.0, 1.0, 0.07],
                 "unique_prefixes": 11185, "largest_bucket": 19, "items_in_collisions": 1619},
         "test": {"ndcg@10": 0.0315, "num_users": 22363, "seconds": 13.55,
                  "beam_search": {17: "disk", 33: "disk", 81: "traced"}}}
  recipe_speed.print_table({"dataset": "beauty", "device_kind": "card", "jax": "0", "git_revision": "abc",
                            "gin_files": {"paper": "gin/beauty.gin"}, "recipes": {"paper": {"cold": run}}})
  out = capsys.readouterr().out
  assert "20000 steps at 5.01 ms/step (length 17: 3.12, length 81: 6.90), 1m58s compiling" in out
  assert "took 77.6 s" in out
  assert ("RQ-VAE 20000 epochs in 43.2 s (first compile included); codebook usage [1.0, 1.0, 1.0, 0.07], 11185 "
          "unique prefixes, largest bucket 19, 1619 items in collisions") in out
  assert "test ndcg@10 0.0315 (22363 users, 13.55 s, beam search of 2/3 lengths from disk)" in out
  assert "validation ndcg@10 0.0438 at step 20000; the first validation took 38.6 s, the last 0.8 s" in out
  rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ") and line.split()}
  assert rows["embed"] == ["given"] and rows["train"] == ["30.0", "s"] and rows["total"] == ["100.0", "s"]


def test_recipe_train_steps_follows_includes(tmp_path):
  base = tmp_path / "base.gin"
  base.write_text("TRAIN_STEPS = 200000\n")
  refit = tmp_path / "refit.gin"
  refit.write_text(f"include '{base}'\nTRAIN_STEPS = 20000\n")
  plain = tmp_path / "plain.gin"
  plain.write_text(f"include '{base}'\n")
  assert recipe_speed.recipe_train_steps(str(refit)) == 20000
  assert recipe_speed.recipe_train_steps(str(plain)) == 200000
  assert recipe_speed.recipe_train_steps("gin/beauty.gin") == 200000


@pytest.mark.slow
def test_tiny_recipe_cold_then_warm(tmp_path):
  rng = np.random.default_rng(0)
  items = [{"asin": f"P{i:02d}", "title": f"product {i}"} for i in range(40)]
  sequences = {f"user{u}": [f"P{(u + 3 * j) % 40:02d}" for j in range(4 + u % 5)] for u in range(48)}
  data_dir = write_processed(tmp_path / "data", sequences, items)
  embeddings = tmp_path / "embeddings"
  write_clustered_embeddings(str(embeddings), [it["asin"] for it in items], rng)
  rqvae_gin = tmp_path / "rqvae.gin"
  rqvae_gin.write_text(TINY_RQVAE_GIN)
  gin_file = tmp_path / "tiny.gin"
  gin_file.write_text(textwrap.dedent("""\
      include 'tests/tiny_t5.gin'
      MIXTURE_OR_TASK_NAME = 'tiger_recipetiny'
      TRAIN_STEPS = 8
      BATCH_SIZE = 16
      EVAL_BATCH_SIZE = 16
      EVAL_PERIOD = 4
      """))
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  subprocess.run([sys.executable, "-m", "benchmarks.recipe_speed", "--dataset=recipetiny",
                  f"--data_dir={data_dir}", f"--out_dir={out}", f"--recipes=tiny={gin_file}",
                  f"--rqvae_gin={rqvae_gin}", f"--embeddings_dir={embeddings}", "--train_steps=4"],
                 cwd=REPO, env=env, check=True, timeout=900)
  report = json.load(open(out / "recipe_speed.json"))
  runs = report["recipes"]["tiny"]
  assert set(runs) == {"cold", "warm"}
  for cache in ("cold", "warm"):
    run = runs[cache]
    assert run["complete"], run["stages"]
    assert list(run["stages"]) == list(recipe_speed.STAGES) and run["stages"]["embed"]["given"]
    assert run["train"]["steps"] == 4 and run["train"]["evals"][-1]["step"] == 4
    assert run["test"]["num_users"] == 48 and run["test"]["checkpoint"] == "best"
    assert run["recipe_train_steps"] == 8
  cache_dir = out / "work" / "xla_cache"
  assert os.listdir(cache_dir)  # the cold run filled it, the warm run read it
  assert all(f"--compilation_cache_dir={cache_dir}" in runs["warm"]["stages"][s]["command"]
             for s in ("ids", "train", "eval"))
