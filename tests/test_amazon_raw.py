"""The raw Amazon 2014 reader on small hand-written files in the release's formats."""
from __future__ import annotations

import gzip
import json
import logging
import pickle

import pytest

from tiger_jax.data import amazon_raw
from tiger_jax.data.amazon_raw import find_raw_files, parse_price, read_raw, read_raw_category
from tiger_jax.data.errors import DataFormatError

T0 = 1_300_000_000
DAY = 86400


def review(user, asin, time, **extra) -> str:
  """A review line as in reviews_<Category>_5.json.gz (strict JSON)."""
  return json.dumps({"reviewerID": user, "asin": asin, "reviewerName": "x", "helpful": [0, 0],
                     "reviewText": "fine", "overall": 5.0, "summary": "ok", "unixReviewTime": time,
                     "reviewTime": "01 1, 2011", **extra})


def meta(asin, **fields) -> str:
  """A metadata line as in meta_<Category>.json.gz: Python's repr of a dict, not JSON. It has a title
  unless `fields` give one (None: no title field), as the reader needs titles."""
  fields.setdefault("title", f"title of {asin}")
  if fields["title"] is None:
    del fields["title"]
  return repr({"asin": asin, **fields})


def write(path, lines, compress=True):
  data = "".join(line + "\n" for line in lines).encode("utf-8")
  path.write_bytes(gzip.compress(data) if compress else data)
  return path


def grid(users, items, start=T0):
  """Every user reviews every item, on successive days: a 5-core block when both are >= 5."""
  return [review(u, a, start + j * DAY) for u in users for j, a in enumerate(items)]


def files(tmp_path, review_lines, meta_lines, category="Toys_and_Games"):
  return (write(tmp_path / f"reviews_{category}_5.json.gz", review_lines),
          write(tmp_path / f"meta_{category}.json.gz", meta_lines))


USERS = [f"U{i}" for i in range(5)]
ITEMS = [f"I{i}" for i in range(5)]
META = [meta(a, title=f"Item {a}", categories=[["Toys & Games", "Puzzles"]]) for a in ITEMS]


def test_reads_a_5core_block(tmp_path):
  dataset, report = read_raw(*files(tmp_path, grid(USERS, ITEMS), META))
  assert dataset.name == "Toys_and_Games"
  assert dataset.stats()["users"] == 5 and dataset.stats()["items"] == 5
  assert dataset.stats()["interactions"] == 25
  assert dataset.sessions.users == USERS
  assert dataset.catalog.asins == ITEMS
  assert dataset.sessions.sequences == [[0, 1, 2, 3, 4]] * 5
  item = dataset.catalog.items[0]
  assert item.title == "Item I0" and item.categories == (("Toys & Games", "Puzzles"),)
  assert item.brand is None and item.price is None
  assert report.kcore_removed_reviews == 0 and report.reviews_without_meta == 0
  assert (report.users, report.items, report.interactions) == (5, 5, 25)


def test_time_sort_keeps_file_order_for_equal_times(tmp_path):
  lines = [review("A", "a", T0 + 30), review("A", "b", T0 + 10), review("A", "c", T0 + 20),
           review("A", "d", T0 + 10),
           review("B", "d", T0 + 5), review("B", "b", T0 + 5), review("B", "a", T0 + 6)]
  metas = [meta(x) for x in "abcd"]
  dataset, report = read_raw(*files(tmp_path, lines, metas), min_count=1)
  asins = dataset.catalog.asins
  sessions = [[asins[i] for i in s] for s in dataset.sessions.sequences]
  assert sessions == [["b", "d", "c", "a"], ["d", "b", "a"]]
  assert report.tied_timestamps == 2


def test_catalogue_order_is_first_appearance_in_sorted_sessions(tmp_path):
  lines = [review("B", "z", T0 + 2), review("A", "y", T0 + 9), review("B", "x", T0 + 1),
           review("A", "x", T0 + 1), review("B", "y", T0 + 3), review("A", "z", T0 + 10)]
  dataset, _ = read_raw(*files(tmp_path, lines, [meta(x) for x in "xyz"]), min_count=1)
  assert dataset.sessions.users == ["B", "A"]  # first review in the file
  assert dataset.catalog.asins == ["x", "z", "y"]  # B: x, z, y; then A: x, y, z


