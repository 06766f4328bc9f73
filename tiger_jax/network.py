"""T5 encoder-decoder in Flax linen, the network TIGER trains on Semantic-ID sequences.

The architecture follows T5 (and t5x's example network) so that configs and intuitions carry over:
pre-norm residual blocks with RMS layer norm (no mean subtraction, no bias), relative position
biases with T5's log buckets (one table per stack, shared by all layers of that stack), no
1/sqrt(head_dim) scaling of attention logits (T5 folds it into the query initialiser), a ReLU or
gated MLP, one token embedding shared by encoder and decoder, and optionally logits read off that
embedding (scaled by emb_dim**-0.5, as T5 1.0 does).

Masks come from token ids (0 = padding), as t5x's Transformer computes them. The decoder's masks
come from `decoder_target_tokens`, because `decoder_input_tokens` starts with the BOS id 0, which is
also the padding id.

Incremental decoding keeps keys and values in the flax 'cache' collection. A first `decode=True`
call on full-length dummy inputs (with `mutable=['cache']`) creates the zeroed cache; every later
`decode=True` call takes exactly one token per row and writes it at the cache index. Cache leaves
are `cached_key`/`cached_value` [batch, max_decode_length, heads, head_dim] (batch first, so beam
search can expand them along axis 0) and a scalar int32 `cache_index`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
DType = Any

# A large negative bias rather than -inf, so fully masked rows stay finite (uniform attention).
_MASK_BIAS = -1e10


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of the T5 network; bound from gin (`network.T5Config.emb_dim = 128`).

  `dtype` is the compute dtype (e.g. 'bfloat16'); parameters are always stored in float32.
  `mlp_activations` is ('relu',) for T5 1.0's MLP or e.g. ('gelu', 'linear') for a gated MLP
  (the product of one projection per entry, as T5 1.1 uses).
  """
  vocab_size: int = 3072
  dtype: Any = 'float32'
  emb_dim: int = 128
  num_heads: int = 6
  num_encoder_layers: int = 4
  num_decoder_layers: int = 4
  head_dim: int = 64
  mlp_dim: int = 1024
  mlp_activations: Sequence[str] = ('relu',)
  dropout_rate: float = 0.1
  # t5x drops whole feature vectors shared along the length axis; () gives ordinary dropout.
  dropout_broadcast_dims: Sequence[int] = (-2,)
  logits_via_embedding: bool = True
  float32_attention_logits: bool = True
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6

  def __post_init__(self):
    # Gin hands over lists; flax modules need hashable attributes.
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    object.__setattr__(self, 'dropout_broadcast_dims', tuple(self.dropout_broadcast_dims))
    object.__setattr__(self, 'dtype', jnp.dtype(self.dtype))
    if not self.mlp_activations:
      raise ValueError('T5Config.mlp_activations: need at least one activation')


def count_params(tree) -> int:
  """Total number of scalars in a parameter tree (for logs and reports)."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


# ----------------------------------------------------------------------------- masks


def make_attention_mask(query_valid: Array, key_valid: Array, dtype: DType = jnp.float32) -> Array:
  """[B, Lq] x [B, Lk] validity -> [B, 1, Lq, Lk] mask (1 = may attend)."""
  mask = jnp.logical_and(query_valid[:, :, None], key_valid[:, None, :])
  return mask[:, None, :, :].astype(dtype)


def make_decoder_mask(decoder_target_tokens: Array, dtype: DType = jnp.float32) -> Array:
  """Causal mask restricted to non-padding positions of the targets: [B, 1, L, L]."""
  length = decoder_target_tokens.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), dtype=bool))
  valid = decoder_target_tokens > 0
  mask = jnp.logical_and(causal[None], jnp.logical_and(valid[:, :, None], valid[:, None, :]))
  return mask[:, None, :, :].astype(dtype)


# ----------------------------------------------------------------------------- relative positions


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
  """T5's bucketing of (memory - query) offsets: exact for small offsets, log-spaced beyond.

  Computed in numpy on static shapes, in float32 as Mesh TensorFlow did, so the buckets are
  identical to the reference T5 implementations.
  """
  n = -np.asarray(relative_position, dtype=np.int64)
  buckets = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    buckets += (n < 0).astype(np.int64) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # Clamp below at max_exact so the log is finite; those entries take the exact branch anyway.
  ratio = np.maximum(n, max_exact).astype(np.float32) / np.float32(max_exact)
  large = max_exact + (np.log(ratio) / np.float32(np.log(max_distance / max_exact))
                       * np.float32(num_buckets - max_exact)).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return (buckets + np.where(is_small, n, large)).astype(np.int32)


class RelativePositionBiases(nn.Module):
  """One learned scalar per (head, bucket); T5 computes it once per stack and shares it."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, query_length: int, key_length: int, bidirectional: bool) -> Array:
    """Returns the [1, heads, query_length, key_length] bias for positions 0.. of both."""
    table = self.param('rel_embedding', nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
                       (self.num_heads, self.num_buckets), jnp.float32)
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    buckets = relative_position_bucket(relative, bidirectional, self.num_buckets, self.max_distance)
    values = jnp.take(jnp.asarray(table, self.dtype), jnp.asarray(buckets), axis=1)
    return values[None]


