"""tiger_jax.collaborative: co-occurrence counts, PPMI and SVD vectors against hand-computed cases, then the stage."""
import json
import math
import os

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import write_clustered_embeddings, write_processed
from tiger_jax import collaborative
from tiger_jax.data import load_dataset

ITEMS = [{"asin": f"I{i}", "title": f"item {i}"} for i in range(8)]


def dataset_of(tmp_path, sequences):
  return load_dataset(write_processed(tmp_path / "data", sequences, ITEMS))


def test_cooccurrence_is_symmetric_decayed_and_leaves_the_held_out_items_out(tmp_path):
  dataset = dataset_of(tmp_path, {"u0": ["I0", "I1", "I2", "I3", "I4"], "u1": ["I5", "I6", "I7"]})
  idx = {a: i for i, a in enumerate(dataset.catalog.asins)}
  c = collaborative.cooccurrence(dataset, holdout=1, window=2, decay=0.5).toarray()
  np.testing.assert_array_equal(c, c.T)
  # u0's prefix I0..I3: neighbours at lag 1 count 1, at lag 2 count 0.5; I4 (held out) counts nothing.
  assert c[idx["I0"], idx["I1"]] == 1.0 and c[idx["I2"], idx["I3"]] == 1.0
  assert c[idx["I0"], idx["I2"]] == 0.5 and c[idx["I1"], idx["I3"]] == 0.5
  assert c[idx["I0"], idx["I3"]] == 0.0 and not c[idx["I4"]].any()
  # u1's prefix I5 I6 (I7 held out) gives a single pair.
  assert c[idx["I5"], idx["I6"]] == 1.0 and not c[idx["I7"]].any()
  assert not np.diag(c).any()
  # The default holdout 2 also keeps the validation target (I3, I6) out.
  c2 = collaborative.cooccurrence(dataset).toarray()
  assert not c2[idx["I3"]].any() and not c2[idx["I6"]].any() and c2[idx["I5"]].sum() == 0


def test_ppmi_matches_hand_computed_values_and_drops_negative_associations():
  # a-b 10, a-c 1, c-d 5: row sums a 11, b 10, c 6, d 5; total 32.
  counts = np.zeros((4, 4))
  for i, j, v in [(0, 1, 10), (0, 2, 1), (2, 3, 5)]:
    counts[i, j] = counts[j, i] = v
  p = collaborative.ppmi(sp.csr_matrix(counts)).toarray()
  assert p[0, 1] == pytest.approx(math.log(10 * 32 / (11 * 10)))
  assert p[2, 3] == pytest.approx(math.log(5 * 32 / (6 * 5)))
  assert p[0, 2] == 0.0 and p[2, 0] == 0.0  # log(32 / 66) < 0
  np.testing.assert_allclose(p, p.T)
  with pytest.raises(ValueError, match="no co-occurring items"):
    collaborative.ppmi(sp.csr_matrix((3, 3)))


def test_svd_vectors_separate_disconnected_groups_and_are_deterministic():
  m = np.zeros((7, 7))
  for group in ([0, 1, 2], [3, 4, 5]):  # two cliques, item 6 alone
    for i in group:
      for j in group:
        m[i, j] = 1.0 if i != j else 0.0
  m[3:6, 3:6] *= 1.5  # singular values 3, 1.5, 1.5 and 2, 1, 1: the top two distinct, so unique up to sign
  v = collaborative.svd_vectors(sp.csr_matrix(m), dim=2)
  assert v.shape == (7, 2) and v.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(v[:6], axis=1), 1.0, atol=1e-5)
  assert not v[6].any()
  cos = v[:6] @ v[:6].T
  assert cos[0, 1] == pytest.approx(1.0, abs=1e-5) and cos[3, 5] == pytest.approx(1.0, abs=1e-5)
  assert cos[0, 3] == pytest.approx(0.0, abs=1e-5)
  np.testing.assert_array_equal(v, collaborative.svd_vectors(sp.csr_matrix(m), dim=2))
  with pytest.raises(ValueError, match="dim < number of items"):
    collaborative.svd_vectors(sp.csr_matrix(m), dim=7)


