"""Recommendations from a trained MODEL_DIR: a Python API and a command line.

  from tiger_jax.infer import Recommender
  rec = Recommender.from_model_dir("work/beauty/model_quick")
  rec.recommend(["B004756YJA", "B0020YLEYK"], user="A1YJEY40YUW4SE", k=10)
  -> [{"asin": ..., "title": ..., "score": log-prob}, ...]
  rec.recommend_batch([["B004756YJA"], [], ...], users=[None, "A1YJEY40YUW4SE", ...], k=10)  # batch_size at a time

  python -m tiger_jax.infer --model_dir=work/beauty/model_quick --history=B004756YJA,B0020YLEYK [--user=ID]
  python -m tiger_jax.infer --model_dir=work/beauty/model_quick --histories_file=histories.jsonl

The model is rebuilt from MODEL_DIR/config.gin (written by training), the catalogue and its Semantic IDs
from the task cache the run trained on (checked against MODEL_DIR/provenance.json: another cache or ID
table is refused). A relative TASK_CACHE_DIR in config.gin is relative to the folder training ran in; it is
found again from where MODEL_DIR lies (`path_from_config`), so infer works from any folder. Histories are
handled as in training: the most recent 20 items are kept, an unknown ASIN is an error that lists it, an
empty history (a cold user) still gets an answer. A history is a list of ASINs (a bare string is a
TypeError), and k lies in [1, num_beams]. The command line keeps its traced and compiled beam search in the
persistent compilation cache (tiger_jax/compilation.py), so a later call does not build it again.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util  # noqa: F401  (gin-config 0.5.0 needs it imported on Python 3.11)
import json
import logging
import os
from typing import Optional, Sequence

import gin
import numpy as np

from tiger_jax import checkpoints
from tiger_jax import compilation
from tiger_jax import eval as eval_lib
from tiger_jax import program_cache as program_cache_lib
from tiger_jax import provenance
from tiger_jax import utils
from tiger_jax.data import splits
from tiger_jax import vocab as vocab_lib


log = logging.getLogger("tiger_jax.infer")
DEFAULT_NUM_BEAMS = 20


class UnknownItemError(KeyError):
  """History items that are not in the trained catalogue (`items`); `index`: the history's place in a batch."""

  def __init__(self, message: str, items: Sequence[str] = (), index: Optional[int] = None):
    super().__init__(message)
    self.items, self.index = list(items), index


def check_history(history) -> list[str]:
  """The history as a list of ASIN strings; a bare string (one ASIN or a comma list) is a TypeError."""
  if isinstance(history, (str, bytes)):
    text = history.decode() if isinstance(history, bytes) else history
    example = [a.strip() for a in text.split(",") if a.strip()][:3]
    raise TypeError(f"history must be a list of ASINs (oldest first), got the string {history!r:.60}; "
                    f"pass a list, e.g. {example}")
  try:
    items = list(history)
  except TypeError:
    raise TypeError(f"history must be a list of ASINs, got {type(history).__name__}") from None
  wrong = [(i, a) for i, a in enumerate(items) if not isinstance(a, str)]
  if wrong:
    i, a = wrong[0]
    raise TypeError(f"history items must be ASIN strings; item {i} is {type(a).__name__} {a!r:.40}")
  return items


