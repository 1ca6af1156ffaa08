#!/usr/bin/env bash
# The LFW View 2 fold-10 quality tables of docs/training.md (issue 5) and docs/metric_learning.md
# (issue 6): bench/bench_quality_lfw.py runs in two lanes side by side, one torch thread each (on
# this 2-core CPU two 1-thread processes train ~25 % more images per second in total than one
# 2-thread process). Usage:
#   bench/quality_lfw_tables.sh classification   # softmax, ArcFace, CosFace: 24 epochs (~18 min) each
#   bench/quality_lfw_tables.sh metric            # every metric loss/miner + softmax and fine-tuning: 6 min each
#                                                 # (lane metric-a beside metric-b then metric-c; each can run alone)
#   bench/quality_lfw_tables.sh selection         # choose the ArcFace recipe WITHOUT fold 10: test fold 9, 100
#                                                 # held-out validation identities, 4 candidates in 2 x 2 lanes (~40 min)
#   bench/quality_lfw_tables.sh final             # the chosen recipe once on fold 10, 2 threads alone (~18 min)
#   bench/quality_lfw_tables.sh margin-heads      # AdaFace, MagFace, CurricularFace at section 1's budget and
#                                                 # recipe (s = 16, one warm-up epoch, 24 epochs) + the ArcFace
#                                                 # reference rerun beside them (~26 min: 2 x 2 lanes)
# Settings: ALIGNED (similarity-aligned LFW from `fvtool align ... --mode similarity --size 112`),
# OUT (output root, default bench/out/quality-lfw), PY (python).
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
ALIGNED="${ALIGNED:?set ALIGNED to a similarity-aligned LFW (fvtool align <lfw> -o DIR --mode similarity --size 112)}"
OUT="${OUT:-bench/out/quality-lfw}"
AUG='flip,shift=0.08,scale=0.9:1.1,rotate=10,brightness=0.2,contrast=0.2'
common=(--data "$ALIGNED" --crop 1.0 --size 64 --threads 1 --augment "$AUG")

lane() {  # lane NAME MINUTES RUN... [-- BENCH OPTIONS...]
  local name="$1" minutes="$2"; shift 2
  local args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=(--run "$1"); shift; done
  [ $# -gt 0 ] && shift && args+=("$@")
  "$PY" bench/bench_quality_lfw.py "${common[@]}" --minutes "$minutes" --out "$OUT/$name" "${args[@]}" \
    > "$OUT/$name.log" 2>&1
}

mkdir -p "$OUT"
ml="lr=0.05,warmup_epochs=1"   # metric losses: SGD lr 0.05, one warm-up epoch
case "${1:-}" in
  classification)
    # 24 epochs of 7,168 images = 18 min at the 165 img/s each lane measured in steady state
    lane cls-a 19 'softmax:loss=softmax,epochs=24' &
    lane cls-b 19 'arcface:loss=arcface,scale=16,margin=0.35,warmup_epochs=1,epochs=24' &
    wait
    lane cls-c 19 'cosface:loss=cosface,scale=16,margin=0.35,warmup_epochs=1,epochs=24'
    "$PY" bench/bench_quality_lfw.py --collect "$OUT"/cls-*
    ;;
  metric-a)
    lane metric-a 6 'softmax-6:loss=softmax' \
      "softmax-triplet-ft:loss=triplet,mining=semihard,init_from=@softmax-6,lr=0.01,minutes=3" \
      "contrastive:loss=contrastive,mining=all,$ml" "triplet-hard:loss=triplet,mining=hard,$ml" \
      "triplet-all:loss=triplet,mining=all,$ml" "npair:loss=npair,$ml" "circle:loss=circle,$ml"
    ;;
  metric-b)
    lane metric-b 6 "siamese-bce:loss=siamese-bce,$ml" "triplet-random:loss=triplet,mining=random,$ml" \
      "triplet-semihard:loss=triplet,mining=semihard,$ml" "triplet-hardneg:loss=triplet,mining=hard-negative,$ml" \
      "triplet-dw:loss=triplet,mining=distance-weighted,$ml" "margin-dw:loss=margin,mining=distance-weighted,$ml" \
      "hard-margin-dw:loss=hard-margin,mining=distance-weighted,$ml" "supcon:loss=supcon,$ml"
    ;;
  metric-c)   # the classification references at the metric budget
    lane metric-c 6 'arcface-6:loss=arcface,scale=16,margin=0.35,warmup_epochs=1' \
      'cosface-6:loss=cosface,scale=16,margin=0.35,warmup_epochs=1'
    ;;
  metric)
    "$self" metric-a &
    sleep 90   # lane a's first probe should not overlap lane b's start-up (cache build)
    ("$self" metric-b && "$self" metric-c) &
    wait
    "$PY" bench/bench_quality_lfw.py --collect "$OUT"/metric-*
    ;;
  selection)   # equal images seen (24 epochs; min_images=1 has 1.57x the images per epoch -> 15 epochs)
    arc="loss=arcface,scale=16,margin=0.35,warmup_epochs=1"
    sel=(--fold 9 --val-ids 100)
    lane sel-a 19 "arc35:$arc,epochs=24" -- "${sel[@]}" &
    sleep 20
    lane sel-b 19 "arc50:loss=arcface,scale=16,margin=0.5,warmup_epochs=1,epochs=24" -- "${sel[@]}" &
    wait
    lane sel-c 19 "arc35-flat:$arc,epochs=24,backbone_opt=head:\"flatten\"" -- "${sel[@]}" &
    sleep 20
    lane sel-d 19 "arc35-min1:$arc,epochs=15" -- "${sel[@]}" --min-images 1 &
    wait
    "$PY" bench/bench_quality_lfw.py --collect "$OUT"/sel-*
    ;;
  final)   # 36 epochs = ~17.6 min at the 228 img/s this run measured in its first epochs
    "$PY" bench/bench_quality_lfw.py "${common[@]}" --threads 2 --fold 10 --val-ids 100 \
      --minutes 20 --out "$OUT/final" \
      --run 'arcface-flat:loss=arcface,scale=16,margin=0.35,warmup_epochs=1,epochs=36,backbone_opt=head:"flatten"' \
      > "$OUT/final.log" 2>&1
    "$PY" bench/bench_quality_lfw.py --collect "$OUT"/final
    ;;
  margin-heads)   # issue 23: the papers' margins, section 1's scale, warm-up and epochs (like the ArcFace row)
    lane heads-a 19 'adaface:loss=adaface,scale=16,warmup_epochs=1,epochs=24' &
    lane heads-b 19 'magface:loss=magface,scale=16,warmup_epochs=1,epochs=24' &
    wait
    lane heads-c 19 'curricularface:loss=curricularface,scale=16,warmup_epochs=1,epochs=24' &
    # section 1's ArcFace row again, on the same alignment and machine: the reference the heads are read against
    lane heads-ref 19 'arcface:loss=arcface,scale=16,margin=0.35,warmup_epochs=1,epochs=24' &
    wait
    "$PY" bench/bench_quality_lfw.py --collect "$OUT"/heads-*
    ;;
  *) echo "usage: $0 classification|metric|metric-a|metric-b|metric-c|selection|final|margin-heads" >&2; exit 2 ;;
esac
