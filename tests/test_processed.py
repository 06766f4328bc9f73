"""The processed-format reader: the bundled Beauty reproduces the paper's Table 6; bad input is named."""
import gzip
import json
import os

import pytest

from tiger_jax.data import bundled_dataset_dir, load_dataset
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
  d = write_processed(tmp_path / "d", {"u1": ["A", "X", "B", "Y", "X"], "u2": ["X", "Y"]}, items)
  ds = load_dataset(d)
  assert ds.sessions.users == ["u1"]
  assert ds.sessions.sequences == [[0, 1]]
  assert ds.catalog.asins == ["A", "B"]
  assert ds.catalog.items[1].price == 3.5
  assert ds.report == {"interactions_without_metadata": 5, "items_without_metadata": 2,
                       "users_left_empty": 1, "items_never_interacted": 1}
  assert "interactions_without_metadata = 5" in caplog.text


@pytest.mark.parametrize("line, message", [
    ('{"asin": "A", "title": "a"', "bad JSON"),
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
