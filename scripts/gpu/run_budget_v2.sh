#!/usr/bin/env bash
# budget, second recipe: run right after run_nano_v2.sh on the same warm machine (it parked GGUF part 1,
# the pretrained tower in /root/h4/vision and the QA data). SmolLM2 + that tower (frozen throughout):
# align trains the projector (LM frozen), instruct trains LoRA + projector; GPU eval; parts back via $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
W=/root/h4; mkdir -p $W; OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
cat $W/gguf.part1 .carry/p2/gguf.part2 > $W/SmolLM2-135M-Instruct.Q4_1.gguf || exit 3
echo "a1231443440b107ff29f02bdb38c9d0a  $W/SmolLM2-135M-Instruct.Q4_1.gguf" | md5sum -c - || exit 4
[ -f $W/vision/config.json ] || exit 5
[ -f $W/data/dataset.json ] || exit 6
time timeout ${TRAIN_TIMEOUT:-480} python3 scripts/gpu/train_defaults.py budget --data $W/data --work $W/work \
  --vision $W/vision --freeze-vision --gguf $W/SmolLM2-135M-Instruct.Q4_1.gguf --align-steps ${ALIGN:-300} \
  --align-lr ${ALIGN_LR:-1e-3} --steps ${STEPS:-900} --batch 64 --lora-r 16 --workers 15 ${RESUME:-} 2>&1 \
  | grep -v "it/s\]\|Warning\|warn("
I=$W/work/budget/instruct
python3 scripts/gpu/train_defaults.py eval --model $I --data $W/data/test.json --out $W/budget_eval.json --batch 250 2>&1 | grep -v "it/s\]\|Warning"
python3 scripts/gpu/train_defaults.py parts --work $W/work --out $W/parts 2>&1 | grep -v "it/s\]" | tail -4
mkdir -p $W/parts/budget; cp $I/train_log.csv $W/parts/budget/instruct_log.csv; cp $W/work/budget/align/train_log.csv $W/parts/budget/align_log.csv
cp $W/budget_eval.json $W/work/budget/text_only.json $W/parts/budget/
tar -C $W/parts -cf $OUT/budget.tar budget; ls -la $OUT; echo "total ${SECONDS}s"
