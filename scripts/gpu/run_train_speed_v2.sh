#!/usr/bin/env bash
# GPU: training-speed benchmark after the graph-break fix (train/compile_ready.py), results to $OUT.
# 1) baseline vs llavakit (default torch.compile), window timing; 2) llavakit with CUDA graphs
# (reduce-overhead) on the same model, SDPA restricted to flash (cuDNN's may not capture); 3) the same
# with cuDNN SDPA, full log kept (why a capture fails).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OUT=${OUT:-/tmp/out}
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a $OUT/gpu.txt
B="python3 -m llavakit.eval.train_bench --steps ${STEPS:-30} --warmup 6 --batch 16 --seq 256"
filter() { grep -v "it/s\]\|Warning\|warn(" | tail -${1:-40}; }
timeout ${T1:-240} $B --out /tmp/tb 2>&1 | filter | tee $OUT/log_default.txt
cp /tmp/tb/train_bench.json $OUT/train_bench_default.json 2>/dev/null
timeout ${T2:-150} $B --out /tmp/tb_ro --only llavakit --model /tmp/tb/model --compile-mode reduce-overhead \
  --sdpa-backend flash > $OUT/log_ro_flash_full.txt 2>&1
tail -3 $OUT/log_ro_flash_full.txt
cp /tmp/tb_ro/train_bench.json $OUT/train_bench_ro_flash.json 2>/dev/null
timeout ${T3:-150} $B --out /tmp/tb_ro2 --only llavakit --model /tmp/tb/model --compile-mode reduce-overhead \
  > $OUT/log_ro_cudnn_full.txt 2>&1
tail -3 $OUT/log_ro_cudnn_full.txt
cp /tmp/tb_ro2/train_bench.json $OUT/train_bench_ro_cudnn.json 2>/dev/null; true
