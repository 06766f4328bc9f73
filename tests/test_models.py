"""EncoderDecoderModel: loss by hand, scoring, Semantic-ID decoding, overfitting."""
import dataclasses
import functools
import importlib.util  # noqa: F401  (gin 0.5 needs it imported first)
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiger_jax import vocab
from tiger_jax import decoding
from tiger_jax import models
from tiger_jax import network

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = network.T5Config(vocab_size=24, emb_dim=16, num_heads=2, num_encoder_layers=1,
                        num_decoder_layers=2, head_dim=8, mlp_dim=32, dropout_rate=0.0)
# TINY's vocabulary: pad, EOS, 4 levels x 4 codes, 6 user tokens = 24.
LAYOUT = vocab.TokenLayout(num_levels=4, codebook_size=4, num_user_buckets=6, pad_to_multiple=8)
ALL_CODES = np.array(list(itertools.product(range(4), repeat=4)), np.int32)  # [256, 4]


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
  model = models.EncoderDecoderModel(network.Transformer(cfg), **{'layout': LAYOUT, **kwargs})
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


@pytest.mark.parametrize('label_smoothing', [0.1, 0.3])
def test_level_scoped_smoothing_matches_hand_computation(label_smoothing):
  """Smoothing mass over the label's level codewords only; EOS and user-token labels unsmoothed."""
  batch = make_batch(seed=3)
  tgt = np.asarray(batch['decoder_target_tokens'])
  weights = np.asarray(batch['decoder_loss_weights'])
  logits = 3.0 * np.random.default_rng(4).standard_normal(tgt.shape + (24,))
  loss, _ = models.compute_loss_and_metrics(
      jnp.asarray(logits, jnp.float32), batch, label_smoothing=label_smoothing,
      loss_normalizing_factor=None, level_smoothing_layout=LAYOUT)
  lp = log_softmax(logits)
  expected, kinds = 0.0, set()
  for b, t in zip(*np.nonzero(weights)):
    label = tgt[b, t]
    level = (label - 2) // 4 if 2 <= label < 18 else None  # LAYOUT: codewords are tokens 2..17
    kinds.add(level is None)
    if level is None:
      expected += -lp[b, t, label]
      continue
    q = np.zeros(24)
    q[2 + 4 * level: 6 + 4 * level] = label_smoothing / 3
    q[label] = 1.0 - label_smoothing
    support = q > 0
    expected += -np.sum(q * lp[b, t]) + np.sum(q[support] * np.log(q[support]))
  assert kinds == {True, False}  # the batch has both smoothed and unsmoothed labels
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_level_scope_is_a_model_option(tiny):
  _, params = tiny
  batch = make_batch(seed=2)
  level = models.EncoderDecoderModel(tiny[0].module, label_smoothing=0.2, layout=LAYOUT,
                                     label_smoothing_scope='level')
  everywhere = models.EncoderDecoderModel(tiny[0].module, label_smoothing=0.2, layout=LAYOUT)
  logits = jnp.asarray(logits_of(level, params, batch), jnp.float32)
  expected, _ = models.compute_loss_and_metrics(logits, batch, label_smoothing=0.2,
                                                loss_normalizing_factor='NUM_REAL_TARGET_TOKENS',
                                                level_smoothing_layout=LAYOUT)
  level_loss = float(jax.jit(level.eval_fn)(params, batch)[0])
  np.testing.assert_allclose(level_loss, float(expected), rtol=1e-5)
  assert abs(level_loss - float(jax.jit(everywhere.eval_fn)(params, batch)[0])) > 1e-3
  with pytest.raises(ValueError, match='label_smoothing_scope'):
    models.EncoderDecoderModel(tiny[0].module, label_smoothing_scope='codebook')


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


# ----------------------------------------------------------------------------- decoding
# The tiny network's 24 tokens hold a 4-level, 4-code layout: codeword tokens 2..17 (level l,
# code c -> 2 + 4l + c), then 6 user tokens; 256 possible IDs, small enough to enumerate.


def id_tokens(codes):
  return LAYOUT.codes_to_tokens(np.asarray(codes))


def random_catalogue(n, seed):
  rng = np.random.default_rng(seed)
  return ALL_CODES[np.sort(rng.choice(len(ALL_CODES), n, replace=False))]


