"""Stage 4: caches TIGER tasks to numpy, the way `seqio_cache_tasks` caches tasks offline.

  python -m tasks.cache_tasks --tasks=tiger_beauty --output_cache_dir=/tmp/cache \
      --semantic_ids=WORK/semantic_ids.npz [--data_dir=DIR] [--cold_start_split=WORK/cold_start_split.json]

The ID table is required (`--semantic_ids` or $TIGER_SEMANTIC_IDS); `--semantic_ids=random[:SEED]` asks for
seeded random IDs (a baseline). A task name that no module registered (e.g. `tiger_garden`) is registered
over `--data_dir` on the fly.

For each task it writes `<output_cache_dir>/<task>/{train,validation,test}.npz` with the features exactly as
`seqio.EncDecFeatureConverter` produces them (plus `user_index`, `target_item`), `items.npz` (catalogue asins,
their Semantic-ID tokens, titles, reviewerIDs: what evaluation needs to map beams back to items without TensorFlow),
and `info.json`. A task whose info.json already records the same inputs (data files, ID table, feature lengths,
cold-start split) is skipped; otherwise the log names what changed and the cache is rebuilt (its info.json
is removed first, so a half-rebuilt cache is never taken for a current one). info.json's `built_from`
records where the inputs lay, so that a consumer refusing the cache (tiger_jax.provenance) can print the
command that rebuilds it. A cold-start task (`tiger_<dataset>_coldstart`, or any task given a split) also
gets a copy of its `cold_start_split.json`, so evaluation finds the unseen items in the cache alone. The trainer
reads the cache with numpy alone (tiger_jax.utils).

`--backend=numpy` builds the same arrays without TensorFlow or seqio (`numpy_converted_split`, checked equal
to the seqio path in tests/test_tasks.py), so a GPU machine without them can go from Semantic IDs to training
in one job.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import time
from typing import Mapping, Optional, Sequence

import numpy as np

from tasks import tiger_tasks
from tiger_jax.data import splits as splits_lib
from tiger_jax import utils
from tiger_jax import vocab as vocab_lib

logger = logging.getLogger("tasks.cache_tasks")

MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                  "decoder_loss_weights")
EXTRA_FEATURES = ("user_index", "target_item")
CACHE_VERSION = 1
BACKENDS = ("seqio", "numpy")


def _hide_gpus_from_tensorflow():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")


def files_fingerprint(directory: str) -> str:
  """SHA-256 over the names and bytes of the data files (what the examples are a function of)."""
  h = hashlib.sha256()
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if os.path.isfile(path) and name.endswith((".gz", ".json", ".jsonl", ".txt")):
      h.update(name.encode())
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
  return h.hexdigest()


def converted_split(task, split: str, feature_lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
  """One split through the task and seqio's EncDecFeatureConverter, as int32 numpy arrays in source order."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  raw = task.get_dataset(sequence_length=feature_lengths, split=split, shuffle=False, use_cached=False)
  extras = raw.map(lambda ex: {k: ex[k] for k in EXTRA_FEATURES})
  converted = seqio.EncDecFeatureConverter(pack=False)(raw, feature_lengths)
  zipped = tf.data.Dataset.zip((converted, extras)).batch(16384)
  columns: dict[str, list[np.ndarray]] = {k: [] for k in MODEL_FEATURES + EXTRA_FEATURES}
  for features, extra in zipped.as_numpy_iterator():
    for k in MODEL_FEATURES:
      columns[k].append(features[k])
    for k in EXTRA_FEATURES:
      columns[k].append(extra[k])
  return {k: np.concatenate(v).astype(np.int32) for k, v in columns.items()}


def numpy_converted_split(examples: Mapping[str, object], feature_lengths: Mapping[str, int]
                          ) -> dict[str, np.ndarray]:
  """What `converted_split` returns, from `tiger_tasks.build_examples` output with numpy alone.

  Mirrors the task and the converter: inputs get no EOS and are trimmed to their length; targets are
  trimmed to length - 1 and get EOS (`append_eos_after_trim`); unpacked EncDecFeatureConverter pads both,
  shifts the targets right (0 first) into the decoder inputs and weights the non-padding targets.
  """
  n = len(examples["inputs"])
  input_length, target_length = feature_lengths["inputs"], feature_lengths["targets"]
  encoder = np.zeros((n, input_length), np.int32)
  for i, row in enumerate(examples["inputs"]):
    row = np.asarray(row)[:input_length]
    encoder[i, :len(row)] = row
  targets = np.asarray(examples["targets"], np.int32).reshape(n, -1)[:, :target_length - 1]
  decoder_targets = np.zeros((n, target_length), np.int32)
  decoder_targets[:, :targets.shape[1]] = targets
  decoder_targets[:, targets.shape[1]] = vocab_lib.EOS_ID
  decoder_inputs = np.zeros_like(decoder_targets)
  decoder_inputs[:, 1:] = decoder_targets[:, :-1]
  return {"encoder_input_tokens": encoder, "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": decoder_targets,
          "decoder_loss_weights": (decoder_targets > 0).astype(np.int32),
          "user_index": np.asarray(examples["user_index"], np.int32),
          "target_item": np.asarray(examples["target_item"], np.int32)}


