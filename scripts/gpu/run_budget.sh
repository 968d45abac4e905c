#!/usr/bin/env bash
# GPU call 2 (right after call 1, same warm machine): SmolLM2 GGUF reassembled from two carried halves,
# budget = SmolLM2 + nano's ViT, align then instruct (LoRA), eval, parts back via $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
W=/root/h4; mkdir -p $W; OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
[ -f .carry/p1/gguf.part1 ] && cp .carry/p1/gguf.part1 $W/
cat $W/gguf.part1 .carry/p2/gguf.part2 > $W/SmolLM2-135M-Instruct.Q4_1.gguf || exit 3
echo "a1231443440b107ff29f02bdb38c9d0a  $W/SmolLM2-135M-Instruct.Q4_1.gguf" | md5sum -c - || exit 4
if [ ! -f $W/work/nano/model/config.json ]; then  # fresh machine: nano comes back from call 1's tarball
  mkdir -p $W/work/nano && tar -C $W/work/nano -xf .carry/nano/nano.tar && mv $W/work/nano/nano $W/work/nano/model
fi
if [ ! -f $W/data/dataset.json ]; then
  time python3 -m llavakit.cli data shapes --out $W/data --train ${NTRAIN:-80000} --val 200 --test 1000 --seed 0 --workers 16 --force \
    || python3 -c "from llavakit.data.shapes import ShapesConfig, generate_shapes; generate_shapes('$W/data', ShapesConfig(train=${NTRAIN:-80000}, val=200, test=1000, seed=0), workers=16, force=True)"
fi
time timeout ${TRAIN_TIMEOUT:-450} python3 scripts/gpu/train_defaults.py budget --data $W/data --work $W/work --nano $W/work/nano/model --gguf $W/SmolLM2-135M-Instruct.Q4_1.gguf --align-steps ${ALIGN:-800} --steps ${STEPS:-3000} --batch 64 --lora-r 16 --workers 15 ${RESUME:-} 2>&1 | grep -v "it/s\]\|Warning\|warn("
I=$W/work/budget/instruct
time python3 scripts/gpu/train_defaults.py eval --model $I --data $W/data/test.json --out $W/budget_eval.json --batch 250 2>&1 | grep -v "it/s\]\|Warning"
python3 scripts/gpu/train_defaults.py parts --work $W/work --out $W/parts 2>&1 | grep -v "it/s\]"
mkdir -p $W/parts/budget; cp $I/train_log.csv $W/parts/budget/instruct_log.csv; cp $W/work/budget/align/train_log.csv $W/parts/budget/align_log.csv
cp $W/budget_eval.json $W/work/budget/text_only.json $W/parts/budget/
tar -C $W/parts -cf $OUT/budget.tar budget; ls -la $OUT
