"""benchmarks/peer_cornac.py: the split cornac gets, the curve arithmetic, and (with cornac installed) a tiny run."""
from __future__ import annotations

import gzip
import json
import os
import signal
import textwrap
import time

import numpy as np
import pytest

from conftest import write_category_walk_dataset, write_clustered_embeddings

from benchmarks import peer_cornac
from tiger_jax.data import load_dataset
from tiger_jax.data import splits as splits_lib


def _points(*pairs):
  return [{"wall_s": w, "ndcg@10": n} for w, n in pairs]


def test_time_to_target_is_the_first_validation_at_or_above_it():
  curve = _points((10.0, 0.01), (20.0, 0.03), (30.0, 0.02), (40.0, 0.05))
  assert peer_cornac.time_to_target(curve, 0.03) == 20.0
  assert peer_cornac.time_to_target(curve, 0.025) == 20.0  # no interpolation between validations
  assert peer_cornac.time_to_target(curve, 0.05) == 40.0
  assert peer_cornac.time_to_target(curve, 0.06) is None
  assert peer_cornac.time_to_target(list(reversed(curve)), 0.02) == 20.0


def test_common_target_is_the_lower_best_unless_given():
  curves = {"tiger_jax": _points((1.0, 0.02), (2.0, 0.04)), "cornac": _points((1.0, 0.03), (5.0, 0.025))}
  assert peer_cornac.common_target(curves, None) == 0.03
  assert peer_cornac.common_target(curves, 0.01) == 0.01
  assert peer_cornac.common_target({"tiger_jax": curves["tiger_jax"], "cornac": []}, None) is None


def test_compare_reports_both_ratios():
  report = {"tiger_jax": {"points": _points((10.0, 0.02), (20.0, 0.04)), "examples_per_s_steady": 3000.0,
                          "examples_per_s_wall": 2000.0},
            "cornac": {"points": _points((50.0, 0.01), (100.0, 0.03)), "examples_per_s_steady": 1000.0,
                       "examples_per_s_wall": 1000.0}}
  cmp = peer_cornac.compare(report, None)
  assert cmp["target_ndcg@10"] == 0.03
  assert cmp["seconds_to_target"] == {"tiger_jax": 20.0, "cornac": 100.0}
  assert cmp["seconds_to_target_ratio"] == 5.0
  assert cmp["examples_per_s_steady_ratio"] == 3.0 and cmp["examples_per_s_wall_ratio"] == 2.0
  assert peer_cornac.compare({"tiger_jax": report["tiger_jax"]}, None)["target_ndcg@10"] is None


def test_merge_keeps_the_other_side_of_the_same_data_only(tmp_path):
  path = tmp_path / "peer_cornac.json"
  earlier = {"data": {"users": 5}, "semantic_ids": {"mode": "identical"}, "settings": {"batch_size": 256},
             "tiger_jax": {"points": [], "run": {"date": "d", "device_kind": "NVIDIA H100", "jax": "0.1"}},
             "cornac": {"points": ["old"]}}
  path.write_text(json.dumps(earlier))
  report = {"data": {"users": 5}, "semantic_ids": {"mode": "identical"}, "settings": {"batch_size": 256},
            "device_kind": "cpu"}
  peer_cornac.merge_other_side(report, str(path), ["cornac"])
  assert report["tiger_jax"] == earlier["tiger_jax"] and "cornac" not in report  # cornac runs now
  assert report["device_kind"] == "NVIDIA H100"  # the kept side's card
  for key, value in (("data", {"users": 6}), ("settings", {"batch_size": 128})):
    with pytest.raises(SystemExit, match="--merge"):
      peer_cornac.merge_other_side(dict(report, **{key: value}), str(path), ["cornac"])


def test_eval_users_are_whole_validation_batches():
  assert peer_cornac.num_eval_users(22363, 2048, 256) == (2048, 8)
  assert peer_cornac.num_eval_users(22363, 2000, 256) == (2048, 8)  # rounded up to what tiger_jax scores
  assert peer_cornac.num_eval_users(22363, 0, 256) == (22363, None)
  assert peer_cornac.num_eval_users(100, 128, 64) == (100, None)  # past the end: every user


