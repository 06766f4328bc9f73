"""Decoding Semantic IDs: beam search, temperature sampling and the valid-ID constraint.

A TIGER Semantic ID is exactly `num_levels` (4) codeword tokens, so decoding always runs a fixed
number of steps; step l may only emit level l's codeword tokens (`codeword_offset +
codebook_size * l + code`, see `tiger_jax/vocab.py`). Every other token (pad, EOS, other levels, user
tokens) is impossible there and is masked to -inf; that is the *unconstrained* decoder. The
*constrained* decoder also masks extensions that lead to no item of the catalogue.

Design, in the t5x mould but specialised to fixed-length IDs:

* The caller supplies `tokens_to_logits(state: DecodingState) -> (logits [N, vocab], new_cache)`
  and an initial `cache` (a pytree whose non-scalar leaves have the batch as leading axis; scalar
  leaves such as a cache index are shared by all rows). `context` is an optional read-only pytree
  with the same leading axis: it is repeated across beams once and never reordered, because all
  beams of one input share it. Large per-input data (the T5 adapter's cross-attention keys and
  values) is better closed over by `tokens_to_logits` at [batch, ...] and broadcast over each
  input's rows (row = b * copies + k, copies = N // batch), which costs no copy per beam.
* The first step runs once per input (N = batch): its top `num_decodes` distinct tokens seed the
  beams (t5x's expansion from the single start token, without paying for `num_decodes` identical
  rows). The cache and context are then repeated to N = batch * num_decodes, row = b * beams + k.
* Scores are the model's own log-probabilities (log-softmax over the whole vocabulary, not
  renormalised over the allowed tokens), so a beam's score equals the log-prob a teacher-forced
  forward pass gives its tokens. Optionally (`score_eos`) one more step adds log P(EOS | ID).
* The valid-ID constraint is a dense per-level transition table (`SemanticIdTrie`); the state of a
  beam is its prefix index, and after the last level it is the item's catalogue index. The state
  is tracked even without the constraint (it goes to -1 once a beam leaves the catalogue), so
  callers can count invalid IDs and map beams to items in either mode.
* Inputs with fewer valid continuations than beams get "dead" beams: score -inf, tokens 0 (pad),
  item -1, always ranked after the live ones. Live beams are distinct by construction.

All functions are traceable: call them inside `jax.jit` (the trie is a pytree, pass it as an
argument so its tables are not baked into the program as constants).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np

from tiger_jax import vocab

Array = jax.Array
PyTree = Any
NEG_INF = float('-inf')


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees at one step.

  cur_index: scalar int32, decoder position of `cur_token` (0 = the start token).
  cur_token: [N, 1] int32 token fed at this position.
  cache: the caller's cache pytree (leading axis N on non-scalar leaves).
  context: the caller's read-only per-row pytree (leading axis N), or None.
  """
  cur_index: Array
  cur_token: Array
  cache: PyTree
  context: PyTree


@flax.struct.dataclass
class DecodeOutput:
  """Ranked decodes per input (best first).

  tokens: [batch, num_decodes, num_levels] int32 token ids (0 for dead beams).
  scores: [batch, num_decodes] float32 summed log-probs (-inf for dead beams).
  items: [batch, num_decodes] int32 catalogue index, -1 for an ID outside the catalogue or a dead
    beam; None when no trie was given.
  """
  tokens: Array
  scores: Array
  items: Optional[Array]

  @property
  def live(self) -> Array:
    """Beams that exist (finite score); invalid IDs are `live & (items < 0)`."""
    return jnp.isfinite(self.scores)


TokensToLogits = Callable[[DecodingState], Tuple[Array, PyTree]]


# ----------------------------------------------------------------------------- the constraint


