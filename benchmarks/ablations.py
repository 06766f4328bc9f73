"""Ablations of the paper (Beauty): ID types (Table 2), layers (Table 5), user token (Table 8), combined catalogue
(Table 10). One sequence model per setting, evaluated on test at its best-on-validation checkpoint.

  --ablation=id_types            Random IDs, LSH Semantic IDs, RQ-VAE Semantic IDs (gin/rqvae/{random,lsh}.gin,
                                 --rqvae_gin)
  --ablation=layers              --layers (3,4,5) encoder and decoder layers (network.T5Config bindings)
  --ablation=user_token          with and without the hashed user token (task <task>_nouser)
  --ablation=combined_catalogue  RQ-VAE fit on this catalogue alone vs. on it plus --extra_embeddings_dir's
                                 (Sports); only this catalogue's items get IDs, numbered by the collision token
                                 among themselves, and the model trains on this catalogue alone

Stages (each skipped when its artifacts are current; pick with --stages):
  ids    semantic_ids.npz per ID type         -> WORK/ids/<ids>/             (jax; GPU for paper.gin; no TF)
  cache  task cache per ID type (+ _nouser)   -> WORK/cache/<ids>/<task>/    (TensorFlow + seqio: CPU side)
  train  python -m tiger_jax.train            -> WORK/models/<run>/<model>/  (jax + gin; GPU; no TF/seqio)
  eval   python -m tiger_jax.eval, best ckpt  -> MODEL/eval_test/metrics.json, then OUT_DIR/NAME.{json,md}

Settings share artifacts: one work dir serves all four ablations, and the model of the paper's default setting
(RQ-VAE IDs, --base_layers, user token) is trained once and reused by every table. <run> is the name of the last
--gin_file, so the quick and the full configs never share a model. `train` writes MODEL/ablation_train.json when
training returns; a rerun with the same command skips that model (and a killed run resumes from its checkpoint).
SIGTERM/SIGINT are passed to the running stage (training checkpoints and exits), then this script exits.

  # CPU side (TensorFlow): IDs (quick schedule, or copy paper-schedule IDs from a GPU run) and caches
  python -m benchmarks.ablations --ablation=id_types --stages=ids,cache --work_dir=work/beauty_ablations \
      --embeddings_dir=work/beauty
  # GPU side: train and evaluate; rerun until done (each call resumes)
  python -m benchmarks.ablations --ablation=id_types --stages=train,eval --work_dir=work/beauty_ablations

The same table from jobs that experiments/run_plan.py ran side by side (one job per setting; the plan must give
them the settings' IDs, layers and tasks): --gpu_results names a collected results directory (repeated for jobs of
several calls) and --gpu_job maps each setting key to its job, e.g.
  python -m benchmarks.ablations --ablation=layers \
      --gpu_results=experiments/results/gpu_jobs_h200_beauty_base_layers3 \
      --gpu_results=experiments/results/gpu_jobs_h200_ablations_ids_user_layers5 \
      --gpu_job=3=beauty_layers3_20k --gpu_job=4=beauty_paper_20k --gpu_job=5=beauty_layers5_20k \
      --name=ablation_layers_beauty_h200
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional, Sequence


from benchmarks import _common  # noqa: E402
from tiger_jax import metrics as metrics_lib  # noqa: E402
from tiger_jax import utils  # noqa: E402

log = logging.getLogger("ablations")
STAGES = ("ids", "cache", "train", "eval")
ABLATIONS = ("id_types", "layers", "user_token", "combined_catalogue")
EXPERIMENT = {"id_types": "ablation_id_types", "layers": "ablation_layers", "user_token": "ablation_user_token",
              "combined_catalogue": "combined_catalogue"}  # experiments/make_report.py's ABLATIONS keys
METRICS = metrics_lib.REPORTED_METRICS
ID_GIN = {"random": "gin/rqvae/random.gin", "lsh": "gin/rqvae/lsh.gin"}  # rqvae, combined: --rqvae_gin
TRAIN_MARKER = "ablation_train.json"


@dataclasses.dataclass(frozen=True)
class Setting:
  """One row of a table: which IDs, how many layers, whether the user token is in the inputs."""
  label: str
  key: str  # what --settings selects
  ids: str  # rqvae | lsh | random | combined
  layers: int
  user_token: bool

  @property
  def model_name(self) -> str:
    return f"{self.ids}_l{self.layers}_{'user' if self.user_token else 'nouser'}"


def settings_for(args, selected: bool = True) -> list[Setting]:
  """The ablation's settings; `selected`: only those --settings names (the result always lists all)."""
  base = dict(ids="rqvae", layers=args.base_layers, user_token=True)
  if args.ablation == "id_types":
    out = [Setting("Random ID", "random", **dict(base, ids="random")),
           Setting("LSH SID", "lsh", **dict(base, ids="lsh")),
           Setting("RQ-VAE SID", "rqvae", **base)]
  elif args.ablation == "layers":
    out = [Setting(f"{n} layers", str(n), **dict(base, layers=n)) for n in args.layers]
  elif args.ablation == "user_token":
    out = [Setting("with user token", "user", **base),
           Setting("without user token", "nouser", **dict(base, user_token=False))]
  else:
    out = [Setting(f"IDs from {args.dataset} alone", "single", **base),
           Setting(f"IDs from {args.dataset} + {args.extra_name}", "combined", **dict(base, ids="combined"))]
  if args.settings and selected:
    unknown = set(args.settings) - {s.key for s in out}
    if unknown:
      raise SystemExit(f"--settings: unknown {sorted(unknown)} for --ablation={args.ablation}; known: "
                       f"{[s.key for s in out]}")
    out = [s for s in out if s.key in args.settings]
  return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ablation", required=True, choices=ABLATIONS)
  p.add_argument("--stages", default=",".join(STAGES), help=f"Comma-separated subset of {STAGES}.")
  p.add_argument("--settings", default="", help="Comma-separated subset of the ablation's setting keys "
                 "(id_types: random,lsh,rqvae; layers: the counts; user_token: user,nouser; combined_catalogue: "
                 "single,combined), e.g. to split the GPU work across calls. Default: all.")
  p.add_argument("--data_dir", default="data/beauty")
  p.add_argument("--dataset", default=None, help="Name in the rows (default: data_dir's name, capitalised).")
  p.add_argument("--work_dir", default="work/beauty_ablations")
  p.add_argument("--embeddings_dir", default=None, help="Where embeddings.npy/.json are (default: work_dir).")
  p.add_argument("--extra_embeddings_dir", default=None, help="combined_catalogue: the other catalogue's "
                 "embeddings (python -m tiger_jax.embed --data_dir=<sports> --work_dir=<dir>).")
  p.add_argument("--extra_name", default="Sports", help="combined_catalogue: the other catalogue's name.")
  p.add_argument("--task", default="tiger_beauty")
  p.add_argument("--rqvae_gin", default="gin/rqvae/paper.gin", help="RQ-VAE settings (rqvae and combined IDs).")
  p.add_argument("--gin_file", action="append", default=None, help="Training gin file(s) (default gin/beauty.gin).")
  p.add_argument("--gin_bindings", action="append", default=[], help="Extra training (and eval) bindings.")
  p.add_argument("--eval_bindings", action="append", default=[], help="Extra eval bindings only.")
  p.add_argument("--layers", default="3,4,5", help="layers: encoder (= decoder) layer counts.")
  p.add_argument("--base_layers", type=int, default=4, help="Layers of every other setting (paper: 4).")
  p.add_argument("--out_dir", default="experiments/results")
  p.add_argument("--name", default=None, help="Result file name (default ablation_<ablation>_<dataset>).")
  p.add_argument("--force", action="store_true", help="Redo the ids/cache stages even if current.")
  p.add_argument("--gpu_results", action="append", default=[], help="A experiments/run_plan.py results "
                 "directory: build the table from its jobs (--gpu_job) instead of running stages. Repeat it for "
                 "jobs of several plan runs: each job is read from the first directory that has it.")
  p.add_argument("--gpu_job", action="append", default=[], help="KEY=JOB: setting KEY's numbers are job JOB's.")
  args = p.parse_args(argv)
  args.stages = _common.parse_stages(p, args.stages, STAGES)
  args.settings = [s for s in args.settings.split(",") if s]
  args.layers = [int(x) for x in args.layers.split(",") if x]
  args.gin_file = args.gin_file or ["gin/beauty.gin"]
  args.embeddings_dir = args.embeddings_dir or args.work_dir
  args.dataset = args.dataset or os.path.basename(os.path.normpath(args.data_dir)).capitalize()
  args.name = args.name or f"ablation_{args.ablation}_{args.dataset.lower()}"
  args.run = os.path.splitext(os.path.basename(args.gin_file[-1]))[0]
  args.gpu_job = dict(_key_value(p, kv) for kv in args.gpu_job)
  if args.gpu_job and not args.gpu_results:
    p.error("--gpu_job needs --gpu_results")
  if args.gpu_results:
    args.stages = []
  if args.ablation == "combined_catalogue" and "ids" in args.stages and not args.extra_embeddings_dir:
    p.error("--ablation=combined_catalogue needs --extra_embeddings_dir for the ids stage")
  return args


