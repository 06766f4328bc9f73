"""Stage 6: generative retrieval over the full catalogue, scored by leave-one-out Recall/NDCG@K.

  python -m tiger_jax.eval --gin_file=gin/beauty_quick.gin --gin.MODEL_DIR=\"work/beauty/model_quick\"

Beam search (20 beams by default, the KV cache, optionally constrained to valid Semantic IDs) decodes each
user's next-item ID; beams map to items through the trie of the catalogue's IDs (`items.npz` of the task
cache). Writes `metrics.json` (Recall/NDCG@5/10, invalid-ID rate per K) and `predictions.jsonl`
(one line per user: reviewerID, target asin, ranked asins) to `output_dir` (default MODEL_DIR/eval_<split>).
Ranking rule (tiger_jax/metrics.py): invalid beams and repeats are dropped before ranking; the invalid
rate is measured on the raw beams. Training's periodic validation calls `retrieval_metrics_fn`, so the
best checkpoint is chosen by the same code.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import gin
import jax
import numpy as np

from tiger_jax import checkpoints
from tiger_jax import decoding
from tiger_jax import metrics as metrics_lib
from tiger_jax import predictions as predictions_lib
from tiger_jax import program_cache as program_cache_lib
from tiger_jax import provenance
from tiger_jax import utils
from tiger_jax import vocab as vocab_lib

log = logging.getLogger("tiger_jax.eval")
ITEMS_FILE = "items.npz"


@dataclasses.dataclass
class CatalogTables:
  """What maps beams back to items: catalogue asins, their ID tokens, and the users of the split rows."""
  asins: np.ndarray  # [num_items] str
  item_tokens: np.ndarray  # [num_items, levels]
  users: np.ndarray  # [num_users] str (reviewerIDs, Sessions order)
  titles: np.ndarray  # [num_items] str ("" where unknown)

  @classmethod
  def load(cls, cache_dir: Optional[str], task_name: str) -> "CatalogTables":
    path = os.path.join(utils.resolve_cache_dir(cache_dir), task_name, ITEMS_FILE)
    if not os.path.exists(path):
      raise utils.MissingArtifactError(f"{path} not found: re-run the task cache (python -m tasks.cache_tasks)")
    with np.load(path, allow_pickle=False) as z:
      return cls(asins=z["asins"], item_tokens=z["item_tokens"], users=z["users"], titles=z["titles"])

  def trie(self, layout: vocab_lib.TokenLayout = vocab_lib.DEFAULT_LAYOUT) -> decoding.SemanticIdTrie:
    codes = layout.tokens_to_codes(self.item_tokens)
    if (codes < 0).any():
      raise ValueError("items.npz: item_tokens hold tokens that are not codewords of their level")
    return decoding.SemanticIdTrie.from_codes(codes, layout.codebook_size)


def on_its_one_device(params: Any) -> Any:
  """`params` as plain single-device arrays when all of them live on one device (a one-device training mesh);
  anything else unchanged. A beam search lowered over them is then the program eval and infer lower over
  restored params, so the trainer's validation and a later eval share one entry of the persistent compilation
  cache instead of compiling the same decoder twice."""
  leaves = jax.tree_util.tree_leaves(params)
  if not leaves or not all(isinstance(x, jax.Array) and x.is_fully_addressable for x in leaves):
    return params
  devices = {device for x in leaves for device in x.sharding.device_set}
  if len(devices) != 1:
    return params
  return jax.device_put(params, jax.sharding.SingleDeviceSharding(devices.pop()))


class Retriever:
  """A model + params + catalogue trie -> ranked items per input; jitted once per (batch, length) shape."""

  def __init__(self, model, params, trie: decoding.SemanticIdTrie, num_beams: int = 20,
               constrain: bool = True, batch_size: int = 512, decoder_params: Optional[dict] = None,
               length_buckets: Optional[Sequence[int]] = (17, 33, 49, 81), program_cache: Optional[Any] = None,
               shrink_last_batch: bool = False):
    """program_cache: a program_cache.ProgramCache of a gin-configured run, whose key then stands for `model`;
    the beam search of each length is kept on disk there, so a later run skips tracing it.
    shrink_last_batch: a length's last, partial batch is padded only to the next power of two rows (a program
    per size): a few inputs cost a few rows, not batch_size, for the price of more compiled programs."""
    self.model, self.params = model, params
    self.trie = trie.to_device()
    self.num_beams, self.batch_size, self.length_buckets = num_beams, batch_size, length_buckets
    self.shrink_last_batch = shrink_last_batch
    self.program_cache = program_cache
    params_static = dict(decoder_params or {}, constrain=constrain)
    self._key_parts = ("beam_search", num_beams, repr(sorted(params_static.items())))

    def predict(params, tokens, trie, rng):
      decoder = dict(params_static, trie=trie)
      _, aux = model.predict_batch_with_aux(params, {utils.ENCODER_INPUT: tokens}, rng=rng,
                                            decoder_params=decoder, num_decodes=num_beams,
                                            return_all_decodes=True)
      return aux["items"], aux["scores"]

    self._predict_fn = predict
    self._predict = jax.jit(predict)
    # (encoder length, rows) -> beam search compiled ahead (rng None)
    self._compiled: dict[tuple[int, int], Any] = {}

  @property
  def params(self):
    return self._params

  @params.setter
  def params(self, params):
    self._params = on_its_one_device(params)

  def batch_rows(self, count: int) -> int:
    """Rows of the batch that holds `count` inputs: batch_size, or with shrink_last_batch the next power of two."""
    if not self.shrink_last_batch or count >= self.batch_size:
      return self.batch_size
    return min(self.batch_size, 1 << max(count - 1, 0).bit_length())

  def precompile(self, lengths: Sequence[int], rows: Optional[Sequence[int]] = None) -> None:
    """Compiles the decode of every encoder length (with `rows` rows each, default batch_size) at once: XLA
    compiles outside the GIL, so the programs build side by side instead of one after another at their first
    batch."""
    rows = [self.batch_size] * len(lengths) if rows is None else rows
    todo = sorted({(int(length), int(n)) for length, n in zip(lengths, rows)} - set(self._compiled))

    def build(shape: tuple[int, int]):
      length, n = shape
      tokens = np.zeros((n, length), np.int32)  # what retrieve() passes, placed the same way
      if self.program_cache is not None:
        run, from_disk = self.program_cache.compile_function(
            self._predict_fn, (self.params, tokens, self.trie, None), self._key_parts)
        if run is not None:
          log.info("compiled the beam search for encoder length %d%s (%s)", length,
                   "" if n == self.batch_size else f", {n} rows",
                   "traced program from disk" if from_disk else "traced and stored")
          return run
      return self._predict.lower(self.params, tokens, self.trie, None).compile()

    if len(todo) == 1:
      self._compiled[todo[0]] = build(todo[0])
    elif todo:
      with concurrent.futures.ThreadPoolExecutor(len(todo)) as pool:
        for shape, compiled in zip(todo, pool.map(build, todo)):
          self._compiled[shape] = compiled

  def _batches(self, tokens: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
    """(input indices, encoder length, rows) of each batch that retrieve() decodes `tokens` in."""
    batches = utils.eval_batches(utils.nonpad_lengths(tokens), self.batch_size, self.length_buckets,
                                 tokens.shape[1])
    return [(idx, length, self.batch_rows(len(idx))) for idx, length in batches]

  def precompile_for(self, encoder_input_tokens: np.ndarray) -> None:
    """Compiles every beam search that retrieve() of these inputs (rng None) runs, decoding nothing."""
    self._precompile_batches(self._batches(np.asarray(encoder_input_tokens, np.int32)))

  def _precompile_batches(self, batches: Sequence[tuple[np.ndarray, int, int]]) -> None:
    self.precompile([length for _, length, _ in batches], [rows for _, _, rows in batches])

  def retrieve(self, encoder_input_tokens: np.ndarray, rng: Optional[jax.Array] = None,
               should_stop: Optional[Callable[[], bool]] = None) -> tuple[np.ndarray, np.ndarray]:
    """(raw items [N, beams] with -1 for invalid IDs, scores [N, beams]), in input order.

    should_stop: polled before each batch; when it returns True, utils.StopRequested is raised.
    """
    tokens = np.asarray(encoder_input_tokens, np.int32)
    n = len(tokens)
    items = np.full((n, self.num_beams), -1, np.int32)
    scores = np.full((n, self.num_beams), -np.inf, np.float32)
    batches = self._batches(tokens)
    if rng is None:
      self._precompile_batches(batches)
    for b, (idx, length, n) in enumerate(batches):
      if should_stop is not None and should_stop():
        raise utils.StopRequested(f"retrieval stopped after {b} of the batches")
      batch = np.zeros((n, length), np.int32)
      batch[:len(idx)] = tokens[idx, :length]
      if rng is None:
        out = self._compiled[(length, n)](self.params, batch, self.trie, None)
      else:
        out = self._predict(self.params, batch, self.trie, jax.random.fold_in(rng, b))
      got_items, got_scores = jax.device_get(out)
      items[idx], scores[idx] = got_items[:len(idx)], got_scores[:len(idx)]
    return items, scores


def retrieval_metrics(raw_items: np.ndarray, target: np.ndarray, ks: Sequence[int] = (5, 10),
                      invalid_ks: Sequence[int] = tuple(range(1, 21))) -> dict[str, Any]:
  """Recall/NDCG@K on the cleaned ranked lists, the share of targets at each rank, and the raw invalid-ID
  fraction per K."""
  ranks = metrics_lib.target_ranks(metrics_lib.clean_ranked(raw_items), target)
  out: dict[str, Any] = metrics_lib.ranking_metrics(ranks, ks)
  at_rank = metrics_lib.hit_fraction_at_rank(ranks, raw_items.shape[1])
  out["hit_fraction_at_rank"] = {str(r): v for r, v in at_rank.items()}
  invalid = metrics_lib.invalid_fraction_at_k(raw_items, invalid_ks)
  out["invalid_fraction_at_k"] = {str(k): v for k, v in invalid.items()}
  out["num_users"] = int(len(target))
  return out


def write_predictions(path: str, tables: CatalogTables, user_index: np.ndarray, target: np.ndarray,
                      raw_items: np.ndarray, scores: np.ndarray) -> None:
  """predictions.jsonl in the format of docs/CONTRACTS.md: the cleaned ranked list, best first, with scores."""
  clean = metrics_lib.clean_ranked(raw_items)

  def rows():
    for u, t, ranked, raw, sc in zip(user_index, target, clean, raw_items, scores):
      kept = ranked[ranked >= 0]
      first_score = {}
      for item, s in zip(raw.tolist(), sc.tolist()):
        first_score.setdefault(item, s)
      yield predictions_lib.Ranked(tables.users[u], tables.asins[t], [tables.asins[i] for i in kept],
                                   [first_score[i] for i in kept.tolist()])
  predictions_lib.write(path, rows())


@utils.compiles_ahead
def retrieval_metrics_fn(ctx, num_beams: int = 20, constrain: bool = True, batch_size: int = 512
                         ) -> dict[str, float]:
  """A train() eval hook: validation Recall/NDCG of the current params, on `infer_eval`'s split."""
  cfg = ctx.infer_eval_dataset_cfg
  if cfg is None:
    return {}
  if "retrieval" not in ctx.cache:
    arrays = utils.get_dataset_arrays(cfg, (utils.ENCODER_INPUT, "target_item"))
    if ctx.eval_steps:
      arrays = {k: v[:ctx.eval_steps * cfg.batch_size] for k, v in arrays.items()}
    trie = CatalogTables.load(cfg.cache_dir, cfg.mixture_or_task_name).trie()
    ctx.cache["retrieval"] = (arrays, trie)
  arrays, trie = ctx.cache["retrieval"]
  retriever = ctx.cache.get("retriever")
  if retriever is None:
    retriever = Retriever(ctx.model, ctx.params, trie, num_beams, constrain, batch_size,
                          program_cache=ctx.program_cache)
    ctx.cache["retriever"] = retriever
  retriever.params = ctx.params
  if ctx.compile_only:
    retriever.precompile_for(arrays[utils.ENCODER_INPUT])
    return {}
  raw, _ = retriever.retrieve(arrays[utils.ENCODER_INPUT], should_stop=ctx.stop_requested)
  found = retrieval_metrics(raw, arrays["target_item"], invalid_ks=())
  return {f"{cfg.split}/{k}": v for k, v in found.items() if isinstance(v, float)}


