"""SeqIO tasks and the numpy task cache, checked token for token."""
import json
import os

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

from tasks import cache_tasks, tiger_tasks  # noqa: E402
from tiger_jax import vocab  # noqa: E402
from tiger_jax import semantic_ids as sid_lib  # noqa: E402
from tiger_jax.data import load_dataset  # noqa: E402

LENGTHS = tiger_tasks.TASK_FEATURE_LENGTHS


def test_builtin_tasks_are_registered():
  for name in ("tiger_beauty", "tiger_sports", "tiger_toys"):
    task = seqio.get_mixture_or_task(name)
    assert set(task.splits) == {"train", "validation", "test"}
    assert task.output_features["targets"].add_eos and not task.output_features["inputs"].add_eos


@pytest.mark.slow
def test_beauty_train_split_yields_131413_examples():
  task = seqio.get_mixture_or_task("tiger_beauty")
  ds = task.get_dataset(sequence_length=LENGTHS, split="train", shuffle=False)
  count = ds.reduce(np.int64(0), lambda n, _: n + 1).numpy()
  assert count == 131413


def _table(tiny_dataset_dir, tmp_path):
  """A hand-made ID table: item i gets codes (i, 2i, 3i, 0)."""
  asins = load_dataset(tiny_dataset_dir).catalog.asins
  codes = np.array([[i, 2 * i, 3 * i, 0] for i in range(len(asins))])
  path = str(tmp_path / "semantic_ids.npz")
  sid_lib.SemanticIds(np.array(asins), codes, "handmade").save(path)
  return path, codes


def _expected_tokens(codes, item):
  return [2 + 256 * level + codes[item][level] for level in range(4)]


def test_cache_equals_feature_converter_and_hand_built_examples(tiny_dataset_dir, tmp_path):
  sid_path, codes = _table(tiny_dataset_dir, tmp_path)
  cache_dir = str(tmp_path / "cache")
  info = cache_tasks.cache_task("tiger_tiny", cache_dir, data_dir=tiny_dataset_dir, semantic_ids_path=sid_path)
  # 5 users: train has sum(len - 3) examples; validation and test one per user.
  assert info["counts"] == {"train": 0 + 1 + 2 + 0 + 22, "validation": 5, "test": 5}

  task = seqio.get_mixture_or_task("tiger_tiny")
  for split in ("train", "validation", "test"):
    cached = np.load(os.path.join(cache_dir, "tiger_tiny", f"{split}.npz"))
    ds = task.get_dataset(sequence_length=LENGTHS, split=split, shuffle=False)
    converted = list(seqio.EncDecFeatureConverter(pack=False)(ds, LENGTHS).as_numpy_iterator())
    assert len(converted) == len(cached["target_item"])
    for i, ex in enumerate(converted):
      for key in cache_tasks.MODEL_FEATURES:
        np.testing.assert_array_equal(cached[key][i], ex[key], err_msg=f"{split}[{i}].{key}")

  # Independent of seqio: user u1's validation example, built by hand.
  layout = vocab.DEFAULT_LAYOUT
  val = np.load(os.path.join(cache_dir, "tiger_tiny", "validation.npz"))
  history = [3, 4]  # u1 = I3 I4 I5 I6: validation target I5
  enc = [layout.user_token("u1")] + sum((_expected_tokens(codes, i) for i in history), [])
  assert val["encoder_input_tokens"][1].tolist() == enc + [0] * (81 - len(enc))
  target = _expected_tokens(codes, 5)
  assert val["decoder_target_tokens"][1].tolist() == target + [1]
  assert val["decoder_input_tokens"][1].tolist() == [0] + target
  assert val["decoder_loss_weights"][1].tolist() == [1] * 5
  assert val["user_index"].tolist() == [0, 1, 2, 3, 4] and val["target_item"][1] == 5

  # u4 has 25 items: its test history is the 20 items before the last, i.e. 81 tokens, none dropped.
  test = np.load(os.path.join(cache_dir, "tiger_tiny", "test.npz"))
  assert (test["encoder_input_tokens"][4] > 0).sum() == 81

  items = np.load(os.path.join(cache_dir, "tiger_tiny", "items.npz"))
  assert items["item_tokens"][5].tolist() == target
  assert items["users"].tolist() == ["u0", "u1", "u2", "u3", "u4"]


