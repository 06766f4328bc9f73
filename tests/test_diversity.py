"""Diversity (paper Sec. 4.3, Tables 3-4): categories, Entropy@K by hand, and entropy rising with temperature."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiger_jax import decoding
from tiger_jax import diversity


def test_category_labels_take_the_second_level_of_the_main_root():
  paths = [[["Beauty", "Makeup", "Eyes"]],
           [["Health", "Vitamins"], ["Beauty", "Skin Care"]],  # the Beauty path wins
           [["Beauty"]],
           [],
           [["Health", "Vitamins"]]]
  assert diversity.category_labels(paths) == ["Makeup", "Skin Care", "(none)", "(none)", "Vitamins"]


def test_entropy_at_k_by_hand():
  category = np.array([0, 0, 1, 2, 1])
  ranked = np.array([[0, 1, 2, 3],      # categories 0 0 1 2: p = (1/2, 1/4, 1/4)
                     [0, 0, -1, 1],     # repeats and invalid IDs dropped: items 0, 1 -> one category
                     [-1, -1, -1, -1]])  # no prediction: not counted
  h = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
  assert diversity.entropy_at_k(ranked, category, 4) == pytest.approx((h + 0.0) / 2)
  h3 = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))  # top 3: categories 0 0 1
  assert diversity.entropy_at_k(ranked[:1], category, 3) == pytest.approx(h3)
  assert diversity.mean_distinct(ranked, 4) == pytest.approx((4 + 2 + 0) / 3)
  assert diversity.recall_at_k(ranked, np.array([3, 1, 0]), 2) == pytest.approx(1 / 3)


def test_top_predicted_categories_by_hand():
  names = ["Eyes", "Lips", "Nails"]
  category = np.array([0, 1, 2, 0])
  ranked = np.array([[0, 1, 3], [1, 2, -1], [2, 2, 2]])
  target = np.array([0, 3, 2])  # Eyes, Eyes, Nails
  table = diversity.top_predicted_categories(ranked, target, category, names, k=3, num_targets=2, num_top=2)
  assert table[0]["target_category"] == "Eyes" and table[0]["users"] == 2
  # Eyes users predicted items 0 1 3 | 1 2: Eyes 2/5, Lips 2/5, Nails 1/5; ties keep name order.
  assert [(t["category"], round(t["share"], 3)) for t in table[0]["top"]] == [("Eyes", 0.4), ("Lips", 0.4)]
  assert table[1] == {"target_category": "Nails", "users": 1, "top": [{"category": "Nails", "share": 1.0}]}


def test_entropy_rises_with_temperature_on_a_peaked_model():
  """The real sampler on a toy model whose every level prefers code 0: hotter draws spread over categories."""
  cb, levels, offset, users = 4, 4, 2, 300
  vocab = offset + cb * levels + 2
  pref = jnp.full((vocab,), -4.0).at[offset + jnp.arange(cb * levels)].set(
      jnp.tile(jnp.array([4.0, 1.5, 0.5, 0.0]), levels))

  def tokens_to_logits(state):
    return jnp.broadcast_to(pref, (state.cur_token.shape[0], vocab)), state.cache

  codes = np.array(np.meshgrid(*[np.arange(cb)] * levels, indexing="ij")).reshape(levels, -1).T
  trie = decoding.SemanticIdTrie.from_codes(codes, cb).to_device()
  item_category = codes[:, 0]  # category = first code

  @functools.partial(jax.jit, static_argnums=(1, 2))
  def sample(temperature, num_decodes, sample_levels):  # the temperature is traced: one compile per shape
    return decoding.temperature_sample(jnp.zeros((users, 1), jnp.int32), {"x": jnp.zeros((users,))},
                                       tokens_to_logits, jax.random.PRNGKey(0), num_decodes=num_decodes,
                                       temperature=temperature, sample_levels=sample_levels, trie=trie,
                                       constrain=True, deduplicate=True, codeword_offset=offset,
                                       codebook_size=cb).items

  def decode(temperature, num_decodes, sample_levels):
    return np.asarray(sample(jnp.float32(temperature), num_decodes, sample_levels))

  rows, draws = diversity.temperature_sweep(decode, np.zeros(users, np.int32), item_category, [1.0, 2.0],
                                            ks=(5, 10), recall_k=5,
                                            sample_levels={"all": None, "0": (0,), "1": (1,)})
  by = {(r["sample_levels"], r["temperature"]): r for r in rows}
  for k in (5, 10):
    assert by[("all", 2.0)][f"entropy@{k}"] > by[("all", 1.0)][f"entropy@{k}"] + 0.2
    assert by[("0", 2.0)][f"entropy@{k}"] > by[("0", 1.0)][f"entropy@{k}"] + 0.2
  # Sampling only level 1 leaves the first code (the category here) greedy: no category spread at all.
  assert by[("1", 2.0)]["entropy@10"] == 0.0 < by[("1", 2.0)]["distinct@10"]
  assert draws[("all", 1.0)].shape == (users, 5)
