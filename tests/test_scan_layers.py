"""T5Config.scan_layers: the scanned network computes what the unscanned one does with the same
(stacked) parameters, in teacher-forced logits, gradients, cached decoding and beam search; its
dropout masks differ between layers; training steps (Adafactor, per-layer statistics) follow the
unscanned run."""
import dataclasses
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiger_jax import decoding
from tiger_jax import dropout as dropout_lib
from tiger_jax import models
from tiger_jax import network

CFG = network.T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=2,
                       num_decoder_layers=2, head_dim=8, mlp_dim=32, dropout_rate=0.1,
                       dtype='float32')
SCAN = dataclasses.replace(CFG, scan_layers=True)
ENC_LEN, DEC_LEN = 7, 5
L, CB, OFF = 4, 8, 2  # ID levels, codebook size, first codeword token (as tests/test_decoding.py)


def draw_params(cfg, seed=0):
  """Random parameters on the tree's shapes, drawn with numpy (no init compile)."""
  model = network.Transformer(cfg)
  ones_e, ones_d = jnp.ones((1, ENC_LEN), jnp.int32), jnp.ones((1, DEC_LEN), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ones_e, ones_d, ones_d,
                                             enable_dropout=False))['params']
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = path[-1].key
    if name == 'scale':
      return jnp.asarray(1.0 + 0.3 * rng.standard_normal(x.shape), jnp.float32)
    if name in ('embedding', 'rel_embedding'):
      return jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    return jnp.asarray(rng.standard_normal(x.shape) / np.sqrt(x.shape[-2]), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def batch(seed=1, rows=3):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, CFG.vocab_size, (rows, ENC_LEN)).astype(np.int32)
  enc[1, 4:] = 0
  tgt = rng.integers(2, CFG.vocab_size, (rows, DEC_LEN)).astype(np.int32)
  tgt[2, 3:] = 0
  dec_in = np.zeros_like(tgt)
  dec_in[:, 1:] = tgt[:, :-1]
  return jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(tgt)


@pytest.fixture(scope='module')
def params():
  """(unscanned parameters, the same stacked for scan_layers)."""
  flat = draw_params(CFG)
  return flat, network.stack_layer_params(flat, CFG)


def test_layout_and_round_trip(params):
  flat, stacked = params
  shapes = jax.eval_shape(lambda: network.Transformer(SCAN).init(
      jax.random.PRNGKey(0), *batch(), enable_dropout=False))['params']
  assert (jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), shapes)
          == jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), stacked))
  assert stacked['decoder']['layers']['mlp']['wi']['kernel'].shape == (2, 16, 32)
  assert 'layers_0' not in stacked['encoder'] and 'relpos_bias' in stacked['encoder']
  back = network.unstack_layer_params(stacked, CFG)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(flat)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, flat)


def test_teacher_forced_logits_and_gradients_match(params):
  flat, stacked = params
  enc, dec_in, tgt = batch()
  weights = jnp.asarray(np.random.default_rng(2).standard_normal((3, DEC_LEN, CFG.vocab_size)),
                        jnp.float32)

  def loss_and_logits(cfg, p):
    logits = network.Transformer(cfg).apply({'params': p}, enc, dec_in, tgt, enable_dropout=False)
    return jnp.sum(jax.nn.log_softmax(logits) * weights), logits

  grad_fn = lambda cfg: jax.jit(jax.grad(functools.partial(loss_and_logits, cfg), has_aux=True))
  grads, logits = grad_fn(CFG)(flat)
  scan_grads, scan_logits = grad_fn(SCAN)(stacked)
  np.testing.assert_allclose(scan_logits, logits, rtol=1e-5, atol=1e-5)
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5),
                         network.unstack_layer_params(scan_grads, CFG), grads)


