"""RQ-VAE: quantiser arithmetic, gradients, k-means init, training determinism, bad input, CLI."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiger_jax import compilation
from tiger_jax import rqvae
from tiger_jax import semantic_ids as sid

# Tiny model so each test compiles and runs in seconds on 2 CPU cores.
TINY = rqvae.RQVAEConfig(hidden_dims=(16,), latent_dim=4, num_levels=3, codebook_size=8,
                         batch_size=64, num_epochs=2, epochs_per_dispatch=2, kmeans_iters=5,
                         dead_code_reset_every=1)


def _data(n=200, d=12, seed=0):
  x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_residual_quantize_on_hand_made_vectors():
  books = jnp.array([
      [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]],   # Level 0.
      [[1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]],   # Level 1.
  ])
  z = jnp.array([[9.0, 1.0], [0.4, 9.2], [-1.2, 0.1]])
  codes, codewords, residuals = rqvae.residual_quantize(z, books)
  np.testing.assert_array_equal(codes, [[1, 1], [2, 2], [0, 1]])
  # Level 0 residual is z itself; level 1 residual is z minus the chosen level-0 codeword.
  np.testing.assert_allclose(residuals[:, 0], z)
  np.testing.assert_allclose(residuals[:, 1], [[-1.0, 1.0], [0.4, -0.8], [-1.2, 0.1]], atol=1e-6)
  np.testing.assert_allclose(codewords[:, 0], [[10, 0], [0, 10], [0, 0]])
  np.testing.assert_allclose(codewords.sum(1), [[9, 0], [0, 9], [-1, 0]])


def test_pairwise_sq_dists_matches_numpy():
  r = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
  c = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
  expect = ((r[:, None] - c[None]) ** 2).sum(-1)
  np.testing.assert_allclose(rqvae.pairwise_sq_dists(jnp.array(r), jnp.array(c)), expect,
                             rtol=1e-5, atol=1e-5)


def test_straight_through_gradients():
  x = jnp.array(_data(32, 12))
  model = rqvae.make_model(12, TINY)
  params = model.init(jax.random.PRNGKey(0), x)

  def loss(p, term):
    out = model.apply(p, x)
    return jnp.mean(rqvae.per_item_losses(out, x, 0.25)[term])

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g_recon = grad(params, "recon")["params"]
  # Reconstruction reaches the encoder through the quantiser, but never the codebooks.
  enc = jax.tree_util.tree_leaves(g_recon["encoder"])
  assert all(float(jnp.abs(g).sum()) > 0 for g in enc)
  assert float(jnp.abs(g_recon["codebooks"]).sum()) == 0.0
  g_rq = grad(params, "rq")["params"]
  assert float(jnp.abs(g_rq["codebooks"]).sum()) > 0
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(g_rq["encoder"]))
  assert all(float(jnp.abs(g).sum()) == 0 for g in jax.tree_util.tree_leaves(g_rq["decoder"]))
  out = model.apply(params, x)
  # The decoder sees the quantised latent in value.
  x_hat = model.apply(params, out["z_q"], method=rqvae.RQVAE.decode)
  np.testing.assert_allclose(out["x_hat"], x_hat, rtol=1e-5, atol=1e-6)


def test_kmeans_finds_separated_clusters():
  rng = np.random.default_rng(0)
  centers = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
  pts = np.concatenate([c + 0.1 * rng.standard_normal((30, 2)) for c in centers]).astype(np.float32)
  found = np.asarray(rqvae.kmeans(jnp.array(pts), 4, jax.random.PRNGKey(0), 10))
  key = lambda a: np.lexsort(np.round(a).T[::-1])  # Sort rows by (x, y).
  np.testing.assert_allclose(found[key(found)], centers[key(centers)], atol=0.1)


def test_kmeans_init_uses_every_codeword_on_first_batch():
  z = jnp.array(np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32))
  books = rqvae.kmeans_init_codebooks(z, 3, 8, jax.random.PRNGKey(1), 10)
  assert books.shape == (3, 8, 4)
  codes, _, residuals = rqvae.residual_quantize(z, books)
  for level in range(3):
    assert len(np.unique(np.asarray(codes[:, level]))) == 8
  # Level 1 was fitted on level-1 residuals: its codewords are their cluster means.
  r1 = np.asarray(residuals[:, 1])
  c1 = np.asarray(codes[:, 1])
  for k in range(8):
    np.testing.assert_allclose(np.asarray(books[1, k]), r1[c1 == k].mean(0), atol=1e-4)


def test_training_is_deterministic_and_learns():
  x = _data()
  a = rqvae.train_rqvae(x, TINY)
  b = rqvae.train_rqvae(x, TINY)
  np.testing.assert_array_equal(a["codes3"], b["codes3"])
  for la, lb in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
    np.testing.assert_array_equal(la, lb)
  assert a["history"].shape == (2, 3)
  assert a["stats"]["reconstruction_loss"] < a["stats"]["init_reconstruction_loss"]
  assert a["codes3"].shape == (200, 3) and a["codes3"].max() < 8
  assert [r["epoch"] for r in a["stats"]["dead_code_resets"]] == [1]  # Never after the last epoch.


def test_timing_keeps_the_compiling_dispatch_apart_from_the_steady_rate():
  assert rqvae.dispatch_timing([], 4) == {"first_dispatch_seconds": None, "steady_ms_per_step": None}
  # 10 s to compile and run 2 epochs, then 3 dispatches of 2 epochs x 4 steps in 0.024 s each: 1 ms per step.
  timing = rqvae.dispatch_timing([(2, 10.0), (2, 0.008), (2, 0.008), (2, 0.008)], 4)
  assert timing["first_dispatch_seconds"] == 10.0
  assert timing["steady_ms_per_step"] == pytest.approx(1.0)
  assert rqvae.dispatch_timing([(2, 10.0)], 4)["steady_ms_per_step"] is None
  cfg = dataclasses.replace(TINY, num_epochs=3, epochs_per_dispatch=1, dead_code_reset_every=0)
  stats = rqvae.train_rqvae(_data(), cfg)["stats"]
  assert stats["first_dispatch_seconds"] > 0 and stats["steady_ms_per_step"] > 0
  steady_seconds = stats["steady_ms_per_step"] * 2 * stats["steps_per_epoch"] / 1000
  assert stats["first_dispatch_seconds"] + steady_seconds <= stats["train_seconds"] + 1e-3


def test_dead_code_reset_revives_unused_codewords():
  x = jnp.array(_data())
  cfg = TINY
  trainer = rqvae.Trainer(12, 200, cfg)
  state = trainer.init(x, jax.random.PRNGKey(0))
  books = state.params["params"]["codebooks"]
  state.params["params"]["codebooks"] = books.at[0, 3].set(1e4)  # Nobody picks this one.
  params, dead = trainer._reset(state.params, x, jax.random.PRNGKey(2))
  assert int(dead[0]) >= 1
  codes, _ = trainer.evaluate(params, x)
  assert np.abs(np.asarray(params["params"]["codebooks"][0, 3])).max() < 100
  assert 3 in set(codes[:, 0].tolist())


@pytest.mark.parametrize("bad,match", [
    ("nan", "NaN or infinite.*row 5"),
    ("inf", "NaN or infinite.*row 5"),
    ("shape", "2-D"),
    ("few", "fewer than the 8 codewords"),
])
def test_bad_embeddings_are_clear_errors(bad, match):
  x = _data()
  if bad == "nan":
    x[5, 0] = np.nan
  elif bad == "inf":
    x[5, 1] = np.inf
  elif bad == "shape":
    x = x[:, 0]
  elif bad == "few":
    x = x[:7]
  with pytest.raises(ValueError, match=match):
    rqvae.train_rqvae(x, TINY)


def test_rqvae_semantic_ids_are_unique_with_stats():
  x = _data(300)
  asins = [f"A{i}" for i in range(300)]
  ids, _ = sid.rqvae_semantic_ids(x, asins, TINY)
  assert ids.codes.shape == (300, 4)
  assert len({tuple(r) for r in ids.codes.tolist()}) == 300
  for key in ("codebook_usage", "unique_prefixes", "largest_bucket", "reconstruction_loss"):
    assert key in ids.stats
  with pytest.raises(ValueError, match="299 asins"):
    sid.rqvae_semantic_ids(x, asins[:-1], TINY)


def test_entry_point_writes_and_skips(tmp_path):
  gin = pytest.importorskip("gin")
  x = _data(300)
  np.save(tmp_path / "embeddings.npy", x)
  with open(tmp_path / "embeddings.json", "w") as f:  # As tiger_jax.embed writes it.
    json.dump({"asins": [f"A{i}" for i in range(300)], "model_name": "test"}, f)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  quick = os.path.join(repo, "gin", "rqvae", "quick.gin")
  gin.clear_config()
  try:
    sid.main([f"--gin_file={quick}", f"--work_dir={tmp_path}", "--data_dir=unused",
                "--gin.RQVAEConfig.hidden_dims=(16,)", "--gin.RQVAEConfig.latent_dim=4",
                "--gin.RQVAEConfig.codebook_size=8", "--gin.RQVAEConfig.num_epochs=2",
                "--gin.RQVAEConfig.batch_size=64", "--gin.RQVAEConfig.kmeans_iters=3"])
    ids = sid.SemanticIds.load(str(tmp_path))
    assert ids.method == "rqvae" and len(ids) == 300
    assert (tmp_path / "semantic_ids_config.gin").exists()
    logs = []
    again = sid.make_semantic_ids(work_dir=str(tmp_path), log_fn=logs.append)
    assert "skipping" in logs[0]
    assert again.content_hash() == ids.content_hash()
  finally:
    gin.clear_config()


def test_entry_point_creates_a_work_dir_that_does_not_exist_yet(tmp_path):
  """The RQ-VAE writes its loss history beside the IDs; a new --work_dir must not fail after training."""
  gin = pytest.importorskip("gin")
  np.save(tmp_path / "embeddings.npy", _data(300))
  (tmp_path / "asins.txt").write_text("".join(f"A{i}\n" for i in range(300)))
  work_dir = tmp_path / "new" / "exp"
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  gin.clear_config()
  try:
    sid.main([f"--gin_file={os.path.join(repo, 'gin', 'rqvae', 'quick.gin')}", f"--work_dir={work_dir}",
              f"--embeddings_dir={tmp_path}", "--gin.RQVAEConfig.hidden_dims=(16,)",
              "--gin.RQVAEConfig.latent_dim=4", "--gin.RQVAEConfig.codebook_size=8",
              "--gin.RQVAEConfig.num_epochs=2", "--gin.RQVAEConfig.batch_size=64",
              "--gin.RQVAEConfig.kmeans_iters=3"])
  finally:
    gin.clear_config()
  assert len(sid.SemanticIds.load(str(work_dir))) == 300
  assert (work_dir / "rqvae_history.npy").exists() and (work_dir / "semantic_ids_config.gin").exists()


def test_entry_point_lsh_and_random_need_no_training(tmp_path):
  gin = pytest.importorskip("gin")
  np.save(tmp_path / "embeddings.npy", _data(300))
  (tmp_path / "asins.txt").write_text("".join(f"A{i}\n" for i in range(300)))
  for method in ("lsh", "random"):
    gin.clear_config()
    try:
      sid.main([f"--gin_file=gin/rqvae/{method}.gin", f"--work_dir={tmp_path / method}",
                f"--embeddings_dir={tmp_path}"])
    finally:
      gin.clear_config()
    ids = sid.SemanticIds.load(str(tmp_path / method / "semantic_ids.npz"))
    assert ids.method == method and len(ids) == 300


def test_missing_asin_order_is_a_clear_error(tmp_path):
  np.save(tmp_path / "embeddings.npy", _data(300))
  with pytest.raises(FileNotFoundError, match="no asin order"):
    sid.load_embeddings(str(tmp_path))


def test_bfloat16_products_keep_codebooks_and_losses_in_float32():
  x = _data()
  cfg = dataclasses.replace(TINY, compute_dtype="bfloat16")
  out = rqvae.train_rqvae(x, cfg)
  assert out["params"]["params"]["codebooks"].dtype == np.float32
  assert out["stats"]["reconstruction_loss"] < out["stats"]["init_reconstruction_loss"]
  model = rqvae.make_model(12, cfg)
  result = model.apply(out["params"], jnp.array(x))
  assert result["z"].dtype == jnp.float32 and result["x_hat"].dtype == jnp.float32
  products = [e for e in jax.make_jaxpr(model.apply)(out["params"], jnp.array(x)).eqns
              if e.primitive.name == "dot_general"]
  # Encoder and decoder layers multiply in bfloat16; the 3 codeword distances stay float32.
  assert [e.outvars[0].aval.dtype for e in products].count(jnp.bfloat16) == 2 * len(TINY.hidden_dims) + 2
  assert [e.outvars[0].aval.dtype for e in products].count(jnp.float32) == TINY.num_levels
  with pytest.raises(ValueError, match=r"RQVAEConfig.compute_dtype must be one of .*, got 'float16'"):
    dataclasses.replace(TINY, compute_dtype="float16")
  with pytest.raises(ValueError, match=r"RQVAEConfig.loss_reduction must be one of .*, got 'max'"):
    dataclasses.replace(TINY, loss_reduction="max")
  # float32 (the default) is left out of the stored config, so older artifacts keep their input hash.
  assert "compute_dtype" not in TINY.to_dict() and cfg.to_dict()["compute_dtype"] == "bfloat16"


def test_returned_trainer_runs_more_dispatches_without_compiling_again():
  cfg = dataclasses.replace(TINY, num_epochs=4, epochs_per_dispatch=5, dead_code_reset_every=2)
  out = rqvae.train_rqvae(_data(), cfg)
  trainer = out["trainer"]
  assert trainer.dispatch_epochs == 2  # cut to the reset period
  assert rqvae.Trainer(12, 300, dataclasses.replace(cfg, dead_code_reset_every=0)).dispatch_epochs == 5
  params = jax.device_put(out["params"])
  before = trainer.run_epochs._cache_size()
  trainer.run_epochs(params, trainer.tx.init(params), jnp.array(_data()), jax.random.PRNGKey(3),
                     trainer.dispatch_epochs)
  assert trainer.run_epochs._cache_size() == before == 1  # the training's own program


def test_one_off_programs_take_their_own_compiler_options_and_the_epoch_loop_does_not(monkeypatch):
  x, key = jnp.array(_data()), jax.random.PRNGKey(0)
  params = rqvae.Trainer(12, 200, TINY).init(x, key).params
  # An option XLA rejects shows which programs are built with the one-off options.
  monkeypatch.setattr(compilation, "ONE_OFF_COMPILER_OPTIONS", {"xla_no_such_option": True})
  trainer = rqvae.Trainer(12, 200, TINY)
  for program in (lambda: trainer.init(x, key), lambda: trainer.evaluate(params, x),
                  lambda: trainer._reset(params, x, key), lambda: rqvae.assign_codes(params, _data(), TINY)):
    with pytest.raises(Exception, match="xla_no_such_option"):
      program()
  trainer.run_epochs(params, trainer.tx.init(params), x, key, 1)  # the epoch loop compiles without them


def test_the_epoch_loop_takes_the_device_loop_compiler_options(monkeypatch):
  x, key = jnp.array(_data()), jax.random.PRNGKey(0)
  params = rqvae.Trainer(12, 200, TINY).init(x, key).params
  monkeypatch.setattr(compilation, "DEVICE_LOOP_COMPILER_OPTIONS", {"xla_no_such_loop_option": True})
  trainer = rqvae.Trainer(12, 200, TINY)
  with pytest.raises(Exception, match="xla_no_such_loop_option"):
    trainer.run_epochs(params, trainer.tx.init(params), x, key, 1)
  trainer.evaluate(params, x)  # the one-off programs compile without them