def test_cache_is_skipped_when_current_and_rebuilt_when_ids_change(tiny_dataset_dir, tmp_path):
  sid_path, _ = _table(tiny_dataset_dir, tmp_path)
  cache_dir = str(tmp_path / "cache")
  first = cache_tasks.cache_task("tiger_tiny", cache_dir, data_dir=tiny_dataset_dir, semantic_ids_path=sid_path)
  second = cache_tasks.cache_task("tiger_tiny", cache_dir, data_dir=tiny_dataset_dir, semantic_ids_path=sid_path)
  assert second["created"] == first["created"] and second["seconds"] == first["seconds"]
  third = cache_tasks.cache_task("tiger_tiny", cache_dir, data_dir=tiny_dataset_dir)  # random IDs now
  assert third["semantic_ids_hash"] != first["semantic_ids_hash"]
  with open(os.path.join(cache_dir, "tiger_tiny", "info.json")) as f:
    assert json.load(f)["semantic_ids_method"] == "random"


def test_no_user_token_and_id_table_that_misses_items(tiny_dataset_dir, tmp_path):
  sid_path, _ = _table(tiny_dataset_dir, tmp_path)
  cache_dir = str(tmp_path / "cache")
  cache_tasks.cache_task("tiger_tiny", cache_dir, data_dir=tiny_dataset_dir, semantic_ids_path=sid_path,
                         use_user_token=False)
  val = np.load(os.path.join(cache_dir, "tiger_tiny", "validation.npz"))
  assert (val["encoder_input_tokens"][1] > 0).sum() == 8  # two history items, no user token
  partial = sid_lib.SemanticIds(np.array(["I0", "I1"]), np.array([[0, 0, 0, 0], [1, 0, 0, 0]]), "handmade")
  bad = partial.save(str(tmp_path / "partial.npz"))
  with pytest.raises(ValueError, match="no Semantic ID for 6 catalogue items"):
    cache_tasks.cache_task("tiger_tiny", cache_dir, data_dir=tiny_dataset_dir, semantic_ids_path=bad)


def test_numpy_backend_equals_seqio_without_importing_tensorflow(tiny_dataset_dir, tmp_path):
  # The numpy backend runs where TensorFlow and seqio are absent (blocked in the subprocess) and must
  # write the very arrays the seqio backend writes, with and without the user token.
  import subprocess
  import sys
  sid_path, _ = _table(tiny_dataset_dir, tmp_path)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for user_token in (True, False):
    seqio_dir, numpy_dir = str(tmp_path / f"seqio_{user_token}"), str(tmp_path / f"numpy_{user_token}")
    cache_tasks.cache_task("tiger_tiny", seqio_dir, data_dir=tiny_dataset_dir, semantic_ids_path=sid_path,
                           use_user_token=user_token)
    script = ("import sys\n"
              "for m in ('tensorflow', 'seqio', 'tensorflow_datasets'): sys.modules[m] = None\n"
              "from tasks import cache_tasks\n"
              f"info = cache_tasks.cache_task('tiger_tiny', {numpy_dir!r}, data_dir={tiny_dataset_dir!r}, "
              f"semantic_ids_path={sid_path!r}, use_user_token={user_token}, backend='numpy')\n"
              "assert info['backend'] == 'numpy' and info['seqio_version'] is None\n")
    subprocess.run([sys.executable, "-c", script], cwd=repo, check=True,
                   env=dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu"))
    for name in ("train", "validation", "test", "items"):
      a = np.load(os.path.join(seqio_dir, "tiger_tiny", f"{name}.npz"))
      b = np.load(os.path.join(numpy_dir, "tiger_tiny", f"{name}.npz"))
      assert sorted(a.files) == sorted(b.files)
      for key in a.files:
        assert a[key].dtype == b[key].dtype, f"{name}.{key}"
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"user_token={user_token} {name}.{key}")
  with pytest.raises(ValueError, match="backend"):
    cache_tasks.cache_task("tiger_tiny", str(tmp_path / "x"), data_dir=tiny_dataset_dir, backend="pandas")