def test_cached_decoding_steps_match(params):
  flat, stacked = params
  enc, dec_in, _ = batch()

  @functools.partial(jax.jit, static_argnums=0)
  def two_steps(cfg, p):
    model = network.Transformer(cfg)
    encoded = model.apply({'params': p}, enc, enable_dropout=False, method=model.encode)
    cross_kv = model.apply({'params': p}, encoded, method=model.precompute_cross_kv)
    step = lambda cache, tokens: model.apply(
        {'params': p, **cache}, None, enc, tokens, None, enable_dropout=False, decode=True,
        max_decode_length=DEC_LEN, cross_kv=cross_kv, method=model.decode, mutable=['cache'])
    _, cache = step({}, jnp.ones_like(dec_in))  # creates the zeroed cache
    logits = []
    for i in range(2):
      out, cache = step(cache, dec_in[:, i:i + 1])
      logits.append(out)
    return cross_kv, jnp.concatenate(logits, axis=1), cache['cache']

  kv, logits, cache = two_steps(CFG, flat)
  scan_kv, scan_logits, scan_cache = two_steps(SCAN, stacked)
  np.testing.assert_allclose(scan_logits, logits, rtol=1e-5, atol=1e-5)
  for stacked_part, parts in zip(scan_kv, zip(*kv)):  # (key, value), stacked over layers
    np.testing.assert_allclose(stacked_part, np.stack(parts), rtol=1e-5, atol=1e-5)
  layer_cache = scan_cache['decoder']['layers']['self_attention']
  assert layer_cache['cached_key'].shape == (2, 3, DEC_LEN, 2, 8)
  np.testing.assert_array_equal(layer_cache['cache_index'], [2, 2])
  np.testing.assert_allclose(layer_cache['cached_key'][1],
                             cache['decoder']['layers_1']['self_attention']['cached_key'],
                             rtol=1e-5, atol=1e-5)


def test_per_layer_cross_kv_is_refused_under_scan(params):
  _, stacked = params
  enc, dec_in, _ = batch()
  model = network.Transformer(SCAN)
  kv = (jnp.zeros((3, 2, 8, ENC_LEN)), jnp.zeros((3, 2, ENC_LEN, 8)))
  with pytest.raises(ValueError, match='scan_layers'):
    model.apply({'params': stacked}, None, enc, dec_in, dec_in, enable_dropout=False,
                cross_kv=(kv, kv), method=model.decode)


