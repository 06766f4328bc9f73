r"""Collaborative embeddings: text embeddings fused with co-occurrence vectors, so IDs also group items bought together.

TIGER's Semantic IDs come from item text alone, so two items that users buy one after the other share an ID
prefix only if their descriptions are alike. Where text is poor (Amazon Sports: truncated titles, few
brands or prices) the decoder then has to learn every such pair by itself. LETTER (Wang et al., CIKM 2024)
adds collaborative signal to the RQ-VAE through an extra loss; this stage does it on the input side, which
leaves the RQ-VAE and everything after it unchanged:

  1. co-occurrence counts within `window` positions of each training prefix (the counts of the transition
     baseline, `tiger_jax.baselines.transitions`, made symmetric), leaving the last `holdout` items of every
     sequence out: 2 keeps the validation and test targets unseen, so the IDs can be chosen on validation;
  2. positive pointwise mutual information of those counts, then a truncated SVD: item vector U * sqrt(S),
     scaled to unit length (items that co-occur with nothing, e.g. unseen ones, get zeros: text only);
  3. fused row = [text embedding, weight * co-occurrence vector].

The Semantic-ID stage fuses them itself when its recipe says so (gin/rqvae/collaborative.gin:
`make_semantic_ids.collaborative = True`). This module's entry point writes the fused embeddings to a work
dir instead, for other uses (nearest-neighbour baselines, other ID methods):

  python -m tiger_jax.collaborative --data_dir=data/beauty --text_dir=work/beauty/embeddings \
      --work_dir=work/beauty/cf_embeddings [--gin.fuse_collaborative.weight=1.0]
"""
from __future__ import annotations

if __name__ == "__main__":
  # `python -m tiger_jax.collaborative` runs the importable module instead, so that gin registers its configurables
  # once, under their library names.
  from tiger_jax import collaborative as _module  # pylint: disable=import-self
  _module.main()
  raise SystemExit(0)

import json
import logging
import os
import time
from typing import Optional, Sequence

import gin
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sp_linalg

from tiger_jax import embed
from tiger_jax.baselines import transitions
from tiger_jax.data.types import Dataset

logger = logging.getLogger("tiger_jax.collaborative")


def cooccurrence(dataset: Dataset, holdout: int = 2, window: int = 3, decay: float = 0.5) -> sp.csr_matrix:
  """Symmetric [items, items] decayed co-occurrence counts over each user's s[0 : n - holdout]."""
  counts, _ = transitions.transition_counts(dataset.sessions, len(dataset.catalog), holdout, window, decay)
  both = (counts + counts.T).tocsr()
  both.setdiag(0)  # an item repeated within the window says nothing about its neighbours
  both.eliminate_zeros()
  return both


def ppmi(counts: sp.csr_matrix) -> sp.csr_matrix:
  """max(0, log(c_ij * total / (row_i * row_j))) on the nonzero entries of a symmetric count matrix."""
  counts = sp.csr_matrix(counts, dtype=np.float64)
  row = np.asarray(counts.sum(axis=1)).ravel()
  total = row.sum()
  if total <= 0:
    raise ValueError("ppmi: no co-occurring items (every training prefix is shorter than two items?)")
  coo = counts.tocoo()
  pmi = np.log(coo.data * total / (row[coo.row] * row[coo.col]))
  keep = pmi > 0
  return sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)


def svd_vectors(matrix: sp.csr_matrix, dim: int) -> np.ndarray:
  """[items, dim] rows U * sqrt(S) of a truncated SVD, unit length; rows of items without entries are zero.

  Deterministic: a fixed ARPACK start vector, and each column's sign set so its largest entry is positive."""
  n = matrix.shape[0]
  if not 0 < dim < n:
    raise ValueError(f"svd_vectors: need 0 < dim < number of items ({n}), got dim={dim}")
  u, s, _ = sp_linalg.svds(matrix.astype(np.float64), k=dim, v0=np.full(n, 1.0 / np.sqrt(n)))
  order = np.argsort(-s)
  u, s = u[:, order], s[order]
  flip = np.sign(u[np.abs(u).argmax(axis=0), np.arange(dim)])
  vectors = u * flip * np.sqrt(np.maximum(s, 0.0))
  vectors[np.diff(matrix.indptr) == 0] = 0.0
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  return np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


@gin.configurable
def fuse_collaborative(dataset: Dataset, text_dir: str, work_dir: Optional[str], holdout: int = 2,
                       window: int = 3, decay: float = 0.5, dim: int = 64, weight: float = 1.0
                       ) -> tuple[np.ndarray, dict]:
  """The text embeddings of `text_dir` beside weighted co-occurrence vectors.

  Returns (fused [items, d_text + dim] float32, its info); with a `work_dir` both are also written there as
  embeddings.{npy,json}. The Semantic-ID stage calls it without one (gin/rqvae/collaborative.gin)."""
  if weight < 0:
    raise ValueError(f"fuse_collaborative.weight must be >= 0, got {weight}")
  if work_dir is not None and os.path.realpath(text_dir) == os.path.realpath(work_dir):
    raise ValueError(f"fuse_collaborative: work_dir {work_dir} is text_dir; the fused embeddings would "
                     "overwrite the text ones")
  text, asins, text_info = embed.load_embeddings(text_dir)
  if list(asins) != list(dataset.catalog.asins):
    where = os.path.join(text_dir, embed.INFO_FILE)
    raise ValueError(f"{where}: its item order is not {dataset.name}'s catalogue ({len(asins)} against "
                     f"{len(dataset.catalog)} items); embed this dataset into {text_dir} first")
  start = time.time()
  counts = cooccurrence(dataset, holdout, window, decay)
  vectors = svd_vectors(ppmi(counts), dim)
  fused = np.concatenate([text, weight * vectors], axis=1).astype(np.float32)
  params = dict(holdout=holdout, window=window, decay=decay, dim=dim, weight=weight)
  info = {"model_name": f"{text_info.get('model_name', 'text')}+cooccurrence", "num_items": len(asins),
          "dim": int(fused.shape[1]), "asins": list(asins), "text_dir": os.path.abspath(text_dir),
          "text_sentences_sha256": text_info.get("sentences_sha256"), "collaborative": params,
          "cooccurrence_pairs": int(counts.nnz),
          "items_without_cooccurrence": int((np.diff(counts.indptr) == 0).sum()),
          "seconds": round(time.time() - start, 2)}
  if work_dir is not None:
    embed.save_embeddings(work_dir, fused, info)
  logger.info("fused %d items: text %d-d + co-occurrence %d-d (weight %g; %d items without co-occurrence)%s",
              len(asins), text.shape[1], dim, weight, info["items_without_cooccurrence"],
              f" -> {work_dir}" if work_dir else "")
  return fused, info


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Stage entry point: t5x's gin flags, --data_dir, --text_dir (the embed stage's work dir), --work_dir."""
  from tiger_jax import gin_utils  # pylint: disable=g-import-not-at-top
  from tiger_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
  flags = gin_utils.parse_stage_flags(argv, "tiger_jax.collaborative", lambda parser: parser.add_argument(
      "--text_dir", required=True, help="Work dir of the embed stage (the text embeddings)."))
  dataset = load_dataset(flags.data_dir)
  fused, info = fuse_collaborative(dataset, flags.text_dir, flags.work_dir)
  print(json.dumps({"stage": "collaborative", "dataset": dataset.stats(), "embeddings": list(fused.shape),
                    **{k: info[k] for k in ("model_name", "collaborative", "cooccurrence_pairs",
                                            "items_without_cooccurrence", "seconds")}}, indent=1))

