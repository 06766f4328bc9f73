"""Semantic IDs: the item <-> code-tuple tables every later stage reads, and how they are built.

One artifact format (`semantic_ids.npz`) serves all three ID types of the paper's Table 2, so the
task, training and decoding code never needs to know which one it got:

* RQ-VAE (`tiger_jax.rqvae`): 3 learned codes + a collision token (`add_collision_token`).
* LSH (`lsh_semantic_ids`): codes from signs of random hyperplanes.
* Random (`random_semantic_ids`): uniform codes + a collision token.

Every ID has `NUM_LEVELS` = 4 codes, each in `[0, codebook_size)`, and IDs are unique per item.
"""
from __future__ import annotations

if __name__ == "__main__":
  # `python -m tiger_jax.semantic_ids` runs the importable module instead, so that gin registers its configurables
  # once, under their library names.
  from tiger_jax import semantic_ids as _module  # pylint: disable=import-self
  _module.main()
  raise SystemExit(0)

import dataclasses
import hashlib
import io
import json
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import gin
import numpy as np

from tiger_jax import rqvae
from tiger_jax import utils
from tiger_jax.embed import check_embeddings

NUM_LEVELS = 4
CODEBOOK_SIZE = 256
FILENAME = "semantic_ids.npz"
_FORMAT_VERSION = 1
_REQUIRED_KEYS = ("asins", "codes", "method", "stats")


