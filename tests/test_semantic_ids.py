"""Semantic-ID artifact, collision token and the LSH / random ID baselines."""
import os

import numpy as np
import pytest

from tiger_jax import semantic_ids as sid


def _asins(n):
  return [f"B{i:06d}" for i in range(n)]


def test_collision_token_numbers_bucket_members_in_catalogue_order():
  codes3 = np.array([[1, 2, 3], [0, 0, 0], [1, 2, 3], [1, 2, 4], [1, 2, 3]])
  codes4 = sid.add_collision_token(codes3)
  np.testing.assert_array_equal(codes4[:, :3], codes3)
  np.testing.assert_array_equal(codes4[:, 3], [0, 0, 1, 0, 2])
  assert codes4.dtype == np.int32


def test_collision_token_follows_given_order():
  codes3 = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3]])
  codes4 = sid.add_collision_token(codes3, order=np.array([2, 0, 1]))
  np.testing.assert_array_equal(codes4[:, 3], [1, 2, 0])


def test_bucket_larger_than_codebook_is_a_clear_error():
  codes3 = np.zeros((300, 3), np.int32)
  codes3[:, 0] = 7
  codes3 = np.concatenate([codes3, [[1, 1, 1]]])
  with pytest.raises(ValueError, match=r"300 items share the prefix \(7, 0, 0\)"):
    sid.add_collision_token(codes3)


def test_collision_token_rejects_out_of_range_codes():
  with pytest.raises(ValueError, match="must lie in"):
    sid.add_collision_token(np.array([[0, 256, 1]]))


def test_code_stats_on_hand_made_codes():
  codes = np.array([[0, 1, 2, 0], [0, 1, 2, 1], [3, 1, 2, 0]])
  s = sid.code_stats(codes, codebook_size=4)
  assert s["codebook_usage"] == [0.5, 0.25, 0.25, 0.5]
  assert s["unique_prefixes"] == 2
  assert s["largest_bucket"] == 2
  assert s["items_in_collisions"] == 2
  assert s["unique_ids"] == 3


def test_save_load_round_trip_and_hash(tmp_path):
  ids = sid.random_semantic_ids(_asins(50), seed=3)
  path = ids.save(str(tmp_path))
  assert os.path.basename(path) == sid.FILENAME
  back = sid.SemanticIds.load(str(tmp_path / sid.FILENAME))
  np.testing.assert_array_equal(back.codes, ids.codes)
  np.testing.assert_array_equal(back.asins, ids.asins)
  assert back.method == "random"
  assert back.stats == ids.stats
  assert back.content_hash() == ids.content_hash()
  # Stats do not enter the hash; codes do.
  back.stats["extra"] = 1
  assert back.content_hash() == ids.content_hash()
  codes = ids.codes.copy()
  codes[[0, 1]] = codes[[1, 0]]
  other = sid.SemanticIds(ids.asins, codes, "random", {})
  assert other.content_hash() != ids.content_hash()


def test_tables_map_both_ways():
  ids = sid.random_semantic_ids(_asins(20), seed=0)
  for i, a in enumerate(ids.asins):
    assert ids.sid_to_item(ids.item_to_sid(a)) == a
    assert ids.sid_to_index()[tuple(ids.codes[i])] == i
  assert ids.sid_to_item((255, 255, 255, 255)) in (None, *ids.asins.tolist())


def test_semantic_ids_reject_duplicates_and_bad_shapes():
  with pytest.raises(ValueError, match="not unique"):
    sid.SemanticIds(["a", "b"], [[1, 2, 3, 0], [1, 2, 3, 0]], "x", {})
  with pytest.raises(ValueError, match="duplicate asin"):
    sid.SemanticIds(["a", "a"], [[1, 2, 3, 0], [1, 2, 3, 1]], "x", {})
  with pytest.raises(ValueError, match="expected"):
    sid.SemanticIds(["a", "b"], [[1, 2, 3, 0]], "x", {})


def test_random_ids_unique_deterministic_and_in_range():
  a = sid.random_semantic_ids(_asins(5000), seed=1)
  b = sid.random_semantic_ids(_asins(5000), seed=1)
  c = sid.random_semantic_ids(_asins(5000), seed=2)
  np.testing.assert_array_equal(a.codes, b.codes)
  assert not np.array_equal(a.codes, c.codes)
  assert a.codes.shape == (5000, 4)
  assert len({tuple(r) for r in a.codes.tolist()}) == 5000
  assert a.codes.min() >= 0 and a.codes.max() < 256