def _key_value(parser, text: str) -> tuple[str, str]:
  key, sep, value = text.partition("=")
  if not sep or not key or not value:
    parser.error(f"--gpu_job: expected KEY=JOB, got {text!r}")
  return key, value


# ----------------------------------------------------------------------------- paths


def _abs(path: str) -> str:
  return os.path.abspath(path)


def ids_path(args, ids: str) -> str:
  return os.path.join(args.work_dir, "ids", ids, "semantic_ids.npz")


def cache_dir(args, ids: str) -> str:
  return os.path.join(args.work_dir, "cache", ids)


def task_name(args, s: Setting) -> str:
  return args.task if s.user_token else args.task + "_nouser"  # tasks/tiger_tasks.py's NO_USER_SUFFIX


def model_dir(args, s: Setting) -> str:
  return os.path.join(args.work_dir, "models", args.run, s.model_name)


# ----------------------------------------------------------------------------- subprocesses


def _run(cmd: list[str]) -> None:
  """Runs a stage's entry point; SIGTERM/SIGINT go to it (training checkpoints), then this script stops."""
  log.info("$ %s", " ".join(cmd))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
  env["PYTHONPATH"] = _common.REPO + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.Popen(cmd, cwd=_common.REPO, env=env)
  got = []

  def forward(signum, _):
    got.append(signum)
    proc.send_signal(signum)

  old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    rc = proc.wait()
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
  if got:
    raise SystemExit(f"stopped by signal {got[0]} (the stage exited {rc}); rerun the same command to resume")
  if rc:
    raise subprocess.CalledProcessError(rc, cmd)


