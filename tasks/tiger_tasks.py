"""SeqIO tasks `tiger_beauty`, `tiger_sports`, `tiger_toys`, and `register_tiger_task` for any other dataset.

Each example is one next-item prediction of the leave-one-out split (tiger_jax.data.splits):
  inputs  = [user token] + the 4 Semantic-ID tokens of each history item, oldest first (no EOS)
  targets = the target item's 4 Semantic-ID tokens (+ EOS, appended by the output feature)
plus two pass-through features the feature converter drops: `user_index`, `target_item`.

Source: a `seqio.FunctionDataSource` over arrays built in memory from the reader and the ID table. A TFDS
builder was not used: the examples are a pure function of two small files and of the Semantic-ID table, which
changes with every RQ-VAE run, so a TFDS copy on disk would be one more artifact to key and invalidate, and
the task cache (tasks/cache_tasks.py) already plays the role of seqio's offline cache.

The Semantic-ID table is resolved when the dataset is built, not at import: an explicit `semantic_ids_path`,
else `$TIGER_SEMANTIC_IDS` (path to a semantic_ids.npz); without either it is an error. Random IDs (a
baseline) only when asked for by name: `random` or `random:SEED`.

Cold start (paper Sec. 4.3): `tiger_<dataset>_coldstart` tasks read the same data, but their train and
validation splits leave out the unseen items of a `cold_start_split.json` (tiger_jax.data.cold_start;
`cold_start_split_path`, else `$TIGER_COLD_START_SPLIT`); the test split and the catalogue are unchanged.

User-token ablation (paper Table 8): `tiger_<dataset>_nouser` tasks are the same examples without the hashed
user token in front of the inputs (`use_user_token_for(name)` gives a task name's default).

For the real t5x (gin/t5x/): each task carries `semantic_id_postprocessor` and the metric `retrieval_metrics`
(Recall/NDCG@5/10 over the decoded IDs of `return_all_decodes`), and `semantic_id_trie(name)` gives the
catalogue's valid IDs to the constrained decode_fn (tiger_jax/t5x_adapter.py).
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import numpy as np

from tiger_jax import data as data_lib
from tiger_jax import decoding
from tiger_jax import metrics as metrics_lib
from tiger_jax import semantic_ids as sid_lib
from tiger_jax.data import splits as splits_lib
from tiger_jax import vocab as vocab_lib

MAX_HISTORY = splits_lib.MAX_HISTORY
NUM_SID_TOKENS = vocab_lib.DEFAULT_LAYOUT.num_levels
TASK_FEATURE_LENGTHS = {"inputs": 1 + MAX_HISTORY * NUM_SID_TOKENS, "targets": NUM_SID_TOKENS + 1}
BUILTIN_DATASETS = {"tiger_beauty": "beauty", "tiger_sports": "sports", "tiger_toys": "toys"}
COLD_START_SUFFIX = "_coldstart"
NO_USER_SUFFIX = "_nouser"
# name -> (data_dir, semantic_ids_path) as given to register_tiger_task (None: resolved when used, as the task's
# dataset_fn resolves it).
_TASK_SOURCES: dict[str, tuple[Optional[str], Optional[str]]] = {}


def data_root() -> str:
  """Where `beauty/`, `sports/`, `toys/` live: `$TIGER_DATA_DIR`, else the project's bundled data/."""
  return os.environ.get("TIGER_DATA_DIR", data_lib.BUNDLED_DATA_DIR)


def default_data_dir(task_name: str) -> str:
  """`<data_root()>/<dataset>` for `tiger_<dataset>` and its variants `tiger_<dataset>_{coldstart,nouser}`."""
  name = task_name.removeprefix("tiger_").removesuffix(NO_USER_SUFFIX).removesuffix(COLD_START_SUFFIX)
  return os.path.join(data_root(), name)


def use_user_token_for(task_name: str) -> bool:
  """A task's default for the user token: off for the `*_nouser` variants (Table 8), on otherwise."""
  return not task_name.endswith(NO_USER_SUFFIX)


