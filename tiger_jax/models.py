"""EncoderDecoderModel: what train/eval/infer call on the T5 network, with t5x's interface.

The model owns no optimiser and no parameters: it turns a batch (the feature dict of seqio's
EncDecFeatureConverter) plus parameters into a loss, per-example scores or decoded Semantic IDs.

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

Decoding (`predict_batch_with_aux`): TIGER's outputs are Semantic IDs, exactly
`num_id_levels` (4) codeword tokens, so all decoding goes through `tiger_jax.decoding` (one
path for greedy, beam search and sampling; greedy is beam search with one beam). Only
`batch['encoder_input_tokens']` is read. `decoder_params` picks the decoder:
  - 'method': 'beam' (default, `decoding.beam_search`) or 'sample'
    (`decoding.temperature_sample`, needs `rng`);
  - both: 'trie' (a `decoding.SemanticIdTrie`, on device via `to_device()`, or None),
    'constrain' (only catalogue IDs; needs 'trie'), 'score_eos' (add log P(EOS | ID));
  - 'beam' only: 'alpha' (t5x's brevity exponent; IDs share one length, so it only rescales);
  - 'sample' only: 'temperature', 'sample_levels', 'deduplicate'.
A key that is unknown, or belongs to the other method, is a ValueError: a silently ignored
'temperature' would make a beam-search run look like a sampling run.

Results are ranked BEST FIRST: tokens [B, num_decodes, num_id_levels] and aux
{'scores': [B, num_decodes], 'items': [B, num_decodes]} (catalogue index, -1 for an ID outside
the catalogue or a dead beam; 'items' is absent without a trie, so forgetting the trie fails
loudly instead of scoring zero recall). This is the reverse of t5x (best last, because its beam
search grows the top-k in ascending order): retrieval lists are read top-down, so rank r is
index r. Scores are summed model log-probs (full-vocabulary softmax), equal to `score_batch` of
the 4 ID tokens (plus EOS with 'score_eos'); dead beams (fewer valid IDs than beams) score -inf
and have tokens 0 and item -1. Without `return_all_decodes` only the best decode is returned:
tokens [B, num_id_levels], aux values [B].

Jitting: `decoder_params` (except the trie's table), `num_decodes` and `return_all_decodes` are
static (they change shapes or Python control flow). The trie is a pytree: pass it through the
jitted function's arguments rather than closing over it, or its table (megabytes) is baked into
the program as a constant. `make_predict_fn` does exactly that:

  predict = model.make_predict_fn({'trie': trie, 'constrain': True}, num_decodes=20,
                                  return_all_decodes=True)
  tokens, aux = predict(params, batch)  # rng=... for 'sample'

or by hand:

  def predict(params, encoder_input_tokens, trie, rng):
    return model.predict_batch_with_aux(
        params, {'encoder_input_tokens': encoder_input_tokens}, rng=rng,
        decoder_params={'trie': trie, 'constrain': True}, num_decodes=20,
        return_all_decodes=True)
  predict = jax.jit(predict)  # called as predict(params, tokens, trie.to_device(), None)
"""
from __future__ import annotations

import enum
from typing import Any, Callable, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tiger_jax import decoding
from tiger_jax import network
from tiger_jax import vocab as vocab_lib

Array = jax.Array
Batch = Mapping[str, Array]
PyTree = Any

PAD_ID = 0
EOS_ID = vocab_lib.EOS_ID  # used when the model has no output vocabulary.

# decoder_params: keys every method takes, then each method's own, with their defaults.
_COMMON_DEFAULTS = {'method': 'beam', 'trie': None, 'constrain': False, 'score_eos': False}
_METHOD_KEYS = {
    'beam': {'alpha': 0.0},
    'sample': {'temperature': 1.0, 'sample_levels': None, 'deduplicate': False},
}


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


