"""tiger_jax.infer: input checks (k, the history's type, a histories file), paths from config.gin used from any
folder, the beam search kept on disk, and many histories decoded in batches."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tiger_jax import infer
from tiger_jax import program_cache


@pytest.fixture(scope="module")
def recommender(relative_path_run):
  return infer.Recommender.from_model_dir(relative_path_run["model_dir"], cache_dir=relative_path_run["cache_dir"])


def _infer_cli(run, cwd, *args):
  return subprocess.run([sys.executable, "-m", "tiger_jax.infer", *args], cwd=cwd, env=run["env"],
                        capture_output=True, text=True, timeout=600)


def test_path_from_config_is_relative_to_the_model_dir(tmp_path, monkeypatch, caplog):
  # Both stored relative to the training folder: the cache lies where it lay beside the model dir.
  moved = str(tmp_path / "elsewhere" / "work" / "model")
  assert infer.path_from_config("work/cache", "work/model", moved) == str(tmp_path / "elsewhere" / "work" / "cache")
  deeper = str(tmp_path / "elsewhere" / "work" / "runs" / "m")
  assert infer.path_from_config("./data/../work/c", "work/runs/m", deeper) == str(tmp_path / "elsewhere" / "work" / "c")
  assert infer.path_from_config("/abs/cache", "work/model", moved) == "/abs/cache"
  assert infer.path_from_config(None, "work/model", moved) is None
  # An absolute MODEL_DIR does not say where training ran: the current folder, with a warning.
  monkeypatch.chdir(tmp_path)
  assert infer.path_from_config("work/cache", "/runs/model", moved) == str(tmp_path / "work" / "cache")
  assert "folder training ran in is unknown" in caplog.text


def test_infer_from_another_folder_finds_the_cache_beside_the_model(relative_path_run, tmp_path):
  """config.gin stores TASK_CACHE_DIR = 'work/cache', relative to where training ran; infer used to look for
  it in the current folder and report 'items.npz not found'."""
  run = relative_path_run
  out = _infer_cli(run, str(tmp_path), f"--model_dir={run['model_dir']}", "--history=P01,P04", "--k=3")
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines()]
  assert [r["rank"] for r in rows] == [1, 2, 3] and all(r["title"].startswith("product ") for r in rows)
  # A copy of the whole work tree serves from its own cache (the original one is not consulted).
  copy = tmp_path / "copy"
  shutil.copytree(os.path.join(run["root"], "work"), copy / "work")
  (copy / "work" / "cache" / run["task"] / "items.npz").unlink()
  out = _infer_cli(run, str(tmp_path), f"--model_dir={copy / 'work' / 'model'}", "--history=P01")
  assert out.returncode == 2 and str(copy / "work" / "cache" / run["task"] / "items.npz") in out.stderr
  assert "Traceback" not in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("k", [0, -1, 21])
def test_k_outside_one_to_num_beams_is_an_error(recommender, k):
  with pytest.raises(ValueError, match=r"valid range \[1, 20\]"):
    recommender.recommend(["P01"], k=k)


def test_k_at_the_ends_of_the_range(recommender):
  assert len(recommender.recommend(["P01"], k=1)) == 1
  assert len(recommender.recommend(["P01"], k=20)) == 20  # 24 items: the constrained beams are all valid
  with pytest.raises(TypeError, match="integer"):
    recommender.recommend(["P01"], k=2.5)


def test_infer_cli_rejects_k_before_loading_the_model(relative_path_run, tmp_path):
  """`tiger_jax.infer --k=0` used to answer with 20 items; the check comes before the model is read."""
  out = _infer_cli(relative_path_run, str(tmp_path), "--model_dir=/nonexistent", "--k=0")
  assert out.returncode == 2 and r"valid range [1, 20]" in out.stderr, out.stderr[-2000:]


def test_infer_cli_on_a_folder_that_holds_no_model_is_one_line(relative_path_run, tmp_path):
  out = _infer_cli(relative_path_run, str(tmp_path), f"--model_dir={tmp_path / 'nomodel'}", "--k=5")
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert f"error: {tmp_path / 'nomodel' / 'config.gin'} not found" in out.stderr


def test_a_history_string_is_a_type_error_saying_to_pass_a_list(recommender):
  """recommend("B004756YJA") used to look up the items 'B', '0', '0', ... and report them unknown."""
  with pytest.raises(TypeError, match=r"must be a list of ASINs.*\['P01'\]"):
    recommender.recommend("P01")
  with pytest.raises(TypeError, match=r"must be a list.*\['P01', 'P02'\]"):
    recommender.encode_history("P01,P02")
  with pytest.raises(TypeError, match="item 1 is int"):
    recommender.recommend(["P01", 4])
  assert recommender.recommend(("P01", "P02"), k=2)  # any sequence of strings will do


def test_the_beam_search_is_traced_once_and_served_from_disk_after(relative_path_run, tmp_path, caplog):
  """A Recommender traced and compiled its beam search in every process; with a program cache (the CLI's
  compilation cache) the next process deserializes it instead, and answers the same."""
  run = relative_path_run
  with open(os.path.join(run["model_dir"], "config.gin")) as f:
    config = f.read()
  history = ["P01", "P04", "P07"]

  def recommend(cache):
    caplog.clear()
    with caplog.at_level("INFO", logger="tiger_jax.eval"):
      rec = infer.Recommender.from_model_dir(run["model_dir"], cache_dir=run["cache_dir"], program_cache=cache)
      return rec.recommend(history, k=5), caplog.text

  traced, _ = recommend(None)
  first, log = recommend(program_cache.ProgramCache(str(tmp_path), config))
  assert "encoder length 81 (traced and stored)" in log
  second, log = recommend(program_cache.ProgramCache(str(tmp_path), config))
  assert "encoder length 81 (traced program from disk)" in log
  assert first == traced and second == traced
  # Another model configuration is another program.
  _, log = recommend(program_cache.ProgramCache(str(tmp_path), config + "\nBATCH_SIZE = 4\n"))
  assert "traced and stored" in log


def test_infer_cli_keeps_its_beam_search_in_the_compilation_cache(relative_path_run, tmp_path):
  run = relative_path_run
  traced = tmp_path / "xla" / program_cache.SUBDIR
  args = (f"--model_dir={run['model_dir']}", "--history=P02,P03", "--k=4",
          f"--compilation_cache_dir={tmp_path / 'xla'}")
  first = _infer_cli(run, str(tmp_path), *args)
  assert first.returncode == 0, first.stderr[-3000:]
  stored = sorted(p.name for p in traced.iterdir())
  assert len([name for name in stored if name.endswith(".bin")]) == 1, stored
  second = _infer_cli(run, str(tmp_path), *args)
  assert second.returncode == 0 and second.stdout == first.stdout, second.stderr[-3000:]
  assert sorted(p.name for p in traced.iterdir()) == stored  # read back, not stored again
  off = _infer_cli(run, str(tmp_path), *args[:-1], "--compilation_cache_dir=off")
  assert off.returncode == 0 and off.stdout == first.stdout, off.stderr[-3000:]



@pytest.fixture(scope="module")
def batch_recommender(relative_path_run):
  """Batches of 4, so that a handful of histories spans several batches and length buckets."""
  return infer.Recommender.from_model_dir(relative_path_run["model_dir"], cache_dir=relative_path_run["cache_dir"],
                                          batch_size=4)


def test_recommend_batch_ranks_each_history_as_recommend_does(batch_recommender):
  histories = [["P01"], [], ["P02", "P03"], ["P05"] * 30, ["P04", "P07", "P09"], ["P10"], ["P11", "P01"]]
  users = [None, "U07", None, "U11", None, None, "U03"]
  got = batch_recommender.recommend_batch(histories, users, k=5)
  assert len(got) == len(histories)
  for history, user, top in zip(histories, users, got):
    alone = batch_recommender.recommend(history, user, k=5)
    assert [r["asin"] for r in top] == [r["asin"] for r in alone]
    np.testing.assert_allclose([r["score"] for r in top], [r["score"] for r in alone], rtol=1e-5, atol=1e-5)
  excluded = batch_recommender.recommend_batch(histories[4:5], k=20, exclude_history=True)[0]
  assert not {"P04", "P07", "P09"} & {r["asin"] for r in excluded}
  assert batch_recommender.recommend_batch([], k=3) == []


def test_recommend_batch_names_the_history_at_fault_before_decoding(batch_recommender):
  with pytest.raises(infer.UnknownItemError, match=r"history 2: 1 history items .*\['NOPE'\]") as e:
    batch_recommender.recommend_batch([["P01"], [], ["P02", "NOPE"]])
  assert e.value.index == 2 and e.value.items == ["NOPE"]
  with pytest.raises(TypeError, match="history 1: history must be a list of ASINs"):
    batch_recommender.recommend_batch([["P01"], "P02,P03"])
  with pytest.raises(TypeError, match="list of histories"):
    batch_recommender.recommend_batch("P01")
  with pytest.raises(ValueError, match="1 users for 2 histories"):
    batch_recommender.recommend_batch([["P01"], ["P02"]], users=["U1"])


def test_infer_cli_reads_a_histories_file_and_answers_each_line_as_a_single_call(relative_path_run, tmp_path):
  run = relative_path_run
  histories = tmp_path / "histories.jsonl"
  histories.write_text('{"history": ["P01", "P04"]}\n\n{"history": [], "user": "U05"}\n'
                       '{"history": ["P02"], "user": null}\n')
  out = _infer_cli(run, str(tmp_path), f"--model_dir={run['model_dir']}", f"--histories_file={histories}", "--k=3",
                   "--batch_size=2")
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines()]
  assert [(r["line"], r["user"]) for r in rows] == [(1, None), (3, "U05"), (4, None)]
  single = _infer_cli(run, str(tmp_path), f"--model_dir={run['model_dir']}", "--history=", "--user=U05", "--k=3")
  assert single.returncode == 0, single.stderr[-3000:]
  assert [r["asin"] for r in rows[1]["items"]] == [json.loads(line)["asin"] for line in single.stdout.splitlines()]
  assert [r["rank"] for r in rows[0]["items"]] == [1, 2, 3]
  # --exclude_history: what a single call and the batch leave out is the history itself.
  ranked = [r["asin"] for r in rows[0]["items"]]
  histories.write_text(json.dumps({"history": ranked[:2]}) + "\n")
  out = _infer_cli(run, str(tmp_path), f"--model_dir={run['model_dir']}", f"--histories_file={histories}", "--k=20",
                   "--exclude_history")
  single = _infer_cli(run, str(tmp_path), f"--model_dir={run['model_dir']}", f"--history={','.join(ranked[:2])}",
                      "--k=20", "--exclude_history")
  assert out.returncode == 0 and single.returncode == 0, out.stderr[-3000:] + single.stderr[-3000:]
  batch_items = [r["asin"] for r in json.loads(out.stdout)["items"]]
  assert batch_items == [json.loads(line)["asin"] for line in single.stdout.splitlines()]
  assert len(batch_items) >= 18 and not set(ranked[:2]) & set(batch_items)


@pytest.mark.parametrize("text, error", [
    ('{"history": ["P01"]}\n{"history": ["P01"\n', r"histories.jsonl:2: not JSON"),
    ('{"history": ["P01"]}\n{"hist": ["P01"]}\n', r'histories.jsonl:2: expected an object with "history"'),
    ('{"history": ["P01"], "usr": "U1"}\n', r"histories.jsonl:1: unknown fields \['usr'\]"),
    ('{"history": "P01,P02"}\n', r'histories.jsonl:1: "history": history must be a list of ASINs'),
    ('{"history": ["P01"], "user": 7}\n', r'histories.jsonl:1: "user" must be a string'),
    ('{"history": ["P01"]}\n\n{"history": ["P02", "NOPE"]}\n',
     r"histories.jsonl:3: 1 history items are not in the catalogue: \['NOPE'\]"),
])
def test_infer_cli_names_the_line_of_a_bad_histories_file(relative_path_run, tmp_path, text, error):
  histories = tmp_path / "histories.jsonl"
  histories.write_text(text)
  out = _infer_cli(relative_path_run, str(tmp_path), f"--model_dir={relative_path_run['model_dir']}",
                   f"--histories_file={histories}")
  assert out.returncode == 2 and "Traceback" not in out.stderr and out.stdout == "", out.stderr[-3000:]
  assert re.search(error, out.stderr.strip().splitlines()[-1]), out.stderr[-2000:]


def test_infer_cli_refuses_a_histories_file_beside_a_history(relative_path_run, tmp_path):
  out = _infer_cli(relative_path_run, str(tmp_path), "--model_dir=/nonexistent", "--history=P01",
                   f"--histories_file={tmp_path / 'h.jsonl'}")
  assert out.returncode == 2 and "--histories_file replaces --history and --user" in out.stderr, out.stderr[-2000:]


def test_infer_cli_on_a_missing_histories_file_names_it_before_loading_the_model(relative_path_run, tmp_path):
  out = _infer_cli(relative_path_run, str(tmp_path), "--model_dir=/nonexistent",
                   f"--histories_file={tmp_path / 'absent.jsonl'}")
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert f"error: {tmp_path / 'absent.jsonl'}: cannot read it" in out.stderr


def test_a_few_histories_decode_in_a_few_rows_and_rank_as_full_batches(recommender):
  """With shrink_last_batch (recommend_batch's retriever) a length bucket's last batch is padded to the next
  power of two rows, not to batch_size: five histories cost batches of 1-4 rows instead of 64, and rank as
  full-size batches do."""
  from tiger_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  histories = [["P01"], ["P02"], ["P03", "P04"], ["P05"] * 6, ["P06"] * 30]
  tokens = np.concatenate([recommender.encode_history(h) for h in histories])
  model, params = recommender._retriever.model, recommender._retriever.params
  retrievers = {shrink: eval_lib.Retriever(model, params, recommender.tables.trie(recommender.layout), 20,
                                           batch_size=64, shrink_last_batch=shrink) for shrink in (True, False)}
  (items, scores), (full_items, full_scores) = (retrievers[s].retrieve(tokens) for s in (True, False))
  np.testing.assert_array_equal(items, full_items)
  np.testing.assert_allclose(scores, full_scores, rtol=1e-5, atol=1e-5)
  assert {rows for _, rows in retrievers[True]._compiled} <= {1, 2, 4}, sorted(retrievers[True]._compiled)
  assert {rows for _, rows in retrievers[False]._compiled} == {64}
  assert [retrievers[True].batch_rows(n) for n in (1, 2, 3, 5, 33, 64, 100)] == [1, 2, 4, 8, 64, 64, 64]
  recommender.recommend_batch(histories[:1])
  assert recommender._batch_retriever.shrink_last_batch
  # Both retrievers read one device copy of the catalogue trie.
  assert recommender._batch_retriever.trie.next_state is recommender._retriever.trie.next_state
