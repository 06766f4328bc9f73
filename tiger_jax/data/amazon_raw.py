"""Reader for the McAuley lab's raw Amazon 2014 files of one category: 5-core reviews plus item metadata.

Files: `reviews_<Category>_5.json.gz` (strict JSON, one review a line) and `meta_<Category>.json.gz`
(one Python dict literal a line: the 2014 metadata is not JSON, so it is read with `ast.literal_eval`;
strict-JSON lines are accepted too). Gzip is detected from the content, so uncompressed copies also work.

Rules (those of the P5 / S3-Rec preprocessing behind the TIGER paper's tables, made deterministic):
- Missing metadata: a review whose item has no metadata line is dropped (reviews, items and users lost are
  counted and logged). An item needs the metadata for its sentence in the embedding stage.
- Time order: each user's reviews are sorted by `unixReviewTime` with a stable sort, so reviews with equal
  times (common: the 2014 times have day resolution) keep their order in the reviews file.
- Duplicate (user, item) reviews: kept by default, as separate interactions at their own times, as P5 /
  S3-Rec do (the paper's interaction counts include them); `duplicates="drop"` keeps only the earliest
  (by the order above). Counted either way.
- k-core (k = `min_count`, 5): users and items with fewer than k interactions are dropped, repeatedly,
  until none is left (the result, the largest such subset, does not depend on the order of removal). The
  `_5` files are 5-core already; dropping reviews without metadata can break that. What it removes is
  counted and logged. Users always need at least `splits.MIN_SESSION_LENGTH` (3) interactions, the
  leave-one-out protocol's minimum, even when `min_count` is smaller.
- Titles: catalogue items without a title are counted (`items_without_title`); a catalogue where no item
  has one is an error naming the metadata file (the embed stage's sentences would lack every name).
- Users: in order of their first review in the reviews file.
- Catalogue: items in order of first appearance when walking the users in that order, each through their
  time-sorted session (so item indices follow the data, as P5's id maps do, without P5's user shuffle).
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from tiger_jax.data import splits
from tiger_jax.data.errors import DataFormatError, missing_file_error
from tiger_jax.data.lines import read_lines
from tiger_jax.data.types import Dataset, Item, ItemCatalog, Sessions

LOGGER = logging.getLogger("tiger_jax.data")

PathLike = Union[str, "os.PathLike[str]"]

REVIEWS_RE = re.compile(r"^reviews_(?P<category>.+)_5\.json(?:\.gz)?$")
META_RE = re.compile(r"^meta_(?P<category>.+)\.json(?:\.gz)?$")
# The 2014 metadata lines start with the asin key; reading it this way lets the reader skip the full (slow)
# literal parse of the many metadata lines whose item has no review.
_META_ASIN_PREFIX_RE = re.compile(r"""\s*\{\s*u?(['"])asin\1\s*:\s*u?(['"])([^'"\\\s]+)\2\s*[,}]""")
_WHITESPACE_RE = re.compile(r"\s")
_DOWNLOAD_HINT = "get it with: tiger-download --category <Category> --out_dir <dir>"
_MISSING = object()


def reviews_filename(category: str) -> str:
  return f"reviews_{category}_5.json.gz"


def meta_filename(category: str) -> str:
  return f"meta_{category}.json.gz"


def category_from_path(path: PathLike) -> Optional[str]:
  """The category in a raw file's name (`reviews_Beauty_5.json.gz` -> `Beauty`), or None."""
  name = Path(path).name
  match = REVIEWS_RE.match(name) or META_RE.match(name)
  return match.group("category") if match else None


