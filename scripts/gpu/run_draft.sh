#!/usr/bin/env bash
# Speculative draft for budget (one GPU call, ~8 min), right after two short calls on the same warm machine:
# `SCENES=6000 bash scripts/gpu/park.sh q1` then `bash scripts/gpu/park.sh q2` (GGUF parts 1-2 and the scenes);
# this call carries .carry/q3 and .whl. Distils budget's greedy answers into two small
# drafts (scripts/gpu/train_draft.py); they come back through $OUT in 15 MB pieces (the $OUT file limit).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
W=/root/h6; OUT=${OUT:-/tmp/out}
source scripts/gpu/gguf_parts.sh  # sets G
# PARTS=DIR: distil against budget parts trained earlier on this machine (run_budget_v3.sh's $W/parts/budget),
# not the committed ones — a draft only helps the budget version it was distilled from.
if [ -n "${PARTS:-}" ]; then
  cp $PARTS/adapter/* llavakit/assets/models/budget/adapter/ && cp $PARTS/new_token_rows.safetensors llavakit/assets/models/budget/ || exit 5
  md5sum llavakit/assets/models/budget/adapter/*
fi
timeout ${TRAIN_TIMEOUT:-450} python3 scripts/gpu/train_draft.py --gguf $G \
  --data $W/data --work $W/draft --out $W/draft_out ${DRAFT_ARGS:-} 2>&1 | grep -v "Warning\|warn("
cp $W/draft_out/draft_report.json $OUT/ 2>/dev/null
tar -C $W/draft_out -cf - $(cd $W/draft_out && ls -d draft-*) | split -b 15M - $OUT/drafts.tar.part-
ls -la $OUT; echo "total ${SECONDS}s"
