"""EncoderDecoderModel: loss against hand computation, scoring, greedy decoding, overfitting."""
import importlib.util  # noqa: F401  (gin 0.5 needs it imported first, see DESIGN.md)
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiger_jax import models
from tiger_jax import network

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = network.T5Config(vocab_size=24, emb_dim=16, num_heads=2, num_encoder_layers=1,
                        num_decoder_layers=2, head_dim=8, mlp_dim=32, dropout_rate=0.0)


def make_batch(seed=0, batch=3, enc_len=9, dec_len=5, vocab=24):
  """Padded EncDec features; row b has dec_len - b real target tokens ending in EOS."""
  rng = np.random.default_rng(seed)
  enc = np.zeros((batch, enc_len), np.int32)
  tgt = np.zeros((batch, dec_len), np.int32)
  for b in range(batch):
    n_enc, n_dec = enc_len - 2 * b, max(dec_len - b, 1)
    enc[b, :n_enc] = rng.integers(2, vocab, n_enc)
    tgt[b, :n_dec] = rng.integers(2, vocab, n_dec)
    tgt[b, n_dec - 1] = 1
  dec_in = np.zeros_like(tgt)
  dec_in[:, 1:] = tgt[:, :-1]
  return {'encoder_input_tokens': jnp.asarray(enc), 'decoder_input_tokens': jnp.asarray(dec_in),
          'decoder_target_tokens': jnp.asarray(tgt),
          'decoder_loss_weights': jnp.asarray((tgt > 0).astype(np.int32))}


def make_model(cfg=TINY, seed=0, **kwargs):
  """Model plus numpy-drawn parameters (compiling the initialisers costs seconds on 2 cores)."""
  model = models.EncoderDecoderModel(network.Transformer(cfg), **kwargs)
  shapes = {'encoder_input_tokens': (1, 9), 'decoder_input_tokens': (1, 5)}
  tree = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = path[-1].key
    if name == 'scale':
      return jnp.ones(x.shape, jnp.float32)
    if name in ('embedding', 'rel_embedding'):
      return jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    fan_in = x.shape[0] if path[-2].key != 'out' else x.shape[0] * x.shape[1]
    return jnp.asarray(rng.standard_normal(x.shape) / np.sqrt(fan_in), jnp.float32)

  return model, jax.tree_util.tree_map_with_path(draw, tree['params'])


@pytest.fixture(scope='module')
def tiny():
  return make_model()


