"""ID-based baselines scored by the project's own split and metrics: most-popular and SASRec.

TIGER's numbers mean little without a well-trained ID model beside them on the same users, targets and
metrics code. Everything here needs only numpy, jax, flax, optax, orbax and gin (no TensorFlow or seqio), so
it runs on the GPU machine as it is.

  python -m tiger_jax.baselines.popularity --data_dir=data/beauty --out_dir=/tmp/pop_beauty
  python -m tiger_jax.baselines.sasrec --gin_file=gin/baselines/sasrec_beauty.gin \
      --gin.MODEL_DIR="'/tmp/sasrec_beauty'"
"""