def check_k(k, num_beams: int) -> int:
  """k as an int in [1, num_beams]: beam search returns at most num_beams items."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise TypeError(f"k must be an integer in [1, {num_beams}], got {type(k).__name__} {k!r}")
  if not 1 <= k <= num_beams:
    raise ValueError(f"k={k} is outside the valid range [1, {num_beams}] (1 to the number of beams; "
                     "raise num_beams for more)")
  return int(k)


def path_from_config(path: Optional[str], config_model_dir: Optional[str], model_dir: str) -> Optional[str]:
  """A path as config.gin stores it, made usable from any working directory.

  Relative paths in config.gin are relative to the folder training ran in. When MODEL_DIR is stored
  relative too, that folder is where `model_dir` lies minus MODEL_DIR, so the path is taken relative to
  the model dir (this also follows a moved work tree). With an absolute MODEL_DIR the folder is not
  recorded: the path is tried from the current folder, with a warning.
  """
  if path is None or os.path.isabs(path):
    return path
  if config_model_dir and not os.path.isabs(config_model_dir):
    relative = os.path.relpath(os.path.normpath(path), os.path.normpath(config_model_dir))
    return os.path.normpath(os.path.join(os.path.abspath(model_dir), relative))
  log.warning("config.gin stores the relative path %r and an absolute MODEL_DIR, so the folder training ran "
              "in is unknown; resolving it from the current folder %s (pass cache_dir to choose)", path,
              os.getcwd())
  return os.path.abspath(path)


def bound_model(model):
  """Returns its argument: gin binds it to %MODEL so that the model is built as training built it."""
  return model


def model_from_config(config_path: str, text: Optional[str] = None):
  """Rebuilds MODEL from a training run's effective config.gin (written with dynamic registration);
  `text`, when given, is that file's content already read."""
  if text is None:
    with open(config_path) as f:
      text = f.read()
  text += "\nfrom tiger_jax import infer as infer_script\ninfer_script.bound_model.model = %MODEL\n"
  with gin.unlock_config():
    gin.clear_config()
    gin.parse_config(text)
  from tiger_jax import infer as importable  # pylint: disable=g-import-not-at-top,import-self
  return gin.get_configurable(importable.bound_model)()