@dataclasses.dataclass
class SemanticIds:
  """Item order, their 4-code IDs, how they were made, and statistics about them.

  Row i of `codes` is the Semantic ID of `asins[i]`; the asin order is the catalogue order of the
  embeddings the IDs were built from, so downstream code can index by catalogue position.
  """
  asins: np.ndarray  # [N] str
  codes: np.ndarray  # [N, NUM_LEVELS] int32
  method: str
  stats: dict = dataclasses.field(default_factory=dict)
  codebook_size: int = CODEBOOK_SIZE

  def __post_init__(self):
    self.asins = np.asarray(self.asins, dtype=str)
    self.codes = np.ascontiguousarray(np.asarray(self.codes), dtype=np.int32)
    self.validate()
    self._sid_to_index: Optional[dict] = None
    self._asin_to_index: Optional[dict] = None

  def validate(self) -> None:
    """Checks the invariants consumers rely on (shape, range, uniqueness); raises ValueError."""
    if self.asins.ndim != 1:
      raise ValueError(f"SemanticIds.asins: expected 1-D, got shape {self.asins.shape}")
    if self.codes.ndim != 2 or self.codes.shape[0] != self.asins.shape[0]:
      raise ValueError(f"SemanticIds.codes: expected [{self.asins.shape[0]}, levels], "
                       f"got {self.codes.shape}")
    if self.codes.size and (self.codes.min() < 0 or self.codes.max() >= self.codebook_size):
      raise ValueError(f"SemanticIds.codes: values must lie in [0, {self.codebook_size}), got "
                       f"[{self.codes.min()}, {self.codes.max()}]")
    if len(set(self.asins.tolist())) != len(self.asins):
      raise ValueError("SemanticIds.asins: duplicate asin")
    n_unique = _num_unique_rows(self.codes)
    if n_unique != len(self.codes):
      raise ValueError(f"SemanticIds.codes: IDs are not unique ({len(self.codes) - n_unique} "
                       "duplicates); add a collision token")

  def __len__(self) -> int:
    return int(self.asins.shape[0])

  @property
  def num_levels(self) -> int:
    return int(self.codes.shape[1])

  # Tables. Item -> ID is `codes` itself; ID -> item is built lazily (dict lookups are what
  # the decoders need when mapping beams back to items).
  def sid_to_index(self) -> dict[tuple[int, ...], int]:
    """Semantic ID (tuple of ints) -> catalogue index."""
    if self._sid_to_index is None:
      self._sid_to_index = {tuple(row): i for i, row in enumerate(self.codes.tolist())}
    return self._sid_to_index

  def asin_to_index(self) -> dict[str, int]:
    if self._asin_to_index is None:
      self._asin_to_index = {a: i for i, a in enumerate(self.asins.tolist())}
    return self._asin_to_index

  def item_to_sid(self, asin: str) -> tuple[int, ...]:
    return tuple(int(c) for c in self.codes[self.asin_to_index()[asin]])

  def sid_to_item(self, sid: Sequence[int]) -> Optional[str]:
    """The asin with this Semantic ID, or None for an invalid ID (decoders can produce those)."""
    i = self.sid_to_index().get(tuple(int(c) for c in sid))
    return None if i is None else str(self.asins[i])

  def content_hash(self) -> str:
    """SHA-256 over method, asin order and codes: identifies the IDs a task cache was built with.

    Statistics are left out on purpose, so re-computing them (or timings) never invalidates caches.
    """
    h = hashlib.sha256()
    h.update(f"v{_FORMAT_VERSION}|{self.method}|{self.codebook_size}|".encode())
    h.update("\n".join(self.asins.tolist()).encode())
    h.update(b"|")
    h.update(np.ascontiguousarray(self.codes, dtype="<i4").tobytes())
    return h.hexdigest()

  def save(self, path: str) -> str:
    """Writes the npz atomically (a directory gets `semantic_ids.npz`); returns the file path.

    Stats are stored as a JSON string so the file loads without pickle.
    """
    if os.path.isdir(path):
      path = os.path.join(path, FILENAME)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # The reverse table sorted by ID lets non-Python readers binary-search ID -> item.
    order = np.lexsort(self.codes.T[::-1]).astype(np.int32)
    buf = io.BytesIO()
    np.savez(buf,
             format_version=np.int32(_FORMAT_VERSION),
             asins=self.asins,
             codes=self.codes,
             method=np.array(self.method),
             codebook_size=np.int32(self.codebook_size),
             sorted_order=order,
             stats=np.array(json.dumps(_jsonable(self.stats), sort_keys=True)),
             content_hash=np.array(self.content_hash()))
    with utils.atomic_write(path, "wb") as f:
      f.write(buf.getvalue())
    return path

  @classmethod
  def load(cls, path: str) -> "SemanticIds":
    """Reads a table written by `save`; any other file is an error naming it and what was expected."""
    if os.path.isdir(path):
      path = os.path.join(path, FILENAME)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no Semantic-ID table (python -m tiger_jax.semantic_ids writes "
                              f"{FILENAME})")
    expected = (f"expected a Semantic-ID table ({FILENAME}, an .npz with arrays {', '.join(_REQUIRED_KEYS)}, "
                "written by python -m tiger_jax.semantic_ids)")
    try:
      loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise ValueError(f"{path}: not a numpy .npz file; {expected}") from e
    if not isinstance(loaded, np.lib.npyio.NpzFile):
      shape = getattr(loaded, "shape", None)
      raise ValueError(f"{path}: holds one array of shape {shape} (as embeddings.npy does), not a table; "
                       f"{expected}")
    with loaded as z:
      missing = [k for k in _REQUIRED_KEYS if k not in z.files]
      if missing:
        raise ValueError(f"{path}: has arrays {sorted(z.files)}, lacks {missing}; {expected}")
      version = int(z["format_version"]) if "format_version" in z else 0
      if version > _FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version} is newer than this code "
                         f"({_FORMAT_VERSION})")
      return cls(asins=z["asins"], codes=z["codes"], method=str(z["method"]),
                 stats=json.loads(str(z["stats"])),
                 codebook_size=int(z["codebook_size"]) if "codebook_size" in z else CODEBOOK_SIZE)


def _jsonable(x: Any) -> Any:
  """Turns numpy scalars/arrays inside stats into plain JSON values."""
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, np.generic):
    return x.item()
  return x


def _num_unique_rows(codes: np.ndarray) -> int:
  if len(codes) == 0:
    return 0
  return int(np.unique(codes, axis=0).shape[0])


def _check_codes(codes: np.ndarray, name: str, codebook_size: int) -> np.ndarray:
  codes = np.asarray(codes)
  if codes.ndim != 2:
    raise ValueError(f"{name}: expected a 2-D [num_items, levels] array, got shape {codes.shape}")
  if not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(f"{name}: expected integer codes, got dtype {codes.dtype}")
  if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
    raise ValueError(f"{name}: codes must lie in [0, {codebook_size}), got "
                     f"[{codes.min()}, {codes.max()}]")
  return codes.astype(np.int32)


