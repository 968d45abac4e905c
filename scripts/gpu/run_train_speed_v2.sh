#!/usr/bin/env bash
# GPU: training-speed benchmark after the graph-break fix (train/compile_ready.py), results to $OUT.
# 1) baseline vs llavakit (default torch.compile), window timing; 2) llavakit with CUDA graphs
# (reduce-overhead) on the same model; 3) a profile of llavakit's default, if time is left.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OUT=${OUT:-/tmp/out}
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a $OUT/gpu.txt
B="python3 -m llavakit.eval.train_bench --steps ${STEPS:-30} --warmup 6 --batch 16 --seq 256"
filter() { grep -v "it/s\]\|Warning\|warn(" | tail -${1:-40}; }
timeout ${T1:-280} $B --out /tmp/tb 2>&1 | filter | tee $OUT/log_default.txt
cp /tmp/tb/train_bench.json $OUT/train_bench_default.json 2>/dev/null
timeout ${T2:-200} $B --out /tmp/tb_ro --only llavakit --model /tmp/tb/model --compile-mode reduce-overhead 2>&1 \
  | filter 60 | tee $OUT/log_reduce_overhead.txt
cp /tmp/tb_ro/train_bench.json $OUT/train_bench_reduce_overhead.json 2>/dev/null
timeout ${T3:-90} $B --out /tmp/tb_prof --only llavakit --model /tmp/tb/model --profile 3 2>&1 | filter 20 \
  | tee $OUT/log_profile.txt
cp /tmp/tb_prof/profile.txt $OUT/profile.txt 2>/dev/null; true