@flax.struct.dataclass
class SemanticIdTrie:
  """Dense per-level transition tables of the catalogue's Semantic IDs.

  Level l's states are the distinct length-l prefixes of the catalogue's IDs (level 0 has the
  single root state 0), numbered in lexicographic order. `next_state` stacks the levels' tables:
  row `level_offsets[l] + s` holds, for each code c, the index of prefix s + (c,) among the
  length-(l+1) prefixes, or -1 if no item starts with it; at the last level it holds the item's
  catalogue index. One flat table (instead of one per level) lets a `lax` loop index any level.

  Level l has room for min(codebook_size ** l, num_items) states, the most that any IDs of
  `num_items` items can have, and unused rows hold -1. So the table's shape and `level_offsets`
  depend on the catalogue's size alone: every set of Semantic IDs for one catalogue (another
  RQ-VAE seed, LSH or random IDs) gives the same compiled decoder, which a persistent compilation
  cache then serves without compiling. Nothing that depends on the IDs is static pytree data (which
  jit and the traced-program cache key on): `num_states`, the states the IDs use, is read off the table.

  Memory is 4 * codebook_size bytes per row (about 25 MB for 12k items): dense rows make each
  decoding step one gather instead of a search.
  """
  next_state: Union[np.ndarray, Array]  # [sum of the levels' room, codebook_size] int32
  level_offsets: Tuple[int, ...] = flax.struct.field(pytree_node=False)
  codebook_size: int = flax.struct.field(pytree_node=False)
  num_items: int = flax.struct.field(pytree_node=False)

  @classmethod
  def from_codes(cls, codes: np.ndarray, codebook_size: int = 256) -> 'SemanticIdTrie':
    """Builds the tables from `codes` [num_items, num_levels] (row i = item i's ID), in numpy."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] < 1:
      raise ValueError(f'SemanticIdTrie.from_codes: codes must be [num_items, num_levels], got '
                       f'shape {codes.shape}')
    if not np.issubdtype(codes.dtype, np.integer):
      raise ValueError(f'SemanticIdTrie.from_codes: codes must be integers, got {codes.dtype}')
    num_items, num_levels = codes.shape
    if num_items and (codes.min() < 0 or codes.max() >= codebook_size):
      raise ValueError(f'SemanticIdTrie.from_codes: codes must lie in [0, {codebook_size}), got '
                       f'[{codes.min()}, {codes.max()}]')
    codes = codes.astype(np.int64)
    # prefix_ids[l][i] = index of item i's length-l prefix among the distinct length-l prefixes.
    # Prefixes are keyed by their codes read as a base-`codebook_size` number (same order as
    # lexicographic); object arithmetic would be needed beyond 2**63, i.e. > 7 levels of 256.
    if codebook_size ** num_levels >= 2 ** 63:
      raise ValueError(f'SemanticIdTrie.from_codes: {num_levels} levels of {codebook_size} codes '
                       'overflow the int64 prefix keys')
    prefix_ids = [np.zeros(num_items, np.int64)]
    key = np.zeros(num_items, np.int64)
    for level in range(1, num_levels):
      key = key * codebook_size + codes[:, level - 1]
      _, inverse = np.unique(key, return_inverse=True)
      prefix_ids.append(inverse.reshape(-1))
    full_key = key * codebook_size + codes[:, num_levels - 1]
    uniq_full, counts = np.unique(full_key, return_counts=True)
    if len(uniq_full) != num_items:
      dup = int(uniq_full[np.argmax(counts > 1)])
      rows = np.flatnonzero(full_key == dup)[:5].tolist()
      raise ValueError(f'SemanticIdTrie.from_codes: Semantic IDs are not unique '
                       f'({num_items - len(uniq_full)} duplicates; e.g. rows {rows} share '
                       f'{codes[rows[0]].tolist()})')
    capacity = [min(codebook_size ** level, max(num_items, 1)) for level in range(num_levels)]
    offsets = np.concatenate([[0], np.cumsum(capacity)])
    table = np.full((int(offsets[-1]), codebook_size), -1, np.int32)
    for level in range(num_levels):
      rows = offsets[level] + prefix_ids[level]
      if level + 1 < num_levels:
        target = prefix_ids[level + 1]
      else:
        target = np.arange(num_items)
      table[rows, codes[:, level]] = target
    return cls(next_state=table, level_offsets=tuple(int(x) for x in offsets[:-1]),
               codebook_size=int(codebook_size),
               num_items=int(num_items))

  @property
  def num_levels(self) -> int:
    return len(self.level_offsets)

  @property
  def num_states(self) -> Tuple[int, ...]:
    """Distinct prefixes the IDs use per level (the root counts one): the leading rows of each level's room
    that lead anywhere, since states are numbered from 0 and every prefix of an item has a child."""
    table = np.asarray(self.next_state)
    bounds = list(self.level_offsets) + [table.shape[0]]
    used = [int(np.any(table[a:b] >= 0, axis=1).sum()) for a, b in zip(bounds[:-1], bounds[1:])]
    return (1, *used[1:])

  def level_table(self, level: int):
    """`next_state[level]` of the design: [num_prefixes_level, codebook_size]."""
    start = self.level_offsets[level]
    return self.next_state[start:start + self.num_states[level]]

  def to_device(self) -> 'SemanticIdTrie':
    """The same trie with its table as a device array (pass that to jitted decoders)."""
    return self.replace(next_state=jnp.asarray(self.next_state, jnp.int32))

  def step(self, states: Array, level, codes: Optional[Array] = None) -> Array:
    """Next states of `states` [...] at `level` (may be traced): [..., codebook_size], or [...]
    for the given `codes` [...]. A state of -1 (outside the catalogue) stays -1."""
    xp = np if isinstance(self.next_state, np.ndarray) and isinstance(states, np.ndarray) else jnp
    table = self.next_state if xp is np else jnp.asarray(self.next_state)
    offsets = xp.asarray(self.level_offsets, dtype=np.int32)
    rows = offsets[level] + xp.maximum(states, 0)
    if codes is None:
      nxt = table[rows]
      return xp.where((states >= 0)[..., None], nxt, -1)
    ok = (states >= 0) & (codes >= 0) & (codes < self.codebook_size)
    nxt = table[rows, xp.clip(codes, 0, self.codebook_size - 1)]
    return xp.where(ok, nxt, -1)

  def lookup(self, codes) -> Union[np.ndarray, Array]:
    """Catalogue index of each ID in `codes` [..., num_levels], or -1 if it is no item's ID.

    Vectorised; numpy in, numpy out (host tables), otherwise jnp (usable inside jit).
    """
    is_np = isinstance(codes, (np.ndarray, list, tuple)) and isinstance(self.next_state,
                                                                         np.ndarray)
    xp = np if is_np else jnp
    codes = xp.asarray(codes)
    if codes.shape[-1] != self.num_levels:
      raise ValueError(f'SemanticIdTrie.lookup: IDs have {codes.shape[-1]} levels, the trie '
                       f'{self.num_levels}')
    states = xp.zeros(codes.shape[:-1], np.int32)
    for level in range(self.num_levels):
      states = self.step(states, level, codes[..., level].astype(np.int32))
    return states


# ----------------------------------------------------------------------------- shared pieces


def _check_common(max_decode_len: int, num_decodes: int, trie: Optional[SemanticIdTrie],
                  constrain: bool, codebook_size: int) -> None:
  if num_decodes < 1:
    raise ValueError(f'num_decodes must be >= 1, got {num_decodes}')
  if max_decode_len < 1:
    raise ValueError(f'max_decode_len must be >= 1, got {max_decode_len}')
  if constrain and trie is None:
    raise ValueError('constrain=True needs a SemanticIdTrie (trie=...)')
  if trie is not None:
    if trie.num_levels != max_decode_len:
      raise ValueError(f'the trie has {trie.num_levels} levels but max_decode_len is '
                       f'{max_decode_len}')
    if trie.codebook_size != codebook_size:
      raise ValueError(f'the trie has codebook_size {trie.codebook_size}, decoding uses '
                       f'{codebook_size}')


def _level_log_probs(logits: Array, level, codeword_offset: int, codebook_size: int) -> Array:
  """log-softmax over the whole vocabulary, read at `level`'s codeword tokens: [N, codebook]."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  start = codeword_offset + codebook_size * level
  return jax.lax.dynamic_slice_in_dim(logits, start, codebook_size, axis=-1) - lse


