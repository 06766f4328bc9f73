#!/usr/bin/env bash
# Cold start of training on the bundled Beauty (CPU), before (5051bad) and after (0186a47): first validation and wall.
set -u
PY=/work/main/.venv/bin/python
for rep in 1 2; do for arm in new old; do
  R=/tmp/m2/$arm; W=/tmp/m2/run_${arm}_$rep; rm -rf $W; mkdir -p $W; cd $R
  export PYTHONPATH=$R HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=3
  $PY -c "import tiger_jax; print(tiger_jax.__file__)" > $W/which.txt
  /usr/bin/time -f "train wall %e s" $PY -m tiger_jax.train --gin_file=gin/beauty_quick.gin --gin.MODEL_DIR="'$W/model'" \
    --gin.TASK_CACHE_DIR="'/tmp/m/cache'" --compilation_cache_dir=$W/xla --gin.TRAIN_STEPS=100 --gin.EVAL_PERIOD=100 \
    --gin.EVAL_STEPS=8 > $W/train.log 2>&1
  echo "$arm $rep: $(cat $W/which.txt) | $(grep -o 'compiled the validation.s programs beside the training loops in [0-9.]*s' $W/train.log) | loops $(grep -o 'loop for encoder length [0-9]* in [0-9.]*s' $W/train.log | awk '{print $NF}' | tr '\n' ' ')| $(grep -o 'eval at step 100 ([0-9.]*s)' $W/train.log) | $(grep -o 'validation/ndcg@10 [0-9.]*' $W/train.log) | $(tail -1 $W/train.log)"
done; done
