#!/usr/bin/env bash
# GPU: training-speed benchmark (bench-1b shape built on the machine, random weights), results to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=$PWD:/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
timeout ${T1:-330} python3 -m llavakit.eval.train_bench --out /tmp/tb --steps ${STEPS:-25} --warmup 5 --batch 16 --seq 256 2>&1 \
  | grep -v "it/s\]\|Warning\|warn(" | tail -60 | tee $OUT/log.txt
if [ ! -f /tmp/tb/train_bench.json ]; then
  echo "=== retry without torch.compile" | tee -a $OUT/log.txt
  timeout 150 python3 -m llavakit.eval.train_bench --out /tmp/tb --steps 20 --warmup 4 --batch 16 --seq 256 --no-compile 2>&1 \
    | grep -v "it/s\]\|Warning\|warn(" | tail -40 | tee -a $OUT/log.txt
fi
cp /tmp/tb/train_bench.json $OUT/ 2>/dev/null; true