def test_cornac_rows_spell_the_leave_one_out_split(tiny_dataset_dir):
  dataset = load_dataset(tiny_dataset_dir)
  asins, sessions = dataset.catalog.asins, dataset.sessions
  rows = peer_cornac.cornac_rows(sessions, asins, eval_users=3)
  train = peer_cornac.sequences_by_user(rows["train"])
  # Every prefix of each training sequence, history capped at 20, is exactly tiger_jax's training split.
  examples = [(sessions.users.index(user), seq[max(0, t - 20):t], seq[t])
              for user, seq in train.items() for t in range(1, len(seq))]
  split = splits_lib.leave_one_out(sessions, "train")
  assert examples == [(int(u), [asins[i] for i in h], asins[t])
                      for u, h, t in zip(split.user_index, split.history, split.target)]
  # Validation: the first users' s[0..n-2]; its last item is the target, the 20 before it the history.
  val = peer_cornac.sequences_by_user(rows["validation"])
  assert list(val) == sessions.users[:3]
  split = splits_lib.leave_one_out(sessions, "validation")
  for k, seq in enumerate(val.values()):
    assert seq[-1] == asins[split.target[k]] and seq[:-1][-20:] == [asins[i] for i in split.history[k]]
  assert peer_cornac.sequences_by_user(rows["test"]) == {
      u: [asins[i] for i in s] for u, s in zip(sessions.users, sessions.sequences)}
  for split_rows in rows.values():  # positions rise within a user: cornac keeps row order as time order
    for user in {r[0] for r in split_rows}:
      assert [r[3] for r in split_rows if r[0] == user] == list(range(sum(r[0] == user for r in split_rows)))


def test_subset_keeps_the_first_users_and_only_their_items(tiny_dataset_dir, tmp_path):
  out = peer_cornac.subset_data_dir(tiny_dataset_dir, str(tmp_path / "sub"), max_users=2)
  full, sub = load_dataset(tiny_dataset_dir), load_dataset(out)
  assert sub.sessions.users == full.sessions.users[:2]
  used = sorted({full.catalog.asins[i] for s in full.sessions.sequences[:2] for i in s},
                key=full.catalog.asins.index)
  assert sub.catalog.asins == used  # catalogue order kept
  with gzip.open(os.path.join(out, "items.jsonl.gz"), "rt") as f:
    assert len(f.read().splitlines()) == len(used)


