r"""Baselines beside TIGER: most-popular and SASRec on one category, scored by the project's metrics code.

Needs numpy, jax, flax, optax, orbax and gin-config only (no TensorFlow, seqio or torch), so it runs on the
GPU machine:

  python -m benchmarks.baselines --data_dir=data/beauty --out_dir=out \
      --gin_file=gin/baselines/sasrec_beauty.gin
  python -m benchmarks.baselines --data_dir=/path/to/sports --out_dir=out \
      --gin_file=gin/baselines/sasrec_sports.gin

t5x's gin flags pass through (`--gin.NUM_EPOCHS=100`, `--gin_bindings=...`). SASRec trains in
`--model_dir` (default OUT/sasrec_<dataset>); rerunning with the same directory resumes or, for a finished
run, only re-evaluates. `--skip_sasrec` runs popularity alone (instant on a CPU). Prints a table of
Recall/NDCG@5/10 on validation and test with training time, and writes OUT/baselines_<dataset>.json with the
device kind, jax version, date and git revision.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


import jax  # noqa: E402,F401  (imported before run_metadata, which then reports the devices)

from benchmarks import _common  # noqa: E402
from tiger_jax import gin_utils  # noqa: E402
from tiger_jax import utils  # noqa: E402
from tiger_jax.baselines import evaluation  # noqa: E402
from tiger_jax.baselines import popularity  # noqa: E402
from tiger_jax.baselines import sasrec  # noqa: E402
from tiger_jax.baselines import sequences  # noqa: E402


def extra_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--data_dir", required=True, help="Category directory (processed or raw Amazon 2014).")
  parser.add_argument("--out_dir", required=True, help="Where the JSON report and run directories go.")
  parser.add_argument("--model_dir", default=None, help="SASRec MODEL_DIR (default OUT/sasrec_<dataset>).")
  parser.add_argument("--skip_sasrec", action="store_true", help="Popularity only.")
  parser.add_argument("--json_name", default=None, help="Report file name (default baselines_<dataset>.json).")
  parser.add_argument("--note", default=None, help="A label stored in the report (e.g. 'not converged').")


def run_sasrec(flags, name: str) -> dict:
  """SASRec through its gin entry point, with DATA_DIR and MODEL_DIR from the flags."""
  import gin  # pylint: disable=g-import-not-at-top
  model_dir = flags.model_dir or os.path.join(flags.out_dir, f"sasrec_{name}")
  gin_files = flags.gin_file or ["gin/baselines/sasrec.gin"]
  bindings = list(flags.gin_bindings) + [f"DATA_DIR = {flags.data_dir!r}", f"MODEL_DIR = {model_dir!r}"]
  gin.clear_config()
  gin_utils.parse_gin_flags(flags.gin_search_paths, gin_files, bindings)
  try:
    result = gin.get_configurable(sasrec.train_and_evaluate)()
  finally:
    gin.clear_config()
  if result.get("stopped_by_signal") is not None:
    raise SystemExit(128 + result["stopped_by_signal"])
  result["model_dir"] = model_dir
  result["gin_files"] = gin_files
  result["gin_bindings"] = bindings
  return result


def main(argv=None) -> dict:
  flags = gin_utils.parse_flags(argv, extra_flags, prog="benchmarks/baselines.py")
  gin_utils.setup_logging(flags.log_level)
  os.makedirs(flags.out_dir, exist_ok=True)
  dataset = sequences.load_dataset(flags.data_dir)
  name = dataset.name
  argv = sys.argv[1:] if argv is None else list(argv)
  report = {"note": flags.note, **_common.run_metadata([os.path.abspath(__file__), *argv]),
            "data_dir": flags.data_dir, "dataset": dataset.stats()}
  start = time.time()
  report["popularity"] = popularity.evaluate(dataset)
  for split, result in report["popularity"].items():
    evaluation.write_metrics(os.path.join(flags.out_dir, f"popularity_{name}"), split, result)
  report["popularity_seconds"] = round(time.time() - start, 3)
  json_path = os.path.join(flags.out_dir, flags.json_name or f"baselines_{name}.json")
  utils.write_json(json_path, report)
  if not flags.skip_sasrec:
    report["sasrec"] = run_sasrec(flags, name)
    utils.write_json(json_path, report)
  print_summary(report)
  print(f"report: {json_path}")
  return report


def print_summary(report: dict) -> None:
  rows = [(f"popularity {split}", result) for split, result in report["popularity"].items()]
  sasrec_result = report.get("sasrec")
  if sasrec_result:
    rows += [(f"sasrec {split}", sasrec_result[split]) for split in ("validation", "test")]
  print(f"\n== baselines on {report['dataset']['dataset']} ({report['dataset']['users']} users, "
        f"{report['dataset']['items']} items), {report['device_kind']}, jax {report['jax']}, "
        f"{report['date']}, git {report['git_revision'][:12]}")
  print(evaluation.format_table(rows))
  if sasrec_result:
    test = sasrec_result["test"]
    print(f"sasrec: {test['num_params']:,} params, {test['epochs_trained']} epochs (best {test['best']['epoch']}),"
          f" training {test['train_seconds']:.1f}s (+ compile {test['compile_seconds']:.1f}s, periodic eval "
          f"{test['eval_seconds']:.1f}s, checkpoints {test['checkpoint_seconds']:.1f}s; loop wall "
          f"{test['wall_seconds']:.1f}s)")


if __name__ == "__main__":
  main()
