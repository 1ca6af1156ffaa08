#!/usr/bin/env bash
# Study 1: siamese verifiers trained with BCE, contrastive and triplet losses, plus a VAE trained
# with BCE vs MSE reconstruction. 128x128 crops (64 with QUICK=1). The original study split
# labelled PAIRS 72/18/10 at random, which shares identities between train and test: fvtool
# reproduces that split (`pairs train-pairs --random-split`, with its leakage warning) for
# reference, and trains the models on the identity-disjoint split that the numbers come from.
source "$(dirname "$0")/_common.sh"
SIZE="${SIZE:-$([ "$QUICK" = 1 ] && echo 64 || echo 128)}"
prepare_data crop "$SIZE"
RANDOM_PAIRS="${RANDOM_PAIRS:-$([ "$QUICK" = 1 ] && echo 2000 || echo 20000)}"
fv pairs train-pairs "$ALIGNED" --random-split --pairs "$RANDOM_PAIRS" \
   --fractions 0.72,0.18,0.10 --seed 0 -o "$WS/splits/random-pair-split.json"   # prints the leakage warning
E=$(epochs 30)
IN="${IN:-$SIZE}"
common=(--input-size "$IN" --epochs "$E" --backbone resnet_small)
run_loss siamese-bce --loss siamese-bce "${common[@]}"
run_loss contrastive --loss contrastive --mining all "${common[@]}" --lr 0.05
run_loss triplet-hard --loss triplet --mining hard "${common[@]}" --lr 0.05
run_loss vae-bce --loss vae --recon bce --normalise unit "${common[@]}" --optimizer adam --lr 1e-3
run_loss vae-mse --loss vae --recon mse --normalise unit "${common[@]}" --optimizer adam --lr 1e-3
report
