"""Checks the Flax T5 against an independent implementation (PyTorch T5 of `transformers`).

The Flax parameters are copied into the HF model and both are run on padded random inputs; the
encoder outputs and decoder logits must agree at every real (non-padding) position. Padding
positions are excluded because the two implementations mask differently there (HF masks keys
only; t5x-style masks queries too) and their values are never used.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiger_jax import network

SMALL = network.T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=2,
                         num_decoder_layers=2, head_dim=8, mlp_dim=32, dropout_rate=0.1)
PAPER = network.T5Config(vocab_size=3072, emb_dim=128, num_heads=6, num_encoder_layers=4,
                         num_decoder_layers=4, head_dim=64, mlp_dim=1024, dropout_rate=0.1)


def random_batch(rng: np.random.Generator, vocab: int, enc_lengths, dec_lengths, enc_len: int,
                 dec_len: int):
  """Padded ids as seqio's EncDecFeatureConverter produces them (decoder inputs shifted right)."""
  batch = len(enc_lengths)
  enc = np.zeros((batch, enc_len), np.int32)
  tgt = np.zeros((batch, dec_len), np.int32)
  for b, (n_enc, n_dec) in enumerate(zip(enc_lengths, dec_lengths)):
    enc[b, :n_enc] = rng.integers(2, vocab, n_enc)
    tgt[b, :n_dec] = rng.integers(2, vocab, n_dec)
    tgt[b, n_dec - 1] = 1  # EOS
  dec_in = np.zeros_like(tgt)
  dec_in[:, 1:] = tgt[:, :-1]
  return enc, dec_in, tgt


def init_params(cfg: network.T5Config, enc_len: int, dec_len: int, seed: int = 0):
  """Random parameters drawn with numpy on the tree's shapes (no init compile: fast on 2 cores).

  Norm scales are perturbed away from 1 so a misplaced scale cannot hide.
  """
  model = network.Transformer(cfg)
  ones_e = jnp.ones((1, enc_len), jnp.int32)
  ones_d = jnp.ones((1, dec_len), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ones_e, ones_d, ones_d,
                                             enable_dropout=False))['params']
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = path[-1].key
    if name == 'scale':
      return jnp.asarray(1.0 + 0.3 * rng.standard_normal(x.shape), jnp.float32)
    if name == 'embedding':
      return jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    if name == 'rel_embedding':
      return jnp.asarray(rng.uniform(-0.5, 0.5, x.shape), jnp.float32)
    fan_in = x.shape[0] if path[-2].key != 'out' else x.shape[0] * x.shape[1]
    return jnp.asarray(rng.standard_normal(x.shape) / np.sqrt(fan_in), jnp.float32)

  return model, jax.tree_util.tree_map_with_path(draw, shapes)


def apply_fn(model, **kwargs):
  """A jitted `model.apply` (jit compiles once instead of dispatching op by op: faster here)."""
  return jax.jit(lambda variables, *args: model.apply(variables, *args, **kwargs))


# ----------------------------------------------------------------------------- HF reference