def bucket_ranks(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """For each row: its rank among identical rows (in row order), and each group's size.

  Returns (rank [N], group_id [N], group_sizes [G]); group ids follow np.unique's sorted order.
  """
  n = codes.shape[0]
  if n == 0:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
  _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
  inverse = inverse.reshape(-1)
  order = np.argsort(inverse, kind="stable")  # Rows of a group stay in row (catalogue) order.
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank = np.empty(n, np.int64)
  rank[order] = np.arange(n) - starts[inverse[order]]
  return rank, inverse, counts


def add_collision_token(codes3: np.ndarray, codebook_size: int = CODEBOOK_SIZE,
                        order: Optional[np.ndarray] = None) -> np.ndarray:
  """Appends a last code that makes every ID unique: the item's index within its prefix bucket.

  Items sharing all prefix codes (a "bucket") are numbered 0, 1, 2, ... in catalogue (row) order,
  or in `order` (a permutation of rows, e.g. by distance to the codeword) when given; a lone
  item gets 0. The token must fit in the codebook, so a bucket larger than `codebook_size` is an
  error: it means the quantiser collapsed, and silently wrapping would give duplicate IDs.
  """
  codes3 = _check_codes(codes3, "add_collision_token(codes3)", codebook_size)
  n = codes3.shape[0]
  if order is not None:
    order = np.asarray(order)
    if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
      raise ValueError(f"add_collision_token: order must be a permutation of {n} rows")
  else:
    order = np.arange(n)
  rank_in_order, group, counts = bucket_ranks(codes3[order])
  if n and counts.max() > codebook_size:
    g = int(np.argmax(counts))
    prefix = tuple(int(c) for c in codes3[order][group == g][0])
    raise ValueError(f"add_collision_token: {int(counts[g])} items share the prefix {prefix}, more "
                     f"than the {codebook_size} values a collision token can take")
  token = np.empty(n, np.int32)
  token[order] = rank_in_order
  return np.concatenate([codes3, token[:, None]], axis=1).astype(np.int32)


def seen_first_order(unseen_mask: np.ndarray) -> np.ndarray:
  """Row order for `add_collision_token` that numbers seen items before unseen ones (cold start).

  Within a 3-code bucket the seen items take tokens 0, 1, ... in catalogue order, exactly as if the unseen
  items did not exist, and the unseen items take the next free tokens, in catalogue order. So no unseen
  item's ID equals a seen item's, and the seen items' IDs do not depend on which items are held out.
  """
  unseen_mask = np.asarray(unseen_mask, bool)
  return np.concatenate([np.flatnonzero(~unseen_mask), np.flatnonzero(unseen_mask)])


def code_stats(codes: np.ndarray, codebook_size: int = CODEBOOK_SIZE,
               prefix_levels: int = NUM_LEVELS - 1) -> dict:
  """Per-level codebook usage and prefix-collision statistics, for the artifact and reports."""
  codes = np.asarray(codes)
  stats: dict[str, Any] = {"num_items": int(codes.shape[0]), "codebook_size": int(codebook_size)}
  usage = []
  for level in range(codes.shape[1]):
    used = int(np.unique(codes[:, level]).size)
    usage.append(used / codebook_size)
  stats["codebook_usage"] = usage
  stats["codes_used"] = [int(round(u * codebook_size)) for u in usage]
  prefix = codes[:, :prefix_levels]
  _, _, counts = bucket_ranks(prefix)
  stats["prefix_levels"] = int(prefix_levels)
  stats["unique_prefixes"] = int(counts.size)
  stats["largest_bucket"] = int(counts.max()) if counts.size else 0
  stats["items_in_collisions"] = int(counts[counts > 1].sum())
  stats["unique_ids"] = _num_unique_rows(codes)
  return stats


def _check_asins(asins: Sequence[str], name: str) -> np.ndarray:
  asins = np.asarray(list(asins), dtype=str)
  if asins.ndim != 1 or asins.size == 0:
    raise ValueError(f"{name}: expected a non-empty list of asins")
  if len(set(asins.tolist())) != asins.size:
    raise ValueError(f"{name}: duplicate asin")
  return asins


def random_semantic_ids(asins: Sequence[str], seed: int, num_codes: int = NUM_LEVELS - 1,
                        codebook_size: int = CODEBOOK_SIZE) -> SemanticIds:
  """The paper's "Random ID" baseline: `num_codes` codes drawn uniformly, then a collision token.

  Uniqueness rule: items that draw the same `num_codes` codes are numbered in catalogue order by
  the last code (`add_collision_token`), exactly as RQ-VAE IDs are, so only the semantics differ.
  """
  asins = _check_asins(asins, "random_semantic_ids(asins)")
  if not 1 <= num_codes <= NUM_LEVELS - 1:
    raise ValueError(f"random_semantic_ids: num_codes must be in [1, {NUM_LEVELS - 1}]")
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, codebook_size, size=(asins.size, num_codes), dtype=np.int64)
  if num_codes < NUM_LEVELS - 1:  # Pad with zeros so every ID type has the same length.
    codes = np.concatenate([codes, np.zeros((asins.size, NUM_LEVELS - 1 - num_codes), np.int64)], 1)
  codes4 = add_collision_token(codes, codebook_size)
  stats = code_stats(codes4, codebook_size)
  stats.update({"seed": int(seed), "num_codes": int(num_codes)})
  return SemanticIds(asins, codes4, "random", stats, codebook_size)



