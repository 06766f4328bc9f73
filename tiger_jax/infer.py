"""Recommendations from a trained MODEL_DIR: a Python API and a command line.

  from tiger_jax.infer import Recommender
  rec = Recommender.from_model_dir("work/beauty/model_quick")
  rec.recommend(["B004756YJA", "B0020YLEYK"], user="A1YJEY40YUW4SE", k=10)
  -> [{"asin": ..., "title": ..., "score": log-prob}, ...]

  python -m tiger_jax.infer --model_dir=work/beauty/model_quick --history=B004756YJA,B0020YLEYK [--user=ID]

The model is rebuilt from MODEL_DIR/config.gin (written by training), the catalogue and its Semantic IDs
from the task cache the run trained on (checked against MODEL_DIR/provenance.json: another cache or ID
table is refused). Histories are handled as in training: the most recent 20 items are
kept, an unknown ASIN is an error that lists it, an empty history (a cold user) still gets an answer.
"""
from __future__ import annotations

import argparse
import importlib.util  # noqa: F401  (gin-config 0.5.0 needs it imported on Python 3.11)
import json
import os
from typing import Optional, Sequence

import gin
import numpy as np

from tiger_jax import checkpoints
from tiger_jax import eval as eval_lib
from tiger_jax import provenance
from tiger_jax.data import splits
from tiger_jax import vocab as vocab_lib


class UnknownItemError(KeyError):
  """History items that are not in the trained catalogue."""


def bound_model(model):
  """Returns its argument: gin binds it to %MODEL so that the model is built as training built it."""
  return model


def model_from_config(config_path: str):
  """Rebuilds MODEL from a training run's effective config.gin (written with dynamic registration)."""
  with open(config_path) as f:
    text = f.read()
  text += "\nfrom tiger_jax import infer as infer_script\ninfer_script.bound_model.model = %MODEL\n"
  with gin.unlock_config():
    gin.clear_config()
    gin.parse_config(text)
  from tiger_jax import infer as importable  # pylint: disable=g-import-not-at-top,import-self
  return gin.get_configurable(importable.bound_model)()


class Recommender:
  """Top-K next items for a history of ASINs, from a model, its params and the catalogue tables."""

  def __init__(self, model, params, tables: eval_lib.CatalogTables, num_beams: int = 20,
               constrain: bool = True, layout: vocab_lib.TokenLayout = vocab_lib.DEFAULT_LAYOUT,
               max_history: int = splits.MAX_HISTORY, input_length: Optional[int] = None):
    self.tables, self.layout, self.max_history = tables, layout, max_history
    self.input_length = input_length or 1 + max_history * layout.num_levels
    self._index = {a: i for i, a in enumerate(tables.asins.tolist())}
    self._retriever = eval_lib.Retriever(model, params, tables.trie(layout), num_beams, constrain,
                                         batch_size=1, length_buckets=None)

  @classmethod
  def from_model_dir(cls, model_dir: str, checkpoint: str = "best", cache_dir: Optional[str] = None,
                     task: Optional[str] = None, **kwargs) -> "Recommender":
    config = os.path.join(model_dir, "config.gin")
    if not os.path.exists(config):
      raise FileNotFoundError(f"{config} not found: is {model_dir} a training MODEL_DIR?")
    model = model_from_config(config)
    cache_dir = cache_dir or _macro("TASK_CACHE_DIR")
    task = task or _macro("MIXTURE_OR_TASK_NAME")
    provenance.check_cache(model_dir, provenance.cache_fingerprint(cache_dir, task), "infer", strict=False)
    params, _ = checkpoints.restore_params(model_dir, checkpoint)
    return cls(model, params, eval_lib.CatalogTables.load(cache_dir, task), **kwargs)

  def encode_history(self, history: Sequence[str], user: Optional[str] = None) -> np.ndarray:
    """[1, input_length] encoder tokens, exactly as the task builds them (user token + 4 tokens per item)."""
    unknown = [a for a in history if a not in self._index]
    if unknown:
      raise UnknownItemError(f"{len(unknown)} history items are not in the catalogue: {unknown}")
    recent = [self._index[a] for a in history][-self.max_history:]
    tokens = [self.layout.user_token(user)] if user else []
    tokens += self.tables.item_tokens[recent].reshape(-1).tolist()
    row = np.zeros([1, self.input_length], np.int32)
    row[0, :len(tokens)] = tokens
    return row

  def recommend(self, history: Sequence[str], user: Optional[str] = None, k: int = 10,
                exclude_history: bool = False) -> list[dict]:
    items, scores = self._retriever.retrieve(self.encode_history(history, user))
    seen = set(history) if exclude_history else set()
    out, taken = [], set()
    for item, score in zip(items[0].tolist(), scores[0].tolist()):
      if item < 0 or item in taken or self.tables.asins[item] in seen:
        continue
      taken.add(item)
      out.append({"asin": str(self.tables.asins[item]), "title": str(self.tables.titles[item]),
                  "score": float(score)})
      if len(out) == k:
        break
    return out


def _macro(name: str):
  try:
    return gin.query_parameter(f"%{name}")
  except ValueError as e:
    raise ValueError(f"config.gin does not set {name}; pass it explicitly") from e


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description="Top-K recommendations for a history of ASINs.")
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--history", default="", help="Comma-separated ASINs, oldest first (may be empty).")
  parser.add_argument("--user", default=None, help="reviewerID (for the user token), optional.")
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--checkpoint", default="best")
  parser.add_argument("--cache_dir", default=None)
  parser.add_argument("--task", default=None)
  args = parser.parse_args(argv)
  try:
    rec = Recommender.from_model_dir(args.model_dir, args.checkpoint, args.cache_dir, args.task)
  except provenance.ProvenanceError as e:
    raise SystemExit(f"error: {e}") from None
  history = [a for a in args.history.split(",") if a]
  try:
    top = rec.recommend(history, args.user, args.k)
  except UnknownItemError as e:
    raise SystemExit(f"error: {e.args[0]}") from None
  for rank, row in enumerate(top, start=1):
    print(json.dumps({"rank": rank, **row}))


if __name__ == "__main__":
  from tiger_jax import infer as _infer_module  # pylint: disable=import-self
  _infer_module.main()
