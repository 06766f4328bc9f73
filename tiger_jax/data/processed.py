"""Reader for the processed format: `sequences.txt.gz` + `items.jsonl.gz` (see data/README.md).

Rule for sequence items without metadata: such an item is removed from every sequence it appears in, and the
number of removed interactions and distinct items is logged and returned in `Dataset.report`. A user left with
no items is removed and counted. Items with metadata that no user touches stay out of the catalogue, also counted.
Catalogue order is the order of `items.jsonl.gz` (restricted to items that appear in some sequence).

Short sessions: a user with fewer than `splits.MIN_SESSION_LENGTH` (3) items, as written or after the rule
above, is dropped and counted (`users_too_short`), as the raw reader's k-core filter drops short users: the
leave-one-out protocol needs a train, a validation and a test item, and such a user would otherwise stop the
task cache much later. Titles: catalogue items without a title are counted (`items_without_title`) and
logged; a catalogue where no item has one is an error, since the embed stage's sentences would then lack
every item's name (usually a misnamed field).

Both files may be gzip-compressed or plain (detected from the content, tiger_jax.data.lines).
"""
from __future__ import annotations

import logging
import os
from typing import Iterator, Optional

from tiger_jax.data import splits
from tiger_jax.data.errors import DataFormatError
from tiger_jax.data.lines import read_json_objects, read_lines
from tiger_jax.data.types import Dataset, Item, ItemCatalog, Sessions

logger = logging.getLogger("tiger_jax.data")

SEQUENCES_FILE = "sequences.txt.gz"
ITEMS_FILE = "items.jsonl.gz"


def is_processed_dir(directory: str) -> bool:
  return all(os.path.exists(os.path.join(directory, f)) for f in (SEQUENCES_FILE, ITEMS_FILE))


def _lines(path: str) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, stripped line) of non-blank lines; an empty file is an error naming it."""
  seen_any = False
  for number, line in read_lines(path, "data file"):
    line = line.strip()
    if not line:
      continue
    seen_any = True
    yield number, line
  if not seen_any:
    raise DataFormatError("file is empty", path)


def _optional_str(record: dict, field: str, path: str, number: int) -> Optional[str]:
  value = record.get(field)
  if value is None:
    return None
  if not isinstance(value, str):
    raise DataFormatError(f"field {field!r} must be a string, got {type(value).__name__}", path, number)
  return value.strip() or None


def parse_item(record: dict, path: str, number: int) -> Item:
  """Builds an Item from an Amazon-2014-style metadata dict, validating field types."""
  asin = record.get("asin")
  if not isinstance(asin, str) or not asin.strip():
    raise DataFormatError("missing or empty 'asin'", path, number)
  categories = record.get("categories") or []
  if not isinstance(categories, list) or not all(
      isinstance(p, (list, tuple)) and all(isinstance(c, str) for c in p) for p in categories):
    raise DataFormatError("'categories' must be a list of lists of strings", path, number)
  price = record.get("price")
  if price is not None:
    try:
      price = float(str(price).replace("$", "").replace(",", "").strip())
    except ValueError:
      raise DataFormatError(f"'price' is not a number: {price!r}", path, number) from None
  return Item(
      asin=asin.strip(),
      title=_optional_str(record, "title", path, number),
      brand=_optional_str(record, "brand", path, number),
      categories=tuple(tuple(p) for p in categories),
      price=price,
  )


def read_items(path: str, fields_seen: Optional[set] = None) -> list[Item]:
  """Items in file order; `fields_seen`, when given, collects every field name met (for error messages)."""
  items, seen = [], set()
  for number, record in read_json_objects(path, "data file"):
    if fields_seen is not None:
      fields_seen.update(record)
    item = parse_item(record, path, number)
    if item.asin in seen:
      raise DataFormatError(f"duplicate asin {item.asin!r}", path, number)
    seen.add(item.asin)
    items.append(item)
  if not items:
    raise DataFormatError("file is empty", path)
  return items


def read_sequences(path: str) -> list[tuple[str, list[str]]]:
  users, seen = [], set()
  for number, line in _lines(path):
    fields = line.split()
    if len(fields) < 2:
      raise DataFormatError(f"expected 'reviewerID asin [asin ...]', got {line[:80]!r}", path, number)
    if fields[0] in seen:
      raise DataFormatError(f"reviewerID {fields[0]!r} appears twice", path, number)
    seen.add(fields[0])
    users.append((fields[0], fields[1:]))
  return users


def read_processed_dir(directory: str, name: Optional[str] = None) -> Dataset:
  """Reads one processed category directory into a Dataset (rules in the module docstring)."""
  name = name or os.path.basename(os.path.normpath(directory))
  items_path, sequences_path = os.path.join(directory, ITEMS_FILE), os.path.join(directory, SEQUENCES_FILE)
  fields_seen: set = set()
  items = read_items(items_path, fields_seen)
  raw_sessions = read_sequences(sequences_path)
  by_asin = {item.asin: item for item in items}

  missing_interactions, missing_items, empty_users, short_users = 0, set(), 0, 0
  kept_users, kept_asin_seqs = [], []
  for user, asins in raw_sessions:
    kept = [a for a in asins if a in by_asin]
    missing_items.update(a for a in asins if a not in by_asin)
    missing_interactions += len(asins) - len(kept)
    if not kept:
      empty_users += 1
      continue
    if len(kept) < splits.MIN_SESSION_LENGTH:
      short_users += 1
      continue
    kept_users.append(user)
    kept_asin_seqs.append(kept)
  if not kept_users:
    raise DataFormatError(
        f"no user has {splits.MIN_SESSION_LENGTH} or more items with metadata ({len(raw_sessions)} users "
        f"read, {empty_users} left without items, {short_users} with fewer than "
        f"{splits.MIN_SESSION_LENGTH}): leave-one-out needs a train, a validation and a test item",
        sequences_path)

  used = {a for seq in kept_asin_seqs for a in seq}
  catalog = ItemCatalog([item for item in items if item.asin in used])
  untitled = sum(item.title is None for item in catalog.items)
  if untitled == len(catalog):
    raise DataFormatError(
        f"no item has a title: the field 'title' is missing or empty on every line used (fields found: "
        f"{', '.join(sorted(fields_seen)[:20])}); the embed stage's item sentences need it", items_path)
  sequences = [[catalog.index(a) for a in seq] for seq in kept_asin_seqs]
  report = {
      "interactions_without_metadata": missing_interactions,
      "items_without_metadata": len(missing_items),
      "users_left_empty": empty_users,
      "users_too_short": short_users,
      "items_never_interacted": len(items) - len(catalog),
      "items_without_title": untitled,
  }
  for key, value in report.items():
    if value:
      logger.warning("%s: %s = %d (see tiger_jax.data.processed for the rule)", directory, key, value)
  return Dataset(name=name, sessions=Sessions(kept_users, sequences), catalog=catalog, report=report)
