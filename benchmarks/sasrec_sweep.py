r"""SASRec tuned on validation: a grid of gin settings, each point trained with validation selection, the point
with the best validation NDCG@10 then scored once on test (at one or more seeds).

  PYTHONPATH=. python -m benchmarks.sasrec_sweep --data_dir=data/beauty --out_dir=OUT \
      [--grid=benchmarks/sasrec_grid.json] [--test_seeds=0,1,2] [--stop_after_seconds=540] \
      [--gin_file=gin/baselines/sasrec.gin] [--gin.NUM_EPOCHS=...] [--refit] [--workers=4]

The grid file (JSON): `fixed` bindings for every point, then `stages`, each a `grid` (gin name -> list of
values; the points are their product) that either stands alone or, with `"around_best": true`, varies the best
point found so far. `metric` names the validation metric that ranks points (ties: the earlier point). Every
point trains in OUT/points/<name>/ (scored on validation only) and leaves point.json when finished; the
selected point's test run and its extra seeds (OUT/seeds/) come last. With --refit, each test seed is also
trained on train + validation for the pick's best validation epoch count (OUT/refit/, no validation) and scored
on test, as a select-then-refit TIGER is: the rows to compare with refit recipes. With --workers N, the runs of
a stage, and then the test seeds and refits, run side by side in N processes on the one device (a small model
leaves most of a GPU idle; results are those of one after another). Rerunning the command skips finished
points and resumes an unfinished one from its checkpoint; with --stop_after_seconds it starts no new run past
that time and exits 75 (rerun to continue). Prints the validation table and writes
OUT/sasrec_sweep_<dataset>.json. Needs jax, flax, optax, orbax, numpy and gin-config only.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import gin  # noqa: E402

from benchmarks import _common  # noqa: E402
from tiger_jax import gin_utils  # noqa: E402
from tiger_jax import metrics as metrics_lib  # noqa: E402
from tiger_jax import utils  # noqa: E402
from tiger_jax.baselines import sasrec  # noqa: E402
from tiger_jax.baselines import sequences  # noqa: E402

log = logging.getLogger("sasrec_sweep")
DEFAULT_GRID = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sasrec_grid.json")
METRIC_KEYS = metrics_lib.REPORTED_METRICS
POINT_FILE = "point.json"
EXIT_RERUN = 75
_HEADER = "from __gin__ import dynamic_registration\nimport tiger_jax.baselines.sasrec as sasrec_lib\n"


class StopForNow(Exception):
  """Out of time (--stop_after_seconds) or stopped by a signal: finished work is kept, a rerun goes on."""

  def __init__(self, message: str, code: int):
    super().__init__(message)
    self.code = code


def load_grid(path: str) -> dict:
  """The grid file, checked: what every point runs with, and how points are made and ranked."""
  with open(path) as f:
    try:
      grid = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
  grid.setdefault("fixed", {})
  grid.setdefault("metric", "ndcg@10")
  if grid["metric"] not in METRIC_KEYS:
    raise ValueError(f"{path}: metric must be one of {METRIC_KEYS}, got {grid['metric']!r}")
  if not isinstance(grid["fixed"], dict):
    raise ValueError(f"{path}: 'fixed' must map gin names to values")
  stages = grid.get("stages")
  if not isinstance(stages, list) or not stages:
    raise ValueError(f"{path}: 'stages' must be a non-empty list")
  for i, stage in enumerate(stages):
    axes = stage.get("grid") if isinstance(stage, dict) else None
    if not isinstance(axes, dict) or not axes or not all(isinstance(v, list) and v for v in axes.values()):
      raise ValueError(f"{path}: stages[{i}].grid must map gin names to non-empty lists of values")
    unknown = set(stage) - {"grid", "around_best", "note"}
    if unknown:
      raise ValueError(f"{path}: stages[{i}] has unknown keys {sorted(unknown)}")
    if i == 0 and stage.get("around_best"):
      raise ValueError(f"{path}: stages[0] cannot be around_best (there is no best yet)")
  return grid


def stage_points(stage: Mapping[str, Any], best: Optional[Mapping[str, Any]]) -> list[dict]:
  """The bindings of a stage's points: the product of its grid, on top of `best` when around_best."""
  names = list(stage["grid"])
  base = dict(best or {}) if stage.get("around_best") else {}
  return [dict(base, **dict(zip(names, values))) for values in itertools.product(*stage["grid"].values())]