def logits_of(model, params, batch):
  return np.asarray(jax.jit(model._compute_logits)(params, batch), np.float64)


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_get_initial_variables():
  model = models.EncoderDecoderModel(network.Transformer(TINY))
  shapes = {'encoder_input_tokens': (2, 9), 'decoder_input_tokens': (2, 5)}
  variables = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes))
  assert set(variables) == {'params'}
  params = variables['params']
  assert set(params) == {'token_embedder', 'encoder', 'decoder'}
  assert params['token_embedder']['embedding'].shape == (TINY.vocab_size, TINY.emb_dim)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize('label_smoothing,z_loss,factor', [
    (0.0, 0.0, 'NUM_REAL_TARGET_TOKENS'),
    (0.1, 1e-3, 'NUM_REAL_TARGET_TOKENS'),
    (0.2, 1e-2, None),
    (0.0, 1e-4, 7.0),
    (0.1, 0.0, 'NUM_TOTAL_TARGET_TOKENS'),
    (0.0, 0.0, 'AVERAGE_PER_SEQUENCE'),
])
def test_loss_matches_hand_computation(label_smoothing, z_loss, factor):
  batch = make_batch()
  # A zero weight on a real token must drop it from the loss too.
  weights = np.asarray(batch['decoder_loss_weights']).copy()
  weights[0, 2] = 0
  batch = dict(batch, decoder_loss_weights=jnp.asarray(weights))
  tgt = np.asarray(batch['decoder_target_tokens'])
  logits = 3.0 * np.random.default_rng(1).standard_normal(tgt.shape + (24,))
  loss, metrics = models.compute_loss_and_metrics(
      jnp.asarray(logits, jnp.float32), batch, label_smoothing=label_smoothing, z_loss=z_loss,
      loss_normalizing_factor=factor)

  vocab = logits.shape[-1]
  lp = log_softmax(logits)
  log_z = np.log(np.exp(logits).sum(-1))
  expected_total, expected_z = 0.0, 0.0
  w = weights.astype(np.float64)
  if factor == 'AVERAGE_PER_SEQUENCE':
    w = w / w.sum(-1, keepdims=True)
  for b in range(tgt.shape[0]):
    for t in range(tgt.shape[1]):
      q = np.full(vocab, label_smoothing / (vocab - 1))
      q[tgt[b, t]] = 1.0 - label_smoothing
      entropy = -np.sum(q * np.log(q + 1e-20))
      ce = -np.sum(q * lp[b, t]) - entropy  # KL(q || p): 0 for a perfect prediction
      expected_total += w[b, t] * (ce + z_loss * log_z[b, t] ** 2)
      expected_z += w[b, t] * z_loss * log_z[b, t] ** 2
  norm = {'NUM_REAL_TARGET_TOKENS': weights.sum(), 'NUM_TOTAL_TARGET_TOKENS': tgt.size,
          'AVERAGE_PER_SEQUENCE': tgt.shape[0], None: 1.0}.get(factor, factor)
  np.testing.assert_allclose(float(loss), expected_total / norm, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['z_loss']), expected_z / norm, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(float(metrics['cross_ent_loss']), (expected_total - expected_z) / norm,
                             rtol=1e-5)
  assert float(metrics['weight_sum']) == weights.sum()
  correct = logits.argmax(-1) == tgt
  np.testing.assert_allclose(float(metrics['accuracy']),
                             (correct * weights).sum() / weights.sum(), rtol=1e-6)
  seq_ok = [all(correct[b, t] or weights[b, t] == 0 for t in range(tgt.shape[1]))
            for b in range(tgt.shape[0])]
  assert float(metrics['sequence_accuracy']) == pytest.approx(np.mean(seq_ok))


def test_loss_fn_uses_network_logits(tiny):
  _, params = tiny
  model = models.EncoderDecoderModel(tiny[0].module, label_smoothing=0.1, z_loss=1e-3)
  batch = make_batch(seed=2)
  loss, metrics = jax.jit(model.eval_fn)(params, batch)
  expected, _ = models.compute_loss_and_metrics(
      jnp.asarray(logits_of(model, params, batch), jnp.float32), batch, label_smoothing=0.1,
      z_loss=1e-3, loss_normalizing_factor='NUM_REAL_TARGET_TOKENS')
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
  assert float(metrics['num_examples']) == 3


def test_loss_all_padding_is_zero():
  batch = make_batch()
  batch = dict(batch, decoder_loss_weights=jnp.zeros_like(batch['decoder_loss_weights']))
  loss, metrics = models.compute_loss_and_metrics(
      jnp.ones((3, 5, 24)), batch, loss_normalizing_factor='NUM_REAL_TARGET_TOKENS')
  assert float(loss) == 0.0 and float(metrics['num_examples']) == 0.0


def test_bad_loss_normalizing_factor():
  with pytest.raises(ValueError, match='loss_normalizing_factor'):
    models.EncoderDecoderModel(network.Transformer(TINY), loss_normalizing_factor='PER_BATCH')


def test_dropout_rng_enables_dropout():
  model, params = make_model(network.T5Config(**{**TINY.__dict__, 'dropout_rate': 0.5}))
  batch = make_batch()

  loss_fn = jax.jit(lambda p, rng: model.loss_fn(p, batch, rng)[0])
  det = loss_fn(params, None)
  drop1, drop2 = loss_fn(params, jax.random.PRNGKey(1)), loss_fn(params, jax.random.PRNGKey(2))
  assert float(det) != float(drop1) and float(drop1) != float(drop2)


