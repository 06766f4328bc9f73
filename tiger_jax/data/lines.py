"""Lines of a data file, gzip-compressed or plain, with every read error naming the file and line.

Compression is detected from the content (the gzip magic bytes), not the name, so a plain copy named
`.gz` reads as it is. A truncated or corrupt gzip stream and bytes that are not UTF-8 become a
DataFormatError naming the file and the line where reading stopped, instead of the EOFError,
BadGzipFile or UnicodeDecodeError that would name neither.
"""
from __future__ import annotations

import gzip
import json
import os
import zlib
from typing import Iterator, Sequence

from tiger_jax.data.errors import DataFormatError, PathLike, missing_file_error

GZIP_MAGIC = b"\x1f\x8b"


def read_lines(path: PathLike, what: str = "data file", missing_hint: str = "") -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, decoded line with its newline) of `path`.

  A missing file is a FileNotFoundError saying what it was for (`what`, `missing_hint`); a directory or a
  file of zero bytes is a DataFormatError. Blank lines are yielded too, so callers can count them.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise missing_file_error(path, what, missing_hint)
  if os.path.isdir(path):
    raise DataFormatError(f"expected the {what}, found a directory", path)
  with open(path, "rb") as raw:
    magic = raw.read(len(GZIP_MAGIC))
  if not magic:
    raise DataFormatError(f"{what} is empty", path)
  opener = gzip.open if magic == GZIP_MAGIC else open
  lineno = 0
  with opener(path, "rb") as f:
    lines = iter(f)
    while True:
      try:
        raw_line = next(lines)
      except StopIteration:
        break
      except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataFormatError(f"corrupt or truncated gzip data ({e}); re-download or re-write the file",
                              path, lineno + 1) from e
      lineno += 1
      try:
        text = raw_line.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataFormatError(f"not valid UTF-8 (byte 0x{raw_line[e.start]:02x} at byte {e.start + 1} of "
                              "the line); save the file as UTF-8", path, lineno) from e
      yield lineno, text


def read_json_objects(path: PathLike, what: str = "JSON-lines file", required: Sequence[str] = (),
                      missing_hint: str = "") -> Iterator[tuple[int, dict]]:
  """Yields (1-based line number, object) of a JSON-lines file, skipping blank lines.

  A line that is not JSON, not a JSON object, or lacks a `required` field is a DataFormatError naming the
  file, the line and the field, so predictions, metrics logs and catalogues all fail the same way.
  """
  for lineno, line in read_lines(path, what, missing_hint):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataFormatError(f"not valid JSON ({e.msg} at column {e.colno})", path, lineno) from None
    if not isinstance(row, dict):
      raise DataFormatError(f"expected a JSON object, got {type(row).__name__}", path, lineno)
    for field in required:
      if field not in row:
        raise DataFormatError("missing", path, lineno, field)
    yield lineno, row
