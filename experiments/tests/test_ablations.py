"""benchmarks/ablations.py end to end at CPU size (ID types, user token, layers), and the combined-catalogue IDs.

One tiny dataset (60 items in 3 categories, 200 users), clustered embeddings written by the test, an RQ-VAE of
32 codes per level, 1- and 2-layer T5s trained for 12 steps each; then experiments/make_report.py over the results.
"""
import json
import os
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import TINY_RQVAE_GIN, write_category_walk_dataset, write_clustered_embeddings  # noqa: E402
from tiger_jax import rqvae  # noqa: E402
from tiger_jax import semantic_ids as sid_lib  # noqa: E402

TASK = "tiger_abl"
NUM_ITEMS, NUM_USERS = 60, 200
SMALL = dict(emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64)
USER_TOKEN_MIN = 1026  # tiger_jax/vocab.py: user tokens are 1026 + bucket


@pytest.fixture(scope="module")
def ablations(tmp_path_factory):
  pytest.importorskip("seqio")
  from benchmarks import ablations as script  # pylint: disable=g-import-not-at-top
  from experiments import make_report  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp("ablations")
  rng = np.random.default_rng(0)
  data_dir, asins = write_category_walk_dataset(tmp / "data", rng, NUM_ITEMS, NUM_USERS, length_cycle=4,
                                                user_digits=3)
  write_clustered_embeddings(tmp / "emb", asins, rng)
  rqvae_gin = tmp / "rqvae_tiny.gin"
  rqvae_gin.write_text(TINY_RQVAE_GIN)
  train_gin = tmp / "tiny.gin"
  train_gin.write_text(textwrap.dedent("""\
      from __gin__ import dynamic_registration
      from tiger_jax import network
      include 'gin/runs/train.gin'
      include 'gin/models/tiger_t5.gin'
      ACTIVATION_DTYPE = 'float32'
      TRAIN_STEPS = 12
      BATCH_SIZE = 16
      EVAL_BATCH_SIZE = 64
      EVAL_PERIOD = 12
      STATS_PERIOD = 12
      STEPS_PER_DISPATCH = 12
      LENGTH_BUCKETS = [81]
      network.T5Config:
      """) + "".join(f"  {k} = {v}\n" for k, v in SMALL.items()))
  out_dir = tmp / "results"
  # The stages run in subprocesses; settings of one depth compile the same programs, so share them on disk.
  env = {"JAX_COMPILATION_CACHE_DIR": str(tmp / "jax_cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  saved_env = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  common = [f"--data_dir={data_dir}", f"--work_dir={tmp / 'work'}", f"--embeddings_dir={tmp / 'emb'}",
            f"--task={TASK}", f"--rqvae_gin={rqvae_gin}", f"--gin_file={train_gin}", "--base_layers=1",
            f"--out_dir={out_dir}", "--dataset=Tiny"]
  try:
    results = {a: script.main(common + [f"--ablation={a}"] + extra)
               for a, extra in (("id_types", []), ("user_token", []), ("layers", ["--layers=1,2"]))}
  finally:
    for k, v in saved_env.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  report = make_report.make_report(str(out_dir))
  return {"script": script, "results": results, "work": tmp / "work", "out": out_dir, "report": report,
          "common": common}


def _model(fx, name):
  return fx["work"] / "models" / "tiny" / name


@pytest.mark.slow
def test_id_types_use_their_own_ids_caches_and_models(ablations):
  work = ablations["work"]
  tokens = {}
  for method in ("random", "lsh", "rqvae"):
    ids = sid_lib.SemanticIds.load(str(work / "ids" / method / "semantic_ids.npz"))
    assert ids.method == method and len(ids) == NUM_ITEMS
    info = json.loads((work / "cache" / method / TASK / "info.json").read_text())
    assert info["semantic_ids_method"] == method and info["semantic_ids_hash"] == ids.content_hash()
    tokens[method] = np.load(work / "cache" / method / TASK / "items.npz")["item_tokens"]
    assert (_model(ablations, f"{method}_l1_user") / "eval_test" / "metrics.json").exists()
  assert not np.array_equal(tokens["random"], tokens["rqvae"]) and not np.array_equal(tokens["lsh"], tokens["rqvae"])


@pytest.mark.slow
def test_no_user_token_cache_has_no_user_tokens(ablations):
  cache = ablations["work"] / "cache" / "rqvae"
  with_user = np.load(cache / TASK / "train.npz")["encoder_input_tokens"]
  without = np.load(cache / f"{TASK}_nouser" / "train.npz")["encoder_input_tokens"]
  assert (with_user[:, 0] >= USER_TOKEN_MIN).all()
  assert not (without >= USER_TOKEN_MIN).any()
  # Same examples otherwise: the history tokens move one place to the left.
  np.testing.assert_array_equal(with_user[:, 1:], without[:, :-1])
  assert not json.loads((cache / f"{TASK}_nouser" / "info.json").read_text())["use_user_token"]


@pytest.mark.slow
def test_layer_settings_train_models_of_that_depth(ablations):
  for layers in (1, 2):
    config = (_model(ablations, f"rqvae_l{layers}_user") / "config.gin").read_text()
    assert f"num_encoder_layers = {layers}" in config and f"num_decoder_layers = {layers}" in config


@pytest.mark.slow
def test_results_have_one_finite_row_per_setting_and_the_report_shows_them(ablations):
  expected = {"id_types": ["Random ID", "LSH SID", "RQ-VAE SID"],
              "user_token": ["with user token", "without user token"], "layers": ["1 layers", "2 layers"]}
  for ablation, labels in expected.items():
    saved = json.loads((ablations["out"] / f"ablation_{ablation}_tiny.json").read_text())
    assert saved["experiment"] == ablations["script"].EXPERIMENT[ablation]
    assert [r["setting"] for r in saved["rows"]] == labels and not saved["config"]["missing_settings"]
    for row in saved["rows"]:
      assert all(0.0 <= row[k] <= 1.0 for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"))
      assert row["train_steps"] == 12 and 0 < row["best_step"] <= 12 and row["dataset"] == "Tiny"
    assert saved["meta"]["command"].startswith("python -m benchmarks.ablations")
  # The default setting (RQ-VAE IDs, base layers, user token) is one model shared by every table.
  models = sorted(p.name for p in (ablations["work"] / "models" / "tiny").iterdir())
  assert models == ["lsh_l1_user", "random_l1_user", "rqvae_l1_nouser", "rqvae_l1_user", "rqvae_l2_user"]
  text = open(ablations["report"]).read()
  for name in ("ablation_id_types_tiny.json", "ablation_user_token_tiny.json", "ablation_layers_tiny.json"):
    assert f"]({name})" in text, name
  row = ablations["results"]["id_types"]["rows"][1]
  assert "LSH SID" in text and f"{row['recall@10']:.4f}" in text


@pytest.mark.slow
def test_rerun_of_a_finished_ablation_trains_nothing(ablations):
  model = _model(ablations, "rqvae_l1_nouser")
  before = {p: p.stat().st_mtime for p in (model / "metrics.jsonl", model / "ablation_train.json",
                                            model / "eval_test" / "metrics.json")}
  again = ablations["script"].main(ablations["common"] + ["--ablation=user_token", "--stages=train,eval"])
  assert {p: p.stat().st_mtime for p in before} == before
  assert again["rows"] == ablations["results"]["user_token"]["rows"]


def test_combined_catalogue_fits_the_rqvae_on_both_catalogues(tmp_path, monkeypatch):
  gin = pytest.importorskip("gin")
  rng = np.random.default_rng(1)
  beauty = [f"B{i}" for i in range(120)]
  sports = [f"S{i}" for i in range(80)] + ["B0"]  # an item both catalogues hold is fit once
  xb = write_clustered_embeddings(tmp_path / "beauty", beauty, rng)
  xs = write_clustered_embeddings(tmp_path / "sports", sports, rng)
  fitted = []
  real = rqvae.train_rqvae
  monkeypatch.setattr(rqvae, "train_rqvae", lambda x, *a, **k: fitted.append(np.array(x)) or real(x, *a, **k))
  gin.clear_config()
  try:
    sid_lib.main(["--gin_file=gin/rqvae/quick.gin", f"--work_dir={tmp_path / 'beauty'}",
                "--gin.RQVAEConfig.hidden_dims=(16,)", "--gin.RQVAEConfig.latent_dim=4",
                "--gin.RQVAEConfig.codebook_size=64", "--gin.RQVAEConfig.num_epochs=2",
                "--gin.RQVAEConfig.batch_size=64", "--gin.RQVAEConfig.kmeans_iters=3",
                f"--gin.make_semantic_ids.extra_embedding_dirs=['{tmp_path / 'sports'}']"])
  finally:
    gin.clear_config()
  np.testing.assert_array_equal(fitted[0], np.concatenate([xb, xs[:80]]))
  ids = sid_lib.SemanticIds.load(str(tmp_path / "beauty"))
  assert ids.method == "rqvae" and ids.asins.tolist() == beauty and ids.codes.shape == (120, 4)
  assert len({tuple(r) for r in ids.codes.tolist()}) == 120  # unique 4-code IDs over Beauty's items
  assert ids.stats["rqvae_fit_items"] == 200 and ids.stats["num_items"] == 120
  assert ids.stats["extra_embedding_dirs"][0]["shared_asins_skipped"] == 1
  with pytest.raises(ValueError, match="extra_embedding_dirs apply to method 'rqvae'"):
    sid_lib.make_semantic_ids(work_dir=str(tmp_path / "beauty"), method="lsh",
                            extra_embedding_dirs=[str(tmp_path / "sports")])


def test_nouser_tasks_are_registered_without_the_user_token():
  seqio = pytest.importorskip("seqio")
  from tasks import tiger_tasks  # pylint: disable=g-import-not-at-top
  assert "tiger_beauty_nouser" in seqio.TaskRegistry.names()
  assert tiger_tasks.default_data_dir("tiger_beauty_nouser") == tiger_tasks.default_data_dir("tiger_beauty")
  assert not tiger_tasks.use_user_token_for("tiger_beauty_nouser") and tiger_tasks.use_user_token_for("tiger_beauty")


def test_combined_catalogue_settings_and_flags():
  from benchmarks import ablations as script  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit):
    script.parse_args(["--ablation=combined_catalogue", "--stages=ids"])  # no --extra_embeddings_dir
  args = script.parse_args(["--ablation=combined_catalogue", "--extra_embeddings_dir=work/sports"])
  settings = script.settings_for(args)
  assert [(s.key, s.ids, s.layers, s.user_token) for s in settings] == [("single", "rqvae", 4, True),
                                                                        ("combined", "combined", 4, True)]
  assert args.name == "ablation_combined_catalogue_beauty" and args.run == "beauty"
  with pytest.raises(SystemExit, match="unknown"):
    script.settings_for(script.parse_args(["--ablation=layers", "--settings=7"]))


def test_table_from_gpu_jobs_results_reads_each_settings_job(tmp_path):
  """--gpu_results: rows are the named jobs' test metrics and trained steps; the card is the device run's."""
  from benchmarks import ablations as script  # pylint: disable=g-import-not-at-top

  def device_call(name, revision, jobs):
    results = tmp_path / name
    results.mkdir()
    (results / "status.json").write_text(json.dumps({"revision": revision, "datasets": {
        "_runner": {"device": "GPU 0: NVIDIA H200 (UUID: GPU-1)"}}, "jobs": {}}))
    for job, recall in jobs:
      metrics = {"recall@5": recall / 2, "ndcg@5": recall / 3, "recall@10": recall, "ndcg@10": recall / 2,
                 "step": 10000, "num_users": 7}
      (results / f"{job}_eval_test_metrics.json").write_text(json.dumps(metrics))
      (results / f"{job}_metrics.jsonl").write_text('{"step": 10000}\n{"step": 20000}\n')
    return results

  results = device_call("gpu", "abc1234", [("base", 0.06), ("nouser", 0.05)])
  out = tmp_path / "out"
  result = script.main(["--ablation=user_token", f"--gpu_results={results}", "--gpu_job=user=base",
                        "--gpu_job=nouser=nouser", f"--out_dir={out}", "--name=t"])
  assert [(r["setting"], r["recall@10"], r["train_steps"], r["best_step"]) for r in result["rows"]] == [
      ("with user token", 0.06, 20000, 10000), ("without user token", 0.05, 20000, 10000)]
  assert result["meta"]["device_kind"] == "NVIDIA H200" and result["meta"]["git_revision"] == "abc1234"
  assert json.load(open(out / "t.json"))["experiment"] == "ablation_user_token"
  # A missing job is listed, not invented; an unknown key is an error.
  result = script.main(["--ablation=user_token", f"--gpu_results={results}", "--gpu_job=user=base",
                        f"--out_dir={out}", "--name=t2"])
  assert [r["setting"] for r in result["rows"]] == ["with user token"]
  assert result["config"]["missing_settings"] == ["without user token"]
  # Jobs of two GPU runs: each row from the first directory holding its job, with that call's revision.
  later = device_call("gpu2", "def5678", [("nouser", 0.04), ("other", 0.01)])
  result = script.main(["--ablation=user_token", f"--gpu_results={results}", f"--gpu_results={later}",
                        "--gpu_job=user=base", "--gpu_job=nouser=other", f"--out_dir={out}", "--name=t3"])
  assert [(r["recall@10"], r["git_revision"]) for r in result["rows"]] == [(0.06, "abc1234"), (0.01, "def5678")]
  assert result["meta"]["git_revision"] == "abc1234, def5678"
  assert "job other of" in open(out / "t3.md").read()
  with pytest.raises(SystemExit, match="unknown setting keys"):
    script.main(["--ablation=user_token", f"--gpu_results={results}", "--gpu_job=users=base", f"--out_dir={out}"])
