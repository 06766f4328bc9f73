"""EncoderDecoderModel: what train/eval/infer call on the T5 network, with t5x's interface.

The model owns no optimiser and no parameters: it turns a batch (the feature dict of seqio's
EncDecFeatureConverter) plus parameters into a loss, per-example scores or decoded sequences.

Batches: `encoder_input_tokens` [B, Li], `decoder_input_tokens` [B, L] (targets shifted right,
starting with the BOS id 0), `decoder_target_tokens` [B, L] and `decoder_loss_weights` [B, L]
(1 on real target tokens, 0 on padding).

Loss normalisation (t5x's `loss_normalizing_factor`): the per-token losses are multiplied by the
weights and summed over the batch, then divided by
  - a number: that fixed constant (t5x's pre-training configs use one so the loss scale does not
    depend on how full a batch is);
  - 'NUM_REAL_TARGET_TOKENS' (the default here): the sum of `decoder_loss_weights`, i.e. the mean
    loss per real target token, comparable across batch sizes and readable as nats per token;
  - 'NUM_TOTAL_TARGET_TOKENS': B * L, padding included;
  - 'AVERAGE_PER_SEQUENCE': weights are first rescaled so each sequence's weights sum to 1, then
    the sum is divided by the number of sequences that have any weight;
  - None: no division (t5x's behaviour when nothing is set): the plain weighted sum.

Decoding hook (`decode_fn`), the interface t5x's decoders follow, so beam search can plug in:
  decode_fn(*, inputs, cache, tokens_to_logits, eos_id, num_decodes, decode_rng, cache_offset,
            **decoder_params) -> (sequences [B, num_decodes, L], scores [B, num_decodes])
  - `inputs` [B, L]: the decoder prompt; 0 everywhere except forced prompt tokens (position 0 is
    the BOS slot; a nonzero inputs[:, i + 1] forces output token i).
  - `cache`: the zeroed KV cache for batch B (leaves are batch-first, except the scalar
    `cache_index`); a decoder that needs B * num_decodes rows expands it itself, each row
    repeated in place ([e0, e0, e1, e1, ...]), which is how the encodings are expanded here.
  - `tokens_to_logits(ids [N, 1] int32, cache) -> (logits [N, V] float32, new_cache)` runs one
    cached decoder step for N = B * num_decodes rows.
  - Results are sorted by increasing score along axis 1 (best last), as t5x's beam search does;
    sequences hold the generated tokens (not the BOS), 0 after EOS.
"""
from __future__ import annotations

import enum
import functools
from typing import Any, Callable, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Batch = Mapping[str, Array]
PyTree = Any

PAD_ID = 0
EOS_ID = 1  # tasks/vocab.py; used when the model has no output vocabulary.


class SpecialLossNormalizingFactor(enum.Enum):
  """Batch-dependent loss normalisers (t5x's names)."""
  NUM_REAL_TARGET_TOKENS = 1
  NUM_TOTAL_TARGET_TOKENS = 2
  AVERAGE_PER_SEQUENCE = 3


LossNormalizingFactor = Optional[Union[float, int, str, SpecialLossNormalizingFactor]]


def _as_special(factor: LossNormalizingFactor):
  if isinstance(factor, str):
    try:
      return SpecialLossNormalizingFactor[factor.upper()]
    except KeyError:
      names = [f.name for f in SpecialLossNormalizingFactor]
      raise ValueError(f'loss_normalizing_factor: unknown {factor!r}; use a number or one of '
                       f'{names}') from None
  return factor


def loss_normalizing_factor_and_weights(factor: LossNormalizingFactor,
                                        weights: Array) -> tuple[Optional[Array], Array]:
  """Resolves a (possibly special) normaliser against the batch's weights [B, L]."""
  factor = _as_special(factor)
  weights = weights.astype(jnp.float32)
  if factor is None:
    return None, weights
  if factor == SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS:
    return jnp.sum(weights), weights
  if factor == SpecialLossNormalizingFactor.NUM_TOTAL_TARGET_TOKENS:
    return jnp.asarray(weights.size, jnp.float32), weights
  if factor == SpecialLossNormalizingFactor.AVERAGE_PER_SEQUENCE:
    per_seq = jnp.sum(weights, axis=-1, keepdims=True)
    weights = jnp.where(per_seq > 0, weights / jnp.where(per_seq > 0, per_seq, 1.0), 0.0)
    return jnp.sum(per_seq > 0).astype(jnp.float32), weights
  return jnp.asarray(factor, jnp.float32), weights