def _allowed(log_probs: Array, states: Optional[Array], level, trie: Optional[SemanticIdTrie],
             constrain: bool) -> Tuple[Array, Optional[Array]]:
  """Masks extensions outside the catalogue (if constraining); returns next states per code."""
  if trie is None:
    return log_probs, None
  nxt = trie.step(states, level)
  if constrain:
    log_probs = jnp.where(nxt >= 0, log_probs, NEG_INF)
  return log_probs, nxt


def _expand(tree: PyTree, copies: int) -> PyTree:
  """Repeats each row `copies` times (row b -> rows b*copies .. b*copies+copies-1)."""
  def rep(x):
    x = jnp.asarray(x)
    return x if x.ndim == 0 else jnp.repeat(x, copies, axis=0)
  return jax.tree_util.tree_map(rep, tree)


def _gather_rows(tree: PyTree, rows: Array) -> PyTree:
  def take(x):
    return x if jnp.ndim(x) == 0 else jnp.take(x, rows, axis=0)
  return jax.tree_util.tree_map(take, tree)


def _start_tokens(inputs: Array) -> Array:
  inputs = jnp.asarray(inputs)
  if inputs.ndim == 0:
    raise ValueError('inputs must have a leading batch axis')
  return inputs.reshape(inputs.shape[0], -1)[:, :1].astype(jnp.int32)


