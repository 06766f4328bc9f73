"""Runs a plan of TIGER jobs on one GPU host, each with a share of the GPU's memory, and packs their results.

The plan (JSON) names datasets and jobs. A dataset's embeddings become Semantic IDs (`rqvae_gin`, default the
paper's schedule; `rqvae_bindings` for more bindings) and its task caches (numpy backend, so the host needs
no TensorFlow), unless its work dir already holds them. `cold_start_split` (a cold_start_split.json) fits the
RQ-VAE on the seen items and leaves the unseen ones out of the training tasks, `embeddings_from` copies the
embeddings from another dataset's work dir first, and `collaborative` ({"text_dir": ..., "bindings": [...]})
fuses the text embeddings there with co-occurrence vectors (tiger_jax.collaborative) first. The IDs are copied
into the results. A job is an experiment gin file plus bindings; it trains, then tests the checkpoint named by
`eval_checkpoint` ('best' on validation, or 'latest'), then runs its `post` commands (argv lists; {model_dir},
{cache_dir}, {work_dir}, {data_dir} and {results} are filled in), e.g. the cold-start or diversity evaluation.
Jobs start in plan order, each once its dataset is ready, at most --concurrency at a time (a job still waiting
for its dataset keeps a slot; later jobs may take the free ones), each process with --mem_fraction of the GPU.

  setsid nohup python3 -m experiments.run_plan --plan=experiments/plans/h200_refit.json &
  python3 -m experiments.run_plan --collect=RESULTS_DIR --wait=540 [--ship_models=beauty_refit] [--ship_cache]

`--collect` waits for the runner, then packs its small results (and, on request, model directories and the
XLA compilation cache, in 15 MiB chunks) into RESULTS_DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = "/tmp/tiger_jobs"
CHUNK_BYTES = 15 << 20
RESULT_FILES = ("metrics.jsonl", "config.gin", "eval_test/metrics.json")


def next_actions(pending: list[dict], num_running: int, concurrency: int, dataset_state) -> list[tuple[str, dict]]:
  """The pending jobs to start ("start") or drop ("skip") now; `dataset_state(name)` is ready, failed or waiting.

  Plan order is priority order: a job whose dataset is still being prepared holds a slot for itself, and a
  later job takes only a slot left free."""
  actions, held = [], num_running
  for spec in pending:
    if held >= concurrency:
      break
    state = dataset_state(spec["dataset"])
    if state == "failed":
      actions.append(("skip", spec))
    else:
      held += 1
      if state == "ready":
        actions.append(("start", spec))
  return actions


class Runner:
  """Runs the plan; every state change lands in ROOT/results/status.json."""

  def __init__(self, plan: dict, root: str, concurrency: int, mem_fraction: float, revision: str):
    self.plan, self.root = plan, root
    self.results = os.path.join(root, "results")
    os.makedirs(self.results, exist_ok=True)
    self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), REPO) if p), PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3",
                    JAX_COMPILATION_CACHE_DIR=os.path.join(root, "jaxcache"),
                    TIGER_COMPILATION_CACHE_DIR=os.path.join(root, "jaxcache"), TIGER_GIT_REVISION=revision,
                    XLA_PYTHON_CLIENT_MEM_FRACTION=str(mem_fraction))
    self.concurrency = concurrency
    self.lock = threading.Lock()
    self.status = {"revision": revision, "started": time.time(), "datasets": {}, "jobs": {}}
    self.ready = {name: threading.Event() for name in plan["datasets"]}

  def note(self, kind: str, name: str, **fields) -> None:
    with self.lock:
      self.status[kind].setdefault(name, {}).update(fields, t=round(time.time() - self.status["started"], 1))
      with open(os.path.join(self.results, "status.json.tmp"), "w") as f:
        json.dump(self.status, f, indent=1)
      os.replace(os.path.join(self.results, "status.json.tmp"), os.path.join(self.results, "status.json"))

  def sh(self, args: list[str], log_name: str) -> int:
    with open(os.path.join(self.results, log_name), "a") as log:
      log.write(f"$ {' '.join(args)}\n")
      log.flush()
      return subprocess.call(args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)

  def dataset_state(self, name: str) -> str:
    if self.status["datasets"].get(name, {}).get("stage") == "failed":
      return "failed"
    return "ready" if self.ready[name].is_set() else "waiting"

  def prepare(self, name: str, spec: dict) -> None:
    """Semantic IDs and task caches of one dataset (skipped when present).

    An exception (a missing file, say) marks the dataset failed, so that its jobs are skipped instead of
    waiting for it until the call ends."""
    try:
      self._prepare(name, spec)
    except Exception as e:  # pylint: disable=broad-except  (reported in status.json, then the thread ends)
      self.note("datasets", name, stage="failed", error=f"{type(e).__name__}: {e}")

  def _prepare(self, name: str, spec: dict) -> None:
    work = spec["work_dir"]
    start = time.time()
    ok = True
    split = spec.get("cold_start_split")
    ids = os.path.join(work, "semantic_ids.npz")
    if not os.path.exists(ids):
      self.note("datasets", name, stage="ids")
      if spec.get("embeddings_from"):  # one copy of the embeddings serves every ID type of a catalogue
        os.makedirs(work, exist_ok=True)
        for f in ("embeddings.npy", "embeddings.json"):
          shutil.copyfile(os.path.join(spec["embeddings_from"], f), os.path.join(work, f))
      cf = spec.get("collaborative")
      if cf is not None:  # fused text + co-occurrence embeddings, made from the text ones
        ok = self.sh([sys.executable, "-m", "tiger_jax.collaborative", f"--data_dir={spec['data_dir']}",
                      f"--text_dir={cf['text_dir']}", f"--work_dir={work}"]
                     + [f"--gin.{b}" for b in cf.get("bindings", [])], f"{name}_ids.log") == 0
        if ok:
          shutil.copyfile(os.path.join(work, "embeddings.json"), os.path.join(self.results, f"{name}_embeddings.json"))
    if ok and not os.path.exists(ids):
      bindings = spec.get("rqvae_bindings", []) + ([f"make_semantic_ids.cold_start_split='{split}'"] if split else [])
      ok = self.sh([sys.executable, "-m", "tiger_jax.semantic_ids", f"--data_dir={spec['data_dir']}",
                    f"--work_dir={work}", f"--gin_file={spec.get('rqvae_gin', 'gin/rqvae/paper.gin')}"]
                   + [f"--gin.{b}" for b in bindings], f"{name}_ids.log") == 0
      self.note("datasets", name, ids_s=round(time.time() - start, 1))
    if ok:
      shutil.copyfile(ids, os.path.join(self.results, f"{name}_semantic_ids.npz"))
    missing = [t for t in spec["tasks"] if not os.path.exists(os.path.join(work, "cache", t, "test.npz"))]
    if ok and missing:
      self.note("datasets", name, stage="cache")
      ok = self.sh([sys.executable, "-m", "tasks.cache_tasks", f"--tasks={','.join(missing)}",
                    f"--data_dir={spec['data_dir']}", "--backend=numpy", f"--output_cache_dir={work}/cache",
                    f"--semantic_ids={ids}"] + ([f"--cold_start_split={split}"] if split else []),
                   f"{name}_ids.log") == 0
    self.note("datasets", name, stage="ready" if ok else "failed", prepare_s=round(time.time() - start, 1))
    if ok:
      self.ready[name].set()

  def job(self, spec: dict) -> None:
    name, dataset = spec["name"], spec["dataset"]
    model_dir = os.path.join(self.root, "models", name)
    data = self.plan["datasets"][dataset]
    cache = os.path.join(data["work_dir"], "cache")
    gin = [f"--gin_file={spec['gin_file']}", f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TASK_CACHE_DIR='{cache}'",
           "--gin.CHECKPOINTS_TO_KEEP=1"] + [f"--gin.{b}" for b in spec.get("bindings", [])]
    start = time.time()
    self.note("jobs", name, stage="train")
    rc = self.sh([sys.executable, "-m", "tiger_jax.train"] + gin, f"{name}_train.log")
    self.note("jobs", name, train_s=round(time.time() - start, 1), train_rc=rc)
    if rc == 0:
      start = time.time()
      self.note("jobs", name, stage="eval")
      rc = self.sh([sys.executable, "-m", "tiger_jax.eval"] + gin + [
          "--gin_file=gin/runs/eval.gin", f"--gin.EVAL_CHECKPOINT='{spec.get('eval_checkpoint', 'best')}'"],
          f"{name}_eval.log")
      self.note("jobs", name, eval_s=round(time.time() - start, 1), eval_rc=rc)
    for rel in RESULT_FILES:  # before the posts, so that a slow post does not hold the numbers back
      src = os.path.join(model_dir, rel)
      if os.path.exists(src):
        shutil.copyfile(src, os.path.join(self.results, f"{name}_{rel.replace('/', '_')}"))
    fill = dict(model_dir=model_dir, cache_dir=cache, work_dir=data["work_dir"], data_dir=data["data_dir"],
                results=self.results)
    for i, argv in enumerate(spec.get("post", []) if rc == 0 else []):
      start = time.time()
      self.note("jobs", name, stage=f"post {i}")
      post_rc = self.sh([sys.executable] + [a.format(**fill) for a in argv], f"{name}_post{i}.log")
      self.note("jobs", name, **{f"post{i}_s": round(time.time() - start, 1), f"post{i}_rc": post_rc})
    self.note("jobs", name, stage="done" if rc == 0 else "failed")

  def run(self) -> None:
    """Starts jobs in plan order as their datasets become ready, keeping at most `concurrency` running."""
    try:
      device = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    except OSError:
      device = "no nvidia-smi"
    self.note("datasets", "_runner", stage="running", device=device)
    for name, spec in self.plan["datasets"].items():
      threading.Thread(target=self.prepare, args=(name, spec), daemon=True).start()
    pending, running = list(self.plan["jobs"]), []
    while pending or running:
      running = [t for t in running if t.is_alive()]
      for action, spec in next_actions(pending, len(running), self.concurrency, self.dataset_state):
        pending.remove(spec)
        if action == "skip":
          self.note("jobs", spec["name"], stage="skipped: dataset failed")
        else:
          running.append(threading.Thread(target=self.job, args=(spec,)))
          running[-1].start()
      time.sleep(2)
    self.note("datasets", "_runner", stage="finished")


def _ship(src: str, arcname: str, out_base: str, root: str, tar_filter=None) -> None:
  """A directory as a .tgz in chunks OUT_BASE.00, .01, ... of at most CHUNK_BYTES each."""
  packed = os.path.join(root, os.path.basename(out_base))
  with tarfile.open(packed, "w:gz") as tar:
    tar.add(src, arcname=arcname, filter=tar_filter)
  with open(packed, "rb") as f:
    for i, chunk in enumerate(iter(lambda: f.read(CHUNK_BYTES), b"")):
      with open(f"{out_base}.{i:02d}", "wb") as g:
        g.write(chunk)


def collect(out: str, wait: float, ship_models: list[str], root: str, ship_cache: bool = False) -> None:
  """Waits up to `wait` s for the runner to finish, then packs results (and named models' dirs) into OUT.

  `ship_cache` packs the persistent XLA compilation cache too, so that a later run on another host of the
  same kind can start from it (unpack into ROOT/jaxcache)."""
  status_path = os.path.join(root, "results", "status.json")
  start = time.time()
  while time.time() < start + wait:
    if not os.path.exists(status_path):
      if time.time() > start + 60:
        print(f"no runner: {status_path} is missing (was --plan started on this host with the same --root?)")
        break
    else:
      with open(status_path) as f:
        if json.load(f)["datasets"].get("_runner", {}).get("stage") == "finished":
          break
    time.sleep(5)
  os.makedirs(out, exist_ok=True)
  if not os.path.isdir(os.path.join(root, "results")):
    return
  left_out = []

  def without_predictions(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
    # Predictions of post evals (35k users x 50 beams) are large; their metrics.json files are kept.
    if info.isfile() and os.path.basename(info.name) == "predictions.jsonl":
      left_out.append(info.name)
      return None
    return info

  with tarfile.open(os.path.join(out, "results.tgz"), "w:gz") as tar:
    tar.add(os.path.join(root, "results"), arcname="results", filter=without_predictions)
  if left_out:
    print(f"left out of results.tgz (predictions): {', '.join(left_out)}")
  for name in ship_models:  # the model dir, in chunks
    model_dir = os.path.join(root, "models", name)
    if not os.path.isdir(model_dir):
      print(f"--ship_models: {model_dir} does not exist; not shipped")
      continue
    has_best = os.path.isdir(os.path.join(model_dir, "best"))  # then the periodic checkpoints stay behind
    _ship(model_dir, name, os.path.join(out, f"model_{name}.tgz"), root,
          lambda t: None if has_best and "/checkpoints" in t.name else t)
  if ship_cache and os.path.isdir(os.path.join(root, "jaxcache")):
    _ship(os.path.join(root, "jaxcache"), "jaxcache", os.path.join(out, "jaxcache.tgz"), root)
  if os.path.exists(status_path):
    print(open(status_path).read())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--plan", help="plan JSON: {'datasets': {...}, 'jobs': [...]}")
  parser.add_argument("--root", default=ROOT)
  parser.add_argument("--concurrency", type=int, default=4)
  parser.add_argument("--mem_fraction", type=float, default=0.18)
  parser.add_argument("--revision", default="unknown", help="git revision of the code being run")
  parser.add_argument("--collect", help="pack the results into this directory instead of running")
  parser.add_argument("--wait", type=float, default=0.0, help="--collect: seconds to wait for the runner")
  parser.add_argument("--ship_models", default="", help="--collect: comma-separated job names")
  parser.add_argument("--ship_cache", action="store_true", help="--collect: the XLA compilation cache too")
  args = parser.parse_args()
  if args.collect:
    collect(args.collect, args.wait, [m for m in args.ship_models.split(",") if m], args.root, args.ship_cache)
    return
  if not args.plan:
    parser.error("--plan or --collect is required")
  with open(args.plan) as f:
    plan = json.load(f)
  unknown = {j["dataset"] for j in plan["jobs"]} - set(plan["datasets"])
  if unknown:
    parser.error(f"{args.plan}: jobs name datasets the plan does not define: {sorted(unknown)}")
  Runner(plan, args.root, args.concurrency, args.mem_fraction, args.revision).run()


if __name__ == "__main__":
  main()
