#!/usr/bin/env bash
# Makes the ACL localiser shipped in src/sbssl/weights/ (data.roi=acl; labels unused): 610 knees of the selection
# family `varied` (seed 11, 128 px; no held-out family is drawn), the ACL's position in each from the generator's
# replayed draws, 30 epochs (about 8 minutes to draw the set and one to train on 2 cores).
#   usage: tools/make_acl_localiser.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-runs/broad/varied}
SBSSL=${SBSSL:-sbssl}
[ -f "$WORK/findings/synth.json" ] || $SBSSL synth --family varied --seed 11 --train 600 --valid 10 --size 128 --out "$WORK"
${PYTHON:-python} -m sbssl.weights localiser "$WORK" 30