def to_hf_state(params, cfg: network.T5Config):
  """Flax parameter tree -> HF T5 state-dict entries (numpy)."""
  p = jax.tree_util.tree_map(np.asarray, params)
  inner = cfg.num_heads * cfg.head_dim
  out = {'shared.weight': p['token_embedder']['embedding']}

  def attention(prefix, a):
    d = a['query']['kernel'].shape[0]
    out[prefix + '.q.weight'] = a['query']['kernel'].reshape(d, inner).T
    out[prefix + '.k.weight'] = a['key']['kernel'].reshape(d, inner).T
    out[prefix + '.v.weight'] = a['value']['kernel'].reshape(d, inner).T
    out[prefix + '.o.weight'] = a['out']['kernel'].reshape(inner, d).T

  def mlp(prefix, m):
    if len(cfg.mlp_activations) == 1:
      out[prefix + '.wi.weight'] = m['wi']['kernel'].T
    else:
      for i in range(len(cfg.mlp_activations)):
        out[prefix + f'.wi_{i}.weight'] = m[f'wi_{i}']['kernel'].T
    out[prefix + '.wo.weight'] = m['wo']['kernel'].T

  for stack, n_layers in (('encoder', cfg.num_encoder_layers), ('decoder', cfg.num_decoder_layers)):
    s = p[stack]
    out[f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'] = (
        s['relpos_bias']['rel_embedding'].T)
    for i in range(n_layers):
      layer = s[f'layers_{i}']
      b = f'{stack}.block.{i}.layer'
      if stack == 'encoder':
        out[f'{b}.0.layer_norm.weight'] = layer['pre_attention_layer_norm']['scale']
        attention(f'{b}.0.SelfAttention', layer['attention'])
        out[f'{b}.1.layer_norm.weight'] = layer['pre_mlp_layer_norm']['scale']
        mlp(f'{b}.1.DenseReluDense', layer['mlp'])
      else:
        out[f'{b}.0.layer_norm.weight'] = layer['pre_self_attention_layer_norm']['scale']
        attention(f'{b}.0.SelfAttention', layer['self_attention'])
        out[f'{b}.1.layer_norm.weight'] = layer['pre_cross_attention_layer_norm']['scale']
        attention(f'{b}.1.EncDecAttention', layer['encoder_decoder_attention'])
        out[f'{b}.2.layer_norm.weight'] = layer['pre_mlp_layer_norm']['scale']
        mlp(f'{b}.2.DenseReluDense', layer['mlp'])
    out[f'{stack}.final_layer_norm.weight'] = s[f'{stack}_norm']['scale']
  return out


