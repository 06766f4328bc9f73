"""End to end on a tiny dataset: cache -> train (CLI) -> eval (CLI) -> predictions.jsonl and infer."""
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("seqio")

from tasks import cache_tasks  # noqa: E402
from tiger_jax import eval as eval_lib  # noqa: E402
from tiger_jax import infer  # noqa: E402
from tiger_jax import metrics  # noqa: E402
from tiger_jax import provenance  # noqa: E402
from tiger_jax import utils  # noqa: E402
from conftest import write_processed  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "tiger_evaltiny"
SMALL = dict(emb_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, head_dim=16, mlp_dim=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """40 users over 30 items, random Semantic IDs, a small T5 trained for 24 steps by the CLI."""
  tmp = tmp_path_factory.mktemp("e2e")
  rng = np.random.default_rng(0)
  items = [{"asin": f"P{i:02d}", "title": f"product {i}"} for i in range(30)]
  sequences = {f"user{u}": [f"P{(u + 3 * j + rng.integers(0, 2)) % 30:02d}" for j in range(4 + u % 5)]
               for u in range(40)}
  data_dir = write_processed(tmp / "data", sequences, items)
  cache_dir = str(tmp / "cache")
  cache_tasks.cache_task(TASK, cache_dir, data_dir=data_dir, semantic_ids_path="random")
  gin_file = tmp / "small.gin"
  gin_file.write_text(textwrap.dedent(f"""\
      from __gin__ import dynamic_registration
      from tiger_jax import network
      include 'gin/runs/train.gin'
      include 'gin/models/tiger_t5.gin'
      MIXTURE_OR_TASK_NAME = '{TASK}'
      TASK_CACHE_DIR = '{cache_dir}'
      ACTIVATION_DTYPE = 'float32'
      TRAIN_STEPS = 24
      BATCH_SIZE = 16
      EVAL_BATCH_SIZE = 16
      EVAL_PERIOD = 12
      STATS_PERIOD = 12
      STEPS_PER_DISPATCH = 12
      LENGTH_BUCKETS = [81]
      network.T5Config:
      """) + "".join(f"  {k} = {v}\n" for k, v in SMALL.items()))
  model_dir = str(tmp / "model")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  gin_args = [f"--gin_file={gin_file}", f'--gin.MODEL_DIR="{model_dir}"']
  subprocess.run([sys.executable, "-m", "tiger_jax.train", *gin_args], cwd=REPO, env=env, check=True,
                 capture_output=True)
  return {"model_dir": model_dir, "cache_dir": cache_dir, "gin_args": gin_args, "env": env, "tmp": tmp,
          "data_dir": data_dir}


def _run_eval(trained, name, *bindings):
  out = os.path.join(trained["tmp"], name)
  proc = subprocess.run([sys.executable, "-m", "tiger_jax.eval", *trained["gin_args"],
                         "--gin_file=gin/runs/eval.gin", f'--gin.EVAL_OUTPUT_DIR="{out}"', *bindings],
                        cwd=REPO, env=trained["env"], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "metrics.json")) as f:
    return json.load(f), os.path.join(out, "predictions.jsonl")