def resolve_cold_start_split(task_name: str, cold_start_split_path: Optional[str]) -> Optional[str]:
  """The split file of a cold-start task (explicit, else $TIGER_COLD_START_SPLIT); None for other tasks."""
  path = cold_start_split_path
  if path is None and task_name.endswith(COLD_START_SUFFIX):
    path = os.environ.get("TIGER_COLD_START_SPLIT")
    if not path:
      raise ValueError(f"{task_name}: a cold-start task needs its split (cold_start_split_path or "
                       "$TIGER_COLD_START_SPLIT; python -m tiger_jax.data.cold_start writes one)")
  return path


def excluded_items(dataset: data_lib.Dataset, cold_start_split_path: Optional[str]) -> Optional[np.ndarray]:
  """Catalogue indices of the split's unseen items (None without a split)."""
  if not cold_start_split_path:
    return None
  from tiger_jax.data import cold_start  # pylint: disable=g-import-not-at-top
  return cold_start.ColdStartSplit.load(cold_start_split_path).unseen_indices(dataset.catalog.asins)


@functools.lru_cache(maxsize=8)
def _load(data_dir: str) -> data_lib.Dataset:
  return data_lib.load_dataset(data_dir)


RANDOM_IDS = "random"


def semantic_ids_required_message(what: str = "--semantic_ids") -> str:
  """The one-line error for a missing Semantic-ID table (random IDs are never a silent default)."""
  return (f"no Semantic-ID table given: pass {what}=WORK/semantic_ids.npz (written by python -m "
          f"tiger_jax.semantic_ids), or {what}=random[:SEED] to ask for random IDs, or set $TIGER_SEMANTIC_IDS")


def parse_random_spec(spec: str) -> Optional[int]:
  """The seed of a `random` / `random:SEED` table spec; None when `spec` names a file."""
  if spec == RANDOM_IDS:
    return 0
  if spec.startswith(RANDOM_IDS + ":"):
    seed = spec[len(RANDOM_IDS) + 1:]
    if not seed.lstrip("-").isdigit():
      raise ValueError(f"semantic ids {spec!r}: expected 'random' or 'random:SEED' with an integer SEED")
    return int(seed)
  return None


def resolve_semantic_ids(dataset: data_lib.Dataset, semantic_ids_path: Optional[str],
                         what: str = "semantic_ids_path") -> sid_lib.SemanticIds:
  """The ID table for `dataset`, checked to cover exactly its catalogue.

  `semantic_ids_path`: a semantic_ids.npz, or 'random' / 'random:SEED' for a seeded random table; None reads
  $TIGER_SEMANTIC_IDS, and without it is an error (`what` names the argument in that message).
  """
  path = semantic_ids_path or os.environ.get("TIGER_SEMANTIC_IDS")
  if not path:
    raise ValueError(semantic_ids_required_message(what))
  seed = parse_random_spec(path)
  if seed is not None:
    return sid_lib.random_semantic_ids(np.array(dataset.catalog.asins), seed=seed)
  table = sid_lib.SemanticIds.load(path)
  missing = set(dataset.catalog.asins) - set(table.asins.tolist())
  if missing:
    raise ValueError(f"{path}: no Semantic ID for {len(missing)} catalogue items, e.g. {sorted(missing)[:5]}")
  return table


def item_tokens(dataset: data_lib.Dataset, table: sid_lib.SemanticIds,
                layout: vocab_lib.TokenLayout = vocab_lib.DEFAULT_LAYOUT) -> np.ndarray:
  """[num_items, num_levels] token ids in catalogue order."""
  row = {asin: i for i, asin in enumerate(table.asins.tolist())}
  codes = table.codes[[row[a] for a in dataset.catalog.asins]]
  return layout.codes_to_tokens(codes)


