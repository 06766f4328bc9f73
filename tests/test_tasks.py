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
def test_beauty_train_split_yields_131413_examples(monkeypatch):
  monkeypatch.setenv("TIGER_SEMANTIC_IDS", "random")  # the count does not depend on the IDs
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
  third = cache_tasks.cache_task("tiger_tiny", cache_dir, data_dir=tiny_dataset_dir, semantic_ids_path="random:3")
  assert third["semantic_ids_hash"] != first["semantic_ids_hash"]
  with open(os.path.join(cache_dir, "tiger_tiny", "info.json")) as f:
    info = json.load(f)
  assert info["semantic_ids_method"] == "random" and info["built_from"]["semantic_ids"] == "random:3"
  assert info["built_from"]["data_dir"] == os.path.abspath(tiny_dataset_dir)


def test_cache_rebuilds_when_the_id_file_changes_in_place_and_says_why(tiny_dataset_dir, tmp_path, caplog):
  # The same path, new IDs (an ID stage rerun with another recipe): the cache must not call itself current.
  sid_path, codes = _table(tiny_dataset_dir, tmp_path)
  cache_dir = str(tmp_path / "cache")
  first = cache_tasks.cache_task("tiger_tiny", cache_dir, data_dir=tiny_dataset_dir, semantic_ids_path=sid_path,
                                 backend="numpy")
  asins = load_dataset(tiny_dataset_dir).catalog.asins
  sid_lib.SemanticIds(np.array(asins), codes[::-1].copy(), "lsh").save(sid_path)
  with caplog.at_level("INFO", logger="tasks.cache_tasks"):
    second = cache_tasks.cache_task("tiger_tiny", cache_dir, data_dir=tiny_dataset_dir,
                                    semantic_ids_path=sid_path, backend="numpy")
  assert second["semantic_ids_hash"] != first["semantic_ids_hash"]
  assert "rebuilding" in caplog.text and "semantic_ids_hash" in caplog.text and "is current" not in caplog.text
  items = np.load(os.path.join(cache_dir, "tiger_tiny", "items.npz"))
  assert items["item_tokens"][0].tolist() == _expected_tokens(codes[::-1], 0)


def test_random_ids_only_when_asked_for_by_name(tiny_dataset_dir, tmp_path, monkeypatch):
  monkeypatch.delenv("TIGER_SEMANTIC_IDS", raising=False)
  cache_dir = str(tmp_path / "cache")
  with pytest.raises(ValueError, match="no Semantic-ID table given.*random"):
    cache_tasks.cache_task("tiger_tiny", cache_dir, data_dir=tiny_dataset_dir, backend="numpy")
  assert not os.path.exists(os.path.join(cache_dir, "tiger_tiny"))
  a = cache_tasks.cache_task("tiger_tiny", cache_dir, data_dir=tiny_dataset_dir, semantic_ids_path="random",
                             backend="numpy")
  b = cache_tasks.cache_task("tiger_tiny", str(tmp_path / "b"), data_dir=tiny_dataset_dir,
                             semantic_ids_path="random:7", backend="numpy")
  assert a["semantic_ids_method"] == b["semantic_ids_method"] == "random"
  assert a["semantic_ids_hash"] != b["semantic_ids_hash"]
  with pytest.raises(ValueError, match="random:SEED"):
    cache_tasks.cache_task("tiger_tiny", cache_dir, data_dir=tiny_dataset_dir, semantic_ids_path="random:x")
  # A registered task reads its table when the dataset is built: without one that is the same error.
  task = tiger_tasks.register_tiger_task("tiger_tiny_noids", data_dir=tiny_dataset_dir)
  with pytest.raises(ValueError, match="no Semantic-ID table given"):
    task.get_dataset(sequence_length=LENGTHS, split="validation", shuffle=False)


def test_cli_without_semantic_ids_is_a_one_line_error_and_registers_unknown_tasks(tiny_dataset_dir, tmp_path):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("TIGER_SEMANTIC_IDS", None)
  cmd = [sys.executable, "-m", "tasks.cache_tasks", "--tasks=tiger_garden", f"--data_dir={tiny_dataset_dir}",
         f"--output_cache_dir={tmp_path / 'cache'}"]
  out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: no Semantic-ID table given") and "--semantic_ids=" in last, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert not os.path.exists(tmp_path / "cache" / "tiger_garden")
  out = subprocess.run(cmd + ["--semantic_ids=random:1"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "tiger_garden: not a registered task; registering it over" in out.stderr
  assert json.loads(out.stdout)["counts"] == {"train": 25, "validation": 5, "test": 5}


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