class Recommender:
  """Top-K next items for a history of ASINs, from a model, its params and the catalogue tables."""

  def __init__(self, model, params, tables: eval_lib.CatalogTables, num_beams: int = DEFAULT_NUM_BEAMS,
               constrain: bool = True, layout: vocab_lib.TokenLayout = vocab_lib.DEFAULT_LAYOUT,
               max_history: int = splits.MAX_HISTORY, input_length: Optional[int] = None,
               program_cache: Optional[program_cache_lib.ProgramCache] = None, batch_size: int = 256):
    """program_cache: a cache whose configuration stands for `model` (from_model_dir passes that of
    config.gin); the beam search is then kept on disk as a traced program and a later process skips tracing.
    batch_size: histories per beam search in recommend_batch (recommend decodes one)."""
    if num_beams < 1:
      raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.tables, self.layout, self.max_history, self.num_beams = tables, layout, max_history, num_beams
    self.input_length = input_length or 1 + max_history * layout.num_levels
    self._index = {a: i for i, a in enumerate(tables.asins.tolist())}
    trie = tables.trie(layout).to_device()  # once: both retrievers then hold this one device table
    self._retriever = eval_lib.Retriever(model, params, trie, num_beams, constrain,
                                         batch_size=1, length_buckets=None, program_cache=program_cache)
    # Built on first use; it pads each batch to the shortest of eval's length buckets that holds it, and a
    # bucket's last batch only to the next power of two rows.
    self._make_batch_retriever = functools.partial(eval_lib.Retriever, model, params, trie, num_beams, constrain,
                                                   batch_size=batch_size, program_cache=program_cache,
                                                   shrink_last_batch=True)
    self._batch_retriever: Optional[eval_lib.Retriever] = None

  @classmethod
  def from_model_dir(cls, model_dir: str, checkpoint: str = "best", cache_dir: Optional[str] = None,
                     task: Optional[str] = None, **kwargs) -> "Recommender":
    config = os.path.join(model_dir, "config.gin")
    if not os.path.exists(config):
      raise utils.MissingArtifactError(f"{config} not found: is {model_dir} a training MODEL_DIR?")
    checkpoints.parse_checkpoint_choice(checkpoint)
    with open(config) as f:
      config_text = f.read()
    model = model_from_config(config, config_text)
    kwargs.setdefault("program_cache", program_cache_lib.for_config(config_text))
    if cache_dir is None:
      cache_dir = path_from_config(_macro("TASK_CACHE_DIR"), _macro("MODEL_DIR", required=False), model_dir)
    task = task or _macro("MIXTURE_OR_TASK_NAME")
    provenance.check_cache(model_dir, provenance.cache_fingerprint(cache_dir, task), "infer", strict=False)
    params, _ = checkpoints.restore_params(model_dir, checkpoint)
    return cls(model, params, eval_lib.CatalogTables.load(cache_dir, task), **kwargs)

  def encode_history(self, history: Sequence[str], user: Optional[str] = None,
                     index: Optional[int] = None) -> np.ndarray:
    """[1, input_length] encoder tokens, exactly as the task builds them (user token + 4 tokens per item);
    `index` (a position in a batch) is named in the errors."""
    return self._encode_checked(check_history(history), user, index)

  def _encode_checked(self, history: list[str], user: Optional[str], index: Optional[int]) -> np.ndarray:
    """encode_history for a history check_history has already returned."""
    unknown = [a for a in history if a not in self._index]
    if unknown:
      where = "" if index is None else f"history {index}: "
      raise UnknownItemError(f"{where}{len(unknown)} history items are not in the catalogue: {unknown}",
                             unknown, index)
    recent = [self._index[a] for a in history][-self.max_history:]
    tokens = [self.layout.user_token(user)] if user else []
    tokens += self.tables.item_tokens[recent].reshape(-1).tolist()
    row = np.zeros([1, self.input_length], np.int32)
    row[0, :len(tokens)] = tokens
    return row

  def recommend(self, history: Sequence[str], user: Optional[str] = None, k: int = 10,
                exclude_history: bool = False) -> list[dict]:
    """Up to k items (fewer only when exclude_history removes some), best first."""
    history = check_history(history)
    k = check_k(k, self.num_beams)
    items, scores = self._retriever.retrieve(self._encode_checked(history, user, None))
    return self._top(items[0], scores[0], k, set(history) if exclude_history else set())

  def recommend_batch(self, histories: Sequence[Sequence[str]], users: Optional[Sequence[Optional[str]]] = None,
                      k: int = 10, exclude_history: bool = False) -> list[list[dict]]:
    """recommend() for each history (and user, None for none), decoded `batch_size` at a time rather than one
    by one; every history is checked before anything is decoded."""
    if isinstance(histories, (str, bytes)):
      raise TypeError("histories must be a list of histories (each a list of ASINs), got a string")
    checked = []
    for i, history in enumerate(histories):
      try:
        checked.append(check_history(history))
      except TypeError as e:
        raise TypeError(f"history {i}: {e}") from None
    histories = checked
    users = [None] * len(histories) if users is None else list(users)
    if len(users) != len(histories):
      raise ValueError(f"{len(users)} users for {len(histories)} histories; pass one user (or None) per history")
    k = check_k(k, self.num_beams)
    if not histories:
      return []
    tokens = np.concatenate([self._encode_checked(h, u, i) for i, (h, u) in enumerate(zip(histories, users))])
    if self._batch_retriever is None:
      self._batch_retriever = self._make_batch_retriever()
    items, scores = self._batch_retriever.retrieve(tokens)
    return [self._top(items[i], scores[i], k, set(h) if exclude_history else set())
            for i, h in enumerate(histories)]

  def _top(self, items: np.ndarray, scores: np.ndarray, k: int, seen: set) -> list[dict]:
    """The first k valid, distinct items of one beam search outside `seen`, as recommend returns them."""
    out, taken = [], set()
    for item, score in zip(items.tolist(), scores.tolist()):
      if item < 0 or item in taken or self.tables.asins[item] in seen:
        continue
      taken.add(item)
      out.append({"asin": str(self.tables.asins[item]), "title": str(self.tables.titles[item]),
                  "score": float(score)})
      if len(out) == k:
        break
    return out


def _macro(name: str, required: bool = True):
  try:
    return gin.query_parameter(f"%{name}")
  except ValueError as e:
    if not required:
      return None
    raise ValueError(f"config.gin does not set {name}; pass it explicitly") from e


