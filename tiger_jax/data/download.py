"""Fetches a category's raw Amazon 2014 files (5-core reviews and metadata): they cannot be bundled.

  python -m tiger_jax.data.download --category Toys_and_Games --out_dir ~/data/amazon2014/raw
  tiger-download --category toys --out_dir DIR

Files already present are skipped (`--force` fetches again). Each file is written to `<name>.part` and
renamed when complete, so an interrupted download never leaves a file that looks whole.
"""
from __future__ import annotations

import argparse
import http.client
import logging
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence, Union

from tiger_jax.data.amazon_raw import meta_filename, reviews_filename

LOGGER = logging.getLogger("tiger_jax.data")

PathLike = Union[str, "os.PathLike[str]"]

# The 2014 release ("Image-based recommendations on styles and substitutes", SIGIR 2015), linked from
# jmcauley.ucsd.edu/data/amazon/ (2014 version); override with --base_url for a mirror.
DEFAULT_BASE_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"

# Categories of the 2014 release that have a 5-core reviews file.
CATEGORIES = (
    "Books", "Electronics", "Movies_and_TV", "CDs_and_Vinyl", "Clothing_Shoes_and_Jewelry",
    "Home_and_Kitchen", "Kindle_Store", "Sports_and_Outdoors", "Cell_Phones_and_Accessories",
    "Health_and_Personal_Care", "Toys_and_Games", "Video_Games", "Tools_and_Home_Improvement", "Beauty",
    "Apps_for_Android", "Office_Products", "Pet_Supplies", "Automotive", "Grocery_and_Gourmet_Food",
    "Patio_Lawn_and_Garden", "Baby", "Digital_Music", "Musical_Instruments", "Amazon_Instant_Video",
)
# The TIGER paper's three datasets by their short names.
ALIASES = {"beauty": "Beauty", "sports": "Sports_and_Outdoors", "toys": "Toys_and_Games"}


class DownloadError(OSError):
  """A file could not be fetched; the message says which URL and what to do."""


def resolve_category(name: str) -> str:
  """The release's spelling of a category ('toys', 'toys and games' -> 'Toys_and_Games')."""
  key = name.strip().lower().replace("&", "and").replace(",", "").replace(" ", "_")
  if key in ALIASES:
    return ALIASES[key]
  for category in CATEGORIES:
    if category.lower() == key:
      return category
  LOGGER.warning("%r is not a category of the 2014 release (%s); trying it as given", name,
                 ", ".join(CATEGORIES))
  return name.strip()


class _Progress:
  """A progress line on stderr: tqdm when available, else a plain percentage every 5%."""

  def __init__(self, total: Optional[int], label: str, enabled: bool):
    self._bar = None
    self._total, self._label, self._enabled = total, label, enabled
    self._done, self._shown = 0, -1
    if enabled:
      try:
        import tqdm  # pylint: disable=g-import-not-at-top
        self._bar = tqdm.tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                              file=sys.stderr, leave=True)
      except ImportError:
        pass

  def update(self, n: int):
    self._done += n
    if self._bar is not None:
      self._bar.update(n)
    elif self._enabled:
      mib = self._done / 2**20
      if self._total:
        percent = int(100 * self._done / self._total) // 5 * 5
        if percent != self._shown:
          self._shown = percent
          print(f"\r{self._label}: {mib:.1f} MiB ({percent}%)", end="", file=sys.stderr, flush=True)
      elif int(mib) // 10 != self._shown:
        self._shown = int(mib) // 10
        print(f"\r{self._label}: {mib:.1f} MiB", end="", file=sys.stderr, flush=True)

  def close(self):
    if self._bar is not None:
      self._bar.close()
    elif self._enabled and self._shown >= 0:
      print(file=sys.stderr)


def download_file(url: str, dest: PathLike, *, force: bool = False, timeout: float = 60.0,
                  progress: bool = True, chunk_size: int = 1 << 20) -> bool:
  """Fetches url to dest atomically; returns False when dest already existed and was kept."""
  dest = Path(dest)
  if dest.is_file() and dest.stat().st_size > 0 and not force:
    LOGGER.info("%s exists; skipping (force to fetch again)", dest)
    return False
  dest.parent.mkdir(parents=True, exist_ok=True)
  part = dest.with_name(dest.name + ".part")
  expect_gzip = dest.name.endswith(".gz")
  request = urllib.request.Request(url, headers={"User-Agent": "tiger_jax-download"})
  LOGGER.info("fetching %s -> %s", url, dest)
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      length = response.headers.get("Content-Length")
      total = int(length) if length and length.isdigit() else None
      received = 0
      bar = _Progress(total, dest.name, progress)
      try:
        with open(part, "wb") as out:
          while chunk := response.read(chunk_size):
            if received == 0 and expect_gzip and not chunk.startswith(b"\x1f\x8b"):
              raise DownloadError(f"{url} did not return gzip data (starts with {chunk[:40]!r}); "
                                  "the server may have sent an error page")
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
          out.flush()
          os.fsync(out.fileno())
      finally:
        bar.close()
    if received == 0:
      raise DownloadError(f"{url} returned no data")
    if total is not None and received != total:
      raise DownloadError(f"{url}: connection closed after {received} of {total} bytes; run again")
    os.replace(part, dest)
  except urllib.error.HTTPError as e:
    hint = " (check the category name)" if e.code == 404 else ""
    raise DownloadError(f"{url}: HTTP {e.code} {e.reason}{hint}") from e
  except urllib.error.URLError as e:
    raise DownloadError(
        f"cannot reach {url} ({e.reason}); the network may be unreachable from this machine: fetch the "
        f"file elsewhere and copy it to {dest}") from e
  except (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as e:
    raise DownloadError(f"download of {url} failed ({type(e).__name__}: {e}); run again") from e
  finally:
    if part.exists():
      part.unlink()
  return True


def download_category(category: str, out_dir: PathLike, *, base_url: str = DEFAULT_BASE_URL,
                      force: bool = False, timeout: float = 60.0, progress: bool = True
                      ) -> tuple[Path, Path]:
  """Fetches `reviews_<Category>_5.json.gz` and `meta_<Category>.json.gz` into out_dir; returns their paths."""
  category = resolve_category(category)
  out_dir = Path(out_dir)
  paths = []
  for filename in (reviews_filename(category), meta_filename(category)):
    url = base_url.rstrip("/") + "/" + filename
    download_file(url, out_dir / filename, force=force, timeout=timeout, progress=progress)
    paths.append(out_dir / filename)
  return paths[0], paths[1]


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The `tiger-download` console script; returns the exit status."""
  parser = argparse.ArgumentParser(prog="tiger-download", description=__doc__.splitlines()[0])
  parser.add_argument("--category", required=True,
                      help="e.g. Toys_and_Games, Beauty, Sports_and_Outdoors (or toys, beauty, sports)")
  parser.add_argument("--out_dir", required=True, help="directory for the two .json.gz files")
  parser.add_argument("--base_url", default=DEFAULT_BASE_URL, help="where the release's files are served")
  parser.add_argument("--force", action="store_true", help="fetch again even if the files exist")
  parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait on the network")
  parser.add_argument("--no_progress", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  try:
    reviews, meta = download_category(args.category, args.out_dir, base_url=args.base_url,
                                      force=args.force, timeout=args.timeout,
                                      progress=not args.no_progress)
  except DownloadError as e:
    print(f"tiger-download: error: {e}", file=sys.stderr)
    return 1
  print(f"{reviews}\n{meta}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