def test_kcore_is_enforced_until_stable(tmp_path):
  # U5..U9 each review X (no metadata), Z and 3 grid items; U5 also reviews W, as do U0..U3. Once X goes:
  # round 1 removes U6..U9 (4 reviews) and U10; round 2 Z (1 review left); round 3 U5 (4 left); round 4 W.
  extra_users = [f"U{i}" for i in range(5, 10)]
  lines = grid(USERS, ITEMS)
  for i, u in enumerate(extra_users):
    lines += [review(u, "X", T0), review(u, "Z", T0 + 1)]
    lines += [review(u, a, T0 + 2 + j) for j, a in enumerate(ITEMS[:3])]
  lines += [review(u, "W", T0 + 99 * DAY) for u in USERS[:4] + ["U5"]]
  lines += [review("U10", a, T0) for a in ITEMS[:4]]  # a user with 4 reviews
  metas = META + [meta("Z"), meta("W")]
  dataset, report = read_raw(*files(tmp_path, lines, metas))
  assert dataset.sessions.users == USERS
  assert dataset.catalog.asins == ITEMS
  assert report.reviews_without_meta == 5 and report.items_without_meta == 1
  assert report.users_without_meta == 0
  assert report.kcore_removed_users == 6  # U5..U9, U10
  assert report.kcore_removed_items == 2  # Z, W
  assert report.kcore_removed_reviews == 4 * 4 + 4 + 5 + 4  # U6..U9 after X, U10, U5 after X, W's last 4
  assert report.kcore_rounds == 4
  assert report.interactions == 25


def test_items_without_metadata_are_dropped_counted_and_logged(tmp_path, caplog):
  lines = grid(USERS, ITEMS + ["N1"]) + [review("U9", "N2", T0)]
  with caplog.at_level(logging.INFO, logger="tiger_jax.data"):
    dataset = read_raw_category(*files(tmp_path, lines, META), name="toys")
  report = dataset.report
  assert dataset.name == "toys"
  assert "N1" not in dataset.catalog and len(dataset.catalog) == 5
  assert report["reviews_without_meta"] == 6 and report["items_without_meta"] == 2
  assert report["users_without_meta"] == 1  # U9 reviewed only N2
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("dropped 6 reviews of 2 items without metadata" in m for m in warnings)
  assert any("5-core" in r.getMessage() for r in caplog.records)


def test_duplicate_reviews_kept_by_default_or_dropped(tmp_path):
  lines = [review("A", "a", T0 + 1), review("A", "b", T0 + 2), review("A", "a", T0 + 3),
           review("A", "c", T0 + 4)]
  paths = files(tmp_path, lines, [meta("a"), meta("b"), meta("c")])
  kept, report = read_raw(*paths, min_count=1)
  assert kept.sessions.sequences == [[0, 1, 0, 2]]
  assert report.duplicate_reviews == 1 and report.duplicates_dropped == 0
  dropped, report = read_raw(*paths, min_count=1, duplicates="drop")
  assert dropped.sessions.sequences == [[0, 1, 2]]
  assert report.duplicate_reviews == 1 and report.duplicates_dropped == 1
  with pytest.raises(ValueError, match="duplicates"):
    read_raw(*paths, duplicates="latest")


@pytest.mark.parametrize("value, expected", [
    (12.5, 12.5), (7, 7.0), ("$1,234.50", 1234.5), (" $3 ", 3.0), ("4.99", 4.99), (None, None),
    ("", None), ("abc", None), ("$5.00 - $10.00", None), (True, None), (float("nan"), None), (-1, None),
    ([1], None),
])
def test_parse_price(value, expected):
  assert parse_price(value) == expected


def test_prices_in_metadata_and_unparsed_count(tmp_path):
  metas = [meta("I0", price=3.17), meta("I1", price="$1,000.00"), meta("I2", price="n/a"), meta("I3"),
           meta("I4", price=None)]
  dataset, report = read_raw(*files(tmp_path, grid(USERS, ITEMS), metas))
  assert [item.price for item in dataset.catalog.items] == [3.17, 1000.0, None, None, None]
  assert report.prices_unparsed == 1


