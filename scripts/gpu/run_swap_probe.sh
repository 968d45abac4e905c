#!/usr/bin/env bash
# The word-swap probe (scripts/gpu/swap_probe.py): budget v5 + 200 caption-only LoRA steps with the swap, both
# scored on the same 1000 test captions. Three back-to-back calls on one warm H100 (~4.5 min of device time):
#   SCENES=20000 TEST=1000 FAMILIES=caption bash scripts/gpu/park.sh q1     # carry .carry/q1
#   bash scripts/gpu/park.sh q2                                            # carry .carry/q2
#   bash scripts/gpu/run_swap_probe.sh                                     # carry .carry/q3 .whl
# The tree plus one GGUF part must fit 64 MiB: nano's model file is not needed here and can stay behind.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}
source scripts/gpu/gguf_parts.sh  # sets G
python3 scripts/gpu/swap_probe.py --gguf $G --data /root/h6/data --work /root/h6/sp --out $OUT --baseline \
  --steps ${STEPS:-200} --batch ${BATCH:-64} --swap-prob ${SWAP_PROB:-0.3} --workers 12 2>&1 \
  | grep -v "it/s\]\|Warning\|warn(\|^\[transformers\]"
ls -la $OUT; echo "total ${SECONDS}s"
