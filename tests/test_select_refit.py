"""Select-then-refit (tiger_jax/select_refit.py): the rule, the record phase 2 reads, test read last, resuming.

The procedure runs in-process on a tiny cached task (tests/conftest.py's write_task_cache) with a 1+1-layer T5
trained for 12 steps per phase.
"""
import dataclasses
import json
import logging
import os
import shutil
import textwrap

import gin
import numpy as np
import pytest

from conftest import write_task_cache
from tiger_jax import checkpoints
from tiger_jax import gin_utils
from tiger_jax import metrics as metrics_lib
from tiger_jax import select_refit
from tiger_jax import train as train_lib
from tiger_jax import utils

TASK = "tiny_select"
TINY = dict(emb_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, head_dim=8, mlp_dim=32)
Rule = select_refit.SelectionRule


# ----------------------------------------------------------------------------------------------------------
# The selection rule and the curve reader.


def test_rule_takes_the_best_and_breaks_ties_by_step_then_candidate():
  curves = {"a": [(2, 0.10), (4, 0.30), (6, 0.20)], "b": [(2, 0.25), (4, 0.29)]}
  assert Rule().choose(curves) == {"candidate": "a", "step": 4, "value": 0.30, "best_value": 0.30}
  # An exact tie goes to the earlier step, whichever candidate holds it ...
  tied = {"a": [(2, 0.1), (6, 0.3)], "b": [(4, 0.3), (8, 0.3)]}
  assert Rule().choose(tied)["candidate"] == "b" and Rule().choose(tied)["step"] == 4
  # ... and at the same step to the candidate listed first.
  same_step = {"wide": [(4, 0.3)], "narrow": [(4, 0.3)]}
  assert Rule().choose(same_step)["candidate"] == "wide"
  assert Rule().choose(dict(reversed(list(same_step.items()))))["candidate"] == "narrow"


def test_rule_mode_tolerance_and_bad_values():
  curves = {"a": [(2, 1.5), (4, 1.2), (6, 1.25)]}
  assert Rule(metric="validation/loss", mode="min").choose(curves)["step"] == 4
  # Within the tolerance of the best, the earliest step wins.
  assert Rule(tolerance=0.01).choose({"a": [(2, 0.295), (4, 0.30)]})["step"] == 2
  assert Rule(tolerance=0.001).choose({"a": [(2, 0.295), (4, 0.30)]})["step"] == 4
  assert Rule(metric="validation/loss", mode="min", tolerance=0.06).choose(curves)["step"] == 4
  assert Rule(metric="validation/loss", mode="min", tolerance=0.31).choose(curves)["step"] == 2
  assert Rule().choose({"a": [(2, float("nan")), (4, 0.1)]})["step"] == 4  # non-finite values never win
  with pytest.raises(ValueError, match="no finite"):
    Rule().choose({"a": [(2, float("nan"))], "b": []})
  with pytest.raises(ValueError, match="mode"):
    Rule(mode="best")
  with pytest.raises(ValueError, match="tolerance"):
    Rule(tolerance=-1)


def test_candidates_are_checked():
  assert select_refit.SelectRefitConfig().candidate_bindings() == {"default": []}
  with pytest.raises(ValueError, match="list of gin binding strings"):
    select_refit.SelectRefitConfig(candidates={"a": "network.T5Config.emb_dim = 8"}).candidate_bindings()
  with pytest.raises(ValueError, match="directory name"):
    select_refit.SelectRefitConfig(candidates={"../up": []}).candidate_bindings()
  with pytest.raises(ValueError, match="empty"):
    select_refit.SelectRefitConfig(candidates={}).candidate_bindings()


