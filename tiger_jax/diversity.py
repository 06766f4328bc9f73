"""Recommendation diversity under temperature sampling (paper Sec. 4.3, Tables 3 and 4).

Category of an item: its second-level category, the path element at index 1 of its first category path that
starts with the catalogue's most common root (Beauty: ["Beauty", "Makeup", ...] -> "Makeup"), "(none)" when
the path is shorter; the rule benchmarks/semantic_id_purity.py uses for its first-code purity.

Entropy@K: for each user, the ground-truth categories of the top-K predicted items (distinct valid items,
best first) form a distribution p; its entropy -sum p log p in nats is averaged over users with at least one
prediction. Top-K under sampling: K IDs are drawn per user (`decoding.temperature_sample`, constrained to
catalogue IDs, duplicates removed), so Entropy@K measures K draws at that temperature; beam search gives its
top-K beams. Recall@10 at a temperature is the hit rate of the 10 draws.

`Sampler` runs the model's sampler with the temperature as a traced argument, so one compilation serves every
temperature; `benchmarks/diversity.py` drives it and writes the tables.
"""
from __future__ import annotations

import collections
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from tiger_jax import metrics as metrics_lib

NO_CATEGORY = "(none)"


def category_labels(category_paths: Sequence[Sequence[Sequence[str]]], level: int = 1) -> list[str]:
  """Per item, the category at `level` of its first path rooted at the most common root (module docstring)."""
  roots = collections.Counter(p[0] for paths in category_paths for p in paths if p)
  top_root = roots.most_common(1)[0][0] if roots else None
  out = []
  for paths in category_paths:
    paths = [p for p in paths if p]
    chosen = next((p for p in paths if p[0] == top_root), paths[0] if paths else ())
    out.append(str(chosen[level]) if len(chosen) > level else NO_CATEGORY)
  return out