def point_name(bindings: Mapping[str, Any]) -> str:
  """A directory name that depends on the settings alone: key-value pairs in name order."""
  parts = []
  for key in sorted(bindings):
    value = bindings[key]
    parts.append(f"{key.split('.')[-1].lower()}-{value}")
  return "_".join(parts).replace("/", "-").replace(" ", "")


def _literal(value: Any) -> str:
  if isinstance(value, str):
    return repr(value)
  return "None" if value is None else json.dumps(value)


def choose_best(points: Sequence[Mapping[str, Any]], metric: str) -> Mapping[str, Any]:
  """The point with the highest finite validation `metric`; ties go to the earlier point."""
  best = None
  for point in points:
    value = point["validation"][metric]
    if math.isfinite(value) and (best is None or value > best["validation"][metric]):
      best = point
  if best is None:
    raise ValueError(f"no point has a finite validation {metric}")
  return best


def run_sasrec(flags, bindings: Mapping[str, Any], model_dir: str, eval_splits: Sequence[str],
               seed: Optional[int] = None, refit_epochs: Optional[int] = None) -> dict:
  """One SASRec run through its gin entry point: fixed + point bindings, then the user's, then the run's
  (with refit_epochs: a refit on train + validation for that many epochs, no early stopping)."""
  lines = [f"{k} = {_literal(v)}" for k, v in bindings.items()] + list(flags.gin_bindings)
  own = [f"DATA_DIR = {flags.data_dir!r}", f"MODEL_DIR = {model_dir!r}",
         f"sasrec_lib.train_and_evaluate.eval_splits = {list(eval_splits)!r}"]
  if seed is not None:
    own.append(f"RANDOM_SEED = {int(seed)}")
  if refit_epochs is not None:
    own += ["REFIT = True", f"NUM_EPOCHS = {int(refit_epochs)}", "EARLY_STOPPING_EPOCHS = None"]
  gin.clear_config()
  gin_utils.parse_gin_flags(flags.gin_search_paths, flags.gin_file or ["gin/baselines/sasrec.gin"],
                            lines + [_HEADER + "\n".join(own)])
  try:
    result = gin.get_configurable(sasrec.train_and_evaluate)()
  finally:
    gin.clear_config()
  if result.get("stopped_by_signal") is not None:
    raise StopForNow(f"signal {result['stopped_by_signal']} in {model_dir}: checkpointed; rerun to continue",
                     128 + result["stopped_by_signal"])
  return result


@dataclasses.dataclass
class Job:
  """One SASRec run of the sweep: a point on validation, a test seed, or a refit."""
  label: str
  bindings: dict
  model_dir: str
  eval_splits: tuple
  seed: Optional[int] = None
  refit_epochs: Optional[int] = None
  info: dict = dataclasses.field(default_factory=dict)

  def run(self, flags) -> dict:
    return run_sasrec(flags, self.bindings, self.model_dir, self.eval_splits, seed=self.seed,
                      refit_epochs=self.refit_epochs)


def run_jobs(flags, jobs: Sequence[Job], before_each: Callable[[str], None],
             on_done: Callable[[Job, dict], None]) -> None:
  """Runs independent jobs, one after another or with --workers N in N processes sharing the device.
  `before_each(label)` may raise StopForNow: no further job starts, the running ones finish, then it is
  raised. `on_done` sees each result as it arrives (so an interrupted sweep keeps every finished run)."""
  if flags.workers <= 1 or len(jobs) <= 1:
    for job in jobs:
      before_each(job.label)
      log.info("%s", job.label)
      on_done(job, job.run(flags))
    return
  _run_in_processes(flags, jobs, before_each, on_done)


def _job_process(flags, job: Job, index: int, results) -> None:
  """A worker process: one job, its outcome sent back as (index, kind, payload)."""
  gin_utils.setup_logging(flags.log_level)
  logging.getLogger().handlers[0].setFormatter(logging.Formatter(
      f"%(asctime)s %(levelname)s [{job.label}] %(name)s] %(message)s"))
  try:
    results.put((index, "done", job.run(flags)))
  except StopForNow as e:
    results.put((index, "stopped", (str(e), e.code)))
  except BaseException as e:  # noqa: BLE001  (reported to the parent, which raises it)
    results.put((index, "failed", f"{type(e).__name__}: {e}"))


MEMORY_FRACTION_KEY = "XLA_PYTHON_CLIENT_MEM_FRACTION"


