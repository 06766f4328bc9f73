#!/usr/bin/env bash
# Cold start of a train-then-eval on the bundled Beauty (CPU), before (ad61d23) and after (e2f1844).
set -u
PY=/work/main/.venv/bin/python
for rep in 1 2; do for arm in old new; do
  R=/tmp/m/$arm; W=/tmp/m/run_${arm}_$rep; rm -rf $W; mkdir -p $W; cd $R
  export PYTHONPATH=$R HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=3
  $PY -c "import tiger_jax; print(tiger_jax.__file__)" > $W/which.txt
  /usr/bin/time -f "train wall %e s" $PY -m tiger_jax.train --gin_file=gin/beauty_quick.gin --gin.MODEL_DIR="'$W/model'" \
    --gin.TASK_CACHE_DIR="'/tmp/m/cache'" --compilation_cache_dir=$W/xla --gin.TRAIN_STEPS=100 --gin.EVAL_PERIOD=100 \
    --gin.EVAL_STEPS=8 > $W/train.log 2>&1
  JAX_LOG_COMPILES=1 /usr/bin/time -f "eval wall %e s" $PY -m tiger_jax.eval --gin_file=gin/beauty_quick.gin \
    --gin_file=gin/runs/eval.gin --gin.MODEL_DIR="'$W/model'" --gin.TASK_CACHE_DIR="'/tmp/m/cache'" \
    --compilation_cache_dir=$W/xla --gin.eval_script.evaluate.max_examples=512 --gin.EVAL_OUTPUT_DIR="'$W/eval'" > $W/eval.log 2>&1
  echo "$arm $rep: $(cat $W/which.txt) | $(grep -o 'eval at step 100 ([0-9.]*s)' $W/train.log) | $(tail -1 $W/train.log) | $(tail -1 $W/eval.log) | hits $(grep -c "cache hit for 'jit_call'" $W/eval.log) misses $(grep -c "CACHE MISS for 'jit_call'" $W/eval.log)"
done; done
