#!/usr/bin/env bash
# Study 2: ResNet18 trained with cross-entropy and with ArcFace on identity labels, and a VAE
# encoder's mu as a feature extractor. Euclidean distance; thresholds by 10-fold cross-validation
# (k-fold accuracy in verify) and by the intersection of the genuine/impostor distributions
# (report's histograms and metrics.json "intersection").
# RECIPE=faithful (default): the recipes study2-{ce,arcface,vae}-faithful (validation-loss model
# selection, the flattened average-pool embedding, the source's Tanh/sum-MSE VAE) and Euclidean
# distances on the raw embeddings, as the source computed them; RECIPE=tuned: fvtool's settings and
# distances between L2-normalised embeddings.
# DATA=<CASIA-WebFace as shipped: the identity folder, or its insightface .rec> (examples/_common.sh): all of
# its identities train (aligned by MTCNN unless a .rec); the evaluation stays LFW fold 10, as in the source.
source "$(dirname "$0")/_common.sh"
SIZE="${SIZE:-$([ "$QUICK" = 1 ] && echo 64 || echo 112)}"
prepare_data similarity "$SIZE"
E=$(epochs 20)
IN="${IN:-$([ "$QUICK" = 1 ] && echo 32 || echo 112)}"
# CE and ArcFace from the recipes study2-{ce,arcface}-$RECIPE (docs/recipes.md), at this script's scale
recipe_opts study2-ce
run_loss resnet18-ce "${RECIPE_OPTS[@]}" --input-size "$IN" --epochs "$E"
recipe_opts study2-arcface
run_loss resnet18-arcface "${RECIPE_OPTS[@]}" --input-size "$IN" --epochs "$E"
recipe_opts study2-vae
# VAE_WIDTH: channels of the VAE's deepest block (default 512, the source's and fvtool's); a reduced run may
# lower it (the decoder's cost grows with its square)
VAE_SCALE=()
if [ "$RECIPE" = faithful ] && { [ "$IN" != 112 ] || [ -n "${VAE_WIDTH:-}" ]; }; then
  # the source's 512 x 4 x 4 map at 112 px is five stride-2 blocks; at another input size, as many as leave 4 x 4
  depth=0 side="$IN"
  while [ "$side" -gt 4 ]; do side=$(((side + 1) / 2)); depth=$((depth + 1)); done
  VAE_SCALE=(--backbone-opt "depth=$depth" --backbone-opt "width=${VAE_WIDTH:-512}")
elif [ -n "${VAE_WIDTH:-}" ]; then
  VAE_SCALE=(--backbone-opt "width=$VAE_WIDTH")
fi
run_loss vae-mu "${RECIPE_OPTS[@]}" "${VAE_SCALE[@]}" --input-size "$IN" --epochs "$E"
# The 10-fold cross-validated threshold needs folds: the full run's test protocol is LFW fold 10 alone,
# so its 600 pairs are dealt into 10 stratified folds (QUICK=1's protocol already has 4 folds).
CVPAIRS="$PAIRS"
if [ "$QUICK" != 1 ]; then
  CVPAIRS="$WS/protocols/lfw-fold10-cv10.json"
  fv pairs lfw --data "$ALIGNED" --fold 10 --refold 10 --seed 0 --name lfw-fold10-cv10 -o "$CVPAIRS"
fi
RAW=()
[ "$RECIPE" = faithful ] && RAW=(--raw)  # the source's distances are between the embeddings as extracted
for n in resnet18-ce resnet18-arcface vae-mu; do   # Euclidean scoring, as the study did
  [ -f "$WS/embeddings/$n.h5" ] || continue   # ONLY= skipped it
  fv verify "$WS/embeddings/$n.h5" --protocol "$CVPAIRS" --metric euclidean "${RAW[@]}" \
     -o "$WS/verify/$n-euclid-pairs" -q
done
report   # histograms draw the distribution-intersection threshold next to the EER one
