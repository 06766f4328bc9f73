"""Errors shared by the data readers, so callers can catch bad input from any format in one place."""
from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class DataFormatError(ValueError):
  """A data file's content is unusable; says which file, line (1-based) and field, so it can be fixed."""

  def __init__(self, message: str, path: Optional[PathLike] = None, line: Optional[int] = None,
               field: Optional[str] = None):
    self.message = message
    self.path = None if path is None else os.fspath(path)
    self.line = line
    self.field = field
    super().__init__(self._format())

  def _format(self) -> str:
    where = []
    if self.path is not None:
      where.append(self.path)
    if self.line is not None:
      where.append(f"line {self.line}")
    if self.field is not None:
      where.append(f"field {self.field!r}")
    return f"{', '.join(where)}: {self.message}" if where else self.message

  def __reduce__(self):
    # Keeps the structured fields when the error crosses a process boundary (multiprocessing, pickling).
    return (type(self), (self.message, self.path, self.line, self.field))


def missing_file_error(path: PathLike, what: str, hint: str = "") -> FileNotFoundError:
  """A FileNotFoundError whose message says what the file was for and how to get it."""
  # Built from the message alone: OSError's (errno, strerror, filename) form would print the path twice.
  path = os.fspath(path)
  return FileNotFoundError(f"{what} not found: {path}" + (f" ({hint})" if hint else ""))