def test_score_batch_is_summed_log_softmax(tiny):
  model, params = tiny
  batch = make_batch(seed=4)
  scores = np.asarray(jax.jit(model.score_batch)(params, batch))
  lp = log_softmax(logits_of(model, params, batch))
  tgt = np.asarray(batch['decoder_target_tokens'])
  w = np.asarray(batch['decoder_loss_weights'])
  expected = (np.take_along_axis(lp, tgt[..., None], -1)[..., 0] * w).sum(-1)
  assert scores.shape == (tgt.shape[0],)
  np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_greedy_decode_is_stepwise_argmax(tiny):
  model, params = tiny
  batch = make_batch(seed=5, batch=4)
  tokens, aux = jax.jit(model.predict_batch_with_aux)(params, batch)
  tokens, scores = np.asarray(tokens), np.asarray(aux['scores'])
  b, length = tokens.shape
  assert tokens.shape == batch['decoder_target_tokens'].shape and scores.shape == (b,)

  # Reference: full-sequence (uncached) decoding, one more position at a time.
  compute = jax.jit(model._compute_logits)
  prefix = np.zeros((b, length), np.int32)
  expected = np.zeros((b, length), np.int32)
  expected_scores = np.zeros(b)
  ended = np.zeros(b, bool)
  for i in range(length):
    full = dict(batch, decoder_input_tokens=jnp.asarray(prefix),
                decoder_target_tokens=jnp.ones((b, length), jnp.int32))
    lp = log_softmax(np.asarray(compute(params, full), np.float64)[:, i])
    choice = lp.argmax(-1)
    expected_scores += np.where(ended, 0.0, lp[np.arange(b), choice])
    expected[:, i] = np.where(ended, 0, choice)
    ended |= expected[:, i] == models.EOS_ID
    if i + 1 < length:
      prefix[:, i + 1] = expected[:, i]
  np.testing.assert_array_equal(tokens, expected)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-4)

  all_tokens, all_aux = jax.eval_shape(
      lambda p: model.predict_batch_with_aux(p, batch, return_all_decodes=True), params)
  assert all_tokens.shape == (b, 1, length) and all_aux['scores'].shape == (b, 1)


def test_prompt_with_targets_forces_tokens(tiny):
  model, params = tiny
  batch = make_batch(seed=6, batch=2)
  batch = dict(batch, decoder_target_tokens=jnp.asarray([[5, 6, 7, 8, 1], [9, 10, 11, 12, 1]]))
  batch['decoder_input_tokens'] = jnp.asarray([[0, 5, 6, 0, 0], [0, 9, 10, 11, 12]])
  tokens, aux = jax.jit(lambda p, b: model.predict_batch_with_aux(p, b, prompt_with_targets=True))(
      params, batch)
  tokens = np.asarray(tokens)
  np.testing.assert_array_equal(tokens[0, :2], [5, 6])
  np.testing.assert_array_equal(tokens[1, :4], [9, 10, 11, 12])
  # Forced tokens are not scored: row 1 scores only its last, free position.
  lp = log_softmax(logits_of(model, params, dict(
      batch, decoder_input_tokens=jnp.asarray([[0, 9, 10, 11, 12]] * 2),
      decoder_target_tokens=jnp.ones((2, 5), jnp.int32))))
  np.testing.assert_allclose(float(aux['scores'][1]), lp[1, 4].max(), rtol=1e-4)