def lsh_codes(embeddings: np.ndarray, seed: int, num_bits: int = 8,
              num_codes: int = NUM_LEVELS) -> np.ndarray:
  """Random-hyperplane LSH: code k packs the signs of hyperplanes [k*h, (k+1)*h) as h bits.

  Hyperplane normals are standard normal; bit j of a code is the j-th hyperplane (MSB first).
  """
  x = np.asarray(embeddings, np.float32)
  rng = np.random.default_rng(seed)
  planes = rng.standard_normal((x.shape[1], num_bits * num_codes)).astype(np.float32)
  bits = (x @ planes > 0).reshape(x.shape[0], num_codes, num_bits).astype(np.int64)
  weights = 1 << np.arange(num_bits - 1, -1, -1)
  return (bits * weights).sum(-1).astype(np.int32)


def _dedupe_last_code(codes: np.ndarray, codebook_size: int) -> tuple[np.ndarray, int]:
  """Makes rows unique by moving duplicates' last code to the nearest free value in their prefix.

  Within each prefix bucket (all codes but the last), items are visited in catalogue order; an
  item keeps its last code if no earlier item took it, else it gets the free value closest to it
  (ties: the smaller value). Returns (codes, number of items moved).
  """
  codes = codes.copy()
  rank, group, counts = bucket_ranks(codes)
  if not (counts > 1).any():
    return codes, 0
  prefix = codes[:, :-1]
  _, pgroup, pcounts = bucket_ranks(prefix)
  if pcounts.max() > codebook_size:
    g = int(np.argmax(pcounts))
    p = tuple(int(c) for c in prefix[pgroup == g][0])
    raise ValueError(f"LSH: {int(pcounts[g])} items share the prefix {p}, more than the "
                     f"{codebook_size} values the last code can take")
  moved = 0
  values = np.arange(codebook_size)
  for g in np.unique(pgroup[np.isin(group, np.nonzero(counts > 1)[0])]):
    rows = np.nonzero(pgroup == g)[0]  # Catalogue order.
    taken = np.zeros(codebook_size, bool)
    # Items that keep their code are claimed first, so a moved item never displaces one.
    keep = rank[rows] == 0
    taken[codes[rows[keep], -1]] = True
    for r in rows[~keep]:
      want = codes[r, -1]
      dist = np.where(taken, np.iinfo(np.int64).max, np.abs(values - want) * 2 + (values > want))
      codes[r, -1] = int(np.argmin(dist))
      taken[codes[r, -1]] = True
      moved += 1
  return codes, moved