def _codes_to_tokens(codes: Array, level, codeword_offset: int, codebook_size: int) -> Array:
  return (codeword_offset + codebook_size * level + codes).astype(jnp.int32)


def _eos_log_probs(tokens: Array, cache: PyTree, context: PyTree,
                   tokens_to_logits: TokensToLogits, eos_id: int) -> Array:
  """log P(EOS | the whole ID) for rows [N, L] of tokens (one more decoder step)."""
  length = tokens.shape[-1]
  state = DecodingState(cur_index=jnp.asarray(length, jnp.int32), cur_token=tokens[:, -1:],
                        cache=cache, context=context)
  logits, _ = tokens_to_logits(state)
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[:, eos_id]


def _rank(tokens: Array, scores: Array, items: Optional[Array]):
  """Sorts decodes of each input by score, best first; dead (-inf) last, stable otherwise."""
  order = jnp.argsort(-scores, axis=-1, stable=True)
  tokens = jnp.take_along_axis(tokens, order[..., None], axis=1)
  scores = jnp.take_along_axis(scores, order, axis=1)
  if items is not None:
    items = jnp.take_along_axis(items, order, axis=1)
  return tokens, scores, items


def _finish(tokens: Array, scores: Array, items: Optional[Array]) -> DecodeOutput:
  """Blanks dead beams so they cannot be mistaken for real IDs."""
  live = jnp.isfinite(scores)
  tokens = jnp.where(live[..., None], tokens, vocab.PAD_ID).astype(jnp.int32)
  if items is not None:
    items = jnp.where(live, items, -1).astype(jnp.int32)
  return DecodeOutput(tokens=tokens, scores=scores.astype(jnp.float32), items=items)


# ----------------------------------------------------------------------------- beam search


