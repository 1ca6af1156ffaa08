#!/usr/bin/env bash
# Study 1: face verifiers trained with BCE (siamese), contrastive and triplet losses on one shared CNN,
# plus a VAE trained with BCE vs MSE reconstruction (source: ../shared/sources/000_*.txt).
# As the source did, the verifiers train on a RANDOM 72/18/10 split of labelled LFW pairs
# (`pairs train-pairs --random-split`, which prints its leakage warning: train, val and test pairs share
# identities and images) and are scored on its 10 % test part (`verify`); the tuned runs use the same
# pairs file. The VAEs train on the identity split (the source used MNIST, which fvtool does not read).
# RECIPE=faithful (default): recipes study1-*-faithful (the ~190K-parameter siamese_cnn at 128 px,
# Adam 1e-3, 20 epochs; the VAEs at 28 px for 10 epochs) and the epoch-20 model (last.pt), as the source
# reports it; RECIPE=tuned: study1-*-tuned (resnet_small, SGD cosine, flips) and best.pt.
# Scale: the recipes' epochs and input sizes unless EPOCHS / IN (verifiers) / VAE_IN are set; QUICK=1
# runs 1 epoch at 32 px (IN, also the VAEs') on the embedded subset. RANDOM_PAIRS: pairs drawn for the split
# (default 4,000, two per image of the source's 2,000 selected images; QUICK=1: 400); TEST_FOLDS: folds of
# its test part for verify's k-fold accuracy (default 10; QUICK=1: 2).
# DATA=: the source's data is LFW itself (pairs drawn from it, tested on them), so DATA names the LFW copy to
# use: LFW= for the full run, SRC= with QUICK=1 (examples/_common.sh).
source "$(dirname "$0")/_common.sh"
if [ -n "$DATA" ]; then
  if [ "$QUICK" = 1 ]; then SRC="$DATA"; else LFW="$DATA"; fi
  echo "+ study 1 trains and tests on LFW: DATA=$DATA is the LFW copy ($([ "$QUICK" = 1 ] && echo SRC || echo LFW))" >&2
  DATA=""
fi
SIZE="${SIZE:-$([ "$QUICK" = 1 ] && echo 64 || echo 128)}"
prepare_data crop "$SIZE"
RANDOM_PAIRS="${RANDOM_PAIRS:-$([ "$QUICK" = 1 ] && echo 400 || echo 4000)}"
PAIRFILE="$WS/splits/random-pair-split.json"
TESTPAIRS="$WS/protocols/random-pair-split-test.json"
TEST_FOLDS="${TEST_FOLDS:-$([ "$QUICK" = 1 ] && echo 2 || echo 10)}"   # cross-validation folds of the test part
fv pairs train-pairs "$ALIGNED" --random-split --pairs "$RANDOM_PAIRS" --fractions 0.72,0.18,0.10 --seed 0 \
   -o "$PAIRFILE" --test-output "$TESTPAIRS" --test-folds "$TEST_FOLDS"   # prints the leakage warning

SCALE=()    # the verifiers' scale: the recipes' own unless asked
[ -n "${EPOCHS:-}" ] && SCALE+=(--epochs "$EPOCHS")
[ "$QUICK" = 1 ] && [ -z "${EPOCHS:-}" ] && SCALE+=(--epochs 1)
IN="${IN:-$([ "$QUICK" = 1 ] && echo 32 || echo "")}"
[ -n "$IN" ] && SCALE+=(--input-size "$IN")
VAE_SCALE=()
[ -n "${EPOCHS:-}" ] && VAE_SCALE+=(--epochs "$EPOCHS")
[ "$QUICK" = 1 ] && [ -z "${EPOCHS:-}" ] && VAE_SCALE+=(--epochs 1)
VAE_IN="${VAE_IN:-$([ "$QUICK" = 1 ] && echo "$IN" || echo "")}"
[ -n "$VAE_IN" ] && VAE_SCALE+=(--input-size "$VAE_IN")
QUICK_PK=()  # the tuned P x K batch (32 identities x 4) needs more identities than QUICK's pairs hold
[ "$QUICK" = 1 ] && [ "$RECIPE" = tuned ] && QUICK_PK=(--pk 8 4)
CKPT=$([ "$RECIPE" = faithful ] && echo last || echo best)   # the source reports its epoch-20 model
# The faithful heads and losses act on the Euclidean distance between the raw (not L2-normalised)
# embeddings (the BCE logit -a d + b, Hadsell's and FaceNet's d): score the test part with that distance
SCORE=()
[ "$RECIPE" = faithful ] && SCORE=(--metric euclidean --raw)

# run_pairs NAME [train options...]: train on the pairs file's train part (its val part validates),
# embed with the $CKPT checkpoint, verify on the pairs file's test part (faithful: raw Euclidean distances)
run_pairs() {
  local name="$1"; shift
  local run="$WS/runs/$name"
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then echo "skipping $name (ONLY=$ONLY)" >&2; return 0; fi
  if [ -f "$run/checkpoints/last.pt" ]; then
    fv train -o "$run" --resume "${THREADS_OPT[@]}" "${DEVICE_OPT[@]}"
  else
    fv train --data "$ALIGNED" --train-pairs "$PAIRFILE" -o "$run" --seed 0 "${THREADS_OPT[@]}" "${BATCH_OPT[@]}" \
       "${DEVICE_OPT[@]}" "$@"
  fi
  fv embed "$run" --data "$ALIGNED" --checkpoint "$CKPT" -o "$WS/embeddings/$name.h5" "${THREADS_OPT[@]}" \
     "${DEVICE_OPT[@]}" -q
  fv verify "$WS/embeddings/$name.h5" --protocol "$TESTPAIRS" -o "$WS/verify/$name-pairs" -q "${SCORE[@]}"
}

for loss in bce contrastive triplet; do
  recipe_opts "study1-$loss"
  extra=()
  [ "$loss" != bce ] && extra=("${QUICK_PK[@]}")
  run_pairs "$loss" "${RECIPE_OPTS[@]}" "${SCALE[@]}" "${extra[@]}"
done
for recon in bce mse; do   # the VAEs: identity split, scored on both protocols of the test identities
  recipe_opts "study1-vae-$recon"
  run_loss "vae-$recon" "${RECIPE_OPTS[@]}" "${VAE_SCALE[@]}"
done
report