def cross_entropy_with_logits(logits: Array, targets: Array, label_smoothing: float = 0.0,
                              z_loss: float = 0.0) -> tuple[Array, Array]:
  """Per-token (cross-entropy, z-loss) [B, L], as T5 trains.

  With label smoothing the target puts 1 - label_smoothing on the label and spreads the rest
  evenly over the other V - 1 tokens; the entropy of that target is subtracted so a perfect
  prediction still scores 0. The z-loss, z_loss * logsumexp(logits)**2, keeps the softmax
  normaliser near 1 (helps bfloat16 stability); it is included in the first output too.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  target_log_prob = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32),
                                        axis=-1)[..., 0]
  if label_smoothing:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    # sum_v q_v log p_v with q = low everywhere plus (confidence - low) on the label.
    soft = low * jnp.sum(log_probs, axis=-1) + (confidence - low) * target_log_prob
    entropy = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20))
    loss = -soft - entropy
  else:
    loss = -target_log_prob
  total_z_loss = z_loss * jnp.square(log_z)
  return loss + total_z_loss, total_z_loss


def compute_loss_and_metrics(logits: Array, batch: Batch, label_smoothing: float = 0.0,
                             z_loss: float = 0.0,
                             loss_normalizing_factor: LossNormalizingFactor = None
                             ) -> tuple[Array, dict[str, Array]]:
  """Loss and metrics of `EncoderDecoderModel.loss_fn` from logits [B, L, V] (see there)."""
  targets = batch['decoder_target_tokens']
  weights = batch.get('decoder_loss_weights')
  if weights is None:
    weights = targets > 0
  raw_weights = weights.astype(jnp.float32)
  factor, weights = loss_normalizing_factor_and_weights(loss_normalizing_factor, raw_weights)
  token_loss, token_z_loss = cross_entropy_with_logits(logits, targets,
                                                       label_smoothing=label_smoothing,
                                                       z_loss=z_loss)
  loss = jnp.sum(token_loss * weights)
  total_z_loss = jnp.sum(token_z_loss * weights)
  if factor is not None:
    factor = jnp.where(factor > 0, factor, 1.0)  # an all-padding batch gives 0, not NaN
    loss, total_z_loss = loss / factor, total_z_loss / factor

  weight_sum = jnp.sum(raw_weights)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  has_weight = jnp.sum(raw_weights, axis=-1) > 0
  seq_correct = jnp.all((correct > 0) | (raw_weights == 0), axis=-1) & has_weight
  num_examples = jnp.sum(has_weight).astype(jnp.float32)
  metrics = {
      'loss': loss,
      'cross_ent_loss': loss - total_z_loss,
      'z_loss': total_z_loss,
      'accuracy': jnp.sum(correct * raw_weights) / jnp.maximum(weight_sum, 1e-8),
      'sequence_accuracy': jnp.sum(seq_correct) / jnp.maximum(num_examples, 1.0),
      'weight_sum': weight_sum,
      'num_examples': num_examples,
  }
  return loss, metrics


def greedy_decode(*, inputs: Array, cache: PyTree, tokens_to_logits: Callable, eos_id: int,
                  num_decodes: int = 1, decode_rng: Optional[Array] = None, cache_offset: int = 0,
                  **unused) -> tuple[Array, Array]:
  """Arg-max decoding of inputs.shape[1] tokens with the KV cache (a `decode_fn`).

  Runs a fixed number of steps in `lax.scan` (TIGER's targets are always 4 codes + EOS), so it
  jits to one loop. Forced prompt tokens are emitted but not scored, as in t5x.
  """
  del decode_rng, cache_offset, unused
  if num_decodes != 1:
    raise ValueError(f'greedy_decode yields one sequence per example, got num_decodes='
                     f'{num_decodes}; use beam search for several')
  batch = inputs.shape[0]
  # prompt_next[:, i] is the forced token for output position i (0 = free).
  prompt_next = jnp.concatenate([inputs[:, 1:], jnp.zeros((batch, 1), inputs.dtype)], axis=1)

  def step(carry, forced):
    token, cache, ended, score = carry
    logits, cache = tokens_to_logits(token[:, None], cache)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    is_forced = forced != 0
    chosen = jnp.where(is_forced, forced, jnp.argmax(log_probs, axis=-1).astype(inputs.dtype))
    chosen_log_prob = jnp.take_along_axis(log_probs, chosen[:, None].astype(jnp.int32),
                                          axis=-1)[:, 0]
    score = score + jnp.where(ended | is_forced, 0.0, chosen_log_prob)
    chosen = jnp.where(ended, jnp.zeros_like(chosen), chosen)
    ended = ended | (chosen == eos_id)
    return (chosen, cache, ended, score), chosen

  init = (inputs[:, 0], cache, jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.float32))
  (_, _, _, scores), tokens = jax.lax.scan(step, init, prompt_next.T)
  return tokens.T[:, None, :], scores[:, None]


class EncoderDecoderModel:
  """t5x-style wrapper around `network.Transformer` (loss, scoring, decoding, initialisation)."""

  def __init__(self, module: nn.Module, input_vocabulary: Any = None,
               output_vocabulary: Any = None, decode_fn: Callable = greedy_decode,
               label_smoothing: float = 0.0, z_loss: float = 0.0,
               loss_normalizing_factor: LossNormalizingFactor = 'NUM_REAL_TARGET_TOKENS'):
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary
    self._decode_fn = decode_fn
    self._label_smoothing = label_smoothing
    self._z_loss = z_loss
    self._loss_normalizing_factor = _as_special(loss_normalizing_factor)

  # ---------------------------------------------------------------- initialisation

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, tuple],
                            input_types: Optional[Mapping[str, Any]] = None) -> dict:
    """{'params': ...} for the given feature shapes (only their last axis matters)."""
    input_types = input_types or {}

    def dummy(name, fallback=None):
      shape = input_shapes.get(name, input_shapes.get(fallback))
      if shape is None:
        raise ValueError(f'get_initial_variables: input_shapes lacks {name!r}')
      return jnp.ones(shape, input_types.get(name, jnp.int32))

    params_rng, dropout_rng = jax.random.split(rng)
    variables = self.module.init(
        {'params': params_rng, 'dropout': dropout_rng}, dummy('encoder_input_tokens'),
        dummy('decoder_input_tokens'), dummy('decoder_target_tokens', 'decoder_input_tokens'),
        enable_dropout=False)
    return {'params': variables['params']}

  # ---------------------------------------------------------------- training / evaluation

  def _compute_logits(self, params: PyTree, batch: Batch,
                      dropout_rng: Optional[Array] = None) -> Array:
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    return self.module.apply({'params': params}, batch['encoder_input_tokens'],
                             batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                             enable_dropout=dropout_rng is not None, rngs=rngs)

  def loss_fn(self, params: PyTree, batch: Batch,
              dropout_rng: Optional[Array]) -> tuple[Array, dict[str, Array]]:
    """Weighted token cross-entropy (+ z-loss), normalised as the module docstring says.

    dropout_rng None means a deterministic forward pass (evaluation). Metrics are float32
    scalars: the normalised 'loss', 'cross_ent_loss' (without z-loss) and 'z_loss'; weighted
    token 'accuracy'; 'sequence_accuracy' (all weighted tokens right, i.e. the exact next item
    for TIGER); and the sums 'weight_sum' and 'num_examples' for aggregating across batches.
    """
    logits = self._compute_logits(params, batch, dropout_rng)
    return compute_loss_and_metrics(logits, batch, label_smoothing=self._label_smoothing,
                                    z_loss=self._z_loss,
                                    loss_normalizing_factor=self._loss_normalizing_factor)

  def eval_fn(self, params: PyTree, batch: Batch) -> tuple[Array, dict[str, Array]]:
    """Deterministic loss and metrics (t5x's name)."""
    return self.loss_fn(params, batch, dropout_rng=None)

  def score_batch(self, params: PyTree, batch: Batch) -> Array:
    """[B] sum over weighted target positions of log p(target token), no dropout."""
    logits = self._compute_logits(params, batch)
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights')
    if weights is None:
      weights = targets > 0
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_scores = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32),
                                       axis=-1)[..., 0]
    return jnp.sum(token_scores * weights.astype(jnp.float32), axis=-1)

  # ---------------------------------------------------------------- decoding

  def _init_cache(self, params: PyTree, encoder_input_tokens: Array,
                  decoder_input_tokens: Array) -> PyTree:
    """Zeroed decoder KV cache for this batch shape.

    The decoder's first `decode=True` call creates the cache; only its shapes are needed, so it
    runs under `eval_shape` and costs nothing even outside jit.
    """
    batch = encoder_input_tokens.shape[0]
    encoded = jnp.zeros((batch, encoder_input_tokens.shape[1], self.module.config.emb_dim),
                        self.module.config.dtype)
    ones = jnp.ones_like(decoder_input_tokens)

    def create():
      _, variables = self.module.apply(
          {'params': params}, encoded, encoder_input_tokens, ones, ones, enable_dropout=False,
          decode=True, max_decode_length=decoder_input_tokens.shape[1],
          method=self.module.decode, mutable=['cache'])
      return variables['cache']

    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(create))

  def _tokens_to_logits(self, ids: Array, cache: PyTree, *, params: PyTree, encoded: Array,
                        encoder_input_tokens: Array, max_decode_length: int):
    logits, variables = self.module.apply(
        {'params': params, 'cache': cache}, encoded, encoder_input_tokens, ids, None,
        enable_dropout=False, decode=True, max_decode_length=max_decode_length,
        method=self.module.decode, mutable=['cache'])
    return logits[:, 0, :], variables['cache']

  @property
  def eos_id(self) -> int:
    vocab = self.output_vocabulary
    return int(vocab.eos_id) if vocab is not None and hasattr(vocab, 'eos_id') else EOS_ID

  def predict_batch_with_aux(self, params: PyTree, batch: Batch, rng: Optional[Array] = None,
                             decoder_params: Optional[dict] = None,
                             return_all_decodes: bool = False, num_decodes: int = 1,
                             prompt_with_targets: bool = False) -> tuple[Array, dict]:
    """Decodes targets of the batch's target length with `decode_fn` and the KV cache.

    Returns tokens [B, L] and {'scores': [B]} for the best decode, or with return_all_decodes
    [B, num_decodes, L] and [B, num_decodes] (best last). Jit it with the keyword arguments
    bound (they change shapes or Python control flow).
    """
    encoder_input_tokens = batch['encoder_input_tokens']
    decoder_input_tokens = batch['decoder_input_tokens']
    max_decode_length = decoder_input_tokens.shape[1]
    cache = self._init_cache(params, encoder_input_tokens, decoder_input_tokens)
    encoded = self.module.apply({'params': params}, encoder_input_tokens, enable_dropout=False,
                                method=self.module.encode)
    # Rows repeated in place: [e0, e0, e1, e1, ...] for num_decodes = 2.
    encoded = jnp.repeat(encoded, num_decodes, axis=0)
    expanded_inputs = jnp.repeat(encoder_input_tokens, num_decodes, axis=0)
    tokens_to_logits = functools.partial(
        self._tokens_to_logits, params=params, encoded=encoded,
        encoder_input_tokens=expanded_inputs, max_decode_length=max_decode_length)
    prompt = decoder_input_tokens if prompt_with_targets else jnp.zeros_like(decoder_input_tokens)
    decodes, scores = self._decode_fn(
        inputs=prompt, cache=cache, tokens_to_logits=tokens_to_logits, eos_id=self.eos_id,
        num_decodes=num_decodes, decode_rng=rng, cache_offset=0, **(decoder_params or {}))
    if return_all_decodes:
      return decodes, {'scores': scores}
    return decodes[:, -1, :], {'scores': scores[:, -1]}

  def predict_batch(self, params: PyTree, batch: Batch, rng: Optional[Array] = None,
                    **kwargs) -> Array:
    """Decoded tokens only."""
    return self.predict_batch_with_aux(params, batch, rng=rng, **kwargs)[0]
