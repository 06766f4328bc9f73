"""Shared fixtures: small processed-format datasets written by the tests themselves."""
import atexit
import gzip
import json
import os
import shutil
import tempfile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Entry points called in-process turn the persistent compilation cache on (tiger_jax/compilation.py): keep the
# test session's programs out of the user's own cache directory, and remove that scratch directory afterwards.
if "TIGER_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["TIGER_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="tiger_jax_tests_xla_")
  atexit.register(shutil.rmtree, os.environ["TIGER_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def jax_compilation_cache(tmp_path):
  """JAX's persistent compilation cache on, in tmp_path, for one test; the process's settings come back after."""
  import jax  # pylint: disable=g-import-not-at-top
  previous = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path))
  try:
    yield tmp_path
  finally:
    jax.config.update("jax_enable_compilation_cache", previous[0])
    jax.config.update("jax_compilation_cache_dir", previous[1])


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


@pytest.fixture(scope="session")
def relative_path_run(tmp_path_factory):
  """A tiny TIGER run made the way run.sh makes one, with paths relative to the folder it ran in:
  `root/data` (processed), `root/work/cache` (numpy-built task cache, random IDs) and `root/work/model`
  (4 steps of a 1+1-layer T5 trained by the CLI from `root`). Returns paths, the gin flags and the env."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import textwrap  # pylint: disable=g-import-not-at-top
  from tasks import cache_tasks  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  root = tmp_path_factory.mktemp("relative_run")
  data_dir, asins = write_category_walk_dataset(root / "data", np.random.default_rng(0), num_items=24,
                                                num_users=40, length_cycle=5, user_digits=2)
  task = "tiger_relativerun"
  cache_tasks.cache_task(task, str(root / "work" / "cache"), data_dir=data_dir, backend="numpy",
                         semantic_ids_path="random")
  (root / "tiny.gin").write_text(textwrap.dedent(f"""\
      from __gin__ import dynamic_registration
      from tiger_jax import network
      include 'gin/runs/train.gin'
      include 'gin/models/tiger_t5.gin'
      MIXTURE_OR_TASK_NAME = '{task}'
      TASK_CACHE_DIR = 'work/cache'
      ACTIVATION_DTYPE = 'float32'
      TRAIN_STEPS = 4
      BATCH_SIZE = 8
      EVAL_BATCH_SIZE = 8
      EVAL_PERIOD = 4
      STEPS_PER_DISPATCH = 4
      network.T5Config:
        emb_dim = 16
        num_heads = 2
        num_encoder_layers = 1
        num_decoder_layers = 1
        head_dim = 8
        mlp_dim = 32
      """))
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join([repo] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  env.pop("TIGER_TASK_CACHE_DIR", None)
  gin_flags = ["--gin_file=tiny.gin", "--gin.MODEL_DIR='work/model'"]
  out = subprocess.run([sys.executable, "-m", "tiger_jax.train", *gin_flags], cwd=root, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  return {"root": str(root), "model_dir": str(root / "work" / "model"), "cache_dir": str(root / "work" / "cache"),
          "task": task, "asins": asins, "gin_flags": gin_flags, "env": env, "repo": repo}


def write_task_cache(root, task, num_users=40, num_items=24, seed=0):
  """A cached TIGER task in the CONTRACTS.md format (numpy only): {train,validation,test,items}.npz, info.json.

  Item t is mostly followed by t + 1, so a model learns something in tens of steps. Semantic IDs follow the
  default token layout (4 levels of 256 codes, the last a collision code), so retrieval and its trie work.
  """
  from tiger_jax import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  layout = vocab_lib.DEFAULT_LAYOUT
  rng = np.random.default_rng(seed)
  codes = np.stack([np.arange(num_items) % 4, np.arange(num_items) // 4, rng.integers(0, 4, num_items),
                    np.zeros(num_items, int)], axis=1)
  item_tokens = layout.codes_to_tokens(codes).astype(np.int32)
  users = [f"user{u:03d}" for u in range(num_users)]
  sequences = []
  for _ in range(num_users):
    seq = [int(rng.integers(num_items))]
    for _ in range(int(rng.integers(3, 9))):
      seq.append((seq[-1] + 1) % num_items if rng.random() < 0.8 else int(rng.integers(num_items)))
    sequences.append(seq)
  task_dir = os.path.join(root, task)
  os.makedirs(task_dir, exist_ok=True)
  counts = {}
  for split in ("train", "validation", "test"):
    rows = []
    for u, seq in enumerate(sequences):
      n = len(seq)
      targets = range(1, n - 2) if split == "train" else [n - 2 if split == "validation" else n - 1]
      rows += [(u, seq[max(0, t - 20):t], seq[t]) for t in targets]
    enc = np.zeros((len(rows), 81), np.int32)
    tgt = np.zeros((len(rows), 5), np.int32)
    for i, (u, history, target) in enumerate(rows):
      x = np.concatenate([[layout.user_token(users[u])], item_tokens[history].reshape(-1)])
      enc[i, :len(x)] = x
      tgt[i, :4] = item_tokens[target]
      tgt[i, 4] = vocab_lib.EOS_ID
    dec_in = np.zeros_like(tgt)
    dec_in[:, 1:] = tgt[:, :-1]
    np.savez(os.path.join(task_dir, f"{split}.npz"), encoder_input_tokens=enc, decoder_input_tokens=dec_in,
             decoder_target_tokens=tgt, decoder_loss_weights=(tgt > 0).astype(np.int32),
             user_index=np.array([r[0] for r in rows], np.int32),
             target_item=np.array([r[2] for r in rows], np.int32))
    counts[split] = len(rows)
  np.savez(os.path.join(task_dir, "items.npz"), asins=np.array([f"P{i:02d}" for i in range(num_items)]),
           item_tokens=item_tokens, titles=np.array([f"product {i}" for i in range(num_items)]),
           users=np.array(users))
  with open(os.path.join(task_dir, "info.json"), "w") as f:
    json.dump({"task": task, "feature_lengths": {"inputs": 81, "targets": 5}, "vocab_size": layout.vocab_size,
               "counts": counts}, f)
  return counts