def test_constrained_beam_search_and_sampling_match(params):
  flat, stacked = params
  enc = batch()[0]
  catalogue = np.array(list(itertools.product(range(CB), repeat=L)))[::7]
  trie = decoding.SemanticIdTrie.from_codes(catalogue, codebook_size=CB).to_device()

  @functools.partial(jax.jit, static_argnums=0)
  def search(cfg, p, trie):
    cache, context, fn = decoding.prepare_t5_decoding(network.Transformer(cfg), p, enc, L + 1)
    start = jnp.zeros((enc.shape[0], 1), jnp.int32)
    common = dict(max_decode_len=L, trie=trie, constrain=True, context=context,
                  codeword_offset=OFF, codebook_size=CB, score_eos=True)
    return (decoding.beam_search(start, cache, fn, num_decodes=6, **common),
            decoding.temperature_sample(start, cache, fn, jax.random.PRNGKey(3), num_decodes=4,
                                        **common))

  ref = jax.tree_util.tree_map(np.asarray, search(CFG, flat, trie))
  out = jax.tree_util.tree_map(np.asarray, search(SCAN, stacked, trie))
  assert np.all(ref[0].items >= 0)  # a real search: live beams over the catalogue
  for o, r in zip(out, ref):
    np.testing.assert_array_equal(o.tokens, r.tokens)
    np.testing.assert_array_equal(o.items, r.items)
    np.testing.assert_allclose(o.scores, r.scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('impl', dropout_lib.IMPLS)
def test_dropout_masks_differ_between_scanned_layers(params, impl):
  """Every layer of a scan is the same traced body: without split dropout rngs each layer would
  drop exactly the same units. Compared at the dropout on each encoder layer's attention output
  (zero where dropped; the attention output itself is nonzero)."""
  _, stacked = params
  cfg = dataclasses.replace(SCAN, dropout_impl=impl, dropout_rate=0.5, dropout_broadcast_dims=())
  model = network.Transformer(cfg)
  is_dropout = lambda mdl, _: isinstance(mdl, (nn.Dropout, dropout_lib.HashDropout))
  _, state = jax.jit(lambda p: model.apply(
      {'params': p}, batch()[0], enable_dropout=True, method=model.encode,
      rngs={'dropout': jax.random.PRNGKey(4)}, capture_intermediates=is_dropout,
      mutable=['intermediates']))(stacked)
  layers = state['intermediates']['encoder']['layers']
  site = 'Dropout_0' if impl == 'rng' else 'HashDropout_0'
  dropped = np.asarray(layers[site]['__call__'][0]) == 0  # [layers, B, L, emb_dim]
  assert dropped.shape == (2, 3, ENC_LEN, 16)
  assert 0.4 < dropped.mean() < 0.6
  assert np.mean(dropped[0] != dropped[1]) > 0.4  # independent masks disagree on about half


def test_training_steps_match_the_unscanned_network(params):
  """Three StepRunner steps (dropout off) from the same parameters: the grouped Adafactor keeps its
  statistics per layer slice of the stacked leaves, so parameters, optimizer state and logged values
  follow the unscanned run. Small tensors are factored too (min_dim_size_to_factor)."""
  pytest.importorskip('optax')
  from tiger_jax import partitioning, train, utils  # pylint: disable=g-import-not-at-top
  flat, stacked = params
  enc, dec_in, tgt = batch()
  features = {'encoder_input_tokens': enc, 'decoder_input_tokens': dec_in,
              'decoder_target_tokens': tgt, 'decoder_loss_weights': (tgt > 0).astype(jnp.int32)}
  lr_fn = utils.create_learning_rate_scheduler()
  tx = utils.adafactor(lr_fn, min_dim_size_to_factor=16)

  def run(cfg, p):
    model = models.EncoderDecoderModel(network.Transformer(dataclasses.replace(cfg, dropout_rate=0.0)))
    runner = train.StepRunner(model, tx, lr_fn, partitioning.PjitPartitioner(), 1, resident=True)
    step = jax.jit(runner.one_step)
    state, outs = {'step': jnp.zeros((), jnp.int32), 'params': p, 'opt_state': tx.init(p)}, []
    for _ in range(3):
      state, out = step(state, features, jax.random.PRNGKey(0))
      outs.append(out)
    return state, outs

  ref, ref_outs = run(CFG, flat)
  out, outs = run(SCAN, stacked)
  for o, r in zip(outs, ref_outs):
    np.testing.assert_allclose([o['loss'], o['grad_norm']], [r['loss'], r['grad_norm']], rtol=1e-5)
  assert (jax.tree_util.tree_structure(out['params'])
          == jax.tree_util.tree_structure(stacked))
  moved = network.unstack_layer_params(out['params'], CFG)
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
                         moved, ref['params'])
  assert all(np.any(np.asarray(a) != np.asarray(b))
             for a, b in zip(jax.tree_util.tree_leaves(moved), jax.tree_util.tree_leaves(flat)))
  # The state: same groups; their members (tensors, layer slices) in another order. Tag each
  # unscanned tensor with its index, stack the tags as the parameters are, and let the grouping
  # itself say which row of a group's state is which tensor.
  tags = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(flat), [
      jnp.full(x.shape, i, jnp.float32) for i, x in enumerate(jax.tree_util.tree_leaves(flat))])
  rows = utils.per_shape_group(optax_identity()).init
  assert len(out['opt_state']) == len(ref['opt_state'])
  for ref_tags, scan_tags, r, o in zip(rows(tags), rows(network.stack_layer_params(tags, CFG)),
                                       ref['opt_state'], out['opt_state']):
    first = lambda t: np.asarray(t).reshape(len(t), -1)[:, 0]
    order = np.argsort(first(scan_tags))[np.argsort(np.argsort(first(ref_tags)))]
    np.testing.assert_array_equal(first(scan_tags)[order], first(ref_tags))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(
        np.asarray(a)[order], b, rtol=1e-5, atol=1e-12), o, r)


def optax_identity():
  """A per-tensor 'optimizer' whose state is the parameters themselves."""
  import optax  # pylint: disable=g-import-not-at-top
  return optax.GradientTransformation(lambda p: p, lambda u, s, p=None: (u, s))
