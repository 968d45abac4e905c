#!/usr/bin/env bash
# nano, third recipe (one GPU call, ~8 min): continue nano v2 (carried as .carry/nano3/nano.tar, its pretrained
# tower as .carry/nano3/vision.tar, frozen) on twice the scenes (160k: the v2 80k plus 80k new; the test split
# is the same, scenes are seeded per split and index) at half the learning rate. Eval on the GPU; parts to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
W=/root/h5; mkdir -p $W/init; OUT=${OUT:-/tmp/out}
tar -C $W -xf .carry/nano3/vision.tar && tar -C $W/init -xf .carry/nano3/nano.tar || exit 3
time python3 -m llavakit.cli data shapes --out $W/data --train ${NTRAIN:-160000} --val 200 --test 1000 --seed 0 \
  --workers 16 --force > /dev/null || exit 4
timeout ${TRAIN_TIMEOUT:-360} python3 scripts/gpu/train_defaults.py nano --data $W/data --work $W/work \
  --steps ${STEPS:-6000} --batch 128 --lr ${LR:-5e-4} --workers 15 --seed ${SEED:-3} --init $W/init/nano \
  --freeze-vision 2>&1 | grep -v "it/s\]\|Warning\|warn(" | tail -5
M=$W/work/nano/model
bash scripts/gpu/take_last_checkpoint.sh $M $W/init/nano  # cut by the timeout?
python3 scripts/gpu/train_defaults.py eval --model $M --data $W/data/test.json --out $W/nano_eval.json --batch 250 2>&1 | grep -v "it/s\]\|Warning" | tail -3
python3 scripts/gpu/train_defaults.py parts --work $W/work --out $W/parts 2>&1 | grep -v "it/s\]" | tail -3
cp $M/train_log.csv $W/nano_eval.json $W/parts/nano/
tar -C $W/parts -cf $OUT/nano.tar nano; ls -la $OUT; echo "total ${SECONDS}s"
