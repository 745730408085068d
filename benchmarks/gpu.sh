#!/usr/bin/env bash
# One prepared GPU benchmark run (for the lent H100/H200; see the device tool's README).
# Measures: GMML pretraining img/s for ViT-S and ViT-B at 256 px in bf16 (eager and torch.compile) against a
# bare timm step, model FLOP utilisation, fine-tuning exams/s, inference latency, and an end-to-end
# `sbssl pretrain` epoch on a synthetic set with the slice-cache input pipeline (is the data keeping up?).
#   usage: bash benchmarks/gpu.sh            (on the GPU machine; results under $OUT or benchmarks/results)
#          GPU_DRY=1 bash benchmarks/gpu.sh  (tiny CPU dry run of the same script)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
RES=${OUT:-benchmarks/results}
mkdir -p "$RES"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
if [ "${GPU_DRY:-0}" = 1 ]; then
  S=(--img 32 --patch 8 --batch 4 --repeats 2); B=(--img 32 --patch 8 --batch 4 --repeats 2); N=(12 4 64); EP=1; BS=8
else
  S=(--img 256 --batch 256 --repeats 10); B=(--img 256 --batch 128 --repeats 10); N=(1130 20 256); EP=2; BS=256
fi
run() { echo "== $*"; timeout "${STEP_TIMEOUT:-240}" "$@" 2>&1 | tail -n 40; }
run $PY benchmarks/pretrain_step.py --model vit_small --precisions bf16 "${S[@]}"
cp benchmarks/results/pretrain_step.json "$RES/gpu_pretrain_step_vit_small.json" 2>/dev/null
run $PY benchmarks/pretrain_step.py --model vit_base --precisions bf16 "${B[@]}"
cp benchmarks/results/pretrain_step.json "$RES/gpu_pretrain_step_vit_base.json" 2>/dev/null
run $PY benchmarks/pretrain_step.py --model vit_small --precisions bf16 --compile "${S[@]}"
cp benchmarks/results/pretrain_step.json "$RES/gpu_pretrain_step_vit_small_compile.json" 2>/dev/null
run $PY benchmarks/inference.py --model vit_small
cp benchmarks/results/inference.json "$RES/gpu_inference.json" 2>/dev/null
run $PY benchmarks/finetune_step.py --model vit_small --img "${N[2]}"
cp benchmarks/results/finetune_step.json "$RES/gpu_finetune_step.json" 2>/dev/null
# end to end: synthetic set at MRNet size, slice cache, DataLoader, GMML on the GPU
D=/tmp/sbssl_gpu_synth
run $PY -m sbssl.cli synth --out $D --train "${N[0]}" --valid "${N[1]}" --size "${N[2]}" --workers "$(nproc)" --overwrite
run $PY -m sbssl.cli pretrain --data $D --out /tmp/sbssl_gpu_pre --overwrite model.name=vit_small \
  data.img_size="${N[2]}" train.epochs=$EP train.batch_size=$BS train.recon_every=0 data.workers=4
cp /tmp/sbssl_gpu_pre/log.jsonl "$RES/gpu_pretrain_e2e_log.jsonl" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null
echo "done"