@pytest.mark.slow
def test_training_keeps_the_best_checkpoint_by_validation_ndcg(trained):
  with open(os.path.join(trained["model_dir"], "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  evals = [r for r in rows if "validation/ndcg@10" in r]
  assert [r["step"] for r in evals] == [12, 24]
  best = max(evals, key=lambda r: r["validation/ndcg@10"])
  assert os.listdir(os.path.join(trained["model_dir"], "best")) == [str(best["step"])]


@pytest.mark.slow
def test_eval_writes_metrics_that_predictions_reproduce(trained):
  found, predictions = _run_eval(trained, "constrained")
  assert found["num_users"] == 40 and found["constrained"] and found["num_beams"] == 20
  rows = [json.loads(line) for line in open(predictions)]
  assert len(rows) == 40 and rows[0]["user"] == "user0"
  catalogue = {f"P{i:02d}" for i in range(30)}
  for row in rows:
    assert len(row["topk"]) == 20 and len(set(row["topk"])) == 20  # 20 distinct valid items
    assert set(row["topk"]) <= catalogue
    assert row["scores"] == sorted(row["scores"], reverse=True)
  # With the constraint, no beam names an item outside the catalogue.
  assert all(v == 0.0 for v in found["invalid_fraction_at_k"].values())
  again = eval_lib.metrics_from_predictions(predictions)
  for key, value in again.items():
    assert found[key] == pytest.approx(value)
  at_rank = found["hit_fraction_at_rank"]
  assert list(at_rank) == [str(r) for r in range(1, 21)]
  top5 = sum(row["topk"].index(row["target"]) < 5 for row in rows if row["target"] in row["topk"])
  assert sum(at_rank[str(r)] for r in range(1, 6)) == pytest.approx(top5 / 40)


@pytest.mark.slow
def test_unconstrained_eval_reports_invalid_ids(trained):
  found, predictions = _run_eval(trained, "unconstrained", "--gin.CONSTRAIN_IDS=False")
  # 30 items among 256^3 * 256 possible IDs: an untrained-ish model produces mostly invalid IDs.
  assert found["invalid_fraction_at_k"]["20"] > 0.5
  assert not found["constrained"]
  again = eval_lib.metrics_from_predictions(predictions)
  assert found["recall@10"] == pytest.approx(again["recall@10"])


@pytest.mark.slow
def test_infer_recommends_named_products(trained):
  rec = infer.Recommender.from_model_dir(trained["model_dir"])
  top = rec.recommend(["P01", "P04"], user="user1", k=5)
  assert len(top) == 5 and all(r["title"].startswith("product ") for r in top)
  assert [r["score"] for r in top] == sorted((r["score"] for r in top), reverse=True)
  assert len(rec.recommend([], k=3)) == 3  # a cold user still gets an answer
  long_history = [f"P{i % 30:02d}" for i in range(35)]
  np.testing.assert_array_equal(rec.encode_history(long_history)[0, :80],
                                rec.encode_history(long_history[-20:])[0, :80])
  with pytest.raises(infer.UnknownItemError, match="NOPE"):
    rec.recommend(["P01", "NOPE"])


def test_eval_and_infer_refuse_a_cache_rebuilt_with_other_ids(trained):
  """The cache copied, then rebuilt in place with other IDs: the model's tokens would name other items."""
  import shutil  # pylint: disable=g-import-not-at-top
  other = os.path.join(trained["tmp"], "other_cache")
  shutil.copytree(trained["cache_dir"], other)
  cache_tasks.cache_task(TASK, other, data_dir=trained["data_dir"], semantic_ids_path="random:1")
  recorded = provenance.read(trained["model_dir"])["cache"]
  rebuilt = provenance.cache_fingerprint(other, TASK)
  assert rebuilt["semantic_ids_hash"] != recorded["semantic_ids_hash"]
  cfg = utils.DatasetConfig(mixture_or_task_name=TASK, task_feature_lengths={"inputs": 81, "targets": 5},
                            split="test", batch_size=16, shuffle=False, cache_dir=other)
  with pytest.raises(provenance.ProvenanceError) as e:
    eval_lib.evaluate(model=None, dataset_cfg=cfg, model_dir=trained["model_dir"],
                      output_dir=os.path.join(trained["tmp"], "refused"))
  for needle in (provenance.short(recorded["semantic_ids_hash"]), provenance.short(rebuilt["semantic_ids_hash"]),
                 "--semantic_ids=random",
                 f"--data_dir={trained['data_dir']}", "python -m tasks.cache_tasks"):
    assert needle in str(e.value), needle
  assert not os.path.exists(os.path.join(trained["tmp"], "refused"))
  with pytest.raises(provenance.ProvenanceError, match="infer: the task cache"):
    infer.Recommender.from_model_dir(trained["model_dir"], cache_dir=other)
  proc = subprocess.run([sys.executable, "-m", "tiger_jax.infer", f"--model_dir={trained['model_dir']}",
                         f"--cache_dir={other}", "--history=P01"], cwd=REPO, env=trained["env"],
                        capture_output=True, text=True)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: infer: the task cache")
  assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_a_second_eval_loads_its_beam_search_from_disk_and_ranks_the_same(trained):
  """The first eval with a compilation cache stores its traced beam search; the next, writing elsewhere, loads
  it instead of tracing, and both rank exactly as an eval without any cache."""
  cache = os.path.join(trained["tmp"], "xla_for_eval")
  runs = {}
  for name, flag in (("stored", cache), ("loaded", cache), ("uncached", "off")):
    out = os.path.join(trained["tmp"], f"eval_{name}")
    proc = subprocess.run([sys.executable, "-m", "tiger_jax.eval", *trained["gin_args"],
                           "--gin_file=gin/runs/eval.gin", f'--gin.EVAL_OUTPUT_DIR="{out}"',
                           f"--compilation_cache_dir={flag}"],
                          cwd=REPO, env=trained["env"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "predictions.jsonl")) as f:
      runs[name] = (f.read(), proc.stderr)
  stored = re.findall(r"compiled the beam search for encoder length (\d+) \(traced and stored\)", runs["stored"][1])
  loaded = re.findall(r"compiled the beam search for encoder length (\d+) \(traced program from disk\)",
                      runs["loaded"][1])
  assert stored and sorted(loaded) == sorted(stored), (runs["stored"][1], runs["loaded"][1])
  assert "traced and stored" not in runs["loaded"][1] and "compiled the beam search" not in runs["uncached"][1]
  assert runs["stored"][0] == runs["loaded"][0] == runs["uncached"][0]


def test_training_validation_loads_its_beam_search_from_disk_and_scores_the_same(trained):
  """A rerun of the training, in another MODEL_DIR with the same compilation cache, validates with the beam
  search the first run stored, and its validation metrics equal those of a run without any cache."""
  cache = os.path.join(trained["tmp"], "xla_for_training")
  runs = {}
  for name, flag in (("stored", cache), ("loaded", cache), ("uncached", "off")):
    model_dir = os.path.join(trained["tmp"], f"retrain_{name}")
    proc = subprocess.run([sys.executable, "-m", "tiger_jax.train", trained["gin_args"][0],
                           f'--gin.MODEL_DIR="{model_dir}"', f"--compilation_cache_dir={flag}"],
                          cwd=REPO, env=trained["env"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
      evals = [{k: v for k, v in json.loads(line).items() if k.startswith("validation/") and "ndcg" in k}
               for line in f if "validation/ndcg@10" in line]
    runs[name] = (evals, proc.stderr)
  assert "compiled the beam search for encoder length" in runs["stored"][1]
  assert "(traced program from disk)" in runs["loaded"][1] and "(traced and stored)" not in runs["loaded"][1]
  assert len(runs["stored"][0]) == 2 and runs["stored"][0] == runs["loaded"][0] == runs["uncached"][0]


def test_eval_after_training_compiles_its_beam_search_from_the_trainers_xla_cache(trained):
  """The trainer's validation decodes with the beam search eval runs: with one compilation cache, eval's compile of
  every encoder length is a persistent-cache hit, not a second compile of what validation compiled."""
  cache = os.path.join(trained["tmp"], "xla_train_then_eval")
  model_dir = os.path.join(trained["tmp"], "model_for_shared_cache")
  gin_args = [trained["gin_args"][0], f'--gin.MODEL_DIR="{model_dir}"']
  subprocess.run([sys.executable, "-m", "tiger_jax.train", *gin_args, f"--compilation_cache_dir={cache}"],
                 cwd=REPO, env=trained["env"], check=True, capture_output=True)
  out = os.path.join(trained["tmp"], "eval_shared_cache")
  proc = subprocess.run([sys.executable, "-m", "tiger_jax.eval", *gin_args, "--gin_file=gin/runs/eval.gin",
                         f'--gin.EVAL_OUTPUT_DIR="{out}"', f"--compilation_cache_dir={cache}"],
                        cwd=REPO, env=dict(trained["env"], JAX_LOG_COMPILES="1"), capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # compile_function compiles each stored beam search as jit(exported.call): XLA's module 'jit_call'.
  hits = re.findall(r"Persistent compilation cache hit for 'jit_call'", proc.stderr)
  lengths = re.findall(r"compiled the beam search for encoder length (\d+)", proc.stderr)
  assert lengths and len(hits) == len(lengths), proc.stderr[-3000:]


def test_the_first_validation_runs_on_programs_compiled_beside_the_training_loops(trained):
  """Validation loss and beam search (the metric functions marked utils.compiles_ahead) compile while the
  training loops do: from the last of those compiles to the end of the first validation, XLA compiles nothing."""
  model_dir = os.path.join(trained["tmp"], "model_compiled_ahead")
  proc = subprocess.run([sys.executable, "-m", "tiger_jax.train", trained["gin_args"][0],
                         f'--gin.MODEL_DIR="{model_dir}"', "--gin.LENGTH_BUCKETS=[17, 33, 81]"],
                        cwd=REPO, env=dict(trained["env"], JAX_LOG_COMPILES="1"), capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  compiled = [i for i, line in enumerate(lines)
              if re.search(r"compiled the validation's programs beside|compiled the \d+-step loop", line)]
  first_eval = next(i for i, line in enumerate(lines) if "eval at step 12 " in line)
  assert compiled and compiled[-1] < first_eval, proc.stderr[-3000:]
  during = [line for line in lines[compiled[-1]:first_eval] if "Finished XLA compilation" in line]
  assert not during, "\n".join(during)
  assert any("compiled the beam search for encoder length" in line for line in lines[:compiled[-1]])


def test_a_validation_before_training_is_not_compiled_again_beside_the_loops(trained):
  """The step-0 validation has compiled the validation's programs already; only the loops compile after it."""
  model_dir = os.path.join(trained["tmp"], "model_eval_first")
  proc = subprocess.run([sys.executable, "-m", "tiger_jax.train", trained["gin_args"][0],
                         f'--gin.MODEL_DIR="{model_dir}"', "--gin.TRAIN_STEPS=12",
                         "--gin.train_script.train.run_eval_before_training=True"],
                        cwd=REPO, env=trained["env"], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "eval at step 0 " in proc.stderr, proc.stderr[-3000:]
  assert re.search(r"compiled the \d+-step loop", proc.stderr), proc.stderr[-3000:]
  assert "compiled the validation's programs beside" not in proc.stderr, proc.stderr[-3000:]


def test_metrics_from_predictions_by_hand(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in [
      {"user": "a", "target": "x", "topk": ["x", "y"]},
      {"user": "b", "target": "x", "topk": ["y", "z", "w", "v", "u", "x"]},
      {"user": "c", "target": "x", "topk": []}]) + "\n")
  m = eval_lib.metrics_from_predictions(str(path))
  assert m["recall@5"] == pytest.approx(1 / 3) and m["recall@10"] == pytest.approx(2 / 3)
  assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(7)) / 3)
  assert metrics.recall_at_k(np.array([0, 5, -1]), 10) == pytest.approx(2 / 3)
  path.write_text('{"user": "a", "target": "x", "topk": ["x"]}\n{"user": "b", "topk": ["x"]}\n')
  with pytest.raises(ValueError, match=r"p\.jsonl, line 2, field 'target': missing"):
    eval_lib.metrics_from_predictions(str(path))


# ----------------------------------------------------------------------------------------------------------
# Input checks, on the relative-path run of conftest.py: all fail before anything is decoded.


def _eval_cli(run, *args, prefix=()):
  return subprocess.run([*prefix, sys.executable, "-m", "tiger_jax.eval", *args], cwd=run["root"], env=run["env"],
                        capture_output=True, text=True, timeout=600)


def test_an_unknown_checkpoint_choice_lists_the_valid_ones(relative_path_run):
  """EVAL_CHECKPOINT='lastest' used to fail inside restore_params with int()'s message."""
  from tiger_jax import checkpoints  # pylint: disable=g-import-not-at-top
  run = relative_path_run
  cfg = utils.DatasetConfig(mixture_or_task_name=run["task"], task_feature_lengths={"inputs": 81, "targets": 5},
                            split="test", batch_size=8, shuffle=False, cache_dir=run["cache_dir"])
  for bad in ("lastest", "-3", "", True):
    with pytest.raises(ValueError, match=r"not one of the valid choices: 'best'.*'latest', or a step number"):
      eval_lib.evaluate(model=None, dataset_cfg=cfg, model_dir=run["model_dir"], checkpoint=bad)
  with pytest.raises(ValueError, match="valid choices"):
    checkpoints.restore_params(run["model_dir"], "lastest")
  assert checkpoints.restore_params(run["model_dir"], "4")[1] == 4  # a step may come as a string
  with pytest.raises(FileNotFoundError, match=r"steps on disk: .*\[4\]"):
    checkpoints.restore_params(run["model_dir"], 3)


def test_eval_without_gin_files_says_which_to_pass(relative_path_run):
  out = _eval_cli(relative_path_run)
  assert out.returncode != 0
  assert "--gin_file=gin/<dataset>.gin --gin_file=gin/runs/eval.gin" in out.stderr, out.stderr[-3000:]
  assert "Traceback" not in out.stderr and "gin files given: none" in out.stderr


def _read_only_prefix(directory):
  """A command prefix that runs its command with `directory` mounted read-only (root ignores file modes, so a
  private mount namespace does it), or None when this machine cannot make one."""
  script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
  probe = subprocess.run(["unshare", "-rm", "sh", "-c", script, directory, "true"], capture_output=True)
  return ["unshare", "-rm", "sh", "-c", script, directory] if probe.returncode == 0 else None


def test_eval_into_a_read_only_model_dir_fails_before_decoding(relative_path_run):
  """It used to restore and decode every user, then fail writing MODEL_DIR/eval_test."""
  run = relative_path_run
  flags = [*run["gin_flags"], "--gin_file=gin/runs/eval.gin"]
  if os.geteuid() == 0:
    prefix = _read_only_prefix(run["model_dir"])
    if prefix is None:
      pytest.skip("running as root without unshare: cannot make a read-only directory")
    out = _eval_cli(run, *flags, prefix=prefix)
  else:
    mode = os.stat(run["model_dir"]).st_mode
    os.chmod(run["model_dir"], 0o555)
    try:
      out = _eval_cli(run, *flags)
    finally:
      os.chmod(run["model_dir"], mode)
  assert out.returncode != 0
  assert "cannot write the eval output there" in out.stderr and "EVAL_OUTPUT_DIR" in out.stderr, out.stderr[-3000:]
  assert os.path.join("work", "model", "eval_test") in out.stderr
  assert "restored params" not in out.stderr  # nothing was restored, let alone decoded


def test_restoring_for_eval_does_not_make_orbax_warn_about_its_save_interval(relative_path_run, caplog):
  """A read-only checkpoint manager is given the save interval orbax would force, so an eval's log is not one
  warning longer for nothing."""
  from tiger_jax import checkpoints  # pylint: disable=g-import-not-at-top
  with caplog.at_level("WARNING"):
    assert checkpoints.restore_params(relative_path_run["model_dir"], "latest")[1] == 4
  assert not [r for r in caplog.records if "save_interval_steps" in r.getMessage()]


def test_the_entry_points_drop_orbax_read_only_line_but_keep_other_library_warnings(relative_path_run, caplog):
  """orbax warns "Given directory is read only" on every restore for eval; the entry points' logging drops that
  line (and jax's TPU probe) and nothing else. Without the filter the restore does log it."""
  import logging  # pylint: disable=g-import-not-at-top
  from tiger_jax import checkpoints, gin_utils  # pylint: disable=g-import-not-at-top
  read_only = lambda: [r for r in caplog.records if r.getMessage().startswith("Given directory is read only")]
  absl_logger, bridge = logging.getLogger("absl"), logging.getLogger("jax._src.xla_bridge")
  try:
    gin_utils.quiet_library_noise(quiet=False)
    with caplog.at_level("WARNING"):
      checkpoints.restore_params(relative_path_run["model_dir"], "latest")
    assert read_only(), "orbax no longer logs the line; the filter can go"
    caplog.clear()
    gin_utils.quiet_library_noise()
    gin_utils.quiet_library_noise()
    assert sum(isinstance(f, gin_utils._DropPrefixes) for f in absl_logger.filters) == 1
    with caplog.at_level("INFO"):
      checkpoints.restore_params(relative_path_run["model_dir"], "latest")
      absl_logger.warning("a checkpoint step is missing")
      bridge.info("Unable to initialize backend 'tpu': INTERNAL: no libtpu")
      bridge.info("Unable to initialize backend 'cuda': no GPU")
    messages = [r.getMessage() for r in caplog.records]
    assert not read_only() and "a checkpoint step is missing" in messages, messages
    assert "Unable to initialize backend 'cuda': no GPU" in messages
    assert not [m for m in messages if "backend 'tpu'" in m]
  finally:
    gin_utils.quiet_library_noise(quiet=False)