def _train_gin(args, s: Setting) -> list[str]:
  flags = [f"--gin_file={g}" for g in args.gin_file]
  flags += [f"--gin.MODEL_DIR='{_abs(model_dir(args, s))}'", f"--gin.TASK_CACHE_DIR='{_abs(cache_dir(args, s.ids))}'",
            f"--gin.MIXTURE_OR_TASK_NAME='{task_name(args, s)}'",
            f"--gin_bindings=network.T5Config.num_encoder_layers = {s.layers}",
            f"--gin_bindings=network.T5Config.num_decoder_layers = {s.layers}"]
  return flags + [f"--gin_bindings={b}" for b in args.gin_bindings]


def _train_key(args, s: Setting) -> str:
  """What a finished model depends on: its flags, the gin files' text, and the cache it read."""
  h = hashlib.sha256(json.dumps(_train_gin(args, s)).encode())
  for g in args.gin_file:
    with open(os.path.join(_common.REPO, g) if not os.path.isabs(g) else g, "rb") as f:
      h.update(f.read())
  info = os.path.join(cache_dir(args, s.ids), task_name(args, s), "info.json")
  if not os.path.exists(info):
    raise SystemExit(f"{info}: no task cache for setting {s.label!r}; run the cache stage first (CPU side)")
  with open(info) as f:
    h.update(json.dumps({k: v for k, v in json.load(f).items()
                         if k in ("semantic_ids_hash", "data_fingerprint", "use_user_token")}, sort_keys=True).encode())
  return h.hexdigest()


# ----------------------------------------------------------------------------- stages


def stage_ids(args, settings: list[Setting]) -> None:
  for name in ("embeddings.npy", "embeddings.json"):
    src, dst = os.path.join(args.embeddings_dir, name), os.path.join(args.work_dir, name)
    if _abs(src) != _abs(dst) and not os.path.exists(dst):
      os.makedirs(args.work_dir, exist_ok=True)
      shutil.copyfile(src, dst)
  for ids in sorted({s.ids for s in settings}):
    out = ids_path(args, ids)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cmd = [sys.executable, "-m", "tiger_jax.semantic_ids", f"--gin_file={ID_GIN.get(ids, args.rqvae_gin)}",
           f"--work_dir={_abs(args.work_dir)}", f"--gin.make_semantic_ids.output_file='{_abs(out)}'"]
    if ids == "combined":
      cmd.append(f"--gin.make_semantic_ids.extra_embedding_dirs=['{_abs(args.extra_embeddings_dir)}']")
    _run(cmd + (["--force"] if args.force else []))


def stage_cache(args, settings: list[Setting]) -> None:
  from tasks import cache_tasks  # pylint: disable=g-import-not-at-top  (TensorFlow + seqio: CPU side only)
  for s in settings:
    path = ids_path(args, s.ids)
    if not os.path.exists(path):
      raise SystemExit(f"{path}: no Semantic IDs for setting {s.label!r}; run the ids stage first")
    cache_tasks.cache_task(task_name(args, s), _abs(cache_dir(args, s.ids)), _abs(args.data_dir), _abs(path),
                           use_user_token=s.user_token, force=args.force)


