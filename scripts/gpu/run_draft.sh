#!/usr/bin/env bash
# Speculative draft for budget (one GPU call, ~8 min), right after run_nano_v4.sh on the same warm machine
# (SCENES=6000 bash scripts/gpu/park.sh q1, then bash scripts/gpu/park.sh q2, parked GGUF parts 1-2 and scenes). Distils budget's greedy answers into two small
# drafts (scripts/gpu/train_draft.py); they come back through $OUT in 15 MB pieces (the $OUT file limit).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
W=/root/h6; OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/gguf-*.whl && export PYTHONPATH=$PWD:/tmp/site
cat $W/gguf.part1 $W/gguf.part2 .carry/q3/gguf.part3 > $W/SmolLM2-135M-Instruct.Q4_1.gguf || exit 3
echo "a1231443440b107ff29f02bdb38c9d0a  $W/SmolLM2-135M-Instruct.Q4_1.gguf" | md5sum -c - || exit 4
timeout ${TRAIN_TIMEOUT:-450} python3 scripts/gpu/train_draft.py --gguf $W/SmolLM2-135M-Instruct.Q4_1.gguf \
  --data $W/data --work $W/draft --out $W/draft_out ${DRAFT_ARGS:-} 2>&1 | grep -v "Warning\|warn("
cp $W/draft_out/draft_report.json $OUT/
tar -C $W/draft_out -cf - $(cd $W/draft_out && ls -d draft-*) | split -b 15M - $OUT/drafts.tar.part-
ls -la $OUT; echo "total ${SECONDS}s"
