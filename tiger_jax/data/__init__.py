"""Readers for Amazon 2014 data (raw and processed) and the leave-one-out split."""
from __future__ import annotations

import os
from typing import Optional

from tiger_jax.data.types import Dataset, Item, ItemCatalog, Sessions

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLED_DATA_DIR = os.path.join(PACKAGE_ROOT, "data")


def load_dataset(directory: str, name: Optional[str] = None) -> Dataset:
  """Reads a category directory in either format: processed (sequences + items) or raw Amazon 2014 files."""
  from tiger_jax.data import amazon_raw, processed  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: dataset directory not found")
  if processed.is_processed_dir(directory):
    return processed.read_processed_dir(directory, name)
  raw = amazon_raw.find_raw_files(directory)
  if raw is not None:
    reviews, meta = raw
    return amazon_raw.read_raw_category(reviews, meta, name or os.path.basename(os.path.normpath(directory)))
  raise FileNotFoundError(
      f"{directory}: neither processed files ({processed.SEQUENCES_FILE}, {processed.ITEMS_FILE}) nor raw "
      "Amazon 2014 files (reviews_<Category>_5.json.gz, meta_<Category>.json.gz) found")


def bundled_dataset_dir(name: str) -> str:
  return os.path.join(BUNDLED_DATA_DIR, name)