def beam_search(inputs: Array,
                cache: PyTree,
                tokens_to_logits: TokensToLogits,
                eos_id: int = vocab.EOS_ID,
                num_decodes: int = 20,
                alpha: float = 0.0,
                max_decode_len: int = 4,
                trie: Optional[SemanticIdTrie] = None,
                constrain: bool = False,
                context: PyTree = None,
                codeword_offset: int = vocab.DEFAULT_LAYOUT.codeword_offset,
                codebook_size: int = vocab.DEFAULT_LAYOUT.codebook_size,
                score_eos: bool = False) -> DecodeOutput:
  """Top-`num_decodes` Semantic IDs per input by total log-prob, exactly `max_decode_len` tokens.

  Args:
    inputs: [batch, ...] decoder start tokens; column 0 is fed first (TIGER's is 0, as in T5).
    cache: initial cache for `batch` rows (it is repeated across beams after the first step).
    tokens_to_logits: one decoder step, see `DecodingState`.
    eos_id: only used with `score_eos`.
    num_decodes: beams kept (and returned) per input.
    alpha: t5x's brevity penalty exponent; IDs have one length, so it only rescales the returned
      scores by ((5 + max_decode_len) / 6) ** -alpha and never changes the ranking.
    max_decode_len: number of ID levels.
    trie: the catalogue; with it, `items` maps beams to catalogue indices.
    constrain: only extend prefixes of catalogue IDs (needs `trie`).
    context: per-input read-only pytree passed through to `tokens_to_logits`.
    score_eos: add log P(EOS | ID) to each beam's score (needs a cache of max_decode_len + 1
      positions) and rerank; the score then equals the full target sequence's log-prob.
  Returns:
    DecodeOutput with tokens [batch, num_decodes, max_decode_len], scores, items.
  """
  _check_common(max_decode_len, num_decodes, trie, constrain, codebook_size)
  start = _start_tokens(inputs)
  batch, beams, size = start.shape[0], num_decodes, codebook_size

  # Step 0: one row per input; its best tokens seed distinct beams.
  logits, cache = tokens_to_logits(DecodingState(cur_index=jnp.asarray(0, jnp.int32),
                                                 cur_token=start, cache=cache, context=context))
  log_probs = _level_log_probs(logits, 0, codeword_offset, size)
  root = jnp.zeros((batch,), jnp.int32)
  log_probs, nxt = _allowed(log_probs, root, 0, trie, constrain)
  if size < beams:  # Fewer first tokens than beams: the extra beams are born dead.
    log_probs = jnp.pad(log_probs, ((0, 0), (0, beams - size)), constant_values=NEG_INF)
    if nxt is not None:
      nxt = jnp.pad(nxt, ((0, 0), (0, beams - size)), constant_values=-1)
  scores, codes = jax.lax.top_k(log_probs, beams)
  states = (jnp.take_along_axis(nxt, codes, axis=1) if nxt is not None
            else jnp.zeros((batch, beams), jnp.int32))
  codes = jnp.minimum(codes, size - 1)
  tokens = jnp.zeros((batch, beams, max_decode_len), jnp.int32)
  tokens = tokens.at[:, :, 0].set(_codes_to_tokens(codes, 0, codeword_offset, size))
  cache = _expand(cache, beams)
  context = _expand(context, beams)
  row_base = (jnp.arange(batch, dtype=jnp.int32) * beams)[:, None]

  def step(level, carry):
    tokens, scores, states, cache = carry
    cur = jax.lax.dynamic_index_in_dim(tokens, level - 1, axis=2, keepdims=False)
    logits, cache = tokens_to_logits(DecodingState(
        cur_index=jnp.asarray(level, jnp.int32), cur_token=cur.reshape(batch * beams, 1),
        cache=cache, context=context))
    log_probs = _level_log_probs(logits, level, codeword_offset, size)
    log_probs = log_probs.reshape(batch, beams, size)
    log_probs, nxt = _allowed(log_probs, states, level, trie, constrain)
    candidates = (scores[:, :, None] + log_probs).reshape(batch, beams * size)
    scores, flat = jax.lax.top_k(candidates, beams)
    parent, code = flat // size, flat % size
    tokens = jnp.take_along_axis(tokens, parent[:, :, None], axis=1)
    tokens = jax.lax.dynamic_update_index_in_dim(
        tokens, _codes_to_tokens(code, level, codeword_offset, size), level, axis=2)
    if nxt is not None:
      states = jnp.take_along_axis(nxt.reshape(batch, beams * size), flat, axis=1)
    cache = _gather_rows(cache, (row_base + parent).reshape(-1))
    return tokens, scores, states, cache

  # Unrolled: IDs have a handful of levels, and straight-line steps let XLA specialise each one
  # and drop the last step's cache reordering when nothing reads it (~7% faster on CPU).
  tokens, scores, states, cache = jax.lax.fori_loop(1, max_decode_len, step,
                                                    (tokens, scores, states, cache), unroll=True)
  items = states if trie is not None else None
  if score_eos:
    eos = _eos_log_probs(tokens.reshape(batch * beams, -1), cache, context, tokens_to_logits,
                         eos_id)
    scores = scores + eos.reshape(batch, beams)
    tokens, scores, items = _rank(tokens, scores, items)
  if alpha:
    scores = scores / ((5.0 + max_decode_len) / 6.0) ** alpha
  return _finish(tokens, scores, items)


