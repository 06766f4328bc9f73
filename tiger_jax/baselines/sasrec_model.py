"""SASRec (Kang & McAuley 2018) in Flax: causal self-attention over item embeddings, tied output layer.

Layout: item embedding * sqrt(d) + learned position embedding -> dropout -> N pre-LayerNorm blocks
(LN -> causal multi-head attention -> dropout -> residual; LN -> ReLU MLP -> dropout -> residual) -> final
LayerNorm. The original code normalises before attention and before the feed-forward part and ends with a
LayerNorm, i.e. it is pre-LN in effect; pre-LN also trains stably at Adam 1e-3 without warm-up. Scores of the
next item are dot products with the same item embedding table over the whole catalogue (the padding row is
not an item). Losses (`next_item_loss`): full-catalogue softmax cross-entropy (the default), the original's
binary cross-entropy with one sampled negative per position, or a sampled softmax over the target and N
negatives drawn uniformly per sequence.

Ids: catalogue index + 1, 0 pads (tiger_jax/baselines/sequences.py). Attention never reads a padding key,
and hidden states at padding positions are zeroed after every block, as in the original.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
  """Model size and regularisation; the catalogue size comes from the data."""
  max_len: int = 50  # items of history read (TIGER's encoder reads 20)
  emb_dim: int = 64
  num_layers: int = 2
  num_heads: int = 1  # the paper found one head enough
  mlp_dim: int = 64  # the original's point-wise feed-forward keeps the model width
  dropout_rate: float = 0.5
  attention_dropout_rate: Optional[float] = None  # None: dropout_rate
  dtype: str = "float32"  # activations; parameters stay float32

  def validate(self) -> "SASRecConfig":
    checks = [("max_len", self.max_len >= 1, ">= 1"), ("emb_dim", self.emb_dim >= 1, ">= 1"),
              ("num_layers", self.num_layers >= 0, ">= 0"), ("mlp_dim", self.mlp_dim >= 1, ">= 1"),
              ("num_heads", self.num_heads >= 1 and self.emb_dim % self.num_heads == 0,
               f">= 1 and divide emb_dim={self.emb_dim}"),
              ("dropout_rate", 0.0 <= self.dropout_rate < 1.0, "in [0, 1)"),
              ("attention_dropout_rate", self.attention_dropout_rate is None
               or 0.0 <= self.attention_dropout_rate < 1.0, "None or in [0, 1)"),
              ("dtype", self.dtype in DTYPES, f"one of {sorted(DTYPES)}")]
    for field, ok, rule in checks:
      if not ok:
        raise ValueError(f"SASRecConfig.{field} must be {rule}, got {getattr(self, field)!r}")
    return self

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]


class Block(nn.Module):
  """One pre-LN transformer block with causal attention."""
  config: SASRecConfig

  @nn.compact
  def __call__(self, x, attention_mask, deterministic: bool):
    c = self.config
    attention_dropout = c.dropout_rate if c.attention_dropout_rate is None else c.attention_dropout_rate
    h = nn.LayerNorm(dtype=c.compute_dtype, name="attention_norm")(x)
    h = nn.MultiHeadDotProductAttention(num_heads=c.num_heads, dtype=c.compute_dtype,
                                        dropout_rate=attention_dropout, name="attention")(
                                            h, h, mask=attention_mask, deterministic=deterministic)
    x = x + nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    h = nn.LayerNorm(dtype=c.compute_dtype, name="mlp_norm")(x)
    h = nn.relu(nn.Dense(c.mlp_dim, dtype=c.compute_dtype, name="mlp_in")(h))
    h = nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    h = nn.Dense(c.emb_dim, dtype=c.compute_dtype, name="mlp_out")(h)
    return x + nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)


class SASRec(nn.Module):
  """ids [B, L] -> next-item scores over the catalogue at every position."""
  num_items: int
  config: SASRecConfig

  def setup(self):
    c = self.config
    self.item_embedding = nn.Embed(self.num_items + 1, c.emb_dim, dtype=c.compute_dtype,
                                   embedding_init=nn.initializers.normal(stddev=c.emb_dim ** -0.5))
    self.position_embedding = nn.Embed(c.max_len, c.emb_dim, dtype=c.compute_dtype,
                                       embedding_init=nn.initializers.normal(stddev=c.emb_dim ** -0.5))
    self.embedding_dropout = nn.Dropout(c.dropout_rate)
    self.blocks = [Block(c, name=f"block_{i}") for i in range(c.num_layers)]
    self.final_norm = nn.LayerNorm(dtype=c.compute_dtype)

  def encode(self, ids: jax.Array, deterministic: bool = True) -> jax.Array:
    """Hidden states [B, L, d]; position j depends on ids[:, :j + 1] only."""
    c = self.config
    if ids.shape[-1] != c.max_len:
      raise ValueError(f"ids have length {ids.shape[-1]}; this model reads max_len={c.max_len}")
    real = (ids > 0)[..., None]
    x = self.item_embedding(ids) * math.sqrt(c.emb_dim) + self.position_embedding(jnp.arange(c.max_len))
    x = self.embedding_dropout(x, deterministic=deterministic) * real
    causal = nn.make_causal_mask(ids)
    keys_real = nn.make_attention_mask(jnp.ones_like(ids, bool), ids > 0)
    mask = nn.combine_masks(causal, keys_real)
    for block in self.blocks:
      x = block(x, mask, deterministic) * real
    return self.final_norm(x)

  def item_scores(self, hidden: jax.Array) -> jax.Array:
    """Dot products with every item's embedding (the tied output layer), float32 [..., num_items]."""
    table = self.item_embedding.embedding[1:]  # row 0 is padding, not an item
    dtype = self.config.compute_dtype
    return jnp.einsum("...d,nd->...n", hidden.astype(dtype), table.astype(dtype),
                      preferred_element_type=jnp.float32)

  def item_vectors(self, ids: jax.Array) -> jax.Array:
    """Output-layer rows of item ids (catalogue index + 1), in the compute dtype: [..., d]."""
    return self.item_embedding.embedding[ids].astype(self.config.compute_dtype)

  def __call__(self, ids: jax.Array, deterministic: bool = True) -> jax.Array:
    """Scores [B, L, num_items] of the item after each position."""
    return self.item_scores(self.encode(ids, deterministic))

  def next_item_scores(self, ids: jax.Array) -> jax.Array:
    """Scores [B, num_items] of the item after the last position (inputs are left-padded)."""
    return self.item_scores(self.encode(ids, deterministic=True)[:, -1])


