"""Cold-start retrieval (paper Sec. 4.3, Figure 5): TIGER with unseen items, and the Semantic_KNN baseline.

The model was trained without the unseen items (tiger_jax.data.cold_start), so beam search runs over the
seen items' IDs. Each beam's full ID names its seen item; the unseen items whose first three codes equal the
beam's become candidates too, because an unseen item's ID shares its 3-code bucket with semantically close
seen items. Candidate order: beams best first; within a beam its seen item, then the bucket's unseen items
(collision-token order), each unseen item listed once, at its first (best) beam.

Top-K with at most a fraction epsilon of unseen items: walking the candidates in order, a seen item is
always taken and an unseen item only while fewer than `max_unseen(K, epsilon)` unseen items have been taken,
until K items are taken. `max_unseen` rounds K * epsilon down by default ("at most a fraction epsilon of the
top-K are unseen"), so with epsilon = 0.1 unseen items enter only from K = 10 on; `rounding='ceil'` or
'round' are there for comparison.

Semantic_KNN: items ranked by cosine similarity of their content embedding to the embedding of the user's
most recent history item (that item itself excluded), over the whole catalogue, seen and unseen items alike,
as in the paper; the same epsilon cap then applies to its ranked list, so both methods are compared under one
rule on the same users.

Everything here is numpy; `benchmarks/cold_start.py` runs the model and writes the tables and plots.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from tiger_jax import decoding

PREFIX_LEVELS = 3
ROUNDINGS = ("floor", "ceil", "round")
DEFAULT_KS = tuple(range(1, 21))
DEFAULT_EPSILONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0)


def max_unseen(k: int, epsilon: float, rounding: str = "floor") -> int:
  """How many of the top `k` may be unseen items: K * epsilon rounded (1e-9 guards 0.3 * 10 = 2.9999...)."""
  if not 0.0 <= epsilon <= 1.0:
    raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
  x = k * epsilon
  if rounding == "floor":
    return int(math.floor(x + 1e-9))
  if rounding == "ceil":
    return int(math.ceil(x - 1e-9))
  if rounding == "round":
    return int(math.floor(x + 0.5))
  raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")


def seen_trie(codes: np.ndarray, unseen_mask: np.ndarray, codebook_size: int = 256
              ) -> tuple[decoding.SemanticIdTrie, np.ndarray]:
  """The trie of the seen items' IDs (what the cold-start model decodes) and its row -> catalogue index map."""
  seen_rows = np.flatnonzero(~np.asarray(unseen_mask, bool)).astype(np.int32)
  return decoding.SemanticIdTrie.from_codes(np.asarray(codes)[seen_rows], codebook_size), seen_rows


def unseen_by_prefix(codes: np.ndarray, unseen_mask: np.ndarray,
                     prefix_levels: int = PREFIX_LEVELS) -> dict[tuple[int, ...], list[int]]:
  """3-code prefix -> its unseen items (catalogue indices), ordered by their last code."""
  codes = np.asarray(codes)
  rows = np.flatnonzero(np.asarray(unseen_mask, bool))
  rows = rows[np.lexsort(codes[rows].T[::-1])] if len(rows) else rows
  out: dict[tuple[int, ...], list[int]] = {}
  for r in rows.tolist():
    out.setdefault(tuple(codes[r, :prefix_levels].tolist()), []).append(r)
  return out


def tiger_candidates(beam_codes: np.ndarray, live: np.ndarray, codes: np.ndarray,
                     unseen_mask: np.ndarray, prefix_levels: int = PREFIX_LEVELS) -> np.ndarray:
  """Candidate lists [U, C] (catalogue indices, -1 padded) from beams [U, B, levels] ranked best first.

  A beam's full ID adds its seen item (an ID that is no seen item's adds nothing, e.g. from an
  unconstrained decoder); its first `prefix_levels` codes add that bucket's unseen items not yet listed.
  `live` [U, B] marks real beams (dead beams, finite score false, are skipped).
  """
  beam_codes, live = np.asarray(beam_codes), np.asarray(live, bool)
  unseen_mask = np.asarray(unseen_mask, bool)
  codes = np.asarray(codes)
  seen_id = {tuple(row): i for i, row in enumerate(codes.tolist()) if not unseen_mask[i]}
  buckets = unseen_by_prefix(codes, unseen_mask, prefix_levels)
  lists = []
  for user_beams, user_live in zip(beam_codes.tolist(), live.tolist()):
    out, listed = [], set()
    for beam, ok in zip(user_beams, user_live):
      if not ok:
        continue
      item = seen_id.get(tuple(beam))
      if item is not None and item not in listed:
        out.append(item)
        listed.add(item)
      for u in buckets.get(tuple(beam[:prefix_levels]), ()):
        if u not in listed:
          out.append(u)
          listed.add(u)
    lists.append(out)
  width = max([len(x) for x in lists] + [1])
  cand = np.full((len(lists), width), -1, np.int32)
  for i, x in enumerate(lists):
    cand[i, :len(x)] = x
  return cand


