#!/usr/bin/env bash
# GPU call 1: shapes-world data (generated there, 16 cores), nano from scratch, eval, parts back via $OUT.
# Also parks part 1 of the SmolLM2 GGUF in /root/h4 for call 2 (the GGUF is larger than one call may carry).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
W=/root/h4; mkdir -p $W; OUT=${OUT:-/tmp/out}
[ -f .carry/p1/gguf.part1 ] && cp .carry/p1/gguf.part1 $W/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
python3 -c "import torch,transformers,peft,accelerate,tokenizers,PIL,numpy,gguf;print('versions',torch.__version__,transformers.__version__,peft.__version__,accelerate.__version__,tokenizers.__version__,PIL.__version__,numpy.__version__,torch.cuda.get_device_name())"
python3 -c "import openvino" 2>/dev/null && echo "openvino present" || echo "no openvino"
NTRAIN=${NTRAIN:-80000}; STEPS=${STEPS:-4000}
if [ ! -f $W/data/dataset.json ]; then
  time python3 -m llavakit.cli data shapes --out $W/data --train $NTRAIN --val 200 --test 1000 --seed 0 --workers 16 --force \
    || python3 -c "from llavakit.data.shapes import ShapesConfig, generate_shapes; generate_shapes('$W/data', ShapesConfig(train=${NTRAIN:-80000}, val=200, test=1000, seed=0), workers=16, force=True)"
fi
INIT=""; if [ -f .carry/nano/nano.tar ]; then mkdir -p $W/init && tar -C $W/init -xf .carry/nano/nano.tar && INIT="--init $W/init/nano"; fi
time timeout ${TRAIN_TIMEOUT:-420} python3 scripts/gpu/train_defaults.py nano --data $W/data --work $W/work --steps $STEPS --batch 128 --lr ${LR:-1e-3} --workers 15 --seed ${SEED:-0} $INIT ${RESUME:-} 2>&1 | grep -v "it/s\]\|Warning\|warn("
M=$W/work/nano/model
if [ ! -f $M/llavakit_train.json ]; then  # cut by the timeout: take the last committed checkpoint
  P=$W/work/nano/base; [ -n "$INIT" ] && P=$W/init/nano
  C=$(ls -d $M/checkpoints/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1); echo "using $C"
  python3 -c "
from transformers import AutoProcessor, LlavaForConditionalGeneration as L; import sys
L.from_pretrained('$C').save_pretrained('$M'); AutoProcessor.from_pretrained('$P').save_pretrained('$M')"
  touch $M/llavakit_train.json
fi
time python3 scripts/gpu/train_defaults.py eval --model $M --data $W/data/test.json --out $W/nano_eval.json --batch 250 2>&1 | grep -v "it/s\]\|Warning"
python3 scripts/gpu/train_defaults.py parts --work $W/work --out $W/parts 2>&1 | grep -v "it/s\]"
cp $M/train_log.csv $W/parts/nano/train_log.csv; cp $W/nano_eval.json $W/parts/nano/; cp $W/data/dataset.json $W/parts/nano/
tar -C $W/parts -cf $OUT/nano.tar nano; ls -la $OUT
