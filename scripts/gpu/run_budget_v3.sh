#!/usr/bin/env bash
# budget, third recipe: v2 with 2x the instruct steps (1800), over two back-to-back calls on one warm machine.
#   SCENES=80000 bash scripts/gpu/park.sh q1; bash scripts/gpu/park.sh q2      # GGUF parts 1-2 + the scenes
#   bash scripts/gpu/run_budget_v3.sh             # carry .carry/q3 .whl: align 300 + instruct until the timeout
#   RESUME=--resume bash scripts/gpu/run_budget_v3.sh   # same machine: instruct resumes from its last checkpoint
# The tower is the committed one (llavakit/assets/models/budget/vision), frozen. Parts + eval come back via $OUT
# once instruct has finished. budget v4 = the same script with SCENES=160000 (park), STEPS=2400 BATCH=128 and a
# third RESUME call. SWAP="red,green,blue,yellow,purple,orange;a,an" (SWAP_PROB, default 0.3) turns on the word swap
# for instruct (llavakit/data/word_swap.py; budget v8's lever against the held-out caption prior).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false SAVE_STEPS=${SAVE_STEPS:-200}
W=/root/h6; OUT=${OUT:-/tmp/out}
source scripts/gpu/gguf_parts.sh  # sets G
[ -f $W/data/train.json ] || exit 6
timeout ${TRAIN_TIMEOUT:-470} python3 scripts/gpu/train_defaults.py budget --data $W/data --work $W/work \
  --vision ${VISION:-llavakit/assets/models/budget/vision} --freeze-vision --gguf $G --align-steps 300 --align-lr 1e-3 \
  --steps ${STEPS:-1800} --batch ${BATCH:-64} --lr ${LR:-2e-4} --lora-r 16 --workers 15 ${SWAP:+--swap-words "$SWAP" --swap-prob ${SWAP_PROB:-0.3}} ${RESUME:-} 2>&1 | grep -v "it/s\]\|Warning\|warn("
I=$W/work/budget/instruct
[ -f $I/llavakit_train.json ] || { echo "instruct not finished: $(ls $I/checkpoints 2>/dev/null)"; exit 0; }
python3 scripts/gpu/train_defaults.py eval --model $I --data $W/data/test.json --out $W/budget_eval.json --batch 250 2>&1 | grep -v "it/s\]\|Warning"
python3 scripts/gpu/train_defaults.py parts --work $W/work --out $W/parts 2>&1 | grep -v "it/s\]" | tail -4
mkdir -p $W/parts/budget; cp $I/train_log.csv $W/parts/budget/instruct_log.csv; cp $W/work/budget/align/train_log.csv $W/parts/budget/align_log.csv
cp $W/budget_eval.json $W/work/budget/text_only.json $W/parts/budget/
tar -C $W/parts -cf $W/budget.tar budget
split -b 15M $W/budget.tar $OUT/budget.tar.; ls -la $OUT;  # $OUT files: 16 MiB at most echo "total ${SECONDS}s"