def test_decode_fn_hook_contract(tiny):
  model, params = tiny
  batch = make_batch(seed=7, batch=2)
  seen = {}

  def fake_beam_search(*, inputs, cache, tokens_to_logits, eos_id, num_decodes, decode_rng,
                       cache_offset, beam_alpha):
    seen.update(eos_id=eos_id, num_decodes=num_decodes, alpha=beam_alpha, offset=cache_offset)
    key = cache['decoder']['layers_0']['self_attention']['cached_key']
    seen['cache_batch'] = key.shape[0]
    flat_cache = jax.tree_util.tree_map(
        lambda x: jnp.repeat(x, num_decodes, axis=0) if x.ndim else x, cache)
    logits, _ = tokens_to_logits(jnp.zeros((inputs.shape[0] * num_decodes, 1), jnp.int32),
                                 flat_cache)
    seen['logits_shape'] = logits.shape
    b, length = inputs.shape
    seqs = jnp.broadcast_to(jnp.arange(num_decodes)[None, :, None], (b, num_decodes, length))
    return seqs, jnp.broadcast_to(jnp.arange(num_decodes, dtype=jnp.float32), (b, num_decodes))

  model = models.EncoderDecoderModel(model.module, decode_fn=fake_beam_search)
  tokens, aux = jax.jit(lambda p, b: model.predict_batch_with_aux(
      p, b, num_decodes=3, decoder_params={'beam_alpha': 0.6}))(params, batch)
  assert seen == {'eos_id': 1, 'num_decodes': 3, 'alpha': 0.6, 'offset': 0, 'cache_batch': 2,
                  'logits_shape': (6, TINY.vocab_size)}
  np.testing.assert_array_equal(tokens, np.full((2, 5), 2))  # best (last) decode
  np.testing.assert_array_equal(aux['scores'], [2.0, 2.0])


def test_greedy_rejects_several_decodes(tiny):
  model, params = tiny
  with pytest.raises(ValueError, match='num_decodes'):
    jax.eval_shape(lambda p: model.predict_batch_with_aux(p, make_batch(), num_decodes=2), params)


def test_overfits_tiny_batch():
  optax = pytest.importorskip('optax')
  model, params = make_model(seed=1)
  batch = make_batch(seed=8, batch=4)
  opt = optax.adam(3e-3)

  @jax.jit
  def train(params):
    def step(carry, rng):
      params, opt_state = carry
      (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, rng)
      updates, opt_state = opt.update(grads, opt_state)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                       jax.random.split(jax.random.PRNGKey(0), 150))
    return params, losses

  params, losses = train(params)
  assert float(losses[-1]) < 0.05 * float(losses[0])
  tokens = model.predict_batch(params, batch)
  np.testing.assert_array_equal(tokens, batch['decoder_target_tokens'])


def test_gin_model_file_builds_paper_model():
  gin = pytest.importorskip('gin')
  if not hasattr(gin, 'parse_config_file'):
    pytest.skip('the installed `gin` is not gin-config')

  @gin.configurable('get_model_for_test')
  def get_model(model=gin.REQUIRED):
    return model

  def build(*bindings):
    gin.clear_config()
    try:
      gin.parse_config_file(str(ROOT / 'gin' / 'models' / 'tiger_t5.gin'))
      gin.parse_config(list(bindings) + ['get_model_for_test.model = %MODEL'])
      return get_model()
    finally:
      gin.clear_config()

  # DROPOUT_RATE comes from the run or experiment file, as in t5x.
  with pytest.raises(Exception, match='DROPOUT_RATE'):
    build()
  model = build('DROPOUT_RATE = 0.05')
  cfg = model.module.config
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.emb_dim, cfg.num_heads,
          cfg.head_dim, cfg.mlp_dim, cfg.vocab_size) == (4, 4, 128, 6, 64, 1024, 3072)
  assert cfg.mlp_activations == ('relu',) and cfg.dropout_rate == 0.05
  assert cfg.dtype == jnp.bfloat16
  shapes = {'encoder_input_tokens': (1, 81), 'decoder_input_tokens': (1, 5)}
  variables = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes))
  assert network.count_params(variables['params']) == 4_852_864
