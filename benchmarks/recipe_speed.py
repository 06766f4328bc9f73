"""Wall time of a whole recipe on one machine: every stage run as a user runs it, cold and warm compilation cache.

  python -m benchmarks.recipe_speed --dataset beauty --out_dir out \
      [--recipes paper,tuned] [--caches cold,warm] [--embeddings_dir DIR] [--train_steps N]

Each recipe is the chain of stage commands (python -m tiger_jax.embed, tiger_jax.semantic_ids,
tasks.cache_tasks, tiger_jax.train, tiger_jax.eval), each a process of its own, in a fresh work directory.
'cold' starts from an empty compilation cache (a first run on a machine); 'warm' then reruns every stage in
another fresh work directory with the cache the cold run filled (a second run, or another dataset of the
same shapes). Recipes: `paper` is gin/<dataset>.gin, `tuned` gin/<dataset>_tuned.gin, `any` gin/tuned.gin (one
stage, tiger_jax.select_refit, trains its candidates, refits and tests); NAME=GIN_FILE names any other. The
Semantic IDs follow the recipe's own gin file (--rqvae_gin adds a Semantic-ID file after it).

--embeddings_dir copies embeddings.npy/embeddings.json from there instead of running the embedding stage
(which needs the sentence-transformers model on disk). --train_steps shortens training; the table then also
projects the recipe's own step count from the measured step time. Prints each stage's wall time and the
totals, and writes recipe_speed.json (with every stage's command and log) under --out_dir.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional, Sequence


from benchmarks import _common  # noqa: E402  (command, date, revision, card)

REPO = _common.REPO
STAGES = ("embed", "ids", "cache", "train", "eval")
# A select-then-refit recipe (gin/tuned.gin) trains its candidates, refits and tests in one stage.
SELECT_REFIT_STAGES = ("embed", "ids", "cache", "select_refit")


def is_select_refit(gin_file: str) -> bool:
  """Whether the experiment file configures tiger_jax.select_refit (run.sh's test, too)."""
  with open(gin_file if os.path.isfile(gin_file) else os.path.join(REPO, gin_file)) as f:
    return "select_refit" in f.read()
EMBEDDING_FILES = ("embeddings.npy", "embeddings.json")


@dataclasses.dataclass
class StageResult:
  name: str
  command: list
  seconds: float
  returncode: int
  log: str
  given: bool = False  # copied from elsewhere instead of run


def recipe_gin_files(dataset: str, specs: Sequence[str]) -> dict[str, str]:
  """Recipe name -> experiment gin file: 'paper', 'tuned' (the dataset's own), 'any' (gin/tuned.gin, the one
  select-then-refit recipe for any catalogue), or NAME=GIN_FILE."""
  out = {}
  for spec in specs:
    name, sep, path = spec.partition("=")
    if not sep:
      defaults = {"paper": f"gin/{dataset}.gin", "tuned": f"gin/{dataset}_tuned.gin", "any": "gin/tuned.gin"}
      if name not in defaults:
        raise ValueError(f"--recipes: unknown recipe {name!r}; use paper, tuned, any or NAME=GIN_FILE")
      path = defaults[name]
    if not os.path.isfile(os.path.join(REPO, path)) and not os.path.isfile(path):
      raise FileNotFoundError(f"--recipes: {name}'s gin file {path} does not exist")
    out[name] = path
  return out


def stage_commands(*, dataset: str, data_dir: str, work_dir: str, gin_file: str, rqvae_gin: Optional[str],
                   compilation_cache_dir: str, train_steps: Optional[int] = None,
                   embeddings_dir: Optional[str] = None, bindings: Sequence[str] = (),
                   eval_bindings: Sequence[str] = (), python: str = sys.executable) -> list[tuple[str, list]]:
  """(stage, argv) of one recipe run, in order; the embed stage is None when embeddings are given."""
  task = f"tiger_{dataset}"
  model_dir = os.path.join(work_dir, "model")
  cache_dir = os.path.join(work_dir, "cache")
  run_gin = [f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TASK_CACHE_DIR='{cache_dir}'",
             f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--compilation_cache_dir={compilation_cache_dir}"]
  if train_steps:
    run_gin.append(f"--gin.TRAIN_STEPS={int(train_steps)}")
  run_gin += [f"--gin.{b}" for b in bindings]
  embed = None if embeddings_dir else [python, "-m", "tiger_jax.embed", f"--data_dir={data_dir}",
                                       f"--work_dir={work_dir}"]
  if is_select_refit(gin_file):
    train_and_test = [("select_refit", [python, "-m", "tiger_jax.select_refit", *run_gin])]
  else:
    train_and_test = [
        ("train", [python, "-m", "tiger_jax.train", *run_gin]),
        # The checkpoint the recipe keeps as best, or its last one when it keeps none (a refit).
        ("eval", [python, "-m", "tiger_jax.eval", *run_gin, "--gin_file=gin/runs/eval.gin",
                  "--gin.EVAL_CHECKPOINT='{eval_checkpoint}'", *[f"--gin.{b}" for b in eval_bindings]]),
    ]
  return [
      ("embed", embed),
      ("ids", [python, "-m", "tiger_jax.semantic_ids", f"--data_dir={data_dir}", f"--work_dir={work_dir}",
               f"--gin_file={gin_file}", *([f"--gin_file={rqvae_gin}"] if rqvae_gin else []),
               f"--compilation_cache_dir={compilation_cache_dir}"]),
      ("cache", [python, "-m", "tasks.cache_tasks", f"--tasks={task}", f"--data_dir={data_dir}",
                 f"--output_cache_dir={cache_dir}", f"--semantic_ids={os.path.join(work_dir, 'semantic_ids.npz')}",
                 "--backend=numpy"]),
      *train_and_test,
  ]


def eval_checkpoint(model_dir: str) -> str:
  return "best" if os.path.isdir(os.path.join(model_dir, "best")) else "latest"


def run_stages(commands: Sequence[tuple[str, Optional[list]]], work_dir: str, log_dir: str,
               embeddings_dir: Optional[str] = None, env: Optional[dict] = None) -> list[StageResult]:
  """Runs the stages in order, each timed; stops after the first that fails (later ones need its output)."""
  os.makedirs(work_dir, exist_ok=True)
  os.makedirs(log_dir, exist_ok=True)
  results = []
  for name, argv in commands:
    log_path = os.path.join(log_dir, f"{name}.log")
    start = time.time()
    if argv is None:
      for f in EMBEDDING_FILES:
        shutil.copyfile(os.path.join(embeddings_dir, f), os.path.join(work_dir, f))
      results.append(StageResult(name, ["copy", embeddings_dir], time.time() - start, 0, log_path, given=True))
      open(log_path, "w").close()
      continue
    argv = [a.replace("{eval_checkpoint}", eval_checkpoint(os.path.join(work_dir, "model"))) for a in argv]
    with open(log_path, "w") as log:
      proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
      try:
        returncode = proc.wait()
      finally:  # interrupted (Ctrl-C, SIGTERM): the stage must not outlive the benchmark and hold the GPU
        if proc.poll() is None:
          proc.terminate()
          try:
            proc.wait(timeout=60)
          except subprocess.TimeoutExpired:
            proc.kill()
    results.append(StageResult(name, argv, time.time() - start, returncode, log_path))
    print(f"  {name:<6} {results[-1].seconds:8.1f} s  rc={returncode}  ({log_path})", flush=True)
    if returncode != 0:
      break
  return results


_COMPILED = re.compile(r"compiled the .*? loop for encoder length (\d+) in ([\d.]+)s")
_TRAINED = re.compile(r"trained steps (\d+)\.\.(\d+) in \S+: ([\d.]+) steps/s while training \(([\d.]+) ms/step\); "
                      r"(\S+) compiling, evaluating and checkpointing")
_EVAL = re.compile(r"eval at step (\d+) \(([\d.]+)s\): .*")
_EPOCH = re.compile(r"epoch (\d+)/(\d+) .*\(([\d.]+)s\)")
_IDS_WRITTEN = re.compile(r"wrote \S+semantic_ids\.npz: (\{.*\})")
_BY_LENGTH_LINE = re.compile(r"ms/step by encoder length: (.*)")
_BY_LENGTH = re.compile(r"(\d+): ([\d.]+) \((\d+) steps\)")
_BEAM_SEARCH = re.compile(r"compiled the beam search for encoder length (\d+) \((traced program from disk|traced and stored)\)")


def parse_beam_search_sources(text: str) -> dict:
  """Encoder length -> 'disk' or 'traced': where a log's beam searches came from (tiger_jax/program_cache.py);
  lengths that logged nothing were traced outside that cache."""
  return {int(length): "disk" if how.endswith("disk") else "traced" for length, how in _BEAM_SEARCH.findall(text)}


def parse_train_log(text: str) -> dict:
  """What tiger_jax.train logged about compiling, step time and its evaluations."""
  out: dict = {"loop_compile_seconds": {}, "evals": []}
  for length, seconds in _COMPILED.findall(text):
    out["loop_compile_seconds"][int(length)] = out["loop_compile_seconds"].get(int(length), 0.0) + float(seconds)
  trained = _TRAINED.findall(text)
  if trained:
    first, last, rate, ms, paused = trained[-1]
    out.update(steps=int(last) - int(first), steps_per_second=float(rate), ms_per_step=float(ms),
               paused=paused)
  by_length = _BY_LENGTH_LINE.findall(text)
  if by_length:
    out["ms_per_step_by_length"] = {int(length): float(ms) for length, ms, _ in _BY_LENGTH.findall(by_length[-1])}
  for line in _EVAL.finditer(text):
    entry = {"step": int(line.group(1)), "seconds": float(line.group(2))}
    ndcg = re.search(r"validation/ndcg@10 ([\d.]+)", line.group(0))
    if ndcg:
      entry["validation_ndcg@10"] = float(ndcg.group(1))
    out["evals"].append(entry)
  return out


def parse_ids_log(text: str) -> dict:
  """The ids stage's RQ-VAE: epochs and seconds of its training loop (first compile included) as its last
  progress line gives them, and the statistics of the Semantic IDs it wrote."""
  out: dict = {}
  epochs = _EPOCH.findall(text)
  if epochs:
    done, total, seconds = epochs[-1]
    out.update(epochs=int(done), loop_seconds=float(seconds))
  written = _IDS_WRITTEN.findall(text)
  if written:
    try:
      out.update(json.loads(written[-1]))
    except ValueError:
      pass
  return out


def recipe_train_steps(gin_file: str) -> Optional[int]:
  """TRAIN_STEPS as the recipe's gin file (or the last file it includes that sets it) gives it."""
  steps = None
  with open(os.path.join(REPO, gin_file) if not os.path.isfile(gin_file) else gin_file) as f:
    for line in f:
      include = re.match(r"\s*include\s+'([^']+)'", line)
      if include:
        inner = recipe_train_steps(include.group(1)) if os.path.isfile(os.path.join(REPO, include.group(1))) else None
        steps = inner if inner is not None else steps
      match = re.match(r"\s*TRAIN_STEPS\s*=\s*(\d+)", line)
      if match:
        steps = int(match.group(1))
  return steps


def summarise(results: list[StageResult], model_dir: str, num_stages: int = len(STAGES)) -> dict:
  stages = {r.name: {"seconds": round(r.seconds, 1), "returncode": r.returncode, "given": r.given,
                     "command": r.command, "log": r.log} for r in results}
  out = {"stages": stages, "total_seconds": round(sum(r.seconds for r in results), 1),
         "complete": len(results) == num_stages and all(r.returncode == 0 for r in results)}
  # select_refit's log holds every candidate's training and the refit's; the last summary line is the refit's.
  ids = next((r for r in results if r.name == "ids" and not r.given), None)
  if ids is not None and os.path.exists(ids.log):
    with open(ids.log) as f:
      out["ids"] = parse_ids_log(f.read())
  train = next((r for r in results if r.name in ("train", "select_refit")), None)
  if train is not None:
    with open(train.log) as f:
      out["train"] = parse_train_log(f.read())
  metrics_path = os.path.join(model_dir, "eval_test", "metrics.json")
  if not os.path.exists(metrics_path):
    metrics_path = os.path.join(model_dir, "test", "metrics.json")  # select_refit's phase 3
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      m = json.load(f)
    out["test"] = {k: m.get(k) for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "num_users", "step",
                                         "checkpoint", "decode_seconds", "seconds")}
  evaluation = next((r for r in results if r.name == "eval"), None)
  if evaluation is not None and "test" in out and os.path.exists(evaluation.log):
    with open(evaluation.log) as f:
      out["test"]["beam_search"] = parse_beam_search_sources(f.read())
  return out


def print_table(report: dict) -> None:
  print(f"\n== recipe wall time, {report['dataset']}, {report.get('device_kind', '?')} "
        f"(jax {report.get('jax', '?')}, revision {report['git_revision']})")
  for recipe, runs in report["recipes"].items():
    caches = list(runs)
    print(f"\n{recipe} ({report['gin_files'][recipe]}):")
    print(f"  {'stage':<8}" + "".join(f"{c:>12}" for c in caches))
    stages = STAGES if "train" in runs[caches[0]]["stages"] else SELECT_REFIT_STAGES
    for stage in stages:
      cells = []
      for c in caches:
        s = runs[c]["stages"].get(stage)
        cells.append("-" if s is None else ("given" if s["given"] else
                                            f"{s['seconds']:.1f} s" + ("" if s["returncode"] == 0 else " FAIL")))
      print(f"  {stage:<8}" + "".join(f"{x:>12}" for x in cells))
    print(f"  {'total':<8}" + "".join(f"{runs[c]['total_seconds']:>10.1f} s" for c in caches))
    for c in caches:
      ids = runs[c].get("ids") or {}
      if "loop_seconds" in ids:
        print(f"  {c}: RQ-VAE {ids['epochs']} epochs in {ids['loop_seconds']:.1f} s (first compile included)"
              + (f"; codebook usage {ids['codebook_usage']}, {ids['unique_prefixes']} unique prefixes, largest "
                 f"bucket {ids['largest_bucket']}, {ids['items_in_collisions']} items in collisions"
                 if "unique_prefixes" in ids else ""))
    for c in caches:
      train = runs[c].get("train", {})
      test = runs[c].get("test") or {}
      line = f"  {c}: "
      if "ms_per_step" in train:
        by_length = train.get("ms_per_step_by_length") or {}
        line += (f"{train['steps']} steps at {train['ms_per_step']:.2f} ms/step"
                 + (" (" + ", ".join(f"length {k}: {v:.2f}" for k, v in sorted(by_length.items())) + ")"
                    if by_length else "") + f", {train['paused']} compiling, "
                 f"evaluating and checkpointing; the slowest of the loops compiled side by side took "
                 f"{max(train['loop_compile_seconds'].values(), default=0.0):.1f} s")
      if test:
        line += f"; test ndcg@10 {test['ndcg@10']:.4f} ({test['num_users']} users, {test['seconds']} s"
        sources = test.get("beam_search") or {}
        if sources:
          line += f", beam search of {sum(v == 'disk' for v in sources.values())}/{len(sources)} lengths from disk"
        line += ")"
      print(line)
      validations = [e for e in train.get("evals", []) if "validation_ndcg@10" in e]
      if validations:  # the recipe's quality at the steps it ran, and what its first decode cost
        last = validations[-1]
        print(f"  {c}: validation ndcg@10 {last['validation_ndcg@10']:.4f} at step {last['step']}; "
              f"the first validation took {validations[0]['seconds']:.1f} s, the last {last['seconds']:.1f} s")
      projected = runs[c].get("projected_train_seconds")
      if projected:
        print(f"  {c}: the recipe's {runs[c]['recipe_train_steps']} steps at that step time: "
              f"{projected / 60:.1f} min of training")


def device_of(env: dict) -> dict:
  """The card and jax version, asked in a child process: this one must not take the GPU's memory."""
  probe = ("import json, jax; d = jax.devices()[0]; "
           "print(json.dumps({'device_kind': d.device_kind, 'backend': jax.default_backend(), 'jax': jax.__version__}))")
  done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
  try:
    return json.loads(done.stdout.strip().splitlines()[-1])
  except (IndexError, ValueError):
    return {"device_kind": "unknown", "device_probe_error": done.stderr[-500:]}


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", default="beauty")
  p.add_argument("--data_dir", default=None, help="default: data/<dataset>")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--work_root", default=None, help="work directories (default: <out_dir>/work)")
  p.add_argument("--recipes", default="paper", help="comma-separated: paper, tuned, any, NAME=GIN_FILE")
  p.add_argument("--caches", default="cold,warm", help="cold (empty compilation cache), warm (the cold run's)")
  p.add_argument("--compilation_cache_dir", default=None, help="default: <work_root>/xla_cache, emptied for cold")
  p.add_argument("--rqvae_gin", default=None, help="a gin/rqvae/*.gin file read after the recipe's own")
  p.add_argument("--embeddings_dir", default=None, help="copy embeddings from here instead of embedding")
  p.add_argument("--train_steps", type=int, default=None, help="train this many steps instead of the recipe's")
  p.add_argument("--binding", action="append", default=[], help="NAME=VALUE gin binding for training and eval")
  p.add_argument("--eval_binding", action="append", default=[], help="NAME=VALUE gin binding for eval only")
  args = p.parse_args(argv)
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # runs run_stages' clean-up
  caches = [c for c in args.caches.split(",") if c]
  if not caches or set(caches) - {"cold", "warm"}:
    p.error(f"--caches: expected cold and/or warm, got {args.caches!r}")
  data_dir = args.data_dir or os.path.join(REPO, "data", args.dataset)
  work_root = os.path.abspath(args.work_root or os.path.join(args.out_dir, "work"))
  xla_cache = os.path.abspath(args.compilation_cache_dir or os.path.join(work_root, "xla_cache"))
  gin_files = recipe_gin_files(args.dataset, [r for r in args.recipes.split(",") if r])
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
             PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
             HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
  report = {**_common.run_metadata(argv if argv is not None else sys.argv), "dataset": args.dataset,
            "gin_files": gin_files, "train_steps": args.train_steps, **device_of(env), "recipes": {}}
  os.makedirs(args.out_dir, exist_ok=True)
  path = os.path.join(args.out_dir, "recipe_speed.json")
  for recipe, gin_file in gin_files.items():
    report["recipes"][recipe] = {}
    for cache in caches:
      if cache == "cold" and os.path.isdir(xla_cache):
        shutil.rmtree(xla_cache)
      work_dir = os.path.join(work_root, f"{recipe}_{cache}")
      shutil.rmtree(work_dir, ignore_errors=True)
      print(f"\n== {recipe}, {cache} compilation cache: {work_dir}", flush=True)
      commands = stage_commands(dataset=args.dataset, data_dir=data_dir, work_dir=work_dir, gin_file=gin_file,
                                rqvae_gin=args.rqvae_gin, compilation_cache_dir=xla_cache,
                                train_steps=args.train_steps, embeddings_dir=args.embeddings_dir,
                                bindings=args.binding, eval_bindings=args.eval_binding)
      results = run_stages(commands, work_dir, os.path.join(args.out_dir, "logs", f"{recipe}_{cache}"),
                           args.embeddings_dir, env)
      run = summarise(results, os.path.join(work_dir, "model"), len(commands))
      full_steps = recipe_train_steps(gin_file)
      if args.train_steps and full_steps and run.get("train", {}).get("ms_per_step"):
        run["recipe_train_steps"] = full_steps
        run["projected_train_seconds"] = full_steps * run["train"]["ms_per_step"] / 1000
      report["recipes"][recipe][cache] = run
      with open(path, "w") as f:  # after every run, so a cut-off benchmark keeps what it measured
        json.dump(report, f, indent=1)
  print_table(report)
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
