"""Ranking metrics against hand-computed cases."""
import math

import numpy as np
import pytest

from tiger_jax import metrics


def test_hits_at_rank_one_rank_k_and_misses():
  ranked = np.array([[7, 1, 2, 3, 4, 5, 6, 8, 9, 10],   # target 7 at rank 0
                     [1, 2, 3, 4, 7, 5, 6, 8, 9, 10],   # target 7 at rank 4 (the 5th item)
                     [1, 2, 3, 4, 5, 6, 8, 9, 10, 7],   # rank 9 (10th)
                     [1, 2, 3, 4, 5, 6, 8, 9, 10, 11]])  # miss
  ranks = metrics.target_ranks(ranked, np.array([7, 7, 7, 7]))
  assert ranks.tolist() == [0, 4, 9, -1]
  m = metrics.ranking_metrics(ranks)
  assert m["recall@5"] == pytest.approx(2 / 4)
  assert m["recall@10"] == pytest.approx(3 / 4)
  assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(6)) / 4)
  assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(6) + 1 / math.log2(11)) / 4)


def test_invalid_beams_and_repeats_are_removed_before_ranking():
  raw = np.array([[-1, 3, 3, -1, 5, 9],
                  [-1, -1, -1, -1, -1, -1]])
  clean = metrics.clean_ranked(raw)
  assert clean.tolist() == [[3, 5, 9, -1, -1, -1], [-1] * 6]
  ranks = metrics.target_ranks(clean, np.array([5, 5]))
  assert ranks.tolist() == [1, -1]  # 5 moves up from raw position 4 to rank 1
  assert metrics.ranking_metrics(ranks, ks=(1, 2)) == pytest.approx(
      {"recall@1": 0.0, "ndcg@1": 0.0, "recall@2": 0.5, "ndcg@2": 0.5 / math.log2(3)})
  frac = metrics.invalid_fraction_at_k(raw, ks=(1, 2, 4, 6))
  assert frac == pytest.approx({1: 1.0, 2: 3 / 4, 4: 6 / 8, 6: 8 / 12})


def test_score_ties_count_against_the_target():
  scores = np.array([[0.5, 0.9, 0.5, 0.1],
                     [1.0, 1.0, 1.0, 1.0],
                     [0.2, 0.1, 0.3, 0.9]])
  ranks = metrics.ranks_from_scores(scores, np.array([0, 2, 3]))
  assert ranks.tolist() == [2, 3, 0]
  assert metrics.recall_at_k(ranks, 1) == pytest.approx(1 / 3)


def test_shapes_are_checked():
  with pytest.raises(ValueError, match="ranked must be"):
    metrics.target_ranks(np.zeros([3, 4], int), np.zeros([2], int))


def test_hit_fraction_at_rank_adds_up_to_recall_and_ndcg():
  ranks = np.array([0, 0, 4, 9, -1, 2, 12])
  frac = metrics.hit_fraction_at_rank(ranks, max_rank=10)
  assert list(frac) == list(range(1, 11))
  assert frac[1] == pytest.approx(2 / 7) and frac[3] == pytest.approx(1 / 7) and frac[5] == pytest.approx(1 / 7)
  assert frac[10] == pytest.approx(1 / 7) and frac[2] == 0.0  # rank 12 is beyond max_rank, -1 a miss
  m = metrics.ranking_metrics(ranks)
  assert sum(frac[r] for r in range(1, 6)) == pytest.approx(m["recall@5"])
  assert sum(f / math.log2(r + 1) for r, f in frac.items()) == pytest.approx(m["ndcg@10"])
  with pytest.raises(ValueError, match="max_rank"):
    metrics.hit_fraction_at_rank(ranks, 0)