def build_examples(dataset: data_lib.Dataset, table: sid_lib.SemanticIds, split: str,
                   use_user_token: bool = True, max_history: int = MAX_HISTORY,
                   layout: vocab_lib.TokenLayout = vocab_lib.DEFAULT_LAYOUT,
                   exclude_items: Optional[np.ndarray] = None) -> dict[str, object]:
  """Token streams of one split: ragged `inputs` as (values, row_lengths), dense `targets` and extras.

  `exclude_items` (cold start) keeps those catalogue items out of train and validation.
  """
  examples = splits_lib.leave_one_out(dataset.sessions, split, max_history, exclude_items)
  tokens = item_tokens(dataset, table, layout)
  users = np.array([layout.user_token(u) for u in dataset.sessions.users], dtype=np.int32)
  inputs = []
  for user, history in zip(examples.user_index, examples.history):
    prefix = [users[user]] if use_user_token else []
    inputs.append(np.concatenate([np.array(prefix, np.int32), tokens[history].reshape(-1)]))
  return {
      "inputs": inputs,
      "targets": tokens[examples.target],
      "user_index": examples.user_index,
      "target_item": examples.target,
  }


def _dataset_fn(split, shuffle_files, seed=None, *, data_dir, semantic_ids_path, use_user_token,
                cold_start_split_path=None):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  del shuffle_files, seed  # one in-memory source; seqio shuffles examples downstream when asked
  dataset = _load(data_dir)
  table = resolve_semantic_ids(dataset, semantic_ids_path)
  ex = build_examples(dataset, table, split, use_user_token=use_user_token,
                      exclude_items=excluded_items(dataset, cold_start_split_path))
  lengths = np.array([len(x) for x in ex["inputs"]], dtype=np.int64)
  values = np.concatenate(ex["inputs"]) if ex["inputs"] else np.zeros([0], np.int32)
  return tf.data.Dataset.from_tensor_slices({
      "inputs": tf.RaggedTensor.from_row_lengths(values, lengths),
      "targets": ex["targets"],
      "user_index": ex["user_index"],
      "target_item": ex["target_item"],
  })


def register_tiger_task(name: str, data_dir: Optional[str] = None, semantic_ids_path: Optional[str] = None,
                        use_user_token: Optional[bool] = None, overwrite: bool = True,
                        cold_start_split_path: Optional[str] = None):
  """Registers (or replaces) a TIGER task over any dataset directory, raw Amazon 2014 or processed format.

  Args:
    name: task name, e.g. "tiger_garden".
    data_dir: the category directory; default `default_data_dir(name)`, resolved lazily.
    semantic_ids_path: a `semantic_ids.npz`, or 'random' / 'random:SEED'; default `$TIGER_SEMANTIC_IDS`
      (resolved when the dataset is built; an error if neither is given).
    use_user_token: prepend the hashed user token to the inputs (the paper's default; Table 8 ablates it);
      None: `use_user_token_for(name)` (off for `*_nouser` names).
    overwrite: replace an existing task of that name.
    cold_start_split_path: a cold_start_split.json whose unseen items train/validation leave out; default
      for `*_coldstart` names: `$TIGER_COLD_START_SPLIT` (resolved lazily, an error if unset).
  """
  import seqio  # pylint: disable=g-import-not-at-top
  if semantic_ids_path:
    parse_random_spec(semantic_ids_path)  # a malformed 'random:SEED' fails here, not at the first read
  if use_user_token is None:
    use_user_token = use_user_token_for(name)
  if overwrite and name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  vocabulary = vocab_lib.seqio_vocabulary()

  def dataset_fn(split, shuffle_files, seed=None):
    directory = data_dir or default_data_dir(name)
    return _dataset_fn(split, shuffle_files, seed, data_dir=directory,
                       semantic_ids_path=semantic_ids_path, use_user_token=use_user_token,
                       cold_start_split_path=resolve_cold_start_split(name, cold_start_split_path))

  task = seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=splits_lib.SPLITS),
      preprocessors=[seqio.preprocessors.append_eos_after_trim],
      output_features={
          "inputs": seqio.Feature(vocabulary, add_eos=False),
          "targets": seqio.Feature(vocabulary, add_eos=True),
      },
      postprocess_fn=semantic_id_postprocessor,
      metric_fns=[retrieval_metrics],
  )
  _TASK_SOURCES[name] = (data_dir, semantic_ids_path)
  return task


