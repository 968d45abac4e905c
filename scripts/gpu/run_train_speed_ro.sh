#!/usr/bin/env bash
# GPU, one short call: baseline vs llavakit with CUDA graphs (torch.compile mode reduce-overhead), results to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OUT=${OUT:-/tmp/out} PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
timeout ${T1:-170} python3 -m llavakit.eval.train_bench --out /tmp/tb --steps ${STEPS:-20} --warmup 5 --batch 16 \
  --seq 256 --compile-mode reduce-overhead > $OUT/log_full.txt 2>&1
grep -v "it/s\]" $OUT/log_full.txt | grep "step\|ratio\|Error:\|error:" | tail -8
cp /tmp/tb/train_bench.json $OUT/train_bench_ro.json 2>/dev/null; true
