#!/usr/bin/env bash
# One device call (H100/H200 box, <10 min): the paper's RQ-VAE schedule on Beauty, then a per-kernel
# profile of the training step. Needs .whl (gin-config) and .devcarry/beauty/embeddings.{npy,json}
# carried; results land in $OUT:
#   rqvae_paper.log, rqvae_paper.tgz (semantic_ids.npz + config), profile.log, profile_step*.json, hlo.tgz
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/gin_config-*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/device.txt"
WB=/tmp/work_beauty; mkdir -p "$WB"; cp .devcarry/beauty/embeddings.* "$WB/"
start=$SECONDS
timeout "${RQ_TIMEOUT:-240}" python3 -m tiger_jax.semantic_ids --data_dir=data/beauty --work_dir="$WB" \
    --gin_file=gin/rqvae/paper.gin 2>&1 | tee "$OUT/rqvae_paper.log"
echo "rqvae wall $((SECONDS-start))s rc=$?" | tee -a "$OUT/rqvae_paper.log"
tar czf "$OUT/rqvae_paper.tgz" -C "$WB" --exclude='embeddings.*' .
timeout "${PROFILE_TIMEOUT:-300}" python3 benchmarks/profile_step.py --out_dir /tmp/prof --dump_hlo \
    --variants "${VARIANTS:-bf16,bf16_onehot,bf16_onehot_rbg}" --lengths 81,17 2>&1 | tee "$OUT/profile.log"
cp /tmp/prof/*.json "$OUT/"; tar czf "$OUT/hlo.tgz" -C /tmp/prof --wildcards 'hlo_*'
if [ -n "${XLA_PROBE:-}" ]; then
  XLA_FLAGS="$XLA_PROBE" timeout 120 python3 benchmarks/profile_step.py --out_dir "$OUT" --tag xla \
      --variants bf16_onehot_rbg --lengths 81 2>&1 | tee -a "$OUT/profile.log"
fi