def level_smoothing_support(targets: Array, layout: vocab_lib.TokenLayout, vocab_size: int) -> Array:
  """[B, L, V] bool: the codeword tokens of each label's own level (all False for other labels).

  These are the tokens constrained decoding can choose between at that position, so smoothing
  over them is a prior over real competitors rather than over tokens the position never emits.
  """
  span = layout.num_levels * layout.codebook_size

  def level_of(tokens):
    rel = tokens.astype(jnp.int32) - layout.codeword_offset
    return jnp.where((rel >= 0) & (rel < span), rel // layout.codebook_size, -1)

  target_level = level_of(targets)
  vocab_level = level_of(jnp.arange(vocab_size))
  return (vocab_level == target_level[..., None]) & (target_level >= 0)[..., None]


def cross_entropy_with_logits(logits: Array, targets: Array, label_smoothing: float = 0.0,
                              z_loss: float = 0.0, smoothing_support: Optional[Array] = None
                              ) -> tuple[Array, Array]:
  """Per-token (cross-entropy, z-loss) [B, L], as T5 trains.

  With label smoothing the target puts 1 - label_smoothing on the label and spreads the rest
  evenly over the other V - 1 tokens (t5x), or, given `smoothing_support` [B, L, V] bool, over
  the other supported tokens only (a token whose support holds nothing besides its label is not
  smoothed); the entropy of that target is subtracted so a perfect prediction still scores 0.
  The z-loss, z_loss * logsumexp(logits)**2, keeps the softmax normaliser near 1 (helps bfloat16
  stability); it is included in the first output too.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  target_log_prob = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32),
                                        axis=-1)[..., 0]
  if label_smoothing and smoothing_support is not None:
    on_label = jnp.take_along_axis(smoothing_support, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    others = jnp.sum(smoothing_support, axis=-1) - on_label
    smoothed = others > 0
    low = label_smoothing / jnp.maximum(others, 1)
    others_log_prob = jnp.sum(jnp.where(smoothing_support, log_probs, 0.0), axis=-1) - jnp.where(
        on_label, target_log_prob, 0.0)
    confidence = 1.0 - label_smoothing
    soft = low * others_log_prob + confidence * target_log_prob
    entropy = -(confidence * np.log(confidence) + label_smoothing * jnp.log(low))
    loss = jnp.where(smoothed, -soft - entropy, -target_log_prob)
  elif label_smoothing:
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
                             loss_normalizing_factor: LossNormalizingFactor = None,
                             level_smoothing_layout: Optional[vocab_lib.TokenLayout] = None
                             ) -> tuple[Array, dict[str, Array]]:
  """Loss and metrics of `EncoderDecoderModel.loss_fn` from logits [B, L, V] (see there).

  `level_smoothing_layout` given: label smoothing spreads over each label's level codewords
  (`level_smoothing_support`) instead of the whole vocabulary.
  """
  targets = batch['decoder_target_tokens']
  weights = batch.get('decoder_loss_weights')
  if weights is None:
    weights = targets > 0
  raw_weights = weights.astype(jnp.float32)
  factor, weights = loss_normalizing_factor_and_weights(loss_normalizing_factor, raw_weights)
  support = None
  if level_smoothing_layout is not None and label_smoothing:
    support = level_smoothing_support(targets, level_smoothing_layout, logits.shape[-1])
  token_loss, token_z_loss = cross_entropy_with_logits(logits, targets,
                                                       label_smoothing=label_smoothing,
                                                       z_loss=z_loss, smoothing_support=support)
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


class EncoderDecoderModel:
  """t5x-style wrapper around `network.Transformer` (loss, scoring, decoding, initialisation)."""

  def __init__(self, module: nn.Module, input_vocabulary: Any = None,
               output_vocabulary: Any = None, label_smoothing: float = 0.0, z_loss: float = 0.0,
               loss_normalizing_factor: LossNormalizingFactor = 'NUM_REAL_TARGET_TOKENS',
               layout: Optional[vocab_lib.TokenLayout] = None,
               label_smoothing_scope: str = 'vocabulary'):
    """`layout` (where codeword tokens live) defaults to output_vocabulary's, else TIGER's.

    `label_smoothing_scope`: 'vocabulary' spreads the smoothing mass over every other token (t5x);
    'level' only over the other codewords of the label's level (`level_smoothing_support`).
    """
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
    if label_smoothing_scope not in ('vocabulary', 'level'):
      raise ValueError(f"label_smoothing_scope must be 'vocabulary' or 'level', got {label_smoothing_scope!r}")
    if layout is None:
      layout = getattr(output_vocabulary, 'layout', None) or vocab_lib.DEFAULT_LAYOUT
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary
    self.layout = layout
    self._label_smoothing = label_smoothing
    self._level_smoothing_layout = layout if label_smoothing_scope == 'level' else None
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
    config = getattr(self.module, 'config', None)
    if getattr(config, 'cast_weights_once', False):
      params = network.cast_weights_to_compute_dtype(params, config)
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
                                    loss_normalizing_factor=self._loss_normalizing_factor,
                                    level_smoothing_layout=self._level_smoothing_layout)

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

  @property
  def eos_id(self) -> int:
    vocab = self.output_vocabulary
    return int(vocab.eos_id) if vocab is not None and hasattr(vocab, 'eos_id') else EOS_ID

  @property
  def num_id_levels(self) -> int:
    """Tokens per Semantic ID (the layout's levels): the fixed length of every decode."""
    return self.layout.num_levels

  def decoder_options(self, decoder_params: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """`decoder_params` with defaults filled in, checked before anything is traced."""
    if not isinstance(decoder_params, (Mapping, type(None))):
      raise ValueError(f'decoder_params must be a dict, got {type(decoder_params).__name__}')
    given = dict(decoder_params or {})
    method = given.get('method', 'beam')
    if method not in _METHOD_KEYS:
      raise ValueError(f"decoder_params['method'] must be one of {sorted(_METHOD_KEYS)}, got "
                       f'{method!r}')
    for key in given:
      if key in _COMMON_DEFAULTS or key in _METHOD_KEYS[method]:
        continue
      other = [m for m, keys in _METHOD_KEYS.items() if key in keys]
      if other:
        raise ValueError(f'decoder_params key {key!r} applies to method {other[0]!r}, not '
                         f'{method!r}')
      known = sorted(set(_COMMON_DEFAULTS).union(*_METHOD_KEYS.values()))
      raise ValueError(f'decoder_params: unknown key {key!r}; known keys are {known}')
    options = {**_COMMON_DEFAULTS, **_METHOD_KEYS[method], **given, 'method': method}
    trie = options['trie']
    if trie is not None and not isinstance(trie, decoding.SemanticIdTrie):
      raise ValueError(f"decoder_params['trie'] must be a decoding.SemanticIdTrie or None, got "
                       f'{type(trie).__name__}')
    if options['constrain'] and trie is None:
      raise ValueError("decoder_params: 'constrain' needs a 'trie'")
    return options

  def predict_batch_with_aux(self, params: PyTree, batch: Batch, rng: Optional[Array] = None,
                             decoder_params: Optional[Mapping[str, Any]] = None,
                             return_all_decodes: bool = False,
                             num_decodes: int = 1) -> tuple[Array, dict[str, Array]]:
    """Decodes Semantic IDs from `batch['encoder_input_tokens']` (see the module docstring).

    Returns tokens [B, num_decodes, num_id_levels] and aux {'scores', 'items'} [B, num_decodes]
    ranked best first (t5x ranks best last), or with return_all_decodes=False the best decode:
    tokens [B, num_id_levels], aux values [B]. 'items' is only present with a trie.
    """
    options = self.decoder_options(decoder_params)
    method = options['method']
    if method == 'sample' and rng is None:
      raise ValueError("decoder_params method 'sample' needs an rng")
    model_vocab = getattr(getattr(self.module, 'config', None), 'vocab_size', None)
    if model_vocab is not None and self.layout.user_offset > model_vocab:
      # Checked here, not in __init__: training a small-vocabulary model never decodes IDs, and
      # an out-of-range slice of the logits would be clamped silently, not fail.
      raise ValueError(f'the token layout needs codeword tokens up to '
                       f'{self.layout.user_offset - 1} but the network has vocab_size '
                       f'{model_vocab}; pass EncoderDecoderModel(layout=...)')
    encoder_input_tokens = batch['encoder_input_tokens']
    levels = self.num_id_levels
    cache, context, tokens_to_logits = decoding.prepare_t5_decoding(
        self.module, params, encoder_input_tokens,
        cache_length=levels + int(bool(options['score_eos'])))
    start = jnp.zeros((encoder_input_tokens.shape[0], 1), jnp.int32)
    common = dict(eos_id=self.eos_id, num_decodes=num_decodes, max_decode_len=levels,
                  trie=options['trie'], constrain=bool(options['constrain']), context=context,
                  codeword_offset=self.layout.codeword_offset,
                  codebook_size=self.layout.codebook_size,
                  score_eos=bool(options['score_eos']))
    if method == 'beam':
      out = decoding.beam_search(start, cache, tokens_to_logits, alpha=options['alpha'], **common)
    else:
      out = decoding.temperature_sample(
          start, cache, tokens_to_logits, rng, temperature=options['temperature'],
          sample_levels=options['sample_levels'], deduplicate=bool(options['deduplicate']),
          **common)
    aux = {'scores': out.scores}
    if out.items is not None:
      aux['items'] = out.items
    if return_all_decodes:
      return out.tokens, aux
    return out.tokens[:, 0], {k: v[:, 0] for k, v in aux.items()}

  def predict_batch(self, params: PyTree, batch: Batch, rng: Optional[Array] = None,
                    **kwargs) -> Array:
    """Decoded tokens only."""
    return self.predict_batch_with_aux(params, batch, rng=rng, **kwargs)[0]

  def make_predict_fn(self, decoder_params: Optional[Mapping[str, Any]] = None,
                      num_decodes: int = 1, return_all_decodes: bool = False
                      ) -> Callable[..., tuple[Array, dict[str, Array]]]:
    """`predict(params, batch, rng=None) -> (tokens, aux)`, jitted with the trie as an argument.

    The static options are bound once (build the function once and reuse it: each call of this
    method compiles afresh); the trie's table travels as a jit argument, so it is neither baked
    into the program nor copied to the device per call (a host trie is moved there once). Only
    `batch['encoder_input_tokens']` is passed in, so extra batch features cost nothing.
    """
    options = self.decoder_options(decoder_params)
    trie = options.pop('trie')
    if trie is not None and isinstance(trie.next_state, np.ndarray):
      trie = trie.to_device()

    @jax.jit
    def jitted(params, encoder_input_tokens, trie, rng):
      return self.predict_batch_with_aux(
          params, {'encoder_input_tokens': encoder_input_tokens}, rng=rng,
          decoder_params=dict(options, trie=trie), num_decodes=num_decodes,
          return_all_decodes=return_all_decodes)

    def predict(params: PyTree, batch: Batch, rng: Optional[Array] = None):
      return jitted(params, batch['encoder_input_tokens'], trie, rng)

    predict.jitted = jitted  # (params, encoder_input_tokens, trie, rng), e.g. for .lower()
    return predict