def check_memory_fraction(workers: int, environ: Mapping[str, str] = os.environ) -> None:
  """Refuses a memory fraction the workers cannot all have, before any of them starts.

  Each worker inherits the fraction a user set; past the whole device they fail later, inside GPU autotuning,
  with an error that names neither the fraction nor --workers.
  """
  value = environ.get(MEMORY_FRACTION_KEY)
  if value is None or workers <= 1:
    return
  try:
    fraction = float(value)
  except ValueError:
    raise ValueError(f"{MEMORY_FRACTION_KEY}={value!r} is not a number") from None
  if not 0.0 < fraction * workers <= 1.0:
    raise ValueError(f"{MEMORY_FRACTION_KEY}={value} for each of --workers={workers} asks for "
                     f"{fraction * workers:.2f} of the device; unset it (each worker then gets 0.9/{workers}) "
                     f"or set it to at most {1.0 / workers:.3f}")


def _run_in_processes(flags, jobs: Sequence[Job], before_each, on_done) -> None:
  context = multiprocessing.get_context("spawn")  # a fresh JAX runtime per run; fork would copy the parent's
  results = context.Queue()
  pending, running = list(enumerate(jobs)), {}
  stopped: Optional[StopForNow] = None
  failures: list[str] = []
  # Every worker would otherwise reserve most of the device's memory for itself (workers inherit os.environ as it
  # is when they start; a fraction the user set is kept).
  user_fraction = os.environ.get(MEMORY_FRACTION_KEY)
  os.environ[MEMORY_FRACTION_KEY] = user_fraction or f"{0.9 / flags.workers:.3f}"

  def forward(signum, frame):  # SIGTERM: each worker checkpoints its epoch and stops; then this one exits.
    nonlocal stopped
    stopped = stopped or StopForNow(f"signal {signum}: workers checkpointed; rerun to continue", 128 + signum)
    for process in running.values():
      process.terminate()

  old_handler = signal.signal(signal.SIGTERM, forward) if threading.current_thread() is threading.main_thread() \
      else None
  try:
    while pending or running:
      while pending and len(running) < flags.workers and stopped is None and not failures:
        index, job = pending[0]
        try:
          before_each(job.label)
        except StopForNow as e:
          stopped = e
          break
        pending.pop(0)
        log.info("%s (worker %d of %d)", job.label, len(running) + 1, flags.workers)
        process = context.Process(target=_job_process, args=(flags, job, index, results), daemon=False)
        process.start()
        running[index] = process
      if not running:
        break
      try:
        index, kind, payload = results.get(timeout=5.0)
      except queue.Empty:
        for index, process in list(running.items()):
          # A worker that reported exits 0 after its message is in the queue; any other exit is a crash.
          if not process.is_alive() and process.exitcode != 0:
            running.pop(index)
            failures.append(f"{jobs[index].label}: worker exited with code {process.exitcode}")
        continue
      running.pop(index).join()
      if kind == "done":
        on_done(jobs[index], payload)
      elif kind == "stopped":
        stopped = stopped or StopForNow(*payload)
      else:
        failures.append(f"{jobs[index].label}: {payload}")
  finally:
    for process in running.values():  # only after an error here: let them checkpoint, then wait
      process.terminate()
      process.join()
    if old_handler is not None:
      signal.signal(signal.SIGTERM, old_handler)
    if user_fraction is None:
      os.environ.pop(MEMORY_FRACTION_KEY, None)
  if failures:
    raise RuntimeError("; ".join(failures))
  if stopped is not None:
    raise stopped


def _summary(result: Mapping[str, Any]) -> dict:
  keys = ("best", "epochs_trained", "stopped_early", "loss", "num_negatives", "num_params", "train_seconds",
          "compile_seconds", "eval_seconds", "wall_seconds", "config")
  return {k: result.get(k) for k in keys}