def _atomic_savez(path: str, **arrays):
  with utils.atomic_write(path, "wb") as f:
    np.savez_compressed(f, **arrays)  # token arrays are mostly padding: 50 MB -> 3 MB for Beauty


def cache_task(task_name: str, output_cache_dir: str, data_dir: Optional[str] = None,
               semantic_ids_path: Optional[str] = None, use_user_token: Optional[bool] = None,
               feature_lengths: Optional[Mapping[str, int]] = None, force: bool = False,
               cold_start_split: Optional[str] = None, backend: str = "seqio") -> dict:
  """Caches one TIGER task (re-registering it with the given data and ID table); returns its info.

  use_user_token None: the task name's default (`tiger_tasks.use_user_token_for`: off for `*_nouser`).
  backend: 'seqio' (the task through seqio's converter) or 'numpy' (the same arrays without TensorFlow).
  """
  if backend not in BACKENDS:
    raise ValueError(f"cache_task: backend must be one of {BACKENDS}, got {backend!r}")
  if use_user_token is None:
    use_user_token = tiger_tasks.use_user_token_for(task_name)
  if backend == "seqio":
    _hide_gpus_from_tensorflow()
  feature_lengths = dict(feature_lengths or tiger_tasks.TASK_FEATURE_LENGTHS)
  data_dir = data_dir or tiger_tasks.default_data_dir(task_name)
  dataset = tiger_tasks._load(os.path.abspath(data_dir))  # pylint: disable=protected-access
  semantic_ids_path = semantic_ids_path or os.environ.get("TIGER_SEMANTIC_IDS")
  table = tiger_tasks.resolve_semantic_ids(dataset, semantic_ids_path)
  cold_start_split = tiger_tasks.resolve_cold_start_split(task_name, cold_start_split)
  split_info = None
  if cold_start_split:
    from tiger_jax.data import cold_start  # pylint: disable=g-import-not-at-top
    held_out = cold_start.ColdStartSplit.load(cold_start_split)
    held_out.unseen_mask(dataset.catalog.asins)  # fails early when the split is for other data
    split_info = {"content_hash": held_out.content_hash(), "num_unseen": len(held_out.unseen_asins),
                  "fraction": held_out.fraction, "seed": held_out.seed}
  key = {
      "cache_version": CACHE_VERSION,
      "task": task_name,
      "data_fingerprint": files_fingerprint(data_dir),
      "semantic_ids_hash": table.content_hash(),
      "semantic_ids_method": table.method,
      "feature_lengths": feature_lengths,
      "use_user_token": use_user_token,
      "max_history": splits_lib.MAX_HISTORY,
      "layout": vars(vocab_lib.DEFAULT_LAYOUT),
      "cold_start_split": split_info,
  }
  task_dir = os.path.join(output_cache_dir, task_name)
  info_path = os.path.join(task_dir, "info.json")
  if os.path.exists(info_path):
    with open(info_path) as f:
      info = json.load(f)
    changed = [k for k, v in key.items() if info.get(k) != v]
    if not force and not changed:
      logger.info("%s: cache in %s is current; skipped", task_name, task_dir)
      return info
    logger.info("%s: rebuilding the cache in %s (%s)", task_name, task_dir,
                "--force" if not changed else "changed: " + ", ".join(_describe_change(k, info.get(k), key[k])
                                                                       for k in changed))
    os.remove(info_path)

  start = time.time()
  if table.method == "random":
    logger.warning("%s: random Semantic IDs (%s), as asked", task_name, semantic_ids_path)
  if backend == "seqio":
    task = tiger_tasks.register_tiger_task(task_name, data_dir=os.path.abspath(data_dir),
                                           semantic_ids_path=semantic_ids_path, use_user_token=use_user_token,
                                           cold_start_split_path=cold_start_split)
  else:
    excluded = tiger_tasks.excluded_items(dataset, cold_start_split)
  os.makedirs(task_dir, exist_ok=True)
  if cold_start_split:
    held_out.save(os.path.join(task_dir, cold_start.FILENAME))
  counts = {}
  for split in splits_lib.SPLITS:
    if backend == "seqio":
      arrays = converted_split(task, split, feature_lengths)
    else:
      arrays = numpy_converted_split(tiger_tasks.build_examples(
          dataset, table, split, use_user_token=use_user_token, exclude_items=excluded), feature_lengths)
    counts[split] = int(len(arrays["target_item"]))
    _atomic_savez(os.path.join(task_dir, f"{split}.npz"), **arrays)
    logger.info("%s/%s: %d examples", task_name, split, counts[split])
  _atomic_savez(os.path.join(task_dir, "items.npz"),
                asins=np.array(dataset.catalog.asins),
                item_tokens=tiger_tasks.item_tokens(dataset, table),
                titles=np.array([item.title or "" for item in dataset.catalog.items]),
                users=np.array(dataset.sessions.users))
  built_from = {"data_dir": os.path.abspath(data_dir), "semantic_ids": _abspath_unless_random(semantic_ids_path),
                "cold_start_split": cold_start_split and os.path.abspath(cold_start_split),
                "use_user_token": use_user_token}
  info = dict(key, vocab_size=vocab_lib.DEFAULT_LAYOUT.vocab_size, counts=counts, dataset=dataset.stats(),
              reader_report=dataset.report, seconds=round(time.time() - start, 2),
              created=time.strftime("%Y-%m-%dT%H:%M:%S"), backend=backend, seqio_version=_seqio_version(),
              built_from=built_from)
  utils.write_json(info_path, info)
  return info