# ----------------------------------------------------------------------------- sampling


def temperature_sample(inputs: Array,
                       cache: PyTree,
                       tokens_to_logits: TokensToLogits,
                       rng: Array,
                       eos_id: int = vocab.EOS_ID,
                       num_decodes: int = 20,
                       temperature: Union[float, Array] = 1.0,
                       max_decode_len: int = 4,
                       sample_levels: Optional[Sequence[int]] = None,
                       trie: Optional[SemanticIdTrie] = None,
                       constrain: bool = False,
                       deduplicate: bool = False,
                       context: PyTree = None,
                       codeword_offset: int = vocab.DEFAULT_LAYOUT.codeword_offset,
                       codebook_size: int = vocab.DEFAULT_LAYOUT.codebook_size,
                       score_eos: bool = False) -> DecodeOutput:
  """`num_decodes` independent Semantic IDs per input, drawn level by level.

  At a level in `sample_levels` (default: all) the code is drawn from the model's distribution
  restricted to the level's allowed codewords (and, with `constrain`, to catalogue prefixes) at
  `temperature`; at other levels the most likely allowed code is taken (greedy), e.g.
  `sample_levels=(0,)` diversifies only the first code. A Python `temperature` of 0 means greedy.

  Scores are the model's untempered log-probs of the drawn tokens (as in `beam_search`), and the
  decodes of each input come back sorted by score. With `deduplicate`, a decode equal to a
  better-scored one of the same input becomes dead (score -inf, tokens 0, item -1) and moves to
  the end, so each input gets its distinct IDs first; without it, repeats are kept (their
  frequencies are the sampling distribution). Other arguments are as in `beam_search`.
  """
  _check_common(max_decode_len, num_decodes, trie, constrain, codebook_size)
  if sample_levels is None:
    sample_levels = tuple(range(max_decode_len))
  sample_levels = tuple(int(x) for x in sample_levels)
  if any(not 0 <= x < max_decode_len for x in sample_levels):
    raise ValueError(f'sample_levels {sample_levels} outside [0, {max_decode_len})')
  greedy_only = isinstance(temperature, (int, float)) and temperature == 0
  if isinstance(temperature, (int, float)) and temperature < 0:
    raise ValueError(f'temperature must be >= 0, got {temperature}')
  start = _start_tokens(inputs)
  batch, samples, size = start.shape[0], num_decodes, codebook_size

  def choose(log_probs, level, key, shape):
    """Codes [*shape] from allowed log-probs [*shape, size] (shape may add a sample axis)."""
    greedy = jnp.argmax(jnp.broadcast_to(log_probs, shape + (size,)), axis=-1)
    if greedy_only or not sample_levels:
      return greedy
    gumbel = jax.random.gumbel(key, shape + (size,), jnp.float32)
    drawn = jnp.argmax(log_probs / temperature + gumbel, axis=-1)
    do_sample = jnp.any(jnp.asarray(level) == jnp.asarray(sample_levels))
    return jnp.where(do_sample, drawn, greedy)

  # Step 0 once per input; its distribution is shared by all samples of that input.
  logits, cache = tokens_to_logits(DecodingState(cur_index=jnp.asarray(0, jnp.int32),
                                                 cur_token=start, cache=cache, context=context))
  log_probs = _level_log_probs(logits, 0, codeword_offset, size)
  root = jnp.zeros((batch,), jnp.int32)
  log_probs, nxt = _allowed(log_probs, root, 0, trie, constrain)
  codes = choose(log_probs[:, None, :], 0, jax.random.fold_in(rng, 0), (batch, samples))
  scores = jnp.take_along_axis(log_probs, codes, axis=1)
  states = (jnp.take_along_axis(nxt, codes, axis=1) if nxt is not None
            else jnp.zeros((batch, samples), jnp.int32))
  tokens = jnp.zeros((batch * samples, max_decode_len), jnp.int32)
  tokens = tokens.at[:, 0].set(_codes_to_tokens(codes, 0, codeword_offset, size).reshape(-1))
  scores, states = scores.reshape(-1), states.reshape(-1)
  cache = _expand(cache, samples)
  context = _expand(context, samples)

  def step(level, carry):
    tokens, scores, states, cache = carry
    cur = jax.lax.dynamic_slice_in_dim(tokens, level - 1, 1, axis=1)
    logits, cache = tokens_to_logits(DecodingState(
        cur_index=jnp.asarray(level, jnp.int32), cur_token=cur, cache=cache, context=context))
    log_probs = _level_log_probs(logits, level, codeword_offset, size)
    log_probs, nxt = _allowed(log_probs, states, level, trie, constrain)
    codes = choose(log_probs, level, jax.random.fold_in(rng, level), (batch * samples,))
    scores = scores + jnp.take_along_axis(log_probs, codes[:, None], axis=1)[:, 0]
    if nxt is not None:
      states = jnp.take_along_axis(nxt, codes[:, None], axis=1)[:, 0]
    tokens = jax.lax.dynamic_update_slice_in_dim(
        tokens, _codes_to_tokens(codes, level, codeword_offset, size)[:, None], level, axis=1)
    return tokens, scores, states, cache

  tokens, scores, states, cache = jax.lax.fori_loop(1, max_decode_len, step,
                                                    (tokens, scores, states, cache), unroll=True)
  if score_eos:
    scores = scores + _eos_log_probs(tokens, cache, context, tokens_to_logits, eos_id)
  tokens = tokens.reshape(batch, samples, max_decode_len)
  scores = scores.reshape(batch, samples)
  items = states.reshape(batch, samples) if trie is not None else None
  tokens, scores, items = _rank(tokens, scores, items)
  if deduplicate:
    same = jnp.all(tokens[:, :, None, :] == tokens[:, None, :, :], axis=-1)  # [B, S, S]
    earlier = jnp.tril(jnp.ones((samples, samples), bool), k=-1)
    repeat = jnp.any(same & earlier[None], axis=-1)
    scores = jnp.where(repeat, NEG_INF, scores)
    tokens, scores, items = _rank(tokens, scores, items)
  return _finish(tokens, scores, items)