def evaluate(*, model, dataset_cfg: utils.DatasetConfig, model_dir: str, checkpoint: str = "best",
             output_dir: Optional[str] = None, num_beams: int = 20, constrain: bool = True,
             batch_size: int = 512, max_examples: Optional[int] = None) -> dict[str, Any]:
  """Evaluates a trained MODEL_DIR on `dataset_cfg.split`; writes metrics.json and predictions.jsonl.

  The arguments and the output directory are checked before anything is restored or decoded.
  """
  if num_beams < 10:
    raise ValueError(f"num_beams={num_beams}: Recall/NDCG@10 need at least 10 beams")
  checkpoint = checkpoints.parse_checkpoint_choice(checkpoint)
  output_dir = output_dir or os.path.join(model_dir, f"eval_{dataset_cfg.split}")
  start = time.time()
  provenance.check_cache(model_dir, provenance.cache_fingerprint(dataset_cfg.cache_dir,
                                                                 dataset_cfg.mixture_or_task_name),
                         "eval", strict=False)
  check_writable_dir(output_dir)
  params, step = checkpoints.restore_params(model_dir, checkpoint)
  arrays = utils.get_dataset_arrays(dataset_cfg, (utils.ENCODER_INPUT, "user_index", "target_item"))
  if max_examples:
    arrays = {k: v[:max_examples] for k, v in arrays.items()}
  tables = CatalogTables.load(dataset_cfg.cache_dir, dataset_cfg.mixture_or_task_name)
  retriever = Retriever(model, params, tables.trie(), num_beams, constrain, batch_size,
                        program_cache=program_cache_lib.for_gin_run())
  decode_start = time.time()
  raw, scores = retriever.retrieve(arrays[utils.ENCODER_INPUT])
  decode_seconds = time.time() - decode_start
  result = retrieval_metrics(raw, arrays["target_item"])
  result.update({"split": dataset_cfg.split, "task": dataset_cfg.mixture_or_task_name, "step": step,
                 "checkpoint": checkpoint, "num_beams": num_beams, "constrained": constrain,
                 "decode_seconds": round(decode_seconds, 2), "users_per_second": round(len(raw) / decode_seconds, 1),
                 "seconds": round(time.time() - start, 2), "device": jax.devices()[0].device_kind})
  write_predictions(os.path.join(output_dir, predictions_lib.FILE_NAME), tables, arrays["user_index"],
                    arrays["target_item"], raw, scores)
  utils.write_json(os.path.join(output_dir, "metrics.json"), result)
  log.info("%s/%s step %d: %s", dataset_cfg.mixture_or_task_name, dataset_cfg.split, step,
           metrics_lib.format_metrics(result))
  return result