def encode_labels(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(names [C], ids [N]) with names sorted, so ids index names."""
  names, ids = np.unique(np.asarray(list(labels), dtype=str), return_inverse=True)
  return names, ids.reshape(-1).astype(np.int32)


def _top_k_items(ranked: np.ndarray, k: int) -> np.ndarray:
  """First k distinct valid items per row (-1 padded): invalid IDs and repeats removed, as eval does."""
  return metrics_lib.clean_ranked(np.asarray(ranked))[:, :k]


def entropy_at_k(ranked: np.ndarray, item_category: np.ndarray, k: int) -> float:
  """Mean over users of the entropy (nats) of the categories of their top-k predicted items."""
  top = _top_k_items(ranked, k)
  item_category = np.asarray(item_category)
  values = []
  for row in top:
    row = row[row >= 0]
    if not len(row):
      continue
    counts = np.bincount(item_category[row])
    p = counts[counts > 0] / len(row)
    values.append(float(-(p * np.log(p)).sum()))
  return float(np.mean(values)) if values else 0.0


def recall_at_k(ranked: np.ndarray, target: np.ndarray, k: int) -> float:
  ranks = metrics_lib.target_ranks(metrics_lib.clean_ranked(np.asarray(ranked)), np.asarray(target))
  return metrics_lib.recall_at_k(ranks, k)


def mean_distinct(ranked: np.ndarray, k: int) -> float:
  """Average number of distinct valid items among the top k (how many of K draws were new)."""
  return float(np.mean((_top_k_items(ranked, k) >= 0).sum(axis=1))) if len(ranked) else 0.0


def top_predicted_categories(ranked: np.ndarray, target: np.ndarray, item_category: np.ndarray,
                             names: Sequence[str], k: int = 10, num_targets: int = 5, num_top: int = 3,
                             target_categories: Optional[Sequence[str]] = None) -> list[dict]:
  """Table 4's view: for the most frequent target categories, the categories their top-k predictions fall in.

  For each target category (the `num_targets` most common among the users' targets, or the given names):
  over all users whose target has it, the shares of the categories of their top-k predicted items.
  """
  top = _top_k_items(ranked, k)
  target_cat = np.asarray(item_category)[np.asarray(target)]
  names = list(names)
  if target_categories is None:
    order = np.bincount(target_cat, minlength=len(names))
    chosen = [int(c) for c in np.argsort(-order, kind="stable")[:num_targets] if order[c] > 0]
  else:
    chosen = [names.index(c) for c in target_categories]
  out = []
  for c in chosen:
    rows = top[target_cat == c]
    items = rows[rows >= 0]
    counts = np.bincount(np.asarray(item_category)[items], minlength=len(names)) if len(items) else (
        np.zeros(len(names), np.int64))
    best = [int(j) for j in np.argsort(-counts, kind="stable")[:num_top] if counts[j] > 0]
    out.append({"target_category": names[c], "users": int(len(rows)),
                "top": [{"category": names[j], "share": float(counts[j] / max(len(items), 1))} for j in best]})
  return out


DecodeFn = Callable[[float, int, Optional[tuple]], np.ndarray]


def temperature_sweep(decode: DecodeFn, target: np.ndarray, item_category: np.ndarray,
                      temperatures: Sequence[float], ks: Sequence[int] = (10, 20, 50), recall_k: int = 10,
                      sample_levels: Mapping[str, Optional[tuple]] = None) -> tuple[list[dict], dict]:
  """Entropy@K, Recall@recall_k and distinct items per (sample-level setting, temperature).

  decode(temperature, num_decodes, sample_levels) -> ranked items [U, num_decodes] (-1 invalid/dead).
  Returns (rows, draws) where draws[(setting, temperature)] is the [U, recall_k] decode used for recall,
  kept for `top_predicted_categories`.
  """
  sample_levels = sample_levels or {"all": None}
  rows, draws = [], {}
  for setting, levels in sample_levels.items():
    for t in temperatures:
      row = {"decoder": "sample", "sample_levels": setting, "temperature": float(t)}
      for k in sorted(set(ks) | {recall_k}):
        ranked = decode(float(t), int(k), levels)
        if k in ks:
          row[f"entropy@{k}"] = entropy_at_k(ranked, item_category, k)
          row[f"distinct@{k}"] = mean_distinct(ranked, k)
        if k == recall_k:
          row[f"recall@{k}"] = recall_at_k(ranked, target, k)
          draws[(setting, float(t))] = ranked
      rows.append(row)
  return rows, draws


class Sampler:
  """Temperature sampling of a trained model over eval batches; the temperature is traced (one compile)."""

  def __init__(self, model, params, trie, batch_size: int = 512, constrain: bool = True,
               length_buckets: Optional[Sequence[int]] = (17, 33, 49, 81)):
    import jax  # pylint: disable=g-import-not-at-top
    self._jax = jax
    self.model, self.params, self.trie = model, params, trie.to_device()
    self.batch_size, self.constrain, self.length_buckets = batch_size, constrain, length_buckets
    self._fns: dict = {}

  def _fn(self, num_decodes: int, sample_levels: Optional[tuple]):
    key = (num_decodes, sample_levels)
    if key not in self._fns:
      from tiger_jax import utils  # pylint: disable=g-import-not-at-top
      model, constrain = self.model, self.constrain

      def predict(params, tokens, trie, rng, temperature):
        decoder = {"method": "sample", "trie": trie, "constrain": constrain, "temperature": temperature,
                   "sample_levels": sample_levels, "deduplicate": True}
        _, aux = model.predict_batch_with_aux(params, {utils.ENCODER_INPUT: tokens}, rng=rng,
                                              decoder_params=decoder, num_decodes=num_decodes,
                                              return_all_decodes=True)
        return aux["items"]

      self._fns[key] = self._jax.jit(predict)
    return self._fns[key]

  def sample(self, encoder_input_tokens: np.ndarray, temperature: float, num_decodes: int,
             sample_levels: Optional[tuple] = None, seed: int = 0) -> np.ndarray:
    """Items [N, num_decodes] ranked by model score, repeats and invalid IDs as -1 (rows in input order)."""
    from tiger_jax import utils  # pylint: disable=g-import-not-at-top
    jax = self._jax
    fn = self._fn(int(num_decodes), None if sample_levels is None else tuple(sample_levels))
    tokens = np.asarray(encoder_input_tokens, np.int32)
    out = np.full((len(tokens), num_decodes), -1, np.int32)
    rng = jax.random.PRNGKey(seed)
    temp = np.float32(temperature)
    for b, (idx, length) in enumerate(utils.eval_batches(utils.nonpad_lengths(tokens), self.batch_size,
                                                         self.length_buckets, tokens.shape[1])):
      batch = np.zeros((self.batch_size, length), np.int32)
      batch[:len(idx)] = tokens[idx, :length]
      got = jax.device_get(fn(self.params, batch, self.trie, jax.random.fold_in(rng, b), temp))
      out[idx] = got[:len(idx)]
    return out