def hf_model(params, cfg: network.T5Config):
  """An HF T5ForConditionalGeneration holding exactly the Flax parameters."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  if cfg.mlp_activations == ('relu',):
    proj = 'relu'
  elif cfg.mlp_activations == ('gelu', 'linear'):
    proj = 'gated-gelu'  # HF's gated-gelu is the tanh approximation, like jax.nn.gelu's default
  else:
    raise ValueError(cfg.mlp_activations)
  hf_cfg = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
      num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.relative_attention_num_buckets,
      relative_attention_max_distance=cfg.relative_attention_max_distance, dropout_rate=0.0,
      layer_norm_epsilon=cfg.layer_norm_epsilon, feed_forward_proj=proj,
      tie_word_embeddings=cfg.logits_via_embedding, attn_implementation='eager')
  model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
  state = to_hf_state(params, cfg)
  used = set()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name == 'lm_head.weight':
        continue  # tied to shared.weight in transformers >= 5; untied logits are checked by hand
      assert name in state, f'no Flax parameter for HF {name}'
      value = torch.tensor(np.asarray(state[name], dtype=np.float32))
      assert tuple(param.shape) == tuple(value.shape), name
      param.copy_(value)
      used.add(name)
  assert used == set(state), f'Flax parameters not copied: {set(state) - used}'
  return model


def hf_forward(model, params, cfg, enc, dec_in, tgt):
  """HF encoder output and logits (projected by hand when the output layer is untied)."""
  import torch
  with torch.no_grad():
    enc_t = torch.from_numpy(enc).long()
    enc_mask = torch.from_numpy(enc > 0).long()
    dec_mask = torch.from_numpy(tgt > 0).long()
    encoded = model.encoder(input_ids=enc_t, attention_mask=enc_mask).last_hidden_state
    if cfg.logits_via_embedding:
      logits = model(input_ids=enc_t, attention_mask=enc_mask,
                     decoder_input_ids=torch.from_numpy(dec_in).long(),
                     decoder_attention_mask=dec_mask).logits.numpy()
    else:
      hidden = model.decoder(input_ids=torch.from_numpy(dec_in).long(), attention_mask=dec_mask,
                             encoder_hidden_states=encoded,
                             encoder_attention_mask=enc_mask).last_hidden_state.numpy()
      logits = hidden @ np.asarray(params['decoder']['logits_dense']['kernel'])
  return encoded.numpy(), logits


def assert_matches_hf(cfg, enc_lengths, dec_lengths, enc_len, dec_len, seed=0):
  rng = np.random.default_rng(seed)
  enc, dec_in, tgt = random_batch(rng, cfg.vocab_size, enc_lengths, dec_lengths, enc_len, dec_len)
  model, params = init_params(cfg, enc_len, dec_len, seed)
  encoded = apply_fn(model, enable_dropout=False, method=model.encode)({'params': params}, enc)
  logits = apply_fn(model, enable_dropout=False)({'params': params}, enc, dec_in, tgt)
  hf = hf_model(params, cfg)
  hf_encoded, hf_logits = hf_forward(hf, params, cfg, enc, dec_in, tgt)
  enc_valid, dec_valid = enc > 0, tgt > 0
  np.testing.assert_allclose(np.asarray(encoded)[enc_valid], hf_encoded[enc_valid],
                             atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(logits)[dec_valid], hf_logits[dec_valid],
                             atol=1e-4, rtol=1e-4)
  assert logits.dtype == jnp.float32


# ----------------------------------------------------------------------------- tests


def test_relative_position_bucket_matches_hf():
  torch = pytest.importorskip('torch')
  pytest.importorskip('transformers')
  from transformers.models.t5.modeling_t5 import T5Attention
  relative = np.arange(-400, 400)[None, :]
  for bidirectional in (True, False):
    for num_buckets, max_distance in ((32, 128), (16, 40)):
      ours = network.relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
      theirs = T5Attention._relative_position_bucket(
          torch.from_numpy(relative), bidirectional=bidirectional, num_buckets=num_buckets,
          max_distance=max_distance).numpy()
      np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize('enc_len,dec_len', [(81, 5), (12, 40)])
def test_matches_hf_t5_relu(enc_len, dec_len):
  # Long sequences reach the logarithmic buckets of both the encoder and the decoder.
  enc_lengths = [enc_len, enc_len // 2, 3]
  dec_lengths = [dec_len, dec_len - 2, 1]
  assert_matches_hf(SMALL, enc_lengths, dec_lengths, enc_len, dec_len)


def test_matches_hf_t5_gated_gelu_untied():
  cfg = dataclasses.replace(SMALL, mlp_activations=('gelu', 'linear'), logits_via_embedding=False)
  assert_matches_hf(cfg, [20, 9, 1], [5, 3, 2], 20, 5, seed=3)


def test_matches_hf_t5_one_hot_lookups():
  # The one-hot (matmul) lookups compute the same function as the gathers, gradients included.
  cfg = dataclasses.replace(SMALL, one_hot_lookups=True)
  assert_matches_hf(cfg, [40, 17, 2], [5, 4, 1], 40, 5, seed=5)
  rng = np.random.default_rng(2)
  enc, dec_in, tgt = random_batch(rng, SMALL.vocab_size, [30, 9], [5, 3], 30, 5)
  model, params = init_params(SMALL, 30, 5, seed=2)
  grads = [jax.grad(lambda p, m=m: apply_fn(m, enable_dropout=False)({'params': p}, enc, dec_in,
                                                                  tgt).sum())(params)
           for m in (model, network.Transformer(cfg))]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *grads)


def test_matches_hf_t5_paper_size():
  assert_matches_hf(PAPER, [81, 45, 5, 17], [5, 5, 2, 4], 81, 5, seed=7)


def test_paper_size_parameter_count():
  model = network.Transformer(PAPER)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.ones((1, 81), jnp.int32), jnp.ones((1, 5), jnp.int32),
      jnp.ones((1, 5), jnp.int32), enable_dropout=False))
  # Embedding 3072*128 + 4 encoder layers (4 attention + 2 MLP matrices + 2 norms) + 4 decoder
  # layers (8 attention + 2 MLP matrices + 3 norms) + 2 bias tables (6*32) + 2 final norms.
  expected = (3072 * 128 + 4 * (4 * 128 * 384 + 2 * 128 * 1024 + 2 * 128)
              + 4 * (8 * 128 * 384 + 2 * 128 * 1024 + 3 * 128) + 2 * 6 * 32 + 2 * 128)
  assert network.count_params(shapes['params']) == expected == 4_852_864


def cached_logits(model, params, enc, dec_in, max_len, precompute=False):
  """Logits from one-token-at-a-time decoding with the KV cache.

  `dec_in` may hold several rows per row of `enc` (row n belongs to input n // copies, as beam
  search lays out beams). With `precompute`, the cross-attention keys and values are projected
  once up front (`precompute_cross_kv`) instead of from `encoded` at every step.
  """
  encoded = apply_fn(model, enable_dropout=False, method=model.encode)({'params': params}, enc)
  cross_kv = None
  if precompute:
    cross_kv = apply_fn(model, method=model.precompute_cross_kv)({'params': params}, encoded)
    encoded = None
  decode = jax.jit(lambda variables, encoded, tokens, cross_kv: model.apply(
      variables, encoded, enc, tokens, None, enable_dropout=False, decode=True,
      max_decode_length=max_len, cross_kv=cross_kv, method=model.decode, mutable=['cache']))
  _, variables = decode({'params': params}, encoded, jnp.ones_like(dec_in), cross_kv)
  cache = variables['cache']
  steps = []
  for i in range(max_len):
    logits, variables = decode({'params': params, 'cache': cache}, encoded, dec_in[:, i:i + 1],
                               cross_kv)
    cache = variables['cache']
    steps.append(logits[:, 0])
  return jnp.stack(steps, axis=1), cache


@pytest.mark.parametrize('dec_len', [5, 24])
def test_cached_decoding_matches_full_sequence(dec_len):
  rng = np.random.default_rng(1)
  enc, dec_in, tgt = random_batch(rng, SMALL.vocab_size, [30, 11, 2], [dec_len, dec_len, 2], 30,
                                  dec_len)
  model, params = init_params(SMALL, 30, dec_len)
  full = apply_fn(model, enable_dropout=False)({'params': params}, enc, dec_in, tgt)
  stepped, cache = cached_logits(model, params, jnp.asarray(enc), jnp.asarray(dec_in), dec_len)
  valid = tgt > 0
  np.testing.assert_allclose(np.asarray(stepped)[valid], np.asarray(full)[valid], atol=1e-5,
                             rtol=1e-5)
  layer_cache = cache['decoder']['layers_0']['self_attention']
  assert layer_cache['cached_key'].shape == (3, dec_len, SMALL.num_heads, SMALL.head_dim)
  assert int(layer_cache['cache_index']) == dec_len


@pytest.mark.parametrize('copies', [1, 4])
def test_precomputed_cross_kv_matches_per_step_projection(copies):
  """The fast path equals the previous one: cross-attention keys/values projected once per input
  and shared by `copies` decoder rows give the logits of projecting the repeated encoding at
  every step (the pre-`precompute_cross_kv` decoding)."""
  rng = np.random.default_rng(4)
  enc, _, _ = random_batch(rng, SMALL.vocab_size, [30, 11, 2], [1, 1, 1], 30, 1)
  _, dec_in, tgt = random_batch(rng, SMALL.vocab_size, [1] * 3 * copies, [6] * 3 * copies, 1, 6)
  model, params = init_params(SMALL, 30, 6)
  enc, dec_in = jnp.asarray(enc), jnp.asarray(dec_in)
  repeated = jnp.repeat(enc, copies, axis=0)
  previous, _ = cached_logits(model, params, repeated, dec_in, 6)
  fast, cache = cached_logits(model, params, enc, dec_in, 6, precompute=True)
  np.testing.assert_allclose(np.asarray(fast), np.asarray(previous), atol=1e-5, rtol=1e-5)
  # The cache is still per decoder row; the encoder side never is.
  layer_cache = cache['decoder']['layers_1']['self_attention']
  assert layer_cache['cached_key'].shape == (3 * copies, 6, SMALL.num_heads, SMALL.head_dim)
  assert 'encoder_decoder_attention' not in cache['decoder']['layers_1']
  if copies > 1:
    # An unrepeated encoding (keys projected per step, but once per input) agrees as well.
    shared, _ = cached_logits(model, params, enc, dec_in, 6)
    np.testing.assert_allclose(np.asarray(shared), np.asarray(previous), atol=1e-5, rtol=1e-5)

  # Teacher forcing with precomputed keys/values matches the full forward pass too.
  cross_kv = apply_fn(model, method=model.precompute_cross_kv)(
      {'params': params}, apply_fn(model, enable_dropout=False, method=model.encode)(
          {'params': params}, enc))
  assert len(cross_kv) == SMALL.num_decoder_layers
  key, value = cross_kv[0]
  assert key.shape == (3, SMALL.num_heads, SMALL.head_dim, 30)
  assert value.shape == (3, SMALL.num_heads, 30, SMALL.head_dim)
  forced = jax.jit(lambda kv: model.apply(
      {'params': params}, None, enc, dec_in, jnp.asarray(tgt), enable_dropout=False,
      cross_kv=kv, method=model.decode))(cross_kv)
  full = apply_fn(model, enable_dropout=False)({'params': params}, repeated, dec_in, tgt)
  valid = tgt > 0
  np.testing.assert_allclose(np.asarray(forced)[valid], np.asarray(full)[valid], atol=1e-5,
                             rtol=1e-5)


def test_decoder_batch_must_be_a_multiple_of_encoder_batch():
  model, params = init_params(SMALL, 6, 4)
  encoded = jax.ShapeDtypeStruct((2, 6, SMALL.emb_dim), jnp.float32)
  enc = jnp.ones((2, 6), jnp.int32)
  dec = jnp.ones((3, 4), jnp.int32)
  with pytest.raises(ValueError, match='not a multiple'):
    jax.eval_shape(lambda e: model.apply({'params': params}, e, enc, dec, dec,
                                         enable_dropout=False, method=model.decode), encoded)


def test_cached_decoding_needs_full_bias():
  # Shape-only evaluation: the check fires while tracing, so nothing needs compiling.
  rng = np.random.default_rng(2)
  enc, dec_in, _ = random_batch(rng, SMALL.vocab_size, [6, 6], [4, 4], 6, 4)
  model, params = init_params(SMALL, 6, 4)
  encoded = jax.ShapeDtypeStruct((2, 6, SMALL.emb_dim), jnp.float32)
  _, variables = jax.eval_shape(lambda e: model.apply(
      {'params': params}, e, enc, dec_in, dec_in, enable_dropout=False, decode=True,
      method=model.decode, mutable=['cache']), encoded)
  with pytest.raises(ValueError, match='max_decode_length'):
    jax.eval_shape(lambda e, c: model.apply(
        {'params': params, 'cache': c}, e, enc, dec_in[:, :1], None, enable_dropout=False,
        decode=True, method=model.decode, mutable=['cache']), encoded, variables['cache'])


def test_dropout_and_bfloat16():
  rng = np.random.default_rng(3)
  enc, dec_in, tgt = random_batch(rng, SMALL.vocab_size, [8, 4], [5, 3], 8, 5)
  model, params = init_params(SMALL, 8, 5)
  bf16 = network.Transformer(dataclasses.replace(SMALL, dtype='bfloat16'))

  @jax.jit
  def run(p):
    det = model.apply({'params': p}, enc, dec_in, tgt, enable_dropout=False)
    drop = model.apply({'params': p}, enc, dec_in, tgt, enable_dropout=True,
                       rngs={'dropout': jax.random.PRNGKey(0)})
    low = bf16.apply({'params': p}, enc, dec_in, tgt, enable_dropout=False)
    return det, drop, low

  det, drop, low = run(params)
  assert not np.allclose(det, drop)
  assert low.dtype == jnp.float32
  valid = tgt > 0
  np.testing.assert_allclose(np.asarray(low)[valid], np.asarray(det)[valid], atol=0.3, rtol=0.05)
  encoded = jax.eval_shape(lambda: bf16.apply({'params': params}, enc, enable_dropout=False,
                                              method=bf16.encode))
  assert encoded.dtype == jnp.bfloat16
  # bf16 computation keeps float32 parameters.
  bf16_params = jax.eval_shape(lambda: bf16.init(jax.random.PRNGKey(0), enc, dec_in, tgt,
                                                 enable_dropout=False))['params']
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(bf16_params))
