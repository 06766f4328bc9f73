"""The one in-memory form every reader produces: an item catalogue and users' chronological sessions."""
from __future__ import annotations

import dataclasses
import statistics
from typing import Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Item:
  """One catalogue item with the Amazon 2014 metadata fields TIGER's sentences use."""
  asin: str
  title: Optional[str] = None
  brand: Optional[str] = None
  categories: tuple[tuple[str, ...], ...] = ()
  price: Optional[float] = None


class ItemCatalog:
  """Items in a fixed order; an item's position is its integer index everywhere downstream."""

  def __init__(self, items: Sequence[Item]):
    self.items: list[Item] = list(items)
    self._index = {item.asin: i for i, item in enumerate(self.items)}
    if len(self._index) != len(self.items):
      raise ValueError("ItemCatalog: duplicate asin in the item list")

  def __len__(self) -> int:
    return len(self.items)

  def __contains__(self, asin: str) -> bool:
    return asin in self._index

  def index(self, asin: str) -> int:
    return self._index[asin]

  @property
  def asins(self) -> list[str]:
    return [item.asin for item in self.items]


@dataclasses.dataclass
class Sessions:
  """Each user's items (catalogue indices) in chronological order."""
  users: list[str]
  sequences: list[list[int]]

  def __post_init__(self):
    if len(self.users) != len(self.sequences):
      raise ValueError(f"Sessions: {len(self.users)} users but {len(self.sequences)} sequences")

  def __len__(self) -> int:
    return len(self.users)


@dataclasses.dataclass
class Dataset:
  """A category's sessions plus its catalogue; what every later stage starts from."""
  name: str
  sessions: Sessions
  catalog: ItemCatalog
  report: dict = dataclasses.field(default_factory=dict)  # what the reader dropped, and why (counts)

  def stats(self) -> dict:
    lengths = [len(s) for s in self.sessions.sequences]
    return {
        "dataset": self.name,
        "users": len(self.sessions),
        "items": len(self.catalog),
        "interactions": sum(lengths),
        "mean_length": sum(lengths) / max(len(lengths), 1),
        "median_length": statistics.median(lengths) if lengths else 0,
    }
