"""The processed-format reader: the bundled Beauty reproduces the paper's Table 6; bad input is named."""
import gzip
import json
import os

import pytest

from tiger_jax.data import bundled_dataset_dir, load_dataset
from tiger_jax.data import lines
from tiger_jax.data import processed
from tiger_jax.data.errors import DataFormatError
from conftest import write_processed


def test_bundled_beauty_matches_table_6():
  stats = load_dataset(bundled_dataset_dir("beauty")).stats()
  assert stats["users"] == 22363
  assert stats["items"] == 12101
  assert stats["interactions"] == 198502
  assert 8.87 <= stats["mean_length"] <= 8.88
  assert stats["median_length"] == 6


def test_items_fields_and_catalogue_order(tiny_dataset_dir):
  ds = load_dataset(tiny_dataset_dir)
  assert ds.catalog.asins == [f"I{i}" for i in range(8)]  # order of items.jsonl.gz
  assert ds.catalog.items[3].categories == (("Beauty", "Cat0"),)
  assert ds.sessions.sequences[1] == [3, 4, 5, 6]
  assert ds.name == "tiny"


def test_sequence_items_without_metadata_are_removed_and_counted(tmp_path, caplog):
  items = [{"asin": "A", "title": "a"}, {"asin": "B", "title": "b", "price": "$3.50"},
           {"asin": "Z", "title": "never bought"}]
  d = write_processed(tmp_path / "d", {"u1": ["A", "X", "B", "Y", "X", "A"], "u2": ["X", "Y"]}, items)
  ds = load_dataset(d)
  assert ds.sessions.users == ["u1"]
  assert ds.sessions.sequences == [[0, 1, 0]]
  assert ds.catalog.asins == ["A", "B"]
  assert ds.catalog.items[1].price == 3.5
  assert ds.report == {"interactions_without_metadata": 5, "items_without_metadata": 2,
                       "users_left_empty": 1, "users_too_short": 0, "items_never_interacted": 1,
                       "items_without_title": 0}
  assert "interactions_without_metadata = 5" in caplog.text


@pytest.mark.parametrize("line, message", [
    ('{"asin": "A", "title": "a"', "not valid JSON"),
    ('{"title": "no asin"}', "asin"),
    ('{"asin": "A", "categories": "Beauty"}', "categories"),
    ('{"asin": "A", "price": "cheap"}', "price"),
    ('["A"]', "JSON object"),
])
def test_bad_item_line_names_file_and_line(tmp_path, line, message):
  d = write_processed(tmp_path / "d", {"u": ["A", "A", "A"]}, [])
  path = os.path.join(d, "items.jsonl.gz")
  with gzip.open(path, "wt") as f:
    f.write(json.dumps({"asin": "OK"}) + "\n" + line + "\n")
  with pytest.raises(DataFormatError) as e:
    load_dataset(d)
  assert e.value.path == path and e.value.line == 2
  assert message in str(e.value) and path in str(e.value) and "line 2" in str(e.value)


