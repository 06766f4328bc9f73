"""tiger_jax/dropout.py: hashed-index dropout keeps the right share, scales like nn.Dropout, and draws no bits."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiger_jax import dropout as dropout_lib
from tiger_jax import network

from test_network import SMALL, init_params, random_batch


def _apply(layer, x, seed=0, deterministic=False):
  return layer.apply({}, x, deterministic=deterministic, rngs={"dropout": jax.random.PRNGKey(seed)})


def test_keep_rate_scaling_and_broadcast():
  x = jnp.ones((64, 32, 256), jnp.float32)
  out = np.asarray(_apply(dropout_lib.HashDropout(0.1), x))
  kept = out != 0
  assert abs(kept.mean() - 0.9) < 0.003  # 524k elements: 4 standard deviations
  np.testing.assert_allclose(out[kept], 1 / 0.9, rtol=1e-6)
  # broadcast_dims share a mask along that axis, as nn.Dropout's do.
  shared = np.asarray(_apply(dropout_lib.HashDropout(0.5, broadcast_dims=(-2,)), x))
  assert (shared == shared[:, :1, :]).all() and 0.45 < (shared != 0).mean() < 0.55
  assert (np.asarray(_apply(dropout_lib.HashDropout(0.3), x, deterministic=True)) == 1).all()
  assert (np.asarray(_apply(dropout_lib.HashDropout(1.0), x)) == 0).all()


def test_masks_differ_across_seeds_sites_and_neighbours_but_repeat_for_a_seed():
  x = jnp.ones((8, 4096), jnp.float32)
  a, a_again, b = (np.asarray(_apply(dropout_lib.HashDropout(0.5), x, seed)) != 0 for seed in (0, 0, 1))
  assert (a == a_again).all()
  assert 0.45 < (a != b).mean() < 0.55  # independent masks disagree on half the elements
  # Neighbouring elements are not correlated (the index is hashed, not used as is).
  assert abs(np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]) < 0.05

  class Two(nn.Module):
    @nn.compact
    def __call__(self, x):
      return dropout_lib.HashDropout(0.5)(x), dropout_lib.HashDropout(0.5)(x)

  first, second = Two().apply({}, x, rngs={"dropout": jax.random.PRNGKey(0)})
  assert 0.45 < (np.asarray(first != 0) != np.asarray(second != 0)).mean() < 0.55


def test_the_network_with_hashed_dropout_draws_no_random_bits():
  rng = np.random.default_rng(0)
  enc, dec_in, tgt = random_batch(rng, SMALL.vocab_size, [8, 4], [5, 3], 8, 5)
  _, params = init_params(SMALL, 8, 5)
  texts, outputs = {}, {}
  jax.config.update("jax_default_prng_impl", "unsafe_rbg")
  try:
    for impl in dropout_lib.IMPLS:
      model = network.Transformer(dataclasses.replace(SMALL, dropout_impl=impl))
      fn = jax.jit(lambda p, key, model=model: model.apply(
          {"params": p}, enc, dec_in, tgt, enable_dropout=True, rngs={"dropout": key}))
      key = jax.random.PRNGKey(0)
      texts[impl] = fn.lower(params, key).as_text()
      outputs[impl] = np.asarray(fn(params, key))
  finally:
    jax.config.update("jax_default_prng_impl", "threefry2x32")
  assert texts["rng"].count("rng_bit_generator") >= 10  # one per dropout site with flax's nn.Dropout
  assert texts["hash"].count("rng_bit_generator") == 0
  deterministic = np.asarray(network.Transformer(SMALL).apply({"params": params}, enc, dec_in, tgt,
                                                              enable_dropout=False))
  assert not np.allclose(outputs["hash"], deterministic)  # it does drop


def test_an_unknown_impl_is_refused():
  with pytest.raises(ValueError, match="dropout_impl: 'fast' is not one of"):
    network.T5Config(dropout_impl="fast")
