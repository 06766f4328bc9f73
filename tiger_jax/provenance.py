"""Fingerprints that tie a trained model to the task cache and Semantic-ID table it was trained on.

The task cache's info.json records what it was built from (the data files' fingerprint, the ID table's
`SemanticIds.content_hash()`, feature lengths, ...). Training copies those fingerprints into
MODEL_DIR/provenance.json when it starts; a resumed run, eval and infer compare the cache they are given
with that record and refuse a different one, because a model's output tokens mean nothing under another
ID table. Everything here reads info.json only (a few kB), never the arrays.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Optional

from tiger_jax import utils

FILENAME = "provenance.json"
INFO_FILE = "info.json"
# info.json fields that describe one build rather than its content (two builds of the same inputs differ
# in them), and where the inputs lay: left out of the cache's fingerprint.
_VOLATILE_INFO = ("created", "seconds", "backend", "seqio_version", "built_from")
_SHORT = 12


class ProvenanceError(ValueError):
  """A model and a cache (or ID table) that were not built for each other."""


def short(fingerprint: Optional[str]) -> str:
  return fingerprint[:_SHORT] if fingerprint else "none"


def info_hash(info: Mapping[str, Any]) -> str:
  """SHA-256 over the content-describing fields of a cache's info.json (canonical JSON)."""
  content = {k: v for k, v in info.items() if k not in _VOLATILE_INFO}
  return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def cache_fingerprint(cache_dir: Optional[str], task: str) -> dict:
  """What identifies one task's cache: task, Semantic-ID table hash, data fingerprint, info.json hash.

  A cache without info.json (an interrupted rebuild, or hand-made) has `info_hash` None.
  """
  root = utils.resolve_cache_dir(cache_dir)
  path = os.path.join(root, task, INFO_FILE)
  if not os.path.exists(path):
    return {"task": task, "cache_dir": os.path.abspath(root), "semantic_ids_hash": None,
            "data_fingerprint": None, "info_hash": None, "built_from": None}
  try:
    with open(path) as f:
      info = json.load(f)
  except json.JSONDecodeError as e:
    raise ProvenanceError(f"{path}: not valid JSON ({e}); rebuild the cache (python -m tasks.cache_tasks)") from e
  return {"task": task, "cache_dir": os.path.abspath(root),
          "semantic_ids_hash": info.get("semantic_ids_hash"),
          "data_fingerprint": info.get("data_fingerprint"),
          "info_hash": info_hash(info), "built_from": info.get("built_from")}


def rebuild_command(record: Mapping[str, Any]) -> str:
  """The cache_tasks command that rebuilds the cache a record describes (as far as the record knows)."""
  built = record.get("built_from") or {}
  parts = ["python -m tasks.cache_tasks", f"--tasks={record['task']}",
           f"--output_cache_dir={record.get('cache_dir', 'CACHE_DIR')}"]
  parts.append(f"--data_dir={built['data_dir']}" if built.get("data_dir") else "--data_dir=DATA_DIR")
  parts.append(f"--semantic_ids={built['semantic_ids']}" if built.get("semantic_ids")
               else "--semantic_ids=SEMANTIC_IDS.npz")
  if built.get("cold_start_split"):
    parts.append(f"--cold_start_split={built['cold_start_split']}")
  if built.get("use_user_token") is False:
    parts.append("--no_user_token")
  return " ".join(parts)


def read(model_dir: str) -> Optional[dict]:
  """MODEL_DIR's provenance record, or None when it has none (a run from before records were kept)."""
  path = os.path.join(model_dir, FILENAME)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write(model_dir: str, cache: Mapping[str, Any]) -> str:
  """Records the training cache's fingerprints in MODEL_DIR (atomically)."""
  return utils.write_json(os.path.join(model_dir, FILENAME), {"cache": dict(cache)})


def _differences(recorded: Mapping[str, Any], current: Mapping[str, Any], fields) -> list[str]:
  names = {"task": "task", "semantic_ids_hash": "Semantic IDs", "data_fingerprint": "data",
           "info_hash": "cache info.json"}
  out = []
  for field in fields:
    a, b = recorded.get(field), current.get(field)
    if a != b:
      shown = (a, b) if field == "task" else (short(a), short(b))
      out.append(f"{names[field]} {shown[0]} (model) vs {shown[1]} (cache)")
  return out


def check_cache(model_dir: str, current: Mapping[str, Any], purpose: str, strict: bool) -> None:
  """Raises ProvenanceError when `current` (a cache_fingerprint) is not the cache MODEL_DIR was trained on.

  strict (resuming training): task, IDs, data and info.json must all match. Otherwise (eval, infer): the
  Semantic IDs and the data must, which is what gives the model's output tokens their meaning.
  """
  record = read(model_dir)
  if record is None:
    return
  recorded = record["cache"]
  fields = (("task", "semantic_ids_hash", "data_fingerprint", "info_hash") if strict
            else ("semantic_ids_hash", "data_fingerprint"))
  diffs = _differences(recorded, current, fields)
  if not diffs:
    return
  where = os.path.join(current.get("cache_dir", "?"), current["task"])
  missing = " (it has no info.json: an interrupted or hand-made build)" if current.get("info_hash") is None else ""
  raise ProvenanceError(
      f"{purpose}: the task cache {where}{missing} is not the one {model_dir} was trained on: "
      f"{'; '.join(diffs)} (see {os.path.join(model_dir, FILENAME)}). "
      + ("Train into a new MODEL_DIR, or rebuild" if strict else "Rebuild")
      + f" the cache it was trained on: {rebuild_command(recorded)}")