def make_inputs(seed, batch, enc_len=9):
  """Encoder inputs shaped like TIGER's: a user token, then codeword tokens, then padding."""
  rng = np.random.default_rng(seed)
  enc = np.zeros((batch, enc_len), np.int32)
  for b in range(batch):
    n = enc_len - 2 * b
    enc[b, 0] = rng.integers(LAYOUT.user_offset, LAYOUT.used_size)
    enc[b, 1:n] = rng.integers(LAYOUT.codeword_offset, LAYOUT.user_offset, n - 1)
  return jnp.asarray(enc)


def id_batch(enc, codes, with_eos=True):
  """Teacher-forced features scoring the IDs `codes` [B, L] (+ EOS, weighted iff with_eos)."""
  codes = np.asarray(codes)
  tgt = np.concatenate([id_tokens(codes), np.full((len(codes), 1), models.EOS_ID)], axis=1)
  dec_in = np.zeros_like(tgt)
  dec_in[:, 1:] = tgt[:, :-1]
  weights = np.ones_like(tgt)
  weights[:, -1] = int(with_eos)
  return {'encoder_input_tokens': jnp.asarray(enc), 'decoder_input_tokens': jnp.asarray(dec_in),
          'decoder_target_tokens': jnp.asarray(tgt), 'decoder_loss_weights': jnp.asarray(weights)}


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def run_predict(model, params, enc, decoder_params, num_decodes, trie=None, rng=None):
  """The documented pattern: static options bound, the trie a jit argument.

  decoder_params is a frozenset of (key, value) pairs so that it can be a static argument.
  """
  return model.predict_batch_with_aux(
      params, {'encoder_input_tokens': enc}, rng=rng,
      decoder_params=dict(decoder_params, trie=trie), num_decodes=num_decodes,
      return_all_decodes=True)


@pytest.mark.parametrize('score_eos', [False, True])
def test_constrained_beam_is_brute_force_over_catalogue(tiny, score_eos):
  """With more beams than items nothing is pruned: the whole catalogue, ranked best first."""
  model, params = tiny
  catalogue = random_catalogue(10, seed=1)
  trie = decoding.SemanticIdTrie.from_codes(catalogue, LAYOUT.codebook_size)
  enc = make_inputs(seed=2, batch=3)
  tokens, aux = run_predict(model, params, enc, frozenset(
      {'constrain': True, 'score_eos': score_eos}.items()), 12, trie.to_device())
  tokens, scores, items = map(np.asarray, (tokens, aux['scores'], aux['items']))
  assert tokens.shape == (3, 12, 4) and scores.shape == items.shape == (3, 12)

  # Brute force: teacher-forced log-prob of every (input, item) pair.
  n = len(catalogue)
  flat = id_batch(np.repeat(np.asarray(enc), n, axis=0), np.tile(catalogue, (3, 1)), score_eos)
  expected = np.asarray(jax.jit(model.score_batch)(params, flat)).reshape(3, n)
  for b in range(3):
    order = np.argsort(-expected[b], kind='stable')
    np.testing.assert_array_equal(items[b, :n], order)
    np.testing.assert_array_equal(tokens[b, :n], id_tokens(catalogue[order]))
    np.testing.assert_allclose(scores[b, :n], expected[b, order], rtol=1e-4, atol=1e-5)
  # Two beams more than items: dead, last, and unmistakable for IDs.
  assert np.all(scores[:, n:] == -np.inf) and np.all(items[:, n:] == -1)
  assert np.all(tokens[:, n:] == 0)


