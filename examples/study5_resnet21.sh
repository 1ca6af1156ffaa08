#!/usr/bin/env bash
# Study 5: ResNet21 / ResNet13 with cross-entropy, triplet (online hard mining) and ArcFace
# (m = 0.5); DET curves with the LFW EER point and FRR at FAR = 1e-4 and 1e-5 (all pairs);
# the cross-entropy and ArcFace models fine-tuned with triplet loss.
# DATA=<an MS-Celeb-1M subset as shipped, e.g. an insightface .rec> (examples/_common.sh): all of its identities
# train; LFW is evaluated as before. Not run here: the thesis's MS-Celeb test set (1,000 identities that overlap
# LFW; the subset is the thesis's own).
# MEDS=<the MEDS-II release folder (NIST SD 32), as shipped> (optional): aligned by MTCNN at SIZE into MEDS_ALIGNED
# (default $WS/aligned/meds-similarity<size>), and every run is also embedded on it and scored on all pairs of its
# images at FAR 1e-3 / 1e-4 / 1e-5 (the thesis's MEDS-II protocol: FRR at FAR 1e-5): $WS/verify/<run>-meds-allpairs.
source "$(dirname "$0")/_common.sh"
MEDS="${MEDS:-}"
if [ -n "$MEDS" ] && [ ! -d "$MEDS" ]; then
  echo "MEDS=$MEDS: not a folder (the MEDS-II release folder: docs/datasets.md)" >&2; exit 2
fi
SIZE="${SIZE:-$([ "$QUICK" = 1 ] && echo 64 || echo 112)}"
prepare_data similarity "$SIZE"
if [ -n "$MEDS" ]; then
  MEDS_ALIGNED="${MEDS_ALIGNED:-$WS/aligned/meds-similarity$SIZE}"
  rc=0
  fv align "$MEDS" -o "$MEDS_ALIGNED" --mode similarity --size "$SIZE" "${THREADS_OPT[@]}" -q || rc=$?
  if [ "$rc" = 4 ]; then echo "MEDS=$MEDS: some images could not be read (listed in its manifest)" >&2; rc=0; fi
  [ "$rc" = 0 ] || { echo "MEDS=$MEDS: fvtool align failed (exit $rc)" >&2; exit "$rc"; }
  MEDSPAIRS="$WS/protocols/meds-allpairs.json"
  fv pairs allpairs "$MEDS_ALIGNED" --name meds-allpairs -o "$MEDSPAIRS" || rc=$?
  [ "$rc" = 0 ] || { echo "MEDS=$MEDS: fvtool pairs allpairs failed (exit $rc)" >&2; exit "$rc"; }
fi
E=$(epochs 20)
IN="${IN:-$([ "$QUICK" = 1 ] && echo 32 || echo 112)}"
QUICK_PK=()  # the faithful triplet batch is 32 identities x 3: more than QUICK's tiny training part holds
[ "$QUICK" = 1 ] && QUICK_PK=(--pk 8 4)
for net in resnet21 resnet13; do
  common=(--backbone "$net" --input-size "$IN" --epochs "$E")
  # from the recipes study5-{ce,triplet,arcface}-$RECIPE (written for ResNet21; ResNet13 runs with the
  # same settings), at this script's scale
  recipe_opts study5-ce
  run_loss "$net-ce" "${RECIPE_OPTS[@]}" "${common[@]}"
  recipe_opts study5-triplet
  run_loss "$net-triplet" "${RECIPE_OPTS[@]}" "${common[@]}" "${QUICK_PK[@]}"
  recipe_opts study5-arcface
  run_loss "$net-arcface" "${RECIPE_OPTS[@]}" "${common[@]}"
  # fine-tune each with triplet loss at a lower learning rate: recipe study5-ft-triplet-$RECIPE (the
  # base runs' network: D and layout as in their recipes; faithful: lr 0.001, semi-hard, 32 triplets)
  recipe_opts study5-ft-triplet
  for base in ce arcface; do
    run_loss "$net-$base-ft-triplet" "${RECIPE_OPTS[@]}" --init-from "$WS/runs/$net-$base" \
      --backbone "$net" --input-size "$IN" --epochs "$(epochs 5)" "${QUICK_PK[@]}"
  done
done
if [ -n "$MEDS" ]; then  # MEDS-II: every trained run (ONLY= may have skipped some), all pairs, down to FAR 1e-5
  for name in $(cd "$WS/runs" && ls); do
    [ -f "$WS/embeddings/$name.h5" ] || continue
    fv embed "$WS/runs/$name" --data "$MEDS_ALIGNED" -o "$WS/embeddings/$name-meds.h5" "${THREADS_OPT[@]}" \
       "${DEVICE_OPT[@]}" -q
    fv verify "$WS/embeddings/$name-meds.h5" --protocol "$MEDSPAIRS" --far 1e-3 --far 1e-4 --far 1e-5 \
       -o "$WS/verify/$name-meds-allpairs" -q
  done
fi
report
