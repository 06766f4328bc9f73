"""Cold start (paper Sec. 4.3): the split, leakage, IDs for unseen items, capped retrieval, Semantic_KNN."""
import dataclasses

import numpy as np
import pytest

from tiger_jax import cold_start
from tiger_jax import rqvae
from tiger_jax import semantic_ids as sid_lib
from tiger_jax.data import cold_start as split_lib
from tiger_jax.data import load_dataset
from tiger_jax.data.splits import leave_one_out
from tiger_jax.data.types import Sessions
from conftest import write_processed


def _dataset(tmp_path, num_users=60, num_items=40, seed=0):
  rng = np.random.default_rng(seed)
  items = [{"asin": f"A{i:03d}", "title": f"item {i}"} for i in range(num_items)]
  sequences = {f"u{u:03d}": [f"A{int(x):03d}" for x in rng.integers(0, num_items, 3 + u % 7)]
               for u in range(num_users)}
  return load_dataset(write_processed(tmp_path / "data", sequences, items))


# ----------------------------------------------------------------------------- the split


def test_split_is_a_seeded_function_of_the_test_targets(tmp_path):
  ds = _dataset(tmp_path)
  a = split_lib.choose_unseen_items(ds, 0.2, seed=3)
  b = split_lib.choose_unseen_items(ds, 0.2, seed=3)
  c = split_lib.choose_unseen_items(ds, 0.2, seed=4)
  targets = {ds.catalog.asins[s[-1]] for s in ds.sessions.sequences}
  assert a.unseen_asins == b.unseen_asins != c.unseen_asins
  assert set(a.unseen_asins) <= targets and a.num_test_items == len(targets)
  assert len(a.unseen_asins) == round(0.2 * len(targets))
  assert len(split_lib.choose_unseen_items(ds, 0.001).unseen_asins) == 1  # at least one
  # Saved and loaded, it is the same split; an edited file is refused.
  path = a.save(str(tmp_path / "split"))
  assert path.endswith(split_lib.FILENAME) or path.endswith("split")
  again = split_lib.ColdStartSplit.load(path)
  assert again.unseen_asins == a.unseen_asins and again.content_hash() == a.content_hash()
  text = open(path).read().replace(a.unseen_asins[0], "ZZZ", 1)
  open(path, "w").write(text)
  with pytest.raises(ValueError, match="content_hash"):
    split_lib.ColdStartSplit.load(path)
  with pytest.raises(ValueError, match="not in the catalogue"):
    dataclasses.replace(a, unseen_asins=("NOPE",)).unseen_mask(ds.catalog.asins)
  # The command line writes the same split.
  split_lib.main([f"--data_dir={tmp_path / 'data'}", f"--out={tmp_path / 'cli.json'}", "--fraction=0.2",
                  "--seed=3"])
  assert split_lib.ColdStartSplit.load(str(tmp_path / "cli.json")).unseen_asins == a.unseen_asins


def test_excluded_items_leave_train_and_validation_by_hand():
  s = Sessions(["u", "v"], [[10, 11, 12, 13, 14, 15], [20, 12, 21, 22]])
  train = leave_one_out(s, "train", exclude_items=[12])
  # u's prefix 10 11 12 13 loses 12 -> 10 11 13; v's prefix 20 12 -> 20 (no example left).
  assert train.target.tolist() == [11, 13] and [h.tolist() for h in train.history] == [[10], [10, 11]]
  val = leave_one_out(s, "validation", exclude_items=[12])
  assert val.target.tolist() == [14, 21] and [h.tolist() for h in val.history] == [[10, 11, 13], [20]]
  assert leave_one_out(s, "validation", exclude_items=[14]).target.tolist() == [21]  # target unseen
  test = leave_one_out(s, "test", exclude_items=[12, 14])  # test keeps everything
  assert [h.tolist() for h in test.history] == [[10, 11, 12, 13, 14], [20, 12, 21]]
  plain = leave_one_out(s, "train")
  assert leave_one_out(s, "train", exclude_items=[]).target.tolist() == plain.target.tolist()


