#!/usr/bin/env bash
# nano, sixth recipe: nano's own tower size (4 layers x 192) pretrained with the tower-v2 recipe that lifted
# budget (200k scenes, 14000 steps, batch 256; v1 was 120k / 4000), then nano from scratch on it (frozen) over
# 160k scenes as ONE cosine run of STEPS (v3 was two restarts: 4000 + 5500). Back-to-back calls on one
# warm GPU machine (nothing to carry but the repo):
#   PHASE=tower bash scripts/gpu/run_nano_v6.sh          # ~8 min: tower training while the CPU renders QA data
#   PHASE=train bash scripts/gpu/run_nano_v6.sh          # optional, for STEPS beyond one call: nano, cut by
#                                                        # TRAIN_TIMEOUT (checkpoints every 500 steps)
#   PHASE=finish bash scripts/gpu/run_nano_v6.sh         # (resume and) train to STEPS, GPU eval, parts to $OUT
# nano v7 = the same with DATA_ARGS="--family-weight spatial=3 ..." (the QA mix) and THEN_TRAIN=SECONDS (start
# nano's training in the tower call, so a longer run fits two calls).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
W=/root/h7; mkdir -p $W; OUT=${OUT:-/tmp/out}; STEPS=${STEPS:-7000}
train_nano() {  # $1: seconds; resumes from the last checkpoint (every 500 steps) when there is one
  RESUME=""; [ -d $W/work/nano/model/checkpoints ] && RESUME=--resume
  timeout $1 python3 scripts/gpu/train_defaults.py nano --data $W/data --work $W/work \
    --steps $STEPS --batch 128 --lr ${LR:-1e-3} --workers 15 --seed 0 --vision $W/vision --freeze-vision $RESUME \
    2>&1 | grep -v "it/s\]\|Warning\|warn(" | tail -4
  ls -d $W/work/nano/model/checkpoints/checkpoint-* 2>/dev/null | tail -1
}
case ${PHASE:-tower} in
tower)
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
  python3 scripts/gpu/train_defaults.py vision --work $W/work --out $W/vision --scenes ${VSCENES:-200000} \
    --steps ${VSTEPS:-14000} --batch 256 --lr 1e-3 --workers 16 > $W/vision_log.txt 2>&1 &
  VPID=$!
  until grep -q "rendered" $W/vision_log.txt 2>/dev/null || ! kill -0 $VPID 2>/dev/null; do sleep 2; done
  echo "[$(date +%T)] tower scenes rendered (${SECONDS}s); QA data next, while the tower trains"
  python3 -m llavakit.cli data shapes --out $W/data --train ${NTRAIN:-160000} --val 200 --test 1000 --seed 0 \
    --workers 14 --force ${DATA_ARGS:-} > /dev/null && echo "[$(date +%T)] QA data done (${SECONDS}s)"
  wait $VPID; grep -v "it/s\]\|Warning\|warn(" $W/vision_log.txt | grep -v '^{' | tail -4
  grep '^{' $W/vision_log.txt | awk 'NR % 20 == 0' | tail -8
  [ -f $W/vision/config.json ] || exit 5
  cp $W/vision_log.txt $W/vision/
  [ -n "${THEN_TRAIN:-}" ] && train_nano $THEN_TRAIN ;;
train|finish)
  [ -f $W/vision/config.json ] && [ -f $W/data/train.json ] || { echo "run PHASE=tower first on this machine"; exit 3; }
  train_nano ${TRAIN_TIMEOUT:-540}
  if [ $PHASE = finish ]; then
    M=$W/work/nano/model
    bash scripts/gpu/take_last_checkpoint.sh $M $W/work/nano/base  # cut by the timeout?
    python3 scripts/gpu/train_defaults.py eval --model $M --data $W/data/test.json --out $W/nano_eval.json \
      --batch 250 2>&1 | grep -v "it/s\]\|Warning" | tail -3
    python3 scripts/gpu/train_defaults.py parts --work $W/work --out $W/parts 2>&1 | grep -v "it/s\]" | tail -3
    cp $M/train_log.csv $W/nano_eval.json $W/vision_log.txt $W/parts/nano/
    tar -C $W/parts -cf $OUT/nano.tar nano
  fi ;;
esac
ls -la $OUT; echo "total ${SECONDS}s"