def test_stage_writes_text_beside_weighted_cooccurrence_vectors(tmp_path):
  sequences = {f"u{u}": [f"I{(u + k) % 8}" for k in range(6)] for u in range(8)}
  data_dir = write_processed(tmp_path / "data", sequences, ITEMS)
  asins = load_dataset(data_dir).catalog.asins
  text = write_clustered_embeddings(str(tmp_path / "text"), asins, np.random.default_rng(0), dim=5)
  out = tmp_path / "cf"
  collaborative.main([f"--data_dir={data_dir}", f"--text_dir={tmp_path / 'text'}", f"--work_dir={out}",
                      "--gin.fuse_collaborative.dim=3", "--gin.fuse_collaborative.weight=0.5"])
  fused = np.load(out / "embeddings.npy")
  info = json.load(open(out / "embeddings.json"))
  assert fused.shape == (8, 8) and info["dim"] == 8 and info["asins"] == list(asins)
  np.testing.assert_array_equal(fused[:, :5], text)
  np.testing.assert_allclose(np.linalg.norm(fused[:, 5:], axis=1), 0.5, atol=1e-5)
  assert info["collaborative"] == {"holdout": 2, "window": 3, "decay": 0.5, "dim": 3, "weight": 0.5}
  assert info["model_name"] == "text+cooccurrence" and info["items_without_cooccurrence"] == 0
  # The Semantic-ID stage reads the fused file like the text one.
  from tiger_jax import semantic_ids  # pylint: disable=g-import-not-at-top
  x, order = semantic_ids.load_embeddings(str(out))
  assert x.shape == (8, 8) and list(order) == list(asins)


def test_stage_refuses_embeddings_of_another_catalogue_and_overwriting_the_text(tmp_path):
  dataset = dataset_of(tmp_path, {"u0": ["I0", "I1", "I2", "I3"]})
  text_dir = str(tmp_path / "text")
  write_clustered_embeddings(text_dir, [f"X{i}" for i in range(8)], np.random.default_rng(0))
  with pytest.raises(ValueError, match=r"embeddings\.json: its item order is not"):
    collaborative.fuse_collaborative(dataset, text_dir, str(tmp_path / "cf"), dim=1)
  write_clustered_embeddings(text_dir, dataset.catalog.asins, np.random.default_rng(0))
  with pytest.raises(ValueError, match="would overwrite the text ones"):
    collaborative.fuse_collaborative(dataset, text_dir, text_dir, dim=1)
  with pytest.raises(ValueError, match="weight must be >= 0"):
    collaborative.fuse_collaborative(dataset, text_dir, str(tmp_path / "cf"), weight=-1.0)
  assert not os.path.exists(tmp_path / "cf")


def test_collaborative_recipe_fuses_inside_the_semantic_id_stage(tmp_path):
  """gin/rqvae/collaborative.gin: the stage reads the text embeddings, fuses them, and its IDs follow the fusion."""
  import gin  # pylint: disable=g-import-not-at-top
  from tiger_jax import semantic_ids  # pylint: disable=g-import-not-at-top
  sequences = {f"u{u}": [f"I{(u + k) % 8}" for k in range(6)] for u in range(8)}
  data_dir = write_processed(tmp_path / "data", sequences, ITEMS)
  asins = load_dataset(data_dir).catalog.asins
  write_clustered_embeddings(str(tmp_path / "text"), asins, np.random.default_rng(0), dim=5)
  common = [f"--embeddings_dir={tmp_path / 'text'}", "--gin_file=gin/rqvae/random.gin"]
  try:
    with pytest.raises(ValueError, match="needs the dataset: pass --data_dir"):
      semantic_ids.main(common + [f"--work_dir={tmp_path / 'ids'}", "--gin.make_semantic_ids.collaborative=True"])
  finally:
    gin.clear_config(clear_constants=True)
  try:
    semantic_ids.main(common + [f"--work_dir={tmp_path / 'ids'}", f"--data_dir={data_dir}",
                                "--gin.make_semantic_ids.collaborative=True", "--gin.fuse_collaborative.dim=3"])
  finally:
    gin.clear_config(clear_constants=True)
  ids = semantic_ids.SemanticIds.load(str(tmp_path / "ids"))
  assert ids.stats["collaborative"]["dim"] == 3 and list(ids.asins) == list(asins)
  assert not os.path.exists(tmp_path / "ids" / "embeddings.npy")  # fused in memory, text left as it was
