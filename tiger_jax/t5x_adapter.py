"""TIGER's network and constrained decoding as the real t5x calls them (gin/t5x/ binds this module).

t5x's `models.EncoderDecoderModel` drives a Flax module through three protocols, and this module
speaks each of them without importing t5x, so the library installs and runs without it:

* the module call: `module(encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
  encoder_segment_ids=..., decoder_segment_ids=..., encoder_positions=..., decoder_positions=...,
  enable_dropout=..., decode=...)`. `T5xTransformer` accepts it. TIGER's examples are not packed, so
  t5x passes None for the segment ids and positions; a packed batch (`pack = True` in a
  DatasetConfig) is refused, since the network's masks come from padding alone.
* logical axis names: t5x's Adafactor and `PjitPartitioner` read a `params_axes` collection (leaves
  `<param>_axes` holding `flax.linen.partitioning.AxisMetadata`) from `model.get_initial_variables`.
  `T5xTransformer` emits it at initialisation from `logical_axes`, which names every parameter of
  `network.Transformer` with t5x's axis vocabulary ('vocab', 'embed', 'heads', 'kv', 'mlp',
  'relpos_buckets') and refuses any parameter it does not know.
* `decode_fn(*, inputs, cache, tokens_to_logits, eos_id, num_decodes, decode_rng, cache_offset,
  ...)`: `make_decode_fn` returns one that runs `decoding.beam_search` (the project's fixed-length,
  trie-constrained search, scores as full-vocabulary log-probs) and returns t5x's layout: decodes
  [batch, num_decodes, max_decode_len] sorted by ascending score (best last), each live ID
  followed by EOS, dead beams (fewer catalogue IDs than beams) all padding with score -inf. Masking
  logits inside t5x's own beam search would not be the same search (it renormalises the allowed
  tokens at every step).

The parameter tree is `network.Transformer`'s, so the project's checkpoints hold the same arrays.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import flax
from flax.linen import partitioning as flax_partitioning
import jax
import jax.numpy as jnp
import numpy as np

from tiger_jax import decoding
from tiger_jax import network
from tiger_jax import vocab as vocab_lib

Array = jax.Array
PyTree = Any

# (pattern over the '/'-joined parameter path, logical axes). Patterns are anchored at the path's
# end; the first match wins. Attention kernels are DenseGeneral [embed, heads, head_dim] and
# [heads, head_dim, embed]; the relative-position table is [heads, buckets].
_AXIS_RULES = (
    (r'(^|/)token_embedder/embedding', ('vocab', 'embed')),
    (r'(^|/)relpos_bias/rel_embedding', ('heads', 'relpos_buckets')),
    (r'(^|/)(query|key|value)/kernel', ('embed', 'heads', 'kv')),
    (r'(^|/)out/kernel', ('heads', 'kv', 'embed')),
    (r'(^|/)mlp/wi(_\d+)?/kernel', ('embed', 'mlp')),
    (r'(^|/)mlp/wo/kernel', ('mlp', 'embed')),
    (r'(^|/)logits_dense/kernel', ('embed', 'vocab')),
    (r'(^|/)[a-z_]*norm/scale', ('embed',)),
)


def logical_axes(params: PyTree) -> dict:
  """Nested dict of logical axis-name tuples, one per parameter of `params` (same tree).

  A parameter no rule names, or whose rank differs from its rule's, is a ValueError naming its
  path: t5x would otherwise fail later with a less specific error or shard it wrongly.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  if not flat:
    raise ValueError('logical_axes: the parameter tree is empty')
  names = {}
  for path, value in flat.items():
    for pattern, axes in _AXIS_RULES:
      if re.search(pattern + '$', path):
        if np.ndim(value) != len(axes):
          raise ValueError(f'logical_axes: parameter {path} has shape {np.shape(value)} but its '
                           f'axes {axes} name {len(axes)} dimensions')
        names[path] = axes
        break
    else:
      raise ValueError(f'logical_axes: no logical axis names for parameter {path} '
                       f'(shape {np.shape(value)}); add a rule to tiger_jax/t5x_adapter.py')
  return flax.traverse_util.unflatten_dict(names, sep='/')


def params_axes(params: PyTree) -> dict:
  """The `params_axes` collection t5x expects for `params`: `<name>_axes` -> AxisMetadata."""
  flat = flax.traverse_util.flatten_dict(logical_axes(params))
  return flax.traverse_util.unflatten_dict(
      {path[:-1] + (path[-1] + '_axes',): flax_partitioning.AxisMetadata(names=axes)
       for path, axes in flat.items()})


