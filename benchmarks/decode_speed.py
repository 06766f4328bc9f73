"""Times TIGER's beam search (KV cache, 20 beams) with and without the valid-ID constraint.

Paper-sized T5 with random weights (speed does not depend on them), random user histories of
`--input_length` tokens and `--num_items` random unique Semantic IDs (Beauty's sizes by default).
Needs only jax, flax and numpy (no gin, TensorFlow or seqio), so it runs on GPU hosts without them:

  python -m benchmarks.decode_speed --out_dir=out
  python -m benchmarks.decode_speed --out_dir /tmp/d --num_users 256 --batch_size 64

Each mode jits one `predict` (encode once per user, project the cross-attention keys/values once
per user, beam search over the self-attention KV cache) for a fixed batch (the last batch is
padded), compiles it on the first batch (reported apart), then times `--repeats` passes over all
users, results fetched to the host. Writes decode_speed.json.

CPU reference (2 shared cores, `--num_users 256 --batch_size 128 --dtype float32`, constrained):
re-projecting the cross-attention keys/values per beam and step ran 22 users/s (13 when the
cores were busy); projecting them once per user runs 112 users/s (69 when busy).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import time


import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402
from tiger_jax import vocab  # noqa: E402
from tiger_jax import decoding, network  # noqa: E402

LAYOUT = vocab.DEFAULT_LAYOUT


def random_catalogue(num_items: int, rng: np.random.Generator) -> np.ndarray:
  """Unique random 4-level IDs (RQ-VAE IDs cluster more, which only shrinks the trie)."""
  codes = np.unique(rng.integers(0, LAYOUT.codebook_size, (int(num_items * 1.05) + 16,
                                                          LAYOUT.num_levels)), axis=0)
  return rng.permutation(codes)[:num_items].astype(np.int32)


def random_inputs(num_users: int, codes: np.ndarray, length: int,
                  rng: np.random.Generator) -> np.ndarray:
  """User token + 1..20 history items' SID tokens, zero-padded like the task cache."""
  max_items = (length - 1) // LAYOUT.num_levels
  out = np.zeros((num_users, length), np.int32)
  out[:, 0] = LAYOUT.user_offset + rng.integers(0, LAYOUT.num_user_buckets, num_users)
  lengths = rng.integers(1, max_items + 1, num_users)
  history = LAYOUT.codes_to_tokens(codes[rng.integers(0, len(codes), (num_users, max_items))])
  history = history.reshape(num_users, -1)
  valid = np.arange(max_items * LAYOUT.num_levels)[None] < (lengths * LAYOUT.num_levels)[:, None]
  out[:, 1:1 + history.shape[1]] = np.where(valid, history, 0)
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out_dir', required=True)
  p.add_argument('--num_users', type=int, default=22363)
  p.add_argument('--num_items', type=int, default=12101)
  p.add_argument('--input_length', type=int, default=81)
  p.add_argument('--num_beams', type=int, default=20)
  p.add_argument('--batch_size', type=int, default=2048, help='users per jitted call')
  p.add_argument('--dtype', default='bfloat16', help='compute (and KV cache) dtype')
  p.add_argument('--modes', default='unconstrained,constrained',
                 help="comma list of unconstrained, constrained, encode (encoder alone)")
  p.add_argument('--score_eos', action='store_true', help='one more step for log P(EOS)')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args()
  os.makedirs(args.out_dir, exist_ok=True)

  rng = np.random.default_rng(args.seed)
  codes = random_catalogue(args.num_items, rng)
  inputs = random_inputs(args.num_users, codes, args.input_length, rng)
  num_batches = -(-args.num_users // args.batch_size)
  padded = np.zeros((num_batches * args.batch_size, args.input_length), np.int32)
  padded[:args.num_users] = inputs
  batches = [jax.device_put(padded[i * args.batch_size:(i + 1) * args.batch_size])
             for i in range(num_batches)]

  cfg = network.T5Config(vocab_size=LAYOUT.vocab_size, dtype=args.dtype, emb_dim=128, num_heads=6,
                         num_encoder_layers=4, num_decoder_layers=4, head_dim=64, mlp_dim=1024,
                         dropout_rate=0.0)
  model = network.Transformer(cfg)
  t0 = time.perf_counter()
  params = jax.jit(functools.partial(model.init, enable_dropout=False))(
      jax.random.PRNGKey(args.seed), jnp.ones((1, args.input_length), jnp.int32),
      jnp.ones((1, LAYOUT.num_levels + 1), jnp.int32),
      jnp.ones((1, LAYOUT.num_levels + 1), jnp.int32))['params']
  t_trie = time.perf_counter()
  trie = decoding.SemanticIdTrie.from_codes(codes, LAYOUT.codebook_size)
  trie_build_s = time.perf_counter() - t_trie
  trie = trie.to_device()
  jax.block_until_ready((params, trie.next_state))
  setup_s = time.perf_counter() - t0
  cache_length = LAYOUT.num_levels + (1 if args.score_eos else 0)

  @functools.partial(jax.jit, static_argnames=('constrain',))
  def predict(params, enc, trie, constrain):
    cache, context, fn = decoding.prepare_t5_decoding(model, params, enc, cache_length)
    out = decoding.beam_search(jnp.zeros((enc.shape[0], 1), jnp.int32), cache, fn,
                               num_decodes=args.num_beams, max_decode_len=LAYOUT.num_levels,
                               trie=trie, constrain=constrain, context=context,
                               codeword_offset=LAYOUT.codeword_offset,
                               codebook_size=LAYOUT.codebook_size, score_eos=args.score_eos)
    return out.tokens, out.scores, out.items

  @jax.jit
  def encode_only(params, enc):
    """The encoder's share of the time (mode 'encode')."""
    encoded = model.apply({'params': params}, enc, enable_dropout=False, method=model.encode)
    return jnp.sum(encoded.astype(jnp.float32), axis=(1, 2))

  meta = {
      **_common.run_metadata(), 'flax': flax.__version__, 'num_users': args.num_users,
      'num_items': args.num_items, 'input_length': args.input_length,
      'num_beams': args.num_beams, 'batch_size': args.batch_size, 'num_batches': num_batches,
      'dtype': args.dtype, 'score_eos': args.score_eos, 'params': network.count_params(params),
      'trie_states': list(trie.num_states), 'trie_mb': trie.next_state.nbytes / 2 ** 20,
      'trie_build_s': trie_build_s, 'setup_s': setup_s,
  }
  print(json.dumps(meta), flush=True)
  results = {'meta': meta, 'modes': {}}
  for mode in filter(None, args.modes.split(',')):
    if mode not in ('unconstrained', 'constrained', 'encode'):
      raise SystemExit(f'--modes: unknown mode {mode!r}')
    if mode == 'encode':
      fn = lambda b: encode_only(params, b)  # noqa: E731
    else:
      fn = functools.partial(predict, params, trie=trie, constrain=mode == 'constrained')
    t0 = time.perf_counter()
    jax.block_until_ready(fn(batches[0]))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      outs = [fn(b) for b in batches]
      outs = jax.device_get(outs)  # waits for the device and fetches the rankings
      times.append(time.perf_counter() - t0)
    best = float(np.median(times))
    if mode == 'encode':
      results['modes'][mode] = {'compile_plus_first_batch_s': compile_s, 'seconds': times,
                                'median_s': best, 'users_per_s': args.num_users / best}
      print(json.dumps({mode: results['modes'][mode]}), flush=True)
      continue
    tokens, scores, items = (np.concatenate(x)[:args.num_users] for x in zip(*outs))
    live = np.isfinite(scores)
    stats = {
        'compile_plus_first_batch_s': compile_s, 'seconds': times, 'median_s': best,
        'min_s': float(np.min(times)), 'users_per_s': args.num_users / best,
        'live_beam_fraction': float(live.mean()),
        'invalid_id_fraction': float((live & (items < 0)).sum() / max(live.sum(), 1)),
        'top1_invalid_fraction': float((items[:, 0] < 0).mean()),
        'mean_top1_log_prob': float(scores[:, 0].mean()),
    }
    results['modes'][mode] = stats
    print(json.dumps({mode: stats}), flush=True)
  modes = results['modes']
  if 'constrained' in modes and 'unconstrained' in modes:
    base = modes['unconstrained']['median_s']
    results['constraint_overhead'] = (modes['constrained']['median_s'] - base) / base
    print(json.dumps({'constraint_overhead': results['constraint_overhead']}), flush=True)
  path = os.path.join(args.out_dir, 'decode_speed.json')
  with open(path, 'w') as f:
    json.dump(results, f, indent=2)
  print(f'wrote {path}', flush=True)


if __name__ == '__main__':
  main()
