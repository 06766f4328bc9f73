"""Cold-start experiment (paper Sec. 4.3, Figure 5): TIGER against Semantic_KNN on unseen items.

Stages (each skipped when its artifact is current; pick with --stages):
  split  choose the unseen 5% of the test items           -> WORK/cold_start_split.json   (numpy; anywhere)
  ids    RQ-VAE on seen items, IDs for all items         -> WORK/semantic_ids.npz         (jax; GPU for paper.gin)
  cache  task cache without unseen items in train/val    -> CACHE/<task>/                 (TensorFlow + seqio)
  train  the sequence model on that cache                -> MODEL_DIR                     (jax; GPU)
  eval   beam search over seen IDs + unseen buckets, KNN -> OUT_DIR/NAME.{json,md,png}    (jax + gin; GPU)

The ids/cache/train stages call the existing entry points (python -m tiger_jax.semantic_ids, tasks.cache_tasks,
tiger_jax.train) in subprocesses with the experiment's gin files, as run.sh does. WORK must hold
embeddings.npy + embeddings.json of the dataset (python -m tiger_jax.embed), or --embeddings_dir points at
them and they are copied.

  # CPU side (TensorFlow): split, and after the IDs exist, the cache
  python -m benchmarks.cold_start --stages=split,ids,cache --work_dir=work/beauty_coldstart \
      --embeddings_dir=work/beauty --rqvae_gin=gin/rqvae/paper.gin
  # GPU side: train and evaluate
  python -m benchmarks.cold_start --stages=train,eval --work_dir=work/beauty_coldstart \
      --gin_file=gin/beauty_coldstart.gin --name=cold_start_beauty_h100
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from typing import Optional, Sequence


import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402
from tiger_jax import cold_start  # noqa: E402
from tiger_jax.data import cold_start as split_lib  # noqa: E402
from tiger_jax import utils  # noqa: E402

log = logging.getLogger("cold_start")
STAGES = ("split", "ids", "cache", "train", "eval")
METHODS = ("TIGER", "Semantic_KNN")
SUBSETS = {"unseen_targets": "test users whose target is unseen", "all": "all test users"}


def _floats(text: str) -> list[float]:
  return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
  if "-" in text and "," not in text:
    lo, hi = text.split("-")
    return list(range(int(lo), int(hi) + 1))
  return [int(x) for x in text.split(",") if x]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--stages", default=",".join(STAGES), help=f"Comma-separated subset of {STAGES}.")
  p.add_argument("--data_dir", default="data/beauty")
  p.add_argument("--work_dir", default="work/beauty_coldstart")
  p.add_argument("--embeddings_dir", default=None, help="Where embeddings.npy/.json are (default: work_dir).")
  p.add_argument("--task", default="tiger_beauty_coldstart")
  p.add_argument("--fraction", type=float, default=split_lib.DEFAULT_FRACTION)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--rqvae_gin", default="gin/rqvae/paper.gin")
  p.add_argument("--gin_file", action="append", default=None,
                 help="Experiment gin file(s) for training (default gin/beauty_coldstart.gin).")
  p.add_argument("--gin_bindings", action="append", default=[], help="Extra training bindings.")
  p.add_argument("--cache_dir", default=None, help="Default: WORK/cache.")
  p.add_argument("--model_dir", default=None, help="Default: WORK/model.")
  p.add_argument("--checkpoint", default="best")
  p.add_argument("--num_beams", type=int, default=20)
  p.add_argument("--batch_size", type=int, default=512)
  p.add_argument("--max_users", type=int, default=None, help="Evaluate only the first N test users.")
  p.add_argument("--length_buckets", default="17,33,49,81",
                 help="Encoder lengths decoding batches are trimmed to (one compile each); '' = full width.")
  p.add_argument("--ks", default="1-20", help="K for Recall@K against K, e.g. 1-20 or 1,5,10.")
  p.add_argument("--epsilons", default=",".join(f"{e:g}" for e in cold_start.DEFAULT_EPSILONS))
  p.add_argument("--epsilon_for_k", type=float, default=0.1)
  p.add_argument("--k_for_epsilon", type=int, default=10)
  p.add_argument("--rounding", default="floor", choices=cold_start.ROUNDINGS)
  p.add_argument("--prefix_levels", type=int, default=cold_start.PREFIX_LEVELS,
                 help="Codes an unseen item must share with a beam to become a candidate (paper: 3).")
  p.add_argument("--out_dir", default="experiments/results")
  p.add_argument("--name", default="cold_start_beauty")
  p.add_argument("--force", action="store_true", help="Redo the split/ids/cache stages even if current.")
  args = p.parse_args(argv)
  args.stages = _common.parse_stages(p, args.stages, STAGES)
  args.gin_file = args.gin_file or ["gin/beauty_coldstart.gin"]
  args.cache_dir = args.cache_dir or os.path.join(args.work_dir, "cache")
  args.model_dir = args.model_dir or os.path.join(args.work_dir, "model")
  args.embeddings_dir = args.embeddings_dir or args.work_dir
  return args


def _run(cmd: list[str]) -> None:
  log.info("$ %s", " ".join(cmd))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
  env["PYTHONPATH"] = _common.REPO + os.pathsep + env.get("PYTHONPATH", "")
  subprocess.run(cmd, cwd=_common.REPO, env=env, check=True)


def _abs(path: str) -> str:
  return os.path.abspath(path)


def split_path(args) -> str:
  return os.path.join(args.work_dir, split_lib.FILENAME)


# ----------------------------------------------------------------------------- stages


def stage_split(args) -> None:
  from tiger_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
  path = split_path(args)
  split = split_lib.choose_unseen_items(load_dataset(args.data_dir), args.fraction, args.seed)
  if os.path.exists(path) and not args.force:
    old = split_lib.ColdStartSplit.load(path)
    if old.content_hash() == split.content_hash():
      log.info("%s is current", path)
      return
    raise SystemExit(f"{path} holds another split (fraction {old.fraction}, seed {old.seed}); pass --force "
                     "to replace it (the IDs, cache and model built on it then need rebuilding)")
  split.save(path)
  log.info("wrote %s: %d unseen of %d test items", path, len(split.unseen_asins), split.num_test_items)


def stage_ids(args) -> None:
  for name in ("embeddings.npy", "embeddings.json"):
    src, dst = os.path.join(args.embeddings_dir, name), os.path.join(args.work_dir, name)
    if _abs(src) != _abs(dst) and not os.path.exists(dst):
      shutil.copyfile(src, dst)
  cmd = [sys.executable, "-m", "tiger_jax.semantic_ids", f"--gin_file={args.rqvae_gin}",
         f"--work_dir={_abs(args.work_dir)}",
         f"--gin.make_semantic_ids.cold_start_split='{_abs(split_path(args))}'"]
  _run(cmd + (["--force"] if args.force else []))


def stage_cache(args) -> None:
  cmd = [sys.executable, "-m", "tasks.cache_tasks", f"--tasks={args.task}", f"--data_dir={_abs(args.data_dir)}",
         f"--output_cache_dir={_abs(args.cache_dir)}",
         f"--semantic_ids={_abs(os.path.join(args.work_dir, 'semantic_ids.npz'))}",
         f"--cold_start_split={_abs(split_path(args))}"]
  _run(cmd + (["--force"] if args.force else []))


def stage_train(args) -> None:
  cmd = [sys.executable, "-m", "tiger_jax.train"] + [f"--gin_file={g}" for g in args.gin_file]
  cmd += [f"--gin.MODEL_DIR='{_abs(args.model_dir)}'", f"--gin.TASK_CACHE_DIR='{_abs(args.cache_dir)}'",
          f"--gin.MIXTURE_OR_TASK_NAME='{args.task}'"]
  cmd += [f"--gin_bindings={b}" for b in args.gin_bindings]
  _run(cmd)


# ----------------------------------------------------------------------------- evaluation


def load_embeddings_for(asins: np.ndarray, embeddings_dir: str) -> np.ndarray:
  """embeddings.npy rows in the order of `asins` (the cache's catalogue order)."""
  from tiger_jax import embed  # pylint: disable=g-import-not-at-top  (gin only; no sentence-transformers)
  x, emb_asins, _ = embed.load_embeddings(embeddings_dir)
  row = {a: i for i, a in enumerate(emb_asins)}
  missing = [a for a in asins.tolist() if a not in row]
  if missing:
    raise ValueError(f"{embeddings_dir}: no embedding for {len(missing)} catalogue items, e.g. {missing[:3]}")
  return np.asarray(x)[[row[a] for a in asins.tolist()]]


def evaluate(args) -> dict:
  """TIGER and Semantic_KNN candidates for the test users, and Figure 5's recall tables."""
  from tiger_jax import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from tiger_jax import checkpoints, decoding, infer, utils  # pylint: disable=g-import-not-at-top
  from tiger_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top

  start = time.time()
  layout = vocab_lib.DEFAULT_LAYOUT
  tables = eval_lib.CatalogTables.load(args.cache_dir, args.task)
  codes = layout.tokens_to_codes(tables.item_tokens)
  split = split_lib.ColdStartSplit.load(os.path.join(args.cache_dir, args.task, split_lib.FILENAME))
  unseen_mask = split.unseen_mask(tables.asins.tolist())
  info = utils.load_task_info(args.cache_dir, args.task)
  cfg = utils.DatasetConfig(mixture_or_task_name=args.task, task_feature_lengths=info.get("feature_lengths", {}),
                            split="test", batch_size=args.batch_size, shuffle=False, cache_dir=args.cache_dir)
  arrays = utils.get_dataset_arrays(cfg, (utils.ENCODER_INPUT, "user_index", "target_item"))
  if args.max_users:
    arrays = {k: v[:args.max_users] for k, v in arrays.items()}
  target = arrays["target_item"]
  ks, epsilons = _ints(args.ks), _floats(args.epsilons)

  model = infer.model_from_config(os.path.join(args.model_dir, "config.gin"))
  params, step = checkpoints.restore_params(args.model_dir, args.checkpoint)
  trie, seen_rows = cold_start.seen_trie(codes, unseen_mask, layout.codebook_size)
  retriever = eval_lib.Retriever(model, params, trie, args.num_beams, constrain=True, batch_size=args.batch_size,
                                 length_buckets=_ints(args.length_buckets) or None)
  t0 = time.time()
  beam_items, beam_scores = retriever.retrieve(arrays[utils.ENCODER_INPUT])
  decode_seconds = time.time() - t0
  live = beam_items >= 0
  beam_codes = codes[seen_rows[np.maximum(beam_items, 0)]]
  tiger = cold_start.tiger_candidates(beam_codes, live & np.isfinite(beam_scores), codes, unseen_mask,
                                     args.prefix_levels)

  full_trie = decoding.SemanticIdTrie.from_codes(codes, layout.codebook_size)
  query = cold_start.last_history_items(arrays[utils.ENCODER_INPUT], full_trie, layout.codeword_offset,
                                        layout.codebook_size)
  x = load_embeddings_for(tables.asins, args.embeddings_dir)
  knn = cold_start.knn_candidates(x, query, max(ks + [args.k_for_epsilon]) + int(unseen_mask.sum()))

  results = cold_start.recall_tables({"TIGER": tiger, "Semantic_KNN": knn}, target, unseen_mask, ks, epsilons,
                                     args.epsilon_for_k, args.k_for_epsilon, args.rounding)
  unseen_target = unseen_mask[target]
  in_candidates = (tiger == target[:, None]).any(axis=1)
  seen_prefixes = {tuple(r) for r in codes[~unseen_mask, :args.prefix_levels].tolist()}
  diagnostics = {
      "unseen_items": int(unseen_mask.sum()), "seen_items": int((~unseen_mask).sum()),
      # Only these can ever be TIGER candidates: the others' prefix is no seen item's, so no beam reaches it.
      "unseen_items_sharing_a_seen_prefix": int(sum(tuple(r) in seen_prefixes
                                                    for r in codes[unseen_mask, :args.prefix_levels].tolist())),
      "unseen_target_among_tiger_candidates": float(in_candidates[unseen_target].mean())
      if unseen_target.any() else None,
      "mean_tiger_candidates": float((tiger >= 0).sum(axis=1).mean()),
      "users_without_history_item": int((query < 0).sum()),
  }
  config = {"task": args.task, "cache_dir": args.cache_dir, "model_dir": args.model_dir, "step": int(step),
            "checkpoint": args.checkpoint, "num_beams": args.num_beams, "constrained_to_seen_ids": True,
            "ks": ks, "epsilons": epsilons, "epsilon_for_k": args.epsilon_for_k,
            "k_for_epsilon": args.k_for_epsilon, "rounding": args.rounding, "max_users": args.max_users,
            "prefix_levels": args.prefix_levels,
            "split": {k: v for k, v in split.to_json().items() if k != "unseen_asins"},
            "knn": "cosine to the most recent test-history item over all items (seen and unseen), itself excluded",
            "subsets": SUBSETS}
  timings = {"decode_seconds": round(decode_seconds, 2), "seconds": round(time.time() - start, 2)}
  return {"experiment": "cold_start", "config": config, "results": results, "diagnostics": diagnostics,
          "timings": timings}


# ----------------------------------------------------------------------------- outputs


def markdown(result: dict, title: str) -> list[str]:
  """Figure 5 as tables: Recall@K against K, Recall@k against epsilon; TIGER and KNN on the same users."""
  r, c = result["results"], result["config"]
  subsets = list(r["num_users"])
  lines = [f"# {title}", "",
           f"Rounding of K * epsilon: {c['rounding']}; users: " +
           ", ".join(f"{s} = {r['num_users'][s]}" for s in subsets), "",
           f"## Recall@K against K (epsilon = {c['epsilon_for_k']:g})", ""]
  header = ["K"] + [f"{m} ({s})" for s in subsets for m in METHODS]
  rows = [[k] + [r["recall_at_k"][m][s][str(k)] for s in subsets for m in METHODS] for k in c["ks"]]
  lines += _common.markdown_table(header, rows) + ["", f"## Recall@{c['k_for_epsilon']} against epsilon", ""]
  header = ["epsilon"] + [f"{m} ({s})" for s in subsets for m in METHODS]
  rows = [[f"{e:g}"] + [r["recall_vs_epsilon"][m][s][f"{e:g}"] for s in subsets for m in METHODS]
          for e in c["epsilons"]]
  lines += _common.markdown_table(header, rows) + [""]
  return lines


def plot(result: dict, path: str) -> None:
  """Figure 5: rows = user subsets, columns = Recall@K vs K and Recall@k vs epsilon; TIGER and KNN lines."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  r, c = result["results"], result["config"]
  subsets = list(r["num_users"])
  fig, axes = plt.subplots(len(subsets), 2, figsize=(11, 3.6 * len(subsets)), squeeze=False)
  for row, s in enumerate(subsets):
    for m, style in zip(METHODS, ("o-", "s--")):
      axes[row, 0].plot(c["ks"], [r["recall_at_k"][m][s][str(k)] for k in c["ks"]], style, label=m, ms=4)
      axes[row, 1].plot(c["epsilons"], [r["recall_vs_epsilon"][m][s][f"{e:g}"] for e in c["epsilons"]], style,
                        label=m, ms=4)
    axes[row, 0].set(xlabel="K", ylabel="Recall@K",
                     title=f"{SUBSETS.get(s, s)} ({r['num_users'][s]}), epsilon = {c['epsilon_for_k']:g}")
    axes[row, 1].set(xlabel="epsilon", ylabel=f"Recall@{c['k_for_epsilon']}",
                     title=f"{SUBSETS.get(s, s)} ({r['num_users'][s]})")
    for ax in axes[row]:
      ax.grid(alpha=0.3)
      ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_outputs(result: dict, out_dir: str, name: str) -> dict:
  base = os.path.join(out_dir, name)
  os.makedirs(out_dir, exist_ok=True)
  result["files"] = {"markdown": name + ".md", "plot": name + ".png"}
  with open(base + ".md", "w") as f:
    f.write("\n".join(markdown(result, f"Cold-start retrieval ({name})") +
                      ["```", _json_dumps(result["meta"]), "```", ""]))
  _common.try_plot(plot, result, base + ".png", log)
  utils.write_json(base + ".json", result)
  return result


def _json_dumps(obj) -> str:
  import json  # pylint: disable=g-import-not-at-top
  return json.dumps(obj, indent=1)


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s] %(message)s")
  args = parse_args(argv)
  stage_seconds = {}
  result = None
  for stage in STAGES:
    if stage not in args.stages:
      continue
    t0 = time.time()
    if stage == "eval":
      result = evaluate(args)
    else:
      globals()[f"stage_{stage}"](args)
    stage_seconds[stage] = round(time.time() - t0, 1)
    log.info("stage %s: %.1f s", stage, stage_seconds[stage])
  if result is not None:
    result["meta"] = _common.run_metadata(sys.argv if argv is None else ["benchmarks/cold_start.py"] + list(argv),
                                          stage_seconds=stage_seconds)
    write_outputs(result, args.out_dir, args.name)
    for s, n in result["results"]["num_users"].items():
      log.info("%s (%d users): Recall@10 TIGER %.4f, Semantic_KNN %.4f", s, n,
               result["results"]["recall_at_k"]["TIGER"][s].get("10", float("nan")),
               result["results"]["recall_at_k"]["Semantic_KNN"][s].get("10", float("nan")))
  return result


if __name__ == "__main__":
  main()