@dataclasses.dataclass
class ReadReport:
  """What the reader kept and dropped, so nothing leaves the data without a count."""
  reviews_path: str
  meta_path: str
  min_count: int = 5
  duplicates: str = "keep"
  review_records: int = 0  # review lines read
  review_users: int = 0  # distinct users in the reviews file
  review_items: int = 0  # distinct items in the reviews file
  blank_lines: int = 0  # empty lines skipped, both files
  meta_records: int = 0  # metadata lines read
  meta_parsed: int = 0  # metadata lines fully parsed (the others: items without reviews, see strict_meta)
  meta_unreviewed: int = 0  # metadata lines of items without reviews: not needed, ignored
  meta_duplicate_asins: int = 0  # later metadata lines of a reviewed asin (the first is used)
  reviews_without_meta: int = 0  # dropped
  items_without_meta: int = 0  # dropped
  users_without_meta: int = 0  # dropped: every review of theirs was of an item without metadata
  duplicate_reviews: int = 0  # (user, item) reviews after the first, before the k-core filter
  duplicates_dropped: int = 0  # of those, dropped (duplicates="drop")
  kcore_rounds: int = 0
  kcore_removed_reviews: int = 0
  kcore_removed_users: int = 0
  kcore_removed_items: int = 0
  prices_unparsed: int = 0  # a price was given but is not a usable number: stored as None
  tied_timestamps: int = 0  # final reviews whose time equals the previous one of the same user
  items_without_title: int = 0  # catalogue items whose metadata has no (or an empty) title
  users: int = 0
  items: int = 0
  interactions: int = 0

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def parse_price(value: Any) -> Optional[float]:
  """A price as a float: numbers as they are, strings like '$1,234.50'; missing or unusable -> None."""
  price, _ = _parse_price(value)
  return price


def _parse_price(value: Any) -> tuple[Optional[float], bool]:
  """(price, given but unusable) so the caller can count prices it had to discard."""
  if value is None:
    return None, False
  if isinstance(value, bool):
    return None, True
  if isinstance(value, (int, float)):
    number = float(value)
  elif isinstance(value, str):
    text = value.strip()
    if not text:
      return None, False
    text = text.replace(",", "").lstrip("$").strip()
    try:
      number = float(text)
    except ValueError:
      return None, True
  else:
    return None, True
  if not math.isfinite(number) or number < 0:
    return None, True
  return number, False


def _iter_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, text) so every parse error can name its line."""
  hint = _DOWNLOAD_HINT.replace("<Category>", category_from_path(path) or "<Category>")
  return read_lines(path, what, hint)


def _required_id(obj: dict, field: str, path: Path, lineno: int) -> str:
  """An id field as a non-empty string without whitespace (processed files separate ids with spaces)."""
  value = obj.get(field, _MISSING)
  if value is _MISSING:
    raise DataFormatError("missing required field", path, lineno, field)
  if not isinstance(value, str) or not value:
    raise DataFormatError(f"expected a non-empty string, got {value!r}", path, lineno, field)
  if _WHITESPACE_RE.search(value):
    raise DataFormatError(f"id contains whitespace: {value!r}", path, lineno, field)
  return value


def _review_time(obj: dict, path: Path, lineno: int) -> int:
  value = obj.get("unixReviewTime", _MISSING)
  if value is _MISSING:
    raise DataFormatError("missing required field", path, lineno, "unixReviewTime")
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if isinstance(value, float) and value.is_integer():  # e.g. re-exported through pandas
    return int(value)
  raise DataFormatError(f"expected an integer Unix time, got {value!r}", path, lineno, "unixReviewTime")


def _parse_review(text: str, path: Path, lineno: int) -> tuple[str, str, int]:
  try:
    obj = json.loads(text)
  except ValueError as e:
    detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
    raise DataFormatError(f"not valid JSON ({detail})", path, lineno) from e
  if not isinstance(obj, dict):
    raise DataFormatError(f"expected a JSON object, got {type(obj).__name__}", path, lineno)
  return (_required_id(obj, "reviewerID", path, lineno), _required_id(obj, "asin", path, lineno),
          _review_time(obj, path, lineno))


def _parse_meta_line(text: str, path: Path, lineno: int) -> dict:
  """JSON first (fast, and some copies are re-encoded as JSON), then the 2014 files' Python literals."""
  try:
    obj = json.loads(text)
  except ValueError:
    try:
      obj = ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
      raise DataFormatError(f"not a Python dict literal or JSON object ({type(e).__name__}: {e})",
                            path, lineno) from e
  if not isinstance(obj, dict):
    raise DataFormatError(f"expected a dict, got {type(obj).__name__}", path, lineno)
  return obj


