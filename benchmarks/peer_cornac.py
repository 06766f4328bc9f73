"""Side by side with a peer: cornac's TIGER and tiger_jax on the same Beauty data, embeddings and batch size.

Both trainers run in one job on one card, one after the other: tiger_jax first (its stages in child processes,
as benchmarks/recipe_speed.py runs them), then cornac's TIGER in this process. Both see the same users, the
same leave-one-out split (tiger_jax/data/splits.py: train on every prefix of s[0..n-3], validate on s[n-2]
with the 20 items before it), batch 256, and, with --semantic_ids, the same Semantic IDs: cornac's tokenizer
is then skipped and its seq2seq model gets tiger_jax's 4-code IDs, so only the trainer differs. Without
--semantic_ids each side builds its own IDs from the same --embeddings_dir (cornac: its RQ-VAE defaults;
tiger_jax: the ids stage of --tiger_gin), and the output says so.

cornac's TIGER keeps its constructor defaults (4+4-layer T5, d_model 128, 6 heads x 64, MLP 1024, dropout
0.1, AdamW 1e-3, 20 history items, 20-beam constrained search), except n_epochs, device, seed and what its
validation hook needs: model_selection='best' (the only way its fit() validates), val_eval_every and
val_sample=None. Its validation is replaced by a timed one that scores the same validation users as
tiger_jax's (the first --eval_users rows of the split) with cornac's own beam search, and ranks them with
tiger_jax/metrics.py. tiger_jax trains --tiger_gin (the paper recipe, gin/beauty.gin) for as many examples as
cornac's epochs, validating as often.

Measured for each: examples/s (steady: tiger_jax's rate while training, without compiling; wall: examples
over training wall time, compiling included) and (training wall seconds, validation NDCG@10) points, where
training wall time excludes validation. Reported: the examples/s ratio (tiger_jax / cornac), and the wall
time of each to the first validation at or above a common target NDCG@10 (--target_ndcg, default the lower
of the two runs' best, which both reach) and that ratio (cornac / tiger_jax). Writes peer_cornac.json (run
metadata, the commands, both curves) under --out_dir and prints a table.

What still differs, each side keeping its own recipe: tiger_jax puts a hashed user token before the history
(81 encoder tokens; --tiger_task=tiger_beauty_nouser drops it, cornac has none and always runs 80 tokens),
trims batches to length buckets, trains in bfloat16 with Adafactor at 0.01 then inverse square root, decodes
4 codes + EOS through one shared 3072-token softmax, and shuffles examples across users; cornac trains in float32 with
AdamW 1e-3, decodes 4 codes through one head per level (the last sized to the largest collision count),
shuffles users and takes each user's prefixes in order.

Install cornac beside the project (never in setup.cfg; its TIGER also needs torch and transformers, which
sentence-transformers brings):

  pip install cornac==3.0.1

On a host without network, download the wheels elsewhere for its Python and platform, and ship them:

  pip download cornac==3.0.1 --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d cornac_wheels
  pip install --no-index --find-links cornac_wheels cornac==3.0.1

Full run (embeddings and IDs as ./run.sh beauty leaves them: python -m tiger_jax.embed, then
python -m tiger_jax.semantic_ids):

  python -m benchmarks.peer_cornac --out_dir=out/peer --embeddings_dir=work/beauty/embeddings \
      --semantic_ids=work/beauty/beauty/semantic_ids.npz

Each side building its own IDs (tiger_jax's ids stage reads --tiger_gin, then --tiger_rqvae_gin if given):

  python -m benchmarks.peer_cornac --out_dir=out/peer_own_ids --embeddings_dir=work/beauty/embeddings

The same as two commands on the same card: --sides=tiger_jax, then --sides=cornac --merge (the second keeps
the first's side from --out_dir's peer_cornac.json, each side with its own command, date and card).

Longer tiger_jax training than cornac's 20 epochs: --tiger_steps=30000 (validating every
--eval_every_epochs epochs' worth of steps); a fixed target: --target_ndcg=0.02.

Tiny CPU run (the first 64 users, one epoch; --tiger_gin=FILE and --cornac_arg=d_ff=64 ... shrink the models):

  JAX_PLATFORMS=cpu python -m benchmarks.peer_cornac --out_dir=/tmp/peer --embeddings_dir=work/beauty/embeddings \
      --semantic_ids=work/beauty/beauty/semantic_ids.npz --max_users=64 --eval_users=32 --eval_batch_size=16 \
      --cornac_epochs=1 --eval_every_epochs=1 --tiger_steps=2
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import importlib
import json
import os
import re
import shutil
import signal
import sys
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from benchmarks import _common
from benchmarks import recipe_speed
from tiger_jax import metrics as metrics_lib
from tiger_jax.data import load_dataset
from tiger_jax.data import splits as splits_lib
from tiger_jax.data.types import Dataset, Sessions

REPO = _common.REPO
SIDES = ("tiger_jax", "cornac")
CORNAC_VERSION = "3.0.1"  # the version whose TIGER internals the timed subclass hooks into
NDCG_K = 10


# ----------------------------------------------------------------------------------------------------------
# Data: the same users, split and inputs for both.


def subset_data_dir(data_dir: str, out_dir: str, max_users: int) -> str:
  """A processed dir with the first `max_users` users of `data_dir` and only the items they touch.

  Both sides then read this one dir, so their catalogues are the same (cornac knows only items in the data).
  """
  from tiger_jax.data import processed  # pylint: disable=g-import-not-at-top
  from tiger_jax.data.lines import read_lines  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  lines, used = [], set()
  for _, line in read_lines(os.path.join(data_dir, processed.SEQUENCES_FILE), "sequences file"):
    if not line.strip():
      continue
    lines.append(line.strip())
    used.update(line.split()[1:])
    if len(lines) >= max_users:
      break
  with gzip.open(os.path.join(out_dir, processed.SEQUENCES_FILE), "wt") as f:
    f.write("\n".join(lines) + "\n")
  with gzip.open(os.path.join(out_dir, processed.ITEMS_FILE), "wt") as f:
    for _, line in read_lines(os.path.join(data_dir, processed.ITEMS_FILE), "items file"):
      if line.strip() and json.loads(line).get("asin") in used:
        f.write(line.strip() + "\n")
  return out_dir


def load_embeddings(embeddings_dir: str, asins: Sequence[str]) -> np.ndarray:
  """embeddings.npy rows in catalogue order (tiger_jax.embed writes the asin order to embeddings.json)."""
  x = np.load(os.path.join(embeddings_dir, "embeddings.npy"), allow_pickle=False)
  with open(os.path.join(embeddings_dir, "embeddings.json")) as f:
    order = json.load(f)["asins"]
  if len(order) != len(x):
    raise ValueError(f"{embeddings_dir}: {len(order)} asins but {len(x)} embedding rows")
  row = {a: i for i, a in enumerate(order)}
  missing = [a for a in asins if a not in row]
  if missing:
    raise ValueError(f"{embeddings_dir}: no embedding for {len(missing)} catalogue items, e.g. {missing[:5]}")
  return np.asarray(x[[row[a] for a in asins]], np.float32)


def load_semantic_ids(path: str, asins: Sequence[str]) -> tuple[np.ndarray, int]:
  """(codes [num_items, levels] in catalogue order, codebook size) of a semantic_ids.npz, read with numpy only."""
  with np.load(path, allow_pickle=False) as z:
    table_asins, codes = z["asins"].tolist(), np.asarray(z["codes"], np.int64)
    codebook_size = int(z["codebook_size"]) if "codebook_size" in z.files else 256
  row = {a: i for i, a in enumerate(table_asins)}
  missing = [a for a in asins if a not in row]
  if missing:
    raise ValueError(f"{path}: no Semantic ID for {len(missing)} catalogue items, e.g. {missing[:5]}")
  codes = codes[[row[a] for a in asins]]
  if len(np.unique(codes, axis=0)) != len(codes):
    raise ValueError(f"{path}: Semantic IDs are not unique over the catalogue")
  return codes, codebook_size


def num_eval_users(num_users: int, eval_users: int, eval_batch_size: int) -> tuple[int, Optional[int]]:
  """(users validated, tiger_jax's EVAL_STEPS): tiger_jax validates whole batches of the split's first rows,
  so the count is rounded up to a batch; 0 or a count past the end means every user (EVAL_STEPS None)."""
  if eval_users <= 0:
    return num_users, None
  steps = -(-eval_users // eval_batch_size)
  if steps * eval_batch_size >= num_users:
    return num_users, None
  return steps * eval_batch_size, steps


def cornac_rows(sessions: Sessions, asins: Sequence[str], eval_users: int) -> dict[str, list[tuple]]:
  """USIT tuples (user, session = user, asin, position) for cornac's NextItemEvaluation.from_splits.

  train: every user's s[0..n-3], whose prefixes cornac's session iterator turns into exactly tiger_jax's
  training examples; validation: s[0..n-2] of the first `eval_users` users (the last item is the target, as
  cornac's validation reads it); test: every user's whole sequence (cornac requires a test set, never scored
  here, and knows only the items its data names: so its catalogue, and its beam search's, is tiger_jax's).
  """
  rows: dict[str, list[tuple]] = {"train": [], "validation": [], "test": []}
  for u, (user, seq) in enumerate(zip(sessions.users, sessions.sequences)):
    n = len(seq)
    if n < splits_lib.MIN_SESSION_LENGTH:
      raise ValueError(f"user {user!r} has {n} items; leave-one-out needs {splits_lib.MIN_SESSION_LENGTH}")
    spans = [("train", n - 2), ("test", n)] + ([("validation", n - 1)] if u < eval_users else [])
    for split, end in spans:
      rows[split].extend((user, user, asins[i], t) for t, i in enumerate(seq[:end]))
  return rows


def sequences_by_user(rows: Sequence[tuple]) -> dict[str, list[str]]:
  """The per-user item sequences USIT rows spell, in row order (how cornac's SequentialDataset reads them)."""
  out: dict[str, list[str]] = {}
  for user, _, asin, _ in rows:
    out.setdefault(user, []).append(asin)
  return out


# ----------------------------------------------------------------------------------------------------------
# Curves.


def time_to_target(points: Sequence[dict], target: float) -> Optional[float]:
  """Training wall seconds at the first validation with NDCG@10 >= target (None: never reached).

  No interpolation: a run is credited only with what it was seen to reach, at its validation times.
  """
  for p in sorted(points, key=lambda p: p["wall_s"]):
    if p["ndcg@10"] >= target - 1e-12:
      return float(p["wall_s"])
  return None


def common_target(curves: dict[str, Sequence[dict]], target: Optional[float]) -> Optional[float]:
  """The given target, else the lower of the runs' best NDCG@10 (so every run reaches it)."""
  if target is not None:
    return float(target)
  bests = [max(p["ndcg@10"] for p in c) for c in curves.values() if c]
  return min(bests) if len(bests) == len(curves) and bests else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
  return a / b if a is not None and b else None


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _stamp(line: str) -> Optional[float]:
  match = _STAMP.match(line)
  if not match:
    return None
  return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def read_metrics_jsonl(path: str) -> dict[int, dict]:
  """step -> the validation metrics tiger_jax.train wrote to MODEL_DIR/metrics.jsonl (full precision)."""
  out: dict[int, dict] = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        if "validation/ndcg@10" in record:
          out[int(record["step"])] = record
  return out


def tiger_curve(log_text: str, batch_size: int, exact: Optional[dict[int, dict]] = None) -> dict:
  """tiger_jax.train's log as (training wall s, validation NDCG@10) points, plus its rates.

  Time starts at the "train split" line (data read; model init and compiling follow and count); each
  validation's own duration, which its line states, is taken out of the wall time after it. The log prints
  4 significant digits; `exact` (read_metrics_jsonl) gives the metrics in full where it has the step.
  """
  exact = exact or {}
  start, points, eval_s = None, [], 0.0
  for line in log_text.splitlines():
    t = _stamp(line)
    if t is None:
      continue
    if start is None and "] train split:" in line:
      start = t
    match = recipe_speed._EVAL.search(line)  # pylint: disable=protected-access
    if match and start is not None:
      step, seconds = int(match.group(1)), float(match.group(2))
      ndcg = re.search(r"validation/ndcg@10 ([\d.]+)", line)
      recall = re.search(r"validation/recall@10 ([\d.]+)", line)
      if ndcg:
        full = exact.get(step, {})
        points.append({"step": step, "examples": step * batch_size, "wall_s": round(t - seconds - start - eval_s, 3),
                       "ndcg@10": float(full.get("validation/ndcg@10", ndcg.group(1))),
                       "recall@10": float(full.get("validation/recall@10", recall.group(1) if recall else "nan")),
                       "eval_s": seconds})
      eval_s += seconds
  parsed = recipe_speed.parse_train_log(log_text)
  out = {"points": points, "eval_seconds": round(eval_s, 1),
         "loop_compile_seconds": parsed["loop_compile_seconds"]}
  if "steps_per_second" in parsed:
    out.update(steps=parsed["steps"], steps_per_second=parsed["steps_per_second"],
               ms_per_step=parsed["ms_per_step"],
               examples_per_s_steady=parsed["steps_per_second"] * batch_size)
  if points and points[-1]["wall_s"] > 0:
    out["examples_per_s_wall"] = points[-1]["examples"] / points[-1]["wall_s"]
  return out


# ----------------------------------------------------------------------------------------------------------
# tiger_jax: its own stage commands, as the recipe benchmark runs them.


def tiger_bindings(*, batch_size: int, eval_batch_size: int, train_steps: int, eval_period: int,
                   eval_steps: Optional[int], seed: int, extra: Sequence[str] = ()) -> list[str]:
  """Gin bindings for the recipe: the shared batch size, validation cadence and users; one checkpoint at the end
  (the best one is saved inside validation, whose time is not counted)."""
  return [f"BATCH_SIZE={batch_size}", f"EVAL_BATCH_SIZE={eval_batch_size}", f"EVAL_PERIOD={eval_period}",
          f"EVAL_STEPS={eval_steps if eval_steps else None}", f"CHECKPOINT_PERIOD={train_steps}",
          f"RANDOM_SEED={seed}", *extra]


def run_tiger(*, task: str, data_dir: str, work_dir: str, log_dir: str, gin_file: str, semantic_ids: Optional[str],
              embeddings_dir: str, compilation_cache_dir: str, train_steps: int, bindings: Sequence[str],
              batch_size: int, env: dict, rqvae_gin: Optional[str] = None) -> dict:
  """Runs [embed, ids,] cache and train; returns their commands and seconds and the training curve."""
  shutil.rmtree(work_dir, ignore_errors=True)
  os.makedirs(work_dir)
  commands = recipe_speed.stage_commands(dataset=task[len("tiger_"):], data_dir=data_dir, work_dir=work_dir,
                                         gin_file=gin_file, rqvae_gin=rqvae_gin,
                                         compilation_cache_dir=compilation_cache_dir, train_steps=train_steps,
                                         embeddings_dir=embeddings_dir, bindings=bindings)
  stages = ("cache", "train") if semantic_ids else ("embed", "ids", "cache", "train")
  if semantic_ids:
    shutil.copyfile(semantic_ids, os.path.join(work_dir, "semantic_ids.npz"))
  results = recipe_speed.run_stages([(n, c) for n, c in commands if n in stages], work_dir, log_dir,
                                    embeddings_dir, env)
  out: dict[str, Any] = {"stages": {r.name: {"seconds": round(r.seconds, 1), "returncode": r.returncode,
                                             "command": r.command, "log": r.log} for r in results},
                         "complete": len(results) == len(stages) and all(r.returncode == 0 for r in results)}
  train = next((r for r in results if r.name == "train"), None)
  if train is not None:
    with open(train.log) as f:
      out.update(tiger_curve(f.read(), batch_size, read_metrics_jsonl(os.path.join(work_dir, "model",
                                                                                    "metrics.jsonl"))))
  if "ids" in out["stages"]:
    out["tokenizer_seconds"] = out["stages"]["ids"]["seconds"]
  return out


# ----------------------------------------------------------------------------------------------------------
# cornac: its TIGER, timed at its own validation hook.


def check_cornac():
  """Imports cornac, warning when its version is not the one whose TIGER internals are hooked."""
  import cornac  # pylint: disable=g-import-not-at-top
  if cornac.__version__ != CORNAC_VERSION:
    print(f"warning: cornac {cornac.__version__}; this benchmark hooks TIGER of cornac {CORNAC_VERSION}",
          flush=True)
  return cornac


def timed_tiger_class():
  """cornac's TIGER with three hooks that leave its training as it is.

  _tokenize/_build_semantic_ids: take given 4-code IDs (item order = cornac's) instead of training the
  RQ-VAE; _fit_seq2seq: starts the clock; _validate (called every val_eval_every epochs when
  model_selection='best'): stops the clock, scores the validation sessions with cornac's own `score` (its
  beam search), ranks them with tiger_jax/metrics.py, records the point and returns NDCG@10.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from cornac.models import TIGER  # pylint: disable=g-import-not-at-top
  # fit() imports its networks (and transformers' T5) on first use: import them now, outside the clock.
  importlib.import_module("cornac.models.tiger.tiger")

  class TimedTIGER(TIGER):
    """See timed_tiger_class."""
    given_codes: Optional[np.ndarray] = None
    given_codebook_size: int = 256
    peer_on_validation: Optional[Callable[[], None]] = None  # called after each validation point

    def _sync(self):
      if getattr(self, "device_", "cpu") == "cuda":
        torch.cuda.synchronize()

    def _tokenize(self, torch_module, feats_t):
      start = time.perf_counter()
      if self.given_codes is not None:
        codes = self.given_codes[:, :-1]
      else:
        codes = super()._tokenize(torch_module, feats_t)
        self._sync()
      self.peer_tokenizer_s = time.perf_counter() - start
      return codes

    def _build_semantic_ids(self, codes):
      if self.given_codes is None:
        super()._build_semantic_ids(codes)
        return
      # The given IDs as cornac's tables: item -> ID, ID -> item, and each prefix's allowed next codes.
      sids = np.asarray(self.given_codes, np.int64)
      if sids.shape[1] != self.rqvae_num_levels + 1:
        raise ValueError(f"given IDs have {sids.shape[1]} codes; cornac's TIGER expects rqvae_num_levels + 1 = "
                         f"{self.rqvae_num_levels + 1}")
      self.sid_table = sids
      self.level_sizes = [int(self.given_codebook_size)] * self.rqvae_num_levels + [int(sids[:, -1].max()) + 1]
      self.sid_to_item = {tuple(row): i for i, row in enumerate(sids.tolist())}
      children: list[dict] = [{} for _ in self.level_sizes]
      for row in sids.tolist():
        for level in range(len(row)):
          children[level].setdefault(tuple(row[:level]), set()).add(row[level])
      self.prefix_children = [{prefix: np.array(sorted(codes_), np.int64) for prefix, codes_ in level.items()}
                              for level in children]

    def _fit_seq2seq(self, torch_module, val_set):
      self.peer_points, self.peer_eval_s, self.peer_epochs = [], 0.0, 0
      self.peer_start = time.perf_counter()
      super()._fit_seq2seq(torch_module, val_set)
      self._sync()
      self.peer_train_s = time.perf_counter() - self.peer_start - self.peer_eval_s

    def _validate(self, val_sessions, metric):
      self._sync()
      start = time.perf_counter()
      self.peer_epochs += self.val_eval_every
      wall = start - self.peer_start - self.peer_eval_s
      ranked = np.full((len(val_sessions), max(self.n_beams, NDCG_K)), -1, np.int64)
      target = np.zeros(len(val_sessions), np.int64)
      for row, (user_idx, items) in enumerate(val_sessions):
        scores = np.asarray(self.score(user_idx, items[:-1]))
        top = np.argsort(-scores, kind="stable")[:ranked.shape[1]]
        top = top[scores[top] > -1e9]  # items outside the beams keep cornac's -1e10
        ranked[row, :len(top)] = top
        target[row] = items[-1]
      ranks = metrics_lib.target_ranks(ranked, target)
      ndcg = metrics_lib.ndcg_at_k(ranks, NDCG_K)
      elapsed = time.perf_counter() - start
      self.peer_eval_s += elapsed
      self.peer_points.append({"epoch": self.peer_epochs, "wall_s": round(wall, 3), "ndcg@10": ndcg,
                               "recall@10": metrics_lib.recall_at_k(ranks, NDCG_K), "eval_s": round(elapsed, 1),
                               "users": len(val_sessions)})
      print(f"  cornac epoch {self.peer_epochs}: {wall:.1f} s training, validation ndcg@10 {ndcg:.4f} "
            f"({len(val_sessions)} users, {elapsed:.1f} s)", flush=True)
      if self.peer_on_validation is not None:
        self.peer_on_validation()
      return ndcg

  return TimedTIGER


def parse_cornac_args(specs: Sequence[str]) -> dict:
  """NAME=VALUE constructor overrides; VALUE is a Python literal (a bare word stays a string)."""
  out = {}
  for spec in specs:
    name, sep, value = spec.partition("=")
    if not sep:
      raise ValueError(f"--cornac_arg {spec!r}: expected NAME=VALUE")
    out[name] = _common.literal_or_string(value)
  return out


def run_cornac(*, dataset: Dataset, embeddings: np.ndarray, codes: Optional[np.ndarray], codebook_size: int,
               eval_users: int, epochs: int, eval_every: int, batch_size: int, device: str, seed: int,
               overrides: dict, on_progress: Optional[Callable[[dict], None]] = None) -> dict:
  """Builds cornac's datasets from the split, fits its TIGER and returns the curve and rates.

  on_progress gets the summary so far (complete: False) after every validation, so a fit cut off by a time
  limit or a signal keeps the points it reached.
  """
  check_cornac()
  import torch  # pylint: disable=g-import-not-at-top
  from cornac.data import FeatureModality  # pylint: disable=g-import-not-at-top
  from cornac.eval_methods import NextItemEvaluation  # pylint: disable=g-import-not-at-top
  asins = dataset.catalog.asins
  start = time.time()
  rows = cornac_rows(dataset.sessions, asins, eval_users)
  method = NextItemEvaluation.from_splits(train_data=rows["train"], val_data=rows["validation"],
                                          test_data=rows["test"], fmt="USIT", exclude_unknowns=False, seed=seed,
                                          item_feature=FeatureModality(features=embeddings, ids=list(asins)))
  build_s = time.time() - start
  kwargs = {"n_epochs": epochs, "batch_size": batch_size, "device": device, "seed": seed,
            "model_selection": "best", "val_eval_every": eval_every, "val_sample": None, **overrides}
  model = timed_tiger_class()(**kwargs)
  if codes is not None:
    row = {a: i for i, a in enumerate(asins)}
    order = [a for a, _ in sorted(method.global_iid_map.items(), key=lambda kv: kv[1])]
    model.given_codes = codes[[row[a] for a in order]]
    model.given_codebook_size = codebook_size
  n_examples = sum(max(len(s) - 3, 0) for s in dataset.sessions.sequences)
  device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() and device != "cpu" else "cpu"

  def summary(complete: bool, fit_s: Optional[float] = None) -> dict:
    points = [dict(p, examples=p["epoch"] * n_examples) for p in model.peer_points]
    out = {"constructor_args": {k: getattr(model, k) for k in kwargs}, "device": getattr(model, "device_", device),
           "device_name": device_name, "torch": torch.__version__, "dataset_build_seconds": round(build_s, 1),
           "tokenizer_seconds": round(getattr(model, "peer_tokenizer_s", 0.0), 1), "epochs": epochs,
           "examples_per_epoch": n_examples, "level_sizes": [int(s) for s in getattr(model, "level_sizes", [])],
           "points": points, "eval_seconds": round(model.peer_eval_s, 1), "complete": complete}
    if complete:
      out.update(fit_seconds=round(fit_s, 1), train_seconds=round(model.peer_train_s, 2),
                 parameters=int(sum(p.numel() for p in model.model.parameters())))
      trained_s, examples = model.peer_train_s, epochs * n_examples
    else:  # up to the last validation: its training wall time and the epochs before it
      trained_s, examples = (points[-1]["wall_s"], points[-1]["examples"]) if points else (0.0, 0)
    if trained_s > 0:
      # No compiling to leave out: the steady rate is the wall rate over the whole fit.
      out["examples_per_s_steady"] = out["examples_per_s_wall"] = examples / trained_s
    return out

  if on_progress is not None:
    model.peer_on_validation = lambda: on_progress(summary(complete=False))
  start = time.time()
  model.fit(method.train_set, method.val_set)
  out = summary(complete=True, fit_s=time.time() - start)
  del model
  if torch.cuda.is_available():
    torch.cuda.empty_cache()
  return out


# ----------------------------------------------------------------------------------------------------------
# Report.


def compare(report: dict, target: Optional[float]) -> dict:
  """The ratios: examples/s (tiger_jax / cornac) and wall time to a common NDCG@10 (cornac / tiger_jax)."""
  tiger, peer = report.get("tiger_jax") or {}, report.get("cornac") or {}
  curves = {"tiger_jax": tiger.get("points") or [], "cornac": peer.get("points") or []}
  goal = common_target(curves, target)
  out: dict[str, Any] = {"target_ndcg@10": goal, "target_given": target is not None}
  for kind in ("steady", "wall"):
    key = f"examples_per_s_{kind}"
    out[f"{key}_ratio"] = ratio(tiger.get(key), peer.get(key))
  if goal is not None:
    times = {side: time_to_target(c, goal) for side, c in curves.items()}
    out["seconds_to_target"] = times
    out["seconds_to_target_ratio"] = ratio(times["cornac"], times["tiger_jax"])
  out["best_ndcg@10"] = {side: max((p["ndcg@10"] for p in c), default=None) for side, c in curves.items()}
  return out


def print_table(report: dict) -> None:
  cmp, tiger, peer = report["comparison"], report.get("tiger_jax") or {}, report.get("cornac") or {}
  goal = cmp.get("target_ndcg@10")
  times = cmp.get("seconds_to_target") or {}
  print(f"\n== tiger_jax vs cornac {CORNAC_VERSION} TIGER: {report['data']['users']} users, "
        f"{report['data']['train_examples']} training examples, batch {report['settings']['batch_size']}, "
        f"{report['data']['eval_users']} validation users; Semantic IDs: {report['semantic_ids']['mode']}")
  print(f"   tiger_jax on {report.get('device_kind', '?')}, cornac on {peer.get('device_name', '?')} "
        f"(revision {report['git_revision']})\n")
  rows = [
      ["examples/s while training", tiger.get("examples_per_s_steady"), peer.get("examples_per_s_steady"),
       cmp.get("examples_per_s_steady_ratio")],
      ["examples/s, wall (compiling included)", tiger.get("examples_per_s_wall"), peer.get("examples_per_s_wall"),
       cmp.get("examples_per_s_wall_ratio")],
      ["best validation NDCG@10", cmp["best_ndcg@10"].get("tiger_jax"), cmp["best_ndcg@10"].get("cornac"), None],
      [f"s to NDCG@10 >= {goal:.4f}" if goal is not None else "s to target NDCG@10", times.get("tiger_jax"),
       times.get("cornac"), cmp.get("seconds_to_target_ratio")],
  ]
  for line in _common.markdown_table(["", "tiger_jax", "cornac", "ratio"], rows, digits=4):
    print(line)
  print("\nratio: examples/s tiger_jax / cornac; seconds cornac / tiger_jax (above 1: tiger_jax is faster)")


def side_run(report: dict) -> dict:
  """Which command, revision and card produced a side (kept with it when a later run merges the other)."""
  keys = ("command", "date", "git_revision", "host", "device_kind", "backend", "jax")
  return {k: report[k] for k in keys if k in report}


def merge_other_side(report: dict, path: str, sides: Sequence[str]) -> None:
  """Copies the sides not run now from an earlier peer_cornac.json, refusing one made on other data."""
  with open(path) as f:
    old = json.load(f)
  for key in ("data", "semantic_ids"):
    if old.get(key) != report[key]:
      raise SystemExit(f"--merge: {path} has other {key} ({old.get(key)} vs {report[key]})")
  if old.get("settings", {}).get("batch_size") != report["settings"]["batch_size"]:
    raise SystemExit(f"--merge: {path} used another batch size")
  for side in SIDES:
    if side not in sides and old.get(side):
      report[side] = old[side]
      if side == "tiger_jax":
        report.update({k: v for k, v in old[side].get("run", {}).items()
                       if k in ("device_kind", "backend", "jax")})
      print(f"kept {side} from {path} ({old[side].get('run', {}).get('date', '?')})", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out_dir", required=True)
  p.add_argument("--data_dir", default=os.path.join(REPO, "data", "beauty"))
  p.add_argument("--embeddings_dir", required=True, help="embeddings.npy + embeddings.json (tiger_jax.embed)")
  p.add_argument("--semantic_ids", default=None,
                 help="semantic_ids.npz both sides use; without it each builds its own from the embeddings")
  p.add_argument("--work_dir", default=None, help="default: <out_dir>/work")
  p.add_argument("--sides", default=",".join(SIDES), help="which to run: tiger_jax, cornac or both")
  p.add_argument("--max_users", type=int, default=None, help="only the first N users of --data_dir")
  p.add_argument("--eval_users", type=int, default=2048, help="validation users (the split's first); 0: all")
  p.add_argument("--eval_batch_size", type=int, default=256, help="tiger_jax validates whole batches")
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--cornac_epochs", type=int, default=20, help="cornac's n_epochs (its default is 20)")
  p.add_argument("--eval_every_epochs", type=int, default=2, help="validation cadence, in epochs, for both")
  p.add_argument("--tiger_steps", type=int, default=None, help="default: as many examples as cornac's epochs")
  p.add_argument("--tiger_eval_period", type=int, default=None, help="default: --eval_every_epochs in steps")
  p.add_argument("--tiger_gin", default="gin/beauty.gin", help="tiger_jax's recipe (the paper's by default)")
  p.add_argument("--tiger_rqvae_gin", default=None, help="without --semantic_ids: a gin/rqvae/*.gin for its ids stage")
  p.add_argument("--tiger_task", default="tiger_beauty", help="e.g. tiger_beauty_nouser: no user token")
  p.add_argument("--tiger_binding", action="append", default=[], help="NAME=VALUE gin binding for training")
  p.add_argument("--cornac_arg", action="append", default=[], help="NAME=VALUE cornac TIGER constructor override")
  p.add_argument("--cornac_device", default="auto")
  p.add_argument("--target_ndcg", type=float, default=None, help="default: the lower of the two runs' best")
  p.add_argument("--compilation_cache_dir", default=None, help="default: <work_dir>/xla_cache, emptied first")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--merge", action="store_true",
                 help="keep the side not run now from --out_dir's peer_cornac.json (same data, IDs and batch size)")
  args = p.parse_args(argv)
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stops a running stage too
  sides = [s for s in args.sides.split(",") if s]
  if not sides or set(sides) - set(SIDES):
    p.error(f"--sides: expected some of {list(SIDES)}, got {args.sides!r}")
  if args.cornac_epochs % args.eval_every_epochs:
    p.error("--cornac_epochs must be a multiple of --eval_every_epochs (cornac validates at multiples only)")
  overrides = parse_cornac_args(args.cornac_arg)
  work = os.path.abspath(args.work_dir or os.path.join(args.out_dir, "work"))
  os.makedirs(args.out_dir, exist_ok=True)
  os.makedirs(work, exist_ok=True)

  data_dir = os.path.abspath(args.data_dir)
  if args.max_users:
    data_dir = subset_data_dir(data_dir, os.path.join(work, "data"), args.max_users)
  dataset = load_dataset(data_dir)
  asins = dataset.catalog.asins
  train_examples = sum(max(len(s) - 3, 0) for s in dataset.sessions.sequences)
  steps_per_epoch = -(-train_examples // args.batch_size)
  eval_users, eval_steps = num_eval_users(len(dataset.sessions), args.eval_users, args.eval_batch_size)
  tiger_steps = args.tiger_steps or args.cornac_epochs * steps_per_epoch
  eval_period = args.tiger_eval_period or args.eval_every_epochs * steps_per_epoch
  codes, codebook_size = (load_semantic_ids(args.semantic_ids, asins) if args.semantic_ids else (None, 256))

  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
             PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
             HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
  report: dict[str, Any] = {
      **_common.run_metadata(argv if argv is not None else sys.argv),
      **(recipe_speed.device_of(env) if "tiger_jax" in sides else {}),
      "data": {"data_dir": data_dir, "users": len(dataset.sessions), "items": len(asins),
               "train_examples": train_examples, "steps_per_epoch": steps_per_epoch, "eval_users": eval_users},
      "semantic_ids": ({"mode": "identical", "path": os.path.abspath(args.semantic_ids)} if args.semantic_ids else
                       {"mode": "own (each side builds its IDs from the same embeddings)"}),
      "embeddings_dir": os.path.abspath(args.embeddings_dir),
      "settings": {"batch_size": args.batch_size, "cornac_epochs": args.cornac_epochs,
                   "eval_every_epochs": args.eval_every_epochs, "tiger_steps": tiger_steps,
                   "tiger_eval_period": eval_period, "tiger_gin": args.tiger_gin, "tiger_task": args.tiger_task,
                   "tiger_rqvae_gin": args.tiger_rqvae_gin, "cornac_overrides": overrides,
                   "seed": args.seed},
  }
  path = os.path.join(args.out_dir, "peer_cornac.json")
  if args.merge and os.path.exists(path):
    merge_other_side(report, path, sides)

  def write():
    report["comparison"] = compare(report, args.target_ndcg)
    with open(path, "w") as f:
      json.dump(report, f, indent=1)

  if "tiger_jax" in sides:
    print(f"\n== tiger_jax: {args.tiger_gin}, {tiger_steps} steps, validation every {eval_period}", flush=True)
    xla_cache = os.path.abspath(args.compilation_cache_dir or os.path.join(work, "xla_cache"))
    if not args.compilation_cache_dir:
      shutil.rmtree(xla_cache, ignore_errors=True)
    bindings = tiger_bindings(batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                              train_steps=tiger_steps, eval_period=eval_period, eval_steps=eval_steps,
                              seed=args.seed, extra=args.tiger_binding)
    report["tiger_jax"] = run_tiger(
        task=args.tiger_task, data_dir=data_dir, work_dir=os.path.join(work, "tiger_jax"),
        log_dir=os.path.join(args.out_dir, "logs"), gin_file=args.tiger_gin, semantic_ids=args.semantic_ids,
        embeddings_dir=os.path.abspath(args.embeddings_dir), compilation_cache_dir=xla_cache,
        train_steps=tiger_steps, bindings=bindings, batch_size=args.batch_size, env=env,
        rqvae_gin=args.tiger_rqvae_gin)
    report["tiger_jax"]["run"] = side_run(report)
    write()
  if "cornac" in sides:
    print(f"\n== cornac TIGER: {args.cornac_epochs} epochs, validation every {args.eval_every_epochs}", flush=True)

    def keep_cornac(side: dict) -> None:  # after each validation (complete: False), then once complete
      report["cornac"] = dict(side, run=side_run(report))
      write()

    keep_cornac(run_cornac(
        dataset=dataset, embeddings=load_embeddings(args.embeddings_dir, asins), codes=codes,
        codebook_size=codebook_size, eval_users=eval_users, epochs=args.cornac_epochs,
        eval_every=args.eval_every_epochs, batch_size=args.batch_size, device=args.cornac_device,
        seed=args.seed, overrides=overrides, on_progress=keep_cornac))
  write()
  print_table(report)
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