def test_python_literal_metadata_is_parsed(tmp_path):
  metas = [
      # Python literal forms JSON rejects: single quotes, True/None, nested dicts, u'' strings.
      "{'asin': 'I0', 'title': u\"Kid's Puzzle\", 'brand': 'Acme ', 'price': 9.5, 'related': "
      "{'also_bought': ['I1', 'I2']}, 'salesRank': {'Toys & Games': 12}, 'isGift': True, 'imUrl': None, "
      "'categories': [['Toys & Games', 'Puzzles'], ['Baby']]}",
      json.dumps({"asin": "I1", "title": "A JSON line", "categories": [["Toys & Games"]]}),
      "{'title': 'asin is not the first key', 'asin': 'I2'}",
      meta("I3", categories=["Toys & Games", "Dolls"], brand=""),  # flat list: one path; empty brand
      "  " + meta("I4", description="a\ttab and \\ backslash") + "  ",
  ]
  dataset, report = read_raw(*files(tmp_path, grid(USERS, ITEMS), metas))
  items = {item.asin: item for item in dataset.catalog.items}
  assert items["I0"].title == "Kid's Puzzle" and items["I0"].brand == "Acme" and items["I0"].price == 9.5
  assert items["I0"].categories == (("Toys & Games", "Puzzles"), ("Baby",))
  assert items["I1"].title == "A JSON line"
  assert items["I2"].title == "asin is not the first key"
  assert items["I3"].categories == (("Toys & Games", "Dolls"),) and items["I3"].brand is None
  assert report.meta_parsed == 5


def test_metadata_of_unreviewed_items_is_skipped_unless_strict(tmp_path):
  metas = META + [meta("OTHER", title="t"), meta("I0", title="second copy"), "{'asin': 'BAD', 'title': ("]
  paths = files(tmp_path, grid(USERS, ITEMS), metas)
  dataset, report = read_raw(*paths)
  assert dataset.catalog.items[0].title == "Item I0"  # the first metadata line of an asin wins
  assert report.meta_records == 8 and report.meta_unreviewed == 2 and report.meta_duplicate_asins == 1
  with pytest.raises(DataFormatError) as info:
    read_raw(*paths, strict_meta=True)
  assert info.value.line == 8


REVIEW_CASES = {
    "bad_json": ('{"reviewerID": "U0", "asin": ', "not valid JSON", None),
    "not_object": ('["U0", "I0"]', "expected a JSON object", None),
    "missing_asin": (json.dumps({"reviewerID": "U0", "unixReviewTime": T0}), "missing", "asin"),
    "missing_user": (json.dumps({"asin": "I0", "unixReviewTime": T0}), "missing", "reviewerID"),
    "empty_user": (json.dumps({"reviewerID": "", "asin": "I0", "unixReviewTime": T0}), "non-empty",
                   "reviewerID"),
    "space_in_asin": (json.dumps({"reviewerID": "U0", "asin": "I 0", "unixReviewTime": T0}), "whitespace",
                      "asin"),
    "missing_time": (json.dumps({"reviewerID": "U0", "asin": "I0"}), "missing", "unixReviewTime"),
    "string_time": (review("U0", "I0", "1300000000"), "integer", "unixReviewTime"),
    "fraction_time": (review("U0", "I0", 1.5), "integer", "unixReviewTime"),
    "bool_time": (review("U0", "I0", True), "integer", "unixReviewTime"),
    "null_time": (review("U0", "I0", None), "integer", "unixReviewTime"),
}


@pytest.mark.parametrize("case", sorted(REVIEW_CASES))
def test_bad_review_line_names_file_and_line(tmp_path, case):
  bad, message, field = REVIEW_CASES[case]
  lines = [review("U0", "I0", T0), "", review("U1", "I0", T0), bad, review("U2", "I0", T0)]
  reviews, meta_path = files(tmp_path, lines, META)
  with pytest.raises(DataFormatError, match=message) as info:
    read_raw(reviews, meta_path)
  assert info.value.path == str(reviews) and info.value.line == 4 and info.value.field == field
  assert str(reviews) in str(info.value) and "line 4" in str(info.value)
  assert isinstance(info.value, ValueError)