def _optional_text(obj: dict, field: str, path: Path, lineno: int) -> Optional[str]:
  value = obj.get(field)
  if value is None:
    return None
  if not isinstance(value, str):
    raise DataFormatError(f"expected a string, got {value!r}", path, lineno, field)
  return value.strip() or None  # an empty title or brand says nothing in the item's sentence


def _categories(obj: dict, path: Path, lineno: int) -> tuple[tuple[str, ...], ...]:
  """The category paths; a flat list of strings is taken as one path (the later releases' form)."""
  value = obj.get("categories")
  if value is None:
    return ()
  error = DataFormatError(f"expected a list of category paths (lists of strings), got {value!r:.200}",
                          path, lineno, "categories")
  if not isinstance(value, (list, tuple)):
    raise error
  if all(isinstance(v, str) for v in value):
    return (tuple(value),) if value else ()
  paths = []
  for category_path in value:
    if not isinstance(category_path, (list, tuple)) or not all(isinstance(c, str) for c in category_path):
      raise error
    paths.append(tuple(category_path))
  return tuple(paths)


def _item_from_meta(obj: dict, path: Path, lineno: int, report: Optional[ReadReport]) -> Item:
  price, unparsed = _parse_price(obj.get("price"))
  if unparsed and report is not None:
    report.prices_unparsed += 1
  return Item(asin=_required_id(obj, "asin", path, lineno),
              title=_optional_text(obj, "title", path, lineno),
              brand=_optional_text(obj, "brand", path, lineno),
              categories=_categories(obj, path, lineno),
              price=price)


def _read_meta(path: Path, wanted: set[str], strict: bool, report: ReadReport) -> dict[str, Item]:
  """Items of the reviewed asins; lines of other asins are only parsed when `strict`."""
  items: dict[str, Item] = {}
  for lineno, text in _iter_lines(path, "metadata file"):
    text = text.strip()
    if not text:
      report.blank_lines += 1
      continue
    report.meta_records += 1
    if not strict:
      prefix = _META_ASIN_PREFIX_RE.match(text)
      if prefix and prefix.group(3) not in wanted:
        report.meta_unreviewed += 1
        continue
    obj = _parse_meta_line(text, path, lineno)
    report.meta_parsed += 1
    asin = _required_id(obj, "asin", path, lineno)
    if asin not in wanted:
      report.meta_unreviewed += 1
      if strict:
        _item_from_meta(obj, path, lineno, None)  # validates the fields; the item is not needed
    elif asin in items:
      report.meta_duplicate_asins += 1
    else:
      items[asin] = _item_from_meta(obj, path, lineno, report)
  if report.meta_records == 0:
    raise DataFormatError("metadata file has no records", path)
  return items


def _kcore(sessions: dict[str, list[tuple[str, int]]], k: int, report: ReadReport
           ) -> dict[str, list[tuple[str, int]]]:
  """Drops items under k and users under max(k, 3) interactions until stable; keeps the users' order."""
  user_k = max(k, splits.MIN_SESSION_LENGTH)
  before_reviews = sum(len(s) for s in sessions.values())
  before_items = len({asin for s in sessions.values() for asin, _ in s})
  before_users = len(sessions)
  while True:
    item_counts = collections.Counter(asin for s in sessions.values() for asin, _ in s)
    bad_items = {asin for asin, n in item_counts.items() if n < k}
    bad_users = {user for user, s in sessions.items() if len(s) < user_k}
    if not bad_items and not bad_users:
      break
    report.kcore_rounds += 1
    kept_sessions = {}
    for user, s in sessions.items():
      if user in bad_users:
        continue
      kept = [r for r in s if r[0] not in bad_items]
      if kept:
        kept_sessions[user] = kept
    sessions = kept_sessions
  report.kcore_removed_reviews = before_reviews - sum(len(s) for s in sessions.values())
  report.kcore_removed_items = before_items - len({asin for s in sessions.values() for asin, _ in s})
  report.kcore_removed_users = before_users - len(sessions)
  return sessions