# ----------------------------------------------------------------------------- layers


class LayerNorm(nn.Module):
  """T5's RMS norm: rescale by the root mean square, learned scale, no centring and no bias."""
  epsilon: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x = jnp.asarray(x, jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return jnp.asarray(x * scale, self.dtype)


class Embed(nn.Module):
  """Token embedding that can also produce logits against its own table (tied output layer)."""
  num_embeddings: int
  features: int
  dtype: DType = jnp.float32

  def setup(self):
    self.embedding = self.param('embedding', nn.initializers.normal(stddev=1.0),
                                (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, ids: Array) -> Array:
    return jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)

  def attend(self, x: Array) -> Array:
    """Logits in float32: the vocabulary projection is cheap here and the loss wants precision."""
    return jnp.einsum('...d,vd->...v', jnp.asarray(x, jnp.float32), self.embedding)


def _activation(name: str) -> Callable[[Array], Array]:
  if name == 'linear':
    return lambda x: x
  if not hasattr(nn, name):
    raise ValueError(f'T5Config.mlp_activations: unknown activation {name!r}')
  return getattr(nn, name)


class MlpBlock(nn.Module):
  """Position-wise MLP; with several activations, the product of one projection per activation."""
  mlp_dim: int
  activations: Sequence[str] = ('relu',)
  dropout_rate: float = 0.1
  dropout_broadcast_dims: Sequence[int] = (-2,)
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
    h = None
    for i, name in enumerate(self.activations):
      dense_name = 'wi' if len(self.activations) == 1 else f'wi_{i}'
      y = nn.Dense(self.mlp_dim, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=init, name=dense_name)(x)
      y = _activation(name)(y)
      h = y if h is None else h * y
    h = nn.Dropout(self.dropout_rate, broadcast_dims=self.dropout_broadcast_dims)(
        h, deterministic=deterministic)
    return nn.Dense(x.shape[-1], use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=init, name='wo')(h)


class MultiHeadAttention(nn.Module):
  """Multi-head attention without logit scaling (T5), with an optional KV cache for decoding."""
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.1
  dropout_broadcast_dims: Sequence[int] = (-2,)
  float32_logits: bool = True
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Optional[Array] = None,
               bias: Optional[Array] = None, deterministic: bool = True,
               decode: bool = False) -> Array:
    """inputs [B, Lq, D] / [B, Lk, D]; mask [B, 1|H, Lq, Lk]; bias [1|B, H, Lq, Lk]."""
    # T5 folds 1/sqrt(head_dim) into the query initialiser instead of scaling the logits.
    kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
    query_init = nn.initializers.variance_scaling(1.0 / self.head_dim, 'fan_in', 'normal')
    projection = functools.partial(nn.DenseGeneral, features=(self.num_heads, self.head_dim),
                                   axis=-1, use_bias=False, dtype=self.dtype,
                                   param_dtype=jnp.float32)
    query = projection(kernel_init=query_init, name='query')(inputs_q)
    key = projection(kernel_init=kernel_init, name='key')(inputs_kv)
    value = projection(kernel_init=kernel_init, name='value')(inputs_kv)

    if decode:
      is_initialized = self.has_variable('cache', 'cached_key')
      cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
      cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, dtype=jnp.int32))
      if is_initialized:
        batch, max_length, _, _ = cached_key.value.shape
        if query.shape[1] != 1:
          raise ValueError(f'cached decoding takes one token per call, got length {query.shape[1]}')
        if query.shape[0] != batch:
          raise ValueError(f'cached decoding: batch {query.shape[0]} != cache batch {batch}')
        index = cache_index.value
        key = jax.lax.dynamic_update_slice(cached_key.value, key, (0, index, 0, 0))
        value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, index, 0, 0))
        cached_key.value = key
        cached_value.value = value
        cache_index.value = index + 1
        # Only positions written so far are visible; this is the causal mask of cached decoding.
        visible = (jnp.arange(max_length) <= index)[None, None, None, :]
        mask = visible if mask is None else jnp.logical_and(mask > 0, visible)
        if bias is not None:
          if bias.shape[-1] != max_length:
            raise ValueError(f'cached decoding: position bias covers {bias.shape[-1]} positions '
                             f'but the cache holds {max_length}; pass max_decode_length to '
                             'decode()')
          # The query is at absolute position `index`: take that row of the full bias.
          bias = jax.lax.dynamic_slice_in_dim(bias, index, 1, axis=-2)

    logits_dtype = jnp.float32 if self.float32_logits else self.dtype
    logits = jnp.einsum('bqhd,bkhd->bhqk', query.astype(logits_dtype), key.astype(logits_dtype))
    if bias is not None:
      logits = logits + bias.astype(logits_dtype)
    if mask is not None:
      logits = jnp.where(mask > 0, logits, jnp.asarray(_MASK_BIAS, logits_dtype))
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout_rate, broadcast_dims=self.dropout_broadcast_dims)(
        weights, deterministic=deterministic)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, value)
    return nn.DenseGeneral(inputs_q.shape[-1], axis=(-2, -1), use_bias=False, dtype=self.dtype,
                           param_dtype=jnp.float32, kernel_init=kernel_init, name='out')(out)


