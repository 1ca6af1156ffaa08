#!/usr/bin/env bash
# Study 5: ResNet21 / ResNet13 with cross-entropy, triplet (online hard mining) and ArcFace
# (m = 0.5); DET curves with the LFW EER point and FRR at FAR = 1e-4 and 1e-5 (all pairs);
# the cross-entropy and ArcFace models fine-tuned with triplet loss.
# DATA=<an MS-Celeb-1M subset as shipped, e.g. an insightface .rec> (examples/_common.sh): all of its identities
# train; LFW is evaluated as before. Not run here: the thesis's MS-Celeb test set (1,000 identities that overlap
# LFW) and MEDS-II all pairs at FAR 1e-5 (embed + verify them by hand: docs/datasets.md, MEDS-II).
source "$(dirname "$0")/_common.sh"
SIZE="${SIZE:-$([ "$QUICK" = 1 ] && echo 64 || echo 112)}"
prepare_data similarity "$SIZE"
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
report