class T5xTransformer(network.Transformer):
  """`network.Transformer` with t5x's `__call__` keywords; emits `params_axes` at initialisation."""

  def setup(self):
    if self.config.cast_weights_once:
      # t5x's models apply this module to the float32 parameters directly; the cast happens in
      # tiger_jax.models.EncoderDecoderModel, so here the flag would do nothing.
      raise ValueError('T5xTransformer: network.T5Config.cast_weights_once applies only to tiger_jax\'s own '
                       'trainer (tiger_jax.models); leave it False in gin/t5x/ files')
    super().setup()

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None,
               decoder_positions: Optional[Array] = None, *, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    """Teacher-forced logits [B, Ld, V] in float32 (see `network.Transformer.__call__`)."""
    packed = [name for name, value in (('encoder_segment_ids', encoder_segment_ids),
                                       ('decoder_segment_ids', decoder_segment_ids),
                                       ('encoder_positions', encoder_positions),
                                       ('decoder_positions', decoder_positions))
              if value is not None]
    if packed:
      raise ValueError(f'T5xTransformer: got {", ".join(packed)}, i.e. packed examples; TIGER '
                       'masks by padding only, so set pack = False in every utils.DatasetConfig '
                       '(gin/t5x/ files do)')
    logits = super().__call__(encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                              enable_dropout=enable_dropout, decode=decode,
                              max_decode_length=max_decode_length)
    if self.is_initializing() and self.is_mutable_collection('params_axes'):
      # Written at the top scope as whole subtrees: put_variable reserves no names, so the keys
      # may equal the submodules' ('encoder', ...), which is what t5x's mirror tree needs.
      for key, subtree in params_axes(self.variables['params']).items():
        self.put_variable('params_axes', key, subtree)
    return logits


def _t5x_layout(out: decoding.DecodeOutput, eos_id: int, length: int) -> tuple[Array, Array]:
  """Best-first `DecodeOutput` -> t5x's (decodes [B, n, length], scores [B, n]), best last."""
  tokens, scores = out.tokens[:, ::-1], out.scores[:, ::-1]
  batch, beams, levels = tokens.shape
  live = jnp.isfinite(scores)
  eos = jnp.where(live, eos_id, vocab_lib.PAD_ID).astype(jnp.int32)[..., None]
  pad = jnp.zeros((batch, beams, length - levels - 1), jnp.int32)
  return jnp.concatenate([tokens, eos, pad], axis=-1), scores


def make_decode_fn(trie: decoding.SemanticIdTrie, constrain: bool = True,
                   layout: vocab_lib.TokenLayout = vocab_lib.DEFAULT_LAYOUT):
  """A t5x `decode_fn` running `decoding.beam_search` over `trie`'s catalogue.

  Bind it as `models.EncoderDecoderModel.decode_fn = @t5x_adapter.make_decode_fn()`. The trie's
  table is closed over, so it is a constant of t5x's compiled predict step (t5x passes the
  decode_fn no arrays of its own). `constrain=False` decodes any ID of the layout's codewords.
  """
  if not isinstance(trie, decoding.SemanticIdTrie):
    raise ValueError(f'make_decode_fn: trie must be a decoding.SemanticIdTrie, got '
                     f'{type(trie).__name__}')
  if trie.num_levels != layout.num_levels or trie.codebook_size != layout.codebook_size:
    raise ValueError(f'make_decode_fn: the trie has {trie.num_levels} levels of '
                     f'{trie.codebook_size} codes, the token layout {layout.num_levels} of '
                     f'{layout.codebook_size}')
  device_trie = trie.to_device()

  def decode_fn(*, inputs: Array, cache: PyTree, tokens_to_logits, eos_id: int,
                num_decodes: int, decode_rng: Optional[Array] = None, cache_offset: int = 0,
                alpha: float = 0.0) -> tuple[Array, Array]:
    """t5x's DecodeFnCallable: `inputs` [B, max_decode_len] (no prompt), cache for B rows."""
    del decode_rng  # beam search draws nothing
    if cache_offset:
      raise ValueError('decode_fn: scanned layers (cache_offset != 0) are not supported')
    inputs = jnp.asarray(inputs)
    batch, length = inputs.shape
    if length < layout.num_levels + 1:
      raise ValueError(f'decode_fn: decodes have {length} positions; a Semantic ID needs '
                       f'{layout.num_levels} plus EOS (TASK_FEATURE_LENGTHS targets)')

    def step(state: decoding.DecodingState):
      # t5x's tokens_to_logits pairs decoder row n with input n // num_decodes (its encodings are
      # repeated per beam), but beam search's first step has one row per input: repeat the rows
      # for that call and keep one copy of the result.
      if state.cur_token.shape[0] != batch or num_decodes == 1:
        return tokens_to_logits(state)
      repeat = lambda x: x if jnp.ndim(x) == 0 else jnp.repeat(x, num_decodes, axis=0)
      first = lambda x: x if jnp.ndim(x) == 0 else x[::num_decodes]
      logits, new_cache = tokens_to_logits(state.replace(
          cur_token=repeat(state.cur_token), cache=jax.tree_util.tree_map(repeat, state.cache)))
      return first(logits), jax.tree_util.tree_map(first, new_cache)

    out = decoding.beam_search(
        jnp.zeros((batch, 1), jnp.int32), cache, step, eos_id=eos_id, num_decodes=num_decodes,
        alpha=alpha, max_decode_len=layout.num_levels, trie=device_trie, constrain=constrain,
        codeword_offset=layout.codeword_offset, codebook_size=layout.codebook_size)
    return _t5x_layout(out, eos_id, length)

  return decode_fn
