#!/usr/bin/env bash
# GPU, one call (~6 min): the next training-speed measurements, each with its own baseline, results to $OUT.
#  1. default compile mode: llavakit now folds gradient clipping into fused AdamW (train/fused_clip.py);
#  2. reduce-overhead (CUDA graphs) with TORCH_LOGS=perf_hints, which prints why Inductor skipped a graph if it did.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OUT=${OUT:-/tmp/out} PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
timeout ${T1:-200} python3 -m llavakit.eval.train_bench --out /tmp/tb1 --steps ${STEPS:-30} --warmup 6 --batch 16 \
  --seq 256 > $OUT/log_default.txt 2>&1
grep -v "it/s\]" $OUT/log_default.txt | grep "step\|ratio\|folded\|Error:\|error:" | tail -8
cp /tmp/tb1/train_bench.json $OUT/train_bench_fused_clip.json 2>/dev/null
TORCH_LOGS=perf_hints timeout ${T2:-200} python3 -m llavakit.eval.train_bench --out /tmp/tb2 --only llavakit \
  --steps ${STEPS:-20} --warmup 5 --batch 16 --seq 256 --compile-mode reduce-overhead > $OUT/log_ro.txt 2>&1
grep -i "skipping cudagraphs\|cudagraph\|step\|Error:" $OUT/log_ro.txt | grep -v "it/s\]" | sort | uniq -c | tail -12
cp /tmp/tb2/train_bench.json $OUT/train_bench_ro_hints.json 2>/dev/null; true
