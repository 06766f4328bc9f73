#!/usr/bin/env bash
# Table 1 on the GPU box, resumable across device calls (each call is limited to 10 minutes).
#
# Carried in: .whl (gin-config, tensorboardX wheels) and .devcarry/$DATASET/ holding cache/ (the task cache
# made on the CPU side by tasks.cache_tasks with the paper-schedule Semantic IDs) and, when resuming, the
# previous call's model.tgz.* and jaxcache.tgz (unpack them there from $OUT). Trains gin/$DATASET.gin until
# TRAIN_SECONDS, checkpoints on SIGTERM, and once training has finished evaluates the best-on-validation
# checkpoint on the validation and test splits. Back in $OUT: run_$DATASET.log, model.tgz.* (latest + best
# checkpoint, metrics.jsonl, config.gin, events), jaxcache.tgz (compiled programs), eval_$DATASET.tgz.
#   DATASET=beauty TRAIN_SECONDS=540 [EVAL_SPLITS=test] [SHIP=best] bash benchmarks/gpu_table1.sh
set -uo pipefail
D=${DATASET:-beauty}
RUN=.devcarry/$D
MODEL_DIR=/tmp/model_$D
LOG="$OUT/run_$D.log"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jaxcache
{ nvidia-smi -L; git log -1 --format='revision %h %s'; date -u; } 2>&1 | tee "$LOG"
mkdir -p /tmp/jaxcache
[ -f "$RUN/jaxcache.tgz" ] && tar xzf "$RUN/jaxcache.tgz" -C /tmp/jaxcache
ls "$RUN"/model.tgz.* >/dev/null 2>&1 && cat "$RUN"/model.tgz.* | tar xzf - -C /tmp
GIN=(--gin_file="gin/$D.gin" --gin.MODEL_DIR="'$MODEL_DIR'" --gin.TASK_CACHE_DIR="'$RUN/cache'" ${GIN_EXTRA:-})
timeout --preserve-status -s TERM "${TRAIN_SECONDS:-540}" python3 -m tiger_jax.train "${GIN[@]}" \
    --gin.CHECKPOINTS_TO_KEEP=1 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "train exit $rc at $(date -u)" | tee -a "$LOG"
# The best-on-validation checkpoint is evaluated whenever training stopped cleanly (finished: 0; SIGTERM:
# 143), so a last call whose time runs out still reports the best checkpoint so far.
if [ "$rc" = 0 ] || [ "$rc" = 143 ]; then
  for split in ${EVAL_SPLITS:-validation test}; do
    python3 -m tiger_jax.eval "${GIN[@]}" --gin_file=gin/runs/eval.gin --gin.EVAL_SPLIT="'$split'" 2>&1 \
        | tee -a "$LOG"
  done
  (cd "$MODEL_DIR" && tar czf "$OUT/eval_$D.tgz" eval_* metrics.jsonl config.gin)
fi
# SHIP=all: the model dir for the next call to resume; best: only the best checkpoint (final call).
[ "${SHIP:-all}" = best ] && EXCLUDE=--exclude=model_$D/checkpoints || EXCLUDE=
tar czf - -C /tmp $EXCLUDE "model_$D" | split -b 15M - "$OUT/model.tgz."
tar czf "$OUT/jaxcache.tgz" -C /tmp/jaxcache .
ls -la "$OUT" | tee -a "$LOG"