def lsh_semantic_ids(embeddings: np.ndarray, asins: Sequence[str], seed: int, num_bits: int = 8,
                     num_codes: int = NUM_LEVELS) -> SemanticIds:
  """The paper's LSH Semantic IDs (Table 2): m codes of h random-hyperplane bits each.

  Uniqueness rule:
  * num_codes == 4 (default, paper's m = 4): all four codes are LSH codes; items whose four codes
    coincide keep the first (catalogue order) as is and move the others' 4th code to the nearest
    value not yet used within the same 3-code prefix (`_dedupe_last_code`). A 3-code prefix
    shared by more than 2^h items is an error.
  * num_codes == 3: three LSH codes plus a collision token, exactly like RQ-VAE IDs.
  """
  asins = _check_asins(asins, "lsh_semantic_ids(asins)")
  x = check_embeddings(embeddings, "lsh_semantic_ids(embeddings)", asins.size)
  codebook_size = 1 << num_bits
  if num_codes == NUM_LEVELS:
    raw = lsh_codes(x, seed, num_bits, num_codes)
    codes4, moved = _dedupe_last_code(raw, codebook_size)
    collision_rule = "nearest free 4th code within the 3-code prefix"
  elif num_codes == NUM_LEVELS - 1:
    raw = lsh_codes(x, seed, num_bits, num_codes)
    codes4 = add_collision_token(raw, codebook_size)
    moved = int((codes4[:, -1] > 0).sum())
    collision_rule = "collision token"
  else:
    raise ValueError(f"lsh_semantic_ids: num_codes must be {NUM_LEVELS} or {NUM_LEVELS - 1}")
  stats = code_stats(codes4, codebook_size)
  raw_unique = _num_unique_rows(raw)
  stats.update({"seed": int(seed), "num_bits": int(num_bits), "num_codes": int(num_codes),
                "raw_unique_ids": raw_unique, "items_reassigned": int(moved),
                "collision_rule": collision_rule})
  return SemanticIds(asins, codes4, "lsh", stats, codebook_size)


def code_purity(first_codes: np.ndarray, labels: Sequence[str]) -> dict:
  """How well one code level separates item categories (the paper's Fig. 4 analysis).

  For each code value: its most common label and that label's share of the items with the code.
  `purity` is the item-weighted mean of those shares (1.0: every code holds one category);
  `majority_baseline` is the share of the most common label overall, what a single code scores.
  """
  first_codes = np.asarray(first_codes).reshape(-1)
  labels = np.asarray(list(labels), dtype=str)
  if labels.shape != first_codes.shape:
    raise ValueError(f"code_purity: {first_codes.size} codes but {labels.size} labels")
  names, label_idx = np.unique(labels, return_inverse=True)
  codes, code_idx = np.unique(first_codes, return_inverse=True)
  table = np.zeros((codes.size, names.size), np.int64)
  np.add.at(table, (code_idx, label_idx), 1)
  sizes = table.sum(1)
  top = table.argmax(1)
  share = table[np.arange(codes.size), top] / sizes
  per_code = [{"code": int(c), "items": int(n), "top_label": str(names[t]), "share": float(s)}
              for c, n, t, s in zip(codes, sizes, top, share)]
  overall = table.sum(0)
  return {
      "purity": float((share * sizes).sum() / sizes.sum()),
      "majority_baseline": float(overall.max() / overall.sum()),
      "num_codes": int(codes.size),
      "labels": {str(n): int(k) for n, k in zip(names, overall)},
      "per_code": per_code,
      "table": table.tolist(),
      "table_codes": codes.tolist(),
      "table_labels": names.tolist(),
  }