def stage_train(args, settings: list[Setting]) -> None:
  for s in settings:
    mdir, key = model_dir(args, s), _train_key(args, s)
    marker = os.path.join(mdir, TRAIN_MARKER)
    if os.path.exists(marker):
      with open(marker) as f:
        if json.load(f).get("key") == key:
          log.info("%s: trained (%s); skipped", s.label, marker)
          continue
    _run([sys.executable, "-m", "tiger_jax.train"] + _train_gin(args, s))
    stale = os.path.join(mdir, "eval_test", "metrics.json")
    if os.path.exists(stale):
      os.remove(stale)
    utils.write_json(marker, {"key": key, "setting": s.label, "flags": _train_gin(args, s),
                                "date": time.strftime("%Y-%m-%dT%H:%M:%S")})


def stage_eval(args, settings: list[Setting]) -> None:
  for s in settings:
    mdir = model_dir(args, s)
    if not os.path.exists(os.path.join(mdir, TRAIN_MARKER)):
      log.warning("%s: not trained to the end yet (%s); not evaluated", s.label, mdir)
      continue
    if os.path.exists(os.path.join(mdir, "eval_test", "metrics.json")):
      log.info("%s: evaluated; skipped", s.label)
      continue
    _run([sys.executable, "-m", "tiger_jax.eval"] + _train_gin(args, s) +
         ["--gin_file=gin/runs/eval.gin", "--gin.EVAL_SPLIT='test'", "--gin.EVAL_CHECKPOINT='best'"] +
         [f"--gin_bindings={b}" for b in args.eval_bindings])


# ----------------------------------------------------------------------------- results


def _trained_steps(path: str) -> Optional[int]:
  """The last step training logged in `path` (MODEL/metrics.jsonl, or a gpu_jobs copy of it)."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    steps = [json.loads(line).get("step") for line in f if line.strip()]
  return max([x for x in steps if x is not None], default=None)


def collect(args, settings: list[Setting]) -> dict:
  """make_report's ablation hook: one row per setting with its test metrics."""
  rows, missing = [], []
  for s in settings:
    mdir = model_dir(args, s)
    path = os.path.join(mdir, "eval_test", "metrics.json")
    if not os.path.exists(path):
      missing.append(s.label)
      continue
    with open(path) as f:
      m = json.load(f)
    rows.append({"setting": s.label, "dataset": args.dataset, **{k: m[k] for k in METRICS},
                 "ids": s.ids, "layers": s.layers, "user_token": s.user_token,
                 "train_steps": _trained_steps(os.path.join(mdir, "metrics.jsonl")), "best_step": m.get("step"),
                 "test_users": m.get("num_users"),
                 "model_dir": os.path.relpath(mdir, args.work_dir), "device": m.get("device")})
  config = {"ablation": args.ablation, "task": args.task, "gin_file": args.gin_file,
            "gin_bindings": args.gin_bindings, "rqvae_gin": args.rqvae_gin, "work_dir": args.work_dir,
            "checkpoint": "best (by validation)", "split": "test", "missing_settings": missing}
  if args.ablation == "combined_catalogue":
    config["extra_embeddings_dir"] = args.extra_embeddings_dir
    config["id_rule"] = ("RQ-VAE fit on both catalogues' embeddings; only this catalogue's items get IDs, "
                         "collision token numbered among them")
  return {"experiment": EXPERIMENT[args.ablation], "config": config, "rows": rows}


