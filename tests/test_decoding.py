"""Checks the Semantic-ID decoders against brute-force enumeration on a toy model.

The toy `tokens_to_logits` reads next-token logits from a fixed random table indexed by (user,
prefix), with the prefix carried in its cache, so every sequence's log-prob is known exactly and
the cache reordering of beam search is exercised. Non-codeword tokens (EOS, pad, users, other
levels) get large logits: the decoders must mask them, and scores must still be log-probs
normalised over the whole vocabulary. With codebook 4 and 4 levels there are 256 IDs to enumerate.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiger_jax import decoding

CB = 4  # codebook size
L = 4  # levels
OFF = 2  # first codeword token
VOCAB = OFF + CB * L + 6  # + a few "user" tokens
EOS = 1
ALL_CODES = np.array(list(itertools.product(range(CB), repeat=L)), np.int32)  # [256, 4]


def make_table(num_users: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
  """Logits [users, prefix key, vocab]; prefix key = 1 followed by the codes in base CB."""
  rng = np.random.default_rng(seed)
  table = scale * rng.standard_normal((num_users, CB ** (L + 1), VOCAB)).astype(np.float32)
  table[..., :OFF] += 2.0  # pad and EOS are tempting but never allowed inside an ID
  table[..., OFF + CB * L:] += 2.0  # so are user tokens
  return table


def prefix_key(prefix) -> int:
  key = 1
  for c in prefix:
    key = key * CB + int(c)
  return key


def log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def toy_decoder(table: np.ndarray, batch: int):
  """(cache, context, tokens_to_logits) of the table model for users 0..batch-1."""
  table = jnp.asarray(table)

  def tokens_to_logits(state):
    i = state.cur_index
    code = state.cur_token[:, 0] - OFF - CB * (i - 1)
    key = jnp.where(i == 0, state.cache['key'], state.cache['key'] * CB + code)
    logits = table[state.context['user'], key]
    return logits, {'key': key, 'calls': state.cache['calls'] + 1}

  cache = {'key': jnp.ones((batch,), jnp.int32), 'calls': jnp.zeros((), jnp.int32)}
  context = {'user': jnp.arange(batch, dtype=jnp.int32)}
  return cache, context, tokens_to_logits


def level_log_probs(table, user, prefix):
  """Full-vocabulary log-probs at `prefix`, read at the next level's codewords: [CB]."""
  level = len(prefix)
  lp = log_softmax(table[user, prefix_key(prefix)])
  return lp[OFF + CB * level: OFF + CB * (level + 1)]


def sequence_scores(table, user, codes, eos=False) -> np.ndarray:
  """Exact log-prob of each ID in codes [n, L] (plus EOS at the end if asked)."""
  out = []
  for row in codes:
    s = sum(level_log_probs(table, user, row[:l])[row[l]] for l in range(L))
    if eos:
      s += log_softmax(table[user, prefix_key(row)])[EOS]
    out.append(s)
  return np.array(out)


def brute_force_topk(table, user, k, catalogue=None, eos=False):
  codes = ALL_CODES if catalogue is None else np.asarray(catalogue)
  scores = sequence_scores(table, user, codes, eos)
  order = np.argsort(-scores, kind='stable')[:k]
  return codes[order], scores[order]


def reference_beam_search(table, user, k, catalogue=None):
  """Plain-Python beam search on the table (the algorithm, not the exact top-k)."""
  prefixes = None
  if catalogue is not None:
    prefixes = {tuple(row[:l]) for row in np.asarray(catalogue).tolist() for l in range(L + 1)}
  beams = [((), 0.0)]
  for level in range(L):
    cands = []
    for prefix, s in beams:
      lp = level_log_probs(table, user, prefix)
      for c in range(CB):
        p = prefix + (c,)
        if prefixes is None or p in prefixes:
          cands.append((p, s + lp[c]))
    cands.sort(key=lambda x: -x[1])
    beams = cands[:k]
  return np.array([b[0] for b in beams], np.int32), np.array([b[1] for b in beams])


def to_tokens(codes):
  return OFF + CB * np.arange(L) + np.asarray(codes)


def to_codes(tokens):
  return np.asarray(tokens) - OFF - CB * np.arange(L)


@functools.partial(jax.jit, static_argnames=('batch', 'num_decodes', 'constrain', 'score_eos',
                                             'alpha'))