# ----------------------------------------------------------------------------- RQ-VAE IDs and the stage
def rqvae_semantic_ids(embeddings: np.ndarray, asins: Sequence[str],
                       cfg: Optional[rqvae.RQVAEConfig] = None,
                       log_fn: Optional[Callable[[str], None]] = None,
                       unseen_mask: Optional[np.ndarray] = None,
                       extra_fit_embeddings: Optional[np.ndarray] = None
                       ) -> tuple[SemanticIds, dict]:
  """Trains the RQ-VAE and turns its codes into unique 4-code Semantic IDs.

  The 4th code is the collision token: the item's index among items with the same 3 codes, in
  catalogue order (`semantic_ids.add_collision_token`). Returns (ids, the rqvae.train_rqvae result).

  Cold start: with `unseen_mask` [N] the RQ-VAE is fit on the other (seen) items only, the unseen items
  get codes from the trained encoder and codebooks (`rqvae.assign_codes`), and collision tokens number seen
  items first (`semantic_ids.seen_first_order`), so an unseen item never takes a seen item's ID.

  Combined catalogue (paper Table 10): `extra_fit_embeddings` [M, d] (another catalogue's items) are added to
  the items the RQ-VAE is fit on; only `asins` get IDs (the encoder and codebooks code them, `rqvae.assign_codes`),
  and the collision token numbers them among themselves, since only they share a vocabulary with the model.
  """
  cfg = cfg or rqvae.RQVAEConfig()
  asins = np.asarray(list(asins), dtype=str)
  x = np.asarray(embeddings)
  if x.ndim >= 1 and x.shape[0] != asins.shape[0]:
    raise ValueError(f"rqvae_semantic_ids: {x.shape[0]} embedding rows but {asins.shape[0]} asins")
  extra = None
  if extra_fit_embeddings is not None:
    extra = check_embeddings(extra_fit_embeddings, "rqvae_semantic_ids(extra_fit_embeddings)")
    if extra.shape[1] != x.shape[1]:
      raise ValueError(f"rqvae_semantic_ids: extra_fit_embeddings have dimension {extra.shape[1]}, the "
                       f"catalogue's {x.shape[1]} (embed both with the same model)")
  if unseen_mask is None and extra is None:
    result = rqvae.train_rqvae(x, cfg, log_fn)
    codes4 = add_collision_token(result["codes3"], cfg.codebook_size)
  else:
    if unseen_mask is not None:
      unseen_mask = np.asarray(unseen_mask, bool)
      if unseen_mask.shape != asins.shape:
        raise ValueError(f"rqvae_semantic_ids: unseen_mask has shape {unseen_mask.shape}, expected "
                         f"{asins.shape}")
    fit = x if unseen_mask is None else x[~unseen_mask]
    result = rqvae.train_rqvae(fit if extra is None else np.concatenate([fit, extra]), cfg, log_fn)
    codes3 = rqvae.assign_codes(result["params"], x, cfg)
    order = None if unseen_mask is None else seen_first_order(unseen_mask)
    codes4 = add_collision_token(codes3, cfg.codebook_size, order=order)
  stats = code_stats(codes4, cfg.codebook_size)
  fit_items = stats.get("num_items")
  stats.update(result["stats"])
  stats["rqvae_fit_items"], stats["num_items"] = stats["num_items"], fit_items
  if extra is not None:
    stats["extra_fit_items"] = int(len(extra))
  if unseen_mask is not None:
    stats["cold_start"] = cold_start_id_stats(codes4, unseen_mask)
  return SemanticIds(asins, codes4, "rqvae", stats, cfg.codebook_size), result


def cold_start_id_stats(codes4: np.ndarray, unseen_mask: np.ndarray) -> dict:
  """How unseen items landed: how many share a 3-code prefix with some seen item (retrievable by TIGER)."""
  seen_prefixes = {tuple(r) for r in codes4[~unseen_mask, :3].tolist()}
  shared = sum(tuple(r) in seen_prefixes for r in codes4[unseen_mask, :3].tolist())
  return {"num_seen": int((~unseen_mask).sum()), "num_unseen": int(unseen_mask.sum()),
          "unseen_sharing_a_seen_prefix": int(shared),
          "collision_rule": "seen items first within a 3-code bucket, then unseen (catalogue order)"}


# ----------------------------------------------------------------------------- artifact stage
EMBEDDINGS_FILE = "embeddings.npy"
ASIN_FILES = ("asins.txt", "item_asins.txt", "embeddings_asins.txt")
ASIN_META_FILES = ("embeddings.json", "embeddings_meta.json", "embeddings_info.json")