def test_validation_curve_keeps_the_last_row_per_step(tmp_path):
  rows = [{"step": 4, "train/loss": 2.0}, {"step": 4, "validation/ndcg@10": 0.1, "validation/loss": 3.0},
          {"step": 8, "validation/ndcg@10": 0.2}, {"step": 4, "validation/ndcg@10": 0.15},  # a resumed rerun
          {"step": 12, "validation/ndcg@10": 0.3}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  curve = select_refit.validation_curve(str(tmp_path), "validation/ndcg@10", last_step=8)
  assert curve == [{"step": 4, "validation/ndcg@10": 0.15}, {"step": 8, "validation/ndcg@10": 0.2}]
  (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n{oops\n")
  with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not valid JSON"):
    select_refit.validation_curve(str(tmp_path), "validation/ndcg@10")


# ----------------------------------------------------------------------------------------------------------
# The procedure on a tiny task.


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("select_cache"))
  write_task_cache(root, TASK)
  return root


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config()


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
  """One persistent XLA cache for the module: every phase and test after the first reuses compiled loops."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  saved = {name: getattr(jax.config, name) for name in names}
  for name, value in zip(names, (str(tmp_path_factory.mktemp("xla_cache")), 0.0, 0)):
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _gin_file(tmp_path, cache_dir, extra=""):
  path = tmp_path / "tiny_select.gin"
  path.write_text(textwrap.dedent(f"""\
      from __gin__ import dynamic_registration
      from tiger_jax import network
      from tiger_jax import select_refit
      from tiger_jax import utils
      include 'gin/runs/train.gin'
      include 'gin/models/tiger_t5.gin'
      MIXTURE_OR_TASK_NAME = '{TASK}'
      TASK_CACHE_DIR = '{cache_dir}'
      ACTIVATION_DTYPE = 'float32'
      TRAIN_STEPS = 12
      BATCH_SIZE = 8
      EVAL_BATCH_SIZE = 16
      EVAL_PERIOD = 4
      STATS_PERIOD = 4
      STEPS_PER_DISPATCH = 4
      LENGTH_BUCKETS = [81]
      select_refit.SelectRefitConfig.rule = @select_refit.SelectionRule()
      select_refit.SelectionRule.metric = 'validation/ndcg@10'
      network.T5Config:
      """) + "".join(f"  {k} = {v}\n" for k, v in TINY.items()) + textwrap.dedent(extra))
  return str(path)


def _flags(gin_file, model_dir, *bindings, until="test"):
  flags = gin_utils.parse_flags([f"--gin_file={gin_file}", f'--gin.MODEL_DIR="{model_dir}"', *bindings])
  flags.until = until
  return flags


def _only(flags, names):
  flags.only_candidates = names.split(",")
  return flags


@pytest.fixture
def recorded_reads(monkeypatch):
  """Every split read through utils.get_dataset_arrays, with the phases finished at that moment."""
  reads = []
  real = utils.get_dataset_arrays

  def recording(cfg, *args, **kwargs):
    root = recording.root
    reads.append((cfg.split, os.path.exists(os.path.join(root, "selection.json")),
                  os.path.exists(os.path.join(root, "refit", "done.json"))))
    return real(cfg, *args, **kwargs)

  recording.root = None
  monkeypatch.setattr(utils, "get_dataset_arrays", recording)
  return reads, recording


def _latest_step(model_dir):
  return max(int(s) for s in os.listdir(os.path.join(model_dir, "checkpoints")) if s.isdigit())


def test_select_refit_test_end_to_end(tmp_path, cache_dir, recorded_reads):
  reads, recorder = recorded_reads
  root = str(tmp_path / "run")
  recorder.root = root
  gin_file = _gin_file(tmp_path, cache_dir)
  report = select_refit.run_procedure(_flags(gin_file, root))
  assert [report[p]["status"] for p in ("select", "refit", "test")] == ["ran", "ran", "ran"]

  # Phase 1: the choice is the rule applied to the curve the trainer logged.
  record = json.load(open(os.path.join(root, "selection.json")))
  logged = [json.loads(line) for line in open(os.path.join(root, "select", "default", "metrics.jsonl"))]
  curve = [(r["step"], r["validation/ndcg@10"]) for r in logged if "validation/ndcg@10" in r]
  assert [s for s, _ in curve] == [4, 8, 12]
  best = max(v for _, v in curve)
  assert record["refit_steps"] == record["chosen"]["step"] == min(s for s, v in curve if v == best)
  assert record["rule"] == {"metric": "validation/ndcg@10", "mode": "max", "tolerance": 0.0}
  assert [row["step"] for row in record["runs"]["default"]["curve"]] == [4, 8, 12]

  # Phase 2: train + validation, no validation metrics, exactly the chosen steps.
  refit = os.path.join(root, "refit")
  assert "train/utils.DatasetConfig.split = 'train+validation'" in open(os.path.join(refit, "config.gin")).read()
  assert _latest_step(refit) == record["refit_steps"]
  refit_rows = [json.loads(line) for line in open(os.path.join(refit, "metrics.jsonl"))]
  assert refit_rows and not any(k.startswith("validation/") for r in refit_rows for k in r)
  assert max(r["step"] for r in refit_rows) == record["refit_steps"]

  # Phase 3: that checkpoint on test; the test split was read only after the refit had finished.
  found = json.load(open(os.path.join(root, "test", "metrics.json")))
  assert found["split"] == "test" and found["step"] == record["refit_steps"] and found["checkpoint"] == "latest"
  assert found["num_users"] == 40
  test_reads = [r for r in reads if "test" in r[0].split("+")]
  assert test_reads and all(after_select and after_refit for _, after_select, after_refit in test_reads)
  assert {r[0] for r in reads if not r[2]} == {"train", "validation", "train+validation"}
  # ... and after the chosen phase-1 params were decoded on validation (right after the selection), for a
  # hybrid to be weighed on.
  validation = json.load(open(os.path.join(root, "validation", "metrics.json")))
  assert validation["split"] == "validation" and validation["step"] == record["chosen"]["step"]
  assert validation["checkpoint"] == "best"
  assert validation["ndcg@10"] == pytest.approx(record["chosen"]["value"], abs=1e-6)
  splits = [r[0] for r in reads]
  assert max(i for i, s in enumerate(splits) if s == "validation") < splits.index("test")
  assert len(open(os.path.join(root, "validation", "predictions.jsonl")).readlines()) == validation["num_users"]

  # A rerun redoes nothing and reads nothing.
  reads.clear()
  again = select_refit.run_procedure(_flags(gin_file, root))
  assert [again[p]["status"] for p in ("select", "refit", "validation", "test")] == ["done before"] * 4
  assert reads == []
  # A finished selection made by another rule is refused, not silently reused.
  with pytest.raises(ValueError, match=r"selection\.json: its rule"):
    select_refit.run_procedure(_flags(gin_file, root, "--gin.select_refit.SelectionRule.metric='validation/ndcg@5'"))


def test_refit_reads_the_step_and_candidate_from_the_record(tmp_path, cache_dir):
  gin_file = _gin_file(tmp_path, cache_dir, """\
      select_refit.SelectRefitConfig.candidates = {
          'narrow': ['network.T5Config.mlp_dim = 32'], 'wide': ['network.T5Config.mlp_dim = 48']}
      LENGTH_BUCKETS = [17, 81]
      """)
  root = str(tmp_path / "run")
  # One process per candidate: each trains its own and stops; the run without the flag selects.
  with pytest.raises(ValueError, match=r"--only_candidates: \['medium'\] are not candidates"):
    select_refit.run_procedure(_only(_flags(gin_file, root), "medium"))
  report = select_refit.run_procedure(_only(_flags(gin_file, root), "wide"))
  assert report["select"] == {"status": "partial", "candidates": ["wide"]} and "refit" not in report
  assert os.listdir(os.path.join(root, "select")) == ["wide"]
  assert not os.path.exists(os.path.join(root, "selection.json"))
  wide_done = open(os.path.join(root, "select", "wide", "done.json")).read()
  report = select_refit.run_procedure(_flags(gin_file, root, until="select"))
  assert report["select"]["status"] == "ran" and "refit" not in report
  assert sorted(os.listdir(os.path.join(root, "select"))) == ["narrow", "wide"]
  assert open(os.path.join(root, "select", "wide", "done.json")).read() == wide_done  # not trained again
  assert not os.path.exists(os.path.join(root, "refit"))
  path = os.path.join(root, "selection.json")
  record = json.load(open(path))
  assert set(record["runs"]) == {"narrow", "wide"}
  assert report["validation"]["status"] == "ran" and report["validation"]["metrics"]["step"] == record["chosen"]["step"]
  # A run refitting this choice (another seed) takes these validation predictions as they are.
  seed2 = str(tmp_path / "seed2")
  report = select_refit.run_procedure(_flags(gin_file, seed2, f"--gin.select_refit.SelectRefitConfig.selection_from="
                                             f"'{root}'", until="select"))
  assert report["validation"]["status"] == "copied"
  assert open(os.path.join(seed2, "validation", "predictions.jsonl")).read() == open(
      os.path.join(root, "validation", "predictions.jsonl")).read()
  # Each candidate's run records its batch chunking (partial chunks, the default); a record without it (from
  # before it was kept) is answered by the candidate's checkpoints, and by nothing where there are none.
  assert all(run["partial_chunks"] is True for run in record["runs"].values())
  legacy = json.loads(json.dumps(record))
  del legacy["runs"][legacy["chosen"]["candidate"]]["partial_chunks"]
  assert select_refit.candidate_chunking(legacy, root) is True
  assert select_refit.candidate_chunking(legacy, str(tmp_path / "elsewhere")) is None
  # Edit the record: another candidate, a step count no gin file names and no evaluation used, and full chunks:
  # the refit trains on the chunking the record says its candidate was selected with, not the configured one.
  other = "wide" if record["chosen"]["candidate"] == "narrow" else "narrow"
  record["chosen"]["candidate"], record["refit_steps"] = other, 6
  record["runs"][other]["partial_chunks"] = False
  with open(path, "w") as f:
    json.dump(record, f)
  report = select_refit.run_procedure(_flags(gin_file, root, until="refit"))
  assert report["refit"] == {"status": "ran", "steps": 6, "candidate": other, "start_step": 0}
  assert _latest_step(os.path.join(root, "refit")) == 6
  assert "partial_chunks" not in checkpoints.latest_meta(os.path.join(root, "refit"))["schedule"]
  params, _ = checkpoints.restore_params(os.path.join(root, "refit"), "latest")
  mlp = params["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]
  assert mlp.shape[-1] == {"narrow": 32, "wide": 48}[other]
  # Once refit, the record cannot change under it.
  record["refit_steps"] = 7
  with open(path, "w") as f:
    json.dump(record, f)
  with pytest.raises(ValueError, match="refit finished as"):
    select_refit.run_procedure(_flags(gin_file, root, until="refit"))
  # Another run (say another seed) can refit this run's choice without a phase 1 of its own.
  record["refit_steps"] = 6
  with open(path, "w") as f:
    json.dump(record, f)
  seed1 = str(tmp_path / "seed1")
  report = select_refit.run_procedure(_flags(gin_file, seed1, "--gin.RANDOM_SEED=1",
                                             f"--gin.select_refit.SelectRefitConfig.selection_from='{root}'",
                                             until="select"))
  assert report["select"]["status"] == "copied" and not os.path.exists(os.path.join(seed1, "select"))
  copied = json.load(open(os.path.join(seed1, "selection.json")))
  assert copied["refit_steps"] == 6 and copied["chosen"]["candidate"] == other
  assert copied["selection_from"] == os.path.abspath(path)
  # Seed 0's validation predictions are of the choice before the edit: not copied.
  assert report["validation"]["status"] != "copied"


def test_seed_summary_is_the_mean_and_standard_error_per_metric():
  per_seed = {0: {"recall@5": 0.1, "ndcg@5": 0.05, "recall@10": 0.2, "ndcg@10": 0.07, "step": 6},
              2: {"recall@5": 0.3, "ndcg@5": 0.05, "recall@10": 0.2, "ndcg@10": 0.09, "step": 6}}
  summary = select_refit.summarize_seeds(per_seed)
  assert summary["seeds"] == [0, 2] and set(summary["test"]["2"]) == set(select_refit.TEST_METRICS)
  assert summary["mean"]["recall@5"] == pytest.approx(0.2) and summary["mean"]["ndcg@10"] == pytest.approx(0.08)
  # Sample standard deviation over sqrt(n): |0.3 - 0.1| / sqrt(2) / sqrt(2) = 0.1.
  assert summary["stderr"]["recall@5"] == pytest.approx(0.1) and summary["stderr"]["ndcg@5"] == 0.0
  one_seed = select_refit.summarize_seeds({3: per_seed[0]})
  assert one_seed["stderr"]["recall@5"] is None
  assert select_refit.format_seed_summary(summary).startswith("recall@5 0.2000 +- 0.1000 ndcg@5 0.0500 +- 0.0000")
  assert select_refit.format_seed_summary(one_seed) == "recall@5 0.1000 ndcg@5 0.0500 recall@10 0.2000 ndcg@10 0.0700"


def test_seeds_select_once_then_refit_that_choice_per_seed(tmp_path, cache_dir, caplog):
  caplog.set_level(logging.INFO, logger="tiger_jax.select_refit")
  gin_file = _gin_file(tmp_path, cache_dir)
  root = str(tmp_path / "run")
  with pytest.raises(ValueError, match="distinct"):
    select_refit.run_seeds(_flags(gin_file, root), [1, 1])
  reports = select_refit.run_seeds(_flags(gin_file, root), [0, 5])
  first, other = select_refit.seed_dir(root, 0), select_refit.seed_dir(root, 5)
  assert reports[0]["select"]["status"] == "ran" and reports[5]["select"]["status"] == "copied"
  assert not os.path.exists(os.path.join(other, "select"))  # no phase 1 of its own
  chosen = json.load(open(os.path.join(first, "selection.json")))
  copied = json.load(open(os.path.join(other, "selection.json")))
  assert copied["selection_from"] == os.path.abspath(os.path.join(first, "selection.json"))
  assert copied["chosen"] == chosen["chosen"] and copied["refit_steps"] == chosen["refit_steps"]
  assert reports[5]["validation"]["status"] == "copied"  # the hybrid of every seed is weighed on one choice
  refits = [json.load(open(os.path.join(d, "refit", "done.json"))) for d in (first, other)]
  assert [r["seed"] for r in refits] == [0, 5] and refits[0]["steps"] == refits[1]["steps"]
  summary = json.load(open(os.path.join(root, select_refit.SEEDS_FILE)))
  tests = [json.load(open(os.path.join(d, "test", "metrics.json"))) for d in (first, other)]
  assert summary["seeds"] == [0, 5] and summary["selection_from"] == first
  for key in select_refit.TEST_METRICS:
    assert summary["mean"][key] == pytest.approx((tests[0][key] + tests[1][key]) / 2)
  # The log alone holds every seed's test metrics beside the summary.
  for seed, test in zip((0, 5), tests):
    assert f"seed {seed} test: {metrics_lib.format_metrics(test)}" in caplog.text
  # Rerunning redoes nothing and writes the same summary.
  again = select_refit.run_seeds(_flags(gin_file, root), [0, 5])
  assert again[0]["test"]["status"] == again[5]["test"]["status"] == "done before"
  assert again["summary"]["mean"] == summary["mean"]


def test_interrupted_phases_resume_where_they_stopped_and_test_stays_unread(tmp_path, cache_dir, monkeypatch):
  """Phase 1, then the refit, stopped by SIGTERM after a step-8 checkpoint; each rerun resumes that phase."""
  cache = str(tmp_path / "cache")
  shutil.copytree(cache_dir, cache)
  test_npz = os.path.join(cache, TASK, "test.npz")
  os.rename(test_npz, test_npz + ".away")  # no test split until phase 3 should need it
  gin_file = _gin_file(tmp_path, cache)
  root = str(tmp_path / "run")
  real = train_lib.train_using_gin

  def stopped_at_8():
    # What train() returns after SIGTERM lands during steps 5-8: a checkpoint at 8, then the signal.
    result = gin.get_configurable(train_lib.train)(total_steps=8)
    return dataclasses.replace(result, stopped_by_signal=15)

  monkeypatch.setattr(train_lib, "train_using_gin", stopped_at_8)
  with pytest.raises(select_refit.Interrupted, match="signal 15 during phase 1"):
    select_refit.run_procedure(_flags(gin_file, root))
  assert not os.path.exists(os.path.join(root, "select", "default", "done.json"))
  assert not os.path.exists(os.path.join(root, "selection.json"))
  monkeypatch.setattr(train_lib, "train_using_gin", real)
  select_refit.run_procedure(_flags(gin_file, root, until="select"))
  done = json.load(open(os.path.join(root, "select", "default", "done.json")))
  assert done["start_step"] == 8 and done["step"] == 12
  path = os.path.join(root, "selection.json")
  record = json.load(open(path))
  record["refit_steps"] = steps = 12  # past the interruption, whatever phase 1 chose
  with open(path, "w") as f:
    json.dump(record, f)
  select_metrics = os.path.join(root, "select", "default", "metrics.jsonl")
  phase1_log = open(select_metrics).read()
  monkeypatch.setattr(train_lib, "train_using_gin", stopped_at_8)
  with pytest.raises(select_refit.Interrupted, match="signal 15 during phase 2"):
    select_refit.run_procedure(_flags(gin_file, root))
  monkeypatch.setattr(train_lib, "train_using_gin", real)
  assert _latest_step(os.path.join(root, "refit")) == 8
  assert not os.path.exists(os.path.join(root, "refit", "done.json"))

  # Rerun: phase 1 is not redone, phase 2 resumes from step 8, phase 3 finds no test split.
  with pytest.raises(FileNotFoundError, match="no cached split 'test'"):
    select_refit.run_procedure(_flags(gin_file, root))
  assert open(select_metrics).read() == phase1_log
  done = json.load(open(os.path.join(root, "refit", "done.json")))
  assert done["steps"] == 12 and done["start_step"] == 8
  assert not os.path.exists(os.path.join(root, "test", "metrics.json"))

  os.rename(test_npz + ".away", test_npz)
  report = select_refit.run_procedure(_flags(gin_file, root))
  assert [report[p]["status"] for p in ("select", "refit", "test")] == ["done before", "done before", "ran"]
  assert report["test"]["metrics"]["step"] == steps


def test_phases_refuse_a_config_that_reads_test_early(tmp_path, cache_dir):
  gin_file = _gin_file(tmp_path, cache_dir, "infer_eval/utils.DatasetConfig.split = 'test'\n")
  root = str(tmp_path / "run")
  with pytest.raises(ValueError, match="infer_eval/utils.DatasetConfig.split is 'test'"):
    select_refit.run_procedure(_flags(gin_file, root))
  assert not os.path.exists(os.path.join(root, "select", "default", "checkpoints"))


def test_tuned_gin_parses_into_the_phases(tmp_path):
  """gin/tuned.gin: two widths, the rule, validation in phase 1 and none in the refit."""
  placeholder = tmp_path / "gin" / "rqvae"
  placeholder.mkdir(parents=True)
  if not os.path.exists(os.path.join(gin_utils.REPO_GIN_DIR, "rqvae", "collaborative.gin")):
    (placeholder / "collaborative.gin").write_text("# stands in for the Semantic-ID recipe\n")
  flags = gin_utils.parse_flags(["--gin_file=gin/tuned.gin", '--gin.MODEL_DIR="/tmp/unused"',
                                 "--gin.MIXTURE_OR_TASK_NAME='tiger_any'", f"--gin_search_paths={tmp_path}"])
  select_refit._parse(flags)  # pylint: disable=protected-access
  config = select_refit._procedure_config()  # pylint: disable=protected-access
  assert config.rule == Rule(metric="validation/ndcg@10", mode="max", tolerance=0.0)
  assert list(config.candidate_bindings()) == ["d128", "d256"]
  assert gin.query_parameter("%LABEL_SMOOTHING") == 0.2 and gin.query_parameter("%EMA_DECAY") == 0.999
  assert gin.query_parameter("train_script.train.best_metric") == "validation/ndcg@10"
  select_refit._parse(flags, config.candidate_bindings()["d256"],  # pylint: disable=protected-access
                      ["TRAIN_STEPS = 1234", "train/utils.DatasetConfig.split = 'train+validation'"])
  assert gin.query_parameter("network.T5Config.emb_dim") == 256
  assert gin.query_parameter("network.T5Config.mlp_dim") == 2048
  assert gin.query_parameter("%TRAIN_STEPS") == 1234
  assert np.isclose(gin.query_parameter("%EMA_DECAY"), 0.999)


def test_selected_checkpoint_is_best_then_a_kept_step_then_none(tmp_path):
  """Phase 3's validation decode uses the params the rule chose: best/ if it holds that step, else a kept one."""
  seed0, seed1 = tmp_path / "seed0", tmp_path / "seed1"
  for sub in ("best/8", "checkpoints/12", "checkpoints/16"):
    (seed0 / "select" / "wide" / sub).mkdir(parents=True)
  record = {"chosen": {"candidate": "wide", "step": 8}}
  wide = str(seed0 / "select" / "wide")
  assert select_refit.selected_checkpoint(record, str(seed0)) == (wide, "best")
  # Another seed refitting seed 0's choice decodes seed 0's phase-1 params.
  copied = dict(record, selection_from=str(seed0 / "selection.json"))
  assert select_refit.selected_checkpoint(copied, str(seed1)) == (wide, "best")
  assert select_refit.selected_checkpoint({"chosen": {"candidate": "wide", "step": 12}}, str(seed0)) == (wide, 12)
  assert select_refit.selected_checkpoint({"chosen": {"candidate": "wide", "step": 4}}, str(seed0)) is None
