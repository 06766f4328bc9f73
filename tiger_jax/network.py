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

The encoder-decoder attention's keys and values depend only on the encoding, so cached decoding
should not re-project them at every step for every beam (at TIGER's sizes that projection was
~90% of a beam step's FLOPs, 64 of 70 MFLOP per row). `Transformer.precompute_cross_kv(encoded)` projects them once per
input, and `decode(..., cross_kv=...)` uses them instead of `encoded`. The encoding (or its keys
and values) may also have a batch B that divides the decoder batch N = B * copies: decoder row n
then attends to input n // copies (beam search's row = b * beams + k), and the attention
broadcasts the keys over the copies instead of materialising them per row.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tiger_jax import dropout as dropout_lib

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
  # 'rng': flax's nn.Dropout; 'hash': masks hashed from the element index (tiger_jax/dropout.py), fewer kernels.
  dropout_impl: str = 'rng'
  logits_via_embedding: bool = True
  float32_attention_logits: bool = True
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  # t5x's `one_hot` lookups: embeddings and relative-position biases as one-hot matmuls, so their
  # gradients are matmuls rather than scatter-adds whose colliding indices GPUs serialise.
  one_hot_lookups: bool = False
  # Cast every matmul weight to `dtype` once at the start of the step, all behind one barrier, rather than
  # inside each layer; the same values, and a faster training step on GPU (gin/models turns it on).
  cast_weights_once: bool = False

  def __post_init__(self):
    # Gin hands over lists; flax modules need hashable attributes.
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    object.__setattr__(self, 'dropout_broadcast_dims', tuple(self.dropout_broadcast_dims))
    object.__setattr__(self, 'dtype', jnp.dtype(self.dtype))
    if not self.mlp_activations:
      raise ValueError('T5Config.mlp_activations: need at least one activation')
    if self.dropout_impl not in dropout_lib.IMPLS:
      raise ValueError(f'T5Config.dropout_impl: {self.dropout_impl!r} is not one of {dropout_lib.IMPLS}')


def cast_weights_to_compute_dtype(params: Any, config: T5Config) -> Any:
  """`params` with the weights each layer would cast to `config.dtype` already cast, behind one barrier.

  The matmul kernels and relative-position tables are cast inside their layers anyway; the token embedding
  (also used for float32 logits), the layer-norm scales and a float32 `logits_dense` keep float32. Gradients
  flow back through the casts to the float32 parameters unchanged.
  """
  if config.dtype == jnp.float32:
    return params
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = ['/'.join(str(getattr(k, 'key', k)) for k in path) for path, _ in leaves]
  chosen = [i for i, name in enumerate(names)
            if (name.endswith('/kernel') and 'logits_dense' not in name) or name.endswith('/rel_embedding')]
  values = [leaf for _, leaf in leaves]
  cast = jax.lax.optimization_barrier([values[i].astype(config.dtype) for i in chosen])
  for i, value in zip(chosen, cast):
    values[i] = value
  return jax.tree_util.tree_unflatten(treedef, values)


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
  one_hot: bool = False

  @nn.compact
  def __call__(self, query_length: int, key_length: int, bidirectional: bool) -> Array:
    """Returns the [1, heads, query_length, key_length] bias for positions 0.. of both."""
    table = self.param('rel_embedding', nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
                       (self.num_heads, self.num_buckets), jnp.float32)
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    buckets = relative_position_bucket(relative, bidirectional, self.num_buckets, self.max_distance)
    table = jnp.asarray(table, self.dtype)
    if self.one_hot:
      one_hot = np.eye(self.num_buckets, dtype=np.float32)[buckets]
      values = jnp.einsum('hn,qkn->hqk', table, jnp.asarray(one_hot, self.dtype),
                          precision=jax.lax.Precision.HIGHEST)
    else:
      values = jnp.take(table, jnp.asarray(buckets), axis=1)
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
  one_hot: bool = False

  def setup(self):
    self.embedding = self.param('embedding', nn.initializers.normal(stddev=1.0),
                                (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, ids: Array) -> Array:
    table = jnp.asarray(self.embedding, self.dtype)
    if self.one_hot:  # HIGHEST keeps float32 rows exact where matmuls would round them to tf32
      return jnp.dot(jax.nn.one_hot(ids, self.num_embeddings, dtype=self.dtype), table,
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.take(table, ids, axis=0)

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
  dropout_impl: str = 'rng'
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
    h = dropout_lib.make_dropout(self.dropout_rate, self.dropout_broadcast_dims, self.dropout_impl)(
        h, deterministic=deterministic)
    return nn.Dense(x.shape[-1], use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=init, name='wo')(h)


def _head_projection(num_heads: int, head_dim: int, dtype: DType, kernel_init=None,
                     **kwargs) -> nn.DenseGeneral:
  """[..., D] -> [..., heads, head_dim]; one definition for attention and `project_cross_kv`."""
  if kernel_init is None:
    kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
  return nn.DenseGeneral(features=(num_heads, head_dim), axis=-1, use_bias=False, dtype=dtype,
                         param_dtype=jnp.float32, kernel_init=kernel_init, **kwargs)


def _shared_kv_logits(query: Array, key_t: Array) -> Array:
  """query [N, Lq, H, D] x key_t [B, H, D, Lk] -> logits [N, H, Lq, Lk], N = B * copies.

  The copies of an input become extra query rows of one [copies * Lq, D] x [D, Lk] matmul per
  (input, head): the keys are read once per input, and XLA:CPU runs these batched matmuls far
  faster than one tiny matrix-vector product per row.
  """
  rows, length, heads, dim = query.shape
  inputs = key_t.shape[0]
  grouped = query.reshape(inputs, -1, heads, dim).transpose(0, 2, 1, 3)  # [B, H, c*Lq, D]
  logits = jnp.matmul(grouped, key_t).reshape(inputs, heads, rows // inputs, length, -1)
  return logits.transpose(0, 2, 1, 3, 4).reshape(rows, heads, length, -1)


def _shared_kv_values(weights: Array, value: Array) -> Array:
  """weights [N, H, Lq, Lk] x value [B, H, Lk, D] -> [N, Lq, H, D], N = B * copies."""
  rows, heads, length, keys = weights.shape
  inputs = value.shape[0]
  grouped = weights.reshape(inputs, rows // inputs, heads, length, keys).transpose(0, 2, 1, 3, 4)
  out = jnp.matmul(grouped.reshape(inputs, heads, -1, keys), value)  # [B, H, c*Lq, D]
  out = out.reshape(inputs, heads, rows // inputs, length, -1).transpose(0, 2, 3, 1, 4)
  return out.reshape(rows, length, heads, -1)


def _kv_layout(key: Array, value: Array) -> tuple[Array, Array]:
  """Projected [B, Lk, H, D] keys/values -> the layout `kv` takes: [B, H, D, Lk], [B, H, Lk, D]."""
  return key.transpose(0, 2, 3, 1), value.transpose(0, 2, 1, 3)


class MultiHeadAttention(nn.Module):
  """Multi-head attention without logit scaling (T5), with an optional KV cache for decoding."""
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.1
  dropout_broadcast_dims: Sequence[int] = (-2,)
  dropout_impl: str = 'rng'
  float32_logits: bool = True
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array], mask: Optional[Array] = None,
               bias: Optional[Array] = None, deterministic: bool = True,
               decode: bool = False, kv: Optional[tuple[Array, Array]] = None) -> Array:
    """inputs [N, Lq, D] / [B, Lk, D]; mask [N, 1|H, Lq, Lk]; bias [1|N, H, Lq, Lk].

    `kv`: precomputed (key [B, H, head_dim, Lk], value [B, H, Lk, head_dim]), laid out for
    batched matmuls (see `project_cross_kv`), used instead of projecting `inputs_kv` (which may
    then be None). B may divide N (see the module docstring): query row n attends to key row
    n // (N // B).
    """
    # T5 folds 1/sqrt(head_dim) into the query initialiser instead of scaling the logits.
    kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
    query_init = nn.initializers.variance_scaling(1.0 / self.head_dim, 'fan_in', 'normal')
    projection = functools.partial(_head_projection, self.num_heads, self.head_dim, self.dtype)
    query = projection(kernel_init=query_init, name='query')(inputs_q)
    if kv is not None:
      if decode:
        raise ValueError('attention: precomputed kv cannot go into the decoding cache')
      key, value = kv
    else:
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

    if query.shape[0] % key.shape[0]:
      raise ValueError(f'attention: query batch {query.shape[0]} is not a multiple of key batch '
                       f'{key.shape[0]}')
    # Keys shared by several query rows (or precomputed) take the grouped matmul path.
    shared = kv is not None or query.shape[0] != key.shape[0]
    if shared and kv is None:
      key, value = _kv_layout(key, value)
    logits_dtype = jnp.float32 if self.float32_logits else self.dtype
    query, key = query.astype(logits_dtype), key.astype(logits_dtype)
    if shared:
      logits = _shared_kv_logits(query, key)
    else:
      logits = jnp.einsum('bqhd,bkhd->bhqk', query, key)
    if bias is not None:
      logits = logits + bias.astype(logits_dtype)
    if mask is not None:
      logits = jnp.where(mask > 0, logits, jnp.asarray(_MASK_BIAS, logits_dtype))
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = dropout_lib.make_dropout(self.dropout_rate, self.dropout_broadcast_dims, self.dropout_impl)(
        weights, deterministic=deterministic)
    if shared:
      out = _shared_kv_values(weights, value)
    else:
      out = jnp.einsum('bhqk,bkhd->bqhd', weights, value)
    return nn.DenseGeneral(inputs_q.shape[-1], axis=(-2, -1), use_bias=False, dtype=self.dtype,
                           param_dtype=jnp.float32, kernel_init=kernel_init, name='out')(out)


def project_cross_kv(config: T5Config, attention_params: Any, encoded: Array
                     ) -> tuple[Array, Array]:
  """`MultiHeadAttention`'s `kv` from one attention layer's parameter subtree and `encoded`.

  Returns key [B, heads, head_dim, Lk] and value [B, heads, Lk, head_dim] (the layout of its
  batched matmuls), projected by the same `DenseGeneral` (so the same numerics) as a call.
  """
  projection = _head_projection(config.num_heads, config.head_dim, config.dtype, parent=None)
  return _kv_layout(projection.apply({'params': attention_params['key']}, encoded),
                    projection.apply({'params': attention_params['value']}, encoded))


def _dropout(config: T5Config) -> nn.Module:
  return dropout_lib.make_dropout(config.dropout_rate, config.dropout_broadcast_dims, config.dropout_impl)


def _attention(config: T5Config, name: str) -> MultiHeadAttention:
  return MultiHeadAttention(num_heads=config.num_heads, head_dim=config.head_dim,
                            dropout_rate=config.dropout_rate,
                            dropout_broadcast_dims=config.dropout_broadcast_dims,
                            dropout_impl=config.dropout_impl,
                            float32_logits=config.float32_attention_logits, dtype=config.dtype,
                            name=name)


def _mlp(config: T5Config) -> MlpBlock:
  return MlpBlock(mlp_dim=config.mlp_dim, activations=config.mlp_activations,
                  dropout_rate=config.dropout_rate,
                  dropout_broadcast_dims=config.dropout_broadcast_dims,
                  dropout_impl=config.dropout_impl, dtype=config.dtype, name='mlp')


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
  def __call__(self, x: Array, encoded: Optional[Array], decoder_mask: Optional[Array],
               encoder_decoder_mask: Array, bias: Array, deterministic: bool,
               decode: bool, cross_kv: Optional[tuple[Array, Array]] = None) -> Array:
    cfg = self.config
    y = _norm(cfg, 'pre_self_attention_layer_norm')(x)
    y = _attention(cfg, 'self_attention')(y, y, decoder_mask, bias, deterministic, decode=decode)
    x = x + _dropout(cfg)(y, deterministic=deterministic)
    y = _norm(cfg, 'pre_cross_attention_layer_norm')(x)
    y = _attention(cfg, 'encoder_decoder_attention')(y, encoded, encoder_decoder_mask, None,
                                                    deterministic, kv=cross_kv)
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
                                  dtype=cfg.dtype, one_hot=cfg.one_hot_lookups,
                                  name='relpos_bias')(length, length, True)
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
  def __call__(self, encoded: Optional[Array], tokens: Array, decoder_mask: Optional[Array],
               encoder_decoder_mask: Array, deterministic: bool, decode: bool = False,
               max_decode_length: Optional[int] = None,
               cross_kv: Optional[Sequence[tuple[Array, Array]]] = None) -> Array:
    cfg = self.config
    if cross_kv is not None and len(cross_kv) != cfg.num_decoder_layers:
      raise ValueError(f'cross_kv has {len(cross_kv)} layers, the decoder '
                       f'{cfg.num_decoder_layers}')
    # In cached decoding each call sees one token, but the bias must span the whole cache so the
    # attention layer can pick the row of the current position.
    length = max_decode_length if (decode and max_decode_length) else tokens.shape[-1]
    bias = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                  cfg.relative_attention_max_distance, cfg.num_heads,
                                  dtype=cfg.dtype, one_hot=cfg.one_hot_lookups,
                                  name='relpos_bias')(length, length, False)
    y = self.shared_embedding(tokens.astype(jnp.int32))
    y = _dropout(cfg)(y, deterministic=deterministic)
    for i in range(cfg.num_decoder_layers):
      y = DecoderLayer(cfg, name=f'layers_{i}')(
          y, encoded, decoder_mask, encoder_decoder_mask, bias, deterministic, decode,
          None if cross_kv is None else cross_kv[i])
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
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype, one_hot=cfg.one_hot_lookups)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = True) -> Array:
    """[B, Li] token ids -> [B, Li, emb_dim] encodings (padding rows are junk but masked later)."""
    valid = encoder_input_tokens > 0
    mask = make_attention_mask(valid, valid)
    return self.encoder(encoder_input_tokens, mask, deterministic=not enable_dropout)

  def precompute_cross_kv(self, encoded: Array) -> tuple[tuple[Array, Array], ...]:
    """Per decoder layer, the encoder-decoder attention's keys and values (`project_cross_kv`).

    Pass the result to `decode(..., cross_kv=...)` so cached decoding projects the encoding once
    per input rather than once per step and beam. Memory: 2 * num_decoder_layers * Li * heads *
    head_dim values per input (~1 MB in float32 at TIGER's sizes), never repeated per beam.
    """
    decoder_params = self.variables['params']['decoder']
    return tuple(
        project_cross_kv(self.config, decoder_params[f'layers_{i}']['encoder_decoder_attention'],
                         encoded)
        for i in range(self.config.num_decoder_layers))

  def decode(self, encoded: Optional[Array], encoder_input_tokens: Array,
             decoder_input_tokens: Array, decoder_target_tokens: Optional[Array] = None,
             enable_dropout: bool = True, decode: bool = False,
             max_decode_length: Optional[int] = None,
             cross_kv: Optional[Sequence[tuple[Array, Array]]] = None) -> Array:
    """Logits [N, Ld, V] (float32) for decoder inputs; with decode=True, one cached step.

    `cross_kv` (from `precompute_cross_kv`) replaces `encoded`, which may then be None. The
    encoder side (`encoded`/`cross_kv` and `encoder_input_tokens`) may have batch B with N a
    multiple of B: decoder row n belongs to input n // (N // B), as beam search lays out beams.
    """
    encoder_valid = encoder_input_tokens > 0
    rows, inputs = decoder_input_tokens.shape[0], encoder_input_tokens.shape[0]
    if rows % inputs:
      raise ValueError(f'decode(): decoder batch {rows} is not a multiple of encoder batch '
                       f'{inputs}')
    if rows != inputs:
      # Only this boolean mask is repeated per row; the encoding and its keys are not.
      encoder_valid = jnp.repeat(encoder_valid, rows // inputs, axis=0)
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
                        max_decode_length=max_decode_length, cross_kv=cross_kv)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, enable_dropout: bool = True, decode: bool = False,
               max_decode_length: Optional[int] = None) -> Array:
    """Teacher-forced logits [B, Ld, V] in float32."""
    encoded = self.encode(encoder_input_tokens, enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       enable_dropout=enable_dropout, decode=decode,
                       max_decode_length=max_decode_length)
