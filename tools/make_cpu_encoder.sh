#!/usr/bin/env bash
# Makes the GMML encoder shipped in src/sbssl/weights/ (labels unused): a synthetic unlabelled archive of 1,130
# knees drawn with another seed than the demo's (seed 1; the demo uses 0), pretrained with the CPU recipe, then
# exported in half precision. About 82 minutes (24 epochs) on a 2-core AMD EPYC with AVX512-BF16.
#   usage: tools/make_cpu_encoder.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/cpu-encoder}
SBSSL=${SBSSL:-sbssl}
$SBSSL synth --out "$WORK/data/MRNet-v1.0" --train 1130 --valid 10 --size 64 --seed 1 --difficulty 0.5
$SBSSL pretrain --config pretrain/cpu --data "$WORK/data/MRNet-v1.0" --out "$WORK/pretrain"
${PYTHON:-python} -m sbssl.weights export "$WORK/pretrain/encoder.safetensors"
