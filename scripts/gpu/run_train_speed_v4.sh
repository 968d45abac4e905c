#!/usr/bin/env bash
# GPU, one call (~4 min): training speed with the sync-free step (train/sync_free.py: the loss filter on the
# device, non-blocking batch copies) on top of the fused clip. Each run with the baseline of the same call.
#  1. baseline vs llavakit, torch.compile default mode;
#  2. llavakit under reduce-overhead (CUDA graphs), against run 1's baseline.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OUT=${OUT:-/tmp/out} PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
timeout ${T1:-200} python3 -m llavakit.eval.train_bench --out /tmp/tb1 --steps ${STEPS:-30} --warmup 6 --batch 16 \
  --seq 256 > $OUT/log_default.txt 2>&1
grep -v "it/s\]" $OUT/log_default.txt | grep "step\|ratio\|Error:\|error:" | tail -8
cp /tmp/tb1/train_bench.json $OUT/train_bench_sync_free.json 2>/dev/null
timeout ${T2:-200} python3 -m llavakit.eval.train_bench --out /tmp/tb2 --only llavakit \
  --steps ${STEPS:-30} --warmup 6 --batch 16 --seq 256 --compile-mode reduce-overhead > $OUT/log_ro.txt 2>&1
grep -v "it/s\]" $OUT/log_ro.txt | grep "step\|Error:\|error:" | tail -4
cp /tmp/tb2/train_bench.json $OUT/train_bench_sync_free_ro.json 2>/dev/null; true