def load_embeddings(work_dir: str, embeddings_file: str = EMBEDDINGS_FILE,
                    asins_file: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads `embeddings.npy` and the item order (a text file, one asin a line, or JSON `asins`)."""
  path = embeddings_file if os.path.isabs(embeddings_file) else os.path.join(work_dir,
                                                                             embeddings_file)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no embeddings; run the embedding stage first")
  x = np.load(path, allow_pickle=False)
  candidates = [asins_file] if asins_file else list(ASIN_META_FILES + ASIN_FILES)
  candidates = [c if os.path.isabs(c) else os.path.join(work_dir, c) for c in candidates]
  for c in candidates:
    if not os.path.exists(c):
      continue
    if c.endswith(".json"):
      with open(c) as f:
        meta = json.load(f)
      if "asins" not in meta:
        continue
      asins = np.asarray(meta["asins"], dtype=str)
    else:
      with open(c) as f:
        asins = np.asarray([line.strip() for line in f if line.strip()], dtype=str)
    if asins.shape[0] != x.shape[0]:
      raise ValueError(f"{c}: {asins.shape[0]} asins but {path} has {x.shape[0]} rows")
    return x, asins
  raise FileNotFoundError(f"{work_dir}: no asin order beside {path} (looked for "
                          f"{', '.join(candidates)})")


def input_hash(x: np.ndarray, asins: np.ndarray, method: str, cfg: dict) -> str:
  """What the artifact depends on; stored in its stats so the stage can be skipped on re-runs."""
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(x, dtype="<f4").tobytes())
  h.update("\n".join(asins.tolist()).encode())
  h.update(json.dumps({"method": method, "config": cfg}, sort_keys=True).encode())
  return h.hexdigest()


def _extra_fit_embeddings(dirs: Sequence[str], asins: np.ndarray) -> tuple[np.ndarray, list[dict]]:
  """Rows of other catalogues' embeddings to fit the RQ-VAE on, minus items `asins` already holds."""
  own, rows, sources = set(asins.tolist()), [], []
  for d in dirs:
    x, extra_asins = load_embeddings(d)
    keep = np.array([a not in own for a in extra_asins.tolist()], bool)
    rows.append(np.asarray(x)[keep])
    own.update(extra_asins[keep].tolist())
    sources.append({"dir": os.path.abspath(d), "items": int(keep.sum()), "shared_asins_skipped": int((~keep).sum()),
                    "hash": input_hash(np.asarray(x), extra_asins, "extra", {})})
  return np.concatenate(rows).astype(np.float32), sources


@gin.configurable
def make_semantic_ids(work_dir: Optional[str] = None, method: str = "rqvae", seed: int = 0,
                      output_file: str = FILENAME, embeddings_file: str = EMBEDDINGS_FILE,
                      asins_file: Optional[str] = None, lsh_bits: int = 8, lsh_codes: int = 4,
                      cold_start_split: Optional[str] = None,
                      extra_embedding_dirs: Sequence[str] = (),
                      embeddings_dir: Optional[str] = None, data_dir: Optional[str] = None,
                      collaborative: bool = False,
                      force: bool = False, log_fn: Callable[[str], None] = print
                      ) -> SemanticIds:
  """Stage 3 of the pipeline: `method` in {rqvae, lsh, random}; skipped when up to date.

  The item embeddings are read from `embeddings_dir` (default: `work_dir`); the IDs are written to
  `work_dir`. `collaborative` fuses them with co-occurrence vectors of `data_dir`'s training prefixes first
  (`tiger_jax.collaborative.fuse_collaborative`, whose gin bindings set the fusion).

  The RQ-VAE settings come from `rqvae.RQVAEConfig` (gin); `seed` replaces its seed. `cold_start_split` (a
  `cold_start_split.json` of tiger_jax.data.cold_start) fits the RQ-VAE on the seen items only and gives the
  unseen items IDs from the trained model (`rqvae_semantic_ids`); only the RQ-VAE is fit on data, so
  the other methods reject it. `extra_embedding_dirs` (each with embeddings.npy + asin order of another
  catalogue, e.g. Sports for the paper's Table 10) are added to the RQ-VAE's training items; only this work
  dir's items get IDs. Items of an extra catalogue that this one also holds (same asin) are fit once.
  """
  if not work_dir:
    raise ValueError("make_semantic_ids: no work dir (pass --work_dir or bind "
                     "make_semantic_ids.work_dir)")
  source = embeddings_dir or work_dir
  fusion = None
  if collaborative:  # fuse_collaborative reads the text embeddings itself
    if not data_dir:
      raise ValueError("make_semantic_ids.collaborative needs the dataset: pass --data_dir")
    from tiger_jax import collaborative as collaborative_lib  # pylint: disable=g-import-not-at-top
    from tiger_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
    x, info = collaborative_lib.fuse_collaborative(load_dataset(data_dir), source, None)
    asins, fusion = np.asarray(info["asins"], dtype=str), info["collaborative"]
  else:
    x, asins = load_embeddings(source, embeddings_file, asins_file)
  unseen_mask = None
  if cold_start_split:
    if method != "rqvae":
      raise ValueError(f"make_semantic_ids: cold_start_split applies to method 'rqvae', not {method!r}")
    from tiger_jax.data import cold_start  # pylint: disable=g-import-not-at-top
    split = cold_start.ColdStartSplit.load(cold_start_split)
    unseen_mask = split.unseen_mask(asins.tolist())
  extra = None
  if extra_embedding_dirs:
    if method != "rqvae":
      raise ValueError(f"make_semantic_ids: extra_embedding_dirs apply to method 'rqvae', not {method!r}")
    extra, extra_sources = _extra_fit_embeddings(extra_embedding_dirs, asins)
  if method == "rqvae":
    cfg = dataclasses.replace(rqvae.RQVAEConfig(), seed=seed)
    cfg_dict = cfg.to_dict()
    if unseen_mask is not None:
      cfg_dict["cold_start_split"] = split.content_hash()
    if extra is not None:
      cfg_dict["extra_fit_embeddings"] = [{k: v for k, v in e.items() if k != "dir"} for e in extra_sources]
  elif method == "lsh":
    cfg, cfg_dict = None, {"seed": seed, "num_bits": lsh_bits, "num_codes": lsh_codes}
  elif method == "random":
    cfg, cfg_dict = None, {"seed": seed}
  else:
    raise ValueError(f"make_semantic_ids: unknown method {method!r} (rqvae, lsh, random)")
  if fusion is not None:
    cfg_dict["collaborative"] = fusion
  out = output_file if os.path.isabs(output_file) else os.path.join(work_dir, output_file)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)  # before training, not after it
  digest = input_hash(x, asins, method, cfg_dict)
  if os.path.exists(out) and not force:
    old = SemanticIds.load(out)
    if old.stats.get("input_hash") == digest:
      log_fn(f"{out} is up to date (input hash {digest[:12]}); skipping")
      return old
  t0 = time.time()
  if method == "rqvae":
    ids, result = rqvae_semantic_ids(x, asins, cfg, log_fn, unseen_mask, extra)
    if extra is not None:
      ids.stats["extra_embedding_dirs"] = extra_sources
    np.save(os.path.join(os.path.dirname(out), "rqvae_history.npy"), result["history"])
  elif method == "lsh":
    ids = lsh_semantic_ids(x, asins, seed, lsh_bits, lsh_codes)
  else:
    ids = random_semantic_ids(asins, seed)
  ids.stats["input_hash"] = digest
  if fusion is not None:
    ids.stats["collaborative"] = fusion
  ids.stats["seconds"] = time.time() - t0
  ids.save(out)
  # The effective config beside the artifact, as t5x writes config.gin.
  with open(os.path.join(os.path.dirname(out), "semantic_ids_config.gin"), "w") as f:
    f.write(gin.operative_config_str())
  summary = {k: ids.stats.get(k) for k in ("codebook_usage", "unique_prefixes", "largest_bucket",
                                           "items_in_collisions", "reconstruction_loss")}
  log_fn(f"wrote {out}: {json.dumps(summary)}")
  return ids