def collect_gpu_jobs(args, settings: list[Setting]) -> dict:
  """The table from experiments/run_plan.py results: JOB_eval_test_metrics.json and JOB_metrics.jsonl per row.

  A row's job may come from any of the --gpu_results directories (plan runs), each with its own revision."""
  unknown = set(args.gpu_job) - {s.key for s in settings}
  if unknown:
    raise SystemExit(f"--gpu_job: unknown setting keys {sorted(unknown)}; known: {[s.key for s in settings]}")
  runs = {}
  for results_dir in args.gpu_results:
    with open(os.path.join(results_dir, "status.json")) as f:
      status = json.load(f)
    runs[results_dir] = {"card": _common.plan_results_card(status), "revision": status["revision"]}
  rows, missing = [], []
  for s in settings:
    job = args.gpu_job.get(s.key)
    found = [d for d in args.gpu_results if job and os.path.exists(os.path.join(d, f"{job}_eval_test_metrics.json"))]
    if not found:
      missing.append(s.label)
      continue
    results_dir = found[0]
    with open(os.path.join(results_dir, f"{job}_eval_test_metrics.json")) as f:
      m = json.load(f)
    steps = _trained_steps(os.path.join(results_dir, f"{job}_metrics.jsonl"))
    rows.append({"setting": s.label, "dataset": args.dataset, **{k: m[k] for k in METRICS},
                 "ids": s.ids, "layers": s.layers, "user_token": s.user_token, "train_steps": steps,
                 "best_step": m.get("step"), "test_users": m.get("num_users"), "gpu_job": job,
                 "gpu_results": results_dir, "git_revision": runs[results_dir]["revision"],
                 "test_device": m.get("device")})  # a shipped checkpoint may have been tested elsewhere
  config = {"ablation": args.ablation, "gpu_results": args.gpu_results, "gpu_jobs": args.gpu_job,
            "checkpoint": "best (by validation)", "split": "test", "missing_settings": missing}
  used = [runs[d] for d in args.gpu_results if any(r["gpu_results"] == d for r in rows)] or list(runs.values())
  meta = {"device_kind": ", ".join(sorted({r["card"] for r in used if r["card"]})),
          "backend": "gpu" if any(r["card"] for r in used) else None,
          "git_revision": ", ".join(dict.fromkeys(r["revision"] for r in used))}
  return {"experiment": EXPERIMENT[args.ablation], "config": config, "rows": rows, "gpu_run": meta}


def markdown(result: dict, title: str) -> list[str]:
  header = ["setting", "dataset"] + list(METRICS) + ["train steps", "best step"]
  rows = [[r["setting"], r["dataset"]] + [r[k] for k in METRICS] + [r["train_steps"], r["best_step"]]
          for r in result["rows"]]
  lines = [f"# {title}", ""] + _common.markdown_table(header, rows) + [""]
  tested = {r.get("test_device") for r in result["rows"] if "gpu_job" in r}
  if len(tested) > 1:
    lines += ["Test decoding ran on: " + ", ".join(f"{r['setting']}: {r.get('test_device')}" for r in result["rows"])
              + " (trained on the device run's card).", ""]
  calls = {r.get("gpu_results") for r in result["rows"] if "gpu_job" in r}
  if len(calls) > 1:
    lines += ["Plan runs: " + "; ".join(f"{r['setting']}: job {r['gpu_job']} of {r['gpu_results']} (revision "
                                           f"{r['git_revision']})" for r in result["rows"]), ""]
  if result["config"]["missing_settings"]:
    lines += [f"Not evaluated yet: {', '.join(result['config']['missing_settings'])}", ""]
  return lines


def write_outputs(result: dict, out_dir: str, name: str) -> None:
  base = os.path.join(out_dir, name)
  os.makedirs(out_dir, exist_ok=True)
  result["files"] = {"markdown": name + ".md"}
  with open(base + ".md", "w") as f:
    f.write("\n".join(markdown(result, f"{result['experiment']} ({name})") +
                      ["```", json.dumps(result["meta"], indent=1), "```", ""]))
  utils.write_json(base + ".json", result)


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s] %(message)s")
  args = parse_args(argv)
  settings = settings_for(args)
  stage_seconds = {}
  for stage in STAGES:
    if stage in args.stages:
      t0 = time.time()
      globals()[f"stage_{stage}"](args, settings)
      stage_seconds[stage] = round(time.time() - t0, 1)
      log.info("stage %s: %.1f s", stage, stage_seconds[stage])
  command = sys.argv if argv is None else ["benchmarks/ablations.py"] + list(argv)
  if args.gpu_results:
    result = collect_gpu_jobs(args, settings_for(args, selected=False))
    gpu_run = result.pop("gpu_run")
    # The numbers are the device run's: its card and revision, not this machine's.
    result["meta"] = dict(_common.run_metadata(command), **{k: v for k, v in gpu_run.items() if v})
  elif "eval" not in args.stages:
    return None
  else:
    result = collect(args, settings_for(args, selected=False))
    # Evaluation ran in subprocesses: the card is the one its metrics.json names.
    devices = sorted({r.pop("device") for r in result["rows"] if r.get("device")})
    result["meta"] = _common.run_metadata(command, stage_seconds=stage_seconds, eval_devices=devices)
    if devices:
      result["meta"].setdefault("device_kind", ", ".join(devices))
  write_outputs(result, args.out_dir, args.name)
  for r in result["rows"]:
    log.info("%s: Recall@10 %.4f NDCG@10 %.4f (best step %s of %s)", r["setting"], r["recall@10"], r["ndcg@10"],
             r["best_step"], r["train_steps"])
  return result


if __name__ == "__main__":
  main()
