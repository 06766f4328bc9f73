r"""Select on validation, refit on train + validation, evaluate on test: the tuned recipe as one command.

  python -m tiger_jax.select_refit --gin_file=gin/tuned.gin --gin.MODEL_DIR=\"/tmp/beauty_tuned\" \
      --gin.MIXTURE_OR_TASK_NAME=\"'tiger_beauty'\" --gin.TASK_CACHE_DIR=\"'work/beauty/cache'\" \
      [--gin.RANDOM_SEED=1] [--until=select|refit|test]

The flags are tiger_jax.train's. Each phase re-reads the same gin files and bindings and adds its own, and
leaves its own part of MODEL_DIR:

  1 select/<candidate>/  each candidate (a named list of gin bindings, e.g. a width) trained on the training
                         split with periodic validation, up to TRAIN_STEPS (the horizon) or an early stop;
     selection.json      every candidate's validation curve, the rule (`SelectionRule`, from the config) and
                         what it chose: a candidate and a step
     validation/         the chosen params decoded on the validation split (metrics.json, predictions.jsonl):
                         what a hybrid's weights are chosen on (tiger_jax.fusion)
  2 refit/               the chosen candidate trained on train + validation for exactly selection.json's
                         `refit_steps` (read from that file, never from a gin file) with the batch chunking
                         it was selected with, no validation metrics
  3 test/                the refit's last checkpoint decoded on the test split (metrics.json, predictions.jsonl)

The test split is read in phase 3 only (phases 1 and 2 refuse a config whose splits name it). Rerunning the
command after an interruption resumes the phase it was in from its latest checkpoint; a finished phase
(select/<candidate>/done.json, selection.json, refit/done.json, validation/ and test/metrics.json) is never
redone.
`SelectRefitConfig.selection_from` takes the choice from another run's MODEL_DIR instead of phase 1, e.g.
seeds 1 and 2 refitting what seed 0 selected. `--seeds=0,1,2` does exactly that in one command: the whole
procedure for the first seed in MODEL_DIR/seed0/, then each further seed's refit and test of that choice in
MODEL_DIR/seed<N>/ (RANDOM_SEED=N, validation predictions copied), and MODEL_DIR/seeds.json with every seed's
test metrics, their mean and standard error. The candidates of phase 1 can train side by side, one process
each (`--only_candidates=d128`, `--only_candidates=d256`; on one GPU give each a share of its memory with
XLA_PYTHON_CLIENT_MEM_FRACTION): each stops after its candidates, and the command without the flag selects.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from typing import Any, Mapping, Optional, Sequence

import gin

from tiger_jax import gin_utils
from tiger_jax import metrics as metrics_lib
from tiger_jax import utils
from tiger_jax.data import lines as lines_lib

log = logging.getLogger("tiger_jax.select_refit")

SELECT_DIR = "select"
SELECTION_FILE = "selection.json"
REFIT_DIR = "refit"
TEST_DIR = "test"
VALIDATION_DIR = "validation"
CHOSEN_FILE = "chosen.json"
DONE_FILE = "done.json"
PHASES = ("select", "refit", "test")
DEFAULT_CANDIDATE = "default"
TEST_METRICS = metrics_lib.REPORTED_METRICS
SEEDS_FILE = "seeds.json"
# Every phase's own bindings come after the user's, in a block that imports what it binds.
_PHASE_HEADER = ("from __gin__ import dynamic_registration\n"
                 "import tiger_jax.train as train_script\n"
                 "from tiger_jax import utils\n")


@dataclasses.dataclass(frozen=True)
class SelectionRule:
  """Which validation evaluation wins: the best `metric`; values within `tolerance` of it tie, and ties go to
  the earliest step, then to the candidate listed first (the cheaper one, by convention)."""
  metric: str = "validation/ndcg@10"
  mode: str = "max"
  tolerance: float = 0.0

  def __post_init__(self):
    if self.mode not in ("max", "min"):
      raise ValueError(f"SelectionRule.mode must be 'max' or 'min', got {self.mode!r}")
    if not (isinstance(self.tolerance, (int, float)) and self.tolerance >= 0):
      raise ValueError(f"SelectionRule.tolerance must be a number >= 0, got {self.tolerance!r}")
    if not self.metric:
      raise ValueError("SelectionRule.metric is empty")

  def choose(self, curves: Mapping[str, Sequence[tuple[int, float]]]) -> dict[str, Any]:
    """curves: candidate -> [(step, value)], in candidate order. Returns {candidate, step, value, best}."""
    points = [(name, int(step), float(value)) for name, curve in curves.items() for step, value in curve
              if math.isfinite(value)]
    if not points:
      raise ValueError(f"no finite {self.metric!r} value in any validation curve ({sorted(curves)}): "
                       "nothing to select from")
    sign = 1.0 if self.mode == "max" else -1.0
    best = max(sign * value for _, _, value in points)
    order = {name: i for i, name in enumerate(curves)}
    tied = [p for p in points if sign * p[2] >= best - self.tolerance]
    name, step, value = min(tied, key=lambda p: (p[1], order[p[0]]))
    return {"candidate": name, "step": step, "value": value, "best_value": sign * best}


@dataclasses.dataclass(frozen=True)
class SelectRefitConfig:
  """What the procedure chooses from and how (bound in the experiment's gin file).

  candidates: name -> gin bindings applied on top of the config (e.g. a width); None: the config as it is.
  selection_from: another run's MODEL_DIR whose selection.json this run refits instead of running phase 1.
  validation_predictions: phase 1 ends by decoding the validation split with the params it chose.
  """
  rule: SelectionRule = SelectionRule()
  candidates: Optional[Mapping[str, Sequence[str]]] = None
  selection_from: Optional[str] = None
  validation_predictions: bool = True

  def candidate_bindings(self) -> dict[str, list[str]]:
    if self.candidates is None:
      return {DEFAULT_CANDIDATE: []}
    if not self.candidates:
      raise ValueError("SelectRefitConfig.candidates is empty: give at least one, or None")
    out = {}
    for name, bindings in self.candidates.items():
      if not isinstance(name, str) or not name or os.sep in name or name.startswith("."):
        raise ValueError(f"SelectRefitConfig.candidates: {name!r} is not a usable directory name")
      if isinstance(bindings, str) or not all(isinstance(b, str) for b in bindings):
        raise ValueError(f"SelectRefitConfig.candidates[{name!r}] must be a list of gin binding strings, "
                         f"got {bindings!r}")
      out[name] = list(bindings)
    return out


# ----------------------------------------------------------------------------------------------------------
# Gin: one parse per phase.


def _literal(value: Any) -> str:
  """A Python value as a gin literal."""
  if isinstance(value, str):
    return repr(value)
  return json.dumps(value) if value is not None else "None"


def _parse(flags: argparse.Namespace, candidate: Sequence[str] = (), phase: Sequence[str] = (),
           extra_files: Sequence[str] = ()) -> None:
  """Clears gin and parses the user's files (+ extra_files), then candidate, user and phase bindings."""
  gin.clear_config()
  bindings = list(candidate) + list(flags.gin_bindings)
  if phase:
    bindings.append(_PHASE_HEADER + "\n".join(phase))
  gin_utils.parse_gin_flags(flags.gin_search_paths, list(flags.gin_file) + list(extra_files), bindings)


def _query(name: str, default: Any = None) -> Any:
  try:
    return gin.query_parameter(name)
  except ValueError:
    return default


def _macro(name: str) -> Any:
  return _query(f"%{name}")


def _model_dir() -> str:
  root = _macro("MODEL_DIR")
  if not root:
    raise ValueError("MODEL_DIR is not set: pass --gin.MODEL_DIR=\\\"/path\\\"")
  return root


def _procedure_config() -> SelectRefitConfig:
  """The parsed SelectRefitConfig; the defaults when the gin files never mention it."""
  try:
    configurable = gin.get_configurable(SelectRefitConfig)
  except ValueError:
    return SelectRefitConfig()
  return configurable()


def _check_splits(phase: str, allowed: Mapping[str, str]) -> None:
  """Refuses a config whose dataset scopes read other splits than this phase may (never 'test' before 3)."""
  for scope, expected in allowed.items():
    split = _query(f"{scope}/utils.DatasetConfig.split")
    if split is not None and split != expected:
      raise ValueError(f"phase {phase!r}: the config's {scope}/utils.DatasetConfig.split is {split!r}; this "
                       f"phase reads {expected!r} there (the test split stays unread until phase 'test')")


# ----------------------------------------------------------------------------------------------------------
# Records.


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def validation_curve(model_dir: str, metric: str, last_step: Optional[int] = None) -> list[dict]:
  """The evaluations in model_dir/metrics.jsonl that hold `metric`, one per step (a rerun's row wins)."""
  path = os.path.join(model_dir, "metrics.jsonl")
  rows = {}
  for _, row in lines_lib.read_json_objects(path, "metrics log", missing_hint="phase 1 wrote no metrics"):
    if metric in row and (last_step is None or row["step"] <= last_step):
      rows[int(row["step"])] = {k: v for k, v in row.items() if k == "step" or k.startswith("validation/")}
  return [rows[s] for s in sorted(rows)]


def _identity(config: SelectRefitConfig, candidates: Mapping[str, Sequence[str]]) -> dict:
  """What a selection record must agree with before a rerun reuses it."""
  return {"rule": dataclasses.asdict(config.rule), "candidates": {k: list(v) for k, v in candidates.items()},
          "task": _macro("MIXTURE_OR_TASK_NAME")}


def _check_record(path: str, record: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
  for key, value in expected.items():
    if record.get(key) != value:
      raise ValueError(f"{path}: its {key} {record.get(key)!r} differs from the config's {value!r}; a finished "
                       "phase is never redone, so use a fresh MODEL_DIR (or restore the config)")


def read_selection(path: str) -> dict:
  """selection.json, checked for what phase 2 reads from it."""
  record = _read_json(path)
  chosen = record.get("chosen") or {}
  steps = record.get("refit_steps")
  if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
    raise ValueError(f"{path}: refit_steps must be a positive integer, got {steps!r}")
  name = chosen.get("candidate")
  if name not in (record.get("candidates") or {}):
    raise ValueError(f"{path}: chosen.candidate {name!r} is not among its candidates "
                     f"{sorted(record.get('candidates') or {})}")
  return record


# ----------------------------------------------------------------------------------------------------------
# Phases.


def _train(where: str):
  """Runs tiger_jax.train.train with the parsed config; raises on a signal so the phase stays unfinished."""
  from tiger_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  result = train_lib.train_using_gin()
  if result.stopped_by_signal is not None:
    raise Interrupted(result.stopped_by_signal, where)
  return result


class Interrupted(Exception):
  """A phase's training stopped on a signal after a checkpoint; rerunning the command resumes it."""

  def __init__(self, signum: int, where: str):
    super().__init__(f"signal {signum} during {where}: checkpointed; rerun the same command to resume")
    self.signum = signum


def run_select(flags, root: str, config: SelectRefitConfig, candidates: Mapping[str, list[str]]) -> dict:
  """Phase 1: trains every candidate on the training split, then writes selection.json."""
  path = os.path.join(root, SELECTION_FILE)
  identity = _identity(config, candidates)
  if os.path.exists(path):
    record = read_selection(path)
    _check_record(path, record, identity if not record.get("selection_from") else
                  {"task": identity["task"]})
    log.info("phase 1 (select): %s exists; not redone (chose %s at step %d)", path,
             record["chosen"]["candidate"], record["refit_steps"])
    return {"status": "done before", "record": record}
  if config.selection_from:
    source = os.path.join(config.selection_from, SELECTION_FILE)
    if not os.path.exists(source):
      raise FileNotFoundError(f"SelectRefitConfig.selection_from: {source} not found (run phase 1 there first)")
    record = read_selection(source)
    _check_record(source, record, {"task": identity["task"], "rule": identity["rule"]})
    record = dict(record, selection_from=os.path.abspath(source))
    utils.write_json(path, record)
    log.info("phase 1 (select): taken from %s (%s at step %d)", source, record["chosen"]["candidate"],
             record["refit_steps"])
    return {"status": "copied", "record": record}

  rule = config.rule
  only = list(getattr(flags, "only_candidates", None) or [])
  unknown = sorted(set(only) - set(candidates))
  if unknown:
    raise ValueError(f"--only_candidates: {unknown} are not candidates of the config ({list(candidates)})")
  runs = {}
  for name, bindings in candidates.items():
    if only and name not in only:
      continue
    model_dir = os.path.join(root, SELECT_DIR, name)
    done_path = os.path.join(model_dir, DONE_FILE)
    if os.path.exists(done_path):
      done = _read_json(done_path)
      _check_record(done_path, done, {"bindings": bindings})
      log.info("phase 1 (select): candidate %r finished before (step %d)", name, done["step"])
    else:
      _parse(flags, bindings, [f"MODEL_DIR = {_literal(model_dir)}",
                               f"train_script.train.best_metric = {_literal(rule.metric)}",
                               f"train_script.train.best_mode = {_literal(rule.mode)}"])
      _check_splits("select", {"train": "train", "train_eval": "validation", "infer_eval": "validation"})
      log.info("phase 1 (select): candidate %r on the training split, up to %s steps, in %s", name,
               _macro("TRAIN_STEPS"), model_dir)
      result = _train(f"phase 1, candidate {name!r}")
      done = {"step": result.step, "start_step": result.start_step, "horizon": _macro("TRAIN_STEPS"),
              "stopped_early": result.stopped_early, "best": result.best, "bindings": bindings,
              "partial_chunks": result.partial_chunks,
              "seed": _macro("RANDOM_SEED"), "time": time.time()}
      utils.write_json(done_path, done)
    curve = validation_curve(model_dir, rule.metric, done["step"])
    if not curve:
      raise ValueError(f"{model_dir}/metrics.jsonl holds no {rule.metric!r}: the config computes no such "
                       "validation metric (gin/runs/train.gin sets one, or fix "
                       "SelectionRule.metric)")
    runs[name] = dict(done, curve=curve)
  if only:
    log.info("phase 1 (select): candidates %s trained; selection.json is written by a run without "
             "--only_candidates once every candidate has finished", only)
    return {"status": "partial", "candidates": only}

  chosen = rule.choose({name: [(row["step"], row[rule.metric]) for row in run["curve"]]
                        for name, run in runs.items()})
  run = runs[chosen["candidate"]]
  last_evaluated = run["curve"][-1]["step"]
  at_horizon = chosen["step"] == last_evaluated and not run["stopped_early"]
  if at_horizon:
    log.warning("phase 1 (select): the chosen step %d is the last one evaluated; the curve may still be "
                "rising (a longer TRAIN_STEPS horizon could choose later)", chosen["step"])
  record = dict(identity, chosen=chosen, refit_steps=chosen["step"], chosen_at_horizon=at_horizon,
                random_seed=_macro("RANDOM_SEED"), runs=runs, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
  utils.write_json(path, record)
  log.info("phase 1 (select): %s %.4f at step %d of candidate %r -> %s", rule.metric, chosen["value"],
           chosen["step"], chosen["candidate"], path)
  return {"status": "ran", "record": record}


def candidate_chunking(record: Mapping[str, Any], root: str) -> Optional[bool]:
  """Whether the chosen candidate trained with partial chunks (utils.BatchSchedule): the refit trains the
  selected step count on the schedule it was selected on. From the selection record, else (a record from before
  it kept the chunking) from the candidate's latest checkpoint; None when neither is there."""
  name = record["chosen"]["candidate"]
  run = (record.get("runs") or {}).get(name) or {}
  if run.get("partial_chunks") is not None:
    return bool(run["partial_chunks"])
  source = os.path.dirname(record["selection_from"]) if record.get("selection_from") else root
  from tiger_jax import checkpoints  # pylint: disable=g-import-not-at-top
  meta = checkpoints.latest_meta(os.path.join(source, SELECT_DIR, name))
  if not meta or not meta.get("schedule"):
    return None
  return bool(meta["schedule"].get("partial_chunks", False))  # absent: full chunks (utils.BatchSchedule)


def run_refit(flags, root: str) -> dict:
  """Phase 2: the chosen candidate on train + validation for exactly selection.json's refit_steps."""
  selection_path = os.path.join(root, SELECTION_FILE)
  record = read_selection(selection_path)
  steps = record["refit_steps"]
  name = record["chosen"]["candidate"]
  model_dir = os.path.join(root, REFIT_DIR)
  done_path = os.path.join(model_dir, DONE_FILE)
  if os.path.exists(done_path):
    done = _read_json(done_path)
    if done.get("steps") != steps or done.get("candidate") != name:
      raise ValueError(f"{done_path}: the refit finished as {done.get('candidate')!r} for {done.get('steps')} "
                       f"steps, but {selection_path} now says {name!r} for {steps}; use a fresh MODEL_DIR")
    log.info("phase 2 (refit): finished before (%d steps of %r)", steps, name)
    return {"status": "done before", "steps": steps, "candidate": name}
  partial_chunks = candidate_chunking(record, root)
  if partial_chunks is None:
    log.warning("phase 2 (refit): neither %s nor the checkpoints of candidate %r say which batch chunking it "
                "was selected with; the refit uses the configured one", selection_path, name)
  _parse(flags, record["candidates"][name], [
      f"MODEL_DIR = {_literal(model_dir)}",
      f"TRAIN_STEPS = {steps}",
      "train/utils.DatasetConfig.split = 'train+validation'",
      "train_script.train.eval_metric_fns = []",
      "train_script.train.best_metric = None",
      "train_script.train.early_stopping_steps = None",
      *([f"train_script.train.bucket_partial_chunks = {partial_chunks}"] if partial_chunks is not None else [])])
  _check_splits("refit", {"train": "train+validation"})
  started = _checkpoint_steps(model_dir)
  if started and max(started) > steps:
    raise ValueError(f"{model_dir} holds a checkpoint at step {max(started)}, past the {steps} refit steps of "
                     f"{selection_path} (was the record changed after the refit started?); use a fresh MODEL_DIR")
  log.info("phase 2 (refit): candidate %r on train + validation for %d steps (from %s), in %s", name, steps,
           selection_path, model_dir)
  result = _train("phase 2 (refit)")
  if result.step != steps:
    raise RuntimeError(f"phase 2 (refit): training ended at step {result.step}, expected {steps}")
  utils.write_json(done_path, {"steps": steps, "candidate": name, "start_step": result.start_step,
                               "seed": _macro("RANDOM_SEED"), "time": time.time()})
  return {"status": "ran", "steps": steps, "candidate": name, "start_step": result.start_step}


def _checkpoint_steps(model_dir: str) -> list[int]:
  from tiger_jax import checkpoints  # pylint: disable=g-import-not-at-top
  directory = checkpoints.checkpoint_dir(model_dir)
  if not os.path.isdir(directory):
    return []
  return [int(name) for name in os.listdir(directory) if name.isdigit()]


def _evaluate(flags, candidate: Sequence[str], model_dir: str, split: str, checkpoint: Any, out_dir: str
              ) -> dict:
  """tiger_jax.eval of one checkpoint of `model_dir` on `split`, configured as the candidate was trained, with
  the config written beside the metrics and predictions in `out_dir`."""
  _parse(flags, candidate, [
      f"MODEL_DIR = {_literal(model_dir)}",
      f"EVAL_SPLIT = {_literal(split)}",
      f"EVAL_CHECKPOINT = {_literal(checkpoint)}",
      f"EVAL_OUTPUT_DIR = {_literal(out_dir)}"], extra_files=["gin/runs/eval.gin"])
  from tiger_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  gin_utils.write_config(out_dir)
  return gin.get_configurable(eval_lib.evaluate)()


def selected_checkpoint(record: Mapping[str, Any], root: str) -> Optional[tuple[str, Any]]:
  """(phase-1 MODEL_DIR, checkpoint choice) holding the params the selection evaluated at its chosen step, or
  None when no checkpoint of that step was kept. `best/` holds them when the rule's metric is the one the
  trainer kept its best by and the chosen step is that best one (tolerance 0); else a periodic checkpoint of
  that step, if still on disk."""
  from tiger_jax import checkpoints  # pylint: disable=g-import-not-at-top
  source = record.get("selection_from")
  select_root = os.path.dirname(source) if source else root
  model_dir = os.path.join(select_root, SELECT_DIR, record["chosen"]["candidate"])
  step = record["chosen"]["step"]
  if checkpoints.saved_steps(checkpoints.checkpoint_dir(model_dir, "best")) == [step]:
    return model_dir, "best"
  if step in checkpoints.saved_steps(checkpoints.checkpoint_dir(model_dir, "latest")):
    return model_dir, step
  return None


def run_validation(flags, root: str) -> dict:
  """Phase 1's last part: the chosen params decoded on the validation split (VALIDATION_DIR).

  These are the validation predictions of the model whose refit is tested, so a hybrid can choose how to
  weigh it on validation (tiger_jax.fusion) before anything reads test. Done right after the selection, the
  phase-1 checkpoints are no longer needed once it has run. A run that took its selection from another
  (`selection_from`) copies that run's validation/ when it has one."""
  out_dir = os.path.join(root, VALIDATION_DIR)
  metrics_path = os.path.join(out_dir, "metrics.json")
  if os.path.exists(metrics_path):
    return {"status": "done before", "metrics": _read_json(metrics_path)}
  record = read_selection(os.path.join(root, SELECTION_FILE))
  source = record.get("selection_from")
  source_dir = source and os.path.join(os.path.dirname(source), VALIDATION_DIR)
  if source_dir and os.path.exists(os.path.join(source_dir, CHOSEN_FILE)) and \
      _read_json(os.path.join(source_dir, CHOSEN_FILE)) == record["chosen"]:
    shutil.copytree(source_dir, out_dir, dirs_exist_ok=True)
    log.info("phase 1 (validation): copied from %s", source_dir)
    return {"status": "copied", "metrics": _read_json(metrics_path)}
  found = selected_checkpoint(record, root)
  if found is None:
    log.warning("phase 1 (validation): no checkpoint of the chosen step %d is kept; no validation predictions",
                record["chosen"]["step"])
    return {"status": "no checkpoint"}
  model_dir, checkpoint = found
  log.info("phase 1 (validation): %s checkpoint %s on the validation split -> %s", model_dir, checkpoint, out_dir)
  metrics = _evaluate(flags, record["candidates"][record["chosen"]["candidate"]], model_dir, "validation",
                      checkpoint, out_dir)
  utils.write_json(os.path.join(out_dir, CHOSEN_FILE), record["chosen"])  # what these predictions are of
  if metrics["step"] != record["chosen"]["step"]:
    raise RuntimeError(f"phase 1 (validation): decoded step {metrics['step']} of {model_dir}, but "
                       f"{SELECTION_FILE} chose step {record['chosen']['step']}")
  metric = record["rule"]["metric"].split("/", 1)[-1]
  if metric in metrics and abs(metrics[metric] - record["chosen"]["value"]) > 1e-3:
    log.warning("phase 1 (validation): %s %.4f here, %.4f when the trainer validated step %d", metric,
                metrics[metric], record["chosen"]["value"], metrics["step"])
  return {"status": "ran", "metrics": metrics}


def run_test(flags, root: str) -> dict:
  """Phase 3: the refit's last checkpoint on the test split, through tiger_jax.eval."""
  out_dir = os.path.join(root, TEST_DIR)
  metrics_path = os.path.join(out_dir, "metrics.json")
  record = read_selection(os.path.join(root, SELECTION_FILE))
  if os.path.exists(metrics_path):
    log.info("phase 3 (test): %s exists; not redone", metrics_path)
    return {"status": "done before", "metrics": _read_json(metrics_path)}
  model_dir = os.path.join(root, REFIT_DIR)
  done_path = os.path.join(model_dir, DONE_FILE)
  if not os.path.exists(done_path):
    raise FileNotFoundError(f"{done_path} not found: phase 2 (refit) has not finished")
  done = _read_json(done_path)
  log.info("phase 3 (test): the refit's last checkpoint (step %d) on the test split -> %s", done["steps"],
           out_dir)
  metrics = _evaluate(flags, record["candidates"][done["candidate"]], model_dir, "test", "latest", out_dir)
  if metrics["step"] != done["steps"]:
    raise RuntimeError(f"phase 3 (test): evaluated step {metrics['step']}, but the refit finished at "
                       f"{done['steps']}")
  return {"status": "ran", "metrics": metrics}


def run_procedure(flags: argparse.Namespace) -> dict:
  """All phases up to flags.until; returns what each one did."""
  _parse(flags)
  root = _model_dir()
  config = _procedure_config()
  candidates = config.candidate_bindings()
  until = getattr(flags, "until", "test")
  os.makedirs(root, exist_ok=True)
  report = {"model_dir": root}
  try:
    report["select"] = run_select(flags, root, config, candidates)
    if report["select"]["status"] == "partial":
      return report
    if config.validation_predictions:
      report["validation"] = run_validation(flags, root)
    if PHASES.index(until) >= 1:
      report["refit"] = run_refit(flags, root)
    if PHASES.index(until) >= 2:
      report["test"] = run_test(flags, root)
  finally:
    gin.clear_config()
  if "test" in report:
    chosen = report["select"]["record"]["chosen"]
    found = report["test"]["metrics"]
    log.info("select-then-refit %s: %r at step %d (%s %.4f) -> test %s", root, chosen["candidate"],
             chosen["step"], report["select"]["record"]["rule"]["metric"], chosen["value"],
             metrics_lib.format_metrics(found))
  return report


def seed_dir(root: str, seed: int) -> str:
  return os.path.join(root, f"seed{seed}")


def summarize_seeds(per_seed: Mapping[int, Mapping[str, float]]) -> dict:
  """Mean and standard error (sample standard deviation / sqrt(n); None for one seed) of each test metric."""
  seeds = sorted(per_seed)
  mean, stderr = metrics_lib.mean_and_standard_error_per_metric([per_seed[seed] for seed in seeds], TEST_METRICS)
  return {"seeds": seeds, "test": {str(seed): {k: per_seed[seed][k] for k in TEST_METRICS} for seed in seeds},
          "mean": mean, "stderr": stderr}


def format_seed_summary(summary: Mapping[str, Any]) -> str:
  """'recall@5 0.0318 +- 0.0002 ...'; one seed has no spread, so it prints the mean alone."""
  return " ".join(f"{k} {summary['mean'][k]:.4f}" + ("" if summary["stderr"][k] is None else
                                                      f" +- {summary['stderr'][k]:.4f}") for k in TEST_METRICS)


def run_seeds(flags: argparse.Namespace, seeds: Sequence[int]) -> dict:
  """The procedure for seeds[0] in MODEL_DIR/seed<first>/, then refit and test of its choice for every further
  seed; writes MODEL_DIR/seeds.json once every seed has its test metrics."""
  if len(set(seeds)) != len(seeds) or not seeds:
    raise ValueError(f"--seeds: give distinct integers, got {list(seeds)}")
  _parse(flags)
  root = _model_dir()
  gin.clear_config()
  first = seed_dir(root, seeds[0])
  per_seed, reports = {}, {}
  for seed in seeds:
    bindings = [f"MODEL_DIR = {_literal(seed_dir(root, seed))}", f"RANDOM_SEED = {seed}"]
    if seed != seeds[0]:
      bindings.append("from __gin__ import dynamic_registration\nfrom tiger_jax import select_refit\n"
                      f"select_refit.SelectRefitConfig.selection_from = {_literal(first)}")
    log.info("seed %d of %s -> %s", seed, list(seeds), seed_dir(root, seed))
    seed_flags = argparse.Namespace(**{**vars(flags), "gin_bindings": list(flags.gin_bindings) + bindings})
    report = reports[seed] = run_procedure(seed_flags)
    if report["select"]["status"] == "partial":
      log.info("--only_candidates: the other seeds wait until seed %d has selected", seeds[0])
      return reports
    if "test" in report:
      per_seed[seed] = report["test"]["metrics"]
  if len(per_seed) == len(seeds):
    summary = dict(summarize_seeds(per_seed), model_dir=root, selection_from=first)
    utils.write_json(os.path.join(root, SEEDS_FILE), summary)
    for seed in seeds:
      log.info("seed %d test: %s", seed, metrics_lib.format_metrics(per_seed[seed]))
    log.info("%d seeds -> %s: %s", len(seeds), os.path.join(root, SEEDS_FILE), format_seed_summary(summary))
    reports["summary"] = summary
  return reports


def _extra_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--until", choices=PHASES, default="test",
                      help="Stop after this phase (a later run with a later phase continues).")
  parser.add_argument("--only_candidates", type=lambda text: [x for x in text.split(",") if x], default=None,
                      help="Phase 1 for these candidates only (comma-separated), then stop: processes side by "
                           "side each train some; a run without the flag then selects and goes on.")
  parser.add_argument("--seeds", type=lambda text: [int(x) for x in text.split(",") if x.strip()], default=None,
                      help="Comma-separated seeds: the procedure for the first in MODEL_DIR/seed<N>/, the others "
                           "refit and test its choice; MODEL_DIR/seeds.json gets mean and standard error.")


def main(flags: argparse.Namespace) -> None:
  from tiger_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  try:
    if getattr(flags, "seeds", None):
      run_seeds(flags, flags.seeds)
    else:
      run_procedure(flags)
  except Interrupted as e:
    log.warning("%s", e)
    sys.exit(128 + e.signum)
  except train_lib.NonFiniteLossError as e:
    log.error("%s", e)
    sys.exit(3)


def console_main(argv: Optional[Sequence[str]] = None) -> None:
  """`python -m tiger_jax.select_refit`: tiger_jax.train's flags plus --until."""
  gin_utils.run(main, argv, extra_flags=_extra_flags)


if __name__ == "__main__":
  # Delegate to the importable module, whose configurables are the ones gin files refer to.
  from tiger_jax import select_refit as _module  # pylint: disable=import-self
  _module.console_main()