def _corrupt(path, how):
  packed = open(path, "rb").read()
  data = gzip.decompress(packed)
  if how == "truncated gzip":  # a download cut short
    open(path, "wb").write(packed[:len(packed) // 2])
  elif how == "not UTF-8":
    lines = data.split(b"\n")
    lines[1] = lines[1][:5] + b"\xff" + lines[1][5:]
    open(path, "wb").write(b"\n".join(lines))


@pytest.mark.parametrize("filename", ["items.jsonl.gz", "sequences.txt.gz"])
@pytest.mark.parametrize("how, message, line", [("truncated gzip", "corrupt or truncated gzip", None),
                                                 ("not UTF-8", "not valid UTF-8", 2)])
def test_unreadable_bytes_name_file_and_line(tiny_dataset_dir, filename, how, message, line):
  path = os.path.join(tiny_dataset_dir, filename)
  _corrupt(path, how)
  with pytest.raises(DataFormatError, match=message) as e:
    load_dataset(tiny_dataset_dir)
  assert e.value.path == path and path in str(e.value)
  assert e.value.line == (line or e.value.line) and e.value.line >= 1  # where reading stopped


def test_plain_text_named_gz_reads_as_text(tiny_dataset_dir):
  expected = load_dataset(tiny_dataset_dir)
  for name in ("items.jsonl.gz", "sequences.txt.gz"):
    path = os.path.join(tiny_dataset_dir, name)
    data = gzip.decompress(open(path, "rb").read())
    open(path, "wb").write(data)
  ds = load_dataset(tiny_dataset_dir)
  assert ds.sessions.sequences == expected.sessions.sequences and ds.catalog.asins == expected.catalog.asins


def test_items_without_titles_are_counted_and_none_at_all_is_an_error(tmp_path, caplog):
  sequences = {"u1": ["A", "B", "C"], "u2": ["C", "B", "A"]}
  d = write_processed(tmp_path / "some", sequences, [{"asin": "A", "title": "a"}, {"asin": "B", "title": " "},
                                                     {"asin": "C"}])
  assert load_dataset(d).report["items_without_title"] == 2
  assert "items_without_title = 2" in caplog.text
  d = write_processed(tmp_path / "none", sequences, [{"asin": a, "name": a.lower()} for a in "ABC"])
  with pytest.raises(DataFormatError, match=r"no item has a title.*fields found: asin, name") as e:
    load_dataset(d)
  assert e.value.path == os.path.join(d, "items.jsonl.gz")


def test_users_with_fewer_than_three_items_are_dropped_and_counted(tmp_path, caplog):
  """The 5-core rule's counterpart here: such a user cannot be split into train, validation and test."""
  items = [{"asin": a, "title": a} for a in "ABCD"]
  d = write_processed(tmp_path / "d", {"u1": ["A", "B", "C"], "u2": ["D", "A"], "u3": ["A", "X", "B"]}, items)
  ds = load_dataset(d)
  assert ds.sessions.users == ["u1"] and ds.catalog.asins == ["A", "B", "C"]  # D was only u2's
  assert ds.report["users_too_short"] == 2  # u2 as written, u3 once X (no metadata) is removed
  assert "users_too_short = 2" in caplog.text
  d = write_processed(tmp_path / "short", {"u1": ["A", "B"], "u2": ["C"]}, items)
  with pytest.raises(DataFormatError, match="no user has 3 or more items") as e:
    load_dataset(d)
  assert e.value.path == os.path.join(d, "sequences.txt.gz")


def test_bad_sequence_line_names_file_and_line(tmp_path):
  d = write_processed(tmp_path / "d", {"u1": ["A"], "lonely": []}, [{"asin": "A"}])
  with pytest.raises(DataFormatError, match=r"sequences.txt.gz, line 2"):
    load_dataset(d)


def test_missing_and_empty_files_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    load_dataset(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="neither processed files"):
    load_dataset(str(tmp_path / "empty"))
  d = write_processed(tmp_path / "d", {"u": ["A"]}, [{"asin": "A"}])
  with gzip.open(os.path.join(d, "items.jsonl.gz"), "wt") as f:
    f.write("\n")
  with pytest.raises(DataFormatError, match="empty"):
    processed.read_processed_dir(d)


def test_load_dataset_dispatches_raw_amazon_files(tmp_path):
  reviews = [{"reviewerID": f"U{u}", "asin": f"A{i}", "unixReviewTime": 1000 + 10 * i + u}
             for u in range(5) for i in range(5)]
  with gzip.open(tmp_path / "reviews_Toys_and_Games_5.json.gz", "wt") as f:
    f.writelines(json.dumps(r) + "\n" for r in reviews)
  with gzip.open(tmp_path / "meta_Toys_and_Games.json.gz", "wt") as f:
    f.writelines(repr({"asin": f"A{i}", "title": f"toy {i}", "price": 2.5}) + "\n" for i in range(5))
  ds = load_dataset(str(tmp_path), name="toys")
  assert ds.stats()["users"] == 5 and ds.stats()["items"] == 5 and ds.stats()["interactions"] == 25
  assert ds.catalog.items[0].price == 2.5
  assert json.loads(json.dumps(ds.report))["interactions"] == 25


def test_json_lines_reader_names_file_line_and_field_and_reads_gzip(tmp_path):
  path = tmp_path / "rows.jsonl.gz"
  with gzip.open(path, "wt") as f:
    f.write('{"step": 2, "loss": 1.0}\n\n{"step": 4}\n')
  assert list(lines.read_json_objects(path, "metrics log")) == [(1, {"step": 2, "loss": 1.0}), (3, {"step": 4})]
  with pytest.raises(DataFormatError, match=r"rows\.jsonl\.gz, line 3, field 'loss': missing"):
    list(lines.read_json_objects(path, "metrics log", required=("step", "loss")))
  for text, message in [('{"step": 2}\n{"step": \n', r"line 2: not valid JSON"),
                        ('[1, 2]\n', r"line 1: expected a JSON object, got list")]:
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(DataFormatError, match=message):
      list(lines.read_json_objects(path))
