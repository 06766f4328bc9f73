"""Baselines: popularity by hand, SASRec's causality and padding, its training pairs against TIGER's, a
learnable pattern, and the CLI run, resumed and re-run (one run in a subprocess without TensorFlow/seqio)."""
import dataclasses
import gzip
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import write_processed
from tiger_jax.baselines import popularity
from tiger_jax.baselines import sasrec
from tiger_jax.baselines import sequences
from tiger_jax.baselines import transitions
from tiger_jax.baselines import sasrec_model
from tiger_jax.baselines.sasrec_model import SASRec, SASRecConfig, next_item_loss
from tiger_jax import metrics
from tiger_jax.data import splits
from tiger_jax.data.types import Sessions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRIC_KEYS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


# ----------------------------------------------------------------------------------------------------------
# Popularity.


def test_popularity_ranks_by_hand_and_counts_no_held_out_item(tmp_path):
  items = [{"asin": a, "title": a} for a in "ABCDEF"]  # catalogue indices A0 B1 C2 D3 E4 F5
  data_dir = write_processed(tmp_path / "pop", {
      "u0": list("ABACD"),  # training prefix A B A; validation C, test D
      "u1": list("BAEF"),   # prefix B A; validation E, test F
      "u2": list("ACBE"),   # prefix A C; validation B, test E
  }, items)
  dataset = sequences.load_dataset(data_dir)
  counts = sequences.training_counts(dataset.sessions, len(dataset.catalog))
  # E is a validation and a test target twice over, D and F test targets: none of them may be counted.
  assert counts.tolist() == [4, 2, 1, 0, 0, 0]
  # Scores 4 2 1 0 0 0: A rank 0, B 1, C 2; D, E, F tie at 0 and a tie counts against the target: rank 5.
  val_target = splits.leave_one_out(dataset.sessions, "validation").target
  assert popularity.popularity_ranks(counts, val_target).tolist() == [2, 5, 1]
  results = popularity.evaluate(dataset, ks=(2, 5))
  assert results["validation"]["recall@2"] == pytest.approx(1 / 3)
  assert results["validation"]["recall@5"] == pytest.approx(2 / 3)
  assert results["validation"]["ndcg@5"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(3)) / 3)
  assert results["test"]["recall@5"] == 0.0 and results["test"]["median_rank"] == 5

  popularity.main([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}"])
  with open(tmp_path / "out" / "eval_test" / "metrics.json") as f:
    written = json.load(f)
  assert set(METRIC_KEYS) <= set(written) and written["num_users"] == 3 and written["model"] == "popularity"
  with pytest.raises(FileNotFoundError, match="data_dir='/no/such/dir'"):
    popularity.run("/no/such/dir")


def test_transition_scores_by_hand_and_holdouts_never_count_their_targets(tmp_path):
  sessions = Sessions(["u0", "u1"], [[0, 1, 2, 3, 4], [2, 1, 0, 4, 3]])
  counts, pop = transitions.transition_counts(sessions, 5, holdout=2, window=2, decay=0.5)
  # Prefixes 0 1 2 and 2 1 0: lag-1 pairs weigh 1, lag-2 pairs 0.5.
  expected = np.zeros([5, 5])
  expected[0, 1] = expected[1, 2] = expected[2, 1] = expected[1, 0] = 1
  expected[0, 2] = expected[2, 0] = 0.5
  np.testing.assert_allclose(counts.toarray(), expected)
  assert pop.tolist() == [2, 2, 2, 0, 0]
  # History ... 1 0: C[0] + 0.5 C[1] = [.5, 1, 1, 0, 0]; popularity adds 0.5 * 0.5^2 * pop / max(pop).
  scores = transitions.transition_scores(counts, pop, [np.array([3, 1, 0])], window=2, decay=0.5)
  np.testing.assert_allclose(scores[0], [0.625, 1.125, 1.125, 0, 0])
  refit, _ = transitions.transition_counts(sessions, 5, holdout=1, window=2, decay=0.5)
  assert refit[2, 3] == 1 and refit[1, 3] == 0.5 and counts[2, 3] == 0  # u0's validation target joins
  for bad in (dict(holdout=0), dict(window=0), dict(decay=0.0)):
    with pytest.raises(ValueError):
      transitions.transition_counts(sessions, 5, **bad)

  items = [{"asin": a, "title": a} for a in "ABCDE"]
  data_dir = write_processed(tmp_path / "tr", {"u0": list("ABCDE"), "u1": list("CBAED"), "u2": list("ABDEC")},
                             items)
  dataset = sequences.load_dataset(data_dir)
  with pytest.raises(ValueError, match="holdout=1 counts the validation targets"):
    transitions.evaluate_split(dataset, "validation", holdout=1)
  # Window 1, prefixes ABC, CBA, ABD: A->B 2, B->C 1, C->B 1, B->A 1, B->D 1; popularity A3 B3 C2 D1 E0.
  # u0 (last C, target D): B first, then A C D E by popularity: rank 3. u1 (last A, target E): B, A, C, D, E:
  # rank 4. u2 (last D leads nowhere, target E): popularity alone: rank 4.
  result = transitions.evaluate_split(dataset, "validation", holdout=2, window=1, ks=(1, 3, 4))
  assert result["recall@3"] == 0.0 and result["recall@4"] == pytest.approx(1 / 3)
  assert result["ndcg@4"] == pytest.approx(1 / math.log2(5) / 3)
  assert result["num_users"] == 3 and result["median_rank"] == 4
  study = transitions.refit_study(dataset, window=1)
  assert [study[k]["holdout"] for k in study] == [3, 2, 2, 1]
  # predictions.jsonl: the same orders (u2: A and B tie on popularity, the lower index first), and metrics
  # recomputed from it alone match metrics.json.
  out = tmp_path / "tr_out"
  transitions.run(data_dir, str(out), window=1)
  rows = [json.loads(line) for line in open(out / "eval_validation" / "predictions.jsonl")]
  assert [(r["user"], r["target"], r["topk"]) for r in rows] == [
      ("u0", "D", list("BACDE")), ("u1", "E", list("BACDE")), ("u2", "E", list("ABCDE"))]
  from tiger_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  written = json.load(open(out / "eval_validation" / "metrics.json"))
  recomputed = eval_lib.metrics_from_predictions(str(out / "eval_validation" / "predictions.jsonl"))
  for k in ("recall@5", "ndcg@5"):
    assert recomputed[k] == pytest.approx(written[k])
  # --refit: test is scored, and its predictions written, with the validation targets counted (holdout 1).
  refit_out = tmp_path / "tr_refit"
  refit_study = transitions.run(data_dir, str(refit_out), window=1, refit=True)
  assert refit_study["test"]["holdout"] == 1 and refit_study["validation"]["holdout"] == 2
  written = json.load(open(refit_out / "eval_test" / "metrics.json"))
  assert written["ndcg@10"] == pytest.approx(study["test_refit_holdout1"]["ndcg@10"])
  rows = [json.loads(line) for line in open(refit_out / "eval_test" / "predictions.jsonl")]
  assert [(r["user"], r["target"]) for r in rows] == [("u0", "E"), ("u1", "D"), ("u2", "C")]
  # u0 (history A B C D, target E): only u2's validation target makes D -> E a counted transition.
  assert rows[0]["topk"][0] == "E"
  usual = [json.loads(line) for line in open(out / "eval_test" / "predictions.jsonl")]
  assert usual[0]["user"] == "u0" and usual[0]["topk"][0] != "E"


# ----------------------------------------------------------------------------------------------------------
# The model.

SMALL = SASRecConfig(max_len=8, emb_dim=16, num_layers=2, num_heads=2, mlp_dim=32, dropout_rate=0.3)


def _init(config=SMALL, num_items=30, seed=0):
  module = SASRec(num_items, config)
  params = module.init(jax.random.PRNGKey(seed), jnp.zeros([1, config.max_len], jnp.int32))["params"]
  return module, params


def apply(module, params, ids):
  return jax.jit(lambda p, x: module.apply({"params": p}, x))(params, ids)


def test_sasrec_is_causal_and_padding_never_reaches_real_positions():
  module, params = _init()
  ids = jnp.array([[0, 0, 0, 4, 9, 2, 7, 1],
                   [3, 5, 8, 13, 21, 2, 6, 11]])
  scores = apply(module, params, ids)
  assert scores.shape == (2, 8, 30)
  changed = apply(module, params, ids.at[:, 5].set(17))
  np.testing.assert_allclose(changed[:, :5], scores[:, :5], atol=1e-6)  # earlier positions: untouched
  assert float(jnp.abs(changed[:, 5:] - scores[:, 5:]).max()) > 1e-3  # later ones do see the change

  # Padding changes nothing at real positions: the left-padded row scores as the same items do in a model
  # that reads exactly those positions (same weights, the position table's last rows) with no padding.
  unpadded = SASRec(30, dataclasses.replace(SMALL, max_len=5))
  short_params = dict(params, position_embedding={"embedding": params["position_embedding"]["embedding"][3:]})
  short_scores = apply(unpadded, short_params, ids[:1, 3:])
  np.testing.assert_allclose(scores[0, 3:], short_scores[0], atol=1e-5)
  # ... and whatever the padding row's embedding holds (the output layer reads item rows 1..N only).
  noisy = dict(params, item_embedding={"embedding": params["item_embedding"]["embedding"].at[0].set(50.0)})
  np.testing.assert_allclose(apply(module, noisy, ids)[0, 3:], scores[0, 3:], atol=1e-5)

  # next_item_scores is the last position of the full pass.
  last = jax.jit(lambda p, x: module.apply({"params": p}, x, method=SASRec.next_item_scores))(params, ids)
  np.testing.assert_allclose(last, scores[:, -1], atol=1e-6)


def test_loss_weights_only_target_positions_and_bf16_agrees():
  module, params = _init()
  ids = jnp.array([[0, 0, 0, 4, 9, 2, 7, 1]])
  targets = jnp.array([[0, 0, 0, 9, 2, 7, 1, 0]])  # the last position has no target
  loss, count = next_item_loss(module, params, ids, targets, None)
  scores = module.apply({"params": params}, ids)
  logp = jax.nn.log_softmax(scores, axis=-1)
  expected = -np.mean([logp[0, j, targets[0, j] - 1] for j in (3, 4, 5, 6)])
  assert int(count) == 4 and float(loss) == pytest.approx(expected, rel=1e-5)
  bf16 = SASRec(30, SASRecConfig(**{**SMALL.__dict__, "dtype": "bfloat16"}))
  loss16, _ = next_item_loss(bf16, params, ids, targets, None)
  assert abs(float(loss16) - float(loss)) < 0.05 * float(loss)
  dropped, _ = next_item_loss(module, params, ids, targets, jax.random.PRNGKey(3))
  assert np.isfinite(float(dropped)) and float(dropped) != pytest.approx(float(loss))


def test_softmax_over_target_positions_only_equals_scoring_every_position_gradients_too():
  """The trainer scores the catalogue only at positions with a target; loss and gradients are those of scoring
  every position, with dropout on, whatever the width and the order of the slots."""
  module, params = _init()
  ids = jnp.array([[0, 0, 0, 4, 9, 2, 7, 1], [3, 5, 8, 13, 21, 2, 6, 11], [0] * 8])
  targets = jnp.array([[0, 0, 0, 9, 2, 7, 1, 0], [5, 8, 13, 21, 2, 6, 11, 30], [0] * 8])
  rng = jax.random.PRNGKey(5)
  full = jax.value_and_grad(lambda p: next_item_loss(module, p, ids, targets, rng), has_aux=True)(params)
  positions = sasrec_model.flat_target_positions(np.asarray(targets), 16)
  assert positions.tolist() == [3, 4, 5, 6] + list(range(8, 16)) + [24] * 4
  for slots in (positions, np.concatenate([positions[::-1], [24] * 8])):
    (loss, count), grads = jax.value_and_grad(
        lambda p: next_item_loss(module, p, ids, targets, rng, target_positions=jnp.asarray(slots)),
        has_aux=True)(params)
    assert int(count) == int(full[0][1]) == 12 and float(loss) == pytest.approx(float(full[0][0]), rel=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(full[1])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="a batch has 12 targets, more than the width 8"):
    sasrec_model.flat_target_positions(np.asarray(targets), 8)


def test_epoch_target_positions_width_is_the_largest_batch_rounded_up():
  targets = np.zeros([6, 4], np.int32)
  targets[:3, 1:] = 1  # rows 0-2: 3 targets each; row 5 is the all-padding row
  idx = np.array([[0, 1], [2, 5], [3, 4]])
  positions = sasrec.epoch_target_positions(targets, idx, multiple=4)
  assert positions.shape == (3, 8)  # the largest batch has 6 targets: width 8 (B x L = 8 caps it too)
  assert positions[1].tolist() == [1, 2, 3] + [8] * 5 and positions[2].tolist() == [8] * 8


def test_losses_by_hand():
  w = jnp.array([[1.0, 0.0]])  # the second position has no target and must not count
  # softmax over scores (0, 1, 2), target 2: log(1 + e + e^2) - 2 = log(11.1073) - 2
  assert float(sasrec_model.softmax_loss(jnp.array([[[0.0, 1.0, 2.0], [9.0, 0.0, 0.0]]]), jnp.array([[2, 1]]), w)
               ) == pytest.approx(0.40761, abs=1e-5)
  # BCE, target score 2 and negative 0.5: -log sigmoid(2) - log(1 - sigmoid(0.5)) = 0.12693 + 0.97408
  assert float(sasrec_model.bce_loss(jnp.array([[2.0, -5.0]]), jnp.array([[0.5, 7.0]]), w)) == pytest.approx(
      1.10101, abs=1e-5)
  # Two counted positions average: the second, target score 1: log(1 + e^-1) + 0.97408 = 0.31326 + 0.97408
  assert float(sasrec_model.bce_loss(jnp.array([[2.0, 1.0]]), jnp.array([[0.5, 0.5]]), jnp.ones([1, 2]))
               ) == pytest.approx((1.10101 + 1.28734) / 2, abs=1e-5)
  # Sampled softmax, target score 1 against negatives 0 and 2; a third negative is the target itself and is
  # left out: log(e^1 + e^0 + e^2) - 1 = 1.40761 (counting it again: log(2e + 1 + e^2) - 1 = 1.62652).
  positive = jnp.array([[1.0, 3.0]])
  negatives = jnp.array([[[0.0, 2.0, 1.0], [0.0, 0.0, 0.0]]])
  is_target = jnp.array([[[False, False, True], [False, False, False]]])
  assert float(sasrec_model.sampled_softmax_loss(positive, negatives, is_target, w)) == pytest.approx(
      1.40761, abs=1e-5)
  assert float(sasrec_model.sampled_softmax_loss(positive, negatives, jnp.zeros_like(is_target), w)
               ) == pytest.approx(1.62652, abs=1e-5)


def test_negatives_are_uniform_over_the_other_items():
  targets = jnp.tile(jnp.arange(1, 6), (4000, 1))  # ids 1..5 of a 5-item catalogue
  drawn = np.asarray(sasrec_model.negatives_except(jax.random.PRNGKey(0), targets, 5))
  assert drawn.min() >= 1 and drawn.max() <= 5
  assert not (drawn == np.asarray(targets)).any()  # never the position's own target
  for column in range(5):
    counts = np.bincount(drawn[:, column], minlength=6)[1:]
    others = np.delete(counts, column)
    assert counts[column] == 0 and others.min() > 850 and others.max() < 1150  # 1000 each expected


@pytest.mark.parametrize("loss", ["bce", "sampled_softmax"])
def test_sampled_losses_score_the_drawn_items(loss):
  """next_item_loss against the same quantities built by hand from the encoder states and the item table."""
  module, params = _init()
  ids = jnp.array([[0, 0, 0, 4, 9, 2, 7, 1], [3, 5, 8, 13, 21, 2, 6, 11]])
  targets = jnp.array([[0, 0, 0, 9, 2, 7, 1, 0], [5, 8, 13, 21, 2, 6, 11, 30]])
  key = jax.random.PRNGKey(7)
  got, count = next_item_loss(module, params, ids, targets, None, loss, num_negatives=12, negatives_rng=key)
  hidden = np.asarray(module.apply({"params": params}, ids, method=SASRec.encode), np.float64)
  table = np.asarray(params["item_embedding"]["embedding"], np.float64)
  t = np.asarray(targets)
  positive = np.einsum("bld,bld->bl", hidden, table[t])
  softplus = lambda x: np.logaddexp(0.0, x)
  if loss == "bce":
    negative_ids = np.asarray(sasrec_model.negatives_except(key, targets, 30))
    per_position = softplus(-positive) + softplus(np.einsum("bld,bld->bl", hidden, table[negative_ids]))
  else:
    negative_ids = np.asarray(jax.random.randint(key, (2, 12), 1, 31))
    scores = np.einsum("bld,nd->bln", hidden, table[negative_ids[0]]), np.einsum(
        "bld,nd->bln", hidden, table[negative_ids[1]])
    scores = np.concatenate([scores[0][:1], scores[1][1:]])
    scores = np.where(negative_ids[:, None, :] == t[:, :, None], -np.inf, scores)
    per_position = np.logaddexp(positive, np.logaddexp.reduce(scores, axis=-1)) - positive
  expected = per_position[t > 0].mean()
  assert int(count) == 12 and float(got) == pytest.approx(expected, rel=1e-4)
  with pytest.raises(ValueError, match="negatives_rng"):
    next_item_loss(module, params, ids, targets, None, loss)
  with pytest.raises(ValueError, match="loss must be one of"):
    next_item_loss(module, params, ids, targets, None, "hinge")


def test_device_ranks_follow_the_metrics_code_ties_included():
  module, params = _init()
  table = params["item_embedding"]["embedding"]
  # Items 3, 4 and 5 (ids 4, 5, 6) share one embedding: they always tie, and a tie counts against the target.
  params = dict(params, item_embedding={"embedding": table.at[5].set(table[4]).at[6].set(table[4])})
  rng = np.random.default_rng(0)
  inputs = rng.integers(1, 31, (37, 8)).astype(np.int32)
  inputs[::3, :4] = 0  # some left padding
  target = np.where(np.arange(37) % 2 == 0, rng.integers(3, 6, 37), rng.integers(0, 30, 37)).astype(np.int32)
  eval_inputs = sequences.EvalInputs(inputs=inputs, target=target, user_index=np.arange(37))
  scorer = sasrec.Scorer(30, SMALL, batch_size=16)  # three batches, the last one padded
  host_ranks, top_items, _ = scorer.rank(params, eval_inputs)
  np.testing.assert_array_equal(scorer.device_ranks(params, eval_inputs), host_ranks)
  scores = np.asarray(jax.jit(lambda p, x: module.apply({"params": p}, x, method=SASRec.next_item_scores))(
      params, inputs))
  np.testing.assert_array_equal(host_ranks, metrics.ranks_from_scores(scores, target))
  assert (scores[:, 3] == scores[:, 5]).all()
  np.testing.assert_array_equal(top_items[:, 0], scores.argmax(axis=1))


def test_bad_settings_name_the_field(tmp_path):
  with pytest.raises(ValueError, match="max_len must be >= 1"):
    SASRecConfig(max_len=0).validate()
  with pytest.raises(ValueError, match="num_heads"):
    SASRecConfig(emb_dim=64, num_heads=3).validate()
  with pytest.raises(ValueError, match="dtype"):
    SASRecConfig(dtype="float16").validate()
  with pytest.raises(ValueError, match="window_stride"):
    sequences.training_rows(Sessions(["u"], [[1, 2, 3]]), max_len=4, window_stride=5)
  with pytest.raises(FileNotFoundError, match="data_dir='/no/such/dir'"):
    sasrec.train_and_evaluate(data_dir="/no/such/dir", model_dir=str(tmp_path / "m"))
  with pytest.raises(ValueError, match="batch_size must be >= 1"):
    sasrec.train_and_evaluate(data_dir="data/beauty", model_dir=str(tmp_path / "m"), batch_size=0)


# ----------------------------------------------------------------------------------------------------------
# Training pairs: the same (history, target) pairs as TIGER's training examples.


def _tiger_pairs(sessions, max_history):
  ex = splits.leave_one_out(sessions, "train", max_history=max_history)
  return sorted((int(u), tuple(h.tolist()), int(t)) for u, h, t in zip(ex.user_index, ex.history, ex.target))


def _random_sessions(seed=0, users=60, items=60):
  """Distinct items within a user, so that (user, target) names one training example."""
  rng = np.random.default_rng(seed)
  return Sessions([f"u{i}" for i in range(users)],
                  [rng.permutation(items)[:int(rng.integers(3, 40))].tolist() for _ in range(users)])


def test_training_rows_cover_tigers_training_pairs(tiny_dataset_dir):
  sessions = sequences.load_dataset(tiny_dataset_dir).sessions  # u4 has 25 items: a prefix of 23
  # Every prefix fits 50 positions: exactly TIGER's pairs (histories up to 50 items).
  assert sorted(sequences.row_pairs(sequences.training_rows(sessions, 50))) == _tiger_pairs(sessions, 50)
  # With TIGER's cap of 20, users whose prefix fits get TIGER's pairs exactly; truncation keeps u4's 20
  # most recent targets, with histories starting at the row's start.
  truncated = sorted(sequences.row_pairs(sequences.training_rows(sessions, 20)))
  short = [p for p in _tiger_pairs(sessions, 20) if p[0] != 4]
  assert [p for p in truncated if p[0] != 4] == short
  u4_targets = [t for u, _, t in _tiger_pairs(sessions, 20) if u == 4]
  assert [t for u, _, t in truncated if u == 4] == u4_targets[2:]

  for seed in range(3):
    sessions = _random_sessions(seed)
    for max_len, stride in ((7, 1), (7, 3), (7, 7), (50, None)):
      rows = sequences.training_rows(sessions, max_len, stride)
      pairs = sorted(sequences.row_pairs(rows))
      tiger = _tiger_pairs(sessions, max_len)
      if stride == 1 or max_len == 50:
        assert pairs == tiger  # one row per late target: leave_one_out's pairs exactly
        continue
      # Each TIGER target exactly once; the history is the tail of TIGER's, at least max_len - S + 1 long.
      assert sorted((u, t) for u, _, t in pairs) == sorted((u, t) for u, _, t in tiger)
      full = {(u, t): h for u, h, t in tiger}
      for u, h, t in pairs:
        assert full[(u, t)][len(full[(u, t)]) - len(h):] == h
        assert len(h) >= min(max_len - stride + 1, len(full[(u, t)]))
      assert rows.inputs.shape[1] == max_len and (rows.inputs[:, -1] > 0).all()  # left-padded


def test_refit_rows_add_each_users_validation_pair_and_nothing_of_test(tiny_dataset_dir):
  sessions = sequences.load_dataset(tiny_dataset_dir).sessions
  validation = splits.leave_one_out(sessions, "validation", max_history=50)
  expected = sorted(_tiger_pairs(sessions, 50) + [(int(u), tuple(h.tolist()), int(t)) for u, h, t in
                                                   zip(validation.user_index, validation.history, validation.target)])
  refit = sequences.training_rows(sessions, 50, holdout=1)
  assert sorted(sequences.row_pairs(refit)) == expected
  assert refit.num_targets == sequences.training_rows(sessions, 50).num_targets + len(sessions)
  with pytest.raises(ValueError, match="holdout must be one of"):
    sequences.training_rows(sessions, 50, holdout=0)


def test_eval_inputs_are_leave_one_out_histories(tiny_dataset_dir):
  sessions = sequences.load_dataset(tiny_dataset_dir).sessions
  for split in ("validation", "test"):
    got = sequences.eval_inputs(sessions, split, max_len=20)
    ex = splits.leave_one_out(sessions, split, max_history=20)
    np.testing.assert_array_equal(got.target, ex.target)
    np.testing.assert_array_equal(got.user_index, ex.user_index)
    for row, history in zip(got.inputs, ex.history):
      assert (row[row > 0] - 1).tolist() == history.tolist() and row[-1] > 0


# ----------------------------------------------------------------------------------------------------------
# A learnable pattern: each user's next item is the previous one + 1 (mod N).


def _successor_dataset(path, users=240, items=40, seed=0):
  rng = np.random.default_rng(seed)
  sequences_ = {}
  for u in range(users):
    first, n = int(rng.integers(items)), int(rng.integers(4, 12))
    sequences_[f"user{u}"] = [f"I{(first + j) % items:02d}" for j in range(n)]
  return write_processed(path, sequences_, [{"asin": f"I{i:02d}", "title": f"item {i}"} for i in range(items)])


@pytest.mark.parametrize("loss", ["softmax", "bce", "sampled_softmax"])
def test_sasrec_learns_successor_pattern_popularity_cannot(tmp_path, loss):
  data_dir = _successor_dataset(tmp_path / "succ")
  config = SASRecConfig(max_len=10, emb_dim=32, num_layers=1, num_heads=1, mlp_dim=32, dropout_rate=0.1)
  result = sasrec.train_and_evaluate(
      data_dir=data_dir, model_dir=str(tmp_path / "model"), model_config=config, num_epochs=30,
      batch_size=32, eval_every_epochs=10, checkpoint_every_epochs=30, loss=loss, num_negatives=8,
      optimizer_fn=lambda: sasrec.make_optimizer(learning_rate=0.01))
  assert result["test"]["steps_per_epoch"] == 8 and result["test"]["epochs_trained"] == 30  # 240 steps
  assert result["test"]["loss"] == loss
  assert result["test"]["recall@10"] > 0.9 and result["validation"]["recall@10"] > 0.9
  pop = popularity.evaluate(sequences.load_dataset(data_dir))
  assert pop["test"]["recall@10"] < 0.5


def test_sasrec_early_stopping_and_validation_only_scoring(tmp_path):
  data_dir = _successor_dataset(tmp_path / "succ", users=60)
  config = SASRecConfig(max_len=10, emb_dim=16, num_layers=1, num_heads=1, mlp_dim=16, dropout_rate=0.1)
  model_dir = str(tmp_path / "model")
  kwargs = dict(data_dir=data_dir, model_dir=model_dir, model_config=config, num_epochs=400, batch_size=32,
                eval_every_epochs=1, checkpoint_every_epochs=400, early_stopping_epochs=3, write_predictions=False,
                optimizer_fn=lambda: sasrec.make_optimizer(learning_rate=0.05))
  result = sasrec.train_and_evaluate(**kwargs, eval_splits=("validation",))
  run = result["validation"]
  assert run["stopped_early"] and run["epochs_trained"] == run["best"]["epoch"] + 3 < 400
  assert "test" not in result and not os.path.exists(os.path.join(model_dir, "eval_test"))
  again = sasrec.train_and_evaluate(**kwargs)  # finished: scored once on test, nothing trained
  assert again["test"]["epochs_this_run"] == 0 and again["test"]["epochs_trained"] == run["epochs_trained"]
  assert again["validation"]["ndcg@10"] == run["ndcg@10"]
  with pytest.raises(ValueError, match="trained with"):
    sasrec.train_and_evaluate(**kwargs, loss="bce")
  with pytest.raises(ValueError, match="eval_splits"):
    sasrec.train_and_evaluate(**kwargs, eval_splits=("train",))


def test_sasrec_refit_trains_fixed_epochs_on_validation_targets_and_scores_test_only(tmp_path):
  data_dir = _successor_dataset(tmp_path / "succ", users=40)
  config = SASRecConfig(max_len=10, emb_dim=16, num_layers=1, num_heads=1, mlp_dim=16, dropout_rate=0.1)
  common = dict(data_dir=data_dir, model_config=config, num_epochs=3, batch_size=16, eval_every_epochs=1,
                checkpoint_every_epochs=2, write_predictions=False)
  plain = sasrec.train_and_evaluate(model_dir=str(tmp_path / "plain"), **common)
  model_dir = str(tmp_path / "refit")
  result = sasrec.train_and_evaluate(model_dir=model_dir, refit=True, **common)
  run = result["test"]
  assert set(result) == {"test", "seconds_this_run"} and run["refit"] and run["best"] is None
  assert run["epochs_trained"] == 3 and run["train_targets"] == plain["test"]["train_targets"] + 40
  assert not os.path.exists(os.path.join(model_dir, "eval_validation"))
  assert not os.path.exists(os.path.join(model_dir, "best"))
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  assert [e["epoch"] for e in logged] == [1, 2, 3] and not any("validation/ndcg@10" in e for e in logged)
  # Finished: a rerun scores the last epoch's checkpoint again and trains nothing.
  again = sasrec.train_and_evaluate(model_dir=model_dir, refit=True, **common)
  assert again["test"]["epochs_this_run"] == 0 and again["test"]["ndcg@10"] == run["ndcg@10"]
  # A training-split checkpoint is not resumed as a refit, nor the other way round.
  with pytest.raises(ValueError, match="another data set or model"):
    sasrec.train_and_evaluate(model_dir=str(tmp_path / "plain"), refit=True, **common)
  for bad in (dict(eval_splits=("validation", "test")), dict(early_stopping_epochs=3)):
    with pytest.raises(ValueError, match="refit=True trains on the validation targets"):
      sasrec.train_and_evaluate(model_dir=str(tmp_path / "bad"), refit=True, **common, **bad)


# ----------------------------------------------------------------------------------------------------------
# The CLI: a slice of Beauty, one epoch in-process, resumed for a second in a subprocess that cannot import
# TensorFlow, seqio or torch, then re-run (nothing to train), then the benchmark script over the same run.

NO_TF_RUNNER = textwrap.dedent("""\
    import importlib.machinery, runpy, sys
    BLOCKED = ('tensorflow', 'tensorflow_text', 'seqio', 'torch')
    class HideBlocked:  # the path finder, blind to the blocked packages: as on the GPU machine
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
          return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
    sys.meta_path = [HideBlocked() if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    runpy.run_path('benchmarks/baselines.py', run_name='imported_only')
    runpy.run_module('tiger_jax.baselines.sasrec', run_name='__main__', alter_sys=True)
    assert not [m for m in sys.modules if m.split('.')[0] in BLOCKED]
    """)


@pytest.fixture(scope="module")
def beauty_slice(tmp_path_factory):
  root = tmp_path_factory.mktemp("slice")
  with gzip.open(os.path.join(REPO, "data", "beauty", "sequences.txt.gz"), "rt") as f:
    lines = [next(f) for _ in range(200)]
  with gzip.open(root / "sequences.txt.gz", "wt") as f:
    f.writelines(lines)
  shutil.copy(os.path.join(REPO, "data", "beauty", "items.jsonl.gz"), root / "items.jsonl.gz")
  return str(root)


def _load_benchmark():
  spec = importlib.util.spec_from_file_location("baselines_benchmark", os.path.join(REPO, "benchmarks",
                                                                                     "baselines.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _read_metrics(model_dir, split="test"):
  with open(os.path.join(model_dir, f"eval_{split}", "metrics.json")) as f:
    return json.load(f)


def test_cli_writes_metrics_resumes_and_does_not_retrain(beauty_slice, tmp_path):
  model_dir = str(tmp_path / "sasrec")
  args = ["--gin_file=gin/baselines/sasrec_beauty_quick.gin", f"--gin.DATA_DIR='{beauty_slice}'",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.BATCH_SIZE=64", "--gin.EVAL_EVERY_EPOCHS=1",
          "--gin.sasrec_model.SASRecConfig.emb_dim=16", "--gin.sasrec_model.SASRecConfig.mlp_dim=16"]
  sasrec.console_main(args + ["--gin.NUM_EPOCHS=1"])  # gin files resolve from any directory
  first = _read_metrics(model_dir)
  assert set(METRIC_KEYS) <= set(first) and first["num_users"] == 200
  assert first["epochs_this_run"] == 1 and first["resumed_from_epoch"] is None
  assert first["num_params"] > 0 and first["train_seconds"] > 0 and first["device"] == "cpu"
  assert os.path.exists(os.path.join(model_dir, "config.gin"))
  with open(os.path.join(model_dir, "eval_test", "predictions.jsonl")) as f:
    row = json.loads(f.readline())
  assert len(row["topk"]) == 20 and row["user"] and row["target"]

  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-c", NO_TF_RUNNER, *args, "--gin.NUM_EPOCHS=2"], cwd=REPO, env=env,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  second = _read_metrics(model_dir)
  assert second["resumed_from_epoch"] == 1 and second["epochs_this_run"] == 1
  assert second["epochs_trained"] == 2 and second["train_seconds"] > first["train_seconds"]

  gin.clear_config()
  sasrec.console_main(args + ["--gin.NUM_EPOCHS=2"])
  third = _read_metrics(model_dir)
  assert third["epochs_this_run"] == 0 and third["resumed_from_epoch"] == 2
  assert {k: third[k] for k in METRIC_KEYS} == {k: second[k] for k in METRIC_KEYS}

  gin.clear_config()
  report = _load_benchmark().main([f"--data_dir={beauty_slice}", f"--out_dir={tmp_path / 'bench'}",
                                   f"--model_dir={model_dir}", *[a for a in args if "DIR=" not in a],
                                   "--gin.NUM_EPOCHS=2"])
  assert report["sasrec"]["test"]["epochs_this_run"] == 0
  with open(tmp_path / "bench" / f"baselines_{report['dataset']['dataset']}.json") as f:
    written = json.load(f)
  assert written["device_kind"] == "cpu" and written["git_revision"]
  for model in ("popularity", "sasrec"):
    assert set(METRIC_KEYS) <= set(written[model]["test"]) | set(written[model]["validation"])
