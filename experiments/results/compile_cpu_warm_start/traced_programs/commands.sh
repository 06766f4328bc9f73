cd REPO
X=/tmp/warm_xla; rm -rf $X /tmp/warm_runs; mkdir -p /tmp/warm_runs
run() { TIGER_COMPILATION_CACHE_DIR=$X .venv/bin/python -m tiger_jax.train --gin_file=gin/beauty.gin \
  --gin.MODEL_DIR="'/tmp/warm_runs/$1'" --gin.TASK_CACHE_DIR="'CACHE'" \
  --gin.TRAIN_STEPS=4 --gin.STEPS_PER_DISPATCH=2 --gin.EVAL_PERIOD=4 --gin.EVAL_STEPS=1 \
  --gin.train_script.train.eval_metric_fns="[@train_script.validation_loss]" > /tmp/warm_runs/$1.log 2>&1
  echo "$1 rc=$?"; grep "compiled the\|trained steps" /tmp/warm_runs/$1.log | cut -c1-200; }
run cold
run warm
rm -rf $X/tiger_jax_traced
run xla_only
run warm2
