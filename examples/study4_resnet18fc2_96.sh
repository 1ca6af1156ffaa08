#!/usr/bin/env bash
# Study 4: MTCNN-aligned 96x96 faces, ResNet18 with two fully connected layers instead of the
# average pool: center loss, softmax, triplet with random sampling, margin loss with
# distance-weighted sampling, hard-margin loss; verification accuracy and AUC, and closed-set
# recognition accuracy of a linear classifier (fvtool identify) on the test identities.
source "$(dirname "$0")/_common.sh"
SIZE="${SIZE:-96}"
prepare_data similarity "$SIZE"
E=$(epochs 20)
IN="${IN:-$([ "$QUICK" = 1 ] && echo 32 || echo 96)}"
common=(--backbone resnet18_fc2 --input-size "$IN" --epochs "$E")
run_loss center --loss center "${common[@]}"
run_loss softmax --loss softmax "${common[@]}"
run_loss triplet-random --loss triplet --mining random "${common[@]}" --lr 0.05
run_loss margin-dw --loss margin --mining distance-weighted "${common[@]}" --lr 0.05
run_loss hard-margin-dw --loss hard-margin --mining distance-weighted "${common[@]}" --lr 0.05
# Closed-set recognition on the test identities (none was seen in training): logistic regression (the
# linear classifier) fitted on half of each identity's images names the other half; nearest class mean
# and 1-NN are the no-training baselines. One JSON per run and classifier in $WS/identify/, which the
# report shows beside the verification rows.
emb=()
for name in center softmax triplet-random margin-dw hard-margin-dw; do emb+=("$WS/embeddings/$name.h5"); done
fv identify "${emb[@]}" --split "$SPLIT" --part test -c logreg -c ncm -c 1nn --seed 0 -q
report