# ----------------------------------------------------------------------------- T5 adapter


def prepare_t5_decoding(module, params: PyTree, encoder_input_tokens: Array,
                        cache_length: int) -> Tuple[PyTree, PyTree, TokensToLogits]:
  """(cache, context, tokens_to_logits) for a t5x-style encoder-decoder (`network.Transformer`).

  Encodes once per input and projects the encoding into every decoder layer's cross-attention
  keys and values once per input (`precompute_cross_kv`), and creates the module's zeroed
  self-attention KV cache for `cache_length` decoder positions (the ID length, +1 with
  `score_eos`) with a shape-only pass. Call inside jit; the cache dtype is the module's compute
  dtype.

  The per-input keys/values stay [batch, ...] and are closed over by `tokens_to_logits` rather
  than put in `context`: the decoders would repeat `context` per beam (num_decodes times the
  memory, read again at every step), whereas the network broadcasts them over the rows of each input (N = batch *
  copies, row = b * copies + k, which is how beam search and sampling lay out their rows). So
  `context` is None and `tokens_to_logits` works for any N that is a multiple of the batch.
  """
  encoded = module.apply({'params': params}, encoder_input_tokens, enable_dropout=False,
                         method=module.encode)
  cross_kv = module.apply({'params': params}, encoded, method=module.precompute_cross_kv)
  batch = encoder_input_tokens.shape[0]
  dummy = jnp.ones((batch, cache_length), jnp.int32)

  def decode(cache, tokens):
    variables = {'params': params} if cache is None else {'params': params, 'cache': cache}
    return module.apply(variables, None, encoder_input_tokens, tokens, None,
                        enable_dropout=False, decode=True, max_decode_length=cache_length,
                        cross_kv=cross_kv, method=module.decode, mutable=['cache'])

  # Only the cache's shapes are needed: build zeros from them rather than run the decoder.
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                 jax.eval_shape(lambda: decode(None, dummy)[1]['cache']))

  def tokens_to_logits(state: DecodingState):
    logits, variables = decode(state.cache, state.cur_token)
    return logits[:, -1, :], variables['cache']

  return cache, None, tokens_to_logits
