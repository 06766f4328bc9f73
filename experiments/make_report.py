"""Writes experiments/results/REPORT.md from the stored result files: every number is read, none typed.

  python -m experiments.make_report [--results_dir=experiments/results] [--out=experiments/results/REPORT.md]

Result files are the JSON written by the experiment scripts, recognised by their "experiment" field:
  cold_start  benchmarks/cold_start.py (Figure 5)      diversity  benchmarks/diversity.py (Tables 3-4)
and, as hooks for the ablations still to run, a JSON with "experiment" in ABLATIONS and a list of "rows"
(dicts; the keys become the columns) plus "meta". Figure 6 (invalid IDs) is read from any result that
holds an "invalid_fraction_at_k" (eval's metrics.json layout), at the top level or one level down.
Each section links the experiment's own markdown table and PNG (drawn here from the JSON when the run's machine
had no matplotlib); every other stored file is listed at the end.
The paper's numbers (PAPER below) are constants, attributed to Rajput et al., "Recommender Systems with
Generative Retrieval", NeurIPS 2023, transcribed from the paper's tables (its LaTeX source); a value the paper
does not give is None.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
from typing import Any, Optional, Sequence


from benchmarks import _common  # noqa: E402
from experiments.table1_report import PAPER as TABLE1  # noqa: E402
from tiger_jax.metrics import REPORTED_METRICS as METRICS  # noqa: E402

log = logging.getLogger("make_report")

CITATION = "Rajput et al., Recommender Systems with Generative Retrieval, NeurIPS 2023"
# TIGER's own results (Table 1, table1_report.PAPER); Table 2's RQ-VAE row and the appendix tables' default rows
# repeat Beauty's.
_TIGER_TABLE1 = {name: TABLE1[name.lower()] for name in ("Sports", "Beauty", "Toys")}
# Table 2's other rows, (recall@5, ndcg@5, recall@10, ndcg@10) per dataset.
_ID_TYPES = {
    "LSH SID": {"Sports": (0.0215, 0.0146, 0.0321, 0.0180), "Beauty": (0.0379, 0.0259, 0.0533, 0.0309),
                "Toys": (0.0412, 0.0299, 0.0566, 0.0349)},
    "Random ID": {"Sports": (0.007, 0.005, 0.0116, 0.0063), "Beauty": (0.0296, 0.0205, 0.0434, 0.0250),
                  "Toys": (0.0362, 0.0270, 0.0448, 0.0298)},
}


def _beauty_rows(rows: dict[str, tuple]) -> list[dict]:
  return [dict(setting=s, dataset="Beauty", **dict(zip(METRICS, values))) for s, values in rows.items()]


_BEAUTY = tuple(_TIGER_TABLE1["Beauty"][k] for k in METRICS)
PAPER: dict[str, dict[str, Any]] = {
    "table1": {"source": f"{CITATION}, Table 1 (TIGER row)", "rows": [
        dict(setting="TIGER", dataset=d, **m) for d, m in _TIGER_TABLE1.items()]},
    "ablation_id_types": {"source": f"{CITATION}, Table 2 (ID generation: Random ID, LSH SID, RQ-VAE SID)",
                          "rows": [dict(setting=s, dataset=d, **dict(zip(METRICS, v)))
                                   for s, by_dataset in _ID_TYPES.items() for d, v in by_dataset.items()] +
                          [dict(setting="RQ-VAE SID", dataset=d, **m) for d, m in _TIGER_TABLE1.items()]},
    "ablation_layers": {"source": f"{CITATION}, Table 5 (number of layers; Beauty)", "rows": _beauty_rows({
        "3 layers": (0.04499, 0.03062, 0.06699, 0.03768), "4 layers": _BEAUTY,
        "5 layers": (0.04633, 0.03206, 0.06596, 0.03834)})},
    "ablation_user_token": {"source": f"{CITATION}, Table 8 (user information; Beauty)", "rows": _beauty_rows({
        "with user token": _BEAUTY, "without user token": (0.04458, 0.0302, 0.06479, 0.0367)})},
    # The paper prints the combined row's NDCG@5 as 0.3047, evidently a dropped zero; left out rather than fixed.
    "combined_catalogue": {"source": f"{CITATION}, Table 10 (Semantic IDs generated on the combined dataset vs "
                           "on Beauty alone; evaluated on Beauty; NDCG@5 of the combined row printed as 0.3047)",
                           "rows": _beauty_rows({"IDs from Beauty alone": _BEAUTY,
                                                 "IDs from the combined dataset": (0.04355, None, 0.06314, 0.03676)})},
    "invalid_ids": {"source": f"{CITATION}, Figure 6 (fraction of invalid IDs in the top-K)", "rows": []},
}
ABLATIONS = {
    "ablation_id_types": "Table 2: Semantic ID types",
    "ablation_layers": "Table 5: number of layers",
    "ablation_user_token": "Table 8: user token",
    "combined_catalogue": "Table 10: combined catalogue",
}


def load_results(results_dir: str) -> list[dict]:
  """Every JSON object in results_dir, with its file name under "_file" (unreadable files are skipped)."""
  out = []
  for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
    try:
      with open(path) as f:
        obj = json.load(f)
    except (OSError, json.JSONDecodeError):
      continue
    if isinstance(obj, dict):
      obj["_file"] = os.path.basename(path)
      out.append(obj)
  return out


def _provenance(result: dict) -> list[str]:
  meta = result.get("meta", {})
  card = meta.get("device_kind") or "unknown"
  if meta.get("device_count", 1) > 1:
    card = f"{meta['device_count']} x {card}"
  lines = [f"- results: [`{result['_file']}`]({result['_file']}); card: {card} ({meta.get('backend', '?')} "
           f"backend; host {meta.get('machine', '?')}); date {meta.get('date', '?')}; "
           f"revision {meta.get('git_revision', '?')}"]
  if meta.get("command"):
    lines.append(f"- command: `{meta['command']}`")
  files = result.get("files", {})
  links = [f"[{kind}]({name})" for kind, name in files.items() if name]
  if links:
    lines.append("- files: " + ", ".join(links))
  return lines


PLOTTERS = {"cold_start": "benchmarks.cold_start", "diversity": "benchmarks.diversity"}  # experiment -> module with plot()


def _image(result: dict, referenced: set, results_dir: str = "") -> list[str]:
  """The result's PNG, drawn here from the JSON when the run had no matplotlib (e.g. on the GPU machine)."""
  for name in result.get("files", {}).values():
    referenced.add(name)
  plot = result.get("files", {}).get("plot")
  if not plot:
    return []
  path = os.path.join(results_dir, plot)
  if results_dir and not os.path.exists(path) and result.get("experiment") in PLOTTERS:
    import importlib  # pylint: disable=g-import-not-at-top
    importlib.import_module(PLOTTERS[result["experiment"]]).plot(result, path)
  return ["", f"![{result['_file'][:-5]}]({plot})"]


