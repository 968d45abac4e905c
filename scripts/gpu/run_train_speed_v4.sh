#!/usr/bin/env bash
# GPU, one call (~4 min): training speed, each run against the baseline of the same call, results to $OUT.
#  1. baseline vs llavakit, torch.compile default mode;
#  2. llavakit under reduce-overhead (CUDA graphs), against run 1's baseline.
# HINTS=1 runs 2 under TORCH_LOGS=perf_hints (prints why Inductor skipped a CUDA graph, if it did); TAG names the
# JSONs. The 2026-12-06 runs: TAG=fused_clip HINTS=1 before the sync-free step, TAG=sync_free after it.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OUT=${OUT:-/tmp/out} PYTHONPATH=$PWD
TAG=${TAG:-sync_free}
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
timeout ${T1:-200} python3 -m llavakit.eval.train_bench --out /tmp/tb1 --steps ${STEPS:-30} --warmup 6 --batch 16 \
  --seq 256 > $OUT/log_default.txt 2>&1
grep -v "it/s\]" $OUT/log_default.txt | grep "step\|ratio\|Error:\|error:" | tail -8
cp /tmp/tb1/train_bench.json $OUT/train_bench_$TAG.json 2>/dev/null
env ${HINTS:+TORCH_LOGS=perf_hints} timeout ${T2:-200} python3 -m llavakit.eval.train_bench --out /tmp/tb2 \
  --only llavakit --steps ${STEPS:-30} --warmup 6 --batch 16 --seq 256 --compile-mode reduce-overhead \
  > $OUT/log_ro.txt 2>&1
grep -i "skipping cudagraphs\|step\|Error:\|error:" $OUT/log_ro.txt | grep -v "it/s\]" | sort | uniq -c | tail -12
cp /tmp/tb2/train_bench.json $OUT/train_bench_${TAG}_ro.json 2>/dev/null; true
