#!/usr/bin/env bash
# GMML vs scratch at MRNet scale on one GPU: 1130+120 synthetic exams at 256 px, ViT-T,
# short pretraining, 2-member fine-tunes from GMML and from scratch, paired bootstrap.
# Results are copied to $OUT after every stage, so a timeout still returns what finished.
# Sizes: GL_SIZE="train valid px", GL_PRE_EPOCHS, GL_FT_EPOCHS, GL_MEMBERS (a 10-minute lease: "800 120 256", 10, 5, 2).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY=${PY:-python3}; RES=${OUT:-/tmp/gpu_learning}; mkdir -p "$RES"
if [ -d .whl ]; then $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"; fi
D=/tmp/gl_synth; R=/tmp/gl_runs
N=(${GL_SIZE:-1130 120 256}); PE=${GL_PRE_EPOCHS:-10}; FE=${GL_FT_EPOCHS:-6}; M=${GL_MEMBERS:-2}
save() { for f in "$@"; do [ -f "$f" ] && cp "$f" "$RES/$(echo "$f" | sed "s#$R/##; s#/#_#g")"; done; }
date; $PY -m sbssl.cli synth --out $D --train ${N[0]} --valid ${N[1]} --size ${N[2]} --workers "$(nproc)" --overwrite
date; $PY -m sbssl.cli pretrain --data $D --out $R/pre --overwrite --config pretrain/vit_tiny data.img_size=${N[2]} \
  train.epochs=$PE train.warmup_epochs=2 train.batch_size=256 train.recon_every=$PE data.workers=6 mask.type=noise
save $R/pre/log.jsonl; cp $R/pre/recon/*.png "$RES/" 2>/dev/null
FT=(--config finetune/vit_tiny data.img_size=${N[2]} finetune.ensemble=$M train.epochs=$FE finetune.batch_exams=16 train.lr=2e-3 train.warmup_epochs=1)
date; $PY -m sbssl.cli finetune --data $D --out $R/gmml --overwrite "${FT[@]}" init=$R/pre
save $R/gmml/metrics.json $R/gmml/log.jsonl $R/gmml/predictions.csv
date; $PY -m sbssl.cli finetune --data $D --out $R/scratch --overwrite "${FT[@]}" init=scratch
save $R/scratch/metrics.json $R/scratch/log.jsonl $R/scratch/predictions.csv
$PY -m sbssl.cli compare $R/gmml $R/scratch --out $R/cmp; save $R/cmp/compare.json
date