LOSSES = ("softmax", "bce", "sampled_softmax")


def softmax_loss(scores: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
  """Mean over weighted positions of -log softmax(scores)[label]; scores [..., n], labels [...] in [0, n)."""
  log_z = jax.nn.logsumexp(scores, axis=-1)
  target_score = jnp.take_along_axis(scores, labels[..., None], axis=-1)[..., 0]
  return ((log_z - target_score) * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def bce_loss(positive: jax.Array, negative: jax.Array, weights: jax.Array) -> jax.Array:
  """SASRec's loss: mean over weighted positions of -log sigmoid(positive) - log(1 - sigmoid(negative))."""
  per_position = jax.nn.softplus(-positive) + jax.nn.softplus(negative)
  return (per_position * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def sampled_softmax_loss(positive: jax.Array, negatives: jax.Array, is_target: jax.Array,
                         weights: jax.Array) -> jax.Array:
  """Cross-entropy of the target among itself and its negatives [..., N]; a negative that is the target
  itself (`is_target`) is left out of the normaliser."""
  negatives = jnp.where(is_target, -jnp.inf, negatives)
  log_z = jnp.logaddexp(positive, jax.nn.logsumexp(negatives, axis=-1))
  return ((log_z - positive) * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def negatives_except(rng: jax.Array, targets: jax.Array, num_items: int) -> jax.Array:
  """One item id per position, uniform over the catalogue minus that position's target (ids: index + 1).

  The original code also avoids the user's other items; in catalogues of thousands of items that changes a
  handful of draws per epoch.
  """
  draw = jax.random.randint(rng, targets.shape, 0, max(num_items - 1, 1))
  label = jnp.maximum(targets - 1, 0)
  return draw + (draw >= label) + 1


def next_item_loss(module: SASRec, params, inputs: jax.Array, targets: jax.Array,
                   dropout_rng: Optional[jax.Array], loss: str = "softmax", num_negatives: int = 256,
                   negatives_rng: Optional[jax.Array] = None,
                   target_positions: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """(loss averaged over positions with a target, target count).

  loss: 'softmax' (full catalogue), 'bce' (one negative per position, `negatives_except`), or
  'sampled_softmax' (`num_negatives` uniform items per row, shared by its positions).
  target_positions: for 'softmax', the flat indices into [B * L] of the positions that have a target
  (`flat_target_positions`; B * L marks an unused slot): only those are scored against the catalogue, which is
  most of a step's work, instead of every padded position.
  """
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
  rngs = None if dropout_rng is None else {"dropout": dropout_rng}
  weights = (targets > 0).astype(jnp.float32)
  count = weights.sum()
  if loss == "softmax" and target_positions is None:
    scores = module.apply({"params": params}, inputs, deterministic=dropout_rng is None, rngs=rngs)
    return softmax_loss(scores, jnp.maximum(targets - 1, 0), weights), count
  if loss == "softmax":
    hidden = module.apply({"params": params}, inputs, deterministic=dropout_rng is None, rngs=rngs,
                          method=SASRec.encode)
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    used = target_positions < flat_hidden.shape[0]
    slot = jnp.where(used, target_positions, 0)
    slot_targets = jnp.where(used, targets.reshape(-1)[slot], 0)
    scores = module.apply({"params": params}, flat_hidden[slot], method=SASRec.item_scores)
    return softmax_loss(scores, jnp.maximum(slot_targets - 1, 0), (slot_targets > 0).astype(jnp.float32)), count
  if negatives_rng is None:
    raise ValueError(f"loss {loss!r} samples negatives: pass negatives_rng")
  hidden = module.apply({"params": params}, inputs, deterministic=dropout_rng is None, rngs=rngs,
                        method=SASRec.encode)
  dtype = module.config.compute_dtype
  hidden = hidden.astype(dtype)
  vectors = lambda ids: module.apply({"params": params}, ids, method=SASRec.item_vectors)
  positive = jnp.einsum("bld,bld->bl", hidden, vectors(targets), preferred_element_type=jnp.float32)
  if loss == "bce":
    negative_ids = negatives_except(negatives_rng, targets, module.num_items)
    negative = jnp.einsum("bld,bld->bl", hidden, vectors(negative_ids), preferred_element_type=jnp.float32)
    return bce_loss(positive, negative, weights), count
  if num_negatives < 1:
    raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
  negative_ids = jax.random.randint(negatives_rng, (inputs.shape[0], num_negatives), 1, module.num_items + 1)
  negatives = jnp.einsum("bld,bnd->bln", hidden, vectors(negative_ids), preferred_element_type=jnp.float32)
  is_target = negative_ids[:, None, :] == targets[:, :, None]
  return sampled_softmax_loss(positive, negatives, is_target, weights), count


def flat_target_positions(targets: np.ndarray, width: int) -> np.ndarray:
  """[..., width] int32: per batch of `targets` [..., B, L], the flat indices (row-major over B x L) of its
  positions with a target, then B * L in the unused slots. A batch with more than `width` targets is an error."""
  *lead, batch, length = targets.shape
  flat = targets.reshape(-1, batch * length) > 0
  counts = flat.sum(axis=1)
  if counts.size and counts.max() > width:
    raise ValueError(f"a batch has {int(counts.max())} targets, more than the width {width}")
  out = np.full((flat.shape[0], width), batch * length, np.int32)
  for i, row in enumerate(flat):
    found = np.flatnonzero(row)
    out[i, :len(found)] = found
  return out.reshape(*lead, width)


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
