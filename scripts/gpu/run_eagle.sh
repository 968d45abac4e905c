#!/usr/bin/env bash
# Feature-level (EAGLE-style) draft for budget (one GPU call, ~6 min), right after two short calls on the
# same warm machine: `SCENES=6000 bash scripts/gpu/park.sh q1` then `bash scripts/gpu/park.sh q2`; this call
# carries .carry/q3 and .whl. scripts/gpu/train_eagle.py trains the heads; they come back through $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
W=/root/h6; OUT=${OUT:-/tmp/out}
source scripts/gpu/gguf_parts.sh  # sets G
timeout ${TRAIN_TIMEOUT:-450} python3 scripts/gpu/train_eagle.py --gguf $G \
  --data $W/data --work $W/eagle --out $W/eagle_out ${EAGLE_ARGS:-} 2>&1 | grep -v "Warning\|warn("
cp $W/eagle_out/eagle_report.json $OUT/ 2>/dev/null  # written after each draft
tar -C $W/eagle_out -cf - $(cd $W/eagle_out && ls -d eagle-*) | split -b 15M - $OUT/eagle.tar.part-
ls -la $OUT; echo "total ${SECONDS}s"
