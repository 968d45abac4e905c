#!/usr/bin/env bash
# GPU (nvidia-h200-x2): scaling of llavakit's instruct stage, 1 GPU vs 2 GPUs (DDP via torchrun, FSDP2 via
# accelerate launch), bench-1b shape, random weights, per-GPU batch 16 x 256 tokens. Results to $OUT.
#   run: bash scripts/scaling/run_scaling.sh    (from the repo root on the GPU machine; FSDP=0 skips FSDP2)
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OUT=${OUT:-/tmp/out} PYTHONPATH=$PWD
W=/tmp/sc; mkdir -p $W $OUT
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
ARGS="--steps ${STEPS:-25} --warmup 5 --batch 16 --seq 256 --only llavakit --model $W/model"
F="it/s\]\|Warning\|warn("
time python3 -m llavakit.eval.train_bench --out $W --build-only 2>&1 | grep -v "$F" | tail -3
echo "=== 1 GPU" | tee -a $OUT/log.txt
CUDA_VISIBLE_DEVICES=0 timeout 200 python3 -m llavakit.eval.train_bench $ARGS --out $W/gpu1 2>&1 | grep -v "$F" | tail -3 | tee -a $OUT/log.txt
echo "=== 2 GPUs, DDP (torchrun)" | tee -a $OUT/log.txt
timeout 200 torchrun --standalone --nproc_per_node 2 -m llavakit.eval.train_bench $ARGS --out $W/ddp2 2>&1 | grep -v "$F" | tail -3 | tee -a $OUT/log.txt
[ "${FSDP:-1}" = 1 ] && echo "=== 2 GPUs, FSDP2 full shard (accelerate launch)" | tee -a $OUT/log.txt
[ "${FSDP:-1}" = 1 ] && timeout 200 accelerate launch --num_processes 2 --num_machines 1 --dynamo_backend no --mixed_precision bf16 \
  --use_fsdp --fsdp_version 2 --fsdp_sharding_strategy FULL_SHARD --fsdp_state_dict_type FULL_STATE_DICT \
  --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer,CLIPEncoderLayer -m llavakit.eval.train_bench $ARGS --out $W/fsdp2 2>&1 \
  | grep -v "$F" | tail -5 | tee -a $OUT/log.txt
for d in gpu1 ddp2 fsdp2; do [ -f $W/$d/train_bench.json ] && cp $W/$d/train_bench.json $OUT/$d.json; done; true
