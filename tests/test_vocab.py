"""Token layout: ranges, round trips, a user hash that is stable across processes."""
import subprocess
import sys

import numpy as np
import pytest

from tiger_jax import vocab


def test_layout_sizes():
  layout = vocab.DEFAULT_LAYOUT
  assert (layout.codeword_offset, layout.user_offset, layout.used_size) == (2, 1026, 3026)
  assert layout.vocab_size == 3072 and layout.vocab_size % 128 == 0


def test_codes_tokens_round_trip_and_levels_do_not_overlap():
  layout = vocab.DEFAULT_LAYOUT
  codes = np.array([[0, 0, 0, 0], [255, 255, 255, 255], [7, 8, 9, 1]])
  tokens = layout.codes_to_tokens(codes)
  assert tokens[0].tolist() == [2, 258, 514, 770]
  assert tokens[1].tolist() == [257, 513, 769, 1025]
  np.testing.assert_array_equal(layout.tokens_to_codes(tokens), codes)
  # A level-1 token in a level-0 slot, EOS, or a user token is not a valid code.
  assert layout.tokens_to_codes(np.array([258, 1, 1100, 770])).tolist() == [-1, -1, -1, 0]
  with pytest.raises(ValueError, match=r"\[0, 256\)"):
    layout.codes_to_tokens(np.array([[0, 0, 256, 0]]))


def test_user_hash_is_stable_across_processes():
  code = "from tiger_jax.vocab import user_bucket; print(user_bucket('A1YJEY40YUW4SE', 2000))"
  outs = {subprocess.run([sys.executable, "-c", code], env={"PYTHONHASHSEED": seed, "PATH": ""},
                         capture_output=True, text=True, check=True, cwd=".").stdout for seed in ("1", "2")}
  assert outs == {f"{vocab.user_bucket('A1YJEY40YUW4SE', 2000)}\n"}
  buckets = [vocab.user_bucket(f"user{i}", 2000) for i in range(20000)]
  assert 0 <= min(buckets) and max(buckets) < 2000
  assert len(set(buckets)) > 1900  # spread over (nearly) all buckets


def test_names_round_trip():
  layout = vocab.DEFAULT_LAYOUT
  ids = vocab.encode_names(layout, "<u_5><c0_3> <c3_0></s>")
  assert ids == [1031, 5, 770, 1]
  assert [layout.token_name(i) for i in ids] == ["<u_5>", "<c0_3>", "<c3_0>", "</s>"]
  with pytest.raises(ValueError, match="<c9_1>"):
    vocab.encode_names(layout, "<c9_1>")


def test_seqio_vocabulary_encodes_and_decodes():
  v = vocab.seqio_vocabulary()
  assert v.vocab_size == 3072 and v.eos_id == 1 and v.pad_id == 0
  assert v.encode("<u_5> <c1_2>") == [1031, 260]
  assert v.decode([1031, 260, 1]) == "<u_5> <c1_2> </s>"
  assert v.encode_tf("<u_5><c1_2>").numpy().tolist() == [1031, 260]
  assert v.decode_tf(np.array([1031, 260], np.int32)).numpy().decode() == "<u_5> <c1_2>"
