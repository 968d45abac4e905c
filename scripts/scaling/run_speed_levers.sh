#!/usr/bin/env bash
# GPU: training-speed levers on the bench-1b shape, each against the plain-Trainer baseline in the same run
# (train_bench runs both): default llavakit wiring, + Liger kernels, + Liger without torch.compile. To $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/liger*.whl 2>/dev/null
export PYTHONPATH=$PWD:/tmp/site
F="it/s\]\|Warning\|warn("
M=/tmp/sc/model; [ -f $M/config.json ] || python3 -m llavakit.eval.train_bench --out /tmp/sc --build-only 2>&1 | tail -1
for lever in "--liger" "--liger --no-compile"; do
  name=$(echo "$lever" | tr -d ' -'); echo "=== $lever" | tee -a $OUT/levers.txt
  CUDA_VISIBLE_DEVICES=0 timeout ${T1:-240} python3 -m llavakit.eval.train_bench --model $M --out /tmp/lv/$name \
    --steps ${STEPS:-25} --warmup 5 --batch 16 --seq 256 $lever 2>&1 | grep -v "$F" | tail -4 | tee -a $OUT/levers.txt
  cp /tmp/lv/$name/train_bench.json $OUT/lever-$name.json 2>/dev/null
done; true
