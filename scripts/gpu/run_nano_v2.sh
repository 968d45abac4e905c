#!/usr/bin/env bash
# nano, second recipe (one GPU call, ~9.5 min): (1) nano's ViT pretrained on scene labels
# (llavakit.train.vision_pretrain: per-patch colour/shape/text, per-scene word/counts) while the CPU
# generates the shapes-world QA data, (2) nano = that tower (frozen) + a fresh projector + tiny Llama
# trained through llavakit.train, (3) GPU eval. Everything is parked in /root/h4 for a following call;
# the tower and nano come back through $OUT (vision.tar, nano.tar).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
W=/root/h4; mkdir -p $W; OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
[ -f .carry/p1/gguf.part1 ] && cp .carry/p1/gguf.part1 $W/
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
NTRAIN=${NTRAIN:-80000}; STEPS=${STEPS:-4000}; BUDGET_S=${BUDGET_S:-570}
if [ ! -f $W/vision/config.json ]; then
  python3 scripts/gpu/train_defaults.py vision --work $W/work --out $W/vision --scenes ${VSCENES:-120000} \
    --steps ${VSTEPS:-4000} --batch ${VBATCH:-256} --lr ${VLR:-1e-3} --workers 16 > $W/vision_log.txt 2>&1 &
  VPID=$!
  until grep -q "rendered" $W/vision_log.txt 2>/dev/null || ! kill -0 $VPID 2>/dev/null; do sleep 2; done
  echo "[$(date +%T)] vision scenes rendered (${SECONDS}s); QA data next, while the tower trains"
fi
if [ ! -f $W/data/dataset.json ]; then
  python3 -m llavakit.cli data shapes --out $W/data --train $NTRAIN --val 200 --test 1000 --seed 0 --workers 14 --force > /dev/null
  echo "[$(date +%T)] QA data done (${SECONDS}s)"
fi
[ -n "${VPID:-}" ] && wait $VPID; grep -v "it/s\]\|Warning\|warn(" $W/vision_log.txt | tail -8
[ -f $W/vision/config.json ] || exit 5
tar -C $W -cf $OUT/vision.tar vision
T=$((BUDGET_S - SECONDS - 60)); echo "[$(date +%T)] nano: $STEPS steps, ${T}s allowed"
timeout $T python3 scripts/gpu/train_defaults.py nano --data $W/data --work $W/work --steps $STEPS --batch 128 \
  --lr ${LR:-1e-3} --workers 15 --seed ${SEED:-0} --vision $W/vision --freeze-vision 2>&1 | grep -v "it/s\]\|Warning\|warn("
M=$W/work/nano/model
bash scripts/gpu/take_last_checkpoint.sh $M $W/work/nano/base  # cut by the timeout?
python3 scripts/gpu/train_defaults.py eval --model $M --data $W/data/test.json --out $W/nano_eval.json --batch 250 2>&1 | grep -v "it/s\]\|Warning"
python3 scripts/gpu/train_defaults.py parts --work $W/work --out $W/parts 2>&1 | grep -v "it/s\]" | tail -3
cp $M/train_log.csv $W/nano_eval.json $W/vision_log.txt $W/parts/nano/
tar -C $W/parts -cf $OUT/nano.tar nano; ls -la $OUT; echo "total ${SECONDS}s"