def test_random_ids_with_forced_collisions_stay_unique():
  ids = sid.random_semantic_ids(_asins(600), seed=0, num_codes=1)
  assert len({tuple(r) for r in ids.codes.tolist()}) == 600
  assert ids.stats["items_in_collisions"] > 0


def test_lsh_codes_pack_hyperplane_signs():
  x = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
  codes = sid.lsh_codes(x, seed=4, num_bits=3, num_codes=2)
  planes = np.random.default_rng(4).standard_normal((6, 6)).astype(np.float32)
  bits = (x @ planes > 0).astype(int)
  expect = np.stack([bits[:, 0] * 4 + bits[:, 1] * 2 + bits[:, 2],
                     bits[:, 3] * 4 + bits[:, 4] * 2 + bits[:, 5]], 1)
  np.testing.assert_array_equal(codes, expect)


def test_lsh_ids_resolve_duplicates_on_the_fourth_code():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((400, 16)).astype(np.float32)
  x[10:30] = x[10]  # 20 identical embeddings -> identical LSH codes.
  ids = sid.lsh_semantic_ids(x, _asins(400), seed=0)
  assert len({tuple(r) for r in ids.codes.tolist()}) == 400
  raw = sid.lsh_codes(x, 0)
  np.testing.assert_array_equal(ids.codes[:, :3], raw[:, :3])  # Prefixes never move.
  assert tuple(ids.codes[10]) == tuple(raw[10])  # The first in catalogue order keeps its ID.
  assert ids.stats["items_reassigned"] >= 19
  again = sid.lsh_semantic_ids(x, _asins(400), seed=0)
  np.testing.assert_array_equal(ids.codes, again.codes)


def test_lsh_three_codes_plus_collision_token():
  x = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
  x[:5] = x[0]
  ids = sid.lsh_semantic_ids(x, _asins(300), seed=0, num_codes=3)
  np.testing.assert_array_equal(ids.codes[:5, 3], [0, 1, 2, 3, 4])
  assert len({tuple(r) for r in ids.codes.tolist()}) == 300


def test_lsh_bad_inputs():
  x = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
  bad = x.copy()
  bad[7, 2] = np.nan
  with pytest.raises(ValueError, match="NaN or infinite.*row 7"):
    sid.lsh_semantic_ids(bad, _asins(300), seed=0)
  with pytest.raises(ValueError, match="expected shape"):
    sid.lsh_semantic_ids(x[:, 0], _asins(300), seed=0)
  same = np.repeat(x[:1], 300, 0)
  with pytest.raises(ValueError, match="300 items share the prefix"):
    sid.lsh_semantic_ids(same, _asins(300), seed=0)


def test_loading_something_else_names_the_file_and_the_expected_table(tmp_path):
  """`cache_tasks --semantic_ids=embeddings.npy` used to fail with a TypeError that named neither."""
  from tasks import cache_tasks  # pylint: disable=g-import-not-at-top
  from conftest import write_processed  # pylint: disable=g-import-not-at-top
  embeddings = tmp_path / "embeddings.npy"
  np.save(embeddings, np.zeros((3, 8), np.float32))
  not_numpy = tmp_path / "notes.npz"
  not_numpy.write_text("plain text")
  other = tmp_path / "other.npz"
  np.savez(other, asins=np.array(["a"]))
  for path, message in [(embeddings, r"one array of shape \(3, 8\)"), (not_numpy, "not a numpy .npz"),
                        (other, r"lacks \['codes', 'method', 'stats'\]")]:
    with pytest.raises(ValueError, match=message) as e:
      sid.SemanticIds.load(str(path))
    assert str(path) in str(e.value) and "semantic_ids.npz" in str(e.value)
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    sid.SemanticIds.load(str(tmp_path / "missing.npz"))
  data_dir = write_processed(tmp_path / "data", {"u": ["a", "b", "c"]}, [{"asin": a, "title": a} for a in "abc"])
  with pytest.raises(ValueError, match="embeddings.npy: holds one array"):
    cache_tasks.main(["--tasks=tiger_idcheck", f"--output_cache_dir={tmp_path / 'cache'}", f"--data_dir={data_dir}",
                      f"--semantic_ids={embeddings}", "--backend=numpy"])