META_CASES = {
    "bad_literal": ("{'asin': 'I0', 'title': 'x'", "not a Python dict literal", None),
    "not_dict": ("['I0', 'x']", "expected a dict", None),
    "missing_asin": ("{'title': 'x'}", "missing", "asin"),
    "asin_not_string": ("{'asin': 7}", "non-empty string", "asin"),
    "title_not_string": ("{'asin': 'I0', 'title': 3}", "expected a string", "title"),
    "bad_categories": ("{'asin': 'I0', 'categories': 'Toys'}", "category paths", "categories"),
    "bad_category_path": ("{'asin': 'I0', 'categories': [['Toys'], 3]}", "category paths", "categories"),
}


@pytest.mark.parametrize("case", sorted(META_CASES))
def test_bad_metadata_line_names_file_and_line(tmp_path, case):
  bad, message, field = META_CASES[case]
  reviews, meta_path = files(tmp_path, grid(USERS, ITEMS), META[1:3] + [bad] + META[3:])
  with pytest.raises(DataFormatError, match=message) as info:
    read_raw(reviews, meta_path)
  assert info.value.path == str(meta_path) and info.value.line == 3 and info.value.field == field
  assert f"{meta_path}, line 3" in str(info.value)


@pytest.mark.parametrize("which", ["reviews", "meta"])
@pytest.mark.parametrize("content", [b"", gzip.compress(b""), gzip.compress(b"\n\n")])
def test_empty_file_is_an_error_naming_it(tmp_path, which, content):
  reviews, meta_path = files(tmp_path, grid(USERS, ITEMS), META)
  target = reviews if which == "reviews" else meta_path
  target.write_bytes(content)
  with pytest.raises(DataFormatError, match="empty|no records") as info:
    read_raw(reviews, meta_path)
  assert info.value.path == str(target)


@pytest.mark.parametrize("which", ["reviews", "meta"])
def test_missing_file_is_an_error_naming_it(tmp_path, which):
  reviews, meta_path = files(tmp_path, grid(USERS, ITEMS), META)
  target = reviews if which == "reviews" else meta_path
  target.unlink()
  with pytest.raises(FileNotFoundError, match="not found") as info:
    read_raw(reviews, meta_path)
  assert str(target) in str(info.value) and "tiger-download --category Toys_and_Games" in str(info.value)