def test_one_beam_is_stepwise_argmax_over_level_tokens(tiny):
  model, params = tiny
  enc = make_inputs(seed=3, batch=4)
  tokens, aux = jax.jit(model.predict_batch_with_aux)(params, {'encoder_input_tokens': enc})
  tokens, scores = np.asarray(tokens), np.asarray(aux['scores'])
  assert tokens.shape == (4, 4) and scores.shape == (4,)
  assert set(aux) == {'scores'}  # no trie, no items

  # Reference: uncached forward passes, one more position at a time; each level may only
  # emit its own codeword tokens, scored by the full-vocabulary softmax.
  compute = jax.jit(model._compute_logits)
  b, levels, size = 4, LAYOUT.num_levels, LAYOUT.codebook_size
  prefix = np.zeros((b, levels), np.int32)
  expected, expected_scores = np.zeros((b, levels), np.int32), np.zeros(b)
  for i in range(levels):
    feats = {'encoder_input_tokens': enc, 'decoder_input_tokens': jnp.asarray(prefix),
             'decoder_target_tokens': jnp.ones((b, levels), jnp.int32)}
    lp = log_softmax(np.asarray(compute(params, feats), np.float64)[:, i])
    start = LAYOUT.codeword_offset + size * i
    allowed = lp[:, start:start + size]
    expected[:, i] = start + allowed.argmax(-1)
    expected_scores += allowed.max(-1)
    if i + 1 < levels:
      prefix[:, i + 1] = expected[:, i]
  np.testing.assert_array_equal(tokens, expected)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-4)

  # Sampling at temperature 0 is the same greedy decode. An unconstraining trie only maps IDs
  # to items, and greedy IDs mostly miss a 6-item catalogue.
  trie = decoding.SemanticIdTrie.from_codes(random_catalogue(6, seed=4), LAYOUT.codebook_size)
  sampled, aux = run_predict(model, params, enc, frozenset(
      {'method': 'sample', 'temperature': 0.0}.items()), 2, trie.to_device(),
      jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(sampled), np.repeat(expected[:, None], 2, axis=1))
  items = np.asarray(aux['items'])
  np.testing.assert_array_equal(items, trie.lookup(LAYOUT.tokens_to_codes(np.asarray(sampled))))
  assert np.any(items < 0)


def test_constraint_never_returns_item_outside_trie(tiny):
  model, params = tiny
  catalogue = random_catalogue(6, seed=4)
  trie = decoding.SemanticIdTrie.from_codes(catalogue, LAYOUT.codebook_size)
  enc = make_inputs(seed=5, batch=3)
  batch = {'encoder_input_tokens': enc, 'decoder_target_tokens': jnp.ones((3, 5), jnp.int32)}
  # (test_one_beam_... shows unconstrained decodes leaving such a catalogue.)
  beam = model.make_predict_fn({'trie': trie, 'constrain': True}, num_decodes=8,
                               return_all_decodes=True)
  sample = model.make_predict_fn({'method': 'sample', 'trie': trie, 'constrain': True,
                                  'deduplicate': True}, num_decodes=8, return_all_decodes=True)
  for name, (tokens, aux) in (('beam', beam(params, batch)),
                              ('sample', sample(params, batch, jax.random.PRNGKey(1)))):
    tokens, scores, items = map(np.asarray, (tokens, aux['scores'], aux['items']))
    live = np.isfinite(scores)
    if name == 'beam':  # 8 beams cover the 6 items, each once; the rest are dead
      assert live.sum(1).tolist() == [6, 6, 6]
    codes = LAYOUT.tokens_to_codes(tokens)
    np.testing.assert_array_equal(np.where(live, trie.lookup(codes), -1), items)
    assert np.all(items[live] >= 0) and np.all(items[~live] == -1) and np.all(live[:, 0])
    for b in range(3):
      row = scores[b, live[b]]
      assert np.all(np.diff(row) <= 0) and np.all(live[b, :len(row)])  # best first, dead last
      assert len(set(items[b, live[b]])) == len(row)  # distinct (deduplicated samples)
  best = model.make_predict_fn({'trie': trie, 'constrain': True}, num_decodes=8)
  best_tokens, best_aux = jax.eval_shape(best, params, batch)  # shapes only: saves a compile
  assert best_tokens.shape == (3, 4) and best_aux['items'].shape == best_aux['scores'].shape == (3,)


def test_make_predict_fn_keeps_trie_out_of_the_program(tiny):
  """The trie travels as an argument; closing over it would embed its table as a constant."""
  model, params = tiny
  trie = decoding.SemanticIdTrie.from_codes(random_catalogue(40, seed=6), LAYOUT.codebook_size)
  enc = make_inputs(seed=7, batch=2)
  opts = {'trie': trie, 'constrain': True}
  predict = model.make_predict_fn(opts, num_decodes=3)
  table_type = 'tensor<{}x{}xi32>'.format(*trie.next_state.shape)

  def constants(text):
    return [line for line in text.splitlines() if 'constant' in line and table_type in line]

  hlo = predict.jitted.lower(params, enc, trie.to_device(), None).as_text()
  assert table_type in hlo and not constants(hlo)
  closed = jax.jit(functools.partial(model.predict_batch_with_aux, decoder_params=opts,
                                     num_decodes=3)).lower(params, {'encoder_input_tokens': enc})
  assert constants(closed.as_text())  # what the pattern avoids