def run_beam(table, trie, batch, num_decodes, constrain=False, score_eos=False, alpha=0.0):
  cache, context, fn = toy_decoder(table, batch)
  return decoding.beam_search(jnp.zeros((batch, 1), jnp.int32), cache, fn, eos_id=EOS,
                              num_decodes=num_decodes, alpha=alpha, max_decode_len=L, trie=trie,
                              constrain=constrain, context=context, codeword_offset=OFF,
                              codebook_size=CB, score_eos=score_eos)


@functools.partial(jax.jit, static_argnames=('batch', 'num_decodes', 'temperature',
                                             'sample_levels', 'constrain', 'deduplicate'))
def run_sample(table, trie, rng, batch, num_decodes, temperature=1.0, sample_levels=None,
               constrain=False, deduplicate=False):
  cache, context, fn = toy_decoder(table, batch)
  return decoding.temperature_sample(jnp.zeros((batch, 1), jnp.int32), cache, fn, rng,
                                     eos_id=EOS, num_decodes=num_decodes, temperature=temperature,
                                     max_decode_len=L, sample_levels=sample_levels, trie=trie,
                                     constrain=constrain, deduplicate=deduplicate,
                                     context=context, codeword_offset=OFF, codebook_size=CB)


def random_catalogue(n, seed):
  rng = np.random.default_rng(seed)
  return ALL_CODES[np.sort(rng.choice(len(ALL_CODES), n, replace=False))]


def as_np(out):
  return jax.tree_util.tree_map(np.asarray, out)


# ----------------------------------------------------------------------------- trie


def test_trie_tables_and_lookup():
  codes = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [0, 2, 0, 0], [3, 3, 3, 3]])
  trie = decoding.SemanticIdTrie.from_codes(codes, codebook_size=CB)
  assert trie.num_states == (1, 2, 3, 3)  # root; (0,),(3,); (0,1),(0,2),(3,3); 3 triples
  assert trie.level_table(0).tolist() == [[0, -1, -1, 1]]
  assert trie.level_table(1).tolist() == [[-1, 0, 1, -1], [-1, -1, -1, 2]]
  # Last level maps to catalogue indices.
  assert trie.level_table(3).tolist() == [[1, -1, -1, 0], [2, -1, -1, -1], [-1, -1, -1, 3]]
  np.testing.assert_array_equal(trie.lookup(codes), np.arange(4))
  got = trie.lookup(ALL_CODES)
  assert isinstance(got, np.ndarray)
  expected = {tuple(r): i for i, r in enumerate(codes.tolist())}
  np.testing.assert_array_equal(got, [expected.get(tuple(r), -1) for r in ALL_CODES.tolist()])
  # Out-of-range codes are simply not in the catalogue.
  assert trie.lookup(np.array([[0, 1, 2, CB], [-1, 1, 2, 3]])).tolist() == [-1, -1]
  # On the device, inside jit, with a batch of shape [2, 2, 4].
  dev = trie.to_device()
  got_dev = jax.jit(lambda t, c: t.lookup(c))(dev, jnp.asarray(codes.reshape(2, 2, 4)))
  np.testing.assert_array_equal(np.asarray(got_dev), np.arange(4).reshape(2, 2))


def test_any_ids_of_one_catalogue_give_the_same_compiled_decoder():
  """Tables sized by the catalogue, not by the IDs: a second set of IDs reuses the first one's program."""
  table = make_table(2, seed=1)
  first, second = random_catalogue(30, seed=5), random_catalogue(30, seed=8)
  tries = [decoding.SemanticIdTrie.from_codes(c, codebook_size=CB) for c in (first, second)]
  assert tries[0].num_states != tries[1].num_states  # the IDs use different numbers of prefixes
  assert tries[0].next_state.shape == tries[1].next_state.shape == (1 + 4 + 16 + 30, CB)
  assert tries[0].level_offsets == tries[1].level_offsets == (0, 1, 5, 21)
  decode = jax.jit(lambda trie: run_beam(table, trie, batch=2, num_decodes=5, constrain=True).items)
  programs = [decode.lower(t.to_device()).as_text() for t in tries]
  assert programs[0] == programs[1]
  for trie, catalogue in zip(tries, (first, second)):
    items = np.asarray(decode(trie.to_device()))
    assert (items >= 0).all() and (trie.lookup(catalogue[items]) == items).all()
  assert decode._cache_size() == 1  # the second IDs were not traced again


