#!/usr/bin/env bash
# budget v8 = the committed budget (v5) trained further with the word swap on its whole instruct mix: the
# committed adapter continued (`llavakit train --adapter`) on its own base, no align stage. Back-to-back calls on
# one warm H100:
#   SCENES=80000 TEST=1000 bash scripts/gpu/park.sh q1; bash scripts/gpu/park.sh q2   # GGUF parts 1-2 + scenes
#   STEPS=600 bash scripts/gpu/run_budget_v8.sh     # carry .carry/q3 .whl; RESUME=--resume if the timeout hit
# SWAP (default: colours and articles) and SWAP_PROB (0.3) choose the swap; TAG names the work folder, so two
# variants can run on the same parked data. Eval (all 1000 test questions, HF bf16) + parts come back via $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false SAVE_STEPS=${SAVE_STEPS:-100}
W=/root/h6; OUT=${OUT:-/tmp/out}; TAG=${TAG:-v8}; K=$W/$TAG
source scripts/gpu/gguf_parts.sh  # sets G
[ -f $W/data/train.json ] || exit 6
timeout ${TRAIN_TIMEOUT:-480} python3 scripts/gpu/train_defaults.py budget --data $W/data --work $K --gguf $G \
  --continue-adapter llavakit/assets/models/budget/adapter --steps ${STEPS:-600} --batch ${BATCH:-128} \
  --lr ${LR:-1e-4} --workers 15 --swap-words "${SWAP:-red,green,blue,yellow,purple,orange;a,an}" \
  --swap-prob ${SWAP_PROB:-0.3} ${RESUME:-} 2>&1 | grep -v "it/s\]\|Warning\|warn("
I=$K/budget/instruct
[ -f $I/llavakit_train.json ] || { echo "instruct not finished: $(ls $I/checkpoints 2>/dev/null)"; exit 0; }
python3 scripts/gpu/train_defaults.py eval --model $I --data $W/data/test.json --out $K/eval.json --batch 250 2>&1 | grep -v "it/s\]\|Warning"
python3 scripts/gpu/train_defaults.py parts --work $K --out $K/parts 2>&1 | grep -v "it/s\]" | tail -4
cp $I/train_log.csv $I/recipe.json $K/eval.json $K/parts/budget/
tar -C $K/parts -cf $K/budget.tar budget
split -b 15M $K/budget.tar $OUT/$TAG.tar.; ls -la $OUT; echo "total ${SECONDS}s"