def cold_start_section(results: list[dict], referenced: set, results_dir: str = "") -> list[str]:
  lines = ["## Cold-start retrieval (paper Sec. 4.3, Figure 5)", ""]
  if not results:
    return lines + ["No result yet (`benchmarks/cold_start.py`).", ""]
  for r in results:
    referenced.add(r["_file"])
    c, res = r["config"], r["results"]
    subsets = list(res["num_users"])
    lines += [f"### {r['_file'][:-5]}", ""] + _provenance(r) + [
        f"- {c.get('split', {}).get('num_unseen', '?')} unseen items "
        f"({c.get('split', {}).get('fraction', '?')} of the test items, seed {c.get('split', {}).get('seed', '?')}); "
        f"K * epsilon rounded by {c['rounding']}; step {c.get('step')}"]
    diag = r.get("diagnostics", {})
    if "unseen_items_sharing_a_seen_prefix" in diag:
      lines.append(f"- unseen items whose first {c.get('prefix_levels', 3)} codes are some seen item's (the only "
                   f"ones TIGER can retrieve): {diag['unseen_items_sharing_a_seen_prefix']} of "
                   f"{diag['unseen_items']}; unseen targets among TIGER's candidates: "
                   f"{_common.markdown_table(['x'], [[diag.get('unseen_target_among_tiger_candidates')]])[2][2:-2]}")
    lines.append("")
    k = str(c["k_for_epsilon"])
    header = ["method"] + [f"{s} ({res['num_users'][s]} users): Recall@{k}, epsilon {c['epsilon_for_k']:g}"
                           for s in subsets]
    rows = [[m] + [res["recall_at_k"][m][s].get(k) for s in subsets] for m in res["recall_at_k"]]
    lines += _common.markdown_table(header, rows) + [""]
    header = ["method / subset"] + [f"eps {e:g}" for e in c["epsilons"]]
    rows = [[f"{m} / {s}"] + [res["recall_vs_epsilon"][m][s][f"{e:g}"] for e in c["epsilons"]]
            for s in subsets for m in res["recall_vs_epsilon"]]
    lines += [f"Recall@{k} against epsilon:", ""] + _common.markdown_table(header, rows)
    lines += _image(r, referenced, results_dir) + [""]
  return lines


