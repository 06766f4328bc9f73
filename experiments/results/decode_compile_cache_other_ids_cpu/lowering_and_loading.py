"""Per encoder length: tracing and lowering, then compiling (or loading from the persistent cache) of the paper
network's 20-beam constrained decode, batch 512, 12,101 random IDs. Run twice with one cache directory:

  PYTHONPATH=. JAX_PLATFORMS=cpu python experiments/results/decode_compile_cache_other_ids_cpu/lowering_and_loading.py CACHE
"""
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import decode_speed
from tiger_jax import decoding, network, vocab

LAYOUT = vocab.DEFAULT_LAYOUT


def main(cache_dir: str) -> None:
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  codes = decode_speed.random_catalogue(12101, np.random.default_rng(0))
  cfg = network.T5Config(vocab_size=LAYOUT.vocab_size, dtype="float32", emb_dim=128, num_heads=6,
                         num_encoder_layers=4, num_decoder_layers=4, head_dim=64, mlp_dim=1024, dropout_rate=0.0)
  model = network.Transformer(cfg)
  ones = lambda n: jnp.ones((1, n), jnp.int32)  # noqa: E731
  params = jax.jit(functools.partial(model.init, enable_dropout=False))(
      jax.random.PRNGKey(0), ones(81), ones(LAYOUT.num_levels + 1), ones(LAYOUT.num_levels + 1))["params"]
  trie = decoding.SemanticIdTrie.from_codes(codes, LAYOUT.codebook_size).to_device()

  @jax.jit
  def predict(params, enc, trie):
    cache, context, fn = decoding.prepare_t5_decoding(model, params, enc, LAYOUT.num_levels)
    out = decoding.beam_search(jnp.zeros((enc.shape[0], 1), jnp.int32), cache, fn, num_decodes=20,
                               max_decode_len=LAYOUT.num_levels, trie=trie, constrain=True, context=context,
                               codeword_offset=LAYOUT.codeword_offset, codebook_size=LAYOUT.codebook_size)
    return out.items, out.scores

  for length in (17, 33, 49, 81):
    start = time.perf_counter()
    lowered = predict.lower(params, np.zeros((512, length), np.int32), trie)
    lowered_at = time.perf_counter()
    lowered.compile()
    print(f"length {length}: trace+lower {lowered_at - start:.2f} s, compile {time.perf_counter() - lowered_at:.2f} s",
          flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
