#!/usr/bin/env bash
# Table 1 on the GPU box, resumable across device calls (each call is limited to 10 minutes).
#
# Carried in: .whl (gin-config, tensorboardX wheels) and .devcarry/$DATASET/ holding either cache/ (the task
# cache) or embeddings.{npy,json} (then this job first trains the paper-schedule RQ-VAE and builds the cache
# with the numpy backend; DATA_DIR names the dataset, default data/$DATASET) and, when resuming, the previous
# call's model.tgz.* and jaxcache.tgz (unpack them there from $OUT). Trains gin/$DATASET.gin until
# TRAIN_SECONDS, checkpoints on SIGTERM, and once training has stopped evaluates the best-on-validation
# checkpoint on EVAL_SPLITS (default: validation and test; empty: none). Back in $OUT: run_$DATASET.log,
# model.tgz.* (latest + best checkpoint, metrics.jsonl, config.gin, events), jaxcache.tgz (compiled programs;
# JAXCACHE=0 leaves it out), eval_$DATASET.tgz. GIN_FILE (default gin/$DATASET.gin) picks another experiment,
# e.g. a tuned one; two jobs can share a host with CUDA_VISIBLE_DEVICES, their own OUT and MODEL_DIR.
#   DATASET=beauty TRAIN_SECONDS=540 [EVAL_SPLITS=test] [SHIP=best|all|none] bash benchmarks/gpu_table1.sh
set -uo pipefail
D=${DATASET:-beauty}
RUN=${RUN:-.devcarry/$D}
MODEL_DIR=${MODEL_DIR:-/tmp/model_$D}
EVAL_SPLITS=${EVAL_SPLITS-validation test}
mkdir -p "$OUT"
LOG="$OUT/run_$D.log"
[ -d /tmp/site/gin ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jaxcache
{ nvidia-smi -L; git log -1 --format='revision %h %s'; date -u; } 2>&1 | tee "$LOG"
mkdir -p /tmp/jaxcache
[ -f "$RUN/jaxcache.tgz" ] && tar xzf "$RUN/jaxcache.tgz" -C /tmp/jaxcache
ls "$RUN"/model.tgz.* >/dev/null 2>&1 && cat "$RUN"/model.tgz.* | tar xzf - -C "$(dirname "$MODEL_DIR")"
if [ ! -d "$RUN/cache/tiger_$D" ]; then
  start=$SECONDS
  python3 -m tiger_jax.semantic_ids --data_dir="${DATA_DIR:-data/$D}" --work_dir="$RUN" \
      --gin_file="${RQVAE_GIN:-gin/rqvae/paper.gin}" 2>&1 | grep -v "^epoch [0-9]*[1-9]00/" | tee -a "$LOG"
  python3 -m tasks.cache_tasks --tasks="tiger_$D" --data_dir="${DATA_DIR:-data/$D}" --backend=numpy \
      --output_cache_dir="$RUN/cache" --semantic_ids="$RUN/semantic_ids.npz" 2>&1 | tee -a "$LOG"
  echo "semantic IDs + cache: $((SECONDS - start)) s" | tee -a "$LOG"
  tar czf "$OUT/ids_cache_$D.tgz" -C "$RUN" semantic_ids.npz semantic_ids_config.gin cache
fi
GIN=(--gin_file="${GIN_FILE:-gin/$D.gin}" --gin.MODEL_DIR="'$MODEL_DIR'" --gin.TASK_CACHE_DIR="'$RUN/cache'" ${GIN_EXTRA:-})
timeout --preserve-status -s TERM "${TRAIN_SECONDS:-540}" python3 -m tiger_jax.train "${GIN[@]}" \
    --gin.CHECKPOINTS_TO_KEEP=1 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "train exit $rc at $(date -u)" | tee -a "$LOG"
# The best-on-validation checkpoint is evaluated whenever training stopped cleanly (finished: 0; SIGTERM:
# 143), so a last call whose time runs out still reports the best checkpoint so far.
if { [ "$rc" = 0 ] || [ "$rc" = 143 ]; } && [ -n "$EVAL_SPLITS" ]; then
  for split in $EVAL_SPLITS; do
    python3 -m tiger_jax.eval "${GIN[@]}" --gin_file=gin/runs/eval.gin --gin.EVAL_SPLIT="'$split'" 2>&1 \
        | tee -a "$LOG"
  done
  (cd "$MODEL_DIR" && tar czf "$OUT/eval_$D.tgz" eval_* metrics.jsonl config.gin)
fi
# SHIP=all: the model dir for the next call to resume; best: only the best checkpoint (final call); none.
M=$(basename "$MODEL_DIR")
[ "${SHIP:-all}" = best ] && EXCLUDE=--exclude=$M/checkpoints || EXCLUDE=
[ "${SHIP:-all}" = none ] || tar czf - -C "$(dirname "$MODEL_DIR")" $EXCLUDE "$M" | split -b 15M - "$OUT/model.tgz."
[ "${JAXCACHE:-1}" = 0 ] || tar czf "$OUT/jaxcache.tgz" -C /tmp/jaxcache .
ls -la "$OUT" | tee -a "$LOG"