# ----------------------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None) -> None:
  """`python -m tiger_jax.semantic_ids`: t5x's gin flags plus --work_dir, --embeddings_dir, --data_dir, --force.

  The recipe (method, RQ-VAE settings, collaborative fusion) comes from the gin files: a gin/rqvae/*.gin file,
  or the experiment file that includes one (every stage of run.sh reads the same experiment file).
  """
  from tiger_jax import compilation  # pylint: disable=g-import-not-at-top
  from tiger_jax import gin_utils  # pylint: disable=g-import-not-at-top

  def extra(parser):
    parser.add_argument("--work_dir", default=None, help="Gets semantic_ids.npz.")
    parser.add_argument("--embeddings_dir", default=None,
                        help="Holds embeddings.npy and its item order (default: --work_dir).")
    parser.add_argument("--data_dir", default=None, help="The dataset; needed by the collaborative recipe.")
    parser.add_argument("--force", action="store_true", help="Rebuild even when up to date.")

  flags = gin_utils.parse_flags(argv, extra, prog="tiger_jax.semantic_ids")
  gin_utils.setup_logging(flags.log_level)
  gin_utils.parse_gin_or_exit(flags, finalize_config=False)
  compilation.enable_compilation_cache(flags.compilation_cache_dir)
  kwargs = {"force": True} if flags.force else {}
  for name in ("work_dir", "embeddings_dir", "data_dir"):
    if getattr(flags, name):
      kwargs[name] = getattr(flags, name)
  make_semantic_ids(**kwargs)

