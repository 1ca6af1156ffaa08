#!/usr/bin/env bash
# Study 4: MTCNN-aligned 96x96 faces, ResNet18 with two fully connected layers instead of the
# average pool: center loss, softmax, triplet with random sampling, margin loss with
# distance-weighted sampling, hard-margin loss; verification accuracy and AUC, and recognition
# accuracy of a linear classifier (fvtool identify) on the TRAINING identities, as the source
# measures it ("6400 identities for both training set and face recognition testing set ... 2 images
# per person in face recognition testing set"), plus closed-set accuracy on the unseen test identities.
# RECIPE=faithful (default) | tuned: the recipes study4-{center,softmax,triplet,margin,hard-margin}-$RECIPE.
# DATA=<the MS-Celeb subset as shipped> (examples/_common.sh): trains on all of its identities (2 images of each
# held out for recognition), aligned with MTCNN at SIZE unless pre-aligned; verification stays on LFW.
source "$(dirname "$0")/_common.sh"
SIZE="${SIZE:-96}"
# 2 images of every training identity with more are withheld from training: the recognition test images
# (QUICK=1: 1 of the tiny set's 4 per identity, so that a batch of training images remains)
SPLIT_OPTS=(--heldout-images "$([ "$QUICK" = 1 ] && echo 1 || echo 2)")
prepare_data similarity "$SIZE"
E=$(epochs 20)
IN="${IN:-$([ "$QUICK" = 1 ] && echo 32 || echo 96)}"
common=(--input-size "$IN" --epochs "$E")
# The faithful distance-weighted batch is 1,600 identities x 4 images; the LFW stand-in's training part
# has far fewer identities with 2+ training images: P = 64 on it (8 with QUICK=1's tiny part).
DW_PK=()
if [ "$RECIPE" = faithful ]; then
  if [ "$QUICK" = 1 ]; then DW_PK=(--pk 8 4); else DW_PK=(--pk 64 4); [ -z "${BATCH:-}" ] && DW_PK+=(--batch-size 256); fi
fi
recipe_opts study4-center
run_loss center "${RECIPE_OPTS[@]}" "${common[@]}"
recipe_opts study4-softmax
run_loss softmax "${RECIPE_OPTS[@]}" "${common[@]}"
recipe_opts study4-triplet
run_loss triplet-random "${RECIPE_OPTS[@]}" "${common[@]}"
recipe_opts study4-margin
run_loss margin-dw "${RECIPE_OPTS[@]}" "${common[@]}" "${DW_PK[@]}"
recipe_opts study4-hard-margin
run_loss hard-margin-dw "${RECIPE_OPTS[@]}" "${common[@]}" "${DW_PK[@]}"

names=()
for name in center softmax triplet-random margin-dw hard-margin-dw; do
  [ -f "$WS/embeddings/$name.h5" ] && names+=("$name")   # ONLY= may have skipped some
done
# Recognition of the training identities (the source's measure; with DATA=, DATA's identities, as the
# source's 6,400 MS-Celeb ones): embed the training images and the held-out ones; logistic regression
# (the linear classifier) fitted on the training images names the held-out images, every training
# identity being a class. One JSON per run in $WS/identify/.
train_emb=()
for name in "${names[@]}"; do
  out="$WS/embeddings/$name-trainids.h5"
  [ -f "$out" ] || fv embed "$WS/runs/$name" --data "$TRAIN_DATA" --split "$TRAIN_SPLIT" --part train,heldout -o "$out" \
    "${THREADS_OPT[@]}" "${DEVICE_OPT[@]}" -q
  train_emb+=("$out")
done
# IDENTIFY_ARGS: extra `fvtool identify` options for both calls, e.g. "--max-iter 50" (the logistic regression
# over the full stand-in's 5,298 training identities costs minutes per run at the default 1,000 iterations)
ID_EXTRA=()
read -ra ID_EXTRA <<< "${IDENTIFY_ARGS:-}"
fv identify "${train_emb[@]}" --split "$TRAIN_SPLIT" --heldout -c logreg -q "${ID_EXTRA[@]}"
# Closed-set recognition on the test identities (none was seen in training): logistic regression fitted
# on half of each identity's images names the other half; nearest class mean and 1-NN are the
# no-training baselines. The report shows these beside the verification rows.
emb=()
for name in "${names[@]}"; do emb+=("$WS/embeddings/$name.h5"); done
fv identify "${emb[@]}" --split "$SPLIT" --part test -c logreg -c ncm -c 1nn --seed 0 -q "${ID_EXTRA[@]}"
report