def _dropout(config: T5Config) -> nn.Dropout:
  return nn.Dropout(config.dropout_rate, broadcast_dims=config.dropout_broadcast_dims)


def _attention(config: T5Config, name: str) -> MultiHeadAttention:
  return MultiHeadAttention(num_heads=config.num_heads, head_dim=config.head_dim,
                            dropout_rate=config.dropout_rate,
                            dropout_broadcast_dims=config.dropout_broadcast_dims,
                            float32_logits=config.float32_attention_logits, dtype=config.dtype,
                            name=name)


def _mlp(config: T5Config) -> MlpBlock:
  return MlpBlock(mlp_dim=config.mlp_dim, activations=config.mlp_activations,
                  dropout_rate=config.dropout_rate,
                  dropout_broadcast_dims=config.dropout_broadcast_dims, dtype=config.dtype,
                  name='mlp')


def _norm(config: T5Config, name: str) -> LayerNorm:
  return LayerNorm(epsilon=config.layer_norm_epsilon, dtype=config.dtype, name=name)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention then MLP, each added back to the residual stream."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, bias: Array, deterministic: bool) -> Array:
    cfg = self.config
    y = _norm(cfg, 'pre_attention_layer_norm')(x)
    y = _attention(cfg, 'attention')(y, y, mask, bias, deterministic)
    x = x + _dropout(cfg)(y, deterministic=deterministic)
    y = _norm(cfg, 'pre_mlp_layer_norm')(x)
    y = _mlp(cfg)(y, deterministic)
    return x + _dropout(cfg)(y, deterministic=deterministic)


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, attention over the encoding, then MLP."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, encoded: Array, decoder_mask: Optional[Array],
               encoder_decoder_mask: Array, bias: Array, deterministic: bool,
               decode: bool) -> Array:
    cfg = self.config
    y = _norm(cfg, 'pre_self_attention_layer_norm')(x)
    y = _attention(cfg, 'self_attention')(y, y, decoder_mask, bias, deterministic, decode=decode)
    x = x + _dropout(cfg)(y, deterministic=deterministic)
    y = _norm(cfg, 'pre_cross_attention_layer_norm')(x)
    y = _attention(cfg, 'encoder_decoder_attention')(y, encoded, encoder_decoder_mask, None,
                                                    deterministic)
    x = x + _dropout(cfg)(y, deterministic=deterministic)
    y = _norm(cfg, 'pre_mlp_layer_norm')(x)
    y = _mlp(cfg)(y, deterministic)
    return x + _dropout(cfg)(y, deterministic=deterministic)