def test_other_ids_of_one_catalogue_load_the_stored_beam_search(tmp_path):
  """The traced-program cache keys on the trie's pytree structure: it holds nothing that depends on the IDs,
  so a second set of IDs (another RQ-VAE run) loads the first one's traced decoder and decodes its own items."""
  from tiger_jax import program_cache  # pylint: disable=g-import-not-at-top
  table = make_table(2, seed=1)
  catalogues = [random_catalogue(30, seed=5), random_catalogue(30, seed=8)]
  tries = [decoding.SemanticIdTrie.from_codes(c, codebook_size=CB).to_device() for c in catalogues]
  assert jax.tree_util.tree_structure(tries[0]) == jax.tree_util.tree_structure(tries[1])
  fn = lambda trie: (run_beam(table, trie, batch=2, num_decodes=5, constrain=True).items,)
  loaded = []
  for trie, catalogue in zip(tries, catalogues):
    run, from_disk = program_cache.ProgramCache(str(tmp_path), "A = 1").compile_function(fn, (trie,), ("beam",))
    loaded.append(from_disk)
    items = np.asarray(run(trie)[0])
    np.testing.assert_array_equal(items, np.asarray(fn(trie)[0]))
    host = decoding.SemanticIdTrie.from_codes(catalogue, codebook_size=CB)
    assert (items >= 0).all() and (host.lookup(catalogue[items]) == items).all()
  assert loaded == [False, True]


def test_trie_rejects_bad_codes():
  with pytest.raises(ValueError, match='not unique'):
    decoding.SemanticIdTrie.from_codes(np.array([[1, 2, 3, 0], [1, 2, 3, 0]]), codebook_size=CB)
  with pytest.raises(ValueError, match=r'\[0, 4\)'):
    decoding.SemanticIdTrie.from_codes(np.array([[1, 2, 3, 4]]), codebook_size=CB)
  with pytest.raises(ValueError, match='num_levels'):
    decoding.SemanticIdTrie.from_codes(np.array([1, 2, 3]), codebook_size=CB)


# ----------------------------------------------------------------------------- beam search


