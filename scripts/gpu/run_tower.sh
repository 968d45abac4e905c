#!/usr/bin/env bash
# budget's tower, second version (one GPU call, ~8.5 min): a larger ViT (6 layers, hidden 256; nano's is 4 x 192)
# pretrained longer on more scenes (llavakit.train.vision_pretrain). While it trains, the CPU renders budget's QA
# data and GGUF part 1 is parked, so the budget call (run_budget_v3.sh with VISION=/root/h6/vision) follows at once:
#   SCENES=160000 TEST=1000 bash scripts/gpu/run_tower.sh      # carry .carry/q1 .whl
#   bash scripts/gpu/park.sh q2                                  # carry .carry/q2
#   VISION=/root/h6/vision STEPS=1600 BATCH=128 TRAIN_TIMEOUT=540 bash scripts/gpu/run_budget_v3.sh   # .carry/q3
# The tower comes back through $OUT in 15 MB parts (vision.tar.aa, .ab; inside, vision_pretrain.json holds the
# held-out head accuracies).
# Reading beyond one font and 60 words (tower v3, planned): carry a fonts folder (e.g. .carry/fonts with the
# Liberation Sans / Serif / Mono .ttf files; keep DejaVu out, the robustness probe draws with it) and run
#   FONTS=.carry/fonts RANDOM_WORDS=0.4 SCENES=160000 TEST=1000 bash scripts/gpu/run_tower.sh
# so that the tower's letter head and budget's QA data both see other fonts and made-up words.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
W=/root/h6; mkdir -p $W; OUT=${OUT:-/tmp/out}
cp .carry/q1/* $W/ 2>/dev/null
VSHAPE=${VSHAPE:-'{"hidden": 256, "layers": 6, "heads": 8, "intermediate": 1024}'}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 scripts/gpu/train_defaults.py vision --work $W/work --out $W/vision --scenes ${VSCENES:-200000} \
  --steps ${VSTEPS:-14000} --batch ${VBATCH:-256} --lr ${VLR:-1e-3} --workers 16 \
  --shape "$VSHAPE" ${FONTS:+--fonts $FONTS} --random-words ${RANDOM_WORDS:-0} > $W/vision_log.txt 2>&1 &
VPID=$!
until grep -q "rendered" $W/vision_log.txt 2>/dev/null || ! kill -0 $VPID 2>/dev/null; do sleep 2; done
echo "[$(date +%T)] tower scenes rendered (${SECONDS}s); QA data next, while the tower trains"
if [ -n "${SCENES:-}" ] && [ ! -f $W/data/dataset.json ]; then
  python3 -m llavakit.cli data shapes --out $W/data --train $SCENES --val 10 --test ${TEST:-10} --seed 0 \
    ${FONTS:+--fonts $FONTS} --random-words ${RANDOM_WORDS:-0} \
    --workers 14 --force > /dev/null && echo "[$(date +%T)] QA data done (${SECONDS}s)"
fi
wait $VPID; grep -v "it/s\]\|Warning\|warn(" $W/vision_log.txt | grep -v '^{' | tail -4
grep '^{' $W/vision_log.txt | awk 'NR % 20 == 0' | tail -8
[ -f $W/vision/config.json ] || exit 5
cp $W/vision_log.txt $W/vision/; tar -C $W -cf $W/vision.tar vision $(cd $W && ls vision_heads.safetensors 2>/dev/null)
# $OUT takes files of at most 16 MiB: the fp32 tower (~20 MB) comes back in parts (cat vision.tar.* > vision.tar)
split -b 15M $W/vision.tar $OUT/vision.tar.; ls -la $OUT $W; echo "total ${SECONDS}s"