def knn_candidates(embeddings: np.ndarray, query_items: np.ndarray, num_candidates: int,
                   batch_size: int = 2048) -> np.ndarray:
  """Semantic_KNN: per query item, the `num_candidates` most cosine-similar other items [U, C], best first.

  Ties keep catalogue order. A query of -1 (no history) gets no candidates (-1 row).
  """
  x = np.asarray(embeddings, np.float32)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  query_items = np.asarray(query_items)
  c = min(int(num_candidates), len(x) - 1)
  out = np.full((len(query_items), c), -1, np.int32)
  for start in range(0, len(query_items), batch_size):
    q = query_items[start:start + batch_size]
    ok = q >= 0
    sims = x[np.maximum(q, 0)] @ x.T
    sims[np.arange(len(q)), np.maximum(q, 0)] = -np.inf  # never recommend the query item itself
    top = np.argpartition(-sims, c - 1, axis=1)[:, :c] if c < sims.shape[1] else np.tile(
        np.arange(sims.shape[1]), (len(q), 1))
    # Sort the selected by (similarity desc, index asc) so ties are deterministic.
    top_sims = np.take_along_axis(sims, top, 1)
    order = np.lexsort((top, -top_sims), axis=1)
    ranked = np.take_along_axis(top, order, 1)[:, :c]
    out[start:start + batch_size] = np.where(ok[:, None], ranked, -1)
  return out


def top_k_with_unseen_cap(candidates: np.ndarray, unseen_mask: np.ndarray, k: int, epsilon: float,
                          rounding: str = "floor") -> np.ndarray:
  """The first `k` candidates per row taking at most `max_unseen(k, epsilon)` unseen items: [U, k], -1 padded."""
  candidates = np.asarray(candidates)
  unseen_mask = np.asarray(unseen_mask, bool)
  valid = candidates >= 0
  is_unseen = valid & unseen_mask[np.maximum(candidates, 0)]
  cap = max_unseen(k, epsilon, rounding)
  keep = (valid & ~is_unseen) | (is_unseen & (np.cumsum(is_unseen, axis=1) <= cap))
  pos = np.cumsum(keep, axis=1) - 1
  take = keep & (pos < k)
  out = np.full((len(candidates), k), -1, np.int32)
  rows, cols = np.nonzero(take)
  out[rows, pos[rows, cols]] = candidates[rows, cols]
  return out


def recall(candidates: np.ndarray, target: np.ndarray, unseen_mask: np.ndarray, k: int, epsilon: float,
           rounding: str = "floor") -> float:
  """Recall@K (hit rate: one target per user) of the capped top-K."""
  top = top_k_with_unseen_cap(candidates, unseen_mask, k, epsilon, rounding)
  return float(np.mean((top == np.asarray(target)[:, None]).any(axis=1))) if len(top) else 0.0


def recall_tables(candidates: Mapping[str, np.ndarray], target: np.ndarray, unseen_mask: np.ndarray,
                  ks: Sequence[int] = DEFAULT_KS, epsilons: Sequence[float] = DEFAULT_EPSILONS,
                  epsilon_for_k: float = 0.1, k_for_epsilon: int = 10, rounding: str = "floor",
                  subsets: Optional[Mapping[str, np.ndarray]] = None) -> dict:
  """Figure 5's two views for each method and user subset.

  candidates: method name -> [U, C]; subsets: name -> bool [U] (default: 'unseen_targets', 'all').
  Returns {'recall_at_k': {method: {subset: {K: recall}}}, 'recall_vs_epsilon': {method: {subset:
  {epsilon: Recall@k_for_epsilon}}}, 'num_users': {subset: count}} with string keys (JSON-ready).
  """
  target = np.asarray(target)
  unseen_mask = np.asarray(unseen_mask, bool)
  if subsets is None:
    subsets = {"unseen_targets": unseen_mask[target], "all": np.ones(len(target), bool)}
  out: dict = {"recall_at_k": {}, "recall_vs_epsilon": {},
               "num_users": {name: int(np.sum(m)) for name, m in subsets.items()}}
  for method, cand in candidates.items():
    cand = np.asarray(cand)
    if len(cand) != len(target):
      raise ValueError(f"{method}: {len(cand)} candidate rows for {len(target)} users")
    out["recall_at_k"][method] = {
        name: {str(k): recall(cand[m], target[m], unseen_mask, k, epsilon_for_k, rounding) for k in ks}
        for name, m in subsets.items()}
    out["recall_vs_epsilon"][method] = {
        name: {f"{e:g}": recall(cand[m], target[m], unseen_mask, k_for_epsilon, e, rounding)
               for e in epsilons}
        for name, m in subsets.items()}
  return out


def last_history_items(encoder_input_tokens: np.ndarray, trie: decoding.SemanticIdTrie,
                       codeword_offset: int = 2, codebook_size: int = 256) -> np.ndarray:
  """Catalogue index of each row's most recent history item, read off its encoder tokens (-1 if none).

  Inputs are [user token] + 4 tokens per item, oldest first, then padding (tasks/tiger_tasks.py), so the
  last 4 codeword tokens are the last item's ID; `trie` must hold the whole catalogue's IDs.
  """
  tokens = np.asarray(encoder_input_tokens)
  levels = trie.num_levels
  is_code = (tokens >= codeword_offset) & (tokens < codeword_offset + levels * codebook_size)
  rows = np.flatnonzero(is_code.sum(axis=1) >= levels)
  codes = np.zeros((len(rows), levels), np.int32)
  for j, i in enumerate(rows.tolist()):
    codes[j] = tokens[i][is_code[i]][-levels:] - codeword_offset - codebook_size * np.arange(levels)
  out = np.full(len(tokens), -1, np.int32)
  if len(rows):
    out[rows] = trie.lookup(codes)
  return out