def sweep(flags) -> dict:
  grid = load_grid(flags.grid)
  metric = grid["metric"]
  started = time.time()
  dataset = sequences.load_dataset(flags.data_dir)
  os.makedirs(flags.out_dir, exist_ok=True)
  report = {"grid_file": os.path.abspath(flags.grid), "grid": grid, "data_dir": flags.data_dir,
            "dataset": dataset.stats(), "rule": f"highest validation {metric}; ties: the earlier point",
            **_common.run_metadata(flags.argv)}
  json_path = os.path.join(flags.out_dir, f"sasrec_sweep_{dataset.name}.json")

  def check_time(what: str) -> None:
    if flags.stop_after_seconds and time.time() - started > flags.stop_after_seconds:
      raise StopForNow(f"--stop_after_seconds={flags.stop_after_seconds} passed before {what}; finished runs "
                       "are kept, rerun the same command to continue", EXIT_RERUN)

  points: list[dict] = []
  finished_in_stage: list[dict] = []  # points of the stage under way that have finished (for an interrupted report)
  seen = set()
  try:
    for index, stage in enumerate(grid["stages"]):
      best = choose_best(points, metric)["bindings"] if points else None
      stage_records, jobs = [], []
      for bindings in stage_points(stage, best):
        name = point_name(bindings)
        if name in seen:
          continue
        seen.add(name)
        model_dir = os.path.join(flags.out_dir, "points", name)
        record_path = os.path.join(model_dir, POINT_FILE)
        stage_records.append(record_path)
        if os.path.exists(record_path):
          with open(record_path) as f:
            point = json.load(f)
          if point["bindings"] != bindings or point["fixed"] != grid["fixed"]:
            raise ValueError(f"{record_path}: made with other settings ({point['bindings']}, fixed "
                             f"{point['fixed']}); use a fresh --out_dir")
        else:
          jobs.append(Job(f"stage {index}, point {name}", {**grid["fixed"], **bindings}, model_dir,
                          ("validation",), info={"name": name, "stage": index, "bindings": bindings}))

      def record_point(job: Job, result: dict) -> None:
        point = {**job.info, "fixed": grid["fixed"],
                 "validation": {k: result["validation"][k] for k in METRIC_KEYS}, **_summary(result["validation"])}
        utils.write_json(os.path.join(job.model_dir, POINT_FILE), point)
        finished_in_stage.append(point)

      run_jobs(flags, jobs, check_time, record_point)
      finished_in_stage.clear()
      for record_path in stage_records:
        with open(record_path) as f:
          points.append(json.load(f))
    report["points"] = points
    chosen = choose_best(points, metric)
    report["best"] = chosen["name"]
    utils.write_json(json_path, report)

    # The chosen point on test, once per seed (the sweep's own seed reuses its run, scoring only), and with
    # --refit its refits: all independent, so they run side by side with --workers.
    base_seed = _base_seed(flags)
    chosen_bindings = {**grid["fixed"], **chosen["bindings"]}
    test_dirs = {seed: os.path.join(flags.out_dir, "points", chosen["name"]) if seed == base_seed else
                 os.path.join(flags.out_dir, "seeds", f"{chosen['name']}_seed{seed}") for seed in flags.test_seeds}
    refit_epochs = refit_epoch_count(chosen) if flags.refit else None
    refit_dirs = ({seed: os.path.join(flags.out_dir, "refit", f"{chosen['name']}_seed{seed}")
                   for seed in flags.test_seeds} if flags.refit else {})
    results: dict[tuple[str, int], dict] = {}
    jobs = []
    for seed, model_dir in test_dirs.items():
      found = _finished(model_dir)
      if found:
        results[("test", seed)] = found
      else:
        jobs.append(Job(f"seed {seed}", chosen_bindings, model_dir, ("validation", "test"), seed=seed,
                        info={"key": ("test", seed)}))
    for seed, model_dir in refit_dirs.items():
      found = _finished(model_dir, ("test",))
      if found:
        results[("refit", seed)] = found
      else:
        jobs.append(Job(f"refit seed {seed} ({refit_epochs} epochs on train + validation)", chosen_bindings,
                        model_dir, ("test",), seed=seed, refit_epochs=refit_epochs, info={"key": ("refit", seed)}))

    def keep_result(job: Job, result: dict) -> None:
      results[job.info["key"]] = result

    run_jobs(flags, jobs, check_time, keep_result)

    report.update(_seed_table(test_dirs, {seed: results[("test", seed)] for seed in test_dirs}))
    if flags.refit:
      report["refit"] = {"epochs": refit_epochs, "epochs_from": chosen["name"],
                         **_seed_table(refit_dirs, {seed: results[("refit", seed)] for seed in refit_dirs})}
  finally:
    report["points"] = points + finished_in_stage
    report["seconds_this_run"] = round(time.time() - started, 1)
    utils.write_json(json_path, report)
  print_report(report, metric)
  print(f"report: {json_path}")
  return report


def refit_epoch_count(chosen: Mapping[str, Any]) -> int:
  """The epochs a refit of the pick trains: the best validation epoch of the pick's own run."""
  epochs = int((chosen.get("best") or {}).get("epoch") or 0)
  if epochs < 1:
    raise ValueError(f"point {chosen['name']}: no best validation epoch recorded, nothing to refit for")
  return epochs


