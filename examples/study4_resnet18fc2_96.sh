#!/usr/bin/env bash
# Study 4: MTCNN-aligned 96x96 faces, ResNet18 with two fully connected layers instead of the
# average pool: center loss, softmax, triplet with random sampling, margin loss with
# distance-weighted sampling, hard-margin loss; verification accuracy and AUC.
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
report
