"""Shared fixtures: small processed-format datasets written by the tests themselves."""
import gzip
import json
import os
import tempfile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Entry points called in-process turn the persistent compilation cache on (tiger_jax/compilation.py): keep the
# test session's programs out of the user's own cache directory.
os.environ.setdefault("TIGER_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="tiger_jax_tests_xla_"))


# The paper's RQ-VAE shrunk to seconds on a CPU, for the end-to-end experiment tests.
TINY_RQVAE_GIN = """\
include 'gin/rqvae/paper.gin'
RQVAEConfig.hidden_dims = (16,)
RQVAEConfig.latent_dim = 4
RQVAEConfig.codebook_size = 32
RQVAEConfig.batch_size = 64
RQVAEConfig.learning_rate = 0.01
RQVAEConfig.num_epochs = 4
RQVAEConfig.epochs_per_dispatch = 4
RQVAEConfig.dead_code_reset_every = 0
RQVAEConfig.kmeans_iters = 5
"""


def write_processed(directory, sequences, items):
  """sequences: {reviewerID: [asin, ...]}; items: [dict with asin, title, ...]."""
  os.makedirs(directory, exist_ok=True)
  with gzip.open(os.path.join(directory, "sequences.txt.gz"), "wt") as f:
    for user, asins in sequences.items():
      f.write(" ".join([user] + list(asins)) + "\n")
  with gzip.open(os.path.join(directory, "items.jsonl.gz"), "wt") as f:
    for item in items:
      f.write(json.dumps(item) + "\n")
  return str(directory)


def write_category_walk_dataset(directory, rng, num_items, num_users, length_cycle, user_digits):
  """Items in 3 categories (item i in category i % 3); a user's next item is mostly i + 3 (same category),
  else random, so that a model has something to learn. Users have 4 .. 3 + length_cycle items."""
  items = [{"asin": f"P{i:02d}", "title": f"product {i}", "categories": [["Beauty", f"Cat{i % 3}"]]}
           for i in range(num_items)]
  sequences = {}
  for u in range(num_users):
    seq = [int(rng.integers(num_items))]
    for _ in range(3 + u % length_cycle):
      seq.append((seq[-1] + 3) % num_items if rng.random() < 0.8 else int(rng.integers(num_items)))
    sequences[f"user{u:0{user_digits}d}"] = [f"P{i:02d}" for i in seq]
  return write_processed(directory, sequences, items), [it["asin"] for it in items]


def write_clustered_embeddings(directory, asins, rng, dim=16):
  """embeddings.{npy,json} as the embed stage writes them: one Gaussian cluster per category (i % 3)."""
  os.makedirs(directory, exist_ok=True)
  centres = rng.standard_normal((3, dim)) * 2
  emb = (centres[np.arange(len(asins)) % 3] + rng.standard_normal((len(asins), dim))).astype(np.float32)
  np.save(os.path.join(directory, "embeddings.npy"), emb)
  with open(os.path.join(directory, "embeddings.json"), "w") as f:
    json.dump({"asins": list(asins)}, f)
  return emb


@pytest.fixture
def tiny_dataset_dir(tmp_path):
  """Five users, eight items; user u4's sequence is longer than the history cap of 20."""
  items = [{"asin": f"I{i}", "title": f"item {i}", "categories": [["Beauty", f"Cat{i % 3}"]]}
           for i in range(8)]
  sequences = {
      "u0": ["I0", "I1", "I2"],
      "u1": ["I3", "I4", "I5", "I6"],
      "u2": ["I7", "I0", "I3", "I5", "I1"],
      "u3": ["I2", "I2", "I4"],
      "u4": [f"I{i % 8}" for i in range(25)],
  }
  return write_processed(tmp_path / "tiny", sequences, items)
