#!/usr/bin/env bash
# The report of docs/reports/lfw-fold10/ (DET/ROC/histograms/training curves) from finished runs of
# bench/bench_quality_lfw.py: embed each run (flip-sum TTA, last checkpoint), verify it on the 600
# official fold-10 pairs and on all pairs of fold 10's identities (<= 20 images each), one report.
# Usage: ALIGNED=<similarity-aligned LFW> bench/report_lfw_fold10.sh OUT LABEL=RUN_DIR [LABEL=RUN_DIR ...]
set -euo pipefail
cd "$(dirname "$0")/.."
FV="${FV:-.venv/bin/fvtool}"
A="${ALIGNED:?set ALIGNED to the aligned LFW the runs were trained on}"
out="$1"; shift
mkdir -p "$out"
export FVTOOL_WORKSPACE="$out/ws"
"$FV" pairs lfw --data "$A" --fold 10 --name lfw-fold10 -o "$out/proto-fold10.json"
"$FV" pairs split "$A" --lfw-fold 10 --min-images 2 -o "$out/split.json"
"$FV" pairs allpairs "$A" --split "$out/split.json" --part test --max-per-identity 20 \
  --name lfw-fold10-allpairs-max20 -o "$out/allpairs.json"
dirs=()
for spec in "$@"; do
  label="${spec%%=*}"; run="${spec#*=}"
  [ -f "$out/$label.h5" ] || "$FV" embed "$run" --data "$A" --tta flip-sum --checkpoint last -o "$out/$label.h5" -q
  "$FV" verify "$out/$label.h5" --protocol "$out/proto-fold10.json" --bootstrap 500 -o "$out/verify/$label-fold10" -q
  "$FV" verify "$out/$label.h5" --protocol "$out/allpairs.json" --far 1e-3 --far 1e-4 \
    -o "$out/verify/$label-allpairs" -q
  dirs+=("$out/verify/$label-fold10" "$out/verify/$label-allpairs")
done
"$FV" report "${dirs[@]}" -o "$out/report" --fars 1e-2,1e-3,1e-4 --bootstrap 200 --data-root "$A" --formats none