def test_decoder_params_are_checked(tiny):
  model, params = tiny
  batch = {'encoder_input_tokens': make_inputs(seed=8, batch=2)}
  trie = decoding.SemanticIdTrie.from_codes(random_catalogue(4, seed=9), LAYOUT.codebook_size)
  with pytest.raises(ValueError, match='rng'):
    model.predict_batch_with_aux(params, batch, decoder_params={'method': 'sample'})
  with pytest.raises(ValueError, match="'beam_size'"):
    model.predict_batch_with_aux(params, batch, decoder_params={'beam_size': 4})
  with pytest.raises(ValueError, match="'temperature'.*'sample'"):
    model.predict_batch_with_aux(params, batch, decoder_params={'temperature': 0.5})
  with pytest.raises(ValueError, match="'alpha'.*'beam'"):
    model.make_predict_fn({'method': 'sample', 'alpha': 0.6})
  with pytest.raises(ValueError, match='method'):
    model.predict_batch_with_aux(params, batch, decoder_params={'method': 'greedy'})
  with pytest.raises(ValueError, match='trie'):
    model.predict_batch_with_aux(params, batch, decoder_params={'constrain': True})
  with pytest.raises(ValueError, match='SemanticIdTrie'):
    model.predict_batch_with_aux(params, batch, decoder_params={'trie': trie.next_state})
  # A network too small for the layout's codeword tokens is refused, not silently clamped.
  small = models.EncoderDecoderModel(model.module)  # TIGER's layout: tokens up to 1025
  assert small.num_id_levels == 4
  with pytest.raises(ValueError, match='vocab_size 24'):
    small.predict_batch_with_aux(params, batch)
  assert model.num_id_levels == LAYOUT.num_levels

def test_overfits_tiny_batch():
  optax = pytest.importorskip('optax')
  model, params = make_model(seed=1)
  batch = id_batch(make_inputs(seed=8, batch=4), random_catalogue(4, seed=8))
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
  tokens = jax.jit(model.predict_batch)(params, batch)
  np.testing.assert_array_equal(tokens, batch['decoder_target_tokens'][:, :4])


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
  # It decodes TIGER's Semantic IDs (20 beams, constrained to a catalogue).
  assert model.num_id_levels == 4 and model.layout == vocab.DEFAULT_LAYOUT
  trie = decoding.SemanticIdTrie.from_codes(np.array([[1, 2, 3, 0], [1, 2, 3, 1]]))
  tokens, aux = jax.eval_shape(lambda p, t: model.predict_batch_with_aux(
      p, {'encoder_input_tokens': jnp.ones((2, 81), jnp.int32)}, num_decodes=20,
      decoder_params={'trie': t, 'constrain': True}, return_all_decodes=True),
      variables['params'], trie.to_device())
  assert tokens.shape == (2, 20, 4) and aux['items'].shape == aux['scores'].shape == (2, 20)


@pytest.mark.parametrize('tied', [True, False])
def test_casting_weights_once_gives_the_same_loss_and_float32_gradients(tied):
  """cast_weights_once moves each layer's bfloat16 cast of its weights to one place: the numbers must not move."""
  cfg = dataclasses.replace(TINY, dtype='bfloat16', dropout_rate=0.1, logits_via_embedding=tied)
  batch = make_batch(seed=4)
  results = []
  for once in (False, True):
    model, params = make_model(dataclasses.replace(cfg, cast_weights_once=once), seed=1)
    grad_fn = jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(2))[0]))
    results.append(grad_fn(params))
  (loss, grads), (loss_once, grads_once) = results
  assert float(loss) == float(loss_once)
  for (path, g), g_once in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree_util.tree_leaves(grads_once)):
    assert g_once.dtype == jnp.float32, path
    np.testing.assert_array_equal(np.asarray(g), np.asarray(g_once), err_msg=str(path))

  cast = network.cast_weights_to_compute_dtype(params, model.module.config)
  dtypes = {'/'.join(k.key for k in path): leaf.dtype for path, leaf in jax.tree_util.tree_flatten_with_path(cast)[0]}
  assert dtypes['encoder/layers_0/mlp/wi/kernel'] == jnp.bfloat16
  assert dtypes['decoder/relpos_bias/rel_embedding'] == jnp.bfloat16
  # The tied embedding also feeds the float32 logits; norms compute in float32; so does logits_dense.
  assert dtypes['token_embedder/embedding'] == jnp.float32
  assert dtypes['encoder/encoder_norm/scale'] == jnp.float32
  if not tied:
    assert dtypes['decoder/logits_dense/kernel'] == jnp.float32