def read_raw(reviews_path: PathLike, meta_path: PathLike, name: Optional[str] = None, *,
             min_count: int = 5, duplicates: str = "keep", strict_meta: bool = False
             ) -> tuple[Dataset, ReadReport]:
  """Reads a category's raw files into a Dataset plus the counts of what was dropped (module doc: rules).

  Args:
    reviews_path: `reviews_<Category>_5.json.gz`.
    meta_path: `meta_<Category>.json.gz`.
    name: the dataset's name; default: the category in the reviews file's name.
    min_count: k of the k-core filter (users and items).
    duplicates: "keep" (P5 / S3-Rec, the paper's counts) or "drop" (keep the earliest).
    strict_meta: parse and validate every metadata line, not only those of reviewed items (slower:
      the literal parse dominates and most metadata lines are of items without 5-core reviews).
  """
  reviews_path, meta_path = Path(reviews_path), Path(meta_path)
  if duplicates not in ("keep", "drop"):
    raise ValueError(f"duplicates must be 'keep' or 'drop', got {duplicates!r}")
  if min_count < 1:
    raise ValueError(f"min_count must be >= 1, got {min_count}")
  name = name or category_from_path(reviews_path) or reviews_path.name.split(".")[0]
  report = ReadReport(reviews_path=str(reviews_path), meta_path=str(meta_path), min_count=min_count,
                      duplicates=duplicates)

  # Reviews in file order; the list position is the tie-breaker of the time sort.
  records: list[tuple[str, str, int]] = []
  for lineno, text in _iter_lines(reviews_path, "reviews file"):
    text = text.strip()
    if not text:
      report.blank_lines += 1
      continue
    records.append(_parse_review(text, reviews_path, lineno))
  if not records:
    raise DataFormatError("reviews file has no records", reviews_path)
  report.review_records = len(records)
  reviewed = {asin for _, asin, _ in records}
  report.review_items = len(reviewed)
  report.review_users = len({user for user, _, _ in records})

  items = _read_meta(meta_path, reviewed, strict_meta, report)

  sessions: dict[str, list[tuple[str, int]]] = {}
  for user, asin, time in records:
    if asin not in items:
      report.reviews_without_meta += 1
      continue
    sessions.setdefault(user, []).append((asin, time))
  del records
  report.items_without_meta = len(reviewed) - len(items)
  report.users_without_meta = report.review_users - len(sessions)
  if report.reviews_without_meta:
    LOGGER.warning("%s: dropped %d reviews of %d items without metadata in %s (%d users lost all reviews)",
                   reviews_path, report.reviews_without_meta, report.items_without_meta, meta_path,
                   report.users_without_meta)

  for user, session in sessions.items():
    session.sort(key=lambda r: r[1])  # stable: equal times keep the file order
    seen: set[str] = set()
    unique = []
    for record in session:
      if record[0] in seen:
        report.duplicate_reviews += 1
      else:
        seen.add(record[0])
        unique.append(record)
    if duplicates == "drop" and len(unique) != len(session):
      report.duplicates_dropped += len(session) - len(unique)
      sessions[user] = unique
  if report.duplicate_reviews:
    LOGGER.info("%s: %d duplicate (user, item) reviews, %s", reviews_path, report.duplicate_reviews,
                "dropped (kept the earliest)" if duplicates == "drop" else "kept as interactions")

  sessions = _kcore(sessions, min_count, report)
  log = LOGGER.warning if report.kcore_removed_reviews else LOGGER.info
  log("%s: %d-core filter (%d rounds) removed %d reviews, %d users, %d items", reviews_path, min_count,
      report.kcore_rounds, report.kcore_removed_reviews, report.kcore_removed_users,
      report.kcore_removed_items)
  if not sessions:
    raise DataFormatError(f"no users left after dropping items without metadata and the {min_count}-core "
                          f"filter: {report.as_dict()}", reviews_path)

  catalog_items: dict[str, Item] = {}
  for session in sessions.values():
    previous = None
    for asin, time in session:
      if asin not in catalog_items:
        catalog_items[asin] = items[asin]
      if time == previous:
        report.tied_timestamps += 1
      previous = time
  catalog = ItemCatalog(list(catalog_items.values()))
  report.items_without_title = sum(item.title is None for item in catalog.items)
  if report.items_without_title == len(catalog):
    raise DataFormatError("no catalogue item has a title: the field 'title' is missing or empty in the "
                          f"metadata of all {len(catalog)} reviewed items; the embed stage's item sentences "
                          "need it", meta_path)
  if report.items_without_title:
    LOGGER.warning("%s: %d of %d catalogue items have no title", meta_path, report.items_without_title,
                   len(catalog))
  index = {asin: i for i, asin in enumerate(catalog_items)}
  dataset = Dataset(name=name,
                    sessions=Sessions(users=list(sessions),
                                      sequences=[[index[asin] for asin, _ in s] for s in sessions.values()]),
                    catalog=catalog)
  report.users, report.items = len(dataset.sessions), len(catalog)
  report.interactions = sum(len(s) for s in dataset.sessions.sequences)
  if report.prices_unparsed:
    LOGGER.info("%s: %d prices were not numbers and are stored as missing", meta_path, report.prices_unparsed)
  if report.meta_duplicate_asins:
    LOGGER.info("%s: %d repeated metadata lines ignored (first kept)", meta_path, report.meta_duplicate_asins)
  if report.blank_lines:
    LOGGER.info("%s, %s: %d blank lines skipped", reviews_path, meta_path, report.blank_lines)
  LOGGER.info("%s: %d users, %d items, %d interactions (%d reviews read; %d metadata lines, %d parsed)",
              name, report.users, report.items, report.interactions, report.review_records,
              report.meta_records, report.meta_parsed)
  return dataset, report