def diversity_section(results: list[dict], referenced: set, results_dir: str = "") -> list[str]:
  lines = ["## Diversity by temperature (paper Sec. 4.3, Tables 3-4)", ""]
  if not results:
    return lines + ["No result yet (`benchmarks/diversity.py`).", ""]
  for r in results:
    referenced.add(r["_file"])
    c = r["config"]
    ks = c["ks"]
    lines += [f"### {r['_file'][:-5]}", ""] + _provenance(r) + [
        f"- {c['num_users']} test users; entropy in {c['entropy_units']} of the {c['category']}", ""]
    header = ["decoder", "sample levels", "T"] + [f"Entropy@{k}" for k in ks] + [f"Recall@{c['recall_k']}"]
    rows = [[x["decoder"], x["sample_levels"], "-" if x["temperature"] is None else f"{x['temperature']:g}"] +
            [x.get(f"entropy@{k}") for k in ks] + [x.get(f"recall@{c['recall_k']}")] for x in r["rows"]]
    lines += _common.markdown_table(header, rows, digits=3) + [""]
    for setting in c["sample_levels"]:
      pts = sorted((x["temperature"], x.get(f"entropy@{ks[0]}")) for x in r["rows"]
                   if x["decoder"] == "sample" and x["sample_levels"] == setting)
      rising = all(b[1] >= a[1] for a, b in zip(pts, pts[1:]))
      lines.append(f"- sample levels {setting}: Entropy@{ks[0]} {'rises' if rising else 'does not rise'} "
                   f"with temperature ({', '.join(f'T={t:g}: {e:.3f}' for t, e in pts)})")
    for t, view in r.get("top_categories", {}).items():
      lines += ["", f"Most common categories of the top {c['recall_k']} per target category, T = {t}:", ""]
      lines += _common.markdown_table(["target category", "users", "predicted categories (share)"], [
          [v["target_category"], v["users"], ", ".join(f"{x['category']} ({x['share']:.2f})" for x in v["top"])]
          for v in view])
    lines += _image(r, referenced, results_dir) + [""]
  return lines


def _rows_table(rows: list[dict], digits: int = 4) -> list[str]:
  keys: list[str] = []
  for row in rows:
    keys += [k for k in row if k not in keys]
  return _common.markdown_table(keys, [[row.get(k) for k in keys] for row in rows], digits)


def ablation_section(kind: str, title: str, results: list[dict], referenced: set) -> list[str]:
  paper = PAPER.get(kind, {})
  lines = [f"### {title}", ""]
  if paper.get("rows"):
    lines += [f"Paper ({paper['source']}); a dash = not in the paper:", ""] + _rows_table(paper["rows"], 5) + [""]
  else:
    lines += [f"Paper: {paper.get('source', CITATION)}; numbers not transcribed here.", ""]
  if not results:
    lines += [f"No result of ours yet (a JSON with `\"experiment\": \"{kind}\"` and `rows`).", ""]
  for r in results:
    referenced.add(r["_file"])
    lines += _provenance(r) + [""] + _rows_table(r.get("rows", [])) + _image(r, referenced, "") + [""]
    lines += _beside_paper(r.get("rows", []), paper.get("rows", []))
  return lines


# Our setting labels that the paper words otherwise.
PAPER_LABELS = {"IDs from Beauty + Sports": "IDs from the combined dataset"}


def _beside_paper(rows: list[dict], paper_rows: list[dict]) -> list[str]:
  """Ours / paper / relative difference per metric, for each of our rows the paper has a row for."""
  paper = {(p["setting"], p["dataset"]): p for p in paper_rows}
  table = []
  for row in rows:
    match = paper.get((PAPER_LABELS.get(row.get("setting"), row.get("setting")), row.get("dataset")))
    if match is None:
      continue
    cells = []
    for k in METRICS:
      ours, theirs = row.get(k), match.get(k)
      if ours is None or theirs is None:
        cells.append("-")
      else:
        cells.append(f"{ours:.4f} / {theirs:.4f} ({100 * (ours / theirs - 1):+.0f}%)")
    table.append([row["setting"], row["dataset"]] + cells)
  if not table:
    return []
  return ["Ours / paper (difference):", ""] + _common.markdown_table(
      ["setting", "dataset"] + list(METRICS), table) + [""]


def _invalid_fractions(result: dict) -> list[tuple[str, dict]]:
  """(key, the dict holding it) of every `invalid_fraction_at_k` in a result, at the top level or one down."""
  found = []
  for key, value in [("", result)] + list(result.items()):
    if isinstance(value, dict) and isinstance(value.get("invalid_fraction_at_k"), dict) and \
        value["invalid_fraction_at_k"]:
      found.append((key, value))
  return found