def test_no_unseen_item_in_any_training_or_validation_example(tmp_path):
  ds = _dataset(tmp_path)
  split = split_lib.choose_unseen_items(ds, 0.3, seed=0)
  unseen = set(split.unseen_indices(ds.catalog.asins).tolist())
  assert unseen
  for name in ("train", "validation"):
    ex = leave_one_out(ds.sessions, name, exclude_items=unseen)
    assert not unseen & set(ex.target.tolist())
    assert not unseen & {i for h in ex.history for i in h.tolist()}
    assert all(len(h) for h in ex.history)
  test, full = leave_one_out(ds.sessions, "test", exclude_items=unseen), leave_one_out(ds.sessions, "test")
  assert test.target.tolist() == full.target.tolist() and unseen & set(test.target.tolist())


# ----------------------------------------------------------------------------- IDs of unseen items


def test_collision_tokens_number_seen_items_first():
  codes3 = np.array([[1, 1, 1], [1, 1, 1], [2, 2, 2], [1, 1, 1], [2, 2, 2]])
  unseen = np.array([True, False, False, False, True])
  codes4 = sid_lib.add_collision_token(codes3, order=sid_lib.seen_first_order(unseen))
  # Bucket (1,1,1): seen rows 1, 3 take 0, 1; unseen row 0 takes 2. Bucket (2,2,2): seen 2 -> 0, unseen 4 -> 1.
  assert codes4[:, 3].tolist() == [2, 0, 0, 1, 1]


def test_rqvae_fits_on_seen_items_and_codes_unseen_ones_with_the_trained_model():
  x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
  asins = [f"A{i}" for i in range(64)]
  unseen = np.zeros(64, bool)
  unseen[[3, 10, 17, 30, 63]] = True
  cfg = rqvae.RQVAEConfig(hidden_dims=(16,), latent_dim=4, codebook_size=16, num_epochs=4, batch_size=32,
                          kmeans_iters=3, epochs_per_dispatch=4, dead_code_reset_every=0)
  ids, result = sid_lib.rqvae_semantic_ids(x, asins, cfg, unseen_mask=unseen)
  assert result["stats"]["num_items"] == 59 and ids.stats["num_items"] == 64  # fit on seen items only
  np.testing.assert_array_equal(ids.codes[:, :3], rqvae.assign_codes(result["params"], x, cfg))
  assert len({tuple(r) for r in ids.codes.tolist()}) == 64  # unique, so no unseen ID equals a seen one
  seen_only = sid_lib.add_collision_token(ids.codes[~unseen, :3], 16)
  np.testing.assert_array_equal(ids.codes[~unseen], seen_only)  # seen IDs ignore the held-out items
  assert ids.stats["cold_start"]["num_unseen"] == 5


# ----------------------------------------------------------------------------- retrieval

# A hand-made catalogue: (codes, unseen?)
CODES = np.array([[0, 0, 0, 0],   # 0 seen
                  [0, 0, 0, 1],   # 1 unseen, bucket of item 0
                  [0, 0, 0, 2],   # 2 unseen, bucket of item 0
                  [1, 0, 0, 0],   # 3 seen
                  [1, 0, 0, 1],   # 4 seen
                  [2, 0, 0, 0],   # 5 unseen, shares no seen prefix
                  [3, 0, 0, 0]])  # 6 seen
UNSEEN = np.array([False, True, True, False, False, True, False])


def test_max_unseen_rounding():
  assert [cold_start.max_unseen(k, 0.1) for k in (1, 9, 10, 19, 20)] == [0, 0, 1, 1, 2]
  assert cold_start.max_unseen(10, 0.3) == 3  # 10 * 0.3 = 2.9999999999999996 in floating point
  assert cold_start.max_unseen(1, 0.1, "ceil") == 1 and cold_start.max_unseen(5, 0.1, "round") == 1
  with pytest.raises(ValueError):
    cold_start.max_unseen(10, 1.5)


