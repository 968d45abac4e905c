#!/usr/bin/env bash
# nano, fourth recipe (one GPU call, ~9 min): continue the committed nano (v3, llavakit/assets/models/nano) on
# 160k scenes with the tower UNFROZEN for a last low-lr phase (spatial and caption were its weak families).
# Also parks GGUF part 1 (.carry/q1) and the scenes for run_draft.sh, the next call on the same warm machine.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
W=/root/h6; mkdir -p $W; OUT=${OUT:-/tmp/out}
cp .carry/q1/gguf.part1 $W/gguf.part1 || exit 2  # GGUF part 1 of 3: the tree plus a part must fit 64 MiB
time python3 -m llavakit.cli data shapes --out $W/data --train ${NTRAIN:-160000} --val 200 --test 1000 --seed 0 \
  --workers 16 --force > /dev/null || exit 4
timeout ${TRAIN_TIMEOUT:-330} python3 scripts/gpu/train_defaults.py nano --data $W/data --work $W/work \
  --steps ${STEPS:-4500} --batch 128 --lr ${LR:-2e-4} --workers 15 --seed ${SEED:-4} \
  --init llavakit/assets/models/nano 2>&1 | grep -v "it/s\]\|Warning\|warn(" | tail -5
M=$W/work/nano/model
bash scripts/gpu/take_last_checkpoint.sh $M llavakit/assets/models/nano  # cut by the timeout?
python3 scripts/gpu/train_defaults.py eval --model $M --data $W/data/test.json --out $W/nano_eval.json --batch 250 2>&1 | grep -v "it/s\]\|Warning" | tail -3
python3 scripts/gpu/train_defaults.py parts --work $W/work --out $W/parts 2>&1 | grep -v "it/s\]" | tail -3
cp $M/train_log.csv $W/nano_eval.json $W/parts/nano/
tar -C $W/parts -cf $OUT/nano.tar nano; ls -la $OUT; echo "total ${SECONDS}s"