def test_beam_search_exact_topk_when_beams_cover_prefixes():
  """With 64 = CB**(L-1) beams nothing is pruned before the last level: exact top-64."""
  table = make_table(3, seed=1)
  out = as_np(run_beam(table, None, batch=3, num_decodes=64))
  assert out.tokens.shape == (3, 64, L) and out.scores.shape == (3, 64) and out.items is None
  for user in range(3):
    codes, scores = brute_force_topk(table, user, 64)
    np.testing.assert_array_equal(to_codes(out.tokens[user]), codes)
    np.testing.assert_allclose(out.scores[user], scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('num_decodes', [1, 5, 20])
def test_beam_search_matches_reference(num_decodes):
  """Fewer beams: the same beams as a plain beam search; greedy at 1 beam; true log-probs."""
  table = make_table(3, seed=2)
  out = as_np(run_beam(table, None, batch=3, num_decodes=num_decodes))
  for user in range(3):
    codes, scores = reference_beam_search(table, user, num_decodes)
    np.testing.assert_array_equal(to_codes(out.tokens[user]), codes)
    np.testing.assert_allclose(out.scores[user], scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.scores[user], sequence_scores(table, user, codes), atol=1e-5)
    assert np.all(np.diff(out.scores[user]) <= 0)
    assert len({tuple(r) for r in out.tokens[user].tolist()}) == num_decodes


def test_beam_search_masks_non_codewords():
  table = make_table(2, seed=3)
  table[..., EOS] += 50.0  # EOS would win every step if it were allowed
  out = as_np(run_beam(table, None, batch=2, num_decodes=7))
  for level in range(L):
    tok = out.tokens[..., level]
    assert np.all((tok >= OFF + CB * level) & (tok < OFF + CB * (level + 1)))
  assert np.all(out.scores < -40)  # still full-vocabulary log-probs


def test_constrained_beam_search_is_exact_on_small_catalogue():
  table = make_table(3, seed=4)
  catalogue = random_catalogue(30, seed=5)
  trie = decoding.SemanticIdTrie.from_codes(catalogue, codebook_size=CB).to_device()
  # 30 beams cover every catalogue prefix: exactly all 30 items ranked.
  out = as_np(run_beam(table, trie, batch=3, num_decodes=30, constrain=True))
  for user in range(3):
    codes, scores = brute_force_topk(table, user, 30, catalogue)
    np.testing.assert_array_equal(to_codes(out.tokens[user]), codes)
    np.testing.assert_allclose(out.scores[user], scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.items[user], trie.lookup(codes))
    assert np.all(out.items[user] >= 0)
  # 20 beams: what a beam search over catalogue prefixes keeps, never an ID outside it.
  out = as_np(run_beam(table, trie, batch=3, num_decodes=20, constrain=True))
  for user in range(3):
    codes, scores = reference_beam_search(table, user, 20, catalogue)
    np.testing.assert_array_equal(to_codes(out.tokens[user]), codes)
    np.testing.assert_allclose(out.scores[user], scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(catalogue[out.items[user]], codes)


def test_fewer_items_than_beams_pads_with_dead_beams():
  table = make_table(2, seed=6)
  catalogue = random_catalogue(7, seed=7)
  trie = decoding.SemanticIdTrie.from_codes(catalogue, codebook_size=CB).to_device()
  out = run_beam(table, trie, batch=2, num_decodes=20, constrain=True)
  live = np.asarray(out.live)
  out = as_np(out)
  for user in range(2):
    codes, scores = brute_force_topk(table, user, 7, catalogue)
    np.testing.assert_array_equal(to_codes(out.tokens[user, :7]), codes)
    np.testing.assert_allclose(out.scores[user, :7], scores, rtol=1e-5, atol=1e-5)
    assert live[user, :7].all() and not live[user, 7:].any()
    assert np.all(out.scores[user, 7:] == -np.inf)
    assert np.all(out.tokens[user, 7:] == 0) and np.all(out.items[user, 7:] == -1)
    assert sorted(out.items[user, :7].tolist()) == list(range(7))


def test_unconstrained_counts_invalid_ids():
  table = make_table(3, seed=8)
  catalogue = random_catalogue(30, seed=9)
  trie = decoding.SemanticIdTrie.from_codes(catalogue, codebook_size=CB).to_device()
  out = as_np(run_beam(table, trie, batch=3, num_decodes=20))
  plain = as_np(run_beam(table, None, batch=3, num_decodes=20))
  np.testing.assert_array_equal(out.tokens, plain.tokens)  # tracking does not change the search
  total_invalid = 0
  for user in range(3):
    codes, _ = reference_beam_search(table, user, 20)
    expected = trie.lookup(codes)
    np.testing.assert_array_equal(out.items[user], expected)
    total_invalid += int((expected < 0).sum())
  assert int((out.live & (out.items < 0)).sum()) == total_invalid > 0


def test_score_eos_adds_eos_and_reranks():
  table = make_table(2, seed=10)
  table[..., EOS] += 3.0 * np.random.default_rng(11).standard_normal(table.shape[:2])
  out = as_np(run_beam(table, None, batch=2, num_decodes=64, score_eos=True))
  for user in range(2):
    # 64 beams are exact before EOS; adding EOS reranks the 64 kept IDs.
    kept, _ = brute_force_topk(table, user, 64)
    scores = sequence_scores(table, user, kept, eos=True)
    order = np.argsort(-scores, kind='stable')
    np.testing.assert_array_equal(to_codes(out.tokens[user]), kept[order])
    np.testing.assert_allclose(out.scores[user], scores[order], rtol=1e-5, atol=1e-5)


def test_alpha_rescales_only():
  table = make_table(1, seed=12)
  base = as_np(run_beam(table, None, batch=1, num_decodes=5))
  pen = as_np(run_beam(table, None, batch=1, num_decodes=5, alpha=0.6))
  np.testing.assert_array_equal(base.tokens, pen.tokens)
  np.testing.assert_allclose(pen.scores, base.scores / ((5 + L) / 6) ** 0.6, rtol=1e-6)


def test_bad_arguments():
  table = make_table(1)
  cache, context, fn = toy_decoder(table, 1)
  with pytest.raises(ValueError, match='needs a SemanticIdTrie'):
    decoding.beam_search(jnp.zeros((1, 1)), cache, fn, constrain=True, context=context,
                         codeword_offset=OFF, codebook_size=CB)
  trie = decoding.SemanticIdTrie.from_codes(np.array([[0, 0, 0], [0, 0, 1]]), codebook_size=CB)
  with pytest.raises(ValueError, match='3 levels'):
    decoding.beam_search(jnp.zeros((1, 1)), cache, fn, trie=trie, context=context,
                         codeword_offset=OFF, codebook_size=CB)


# ----------------------------------------------------------------------------- sampling


def sampling_probs(table, user, temperature, catalogue=None, levels=None):
  """Exact probability of each of the 256 IDs under level-wise tempered sampling."""
  prefixes = None
  if catalogue is not None:
    prefixes = {tuple(row[:l]) for row in np.asarray(catalogue).tolist() for l in range(L + 1)}
  probs = np.ones(len(ALL_CODES))
  for n, row in enumerate(ALL_CODES.tolist()):
    for level in range(L):
      lp = level_log_probs(table, user, row[:level])
      if prefixes is not None:
        ok = np.array([tuple(row[:level]) + (c,) in prefixes for c in range(CB)])
        if not ok[row[level]]:
          probs[n] = 0.0
          break
        lp = np.where(ok, lp, -np.inf)
      if levels is not None and level not in levels:
        p = (np.arange(CB) == np.argmax(lp)).astype(float)
      else:
        z = lp / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
      probs[n] *= p[row[level]]
  return probs


def chi_square(counts, probs, n):
  """Pearson statistic with rare categories (expected < 5) lumped together; (stat, dof)."""
  expected = n * probs
  big = expected >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  keep = exp > 0
  stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
  return stat, int(keep.sum()) - 1


def sample_counts(out, user):
  codes = to_codes(out.tokens[user])
  index = (codes * CB ** np.arange(L - 1, -1, -1)).sum(-1)
  return np.bincount(index, minlength=len(ALL_CODES))


def test_sampling_near_zero_temperature_is_greedy():
  table = make_table(3, seed=13)
  rng = jax.random.PRNGKey(0)
  greedy = as_np(run_beam(table, None, batch=3, num_decodes=1))
  for temperature in (0.0, 1e-4):
    out = as_np(run_sample(table, None, rng, batch=3, num_decodes=8, temperature=temperature))
    for user in range(3):
      codes, score = reference_beam_search(table, user, 1)
      assert np.all(to_codes(out.tokens[user]) == codes[0])
      np.testing.assert_allclose(out.scores[user], score[0], rtol=1e-5, atol=1e-5)
      np.testing.assert_array_equal(out.tokens[user, 0], greedy.tokens[user, 0])
  out = as_np(run_sample(table, None, rng, batch=3, num_decodes=8, temperature=0.0,
                         deduplicate=True))
  assert np.all(np.isfinite(out.scores[:, 0])) and np.all(out.scores[:, 1:] == -np.inf)
  assert np.all(out.tokens[:, 1:] == 0)


@pytest.mark.parametrize('temperature', [1.0, 0.7])
def test_sampling_frequencies_match_distribution(temperature):
  table = make_table(1, seed=14)
  n = 20000
  out = as_np(run_sample(table, None, jax.random.PRNGKey(1), batch=1, num_decodes=n,
                         temperature=temperature))
  counts = sample_counts(out, 0)
  stat, dof = chi_square(counts, sampling_probs(table, 0, temperature), n)
  assert stat < dof + 5 * np.sqrt(2 * dof), (stat, dof)
  # The test has power: the same samples are far from another temperature's distribution.
  wrong, dof_w = chi_square(counts, sampling_probs(table, 0, temperature * 1.5), n)
  assert wrong > dof_w + 20 * np.sqrt(2 * dof_w)
  # Scores are untempered model log-probs of the drawn IDs, sorted.
  codes = to_codes(out.tokens[0, :50])
  np.testing.assert_allclose(out.scores[0, :50], sequence_scores(table, 0, codes), atol=1e-5)
  assert np.all(np.diff(out.scores[0]) <= 0)


def test_constrained_sampling_frequencies():
  table = make_table(1, seed=15)
  catalogue = random_catalogue(40, seed=16)
  trie = decoding.SemanticIdTrie.from_codes(catalogue, codebook_size=CB).to_device()
  n = 20000
  out = as_np(run_sample(table, trie, jax.random.PRNGKey(2), batch=1, num_decodes=n,
                         constrain=True))
  codes = to_codes(out.tokens[0])
  assert np.all(out.items[0] >= 0)
  np.testing.assert_array_equal(catalogue[out.items[0]], codes)
  stat, dof = chi_square(sample_counts(out, 0), sampling_probs(table, 0, 1.0, catalogue), n)
  assert stat < dof + 5 * np.sqrt(2 * dof), (stat, dof)


def test_unconstrained_sampling_tracks_items():
  table = make_table(2, seed=17)
  catalogue = random_catalogue(60, seed=18)
  trie = decoding.SemanticIdTrie.from_codes(catalogue, codebook_size=CB)
  out = as_np(run_sample(table, trie.to_device(), jax.random.PRNGKey(3), batch=2,
                         num_decodes=500))
  np.testing.assert_array_equal(out.items, trie.lookup(to_codes(out.tokens)))
  assert (out.items < 0).any() and (out.items >= 0).any()


def test_sampling_only_first_level():
  table = make_table(2, seed=19)
  n = 4000
  out = as_np(run_sample(table, None, jax.random.PRNGKey(4), batch=2, num_decodes=n,
                         sample_levels=(0,)))
  for user in range(2):
    codes = to_codes(out.tokens[user])
    for first in range(CB):
      rows = codes[codes[:, 0] == first]
      prefix = (first,)
      for level in range(1, L):  # greedy below the first level
        prefix = prefix + (int(np.argmax(level_log_probs(table, user, prefix))),)
      assert np.all(rows == np.array(prefix))
    probs = sampling_probs(table, user, 1.0, levels=(0,))
    stat, dof = chi_square(sample_counts(out, user), probs, n)
    assert dof == CB - 1 and stat < dof + 5 * np.sqrt(2 * dof), (stat, dof)
  # Deduplicated: at most CB distinct IDs per user, each once, then dead decodes.
  out = as_np(run_sample(table, None, jax.random.PRNGKey(4), batch=2, num_decodes=20,
                         sample_levels=(0,), deduplicate=True))
  for user in range(2):
    live = np.isfinite(out.scores[user])
    assert 1 <= live.sum() <= CB and live[:live.sum()].all()
    distinct = {tuple(r) for r in out.tokens[user][live].tolist()}
    assert len(distinct) == live.sum()
    assert np.all(out.tokens[user][~live] == 0)


# ----------------------------------------------------------------------------- real network


def small_transformer():
  """A T5 with random weights, 3 encoder inputs (one padded) and a trie of codebook 8."""
  from tiger_jax import network  # pylint: disable=g-import-not-at-top
  # Two decoder layers (a cache per layer); one encoder layer keeps the compile short.
  cfg = network.T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=1,
                         num_decoder_layers=2, head_dim=8, mlp_dim=32, dropout_rate=0.0)
  cb, enc_len, batch = 8, 10, 3
  model = network.Transformer(cfg)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.ones((1, enc_len), jnp.int32), jnp.ones((1, L + 1), jnp.int32),
      jnp.ones((1, L + 1), jnp.int32), enable_dropout=False))['params']
  rng = np.random.default_rng(20)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape) * (1.0 if len(s.shape) < 2 else
                                                            1.0 / np.sqrt(s.shape[0])),
                            jnp.float32), shapes)
  enc = rng.integers(2, cfg.vocab_size, (batch, enc_len)).astype(np.int32)
  enc[1, 6:] = 0  # padded input
  catalogue = np.array(list(itertools.product(range(cb), repeat=L)))[::7]
  trie = decoding.SemanticIdTrie.from_codes(catalogue, codebook_size=cb).to_device()
  return model, params, enc, trie


