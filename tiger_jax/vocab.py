"""TIGER's token layout, shared by the SeqIO tasks, the trainer and the decoder.

  id 0                      pad (also the decoder's start token, as in T5)
  id 1                      EOS
  ids 2 .. 2+L*K-1          codeword tokens: level l, code c -> 2 + K*l + c   (L=4 levels, K=256 codes)
  ids 2+L*K .. +U-1         user tokens: a stable hash of the reviewerID into U=2000 buckets
  up to a multiple of 128   unused padding ids (never produced; keeps the embedding matmul aligned)

Token names (for `encode`/`decode` of strings): `<pad>`, `</s>`, `<c{l}_{c}>`, `<u_{b}>`, `<extra_{i}>`.
This module imports no TensorFlow; `seqio_vocabulary()` builds the seqio object on demand.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import re

import numpy as np

PAD_ID = 0
EOS_ID = 1
_NUM_SPECIAL = 2


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """Where each kind of token lives in the vocabulary."""
  num_levels: int = 4
  codebook_size: int = 256
  num_user_buckets: int = 2000
  pad_to_multiple: int = 128

  @property
  def codeword_offset(self) -> int:
    return _NUM_SPECIAL

  @property
  def user_offset(self) -> int:
    return _NUM_SPECIAL + self.num_levels * self.codebook_size

  @property
  def used_size(self) -> int:
    return self.user_offset + self.num_user_buckets

  @property
  def vocab_size(self) -> int:
    m = self.pad_to_multiple
    return -(-self.used_size // m) * m

  def codes_to_tokens(self, codes: np.ndarray) -> np.ndarray:
    """[..., num_levels] codes -> token ids; codes out of range are an error, not a silent wrap."""
    codes = np.asarray(codes)
    if codes.shape[-1] != self.num_levels:
      raise ValueError(f"codes have {codes.shape[-1]} levels; the layout has {self.num_levels}")
    if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
      raise ValueError(f"codes must lie in [0, {self.codebook_size}); got [{codes.min()}, {codes.max()}]")
    levels = np.arange(self.num_levels)
    return (self.codeword_offset + self.codebook_size * levels + codes).astype(np.int32)

  def tokens_to_codes(self, tokens: np.ndarray) -> np.ndarray:
    """Inverse of codes_to_tokens; a token at the wrong level or outside the codewords gives -1."""
    tokens = np.asarray(tokens)
    levels = np.arange(tokens.shape[-1]) % self.num_levels
    codes = tokens - self.codeword_offset - self.codebook_size * levels
    valid = (codes >= 0) & (codes < self.codebook_size)
    return np.where(valid, codes, -1).astype(np.int32)

  def user_token(self, reviewer_id: str) -> int:
    return self.user_offset + user_bucket(reviewer_id, self.num_user_buckets)

  def token_name(self, token: int) -> str:
    if token == PAD_ID:
      return "<pad>"
    if token == EOS_ID:
      return "</s>"
    if token < self.user_offset:
      level, code = divmod(token - self.codeword_offset, self.codebook_size)
      return f"<c{level}_{code}>"
    if token < self.used_size:
      return f"<u_{token - self.user_offset}>"
    return f"<extra_{token - self.used_size}>"


def user_bucket(reviewer_id: str, num_buckets: int) -> int:
  """Stable across processes and machines (Python's own `hash` is salted per process)."""
  digest = hashlib.sha256(reviewer_id.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "little") % num_buckets


DEFAULT_LAYOUT = TokenLayout()
_TOKEN_RE = re.compile(r"<[^<>\s]+>")


def encode_names(layout: TokenLayout, text: str) -> list[int]:
  """'<u_3> <c0_12> ...' -> ids; an unknown name is an error naming it."""
  names = _name_table(layout)
  ids = []
  for name in _TOKEN_RE.findall(text):
    if name not in names:
      raise ValueError(f"unknown token {name!r} in {text[:80]!r}")
    ids.append(names[name])
  return ids


@functools.lru_cache(maxsize=8)
def _name_table(layout: TokenLayout) -> dict[str, int]:
  return {layout.token_name(i): i for i in range(layout.vocab_size)}


def seqio_vocabulary(layout: TokenLayout = DEFAULT_LAYOUT):
  """The seqio.Vocabulary for `layout` (imports seqio/TensorFlow, so only the data stage calls it)."""
  return _seqio_vocabulary_class()(layout)


@functools.lru_cache(maxsize=1)
def _seqio_vocabulary_class():
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class TigerVocabulary(seqio.Vocabulary):
    """Token-name vocabulary; the tasks' features are already ids, so strings are only for inspection."""

    def __init__(self, layout: TokenLayout):
      self.layout = layout
      self._names = [layout.token_name(i) for i in range(layout.vocab_size)]
      super().__init__(extra_ids=0)

    @property
    def eos_id(self):
      return EOS_ID

    @property
    def unk_id(self):
      return None

    @property
    def _base_vocab_size(self):
      return self.layout.vocab_size

    def _encode(self, s):
      return encode_names(self.layout, s)

    def _decode(self, ids):
      return " ".join(self._names[int(i)] for i in ids if int(i) != PAD_ID)

    @functools.cached_property
    def _tf_tables(self):
      names = tf.constant(self._names)
      ids = tf.range(len(self._names), dtype=tf.int32)
      lookup = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(names, ids), default_value=-1)
      return names, lookup

    def _encode_tf(self, s):
      _, lookup = self._tf_tables
      names = tf.strings.regex_replace(s, r">\s*<", "> <")
      return lookup.lookup(tf.strings.split(tf.strings.strip(names)))

    def _decode_tf(self, ids):
      names, _ = self._tf_tables
      ids = tf.boolean_mask(ids, tf.not_equal(ids, PAD_ID)) if ids.shape.rank == 1 else ids
      return tf.strings.reduce_join(tf.gather(names, ids), axis=-1, separator=" ")

    def __eq__(self, other):
      return isinstance(other, TigerVocabulary) and self.layout == other.layout

    def __str__(self):
      return f"TigerVocabulary({self.layout})"

  return TigerVocabulary
