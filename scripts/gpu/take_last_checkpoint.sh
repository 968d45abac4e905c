#!/usr/bin/env bash
# Usage: take_last_checkpoint.sh MODEL_DIR PROCESSOR_DIR
# A training cut by the call's timeout has no final model: make MODEL_DIR the last committed checkpoint
# (weights) plus the processor of PROCESSOR_DIR, and mark it finished. Does nothing if the run finished.
M=$1; P=$2
[ -f $M/llavakit_train.json ] && exit 0
C=$(ls -d $M/checkpoints/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1); echo "using $C"
python3 -c "
from transformers import AutoProcessor, LlavaForConditionalGeneration as L
L.from_pretrained('$C').save_pretrained('$M'); AutoProcessor.from_pretrained('$P').save_pretrained('$M')"
touch $M/llavakit_train.json
