"""Item sentences and the cached sentence-transformers embeddings (the packaged offline MiniLM)."""
import json
import os

import numpy as np
import pytest

from tiger_jax import embed
from tiger_jax.data.types import Item, ItemCatalog


def test_sentence_template_skips_absent_fields():
  full = Item("A", title="Nail Polish Red.", brand="OPI", categories=(("Beauty", "Nails"), ("Gifts",)),
              price=7.5)
  assert embed.item_sentence(full) == (
      "Title: Nail Polish Red. Brand: OPI. Categories: Beauty > Nails; Gifts. Price: $7.50.")
  assert embed.item_sentence(Item("B", title="Soap")) == "Title: Soap."
  assert embed.item_sentence(Item("C", categories=(("Beauty",),))) == "Categories: Beauty."
  assert embed.item_sentence(Item("D")) == ""


def _catalog():
  return ItemCatalog([
      Item("a", title="Red nail polish", categories=(("Beauty", "Makeup", "Nails"),)),
      Item("b", title="Crimson nail lacquer", categories=(("Beauty", "Makeup", "Nails"),)),
      Item("c", title="Anti-dandruff shampoo for men", categories=(("Beauty", "Hair Care", "Shampoos"),)),
  ])


@pytest.mark.slow
def test_offline_minilm_embeddings_are_normalised_meaningful_and_cached(tmp_path, monkeypatch):
  vectors = embed.embed_items(_catalog(), str(tmp_path))
  assert vectors.shape == (3, 384) and vectors.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
  sims = vectors @ vectors.T
  assert sims[0, 1] > sims[0, 2] + 0.1  # two nail polishes are closer than polish and shampoo
  with open(tmp_path / "embeddings.json") as f:
    info = json.load(f)
  assert info["model_name"] == embed.OFFLINE_MINILM and info["asins"] == ["a", "b", "c"]

  def fail(*args, **kwargs):
    raise AssertionError("the cache should have been used")
  monkeypatch.setattr(embed, "encode_sentences", fail)
  np.testing.assert_array_equal(embed.embed_items(_catalog(), str(tmp_path)), vectors)
  loaded, asins, _ = embed.load_embeddings(str(tmp_path))
  np.testing.assert_array_equal(loaded, vectors)
  assert asins == ["a", "b", "c"]

  changed = ItemCatalog(_catalog().items[:2] + [Item("c", title="Shampoo")])
  with pytest.raises(AssertionError, match="cache should have been used"):
    embed.embed_items(changed, str(tmp_path))  # a changed sentence invalidates the cache


def test_empty_item_text_and_missing_cache_are_errors(tmp_path):
  with pytest.raises(ValueError, match="1 items have no text"):
    embed.encode_sentences(["x", " "], embed.OFFLINE_MINILM)
  with pytest.raises(FileNotFoundError, match="run the embed stage"):
    embed.load_embeddings(str(tmp_path))


def test_paper_model_is_passed_through_and_offline_alias_resolves():
  assert embed.resolve_model_path(embed.PAPER_MODEL) == "sentence-transformers/sentence-t5-base"
  assert os.path.isdir(embed.resolve_model_path(embed.OFFLINE_MINILM))