def _describe_change(field: str, old, new) -> str:
  if field in ("semantic_ids_hash", "data_fingerprint") and old and new:
    return f"{field} {str(old)[:12]} -> {str(new)[:12]}"
  return f"{field} {old!r} -> {new!r}"


def _abspath_unless_random(spec: str) -> str:
  return spec if tiger_tasks.parse_random_spec(spec) is not None else os.path.abspath(spec)


def register_unknown_task(name: str, data_dir: Optional[str]) -> None:
  """Registers a task no module registered (`tiger_garden`) over `data_dir`, so any catalogue caches."""
  if not tiger_tasks._seqio_installed():  # pylint: disable=protected-access
    return  # the numpy backend needs no registry
  import seqio  # pylint: disable=g-import-not-at-top
  if name in seqio.TaskRegistry.names():
    return
  if not data_dir:
    default = tiger_tasks.default_data_dir(name)
    if not os.path.isdir(default):
      raise SystemExit(f"error: task {name!r} is not registered and {default} does not exist: pass --data_dir=DIR "
                       "(its dataset directory) to register it")
    data_dir = default
  logger.info("%s: not a registered task; registering it over %s (tiger_tasks.register_tiger_task)", name,
              data_dir)
  tiger_tasks.register_tiger_task(name, data_dir=os.path.abspath(data_dir))


def _seqio_version() -> Optional[str]:
  try:
    import seqio  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return seqio.__version__


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tasks", required=True, help="Comma-separated task names, e.g. tiger_beauty.")
  parser.add_argument("--output_cache_dir", required=True)
  parser.add_argument("--module_import", action="append", default=[],
                      help="Modules to import first (they may register more tasks), as in seqio_cache_tasks.")
  parser.add_argument("--data_dir", default=None, help="Dataset directory (default: <data root>/<name>).")
  parser.add_argument("--semantic_ids", default=None, help="semantic_ids.npz (default: $TIGER_SEMANTIC_IDS; "
                      "one of them is required), or random[:SEED] for seeded random IDs.")
  parser.add_argument("--no_user_token", action="store_true", help="Leave the user token out (Table 8; the "
                      "default for *_nouser tasks).")
  parser.add_argument("--cold_start_split", default=None, help="cold_start_split.json: train/validation leave "
                      "its unseen items out (default for *_coldstart tasks: $TIGER_COLD_START_SPLIT).")
  parser.add_argument("--force", action="store_true", help="Rebuild even if the cache is current.")
  parser.add_argument("--backend", choices=BACKENDS, default="seqio", help="numpy: the same arrays without "
                      "TensorFlow or seqio (for machines that lack them).")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s] %(message)s")
  if not (args.semantic_ids or os.environ.get("TIGER_SEMANTIC_IDS")):
    raise SystemExit("error: " + tiger_tasks.semantic_ids_required_message("--semantic_ids"))
  try:
    tiger_tasks.parse_random_spec(args.semantic_ids or os.environ["TIGER_SEMANTIC_IDS"])
  except ValueError as e:
    raise SystemExit(f"error: --semantic_ids: {e}") from None
  for module in args.module_import:
    importlib.import_module(module)
  for name in args.tasks.split(","):
    register_unknown_task(name.strip(), args.data_dir)
    info = cache_task(name.strip(), args.output_cache_dir, args.data_dir, args.semantic_ids,
                      use_user_token=False if args.no_user_token else None, force=args.force,
                      cold_start_split=args.cold_start_split, backend=args.backend)
    print(json.dumps({"task": info["task"], "counts": info["counts"], "dataset": info["dataset"],
                      "semantic_ids": info["semantic_ids_method"]}, indent=1))


if __name__ == "__main__":
  main()
