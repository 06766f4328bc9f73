#!/usr/bin/env bash
# One device call of benchmarks/gpu_jobs.py: stage the carried files, start the plan detached, collect into $OUT.
#
#   bash benchmarks/gpu_call.sh PLAN REVISION WAIT_S [--ship_models=a,b] [--ship_cache]
#
# Carried in: .whl (gin-config and tensorboardX wheels) and .devcarry (what the plan's datasets read, copied to
# /tmp/gpu_jobs/devcarry; .devcarry/jaxcache.tgz.* from an earlier call's --ship_cache is unpacked into the
# compilation cache). CONCURRENCY (default 2) and MEM_FRACTION (0.3) go to the runner. Everything the plan must
# deliver has to finish within WAIT_S: the machine is handed back soon after the call returns. A machine still
# warm from an earlier call keeps that call's /tmp/gpu_jobs; it is cleared first (on 2026-11-29 a stale
# devcarry/ there swallowed the new copy and a whole call found none of its datasets).
set -uo pipefail
PLAN=$1 REV=$2 WAIT=$3
shift 3
ROOT=/tmp/gpu_jobs
if pgrep -f "gpu_jobs.py --plan" >/dev/null; then
  echo "a runner of an earlier call is still running here; collect it: python3 benchmarks/gpu_jobs.py --collect=\$OUT"
  exit 1
fi
# The compilation cache stays: it only helps.
rm -rf "$ROOT/devcarry" "$ROOT/results" "$ROOT/models"
mkdir -p "$ROOT/jaxcache" "$OUT"
cp -r .devcarry "$ROOT/devcarry"
if ls .devcarry/jaxcache.tgz.* >/dev/null 2>&1; then
  cat .devcarry/jaxcache.tgz.* | tar xzf - -C "$ROOT"
  echo "compilation cache: $(ls "$ROOT/jaxcache" | wc -l) entries"
else
  # Measured on the H200 (2026-12-03/04): the training loops compiled in 10-13 s from a carried cache and in
  # 146-158 s with three jobs compiling side by side without one.
  echo "no compilation cache carried (.devcarry/jaxcache.tgz.*): each job compiles from scratch;" \
       "pass --ship_cache to bring this call's back"
fi
[ -d /tmp/site/gin ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    || exit 1
(setsid nohup python3 benchmarks/gpu_jobs.py --plan="$PLAN" --revision="$REV" --concurrency="${CONCURRENCY:-2}" \
    --mem_fraction="${MEM_FRACTION:-0.3}" > "$ROOT/runner.out" 2>&1 < /dev/null &)
sleep 2
python3 benchmarks/gpu_jobs.py --collect="$OUT" --wait="$WAIT" "$@"
cp "$ROOT/runner.out" "$OUT/"