def test_embeddings_and_ids_are_read_in_catalogue_order(tmp_path):
  asins = ["B", "A", "C"]
  np.save(tmp_path / "embeddings.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
  (tmp_path / "embeddings.json").write_text(json.dumps({"asins": ["A", "B", "C"]}))
  np.testing.assert_array_equal(peer_cornac.load_embeddings(str(tmp_path), asins), [[2, 3], [0, 1], [4, 5]])
  np.savez(tmp_path / "ids.npz", asins=np.array(["C", "A", "B", "D"]), codebook_size=np.int32(8),
           codes=np.array([[1, 2, 3, 0], [1, 2, 3, 1], [4, 0, 0, 0], [5, 5, 5, 0]]))
  codes, size = peer_cornac.load_semantic_ids(str(tmp_path / "ids.npz"), asins)
  assert size == 8 and codes.tolist() == [[4, 0, 0, 0], [1, 2, 3, 1], [1, 2, 3, 0]]
  with pytest.raises(ValueError, match="no Semantic ID for 1"):
    peer_cornac.load_semantic_ids(str(tmp_path / "ids.npz"), asins + ["E"])


def test_tiger_curve_takes_validation_time_out_of_the_wall_time():
  log = textwrap.dedent("""\
      2026-12-05 10:00:00,000 INFO tiger_jax.train] train split: 120 examples, batch 16, 8 steps per epoch, encoder buckets [81]
      2026-12-05 10:00:10,000 INFO tiger_jax.train] compiled the 4-step loop for encoder length 81 in 7.3s
      2026-12-05 10:00:20,000 INFO tiger_jax.train] eval at step 8 (5.0s): validation/loss 7.0 validation/ndcg@10 0.1611 validation/recall@10 0.3125 | best validation/ndcg@10 0.1611 @ 8
      2026-12-05 10:00:30,000 INFO tiger_jax.train] eval at step 16 (2.0s): validation/loss 6.0 validation/ndcg@10 0.1862 validation/recall@10 0.375 | best
      2026-12-05 10:00:31,000 INFO tiger_jax.train] trained steps 0..16 in 31s: 4.0 steps/s while training (250.00 ms/step); 20s compiling, evaluating and checkpointing
      """)
  curve = peer_cornac.tiger_curve(log, batch_size=16)
  assert [(p["step"], p["examples"], p["wall_s"], p["ndcg@10"]) for p in curve["points"]] == [
      (8, 128, 15.0, 0.1611), (16, 256, 23.0, 0.1862)]  # 20 - 5 and 30 - 2 - 5
  assert curve["examples_per_s_steady"] == 64.0 and curve["examples_per_s_wall"] == pytest.approx(256 / 23)
  assert curve["eval_seconds"] == 7.0


def test_tiger_curve_takes_exact_metrics_from_metrics_jsonl(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps({"step": 8, "train/loss": 7.5}) + "\n" + json.dumps(
      {"step": 8, "validation/ndcg@10": 0.16113456, "validation/recall@10": 0.3125}) + "\n")
  exact = peer_cornac.read_metrics_jsonl(str(path))
  assert list(exact) == [8]
  log = ("2026-12-05 10:00:00,000 INFO tiger_jax.train] train split: 120 examples\n"
         "2026-12-05 10:00:20,000 INFO tiger_jax.train] eval at step 8 (5.0s): validation/ndcg@10 0.1611 | best\n"
         "2026-12-05 10:00:30,000 INFO tiger_jax.train] eval at step 16 (2.0s): validation/ndcg@10 0.1862 | best\n")
  curve = peer_cornac.tiger_curve(log, batch_size=16, exact=exact)
  assert [p["ndcg@10"] for p in curve["points"]] == [0.16113456, 0.1862]
  assert peer_cornac.read_metrics_jsonl(str(tmp_path / "none.jsonl")) == {}


def test_cornac_arguments_are_literals():
  assert peer_cornac.parse_cornac_args(["d_model=64", "tokenizer=rkmeans", "dropout=0.2", "rqvae_hidden_dims=(8,)"]
                                       ) == {"d_model": 64, "tokenizer": "rkmeans", "dropout": 0.2,
                                             "rqvae_hidden_dims": (8,)}
  with pytest.raises(ValueError, match="NAME=VALUE"):
    peer_cornac.parse_cornac_args(["d_model"])


# ----------------------------------------------------------------------------------------------------------
# With cornac installed.


def test_cornac_trains_and_validates_on_tiger_jax_examples(tiny_dataset_dir):
  pytest.importorskip("cornac")
  pytest.importorskip("torch")
  from cornac.data import FeatureModality  # pylint: disable=g-import-not-at-top
  from cornac.eval_methods import NextItemEvaluation  # pylint: disable=g-import-not-at-top
  from cornac.models.seq_utils import session_seq_iter  # pylint: disable=g-import-not-at-top
  dataset = load_dataset(tiny_dataset_dir)
  asins, sessions = dataset.catalog.asins, dataset.sessions
  rows = peer_cornac.cornac_rows(sessions, asins, eval_users=len(sessions))
  emb = np.eye(len(asins), dtype=np.float32)
  method = NextItemEvaluation.from_splits(train_data=rows["train"], val_data=rows["validation"],
                                          test_data=rows["test"], fmt="USIT", exclude_unknowns=False,
                                          item_feature=FeatureModality(features=emb, ids=list(asins)))
  name = {i: a for a, i in method.global_iid_map.items()}
  pad = len(name)
  got = []
  for _, hist, target in session_seq_iter(method.train_set, pad_index=pad, batch_size=1000, max_len=20,
                                          n_sample=0, shuffle=False):
    got += [([name[i] for i in h if i != pad], name[t]) for h, t in zip(hist.tolist(), target.tolist())]
  split = splits_lib.leave_one_out(sessions, "train")
  want = [([asins[i] for i in h], asins[t]) for h, t in zip(split.history, split.target)]
  assert sorted(got) == sorted(want)

  codes = np.array([[i % 3, i % 2, 0, 0] for i in range(len(asins))])
  codes[:, 3] = [sum((codes[j, :3] == codes[i, :3]).all() for j in range(i)) for i in range(len(asins))]
  model = peer_cornac.timed_tiger_class()(val_sample=None)
  model.given_codes, model.given_codebook_size = codes, 4
  model._build_semantic_ids(None)  # pylint: disable=protected-access
  assert model.level_sizes == [4, 4, 4, int(codes[:, 3].max()) + 1]
  assert all(model.sid_to_item[tuple(c)] == i for i, c in enumerate(codes.tolist()))
  assert model.prefix_children[0][()].tolist() == [0, 1, 2]
  assert model.prefix_children[3][(0, 0, 0)].tolist() == sorted(codes[(codes[:, :3] == 0).all(1), 3].tolist())
  val = model._val_sessions(method.val_set)  # pylint: disable=protected-access
  split = splits_lib.leave_one_out(sessions, "validation")
  assert sorted((tuple(name[i] for i in s[:-1][-20:]), name[s[-1]]) for _, s in val) == sorted(
      (tuple(asins[i] for i in h), asins[t]) for h, t in zip(split.history, split.target))


TINY_GIN = "include 'tests/tiny_t5.gin'\n"


def test_tiny_run_end_to_end(tmp_path, monkeypatch):
  pytest.importorskip("cornac")
  torch = pytest.importorskip("torch")
  from tiger_jax import semantic_ids  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  data_dir, asins = write_category_walk_dataset(tmp_path / "data", rng, num_items=24, num_users=40,
                                                length_cycle=5, user_digits=2)
  emb_dir = tmp_path / "emb"
  write_clustered_embeddings(str(emb_dir), asins, rng)
  ids = semantic_ids.random_semantic_ids(asins, seed=0).save(str(tmp_path / "semantic_ids.npz"))
  gin_file = tmp_path / "tiny.gin"
  gin_file.write_text(TINY_GIN)
  out = tmp_path / "out"
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  previous, threads = signal.getsignal(signal.SIGTERM), torch.get_num_threads()
  torch.set_num_threads(1)  # the test's cornac model is tiny: one thread is faster than two on shared cores
  start = time.time()
  try:
    peer_cornac.main([f"--out_dir={out}", f"--data_dir={data_dir}", f"--embeddings_dir={emb_dir}",
                      f"--semantic_ids={ids}", "--max_users=32", "--eval_users=16", "--eval_batch_size=16",
                      "--batch_size=16", "--cornac_epochs=1", "--eval_every_epochs=1", "--tiger_steps=4",
                      f"--tiger_gin={gin_file}", "--tiger_task=tiger_peertiny",
                      "--cornac_arg=num_enc_layers=1", "--cornac_arg=num_dec_layers=1", "--cornac_arg=d_ff=64"])
  finally:
    signal.signal(signal.SIGTERM, previous)
    torch.set_num_threads(threads)
  seconds = time.time() - start
  report = json.load(open(out / "peer_cornac.json"))
  assert report["semantic_ids"]["mode"] == "identical" and report["data"]["users"] == 32
  assert report["data"]["eval_users"] == 16 and report["git_revision"] and report["command"].startswith("python")
  tiger, peer = report["tiger_jax"], report["cornac"]
  assert tiger["complete"] and [p["step"] for p in tiger["points"]] == [4]
  assert tiger["run"]["command"] == peer["run"]["command"] == report["command"]
  assert "--gin.BATCH_SIZE=16" in tiger["stages"]["train"]["command"]
  assert [p["epoch"] for p in peer["points"]] == [1] and peer["points"][0]["users"] == 16
  assert peer["constructor_args"]["batch_size"] == 16 and peer["tokenizer_seconds"] < 1.0
  assert peer["examples_per_epoch"] == report["data"]["train_examples"]
  cmp = report["comparison"]
  assert cmp["examples_per_s_steady_ratio"] > 0 and cmp["seconds_to_target_ratio"] > 0
  assert cmp["target_ndcg@10"] == min(cmp["best_ndcg@10"].values())
  print(f"tiny side-by-side run: {seconds:.1f} s")


def test_a_cornac_fit_reports_its_curve_after_every_validation(tmp_path):
  """A fit cut off later keeps what on_progress last received: the points so far, marked incomplete."""
  pytest.importorskip("cornac")
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  data_dir, asins = write_category_walk_dataset(tmp_path / "data", rng, num_items=24, num_users=24,
                                                length_cycle=5, user_digits=2)
  dataset = load_dataset(str(data_dir))
  codes = np.array([[i % 3, i % 2, i % 5, 0] for i in range(len(asins))])
  codes[:, 3] = [sum((codes[j, :3] == codes[i, :3]).all() for j in range(i)) for i in range(len(asins))]
  seen = []
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    final = peer_cornac.run_cornac(
        dataset=dataset, embeddings=np.eye(len(asins), dtype=np.float32), codes=codes, codebook_size=5,
        eval_users=8, epochs=2, eval_every=1, batch_size=16, device="cpu", seed=0,
        overrides={"num_enc_layers": 1, "num_dec_layers": 1, "d_ff": 32}, on_progress=seen.append)
  finally:
    torch.set_num_threads(threads)
  assert [len(p["points"]) for p in seen] == [1, 2] and not any(p["complete"] for p in seen)
  assert seen[0]["examples_per_s_wall"] == pytest.approx(
      seen[0]["points"][0]["examples"] / seen[0]["points"][0]["wall_s"])
  assert "train_seconds" not in seen[-1] and final["complete"] and final["train_seconds"] > 0
  assert [p["epoch"] for p in final["points"]] == [1, 2] and final["points"][0]["users"] == 8