def test_corrupt_gzip_and_bad_utf8_name_file_and_line(tmp_path):
  reviews, meta_path = files(tmp_path, grid(USERS, ITEMS), META)
  data = reviews.read_bytes()
  reviews.write_bytes(data[:len(data) // 2])
  with pytest.raises(DataFormatError, match="gzip") as info:
    read_raw(reviews, meta_path)
  assert info.value.path == str(reviews) and info.value.line >= 1
  plain = tmp_path / "reviews_Plain_5.json"
  plain.write_bytes(review("U0", "I0", T0).encode() + b"\n" + b'{"reviewerID": "\xff"}\n')
  with pytest.raises(DataFormatError, match="UTF-8") as info:
    read_raw(plain, meta_path)
  assert info.value.line == 2


def test_gzip_detected_from_content_and_bad_gzip_named(tmp_path):
  """A plain file named .gz reads as plain text; gzip magic followed by garbage names file and line."""
  reviews, meta_path = files(tmp_path, grid(USERS, ITEMS), META)
  expected, _ = read_raw(reviews, meta_path)
  reviews.write_bytes(gzip.decompress(reviews.read_bytes()))
  meta_path.write_bytes(gzip.decompress(meta_path.read_bytes()))
  dataset, _ = read_raw(reviews, meta_path)
  assert dataset.sessions.sequences == expected.sessions.sequences
  assert dataset.catalog.asins == expected.catalog.asins
  meta_path.write_bytes(b"\x1f\x8b" + b"not deflate data at all" * 4)
  with pytest.raises(DataFormatError, match="corrupt or truncated gzip") as info:
    read_raw(reviews, meta_path)
  assert info.value.path == str(meta_path) and info.value.line == 1


def test_items_without_titles_are_counted_and_none_at_all_is_an_error(tmp_path, caplog):
  metas = [meta(a, title=None if a in ("I1", "I3") else "") if a != "I0" else meta(a) for a in ITEMS]
  with caplog.at_level(logging.WARNING, logger="tiger_jax.data"):
    _, report = read_raw(*files(tmp_path, grid(USERS, ITEMS), metas))
  assert report.items_without_title == 4  # two without the field, two with an empty title
  assert "4 of 5 catalogue items have no title" in caplog.text
  reviews, meta_path = files(tmp_path, grid(USERS, ITEMS), [meta(a, title=None, name=a) for a in ITEMS])
  with pytest.raises(DataFormatError, match="no catalogue item has a title") as info:
    read_raw(reviews, meta_path)
  assert info.value.path == str(meta_path)


def test_users_need_three_reviews_even_below_a_3_core(tmp_path):
  """Leave-one-out needs a train, a validation and a test item: a smaller min_count still drops such users."""
  lines = grid(["U0"], ["a", "b", "c"]) + grid(["U1"], ["a", "b"])
  dataset, report = read_raw(*files(tmp_path, lines, [meta(x) for x in "abc"]), min_count=1)
  assert dataset.sessions.users == ["U0"] and report.kcore_removed_users == 1


def test_uncompressed_files_and_default_min_count_error(tmp_path):
  reviews = write(tmp_path / "reviews_Beauty_5.json", grid(USERS, ITEMS), compress=False)
  meta_path = write(tmp_path / "meta_Beauty.json", META, compress=False)
  dataset, _ = read_raw(reviews, meta_path)
  assert dataset.name == "Beauty" and len(dataset.catalog) == 5
  write(reviews, grid(USERS[:4], ITEMS), compress=False)  # 4 users: nothing is 5-core
  with pytest.raises(DataFormatError, match="no users left"):
    read_raw(reviews, meta_path)


def test_data_format_error_pickles_with_its_fields():
  error = pickle.loads(pickle.dumps(DataFormatError("bad", "/x.gz", 3, "asin")))
  assert (error.path, error.line, error.field) == ("/x.gz", 3, "asin")
  assert str(error) == "/x.gz, line 3, field 'asin': bad"


def test_find_raw_files(tmp_path):
  assert find_raw_files(tmp_path) is None
  assert find_raw_files(tmp_path / "nothing_here") is None
  (tmp_path / "sequences.txt.gz").write_bytes(gzip.compress(b"U0 I0\n"))
  assert find_raw_files(tmp_path) is None  # the processed format
  reviews, meta_path = files(tmp_path, grid(USERS, ITEMS), META)
  assert find_raw_files(tmp_path) == (reviews, meta_path)
  assert find_raw_files(reviews) == (reviews, meta_path)
  assert find_raw_files(tmp_path, category="Beauty") is None
  files(tmp_path, grid(USERS, ITEMS), META, category="Beauty")
  with pytest.raises(ValueError, match="several categories"):
    find_raw_files(tmp_path)
  assert find_raw_files(tmp_path, category="Toys_and_Games") == (reviews, meta_path)
  meta_path.unlink()
  with pytest.raises(FileNotFoundError, match="meta_Toys_and_Games.json.gz"):
    find_raw_files(tmp_path, category="Toys_and_Games")


def test_find_raw_files_reports_missing_reviews(tmp_path):
  write(tmp_path / "meta_Beauty.json.gz", META)
  with pytest.raises(FileNotFoundError, match="reviews_Beauty_5.json.gz"):
    find_raw_files(tmp_path)


def test_filenames_round_trip():
  assert amazon_raw.category_from_path(amazon_raw.reviews_filename("Toys_and_Games")) == "Toys_and_Games"
  assert amazon_raw.category_from_path(amazon_raw.meta_filename("Beauty")) == "Beauty"
  assert amazon_raw.category_from_path("sequences.txt.gz") is None