def semantic_id_trie(task_name: str, layout: vocab_lib.TokenLayout = vocab_lib.DEFAULT_LAYOUT
                     ) -> decoding.SemanticIdTrie:
  """The valid Semantic IDs of a registered task's catalogue (catalogue order), for constrained decoding.

  The same dataset and ID table the task's examples are built from (a cold-start task's catalogue is the whole
  catalogue: its test targets include the unseen items).
  """
  if task_name not in _TASK_SOURCES:
    raise ValueError(f"semantic_id_trie: {task_name!r} is not a task registered by tasks.tiger_tasks "
                     f"(registered: {sorted(_TASK_SOURCES)})")
  data_dir, semantic_ids_path = _TASK_SOURCES[task_name]
  dataset = _load(data_dir or default_data_dir(task_name))
  codes = layout.tokens_to_codes(item_tokens(dataset, resolve_semantic_ids(dataset, semantic_ids_path), layout))
  return decoding.SemanticIdTrie.from_codes(codes, layout.codebook_size)


def _semantic_id_text(decoded: str) -> str:
  names = decoded.split()
  end = names.index("</s>") if "</s>" in names else len(names)
  return " ".join(name for name in names[:end] if name != "<pad>")


def semantic_id_postprocessor(output_or_target, example=None, is_target=False):
  """Decoded text -> the Semantic ID's token names without EOS or padding ('' for a dead beam).

  Works on one decode or on the list of `return_all_decodes` (order kept).
  """
  del example, is_target
  if isinstance(output_or_target, bytes):
    output_or_target = output_or_target.decode("utf-8")
  if isinstance(output_or_target, str):
    return _semantic_id_text(output_or_target)
  return [semantic_id_postprocessor(x) for x in output_or_target]


def retrieval_metrics(targets, predictions, ks=metrics_lib.DEFAULT_KS) -> dict[str, float]:
  """Recall@K and NDCG@K (tiger_jax.metrics) of the decoded IDs against each target ID.

  `predictions[i]` is example i's list of decoded IDs in t5x's `return_all_decodes` order: ascending score,
  best last. Empty entries (dead beams) and repeats are dropped before ranking. A Semantic ID names one item, so
  matching IDs is matching items; IDs outside the catalogue (only with `constrain=False`) keep their rank
  positions here, whereas `metrics.clean_ranked` drops them.
  """
  if len(targets) != len(predictions):
    raise ValueError(f"retrieval_metrics: {len(targets)} targets but {len(predictions)} predictions")
  ranks = np.full(len(targets), -1, np.int64)
  for i, (target, decodes) in enumerate(zip(targets, predictions)):
    if isinstance(decodes, (str, bytes)):
      raise ValueError(f"retrieval_metrics: example {i} has one decode, not a ranked list; decode with "
                       "return_all_decodes=True (models.DecoderParams in gin/t5x/models/tiger_t5.gin)")
    ranked = list(dict.fromkeys(d for d in reversed(list(decodes)) if d))
    if target in ranked:
      ranks[i] = ranked.index(target)
  return metrics_lib.ranking_metrics(ranks, ks)


def _seqio_installed() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec("seqio") is not None


# Without seqio (e.g. a GPU machine with jax only) the numpy builders above still serve
# `python -m tasks.cache_tasks --backend=numpy`; only the TaskRegistry entries are missing.
for _task_name in (BUILTIN_DATASETS if _seqio_installed() else ()):
  register_tiger_task(_task_name)
  register_tiger_task(_task_name + COLD_START_SUFFIX)
  register_tiger_task(_task_name + NO_USER_SUFFIX)