def per_step_t5_decoding(module, params, encoder_input_tokens, cache_length):
  """The T5 adapter before `precompute_cross_kv`, as the reference of the fast path: the encoding
  goes through `context` (repeated per beam) and every step re-projects it into the
  cross-attention keys and values of every row."""
  encoded = module.apply({'params': params}, encoder_input_tokens, enable_dropout=False,
                         method=module.encode)
  dummy = jnp.ones((encoder_input_tokens.shape[0], cache_length), jnp.int32)
  cache = jax.eval_shape(lambda: module.apply(
      {'params': params}, encoded, encoder_input_tokens, dummy, dummy, enable_dropout=False,
      decode=True, max_decode_length=cache_length, method=module.decode,
      mutable=['cache'])[1]['cache'])
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache)
  context = {'encoded': encoded, 'encoder_input_tokens': encoder_input_tokens}

  def tokens_to_logits(state):
    logits, variables = module.apply(
        {'params': params, 'cache': state.cache}, state.context['encoded'],
        state.context['encoder_input_tokens'], state.cur_token, None, enable_dropout=False,
        decode=True, max_decode_length=cache_length, method=module.decode, mutable=['cache'])
    return logits[:, -1, :], variables['cache']

  return cache, context, tokens_to_logits


def test_beam_search_with_transformer_kv_cache():
  """Beam scores equal the network's teacher-forced log-probs of the returned IDs."""
  model, params, enc, trie = small_transformer()
  cb, batch, beams = trie.codebook_size, enc.shape[0], 10

  @functools.partial(jax.jit, static_argnames=('constrain', 'score_eos'))
  def predict(params, enc, trie, constrain, score_eos):
    cache, context, fn = decoding.prepare_t5_decoding(model, params, enc,
                                                      L + 1 if score_eos else L)
    return decoding.beam_search(jnp.zeros((enc.shape[0], 1), jnp.int32), cache, fn,
                                num_decodes=beams, max_decode_len=L, trie=trie,
                                constrain=constrain, context=context, codeword_offset=OFF,
                                codebook_size=cb, score_eos=score_eos)

  @jax.jit
  def full_log_probs(params, enc, targets):
    """Teacher-forced log-probs [N, L + 1] of ID + EOS (one compile serves both checks)."""
    dec_in = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))
    logits = model.apply({'params': params}, enc, dec_in, targets, enable_dropout=False)
    lp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]

  for constrain, score_eos in [(False, False), (True, True)]:
    out = as_np(predict(params, jnp.asarray(enc), trie, constrain, score_eos))
    targets = np.concatenate([out.tokens.reshape(batch * beams, L),
                              np.full((batch * beams, 1), EOS)], axis=1)
    full = np.asarray(full_log_probs(params, jnp.repeat(jnp.asarray(enc), beams, axis=0),
                                     jnp.asarray(targets, jnp.int32)))
    full = full.sum(-1) if score_eos else full[:, :L].sum(-1)
    np.testing.assert_allclose(out.scores.reshape(-1), full, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(out.scores, axis=1) <= 0)
    codes = out.tokens - OFF - cb * np.arange(L)
    np.testing.assert_array_equal(out.items, np.asarray(trie.lookup(jnp.asarray(codes))))
    if constrain:
      assert np.all(out.items >= 0)
    for b in range(batch):
      assert len({tuple(r) for r in out.tokens[b].tolist()}) == beams