def read_raw_category(reviews_path: PathLike, meta_path: PathLike, name: Optional[str] = None,
                      **options) -> Dataset:
  """`read_raw` returning only the Dataset, its ReadReport's counts in `dataset.report` (a JSON-able dict)."""
  dataset, report = read_raw(reviews_path, meta_path, name, **options)
  dataset.report = report.as_dict()
  return dataset


def _pick(directory: Path, names: tuple[str, ...]) -> Optional[Path]:
  for n in names:
    if (directory / n).is_file():
      return directory / n
  return None


def find_raw_files(path: PathLike, category: Optional[str] = None) -> Optional[tuple[Path, Path]]:
  """(reviews, meta) of the raw category in a directory (or beside a given reviews file).

  None when there is no raw reviews or metadata file there, so the caller can try the processed format;
  a clear error when the files are incomplete or several categories make the choice ambiguous.
  """
  path = Path(path)
  if path.is_file():
    category = category_from_path(path) if REVIEWS_RE.match(path.name) else None
    if category is None:
      return None
    directory = path.parent
  elif path.is_dir():
    directory = path
  else:
    return None
  reviews_by_category: dict[str, list[Path]] = collections.defaultdict(list)
  meta_categories: set[str] = set()
  for entry in sorted(directory.iterdir()):
    if not entry.is_file():
      continue
    if match := REVIEWS_RE.match(entry.name):
      reviews_by_category[match.group("category")].append(entry)
    elif match := META_RE.match(entry.name):
      meta_categories.add(match.group("category"))
  if category is None:
    found = sorted(set(reviews_by_category) | meta_categories)
    if not found:
      return None
    if len(found) > 1:
      raise ValueError(f"{directory} holds raw files of several categories ({', '.join(found)}); name one")
    category = found[0]
  elif category not in reviews_by_category and category not in meta_categories:
    return None
  reviews = _pick(directory, (reviews_filename(category), f"reviews_{category}_5.json"))
  if reviews is None:
    raise missing_file_error(directory / reviews_filename(category), f"reviews file of {category}",
                             _DOWNLOAD_HINT.replace("<Category>", category))
  meta = _pick(directory, (meta_filename(category), f"meta_{category}.json"))
  if meta is None:
    raise missing_file_error(directory / meta_filename(category), f"metadata file of {category}",
                             _DOWNLOAD_HINT.replace("<Category>", category))
  return reviews, meta