def plot_invalid_ids(curves: dict[str, dict], path: str) -> None:
  """Figure 6's view: the percentage of invalid IDs in the top-K against K, one line per unconstrained run."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, fractions in curves.items():
    ks = sorted(int(k) for k in fractions)
    ax.plot(ks, [100 * fractions[str(k)] for k in ks], marker="o", markersize=3, label=label)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel("K (top-K of 20 unconstrained beams)")
  ax.set_ylabel("invalid IDs in the top-K (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def invalid_ids_section(results: list[dict], referenced: set, results_dir: str = "",
                        ks: Sequence[int] = (1, 5, 10, 20)) -> list[str]:
  """Invalid fractions with and without the valid-ID constraint, the retrieval metrics beside them, every K
  of the unconstrained runs, and their plot (drawn when matplotlib is installed)."""
  lines = ["### Figure 6: invalid IDs", "", f"Paper: {PAPER['invalid_ids']['source']}; given as a plot only. "
           "Ours, from every stored result with `invalid_fraction_at_k` (constrained decoding has none by "
           "construction); the metrics are the same decode's:", ""]
  rows, curves = [], {}
  for r in results:
    for key, value in _invalid_fractions(r):
      referenced.add(r["_file"])
      mode = {True: "constrained", False: "unconstrained"}.get(
          value.get("constrained"), "unconstrained" if "unconstrained" in key else "-")
      fractions = value["invalid_fraction_at_k"]
      rows.append([f"[{r['_file']}]({r['_file']}) {key}".strip(), mode] + [value.get(k) for k in METRICS] +
                  [fractions.get(str(k)) for k in ks])
      if mode == "unconstrained":
        curves[f"{r['_file'][:-5]} {key}".strip()] = fractions
  if not rows:
    return lines + ["No result with invalid-ID fractions yet.", ""]
  lines += _common.markdown_table(["result", "decoding"] + list(METRICS) + [f"invalid in top-{k}" for k in ks],
                                  rows) + [""]
  if curves:
    all_k = sorted({int(k) for c in curves.values() for k in c})
    lines += ["Invalid IDs in the top-K, every K (unconstrained):", ""] + _common.markdown_table(
        ["K"] + list(curves), [[k] + [c.get(str(k)) for c in curves.values()] for k in all_k], digits=5) + [""]
    name = "invalid_ids.png"
    referenced.add(name)
    if results_dir and _common.try_plot(plot_invalid_ids, curves, os.path.join(results_dir, name), log):
      lines += [f"![invalid IDs]({name})", ""]
  return lines


def other_files(results_dir: str, referenced: set, out_name: str) -> list[str]:
  names = sorted(n for n in os.listdir(results_dir)
                 if n not in referenced and n != out_name and not n.startswith(".") and
                 os.path.isfile(os.path.join(results_dir, n)))
  lines = ["## Other stored results", ""]
  lines += [f"- [{n}]({n})" for n in names] or ["(none)"]
  return lines + [""]


def make_report(results_dir: str, out: Optional[str] = None) -> str:
  out = out or os.path.join(results_dir, "REPORT.md")
  results = load_results(results_dir)
  by_kind: dict[str, list[dict]] = {}
  for r in results:
    by_kind.setdefault(r.get("experiment", ""), []).append(r)
  referenced: set = set()
  meta = _common.run_metadata(["experiments/make_report.py", f"--results_dir={results_dir}"])
  lines = ["# Results report", "",
           f"Generated by `{meta['command']}` on {meta['date']} at revision {meta['git_revision']} from "
           f"{len(results)} JSON files in this directory. Every number is read from the file linked beside it; "
           f"the paper's numbers are constants in `experiments/make_report.py`, from {CITATION}.", ""]
  lines += ["## Paper reference: TIGER, Table 1", ""] + _rows_table(PAPER["table1"]["rows"]) + [
      "", f"Source: {PAPER['table1']['source']}.", ""]
  lines += cold_start_section(by_kind.get("cold_start", []), referenced, results_dir)
  lines += diversity_section(by_kind.get("diversity", []), referenced, results_dir)
  lines += ["## Ablations", ""]
  for kind, title in ABLATIONS.items():
    lines += ablation_section(kind, title, by_kind.get(kind, []), referenced)
  lines += invalid_ids_section(results, referenced, results_dir)
  lines += other_files(results_dir, referenced, os.path.basename(out))
  with open(out + ".tmp", "w") as f:
    f.write("\n".join(lines))
  os.replace(out + ".tmp", out)
  return out


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--results_dir", default=os.path.join(_common.REPO, "benchmarks", "results"))
  p.add_argument("--out", default=None, help="Default: RESULTS_DIR/REPORT.md")
  args = p.parse_args(argv)
  print(make_report(args.results_dir, args.out))


if __name__ == "__main__":
  main()