def test_candidates_and_capped_top_k_by_hand():
  beams = CODES[[[3, 0, 6], [0, 4, 3]]]  # user A: items 3, 0, 6; user B: items 0, 4, 3
  cand = cold_start.tiger_candidates(beams, np.ones((2, 3), bool), CODES, UNSEEN)
  assert cand.tolist() == [[3, 0, 1, 2, 6], [0, 1, 2, 4, 3]]
  top = cold_start.top_k_with_unseen_cap
  assert top(cand, UNSEEN, 3, 0.0).tolist() == [[3, 0, 6], [0, 4, 3]]
  assert top(cand, UNSEEN, 3, 0.5).tolist() == [[3, 0, 1], [0, 1, 4]]  # floor(1.5) = 1 unseen
  assert top(cand, UNSEEN, 4, 0.5).tolist() == [[3, 0, 1, 2], [0, 1, 2, 4]]
  assert top(cand, UNSEEN, 7, 0.0).tolist() == [[3, 0, 6, -1, -1, -1, -1], [0, 4, 3, -1, -1, -1, -1]]
  target = np.array([2, 1])  # both unseen
  assert cold_start.recall(cand, target, UNSEEN, 3, 0.5) == 0.5
  assert cold_start.recall(cand, target, UNSEEN, 4, 0.5) == 1.0
  assert cold_start.recall(cand, target, UNSEEN, 4, 0.25) == 0.5
  assert cold_start.recall(cand, target, UNSEEN, 3, 0.1, rounding="ceil") == 0.5
  # Dead beams and IDs outside the seen catalogue add no seen item, but their bucket's unseen items count.
  odd = np.array([[[0, 0, 0, 9], [3, 0, 0, 0], [1, 0, 0, 0]]])
  assert cold_start.tiger_candidates(odd, np.array([[True, True, False]]), CODES, UNSEEN).tolist() == [[1, 2, 6]]
  tables = cold_start.recall_tables({"TIGER": cand}, target, UNSEEN, ks=(3, 4), epsilons=(0.0, 0.5),
                                    epsilon_for_k=0.5, k_for_epsilon=4)
  assert tables["recall_at_k"]["TIGER"]["unseen_targets"] == {"3": 0.5, "4": 1.0}
  assert tables["recall_vs_epsilon"]["TIGER"]["all"] == {"0": 0.0, "0.5": 1.0}
  assert tables["num_users"] == {"unseen_targets": 2, "all": 2}


def test_semantic_knn_ranks_by_cosine_to_the_last_item():
  angles = np.deg2rad([0, 10, 80, 30, 180, 20])
  emb = np.stack([np.cos(angles), np.sin(angles)], 1) * np.array([[1], [2], [1], [5], [1], [3]])
  cand = cold_start.knn_candidates(emb, np.array([0, 4, -1]), num_candidates=4, batch_size=2)
  assert cand[0].tolist() == [1, 5, 3, 2]  # cosine, so the vectors' lengths do not matter; 0 itself left out
  assert cand[1].tolist() == [2, 3, 5, 1]
  assert cand[2].tolist() == [-1, -1, -1, -1]
  # All items are candidates, unseen ones too; the cap then applies as for TIGER.
  unseen = np.array([False, True, False, False, False, False])
  assert cold_start.top_k_with_unseen_cap(cand[:1], unseen, 2, 0.0).tolist() == [[5, 3]]


def test_last_history_item_is_read_off_the_encoder_tokens():
  trie = cold_start.decoding.SemanticIdTrie.from_codes(CODES)
  tok = lambda i: (2 + 256 * np.arange(4) + CODES[i]).tolist()  # noqa: E731
  rows = np.zeros((3, 13), np.int32)
  rows[0, :9] = [1030] + tok(3) + tok(6)
  rows[1, :5] = [1030] + tok(5)
  rows[2, :1] = [1030]
  assert cold_start.last_history_items(rows, trie).tolist() == [6, 5, -1]