def test_t5_fast_path_matches_per_step_cross_attention():
  """prepare_t5_decoding (cross-attention keys/values once per input, shared by its beams or
  samples) gives the logits, decodes and scores of re-projecting the encoding per row and step."""
  model, params, enc, trie = small_transformer()
  cb = trie.codebook_size
  adapters = {'fast': decoding.prepare_t5_decoding, 'per_step': per_step_t5_decoding}

  @functools.partial(jax.jit, static_argnames=('adapter',))
  def run(params, enc, trie, rng, adapter):
    cache, context, fn = adapters[adapter](model, params, enc, L + 1)
    start = jnp.zeros((enc.shape[0], 1), jnp.int32)
    first, _ = fn(decoding.DecodingState(cur_index=jnp.asarray(0, jnp.int32), cur_token=start,
                                         cache=cache, context=context))
    common = dict(max_decode_len=L, trie=trie, context=context, codeword_offset=OFF,
                  codebook_size=cb, score_eos=True)
    beam = decoding.beam_search(start, cache, fn, num_decodes=10, **common)
    sample = decoding.temperature_sample(start, cache, fn, rng, num_decodes=6, constrain=True,
                                         **common)
    return first, beam, sample, context is None

  rng = jax.random.PRNGKey(5)
  first, beam, sample, no_context = as_np(run(params, jnp.asarray(enc), trie, rng, 'fast'))
  ref_first, ref_beam, ref_sample, _ = as_np(run(params, jnp.asarray(enc), trie, rng, 'per_step'))
  assert no_context  # nothing is repeated per beam
  np.testing.assert_allclose(first, ref_first, rtol=1e-5, atol=1e-5)
  for out, ref in ((beam, ref_beam), (sample, ref_sample)):
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.items, ref.items)
    np.testing.assert_allclose(out.scores, ref.scores, rtol=1e-5, atol=1e-5)