def _seed_table(model_dirs: Mapping[int, str], results: Mapping[int, dict]) -> dict:
  """Per seed its run, test metrics (and validation metrics where the run scored them), then their spread."""
  per_seed = {}
  for seed, result in results.items():
    entry = {"model_dir": model_dirs[seed], **{k: result["test"][k] for k in METRIC_KEYS}}
    if "validation" in result:
      entry["validation"] = {k: result["validation"][k] for k in METRIC_KEYS}
    per_seed[str(seed)] = {**entry, **_summary(result["test"])}
  mean, stderr = metrics_lib.mean_and_standard_error_per_metric(list(per_seed.values()), METRIC_KEYS)
  return {"test": per_seed, "test_mean": mean, "test_standard_error": stderr}


def _finished(model_dir: str, splits: Sequence[str] = ("validation", "test")) -> Optional[dict]:
  """A run already scored on `splits`: their metrics files (nothing is trained or decoded)."""
  found = {}
  for split in splits:
    path = os.path.join(model_dir, f"eval_{split}", "metrics.json")
    if not os.path.exists(path):
      return None
    with open(path) as f:
      found[split] = json.load(f)
  return found


def _base_seed(flags) -> int:
  """The RANDOM_SEED the points trained with (the gin files' value after the user's bindings)."""
  gin.clear_config()
  gin_utils.parse_gin_flags(flags.gin_search_paths, flags.gin_file or ["gin/baselines/sasrec.gin"],
                            list(flags.gin_bindings) + ["MODEL_DIR = ''", "DATA_DIR = ''"])
  try:
    return int(gin.query_parameter("%RANDOM_SEED"))
  finally:
    gin.clear_config()


def print_report(report: Mapping[str, Any], metric: str) -> None:
  points = report["points"]
  varied = sorted({k for p in points for k in p["bindings"]})
  header = ["point", *[k.split(".")[-1] for k in varied], "best epoch", "epochs", *METRIC_KEYS]
  rows = []
  for p in points:
    mark = " (best)" if p["name"] == report.get("best") else ""
    rows.append([f"{points.index(p)}{mark}", *[str(p["bindings"].get(k, "default")) for k in varied],
                 (p.get("best") or {}).get("epoch"), p.get("epochs_trained"),
                 *[p["validation"][k] for k in METRIC_KEYS]])
  print(f"\n== SASRec sweep on {report['dataset']['dataset']}: validation (ranked by {metric}), "
        f"{report.get('device_kind', '')}, git {report.get('git_revision', '')}")
  print("\n".join(_common.markdown_table(header, rows)))
  for what, entry in (("test", report), ("test after a refit on train + validation", report.get("refit"))):
    if not entry or not entry.get("test_mean"):
      continue
    se = entry["test_standard_error"]
    cells = [f"{entry['test_mean'][k]:.4f}" + (f" ± {se[k]:.4f}" if se[k] is not None else "")
             for k in METRIC_KEYS]
    epochs = f" ({entry['epochs']} epochs)" if "epochs" in entry else ""
    print(f"\n{what}{epochs}, point {report['best']}, seeds {','.join(entry['test'])}: " + " | ".join(
        f"{k} {c}" for k, c in zip(METRIC_KEYS, cells)))


def _extra_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--data_dir", required=True, help="Category directory (processed or raw Amazon 2014).")
  parser.add_argument("--out_dir", required=True, help="Runs and the JSON report go here.")
  parser.add_argument("--grid", default=DEFAULT_GRID, help="The grid file (JSON).")
  parser.add_argument("--test_seeds", default=None,
                      help="Comma-separated seeds the chosen point is scored on test with (default: the "
                           "sweep's RANDOM_SEED).")
  parser.add_argument("--workers", type=int, default=1,
                      help="Runs of one stage (and the test seeds and refits) side by side in this many processes "
                           "on the one device; each gets 0.9/N of its memory.")
  parser.add_argument("--refit", action="store_true",
                      help="Also refit the pick on train + validation per test seed and score test (OUT/refit/).")
  parser.add_argument("--stop_after_seconds", type=float, default=None,
                      help="Start no new run after this many seconds; exit 75 so a rerun continues.")


def main(argv: Optional[Sequence[str]] = None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  flags = gin_utils.parse_flags(argv, _extra_flags, prog="benchmarks/sasrec_sweep.py")
  flags.argv = ["benchmarks/sasrec_sweep.py", *argv]
  gin_utils.setup_logging(flags.log_level)
  flags.test_seeds = ([int(s) for s in flags.test_seeds.split(",") if s] if flags.test_seeds
                      else [_base_seed(flags)])
  check_memory_fraction(flags.workers)
  try:
    return sweep(flags)
  except StopForNow as e:
    log.warning("%s", e)
    raise SystemExit(e.code) from None


if __name__ == "__main__":
  main()