def check_writable_dir(directory: str) -> None:
  """Creates `directory` and writes a probe file in it, so a read-only output fails before decoding."""
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    raise OSError(f"{directory}: cannot write the eval output there ({e.strerror or e}); set EVAL_OUTPUT_DIR "
                  "to a writable directory, e.g. --gin.EVAL_OUTPUT_DIR=\"'/tmp/eval'\"") from e


def metrics_from_predictions(path: str, ks: Sequence[int] = (5, 10)) -> dict[str, float]:
  """Recomputes Recall/NDCG@K from predictions.jsonl alone (an independent check of metrics.json)."""
  ranks = predictions_lib.target_ranks(predictions_lib.read(path))
  return metrics_lib.ranking_metrics(np.array(ranks), ks)


USAGE = ("pass the experiment's gin file, then the eval run file: python -m tiger_jax.eval "
         "--gin_file=gin/<dataset>.gin --gin_file=gin/runs/eval.gin --gin.MODEL_DIR=\\\"<model dir>\\\"")


def main(flags) -> None:
  try:
    configured = gin.get_configurable(evaluate)
  except ValueError:
    given = ", ".join(flags.gin_file) if flags.gin_file else "none"
    raise SystemExit(f"tiger_jax.eval: no gin file configures evaluate() (gin files given: {given}); "
                     f"{USAGE}") from None
  try:
    with program_cache_lib.gin_configured_run():
      configured()
  except provenance.ProvenanceError as e:
    log.error("%s", e)
    raise SystemExit(2) from None


def console_main() -> None:
  """`python -m tiger_jax.eval`: t5x's flags, then evaluate() with every argument from gin."""
  from tiger_jax import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.run(main)


if __name__ == "__main__":
  # Delegate to the importable module, whose `evaluate` is the one gin files refer to.
  from tiger_jax import eval as _eval_module  # pylint: disable=import-self
  _eval_module.console_main()
