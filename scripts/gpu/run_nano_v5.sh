#!/usr/bin/env bash
# nano, fifth recipe (one GPU call, ~9 min): continue the COMMITTED nano (llavakit/assets/models/nano, v3; its
# tower frozen) on twice v3's scenes (320k: v3's 160k plus 160k new; scenes are seeded per split and index, so the
# test split is unchanged) at half v3's learning rate: "more scenes at the v3 setting", the lever v2 -> v3 showed.
# Eval on the GPU; parts come back in $OUT (nano.tar, < 16 MiB).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
W=/root/h7; mkdir -p $W/init; OUT=${OUT:-/tmp/out}
cp -r llavakit/assets/models/nano $W/init/nano || exit 3
time python3 -m llavakit.cli data shapes --out $W/data --train ${NTRAIN:-320000} --val 200 --test 1000 --seed 0 \
  --workers 16 --force > /dev/null || exit 4
timeout ${TRAIN_TIMEOUT:-300} python3 scripts/gpu/train_defaults.py nano --data $W/data --work $W/work \
  --steps ${STEPS:-4500} --batch 128 --lr ${LR:-2.5e-4} --workers 15 --seed ${SEED:-5} --init $W/init/nano \
  --freeze-vision 2>&1 | grep -v "it/s\]\|Warning\|warn(" | tail -5
M=$W/work/nano/model
bash scripts/gpu/take_last_checkpoint.sh $M $W/init/nano  # cut by the timeout?
python3 scripts/gpu/train_defaults.py eval --model $M --data $W/data/test.json --out $W/nano_eval.json --batch 250 2>&1 | grep -v "it/s\]\|Warning" | tail -3
python3 scripts/gpu/train_defaults.py parts --work $W/work --out $W/parts 2>&1 | grep -v "it/s\]" | tail -3
cp $M/train_log.csv $W/nano_eval.json $W/parts/nano/
tar -C $W/parts -cf $OUT/nano.tar nano; ls -la $OUT; echo "total ${SECONDS}s"