class Encoder(nn.Module):
  """Embeds tokens and runs the bidirectional stack; returns [B, L, emb_dim] in config.dtype."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, mask: Array, deterministic: bool) -> Array:
    cfg = self.config
    length = tokens.shape[-1]
    bias = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                  cfg.relative_attention_max_distance, cfg.num_heads,
                                  dtype=cfg.dtype, name='relpos_bias')(length, length, True)
    x = self.shared_embedding(tokens.astype(jnp.int32))
    x = _dropout(cfg)(x, deterministic=deterministic)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f'layers_{i}')(x, mask, bias, deterministic)
    x = _norm(cfg, 'encoder_norm')(x)
    return _dropout(cfg)(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Runs the causal stack over (shifted) target tokens and returns float32 logits [B, L, V]."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, tokens: Array, decoder_mask: Optional[Array],
               encoder_decoder_mask: Array, deterministic: bool, decode: bool = False,
               max_decode_length: Optional[int] = None) -> Array:
    cfg = self.config
    # In cached decoding each call sees one token, but the bias must span the whole cache so the
    # attention layer can pick the row of the current position.
    length = max_decode_length if (decode and max_decode_length) else tokens.shape[-1]
    bias = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                  cfg.relative_attention_max_distance, cfg.num_heads,
                                  dtype=cfg.dtype, name='relpos_bias')(length, length, False)
    y = self.shared_embedding(tokens.astype(jnp.int32))
    y = _dropout(cfg)(y, deterministic=deterministic)
    for i in range(cfg.num_decoder_layers):
      y = DecoderLayer(cfg, name=f'layers_{i}')(y, encoded, decoder_mask, encoder_decoder_mask,
                                                bias, deterministic, decode)
    y = _norm(cfg, 'decoder_norm')(y)
    y = _dropout(cfg)(y, deterministic=deterministic)
    if cfg.logits_via_embedding:
      # T5 1.0: reuse the input embedding; rescale so logits do not grow with emb_dim.
      return self.shared_embedding.attend(y) / jnp.sqrt(jnp.float32(cfg.emb_dim))
    return nn.Dense(cfg.vocab_size, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal'),
                    name='logits_dense')(y)


class Transformer(nn.Module):
  """T5 encoder-decoder with t5x's method names (`encode`, `decode`, `__call__`)."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = True) -> Array:
    """[B, Li] token ids -> [B, Li, emb_dim] encodings (padding rows are junk but masked later)."""
    valid = encoder_input_tokens > 0
    mask = make_attention_mask(valid, valid)
    return self.encoder(encoder_input_tokens, mask, deterministic=not enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = True,
             decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    """Logits [B, Ld, V] (float32) for decoder inputs; with decode=True, one cached step."""
    encoder_valid = encoder_input_tokens > 0
    if decode:
      # The cache enforces causality; every query position is real.
      decoder_mask = None
      query_valid = jnp.ones(decoder_input_tokens.shape, dtype=bool)
    else:
      if decoder_target_tokens is None:
        raise ValueError('decode(): decoder_target_tokens is needed for the padding mask')
      decoder_mask = make_decoder_mask(decoder_target_tokens)
      query_valid = decoder_target_tokens > 0
    encoder_decoder_mask = make_attention_mask(query_valid, encoder_valid)
    return self.decoder(encoded, decoder_input_tokens, decoder_mask, encoder_decoder_mask,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, enable_dropout: bool = True, decode: bool = False,
               max_decode_length: Optional[int] = None) -> Array:
    """Teacher-forced logits [B, Ld, V] in float32."""
    encoded = self.encode(encoder_input_tokens, enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       enable_dropout=enable_dropout, decode=decode,
                       max_decode_length=max_decode_length)