def read_histories(path: str) -> tuple[list[list[str]], list[Optional[str]], list[int]]:
  """(histories, users, line numbers) of a JSON-lines file of {"history": [ASIN, ...], "user": ID or null};
  blank lines are skipped and anything else is a ValueError naming the file and line."""
  histories, users, lines = [], [], []
  try:
    f = open(path)
  except OSError as e:
    raise ValueError(f"{path}: cannot read it ({e.strerror or e})") from None
  with f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(row, dict) or "history" not in row:
        raise ValueError(f'{where}: expected an object with "history" (a list of ASINs) and an optional "user"')
      extra = sorted(set(row) - {"history", "user"})
      if extra:
        raise ValueError(f'{where}: unknown fields {extra}; a line holds "history" and an optional "user"')
      user = row.get("user")
      if user is not None and not isinstance(user, str):
        raise ValueError(f'{where}: "user" must be a string (a reviewerID) or null, got {type(user).__name__}')
      try:
        histories.append(check_history(row["history"]))
      except TypeError as e:
        raise ValueError(f'{where}: "history": {e}') from None
      users.append(user)
      lines.append(line_no)
  return histories, users, lines


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description="Top-K recommendations for a history of ASINs.")
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--history", default="", help="Comma-separated ASINs, oldest first (may be empty).")
  parser.add_argument("--user", default=None, help="reviewerID (for the user token), optional.")
  parser.add_argument("--histories_file", default=None,
                      help='JSON lines of {"history": [ASIN, ...], "user": ID or null}, instead of --history and '
                      '--user: decoded in batches; one output line per input line, {"line", "user", "items"}.')
  parser.add_argument("--batch_size", type=int, default=256, help="Histories per beam search (--histories_file).")
  parser.add_argument("--k", type=int, default=10, help="How many items, in [1, --num_beams].")
  parser.add_argument("--exclude_history", action="store_true",
                      help="Leave out items of the history itself (then fewer than k may come back).")
  parser.add_argument("--num_beams", type=int, default=DEFAULT_NUM_BEAMS)
  parser.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step.")
  parser.add_argument("--cache_dir", default=None, help="Task cache root (default: config.gin's "
                      "TASK_CACHE_DIR, found from the model dir).")
  parser.add_argument("--task", default=None)
  parser.add_argument("--compilation_cache_dir", default=None,
                      help="Persistent compilation cache (tiger_jax/compilation.py; 'off' to disable): a later "
                      "call loads the traced and compiled beam search instead of building it again.")
  args = parser.parse_args(argv)
  try:  # checked before the model is loaded
    check_k(args.k, args.num_beams)
    checkpoints.parse_checkpoint_choice(args.checkpoint)
    if args.batch_size < 1:
      raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.histories_file is not None and (args.history or args.user is not None):
      raise ValueError("--histories_file replaces --history and --user; pass one or the other")
    compilation.enable_compilation_cache(args.compilation_cache_dir)
  except ValueError as e:
    parser.error(str(e))
  batch = None
  if args.histories_file is not None:
    try:
      batch = read_histories(args.histories_file)
    except ValueError as e:
      utils.exit_with_error(str(e))
  try:
    rec = Recommender.from_model_dir(args.model_dir, args.checkpoint, args.cache_dir, args.task,
                                     num_beams=args.num_beams, batch_size=args.batch_size)
  except (provenance.ProvenanceError, utils.MissingArtifactError) as e:
    utils.exit_with_error(str(e))
  if batch is not None:
    histories, users, lines = batch
    try:
      tops = rec.recommend_batch(histories, users, args.k, args.exclude_history)
    except UnknownItemError as e:
      utils.exit_with_error(f"{args.histories_file}:{lines[e.index]}: {len(e.items)} history items are not in "
                            f"the catalogue: {e.items}")
    for line, user, top in zip(lines, users, tops):
      print(json.dumps({"line": line, "user": user,
                        "items": [{"rank": rank, **row} for rank, row in enumerate(top, start=1)]}))
    return
  history = [a for a in args.history.split(",") if a]
  try:
    top = rec.recommend(history, args.user, args.k, args.exclude_history)
  except UnknownItemError as e:
    utils.exit_with_error(e.args[0])
  for rank, row in enumerate(top, start=1):
    print(json.dumps({"rank": rank, **row}))


if __name__ == "__main__":
  from tiger_jax import infer as _infer_module  # pylint: disable=import-self
  _infer_module.main()
